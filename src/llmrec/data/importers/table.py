"""The generic importer ('table'): any CSV/TSV/parquet interaction table, plus an optional item table.

The readers it uses (and every other importer shares) live in :mod:`llmrec.data.readers`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from llmrec.data.importers.registry import ImportSpec, register_importer
from llmrec.data.readers import (
    Check,
    find_bad_line,
    is_not_empty,
    is_number_or_empty,
    is_time,
    missing_column_error,
    read_table,
    require_path,
    table_format,
)
from llmrec.data.schema import ITEM_COLUMNS, RawData, make_interactions, make_items, out_of_int64
from llmrec.errors import LlmrecError

INTERACTION_FIELDS = ("user_id", "item_id", "timestamp", "rating", "label")
ITEM_FIELDS = ("item_id", "title", "brand", "category", "description", "image")


def _check_mapping(
    columns: dict[str, str],
    known: Sequence[str] = (*INTERACTION_FIELDS, *ITEM_FIELDS[1:]),
    flag: str = "--columns",
) -> dict[str, str]:
    unknown = sorted(set(columns) - set(known))
    if unknown:
        raise LlmrecError(
            f"unknown canonical column(s) {unknown} in the {flag} mapping",
            field=unknown[0],
            hint=f"map any of {list(known)}, e.g. {flag} {known[0]}=<column>",
        )
    return dict(columns)


def _resolve(
    df: pd.DataFrame,
    path: Path,
    mapping: dict[str, str],
    fields: Sequence[str],
    required: Sequence[str],
    flag: str = "--columns",
) -> dict[str, str]:
    """{canonical name: source column} for ``fields`` found in ``df``; mapped-but-absent columns are errors
    whose hint names ``flag``, the option that maps this file's columns."""
    out: dict[str, str] = {}
    for name in fields:
        if name in mapping:
            if mapping[name] not in df.columns:
                raise missing_column_error(path, name, mapping[name], list(df.columns), flag)
            out[name] = mapping[name]
        elif name in df.columns:
            out[name] = name
        elif name in required:
            raise missing_column_error(path, name, name, list(df.columns), flag)
    return out


def _bad_value(
    path: Path, df: pd.DataFrame, col: str, field: str, bad: pd.Series, check: Check
) -> LlmrecError:
    """Name the first bad value: by its line in a text table, by its 1-based row in a parquet table."""
    fmt = table_format(path)
    if fmt != "parquet":
        found = find_bad_line(path, fmt, None, "utf-8", {col: check})
        if found is not None:  # named by the canonical field the user mapped, e.g. 'timestamp'
            return LlmrecError(found[2], file=path, row=found[0], field=field)
    row = int(np.flatnonzero(bad.to_numpy())[0])
    value = df[col].iloc[row]
    return LlmrecError(check(str(value)) or f"bad value {value!r}", file=path, row=row + 1, field=field)


