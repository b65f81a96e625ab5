"""The SQL plan of ``llmrec prepare`` (:mod:`llmrec.data.plan`) runs unchanged beyond DuckDB.

Always run (CI): every plan statement reads the same under sqlglot's Spark and DuckDB dialects, with no
function sqlglot does not know and no quoted name; the Spark text sqlglot writes for it, read back, returns in
DuckDB exactly the rows of the original; and the plan driven alone (known items, first of duplicates, k-core
rounds to the fixed point, leave-one-out) computes what the pandas path (:func:`llmrec.data.processing.kcore`)
computes. Where pyspark is installed (it is not in CI: a 456 MB download), the same text runs through
``spark.sql`` in local mode and returns DuckDB's rows.
"""

from __future__ import annotations

import inspect
import os
import shutil
from collections.abc import Callable

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import sqlglot
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlglot import exp

from llmrec.data import plan
from llmrec.data.processing import kcore

COLUMNS = ["pos", "user_id", "item_id", "ts", "rating", "label"]
ARROW_SCHEMA = pa.schema(
    [
        ("pos", pa.int64()),
        ("user_id", pa.string()),
        ("item_id", pa.string()),
        ("ts", pa.int64()),
        ("rating", pa.float64()),
        ("label", pa.float64()),
    ]
)
ITEMS_SCHEMA = pa.schema([("item_id", pa.string()), ("image", pa.string()), ("description", pa.string())])


def small_tables() -> tuple[list[tuple], list[tuple]]:
    """(interactions, items) rows: ties in time within a user, repeated (user, item) pairs (one repeated at the
    same time), users and items under k, an item without metadata, one without an image, a NULL time, NULL
    ratings, and a k-core that takes several rounds."""
    rows = [
        # u1: a long history, one pair repeated (i2 at 20 and 15), a tie at 30
        ("u1", "i1", 10),
        ("u1", "i2", 20),
        ("u1", "i3", 30),
        ("u1", "i4", 30),
        ("u1", "i2", 15),
        ("u1", "i5", 40),
        ("u1", "i6", 50),
        # u2: a pair repeated at the same time (the first in the source wins), ties throughout
        ("u2", "i1", 5),
        ("u2", "i3", 5),
        ("u2", "i3", 5),
        ("u2", "i4", 7),
        ("u2", "i5", 7),
        ("u2", "i2", 9),
        # u3: an item without metadata (i9) and the only reader of i7
        ("u3", "i1", 100),
        ("u3", "i9", 101),
        ("u3", "i7", 102),
        ("u3", "i2", 103),
        ("u3", "i4", 104),
        # u4: under k from the start
        ("u4", "i1", 1),
        # u5: three interactions, one of them on i7 (under k): leaves in the second round
        ("u5", "i7", 3),
        ("u5", "i2", 3),
        ("u5", "i8", 4),
        # u6: a NULL time (DuckDB sorts NULLs last by default, Spark first: the plan must say which)
        ("u6", "i1", 60),
        ("u6", "i2", None),
        ("u6", "i3", 61),
        ("u6", "i5", 59),
        ("u6", "i6", 61),
    ]
    inter = [
        (pos, user, item, ts, None if pos % 7 == 3 else float(1 + pos % 5), float(pos % 2))
        for pos, (user, item, ts) in enumerate(rows)
    ]
    items = [(f"i{i}", "" if i == 6 else f"img{i}.jpg", f"item {i}") for i in range(1, 9)]
    return inter, items


def plan_cases() -> list[tuple[str, str]]:
    """(plan function, statement) with representative arguments: every public function of the plan."""
    return [
        ("known_items", plan.known_items("inter", "items")),
        (
            "known_items",
            plan.known_items("inter", "(SELECT item_id FROM items WHERE image <> '') with_image"),
        ),
        ("first_of_duplicates", plan.first_of_duplicates("inter")),
        ("kcore_round", plan.kcore_round("inter", 3, 2)),
        ("kcore_round", plan.kcore_round("inter", 5, 1)),
        ("leave_one_out", plan.leave_one_out("inter")),
        ("counts", plan.counts("inter")),
    ]


