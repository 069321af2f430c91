#!/usr/bin/env bash
# Slow-client isolation: latency of HEALTHY (default 1,000) subscribers of one channel at a fixed
# rate, alone and next to SLOW (default 200) subscribers of the same channel that never read,
# side by side in one run (REPS interleaved runs each, medians). The never-readers fill their
# write queues until they are cut off as slow consumers; the healthy ones must not notice
# (target: p99 within 10%). Server on core 0, generator on core 1.
#   scripts/bench-slow-clients.sh        # about a minute
set -euo pipefail
source "$(dirname "$0")/common.sh"
REPS=${REPS:-3}
HEALTHY=${HEALTHY:-1000}
SLOW=${SLOW:-200}
RATE=${RATE:-2000}       # messages per second (x HEALTHY deliveries)
SECONDS_PER_RUN=${SECONDS_PER_RUN:-5}
PAYLOAD=${PAYLOAD:-1024}
WORK=$(mktemp -d)
trap 'stop_server; rm -rf "$WORK"' EXIT
build_fanout

for rep in $(seq 1 "$REPS"); do
  for slow in 0 "$SLOW"; do
    port=$(free_port)
    # A 1 MiB queue cap, so that the never-readers are cut off within the run.
    taskset -c "$SERVER_CORE" "$FANOUT" serve --listen "127.0.0.1:$port" --workers 1 \
      --stats-interval-secs 0 --write-queue-cap-bytes 1100000 >"$WORK/server.log" 2>&1 &
    SERVER_PID=$!
    wait_for_port "$port"
    if [ "$slow" -gt 0 ]; then
      taskset -c "$LOAD_CORE" "$ROOT/scripts/hostile.py" never-read "127.0.0.1:$port" load0 "$slow" \
        $((SECONDS_PER_RUN + 8)) >/dev/null &
      readers=$!
      sleep 1
    fi
    line=$(taskset -c "$LOAD_CORE" "$FANOUT" load --quiet --server "127.0.0.1:$port" --server-pid "$SERVER_PID" \
             --subscribers "$HEALTHY" --channels 1 --rate "$RATE" --messages $((RATE * SECONDS_PER_RUN)) \
             --payload-bytes "$PAYLOAD" --drain-timeout-secs 30 | grep '^{')
    cut=$(curl -s "http://127.0.0.1:$port/metrics" | awk '$1 == "fanout_slow_consumer_closes_total" { print $2 }')
    stop_server
    [ "$slow" -eq 0 ] || wait "$readers" 2>/dev/null || true
    echo "-- $slow never-readers, run $rep: p50 $(json_field "$line" p50_us) us, p99 $(json_field "$line" p99_us) us, p99.9 $(json_field "$line" p999_us) us, lost $(json_field "$line" lost), slow consumers cut $cut" >&2
    json_field "$line" p50_us >>"$WORK/$slow.p50"
    json_field "$line" p99_us >>"$WORK/$slow.p99"
    json_field "$line" lost >>"$WORK/$slow.lost"
    echo "${cut:-0}" >>"$WORK/$slow.cut"
  done
done

echo "Slow-client isolation: $HEALTHY healthy subscribers, 1 channel, $RATE msg/s of $PAYLOAD bytes, medians of $REPS ($(date -u '+%Y-%m-%d %H:%M UTC'))"
printf '| never-readers | p50 us | p99 us | p99 ratio | lost | cut off as slow |\n|---|---|---|---|---|---|\n'
base=$(median <"$WORK/0.p99")
for slow in 0 "$SLOW"; do
  p99=$(median <"$WORK/$slow.p99")
  awk -v s="$slow" -v p="$(median <"$WORK/$slow.p50")" -v q="$p99" -v b="$base" -v l="$(sort -g "$WORK/$slow.lost" | tail -1)" \
      -v c="$(median <"$WORK/$slow.cut")" \
    'BEGIN { printf "| %d | %.0f | %.0f | %.2fx | %d | %d |\n", s, p, q, q / b, l, c }'
done
