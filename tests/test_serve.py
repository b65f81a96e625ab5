"""``llmrec serve``: recommendations over HTTP equal the Python API's, concurrent requests share model calls,
a full queue answers 503 with Retry-After, bad input is a 4xx naming the field, shutdown finishes in-flight
requests. One tiny SASRec run trained once; servers run in-process on an ephemeral 127.0.0.1 port."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import select
import shutil
import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn
from fastapi.testclient import TestClient

import llmrec
from conftest import synthetic_tables
from llmrec.errors import LlmrecError
from llmrec.serve import MAX_JSON_DEPTH, MAX_K, ServeSettings, create_app, server_config


def make_run(root: Path, model: str = "sasrec") -> Path:
    """The synthetic dataset (30 users u0..u29, 40 items i000..i039) and a tiny run trained on it."""
    from llmrec.data.processing import ProcessConfig, finalize, write_dataset

    items, inter = synthetic_tables()
    write_dataset(
        finalize(items, inter, ProcessConfig(kcore=0, num_negatives=5, seed=3), {}, {}, []), root / "ds"
    )
    options = {"hidden": 8, "max_len": 6, "epochs": 1} if model == "sasrec" else {}
    eval_ = {"ctr": False, "full_ranking": False, "ks": [5]}
    return llmrec.train(model, data=str(root / "ds"), out=root / model, options=options, eval=eval_).dir


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def model(run):
    return llmrec.load(run, device="cpu")


@pytest.fixture(scope="module")
def client(model):
    with TestClient(create_app(model, ServeSettings(max_history=20)), raise_server_exceptions=False) as c:
        yield c


@contextlib.contextmanager
def running(app):
    """``app`` served by uvicorn in a thread on a free 127.0.0.1 port, as ``llmrec serve`` serves it:
    (server, base url)."""
    server = uvicorn.Server(server_config(app, "127.0.0.1", 0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield server, f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)
        assert not thread.is_alive(), "the server did not stop"


class Gate:
    """Makes the model's catalog scoring wait until released (to hold requests in flight)."""

    def __init__(self, model, monkeypatch) -> None:
        self.entered, self.release = threading.Event(), threading.Event()
        real = model.model.score_all

        def blocked(users, histories):
            self.entered.set()
            assert self.release.wait(20), "the test never released the model"
            return real(users, histories)

        monkeypatch.setattr(model.model, "score_all", blocked)


def _rows(df) -> list[dict]:
    return [{"item_id": r.item_id, "title": r.title, "score": r.score} for r in df.itertuples()]


def same(got: list[dict], expected: list[dict]) -> bool:
    """The same items in the same order, scores equal up to float32 rounding."""
    key = lambda rows: [(r["item_id"], r["title"]) for r in rows]  # noqa: E731
    scores = np.allclose([r["score"] for r in got], [r["score"] for r in expected], rtol=1e-6)
    return key(got) == key(expected) and bool(scores)


# ----------------------------------------------------------------------------- answers


def test_recommend_rank_items_health_over_a_real_socket(model):
    with running(create_app(model)) as (_, url), httpx.Client(base_url=url) as http:
        r = http.post("/recommend", json={"user_id": "u3", "k": 5})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == "sasrec" and body["took_ms"] >= 0
        assert same(body["items"], _rows(model.recommend(user_ids=["u3"], k=5)))

        history = ["i001", "i002", "i003"]
        r = http.post("/recommend", json={"history": history, "k": 4, "candidates": ["i001", "i005", "i009"]})
        assert same(
            r.json()["items"],
            _rows(model.recommend(histories=[history], k=4, candidates=["i001", "i005", "i009"])),
        )
        assert "i001" not in [x["item_id"] for x in r.json()["items"]]  # history excluded

        cands = ["i004", "i010", "i020", "i030"]
        r = http.post("/rank", json={"user_id": "u3", "candidates": cands})
        assert same(r.json()["items"], _rows(model.rank(cands, user_ids=["u3"])))
        assert sorted(x["item_id"] for x in r.json()["items"]) == sorted(cands)

        assert http.get("/items/i007").json()["title"] == "Item 7"
        health = http.get("/health").json()
        assert health["model"] == "sasrec" and health["device"] == "cpu" and health["queue_depth"] == 0
        assert health["served"] == 3 and health["batching"]["max_batch"] == 32
        assert http.get("/docs").status_code == 200


