"""The trainer's optimisation options (NeuralConfig): the defaults train exactly as the trainer did before
they existed; optimizer, adam_betas, lr_schedule, warm-up, max_grad_norm and validate=false do what the
HuggingFace Trainer's options do, and an interrupted run resumes its schedule exactly."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import re

import numpy as np
import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from llmrec.data.dataset import Dataset
from llmrec.errors import ConfigError
from llmrec.models.base import get_model_class, model_config
from llmrec.models.sasrec import SASRec
from llmrec.pipeline import seed_everything
from llmrec.runs import Run
from llmrec.training import fit

SEED = 5
# 30 trainable users in batches of 7: 5 optimiser steps an epoch
OPTS = {"hidden": 16, "max_len": 12, "epochs": 2, "batch_size": 7, "patience": 10}
STEPS_PER_EPOCH = 5


class DecoupledSASRec(SASRec):
    """SASRec with the class flag HistLLM sets (AdamW unless the options say otherwise)."""

    decoupled_weight_decay = True


class OwnLrSASRec(SASRec):
    """SASRec whose one stage has its own learning rate, as HistLLM's step 1 (step1_lr) has."""

    def stages(self, dataset):
        return [dataclasses.replace(stage, lr=0.01) for stage in super().stages(dataset)]


class UncountedSASRec(SASRec):
    """SASRec that does not say how many batches an epoch has."""

    def num_train_batches(self, dataset):
        return None


class Killed(Exception):
    pass


@pytest.fixture
def ds(synthetic_dataset):
    return Dataset(synthetic_dataset)


def _model(ds, cls=SASRec, **options):
    seed_everything(SEED)
    return cls(model_config("sasrec", {**OPTS, **options}), ds.n_users, ds.n_items)


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@dataclasses.dataclass
class Step:
    """What one optimiser step saw."""

    cls: type
    lr: float
    betas: tuple[float, float]
    eps: float
    weight_decay: float
    scheduled: bool  # a learning-rate scheduler is attached (it records initial_lr in the group)
    grad_norm: float  # total L2 norm of the gradients it steps with


@contextlib.contextmanager
def _steps():
    """Every optimiser step taken while the context is open, in order."""
    seen: list[Step] = []

    def hook(opt, args, kwargs):
        [group] = opt.param_groups
        grads = [p.grad.reshape(-1) for p in group["params"] if p.grad is not None]
        seen.append(
            Step(
                cls=type(opt),
                lr=group["lr"],
                betas=group["betas"],
                eps=group["eps"],
                weight_decay=group["weight_decay"],
                scheduled="initial_lr" in group,
                grad_norm=torch.linalg.vector_norm(torch.cat(grads)).item(),
            )
        )

    handle = register_optimizer_step_pre_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


def _never(*args, **kwargs):
    raise AssertionError("must not be called")


def _previous_trainer(ds, cls=SASRec, opt_cls=torch.optim.Adam, **options):
    """The trainer before these options, as a plain torch loop: ``opt_cls`` at the configured lr with betas
    (0.9, 0.98), no schedule, no clipping -> the weights after each epoch."""
    model = _model(ds, cls, **options)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = opt_cls(params, lr=model.cfg.lr, betas=(0.9, 0.98), weight_decay=model.cfg.weight_decay)
    rng = np.random.default_rng(torch.initial_seed() % 2**32)
    states = []
    for _ in range(model.cfg.epochs):
        for batch in model.train_batches(ds, rng):
            opt.zero_grad()
            model.loss(batch).backward()
            opt.step()
        states.append(_weights(model))
    return states


