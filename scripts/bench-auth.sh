#!/usr/bin/env bash
# What access control costs, side by side in one run (interleaved repetitions):
# - a reconnect storm: STORM (10,000) clients connect at once, each authenticates with a token of
#   its own (HS256, distinct `sub`) and subscribes; the time until all are subscribed, with
#   access control on and off;
# - fan-out to 1,000 subscribers (W1 of bench-peers.sh) with every connection authenticated, and
#   without: deliveries/s and server CPU per delivery (checks happen at subscribe and publish,
#   never per delivery, so this should not move).
# Server pinned to core 0 with one worker, generator to core 1. Token verification per second is
# `cargo bench --bench auth`.
#   scripts/bench-auth.sh [REPS=3]
set -euo pipefail
source "$(dirname "$0")/common.sh"
REPS=${1:-3}
STORM=${STORM:-10000}
WORK=$(mktemp -d)
trap 'stop_server; rm -rf "$WORK"' EXIT
build_fanout
head -c 32 /dev/urandom | base64 >"$WORK/secret"

run() { # mode workload -> appends figures to $WORK/<mode>.<workload>[.cpu]
  local mode=$1 workload=$2 port flags=() load=() field
  port=$(free_port)
  if [ "$mode" = on ]; then
    # Limits off: the storm comes from one address, and the publisher publishes flat out.
    flags=(--auth-secret-file "$WORK/secret" --max-connections-per-ip 0 --max-publishes-per-sec 0)
    load=(--token-secret-file "$WORK/secret")
  fi
  case $workload in
    storm) load+=(--subscribers "$STORM" --messages 0); field=setup_seconds ;;
    W1) load+=(--subscribers 1000 --messages 100000 --window 500); field=deliveries_per_second ;;
  esac
  taskset -c "$SERVER_CORE" "$FANOUT" serve --listen "127.0.0.1:$port" --workers 1 --stats-interval-secs 0 \
    --max-connections 50000 "${flags[@]}" >"$WORK/server.log" 2>&1 &
  SERVER_PID=$!
  wait_for_port "$port"
  line=$(taskset -c "$LOAD_CORE" "$FANOUT" load --quiet --server "127.0.0.1:$port" --server-pid "$SERVER_PID" \
           --channels 1 --payload-bytes 64 --drain-timeout-secs 60 "${load[@]}" | grep '^{')
  stop_server
  json_field "$line" "$field" >>"$WORK/$mode.$workload"
  awk -v c="$(json_field "$line" server_cpu_seconds)" -v d="$(json_field "$line" delivered)" \
    'BEGIN { printf "%.2f\n", (d > 0 ? c * 1e9 / d : 0) }' >>"$WORK/$mode.$workload.cpu"
  echo "-- auth $mode $workload: $(json_field "$line" "$field") ($field), connections $(json_field "$line" connections), lost $(json_field "$line" lost)" >&2
}

for rep in $(seq 1 "$REPS"); do
  for workload in storm W1; do
    run off "$workload"
    run on "$workload"
  done
done
echo "Access control on vs off, medians of $REPS ($(date -u '+%Y-%m-%d %H:%M UTC')), server on core $SERVER_CORE (1 worker), load on core $LOAD_CORE"
printf '| workload | figure | off | on | on / off |\n|---|---|---|---|---|\n'
awk -v o="$(median <"$WORK/off.storm")" -v n="$(median <"$WORK/on.storm")" -v s="$STORM" \
  'BEGIN { printf "| storm: %d clients connect, authenticate, subscribe | seconds until all subscribed | %.3f | %.3f | %.2fx |\n", s, o, n, n / o }'
awk -v o="$(median <"$WORK/off.W1")" -v n="$(median <"$WORK/on.W1")" \
  'BEGIN { printf "| W1: 1,000 subscribers | deliveries/s | %.0f | %.0f | %.2fx |\n", o, n, n / o }'
awk -v o="$(median <"$WORK/off.W1.cpu")" -v n="$(median <"$WORK/on.W1.cpu")" \
  'BEGIN { printf "| W1: 1,000 subscribers | server CPU ns/delivery | %.1f | %.1f | %.2fx |\n", o, n, n / o }'
