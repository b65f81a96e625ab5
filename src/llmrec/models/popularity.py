"""Sanity floors: rank by training popularity, or at random (seeded, fixed per user/item pair)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from llmrec.config import option
from llmrec.errors import LlmrecError
from llmrec.models.base import ModelConfig, Recommender, register_model
from llmrec.utils.io import write_npy_atomic

if TYPE_CHECKING:
    from llmrec.data.dataset import Dataset


@register_model("popularity")
class Popularity(Recommender):
    scores_unseen_items = False  # an item never trained on has no count: the evaluation's fallback
    """Score = number of training interactions of the item (the same ranking for every user)."""

    def fit(self, dataset: Dataset, run: Any | None = None) -> None:
        self.counts = dataset.item_popularity.astype(np.float64)  # (N,)

    def score_all(self, users: np.ndarray, histories: list[np.ndarray]) -> np.ndarray:
        return np.broadcast_to(self.counts, (len(users), self.n_items)).copy()  # (B, N)

    def save_state(self, directory: Path) -> None:
        write_npy_atomic(directory / "counts.npy", self.counts)

    def load_state(self, directory: Path, dataset: Dataset | None = None) -> None:
        path = directory / "counts.npy"
        hint = "the saved model is damaged; train it again (llmrec train ... --restart)"
        if not path.exists():
            raise LlmrecError("item counts missing", file=path, hint=hint)
        try:
            counts = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise LlmrecError(f"unreadable item counts ({e})", file=path, hint=hint) from None
        if counts.shape != (self.n_items,) or not np.issubdtype(counts.dtype, np.number):
            raise LlmrecError(
                f"item counts of shape {counts.shape} ({counts.dtype}), the model has {self.n_items} items",
                file=path,
                hint=hint,
            )
        self.counts = counts.astype(np.float64)


@dataclasses.dataclass(frozen=True)
class RandomConfig(ModelConfig):
    seed: int = option(0, "seed of the random scores", ge=0)


@register_model("random")
class Random(Recommender):
    """Uniform random scores, a deterministic function of (seed, user, item): re-scoring gives the same numbers."""

    config_cls = RandomConfig
    scores_unseen_items = False  # random scores tell no item apart: the fallback states it exactly

    def fit(self, dataset: Dataset, run: Any | None = None) -> None:
        """Nothing to learn."""

    def score_all(self, users: np.ndarray, histories: list[np.ndarray]) -> np.ndarray:
        seed = self.cfg.seed  # type: ignore[attr-defined]
        return np.stack([np.random.default_rng([seed, int(u)]).random(self.n_items) for u in users])  # (B, N)
