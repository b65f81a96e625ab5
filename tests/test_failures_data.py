"""The data side under bad input and faults (issue #15): prepare never deletes what is not its own, a
damaged or wrong input file is one line naming file/row/field, and a killed prepare resumes to the same
bytes with no temp folders left behind."""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import llmrec
from conftest import file_bytes as _snapshot
from conftest import one_error_line, synthetic_tables
from llmrec.cli import main
from llmrec.data.dataset import Dataset
from llmrec.data.importers import ImportSpec, get_importer
from llmrec.data.processing import ProcessConfig, drop_items, finalize, write_dataset
from llmrec.data.schema import strip_html
from llmrec.errors import LlmrecError


@pytest.fixture(autouse=True)
def _crash_logs_in_tmp(tmp_path, monkeypatch):
    """A command that crashes here (exit 70) leaves its log under the test's folder, not in $HOME."""
    monkeypatch.setenv("LLMREC_CRASH_DIR", str(tmp_path / "crashes"))


def _one_error_line(capsys, command: str = "prepare") -> str:
    return one_error_line(capsys, command)


def _tables_csv(folder: Path, n_users: int = 30, n_items: int = 40) -> tuple[Path, Path]:
    """The synthetic interactions and items as the CSV files a user would hand to 'prepare table'."""
    items, inter = synthetic_tables(n_users=n_users, n_items=n_items)
    folder.mkdir(parents=True, exist_ok=True)
    inter[["user_id", "item_id", "timestamp"]].to_csv(folder / "good.csv", index=False)
    items[["item_id", "title"]].to_csv(folder / "items.csv", index=False)
    return folder / "good.csv", folder / "items.csv"


def _prepare(inter: Path, items: Path | None, out: Path, *extra: str) -> int:
    argv = [
        "prepare",
        "table",
        "--path",
        str(inter),
        "--out",
        str(out),
        "--kcore",
        "0",
        "--num-negatives",
        "5",
    ]
    return main(argv + (["--items-path", str(items)] if items else []) + list(extra))


DATASET_FILES = {"items.parquet", "interactions.parquet", "users.parquet", "sequences.parquet", "meta.json"}


# ----------------------------------------------------------------------------- item 1: nothing lost


def test_prepare_refuses_a_folder_that_is_not_a_dataset(tmp_path, capsys):
    victim = tmp_path / "victim"
    inter, items = _tables_csv(victim)
    (victim / "notes.txt").write_text("n\n")
    (victim / "sub").mkdir()
    before = _snapshot(victim)
    assert _prepare(inter, items, victim) == 2
    line = _one_error_line(capsys)
    assert str(victim) in line and "not an llmrec dataset" in line and "--overwrite" in line
    assert "good.csv" in line and "notes.txt" in line
    assert _snapshot(victim) == before and (victim / "sub").is_dir()


def test_prepare_overwrite_keeps_files_that_are_not_llmrecs(tmp_path):
    victim = tmp_path / "victim"
    inter, items = _tables_csv(victim)  # --out is the folder holding the input files
    (victim / "notes.txt").write_text("n\n")
    (victim / "sub").mkdir()
    (victim / "sub" / "mine.txt").write_text("mine\n")
    before = _snapshot(victim)
    assert _prepare(inter, items, victim, "--overwrite") == 0
    after = _snapshot(victim)
    assert all(after[k] == v for k, v in before.items())  # every file of the user's, byte-identical
    assert set(after) >= DATASET_FILES and Dataset(victim).n_users == 30
    # a dataset with the user's notes in it is re-prepared without --overwrite, the notes kept again
    assert _prepare(inter, items, victim, "--seed", "3") == 0
    after = _snapshot(victim)
    assert all(after[k] == v for k, v in before.items())
    assert not [p for p in victim.iterdir() if p.name.endswith(".partial") or p.name.startswith(".llmrec")]


