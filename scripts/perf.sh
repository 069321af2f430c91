#!/usr/bin/env bash
# Profiles fanout under the C10K workload: `perf stat` counters and a `perf record -g` call-graph
# profile of the server, turned into a flame graph SVG.
#
#   scripts/perf.sh                       # writes perf-fanout.svg and perf-fanout.txt here
#   OUT=/tmp/prof SUBSCRIBERS=5000 RATE=2000 DURATION=10 scripts/perf.sh
#   CHANNELS=1000 SUBSCRIBERS=1000 RATE=0 MESSAGES=3000000 scripts/perf.sh   # chat-shaped, flat out
#
# Besides the top symbols it prints the profile's share by binary (kernel, fanout, libc): where
# the time goes before looking at what in it.
#
# Hardware counters are often missing in virtual machines (`perf stat -e cycles` says "not
# supported"): then the profile uses the cpu-clock software event and says so. When perf may not
# profile at all (perf_event_paranoid, containers), it says why and exits non-zero.
# The flame graph comes from inferno (installed from crates.io with cargo when missing).
set -euo pipefail
source "$(dirname "$0")/common.sh"

SUBSCRIBERS=${SUBSCRIBERS:-10000}
CHANNELS=${CHANNELS:-1}
RATE=${RATE:-1000}
DURATION=${DURATION:-15}
# With RATE=0 the generator publishes as fast as its window allows, MESSAGES in all.
MESSAGES=${MESSAGES:-$((RATE * DURATION))}
OUT=${OUT:-.}
WORK=$(mktemp -d)
trap 'stop_server; rm -rf "$WORK"' EXIT
mkdir -p "$OUT"

if ! command -v perf >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq linux-perf >/dev/null
  else
    echo "perf is not installed (Debian: apt-get install linux-perf)" >&2
    exit 1
  fi
fi
if ! perf stat -e task-clock true >/dev/null 2>"$WORK/perf-check"; then
  echo "perf may not profile here: $(head -3 "$WORK/perf-check")" >&2
  echo "(as root: sysctl kernel.perf_event_paranoid=1; in a container it needs CAP_PERFMON)" >&2
  exit 1
fi
if perf stat -e cycles true >/dev/null 2>&1 && ! perf stat -e cycles true 2>&1 | grep -q "not supported"; then
  EVENT=cycles
  STAT_EVENTS=cycles,instructions,task-clock,context-switches,cpu-migrations,page-faults
else
  EVENT=cpu-clock
  STAT_EVENTS=task-clock,context-switches,cpu-migrations,page-faults
  echo "note: no hardware counters here (perf stat -e cycles: not supported); sampling the cpu-clock software event" >&2
fi
if ! command -v inferno-flamegraph >/dev/null; then
  echo "installing inferno (flame graphs) with cargo" >&2
  cargo install --quiet --locked inferno >/dev/null
fi
export PATH="$HOME/.cargo/bin:$PATH"

build_fanout
port=$(free_port)
start_server fanout "$port"
echo "== fanout serve pid $SERVER_PID on core $SERVER_CORE; load: $SUBSCRIBERS subscribers, $RATE msg/s for $DURATION s"
taskset -c "$LOAD_CORE" "$FANOUT" load --quiet --server "127.0.0.1:$port" --server-pid "$SERVER_PID" \
  --subscribers "$SUBSCRIBERS" --channels "$CHANNELS" --rate "$RATE" --messages "$MESSAGES" \
  >"$WORK/load.out" 2>&1 &
load_pid=$!
# Profile the steady state: after the subscribers are connected, for most of the run.
sleep 3
window=$((DURATION > 6 ? DURATION - 4 : 2))
perf stat -e "$STAT_EVENTS" -p "$SERVER_PID" -- sleep "$window" 2>"$OUT/perf-fanout-stat.txt" &
stat_pid=$!
perf record -e "$EVENT" -g -p "$SERVER_PID" -o "$WORK/perf.data" -- sleep "$window" 2>"$WORK/record.log"
wait "$stat_pid" || true
wait "$load_pid" || echo "(the load run reported a problem; see its summary below)"

perf report -i "$WORK/perf.data" --no-children --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -40 >"$OUT/perf-fanout.txt" || true
perf report -i "$WORK/perf.data" --no-children --sort dso --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -8 >"$OUT/perf-fanout-dso.txt" || true
perf script -i "$WORK/perf.data" 2>/dev/null | inferno-collapse-perf | inferno-flamegraph \
  --title "fanout serve, $SUBSCRIBERS subscribers, $RATE msg/s ($EVENT)" >"$OUT/perf-fanout.svg"

echo "== load summary"; grep -v "^\[" "$WORK/load.out" | head -12 || true
echo "== perf stat ($EVENT sampling)"; grep -vE '^\s*$' "$OUT/perf-fanout-stat.txt"
echo "== share by binary"; cat "$OUT/perf-fanout-dso.txt"
echo "== top of the profile (all: $OUT/perf-fanout.txt)"; head -15 "$OUT/perf-fanout.txt"
echo "== flame graph: $OUT/perf-fanout.svg"
