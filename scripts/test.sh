#!/usr/bin/env bash
# Installs everything into .venv (created if missing) and runs the whole test suite.
# Usage: bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[dev,local,server]'
.venv/bin/ruff check src tests benchmarks examples
.venv/bin/python -m pytest "$@"
