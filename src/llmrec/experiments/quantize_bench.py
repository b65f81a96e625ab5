"""``llmrec experiments quant-bench``: an LLM run's CPU inference exact (float32) and cheaper (``--quantize
int8``, ``--dtype bfloat16``), side by side in one run: seconds per user and the agreement with float32.

Every variant of a run is loaded once, then the same seeded users of the test split are scored by each in
turn, a few users at a time (so a busy neighbour on the machine slows every variant alike): each user's
frozen candidates (the target and its sampled negatives, as the evaluation ranks them). Agreement with
float32 per user: the overlap of the top-k (``|top-k ∩ top-k of float32| / k``) and Kendall's tau over all
the candidates; hit@k says what each variant's ranking is worth. A CTR model (HistLLM) also scores the
seeded CTR examples of the split: the AUC of each variant next to float32's, and Kendall's tau of the
example scores against float32's. The CPU's bf16 and int8 instructions are recorded with the figures
(float32 is the faster of the two floating formats on a CPU without bf16 matrix units).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmrec.config import ConfigError, check_ranges, option
from llmrec.utils.io import write_json_atomic, write_text_atomic
from llmrec.utils.markdown import markdown_table

log = logging.getLogger(__name__)

#: a variant's name -> how it is loaded (dtype, quantize)
VARIANTS: dict[str, tuple[str, str]] = {
    "float32": ("float32", "none"),
    "int8": ("float32", "int8"),
    "bfloat16": ("bfloat16", "none"),
}
#: /proc/cpuinfo flags that decide what bf16 and int8 cost on a CPU
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


@dataclass
class QuantBenchConfig:
    """Which runs, which variants, how many users and CTR examples, where the results go."""

    runs: list[str] = option(factory=list, help="run directories of trained LLM models")
    variants: list[str] = option(
        factory=lambda: list(VARIANTS), help=f"what to compare with float32: {', '.join(VARIANTS)}"
    )
    users: int = option(20, "seeded users of the split whose candidates are ranked", ge=1)
    ctr_examples: int = option(100, "seeded CTR examples scored (models that do CTR)", ge=1)
    chunk: int = option(2, "users (CTR examples x 8) per turn of a variant", ge=1)
    k: int = option(10, "the top-k whose overlap with float32's is reported", ge=1)
    split: str = option("test", "the split whose users and examples are scored")
    threads: int | None = option(None, "torch CPU threads (default: torch's choice)", ge=1)
    data: str | None = option(None, "the runs' dataset moved: its new folder")
    seed: int = option(0, "seed of the users and examples")
    out: str = option("runs/quant-bench", "output folder")

    def __post_init__(self) -> None:
        check_ranges(self)
        if not self.runs:
            raise ConfigError("runs: give at least one run directory of a trained LLM model")
        if unknown := [v for v in self.variants if v not in VARIANTS]:
            raise ConfigError(f"variants: {unknown} not among {list(VARIANTS)}")
        if self.split not in ("valid", "test"):
            raise ConfigError(f"split must be valid or test, got {self.split!r}")


def cpu_flags() -> dict[str, Any]:
    """This CPU's model name and which of :data:`CPU_FLAGS` it has (Linux; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = set(fields.get("flags", "").split())
    return {"model": fields.get("model name", "?"), **{f: f in flags for f in CPU_FLAGS}}


def agreement(scores: np.ndarray, reference: np.ndarray, k: int) -> dict[str, float]:
    """Mean per-row top-``k`` overlap and Kendall's tau of (U, C) ``scores`` against ``reference``."""
    from scipy.stats import kendalltau

    k = min(k, scores.shape[1])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    ref_top = np.argsort(-reference, axis=1, kind="stable")[:, :k]
    overlap = [len(set(a) & set(b)) / k for a, b in zip(top, ref_top, strict=True)]
    taus = [kendalltau(a, b).statistic for a, b in zip(scores, reference, strict=True)]
    return {f"top{k}_overlap": float(np.mean(overlap)), "kendall_tau": float(np.nanmean(taus))}


