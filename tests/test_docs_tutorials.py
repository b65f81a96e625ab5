"""Every code block of the tutorials (docs/tutorials/*.md) runs, in order, as a reader would run it.

```bash`` and ```console`` blocks run in bash (``set -euo pipefail``; a console block's ``$ `` lines only) in one
temporary working directory per tutorial; ```python`` blocks run in ONE Python process per tutorial that keeps
its state from block to block, as a notebook does. ``llmrec`` on PATH is this checkout's (the venv's bin first,
PYTHONPATH = src).

What cannot run here as written (a download, ``--device cuda``, a hub model id, SmolLM2's minutes of training
on a CPU) is changed by an explicit substitution listed in SUBSTITUTIONS (exact text -> replacement); each one
must still occur in its tutorial, so a stale entry fails. A block the test cannot run at all carries
``<!-- not-run: reason -->`` right before it; at most NOT_RUN_LIMIT of them exist in all.

Data a reader would get the same either way is made once per module: MovieLens-100K prepared and the first
tutorial's SASRec trained, by the first tutorial's own commands (read from its page), then copied where a
tutorial runs those commands.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "docs" / "tutorials"
PAGES = [
    "first-recommendations.md",
    "your-own-data.md",
    "illmrec-on-gpu.md",
    "histllm-and-ctr.md",
    "service-in-production.md",
]
NOT_RUN_LIMIT = 3
BLOCK_TIMEOUT_S = 600

# the first tutorial's commands that the module fixture runs once (their output is then copied in)
PREPARE_ML100K = "llmrec prepare ml-100k"
TRAIN_SASREC = "llmrec train sasrec --data data/ml-100k --out runs/sasrec -o epochs=5"
# placeholders filled in at run time: {ml100k} {sasrec} (the fixture's copies), {port} (a free port),
# {tiny_llm} (the tests' random 2-layer Llama, hidden 32), {venv} (this interpreter's bin folder)
COPY_ML100K = "mkdir -p data && cp -r {ml100k} data/ml-100k"
COPY_SASREC = "mkdir -p runs && cp -r {sasrec} runs/sasrec"
TINY = '-o "backbone.llm={tiny_llm}"'

SUBSTITUTIONS: dict[str, dict[str, str]] = {
    "first-recommendations.md": {
        # the installation is the environment the tests run in
        "git clone https://github.com/llmrec/llmrec.git\ncd llmrec\nmake install\nsource .venv/bin/activate": (
            "llmrec --version"
        ),
        PREPARE_ML100K: COPY_ML100K,
        TRAIN_SASREC: COPY_SASREC,
        "--port 8000": "--port {port}",
        "localhost:8000": "localhost:{port}",
    },
    "your-own-data.md": {
        # SmolLM2-135M trains for minutes on a CPU: the tests' tiny random backbone instead
        "llmrec train illmrec": f"llmrec train illmrec {TINY}",
        "--port 8000": "--port {port}",
        "localhost:8000": "localhost:{port}",
    },
    "illmrec-on-gpu.md": {},
    "histllm-and-ctr.md": {
        PREPARE_ML100K: COPY_ML100K,
        "llmrec prompts tallrec": f"llmrec prompts tallrec {TINY}",
        "llmrec train tallrec": f"llmrec train tallrec {TINY}",
        "llmrec train histllm": f"llmrec train histllm {TINY}",
    },
    "service-in-production.md": {
        PREPARE_ML100K: COPY_ML100K,
        TRAIN_SASREC: COPY_SASREC,
        "--port 8000": "--port {port}",
        "localhost:8000": "localhost:{port}",
        "--port 8080": "--port {port}",
        "localhost:8080": "localhost:{port}",
    },
}

FENCE = re.compile(r"^```(\w+)[^\n]*\n(.*?)^```\s*$", re.S | re.M)
NOT_RUN = re.compile(r"<!--\s*not-run:\s*(.+?)\s*-->\s*$")


def code_blocks(page: str) -> list[tuple[str, str, str | None]]:
    """(language, code, not-run reason) of every fenced block of a tutorial, in order."""
    text = (TUTORIALS / page).read_text()
    out = []
    for m in FENCE.finditer(text):
        before = text[: m.start()].rstrip().splitlines()
        reason = NOT_RUN.search(before[-1]) if before else None
        out.append((m.group(1), m.group(2), reason.group(1) if reason else None))
    return out


def runnable(lang: str, code: str) -> str | None:
    """The code to run: bash as is, a console block's ``$`` lines, python as is; None for text/output."""
    if lang == "bash":
        return code
    if lang == "console":
        return "\n".join(line[2:] for line in code.splitlines() if line.startswith("$ "))
    if lang == "python":
        return code
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environment() -> dict[str, str]:
    venv_bin = str(Path(sys.executable).parent)
    return dict(
        os.environ,
        PATH=venv_bin + os.pathsep + os.environ.get("PATH", ""),
        PYTHONPATH=str(ROOT / "src"),
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        LLMREC_TEST_THREADS="1",
    )


