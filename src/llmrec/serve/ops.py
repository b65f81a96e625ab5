"""What an operator runs the service with: request ids, Prometheus metrics, API keys, CORS, logs with
timestamps (text or JSON lines) and the API docs from bundled files.

- **Request ids**: every request gets an ``X-Request-ID`` (the client's, when it sends a sane one, else a new
  one), returned in the answer's headers and attached to every log line written while it is answered.
- **Metrics**: ``/metrics`` in Prometheus' text format (:class:`Metrics`): requests by route, method and
  status, latency histograms by route, micro-batch sizes, queue depth, model seconds, catalog size; under
  ``--workers N``, of all the workers together (Prometheus' multiprocess mode).
- **API keys** (``--api-key-file``): every route but the probes (``/livez``, ``/readyz``) and the API docs
  wants ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``; anything else is a 401.
- **CORS** (``--cors-origins``): browsers on those origins may call the API (preflight answered).
- **Logs** (``--log-format json|text``): one line per record with an ISO-8601 timestamp, the logger, the
  level, the request id where there is one; ``json`` writes each as one JSON object.
- **Docs**: ``/docs`` is Swagger UI from the ``swagger-ui-bundle`` package's files, served by the service
  itself, so it renders on a machine without internet.
"""

from __future__ import annotations

import contextvars
import datetime
import hmac
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmrec.errors import LlmrecError

if TYPE_CHECKING:
    from fastapi import FastAPI

    from llmrec.serve.served import Served

#: the id of the request being answered ("-" outside one), for log lines
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("llmrec_request_id", default="-")

#: a client's own X-Request-ID is kept when it is this sane (else a new one is made)
_SANE_ID = re.compile(r"^[A-Za-z0-9._:/+=@-]{1,128}$")

#: routes anyone may call, with or without an API key: the probes and the API docs
OPEN_PATHS = ("/livez", "/readyz", "/docs", "/docs/oauth2-redirect", "/openapi.json")
OPEN_PREFIXES = ("/docs-assets/",)

#: the environment variable naming the folder where worker processes share their metrics (prometheus_client's)
MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"


# ----------------------------------------------------------------------------- request ids
class RequestIds:
    """ASGI middleware: take the request's ``X-Request-ID`` (when sane) or make one, expose it to the logs
    (:data:`request_id`) while the request is answered, and return it in the answer's headers."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = _header(scope, b"x-request-id")
        rid = given if given and _SANE_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        token = request_id.set(rid)

        async def send_with_id(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [
                    *[(k, v) for k, v in message["headers"] if k.lower() != b"x-request-id"],
                    (b"x-request-id", rid.encode()),
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id.reset(token)


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1").strip()
    return None


# ----------------------------------------------------------------------------- metrics
class Metrics:
    """The service's Prometheus metrics, in a registry of their own (one per app, so that several apps in one
    process, as in the tests, never share counts). :meth:`middleware` counts and times every request;
    the batcher reports each model call to :meth:`batch`.

    Under ``llmrec serve --workers N`` the parent sets ``PROMETHEUS_MULTIPROC_DIR`` (:data:`MULTIPROCESS_DIR`)
    before the workers start: each worker then writes its values to files there, and ``/metrics``, whichever
    worker answers it, reads all of them (prometheus_client's multiprocess mode): counters and histograms
    summed over the workers, the queue depth summed over the live ones, the catalog size their largest."""

    def __init__(self, served: Served) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.served = served
        self.multiprocess = bool(os.environ.get(MULTIPROCESS_DIR))
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "llmrec_requests", "HTTP requests answered", ["route", "method", "status"], registry=r
        )
        self.latency = Histogram(
            "llmrec_request_seconds",
            "time from a request's arrival to its answer",
            ["route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.batch_size = Histogram(
            "llmrec_batch_size",
            "queries answered by one model call",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self.model_seconds = Counter("llmrec_model_seconds", "time spent in model calls", registry=r)
        # gauges hold values set by refresh() (a callback gauge cannot be shared between processes)
        self.queue = Gauge(
            "llmrec_queue_depth", "requests waiting for a model", registry=r, multiprocess_mode="livesum"
        )
        self.items = Gauge(
            "llmrec_catalog_items",
            "items each served run can recommend",
            ["run"],
            registry=r,
            multiprocess_mode="max",
        )
        self.refresh()

    def refresh(self) -> None:
        """Set the gauges to this process's current queue depth and catalog sizes (at each scrape; under
        ``--workers N`` also after each request and model call, since the scrape may reach another worker)."""
        self.queue.set(self.served.queue_depth())
        for name, run in self.served.runs.items():
            self.items.labels(name).set(len(run.model.item_ids))

    def batch(self, size: int, seconds: float) -> None:
        """One model call answered ``size`` queries in ``seconds``."""
        self.batch_size.observe(size)
        self.model_seconds.inc(seconds)
        if self.multiprocess:
            self.refresh()

    def exposition(self) -> tuple[bytes, str]:
        """The metrics in Prometheus' text format (of every worker under ``--workers N``), and its content
        type."""
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess

        self.refresh()
        if not self.multiprocess:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST

    def middleware(self, app: Any) -> Any:
        """ASGI middleware counting and timing each HTTP request by its route's template (``/items/{item_id}``,
        not each id: the label set stays small; a path no route has counts as ``unmatched``)."""
        return after_each_request(app, self._count)

    def _count(self, scope: dict[str, Any], status: int, seconds: float) -> None:
        route = scope.get("route")
        name = getattr(route, "path", None) or "unmatched"
        self.requests.labels(name, scope["method"], str(status)).inc()
        self.latency.labels(name).observe(seconds)
        if self.multiprocess:
            self.refresh()


# ----------------------------------------------------------------------------- API keys
def read_api_keys(path: str | Path) -> frozenset[str]:
    """The keys of ``--api-key-file``: one per line; blank lines and ``#`` comments are skipped."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LlmrecError(
            "no such file", file=path, hint="--api-key-file takes a file of keys, one per line"
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise LlmrecError(f"unreadable ({e})", file=path, hint="one key per line, UTF-8 text") from None
    keys = frozenset(k.strip() for k in text.splitlines() if k.strip() and not k.strip().startswith("#"))
    if not keys:
        raise LlmrecError(
            "holds no key", file=path, hint="one key per line (blank lines and # comments skipped)"
        )
    short = sorted(k for k in keys if len(k) < 16)
    if short:
        raise LlmrecError(
            f"a key of {len(short[0])} characters is too easy to guess",
            file=path,
            hint="use keys of 16 characters or more, e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))'",
        )
    return keys


