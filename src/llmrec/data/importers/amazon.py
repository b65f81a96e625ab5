"""Amazon review importers: the 2018 release (which also reads the 2014 dumps) and Amazon Reviews 2023.

Both stream their files line by line (the large categories are many GB), transparently gunzipping.
A line is one record: strict JSON, or a Python dict literal as in the older dumps (single quotes,
True/False). Review text is not kept: the canonical interaction table has no place for it.
"""

from __future__ import annotations

import ast
import gzip
import json
import math
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pandas as pd
from tqdm import tqdm

from llmrec.data.importers.registry import ImportSpec, register_importer
from llmrec.data.readers import READ_ERRORS, decode_error, require_path, unreadable_error
from llmrec.data.schema import RawData, make_interactions, make_items, strip_html
from llmrec.errors import LlmrecError

# Co-purchase / co-view graphs: large, unused by the text and image models, and they would leak
# interaction signal into item metadata. Review videos are likewise unused.
_DROPPED = frozenset({"also_buy", "also_view", "similar_item", "related", "bought_together", "videos"})
_LINE_HINT = "each line must be one JSON object (or a Python dict literal, as in the older dumps)"
# The 2018 main_cat is sometimes an <img> tag whose alt text is the only name given.
_IMG_ALT = re.compile(r"""alt=["']([^"']*)["']""")


# ----------------------------------------------------------------------------- reading records


def _open(path: Path) -> IO[bytes]:
    """Byte stream of ``path``, gunzipped when it starts with the gzip magic (whatever its name).

    Bytes, not text: each line is decoded on its own, so a bad byte is reported on its own line
    (a text stream decodes ahead in blocks and fails on an earlier line).
    """
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gzipped else open(path, "rb")


def parse_record(line: str, path: Path, lineno: int) -> dict[str, Any]:
    """One line as a dict: JSON first (fast, the common case), then a Python literal (2014 dumps)."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        try:
            # literal_eval, never eval: it builds only dicts, lists, strings, numbers, True/False/None.
            with warnings.catch_warnings():  # a damaged line's SyntaxWarning is not the user's business
                warnings.simplefilter("ignore", SyntaxWarning)
                record = ast.literal_eval(line)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            preview = line[:60] + ("..." if len(line) > 60 else "")
            raise LlmrecError(
                f"neither JSON nor a Python dict: {preview!r}", file=path, row=lineno, hint=_LINE_HINT
            ) from None
    if not isinstance(record, dict):
        raise LlmrecError(f"a {type(record).__name__}, not a record", file=path, row=lineno, hint=_LINE_HINT)
    return record


def iter_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (1-based line number, record) for every non-blank line of a .json/.jsonl file, gzipped or not."""
    lineno = 0
    try:
        with _open(path) as f:
            for lineno, raw in enumerate(tqdm(f, desc=path.name, unit=" lines", disable=None), 1):
                try:
                    line = raw.decode("utf-8").strip()
                except UnicodeDecodeError as e:
                    raise decode_error(path, e, lineno) from None
                if line:
                    yield lineno, parse_record(line, path, lineno)
    except READ_ERRORS as e:
        # A truncated download fails here (gzip: "Compressed file ended before the end-of-stream marker").
        raise unreadable_error(path, e, row=lineno + 1) from None


