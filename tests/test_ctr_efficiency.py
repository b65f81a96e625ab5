"""``llmrec ctr-efficiency``: the paper's Fig. 5 quantities (step-2 training time of a fixed budget, test
inference time of the trained models) for HistLLM with vs without UHEM, and its refusal to write titles
where the paper's w/o-UHEM variant writes descriptions. Structure and equal work only, never timings."""

import json
import math

import pytest
import torch

import test_histllm
from conftest import one_error_line
from llmrec.cli import main
from llmrec.errors import ConfigError, LlmrecError

ctr_dataset = test_histllm.ctr_dataset  # the fixture: synthetic CTR rows + image and MF features
SMALL = ["mapper_hidden=16", "encoder_dim=16"]


def _args(ds, tiny_llm, out, *extra):
    return [
        "experiments",
        "ctr-efficiency",
        "--data",
        str(ds.root),
        "--llm",
        tiny_llm,
        "--no-ranking",
        "--out",
        str(out),
        *extra,
    ]


def test_trained_view_trains_and_scores_both_variants_on_the_same_rows(
    ctr_dataset, tiny_llm, tmp_path, capsys
):
    out = tmp_path / "eff"
    args = _args(ctr_dataset, tiny_llm, out, "--lengths", "2", "4", "--train-steps", "3", "--batch-size", "4")
    args += [
        "--test-rows",
        "10",
        "--options",
        *SMALL,
        "description_texts=null",
    ]  # the items' own descriptions
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "step-2 training s" in printed and "Saved by UHEM, synthetic @4" in printed
    assert "Paper, Fig. 5" in printed and "| yes |" in printed and "| NO |" not in printed
    r = json.loads((out / "ctr_efficiency.json").read_text())
    assert r["points"] == []  # the throughput view only when asked for
    assert [(p["data"], p["history_items"]) for p in r["trained"]] == [("synthetic", 2), ("synthetic", 4)]
    for p in r["trained"]:
        w, wo = p["variants"]["uhem"], p["variants"]["inline"]
        for v in (w, wo):  # the same budget: steps, examples, rows, in the same order
            assert v["train_steps_run"] == 3 and v["train_examples"] == 12 and v["test_rows_scored"] == 10
            assert len(v["train_losses"]) == 3 and all(math.isfinite(x) for x in v["train_losses"])
            assert v["train_seconds"] > 0 and v["test_seconds"] > 0 and v["trainable_parameters"] > 0
        assert w["train_rows_sha256"] == wo["train_rows_sha256"]
        assert w["test_rows_sha256"] == wo["test_rows_sha256"]
        assert wo["test_prompt_tokens"] > w["test_prompt_tokens"]  # descriptions inline vs one [HIST] token
        assert w["trainable_parameters"] > wo["trainable_parameters"]  # + the history encoder
        assert p["train_time_saved"] == pytest.approx(1 - w["train_seconds"] / wo["train_seconds"])
        assert p["test_time_saved"] == pytest.approx(1 - w["test_seconds"] / wo["test_seconds"])
    at = {p["history_items"]: p["variants"] for p in r["trained"]}
    assert at[4]["inline"]["test_prompt_tokens"] > at[2]["inline"]["test_prompt_tokens"]
    assert (
        at[4]["uhem"]["test_prompt_tokens"] == at[2]["uhem"]["test_prompt_tokens"]
    )  # one token at any length
    assert {"ctr_efficiency.json", "ctr_efficiency.md", "ctr_efficiency.png"} <= {
        f.name for f in out.iterdir()
    }


