"""Where models run: one ``device`` and one backbone ``dtype`` option, resolved the same way everywhere.

``auto`` means the GPU when torch sees one (``cuda``), else the CPU; an LLM backbone's ``auto`` dtype is
bfloat16 on a GPU and float32 elsewhere (on CPUs without bf16 matrix units fp32 is the faster one).
"""

from __future__ import annotations

import re

from llmrec.errors import ConfigError

DEVICE_HELP = "auto | cpu | cuda | cuda:N | mps (auto: cuda when available, else cpu)"
DTYPES = ("auto", "float32", "bfloat16", "float16")
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def resolve_device(spec: str) -> str:
    """``spec`` as a concrete torch device string; a device torch cannot use here is a ConfigError."""
    spec = str(spec).strip().lower()
    if not _DEVICE.match(spec):
        raise ConfigError(f"device {spec!r} is not one of {DEVICE_HELP}")
    import torch

    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {spec!r}: torch sees no CUDA GPU here; use --device cpu (or auto)")
        index = int(spec.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device {spec!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    if spec == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("device 'mps': torch sees no Apple GPU here; use --device cpu (or auto)")
    return spec


def resolve_dtype(spec: str, device: str) -> str:
    """An LLM backbone's weights dtype on ``device``: ``auto`` is bfloat16 on CUDA, float32 elsewhere."""
    if spec not in DTYPES:
        raise ConfigError(f"dtype {spec!r} is not one of {list(DTYPES)}")
    if spec == "auto":
        return "bfloat16" if device.startswith("cuda") else "float32"
    return spec
