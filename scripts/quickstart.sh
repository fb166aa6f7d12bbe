#!/usr/bin/env bash
# Set up (first time only) and run `plinth quickstart`: data -> tokenizer -> pretrain -> evaluate -> sample -> report.
# Extra arguments go to the verb, e.g. scripts/quickstart.sh --max_steps 100
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/plinth quickstart "$@"