def test_both_views_in_one_run(ctr_dataset, tiny_llm, tmp_path):
    from llmrec.experiments.ctr import CtrEfficiencyConfig, format_ctr_efficiency, run_ctr_efficiency

    cfg = CtrEfficiencyConfig(
        data=[str(ctr_dataset.root)],
        llm=tiny_llm,
        lengths=[3],
        measure="both",
        train_steps=1,
        batch_size=4,
        test_rows=0,  # the whole test split
        examples=4,
        options={"mapper_hidden": 16, "encoder_dim": 16, "description_texts": None},
        ranking=False,
        out=str(tmp_path / "both"),
    )
    r = run_ctr_efficiency(cfg)
    assert len(r["trained"]) == 1 and {p["uhem"] for p in r["points"]} == {True, False}
    assert r["trained"][0]["variants"]["inline"]["test_rows_scored"] == len(ctr_dataset.ctr("test"))
    text = format_ctr_efficiency(r)
    assert "Throughput of untrained models" in text and "Saved by UHEM, synthetic @3" in text
    assert (tmp_path / "both" / "ctr_efficiency.png").exists() and (
        tmp_path / "both" / "ctr_throughput.png"
    ).exists()


@pytest.mark.parametrize("measure", ["trained", "throughput"])
def test_refuses_without_descriptions(ctr_dataset, tiny_llm, tmp_path, capsys, monkeypatch, measure):
    """w/o UHEM writes descriptions inline: without the texts file it stops, naming the file and the
    command that writes it, before any model is built (no fallback to titles)."""
    import llmrec.models.base

    def no_model(*a, **k):
        raise AssertionError("a model was built before the refusal")

    monkeypatch.setattr(llmrec.models.base, "build_model", no_model)
    args = _args(ctr_dataset, tiny_llm, tmp_path / "e", "--lengths", "2", "--measure", measure)
    assert main([*args, "--options", *SMALL]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    missing = ctr_dataset.root / "texts" / "from_title.parquet"
    assert str(missing) in err and f"llmrec describe --data {ctr_dataset.root} --mode from_title" in err
    assert not (tmp_path / "e").exists()
    with pytest.raises(LlmrecError, match=r"texts/mine\.parquet.*--mode from_title --name mine"):
        from llmrec.experiments.ctr import CtrEfficiencyConfig, run_ctr_efficiency

        run_ctr_efficiency(
            CtrEfficiencyConfig(
                data=[str(ctr_dataset.root)],
                llm=tiny_llm,
                options={"description_texts": "mine"},
                ranking=False,
            )
        )


def test_refuses_options_that_change_the_comparison():
    from llmrec.experiments.ctr import CtrEfficiencyConfig

    for options in ({"ke": False}, {"history": "inline"}):
        with pytest.raises(ConfigError, match="drop ke/history"):
            CtrEfficiencyConfig(options=options)


def test_trained_view_loads_a_trained_step1_into_both_variants(ctr_dataset, tiny_llm, tmp_path, monkeypatch):
    """--options step1_from=RUN: both variants start step 2 from the same trained TALLRec LoRA."""
    from llmrec.experiments.ctr import CtrEfficiencyConfig, run_ctr_efficiency
    from llmrec.models.llm.histllm import HistLLM
    from llmrec.training import fit

    tallrec = test_histllm.make("tallrec", ctr_dataset, tiny_llm, history_len=3)
    fit(tallrec, ctr_dataset)
    tallrec.save(tmp_path / "tallrec")
    loaded = []
    original = HistLLM._load_step1

    def load(self, source, *step):
        original(self, source, *step)
        lora = {k: v for k, v in tallrec.checkpoint_state().items() if "lora_" in k}
        loaded.append(all(torch.equal(self.checkpoint_state()[k], v) for k, v in lora.items()))

    monkeypatch.setattr(HistLLM, "_load_step1", load)
    options = {"mapper_hidden": 16, "encoder_dim": 16, "description_texts": None}
    cfg = CtrEfficiencyConfig(
        data=[str(ctr_dataset.root)],
        llm=tiny_llm,
        lengths=[3],
        train_steps=1,
        batch_size=4,
        test_rows=4,
        options={**options, "step1_from": str(tmp_path / "tallrec")},
        ranking=False,
        out=str(tmp_path / "e"),
    )
    assert run_ctr_efficiency(cfg)["trained"][0]["variants"]["inline"]["train_steps_run"] == 1
    assert loaded == [True, True]


def test_ranking_refuses_a_run_of_another_family(synthetic_dataset, tmp_path, capsys):
    """--run names a model that cannot rank both ways (here popularity): one line naming it, exit 2."""
    run = tmp_path / "pop"
    assert main(["train", "popularity", "--data", str(synthetic_dataset), "--out", str(run)]) == 0
    capsys.readouterr()
    args = ["experiments", "ctr-efficiency", "--data", str(synthetic_dataset), "--lengths", "--run", str(run)]
    assert main([*args, "--out", str(tmp_path / "e")]) == 2
    line = one_error_line(capsys, "experiments ctr-efficiency")
    assert "is a popularity run: ranking is timed for HistLLM-family runs" in line


def test_both_views_time_the_trainers_step(ctr_dataset, tiny_llm, tmp_path, monkeypatch):
    """Every training step of both views is llmrec train's own (TrainingStep, on step 2), and the trained
    view records the losses that step returned: one untimed warm-up step per variant, then the budget."""
    from llmrec.experiments.ctr import CtrEfficiencyConfig, run_ctr_efficiency
    from llmrec.training.loop import TrainingStep

    calls = []
    original = TrainingStep.__call__

    def counted(self, batch, step=0, epoch=1):
        loss = original(self, batch, step, epoch)
        calls.append((self.stage.name, self.model.cfg.history, loss.item()))
        return loss

    monkeypatch.setattr(TrainingStep, "__call__", counted)
    cfg = CtrEfficiencyConfig(
        data=[str(ctr_dataset.root)],
        llm=tiny_llm,
        lengths=[2],
        measure="both",
        train_steps=2,
        batch_size=4,
        test_rows=4,
        examples=4,
        options={"mapper_hidden": 16, "encoder_dim": 16, "description_texts": None},
        ranking=False,
        out=str(tmp_path / "e"),
    )
    r = run_ctr_efficiency(cfg)
    assert {stage for stage, _, _ in calls} == {"step2"}
    trained, throughput = calls[:6], calls[6:]
    # warm-ups, then the variants alternating, the order flipping every step
    assert [h for _, h, _ in trained] == ["uhem", "inline", "uhem", "inline", "inline", "uhem"]
    assert [h for _, h, _ in throughput] == ["uhem"] * 3 + ["inline"] * 3  # warm-up + 2 timed each
    for history in ("uhem", "inline"):
        timed = [loss for _, h, loss in trained[2:] if h == history]
        assert r["trained"][0]["variants"][history]["train_losses"] == timed


def test_the_warm_up_sets_weights_optimiser_and_schedule_back(synthetic_dataset):
    """The trained view's untimed warm-up is a whole trainer step, undone: the timed steps start from the
    stage's start as if there had been no warm-up."""
    import numpy as np

    from llmrec.data.dataset import Dataset
    from llmrec.experiments.ctr import _warm_up
    from llmrec.models.base import build_model
    from llmrec.training.loop import TrainingStep, prepare_training, training_stage

    ds = Dataset(synthetic_dataset)
    options = {"hidden": 8, "max_len": 8, "blocks": 1, "batch_size": 8, "epochs": 2, "validate": False}
    model = build_model("sasrec", {**options, "lr_schedule": "linear"}, ds.n_users, ds.n_items)
    accelerator, device, (stage,) = prepare_training(model, ds)
    with training_stage(model, stage):
        step = TrainingStep(model, ds, stage, accelerator, device)
        batch = next(stage.batches(ds, np.random.default_rng(0)))
        weights = model.checkpoint_state()
        model.train()
        _warm_up(step, batch)
        assert all(torch.equal(model.checkpoint_state()[k], v) for k, v in weights.items())
        assert not step.opt.state  # Adam's moments: none yet
        assert step.scheduler.last_epoch == 0 and step.opt.param_groups[0]["lr"] == stage.lr  # the peak
        step(batch)  # what the warm-up undid: a step changes the weights and decays the learning rate
        assert not all(torch.equal(model.checkpoint_state()[k], v) for k, v in weights.items())
        assert step.opt.state and step.opt.param_groups[0]["lr"] < stage.lr
