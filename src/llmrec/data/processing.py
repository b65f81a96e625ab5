"""From raw canonical tables to a prepared dataset directory.

One pipeline for every source: metadata join, optional attribute filters, de-duplication, iterative
k-core, optional user subsampling, chronological sequences, leave-one-out splits, frozen evaluation
negatives and CTR examples. The tables are written into a temp folder inside the output folder and moved
into place entry by entry at the end (meta.json removed first, written last, an "incomplete" marker in
between): a failed run never damages the previous dataset, a run killed while moving leaves a folder that
says "incomplete, re-run", and files in the output folder that are not llmrec's are never touched.
One writer at a time: the folder's lock (:func:`llmrec.utils.lock.folder_lock`, a file beside it) is taken
before anything else, so a second ``prepare`` into it is refused at once, naming the first one's process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from llmrec.config import check_ranges, option
from llmrec.data.cold import cold_negatives_file, hold_out
from llmrec.data.dataset import INCOMPLETE, content_identity, is_dataset_dir
from llmrec.data.importers import ImportSpec, get_importer
from llmrec.data.schema import RawData
from llmrec.data.steps import (
    ctr_examples,
    from_input,
    natural_order,
    no_known_items,
    nothing_left,
    prepare_negatives_hint,
    sample_negatives,
    split_record,
)
from llmrec.errors import ConfigError, LlmrecError
from llmrec.utils.io import (
    disk_errors,
    partial_dir,
    remove_stale_partials,
    sha256_file,
    write_json_atomic,
    write_text_atomic,
)
from llmrec.utils.lock import INSIDE_LOCK, folder_lock

log = logging.getLogger(__name__)


@dataclass
class ProcessConfig:
    """How raw tables become a dataset (everything after the importer)."""

    kcore: int = option(5, "iterative k-core: keep users and items with at least k interactions (0 = off)")
    min_user_len: int = option(3, "drop users with fewer interactions (leave-one-out needs >= 3)")
    max_users: int | None = option(
        None, "randomly keep this many users (seeded) for quick runs; k-core re-applied"
    )
    dedupe: bool = option(True, "keep only the first interaction of a repeated (user, item) pair")
    require_image: bool = option(False, "drop items without an image reference before k-core (I-LLMRec data)")
    require_description: bool = option(False, "drop items with an empty description before k-core")
    num_negatives: int = option(
        100, "evaluation negatives per user, uniform over items the user never touched"
    )
    seed: int = option(42, "seed for user subsampling and evaluation negatives")
    cold_items: float = option(
        0.0,
        "hold out this fraction of the items, those introduced last (first interaction), from every training "
        "table; cases whose target is one are ranked among held-out items (cold-start evaluation)",
        ge=0,
        lt=1,
    )
    like_threshold: float = option(4.0, "CTR: rating >= threshold is a positive (label 1)")
    ctr_history_len: int = option(10, "CTR: at most this many most recent liked items before the target")
    ctr_history_before: Literal["row", "time"] = option(
        "row",
        "CTR: a history holds the liked items of the user's earlier rows (row), or only those of strictly "
        "earlier times (time: rows of one time, such as the news shown in one MIND impression, never enter "
        "each other's histories; the mind importer's default)",
    )
    ctr_min_history: int = option(1, "CTR: drop examples whose history is shorter")
    ctr_sampled_negatives: int = option(
        0, "CTR: add this many sampled unseen items (label 0) per example, for all-positive sources"
    )
    ctr_split: list[float] = option(factory=lambda: [0.8, 0.1, 0.1], help="CTR: global time split fractions")

    def __post_init__(self) -> None:
        if self.kcore < 0:
            raise ConfigError(f"kcore must be >= 0, got {self.kcore}")
        if self.min_user_len < 3:
            raise ConfigError(f"min_user_len must be >= 3 for leave-one-out, got {self.min_user_len}")
        if self.max_users is not None and self.max_users < 1:
            raise ConfigError(f"max_users must be positive, got {self.max_users}")
        if self.num_negatives < 1:
            raise ConfigError(f"num_negatives must be >= 1, got {self.num_negatives}")
        if not 0 <= self.cold_items < 1:
            raise ConfigError(f"cold_items must be a fraction in [0, 1), got {self.cold_items}")
        if len(self.ctr_split) != 3 or abs(sum(self.ctr_split) - 1.0) > 1e-6 or min(self.ctr_split) < 0:
            raise ConfigError(
                f"ctr_split must be three non-negative fractions summing to 1, got {self.ctr_split}"
            )
        if self.ctr_history_len < 1 or self.ctr_min_history < 0 or self.ctr_sampled_negatives < 0:
            raise ConfigError("ctr_history_len must be >= 1, ctr_min_history and ctr_sampled_negatives >= 0")


@dataclass
class PrepareConfig(ImportSpec, ProcessConfig):
    """``llmrec prepare``: importer name, its files, the output directory and the processing options."""

    dataset: str = option(
        "ml-100k", "importer name: ml-100k, ml-1m, ml-latest, amazon2018, amazon2023, table"
    )
    out: str | None = option(None, "output directory (default: data/<dataset>)")
    overwrite: bool = option(
        False,
        "write into an existing folder that is not an llmrec dataset (files that are not llmrec's are kept)",
    )
    engine: Literal["duckdb", "pandas"] = option(
        "duckdb",
        "duckdb: columnar, out-of-core, bounded by --memory-limit; pandas: everything in memory "
        "(the older path; both write the same files)",
    )
    memory_limit: str | None = option(
        None, "duckdb engine only: memory cap such as 8GB; beyond it DuckDB spills to the output folder"
    )
    threads: int | None = option(None, "duckdb engine only: worker threads (default: all cores)", ge=1)

    def __post_init__(self) -> None:
        ProcessConfig.__post_init__(self)
        check_ranges(self)
        if self.memory_limit is not None and not _SIZE.match(self.memory_limit):
            raise ConfigError(
                f"--memory-limit {self.memory_limit!r} is not a size; give a size such as 8GB or 512MB"
            )

    @property
    def out_dir(self) -> Path:
        return Path(self.out) if self.out else Path("data") / self.dataset


_SIZE = re.compile(r"^\s*\d+(\.\d+)?\s*([KMGT]i?B|B|bytes)\s*$", re.IGNORECASE)


def kcore(inter: pd.DataFrame, k: int, min_user_len: int = 0) -> pd.DataFrame:
    """Iteratively drop users with < max(k, min_user_len) and items with < k interactions until stable."""
    ku = max(k, min_user_len)
    while True:
        ucount = inter["user_id"].map(inter["user_id"].value_counts())
        icount = inter["item_id"].map(inter["item_id"].value_counts())
        keep = (ucount >= ku) & (icount >= k)
        if keep.all():
            return inter
        inter = inter.loc[keep]


def process(raw: RawData, cfg: ProcessConfig) -> dict[str, Any]:
    """Filter and split ``raw``; return the tables to write plus the meta record (nothing is written here)."""
    items, inter = raw.items, raw.interactions
    counts_raw = _counts(inter)
    counts_raw["items_with_metadata"] = len(items)
    filters: list[dict[str, Any]] = []

    def note(step: str, before: pd.DataFrame, after: pd.DataFrame) -> None:
        filters.append(
            {"step": step, "interactions_removed": int(len(before) - len(after)), **_counts(after)}
        )

    files = [str(f) for f in raw.source.get("files", [])]
    if inter.empty:
        raise LlmrecError(
            "no interactions in the input", file=files[0] if files else None, hint="check --path"
        )
    known = inter["item_id"].isin(items["item_id"])
    after = inter.loc[known]
    note("drop interactions with items missing from the metadata", inter, after)
    if after.empty and len(files) > 1:  # the item ids of the two files never meet
        raise no_known_items(len(items), inter["item_id"].nunique(), files)
    inter = after
    if cfg.require_image:
        after = inter.loc[inter["item_id"].isin(items.loc[items["image"] != "", "item_id"])]
        note("drop items without an image reference", inter, after)
        inter = after
    if cfg.require_description:
        after = inter.loc[inter["item_id"].isin(items.loc[items["description"] != "", "item_id"])]
        note("drop items without a description", inter, after)
        inter = after
    inter = inter.reset_index(drop=True)
    if cfg.dedupe:
        order = inter.sort_values(["user_id", "timestamp"], kind="stable").index
        after = inter.loc[order].drop_duplicates(["user_id", "item_id"], keep="first").sort_index()
        note("keep the first of repeated (user, item) pairs", inter, after)
        inter = after
    after = kcore(inter, cfg.kcore, cfg.min_user_len)
    note(f"iterative {cfg.kcore}-core (users >= {max(cfg.kcore, cfg.min_user_len)})", inter, after)
    inter = after
    if cfg.max_users is not None and inter["user_id"].nunique() > cfg.max_users:
        rng = np.random.default_rng(cfg.seed)
        users = natural_order(inter["user_id"])
        keep = set(rng.choice(users, size=cfg.max_users, replace=False).tolist())
        after = kcore(inter.loc[inter["user_id"].isin(keep)], cfg.kcore, cfg.min_user_len)
        note(f"sample {cfg.max_users} users (seed {cfg.seed}) and re-apply k-core", inter, after)
        inter = after
    if inter.empty:
        raise nothing_left(filters, files)
    return finalize(items, inter, cfg, raw.source, counts_raw, filters, raw.users)


def finalize(
    items: pd.DataFrame,
    inter: pd.DataFrame,
    cfg: ProcessConfig,
    source: dict[str, Any],
    counts_raw: dict[str, int],
    filters: list[dict[str, Any]],
    users_side: pd.DataFrame | None = None,
    negatives_hint: str | Callable[[int], str] | None = None,
) -> dict[str, Any]:
    """Index users/items, build sequences, negatives and CTR examples from filtered interactions.

    ``negatives_hint``: what to do when a user has too few unseen items left (the caller's options;
    default: ``llmrec prepare``'s, for these ``filters``).
    """
    item_ids = natural_order(inter["item_id"])
    user_ids = natural_order(inter["user_id"])
    items = items.set_index("item_id").loc[item_ids].reset_index()
    item_index = pd.Series(np.arange(len(item_ids), dtype=np.int32), index=item_ids)
    user_index = pd.Series(np.arange(len(user_ids), dtype=np.int32), index=user_ids)
    inter = inter.assign(
        user_idx=inter["user_id"].map(user_index).astype("int32"),
        item_idx=inter["item_id"].map(item_index).astype("int32"),
    )
    # Chronological per user; ties keep the source's order (stable sort).
    inter = inter.sort_values(["user_idx", "timestamp"], kind="stable").reset_index(drop=True)
    grouped = inter.groupby("user_idx", sort=True)
    seqs = [g.to_numpy(dtype=np.int32) for _, g in grouped["item_idx"]]
    times = [g.to_numpy(dtype=np.int64) for _, g in grouped["timestamp"]]
    sequences = pd.DataFrame(
        {
            "user_idx": np.arange(len(user_ids), dtype=np.int32),
            "user_id": user_ids,
            "items": seqs,
            "timestamps": times,
        }
    )
    rng = np.random.default_rng(cfg.seed)
    hint = prepare_negatives_hint(cfg, filters) if negatives_hint is None else negatives_hint
    negatives = {
        split: sample_negatives(seqs, len(item_ids), cfg.num_negatives, rng, hint, user_ids)
        for split in ("valid", "test")
    }
    users = pd.DataFrame({"user_id": user_ids})
    if users_side is not None and "user_id" in users_side.columns:
        side = users_side.astype({"user_id": str}).drop_duplicates("user_id").set_index("user_id")
        users = users.join(side, on="user_id")
    ctr = ctr_examples(inter, cfg)
    meta = {
        "source": source,
        "counts_raw": counts_raw,
        "filters": filters,
        "counts": _counts(inter),
        **split_record(cfg),
    }
    if ctr is not None:
        meta["ctr"] = {
            split: {
                "examples": int((ctr["split"] == split).sum()),
                "positives": int(ctr.loc[ctr["split"] == split, "label"].sum()),
            }
            for split in ("train", "valid", "test")
        }
    return {
        "items": items,
        "interactions": inter[["user_id", "item_id", "timestamp", "rating", "label", "user_idx", "item_idx"]],
        "users": users,
        "sequences": sequences,
        "negatives": negatives,
        "ctr": ctr,
        "meta": meta,
    }


# What a prepare writes into its output folder, and so may replace; nothing else there is ever touched.
DATASET_ENTRIES = (
    "items.parquet",
    "interactions.parquet",
    "users.parquet",
    "sequences.parquet",
    "eval",
    "ctr",
)
# Side outputs later commands add to a dataset: kept by a re-prepare (features/texts only for the same items).
SIDE_OUTPUTS = ("images", "features", "texts")


# Older versions wrote ``.<name>.<8 random chars>.partial`` beside the output folder, without a process id.
_LEGACY_AGE_S = 3600.0  # untouched this long, such a folder is no running prepare's


def remove_stale_temp(out_dir: Path) -> None:
    """Delete what killed llmrec processes left in a dataset folder (temp folders of prepare, temp files of
    atomic writes, see :func:`llmrec.utils.io.remove_stale_partials`); those of running processes stay.

    Also the temp folders older versions left beside it, when they hold only dataset entries and nothing in
    them changed for an hour (they record no process id)."""
    for folder in (out_dir, *(out_dir / name for name in DATASET_ENTRIES + SIDE_OUTPUTS)):
        for path in remove_stale_partials(folder):
            log.info("removed %s, left by an interrupted llmrec process", path)
    resolved = out_dir.resolve()
    legacy = re.compile(rf"^\.{re.escape(resolved.name)}\.[a-z0-9_]{{8}}\.partial$")
    ours = {*DATASET_ENTRIES, *SIDE_OUTPUTS, "meta.json"}
    for path in resolved.parent.glob(f".{glob.escape(resolved.name)}.*.partial"):
        if not legacy.match(path.name) or path.is_symlink() or not path.is_dir():
            continue
        if not {p.name for p in path.iterdir()} <= ours:
            continue
        newest = max([path.stat().st_mtime] + [p.lstat().st_mtime for p in path.rglob("*")])
        if time.time() - newest > _LEGACY_AGE_S:
            shutil.rmtree(path, ignore_errors=True)
            log.info("removed %s, left by an interrupted prepare of an older llmrec", path)


def check_out_dir(out_dir: Path, overwrite: bool = False) -> None:
    """Refuse an output folder that holds something other than an llmrec dataset, unless ``overwrite``."""
    if out_dir.exists() and not out_dir.is_dir():
        raise LlmrecError("exists and is not a folder", file=out_dir, hint="choose another --out")
    if overwrite or not out_dir.is_dir() or is_dataset_dir(out_dir):
        return
    found = sorted(p.name + ("/" if p.is_dir() else "") for p in out_dir.iterdir() if p.name != INSIDE_LOCK)
    if found:
        shown = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
        raise LlmrecError(
            f"folder exists and is not an llmrec dataset (no meta.json from 'llmrec prepare'); it holds {shown}",
            file=out_dir,
            hint="choose another --out, or pass --overwrite to write the dataset into it "
            "(files that are not llmrec's are kept)",
        )


def write_dataset(tables: dict[str, Any], out_dir: Path, overwrite: bool = False) -> None:
    """Write a dataset held in pandas into ``out_dir`` (see :func:`write_dataset_with`)."""

    def fill(tmp: Path) -> dict[str, Any]:
        tables["items"].to_parquet(tmp / "items.parquet", index=False)
        tables["interactions"].to_parquet(tmp / "interactions.parquet", index=False)
        tables["users"].to_parquet(tmp / "users.parquet", index=False)
        tables["sequences"].to_parquet(tmp / "sequences.parquet", index=False)
        (tmp / "eval").mkdir()
        for split, arr in tables["negatives"].items():
            np.save(tmp / "eval" / f"{split}_negatives.npy", arr, allow_pickle=False)
        if tables["ctr"] is not None:
            (tmp / "ctr").mkdir()
            for split in ("train", "valid", "test"):
                part = tables["ctr"].loc[tables["ctr"]["split"] == split].drop(columns="split")
                part.to_parquet(tmp / "ctr" / f"{split}.parquet", index=False)
        return tables["meta"]

    write_dataset_with(fill, out_dir, overwrite)


def write_dataset_with(
    fill: Callable[[Path], dict[str, Any]], out_dir: Path, overwrite: bool = False
) -> dict[str, Any]:
    """Write a dataset into ``out_dir``; the old dataset there survives any failure before the final moves.

    ``fill(tmp)`` writes the tables into a temp folder inside ``out_dir`` and returns the meta record; the
    entries then replace the old ones one by one (see :data:`DATASET_ENTRIES`). Side outputs (``images/``
    always, ``features/`` and ``texts/`` when the item list did not change) stay, so re-preparing never
    throws away downloaded images. An existing folder that is not a dataset is refused unless ``overwrite``;
    its other files are kept either way. Returns the meta record as written.
    """
    out_dir = Path(out_dir)
    with folder_lock(out_dir, "dataset", create=True):  # held by prepare already; here for other writers
        return _write_dataset_locked(fill, out_dir, overwrite)


def _write_dataset_locked(
    fill: Callable[[Path], dict[str, Any]], out_dir: Path, overwrite: bool
) -> dict[str, Any]:
    remove_stale_temp(out_dir)
    check_out_dir(out_dir, overwrite)
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = partial_dir(out_dir, "prepare")
    try:
        # a full disk names the dataset folder (pyarrow and numpy name no file; the temp folder is ours)
        with disk_errors(out_dir, temp=tmp):
            meta = hold_out(tmp, fill(tmp))  # the cold items (--cold-items), when asked for
            checksums = {
                rel: sha256_file(tmp / rel)
                for split in ("valid", "test")
                for rel in (f"eval/{split}_negatives.npy", cold_negatives_file(split))
                if (tmp / rel).exists()
            }
            meta = dict(meta, checksums=checksums, identity=content_identity(tmp))
            write_json_atomic(tmp / "meta.json", meta)
            new_ids = pd.read_parquet(tmp / "items.parquet", columns=["item_id"])["item_id"].tolist()
            _move_into_place(tmp, out_dir, keep_features=_same_items(out_dir, new_ids))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if created:
            with contextlib.suppress(OSError):
                out_dir.rmdir()  # only if still empty
        raise
    shutil.rmtree(tmp, ignore_errors=True)
    return meta


def _same_items(old: Path, item_ids: list[str]) -> bool:
    """Whether the dataset in ``old`` has exactly these items in this order (its features still apply)."""
    try:
        old_ids = pd.read_parquet(old / "items.parquet", columns=["item_id"])["item_id"].tolist()
    except Exception:  # no dataset there, or an unreadable one: nothing to keep
        return False
    return bool(old_ids == item_ids)


def _move_into_place(new: Path, out: Path, keep_features: bool) -> None:
    """Replace llmrec's entries in ``out`` by those in ``new``; meta.json goes last, so a crash in between
    leaves no meta.json and an :data:`INCOMPLETE` marker (the folder says "re-run", never loads mixed)."""
    write_text_atomic(out / INCOMPLETE, "an 'llmrec prepare' into this folder did not finish; re-run it\n")
    (out / "meta.json").unlink(missing_ok=True)
    replaced = new / ".replaced"  # old entries go here, deleted with the temp folder
    replaced.mkdir()
    names = DATASET_ENTRIES + (() if keep_features else ("features", "texts"))
    for name in names:
        if (out / name).exists() or (out / name).is_symlink():
            (out / name).rename(replaced / name)
        if (new / name).exists():
            (new / name).rename(out / name)
    os.replace(new / "meta.json", out / "meta.json")
    (out / INCOMPLETE).unlink()


def prepare(cfg: PrepareConfig) -> dict[str, Any]:
    """Import, process and write a dataset; returns its meta record.

    The output folder's lock is held from the first look at it to the last move (another ``prepare``,
    ``images`` or ``features`` on it is refused at once, naming this process)."""
    check_engine_options(cfg)
    cfg = with_engine_installed(cfg)
    with folder_lock(cfg.out_dir, "dataset", create=True):
        return _prepare_locked(cfg)


def _prepare_locked(cfg: PrepareConfig) -> dict[str, Any]:
    remove_stale_temp(cfg.out_dir)
    check_out_dir(cfg.out_dir, cfg.overwrite)  # before the import, which may take long
    if cfg.overwrite and cfg.out_dir.is_dir() and not is_dataset_dir(cfg.out_dir):
        _check_inputs_survive(cfg)
    if cfg.engine == "duckdb":
        from llmrec.data.columnar import prepare_columnar

        return write_dataset_with(lambda tmp: prepare_columnar(cfg, tmp), cfg.out_dir, cfg.overwrite)
    raw = get_importer(cfg.dataset)(cfg)
    log.info("imported %s: %s", cfg.dataset, _counts(raw.interactions))
    try:
        tables = process(raw, cfg)
    except LlmrecError as e:  # what filtering or splitting found: say which input it came from
        raise from_input(e, [str(f) for f in raw.source.get("files") or [cfg.dataset]]) from None
    write_dataset(tables, cfg.out_dir, overwrite=cfg.overwrite)
    return tables["meta"]


def check_engine_options(cfg: PrepareConfig) -> None:
    """Refuse the duckdb engine's own options with ``--engine pandas``, which would ignore them.

    Checked when a dataset is prepared, not in :class:`PrepareConfig`: the config recorded in meta.json of
    a dataset prepared before this check may hold both, and ``llmrec images --missing drop`` reads it."""
    if cfg.engine == "duckdb":
        return
    for flag, value in (("--memory-limit", cfg.memory_limit), ("--threads", cfg.threads)):
        if value is not None:
            raise ConfigError(f"{flag} applies to the duckdb engine only; drop it or use --engine duckdb")


def with_engine_installed(cfg: PrepareConfig) -> PrepareConfig:
    """``cfg``, or ``cfg`` with ``engine="pandas"`` where DuckDB (the duckdb extra) is not installed: both
    engines write the same files, so a core install prepares with pandas (in memory) after a logged note.
    The duckdb engine's own options (--memory-limit, --threads) ask for DuckDB: with them it is refused."""
    from llmrec.extras import MissingExtra, available

    if cfg.engine != "duckdb" or available("duckdb"):
        return cfg
    if cfg.memory_limit is not None or cfg.threads is not None:
        raise MissingExtra("--engine duckdb with --memory-limit or --threads", "duckdb", "duckdb")
    log.warning(
        "DuckDB is not installed (pip install 'llmrec[duckdb]'): preparing with --engine pandas, "
        "which holds the data in memory and writes the same files"
    )
    return dataclasses.replace(cfg, engine="pandas")


