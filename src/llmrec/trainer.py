"""The training loop of every torch model, readable in one sitting.

A model declares its training as stages (:meth:`~llmrec.models.neural.TorchRecommender.stages`: one by
default; e.g. HistLLM's LoRA step, then its mappers); :func:`fit` runs them in order. A stage trains
the parameters it names and nothing else: Adam (AdamW for models with ``decoupled_weight_decay``), one
epoch = the stage's batches; every ``eval_every`` epochs the model is validated and the best state is
kept; ``patience`` validations without improvement end the stage. The criterion is valid NDCG@10 on the
frozen ranking candidates, unless the model's ``validation_metric(ds)`` gives a (name, value) pair
(higher is better), e.g. valid AUC of a CTR model; the run records it as ``best_<name>``.

With a run directory, a checkpoint (weights, optimiser, RNG states, best so far) is written atomically
after every epoch, so an interrupted run resumes where it stopped when started again with the same run
directory; ``history.json`` and ``training_curve.png`` record loss and validation metrics. With several
stages these files carry the stage's name (``checkpoint-<stage>.pt`` ...), and every finished stage but
the last leaves its weights and RNG states in ``stage-<stage>.safetensors``: a run restarted after it
goes on with the next stage. Checkpoints are read onto the CPU and then moved, so a run checkpointed on
a GPU machine resumes on a CPU one and vice versa.

``log_with`` (tensorboard, wandb, mlflow) also sends every epoch's record (loss, validation metrics; keys
prefixed with the stage's name when there are several) to an experiment tracker through accelerate's
trackers, from the main process only; the model's and the run's configs are its hyperparameters, and
local trackers write under ``<run>/tracking``.

Devices, mixed precision and several processes go through ``accelerate``. Started as N processes
(``accelerate launch --multi_gpu --num_processes N -m llmrec train ...``, or ``torchrun``), every process
builds every batch of an epoch from the same seeded rng and trains on every N-th one, its disjoint share;
each step's gradients are averaged over the processes in one all-reduce before the optimiser step, so
all processes keep the same weights. (Models compute their loss with the stage's ``loss(batch)``, not
``forward``, which DistributedDataParallel would not see.) Every process validates the same weights on
the same users, the main process's numbers decide early stopping everywhere, and only the main process
writes checkpoints, history and curves. One process runs exactly the loop it ran before accelerate.
"""

from __future__ import annotations

import base64
import datetime
import json
import logging
import math
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import (
    InitProcessGroupKwargs,
    broadcast,
    broadcast_object_list,
    is_mlflow_available,
    is_tensorboard_available,
    is_wandb_available,
)
from tqdm.auto import tqdm

from llmrec.config import to_dict
from llmrec.errors import ConfigError
from llmrec.eval.evaluator import evaluate_ranking, seeded_rows
from llmrec.models.base import Recommender
from llmrec.models.neural import Batch, NeuralConfig, Stage, TorchRecommender
from llmrec.utils.io import atomic_path

log = logging.getLogger(__name__)

# our option's names -> accelerate's ("no" would be read as false from YAML and -o KEY=VALUE)
_PRECISION = {"none": "no", "bf16": "bf16", "fp16": "fp16"}
# how long a process waits for the others: at the end of ``llmrec train`` the other processes wait
# while the main one evaluates, which can take hours for an LLM
_PROCESS_GROUP_TIMEOUT = datetime.timedelta(hours=24)
# log_with -> (whether its package is installed, what to install)
_TRACKERS = {
    "tensorboard": (is_tensorboard_available, "pip install tensorboardX (or tensorboard)"),
    "wandb": (is_wandb_available, "pip install wandb"),
    "mlflow": (is_mlflow_available, "pip install mlflow"),
}


def fit(
    model: Recommender, ds: Any, run: Any | None = None, log_with: str = "none"
) -> list[dict[str, float]]:
    """Train ``model`` on ``ds``: a TorchRecommender through the stages it declares, in order; any other
    Recommender by its own ``fit``. ``log_with`` names an experiment tracker (tensorboard, wandb, mlflow;
    none). Returns the history (a record per epoch) of the last stage trained."""
    if not isinstance(model, TorchRecommender):
        model.fit(ds, run)
        return []
    if log_with != "none" and run is None:
        raise ConfigError(
            f"log_with={log_with} needs a run directory (the trackers write under <run>/tracking)"
        )
    accelerator = accelerator_for(model, log_with, run.root / "tracking" if run is not None else None)
    model.prepare(ds)
    stages = model.stages(ds)
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    for stage in stages:  # a misspelt name would silently train nothing
        if unknown := stage.trainable - flags.keys():
            raise ValueError(f"{model.name} stage {stage.name}: no parameters named {sorted(unknown)[:3]}")
    # alone, the device as configured (e.g. cuda:1); launched, the one the launcher gave this process
    device = torch.device(model.cfg.device) if accelerator.num_processes == 1 else accelerator.device
    model.to(device)
    history: list[dict[str, float]] = []
    if log_with != "none":
        accelerator.init_trackers(run.root.name, _flat(_tracked_config(model, run)))
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
                for name, p in model.named_parameters():
                    p.requires_grad_(name in stage.trainable)
                with stage.context():
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


