#!/usr/bin/env bash
# Runs the fuzz target caller_memory (fuzz/) for a bounded time, for CI:
# `bash scripts/fuzz.sh [SECONDS]`, 90 seconds by default.
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`);
# fails when either is missing rather than skipping the run.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../fuzz"
seconds="${1:-90}"
if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz.sh: the nightly toolchain is missing (rustup toolchain install nightly)" >&2
    exit 1
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: cargo-fuzz is missing (cargo install cargo-fuzz)" >&2
    exit 1
fi
cargo +nightly fuzz run caller_memory -- -max_total_time="$seconds"
