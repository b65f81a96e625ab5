"""Business rules: which items a query may recommend, as an (N,) bool mask over the catalog.

A rule names an item attribute column and the values it keeps (``include``) or drops (``exclude``)::

    model.recommend(user_ids=["1"], include={"category": ["Horror", "Thriller"]}, exclude={"year": [1995]})

* ``include``: an item passes when, for EVERY column named, it has ANY of the values given.
* ``exclude``: an item is dropped when, for ANY column named, it has ANY of the values given.
* A column is a column of the catalog (``title``, ``brand``, ``category``, ``description``, ``image``,
  ``item_id``) or a key of its ``extra`` object (``year``, ``subcategory``, ``main_category``...).
* Text matches whole or by part, case-insensitively: a cell is also read as a list of values separated by
  ``,`` ``;`` ``|`` or ``>``, so ``"Horror"`` matches MovieLens's ``"Comedy, Horror"`` and ``"Books"``
  matches Amazon's path ``"Books > Literature & Fiction"`` (as does the whole path). A list in ``extra``
  matches when any of its elements does. Numbers match numbers (``1995`` or ``"1995"``); ``true``/``false``
  match booleans.
* A value of the wrong kind (text for a column of numbers) or a column no item has is a
  :class:`~llmrec.api.QueryError` naming the field (``include.year``) and the columns that exist; an
  ``include`` whose values no item has is one too (it could recommend nothing), while an ``exclude`` value
  no item has excludes nothing.

The mask is applied inside the scoring, before the top-k (:func:`mask_scores`), so a query gets ``k`` items
whenever ``k`` items pass its rules and its history exclusion. :class:`ItemAttributes` reads the catalog
once per column, on first use (one dictionary pass over the distinct cells), and answers each rule with one
vectorised gather.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from llmrec.errors import LlmrecError

if TYPE_CHECKING:
    import pandas as pd

#: how a text cell splits into values: genre lists ("A, B"), path lists ("A > B; C"), "A|B"
_PARTS = (re.compile(r";"), re.compile(r"[;>]"), re.compile(r"[;>,|]"))
_SKIPPED = ("extra",)
_MISSING = object()
_CACHED_MASKS = 64  # distinct rule sets whose masks an ItemAttributes keeps  # catalog columns that are no attribute (extra's keys are, one by one)

Key = tuple[str, Any]  # ("s", casefolded text) | ("n", float) | ("b", bool)


class RuleError(LlmrecError):
    """A rule that cannot be applied (an unknown column, a value of the wrong kind), naming the field
    (``include.year``): ``Model.allowed`` raises it again as a :class:`~llmrec.api.QueryError` (422)."""

    def __init__(self, message: str, *, field: str, hint: str | None = None) -> None:
        super().__init__(message, field=field, hint=hint)
        self.message = message


def _error(message: str, field: str, hint: str | None = None) -> RuleError:
    return RuleError(message, field=field, hint=hint)


def _cell_keys(value: Any) -> set[Key]:
    """The values one cell matches: text whole and by part, numbers, booleans, a list's elements."""
    if value is None:
        return set()
    if isinstance(value, bool | np.bool_):
        return {("b", bool(value))}
    if isinstance(value, int | float | np.integer | np.floating):
        return set() if math.isnan(float(value)) else {("n", float(value))}
    if isinstance(value, str):
        keys = {("s", value.strip().casefold())}
        for split in _PARTS:
            keys.update(("s", p.strip().casefold()) for p in split.split(value))
        keys.discard(("s", ""))
        return keys
    if isinstance(value, list | tuple | np.ndarray):
        return set().union(*(_cell_keys(v) for v in value)) if len(value) else set()
    return set()  # an object (dict) inside extra: not a value a rule can name


def _hashable(value: Any) -> Any:
    if isinstance(value, list | np.ndarray):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, default=str)
    return value


