#!/usr/bin/env bash
# What presence costs, and what its answers and storms take, side by side in one run:
# 1. fan-out W1 (1,000 subscribers of one channel, 100,000 messages) with presence off, with
#    `--presence '>'` (members tracked) and with `--join-leave '>'` (and every subscriber hears
#    the others join): deliveries/s and server CPU per delivery (medians of REPS, interleaved);
# 2. a join storm of STORM (10,000) members on one node: seconds until all are subscribed
#    (presence is complete then: a node's members are registered as they subscribe), then a
#    presence query for all of them over HTTP: time and bytes;
# 3. the same storm over 3 nodes joined through one redis-server (subscriber i on node i % 3):
#    seconds until every node's presence shows all STORM members, Redis commands per join (from
#    INFO commandstats), and the query through Redis: time and bytes;
# 4. a reconnect storm on a --join-leave channel (scripts/presence-storm.py, RECONNECT members
#    drop and come back), with --join-leave-window-ms 0, 100 and 1000: what a watcher receives
#    (reads), and the server's bytes out, batches and CPU for the storm.
# Server pinned to core 0 (one worker), load to core 1; the cluster's nodes and Redis share them.
#   scripts/bench-presence.sh [REPS=3]
set -euo pipefail
source "$(dirname "$0")/common.sh"
REPS=${1:-3}
STORM=${STORM:-10000}
RECONNECT=${RECONNECT:-2000}
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  stop_server
  rm -rf "$WORK"
}
trap cleanup EXIT
build_fanout

serve() { # port args... -> SERVER_PID
  local port=$1
  shift
  taskset -c "$SERVER_CORE" "$FANOUT" serve --listen "127.0.0.1:$port" --workers 1 --stats-interval-secs 0 \
    --max-connections 50000 --no-pin "$@" >"$WORK/server.log" 2>&1 &
  SERVER_PID=$!
  wait_for_port "$port"
}

w1() { # mode -> appends deliveries/s and ns/delivery to $WORK/w1.<mode>[.cpu]
  local mode=$1 port flags=()
  port=$(free_port)
  case $mode in
    presence) flags=(--presence '>') ;;
    join-leave) flags=(--join-leave '>') ;;
  esac
  serve "$port" "${flags[@]}"
  line=$(taskset -c "$LOAD_CORE" "$FANOUT" load --quiet --server "127.0.0.1:$port" --server-pid "$SERVER_PID" \
           --channels 1 --payload-bytes 64 --subscribers 1000 --messages 100000 --window 500 \
           --drain-timeout-secs 60 | grep '^{')
  stop_server
  json_field "$line" deliveries_per_second >>"$WORK/w1.$mode"
  awk -v c="$(json_field "$line" server_cpu_seconds)" -v d="$(json_field "$line" delivered)" \
    'BEGIN { printf "%.2f\n", (d > 0 ? c * 1e9 / d : 0) }' >>"$WORK/w1.$mode.cpu"
  echo "-- W1 $mode: $(json_field "$line" deliveries_per_second) deliveries/s, lost $(json_field "$line" lost)" >&2
}

for rep in $(seq 1 "$REPS"); do
  for mode in off presence join-leave; do w1 "$mode"; done
done

# Queries: `curl -w` gives the time and the body's size.
query() { # url -> "seconds bytes"
  curl -s -o /dev/null -w '%{time_total} %{size_download}\n' "$1"
}

# 2. One node.
port=$(free_port)
serve "$port" --presence '>' --presence-max-members "$STORM"
taskset -c "$LOAD_CORE" "$FANOUT" load --quiet --server "127.0.0.1:$port" --channels 1 --subscribers "$STORM" \
  --messages 0 --hold-secs 30 >"$WORK/storm1.json" 2>/dev/null &
LOAD=$!
PIDS+=("$LOAD")
started=$(date +%s.%N)
until [ "$(curl -s "127.0.0.1:$port/api/presence_stats?channel=load0" | sed -n 's/.*"clients":\([0-9]*\).*/\1/p')" = "$STORM" ]; do
  sleep 0.05
done
single_complete=$(awk -v s="$started" -v e="$(date +%s.%N)" 'BEGIN { printf "%.2f", e - s }')
read -r single_query single_bytes < <(query "127.0.0.1:$port/api/presence?channel=load0")
kill "$LOAD" 2>/dev/null || true
wait "$LOAD" 2>/dev/null || true
stop_server

# 3. Three nodes through one Redis.
redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --loglevel warning >"$WORK/redis.log" 2>&1 &
PIDS+=("$!")
wait_for_port "$redis_port"
nodes=()
for i in 0 1 2; do
  p=$(free_port)
  "$FANOUT" serve --listen "127.0.0.1:$p" --workers 1 --stats-interval-secs 0 --max-connections 50000 --no-pin \
    --redis "redis://127.0.0.1:$redis_port" --presence '>' --presence-max-members "$STORM" >"$WORK/node$i.log" 2>&1 &
  PIDS+=("$!")
  wait_for_port "$p"
  nodes+=("$p")
