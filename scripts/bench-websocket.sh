#!/usr/bin/env bash
# Fan-out to WebSocket subscribers as a ratio to the same load over the binary TCP format:
# one channel, 1,000 and 10,000 subscribers, 64-byte payloads, publishers on binary TCP in every
# mode (only delivery differs). Modes: binary (TCP), ws-binary (subprotocol fanout.binary) and
# ws-json (subprotocol fanout.json, what browsers use; payloads are binary stamps, so they travel
# as base64 "data64" and frames are ~1.8x larger). Server and generator pinned to one core each.
# Prints medians of REPS runs (interleaved, so drift hits every mode alike) and ratios to binary;
# ">=" marks a figure where the generator used >= 90% of its core (a lower bound for the server).
# Then the same modes at a fixed rate (RATE deliveries/s, default 3M, 3 s), where every mode
# keeps up: latency percentiles and their ratios to binary.
#
#   scripts/bench-websocket.sh                 # about 2 minutes
#   REPS=1 SIZES=1000 scripts/bench-websocket.sh
set -euo pipefail
source "$(dirname "$0")/common.sh"

REPS=${REPS:-3}
SIZES=${SIZES:-"1000 10000"}
RATE=${RATE:-3000000}
MODES="binary ws-binary ws-json"
WORK=$(mktemp -d)
trap 'stop_server; rm -rf "$WORK"' EXIT
build_fanout


for rep in $(seq 1 "$REPS"); do
  for size in $SIZES; do
    messages=$((100000000 / size))
    for mode in $MODES; do
      port=$(free_port)
      start_server fanout "$port"
      line=$(taskset -c "$LOAD_CORE" "$FANOUT" load --quiet --server "127.0.0.1:$port" --server-pid "$SERVER_PID" \
               --protocol "$mode" --subscribers "$size" --channels 1 --messages "$messages" --payload-bytes 64 \
               --window 500 --drain-timeout-secs 60 | grep '^{')
      stop_server
      rate=$(json_field "$line" deliveries_per_second)
      seconds=$(json_field "$line" seconds)
      client=$(json_field "$line" client_cpu_seconds)
      echo "-- $mode x $size run $rep: $rate deliveries/s, lost $(json_field "$line" lost), errors $(json_field "$line" errors), generator CPU $client s of $seconds s" >&2
      echo "$rate" >>"$WORK/$mode.$size.rate"
      awk -v c="$(json_field "$line" server_cpu_seconds)" -v d="$(json_field "$line" delivered)" 'BEGIN { printf "%.2f\n", c * 1e9 / d }' >>"$WORK/$mode.$size.cpu"
      awk -v c="$client" -v s="$seconds" 'BEGIN { print (c >= 0.9 * s) ? 1 : 0 }' >>"$WORK/$mode.$size.bound"
    done
  done
done

for rep in $(seq 1 "$REPS"); do
  for size in $SIZES; do
    per_second=$((RATE / size))
    for mode in $MODES; do
      port=$(free_port)
      start_server fanout "$port"
      line=$(taskset -c "$LOAD_CORE" "$FANOUT" load --quiet --server "127.0.0.1:$port" --server-pid "$SERVER_PID" \
               --protocol "$mode" --subscribers "$size" --channels 1 --messages $((per_second * 3)) --payload-bytes 64 \
               --rate "$per_second" --drain-timeout-secs 60 | grep '^{')
      stop_server
      echo "-- $mode x $size at $per_second msg/s run $rep: p50 $(json_field "$line" p50_us) us, p99 $(json_field "$line" p99_us) us, lost $(json_field "$line" lost)" >&2
      json_field "$line" p50_us >>"$WORK/$mode.$size.p50"
      json_field "$line" p99_us >>"$WORK/$mode.$size.p99"
    done
  done
done

echo "WebSocket fan-out vs binary TCP, 1 channel, 64-byte payloads, medians of $REPS ($(date -u '+%Y-%m-%d %H:%M UTC'))"
printf '| subscribers | mode | deliveries/s | ratio to binary | server CPU ns/delivery | ratio to binary |\n|---|---|---|---|---|---|\n'
for size in $SIZES; do
  base_rate=$(median <"$WORK/binary.$size.rate")
  base_cpu=$(median <"$WORK/binary.$size.cpu")
  for mode in $MODES; do
    rate=$(median <"$WORK/$mode.$size.rate")
    cpu=$(median <"$WORK/$mode.$size.cpu")
    bound=$(sort -n "$WORK/$mode.$size.bound" | tail -1)
    awk -v s="$size" -v m="$mode" -v r="$rate" -v b="$base_rate" -v c="$cpu" -v bc="$base_cpu" -v g="$bound" \
      'BEGIN { ge = g ? ">=" : ""; printf "| %d | %s | %s%.0f | %s%.2fx | %.1f | %.2fx |\n", s, m, ge, r, ge, r / b, c, c / bc }'
  done
done
echo
echo "At a fixed $RATE deliveries/s (3 s), latency, medians of $REPS"
printf '| subscribers | mode | p50 us | ratio to binary | p99 us | ratio to binary |\n|---|---|---|---|---|---|\n'
for size in $SIZES; do
  for mode in $MODES; do
    awk -v s="$size" -v m="$mode" -v p="$(median <"$WORK/$mode.$size.p50")" -v q="$(median <"$WORK/$mode.$size.p99")" \
        -v bp="$(median <"$WORK/binary.$size.p50")" -v bq="$(median <"$WORK/binary.$size.p99")" \
      'BEGIN { printf "| %d | %s | %.0f | %.2fx | %.0f | %.2fx |\n", s, m, p, p / bp, q, q / bq }'
  done
done
