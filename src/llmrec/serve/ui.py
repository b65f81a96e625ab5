"""A page to look at recommendations (``/ui``) and the small read-only routes it stands on: the served runs
(``/models``), users (``/users``, ``/users/{id}``) and item pictures (``/items/{id}/image``).

The page is one HTML file with its script inline (no build step, no remote asset): pick a user or type a
history, set the filters the API has, and see the history and the top-k as cards with pictures, titles and
scores; with several runs served, two of them side by side. It calls the same JSON API as any client
(``/recommend`` with the request's ``model`` field), so what it shows is what the API answers.
"""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Query
from fastapi.responses import FileResponse, HTMLResponse

if TYPE_CHECKING:
    from llmrec.api import Model
    from llmrec.serve.served import Served

log = logging.getLogger(__package__)

#: the longest history /users/{id} returns (the latest items)
HISTORY_SHOWN = 50
_MODEL = Query(None, max_length=200, description="a served run's name (default: the first)")


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The error answers a route documents: the service's own error body (see serve.app)."""
    from llmrec.serve.schemas import ErrorBody

    what = {404: "unknown user, item or run", 422: "invalid request (the field is named)"}
    return {code: {"model": ErrorBody, "description": what[code]} for code in codes}


def image_files(model: Model) -> dict[str, Path]:
    """item id -> its picture file, from the dataset's image manifest (``llmrec images``); empty without one
    (the page then shows placeholders, as for items added to the run, whose pictures are not kept)."""
    from llmrec.data.images import load_manifest
    from llmrec.errors import LlmrecError

    root = Path(model.dataset.root)
    files: dict[str, Path] = {}
    try:
        manifest = load_manifest(root)
    except LlmrecError:
        manifest = None
    if manifest is not None:
        ok = manifest[(manifest["status"] == "ok") & (manifest["path"] != "")]
        for item_id, path in zip(ok["item_id"].astype(str), ok["path"].astype(str)):
            p = Path(path)
            files[item_id] = p if p.is_absolute() else root / p
    return files


def add_ui_routes(app: FastAPI, served: Served, page: bool = True) -> None:
    """``/models``, ``/users``, ``/users/{user_id}``, ``/items/{item_id}/image`` and (``page``) ``/ui``."""
    _add_listing_routes(app, served)
    _add_image_route(app, served)
    if page:

        @app.get("/ui", response_class=HTMLResponse, include_in_schema=False)
        async def ui() -> HTMLResponse:
            return HTMLResponse(
                resources.files("llmrec.serve").joinpath("ui.html").read_text(encoding="utf-8")
            )


def _add_listing_routes(app: FastAPI, served: Served) -> None:
    """/models, /users and /users/{user_id}."""
    from llmrec.api import QueryError

    @app.get("/models")
    async def models() -> dict[str, Any]:
        """The runs this service serves, the default first: a request's ``model`` field picks one by name."""
        out = [
            {
                "name": name,
                "model": run.model.name,
                "run": str(run.model.run),
                "items": len(run.model.item_ids),
                "users": len(run.model.user_ids),
            }
            for name, run in served.runs.items()
        ]
        return {"models": out, "default": served.default.name}

    @app.get("/users", responses=_errors(404, 422))
    async def users(
        prefix: str = Query("", max_length=200, description="only ids starting with this"),
        limit: int = Query(50, ge=1, le=1000, description="most ids answered"),
        model: str | None = _MODEL,
    ) -> dict[str, Any]:
        """User ids of the run's dataset (those starting with ``prefix``), in the dataset's order."""
        ids = served.pick(model).model.user_ids
        found = [u for u in ids if u.startswith(prefix)] if prefix else ids
        return {"users": found[:limit], "total": len(found)}

    @app.get("/users/{user_id}", responses=_errors(404, 422))
    async def user(user_id: str, model: str | None = _MODEL) -> dict[str, Any]:
        """A user's history as the model sees it: the latest items (id, title), oldest first."""
        m = served.pick(model).model
        u = m.user_index.get(user_id)
        if u is None:
            raise QueryError(f"unknown user id {user_id!r}", field="user_id", status=404)
        seq = m.sequences[u]
        return {
            "user_id": user_id,
            "length": len(seq),
            "history": [
                {"item_id": m.item_ids[i], "title": m.titles[i]} for i in seq[-HISTORY_SHOWN:].tolist()
            ],
        }


def _add_image_route(app: FastAPI, served: Served) -> None:
    """/items/{item_id}/image: the files ``llmrec images`` stored, looked up once per run (again when the
    catalog grew)."""
    from llmrec.api import QueryError

    pictures: dict[str, tuple[int, dict[str, Path]]] = {}  # run name -> (catalog size, files)

    @app.get("/items/{item_id}/image", response_class=FileResponse, responses=_errors(404, 422))
    async def image(item_id: str, model: str | None = _MODEL) -> FileResponse:
        """The item's picture, as ``llmrec images`` stored it (404 when it has none)."""
        run = served.pick(model)
        if item_id not in run.model.item_index:
            raise QueryError(f"unknown item id {item_id!r}", field="item_id", status=404)
        size = len(run.model.item_ids)
        if run.name not in pictures or pictures[run.name][0] != size:
            pictures[run.name] = (size, image_files(run.model))
        path = pictures[run.name][1].get(item_id)
        if path is None or not path.is_file():
            raise QueryError(f"item {item_id!r} has no picture", field="item_id", status=404)
        return FileResponse(path)