def test_prepare_into_the_current_folder(tmp_path, monkeypatch, capsys):
    inter, items = _tables_csv(tmp_path / "work")
    monkeypatch.chdir(tmp_path / "work")
    assert _prepare(Path("good.csv"), Path("items.csv"), Path(".")) == 2  # holds the inputs: refused
    assert "--overwrite" in _one_error_line(capsys)
    assert _prepare(Path("good.csv"), Path("items.csv"), Path("."), "--overwrite") == 0
    assert Dataset(".").n_items == 40 and inter.exists() and items.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    assert _prepare(inter, items, Path(".")) == 0 and Dataset(".").n_users == 30


def test_prepare_onto_a_file_is_refused(tmp_path, capsys):
    inter, items = _tables_csv(tmp_path)
    target = tmp_path / "out.txt"
    target.write_text("keep\n")
    assert _prepare(inter, items, target) == 2
    assert "not a folder" in _one_error_line(capsys) and target.read_text() == "keep\n"


def test_reprepare_keeps_images_and_drops_features_of_other_items(tmp_path):
    inter, items = _tables_csv(tmp_path / "in")
    out = tmp_path / "ds"
    assert _prepare(inter, items, out) == 0
    for sub in ("images", "features", "texts"):
        (out / sub).mkdir()
        (out / sub / "x.bin").write_bytes(b"x")
    assert _prepare(inter, items, out, "--seed", "5") == 0  # same items: everything kept
    assert all((out / sub / "x.bin").exists() for sub in ("images", "features", "texts"))
    assert _prepare(inter, items, out, "--kcore", "5") == 0  # fewer items: features/texts no longer apply
    assert (out / "images" / "x.bin").exists()
    assert not (out / "features").exists() and not (out / "texts").exists()


def _tables(seed: int = 0) -> dict:
    items, inter = synthetic_tables()
    return finalize(items, inter, ProcessConfig(kcore=0, num_negatives=5, seed=seed), {}, {}, [])


def test_a_failure_while_moving_the_new_dataset_in_says_incomplete(tmp_path, monkeypatch):
    out = tmp_path / "ds"
    write_dataset(_tables(seed=1), out)
    (out / "notes.txt").write_text("mine\n")
    real_rename = Path.rename
    calls = []

    def rename(self, target):
        calls.append(self)
        if len(calls) == 4:  # in the middle of moving the new tables in
            raise OSError("disk gone")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(OSError):
        write_dataset(_tables(seed=2), out)
    monkeypatch.setattr(Path, "rename", real_rename)
    with pytest.raises(LlmrecError, match="incomplete dataset.*re-run the same 'llmrec prepare"):
        Dataset(out)
    assert (out / "notes.txt").read_text() == "mine\n"
    write_dataset(_tables(seed=2), out)  # the same prepare again: a complete dataset, no marker, no temp
    reference = tmp_path / "ref"
    write_dataset(_tables(seed=2), reference)
    got, want = _snapshot(out), _snapshot(reference)
    assert got.pop("notes.txt") == b"mine\n" and got == want


def test_a_failure_before_the_move_leaves_the_old_dataset_untouched(tmp_path, monkeypatch):
    out = tmp_path / "ds"
    write_dataset(_tables(seed=1), out)
    before = _snapshot(out)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(np, "save", boom)
    with pytest.raises(OSError):
        write_dataset(_tables(seed=2), out)
    assert _snapshot(out) == before and not [p for p in out.iterdir() if p.name.startswith(".")]
    assert Dataset(out).n_users == 30


# ----------------------------------------------------------------------------- item 4: no tracebacks


