"""The readers every importer shares: open (possibly compressed) text, read a delimited table fast, and when
something is wrong name the exact file, 1-based line and field in one :class:`~llmrec.errors.LlmrecError`.

pandas reads a file fast, and only when something is wrong is the file scanned again line by line, so the
error can name the line and field. This module sits below the importers (and below
:mod:`llmrec.data.images`): it imports only :mod:`llmrec.data.schema` and :mod:`llmrec.errors`, so an importer
that reads a file never pulls in another importer.
"""

from __future__ import annotations

import bz2
import contextlib
import csv
import functools
import gzip
import lzma
import math
import zlib
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd

from llmrec.data.schema import IMAGE_EXTS, out_of_int64
from llmrec.errors import LlmrecError

_SEPARATORS = {".csv": ",", ".tsv": "\t", ".txt": "\t"}
_OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
# What reading a truncated or damaged file raises, compressed or not (bz2 says OSError "Invalid data stream").
READ_ERRORS = (OSError, EOFError, zlib.error, lzma.LZMAError)

# A check takes one field's text and returns what is wrong with it, or None if it is fine.
Check = Callable[[str], str | None]
# Where a scan found a bad line: (1-based line number, field or None, what is wrong).
Found = tuple[int, str | None, str]


# ----------------------------------------------------------------------------- shared file helpers


def require_path(value: str | Path | None, what: str, flag: str) -> Path:
    """``value`` as an existing path, or an error saying which option to set."""
    if not value:
        raise LlmrecError(f"no {what} given", hint=f"pass {flag}")
    path = Path(value).expanduser()
    if not path.exists():
        raise LlmrecError(f"{what} not found", file=path, hint=f"check {flag}")
    return path


def open_text(path: Path, encoding: str = "utf-8") -> IO[str]:
    """Open a text file, decompressing .gz/.bz2/.xz by extension (the same files pandas reads)."""
    opener = _OPENERS.get(path.suffix.lower())
    if opener is not None:
        return opener(path, "rt", encoding=encoding, newline="")
    return open(path, encoding=encoding, newline="")


def unreadable_error(path: Path, e: BaseException, row: int | None = None) -> LlmrecError:
    """The one error for a file that cannot be read to its end (one of :data:`READ_ERRORS`); ``row`` is the
    line it stopped at, where known. Only a file that ends early is called truncated."""
    reason = f"{type(e).__name__}: {e}"
    if isinstance(e, EOFError):
        return LlmrecError(
            f"the file ends early ({reason})",
            file=path,
            row=row,
            hint="it is truncated: download it again",
        )
    compression = path.suffix.lower()
    if isinstance(e, zlib.error | lzma.LZMAError) or (isinstance(e, OSError) and e.errno is None):
        what = f"not valid {compression.lstrip('.')} data" if compression in _OPENERS else "damaged data"
        return LlmrecError(
            f"{what} ({reason})",
            file=path,
            row=row,
            hint="the file is damaged or not compressed the way its name says: download it again, or "
            "name it after its real format",
        )
    return LlmrecError(f"cannot read ({reason})", file=path, row=row)


