#!/usr/bin/env bash
# What history costs the publish path: one channel, 100 subscribers, 64-byte messages, as fast as
# the window allows, with history off, in memory (the default), and on disk (--fsync interval).
# Prints publishes/s (medians of REPS runs) and the ratios to history off. Then the replay speed
# from memory (cargo bench --bench replay).
#
#   scripts/bench-history.sh            # about a minute
#   REPS=1 MESSAGES=100000 scripts/bench-history.sh
set -euo pipefail
source "$(dirname "$0")/common.sh"

REPS=${REPS:-3}
MESSAGES=${MESSAGES:-300000}
WORK=$(mktemp -d)
trap 'stop_server; rm -rf "$WORK"' EXIT
build_fanout


declare -A RATE CPU
for mode in off memory disk; do
  for rep in $(seq 1 "$REPS"); do
    port=$(free_port)
    case $mode in
      off) flags=(--history-messages 0) ;;
      memory) flags=() ;;
      disk) rm -rf "$WORK/data"; flags=(--data-dir "$WORK/data" --fsync interval) ;;
    esac
    taskset -c "$SERVER_CORE" "$FANOUT" serve --listen "127.0.0.1:$port" --workers 1 --stats-interval-secs 0 \
      "${flags[@]}" >"$WORK/server.log" 2>&1 &
    SERVER_PID=$!
    wait_for_port "$port"
    line=$(taskset -c "$LOAD_CORE" "$FANOUT" load --quiet --server "127.0.0.1:$port" --server-pid "$SERVER_PID" \
             --subscribers 100 --channels 1 --messages "$MESSAGES" --payload-bytes 64 | grep '^{')
    stop_server
    echo "-- $mode run $rep: $(json_field "$line" publishes_per_second) publishes/s, lost $(json_field "$line" lost), generator CPU $(json_field "$line" client_cpu_seconds) s of $(json_field "$line" seconds) s" >&2
    json_field "$line" publishes_per_second >>"$WORK/$mode"
    awk -v c="$(json_field "$line" server_cpu_seconds)" -v p="$(json_field "$line" published)" 'BEGIN { printf "%.2f\n", c * 1e6 / p }' >>"$WORK/$mode.cpu"
  done
  RATE[$mode]=$(median <"$WORK/$mode")
  CPU[$mode]=$(median <"$WORK/$mode.cpu")
done

echo "history cost, 1 channel x 100 subscribers, 64-byte messages, medians of $REPS ($(date -u '+%Y-%m-%d %H:%M UTC'))"
printf '| history | publishes/s | ratio to off | server CPU us/publish (100 deliveries) | ratio to off |\n|---|---|---|---|---|\n'
for mode in off memory disk; do
  awk -v m="$mode" -v r="${RATE[$mode]}" -v o="${RATE[off]}" -v c="${CPU[$mode]}" -v co="${CPU[off]}" \
    'BEGIN { printf "| %s | %.0f | %.2fx | %.2f | %.2fx |\n", m, r, r / o, c, c / co }'
done
echo
(cd "$ROOT" && cargo bench --quiet --bench replay 2>/dev/null | grep 'replay run')
