"""The training loop: same seed -> same numbers; an interrupted run resumes to the same result."""

import json

import numpy as np
import pytest

from llmrec.models.base import load_model
from llmrec.models.sasrec import SASRec
from llmrec.pipeline import EvalConfig, TrainConfig, train

OPTS = {"hidden": 16, "max_len": 12, "epochs": 4, "batch_size": 8, "patience": 10}


def _train(data, out, seed=5):
    cfg = TrainConfig(
        model="sasrec",
        data=str(data),
        out=str(out),
        seed=seed,
        options=dict(OPTS),
        eval=EvalConfig(ctr=False, full_ranking=False),
    )
    return train(cfg)


def _scores(run, ds_root):
    from llmrec.data.dataset import Dataset

    ds = Dataset(ds_root)
    split = ds.split("test")
    return load_model(run / "model").score_all(split.users, split.histories)


def test_same_seed_same_numbers(synthetic_dataset, tmp_path):
    a = json.loads((_train(synthetic_dataset, tmp_path / "a") / "metrics.json").read_text())
    b = json.loads((_train(synthetic_dataset, tmp_path / "b") / "metrics.json").read_text())
    for split in ("valid", "test"):
        assert {k: v for k, v in a[split].items() if "seconds" not in k} == {
            k: v for k, v in b[split].items() if "seconds" not in k
        }
    np.testing.assert_array_equal(
        _scores(tmp_path / "a", synthetic_dataset), _scores(tmp_path / "b", synthetic_dataset)
    )
    c = _scores(_train(synthetic_dataset, tmp_path / "c", seed=6), synthetic_dataset)
    assert not np.array_equal(c, _scores(tmp_path / "a", synthetic_dataset))


class Killed(Exception):
    pass


def _train_killed_in_epoch_3(ds, run, monkeypatch):
    """Train into ``run`` until the third epoch starts, as if the process were killed there."""
    original = SASRec.train_batches
    calls = {"n": 0}

    def dies_in_epoch_3(self, dataset, rng):
        calls["n"] += 1
        if calls["n"] == 3:
            raise Killed
        return original(self, dataset, rng)

    with monkeypatch.context() as m:
        m.setattr(SASRec, "train_batches", dies_in_epoch_3)
        with pytest.raises(Killed):
            _train(ds, run)


def test_interrupted_training_resumes_to_the_same_model(synthetic_dataset, tmp_path, monkeypatch):
    reference = _scores(_train(synthetic_dataset, tmp_path / "ref"), synthetic_dataset)
    _train_killed_in_epoch_3(synthetic_dataset, tmp_path / "run", monkeypatch)
    assert (tmp_path / "run" / "checkpoint.pt").exists()
    _train(synthetic_dataset, tmp_path / "run")
    assert "resumed from" in (tmp_path / "run" / "log.txt").read_text()
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    np.testing.assert_array_equal(_scores(tmp_path / "run", synthetic_dataset), reference)


def test_ranking_on_a_user_subset_records_the_users(synthetic_dataset, tmp_path):
    cfg = TrainConfig(
        model="popularity",
        data=str(synthetic_dataset),
        out=str(tmp_path / "pop"),
        eval=EvalConfig(splits=["test"], ctr=False, ranking_users=6),
    )
    run = train(cfg)
    metrics = json.loads((run / "metrics.json").read_text())["test"]
    users = json.loads((run / "ranking_users.json").read_text())["test"]
    assert metrics["ranking_users"] == 6 and len(set(users)) == 6
    with pytest.raises(Exception, match="ranking_users must be >= 1"):
        EvalConfig(ranking_users=0)


def test_checkpoint_loads_on_the_cpu_and_resumes_on_any_machine(synthetic_dataset, tmp_path, monkeypatch):
    """The checkpoint is read onto the CPU (the RNG state must stay a CPU tensor; the trainer moves the
    weights), and CUDA RNG states from a machine with other devices are skipped: same final model."""
    import torch

    reference = _scores(_train(synthetic_dataset, tmp_path / "ref"), synthetic_dataset)
    _train_killed_in_epoch_3(synthetic_dataset, tmp_path / "run", monkeypatch)
    ckpt = tmp_path / "run" / "checkpoint.pt"
    saved = torch.load(ckpt, weights_only=False)
    assert "cuda_rng" in saved
    saved["cuda_rng"] = [torch.zeros(16, dtype=torch.uint8)] * 3  # as if written on a 3-GPU machine
    torch.save(saved, ckpt)
    where = []
    load = torch.load
    monkeypatch.setattr(
        torch, "load", lambda *a, **kw: where.append(kw.get("map_location")) or load(*a, **kw)
    )
    _train(synthetic_dataset, tmp_path / "run")
    assert where == ["cpu"]
    np.testing.assert_array_equal(_scores(tmp_path / "run", synthetic_dataset), reference)


def _scalars(folder):
    """(tag, step) of every scalar in the TensorBoard event files under ``folder`` (TFRecord framing:
    length, its crc, an Event proto, its crc)."""
    import struct

    from tensorboardX.proto.event_pb2 import Event

    out = []
    for path in folder.rglob("events.out.tfevents.*"):
        data, i = path.read_bytes(), 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i : i + 8])
            event = Event.FromString(data[i + 12 : i + 12 + n])
            out += [(v.tag, event.step) for v in event.summary.value]
            i += 12 + n + 4
    return out


def test_tensorboard_tracker_gets_every_epoch_in_the_run_directory(synthetic_dataset, tmp_path):
    pytest.importorskip("tensorboardX")
    cfg = TrainConfig(
        model="sasrec",
        data=str(synthetic_dataset),
        out=str(tmp_path / "run"),
        options={**OPTS, "epochs": 2},
        eval=EvalConfig(splits=["test"], ctr=False, full_ranking=False),
        log_with="tensorboard",
    )
    run = train(cfg)
    scalars = {(tag.replace("@", "_"), step) for tag, step in _scalars(run / "tracking")}  # tensorboardX: _
    for epoch in (1, 2):
        assert {("loss", epoch), ("valid_ndcg_10", epoch), ("valid_hit_10", epoch)} <= scalars


def test_trackers_that_cannot_run_are_config_errors(synthetic_dataset, tmp_path, monkeypatch):
    import llmrec.training.loop
    from llmrec.config import from_dict
    from llmrec.errors import ConfigError
    from llmrec.models.base import build_model
    from llmrec.training import accelerator_for, fit

    model = build_model("sasrec", OPTS, 30, 40)
    from llmrec.extras import MissingExtra

    monkeypatch.setitem(llmrec.training.distributed._TRACKERS, "wandb", (lambda: False, "wandb"))
    with pytest.raises(
        MissingExtra, match=r"--log-with wandb needs the wandb extra.*pip install 'llmrec\[wandb\]'"
    ):
        accelerator_for(model, "wandb", tmp_path)
    with pytest.raises(ConfigError, match="unknown tracker log_with='neptune'"):
        accelerator_for(model, "neptune", tmp_path)
    with pytest.raises(ConfigError, match="'neptune' is not one of"):
        from_dict(TrainConfig, {"log_with": "neptune"})
    with pytest.raises(ConfigError, match="needs a run directory"):
        fit(model, None, log_with="tensorboard")