CASES = plan_cases()
CASE_IDS = [f"{name}-{i}" for i, (name, _) in enumerate(CASES)]


def test_every_plan_function_is_covered():
    public = {
        name
        for name, f in inspect.getmembers(plan, inspect.isfunction)
        if f.__module__ == plan.__name__ and not name.startswith("_")
    }
    assert public == {name for name, _ in CASES}


def sorted_rows(rows) -> list[tuple]:
    """Rows as tuples in a fixed order (SQL promises none)."""
    return sorted((tuple(r) for r in rows), key=repr)


# ----------------------------------------------------------------------------- DuckDB


class DuckEngine:
    """Binds plan results to temporary tables of an in-memory DuckDB."""

    def __init__(self, inter: list[tuple], items: list[tuple]) -> None:
        self.con = duckdb.connect()
        self.con.execute("SET threads = 1")
        self.load("inter", pa.Table.from_pylist([dict(zip(COLUMNS, r)) for r in inter], ARROW_SCHEMA))
        names = ITEMS_SCHEMA.names
        self.load("items", pa.Table.from_pylist([dict(zip(names, r)) for r in items], ITEMS_SCHEMA))

    def load(self, name: str, table: pa.Table) -> None:
        self.con.register(f"{name}_arrow", table)
        self.con.execute(f"CREATE TEMP TABLE {name} AS SELECT * FROM {name}_arrow")
        self.con.unregister(f"{name}_arrow")

    def bind(self, name: str, sql: str) -> int:
        self.con.execute(f"CREATE TEMP TABLE {name} AS {sql}")
        return self.con.execute(f"SELECT COUNT(*) FROM {name}").fetchall()[0][0]

    def rows(self, sql: str) -> list[tuple]:
        return sorted_rows(self.con.execute(sql).fetchall())


def drive(engine, k: int, min_user_len: int = 0, dedupe: bool = True) -> list[tuple]:
    """The relational part of ``llmrec prepare`` from the plan's functions alone, as a user would drive it on any
    engine: known items, first of repeated pairs, k-core rounds until one removes nothing, leave-one-out."""
    ku = max(k, min_user_len)
    n = engine.bind("known", plan.known_items("inter", "items"))
    current = "known"
    if dedupe:
        n = engine.bind("deduped", plan.first_of_duplicates(current))
        current = "deduped"
    for round_ in range(1, 1000):
        left = engine.bind(f"cored_{round_}", plan.kcore_round(current, ku, k))
        current = f"cored_{round_}"
        if left == n:
            break
        n = left
    return engine.rows(plan.leave_one_out(current))


@pytest.fixture(scope="module")
def duck() -> DuckEngine:
    return DuckEngine(*small_tables())


def test_the_small_table_exercises_the_plan(duck):
    inter, items = small_tables()
    assert duck.bind("t_known", plan.known_items("inter", "items")) == len(inter) - 1
    assert duck.bind("t_dedup", plan.first_of_duplicates("inter")) == len(inter) - 2
    # u2's repeated (i3, 5): the first in the source (pos 8) is kept; u1's (i2): the earlier time (pos 4)
    kept = {r[0] for r in duck.rows("SELECT pos FROM t_dedup")}
    assert {8, 4} <= kept and not {9, 1} & kept
    # the k-core (users >= 3, items >= 2) takes three rounds and a fourth that removes nothing: u4 and i8, then
    # u5 (down to two), then i7 (down to one reader)
    assert len(drive(duck, 2, 3)) == 19
    rounds = [duck.rows(f"SELECT COUNT(*) FROM cored_{r}")[0][0] for r in (1, 2, 3, 4)]
    assert rounds == [22, 20, 19, 19]
    assert "cored_5" not in {r[0] for r in duck.rows("SELECT table_name FROM duckdb_tables()")}
    # u6's NULL time sorts last: its last interaction (the test target)
    loo = {r[0]: r for r in duck.rows(plan.leave_one_out("inter"))}
    assert loo[23][-2:] == (5, "test")


# ----------------------------------------------------------------------------- engine-neutral text


