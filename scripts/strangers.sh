#!/usr/bin/env bash
# Attacks a fanout server with access control on, the ways a client without permissions (a
# "stranger") or a hostile client with a token can, each bounded in count and time, and checks
# what the server promises (README, "Access control" and "Redis clients"):
#   P1 a stranger may buffer only a few KiB on every protocol (text, binary, WebSocket, HTTP,
#      RESP), gets a clear error and only its connection closes: under +2 MiB of server RSS per
#      hostile connection, and a bystander subscriber never waits 100 ms for its next message;
#   P2 after AUTH a RESP command is bounded by --max-query-bytes and parsed in linear time;
#   P3 strangers never hear a `*` broadcast, nor anonymous clients unless the anonymous grant
#      names `*`; connections with a token do;
#   P4 tokens minted by PyJWT (an independent JWT library): a decimal exp expires (closed about
#      --auth-expiry-grace-secs after it); absurd or non-numeric exps, a missing aud or iss when
#      configured, a wildcard sub are refused;
#   P5 PUBSUB CHANNELS/NUMSUB/NUMPAT reveal only channels and patterns the caller may subscribe to.
# The bystander (a subscriber with a token, hearing 200 messages a second the backend publishes
# with the API key) runs through the attacks on the main server; each attack's line ends with its
# longest gap between two messages while the attack ran. Then one PASS/FAIL line per promise.
# Counts: RESP_N (200) RESP strangers, OTHER_N (100) strangers per other protocol, AUTHED_N (20)
# RESP clients after AUTH, FLOOD_N (10) never-reading PING flooders per protocol (each may cost
# the server tens of MB). Loopback only; needs python3-jwt. Usage: scripts/strangers.sh (~2 min)
set -euo pipefail
source "$(dirname "$0")/common.sh"
PYTHON=${PYTHON:-/usr/bin/python3}
RESP_N=${RESP_N:-200}
OTHER_N=${OTHER_N:-100}
AUTHED_N=${AUTHED_N:-20}
FLOOD_N=${FLOOD_N:-10}
HOSTILE="$ROOT/scripts/hostile.py"
GAP_LIMIT_MS=100
STRANGER_BUDGET=$((8192 + 1024)) # --max-token-bytes (8 KiB) + 1 KiB
QUERY_LIMIT=$((1048576 + 65536)) # the default --max-query-bytes: --max-frame-bytes + 64 KiB
AUDIENCE=fanout-strangers
ISSUER=strangers.sh
WORK=$(mktemp -d)
BYSTANDER_PID=
trap 'stop_bystander; stop_server; rm -rf "$WORK"' EXIT

"$PYTHON" -c 'import jwt' 2>/dev/null || { echo "$PYTHON lacks PyJWT: apt-get install -y python3-jwt" >&2; exit 1; }
# The build runs niced: the machine is shared.
(renice -n 10 -p "$BASHPID" >/dev/null && build_fanout) || exit 1
head -c 32 /dev/urandom | base64 >"$WORK/secret"
head -c 32 /dev/urandom | base64 >"$WORK/api-key"

serve() {
  port=$(free_port)
  addr=127.0.0.1:$port
  "$FANOUT" serve --listen "$addr" --workers 2 --no-pin --stats-interval-secs 0 \
    --auth-secret-file "$WORK/secret" --api-key-file "$WORK/api-key" "$@" >"$WORK/server.log" 2>&1 &
  SERVER_PID=$!
  wait_for_port "$port"
}

start_bystander() {
  : >"$WORK/arrivals"
  "$PYTHON" "$HOSTILE" bystander "$addr" "$WORK/secret" "$WORK/api-key" bystander.feed 200 170 \
    "$WORK/arrivals" 2>"$WORK/bystander.err" &
  BYSTANDER_PID=$!
  for _ in $(seq 1 50); do
    [ "$(wc -l <"$WORK/arrivals")" -lt 20 ] || return 0
    sleep 0.1
  done
  echo "the bystander hears nothing: $(cat "$WORK/bystander.err")" >&2
  exit 1
}