def _compressed_variants(data: bytes) -> dict[str, tuple[str, bytes]]:
    """(extension, bytes) of a truncated, a corrupt and a not-really-compressed file per compression."""
    out = {}
    for ext, mod in ((".gz", gzip), (".bz2", bz2), (".xz", lzma)):
        packed = mod.compress(data)
        out[f"{ext}-truncated"] = (ext, packed[: len(packed) // 2])
        out[f"{ext}-corrupt"] = (ext, packed[:20] + b"\x00" * 50 + packed[70:])
        out[f"{ext}-plain"] = (ext, data)
    return out


_CSV = ("user_id,item_id,timestamp\n" + "".join(f"u{k % 30},i{k % 40},{k}\n" for k in range(3000))).encode()


@pytest.mark.parametrize("case", sorted(_compressed_variants(_CSV)))
def test_prepare_table_on_a_damaged_compressed_file_is_one_line(tmp_path, capsys, case):
    ext, payload = _compressed_variants(_CSV)[case]
    path = tmp_path / f"inter.csv{ext}"
    path.write_bytes(payload)
    assert _prepare(path, None, tmp_path / "out") == 2
    line = _one_error_line(capsys)
    assert str(path) in line
    assert ("truncated" in line) == case.endswith("truncated")
    assert not (tmp_path / "out").exists() and path.read_bytes() == payload


@pytest.mark.parametrize("table", ["items.parquet", "sequences.parquet", "interactions.parquet"])
def test_a_damaged_dataset_table_is_one_line(tmp_path, table):
    write_dataset(_tables(), tmp_path / "ds")
    (tmp_path / "ds" / table).write_bytes(b"PAR1 not really parquet")
    ds = Dataset(tmp_path / "ds")
    attribute = {"items.parquet": "items", "sequences.parquet": "sequences"}.get(table, "interactions")
    with pytest.raises(LlmrecError, match=rf"{table}: cannot read this table .*re-run 'llmrec prepare'"):
        getattr(ds, attribute)


def test_features_on_a_damaged_items_table_is_one_line(tmp_path, capsys):
    write_dataset(_tables(), tmp_path / "ds")
    (tmp_path / "ds" / "items.parquet").write_bytes(b"\x00" * 100)
    assert main(["features", "--data", str(tmp_path / "ds")]) == 2
    line = _one_error_line(capsys, "features")
    assert "items.parquet" in line and "re-run 'llmrec prepare'" in line


# ----------------------------------------------------------------------------- item 3: no silent wrong input


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _inter_lines(n: int = 60) -> list[str]:
    return [f"u{k % 6},i{k % 10},{1000 + k}" for k in range(n)]


def test_a_timestamp_beyond_int64_is_an_error_not_int64_min(tmp_path, capsys):
    lines = ["user_id,item_id,timestamp", *_inter_lines()]
    lines[8] = "u1,i7,9999999999999999999999"
    path = _write(tmp_path / "t.csv", lines)
    assert _prepare(path, None, tmp_path / "out") == 2
    line = _one_error_line(capsys)
    assert f"{path}, row 9, field 'timestamp'" in line and "64-bit" in line
    lines[8] = "u1,i7,18446744073709551615"  # fits uint64 only: would wrap to -1
    _write(path, lines)
    assert _prepare(path, None, tmp_path / "out") == 2
    assert "row 9, field 'timestamp'" in _one_error_line(capsys)


def test_amazon_timestamp_beyond_int64_is_an_error(tmp_path):
    reviews = _write(
        tmp_path / "Toys_5.json",
        ['{"reviewerID": "U1", "asin": "A1", "unixReviewTime": 1, "overall": 5}'] * 3
        + ['{"reviewerID": "U1", "asin": "A1", "unixReviewTime": 9999999999999999999999, "overall": 5}'],
    )
    meta = _write(tmp_path / "meta_Toys.json", ['{"asin": "A1", "title": "t"}'])
    with pytest.raises(LlmrecError, match=r"row 4, field 'unixReviewTime'.*64-bit"):
        get_importer("amazon2018")(ImportSpec(path=str(reviews), meta_path=str(meta)))


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "Infinity"])
def test_a_non_finite_rating_is_an_error(tmp_path, capsys, value):
    lines = ["user_id,item_id,timestamp,rating"] + [f"{x},4" for x in _inter_lines()]
    lines[5] = f"u4,i4,1004,{value}"
    path = _write(tmp_path / "r.csv", lines)
    assert _prepare(path, None, tmp_path / "out") == 2
    line = _one_error_line(capsys)
    assert f"{path}, row 6, field 'rating'" in line and "number" in line