def test_concurrent_requests_share_model_calls(model):
    users = [f"u{i}" for i in range(16)]
    expected = [_rows(model.recommend(user_ids=[u], k=3)) for u in users]

    async def fire(url: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url) as http:
            return await asyncio.gather(
                *[http.post("/recommend", json={"user_id": u, "k": 3}) for u in users]
            )

    for batching in (True, False):
        app = create_app(model, ServeSettings(max_wait_ms=300, batching=batching))
        with running(app) as (_, url):
            calls = model.calls
            responses = asyncio.run(fire(url))
            made = model.calls - calls
            health = httpx.get(url + "/health").json()
        assert [r.status_code for r in responses] == [200] * 16
        assert all(same(r.json()["items"], e) for r, e in zip(responses, expected))
        if batching:
            assert made < 16 and health["batches"] == made and health["mean_batch"] > 1, health
        else:
            assert made == 16 and health["mean_batch"] == 1


def test_a_full_queue_answers_503_with_retry_after_at_once(model, monkeypatch):
    gate = Gate(model, monkeypatch)
    app = create_app(model, ServeSettings(queue_size=2, max_batch=1))

    async def scenario(url: str):
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            post = lambda u: http.post("/recommend", json={"user_id": u})  # noqa: E731
            first = asyncio.create_task(post("u1"))
            assert await asyncio.to_thread(gate.entered.wait, 10)  # being scored
            queued = [asyncio.create_task(post(u)) for u in ("u2", "u3")]
            while (await http.get("/health")).json()["queue_depth"] < 2:
                await asyncio.sleep(0.01)
            t = time.perf_counter()
            refused = await http.post("/recommend", json={"user_id": "u4"})
            waited = time.perf_counter() - t
            gate.release.set()
            return refused, waited, await asyncio.gather(first, *queued)

    with running(app) as (_, url):
        refused, waited, served = asyncio.run(scenario(url))
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
    assert "already waiting" in refused.json()["detail"] and waited < 2
    assert [r.status_code for r in served] == [200, 200, 200]


def test_shutdown_finishes_the_request_being_scored_and_the_queued_ones(model, monkeypatch):
    gate = Gate(model, monkeypatch)
    app = create_app(model, ServeSettings(max_batch=1))
    results: dict[str, int] = {}

    def ask(url: str, user: str) -> None:
        results[user] = httpx.post(url + "/recommend", json={"user_id": user}, timeout=30).status_code

    with running(app) as (server, url):
        threads = [threading.Thread(target=ask, args=(url, "u1"))]
        threads[0].start()
        assert gate.entered.wait(10)
        threads.append(threading.Thread(target=ask, args=(url, "u2")))
        threads[1].start()
        while httpx.get(url + "/health").json()["queue_depth"] < 1:
            time.sleep(0.01)
        server.should_exit = True  # what SIGINT/SIGTERM do
        time.sleep(0.3)
        assert not results  # still in flight
        gate.release.set()
        for t in threads:
            t.join(10)
    assert results == {"u1": 200, "u2": 200}


