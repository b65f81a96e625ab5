"""``llmrec bench`` times what ``llmrec train`` runs: every model trained in steps is prepared for the
dataset, set up for its stages and stepped by the trainer's own code; the others are refused in one line."""

import json

import numpy as np
import pytest
import torch

import test_model_contract
from llmrec.cli import main
from llmrec.data.dataset import Dataset
from llmrec.experiments.bench import benchable_models, time_training
from llmrec.models.base import available_models, build_model, get_model_class
from llmrec.training import fit

contract_dataset = test_model_contract.contract_dataset  # fixture: image, text and MF features

STEP = {"epochs": 1, "validate": False}  # what a few steps need; no validation in a benchmark anyway
# a tiny config of every model family (presets share their base model's code: one stands for them)
FAMILIES = {
    "sasrec": {"hidden": 8, "max_len": 8, "blocks": 1, "batch_size": 8},
    "gru4rec": {"hidden": 8, "embedding": 8, "max_len": 8, "batch_size": 8},
    "bert4rec": {"hidden": 8, "max_len": 8, "batch_size": 8},
    "mf": {"dim": 8, "batch_size": 32},
    "vbpr": {"dim": 8, "batch_size": 32, "feature": "image"},
    "bm3": {"dim": 8, "batch_size": 32, "features": ["image", "text"]},
    "lgmrec": {"dim": 8, "batch_size": 32, "features": ["image", "text"]},
    "illmrec": {
        "features": ["image"],
        "adaptor_hidden": 8,
        "d_shared": 8,
        "batch_size": 4,
        "head_epochs": 1,
        "head_windows": 1,
    },
    "unimp": {"features": ["image"], "adaptor_hidden": 8, "d_shared": 8, "batch_size": 4, "head_epochs": 0},
    "histllm": {**test_model_contract.CTR_TINY, "train_examples": 12, "batch_size": 4},
    "collm": {**test_model_contract.CTR_TINY, "train_examples": 12, "batch_size": 4},
}
LLM = {"illmrec": "tiny_llm", "unimp": "tiny_vlm", "histllm": "tiny_llm", "collm": "tiny_llm"}
REFUSED = {"popularity", "random", "recgpt4v"}  # no optimiser steps: nothing to time


def _options(name, ds, request):
    options = dict(FAMILIES[name], **STEP)
    if name in LLM:
        options["backbone"] = {"llm": request.getfixturevalue(LLM[name])}
        if name in ("histllm", "collm"):
            options["backbone"]["lora"] = True  # step 1 (LoRA) and step 2: both stages timed
    if name == "unimp":
        from conftest import add_item_images

        add_item_images(ds.root)
    return options


def test_the_benchable_models_are_the_ones_trained_in_steps():
    """Decided by the model classes' declared property: every registered model is benched or refused."""
    assert set(benchable_models()) == set(available_models()) - REFUSED
    assert {n for n in available_models() if get_model_class(n).trained_in_steps} >= set(FAMILIES)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_bench_times_every_model_family(name, contract_dataset, request, capsys, tmp_path):
    config, out = tmp_path / "bench.yaml", tmp_path / "bench.json"
    config.write_text(json.dumps({"options": _options(name, contract_dataset, request)}))  # YAML reads JSON
    argv = [
        "experiments",
        "bench",
        "--data",
        str(contract_dataset.root),
        "--model",
        name,
        "--config",
        str(config),
    ]
    assert main([*argv, "--steps", "1", "--threads", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(name) and "training" in printed and "evaluation" in printed
    result = json.loads(out.read_text())
    stages = result["train_stages"]
    assert stages and all(s["steps"] == 1 and s["examples"] > 0 and s["seconds"] > 0 for s in stages)
    assert all(len(s["losses"]) == 3 and np.isfinite(s["losses"]).all() for s in stages)  # 2 warm-up + 1
    want = {"illmrec": ["end2end", "head"], "histllm": ["step1", "step2"], "collm": ["step1", "step2"]}
    assert [s["stage"] for s in stages] == want.get(name, [stages[0]["stage"]])
    if name in ("histllm", "collm"):  # CTR-only: its test examples, as llmrec train evaluates it
        assert result["eval_examples_per_s_ctr"] > 0 and "CTR examples/s" in printed
    else:
        assert result["eval_users_per_s_sampled"] > 0 and result["eval_users_per_s_full"] > 0


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_bench_refuses_a_model_without_steps_in_one_line(name, synthetic_dataset, capsys):
    assert main(["experiments", "bench", "--data", str(synthetic_dataset), "--model", name]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"'{name}'" in err
    assert all(n in err for n in benchable_models())  # what it can time instead


@pytest.mark.parametrize(
    "name, options",
    [
        # the trainer's options that the old hand-written step left out: clipping, a schedule, autocast
        (
            "sasrec",
            {"max_grad_norm": 0.05, "lr_schedule": "linear", "warmup_steps": 3, "mixed_precision": "bf16"},
        ),
        ("illmrec", {"max_grad_norm": 0.05, "lr_schedule": "cosine", "warmup_steps": 2}),
    ],
)
def test_the_benched_steps_are_the_trainers(name, options, contract_dataset, request):
    """Bench one epoch's worth of steps (2 warm-up + the rest) from the same seed as a one-epoch run: the
    same losses and bit-identical weights."""
    ds = contract_dataset
    opts = {**_options(name, ds, request), **options, "batch_size": 4}
    if name == "illmrec":
        opts["head_epochs"] = 0  # one stage: its losses are the run's history

    def model():
        torch.manual_seed(0)
        return build_model(name, opts, ds.n_users, ds.n_items)

    trained = model()
    (record,) = fit(trained, ds)
    benched = model()
    n_batches = benched.num_train_batches(Dataset(ds.root))
    (stage,) = time_training(benched, ds, steps=n_batches - 2, seed=0)
    assert len(stage["losses"]) == n_batches
    assert sum(stage["losses"]) / n_batches == record["loss"]  # summed in the same order
    a, b = trained.checkpoint_state(), benched.checkpoint_state()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_user_states_are_a_declared_capability(synthetic_dataset):
    """``llmrec probe`` asks the model class whether it has user states instead of inspecting the model."""
    from llmrec.errors import LlmrecError

    assert get_model_class("illmrec").has_user_representations()
    assert not any(get_model_class(n).has_user_representations() for n in ("sasrec", "popularity", "histllm"))
    ds = Dataset(synthetic_dataset)
    with pytest.raises(LlmrecError, match="'sasrec' exposes no user states"):
        build_model("sasrec", {}, ds.n_users, ds.n_items).user_representations([np.arange(3)])
