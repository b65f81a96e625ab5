"""``llmrec images``: find, download and check one image per item, and record the outcome of every item.

For each item, in item order, the image reference is resolved in this order:

1. a file ``<image_dir>/<item_id>.<ext>`` (jpg, jpeg, png, webp, gif) when ``--image-dir`` is given;
2. the item's ``image`` field, when it is a local path (absolute, or relative to the dataset directory)
   or a ``file://`` URL; files inside the dataset directory but outside ``images/`` are copied into
   ``images/files/`` (a dataset rewrite keeps only ``images/``), other local files are used in place;
3. the item's ``image`` field, when it is an http(s) URL: downloaded into
   ``<data>/images/files/<sha1 of the URL>.<ext>`` with the extension taken from the bytes;
4. otherwise the item has no reference (status ``no_reference``).

A reference to a file that is there but cannot be opened as a file (a symlink loop, a folder) is
``unreadable``, with the reason; one to no file at all is ``missing_file``.

The first reference that exists is the one used; there is no fall-back when it turns out unreadable.
Every file is checked with PIL (``verify`` then a full ``load``). The outcome of every item, good or bad,
goes into ``<data>/images/manifest.parquet`` (:data:`MANIFEST_COLUMNS`); nothing is dropped silently.
Items without a usable image are kept, flagged image-less (the missing-image scenario), unless
``--missing drop`` removes them from the dataset through :func:`llmrec.data.processing.drop_items`.

Re-running is cheap: items whose manifest row is ``ok`` with the same reference and whose file still has
the recorded sha256 are skipped; every other item is tried again. The manifest is checkpointed while the
run goes on, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import mimetypes
import shutil
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd

from llmrec.config import option
from llmrec.data.schema import IMAGE_EXTS
from llmrec.errors import ConfigError, LlmrecError
from llmrec.utils.io import DISK_ERRNOS, atomic_path, sha256_file, write_parquet_atomic
from llmrec.utils.lock import folder_lock

if TYPE_CHECKING:
    from llmrec.data.dataset import Dataset

log = logging.getLogger(__name__)

MANIFEST = "manifest.parquet"
FILES = "files"
#: item_id, url (the reference used), path (relative to the dataset dir when inside it, else absolute; ""
#: if none), sha256, status, error (message; "" when ok), width, height (0 when not decoded).
MANIFEST_COLUMNS = ["item_id", "url", "path", "sha256", "status", "error", "width", "height"]
#: Statuses besides ``http_<code>`` (e.g. ``http_404``) for an HTTP error answer.
_RESOLVED = ("ok", "no_reference", "missing_file", "unreadable")  # what resolving the reference can give
STATUSES = (*_RESOLVED, "timeout", "error", "too_large", "corrupt", "too_small")  # and fetching, checking
CHECKPOINT_EVERY = 200  # completed items between manifest checkpoints
_CHUNK = 1 << 16
_TOTAL_TIMEOUTS = 10  # a download may take at most this many `timeout`s in all (guards slow-drip servers)


@dataclass
class ImagesConfig:
    """``llmrec images``: where the dataset is, where local images are, and how to download the rest."""

    data: str | None = option(None, "prepared dataset directory (written by 'llmrec prepare')")
    image_dir: str | None = option(
        None, "folder of local images named <item_id>.<ext>, used before any download"
    )
    workers: int = option(16, "concurrent downloads")
    timeout: float = option(10.0, "seconds to wait for a server to connect or send data (per request)")
    retries: int = option(
        3, "retries after the first attempt on timeouts, connection errors, HTTP 5xx and 429"
    )
    backoff: float = option(0.5, "seconds before the first retry; doubled for each further retry")
    max_bytes: int = option(10_000_000, "abort a download larger than this many bytes (status too_large)")
    min_side: int = option(8, "reject images whose width or height is smaller than this (status too_small)")
    missing: Literal["keep", "drop"] = option(
        "keep", "items without a usable image: keep them flagged image-less, or drop them and re-apply k-core"
    )
    user_agent: str = option("llmrec/0.1 (research image fetcher)", "HTTP User-Agent")

    def __post_init__(self) -> None:
        if not self.data:
            raise ConfigError("ImagesConfig.data: the dataset directory is required (--data)")
        if self.workers < 1:
            raise ConfigError(f"ImagesConfig.workers must be >= 1, got {self.workers}")
        if not self.timeout > 0:
            raise ConfigError(f"ImagesConfig.timeout must be > 0 seconds, got {self.timeout}")
        if self.retries < 0:
            raise ConfigError(f"ImagesConfig.retries must be >= 0, got {self.retries}")
        if self.backoff < 0:
            raise ConfigError(f"ImagesConfig.backoff must be >= 0 seconds, got {self.backoff}")
        if self.max_bytes < 1:
            raise ConfigError(f"ImagesConfig.max_bytes must be >= 1, got {self.max_bytes}")
        if self.min_side < 1:
            raise ConfigError(f"ImagesConfig.min_side must be >= 1, got {self.min_side}")
        if self.missing not in ("keep", "drop"):
            raise ConfigError(f"ImagesConfig.missing: {self.missing!r} is not one of ['keep', 'drop']")


# ----------------------------------------------------------------------------- one item's outcome


@dataclass
class _Job:
    """One unit of work: a URL to download or a local file to check (shared by items with the same one)."""

    kind: Literal["url", "file"]
    ref: str  # the URL, or the absolute local path
    item_ids: list[str]


class _Failure(Exception):
    """A failed attempt: ``status`` goes to the manifest; ``retry`` says whether trying again may help."""

    def __init__(self, status: str, message: str, retry: bool = False, delay: float = 0.0) -> None:
        super().__init__(message)
        self.status, self.retry, self.delay = status, retry, delay  # delay: the server's Retry-After


def _row(item_id: str, url: str, status: str, error: str = "", **kw: Any) -> dict[str, Any]:
    return {
        "item_id": item_id,
        "url": url,
        "path": kw.get("path", ""),
        "sha256": kw.get("sha256", ""),
        "status": status,
        "error": error,
        "width": int(kw.get("width", 0)),
        "height": int(kw.get("height", 0)),
    }


def _check_image(path: Path, min_side: int) -> tuple[int, int]:
    """(width, height) of a fully decodable image; raises _Failure(corrupt / too_small / too_large)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.verify()  # structure and checksums, without decoding
        with Image.open(path) as im:
            im.load()  # a full decode: catches truncated files that verify() lets through
            width, height = im.size
    except Image.DecompressionBombError as e:
        raise _Failure("too_large", f"too many pixels ({e})") from None
    except Exception as e:  # UnidentifiedImageError, OSError (truncated), SyntaxError, ValueError, ...
        raise _Failure("corrupt", f"not a readable image ({type(e).__name__}: {e})") from None
    if min(width, height) < min_side:
        raise _Failure("too_small", f"{width}x{height} is smaller than min_side={min_side}")
    return width, height


