"""Fault injection into every writer of llmrec: the dataset of `prepare`, the checkpoint and model of
`train`, the feature store of `features` and the batch output of `recommend --all-users --out`.

Each is run under a full disk (ENOSPC), a location it may not write (EACCES), DuckDB out of memory, and
kill -9 at a random point. What must hold: one error line naming the path (or the limit) and what to do,
exit 2, or else a resumable state: the same command, run again, finishes with the same result. No half
file is ever visible: only complete files, or the temp (`.partial`) ones that the next run removes.

Two techniques. A real full disk is a tiny tmpfs (`mount -t tmpfs`, needs root; such a test skips,
saying why, where mounting is refused). Every other fault is injected: the writers (pyarrow, numpy,
torch, safetensors, matplotlib, os.replace) are patched to fail, or to kill the process, at their N-th
call, N drawn from a seeded RNG over the calls an uninterrupted run makes. The exceptions injected are
the writers' own on a full disk: no file name, and from torch and safetensors a RuntimeError.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import importlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

import llmrec
from conftest import file_bytes, one_error_line, synthetic_tables
from llmrec.cli import _os_error_line, main
from llmrec.data.processing import PrepareConfig
from llmrec.features import build
from llmrec.utils.io import atomic_path

SEED = 20251207  # change it to explore other points; every draw below derives from it
SASREC = ["-o", "hidden=8", "-o", "max_len=6", "-o", "epochs=2", "--no-ctr", "--no-full-ranking"]
HINTS = {errno.ENOSPC: "free some disk space", errno.EACCES: "check the permissions"}

# the binary writers each command goes through ("module:attribute"), where a fault is injected
PREPARE_WRITES = (
    "pandas:DataFrame.to_parquet",
    "numpy:save",
    "pyarrow.parquet:ParquetWriter.write_table",
    "os:replace",
)
TRAIN_WRITES = ("torch:save", "safetensors.torch:save_file", "matplotlib.figure:Figure.savefig", "os:replace")
FEATURES_WRITES = ("numpy.lib.format:open_memmap", "os:posix_fallocate", "os:replace")
RECOMMEND_WRITES = ("pandas:DataFrame.to_parquet", "pyarrow.parquet:ParquetWriter.write_table", "os:replace")


@pytest.fixture(autouse=True)
def _crash_logs_in_tmp(tmp_path, monkeypatch):
    """A command that crashes here (exit 70) leaves its log under the test's folder: none may appear."""
    monkeypatch.setenv("LLMREC_CRASH_DIR", str(tmp_path / "crashes"))
    yield
    assert not list((tmp_path / "crashes").glob("*")), "a crash log was written"


# ----------------------------------------------------------------------------- helpers


class HashTextEncoder:
    """A deterministic stand-in for a sentence encoder: ``dim`` numbers from each text's sha256."""

    id = "hash"

    def __init__(self, dim: int = 8) -> None:
        self.dim = dim

    def encode(self, texts: list[str]) -> np.ndarray:
        digests = [np.frombuffer(hashlib.sha256(t.encode()).digest(), dtype=np.uint8) for t in texts]
        return np.array([np.resize(d, self.dim) for d in digests], dtype=np.float32)


def _resolve(target: str) -> tuple[object, str]:
    module, _, attribute = target.partition(":")
    owner: object = importlib.import_module(module)
    *path, name = attribute.split(".")
    for part in path:
        owner = getattr(owner, part)
    return owner, name


def _fault(target: str, code: int) -> BaseException:
    """What ``target`` raises when the disk is full (``code`` ENOSPC) or the file may not be written
    (EACCES): never with a file name."""
    text = os.strerror(code)
    if target == "torch:save":  # torch writing a Python file: its own RuntimeError, the OSError behind
        try:
            try:
                raise OSError(code, text)
            except OSError:
                raise RuntimeError(  # noqa: B904 (torch raises it so: the OSError as its context)
                    "[enforce fail at inline_container.cc:672] . unexpected pos 29824 vs 29720"
                )
        except RuntimeError as e:
            return e
    if target == "safetensors.torch:save_file":
        from safetensors import SafetensorError

        return SafetensorError(f"Error while serializing: I/O error: {text} (os error {code})")
    if target == "numpy:save" and code == errno.ENOSPC:  # numpy's tofile: a short write, no errno
        return OSError("40000 requested and 8176 written")
    if target.startswith(("pandas", "pyarrow")):
        return OSError(code, f"Error writing bytes to file. Detail: [errno {code}] {text}")
    return OSError(code, text)