done
until curl -sf "127.0.0.1:${nodes[2]}/healthz" >/dev/null; do sleep 0.05; done
redis-cli -p "$redis_port" CONFIG RESETSTAT >/dev/null
subscribe_to=()
for p in "${nodes[@]}"; do subscribe_to+=(--subscribe-to "127.0.0.1:$p"); done
"$FANOUT" load --quiet --server "127.0.0.1:${nodes[0]}" "${subscribe_to[@]}" --channels 1 --subscribers "$STORM" \
  --messages 0 --hold-secs 60 >"$WORK/storm3.json" 2>/dev/null &
LOAD=$!
PIDS+=("$LOAD")
started=$(date +%s.%N)
for p in "${nodes[@]}"; do
  until [ "$(curl -s "127.0.0.1:$p/api/presence_stats?channel=load0" | sed -n 's/.*"clients":\([0-9]*\).*/\1/p')" = "$STORM" ]; do
    sleep 0.05
  done
done
cluster_complete=$(awk -v s="$started" -v e="$(date +%s.%N)" 'BEGIN { printf "%.2f", e - s }')
# What Redis did for the storm (and the polls above): the scripts the nodes called, the commands
# run inside them (HSET per member), and the scripts' time.
stats=$(redis-cli -p "$redis_port" INFO commandstats)
redis_calls=$(sed -n 's/^cmdstat_[^:]*:calls=\([0-9]*\),.*/\1/p' <<<"$stats" | awk '{ s += $1 } END { print s }')
script_calls=$(sed -n 's/^cmdstat_evalsha:calls=\([0-9]*\),.*/\1/p' <<<"$stats")
script_usec=$(sed -n 's/^cmdstat_evalsha:calls=[0-9]*,usec=\([0-9]*\),.*/\1/p' <<<"$stats")
read -r cluster_query cluster_bytes < <(query "127.0.0.1:${nodes[1]}/api/presence?channel=load0")
kill "$LOAD" 2>/dev/null || true
wait "$LOAD" 2>/dev/null || true
for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
PIDS=()

# 4. Reconnect storms.
for window in 0 100 1000; do
  port=$(free_port)
  serve "$port" --join-leave 'room.>' --join-leave-window-ms "$window"
  taskset -c "$LOAD_CORE" /usr/bin/python3 "$ROOT/scripts/presence-storm.py" "$port" "$RECONNECT" "$SERVER_PID" >"$WORK/reconnect.$window"
  stop_server
done

echo "Presence, medians of $REPS ($(date -u '+%Y-%m-%d %H:%M UTC')), server on core $SERVER_CORE (1 worker), load on core $LOAD_CORE"
printf '| W1: 1,000 subscribers, 1 channel | off | --presence | --join-leave | presence / off | join-leave / off |\n|---|---|---|---|---|---|\n'
awk -v o="$(median <"$WORK/w1.off")" -v p="$(median <"$WORK/w1.presence")" -v j="$(median <"$WORK/w1.join-leave")" \
  'BEGIN { printf "| deliveries/s | %.0f | %.0f | %.0f | %.2fx | %.2fx |\n", o, p, j, p / o, j / o }'
awk -v o="$(median <"$WORK/w1.off.cpu")" -v p="$(median <"$WORK/w1.presence.cpu")" -v j="$(median <"$WORK/w1.join-leave.cpu")" \
  'BEGIN { printf "| server CPU ns/delivery | %.1f | %.1f | %.1f | %.2fx | %.2fx |\n", o, p, j, p / o, j / o }'
echo
printf '| %s members join | one node | 3 nodes through Redis |\n|---|---|---|\n' "$STORM"
printf '| seconds until presence is complete everywhere | %s | %s |\n' "$single_complete" "$cluster_complete"
awk -v c="$script_calls" -v s="$STORM" 'BEGIN { printf "| script calls from the nodes per join | - | %.4f |\n", c / s }'
awk -v c="$redis_calls" -v s="$STORM" 'BEGIN { printf "| commands Redis ran per join (inside scripts too) | - | %.2f |\n", c / s }'
awk -v u="$script_usec" -v s="$STORM" 'BEGIN { printf "| Redis script time per join, us | - | %.2f |\n", u / s }'
printf '| presence of %s members: seconds, bytes | %s, %s | %s, %s |\n' "$STORM" "$single_query" "$single_bytes" "$cluster_query" "$cluster_bytes"
echo
printf '| reconnect storm, %s members | window 0 ms | 100 ms | 1000 ms |\n|---|---|---|---|\n' "$RECONNECT"
for field in watcher_reads watcher_bytes seconds server_bytes_out server_batches server_events server_cancelled server_cpu_seconds; do
  printf '| %s | %s | %s | %s |\n' "$field" "$(json_field "$(cat "$WORK/reconnect.0")" "$field")" \
    "$(json_field "$(cat "$WORK/reconnect.100")" "$field")" "$(json_field "$(cat "$WORK/reconnect.1000")" "$field")"
done