def _timestamps(df: pd.DataFrame, col: str, path: Path) -> pd.Series:
    """Unix seconds from numbers, datetime columns (parquet) or ISO-8601 date strings."""
    values = df[col]
    epoch, second = pd.Timestamp(0, tz="UTC"), pd.Timedelta(seconds=1)
    if pd.api.types.is_datetime64_any_dtype(values):
        dt = values if values.dt.tz is not None else values.dt.tz_localize("UTC")
        if dt.isna().any():
            raise _bad_value(path, df, col, "timestamp", dt.isna(), is_time)
        return ((dt - epoch) // second).astype("int64")
    num = pd.to_numeric(values, errors="coerce")
    too_big = num.notna() & out_of_int64(num)  # e.g. 9999999999999999999999 would become INT64_MIN
    if too_big.any():
        raise _bad_value(path, df, col, "timestamp", too_big, is_time)
    if num.notna().all():
        return num
    # Hand-made tables often carry dates: accept ISO-8601 text rather than make users convert.
    dt = pd.to_datetime(values.where(num.isna()), utc=True, errors="coerce", format="ISO8601")
    bad = num.isna() & dt.isna()
    if bad.any():
        raise _bad_value(path, df, col, "timestamp", bad, is_time)
    return num.fillna((dt - epoch) // second).astype("int64")


@register_importer("table")
def import_table(spec: ImportSpec) -> RawData:
    """Any interaction table (``spec.path``) plus an optional item table (``spec.items_path``).

    ``spec.columns`` maps canonical names to source columns (``{"user_id": "uid", "title": "name"}``);
    unmapped canonical names are used where a column of that name exists. The item table has its own
    mapping, ``spec.item_columns`` (``{"item_id": "sku"}``), when the two files name their columns
    differently; without one, ``spec.columns`` applies to both files. Timestamps may be unix
    seconds or ISO-8601 dates; an empty rating or label means absent. Without an item table, the items
    are the distinct item ids, with any item text columns (title, ...) found in the interaction table.
    """
    path = require_path(spec.path, "interactions table", "--path")
    mapping = _check_mapping(spec.columns)
    if spec.item_columns and not spec.items_path:
        raise LlmrecError(
            "--item-columns maps the columns of an item table, and no --items-path is given",
            field="item_columns",
            hint="give the item table with --items-path, or map the interactions file's columns with --columns",
        )
    src = read_table(path)
    if src.empty:
        raise LlmrecError(
            "no interactions: the table has no data rows" + (" (only a header)" if len(src.columns) else ""),
            file=path,
            hint="check --path",
        )
    cols = _resolve(src, path, mapping, INTERACTION_FIELDS, required=("user_id", "item_id", "timestamp"))
    inter = pd.DataFrame({name: src[col] for name, col in cols.items()})
    for name in ("user_id", "item_id"):
        values = src[cols[name]]
        empty = values.isna() | (values.astype(str).str.strip() == "")
        if empty.any():
            raise _bad_value(path, src, cols[name], name, empty, is_not_empty)
    inter["timestamp"] = _timestamps(src, cols["timestamp"], path)
    for name in ("rating", "label"):
        if name in cols:
            values = src[cols[name]]
            num = pd.to_numeric(values, errors="coerce")
            # An empty cell means "no rating here", not an error; inf is never a rating.
            bad = num.isna() & values.notna() & (values.astype(str).str.strip() != "")
            bad |= num.notna() & ~np.isfinite(num.astype("float64"))
            if bad.any():
                raise _bad_value(path, src, cols[name], name, bad, is_number_or_empty)
            inter[name] = num
    interactions = make_interactions(inter, source=str(path))
    files = [str(path)]

    if spec.items_path:
        items = _item_table(spec, mapping, cols)
        files.append(str(spec.items_path))
    else:
        item_cols = _resolve(src, path, mapping, ITEM_FIELDS, required=("item_id",))
        # Only the item fields: other columns may describe the event, not the item.
        table = pd.DataFrame({name: src[col] for name, col in item_cols.items()})
        table["item_id"] = table["item_id"].astype(str)
        items = make_items(table.drop_duplicates("item_id", keep="first"), source=str(path))
    return RawData(
        items=items,
        interactions=interactions,
        source={
            "name": "table",
            "files": files,
            "columns": mapping,
            **({"item_columns": dict(spec.item_columns)} if spec.item_columns else {}),
        },
    )


def _item_table(spec: ImportSpec, mapping: dict[str, str], cols: dict[str, str]) -> pd.DataFrame:
    """The items of ``spec.items_path``, its columns mapped by ``--item-columns`` (or, without one, by the
    interactions' ``mapping``); ``cols``: the interactions' resolved columns (to tell the two files apart)."""
    items_path = require_path(spec.items_path, "item table", "--items-path")
    item_src = read_table(items_path)
    if item_src.empty:
        raise LlmrecError("no items: the table has no data rows", file=items_path, hint="check --items-path")
    if spec.item_columns:
        item_mapping = _check_mapping(spec.item_columns, ITEM_FIELDS, "--item-columns")
    else:
        item_mapping = mapping  # --columns serves both files until told apart
    item_cols = _resolve(
        item_src, items_path, item_mapping, ITEM_FIELDS, required=("item_id",), flag="--item-columns"
    )
    if cols["user_id"] in item_src.columns and cols["timestamp"] in item_src.columns:
        raise LlmrecError(
            f"does not look like an item table: it has the interaction columns '{cols['user_id']}' "
            f"and '{cols['timestamp']}'",
            file=items_path,
            hint="--items-path takes one row per item (item_id, title, ...); interactions go in --path",
        )
    table = pd.DataFrame({name: item_src[col] for name, col in item_cols.items()})
    for col in item_src.columns:
        if col in item_cols.values():
            continue
        # Every other column is item side information that make_items folds into ``extra``; a column
        # named like a canonical field the user mapped elsewhere keeps its data under a new name.
        table[f"source_{col}" if col in ITEM_COLUMNS and col != "extra" else col] = item_src[col]
    if "image" in table:
        table["image"] = _images_beside(table["image"], items_path.parent)
    return make_items(table, source=str(items_path))


def _images_beside(images: pd.Series, folder: Path) -> pd.Series:
    """Image references that are paths relative to the item table's folder (``pictures/p1.png`` beside
    ``items.csv``) made absolute, so ``llmrec images`` finds them wherever the dataset is written; URLs,
    absolute paths and paths that name no file there are kept as given."""

    def resolve(ref: object) -> object:
        if not isinstance(ref, str) or not ref.strip() or "://" in ref or Path(ref).is_absolute():
            return ref
        candidate = folder / ref.strip()
        return str(candidate.resolve()) if candidate.is_file() else ref

    return images.map(resolve)
