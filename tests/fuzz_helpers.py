"""Helpers of the fuzz suite (tests/test_fuzz.py): run the CLI in-process, check its one error line, and
prove that a command left every file it was given byte for byte as it was."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmrec.cli import main

# What main() may print on stderr besides its one error line: logging records ("%H:%M:%S LEVEL name: ...",
# see cli.py) and tqdm progress bars.
_LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d (DEBUG|INFO|WARNING) ")
_TQDM_LINE = re.compile(r"\d+it \[|it/s\]|s/it\]|\|\s*\d+/\d+")


@dataclass
class Result:
    """What one in-process ``llmrec`` command did."""

    code: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        """stderr lines that are neither logging records nor progress bars."""
        raw = self.err.replace("\r", "\n").splitlines()
        return [x for x in raw if x.strip() and not _LOG_LINE.match(x) and not _TQDM_LINE.search(x)]

    def __str__(self) -> str:
        return f"exit {self.code}; stderr: {self.err.strip()[-2000:]!r}"


def run_cli(argv: list[str], cwd: str | Path | None = None) -> Result:
    """``llmrec.cli.main(argv)`` in this process (fast), in ``cwd``, with stdout and stderr captured."""
    out, err = io.StringIO(), io.StringIO()
    here = os.getcwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main([str(a) for a in argv])
    finally:
        os.chdir(here)
    return Result(code, out.getvalue(), err.getvalue())


def assert_one_error_line(
    r: Result,
    command: str,
    names: tuple[str, ...] = (),
    row: int | None = None,
    field: str | None = None,
    absent: tuple[str, ...] = (),
) -> str:
    """Exit 2 with exactly one ``llmrec <command>: error:`` line holding every one of ``names`` (file
    names, options, values) and, when given, ``row N`` and ``field 'x'``; no traceback, no crash log."""
    assert r.code != 70, f"crash (a bug): {r}"
    assert "Traceback" not in r.err, f"traceback printed: {r}"
    assert r.code == 2, f"expected exit 2: {r}"
    lines = r.lines
    assert len(lines) == 1, f"expected exactly one error line, got {lines}"
    line = lines[0]
    assert line.startswith(f"llmrec {command}: error:"), line
    for name in names:
        assert name in line, f"{name!r} not named in {line!r}"
    if row is not None:
        assert re.search(rf"\brow {row}\b", line), f"row {row} not named in {line!r}"
    if field is not None:
        assert f"field '{field}'" in line, f"field '{field}' not named in {line!r}"
    for text in absent:
        assert text not in line, f"{text!r} should not be in {line!r}"
    return line


def assert_not_a_crash(r: Result, command: str) -> None:
    """Success, or the one error line; never exit 70 or a traceback."""
    assert r.code != 70, f"crash (a bug): {r}"
    assert "Traceback" not in r.err, f"traceback printed: {r}"
    if r.code != 0:
        assert_one_error_line(r, command)


# ----------------------------------------------------------------------------- files left as they were

Snapshot = dict[str, tuple[str, int]]


def snapshot(root: str | Path) -> Snapshot:
    """Every file and folder under ``root``: relative path -> (sha256 or "dir", permission bits)."""
    root = Path(root)
    out: Snapshot = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        mode = p.lstat().st_mode & 0o7777
        out[rel] = ("dir", mode) if p.is_dir() else (hashlib.sha256(p.read_bytes()).hexdigest(), mode)
    return out


def partials(root: str | Path) -> list[str]:
    """Temp folders/files a write left behind (``.<name>.<random>.partial``, ``*.tmp``)."""
    root = Path(root)
    return [
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.name.endswith(".partial") or p.name.endswith(".tmp")
    ]


def assert_unchanged(before: Snapshot, root: str | Path, *, ignore: tuple[str, ...] = ()) -> None:
    """Every path of ``before`` is still there, byte-identical with the same mode; nothing was added
    (paths under a prefix in ``ignore`` may change: a successful command's output)."""
    after = snapshot(root)

    def kept(rel: str) -> bool:
        return not any(rel == p or rel.startswith(p + os.sep) for p in ignore)

    changed = [k for k in before if kept(k) and after.get(k) != before[k]]
    added = [k for k in after if kept(k) and k not in before]
    assert not changed, f"pre-existing files changed or removed: {changed[:10]}"
    assert not added, f"files left behind: {added[:10]}"
    assert not partials(root), f"temp files left behind: {partials(root)}"


# ----------------------------------------------------------------------------- small valid raw files


def _inter_rows(n_users: int = 8, n_items: int = 10, per_user: int = 6) -> list[tuple[str, str, int, int]]:
    """(user, item, unix time, stars): every user walks the catalog from its own start."""
    return [
        (f"u{u}", f"i{(u + t) % n_items}", 1_500_000_000 + 3600 * t + u, 1 + (u + t) % 5)
        for u in range(n_users)
        for t in range(per_user)
    ]


def _text(lines: list[str]) -> bytes:
    return ("\n".join(lines) + "\n").encode("utf-8")


@dataclass
class RawSource:
    """A small valid source for one importer: its files (name -> bytes) and how to prepare it."""

    importer: str
    files: dict[str, bytes]
    args: list[str]  # the prepare arguments, with {dir} for the folder holding the files

    def write(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in self.files.items():
            (folder / name).write_bytes(data)

    def argv(self, folder: Path, out: Path) -> list[str]:
        args = [a.replace("{dir}", str(folder)) for a in self.args]
        return ["prepare", self.importer, *args, "--kcore", "0", "--num-negatives", "2", "--out", str(out)]


def raw_sources() -> dict[str, RawSource]:
    """One small valid source per importer family (the table importer twice: plain and gzipped)."""
    rows = _inter_rows()
    items = sorted({i for _, i, _, _ in rows}, key=lambda s: int(s[1:]))
    csv_inter = _text(["user_id,item_id,timestamp,rating"] + [f"{u},{i},{t},{r}" for u, i, t, r in rows])
    csv_items = _text(
        ["item_id,title,brand"] + [f'{i},"Item {i[1:]}, the <b>best</b>",brand{i[1:]}' for i in items]
    )
    reviews18 = _text(
        [
            json.dumps(
                {"reviewerID": u, "asin": i, "unixReviewTime": t, "overall": float(r), "reviewText": "ok"}
            )
            for u, i, t, r in rows
        ]
    )
    meta18 = _text(
        [
            json.dumps({"asin": i, "title": f"Item {i}", "brand": "Acme", "category": ["Toys", "Dolls"]})
            for i in items
        ]
    )
    reviews23 = _text(
        [
            json.dumps(
                {"user_id": u, "parent_asin": i, "asin": i + "v", "timestamp": t * 1000, "rating": float(r)}
            )
            for u, i, t, r in rows
        ]
    )
    meta23 = _text(
        [
            json.dumps({"parent_asin": i, "title": f"Item {i}", "store": "Acme", "categories": ["Toys"]})
            for i in items
        ]
    )
    ml1m_ratings = _text([f"{u[1:]}::{i[1:]}::{r}::{t}" for u, i, t, r in rows])
    ml1m_movies = _text([f"{i[1:]}::Movie {i[1:]} (199{int(i[1:]) % 10})::Comedy|Drama" for i in items])
    ml1m_users = _text([f"{u}::F::25::{u % 21}::0000{u}" for u in range(8)])
    mll_ratings = _text(
        ["userId,movieId,rating,timestamp"] + [f"{u[1:]},{i[1:]},{r}.0,{t}" for u, i, t, r in rows]
    )
    mll_movies = _text(
        ["movieId,title,genres"] + [f'{i[1:]},"Movie, {i[1:]} (1995)",Comedy|Drama' for i in items]
    )
    return {
        "table": RawSource(
            "table",
            {"inter.csv": csv_inter, "items.csv": csv_items},
            ["--path", "{dir}/inter.csv", "--items-path", "{dir}/items.csv"],
        ),
        "table-gz": RawSource(
            "table", {"inter.csv.gz": gzip.compress(csv_inter, mtime=0)}, ["--path", "{dir}/inter.csv.gz"]
        ),
        "amazon2018": RawSource(
            "amazon2018",
            {"Toys_5.json": reviews18, "meta_Toys.json.gz": gzip.compress(meta18, mtime=0)},
            ["--path", "{dir}/Toys_5.json", "--meta-path", "{dir}/meta_Toys.json.gz"],
        ),
        "amazon2023": RawSource(
            "amazon2023",
            {"Toys.jsonl.gz": gzip.compress(reviews23, mtime=0), "meta_Toys.jsonl": meta23},
            ["--path", "{dir}/Toys.jsonl.gz", "--meta-path", "{dir}/meta_Toys.jsonl"],
        ),
        "ml-1m": RawSource(
            "ml-1m",
            {"ratings.dat": ml1m_ratings, "movies.dat": ml1m_movies, "users.dat": ml1m_users},
            ["--path", "{dir}"],
        ),
        "ml-latest": RawSource(
            "ml-latest", {"ratings.csv": mll_ratings, "movies.csv": mll_movies}, ["--path", "{dir}"]
        ),
    }


def assert_valid_dataset(out: Path) -> None:
    """``out`` is a readable dataset whose values are sane (no INT64_MIN times, no infinite ratings)."""
    from llmrec.data.dataset import Dataset

    ds = Dataset(out)
    inter = ds.interactions
    assert len(inter) > 0 and ds.n_items > 0
    ts = inter["timestamp"].to_numpy()
    assert (ts > np.iinfo(np.int64).min).all(), "a timestamp overflowed to INT64_MIN"
    ratings = inter["rating"].to_numpy(dtype=float)
    assert not np.isinf(ratings).any(), "an infinite rating was accepted"


def copy_tree(src: Path, dst: Path) -> Path:
    """A copy of a folder (modes and times kept)."""
    shutil.copytree(src, dst, copy_function=shutil.copy2)
    return dst


_KILL_SCRIPT = """
import functools, importlib, os, signal, sys
module_name, attr = sys.argv[1].rsplit(":", 1)
nth = int(sys.argv[2])
owner = importlib.import_module(module_name)
parts = attr.split(".")
for p in parts[:-1]:
    owner = getattr(owner, p)
original = getattr(owner, parts[-1])
calls = [0]

@functools.wraps(original)
def killer(*args, **kwargs):
    calls[0] += 1
    if calls[0] == nth:
        os.kill(os.getpid(), signal.SIGKILL)
    return original(*args, **kwargs)

setattr(owner, parts[-1], killer)
from llmrec.cli import main
sys.exit(main(sys.argv[3:]))
"""


def run_killed(argv: list[str], target: str, nth: int, timeout: float = 120) -> int:
    """Run ``llmrec argv`` in a child process that kill -9s itself on the ``nth`` call of ``target``
    ("module:attr", e.g. "pandas:DataFrame.to_parquet"); returns its exit status (-9 when it was killed)."""
    import subprocess
    import sys

    import llmrec

    env = dict(os.environ, PYTHONPATH=str(Path(llmrec.__file__).parent.parent), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-c", _KILL_SCRIPT, target, str(nth), *map(str, argv)],
        env=env,
        capture_output=True,
        timeout=timeout,
    )
    return proc.returncode