def train_stage(
    model: TorchRecommender,
    ds: Any,
    run: Any | None,
    stage: Stage,
    accelerator: Accelerator,
    device: torch.device,
    named: bool,
) -> list[dict[str, float]]:
    """Train the parameters that require a gradient for ``stage.epochs`` epochs or until ``patience``
    validations bring no better criterion, checkpointing every epoch; the model ends with the best
    weights. ``named``: the stage's files and metrics carry its name (the model has several stages)."""
    cfg = model.cfg
    n, main = accelerator.num_processes, accelerator.is_main_process
    params = [p for p in model.parameters() if p.requires_grad]
    opt_cls = torch.optim.AdamW if model.decoupled_weight_decay else torch.optim.Adam
    opt = opt_cls(params, lr=stage.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay)
    opt = accelerator.prepare_optimizer(opt, device_placement=False)  # steps through the fp16 loss scaler
    rng = np.random.default_rng(torch.initial_seed() % 2**32)  # the same on every process
    log.info(
        "%s%s: %s trainable parameters%s",
        model.name,
        f" {stage.name}" if named else "",
        f"{sum(p.numel() for p in params):,}",
        f", {n} processes" if n > 1 else "",
    )
    state: dict[str, Any] = {"epoch": 0, "best": -math.inf, "best_epoch": 0, "bad": 0, "history": []}
    best_weights = model.checkpoint_state()
    ckpt = run.root / f"checkpoint{'-' + stage.name if named else ''}.pt" if run is not None else None
    if ckpt is not None and ckpt.exists():  # every process resumes from the main process's checkpoint
        best_weights, state = _resume(ckpt, model, opt, accelerator, rng)
    if n > 1:  # as DistributedDataParallel does: every process starts from the main process's weights
        _broadcast_from_main(params + _float_buffers(model))
    eval_ds = _eval_subset(ds, cfg.eval_users)
    while state["epoch"] < stage.epochs and state["bad"] < cfg.patience:
        epoch = state["epoch"] + 1
        record = train_epoch(model, ds, stage, opt, accelerator, device, rng, epoch, named, state["best"])
        if epoch % cfg.eval_every == 0 or epoch == stage.epochs:
            criterion, metrics = validate(model, eval_ds, stage)
            if n > 1:  # the processes decide on the same numbers even if their kernels differ in the last bit
                criterion, metrics = broadcast_object_list([criterion, metrics])
            record.update(metrics)
            state["metric"] = criterion
            if metrics[criterion] > state["best"]:
                state.update(best=metrics[criterion], best_epoch=epoch, bad=0)
                best_weights = model.checkpoint_state()
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
        state["epoch"] = epoch
        state["history"].append(record)
        prefix = f"{stage.name}/" if named else ""
        accelerator.log({prefix + k: v for k, v in record.items() if k != "epoch"}, step=epoch)
        if ckpt is not None and main:
            _save_checkpoint(ckpt, model, opt, accelerator, best_weights, state, rng)
    criterion = state.get("metric", "valid_ndcg@10")
    if state["bad"] >= cfg.patience:
        log.info(
            "early stop at epoch %d: no better %s for %d validations", state["epoch"], criterion, cfg.patience
        )
    model.load_checkpoint_state(best_weights)
    if run is not None and main:
        _write_stage_record(run, model, stage.name if named else None, state)
        assert ckpt is not None
        ckpt.unlink(missing_ok=True)  # the stage is done: nothing to resume
    return state["history"]


