"""Netflix Prize (the Kaggle copy, netflix-inc/netflix-prize-data): ``combined_data_1.txt`` .. ``_4.txt`` and
``movie_titles.csv``, as downloaded.

- ``combined_data_N.txt``: blocks of one ``MovieID:`` line followed by ``CustomerID,Rating,Date`` lines
  (1-5 stars, ``2005-09-06``). Each rating line is one interaction, its time the date's midnight UTC
  (ratings of one day keep the file's order). Labels come from the ratings (``--like-threshold``).
- ``movie_titles.csv``: ``MovieID,YearOfRelease,Title`` without a header, ISO-8859-1 text; the title is
  everything after the second comma (titles hold commas), the year may be ``NULL``. Items are keyed by
  MovieID; the year goes to ``extra``.
- Posters: Netflix ships none. ``--image-dir`` (or ``posters/`` inside ``--path``) holding
  ``<MovieID>.jpg`` gives them (e.g. the posters of the MMSSL release the HistLLM paper cites).

``--path`` is the dataset folder (every ``combined_data_*.txt`` in it is read) or one
``combined_data_N.txt`` (``movie_titles.csv`` beside it). The full set is 100M ratings: read one file, or
prepare with ``--max-users`` to work on a sample (HistLLM's Table 1 has 803 users).
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Callable
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

from llmrec.data.importers.registry import ImportSpec, register_importer
from llmrec.data.readers import image_files, located_error, reading_errors, scan_lines, text_lines
from llmrec.data.schema import RawData, make_interactions, make_items
from llmrec.errors import LlmrecError

log = logging.getLogger(__name__)

ENCODING = "latin-1"  # movie_titles.csv is ISO-8859-1; the rating files are ASCII
_HINT = "the file looks damaged: download the Netflix Prize data again"
_LAYOUT_HINT = (
    "pass --path the Netflix Prize folder (combined_data_1.txt .. combined_data_4.txt, movie_titles.csv) "
    "or one combined_data_N.txt"
)
_CHUNK = 2_000_000  # lines per pandas chunk: bounded memory on the 2 GB of rating files
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


# ----------------------------------------------------------------------------- finding the files


def netflix_files(path: Path) -> tuple[list[Path], Path]:
    """(the combined_data files, movie_titles.csv) for ``--path`` (folder or one rating file)."""
    if path.is_file():
        ratings, folder = [path], path.parent
    elif path.is_dir():
        folder = path

        def number(p: Path) -> tuple[int, str]:
            digits = re.findall(r"\d+", p.stem)
            return (int(digits[-1]) if digits else 0, p.name)

        ratings = sorted(folder.glob("combined_data_*.txt"), key=number)
        if not ratings:
            raise LlmrecError("no combined_data_*.txt in this folder", file=path, hint=_LAYOUT_HINT)
    else:
        raise LlmrecError("not found", file=path, hint=_LAYOUT_HINT)
    titles = folder / "movie_titles.csv"
    if not titles.is_file():
        raise LlmrecError("no movie_titles.csv beside the rating files", file=folder, hint=_LAYOUT_HINT)
    return ratings, titles


# ----------------------------------------------------------------------------- combined_data_N.txt


def _line_checker() -> Callable[[str], tuple[str | None, str] | None]:
    """A checker for :func:`scan_lines` that follows the blocks (a rating line needs a MovieID line above)."""
    seen_movie = False

    def check(line: str) -> tuple[str | None, str] | None:
        nonlocal seen_movie
        text = line.strip()
        if not text:
            return None
        if text.endswith(":") and "," not in text:
            if not text[:-1].isdigit():
                return "MovieID", f"{text!r} is not a 'MovieID:' line (a number, then a colon)"
            seen_movie = True
            return None
        fields = text.split(",")
        if len(fields) != 3:
            missing = ("Rating", "Date")[len(fields) - 1] if len(fields) < 3 else None
            return (
                missing,
                f"{len(fields)} comma-separated fields where 3 are expected (CustomerID,Rating,Date)",
            )
        customer, rating, day = (f.strip() for f in fields)
        if not seen_movie:
            return "MovieID", "a rating line before any 'MovieID:' line"
        if not customer.isdigit():
            return "CustomerID", f"{customer!r} is not a customer id (a number)"
        if rating not in ("1", "2", "3", "4", "5"):
            return "Rating", f"{rating!r} is not a rating from 1 to 5"
        try:
            if not _DATE.fullmatch(day):
                raise ValueError
            date.fromisoformat(day)
        except ValueError:
            return "Date", f"{day!r} is not a date like 2005-09-06"
        return None

    return check


def read_combined(path: Path) -> pd.DataFrame:
    """One rating file as numeric columns: customer (int64), movie (int64), rating (float64), timestamp
    (int64 unix seconds). Read in chunks with pandas; any malformed line is reported by its number."""
    columns: dict[str, list[np.ndarray]] = {"customer": [], "movie": [], "rating": [], "timestamp": []}
    movie = np.nan  # the block a chunk starts in
    offset = 0  # lines before this chunk

    def locate() -> tuple[int, str | None, str] | None:  # a fresh checker follows the blocks from line 1
        return scan_lines(path, _line_checker(), ENCODING)

    with reading_errors(path, _HINT, locate, ENCODING):
        chunks = pd.read_csv(
            path,
            header=None,
            names=["a", "b", "c", "extra"],  # a line with too many fields fills extra
            dtype=str,
            keep_default_na=False,
            quoting=csv.QUOTE_NONE,
            skip_blank_lines=False,  # row i of the file is line i + 1
            encoding=ENCODING,
            chunksize=_CHUNK,
        )
        for chunk in chunks:
            a, b, c, extra = (chunk[k].str.strip() for k in ("a", "b", "c", "extra"))
            blank = (a == "") & (b == "") & (c == "") & (extra == "")
            header = a.str.endswith(":") & (b == "") & (c == "") & (extra == "")
            ids = pd.to_numeric(a.where(header).str[:-1], errors="coerce")
            block = ids.ffill().fillna(movie)
            rating_row = ~header & ~blank
            customer = pd.to_numeric(a.where(rating_row), errors="coerce")
            stars = pd.to_numeric(b.where(rating_row), errors="coerce")
            day = pd.to_datetime(c.where(rating_row), format="%Y-%m-%d", errors="coerce")
            bad = header & ids.isna()
            bad |= rating_row & (customer.isna() | ~stars.isin([1, 2, 3, 4, 5]) | day.isna() | block.isna())
            bad |= rating_row & (~a.str.fullmatch(r"\d+").fillna(False) | (extra != ""))
            if bad.any():
                line = offset + int(np.flatnonzero(bad.to_numpy())[0]) + 1
                raise located_error(path, locate(), f"line {line}", _HINT)
            if header.any():
                movie = ids[header].iloc[-1]
            columns["customer"].append(customer[rating_row].to_numpy(dtype="int64"))
            columns["movie"].append(block[rating_row].to_numpy(dtype="int64"))
            columns["rating"].append(stars[rating_row].to_numpy(dtype="float64"))
            seconds = (day[rating_row] - pd.Timestamp(0)) // pd.Timedelta(seconds=1)
            columns["timestamp"].append(seconds.to_numpy(dtype="int64"))
            offset += len(chunk)
    out = pd.DataFrame({k: np.concatenate(v) if v else np.array([], "int64") for k, v in columns.items()})
    if out.empty:
        raise LlmrecError("no rating lines (CustomerID,Rating,Date) in the file", file=path, hint=_HINT)
    return out


# ----------------------------------------------------------------------------- movie_titles.csv


def read_titles(path: Path) -> pd.DataFrame:
    """``MovieID,YearOfRelease,Title`` (title = the rest of the line) -> item_id, title, year (int or None)."""
    ids: list[str] = []
    titles: list[str] = []
    years: list[int | None] = []
    for lineno, line in text_lines(path, ENCODING):
        fields = line.split(",", 2)
        if len(fields) < 3:
            raise LlmrecError(
                f"{len(fields)} comma-separated fields where 3 are expected (MovieID,YearOfRelease,Title)",
                file=path,
                row=lineno,
                field=("YearOfRelease", "Title")[len(fields) - 1],
                hint=_HINT,
            )
        movie, year, title = fields[0].strip(), fields[1].strip(), fields[2].strip()
        if not movie.isdigit():
            raise LlmrecError(
                f"{movie!r} is not a movie id (a number)",
                file=path,
                row=lineno,
                field="MovieID",
                hint=_HINT,
            )
        if year != "NULL" and not (len(year) == 4 and year.isdigit()):
            raise LlmrecError(
                f"{year!r} is neither a year nor NULL",
                file=path,
                row=lineno,
                field="YearOfRelease",
                hint=_HINT,
            )
        ids.append(str(int(movie)))
        titles.append(title)
        years.append(None if year == "NULL" else int(year))
    if not ids:
        raise LlmrecError("no movies in the file", file=path, hint=_HINT)
    # object dtype keeps ints and None apart: a float column would turn 2003 into 2003.0
    return pd.DataFrame({"item_id": ids, "title": titles, "year": pd.Series(years, dtype=object)})


# ----------------------------------------------------------------------------- the importer


@register_importer("netflix", defaults={"ctr_history_len": 10})
def import_netflix(spec: ImportSpec) -> RawData:
    """Netflix Prize (see the module docstring). The CTR history length defaults to 10 (HistLLM's netflix
    setting)."""
    if not spec.path:
        raise LlmrecError("no Netflix Prize folder given", hint=_LAYOUT_HINT)
    root = Path(spec.path).expanduser()
    rating_files, titles_path = netflix_files(root)
    parts = []
    for path in rating_files:
        parts.append(read_combined(path))
        log.info("%s: %d ratings", path.name, len(parts[-1]))
    ratings = pd.concat(parts, ignore_index=True)
    interactions = make_interactions(
        pd.DataFrame(
            {
                "user_id": ratings["customer"].astype(str),
                "item_id": ratings["movie"].astype(str),
                "timestamp": ratings["timestamp"],
                "rating": ratings["rating"],
            }
        ),
        source=str(rating_files[0]),
    )
    titles = read_titles(titles_path)
    posters = image_files(spec.image_dir, titles_path.parent / "posters")
    titles["image"] = [str(posters[i]) if i in posters else "" for i in titles["item_id"]]
    items = make_items(titles, source=str(titles_path))
    files = [str(rating_files[0]), str(titles_path), *map(str, rating_files[1:])]
    return RawData(
        items=items,
        interactions=interactions,
        source={"name": "netflix", "files": files, "item_noun": "movie"},
    )
