"""``llmrec table``: metrics of several runs side by side, as Markdown and CSV.

A multi-seed run (``llmrec train --seeds``: ``<out>/seed-<s>/`` run directories) is one row: the mean +/- the
sample standard deviation over its seeds. With two or more of them, each is compared with the first on the
seeds they share by a paired t-test (``scipy.stats.ttest_rel``) on ``--compare`` (default: the first metric
shown): the mean difference and its two-sided p-value. A ``--compare`` that would compare nothing (a metric
no run has, one not shown, runs that are not multi-seed) is refused, naming the metrics there are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from llmrec.config import option
from llmrec.errors import LlmrecError
from llmrec.utils.io import atomic_path, read_json, write_text_atomic
from llmrec.utils.markdown import markdown_table

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
    compare: str | None = option(
        None,
        "multi-seed runs: the metric of the paired t-test against the first one (default: the first shown)",
    )
    vs_paper: bool = option(
        False, "reproduced vs the paper's reported numbers, with the difference (runs of 'llmrec reproduce')"
    )
    paper: str | None = option(
        None, "with --vs-paper: the shipped setting the runs reproduce (default: what each run recorded)"
    )


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


def seed_runs(run: str | Path) -> dict[int, Path] | None:
    """The run directories of a multi-seed run (``seed-<s>`` folders with metrics.json), by seed; None for
    a single run (a folder with metrics.json of its own, or nothing llmrec recognises)."""
    run = Path(run)
    if (run / "metrics.json").exists() or not run.is_dir():
        return None
    found = {}
    for sub in run.glob("seed-*"):
        seed = sub.name.removeprefix("seed-")
        if seed.isdigit() and (sub / "metrics.json").exists():
            found[int(seed)] = sub
    return dict(sorted(found.items())) or None


def _split_metrics(run: Path, split: str) -> dict[str, float]:
    data = read_metrics(run)
    if split not in data:
        hint = f"it has {sorted(data) or 'none'}"
        if split in ("valid", "test"):
            hint += f"; evaluate it: llmrec evaluate {run} --splits {split}"
        raise LlmrecError(f"no '{split}' metrics", file=run / "metrics.json", hint=hint)
    return data[split]


def collect(runs: Sequence[str | Path], split: str, metrics: Sequence[str]) -> pd.DataFrame:
    """One row per run: its name (model + run folder) and the requested metrics of ``split``; a multi-seed
    run's row holds the means, ``<metric>_std`` the standard deviations and ``seeds`` their count."""
    rows = []
    for run in runs:
        seeds = seed_runs(run)
        if seeds is None:
            values = _split_metrics(Path(run), split)
            row = {"run": Path(run).name, "model": _model_name(Path(run)), "seeds": 1}
            rows.append({**row, **{m: values.get(m) for m in metrics}})
            continue
        per_seed = pd.DataFrame([_split_metrics(path, split) for path in seeds.values()], index=list(seeds))
        row = {"run": Path(run).name, "model": _model_name(next(iter(seeds.values()))), "seeds": len(seeds)}
        for m in metrics:
            col = per_seed[m] if m in per_seed else pd.Series(dtype=float)
            row[m] = col.mean() if col.notna().any() else None
            row[f"{m}_std"] = col.std(ddof=1) if col.notna().sum() > 1 else None
        rows.append(row)
    columns = ["run", "model", "seeds", *[c for m in metrics for c in (m, f"{m}_std")]]
    return pd.DataFrame(rows, columns=columns)


def paired(runs: Sequence[str | Path], split: str, metric: str) -> list[dict[str, float | int | None]]:
    """For each multi-seed run after the first: mean difference to the first on ``metric`` over the seeds
    both have, and the two-sided p-value of a paired t-test (None with fewer than 2 shared seeds)."""
    from scipy.stats import ttest_rel

    groups = [seed_runs(r) for r in runs]
    base = groups[0]
    out: list[dict[str, float | int | None]] = [{"diff": None, "p": None, "pairs": 0}]
    for group in groups[1:]:
        if base is None or group is None:
            out.append({"diff": None, "p": None, "pairs": 0})
            continue
        shared = sorted(set(base) & set(group))
        a = [_split_metrics(base[s], split).get(metric) for s in shared]
        b = [_split_metrics(group[s], split).get(metric) for s in shared]
        pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None]
        diff = sum(y - x for x, y in pairs) / len(pairs) if pairs else None
        p = float(ttest_rel([y for _, y in pairs], [x for x, _ in pairs]).pvalue) if len(pairs) > 1 else None
        out.append({"diff": diff, "p": None if p != p else p, "pairs": len(pairs)})  # NaN (no variance): None
    return out


def _cell(value: float | None, std: float | None, digits: int) -> str:
    if value is None or pd.isna(value):
        return "-"
    return f"{value:.{digits}f}" + ("" if std is None or pd.isna(std) else f" ± {std:.{digits}f}")