def test_a_non_finite_rating_in_parquet_and_amazon_is_an_error(tmp_path, capsys):
    df = pd.DataFrame({"user_id": ["u1"] * 4, "item_id": ["a", "b", "c", "d"], "timestamp": [1, 2, 3, 4]})
    df["rating"] = [4.0, 5.0, float("inf"), 1.0]
    df.to_parquet(tmp_path / "r.parquet")
    assert _prepare(tmp_path / "r.parquet", None, tmp_path / "out") == 2
    assert "r.parquet, row 3, field 'rating'" in _one_error_line(capsys)
    reviews = _write(
        tmp_path / "Toys_5.json",
        ['{"reviewerID": "U1", "asin": "A1", "unixReviewTime": 1, "overall": 1e999}'],
    )
    meta = _write(tmp_path / "meta_Toys.json", ['{"asin": "A1", "title": "t"}'])
    with pytest.raises(LlmrecError, match=r"row 1, field 'overall'.*finite"):
        get_importer("amazon2018")(ImportSpec(path=str(reviews), meta_path=str(meta)))


def test_a_reviews_file_given_as_metadata_is_an_error(tmp_path):
    review = '{"reviewerID": "U%d", "asin": "A%d", "unixReviewTime": %d, "overall": 5}'
    reviews = _write(tmp_path / "Toys_5.json", [review % (k % 4, k % 5, k) for k in range(20)])
    with pytest.raises(
        LlmrecError, match=r"Toys_5.json, row 1, field 'reviewerID': does not look like an item"
    ):
        get_importer("amazon2018")(ImportSpec(path=str(reviews), meta_path=str(reviews)))
    v2023 = '{"user_id": "U%d", "parent_asin": "A%d", "timestamp": %d000, "rating": 5}'
    reviews = _write(tmp_path / "Toys.jsonl", [v2023 % (k % 4, k % 5, k) for k in range(20)])
    with pytest.raises(LlmrecError, match=r"Toys.jsonl, row 1, field 'user_id': does not look like an item"):
        get_importer("amazon2023")(ImportSpec(path=str(reviews), meta_path=str(reviews)))


def test_an_interaction_table_given_as_items_is_an_error(tmp_path, capsys):
    inter, _ = _tables_csv(tmp_path / "in")
    assert _prepare(inter, inter, tmp_path / "out") == 2
    line = _one_error_line(capsys)
    assert f"{inter}: does not look like an item table" in line and "--items-path" in line


def test_a_duplicated_header_column_is_an_error(tmp_path, capsys):
    path = _write(
        tmp_path / "d.csv", ["user_id,item_id,timestamp,item_id", *[f"{x},i0" for x in _inter_lines()]]
    )
    assert _prepare(path, None, tmp_path / "out") == 2
    line = _one_error_line(capsys)
    assert f"{path}, row 1, field 'item_id': column 'item_id' appears twice" in line


def test_html_stripping_drops_script_style_and_comments():
    html = (
        "<p>Blue <b>mug</b></p><script>var x = '<b>';alert(1)</script><style>p {color: red}</style><!-- n -->"
    )
    assert strip_html(html + " &amp; saucer") == "Blue mug & saucer"
    assert strip_html("<SCRIPT type='x'>evil()</SCRIPT>Title<br/>two") == "Title two"


# ----------------------------------------------------------------------------- item 5: right place, right hint


