"""``llmrec recommend``: top-k items for one user or an ad-hoc history, or for many users into a file.

One query prints its list. A batch (``--all-users`` or ``--users-file``) writes ``--out recs.parquet``
(columns user, rank, item_id, title, score) chunk by chunk into a work folder beside it
(``.recs.parquet.llmrec-batch/``): an interrupted batch resumes at its first unwritten chunk when the same
command runs again (other settings are refused, never mixed in), and the file appears whole at the end, by
an atomic rename. Retrieve then re-rank: ``--candidates-from RUN --candidates N`` re-ranks each user's top-N of
another run (e.g. SASRec's top-100 re-ranked by an LLM) instead of the whole catalog.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmrec.api import COLUMNS, Model
from llmrec.config import ConfigError, option
from llmrec.errors import LlmrecError
from llmrec.filters import parse_rules
from llmrec.placement import DtypeName, QuantizeName, device_option, dtype_option, quantize_option
from llmrec.utils.io import (
    atomic_path,
    disk_errors,
    read_json,
    remove_stale_partials,
    write_json_atomic,
)


@dataclass
class RecommendConfig:
    """Whose recommendations, how many, where they go, and where the run's model is placed."""

    run: str = option("", "run directory of a trained model")
    user: str | None = option(None, "a user id of the dataset")
    items: list[str] | None = option(None, "item ids of a history, oldest first")
    all_users: bool = option(False, "every user of the dataset (a batch: needs --out)")
    users_file: str | None = option(
        None, "a batch for the user ids of this file: one per line, or a .csv/.parquet with a user_id column"
    )
    out: str | None = option(None, "the batch's Parquet file (user, rank, item_id, title, score)")
    k: int = option(10, "how many items", ge=1)
    exclude_history: bool = option(True, "never recommend an item of the user's history")
    include: list[str] | None = option(
        None,
        "only items with these attribute values: COLUMN=VALUE ... (e.g. category=Horror category=Comedy "
        "year=1995); an item must match every column named, any of its values",
    )
    exclude: list[str] | None = option(
        None, "never items with any of these attribute values: COLUMN=VALUE ..."
    )
    exclude_items: list[str] | None = option(None, "never these item ids")
    candidates_from: str | None = option(
        None,
        "retrieve then re-rank: another run on the same dataset whose top --candidates items are re-ranked",
    )
    candidates: int = option(100, "items retrieved per user with --candidates-from", ge=1)
    chunk_users: int = option(256, "users per chunk of a batch (the unit of resuming)", ge=1)
    overwrite: bool = option(False, "replace an existing --out file")
    restart: bool = option(False, "discard an interrupted batch for --out made with other settings")
    data: str | None = option(None, "the run's dataset moved: its new folder (checksum verified)")
    json: bool = option(False, "print JSON")
    device: str = device_option()
    dtype: DtypeName = dtype_option()
    quantize: QuantizeName = quantize_option()

    def __post_init__(self) -> None:
        if not self.run:
            raise ConfigError("run: the run directory of a trained model is required")
        given = [self.user is not None, self.items is not None, self.all_users, self.users_file is not None]
        if sum(given) != 1:
            raise ConfigError(
                "give exactly one of --user ID, --items ID ..., --all-users or --users-file FILE"
            )
        if self.items is not None and not self.items:
            raise ConfigError("items: give at least one item id")
        if self.batch and not self.out:
            raise ConfigError("a batch (--all-users / --users-file) writes a file: give --out FILE.parquet")
        if not self.batch and self.out:
            raise ConfigError("--out is for batches: add --all-users or --users-file")
        if self.out and Path(self.out).suffix != ".parquet":
            raise ConfigError(f"--out must name a .parquet file, got {self.out!r}")
        self.rules()  # COLUMN=VALUE checked before a model loads

    def rules(self) -> dict[str, Any]:
        """The business rules as ``Model.recommend`` takes them (``include``, ``exclude``, ``exclude_items``)."""
        return {
            "include": parse_rules(self.include, "include"),
            "exclude": parse_rules(self.exclude, "exclude"),
            "exclude_items": self.exclude_items,
        }

    @property
    def batch(self) -> bool:
        return self.all_users or self.users_file is not None