@pytest.mark.parametrize(("name", "sql"), CASES, ids=CASE_IDS)
def test_text_reads_alike_in_spark_and_duckdb(name, sql):
    as_spark = sqlglot.parse_one(sql, read="spark")
    as_duckdb = sqlglot.parse_one(sql, read="duckdb")
    assert isinstance(as_spark, exp.Select)
    assert as_spark == as_duckdb, (as_spark.sql(), as_duckdb.sql())
    for tree in (as_spark, as_duckdb):
        assert not list(tree.find_all(exp.Anonymous)), "a function sqlglot does not know"
        assert not [i for i in tree.find_all(exp.Identifier) if i.quoted], "a quoted name"
    # the text needs no translation: what sqlglot writes for Spark reads back as the same statement
    spark_text = sqlglot.transpile(sql, read="duckdb", write="spark")[0]
    assert sqlglot.parse_one(spark_text, read="spark") == as_spark, spark_text
    duckdb_text = sqlglot.transpile(sql, read="duckdb", write="duckdb")[0]
    assert sqlglot.parse_one(duckdb_text, read="duckdb") == as_duckdb, duckdb_text


@pytest.mark.parametrize(("name", "sql"), CASES, ids=CASE_IDS)
def test_spark_text_returns_the_same_rows_in_duckdb(duck, name, sql):
    spark_text = sqlglot.transpile(sql, read="duckdb", write="spark")[0]
    back = sqlglot.transpile(spark_text, read="spark", write="duckdb")[0]
    expected = duck.rows(sql)
    assert expected
    assert duck.rows(back) == expected, back
    assert duck.rows(spark_text) == expected, spark_text  # the Spark text itself is DuckDB's too


# ----------------------------------------------------------------------------- the plan is the pandas path


def pandas_reference(inter: list[tuple], items: list[tuple], k: int, min_user_len: int) -> list[tuple]:
    """What :func:`llmrec.data.processing.process` and ``finalize`` do with the same rows (source order =
    ``pos``): known items, first of repeated pairs, :func:`kcore`, chronological order per user (stable)."""
    df = pd.DataFrame(sorted(inter), columns=["pos", "user_id", "item_id", "timestamp", "rating", "label"])
    df = df.loc[df["item_id"].isin([i[0] for i in items])].reset_index(drop=True)
    order = df.sort_values(["user_id", "timestamp"], kind="stable").index
    df = df.loc[order].drop_duplicates(["user_id", "item_id"], keep="first").sort_index()
    df = kcore(df, k, min_user_len)
    df = df.sort_values(["user_id", "timestamp"], kind="stable")
    seq_pos = df.groupby("user_id").cumcount().to_numpy() + 1
    seq_len = df.groupby("user_id")["user_id"].transform("size").to_numpy()
    split = np.where(seq_pos == seq_len, "test", np.where(seq_pos == seq_len - 1, "valid", "train"))
    return sorted_rows(
        (int(r.pos), r.user_id, r.item_id, int(r.timestamp), float(r.rating), float(r.label), int(p), str(s))
        for r, p, s in zip(df.itertuples(index=False), seq_pos, split)
    )


@st.composite
def tables(draw) -> tuple[list[tuple], list[tuple], int, int]:
    """Small interaction tables with many ties in time and repeated pairs, shuffled (SQL must not rely on the
    order rows are stored in), a catalog missing some items, and k / min_user_len."""
    n = draw(st.integers(0, 80))
    users = draw(st.lists(st.integers(0, 9), min_size=n, max_size=n))
    items = draw(st.lists(st.integers(0, 9), min_size=n, max_size=n))
    times = draw(st.lists(st.integers(0, 6), min_size=n, max_size=n))
    inter = [
        (pos, f"u{u}", f"i{i}", 1_000 + t, float(pos % 5), float(pos % 2))
        for pos, (u, i, t) in enumerate(zip(users, items, times))
    ]
    known = draw(st.sets(st.integers(0, 9), min_size=7))
    inter = draw(st.permutations(inter))
    return inter, [(f"i{i}", "", "") for i in sorted(known)], draw(st.integers(1, 4)), draw(st.integers(0, 5))


@settings(max_examples=60, deadline=None, derandomize=True)
@given(tables())
def test_the_plan_computes_what_pandas_computes(case):
    inter, items, k, min_user_len = case
    expected = pandas_reference(inter, items, k, min_user_len)
    assert drive(DuckEngine(inter, items), k, min_user_len) == expected


