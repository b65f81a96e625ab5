"""The training loop of every torch model, readable in one sitting.

A model declares its training as stages (:meth:`~llmrec.models.neural.TorchRecommender.stages`: one by
default; e.g. HistLLM's LoRA step, then its mappers); :func:`fit` runs them in order. A stage trains
the parameters it names and nothing else, one epoch = the stage's batches, with the options of the
model's :class:`~llmrec.models.neural.NeuralConfig`:

- the optimiser: Adam, or AdamW for models with ``decoupled_weight_decay`` (``optimizer=adam|adamw``
  forces one), with ``adam_betas`` and ``adam_eps``, at the stage's learning rate;
- ``lr_schedule``: constant (no scheduler), or transformers' ``get_scheduler`` (constant_with_warmup,
  linear, cosine; ``warmup_steps`` or ``warmup_ratio``) over the stage's ``epochs`` x its optimiser steps
  per epoch, the stage's learning rate being the peak, stepped after every optimiser step;
- ``max_grad_norm``: the gradients (averaged over the processes, unscaled under fp16) are clipped to this
  total norm before every step;
- ``validate`` (default): every ``eval_every`` epochs the model is validated and the best state is
  kept; ``patience`` validations without improvement end the stage. The criterion is valid NDCG@10 on
  the frozen ranking candidates, unless the model's ``validation_metric(ds)`` gives a (name, value) pair
  (higher is better), e.g. valid AUC of a CTR model; the run records it as ``best_<name>``.
  ``validate=false``: exactly ``epochs`` epochs, never validated, and the last weights are kept (the
  HuggingFace Trainer's recipe); the run records no best epoch or criterion, only ``epochs_run``.

With a run directory, a checkpoint (weights, optimiser, scheduler, RNG states, best so far) is written
atomically after every epoch, so an interrupted run resumes where it stopped when started again with the
same run directory; ``history.json`` and ``training_curve.png`` record loss and validation metrics. With
several stages these files carry the stage's name (``checkpoint-<stage>.pt`` ...), and every finished stage
but the last leaves its weights and RNG states in ``stage-<stage>.safetensors``: a run restarted after it
goes on with the next stage. Checkpoints are read onto the CPU and then moved, so a run checkpointed on a
GPU machine resumes on a CPU one and vice versa.

``log_with`` (tensorboard, wandb, mlflow) also sends every epoch's record (loss, validation metrics; keys
prefixed with the stage's name when there are several) to an experiment tracker through accelerate's
trackers, from the main process only; the model's and the run's configs are its hyperparameters, and
local trackers write under ``<run>/tracking``.

One optimiser step (:class:`TrainingStep`: autocast, backward, averaging, clipping, the optimiser, the
schedule) is the trainer's and the benchmarks' alike; :func:`prepare_training` and :func:`training_stage`
set a model up for a stage as :func:`fit` does, so ``llmrec bench`` times exactly what ``llmrec train`` runs.

Devices, mixed precision and several processes go through accelerate (:mod:`llmrec.training.distributed`).
Every process validates the same weights on
the same users, the main process's numbers decide early stopping everywhere, and only the main process
writes checkpoints, history and curves. One process runs exactly the loop it ran before accelerate.
"""

from __future__ import annotations

import base64
import contextlib
import contextvars
import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from tqdm.auto import tqdm

from llmrec.errors import ConfigError, LlmrecError
from llmrec.eval.evaluator import evaluate_ranking, seeded_rows
from llmrec.training.distributed import (
    accelerator_for,
    average_gradients,
    broadcast_from_main,
    flat,
    float_buffers,
    my_share,
    tracked_config,
)
from llmrec.utils.io import atomic_path

if TYPE_CHECKING:  # the trainer knows models by their declared contract: types only, no import at run time
    import pandas as pd

    from llmrec.data.dataset import Dataset, Split, SplitData
    from llmrec.models.base import Recommender
    from llmrec.models.neural import Batch, Stage, TorchRecommender

log = logging.getLogger(__name__)

# (stage name, epoch, the epoch's record) -> True to stop the stage: see watch_validation
ValidationWatcher = Callable[[str, int, dict[str, float]], bool]
_watcher: contextvars.ContextVar[ValidationWatcher | None] = contextvars.ContextVar("watcher", default=None)


