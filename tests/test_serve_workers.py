"""``llmrec serve --workers 2``: two processes on one 127.0.0.1 port, each answering with its own model and
micro-batcher, /metrics counting the requests of both; SIGTERM to the parent stops both after their requests
(exit 0)."""

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from llmrec.errors import ConfigError
from llmrec.serve.server import serve
from llmrec.serve.settings import ServeConfig
from test_serve import make_run

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _call(port: int, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    status, text = _request(port, method, path, body)
    return status, json.loads(text)


def _request(port: int, method: str, path: str, body: dict | None = None) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        data = None if body is None else json.dumps(body)
        conn.request(
            method, path, body=data, headers={"Content-Type": "application/json", "Connection": "close"}
        )
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def _recommends_counted(port: int) -> float:
    """``/recommend`` answers with status 200 in the /metrics of whichever worker answers it."""
    status, text = _request(port, "GET", "/metrics")
    assert status == 200
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "llmrec_requests_total"
        and sample.labels["route"] == "/recommend"
        and sample.labels["status"] == "200"
    )


def _health_and_recommend(port: int, user: str) -> tuple[int, int, list[str]]:
    status, health = _call(port, "GET", "/health")
    assert status == 200
    status, answer = _call(port, "POST", "/recommend", {"user_id": user, "k": 3})
    return health["pid"], status, [i["item_id"] for i in answer["items"]]


def test_two_workers_both_answer_and_sigterm_stops_both(tmp_path):
    run = make_run(tmp_path, "popularity")
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    cmd = [sys.executable, "-m", "llmrec", "serve", str(run), "--workers", "2", "--port", str(port)]
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen([*cmd, "--threads", "1"], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 120
        while True:  # until a worker answers
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                _call(port, "GET", "/health")
                break
            except OSError:
                assert time.monotonic() < deadline, "no worker answered in 120 s"
                time.sleep(0.2)
        pids, answers, recommends = set(), set(), 0
        with ThreadPoolExecutor(8) as pool:
            while len(pids) < 2 and time.monotonic() < deadline:  # both workers take connections
                for pid, status, items in pool.map(lambda u: _health_and_recommend(port, u), ["u1"] * 16):
                    assert status == 200 and len(items) == 3
                    recommends += 1
                    pids.add(pid)
                    answers.add(tuple(items))
        assert len(pids) == 2, f"answers came from {pids} only"
        assert len(answers) == 1  # every worker serves the same run: the same answer
        assert proc.pid not in pids  # the parent supervises; the workers answer
        # /metrics counts the requests of both workers, whichever of them answers it
        assert [_recommends_counted(port) for _ in range(8)] == [recommends] * 8
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        log.close()
    text = (tmp_path / "serve.log").read_text()
    assert code == 0, text
    assert text.count("stopped: ") == 2, text  # each worker drained its batcher and said so


def test_add_items_with_workers_is_refused_before_any_starts(tmp_path):
    run = make_run(tmp_path, "popularity")
    with pytest.raises(ConfigError, match="--add-items needs one server process"):
        serve(ServeConfig(run=[str(run)], workers=2, add_items=True))
