"""Atomic file writes and checksums: an interrupted job never leaves a file that loads as valid.

Temporary files and folders carry the writer's process id in their name (``.<name>.<pid>.<rand>.partial``)
so that a later job can tell what a killed process left behind (:func:`remove_stale_partials`) from what a
running one is still writing. Final files get the permissions the user's umask asks for (``mkstemp`` and
``mkdtemp`` would leave them 0600 / 0700).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# .<name>.<pid>.<8 random chars>.partial[<suffix>]: what atomic_path and partial_dir create
PARTIAL_NAME = re.compile(r"^\..*\.(\d+)\.[a-z0-9_]{8}\.partial(\.[^.]*)?$")


def umask() -> int:
    """The process umask (read without changing it where /proc allows, else set and restored at once)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (one of another user counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it over ``path``, on error delete it.

    ``suffix`` lets writers that insist on an extension (``np.save`` adds ``.npy``) keep it. The final
    file is ``0666 & ~umask``, like any file the user creates: the mode is set right before the rename,
    since a writer may re-create the temp file with its own mode (``safetensors.save_file`` makes it 0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.{os.getpid()}.", suffix=".partial" + suffix, dir=path.parent
    )
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~umask())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def partial_dir(parent: Path, name: str) -> Path:
    """A new temporary folder ``parent/.<name>.<pid>.<rand>.partial`` (``0777 & ~umask``)."""
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.{os.getpid()}.", suffix=".partial", dir=parent))
    os.chmod(tmp, 0o777 & ~umask())
    return tmp


def remove_stale_partials(folder: Path) -> list[Path]:
    """Delete the temporary files and folders (see :func:`atomic_path`, :func:`partial_dir`) in ``folder``
    whose writing process is gone; those of a process still running are kept. Returns what was removed."""
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for path in folder.iterdir():
        match = PARTIAL_NAME.match(path.name)
        if match is None or path.is_symlink() or pid_alive(int(match.group(1))):
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def replace_dir(finished: Path, target: Path) -> None:
    """Swap a completely written folder ``finished`` into ``target``; the old ``target`` is kept until then."""
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
