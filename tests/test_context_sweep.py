"""``llmrec context-sweep`` (I-LLMRec Fig. 5): one run per (representation, budget) with that max_prompt_tokens,
finished runs reused, a changed option refused, unavailable representations refused before anything trains,
the table / CSV / PNG, and --seeds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import one_error_line
from llmrec.cli import main
from llmrec.data.dataset import Dataset
from llmrec.errors import LlmrecError
from llmrec.experiments.illmrec import ContextSweepConfig, run_context_sweep
from llmrec.features.store import ids_checksum, save_feature

# a tiny I-LLMRec: one epoch of 8 users, retrieval on the image feature, 10 test users
TINY = {
    "adaptor_hidden": 16,
    "d_shared": 8,
    "batch_size": 4,
    "epochs": 1,
    "train_users": 8,
    "eval_users": 4,
    "features": ["image"],
    "ila": False,
    "test_history": 8,
}


def save_item_feature(ds: Dataset, name: str, dim: int, encoder: str = "efficientnet-lite0") -> None:
    values = np.random.default_rng(len(name)).normal(size=(ds.n_items, dim)).astype(np.float32)
    spec = {"kind": "item", "encoder": encoder, "ids_sha256": ids_checksum(ds.items["item_id"].tolist())}
    save_feature(ds.features_dir, name, values, spec)


def save_texts(ds: Dataset, name: str) -> None:
    """A generated-texts table as 'llmrec describe' writes it (no source checksums: not compared)."""
    ids = ds.items["item_id"].astype(str).tolist()
    rows = pd.DataFrame(
        {
            "item_id": ids,
            "text": [f"a summary of {i}" for i in ids],
            "prompt_sha256": [""] * len(ids),
            "source_sha256": [""] * len(ids),
        }
    )
    (ds.root / "texts").mkdir(exist_ok=True)
    rows.to_parquet(ds.root / "texts" / f"{name}.parquet")


@pytest.fixture
def image_dataset(synthetic_dataset) -> Dataset:
    ds = Dataset(synthetic_dataset)
    save_item_feature(ds, "image", 8)
    return ds


def sweep(ds: Dataset, tiny_llm: str, out: Path, **kw) -> ContextSweepConfig:
    options = {**TINY, "backbone": {"llm": tiny_llm}, **kw.pop("options", {})}
    return ContextSweepConfig(
        data=str(ds.root), out=str(out), options=options, ranking_users=10, threads=1, **kw
    )


def test_one_run_per_point_with_its_budget_resumed_and_refused(
    image_dataset, tiny_llm, tmp_path, monkeypatch
):
    out = tmp_path / "sweep"
    cfg = sweep(image_dataset, tiny_llm, out, representations=["image", "attribute"], budgets=[4096, 250])
    result = run_context_sweep(cfg)
    points = {(p["representation"], p["budget"]): p for p in result["points"]}
    assert sorted(points) == [("attribute", 250), ("attribute", 4096), ("image", 250), ("image", 4096)]
    for (rep, budget), p in points.items():
        saved = json.loads((out / f"{rep}-{budget}" / "config.json").read_text())
        assert saved["options"]["max_prompt_tokens"] == budget
        assert saved["options"]["representation"] == rep
        assert saved["eval"]["ranking_users"] == 10
        assert 0 <= p["hit@10"] <= 1 and p["seeds"] == 1
    # the large budget holds every test history whole; the small one cuts the attribute prompts and keeps
    # them within it (up to a token per item: the model counts each item's tokens apart, and BPE may merge
    # differently at the joins)
    for rep in ("image", "attribute"):
        whole = points[(rep, 4096)]
        assert whole["history_items_mean"] == whole["history_items_available"] == 8
        assert whole["cut_share"] == 0
    small, whole = points[("attribute", 250)], points[("attribute", 4096)]
    assert small["history_items_mean"] < whole["history_items_mean"]
    assert small["prompt_tokens_mean"] < whole["prompt_tokens_mean"]
    assert small["prompt_tokens_max"] <= 250 + small["history_items_mean"] and small["cut_share"] > 0
    # the table: one row per point, Markdown + CSV + PNG
    md = (out / "context_sweep.md").read_text().splitlines()
    assert md[0].startswith("| representation | budget | seeds | hit@10 | ndcg@10 | test prompt tokens")
    assert len(md) == 2 + 4 and md[2].startswith("| image | 4096 | 1 | ")
    csv = pd.read_csv(out / "context_sweep.csv")
    assert len(csv) == 4 and {"hit@10", "ndcg@10", "prompt_tokens_mean", "cut_share"} <= set(csv.columns)
    assert (out / "context_sweep.png").stat().st_size > 1000

    # the same sweep again: every finished run is reused, nothing trains or evaluates
    import llmrec.pipeline

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(llmrec.pipeline, "train", no_training)
    again = run_context_sweep(cfg)
    assert [p["hit@10"] for p in again["points"]] == [p["hit@10"] for p in result["points"]]
    # another option for the same folders is refused, naming it
    changed = sweep(
        image_dataset, tiny_llm, out, representations=["image"], budgets=[4096], options={"epochs": 2}
    )
    with pytest.raises(LlmrecError, match=r"changed: options\.epochs"):
        run_context_sweep(changed)


def test_unavailable_representations_are_refused_before_training(
    synthetic_dataset, tiny_llm, tmp_path, capsys
):
    ds = Dataset(synthetic_dataset)  # no images, no generated texts
    save_item_feature(ds, "text", 16, encoder="all-minilm-l6-v2")
    out = tmp_path / "sweep"
    args = [
        "experiments",
        "context-sweep",
        "--data",
        str(ds.root),
        "--out",
        str(out),
        "-o",
        f"backbone={{llm: {tiny_llm}}}",
    ]
    assert main([*args, "--representations", "attribute", "image", "-o", "features=[text]"]) == 2
    err = one_error_line(capsys, "experiments context-sweep")
    assert "the 'image' representation needs item images and this dataset has none" in err
    save_item_feature(ds, "image", 8)
    assert main([*args, "--representations", "image", "summary", "-o", "features=[image]"]) == 2
    err = one_error_line(capsys, "experiments context-sweep")
    assert "the 'summary' representation needs the generated item texts 'summary'" in err
    assert f"llmrec describe --data {ds.root} --mode summary" in err
    assert not out.exists()  # nothing trained, not even the representation that could run


def test_seeds_and_summary_texts(image_dataset, tiny_llm, tmp_path):
    save_texts(image_dataset, "summary")
    out = tmp_path / "sweep"
    cfg = sweep(image_dataset, tiny_llm, out, representations=["summary"], budgets=[4096], seeds=[0, 1])
    [point] = run_context_sweep(cfg)["points"]
    assert point["seeds"] == 2 and point["hit@10_std"] is not None
    for seed in (0, 1):
        saved = json.loads((out / "summary-4096" / f"seed-{seed}" / "config.json").read_text())
        assert saved["seed"] == seed and saved["options"]["max_prompt_tokens"] == 4096
    row = (out / "context_sweep.md").read_text().splitlines()[2]
    assert row.startswith("| summary | 4096 | 2 | ") and " ± " in row
