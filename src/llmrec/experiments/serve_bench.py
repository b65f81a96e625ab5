"""``llmrec experiments bench-serve``: throughput and latency of ``llmrec serve`` with micro-batching on
and off, side by side in one run.

Two servers (batching on, batching off) run as subprocesses on 127.0.0.1 on free ports, each loading the
run once; a bounded load generator (asyncio, one raw keep-alive HTTP/1.1 connection per client) sends ``POST /recommend`` for random known users at each
concurrency, alternating between the two servers in ``rounds`` slices per point so that a busy neighbour on
the machine slows both alike. Each point is a fixed number of requests, cut short at a maximum duration. Mean batch
sizes come from the servers' /health counters before and after the point.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmrec.config import ConfigError, check_ranges, option
from llmrec.errors import LlmrecError
from llmrec.placement import DtypeName, device_option, dtype_option
from llmrec.utils.io import write_json_atomic, write_text_atomic
from llmrec.utils.markdown import markdown_table

log = logging.getLogger(__name__)
HOST = "127.0.0.1"  # the bench never listens on, nor sends to, another address
MODES = (("on", True), ("off", False))


@dataclass
class BenchServeConfig:
    """What to load, how hard to push it, where the results go."""

    run: str = option("", "run directory of a trained model")
    requests: int = option(600, "requests per point (concurrency x batching)", ge=1)
    rounds: int = option(3, "slices of each point, batching on and off taking turns", ge=1)
    duration: float = option(60.0, "longest a point may take (s); it stops sending then", gt=0)
    concurrency: list[int] = option(factory=lambda: [1, 8, 16, 32], help="concurrent clients per point")
    k: int = option(10, "items per request", ge=1)
    warmup: int = option(10, "unmeasured requests per server before the first point", ge=0)
    max_batch: int = option(32, "the batching server's --max-batch", ge=1)
    max_wait_ms: float = option(5.0, "the batching server's --max-wait-ms", ge=0)
    queue_size: int = option(256, "both servers' --queue-size", ge=1)
    threads: int | None = option(None, "torch CPU threads of each server", ge=1)
    workers: int = option(
        1, "each server's --workers (processes; the mean batch is then the answering worker's)", ge=1
    )
    device: str = device_option()
    dtype: DtypeName = dtype_option()
    data: str | None = option(None, "the run's dataset moved: its new folder")
    startup_timeout: float = option(600.0, "longest a server may take to load the run (s)", gt=0)
    seed: int = option(0, "seed of the random user ids")
    out: str | None = option(None, "output folder (default: runs/bench-serve/<model>)")

    def __post_init__(self) -> None:
        check_ranges(self)
        if not self.run:
            raise ConfigError("run: the run directory of a trained model is required")
        if not self.concurrency or min(self.concurrency) < 1:
            raise ConfigError(f"concurrency must list integers >= 1, got {self.concurrency}")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _serve_options(cfg: BenchServeConfig, batching: bool) -> list[str]:
    argv = ["--max-batch", str(cfg.max_batch), "--max-wait-ms", str(cfg.max_wait_ms)]
    argv += ["--queue-size", str(cfg.queue_size), "--device", cfg.device, "--dtype", cfg.dtype]
    argv += [] if batching else ["--no-batching"]
    argv += ["--threads", str(cfg.threads)] if cfg.threads else []
    argv += ["--workers", str(cfg.workers)] if cfg.workers > 1 else []
    return argv + (["--data", cfg.data] if cfg.data else [])


class ServeProcess:
    """``llmrec serve RUN OPTIONS`` in a subprocess on 127.0.0.1 (a free port), its output in a log file."""

    def __init__(self, run: str, options: list[str], log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        argv = [
            sys.executable,
            "-m",
            "llmrec",
            "serve",
            run,
            "--host",
            HOST,
            "--port",
            str(self.port),
            *options,
        ]
        self.log_path = log_path
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        src = str(Path(__file__).resolve().parents[2])  # this llmrec, installed or not
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, timeout: float) -> dict[str, Any]:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-1500:]
                raise LlmrecError(f"'llmrec serve' exited ({self.proc.returncode}) before answering: {tail}")
            with contextlib.suppress(httpx.HTTPError):
                r = httpx.get(self.url + "/health", timeout=2)
                if r.status_code == 200:
                    return r.json()
            time.sleep(0.2)
        raise LlmrecError(f"'llmrec serve' did not answer within {timeout:g} s; see {self.log_path}")

    def stop(self) -> int | None:
        """SIGTERM (graceful), then SIGKILL after 30 s; the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


