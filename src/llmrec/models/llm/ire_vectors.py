"""I-LLMRec's retrieval score (Eq. 8) as one dot product, for the item index and similar items.

The score of item i is ``scale * sum_t <user_proj_t(h), item_proj_t(f_i^t)>`` over the feature types t, so
one query vector is the concatenation of the per-type user projections times the score scale, and one item
vector the concatenation of the per-type item projections (in the order of ``features``). A mixin of
:class:`~llmrec.models.llm.illmrec.ILLMRec` (UniMP inherits it): it reads ``cfg.features``, ``user_proj``,
``item_vectors``, ``score_scale`` and the user states of the evaluation prompts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch


class IREVectors:
    """``query_tensor`` / ``item_tensor`` of the IRE heads, computed in the dtype the model scores in."""

    dot_product = True
    cfg: Any
    user_proj: Any
    training: bool
    score_scale: float

    # and the model's methods _state_chunks (the evaluation prompts' states), item_vectors, to_eval_dtype

    def query_tensor(self, users: torch.Tensor, histories: list[np.ndarray]) -> torch.Tensor:
        """(B, T d_s) the user projections of every feature type side by side, times the score scale."""
        chunks = [
            torch.cat([self.user_proj[t](h) for t in self.cfg.features], dim=1) * self.score_scale
            for h in self._state_chunks(histories)  # type: ignore[attr-defined]
        ]
        return torch.cat(chunks)  # (B, T d_s)

    def item_tensor(self) -> torch.Tensor:
        """(N, T d_s) the item projections of every feature type side by side."""
        vectors = [self.item_vectors(t) for t in self.cfg.features]  # type: ignore[attr-defined]
        return torch.cat(vectors, dim=1)  # (N, T d_s)

    def _evaluated(self, compute: Callable[[], torch.Tensor]) -> np.ndarray:
        if not self.training:  # as score_all: a model in eval mode computes in eval_dtype
            self.to_eval_dtype()  # type: ignore[attr-defined]
        return super()._evaluated(compute)  # type: ignore[misc]