@dataclass
class Writes:
    """The writer calls seen under :func:`_writes`, and the one that failed (if any)."""

    calls: int = 0
    failed: list[str] = field(default_factory=list)


@contextlib.contextmanager
def _writes(targets: tuple[str, ...], fail_at: int = 0, code: int = errno.ENOSPC) -> Iterator[Writes]:
    """Count the calls of ``targets``; the ``fail_at``-th (1-based; 0: none) raises that writer's error."""
    seen = Writes()

    def hook(target: str, write: Callable) -> Callable:
        def wrapper(*args, **kwargs):
            if kwargs.get("mode") == "r":  # np.load's memory map: a read
                return write(*args, **kwargs)
            seen.calls += 1
            if seen.calls == fail_at:
                seen.failed.append(target)
                raise _fault(target, code)
            return write(*args, **kwargs)

        return wrapper

    with pytest.MonkeyPatch.context() as m:
        for target in targets:
            owner, name = _resolve(target)
            m.setattr(owner, name, hook(target, getattr(owner, name)))
        yield seen


def _draw(key: str, calls: int) -> int:
    """A seeded N in 1..calls for the case ``key``."""
    assert calls > 0
    return int(np.random.default_rng([SEED, *key.encode()]).integers(1, calls + 1))


# The child of a kill test: patches the writers to kill -9 the process at their N-th call (before or after
# the call does its work), then runs the command. Nothing of it lives in llmrec.
_KILLER = r"""
import hashlib, importlib, os, signal, sys
import numpy as np
n, when, fake_encoder, targets = int(sys.argv[1]), sys.argv[2], sys.argv[3] == "1", sys.argv[4].split(",")
calls = [0]
def hook(write):
    def wrapper(*args, **kwargs):
        if kwargs.get("mode") == "r":  # np.load's memory map: a read
            return write(*args, **kwargs)
        calls[0] += 1
        mine = calls[0]  # calls nest (pandas' to_parquet calls pyarrow's write_table)
        if mine == n and when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        result = write(*args, **kwargs)
        if mine == n:
            os.kill(os.getpid(), signal.SIGKILL)
        return result
    return wrapper
for target in targets:
    module, _, attribute = target.partition(":")
    owner = importlib.import_module(module)
    *path, name = attribute.split(".")
    for part in path:
        owner = getattr(owner, part)
    setattr(owner, name, hook(getattr(owner, name)))
if fake_encoder:  # HashTextEncoder(8) of the tests
    class Hash:
        id, dim = "hash", 8
        def encode(self, texts):
            digests = [np.frombuffer(hashlib.sha256(t.encode()).digest(), dtype=np.uint8) for t in texts]
            return np.array([np.resize(d, 8) for d in digests], dtype=np.float32)
    from llmrec.features import build
    build.load_text_encoder = lambda *a, **k: Hash()
from llmrec.cli import main
sys.exit(main(sys.argv[5:]))
"""


def _kill_at(n: int, when: str, cmd: Command, tmp_path: Path) -> None:
    """Run ``cmd`` in a child killed -9 at its ``n``-th writer call."""
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(llmrec.__file__).resolve().parents[1]),  # this checkout's code
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "LLMREC_CRASH_DIR": str(tmp_path / "crashes"),
    }
    fake = "1" if cmd.fake_encoder else "0"
    argv = [sys.executable, "-c", _KILLER, str(n), when, fake, ",".join(cmd.writes), *cmd.argv]
    child = subprocess.run(argv, env=env, capture_output=True, timeout=300)
    assert child.returncode == -signal.SIGKILL, (n, when, child.stderr.decode()[-2000:])