def test_a_model_error_about_one_query_fails_only_that_request(model, monkeypatch):
    """The batch is retried query by query, so the other requests of the batch are answered."""
    from llmrec.api import QueryError

    real = model.answer

    def picky(queries, batch_size=256):
        if any(q.user == "u5" for q in queries):
            raise QueryError("this model refuses u5", field="user_id")
        return real(queries, batch_size)

    monkeypatch.setattr(model, "answer", picky)

    async def fire(url: str):
        async with httpx.AsyncClient(base_url=url) as http:
            return await asyncio.gather(
                *[http.post("/recommend", json={"user_id": f"u{i}"}) for i in range(4, 8)]
            )

    with running(create_app(model, ServeSettings(max_wait_ms=300))) as (_, url):
        codes = [r.status_code for r in asyncio.run(fire(url))]
    assert codes == [200, 422, 200, 200]


def test_candidates_from_another_run_are_re_ranked(run, model):
    """--candidates-from: the popularity run's top items per request, re-ranked by SASRec."""
    eval_ = {"ctr": False, "full_ranking": False, "ks": [5]}
    pop = llmrec.train("popularity", data=str(run.parent / "ds"), out=run.parent / "pop", eval=eval_).dir
    both = llmrec.load(run, device="cpu", retriever=pop, retrieve=5)
    with TestClient(create_app(both), raise_server_exceptions=False) as c:
        r = c.post("/recommend", json={"user_id": "u4", "k": 3})
        health = c.get("/health").json()
    assert r.status_code == 200 and same(r.json()["items"], _rows(both.recommend(user_ids=["u4"], k=3)))
    assert health["retriever"]["model"] == "popularity" and health["retriever"]["candidates"] == 5


# ----------------------------------------------------------------------------- bad input: 4xx naming the field

BAD = [
    ({"user_id": "nobody"}, 404, "user_id"),
    ({"history": ["i001", "nope"]}, 404, "history"),
    ({"user_id": "u1", "candidates": ["i001", "zzz"]}, 404, "candidates"),
    ({}, 422, "user_id/history"),
    ({"user_id": "u1", "history": ["i001"]}, 422, "user_id/history"),
    ({"history": []}, 422, "history"),
    ({"history": ["i001"] * 21}, 422, "history"),  # longer than max_history (20 in this fixture)
    ({"history": "i001"}, 422, "history"),
    ({"history": ["i001", 7]}, 422, "history[1]"),
    ({"user_id": 3}, 422, "user_id"),
    ({"user_id": "u1", "k": 0}, 422, "k"),
    ({"user_id": "u1", "k": MAX_K + 1}, 422, "k"),
    ({"user_id": "u1", "k": "5"}, 422, "k"),
    ({"user_id": "u1", "k": 2.5}, 422, "k"),
    ({"user_id": "u1", "k": True}, 422, "k"),
    ({"user_id": "u1", "exclude_history": "no"}, 422, "exclude_history"),
    ({"user_id": "u1", "candidates": []}, 422, "candidates"),
    ({"user_id": "u1", "candidates": ["i001", "i001"]}, 422, "candidates"),
    ({"user_id": "u1", "kk": 5}, 422, "kk"),
    ([1, 2], 422, "body"),
    ("just a string", 422, "body"),
    (None, 422, "body"),
]


@pytest.mark.parametrize("body,status,field", BAD, ids=[f"{s}-{f}-{i}" for i, (_, s, f) in enumerate(BAD)])
def test_bad_recommend_request_is_a_4xx_naming_the_field(client, body, status, field):
    r = client.post("/recommend", json=body)
    assert r.status_code == status, r.text
    assert r.json()["field"] == field and field in r.json()["detail"], r.json()