def test_amazon_bad_byte_is_reported_on_its_line(tmp_path):
    lines = [b'{"reviewerID": "U1", "asin": "A1", "unixReviewTime": %d, "overall": 5}' % k for k in range(60)]
    lines[40] = b'{"reviewerID": "U\xff1", "asin": "A1", "unixReviewTime": 1, "overall": 5}'
    for name, data in (
        ("Toys_5.json", b"\n".join(lines)),
        ("Toys_5.json.gz", gzip.compress(b"\n".join(lines))),
    ):
        (tmp_path / name).write_bytes(data)
        meta = _write(tmp_path / "meta_Toys.json", ['{"asin": "A1", "title": "t"}'])
        with pytest.raises(LlmrecError) as e:
            get_importer("amazon2018")(ImportSpec(path=str(tmp_path / name), meta_path=str(meta)))
        assert f"{name}, row 41: not valid utf-8 text (byte 0xff" in str(e.value)
        assert "download" not in str(e.value) and "save the file as utf-8" in str(e.value)


def test_table_bad_byte_is_reported_on_its_line(tmp_path, capsys):
    lines = [b"user_id,item_id,timestamp"] + [line.encode() for line in _inter_lines()]
    lines[30] = b"u\xe91,i1,5"
    (tmp_path / "b.csv").write_bytes(b"\n".join(lines) + b"\n")
    assert _prepare(tmp_path / "b.csv", None, tmp_path / "out") == 2
    assert f"{tmp_path / 'b.csv'}, row 31: not valid utf-8 text (byte 0xe9" in _one_error_line(capsys)


def test_a_tsv_named_csv_suggests_the_separator(tmp_path, capsys):
    path = _write(
        tmp_path / "t.csv", ["user_id\titem_id\ttimestamp", *[x.replace(",", "\t") for x in _inter_lines()]]
    )
    assert _prepare(path, None, tmp_path / "out") == 2
    line = _one_error_line(capsys)
    assert "holds tabs" in line and ".tsv" in line and "--columns" not in line


def test_a_header_only_csv_names_the_file(tmp_path, capsys):
    path = _write(tmp_path / "h.csv", ["user_id,item_id,timestamp"])
    assert _prepare(path, None, tmp_path / "out") == 2
    line = _one_error_line(capsys)
    assert f"{path}: no interactions: the table has no data rows (only a header)" in line
    assert "kcore" not in line


def test_metadata_matching_no_interaction_names_the_metadata_file(tmp_path, capsys):
    inter, _ = _tables_csv(tmp_path / "in")
    other = _write(tmp_path / "other_items.csv", ["item_id,title", "zz1,a", "zz2,b"])
    assert _prepare(inter, other, tmp_path / "out") == 2
    line = _one_error_line(capsys)
    assert f"{other}: no item of this file appears in the interactions" in line and "kcore" not in line
    review = '{"reviewerID": "U%d", "asin": "A%d", "unixReviewTime": %d, "overall": 5}'
    reviews = _write(tmp_path / "Toys_5.json", [review % (k % 4, k % 5, k) for k in range(20)])
    meta = _write(tmp_path / "meta_Toys.json", ['{"asin": "B1", "title": "t"}'])
    argv = [
        "prepare",
        "amazon2018",
        "--path",
        str(reviews),
        "--meta-path",
        str(meta),
        "--out",
        str(tmp_path / "a"),
    ]
    assert main(argv) == 2
    assert f"{meta}: no item of this file appears" in _one_error_line(capsys)


def test_images_drop_hint_names_images_options(tmp_path):
    items, inter = synthetic_tables()
    write_dataset(finalize(items, inter, ProcessConfig(kcore=0, num_negatives=25), {}, {}, []), tmp_path)
    ds = Dataset(tmp_path)
    with pytest.raises(LlmrecError) as e:
        drop_items(tmp_path, ds.items["item_id"].tolist()[:12], reason="image missing")
    assert "--num-negatives" not in str(e.value) and "--missing keep" in str(e.value)
    assert Dataset(tmp_path).n_items == ds.n_items  # a refused drop leaves the dataset as it was