def to_markdown(df: pd.DataFrame, metrics: Sequence[str], digits: int = 4) -> str:
    """A GitHub Markdown table (numbers right-aligned, missing values as '-', multi-seed rows mean ± std)."""
    multi = bool((df["seeds"] > 1).any()) if len(df) else False
    extra = [c for c in df.columns if c.startswith(("Δ ", "p "))]
    cols = ["run", "model", *(["seeds"] if multi else []), *metrics, *extra]
    rows = []
    for _, row in df.iterrows():
        cells = []
        for c in cols:
            if c in ("run", "model"):
                cells.append(str(row[c]))
            elif c == "seeds":
                cells.append(str(int(row[c])))
            elif c in metrics:
                cells.append(_cell(row[c], row.get(f"{c}_std"), digits))
            elif c.startswith("p "):
                cells.append("-" if pd.isna(row[c]) else f"{row[c]:.3g}")
            else:
                cells.append(_cell(row[c], None, digits))
        rows.append(cells)
    align = "".join("-" if c in ("run", "model") else "r" for c in cols)
    return "\n".join(markdown_table(cols, align, rows))


def metric_names(runs: Sequence[str | Path], split: str) -> list[str]:
    """Every metric of ``split`` that some run (or some seed of a multi-seed run) has."""
    names: set[str] = set()
    for run in runs:
        for path in (seed_runs(run) or {0: Path(run)}).values():
            names.update(_split_metrics(path, split))
    return sorted(names)


def check_compare(cfg: TableConfig, groups: list[bool]) -> None:
    """Refuse a ``--compare`` that would do nothing: a metric no run has, one not shown, or runs that cannot
    be compared (the paired t-test needs two or more multi-seed runs, the first of them one)."""
    metric = cfg.compare
    have = metric_names(cfg.runs, cfg.split)
    if metric not in have:
        raise LlmrecError(
            f"--compare {metric!r}: no run has this '{cfg.split}' metric",
            hint=f"choose one of: {', '.join(have) or 'none (the runs have no metrics)'}",
        )
    if metric not in cfg.metrics:
        raise LlmrecError(
            f"--compare {metric!r} is not among the metrics shown", hint=f"choose from {cfg.metrics}"
        )
    if sum(groups) < 2 or not groups[0]:
        why = "the first run given is a single run" if not groups[0] else "no other run given is multi-seed"
        raise LlmrecError(
            f"--compare {metric!r}: the paired t-test compares multi-seed runs with the first one, and {why}",
            hint="drop --compare, or give run directories written by 'llmrec train --seeds', the baseline first",
        )


def paper_record(run: Path, paper: str | None = None) -> dict:
    """Which paper setting, dataset and row a run reproduces, and the paper's numbers for it: the
    ``reproduce.json`` that ``llmrec reproduce`` wrote, or (``paper``) that setting's row named like the run
    folder, on the dataset named like its parent folder."""
    if paper is None:
        path = run / "reproduce.json"
        if not path.exists():
            raise LlmrecError(
                "the run does not say which paper setting it reproduces (no reproduce.json)",
                file=run,
                hint="name the setting: --paper NAME ('llmrec reproduce --list')",
            )
        return read_json(path)
    from llmrec.experiments.reproduce import load_setting

    setting = load_setting(paper)
    dataset = run.parent.name if run.parent.name in setting.datasets else next(iter(setting.datasets))
    return {
        "setting": paper,
        "dataset": dataset,
        "row": run.name,
        "metrics": setting.metrics,
        "reported": (setting.reported.get(dataset) or {}).get(run.name),
    }


def vs_paper_table(cfg: TableConfig) -> str:
    """One line per run and metric: reproduced, reported, and reproduced minus reported."""
    rows = []
    for run in map(Path, cfg.runs):
        record = paper_record(run, cfg.paper)
        values = _split_metrics(run, cfg.split)
        reported = record.get("reported") or {}
        for m in record.get("metrics") or sorted(reported):
            ours, theirs = values.get(m), reported.get(m)
            diff = None if ours is None or theirs is None else ours - theirs
            rows.append(
                [
                    f"{record['setting']} {record['dataset']}",
                    record["row"],
                    m,
                    _cell(ours, None, 4),
                    _cell(theirs, None, 4),
                    "-" if diff is None else f"{diff:+.4f}",
                ]
            )
    cols = ["setting", "row", "metric", "reproduced", "reported", "difference"]
    return "\n".join(markdown_table(cols, "---rrr", rows))


def make_table(cfg: TableConfig) -> str:
    """The table of ``cfg.runs`` as Markdown (also written to ``cfg.out``); ``cfg.vs_paper``: against the
    paper's numbers."""
    if not cfg.runs:
        raise LlmrecError("no run directories given", hint="llmrec table runs/a runs/b ...")
    if cfg.vs_paper or cfg.paper:
        md = vs_paper_table(cfg)
        if cfg.out:
            write_text_atomic(Path(cfg.out).with_suffix(".md"), md + "\n")
        return md
    df = collect(cfg.runs, cfg.split, cfg.metrics)
    groups = [seed_runs(r) is not None for r in cfg.runs]
    if cfg.compare is not None:
        check_compare(cfg, groups)
    if sum(groups) >= 2 and groups[0]:
        metric = cfg.compare or next((m for m in cfg.metrics if df[m].notna().any()), cfg.metrics[0])
        tests = paired(cfg.runs, cfg.split, metric)
        df[f"Δ {metric} vs first"] = [t["diff"] for t in tests]
        df[f"p (paired t, {metric})"] = [t["p"] for t in tests]
    md = to_markdown(df, cfg.metrics)
    if cfg.out:
        write_text_atomic(Path(cfg.out).with_suffix(".md"), md + "\n")
        with atomic_path(Path(cfg.out).with_suffix(".csv")) as tmp:
            df.to_csv(tmp, index=False)
    return md