# ---------------------------------------------------------------- (1) the defaults are the previous trainer
def test_defaults_train_exactly_as_the_previous_trainer(ds, monkeypatch):
    states = _previous_trainer(ds)  # dropout on: the torch RNG must match too
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", _never)
    model = _model(ds)
    with _steps() as steps:
        history = fit(model, ds)
    assert len(steps) == OPTS["epochs"] * STEPS_PER_EPOCH
    assert {(s.cls, s.lr, s.betas, s.eps, s.weight_decay, s.scheduled) for s in steps} == {
        (torch.optim.Adam, 1e-3, (0.9, 0.98), 1e-8, 0.0, False)
    }
    assert all("valid_ndcg@10" in h for h in history)  # validated every epoch, the best kept
    ndcg = [h["valid_ndcg@10"] for h in history]
    assert _same(_weights(model), states[ndcg.index(max(ndcg))])


def test_a_decoupled_model_keeps_adamw_by_default(ds):
    assert get_model_class("histllm").decoupled_weight_decay  # the model that asks for AdamW
    options = {"epochs": 1, "weight_decay": 0.1}  # one epoch: its weights are the ones kept
    [expected] = _previous_trainer(ds, DecoupledSASRec, torch.optim.AdamW, **options)
    model = _model(ds, DecoupledSASRec, **options)
    with _steps() as steps:
        fit(model, ds)
    assert {(s.cls, s.betas, s.weight_decay) for s in steps} == {(torch.optim.AdamW, (0.9, 0.98), 0.1)}
    assert _same(_weights(model), expected)


@pytest.mark.parametrize(
    "cls, optimizer, expected",
    [
        (SASRec, "adamw", torch.optim.AdamW),
        (DecoupledSASRec, "adam", torch.optim.Adam),
        (DecoupledSASRec, "model", torch.optim.AdamW),
    ],
)
def test_optimizer_betas_and_eps_options(ds, cls, optimizer, expected):
    model = _model(
        ds, cls, optimizer=optimizer, adam_betas=[0.8, 0.999], adam_eps=1e-6, epochs=1, validate=False
    )
    with _steps() as steps:
        fit(model, ds)
    assert {(s.cls, s.betas, s.eps) for s in steps} == {(expected, (0.8, 0.999), 1e-6)}


# ---------------------------------------------------------------- (2) schedules: transformers' formulas
def _factor(schedule: str, step: int, warmup: int, total: int) -> float:
    """The learning rate of optimiser step ``step`` (from 0) as a fraction of the peak."""
    if step < warmup:
        return step / warmup
    progress = (step - warmup) / (total - warmup)
    return {
        "constant_with_warmup": 1.0,
        "linear": 1 - progress,
        "cosine": (1 + math.cos(math.pi * progress)) / 2,
    }[schedule]


@pytest.mark.parametrize(
    "schedule, warmup_option, warmup",
    [
        ("linear", {"warmup_steps": 3}, 3),
        ("cosine", {"warmup_ratio": 0.25}, 3),  # 2.5 of 10 steps, rounded up
        ("constant_with_warmup", {"warmup_steps": 4}, 4),
        ("linear", {}, 0),
    ],
)
def test_each_steps_learning_rate_follows_the_schedule(ds, schedule, warmup_option, warmup):
    """The stage's own lr (0.01; the model's lr option stays 1e-3) is the peak."""
    model = _model(ds, OwnLrSASRec, lr_schedule=schedule, **warmup_option)
    with _steps() as steps:
        fit(model, ds)
    total = OPTS["epochs"] * STEPS_PER_EPOCH
    expected = [0.01 * _factor(schedule, i, warmup, total) for i in range(total)]
    assert [s.lr for s in steps] == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert all(s.scheduled for s in steps)


def test_a_schedule_needs_the_stages_batch_count(ds):
    model = _model(ds, UncountedSASRec, lr_schedule="linear")
    with pytest.raises(ConfigError, match="does not say how many batches an epoch has") as e:
        fit(model, ds)
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------- (3) clipping
def test_max_grad_norm_clips_every_step(ds):
    options = {"epochs": 1, "validate": False}
    with _steps() as free:
        fit(_model(ds, **options), ds)
    with _steps() as clipped:
        fit(_model(ds, **options, max_grad_norm=1e-3), ds)
    assert min(s.grad_norm for s in free) > 1e-2  # so the clipping had work to do
    assert len(clipped) == STEPS_PER_EPOCH
    assert all(s.grad_norm <= 1e-3 + 1e-6 for s in clipped)