def train_epoch(
    model: TorchRecommender,
    ds: Any,
    stage: Stage,
    opt: torch.optim.Optimizer,
    accelerator: Accelerator,
    device: torch.device,
    rng: np.random.Generator,
    epoch: int,
    named: bool,
    best: float,
) -> dict[str, float]:
    """One epoch of optimiser steps on this process's share of the stage's batches -> its record
    (``best``: the best criterion so far, for the progress bar)."""
    assert stage.batches is not None and stage.loss is not None, f"stage {stage.name}: no batches or loss"
    n, rank = accelerator.num_processes, accelerator.process_index
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    t0, total, steps = time.perf_counter(), 0.0, 0
    last_note = t0
    n_batches = stage.num_batches(ds) if stage.num_batches is not None else None
    bar = tqdm(
        _my_share(stage.batches(ds, rng), n, rank),
        total=None if n_batches is None else -(-n_batches // n),
        desc=f"{stage.name + ' ' if named else ''}epoch {epoch}/{stage.epochs}",
        leave=False,
        disable=None if accelerator.is_main_process else True,
    )
    for batch in bar:
        opt.zero_grad(set_to_none=True)
        if batch is None:  # past the end of a short last round: this process adds nothing
            loss = torch.zeros((), device=device)
        else:
            batch = {k: v.to(device) for k, v in batch.items()}
            with accelerator.autocast():
                loss = stage.loss(batch)
            accelerator.backward(loss)
        if n > 1:
            loss = _average_gradients(accelerator, params, loss, batch is not None)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"{model.name}: loss became {loss.item()} at epoch {epoch}, step {steps}; lower --lr"
            )
        opt.step()
        total += loss.item()
        steps += 1
        bar.set_postfix(loss=f"{total / steps:.4f}", best=f"{max(best, 0):.4f}")
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
        _broadcast_from_main(_float_buffers(model))
    return {"epoch": epoch, "loss": total / max(steps, 1), "train_seconds": time.perf_counter() - t0}


def _resume(
    ckpt: Path, model: TorchRecommender, opt: Any, accelerator: Accelerator, rng: np.random.Generator
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load a stage's checkpoint into the model, optimiser, scaler and RNGs -> (best weights, loop state)."""
    # on the CPU first: the RNG states must stay CPU tensors, and the checkpoint may come from another
    # device; load_state_dict copies the weights (and the optimiser its state) to the parameters' device
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    model.load_checkpoint_state(saved["model"])
    opt.load_state_dict(saved["optimizer"])
    if accelerator.scaler is not None and saved.get("scaler"):
        accelerator.scaler.load_state_dict(saved["scaler"])
    rng.bit_generator.state = saved["rng"]
    set_rng_states(saved["torch_rng"], saved.get("cuda_rng"))
    state = saved["state"]
    log.info(
        "resumed from %s at epoch %d (best %s %.4f)",
        ckpt,
        state["epoch"],
        state.get("metric", "valid_ndcg@10"),
        state["best"],
    )
    return saved["best_weights"], state


def _save_checkpoint(
    ckpt: Path,
    model: TorchRecommender,
    opt: Any,
    accelerator: Accelerator,
    best_weights: dict[str, torch.Tensor],
    state: dict[str, Any],
    rng: np.random.Generator,
) -> None:
    with atomic_path(ckpt) as tmp:
        torch.save(
            {
                "model": model.checkpoint_state(),
                "optimizer": opt.state_dict(),
                "scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
                "best_weights": best_weights,
                "state": state,
                "rng": rng.bit_generator.state,
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": cuda_rng_states(),
            },
            tmp,
        )


def _write_stage_record(run: Any, model: TorchRecommender, stage: str | None, state: dict[str, Any]) -> None:
    """history[-<stage>].json, the best epoch and criterion in metrics.json, training_curve[-<stage>].png."""
    from llmrec.plots import plot_training_curve

    suffix, prefix = (f"-{stage}", f"{stage}_") if stage else ("", "")
    criterion = state.get("metric", "valid_ndcg@10")
    run.write_json(f"history{suffix}.json", state["history"])
    run.log_metrics(
        "train",
        {
            f"{prefix}best_epoch": state["best_epoch"],
            f"{prefix}best_{criterion}": state["best"],
            f"{prefix}epochs_run": state["epoch"],
        },
    )
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


def accelerator_for(model: Any, log_with: str = "none", tracking_dir: Path | None = None) -> Accelerator:
    """The Accelerator that trains ``model``: on its ``device`` and with its ``mixed_precision`` (CPU and
    full precision for models without these options), and with the experiment tracker ``log_with``
    (none, or one of ``_TRACKERS``; local ones write under ``tracking_dir``).

    Under ``accelerate launch`` or ``torchrun`` the first call joins the other processes and makes this
    process's own GPU (cuda:<local rank>) the current one, so call it before the model puts weights on a
    GPU (``llmrec train`` does). A process on its own gets a fresh accelerate state at every call:
    accelerate keeps one device and precision per process, and one process may train several models.
    """
    cfg = model.cfg
    device, precision = (
        (cfg.device, cfg.mixed_precision) if isinstance(cfg, NeuralConfig) else ("cpu", "none")
    )
    launched = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")  # what `accelerate launch` was told
    if launched not in ("no", _PRECISION[precision]):
        raise ConfigError(
            f"accelerate launch asks for mixed precision {launched} but the model option mixed_precision is "
            f"{precision}; pass -o mixed_precision={launched} instead (the option is saved with the run)"
        )
    if log_with != "none" and log_with not in _TRACKERS:
        raise ConfigError(f"unknown tracker log_with={log_with!r}; use one of none, {', '.join(_TRACKERS)}")
    if log_with != "none" and not _TRACKERS[log_with][0]():
        raise ConfigError(
            f"log_with={log_with} needs its package, which is not installed: {_TRACKERS[log_with][1]}"
        )
    if not torch.distributed.is_initialized():
        AcceleratorState._reset_state(reset_partial_state=True)
    accelerator = Accelerator(
        cpu=device == "cpu",
        mixed_precision=_PRECISION[precision],
        kwargs_handlers=[InitProcessGroupKwargs(timeout=_PROCESS_GROUP_TIMEOUT)],
        log_with=None if log_with == "none" else log_with,
        project_dir=tracking_dir,
    )
    if precision == "fp16" and accelerator.device.type == "cpu":
        raise ConfigError("mixed_precision=fp16 needs a GPU (-o device=cuda); on the CPU use bf16")
    return accelerator


def _tracked_config(model: TorchRecommender, run: Any) -> dict[str, Any]:
    """The hyperparameters a tracker records: the model's resolved options and the run's config."""
    from llmrec.runs import Run

    return {"model": to_dict(model.cfg), **({"run": to_dict(run.config)} if isinstance(run, Run) else {})}


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested options as dotted keys with scalar values (what every tracker accepts; lists as text)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value if isinstance(value, bool | int | float | str) else str(value)
    return out


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


def _my_share(batches: Iterable[Batch], n: int, rank: int) -> Iterator[Batch | None]:
    """Of every ``n`` consecutive batches, the ``rank``-th: this process's disjoint share of an epoch.

    Every process builds every batch, so the rng that makes them stays the same everywhere; in a short last
    round the processes past its end get ``None``, so that all processes take the same number of steps.
    """
    mine: Batch | None = None
    seen = 0
    for seen, batch in enumerate(batches, 1):
        if (seen - 1) % n == rank:
            mine = batch
        if seen % n == 0:  # a round is complete
            yield mine
            mine = None
    if seen % n:
        yield mine


def _average_gradients(
    accelerator: Accelerator, params: list[torch.nn.Parameter], loss: torch.Tensor, had_batch: bool
) -> torch.Tensor:
    """Replace every gradient by its mean over the processes that had a batch this step (one all-reduce)
    and return their mean loss.

    A parameter outside this process's graph counts as a zero gradient, as in DistributedDataParallel; one
    outside every process's graph keeps no gradient, so the optimiser skips it as it would in one process.
    """
    sizes = [p.numel() for p in params]
    flat = torch.cat(
        [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float() for p in params]
        + [
            torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=loss.device),
            torch.stack([loss.detach().float(), torch.tensor(float(had_batch), device=loss.device)]),
        ]
    )  # (sum(sizes) + len(params) + 2,)
    flat = accelerator.reduce(flat, "sum")
    grads, present, (loss_sum, count) = flat[: sum(sizes)].split(sizes), flat[sum(sizes) : -2], flat[-2:]
    for p, g, anywhere in zip(params, grads, present.tolist()):
        p.grad = (g / count).view_as(p).to(p.dtype) if anywhere else None
    return loss_sum / count


