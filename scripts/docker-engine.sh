#!/usr/bin/env bash
# A Docker engine for the "docker" environment (idempotent, quiet, as root).
#   start: install docker.io if dockerd is missing, start dockerd if no engine answers
#          (no bridge, no iptables/forwarding changes: containers run with --network none),
#          wait for it, then build the rlm image if missing (`python -m
#          rlm.environments.docker_env`, with $PYTHON, default .venv/bin/python).
#   stop:  stop the dockerd that `start` started (none other).
# Exits non-zero with one line on stderr when no engine can run.
set -uo pipefail
cd "$(dirname "$0")/.."
PIDFILE=/run/rlm-dockerd.pid
LOG=/var/log/rlm-dockerd.log
FLAGS=(--bridge=none --iptables=false --ip-forward=false --ip-masq=false)
fail() { echo "docker-engine: $*" >&2; exit 1; }
up() { docker info >/dev/null 2>&1; }

stop() {
  [ -f "$PIDFILE" ] || return 0
  local pid; pid=$(cat "$PIDFILE")
  rm -f "$PIDFILE"
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
  kill -9 "$pid" 2>/dev/null || true
}

start() {
  if ! up; then
    if ! command -v dockerd >/dev/null; then
      { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io; } \
        >/dev/null 2>&1 || fail "cannot install docker.io with apt-get"
    fi
    command -v docker >/dev/null || fail "no docker command after installing docker.io"
    local driver pid
    for driver in overlay2 vfs; do
      setsid dockerd --storage-driver="$driver" "${FLAGS[@]}" </dev/null >>"$LOG" 2>&1 &
      pid=$!
      echo "$pid" >"$PIDFILE"
      for _ in $(seq 150); do
        up && break 2
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.2
      done
      stop
    done
    up || fail "dockerd does not start: $(tail -n 40 "$LOG" | grep -iE 'level=(fatal|error)' | tail -n 1 | cut -c 1-300)"
  fi
  local python="${PYTHON:-.venv/bin/python}"
  if [ -x "$python" ]; then
    "$python" -m rlm.environments.docker_env >/dev/null || fail "cannot build the rlm image"
  fi
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  *) fail "usage: $0 [start|stop]" ;;
esac
