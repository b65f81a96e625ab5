"""Atomic file writes and checksums: an interrupted job never leaves a file that loads as valid."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it over ``path``, on error delete it.

    ``suffix`` lets writers that insist on an extension (``np.save`` adds ``.npy``) keep it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial" + suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def replace_dir(finished: Path, target: Path) -> None:
    """Swap a completely written folder ``finished`` into ``target``; the old ``target`` is kept until then."""
    import shutil

    if target.exists():
        backup = target.with_name(f".{target.name}.old")
        shutil.rmtree(backup, ignore_errors=True)
        target.rename(backup)
        finished.rename(target)
        shutil.rmtree(backup, ignore_errors=True)
    else:
        finished.rename(target)


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def write_parquet_atomic(df: Any, path: str | Path) -> None:
    """Write a pandas DataFrame as parquet through a temp file (no index column)."""
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


def write_npy_atomic(path: str | Path, array: Any) -> None:
    import numpy as np

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array, allow_pickle=False)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_json(path: str | Path) -> Any:
    from llmrec.errors import LlmrecError

    path = Path(path)
    if not path.exists():
        raise LlmrecError("file not found", file=path)
    if path.is_dir():
        raise LlmrecError("a folder where a JSON file was expected", file=path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise LlmrecError(f"invalid JSON ({e.msg})", file=path, row=e.lineno) from None
    except UnicodeDecodeError as e:
        raise LlmrecError(f"not a UTF-8 text file (byte {e.start}: {e.reason})", file=path) from None
