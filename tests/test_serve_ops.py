"""What an operator runs the service with: metrics, probes, request ids, logs, environment variables, API
keys, CORS, offline API docs and recommendation ids (llmrec.serve.ops)."""

from __future__ import annotations

import io
import json
import logging
import re
import socket
import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

import llmrec
from llmrec.config import ConfigError, environment_values, resolve
from llmrec.errors import LlmrecError
from llmrec.serve import ServeConfig, ServeSettings, create_app
from llmrec.serve.ops import LogFormat
from test_serve import Gate, make_run, running  # noqa: F401  (the same tiny SASRec run)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return llmrec.load(make_run(tmp_path_factory.mktemp("ops")), device="cpu")


def _families(text: str) -> dict[str, list]:
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def test_metrics_count_requests_by_route_status_and_batch(model):
    with TestClient(create_app(model)) as c:
        for _ in range(3):
            assert c.post("/recommend", json={"user_id": "u1", "k": 3}).status_code == 200
        assert c.post("/recommend", json={"user_id": "nobody"}).status_code == 404
        assert c.get("/items/i999").status_code == 404
        text = c.get("/metrics").text
    fam = _families(text)
    requests = {
        (s.labels["route"], s.labels["status"]): s.value
        for s in fam["llmrec_requests"]
        if s.name == "llmrec_requests_total"
    }
    assert requests[("/recommend", "200")] == 3 and requests[("/recommend", "404")] == 1
    assert requests[("/items/{item_id}", "404")] == 1  # by route template, not by id
    latency = {s.labels["route"]: s.value for s in fam["llmrec_request_seconds"] if s.name.endswith("_count")}
    assert latency["/recommend"] == 4
    batch = {s.name: s.value for s in fam["llmrec_batch_size"]}
    assert batch["llmrec_batch_size_count"] == 3 and batch["llmrec_batch_size_sum"] == 3
    assert fam["llmrec_queue_depth"][0].value == 0
    assert fam["llmrec_catalog_items"][0].value == len(model.item_ids)
    assert [s.value for s in fam["llmrec_model_seconds"] if s.name.endswith("_total")][0] > 0


def test_request_id_taken_or_made_returned_and_logged(model):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(LogFormat("json"))
    logger = logging.getLogger("llmrec.serve")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        with TestClient(create_app(model, access_log=True)) as c:
            mine = c.post("/recommend", json={"user_id": "u1"}, headers={"X-Request-ID": "order-42.a"})
            made = c.post("/recommend", json={"user_id": "u1"})
            odd = c.get("/items/i001", headers={"X-Request-ID": "bad id with spaces"})
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    assert mine.headers["x-request-id"] == "order-42.a"
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["x-request-id"])
    assert re.fullmatch(r"[0-9a-f]{32}", odd.headers["x-request-id"])  # an unsafe id is replaced
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    access = [x for x in lines if x.get("path") == "/recommend"]
    assert [x["request_id"] for x in access] == ["order-42.a", made.headers["x-request-id"]]
    first = access[0]
    assert first["status"] == 200 and first["method"] == "POST" and first["ms"] >= 0
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["time"])
    assert first["level"] == "INFO" and first["logger"] == "llmrec.serve"


def test_text_log_lines_carry_a_timestamp_and_the_request_id():
    record = logging.LogRecord("llmrec.serve", logging.WARNING, __file__, 1, "queue %d", (3,), None)
    line = LogFormat("text").format(record)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z WARNING llmrec\.serve \[-\] queue 3", line)


def test_each_answer_carries_its_own_recommendation_id(model):
    with TestClient(create_app(model)) as c:
        ids = {c.post("/recommend", json={"user_id": "u2"}).json()["recommendation_id"] for _ in range(3)}
        ids.add(
            c.post("/rank", json={"user_id": "u2", "candidates": ["i001", "i002"]}).json()[
                "recommendation_id"
            ]
        )
    assert len(ids) == 4 and all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)


