"""Atomic file writes and checksums: an interrupted job never leaves a file that loads as valid.

Temporary files and folders carry the writer's process id in their name (``.<name>.<pid>.<rand>.partial``)
so that a later job can tell what a killed process left behind (:func:`remove_stale_partials`) from what a
running one is still writing. Final files get the permissions the user's umask asks for (``mkstemp`` and
``mkdtemp`` would leave them 0600 / 0700).
"""

from __future__ import annotations

import contextlib
import errno
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
    except BaseException as e:
        named = write_error(e, path, tmp_path)  # before the unlink: a full disk must still look full
        tmp_path.unlink(missing_ok=True)
        if named is not None:
            raise named from e
        raise


# What a write meets when its location cannot take it: disk full, over quota, file too large, not writable.
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EPERM, errno.EROFS)
# how writers that are not Python (pyarrow, safetensors' Rust, torch's C++, numpy) spell them in their messages
_ERRNO_TEXT = re.compile(r"(?:\berrno|\bos error|\bcode:)\s*(\d+)", re.IGNORECASE)
_STRERRORS = {os.strerror(n).lower(): n for n in DISK_ERRNOS}
_SHORT_WRITE = re.compile(r"\d+ requested and \d+ written")  # numpy's tofile on a full disk


def write_error(e: BaseException, path: str | Path, temp: str | Path | None = None) -> OSError | None:
    """``e``, raised while writing ``path`` (through ``temp``, a temp file or folder), as an ``OSError`` that
    names ``path`` when its cause is the location (see :data:`DISK_ERRNOS`); None for any other error.

    Many writers hide the cause or the file: pyarrow raises ``OSError`` without a file name, safetensors
    and torch a ``RuntimeError`` (torch's names neither errno nor file), numpy's ``tofile`` a short-write
    ``OSError`` without errno. So the chain of ``e`` is searched for an errno, and where none is found a
    target file system without free space (checked now, before the temp file is removed) counts as full.
    An ``OSError`` that already names another file (an input, say) is left as it is.
    """
    from llmrec.errors import LlmrecError

    if not isinstance(e, Exception) or isinstance(e, LlmrecError):
        return None
    code = _disk_errno(e)
    names = [n for n in (e.filename, e.filename2) if n is not None] if isinstance(e, OSError) else []
    if names and not any(_inside(n, temp) for n in names):  # (shutil.copyfile names source and temp)
        return None
    writer_failed = isinstance(e, OSError | RuntimeError) or type(e).__module__.startswith("safetensors")
    if code is None and writer_failed and _no_space_left(Path(temp or path)):
        code = errno.ENOSPC
    if code is None:
        return None
    return OSError(code, os.strerror(code), str(path))


def _disk_errno(e: BaseException) -> int | None:
    """The :data:`DISK_ERRNOS` value that ``e`` or an exception it came from carries or spells out."""
    seen: set[int] = set()
    current: BaseException | None = e
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in DISK_ERRNOS:
            return current.errno
        text = str(current)
        for match in _ERRNO_TEXT.finditer(text):
            if int(match.group(1)) in DISK_ERRNOS:
                return int(match.group(1))
        lowered = text.lower()
        for strerror, code in _STRERRORS.items():
            if strerror in lowered:
                return code
        if _SHORT_WRITE.search(text):
            return errno.ENOSPC
        current = current.__cause__ or current.__context__
    return None


def _inside(name: Any, folder: str | Path | None) -> bool:
    """Whether file ``name`` is the temp path ``folder`` or lies below it."""
    if folder is None or not isinstance(name, str | os.PathLike):
        return False
    name, folder = Path(name), Path(folder)
    return name == folder or folder in name.parents


def _no_space_left(path: Path) -> bool:
    """Whether the file system holding ``path`` (or its nearest existing folder) has no room for another
    block or file: less than a twentieth of it, at most 1 MiB, free (root may also use the reserve)."""
    for folder in (path, *path.parents):
        try:
            st = os.statvfs(folder)
        except (OSError, AttributeError):  # not there (yet), or no statvfs (Windows)
            continue
        root = hasattr(os, "geteuid") and os.geteuid() == 0
        free = (st.f_bfree if root else st.f_bavail) * st.f_frsize
        files = st.f_ffree if root else st.f_favail
        limit = min(1 << 20, st.f_blocks * st.f_frsize // 20)
        return free <= limit or (st.f_files > 0 and files == 0)
    return False


@contextlib.contextmanager
def disk_errors(path: str | Path, temp: str | Path | None = None) -> Iterator[None]:
    """Turn an error raised inside into an ``OSError`` naming ``path`` when the location is full or not
    writable (:func:`write_error`), for writers that do not go through :func:`atomic_path` or write many
    files into a temp folder ``temp`` (a file name inside it becomes ``path``, the place the user named)."""
    try:
        yield
    except Exception as e:
        named = write_error(e, path, temp)
        if named is None:
            raise
        raise named from e


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
