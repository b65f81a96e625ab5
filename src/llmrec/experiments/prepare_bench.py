"""``llmrec experiments bench-prepare``: seconds and peak memory of ``llmrec prepare amazon2023`` at
Amazon scale.

A seeded pair of files shaped like Amazon Reviews 2023 (``Bench.jsonl.gz``, ``meta_Bench.jsonl.gz``) with
Zipf-distributed users and items is generated once per (reviews, seed) into ``<out>/data/`` and reused on
later runs. Each preparation path (:data:`PATHS`: ``prepare --engine pandas`` and ``--engine duckdb``) then runs
in a child process, one after the other on the same file, so its peak RSS is that process's alone (``os.wait4``'s
rusage of that very child); the datasets' content identities say whether the paths wrote the same files.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmrec.config import option
from llmrec.errors import ConfigError, LlmrecError
from llmrec.utils.io import atomic_path, read_json, write_json_atomic, write_text_atomic
from llmrec.utils.markdown import markdown_table

log = logging.getLogger(__name__)

CATEGORY = "Bench"
CHUNK = 100_000  # rows generated and written at a time: memory stays flat whatever the file's size
# Users and items per review, and the power-law exponents over their ranks: a 5-core filter then keeps
# about 44-46% of the interactions from 200k to 1M reviews (fewer at a few thousand reviews).
USERS_PER_REVIEW, ITEMS_PER_REVIEW = 1 / 4, 1 / 10
USER_EXPONENT, ITEM_EXPONENT = 0.8, 0.8
DUPLICATE_SHARE = 0.01  # reviews that repeat the previous review's (user, item), as real dumps do
T0_MS, T1_MS = 1_262_304_000_000, 1_694_000_000_000  # 2010-01-01 .. 2023-09: the 2023 release's span

_REVIEW_VOCAB = (
    "good great bad nice quality price product works well easy use fast shipping love recommend small "
    "large size color fit perfect cheap sturdy broke after week month daily kids gift arrived box "
    "battery light heavy soft hard clean smell taste sound picture screen cable charger case cover "
    "bottle bag shoe shirt book game toy tool kitchen garden phone camera would buy again not worth "
    "money expected better than described exactly as pictured returned replacement seller item feels "
    "looks really very pretty quite bit too little much more less first time second still working fine"
)
WORDS = tuple(_REVIEW_VOCAB.split())
_TITLE_VOCAB = (
    "Premium Classic Portable Wireless Compact Deluxe Organic Stainless Steel Pro Mini Ultra "
    "Set Kit Pack Holder Lamp Brush Mug Speaker Cable Backpack Blender Jacket Puzzle Notebook"
)
TITLE_WORDS = tuple(_TITLE_VOCAB.split())
CATEGORY_TREE = ("Home & Kitchen", "Electronics", "Toys & Games", "Beauty", "Sports & Outdoors", "Books")
SUBCATEGORIES = ("Accessories", "Storage", "Tools", "Parts", "Gifts", "Essentials", "Kits", "Supplies")
STORES = tuple(f"Store{i:03d}" for i in range(200))
DETAIL_KEYS = ("Brand", "Material", "Color", "Item Weight", "Product Dimensions")

try:  # a faster encoder where installed (files written with it may differ in bytes from json's)
    import orjson

    def _dumps(obj: Any) -> bytes:
        return orjson.dumps(obj)
except ImportError:
    _encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode

    def _dumps(obj: Any) -> bytes:
        return _encode(obj).encode("utf-8")


def _prepare_args(engine: str) -> Callable[[Path, Path, Path, Any], list[str]]:
    def argv(reviews: Path, meta: Path, out: Path, cfg: Any) -> list[str]:
        args = ["prepare", "amazon2023", "--path", str(reviews), "--meta-path", str(meta), "--out", str(out)]
        args += ["--kcore", str(cfg.kcore), "--num-negatives", str(cfg.num_negatives), "--engine", engine]
        if engine == "duckdb" and cfg.memory_limit:
            args += ["--memory-limit", cfg.memory_limit]
        return args

    return argv


# Each preparation path: its name and the llmrec arguments that prepare (reviews, meta, out folder, config).
PATHS: dict[str, Callable[[Path, Path, Path, Any], list[str]]] = {
    "pandas": _prepare_args("pandas"),
    "duckdb": _prepare_args("duckdb"),
}


@dataclass
class PrepareBenchConfig:
    """What to generate and time."""

    reviews: int = option(1_000_000, "reviews in the generated file", ge=100)
    out: str = option(
        "runs/bench-prepare",
        "folder for the generated files (cached) and bench_prepare_n<reviews>_seed<seed>.json, .md",
    )
    seed: int = option(0, "seed of the generated files", ge=0, lt=2**32)
    keep: bool = option(False, "keep the prepared datasets (deleted after timing otherwise)")
    paths: list[str] = option(
        factory=lambda: list(PATHS), help=f"preparation paths to time, among {tuple(PATHS)}"
    )
    kcore: int = option(5, "--kcore given to prepare", ge=0)
    num_negatives: int = option(100, "--num-negatives given to prepare", ge=1)
    memory_limit: str | None = option(None, "--memory-limit given to the duckdb path (e.g. 8GB)")

    def __post_init__(self) -> None:
        bad = [p for p in self.paths if p not in PATHS]
        if bad or not self.paths:
            raise ConfigError(f"paths must be among {tuple(PATHS)}, got {self.paths}")


# ----------------------------------------------------------------------------- generating the files


def _rank_cdf(n: int, exponent: float) -> np.ndarray:
    """Cumulative probabilities of ranks 1..n under p(r) ~ r^-exponent (a bounded Zipf law)."""
    cdf = np.cumsum(np.arange(1, n + 1, dtype=np.float64) ** -exponent)
    return cdf / cdf[-1]


def user_id(u: int) -> str:
    """A 28-character id like the release's ("AE..."), distinct for distinct u (an odd multiplier mod 2^64)."""
    return f"AE{(u * 0x9E3779B97F4A7C15) % 2**64:016X}{u % 2**40:010X}"


