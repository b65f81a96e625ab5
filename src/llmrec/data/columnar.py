"""``llmrec prepare --engine duckdb``: the heavy steps of import and processing on DuckDB, in bounded memory.

The same dataset as the pandas path (:func:`llmrec.data.processing.process`), byte for byte, at any scale:

1. **read**: Amazon JSON lines (:data:`llmrec.data.importers.amazon.LAYOUTS`) straight into DuckDB, only the
   fields used; the metadata file only for its item ids. Every other importer (small sources) runs as
   usual and its tables are handed to DuckDB. A file DuckDB cannot read, or a row outside the strict
   form the columnar reader accepts, sends that file to the line reader, which names the bad line and field
   (or reads it, e.g. the Python-literal lines of the 2014 dumps);
2. **filter**: the engine-neutral SQL of :mod:`llmrec.data.plan` (known items, first of duplicates,
   iterative k-core with one progress line per round);
3. **index and split**: ids in :func:`~llmrec.data.steps.natural_order` (in Python: one row per user
   or item), chronological sequences, CTR examples as window functions (the last liked items before each
   rating), the global time split;
4. **write**: each table streamed to parquet in the row groups ``DataFrame.to_parquet`` writes, with the
   same schema, so the files are the pandas path's; negatives by the same seeded sampler over the same
   sequences; item metadata parsed only for the items that survived the filters.

DuckDB's memory is capped by ``--memory-limit`` and spills into the prepare's temp folder inside the output
folder (removed at the end, or by the next run when killed).
"""

from __future__ import annotations

import errno
import logging
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from llmrec.data import plan
from llmrec.data.importers import get_importer
from llmrec.data.schema import ITEM_COLUMNS, item_row
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
from llmrec.errors import LlmrecError

if TYPE_CHECKING:
    import duckdb

    from llmrec.data.importers.amazon import ReviewsLayout
    from llmrec.data.processing import PrepareConfig

log = logging.getLogger(__name__)

ROW_GROUP = 1 << 20  # pyarrow's default row group length: what DataFrame.to_parquet writes
_SAMPLE = 1024  # rows converted through pandas to learn the schema pandas would write


