#!/usr/bin/env bash
# A local cluster to try: one redis-server and N fanout nodes on this host, joined through it.
#   scripts/cluster-local.sh [N]      (default 3; Ctrl-C stops everything)
# Prints each node's address. Then, e.g.:
#   target/release/fanout sub --server 127.0.0.1:<node 2> room &
#   target/release/fanout pub --server 127.0.0.1:<node 1> room hello
# REDIS_PERSIST=1 runs Redis with appendonly/appendfsync always (acknowledged = durable).
set -euo pipefail
source "$(dirname "$0")/common.sh"
NODES=${1:-3}
command -v redis-server >/dev/null || { echo "needs redis-server (apt-get install redis-server)" >&2; exit 1; }
build_fanout
WORK=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

redis_port=$(free_port)
persist=(--save '' --appendonly no)
[ "${REDIS_PERSIST:-0}" = 1 ] && persist=(--appendonly yes --appendfsync always)
redis-server --port "$redis_port" --bind 127.0.0.1 --protected-mode no --dir "$WORK" \
  "${persist[@]}" --loglevel warning >"$WORK/redis.log" 2>&1 &
pids+=($!)
wait_for_port "$redis_port"
echo "redis:  redis://127.0.0.1:$redis_port"

for i in $(seq 1 "$NODES"); do
  port=$(free_port)
  "$FANOUT" serve --listen "127.0.0.1:$port" --redis "redis://127.0.0.1:$redis_port" \
    --workers 1 --no-pin >"$WORK/node$i.log" 2>&1 &
  pids+=($!)
  wait_for_port "$port"
  echo "node $i: 127.0.0.1:$port (http://127.0.0.1:$port/ for the demo; log $WORK/node$i.log)"
done
echo "running; Ctrl-C stops the nodes and Redis"
wait
