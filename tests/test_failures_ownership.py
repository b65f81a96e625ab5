"""What llmrec may write and delete, and who writes a folder at a time.

- A folder llmrec did not write is refused by ``train`` with or without ``--restart`` (its marker
  ``.llmrec-run``, or an older run's config.json with the ``_llmrec`` provenance block, is the proof);
  ``--restart`` on llmrec's own run deletes only llmrec's files (inside ``model/`` only model files).
- Every file llmrec writes follows the umask (model.safetensors was 0600).
- One writer per dataset or run directory: a second ``prepare`` / ``train`` / ``evaluate`` / ``features``
  / ``images`` is refused at once with one line naming the holder's pid; a holder killed with SIGKILL
  leaves no lock behind.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

import llmrec
from conftest import file_bytes as _snapshot
from conftest import one_error_line as _one_error_line
from conftest import synthetic_tables
from llmrec.cli import main
from llmrec.data.dataset import Dataset, content_identity
from llmrec.errors import LlmrecError
from llmrec.models.base import available_models, get_model_class
from llmrec.runs import MODEL_FILES, RUN_MARKER
from llmrec.utils.io import atomic_path
from llmrec.utils.lock import INSIDE_LOCK, LOCK_SUFFIX, folder_lock, lock_file


@pytest.fixture(autouse=True)
def _crash_logs_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMREC_CRASH_DIR", str(tmp_path / "crashes"))


SASREC = ["-o", "hidden=8", "-o", "max_len=6", "-o", "epochs=1", "--no-ctr", "--no-full-ranking"]


def _train(data: Path, run: Path, *extra: str, model: str = "popularity") -> int:
    return main(["train", model, "--data", str(data), "--out", str(run), *extra])


def _lock_files(root: Path) -> list[Path]:
    return sorted(root.rglob(f"*{LOCK_SUFFIX}"))


# ----------------------------------------------------------------------------- ownership


def test_restart_never_deletes_from_a_folder_llmrec_did_not_write(synthetic_dataset, tmp_path, capsys):
    """Regression: `train --out notarun --restart` deleted notarun/model/mine.txt and replaced the user's
    metrics.json (exit 0)."""
    folder = tmp_path / "notarun"
    (folder / "model").mkdir(parents=True)
    (folder / "notes.txt").write_text("precious\n")
    (folder / "model" / "mine.txt").write_text("keep\n")
    (folder / "metrics.json").write_text('{"mine": 1}\n')
    before = _snapshot(folder)
    for extra in ([], ["--restart"]):
        assert _train(synthetic_dataset, folder, *extra) == 2
        line = _one_error_line(capsys, "train")
        assert f"{folder}: holds metrics.json, model/, notes.txt but is not an llmrec run" in line
        assert "--restart included" in line
        assert _snapshot(folder) == before
        assert sorted(p.name for p in folder.iterdir()) == ["metrics.json", "model", "notes.txt"]


def test_restart_never_overwrites_a_users_config_json(synthetic_dataset, tmp_path, capsys):
    """Regression: `train --out notarun4 --restart` overwrote the user's config.json (exit 0)."""
    folder = tmp_path / "notarun4"
    folder.mkdir()
    (folder / "config.json").write_text('{"a": 1}\n')
    for extra in (["--restart"], []):
        assert _train(synthetic_dataset, folder, *extra) == 2
        assert "holds config.json but is not an llmrec run" in _one_error_line(capsys, "train")
        assert _snapshot(folder) == {"config.json": b'{"a": 1}\n'}


def test_a_new_or_empty_folder_becomes_a_run_with_its_marker(synthetic_dataset, tmp_path):
    (tmp_path / "empty").mkdir()
    for name in ("empty", "new/nested"):
        run = tmp_path / name
        assert _train(synthetic_dataset, run) == 0
        marker = json.loads((run / RUN_MARKER).read_text())
        assert marker["llmrec"] == llmrec.__version__ and marker["created"]
    assert _train(synthetic_dataset, run) == 0  # the same command: llmrec's run, evaluated again
    assert not _lock_files(tmp_path)  # released locks leave no file behind