def connect(memory_limit: str | None, spill: Path, threads: int | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB whose operators spill to ``spill`` beyond ``memory_limit`` (e.g. ``"8GB"``)."""
    import duckdb

    con = duckdb.connect(config={"preserve_insertion_order": True})
    spill.mkdir(parents=True, exist_ok=True)
    con.execute(f"SET temp_directory = '{_quote(str(spill))}'")
    if memory_limit:
        try:
            con.execute(f"SET memory_limit = '{_quote(memory_limit)}'")
        except duckdb.Error as e:
            raise LlmrecError(
                f"--memory-limit {memory_limit!r} is not a size ({_first_line(e)})",
                hint="give a size such as 8GB or 512MB",
            ) from None
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    # DuckDB's own bar (queries over 2 s: the reads, the windows) where a person watches; log lines otherwise
    show = sys.stderr.isatty()
    con.execute(f"SET enable_progress_bar = {str(show).lower()}")
    con.execute(f"SET enable_progress_bar_print = {str(show).lower()}")
    return con


def _took(t0: float) -> str:
    """Seconds since ``t0`` and the process's peak memory so far, for the progress lines."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    return f"{time.perf_counter() - t0:.1f} s, peak memory {peak / 2**30:.2f} GB"


def _quote(text: str) -> str:
    return text.replace("'", "''")


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


# ----------------------------------------------------------------------------- sources


@dataclass
class Source:
    """What a source gives the plan: tables ``raw_inter`` and ``raw_items`` in the connection, and a way to
    build the canonical item rows of the items that are kept."""

    record: dict[str, Any]  # meta.json's "source": name, files
    # (the connection, kept ids in their final order) -> their canonical item rows
    load_items: Callable[[duckdb.DuckDBPyConnection, list[str]], pd.DataFrame]
    users: pd.DataFrame | None = None


def open_source(con: duckdb.DuckDBPyConnection, cfg: PrepareConfig) -> Source:
    """Read ``cfg.dataset``'s files into ``raw_inter`` (pos, user_id, item_id, ts, rating, label) and
    ``raw_items`` (item_id, image, description; image/description only where a filter needs them)."""
    from llmrec.data.importers.amazon import LAYOUTS

    layout = LAYOUTS.get(cfg.dataset)
    if layout is not None:
        return _json_lines_source(con, cfg, layout)
    raw = get_importer(cfg.dataset)(cfg)
    return _frames_source(con, raw.interactions, raw.items, raw.source, raw.users)


def _frames_source(
    con: duckdb.DuckDBPyConnection,
    interactions: pd.DataFrame,
    items: pd.DataFrame,
    record: dict[str, Any],
    users: pd.DataFrame | None = None,
) -> Source:
    """Hand an importer's canonical tables to DuckDB (the source's row order becomes ``pos``)."""
    _load_interactions(con, interactions)
    _load(con, "raw_items", pa.Table.from_pandas(items[["item_id", "image", "description"]]))
    canonical = items.set_index("item_id")
    return Source(record=record, load_items=lambda _, ids: canonical.loc[ids].reset_index(), users=users)


def _load_interactions(con: duckdb.DuckDBPyConnection, interactions: pd.DataFrame) -> None:
    inter = pa.table(
        {
            "pos": np.arange(len(interactions), dtype=np.int64),
            "user_id": interactions["user_id"].to_numpy(dtype=object),
            "item_id": interactions["item_id"].to_numpy(dtype=object),
            "ts": interactions["timestamp"].to_numpy(dtype=np.int64),
            # NaN (absent) -> NULL, as pyarrow writes pandas' NaN
            "rating": pa.array(interactions["rating"].to_numpy(dtype=np.float64), from_pandas=True),
            "label": pa.array(interactions["label"].to_numpy(dtype=np.float64), from_pandas=True),
        }
    )
    _load(con, "raw_inter", inter)


def _load(con: duckdb.DuckDBPyConnection, name: str, table: pa.Table) -> None:
    con.register(f"{name}_arrow", table)
    con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS SELECT * FROM {name}_arrow")
    con.unregister(f"{name}_arrow")


def _compression(path: Path) -> str:
    with open(path, "rb") as f:
        return "gzip" if f.read(2) == b"\x1f\x8b" else "none"


def _json_lines_source(con: duckdb.DuckDBPyConnection, cfg: PrepareConfig, layout: ReviewsLayout) -> Source:
    import duckdb

    reviews, meta = layout.paths(cfg)
    record = layout.source_record(reviews, meta)
    t0 = time.perf_counter()
    try:
        odd = _read_reviews(con, reviews, layout)
    except duckdb.Error as e:
        odd = f"DuckDB could not read it ({_first_line(e)})"
    if odd:
        # The line reader names the bad line and field, or reads what DuckDB cannot (Python-literal lines).
        log.info("%s: %s; reading it line by line", reviews, odd)
        _load_interactions(con, layout.read_reviews(reviews))
    n = con.execute("SELECT COUNT(*) FROM raw_inter").fetchall()[0][0]
    log.info("read %s reviews from %s (%s)", f"{n:,}", reviews, _took(t0))
    t0 = time.perf_counter()
    need_full_items = cfg.require_image or cfg.require_description
    try:
        odd = "" if need_full_items else _read_meta_ids(con, meta, layout)
    except duckdb.Error as e:
        odd = f"DuckDB could not read it ({_first_line(e)})"
    if need_full_items or odd:
        if odd:
            log.info("%s: %s; reading it line by line", meta, odd)
        items = layout.read_meta(meta)
        _load(con, "raw_items", pa.Table.from_pandas(items[["item_id", "image", "description"]]))
        canonical = items.set_index("item_id")
        load_items = lambda _, ids: canonical.loc[ids].reset_index()  # noqa: E731
    else:
        load_items = lambda cursor, ids: _kept_items(cursor, meta, layout, ids)  # noqa: E731
    n = con.execute("SELECT COUNT(*) FROM raw_items").fetchall()[0][0]
    log.info("read %s item ids from %s (%s)", f"{n:,}", meta, _took(t0))
    return Source(record=record, load_items=load_items)


def _read_json(path: Path, columns: list[str]) -> str:
    spec = ", ".join(f"'{_quote(c)}': 'VARCHAR'" for c in dict.fromkeys(columns))
    return (
        f"read_json('{_quote(str(path))}', format = 'newline_delimited', compression = '{_compression(path)}', "
        f"columns = {{{spec}}})"
    )


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _read_reviews(con: duckdb.DuckDBPyConnection, path: Path, layout: ReviewsLayout) -> str:
    """Create ``raw_inter`` from a reviews file; returns why the line reader must read it instead ("" if not).

    One pass: each row is converted and flagged ``odd`` when outside the strict form the columnar reader
    accepts (non-empty ids, integral unix times of at most 15 digits, ratings that are numbers or absent):
    where DuckDB's casts and Python's conversions could disagree, the line reader decides."""
    user, ts, rating = (_ident(k) for k in (layout.user_key, layout.time_key, layout.rating_key))
    item = "COALESCE(" + ", ".join(f"NULLIF({_ident(k)}, '')" for k in layout.item_keys) + ")"
    columns = [layout.user_key, *layout.item_keys, layout.time_key, layout.rating_key]
    con.execute(
        "CREATE OR REPLACE TEMP TABLE raw_inter AS SELECT ROW_NUMBER() OVER () - 1 AS pos, "
        f"{user} AS user_id, {item} AS item_id, "
        f"TRY_CAST({ts} AS BIGINT) // {int(layout.time_divisor)} AS ts, "
        f"CASE WHEN {rating} = '' THEN NULL ELSE TRY_CAST({rating} AS DOUBLE) END AS rating, "
        "CAST(NULL AS DOUBLE) AS label, "
        f"({user} IS NULL OR {user} = '' OR {item} IS NULL OR {ts} IS NULL "
        f"OR NOT regexp_full_match({ts}, '[0-9]{{1,15}}') OR ({rating} IS NOT NULL AND {rating} <> '' "
        f"AND (TRY_CAST({rating} AS DOUBLE) IS NULL OR isinf(TRY_CAST({rating} AS DOUBLE))))) AS odd "
        f"FROM {_read_json(path, columns)}"
    )
    bad = con.execute("SELECT COUNT(*) FROM raw_inter WHERE odd").fetchall()[0][0]
    if bad:
        con.execute("DROP TABLE raw_inter")
        return f"{bad:,} rows outside the strict form the columnar reader accepts"
    return ""


def _meta_item_id(layout: ReviewsLayout) -> str:
    """A metadata record's item id in SQL: ``str(rec.get(k1) or rec.get(k2) or "")`` for string ids."""
    return "COALESCE(" + ", ".join(f"NULLIF(json ->> '$.{k}', '')" for k in layout.meta_id_keys) + ")"


def _meta_objects(path: Path) -> str:
    return (
        f"read_json_objects('{_quote(str(path))}', format = 'newline_delimited', "
        f"compression = '{_compression(path)}')"
    )


def _read_meta_ids(con: duckdb.DuckDBPyConnection, path: Path, layout: ReviewsLayout) -> str:
    """Create ``raw_items`` (the distinct item ids) from a metadata file; "" or why the line reader must
    read it (an id missing or not a string, a reviews file given as metadata)."""
    odd_id = " OR ".join(f"json_type(json, '$.{k}') NOT IN ('VARCHAR', 'NULL')" for k in layout.meta_id_keys)
    item = _meta_item_id(layout)
    _bind(
        con,
        "meta_ids",
        f"SELECT {item} AS item_id, ({item} IS NULL OR json_exists(json, '$.{layout.user_key}') OR {odd_id}) "
        f"AS odd FROM {_meta_objects(path)}",
    )
    bad = con.execute("SELECT COUNT(*) FROM meta_ids WHERE odd").fetchall()[0][0]
    if not bad:
        _bind(con, "raw_items", "SELECT DISTINCT item_id FROM meta_ids")
    con.execute("DROP TABLE meta_ids")
    return f"{bad:,} records without a string item id, or with a review's field" if bad else ""


def _kept_items(
    con: duckdb.DuckDBPyConnection, path: Path, layout: ReviewsLayout, ids: list[str]
) -> pd.DataFrame:
    """Canonical rows of the kept items, in the order of ``ids``: the first record of each parsed as the
    line reader parses it (records of other items are never parsed)."""
    from llmrec.data.importers.amazon import parse_record

    _load(con, "kept_ids", pa.table({"item_id": pa.array(ids, pa.string())}))
    item = _meta_item_id(layout)
    # A filtered scan streams in file order (preserve_insertion_order): the first record of an id comes first.
    reader = con.sql(
        f"SELECT {item} AS item_id, json FROM {_meta_objects(path)} WHERE {item} IN (SELECT item_id FROM kept_ids)"
    ).to_arrow_reader(65_536)
    rows: dict[str, tuple[str, ...]] = {}  # canonical rows only: a record's parsed dict is dropped at once
    bar = tqdm(total=len(ids), desc="item metadata", unit=" items", disable=None)
    for batch in reader:
        for item_id, line in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist()):
            if item_id not in rows:
                rows[item_id] = item_row(
                    layout.to_item(parse_record(line, path, len(rows) + 1)), str(path), 0
                )
        bar.update(batch.num_rows)
    bar.close()
    con.execute("DROP TABLE kept_ids")
    return pd.DataFrame([rows.pop(i) for i in ids], columns=ITEM_COLUMNS)


