"""``llmrec serve``: a trained run behind HTTP (FastAPI + uvicorn), answering concurrent requests in
micro-batches.

Request -> validated ``Query`` (in the handler, so bad input never reaches the model) -> bounded queue ->
one worker that takes up to ``max_batch`` queued queries, waiting at most ``max_wait_ms`` after the first
one arrived, and answers them with ONE ``Model.answer`` call in a thread -> each request's future.
A full queue is answered 503 with ``Retry-After`` at once; bad input is a 4xx whose JSON names the
field; a 500 only ever means a bug (its traceback is logged). On SIGINT/SIGTERM uvicorn stops accepting,
in-flight requests finish, then the worker drains its queue and exits (FastAPI lifespan).

Bounds: a request head with more than ``max_headers`` header fields or ``max_header_bytes`` of them is
answered 431 (by the server as it parses, :class:`HeaderLimitedProtocol`, and by the app,
:class:`HeaderLimits`); a JSON body nested more than :data:`MAX_JSON_DEPTH` levels is a 422 saying so.
Everything a query reads is in memory once the model is loaded (:class:`llmrec.api.Model`), so the
service never reads its dataset folder after start-up; a file that a model still reads while answering
and that has gone is a 503 naming it.

The model loads once: :func:`create_app` takes a loaded :class:`llmrec.api.Model` (tests pass their own),
:func:`serve` loads the run and runs uvicorn. ``llmrec bench-serve`` (experiments/serve_bench.py) measures
it with batching on and off.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import logging
import re
import signal
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from llmrec._version import __version__
from llmrec.config import ConfigError, check_ranges, option
from llmrec.devices import DEVICE_HELP, DTYPES
from llmrec.errors import LlmrecError

if TYPE_CHECKING:
    from llmrec.api import Model, Query

log = logging.getLogger(__name__)

#: the largest ``k`` a request may ask for (a bound in the OpenAPI schema)
MAX_K = 1000


@dataclass
class ServeSettings:
    """How the service batches and what it accepts (the part of ``llmrec serve``'s options that
    :func:`create_app` uses)."""

    max_batch: int = option(32, "most queued requests answered by one model call", ge=1)
    max_wait_ms: float = option(5.0, "longest the first request of a batch waits for others (ms)", ge=0)
    queue_size: int = option(
        256, "most requests waiting for the model; one more is answered 503 with Retry-After", ge=1
    )
    max_history: int = option(1000, "longest ad-hoc history accepted (item ids)", ge=1)
    batching: bool = option(True, "micro-batching (--no-batching: one request per model call, to compare)")
    max_headers: int = option(
        100,
        "most header fields a request may send; one more is answered 431 (Request Header Fields Too Large)",
        ge=1,
    )
    max_header_bytes: int = option(
        16 * 1024,
        "most bytes of header names and values a request may send; more is answered 431 and the server stops "
        "reading a request head that grows past it (plus 8 KiB for the request line)",
        ge=1,
    )

    def __post_init__(self) -> None:
        check_ranges(self)

    @property
    def batch_limit(self) -> int:
        """The most requests one model call answers: max_batch, or 1 without batching."""
        return self.max_batch if self.batching else 1


@dataclass
class ServeConfig(ServeSettings):
    """``llmrec serve``: which run, where it listens, how it batches."""

    run: str = option("", "run directory of a trained model")
    host: str = option("127.0.0.1", "address to listen on (0.0.0.0: every interface)")
    port: int = option(8000, "TCP port (0: any free one)", ge=0, le=65535)
    device: str = option("auto", DEVICE_HELP)
    dtype: str = option("auto", "LLM backbone weights: " + " | ".join(DTYPES) + " (auto: bf16 on CUDA)")
    data: str | None = option(None, "the run's dataset moved: its new folder (checksum verified)")
    candidates_from: str | None = option(
        None, "a run on the same dataset whose top items per request this model re-ranks"
    )
    candidates: int = option(100, "how many items --candidates-from retrieves per request", ge=1)
    threads: int | None = option(None, "torch CPU threads (default: torch's choice)", ge=1)
    access_log: bool = option(False, "log every request (costs throughput)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.run:
            raise ConfigError("run: the run directory of a trained model is required")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {list(DTYPES)}, got {self.dtype!r}")

    def settings(self) -> ServeSettings:
        names = [f.name for f in dataclasses.fields(ServeSettings)]
        return ServeSettings(**{n: getattr(self, n) for n in names})


class Overloaded(Exception):
    """The queue is full (or the service is stopping): answered 503 with Retry-After."""


# ----------------------------------------------------------------------------- the micro-batcher


@dataclass
class _Pending:
    query: Query
    future: asyncio.Future
    arrived: float  # loop time


class Batcher:
    """One worker task answering queued queries in batches with ``Model.answer`` in a thread."""

    def __init__(self, model: Model, settings: ServeSettings) -> None:
        self.model, self.settings = model, settings
        self.pending: collections.deque[_Pending] = collections.deque()
        self.batches = 0  # model.answer calls made by the worker
        self.served = 0  # requests those calls answered
        self.model_seconds = 0.0  # time spent in those calls
        self.closing = False
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="llmrec-model")
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="llmrec-batcher")

    async def close(self) -> None:
        """Stop taking requests, answer every queued one, stop the worker."""
        self.closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
        self._executor.shutdown(wait=True)

    async def submit(self, query: Query) -> list[dict[str, Any]]:
        """The query's ranked items, once the worker has answered its batch."""
        if self.closing:
            raise Overloaded("the service is shutting down")
        if len(self.pending) >= self.settings.queue_size:
            raise Overloaded(f"{len(self.pending)} requests are already waiting for the model")
        loop = asyncio.get_running_loop()
        item = _Pending(query, loop.create_future(), loop.time())
        self.pending.append(item)
        self._wake.set()
        return await item.future

    async def _next_batch(self) -> list[_Pending]:
        """Up to batch_limit queued requests, once the batch is full or its first request has waited
        max_wait_ms (requests that queued while the model was busy have waited already: no extra wait)."""
        loop, limit = asyncio.get_running_loop(), self.settings.batch_limit
        while not self.pending:
            if self.closing:
                return []
            self._wake.clear()
            await self._wake.wait()
        deadline = self.pending[0].arrived + self.settings.max_wait_ms / 1000
        while len(self.pending) < limit and not self.closing:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), remaining)
        batch = []
        while self.pending and len(batch) < limit:
            item = self.pending.popleft()
            if not item.future.done():  # a request whose client went away is dropped
                batch.append(item)
        return batch

    async def _run(self) -> None:
        try:
            while True:
                batch = await self._next_batch()
                if batch:
                    await self._serve(batch)
                elif self.closing and not self.pending:
                    return
        finally:  # cancelled (a forced exit): no request is left waiting for ever
            for item in self.pending:
                if not item.future.done():
                    item.future.set_exception(Overloaded("the service stopped"))

    async def _serve(self, batch: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        try:
            results = await loop.run_in_executor(self._executor, self._answer, [b.query for b in batch])
        except Exception as e:  # never let the worker die: each request of the batch reports the error
            results = [e] * len(batch)
        self.model_seconds += time.perf_counter() - start
        self.batches += 1
        self.served += len(batch)
        for item, result in zip(batch, results):
            if item.future.done():  # its client went away
                continue
            if isinstance(result, BaseException):
                item.future.set_exception(result)
            else:
                item.future.set_result(result)

    def _answer(self, queries: list[Query]) -> list[list[dict[str, Any]] | BaseException]:
        """One model call for the batch; if the model refuses it (an LlmrecError about one query), each
        query is answered alone so that only the offending request fails."""
        try:
            return list(self.model.answer(queries))
        except LlmrecError as e:
            if len(queries) == 1:
                return [e]
        out: list[list[dict[str, Any]] | BaseException] = []
        for q in queries:
            try:
                out.append(self.model.answer([q])[0])
            except LlmrecError as e:
                out.append(e)
        return out


# ----------------------------------------------------------------------------- limits: request heads, JSON bodies

#: the deepest nesting of arrays/objects a JSON body may have (a request needs 2: an object of id lists)
MAX_JSON_DEPTH = 64
#: room for the request line (method, target, version) in the raw head the server buffers
REQUEST_LINE_BYTES = 8 * 1024
#: how long a connection answered 431 stays half-open, dropping what the client still sends, so that the
#: client reads the answer instead of a reset (a close with unread data in the socket resets it)
LINGER_SECONDS = 2.0

_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\Z)', re.S)