def test_restart_on_an_llmrec_run_deletes_only_llmrecs_files(synthetic_dataset, tmp_path, caplog):
    """Inside model/, only the files a saved model consists of go: the user's file there stays, and so
    does the folder holding it."""
    run = tmp_path / "run"
    assert _train(synthetic_dataset, run) == 0
    (run / "notes.txt").write_text("mine")
    (run / "model" / "mine.txt").write_text("keep")
    (run / "metrics.json").write_text('{"stale": 1}')
    assert _train(synthetic_dataset, run, "--restart") == 0
    assert (run / "notes.txt").read_text() == "mine" and (run / "model" / "mine.txt").read_text() == "keep"
    assert "stale" not in (run / "metrics.json").read_text()
    assert (run / RUN_MARKER).is_file() and (run / "model" / "model.json").is_file()
    assert "kept mine.txt" in caplog.text


def test_a_run_of_a_version_before_the_marker_resumes_and_restarts(synthetic_dataset, tmp_path, capsys):
    """A run written before the marker existed is proven by its config.json's provenance block: the same
    command evaluates it again (adopting it: the marker is written) and --restart clears it."""
    run = tmp_path / "old"
    assert _train(synthetic_dataset, run) == 0
    (run / RUN_MARKER).unlink()
    (run / "notes.txt").write_text("mine")
    assert _train(synthetic_dataset, run) == 0
    assert (run / RUN_MARKER).is_file()
    (run / RUN_MARKER).unlink()
    assert _train(synthetic_dataset, run, "--restart", "--ks", "3") == 0
    assert (run / RUN_MARKER).is_file() and (run / "notes.txt").read_text() == "mine"
    assert "hit@3" in json.loads((run / "metrics.json").read_text())["test"]
    (run / RUN_MARKER).unlink()
    assert main(["evaluate", str(run), "--ks", "4"]) == 0  # evaluate adopts it too
    assert (run / RUN_MARKER).is_file()


def test_a_marked_run_without_its_config_is_refused_unless_restart(synthetic_dataset, tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(synthetic_dataset, run) == 0
    (run / "config.json").unlink()
    assert _train(synthetic_dataset, run) == 2
    assert "but no config.json: a run interrupted as it started" in _one_error_line(capsys, "train")
    assert _train(synthetic_dataset, run, "--restart") == 0


def test_every_models_weights_file_is_a_known_model_file():
    """--restart deletes from model/ only MODEL_FILES: every model's weights file must be one of them
    (a trained run's model/ holds nothing else: see the umask test)."""
    for name in available_models():
        weights = getattr(get_model_class(name), "weights_name", "")
        assert not weights or f"{weights}.safetensors" in MODEL_FILES, name


def test_multi_seed_runs_and_table_with_markers(synthetic_dataset, tmp_path, capsys):
    """The --seeds parent holds the seed runs only (no lock file left), each marked; table reads it."""
    out = tmp_path / "seeds"
    argv = ["train", "popularity", "--data", str(synthetic_dataset), "--out", str(out), "--seeds", "0", "1"]
    assert main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == ["seed-0", "seed-1"]
    assert all((out / s / RUN_MARKER).is_file() for s in ("seed-0", "seed-1"))
    assert main([*argv, "--restart"]) == 0
    capsys.readouterr()
    assert main(["table", str(out)]) == 0
    assert "| seeds | popularity | 2 |" in capsys.readouterr().out


def test_marker_and_lock_do_not_disturb_reading_a_run(synthetic_dataset, tmp_path, capsys):
    """table, recommend and the Python API (what serve loads) read a run with its marker, also while
    another process holds its lock (they only read)."""
    run = tmp_path / "run"
    assert _train(synthetic_dataset, run) == 0
    capsys.readouterr()
    with _held_elsewhere(run):
        assert main(["table", str(run)]) == 0
        assert main(["recommend", str(run), "--user", "u1", "--k", "3"]) == 0
        model = llmrec.load(run)
        assert len(model.recommend(user_ids=["u1"], k=2)) == 2
    assert "| run |" in capsys.readouterr().out


# ----------------------------------------------------------------------------- permissions


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield 0o640
    os.umask(old)


def test_atomic_writes_follow_the_umask_whatever_the_writer_does(tmp_path, umask_027):
    """Regression: safetensors.save_file re-creates its target, so model.safetensors was 0600."""
    import torch
    from safetensors.torch import save_file

    with atomic_path(tmp_path / "model.safetensors") as tmp:
        save_file({"w": torch.zeros(2)}, str(tmp))
    with atomic_path(tmp_path / "checkpoint.pt") as tmp:
        torch.save({"w": torch.zeros(2)}, tmp)
    with atomic_path(tmp_path / "recreated") as tmp:  # a writer that replaces the file with a 0600 one
        tmp.unlink()
        os.close(os.open(tmp, os.O_CREAT | os.O_WRONLY, 0o600))
    for name in ("model.safetensors", "checkpoint.pt", "recreated"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == umask_027, name


def test_every_file_of_a_trained_run_follows_the_umask(synthetic_dataset, tmp_path, umask_027):
    run = tmp_path / "run"
    assert _train(synthetic_dataset, run, *SASREC, model="sasrec") == 0
    modes = {str(p.relative_to(run)): stat.S_IMODE(p.stat().st_mode) for p in run.rglob("*") if p.is_file()}
    assert "model/model.safetensors" in modes
    assert modes == dict.fromkeys(modes, umask_027)
    assert {p.name for p in (run / "model").iterdir()} <= set(MODEL_FILES)


# ----------------------------------------------------------------------------- locks


class _held_elsewhere:
    """Hold ``folder``'s lock through a second open file description of its lock file (flock locks
    belong to it: this process's own folder_lock then conflicts, as another process's would), with
    ``pid`` written in it as a holder writes its own."""

    def __init__(self, folder: Path, pid: int = 4242, path: Path | None = None) -> None:
        self.path, self.pid = path or lock_file(folder), pid

    def __enter__(self) -> _held_elsewhere:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT)
        fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(self.fd, json.dumps({"pid": self.pid, "command": "prepare"}).encode())
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)
        self.path.unlink(missing_ok=True)


