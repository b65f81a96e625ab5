"""Wall-clock timings of model work that mean the same on a CPU and on an accelerator.

CUDA (and MPS) run kernels asynchronously: ``time.perf_counter()`` right after a forward pass measures
how long it took to *launch* the kernels, not to run them. :func:`clock` waits for the device to finish
before reading the clock, so ``clock(dev) - t0`` is the time the work took wherever it ran.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def synchronize(device: str | torch.device) -> None:
    """Wait until every queued kernel on ``device`` has finished (nothing to wait for on a CPU)."""
    import torch

    kind = torch.device(device).type
    if kind == "cuda" and torch.cuda.is_available():
        torch.cuda.synchronize(device)
    elif kind == "mps" and torch.backends.mps.is_available():
        torch.mps.synchronize()


def clock(device: str | torch.device) -> float:
    """``time.perf_counter()`` read after ``device`` is idle: use it on both ends of a timed span."""
    synchronize(device)
    return time.perf_counter()
