"""The model contract the trainer and evaluator rely on, and nothing else.

A model is built from its own typed config plus the dataset's sizes, learns (``llmrec.trainer.fit``: its
own ``fit``, or a torch model's declared stages), and scores:

- ``score_all(users, histories) -> (B, N)``: every catalog item, for full ranking;
- ``score(users, histories, candidates) -> (B, C)``: given candidates (target + frozen negatives);
- ``score_pairs(users, histories, targets) -> (B,)``: CTR-style (user, target) scores for AUC/UAUC.

``score`` and ``score_pairs`` default to gathering from ``score_all``; models for which the whole
catalog is expensive override them. ``save``/``load`` round-trip a trained model through a directory.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from llmrec.config import from_dict, to_dict
from llmrec.errors import LlmrecError
from llmrec.utils.io import read_json, write_json_atomic


@dataclasses.dataclass
class ModelConfig:
    """Options shared by every model (subclasses add their own fields)."""


class Recommender(abc.ABC):
    name: ClassVar[str] = ""
    config_cls: ClassVar[type[ModelConfig]] = ModelConfig
    #: default options of a registered preset (e.g. ``collm`` = histllm with a fixed prompt recipe)
    preset: ClassVar[dict[str, Any]] = {}
    #: what the model is for: next-item ranking and/or CTR (a CTR-only model skips ranking evaluation)
    tasks: ClassVar[tuple[str, ...]] = ("ranking", "ctr")

    def __init__(self, cfg: ModelConfig, n_users: int, n_items: int) -> None:
        self.cfg, self.n_users, self.n_items = cfg, n_users, n_items

    @abc.abstractmethod
    def fit(self, dataset: Any, run: Any | None = None) -> None:
        """Learn from ``dataset`` (a :class:`llmrec.data.dataset.Dataset`); log to ``run`` when given.

        Models without torch weights (popularity, random) learn here; a torch model declares its training
        stages instead and :func:`llmrec.trainer.fit` (which calls this for the others) runs them."""

    @abc.abstractmethod
    def score_all(self, users: np.ndarray, histories: list[np.ndarray]) -> np.ndarray:
        """(B, N) scores of every item for each user given their chronological history."""

    def score(self, users: np.ndarray, histories: list[np.ndarray], candidates: np.ndarray) -> np.ndarray:
        """(B, C) scores of the given candidate items."""
        return np.take_along_axis(
            self.score_all(users, histories), np.asarray(candidates, dtype=np.int64), axis=1
        )

    def score_pairs(self, users: np.ndarray, histories: list[np.ndarray], targets: np.ndarray) -> np.ndarray:
        """(B,) scores of one target item per example (CTR protocol)."""
        return self.score(users, histories, np.asarray(targets, dtype=np.int64)[:, None])[:, 0]

    # -- persistence: config + sizes in model.json; subclasses add their weights in save_state/load_state
    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.save_state(directory)
        write_json_atomic(
            directory / "model.json",
            {
                "model": self.name,
                "config": to_dict(self.cfg),
                "n_users": self.n_users,
                "n_items": self.n_items,
            },
        )

    def save_state(self, directory: Path) -> None:  # noqa: B027 (optional hook: stateless models skip it)
        """Write learned state (weights, counts) into ``directory``."""

    def load_state(self, directory: Path) -> None:  # noqa: B027 (optional hook)
        """Read what :meth:`save_state` wrote."""


_MODELS: dict[str, type[Recommender]] = {}


def register_model(name: str) -> Callable[[type[Recommender]], type[Recommender]]:
    """Register a Recommender class under ``name`` (used by ``llmrec train NAME``); duplicates are an error."""

    def deco(cls: type[Recommender]) -> type[Recommender]:
        if name in _MODELS:
            raise ValueError(f"model '{name}' is already registered by {_MODELS[name].__module__}")
        cls.name = name
        _MODELS[name] = cls
        return cls

    return deco


def _load_builtins() -> None:
    from llmrec.models import bert4rec, gru4rec, histllm, illmrec, mf, popularity, sasrec, vbpr  # noqa: F401


def available_models() -> list[str]:
    _load_builtins()
    return sorted(_MODELS)


def get_model_class(name: str) -> type[Recommender]:
    _load_builtins()
    if name not in _MODELS:
        raise LlmrecError(f"unknown model '{name}'", hint=f"choose one of {sorted(_MODELS)}")
    return _MODELS[name]


def build_model(name: str, options: dict[str, Any], n_users: int, n_items: int) -> Recommender:
    """Instantiate a registered model from a dict of its options (unknown keys are an error)."""
    cls = get_model_class(name)
    options = {**cls.preset, **options}  # a registered preset of another model fixes some defaults
    return cls(from_dict(cls.config_cls, options, where=f"model '{name}' options"), n_users, n_items)


def load_model(directory: str | Path) -> Recommender:
    """Rebuild a saved model from ``directory/model.json`` and its state files."""
    directory = Path(directory)
    info = read_json(directory / "model.json")
    model = build_model(info["model"], info["config"], info["n_users"], info["n_items"])
    model.load_state(directory)
    return model