def _small_catalog_csv(path: Path) -> Path:
    """12 items; 'alice' touched 8 of them, 'carol' the only two items a 2-core removes (i8, i9)."""
    rows = [(f"u{u}", f"i{i}") for u in range(1, 6) for i in (0, 1, 2, 3, 10, 11)]
    rows += [("alice", f"i{i}") for i in range(8)] + [("bob", f"i{i}") for i in (0, 4, 5, 6, 7)]
    rows += [("carol", i) for i in ("i8", "i9", "i0")]
    path.write_text(
        "user_id,item_id,timestamp\n" + "".join(f"{u},{i},{t}\n" for t, (u, i) in enumerate(rows))
    )
    return path


@pytest.mark.parametrize(
    "kcore, num, expected",
    [
        (  # the 2-core removed i8 and i9: a lower --kcore keeps them, two more negatives for everyone
            "2",
            "3",
            "user 'alice' has interacted with 8 of the 10 items: 2 are left, fewer than the 3 evaluation "
            "negatives asked for; lower --num-negatives to 2 or less, or lower --kcore (the 2-core removed 2 "
            "of the 12 items), or use a source with more items",
        ),
        (  # no k-core: lowering it cannot add an item
            "0",
            "5",
            "user 'alice' has interacted with 8 of the 12 items: 4 are left, fewer than the 5 evaluation "
            "negatives asked for; lower --num-negatives to 4 or less, or use a source with more items",
        ),
    ],
    ids=["kcore-removed-items", "no-kcore"],
)
def test_too_few_negatives_names_the_user_and_what_helps(tmp_path, capsys, kcore, num, expected):
    """Regression: a small catalog said 'user number 1 ... fewer than 100 negatives remain; lower
    --num-negatives or raise --kcore': an internal index, and a higher k-core only removes items. Both
    engines name the external id of the user with the fewest unseen items and only advice that helps."""
    inter = _small_catalog_csv(tmp_path / "clicks.csv")
    lines = []
    for engine in ("pandas", "duckdb"):
        out = tmp_path / engine
        assert _prepare(inter, None, out, "--kcore", kcore, "--num-negatives", num, "--engine", engine) == 2
        lines.append(_one_error_line(capsys))
        assert not out.exists()
    assert lines[0] == lines[1]
    assert lines[0].endswith(f"clicks.csv: after importing it: {expected}")


def test_a_user_who_touched_every_item_gets_no_num_negatives_advice():
    """Where a user has no unseen item at all, no --num-negatives helps: only more items are advised."""
    from llmrec.data.processing import sample_negatives

    seqs = [np.array([0, 1], dtype=np.int32), np.array([0, 1, 2], dtype=np.int32)]
    with pytest.raises(LlmrecError) as e:
        sample_negatives(seqs, 3, 1, np.random.default_rng(0), user_ids=np.array(["a", "b"]))
    assert str(e.value) == (
        "user 'b' has interacted with 3 of the 3 items: 0 are left, fewer than the 1 evaluation negative "
        "asked for; use a source with more items"
    )


@pytest.mark.parametrize("flag, value", [("--memory-limit", "1GB"), ("--threads", "2")])
def test_duckdb_options_with_the_pandas_engine_are_refused(tmp_path, capsys, flag, value):
    """Regression: --memory-limit (and --threads) with --engine pandas were ignored without a word."""
    inter, items = _tables_csv(tmp_path / "in")
    out = tmp_path / "out"
    assert _prepare(inter, items, out, "--engine", "pandas", flag, value) == 2
    line = _one_error_line(capsys)
    assert line.endswith(f"error: {flag} applies to the duckdb engine only; drop it or use --engine duckdb")
    assert not out.exists()
    assert _prepare(inter, items, out, "--engine", "duckdb", flag, value) == 0  # where it applies


