"""Training through accelerate: one process trains exactly as a plain torch loop; two processes (a real
``accelerate launch`` on the CPU, gloo) share each epoch's batches, average their gradients and end with
the same weights, and only the main process writes the run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from llmrec.data.dataset import Dataset
from llmrec.errors import ConfigError
from llmrec.models.base import build_model, load_model
from llmrec.models.sasrec import SASRec
from llmrec.pipeline import seed_everything
from llmrec.training import accelerator_for, fit

SEED = 5
# 30 trainable users in batches of 7: 5 batches an epoch, so two processes also meet a short last round
OPTS = {"hidden": 16, "max_len": 12, "epochs": 2, "batch_size": 7, "patience": 10}


def _plain_loop(data, options, processes=1, every=1):
    """The reference for ``fit``: SASRec's epochs as a plain torch loop, each step averaging the gradients of
    ``processes`` consecutive batches (fewer in a short last round); ``every=2`` keeps every other batch
    only. Returns the state after each epoch and each epoch's mean step loss."""
    seed_everything(SEED)
    ds = Dataset(data)
    model = build_model("sasrec", options, ds.n_users, ds.n_items)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=model.cfg.lr, betas=(0.9, 0.98))
    rng = np.random.default_rng(torch.initial_seed() % 2**32)
    states, losses = [], []
    for _ in range(options["epochs"]):
        batches = list(model.train_batches(ds, rng))[::every]
        step_losses = []
        for start in range(0, len(batches), processes):
            per_batch = [model.loss(b) for b in batches[start : start + processes]]
            grads = [torch.autograd.grad(loss, params) for loss in per_batch]
            for p, *per_batch_grads in zip(params, *grads):
                p.grad = torch.stack(per_batch_grads).mean(0)
            opt.step()
            step_losses.append(torch.stack(per_batch).mean().item())
        states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        losses.append(sum(step_losses) / len(step_losses))
    return states, losses


def _best_epoch(history):
    ndcg = [h["valid_ndcg@10"] for h in history]
    return ndcg.index(max(ndcg)) + 1  # the first best, as fit keeps it


def test_one_process_trains_exactly_as_a_plain_torch_loop(synthetic_dataset):
    states, losses = _plain_loop(synthetic_dataset, OPTS)  # dropout on: the torch RNG must match too
    seed_everything(SEED)
    ds = Dataset(synthetic_dataset)
    model = build_model("sasrec", OPTS, ds.n_users, ds.n_items)
    history = fit(model, ds)
    assert [h["loss"] for h in history] == losses
    expected = states[_best_epoch(history) - 1]
    for name, value in model.state_dict().items():
        assert torch.equal(value, expected[name]), name


def test_bf16_autocasts_the_loss_and_keeps_fp32_weights(synthetic_dataset, monkeypatch):
    ds = Dataset(synthetic_dataset)
    seen = []
    loss = SASRec.loss

    def recording_loss(self, batch):
        seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        return loss(self, batch)

    monkeypatch.setattr(SASRec, "loss", recording_loss)
    weights = {}
    for precision in ("none", "bf16"):
        seen.clear()
        seed_everything(SEED)
        model = build_model(
            "sasrec", {**OPTS, "epochs": 1, "mixed_precision": precision}, ds.n_users, ds.n_items
        )
        history = fit(model, ds)
        assert np.isfinite(history[0]["loss"])
        assert set(seen) == ({None} if precision == "none" else {torch.bfloat16})
        weights[precision] = model.state_dict()
    assert all(v.dtype == torch.float32 for v in weights["bf16"].values() if v.is_floating_point())
    assert any(not torch.equal(weights["none"][k], weights["bf16"][k]) for k in weights["none"])


def test_precisions_that_cannot_apply_are_errors(synthetic_dataset, monkeypatch):
    ds = Dataset(synthetic_dataset)
    model = build_model("sasrec", {**OPTS, "mixed_precision": "fp16"}, ds.n_users, ds.n_items)
    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        accelerator_for(model)
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # `accelerate launch --mixed_precision bf16`
    model = build_model("sasrec", OPTS, ds.n_users, ds.n_items)
    with pytest.raises(ConfigError, match="pass -o mixed_precision=bf16"):
        accelerator_for(model)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_share_batches_average_gradients_and_agree(synthetic_dataset, tmp_path):
    options = {**OPTS, "dropout": 0.0}  # the reference cannot replay two processes' dropout masks
    out = tmp_path / "out"
    out.mkdir()
    command = [
        *(sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"),
        *("--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"),
        *("--main_process_port", str(_free_port()), __file__, str(synthetic_dataset), str(out)),
        *(f"{k}={v}" for k, v in options.items()),
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    run = out / "run"

    # only the main process wrote the run, once
    assert sorted(p.name for p in out.iterdir()) == ["rank0.safetensors", "rank1.safetensors", "run"]
    assert not (run / "checkpoint.pt").exists()
    log = (run / "log.txt").read_text()
    assert "2 processes" in log
    assert [log.count(f"epoch {e}: loss") for e in (1, 2)] == [1, 1]
    assert set(json.loads((run / "metrics.json").read_text())) == {"train", "valid", "test"}

    # both processes ended with the same weights, the ones saved
    ranks = [load_file(out / f"rank{i}.safetensors") for i in (0, 1)]
    saved = load_model(run / "model").state_dict()
    for name, value in ranks[0].items():
        assert torch.equal(value, ranks[1][name]), name
        assert torch.equal(value, saved[name]), name

    # ... which are those of one process averaging the gradients of batch pairs, not of either half alone
    history = json.loads((run / "history.json").read_text())
    states, losses = _plain_loop(synthetic_dataset, options, processes=2)
    np.testing.assert_allclose([h["loss"] for h in history], losses, rtol=1e-6)
    expected = states[_best_epoch(history) - 1]
    half = _plain_loop(synthetic_dataset, options, every=2)[0][_best_epoch(history) - 1]
    for name, value in ranks[0].items():
        assert torch.equal(value, expected[name]), name
    assert max((ranks[0][k] - half[k]).abs().max().item() for k in half) > 1e-3


def _train_as_one_of_two(data: str, out: str, *options: str) -> None:
    """One of the two processes of the test above (``accelerate launch`` runs this file): ``llmrec train``
    as the command line runs it, then the weights this process ended with, saved as rank<i>.safetensors."""
    from accelerate import PartialState

    import llmrec.training.loop
    from llmrec.cli import main

    loop = llmrec.training.fit

    def fit_and_keep_weights(model, ds, run=None, **kwargs):
        history = loop(model, ds, run, **kwargs)
        weights = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(weights, Path(out) / f"rank{PartialState().process_index}.safetensors")
        return history

    llmrec.training.fit = fit_and_keep_weights  # llmrec.pipeline looks the loop up at every call
    flags = [flag for option in options for flag in ("-o", option)]
    argv = ["train", "sasrec", "--data", data, "--out", str(Path(out) / "run"), "--seed", str(SEED), *flags]
    raise SystemExit(main([*argv, "--no-ctr", "--no-full-ranking", "--splits", "valid", "test"]))


if __name__ == "__main__":
    _train_as_one_of_two(*sys.argv[1:])