_MAGIC = (
    (b"\xff\xd8\xff", "jpg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"BM", "bmp"),
    (b"II*\x00", "tif"),
    (b"MM\x00*", "tif"),
)


def _sniff_ext(head: bytes, content_type: str, url: str) -> str:
    """File extension from the first bytes, else from Content-Type, else from the URL, else ``img``."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    for magic, ext in _MAGIC:
        if head.startswith(magic):
            return ext
    guessed = mimetypes.guess_extension(content_type.split(";")[0].strip()) if content_type else None
    if guessed:
        return {"jpe": "jpg", "jpeg": "jpg"}.get(guessed.lstrip("."), guessed.lstrip("."))
    suffix = Path(urllib.parse.urlsplit(url).path).suffix.lower().lstrip(".")
    return suffix if suffix in IMAGE_EXTS else "img"


def _download_once(url: str, files_dir: Path, cfg: ImagesConfig) -> tuple[Path, str, int, int]:
    """One HTTP attempt: stream ``url`` into ``files_dir``, size-capped and checked; (file, sha256, w, h)."""
    request = urllib.request.Request(
        url, headers={"User-Agent": cfg.user_agent, "Accept": "image/*,*/*;q=0.8"}
    )
    deadline = time.monotonic() + _TOTAL_TIMEOUTS * cfg.timeout
    try:
        with urllib.request.urlopen(request, timeout=cfg.timeout) as resp:
            length = resp.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > cfg.max_bytes:
                raise _Failure("too_large", f"Content-Length {length} exceeds max_bytes={cfg.max_bytes}")
            head = resp.read(_CHUNK)
            ext = _sniff_ext(head, resp.headers.get("Content-Type", ""), url)
            target = files_dir / f"{hashlib.sha1(url.encode('utf-8')).hexdigest()}.{ext}"
            digest, size = hashlib.sha256(), 0
            with atomic_path(target) as tmp:
                with open(tmp, "wb") as f:
                    block = head
                    while block:
                        size += len(block)
                        if size > cfg.max_bytes:
                            raise _Failure("too_large", f"body exceeds max_bytes={cfg.max_bytes}")
                        if time.monotonic() > deadline:
                            raise _Failure(
                                "timeout",
                                f"download took over {_TOTAL_TIMEOUTS * cfg.timeout:g}s",
                                retry=True,
                            )
                        digest.update(block)
                        f.write(block)
                        block = resp.read(_CHUNK)
                width, height = _check_image(tmp, cfg.min_side)  # a bad image never reaches its final name
    except urllib.error.HTTPError as e:
        e.close()
        transient = e.code >= 500 or e.code == 429
        retry_after = e.headers.get("Retry-After", "") if e.headers else ""
        delay = min(float(retry_after), 30.0) if retry_after.isdigit() else 0.0
        raise _Failure(f"http_{e.code}", f"HTTP {e.code} {e.reason}", retry=transient, delay=delay) from None
    except _Failure:
        raise
    except TimeoutError as e:  # socket.timeout is TimeoutError since Python 3.10
        raise _Failure("timeout", f"no answer within {cfg.timeout:g}s ({e})", retry=True) from None
    except urllib.error.URLError as e:
        if isinstance(e.reason, TimeoutError | socket.timeout):
            raise _Failure("timeout", f"no answer within {cfg.timeout:g}s", retry=True) from None
        raise _Failure("error", f"connection failed ({e.reason})", retry=True) from None
    except (ConnectionError, http.client.HTTPException) as e:
        raise _Failure("error", f"connection failed ({type(e).__name__}: {e})", retry=True) from None
    except OSError as e:
        if _cannot_store(e, files_dir):  # a full disk is no bad image: it stops the run
            raise
        raise _Failure("error", f"{type(e).__name__}: {e}") from None
    for stale in files_dir.glob(f"{target.stem}.*"):  # an earlier download of this URL with another type
        if stale != target and not stale.name.startswith("."):
            stale.unlink(missing_ok=True)
    return target, digest.hexdigest(), width, height


def _download(url: str, files_dir: Path, cfg: ImagesConfig) -> tuple[Path, str, int, int]:
    """Download with retries and exponential backoff; raises the last _Failure."""
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise _Failure("error", "unsupported reference: not an http(s) URL nor an existing local path")
    attempt = 0
    while True:
        try:
            return _download_once(url, files_dir, cfg)
        except _Failure as e:
            if not e.retry or attempt == cfg.retries:
                if attempt:
                    e.args = (f"{e} (after {attempt + 1} attempts)",)
                raise
            time.sleep(max(cfg.backoff * 2**attempt, e.delay))
            attempt += 1


def _run_job(job: _Job, root: Path, files_dir: Path, cfg: ImagesConfig) -> list[dict[str, Any]]:
    """Do one job and return one manifest row per item that shares it; never raises for a bad image."""
    try:
        if job.kind == "file":
            path = Path(job.ref)
            if not path.is_file():
                raise _not_a_file(path)
            width, height = _check_image(path, cfg.min_side)
            if _inside(path, root) and not _inside(path, files_dir.parent):
                path = _adopt(path, files_dir)
            digest = sha256_file(path)
        else:
            path, digest, width, height = _download(job.ref, files_dir, cfg)
    except _Failure as e:
        return [_row(i, job.ref, e.status, str(e)) for i in job.item_ids]
    except Exception as e:  # one bad reference never stops the run; a full disk does
        if _cannot_store(e, files_dir):
            raise
        return [_row(i, job.ref, "error", f"{type(e).__name__}: {e}") for i in job.item_ids]
    rel = _relative(path, root)
    return [_row(i, job.ref, "ok", path=rel, sha256=digest, width=width, height=height) for i in job.item_ids]


def _not_a_file(path: Path) -> _Failure:
    """Why ``path`` (not a regular file) gives no image: nothing there (``missing_file``), or something that
    cannot be read as a file, such as a symlink loop or a folder (``unreadable``, with the reason)."""
    import errno
    import os

    try:
        os.stat(path)
    except FileNotFoundError:
        return _Failure("missing_file", f"file not found: {path}")
    except OSError as e:
        reason = "symlink loop" if e.errno == errno.ELOOP else type(e).__name__
        return _Failure("unreadable", f"{reason}: {path} ({e.strerror or e})")
    return _Failure("unreadable", f"not a regular file: {path}")


def _symlink_loop(path: Path) -> bool:
    """Whether ``path`` is (or lies under) a symlink loop: there, yet no file can be reached through it."""
    import errno
    import os

    try:
        os.stat(path)
    except OSError as e:
        return e.errno == errno.ELOOP
    return False


def _resolve(path: Path) -> Path:
    """``path`` made absolute with its symlinks resolved, or only made absolute where they loop (Python
    3.11 raises RuntimeError there, 3.13 OSError): the item is then recorded ``unreadable``, not lost."""
    try:
        return path.resolve()
    except (RuntimeError, OSError):
        return path.absolute()


def _cannot_store(e: BaseException, files_dir: Path) -> bool:
    """Whether ``e`` says that ``files_dir`` takes no file (full, over quota, not writable): then every
    other image would fail the same way, so the run stops with that error (the next one resumes)."""
    if not isinstance(e, OSError) or e.errno not in DISK_ERRNOS:
        return False
    return any(f is not None and _inside(Path(f), files_dir) for f in (e.filename, e.filename2))


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


def _adopt(path: Path, files_dir: Path) -> Path:
    """Copy a local image that lies in the dataset dir but outside ``images/`` into ``images/files/``.

    Rewriting the dataset (re-prepare, ``--missing drop``) keeps only ``images/`` among side outputs, so a
    file elsewhere in the dataset dir would vanish under the manifest.
    """
    with open(path, "rb") as f:
        head = f.read(16)
    key = hashlib.sha1(str(path.resolve()).encode("utf-8")).hexdigest()
    target = files_dir / f"{key}.{_sniff_ext(head, '', path.name)}"
    with atomic_path(target) as tmp:
        shutil.copyfile(path, tmp)
    return target


def _relative(path: Path, root: Path) -> str:
    """``path`` relative to the dataset dir when inside it (the dataset can move), else absolute."""
    path, root = path.resolve(), root.resolve()
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


# ----------------------------------------------------------------------------- resolving references


def _is_url(ref: str) -> bool:
    return "://" in ref[:16] and not ref.lower().startswith("file://")


def _local_path(ref: str, root: Path) -> Path:
    """The file a non-URL reference names: ``file://`` URLs, absolute paths, or paths relative to ``root``."""
    if ref.lower().startswith("file://"):
        ref = urllib.request.url2pathname(urllib.parse.urlsplit(ref).path)
    path = Path(ref).expanduser()
    return path if path.is_absolute() else root / path


def _index_image_dir(image_dir: Path) -> dict[str, Path]:
    """item_id -> file for every ``<item_id>.<ext>`` in ``image_dir`` (jpg before jpeg, png, webp, gif)."""
    found: dict[str, Path] = {}
    rank = {ext: i for i, ext in enumerate(IMAGE_EXTS)}
    for path in sorted(
        image_dir.iterdir(), key=lambda p: (p.stem, rank.get(p.suffix.lower().lstrip("."), 99))
    ):
        if path.suffix.lower().lstrip(".") in rank and (path.is_file() or _symlink_loop(path)):
            found.setdefault(path.stem, _resolve(path))  # a loop is this item's file, recorded unreadable
    return found


def _reference(item_id: str, image: str, root: Path, local: dict[str, Path]) -> tuple[str, str]:
    """(kind, reference) of one item: kind is 'file', 'url' or 'none'."""
    if item_id in local:
        return "file", str(local[item_id])
    image = (image or "").strip()
    if not image:
        return "none", ""
    if _is_url(image):
        return "url", image
    return "file", str(_resolve(_local_path(image, root)))


# ----------------------------------------------------------------------------- manifest


def load_manifest(data_dir: str | Path) -> pd.DataFrame:
    """The image manifest of a dataset (:data:`MANIFEST_COLUMNS`); raises LlmrecError when absent or broken."""
    path = Path(data_dir) / "images" / MANIFEST
    if not path.exists():
        raise LlmrecError("no image manifest", file=path, hint=f"run 'llmrec images --data {data_dir}' first")
    try:
        df = pd.read_parquet(path)
    except Exception as e:
        raise LlmrecError(
            f"unreadable image manifest ({e})", file=path, hint="delete it and re-run 'llmrec images'"
        ) from None
    missing = [c for c in MANIFEST_COLUMNS if c not in df.columns]
    if missing:
        raise LlmrecError(f"image manifest lacks columns {missing}", file=path, hint="re-run 'llmrec images'")
    return df


def _write_manifest(path: Path, rows: dict[str, dict[str, Any]]) -> None:
    df = pd.DataFrame(list(rows.values()), columns=MANIFEST_COLUMNS)
    df = df.astype({"width": "int32", "height": "int32"})
    write_parquet_atomic(df, path)


def _still_valid(row: dict[str, Any], kind: str, ref: str, root: Path) -> bool:
    """An earlier ``ok`` row for the same reference whose file (and local source, if any) is unchanged."""
    if row.get("status") != "ok" or row.get("url") != ref or not row.get("path"):
        return False
    path = root / row["path"]
    try:
        if not path.is_file() or sha256_file(path) != row["sha256"]:
            return False
        source = Path(ref)  # a local source copied into images/files/ may have been edited since
        return (
            kind != "file" or source == path or not source.is_file() or sha256_file(source) == row["sha256"]
        )
    except OSError:
        return False


def _open_dataset(data: str | Path) -> Dataset:
    from llmrec.data.dataset import Dataset

    root = Path(data)
    if not root.is_dir():
        raise LlmrecError(
            "dataset directory not found",
            file=root,
            hint=f"run 'llmrec prepare <dataset> --out {root}' first",
        )
    ds = Dataset(root)
    try:
        items = ds.items
    except LlmrecError:
        raise
    except Exception as e:
        raise LlmrecError(
            f"unreadable items table ({e})", file=root / "items.parquet", hint="re-run 'llmrec prepare'"
        ) from None
    if "item_id" not in items.columns or "image" not in items.columns:
        raise LlmrecError(
            "items table lacks 'item_id' or 'image'",
            file=root / "items.parquet",
            hint="re-run 'llmrec prepare'",
        )
    return ds


# ----------------------------------------------------------------------------- the command


def fetch_images(cfg: ImagesConfig) -> dict[str, Any]:
    """Resolve, download and check every item's image; write the manifest; optionally drop bad items.

    Returns a summary: ``counts`` (items per status), ``n_items``, ``skipped`` (kept from an earlier run),
    ``dropped`` (items removed with ``missing='drop'``), ``n_items_after`` and ``failures`` (at most 10
    examples of item_id, url, status, error).
    """
    assert cfg.data is not None  # checked by ImagesConfig
    with folder_lock(cfg.data, "dataset"):  # one writer of the dataset (prepare, images, features) at a time
        return _fetch_locked(cfg)


def _fetch_locked(cfg: ImagesConfig) -> dict[str, Any]:
    assert cfg.data is not None
    root = Path(cfg.data)
    ds = _open_dataset(root)
    items = ds.items
    local = _local_images(cfg.image_dir)
    images_dir = ds.images_dir
    files_dir = images_dir / FILES
    files_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = images_dir / MANIFEST
    # temp files of writes cut short by a kill (atomic_path names them .<name>.<random>.partial)
    for leftover in [*files_dir.glob(".*.partial"), *images_dir.glob(f".{MANIFEST}.*.partial")]:
        leftover.unlink(missing_ok=True)
    previous: dict[str, dict[str, Any]] = {}
    if manifest_path.exists():
        try:
            previous = {str(r["item_id"]): r for r in load_manifest(root).to_dict("records")}
        except LlmrecError as e:
            log.warning("ignoring the old manifest and starting over: %s", e)

    item_ids = items["item_id"].astype(str).tolist()
    rows, todo, skipped = _plan(item_ids, items["image"].tolist(), previous, root, local)
    log.info(
        "%d items: %d kept from an earlier run, %d references to fetch or check",
        len(item_ids),
        skipped,
        len(todo),
    )
    _run_jobs(todo, rows, item_ids, root, files_dir, manifest_path, cfg)

    current = [rows[i] for i in item_ids]
    counts = dict(sorted(Counter(r["status"] for r in current).items()))
    bad = [r for r in current if r["status"] != "ok"]
    summary: dict[str, Any] = {
        "counts": counts,
        "n_items": len(item_ids),
        "skipped": skipped,
        "dropped": 0,
        "n_items_after": len(item_ids),
        "failures": [{k: r[k] for k in ("item_id", "url", "status", "error")} for r in bad[:10]],
        "manifest": str(manifest_path),
    }
    log.info("images: %s", counts)
    if cfg.missing == "drop" and bad:
        from llmrec.data.processing import drop_items

        meta = drop_items(root, [r["item_id"] for r in bad], reason="image missing or unreadable")
        summary["dropped"] = len(bad)
        summary["n_items_after"] = int(meta["counts"]["items"])
        log.info(
            "dropped %d items without a usable image; %d items remain", len(bad), summary["n_items_after"]
        )
    return summary


def _local_images(image_dir: str | None) -> dict[str, Path]:
    """The ``--image-dir`` files by item id (none without the option)."""
    if not image_dir:
        return {}
    folder = Path(image_dir)
    if not folder.is_dir():
        raise LlmrecError(
            "image folder not found", file=folder, hint="pass an existing folder to --image-dir"
        )
    return _index_image_dir(folder)


def _plan(
    item_ids: list[str],
    images: list[Any],
    previous: dict[str, dict[str, Any]],
    root: Path,
    local: dict[str, Path],
) -> tuple[dict[str, dict[str, Any]], list[_Job], int]:
    """Each item's manifest row as far as known before fetching, the jobs still to run (one per distinct
    reference), and how many items an earlier run's row still covers."""
    # Current items first, in item order; rows of items no longer in the dataset stay after them as a record.
    rows: dict[str, dict[str, Any]] = {}
    jobs: dict[tuple[str, str], _Job] = {}
    skipped = 0
    for item_id, image in zip(item_ids, images):
        kind, ref = _reference(item_id, image if isinstance(image, str) else "", root, local)
        old = previous.get(item_id)
        if kind == "none":
            rows[item_id] = _row(item_id, "", "no_reference", "the item has no image reference")
        elif old is not None and _still_valid(old, kind, ref, root):
            rows[item_id] = old
            skipped += 1
        else:  # a placeholder until the job finishes, so an interrupted run's manifest never lies
            rows[item_id] = _row(item_id, ref, "error", "not fetched yet (interrupted run)")
            jobs.setdefault((kind, ref), _Job(kind, ref, [])).item_ids.append(item_id)  # type: ignore[arg-type]
    for item_id, old in previous.items():
        rows.setdefault(item_id, old)
    return rows, list(jobs.values()), skipped


def _run_jobs(
    todo: list[_Job],
    rows: dict[str, dict[str, Any]],
    item_ids: list[str],
    root: Path,
    files_dir: Path,
    manifest_path: Path,
    cfg: ImagesConfig,
) -> None:
    """Run the jobs on ``cfg.workers`` threads, each finished item's row into ``rows``, with a manifest
    checkpoint every :data:`CHECKPOINT_EVERY` items and a last one at the end, or when interrupted or a
    job crashed (so the next run resumes)."""
    from tqdm import tqdm

    pending = {i for j in todo for i in j.item_ids}
    done = Counter(rows[i]["status"] for i in item_ids if i not in pending)
    bar = tqdm(
        total=len(item_ids), initial=len(item_ids) - len(pending), desc="images", unit="item", disable=None
    )
    since_checkpoint = 0
    executor = ThreadPoolExecutor(max_workers=cfg.workers, thread_name_prefix="llmrec-images")
    try:
        futures: set[Future[list[dict[str, Any]]]] = {
            executor.submit(_run_job, j, root, files_dir, cfg) for j in todo
        }
        while futures:
            finished, futures = wait(futures, return_when=FIRST_COMPLETED)
            crashed = [f for f in finished if f.exception() is not None]
            for fut in finished:
                if fut.exception() is None:  # record every finished job before raising for a crashed one
                    for row in fut.result():
                        rows[row["item_id"]] = row
                        done[row["status"]] += 1
                        since_checkpoint += 1
                        bar.update(1)
            bar.set_postfix(ok=done["ok"], failed=sum(done.values()) - done["ok"], refresh=False)
            if crashed:
                raise crashed[0].exception()  # type: ignore[misc]
            if since_checkpoint >= CHECKPOINT_EVERY:
                _write_manifest(manifest_path, rows)
                since_checkpoint = 0
    except BaseException:
        executor.shutdown(wait=False, cancel_futures=True)
        # it may fail too (the full disk that stopped the run): the line names what stopped it first
        with contextlib.suppress(Exception):
            _write_manifest(manifest_path, rows)  # keep what finished, so the next run resumes
        raise
    finally:
        bar.close()
    executor.shutdown(wait=True)
    _write_manifest(manifest_path, rows)


def image_paths(dataset: Dataset | str | Path) -> list[Path | None]:
    """Absolute image file per item, in item order; None for items without a usable image.

    With a manifest (``llmrec images`` has run), rows are matched by item_id, so the list follows the
    dataset's current item order even after items were dropped; an item the manifest does not cover, or an
    ``ok`` file that has gone, is an error (re-run ``llmrec images``). Without a manifest the ``image``
    field is used as is: local paths (absolute, or relative to the dataset dir) that exist, None for URLs,
    empty fields and missing files (the ``--image-dir`` of a run is not known then).
    """
    if isinstance(dataset, str | Path):
        from llmrec.data.dataset import Dataset

        dataset = Dataset(dataset)
    root = dataset.root.resolve()
    items = dataset.items
    item_ids = items["item_id"].astype(str).tolist()
    manifest_path = root / "images" / MANIFEST
    if not manifest_path.exists():
        out: list[Path | None] = []
        for image in items["image"].tolist():
            ref = image.strip() if isinstance(image, str) else ""
            path = _local_path(ref, root) if ref and not _is_url(ref) else None
            out.append(path.resolve() if path is not None and path.is_file() else None)
        return out
    manifest = load_manifest(root)
    by_id: dict[str, dict[str, Any]] = {str(r["item_id"]): r for r in manifest.to_dict("records")}
    out = []
    for row_no, item_id in enumerate(item_ids):
        row = by_id.get(item_id)
        if row is None:
            raise LlmrecError(
                f"item {item_id!r} is not in the image manifest (images/{MANIFEST})",
                file=root / "items.parquet",
                row=row_no + 1,
                hint=f"the dataset changed since; re-run 'llmrec images --data {root}'",
            )
        if row["status"] != "ok":
            out.append(None)
            continue
        path = root / row["path"]
        if not path.is_file():
            raise LlmrecError(
                f"image file missing ({row['path']}) for item {item_id!r}",
                file=root / "items.parquet",
                row=row_no + 1,
                field="image",
                hint=f"re-run 'llmrec images --data {root}'",
            )
        out.append(path)
    return out


__all__ = [
    "CHECKPOINT_EVERY",
    "IMAGE_EXTS",
    "MANIFEST_COLUMNS",
    "STATUSES",
    "ImagesConfig",
    "fetch_images",
    "image_paths",
    "load_manifest",
]
