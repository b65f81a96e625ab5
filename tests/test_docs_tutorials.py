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

import contextlib
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
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
BLOCK_TIMEOUT_S = 240  # under pytest-timeout's 600 s, so a hung block is reported with its output

# the first tutorial's commands that the module fixture runs once (their output is then copied in)
PREPARE_ML100K = "llmrec prepare ml-100k"
TRAIN_SASREC = "llmrec train sasrec --data data/ml-100k --out runs/sasrec -o epochs=5"
# placeholders filled in at run time: {ml100k} {sasrec} (the fixture's copies), {port} (a free port),
# {tiny_llm} (the tests' random 2-layer Llama, hidden 32), {venv} (this interpreter's bin folder)
COPY_ML100K = "mkdir -p data && cp -r {ml100k} data/ml-100k"
COPY_SASREC = "mkdir -p runs && cp -r {sasrec} runs/sasrec"
TINY = '-o "backbone.llm={tiny_llm}"'

# The Amazon download replaced by generated files in the same layout (reviews + metadata JSON lines, image
# URLs that are never fetched) and a local picture per product for 'llmrec images --image-dir'.
FAKE_AMAZON = """python - <<'EOF'
import json, random
from pathlib import Path
from PIL import Image
random.seed(0)
raw = Path("raw")
(raw / "images").mkdir(parents=True, exist_ok=True)
asins = [f"B{i:09d}" for i in range(150)]
with open(raw / "meta_All_Beauty.jsonl", "w") as f:
    for i, asin in enumerate(asins):
        images = [{"thumb": None, "large": f"https://example.invalid/{asin}.jpg", "variant": "MAIN", "hi_res": None}]
        record = {"parent_asin": asin, "title": f"Lipstick {i}", "store": f"Brand {i % 7}",
                  "categories": ["Beauty", "Makeup"], "description": [f"Shade number {i}."],
                  "features": ["Long lasting"], "images": images, "main_category": "All Beauty"}
        f.write(json.dumps(record) + "\\n")
        Image.new("RGB", (64, 64), (i % 256, (7 * i) % 256, (13 * i) % 256)).save(raw / "images" / f"{asin}.png")
with open(raw / "All_Beauty.jsonl", "w") as f:
    for u in range(200):
        for t, asin in enumerate(random.sample(asins, 8)):
            review = {"rating": float(random.randint(1, 5)), "title": "ok", "text": "fine", "images": [],
                      "asin": asin, "parent_asin": asin, "user_id": f"U{u:05d}",
                      "timestamp": 1600000000000 + 86400000 * t + u, "helpful_vote": 0, "verified_purchase": True}
            f.write(json.dumps(review) + "\\n")
EOF"""
WGET_AMAZON = (
    "wget -P raw https://huggingface.co/datasets/McAuley-Lab/Amazon-Reviews-2023/resolve/main/raw/"
    "review_categories/All_Beauty.jsonl\n"
    "wget -P raw https://huggingface.co/datasets/McAuley-Lab/Amazon-Reviews-2023/resolve/main/raw/"
    "meta_categories/meta_All_Beauty.jsonl"
)

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
        # SmolLM2-135M trains for minutes on a CPU: the tests' tiny random backbone instead, and fewer
        # epochs of the projectors alone (the whole page runs in under a minute on 2 idle cores)
        "llmrec train illmrec": f"llmrec train illmrec {TINY}",
        "-o head_epochs=10": "-o head_epochs=2",
        "--port 8000": "--port {port}",
        "localhost:8000": "localhost:{port}",
    },
    "illmrec-on-gpu.md": {
        WGET_AMAZON: FAKE_AMAZON,
        "llmrec images --data data/beauty --workers 32": "llmrec images --data data/beauty --image-dir raw/images",
        "google/siglip-base-patch16-224": "efficientnet-lite0",
        "--device cuda": "--device cpu",
        "--out runs/beauty-sasrec": "--out runs/beauty-sasrec -o epochs=3",
        "-o recipe=official -o backbone.llm": "-o recipe=official -o epochs=1 -o backbone.llm",
        "princeton-nlp/Sheared-LLaMA-2.7B": "{tiny_llm}",
    },
    "histllm-and-ctr.md": {
        PREPARE_ML100K: COPY_ML100K,
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


DONE = "@@BLOCK-DONE@@"
PY_DRIVER = f"""
import json, sys, traceback
scope = {{"__name__": "__main__"}}
for line in sys.stdin:
    ok = True
    try:
        exec(compile(json.loads(line), "<tutorial block>", "exec"), scope)
    except BaseException:
        traceback.print_exc()
        ok = False
    sys.stdout.flush(); sys.stderr.flush()
    print("{DONE}", ok, flush=True)
"""


class Session:
    """One long-lived shell or Python process that runs a tutorial's blocks one after another, keeping its
    state (the working directory, background jobs such as a server, Python variables) as a reader's terminal
    or notebook does. Output is read by a thread, so a hung block times out instead of hanging the test."""

    def __init__(self, kind: str, cwd: Path, env: dict[str, str]) -> None:
        self.kind, self.cwd = kind, cwd
        argv = (
            ["bash", "--noprofile", "--norc"] if kind == "bash" else [sys.executable, "-u", "-c", PY_DRIVER]
        )
        self.proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # the whole group (servers a block started) is killed at close()
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        if kind == "bash":
            self._send("set -euo pipefail\n")

    def _read(self) -> None:
        assert self.proc.stdout
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def _send(self, text: str) -> None:
        assert self.proc.stdin
        self.proc.stdin.write(text)
        self.proc.stdin.flush()

    def run(self, code: str, where: str, timeout: float = BLOCK_TIMEOUT_S) -> str:
        if self.kind == "bash":
            script = self.cwd.parent / f"{self.cwd.name}-block-{time.monotonic_ns()}.sh"
            script.write_text(code)
            self._send(f"source {script}\necho '{DONE} True'\n")
        else:
            self._send(json.dumps(code) + "\n")
        out: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                line = ""
                if self.proc.poll() is not None and self.lines.empty():
                    line = None
                elif time.monotonic() > deadline:
                    raise AssertionError(  # noqa: B904 (the timeout is the error, not the empty queue)
                        f"{where} timed out after {timeout:.0f} s:\n{code}\n{''.join(out)[-4000:]}"
                    )
            if line is None:
                raise AssertionError(
                    f"{where} failed (the session ended):\n{code}\n--- output ---\n{''.join(out)[-4000:]}"
                )
            if DONE in line:  # not always at the start: a block's last output may end without a newline
                before, after = line.split(DONE, 1)
                out.append(before)
                assert after.split()[0] == "True", (
                    f"{where} failed:\n{code}\n--- output ---\n{''.join(out)[-4000:]}"
                )
                return "".join(out)
            out.append(line)

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)


