"""``llmrec train --seeds``: one run directory per seed; ``llmrec table``: mean +/- std per multi-seed run and a
paired t-test between two of them on the seeds they share."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest

from conftest import one_error_line
from llmrec.cli import main
from llmrec.report import TableConfig, collect, make_table, paired


def fake_seed_run(root: Path, model: str, values: dict[int, float], metric: str = "ndcg@10") -> Path:
    for seed, value in values.items():
        run = root / f"seed-{seed}"
        run.mkdir(parents=True)
        (run / "metrics.json").write_text(json.dumps({"test": {metric: value, "hit@10": 2 * value}}))
        (run / "config.json").write_text(json.dumps({"model": model, "seed": seed}))
    return root


def test_mean_std_and_paired_t_test_by_hand(tmp_path: Path):
    a = fake_seed_run(tmp_path / "sasrec", "sasrec", {0: 0.10, 1: 0.12, 2: 0.11, 3: 0.13})
    b = fake_seed_run(tmp_path / "bert4rec", "bert4rec", {0: 0.12, 1: 0.15, 2: 0.12, 3: 0.16, 9: 0.5})
    df = collect([a, b], "test", ["ndcg@10", "hit@10"])
    assert df["seeds"].tolist() == [4, 5]
    assert df.loc[0, "ndcg@10"] == pytest.approx(0.115)
    assert df.loc[0, "ndcg@10_std"] == pytest.approx(statistics.stdev([0.10, 0.12, 0.11, 0.13]))
    # paired on the 4 shared seeds only (seed 9 has no partner): differences 0.02, 0.03, 0.01, 0.03
    d = [0.02, 0.03, 0.01, 0.03]
    t = statistics.mean(d) / (statistics.stdev(d) / math.sqrt(4))
    (first, second) = paired([a, b], "test", "ndcg@10")
    assert first["p"] is None and second["pairs"] == 4 and second["diff"] == pytest.approx(0.0225)
    from scipy.stats import t as student

    assert second["p"] == pytest.approx(2 * student.sf(t, df=3))
    table = make_table(
        TableConfig(runs=[str(a), str(b)], metrics=["ndcg@10", "hit@10"], out=str(tmp_path / "t"))
    )
    lines = table.splitlines()
    assert (
        lines[0] == "| run | model | seeds | ndcg@10 | hit@10 | Δ ndcg@10 vs first | p (paired t, ndcg@10) |"
    )
    assert lines[2].startswith("| sasrec | sasrec | 4 | 0.1150 ± 0.0129 | 0.2300 ± 0.0258 | - | - |")
    assert lines[3].endswith(f"| 0.0225 | {second['p']:.3g} |")
    csv = (tmp_path / "t.csv").read_text().splitlines()[0]
    assert "ndcg@10_std" in csv and "seeds" in csv
    # --compare picks the metric; one that is not shown is refused
    assert "p (paired t, hit@10)" in make_table(
        TableConfig(runs=[str(a), str(b)], metrics=["ndcg@10", "hit@10"], compare="hit@10")
    )
    assert main(["table", str(a), str(b), "--compare", "auc", "--metrics", "ndcg@10"]) == 2


def test_compare_that_compares_nothing_is_refused(tmp_path: Path, capsys):
    """Regression: --compare with a metric no run has (or with runs that are not multi-seed) printed the
    table without a comparison and without a word; it is one line naming the metrics the runs have."""
    a = fake_seed_run(tmp_path / "sasrec", "sasrec", {0: 0.10, 1: 0.12})
    b = fake_seed_run(tmp_path / "bert4rec", "bert4rec", {0: 0.12, 1: 0.15}, metric="auc")
    single = tmp_path / "one"
    single.mkdir()
    (single / "metrics.json").write_text(json.dumps({"test": {"ndcg@10": 0.25}}))
    cases = [
        (
            [a, b, "--compare", "nosuch"],
            "--compare 'nosuch': no run has this 'test' metric; choose one of: auc, hit@10, ndcg@10",
        ),
        (
            [single, "--compare", "nosuch"],
            "--compare 'nosuch': no run has this 'test' metric; choose one of: ndcg@10",
        ),
        (
            [single, a, "--compare", "ndcg@10"],
            "--compare 'ndcg@10': the paired t-test compares multi-seed runs with the first one, and the "
            "first run given is a single run",
        ),
        (
            [a, single, "--compare", "ndcg@10"],
            "--compare 'ndcg@10': the paired t-test compares multi-seed runs with the first one, and no other "
            "run given is multi-seed",
        ),
    ]
    for argv, expected in cases:
        assert main(["table", *map(str, argv)]) == 2
        line = one_error_line(capsys, "table")
        assert line.startswith(f"llmrec table: error: {expected}"), line
    assert main(["table", str(a), str(b), "--compare", "auc", "--metrics", "ndcg@10"]) == 2  # not shown
    assert "--compare 'auc' is not among the metrics shown" in one_error_line(capsys, "table")
    assert main(["table", str(a), str(b), "--compare", "hit@10"]) == 0  # a metric both have: compared
    assert "p (paired t, hit@10)" in capsys.readouterr().out


def test_single_runs_keep_their_table(tmp_path: Path):
    run = tmp_path / "one"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"test": {"ndcg@10": 0.25}}))
    table = make_table(TableConfig(runs=[str(run)], metrics=["ndcg@10", "auc"]))
    assert table.splitlines() == [
        "| run | model | ndcg@10 | auc |",
        "|---|---|---:|---:|",
        "| one |  | 0.2500 | - |",
    ]


def test_train_seeds_runs_each_seed_into_its_own_directory(synthetic_dataset: Path, tmp_path: Path, capsys):
    root = tmp_path / "bpr"
    argv = [
        "train",
        "mf",
        "--data",
        str(synthetic_dataset),
        "--out",
        str(root),
        "-o",
        "epochs=2",
        "-o",
        "dim=8",
    ]
    assert main([*argv, "--seeds", "0", "1", "2"]) == 0
    out = capsys.readouterr().out
    assert "| bpr | mf | 3 |" in out and "±" in out
    configs = [json.loads((root / f"seed-{s}" / "config.json").read_text()) for s in (0, 1, 2)]
    assert [c["seed"] for c in configs] == [0, 1, 2]
    metrics = [
        json.loads((root / f"seed-{s}" / "metrics.json").read_text())["test"]["ndcg@10"] for s in (0, 1, 2)
    ]
    assert len(set(metrics)) > 1  # the seeds do change the model
    again = make_table(TableConfig(runs=[str(root)], metrics=["ndcg@10"]))
    assert f"{statistics.mean(metrics):.4f} ± {statistics.stdev(metrics):.4f}" in again
    # the same command again resumes (every seed finished: nothing retrains) and prints the same row
    assert main([*argv, "--seeds", "0", "1", "2"]) == 0
    assert f"{statistics.mean(metrics):.4f}" in capsys.readouterr().out
    assert main([*argv, "--seeds", "1", "1"]) == 2
    assert "--seeds must be distinct" in capsys.readouterr().err
