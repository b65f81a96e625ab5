"""The feature store: one ``.npy`` array per feature, in item (or user) order, plus a JSON manifest.

features/<name>.npy           (count, dim) float array, memory-mapped on load
features/<name>.missing.npy   (count,) bool: rows without a source (e.g. no image); their values are 0
features/<name>.json          manifest: encoder, dim, dtype, count, sha256 (array and mask), missing count,
                              provenance (what it was computed from: texts / image bytes / run, dataset identity)

Writes are resumable and atomic: rows go into ``.<name>.partial.npy`` with a progress file; the final
array is renamed into place and the manifest is written last, so only a complete, checksummed array
ever loads. Training reads the memory map once; it never re-runs an encoder or opens a file per item.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from llmrec.errors import LlmrecError
from llmrec.features.sources import ids_checksum, stale_reason
from llmrec.utils.io import disk_errors, read_json, sha256_file, write_json_atomic

if TYPE_CHECKING:
    from llmrec.data.dataset import Dataset

log = logging.getLogger(__name__)

# encode(indices) -> (values (len(indices), dim), missing (len(indices),) bool)
EncodeFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass
class Feature:
    """A loaded feature: memory-mapped values, missing mask and manifest."""

    name: str
    values: np.ndarray  # (count, dim), np.memmap
    missing: np.ndarray  # (count,) bool
    manifest: dict[str, Any]

    @property
    def dim(self) -> int:
        return int(self.values.shape[1])


def _paths(root: Path, name: str) -> dict[str, Path]:
    d = Path(root)
    return {
        "values": d / f"{name}.npy",
        "missing": d / f"{name}.missing.npy",
        "manifest": d / f"{name}.json",
        "partial": d / f".{name}.partial.npy",
        "partial_missing": d / f".{name}.missing.partial.npy",
        "progress": d / f".{name}.progress.json",
    }


def _manifest_or_none(path: Path) -> dict[str, Any] | None:
    """A manifest's content, or None when it is absent or unreadable (then the feature is recomputed)."""
    try:
        manifest = read_json(path)
    except (LlmrecError, OSError, UnicodeDecodeError):
        return None
    return manifest if isinstance(manifest, dict) else None


def is_current(root: Path, name: str, spec: dict[str, Any]) -> bool:
    """True when a complete feature exists whose manifest matches ``spec`` on every key of ``spec``."""
    p = _paths(root, name)
    if not p["values"].exists():
        return False
    manifest = _manifest_or_none(p["manifest"])
    return manifest is not None and all(manifest.get(k) == v for k, v in spec.items())


def stale_keys(root: Path, name: str, spec: dict[str, Any]) -> list[str]:
    """The keys of ``spec`` on which an existing feature's manifest differs (empty when there is none)."""
    p = _paths(root, name)
    if not p["manifest"].exists():
        return []
    manifest = _manifest_or_none(p["manifest"])
    if manifest is None:
        return ["manifest unreadable"]
    return [k for k, v in spec.items() if manifest.get(k) != v]


def clean_leftovers(root: str | Path, name: str, manifest: dict[str, Any] | None = None) -> None:
    """Delete what an interrupted write of feature ``name`` left behind: half-written JSON temp files
    and, given the ``manifest`` of the complete feature now in place, the progress and partial files of
    the run that wrote it (a kill after the manifest was written, before they were removed). Partial
    files of a run with another spec stay: that run resumes when it is started again."""
    root = Path(root)
    p = _paths(root, name)
    for written in (p["manifest"], p["progress"]):  # atomic_path's temp names: .<file name>.<random>.partial
        for leftover in root.glob(f".{written.name}.*.partial"):
            leftover.unlink(missing_ok=True)
    if manifest is not None and p["progress"].exists():
        spec = (_manifest_or_none(p["progress"]) or {}).get("spec")
        if not isinstance(spec, dict) or all(manifest.get(k) == v for k, v in spec.items()):
            for key in ("partial", "partial_missing", "progress"):
                p[key].unlink(missing_ok=True)


