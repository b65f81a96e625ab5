"""The item index: item/query vectors of the dot-product models, the FAISS index kinds, exclusions and
filters that still fill k, stale indexes refused, items beyond the index's coverage, similar items, the
service's route and the retrieval benchmark (small catalogs: seconds)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llmrec.models.base import build_model
from test_lgmrec import lgm_dataset as lgm_dataset  # the synthetic dataset, an image and a text feature

faiss = pytest.importorskip("faiss")

SMALL = {"dim": 8, "epochs": 1}
# every dot-product model, untrained (random weights) but attached to its features: vectors must give its
# scores whatever the weights are
VECTOR_MODELS = {
    "mf": SMALL,
    "vbpr": {**SMALL, "feature": "image", "visual_dim": 4},
    "sasrec": {"hidden": 16, "max_len": 12},
    "gru4rec": {"hidden": 16, "embedding": 16, "max_len": 12},
    "bert4rec": {"hidden": 16, "max_len": 12},
    "bm3": {**SMALL, "features": ["image", "text"]},
    "lgmrec": {**SMALL, "features": ["image", "text"]},
    "illmrec": {"features": ["image", "text"], "adaptor_hidden": 16, "d_shared": 8, "test_history": 5},
}


def _attached(name, ds, request):
    options = dict(VECTOR_MODELS[name])
    if name == "illmrec":
        options["backbone"] = {"llm": request.getfixturevalue("tiny_llm")}
    torch.manual_seed(0)
    model = build_model(name, options, ds.n_users, ds.n_items)
    if hasattr(model, "prepare") and name != "illmrec":
        model.prepare(ds)
    model.attach(ds)
    if name in ("mf", "vbpr"):  # biases start at 0: give them values, so that the folded column counts
        with torch.no_grad():
            model.item_bias.normal_()
    return model


@pytest.mark.parametrize("name", sorted(VECTOR_MODELS))
def test_vectors_reproduce_score_all(name, lgm_dataset, request):
    model = _attached(name, lgm_dataset, request)
    assert model.dot_product
    data = lgm_dataset.split("test")
    users, hist = data.users[:6], data.histories[:6]
    q, items = model.query_vectors(users, hist), model.item_matrix()
    assert q.dtype == items.dtype == np.float32 and items.shape[0] == lgm_dataset.n_items
    np.testing.assert_allclose(q @ items.T, model.score_all(users, hist), rtol=1e-4, atol=1e-4)


def test_models_without_vectors_say_so(lgm_dataset):
    model = build_model("popularity", {}, lgm_dataset.n_users, lgm_dataset.n_items)
    assert not model.dot_product
    with pytest.raises(Exception, match="'popularity' has no item vectors"):
        model.item_matrix()


# ----------------------------------------------------------------------------- the index kinds
def clustered(n=3000, d=16, queries=200, seed=0):
    from llmrec.retrieval.bench import synthetic_catalog

    return synthetic_catalog(n, d, 30, seed, queries)


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_each_kind_reaches_its_recall_target(kind):
    from llmrec.retrieval.index import build_index
    from llmrec.retrieval.vectors import exact_top, recall

    items, queries = clustered()
    index = build_index(items, kind, 0.9, queries[:100], k=10)
    assert index.info["recall"] >= 0.9 and index.info["reached_target"]
    fresh = queries[100:]  # queries the build never saw
    assert recall(index.search(fresh, 10)[1], exact_top(items, fresh, 10)[1]) >= (
        1.0 if kind == "flat" else 0.85
    )


def _queries(vectors, k, history=(), allowed=None):
    from llmrec.api import Query

    out = []
    for _ in vectors:
        q = Query(None, 0, np.asarray(history, dtype=np.int64), k)
        q.allowed = allowed  # the filters' (N,) mask
        out.append(q)
    return out


@pytest.fixture(scope="module")
def hnsw_catalog():
    from llmrec.retrieval.index import build_index

    items, queries = clustered()
    return items, queries, build_index(items, "hnsw", 0.95, queries[:100])


def test_history_exclusion_fills_k(hnsw_catalog):
    from llmrec.retrieval.lookup import RunIndex
    from llmrec.retrieval.vectors import exact_top

    items, queries, index = hnsw_catalog
    q = queries[150:151]
    history = exact_top(items, q, 60)[1][0]  # the 60 best items are all history
    ((rows, scores),) = RunIndex(index).top(q, items, _queries(q, 10, history))
    assert len(rows) == 10 and not np.isin(rows, history).any()
    np.testing.assert_allclose(scores, items[rows] @ q[0], rtol=1e-5)


@pytest.mark.parametrize("exact_below", [True, False], ids=["exact-over-allowed", "index-widened"])
def test_filter_removing_most_of_the_catalog_still_fills_k(hnsw_catalog, monkeypatch, exact_below):
    from llmrec.retrieval import lookup

    if not exact_below:  # force the index path: it must widen (or hand over to exact) until k pass
        monkeypatch.setattr(lookup, "EXACT_ITEMS", 0)
        monkeypatch.setattr(lookup, "EXACT_SHARE", 0.0)
    items, queries, index = hnsw_catalog
    allowed = np.zeros(len(items), dtype=bool)
    allowed[np.random.default_rng(1).choice(len(items), 60, replace=False)] = True  # 2% of the catalog
    q = queries[100:110]
    for rows, _ in lookup.RunIndex(index).top(q, items, _queries(q, 10, allowed=allowed)):
        assert len(rows) == 10 and allowed[rows].all()
    few = np.zeros(len(items), dtype=bool)
    few[[5, 9, 11]] = True  # fewer pass than k: every one of them
    ((rows, _),) = lookup.RunIndex(index).top(q[:1], items, _queries(q[:1], 10, history=[9], allowed=few))
    assert sorted(rows.tolist()) == [5, 11]


def test_items_added_beyond_the_index_are_found(hnsw_catalog):
    from llmrec.retrieval.lookup import RunIndex

    items, queries, index = hnsw_catalog  # the index covers these 3000 items
    q = queries[120:121]
    added = np.stack([5 * q[0], -q[0]])  # one new item far ahead of every other, one far behind
    grown = np.concatenate([items, added])
    ((rows, _),) = RunIndex(index).top(q, grown, _queries(q, 10))
    assert rows[0] == len(items) and len(items) + 1 not in rows.tolist() and len(rows) == 10


# ----------------------------------------------------------------------------- a run's index, end to end
@pytest.fixture(scope="module")
def sasrec_run(tmp_path_factory):
    """A tiny SASRec run on the synthetic dataset (30 users, 40 items), with an HNSW index."""
    from llmrec.cli import main
    from test_serve import make_run

    run = make_run(tmp_path_factory.mktemp("index"))
    assert main(["index", str(run), "--kind", "hnsw", "--queries", "20"]) == 0
    return run


def test_recommend_through_the_index_matches_exact(sasrec_run):
    import llmrec

    indexed, exact = llmrec.load(sasrec_run), llmrec.load(sasrec_run, index=False)
    assert indexed.info()["index"]["kind"] == "hnsw" and exact.index is None
    users = ["u1", "u2", "u7"]
    a, b = indexed.recommend(user_ids=users, k=5), exact.recommend(user_ids=users, k=5)
    assert a["item_id"].tolist() == b["item_id"].tolist()  # 40 items: HNSW finds the exact top
    np.testing.assert_allclose(a["score"], b["score"], rtol=1e-4, atol=1e-5)
    assert (
        indexed.recommend(histories=[["i001", "i002"]], k=3)["item_id"].tolist()
        == exact.recommend(histories=[["i001", "i002"]], k=3)["item_id"].tolist()
    )


def test_a_retrained_runs_index_is_refused(sasrec_run, tmp_path):
    import shutil

    import llmrec

    run = tmp_path / "run"
    shutil.copytree(sasrec_run, run)
    shutil.copytree(sasrec_run.parent / "ds", tmp_path / "ds")  # the dataset, where the run expects it
    model = llmrec.load(run, index=False)
    with torch.no_grad():
        model.model.item_emb.weight.add_(0.5)  # "retrained": other item vectors
    model.model.save(run / "model", model.dataset)
    with pytest.raises(Exception, match="built for other item vectors") as e:
        llmrec.load(run)
    assert "llmrec index" in str(e.value)
    assert llmrec.load(run, index=False).recommend(user_ids=["u1"], k=3).shape[0] == 3


def test_index_refuses_a_model_without_vectors(tmp_path, capsys):
    from conftest import one_error_line
    from llmrec.cli import main
    from test_serve import make_run

    run = make_run(tmp_path, model="popularity")
    assert main(["index", str(run)]) == 2
    assert "model 'popularity' has no item vectors" in one_error_line(capsys, "index")
    assert not (run / "index").exists()


def test_similar_items_and_their_route(sasrec_run):
    from fastapi.testclient import TestClient

    import llmrec
    from llmrec.serve import create_app

    model = llmrec.load(sasrec_run)
    similar = model.similar_items("i005", k=4)
    vectors = model.model.item_matrix()
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    cosine = unit @ unit[model.item_index["i005"]]
    cosine[model.item_index["i005"]] = -np.inf
    assert [r["item_id"] for r in similar] == [model.item_ids[i] for i in np.argsort(-cosine)[:4]]
    with TestClient(create_app(model), raise_server_exceptions=False) as client:
        body = client.get("/items/i005/similar", params={"k": 4}).json()
        assert [r["item_id"] for r in body["items"]] == [r["item_id"] for r in similar]
        assert client.get("/items/nope/similar").status_code == 404
        assert client.get("/health").json()["index"]["kind"] == "hnsw"
        assert client.get("/items/i005/similar", params={"k": 0}).json()["field"] == "k"


def test_bench_retrieval_writes_its_rows(tmp_path):
    import json

    from llmrec.cli import main

    out = tmp_path / "bench"
    argv = ["bench-retrieval", "--items", "500", "--dim", "8", "--queries", "40", "--latency-queries", "8"]
    assert main([*argv, "--batch", "4", "--threads", "1", "--clusters", "5", "--out", str(out)]) == 0
    rows = json.loads((out / "results.json").read_text())
    keys = {"items", "kind", "recall@10", "p50_ms", "p99_ms", "build_s", "memory_mb", "speedup_p50"}
    assert {(r["kind"], r["batch"]) for r in rows} == {
        (k, b) for k in ("exact", "flat", "ivf", "hnsw") for b in (1, 4)
    }
    assert all(keys <= set(r) and r["threads"] == 1 for r in rows)
    assert (out / "latency.png").stat().st_size > 0 and "| 500 | hnsw |" in (out / "results.md").read_text()