def run_bash(code: str, cwd: Path, env: dict[str, str], where: str) -> str:
    """One shell block in a session of its own."""
    session = Session("bash", cwd, env)
    try:
        return session.run(code, where)
    finally:
        session.close()


@pytest.fixture(scope="module")
def ml100k(tmp_path_factory) -> dict[str, str]:
    """MovieLens-100K prepared and the first tutorial's SASRec trained, by that tutorial's own commands."""
    first = "\n".join(code for _, code, _ in code_blocks("first-recommendations.md"))
    assert PREPARE_ML100K in first and TRAIN_SASREC in first, "the first tutorial's commands changed"
    work = tmp_path_factory.mktemp("ml100k")
    run_bash(f"{PREPARE_ML100K}\n{TRAIN_SASREC}\n", work, environment(), "preparing MovieLens-100K")
    return {"ml100k": str(work / "data" / "ml-100k"), "sasrec": str(work / "runs" / "sasrec")}


def fill(text: str, values: dict[str, str]) -> str:
    """The placeholders {name} of a substitution filled in (the text may hold other braces)."""
    for name, value in values.items():
        text = text.replace("{" + name + "}", value)
    return text


def run_tutorial(page: str, tmp_path: Path, values: dict[str, str]) -> list[str]:
    """Run every block of ``page`` with its substitutions; returns each block's output."""
    values = {"port": str(free_port()), "venv": str(Path(sys.executable).parent), **values}
    env = environment()
    subs = SUBSTITUTIONS[page]
    blocks = code_blocks(page)
    whole = "\n".join(code for _, code, _ in blocks)
    for text in subs:
        assert text in whole, f"{page}: the substitution for {text!r} no longer matches any block"
    sessions: dict[str, Session] = {}
    outputs = []
    try:
        for i, (lang, code, reason) in enumerate(blocks, 1):
            code = runnable(lang, code)
            if code is None or reason is not None:
                continue
            for text, replacement in subs.items():
                code = code.replace(text, fill(replacement, values))
            kind = "python" if lang == "python" else "bash"
            if kind not in sessions:
                sessions[kind] = Session(kind, tmp_path, env)
            outputs.append(sessions[kind].run(code, f"{page} block {i} ({lang})"))
    finally:
        for session in sessions.values():
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
@pytest.mark.xdist_group("ml100k-tutorials")  # one worker prepares MovieLens once (--dist loadgroup)
def test_first_recommendations(tmp_path, ml100k):
    out = run_tutorial("first-recommendations.md", tmp_path, ml100k)
    text = "\n".join(out)
    assert "Star Wars" in text or "items" in text
    assert (tmp_path / "runs" / "popularity" / "metrics.json").exists()


