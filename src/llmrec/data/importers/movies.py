"""The Movies Dataset (Kaggle, rounakbanik): ``movies_metadata.csv``, ``ratings.csv`` / ``ratings_small.csv``,
``links.csv`` / ``links_small.csv``, as downloaded.

- Ratings (``userId,movieId,rating,timestamp``; 0.5-5 stars, unix seconds) name MovieLens movieIds;
  ``links.csv`` (``movieId,imdbId,tmdbId``) maps them to the TMDB ids that key ``movies_metadata.csv``
  (its ``id`` column). Items are keyed by that TMDB id. Ratings of a movieId without a tmdbId are
  dropped, counted and logged (recorded in meta.json's source).
- Items: ``title``; ``overview`` -> description; ``genres`` (a Python-literal list of ``{'id', 'name'}``)
  -> category ``"Animation, Comedy"``; ``poster_path`` -> image: ``<image_dir>/<tmdb id>.jpg`` or
  ``<image_dir>/<poster file name>`` when ``--image-dir`` (or ``posters/`` inside ``--path``) holds it,
  else the TMDB URL ``https://image.tmdb.org/t/p/w500<poster_path>``; release year, date, imdb_id,
  tagline, original title and language, runtime and the MovieLens movieIds in ``extra``.
- ``movies_metadata.csv`` has a few known broken records (an overview cut by a line break: one short
  line, then a line whose ``id`` holds a date such as ``1997-08-20``): records with the wrong number of
  fields or a non-numeric id are skipped, counted and logged with their line numbers; a file where no
  record is usable is an error. A repeated id keeps its first record.

``--path`` is the dataset folder (``ratings_small.csv`` is read when present, the 100,004 ratings of 671
users the paper's 605 users suggest; else ``ratings.csv``) or a ratings file (the other files beside it).
"""

from __future__ import annotations

import ast
import csv
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from llmrec.data.importers.registry import ImportSpec, register_importer
from llmrec.data.readers import (
    READ_ERRORS,
    decode_error,
    find_bad_line,
    image_files,
    is_number,
    is_number_or_empty,
    is_unix_time,
    open_text,
    read_delimited,
    undecodable_line,
    unreadable_error,
)
from llmrec.data.schema import RawData, make_interactions, make_items
from llmrec.errors import LlmrecError

log = logging.getLogger(__name__)

TMDB_POSTER_URL = "https://image.tmdb.org/t/p/w500{poster_path}"
METADATA_COLUMNS = ("id", "title", "overview", "genres", "poster_path", "release_date", "imdb_id")
_EXTRA = ("imdb_id", "release_date", "tagline", "original_title", "original_language", "runtime")
_HINT = (
    "download The Movies Dataset again from https://www.kaggle.com/datasets/rounakbanik/the-movies-dataset"
)
_LAYOUT_HINT = (
    "pass --path the folder of The Movies Dataset (movies_metadata.csv, links.csv, ratings_small.csv or "
    "ratings.csv) or its ratings file"
)
_SHOWN_SKIPS = 10  # skipped records listed in the log and in meta.json (all are counted)


# ----------------------------------------------------------------------------- finding the files


def movies_files(path: Path) -> tuple[Path, Path, Path]:
    """(ratings, links, movies_metadata) for ``--path`` (folder or ratings file); missing ones are errors."""
    if path.is_file():
        ratings, folder = path, path.parent
    elif path.is_dir():
        folder = path
        ratings = next(
            (folder / n for n in ("ratings_small.csv", "ratings.csv") if (folder / n).is_file()), None
        )
        if ratings is None:
            raise LlmrecError(
                "no ratings_small.csv or ratings.csv in this folder", file=path, hint=_LAYOUT_HINT
            )
    else:
        raise LlmrecError("not found", file=path, hint=_LAYOUT_HINT)
    links = next((folder / n for n in ("links.csv", "links_small.csv") if (folder / n).is_file()), None)
    if links is None:
        raise LlmrecError(
            "no links.csv or links_small.csv beside the ratings (it maps movieId to the metadata's tmdb id)",
            file=folder,
            hint=_LAYOUT_HINT,
        )
    meta = folder / "movies_metadata.csv"
    if not meta.is_file():
        raise LlmrecError("no movies_metadata.csv beside the ratings", file=folder, hint=_LAYOUT_HINT)
    return ratings, links, meta


# ----------------------------------------------------------------------------- ratings and links


