"""The small networks I-LLMRec puts around the frozen LLM, as the official code
(github.com/rlqja1107/torch-I-LLMRec) builds them: the adaptor M that maps an item feature into the LM's
input space, and the IRE projectors that map the [REC] state and each item feature into the shared
recommendation space."""

from __future__ import annotations

from torch import nn


def mlp_adaptor(
    d_in: int, hidden: int, d_out: int, eps: float = 1e-5, activation: str = "gelu"
) -> nn.Sequential:
    """The official adaptor: Linear -> LayerNorm -> GELU (or ReLU, the paper's text) -> Linear."""
    act = nn.GELU() if activation == "gelu" else nn.ReLU()
    return nn.Sequential(
        nn.Linear(d_in, hidden), nn.LayerNorm(hidden, eps=eps), act, nn.Linear(hidden, d_out)
    )


def projector(d_in: int, d_s: int) -> nn.Sequential:
    """The official IRE projector: Linear -> LayerNorm -> ReLU -> Linear to the shared space."""
    return nn.Sequential(nn.Linear(d_in, 2 * d_s), nn.LayerNorm(2 * d_s), nn.ReLU(), nn.Linear(2 * d_s, d_s))