@pytest.mark.slow
def test_your_own_data(tmp_path, tiny_llm):
    run_tutorial("your-own-data.md", tmp_path, {"tiny_llm": tiny_llm})
    assert (tmp_path / "runs" / "shop-illmrec" / "metrics.json").exists()
    # the item table's own column names and its relative picture paths reached the dataset
    import pandas as pd

    manifest = pd.read_parquet(tmp_path / "data" / "shop" / "images" / "manifest.parquet")
    assert (manifest["status"] == "ok").all() and len(manifest) == 48


@pytest.mark.slow
def test_illmrec_on_gpu(tmp_path, tiny_llm):
    run_tutorial("illmrec-on-gpu.md", tmp_path, {"tiny_llm": tiny_llm})


@pytest.mark.slow
@pytest.mark.xdist_group("ml100k-tutorials")  # one worker prepares MovieLens once (--dist loadgroup)
def test_histllm_and_ctr(tmp_path, ml100k, tiny_llm):
    run_tutorial("histllm-and-ctr.md", tmp_path, {**ml100k, "tiny_llm": tiny_llm})
    metrics = json.loads((tmp_path / "runs" / "histllm" / "metrics.json").read_text())
    assert {"auc", "uauc"} <= set(metrics["test"])


@pytest.mark.slow
@pytest.mark.xdist_group("ml100k-tutorials")  # one worker prepares MovieLens once (--dist loadgroup)
def test_service_in_production(tmp_path, ml100k):
    run_tutorial("service-in-production.md", tmp_path, ml100k)


def test_a_failing_block_names_its_page_and_block(tmp_path):
    """The harness itself: state carries from block to block, a failing block is reported with its output,
    and a background server does not hold the test up."""
    shell = Session("bash", tmp_path, environment())
    try:
        assert shell.run("sleep 60 &\ncd /\nx=41", "b1") == ""
        assert shell.run("echo $((x + 1)) $PWD", "b2").split() == ["42", "/"]
        # output without a final newline (curl's JSON) still ends its block (it once hung the service page)
        assert shell.run('printf \'{"status":"ok"}\'', "b2b") == '{"status":"ok"}'
        with pytest.raises(AssertionError, match="b3 failed"):
            shell.run("echo before\nfalse\n", "b3")
    finally:
        shell.close()
    python = Session("python", tmp_path, environment())
    try:
        assert python.run("x = 41", "p1") == ""
        assert python.run("print(x + 1)", "p2").strip() == "42"
        with pytest.raises(AssertionError, match="p3 failed"):
            python.run("raise ValueError('no')", "p3")
    finally:
        python.close()