# ---------------------------------------------------------------- (4) a fixed number of epochs
def test_validate_false_trains_exactly_epochs_and_keeps_the_last_weights(ds, tmp_path, monkeypatch):
    import llmrec.training.loop as loop

    for name in ("validate", "evaluate_ranking"):
        monkeypatch.setattr(loop, name, _never)
    monkeypatch.setattr(SASRec, "validation_metric", _never)
    after: list = []
    train_epoch = loop.train_epoch

    def keeping_weights(model, *args, **kwargs):
        record = train_epoch(model, *args, **kwargs)
        after.append(_weights(model))
        return record

    monkeypatch.setattr(loop, "train_epoch", keeping_weights)
    model = _model(ds, epochs=3, patience=1, validate=False)
    with Run(tmp_path / "run", model.cfg) as run:
        history = fit(model, ds, run)
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert not any(k.startswith("valid_") for h in history for k in h)
    assert len(after) == 3 and _same(_weights(model), after[-1]) and not _same(after[1], after[2])
    assert json.loads((run.root / "training.json").read_text()) == {"epochs_run": 3}  # no best epoch
    assert json.loads((run.root / "history.json").read_text()) == history
    assert not (run.root / "checkpoint.pt").exists()
    log = (run.root / "log.txt").read_text()
    assert "3 epochs without validation" in log and "last epoch (3) are kept" in log


