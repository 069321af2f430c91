#!/usr/bin/env bash
# Redis clients against fanout and against redis-server, side by side: the same load generator
# speaking RESP to both (`fanout load --protocol resp`), 1,000 and 10,000 subscribers on one
# channel, 64-byte messages; server pinned to core SERVER_CORE (fanout with one worker), load
# to LOAD_CORE; REPS interleaved repetitions, medians and ratios.
#   scripts/bench-resp.sh [REPS=3]
set -euo pipefail
source "$(dirname "$0")/common.sh"
REPS=${1:-3}
WORK=$(mktemp -d)
trap 'stop_server; rm -rf "$WORK"' EXIT
command -v redis-server >/dev/null || { echo "needs redis-server" >&2; exit 1; }
build_fanout
for rep in $(seq 1 "$REPS"); do
  for workload in W1 W2; do
    for server in fanout redis; do
      port=$(free_port)
      start_server "$server" "$port"
      sleep 0.2
      case $workload in
        W1) args=(--subscribers 1000 --messages 30000) ;;
        W2) args=(--subscribers 10000 --messages 3000) ;;
      esac
      line=$(taskset -c "$LOAD_CORE" "$FANOUT" load --quiet --protocol resp --server "127.0.0.1:$port" \
               --server-pid "$SERVER_PID" --payload-bytes 64 "${args[@]}" 2>/dev/null | grep '^{' || true)
      stop_server
      rate=$(json_field "$line" deliveries_per_second)
      cpu=$(json_field "$line" server_cpu_seconds)
      delivered=$(json_field "$line" delivered)
      lost=$(json_field "$line" lost)
      echo "$rate" >>"$WORK/$server-$workload.rate"
      echo "scale=1; $cpu * 1000000000 / $delivered" | bc >>"$WORK/$server-$workload.cpu"
      echo "$lost" >>"$WORK/$server-$workload.lost"
      echo "-- $workload $server run $rep: $rate deliveries/s, lost $lost" >&2
    done
  done
done
echo "Redis clients (RESP2, \`fanout load --protocol resp\`), medians of $REPS, $(date -u +%Y-%m-%dT%H:%MZ)"
echo "| workload | fanout deliveries/s | redis deliveries/s | ratio | fanout CPU ns/delivery | redis CPU ns/delivery | ratio | lost (fanout, redis; max) |"
echo "|---|---|---|---|---|---|---|---|"
for workload in W1 W2; do
  fr=$(median <"$WORK/fanout-$workload.rate"); rr=$(median <"$WORK/redis-$workload.rate")
  fc=$(median <"$WORK/fanout-$workload.cpu"); rc=$(median <"$WORK/redis-$workload.cpu")
  fl=$(sort -g "$WORK/fanout-$workload.lost" | tail -1); rl=$(sort -g "$WORK/redis-$workload.lost" | tail -1)
  printf '| %s | %.0f | %.0f | %.2fx | %s | %s | %.2fx | %s, %s |\n' "$workload" "$fr" "$rr" \
    "$(echo "$fr / $rr" | bc -l)" "$fc" "$rc" "$(echo "$fc / $rc" | bc -l)" "$fl" "$rl"
done
