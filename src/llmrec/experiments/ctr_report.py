"""The tables and plots of ``llmrec ctr-efficiency`` (Fig. 5) and ``llmrec history-sweep`` (Fig. 4), from the
result dicts :mod:`llmrec.experiments.ctr` measures and writes (ctr_efficiency.json, history_sweep.json)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from llmrec.utils.markdown import markdown_table

VARIANTS = ("uhem", "inline")  # HistLLM, w/o UHEM
# the paper's Fig. 5 (Vicuna-7B, one A100): step-2 training minutes and test inference seconds
PAPER_FIG5 = {
    "movie @5": {"train_min": (118, 137), "inference_s": (107, 123)},
    "netflix @10": {"train_min": (153, 280), "inference_s": (138, 299)},
}


# --------------------------------------------------------------------------- Fig. 5: with vs without UHEM
def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1%}"


def format_trained(r: dict[str, Any]) -> list[str]:
    """The paper's Fig. 5 quantities as a table, the time UHEM saves, and the paper's own figures."""
    if not r["trained"]:
        return []
    p0 = r["trained"][0]
    lines = [
        f"Step-2 training: {p0['train_steps']} steps of {p0['batch_size']} examples per variant on the "
        "same seeded training rows (LoRA frozen; prompt building, then llmrec train's own step: autocast, "
        "forward, backward, clipping, AdamW, schedule); test inference "
        f"of the trained models on the same {p0['test_rows']} seeded test rows; the variants alternate step by "
        "step and batch by batch in one process (warm-up excluded).",
        "",
    ]
    rows = []
    for p in r["trained"]:
        v = p["variants"]
        same = all(
            v["uhem"][k] == v["inline"][k]
            for k in ("train_rows_sha256", "test_rows_sha256", "train_steps_run", "test_rows_scored")
        )
        for history, label in (("uhem", "HistLLM (UHEM)"), ("inline", "w/o UHEM (inline)")):
            q = v[history]
            a = "n/a" if q["test_auc"] is None else f"{q['test_auc']:.4f}"
            rows.append(
                [p["data"], p["history_items"], label, f"{q['test_prompt_tokens']:.0f}"]
                + [f"{q['train_seconds']:.2f}", f"{q['test_seconds']:.2f}", a, "yes" if same else "NO"]
            )
    header = (
        "data | history items | variant | test prompt tokens | step-2 training s | test inference s "
        "| test AUC | same train/test rows"
    )
    lines += markdown_table(header, "-r-rrrr-", rows)
    lines.append("")
    for p in r["trained"]:
        lines.append(
            f"Saved by UHEM, {p['data']} @{p['history_items']}: step-2 training time "
            f"{_pct(p['train_time_saved'])}, test inference time {_pct(p['test_time_saved'])}"
        )
    paper = "; ".join(
        f"{k}: training {1 - v['train_min'][0] / v['train_min'][1]:.1%} ({v['train_min'][0]} vs "
        f"{v['train_min'][1]} min), inference {1 - v['inference_s'][0] / v['inference_s'][1]:.1%} "
        f"({v['inference_s'][0]} vs {v['inference_s'][1]} s)"
        for k, v in PAPER_FIG5.items()
    )
    lines.append(f"Paper, Fig. 5 (Vicuna-7B, full training and test sets, one A100): {paper}")
    if any(r.get("zero_image_stand_in", {}).values()):
        lines.append("(no image feature: image tokens were fed zero vectors; a token costs the same)")
    return lines


def format_ctr_efficiency(r: dict[str, Any]) -> str:
    lines = format_trained(r)
    if r["points"]:  # the throughput view
        lines += [
            *([""] if lines else []),
            "Throughput of untrained models (items' texts uncut):",
            "",
        ]
        rows = [
            [p.get("data", ""), p["history_items"], "with" if p["uhem"] else "without"]
            + [f"{p['prompt_tokens']:.0f}", f"{p['inference_s_per_100']:.2f}"]
            + [f"{p.get('train_s_per_100', float('nan')):.2f}"]
            for p in r["points"]
        ]
        header = (
            "data | history items | UHEM | prompt tokens | inference s/100 examples "
            "| step-2 training s/100 examples"
        )
        lines += markdown_table(header, "-r-rrr", rows)
        if r["ratios"]:
            lines += ["", "Saved by UHEM: " + ", ".join(f"{k} = {v:.0%}" for k, v in r["ratios"].items())]
        if any(r.get("zero_image_stand_in", {}).values()) and not r["trained"]:
            lines.append("(no image feature: image tokens were fed zero vectors; a token costs the same)")
    if r.get("ranking"):
        rk = r["ranking"]
        lines += [
            *([""] if lines else []),
            f"Ranking with {rk['model']} ({rk['run'] or 'untrained'}), {rk['items']} items: shared prompt prefix "
            f"(chunks of {rk['rank_batch_size']}) vs one prompt per pair (batches of {rk['score_batch_size']})",
            "",
        ]
        rows = []
        for task, label in (("top10_catalog", "top-10 of the catalog"), ("rerank", "re-rank")):
            if task not in rk:
                continue
            p = rk[task]
            rows.append(
                [label, p["users"], p["candidates"], f"{p['s_per_user_pairwise']:.2f}"]
                + [f"{p['s_per_user_shared']:.2f}", f"{p['speedup']:.1f}x", f"{p['max_abs_logit_diff']:.1e}"]
                + ["yes" if p["same_top10"] else "no"]
            )
        header = "task | users | candidates | s/user pairwise | s/user shared | speed-up | max logit diff | same top-10"
        lines += markdown_table(header, "-rrrrrr-", rows)
    return "\n".join(lines)


def plot_trained_efficiency(r: dict[str, Any], path: Path) -> None:
    """Fig. 5's two panels: step-2 training time and test inference time, per dataset and length."""
    from llmrec.plots import pyplot, save_figure

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    points = r["trained"]
    x = np.arange(len(points))
    for ax, (key, saved, label) in zip(
        axes,
        (
            ("train_seconds", "train_time_saved", "step-2 training s"),
            ("test_seconds", "test_time_saved", "test inference s"),
        ),
    ):
        for k, history in enumerate(VARIANTS):
            vals = [p["variants"][history][key] for p in points]
            ax.bar(x + (k - 0.5) * 0.38, vals, 0.38, label="HistLLM" if history == "uhem" else "w/o UHEM")
        for i, p in enumerate(points):
            top = max(p["variants"][h][key] for h in VARIANTS)
            ax.annotate(f"-{_pct(p[saved])}", (x[i], top), ha="center", va="bottom", fontsize=8)
        ax.set_xticks(x, [f"{p['data']}\n{p['history_items']} items" for p in points])
        ax.set_title(label)
    axes[0].legend()
    save_figure(fig, path)