class Connection:
    """One keep-alive HTTP/1.1 connection that speaks just what the load needs (a request with a JSON
    body, an answer with a Content-Length). The load generator shares the machine with the server it
    measures: this costs it several times less CPU per request than a general client (httpx), so the
    server's own costs decide what is measured."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        """(status, body) of one request; status 0 when no HTTP answer came. A kept-alive connection the
        server closed while idle (uvicorn closes them after 5 s) is reopened and the request sent again."""
        status, _, answer = await self.exchange(method, path, body)
        return status, answer

    async def request_with_headers(
        self, method: str, path: str, body: bytes | None = None
    ) -> tuple[int, dict[str, str]]:
        """(status, headers with lower-case names) of one request, as :meth:`request`."""
        status, headers, _ = await self.exchange(method, path, body)
        return status, headers

    async def exchange(
        self, method: str, path: str, body: bytes | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        """(status, headers, body) of one request; status 0 when no HTTP answer came (see :meth:`request`)."""
        for _ in range(2):
            reused = self.writer is not None
            try:
                return await self._send(method, path, body)
            except (
                OSError,
                asyncio.IncompleteReadError,
                asyncio.LimitOverrunError,
                ValueError,
            ):
                await self.close()
                if not reused:
                    break
        return 0, {}, b""

    async def _send(self, method: str, path: str, body: bytes | None) -> tuple[int, dict[str, str], bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self.writer.write(head.encode() + b"\r\n" + (body or b""))
        await self.writer.drain()
        lines = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:] if h)}
        if "content-length" not in headers:  # chunked or empty answers are not what the service sends
            raise ValueError("an answer without Content-Length")
        return status, headers, await self.reader.readexactly(int(headers["content-length"]))

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
        self.reader = self.writer = None


async def _load(
    url: str, users: list[str], n: int, concurrency: int, duration: float, k: int, seed: int, bar: Any
) -> dict[str, Any]:
    """``n`` POST /recommend from ``concurrency`` clients (stopping at ``duration`` s): latencies, codes."""
    from urllib.parse import urlsplit

    rng = np.random.default_rng(seed)
    picks = [users[i] for i in rng.integers(0, len(users), size=n)]
    bodies = [json.dumps({"user_id": uid, "k": k}).encode() for uid in picks]
    latencies: list[float] = []
    codes: Counter[int] = Counter()
    where = urlsplit(url)
    # one keep-alive connection per simulated user
    clients = [Connection(where.hostname or "127.0.0.1", where.port or 80) for _ in range(concurrency)]

    async def health() -> dict[str, Any]:
        status, body = await clients[0].request("GET", "/health")
        if status != 200:
            raise LlmrecError(
                f"the server's /health answered {status}", hint="see its log in the --out folder"
            )
        return json.loads(body)

    try:
        # connect first, so that no measured request pays for TCP set-up
        await asyncio.gather(*[c.request("GET", "/health") for c in clients])
        before = await health()
        sent = 0
        start = time.perf_counter()
        deadline = start + duration

        async def worker(client: Connection) -> None:
            nonlocal sent
            while sent < n and time.perf_counter() < deadline:
                body = bodies[sent]
                sent += 1
                t = time.perf_counter()
                code, _ = await client.request("POST", "/recommend", body)  # 0: no HTTP answer at all
                latencies.append(time.perf_counter() - t)
                codes[code] += 1
                bar.update(1)

        await asyncio.gather(*[worker(c) for c in clients])
        elapsed = time.perf_counter() - start
        after = await health()
    finally:
        await asyncio.gather(*[c.close() for c in clients])
    return {
        "latencies": latencies,
        "codes": codes,
        "seconds": elapsed,
        "batches": after["batches"] - before["batches"],
        "served": after["served"] - before["served"],
        "model_seconds": after["model_seconds"] - before["model_seconds"],
    }


def _summary(slices: list[dict[str, Any]]) -> dict[str, Any]:
    """One point's figures from its slices: throughput over their total time, latency percentiles over
    all their requests."""
    lat = np.array([x for s in slices for x in s["latencies"]]) * 1000
    codes: Counter[int] = sum((s["codes"] for s in slices), Counter())
    elapsed = sum(s["seconds"] for s in slices)
    batches, served = sum(s["batches"] for s in slices), sum(s["served"] for s in slices)
    ok = sum(v for c, v in codes.items() if 200 <= c < 300)
    return {
        "requests": len(lat),
        "seconds": round(elapsed, 3),
        "throughput": round(ok / elapsed, 2),
        "p50_ms": round(float(np.percentile(lat, 50)), 2),
        "p95_ms": round(float(np.percentile(lat, 95)), 2),
        "p99_ms": round(float(np.percentile(lat, 99)), 2),
        "non_2xx": len(lat) - ok,
        "5xx": sum(v for c, v in codes.items() if c >= 500 or c == 0),
        "codes": {str(c): v for c, v in sorted(codes.items())},
        "batches": batches,
        "mean_batch": round(served / batches, 2) if batches else None,
        "model_ms_per_request": round(1000 * sum(s["model_seconds"] for s in slices) / served, 3)
        if served
        else None,
    }


def run_bench_serve(cfg: BenchServeConfig) -> dict[str, Any]:
    """Measure every (concurrency, batching) point; write bench_serve.{json,md,png} into the out folder."""
    from tqdm import tqdm

    from llmrec.extras import require

    require("serve", "llmrec experiments bench-serve", ("httpx", "fastapi", "uvicorn", "httptools"))

    from llmrec.pipeline import run_dataset
    from llmrec.utils.io import read_json

    run = Path(cfg.run)
    if not (run / "config.json").exists():
        raise LlmrecError(f"{run}: not a run directory (no config.json)", hint="train a model first")
    name = str(read_json(run / "config.json").get("model", run.name))
    out = Path(cfg.out or Path("runs") / "bench-serve" / name)
    out.mkdir(parents=True, exist_ok=True)
    users = run_dataset(run, cfg.data).users["user_id"].astype(str).tolist()

    servers = {
        mode: ServeProcess(cfg.run, _serve_options(cfg, batching), out / f"serve-{mode}.log")
        for mode, batching in MODES
    }
    points: list[dict[str, Any]] = []
    try:
        health = {mode: s.wait_ready(cfg.startup_timeout) for mode, s in servers.items()}
        total = len(cfg.concurrency) * len(MODES) * cfg.requests + len(MODES) * cfg.warmup
        with tqdm(total=total, desc=f"bench-serve {name}", unit="req", dynamic_ncols=True) as bar:
            for s in servers.values():
                if cfg.warmup:
                    asyncio.run(_load(s.url, users, cfg.warmup, 1, cfg.duration, cfg.k, cfg.seed, bar))
            for i, c in enumerate(cfg.concurrency):
                slices: dict[str, list[dict[str, Any]]] = {mode: [] for mode in servers}
                for r in range(cfg.rounds):  # on, off, on, off...: both modes see the same machine load
                    n = cfg.requests // cfg.rounds + (r < cfg.requests % cfg.rounds)
                    for mode, s in servers.items():
                        bar.set_postfix(concurrency=c, batching=mode)
                        seed = cfg.seed + 1000 * i + r
                        slices[mode].append(
                            asyncio.run(_load(s.url, users, n, c, cfg.duration, cfg.k, seed, bar))
                        )
                        bar.update(n - len(slices[mode][-1]["latencies"]))  # a slice cut short by --duration
                for mode in servers:
                    points.append({"concurrency": c, "batching": mode, **_summary(slices[mode])})
    finally:
        exits = {mode: s.stop() for mode, s in servers.items()}
    for p in points:
        other = next(
            q for q in points if q["concurrency"] == p["concurrency"] and q["batching"] != p["batching"]
        )
        p["speedup"] = round(p["throughput"] / other["throughput"], 2) if other["throughput"] else None
    result = {
        "model": name,
        "run": str(run),
        "device": health["on"]["device"],
        "requests_per_point": cfg.requests,
        "rounds": cfg.rounds,
        "max_duration_s": cfg.duration,
        "k": cfg.k,
        "max_batch": cfg.max_batch,
        "max_wait_ms": cfg.max_wait_ms,
        "queue_size": cfg.queue_size,
        "threads": cfg.threads,
        "workers": cfg.workers,
        "cpus": os.cpu_count(),
        "server_exit": exits,
        "points": points,
        "out": str(out),
    }
    write_json_atomic(out / "bench_serve.json", result)
    write_text_atomic(out / "bench_serve.md", format_bench_serve(result) + "\n")
    _plot(result, out / "bench_serve.png")
    return result


def format_bench_serve(result: dict[str, Any]) -> str:
    """The Markdown table: one row per (concurrency, batching)."""
    lines = [
        f"llmrec serve {result['model']} on {result['device']}"
        f"{'' if result.get('workers', 1) == 1 else ' with ' + str(result['workers']) + ' workers'}: "
        f"{result['requests_per_point']} POST /recommend "
        f"per point in {result['rounds']} alternating slices (k={result['k']}), micro-batching up to {result['max_batch']} per call with "
        f"{result['max_wait_ms']:g} ms wait vs none",
        "",
    ]
    rows = []
    for p in result["points"]:
        speedup = "" if p["batching"] == "off" or p["speedup"] is None else f"{p['speedup']:.2f}x"
        mean_batch = "-" if p["mean_batch"] is None else f"{p['mean_batch']:.2f}"
        model_ms = "-" if p["model_ms_per_request"] is None else f"{p['model_ms_per_request']:.2f}"
        rows.append(
            [p["concurrency"], p["batching"], p["requests"], f"{p['throughput']:.1f}", speedup]
            + [f"{p[k]:.1f}" for k in ("p50_ms", "p95_ms", "p99_ms")]
            + [p["non_2xx"], p["5xx"], mean_batch, model_ms]
        )
    header = (
        "concurrency | batching | requests | req/s | speed-up | p50 ms | p95 ms | p99 ms | non-2xx | 5xx "
        "| mean batch | model ms/req"
    )
    return "\n".join(lines + markdown_table(header, "rlrrrrrrrrrr", rows))


def _plot(result: dict[str, Any], path: Path) -> None:
    from llmrec.plots import pyplot, save_figure

    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for mode, label in (("on", "micro-batching"), ("off", "one request per call")):
        pts = [p for p in result["points"] if p["batching"] == mode]
        xs = [p["concurrency"] for p in pts]
        left.plot(xs, [p["throughput"] for p in pts], marker="o", label=label)
        right.plot(xs, [p["p50_ms"] for p in pts], marker="o", label=f"{label}, p50")
        right.plot(xs, [p["p99_ms"] for p in pts], marker="x", linestyle="--", label=f"{label}, p99")
    left.set(xlabel="concurrent clients", ylabel="requests / s", title=f"{result['model']}: throughput")
    right.set(xlabel="concurrent clients", ylabel="latency (ms)", title="latency")
    from matplotlib.ticker import NullFormatter

    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save_figure(fig, path)


__all__ = ["BenchServeConfig", "run_bench_serve", "format_bench_serve"]
