#!/usr/bin/env bash
# Kills a `fanout serve --data-dir --fsync always` N times (SIGKILL, at random moments between 10
# and 400 ms into each run) while an acknowledged publisher and two resuming subscribers run, and
# checks after every restart that each acknowledged message is retained exactly once in order, that
# no offset was ever given to two messages, and that each subscriber's stream has no duplicate and
# no gap the server did not announce (tests/crash_cycles.rs; `cargo test` runs 5 cycles).
#   scripts/crash-cycles.sh [N=100] [SEED]
set -euo pipefail
cd "$(dirname "$0")/.."
export CRASH_CYCLES=${1:-100}
[ -z "${2:-}" ] || export CRASH_SEED=$2
cargo test --test crash_cycles -- --nocapture 2>&1 | grep -E "crash cycles|panicked|test result|assert|left|right"
