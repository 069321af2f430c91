# Shared by the scripts in this folder: building, free ports, starting pinned servers.
# Source it; it sets FANOUT (the release binary) and defines the helpers below.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# FANOUT_BIN runs the scripts against another build (e.g. an older commit's, built by
# compare-builds.sh under target/compare/) instead of this tree's release binary.
FANOUT="${FANOUT_BIN:-$ROOT/target/release/fanout}"
SERVER_CORE=${SERVER_CORE:-0}
LOAD_CORE=${LOAD_CORE:-1}

build_fanout() {
  [ -z "${FANOUT_BIN:-}" ] || return 0
  (cd "$ROOT" && cargo build --release --quiet) || { echo "cargo build --release failed" >&2; exit 1; }
}

# Builds benches/floor.rs and sets FLOOR to its executable.
build_floor() {
  FLOOR=$(cd "$ROOT" && cargo bench --bench floor --no-run --message-format=json 2>/dev/null \
            | sed -n 's/.*"executable":"\([^"]*floor[^"]*\)".*/\1/p' | tail -1)
  [ -x "$FLOOR" ] || { echo "cannot build benches/floor.rs" >&2; exit 1; }
}

# A loopback TCP port nothing listens on, below the ephemeral range (so that no outgoing
# connection of a load generator can be holding it).
free_port() {
  local port low
  low=$(awk '{ print $1 }' /proc/sys/net/ipv4/ip_local_port_range)
  [ "$low" -gt 4096 ] || low=40000
  for _ in $(seq 1 200); do
    port=$((low - 3000 + RANDOM % 2900))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return 0
    fi
  done
  echo "no free port found" >&2
  return 1
}

# Waits until something accepts on 127.0.0.1:$1 (at most 10 s).
wait_for_port() {
  for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "nothing is listening on 127.0.0.1:$1" >&2
  return 1
}

# Starts one server pinned to SERVER_CORE; sets SERVER_PID. Usage: start_server fanout|redis|nats|floor PORT
# (floor: the minimal server of benches/floor.rs, at $FLOOR; see build_floor). FANOUT_SERVER runs
# another fanout build as the server (the load generator stays this tree's).
start_server() {
  local kind=$1 port=$2
  case "$kind" in
    fanout) taskset -c "$SERVER_CORE" "${FANOUT_SERVER:-$FANOUT}" serve --listen "127.0.0.1:$port" --workers 1 \
              --stats-interval-secs 0 >"$WORK/$kind.log" 2>&1 & ;;
    redis)  taskset -c "$SERVER_CORE" redis-server --port "$port" --bind 127.0.0.1 --save '' \
              --appendonly no --protected-mode no --maxclients 50000 --loglevel warning \
              >"$WORK/$kind.log" 2>&1 & ;;
    nats)   taskset -c "$SERVER_CORE" nats-server -a 127.0.0.1 -p "$port" >"$WORK/$kind.log" 2>&1 & ;;
    floor)  taskset -c "$SERVER_CORE" "$FLOOR" --listen "127.0.0.1:$port" >"$WORK/$kind.log" 2>&1 & ;;
    *) echo "unknown server $kind" >&2; return 1 ;;
  esac
  SERVER_PID=$!
  wait_for_port "$port"
}

stop_server() {
  if [ -n "${SERVER_PID:-}" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  SERVER_PID=
}

# Resident set size of a process in bytes.
rss_bytes() {
  awk '/^VmRSS:/ { print $2 * 1024 }' "/proc/$1/status"
}

# The median of the numbers on stdin, one a line.
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "nan"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# A numeric field of a `fanout load` JSON line: json_field LINE NAME
json_field() {
  sed -n "s/.*\"$2\":\([-0-9.e+]*\).*/\1/p" <<<"$1"
}

# A benchmark's scratch space: WORK (a temp dir), PIDS (processes killed at exit: add with
# PIDS+=("$!")), OUT (bench-results/NAME-<time>.md, which `say` echoes and appends to).
# Usage: bench_setup NAME
bench_setup() {
  WORK=$(mktemp -d)
  PIDS=()
  trap 'stop_all; rm -rf "$WORK"' EXIT
  mkdir -p "$ROOT/bench-results"
  OUT="$ROOT/bench-results/$1-$(date +%Y%m%d-%H%M%S).md"
}
say() { echo "$*" | tee -a "$OUT"; }

# Kills every process in PIDS and reaps them.
stop_all() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  PIDS=()
}

# CPU seconds (user + system) process $1 has used.
cpu_seconds() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.3f\n", ($14 + $15) / hz }' "/proc/$1/stat"; }

# A test CA and a certificate it signed for localhost and 127.0.0.1 (EC P-256), in directory
# $1: ca.pem, server.pem, server.key. Usage: make_test_certs DIR
make_test_certs() {
  local dir=$1
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj "/CN=fanout test CA" -keyout "$dir/ca.key" -out "$dir/ca.pem" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=localhost \
    -keyout "$dir/server.key" -out "$dir/server.csr" 2>/dev/null
  echo "subjectAltName=DNS:localhost,IP:127.0.0.1" >"$dir/server.ext"
  openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial \
    -days 2 -extfile "$dir/server.ext" -out "$dir/server.pem" 2>/dev/null
}

# A redis-server on a free port, no persistence; sets REDIS_PORT and REDIS_PID (in PIDS).
start_redis() {
  REDIS_PORT=$(free_port)
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --protected-mode no \
    --maxclients 50000 --loglevel warning >"$WORK/redis.log" 2>&1 &
  REDIS_PID=$!
  PIDS+=("$REDIS_PID")
  wait_for_port "$REDIS_PORT"
}

# start_node [ARGS...]: a one-worker `fanout serve` on a free port (ARGS: --redis URL,
# --upstream HOST:PORT...), ready once /healthz says so; sets NODE_PORT and NODE_PID (in PIDS).
start_node() {
  NODE_PORT=$(free_port)
  "$FANOUT" serve --listen "127.0.0.1:$NODE_PORT" --workers 1 --no-pin --stats-interval-secs 0 \
    "$@" >"$WORK/node-$NODE_PORT.log" 2>&1 &
  NODE_PID=$!
  PIDS+=("$NODE_PID")
  wait_for_port "$NODE_PORT"
  for _ in $(seq 1 100); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$NODE_PORT/healthz")" = 200 ] && return 0
    sleep 0.05
  done
  echo "node on $NODE_PORT never became ready" >&2
  return 1
}
