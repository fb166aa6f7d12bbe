#!/usr/bin/env bash
# Create .venv and install Plinth with its test extras. Idempotent: a second run only re-checks.
# torch goes in first and stays pinned (constraints.txt): a torch-dependent package resolved first could otherwise pull
# a multi-GB CUDA build. Set TORCH_INDEX_URL (e.g. https://download.pytorch.org/whl/cpu) to choose a torch build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=".venv/.plinth-installed"
want="$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && .venv/bin/python -c "import plinth, torch" 2>/dev/null; then
  exit 0
fi
.venv/bin/python -m pip install -q --upgrade pip
if [ -n "${TORCH_INDEX_URL:-}" ]; then
  .venv/bin/python -m pip install -q -c constraints.txt torch --index-url "$TORCH_INDEX_URL"
else
  .venv/bin/python -m pip install -q -c constraints.txt torch
fi
.venv/bin/python -m pip install -q -c constraints.txt -e ".[test,scale]"
echo "$want" > "$stamp"
echo "setup: .venv ready ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
