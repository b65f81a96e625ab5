"""Run directories under bad input and faults: one model and configuration per run, metrics that are
never stale, one-line errors for damaged runs and options out of range, and kill -9 that resumes to the
same numbers (issue #15: items 2, 4 and 6 for train / evaluate / recommend / table)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
import typing
from pathlib import Path

import numpy as np
import pytest

import llmrec
from conftest import file_bytes as _snapshot
from conftest import one_error_line as _one_error_line
from conftest import synthetic_tables
from llmrec.cli import main
from llmrec.config import ConfigError
from llmrec.data.processing import ProcessConfig, finalize, write_dataset
from llmrec.errors import LlmrecError
from llmrec.models.base import available_models, get_model_class, model_config


@pytest.fixture(autouse=True)
def _crash_logs_in_tmp(tmp_path, monkeypatch):
    """A command that crashes here (exit 70) leaves its log under the test's folder, not in $HOME."""
    monkeypatch.setenv("LLMREC_CRASH_DIR", str(tmp_path / "crashes"))


SASREC = ["-o", "hidden=8", "-o", "max_len=6", "-o", "epochs=2", "--no-ctr", "--no-full-ranking"]


def _train(data: Path, run: Path, model: str = "popularity", *extra: str) -> int:
    return main(["train", model, "--data", str(data), "--out", str(run), *extra])


def _other_dataset(root: Path, n_users: int = 30, n_items: int = 40, seed: int = 4) -> Path:
    """A prepared dataset of the fixture's shape (same sizes by default) with other frozen candidates."""
    items, inter = synthetic_tables(n_users=n_users, n_items=n_items)
    write_dataset(
        finalize(items, inter, ProcessConfig(kcore=0, num_negatives=10, seed=seed), {}, {}, []), root
    )
    return root


# ----------------------------------------------------------------------------- nothing stale


