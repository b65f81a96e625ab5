"""Features, CF exports, describe and images under bad input and faults (issue #15, items 2, 4 and 6):
features are keyed by the exact bytes they were computed from, a damaged store file or a missing model
file is one line, and kill -9 resumes to byte-identical outputs."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import llmrec
from conftest import file_bytes as _snapshot
from conftest import one_error_line as _one_error_line
from conftest import synthetic_tables
from llmrec.cli import main
from llmrec.data.dataset import Dataset
from llmrec.data.processing import ProcessConfig, finalize, write_dataset
from llmrec.data.schema import make_interactions, make_items
from llmrec.errors import LlmrecError
from llmrec.features import build
from llmrec.features.build import FeaturesConfig, build_features
from llmrec.features.store import load_item_feature


@pytest.fixture(autouse=True)
def _offline(tmp_path, monkeypatch):
    """No hub lookups; a crash log (exit 70) lands under the test's folder."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("LLMREC_CRASH_DIR", str(tmp_path / "crashes"))


class HashTextEncoder:
    """A deterministic stand-in for a sentence encoder: 8 numbers from the text's sha256."""

    id, dim = "hash", 8

    def __init__(self) -> None:
        self.calls: list[str] = []

    def encode(self, texts: list[str]) -> np.ndarray:
        self.calls.extend(texts)
        return np.array(
            [np.frombuffer(hashlib.sha256(t.encode()).digest()[:8], dtype=np.uint8) for t in texts],
            dtype=np.float32,
        )


class MeanColourEncoder:
    """A stand-in image tower: the mean RGB of the image."""

    id, dim, pooling = "mean-colour", 3, "mean"

    def encode(self, images: list) -> np.ndarray:
        return np.array([np.asarray(im, dtype=np.float32).mean((0, 1)) for im in images], dtype=np.float32)


@pytest.fixture
def fake_encoders(monkeypatch):
    text = HashTextEncoder()
    monkeypatch.setattr(build, "load_text_encoder", lambda *a, **k: text)
    monkeypatch.setattr(build, "load_image_encoder", lambda *a, **k: MeanColourEncoder())
    return text


def _prepare(out: Path, title: str = "Item {i}", seed: int = 3) -> Path:
    """The synthetic dataset (30 users, 40 items) with titles from ``title``: a re-prepare in place."""
    items, inter = synthetic_tables()
    items["title"] = [title.format(i=i) for i in range(len(items))]
    write_dataset(
        finalize(items, inter, ProcessConfig(kcore=0, num_negatives=10, seed=seed), {}, {}, []), out
    )
    return out


# ----------------------------------------------------------------------------- nothing stale


def test_text_feature_is_stale_after_a_reprepare_that_changed_the_titles(tmp_path, fake_encoders, caplog):
    """Regression: the manifest covered item ids only, so new titles kept the old text feature 'up to date'."""
    data = _prepare(tmp_path / "ds")
    cfg = FeaturesConfig(data=str(data), batch_size=16)
    first = build_features(cfg)["text"]
    assert first["dataset_identity"] == Dataset(data).identity and len(fake_encoders.calls) == 40
    old = np.load(data / "features" / "text.npy")

    _prepare(data, title="Renamed {i}")  # same ids, every title changed
    with pytest.raises(LlmrecError, match="stale: the item texts changed") as e:
        load_item_feature(Dataset(data), "text", 40)
    assert "llmrec features" in str(e.value)

    fake_encoders.calls.clear()
    with caplog.at_level("WARNING"):
        second = build_features(cfg)["text"]
    assert "feature 'text' is stale (changed: texts_sha256)" in caplog.text
    assert len(fake_encoders.calls) == 40 and all("Renamed" in t for t in fake_encoders.calls)
    assert second["texts_sha256"] != first["texts_sha256"]
    assert not np.array_equal(np.load(data / "features" / "text.npy"), old)
    load_item_feature(Dataset(data), "text", 40)  # fresh again

    fake_encoders.calls.clear()
    build_features(cfg)  # nothing changed: nothing encoded
    assert fake_encoders.calls == []