@pytest.mark.parametrize(
    "raw", [b"{bad json", b"", b"\xff\xfe\x00", b'{"user_id": "u1",}', b"[" * 5000, b"1e999999"]
)
def test_malformed_bodies_are_422_naming_the_body(client, raw):
    r = client.post("/recommend", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["field"] == "body", r.text


def test_bad_rank_item_and_route_requests(client):
    r = client.post("/rank", json={"user_id": "u1"})
    assert r.status_code == 422 and r.json()["field"] == "candidates"
    r = client.post("/rank", json={"user_id": "u1", "candidates": ["i001"], "k": 3})
    assert r.status_code == 422 and r.json()["field"] == "k"
    r = client.get("/items/i999")
    assert r.status_code == 404 and r.json()["field"] == "item_id" and "i999" in r.json()["detail"]
    r = client.get("/nowhere")
    assert r.status_code == 404 and r.json()["field"] == "path"
    r = client.get("/recommend")
    assert r.status_code == 405 and r.json()["field"] == "path"


def test_a_bug_is_a_logged_500_not_a_crash(model, monkeypatch, caplog):
    monkeypatch.setattr(model, "item", lambda item_id: 1 / 0)
    with TestClient(create_app(model), raise_server_exceptions=False) as c:
        r = c.get("/items/i001")
    assert r.status_code == 500 and "ZeroDivisionError" in r.json()["detail"]
    assert "internal error on GET /items/i001" in caplog.text


def test_deep_json_says_too_deep_and_a_non_utf8_body_still_says_not_utf8(client):
    """Regression: a 100,000-deep JSON body (plain ASCII) was answered 'malformed JSON (not UTF-8 text)'."""

    def post(raw: bytes):
        return client.post("/recommend", content=raw, headers={"content-type": "application/json"})

    limit = MAX_JSON_DEPTH
    too_deep = [b"[" * 100_000 + b"]" * 100_000, b'{"history": ' + b"[" * limit + b"]" * limit + b"}"]
    for raw in too_deep:
        r = post(raw)
        assert r.status_code == 422 and r.json()["field"] == "body", r.text
        assert f"nested too deeply (limit {limit} levels)" in r.json()["detail"], r.text
    r = post(b"[" * limit + b"]" * limit)  # at the limit: read, then refused for what it is (not an object)
    assert r.status_code == 422 and "nested" not in r.json()["detail"], r.text
    r = post(json.dumps({"user_id": "[" * 1000}).encode())  # brackets in a string are no nesting
    assert r.status_code == 404 and r.json()["field"] == "user_id", r.text
    for raw in (b"\xff\xfe\x00", b'{"user_id": "\xff"}', b"[" * 100_000 + b"\xff"):
        r = post(raw)
        assert r.status_code == 422 and "not UTF-8" in r.json()["detail"], (raw[:20], r.text)
    r = post(b'{"user_id": "u1", "k": ' + b"9" * 5000 + b"}")  # valid UTF-8 JSON Python will not read
    assert r.status_code == 422 and r.json()["field"] == "body", r.text
    assert "cannot read" in r.json()["detail"] and "UTF-8" not in r.json()["detail"], r.text


# ----------------------------------------------------------------------------- files: read at start-up only


def test_the_service_never_reads_the_dataset_folder_after_start_up(run, model, tmp_path):
    """Regression: the sequences table was read at the first user_id query, so a dataset folder deleted
    after start-up made it a 500 while /health said ok. Everything a query needs is read on loading."""
    data = shutil.copytree(run.parent / "ds", tmp_path / "ds")
    served = llmrec.load(run, device="cpu", data=data)
    with TestClient(create_app(served), raise_server_exceptions=False) as c:
        assert c.get("/health").json()["status"] == "ok"
        shutil.rmtree(data)
        r = c.post("/recommend", json={"user_id": "u3", "k": 5})
        assert r.status_code == 200 and same(r.json()["items"], _rows(model.recommend(user_ids=["u3"], k=5)))
        r = c.post("/rank", json={"user_id": "u4", "candidates": ["i001", "i002"]})
        assert r.status_code == 200, r.text
        r = c.post("/recommend", json={"history": ["i001", "i002"], "k": 3})
        assert r.status_code == 200, r.text
        assert c.get("/items/i007").json()["title"] == "Item 7"
        assert c.get("/health").json()["status"] == "ok"


GONE = "/srv/data/ds/features/clip.npy"


@pytest.mark.parametrize(
    "error",
    [
        FileNotFoundError(errno.ENOENT, "No such file or directory", GONE),
        LlmrecError("file missing from the dataset", file=GONE, hint="re-run 'llmrec prepare'"),
    ],
    ids=["OSError", "LlmrecError"],
)
def test_a_file_gone_while_answering_is_a_503_naming_it(model, monkeypatch, error):
    """A file a model reads while answering that vanished is the service unavailable, named: no 500."""

    def gone(*args, **kwargs):
        raise error

    monkeypatch.setattr(model.model, "score_all", gone)
    with TestClient(create_app(model), raise_server_exceptions=False) as c:
        answers = [c.post("/recommend", json={"user_id": "u3"})]
        monkeypatch.setattr(model, "item", gone)
        answers.append(c.get("/items/i001"))
    for r in answers:
        assert r.status_code == 503 and GONE in r.json()["detail"], r.text
        assert "internal error" not in r.json()["detail"]


# ----------------------------------------------------------------------------- limits: request heads


def raw_exchange(url: str, pieces: list[bytes]) -> tuple[bytes, int]:
    """Send ``pieces`` on one connection to the server at ``url`` (127.0.0.1), stopping once it answers;
    returns what it answered until it closed, and how many pieces were sent."""
    port = int(url.rsplit(":", 1)[1])
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        for piece in pieces:
            if select.select([sock], [], [], 0.05)[0]:
                break  # answered before the request was all sent
            try:
                sock.sendall(piece)
            except OSError:  # closed on us: read what it said
                break
            sent += 1
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks), sent


