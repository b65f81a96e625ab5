"""Devices, mixed precision, experiment trackers and several processes, through accelerate.

Started as N processes (``accelerate launch --multi_gpu --num_processes N -m llmrec train ...``, or
``torchrun``), every process builds every batch of an epoch from the same seeded rng and trains on every
N-th one, its disjoint share (:func:`my_share`); each step's gradients are averaged over the processes
in one all-reduce before the optimiser step (:func:`average_gradients`), so all processes keep the same
weights. (Models compute their loss with the stage's ``loss(batch)``, not ``forward``, which
DistributedDataParallel would not see.)
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import (
    InitProcessGroupKwargs,
    broadcast,
    is_mlflow_available,
    is_tensorboard_available,
    is_wandb_available,
)

from llmrec.config import flatten, to_dict
from llmrec.errors import ConfigError
from llmrec.extras import EXTRAS, MissingExtra

if TYPE_CHECKING:  # models by their contract: types only (models.neural's fit calls the trainer)
    from llmrec.models.base import Recommender
    from llmrec.models.neural import Batch, TorchRecommender

_PRECISION = {"none": "no", "bf16": "bf16", "fp16": "fp16"}
# how long a process waits for the others: at the end of ``llmrec train`` the other processes wait
# while the main one evaluates, which can take hours for an LLM
_PROCESS_GROUP_TIMEOUT = datetime.timedelta(hours=24)
# log_with -> (whether its package is installed, the extra that brings it)
_TRACKERS = {
    "tensorboard": (is_tensorboard_available, "tracking"),  # tensorboardX (or tensorboard)
    "wandb": (is_wandb_available, "wandb"),
    "mlflow": (is_mlflow_available, "mlflow"),  # mlflow-skinny (or mlflow)
}


def accelerator_for(
    model: Recommender, log_with: str = "none", tracking_dir: Path | None = None
) -> Accelerator:
    """The Accelerator that trains ``model``: on its placement's device and with its ``mixed_precision``
    (CPU and full precision for a model that trains nothing in steps), and with the experiment tracker ``log_with``
    (none, or one of ``_TRACKERS``; local ones write under ``tracking_dir``).

    Under ``accelerate launch`` or ``torchrun`` the first call joins the other processes and makes this
    process's own GPU (cuda:<local rank>) the current one, so call it before the model puts weights on a
    GPU (``llmrec train`` does). A process on its own gets a fresh accelerate state at every call:
    accelerate keeps one device and precision per process, and one process may train several models.
    """
    # a model that fits itself (numpy, zero-shot) gets a CPU accelerator
    device, precision = (
        (model.placement.device, model.mixed_precision) if model.trained_in_steps else ("cpu", "none")
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
        extra = _TRACKERS[log_with][1]
        raise MissingExtra(f"--log-with {log_with}", extra, EXTRAS[extra][0])
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
        raise ConfigError("mixed_precision=fp16 needs a GPU (--device cuda); on the CPU use bf16")
    return accelerator


def tracked_config(model: TorchRecommender, run: Any) -> dict[str, Any]:
    """The hyperparameters a tracker records: the model's resolved options and the run's config."""
    from llmrec.runs import Run

    return {"model": to_dict(model.cfg), **({"run": to_dict(run.config)} if isinstance(run, Run) else {})}


def flat(config: dict[str, Any]) -> dict[str, Any]:
    """Nested options as dotted keys with scalar values (what every tracker accepts; lists as text)."""
    return {k: v if isinstance(v, bool | int | float | str) else str(v) for k, v in flatten(config).items()}


def my_share(batches: Iterable[Batch], n: int, rank: int) -> Iterator[Batch | None]:
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


def average_gradients(
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


def float_buffers(model: torch.nn.Module) -> list[torch.Tensor]:
    """Persistent floating-point buffers, e.g. BatchNorm statistics (feature tables are not persistent)."""
    buffers = {name for name, _ in model.named_buffers()}
    return [t for name, t in model.state_dict().items() if name in buffers and t.is_floating_point()]


def broadcast_from_main(tensors: list[torch.Tensor]) -> None:
    """Overwrite ``tensors`` in place with the main process's values."""
    with torch.no_grad():
        for t in tensors:
            broadcast(t, from_process=0)