def plot_ctr_efficiency(r: dict[str, Any], path: Path) -> None:
    """The throughput view: prompt tokens and per-100-example times of untrained models."""
    from llmrec.plots import pyplot, save_figure

    plt = pyplot()
    keys = [("prompt_tokens", "prompt tokens"), ("inference_s_per_100", "inference s / 100 examples")]
    if any("train_s_per_100" in p for p in r["points"]):
        keys.append(("train_s_per_100", "step-2 training s / 100 examples"))
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.6))
    groups = sorted({(p.get("data", ""), p["history_items"]) for p in r["points"]})
    x = np.arange(len(groups))
    for ax, (key, label) in zip(np.atleast_1d(axes), keys):
        for k, uhem in enumerate((True, False)):
            by = {(p.get("data", ""), p["history_items"]): p for p in r["points"] if p["uhem"] == uhem}
            vals = [by[g].get(key, np.nan) if g in by else np.nan for g in groups]
            ax.bar(x + (k - 0.5) * 0.38, vals, 0.38, label="HistLLM" if uhem else "w/o UHEM")
        ax.set_xticks(
            x, [f"{d}\n{L} items" if len({g[0] for g in groups}) > 1 else f"{L} items" for d, L in groups]
        )
        ax.set_title(label)
    np.atleast_1d(axes)[0].legend()
    save_figure(fig, path)


# --------------------------------------------------------------------------- Fig. 4: number of history items
def format_history_sweep(r: dict[str, Any]) -> str:
    lengths = sorted({p["history_items"] for p in r["points"]})
    lines = [
        "| model | metric | " + " | ".join(str(L) for L in lengths) + " |",
        "|---|---|" + "---:|" * len(lengths),
    ]
    for name in dict.fromkeys(p["model"] for p in r["points"]):
        for metric in ("auc", "uauc"):
            vals = {p["history_items"]: _mean_std(p, metric) for p in r["points"] if p["model"] == name}
            lines.append(f"| {name} | {metric} | " + " | ".join(vals.get(L, "nan") for L in lengths) + " |")
    return "\n".join(lines)


def _mean_std(point: dict[str, Any], metric: str) -> str:
    """``0.6123`` for one seed, ``0.6123 ± 0.0101`` over several."""
    std = point.get(f"{metric}_std")
    return f"{point[metric]:.4f}" if std is None else f"{point[metric]:.4f} ± {std:.4f}"


def plot_history_sweep(r: dict[str, Any], path: Path) -> None:
    from llmrec.plots import pyplot, save_figure

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, metric in zip(axes, ("auc", "uauc")):
        for name in dict.fromkeys(p["model"] for p in r["points"]):
            pts = sorted(
                (p["history_items"], p[metric], p.get(f"{metric}_std", 0.0))
                for p in r["points"]
                if p["model"] == name
            )
            ax.errorbar(
                [p[0] for p in pts],
                [p[1] for p in pts],
                yerr=[p[2] for p in pts],
                fmt="o-",
                capsize=3,
                label=name,
            )
        ax.set_xlabel("history items in the prompt")
        ax.set_ylabel(f"test {metric.upper()}")
        ax.legend()
    save_figure(fig, path)