# ----------------------------------------------------------------------------- item 6: faults


def _dead_pid() -> int:
    """The id of a process that has exited (reuse within the test is practically impossible)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temp_of_killed_processes_is_removed_but_not_a_running_ones(tmp_path):
    inter, items = _tables_csv(tmp_path / "in")
    out = tmp_path / "ds"
    assert _prepare(inter, items, out) == 0
    dead, alive = _dead_pid(), os.getpid()
    stale = [out / f".prepare.{dead}.ab12cd34.partial", out / f".meta.json.{dead}.x_9y8z7w.partial"]
    stale[0].mkdir()
    (stale[0] / "items.parquet").write_bytes(b"half")
    stale[1].write_text("{")
    (out / "features").mkdir()
    stale.append(out / "features" / f".text.npy.{dead}.qwertyui.partial.npy")
    stale[2].write_bytes(b"half")
    kept = [
        out / f".prepare.{alive}.ab12cd34.partial",
        out / ".mine.partial",
        out / "features" / ".text.partial.npy",
    ]
    kept[0].mkdir()
    kept[1].write_text("the user's")
    kept[2].write_bytes(b"resumable features state")
    assert _prepare(inter, items, out, "--seed", "2") == 0
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)


@pytest.mark.parametrize("mask", [0o022, 0o002])
def test_dataset_files_follow_the_umask(tmp_path, mask):
    inter, items = _tables_csv(tmp_path / "in")
    old = os.umask(mask)
    try:
        assert _prepare(inter, items, tmp_path / "ds") == 0
    finally:
        os.umask(old)
    out = tmp_path / "ds"
    for path in [out, *out.rglob("*")]:
        want = (0o777 if path.is_dir() else 0o666) & ~mask
        assert stat.S_IMODE(path.stat().st_mode) == want, path


# Runs 'llmrec prepare' in a child that SIGKILLs itself at the Nth call of a function: a real kill -9 at an
# exact point (writing the temp folder, moving entries in, just before meta.json), not a timing guess.
_KILLER = """
import os, signal, sys, pathlib
import pandas as pd
module, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
owner = {"Path": pathlib.Path, "os": os, "DataFrame": pd.DataFrame}[module]
real, calls = getattr(owner, name), [0]
def killer(*args, **kwargs):
    calls[0] += 1
    if calls[0] == n:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kwargs)