stop_bystander() {
  if [ -n "${BYSTANDER_PID:-}" ]; then
    kill "$BYSTANDER_PID" 2>/dev/null || true
    wait "$BYSTANDER_PID" 2>/dev/null || true
  fi
  BYSTANDER_PID=
}

# The bystander's messages between two wall-clock times: count, longest gap between two (the
# silence up to the window's end included), worst publish-to-arrival latency.
bystander_gap() {
  [ -n "$BYSTANDER_PID" ] || { echo "no bystander"; return; }
  awk -v s="$1" -v e="$2" '
    $2 == "EOF" { if ($1 > s) eof = 1; next }
    $2 !~ /^[0-9]+$/ { if ($1 > s && $1 <= e) err = err " " $0; next }
    $1 > e { next }
    {
      if ($1 > s) {
        if (prev > 0 && $1 - prev > gap) gap = $1 - prev
        if ($3 > lat) lat = $3
        n++
      }
      prev = $1
    }
    END {
      if (prev > 0 && e - prev > gap) gap = e - prev
      printf "%d msgs, longest gap %.0f ms, worst latency %.0f ms%s%s", n, gap * 1000, lat,
        eof ? ", DISCONNECTED" : "", err
    }' "$WORK/arrivals"
}

rss_mb() { awk -v b="$(rss_bytes "$SERVER_PID")" 'BEGIN { printf "%.1f", b / 1e6 }'; }

declare -A BROKEN=()
declare -A ATTACKS=()
broken() { BROKEN[$1]+="${BROKEN[$1]:+; }$2"; }

# attack PROMISE MODE ARGS...: one hostile.py mode against the server (niced, so that the
# bystander is not starved by its own machine), its lines with the bystander's longest gap.
attack() {
  local promise=$1 mode=$2 start end lines gap gap_ms line name rss_before
  shift 2
  rss_before=$(rss_mb)
  start=$(date +%s.%N)
  lines=$(timeout 120 nice -n 5 "$PYTHON" "$HOSTILE" "$mode" "$addr" "$@" 2>&1) ||
    lines+=$'\n'"$mode: hostile.py failed => BROKEN: no result"
  end=$(date +%s.%N)
  sleep 0.3 # the bystander writes its arrivals every 0.2 s
  gap=$(bystander_gap "$start" "$end")
  gap_ms=$(sed -n 's/.*longest gap \([0-9]*\) ms.*/\1/p' <<<"$gap")
  while IFS= read -r line; do
    [ -n "$line" ] || continue
    printf '[%s] %s | server RSS %s -> %s MB | bystander: %s\n' "$promise" "$line" "$rss_before" "$(rss_mb)" "$gap"
    name=${line%%:*}
    ATTACKS[$promise]=$((${ATTACKS[$promise]:-0} + 1))
    case "$line" in *"=> BROKEN"*) broken "$promise" "$name (${line##*=> BROKEN: })" ;; esac
  done <<<"$lines"
  if [ -n "$gap_ms" ] && [ "$gap_ms" -ge "$GAP_LIMIT_MS" ]; then
    broken "$promise" "$mode $1: bystander waited $gap_ms ms"
  fi
  case "$gap" in *DISCONNECTED*) broken "$promise" "$mode $1: the bystander was disconnected" ;; esac
}

# ---- the main server: tokens must carry aud and iss; tokens expire 2 s after exp ----
export FANOUT_AUDIENCE=$AUDIENCE FANOUT_ISSUER=$ISSUER
serve --auth-audience "$AUDIENCE" --auth-issuer "$ISSUER" --auth-expiry-grace-secs 2
start_bystander
echo "server $addr (pid $SERVER_PID, 2 workers, access control on, defaults otherwise): RSS $(rss_mb) MB with the bystander"

# P1: strangers streaming a request that never ends, on every protocol.
for kind in text binary ws ws-fragments http http-whole; do
  attack P1 stranger "$kind" "$OTHER_N" 3 "$SERVER_PID"