@contextlib.contextmanager
def watch_validation(watcher: ValidationWatcher) -> Iterator[None]:
    """While held, ``watcher(stage, epoch, record)`` is called after every validation of every stage
    :func:`fit` trains (``record``: the epoch's loss and validation metrics); when it returns True the stage
    stops there as an early stop does (the best weights so far are kept, the run is saved and evaluated).
    ``llmrec tune`` reports each validation to Optuna and stops a pruned trial through it."""
    token = _watcher.set(watcher)
    try:
        yield
    finally:
        _watcher.reset(token)


def fit(
    model: Recommender, ds: Dataset, run: Any | None = None, log_with: str = "none"
) -> list[dict[str, float]]:
    """Train ``model`` on ``ds``: a TorchRecommender through the stages it declares, in order; any other
    Recommender by its own ``fit``. ``log_with`` names an experiment tracker (tensorboard, wandb, mlflow;
    none). Returns the history (a record per epoch) of the last stage trained."""
    if not model.trained_in_steps:
        model.fit(ds, run)
        return []
    model = cast("TorchRecommender", model)  # trained_in_steps: the torch models
    if log_with != "none" and run is None:
        raise ConfigError(
            f"log_with={log_with} needs a run directory (the trackers write under <run>/tracking)"
        )
    accelerator, device, stages = prepare_training(
        model, ds, log_with, run.root / "tracking" if run is not None else None
    )
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    history: list[dict[str, float]] = []
    if log_with != "none":
        accelerator.init_trackers(run.root.name, flat(tracked_config(model, run)))
    try:
        for i, stage in enumerate(stages):
            last = i == len(stages) - 1
            marker = None if run is None or last else run.root / f"stage-{stage.name}.safetensors"
            if marker is not None and marker.exists():  # a restarted run: this stage finished before
                _load_marker(model, marker)
                log.info("%s %s already done: weights loaded from %s", model.name, stage.name, marker)
                continue
            if stage.load is not None:
                stage.load()
            elif stage.epochs:
                with training_stage(model, stage):
                    history = train_stage(model, ds, run, stage, accelerator, device, named=len(stages) > 1)
            if marker is not None and accelerator.is_main_process:
                _save_marker(marker, model)
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(flags[name])
        for tracker in accelerator.trackers:  # not end_training(): llmrec train still needs the process group
            tracker.finish()
    model.eval()  # a trained model is for scoring
    return history


def prepare_training(
    model: TorchRecommender, ds: Dataset, log_with: str = "none", tracking_dir: Path | None = None
) -> tuple[Accelerator, torch.device, list[Stage]]:
    """What :func:`fit` does before the first stage: the accelerator (device, mixed precision, tracker
    ``log_with`` writing under ``tracking_dir``), the model prepared for ``ds`` (e.g. an LLM model attaches
    its backbone and features) and moved to its device -> (accelerator, device, the model's stages). A
    benchmark that prepares a model otherwise would time a model ``llmrec train`` never trains."""
    accelerator = accelerator_for(model, log_with, tracking_dir)
    model.prepare(ds)
    stages = model.stages(ds)
    names = {name for name, _ in model.named_parameters()}
    for stage in stages:  # a misspelt name would silently train nothing
        if unknown := stage.trainable - names:
            raise ValueError(f"{model.name} stage {stage.name}: no parameters named {sorted(unknown)[:3]}")
    # the command's placement: alone, the device it asked for (e.g. cuda:1); launched, this process's own
    device = torch.device(model.placement.device)
    model.to(device)
    return accelerator, device, stages


@contextlib.contextmanager
def training_stage(model: TorchRecommender, stage: Stage) -> Iterator[None]:
    """While a stage trains: its parameters require a gradient and every other one is frozen, and its
    ``context`` is held (e.g. a cache that is valid only while some weights are frozen). :func:`fit` leaves
    the flags as the stage set them and restores them after the last stage."""
    for name, p in model.named_parameters():
        p.requires_grad_(name in stage.trainable)
    with stage.context():
        yield


