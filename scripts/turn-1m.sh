#!/usr/bin/env bash
# The longest reactor turn with a million channels and ~20k connections (issue 23): runs
# scripts/turn-probe.py against this tree's server and, given REV, against that build too, one
# after the other in one run. A probe's PING round trip bounds its worker's turn from outside
# (old builds have no turn metric); this tree also reports fanout_longest_turn_micros.
#   scripts/turn-1m.sh [REV]
#   CONNECTIONS=19000 CHANNELS=1000000 SECONDS=25 scripts/turn-1m.sh c9107de
set -euo pipefail
source "$(dirname "$0")/common.sh"
REV=${1:-}
CONNECTIONS=${CONNECTIONS:-19000}
CHANNELS=${CHANNELS:-1000000}
SECONDS_RUN=${SECONDS:-25}
WORK=$(mktemp -d)
trap 'stop_server; rm -rf "$WORK"' EXIT
build_fanout
ulimit -n "$(ulimit -Hn)"
builds=("this-tree:$FANOUT")
if [ -n "$REV" ]; then
  OLD_TREE="$ROOT/target/compare/src-$REV"
  [ -d "$OLD_TREE" ] || git -C "$ROOT" worktree add -f --detach "$OLD_TREE" "$REV" >/dev/null
  (cd "$OLD_TREE" && CARGO_TARGET_DIR="$ROOT/target/compare/target" cargo build --release --quiet)
  builds=("$REV:$ROOT/target/compare/target/release/fanout" "${builds[@]}")
fi
for build in "${builds[@]}"; do
  name=${build%%:*} binary=${build#*:}
  port=$(free_port)
  # One message of history per channel: every republish leaves a stale retention entry; the
  # total cap (48 MiB, under what a million channels retain) makes the cap evict all along.
  "$binary" serve --listen "127.0.0.1:$port" --workers 2 --stats-interval-secs 0 \
    --max-connections 20000 --max-channels 1100000 --history-messages 1 \
    --history-total-bytes $((48 << 20)) --ping-interval-secs 2 --ping-timeout-secs 3600 \
    >"$WORK/server.log" 2>&1 &
  SERVER_PID=$!
  wait_for_port "$port"
  line=$(python3 "$ROOT/scripts/turn-probe.py" --port "$port" --connections "$CONNECTIONS" \
           --channels "$CHANNELS" --seconds "$SECONDS_RUN")
  rss=$(awk '/VmHWM/ { print $2 }' "/proc/$SERVER_PID/status")
  stop_server
  echo "$name: $line (server peak RSS ${rss} kB)"
done