def test_the_plan_computes_what_pandas_computes_on_larger_tables():
    for seed in range(3):
        rng = np.random.default_rng(seed)
        n = 3_000
        inter = [
            (pos, f"u{u}", f"i{i}", int(t), float(pos % 5), 1.0)
            for pos, (u, i, t) in enumerate(
                zip(rng.zipf(1.6, n) % 300, rng.zipf(1.4, n) % 200, rng.integers(0, 50, n), strict=True)
            )
        ]
        items = [(f"i{i}", "", "") for i in range(0, 200) if i % 17]
        expected = pandas_reference(inter, items, 3, 5)
        assert len(expected) > 100
        assert drive(DuckEngine(inter[::-1], items), 3, 5) == expected


# ----------------------------------------------------------------------------- Spark (local mode)


class SparkEngine:
    """Binds plan results to temporary views of a Spark session. Each bound result is checkpointed: a k-core
    round reads its input three times, so without it the plan of round n would hold 3**n copies of the first."""

    def __init__(self, spark, inter: list[tuple], items: list[tuple]) -> None:
        self.spark = spark
        self.views: list[str] = []
        inter_schema = "pos BIGINT, user_id STRING, item_id STRING, ts BIGINT, rating DOUBLE, label DOUBLE"
        self.view("inter", spark.createDataFrame(inter, inter_schema))
        self.view("items", spark.createDataFrame(items, "item_id STRING, image STRING, description STRING"))

    def view(self, name: str, frame) -> None:
        frame.createOrReplaceTempView(name)
        self.views.append(name)

    def bind(self, name: str, sql: str) -> int:
        frame = self.spark.sql(sql).localCheckpoint()
        self.view(name, frame)
        return frame.count()

    def rows(self, sql: str) -> list[tuple]:
        return sorted_rows(self.spark.sql(sql).collect())

    def close(self) -> None:
        for name in self.views:
            self.spark.catalog.dropTempView(name)


def _has_java() -> bool:
    return shutil.which("java") is not None or bool(os.environ.get("JAVA_HOME"))


@pytest.fixture(scope="module")
def spark():
    pytest.importorskip(
        "pyspark",
        reason="pyspark is not installed (a 456 MB download, not in CI): the plan's text is checked "
        "engine-neutral above; `pip install pyspark` (and a Java runtime) runs it on Spark",
    )
    if not _has_java():
        pytest.skip("pyspark needs a Java runtime (java on PATH or JAVA_HOME)")
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[1]")
        .appName("llmrec-plan-engines")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.memory", "512m")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.sql.session.timeZone", "UTC")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture
def spark_engine(spark) -> Callable:
    made: list[SparkEngine] = []

    def make(inter: list[tuple], items: list[tuple]) -> SparkEngine:
        made.append(SparkEngine(spark, inter, items))
        return made[-1]

    yield make
    for engine in made:
        engine.close()


def test_spark_runs_each_statement_unchanged(duck, spark_engine):
    engine = spark_engine(*small_tables())
    for name, sql in CASES:
        assert engine.rows(sql) == duck.rows(sql), name


def test_spark_runs_the_whole_plan_as_duckdb_does(spark_engine):
    inter, items = small_tables()
    for k, min_user_len in ((2, 3), (1, 0), (3, 0)):
        expected = drive(DuckEngine(inter, items), k, min_user_len)
        assert drive(spark_engine(inter, items), k, min_user_len) == expected, (k, min_user_len)
    rng = np.random.default_rng(0)
    n = 2_000
    inter = [
        (pos, f"u{u}", f"i{i}", int(t), float(pos % 5), 1.0)
        for pos, (u, i, t) in enumerate(
            zip(rng.zipf(1.6, n) % 200, rng.zipf(1.4, n) % 150, rng.integers(0, 30, n), strict=True)
        )
    ]
    items = [(f"i{i}", "", "") for i in range(150) if i % 13]
    expected = drive(DuckEngine(inter, items), 3, 5)
    assert len(expected) > 100
    assert drive(spark_engine(inter, items), 3, 5) == expected