def _timed(fn: Any, *args: Any) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    out = np.asarray(fn(*args), dtype=np.float64)
    return out, time.perf_counter() - start


def _load_variants(run: str, cfg: QuantBenchConfig) -> tuple[dict[str, Any], Any]:
    """Each variant of ``run`` loaded on the CPU, and the run's dataset."""
    from llmrec.models.base import load_model
    from llmrec.pipeline import run_dataset

    ds = run_dataset(run, cfg.data)
    names = ["float32", *[v for v in cfg.variants if v != "float32"]]
    models = {}
    for name in names:
        dtype, quantize = VARIANTS[name]
        models[name] = load_model(run, device="cpu", dtype=dtype, data=ds, quantize=quantize)
        models[name].eval()
    return models, ds


def _bench_ranking(models: dict[str, Any], ds: Any, cfg: QuantBenchConfig) -> dict[str, dict[str, float]]:
    """Seconds per user, hit@k and agreement with float32 over each user's frozen candidates."""
    from llmrec.eval.evaluator import seeded_rows
    from llmrec.eval.metrics import ranking_metrics, target_ranks

    data = ds.split(cfg.split)
    rows = seeded_rows(len(data.users), cfg.users, cfg.seed)
    users, hist = data.users[rows], [data.histories[r] for r in rows]
    cands = np.concatenate([data.targets[rows][:, None], ds.negatives(cfg.split)[rows]], axis=1)
    for model in models.values():  # warm-up: first calls build caches (item tables, shared prefixes)
        model.score(users[:1], hist[:1], cands[:1])
    scores = {name: [] for name in models}
    seconds = dict.fromkeys(models, 0.0)
    for s in range(0, len(rows), cfg.chunk):
        sl = slice(s, s + cfg.chunk)
        for name, model in models.items():  # the variants take turns on the same users
            out, took = _timed(model.score, users[sl], hist[sl], cands[sl])
            scores[name].append(out)
            seconds[name] += took
    ref = np.concatenate(scores["float32"])
    result = {}
    for name in models:
        got = np.concatenate(scores[name])
        hit = ranking_metrics(target_ranks(got), [cfg.k])[f"hit@{cfg.k}"]
        result[name] = {
            "users": len(rows),
            "candidates": int(cands.shape[1]),
            "seconds_per_user": seconds[name] / len(rows),
            "speedup": seconds["float32"] / seconds[name],
            f"hit@{cfg.k}": hit,
            **agreement(got, ref, cfg.k),
        }
    return result


def _bench_ctr(models: dict[str, Any], ds: Any, cfg: QuantBenchConfig) -> dict[str, dict[str, float]]:
    """Seconds per example, AUC and Kendall's tau against float32 on the seeded CTR examples."""
    from scipy.stats import kendalltau

    from llmrec.eval.evaluator import seeded_rows
    from llmrec.eval.metrics import auc

    df = ds.ctr(cfg.split)
    df = df.iloc[seeded_rows(len(df), cfg.ctr_examples, cfg.seed)].reset_index(drop=True)
    hist = [np.asarray(h, dtype=np.int64) for h in df["history"]]
    users, targets = df["user_idx"].to_numpy(), df["target"].to_numpy().astype(np.int64)
    for model in models.values():
        model.score_pairs(users[:1], hist[:1], targets[:1])
    scores = {name: [] for name in models}
    seconds = dict.fromkeys(models, 0.0)
    step = cfg.chunk * 8
    for s in range(0, len(df), step):
        sl = slice(s, s + step)
        for name, model in models.items():
            out, took = _timed(model.score_pairs, users[sl], hist[sl], targets[sl])
            scores[name].append(out)
            seconds[name] += took
    labels = df["label"].to_numpy()
    ref = np.concatenate(scores["float32"])
    return {
        name: {
            "examples": len(df),
            "seconds_per_example": seconds[name] / len(df),
            "speedup": seconds["float32"] / seconds[name],
            "auc": auc(labels, np.concatenate(scores[name])),
            "kendall_tau": float(kendalltau(np.concatenate(scores[name]), ref).statistic),
        }
        for name in models
    }


