#!/usr/bin/env bash
# Chaos test of the cluster through Redis: what a client that trusts an acknowledgement expects.
#   scripts/cluster-chaos.sh [CYCLES=10] [SEED=random]
# Phase 1: a standalone redis-server with RDB snapshots (SAVE at random moments) and four fanout
# nodes; phase 2: a 3-master + 3-replica Redis Cluster and four nodes. In each phase, four
# acknowledged publishers (text PUBA, one per node, RATE msg/s in all, unique payloads) and six
# resuming subscribers (two on each of nodes 0-2; on a disconnect they move to the next node and
# resume by offset and epoch) run while CYCLES seeded faults, one per cycle, hit a few seconds apart:
#   standalone: SIGSTOP/SIGCONT of Redis (1-3 s), SIGKILL + restart empty, SIGKILL + restart from
#               an older snapshot, SIGKILL + restart of a fanout node, partition;
#   cluster:    SIGSTOP/SIGCONT of a master (1-3 s), SIGKILL of a master (failover) then its
#               restart, SIGKILL + restart of a fanout node, partition;
#   partition:  a network partition between node 0 and Redis (2-8 s, then healed): node 0 runs
#               in a network namespace of its own, fanout-chaos-<pid>, joined to the host by a
#               veth pair (a /30 of 10.213.0.0/16 picked from the seed and pid: host end .1, where
#               Redis listens besides 127.0.0.1 and which Redis Cluster announces; node 0 on .2,
#               where its clients reach it); the fault drops, silently (tc clsact + u32 on the
#               Redis ports, redirected to a veth whose peer is down), node 0's packets to Redis
#               and Redis's to node 0 -- both ways, or one way only; in the cluster phase from
#               every master or from one -- while its clients stay connected to it; midway
#               (seeded), a subscriber of another node is moved onto node 0 and resumes there.
#               Needs root, `ip netns` and tc; otherwise skipped with a note.
# Then it quiesces and checks the recorded history (scripts/chaos.py) against the promises:
#   1 one payload per (channel, epoch, offset), an acknowledged payload only at its offset;
#   2 every acknowledged publish reaches every subscriber once, in order, or it is told
#     (HIST epoch / expired) after a fault that can lose acknowledged data (a partition loses
#     nothing in Redis: no excuse); a resume in an epoch is never answered `epoch` with that
#     same epoch;
#   3 nothing acknowledged while Redis is gone (a partitioned node acknowledges nothing that
#     crossed the partition); publishing comes back by itself (failover too; a healed node
#     answers /healthz 200 again);
#   4 subscribers of a killed node resume on another one.
# Prints each phase's faults, counts and violations (first few, with the seed), then
# "N passed, M failed" (one check per promise per phase); exits 1 on any violation.
# About 10-15 s per cycle per phase, plus set-up. Loopback and the script's own namespace only;
# the namespace, veth pairs, qdiscs and filters are removed on exit (Ctrl-C and timeout too).
#   RATE=200 REDIS_TIMEOUT_MS=2000 PHASES=standalone,cluster KEEP=1 (keep the work dir)
#   SELFTEST=1 (also checks that the checker sees a dropped, doubled and swapped delivery)
#   PARTITION=0 (no namespace, no partition fault)
set -euo pipefail
source "$(dirname "$0")/common.sh"
CYCLES=${1:-10}
SEED=${2:-$(( (RANDOM << 15 | RANDOM) + 1 ))}
RATE=${RATE:-200}
REDIS_TIMEOUT_MS=${REDIS_TIMEOUT_MS:-2000}
PHASES=${PHASES:-standalone,cluster}
PY=/usr/bin/python3
for tool in redis-server redis-cli; do
  command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install redis-server)" >&2; exit 1; }
done
"$PY" -c 'import redis' 2>/dev/null || { echo "needs python3-redis for $PY" >&2; exit 1; }
if [ -z "${FANOUT_BIN:-}" ]; then
  (cd "$ROOT" && nice -n 10 cargo build --release --quiet) || { echo "cargo build --release failed" >&2; exit 1; }
fi
WORK=$(mktemp -d /tmp/cluster-chaos.XXXXXX)
DRIVER=
NETNS=
NETNS_ARGS=()