def item_id(i: int) -> str:
    """A 10-character ASIN-like id ("B0" + 8 hex digits), distinct for i < 2^32."""
    return f"B0{(i * 0x9E3779B1) % 2**32:08X}"


def _words(rng: np.random.Generator, counts: np.ndarray, vocab: tuple[str, ...] | list[str]) -> list[str]:
    """One string of counts[j] words per row, all words drawn in one call."""
    idx = rng.integers(0, len(vocab), int(counts.sum()))
    ends = np.cumsum(counts)
    flat = [vocab[k] for k in idx.tolist()]
    return [" ".join(flat[e - c : e]) for c, e in zip(counts.tolist(), ends.tolist(), strict=True)]


def _gzip_writer(f: Any) -> gzip.GzipFile:
    # no file name and mtime 0 in the header: the same seed gives byte-identical files
    return gzip.GzipFile(filename="", mode="wb", fileobj=f, compresslevel=1, mtime=0)


def _review_chunk(
    rng: np.random.Generator,
    n: int,
    users_by_rank: tuple[np.ndarray, np.ndarray],
    items_by_rank: tuple[np.ndarray, np.ndarray],
) -> list[bytes]:
    """``n`` review lines; ``*_by_rank``: (cdf over ranks, id index of each rank)."""
    users = users_by_rank[1][np.searchsorted(users_by_rank[0], rng.random(n))]
    items = items_by_rank[1][np.searchsorted(items_by_rank[0], rng.random(n))]
    dup = np.flatnonzero(rng.random(n) < DUPLICATE_SHARE)
    dup = dup[dup > 0]
    users[dup], items[dup] = users[dup - 1], items[dup - 1]
    ratings = rng.choice(np.array([1.0, 2.0, 3.0, 4.0, 5.0]), n, p=[0.08, 0.06, 0.09, 0.17, 0.60])
    times = rng.integers(T0_MS, T1_MS, n)
    text_words = np.clip(rng.lognormal(np.log(45), 0.6, n), 3, 400).astype(np.int64)  # ~6 chars a word
    texts = _words(rng, text_words, WORDS)
    titles = _words(rng, rng.integers(1, 6, n), WORDS)
    helpful = rng.geometric(0.6, n) - 1
    verified = rng.random(n) < 0.9
    variant = rng.random(n) < 0.3  # the variant bought differs from the product (asin != parent_asin)
    lines = []
    for j in range(n):
        parent = item_id(int(items[j]))
        lines.append(
            _dumps(
                {
                    "rating": float(ratings[j]),
                    "title": titles[j].capitalize(),
                    "text": texts[j].capitalize() + ".",
                    "images": [],
                    "asin": item_id(int(items[j]) + 2**31) if variant[j] else parent,
                    "parent_asin": parent,
                    "user_id": user_id(int(users[j])),
                    "timestamp": int(times[j]),
                    "helpful_vote": int(helpful[j]),
                    "verified_purchase": bool(verified[j]),
                }
            )
            + b"\n"
        )
    return lines


