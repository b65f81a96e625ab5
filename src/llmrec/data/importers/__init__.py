"""Importers turn a source's raw files into canonical tables (:class:`llmrec.data.schema.RawData`).

Each importer registers itself under a name with :func:`register_importer`; ``llmrec prepare NAME``
looks it up with :func:`get_importer`. Importers only read and normalise: filtering, k-core and
splitting happen once, for every source, in :mod:`llmrec.data.processing`.

An importer may register processing defaults for its source (``defaults={"ctr_history_len": 5}``: the
history length the source's paper uses); ``llmrec prepare`` applies them below the config file and the
flags, so a value the user gives always wins. :func:`importer_defaults` returns them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from llmrec.config import option
from llmrec.data.schema import RawData
from llmrec.errors import LlmrecError


@dataclass
class ImportSpec:
    """Where a source's raw files are and how to read them (fields unused by an importer are ignored)."""

    path: str | None = option(
        None, "raw interactions file or source directory (ml-1m/ml-latest dir, reviews file)"
    )
    meta_path: str | None = option(None, "item metadata file (Amazon meta_<Cat>.json.gz / meta jsonl)")
    items_path: str | None = option(None, "item table for the generic 'table' importer (csv/tsv/parquet)")
    columns: dict[str, str] = option(
        factory=dict, help="generic importer column mapping canonical=source, e.g. user_id=uid"
    )
    image_dir: str | None = option(
        None,
        "folder of item images named <item_id>.<ext> (mind, movies, netflix): found files become the items' "
        "image references",
    )


Importer = Callable[[ImportSpec], RawData]
_IMPORTERS: dict[str, Importer] = {}
_DEFAULTS: dict[str, dict[str, Any]] = {}
_BUILTINS_LOADED = False


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


def _load_builtins() -> None:
    global _BUILTINS_LOADED
    if not _BUILTINS_LOADED:
        _BUILTINS_LOADED = True
        from llmrec.data.importers import (  # noqa: F401
            amazon,
            mind,
            movielens,
            movies,
            netflix,
            synthetic,
            table,
        )


def importer_defaults(name: str) -> dict[str, Any]:
    """The prepare options importer ``name`` registered (a copy; empty for an unknown or plain importer)."""
    _load_builtins()
    return dict(_DEFAULTS.get(name, {}))


def available_importers() -> list[str]:
    _load_builtins()
    return sorted(_IMPORTERS)


def get_importer(name: str) -> Importer:
    _load_builtins()
    if name not in _IMPORTERS:
        raise LlmrecError(
            f"unknown dataset '{name}'", hint=f"choose one of {sorted(_IMPORTERS)} or use 'table' with --path"
        )
    return _IMPORTERS[name]
