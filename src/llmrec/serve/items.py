"""``POST /items``: new items added to the served run while it keeps answering (:class:`ItemAdder`).

The add runs in its own worker thread, one add at a time, beside the micro-batcher's: encoding the new
items (their pictures, their texts) holds no lock, and the model's tables are swapped under the model's
lock only once they are built (:meth:`llmrec.api.Model.add_items`), so ``/recommend`` requests are answered
throughout, from the old catalog or the new one, and an added item is recommendable as soon as the add
answers. Off unless the service runs with ``--add-items``: an add changes what every client is
recommended and writes to the run folder, which a read-only deployment should not allow by default.

Images are files under the service's ``--image-dir``, named by relative paths: an absolute path, a path
leaving that folder, or a URL (the service fetches nothing) is a 422 naming the item.
"""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING

from llmrec.errors import LlmrecError

if TYPE_CHECKING:
    import pandas as pd

    from llmrec.api import Model
    from llmrec.serve.schemas import AddItemsRequest
    from llmrec.serve.settings import ServeSettings


class ItemAdder:
    """One worker thread adding items to ``model``, one request at a time."""

    def __init__(self, model: Model, settings: ServeSettings) -> None:
        self.model, self.settings = model, settings
        self.added = 0  # items added since start-up
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="llmrec-add-items")

    def close(self) -> None:
        """Wait for an add in progress (its commit is atomic either way), then stop the worker."""
        self._executor.shutdown(wait=True)

    async def add(self, body: AddItemsRequest) -> list[str]:
        """The items of ``body`` added (checked here first, so bad input never reaches the encoders)."""
        from llmrec.api import QueryError

        if not self.settings.add_items:
            raise QueryError(
                "adding items is off in this service",
                field="path",
                status=403,
                hint="start 'llmrec serve' with --add-items to accept POST /items",
            )
        table = self._table(body)
        loop = asyncio.get_running_loop()
        added = await loop.run_in_executor(self._executor, self._add, table)
        self.added += len(added)
        return added

    def _table(self, body: AddItemsRequest) -> pd.DataFrame:
        import pandas as pd

        from llmrec.api import QueryError

        seen: dict[str, int] = {}
        for pos, item in enumerate(body.items):
            where = f"items[{pos}]"
            if item.item_id in seen:
                raise QueryError(
                    f"item id {item.item_id!r} again (first at items[{seen[item.item_id]}])",
                    field=f"{where}.item_id",
                )
            seen[item.item_id] = pos
            if item.image:
                self._check_image(item.image, f"{where}.image")
        rows = [item.model_dump() for item in body.items]
        for row in rows:
            row["image"] = row["image"] or ""
            row["extra"] = json.dumps(row["extra"] or {}, ensure_ascii=False, sort_keys=True)
        return pd.DataFrame(rows)

    def _check_image(self, ref: str, field: str) -> None:
        from llmrec.api import QueryError

        if "://" in ref:
            raise QueryError(
                "is a URL; this service reads image files only",
                field=field,
                hint="put the file under the service's --image-dir and give its relative path",
            )
        if self.settings.image_dir is None:
            raise QueryError(
                "this service has no image folder",
                field=field,
                hint="start 'llmrec serve' with --image-dir DIR to accept images",
            )
        for path in (PurePosixPath(ref), PureWindowsPath(ref)):
            if path.is_absolute() or path.anchor or ".." in path.parts:
                raise QueryError(
                    f"{ref!r} is not a path inside the service's image folder",
                    field=field,
                    hint="give a path relative to --image-dir, without '..'",
                )

    def _add(self, table: pd.DataFrame) -> list[str]:
        """In the worker thread: ids the catalog has already are a 409; the model's refusal (an ID model)
        a 409; any other problem with the items a 422 naming the item."""
        from llmrec.api import QueryError

        model = self.model
        for pos, iid in enumerate(table["item_id"].tolist()):
            if iid in model.item_index:  # checked here, after any add before this one
                raise QueryError(
                    f"item id {iid!r} is in the catalog already", field=f"items[{pos}].item_id", status=409
                )
        refusal = _refusal(model)
        if refusal is not None:
            raise QueryError(refusal, field="items", status=409)
        image_dir = None if self.settings.image_dir is None else Path(self.settings.image_dir)
        try:
            return model.add_items(table, image_dir=image_dir)
        except QueryError:
            raise
        except LlmrecError as e:
            where = "items" if e.row is None else f"items[{e.row - 1}]"
            raise QueryError(_message(e), field=where if e.field is None else f"{where}.{e.field}") from None


def _refusal(model: Model) -> str | None:
    """Why ``model`` cannot add items (an ID model), or None."""
    from llmrec.catalog import refuse_id_model

    try:
        refuse_id_model(model)
    except LlmrecError as e:
        return _message(e)
    return None


def _message(e: LlmrecError) -> str:
    """An error's message and hint without its file/row/field prefix (the answer names the field itself;
    the run folder's path is no business of a client)."""
    where = [str(e.file)] if e.file is not None else []
    where += [f"row {e.row}"] if e.row is not None else []
    where += [f"field '{e.field}'"] if e.field is not None else []
    prefix = ", ".join(where) + ": " if where else ""
    text = str(e)
    return text[len(prefix) :] if text.startswith(prefix) else text