class JsonTooDeep(ValueError):
    """A JSON body nested deeper than :data:`MAX_JSON_DEPTH` (answered 422 naming the body)."""


def json_depth(text: str) -> int:
    """The deepest nesting of arrays and objects in JSON ``text``, brackets inside strings not counted.
    Linear and without recursion: a body of 100,000 '[' is measured here, where Python's recursive parser
    would fail with a RecursionError."""
    skeleton = np.frombuffer(_JSON_STRING.sub("", text).encode("utf-8", "surrogatepass"), np.uint8)
    steps = np.isin(skeleton, (ord("["), ord("{"))).astype(np.int64) - np.isin(skeleton, (ord("]"), ord("}")))
    return int(steps.cumsum().max(initial=0))


def parse_json(body: bytes) -> Any:
    """A request body as JSON, as ``json.loads`` reads bytes (UTF-8, or UTF-16/32 by their first bytes),
    nested at most :data:`MAX_JSON_DEPTH` levels. Raises ``UnicodeDecodeError`` (not text),
    :class:`JsonTooDeep`, ``json.JSONDecodeError`` (malformed) or ``ValueError`` (e.g. an integer of more
    than 4,300 digits)."""
    text = body.decode(json.detect_encoding(body), "surrogatepass")
    opening = text.count("[") + text.count("{")  # the usual body has a few: no deeper than that
    if opening > MAX_JSON_DEPTH and (depth := json_depth(text)) > MAX_JSON_DEPTH:
        raise JsonTooDeep(f"{depth} levels")
    return json.loads(text)


