"""The data side under bad input and faults (issue #15): prepare never deletes what is not its own, a
damaged or wrong input file is one line naming file/row/field, and a killed prepare resumes to the same
bytes with no temp folders left behind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import synthetic_tables
from llmrec.cli import main
from llmrec.data.dataset import Dataset
from llmrec.data.processing import ProcessConfig, finalize, write_dataset
from llmrec.errors import LlmrecError


@pytest.fixture(autouse=True)
def _crash_logs_in_tmp(tmp_path, monkeypatch):
    """A command that crashes here (exit 70) leaves its log under the test's folder, not in $HOME."""
    monkeypatch.setenv("LLMREC_CRASH_DIR", str(tmp_path / "crashes"))


def _one_error_line(capsys, command: str = "prepare") -> str:
    """The single stderr line of a refused command: no traceback, the CLI's prefix."""
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"llmrec {command}: error: "), lines[0]
    return lines[0]


def _snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` and its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


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
