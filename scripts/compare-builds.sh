#!/usr/bin/env bash
# The same workloads on an older build and on this tree, side by side in one run (interleaved
# repetitions, so drift hits both alike): did a change cost speed? Builds REV in a git worktree
# (under target/compare/), server pinned to core 0 with one worker, generator on core 1.
# Workloads: fan-out of one channel to 1,000 and 10,000 subscribers over binary TCP (W1 and W2
# of bench-peers.sh) and to 1,000 WebSocket subscribers (JSON and binary subprotocols), in
# deliveries/s and server CPU ns per delivery; and the publish path to 100 subscribers with
# history off, in memory, and on disk, and with publishers on both workers of a two-worker
# server over 1,000 channels (publish-2w) (publishes/s). Prints medians of REPS and the ratio
# this tree / REV.
#   scripts/compare-builds.sh REV [REPS=3]
#   WORKLOADS="W1 W2" scripts/compare-builds.sh REV
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

run() { # binary build workload -> appends the figures to $WORK/<build>.<workload>[.cpu]
  local binary=$1 build=$2 workload=$3 port flags=() load=() field cores=$SERVER_CORE workers=1 chans=(--channels 1)
  port=$(free_port)
  case $workload in
    W1|fanout) load=(--subscribers 1000 --messages 100000 --window 500); field=deliveries_per_second ;;
    W2) load=(--subscribers 10000 --messages 10000 --window 500); field=deliveries_per_second ;;
    ws-json|ws-binary) load=(--protocol "$workload" --subscribers 1000 --messages 100000 --window 500)
                       field=deliveries_per_second ;;
    history-off) flags=(--history-messages 0); load=(--subscribers 100 --messages 300000); field=publishes_per_second ;;
    history-memory) load=(--subscribers 100 --messages 300000); field=publishes_per_second ;;
    history-disk) rm -rf "$WORK/data"; flags=(--data-dir "$WORK/data" --fsync interval)
                  load=(--subscribers 100 --messages 300000); field=publishes_per_second ;;
    # Publishers on both workers at once, over 1,000 channels with history (retention's
    # shared state is what a second worker would contend on): server on both cores.
    publish-2w) cores=0,1 workers=2 chans=()
                load=(--subscribers 1000 --publishers 4 --channels 1000 --messages 400000)
                field=publishes_per_second ;;
  esac
  taskset -c "$cores" "$binary" serve --listen "127.0.0.1:$port" --workers "$workers" --stats-interval-secs 0 \
    "${flags[@]}" >"$WORK/server.log" 2>&1 &
  SERVER_PID=$!
  wait_for_port "$port"
  line=$(taskset -c "$LOAD_CORE" "$FANOUT" load --quiet --server "127.0.0.1:$port" --server-pid "$SERVER_PID" \
           "${chans[@]}" --payload-bytes 64 --drain-timeout-secs 60 "${load[@]}" | grep '^{')
  stop_server
  json_field "$line" "$field" >>"$WORK/$build.$workload"
  awk -v c="$(json_field "$line" server_cpu_seconds)" -v d="$(json_field "$line" delivered)" \
    'BEGIN { printf "%.2f\n", (d > 0 ? c * 1e9 / d : 0) }' >>"$WORK/$build.$workload.cpu"
  echo "-- $build $workload: $(json_field "$line" "$field") ($field), lost $(json_field "$line" lost)" >&2
}

WORKLOADS=${WORKLOADS:-W1 W2 ws-json ws-binary history-off history-memory history-disk publish-2w}
for rep in $(seq 1 "$REPS"); do
  for workload in $WORKLOADS; do
    run "$OLD" old "$workload"
    run "$FANOUT" new "$workload"
  done
done
echo "This tree against $REV ($(git -C "$ROOT" log -1 --format=%h "$REV")), medians of $REPS ($(date -u '+%Y-%m-%d %H:%M UTC'))"
printf '| workload | %s | this tree | ratio | server CPU ns/delivery, %s | this tree | ratio |\n' "$REV" "$REV"
printf '|---|---|---|---|---|---|---|\n'
for workload in $WORKLOADS; do
  awk -v w="$workload" -v o="$(median <"$WORK/old.$workload")" -v n="$(median <"$WORK/new.$workload")" \
      -v oc="$(median <"$WORK/old.$workload.cpu")" -v nc="$(median <"$WORK/new.$workload.cpu")" \
    'BEGIN { printf "| %s | %.0f | %.0f | %.2fx | %.1f | %.1f | %.2fx |\n", w, o, n, n / o, oc, nc, (oc > 0 ? nc / oc : 0) }'
done
