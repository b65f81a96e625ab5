"""The files a release ships beside the code: the licence the metadata names, the citation, the version
the command line reports, the typing marker and the package's data files (the papers' settings)."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from build_backend import run_build_hook

ROOT = Path(__file__).resolve().parents[1]


def test_license_is_the_apache_2_text_pyproject_names():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("Copyright ") and "the llmrec authors" in text.splitlines()[0]
    assert "Apache License\n                           Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text and "APPENDIX: How to apply the Apache License" in text
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]


def test_citation_cff_parses_and_cites_both_papers():
    import yaml

    from llmrec import __version__

    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))
    assert {"cff-version", "message", "title", "authors"} <= cff.keys()  # CFF 1.2.0's required keys
    assert cff["cff-version"] == "1.2.0" and cff["authors"]
    assert cff["version"] == __version__ and cff["license"] == "Apache-2.0"
    refs = {ref["url"].rsplit("/", 1)[-1]: ref for ref in cff["references"]}
    assert refs.keys() == {"2503.06238", "2504.10150"}
    for arxiv_id, ref in refs.items():
        assert {"type", "title", "authors"} <= ref.keys() and ref["doi"] == f"10.48550/arXiv.{arxiv_id}"
    assert refs["2503.06238"]["title"] == (
        "Image is All You Need: Towards Efficient and Effective Large Language Model-Based Recommender Systems"
    )
    assert refs["2504.10150"]["title"].startswith("HistLLM: A Unified Framework for LLM-Based Multimodal")
    assert refs["2503.06238"]["authors"][0] == {"given-names": "Kibum", "family-names": "Kim"}
    assert refs["2504.10150"]["authors"][0] == {"given-names": "Chen", "family-names": "Zhang"}


def test_llmrec_version_prints_the_package_version_without_importing_torch():
    from llmrec import __version__

    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    done = subprocess.run(
        [sys.executable, "-m", "llmrec", "--version"], capture_output=True, text=True, env=env, check=True
    )
    assert done.stdout == f"llmrec {__version__}\n" and done.stderr == ""
    code = (
        "import sys\n"
        "from llmrec.cli import main\n"
        "assert main(['--version']) == 0\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.splitlines() == [f"llmrec {__version__}", "False"]


def test_pyproject_version_is_the_package_version():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    from llmrec import __version__

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["version"] == __version__


def test_py_typed_marks_the_package():
    assert (ROOT / "src" / "llmrec" / "py.typed").is_file()


def test_the_wheel_ships_py_typed_the_license_and_every_data_file(tmp_path):
    """Build the wheel from a copy of the tree with the venv's setuptools (no network) and read it."""
    # looked up, not imported: in a worker that already imported the stdlib distutils, importing setuptools
    # fails its own distutils check (seen under pytest-xdist in a clean clone)
    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("setuptools is not installed")
    for name in ("pyproject.toml", "LICENSE", "docs/pypi-description.md"):  # the last: the long description
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(
        ROOT / "src", tmp_path / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    wheel = run_build_hook(tmp_path, "build_wheel", tmp_path / "dist")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "llmrec/py.typed" in names and "llmrec/__init__.py" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    # every data file of the package, the papers' settings (llmrec reproduce) among them
    data = {
        p.relative_to(ROOT / "src").as_posix()
        for p in (ROOT / "src" / "llmrec").rglob("*")
        if p.is_file() and p.suffix not in (".py", ".pyc")
    }
    assert {
        "llmrec/experiments/papers/_datasets.yaml",
        "llmrec/experiments/papers/histllm-table2-news.yaml",
    } <= data
    assert not data - names, f"missing from the wheel: {sorted(data - names)}"


def test_the_readme_is_a_front_door_of_at_most_300_lines():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 300
    for needed in ("make demo", "make test", "2503.06238", "2504.10150", "docs/results/index.md", "LICENSE"):
        assert needed in text, needed


def test_the_changelog_keeps_a_changelog_and_names_this_version():
    from llmrec import __version__

    text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert text.startswith("# Changelog") and "## [Unreleased]" in text
    released = re.findall(r"^## \[(\d+\.\d+\.\d+)\] - (\d{4}-\d{2}-\d{2})$", text, re.M)
    assert released and released[0][0] == __version__, "the newest release section is this version"
    assert [v for v, _ in released] == sorted(
        (v for v, _ in released), key=lambda v: tuple(map(int, v.split("."))), reverse=True
    )
    assert f"[{__version__}]: " in text


def test_the_readmes_relative_links_resolve():
    """The README is read on the repository's page, outside the site's strict build: its links are checked here."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = {t.split("#", 1)[0] for t in re.findall(r"\]\(([^)\s]+)\)", text) if "://" not in t}
    assert "docs/results/index.md" in targets
    assert [t for t in sorted(targets) if t and not (ROOT / t).exists()] == []
