"""``llmrec bench-retrieval``: exact scoring against each item index kind on synthetic catalogs.

For each catalog size, a seeded catalog of clustered item vectors (``--clusters`` Gaussian centres with
unit variance, each item a centre plus unit-variance noise, float32, ``--dim`` dimensions) and queries drawn
the same way (``--spread``: their standard deviation around the centre, 1 by default as the centres'; the
larger, the less clustered and the harder for an index). Every index kind is built as ``llmrec index`` builds it (its search parameter tuned to
``--recall-target`` on half of ``--queries`` queries); recall@10 against exact search is measured on the
other half. Latency: ``--latency-queries`` queries one at a time (batch 1) and in batches of ``--batch``,
after a short warm-up, each call timed; p50/p99 per call. ``exact`` is the best exact search this code
has: one BLAS product per block of items and a partial sort (``numpy.argpartition``). BLAS and FAISS run
on ``--threads`` threads. ``speedup_p50`` is exact's p50 over the kind's, at the same catalog size and batch,
measured in the same process. ``memory_mb`` is the matrix (exact) or the serialised index (its vectors and
structures).

Writes ``OUT/results.json`` (a list of rows), ``results.md`` (the table) and ``latency.png``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmrec.config import ConfigError, option
from llmrec.retrieval.index import KINDS, build_index, faiss_module
from llmrec.retrieval.vectors import exact_top
from llmrec.utils.io import write_json_atomic, write_text_atomic
from llmrec.utils.markdown import markdown_table

K = 10
#: bytes per item the largest catalog may take, per kind, beyond the float32 vectors (HNSW's links)
_HNSW_LINK_BYTES = 2 * 32 * 4  # level 0: 2 M links of 4 bytes (M = 32)


@dataclass
class BenchRetrievalConfig:
    """Catalog sizes, vectors, index kinds, and how queries are timed."""

    items: list[int] = option(
        [100_000, 1_000_000], "catalog sizes (items) to benchmark", factory=lambda: [100_000, 1_000_000]
    )
    out: str = option("results/retrieval", "folder for results.json, results.md, latency.png")
    dim: int = option(64, "dimensions of the item and query vectors", ge=2)
    kinds: list[str] = option(
        ["flat", "ivf", "hnsw"], "index kinds to compare with exact", factory=lambda: list(KINDS)
    )
    clusters: int = option(1000, "Gaussian clusters the items and queries are drawn around", ge=1)
    spread: float = option(
        1.0,
        "standard deviation of the items around their centre (the centres': 1); larger: less clustered",
        gt=0,
    )
    recall_target: float = option(0.95, "recall@10 each kind's search parameter is tuned to", gt=0, le=1)
    queries: int = option(1000, "sample queries: half tune the index, half measure its recall", ge=2)
    latency_queries: int = option(200, "timed single queries per kind (batches: this many queries too)", ge=1)
    batch: int = option(64, "queries per call in the batched timing (1: single queries only)", ge=1)
    threads: int | None = option(None, "BLAS and FAISS threads (default: every core)", ge=1)
    max_memory_gb: float = option(8.0, "skip a catalog size whose vectors and indexes would need more", gt=0)
    seed: int = option(0, "seed of the catalogs and queries", ge=0)

    def __post_init__(self) -> None:
        if not self.items or any(n < 2 * K for n in self.items):
            raise ConfigError(f"items: give catalog sizes of at least {2 * K}, got {self.items}")
        if unknown := sorted(set(self.kinds) - set(KINDS)):
            raise ConfigError(f"kinds: unknown {unknown}; choose among {', '.join(KINDS)}")


def synthetic_catalog(
    n: int, dim: int, clusters: int, seed: int, queries: int, spread: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """(n, dim) clustered item vectors and (queries, dim) query vectors around the same centres
    (standard normal centres; each vector its centre plus normal noise of standard deviation ``spread``)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim), dtype=np.float32)
    items = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 1 << 20):  # float32 throughout, a million rows at a time
        rows = min(1 << 20, n - start)
        items[start : start + rows] = centres[rng.integers(0, clusters, rows)]
        items[start : start + rows] += spread * rng.standard_normal((rows, dim), dtype=np.float32)
    qs = centres[rng.integers(0, clusters, queries)]
    qs += spread * rng.standard_normal((queries, dim), dtype=np.float32)
    return items, qs


def needed_bytes(n: int, dim: int, kinds: list[str]) -> int:
    """Memory a catalog of ``n`` items takes here: its vectors, a copy per index kind, HNSW's links."""
    vectors = n * dim * 4
    return vectors * (1 + len(kinds)) + (n * _HNSW_LINK_BYTES if "hnsw" in kinds else 0)


@contextlib.contextmanager
def threads_limited(threads: int | None) -> Iterator[int]:
    """BLAS (through threadpoolctl, where installed) and FAISS on ``threads`` threads; yields the count."""
    faiss = faiss_module()
    count = threads or os.cpu_count() or 1
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(count)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # BLAS keeps its own setting (OPENBLAS_NUM_THREADS / OMP_NUM_THREADS)
        limit: Any = contextlib.nullcontext()
    else:
        limit = threadpool_limits(limits=count)
    try:
        with limit:
            yield count
    finally:
        faiss.omp_set_num_threads(before)