def load_for(cfg: Any) -> Model:
    """The run of ``cfg`` (``llmrec recommend``'s or ``llmrec serve``'s: run, device, dtype, quantize, data,
    candidates_from, candidates) loaded, with its retriever when ``--candidates-from`` (the retriever
    exact: ``--quantize`` is for the re-ranking LLM)."""
    from llmrec.api import load

    return load(
        cfg.run,
        device=cfg.device,
        dtype=cfg.dtype,
        data=cfg.data,
        retriever=cfg.candidates_from,
        retrieve=cfg.candidates,
        quantize=cfg.quantize,
    )


def read_users_file(path: str | Path, model: Model) -> list[str]:
    """User ids from a text file (one per line; a first line ``user_id`` is a header) or a .csv/.parquet
    with a ``user_id`` column; every id must be a user of the run's dataset."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise LlmrecError("no such file", file=path, hint="give a file of user ids, one per line")
    if path.suffix in (".csv", ".parquet"):
        try:
            table = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, dtype=str)
        except Exception as e:  # a damaged table: say which file and what the reader said
            raise LlmrecError(f"unreadable ({type(e).__name__}: {e})".splitlines()[0], file=path) from None
        if "user_id" not in table.columns:
            raise LlmrecError(
                f"no user_id column (columns: {list(table.columns)[:8]})", file=path, field="user_id"
            )
        ids, first_row = table["user_id"].astype(str).str.strip().tolist(), 1
    else:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            raise LlmrecError("not UTF-8 text", file=path, hint="one user id per line") from None
        first_row = 2 if lines and lines[0].strip() == "user_id" else 1
        ids = [line.strip() for line in lines[first_row - 1 :]]
    for row, uid in enumerate(ids, start=first_row):
        if uid not in model.user_index:
            what = "empty user id" if not uid else f"unknown user id {uid!r}"
            raise LlmrecError(
                what, file=path, row=row, field="user_id", hint=f"use user ids of {model.dataset.root}"
            )
    if not ids:
        raise LlmrecError("holds no user id", file=path, hint="one user id per line")
    return ids


def batch_settings(model: Model, users: list[str], cfg: RecommendConfig) -> dict[str, Any]:
    """What a batch's chunks depend on: a resumed batch must have the same."""
    digest = hashlib.sha256("\n".join(users).encode()).hexdigest()
    retriever = model.retriever
    return {
        "run": str(model.run.resolve()),
        "model": model.name,
        "dataset": model.dataset.identity,
        "catalog_items": len(
            model.item_ids
        ),  # items added to the run since (llmrec add-items) change answers
        "users_sha256": digest,
        "users": len(users),
        "k": cfg.k,
        "exclude_history": cfg.exclude_history,
        **cfg.rules(),
        "candidates_from": None if retriever is None else str(retriever.run.resolve()),
        "candidates": None if retriever is None else model.retrieve,
        "index": None if model.index is None else model.index.describe(),  # approximate answers differ
        "chunk_users": cfg.chunk_users,
    }


def work_dir(out: Path) -> Path:
    """Where the chunks of a batch for ``out`` wait until the file is assembled."""
    return out.parent / f".{out.name}.llmrec-batch"


def _start_or_resume(work: Path, settings: dict[str, Any], restart: bool) -> None:
    job = work / "job.json"
    if work.exists() and not job.exists():  # killed before job.json: nothing of value yet
        shutil.rmtree(work)
    if job.exists():
        saved = read_json(job)
        changed = [f"{k} {saved.get(k)!r} -> {v!r}" for k, v in settings.items() if saved.get(k) != v]
        if changed and not restart:
            raise LlmrecError(
                f"an interrupted batch with other settings waits here ({'; '.join(changed[:3])})",
                file=work,
                hint="run the same command again to resume it, or add --restart to discard it",
            )
        if changed:
            shutil.rmtree(work)
    if not work.exists():
        work.mkdir(parents=True)
        write_json_atomic(job, settings)
    remove_stale_partials(work)