def read_ratings(path: Path) -> pd.DataFrame:
    """``userId,movieId,rating,timestamp`` read as numbers (26M rows of ratings.csv fit as numbers, not as
    text); a bad value is reported by its line and column."""
    checks = {"userId": is_number, "movieId": is_number, "rating": is_number, "timestamp": is_unix_time}
    dtypes = {"userId": "int64", "movieId": "int64", "rating": "float64", "timestamp": "int64"}
    try:
        df = pd.read_csv(path, dtype=dtypes, usecols=list(dtypes), engine="c")
        if not df.notna().all().all() or not np.isfinite(df["rating"]).all():
            raise ValueError("empty or non-finite value")
        return df
    except pd.errors.EmptyDataError:  # (a ValueError: caught before the handler below)
        raise LlmrecError("file is empty", file=path, hint=_HINT) from None
    except UnicodeDecodeError as e:  # (a ValueError too)
        raise undecodable_line(path, "utf-8") or decode_error(path, e, None) from None
    except (ValueError, pd.errors.ParserError, OverflowError) as e:
        if isinstance(e, ValueError) and "Usecols do not match" in str(e):
            header = pd.read_csv(path, nrows=0).columns.tolist()
            missing = next(c for c in dtypes if c not in header)
            raise LlmrecError(
                f"no column '{missing}'; available columns: {header}",
                file=path,
                row=1,
                field=missing,
                hint=_HINT,
            ) from None
        found = find_bad_line(path, ",", None, "utf-8", checks)
        if found is None:
            raise LlmrecError(f"cannot parse ({e})", file=path, hint=_HINT) from None
        raise LlmrecError(found[2], file=path, row=found[0], field=found[1], hint=_HINT) from None
    except READ_ERRORS as e:
        raise unreadable_error(path, e) from None


def read_links(path: Path) -> pd.Series:
    """movieId (int) -> tmdb id (text, e.g. "862"), for the rows of ``links.csv`` that have one."""
    links = read_delimited(
        path, sep=",", checks={"movieId": is_number, "tmdbId": is_number_or_empty}, hint=_HINT
    )
    has = links["tmdbId"].str.strip() != ""
    tmdb = pd.to_numeric(links.loc[has, "tmdbId"]).astype("int64").astype(str)
    return pd.Series(tmdb.to_numpy(), index=pd.to_numeric(links.loc[has, "movieId"]).astype("int64"))


# ----------------------------------------------------------------------------- movies_metadata.csv


def _genres(text: str, path: Path, lineno: int) -> str:
    """``"[{'id': 16, 'name': 'Animation'}, ...]"`` -> ``"Animation, ..."``."""
    if not text.strip():
        return ""
    try:
        value = ast.literal_eval(text)  # never eval: literals only
        names = [str(g["name"]).strip() for g in value]
    except (ValueError, SyntaxError, TypeError, KeyError, MemoryError, RecursionError):
        preview = text[:60] + ("..." if len(text) > 60 else "")
        raise LlmrecError(
            f"{preview!r} is not a list of {{'id': ..., 'name': ...}}",
            file=path,
            row=lineno,
            field="genres",
            hint=_HINT,
        ) from None
    return ", ".join(n for n in names if n)


