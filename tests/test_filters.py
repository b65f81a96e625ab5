"""Business rules (``include``/``exclude``/``exclude_items``): applied before the top-k, so a query still gets
k items when k pass; list-valued columns match by any value; bad rules are QueryErrors naming the field.

Known answer: a filtered top-k equals the unfiltered ranking of the whole catalog with the items the rules
rule out removed. One popularity run (no torch weights) and one tiny SASRec run on a 200-item catalog whose
``category`` holds genre lists and whose ``extra`` holds a year and a list of tags."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import llmrec
from llmrec.api import QueryError
from llmrec.cli import main
from llmrec.filters import ItemAttributes, mask_scores, parse_rules

N_ITEMS = 200
GENRES = ["Comedy", "Drama", "Action", "Romance"]


def _category(i: int) -> str:
    """Every 20th item is a Horror (10 of 200): alone, or first/last of a genre list."""
    if i % 20 == 0:
        return ["Horror", "Horror, Comedy", "Drama, Horror"][i // 20 % 3]
    return ", ".join(GENRES[j % 4] for j in range(i % 4, i % 4 + 1 + i % 2))


def make_dataset(root: Path) -> Path:
    from llmrec.data.processing import ProcessConfig, finalize, write_dataset
    from llmrec.data.schema import make_interactions, make_items

    items = make_items(
        [
            {
                "item_id": f"m{i:03d}",
                "title": f"Movie {i}",
                "brand": f"studio{i % 3}",
                "category": _category(i),
                "year": 1990 + i % 5,
                "tags": ["new"] if i % 7 == 0 else ["classic", "catalog"],
            }
            for i in range(N_ITEMS)
        ],
        source="test",
    )
    rng = np.random.default_rng(0)
    rows = [
        {"user_id": f"u{u}", "item_id": f"m{int(i):03d}", "timestamp": 1000 + t}
        for u in range(40)
        for t, i in enumerate(rng.choice(N_ITEMS, size=8, replace=False, p=_popular()))
    ]
    inter = make_interactions(rows, source="test")
    tables = finalize(items, inter, ProcessConfig(kcore=0, num_negatives=5, seed=1), {}, {}, [])
    write_dataset(tables, root / "data")
    return root / "data"


def _popular() -> np.ndarray:
    p = 1.0 / (1.0 + np.arange(N_ITEMS))  # low ids popular: the Horror items are few and mostly unpopular
    return p / p.sum()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("filters")
    data = make_dataset(root)
    no_eval = {"eval": {"ctr": False, "full_ranking": False, "ks": [5]}}
    out = {"data": data}
    for name, options in (("popularity", {}), ("sasrec", {"hidden": 8, "max_len": 6, "epochs": 1})):
        out[name] = llmrec.train(name, data=data, out=root / name, options=options, **no_eval).dir
    return out


@pytest.fixture(scope="module", params=["popularity", "sasrec"])
def model(runs, request):
    return llmrec.load(runs[request.param], device="cpu")


def _expected(model, user: str, k: int, passes) -> list[str]:
    """The unfiltered ranking of the whole catalog, history removed, kept where ``passes(item row)``."""
    every = model.recommend(user_ids=[user], k=N_ITEMS)
    cat = model._catalog.set_index("item_id")
    kept = [i for i in every["item_id"] if passes(cat.loc[i], i)]
    return kept[:k]


def test_a_filter_removing_most_of_the_catalog_still_fills_k(model):
    """10 Horror items of 200, 95% of the catalog ruled out: k=5 still gets 5 items, all Horror, in the
    order the unfiltered ranking gives them."""
    for user in ("u0", "u7"):
        recs = model.recommend(user_ids=[user], k=5, include={"category": ["Horror"]})
        assert len(recs) == 5
        assert all("horror" in model.item(i)["category"].lower() for i in recs["item_id"])
        is_horror = lambda row, _: "Horror" in row["category"]  # noqa: E731
        assert recs["item_id"].tolist() == _expected(model, user, 5, is_horror)
    everything = model.recommend(user_ids=["u0"], k=50, include={"category": "horror"})  # one value, any case
    history = {model.item_ids[i] for i in model.sequences[model.user_index["u0"]]}
    horror = {i for i in model.item_ids if "Horror" in model.item(i)["category"]} - history
    assert len(horror) < len(model.item_ids) / 10 and set(everything["item_id"]) == horror


def test_list_columns_match_any_value_and_exclude_wins(model):
    """'Comedy' matches 'Comedy', 'Comedy, Drama' and 'Horror, Comedy'; exclude drops any match; include
    over two columns keeps the items matching both; a list in extra (tags) matches by element."""
    recs = model.recommend(user_ids=["u3"], k=20, include={"category": ["Comedy"]}, exclude={"year": [1990]})
    assert len(recs) == 20
    for iid in recs["item_id"]:
        row = model.item(iid)
        assert "Comedy" in row["category"].split(", ") and json.loads(row["extra"])["year"] != 1990
    both = model.recommend(user_ids=["u3"], k=5, include={"category": ["Action"], "brand": ["studio1"]})
    assert len(both) == 5
    assert all(model.item(i)["brand"] == "studio1" for i in both["item_id"])
    new = model.recommend(user_ids=["u3"], k=3, include={"tags": ["new"]}, exclude={"category": ["Drama"]})
    passes = lambda row, _: "new" in json.loads(row["extra"])["tags"] and "Drama" not in row["category"]  # noqa: E731
    assert new["item_id"].tolist() == _expected(model, "u3", 3, passes)


def test_exclude_items_and_candidates(model):
    top = model.recommend(user_ids=["u1"], k=3)["item_id"].tolist()
    after = model.recommend(user_ids=["u1"], k=3, exclude_items=top[:2])["item_id"].tolist()
    assert after[0] == top[2] and not set(after) & set(top[:2])
    cands = model.item_ids[:60]
    ranked = model.recommend(user_ids=["u1"], k=60, candidates=cands, include={"category": ["Horror"]})
    history = {model.item_ids[i] for i in model.sequences[model.user_index["u1"]]}
    horror = {i for i in cands if "Horror" in model.item(i)["category"]} - history
    assert 0 < len(ranked) < 60 and set(ranked["item_id"]) == horror
    with pytest.raises(QueryError) as e:
        model.recommend(user_ids=["u1"], exclude_items=["no-such"])
    assert e.value.field == "exclude_items" and e.value.status == 404


def test_filters_across_a_batch(model):
    """One rule for many users (and ad-hoc histories): every query gets k passing items, each its own."""
    users = [f"u{u}" for u in range(12)]
    recs = model.recommend(user_ids=users, k=4, exclude={"category": ["Comedy", "Drama"]})
    assert len(recs) == 4 * len(users)
    assert not any({"Comedy", "Drama"} & set(model.item(i)["category"].split(", ")) for i in recs["item_id"])
    for user in ("u0", "u11"):
        mine = recs.loc[recs["user"] == user, "item_id"].tolist()
        alone = model.recommend(user_ids=[user], k=4, exclude={"category": ["Comedy", "Drama"]})
        assert mine == alone["item_id"].tolist()
    q = [model.query(user_id=u, k=2, include={"year": ["1993"]}) for u in users]
    assert all(len(a) == 2 and all(model.item(r["item_id"])["item_id"] for r in a) for a in model.answer(q))
    years = {json.loads(model.item(r["item_id"])["extra"])["year"] for a in model.answer(q) for r in a}
    assert years == {1993}


@pytest.mark.parametrize(
    ("rules", "field", "says"),
    [
        ({"include": {"genre": ["Horror"]}}, "include.genre", "columns: item_id, title, brand, category"),
        ({"exclude": {"colour": ["red"]}}, "exclude.colour", "year"),
        ({"include": {"year": ["nineties"]}}, "include.year", "holds numbers"),
        ({"include": {"category": [True]}}, "include.category", "holds text"),
        ({"include": {"category": [{"a": 1}]}}, "include.category", "no value a rule can match"),
        ({"include": {"category": []}}, "include.category", "empty list"),
        ({"include": {"category": ["Westerns"]}}, "include.category", "no item has any of"),
        ({"include": ["category"]}, "include", "must map column names"),
        ({"exclude_items": "m001"}, "exclude_items", "not one string"),
    ],
)
def test_bad_rules_name_their_field(runs, rules, field, says):
    model = llmrec.load(runs["popularity"])
    with pytest.raises(QueryError) as e:
        model.recommend(user_ids=["u0"], **rules)
    assert e.value.field == field and e.value.status == 422 and says in str(e.value), str(e.value)


def test_an_exclude_value_no_item_has_excludes_nothing(runs):
    model = llmrec.load(runs["popularity"])
    plain = model.recommend(user_ids=["u0"], k=5)
    pd.testing.assert_frame_equal(
        plain, model.recommend(user_ids=["u0"], k=5, exclude={"category": ["Westerns"]})
    )


def test_text_matches_whole_and_by_part():
    catalog = pd.DataFrame(
        {
            "item_id": ["a", "b", "c", "d"],
            "category": [
                "Books > Literature & Fiction",
                "Clothing, Shoes & Jewelry > Women",
                "Books > Kids; Toys > Games",
                "",
            ],
            "extra": ['{"size": 10}', '{"size": "10"}', '{"flag": true}', "{}"],
        }
    )
    attrs = ItemAttributes(catalog)

    def passing(**rules):
        return catalog["item_id"][attrs.mask(rules.get("include"), rules.get("exclude"))].tolist()

    assert passing(include={"category": ["books"]}) == ["a", "c"]
    assert passing(include={"category": ["Books > Kids"]}) == ["c"]
    assert passing(include={"category": ["Clothing, Shoes & Jewelry"]}) == ["b"]
    assert passing(include={"category": ["Shoes & Jewelry"]}) == ["b"]  # a part of a comma list
    assert passing(include={"size": [10]}) == ["a", "b"]  # a number, and its text
    assert passing(exclude={"flag": [True]}) == ["a", "b", "d"]
    assert attrs.mask({"category": ["toys"]}, None) is attrs.mask({"category": ["toys"]}, None)  # cached


def test_mask_scores_rules_out_items_the_rules_never_saw():
    allowed = np.array([True, False, True])
    scores = mask_scores(np.arange(5, dtype=np.float64), allowed)  # 2 items added after the query
    assert scores.tolist() == [0.0, -np.inf, 2.0, -np.inf, -np.inf]
    cands = mask_scores(np.ones(3), allowed, np.array([4, 2, 1]))
    assert cands.tolist() == [-np.inf, 1.0, -np.inf]


def test_recommend_command_line_filters(runs, tmp_path, capsys):
    """--include/--exclude/--exclude-items print only passing items; a batch records them in its settings."""
    run = str(runs["popularity"])
    assert main(["recommend", run, "--user", "u0", "--k", "3", "--include", "category=Horror", "--json"]) == 0
    recs = json.loads(capsys.readouterr().out)
    assert len(recs) == 3 and all(r["item_id"] in {f"m{i:03d}" for i in range(0, N_ITEMS, 20)} for r in recs)
    out = tmp_path / "recs.parquet"
    argv = ["recommend", run, "--all-users", "--k", "2", "--out", str(out)]
    rules = ["--exclude", "category=Comedy", "year=1991", "--exclude-items", "m001", "m002"]
    assert main([*argv, *rules]) == 0
    table = pd.read_parquet(out)
    assert len(table) == 2 * 40 and not {"m001", "m002"} & set(table["item_id"])
    model = llmrec.load(run)
    assert not any("Comedy" in model.item(i)["category"] for i in table["item_id"])
    import pyarrow.parquet as pq

    settings = json.loads(pq.read_schema(out).metadata[b"llmrec"])
    assert settings["exclude"] == {"category": ["Comedy"], "year": ["1991"]}
    assert settings["exclude_items"] == ["m001", "m002"] and settings["include"] is None
    assert parse_rules(["category=Sci-Fi = Fantasy"], "include") == {"category": ["Sci-Fi = Fantasy"]}
    assert main(["recommend", run, "--user", "u0", "--include", "Horror"]) == 2
    assert "expected COLUMN=VALUE" in capsys.readouterr().err
