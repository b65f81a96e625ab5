"""``llmrec table``: metrics of several runs side by side, as Markdown and CSV."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from llmrec.config import option
from llmrec.errors import LlmrecError
from llmrec.utils.io import atomic_path, write_text_atomic

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


def collect(runs: Sequence[str | Path], split: str, metrics: Sequence[str]) -> pd.DataFrame:
    """One row per run: its name (model + run folder) and the requested metrics of ``split``."""
    rows = []
    for run in runs:
        path = Path(run) / "metrics.json"
        if not path.exists():
            raise LlmrecError(
                "no metrics.json in this run directory", file=run, hint="train or evaluate it first"
            )
        data = json.loads(path.read_text())
        if split not in data:
            raise LlmrecError(f"no '{split}' metrics", file=path, hint=f"available: {sorted(data)}")
        cfg_path = Path(run) / "config.json"
        model = json.loads(cfg_path.read_text()).get("model", "") if cfg_path.exists() else ""
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