def _meta_chunk(rng: np.random.Generator, start: int, n: int) -> list[bytes]:
    titles = _words(rng, rng.integers(3, 9, n), TITLE_WORDS)
    n_feat = rng.integers(3, 6, n)
    feats = _words(rng, rng.integers(4, 12, int(n_feat.sum())), WORDS)
    descs = _words(rng, rng.integers(20, 80, n), WORDS)
    depth = rng.integers(2, 5, n)
    top = rng.integers(0, len(CATEGORY_TREE), n)
    subs = rng.integers(0, len(SUBCATEGORIES), (n, 3))
    avg = np.round(rng.uniform(2.5, 5.0, n), 1)
    counts = rng.geometric(0.01, n)
    prices = np.round(rng.lognormal(3.0, 0.8, n), 2)
    has_price = rng.random(n) < 0.7
    stores = rng.integers(0, len(STORES), n)
    lines = []
    f0 = 0
    for j in range(n):
        i = start + j
        iid = item_id(i)
        path = [CATEGORY_TREE[top[j]], *(SUBCATEGORIES[s] for s in subs[j, : depth[j] - 1])]
        lines.append(
            _dumps(
                {
                    "main_category": CATEGORY_TREE[top[j]],
                    "title": titles[j],
                    "average_rating": float(avg[j]),
                    "rating_number": int(counts[j]),
                    "features": [s.capitalize() for s in feats[f0 : f0 + n_feat[j]]],
                    "description": [descs[j].capitalize() + "."],
                    "price": float(prices[j]) if has_price[j] else None,
                    "images": [
                        {
                            "thumb": f"https://m.media-amazon.com/images/I/{iid}._SS40_.jpg",
                            "large": f"https://m.media-amazon.com/images/I/{iid}.jpg",
                            "variant": "MAIN",
                            "hi_res": f"https://m.media-amazon.com/images/I/{iid}._SL1500_.jpg",
                        }
                    ],
                    "videos": [],
                    "store": STORES[stores[j]],
                    "categories": path,
                    "details": {DETAIL_KEYS[0]: STORES[stores[j]], DETAIL_KEYS[1]: SUBCATEGORIES[subs[j, 0]]},
                    "parent_asin": iid,
                    "bought_together": None,
                }
            )
            + b"\n"
        )
        f0 += int(n_feat[j])
    return lines


def generate(n_reviews: int, seed: int, folder: Path) -> tuple[Path, Path]:
    """Write ``Bench.jsonl.gz`` (reviews) and ``meta_Bench.jsonl.gz`` (one record per item) into ``folder``.

    Streams ``CHUNK`` rows at a time; each file appears only when complete (atomic rename).
    """
    from tqdm.auto import tqdm

    folder.mkdir(parents=True, exist_ok=True)
    reviews, meta = folder / f"{CATEGORY}.jsonl.gz", folder / f"meta_{CATEGORY}.jsonl.gz"
    n_users = max(int(n_reviews * USERS_PER_REVIEW), 10)
    n_items = max(int(n_reviews * ITEMS_PER_REVIEW), 10)
    # ranks -> ids through a permutation, so the most active user is not user 0
    users_by_rank = (_rank_cdf(n_users, USER_EXPONENT), np.random.default_rng([seed, 1]).permutation(n_users))
    items_by_rank = (_rank_cdf(n_items, ITEM_EXPONENT), np.random.default_rng([seed, 2]).permutation(n_items))
    rng = np.random.default_rng([seed, 0])
    with atomic_path(reviews) as tmp, open(tmp, "wb") as raw, _gzip_writer(raw) as f:
        bar = tqdm(total=n_reviews, desc=reviews.name, unit=" reviews", unit_scale=True, disable=None)
        for start in range(0, n_reviews, CHUNK):
            n = min(CHUNK, n_reviews - start)
            f.writelines(_review_chunk(rng, n, users_by_rank, items_by_rank))
            bar.update(n)
        bar.close()
    with atomic_path(meta) as tmp, open(tmp, "wb") as raw, _gzip_writer(raw) as f:
        for start in range(0, n_items, CHUNK):
            n = min(CHUNK, n_items - start)
            f.writelines(_meta_chunk(rng, start, n))
    return reviews, meta


def generated_files(cfg: PrepareBenchConfig) -> tuple[Path, Path, dict[str, Any]]:
    """The cached pair for (reviews, seed), generated first when absent; ``done.json`` marks a finished pair."""
    folder = Path(cfg.out) / "data" / f"n{cfg.reviews}-seed{cfg.seed}"
    reviews, meta, done = (
        folder / f"{CATEGORY}.jsonl.gz",
        folder / f"meta_{CATEGORY}.jsonl.gz",
        folder / "done.json",
    )
    if done.exists() and reviews.exists() and meta.exists():
        info = read_json(done)
        log.info("reusing the generated files in %s (generated in %.1f s)", folder, info["seconds"])
        return reviews, meta, {**info, "reused": True}
    log.info("generating %s reviews (seed %d) into %s", f"{cfg.reviews:,}", cfg.seed, folder)
    t0 = time.perf_counter()
    generate(cfg.reviews, cfg.seed, folder)
    info = {
        "reviews": cfg.reviews,
        "seed": cfg.seed,
        "seconds": time.perf_counter() - t0,
        "bytes": {p.name: p.stat().st_size for p in (reviews, meta)},
    }
    write_json_atomic(done, info)
    return reviews, meta, {**info, "reused": False}