def test_evaluate_rewrites_metrics_whole_and_table_shows_only_them(synthetic_dataset, tmp_path, capsys):
    """Regression: `evaluate RUN --ks 3 --no-full-ranking --no-ctr` kept the old hit@10 and auc."""
    run = tmp_path / "run"
    assert _train(synthetic_dataset, run, "popularity", "--ctr-examples", "20") == 0
    assert {"hit@10", "full_hit@10", "auc"} <= set(json.loads((run / "metrics.json").read_text())["test"])
    assert (run / "ctr_rows.json").exists()
    assert main(["evaluate", str(run), "--ks", "3", "--no-full-ranking", "--no-ctr"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics) == {"train", "valid", "test"}
    assert set(metrics["test"]) == {"hit@3", "ndcg@3", "mrr", "ranking_users", "eval_seconds"}
    assert not (run / "ctr_rows.json").exists()  # the earlier evaluation's CTR subset went with its AUC
    capsys.readouterr()
    assert main(["table", str(run)]) == 0
    row = capsys.readouterr().out.strip().splitlines()[-1]
    assert row.startswith("| run | popularity |") and row.count("| - ") == 8  # no hit@5 ... uauc of before


def test_the_same_train_command_on_a_finished_run_evaluates_without_training_again(
    synthetic_dataset, tmp_path
):
    """Regression: the same command retrained every epoch, and merged the new metrics into the old."""
    run = tmp_path / "run"
    args = ["--ks", "5", "10", *SASREC]
    assert _train(synthetic_dataset, run, "sasrec", *args) == 0
    first = json.loads((run / "metrics.json").read_text())
    weights = (run / "model" / "model.safetensors").read_bytes()
    (run / ".checkpoint.pt.x1y2.partial").write_bytes(b"half a checkpoint")  # what kill -9 leaves
    (run / ".mine.partial").write_text("not ours")
    assert _train(synthetic_dataset, run, "sasrec", *args[:1], "3", *args[3:]) == 0  # --ks 3 now
    log = (run / "log.txt").read_text()
    assert len(re.findall(r"epoch 1: loss", log)) == 1, "trained again"
    assert "training finished earlier" in log
    assert (run / "model" / "model.safetensors").read_bytes() == weights
    assert not (run / ".checkpoint.pt.x1y2.partial").exists() and (run / ".mine.partial").exists()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["train"] == first["train"]  # the training record of this model stays
    assert {"hit@3", "ndcg@3"} <= set(metrics["test"]) and not {"hit@5", "hit@10"} & set(metrics["test"])


def test_another_model_is_refused_by_name_and_nothing_changes(synthetic_dataset, tmp_path, capsys):
    """Regression: the refusal listed `changed: model, options, options.seed`, not which models."""
    run = tmp_path / "run"
    assert _train(synthetic_dataset, run, "popularity") == 0
    before = _snapshot(run)
    capsys.readouterr()
    assert _train(synthetic_dataset, run, "random", "--no-full-ranking", "--no-ctr", "--ks", "5") == 2
    line = _one_error_line(capsys, "train")
    assert f"{run}: holds a run of another model" in line and "'popularity' -> 'random'" in line
    assert "--restart" in line
    assert _snapshot(run) == before
    assert _train(synthetic_dataset, run, "random", "--ks", "5", "--restart") == 0
    assert json.loads((run / "config.json").read_text())["model"] == "random"
    assert "hit@10" not in json.loads((run / "metrics.json").read_text())["test"]


def test_a_finished_run_with_damaged_weights_is_refused_untouched(trained_sasrec, tmp_path, capsys):
    import shutil

    shutil.copytree(trained_sasrec, tmp_path / "copy")
    run = tmp_path / "copy" / "run"
    weights = run / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    before = _snapshot(run)
    capsys.readouterr()
    assert _train(tmp_path / "copy" / "data", run, "sasrec", *SASREC) == 2
    assert f"error: {weights}: unreadable weights" in _one_error_line(capsys, "train")
    assert _snapshot(run) == before


def test_out_onto_a_file_or_a_folder_that_is_not_a_run(synthetic_dataset, tmp_path, capsys):
    """--out never overwrites files it did not write as a run: a file, or a folder holding a
    metrics.json or model/ without llmrec's marker or run config, is refused, with --restart too (it
    deletes only what llmrec can prove it wrote: see test_failures_ownership.py)."""
    (tmp_path / "file").write_text("mine")
    assert _train(synthetic_dataset, tmp_path / "file") == 2
    assert "file: not a directory" in _one_error_line(capsys, "train")
    folder = tmp_path / "folder"
    (folder / "model").mkdir(parents=True)
    (folder / "metrics.json").write_text('{"mine": 1}')
    (folder / "notes.txt").write_text("mine")
    before = _snapshot(folder)
    for extra in ([], ["--restart"]):
        assert _train(synthetic_dataset, folder, "popularity", *extra) == 2
        line = _one_error_line(capsys, "train")
        assert "holds metrics.json, model/, notes.txt but is not an llmrec run" in line
        assert _snapshot(folder) == before


def test_another_dataset_is_refused_by_its_identity(synthetic_dataset, tmp_path, capsys):
    """A same-size dataset with other content is not the run's (evaluate, recommend, a resumed train);
    one of another size is a clear error too (it was an IndexError in recommend)."""
    run = tmp_path / "run"
    assert _train(synthetic_dataset, run, "popularity") == 0
    same_size = _other_dataset(tmp_path / "same-size")
    smaller = _other_dataset(tmp_path / "smaller", n_users=20, n_items=30, seed=3)
    before = _snapshot(run)
    capsys.readouterr()
    for data in (same_size, smaller):
        assert main(["evaluate", str(run), "--data", str(data)]) == 2
        assert "not the dataset the model was trained on" in _one_error_line(capsys, "evaluate")
        assert main(["recommend", str(run), "--user", "u1", "--data", str(data)]) == 2
        assert "not the dataset the model was trained on" in _one_error_line(capsys, "recommend")
    assert _train(same_size, run, "popularity") == 2
    assert "data (another dataset" in _one_error_line(capsys, "train")
    assert _snapshot(run) == before


# ----------------------------------------------------------------------------- options out of range


def _numeric_fields(cls: type, prefix: str = "") -> list[tuple[str, dataclasses.Field, type]]:
    """(dotted name, field, numeric type) of every int/float option of a config, sub-configs included."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        args = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            out += _numeric_fields(type(default), f"{prefix}{f.name}.")
        elif len(args) == 1 and args[0] in (int, float):
            out.append((prefix + f.name, f, args[0]))
    return out


def _outside(bounds: dict[str, float], tp: type) -> list[float]:
    step = 1 if tp is int else 0.5
    values = [bounds["ge"] - step] if "ge" in bounds else [bounds["gt"]] if "gt" in bounds else []
    values += [bounds["le"] + step] if "le" in bounds else [bounds["lt"]] if "lt" in bounds else []
    return [tp(v) for v in values] + ([float("nan"), float("inf")] if tp is float else [])


@pytest.mark.parametrize("name", sorted(set(available_models())))
def test_every_numeric_option_of_every_model_has_a_range_that_is_enforced(name):
    """Systematic: each int/float option declares its valid range, and a value outside it (or NaN/inf)
    is a ConfigError naming the option and that range, raised before anything is built."""
    for dotted, field, tp in _numeric_fields(get_model_class(name).config_cls):
        bounds = field.metadata.get("bounds")
        assert bounds, f"{name}: option {dotted} declares no valid range"
        for value in _outside(bounds, tp):
            leaf = dotted.rsplit(".", 1)[-1]
            with pytest.raises(ConfigError, match=rf"{leaf} must be .*got {value}"):
                model_config(name, {dotted: value})


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["sasrec", "-o", "max_len=0"], "max_len must be >= 1, got 0"),
        (["sasrec", "-o", "dropout=2"], "dropout must be in [0, 1), got 2.0"),
        (["sasrec", "-o", "hidden=10", "-o", "heads=3"], "heads (3) must divide hidden (10)"),
        (["gru4rec", "-o", "dropout=-0.5"], "dropout must be in [0, 1), got -0.5"),
        (["bert4rec", "-o", "mask_prob=0"], "mask_prob must be in (0, 1], got 0.0"),
        (["mf", "-o", "lr=0"], "lr must be > 0, got 0.0"),
        (["mf", "-o", "lr=.nan"], "lr must be a finite number > 0, got nan"),
        (["random", "-o", "seed=-1"], "seed must be >= 0, got -1"),
        (["histllm", "-o", "backbone.lora_dropout=1"], "lora_dropout must be in [0, 1), got 1.0"),
        (["illmrec", "-o", "missing_image_fraction=2"], "missing_image_fraction must be in [0, 1], got 2.0"),
        (["popularity", "--batch-size", "0"], "batch_size must be >= 1, got 0"),
        (["popularity", "--threads", "0"], "threads must be >= 1, got 0"),
    ],
)
def test_train_options_out_of_range_are_one_line_errors(argv, needle, synthetic_dataset, tmp_path, capsys):
    """Regression: `-o max_len=0` and `-o dropout=2` crashed inside torch (exit 70, a crash log)."""
    run = tmp_path / "run"
    assert main(["train", *argv, "--data", str(synthetic_dataset), "--out", str(run)]) == 2
    line = _one_error_line(capsys, "train")
    assert needle in line, line
    assert not run.exists()  # refused before anything is written


def test_a_diverging_training_is_a_one_line_error(synthetic_dataset, tmp_path, capsys):
    """Weights that diverge (NaN scores at validation, or a NaN/inf loss) say what to do; they were a
    ValueError crash in the metrics (exit 70)."""
    argv = ["-o", "hidden=8", "-o", "max_len=6", "-o", "epochs=3", "-o", "lr=1e30", "--no-ctr"]
    assert _train(synthetic_dataset, tmp_path / "run", "sasrec", *argv) == 2
    line = _one_error_line(capsys, "train")
    assert re.search(r"scored NaN on the valid split|the training loss became", line), line
    assert "lower learning rate" in line or "lower the learning rate" in line
    assert "--restart" in line


# ----------------------------------------------------------------------------- damaged runs


def _damage(run: Path, how: str) -> Path:
    """Damage one file of a trained run; returns the file the error must name."""
    model = run / "model"
    if how == "weights missing":
        (model / "model.safetensors").unlink()
        return model / "model.safetensors"
    if how == "weights truncated":
        path = model / "model.safetensors"
        path.write_bytes(path.read_bytes()[:100])
        return path
    if how == "model.json not JSON":
        (model / "model.json").write_text('{"model": ')
        return model / "model.json"
    if how == "model.json without config":
        (model / "model.json").write_text('{"model": "sasrec", "n_users": 30, "n_items": 40}')
        return model / "model.json"
    if how == "model.json of an unknown model":
        info = json.loads((model / "model.json").read_text())
        (model / "model.json").write_text(json.dumps({**info, "model": "nosuchmodel"}))
        return model / "model.json"
    if how == "model.json out of range":
        info = json.loads((model / "model.json").read_text())
        info["config"]["max_len"] = 0
        (model / "model.json").write_text(json.dumps(info))
        return model / "model.json"
    if how == "training unfinished":
        (model / "model.json").unlink()
        return run
    raise AssertionError(how)


DAMAGES = [
    "weights missing",
    "weights truncated",
    "model.json not JSON",
    "model.json without config",
    "model.json of an unknown model",
    "model.json out of range",
    "training unfinished",
]


@pytest.fixture(scope="module")
def trained_sasrec(tmp_path_factory):
    """A small trained sasrec run and its dataset (copied by each test that damages it)."""
    root = tmp_path_factory.mktemp("sasrec")
    data = _other_dataset(root / "data", seed=3)
    assert _train(data, root / "run", "sasrec", *SASREC) == 0
    return root


@pytest.mark.parametrize("how", DAMAGES)
def test_recommend_and_evaluate_on_a_damaged_run_are_one_line_errors(how, trained_sasrec, tmp_path, capsys):
    """Regression: a model.json without its config was a KeyError crash (exit 70)."""
    import shutil

    shutil.copytree(trained_sasrec, tmp_path / "copy")
    run = tmp_path / "copy" / "run"
    named = _damage(run, how)
    before = _snapshot(tmp_path / "copy")
    capsys.readouterr()
    assert main(["recommend", str(run), "--user", "u1"]) == 2
    line = _one_error_line(capsys, "recommend")
    assert f"error: {named}" in line and "; " in line, line
    assert main(["evaluate", str(run)]) == 2
    assert f"error: {named}" in _one_error_line(capsys, "evaluate")
    assert _snapshot(tmp_path / "copy") == before
    if how == "training unfinished":
        assert "re-run its 'llmrec train' command" in line


def test_a_damaged_popularity_model_is_a_one_line_error(synthetic_dataset, tmp_path, capsys):
    """Regression: a truncated counts.npy was a ValueError crash."""
    run = tmp_path / "run"
    assert _train(synthetic_dataset, run, "popularity") == 0
    counts = run / "model" / "counts.npy"
    counts.write_bytes(counts.read_bytes()[:60])
    capsys.readouterr()
    assert main(["recommend", str(run), "--user", "u1"]) == 2
    assert f"error: {counts}: unreadable item counts" in _one_error_line(capsys, "recommend")
    np.save(counts, np.zeros(3))
    assert main(["recommend", str(run), "--user", "u1"]) == 2
    assert "the model has 40 items" in _one_error_line(capsys, "recommend")


@pytest.mark.parametrize("k", ["0", "-5"])
def test_recommend_k_below_one_is_an_error(k, synthetic_dataset, tmp_path, capsys):
    """Regression: --k 0 printed nothing and --k -5 the whole catalog but five, both exit 0."""
    run = tmp_path / "run"
    assert _train(synthetic_dataset, run, "popularity") == 0
    capsys.readouterr()
    assert main(["recommend", str(run), "--user", "u1", "--k", k]) == 2
    assert f"k must be >= 1, got {k}" in _one_error_line(capsys, "recommend")


def test_recommend_k_beyond_the_catalog_gives_every_item(synthetic_dataset, tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(synthetic_dataset, run, "popularity") == 0
    capsys.readouterr()
    assert main(["recommend", str(run), "--user", "u1", "--k", "1000", "--json"]) == 0
    recs = json.loads(capsys.readouterr().out)
    assert len(recs) == 40 - 12 and [r["rank"] for r in recs] == list(range(1, 29))  # history excluded


@pytest.mark.parametrize(
    "content, needle",
    [
        ('{"test":\n', "metrics.json, row 2: invalid JSON"),
        ("[1, 2]", "metrics.json: not llmrec metrics"),
        ('{"test": {"hit@10": "high"}}', "metrics.json, field 'test': not a mapping of metric names"),
        ('{"test": [0.5]}', "metrics.json, field 'test': not a mapping of metric names"),
    ],
)
def test_table_on_damaged_metrics_is_a_one_line_error(content, needle, tmp_path, capsys):
    """Regression: a corrupt metrics.json was a JSONDecodeError crash (exit 70)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(content)
    assert main(["table", str(run)]) == 2
    line = _one_error_line(capsys, "table")
    assert needle in line and "llmrec evaluate" in line, line


def test_table_on_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["table", str(tmp_path / "nowhere")]) == 2
    assert "nowhere: no such run directory" in _one_error_line(capsys, "table")
    assert main(["table", str(tmp_path)]) == 2
    assert "no metrics.json in this run directory" in _one_error_line(capsys, "table")