# ---------------------------------------------------------------- (5) resuming mid-schedule
@pytest.mark.parametrize("validate", [True, False])
def test_an_interrupted_run_resumes_its_schedule_exactly(ds, tmp_path, monkeypatch, validate):
    import llmrec.training.loop as loop

    options = {"epochs": 3, "lr_schedule": "linear", "warmup_ratio": 0.2, "max_grad_norm": 0.5}
    options["validate"] = validate
    reference = _model(ds, **options)
    with _steps() as uninterrupted, Run(tmp_path / "ref", reference.cfg) as run:
        fit(reference, ds, run)

    train_epoch, calls = loop.train_epoch, []

    def killed_in_epoch_2(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise Killed
        return train_epoch(*args, **kwargs)

    model = _model(ds, **options)
    with monkeypatch.context() as m, _steps() as first, Run(tmp_path / "run", model.cfg) as run:
        m.setattr(loop, "train_epoch", killed_in_epoch_2)
        with pytest.raises(Killed):
            fit(model, ds, run)
    assert len(first) == STEPS_PER_EPOCH and (tmp_path / "run" / "checkpoint.pt").exists()
    again = _model(ds, **options)
    with _steps() as rest, Run(tmp_path / "run", again.cfg) as run:
        fit(again, ds, run)
    assert "resumed from" in (run.root / "log.txt").read_text()
    lrs = [s.lr for s in uninterrupted]
    assert len(lrs) == 3 * STEPS_PER_EPOCH and lrs[0] == 0 and max(lrs) == pytest.approx(1e-3)
    assert [s.lr for s in first + rest] == lrs
    assert _same(_weights(again), _weights(reference))


# ---------------------------------------------------------------- (6) bad values
@pytest.mark.parametrize(
    "options, message",
    [
        ({"warmup_steps": -1}, "warmup_steps must be >= 0, got -1"),
        ({"lr_schedule": "linear", "warmup_ratio": 1.5}, "warmup_ratio must be in [0, 1], got 1.5"),
        ({"lr_schedule": "linear", "warmup_ratio": -0.1}, "warmup_ratio must be in [0, 1]"),
        ({"max_grad_norm": 0}, "max_grad_norm must be > 0, got 0"),
        ({"max_grad_norm": -1.0}, "max_grad_norm must be > 0"),
        ({"adam_betas": [0.9, 1.0]}, "adam_betas must be two numbers in [0, 1), got [0.9, 1.0]"),
        ({"adam_betas": [-0.1, 0.9]}, "adam_betas must be two numbers in [0, 1)"),
        ({"adam_betas": [0.9]}, "adam_betas must be two numbers in [0, 1)"),
        ({"adam_eps": 0}, "adam_eps must be > 0"),
        ({"optimizer": "sgd"}, "optimizer: 'sgd' is not one of ['model', 'adam', 'adamw']"),
        ({"lr_schedule": "step"}, "lr_schedule: 'step' is not one of"),
        ({"lr_schedule": "linear", "warmup_steps": 2, "warmup_ratio": 0.1}, "give one of them"),
        ({"warmup_steps": 5}, "a warm-up needs a schedule: -o lr_schedule=constant_with_warmup"),
        ({"validate": "no"}, "validate: expected true/false"),
    ],
)
def test_bad_values_are_one_line_config_errors(options, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as e:
        model_config("sasrec", options)
    assert "\n" not in str(e.value)


def test_the_readme_recipe_parses_from_the_command_line(synthetic_dataset, capsys):
    """The official I-LLMRec code's HuggingFace Trainer defaults, as docs/explanations/recipes.md spells them."""
    from llmrec.cli import main

    recipe = [
        *("optimizer=adamw", "lr=5e-5", "lr_schedule=linear", "max_grad_norm=1.0", "validate=false"),
        *("epochs=8", "adam_betas=[0.9, 0.999]"),
    ]
    flags = [flag for option in recipe for flag in ("-o", option)]
    assert main(["train", "sasrec", "--data", str(synthetic_dataset), *flags, "--print-config"]) == 0
    options = json.loads(capsys.readouterr().out)["options"]
    expected = {
        "optimizer": "adamw",
        "lr": 5e-5,
        "lr_schedule": "linear",
        "max_grad_norm": 1.0,
        "validate": False,
        "epochs": 8,
        "adam_betas": [0.9, 0.999],
    }
    assert {k: options[k] for k in expected} == expected


# ---------------------------------------------------------------- Mirror Gradient (issue 17: MG)


def _mirror_gradient_trainer(ds, interval, alpha1, alpha2, **options):
    """Mirror Gradient written out as a plain torch loop (the reference trainer's order): every
    ``interval``-th batch, step on alpha1 x loss, then on -alpha2 x the same batch's loss at the new weights."""
    model = _model(ds, **options)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=model.cfg.lr, betas=(0.9, 0.98))
    rng = np.random.default_rng(torch.initial_seed() % 2**32)
    states = []
    for _ in range(model.cfg.epochs):
        for b, batch in enumerate(model.train_batches(ds, rng)):
            opt.zero_grad()
            loss = model.loss(batch)
            if b % interval == 0:
                (alpha1 * loss).backward()
                opt.step()
                opt.zero_grad()
                (-alpha2 * model.loss(batch)).backward()
            else:
                loss.backward()
            opt.step()
        states.append(_weights(model))
    return states


def test_mirror_gradient_steps_twice_on_every_interval_th_batch(ds):
    options = {
        "mirror_gradient": True,
        "mg_interval": 2,
        "mg_alpha1": 1.4,
        "mg_alpha2": 0.3,
        "validate": False,
    }
    states = _mirror_gradient_trainer(ds, 2, 1.4, 0.3, **options)
    model = _model(ds, **options)
    with _steps() as steps:
        fit(model, ds)
    mirrored = -(-STEPS_PER_EPOCH // 2)  # batches 0, 2, 4, ... of every epoch
    assert len(steps) == OPTS["epochs"] * (STEPS_PER_EPOCH + mirrored)
    assert _same(_weights(model), states[-1])
    plain = _model(ds, validate=False)
    fit(plain, ds)
    assert not _same(_weights(plain), states[-1])