def _csv_inputs(folder: Path) -> list[str]:
    items, inter = synthetic_tables()
    folder.mkdir(parents=True, exist_ok=True)
    inter[["user_id", "item_id", "timestamp"]].to_csv(folder / "inter.csv", index=False)
    items[["item_id", "title"]].to_csv(folder / "items.csv", index=False)
    return ["--path", str(folder / "inter.csv"), "--items-path", str(folder / "items.csv")]


def _prepare(inputs: list[str], out: Path, *extra: str) -> int:
    argv = ["prepare", "table", *inputs, "--out", str(out), "--kcore", "0", "--num-negatives", "5"]
    return main([*argv, *extra])


def test_a_second_prepare_into_a_new_folder_is_refused_naming_the_first(tmp_path, capsys):
    """Regression: both exited 0 (one dataset silently replaced the other), and into a new folder the later
    one called the first one's temp folder "not an llmrec dataset". The lock comes before anything."""
    inputs = _csv_inputs(tmp_path / "in")
    out = tmp_path / "ds"
    with _held_elsewhere(out, pid=4242):
        assert _prepare(inputs, out) == 2
        line = _one_error_line(capsys, "prepare")
        assert (
            f"{out}: another llmrec process is writing this dataset now ('llmrec prepare', pid 4242" in line
        )
        assert "not an llmrec dataset" not in line
        assert not out.exists()  # refused before it created anything
    assert _prepare(inputs, out) == 0
    assert not _lock_files(tmp_path) and not list(out.glob(".*lock*"))
    assert Dataset(out).identity == content_identity(out)
    with _held_elsewhere(out, pid=4343):  # an existing dataset: refused, untouched
        before = _snapshot(out)
        assert _prepare(inputs, out, "--seed", "2") == 2
        assert "pid 4343" in _one_error_line(capsys, "prepare")
        assert _snapshot(out) == before


