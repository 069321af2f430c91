#!/usr/bin/env bash
# Chat-shaped load: many channels with one or two subscribers each (rooms, inboxes, per-user
# notifications), where each message is one delivery and the kernel's per-write cost is the
# floor. fanout (history on: the default) over its binary protocol and over the text protocol
# the floor speaks, the floor (benches/floor.rs: one write(2) per subscriber per message, nothing
# else) and redis-server, side by side, REPS times each, interleaved; server pinned to core 0,
# load generator to core 1. Prints medians and ratios to the first server listed.
#   scripts/bench-chat.sh [REPS=3]
#   SHAPES="1000x1" scripts/bench-chat.sh 1
#   BEFORE_BIN=path/to/older/fanout SERVERS="fanout before floor redis" scripts/bench-chat.sh
#     (`before`: another fanout build, binary protocol, for a before/after in the same run)
# Shapes are CHANNELSxSUBSCRIBERS. One process here holds at most 20,000 descriptors, so the
# second shape is 9,000 channels x 2 (18,000 sockets on the server) rather than 10,000 x 2.
set -euo pipefail
source "$(dirname "$0")/common.sh"
REPS=${1:-3}
SHAPES=${SHAPES:-"1000x1 9000x2"}
SERVERS=${SERVERS:-"fanout fanout-text floor redis"}
MESSAGES=${MESSAGES:-1000000}
WORK=$(mktemp -d)
trap 'stop_server; rm -rf "$WORK"' EXIT
build_fanout
build_floor

protocol_of() { case $1 in fanout|before) echo binary ;; fanout-text|floor) echo text ;; redis) echo resp ;; esac; }

for rep in $(seq 1 "$REPS"); do
  for shape in $SHAPES; do
    channels=${shape%x*}
    per_channel=${shape#*x}
    for server in $SERVERS; do
      port=$(free_port)
      if [ "$server" = before ]; then
        FANOUT_SERVER=${BEFORE_BIN:?BEFORE_BIN names the other build} start_server fanout "$port"
      else
        start_server "${server%-text}" "$port"
      fi
      line=$(taskset -c "$LOAD_CORE" "$FANOUT" load --quiet --protocol "$(protocol_of "$server")" \
               --server "127.0.0.1:$port" --server-pid "$SERVER_PID" --payload-bytes 64 \
               --channels "$channels" --subscribers $((channels * per_channel)) \
               --messages "$MESSAGES" --drain-timeout-secs 60 2>"$WORK/load.err" | grep '^{' || true)
      stop_server
      if [ -z "$line" ]; then
        echo "$server $shape: load failed: $(tail -3 "$WORK/load.err")" >&2
        continue
      fi
      json_field "$line" deliveries_per_second >>"$WORK/$server.$shape"
      awk -v c="$(json_field "$line" server_cpu_seconds)" -v d="$(json_field "$line" delivered)" \
        'BEGIN { printf "%.1f\n", (d > 0 ? c * 1e9 / d : 0) }' >>"$WORK/$server.$shape.cpu"
      awk -v c="$(json_field "$line" client_cpu_seconds)" -v s="$(json_field "$line" seconds)" \
        'BEGIN { printf "%.0f\n", 100 * c / s }' >>"$WORK/$server.$shape.gen"
      echo "-- $shape $server run $rep: $(json_field "$line" deliveries_per_second) deliveries/s, lost $(json_field "$line" lost), dup $(json_field "$line" duplicated)" >&2
    done
  done
done

echo "Chat-shaped load, 64-byte payloads, $MESSAGES messages, medians of $REPS ($(date -u '+%Y-%m-%d %H:%M UTC'))"
printf '| channels x subscribers | server | deliveries/s | server CPU ns/delivery | generator CPU %% | '"${SERVERS%% *}"' / this |\n|---|---|---|---|---|---|\n'
for shape in $SHAPES; do
  first=${SERVERS%% *}
  fanout_rate=$(median <"$WORK/$first.$shape" 2>/dev/null || echo nan)
  for server in $SERVERS; do
    [ -s "$WORK/$server.$shape" ] || continue
    awk -v s="$shape" -v v="$server" -v r="$(median <"$WORK/$server.$shape")" -v f="$fanout_rate" \
        -v c="$(median <"$WORK/$server.$shape.cpu")" -v g="$(median <"$WORK/$server.$shape.gen")" \
      'BEGIN { printf "| %s | %s | %.0f | %.1f | %.0f | %.2fx |\n", s, v, r, c, g, (r > 0 ? f / r : 0) }'
  done
done
