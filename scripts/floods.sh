#!/usr/bin/env bash
# Floods a fanout server the ways one hostile client can, each bounded in count and time, and
# prints the server's resident memory before and after each flood and whether it kept serving:
# after every flood a canary (`fanout load`, 100 subscribers, 20,000 messages) must lose nothing.
#   - channels: one publish to each of CHANNELS distinct names (memory history on; default 1M),
#     then the same with --data-dir for DISK_CHANNELS names (default 100,000): open files and
#     memory stay bounded, unused channels are freed;
#   - names: NAMES NAME claims (default 100,000), each on a connection that then goes away;
#   - slowloris: 200 HTTP heads at one byte a second (cut off by --http-head-timeout-secs 5);
#   - connections: two clients of 10,000 idle connections each, past the server's descriptors;
#   - ws-fragments: 200 WebSockets sending endless continuation frames (1009 at --max-frame-bytes);
#   - sse-wide: 100 event streams each naming as many channels as an 8 KiB head holds.
# Loopback only. Usage: scripts/floods.sh   (about 3 minutes)
set -euo pipefail
source "$(dirname "$0")/common.sh"
CHANNELS=${CHANNELS:-1000000}
DISK_CHANNELS=${DISK_CHANNELS:-100000}
NAMES=${NAMES:-100000}
HOSTILE="$ROOT/scripts/hostile.py"
WORK=$(mktemp -d)
trap 'stop_server; rm -rf "$WORK"' EXIT
build_fanout

serve() {
  port=$(free_port)
  "$FANOUT" serve --listen "127.0.0.1:$port" --workers 2 --no-pin --stats-interval-secs 0 \
    --max-connections 100000 --http-head-timeout-secs 5 "$@" >"$WORK/server.log" 2>&1 &
  SERVER_PID=$!
  wait_for_port "$port"
}

canary() {
  local line
  line=$("$FANOUT" load --quiet --server "127.0.0.1:$port" --subscribers 100 --messages 20000 \
           --channel-prefix canary --drain-timeout-secs 20 2>/dev/null | grep '^{')
  echo "lost $(json_field "$line" lost), $(json_field "$line" deliveries_per_second | cut -d. -f1)/s"
}

mb() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1e6 }'; }

metric() {
  curl -s "http://127.0.0.1:$port/metrics" | awk -v m="$1" '$1 == m { print $2 }'
}

printf '| flood | what happened | RSS before | RSS after | channels after | canary after |\n|---|---|---|---|---|---|\n'
flood() {
  local name=$1; shift
  local before after said
  before=$(rss_bytes "$SERVER_PID")
  said=$("$HOSTILE" "$@" "127.0.0.1:$port" "${ARGS[@]}" 2>&1 | tail -n1)
  sleep 1
  after=$(rss_bytes "$SERVER_PID")
  printf '| %s | %s | %s MB | %s MB | %s | %s |\n' "$name" "$said" "$(mb "$before")" "$(mb "$after")" \
    "$(metric fanout_channels)" "$(canary)"
}

serve
ARGS=("$CHANNELS"); flood "channels (memory)" channels
# Past the 10 s sweep, what nothing uses is gone.
sleep 11; printf '| (11 s later) | unused channels freed | | %s MB | %s | |\n' "$(mb "$(rss_bytes "$SERVER_PID")")" "$(metric fanout_channels)"
ARGS=("$NAMES"); flood names names
ARGS=(200 12); flood slowloris slowloris
ARGS=(10000 5)
"$HOSTILE" connections "127.0.0.1:$port" 10000 8 >"$WORK/conn1" 2>&1 &
other=$!
flood connections connections
wait "$other"
ARGS=(200); flood ws-fragments ws-fragments
ARGS=(100); flood sse-wide sse-wide
stop_server

serve --data-dir "$WORK/data" --max-open-segments 256
ARGS=("$DISK_CHANNELS"); flood "channels (--data-dir)" channels
echo "open files of the server: $(ls /proc/"$SERVER_PID"/fd | wc -l) (of which segments at most 256)"