def _image_dataset(root: Path) -> tuple[Path, Path]:
    img = root / "img"
    img.mkdir(parents=True)
    records = []
    for i in range(6):
        Image.new("RGB", (8, 8), (40 * i, 10, 200 - 30 * i)).save(img / f"{i}.png")
        records.append({"item_id": str(i), "title": f"t{i}", "image": str(img / f"{i}.png")})
    inter = [
        {"user_id": f"u{u}", "item_id": str(i), "timestamp": 10 * u + i}
        for u in range(4)
        for i in range(6)
        if i != u
    ]
    items, inter = make_items(records, "t"), make_interactions(inter, "t")
    write_dataset(finalize(items, inter, ProcessConfig(kcore=0, num_negatives=1), {}, {}, []), root / "ds")
    return root / "ds", img


def test_image_feature_is_keyed_by_the_image_bytes(tmp_path, fake_encoders, caplog):
    """Regression: the key was path + size + mtime, so an image replaced by one of the same size and
    modification time kept its old feature."""
    data, img = _image_dataset(tmp_path)
    cfg = FeaturesConfig(data=str(data), text=False, image=True, batch_size=4)
    build_features(cfg)
    before = np.load(data / "features" / "image.npy")
    path = img / "2.png"
    st = path.stat()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(path)  # same size (a flat image), other pixels
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size
    with pytest.raises(LlmrecError, match="stale: the item images changed"):
        load_item_feature(Dataset(data), "image", 6)
    with caplog.at_level("WARNING"):
        build_features(cfg)
    assert "feature 'image' is stale" in caplog.text
    after = np.load(data / "features" / "image.npy")
    np.testing.assert_allclose(after[2], [1, 2, 3])
    np.testing.assert_array_equal(np.delete(after, 2, 0), np.delete(before, 2, 0))


SASREC = ["-o", "hidden=8", "-o", "max_len=6", "-o", "epochs=1", "--no-ctr", "--no-full-ranking", "--ks", "5"]


def test_cf_export_refuses_a_run_on_another_dataset_of_the_same_size(tmp_path, capsys):
    """Regression: the other-dataset check compared user/item counts only."""
    data, other = _prepare(tmp_path / "ds"), _prepare(tmp_path / "other", seed=4)  # same sizes
    run = tmp_path / "run"
    assert main(["train", "sasrec", "--data", str(data), "--out", str(run), *SASREC]) == 0
    capsys.readouterr()
    before = _snapshot(other)
    assert main(["features", "--data", str(other), "--cf", str(run)]) == 2
    line = _one_error_line(capsys, "features")
    assert str(run) in line and "not the dataset the model was trained on" in line
    assert _snapshot(other) == before

    assert main(["features", "--data", str(data), "--cf", str(run)]) == 0
    manifest = json.loads((data / "features" / "sasrec_item.json").read_text())
    assert manifest["dataset_identity"] == Dataset(data).identity
    load_item_feature(Dataset(data), "sasrec_item", 40)
    _prepare(data, seed=9)  # re-prepared: other frozen candidates, so another dataset identity
    with pytest.raises(LlmrecError, match="stale: it was exported from a run on another dataset"):
        load_item_feature(Dataset(data), "sasrec_item", 40)


# ----------------------------------------------------------------------------- damaged store files


@pytest.mark.parametrize(
    "damage",
    ["manifest_not_json", "manifest_list", "array_truncated", "array_garbage", "mask_garbage"],
)
def test_a_damaged_feature_file_is_one_line_and_features_recomputes_it(
    tmp_path, fake_encoders, capsys, damage
):
    data = _prepare(tmp_path / "ds")
    build_features(FeaturesConfig(data=str(data), batch_size=16))
    good = np.load(data / "features" / "text.npy")
    feats = data / "features"
    target = {
        "manifest_not_json": (feats / "text.json", b'{"name": "text", "dim": '),
        "manifest_list": (feats / "text.json", b"[1, 2]"),
        "array_truncated": (feats / "text.npy", (feats / "text.npy").read_bytes()[:100]),
        "array_garbage": (feats / "text.npy", b"\x00not an npy file"),
        "mask_garbage": (feats / "text.missing.npy", b"PK\x03\x04garbage"),
    }[damage]
    target[0].write_bytes(target[1])
    with pytest.raises(LlmrecError) as e:
        load_item_feature(Dataset(data), "text", 40)
    assert str(target[0]) in str(e.value) and "llmrec features" in str(e.value)
    assert len(str(e.value).splitlines()) == 1
    # the command recomputes what it cannot read
    assert main(["features", "--data", str(data)]) == 0
    np.testing.assert_array_equal(np.load(data / "features" / "text.npy"), good)
    load_item_feature(Dataset(data), "text", 40)


