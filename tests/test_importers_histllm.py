"""HistLLM's three datasets (MIND, The Movies Dataset, Netflix Prize): importers on small files written here in
the published layouts, their labels, histories and images, the per-source history length, one-line errors."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pytest

from llmrec.cli import main
from llmrec.data.dataset import Dataset
from llmrec.data.importers import ImportSpec, get_importer, importer_defaults
from llmrec.data.processing import PrepareConfig, prepare
from llmrec.data.schema import INTERACTION_COLUMNS, ITEM_COLUMNS
from llmrec.errors import LlmrecError


def utc(text: str, fmt: str = "%m/%d/%Y %I:%M:%S %p") -> int:
    return int(datetime.strptime(text, fmt).replace(tzinfo=timezone.utc).timestamp())


def item(items: pd.DataFrame, item_id: str) -> dict:
    row = items.loc[items["item_id"] == item_id]
    assert len(row) == 1, f"{item_id} appears {len(row)} times"
    out = row.iloc[0].to_dict()
    out["extra"] = json.loads(out["extra"])
    return out


def rows_of(inter: pd.DataFrame, user: str) -> list[tuple[str, int, float]]:
    sub = inter.loc[inter["user_id"] == user]
    return list(zip(sub["item_id"], sub["timestamp"], sub["label"], strict=True))


def one_line_error(excinfo, file: str, row: int, field: str) -> str:
    text = str(excinfo.value)
    assert "\n" not in text
    assert file in text and f"row {row}" in text and f"field '{field}'" in text, text
    return text


def check_canonical(raw) -> None:
    assert list(raw.items.columns) == ITEM_COLUMNS
    assert list(raw.interactions.columns) == INTERACTION_COLUMNS
    assert raw.interactions["timestamp"].dtype == "int64"


def test_the_three_importers_are_registered_with_the_papers_history_lengths():
    assert importer_defaults("movies") == {"ctr_history_len": 5}
    assert importer_defaults("netflix") == {"ctr_history_len": 10}
    assert importer_defaults("mind") == {"ctr_history_len": 10, "ctr_history_before": "time"}
    assert importer_defaults("ml-100k") == {} and importer_defaults("no-such-source") == {}
    importer_defaults("movies")["ctr_history_len"] = 99  # a copy: the registry is untouched
    assert importer_defaults("movies") == {"ctr_history_len": 5}


def test_every_registered_default_is_a_prepare_option():
    from llmrec.config import from_dict
    from llmrec.data.importers import available_importers

    for name in available_importers():
        cfg = from_dict(PrepareConfig, {"dataset": name, **importer_defaults(name)})
        assert all(getattr(cfg, k) == v for k, v in importer_defaults(name).items())


# ----------------------------------------------------------------------------- MIND

NEWS = [
    ["N1", "news", "newsus", "Storm hits coast", "A storm hit the coast.", "https://assets.msn.com/labs/mind/AAA1.html", "[]", "[]"],
    ["N2", "sports", "football_nfl", "Team wins", "", "https://assets.msn.com/labs/mind/AAA2.html", '[{"Label": "NFL"}]', "[]"],
    ["N3", "finance", "markets", 'Stocks "rally"', "Markets rose.", "https://assets.msn.com/labs/mind/AAA3.html", "[]", "[]"],
    ["N4", "news", "newsworld", "Summit ends", "Leaders met.", "https://assets.msn.com/labs/mind/AAA4.html", "[]", "[]"],
    ["N5", "lifestyle", "lifestylebuzz", "Recipe", "Cook this.", "https://assets.msn.com/labs/mind/AAA5.html", "[]", "[]"],
    ["N6", "video", "news", "Clip", "Watch.", "https://assets.msn.com/labs/mind/AAA6.html", "[]", "[]"],
    ["N7", "news", "newsus", "Vote count", "Counting.", "https://assets.msn.com/labs/mind/AAA7.html", "[]", "[]"],
    ["N8", "weather", "weathertopstories", "Snow", "Cold.", "https://assets.msn.com/labs/mind/AAA8.html", "[]", "[]"],
]  # fmt: skip


def write_tsv(path: Path, rows: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join("\t".join(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def mind_dir(tmp_path: Path) -> Path:
    root = tmp_path / "MIND"
    write_tsv(root / "MINDsmall_train" / "news.tsv", NEWS[:6] + NEWS[7:])
    write_tsv(
        root / "MINDsmall_train" / "behaviors.tsv",
        [
            ["1", "U1", "11/11/2019 9:05:58 AM", "N1 N2", "N3-1 N4-0 N5-0"],
            ["2", "U2", "11/11/2019 3:00:00 PM", "", "N3-0 N4-1 N5-1 N8-0"],
            ["3", "U1", "11/12/2019 10:00:00 AM", "N1 N2", "N6-1 N4-0"],
        ],
    )
    write_tsv(root / "MINDsmall_dev" / "news.tsv", NEWS[1:])
    # dev: the history now also lists N7 (a click from before this impression, new to this file)
    write_tsv(
        root / "MINDsmall_dev" / "behaviors.tsv",
        [["1", "U1", "11/15/2019 8:55:22 AM", "N1 N2 N7", "N5-1 N6-0"]],
    )
    # MIND-large's test split has no click labels: skipped, not an error
    write_tsv(root / "MINDlarge_test" / "news.tsv", NEWS[:2])
    write_tsv(
        root / "MINDlarge_test" / "behaviors.tsv", [["1", "U9", "11/16/2019 1:00:00 PM", "N1", "N2 N3"]]
    )
    (root / "images").mkdir()
    (root / "images" / "N1.jpg").write_bytes(b"jpeg")
    (root / "images" / "N3.png").write_bytes(b"png")
    return root


def test_mind_impressions_become_click_labels_and_history_comes_first(mind_dir):
    raw = get_importer("mind")(ImportSpec(path=str(mind_dir)))
    check_canonical(raw)
    t1, t3 = utc("11/11/2019 9:05:58 AM"), utc("11/12/2019 10:00:00 AM")
    t_dev = utc("11/15/2019 8:55:22 AM")
    # history N1, N2 one second apart just before U1's first impression; each impression in the order shown
    assert sorted(rows_of(raw.interactions, "U1"), key=lambda r: r[1]) == [
        ("N1", t1 - 2, 1.0),
        ("N2", t1 - 1, 1.0),
        ("N3", t1, 1.0),
        ("N4", t1, 0.0),
        ("N5", t1, 0.0),
        ("N6", t3, 1.0),
        ("N4", t3, 0.0),
        ("N7", t_dev - 1, 1.0),  # listed first in the dev history: placed before that impression
        ("N5", t_dev, 1.0),
        ("N6", t_dev, 0.0),
    ]
    t2 = utc("11/11/2019 3:00:00 PM")
    assert rows_of(raw.interactions, "U2") == [
        ("N3", t2, 0.0),
        ("N4", t2, 1.0),
        ("N5", t2, 1.0),
        ("N8", t2, 0.0),
    ]
    assert raw.source["item_noun"] == "news article"
    assert "U9" not in set(raw.interactions["user_id"])
    assert raw.interactions["rating"].isna().all()
    assert raw.source["history_clicks"] == 3 and raw.source["impression_rows"] == 11
    assert raw.source["skipped_unlabelled"] == [str(mind_dir / "MINDlarge_test" / "behaviors.tsv")]
    assert raw.source["files"][:2] == [
        str(mind_dir / "MINDsmall_dev" / "behaviors.tsv"),
        str(mind_dir / "MINDsmall_dev" / "news.tsv"),
    ]


def test_mind_news_fields_and_images_by_news_id(mind_dir, tmp_path):
    raw = get_importer("mind")(ImportSpec(path=str(mind_dir)))
    assert sorted(raw.items["item_id"]) == [f"N{i}" for i in range(1, 9)]
    n3 = item(raw.items, "N3")
    assert n3["title"] == 'Stocks "rally"'  # quotes are text in MIND's TSV, never quoting
    assert n3["category"] == "finance" and n3["description"] == "Markets rose."
    assert n3["extra"] == {"subcategory": "markets", "url": "https://assets.msn.com/labs/mind/AAA3.html"}
    assert n3["image"] == str((mind_dir / "images" / "N3.png").resolve())
    assert item(raw.items, "N1")["image"] == str((mind_dir / "images" / "N1.jpg").resolve())
    assert item(raw.items, "N2")["image"] == ""  # no file, and the article URL is not an image
    # --image-dir wins over the images/ folder
    other = tmp_path / "pics"
    other.mkdir()
    (other / "N2.jpg").write_bytes(b"jpeg")
    raw = get_importer("mind")(ImportSpec(path=str(mind_dir), image_dir=str(other)))
    assert item(raw.items, "N2")["image"] == str((other / "N2.jpg").resolve())
    assert item(raw.items, "N1")["image"] == ""


def test_mind_one_folder_with_both_files(mind_dir):
    raw = get_importer("mind")(ImportSpec(path=str(mind_dir / "MINDsmall_train")))
    assert len(raw.interactions) == 2 + 9  # history N1, N2 of U1 once; 9 shown news
    assert raw.source["files"] == [
        str(mind_dir / "MINDsmall_train" / "behaviors.tsv"),
        str(mind_dir / "MINDsmall_train" / "news.tsv"),
    ]


def test_mind_prepare_end_to_end_uses_history_and_length_10(mind_dir, tmp_path, capsys):
    out = tmp_path / "mind-ds"
    args = ["prepare", "mind", "--path", str(mind_dir), "--out", str(out), "--kcore", "0"]
    assert main([*args, "--num-negatives", "1", "--ctr-split", "0.5", "0.25", "0.25"]) == 0
    assert "CTR examples" in capsys.readouterr().out
    ds = Dataset(out)
    assert ds.meta["config"]["ctr_history_len"] == 10
    ids = ds.items["item_id"].tolist()
    users = ds.users["user_id"].tolist()
    ctr = pd.concat([pd.read_parquet(out / "ctr" / f"{s}.parquet") for s in ("train", "valid", "test")])
    ctr = ctr.assign(
        user=[users[u] for u in ctr["user_idx"]],
        target_id=[ids[t] for t in ctr["target"]],
        hist=[[ids[h] for h in hist] for hist in ctr["history"]],
    )
    first = ctr.loc[(ctr["user"] == "U1") & (ctr["timestamp"] == utc("11/11/2019 9:05:58 AM"))]
    # U1's first impression: the MIND history is the CTR history; no row sees the impression's own click
    assert {(r.target_id, r.label): r.hist for r in first.itertuples()} == {
        ("N4", 0): ["N1", "N2"],
        ("N5", 0): ["N1", "N2"],
        ("N3", 1): ["N1", "N2"],
    }
    assert set(ctr["label"]) == {0, 1}
    # U2 has no history before its one impression: none of its rows has one, all are dropped
    # (--ctr-min-history 1); its second click never sees its first (clicks of one impression)
    assert "U2" not in set(ctr["user"])


def test_mind_malformed_lines_are_one_line_errors(mind_dir):
    train = mind_dir / "MINDsmall_train"
    behaviors = (train / "behaviors.tsv").read_text().splitlines()

    def fails(lines: list[str], row: int, field: str) -> str:
        (train / "behaviors.tsv").write_text("\n".join(lines) + "\n")
        with pytest.raises(LlmrecError) as e:
            get_importer("mind")(ImportSpec(path=str(train)))
        return one_line_error(e, "behaviors.tsv", row, field)

    assert "'N4-2'" in fails(
        [behaviors[0], behaviors[1].replace("N4-1", "N4-2"), behaviors[2]], 2, "impressions"
    )
    assert "no click label" in fails(
        [behaviors[0], behaviors[1].replace("N4-1", "N4"), behaviors[2]], 2, "impressions"
    )
    bad_time = behaviors[2].replace("11/12/2019 10:00:00 AM", "2019-11-12 10:00")
    assert "'2019-11-12 10:00'" in fails([behaviors[0], behaviors[1], bad_time], 3, "time")
    assert "4 tab-separated fields where 5" in fails(
        [behaviors[0], "7\tU3\t11/11/2019 3:00:00 PM\tN1-1"], 2, "impressions"
    )
    (train / "behaviors.tsv").write_text(behaviors[0] + "\textra\n")  # too many fields: no single culprit
    with pytest.raises(LlmrecError) as e:
        get_importer("mind")(ImportSpec(path=str(train)))
    assert "behaviors.tsv, row 1: 6 tab-separated fields where 5 are expected" in str(e.value)

    (train / "behaviors.tsv").write_text("\n".join(behaviors) + "\n")
    news = (train / "news.tsv").read_text().splitlines()
    (train / "news.tsv").write_text("\n".join([news[0], "\t".join(NEWS[1][:5])]) + "\n")
    with pytest.raises(LlmrecError) as e:
        get_importer("mind")(ImportSpec(path=str(train)))
    assert "5 tab-separated fields where 8" in one_line_error(e, "news.tsv", 2, "url")


def test_mind_layout_errors(mind_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(LlmrecError, match="not a MIND folder"):
        get_importer("mind")(ImportSpec(path=str(tmp_path / "empty")))
    with pytest.raises(LlmrecError, match="test split has none"):
        get_importer("mind")(ImportSpec(path=str(mind_dir / "MINDlarge_test")))
    with pytest.raises(LlmrecError, match="image folder not found"):
        get_importer("mind")(ImportSpec(path=str(mind_dir), image_dir=str(tmp_path / "nope")))


# ----------------------------------------------------------------------------- The Movies Dataset

# movies_metadata.csv's header line, as in the download
META_HEADER_LINE = (
    "adult,belongs_to_collection,budget,genres,homepage,id,imdb_id,original_language,original_title,overview,"
    "popularity,poster_path,production_companies,production_countries,release_date,revenue,runtime,"
    "spoken_languages,status,tagline,title,video,vote_average,vote_count"
)
META_HEADER = META_HEADER_LINE.split(",")


def meta_row(
    tmdb: str, title: str, genres: str, overview: str, poster: str, date: str, imdb: str
) -> list[str]:
    values = dict.fromkeys(META_HEADER, "")
    values.update(
        adult="False", budget="0", genres=genres, id=tmdb, imdb_id=imdb, original_language="en",
        original_title=title, overview=overview, popularity="1.5", poster_path=poster, release_date=date,
        runtime="81.0", status="Released", title=title, video="False", vote_average="7.7", vote_count="10.0",
    )  # fmt: skip
    return [values[c] for c in META_HEADER]


def csv_text(rows: list[list[str]]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


@pytest.fixture
def movies_dir(tmp_path: Path) -> Path:
    root = tmp_path / "the-movies-dataset"
    root.mkdir()
    animation = (
        "[{'id': 16, 'name': 'Animation'}, {'id': 35, 'name': 'Comedy'}, {'id': 10751, 'name': 'Family'}]"
    )
    rows = [
        META_HEADER,
        meta_row("862", "Toy Story", animation, "Led by Woody, Andy's toys live happily.", "/rhIRbceoE9lR4veEXuwCC2wARtG.jpg", "1995-10-30", "tt0114709"),
        meta_row("8844", "Jumanji", "[{'id': 12, 'name': 'Adventure'}]", "When siblings Judy and Peter\ndiscover a board game...", "/vzmL6fP7aPKNKPRTFnZmiUfciyV.jpg", "1995-12-15", "tt0113497"),
        meta_row("15602", "Grumpier Old Men", "[{'id': 10749, 'name': 'Romance'}]", "A family wedding reignites a feud.", "/6ksm1sjKMFLbO7UY2i6G1ju9SML.jpg", "1995-12-22", "tt0113228"),
        meta_row("31357", "Waiting to Exhale", "[]", "Cheated on, mistreated.", "", "", "tt0114885"),
        meta_row("11862", "Father of the Bride Part II", "[{'id': 35, 'name': 'Comedy'}]", "Just when George...", "/e64sOI48hQXyru7naBFyssKFxVd.jpg", "1995-02-10", "tt0113041"),
    ]  # fmt: skip
    text = csv_text(rows)
    # The file's known broken record: an overview cut by a line break gives a short line, then a line whose
    # 'id' holds a date (1997-08-20); and a repeated id.
    broken_a = csv_text([meta_row("82663", "Midnight Man", "[]", "", "", "", "tt0113002")[:10]])
    broken_b = [
        " - Written by Ørnås",
        "0.065736",
        "/ff9qCepilowshEtG2GYWwzt2bs4.jpg",
        "[]",
        "[]",
        "1997-08-20",
    ]
    broken_b += ["0", "104.0", "[]", "Released", "", "1", "", "", "", "", "", "", "", "", "", "", "", ""]
    repeated = csv_text([meta_row("862", "Toy Story again", "[]", "", "", "1995-10-30", "tt0114709")])
    (root / "movies_metadata.csv").write_text(
        text + broken_a + csv_text([broken_b]) + repeated, encoding="utf-8"
    )
    (root / "links.csv").write_text(
        "movieId,imdbId,tmdbId\n1,0114709,862\n2,0113497,8844\n3,0113228,15602\n4,0114885,31357\n5,0113041,\n"
        "6,0113277,862\n7,0113041,11862\n"
    )
    ratings = ["userId,movieId,rating,timestamp"]
    ratings += ["1,1,4.0,964982703", "1,2,2.5,964981247", "1,3,5.0,964982224", "1,5,3.0,964983815"]
    ratings += ["2,2,4.5,1445714835", "2,3,1.0,1445714885", "2,4,4.0,1445715000", "2,6,5.0,1445715100"]
    ratings += ["3,7,3.0,1100000000", "3,1,4.0,1100000001", "3,2,2.0,1100000002"]
    (root / "ratings_small.csv").write_text("\n".join(ratings) + "\n")
    (root / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n" + "\n".join(f"9,{m},4.0,{m}" for m in range(1, 5)) + "\n"
    )
    (root / "posters").mkdir()
    (root / "posters" / "862.jpg").write_bytes(b"jpeg")  # by tmdb id
    (root / "posters" / "vzmL6fP7aPKNKPRTFnZmiUfciyV.jpg").write_bytes(b"jpeg")  # by poster file name
    return root


def test_movies_ratings_map_to_tmdb_ids_through_links(movies_dir, caplog):
    raw = get_importer("movies")(ImportSpec(path=str(movies_dir)))
    check_canonical(raw)
    assert raw.source["files"][0] == str(movies_dir / "ratings_small.csv")  # preferred over ratings.csv
    got = list(
        zip(raw.interactions["user_id"], raw.interactions["item_id"], raw.interactions["rating"], strict=True)
    )
    assert got == [
        ("1", "862", 4.0), ("1", "8844", 2.5), ("1", "15602", 5.0),
        ("2", "8844", 4.5), ("2", "15602", 1.0), ("2", "31357", 4.0), ("2", "862", 5.0),
        ("3", "11862", 3.0), ("3", "862", 4.0), ("3", "8844", 2.0),
    ]  # fmt: skip
    assert raw.interactions["label"].isna().all()  # labels come from --like-threshold
    assert raw.source["ratings_without_tmdb_id"] == 1  # movieId 5 has no tmdbId in links.csv
    assert "dropped 1 ratings of 1 movieIds" in caplog.text

    full = get_importer("movies")(ImportSpec(path=str(movies_dir / "ratings.csv")))
    assert set(full.interactions["user_id"]) == {"9"} and len(full.interactions) == 4


def test_movies_items_posters_genres_and_skipped_records(movies_dir, caplog):
    raw = get_importer("movies")(ImportSpec(path=str(movies_dir)))
    assert sorted(raw.items["item_id"]) == [
        "11862",
        "15602",
        "31357",
        "862",
        "8844",
    ]  # the broken records are skipped
    toy = item(raw.items, "862")
    assert toy["title"] == "Toy Story" and toy["category"] == "Animation, Comedy, Family"
    assert toy["description"] == "Led by Woody, Andy's toys live happily."
    assert toy["image"] == str((movies_dir / "posters" / "862.jpg").resolve())
    assert toy["extra"]["year"] == 1995 and toy["extra"]["imdb_id"] == "tt0114709"
    assert toy["extra"]["movielens_ids"] == [1, 6]
    jumanji = item(raw.items, "8844")
    assert jumanji["image"] == str((movies_dir / "posters" / "vzmL6fP7aPKNKPRTFnZmiUfciyV.jpg").resolve())
    assert jumanji["description"] == "When siblings Judy and Peter discover a board game..."
    assert (
        item(raw.items, "15602")["image"] == "https://image.tmdb.org/t/p/w500/6ksm1sjKMFLbO7UY2i6G1ju9SML.jpg"
    )
    waiting = item(raw.items, "31357")
    assert waiting["image"] == "" and waiting["category"] == "" and "year" not in waiting["extra"]
    # header + 6 records (Jumanji's overview spans 2 lines); the broken record on lines 8-9 (line 9 has
    # the date as id); the repeat on line 10
    lines = [s["line"] for s in raw.source["metadata_skipped"]]
    assert lines == [8, 9] and raw.source["metadata_records_skipped"] == 2
    assert "id '1997-08-20' is not a TMDB id" in raw.source["metadata_skipped"][1]["reason"]
    assert "10 fields where 24 are expected" in raw.source["metadata_skipped"][0]["reason"]
    assert "skipped 2 malformed records" in caplog.text
    assert raw.source["metadata_repeated_ids"] == 1


def test_movies_prepare_end_to_end_history_length_5_unless_given(movies_dir, tmp_path, capsys):
    base = ["prepare", "movies", "--path", str(movies_dir), "--kcore", "0", "--num-negatives", "1"]
    assert main([*base, "--out", str(tmp_path / "a")]) == 0
    meta = Dataset(tmp_path / "a").meta
    assert meta["config"]["ctr_history_len"] == 5
    assert meta["source"]["name"] == "movies"
    assert main([*base, "--out", str(tmp_path / "b"), "--ctr-history-len", "7"]) == 0
    assert Dataset(tmp_path / "b").meta["config"]["ctr_history_len"] == 7
    cfg = tmp_path / "c.yaml"
    cfg.write_text("ctr_history_len: 3\n")
    assert main([*base, "--out", str(tmp_path / "c"), "--config", str(cfg)]) == 0
    assert Dataset(tmp_path / "c").meta["config"]["ctr_history_len"] == 3
    capsys.readouterr()
    # the Python API applies the source's defaults too; PrepareConfig itself keeps the general default
    import llmrec

    assert (
        llmrec.prepare("movies", out=tmp_path / "d", path=str(movies_dir), kcore=0, num_negatives=1).meta[
            "config"
        ]["ctr_history_len"]
        == 5
    )
    meta = prepare(
        PrepareConfig(
            dataset="movies", path=str(movies_dir), out=str(tmp_path / "e"), kcore=0, num_negatives=1
        )
    )
    assert meta["config"]["ctr_history_len"] == 10


def test_movies_malformed_input_is_a_one_line_error(movies_dir, capsys):
    ratings = movies_dir / "ratings_small.csv"
    good = ratings.read_text()
    ratings.write_text(good.replace("1,3,5.0,964982224", "1,3,five,964982224"))
    with pytest.raises(LlmrecError) as e:
        get_importer("movies")(ImportSpec(path=str(movies_dir)))
    assert "'five' is not a number" in one_line_error(e, "ratings_small.csv", 4, "rating")
    ratings.write_text(good.replace("userId,", "user,"))
    with pytest.raises(LlmrecError) as e:
        get_importer("movies")(ImportSpec(path=str(movies_dir)))
    assert "no column 'userId'" in one_line_error(e, "ratings_small.csv", 1, "userId")
    ratings.write_text(good)

    meta = movies_dir / "movies_metadata.csv"
    meta.write_text(
        meta.read_text(encoding="utf-8").replace("[{'id': 12, 'name': 'Adventure'}]", "[{'id': 12,"),
        encoding="utf-8",
    )
    with pytest.raises(LlmrecError) as e:
        get_importer("movies")(ImportSpec(path=str(movies_dir)))
    assert "is not a list of" in one_line_error(e, "movies_metadata.csv", 3, "genres")

    (movies_dir / "links.csv").unlink()
    assert main(["prepare", "movies", "--path", str(movies_dir), "--out", str(movies_dir / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no links.csv or links_small.csv" in err[0]


# ----------------------------------------------------------------------------- Netflix Prize


@pytest.fixture
def netflix_dir(tmp_path: Path) -> Path:
    root = tmp_path / "netflix-prize-data"
    root.mkdir()
    (root / "combined_data_1.txt").write_text(
        "1:\n1488844,3,2005-09-06\n822109,5,2005-05-13\n885013,4,2005-10-19\n"
        "2:\n1488844,4,2005-09-07\n822109,2,2005-05-14\n"
    )
    (root / "combined_data_2.txt").write_text(
        "3:\n1488844,5,2005-09-08\n822109,4,2005-05-15\n885013,1,2005-10-20\n4:\n885013,3,2005-10-21\n"
    )
    titles = "1,2003,Dinosaur Planet\n2,NULL,Amélie, Special Edition\n3,1997,Character\n4,2004,Unrated\n"
    (root / "movie_titles.csv").write_bytes(titles.encode("latin-1"))
    (root / "posters").mkdir()
    (root / "posters" / "2.jpg").write_bytes(b"jpeg")
    return root


def test_netflix_blocks_titles_and_posters(netflix_dir, tmp_path):
    raw = get_importer("netflix")(ImportSpec(path=str(netflix_dir)))
    check_canonical(raw)
    day = utc("2005-09-06", "%Y-%m-%d")
    got = list(
        zip(raw.interactions["user_id"], raw.interactions["item_id"], raw.interactions["rating"], strict=True)
    )
    assert got[:4] == [
        ("1488844", "1", 3.0),
        ("822109", "1", 5.0),
        ("885013", "1", 4.0),
        ("1488844", "2", 4.0),
    ]
    assert len(got) == 9 and got[-2] == ("885013", "3", 1.0)  # combined_data_2.txt read after _1
    assert raw.interactions["timestamp"].iloc[0] == day
    two = item(raw.items, "2")
    assert two["title"] == "Amélie, Special Edition" and "year" not in two["extra"]  # comma kept, NULL year
    assert two["image"] == str((netflix_dir / "posters" / "2.jpg").resolve())
    assert item(raw.items, "1")["extra"] == {"year": 2003} and item(raw.items, "1")["image"] == ""
    one = get_importer("netflix")(ImportSpec(path=str(netflix_dir / "combined_data_2.txt")))
    assert set(one.interactions["item_id"]) == {"3", "4"}
    pics = tmp_path / "pics"
    pics.mkdir()
    (pics / "3.png").write_bytes(b"png")
    raw = get_importer("netflix")(ImportSpec(path=str(netflix_dir), image_dir=str(pics)))
    assert (
        item(raw.items, "3")["image"] == str((pics / "3.png").resolve())
        and item(raw.items, "2")["image"] == ""
    )


def test_netflix_prepare_end_to_end_history_length_10_and_image_dir(netflix_dir, tmp_path):
    pics = tmp_path / "pics"
    pics.mkdir()
    (pics / "3.jpg").write_bytes(b"jpeg")
    out = tmp_path / "nf"
    args = ["prepare", "netflix", "--path", str(netflix_dir), "--out", str(out), "--image-dir", str(pics)]
    assert main([*args, "--kcore", "0", "--num-negatives", "1"]) == 0
    ds = Dataset(out)
    assert ds.meta["config"]["ctr_history_len"] == 10
    assert ds.meta["config"]["image_dir"] == str(pics)
    assert ds.meta["counts"] == {"users": 3, "items": 4, "interactions": 9}
    images = dict(zip(ds.items["item_id"], ds.items["image"], strict=True))
    assert images == {"1": "", "2": "", "3": str((pics / "3.jpg").resolve()), "4": ""}
    ctr = pd.concat([pd.read_parquet(out / "ctr" / f"{s}.parquet") for s in ("train", "valid", "test")])
    assert len(ctr) > 0 and set(ctr["label"]) <= {0, 1}


def test_netflix_blocks_across_read_chunks(netflix_dir, monkeypatch):
    """The rating files are read in chunks: a block that goes on in the next chunk keeps its MovieID, and
    an error line is numbered in the file, not in its chunk."""
    from llmrec.data.importers import netflix

    whole = get_importer("netflix")(ImportSpec(path=str(netflix_dir))).interactions
    monkeypatch.setattr(netflix, "_CHUNK", 2)
    chunked = get_importer("netflix")(ImportSpec(path=str(netflix_dir))).interactions
    pd.testing.assert_frame_equal(whole, chunked)
    (netflix_dir / "combined_data_2.txt").write_text(
        "3:\n1488844,5,2005-09-08\n822109,4,2005-05-15\n1,0,2005-01-01\n"
    )
    with pytest.raises(LlmrecError) as e:
        get_importer("netflix")(ImportSpec(path=str(netflix_dir)))
    assert "'0' is not a rating" in one_line_error(e, "combined_data_2.txt", 4, "Rating")


@pytest.mark.parametrize(
    ("text", "row", "field", "message"),
    [
        ("1:\n1488844,6,2005-09-06\n", 2, "Rating", "'6' is not a rating from 1 to 5"),
        ("1488844,3,2005-09-06\n", 1, "MovieID", "a rating line before any 'MovieID:' line"),
        ("1:\n1488844,3,2005-09-06\n822109,4,06/09/2005\n", 3, "Date", "'06/09/2005' is not a date"),
        ("1:\n1488844,3\n", 2, "Date", "2 comma-separated fields where 3 are expected"),
        ("x1:\n1488844,3,2005-09-06\n", 1, "MovieID", "is not a 'MovieID:' line"),
        ("1:\nabc,3,2005-09-06\n", 2, "CustomerID", "'abc' is not a customer id"),
    ],
)
def test_netflix_malformed_rating_lines_are_one_line_errors(netflix_dir, text, row, field, message):
    (netflix_dir / "combined_data_2.txt").write_text(text)
    with pytest.raises(LlmrecError) as e:
        get_importer("netflix")(ImportSpec(path=str(netflix_dir)))
    assert message in one_line_error(e, "combined_data_2.txt", row, field)


def test_netflix_malformed_titles_are_one_line_errors(netflix_dir):
    titles = netflix_dir / "movie_titles.csv"
    titles.write_bytes(b"1,2003,Dinosaur Planet\n2,20O4,Typo\n")
    with pytest.raises(LlmrecError) as e:
        get_importer("netflix")(ImportSpec(path=str(netflix_dir)))
    assert "'20O4' is neither a year nor NULL" in one_line_error(e, "movie_titles.csv", 2, "YearOfRelease")
    titles.write_bytes(b"1,2003\n")
    with pytest.raises(LlmrecError) as e:
        get_importer("netflix")(ImportSpec(path=str(netflix_dir)))
    one_line_error(e, "movie_titles.csv", 1, "Title")
    titles.unlink()
    with pytest.raises(LlmrecError, match="no movie_titles.csv"):
        get_importer("netflix")(ImportSpec(path=str(netflix_dir)))


def random_mind(root: Path, users: int = 12, seed: int = 0) -> Path:
    """A MIND folder in the published layout: ``users`` users with 4 to 8 impressions each (2 to 4 news
    shown, 1 or 2 clicked), a MIND history of 0 to 3 news; 30 news."""
    import numpy as np

    rng = np.random.default_rng(seed)
    news = [[f"N{i}", "news", "newsus", f"Title {i}", f"Abstract {i}.", "", "[]", "[]"] for i in range(30)]
    lines, impression = [], 0
    for u in range(users):
        history = " ".join(f"N{i}" for i in rng.choice(30, int(rng.integers(0, 4)), replace=False))
        for k in range(int(rng.integers(4, 9))):
            shown = rng.choice(30, int(rng.integers(2, 5)), replace=False)
            clicked = set(rng.choice(shown, int(rng.integers(1, min(2, len(shown) - 1) + 1)), replace=False))
            tokens = " ".join(f"N{i}-{int(i in clicked)}" for i in shown)
            when = f"11/{10 + k}/2019 {1 + u % 12}:{10 + u:02d}:00 PM"
            impression += 1
            lines.append([str(impression), f"U{u}", when, history, tokens])
    write_tsv(root / "news.tsv", news)
    write_tsv(root / "behaviors.tsv", lines)
    return root


@pytest.mark.parametrize("engine", ["pandas", "duckdb"])
def test_mind_histories_hold_only_clicks_of_earlier_impressions(tmp_path, engine):
    """Clicks of one impression never enter each other's histories: every row of an impression gets the same
    history, of clicks strictly before its time (on a MIND file where the second click of an impression used
    to see the first; pandas and duckdb engines)."""
    if engine == "duckdb":
        pytest.importorskip("duckdb")
    root = random_mind(tmp_path / "MIND")
    out = tmp_path / f"mind-{engine}"
    args = ["prepare", "mind", "--path", str(root), "--out", str(out), "--engine", engine, "--kcore", "0"]
    assert main([*args, "--num-negatives", "1"]) == 0
    ds = Dataset(out)
    ctr = pd.concat([ds.ctr(s) for s in ("train", "valid", "test")], ignore_index=True)
    inter = ds.interactions
    clicked_at = {
        (int(u), int(i)): int(t)
        for u, i, t, y in zip(inter["user_idx"], inter["item_idx"], inter["timestamp"], inter["label"])
        if y == 1
    }
    histories = ctr.groupby(["user_idx", "timestamp"])["history"].agg(lambda h: {tuple(x) for x in h})
    two_clicks = ctr.groupby(["user_idx", "timestamp"])["label"].sum() >= 2
    assert two_clicks.sum() >= 5  # impressions where the leak would show
    assert (histories.map(len) > 1).sum() == 0  # every row of an impression: one history
    for u, t, hist in zip(ctr["user_idx"], ctr["timestamp"], ctr["history"]):
        assert all(clicked_at[(int(u), int(i))] < t for i in hist)
    assert ds.meta["config"]["ctr_history_before"] == "time"  # the source's default, recorded
