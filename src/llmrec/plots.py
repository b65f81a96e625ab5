"""PNG plots for results a person would rather look at than read (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llmrec.utils.io import atomic_path


def pyplot() -> Any:
    """matplotlib.pyplot on the headless Agg backend (imported on first use: the CLI starts faster)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path) -> None:
    """Lay out, write ``fig`` as a PNG through a temporary file (a reader never sees half a plot), close it."""
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120)
    pyplot().close(fig)


def plot_popularity_breakdown(
    breakdowns: dict[str, Sequence[dict[str, float]]], path: str | Path, metric: str = "hit@10"
) -> None:
    """Grouped bars: ``metric`` per item-popularity group (0 = least popular), one bar series per model."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    names = list(breakdowns)
    width = 0.8 / max(len(names), 1)
    for j, name in enumerate(names):
        rows = breakdowns[name]
        xs = [r["group"] + (j - (len(names) - 1) / 2) * width for r in rows]
        ax.bar(xs, [r.get(metric, 0.0) for r in rows], width=width, label=name)
    first = breakdowns[names[0]] if names else []
    ax.set_xticks([r["group"] for r in first])
    ax.set_xticklabels(
        [f"G{int(r['group']) + 1}\n{int(r['min_count'])}-{int(r['max_count'])}" for r in first]
    )
    ax.set_xlabel("target-item popularity group (training interactions per item)")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} by item popularity")
    ax.legend()
    save_figure(fig, path)


def plot_training_curve(history: Sequence[dict[str, float]], path: str | Path, title: str = "") -> None:
    """Training loss and the validation metric per epoch."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["loss"] for h in history], color="tab:blue", label="training loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss", color="tab:blue")
    # the validation metric that drove early stopping: valid_ndcg@10, or a model's own (e.g. valid_auc)
    metric = next(
        (k for h in history for k in h if k.startswith("valid_") and not k.startswith("valid_hit")), None
    )
    evals = [h for h in history if metric in h]
    if evals:
        ax2 = ax.twinx()
        ax2.plot([h["epoch"] for h in evals], [h[metric] for h in evals], "o-", color="tab:red", label=metric)
        ax2.set_ylabel(metric, color="tab:red")
    ax.set_title(title or "training")
    save_figure(fig, path)
