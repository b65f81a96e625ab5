"""``llmrec table``: metrics of several runs side by side, as Markdown and CSV."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from llmrec.config import option
from llmrec.errors import LlmrecError
from llmrec.utils.io import atomic_path, read_json, write_text_atomic

DEFAULT_COLUMNS = ("hit@5", "ndcg@5", "hit@10", "ndcg@10", "full_hit@10", "full_ndcg@10", "auc", "uauc")


@dataclass
class TableConfig:
    """Which runs, which split, which metrics, and where to write the table."""

    runs: list[str] = option(factory=list, help="run directories (each with metrics.json)")
    split: str = option("test", "split whose metrics are shown")
    metrics: list[str] = option(
        factory=lambda: list(DEFAULT_COLUMNS), help="metric columns (missing ones show '-')"
    )
    out: str | None = option(None, "write <out>.md and <out>.csv")


def read_metrics(run: str | Path) -> dict[str, dict[str, float]]:
    """A run's metrics.json ({split: {metric: number}}), checked: a missing, damaged or foreign file is a
    one-line error naming it."""
    run = Path(run)
    path = run / "metrics.json"
    damaged = f"re-run 'llmrec evaluate {run}' to rewrite it"
    if not run.is_dir():
        raise LlmrecError(
            "no such run directory", file=run, hint="give directories written by 'llmrec train'"
        )
    if not path.exists():
        raise LlmrecError(
            "no metrics.json in this run directory", file=run, hint="train or evaluate it first"
        )
    try:
        data = read_json(path)
    except LlmrecError as e:
        raise LlmrecError(str(e), hint=damaged) from None
    if not isinstance(data, dict):
        raise LlmrecError("not llmrec metrics (expected {split: {metric: number}})", file=path, hint=damaged)
    for split, values in data.items():
        numbers = isinstance(values, dict) and all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in values.values()
        )
        if not numbers:
            raise LlmrecError(
                "not a mapping of metric names to numbers", file=path, field=split, hint=damaged
            )
    return data


def _model_name(run: Path) -> str:
    """The model a run trained (its config.json), '' when it does not say."""
    path = run / "config.json"
    if not path.exists():
        return ""
    try:
        saved = read_json(path)
    except LlmrecError as e:
        raise LlmrecError(str(e), hint="the run directory is damaged; train it again") from None
    return str(saved.get("model", "")) if isinstance(saved, dict) else ""


def collect(runs: Sequence[str | Path], split: str, metrics: Sequence[str]) -> pd.DataFrame:
    """One row per run: its name (model + run folder) and the requested metrics of ``split``."""
    rows = []
    for run in runs:
        data = read_metrics(run)
        if split not in data:
            hint = f"it has {sorted(data) or 'none'}"
            if split in ("valid", "test"):
                hint += f"; evaluate it: llmrec evaluate {run} --splits {split}"
            raise LlmrecError(f"no '{split}' metrics", file=Path(run) / "metrics.json", hint=hint)
        model = _model_name(Path(run))
        rows.append({"run": Path(run).name, "model": model, **{m: data[split].get(m) for m in metrics}})
    return pd.DataFrame(rows, columns=["run", "model", *metrics])


def to_markdown(df: pd.DataFrame, digits: int = 4) -> str:
    """A GitHub Markdown table (numbers right-aligned, missing values as '-')."""
    cols = list(df.columns)
    numeric = [c for c in cols if c not in ("run", "model")]
    lines = [
        "| " + " | ".join(cols) + " |",
        "|" + "|".join("---:" if c in numeric else "---" for c in cols) + "|",
    ]
    for _, row in df.iterrows():
        cells = [
            ("-" if pd.isna(row[c]) else f"{row[c]:.{digits}f}") if c in numeric else str(row[c])
            for c in cols
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def make_table(cfg: TableConfig) -> str:
    if not cfg.runs:
        raise LlmrecError("no run directories given", hint="llmrec table runs/a runs/b ...")
    df = collect(cfg.runs, cfg.split, cfg.metrics)
    md = to_markdown(df)
    if cfg.out:
        write_text_atomic(Path(cfg.out).with_suffix(".md"), md + "\n")
        with atomic_path(Path(cfg.out).with_suffix(".csv")) as tmp:
            df.to_csv(tmp, index=False)
    return md
