#!/usr/bin/env bash
# A local two-node Ray cluster for the tests of rlm.distributed (idempotent, quiet).
#   start: a head node and a second worker node on 127.0.0.1, a few CPUs each, no
#          dashboard; the worker node also has the custom resource "rlm_model" (the
#          tests pin work to it).  Prints the address (also written to $STATE).
# There is no stop: `ray stop` ends every Ray process of the machine, other clusters'
# too.  Run it in a private network namespace (scripts/test-distributed.sh), which ends
# every process of that namespace when it is done.
# Uses $RAY (default .venv/bin/ray).  Exits non-zero with one line on stderr on failure.
set -uo pipefail
cd "$(dirname "$0")/.."
RAY="${RAY:-.venv/bin/ray}"
PORT="${RLM_RAY_PORT:-6389}"
STATE="${RLM_RAY_STATE:-/tmp/rlm-ray-cluster}"
TMP="${RLM_RAY_TMP:-/tmp/rlm-ray}"
CPUS="${RLM_RAY_CPUS:-2}"
fail() { echo "ray-cluster: $*" >&2; exit 1; }
common=(--disable-usage-stats --num-cpus="$CPUS")

start() {
  [ -x "$RAY" ] || fail "no $RAY: install the 'ray' extra first"
  local address="127.0.0.1:$PORT"
  if [ -f "$STATE" ] && RAY_ADDRESS="$address" "$RAY" status >/dev/null 2>&1; then
    echo "$address"; return 0
  fi
  export RAY_USAGE_STATS_ENABLED=0
  "$RAY" start --head --node-ip-address=127.0.0.1 --port="$PORT" --temp-dir="$TMP" \
    "${common[@]}" --object-store-memory=$((2 * 1024 * 1024 * 1024)) \
    --include-dashboard=false --min-worker-port=20000 --max-worker-port=20999 \
    >"$TMP.head.log" 2>&1 || fail "head node: $(tail -n 3 "$TMP.head.log" | tr '\n' ' ')"
  "$RAY" start --address="$address" --node-ip-address=127.0.0.1 "${common[@]}" \
    --object-store-memory=$((2 * 1024 * 1024 * 1024)) --resources='{"rlm_model": 2}' \
    --min-worker-port=21000 --max-worker-port=21999 \
    >"$TMP.worker.log" 2>&1 || fail "worker node: $(tail -n 3 "$TMP.worker.log" | tr '\n' ' ')"
  for _ in $(seq 60); do
    if RAY_ADDRESS="$address" "$RAY" status 2>/dev/null | grep -q "rlm_model"; then
      echo "$address" >"$STATE"; echo "$address"; return 0
    fi
    sleep 1
  done
  fail "the worker node did not join the head at $address"
}

case "${1:-}" in
  start) start ;;
  *) echo "usage: $0 start" >&2; exit 2 ;;
esac