# ----------------------------------------------------------------------------- model files


def _damaged_llm(tiny_llm: str, root: Path, how: str) -> str:
    """A copy of the tiny LM folder damaged in one way."""
    import shutil

    folder = root / f"llm-{how}"
    shutil.copytree(tiny_llm, folder)
    weights = folder / "model.safetensors"
    if how == "truncated_weights":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif how == "no_weights":
        weights.unlink()
    elif how == "garbage_config":
        (folder / "config.json").write_text("{not json")
    return str(folder)


def test_describe_llm_that_is_a_missing_local_file_is_one_line_without_a_hub_lookup(
    synthetic_dataset, tmp_path, capsys, monkeypatch
):
    """Regression: `describe --llm <missing .gguf>` fell through to a hub lookup."""
    import huggingface_hub

    def no_hub(*a, **k):
        raise AssertionError("hub lookup")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_hub)
    before = _snapshot(synthetic_dataset)
    for name in [
        "missing.gguf",
        str(tmp_path / "nowhere" / "model.gguf"),
        "./no-such-folder",
        "~/no/such/llm",
    ]:
        assert main(["describe", "--data", str(synthetic_dataset), "--llm", name]) == 2
        line = _one_error_line(capsys, "describe")
        assert name in line and "not found" in line, line
    garbage = tmp_path / "bad.gguf"
    garbage.write_bytes(b"GGUF\x03\x00\x00\x00" + os.urandom(64))
    assert main(["describe", "--data", str(synthetic_dataset), "--llm", str(garbage)]) == 2
    line = _one_error_line(capsys, "describe")
    assert str(garbage) in line and "cannot load language model" in line
    assert _snapshot(synthetic_dataset) == before


@pytest.mark.parametrize("how", ["truncated_weights", "no_weights", "garbage_config"])
def test_describe_with_a_damaged_model_folder_is_one_line(synthetic_dataset, tmp_path, tiny_llm, capsys, how):
    llm = _damaged_llm(tiny_llm, tmp_path, how)
    assert main(["describe", "--data", str(synthetic_dataset), "--llm", llm, "--max-new-tokens", "2"]) == 2
    line = _one_error_line(capsys, "describe")
    assert llm in line and "cannot load language model" in line
    assert not (synthetic_dataset / "texts").exists()


def test_features_encoder_that_is_a_missing_or_damaged_path_is_one_line(synthetic_dataset, tmp_path, capsys):
    before = _snapshot(synthetic_dataset)
    cases = [
        (["--text-encoder", "./no-such-encoder"], "text encoder file or folder not found"),
        (["--text-encoder", str(tmp_path / "x" / "y")], "text encoder file or folder not found"),
        (
            ["--image", "--no-text", "--image-encoder", "./no-such-tower"],
            "image encoder file or folder not found",
        ),
    ]
    broken = tmp_path / "broken-encoder"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    (broken / "modules.json").write_text("[{")
    cases += [
        (["--text-encoder", str(broken)], "cannot load text encoder"),
        (["--image", "--no-text", "--image-encoder", str(broken)], "cannot load image encoder"),
    ]
    for args, expected in cases:
        assert main(["features", "--data", str(synthetic_dataset), *args]) == 2, args
        line = _one_error_line(capsys, "features")
        assert expected in line and args[-1] in line, line
    assert _snapshot(synthetic_dataset) == before


