#!/usr/bin/env bash
# fanout against redis-server and nats-server, side by side in one run, same workloads, same load
# generator (`fanout load`, which speaks fanout binary, RESP and the NATS protocol).
#
#   scripts/bench-peers.sh                  # 3 repetitions, about 10 minutes on 2 cores
#   REPS=1 scripts/bench-peers.sh           # a quick look
#   ONLY="W1 W4" scripts/bench-peers.sh     # some workloads
#
# Each server runs alone, fresh for every run, pinned to core SERVER_CORE (fanout with one worker,
# so it gets the same single core); the load generator is pinned to LOAD_CORE. The table shows
# medians; a throughput whose load generator used >= 90% of its core is marked ">=" (a lower
# bound: the generator, not the server, was the limit). Results go to stdout and to
# bench-results/peers-<date>.md.
#
#   W1 fan-out        1,000 subscribers, 1 channel, 64-byte messages, as fast as the window allows
#   W2 wide fan-out  10,000 subscribers, 1 channel
#   W3 many channels  1,000 channels with 1 subscriber each, messages spread over them
#   W4 latency        1,000 subscribers at a fixed 1,000 msg/s for 10 s
#   W5 idle memory   19,000 idle subscribers (a process here may hold 20,000 descriptors, the
#                     server included): resident bytes per connection
set -euo pipefail
source "$(dirname "$0")/common.sh"

REPS=${REPS:-3}
ONLY=${ONLY:-W1 W2 W3 W4 W5}
SERVERS=${SERVERS:-fanout redis nats}
WORK=$(mktemp -d)
trap 'stop_server; rm -rf "$WORK"' EXIT

need_packages=()
command -v redis-server >/dev/null || need_packages+=(redis-server)
command -v nats-server >/dev/null || need_packages+=(nats-server)
if [ ${#need_packages[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "missing ${need_packages[*]}: run as root or apt-get install them" >&2
    exit 1
  fi
  apt-get update -qq && apt-get install -y -qq "${need_packages[@]}" >/dev/null
fi
command -v taskset >/dev/null || { echo "taskset (util-linux) is required" >&2; exit 1; }
build_fanout

protocol_of() { case $1 in fanout) echo binary ;; redis) echo resp ;; nats) echo nats ;; esac; }

# run_load SERVER WORKLOAD: one fresh server, one load run; prints the JSON line (and for W5 the
# server's RSS before the load as "rss_before=N").
run_load() {
  local server=$1 workload=$2 port args
  port=$(free_port)
  start_server "$server" "$port"
  sleep 0.2
  local before
  before=$(rss_bytes "$SERVER_PID")
  case $workload in
    W1) args=(--subscribers 1000 --channels 1 --messages 30000) ;;
    W2) args=(--subscribers 10000 --channels 1 --messages 3000) ;;
    W3) args=(--subscribers 1000 --channels 1000 --messages 500000) ;;
    W4) args=(--subscribers 1000 --channels 1 --messages 10000 --rate 1000) ;;
    W5) args=(--subscribers 19000 --channels 1 --messages 0 --hold-secs 2) ;;
  esac
  local line
  line=$(taskset -c "$LOAD_CORE" "$FANOUT" load --quiet --protocol "$(protocol_of "$server")" \
           --server "127.0.0.1:$port" --server-pid "$SERVER_PID" --payload-bytes 64 "${args[@]}" \
           2>"$WORK/load.err" | grep '^{' || true)
  stop_server
  if [ -z "$line" ]; then
    echo "$server $workload: load failed: $(tail -3 "$WORK/load.err")" >&2
    return 1
  fi
  echo "$line rss_before=$before"
}


