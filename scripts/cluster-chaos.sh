#!/usr/bin/env bash
# Chaos test of the cluster through Redis: what a client that trusts an acknowledgement expects.
#   scripts/cluster-chaos.sh [CYCLES=10] [SEED=random]
# Phase 1: a standalone redis-server with RDB snapshots (SAVE at random moments) and three fanout
# nodes; phase 2: a 3-master + 3-replica Redis Cluster and three nodes. In each phase, three
# acknowledged publishers (text PUBA, RATE msg/s in all, unique payloads) and six resuming
# subscribers (two per node; on a disconnect they move to the next node and resume by offset and
# epoch) run while CYCLES seeded faults, one per cycle, hit a few seconds apart:
#   standalone: SIGSTOP/SIGCONT of Redis (1-3 s), SIGKILL + restart empty, SIGKILL + restart from
#               an older snapshot, SIGKILL + restart of a fanout node;
#   cluster:    SIGSTOP/SIGCONT of a master (1-3 s), SIGKILL of a master (failover) then its
#               restart, SIGKILL + restart of a fanout node.
# Then it quiesces and checks the recorded history (scripts/chaos.py) against the promises:
#   1 one payload per (channel, epoch, offset), an acknowledged payload only at its offset;
#   2 every acknowledged publish reaches every subscriber once, in order, or it is told
#     (HIST epoch / expired) after a fault that can lose acknowledged data;
#   3 nothing acknowledged while Redis is gone; publishing comes back by itself (failover too);
#   4 subscribers of a killed node resume on another one.
# Prints each phase's faults, counts and violations (first few, with the seed), then
# "N passed, M failed" (one check per promise per phase); exits 1 on any violation.
# About 10-15 s per cycle per phase, plus set-up. Loopback only.
#   RATE=200 REDIS_TIMEOUT_MS=2000 PHASES=standalone,cluster KEEP=1 (keep the work dir)
#   SELFTEST=1 (also checks that the checker sees a dropped, doubled and swapped delivery)
set -euo pipefail
source "$(dirname "$0")/common.sh"
CYCLES=${1:-10}
SEED=${2:-$(( (RANDOM << 15 | RANDOM) + 1 ))}
RATE=${RATE:-200}
REDIS_TIMEOUT_MS=${REDIS_TIMEOUT_MS:-2000}
PHASES=${PHASES:-standalone,cluster}
PY=/usr/bin/python3
for tool in redis-server redis-cli; do
  command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install redis-server)" >&2; exit 1; }
done
"$PY" -c 'import redis' 2>/dev/null || { echo "needs python3-redis for $PY" >&2; exit 1; }
if [ -z "${FANOUT_BIN:-}" ]; then
  (cd "$ROOT" && nice -n 10 cargo build --release --quiet) || { echo "cargo build --release failed" >&2; exit 1; }
fi
WORK=$(mktemp -d /tmp/cluster-chaos.XXXXXX)
DRIVER=
cleanup() {
  if [ -n "$DRIVER" ] && kill -0 "$DRIVER" 2>/dev/null; then
    kill -TERM "$DRIVER" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$DRIVER" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$DRIVER" 2>/dev/null || true
  fi
  # whatever the driver started and may have left (it lists every pid it started)
  if [ -f "$WORK/pids" ]; then
    while read -r pid; do
      kill -CONT "$pid" 2>/dev/null || true
      kill -KILL "$pid" 2>/dev/null || true
    done <"$WORK/pids"
  fi
  if [ "${KEEP:-0}" = 1 ]; then echo "work dir kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# The whole run is bounded: set-up plus at most 40 s a cycle per phase.
limit=$(( 120 + CYCLES * 40 * 2 ))
set +e
timeout --signal=TERM --kill-after=15 "$limit" "$PY" -u "$ROOT/scripts/chaos.py" --work "$WORK" \
  --fanout "$FANOUT" --cycles "$CYCLES" --seed "$SEED" --rate "$RATE" \
  --redis-timeout-ms "$REDIS_TIMEOUT_MS" --phases "$PHASES" ${SELFTEST:+--selftest} &
DRIVER=$!
wait "$DRIVER"
rc=$?
set -e
DRIVER=
[ "$rc" = 124 ] && echo "chaos driver timed out after $limit s" >&2
exit "$rc"
