#!/usr/bin/env bash
# What TLS costs, measured on this host against plaintext side by side (figures, not pass/fail):
#
#   handshake  full handshakes and resumed ones (session tickets) per second on one worker,
#              10 s each (benches/tls_handshakes.rs is the client); the server's CPU per
#              handshake, which bounds handshakes/s per core.
#   fanout     1,000 subscribers on one channel, 64-byte messages, plaintext then TLS (twice,
#              alternating): as fast as the window allows, and at a fixed 2,000 msg/s; the
#              server's CPU per delivery and the TLS/plaintext ratio.
#   memory     5,000 idle subscribers (plaintext, then TLS, each on a fresh server): the server's
#              resident memory per connection, and what TLS adds.
#   cluster    acknowledged publishes/s through one Redis reached as redis:// and as rediss://
#              (the same redis-server listens on both), to 1 and 1,000 channels.
#
#   scripts/bench-tls.sh                  # all parts
#   PARTS="fanout memory" scripts/bench-tls.sh
set -euo pipefail
source "$(dirname "$0")/common.sh"
PARTS=${PARTS:-handshake fanout memory cluster}
build_fanout
bench_setup tls
rss_bytes() { awk '/^VmRSS/ { print $2 * 1024 }' "/proc/$1/status"; }

make_test_certs "$WORK"
TLS_ARGS=(--tls-cert "$WORK/server.pem" --tls-key "$WORK/server.key")

# start_tls_server [ARGS]: one worker pinned to SERVER_CORE, TLS and plaintext on one port.
start_tls_server() {
  PORT=$(free_port)
  taskset -c "$SERVER_CORE" "$FANOUT" serve --listen "127.0.0.1:$PORT" --workers 1 --no-pin \
    --stats-interval-secs 0 "${TLS_ARGS[@]}" "$@" >"$WORK/server.log" 2>&1 &
  SERVER_PID=$!
  PIDS+=("$SERVER_PID")
  wait_for_port "$PORT"
}


say "# fanout TLS benchmark, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(openssl version | awk '{print $1, $2}')"
say ""

if [[ " $PARTS " == *" handshake "* ]]; then
  # The client: benches/tls_handshakes.rs (rustls; `openssl s_time -reuse` does not resume TLS
  # 1.3 sessions), one connection after another, each a /healthz request read to its end.
  CLIENT=$(cd "$ROOT" && cargo bench --bench tls_handshakes --no-run --message-format=json 2>/dev/null \
             | sed -n 's/.*"executable":"\([^"]*tls_handshakes[^"]*\)".*/\1/p' | tail -1)
  [ -x "$CLIENT" ] || { echo "cannot build benches/tls_handshakes.rs" >&2; exit 1; }
  say "## Handshakes on one worker (10 s each, one client connection at a time; TLS 1.3, P-256 certificate)"
  say ""
  say "| handshake | handshakes/s | resumed | server CPU µs per handshake |"
  say "|---|---|---|---|"
  for resume in 0 1; do
    start_tls_server
    before=$(cpu_seconds "$SERVER_PID")
    result=$(ADDR="127.0.0.1:$PORT" CA="$WORK/ca.pem" SECONDS=10 RESUME=$resume taskset -c "$LOAD_CORE" "$CLIENT")
    after=$(cpu_seconds "$SERVER_PID")
    stop_all
    count=$(echo "$result" | awk '{ print $2 }')
    seconds=$(echo "$result" | awk '{ print $4 }')
    resumed=$(echo "$result" | awk '{ print $6 }')
    label=$([ "$resume" = 0 ] && echo "full (resumption off)" || echo "resumed (session tickets on)")
    say "| $label | $(awk -v c="$count" -v s="$seconds" 'BEGIN { printf "%.0f", c / s }') | $resumed of $count | $(awk -v a="$before" -v b="$after" -v c="$count" 'BEGIN { printf "%.0f", (b - a) * 1e6 / c }') |"
  done
  say ""
fi

