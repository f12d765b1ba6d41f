#!/usr/bin/env bash
# Installs everything into .venv (created if missing) and runs the whole test suite: the
# main suite, then tests/distributed on a two-node Ray cluster (scripts/test-distributed.sh),
# and prints one closing line for both.
# Usage: bash scripts/test.sh [pytest args...]   (with args: only that pytest run)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
if [ "$(id -u)" = 0 ]; then  # the "sandbox" and "gvisor" environments: bubblewrap, runsc
  missing=""
  command -v bwrap >/dev/null || missing="$missing bubblewrap"
  command -v runsc >/dev/null || missing="$missing runsc"
  command -v chromium >/dev/null || missing="$missing chromium"  # the trace viewer's tests
  if [ -n "$missing" ]; then
    apt-get update -qq && apt-get install -y -qq $missing >/dev/null
  fi
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[dev,local,server,ipython,pyodide,serve,mcp,anthropic,gemini,litellm,otel,ray]'
.venv/bin/ruff check src tests benchmarks examples
# The "docker" environment's engine: started here, stopped on exit.
bash scripts/docker-engine.sh start || true; trap 'bash scripts/docker-engine.sh stop' EXIT
if [ "$#" -gt 0 ]; then  # a chosen subset: run just that
  .venv/bin/python -m pytest "$@"
  exit
fi
reports=$(mktemp -d)
.venv/bin/python -m pytest --junitxml="$reports/main.xml"
# rlm.distributed against a real two-node Ray cluster, in a private network namespace.
bash scripts/test-distributed.sh --junitxml="$reports/distributed.xml"
.venv/bin/python scripts/junit_total.py "$reports"/*.xml
