#!/usr/bin/env bash
# One hot channel to many subscribers through a tree of edges, against the same through Redis
# (figures, not pass/fail). For each E in EDGES (default 1 4 16):
#
#   edges  a hub and E edges (`serve --upstream hub`), SUBS subscribers (default 10,000) spread
#          over the edges, one publisher on the hub at RATE msg/s (default 1,000) for MESSAGES
#          (default 10,000) 64-byte messages: deliveries/s, latency p50/p99, lost, the hub's CPU
#          per message (in all, and per edge: what each added edge costs the hub) and the edges'
#          CPU per million deliveries.
#   redis  E nodes joined through one redis-server, the same subscribers spread over them, the
#          publisher on node 1: the same figures, Redis standing where the hub stands.
#
#   scripts/bench-edge.sh
#   EDGES="1 4" SUBS=4000 scripts/bench-edge.sh
#   SETUPS=edges scripts/bench-edge.sh
set -euo pipefail
source "$(dirname "$0")/common.sh"
EDGES=${EDGES:-1 4 16}
SUBS=${SUBS:-10000}
SETUPS=${SETUPS:-edges redis}
RATE=${RATE:-1000}
MESSAGES=${MESSAGES:-10000}
# Subscriber event-loop threads of the load generator.
LOAD_THREADS=${LOAD_THREADS:-2}
command -v redis-server >/dev/null || { echo "needs redis-server (apt-get install redis-server)" >&2; exit 1; }
build_fanout
bench_setup edge

cpu_sum() {
  local total=0 pid
  for pid in "$@"; do total=$(echo "$total + $(cpu_seconds "$pid")" | bc); done
  echo "$total"
}

say "# fanout edge benchmark, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $SUBS subscribers on one channel, $MESSAGES 64-byte messages at $RATE/s"
say ""
say "Every process shares the same $(nproc) cores: figures compare setups side by side, they are"
say "not what separate hosts would give. \"hub\" is the upstream fanout server, or redis-server."
say ""
say "| setup | edges/nodes | deliveries/s | p50 µs | p99 µs | lost | hub CPU µs / message | per edge | edges CPU s / M deliveries |"
say "|---|---|---|---|---|---|---|---|---|"
for e in $EDGES; do
  for setup in $SETUPS; do
    ports=(); pids=()
    case "$setup" in
      edges)
        start_node
        hub_port=$NODE_PORT; hub_pid=$NODE_PID
        for _ in $(seq 1 "$e"); do
          start_node --upstream "127.0.0.1:$hub_port"
          ports+=("$NODE_PORT"); pids+=("$NODE_PID")
        done
        publish_to=$hub_port ;;
      redis)
        start_redis
        hub_pid=$REDIS_PID
        for _ in $(seq 1 "$e"); do
          start_node --redis "redis://127.0.0.1:$REDIS_PORT"
          ports+=("$NODE_PORT"); pids+=("$NODE_PID")
        done
        publish_to=${ports[0]} ;;
    esac
    subscribe_to=()
    for port in "${ports[@]}"; do subscribe_to+=(--subscribe-to "127.0.0.1:$port"); done
    messages=$MESSAGES
    hub_before=$(cpu_seconds "$hub_pid")
    edges_before=$(cpu_sum "${pids[@]}")
    line=$("$FANOUT" load --quiet --server "127.0.0.1:$publish_to" "${subscribe_to[@]}" \
             --subscribers "$SUBS" --channels 1 --messages "$messages" --rate "$RATE" --payload-bytes 64 \
             --max-per-process 15000 --drain-timeout-secs 20 --threads "$LOAD_THREADS" \
             2>"$WORK/load.err" | grep '^{' || true)
    hub_after=$(cpu_seconds "$hub_pid")
    edges_after=$(cpu_sum "${pids[@]}")
    stop_all
    if [ -z "$line" ]; then
      say "| $setup | $e | load failed: $(tail -1 "$WORK/load.err") | | | | | | |"
      continue
    fi
    delivered=$(json_field "$line" delivered)
    per_m() { echo "scale=3; ($2 - $1) * 1000000 / $delivered" | bc; }
    hub_us=$(echo "scale=2; ($hub_after - $hub_before) * 1000000 / $messages" | bc)
    say "| $setup | $e | $(printf '%.0f' "$(json_field "$line" deliveries_per_second)") | $(json_field "$line" p50_us) | $(json_field "$line" p99_us) | $(json_field "$line" lost) | $hub_us | $(echo "scale=2; $hub_us / $e" | bc) | $(per_m "$edges_before" "$edges_after") |"
  done
done
say ""
say "Results: $OUT"
