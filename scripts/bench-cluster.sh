#!/usr/bin/env bash
# The cluster through Redis, measured on this host (figures, not pass/fail):
#
#   scale    1, 2, 3 and 4 nodes behind one redis-server, SUBS subscribers per node (default
#            10,000) on one channel, one publisher on node 1 as fast as the window allows:
#            deliveries/s in total, CPU seconds of the nodes and of Redis per million deliveries.
#   latency  1,000 subscribers at a fixed 1,000 msg/s for 10 s, one node on its own and one node
#            through Redis, side by side: end-to-end p50/p99/max (what Redis adds).
#   publish  acknowledged publishes/s from one connection (pipelined by the broker thread) to
#            PUBLISH_CHANNELS (1 100 1000 10000) channels, through PUBLISH_SETUPS: one Redis,
#            three independent ones (--redis x3) and a 3-master Redis Cluster; Redis CPU (and the
#            busiest server's share), the script's own time (INFO commandstats) and node CPU per
#            message; next to `redis-benchmark` doing plain pipelined PUBLISH (the ceiling).
#            COMMANDSTATS=1 keeps each setup's INFO commandstats at 1,000 channels beside the
#            results.
#   c100k    5 nodes x 19,900 subscribers (a process may hold 20,000 descriptors here) = 99,500
#            on one channel, the load generator spread over child processes and source
#            addresses; a few broadcasts: time from publish to the last delivery, and each
#            node's resident memory per connection.
#
#   scripts/bench-cluster.sh                    # all parts
#   PARTS="scale latency" scripts/bench-cluster.sh
#   NODES="1 2" SUBS=5000 PARTS=scale scripts/bench-cluster.sh
#   PARTS=publish PUBLISH_SETUPS=one PUBLISH_CHANNELS="1 1000" scripts/bench-cluster.sh
set -euo pipefail
source "$(dirname "$0")/common.sh"
PARTS=${PARTS:-scale latency publish c100k}
NODES=${NODES:-1 2 3 4}
SUBS=${SUBS:-10000}
PUBLISH_CHANNELS=${PUBLISH_CHANNELS:-1 100 1000 10000}
PUBLISH_SETUPS=${PUBLISH_SETUPS:-one three cluster}
PUBLISH_MESSAGES=${PUBLISH_MESSAGES:-200000}
command -v redis-server >/dev/null || { echo "needs redis-server (apt-get install redis-server)" >&2; exit 1; }
build_fanout
bench_setup cluster