def _error_line(capsys, command: str) -> str:
    """The one error line of a command that failed (``one_error_line``), its progress bar aside."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith(f"{command}: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"llmrec {command}: error: "), lines[0]
    return lines[0]


def _temps(root: Path) -> list[Path]:
    """Temp files and folders of llmrec's writes under ``root`` (atomic writes, prepare's temp folder,
    a feature's partial arrays, a batch's chunk folder)."""
    return [p for p in root.rglob("*") if ".partial" in p.name or p.name.endswith(".llmrec-batch")]


def _visible_files_are_complete(root: Path) -> None:
    """Every file outside temp names under ``root`` loads whole (no half file ever has a final name)."""
    import torch
    from PIL import Image
    from safetensors import safe_open

    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).parts
        if not path.is_file() or any(part.startswith(".") for part in rel) or path.name == "filler":
            continue
        if path.suffix == ".parquet":
            pq.read_table(path)
        elif path.suffix == ".npy":
            np.load(path, allow_pickle=False)
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".pt":
            torch.load(path, weights_only=False)
        elif path.suffix == ".safetensors":
            with safe_open(str(path), "pt") as f:
                [f.get_tensor(k) for k in f.keys()]  # noqa: SIM118 (not a dict)
        elif path.suffix == ".png":
            with Image.open(path) as image:
                image.load()


def _comparable(metrics: dict) -> dict:
    """Metrics without wall-clock timings (equal runs differ only there)."""
    return {s: {k: v for k, v in m.items() if "seconds" not in k} for s, m in metrics.items()}


def _run_result(run: Path) -> tuple[dict, bytes]:
    """What a training produced: its metrics (timings aside) and its model's weights."""
    metrics = json.loads((run / "metrics.json").read_text())
    return _comparable(metrics), (run / "model" / "model.safetensors").read_bytes()


def _raw_tables(folder: Path) -> tuple[Path, Path]:
    """The synthetic interactions and items as the parquet files a user would give 'prepare table'."""
    items, inter = synthetic_tables()
    folder.mkdir(parents=True, exist_ok=True)
    inter[["user_id", "item_id", "timestamp", "rating"]].to_parquet(folder / "inter.parquet", index=False)
    items[["item_id", "title", "brand"]].to_parquet(folder / "items.parquet", index=False)
    return folder / "inter.parquet", folder / "items.parquet"


def _prepare_argv(tmp_path: Path, out: Path, *extra: str) -> list[str]:
    inter, items = _raw_tables(tmp_path / "raw")
    argv = ["prepare", "table", "--path", str(inter), "--items-path", str(items), "--out", str(out)]
    return [*argv, "--kcore", "0", "--num-negatives", "5", *extra]


@dataclass
class Trained:
    data: Path  # the synthetic dataset
    sasrec: Path  # a tiny SASRec run on it: the reference of the train tests
    calls: int  # the writer calls (TRAIN_WRITES) its training made
    popularity: Path  # a popularity run (what the batch tests recommend from: no torch in their child)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Trained:
    from llmrec.data.processing import ProcessConfig, finalize, write_dataset

    root = tmp_path_factory.mktemp("trained")
    items, inter = synthetic_tables()
    data = root / "data"
    write_dataset(finalize(items, inter, ProcessConfig(kcore=0, num_negatives=10, seed=3), {}, {}, []), data)
    with _writes(TRAIN_WRITES) as seen:
        assert main(["train", "sasrec", "--data", str(data), "--out", str(root / "sasrec"), *SASREC]) == 0
    assert main(["train", "popularity", "--data", str(data), "--out", str(root / "popularity")]) == 0
    return Trained(data, root / "sasrec", seen.calls, root / "popularity")


# ----------------------------------------------------------------------------- a real full disk