def read_reviews(
    path: Path,
    *,
    user_key: str,
    item_keys: tuple[str, ...],
    time_key: str,
    rating_key: str,
    time_divisor: int = 1,
) -> pd.DataFrame:
    """The canonical interaction table of a reviews file (``item_keys``: id keys, most preferred first).

    ``time_divisor`` turns the source's time unit into seconds (1000 for milliseconds).
    """
    # Columns as plain lists: a list of dicts per review would take several times the memory.
    users: list[str] = []
    item_ids: list[str] = []
    times: list[int] = []
    ratings: list[float] = []
    for lineno, rec in iter_records(path):
        item = next((rec[k] for k in item_keys if rec.get(k) not in (None, "")), None)
        for key, value in (
            (user_key, rec.get(user_key)),
            (item_keys[0], item),
            (time_key, rec.get(time_key)),
        ):
            if value is None or value == "":
                raise LlmrecError(
                    "missing",
                    file=path,
                    row=lineno,
                    field=key,
                    hint="is this a reviews file? item metadata goes in --meta-path",
                )
        ts = rec[time_key]
        try:
            seconds = (ts if isinstance(ts, int) else int(float(ts))) // time_divisor
        except (TypeError, ValueError, OverflowError):
            raise LlmrecError(f"{ts!r} is not a unix time", file=path, row=lineno, field=time_key) from None
        if not -(2**63) <= seconds < 2**63:
            raise LlmrecError(
                f"{ts!r} does not fit a 64-bit unix time", file=path, row=lineno, field=time_key
            )
        value = rec.get(rating_key)
        try:
            stars = math.nan if value is None or value == "" else float(value)
        except (TypeError, ValueError):
            raise LlmrecError(f"{value!r} is not a number", file=path, row=lineno, field=rating_key) from None
        if math.isinf(stars):
            raise LlmrecError(f"{value!r} is not a finite number", file=path, row=lineno, field=rating_key)
        users.append(str(rec[user_key]))
        item_ids.append(str(item))
        times.append(seconds)
        ratings.append(stars)
    return make_interactions(
        pd.DataFrame({"user_id": users, "item_id": item_ids, "timestamp": times, "rating": ratings}),
        source=str(path),
    )


def read_meta(
    path: Path, to_item: Callable[[dict[str, Any]], dict[str, Any]], id_key: str, review_key: str
) -> pd.DataFrame:
    """The canonical item table of a metadata file, one ``to_item(record)`` per line.

    ``review_key`` is a field only reviews have (the reviewer): a record holding it means a reviews file
    was given as metadata, which would otherwise become items without titles.
    """
    rows = []
    for lineno, rec in iter_records(path):
        if review_key in rec:
            raise LlmrecError(
                f"does not look like an item metadata file: the record has the reviews' field '{review_key}'",
                file=path,
                row=lineno,
                field=review_key,
                hint="pass the meta_<Category> file as --meta-path; reviews go in --path",
            )
        row = to_item(rec)
        if not row["item_id"]:
            raise LlmrecError(
                "missing",
                file=path,
                row=lineno,
                field=id_key,
                hint="is this an item metadata file? reviews go in --path",
            )
        rows.append(row)
    return make_items(rows, source=str(path))


def default_meta_path(reviews: Path) -> Path | None:
    """``meta_<Cat>`` next to ``<Cat>_5.json.gz`` / ``<Cat>.jsonl`` / ``reviews_<Cat>_5.json.gz``, if present."""
    name = reviews.name.removesuffix(".gz").removesuffix(".jsonl").removesuffix(".json")
    name = name.removesuffix("_5").removeprefix("reviews_")
    for ext in (".json.gz", ".json", ".jsonl.gz", ".jsonl"):
        candidate = reviews.with_name(f"meta_{name}{ext}")
        if candidate.exists():
            return candidate
    return None


def _meta_path(spec: ImportSpec, reviews: Path, example: str) -> Path:
    if spec.meta_path:
        return require_path(spec.meta_path, "item metadata file", "--meta-path")
    found = default_meta_path(reviews)
    if found is None:
        raise LlmrecError(
            "no item metadata file given, and none found next to the reviews",
            file=reviews,
            hint=f"pass --meta-path {example}",
        )
    return found


# ----------------------------------------------------------------------------- field helpers