def _float_buffers(model: torch.nn.Module) -> list[torch.Tensor]:
    """Persistent floating-point buffers, e.g. BatchNorm statistics (feature tables are not persistent)."""
    buffers = {name for name, _ in model.named_buffers()}
    return [t for name, t in model.state_dict().items() if name in buffers and t.is_floating_point()]


def _broadcast_from_main(tensors: list[torch.Tensor]) -> None:
    """Overwrite ``tensors`` in place with the main process's values."""
    with torch.no_grad():
        for t in tensors:
            broadcast(t, from_process=0)


def validate(model: TorchRecommender, ds: Any, stage: Stage | None = None) -> tuple[str, dict[str, float]]:
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


class _Subset:
    """A view of a dataset whose evaluation splits hold a fixed subset of users (faster validation)."""

    def __init__(self, ds: Any, users: np.ndarray) -> None:
        self._ds, self._users = ds, users

    def split(self, name: str) -> Any:
        from llmrec.data.dataset import SplitData

        full = self._ds.split(name)
        return SplitData(
            users=full.users[self._users],
            histories=[full.histories[u] for u in self._users],
            targets=full.targets[self._users],
        )

    def negatives(self, name: str) -> np.ndarray:
        return self._ds.negatives(name)[self._users]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ds, name)


def _eval_subset(ds: Any, n: int | None) -> Any:
    if n is None or n >= ds.n_users:
        return ds
    return _Subset(ds, seeded_rows(ds.n_users, n))  # the same users at every validation