def run_quant_bench(cfg: QuantBenchConfig) -> dict[str, Any]:
    """Measure every run's variants side by side; writes quant_bench.json and quant_bench.md to ``out``."""
    import torch

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    result: dict[str, Any] = {
        "cpu": cpu_flags(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "split": cfg.split,
        "k": cfg.k,
        "runs": {},
    }
    for run in cfg.runs:
        models, ds = _load_variants(run, cfg)
        first = next(iter(models.values()))
        entry: dict[str, Any] = {"model": first.name}
        with torch.inference_mode():
            entry["ranking"] = _bench_ranking(models, ds, cfg)
            if "ctr" in first.tasks:
                entry["ctr"] = _bench_ctr(models, ds, cfg)
        result["runs"][str(run)] = entry
        del models
        _write(result, Path(cfg.out))  # after each run: a long bench shows its first figures early
        log.info("quant-bench %s done:\n%s", run, format_quant_bench(result))
    return result


def _write(result: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    result["out"] = str(out)
    write_json_atomic(out / "quant_bench.json", result)
    write_text_atomic(out / "quant_bench.md", format_quant_bench(result) + "\n")


def _cpu_line(result: dict[str, Any]) -> str:
    cpu = result.get("cpu", {})
    has = [f for f in CPU_FLAGS if cpu.get(f)]
    lacks = [f for f in CPU_FLAGS if f in cpu and not cpu[f]]
    return (
        f"CPU: {cpu.get('model', '?')}, {result['threads']} torch threads, torch {result['torch']}; "
        f"has {', '.join(has) or 'none of ' + ', '.join(CPU_FLAGS)}; lacks {', '.join(lacks) or 'none'}"
    )


def format_quant_bench(result: dict[str, Any]) -> str:
    """The bench's figures as Markdown tables (ranking, then CTR where measured)."""
    k = result["k"]
    ranking, ctr = [], []
    for run, entry in result["runs"].items():
        for name, r in entry["ranking"].items():
            ranking.append(
                [
                    f"{entry['model']} ({Path(run).name})",
                    name,
                    r["users"],
                    f"{r['seconds_per_user']:.3f}",
                    f"{r['speedup']:.2f}x",
                    f"{r[f'top{k}_overlap']:.3f}",
                    f"{r['kendall_tau']:.3f}",
                    f"{r[f'hit@{k}']:.3f}",
                ]
            )
        for name, c in entry.get("ctr", {}).items():
            ctr.append(
                [
                    f"{entry['model']} ({Path(run).name})",
                    name,
                    c["examples"],
                    f"{c['seconds_per_example']:.4f}",
                    f"{c['speedup']:.2f}x",
                    f"{c['auc']:.4f}",
                    f"{c['kendall_tau']:.3f}",
                ]
            )
    candidates = next(iter(next(iter(result["runs"].values()))["ranking"].values()))["candidates"]
    lines = [
        _cpu_line(result),
        "",
        f"Ranking the {candidates} frozen candidates of each {result['split']} user (target + sampled negatives); "
        "agreement with float32:",
        "",
        *markdown_table(
            f"run | variant | users | s/user | speed-up | top-{k} overlap | Kendall tau | hit@{k}",
            "llrrrrrr",
            ranking,
        ),
    ]
    if ctr:
        lines += [
            "",
            f"CTR examples of the {result['split']} split; Kendall tau of the scores against float32's:",
            "",
            *markdown_table(
                "run | variant | examples | s/example | speed-up | AUC | Kendall tau", "llrrrrr", ctr
            ),
        ]
    return "\n".join(lines)


__all__ = [
    "CPU_FLAGS",
    "VARIANTS",
    "QuantBenchConfig",
    "agreement",
    "cpu_flags",
    "format_quant_bench",
    "run_quant_bench",
]
