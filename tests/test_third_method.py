"""A third LLM method, written only against the documented model contract
(docs/contributing/adding-a-model.md), works end to end with nothing changed in llmrec: it passes the model
contract suite, ``llmrec train NAME`` finds and trains it, it evaluates, ``llmrec.load`` recommends with it
and the service answers with it.

Its code is ``tests/last_title.py``: the guide shows that file verbatim, and a test here checks it does.
The module is imported when the tests run, not when they are collected: other test files parametrise over
the registered models as they are collected."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

import llmrec
import test_model_contract
from conftest import synthetic_tables
from llmrec.cli import main
from llmrec.models.base import available_models, build_model, get_model_class, placement_for
from llmrec.placement import Placement
from llmrec.serve import create_app
from test_model_contract import check_contract

contract_dataset = test_model_contract.contract_dataset  # fixture: the contract suite's synthetic dataset

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "contributing" / "adding-a-model.md"
METHOD = ROOT / "tests" / "last_title.py"
TINY = {"epochs": 40, "eval_every": 5}  # learns the synthetic walk in ~3 s on one CPU thread
RUN = {"epochs": 5, "eval_every": 5}  # the end-to-end path: learning is the contract test's


@pytest.fixture(scope="module")
def registered():
    """The method's module, imported now: importing it registers ``last_title``."""
    import last_title

    return last_title


def test_the_guide_shows_the_method_file_verbatim():
    blocks = re.findall(r"<!-- tests/last_title\.py -->\n```python\n(.*?)```\n", GUIDE.read_text(), re.S)
    assert blocks == [METHOD.read_text()], (
        "docs/contributing/adding-a-model.md must hold tests/last_title.py verbatim"
    )


def test_registered_with_declared_capabilities(registered):
    cls = get_model_class("last_title")
    assert cls is registered.LastTitle and "last_title" in available_models()
    assert not cls.builds_prompts() and not cls.has_user_representations() and cls.trained_in_steps
    model = build_model("last_title", {}, 3, 4, placement_for("last_title", "cpu"))
    assert model.placement == Placement(device="cpu", dtype="float32") and model.mixed_precision == "none"
    assert model.export_embeddings() == {} and model.feature_needs() == {}


def test_passes_the_model_contract(registered, contract_dataset, tiny_llm, tmp_path):
    ds = contract_dataset
    torch.manual_seed(0)
    model = build_model("last_title", {**TINY, "backbone": {"llm": tiny_llm}}, ds.n_users, ds.n_items)
    check_contract(model, ds, tmp_path, learns=True)
    # only the projection is saved; the frozen LM is loaded again from its own files
    assert set(model.checkpoint_state()) == {"proj.weight", "proj.bias"}


def test_train_evaluate_recommend_serve(registered, tiny_llm, tmp_path, capsys):
    from llmrec.data.processing import ProcessConfig, finalize, write_dataset

    items, inter = synthetic_tables()
    data = tmp_path / "ds"
    write_dataset(finalize(items, inter, ProcessConfig(kcore=0, num_negatives=10, seed=3), {}, {}, []), data)

    # `llmrec train last_title` finds the registered model, lists its options and trains it
    assert main(["train", "last_title", "--help"]) == 0
    assert "max_title_tokens=32" in capsys.readouterr().out
    options = [f"{k}={v}" for k, v in {**RUN, "backbone.llm": tiny_llm}.items()]
    argv = ["train", "last_title", "--data", str(data), "--out", str(tmp_path / "run"), "--seed", "0"]
    assert main(argv + [x for o in options for x in ("-o", o)]) == 0
    run = tmp_path / "run"
    assert (run / "model" / "model.safetensors").exists() and (run / "model" / "sources.json").exists()

    # evaluated: the run's metrics, and again through the API
    trained = json.loads((run / "metrics.json").read_text())
    assert {"ndcg@10", "full_ndcg@10", "auc"} <= set(trained["test"])
    metrics = llmrec.evaluate(run, ks=[1, 5], ctr=False)
    assert set(metrics) == {"valid", "test"} and 0 < metrics["test"]["ndcg@5"] <= 1

    # recommends: a known user, an ad-hoc history
    model = llmrec.load(run, device="cpu")
    recs = model.recommend(user_ids=["u3"], k=5)
    assert {"user", "rank", "item_id", "title", "score"} <= set(recs.columns) and len(recs) == 5
    history = ["i007", "i008", "i009"]
    adhoc = model.recommend(histories=[history], k=3, exclude_history=False)
    scores = model.model.score_all(np.array([0]), [np.array([model.item_index[i] for i in history])])[0]
    assert adhoc["item_id"].tolist() == [model.item_ids[i] for i in np.argsort(-scores)[:3]]
    np.testing.assert_allclose(adhoc["score"], np.sort(scores)[::-1][:3], rtol=1e-6)

    # serves: the service answers what the API answers
    with TestClient(create_app(model)) as client:
        assert client.get("/health").json()["model"] == "last_title"
        r = client.post("/recommend", json={"user_id": "u3", "k": 5})
        assert r.status_code == 200, r.text
        assert [x["item_id"] for x in r.json()["items"]] == recs["item_id"].tolist()
        r = client.post("/recommend", json={"history": history, "k": 3, "exclude_history": False})
        assert [x["item_id"] for x in r.json()["items"]] == adhoc["item_id"].tolist()
