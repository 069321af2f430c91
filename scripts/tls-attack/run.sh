#!/usr/bin/env bash
# An outside tester's hostile TLS clients, kept (they found the bugs fixed in issue 21): raw
# TLS records and ClientHellos (rawtls.py builds them), each against a fresh server with a CA of
# its own, printing what came back, which counters moved and whether a canary client beside it
# kept working. Figures and lines to read, not pass/fail.
#
#   scripts/tls-attack/run.sh                          # the quick ones
#   scripts/tls-attack/run.sh slowloris.py partial 500 12   # any one script, with its arguments
#
# Scripts: rawattacks.py (35 malformed inputs before the handshake), posths.py (garbage after
# it), rstcount.py (handshakes abandoned by reset), slowloris.py MODE N SECS (stalled
# handshakes), storm2.py tls|plain rst|fin THREADS SECS (subscribers churning under a publish
# stream: the queued-bytes gauge must come back), slowcons.py (TLS subscribers that never read),
# halfclose.py (close_notify, FIN, RST after a command).
set -euo pipefail
source "$(dirname "$0")/../common.sh"
build_fanout
bench_setup tls-attack
export WORK
export PORT
PORT=$(free_port)
make_test_certs "$WORK"
run() {
  "$FANOUT" serve --listen "127.0.0.1:$PORT" --no-pin --workers 2 --stats-interval-secs 0 \
    --tls-cert "$WORK/server.pem" --tls-key "$WORK/server.key" >"$WORK/server.log" 2>&1 &
  PIDS+=("$!")
  echo "$!" >"$WORK/server.pid"
  wait_for_port "$PORT"
  say "## $*"
  (cd "$(dirname "$0")" && /usr/bin/python3 "$@") 2>&1 | tee -a "$OUT"
  kill -0 "$(cat "$WORK/server.pid")" || say "THE SERVER DIED"
  stop_all
}
if [ $# -gt 0 ]; then
  run "$@"
else
  run rawattacks.py
  run posths.py
  run rstcount.py
  run storm2.py tls rst 1 10
fi