# start_redis_cluster N: N masters (no replicas) formed with `redis-cli --cluster create`;
# sets redis_ports and redis_pids.
start_redis_cluster() {
  redis_ports=(); redis_pids=()
  local hosts=() port dir
  for _ in $(seq 1 "$1"); do
    # Below 20,000 so that the bus port (10,000 above) is below the ephemeral range, where an
    # outgoing connection may hold it.
    while :; do
      port=$((12000 + RANDOM % 7000))
      (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && continue
      (exec 3<>"/dev/tcp/127.0.0.1/$((port + 10000))") 2>/dev/null || break
    done
    dir="$WORK/cluster-$port"; mkdir -p "$dir"
    (cd "$dir" && exec redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
       --protected-mode no --cluster-enabled yes --cluster-config-file nodes.conf \
       --maxclients 50000 --loglevel warning) >"$dir/redis.log" 2>&1 &
    redis_pids+=($!); PIDS+=($!); redis_ports+=("$port"); hosts+=("127.0.0.1:$port")
    wait_for_port "$port"
  done
  redis-cli --cluster create "${hosts[@]}" --cluster-yes >"$WORK/cluster-create.log" 2>&1
  for _ in $(seq 1 200); do
    redis-cli -p "${redis_ports[0]}" CLUSTER INFO | grep -q 'cluster_state:ok' && return 0
    sleep 0.05
  done
  echo "the Redis Cluster did not form" >&2
  return 1
}



say "# fanout cluster benchmark, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(redis-server --version | awk '{print $3}')"
say ""

if [[ " $PARTS " == *" scale "* ]]; then
  say "## Fan-out through one Redis: $SUBS subscribers per node, one channel, 64-byte messages"
  say ""
  say "| nodes | subscribers | deliveries/s | lost | node CPU s / M deliveries | Redis CPU s / M deliveries |"
  say "|---|---|---|---|---|---|"
  for n in $NODES; do
    start_redis
    ports=(); pids=()
    for _ in $(seq 1 "$n"); do
      start_node --redis "redis://127.0.0.1:$REDIS_PORT"
      ports+=("$NODE_PORT"); pids+=("$NODE_PID")
    done
    subscribe_to=()
    for port in "${ports[@]}"; do subscribe_to+=(--subscribe-to "127.0.0.1:$port"); done
    subs=$((SUBS * n))
    messages=$((3000 * 10000 / SUBS))
    before_nodes=0
    for pid in "${pids[@]}"; do before_nodes=$(echo "$before_nodes + $(cpu_seconds "$pid")" | bc); done
    before_redis=$(cpu_seconds "$REDIS_PID")
    line=$("$FANOUT" load --quiet --server "127.0.0.1:${ports[0]}" "${subscribe_to[@]}" \
             --subscribers "$subs" --channels 1 --messages "$messages" --payload-bytes 64 \
             --max-per-process 15000 2>"$WORK/load.err" | grep '^{' || true)
    after_nodes=0
    for pid in "${pids[@]}"; do after_nodes=$(echo "$after_nodes + $(cpu_seconds "$pid")" | bc); done
    after_redis=$(cpu_seconds "$REDIS_PID")
    stop_all
    if [ -z "$line" ]; then
      say "| $n | $subs | load failed: $(tail -1 "$WORK/load.err") | | | |"
      continue
    fi
    rate=$(json_field "$line" deliveries_per_second)
    delivered=$(json_field "$line" delivered)
    lost=$(json_field "$line" lost)
    node_cpu=$(echo "scale=3; ($after_nodes - $before_nodes) * 1000000 / $delivered" | bc)
    redis_cpu=$(echo "scale=4; ($after_redis - $before_redis) * 1000000 / $delivered" | bc)
    say "| $n | $subs | $(printf '%.0f' "$rate") | $lost | $node_cpu | $redis_cpu |"
  done
  say ""
fi

if [[ " $PARTS " == *" latency "* ]]; then
  say "## Latency at 1,000 msg/s for 10 s: one node alone vs one node through Redis"
  say ""
  say "(With 1,000 subscribers the load generator receives a million deliveries a second on a"
  say "core it shares with the node and Redis: its own scheduling is in every figure.)"
  say ""
  say "| subscribers | setup | p50 µs | p99 µs | max µs | lost |"
  say "|---|---|---|---|---|---|"
  for subscribers in 10 1000; do
    for setup in alone redis; do
      if [ "$setup" = redis ]; then
        start_redis
        start_node --redis "redis://127.0.0.1:$REDIS_PORT"
      else
        start_node
      fi
      line=$("$FANOUT" load --quiet --server "127.0.0.1:$NODE_PORT" --subscribers "$subscribers" \
               --channels 1 --messages 10000 --rate 1000 --payload-bytes 64 2>"$WORK/load.err" | grep '^{' || true)
      stop_all
      say "| $subscribers | $setup | $(json_field "$line" p50_us) | $(json_field "$line" p99_us) | $(json_field "$line" max_us) | $(json_field "$line" lost) |"
    done
  done
  say ""
fi

if [[ " $PARTS " == *" publish "* ]]; then
  say "## Acknowledged publishes/s through Redis (one publisher, pipelined by the broker)"
  say ""
  say "$PUBLISH_MESSAGES messages of 64 bytes from one connection (a window of acknowledged publishes), to"
  say "CHANNELS channels with one subscriber each on the same node; history on (the node's default)."
  say "CPU per message: each process's user+system time over the run (Redis: summed over its"
  say "servers) divided by the messages; \`script µs\` is EVALSHA's own time in \`INFO commandstats\`"
  say "(every command the script ran, inside Redis, without its I/O). The busiest server's share of"
  say "the Redis CPU: 1.00 with one server, 0.33 for an even spread over three."
  say ""
  say "| Redis | channels | publishes/s | Redis CPU µs/msg | busiest server's share | script µs/msg | node CPU µs/msg |"
  say "|---|---|---|---|---|---|---|"
  for setup in $PUBLISH_SETUPS; do
    for channels in $PUBLISH_CHANNELS; do
      case "$setup" in
        one) start_redis; redis_ports=("$REDIS_PORT"); redis_pids=("$REDIS_PID")
             start_node --redis "redis://127.0.0.1:$REDIS_PORT" ;;
        three) redis_ports=(); redis_pids=(); urls=()
             for _ in 1 2 3; do
               start_redis; redis_ports+=("$REDIS_PORT"); redis_pids+=("$REDIS_PID")
               urls+=(--redis "redis://127.0.0.1:$REDIS_PORT")
             done
             start_node "${urls[@]}" ;;
        cluster) start_redis_cluster 3
             start_node --redis-cluster "redis://127.0.0.1:${redis_ports[0]}" ;;
      esac
      redis_before=()
      for pid in "${redis_pids[@]}"; do redis_before+=("$(cpu_seconds "$pid")"); done
      for port in "${redis_ports[@]}"; do redis-cli -p "$port" CONFIG RESETSTAT >/dev/null; done
      node_cpu_before=$(cpu_seconds "$NODE_PID")
      line=$("$FANOUT" load --quiet --server "127.0.0.1:$NODE_PORT" --subscribers "$channels" \
               --channels "$channels" --messages "$PUBLISH_MESSAGES" --payload-bytes 64 2>"$WORK/load.err" | grep '^{' || true)
      node_cpu=$(echo "$(cpu_seconds "$NODE_PID") - $node_cpu_before" | bc)
      # Each server's CPU over the run: their sum, and the busiest one's share (an even spread
      # over servers is what lets throughput grow with them where the host is not the limit).
      redis_cpu=0; busiest=0
      for k in "${!redis_pids[@]}"; do
        used=$(echo "$(cpu_seconds "${redis_pids[$k]}") - ${redis_before[$k]}" | bc)
        redis_cpu=$(echo "$redis_cpu + $used" | bc)
        busiest=$(echo "if ($used > $busiest) $used else $busiest" | bc)
      done
      share=$(echo "scale=2; if ($redis_cpu > 0) $busiest / $redis_cpu else 0" | bc)
      script_usec=0
      for port in "${redis_ports[@]}"; do
        usec=$(redis-cli -p "$port" INFO commandstats | tr -d '\r' | sed -n 's/^cmdstat_evalsha:calls=[0-9]*,usec=\([0-9]*\),.*/\1/p')
        script_usec=$((script_usec + ${usec:-0}))
        if [ -n "${COMMANDSTATS:-}" ] && [ "$channels" = 1000 ]; then
          redis-cli -p "$port" INFO commandstats | tr -d '\r' | grep '^cmdstat' >>"$OUT.commandstats-$setup"
        fi
      done
      stop_all
      per=$(json_field "$line" deliveries_per_second)
      say "| $setup | $channels | $(printf '%.0f' "${per:-0}") | $(echo "scale=2; $redis_cpu * 1000000 / $PUBLISH_MESSAGES" | bc) | $share | $(echo "scale=2; $script_usec / $PUBLISH_MESSAGES" | bc) | $(echo "scale=2; $node_cpu * 1000000 / $PUBLISH_MESSAGES" | bc) |"
    done
  done
  start_redis
  bench=$(redis-benchmark -p "$REDIS_PORT" -n 1000000 -P 64 -c 4 -q PUBLISH ch 0123456789012345678901234567890123456789012345678901234567890123 2>/dev/null \
            | tr '\r' '\n' | grep -o '[0-9.]* requests per second' | tail -1 | awk '{print $1}')
  stop_all
  say "| redis-benchmark PUBLISH (pipeline 64, 4 clients, no subscribers): the ceiling | 1 | ${bench:-n/a} | | | | |"
  say ""
