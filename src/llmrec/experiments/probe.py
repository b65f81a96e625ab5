"""``llmrec experiments probe``: what does an LLM recommender's user state know? A linear-probe diagnostic.

For every user of a split, the model's user representation (I-LLMRec: the last hidden state at [REC], as
the IRE projectors see it) is computed from the evaluation prompt. A cross-validated logistic regression
(scikit-learn, features standardised) then predicts an item attribute -- e.g. the category or brand -- of
the target item ("next") and of the most recent history item ("last") from that state alone. Accuracy far
above the majority-class rate means the attribute reached the state through the prompt: on the synthetic
image catalog, where shape and colour are visible only in the pictures, it is direct evidence that the
image token carries visual information through the LLM. ``--untrained`` probes the same architecture
before any training (the frozen LLM with a freshly initialised adaptor and [REC]), for contrast.

Written to ``<run>/probe.json`` (or ``probe-untrained.json``) and ``probe.md``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmrec.config import option
from llmrec.data.dataset import Dataset
from llmrec.errors import ConfigError, LlmrecError
from llmrec.eval.evaluator import seeded_rows
from llmrec.utils.io import write_json_atomic, write_text_atomic
from llmrec.utils.markdown import markdown_table


@dataclass
class ProbeConfig:
    """Which run, which attributes, which users."""

    run: str = option("runs/illmrec", "run directory of a model with user states (illmrec)")
    fields: list[str] = option(factory=lambda: ["category", "brand"], help="item columns to predict")
    split: str = option("test", "valid or test: whose evaluation prompts are probed")
    users: int | None = option(None, "a seeded subset of this many users (None = all)", ge=2)
    folds: int = option(5, "cross-validation folds", ge=2)
    untrained: bool = option(False, "probe a freshly initialised model of the run's config instead")
    seed: int = option(0, "seed of the user subset, the folds and the untrained model", ge=0, lt=2**32)

    def __post_init__(self) -> None:
        if self.split not in ("valid", "test"):
            raise ConfigError(f"split must be valid or test, got {self.split!r}")
        if self.folds < 2:
            raise ConfigError(f"folds must be >= 2, got {self.folds}")
        if not self.fields:
            raise ConfigError("fields: name at least one item column (e.g. category)")


def _model(cfg: ProbeConfig, train_cfg: Any, ds: Dataset) -> Any:
    import torch

    from llmrec.models.base import build_model, load_model

    if not cfg.untrained:
        return load_model(cfg.run, data=ds)
    torch.manual_seed(cfg.seed)
    model = build_model(train_cfg.model, train_cfg.options, ds.n_users, ds.n_items, train_cfg.placement())
    model.attach(ds)
    return model


def linear_probe(x: np.ndarray, y: np.ndarray, folds: int, seed: int = 0) -> float:
    """Mean cross-validated accuracy of a standardised logistic regression predicting ``y`` from ``x``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    _, counts = np.unique(y, return_counts=True)
    folds = min(folds, int(counts.max()))
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.1))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # rare classes with fewer members than folds are expected
        warnings.simplefilter("ignore", UserWarning)
        return float(cross_val_score(clf, x, y, cv=cv).mean())


def run_probe(cfg: ProbeConfig) -> dict[str, Any]:
    """Probe the user states of a run; write and return {field: {next/last: accuracy, majority: rate}}."""
    from llmrec.models.base import get_model_class
    from llmrec.pipeline import run_dataset, saved_config

    run = Path(cfg.run)
    train_cfg = saved_config(run)
    ds = run_dataset(run)
    missing = [f for f in cfg.fields if f not in ds.items.columns]
    if missing:
        raise LlmrecError(
            f"item column(s) {missing} not in the dataset",
            file=ds.root / "items.parquet",
            hint="see --fields",
        )
    if not get_model_class(train_cfg.model).has_user_representations():  # before loading its weights
        raise LlmrecError(
            f"model '{train_cfg.model}' exposes no user states to probe",
            file=run,
            hint="probe an illmrec run",
        )
    model = _model(cfg, train_cfg, ds)
    split = ds.split(cfg.split)  # type: ignore[arg-type]
    rows = seeded_rows(len(split.users), cfg.users, cfg.seed)
    histories = [split.histories[r] for r in rows]
    states = model.user_representations(histories)  # (U, d)
    subjects = {"next": split.targets[rows], "last": np.array([h[-1] for h in histories])}
    result: dict[str, Any] = {"run": str(run), "untrained": cfg.untrained, "users": len(rows), "fields": {}}
    for field in cfg.fields:
        values = ds.items[field].astype(str).to_numpy()
        entry = {}
        for name, items in subjects.items():
            y = values[items]
            entry[name] = linear_probe(states, y, cfg.folds, cfg.seed)
            entry[f"{name}_majority"] = float(np.unique(y, return_counts=True)[1].max() / len(y))
        result["fields"][field] = entry
    name = "probe-untrained" if cfg.untrained else "probe"
    write_json_atomic(run / f"{name}.json", result)
    write_text_atomic(run / f"{name}.md", format_probe(result))
    return result


def format_probe(result: dict[str, Any]) -> str:
    lines = [
        f"Linear probe of the user states ({result['users']} users{', untrained model' if result['untrained'] else ''})",
        "",
    ]
    rows = [
        [field] + [f"{e[k]:.3f}" for k in ("next", "next_majority", "last", "last_majority")]
        for field, e in result["fields"].items()
    ]
    header = "item attribute | next item: accuracy | majority | last history item: accuracy | majority"
    lines += markdown_table(header, "-rrrr", rows)
    return "\n".join(lines) + "\n"