@pytest.fixture
def tmpfs() -> Iterator[Callable[..., Path]]:
    """mount(folder, size) -> folder, a tmpfs of ``size`` there (unmounted after the test)."""
    mounted: list[Path] = []

    def mount(folder: Path, size: str = "64k") -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        try:
            done = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                capture_output=True,
                text=True,
            )
        except FileNotFoundError:
            pytest.skip("a real full disk needs a tmpfs mount: no 'mount' command here")
        if done.returncode != 0:
            pytest.skip(f"a real full disk needs a tmpfs mount (root, Linux): {done.stderr.strip()}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in reversed(mounted):
        subprocess.run(["umount", "-l", str(folder)], check=False)


def _resize(folder: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(folder)], check=True)


def _fill(folder: Path, leave: int = 0) -> Path:
    """Take all but about ``leave`` bytes of the file system of ``folder`` with a file 'filler'."""
    st = os.statvfs(folder)
    filler = folder / "filler"
    with contextlib.suppress(OSError), open(filler, "wb") as f:
        f.write(b"\0" * max(st.f_bfree * st.f_frsize - leave, 0))
    return filler


def test_train_onto_a_full_disk_is_one_line_naming_the_checkpoint_then_resumes(
    trained, tmp_path, tmpfs, capsys
):
    """Regression: a 64 KB disk crashed with `internal error (RuntimeError: [enforce fail at
    inline_container.cc:672] . unexpected pos ...)`, exit 70, from torch.save of the checkpoint."""
    data, reference = trained.data, trained.sasrec
    disk = tmpfs(tmp_path / "disk")
    run = disk / "run"
    argv = ["train", "sasrec", "--data", str(data), "--out", str(run), *SASREC]
    capsys.readouterr()
    assert main(argv) == 2
    line = one_error_line(capsys, "train")
    assert f"{run / 'checkpoint.pt'}: No space left on device; free some disk space" in line, line
    assert _temps(disk) == []
    _visible_files_are_complete(disk)
    _resize(disk, "16m")
    assert main(argv) == 0
    assert _run_result(run) == _run_result(reference)


@pytest.mark.parametrize("engine", ["duckdb", "pandas"])
def test_prepare_onto_a_full_disk_names_the_folder_then_finishes(engine, tmp_path, tmpfs, capsys):
    """Regression: `Error writing bytes to file. Detail: [errno 28] No space left on device` named no file."""
    disk = tmpfs(tmp_path / "disk")
    out = disk / "ds"
    argv = _prepare_argv(tmp_path, out, "--engine", engine)
    assert main(argv) == 0
    reference = file_bytes(out)
    shutil.rmtree(out)
    filler = _fill(disk, leave=8192)  # room for some files, not all
    capsys.readouterr()
    assert main(argv) == 2
    line = one_error_line(capsys, "prepare")
    assert f"{out}: No space left on device; free some disk space" in line, line
    assert sorted(p.name for p in disk.iterdir()) == ["filler"]  # nothing of the dataset, no temp folder
    filler.unlink()
    assert main(argv) == 0
    assert file_bytes(out) == reference


def test_recommend_batch_onto_a_full_disk_names_the_out_file_then_resumes(trained, tmp_path, tmpfs, capsys):
    """Regression: the batch output's disk-full line named no file."""
    argv = ["recommend", str(trained.popularity), "--all-users", "--k", "20", "--chunk-users", "5"]
    assert main([*argv, "--out", str(tmp_path / "reference.parquet")]) == 0
    disk = tmpfs(tmp_path / "disk")
    out = disk / "recs.parquet"
    filler = _fill(disk, leave=12288)  # room for a few chunks
    capsys.readouterr()
    assert main([*argv, "--out", str(out)]) == 2
    line = _error_line(capsys, "recommend")
    assert line.startswith(
        f"llmrec recommend: error: {out}: No space left on device; free some disk space"
    ), line
    assert not out.exists() and _temps(disk) == [disk / ".recs.parquet.llmrec-batch"]
    for chunk in (disk / ".recs.parquet.llmrec-batch").glob("chunk-*"):  # only complete chunks wait there
        pq.read_table(chunk)
    filler.unlink()
    _resize(disk, "16m")  # the chunks and the file they make need room together
    assert main([*argv, "--out", str(out)]) == 0
    assert "resumed after" in capsys.readouterr().out
    assert out.read_bytes() == (tmp_path / "reference.parquet").read_bytes() and _temps(disk) == []


