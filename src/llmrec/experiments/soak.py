"""``llmrec experiments soak``: hold many concurrent clients against ``llmrec serve`` for a while and report
what an operator needs to trust it: status codes (no 5xx but 503 + Retry-After when the queue is full),
latency percentiles, and the server's resident memory over time (its growth after the warm-up).

The server runs as a subprocess on 127.0.0.1 (a free port), loading the run once; ``clients`` asyncio tasks,
each on its own keep-alive HTTP/1.1 connection, send ``POST /recommend`` for random known users back to
back for ``seconds``. Every answer's status is counted; a 503 must carry ``Retry-After`` and the client then
waits that long, as a well-behaved client does. The server's resident set size (``/proc/PID/status``) is
sampled every ``sample_every`` seconds; the growth is the last sample over the first one taken after the
``warmup`` seconds. ``soak.json`` holds every figure, ``soak.png`` the memory and the latency over time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmrec.config import ConfigError, check_ranges, option
from llmrec.errors import LlmrecError
from llmrec.experiments.serve_bench import HOST, Connection, ServeProcess
from llmrec.utils.io import write_json_atomic

log = logging.getLogger(__name__)


@dataclass
class SoakConfig:
    """Which run, how many clients, for how long, and the limits the run is held to."""

    run: str = option("", "run directory of a trained model")
    clients: int = option(256, "concurrent clients (one keep-alive connection each)", ge=1)
    seconds: float = option(60.0, "how long the clients send (s)", gt=0)
    warmup: float = option(10.0, "seconds after which memory growth is measured from", ge=0)
    sample_every: float = option(1.0, "seconds between samples of the server's memory", gt=0)
    k: int = option(10, "items per request", ge=1)
    queue_size: int = option(256, "the server's --queue-size (a full queue answers 503)", ge=1)
    max_batch: int = option(32, "the server's --max-batch", ge=1)
    threads: int | None = option(None, "torch CPU threads of the server", ge=1)
    max_growth: float = option(0.05, "the largest memory growth after warm-up that passes (a fraction)", ge=0)
    startup_timeout: float = option(600.0, "longest the server may take to load the run (s)", gt=0)
    seed: int = option(0, "seed of the random user ids")
    out: str | None = option(None, "output folder (default: runs/soak/<run name>)")

    def __post_init__(self) -> None:
        check_ranges(self)
        if not self.run:
            raise ConfigError("run: the run directory of a trained model is required")
        if self.warmup >= self.seconds:
            raise ConfigError(f"warmup ({self.warmup:g} s) must be shorter than seconds ({self.seconds:g} s)")


def rss_bytes(pid: int) -> int:
    """The resident set size of process ``pid`` (Linux ``/proc``; 0 where it cannot be read)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


async def _hold(cfg: SoakConfig, port: int, pid: int, users: list[str]) -> dict[str, Any]:
    """The clients' run: codes, latencies (with their send times), 503s without Retry-After, memory."""
    rng = np.random.default_rng(cfg.seed)
    codes: Counter[int] = Counter()
    latencies: list[tuple[float, float]] = []  # (seconds since start, latency s)
    missing_retry_after = 0
    memory: list[tuple[float, int]] = []
    clients = [Connection(HOST, port) for _ in range(cfg.clients)]
    start = time.perf_counter()
    deadline = start + cfg.seconds

    async def client(conn: Connection, seed: int) -> None:
        nonlocal missing_retry_after
        pick = np.random.default_rng(seed)
        while time.perf_counter() < deadline:
            body = json.dumps({"user_id": users[int(pick.integers(len(users)))], "k": cfg.k}).encode()
            t = time.perf_counter()
            code, head = await conn.request_with_headers("POST", "/recommend", body)
            latencies.append((t - start, time.perf_counter() - t))
            codes[code] += 1
            if code == 503:
                retry = head.get("retry-after")
                if retry is None:
                    missing_retry_after += 1
                await asyncio.sleep(float(retry or 1))

    async def sampler() -> None:
        while time.perf_counter() < deadline:
            memory.append((time.perf_counter() - start, rss_bytes(pid)))
            await asyncio.sleep(cfg.sample_every)
        memory.append((time.perf_counter() - start, rss_bytes(pid)))

    try:
        await asyncio.gather(sampler(), *[client(c, int(rng.integers(2**31))) for c in clients])
    finally:
        await asyncio.gather(*[c.close() for c in clients])
    return {
        "codes": codes,
        "latencies": latencies,
        "missing_retry_after": missing_retry_after,
        "memory": memory,
    }