# ----------------------------------------------------------------------------- the plan


def _counts(con: duckdb.DuckDBPyConnection, table: str) -> dict[str, int]:
    users, items, n = con.execute(plan.counts(table)).fetchall()[0]
    return {"users": int(users), "items": int(items), "interactions": int(n)}


def _bind(con: duckdb.DuckDBPyConnection, name: str, sql: str) -> None:
    con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS {sql}")


def filter_interactions(con: duckdb.DuckDBPyConnection, cfg: PrepareConfig, files: list[str]) -> tuple:
    """Run the filters of :func:`llmrec.data.processing.process` into table ``kept``; returns (raw counts,
    filter records) as the pandas path records them."""
    counts_raw = _counts(con, "raw_inter")
    counts_raw["items_with_metadata"] = con.execute("SELECT COUNT(*) FROM raw_items").fetchall()[0][0]
    if counts_raw["interactions"] == 0:
        raise LlmrecError(
            "no interactions in the input", file=files[0] if files else None, hint="check --path"
        )
    _encode_ids(con)
    filters: list[dict[str, Any]] = []
    current = "raw_inter"

    def record(name: str, table: str, t0: float) -> None:
        """Note a filter that turned ``current`` into ``table`` (dropped: only the newest table is kept)."""
        nonlocal current
        before = con.execute(f"SELECT COUNT(*) FROM {current}").fetchall()[0][0]
        after = _counts(con, table)
        filters.append({"step": name, "interactions_removed": int(before - after["interactions"]), **after})
        log.info("%s: %s interactions left (%s)", name, f"{after['interactions']:,}", _took(t0))
        con.execute(f"DROP TABLE {current}")
        current = table

    def step(name: str, sql: str, table: str) -> None:
        t0 = time.perf_counter()
        _bind(con, table, sql)
        record(name, table, t0)

    step(
        "drop interactions with items missing from the metadata",
        plan.known_items(current, "raw_items"),
        "known",
    )
    if filters[-1]["interactions"] == 0 and len(files) > 1:
        raise no_known_items(counts_raw["items_with_metadata"], counts_raw["items"], files)
    if cfg.require_image:
        sql = plan.known_items(current, "(SELECT item_id FROM raw_items WHERE image <> '') with_image")
        step("drop items without an image reference", sql, "with_image")
    if cfg.require_description:
        sql = plan.known_items(current, "(SELECT item_id FROM raw_items WHERE description <> '') described")
        step("drop items without a description", sql, "described")
    if cfg.dedupe:
        step("keep the first of repeated (user, item) pairs", plan.first_of_duplicates(current), "deduped")
    ku = max(cfg.kcore, cfg.min_user_len)
    t0 = time.perf_counter()
    _kcore(con, current, cfg.kcore, ku, "cored")
    record(f"iterative {cfg.kcore}-core (users >= {ku})", "cored", t0)
    if cfg.max_users is not None and filters[-1]["users"] > cfg.max_users:
        codes = _first_seen(con, current, "user")
        rng = np.random.default_rng(cfg.seed)
        chosen = rng.choice(natural_order(codes.index.to_series()), size=cfg.max_users, replace=False)
        _load(con, "sampled_users", pa.table({"user_id": codes.loc[chosen].to_numpy()}))
        t0 = time.perf_counter()
        _bind(con, "sampled", f"SELECT * FROM {current} WHERE user_id IN (SELECT user_id FROM sampled_users)")
        _kcore(con, "sampled", cfg.kcore, ku, "sampled_cored")
        record(f"sample {cfg.max_users} users (seed {cfg.seed}) and re-apply k-core", "sampled_cored", t0)
        con.execute("DROP TABLE sampled")
    con.execute(f"ALTER TABLE {current} RENAME TO kept")
    if filters[-1]["interactions"] == 0:
        raise nothing_left(filters, files)
    return counts_raw, filters