# The partition fault's namespace: fanout-chaos-$$ holding node 0, joined to the host by the veth
# pair fcH$$ (host) / fcN$$ (inside), and an inner veth pair fcdrop/fcdropb (fcdropb left down) that
# the fault redirects the dropped packets to (tc has no drop action in every kernel; a redirect to
# a device whose peer is down drops silently). Sets NETNS and NETNS_ARGS, or prints why not.
netns_setup() {
  local why=
  if [ "${PARTITION:-1}" = 0 ]; then why="PARTITION=0"
  elif [ "$(id -u)" != 0 ]; then why="not root"
  elif ! command -v ip >/dev/null || ! command -v tc >/dev/null; then why="needs ip and tc (iproute2)"
  fi
  if [ -n "$why" ]; then
    echo "note: the partition fault is skipped ($why)"
    NETNS_ARGS=(--no-partition "$why")
    return 0
  fi
  # namespaces of earlier runs whose script is gone (killed with SIGKILL: no trap ran)
  local ns pid
  for ns in $(ip netns list 2>/dev/null | awk '{ print $1 }' | grep -E '^fanout-chaos-[0-9]+$' || true); do
    pid=${ns#fanout-chaos-}
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "note: removing the namespace $ns left by an earlier run"
      ip link del "fcH$pid" 2>/dev/null || true
      ip netns del "$ns" 2>/dev/null || true
    fi
  done
  # a /30 of 10.213.0.0/16 from the seed and the pid, that no address or route of the host covers
  local idx tries host_ip ns_ip b
  idx=$(( ($(printf '%s' "$SEED" | cksum | cut -d' ' -f1) * 7919 + $$) % 16383 + 1 ))
  for tries in $(seq 1 64); do
    b=$(( idx * 4 ))
    host_ip="10.213.$(( b >> 8 )).$(( (b & 255) + 1 ))"
    ns_ip="10.213.$(( b >> 8 )).$(( (b & 255) + 2 ))"
    if [ -z "$(ip -4 route show match "$host_ip" 2>/dev/null | grep -v '^default')" ] \
       && [ -z "$(ip -4 route show match "$ns_ip" 2>/dev/null | grep -v '^default')" ]; then
      break
    fi
    host_ip=
    idx=$(( idx % 16383 + 1 ))
  done
  [ -n "$host_ip" ] || why="no free /30 in 10.213.0.0/16"
  NETNS="fanout-chaos-$$"
  local vh="fcH$$" vn="fcN$$"
  if [ -z "$why" ] && ! { ip netns add "$NETNS" \
       && ip link add "$vh" type veth peer name "$vn" netns "$NETNS" \
       && ip addr add "$host_ip/30" dev "$vh" && ip link set "$vh" up \
       && ip -n "$NETNS" addr add "$ns_ip/30" dev "$vn" && ip -n "$NETNS" link set "$vn" up \
       && ip -n "$NETNS" link set lo up \
       && ip -n "$NETNS" link add fcdrop type veth peer name fcdropb \
       && ip -n "$NETNS" link set fcdrop up \
       && tc -n "$NETNS" qdisc add dev "$vn" clsact \
       && tc -n "$NETNS" filter add dev "$vn" egress protocol ip prio 1 u32 match ip dport 9 0xffff \
            action mirred egress redirect dev fcdrop \
       && tc -n "$NETNS" filter del dev "$vn" egress; } >"$WORK/netns-setup.log" 2>&1; then
    why="cannot set up the namespace: $(tail -1 "$WORK/netns-setup.log")"
  fi
  # the host end answers from inside (a connection to port 9 accepted, or refused at once)
  if [ -z "$why" ]; then
    local r=0 out
    out=$(timeout 3 ip netns exec "$NETNS" bash -c "exec 3<>/dev/tcp/$host_ip/9" 2>&1) || r=$?
    if [ "$r" != 0 ] && ! grep -qi refused <<<"$out"; then
      why="the host end $host_ip does not answer from inside $NETNS (${out:-timed out})"
    fi
  fi
  if [ -n "$why" ]; then
    echo "note: the partition fault is skipped ($why)"
    netns_teardown
    NETNS=
    NETNS_ARGS=(--no-partition "$why")
    return 0
  fi
  NETNS_ARGS=(--netns "$NETNS" --ns-dev "$vn" --ns-drop-dev fcdrop --ns-host-ip "$host_ip" --ns-ip "$ns_ip")
}

# Deleting the host end deletes its peer; deleting the namespace deletes fcdrop/fcdropb, the
# clsact qdisc and its filters with it.
netns_teardown() {
  [ -n "$NETNS" ] || return 0
  ip link del "fcH$$" 2>/dev/null || true
  ip netns del "$NETNS" 2>/dev/null || true
}

cleanup() {
  if [ -n "$DRIVER" ] && kill -0 "$DRIVER" 2>/dev/null; then
    kill -TERM "$DRIVER" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$DRIVER" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$DRIVER" 2>/dev/null || true
  fi
  # whatever the driver started and may have left (it lists every pid it started)
  if [ -f "$WORK/pids" ]; then
    while read -r pid; do
      kill -CONT "$pid" 2>/dev/null || true
      kill -KILL "$pid" 2>/dev/null || true
    done <"$WORK/pids"
  fi
  netns_teardown
  if [ "${KEEP:-0}" = 1 ]; then echo "work dir kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP
netns_setup
# The whole run is bounded: set-up plus at most 40 s a cycle per phase.
limit=$(( 120 + CYCLES * 40 * 2 ))
set +e
timeout --signal=TERM --kill-after=15 "$limit" "$PY" -u "$ROOT/scripts/chaos.py" --work "$WORK" \
  --fanout "$FANOUT" --cycles "$CYCLES" --seed "$SEED" --rate "$RATE" \
  --redis-timeout-ms "$REDIS_TIMEOUT_MS" --phases "$PHASES" ${SELFTEST:+--selftest} "${NETNS_ARGS[@]}" &
DRIVER=$!
wait "$DRIVER"
rc=$?
set -e
DRIVER=
[ "$rc" = 124 ] && echo "chaos driver timed out after $limit s" >&2
exit "$rc"
