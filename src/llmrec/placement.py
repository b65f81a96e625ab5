"""Where a command runs its model: one :class:`Placement` (device, backbone dtype), resolved once.

Every command that places a model (train, evaluate, recommend, serve, prompts, the experiments) resolves
its ``--device`` and ``--dtype`` into a Placement once, and gives it to the model it builds or loads
(:func:`llmrec.models.base.build_model`, :func:`llmrec.models.base.load_model`); the model keeps it as
``model.placement`` and never writes it into its config, so a run trained on one machine loads on another.
Under ``accelerate launch`` (several processes) the placement is the accelerator's: each process's own GPU.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Literal

from llmrec.config import option
from llmrec.devices import DEVICE_HELP, DTYPES, resolve_device, resolve_dtype

DtypeName = Literal["auto", "float32", "bfloat16", "float16"]  # an LLM backbone's weights dtype, as given
DTYPE_HELP = "LLM backbone weights: auto (bfloat16 on CUDA, float32 elsewhere), float32, bfloat16, float16"


@dataclasses.dataclass(frozen=True)
class Placement:
    """A resolved device and, for a model around an LLM, its backbone's weights dtype."""

    device: str = "cpu"  # a torch device string: cpu, cuda, cuda:N, mps
    dtype: str | None = None  # the backbone's weights dtype on that device; None: the model has no backbone

    @classmethod
    def resolve(
        cls, device: str | None = "auto", dtype: str | None = "auto", backbone: bool = True
    ) -> Placement:
        """``device``/``dtype`` as given on a command line (None: ``auto``) resolved for this machine, or
        for this process of an ``accelerate launch``; ``backbone=False``: a model without an LLM (no dtype)."""
        resolved = _launched_device(device or "auto") or resolve_device(device or "auto")
        return cls(resolved, resolve_dtype(dtype or "auto", resolved) if backbone else None)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _launched_device(device: str) -> str | None:
    """The device accelerate gives this process when several were launched (``accelerate launch`` or
    ``torchrun`` set ``WORLD_SIZE``): its own GPU, ``cuda:<local rank>``, unless the command asked for the
    CPU; None when this process runs alone."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    resolved = resolve_device(device)
    if resolved == "cpu" or os.environ.get("ACCELERATE_USE_CPU") == "True":
        return "cpu"
    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if resolved.startswith("cuda") else resolved


def device_option(default: str | None = "auto") -> Any:
    """The ``device`` field of every command config that places a model (one declaration, one help)."""
    return option(default, f"{DEVICE_HELP}; under accelerate launch: each process's own GPU")


def dtype_option(default: str | None = "auto") -> Any:
    """The ``dtype`` field of every command config that places a model."""
    return option(default, DTYPE_HELP)


@dataclasses.dataclass
class PlacementOptions:
    """``--device`` and ``--dtype`` of a command that takes nothing else from a config (``llmrec evaluate``);
    the other commands' configs declare the same two fields with :func:`device_option` / :func:`dtype_option`."""

    device: str = device_option()
    dtype: DtypeName = dtype_option()


__all__ = ["Placement", "PlacementOptions", "DTYPES", "DtypeName", "device_option", "dtype_option"]
