"""Prompt and token budgets: how long a prompt the LM takes, and which items of a history fit in one.

The LM's context (:func:`context_length`) bounds every prompt; a model may set a smaller limit of its own
(I-LLMRec's ``max_prompt_tokens``) and cap the item list apart (``max_history_tokens``). A history that
does not fit loses its oldest items: first an estimate from each item's own token count
(:func:`fit_history`), then corrected by counting the whole prompt (:func:`fit_prompt`). A prompt the
fixed text alone makes too long is a clear error (:meth:`TokenBudget.check_context`), never a cut prompt.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from llmrec.errors import ConfigError


def context_length(config: Any, tokenizer: Any) -> int | None:
    """The longest prompt the LM takes: the smaller of its position table (``max_position_embeddings``)
    and the tokenizer's ``model_max_length``, each where it is set (a tokenizer without a limit reports a
    huge sentinel); None when neither says."""
    limits = [getattr(config, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None)]
    limits = [int(x) for x in limits if isinstance(x, int) and 0 < x < 10**9]
    return min(limits) if limits else None


class TokenBudget:
    """The backbone's token counting and context check (mixed into ``Backbone``)."""

    cfg: Any  # the BackboneConfig
    tokenizer: Any
    context_length: int | None  # see :func:`context_length`

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def check_context(self, attention_mask: torch.Tensor, hint: str) -> None:
        """Raise a one-line ConfigError when a prompt of the batch is longer than the LM's context;
        ``hint`` says which options shorten the prompts."""
        longest = int(attention_mask.sum(1).max()) if attention_mask.numel() else 0
        if self.context_length is not None and longest > self.context_length:
            raise ConfigError(
                f"a prompt of {longest} tokens exceeds the context of {self.cfg.llm} "
                f"({self.context_length} tokens)",
                hint=hint,
            )


def prompt_limit(max_prompt_tokens: int | None, context: int | None, answer_tokens: int = 0) -> int:
    """The most tokens a prompt may have: ``max_prompt_tokens`` and the LM's ``context`` less the
    ``answer_tokens`` that follow the prompt, whichever is set and smaller."""
    limits = [max_prompt_tokens, None if context is None else context - answer_tokens]
    return min([x for x in limits if x is not None], default=2**31)


def history_budget(limit: int, fixed_tokens: int, max_history_tokens: int | None) -> int:
    """Tokens left for the item list: ``limit`` less the prompt's ``fixed_tokens``; at most
    ``max_history_tokens``."""
    budget = limit - fixed_tokens
    return min(budget, max_history_tokens or budget)


def fit_history(history: np.ndarray, lengths: np.ndarray, budget: int) -> np.ndarray:
    """Drop the oldest items of ``history`` until their token counts (``lengths``, by item) sum to at most
    ``budget``."""
    history = np.asarray(history, dtype=np.int64)
    total = np.cumsum(lengths[history][::-1])[::-1]  # tokens from item j to the end
    return history[np.searchsorted(-total, -budget) :] if len(history) else history


def fit_prompt(
    history: np.ndarray,
    lengths: np.ndarray,
    budget: int,
    fits: Callable[[np.ndarray], bool],
    cap: int | None,
) -> np.ndarray:
    """The most recent items of ``history`` whose prompt ``fits``: the estimate of :func:`fit_history`
    (``budget`` tokens of items), then corrected by asking ``fits`` of the prompt itself, as BPE merges
    across item boundaries put the estimate off by about a token per item either way (an item is added
    back only while the item list stays within ``cap`` tokens)."""
    history = np.asarray(history, dtype=np.int64)
    start = len(history) - len(fit_history(history, lengths, budget))
    while start < len(history) and not fits(history[start:]):
        start += 1
    while (
        start > 0 and (not cap or lengths[history[start - 1 :]].sum() <= cap) and fits(history[start - 1 :])
    ):
        start -= 1
    return history[start:]