def run_soak(cfg: SoakConfig) -> dict[str, Any]:
    """Hold the load; write soak.json and soak.png into the out folder; the summary (``passed`` says whether
    there was no 5xx but 503 + Retry-After, every answer came, and memory grew less than ``max_growth``)."""
    from llmrec.extras import require

    require("serve", "llmrec experiments soak", ("httpx", "fastapi", "uvicorn", "httptools"))
    from llmrec.pipeline import run_dataset

    run = Path(cfg.run)
    if not (run / "config.json").exists():
        raise LlmrecError("not a run directory (no config.json)", file=run, hint="train a model first")
    out = Path(cfg.out or Path("runs") / "soak" / run.name)
    out.mkdir(parents=True, exist_ok=True)
    users = run_dataset(run).users["user_id"].astype(str).tolist()
    options = ["--queue-size", str(cfg.queue_size), "--max-batch", str(cfg.max_batch), "--no-warm-up"]
    options += ["--threads", str(cfg.threads)] if cfg.threads else []
    server = ServeProcess(cfg.run, options, out / "serve.log")
    try:
        server.wait_ready(cfg.startup_timeout)
        log.info("soak: %d clients for %g s against %s", cfg.clients, cfg.seconds, server.url)
        held = asyncio.run(_hold(cfg, server.port, server.proc.pid, users))
    finally:
        exit_code = server.stop()
    result = summarise(cfg, held)
    result["server_exit"] = exit_code
    write_json_atomic(out / "soak.json", result)
    _plot(held, out / "soak.png")
    result["out"] = str(out)
    return result


def summarise(cfg: SoakConfig, held: dict[str, Any]) -> dict[str, Any]:
    """The figures of a soak: requests per status, latency percentiles, throughput, memory growth."""
    lat = np.array([x for _, x in held["latencies"]] or [0.0]) * 1000
    codes = {str(k): v for k, v in sorted(held["codes"].items())}
    after = [m for t, m in held["memory"] if t >= cfg.warmup and m > 0]
    growth = (after[-1] - after[0]) / after[0] if len(after) >= 2 else None
    server_errors = sum(v for k, v in held["codes"].items() if k >= 500 and k != 503)
    no_answer = held["codes"].get(0, 0)
    return {
        "clients": cfg.clients,
        "seconds": cfg.seconds,
        "requests": int(sum(held["codes"].values())),
        "per_second": round(sum(held["codes"].values()) / cfg.seconds, 1),
        "codes": codes,
        "server_errors": int(server_errors),
        "no_answer": int(no_answer),
        "overloaded_503": int(held["codes"].get(503, 0)),
        "503_without_retry_after": int(held["missing_retry_after"]),
        "p50_ms": round(float(np.percentile(lat, 50)), 2),
        "p99_ms": round(float(np.percentile(lat, 99)), 2),
        "max_ms": round(float(lat.max()), 2),
        "rss_mb_after_warmup": round(after[0] / 2**20, 1) if after else None,
        "rss_mb_end": round(after[-1] / 2**20, 1) if after else None,
        "memory_growth": None if growth is None else round(growth, 4),
        "passed": bool(
            server_errors == 0
            and no_answer == 0
            and held["missing_retry_after"] == 0
            and (growth is None or growth < cfg.max_growth)
        ),
    }


def format_soak(result: dict[str, Any]) -> str:
    """The summary as a few lines."""
    growth = result["memory_growth"]
    return "\n".join(
        [
            f"{result['clients']} clients for {result['seconds']:g} s: {result['requests']:,} requests "
            f"({result['per_second']:g}/s), codes {result['codes']}",
            f"latency p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, max {result['max_ms']} ms",
            f"5xx other than 503: {result['server_errors']}; no answer: {result['no_answer']}; "
            f"503 without Retry-After: {result['503_without_retry_after']}",
            f"resident memory {result['rss_mb_after_warmup']} MB after warm-up -> {result['rss_mb_end']} MB "
            f"({'n/a' if growth is None else f'{growth:+.2%}'})",
            f"{'PASSED' if result['passed'] else 'FAILED'}; written {result['out']}/soak.json, soak.png",
        ]
    )


def _plot(held: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from llmrec.utils.io import atomic_path

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    if held["memory"]:
        t, m = zip(*held["memory"])
        top.plot(t, np.array(m) / 2**20)
    top.set_ylabel("server RSS (MB)")
    if held["latencies"]:
        t, x = zip(*held["latencies"])
        bottom.plot(t, np.array(x) * 1000, ".", markersize=1, alpha=0.3)
        bottom.set_yscale("log")
    bottom.set_ylabel("latency (ms)")
    bottom.set_xlabel("seconds since start")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