def undecodable_line(path: Path, encoding: str) -> LlmrecError | None:
    """The error for the first line of ``path`` that is not valid ``encoding`` text (1-based, as an editor
    counts), or None. Lines are split on bytes, so this suits ASCII-compatible encodings (utf-8, latin-1)."""
    opener = _OPENERS.get(path.suffix.lower(), open)
    try:
        with opener(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                try:
                    raw.decode(encoding)
                except UnicodeDecodeError as e:
                    return decode_error(path, e, lineno, encoding)
    except READ_ERRORS as e:
        return unreadable_error(path, e)
    return None


def decode_error(path: Path, e: UnicodeDecodeError, row: int | None, encoding: str = "utf-8") -> LlmrecError:
    """A line that is not ``encoding`` text: which byte, where, and what to do."""
    bad = e.object[e.start : e.start + 1].hex()
    return LlmrecError(
        f"not valid {encoding} text (byte 0x{bad} at column {e.start + 1}: {e.reason})",
        file=path,
        row=row,
        hint=f"save the file as {encoding}",
    )


def is_number(text: str) -> str | None:
    """Check: a finite number (not empty, not NaN, not infinite)."""
    try:
        if math.isfinite(float(text)):
            return None
        if not math.isnan(float(text)):
            return f"{text!r} is not a finite number"
    except ValueError:
        pass
    return f"{text!r} is not a number"


def is_unix_time(text: str) -> str | None:
    """Check: a number of seconds that fits an int64 timestamp."""
    if (problem := is_number(text)) is not None:
        return problem
    if out_of_int64(pd.Series([text])).iloc[0]:
        return f"{text.strip()} does not fit a 64-bit unix time (seconds)"
    return None


def is_number_or_empty(text: str) -> str | None:
    """Check: a number, or nothing at all (an absent rating)."""
    return None if not text.strip() else is_number(text)


def is_not_empty(text: str) -> str | None:
    """Check: an id must be present."""
    return None if text.strip() else "empty value"


def is_time(text: str) -> str | None:
    """Check: unix seconds or an ISO-8601 date (what :func:`_timestamps` accepts)."""
    if is_number(text) is None:
        return is_unix_time(text)
    try:
        datetime.fromisoformat(text.strip().replace("Z", "+00:00"))  # fast path for the common forms
        return None
    except ValueError:
        pass
    try:
        pd.to_datetime(text, utc=True, format="ISO8601")  # the parser _timestamps uses
        return None
    except (ValueError, TypeError):
        return f"{text!r} is neither unix seconds nor an ISO-8601 date"


def read_delimited(
    path: Path,
    *,
    sep: str,
    names: Sequence[str] | None = None,
    encoding: str = "utf-8",
    checks: dict[str, Check] | None = None,
    hint: str | None = None,
    strict: bool = False,
) -> pd.DataFrame:
    """Read a delimited text file as strings; malformed lines raise :class:`LlmrecError` with the line number.

    ``names`` labels a header-less file (MovieLens ``.dat``); without it the first line is the header.
    ``checks`` maps a column to :data:`Check` functions (:func:`is_number`, ...); only the numeric
    checks are applied to the whole column with pandas, the rest run only in the error scan. Blank
    lines are skipped. A line with too many fields is always an error; one with too few only with
    ``strict`` or when its padding fails a numeric check: pandas' fast C parser pads a short line with
    empty values, so ``strict`` switches to the slower python parser (meant for small files). Values
    come back as text exactly as written (no NA guessing, so an id or a title such as "NA" survives).
    """
    checks = checks or {}
    if names is None:
        _check_header(path, sep, encoding, hint)
    # The C parser cannot split on a multi-character separator such as MovieLens' "::".
    engine = "c" if len(sep) == 1 and not strict else "python"
    locate = functools.partial(find_bad_line, path, sep, names, encoding, checks)
    with reading_errors(path, hint, locate, encoding):
        try:
            df = pd.read_csv(
                path,
                sep=sep,
                header=None if names is not None else 0,
                names=list(names) if names is not None else None,
                dtype=str,
                keep_default_na=False,
                index_col=False,
                encoding=encoding,
                engine=engine,
            )
        except FileNotFoundError:  # (an OSError: said here before reading_errors calls it unreadable)
            raise LlmrecError("file not found", file=path, hint=hint) from None
    for col in checks:
        if col not in df.columns:
            raise missing_column_error(path, col, col, list(df.columns))
    # The python engine leaves the fields missing from a short line as NaN; the C engine gives "",
    # which the numeric checks below catch (a short line in a text-only file passes, as in pandas).
    bad = df.isna().any(axis=1)
    for col, check in checks.items():
        if check in (is_number, is_number_or_empty, is_unix_time):
            num = pd.to_numeric(df[col], errors="coerce").astype("float64")
            wrong = ~np.isfinite(num)  # not a number, NaN, or infinite
            if check is is_unix_time:
                wrong |= out_of_int64(num)
            bad |= wrong & (df[col].str.strip() != "") if check is is_number_or_empty else wrong
    if bad.any():
        found = locate()
        if found is None:  # the scan disagrees with pandas: report the data row pandas flagged
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise LlmrecError(
                f"data row {row + 1} is malformed: {df.iloc[row].to_dict()}", file=path, hint=hint
            )
        raise LlmrecError(found[2], file=path, row=found[0], field=found[1], hint=hint)
    return df


def _check_header(path: Path, sep: str, encoding: str, hint: str | None) -> None:
    """A header naming a column twice is an error (pandas would silently rename the second 'x' to 'x.1')."""
    try:
        with open_text(path, encoding) as f:
            header = next((fields for _, fields in _records(f, sep) if any(x.strip() for x in fields)), [])
    except UnicodeDecodeError as e:
        raise undecodable_line(path, encoding) or decode_error(path, e, None, encoding) from None
    except READ_ERRORS as e:
        raise unreadable_error(path, e, row=1) from None
    except csv.Error as e:
        raise LlmrecError(f"cannot parse the header ({e})", file=path, row=1, hint=hint) from None
    seen: set[str] = set()
    for name in header:
        if name in seen:
            raise LlmrecError(
                f"column '{name}' appears twice in the header",
                file=path,
                row=1,
                field=name,
                hint="rename or remove one of them",
            )
        seen.add(name)


def find_bad_line(
    path: Path, sep: str, names: Sequence[str] | None, encoding: str, checks: dict[str, Check]
) -> Found | None:
    """Scan ``path`` for the first line with the wrong field count or a value failing its check.

    Returns (1-based line number as an editor shows it, header included; field; what is wrong), or None.
    """
    expected = list(names) if names is not None else None
    with open_text(path, encoding) as f:
        for lineno, fields in _records(f, sep):
            if not any(x.strip() for x in fields):
                continue  # blank line: pandas skips it too
            if expected is None:
                expected = fields  # the header line
                continue
            if len(fields) != len(expected):
                message = f"{len(fields)} fields where {len(expected)} are expected ({sep.join(expected)})"
                # A short line names the first missing field; a long one has no single culprit.
                return lineno, expected[len(fields)] if len(fields) < len(expected) else None, message
            for col, check in checks.items():
                if col in expected and (problem := check(fields[expected.index(col)])) is not None:
                    return lineno, col, problem
    return None


def missing_column_error(
    path: Path, field: str, column: str, available: Sequence[str], flag: str = "--columns"
) -> LlmrecError:
    """The error for a column that should be in ``path`` but is not, listing what is there; ``flag`` is the
    option whose mapping applies to this file."""
    what = f"column '{column}' (mapped to {field})" if column != field else f"column '{column}'"
    hint = f"map the right column with {flag} {field}=<column>"
    if len(available) == 1:  # one column: the file was split on the wrong separator
        for sep, (name, fix) in _OTHER_SEPARATORS.items():
            if sep in str(available[0]):
                hint = f"the header holds {name}s but the file name says otherwise: {fix}"
                break
    return LlmrecError(f"no {what}; available columns: {list(available)}", file=path, field=field, hint=hint)


# separator -> (its name, what to do): the separator comes from the extension (.csv comma, .tsv/.txt tab)
_OTHER_SEPARATORS = {
    "\t": ("tab", "name a tab-separated file .tsv"),
    ",": ("comma", "name a comma-separated file .csv"),
    ";": ("semicolon", "convert it to comma-separated .csv or tab-separated .tsv"),
    "|": ("pipe", "convert it to comma-separated .csv or tab-separated .tsv"),
}


def _records(f: IO[str], sep: str) -> Iterator[tuple[int, list[str]]]:
    """(1-based line where the record starts, fields), split the way pandas splits for this separator."""
    if len(sep) > 1:  # pandas' python engine: no quoting with a multi-character separator
        for lineno, line in enumerate(f, 1):
            yield lineno, line.rstrip("\r\n").split(sep)
        return
    reader = csv.reader(f, delimiter=sep)
    end = 0
    for fields in reader:
        start, end = end + 1, reader.line_num  # a quoted field may span lines
        yield start, fields


def scan_lines(
    path: Path, check: Callable[[str], tuple[str | None, str] | None], encoding: str = "utf-8"
) -> Found | None:
    """The first line of ``path`` that ``check`` (line text without its line break -> (field, what is
    wrong) or None) refuses: (1-based line number, field, what is wrong), or None. For the error path of
    readers that parse fast with pandas and scan again only to say where the problem is."""
    try:
        with open_text(path, encoding) as f:
            for lineno, line in enumerate(f, 1):
                found = check(line.rstrip("\r\n"))
                if found is not None:
                    return lineno, found[0], found[1]
    except UnicodeDecodeError as e:
        raise undecodable_line(path, encoding) or decode_error(path, e, None, encoding) from None
    except READ_ERRORS as e:
        raise unreadable_error(path, e) from None
    return None


def located_error(path: Path, found: Found | None, fallback: str, hint: str | None) -> LlmrecError:
    """The error for a file pandas could not parse, at the bad line a scan ``found`` (:func:`scan_lines`,
    :func:`find_bad_line`); where the scan found none (it and pandas disagree), what pandas said
    (``fallback``)."""
    if found is None:
        return LlmrecError(f"cannot parse ({fallback})", file=path, hint=hint)
    return LlmrecError(found[2], file=path, row=found[0], field=found[1], hint=hint)


@contextlib.contextmanager
def reading_errors(
    path: Path, hint: str | None, locate: Callable[[], Found | None], encoding: str = "utf-8"
) -> Iterator[None]:
    """Around a pandas read of the text file ``path``: what it raises becomes the importers' one-line error
    (an empty file, bytes that are not ``encoding``, a damaged or truncated file, or a line pandas cannot
    split, which ``locate`` finds again: :func:`located_error`)."""
    try:
        yield
    except pd.errors.EmptyDataError:
        raise LlmrecError("file is empty", file=path, hint=hint) from None
    except UnicodeDecodeError as e:
        raise undecodable_line(path, encoding) or decode_error(path, e, None, encoding) from None
    except READ_ERRORS as e:
        raise unreadable_error(path, e) from None
    except pd.errors.ParserError as e:  # too many fields on some line
        raise located_error(path, locate(), str(e), hint) from None


def text_lines(path: Path, encoding: str = "utf-8") -> Iterator[tuple[int, str]]:
    """(1-based line number, text without its line break) of every non-blank line of ``path``, for readers
    that check each line themselves; a file that cannot be decoded or read to its end is the one-line
    error of :func:`undecodable_line` or :func:`unreadable_error` (naming the line it stopped at)."""
    lineno = 0
    try:
        with open_text(path, encoding) as f:
            for lineno, line in enumerate(f, 1):
                line = line.rstrip("\r\n")
                if line.strip():
                    yield lineno, line
    except UnicodeDecodeError as e:
        raise undecodable_line(path, encoding) or decode_error(path, e, None, encoding) from None
    except READ_ERRORS as e:
        raise unreadable_error(path, e, row=lineno + 1) from None


def image_files(image_dir: str | None, default: Path | None = None) -> dict[str, Path]:
    """File name stem -> file for every image (jpg, jpeg, png, webp, gif) in the ``--image-dir`` folder, or in
    ``default`` when no folder is given and that one exists; {} when neither. Sources without image URLs
    (MIND, Netflix) get their images this way: ``<item_id>.jpg`` becomes the item's image reference."""
    if image_dir:
        folder = Path(image_dir).expanduser()
        if not folder.is_dir():
            raise LlmrecError(
                "image folder not found",
                file=folder,
                hint="--image-dir takes a folder of <item_id>.jpg files",
            )
    elif default is not None and default.is_dir():
        folder = default
    else:
        return {}
    rank = {ext: i for i, ext in enumerate(IMAGE_EXTS)}
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir(), key=lambda p: (p.stem, rank.get(p.suffix.lower().lstrip("."), 99))):
        if path.suffix.lower().lstrip(".") in rank and path.is_file():
            found.setdefault(path.stem, path.resolve())  # jpg before jpeg, png, webp, gif
    return found


# ----------------------------------------------------------------------------- tables by extension


def table_format(path: Path) -> str:
    """'parquet' or the separator of a text table, from the extension (ignoring a compression suffix)."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _OPENERS:
        suffixes = suffixes[:-1]
    ext = suffixes[-1] if suffixes else ""
    if ext == ".parquet":
        return "parquet"
    if ext not in _SEPARATORS:
        raise LlmrecError(
            f"unknown table format '{ext or path.name}'",
            file=path,
            hint="use .csv (comma), .tsv/.txt (tab) or .parquet (text files may end in .gz/.bz2/.xz)",
        )
    return _SEPARATORS[ext]


def read_table(path: Path) -> pd.DataFrame:
    """A CSV (.csv), tab-separated (.tsv/.txt) or parquet table; text tables are read as strings."""
    fmt = table_format(path)
    if fmt != "parquet":
        return read_delimited(path, sep=fmt)
    try:
        return pd.read_parquet(path)
    except Exception as e:  # pyarrow raises several types for a damaged or non-parquet file
        raise LlmrecError(f"cannot read parquet ({e})", file=path) from None