def test_livez_at_once_readyz_after_the_warm_up(model, monkeypatch):
    gate = Gate(model, monkeypatch)  # the warm-up query waits in the model until released
    app = create_app(model, ServeSettings(warm_up=True))
    with running_in_background(app) as url:
        import httpx

        assert gate.entered.wait(10)
        assert httpx.get(f"{url}/livez").json() == {"status": "alive"}
        r = httpx.get(f"{url}/readyz")
        assert r.status_code == 503 and "warming up" in r.json()["detail"]
        gate.release.set()
        for _ in range(200):
            if httpx.get(f"{url}/readyz").status_code == 200:
                break
            threading.Event().wait(0.02)
        assert httpx.get(f"{url}/readyz").json() == {"status": "ready"}


def test_readyz_says_why_a_failed_warm_up_is_not_ready(model, monkeypatch):
    def broken(users, histories):
        raise RuntimeError("weights gone")

    monkeypatch.setattr(model.model, "score_all", broken)
    with TestClient(create_app(model, ServeSettings(warm_up=True))) as c:
        r = c.get("/readyz")
        assert r.status_code == 503
        assert "the warm-up query failed: RuntimeError: weights gone" in r.json()["detail"]
        assert c.get("/livez").status_code == 200


class running_in_background:
    """The app served by uvicorn on 127.0.0.1 in a thread that does not wait for the lifespan's start-up
    (so a test can probe the service while it warms up)."""

    def __init__(self, app) -> None:
        import uvicorn

        from llmrec.serve import server_config

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = uvicorn.Server(server_config(app, "127.0.0.1", self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        import httpx

        self.thread.start()
        for _ in range(500):
            try:
                httpx.get(f"http://127.0.0.1:{self.port}/livez", timeout=0.5)
                break
            except httpx.TransportError:
                threading.Event().wait(0.02)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(15)


def test_api_keys_401_without_200_with_probes_and_docs_open(model, tmp_path: Path):
    keys = tmp_path / "keys.txt"
    keys.write_text("# the shop's key\nk" + "x" * 31 + "\n\nsecond-key-0123456789\n")
    with TestClient(create_app(model, ServeSettings(api_key_file=str(keys)))) as c:
        r = c.post("/recommend", json={"user_id": "u1"})
        assert r.status_code == 401 and r.json()["field"] == "headers"
        assert r.headers["www-authenticate"] == "Bearer"
        assert (
            c.post("/recommend", json={"user_id": "u1"}, headers={"X-API-Key": "wrong" * 5}).status_code
            == 401
        )
        ok = c.post("/recommend", json={"user_id": "u1"}, headers={"Authorization": "Bearer k" + "x" * 31})
        assert ok.status_code == 200
        assert c.get("/metrics", headers={"X-API-Key": "second-key-0123456789"}).status_code == 200
        assert c.get("/metrics").status_code == 401
        for open_path in ("/livez", "/readyz", "/docs", "/openapi.json"):
            assert c.get(open_path).status_code == 200, open_path
    short = tmp_path / "short.txt"
    short.write_text("abc\n")
    with pytest.raises(LlmrecError, match="short.txt: a key of 3 characters is too easy to guess"):
        create_app(model, ServeSettings(api_key_file=str(short)))
    with pytest.raises(LlmrecError, match="holds no key"):
        (tmp_path / "empty.txt").write_text("# nothing\n")
        create_app(model, ServeSettings(api_key_file=str(tmp_path / "empty.txt")))


def test_cors_preflight_for_allowed_origins_only(model):
    app = create_app(model, ServeSettings(cors_origins=["https://shop.example"]))
    with TestClient(app) as c:
        pre = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
        ok = c.options("/recommend", headers={"Origin": "https://shop.example", **pre})
        assert ok.status_code == 200
        assert ok.headers["access-control-allow-origin"] == "https://shop.example"
        assert "POST" in ok.headers["access-control-allow-methods"]
        other = c.options("/recommend", headers={"Origin": "https://evil.example", **pre})
        assert "access-control-allow-origin" not in other.headers
        r = c.post("/recommend", json={"user_id": "u1"}, headers={"Origin": "https://shop.example"})
        assert r.headers["access-control-allow-origin"] == "https://shop.example"
        assert "x-request-id" in r.headers["access-control-expose-headers"].lower()
    with TestClient(create_app(model)) as c:  # no origins given: no CORS answers
        assert c.options("/recommend", headers={"Origin": "https://shop.example", **pre}).status_code == 405


def test_docs_reference_no_remote_asset_and_render_offline(model, monkeypatch):
    with TestClient(create_app(model)) as c:
        real_connect = socket.socket.connect

        def no_network(self, address):  # the page must not need the internet: any connection fails
            raise OSError("network unreachable")

        monkeypatch.setattr(socket.socket, "connect", no_network)
        try:
            html = c.get("/docs").text
            assert not re.search(r"""(src|href)=["']?(https?:)?//""", html), html
            assets = re.findall(r"""(?:src|href)=["']?(/docs-assets/[^"'\s>]+)""", html)
            assert {"/docs-assets/swagger-ui-bundle.js", "/docs-assets/swagger-ui.css"} <= set(assets)
            for asset in assets:
                r = c.get(asset)
                assert r.status_code == 200 and len(r.content) > 500, asset
        finally:
            monkeypatch.setattr(socket.socket, "connect", real_connect)


def test_environment_variables_sit_between_the_config_file_and_the_flags(tmp_path: Path, monkeypatch):
    import argparse

    cfg_file = tmp_path / "serve.yaml"
    cfg_file.write_text("run: runs/a\nport: 7000\nmax_batch: 8\nhost: 0.0.0.0\n")
    monkeypatch.setenv("LLMREC_SERVE_PORT", "9000")
    monkeypatch.setenv("LLMREC_SERVE_MAX_BATCH", "16")
    monkeypatch.setenv("LLMREC_SERVE_BATCHING", "false")
    monkeypatch.setenv("LLMREC_SERVE_CORS_ORIGINS", "https://a.example, https://b.example")
    monkeypatch.setenv("LLMREC_SERVE_API_KEY_FILE", "/etc/llmrec/keys")
    args = argparse.Namespace(max_batch=4)  # a flag given on the command line
    cfg = resolve(ServeConfig, args, cfg_file, env_prefix="LLMREC_SERVE_")
    assert (cfg.run, cfg.host) == (["runs/a"], "0.0.0.0")  # the file
    assert (cfg.port, cfg.batching) == (9000, False)  # the environment over the file
    assert cfg.max_batch == 4  # the flag over both
    assert cfg.cors_origins == ["https://a.example", "https://b.example"]
    assert cfg.api_key_file == "/etc/llmrec/keys"
    monkeypatch.setenv("LLMREC_SERVE_PROT", "1")
    with pytest.raises(ConfigError, match=r"unknown environment variable\(s\) \['LLMREC_SERVE_PROT'\]"):
        environment_values(ServeConfig, "LLMREC_SERVE_")
    monkeypatch.delenv("LLMREC_SERVE_PROT")
    monkeypatch.setenv("LLMREC_SERVE_PORT", "ninety")
    with pytest.raises(ConfigError, match="port"):
        resolve(ServeConfig, argparse.Namespace(), cfg_file, env_prefix="LLMREC_SERVE_")


def test_the_serve_command_reads_its_environment(tmp_path: Path, monkeypatch):
    from llmrec.cli import main

    monkeypatch.setenv("LLMREC_SERVE_MAX_BATCHH", "3")
    assert main(["serve", str(tmp_path / "no-run")]) != 0  # the typo is refused before anything loads
