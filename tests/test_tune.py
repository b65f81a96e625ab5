"""``llmrec tune``: an Optuna study whose trials are ordinary runs, resumed after an interruption, refused
when its settings changed, pruned on the validation metric; the shipped search spaces resolve."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import one_error_line
from llmrec.cli import main
from llmrec.errors import LlmrecError
from llmrec.tuning.space import check_space, load_space, shipped_models
from llmrec.tuning.study import TuneConfig, run_tune

pytest.importorskip("optuna")

FAST = {"epochs": 4, "eval_every": 2, "patience": 3, "batch_size": 64, "dim": 8}


def space_file(tmp_path: Path, params: dict, fixed: dict | None = None, name: str = "space.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"replace": True, "fixed": fixed or FAST, "params": params}))
    return str(path)


def tune(data: Path, out: Path, space: str, trials: int, **kw) -> dict:
    cfg = TuneConfig(model="mf", data=str(data), out=str(out), space=space, trials=trials, **kw)
    return run_tune(cfg)


def trial_params(out: Path) -> list[dict]:
    return [
        json.loads((p / "config.json").read_text())["options"] for p in sorted((out / "trials").iterdir())
    ]


def test_trials_are_runs_with_a_best_config_table_and_plot(synthetic_dataset, tmp_path, capsys):
    space = space_file(
        tmp_path, {"lr": {"low": 1e-3, "high": 5e-2, "log": True}, "reg": {"choices": [0.0, 1e-4]}}
    )
    out = tmp_path / "tune"
    summary = tune(synthetic_dataset, out, space, trials=3)
    assert summary["trials"] == 3 and summary["states"] == {"complete": 3}
    for name in (
        "study.journal",
        "trials.csv",
        "trials.md",
        "trials.png",
        "best.json",
        "best.yaml",
        "tune.json",
    ):
        assert (out / name).is_file(), name
    runs = sorted((out / "trials").iterdir())
    assert [r.name for r in runs] == ["trial-000", "trial-001", "trial-002"]
    for run in runs:  # an ordinary run: config, metrics, log, model
        assert {"config.json", "metrics.json", "log.txt", "model"} <= {p.name for p in run.iterdir()}
    # the first trial is the model's defaults (lr 0.001 and reg 1e-4 lie in the space)
    assert trial_params(out)[0]["lr"] == pytest.approx(1e-3) and trial_params(out)[0]["reg"] == 1e-4
    table = (out / "trials.md").read_text().splitlines()
    assert table[0].startswith("| trial | state | valid_ndcg@10 | test_ndcg@10 |") and len(table) == 5
    assert "complete (defaults)" in table[2]
    best = json.loads((out / "best.json").read_text())
    values = [json.loads((r / "metrics.json").read_text())["valid"]["ndcg@10"] for r in runs]
    assert best["valid_ndcg@10"] == pytest.approx(max(values))
    # best.yaml is a train config: `llmrec train mf --config best.yaml` resolves to the best trial's options
    assert main(["train", "mf", "--config", str(out / "best.yaml"), "--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["options"]["lr"] == pytest.approx(best["params"]["lr"]) and printed["data"] == str(
        Path(synthetic_dataset).resolve()
    )
    # llmrec table reads a trial as any run
    assert main(["table", str(runs[0])]) == 0
    assert "trial-000" in capsys.readouterr().out
    # --seeds: the finished study trains its best configuration per seed (no new trial)
    from llmrec.tuning.study import format_tune

    again = tune(synthetic_dataset, out, space, trials=3, seeds=[0])
    assert again["trials"] == 3 and (out / "best-seeds" / "seed-0" / "metrics.json").exists()
    seeded = json.loads((out / "best-seeds" / "seed-0" / "config.json").read_text())
    assert seeded["seed"] == 0 and seeded["options"]["lr"] == pytest.approx(best["params"]["lr"])
    assert "| best-seeds | mf |" in format_tune(again)


def test_resumed_study_continues_to_n_with_the_draws_of_an_uninterrupted_one(
    synthetic_dataset, tmp_path, monkeypatch
):
    space = space_file(tmp_path, {"lr": {"low": 1e-3, "high": 5e-2, "log": True}})
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    tune(synthetic_dataset, whole, space, trials=3, defaults_first=False, startup_trials=1)
    tune(synthetic_dataset, parts, space, trials=1, defaults_first=False, startup_trials=1)
    # a kill in the middle of the second trial, after its epoch 2 was checkpointed
    import llmrec.training.loop as loop

    real_epoch, calls = loop.train_epoch, []

    def killed_in_epoch_3(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(loop, "train_epoch", killed_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        tune(synthetic_dataset, parts, space, trials=3, defaults_first=False, startup_trials=1)
    monkeypatch.setattr(loop, "train_epoch", real_epoch)
    assert (parts / "trials" / "trial-001" / "checkpoint.pt").exists()
    summary = tune(synthetic_dataset, parts, space, trials=3, defaults_first=False, startup_trials=1)
    assert summary["states"] == {"complete": 3, "fail": 1}
    # the retry (trial 2) took over trial 1's run, which resumed from its checkpoint
    assert "resumed from" in (parts / "trials" / "trial-001" / "log.txt").read_text()
    assert sorted(p.name for p in (parts / "trials").iterdir()) == ["trial-000", "trial-001", "trial-003"]
    lrs = lambda out: sorted(o["lr"] for o in trial_params(out))  # noqa: E731
    assert lrs(parts) == pytest.approx(lrs(whole))
    # the study is done: the same command trains nothing more
    assert (
        tune(synthetic_dataset, parts, space, trials=3, defaults_first=False, startup_trials=1)["trials"] == 4
    )


def test_a_changed_space_or_seed_is_refused_not_resumed(synthetic_dataset, tmp_path):
    out = tmp_path / "tune"
    tune(synthetic_dataset, out, space_file(tmp_path, {"lr": {"low": 1e-3, "high": 5e-2}}), trials=1)
    wider = space_file(tmp_path, {"lr": {"low": 1e-3, "high": 9e-2}}, name="wider.yaml")
    with pytest.raises(LlmrecError, match=r"changed: space\.params\.lr\.high\); it is not resumed"):
        tune(synthetic_dataset, out, wider, trials=2)
    with pytest.raises(LlmrecError, match=r"changed: seed\)"):
        tune(synthetic_dataset, out, str(tmp_path / "space.yaml"), trials=2, seed=1)
    assert len(list((out / "trials").iterdir())) == 1


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ({"lrr": {"low": 0.1, "high": 0.2}}, "params.lrr: model 'mf' options: unknown"),
        ({"lr": {"low": 0.1, "high": 0.01}}, "params.lr: low 0.1 is above high 0.01"),
        ({"lr": {"low": 0.0, "high": 0.1, "log": True}}, "params.lr: a log range needs low > 0"),
        ({"lr": {"min": 0.1, "high": 0.2}}, "params.lr: unknown key 'min'"),
        (
            {"objective": {"choices": ["bpr", "nope"]}},
            "params.objective: model 'mf' options.objective: 'nope' is not one of",
        ),
        ({"lr": [0.1, 0.2]}, "params.lr: give {low: L, high: H} or {choices: [...]}"),
    ],
)
def test_a_bad_space_file_is_one_line_naming_file_and_key(synthetic_dataset, tmp_path, capsys, params, says):
    space = space_file(tmp_path, params)
    out = tmp_path / "tune"
    assert main(["tune", "mf", "--data", str(synthetic_dataset), "--space", space, "--out", str(out)]) == 2
    line = one_error_line(capsys, "tune")
    assert f"{space}: {says}" in line, line
    assert not out.exists()  # refused before any trial


def test_a_trial_below_the_median_is_pruned_saved_and_evaluated(synthetic_dataset, tmp_path):
    # a constructed case: the first trial (the defaults, reg 1e-4) learns the walk at lr 0.05; any other
    # choice of reg is so strong that MF stays at its random start, below the first trial at every epoch
    fixed = {**FAST, "lr": 0.05, "epochs": 6}
    space = space_file(tmp_path, {"reg": {"choices": [1e-4, 50.0, 60.0, 70.0]}}, fixed=fixed)
    out = tmp_path / "tune"
    summary = tune(synthetic_dataset, out, space, trials=3, startup_trials=1, warmup_epochs=0)
    rows = [r.split(",") for r in (out / "trials.csv").read_text().splitlines()]
    head, rows = rows[0], rows[1:]
    state, reg, epochs = head.index("state"), head.index("reg"), head.index("epochs")
    pruned = [r for r in rows if r[state] == "pruned"]
    assert summary["states"].get("pruned", 0) == len(pruned) >= 1
    assert all(
        float(r[reg]) >= 50 and int(float(r[epochs])) == 2 for r in pruned
    )  # stopped at the first report
    for r in pruned:  # stopped as an early stop: the run is saved and evaluated
        run = out / r[-1]
        assert (run / "model" / "model.json").exists() and "test" in json.loads(
            (run / "metrics.json").read_text()
        )


def test_every_shipped_space_resolves_against_its_model():
    assert {"mf", "vbpr", "bm3", "lgmrec", "sasrec", "gru4rec", "bert4rec"} <= set(shipped_models())
    for model in shipped_models():
        space = load_space(model)
        check_space(space, model, {}, model)
        text = Path(space.sources[0]).read_text()
        for p in space.params:  # every range says where it comes from
            line = next(line for line in text.splitlines() if line.lstrip().startswith(f"{p.name}:"))
            assert "#" in line, f"{model}.yaml: {p.name} has no source comment"


def test_a_space_file_extends_the_shipped_one(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(
        yaml.safe_dump({"fixed": {"epochs": 7}, "params": {"dim": None, "lr": {"choices": [0.01]}}})
    )
    space = load_space("mf", path)
    assert space.fixed["epochs"] == 7 and space.fixed["eval_every"] == 5
    names = {p.name: p for p in space.params}
    assert "dim" not in names and names["lr"].choices == (0.01,) and "reg" in names


def test_without_optuna_the_error_names_the_extra(synthetic_dataset, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "optuna", None)
    with pytest.raises(ImportError, match=r"llmrec tune needs the tune extra .*pip install 'llmrec\[tune\]'"):
        tune(synthetic_dataset, tmp_path / "t", space_file(tmp_path, {"lr": {"choices": [0.01]}}), trials=1)