declare -A RESULT
for workload in $ONLY; do
  for server in $SERVERS; do
    : >"$WORK/$server-$workload"
    for rep in $(seq 1 "$REPS"); do
      echo "-- $workload $server run $rep/$REPS" >&2
      run_load "$server" "$workload" >>"$WORK/$server-$workload" || true
    done
    file="$WORK/$server-$workload"
    field() { while read -r line; do json_field "$line" "$1"; done <"$file" | median; }
    lost=$(while read -r l; do echo $(( $(json_field "$l" lost) + $(json_field "$l" duplicated) + $(json_field "$l" reordered) )); done <"$file" | sort -n | tail -1)
    RESULT[$server,$workload,lost]=${lost:-nan}
    case $workload in
      W1|W2|W3)
        RESULT[$server,$workload,rate]=$(field deliveries_per_second)
        RESULT[$server,$workload,cpu_ns]=$(while read -r l; do awk -v c="$(json_field "$l" server_cpu_seconds)" -v d="$(json_field "$l" delivered)" 'BEGIN { if (d > 0) printf "%.1f\n", c * 1e9 / d }'; done <"$file" | median)
        RESULT[$server,$workload,client]=$(while read -r l; do awk -v c="$(json_field "$l" client_cpu_seconds)" -v s="$(json_field "$l" seconds)" 'BEGIN { printf "%.0f\n", 100 * c / s }'; done <"$file" | median)
        ;;
      W4)
        for q in p50_us p99_us p999_us; do RESULT[$server,$workload,$q]=$(field $q); done
        RESULT[$server,$workload,cpu_pct]=$(while read -r l; do awk -v c="$(json_field "$l" server_cpu_seconds)" -v s="$(json_field "$l" seconds)" 'BEGIN { printf "%.0f\n", 100 * c / s }'; done <"$file" | median)
        ;;
      W5)
        RESULT[$server,$workload,per_conn]=$(while read -r l; do awk -v r="$(json_field "$l" server_rss_bytes)" -v n="$(json_field "$l" connections)" 'BEGIN { if (n > 0) printf "%.0f\n", r / n }'; done <"$file" | median)
        RESULT[$server,$workload,marginal]=$(while read -r l; do b=${l##*rss_before=}; awk -v r="$(json_field "$l" server_rss_bytes)" -v b="$b" -v n="$(json_field "$l" connections)" 'BEGIN { if (n > 0) printf "%.0f\n", (r - b) / n }'; done <"$file" | median)
        ;;
    esac
  done
done

# ratio FANOUT BEST: fanout / best peer.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0 && a == a + 0) printf "%.2fx", a / b; else print "-" }'; }
best() { # best higher|lower values...
  local dir=$1; shift
  printf '%s\n' "$@" | grep -v nan | sort -g | { if [ "$dir" = higher ]; then tail -1; else head -1; fi; }
}
fmt_rate() { # value client%
  awk -v v="$1" -v c="$2" 'BEGIN { printf "%s%.2fM (gen %s%%)", (c >= 90 ? ">=" : ""), v / 1e6, c }'
}
peers=$(echo "$SERVERS" | tr ' ' '\n' | grep -v '^fanout$' | tr '\n' ' ')
out="$ROOT/bench-results/peers-$(date -u +%Y-%m-%d).md"
mkdir -p "$ROOT/bench-results"
{
  echo "fanout vs $peers: $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)),"
  echo "$(redis-server --version | cut -d' ' -f1-3), $(nats-server --version), medians of $REPS, server on core $SERVER_CORE, load on core $LOAD_CORE"
  echo "command: scripts/bench-peers.sh (REPS=$REPS ONLY=\"$ONLY\")"
  echo
  printf '| workload | figure | %s | fanout / best peer |\n' "$(echo "$SERVERS" | sed 's/ / | /g')"
  printf '|---|---|%s---|\n' "$(for _ in $SERVERS; do printf -- '---|'; done)"
  for workload in $ONLY; do
    case $workload in
      W1|W2|W3)
        row="| $workload | deliveries/s |"; vals=()
        for s in $SERVERS; do row+=" $(fmt_rate "${RESULT[$s,$workload,rate]}" "${RESULT[$s,$workload,client]}") |"; done
        for s in $peers; do vals+=("${RESULT[$s,$workload,rate]}"); done
        echo "$row $(ratio "${RESULT[fanout,$workload,rate]}" "$(best higher "${vals[@]}")") |"
        row="| $workload | server CPU ns/delivery |"; vals=()
        for s in $SERVERS; do row+=" ${RESULT[$s,$workload,cpu_ns]} |"; done
        for s in $peers; do vals+=("${RESULT[$s,$workload,cpu_ns]}"); done
        echo "$row $(ratio "${RESULT[fanout,$workload,cpu_ns]}" "$(best lower "${vals[@]}")") |"
        ;;
      W4)
        for q in p50_us p99_us p999_us cpu_pct; do
          label=$q; [ $q = cpu_pct ] && label="server CPU % of a core"
          row="| W4 | $label |"; vals=()
          for s in $SERVERS; do row+=" ${RESULT[$s,W4,$q]} |"; done
          for s in $peers; do vals+=("${RESULT[$s,W4,$q]}"); done
          echo "$row $(ratio "${RESULT[fanout,W4,$q]}" "$(best lower "${vals[@]}")") |"
        done
        ;;
      W5)
        for k in per_conn marginal; do
          label="RSS bytes/connection (all)"; [ $k = marginal ] && label="RSS bytes/connection (above idle process)"
          row="| W5 | $label |"; vals=()
          for s in $SERVERS; do row+=" ${RESULT[$s,W5,$k]} |"; done
          for s in $peers; do vals+=("${RESULT[$s,W5,$k]}"); done
          echo "$row $(ratio "${RESULT[fanout,W5,$k]}" "$(best lower "${vals[@]}")") |"
        done
        ;;
    esac
    row="| $workload | lost+dup+reordered (max) |"
    for s in $SERVERS; do row+=" ${RESULT[$s,$workload,lost]} |"; done
    echo "$row |"
  done
} | tee "$out"
echo "written to $out" >&2