def test_a_damaged_run_config_is_refused_on_resume(synthetic_dataset, tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(synthetic_dataset, run, "popularity") == 0
    for content in ('{"model": ', '["popularity"]'):
        (run / "config.json").write_text(content)
        before = _snapshot(run)
        capsys.readouterr()
        assert _train(synthetic_dataset, run, "popularity") == 2
        line = _one_error_line(capsys, "train")
        assert f"{run / 'config.json'}" in line and "--restart" in line, line
        assert _snapshot(run) == before


def test_a_bad_config_class_value_raises_config_error_directly():
    """Configs built in Python are checked too (__post_init__), not only those read from flags."""
    from llmrec.models.sasrec import SASRecConfig

    with pytest.raises(ConfigError, match=r"max_len must be >= 1, got 0"):
        SASRecConfig(max_len=0)
    with pytest.raises(LlmrecError, match=r"dropout must be in \[0, 1\), got 2"):
        SASRecConfig(dropout=2.0)


# ----------------------------------------------------------------------------- kill -9


def _env(tmp_path: Path) -> dict[str, str]:
    src = str(Path(llmrec.__file__).resolve().parents[1])  # this checkout's code, not an installed one
    return {
        **os.environ,
        "PYTHONPATH": src,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "LLMREC_CRASH_DIR": str(tmp_path / "crashes"),
    }


def _kill_when(cmd: list[str], env: dict[str, str], what: str, happened: typing.Callable[[], bool]) -> None:
    """Start ``cmd``, poll the files it writes until ``happened()``, then kill -9 the process."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            if happened():
                break
            assert proc.poll() is None, f"ended (exit {proc.returncode}) before {what}"
            time.sleep(0.01)
        else:
            raise AssertionError(f"never {what}")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


def _logged(log: Path, pattern: str) -> typing.Callable[[], bool]:
    """Whether ``log`` gained a line matching ``pattern`` since now."""
    offset = log.stat().st_size if log.exists() else 0
    return lambda: log.exists() and re.search(pattern, log.read_bytes()[offset:].decode("utf-8", "replace"))


def _comparable(metrics: dict) -> dict:
    """Metrics without wall-clock timings (equal runs differ only there)."""
    return {s: {k: v for k, v in m.items() if "seconds" not in k} for s, m in metrics.items()}


@pytest.fixture(scope="module")
def larger_dataset(tmp_path_factory):
    """800 users: an evaluation one user at a time lasts long enough to be killed in the middle."""
    root = tmp_path_factory.mktemp("larger") / "data"
    items, inter = synthetic_tables(n_users=800, n_items=200, per_user=10)
    write_dataset(finalize(items, inter, ProcessConfig(kcore=0, num_negatives=20, seed=3), {}, {}, []), root)
    return root


def test_kill_9_during_training_then_during_evaluation_resumes_to_the_same_metrics(larger_dataset, tmp_path):
    """Regression: after kill -9 during the evaluation that follows training, the same `train` command
    trained every epoch again. Now a kill during training resumes from the checkpoint, a kill during
    the evaluation resumes at the evaluation of the saved model, and the metrics equal those of an
    uninterrupted run value for value (timings aside)."""
    options = ["-o", "hidden=8", "-o", "max_len=6", "-o", "epochs=6", "-o", "batch_size=16"]
    argv = [
        "sasrec",
        "--data",
        str(larger_dataset),
        *options,
        "--no-ctr",
        "--batch-size",
        "1",
        "--threads",
        "1",
    ]
    assert main(["train", *argv, "--out", str(tmp_path / "reference")]) == 0
    reference = json.loads((tmp_path / "reference" / "metrics.json").read_text())

    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "llmrec", "train", *argv, "--out", str(run)]
    env, log = _env(tmp_path), run / "log.txt"
    _kill_when(cmd, env, "epoch 2 was logged", _logged(log, r"epoch 2: loss"))  # 1. killed while training
    assert (run / "checkpoint.pt").exists() and not (run / "model").exists()

    # 2. resumed, then killed once the trained model is saved: while it is evaluated (the evaluation of
    # 800 users one at a time lasts about a second)
    _kill_when(cmd, env, "the model was saved", (run / "model" / "model.json").exists)
    resumed = log.read_text()
    assert re.search(r"resumed from .*checkpoint.pt at epoch [1-5]", resumed)
    assert (run / "model" / "model.json").exists() and not (run / "checkpoint.pt").exists()
    assert set(json.loads((run / "metrics.json").read_text())) == {"train"}  # no half evaluation

    offset = len(log.read_bytes())
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)  # 3. finishes
    assert done.returncode == 0, done.stderr
    last = log.read_bytes()[offset:].decode()
    assert "training finished earlier" in last and not re.search(r"epoch \d+: loss", last)
    assert _comparable(json.loads((run / "metrics.json").read_text())) == _comparable(reference)
    assert not list(tmp_path.glob("crashes/*"))
