"""setuptools' PEP 517 hooks, run the way a build frontend runs them: in a fresh process, from a copy of the
sources (the tests that read the wheel or its metadata share this)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def run_build_hook(source: Path, hook: str, out: Path) -> Path:
    """Run ``setuptools.build_meta.<hook>(out)`` (``build_wheel``, ``prepare_metadata_for_build_wheel``) in a
    subprocess whose working directory is ``source``; returns what it built (``out`` / the name it returns)."""
    out.mkdir(parents=True, exist_ok=True)
    code = f"import sys, setuptools.build_meta as b; print(b.{hook}(sys.argv[1]))"
    done = subprocess.run(
        [sys.executable, "-c", code, str(out)], cwd=source, capture_output=True, text=True, check=True
    )
    return out / done.stdout.strip().splitlines()[-1]
