"""The core installs light: each extra's entry point, with its package missing, says in one line which extra to
install (or, for prepare's DuckDB engine, falls back to pandas); and requirements.lock pins every dependency
pyproject.toml names, at a version its range allows.

A missing package is simulated with ``sys.modules[name] = None`` (Python then raises ImportError on import)."""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from build_backend import run_build_hook
from llmrec.errors import LlmrecError
from llmrec.extras import EXTRAS, MissingExtra, available, require

tomllib = pytest.importorskip("tomllib")  # Python 3.11+
ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
LOCKED_EXTRAS = ("all", "dev", "docs")  # what requirements.lock holds (scripts/lock.sh)
PYTHONS = ("3.10", "3.11", "3.12", "3.13")


def _missing(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    """Make ``modules`` unimportable, and forget llmrec.serve so that its import runs its check again."""
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)
    for name in [m for m in sys.modules if m == "llmrec.serve" or m.startswith("llmrec.serve.")]:
        monkeypatch.delitem(sys.modules, name)


# ----------------------------------------------------------------------------- each extra's entry point


@pytest.mark.parametrize("module", ["fastapi", "uvicorn", "httptools"])
def test_serve_without_its_extra_is_one_line_naming_it(monkeypatch, capsys, module):
    from llmrec.cli import main

    _missing(monkeypatch, module)
    assert main(["serve", "runs/x"]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"llmrec: error: llmrec serve needs the serve extra ({module} is not installed); "
        "pip install 'llmrec[serve]'\n"
    )


def test_import_llmrec_serve_without_fastapi_is_an_import_error_naming_the_extra(monkeypatch):
    _missing(monkeypatch, "fastapi")
    with pytest.raises(ImportError, match=r"serve extra.*pip install 'llmrec\[serve\]'") as caught:
        import llmrec.serve  # noqa: F401
    assert isinstance(caught.value, LlmrecError) and caught.value.extra == "serve"


def test_bench_serve_without_httpx_names_the_serve_extra(monkeypatch, tmp_path):
    from llmrec.experiments.serve_bench import BenchServeConfig, run_bench_serve

    _missing(monkeypatch, "httpx")
    with pytest.raises(MissingExtra, match=r"bench-serve needs the serve extra \(httpx is not installed\)"):
        run_bench_serve(BenchServeConfig(run=str(tmp_path)))


def _ml100k(tmp_path: Path, **options):
    from llmrec.data.processing import PrepareConfig

    return PrepareConfig(
        dataset="ml-100k", out=str(tmp_path / "ds"), max_users=20, num_negatives=5, **options
    )


def test_prepare_without_duckdb_falls_back_to_pandas_with_a_note(monkeypatch, tmp_path, caplog):
    """The default engine is duckdb; a core install (no duckdb extra) prepares the same files with pandas."""
    from llmrec.data.processing import prepare

    _missing(monkeypatch, "duckdb")
    assert not available("duckdb")
    with caplog.at_level(logging.WARNING, logger="llmrec.data.processing"):
        meta = prepare(_ml100k(tmp_path))
    assert meta["config"]["engine"] == "pandas" and meta["counts"]["users"] == 20
    assert (
        "DuckDB is not installed (pip install 'llmrec[duckdb]'): preparing with --engine pandas"
        in caplog.text
    )


@pytest.mark.parametrize("option", [{"memory_limit": "1GB"}, {"threads": 1}])
def test_prepare_with_duckdb_options_without_duckdb_is_refused_naming_the_extra(
    monkeypatch, tmp_path, option
):
    from llmrec.data.processing import prepare

    _missing(monkeypatch, "duckdb")
    with pytest.raises(
        MissingExtra, match=r"--engine duckdb with --memory-limit or --threads needs the duckdb"
    ):
        prepare(_ml100k(tmp_path, **option))
    assert not (tmp_path / "ds").exists()


def test_bench_prepare_without_duckdb_names_the_extra(monkeypatch, tmp_path):
    from llmrec.experiments.prepare_bench import PrepareBenchConfig, run_prepare_bench

    _missing(monkeypatch, "duckdb")
    with pytest.raises(MissingExtra, match=r"bench-prepare needs the duckdb extra"):
        run_prepare_bench(PrepareBenchConfig(out=str(tmp_path)))


@pytest.mark.parametrize(
    ("log_with", "extra"), [("tensorboard", "tracking"), ("wandb", "wandb"), ("mlflow", "mlflow")]
)
def test_a_tracker_without_its_package_names_its_extra(monkeypatch, tmp_path, log_with, extra):
    from llmrec.models.base import build_model
    from llmrec.training import distributed

    detect, named = distributed._TRACKERS[log_with]
    assert named == extra
    monkeypatch.setitem(distributed._TRACKERS, log_with, (lambda: False, extra))
    model = build_model("sasrec", {"epochs": 1, "hidden": 8, "max_len": 5}, 10, 10)
    with pytest.raises(
        MissingExtra, match=rf"--log-with {log_with} needs the {extra} extra.*'llmrec\[{extra}\]'"
    ):
        distributed.accelerator_for(model, log_with, tmp_path)


def test_require_names_the_extra_and_keeps_other_import_errors(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pyspark", None)
    with pytest.raises(MissingExtra) as caught:
        require("spark", "the Spark plan")
    assert str(caught.value) == (
        "the Spark plan needs the spark extra (pyspark is not installed); pip install 'llmrec[spark]'"
    )
    # a package that is there but fails on an import of its own is not reported as a missing extra
    (tmp_path / "llmrec_fixture_broken.py").write_text("import llmrec_broken_dep\n")
    monkeypatch.setitem(sys.modules, "llmrec_broken_dep", None)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="llmrec_broken_dep"):
        require("spark", "x", ("llmrec_fixture_broken",))