def train_stage(
    model: TorchRecommender,
    ds: Dataset,
    run: Any | None,
    stage: Stage,
    accelerator: Accelerator,
    device: torch.device,
    named: bool,
) -> list[dict[str, float]]:
    """Train the parameters that require a gradient for ``stage.epochs`` epochs or until ``patience``
    validations bring no better criterion, checkpointing every epoch; the model ends with the best
    weights (with ``validate=false``: exactly ``stage.epochs`` epochs, the last weights). ``named``: the
    stage's files and metrics carry its name (the model has several stages)."""
    cfg = model.cfg
    n, main = accelerator.num_processes, accelerator.is_main_process
    step = TrainingStep(model, ds, stage, accelerator, device, named)
    opt, scheduler = step.opt, step.scheduler
    rng = np.random.default_rng(torch.initial_seed() % 2**32)  # the same on every process
    name = f"{model.name}{' ' + stage.name if named else ''}"
    _log_stage_start(name, model, stage, step, n)
    state: dict[str, Any] = {"epoch": 0, "best": -math.inf, "best_epoch": 0, "bad": 0, "history": []}
    best_weights = model.checkpoint_state() if cfg.validate else None  # None: the last weights are kept
    ckpt = run.root / f"checkpoint{'-' + stage.name if named else ''}.pt" if run is not None else None
    if ckpt is not None and ckpt.exists():  # every process resumes from the main process's checkpoint
        best_weights, state = _resume(ckpt, model, opt, scheduler, accelerator, rng)
    if n > 1:  # as DistributedDataParallel does: every process starts from the main process's weights
        broadcast_from_main(step.params + float_buffers(model))
    eval_ds = _eval_subset(ds, cfg.eval_users) if cfg.validate else None
    while state["epoch"] < stage.epochs and state["bad"] < cfg.patience:
        epoch = state["epoch"] + 1
        record = train_epoch(model, ds, step, rng, epoch, state["best"])
        if not cfg.validate:
            log.info("epoch %d: loss %.4f", epoch, record["loss"])
        elif epoch % cfg.eval_every == 0 or epoch == stage.epochs:
            improved = _validate_epoch(model, eval_ds, stage, n, epoch, record, state)
            if improved:
                best_weights = model.checkpoint_state()
            watcher = _watcher.get()
            if watcher is not None and watcher(stage.name, epoch, record):
                log.info(
                    "%s: stopped at epoch %d by the validation watcher (e.g. a pruned tuning trial)",
                    name,
                    epoch,
                )
                state["epoch"] = epoch
                state["history"].append(record)
                break
        state["epoch"] = epoch
        state["history"].append(record)
        prefix = f"{stage.name}/" if named else ""
        accelerator.log({prefix + k: v for k, v in record.items() if k != "epoch"}, step=epoch)
        if ckpt is not None and main:
            _save_checkpoint(ckpt, model, opt, scheduler, accelerator, best_weights, state, rng)
    criterion = state.get("metric", "valid_ndcg@10")
    if state["bad"] >= cfg.patience:
        log.info(
            "early stop at epoch %d: no better %s for %d validations", state["epoch"], criterion, cfg.patience
        )
    if best_weights is not None:
        model.load_checkpoint_state(best_weights)
    else:
        log.info("%s: the weights of the last epoch (%d) are kept: validate=false", name, state["epoch"])
    if run is not None and main:
        _write_stage_record(run, model, stage.name if named else None, state, validated=cfg.validate)
        assert ckpt is not None
        ckpt.unlink(missing_ok=True)  # the stage is done: nothing to resume
    return state["history"]


def _log_stage_start(name: str, model: TorchRecommender, stage: Stage, step: TrainingStep, n: int) -> None:
    """What the stage trains and how: its trainable parameters, optimizer, schedule and stopping rule."""
    cfg = model.cfg
    log.info(
        "%s: %s trainable parameters%s",
        name,
        f"{sum(p.numel() for p in step.params):,}",
        f", {n} processes" if n > 1 else "",
    )
    log.info(
        "%s: %s (betas %g, %g; eps %g; weight decay %g) at lr %g, %s, %s, %s",
        name,
        step.optimizer_name,
        *step.betas,
        cfg.adam_eps,
        cfg.weight_decay,
        stage.lr,
        step.schedule,
        "no gradient clipping"
        if cfg.max_grad_norm is None
        else f"gradient norm clipped to {cfg.max_grad_norm:g}",
        f"validated every {cfg.eval_every} epochs (patience {cfg.patience}), at most {stage.epochs} epochs"
        if cfg.validate
        else f"{stage.epochs} epochs without validation (the last weights are kept)",
    )


