"""Importers: each source's raw files -> canonical tables, on small files written here (no network)."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import pandas as pd
import pytest

from llmrec.data.importers import ImportSpec, available_importers, get_importer
from llmrec.data.importers.amazon import default_meta_path
from llmrec.data.importers.movielens import split_title_year
from llmrec.data.schema import INTERACTION_COLUMNS, ITEM_COLUMNS
from llmrec.errors import LlmrecError


def write_lines(path: Path, lines: list[str]) -> Path:
    data = ("\n".join(lines) + "\n").encode("utf-8")
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def item(items: pd.DataFrame, item_id: str) -> dict:
    row = items.loc[items["item_id"] == item_id]
    assert len(row) == 1, f"{item_id} appears {len(row)} times"
    out = row.iloc[0].to_dict()
    out["extra"] = json.loads(out["extra"])
    return out


def check_canonical(raw) -> None:
    assert list(raw.items.columns) == ITEM_COLUMNS
    assert list(raw.interactions.columns) == INTERACTION_COLUMNS
    assert raw.interactions["timestamp"].dtype == "int64"
    assert raw.interactions["rating"].dtype == "float64"


def test_all_importers_registered():
    assert available_importers() == [
        "amazon2018",
        "amazon2023",
        "mind",
        "ml-100k",
        "ml-1m",
        "ml-latest",
        "movies",
        "netflix",
        "synthetic-images",
        "table",
    ]


# ----------------------------------------------------------------------------- Amazon 2018


@pytest.fixture
def amazon2018_dir(tmp_path: Path) -> Path:
    write_lines(
        tmp_path / "Toys_5.json.gz",
        [
            '{"overall": 5.0, "verified": true, "reviewerID": "U1", "asin": "A1", "unixReviewTime": 1472688000,'
            ' "reviewText": "Love it"}',
            # Older dumps: Python dict literals (single quotes, True/False).
            "{'overall': 4.0, 'verified': True, 'reviewerID': 'U2', 'asin': 'A2', 'unixReviewTime': 1472774400}",
            "",
            '{"reviewerID": "U1", "asin": "A3", "unixReviewTime": 1472860800}',  # no rating
        ],
    )
    write_lines(
        tmp_path / "meta_Toys.json.gz",
        [
            json.dumps(
                {
                    "asin": "A1",
                    "title": "<b>Great</b> &amp; cheap<br/>",
                    "brand": "Acme",
                    "category": ["Toys &amp; Games", "Puzzles", "</span></span>"],
                    "description": ["<p>First para.</p>", "Second &amp; last.<br/>"],
                    "feature": ["<b>Durable</b>", "", " BPA free "],
                    "imageURL": ["https://img/a1-small.jpg"],
                    "imageURLHighRes": ["https://img/a1-large.jpg"],
                    "price": "$9.99",
                    "main_cat": "Toys &amp; Games",
                    "also_buy": ["A2"],
                }
            ),
            "{'asin': 'A2', 'title': 'Plain puzzle', 'imageURL': [], 'imageURLHighRes': []}",
            # 2014 layout: list-of-paths categories, a single imUrl, salesRank.
            "{'asin': 'A3', 'title': 'Old', 'categories': [['Toys'], ['Toys', 'Dolls']], "
            "'imUrl': 'http://img/a3.jpg', 'salesRank': {'Toys': 12}, 'related': {'also_bought': ['A1']}}",
            '{"asin": "A4", "main_cat": "<img src=\\"x.png\\" class=\\"nav-categ-image\\" alt=\\"AMAZON FASHION\\"/>"}',
            '{"asin": "A1", "title": "duplicate row: the first one wins"}',
        ],
    )
    return tmp_path


def test_amazon2018_reviews_and_meta(amazon2018_dir: Path):
    raw = get_importer("amazon2018")(
        ImportSpec(
            path=str(amazon2018_dir / "Toys_5.json.gz"), meta_path=str(amazon2018_dir / "meta_Toys.json.gz")
        )
    )
    check_canonical(raw)
    inter = raw.interactions
    assert inter[["user_id", "item_id", "timestamp"]].values.tolist() == [
        ["U1", "A1", 1472688000],
        ["U2", "A2", 1472774400],
        ["U1", "A3", 1472860800],
    ]
    assert inter["rating"].tolist()[:2] == [5.0, 4.0]
    assert math.isnan(inter["rating"].iloc[2])
    assert inter["label"].isna().all()

    assert raw.items["item_id"].tolist() == ["A1", "A2", "A3", "A4"]
    a1 = item(raw.items, "A1")
    assert a1["title"] == "Great & cheap"
    assert a1["brand"] == "Acme"
    assert a1["category"] == "Toys & Games > Puzzles"
    assert a1["description"] == "First para. Second & last."
    assert a1["image"] == "https://img/a1-large.jpg"
    # also_buy is dropped: a co-purchase graph, not item content.
    assert a1["extra"] == {"feature": ["Durable", "BPA free"], "main_cat": "Toys & Games", "price": "$9.99"}
    a2 = item(raw.items, "A2")
    assert (a2["title"], a2["brand"], a2["category"], a2["description"], a2["image"]) == (
        "Plain puzzle",
        "",
        "",
        "",
        "",
    )
    assert a2["extra"] == {}
    a3 = item(raw.items, "A3")
    assert a3["category"] == "Toys; Toys > Dolls"
    assert a3["image"] == "http://img/a3.jpg"
    assert a3["extra"] == {"salesRank": {"Toys": 12}}
    assert item(raw.items, "A4")["extra"] == {"main_cat": "AMAZON FASHION"}
    assert raw.source == {
        "name": "amazon2018",
        "files": [str(amazon2018_dir / "Toys_5.json.gz"), str(amazon2018_dir / "meta_Toys.json.gz")],
        "item_noun": "product",
    }


def test_amazon2018_finds_meta_next_to_reviews(amazon2018_dir: Path):
    reviews = amazon2018_dir / "Toys_5.json.gz"
    assert default_meta_path(reviews) == amazon2018_dir / "meta_Toys.json.gz"
    raw = get_importer("amazon2018")(ImportSpec(path=str(reviews)))
    assert len(raw.items) == 4
    (amazon2018_dir / "meta_Toys.json.gz").unlink()
    with pytest.raises(LlmrecError, match="--meta-path"):
        get_importer("amazon2018")(ImportSpec(path=str(reviews)))


def test_amazon2018_malformed_line_names_the_line(tmp_path: Path):
    reviews = write_lines(
        tmp_path / "Toys.json",
        [
            '{"reviewerID": "U1", "asin": "A1", "unixReviewTime": 1, "overall": 5.0}',
            "",
            '{"reviewerID": "U2", "asin": "A1", "unixReviewTime": 2, "overall": 5.0',  # cut short
        ],
    )
    meta = write_lines(tmp_path / "meta_Toys.json", ['{"asin": "A1"}'])
    with pytest.raises(LlmrecError) as exc:
        get_importer("amazon2018")(ImportSpec(path=str(reviews), meta_path=str(meta)))
    assert exc.value.row == 3
    assert str(exc.value).startswith(f"{reviews}, row 3: neither JSON nor a Python dict")


def test_amazon2018_missing_required_field(tmp_path: Path):
    reviews = write_lines(tmp_path / "r.json", ['{"reviewerID": "U1", "unixReviewTime": 1}'])
    meta = write_lines(tmp_path / "meta.json", ['{"asin": "A1"}'])
    with pytest.raises(LlmrecError) as exc:
        get_importer("amazon2018")(ImportSpec(path=str(reviews), meta_path=str(meta)))
    assert (exc.value.row, exc.value.field) == (1, "asin")


def test_amazon_truncated_gzip(tmp_path: Path):
    data = gzip.compress(b'{"reviewerID": "U1", "asin": "A1", "unixReviewTime": 1}\n' * 2000)
    reviews = tmp_path / "Toys_5.json.gz"
    reviews.write_bytes(data[: len(data) // 2])
    meta = write_lines(tmp_path / "meta_Toys.json", ['{"asin": "A1"}'])
    with pytest.raises(LlmrecError, match="download it again"):
        get_importer("amazon2018")(ImportSpec(path=str(reviews), meta_path=str(meta)))


# ----------------------------------------------------------------------------- Amazon 2023


def test_amazon2023_jsonl(tmp_path: Path):
    reviews = write_lines(
        tmp_path / "All_Beauty.jsonl",
        [
            json.dumps(
                {
                    "rating": 5.0,
                    "title": "Nice",
                    "text": "Works",
                    "asin": "B01V",
                    "parent_asin": "B01P",
                    "user_id": "AG1",
                    "timestamp": 1588687728923,
                    "helpful_vote": 0,
                    "verified_purchase": True,
                }
            ),
            # No parent_asin: the asin is the item.
            json.dumps({"rating": 3, "asin": "B02", "user_id": "AG2", "timestamp": 1588687729999}),
        ],
    )
    meta = write_lines(
        tmp_path / "meta_All_Beauty.jsonl.gz",
        [
            json.dumps(
                {
                    "main_category": "All Beauty",
                    "title": "Soap <i>bar</i>",
                    "average_rating": 4.5,
                    "rating_number": 10,
                    "features": ["Gentle", "<b>Vegan</b>"],
                    "description": ["Line one.", "Line two."],
                    "price": None,
                    "images": [
                        {"thumb": "t1.jpg", "large": "l1.jpg", "variant": "MAIN", "hi_res": None},
                        {"thumb": "t2.jpg", "large": "l2.jpg", "variant": "PT01", "hi_res": "h2.jpg"},
                    ],
                    "videos": [{"url": "v.mp4"}],
                    "store": "SoapCo",
                    "categories": ["Beauty", "Bath"],
                    "details": {"Scent": "Lavender"},
                    "parent_asin": "B01P",
                    "bought_together": None,
                }
            ),
            json.dumps(
                {
                    "title": "Shampoo",
                    "images": [{"thumb": "t3.jpg", "large": "l3.jpg", "hi_res": None}],
                    "categories": [],
                    "parent_asin": "B02",
                }
            ),
        ],
    )
    raw = get_importer("amazon2023")(ImportSpec(path=str(reviews), meta_path=str(meta)))
    check_canonical(raw)
    assert raw.interactions[["user_id", "item_id", "timestamp"]].values.tolist() == [
        ["AG1", "B01P", 1588687728],
        ["AG2", "B02", 1588687729],
    ]
    assert raw.interactions["rating"].tolist() == [5.0, 3.0]
    b1 = item(raw.items, "B01P")
    assert b1["title"] == "Soap bar"
    assert b1["brand"] == "SoapCo"
    assert b1["category"] == "Beauty > Bath"
    assert b1["description"] == "Line one. Line two."
    assert b1["image"] == "h2.jpg"  # the first hi_res, even though the first image has none
    assert b1["extra"] == {
        "average_rating": 4.5,
        "details": {"Scent": "Lavender"},
        "feature": ["Gentle", "Vegan"],
        "main_category": "All Beauty",
        "rating_number": 10,
    }
    b2 = item(raw.items, "B02")
    assert (b2["image"], b2["category"], b2["brand"]) == ("l3.jpg", "", "")


# ----------------------------------------------------------------------------- MovieLens


@pytest.fixture
def ml1m_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    (folder / "ratings.dat").write_text(
        "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n"
    )
    (folder / "movies.dat").write_bytes(
        "1::Toy Story (1995)::Animation|Children's|Comedy\n"
        "29::City of Lost Children, The (Cité des enfants perdus, La) (1995)::Adventure|Sci-Fi\n"
        "661::James and the Giant Peach (1996)::Animation|Children's|Musical\n"
        "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n".encode("latin-1")
    )
    (folder / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n")
    return folder


def test_ml1m(ml1m_dir: Path):
    raw = get_importer("ml-1m")(ImportSpec(path=str(ml1m_dir)))
    check_canonical(raw)
    assert raw.interactions.values.tolist()[0][:4] == ["1", "1193", 978300760, 5.0]
    assert len(raw.interactions) == 3
    assert raw.items["item_id"].tolist() == ["1", "29", "661", "1193"]
    toy = item(raw.items, "1")
    assert (toy["title"], toy["category"], toy["extra"]) == (
        "Toy Story",
        "Animation, Children's, Comedy",
        {"year": 1995},
    )
    city = item(raw.items, "29")
    assert city["title"] == "City of Lost Children, The (Cité des enfants perdus, La)"
    assert city["category"] == "Adventure, Sci-Fi"
    assert city["extra"] == {"year": 1995}
    assert raw.users.to_dict("records") == [
        {"user_id": "1", "age": "1", "gender": "F", "occupation": "K-12 student", "zip_code": "48067"},
        {"user_id": "2", "age": "56", "gender": "M", "occupation": "self-employed", "zip_code": "70072"},
    ]


@pytest.mark.parametrize(
    "line, field, message",
    [
        ("2::661::five::978302109", "Rating", "'five' is not a number"),
        ("2::661::inf::978302109", "Rating", "'inf' is not a finite number"),  # issue #15
        ("2::661::4::9999999999999999999999", "Timestamp", "9999999999999999999999 does not fit a 64-bit"),
        ("2::661::4", "Timestamp", "3 fields where 4 are expected (UserID::MovieID::Rating::Timestamp)"),
        (
            "2::661::4::978302109::9",
            None,
            "5 fields where 4 are expected (UserID::MovieID::Rating::Timestamp)",
        ),
    ],
)
def test_ml1m_malformed_line(ml1m_dir: Path, line: str, field: str | None, message: str):
    (ml1m_dir / "ratings.dat").write_text(f"1::1193::5::978300760\n\n{line}\n1::661::3::978302109\n")
    with pytest.raises(LlmrecError) as exc:
        get_importer("ml-1m")(ImportSpec(path=str(ml1m_dir)))
    assert (exc.value.row, exc.value.field) == (3, field)
    where = f"{ml1m_dir / 'ratings.dat'}, row 3" + (f", field '{field}'" if field else "")
    assert str(exc.value).startswith(f"{where}: {message}")


def test_ml1m_missing_folder_and_file(tmp_path: Path, ml1m_dir: Path):
    with pytest.raises(LlmrecError, match="folder not found; unzip ml-1m.zip"):
        get_importer("ml-1m")(ImportSpec(path=str(tmp_path / "nope")))
    (ml1m_dir / "ratings.dat").unlink()
    with pytest.raises(LlmrecError, match="ml-1m file ratings.dat is not in this folder"):
        get_importer("ml-1m")(ImportSpec(path=str(ml1m_dir)))


@pytest.mark.parametrize(
    "title, expected",
    [
        ("Toy Story (1995)", ("Toy Story", 1995)),
        ("Seven (a.k.a. Se7en) (1995) ", ("Seven (a.k.a. Se7en)", 1995)),
        ("Fawlty Towers (1975-1979)", ("Fawlty Towers", 1975)),
        ("(500) Days of Summer (2009)", ("(500) Days of Summer", 2009)),
        ("Babylon 5", ("Babylon 5", None)),
        ("1984 (1984)", ("1984", 1984)),
    ],
)
def test_split_title_year(title: str, expected: tuple):
    assert split_title_year(title) == expected


@pytest.fixture
def ml_latest_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "ml-latest-small"
    folder.mkdir()
    (folder / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,11,3.5,964981247\n2,176,0.5,1445714835\n"
    )
    (folder / "movies.csv").write_text(
        "movieId,title,genres\n"
        "1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy\n"
        '11,"American President, The (1995)",Comedy|Drama|Romance\n'
        '176,"Living in Oblivion, or ""The Movie"" (1995)",Comedy\n'
        "177,Babylon 5,(no genres listed)\n",
        encoding="utf-8",
    )
    return folder


def test_ml_latest(ml_latest_dir: Path):
    raw = get_importer("ml-latest")(ImportSpec(path=str(ml_latest_dir)))
    check_canonical(raw)
    assert raw.interactions[["user_id", "item_id", "timestamp"]].values.tolist() == [
        ["1", "1", 964982703],
        ["1", "11", 964981247],
        ["2", "176", 1445714835],
    ]
    assert raw.interactions["rating"].tolist() == [4.0, 3.5, 0.5]
    assert item(raw.items, "11")["title"] == "American President, The"
    assert item(raw.items, "11")["category"] == "Comedy, Drama, Romance"
    assert item(raw.items, "176")["title"] == 'Living in Oblivion, or "The Movie"'
    babylon = item(raw.items, "177")
    assert (babylon["title"], babylon["category"], babylon["extra"]) == ("Babylon 5", "", {})
    assert item(raw.items, "1")["extra"] == {"year": 1995}


def test_ml_latest_bad_rating_names_line(ml_latest_dir: Path):
    # Line 1 is the header and line 3 is blank: the bad rating is on line 5 of the file.
    (ml_latest_dir / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n\n1,11,3.5,964981247\n2,176,,1445714835\n"
    )
    with pytest.raises(LlmrecError) as exc:
        get_importer("ml-latest")(ImportSpec(path=str(ml_latest_dir)))
    assert (exc.value.row, exc.value.field) == (5, "rating")
    assert "ratings.csv, row 5, field 'rating': '' is not a number" in str(exc.value)


def test_ml_latest_short_movie_line(ml_latest_dir: Path):
    movies = ml_latest_dir / "movies.csv"
    movies.write_text(movies.read_text() + "2,Jumanji (1995)\n")
    with pytest.raises(LlmrecError) as exc:
        get_importer("ml-latest")(ImportSpec(path=str(ml_latest_dir)))
    assert (exc.value.row, exc.value.field) == (6, "genres")
    assert "2 fields where 3 are expected (movieId,title,genres)" in str(exc.value)


@pytest.mark.slow
def test_ml100k_from_recbole():
    raw = get_importer("ml-100k")(ImportSpec())
    check_canonical(raw)
    assert raw.interactions["user_id"].nunique() == 943
    assert raw.interactions["item_id"].nunique() == 1682
    assert len(raw.interactions) == 100_000
    assert len(raw.items) == 1682
    assert item(raw.items, "1")["title"] == "Toy Story"


# ----------------------------------------------------------------------------- generic table


@pytest.fixture
def table_files(tmp_path: Path) -> tuple[Path, Path]:
    inter = tmp_path / "events.csv"
    inter.write_text(
        "uid,iid,ts,stars,device\nu1,007,100,5,phone\nu2,007,2020-01-01T00:00:00Z,,web\nu1,42,300,2.5,\n"
    )
    items = tmp_path / "items.tsv"
    items.write_text("iid\tname\tcategory\tprice\n007\t<i>Spy</i> kit\tToys\t9.5\n42\tAnswer\t\t\n")
    return inter, items


MAPPING = {"user_id": "uid", "item_id": "iid", "timestamp": "ts", "rating": "stars", "title": "name"}


def test_table_with_mapping(table_files: tuple[Path, Path]):
    inter, items = table_files
    raw = get_importer("table")(ImportSpec(path=str(inter), items_path=str(items), columns=MAPPING))
    check_canonical(raw)
    assert raw.interactions[["user_id", "item_id", "timestamp"]].values.tolist() == [
        ["u1", "007", 100],  # ids stay text: the leading zeros survive
        ["u2", "007", 1577836800],  # an ISO date becomes unix seconds
        ["u1", "42", 300],
    ]
    ratings = raw.interactions["rating"].tolist()
    assert ratings[0] == 5.0 and math.isnan(ratings[1]) and ratings[2] == 2.5
    spy = item(raw.items, "007")
    assert (spy["title"], spy["category"], spy["extra"]) == ("Spy kit", "Toys", {"price": "9.5"})
    assert item(raw.items, "42")["extra"] == {}


def test_table_without_items_builds_bare_items(table_files: tuple[Path, Path], tmp_path: Path):
    inter, _ = table_files
    no_title = {k: v for k, v in MAPPING.items() if k != "title"}
    raw = get_importer("table")(ImportSpec(path=str(inter), columns=no_title))
    assert raw.items["item_id"].tolist() == ["007", "42"]
    assert raw.items["title"].tolist() == ["", ""]
    # A denormalised table: item fields come from the interactions, the first occurrence wins.
    (tmp_path / "flat.csv").write_text(
        "uid,iid,ts,stars,name\nu1,i1,1,5,First\nu2,i1,2,4,Other\nu2,i2,3,3,Second\n"
    )
    raw = get_importer("table")(ImportSpec(path=str(tmp_path / "flat.csv"), columns=MAPPING))
    assert raw.items[["item_id", "title"]].values.tolist() == [["i1", "First"], ["i2", "Second"]]
    # The same table as parquet, with a datetime column and the canonical names (no mapping needed).
    df = pd.DataFrame(
        {
            "user_id": ["a", "b"],
            "item_id": ["x", "y"],
            "timestamp": pd.to_datetime(["1970-01-02", "1970-01-03"]),
        }
    )
    df.to_parquet(tmp_path / "events.parquet")
    raw = get_importer("table")(ImportSpec(path=str(tmp_path / "events.parquet")))
    assert raw.interactions["timestamp"].tolist() == [86400, 172800]
    assert raw.interactions["rating"].isna().all()
    assert raw.items["item_id"].tolist() == ["x", "y"]


def test_table_bad_mapping(table_files: tuple[Path, Path]):
    inter, items = table_files
    with pytest.raises(LlmrecError) as exc:
        get_importer("table")(ImportSpec(path=str(inter), columns={**MAPPING, "user_id": "user"}))
    assert exc.value.field == "user_id"
    assert str(exc.value) == (
        f"{inter}, field 'user_id': no column 'user' (mapped to user_id); available columns: "
        "['uid', 'iid', 'ts', 'stars', 'device']; map the right column with --columns user_id=<column>"
    )
    with pytest.raises(LlmrecError, match=r"items.tsv, field 'title': no column 'name ' \(mapped to title\)"):
        get_importer("table")(
            ImportSpec(path=str(inter), items_path=str(items), columns={**MAPPING, "title": "name "})
        )
    with pytest.raises(LlmrecError, match=r"unknown canonical column\(s\) \['usr_id'\]"):
        get_importer("table")(ImportSpec(path=str(inter), columns={"usr_id": "uid"}))


def test_table_item_columns_map_the_item_file_on_its_own(tmp_path: Path):
    # regression: one --columns mapping served both files, so an item id named 'sku' in the item file and
    # 'item' in the interactions could not both be mapped, and the hint pointed at --columns
    inter, items = tmp_path / "interactions.csv", tmp_path / "products.csv"
    inter.write_text("user,item,ts\nu1,a1,1\nu1,b2,2\nu2,a1,3\n")
    items.write_text("sku,name,category\na1,Red shoe,Shoes\nb2,Blue hat,Hats\n")
    columns = {"user_id": "user", "item_id": "item", "timestamp": "ts"}
    with pytest.raises(LlmrecError) as exc:
        get_importer("table")(ImportSpec(path=str(inter), items_path=str(items), columns=columns))
    assert str(exc.value).endswith("map the right column with --item-columns item_id=<column>")
    assert exc.value.file == str(items) or str(items) in str(exc.value)
    raw = get_importer("table")(
        ImportSpec(
            path=str(inter),
            items_path=str(items),
            columns=columns,
            item_columns={"item_id": "sku", "title": "name"},
        )
    )
    check_canonical(raw)
    assert raw.items[["item_id", "title", "category"]].values.tolist() == [
        ["a1", "Red shoe", "Shoes"],
        ["b2", "Blue hat", "Hats"],
    ]
    assert raw.source["item_columns"] == {"item_id": "sku", "title": "name"}
    with pytest.raises(
        LlmrecError, match=r"unknown canonical column\(s\) \['user_id'\] in the --item-columns"
    ):
        get_importer("table")(
            ImportSpec(path=str(inter), items_path=str(items), columns=columns, item_columns={"user_id": "x"})
        )
    with pytest.raises(LlmrecError, match="no --items-path is given"):
        get_importer("table")(ImportSpec(path=str(inter), columns=columns, item_columns={"item_id": "sku"}))


def test_table_image_paths_relative_to_the_item_table(tmp_path: Path):
    # a catalog export names its pictures relative to itself: they must still be found from the dataset
    shop = tmp_path / "shop"
    (shop / "pictures").mkdir(parents=True)
    (shop / "pictures" / "a1.png").write_bytes(b"png")
    (shop / "inter.csv").write_text("user_id,item_id,timestamp\nu1,a1,1\nu1,b2,2\n")
    (shop / "items.csv").write_text(
        "item_id,title,image\na1,A,pictures/a1.png\nb2,B,https://x.example/b2.jpg\n"
    )
    raw = get_importer("table")(ImportSpec(path=str(shop / "inter.csv"), items_path=str(shop / "items.csv")))
    images = dict(zip(raw.items["item_id"], raw.items["image"]))
    assert images == {"a1": str((shop / "pictures" / "a1.png").resolve()), "b2": "https://x.example/b2.jpg"}


def test_table_bad_value_names_line(tmp_path: Path):
    inter = tmp_path / "events.tsv"
    inter.write_text("user_id\titem_id\ttimestamp\trating\nu1\ti1\t100\t5\nu1\ti2\tyesterday\t4\n")
    with pytest.raises(LlmrecError) as exc:
        get_importer("table")(ImportSpec(path=str(inter)))
    assert (exc.value.row, exc.value.field) == (3, "timestamp")
    assert "'yesterday' is neither unix seconds nor an ISO-8601 date" in str(exc.value)