# ----------------------------------------------------------------------------- timing the paths


def time_child(argv: list[str], log_path: Path) -> tuple[float, int, int]:
    """Run ``python -m llmrec ARGV`` and return (seconds, peak RSS in bytes, exit status).

    ``os.wait4`` reports the rusage of that child alone (RUSAGE_CHILDREN would include earlier children).
    """
    with open(log_path, "wb") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "llmrec", *argv], stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4: tell Popen
    rss = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)  # bytes on macOS, KiB on Linux
    return seconds, rss, proc.returncode


def run_prepare_bench(cfg: PrepareBenchConfig) -> dict[str, Any]:
    from llmrec.extras import require

    require("duckdb", "llmrec experiments bench-prepare")  # it times the duckdb engine against pandas
    out = Path(cfg.out)
    reviews, meta, generation = generated_files(cfg)
    result: dict[str, Any] = {
        "config": cfg.__dict__,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "generation": generation,
        "paths": [],
    }
    for name in cfg.paths:
        target = out / "prepared" / f"{name}-n{cfg.reviews}-seed{cfg.seed}"
        if target.exists():  # kept by an earlier --keep run: time a fresh write, not a replace
            shutil.rmtree(target)
        argv = PATHS[name](reviews, meta, target, cfg)
        log_path = out / f"{name}-n{cfg.reviews}-seed{cfg.seed}.log"
        log.info("timing %s: llmrec %s", name, " ".join(argv))
        seconds, rss, status = time_child(argv, log_path)
        if status != 0:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-1:]
            raise LlmrecError(
                f"path '{name}' failed with exit status {status}: {tail[0] if tail else ''}",
                file=log_path,
                hint="the log holds the whole output",
            )
        prepared = read_json(target / "meta.json")
        raw, final = prepared["counts_raw"], prepared["counts"]
        result["paths"].append(
            {
                "path": name,
                "command": ["llmrec", *argv],
                "seconds": seconds,
                "peak_rss_bytes": rss,
                "reviews_per_s": cfg.reviews / seconds,
                "counts_raw": raw,
                "counts": final,
                "kept_share": final["interactions"] / cfg.reviews,
                "identity": prepared["identity"],
            }
        )
        if not cfg.keep:
            shutil.rmtree(target)
            if not any(target.parent.iterdir()):
                target.parent.rmdir()
    out.mkdir(parents=True, exist_ok=True)
    stem = f"bench_prepare_n{cfg.reviews}_seed{cfg.seed}"
    write_json_atomic(out / f"{stem}.json", result)
    write_text_atomic(out / f"{stem}.md", format_prepare_bench(result) + "\n")
    result["files"] = [str(out / f"{stem}.json"), str(out / f"{stem}.md")]
    return result


def _size(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.2f} GB" if n_bytes >= 2**30 else f"{n_bytes / 2**20:.0f} MB"


def format_prepare_bench(r: dict[str, Any]) -> str:
    c, g = r["config"], r["generation"]
    lines = [
        f"llmrec prepare amazon2023 on {c['reviews']:,} generated reviews (seed {c['seed']}; "
        f"{r['machine']['cpus']} CPUs; generated in {g['seconds']:.1f} s"
        + (", reused" if g["reused"] else "")
        + f"; --kcore {c['kcore']}"
        + (f"; duckdb --memory-limit {c['memory_limit']}" if c.get("memory_limit") else "")
        + ")",
        "",
    ]
    rows = []
    for p in r["paths"]:
        raw, kept = p["counts_raw"], p["counts"]
        rows.append(
            [p["path"], f"{p['seconds']:.1f}", _size(p["peak_rss_bytes"]), f"{p['reviews_per_s']:,.0f}"]
            + [f"{raw['users']:,} / {raw['items']:,}"]
            + [f"{kept['users']:,} / {kept['items']:,} / {kept['interactions']:,} ({p['kept_share']:.1%})"]
        )
    header = "path | seconds | peak RSS | reviews / s | raw users / items | kept users / items / interactions"
    lines += markdown_table(header, "-rrrrr", rows)
    by_name = {p["path"]: p for p in r["paths"]}
    if {"pandas", "duckdb"} <= set(by_name):
        old, new = by_name["pandas"], by_name["duckdb"]
        same = (
            "the same dataset (equal content identity)"
            if old["identity"] == new["identity"]
            else ("DIFFERENT datasets (content identities differ)")
        )
        lines += [
            "",
            f"duckdb vs pandas: {old['seconds'] / new['seconds']:.2f}x faster, "
            f"{new['peak_rss_bytes'] / old['peak_rss_bytes']:.0%} of the peak memory; {same}",
        ]
    return "\n".join(lines)