def _kcore(con: duckdb.DuckDBPyConnection, table: str, k: int, ku: int, name: str) -> None:
    """Repeat the k-core round on ``table`` until it removes nothing, into a new table ``name``."""
    n = con.execute(f"SELECT COUNT(*) FROM {table}").fetchall()[0][0]
    source = table
    for round_ in range(1, 1_000_000):
        _bind(con, f"{name}_next", plan.kcore_round(source, ku, k))
        left = con.execute(f"SELECT COUNT(*) FROM {name}_next").fetchall()[0][0]
        log.info("k-core round %d: %s interactions left (%s removed)", round_, f"{left:,}", f"{n - left:,}")
        if source != table:
            con.execute(f"DROP TABLE {source}")
        con.execute(f"ALTER TABLE {name}_next RENAME TO {name}")
        source, n_before, n = name, n, left
        if left == n_before:
            return


def _encode_ids(con: duckdb.DuckDBPyConnection) -> None:
    """Give users and items integer codes (``user_codes``, ``item_codes``: id -> code) and put the codes in
    place of the ids in ``raw_inter`` and ``raw_items``: de-duplication, k-core and the windows then hash
    and sort 4-byte keys instead of strings (twice as fast at 10M reviews, and less memory)."""
    for kind in ("user", "item"):
        _bind(
            con,
            f"{kind}_codes",
            f"SELECT {kind}_id AS id, CAST(ROW_NUMBER() OVER () AS INTEGER) AS code "
            f"FROM (SELECT DISTINCT {kind}_id FROM raw_inter) ids",
        )
    _bind(
        con,
        "raw_coded",
        "SELECT r.pos, u.code AS user_id, i.code AS item_id, r.ts, r.rating, r.label FROM raw_inter r "
        "JOIN user_codes u ON r.user_id = u.id JOIN item_codes i ON r.item_id = i.id",
    )
    _bind(  # items that no review names cannot pass the filters: they need no code
        con,
        "items_coded",
        "SELECT i.code AS item_id, m.* EXCLUDE (item_id) FROM raw_items m JOIN item_codes i ON m.item_id = i.id",
    )
    for table in ("raw_inter", "raw_items"):
        con.execute(f"DROP TABLE {table}")
    con.execute("ALTER TABLE raw_coded RENAME TO raw_inter")
    con.execute("ALTER TABLE items_coded RENAME TO raw_items")