def _first_url(value: Any) -> str:
    """The first non-empty string in a URL or a list of URLs."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, list | tuple):
        return next((s for s in (_first_url(v) for v in value) if s), "")
    return ""


def _joined(value: Any) -> str:
    """A text field that may be a list of paragraphs (description) as one string; HTML is left for make_items."""
    if isinstance(value, list | tuple):
        return " ".join(str(v) for v in value if v not in (None, ""))
    return "" if value is None else str(value)


def _path(parts: Any) -> str:
    """A category path list as "A > B > C" (each level cleaned first, so empty HTML leftovers drop out)."""
    if not isinstance(parts, list | tuple):
        return strip_html(parts)
    return " > ".join(p for p in (strip_html(x) for x in parts) if p)


def _features(value: Any) -> list[str]:
    """Feature bullets as a list of plain-text strings (HTML stripped, empties dropped)."""
    if value is None:
        return []
    values = value if isinstance(value, list | tuple) else [value]
    return [s for s in (strip_html(v) for v in values) if s]


def _clean(value: Any) -> Any:
    """Strip HTML from every string inside an extra value (price, rank, details dicts)."""
    if isinstance(value, str):
        return strip_html(value)
    if isinstance(value, list | tuple):
        return [c for c in (_clean(v) for v in value) if c not in ("", None)]
    if isinstance(value, dict):
        return {strip_html(k): _clean(v) for k, v in value.items()}
    return value


def _extras(rec: dict[str, Any], consumed: frozenset[str]) -> dict[str, Any]:
    return {k: _clean(v) for k, v in rec.items() if k not in consumed and k not in _DROPPED}


# ----------------------------------------------------------------------------- Amazon 2018 (and 2014)

_CONSUMED_2018 = frozenset(
    {"asin", "title", "brand", "category", "categories", "description", "feature", "imageURL",
     "imageURLHighRes", "imUrl", "main_cat"}
)  # fmt: skip


def item_2018(rec: dict[str, Any]) -> dict[str, Any]:
    """One 2018 (or 2014) metadata record as an item row; unknown fields go to extra via make_items."""
    if rec.get("category"):
        category = _path(rec["category"])
    else:
        # 2014 dumps: "categories" is a list of paths, e.g. [["Books"], ["Books", "Children's Books"]].
        paths = [_path(p) for p in rec.get("categories") or []]
        category = "; ".join(dict.fromkeys(p for p in paths if p))
    row = {
        "item_id": str(rec.get("asin") or ""),
        "title": rec.get("title"),
        "brand": rec.get("brand"),
        "category": category,
        "description": _joined(rec.get("description")),
        "image": _first_url(rec.get("imageURLHighRes"))
        or _first_url(rec.get("imageURL"))
        or _first_url(rec.get("imUrl")),
        "feature": _features(rec.get("feature")),
        **_extras(rec, _CONSUMED_2018),
    }
    main_cat = rec.get("main_cat")
    if isinstance(main_cat, str) and main_cat:
        alt = _IMG_ALT.search(main_cat) if "<img" in main_cat else None
        row["main_cat"] = alt.group(1).strip() if alt else strip_html(main_cat)
    return row


@register_importer("amazon2018")
def import_amazon2018(spec: ImportSpec) -> RawData:
    """Amazon Review Data 2018 (or the 2014 dumps): ``spec.path`` reviews, ``spec.meta_path`` metadata.

    Reviews (``<Cat>_5.json.gz`` or the full ``<Cat>.json.gz``): reviewerID, asin, unixReviewTime,
    overall. Metadata (``meta_<Cat>.json.gz``; found next to the reviews when not given): title,
    brand, category path, description, feature bullets (``extra["feature"]``), first high-res image,
    and the remaining fields (price, main_cat, rank, details, ...) in extra.
    """
    return LAYOUTS["amazon2018"].read(spec)


# ----------------------------------------------------------------------------- Amazon Reviews 2023

_CONSUMED_2023 = frozenset(
    {"parent_asin", "title", "store", "categories", "description", "features", "images"}
)


def _image_2023(images: Any) -> str:
    """First hi_res URL, else first large, else first thumb.

    The raw jsonl has a list of {"thumb", "large", "variant", "hi_res"} dicts; the Hugging Face
    parquet conversion has a dict of lists instead: both are accepted.
    """
    for key in ("hi_res", "large", "thumb"):
        if isinstance(images, dict):
            url = _first_url(images.get(key))
        elif isinstance(images, list | tuple):
            url = _first_url([img.get(key) for img in images if isinstance(img, dict)])
        else:
            url = ""
        if url:
            return url
    return ""


def item_2023(rec: dict[str, Any]) -> dict[str, Any]:
    """One Amazon Reviews 2023 metadata record as an item row (store -> brand, features -> extra)."""
    return {
        "item_id": str(rec.get("parent_asin") or rec.get("asin") or ""),
        "title": rec.get("title"),
        "brand": rec.get("store"),
        "category": _path(rec.get("categories") or []),
        "description": _joined(rec.get("description")),
        "image": _image_2023(rec.get("images")),
        "feature": _features(rec.get("features")),
        **_extras(rec, _CONSUMED_2023),  # main_category, price, average_rating, details, ...
    }


@register_importer("amazon2023")
def import_amazon2023(spec: ImportSpec) -> RawData:
    """Amazon Reviews 2023: ``spec.path`` reviews jsonl, ``spec.meta_path`` ``meta_<Cat>.jsonl`` (gz or plain).

    Items are keyed by ``parent_asin`` (the product, not the variant), as the release recommends;
    review timestamps are milliseconds and become seconds.
    """
    return LAYOUTS["amazon2023"].read(spec)


# ----------------------------------------------------------------------------- layouts


@dataclass(frozen=True)
class ReviewsLayout:
    """Where a JSON-lines release keeps what llmrec reads: the line reader above and the columnar reader of
    ``prepare --engine duckdb`` (:mod:`llmrec.data.columnar`) both follow it, so they read the same fields."""

    name: str
    user_key: str
    item_keys: tuple[str, ...]  # id keys of a review, most preferred first (the first non-empty one wins)
    time_key: str
    rating_key: str
    time_divisor: int  # the source's time unit -> seconds
    meta_id_keys: tuple[str, ...]  # id keys of a metadata record, most preferred first
    to_item: Callable[[dict[str, Any]], dict[str, Any]]
    meta_example: str  # the metadata file's usual name, for the hint when none is found

    def paths(self, spec: ImportSpec) -> tuple[Path, Path]:
        """The reviews file and its metadata file (given, or found next to the reviews)."""
        reviews = require_path(spec.path, "Amazon reviews file", "--path")
        return reviews, _meta_path(spec, reviews, self.meta_example)

    def read_reviews(self, reviews: Path) -> pd.DataFrame:
        return read_reviews(
            reviews,
            user_key=self.user_key,
            item_keys=self.item_keys,
            time_key=self.time_key,
            rating_key=self.rating_key,
            time_divisor=self.time_divisor,
        )

    def read_meta(self, meta: Path) -> pd.DataFrame:
        return read_meta(meta, self.to_item, id_key=self.meta_id_keys[0], review_key=self.user_key)

    def source_record(self, reviews: Path, meta: Path) -> dict[str, Any]:
        """meta.json's "source" (both engines): name, files, and the prompts' word for an item."""
        return {"name": self.name, "files": [str(reviews), str(meta)], "item_noun": "product"}

    def read(self, spec: ImportSpec) -> RawData:
        reviews, meta = self.paths(spec)
        interactions = self.read_reviews(reviews)
        return RawData(
            items=self.read_meta(meta), interactions=interactions, source=self.source_record(reviews, meta)
        )


LAYOUTS = {
    "amazon2018": ReviewsLayout(
        "amazon2018", "reviewerID", ("asin",), "unixReviewTime", "overall", 1, ("asin",), item_2018,
        "meta_<Category>.json.gz",
    ),
    "amazon2023": ReviewsLayout(
        "amazon2023", "user_id", ("parent_asin", "asin"), "timestamp", "rating", 1000,
        ("parent_asin", "asin"), item_2023, "meta_<Category>.jsonl",
    ),
}  # fmt: skip