done
for kind in resp-bulk resp-args resp-query resp-inline resp-count; do
  attack P1 stranger "$kind" "$RESP_N" 3 "$SERVER_PID"
done
# The server's own account: the most unparsed input one connection held so far (only strangers
# have spoken yet besides the bystander). An HTTP head (up to 8 KiB) may precede a body.
held=$(curl -s -m 2 -H "Authorization: Bearer $(cat "$WORK/api-key")" "http://$addr/metrics" |
  awk '$1 == "fanout_input_high_water_bytes" { print $2 }')
line="input-high-water: the most unparsed input a connection held after the strangers: ${held:-?} bytes (budget $STRANGER_BUDGET, + 8 KiB for an HTTP head)"
if [ -n "$held" ] && [ "$held" -le $((STRANGER_BUDGET + 8192)) ]; then
  echo "[P1] $line => ok"
else
  echo "[P1] $line => BROKEN"
  broken P1 "input-high-water (${held:-?} bytes)"
fi
ATTACKS[P1]=$((${ATTACKS[P1]:-0} + 1))

# P2: after AUTH, commands past --max-query-bytes, and a million arguments in small writes.
attack P2 query-limit "$WORK/secret" "$AUTHED_N" 4 "$SERVER_PID"
attack P2 many-args "$WORK/secret" 1048576 "$SERVER_PID" "$QUERY_LIMIT"
attack P2 many-args "$WORK/secret" 150000 "$SERVER_PID" "$QUERY_LIMIT"

# P3, P4, P5 on the same server.
attack P3 broadcast "$WORK/secret" "$WORK/api-key" strangers
attack P3 broadcast "$WORK/secret" "$WORK/api-key" authenticated
attack P4 tokens "$WORK/secret"
attack P4 expiry "$WORK/secret" 2.5 2
attack P5 pubsub "$WORK/secret" "$WORK/api-key"

# P1 again: strangers that PING and never read. Last, since what they make the server allocate
# stays in its allocator; in rising order of cost, so that each one's RSS growth (a lower bound,
# the memory the one before left being reused) still shows.
for kind in http resp text binary ws; do
  attack P1 ping-flood "$kind" "$FLOOD_N" 3 "$SERVER_PID"
done
echo "server RSS at the end: $(rss_mb) MB; still serving: $(curl -s -m 2 "http://$addr/healthz" || echo no)"
stop_bystander
stop_server
unset FANOUT_AUDIENCE FANOUT_ISSUER

# P2: a million one-byte arguments that fit (--max-query-bytes 16 MiB) are parsed, not refused.
serve --max-query-bytes $((16 * 1024 * 1024))
start_bystander
attack P2 many-args "$WORK/secret" 1048576 "$SERVER_PID" $((16 * 1024 * 1024))
stop_bystander
stop_server

# P3: anonymous clients, with a grant that does not name `*` and with one that does.
serve --anonymous-sub comments
attack P3 broadcast "$WORK/secret" "$WORK/api-key" anonymous-comments
stop_server
serve --anonymous-sub comments --anonymous-sub '*'
attack P3 broadcast "$WORK/secret" "$WORK/api-key" anonymous-star
stop_server

echo
promises=(
  "P1 a stranger buffers a few KiB on every protocol, is told and closed alone; < +2 MiB RSS each, bystander gap < ${GAP_LIMIT_MS} ms"
  "P2 after AUTH a RESP command is bounded by --max-query-bytes and parsed in linear time"
  "P3 strangers (and anonymous clients without *) never hear a * broadcast; token holders do"
  "P4 PyJWT tokens: decimal exp expires, absurd exp / missing aud, iss / wildcard sub refused"
  "P5 PUBSUB CHANNELS/NUMSUB/NUMPAT reveal only what the caller may subscribe to"
)
failed=0
for promise in "${promises[@]}"; do
  p=${promise%% *}
  if [ -n "${BROKEN[$p]:-}" ]; then
    echo "FAIL $promise: ${BROKEN[$p]}"
    failed=1
  else
    echo "PASS $promise (${ATTACKS[$p]:-0} attacks)"
  fi
done
exit "$failed"
