#!/usr/bin/env bash
# The broadcast ring under the two checkers a stress test cannot replace:
#   - loom (`--cfg loom`): every interleaving of the claim/publish/read/release protocol, within a
#     preemption bound of 3, on a ring small enough to wrap (src/server/ring.rs, `loom_model`);
#   - Miri: the ring's unit tests, the stress test included (smaller under cfg(miri)), checked for
#     undefined behaviour, data races and leaks.
# Both check the ring as a crate of its own (scripts/verify-ring/Cargo.toml: ring.rs is std
# only), so neither builds the server's dependencies again under its flags; each has its own
# target directory so that the ordinary build cache stays warm.
# Miri needs the nightly toolchain's miri and rust-src components; they are added when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== loom model of the ring"
RING=scripts/verify-ring/Cargo.toml
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test --release --manifest-path "$RING" loom_model
echo "== Miri on the ring's tests"
if ! cargo +nightly miri --version >/dev/null 2>&1; then
  rustup component add miri rust-src --toolchain nightly
fi
MIRIFLAGS="${MIRIFLAGS:--Zmiri-strict-provenance}" CARGO_TARGET_DIR=target/verify-ring \
  cargo +nightly miri test --manifest-path "$RING"
