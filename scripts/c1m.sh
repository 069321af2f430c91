#!/usr/bin/env bash
# A million subscriber connections on this one host (figures, not pass/fail). One process may
# hold 20,000 descriptors here, so the server side is a hub and NODES edges (`serve --upstream`)
# of ~19,300 connections each, and `fanout load` spreads its subscribers over as many child
# processes on 127.0.0.x source addresses. Subscribers speak binary, text and WebSocket JSON in
# turn, all on one channel. Then one message to all, and a feed of one message a second for
# FEED_SECS seconds (61 messages, 61 million deliveries by default).
#
# Reports: setup time, node RSS per connection (the edges', summed) and the whole host's memory
# per connection (MemAvailable before and after), publish-to-delivery latency over every
# delivery (p50, p99, max: the time a message takes to reach half, 99% and all subscribers),
# lost, and the servers' CPU per delivery.
#
#   sudo scripts/c1m.sh                       # applies sysctl/c1m.conf first
#   SUBS=200000 NODES=11 scripts/c1m.sh       # a smaller run
#   MODE=redis scripts/c1m.sh                 # the nodes joined through one redis-server instead
set -euo pipefail
source "$(dirname "$0")/common.sh"
SUBS=${SUBS:-1000000}
NODES=${NODES:-52}
FEED_SECS=${FEED_SECS:-60}
MODE=${MODE:-edges}
PER_PROCESS=${PER_PROCESS:-19500}
build_fanout
bench_setup c1m

if [ "$(id -u)" = 0 ] && [ -z "${NO_SYSCTL:-}" ]; then
  "$ROOT/scripts/apply-sysctl.sh" "$ROOT/sysctl/c1m.conf" >"$WORK/sysctl.log" 2>&1 || true
fi
per_node=$(( (SUBS + NODES - 1) / NODES ))
[ "$per_node" -le 19800 ] || { echo "$SUBS subscribers over $NODES nodes is $per_node each: over 19,800 (the descriptor limit); add NODES" >&2; exit 1; }

mem_available() { awk '/^MemAvailable:/ { printf "%.0f\n", $2 * 1024 }' /proc/meminfo; }

say "# C1M: $SUBS subscribers on $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), $(date -u +%Y-%m-%dT%H:%MZ)"
say ""
available_before=$(mem_available)
case "$MODE" in
  edges)
    start_node
    hub_port=$NODE_PORT; hub_pid=$NODE_PID; upstream=(--upstream "127.0.0.1:$hub_port")
    say "A hub and $NODES edges (\`serve --upstream\`), $per_node subscribers per edge." ;;
  redis)
    start_redis
    hub_pid=$REDIS_PID
    upstream=(--redis "redis://127.0.0.1:$REDIS_PORT")
    start_node "${upstream[@]}"
    hub_port=$NODE_PORT
    say "$NODES nodes joined through one redis-server, $per_node subscribers per node; the publisher on a node of its own." ;;
  *) echo "MODE is edges or redis" >&2; exit 1 ;;
esac
ports=(); pids=(); rss_before=0
for _ in $(seq 1 "$NODES"); do
  # A connection's descriptor each, pings rarer than the default (a million of them).
  start_node "${upstream[@]}" --ring-slots 4096 --max-connections 19900 --ping-interval-secs 120
  ports+=("$NODE_PORT"); pids+=("$NODE_PID")
done
sleep 1
for pid in "${pids[@]}"; do rss_before=$((rss_before + $(rss_bytes "$pid"))); done
subscribe_to=()
for port in "${ports[@]}"; do subscribe_to+=(--subscribe-to "127.0.0.1:$port"); done
server_pids=(--server-pid "$hub_pid")
for pid in "${pids[@]}"; do server_pids+=(--server-pid "$pid"); done

# Memory once everyone is connected: sampled at the first live line of the feed (a second
# into it: one message out, queues empty again).
hold=5
( for _ in $(seq 1 2400); do
    if grep -q 'published' "$WORK/load.err" 2>/dev/null; then
      rss=0
      for pid in "${pids[@]}"; do rss=$((rss + $(rss_bytes "$pid"))); done
      echo "$rss $(mem_available)" >"$WORK/held"
      exit 0
    fi
    sleep 0.25
  done ) &
sampler=$!
line=$(nice -n 5 "$FANOUT" load --server "127.0.0.1:$hub_port" "${subscribe_to[@]}" \
         --subscribers "$SUBS" --channels 1 --messages $((FEED_SECS + 1)) --rate 1 \
         --payload-bytes 64 --max-per-process "$PER_PROCESS" --hold-secs "$hold" \
         --subscriber-protocol binary --subscriber-protocol text --subscriber-protocol ws-json \
         --drain-timeout-secs 60 "${server_pids[@]}" 2>"$WORK/load.err" | grep '^{' || true)
wait "$sampler" 2>/dev/null || true
stop_all
if [ -z "$line" ]; then
  say "load failed: $(grep -v '^\[' "$WORK/load.err" | tail -3)"
  exit 1
fi
connections=$(json_field "$line" connections)
delivered=$(json_field "$line" delivered)
read -r rss_held available_held <"$WORK/held" || { rss_held=0; available_held=$available_before; }
server_cpu=$(json_field "$line" server_cpu_seconds)
say ""
say "| subscribers | setup s | node RSS / connection | host memory / connection | p50 ms | p99 ms | all (max) ms | delivered | lost | server CPU µs / delivery |"
say "|---|---|---|---|---|---|---|---|---|---|"
say "| $connections | $(json_field "$line" setup_seconds) | $(( (rss_held - rss_before) / connections )) B | $(( (available_before - available_held) / connections )) B | $(echo "scale=1; $(json_field "$line" p50_us) / 1000" | bc) | $(echo "scale=1; $(json_field "$line" p99_us) / 1000" | bc) | $(echo "scale=1; $(json_field "$line" max_us) / 1000" | bc) | $delivered | $(json_field "$line" lost) | $(echo "scale=2; $server_cpu * 1000000 / $delivered" | bc) |"
say ""
say "Host memory per connection counts both ends (the load generator's sockets and buffers too)."
say "Results: $OUT"