def _validate_epoch(
    model: TorchRecommender,
    eval_ds: Dataset | ValidationView,
    stage: Stage,
    n: int,
    epoch: int,
    record: dict[str, float],
    state: dict[str, Any],
) -> bool:
    """Validate after ``epoch``: its metrics go into ``record``, the criterion, best value and count of
    validations without progress into ``state``; True when this epoch is the best so far."""
    criterion, metrics = validate(model, eval_ds, stage)
    if n > 1:  # the processes decide on the same numbers even if their kernels differ in the last bit
        criterion, metrics = broadcast_object_list([criterion, metrics])
    record.update(metrics)
    state["metric"] = criterion
    improved = metrics[criterion] > state["best"]
    if improved:
        state.update(best=metrics[criterion], best_epoch=epoch, bad=0)
    else:
        state["bad"] += 1
    log.info(
        "epoch %d: loss %.4f, %s (best %s %.4f at epoch %d)",
        epoch,
        record["loss"],
        ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()),
        criterion,
        state["best"],
        state["best_epoch"],
    )
    return improved


def make_optimizer(
    model: TorchRecommender, params: list[torch.nn.Parameter], lr: float
) -> torch.optim.Optimizer:
    """The optimiser a stage trains ``params`` with: Adam, or AdamW for models with decoupled weight decay
    (``optimizer`` forces one), with the config's betas, epsilon and weight decay."""
    cfg = model.cfg
    adamw = model.decoupled_weight_decay if cfg.optimizer == "model" else cfg.optimizer == "adamw"
    opt_cls = torch.optim.AdamW if adamw else torch.optim.Adam
    betas = (cfg.adam_betas[0], cfg.adam_betas[1])  # a tuple, however the config was built
    return opt_cls(params, lr=lr, betas=betas, eps=cfg.adam_eps, weight_decay=cfg.weight_decay)


class TrainingStep:
    """One optimiser step of a stage, exactly as ``llmrec train`` takes it: the batch moved to the device,
    the loss under the accelerator's autocast (mixed precision) and its backward (fp16: loss-scaled),
    Mirror Gradient's extra step when configured, the gradients averaged over the processes and checked,
    clipped to ``max_grad_norm``, the optimiser's step, then the learning-rate schedule's.

    Built when the stage starts (inside :func:`training_stage`: it optimises the parameters that require a
    gradient), with the optimiser and scheduler :func:`fit` gives the stage. The trainer's epochs and the
    benchmarks (``llmrec bench``, ``llmrec bench-training``) run this one step, so what they time is what
    trains."""

    def __init__(
        self,
        model: TorchRecommender,
        ds: Dataset,
        stage: Stage,
        accelerator: Accelerator,
        device: torch.device,
        named: bool = False,
    ) -> None:
        assert stage.batches is not None and stage.loss is not None, f"stage {stage.name}: no batches or loss"
        if model.cfg.mirror_gradient and accelerator.num_processes > 1:
            raise LlmrecError(
                "mirror_gradient runs on one process",
                hint="train without accelerate launch, or without -o mirror_gradient",
            )
        self.model, self.stage, self.accelerator, self.device = model, stage, accelerator, device
        self.named = named  # the error message names the stage (the model has several)
        self.params = [p for p in model.parameters() if p.requires_grad]
        opt = make_optimizer(model, self.params, stage.lr)
        self.optimizer_name, self.betas = type(opt).__name__, opt.defaults["betas"]
        # steps through the fp16 loss scaler
        self.opt = accelerator.prepare_optimizer(opt, device_placement=False)
        self.scheduler, self.schedule = _scheduler(model, ds, stage, self.opt, accelerator.num_processes)

    def __call__(self, batch: Batch | None, step: int = 0, epoch: int = 1) -> torch.Tensor:
        """Train on ``batch`` (None: past the end of a short last round, this process adds nothing but
        still joins the averaging) -> the step's loss, averaged over the processes. ``step``: its index in
        the epoch (Mirror Gradient's interval, and where the error message says the loss broke)."""
        opt, accelerator, cfg, loss_of = self.opt, self.accelerator, self.model.cfg, self.stage.loss
        assert loss_of is not None
        opt.zero_grad(set_to_none=True)
        if batch is None:  # past the end of a short last round: this process adds nothing
            loss = torch.zeros((), device=self.device)
        else:
            batch = {k: v.to(self.device) for k, v in batch.items()}
            with accelerator.autocast():
                loss = loss_of(batch)
            if cfg.mirror_gradient and step % cfg.mg_interval == 0:
                # Mirror Gradient: a descent step on alpha1 x loss, then an ascent step on alpha2 x the loss
                # of the same batch at the new weights (the scheduler counts the pair as one step)
                accelerator.backward(cfg.mg_alpha1 * loss)
                self._apply(loss, True, step, epoch, clip=False)  # the reference clips only the second step
                opt.zero_grad(set_to_none=True)
                with accelerator.autocast():
                    mirrored = loss_of(batch)
                accelerator.backward(-cfg.mg_alpha2 * mirrored)
            else:
                accelerator.backward(loss)
        loss = self._apply(loss, batch is not None, step, epoch)
        # as the optimiser's step: fp16 skips overflowing ones
        if self.scheduler is not None and not opt.step_was_skipped:
            self.scheduler.step()
        return loss

    def _apply(
        self, loss: torch.Tensor, has_batch: bool, step: int, epoch: int, clip: bool = True
    ) -> torch.Tensor:
        """The gradients already computed -> averaged over the processes, checked, clipped, applied."""
        accelerator, stage, max_norm = self.accelerator, self.stage, self.model.cfg.max_grad_norm
        if accelerator.num_processes > 1:
            loss = average_gradients(accelerator, self.params, loss, has_batch)
        if not torch.isfinite(loss):
            raise LlmrecError(
                f"{self.model.name}: the training loss became {loss.item()} at epoch {epoch}, step {step + 1} "
                f"({'stage ' + stage.name + ', ' if self.named else ''}learning rate {stage.lr:g})",
                hint="lower the learning rate (-o lr=...) and start the run over with --restart",
            )
        if max_norm is not None and clip:  # after the averaging: the gradient the step uses
            # fp16: unscaled first, this optimiser's alone (accelerator.clip_grad_norm_ would unscale every
            # optimiser the accelerator prepared, and an earlier stage's may hold some of these parameters)
            accelerator.unscale_gradients(self.opt)
            torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        self.opt.step()
        return loss