def _first_seen(con: duckdb.DuckDBPyConnection, table: str, kind: str) -> pd.Series:
    """``kind`` (user or item) ids of ``table`` -> their codes, in the order the ids first appear in the
    source (the order pandas' ``unique`` gives the pandas path)."""
    arrow = con.sql(
        f"SELECT c.id, c.code FROM (SELECT {kind}_id, MIN(pos) AS first FROM {table} GROUP BY {kind}_id) t "
        f"JOIN {kind}_codes c ON t.{kind}_id = c.code ORDER BY t.first"
    ).to_arrow_table()
    return pd.Series(arrow.column(1).to_numpy(), index=pd.Index(arrow.column(0).to_pylist(), dtype=object))


# ----------------------------------------------------------------------------- indexing, splitting, writing


def write_query(con: duckdb.DuckDBPyConnection, sql: str, path: Path) -> int:
    """Stream a query's rows into ``path`` exactly as ``DataFrame.to_parquet(path, index=False)`` would write
    the same rows held in pandas (same schema and pandas metadata, same row groups); returns the row count.

    The schema is learned by converting the first rows through pandas; every batch is then cast to it.
    """
    reader = con.sql(sql).to_arrow_reader(ROW_GROUP)
    pending: list[pa.RecordBatch] = []
    writer, schema, n, total = None, None, 0, 0
    try:
        for batch in reader:
            if schema is None:
                sample = pa.Table.from_batches([batch.slice(0, _SAMPLE)]).to_pandas()
                schema = pa.Schema.from_pandas(sample, preserve_index=False)
                writer = pq.ParquetWriter(path, schema)
            pending.append(batch)
            n += batch.num_rows
            while n >= ROW_GROUP:
                table = pa.Table.from_batches(pending)
                writer.write_table(_one_chunk(table.slice(0, ROW_GROUP), schema))
                rest = table.slice(ROW_GROUP)
                pending, n = rest.to_batches(), rest.num_rows
                total += ROW_GROUP
        if schema is None:  # no rows: pandas writes what it infers from an empty frame
            reader.schema.empty_table().to_pandas().to_parquet(path, index=False)
            return 0
        if n:
            writer.write_table(_one_chunk(pa.Table.from_batches(pending), schema))
            total += n
    finally:
        if writer is not None:
            writer.close()
    return total


