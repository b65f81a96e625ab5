"""Sanity floors: rank by training popularity, or at random (seeded, fixed per user/item pair)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from llmrec.config import option
from llmrec.models.base import ModelConfig, Recommender, register_model


@register_model("popularity")
class Popularity(Recommender):
    """Score = number of training interactions of the item (the same ranking for every user)."""

    def fit(self, dataset: Any, run: Any | None = None) -> None:
        self.counts = dataset.item_popularity.astype(np.float64)  # (N,)

    def score_all(self, users: np.ndarray, histories: list[np.ndarray]) -> np.ndarray:
        return np.broadcast_to(self.counts, (len(users), self.n_items)).copy()  # (B, N)

    def save_state(self, directory: Path) -> None:
        np.save(directory / "counts.npy", self.counts)

    def load_state(self, directory: Path, dataset: Any = None) -> None:
        self.counts = np.load(directory / "counts.npy")


@dataclasses.dataclass
class RandomConfig(ModelConfig):
    seed: int = option(0, "seed of the random scores")


@register_model("random")
class Random(Recommender):
    """Uniform random scores, a deterministic function of (seed, user, item): re-scoring gives the same numbers."""

    config_cls = RandomConfig

    def fit(self, dataset: Any, run: Any | None = None) -> None:
        """Nothing to learn."""

    def score_all(self, users: np.ndarray, histories: list[np.ndarray]) -> np.ndarray:
        seed = self.cfg.seed  # type: ignore[attr-defined]
        return np.stack([np.random.default_rng([seed, int(u)]).random(self.n_items) for u in users])  # (B, N)