def train_epoch(
    model: TorchRecommender,
    ds: Dataset,
    step: TrainingStep,
    rng: np.random.Generator,
    epoch: int,
    best: float,
) -> dict[str, float]:
    """One epoch of ``step`` on this process's share of the stage's batches -> its record (``best``: the
    best criterion so far, for the progress bar)."""
    stage, accelerator, named = step.stage, step.accelerator, step.named
    assert stage.batches is not None
    n, rank = accelerator.num_processes, accelerator.process_index
    model.train()
    t0, total, steps = time.perf_counter(), 0.0, 0
    last_note = t0
    n_batches = stage.num_batches(ds) if stage.num_batches is not None else None
    bar = tqdm(
        my_share(stage.batches(ds, rng), n, rank),
        total=None if n_batches is None else -(-n_batches // n),
        desc=f"{stage.name + ' ' if named else ''}epoch {epoch}/{stage.epochs}",
        leave=False,
        disable=None if accelerator.is_main_process else True,
    )
    for batch in bar:
        total += step(batch, steps, epoch).item()
        steps += 1
        bar.set_postfix(
            loss=f"{total / steps:.4f}", **({"best": f"{max(best, 0):.4f}"} if model.cfg.validate else {})
        )
        if time.perf_counter() - last_note > 60:  # the log (and a non-terminal) still sees progress
            log.info(
                "epoch %d: step %d/%s, loss %.4f, %.2f s/step",
                epoch,
                steps,
                bar.total or "?",
                total / steps,
                (time.perf_counter() - t0) / steps,
            )
            last_note = time.perf_counter()
    if n > 1:  # e.g. BatchNorm statistics, which each process gathered from its own batches
        broadcast_from_main(float_buffers(model))
    return {"epoch": epoch, "loss": total / max(steps, 1), "train_seconds": time.perf_counter() - t0}


def _scheduler(
    model: TorchRecommender, ds: Dataset, stage: Stage, opt: Any, n: int
) -> tuple[Any | None, str]:
    """The stage's learning-rate scheduler (None for a constant learning rate) and how the log says it.

    It spans ``stage.epochs`` epochs of this process's steps: ``n`` processes share each epoch's batches,
    each taking ceil(batches / n) steps (:func:`~llmrec.training.distributed.my_share`)."""
    cfg = model.cfg
    if cfg.lr_schedule == "constant":
        return None, "constant lr"
    per_epoch = stage.num_batches(ds) if stage.num_batches is not None else None
    if per_epoch is None:
        raise ConfigError(
            f"lr_schedule={cfg.lr_schedule}: {model.name} stage {stage.name} does not say how many batches "
            "an epoch has, so the schedule's length is unknown; use -o lr_schedule=constant"
        )
    from transformers import get_scheduler

    total = stage.epochs * -(-per_epoch // n)
    warmup = cfg.warmup_steps or math.ceil(total * cfg.warmup_ratio)  # transformers' Trainer rounds up too
    if warmup > total:
        log.warning("%s: %d warm-up steps, more than the stage's %d steps", model.name, warmup, total)
    scheduler = get_scheduler(cfg.lr_schedule, opt, num_warmup_steps=warmup, num_training_steps=total)
    return scheduler, f"{cfg.lr_schedule} schedule over {total} steps ({warmup} of warm-up)"


def _resume(
    ckpt: Path,
    model: TorchRecommender,
    opt: Any,
    scheduler: Any | None,
    accelerator: Accelerator,
    rng: np.random.Generator,
) -> tuple[dict[str, torch.Tensor] | None, dict[str, Any]]:
    """Load a stage's checkpoint into the model, optimiser, scheduler, scaler and RNGs -> (best weights,
    None when the stage is not validated; loop state)."""
    # on the CPU first: the RNG states must stay CPU tensors, and the checkpoint may come from another
    # device; load_state_dict copies the weights (and the optimiser its state) to the parameters' device
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    model.load_checkpoint_state(saved["model"])
    opt.load_state_dict(saved["optimizer"])
    if scheduler is not None:  # the same options as the run that wrote it (pipeline.check_resume)
        scheduler.load_state_dict(saved["scheduler"])
    if accelerator.scaler is not None and saved.get("scaler"):
        accelerator.scaler.load_state_dict(saved["scaler"])
    rng.bit_generator.state = saved["rng"]
    set_rng_states(saved["torch_rng"], saved.get("cuda_rng"))
    state = saved["state"]
    log.info(
        "resumed from %s at epoch %d%s",
        ckpt,
        state["epoch"],
        f" (best {state.get('metric', 'valid_ndcg@10')} {state['best']:.4f})" if state["best_epoch"] else "",
    )
    return saved["best_weights"], state


def _save_checkpoint(
    ckpt: Path,
    model: TorchRecommender,
    opt: Any,
    scheduler: Any | None,
    accelerator: Accelerator,
    best_weights: dict[str, torch.Tensor] | None,
    state: dict[str, Any],
    rng: np.random.Generator,
) -> None:
    # through a Python file: on a full disk torch's own writer says only "unexpected pos", while a write
    # of this file raises the OSError (errno and all) that atomic_path turns into a line naming ``ckpt``
    with atomic_path(ckpt) as tmp, open(tmp, "wb") as f:
        torch.save(
            {
                "model": model.checkpoint_state(),
                "optimizer": opt.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
                "best_weights": best_weights,
                "state": state,
                "rng": rng.bit_generator.state,
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": cuda_rng_states(),
            },
            f,
        )


def _write_stage_record(
    run: Any, model: TorchRecommender, stage: str | None, state: dict[str, Any], validated: bool
) -> None:
    """history[-<stage>].json, the epochs run and (``validated``) the best epoch and criterion in the
    training record (training.json, and metrics.json's "train"), training_curve[-<stage>].png."""
    from llmrec.plots import plot_training_curve

    suffix, prefix = (f"-{stage}", f"{stage}_") if stage else ("", "")
    criterion = state.get("metric", "valid_ndcg@10")
    run.write_json(f"history{suffix}.json", state["history"])
    best = {f"{prefix}best_epoch": state["best_epoch"], f"{prefix}best_{criterion}": state["best"]}
    run.record_training({**(best if validated else {}), f"{prefix}epochs_run": state["epoch"]})
    plot_training_curve(
        state["history"], run.root / f"training_curve{suffix}.png", title=f"{model.name}{suffix}"
    )


def _save_marker(path: Path, model: TorchRecommender) -> None:
    """A finished stage: its weights, and the RNG states the next stage starts from (metadata), atomically."""
    from safetensors.torch import save_file

    cuda = cuda_rng_states()
    metadata = {"torch_rng": _b64(torch.get_rng_state())}
    if cuda is not None:
        metadata["cuda_rng"] = json.dumps([_b64(s) for s in cuda])
    weights = {k: v.detach().cpu().contiguous() for k, v in model.checkpoint_state().items()}
    with atomic_path(path) as tmp:
        save_file(weights, str(tmp), metadata=metadata)


def _load_marker(model: TorchRecommender, path: Path) -> None:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        metadata = f.metadata() or {}
        model.load_checkpoint_state({k: f.get_tensor(k) for k in f.keys()})  # noqa: SIM118 (not a dict)
    if "torch_rng" in metadata:
        cuda = json.loads(metadata["cuda_rng"]) if "cuda_rng" in metadata else None
        set_rng_states(_unb64(metadata["torch_rng"]), None if cuda is None else [_unb64(s) for s in cuda])


def _b64(state: torch.Tensor) -> str:
    return base64.b64encode(state.cpu().numpy().tobytes()).decode("ascii")


def _unb64(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)


def cuda_rng_states() -> list[torch.Tensor] | None:
    """The RNG state of every CUDA device (dropout on a GPU draws from them), None without CUDA."""
    return torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None


def set_rng_states(cpu: torch.Tensor, cuda: list[torch.Tensor] | None) -> None:
    """Restore the CPU RNG and, when the saving machine had as many CUDA devices as this one, theirs: a
    checkpoint written on a CPU resumes on a GPU machine and vice versa (the GPU streams then start anew)."""
    torch.set_rng_state(cpu.cpu())
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
    elif cuda is not None or torch.cuda.is_available():
        log.info("CUDA RNG states not restored: the checkpoint comes from a machine with other devices")


def validate(
    model: TorchRecommender, ds: Dataset | ValidationView, stage: Stage | None = None
) -> tuple[str, dict[str, float]]:
    """(name of the early-stopping criterion, metrics to record) of one validation.

    The stage's ``validation(ds)``, or else the model's ``validation_metric(ds)``, when it returns a (name,
    value) pair; otherwise hit@10 and NDCG@10 of the frozen validation candidates, NDCG@10 being the
    criterion.
    """
    hook = stage.validation if stage is not None and stage.validation is not None else model.validation_metric
    custom = hook(ds)
    if custom is not None:
        name, value = custom
        return name, {name: float(value)}
    metrics, _ = evaluate_ranking(model, ds, "valid", ks=(10,), full=False, batch_size=512)
    return "valid_ndcg@10", {"valid_hit@10": metrics["hit@10"], "valid_ndcg@10": metrics["ndcg@10"]}


class ValidationView:
    """What validation reads of a dataset, with the ranking splits of a fixed subset of users (faster
    validation): the ranking evaluation reads ``split``/``negatives`` (of those users) and
    ``item_popularity``; a model's own criterion (``validation_metric``) reads ``ctr`` (all its rows: the
    criterion picks its own subset) and the sizes."""

    def __init__(self, ds: Dataset, users: np.ndarray) -> None:
        self.dataset, self.users = ds, users

    @property
    def n_users(self) -> int:
        return self.dataset.n_users

    @property
    def n_items(self) -> int:
        return self.dataset.n_items

    @property
    def item_popularity(self) -> np.ndarray:
        return self.dataset.item_popularity

    @property
    def cold_items(self) -> np.ndarray:
        return self.dataset.cold_items  # validation ranks the warm cases only

    def split(self, name: Split) -> SplitData:
        from llmrec.data.dataset import SplitData

        full = self.dataset.split(name)
        return SplitData(
            users=full.users[self.users],
            histories=[full.histories[u] for u in self.users],
            targets=full.targets[self.users],
        )

    def negatives(self, name: Split) -> np.ndarray:
        return self.dataset.negatives(name)[self.users]

    def ctr(self, name: Split) -> pd.DataFrame:
        return self.dataset.ctr(name)


def _eval_subset(ds: Dataset, n: int | None) -> Dataset | ValidationView:
    if n is None or n >= ds.n_users:
        return ds
    return ValidationView(ds, seeded_rows(ds.n_users, n))  # the same users at every validation
