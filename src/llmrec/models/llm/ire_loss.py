"""The two IRE losses of one feature type, from the user vectors ``o_u`` (B, d_s) and projected item vectors:

- ``bce`` (the paper's Eq. 5-6 and the official code): binary cross-entropy of the target and of one sampled
  negative;
- ``softmax``: cross-entropy of the target against every item the model may train on (the held-out items of
  a cold-start split masked out), a common choice for retrieval heads: each step learns from the whole catalog
  instead of one negative, at the cost of projecting every item per step (cheap for catalogs up to ~1e5).

Logits are taken in float32 whatever the modules' dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bce_term(o_u: torch.Tensor, target: torch.Tensor, negative: torch.Tensor, scale: float) -> torch.Tensor:
    """BCE of the (B, d_s) target vectors as positives and the (B, d_s) negative vectors as negatives."""
    pos = (o_u * target).sum(-1).float() * scale  # (B,)
    neg = (o_u * negative).sum(-1).float() * scale  # (B,)
    return F.binary_cross_entropy_with_logits(pos, torch.ones_like(pos)) + F.binary_cross_entropy_with_logits(
        neg, torch.zeros_like(neg)
    )


def softmax_term(
    o_u: torch.Tensor, items: torch.Tensor, target: torch.Tensor, held_out: torch.Tensor, scale: float
) -> torch.Tensor:
    """Cross-entropy of the (B,) target indices over every item's (N, d_s) vector, the (N,) ``held_out``
    items excluded (never a positive, never a negative: they must stay unseen)."""
    logits = (o_u @ items.T).float() * scale  # (B, N)
    return F.cross_entropy(logits.masked_fill(held_out, float("-inf")), target)