class _Column:
    """One attribute column: each item's code (its distinct cell) and, per value, the codes that have it."""

    def __init__(self, cells: Sequence[Any]) -> None:
        distinct: dict[Any, int] = {}
        codes = np.fromiter(
            (distinct.setdefault(_hashable(c), len(distinct)) for c in cells),
            dtype=np.int64,
            count=len(cells),
        )
        self.codes = codes  # (N,)
        self.n_distinct = len(distinct)
        index: dict[Key, list[int]] = {}
        for cell, code in distinct.items():
            for key in _cell_keys(cell):
                index.setdefault(key, []).append(code)
        self.index = {key: np.asarray(c, dtype=np.int64) for key, c in index.items()}
        self.kinds = {kind for kind, _ in self.index}  # what the column holds: "s", "n", "b"

    def keys_for(self, value: Any, field: str) -> list[Key]:
        """The keys a rule's value matches in this column; a value of a kind the column lacks is an error."""
        if isinstance(value, bool):
            if "b" not in self.kinds:
                raise _error(f"{value!r} is true/false, but the column holds {self._holds()}", field)
            return [("b", value)]
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise _error(f"{value!r} is not a finite number", field)
            keys = [("n", float(value))] if "n" in self.kinds else []
            if "s" in self.kinds:  # 1995 for a column of text (or of both): its text too
                keys.append(("s", str(value).casefold()))
            if keys:
                return keys
            raise _error(f"{value!r} is a number, but the column holds {self._holds()}", field)
        if isinstance(value, str):
            keys: list[Key] = []
            text = value.strip().casefold()
            if "s" in self.kinds and text:
                keys.append(("s", text))
            if "n" in self.kinds:
                with contextlib.suppress(ValueError):
                    keys.append(("n", float(text)))
            if "b" in self.kinds and text in ("true", "false"):
                keys.append(("b", text == "true"))
            if not keys:
                what = "is empty" if not text else f"{value!r} is text"
                raise _error(f"{what}, but the column holds {self._holds()}", field)
            return keys
        raise _error(f"{value!r} is no value a rule can match: give text, a number or true/false", field)

    def hits(self, keys: list[Key]) -> np.ndarray:
        """(N,) bool: the items whose cell has any of ``keys``."""
        hit = np.zeros(self.n_distinct, dtype=bool)
        for key in keys:
            found = self.index.get(key)
            if found is not None:
                hit[found] = True
        return hit[self.codes]

    def _holds(self) -> str:
        names = {"s": "text", "n": "numbers", "b": "true/false"}
        return " and ".join(names[k] for k in sorted(self.kinds)) or "no values"


class ItemAttributes:
    """The catalog's attribute columns (its own and ``extra``'s keys), each read on first use.

    Thread-safe: columns are built under a lock and never change; a grown catalog gets a new instance.
    """

    def __init__(self, catalog: pd.DataFrame) -> None:
        self.catalog = catalog  # the table this was built from (a Model compares it to its current one)
        self.n = len(catalog)
        self._columns: dict[str, _Column] = {}
        self._extra: list[dict[str, Any]] | None = None
        self._masks: dict[str, np.ndarray | None] = {}  # rules (as JSON) -> their mask, oldest first
        self._lock = threading.Lock()

    def columns(self) -> list[str]:
        """The column names a rule may use: the catalog's, then ``extra``'s keys, sorted."""
        own = [str(c) for c in self.catalog.columns if c not in _SKIPPED]
        keys = sorted({k for d in self._extras() for k in d} - set(own))
        return own + keys

    def _extras(self) -> list[dict[str, Any]]:
        if self._extra is None:
            if "extra" not in self.catalog.columns:
                self._extra = [{} for _ in range(self.n)]
            else:
                self._extra = [_json_object(v) for v in self.catalog["extra"].tolist()]
        return self._extra

    def column(self, name: str, field: str) -> _Column:
        """The attribute column ``name``; one that no item has is an error naming the columns that exist."""
        with self._lock:
            col = self._columns.get(name)
            if col is None:
                if name in self.catalog.columns and name not in _SKIPPED:
                    cells: Sequence[Any] = self.catalog[name].tolist()
                elif any(name in d for d in self._extras()):
                    cells = [d.get(name) for d in self._extras()]
                else:
                    shown = self.columns()
                    listed = ", ".join(shown[:30]) + (
                        f" and {len(shown) - 30} more" if len(shown) > 30 else ""
                    )
                    raise _error(f"no item has a column {name!r} (columns: {listed})", field)
                col = self._columns[name] = _Column(cells)
            return col

    def mask(self, include: Mapping[str, Any] | None, exclude: Mapping[str, Any] | None) -> np.ndarray | None:
        """(N,) bool of the items that pass ``include`` and ``exclude`` (None: no rule given), read-only:
        the same rules asked again (a service's usual case) get the same array back."""
        try:
            key = json.dumps([include, exclude], sort_keys=True)
        except (TypeError, ValueError):  # not JSON-like: checked (and refused) below, never cached
            key = None
        cached = self._masks.get(key, _MISSING) if key is not None else _MISSING
        if cached is not _MISSING:
            return cached  # type: ignore[return-value]
        allowed = self._mask(include, exclude)
        if allowed is not None:
            allowed.flags.writeable = False
        if key is not None:
            with self._lock:
                if len(self._masks) >= _CACHED_MASKS:
                    self._masks.pop(next(iter(self._masks)))
                self._masks[key] = allowed
        return allowed

    def _mask(
        self, include: Mapping[str, Any] | None, exclude: Mapping[str, Any] | None
    ) -> np.ndarray | None:
        allowed = None
        for name, values in _rules(include, "include").items():
            field = f"include.{name}"
            col = self.column(name, field)
            hit = col.hits([k for v in values for k in col.keys_for(v, field)])
            if not hit.any():
                raise _error(
                    f"no item has any of {values!r}",
                    field,
                    hint="check the spelling (text matches case-insensitively, whole or by part)",
                )
            allowed = hit if allowed is None else allowed & hit
        for name, values in _rules(exclude, "exclude").items():
            field = f"exclude.{name}"
            col = self.column(name, field)
            hit = col.hits([k for v in values for k in col.keys_for(v, field)])
            allowed = ~hit if allowed is None else allowed & ~hit
        return allowed