def _status_and_body(response: bytes) -> tuple[int, dict]:
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


def test_request_heads_past_the_limits_are_431_over_a_real_socket(model):
    """Regression: a 200 KB header and 5,000 headers were accepted. The server answers 431 as it parses,
    also a head that never ends (before it has all arrived); a normal request is still answered."""
    get = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
    with running(create_app(model)) as (_, url):
        big, _ = raw_exchange(url, [get + b"X-Big: " + b"a" * 200_000 + b"\r\n\r\n"])
        many, _ = raw_exchange(url, [get + b"".join(b"X-%d: a\r\n" % i for i in range(5000)) + b"\r\n"])
        endless, sent = raw_exchange(url, [get + b"X-Endless: "] + [b"a" * 16384] * 64)  # 1 MiB, no end
        fields = b"".join(b"X-%d: %s\r\n" % (i, b"a" * 100) for i in range(90))  # 92 fields, 9.5 KB
        fine, _ = raw_exchange(url, [get + fields + b"\r\n"])
    for response, option in ((big, "--max-header-bytes"), (many, "--max-headers"), (endless, "--max-header")):
        status, body = _status_and_body(response)
        assert status == 431 and body["field"] == "headers" and option in body["detail"], response[:300]
        assert b"connection: close" in response.lower()
    assert sent < 64, "the server read a head that never ends to its end"
    status, body = _status_and_body(fine)
    assert status == 200 and body["status"] == "ok"


def test_too_many_or_too_large_header_fields_are_431_from_the_app_itself(model):
    """The app's own check (whatever server runs it): the same limits, answered 431 naming the headers."""
    from llmrec.serve import header_fault

    app = create_app(model, ServeSettings(max_headers=20, max_header_bytes=2000))
    with TestClient(app, raise_server_exceptions=False) as c:
        ok = c.get("/health", headers={f"x-{i}": "a" for i in range(10)})
        many = c.post("/recommend", json={"user_id": "u1"}, headers={f"x-{i}": "a" for i in range(25)})
        big = c.get("/health", headers={"x-big": "a" * 2000})
    assert ok.status_code == 200, ok.text
    for r, option in ((many, "--max-headers"), (big, "--max-header-bytes")):
        assert r.status_code == 431 and r.json()["field"] == "headers", r.text
        assert option in r.json()["detail"] and "field 'headers'" in r.json()["detail"]
    assert header_fault(20, 2000, 20, 2000) is None  # at the limits: accepted
    assert "--max-headers" in header_fault(21, 10, 20, 2000)
    assert "--max-header-bytes" in header_fault(3, 2001, 20, 2000)


