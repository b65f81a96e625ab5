"""The GPU check's device, shared models and data, and its report.

Every part runs twice: on ``cuda`` (marked ``gpu``: ``make gpu-check`` selects it; skipped without a CUDA
device) and on the ``cpu`` at tiny scale in the ordinary suite, so the check cannot rot while no GPU runs it.
Each part's outcome, time and figures (what a test puts into its ``figures`` fixture) go into one report per
device: for ``cuda`` (or whenever ``LLMREC_GPU_CHECK_OUT`` names a folder) ``gpu-check.json`` and
``gpu-check.md`` under that folder (default ``runs/gpu-check``), and one summary printed at the end.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from llmrec.experiments.gpu_check import random_llm, synthetic_catalog, write_report

_PARTS: dict[str, dict[str, dict[str, Any]]] = {}  # device -> part -> outcome, seconds, figures, reason
_START = time.monotonic()
_SUMMARIES: list[str] = []


@pytest.fixture(
    scope="session",
    params=[pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=pytest.mark.gpu)],
)
def device(request) -> str:
    """Where the part runs: the CPU (tiny, in every test run) or the GPU (``make gpu-check``)."""
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device here: run make gpu-check on a machine with one")
    return request.param


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """The device of each part, for the report (before its fixtures: a skipped part is reported too)."""
    callspec = getattr(item, "callspec", None)
    if callspec is not None and "device" in callspec.params:
        item.user_properties.append(("device", callspec.params["device"]))


@pytest.fixture
def figures(request) -> dict[str, Any]:
    """What the part measured: goes into the report beside its outcome."""
    out: dict[str, Any] = {}
    request.node.user_properties.append(("figures", out))
    return out


@pytest.fixture(scope="session")
def catalog(tmp_path_factory) -> Path:
    """A small synthetic catalog with every feature the LLM models read (16 users, 40 items)."""
    return synthetic_catalog(tmp_path_factory.mktemp("gpu-check") / "data", users=16, items=40, per_user=12,
                             description_words=4)  # fmt: skip


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory, catalog) -> str:
    """A random 2-layer LLaMA (hidden 32) with a tokenizer trained here on the catalog's words."""
    return random_llm(tmp_path_factory.mktemp("gpu-check-lm"), "tiny", catalog)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    props = dict(report.user_properties)
    if "device" not in props:
        return
    part = report.nodeid.split("::")[-1].replace("test_", "", 1)
    part = part.replace(f"[{props['device']}-", "[").replace(f"-{props['device']}]", "]")
    part = part.replace(f"[{props['device']}]", "")
    entry = _PARTS.setdefault(props["device"], {}).setdefault(part, {"outcome": "passed", "seconds": 0.0})
    entry["seconds"] += report.duration
    if props.get("figures"):
        entry["figures"] = props["figures"]
    if report.skipped:
        entry["outcome"] = "skipped"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        entry["reason"] = reason.removeprefix("Skipped: ")
    elif report.failed:
        entry["outcome"] = "failed"
        entry["reason"] = report.longreprtext.strip().splitlines()[-1][:300] if report.longreprtext else ""


def pytest_sessionfinish(session: pytest.Session) -> None:
    """The report of each device that ran: always for ``cuda`` (a check of which every part was skipped,
    e.g. without a GPU, ends with exit status 5, not as a success), for the CPU when asked."""
    out = os.environ.get("LLMREC_GPU_CHECK_OUT")
    for device, parts in _PARTS.items():
        ran = any(p["outcome"] != "skipped" for p in parts.values())
        if device == "cuda" or (out and ran):
            folder = Path(out or "runs/gpu-check") / ("" if device == "cuda" else device)
            summary = write_report(folder, device, parts, time.monotonic() - _START)
            _SUMMARIES.append(f"{summary}\n\nwritten to {folder / 'gpu-check.json'}")
            if not ran and session.exitstatus == pytest.ExitCode.OK:
                session.exitstatus = pytest.ExitCode.NO_TESTS_COLLECTED


def pytest_terminal_summary(terminalreporter) -> None:
    for summary in _SUMMARIES:
        terminalreporter.write_sep("=", "llmrec GPU check")
        terminalreporter.write_line(summary)