def compute_feature(
    root: str | Path,
    name: str,
    count: int,
    dim: int,
    encode: EncodeFn,
    spec: dict[str, Any],
    batch_size: int = 64,
    dtype: str = "float32",
    desc: str | None = None,
) -> Feature:
    """Fill a (count, dim) feature batch by batch with ``encode``; resume a matching interrupted run.

    ``spec`` identifies what is being computed (encoder, template, ids checksum...): it goes into the
    manifest, and a partial file is only resumed when its recorded spec is identical.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    clean_leftovers(root, name)
    p = _paths(root, name)
    progress = {"spec": spec, "count": count, "dim": dim, "dtype": dtype, "done": 0}
    done = 0
    if p["progress"].exists() and p["partial"].exists() and p["partial_missing"].exists():
        old = _manifest_or_none(p["progress"]) or {}
        if {k: old.get(k) for k in ("spec", "count", "dim", "dtype")} == {
            k: progress[k] for k in ("spec", "count", "dim", "dtype")
        }:
            done = int(old.get("done") or 0)
    values = missing = None
    if done:
        try:  # a partial array cut short by a kill is started over, never trusted
            values = _read_array(p["partial"], "partial array", "", mmap_mode="r+")
            missing = _read_array(p["partial_missing"], "partial array", "", mmap_mode="r+")
        except LlmrecError:
            done = 0
        else:
            if values.shape != (count, dim) or missing.shape != (count,) or not 0 < done <= count:
                done = 0
    if done:
        log.info("resuming feature '%s' at row %d of %d", name, done, count)
        with disk_errors(p["values"]):  # one an older version left sparse
            _reserve(p["partial"])
            _reserve(p["partial_missing"])
    else:
        values, missing = _new_partials(p, count, dim, dtype)
    bar = tqdm(total=count, initial=done, desc=desc or f"feature {name}", unit=" rows", disable=None)
    while done < count:
        idx = np.arange(done, min(done + batch_size, count))
        vals, miss = encode(idx)
        vals = np.asarray(vals, dtype=np.float64)
        if vals.shape != (len(idx), dim):
            raise LlmrecError(f"encoder returned shape {vals.shape}, expected {(len(idx), dim)}", field=name)
        if not np.isfinite(vals).all():
            raise LlmrecError(f"encoder returned NaN/inf for rows {idx[0]}..{idx[-1]}", field=name)
        miss = np.asarray(miss, dtype=bool)
        vals[miss] = 0.0
        values[idx] = vals
        missing[idx] = miss
        done = int(idx[-1]) + 1
        # Data must reach the disk before the progress file claims it.
        values.flush()
        missing.flush()
        write_json_atomic(p["progress"], dict(progress, done=done))
        bar.update(len(idx))
    bar.close()
    del values, missing
    manifest = {"name": name, **spec, "dim": dim, "dtype": dtype, "count": count}
    return _publish(root, name, manifest)


def save_feature(
    root: str | Path,
    name: str,
    values: np.ndarray,
    spec: dict[str, Any],
    missing: np.ndarray | None = None,
) -> Feature:
    """Store an in-memory (count, dim) array as a feature (CF embeddings, generated data...)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    p = _paths(root, name)
    values = np.ascontiguousarray(values)
    if values.ndim != 2:
        raise LlmrecError(f"a feature must be 2-D (count, dim), got shape {values.shape}", field=name)
    missing = np.zeros(len(values), dtype=bool) if missing is None else np.asarray(missing, dtype=bool)
    try:
        with disk_errors(p["values"]):  # numpy names neither the file nor, on a full disk, the errno
            np.save(p["partial"], values, allow_pickle=False)
            np.save(p["partial_missing"], missing, allow_pickle=False)
    except BaseException:
        _remove_partials(p)  # nothing to resume: the whole array is written at once
        raise
    manifest = {
        "name": name,
        **spec,
        "dim": int(values.shape[1]),
        "dtype": str(values.dtype),
        "count": len(values),
    }
    return _publish(root, name, manifest)


def _new_partials(p: dict[str, Path], count: int, dim: int, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """Fresh memory-mapped partial arrays (values, missing) with their disk space allocated up front."""
    try:
        with disk_errors(p["values"]):
            values = np.lib.format.open_memmap(p["partial"], mode="w+", dtype=dtype, shape=(count, dim))
            missing = np.lib.format.open_memmap(
                p["partial_missing"], mode="w+", dtype=np.bool_, shape=(count,)
            )
            _reserve(p["partial"])
            _reserve(p["partial_missing"])
    except BaseException:
        _remove_partials(p)
        raise
    return values, missing


def _reserve(path: Path) -> None:
    """Allocate every block of the (sparse) file ``path`` now. A memory-mapped store into a sparse file on
    a full disk kills the process with SIGBUS, no message at all; the allocation raises ENOSPC instead."""
    if not hasattr(os, "posix_fallocate"):  # macOS, Windows: as before
        return
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):  # a file system that cannot
            raise
    finally:
        os.close(fd)


