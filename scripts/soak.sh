#!/usr/bin/env bash
# Soak: MINUTES (default 10) of mixed traffic against one server with --data-dir, bounded in count
# and time, loopback only. Each cycle (about 25 s):
#   - a `fanout load` run, its protocol rotating over binary, text, ws-json and ws-binary
#     (200 subscribers, 2,000 msg/s, 15 s): deliveries, losses, p99;
#   - a burst of hostile clients, rotating: 2,000 NAME claims on short-lived connections,
#     50 slowloris heads, 50 subscribers that never read, 20 WebSocket fragment floods,
#     20,000 publishes to fresh channel names;
#   - every third cycle a restart (SIGTERM, then the same port and data directory).
# History keeps a minute (--history-age-secs 60), as a live feed would: the flooded channels
# expire and are freed, so memory after warm-up must stay flat.
# Throughout, `fanout pub` sends an acknowledged event every 10 ms to `soak.events` (resending
# after each restart) and `fanout sub` follows it, resuming by offset across restarts (random
# disconnects: the restarts and the server cutting clients). At the end: resident memory per
# cycle (after warm-up it must stay flat), the server's counters summed over its runs, and the
# follower's stream checked: offsets strictly increasing (no duplicate, no reordering).
#   scripts/soak.sh [MINUTES]
set -euo pipefail
source "$(dirname "$0")/common.sh"
MINUTES=${1:-10}
HOSTILE="$ROOT/scripts/hostile.py"
WORK=$(mktemp -d)
PUB_PID=; SUB_PID=
cleanup() {
  [ -z "$PUB_PID" ] || kill "$PUB_PID" 2>/dev/null || true
  [ -z "$SUB_PID" ] || kill "$SUB_PID" 2>/dev/null || true
  stop_server
  if [ -n "${KEEP:-}" ]; then echo "logs kept in $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
build_fanout
port=$(free_port)

serve() {
  "$FANOUT" serve --listen "127.0.0.1:$port" --workers 2 --no-pin --stats-interval-secs 0 \
    --data-dir "$WORK/data" --http-head-timeout-secs 5 --max-frame-bytes 65536 \
    --write-queue-cap-bytes 1000000 \
    --history-age-secs 60 \
    >>"$WORK/server.log" 2>&1 &
  SERVER_PID=$!
  wait_for_port "$port"
}

div() { awk -v a="${1:-0}" -v b="$2" 'BEGIN { printf "%.1f", a / b }'; }
metrics() { curl -s "http://127.0.0.1:$port/metrics" | awk '!/^#/ && !/\{/ { print $1, $2 }'; }
# Adds this run's counters (the ones that only grow) into the totals.
absorb() { metrics | awk '$1 ~ /_total$/' >>"$WORK/counters"; }

serve
(i=0; while true; do i=$((i + 1)); echo "event $i"; sleep 0.01; done) |
  "$FANOUT" pub --server "127.0.0.1:$port" soak.events 2>>"$WORK/pub.log" &
PUB_PID=$!
"$FANOUT" sub --server "127.0.0.1:$port" soak.events >"$WORK/events" 2>>"$WORK/sub.log" &
SUB_PID=$!

protocols=(binary text ws-json ws-binary)
# The hostile burst of a cycle; it runs beside the cycle's load run.
burst_of() {
  case $(($1 % 5)) in
    0) echo "names 127.0.0.1:$port 2000" ;;
    1) echo "slowloris 127.0.0.1:$port 50 12" ;;
    2) echo "never-read 127.0.0.1:$port soak$1.0 50 12" ;;
    3) echo "ws-fragments 127.0.0.1:$port 20" ;;
    4) echo "channels 127.0.0.1:$port 20000" ;;
  esac
}
end=$((SECONDS + MINUTES * 60))
cycle=0
printf '| cycle | min | protocol | deliveries/s | lost | p99 ms | burst | RSS MB | connections | channels |\n|---|---|---|---|---|---|---|---|---|---|\n'
while [ "$SECONDS" -lt "$end" ]; do
  cycle=$((cycle + 1))
  proto=${protocols[$((cycle % 4))]}
  # shellcheck disable=SC2046
  $HOSTILE $(burst_of "$cycle") >"$WORK/burst" 2>&1 &
  burst_pid=$!
  line=$("$FANOUT" load --quiet --server "127.0.0.1:$port" --protocol "$proto" --subscribers 200 \
           --rate 2000 --messages 30000 --channel-prefix "soak$cycle." --drain-timeout-secs 20 2>>"$WORK/load.log" | grep '^{' || true)
  wait "$burst_pid" || true
  said=$(tail -n1 "$WORK/burst" | cut -c1-60)
  rss=$(rss_bytes "$SERVER_PID")
  m=$(metrics)
  printf '| %d | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$cycle" "$(div "$SECONDS" 60)" "$proto" \
    "$(json_field "$line" deliveries_per_second | cut -d. -f1)" "$(json_field "$line" lost)" \
    "$(div "$(json_field "$line" p99_us)" 1000)" "$said" "$(div "$rss" 1e6)" \
    "$(awk '$1 == "fanout_connections_current" { print $2 }' <<<"$m")" "$(awk '$1 == "fanout_channels" { print $2 }' <<<"$m")"
  if [ $((cycle % 3)) -eq 0 ]; then
    absorb
    stop_server
    serve
  fi
done
absorb
sleep 2
kill "$PUB_PID" 2>/dev/null || true; PUB_PID=
sleep 1
kill "$SUB_PID" 2>/dev/null || true; SUB_PID=
echo
echo "Server counters over $cycle cycles and $((cycle / 3)) restarts (summed over runs):"
awk '{ total[$1] += $2 } END { for (k in total) if (total[k] > 0) printf "  %s %.0f\n", k, total[k] }' "$WORK/counters" | sort
echo
awk '{ print $2 }' "$WORK/events" | awk '
  NR > 1 && $1 <= last { bad++ }
  NR > 1 && $1 > last + 1 { gaps++ }
  { last = $1; n++ }
  END { printf "Follower (fanout sub, resuming across restarts): %d events, %d out of order or repeated, %d jumps (restarts without a clean stop, each announced)\n", n, bad + 0, gaps + 0; exit (bad > 0) }'