def _timed(call: Callable[[np.ndarray], Any], queries: np.ndarray, batch: int) -> tuple[float, float]:
    """(p50, p99) milliseconds of ``call`` on ``queries``, ``batch`` at a time (3 calls of warm-up)."""
    calls = [queries[s : s + batch] for s in range(0, len(queries), batch)]
    for c in calls[:3]:
        call(c)
    times = []
    for c in calls:
        start = time.perf_counter()
        call(c)
        times.append((time.perf_counter() - start) * 1000)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def run_bench_retrieval(cfg: BenchRetrievalConfig) -> dict[str, Any]:
    """Every catalog size x (exact + each kind) x (batch 1, ``batch``): results.json, .md and the plot."""
    out = Path(cfg.out)
    rows: list[dict[str, Any]] = []
    skipped: list[int] = []
    batches = sorted({1, cfg.batch})
    with threads_limited(cfg.threads) as threads:
        for n in cfg.items:
            if needed_bytes(n, cfg.dim, cfg.kinds) > cfg.max_memory_gb * 2**30:
                skipped.append(n)
                continue
            rows += _one_size(cfg, n, batches, threads)
            write_json_atomic(out / "results.json", rows)  # what is measured so far survives a kill
    result = {
        "rows": rows,
        "skipped": skipped,
        "dim": cfg.dim,
        "threads": threads,
        "clusters": cfg.clusters,
        "spread": cfg.spread,
        "cpu": platform.processor() or platform.machine(),
        "load_before": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "out": str(out),
    }
    write_json_atomic(out / "results.json", rows)
    write_text_atomic(out / "results.md", format_bench_retrieval(result) + "\n")
    if rows:
        _plot(rows, out / "latency.png")
    return result


def _one_size(cfg: BenchRetrievalConfig, n: int, batches: list[int], threads: int) -> list[dict[str, Any]]:
    items, queries = synthetic_catalog(n, cfg.dim, cfg.clusters, cfg.seed, cfg.queries, cfg.spread)
    timed = queries[: cfg.latency_queries]
    if len(timed) < cfg.latency_queries:  # more timed queries than samples: repeat them
        timed = np.resize(queries, (cfg.latency_queries, cfg.dim))
    base = {"items": n, "dim": cfg.dim, "threads": threads}
    exact_ms = {b: _timed(lambda q: exact_top(items, q, K), timed, b) for b in batches}
    rows = [
        {**base, "kind": "exact", "batch": b, "recall@10": 1.0, "p50_ms": p50, "p99_ms": p99, "build_s": 0.0}
        | {"memory_mb": items.nbytes / 2**20, "speedup_p50": 1.0, "params": {}}
        for b, (p50, p99) in exact_ms.items()
    ]
    for kind in cfg.kinds:
        index = build_index(items, kind, cfg.recall_target, queries, K, cfg.seed)
        memory = index.memory_bytes() / 2**20
        for b in batches:
            p50, p99 = _timed(functools.partial(index.search, k=K), timed, b)
            rows.append(
                {**base, "kind": kind, "batch": b, "recall@10": index.info["recall"], "p50_ms": p50}
                | {"p99_ms": p99, "build_s": index.info["build_s"], "memory_mb": memory}
                | {"speedup_p50": exact_ms[b][0] / p50, "params": index.info["params"]}
            )
    return rows


def format_bench_retrieval(result: dict[str, Any]) -> str:
    """The Markdown table: one row per (catalog size, kind, batch)."""
    head = (
        f"{result['dim']}-d clustered synthetic vectors ({result['clusters']} clusters, spread "
        f"{result['spread']:g}), top-10 by inner "
        f"product, {result['threads']} threads on {result['cpu']} (1-min load average before: "
        f"{result['load_before']})"
    )
    rows = [
        [f"{r['items']:,}", r["kind"], r["batch"], f"{r['recall@10']:.4f}", f"{r['p50_ms']:.3f}"]
        + [f"{r['p99_ms']:.3f}", f"{r['speedup_p50']:.1f}x", f"{r['build_s']:.1f}", f"{r['memory_mb']:.0f}"]
        + [", ".join(f"{k}={v}" for k, v in r["params"].items()) or "-"]
        for r in result["rows"]
    ]
    header = (
        "items | kind | batch | recall@10 | p50 ms | p99 ms | speed-up p50 | build s | memory MB | params"
    )
    lines = [head, "", *markdown_table(header, "rllrrrrrrl", rows)]
    if result["skipped"]:
        lines.append(
            f"\nskipped (more memory than allowed): {', '.join(f'{n:,}' for n in result['skipped'])}"
        )
    return "\n".join(lines)


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    """p50 latency per call against catalog size, one line per (kind, batch), log-log."""
    from llmrec.plots import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for kind in dict.fromkeys(r["kind"] for r in rows):
        for batch in sorted({r["batch"] for r in rows}):
            pts = sorted((r["items"], r["p50_ms"]) for r in rows if r["kind"] == kind and r["batch"] == batch)
            if pts:
                style = "-o" if batch == 1 else "--s"
                ax.plot(*zip(*pts), style, label=f"{kind}, batch {batch}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("catalog size (items)")
    ax.set_ylabel("p50 latency per call (ms)")
    ax.set_title("top-10 retrieval: exact vs item index kinds")
    ax.legend(fontsize=8)
    save_figure(fig, path)
