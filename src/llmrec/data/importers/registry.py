"""The importer registry: where a source's files are (:class:`ImportSpec`) and the name -> importer table.

Every importer module imports this one to register itself; :mod:`llmrec.data.importers` (the package) loads
the built-in importers on first lookup, so the registry sits below both and the importers never import the
package that loads them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from llmrec.config import option
from llmrec.data.schema import RawData


@dataclass
class ImportSpec:
    """Where a source's raw files are and how to read them (fields unused by an importer are ignored)."""

    path: str | None = option(
        None, "raw interactions file or source directory (ml-1m/ml-latest dir, reviews file)"
    )
    meta_path: str | None = option(None, "item metadata file (Amazon meta_<Cat>.json.gz / meta jsonl)")
    items_path: str | None = option(None, "item table for the generic 'table' importer (csv/tsv/parquet)")
    columns: dict[str, str] = option(
        factory=dict,
        help="generic importer column mapping canonical=source for the interactions file, e.g. user_id=uid "
        "(also for the items file when --item-columns is not given)",
    )
    item_columns: dict[str, str] = option(
        factory=dict,
        help="generic importer column mapping canonical=source for the --items-path file, e.g. item_id=sku "
        "(its own names: --columns then applies to the interactions file only)",
    )
    image_dir: str | None = option(
        None,
        "folder of item images named <item_id>.<ext> (mind, movies, netflix): found files become the items' "
        "image references",
    )


Importer = Callable[[ImportSpec], RawData]
_IMPORTERS: dict[str, Importer] = {}
_DEFAULTS: dict[str, dict[str, Any]] = {}


def register_importer(name: str, defaults: dict[str, Any] | None = None) -> Callable[[Importer], Importer]:
    """Register ``fn`` as the importer for ``llmrec prepare <name>``; duplicate names are an error.

    ``defaults``: ``llmrec prepare`` options this source changes from the general defaults (keys are
    :class:`llmrec.data.processing.PrepareConfig` fields; an unknown key fails when the config is built).
    """

    def deco(fn: Importer) -> Importer:
        if name in _IMPORTERS:
            raise ValueError(f"importer '{name}' is already registered by {_IMPORTERS[name].__module__}")
        _IMPORTERS[name] = fn
        _DEFAULTS[name] = dict(defaults or {})
        return fn

    return deco