def test_every_extra_llmrec_names_is_in_pyproject():
    extras = PROJECT["optional-dependencies"]
    assert set(EXTRAS) == set(extras) - {"all", "dev"}
    for extra, modules in EXTRAS.items():
        distributions = {canonicalize_name(Requirement(r).name) for r in extras[extra]}
        assert distributions, extra
        assert modules, extra


# ----------------------------------------------------------------------------- the lock


def _lock() -> list[Requirement]:
    lines = (ROOT / "requirements.lock").read_text(encoding="utf-8").splitlines()
    return [Requirement(line) for line in lines if line and not line.startswith((" ", "#"))]


def _env(python: str) -> dict[str, str]:
    env = default_environment()
    env.update(
        python_version=python,
        python_full_version=f"{python}.0",
        sys_platform="linux",
        platform_system="Linux",
        platform_machine="x86_64",
        implementation_name="cpython",
        platform_python_implementation="CPython",
    )
    return env


def _pyproject_requirements(env: dict[str, str]) -> list[Requirement]:
    """The core and the locked extras, with llmrec[...] self-references expanded, whose markers hold in ``env``."""
    found, todo, seen = [], [("", r) for r in PROJECT["dependencies"]], set()
    todo += [(extra, r) for extra in LOCKED_EXTRAS for r in PROJECT["optional-dependencies"][extra]]
    while todo:
        extra, text = todo.pop()
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate({**env, "extra": extra}):
            continue
        if req.name == "llmrec":
            for sub in req.extras - seen:
                seen.add(sub)
                todo += [(sub, r) for r in PROJECT["optional-dependencies"][sub]]
            continue
        found.append(req)
    return found


@pytest.mark.parametrize("python", PYTHONS)
def test_the_lock_pins_every_dependency_pyproject_names_within_its_range(python):
    env = _env(python)
    pinned: dict[str, str] = {}
    for req in _lock():
        if req.marker is None or req.marker.evaluate(env):
            (spec,) = req.specifier
            assert spec.operator == "==", req
            assert canonicalize_name(req.name) not in pinned, f"{req.name} pinned twice for Python {python}"
            pinned[canonicalize_name(req.name)] = spec.version
    for req in _pyproject_requirements(env):
        name = canonicalize_name(req.name)
        assert name in pinned, f"{req} (pyproject.toml) is not in requirements.lock for Python {python}"
        assert req.specifier.contains(pinned[name], prereleases=True), (
            f"requirements.lock pins {name}=={pinned[name]}, outside pyproject.toml's {req}"
        )


def test_the_lock_pins_the_documented_versions_on_python_3_11():
    """The versions that printed the documented numbers (CI runs Python 3.11)."""
    env = _env("3.11")
    pinned = {
        canonicalize_name(r.name): next(iter(r.specifier)).version
        for r in _lock()
        if r.marker is None or r.marker.evaluate(env)
    }
    documented = {"torch": "2.13.0", "transformers": "5.25.0", "pandas": "3.1.1", "numpy": "2.4.6"}
    documented |= {"duckdb": "2.0.1", "peft": "0.21.2", "accelerate": "1.16.0"}
    assert {name: pinned.get(name) for name in documented} == documented


def test_the_lock_leaves_out_cuda_only_packages():
    names = [canonicalize_name(r.name) for r in _lock()]
    assert not [n for n in names if re.match(r"(nvidia-|triton$|cuda-)", n)]
    assert all("+" not in str(r.specifier) for r in _lock())  # torch==2.13.0 matches the CPU and CUDA builds


def test_the_install_script_installs_from_the_lock():
    script = (ROOT / "scripts" / "install.sh").read_text(encoding="utf-8")
    assert "LOCK=requirements.lock" in script and '-r "$tmp/lock.txt"' in script
    assert "--no-deps --no-build-isolation -e ." in script
    assert re.search(
        r"^lock:\n\tbash scripts/lock.sh$", (ROOT / "Makefile").read_text(encoding="utf-8"), re.M
    )


# ----------------------------------------------------------------------------- the metadata


def test_the_wheel_metadata_is_small_and_complete(tmp_path):
    """The long description is docs/pypi-description.md, not the README: METADATA stays a few kB."""
    for name in ("pyproject.toml", "LICENSE", PROJECT["readme"]):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes((ROOT / name).read_bytes())
    (tmp_path / "src" / "llmrec").mkdir(parents=True)
    (tmp_path / "src" / "llmrec" / "__init__.py").write_text("")
    dist_info = run_build_hook(tmp_path, "prepare_metadata_for_build_wheel", tmp_path / "meta")
    metadata = (dist_info / "METADATA").read_text()
    assert len(metadata.encode()) < 8000
    assert "Version: 0.2.0" in metadata and "Author: llmrec developers" in metadata
    for label in ("Homepage", "Documentation", "Source", "Issues", "Changelog"):
        assert f"Project-URL: {label}, https://github.com/llmrec/llmrec" in metadata
    assert "Provides-Extra: serve" in metadata and "Description-Content-Type: text/markdown" in metadata
    assert len((ROOT / PROJECT["readme"]).read_text(encoding="utf-8").splitlines()) <= 60
