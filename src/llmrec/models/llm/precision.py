"""Where I-LLMRec's own modules live in dtype: ``trainable_dtype`` (the adaptors, projectors and [REC] in
float32, llmrec's default, or in the LM's dtype, as the official code trains them: pure bf16 on a GPU) and
``eval_dtype`` (the dtype a model in eval mode is scored in; the official code scores in float16).

A mixin of :class:`~llmrec.models.llm.illmrec.ILLMRec`: it reads the model's ``cfg``, ``backbone``, ``rec`` and
``checkpoint_state``. Scoring in another dtype keeps the weights as trained aside, so a save writes them and
training continues from them exactly.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class TrainablePrecision:
    """``trainable_dtype`` and ``eval_dtype`` for a model with a ``backbone`` and its own modules."""

    cfg: Any
    backbone: Any
    rec: torch.nn.Parameter
    training: bool
    # while scored in ``eval_dtype``: the weights as trained (what a save writes, what training continues from)
    _as_trained: dict[str, torch.Tensor] | None

    def _cast_modules(self, dtype: torch.dtype) -> None:
        """Adaptors, projectors and [REC] (every module but the LM) in ``dtype``; the feature tables stay
        float32 and are cast where they enter a module (:attr:`module_dtype`)."""
        for name, child in self.named_children():
            if name != "backbone":
                child.to(dtype)
        self.rec.data = self.rec.data.to(dtype)

    @property
    def module_dtype(self) -> torch.dtype:
        """The dtype of the adaptors, projectors and [REC] (``trainable_dtype``; ``eval_dtype`` while scored)."""
        return self.rec.dtype

    def score_all(self, users: np.ndarray, histories: list[np.ndarray]) -> np.ndarray:
        """Scores of a model in eval mode (evaluated, recommending, serving) in ``eval_dtype``; validation
        while training (the model in training mode) scores as trained."""
        if not self.training:
            self.to_eval_dtype()
        return super().score_all(users, histories)

    def scoring_dtype(self) -> torch.dtype | None:
        """The dtype ``eval_dtype`` asks for here, or None (as trained: ``train``, or a half dtype on the
        CPU, where half-precision products are many times slower than float32)."""
        name = self.cfg.eval_dtype
        if name == "train" or self.backbone is None:
            return None
        if name != "float32" and self.backbone.device.type == "cpu":
            if not getattr(self, "_told_cpu_eval", False):
                log.info("eval_dtype=%s is not applied on the CPU: scoring as trained", name)
                self._told_cpu_eval = True
            return None
        return _DTYPES[name]

    def to_eval_dtype(self) -> None:
        """The LM and every module in :meth:`scoring_dtype` for scoring (a no-op when they are in it already);
        the weights as trained are kept aside (:meth:`checkpoint_state` returns them; training mode brings
        them back)."""
        dtype = self.scoring_dtype()
        assert self.backbone is not None
        if dtype is None or (self.module_dtype == dtype and self.backbone.dtype == dtype):
            return
        if self._as_trained is None:
            self._as_trained = self.checkpoint_state()
            self._trained_dtypes = (self.backbone.dtype, self.module_dtype)
        log.info("scoring in %s", str(dtype).removeprefix("torch."))
        self.backbone.model.to(dtype)
        self._cast_modules(dtype)

    def train(self, mode: bool = True) -> Any:
        """Training mode; a model scored in ``eval_dtype`` gets its dtypes and its trained weights back
        first (exactly; the frozen LM as cast back from the scoring dtype)."""
        if mode and self._as_trained is not None:
            lm, modules = self._trained_dtypes
            assert self.backbone is not None
            self.backbone.model.to(lm)
            self._cast_modules(modules)
            state, self._as_trained = self._as_trained, None
            self.load_state_dict(state, strict=False)
        return super().train(mode)
