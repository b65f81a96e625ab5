"""The service as a FastAPI app around a loaded model (:func:`create_app`): its lifespan runs the
:class:`~llmrec.serve.batcher.Batcher`; its routes turn each request into a validated ``Query`` (in the
handler, so bad input never reaches the model) and submit it; its error handlers answer bad input with a
4xx whose JSON names the field, so that a 500 only ever means a bug (its traceback is logged)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi import Query as QueryParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from llmrec._version import __version__
from llmrec.errors import LlmrecError
from llmrec.serve.batcher import Batcher, Overloaded
from llmrec.serve.limits import MAX_JSON_DEPTH, HeaderLimits, JsonTooDeep, _JsonRoute
from llmrec.serve.ops import AccessLog, ApiKeys, Metrics, RequestIds, add_offline_docs, read_api_keys
from llmrec.serve.schemas import (
    MAX_K,
    AddedItems,
    AddItemsRequest,
    ErrorBody,
    RankRequest,
    Recommendations,
    RecommendRequest,
    SimilarItems,
)
from llmrec.serve.served import Run, Served
from llmrec.serve.settings import ServeSettings
from llmrec.serve.ui import add_ui_routes

if TYPE_CHECKING:
    from llmrec.api import Model, Query, QueryError

log = logging.getLogger(__package__)  # the service's one logger, "llmrec.serve"

#: the ``?model=`` of the GET routes: which served run answers
_MODEL_PARAM = QueryParam(None, max_length=200, description="a served run's name (default: the first)")

#: the error answers the routes document in the OpenAPI schema
_ERRORS = {
    403: {"model": ErrorBody, "description": "adding items is off (the service runs without --add-items)"},
    404: {"model": ErrorBody, "description": "unknown user or item id"},
    409: {"model": ErrorBody, "description": "an item id the catalog has, or a model that cannot add items"},
    422: {"model": ErrorBody, "description": "invalid request (the field is named)"},
    431: {"model": ErrorBody, "description": "too many or too large header fields (field 'headers')"},
    503: {
        "model": ErrorBody,
        "description": "queue full or shutting down: retry after Retry-After s; or a file the service "
        "reads is unavailable (named)",
    },
}


def create_app(
    model: Model | Mapping[str, Model], settings: ServeSettings | None = None, access_log: bool = False
) -> FastAPI:
    """The service around already loaded models (see :mod:`llmrec.serve`): one ``Model`` (named by its run
    folder), or a mapping name -> model whose first answers requests that name none. ``access_log``: one
    log line per request (with its request id)."""
    settings = settings or ServeSettings()
    keys = read_api_keys(settings.api_key_file) if settings.api_key_file else None  # a bad file: refused now
    served = Served.of(model, settings)
    metrics = Metrics(served) if settings.metrics else None

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        for run in served.runs.values():
            run.batcher = Batcher(run.model, settings, on_batch=metrics.batch if metrics else None)
            run.batcher.start()
            log.info(
                "serving %s: %s (%s) with micro-batching %s",
                run.name,
                run.model.name,
                run.model.run,
                f"up to {settings.max_batch} per call, {settings.max_wait_ms:g} ms wait"
                if settings.batching
                else "off",
            )
        # the warm-up runs once the server accepts connections: /livez answers meanwhile, /readyz says 503
        warming = asyncio.create_task(_warm_up(served)) if settings.warm_up else None
        served.ready = warming is None
        try:
            yield
        finally:
            served.ready = False
            if warming is not None and not warming.done():
                warming.cancel()
            for run in served.runs.values():
                assert run.batcher is not None
                await run.batcher.close()  # uvicorn calls this once in-flight requests are answered
                run.adder.close()
                done = (run.batcher.served, run.batcher.batches, run.name)
                log.info("stopped: %d requests in %d model calls (%s)", *done)

    names = ", ".join(f"{r.model.name} ({r.model.run})" for r in served.runs.values())
    app = FastAPI(
        title="llmrec",
        version=__version__,
        description=f"Recommendations from {names}.",
        lifespan=lifespan,
        docs_url=None,  # served from bundled files below: the CDN's are out of reach offline
        redoc_url=None,
    )
    app.router.route_class = _JsonRoute  # before the routes below: their JSON bodies are depth-bounded
    _add_middleware(app, settings, keys, metrics, access_log)
    app.state.llmrec_settings = settings  # server_config() bounds request heads in the server alike
    _add_error_handlers(app)
    _add_routes(app, served, settings)
    _add_probes(app, served, metrics)
    add_offline_docs(app)
    _add_item_route(app, served)
    add_ui_routes(app, served, page=settings.ui)
    return app


def _add_middleware(
    app: FastAPI,
    settings: ServeSettings,
    keys: frozenset[str] | None,
    metrics: Metrics | None,
    access_log: bool,
) -> None:
    """Header limits, API keys, CORS, the access log, metrics and request ids (outermost)."""
    app.add_middleware(
        HeaderLimits, max_headers=settings.max_headers, max_header_bytes=settings.max_header_bytes
    )
    if keys is not None:
        app.add_middleware(ApiKeys, keys=keys)
    if settings.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Content-Type", "Authorization", "X-API-Key", "X-Request-ID"],
            expose_headers=["X-Request-ID"],
            max_age=600,
        )
    if access_log:
        app.add_middleware(AccessLog, logger=log)
    if metrics is not None:
        app.add_middleware(metrics.middleware)  # type: ignore[arg-type]  # an ASGI app factory
    app.add_middleware(RequestIds)  # outermost: every log line of a request carries its id


async def _warm_up(served: Served) -> None:
    """One query answered by each served model before the service says it is ready (the first call of a
    model is often slow: lazy initialisation, caches); a failure is logged and /readyz stays 503 with the
    reason."""
    start = time.perf_counter()
    for run in served.runs.values():
        model = run.model
        try:
            if model.user_ids:  # a known user: every model can answer it (ad-hoc histories not all)
                q = model.query(user_id=model.user_ids[0], k=1)
            else:
                q = model.query(history=[model.item_ids[0]], k=1)
            await asyncio.get_running_loop().run_in_executor(None, model.answer, [q])
        except Exception as e:  # the service still runs; the probe says why it is not ready
            served.not_ready = f"the warm-up query failed: {type(e).__name__}: {e} (run {run.name})"
            log.error("%s", served.not_ready)
            return
    served.ready = True
    log.info("warm-up queries answered in %.3f s: ready", time.perf_counter() - start)


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


def _add_routes(app: FastAPI, served: Served, settings: ServeSettings) -> None:
    """/recommend and /rank (through the chosen run's batcher), /items/{id}, /items/{id}/similar, /health."""
    from llmrec.api import QueryError

    def query(run: Run, body: Any, k: int, exclude_history: bool, candidates: Any, **rules: Any) -> Query:
        if body.history is not None and len(body.history) > settings.max_history:
            raise QueryError(
                f"has {len(body.history)} items, more than the {settings.max_history} this service accepts",
                field="history",
                hint="send the most recent items",
            )
        # the retriever's checks too
        return run.model.query(body.user_id, body.history, k, exclude_history, candidates, **rules)

    async def answered(run: Run, q: Query, start: float) -> JSONResponse:
        assert run.batcher is not None
        items = await run.batcher.submit(q)
        took = (time.perf_counter() - start) * 1000
        rec_id = uuid.uuid4().hex  # joins later feedback (a click, a purchase) to this answer
        return JSONResponse(
            {
                "items": items,
                "model": run.model.name,
                "run": run.name,
                "took_ms": round(took, 3),
                "recommendation_id": rec_id,
            }
        )

    @app.post("/recommend", response_model=Recommendations, responses=_ERRORS)
    async def recommend(body: RecommendRequest) -> JSONResponse:
        """The top-k items for a known user or an ad-hoc history (history items excluded by default), among
        the items its rules let through (``include``, ``exclude``, ``exclude_items``): k items whenever k
        items pass. ``model`` picks a served run (default: the first)."""
        start, run = time.perf_counter(), served.pick(body.model)
        rules = {"include": body.include, "exclude": body.exclude, "exclude_items": body.exclude_items}
        q = query(run, body, body.k, body.exclude_history, body.candidates, **rules)
        return await answered(run, q, start)

    @app.post("/rank", response_model=Recommendations, responses=_ERRORS)
    async def rank(body: RankRequest) -> JSONResponse:
        """Every candidate scored for the user and ranked, best first (history items included)."""
        start, run = time.perf_counter(), served.pick(body.model)
        return await answered(run, query(run, body, len(body.candidates), False, body.candidates), start)

    @app.get("/items/{item_id}", responses={404: _ERRORS[404], 422: _ERRORS[422]})
    async def item(item_id: str, model: str | None = _MODEL_PARAM) -> dict[str, Any]:
        """An item's row of the catalog."""
        return served.pick(model).model.item(item_id)

    @app.get("/items/{item_id}/similar", response_model=SimilarItems, responses=_ERRORS)
    async def similar(
        item_id: str, k: int = QueryParam(10, ge=1, le=MAX_K), model: str | None = _MODEL_PARAM
    ) -> JSONResponse:
        """The k items most similar to an item: cosine similarity of the model's item vectors (models
        whose scores are a dot product; the others answer 422)."""
        start, run = time.perf_counter(), served.pick(model)
        items = await run_in_threadpool(run.model.similar_items, item_id, k)  # the model's lock, off the loop
        took = round((time.perf_counter() - start) * 1000, 3)
        return JSONResponse({"item_id": item_id, "items": items, "model": run.model.name, "took_ms": took})

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """What is served (the default run's figures; ``models``: every served run's name), and how busy."""
        return {**_health(served.default, settings), "models": list(served.runs)}


def _add_probes(app: FastAPI, served: Served, metrics: Metrics | None) -> None:
    """/livez (the process answers), /readyz (the models are loaded and answered their warm-up queries;
    503 while warming up or stopping) and /metrics (Prometheus' text format)."""

    @app.get("/livez")
    async def livez() -> dict[str, str]:
        """200 while the process answers HTTP (a liveness probe: restart the process when it fails)."""
        return {"status": "alive"}

    @app.get("/readyz", responses={503: {"model": ErrorBody, "description": "not ready (why is said)"}})
    async def readyz() -> JSONResponse:
        """200 once the models are loaded and have answered one warm-up query each; 503 before and while
        stopping (a readiness probe: send traffic only when it passes)."""
        if served.ready:
            return JSONResponse({"status": "ready"})
        why = served.not_ready or ("stopping" if served.closing else "warming up")
        return _error(503, f"not ready: {why}")

    if metrics is not None:

        @app.get("/metrics")
        async def prometheus() -> Response:
            """The service's metrics in Prometheus' text format."""
            body, content_type = metrics.exposition()
            return Response(body, media_type=content_type)


def _add_item_route(app: FastAPI, served: Served) -> None:
    """POST /items (see :mod:`llmrec.serve.items`)."""

    @app.post(
        "/items",
        status_code=201,
        response_model=AddedItems,
        responses={k: _ERRORS[k] for k in (403, 404, 409, 422, 503)},
    )
    async def add_items(body: AddItemsRequest) -> JSONResponse:
        """Add new items to the catalog of a served run (``model``; default: the first), encoded with the
        run's encoders (all of the request or none): recommendable as soon as this answers, while other
        requests are answered throughout. Off unless the service runs with ``--add-items``."""
        start, run = time.perf_counter(), served.pick(body.model)
        added = await run.adder.add(body)
        took = round((time.perf_counter() - start) * 1000, 3)
        answer = {"added": added, "items": len(run.model.item_ids), "took_ms": took}
        return JSONResponse(answer, status_code=201)


def _health(run: Run, settings: ServeSettings) -> dict[str, Any]:
    """/health's answer for one served run (its batcher is None before the lifespan starts it)."""
    model, batcher = run.model, run.batcher
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
        "index": info["index"],
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
        "add_items": settings.add_items,
        "max_k": MAX_K,
    }
