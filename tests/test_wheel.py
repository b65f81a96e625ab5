"""The wheel as a user gets it: built from the sources, installed into a fresh virtual environment from the
package registries alone, then ``llmrec assets install``, ``--version``, ``import llmrec`` and a tiny
prepare + train + recommend.

Opt-in (it installs torch and every dependency, minutes): ``make wheel-test``, or
``LLMREC_WHEEL_TEST=1 pytest -s tests/test_wheel.py``. ``LLMREC_WHEEL_TORCH`` is the torch requirement
installed before the wheel (default ``torch==2.13.0``, the CPU build ``scripts/install.sh`` pins; left
to the wheel's own dependency, pip resolves the newest torch with its CUDA packages); empty: none first.
It prints the wheel's size and the install times.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llmrec._version import __version__

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(3600),
    pytest.mark.skipif(
        os.environ.get("LLMREC_WHEEL_TEST") != "1",
        reason="builds and installs the wheel into a fresh venv (minutes): make wheel-test",
    ),
]


def _env() -> dict[str, str]:
    """This environment without what would make the venv see this checkout or this venv."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    return {**env, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _run(*cmd: str | Path, cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, env=_env(), text=True, capture_output=True)
    if check and done.returncode != 0:
        pytest.fail(
            f"{' '.join(map(str, cmd))} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    return done


def _timed(*cmd: str | Path, cwd: Path) -> float:
    t0 = time.perf_counter()
    _run(*cmd, cwd=cwd)
    return time.perf_counter() - t0


def test_the_wheel_in_a_fresh_environment(tmp_path: Path):
    # the sources a wheel is built from, copied so that the build leaves nothing in the checkout
    src = tmp_path / "src"
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md", "LICENSE", "docs/pypi-description.md"):
        if (ROOT / name).exists():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    dist = tmp_path / "dist"
    build_s = _timed(sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", dist, src, cwd=tmp_path)
    (wheel,) = dist.glob("llmrec-*.whl")

    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv, cwd=tmp_path)  # no system site packages
    py, llmrec = venv / "bin" / "python", venv / "bin" / "llmrec"
    torch = os.environ.get("LLMREC_WHEEL_TORCH", "torch==2.13.0")
    torch_s = _timed(py, "-m", "pip", "install", torch, cwd=tmp_path) if torch else 0.0
    wheel_s = _timed(py, "-m", "pip", "install", wheel, cwd=tmp_path)

    # before the assets: the list says missing, the demo refuses in one line naming the command
    listed = _run(llmrec, "assets", "list", cwd=tmp_path).stdout
    assert re.search(r"^smollm2\s+missing", listed, re.M), listed
    demo = _run(llmrec, "demo", "--runs", "runs/demo", cwd=tmp_path, check=False)
    assert demo.returncode == 2 and demo.stdout == "", demo
    assert demo.stderr.strip().splitlines() == [
        "llmrec demo: error: the demo needs offline assets that are not installed: movielens, minilm, "
        "smollm2; run 'llmrec assets install' (the default models and data, about 260 MB)"
    ]
    assets_s = _timed(llmrec, "assets", "install", cwd=tmp_path)
    listed = _run(llmrec, "assets", "list", cwd=tmp_path).stdout
    for name in ("smollm2", "efficientnet", "minilm", "movielens", "ml-1m"):
        assert re.search(rf"^{re.escape(name)}\s+present", listed, re.M), listed

    assert _run(llmrec, "--version", cwd=tmp_path).stdout.strip() == f"llmrec {__version__}"
    code = "import sys, llmrec; print(dir(llmrec)); print('torch' in sys.modules); print(llmrec.__file__)"
    shown = _run(py, "-c", code, cwd=tmp_path).stdout.splitlines()
    assert {"load", "prepare", "train", "evaluate", "Model"} <= set(eval(shown[0])), shown
    assert shown[1] == "False" and shown[2].startswith(str(venv)), shown  # the wheel's, light to import

    # a tiny pipeline: MovieLens-100K from the installed asset, two models, a recommendation
    t0 = time.perf_counter()
    _run(
        llmrec,
        "prepare",
        "ml-100k",
        "--max-users",
        "60",
        "--num-negatives",
        "20",
        "--out",
        "data/ml",
        cwd=tmp_path,
    )
    _run(llmrec, "train", "popularity", "--data", "data/ml", "--out", "runs/pop", cwd=tmp_path)
    sasrec = _run(
        llmrec, "train", "sasrec", "--data", "data/ml", "--out", "runs/sasrec", "-o", "epochs=1", "--threads", "1",
        cwd=tmp_path,
    )  # fmt: skip
    assert "test: " in sasrec.stdout and "hit@10=" in sasrec.stdout, sasrec.stdout
    user = _run(
        py, "-c", "import llmrec; print(llmrec.load('runs/sasrec').user_ids[0])", cwd=tmp_path
    ).stdout.strip()
    recs = _run(llmrec, "recommend", "runs/sasrec", "--user", user, "--k", "5", cwd=tmp_path).stdout
    assert len(recs.strip().splitlines()) == 5 and recs.lstrip().startswith("1. "), recs
    pipeline_s = time.perf_counter() - t0
    assert '"versions"' in (tmp_path / "runs" / "sasrec" / "config.json").read_text()

    print(
        f"\nwheel {wheel.name}: {wheel.stat().st_size:,} bytes (built in {build_s:.0f}s)\n"
        f"fresh venv: {torch or 'no torch first'} {torch_s:.0f}s, the wheel and its dependencies {wheel_s:.0f}s, "
        f"'llmrec assets install' {assets_s:.0f}s, prepare + 2 trainings + recommend {pipeline_s:.0f}s"
    )