# ----------------------------------------------------------------------------- the command


def test_serve_options_are_checked():
    from llmrec.config import ConfigError
    from llmrec.serve import ServeConfig

    with pytest.raises(ConfigError, match="max_batch"):
        ServeConfig(run="r", max_batch=0)
    with pytest.raises(ConfigError, match="run"):
        ServeConfig()
    for limit in ("max_headers", "max_header_bytes"):
        with pytest.raises(ConfigError, match=limit):
            ServeConfig(run="r", **{limit: 0})
    assert ServeConfig(run="r", batching=False).settings().batch_limit == 1
    assert np.isfinite(ServeSettings().max_wait_ms)


def test_bench_serve_runs_two_llmrec_serve_and_stops_them_with_sigterm(run, tmp_path, capsys):
    """The command end to end: two ``llmrec serve`` subprocesses answer, then exit 0 on SIGTERM after a
    graceful stop; the table, JSON and plot are written."""
    from llmrec.cli import main

    out = tmp_path / "bench"
    argv = [
        "experiments",
        "bench-serve",
        str(run),
        "--requests",
        "6",
        "--rounds",
        "2",
        "--concurrency",
        "1",
        "3",
    ]
    assert main([*argv, "--warmup", "0", "--device", "cpu", "--threads", "1", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| 3 | on | 6 |" in table and "| 3 | off | 6 |" in table
    result = json.loads((out / "bench_serve.json").read_text())
    assert [(p["concurrency"], p["batching"]) for p in result["points"]] == [
        (1, "on"), (1, "off"), (3, "on"), (3, "off"),
    ]  # fmt: skip
    assert all(p["5xx"] == 0 and p["non_2xx"] == 0 for p in result["points"])
    assert result["server_exit"] == {"on": 0, "off": 0}
    log = (out / "serve-on.log").read_text()
    assert "SIGTERM: finishing the requests in flight" in log and "stopped: 12 requests in" in log
    assert (out / "bench_serve.png").stat().st_size > 0 and (out / "bench_serve.md").exists()


def test_load_generator_reopens_a_connection_the_server_closed_while_idle():
    """Regression: I-LLMRec's slow batches left load-generator connections idle past uvicorn's keep-alive
    timeout; the next request on such a connection read nothing and the bench stopped (status 0)."""
    import asyncio

    from llmrec.experiments.serve_bench import Connection

    async def main() -> list[tuple[int, bytes]]:
        async def answer_once_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
            writer.close()  # as a server does with an idle keep-alive connection

        server = await asyncio.start_server(answer_once_then_close, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        conn = Connection("127.0.0.1", port)
        try:
            return [await conn.request("GET", "/health") for _ in range(3)]
        finally:
            await conn.close()
            server.close()
            await server.wait_closed()

    assert asyncio.run(main()) == [(200, b"ok")] * 3


def test_rank_with_no_candidates_names_the_candidates_field(client):
    """Regression: POST /rank with "candidates": [] answered 422 naming field 'k' (k = len(candidates) = 0)."""
    r = client.post("/rank", json={"user_id": "u1", "candidates": []})
    assert r.status_code == 422 and r.json()["field"] == "candidates", r.json()


def test_serve_help_documents_the_header_limits(capsys):
    from llmrec.cli import main

    assert main(["serve", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--max-headers MAX_HEADERS" in out and "--max-header-bytes MAX_HEADER_BYTES" in out
    assert "answered 431 (Request Header Fields Too Large) (default: 100" in out and "(default: 16384" in out
