#!/usr/bin/env bash
# Coverage-guided fuzzing of every decoder a client or a disk can feed (fuzz/fuzz_targets): the
# text and binary formats, HTTP heads, WebSocket frames (split feeds), JSON commands, SSE/long-poll
# parameters and the history segment reader. Each target runs SECONDS (default 60) from its seeds
# (fuzz/seeds/TARGET, hand-made examples of every command) plus the corpus of earlier runs, then a
# table of executions and crashes per target is printed. Exit status 1 if any target crashed (its
# input is saved under fuzz/artifacts/TARGET).
#   scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
shift || true
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz
cargo +nightly fuzz build >/dev/null 2>&1 || cargo +nightly fuzz build
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo +nightly fuzz list)
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
failed=0
printf '%-10s %14s %10s %8s %8s\n' target executions "execs/s" corpus crashes
for target in "${targets[@]}"; do
  corpus=fuzz/corpus/$target
  mkdir -p "$corpus" "fuzz/artifacts/$target"
  cp -n fuzz/seeds/"$target"/* "$corpus"/ 2>/dev/null || true
  before=$(find "fuzz/artifacts/$target" -type f | wc -l)
  status=0
  cargo +nightly fuzz run "$target" "$corpus" -- -max_total_time="$seconds" -print_final_stats=1 \
    -rss_limit_mb=2048 >"$logs/$target" 2>&1 || status=$?
  execs=$(awk '/stat::number_of_executed_units/ {print $2}' "$logs/$target" | tail -n1)
  rate=$(awk '/stat::average_exec_per_sec/ {print $2}' "$logs/$target" | tail -n1)
  crashes=$(( $(find "fuzz/artifacts/$target" -type f | wc -l) - before ))
  size=$(find "$corpus" -type f | wc -l)
  printf '%-10s %14s %10s %8s %8s\n' "$target" "${execs:-?}" "${rate:-?}" "$size" "$crashes"
  if [ "$status" -ne 0 ] || [ "$crashes" -gt 0 ]; then
    failed=1
    echo "  $target failed (status $status); the end of its log:" >&2
    tail -n 30 "$logs/$target" >&2
  fi
done
exit $failed
