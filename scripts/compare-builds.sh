#!/usr/bin/env bash
# The same workloads on an older build and on this tree, side by side in one run (interleaved
# repetitions, so drift hits both alike): did a change cost speed? Builds REV in a git worktree
# (under target/compare/), server pinned to core 0 with one worker, generator on core 1.
# Workloads: fan-out of one channel to 1,000 subscribers (deliveries/s), and the publish path to
# 100 subscribers with history off, in memory, and on disk (publishes/s). Prints medians of REPS
# and the ratio this tree / REV.
#   scripts/compare-builds.sh REV [REPS=3]
set -euo pipefail
source "$(dirname "$0")/common.sh"
REV=${1:?usage: scripts/compare-builds.sh REV [REPS]}
REPS=${2:-3}
WORK=$(mktemp -d)
trap 'stop_server; rm -rf "$WORK"' EXIT
build_fanout
OLD_TREE="$ROOT/target/compare/src-$REV"
[ -d "$OLD_TREE" ] || git -C "$ROOT" worktree add -f --detach "$OLD_TREE" "$REV" >/dev/null
(cd "$OLD_TREE" && CARGO_TARGET_DIR="$ROOT/target/compare/target" cargo build --release --quiet)
OLD="$ROOT/target/compare/target/release/fanout"

run() { # binary workload rep -> appends the figure to $WORK/<build>.<workload>
  local binary=$1 build=$2 workload=$3 port flags=() load=() field
  port=$(free_port)
  case $workload in
    fanout) load=(--subscribers 1000 --messages 100000 --window 500); field=deliveries_per_second ;;
    history-off) flags=(--history-messages 0); load=(--subscribers 100 --messages 300000); field=publishes_per_second ;;
    history-memory) load=(--subscribers 100 --messages 300000); field=publishes_per_second ;;
    history-disk) rm -rf "$WORK/data"; flags=(--data-dir "$WORK/data" --fsync interval)
                  load=(--subscribers 100 --messages 300000); field=publishes_per_second ;;
  esac
  taskset -c "$SERVER_CORE" "$binary" serve --listen "127.0.0.1:$port" --workers 1 --stats-interval-secs 0 \
    "${flags[@]}" >"$WORK/server.log" 2>&1 &
  SERVER_PID=$!
  wait_for_port "$port"
  line=$(taskset -c "$LOAD_CORE" "$FANOUT" load --quiet --server "127.0.0.1:$port" --channels 1 --payload-bytes 64 \
           --drain-timeout-secs 60 "${load[@]}" | grep '^{')
  stop_server
  json_field "$line" "$field" >>"$WORK/$build.$workload"
  echo "-- $build $workload: $(json_field "$line" "$field") ($field), lost $(json_field "$line" lost)" >&2
}

WORKLOADS="fanout history-off history-memory history-disk"
for rep in $(seq 1 "$REPS"); do
  for workload in $WORKLOADS; do
    run "$OLD" old "$workload"
    run "$FANOUT" new "$workload"
  done
done
echo "This tree against $REV ($(git -C "$ROOT" log -1 --format=%h "$REV")), medians of $REPS ($(date -u '+%Y-%m-%d %H:%M UTC'))"
printf '| workload | %s | this tree | ratio |\n|---|---|---|---|\n' "$REV"
for workload in $WORKLOADS; do
  awk -v w="$workload" -v o="$(median <"$WORK/old.$workload")" -v n="$(median <"$WORK/new.$workload")" \
    'BEGIN { printf "| %s | %.0f | %.0f | %.2fx |\n", w, o, n, n / o }'
done