if [[ " $PARTS " == *" fanout "* ]]; then
  say "## Fan-out: 1,000 subscribers, one channel, 64-byte messages, one worker"
  say ""
  say "| run | transport | deliveries/s | server CPU ns / delivery | p99 µs |"
  say "|---|---|---|---|---|"
  declare -A NS
  for round in 1 2; do
    for shape in "window:--messages 200000" "2000/s:--messages 20000 --rate 2000"; do
      name=${shape%%:*}
      for transport in plaintext tls; do
        start_tls_server
        server="127.0.0.1:$PORT"
        [ "$transport" = tls ] && server="tls://localhost:$PORT"
        # shellcheck disable=SC2086
        line=$(taskset -c "$LOAD_CORE" "$FANOUT" load --quiet --server "$server" --ca-file "$WORK/ca.pem" \
                 --subscribers 1000 --payload-bytes 64 ${shape#*:} --server-pid "$SERVER_PID" 2>"$WORK/load.err" \
                 | grep '^{' || true)
        [ -n "$line" ] || { cat "$WORK/load.err" >&2; exit 1; }
        stop_all
        delivered=$(json_field "$line" delivered)
        ns=$(awk -v c="$(json_field "$line" server_cpu_seconds)" -v d="$delivered" 'BEGIN { printf "%.0f", c * 1e9 / d }')
        NS[$name.$transport]="${NS[$name.$transport]:-} $ns"
        say "| $name, round $round | $transport | $(printf '%.0f' "$(json_field "$line" deliveries_per_second)") | $ns | $(json_field "$line" p99_us) |"
      done
    done
  done
  for name in window 2000/s; do
    ratio=$(awk -v p="${NS[$name.plaintext]}" -v t="${NS[$name.tls]}" 'BEGIN {
      n = split(p, a, " "); split(t, b, " "); sp = 0; st = 0;
      for (i = 1; i <= n; i++) { sp += a[i]; st += b[i] } printf "%.2f", st / sp }')
    say ""
    say "- $name: TLS costs ${ratio}x the server CPU per delivery of plaintext (mean of both rounds)"
  done
  say ""
fi

if [[ " $PARTS " == *" memory "* ]]; then
  COUNT=5000
  say "## Memory: $COUNT idle subscribers, each on a fresh server"
  say ""
  say "| transport | server RSS before | with $COUNT connections | per connection |"
  say "|---|---|---|---|"
  declare -A PER
  for transport in plaintext tls; do
    start_tls_server
    server="127.0.0.1:$PORT"
    [ "$transport" = tls ] && server="tls://localhost:$PORT"
    before=$(rss_bytes "$SERVER_PID")
    "$FANOUT" load --quiet --server "$server" --ca-file "$WORK/ca.pem" --subscribers "$COUNT" \
      --messages 1 --hold-secs 6 >/dev/null 2>"$WORK/load.err" &
    LOAD_PID=$!
    for _ in $(seq 1 200); do
      open=$(curl -s "http://127.0.0.1:$PORT/metrics" | awk '/^fanout_connections_current / { print $2 }')
      [ "${open:-0}" -ge "$COUNT" ] && break
      sleep 0.05
    done
    # A housekeeping period (250 ms) and more: idle connections give their buffers back.
    sleep 2
    during=$(rss_bytes "$SERVER_PID")
    wait "$LOAD_PID" || true
    stop_all
    per=$(( (during - before) / COUNT ))
    PER[$transport]=$per
    say "| $transport | $((before / 1024)) KiB | $((during / 1024)) KiB | $per bytes |"
  done
  say ""
  say "- TLS adds $(( PER[tls] - PER[plaintext] )) bytes per idle connection"
  say ""
fi

if [[ " $PARTS " == *" cluster "* ]]; then
  command -v redis-server >/dev/null || { echo "the cluster part needs redis-server" >&2; exit 1; }
  say "## Acknowledged publishes/s through one Redis: redis:// vs rediss://"
  say ""
  say "| channels | redis:// msg/s | rediss:// msg/s |"
  say "|---|---|---|"
  for channels in 1 1000; do
    row="| $channels"
    for scheme in redis rediss; do
      REDIS_PORT=$(free_port)
      REDIS_TLS_PORT=$(free_port)
      redis-server --port "$REDIS_PORT" --tls-port "$REDIS_TLS_PORT" --bind 127.0.0.1 --save '' \
        --appendonly no --protected-mode no --loglevel warning --tls-cert-file "$WORK/server.pem" \
        --tls-key-file "$WORK/server.key" --tls-ca-cert-file "$WORK/ca.pem" --tls-auth-clients no \
        >"$WORK/redis.log" 2>&1 &
      PIDS+=("$!")
      wait_for_port "$REDIS_PORT"
      url=(--redis "redis://127.0.0.1:$REDIS_PORT")
      [ "$scheme" = rediss ] && url=(--redis "rediss://localhost:$REDIS_TLS_PORT" --redis-tls-ca-file "$WORK/ca.pem")
      NODE_PORT=$(free_port)
      "$FANOUT" serve --listen "127.0.0.1:$NODE_PORT" --workers 1 --no-pin --stats-interval-secs 0 \
        "${url[@]}" >"$WORK/node.log" 2>&1 &
      PIDS+=("$!")
      wait_for_port "$NODE_PORT"
      for _ in $(seq 1 100); do
        [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$NODE_PORT/healthz")" = 200 ] && break
        sleep 0.05
      done
      line=$("$FANOUT" load --quiet --server "127.0.0.1:$NODE_PORT" --subscribers "$channels" \
               --channels "$channels" --messages 200000 --payload-bytes 64 2>"$WORK/load.err" | grep '^{' || true)
      stop_all
      row="$row | $(printf '%.0f' "$(json_field "$line" deliveries_per_second)")"
    done
    say "$row |"
  done
  say ""
fi

say "(results also in $OUT)"
