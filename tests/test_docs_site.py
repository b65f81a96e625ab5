"""The documentation site: it builds strict (a warning, a broken link or a docstring-less public name fails
it), no page cites an internal issue number, and the reference written from the code at build time
(docs/hooks/reference.py) names every public name, command, flag, model option and route.

Only the first test runs MkDocs; the others call the hook's page generators directly."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _hook():
    spec = importlib.util.spec_from_file_location("docs_reference_hook", DOCS / "hooks" / "reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


reference = _hook()


@pytest.mark.slow
def test_site_builds_strict_and_offline(tmp_path):
    site = tmp_path / "site"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "-f",
            str(ROOT / "mkdocs.yml"),
            "--site-dir",
            str(site),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "WARNING" not in done.stderr, done.stderr
    cli = (site / "reference" / "cli" / "index.html").read_text()
    assert "llmrec train" in cli and "generated:" not in cli
    api = (site / "reference" / "python-api" / "index.html").read_text()
    assert "llmrec.prepare" in api and "llmrec.Model" in api
    assert "fonts.googleapis.com" not in (site / "index.html").read_text()  # nothing fetched when read


def test_no_issue_numbers_in_readme_or_docs():
    files = [ROOT / "README.md", *(p for p in DOCS.rglob("*") if p.is_file())]
    found = []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # an image
        for n, line in enumerate(text.splitlines(), 1):
            if re.search(r"\bissues? #?\d+\b", line, re.IGNORECASE):
                found.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()[:100]}")
    assert not found, "internal issue numbers in user-facing text:\n" + "\n".join(found)


def test_every_public_name_has_a_docstring_and_a_reference_entry():
    import llmrec

    names = [n for n in dir(llmrec) if not n.startswith("_")]
    assert {"prepare", "train", "evaluate", "load", "Model", "TrainedRun", "QueryError"} <= set(names)
    assert reference.missing_docstrings() == []
    page = reference.python_api_page()
    for name in names:
        assert f'heading: "llmrec.{name}"' in page or f"::: llmrec.{name}" in page, name
    for heading, _, cls in reference.api_configs():
        section = page.split(f"### {heading}")[1]
        for row in reference.option_rows(cls()):
            assert f"| `{row['key']}` |" in section, (heading, row["key"])


def test_a_docstring_less_public_name_fails_the_build(monkeypatch):
    from mkdocs.exceptions import PluginError

    import llmrec

    def undocumented():
        pass

    monkeypatch.setattr(llmrec, "__all__", [*llmrec.__all__, "undocumented"])
    monkeypatch.setattr(llmrec, "undocumented", undocumented, raising=False)
    assert reference.missing_docstrings() == ["llmrec.undocumented"]
    with pytest.raises(PluginError, match=r"llmrec\.undocumented"):
        reference.on_config({"nav": []})


def test_cli_page_names_every_command_and_flag():
    page = reference.cli_page()
    paths, flags = reference.cli_option_strings()
    assert "llmrec experiments bench" in paths and "--device" in flags
    for path in paths:
        assert re.search(rf"^#+ `{re.escape(path)}`$", page, re.M), path
    for flag in flags:
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", page), flag


def test_options_page_names_every_option_of_every_model():
    page = reference.options_page()
    keys = reference.model_option_keys()
    assert "backbone.lora_r" in keys["illmrec"]
    for model, options in keys.items():
        section = page.split(f"## `{model}` ")[1].split("\n## ")[0]
        for key in options:
            assert f"| `{key}` |" in section, (model, key)


def test_http_page_names_every_route_and_schema():
    page = reference.http_api_page()
    schema = reference.openapi_schema()
    for path, methods in schema["paths"].items():
        for method in methods:
            assert f"## `{method.upper()} {path}`" in page
    for name in schema["components"]["schemas"]:
        assert f"{{#schema-{name.lower()}}}" in page


def test_each_reference_page_is_a_stub_with_one_known_marker():
    for page in (DOCS / "reference").glob("*.md"):
        markers = reference.MARKER.findall(page.read_text())
        assert len(markers) == 1 and markers[0] in reference.PAGES, page
        assert page.stem == markers[0]
