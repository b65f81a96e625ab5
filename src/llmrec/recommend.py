"""``llmrec recommend``: top-k catalog items for a known user or for an ad-hoc history of item ids."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from llmrec.config import ConfigError, option
from llmrec.data.dataset import Dataset
from llmrec.devices import DEVICE_HELP, DTYPES
from llmrec.errors import LlmrecError
from llmrec.models.base import Recommender


@dataclass
class RecommendConfig:
    """Whose recommendations, how many, and where the run's model is placed (``llmrec recommend``)."""

    run: str = option("", "run directory of a trained model")
    user: str | None = option(None, "a user id of the dataset")
    items: list[str] | None = option(None, "item ids of a history, oldest first")
    k: int = option(10, "how many items", ge=1)
    data: str | None = option(None, "the run's dataset moved: its new folder (checksum verified)")
    json: bool = option(False, "print JSON")
    device: str = option("auto", DEVICE_HELP)
    dtype: str = option(
        "auto", "LLM backbone weights: " + " | ".join(DTYPES) + " (auto: bf16 on CUDA, fp32 on CPU)"
    )

    def __post_init__(self) -> None:
        if not self.run:
            raise ConfigError("run: the run directory of a trained model is required")
        if (self.user is None) == (self.items is None):
            raise ConfigError("give exactly one of user (--user ID) or items (--items ID ...)")
        if self.items is not None and not self.items:
            raise ConfigError("items: give at least one item id")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {list(DTYPES)}, got {self.dtype!r}")


def check_k(k: int) -> None:
    """How many items to recommend: at least one (more than the catalog gives the whole catalog)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise LlmrecError(f"must be >= 1, got {k!r}", field="--k", hint="ask for 1 or more items")


def recommend(
    model: Recommender,
    ds: Dataset,
    user_id: str | None = None,
    history_ids: Sequence[str] | None = None,
    k: int = 10,
    exclude_history: bool = True,
) -> list[dict[str, Any]]:
    """Ranked recommendations (item_id, title, score) over the whole catalog.

    A known ``user_id`` uses that user's full sequence as history (its index feeds ID-based models); an
    ad-hoc ``history_ids`` list (chronological) is scored as a new user (index 0 is passed to models that
    need one, so ID-based models such as MF are only meaningful with ``user_id``). ``k`` >= 1; a ``k``
    larger than the catalog gives every item that can be recommended.
    """
    check_k(k)
    if (user_id is None) == (history_ids is None):
        raise LlmrecError(
            "give exactly one of a user id or a list of item ids", hint="--user ID or --items ID ..."
        )
    item_ids = ds.items["item_id"].astype(str).tolist()
    if user_id is not None:
        users = ds.users["user_id"].astype(str).tolist()
        if str(user_id) not in users:
            raise LlmrecError(f"unknown user id {user_id!r}", file=ds.root / "users.parquet", field="user_id")
        u = users.index(str(user_id))
        history = ds.sequences[u]
    else:
        index = {iid: i for i, iid in enumerate(item_ids)}
        unknown = [i for i in history_ids or [] if str(i) not in index]
        if unknown:
            raise LlmrecError(
                f"unknown item id(s) {unknown[:5]}", file=ds.root / "items.parquet", field="item_id"
            )
        u, history = 0, np.array([index[str(i)] for i in history_ids or []], dtype=np.int64)
    scores = np.asarray(model.score_all(np.array([u]), [history]), dtype=np.float64)[0]  # (N,)
    if exclude_history and len(history):
        scores[history] = -np.inf
    top = np.argsort(-scores, kind="stable")[:k]
    titles = ds.items["title"].tolist()
    return [
        {"rank": r + 1, "item_id": item_ids[i], "title": titles[i], "score": float(scores[i])}
        for r, i in enumerate(top)
        if np.isfinite(scores[i])
    ]
