"""--quantize int8 and --dtype bfloat16 on the CPU: a tiny random backbone (hidden 32, 2 layers) quantised
after its trained weights load, agreeing with float32; refused where it cannot apply."""

import numpy as np
import pytest
import torch

import llmrec
from conftest import one_error_line, synthetic_tables
from llmrec.cli import main
from llmrec.errors import ConfigError
from llmrec.models.base import load_model, placement_for
from llmrec.placement import Placement

TINY = {"adaptor_hidden": 16, "d_shared": 8, "batch_size": 4, "epochs": 1, "eval_users": 8}
NO_EVAL = {"eval": {"ctr": False, "full_ranking": False, "splits": ["test"]}}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_llm):
    """A synthetic dataset with random item features, a tiny I-LLMRec run (LoRA on) and a popularity run."""
    from llmrec.data.dataset import Dataset
    from llmrec.data.processing import ProcessConfig, finalize, write_dataset
    from llmrec.features.store import ids_checksum, save_feature

    root = tmp_path_factory.mktemp("quant")
    items, inter = synthetic_tables()
    write_dataset(
        finalize(items, inter, ProcessConfig(kcore=0, num_negatives=10, seed=3), {}, {}, []), root / "d"
    )
    ds = Dataset(root / "d")
    rng = np.random.default_rng(0)
    for name, d in (("image", 8), ("text", 16), ("sasrec_item", 6)):
        table = rng.normal(size=(ds.n_items, d)).astype(np.float32)
        save_feature(
            ds.features_dir,
            name,
            table,
            {"kind": "item", "ids_sha256": ids_checksum(ds.items["item_id"].tolist())},
        )
    options = {**TINY, "backbone": {"llm": tiny_llm, "lora": True}}
    llmrec.train("illmrec", data=root / "d", out=root / "illmrec", options=options, seed=0, **NO_EVAL)
    llmrec.train("popularity", data=root / "d", out=root / "popularity", **NO_EVAL)
    return {"data": root / "d", "illmrec": root / "illmrec", "popularity": root / "popularity", "ds": ds}


def test_int8_quantises_the_decoder_after_loading_and_agrees_with_float32(runs):
    from scipy.stats import kendalltau

    exact = load_model(runs["illmrec"], device="cpu", data=runs["ds"])
    cheap = load_model(runs["illmrec"], device="cpu", data=runs["ds"], quantize="int8")
    assert cheap.placement == Placement("cpu", "float32", "int8")
    backbone = cheap.backbone
    kinds = {type(m) for m in backbone.model.get_decoder().modules()}
    assert torch.ao.nn.quantized.dynamic.Linear in kinds
    assert torch.nn.Linear not in kinds  # LoRA merged, then every linear layer int8
    assert type(backbone.model.get_output_embeddings()) is torch.nn.Linear  # token_logits reads its rows
    hist = runs["ds"].split("test").histories[:6]
    a, b = exact.score_all(np.arange(6), hist), cheap.score_all(np.arange(6), hist)
    assert a.shape == b.shape and np.isfinite(b).all()
    taus = [kendalltau(x, y).statistic for x, y in zip(a, b, strict=True)]
    assert min(taus) > 0.8, taus
    with pytest.raises(ConfigError, match="cannot train"):
        cheap.train()


def test_load_recommend_and_evaluate_take_quantize(runs, capsys):
    model = llmrec.load(runs["illmrec"], quantize="int8")
    assert model.model.placement.quantize == "int8"
    user = model.user_ids[0]
    exact = llmrec.load(runs["illmrec"]).recommend(user_ids=[user], k=5)
    cheap = model.recommend(user_ids=[user], k=5)
    assert len(set(exact["item_id"]) & set(cheap["item_id"])) >= 3
    assert main(["recommend", str(runs["illmrec"]), "--user", user, "--k", "3", "--quantize", "int8"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 3
    metrics = llmrec.evaluate(
        runs["illmrec"], quantize="int8", ctr=False, full_ranking=False, splits=["test"]
    )
    assert 0 <= metrics["test"]["hit@10"] <= 1


def test_bfloat16_runs_on_the_cpu(runs):
    model = load_model(runs["illmrec"], device="cpu", dtype="bfloat16", data=runs["ds"])
    assert model.backbone.dtype == torch.bfloat16
    scores = model.score_all(np.arange(2), runs["ds"].split("test").histories[:2])
    assert np.isfinite(scores).all()


def test_refusals_are_one_line(runs, capsys, monkeypatch):
    with pytest.raises(ConfigError, match="'sasrec' has none"):
        placement_for("sasrec", quantize="int8")  # a torch model without an LLM
    with pytest.raises(ConfigError, match="not bfloat16; drop --dtype bfloat16"):
        Placement.resolve("cpu", "bfloat16", quantize="int8")
    with pytest.raises(ConfigError, match="quantize 'int4' is not one of"):
        Placement.resolve("cpu", quantize="int4")
    capsys.readouterr()
    assert main(["recommend", str(runs["popularity"]), "--user", "1", "--quantize", "int8"]) == 2
    assert "--quantize applies to LLM backbones" in one_error_line(capsys, "recommend")
    assert main(["train", "illmrec", "--data", str(runs["data"]), "--quantize", "int8"]) == 2
    assert "training needs float32 weights" in one_error_line(capsys, "train")
    monkeypatch.setattr("llmrec.placement.resolve_device", lambda spec: "cuda")
    with pytest.raises(ConfigError, match="is for the CPU .* on a GPU use --dtype bfloat16"):
        Placement.resolve("cuda", "float32", quantize="int8")


def test_quant_bench_measures_the_variants_side_by_side(runs, tmp_path):
    from llmrec.experiments.quantize_bench import QuantBenchConfig, format_quant_bench, run_quant_bench

    cfg = QuantBenchConfig(runs=[str(runs["illmrec"])], users=4, out=str(tmp_path / "qb"))
    result = run_quant_bench(cfg)
    ranking = result["runs"][str(runs["illmrec"])]["ranking"]
    assert set(ranking) == {"float32", "int8", "bfloat16"}
    assert ranking["float32"]["top10_overlap"] == 1.0 and ranking["float32"]["kendall_tau"] == pytest.approx(
        1
    )
    assert ranking["int8"]["candidates"] == 11 and ranking["int8"]["seconds_per_user"] > 0
    table = format_quant_bench(result)
    assert "| int8 |" in table and "CPU:" in table and (tmp_path / "qb" / "quant_bench.md").exists()
    with pytest.raises(ConfigError, match="variants"):
        QuantBenchConfig(runs=["x"], variants=["int4"])


def test_a_model_with_a_known_int8_cost_warns_when_quantised(runs, monkeypatch, caplog):
    from llmrec.models.llm.histllm import HistLLM
    from llmrec.models.llm.illmrec import ILLMRec

    assert "quant-bench" in HistLLM.int8_caution  # per-candidate Yes/No logits: measured in the docs
    assert ILLMRec.int8_caution is None  # one pass per user: int8 keeps its ranking
    load_model(runs["illmrec"], device="cpu", data=runs["ds"], quantize="int8")
    assert "--quantize int8" not in caplog.text
    monkeypatch.setattr(ILLMRec, "int8_caution", "scores move")
    load_model(runs["illmrec"], device="cpu", data=runs["ds"], quantize="int8")
    assert "--quantize int8 on illmrec: scores move" in caplog.text
