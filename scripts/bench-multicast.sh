#!/usr/bin/env bash
# The hub's CPU per edge with and without UDP multicast (figures, not pass/fail). Needs root:
# network namespaces (a bridge, a hub, E edges) like tests/multicast.rs. For each E in EDGES
# (default 1 4 8) and each setup (tcp: edges subscribed over TCP; multicast: --multicast on the
# hub and the edges), SUBS subscribers (default 2,000) spread over the edges, one channel,
# MESSAGES 64-byte messages at RATE/s published on the hub:
#   deliveries/s, p99, lost, and the hub's CPU seconds per thousand messages per edge (what
#   each edge costs the hub), beside the edges' CPU per delivery.
#
#   sudo scripts/bench-multicast.sh
#   EDGES="2 8" RATE=5000 sudo scripts/bench-multicast.sh
set -euo pipefail
source "$(dirname "$0")/common.sh"
EDGES=${EDGES:-1 4 8}
SUBS=${SUBS:-2000}
MESSAGES=${MESSAGES:-20000}
RATE=${RATE:-2000}
[ "$(id -u)" = 0 ] || { echo "needs root (network namespaces)" >&2; exit 1; }
build_fanout
bench_setup multicast

id=$$
subnet=$((100 + id % 100))
group=239.77.1.1:7500
namespaces=()
cleanup_lan() {
  stop_all
  ip link del "vt$id" 2>/dev/null || true
  for ns in "${namespaces[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
  namespaces=()
}
trap 'cleanup_lan; rm -rf "$WORK"' EXIT

# make_lan N: a bridge, a hub (.1) and N edges (.11 ...), and this namespace on it (.254).
make_lan() {
  local n=$1 host ns
  ip netns add "fo-lan-$id"; namespaces+=("fo-lan-$id")
  ip -n "fo-lan-$id" link add br0 type bridge mcast_snooping 0
  ip -n "fo-lan-$id" link set br0 up
  for host in hub $(seq -f 'e%g' 1 "$n"); do
    ns="fo-$host-$id"
    ip netns add "$ns"; namespaces+=("$ns")
    ip link add "v$host$id" type veth peer name "p$host$id"
    ip link set "v$host$id" netns "$ns"
    ip link set "p$host$id" netns "fo-lan-$id"
    ip -n "fo-lan-$id" link set "p$host$id" master br0 up
    ip -n "$ns" addr add "10.231.$subnet.$(address_of "$host")/24" dev "v$host$id"
    ip -n "$ns" link set "v$host$id" up
    ip -n "$ns" link set lo up
    ip -n "$ns" route add 224.0.0.0/4 dev "v$host$id"
  done
  ip link add "vt$id" type veth peer name "pt$id"
  ip link set "pt$id" netns "fo-lan-$id"
  ip -n "fo-lan-$id" link set "pt$id" master br0 up
  ip addr add "10.231.$subnet.254/24" dev "vt$id"
  ip link set "vt$id" up
}
address_of() { case "$1" in hub) echo 1 ;; e*) echo $((10 + ${1#e})) ;; esac; }

# serve HOST ARGS...: fanout in HOST's namespace on port 7400; sets SERVED_PID.
serve() {
  local host=$1; shift
  local addr="10.231.$subnet.$(address_of "$host")"
  ip netns exec "fo-$host-$id" "$FANOUT" serve --listen "$addr:7400" --workers 1 --no-pin \
    --stats-interval-secs 0 --allow-anonymous "$@" >"$WORK/$host.log" 2>&1 &
  SERVED_PID=$!
  PIDS+=("$SERVED_PID")
  for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/$addr/7400") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "$host never listened" >&2
  return 1
}

say "# fanout multicast benchmark, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores: $SUBS subscribers, one channel, $MESSAGES messages at $RATE/s"
say ""
say "| edges | setup | deliveries/s | p99 µs | lost | hub CPU ms / 1,000 messages | per edge | edges CPU µs / delivery |"
say "|---|---|---|---|---|---|---|---|"
for e in $EDGES; do
  for setup in tcp multicast; do
    make_lan "$e"
    extra=()
    [ "$setup" = multicast ] && extra=(--multicast "$group")
    serve hub "${extra[@]}"
    hub_pid=$SERVED_PID
    edge_pids=(); subscribe_to=()
    for k in $(seq 1 "$e"); do
      serve "e$k" --upstream "10.231.$subnet.1:7400" "${extra[@]}"
      edge_pids+=("$SERVED_PID")
      subscribe_to+=(--subscribe-to "10.231.$subnet.$((10 + k)):7400")
    done
    # (the pids are of `ip netns exec`, which execs fanout: the same process)
    hub_before=$(cpu_seconds "$hub_pid")
    edges_before=0
    for pid in "${edge_pids[@]}"; do edges_before=$(echo "$edges_before + $(cpu_seconds "$pid")" | bc); done
    line=$("$FANOUT" load --quiet --server "10.231.$subnet.1:7400" "${subscribe_to[@]}" \
             --subscribers "$SUBS" --channels 1 --messages "$MESSAGES" --rate "$RATE" \
             --payload-bytes 64 --drain-timeout-secs 20 2>"$WORK/load.err" | grep '^{' || true)
    hub_after=$(cpu_seconds "$hub_pid")
    edges_after=0
    for pid in "${edge_pids[@]}"; do edges_after=$(echo "$edges_after + $(cpu_seconds "$pid")" | bc); done
    cleanup_lan
    if [ -z "$line" ]; then
      say "| $e | $setup | load failed: $(tail -1 "$WORK/load.err") | | | | | |"
      continue
    fi
    delivered=$(json_field "$line" delivered)
    hub_ms=$(echo "scale=3; ($hub_after - $hub_before) * 1000000 / $MESSAGES" | bc)
    say "| $e | $setup | $(printf '%.0f' "$(json_field "$line" deliveries_per_second)") | $(json_field "$line" p99_us) | $(json_field "$line" lost) | $hub_ms | $(echo "scale=3; $hub_ms / $e" | bc) | $(echo "scale=2; ($edges_after - $edges_before) * 1000000 / $delivered" | bc) |"
  done
done
say ""
say "Results: $OUT"
