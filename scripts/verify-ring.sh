#!/usr/bin/env bash
# The broadcast ring under the two checkers a stress test cannot replace:
#   - loom (`--cfg loom`): every interleaving of the claim/publish/read/release protocol, within a
#     preemption bound of 3, on a ring small enough to wrap (src/server/ring.rs, `loom_model`);
#   - Miri: the ring's unit tests, the stress test included (smaller under cfg(miri)), checked for
#     undefined behaviour, data races and leaks.
# Each builds in its own target directory so that the ordinary build cache stays warm.
# Miri needs the nightly toolchain's miri and rust-src components; they are added when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== loom model of the ring"
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test --release --lib loom_model
echo "== Miri on the ring's tests"
if ! cargo +nightly miri --version >/dev/null 2>&1; then
  rustup component add miri rust-src --toolchain nightly
fi
MIRIFLAGS="${MIRIFLAGS:--Zmiri-strict-provenance}" cargo +nightly miri test --lib server::ring
