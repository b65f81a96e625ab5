"""Importers turn a source's raw files into canonical tables (:class:`llmrec.data.schema.RawData`).

Each importer registers itself under a name with :func:`register_importer`; ``llmrec prepare NAME``
looks it up with :func:`get_importer`. Importers only read and normalise: filtering, k-core and
splitting happen once, for every source, in :mod:`llmrec.data.processing`.

An importer may also record in its source record (meta.json's "source") what its prompts call an item
(``"item_noun": "news article"``); :func:`item_noun` reads it back.

An importer may register processing defaults for its source (``defaults={"ctr_history_len": 5}``: the
history length the source's paper uses); ``llmrec prepare`` applies them below the config file and the
flags, so a value the user gives always wins. :func:`importer_defaults` returns them.

The registry itself (:class:`ImportSpec`, :func:`register_importer`) lives in
:mod:`llmrec.data.importers.registry`, which every importer imports: this package loads the importers on
first use, so they must not import it back.
"""

from __future__ import annotations

from typing import Any

from llmrec.data.importers.registry import _DEFAULTS, _IMPORTERS, Importer, ImportSpec, register_importer
from llmrec.errors import LlmrecError

_BUILTINS_LOADED = False


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


#: what the prompts call an item of a dataset whose source records no noun (prepared by an llmrec that did not
#: store one, or by an importer without one: table, synthetic); the papers' movie data
DEFAULT_ITEM_NOUN = "movie"


def item_noun(meta: dict[str, Any]) -> str:
    """What prompts call an item of the dataset whose meta.json is ``meta``: its importer's ``item_noun``
    (movie, news article, product), else :data:`DEFAULT_ITEM_NOUN`."""
    return str((meta.get("source") or {}).get("item_noun") or DEFAULT_ITEM_NOUN)


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


__all__ = [
    "DEFAULT_ITEM_NOUN",
    "ImportSpec",
    "Importer",
    "available_importers",
    "get_importer",
    "importer_defaults",
    "item_noun",
    "register_importer",
]