class ApiKeys:
    """ASGI middleware: a request to any route but :data:`OPEN_PATHS` needs one of ``keys`` in
    ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``; else a 401 naming the headers (the keys are
    compared in constant time). CORS preflights pass: a browser sends them without credentials."""

    def __init__(self, app: Any, keys: frozenset[str]) -> None:
        self.app, self.keys = app, [k.encode() for k in keys]

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if (
            scope["type"] != "http"
            or path in OPEN_PATHS
            or path.startswith(OPEN_PREFIXES)
            or (scope["method"] == "OPTIONS" and _header(scope, b"access-control-request-method"))
            or self._allowed(scope)
        ):
            await self.app(scope, receive, send)
            return
        from starlette.responses import JSONResponse

        answer = JSONResponse(
            {
                "detail": "a valid API key is required: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'",
                "field": "headers",
            },
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )
        await answer(scope, receive, send)

    def _allowed(self, scope: dict[str, Any]) -> bool:
        given = _header(scope, b"x-api-key")
        auth = _header(scope, b"authorization")
        if given is None and auth and auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        if not given:
            return False
        raw = given.encode()
        found = False
        for key in self.keys:  # every key compared, in constant time: no timing tells which is close
            found |= hmac.compare_digest(raw, key)
        return found


# ----------------------------------------------------------------------------- logs
class LogFormat(logging.Formatter):
    """One line per record: ``text`` (``2026-12-07T21:58:11.123Z INFO llmrec.serve [rid] message``) or
    ``json`` (``{"time": ..., "level": ..., "logger": ..., "request_id": ..., "message": ...}``)."""

    def __init__(self, kind: str = "text") -> None:
        super().__init__()
        self.kind = kind

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
        stamp = when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        rid = request_id.get()
        if self.kind == "json":
            line = {"time": stamp, "level": record.levelname, "logger": record.name, "message": message}
            if rid != "-":
                line["request_id"] = rid
            for key in ("method", "path", "status", "ms", "client"):
                if hasattr(record, key):
                    line[key] = getattr(record, key)
            return json.dumps(line, ensure_ascii=False)
        return f"{stamp} {record.levelname} {record.name} [{rid}] {message}"


def log_config(kind: str, level: str = "info") -> dict[str, Any]:
    """uvicorn's ``log_config`` (a :func:`logging.config.dictConfig` mapping) that writes the service's,
    uvicorn's and llmrec's records through :class:`LogFormat` to stderr."""
    handler = {"class": "logging.StreamHandler", "formatter": "llmrec", "stream": "ext://sys.stderr"}
    lvl = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"llmrec": {"()": LogFormat, "kind": kind}},
        "handlers": {"default": handler},
        "loggers": {
            "llmrec": {"handlers": ["default"], "level": lvl, "propagate": False},
            "uvicorn": {"handlers": ["default"], "level": lvl, "propagate": False},
            "uvicorn.error": {"level": lvl},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
        },
    }


class AccessLog:
    """ASGI middleware: one log line per request (``--access-log``), with its request id, method, path,
    status and milliseconds (the JSON format carries them as fields)."""

    def __init__(self, app: Any, logger: logging.Logger) -> None:
        self.log = logger
        self.app = after_each_request(app, self._record)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)

    def _record(self, scope: dict[str, Any], status: int, seconds: float) -> None:
        ms = round(seconds * 1000, 3)
        client = (scope.get("client") or ("-", 0))[0]
        fields = {
            "method": scope["method"],
            "path": scope["path"],
            "status": status,
            "ms": ms,
            "client": client,
        }
        self.log.info("%s %s %d %.1f ms", scope["method"], scope["path"], status, ms, extra=fields)


def after_each_request(app: Any, record: Callable[[dict[str, Any], int, float], None]) -> Any:
    """ASGI middleware calling ``record(scope, status, seconds)`` once each HTTP request is answered (status
    500 when the app raised before answering)."""

    async def wrapped(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        start, status = time.perf_counter(), [500]

        async def send_status(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await app(scope, receive, send_status)
        finally:
            record(scope, status[0], time.perf_counter() - start)

    return wrapped


# ----------------------------------------------------------------------------- docs from bundled files
def add_offline_docs(app: FastAPI) -> None:
    """``/docs``: Swagger UI from the ``swagger-ui-bundle`` package's files under ``/docs-assets/``, so the
    page renders without internet (FastAPI's own loads them from a CDN)."""
    from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
    from fastapi.responses import HTMLResponse
    from starlette.staticfiles import StaticFiles
    from swagger_ui_bundle import swagger_ui_path

    app.mount("/docs-assets", StaticFiles(directory=swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="llmrec API",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/docs-assets/favicon-32x32.png",
            oauth2_redirect_url="/docs/oauth2-redirect",
        )

    @app.get("/docs/oauth2-redirect", include_in_schema=False)
    async def oauth2_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()
