"""The service as a FastAPI app around a loaded model (:func:`create_app`): its lifespan runs the
:class:`~llmrec.serve.batcher.Batcher`; its routes turn each request into a validated ``Query`` (in the
handler, so bad input never reaches the model) and submit it; its error handlers answer bad input with a
4xx whose JSON names the field, so that a 500 only ever means a bug (its traceback is logged)."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from llmrec._version import __version__
from llmrec.errors import LlmrecError
from llmrec.serve.batcher import Batcher, Overloaded
from llmrec.serve.limits import MAX_JSON_DEPTH, HeaderLimits, JsonTooDeep, _JsonRoute
from llmrec.serve.schemas import MAX_K, ErrorBody, RankRequest, Recommendations, RecommendRequest
from llmrec.serve.settings import ServeSettings

if TYPE_CHECKING:
    from llmrec.api import Model, Query, QueryError

log = logging.getLogger(__package__)  # the service's one logger, "llmrec.serve"

#: the error answers the routes document in the OpenAPI schema
_ERRORS = {
    404: {"model": ErrorBody, "description": "unknown user or item id"},
    422: {"model": ErrorBody, "description": "invalid request (the field is named)"},
    431: {"model": ErrorBody, "description": "too many or too large header fields (field 'headers')"},
    503: {
        "model": ErrorBody,
        "description": "queue full or shutting down: retry after Retry-After s; or a file the service "
        "reads is unavailable (named)",
    },
}


def create_app(model: Model, settings: ServeSettings | None = None) -> FastAPI:
    """The service around an already loaded ``model`` (see :mod:`llmrec.serve`)."""
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
    _add_error_handlers(app)
    _add_routes(app, model, settings, state)
    return app


# ----------------------------------------------------------------------------- errors: 4xx naming the field, never 500


def _add_error_handlers(app: FastAPI) -> None:
    """Bad input a 4xx naming the field, a full queue a 503 with Retry-After, a file gone a 503 naming it;
    a 500 only for a model that cannot answer, or a bug (logged with its traceback)."""
    from llmrec.api import QueryError

    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(QueryError, _bad_query)
    app.add_exception_handler(LlmrecError, _refused)
    app.add_exception_handler(OSError, _unavailable)
    app.add_exception_handler(Overloaded, _overloaded)
    app.add_exception_handler(HTTPException, _http)
    app.add_exception_handler(Exception, _bug)


def _error(status: int, detail: str, field: str | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse({"detail": detail, "field": field, **extra}, status_code=status)


def _location(loc: tuple[Any, ...]) -> str:
    """pydantic's ``("body", "history", 3)`` -> ``history[3]``; the body itself -> ``body``."""
    parts = list(loc[1:] if loc and loc[0] in ("body", "path", "query") else loc)
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or (str(loc[0]) if loc else "body")


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


async def _bad_query(request: Request, exc: QueryError) -> JSONResponse:
    return _error(exc.status, str(exc), exc.field)


async def _refused(request: Request, exc: LlmrecError) -> JSONResponse:
    if exc.field is None and exc.file is not None:  # a file the model reads is missing or damaged
        log.error("unavailable: %s", exc)
        return _error(503, f"the service cannot read a file it needs: {exc}")
    if exc.field is None:  # not about the request: a server-side problem
        log.error("model error: %s", exc)
        return _error(500, f"the model could not answer: {exc}")
    return _error(422, str(exc), exc.field)


async def _unavailable(request: Request, exc: OSError) -> JSONResponse:
    # e.g. a file read while answering that was moved or deleted since start-up: the service is
    # unavailable until it is back (or restarted), which is no bug of the request nor of the code
    log.error("unavailable on %s %s: %s", request.method, request.url.path, exc)
    where = f"{exc.filename}: " if exc.filename is not None else ""
    reason = exc.strerror or str(exc) or type(exc).__name__
    return _error(503, f"the service cannot read a file it needs: {where}{reason}")


async def _overloaded(request: Request, exc: Overloaded) -> JSONResponse:
    response = _error(503, f"{exc}; retry after 1 s")
    response.headers["Retry-After"] = "1"
    return response


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


async def _bug(request: Request, exc: Exception) -> JSONResponse:
    log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
    return _error(500, f"internal error ({type(exc).__name__}); the traceback is in the server log")


# ----------------------------------------------------------------------------- endpoints


def _add_routes(app: FastAPI, model: Model, settings: ServeSettings, state: dict[str, Batcher]) -> None:
    """/recommend and /rank (through the batcher the lifespan puts in ``state``), /items/{id}, /health."""
    from llmrec.api import QueryError

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

    @app.post("/recommend", response_model=Recommendations, responses=_ERRORS)
    async def recommend(body: RecommendRequest) -> JSONResponse:
        """The top-k items for a known user or an ad-hoc history (history items excluded by default)."""
        start = time.perf_counter()
        q = query(body.user_id, body.history, body.k, body.exclude_history, body.candidates)
        return answered(await state["batcher"].submit(q), start)

    @app.post("/rank", response_model=Recommendations, responses=_ERRORS)
    async def rank(body: RankRequest) -> JSONResponse:
        """Every candidate scored for the user and ranked, best first (history items included)."""
        start = time.perf_counter()
        q = query(body.user_id, body.history, len(body.candidates), False, body.candidates)
        return answered(await state["batcher"].submit(q), start)

    @app.get("/items/{item_id}", responses={404: _ERRORS[404], 422: _ERRORS[422]})
    async def item(item_id: str) -> dict[str, Any]:
        """An item's row of the catalog."""
        return model.item(item_id)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """What is served, and how busy it is."""
        return _health(model, settings, state.get("batcher"))


def _health(model: Model, settings: ServeSettings, batcher: Batcher | None) -> dict[str, Any]:
    """/health's answer (``batcher`` is None before the lifespan starts it)."""
    info = model.info()
    batches, served = (batcher.batches, batcher.served) if batcher else (0, 0)
    return {
        "status": "stopping" if batcher is None or batcher.closing else "ok",
        "pid": os.getpid(),  # the worker process that answered (llmrec serve --workers N)
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