def _one_chunk(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` cast to ``schema`` in one chunk per column: the writer's pages and dictionary fallback
    follow the chunks it is given, and pandas hands it one."""
    return table.cast(schema).combine_chunks()


def _index(con: duckdb.DuckDBPyConnection, kind: str) -> np.ndarray:
    """Number the kept users or items in :func:`~llmrec.data.steps.natural_order` into table
    ``<kind>_index`` (code, id, idx); returns the ids in index order."""
    codes = _first_seen(con, "kept", kind)
    ids = natural_order(codes.index.to_series())
    _load(
        con,
        f"{kind}_index",
        pa.table(
            {
                "code": codes.loc[ids].to_numpy(),
                "id": pa.array(ids.tolist(), pa.string()),
                "idx": np.arange(len(ids), dtype=np.int32),
            }
        ),
    )
    return ids


def finalize(
    con: duckdb.DuckDBPyConnection,
    cfg: PrepareConfig,
    source: Source,
    counts_raw: dict[str, int],
    filters: list[dict[str, Any]],
    out: Path,
) -> dict[str, Any]:
    """Write the dataset's tables for the interactions in ``kept`` into ``out``; returns the meta record
    (the counterpart of :func:`llmrec.data.processing.finalize`, which holds everything in pandas)."""
    t0 = time.perf_counter()
    user_ids = _index(con, "user")
    item_ids = _index(con, "item")
    _bind(
        con,
        "inter",
        "SELECT u.id AS user_id, i.id AS item_id, p.ts, p.rating, p.label, p.seq_pos, u.idx AS user_idx, "
        f"i.idx AS item_idx FROM ({plan.leave_one_out('kept')}) p "
        "JOIN user_index u ON p.user_id = u.code JOIN item_index i ON p.item_id = i.code",
    )
    con.execute("DROP TABLE kept")
    log.info("indexed %s users and %s items (%s)", f"{len(user_ids):,}", f"{len(item_ids):,}", _took(t0))
    for table in ("user_codes", "item_codes", "raw_items"):  # what indexing needed; DuckDB reuses the memory
        con.execute(f"DROP TABLE IF EXISTS {table}")
    # One step at a time: the item parse (Python) beside DuckDB's windows was 4% faster at 10M reviews
    # but raised the peak memory by a third.
    t0 = time.perf_counter()
    source.load_items(con, item_ids.tolist()).to_parquet(out / "items.parquet", index=False)
    log.info("wrote the item table (%s)", _took(t0))
    meta = _write_interactions(con, cfg, source, user_ids, len(item_ids), out, filters)
    meta.update(source=source.record, counts_raw=counts_raw, filters=filters)
    return meta


def _write_interactions(
    con: duckdb.DuckDBPyConnection,
    cfg: PrepareConfig,
    source: Source,
    user_ids: np.ndarray,
    n_items: int,
    out: Path,
    filters: list[dict[str, Any]],
) -> dict[str, Any]:
    """Interactions, sequences, users, CTR examples and evaluation negatives; returns their meta fields
    (``filters``: the filter records, for the advice when a user has too few negatives)."""
    t0 = time.perf_counter()
    write_query(
        con,
        "SELECT user_id, item_id, ts AS timestamp, rating, label, user_idx, item_idx FROM inter "
        "ORDER BY user_idx, seq_pos",
        out / "interactions.parquet",
    )
    write_query(
        con,
        "SELECT user_idx, ANY_VALUE(user_id) AS user_id, LIST(item_idx ORDER BY seq_pos) AS items, "
        "LIST(ts ORDER BY seq_pos) AS timestamps FROM inter GROUP BY user_idx ORDER BY user_idx",
        out / "sequences.parquet",
    )
    log.info("wrote interactions and sequences (%s)", _took(t0))
    users = pd.DataFrame({"user_id": user_ids})
    if source.users is not None and "user_id" in source.users.columns:
        side = source.users.astype({"user_id": str}).drop_duplicates("user_id").set_index("user_id")
        users = users.join(side, on="user_id")
    users.to_parquet(out / "users.parquet", index=False)
    meta: dict[str, Any] = {
        "source": None,  # filled in by finalize, in this order
        "counts_raw": None,
        "filters": None,
        "counts": _counts(con, "inter"),
        **split_record(cfg),
    }
    t0 = time.perf_counter()
    ctr = ctr_tables(con, cfg, out / "ctr")
    if ctr is not None:
        meta["ctr"] = ctr
        log.info("wrote CTR examples (%s)", _took(t0))
    t0 = time.perf_counter()
    flat = con.sql("SELECT item_idx FROM inter ORDER BY user_idx, seq_pos").to_arrow_table().column(0)
    lengths = con.sql("SELECT COUNT(*) FROM inter GROUP BY user_idx ORDER BY user_idx").to_arrow_table()
    sequences = np.split(
        flat.to_numpy().astype(np.int32, copy=False), np.cumsum(lengths.column(0).to_numpy())[:-1]
    )
    rng = np.random.default_rng(cfg.seed)
    (out / "eval").mkdir()
    hint = prepare_negatives_hint(cfg, filters)
    for split in ("valid", "test"):
        negatives = sample_negatives(sequences, n_items, cfg.num_negatives, rng, hint, user_ids)
        np.save(out / "eval" / f"{split}_negatives.npy", negatives, allow_pickle=False)
    del sequences, flat
    log.info("sampled evaluation negatives (%s)", _took(t0))
    return meta


def ctr_tables(con: duckdb.DuckDBPyConnection, cfg: PrepareConfig, out: Path) -> dict[str, Any] | None:
    """CTR examples of :func:`llmrec.data.steps.ctr_examples` as window functions, written per split;
    returns their meta record (None for implicit feedback, which has no labels)."""
    has_label, has_rating = con.execute("SELECT COUNT(label) > 0, COUNT(rating) > 0 FROM inter").fetchall()[0]
    if cfg.ctr_sampled_negatives:  # seeded draws per example, in order: the pandas path's loop decides
        return _ctr_with_sampled_negatives(con, cfg, out)
    if not has_label and not has_rating:
        return None
    if has_label:  # int(label) and liked = (label == 1), as the pandas path reads a source's labels
        label, liked = "CAST(trunc(label) AS TINYINT)", "label = 1"
    else:
        label = f"CAST(CASE WHEN rating >= {float(cfg.like_threshold)!r} THEN 1 ELSE 0 END AS TINYINT)"
        liked = f"rating >= {float(cfg.like_threshold)!r}"
    # n_liked = liked rows before the row; n_before = the likes its history may hold: n_liked, or (by time) those
    # of strictly earlier times. The history: liked rows with n_liked in [n_before - L, n_before - 1].
    length = int(cfg.ctr_history_len)
    count = "SUM(CASE WHEN liked THEN 1 ELSE 0 END) OVER (PARTITION BY user_idx"  # a window, closed below
    by_time = f"COALESCE({count} ORDER BY ts RANGE BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0)"
    n_before = by_time if cfg.ctr_history_before == "time" else "n_liked"
    _bind(
        con,
        "ctr_rows",
        "SELECT user_idx, target, label, timestamp, history, "
        "ROW_NUMBER() OVER (ORDER BY timestamp, user_idx, target, seq_pos) AS g FROM ("
        "SELECT user_idx, item_idx AS target, label, ts AS timestamp, seq_pos, n_before, "
        "COALESCE(LIST(item_idx) FILTER (WHERE liked) OVER (PARTITION BY user_idx ORDER BY n_liked "
        f"RANGE BETWEEN n_liked - n_before + {length} PRECEDING AND n_liked - n_before + 1 PRECEDING), "
        "[]::INTEGER[]) AS history "
        f"FROM (SELECT *, {n_before} AS n_before FROM ("
        f"SELECT *, COALESCE({count} ORDER BY seq_pos ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) "
        "AS n_liked FROM ("
        f"SELECT user_idx, item_idx, ts, seq_pos, {label} AS label, COALESCE({liked}, false) AS liked "
        f"FROM inter) labelled) counted) anchored) examples WHERE n_before >= {int(cfg.ctr_min_history)}",
    )
    n = con.execute("SELECT COUNT(*) FROM ctr_rows").fetchall()[0][0]
    a = int(round(cfg.ctr_split[0] * n))
    b = int(round((cfg.ctr_split[0] + cfg.ctr_split[1]) * n))
    out.mkdir()
    record = {}
    for split, where in (("train", f"g <= {a}"), ("valid", f"g > {a} AND g <= {b}"), ("test", f"g > {b}")):
        write_query(
            con,
            "SELECT user_idx, target, label, timestamp, CAST(history AS INTEGER[]) AS history "
            f"FROM ctr_rows WHERE {where} ORDER BY g",
            out / f"{split}.parquet",
        )
        examples, positives = con.execute(
            f"SELECT COUNT(*), COALESCE(SUM(label), 0) FROM ctr_rows WHERE {where}"
        ).fetchall()[0]
        record[split] = {"examples": int(examples), "positives": int(positives)}
    return record


def _ctr_with_sampled_negatives(con: duckdb.DuckDBPyConnection, cfg: PrepareConfig, out: Path) -> dict | None:
    inter = con.execute(
        "SELECT user_idx, item_idx, ts AS timestamp, rating, label FROM inter ORDER BY user_idx, seq_pos"
    ).df()
    ctr = ctr_examples(inter, cfg)
    if ctr is None:
        return None
    out.mkdir()
    record = {}
    for split in ("train", "valid", "test"):
        part = ctr.loc[ctr["split"] == split]
        part.drop(columns="split").to_parquet(out / f"{split}.parquet", index=False)
        record[split] = {"examples": len(part), "positives": int(part["label"].sum())}
    return record


def out_of_memory(e: Exception, cfg: PrepareConfig) -> Exception:
    """DuckDB's out-of-memory error as llmrec's line: the limit it ran under and what to change, or, when
    it could not spill (the disk under the output folder is full), a disk-full error naming that folder."""
    if "offload" in str(e) or "max_temp_directory_size" in str(e):
        return OSError(
            errno.ENOSPC,
            "no space left on device for DuckDB's spill files (the data beyond its memory limit)",
            str(cfg.out_dir),
        )
    limit = (
        f"under --memory-limit {cfg.memory_limit}"
        if cfg.memory_limit
        else "at DuckDB's default limit (80% of the RAM)"
    )
    hint = (
        "raise --memory-limit (e.g. 2GB), or use --engine pandas"
        if cfg.memory_limit
        else "give --threads 1, or free some memory and re-run"
    )
    return LlmrecError(f"DuckDB ran out of memory {limit} ({_first_line(e)})", hint=hint)


def prepare_columnar(cfg: PrepareConfig, out: Path) -> dict[str, Any]:
    """Import, filter and split ``cfg``'s source with DuckDB, writing the dataset's entries into ``out``
    (a fresh temp folder); returns the meta record. DuckDB spills into ``out/.spill``."""
    import duckdb

    con = connect(cfg.memory_limit, out / ".spill", cfg.threads)
    try:
        source = open_source(con, cfg)
        files = [str(f) for f in source.record.get("files") or [cfg.dataset]]
        try:
            counts_raw, filters = filter_interactions(con, cfg, files)
            return finalize(con, cfg, source, counts_raw, filters, out)
        except LlmrecError as e:  # what filtering or splitting found: say which input it came from
            raise from_input(e, files) from None
    except duckdb.OutOfMemoryException as e:  # every query runs in here: the one place to say it
        raise out_of_memory(e, cfg) from e
    finally:
        con.close()
        shutil.rmtree(out / ".spill", ignore_errors=True)