def _remove_partials(p: dict[str, Path]) -> None:
    for key in ("partial", "partial_missing"):
        p[key].unlink(missing_ok=True)


def _publish(root: Path, name: str, manifest: dict[str, Any]) -> Feature:
    """Rename the partial files into place and write the manifest last (it is what makes a feature valid)."""
    p = _paths(root, name)
    p["manifest"].unlink(missing_ok=True)  # an old manifest must never describe the new array
    manifest["sha256"] = sha256_file(p["partial"])
    missing = np.load(p["partial_missing"])
    manifest["missing"] = int(missing.sum())
    manifest["missing_sha256"] = sha256_file(p["partial_missing"])
    with disk_errors(p["values"]):
        os.replace(p["partial"], p["values"])
        os.replace(p["partial_missing"], p["missing"])
    write_json_atomic(p["manifest"], manifest)
    p["progress"].unlink(missing_ok=True)
    log.info(
        "feature '%s': %d x %d, %d missing", name, manifest["count"], manifest["dim"], manifest["missing"]
    )
    return load_feature(root, name, verify=False)


def load_feature(
    root: str | Path, name: str, verify: bool = True, expect_ids: Sequence[str] | None = None
) -> Feature:
    """Memory-map a complete feature; checks manifest, shape, optionally checksum and row order.

    A damaged file (unreadable manifest or array) is a one-line error naming it.
    """
    p = _paths(Path(root), name)
    recompute = "re-run 'llmrec features' (or 'llmrec features --cf RUN') to recompute it"
    if not p["manifest"].exists() or not p["values"].exists():
        hint = "run 'llmrec features' for this dataset" + (
            " (an interrupted run resumes)" if p["progress"].exists() else ""
        )
        raise LlmrecError(f"feature '{name}' not found", file=p["manifest"], hint=hint)
    manifest = _manifest_or_none(p["manifest"])
    if manifest is None or not _well_formed(manifest):
        raise LlmrecError(
            "damaged feature manifest (not the JSON 'llmrec features' writes)",
            file=p["manifest"],
            hint=recompute,
        )
    if verify and sha256_file(p["values"]) != manifest.get("sha256"):
        raise LlmrecError(
            "checksum mismatch: file changed after it was written",
            file=p["values"],
            hint=recompute,
        )
    values = _read_array(p["values"], "feature array", recompute, mmap_mode="r")
    if values.shape != (manifest["count"], manifest["dim"]):
        raise LlmrecError(
            f"shape {values.shape} does not match the manifest",
            file=p["values"],
            hint=recompute,
        )
    if expect_ids is not None and manifest.get("ids_sha256") not in (None, ids_checksum(expect_ids)):
        raise LlmrecError(
            "rows do not match this dataset's item/user order",
            file=p["manifest"],
            hint=recompute.replace("to recompute it", "for this dataset"),
        )
    missing = np.zeros(len(values), dtype=bool)
    recorded = manifest.get("missing_sha256")  # absent in features written before it was recorded
    if recorded and not p["missing"].exists():
        raise LlmrecError("missing-row mask not found", file=p["missing"], hint=recompute)
    if p["missing"].exists():
        if verify and recorded and sha256_file(p["missing"]) != recorded:
            raise LlmrecError(
                "checksum mismatch: file changed after it was written", file=p["missing"], hint=recompute
            )
        missing = _read_array(p["missing"], "missing-row mask", recompute)
        if missing.shape != (len(values),) or missing.dtype != np.bool_:
            raise LlmrecError(
                f"missing-row mask of shape {missing.shape} and dtype {missing.dtype} for {len(values)} rows",
                file=p["missing"],
                hint=recompute,
            )
    return Feature(name=name, values=values, missing=missing, manifest=manifest)


def _well_formed(manifest: dict[str, Any]) -> bool:
    """The keys every manifest has, with their types (a damaged manifest may still be valid JSON)."""
    return (
        all(type(manifest.get(k)) is int for k in ("count", "dim", "missing"))
        and all(isinstance(manifest.get(k), str) for k in ("sha256", "dtype"))
        and manifest.get("kind", "item") in ("item", "user")
    )