def test_a_damaged_texts_table_is_one_line_for_readers_and_regenerated_by_describe(
    synthetic_dataset, tiny_llm, capsys
):
    from llmrec.llm.describe import load_texts

    args = [
        "describe",
        "--data",
        str(synthetic_dataset),
        "--llm",
        tiny_llm,
        "--max-new-tokens",
        "2",
        "--limit",
        "3",
    ]
    assert main(args) == 0
    table = synthetic_dataset / "texts" / "from_title.parquet"
    good = table.read_bytes()
    table.write_bytes(good[: len(good) // 2])
    with pytest.raises(LlmrecError, match="unreadable texts table") as e:
        load_texts(synthetic_dataset, "from_title")
    assert str(table) in str(e.value) and len(str(e.value).splitlines()) == 1
    capsys.readouterr()
    assert main(args) == 0  # the same command starts over
    assert table.read_bytes() == good


# ----------------------------------------------------------------------------- kill -9


def _die_at_step(k: int, command: Callable[[], object]) -> bool:
    """Run ``command`` in a forked child that is killed (``os._exit``: no cleanup, like kill -9) just
    before its k-th file step (an ``os.replace`` or a ``Path.unlink``); True when it died there, False
    when it finished with fewer steps."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        steps = [0]
        real_replace, real_unlink = os.replace, Path.unlink

        def step() -> None:
            steps[0] += 1
            if steps[0] == k:
                os._exit(9)

        def replace(*a, **kw):
            step()
            return real_replace(*a, **kw)

        def unlink(self, *a, **kw):
            step()
            return real_unlink(self, *a, **kw)

        os.replace, Path.unlink = replace, unlink
        try:
            command()
        except BaseException:
            os._exit(3)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    assert code in (0, 9), f"the interrupted command failed (exit {code})"
    return code == 9


def _outputs(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (temp files included: none may be left) and its bytes."""
    return _snapshot(folder) if folder.exists() else {}


def test_features_killed_at_every_file_step_resumes_to_identical_files(tmp_path, fake_encoders):
    data = _prepare(tmp_path / "ds")
    cfg = FeaturesConfig(data=str(data), batch_size=8)
    build_features(cfg)
    expected = _outputs(data / "features")
    assert sorted(expected) == ["text.json", "text.missing.npy", "text.npy"]
    k = 1
    while True:
        shutil.rmtree(data / "features")
        died = _die_at_step(k, lambda: build_features(cfg))
        build_features(cfg)  # the same command again
        assert _outputs(data / "features") == expected, f"after a kill at step {k}"
        if not died:
            break
        k += 1
    assert k > 8  # every progress checkpoint and every publishing step was a kill point


def _llmrec(*args: str, tmp_path: Path) -> subprocess.Popen:
    """``python -m llmrec ARGS`` with this checkout's code, offline, one thread."""
    env = dict(
        os.environ,
        PYTHONPATH=str(Path(llmrec.__file__).resolve().parents[1]),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        OMP_NUM_THREADS="1",
        LLMREC_CRASH_DIR=str(tmp_path / "crashes"),
    )
    log = open(tmp_path / "subprocess.log", "ab")  # noqa: SIM115 (closed with the process)
    return subprocess.Popen([sys.executable, "-m", "llmrec", *args], env=env, stdout=log, stderr=log)


def _kill_when(proc: subprocess.Popen, ready: Callable[[], bool], timeout: float = 120) -> bool:
    """SIGKILL ``proc`` as soon as ``ready()``; True when it was killed, False when it ended first."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if ready():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return proc.returncode == -signal.SIGKILL
        time.sleep(0.005)
    assert proc.poll() is not None, "the command hung"
    return False


def _progress(data: Path, name: str = "text") -> int:
    try:
        return int(json.loads((data / "features" / f".{name}.progress.json").read_text())["done"])
    except (OSError, ValueError, KeyError):
        return 0


@pytest.mark.slow
def test_features_command_killed_twice_resumes_to_identical_files(tmp_path):
    """kill -9 of `llmrec features` (the real MiniLM encoder) early, then again in the resumed run."""
    items, inter = synthetic_tables(n_users=40, n_items=160)
    for name in ("a", "b"):
        write_dataset(
            finalize(items, inter, ProcessConfig(kcore=0, num_negatives=5), {}, {}, []), tmp_path / name
        )
    args = ["features", "--batch-size", "4"]
    assert main([*args, "--data", str(tmp_path / "a")]) == 0
    expected = _outputs(tmp_path / "a" / "features")
    data = tmp_path / "b"
    count = len(Dataset(data).items)
    killed = [
        _kill_when(_llmrec(*args, "--data", str(data), tmp_path=tmp_path), lambda: _progress(data) >= 8),
        _kill_when(
            _llmrec(*args, "--data", str(data), tmp_path=tmp_path), lambda: _progress(data) >= count // 2
        ),
    ]
    assert any(killed), "neither run was interrupted"
    assert not (data / "features" / "text.json").exists()
    assert main([*args, "--data", str(data)]) == 0
    assert _outputs(data / "features") == expected


def _texts(data: Path, name: str = "from_title") -> dict[str, object]:
    """The texts table's bytes, and its manifest without its creation time."""
    manifest = json.loads((data / "texts" / f"{name}.json").read_text())
    manifest.pop("created")
    return {"table": (data / "texts" / f"{name}.parquet").read_bytes(), "manifest": manifest}


def test_describe_killed_at_every_file_step_resumes_to_identical_texts(tmp_path, tiny_llm):
    from llmrec.llm.describe import DescribeConfig, run_describe

    data = _prepare(tmp_path / "ds")
    cfg = DescribeConfig(data=str(data), llm=tiny_llm, max_new_tokens=3, batch_size=4, limit=12)
    run_describe(cfg)
    expected = _texts(data)
    k = 1
    while True:
        shutil.rmtree(data / "texts")
        died = _die_at_step(k, lambda: run_describe(cfg))
        run_describe(cfg)
        assert _texts(data) == expected, f"after a kill at step {k}"
        assert sorted(p.name for p in (data / "texts").iterdir()) == ["from_title.json", "from_title.parquet"]
        if not died:
            break
        k += 1
    assert k > 6  # both files of every batch's checkpoint were kill points


def test_describe_command_killed_resumes_to_identical_texts(tmp_path, tiny_llm):
    data = _prepare(tmp_path / "ds")
    args = ["describe", "--data", str(data), "--llm", tiny_llm, "--max-new-tokens", "3", "--batch-size", "2"]
    assert main(args) == 0
    expected = _texts(data)
    shutil.rmtree(data / "texts")
    table = data / "texts" / "from_title.parquet"
    assert _kill_when(_llmrec(*args, tmp_path=tmp_path), table.exists)
    assert main(args) == 0
    assert _texts(data) == expected
    assert sorted(p.name for p in (data / "texts").iterdir()) == ["from_title.json", "from_title.parquet"]


def _images_dataset(root: Path, n_items: int, inside: bool) -> Path:
    """A dataset of ``n_items`` items, each with a small PNG: under the dataset's raw/ (``inside``; the
    images command copies those into images/files/) or in the folder ``root/img`` (used in place)."""
    items, inter = synthetic_tables(n_users=max(10, n_items // 8), n_items=n_items, per_user=12)
    items["image"] = [f"raw/{i}.png" if inside else "" for i in items["item_id"]]
    data = root / "ds"
    write_dataset(finalize(items, inter, ProcessConfig(kcore=0, num_negatives=2), {}, {}, []), data)
    folder = data / "raw" if inside else root / "img"
    folder.mkdir(parents=True, exist_ok=True)
    for n, item_id in enumerate(Dataset(data).items["item_id"]):
        if n % 7 != 3:  # some items have no image: their status is recorded too
            Image.new("RGB", (20, 20), (n % 256, 3 * n % 256, 90)).save(folder / f"{item_id}.png")
    return data


def test_images_killed_at_every_file_step_resumes_to_identical_files(tmp_path, monkeypatch):
    from llmrec.data import images

    monkeypatch.setattr(images, "CHECKPOINT_EVERY", 4)
    data = _images_dataset(tmp_path, 24, inside=True)
    cfg = images.ImagesConfig(data=str(data), workers=2)
    images.fetch_images(cfg)
    expected = _outputs(data / "images")
    assert len(expected) > 10 and all(not n.startswith(".") and "/." not in n for n in expected)
    k = 1
    while True:
        shutil.rmtree(data / "images")
        died = _die_at_step(k, lambda: images.fetch_images(cfg))
        images.fetch_images(cfg)
        assert _outputs(data / "images") == expected, f"after a kill at step {k}"
        if not died:
            break
        k += 1
    assert k > 20  # every copied file and every manifest checkpoint was a kill point


def test_images_command_killed_resumes_to_identical_manifest(tmp_path):
    data = _images_dataset(tmp_path, 800, inside=False)
    args = ["images", "--data", str(data), "--image-dir", str(tmp_path / "img"), "--workers", "2"]
    reference = tmp_path / "reference"
    shutil.copytree(data, reference)
    assert main([*args[:2], str(reference), *args[3:]]) == 0
    expected = _outputs(reference / "images")
    manifest = data / "images" / "manifest.parquet"
    assert _kill_when(_llmrec(*args, tmp_path=tmp_path), manifest.exists)  # at the first checkpoint
    assert main(args) == 0
    assert _outputs(data / "images") == expected


# ----------------------------------------------------------------------------- fuzz: damaged store files

STORE_FILES = ["text.json", "text.npy", "text.missing.npy"]
DAMAGE = st.tuples(
    st.sampled_from(STORE_FILES),
    st.sampled_from(["truncate", "flip", "replace", "append", "delete"]),
    st.integers(min_value=0, max_value=10**6),  # where
    st.binary(min_size=1, max_size=16),  # what
)


def _damage(path: Path, how: str, where: int, what: bytes) -> None:
    data = path.read_bytes()
    at = where % (len(data) + 1)
    if how == "truncate":
        path.write_bytes(data[: min(at, len(data) - 1)])
    elif how == "flip":
        at = min(at, len(data) - 1)
        path.write_bytes(data[:at] + bytes([data[at] ^ (what[0] or 1)]) + data[at + 1 :])
    elif how == "replace":
        path.write_bytes(data[:at] + what + data[at + len(what) :])
    elif how == "append":
        path.write_bytes(data + what)
    else:
        path.unlink()


def _check_damaged_store(clean: Path, work: Path, damage: tuple[str, str, int, bytes]) -> None:
    """Whatever is done to one store file: loading is one LlmrecError line naming a store file, or gives
    the very same values and mask; `llmrec features` afterwards restores the same values."""
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(clean, work)
    feats = work / "features"
    good = (np.load(feats / "text.npy"), np.load(feats / "text.missing.npy"))
    name, how, where, what = damage
    _damage(feats / name, how, where, what)
    try:
        f = load_item_feature(Dataset(work), "text", 40)
    except LlmrecError as e:
        line = str(e)
        assert len(line.splitlines()) == 1 and str(feats) in line and "llmrec features" in line, line
    else:  # the change touched nothing the feature is made of (e.g. the manifest's own name)
        np.testing.assert_array_equal(f.values, good[0])
        np.testing.assert_array_equal(f.missing, good[1])
    assert main(["features", "--data", str(work), "--batch-size", "16"]) == 0
    f = load_item_feature(Dataset(work), "text", 40)
    np.testing.assert_array_equal(f.values, good[0])
    np.testing.assert_array_equal(f.missing, good[1])


@pytest.fixture
def clean_store(tmp_path, fake_encoders) -> Path:
    data = _prepare(tmp_path / "clean")
    build_features(FeaturesConfig(data=str(data), batch_size=16))
    return data


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(damage=DAMAGE)
def test_any_damage_to_a_feature_file_is_one_line_or_harmless(clean_store, tmp_path, damage, capsys):
    _check_damaged_store(clean_store, tmp_path / "work", damage)
    capsys.readouterr()


@pytest.mark.fuzz
@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(damage=DAMAGE)
def test_fuzz_feature_files_long(clean_store, tmp_path, damage, capsys):
    _check_damaged_store(clean_store, tmp_path / "work", damage)
    capsys.readouterr()


# ----------------------------------------------------------------------------- wrong options


BAD_OPTIONS = [
    (["features", "--text-name", "../evil"], "text_name '../evil' is not a plain file name"),
    (["features", "--text-name", ""], "text_name '' is not a plain file name"),
    (["features", "--image", "--no-text", "--image-name", ".hidden"], "image_name '.hidden' is not a plain"),
    (["features", "--cf", "RUN", "--cf-prefix", "a/b"], "cf_prefix 'a/b' is not a plain file name"),
    (["features", "--batch-size", "0"], "batch_size must be >= 1"),
    (["features", "--template", "no placeholder"], "has no {field} placeholder"),
    (["features", "--template", "Plot: {plot}"], "unknown field(s) ['plot']"),
    (["features", "--no-text"], "nothing to compute"),
    (["features", "--device", "cuda:99"], "device 'cuda:99'"),
    (["features", "--device", "gpu0"], "device 'gpu0' is not one of"),
    (["features", "--cf", "no-such-run"], "no-such-run"),
    (["describe", "--device", "cuda:99"], "device 'cuda:99'"),
    (["describe", "--name", "../x"], "name '../x' is not a plain file name"),
    (["describe", "--batch-size", "0"], "batch_size must be >= 1"),
    (["describe", "--limit", "0"], "limit must be >= 1"),
    (["describe", "--prompt", "About {plot}:"], "unknown field(s) ['plot']"),
    (["describe", "--description-texts", "none-yet"], "texts/none-yet.parquet"),
    (["images", "--workers", "0"], "workers must be >= 1"),
    (["images", "--timeout", "-1"], "timeout must be > 0"),
    (["images", "--image-dir", "no-such-folder"], "no-such-folder: image folder not found"),
]


@pytest.mark.parametrize(
    ("argv", "expected"), BAD_OPTIONS, ids=lambda v: " ".join(v) if isinstance(v, list) else None
)
def test_wrong_options_are_one_line_and_touch_nothing(synthetic_dataset, tmp_path, capsys, argv, expected):
    before = _snapshot(synthetic_dataset)
    argv = [str(tmp_path / a) if a in ("RUN", "no-such-run", "no-such-folder") else a for a in argv]
    assert main([argv[0], "--data", str(synthetic_dataset), *argv[1:]]) == 2
    line = _one_error_line(capsys, argv[0])
    assert expected in line, line
    assert _snapshot(synthetic_dataset) == before


# ----------------------------------------------------------------------------- bad item data


def test_an_item_with_damaged_extra_json_is_one_line_naming_its_row(synthetic_dataset, tiny_llm, capsys):
    import pandas as pd

    path = synthetic_dataset / "items.parquet"
    items = pd.read_parquet(path)
    items.loc[4, "extra"] = '{"year": 19'
    items.to_parquet(path, index=False)
    before = _snapshot(synthetic_dataset)
    for argv in (["features"], ["describe", "--llm", tiny_llm]):
        assert main([*argv, "--data", str(synthetic_dataset)]) == 2
        line = _one_error_line(capsys, argv[0])
        assert f"{path}, row 5, field 'extra': not a JSON object" in line, line
    assert _snapshot(synthetic_dataset) == before


def test_an_image_that_is_a_decompression_bomb_is_flagged_missing(
    tmp_path, fake_encoders, monkeypatch, caplog
):
    """Regression: PIL's DecompressionBombError is no OSError, so `features --image` crashed on it."""
    from PIL import Image as PILImage

    data, img = _image_dataset(tmp_path)
    PILImage.new("RGB", (64, 64), (9, 9, 9)).save(img / "4.png")
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 1000)  # 64 x 64 is over twice that: a "bomb" here
    with caplog.at_level("WARNING"):
        m = build_features(FeaturesConfig(data=str(data), text=False, image=True))["image"]
    assert m["missing"] == 1 and "4.png unreadable" in caplog.text
    assert load_item_feature(Dataset(data), "image", 6).missing.tolist() == [False] * 4 + [True, False]


def test_generated_texts_are_stale_after_a_reprepare_that_changed_the_titles(tmp_path, tiny_llm):
    """Regression: load_texts returned descriptions generated from the old titles."""
    from llmrec.llm.describe import DescribeConfig, load_texts, run_describe

    data = _prepare(tmp_path / "ds")
    cfg = DescribeConfig(data=str(data), llm=tiny_llm, max_new_tokens=2, batch_size=20)
    run_describe(cfg)
    assert len(load_texts(data, "from_title")) == 40
    _prepare(data, title="Renamed {i}")
    with pytest.raises(LlmrecError, match="40 of 40 texts were generated from other item data") as e:
        load_texts(data, "from_title")
    assert "re-run 'llmrec describe" in str(e.value)
    assert run_describe(cfg)["generated"] == 40  # the same command regenerates them
    assert len(load_texts(data, "from_title")) == 40


def test_gguf_cache_is_keyed_by_the_file_and_a_damaged_copy_is_converted_again(
    tmp_path, tiny_llm, monkeypatch, caplog
):
    """Regression: the converted copy was keyed by folder and file name only, so another .gguf under the
    same name loaded the old model; and a damaged copy could only be fixed by hand."""
    from llmrec import assets

    gguf = tmp_path / "models" / "m.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF first")
    first = assets.gguf_cache_slug(str(gguf.parent), gguf.name)
    assert first == assets.gguf_cache_slug(str(gguf.parent), gguf.name)
    gguf.write_bytes(b"GGUF other model")
    assert assets.gguf_cache_slug(str(gguf.parent), gguf.name) != first

    damaged = Path(_damaged_llm(tiny_llm, tmp_path, "truncated_weights"))
    copies = iter([damaged, Path(tiny_llm)])
    monkeypatch.setattr(assets, "_gguf_cache", lambda folder, file: next(copies))
    with caplog.at_level("WARNING"):
        model, _ = assets.load_causal_lm(str(gguf))
    assert model.config.hidden_size == 32
    assert "does not load" in caplog.text and not damaged.exists()