def test_train_and_evaluate_into_a_held_run_are_refused_naming_the_holder(
    synthetic_dataset, tmp_path, capsys
):
    run = tmp_path / "run"
    with _held_elsewhere(run, pid=5151):
        assert _train(synthetic_dataset, run) == 2
        line = _one_error_line(capsys, "train")
        assert "run: another llmrec process is writing this run directory now" in line
        assert "pid 5151" in line and not run.exists()
    assert _train(synthetic_dataset, run) == 0
    before = _snapshot(run)
    train = ["train", "popularity", "--data", str(synthetic_dataset), "--out", str(run)]
    with _held_elsewhere(run, pid=5252):
        for argv in (train, [*train, "--restart"], ["evaluate", str(run)]):
            assert main(argv) == 2
            assert "pid 5252" in _one_error_line(capsys, argv[0])
        assert _snapshot(run) == before


def test_features_and_images_on_a_held_dataset_are_refused(synthetic_dataset, capsys):
    ds = synthetic_dataset
    before = _snapshot(ds)
    with _held_elsewhere(ds, pid=6161):
        assert main(["features", "--data", str(ds), "--text"]) == 2
        assert f"{ds}: another llmrec process is writing this dataset now" in _one_error_line(
            capsys, "features"
        )
        assert main(["images", "--data", str(ds)]) == 2
        assert "pid 6161" in _one_error_line(capsys, "images")
        assert _snapshot(ds) == before


def test_the_synthetic_catalog_has_one_writer(tmp_path):
    from llmrec.data.synthetic import SyntheticConfig, generate_catalog

    out = tmp_path / "catalog"
    with _held_elsewhere(out, pid=7171), pytest.raises(LlmrecError, match="pid 7171"):
        generate_catalog(SyntheticConfig(out=str(out)))
    assert not out.exists()


def test_a_process_may_nest_its_own_lock_and_the_file_goes_with_it(tmp_path):
    with folder_lock(tmp_path / "x", "dataset") as path, folder_lock(tmp_path / "x" / ".." / "x", "dataset"):
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert not path.exists()


def test_a_folder_in_a_parent_that_cannot_be_written_is_locked_inside_it(
    synthetic_dataset, tmp_path, monkeypatch, capsys
):
    """Where the lock cannot go beside the folder (a parent the user may not write), it goes inside, as
    .llmrec-lock: it still excludes a second writer and never makes the folder look foreign."""
    real_open = os.open

    def no_sibling(path, *args, **kwargs):
        if (
            str(path).endswith(LOCK_SUFFIX)
            and Path(path).name.startswith(".")
            and Path(path).name != INSIDE_LOCK
        ):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", no_sibling)
    run = tmp_path / "run"
    run.mkdir()
    with folder_lock(run, "run directory") as path:
        assert path == run.resolve() / INSIDE_LOCK
    with _held_elsewhere(run, pid=8181, path=run / INSIDE_LOCK):
        assert _train(synthetic_dataset, run) == 2
        assert "pid 8181" in _one_error_line(capsys, "train")
    assert _train(synthetic_dataset, run) == 0  # an empty folder but for the lock: a new run
    assert not (run / INSIDE_LOCK).exists()


_HOLDER = """
import sys, time
from llmrec.utils.lock import folder_lock
with folder_lock(sys.argv[1], "dataset"):
    print("held", flush=True)
    time.sleep(120)
"""


def test_a_lock_held_by_a_process_killed_with_sigkill_is_released(tmp_path, capsys):
    """The holder's pid is named while it lives; kill -9 releases the lock (the kernel drops it), and
    the next command takes it over although the lock file stays behind."""
    inputs = _csv_inputs(tmp_path / "in")
    out = tmp_path / "ds"
    env = dict(os.environ, PYTHONPATH=str(Path(llmrec.__file__).resolve().parents[1]))
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(out)], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        assert _prepare(inputs, out) == 2
        assert f"pid {proc.pid}" in _one_error_line(capsys, "prepare")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert lock_file(out).exists()  # the killed holder could not remove it
    t0 = time.perf_counter()
    assert _prepare(inputs, out) == 0
    assert time.perf_counter() - t0 < 30 and not lock_file(out).exists()