def _json_object(text: Any) -> dict[str, Any]:
    if isinstance(text, dict):
        return text
    if not isinstance(text, str) or not text:
        return {}
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _rules(rules: Mapping[str, Any] | None, field: str) -> dict[str, list[Any]]:
    """``{"category": ["Horror"]}`` checked: a mapping of column names to a value or a list of values."""
    if rules is None:
        return {}
    if not isinstance(rules, Mapping):
        raise _error(
            f"must map column names to lists of values, got {type(rules).__name__}",
            field,
            hint='e.g. {"category": ["Horror"]}',
        )
    out: dict[str, list[Any]] = {}
    for name, values in rules.items():
        if not isinstance(name, str) or not name:
            raise _error(f"column names are text, got {name!r}", field)
        if isinstance(values, str | int | float | bool):
            values = [values]
        if not isinstance(values, Sequence) or isinstance(values, str):
            raise _error(f"must be a list of values, got {type(values).__name__}", f"{field}.{name}")
        if not values:
            raise _error(
                "is an empty list", f"{field}.{name}", hint="give at least one value, or leave it out"
            )
        out[name] = list(values)
    return out


def parse_rules(pairs: Sequence[str] | None, field: str) -> dict[str, list[str]] | None:
    """The command line's ``COLUMN=VALUE ...`` as rules: ``["category=Horror", "category=Comedy"]`` ->
    ``{"category": ["Horror", "Comedy"]}`` (values stay text; numbers match numeric columns as text)."""
    if pairs is None:
        return None
    out: dict[str, list[str]] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip() or not value.strip():
            from llmrec.config import ConfigError

            raise ConfigError(f"{field}: expected COLUMN=VALUE (e.g. category=Horror), got {pair!r}")
        out.setdefault(name.strip(), []).append(value.strip())
    return out


def without_items(allowed: np.ndarray | None, n: int, items: np.ndarray) -> np.ndarray:
    """``allowed`` (None: every one of ``n`` items) with ``items`` (indices) taken out."""
    out = np.ones(n, dtype=bool) if allowed is None else allowed.copy()
    out[items] = False
    return out


def mask_scores(
    scores: np.ndarray, allowed: np.ndarray | None, items: np.ndarray | None = None
) -> np.ndarray:
    """``scores`` (one query's, over the catalog or over the candidate ``items``) with every item that
    ``allowed`` rules out set to -inf, in place. Items beyond the mask (added to the catalog after the
    query was checked) were never checked against its rules, so they are ruled out too."""
    if allowed is None:
        return scores
    if items is None:
        n = min(len(allowed), len(scores))
        scores[:n][~allowed[:n]] = -np.inf
        scores[n:] = -np.inf
    else:
        known = items < len(allowed)
        ok = np.zeros(len(items), dtype=bool)
        ok[known] = allowed[items[known]]
        scores[~ok] = -np.inf
    return scores
