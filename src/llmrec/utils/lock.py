"""One llmrec writer per folder: an OS file lock beside the folder, refused at once when another holds it.

Two commands writing one dataset (``prepare``, ``images``, ``features``, ``describe``) or one run directory
(``train``, ``evaluate``) at the same time would interleave their files, or one would silently replace the
other's work. :func:`folder_lock` takes an exclusive ``flock`` on ``<parent>/.<name>.llmrec-lock`` for as
long as the command writes; a second command is refused at once with one line naming the holder's process
id. The lock file sits beside the folder: it exists before the folder does (a new
dataset), it is never in a dataset's checksums or a run's listing, and replacing the folder whole (the
synthetic catalog) cannot move it away. Only where the parent cannot be written (a dataset the user owns
in a folder they do not) does the lock go inside the folder, as ``.llmrec-lock``, which llmrec's checks of
what a folder holds ignore.

The kernel drops an ``flock`` when its holder exits in any way (``kill -9`` included), so a lock never
outlives its process; the file itself is removed on a normal release and otherwise reused by the next
holder. A process that already holds a folder's lock may take it again (nested writers, e.g. ``images
--missing drop`` re-writing the dataset): only other processes are refused.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from llmrec.errors import LlmrecError

log = logging.getLogger(__name__)

LOCK_SUFFIX = ".llmrec-lock"
# the lock of a folder whose parent is not writable (or read-only): inside it, ignored by every check
INSIDE_LOCK = ".llmrec-lock"
COMMAND = ""  # the running CLI subcommand (set by llmrec.cli.main), named to whoever is refused

# lock files this process holds (resolved path -> how many nested folder_lock blocks hold it)
_held: dict[Path, int] = {}
_held_guard = threading.Lock()


def lock_file(folder: str | Path) -> Path:
    """Where the lock of ``folder`` lives: ``<parent>/.<name>.llmrec-lock`` (the folder's real path, so every
    spelling of it, symlinks included, names one lock)."""
    resolved = Path(folder).expanduser().resolve()
    if not resolved.name:  # the file system root has no parent to hold a lock beside it
        return resolved / LOCK_SUFFIX
    return resolved.parent / f".{resolved.name}{LOCK_SUFFIX}"


def holder(path: str | Path) -> dict[str, object]:
    """What the holder of a lock file wrote into it (pid, command, since); {} when unreadable or empty."""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _refusal(folder: Path, path: Path, what: str) -> LlmrecError:
    """The one line for a folder another process holds (its pid read from the lock file: the holder
    writes it right after taking the lock, so a fresh lock is read again for a moment)."""
    record: dict[str, object] = {}
    for _ in range(20):
        record = holder(path)
        if record.get("pid"):
            break
        time.sleep(0.025)
    pid = record.get("pid") or "unknown"
    command = f"'llmrec {record['command']}', " if record.get("command") else ""
    since = f", since {record['since']}" if record.get("since") else ""
    return LlmrecError(
        f"another llmrec process is writing this {what} now ({command}pid {pid}{since})",
        file=folder,
        hint="wait for it to finish, or stop it, then re-run this command",
    )


def _lock_unsupported(e: OSError) -> bool:
    return e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


@contextlib.contextmanager
def folder_lock(folder: str | Path, what: str = "folder", create: bool = False) -> Iterator[Path]:
    """Hold the exclusive lock of ``folder`` (which need not exist yet) while the block runs; yields the
    lock file. Another process holding it: :class:`LlmrecError` at once (``what`` names the folder's kind
    in that line: "dataset", "run directory"). ``create``: make the folder's parent folders if missing
    (for writers that create the folder); without it, a folder whose parent does not exist is not locked
    (there is nothing to protect: the command then says the folder is missing, and no folder is made by
    mistyping it). On a file system without ``flock`` support the block runs unlocked, with a warning."""
    try:
        import fcntl
    except ImportError:  # not a POSIX system: no advisory locks to take
        yield lock_file(folder)
        return
    resolved = Path(folder).expanduser().resolve()
    inside = resolved / INSIDE_LOCK
    with _held_guard:
        path = next((p for p in (lock_file(folder), inside) if p in _held), None)
        if path is not None:  # this process holds it already: a nested writer
            _held[path] += 1
    if path is not None:
        try:
            yield path
        finally:
            with _held_guard:
                _held[path] -= 1
        return

    path = lock_file(folder)
    if not path.parent.is_dir():
        if not create:
            yield path
            return
        path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd, path = _open_lock_file(path, inside, resolved)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _refusal(Path(folder), path, what) from None
        except OSError as e:
            os.close(fd)
            if not _lock_unsupported(e):
                raise
            log.warning(
                "%s: the file system does not support locks; not locked against other llmrec runs", path
            )
            yield path
            return
        # the previous holder may have removed the file between our open and our lock: then we locked a
        # file nobody else will open, so take the one now at that path instead
        if _still_at(fd, path):
            break
        os.close(fd)
    _write_note(fd, folder)
    with _held_guard:
        _held[path] = 1
    try:
        yield path
    finally:
        with _held_guard:
            del _held[path]
        with contextlib.suppress(OSError):
            path.unlink()  # still locked: whoever opened it meanwhile sees another file there and retries
        os.close(fd)


def _open_lock_file(path: Path, inside: Path, folder: Path) -> tuple[int, Path]:
    """The lock file at ``path`` opened (created if missing), and where it is: ``inside`` the folder when
    the folder's parent cannot be written."""
    while True:
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666), path
        except OSError as e:
            # a folder the user may write in a parent they may not: its lock goes inside it
            if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS) and path != inside and folder.is_dir():
                path = inside
                continue
            raise


def _still_at(fd: int, path: Path) -> bool:
    """Whether the open file ``fd`` is still the one at ``path`` (not removed or replaced since)."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def _write_note(fd: int, folder: str | Path) -> None:
    """Who holds the lock, into the lock file: what a refused command names (see :func:`holder`)."""
    try:
        record = {
            "pid": os.getpid(),
            "command": COMMAND,
            "since": dt.datetime.now().isoformat(timespec="seconds"),
            "folder": str(Path(folder).expanduser().resolve()),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
    except OSError:  # the lock holds without its note; a refused command then says "pid unknown"
        pass


__all__ = ["folder_lock", "lock_file", "holder", "LOCK_SUFFIX", "INSIDE_LOCK"]