def _check_inputs_survive(cfg: PrepareConfig) -> None:
    """With --overwrite, refuse an input file of the user's that the dataset would replace (same name)."""
    out = cfg.out_dir.resolve()
    replaced = [out / name for name in (*DATASET_ENTRIES, "meta.json", "features", "texts")]
    for flag, value in (
        ("--path", cfg.path),
        ("--items-path", cfg.items_path),
        ("--meta-path", cfg.meta_path),
    ):
        path = Path(value).expanduser().resolve() if value else None
        if path is not None and any(path == r or r in path.parents for r in replaced):
            raise LlmrecError(
                f"the input file ({flag}) has the name of a dataset file that --overwrite would replace",
                file=value,
                hint="move it out of the output folder, or choose another --out",
            )


def _counts(inter: pd.DataFrame) -> dict[str, int]:
    return {
        "users": int(inter["user_id"].nunique()),
        "items": int(inter["item_id"].nunique()),
        "interactions": int(len(inter)),
    }


_KEEP_HINT = "keep them with 'llmrec images --missing keep' (they are flagged image-less)"


def drop_items(data_dir: str | Path, item_ids: set[str] | list[str], reason: str) -> dict[str, Any]:
    """Remove items from a prepared dataset, re-apply k-core and re-split with the dataset's own config.

    Used by ``llmrec images --missing drop``: the new dataset replaces the old one atomically and its
    meta.json records the step. Returns the new meta record.
    """
    with folder_lock(data_dir, "dataset"):  # read and rewritten by one writer
        return _drop_items_locked(data_dir, item_ids, reason)