def _read_array(path: Path, what: str, hint: str, mmap_mode: Any = None) -> np.ndarray:
    """``np.load`` of one ``.npy`` array; anything else there (truncated, garbage, a zip) is one line."""
    try:
        array = np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except Exception as e:  # numpy raises ValueError, EOFError, OSError or zipfile errors on damaged files
        text = " ".join(str(e).split())[:200] or e.__class__.__name__
        raise LlmrecError(f"unreadable {what} ({text})", file=path, hint=hint) from None
    if not isinstance(array, np.ndarray):
        raise LlmrecError(f"unreadable {what} (not a .npy array)", file=path, hint=hint)
    return array


def load_item_feature(
    ds: Dataset, name: str, n_items: int, who: str = "this model", option: str = "feature"
) -> Feature:
    """The item feature ``name`` of the prepared dataset ``ds``: checksum and row order verified, and
    never stale: a feature computed from other item texts / image files (or CF embeddings exported from a
    run on another version of the dataset) is an error."""

    if not (ds.features_dir / f"{name}.json").exists():
        raise LlmrecError(
            f"{who} needs the item feature '{name}'",
            file=ds.features_dir / f"{name}.json",
            hint="compute it with 'llmrec features' (images: 'llmrec images', then 'llmrec features --image'; "
            f"CF: 'llmrec features --cf <run>') or choose another one with -o {option}=NAME (e.g. text)",
        )
    feature = load_feature(ds.features_dir, name, expect_ids=ds.items["item_id"].astype(str).tolist())
    if len(feature.values) != n_items or feature.manifest.get("kind", "item") != "item":
        raise LlmrecError(
            f"feature '{name}' has {len(feature.values)} rows of kind {feature.manifest.get('kind')!r}, "
            f"expected {n_items} item rows",
            file=ds.features_dir / f"{name}.json",
            hint="choose an item feature of this dataset",
        )
    reason = stale_reason(ds, feature.manifest)
    if reason is not None:
        again = "--cf RUN" if feature.manifest.get("modality") == "cf" else f"--data {ds.root}"
        raise LlmrecError(
            f"feature '{name}' is stale: {reason}",
            file=ds.features_dir / f"{name}.json",
            hint=f"recompute it with 'llmrec features {again}' (same options as before)",
        )
    return feature


def scaled_item_values(feature: Feature) -> tuple[np.ndarray, np.ndarray]:
    """(N, F) float32 values divided by the mean row norm of the items that have the feature (so one
    learning rate fits every encoder), and the (N,) mask of the items that have it."""
    values = np.array(feature.values, dtype=np.float32)  # read once from the memory map
    present = ~np.asarray(feature.missing, dtype=bool)
    norm = feature_norm(values, present)
    if norm > 0:
        values /= norm
    return values, present


def feature_norm(values: np.ndarray, present: np.ndarray) -> float:
    """The mean row norm of the items that have a feature (0 when none has): what
    :func:`scaled_item_values` divides by, and items added later are divided by the same."""
    return float(np.linalg.norm(values[present], axis=1).mean()) if present.any() else 0.0


def check_trained_feature(ds: Dataset, name: str, trained_sha256: str, feature: Feature) -> None:
    """Refuse to load a model onto an item feature that changed since the model was trained on it."""
    if feature.manifest["sha256"] != trained_sha256:
        raise LlmrecError(
            f"feature '{name}' changed since the model was trained "
            f"(sha256 {feature.manifest['sha256'][:12]}, trained on {trained_sha256[:12]})",
            file=ds.features_dir / f"{name}.npy",
            hint="restore the feature the model was trained on, or retrain the model",
        )


def list_features(root: str | Path) -> list[dict[str, Any]]:
    """Manifests of every complete feature under ``root``."""
    root = Path(root)
    return (
        [read_json(m) for m in sorted(root.glob("*.json")) if not m.name.startswith(".")]
        if root.exists()
        else []
    )


__all__ = [
    "Feature",
    "compute_feature",
    "load_item_feature",
    "save_feature",
    "load_feature",
    "list_features",
    "is_current",
    "clean_leftovers",
    "stale_keys",
    "ids_checksum",
]