def _write_chunk(model: Model, users: list[str], cfg: RecommendConfig, path: Path) -> None:
    table = model.recommend(user_ids=users, k=cfg.k, exclude_history=cfg.exclude_history, **cfg.rules())
    with atomic_path(path) as tmp:
        table[list(COLUMNS)].to_parquet(tmp, index=False)


def write_batch(
    model: Model, users: list[str], cfg: RecommendConfig, progress: bool = True
) -> dict[str, Any]:
    """Recommendations for ``users`` into ``cfg.out`` (resumable; atomic at the end); returns a summary."""
    assert cfg.out is not None
    out = Path(cfg.out)
    if out.is_dir():
        raise LlmrecError("is a folder", file=out, hint="--out names the Parquet file to write")
    work = work_dir(out)
    settings = batch_settings(model, users, cfg)
    if out.exists() and not cfg.overwrite:
        if work.exists() and _written_with(out, settings):  # killed after the file, before the cleanup
            shutil.rmtree(work, ignore_errors=True)
            return {
                "out": str(out),
                "users": len(users),
                "rows": _parquet_rows(out),
                "resumed_users": len(users),
            }
        raise LlmrecError(
            "exists already", file=out, hint="add --overwrite to replace it, or choose another --out"
        )
    remove_stale_partials(out.parent)  # the final file's temp of a batch killed while assembling it
    with disk_errors(out, temp=work):  # a full disk names --out, not the chunk folder beside it
        done, rows = _write_batch(model, users, cfg, out, work, settings, progress)
    shutil.rmtree(work, ignore_errors=True)
    return {"out": str(out), "users": len(users), "rows": rows, "resumed_users": done}


def _written_with(out: Path, settings: dict[str, Any]) -> bool:
    """Whether ``out`` is the complete file of a batch with these settings (its schema records them)."""
    import pyarrow.parquet as pq

    try:
        metadata = pq.read_schema(out).metadata or {}
    except Exception:  # not a parquet file, or a damaged one: someone else's
        return False
    return metadata.get(b"llmrec") == json.dumps(settings).encode()


def _parquet_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return int(pq.read_metadata(path).num_rows)


def _write_batch(
    model: Model,
    users: list[str],
    cfg: RecommendConfig,
    out: Path,
    work: Path,
    settings: dict[str, Any],
    progress: bool,
) -> tuple[int, int]:
    """The chunks still missing in ``work``, then ``out`` from all of them -> (users resumed, rows)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm import tqdm

    _start_or_resume(work, settings, cfg.restart)
    chunks = [users[s : s + cfg.chunk_users] for s in range(0, len(users), cfg.chunk_users)]
    paths = [work / f"chunk-{i:06d}.parquet" for i in range(len(chunks))]
    done = sum(len(c) for c, p in zip(chunks, paths) if p.exists())
    with tqdm(total=len(users), initial=done, unit="user", desc="recommend", disable=not progress) as bar:
        for chunk, path in zip(chunks, paths):
            if not path.exists():
                _write_chunk(model, chunk, cfg, path)
                bar.update(len(chunk))
    schema = pa.schema(
        [
            ("user", pa.string()),
            ("rank", pa.int64()),
            ("item_id", pa.string()),
            ("title", pa.string()),
            ("score", pa.float64()),
        ],
        metadata={"llmrec": json.dumps(settings)},
    )
    rows = 0
    with atomic_path(out) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for path in paths:
            table = pq.read_table(path).select(list(COLUMNS)).cast(schema.remove_metadata())
            writer.write_table(table.replace_schema_metadata(schema.metadata))
            rows += table.num_rows
    return done, rows