def _drop_items_locked(data_dir: str | Path, item_ids: set[str] | list[str], reason: str) -> dict[str, Any]:
    from llmrec.config import from_dict
    from llmrec.data.dataset import Dataset

    ds = Dataset(data_dir)
    cfg = from_dict(PrepareConfig, ds.meta["config"])
    drop = set(map(str, item_ids))
    inter = ds.interactions[["user_id", "item_id", "timestamp", "rating", "label"]]
    after = inter.loc[~inter["item_id"].isin(drop)]
    filters = list(ds.meta["filters"])
    step = {"step": f"drop {len(drop)} items: {reason}", "interactions_removed": int(len(inter) - len(after))}
    filters.append({**step, **_counts(after)})
    kept = kcore(after, cfg.kcore, cfg.min_user_len)
    filters.append(
        {
            "step": f"re-apply {cfg.kcore}-core",
            "interactions_removed": int(len(after) - len(kept)),
            **_counts(kept),
        }
    )
    if kept.empty:
        raise LlmrecError(
            f"no interactions left after dropping {len(drop)} items",
            file=data_dir,
            hint=_KEEP_HINT,
        )
    users_side = ds.users if ds.users.shape[1] > 1 else None
    tables = finalize(
        ds.items,
        kept.reset_index(drop=True),
        cfg,
        ds.meta["source"],
        ds.meta["counts_raw"],
        filters,
        users_side,
        negatives_hint=f"too many items would be dropped: {_KEEP_HINT}",
    )
    write_dataset(tables, Path(data_dir))
    return tables["meta"]
