"""Warm vs cold hit@10 / NDCG@10 over seeds: ``llmrec experiments cold-start``.

Each dataset must be prepared with ``--cold-items`` (its held-out items; see docs/explanations/cold-start.md)
and hold the item features the variants read (``image`` for the image variants, ``text`` for the text ones).
Every (dataset, variant, seed) is an ordinary ``llmrec.train`` run in its own folder (an interrupted one
resumes, a finished one is evaluated again); the table gives, per variant, the mean ± std over the seeds of the
warm (``test``) and cold (``test_cold``) metrics with the chance level, and a paired test (scipy's
``ttest_rel`` over the seeds) of each feature model's cold hit@10 against the ID models' fallback (which ranks
at chance exactly). Public API only (``llmrec.train``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmrec.config import option, to_dict
from llmrec.errors import ConfigError
from llmrec.utils.io import write_json_atomic, write_text_atomic
from llmrec.utils.markdown import markdown_table

log = logging.getLogger(__name__)

#: variant -> (model, its options); "{image}"/"{text}" name the dataset's features
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "illmrec-image": ("illmrec", {"representation": "image", "features": ["image"], "ila": False}),
    "illmrec-text": ("illmrec", {"representation": "title", "features": ["text"], "ila": False}),
    "vbpr-image": ("vbpr", {"feature": "image"}),
    "vbpr-text": ("vbpr", {"feature": "text"}),
    "bm3": ("bm3", {}),
    "lgmrec": ("lgmrec", {}),
    "sasrec": ("sasrec", {}),
    "popularity": ("popularity", {}),
}
METRICS = ("hit@10", "ndcg@10")
FALLBACK = "the ID fallback (chance)"


@dataclass
class ColdStartConfig:
    """``llmrec experiments cold-start``: which datasets, variants, seeds and settings."""

    data: list[str] = option(factory=list, help="prepared datasets (each with --cold-items and its features)")
    variants: list[str] = option(factory=lambda: list(VARIANTS), help=f"variants to run, of {list(VARIANTS)}")
    seeds: list[int] = option(factory=lambda: [0, 1, 2], help="training seeds")
    out: str = option("runs/cold-start", "folder of the runs and of cold_start.json / cold_start.md")
    options: dict[str, Any] = option(
        factory=dict, help="options per model, e.g. {illmrec: {epochs: 1}, sasrec: {epochs: 20}}"
    )
    ranking_users: int | None = option(None, "rank a seeded subset of this many users per split (None = all)")

    def __post_init__(self) -> None:
        if unknown := [v for v in self.variants if v not in VARIANTS]:
            raise ConfigError(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds must be distinct, got {self.seeds}")


def run_cold_start(cfg: ColdStartConfig) -> dict[str, Any]:
    """Train and evaluate every (dataset, variant, seed); write cold_start.json and cold_start.md into
    ``cfg.out``; returns the record (rows and tests)."""
    import llmrec

    if not cfg.data:
        raise ConfigError("give --data with at least one dataset prepared with --cold-items")
    rows, tests = [], []
    for data in cfg.data:
        per_variant: dict[str, list[dict[str, float]]] = {}
        for variant in cfg.variants:
            model, options = VARIANTS[variant]
            options = {**options, **(cfg.options.get(model) or {})}
            for seed in cfg.seeds:
                out = Path(cfg.out) / Path(data).name / variant / f"seed-{seed}"
                done = out / "metrics.json"
                if done.is_file() and "test_cold" in (metrics := json.loads(done.read_text())):
                    log.info(
                        "cold-start: %s %s seed %d: evaluated before in %s",
                        Path(data).name,
                        variant,
                        seed,
                        out,
                    )
                else:  # trained and evaluated now (an interrupted run resumes)
                    log.info("cold-start: %s %s seed %d -> %s", Path(data).name, variant, seed, out)
                    metrics = llmrec.train(
                        model,
                        data=data,
                        out=out,
                        options=options,
                        seed=seed,
                        eval={
                            "splits": ["test"],
                            "ks": [10],
                            "ranking_users": cfg.ranking_users,
                            "ctr": False,
                        },
                    ).metrics
                per_variant.setdefault(variant, []).append(flat(metrics))
            rows.append(summary_row(Path(data).name, variant, per_variant[variant]))
        tests += paired_tests(Path(data).name, per_variant)
    record = {"config": to_dict(cfg), "rows": rows, "tests": tests}
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "cold_start.json", record)
    write_text_atomic(out / "cold_start.md", format_cold_start(record))
    return record


def flat(metrics: dict[str, dict[str, float]]) -> dict[str, float]:
    """The numbers of one run the table reads: warm and cold hit/NDCG@10, chance@10, cold cases."""
    warm, cold = metrics.get("test", {}), metrics.get("test_cold", {})
    out = {f"warm_{m}": float(warm.get(m, np.nan)) for m in METRICS}
    out.update({f"cold_{m}": float(cold.get(m, np.nan)) for m in METRICS})
    out.update(
        chance=float(cold.get("chance@10", np.nan)),
        cases=float(cold.get("cases", np.nan)),
        scores_unseen=float(cold.get("scores_unseen_items", np.nan)),
    )
    return out


def summary_row(dataset: str, variant: str, runs: list[dict[str, float]]) -> dict[str, Any]:
    """Mean and std over the seeds of each number of :func:`flat`."""
    row: dict[str, Any] = {"dataset": dataset, "variant": variant, "seeds": len(runs)}
    for key in runs[0]:
        values = np.array([r[key] for r in runs], dtype=np.float64)
        row[key] = float(values.mean())
        row[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return row


def paired_tests(dataset: str, per_variant: dict[str, list[dict[str, float]]]) -> list[dict[str, Any]]:
    """Each variant that scores unseen items against the fallback of the ID models: the cold hit@10 of its
    seeds paired with the fallback's (the chance level of the same cases), by scipy's ``ttest_rel``."""
    try:
        from scipy import stats
    except ImportError:  # said in the table instead
        stats = None
    out = []
    for variant, runs in per_variant.items():
        if not all(r["scores_unseen"] == 1 for r in runs):
            continue
        model = [r["cold_hit@10"] for r in runs]
        fallback = [r["chance"] for r in runs]
        test: dict[str, Any] = {"dataset": dataset, "variant": variant, "against": FALLBACK, "n": len(runs)}
        test["mean_difference"] = float(np.mean(np.subtract(model, fallback)))
        if stats is None or len(runs) < 2:
            test["p_value"], test["note"] = None, "scipy not installed" if stats is None else "one seed"
        else:
            result = stats.ttest_rel(model, fallback)
            test["t"], test["p_value"] = float(result.statistic), float(result.pvalue)
        out.append(test)
    return out


def _pm(row: dict[str, Any], key: str) -> str:
    return f"{row[key]:.4f} ± {row[key + '_std']:.4f}"


def format_cold_start(record: dict[str, Any]) -> str:
    """The Markdown tables of a :func:`run_cold_start` record."""
    header = [
        "dataset",
        "variant",
        "seeds",
        "warm hit@10",
        "warm NDCG@10",
        "cold hit@10",
        "cold NDCG@10",
        "chance@10",
    ]
    rows = [
        [
            r["dataset"],
            r["variant"] + ("" if r["scores_unseen"] == 1 else " (fallback)"),
            r["seeds"],
            _pm(r, "warm_hit@10"),
            _pm(r, "warm_ndcg@10"),
            _pm(r, "cold_hit@10"),
            _pm(r, "cold_ndcg@10"),
            f"{r['chance']:.4f}",
        ]
        for r in record["rows"]
    ]
    text = "\n".join(markdown_table(header, "llrrrrrr", rows))
    tests = [
        [
            t["dataset"],
            t["variant"],
            t["against"],
            t["n"],
            f"{t['mean_difference']:+.4f}",
            "n/a" if t.get("p_value") is None else f"{t['t']:.2f}",
            t.get("note", "") if t.get("p_value") is None else f"{t['p_value']:.2g}",
        ]
        for t in record["tests"]
    ]
    if tests:
        head = ["dataset", "variant", "against", "seeds", "mean difference", "t", "p"]
        text += "\n\nPaired t-test over the seeds (cold hit@10):\n\n"
        text += "\n".join(markdown_table(head, "lllrrrr", tests))
    return text + "\n"