def read_metadata(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(one dict per usable record with its ``line``, the skipped records as {line, reason})."""
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    try:
        with open_text(path) as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise LlmrecError("file is empty", file=path, hint=_HINT)
            for col in METADATA_COLUMNS:
                if col not in header:
                    raise LlmrecError(
                        f"no column '{col}'; available columns: {header}",
                        file=path,
                        row=1,
                        field=col,
                        hint=_HINT,
                    )
            at = {name: i for i, name in enumerate(header)}
            end = reader.line_num
            for fields in reader:
                lineno, end = end + 1, reader.line_num  # a quoted overview may span lines
                if not any(x.strip() for x in fields):
                    continue
                if len(fields) != len(header):
                    skipped.append(
                        {"line": lineno, "reason": f"{len(fields)} fields where {len(header)} are expected"}
                    )
                    continue
                tmdb = fields[at["id"]].strip()
                if not tmdb.isdigit():
                    skipped.append({"line": lineno, "reason": f"id {tmdb!r} is not a TMDB id"})
                    continue
                row = {name: fields[at[name]] for name in (*METADATA_COLUMNS, *_EXTRA) if name in at}
                row["genres"] = _genres(row["genres"], path, lineno)
                row["id"], row["line"] = str(int(tmdb)), lineno
                rows.append(row)
    except UnicodeDecodeError as e:
        raise undecodable_line(path, "utf-8") or decode_error(path, e, None) from None
    except READ_ERRORS as e:
        raise unreadable_error(path, e) from None
    except csv.Error as e:
        raise LlmrecError(f"cannot parse ({e})", file=path, hint=_HINT) from None
    if not rows:
        first = f" (line {skipped[0]['line']}: {skipped[0]['reason']})" if skipped else ""
        raise LlmrecError(f"no usable movie record{first}", file=path, hint=_HINT)
    if skipped:
        shown = "; ".join(f"line {s['line']}: {s['reason']}" for s in skipped[:_SHOWN_SKIPS])
        more = f" and {len(skipped) - _SHOWN_SKIPS} more" if len(skipped) > _SHOWN_SKIPS else ""
        log.warning("%s: skipped %d malformed records (%s%s)", path, len(skipped), shown, more)
    return rows, skipped


def _year(date: str) -> int | None:
    head = date.strip()[:4]
    return int(head) if len(head) == 4 and head.isdigit() else None


def movie_items(
    rows: list[dict[str, Any]], images: dict[str, Path], movielens_ids: dict[str, list[int]], source: Path
) -> pd.DataFrame:
    """The canonical item table of the usable metadata records (a repeated id keeps its first record)."""
    out = []
    for row in rows:
        poster = row["poster_path"].strip()
        stem = Path(poster).stem if poster else ""
        if row["id"] in images:
            image = str(images[row["id"]])
        elif stem and stem in images:
            image = str(images[stem])
        else:
            image = TMDB_POSTER_URL.format(poster_path=poster) if poster.startswith("/") else ""
        item = {
            "item_id": row["id"],
            "title": row["title"],
            "category": row["genres"],
            "description": row["overview"],
            "image": image,
            "year": _year(row["release_date"]),
            "poster_path": poster,
            "movielens_ids": movielens_ids.get(row["id"], []),
        }
        item.update({k: row[k].strip() for k in _EXTRA if k in row})
        out.append(item)
    return make_items(pd.DataFrame(out), source=str(source))


# ----------------------------------------------------------------------------- the importer


@register_importer("movies", defaults={"ctr_history_len": 5})
def import_movies(spec: ImportSpec) -> RawData:
    """The Movies Dataset (see the module docstring). The CTR history length defaults to 5 (HistLLM's
    movie setting); labels come from the ratings (``--like-threshold``, 4 by default)."""
    if not spec.path:
        raise LlmrecError("no Movies Dataset folder given", hint=_LAYOUT_HINT)
    root = Path(spec.path).expanduser()
    ratings_path, links_path, meta_path = movies_files(root)
    folder = ratings_path.parent
    ratings = read_ratings(ratings_path)
    tmdb_of = read_links(links_path)
    tmdb = ratings["movieId"].map(tmdb_of)
    unmapped = tmdb.isna()
    if unmapped.any():
        log.warning(
            "%s: dropped %d ratings of %d movieIds that %s maps to no tmdbId",
            ratings_path, int(unmapped.sum()), ratings.loc[unmapped, "movieId"].nunique(), links_path.name,
        )  # fmt: skip
    kept = ratings.loc[~unmapped]
    interactions = make_interactions(
        pd.DataFrame(
            {
                "user_id": kept["userId"].astype(str),
                "item_id": tmdb.loc[~unmapped],
                "timestamp": kept["timestamp"],
                "rating": kept["rating"],
            }
        ),
        source=str(ratings_path),
    )
    rows, skipped = read_metadata(meta_path)
    ids = pd.Series([r["id"] for r in rows])
    repeated = int(ids.duplicated().sum())
    if repeated:
        log.info("%s: %d repeated ids keep their first record", meta_path, repeated)
    movielens_ids: dict[str, list[int]] = {}
    for movie_id, tmdb_id in sorted(tmdb_of.items()):
        movielens_ids.setdefault(tmdb_id, []).append(int(movie_id))
    items = movie_items(rows, image_files(spec.image_dir, folder / "posters"), movielens_ids, meta_path)
    return RawData(
        items=items,
        interactions=interactions,
        source={
            "name": "movies",
            "item_noun": "movie",
            "files": [str(ratings_path), str(meta_path), str(links_path)],
            "ratings_without_tmdb_id": int(unmapped.sum()),
            "metadata_records_skipped": len(skipped),
            "metadata_skipped": skipped[:_SHOWN_SKIPS],
            "metadata_repeated_ids": repeated,
        },
    )
