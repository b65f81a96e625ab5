"""A page to look at recommendations (``/ui``) and the small read-only routes it stands on: the served runs
(``/models``), users (``/users``, ``/users/{id}``) and item pictures (``/items/{id}/image``).

The page is one HTML file with its script inline (no build step, no remote asset): pick a user or type a
history, set the filters the API has, and see the history and the top-k as cards with pictures, titles and
scores; with several runs served, two of them side by side. It calls the same JSON API as any client
(``/recommend`` with the request's ``model`` field), so what it shows is what the API answers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Query
from fastapi.responses import FileResponse, HTMLResponse

if TYPE_CHECKING:
    from llmrec.api import Model

log = logging.getLogger(__package__)

#: the longest history /users/{id} returns (the latest items)
HISTORY_SHOWN = 50


def image_files(model: Model) -> dict[str, Path]:
    """item id -> its picture file, from the dataset's image manifest (``llmrec images``) and the pictures of
    items added to the run; empty when neither exists (the page then shows placeholders)."""
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
    files.update(getattr(model, "added_images", {}) or {})
    return files


def add_ui_routes(
    app: FastAPI, pick: Callable[[str | None], Model], names: list[str], page: bool = True
) -> None:
    """``/models``, ``/users``, ``/users/{user_id}``, ``/items/{item_id}/image`` and (``page``) ``/ui``.
    ``pick(name)`` is the served model of that name (the first for None; an unknown name a 422)."""
    from llmrec.api import QueryError

    pictures: dict[str, dict[str, Path]] = {}

    def pictures_of(name: str | None) -> dict[str, Path]:
        model = pick(name)
        key = name or names[0]
        if key not in pictures or len(pictures[key]) < len(getattr(model, "added_images", {}) or {}):
            pictures[key] = image_files(model)
        return pictures[key]

    @app.get("/models")
    async def models() -> dict[str, Any]:
        """The runs this service serves, the default first: a request's ``model`` field picks one by name."""
        out = []
        for name in names:
            m = pick(name)
            out.append(
                {
                    "name": name,
                    "model": m.name,
                    "run": str(m.run),
                    "items": len(m.item_ids),
                    "users": len(m.user_ids),
                }
            )
        return {"models": out, "default": names[0]}

    @app.get("/users")
    async def users(
        prefix: str = Query("", max_length=200, description="only ids starting with this"),
        limit: int = Query(50, ge=1, le=1000, description="most ids answered"),
        model: str | None = Query(None, description="a served run's name (default: the first)"),
    ) -> dict[str, Any]:
        """User ids of the run's dataset (those starting with ``prefix``), in the dataset's order."""
        m = pick(model)
        found = [u for u in m.user_ids if u.startswith(prefix)] if prefix else m.user_ids
        return {"users": found[:limit], "total": len(found)}

    @app.get("/users/{user_id}")
    async def user(
        user_id: str, model: str | None = Query(None, description="a served run's name (default: the first)")
    ) -> dict[str, Any]:
        """A user's history as the model sees it: the latest items (id, title), oldest first."""
        m = pick(model)
        u = m.user_index.get(user_id)
        if u is None:
            raise QueryError(f"unknown user id {user_id!r}", field="user_id", status=404)
        seq = m.sequences[u]
        shown = seq[-HISTORY_SHOWN:].tolist()
        return {
            "user_id": user_id,
            "length": len(seq),
            "history": [{"item_id": m.item_ids[i], "title": m.titles[i]} for i in shown],
        }

    @app.get("/items/{item_id}/image", response_class=FileResponse)
    async def image(
        item_id: str, model: str | None = Query(None, description="a served run's name (default: the first)")
    ) -> FileResponse:
        """The item's picture, as ``llmrec images`` stored it (404 when it has none)."""
        m = pick(model)
        if item_id not in m.item_index:
            raise QueryError(f"unknown item id {item_id!r}", field="item_id", status=404)
        path = pictures_of(model).get(item_id)
        if path is None or not path.is_file():
            raise QueryError(f"item {item_id!r} has no picture", field="item_id", status=404)
        return FileResponse(path)

    if page:

        @app.get("/ui", response_class=HTMLResponse, include_in_schema=False)
        async def ui() -> HTMLResponse:
            return HTMLResponse(
                resources.files("llmrec.serve").joinpath("ui.html").read_text(encoding="utf-8")
            )
