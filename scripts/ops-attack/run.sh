#!/bin/sh
# The outside tester's black-box attacks on --config, SIGHUP reload and namespaces (issue 22),
# kept as they wrote them: every promise of the README's "A config file, and reloading it" and
# "Namespaces" sections, and the security property that no client without a token ever hears a
# channel its namespace closes (text, binary, WebSocket, SSE, long-poll, RESP, wildcards). One
# light server at a time, ~80 s. Exits non-zero on a broken promise; WARN lines are remarks.
#   scripts/ops-attack/run.sh        (FANOUT_BIN=/path/to/fanout to test another binary)
set -u
cd "$(dirname "$0")"
ROOT=$(cd ../.. && pwd)
if [ -z "${FANOUT_BIN:-}" ]; then
  (cd "$ROOT" && cargo build --release --quiet) || exit 2
  export FANOUT_BIN="$ROOT/target/release/fanout"
fi
PY=/usr/bin/python3
$PY -c 'import jwt' 2>/dev/null || { echo "need PyJWT: apt-get install -y python3-jwt"; exit 2; }
mkdir -p work
fail=0
for t in test_config.py test_reload.py test_reload_keys.py test_reload_tls.py test_reload_pubkey.py \
         test_ns_options.py test_ns_security.py test_ns_tricks.py test_open_mode.py; do
  echo "===================== $t"
  timeout 300 $PY "$t" > "work/$t.out" 2>&1; rc=$?
  grep -E '^ *(FAIL|WARN) ' "work/$t.out"
  grep -E "passed, .* failed" "work/$t.out"
  [ $rc -ne 0 ] && { echo "  -> $t: BROKEN PROMISE(S) (rc=$rc, full output work/$t.out)"; fail=1; }
done
exit $fail
