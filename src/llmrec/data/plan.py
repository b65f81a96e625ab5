"""The relational steps of ``llmrec prepare`` as engine-neutral SQL: filters, de-duplication, k-core, leave-one-out.

Each function returns one ``SELECT`` over named tables, written in the subset of SQL that DuckDB and Spark SQL
read alike (``IN`` subqueries, ``GROUP BY ... HAVING``, ``ROW_NUMBER()``/``COUNT(*)`` windows; no dialect
functions, no quoted names; where NULLs sort is spelled out, as the engines' defaults differ: DuckDB puts them
last, Spark first). llmrec runs them on DuckDB (:mod:`llmrec.data.columnar`); on a cluster the same text runs
through ``spark.sql`` over temporary views (docs/how-to/spark.md). The driver of a plan binds each
result to a name (``CREATE TEMP TABLE name AS ...`` in DuckDB, ``createOrReplaceTempView`` in Spark) and
repeats :func:`kcore_round` until a round removes nothing. ``tests/test_plan_engines.py`` checks that the text
is engine-neutral, that it computes what the pandas path computes, and (where pyspark is installed) that Spark
returns DuckDB's rows.

The interaction tables hold ``pos`` (the row's position in the source: ties in time keep the source's order),
``user_id``, ``item_id``, ``ts`` (seconds), ``rating`` and ``label``.
"""

from __future__ import annotations

INTERACTION_COLUMNS = "pos, user_id, item_id, ts, rating, label"


def known_items(interactions: str, items: str) -> str:
    """Interactions whose item has a metadata record."""
    return f"SELECT {INTERACTION_COLUMNS} FROM {interactions} WHERE item_id IN (SELECT item_id FROM {items})"


def first_of_duplicates(interactions: str) -> str:
    """The earliest interaction of each repeated (user, item) pair; ties in time: the first in the source."""
    return (
        f"SELECT {INTERACTION_COLUMNS} FROM ("
        f"SELECT {INTERACTION_COLUMNS}, "
        "ROW_NUMBER() OVER (PARTITION BY user_id, item_id ORDER BY ts NULLS LAST, pos NULLS LAST) AS pair_rank "
        f"FROM {interactions}) ranked WHERE pair_rank = 1"
    )


def kcore_round(interactions: str, user_min: int, item_min: int) -> str:
    """One round of iterative k-core: keep interactions whose user has >= ``user_min`` and item >= ``item_min``.

    Both counts are taken on the round's input, as :func:`llmrec.data.processing.kcore` does; the fixed point
    reached by repeating the round is the same whatever the engine or the order of rows.
    """
    return (
        f"SELECT {INTERACTION_COLUMNS} FROM {interactions} "
        f"WHERE user_id IN (SELECT user_id FROM {interactions} GROUP BY user_id HAVING COUNT(*) >= {int(user_min)}) "
        f"AND item_id IN (SELECT item_id FROM {interactions} GROUP BY item_id HAVING COUNT(*) >= {int(item_min)})"
    )


def leave_one_out(interactions: str) -> str:
    """Each interaction's place in its user's chronological sequence (``seq_pos`` from 1) and its split:
    the last is the test target, the one before the validation target, the rest train."""
    return (
        f"SELECT {INTERACTION_COLUMNS}, seq_pos, "
        "CASE WHEN seq_pos = seq_len THEN 'test' WHEN seq_pos = seq_len - 1 THEN 'valid' ELSE 'train' END "
        "AS split FROM ("
        f"SELECT {INTERACTION_COLUMNS}, "
        "ROW_NUMBER() OVER (PARTITION BY user_id ORDER BY ts NULLS LAST, pos NULLS LAST) AS seq_pos, "
        "COUNT(*) OVER (PARTITION BY user_id) AS seq_len "
        f"FROM {interactions}) numbered"
    )


def counts(interactions: str) -> str:
    """Users, items and interactions of a table (one row)."""
    return f"SELECT COUNT(DISTINCT user_id), COUNT(DISTINCT item_id), COUNT(*) FROM {interactions}"