def run_bash(code: str, cwd: Path, env: dict[str, str], where: str) -> str:
    """Run one shell block; any process it leaves behind (a server it forgot) is killed with it. The output
    goes to a file, not a pipe: a process left in the background would hold a pipe open."""
    with tempfile.NamedTemporaryFile("w", suffix=".log", delete=False) as out:
        log = Path(out.name)
        proc = subprocess.Popen(
            ["bash", "-c", "set -euo pipefail\n" + code],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            proc.wait(timeout=BLOCK_TIMEOUT_S)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    text = log.read_text()
    log.unlink()
    assert proc.returncode == 0, f"{where} failed (exit {proc.returncode}):\n{code}\n--- output ---\n{text[-4000:]}"
    return text


DRIVER = r"""
import json, sys, traceback
scope = {"__name__": "__main__"}
for line in sys.stdin:
    code = json.loads(line)
    ok = True
    try:
        exec(compile(code, "<tutorial block>", "exec"), scope)
    except BaseException:
        traceback.print_exc()
        ok = False
    sys.stdout.flush(); sys.stderr.flush()
    print("\x00BLOCK-DONE", ok, flush=True)
"""


class PythonSession:
    """One Python process that runs blocks one after another in the same namespace."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-u", "-c", DRIVER],
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def run(self, code: str, where: str) -> str:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps(code) + "\n")
        self.proc.stdin.flush()
        lines = []
        for line in self.proc.stdout:
            if line.startswith("\x00BLOCK-DONE"):
                assert line.split()[1] == "True", f"{where} failed:\n{code}\n--- output ---\n{''.join(lines)[-4000:]}"
                return "".join(lines)
            lines.append(line)
        raise AssertionError(f"{where}: the Python process ended:\n{''.join(lines)[-4000:]}")

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="module")
def ml100k(tmp_path_factory) -> dict[str, str]:
    """MovieLens-100K prepared and the first tutorial's SASRec trained, by that tutorial's own commands."""
    first = "\n".join(code for _, code, _ in code_blocks("first-recommendations.md"))
    assert PREPARE_ML100K in first and TRAIN_SASREC in first, "the first tutorial's commands changed"
    work = tmp_path_factory.mktemp("ml100k")
    run_bash(f"{PREPARE_ML100K}\n{TRAIN_SASREC}\n", work, environment(), "preparing MovieLens-100K")
    return {"ml100k": str(work / "data" / "ml-100k"), "sasrec": str(work / "runs" / "sasrec")}


def run_tutorial(page: str, tmp_path: Path, values: dict[str, str]) -> list[str]:
    """Run every block of ``page`` with its substitutions; returns each block's output."""
    values = {"port": str(free_port()), "venv": str(Path(sys.executable).parent), **values}
    env = environment()
    subs = SUBSTITUTIONS[page]
    blocks = code_blocks(page)
    whole = "\n".join(code for _, code, _ in blocks)
    for text in subs:
        assert text in whole, f"{page}: the substitution for {text!r} no longer matches any block"
    session = None
    outputs = []
    try:
        for i, (lang, code, reason) in enumerate(blocks, 1):
            code = runnable(lang, code)
            if code is None or reason is not None:
                continue
            for text, replacement in subs.items():
                code = code.replace(text, replacement.format(**values))
            where = f"{page} block {i} ({lang})"
            if lang == "python":
                session = session or PythonSession(tmp_path, env)
                outputs.append(session.run(code, where))
            else:
                outputs.append(run_bash(code, tmp_path, env, where))
    finally:
        if session is not None:
            session.close()
    return outputs


def test_every_tutorial_page_exists_and_marks_few_blocks_not_run():
    reasons = [(page, r) for page in PAGES for _, _, r in code_blocks(page) if r is not None]
    assert len(reasons) <= NOT_RUN_LIMIT, reasons
    assert sorted(p.name for p in TUTORIALS.glob("*.md")) == sorted(PAGES)
    for page in PAGES:
        langs = {lang for lang, _, _ in code_blocks(page)}
        assert langs & {"bash", "console", "python"}, f"{page} has no code to run"


@pytest.mark.slow
def test_first_recommendations(tmp_path, ml100k):
    out = run_tutorial("first-recommendations.md", tmp_path, ml100k)
    text = "\n".join(out)
    assert "Star Wars" in text or "items" in text
    assert (tmp_path / "runs" / "popularity" / "metrics.json").exists()


@pytest.mark.slow
def test_your_own_data(tmp_path, tiny_llm):
    run_tutorial("your-own-data.md", tmp_path, {"tiny_llm": tiny_llm})
    assert (tmp_path / "runs" / "shop-illmrec" / "metrics.json").exists()


@pytest.mark.slow
def test_illmrec_on_gpu(tmp_path, tiny_llm):
    run_tutorial("illmrec-on-gpu.md", tmp_path, {"tiny_llm": tiny_llm})


@pytest.mark.slow
def test_histllm_and_ctr(tmp_path, ml100k, tiny_llm):
    run_tutorial("histllm-and-ctr.md", tmp_path, {**ml100k, "tiny_llm": tiny_llm})
    metrics = json.loads((tmp_path / "runs" / "histllm" / "metrics.json").read_text())
    assert {"auc", "uauc"} <= set(metrics["test"])


@pytest.mark.slow
def test_service_in_production(tmp_path, ml100k):
    run_tutorial("service-in-production.md", tmp_path, ml100k)


def test_a_failing_block_names_its_page_and_block(tmp_path):
    """The harness itself: a shell block that fails is reported with its output; a stray server is killed."""
    with pytest.raises(AssertionError, match="demo block 1 failed"):
        run_bash("sleep 60 &\necho before\nfalse\n", tmp_path, environment(), "demo block 1")
    session = PythonSession(tmp_path, environment())
    try:
        assert session.run("x = 41", "p1") == ""
        assert session.run("print(x + 1)", "p2").strip() == "42"
        with pytest.raises(AssertionError, match="p3 failed"):
            session.run("raise ValueError('no')", "p3")
    finally:
        session.close()