setattr(owner, name, killer)
from llmrec.cli import main
sys.exit(main(sys.argv[4:]))
"""


@pytest.mark.parametrize(
    "point",
    [("DataFrame", "to_parquet", 2), ("Path", "rename", 3), ("os", "replace", 3)],
    ids=["writing-temp", "moving-entries", "before-meta"],
)
def test_prepare_killed_resumes_to_identical_bytes(tmp_path, point):
    inter, items = _tables_csv(tmp_path / "in")
    out = tmp_path / "ds"
    argv = ["prepare", "table", "--path", str(inter), "--items-path", str(items), "--out", str(out)]
    argv += ["--kcore", "0", "--num-negatives", "5"]
    assert main([*argv, "--seed", "2"]) == 0
    (out / "notes.txt").write_text("mine\n")
    (out / "images").mkdir()
    (out / "images" / "0.jpg").write_bytes(b"jpeg")
    reference = _snapshot(out)
    assert main([*argv, "--seed", "1"]) == 0  # an older dataset in place when the kill comes
    src = str(Path(llmrec.__file__).parent.parent)
    env = {**os.environ, "PYTHONPATH": src, "OMP_NUM_THREADS": "1"}
    child = subprocess.run(
        [sys.executable, "-c", _KILLER, *map(str, point), *argv, "--seed", "2"], env=env, capture_output=True
    )
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()
    assert (out / "notes.txt").read_text() == "mine\n" and (out / "images" / "0.jpg").exists()
    if point[0] != "DataFrame":  # killed while moving entries in: the folder says so instead of loading mixed
        with pytest.raises(LlmrecError, match="incomplete dataset"):
            Dataset(out)
    assert main([*argv, "--seed", "2"]) == 0
    assert _snapshot(out) == reference  # no temp folder, no marker, the same bytes
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # none beside it either


def test_ml100k_atomic_file_with_a_bad_byte_or_no_columns_is_one_line(tmp_path):
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    inter = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"] + [
        f"{u}\t{u}\t4\t{u}" for u in range(9)
    ]
    (folder / "ml-100k.inter").write_bytes(
        ("\n".join(inter) + "\n").encode().replace(b"\t5\t4", b"\t\xff\t4")
    )
    (folder / "ml-100k.item").write_text("item_id:token\tname:token_seq\n1\tx\n")
    with pytest.raises(LlmrecError, match=r"ml-100k.inter, row 7: not valid utf-8 text \(byte 0xff"):
        get_importer("ml-100k")(ImportSpec(path=str(folder)))
    (folder / "ml-100k.inter").write_text("\n".join(inter) + "\n")
    with pytest.raises(LlmrecError, match=r"ml-100k.item, field 'movie_title': no column 'movie_title'"):
        get_importer("ml-100k")(ImportSpec(path=str(folder)))


def test_temp_folders_of_older_versions_are_removed_when_clearly_abandoned(tmp_path):
    inter, items = _tables_csv(tmp_path / "in")
    out = tmp_path / "ds"
    hour_ago = time.time() - 7200
    abandoned, recent, foreign = (
        tmp_path / f".ds.{rand}.partial" for rand in ("a1b2c3d4", "e5f6g7h8", "i9j0k1l2")
    )
    for folder in (abandoned, recent, foreign):
        (folder / "eval").mkdir(parents=True)
        (folder / "items.parquet").write_bytes(b"half")
    (foreign / "notes.txt").write_text("not llmrec's")
    for folder in (abandoned, foreign):
        for p in [folder, *folder.rglob("*")]:
            os.utime(p, (hour_ago, hour_ago))
    assert _prepare(inter, items, out) == 0
    assert not abandoned.exists() and recent.exists() and foreign.exists()


def test_overwrite_never_replaces_an_input_file_of_the_same_name(tmp_path, capsys):
    folder = tmp_path / "victim"
    _tables_csv(folder)
    inter = pd.read_csv(folder / "good.csv")
    inter.to_parquet(folder / "interactions.parquet")
    before = _snapshot(folder)
    assert _prepare(folder / "interactions.parquet", folder / "items.csv", folder, "--overwrite") == 2
    line = _one_error_line(capsys)
    assert "interactions.parquet" in line and "--overwrite would replace" in line
    assert _snapshot(folder) == before


@pytest.mark.parametrize("engine", ["duckdb", "pandas"])
def test_a_utf8_bom_is_accepted_and_gives_the_same_tables(tmp_path, engine):
    """A CSV saved by a spreadsheet starts with a UTF-8 BOM: it is read as if it had none (same parquet
    tables, byte for byte), on both engines (the documentation once said it was an error)."""
    inter, items = _tables_csv(tmp_path / "raw")
    bom_inter, bom_items = tmp_path / "raw" / "bom.csv", tmp_path / "raw" / "bom_items.csv"
    bom_inter.write_bytes(b"\xef\xbb\xbf" + inter.read_bytes())
    bom_items.write_bytes(b"\xef\xbb\xbf" + items.read_bytes())
    assert _prepare(inter, items, tmp_path / "plain", "--engine", engine) == 0
    assert _prepare(bom_inter, bom_items, tmp_path / "bom", "--engine", engine) == 0
    for name in ("items.parquet", "interactions.parquet", "users.parquet", "sequences.parquet"):
        plain = pd.read_parquet(tmp_path / "plain" / name)
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "bom" / name), plain)
