"""Where a command runs its model: one :class:`Placement` (device, backbone dtype), resolved once.

Every command that places a model (train, evaluate, recommend, serve, prompts, the experiments) resolves
its ``--device`` and ``--dtype`` into a Placement once, and gives it to the model it builds or loads
(:func:`llmrec.models.base.build_model`, :func:`llmrec.models.base.load_model`); the model keeps it as
``model.placement`` and never writes it into its config, so a run trained on one machine loads on another.
Under ``accelerate launch`` (several processes) the placement is the accelerator's: each process's own GPU.

``--quantize int8`` (evaluate, recommend, serve, ``llmrec.load``) is part of the placement too: once the
trained weights are loaded, the backbone's decoder runs its linear layers in int8 (torch dynamic
quantisation: int8 weights per output channel, activations quantised per call), on the CPU only, for a
model with an LLM backbone only, never while training (:func:`llmrec.models.base.quantized`). The default stays exact fp32.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Literal

from llmrec.config import option
from llmrec.devices import DEVICE_HELP, DTYPES, resolve_device, resolve_dtype
from llmrec.errors import ConfigError

DtypeName = Literal["auto", "float32", "bfloat16", "float16"]  # an LLM backbone's weights dtype, as given
DTYPE_HELP = "LLM backbone weights: auto (bfloat16 on CUDA, float32 elsewhere), float32, bfloat16, float16"
QuantizeName = Literal["none", "int8"]  # how an LLM backbone's linear layers compute, as given
QUANTIZE = ("none", "int8")
NO_TRAINING = (
    "--quantize is for running a trained model (evaluate, recommend, serve): training needs float32 weights; "
    "train without it"
)
QUANTIZE_HELP = (
    "none (exact), or int8: the LLM backbone's linear layers in int8 (torch dynamic quantisation), CPU only, "
    "for evaluating, recommending and serving"
)


@dataclasses.dataclass(frozen=True)
class Placement:
    """A resolved device and, for a model around an LLM, its backbone's weights dtype."""

    device: str = "cpu"  # a torch device string: cpu, cuda, cuda:N, mps
    dtype: str | None = None  # the backbone's weights dtype on that device; None: the model has no backbone
    quantize: str | None = None  # "int8": the backbone's linear layers quantised once loaded; None: exact

    @classmethod
    def resolve(
        cls,
        device: str | None = "auto",
        dtype: str | None = "auto",
        backbone: bool = True,
        quantize: str | None = None,
    ) -> Placement:
        """``device``/``dtype``/``quantize`` as given on a command line (None: ``auto``, no quantisation)
        resolved for this machine, or for this process of an ``accelerate launch``; ``backbone=False``: a
        model without an LLM (no dtype, nothing to quantise)."""
        resolved = _launched_device(device or "auto") or resolve_device(device or "auto")
        placement = cls(resolved, resolve_dtype(dtype or "auto", resolved) if backbone else None)
        if quantize in (None, "none"):
            return placement
        check_quantize(quantize, placement, backbone)
        return dataclasses.replace(placement, quantize=quantize)

    def to_dict(self) -> dict[str, Any]:
        """device and dtype (and quantize when set), as a command's ``--print-config`` shows them."""
        out = dataclasses.asdict(self)
        if out["quantize"] is None:
            del out["quantize"]
        return out


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


def check_quantize(quantize: str, placement: Placement, backbone: bool = True) -> None:
    """A ConfigError (one line) unless ``quantize`` can apply: int8, an LLM backbone, in float32, on the CPU."""
    if quantize not in QUANTIZE:
        raise ConfigError(f"quantize {quantize!r} is not one of {list(QUANTIZE)}")
    if not backbone:
        raise ConfigError("--quantize int8 applies to LLM backbones and this model has none; drop it")
    if placement.device != "cpu":
        raise ConfigError(
            f"--quantize int8 is for the CPU (torch dynamic quantisation) and the model runs on "
            f"{placement.device}; on a GPU use --dtype bfloat16, or add --device cpu"
        )
    if placement.dtype != "float32":
        raise ConfigError(
            f"--quantize int8 quantises float32 weights, not {placement.dtype}; drop --dtype {placement.dtype}"
        )


def device_option(default: str | None = "auto") -> Any:
    """The ``device`` field of every command config that places a model (one declaration, one help)."""
    return option(default, f"{DEVICE_HELP}; under accelerate launch: each process's own GPU")


def dtype_option(default: str | None = "auto") -> Any:
    """The ``dtype`` field of every command config that places a model."""
    return option(default, DTYPE_HELP)


def quantize_option(default: str = "none") -> Any:
    """The ``quantize`` field of the commands that run a trained model (evaluate, recommend, serve)."""
    return option(default, QUANTIZE_HELP)


@dataclasses.dataclass
class PlacementOptions:
    """``--device``, ``--dtype`` and ``--quantize`` of a command that takes nothing else from a config
    (``llmrec evaluate``); the other commands' configs declare the same fields with :func:`device_option`,
    :func:`dtype_option` and :func:`quantize_option`."""

    device: str = device_option()
    dtype: DtypeName = dtype_option()
    quantize: QuantizeName = quantize_option()


__all__ = [
    "DTYPES",
    "QUANTIZE",
    "DtypeName",
    "Placement",
    "PlacementOptions",
    "QuantizeName",
    "check_quantize",
    "device_option",
    "dtype_option",
    "quantize_option",
]