fi

if [[ " $PARTS " == *" c100k "* ]]; then
  say "## C100K: 5 nodes x 19,900 subscribers through one Redis, one channel"
  say ""
  start_redis
  ports=(); pids=(); rss_before=()
  for _ in 1 2 3 4 5; do
    start_node --redis "redis://127.0.0.1:$REDIS_PORT" --max-connections 19900
    ports+=("$NODE_PORT"); pids+=("$NODE_PID"); rss_before+=("$(rss_bytes "$NODE_PID")")
  done
  subscribe_to=()
  for port in "${ports[@]}"; do subscribe_to+=(--subscribe-to "127.0.0.1:$port"); done
  publisher_port=$(free_port)
  # The publisher gets a node of its own (the five are full).
  start_node --redis "redis://127.0.0.1:$REDIS_PORT"
  publisher_port=$NODE_PORT
  line=$("$FANOUT" load --quiet --server "127.0.0.1:$publisher_port" "${subscribe_to[@]}" \
           --subscribers 99500 --channels 1 --messages 5 --rate 1 --payload-bytes 64 \
           --max-per-process 18000 --hold-secs 1 2>"$WORK/load.err" | grep '^{' || true)
  rss_per=()
  for i in 0 1 2 3 4; do
    rss=$(rss_bytes "${pids[$i]}")
    rss_per+=("$(( (rss - ${rss_before[$i]}) / 19900 ))")
  done
  stop_all
  if [ -z "$line" ]; then
    say "load failed: $(tail -3 "$WORK/load.err")"
  else
    say "- subscribers: $(json_field "$line" connections), deliveries: $(json_field "$line" delivered), lost: $(json_field "$line" lost)"
    say "- publish to delivery, over all 5 broadcasts x 99,500: p50 $(json_field "$line" p50_us) µs, p99 $(json_field "$line" p99_us) µs, last delivery (max) $(json_field "$line" max_us) µs"
    say "- node resident memory per connection (bytes, each of the 5): ${rss_per[*]}"
  fi
  say ""
fi
echo "results: $OUT"
