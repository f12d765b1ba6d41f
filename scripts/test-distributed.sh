#!/usr/bin/env bash
# The tests of rlm.distributed (tests/distributed) against a real two-node Ray cluster.
# Ray's servers listen on every interface, so the cluster and the tests run in a private
# network namespace that has only a loopback interface: nothing outside can reach them,
# and they reach nothing outside.  Every process of that namespace is ended on exit.
# Usage: bash scripts/test-distributed.sh [pytest args...]   (after scripts/test.sh installed)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${RLM_IN_NETNS:-}" != 1 ]; then
  flags=(--net)
  [ "$(id -u)" = 0 ] || flags+=(--map-root-user)
  exec env RLM_IN_NETNS=1 unshare "${flags[@]}" bash "$0" "$@"
fi
ip link set lo up
mine=$(readlink /proc/self/ns/net)
outside=$(readlink "/proc/$PPID/ns/net" 2>/dev/null || echo none)
[ "$mine" != "$outside" ] || { echo "test-distributed: not in a private namespace" >&2; exit 1; }
cleanup() {
  # Every process in this private namespace but this shell: the Ray nodes and workers.
  for dir in /proc/[0-9]*; do
    pid=${dir#/proc/}
    [ "$pid" = "$$" ] && continue
    [ "$(readlink "$dir/ns/net" 2>/dev/null)" = "$mine" ] && kill -9 "$pid" 2>/dev/null
  done
  return 0
}
# Each run its own Ray temp dir, so runs in other namespaces never share session files.
export RLM_RAY_TMP RLM_RAY_STATE
RLM_RAY_TMP=$(mktemp -d /tmp/rlmray.XXXXXX)
RLM_RAY_STATE="$RLM_RAY_TMP/address"
cleanup_all() { cleanup; rm -rf "$RLM_RAY_TMP" "$RLM_RAY_TMP".*.log; }
trap cleanup_all EXIT
export RLM_RAY_ADDRESS
RLM_RAY_ADDRESS=$(bash scripts/ray-cluster.sh start)
.venv/bin/python -m pytest tests/distributed "$@"
