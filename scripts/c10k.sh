#!/usr/bin/env bash
# C10K: 10,000 subscribers on one fanout worker, a publisher at a fixed rate, a summary at the end.
#
#   scripts/c10k.sh                 # about a minute on a 2-core machine
#   SUBSCRIBERS=19000 RATE=2000 DURATION=60 CHANNELS=10 scripts/c10k.sh
#   PROTOCOL=ws-json scripts/c10k.sh      # browser-style WebSocket subscribers
#
# Applies sysctl/c10k.conf when run as root (else only checks it), starts `fanout serve` pinned
# to core SERVER_CORE (default 0), runs `fanout load` pinned to LOAD_CORE (default 1), prints the
# report and stops the server. Exits non-zero when any message was lost, duplicated or reordered.
set -euo pipefail
source "$(dirname "$0")/common.sh"

SUBSCRIBERS=${SUBSCRIBERS:-10000}
CHANNELS=${CHANNELS:-1}
RATE=${RATE:-1000}
DURATION=${DURATION:-30}
PAYLOAD=${PAYLOAD:-64}
PROTOCOL=${PROTOCOL:-binary}
WORK=$(mktemp -d)
trap 'stop_server; rm -rf "$WORK"' EXIT

echo "== sysctl profile"
if [ "$(id -u)" = 0 ]; then
  "$ROOT/scripts/apply-sysctl.sh" "$ROOT/sysctl/c10k.conf" || echo "(continuing: see the settings above)"
else
  "$ROOT/scripts/apply-sysctl.sh" --check "$ROOT/sysctl/c10k.conf" || echo "(not root: checked only)"
fi

build_fanout
port=$(free_port)
start_server fanout "$port"
echo "== fanout serve on 127.0.0.1:$port (pid $SERVER_PID, core $SERVER_CORE)"
echo "== fanout load: $SUBSCRIBERS $PROTOCOL subscribers over $CHANNELS channels, $RATE msg/s for $DURATION s, $PAYLOAD-byte payloads"
status=0
taskset -c "$LOAD_CORE" "$FANOUT" load --server "127.0.0.1:$port" --server-pid "$SERVER_PID" \
  --protocol "$PROTOCOL" --subscribers "$SUBSCRIBERS" --channels "$CHANNELS" --rate "$RATE" \
  --messages $((RATE * DURATION)) --payload-bytes "$PAYLOAD" --threads 1 || status=$?
exit "$status"