def test_images_onto_a_full_disk_stop_with_one_line_then_resume(tmp_path, tmpfs, capsys):
    """Regression: a full disk failed the images one by one, each recorded as a bad image ('error: OSError:
    [Errno 28] No space left on device'), and the command ended with exit 0. Now the first image that
    cannot be stored stops the run with the line naming it; the next run resumes."""
    from PIL import Image

    from llmrec.data.images import load_manifest
    from llmrec.data.processing import ProcessConfig, finalize, write_dataset

    items, inter = synthetic_tables()
    items["image"] = [f"pics/{i}.png" for i in items["item_id"]]  # in the dataset folder: copied in
    data = tmp_path / "data"
    write_dataset(finalize(items, inter, ProcessConfig(kcore=0, num_negatives=5), {}, {}, []), data)
    (data / "pics").mkdir()
    rng = np.random.default_rng(0)
    for item in items["item_id"]:  # noise: about 12 KB each
        pixels = rng.integers(0, 255, size=(64, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(data / "pics" / f"{item}.png")
    disk = tmpfs(data / "images")
    filler = _fill(disk, leave=24576)  # room for an image and the manifest, not for 40 images
    assert main(["images", "--data", str(data), "--workers", "1"]) == 2
    line = one_error_line(capsys, "images")
    assert f"{disk / 'files'}" in line and "No space left on device; free some disk space" in line, line
    assert [p for p in disk.rglob("*") if _ATOMIC_TEMP.match(p.name)] == []
    _visible_files_are_complete(disk)
    if (disk / "manifest.parquet").exists():  # what finished is kept; no image is called bad for the disk
        assert not load_manifest(data)["error"].fillna("").str.contains("No space left").any()
    filler.unlink()
    _resize(disk, "2m")
    assert main(["images", "--data", str(data), "--workers", "1"]) == 0
    assert set(load_manifest(data)["status"]) == {"ok"}


def test_a_manifest_that_cannot_be_saved_while_stopping_hides_not_what_stopped_the_run(
    tmp_path, capsys, monkeypatch
):
    """Regression (seen under load): a full disk stopped an image's write, then the manifest saved on the
    way out failed on the same disk, and the line named the manifest instead of the image's folder."""
    from llmrec.data import images
    from llmrec.data.processing import ProcessConfig, finalize, write_dataset

    items, inter = synthetic_tables()
    items["image"] = [f"pics/{i}.png" for i in items["item_id"]]
    data = tmp_path / "data"
    write_dataset(finalize(items, inter, ProcessConfig(kcore=0, num_negatives=5), {}, {}, []), data)

    def first(*args, **kwargs):
        raise llmrec.errors.LlmrecError("the image's write failed", file=data / "images" / "files")

    def manifest(*args, **kwargs):
        raise llmrec.errors.LlmrecError(
            "the manifest's write failed", file=data / "images" / "manifest.parquet"
        )

    monkeypatch.setattr(images, "_run_job", first)
    monkeypatch.setattr(images, "_write_manifest", manifest)
    assert main(["images", "--data", str(data), "--workers", "1"]) == 2
    assert "the image's write failed" in one_error_line(capsys, "images")


# fills a 40 x 1024 feature through the store's memory map and says what it raised
_FEATURE_CHILD = r"""
import sys
import numpy as np
from llmrec.features.store import compute_feature
def encode(rows):
    return np.ones((len(rows), 1024)), np.zeros(len(rows), dtype=bool)
try:
    compute_feature(sys.argv[1], "text", 40, 1024, encode, {"encoder": "ones"})
except OSError as e:
    print(e.errno, e.filename)
    sys.exit(3)
"""


def test_a_feature_onto_a_nearly_full_disk_is_enospc_naming_it_not_a_bus_error(tmp_path, tmpfs):
    """Regression: the memory-mapped feature was a sparse file; storing rows into it on a full disk killed
    the process with SIGBUS (`llmrec features` ended with exit 135, no message at all). Its space is now
    allocated when it is created: ENOSPC naming the feature (the CLI's line), nothing left behind."""
    features = tmpfs(tmp_path / "features")
    _fill(features, leave=8192)  # the header fits, the 40 x 1024 floats do not
    env = {**os.environ, "PYTHONPATH": str(Path(llmrec.__file__).resolve().parents[1])}
    cmd = [sys.executable, "-c", _FEATURE_CHILD, str(features)]
    child = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert child.returncode == 3, (child.returncode, child.stderr[-2000:])
    assert child.stdout.split() == [str(errno.ENOSPC), str(features / "text.npy")]
    assert sorted(p.name for p in features.iterdir()) == ["filler"]  # the partial arrays are gone


# ----------------------------------------------------------------------------- DuckDB out of memory


def test_prepare_out_of_memory_names_the_limit(tmp_path, capsys):
    """Regression: `--memory-limit 1MB` crashed with `internal error (OutOfMemoryException: ...)`, exit 70."""
    out = tmp_path / "ds"
    assert main(_prepare_argv(tmp_path, out, "--memory-limit", "1MB")) == 2
    line = one_error_line(capsys, "prepare")
    assert "DuckDB ran out of memory under --memory-limit 1MB" in line, line
    assert line.endswith("; raise --memory-limit (e.g. 2GB), or use --engine pandas"), line
    assert not out.exists() and _temps(tmp_path) == []


def test_duckdb_spilling_onto_a_full_disk_names_the_output_folder(tmp_path, tmpfs):
    """Beyond its memory limit DuckDB spills into the output folder; on a full disk it says "out of
    memory" too ("failed to offload data block"): that is a full disk naming the folder, not the limit."""
    import duckdb

    from llmrec.data.columnar import connect, out_of_memory

    con = connect("40MB", tmpfs(tmp_path / "disk", "256k") / "spill", threads=1)
    with pytest.raises(duckdb.OutOfMemoryException) as raised:
        con.execute("CREATE TEMP TABLE t AS SELECT md5(i::VARCHAR) AS b FROM range(3000000) r(i) ORDER BY b")
    con.close()
    out = tmp_path / "disk" / "ds"
    e = out_of_memory(raised.value, PrepareConfig(dataset="table", out=str(out), memory_limit="40MB"))
    assert isinstance(e, OSError) and e.errno == errno.ENOSPC and e.filename == str(out)
    assert _os_error_line(e).startswith(f"{out}: no space left on device for DuckDB's spill files")
    assert _os_error_line(e).endswith("; free some disk space and re-run the same command (it resumes)")


# ----------------------------------------------------------------------------- each writer on a full disk


def _torch_to_path(path: Path) -> None:
    import torch

    with atomic_path(path) as tmp:  # torch's own file writer: no errno in what it raises
        torch.save({"w": torch.zeros(40000)}, tmp)


def _safetensors(path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({"w": torch.zeros(40000)}, str(tmp))


def _numpy(path: Path) -> None:
    from llmrec.utils.io import write_npy_atomic

    write_npy_atomic(path, np.zeros(40000))


def _parquet(path: Path) -> None:
    from llmrec.utils.io import write_parquet_atomic

    write_parquet_atomic(pd.DataFrame({"a": np.random.default_rng(0).normal(size=40000)}), path)


def _png(path: Path) -> None:
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 255, size=(300, 300, 3), dtype=np.uint8)
    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(pixels).save(tmp)


@pytest.mark.parametrize(
    "write", [_torch_to_path, _safetensors, _numpy, _parquet, _png], ids=lambda f: f.__name__[1:]
)
def test_every_writer_on_a_full_disk_raises_enospc_naming_the_file(write, tmp_path, tmpfs):
    """torch (RuntimeError: unexpected pos), safetensors (SafetensorError), numpy (a short write without
    errno), pyarrow and PIL (no file name) all become ENOSPC naming the final file; no temp file stays."""
    disk = tmpfs(tmp_path / "disk")
    target = disk / "out.bin"
    with pytest.raises(OSError) as raised:
        write(target)
    assert (raised.value.errno, raised.value.filename) == (errno.ENOSPC, str(target))
    assert list(disk.iterdir()) == []


# ----------------------------------------------------------------------------- injected faults and kill -9


@dataclass
class Command:
    """One writer's command as the fault tests drive it: ``llmrec argv`` writes under ``root``."""

    name: str
    argv: list[str]
    writes: tuple[str, ...]  # its writers, where faults go
    named: Path  # what its error line must name
    root: Path  # where it writes (checked for half files)
    result: Callable[[], object]  # what a finished run produced (equal for equal runs)
    reset: Callable[[], None]  # remove the output: the next run starts from nothing
    fake_encoder: bool = False  # the child of a kill test needs HashTextEncoder too
    calls: int = 0  # writer calls of an uninterrupted run
    reference: object = None  # its result


_ATOMIC_TEMP = re.compile(r"^\..*\.\d+\.[a-z0-9_]{8}\.partial")  # atomic_path / partial_dir temps


def _command(name: str, tmp_path: Path, trained: Trained, monkeypatch) -> Command:
    """``name``'s command in ``tmp_path``, with the result and writer calls of an uninterrupted run."""
    if name == "prepare":
        out = tmp_path / "ds"
        cmd = Command(name, _prepare_argv(tmp_path, out), PREPARE_WRITES, out, tmp_path, lambda: file_bytes(out),
                      lambda: shutil.rmtree(out, ignore_errors=True))  # fmt: skip
    elif name == "train":  # its reference is the module's run (same options, another folder)
        run = tmp_path / "run"
        argv = ["train", "sasrec", "--data", str(trained.data), "--out", str(run), *SASREC]
        cmd = Command(name, argv, TRAIN_WRITES, run, run, lambda: _run_result(run),
                      lambda: shutil.rmtree(run, ignore_errors=True), calls=trained.calls,
                      reference=_run_result(trained.sasrec))  # fmt: skip
        return cmd
    elif name == "features":
        data = tmp_path / "data"
        shutil.copytree(trained.data, data)
        monkeypatch.setattr(build, "load_text_encoder", lambda *a, **k: HashTextEncoder())
        argv = ["features", "--data", str(data), "--batch-size", "16"]
        feats = data / "features"
        cmd = Command(name, argv, FEATURES_WRITES, feats, data,
                      lambda: ((feats / "text.npy").read_bytes(), (feats / "text.missing.npy").read_bytes()),
                      lambda: shutil.rmtree(feats, ignore_errors=True), fake_encoder=True)  # fmt: skip
    else:
        out = tmp_path / "recs.parquet"
        argv = ["recommend", str(trained.popularity), "--all-users", "--k", "20", "--chunk-users", "5"]

        def reset() -> None:
            out.unlink(missing_ok=True)
            shutil.rmtree(tmp_path / ".recs.parquet.llmrec-batch", ignore_errors=True)

        cmd = Command(
            name, [*argv, "--out", str(out)], RECOMMEND_WRITES, out, tmp_path, out.read_bytes, reset
        )
    with _writes(cmd.writes) as seen:
        assert main(cmd.argv) == 0
    cmd.calls, cmd.reference = seen.calls, cmd.result()
    return cmd


def _fails_then_resumes(cmd: Command, n: int, code: int, capsys) -> None:
    """The ``n``-th write of ``cmd`` fails with ``code``: one line naming the path, exit 2, no half file;
    the same command then finishes with the result of an uninterrupted run."""
    cmd.reset()
    capsys.readouterr()
    with _writes(cmd.writes, n, code) as injected:
        assert main(cmd.argv) == 2
    assert injected.failed, "the fault was never injected"
    line = _error_line(capsys, cmd.name)
    assert f"{cmd.named}" in line and f"{os.strerror(code)}; {HINTS[code]}" in line, (
        n,
        injected.failed,
        line,
    )
    assert [p for p in cmd.root.rglob("*") if _ATOMIC_TEMP.match(p.name)] == []  # removed on the way out
    _visible_files_are_complete(cmd.root)
    assert main(cmd.argv) == 0, (n, injected.failed)
    assert cmd.result() == cmd.reference, (n, injected.failed)
    assert _temps(cmd.root) == []


def _killed_then_resumes(cmd: Command, n: int, when: str, tmp_path: Path) -> None:
    """kill -9 at the ``n``-th write of ``cmd`` (``when``: before or after it wrote): only complete files
    are visible, and the same command finishes with the result of an uninterrupted run."""
    cmd.reset()
    _kill_at(n, when, cmd, tmp_path)
    _visible_files_are_complete(cmd.root)
    assert main(cmd.argv) == 0, (n, when)
    assert cmd.result() == cmd.reference, (n, when)
    assert _temps(cmd.root) == []


COMMANDS = ["prepare", "train", "features", "recommend"]
CODES = {"ENOSPC": errno.ENOSPC, "EACCES": errno.EACCES}


@pytest.mark.parametrize("code", CODES)
@pytest.mark.parametrize("name", COMMANDS)
def test_a_write_failing_at_a_random_point_is_one_line_then_the_command_finishes(
    name, code, trained, tmp_path, monkeypatch, capsys
):
    cmd = _command(name, tmp_path, trained, monkeypatch)
    _fails_then_resumes(cmd, _draw(f"{name}-{code}", cmd.calls), CODES[code], capsys)


@pytest.mark.parametrize("name", COMMANDS)
def test_killed_at_a_random_write_the_same_command_finishes_the_same(name, trained, tmp_path, monkeypatch):
    cmd = _command(name, tmp_path, trained, monkeypatch)
    n = _draw(f"{name}-kill", cmd.calls)
    _killed_then_resumes(cmd, n, "before" if n % 2 else "after", tmp_path)


@pytest.mark.fuzz
@pytest.mark.timeout(7200)  # train: about 25 write points, each failed twice and killed twice
@pytest.mark.parametrize("name", COMMANDS)
def test_fuzz_every_write_failing_and_killed(name, trained, tmp_path, monkeypatch, capsys):
    """The long campaign (pytest -m fuzz): every write point of each command, each fault."""
    cmd = _command(name, tmp_path, trained, monkeypatch)
    for n in range(1, cmd.calls + 1):
        for code in CODES.values():
            _fails_then_resumes(cmd, n, code, capsys)
        for when in ("before", "after"):
            _killed_then_resumes(cmd, n, when, tmp_path)


def test_a_batch_killed_once_its_file_is_in_place_is_finished_by_the_same_command(
    trained, tmp_path, monkeypatch
):
    """Regression (found by the fuzz campaign): killed after the output file was renamed into place but
    before the chunk folder was removed, the same command refused with 'exists already' and left the
    chunks behind. Now it recognises its own finished file (by the settings it records) and cleans up."""
    cmd = _command("recommend", tmp_path, trained, monkeypatch)
    _killed_then_resumes(cmd, cmd.calls, "after", tmp_path)  # the last write: the output's rename


def test_a_run_killed_while_writing_its_config_leaves_no_temp_after_the_rerun(trained, tmp_path):
    """Regression (found by the fuzz campaign): killed before its config.json was in place, a run kept the
    config's temp file for good: the same command, finding no config.json, never removed it."""
    run = tmp_path / "run"
    run.mkdir()
    (run / ".config.json.4194999.abcdefgh.partial").write_text('{"model": ')  # what the kill left
    assert main(["train", "popularity", "--data", str(trained.data), "--out", str(run)]) == 0
    assert _temps(run) == []


def test_a_run_killed_while_writing_a_plot_leaves_no_temp_after_the_rerun(trained, tmp_path):
    """Regression (found by the fuzz campaign): the temp file of a plot (.training_curve.png.<pid>.<rand>
    .partial.png: savefig wants its extension) was never removed by the resumed run."""
    run = tmp_path / "run"
    assert main(["train", "popularity", "--data", str(trained.data), "--out", str(run)]) == 0
    (run / ".popularity_breakdown.png.4194999.abcdefgh.partial.png").write_bytes(b"\x89PNG")  # a kill's
    assert main(["train", "popularity", "--data", str(trained.data), "--out", str(run)]) == 0
    assert _temps(run) == []