class _JsonRequest(Request):
    """FastAPI reads a JSON body with ``request.json()``: this one bounds the nesting first."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = parse_json(await self.body())
        return self._json


class _JsonRoute(APIRoute):
    """Routes whose handlers see a :class:`_JsonRequest` (FastAPI's documented custom-route hook)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            return await handler(_JsonRequest(request.scope, request.receive))

        return route


def header_fault(count: int, size: int, max_headers: int, max_header_bytes: int) -> str | None:
    """Why a request head with ``count`` header fields of ``size`` bytes (names and values) is refused
    (answered 431), or None. The middleware applies it to a whole head, the server to each head as it is
    parsed: the same rule, so either answers alike."""
    if count > max_headers:
        return f"more than the {max_headers} header fields this service accepts (llmrec serve --max-headers)"
    if size > max_header_bytes:
        return (
            f"header names and values over the {max_header_bytes} bytes this service accepts "
            "(llmrec serve --max-header-bytes)"
        )
    return None


def _too_large_body(fault: str) -> bytes:
    body = {"detail": f"field 'headers': {fault}", "field": "headers"}
    return json.dumps(body, separators=(",", ":")).encode()


class HeaderLimits:
    """ASGI middleware: a request with too many or too large header fields is answered 431 before any
    handler runs (whatever server runs the app; under ``llmrec serve`` the server refuses it earlier)."""

    def __init__(self, app: ASGIApp, max_headers: int, max_header_bytes: int) -> None:
        self.app, self.max_headers, self.max_header_bytes = app, max_headers, max_header_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = scope["headers"]
            size = sum(len(name) + len(value) for name, value in headers)
            fault = header_fault(len(headers), size, self.max_headers, self.max_header_bytes)
            if fault is not None:
                response = Response(_too_large_body(fault), 431, media_type="application/json")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


# ----------------------------------------------------------------------------- the app


# request and response bodies: strict (no coercion: "10" is not a k), an unknown key is an error
_STRICT = ConfigDict(extra="forbid", strict=True)
_USER_ID = Field(None, description="a user of the run's dataset: their whole sequence is the history")
_HISTORY = Field(None, description="an ad-hoc history of item ids, oldest first (instead of user_id)")


class RecommendRequest(BaseModel):
    """Give exactly one of user_id or history."""

    model_config = _STRICT
    user_id: str | None = _USER_ID
    history: list[str] | None = _HISTORY
    k: int = Field(10, ge=1, le=MAX_K, description="how many items")
    exclude_history: bool = Field(True, description="never recommend an item of the history")
    candidates: list[str] | None = Field(None, description="only rank these item ids (default: the catalog)")


class RankRequest(BaseModel):
    """Give exactly one of user_id or history, and the candidates to score."""

    model_config = _STRICT
    user_id: str | None = _USER_ID
    history: list[str] | None = _HISTORY
    candidates: list[str] = Field(min_length=1, description="item ids to score, each once")


class ScoredItem(BaseModel):
    item_id: str
    title: str
    score: float


class Recommendations(BaseModel):
    items: list[ScoredItem] = Field(description="best first")
    model: str
    took_ms: float = Field(description="time spent in the service, queueing included")


class ErrorBody(BaseModel):
    detail: str = Field(description="what is wrong, where, and what to do")
    field: str | None = Field(None, description="the request field at fault")


def _error(status: int, detail: str, field: str | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse({"detail": detail, "field": field, **extra}, status_code=status)


def _location(loc: tuple[Any, ...]) -> str:
    """pydantic's ``("body", "history", 3)`` -> ``history[3]``; the body itself -> ``body``."""
    parts = list(loc[1:] if loc and loc[0] in ("body", "path", "query") else loc)
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or (str(loc[0]) if loc else "body")


def create_app(model: Model, settings: ServeSettings | None = None) -> FastAPI:
    """The service around an already loaded ``model`` (see the module docstring)."""
    from llmrec.api import QueryError

    settings = settings or ServeSettings()
    state: dict[str, Batcher] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher = Batcher(model, settings)
        batcher.start()
        state["batcher"] = batcher
        log.info(
            "serving %s (%s) with micro-batching %s",
            model.name,
            model.run,
            f"up to {settings.max_batch} per call, {settings.max_wait_ms:g} ms wait"
            if settings.batching
            else "off",
        )
        try:
            yield
        finally:
            await batcher.close()  # uvicorn calls this once in-flight requests are answered
            log.info("stopped: %d requests in %d model calls", batcher.served, batcher.batches)

    errors = {
        404: {"model": ErrorBody, "description": "unknown user or item id"},
        422: {"model": ErrorBody, "description": "invalid request (the field is named)"},
        431: {"model": ErrorBody, "description": "too many or too large header fields (field 'headers')"},
        503: {
            "model": ErrorBody,
            "description": "queue full or shutting down: retry after Retry-After s; or a file the service "
            "reads is unavailable (named)",
        },
    }
    app = FastAPI(
        title="llmrec",
        version=__version__,
        description=f"Recommendations from {model.name} ({model.run}).",
        lifespan=lifespan,
    )
    app.router.route_class = _JsonRoute  # before the routes below: their JSON bodies are depth-bounded
    app.add_middleware(
        HeaderLimits, max_headers=settings.max_headers, max_header_bytes=settings.max_header_bytes
    )
    app.state.llmrec_settings = settings  # server_config() bounds request heads in the server alike

    # ------------------------------------------------------------- errors: 4xx naming the field, never 500
    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for e in exc.errors():
            loc = tuple(e.get("loc", ()))
            if e.get("type") == "json_invalid":
                pos = loc[1] if len(loc) > 1 else "?"
                problems.append(("body", f"malformed JSON at character {pos}: {e.get('msg')}"))
            else:
                problems.append((_location(loc), str(e.get("msg", "invalid"))))
        field, message = problems[0] if problems else ("body", "invalid request")
        return _error(
            422,
            f"field '{field}': {message}",
            field,
            errors=[{"field": f, "message": m} for f, m in problems],
        )

    @app.exception_handler(QueryError)
    async def _bad_query(request: Request, exc: QueryError) -> JSONResponse:
        return _error(exc.status, str(exc), exc.field)

    @app.exception_handler(LlmrecError)
    async def _refused(request: Request, exc: LlmrecError) -> JSONResponse:
        if exc.field is None and exc.file is not None:  # a file the model reads is missing or damaged
            log.error("unavailable: %s", exc)
            return _error(503, f"the service cannot read a file it needs: {exc}")
        if exc.field is None:  # not about the request: a server-side problem
            log.error("model error: %s", exc)
            return _error(500, f"the model could not answer: {exc}")
        return _error(422, str(exc), exc.field)

    @app.exception_handler(OSError)
    async def _unavailable(request: Request, exc: OSError) -> JSONResponse:
        # e.g. a file read while answering that was moved or deleted since start-up: the service is
        # unavailable until it is back (or restarted), which is no bug of the request nor of the code
        log.error("unavailable on %s %s: %s", request.method, request.url.path, exc)
        where = f"{exc.filename}: " if exc.filename is not None else ""
        reason = exc.strerror or str(exc) or type(exc).__name__
        return _error(503, f"the service cannot read a file it needs: {where}{reason}")

    @app.exception_handler(Overloaded)
    async def _overloaded(request: Request, exc: Overloaded) -> JSONResponse:
        response = _error(503, f"{exc}; retry after 1 s")
        response.headers["Retry-After"] = "1"
        return response

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        status, detail, field = exc.status_code, str(exc.detail), None
        if status == 404:
            detail, field = f"no endpoint {request.url.path!r}; see /docs", "path"
        elif status == 405:
            detail, field = f"{request.method} is not allowed on {request.url.path!r}; see /docs", "path"
        elif status == 400 and "parsing the body" in detail:  # what request.json() raised is the cause
            status, field, cause = 422, "body", exc.__cause__
            if isinstance(cause, UnicodeDecodeError):
                detail = "field 'body': malformed JSON (not UTF-8 text); send a UTF-8 JSON object"
            elif isinstance(cause, JsonTooDeep | RecursionError):
                detail = (
                    f"field 'body': JSON nested too deeply (limit {MAX_JSON_DEPTH} levels); "
                    "a request is one object of fields and id lists"
                )
            else:
                reason = str(cause).split(":")[0] if cause is not None and str(cause) else "unreadable"
                detail = f"field 'body': JSON this service cannot read ({reason})"
        response = _error(status, detail, field)
        response.headers.update(exc.headers or {})
        return response

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        return _error(500, f"internal error ({type(exc).__name__}); the traceback is in the server log")

    # ------------------------------------------------------------- endpoints
    def query(user_id: Any, history: Any, k: int, exclude_history: bool, candidates: Any) -> Query:
        if history is not None and len(history) > settings.max_history:
            raise QueryError(
                f"has {len(history)} items, more than the {settings.max_history} this service accepts",
                field="history",
                hint="send the most recent items",
            )
        return model.query(user_id, history, k, exclude_history, candidates)  # the retriever's checks too

    def answered(items: list[dict[str, Any]], start: float) -> JSONResponse:
        took = (time.perf_counter() - start) * 1000
        return JSONResponse({"items": items, "model": model.name, "took_ms": round(took, 3)})

    @app.post("/recommend", response_model=Recommendations, responses=errors)
    async def recommend(body: RecommendRequest) -> JSONResponse:
        """The top-k items for a known user or an ad-hoc history (history items excluded by default)."""
        start = time.perf_counter()
        q = query(body.user_id, body.history, body.k, body.exclude_history, body.candidates)
        return answered(await state["batcher"].submit(q), start)

    @app.post("/rank", response_model=Recommendations, responses=errors)
    async def rank(body: RankRequest) -> JSONResponse:
        """Every candidate scored for the user and ranked, best first (history items included)."""
        start = time.perf_counter()
        q = query(body.user_id, body.history, len(body.candidates), False, body.candidates)
        return answered(await state["batcher"].submit(q), start)

    @app.get("/items/{item_id}", responses={404: errors[404]})
    async def item(item_id: str) -> dict[str, Any]:
        """An item's row of the catalog."""
        return model.item(item_id)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """What is served, and how busy it is."""
        batcher = state.get("batcher")
        info = model.info()
        batches, served = (batcher.batches, batcher.served) if batcher else (0, 0)
        return {
            "status": "stopping" if batcher is None or batcher.closing else "ok",
            "model": info["model"],
            "run": info["run"],
            "dataset": info["dataset"],
            "device": info["device"],
            "users": info["users"],
            "items": info["items"],
            "retriever": info["retriever"],
            "queue_depth": len(batcher.pending) if batcher else 0,
            "batches": batches,
            "served": served,
            "model_calls": model.calls,
            "mean_batch": round(served / batches, 3) if batches else None,
            "model_seconds": round(batcher.model_seconds, 6) if batcher else 0.0,
            "batching": {
                "enabled": settings.batching,
                "max_batch": settings.batch_limit,
                "max_wait_ms": settings.max_wait_ms,
                "queue_size": settings.queue_size,
            },
            "max_history": settings.max_history,
            "max_k": MAX_K,
        }

    return app


class GracefulServer(uvicorn.Server):
    """uvicorn's server, except that a SIGINT/SIGTERM it stopped on is not raised again once it has
    stopped (uvicorn re-raises it, so the process would die of the signal after a clean shutdown):
    ``llmrec serve`` then exits 0. A second SIGINT still forces the exit."""

    def handle_exit(self, sig: int, frame: Any) -> None:
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        else:
            log.info("%s: finishing the requests in flight, then stopping", signal.Signals(sig).name)
            self.should_exit = True


class HeaderLimitedProtocol(HttpToolsProtocol):
    """uvicorn's httptools HTTP/1.1 protocol with bounded request heads (httptools buffers a head of any
    size): a head with more than ``max_headers`` fields or ``max_header_bytes`` of names and values
    (:func:`header_fault`), or a head still unfinished past those bytes and a request line
    (:data:`REQUEST_LINE_BYTES`), is answered 431 as soon as it is seen, before the app or the whole head;
    the connection then closes. :func:`server_config` makes one with the app's limits."""

    max_headers = ServeSettings.max_headers
    max_header_bytes = ServeSettings.max_header_bytes

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._refused = False  # answered 431: whatever still arrives is dropped until the close
        self._heads = 0  # request heads begun on this connection
        self._head_open = False  # one has begun and its headers are not complete yet
        self._fields = self._field_bytes = self._raw = 0  # of the open head

    @property
    def head_allowance(self) -> int:
        """The most raw bytes of an unfinished head: the header fields with their ': ' and CRLF, and a
        request line."""
        return self.max_header_bytes + 4 * self.max_headers + REQUEST_LINE_BYTES

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        heads, was_open = self._heads, self._head_open
        super().data_received(data)
        if self._refused or not (was_open and self._head_open and heads == self._heads):
            return
        # all of ``data`` belongs to one unfinished head that httptools holds (a long header not yet
        # complete is not seen by on_header): bounded here
        self._raw += len(data)
        if self._raw > self.head_allowance:
            self._refuse(
                f"request line and headers over {self.head_allowance} bytes before their end (this service "
                f"accepts {self.max_header_bytes} bytes of header names and values, llmrec serve "
                "--max-header-bytes, and a request line)"
            )

    def on_message_begin(self) -> None:
        if self._refused:
            return
        super().on_message_begin()
        self._heads, self._head_open = self._heads + 1, True
        self._fields = self._field_bytes = self._raw = 0

    def on_url(self, url: bytes) -> None:
        if not self._refused:
            super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._refused:
            return
        self._fields += 1
        self._field_bytes += len(name) + len(value.rstrip(b" \t"))  # as the app sees it in the scope
        fault = header_fault(self._fields, self._field_bytes, self.max_headers, self.max_header_bytes)
        if fault is not None:
            self._refuse(fault)
            return
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if not self._refused:
            self._head_open = False
            super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self._refused:
            super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        if not self._refused:  # the parser choking on what follows a refused head: answered already
            super().send_400_response(msg)

    def _refuse(self, fault: str) -> None:
        """Answer 431 and close (after the answer of a pipelined request still in flight, if any)."""
        self._refused, self._head_open = True, False
        client = f"{self.client[0]}:{self.client[1]} - " if self.client else ""
        self.logger.warning("%s431 Request Header Fields Too Large: %s", client, fault)
        if self.cycle is not None and not self.cycle.response_complete:
            # a pipelined head behind a request still being answered: that answer finishes, then the
            # connection closes (the client retries what it pipelined after it, as HTTP/1.1 says)
            self.cycle.keep_alive = False
            return
        body = _too_large_body(fault)
        head = [b"HTTP/1.1 431 Request Header Fields Too Large\r\n"]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head.append(b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body))
        head.append(b"connection: close\r\n\r\n")
        self.transport.write(b"".join(head) + body)
        if self.transport.can_write_eof():
            self.transport.write_eof()  # the answer goes out; the client's rest is read and dropped
            self.loop.call_later(LINGER_SECONDS, self.transport.close)
        else:
            self.transport.close()


def server_config(app: FastAPI, host: str, port: int, **options: Any) -> uvicorn.Config:
    """uvicorn's configuration for an app of :func:`create_app`: its HTTP protocol bounds request heads
    with the app's own limits (``options``: uvicorn's others, e.g. ``log_level``)."""
    settings: ServeSettings = app.state.llmrec_settings
    protocol = type(
        "HeaderLimitedProtocol",
        (HeaderLimitedProtocol,),
        {"max_headers": settings.max_headers, "max_header_bytes": settings.max_header_bytes},
    )
    return uvicorn.Config(app, host=host, port=port, http=protocol, **options)


def serve(cfg: ServeConfig) -> None:
    """Load the run once, then answer HTTP requests until SIGINT/SIGTERM (graceful: in-flight requests
    finish)."""
    from llmrec.recommend import load_for

    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    model = load_for(cfg)
    log.info("loaded %r", model)
    app = create_app(model, cfg.settings())
    config = server_config(app, cfg.host, cfg.port, access_log=cfg.access_log, log_level="info")
    server = GracefulServer(config)
    try:
        server.run()
    except SystemExit as e:  # uvicorn exits when it cannot bind, after logging why
        if server.started:
            raise
        raise LlmrecError(
            f"cannot listen on {cfg.host}:{cfg.port} (exit {e.code}; uvicorn's reason is logged above)",
            hint="choose another --port, or stop what listens there",
        ) from None
