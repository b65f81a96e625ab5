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

The modules, in the order a request meets them: ``settings.py`` (the options), ``limits.py`` (bounds on
request heads and JSON bodies), ``schemas.py`` (request and response bodies), ``app.py`` (the FastAPI app:
routes and error answers), ``batcher.py`` (the queue and its worker), ``items.py`` (``POST /items``: adding
items while serving, off unless ``--add-items``), ``server.py`` (uvicorn).
"""

from llmrec.extras import require

# fastapi, uvicorn, httptools come with the serve extra: without them one line says so, not a traceback
require("serve", "llmrec serve")

from llmrec.serve.app import create_app
from llmrec.serve.batcher import Batcher, Overloaded
from llmrec.serve.items import ItemAdder
from llmrec.serve.limits import (
    LINGER_SECONDS,
    MAX_JSON_DEPTH,
    REQUEST_LINE_BYTES,
    HeaderLimitedProtocol,
    HeaderLimits,
    JsonTooDeep,
    header_fault,
    json_depth,
    parse_json,
)
from llmrec.serve.schemas import (
    MAX_K,
    AddedItems,
    AddItemsRequest,
    ErrorBody,
    NewItem,
    RankRequest,
    Recommendations,
    RecommendRequest,
    ScoredItem,
)
from llmrec.serve.server import GracefulServer, serve, server_config
from llmrec.serve.settings import ServeConfig, ServeSettings

__all__ = [
    "LINGER_SECONDS",
    "MAX_JSON_DEPTH",
    "MAX_K",
    "REQUEST_LINE_BYTES",
    "AddItemsRequest",
    "AddedItems",
    "Batcher",
    "ErrorBody",
    "GracefulServer",
    "HeaderLimitedProtocol",
    "HeaderLimits",
    "ItemAdder",
    "JsonTooDeep",
    "NewItem",
    "Overloaded",
    "RankRequest",
    "RecommendRequest",
    "Recommendations",
    "ScoredItem",
    "ServeConfig",
    "ServeSettings",
    "create_app",
    "header_fault",
    "json_depth",
    "parse_json",
    "serve",
    "server_config",
]
