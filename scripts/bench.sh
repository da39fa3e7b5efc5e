#!/usr/bin/env bash
# Runs the p11bench benchmarks (benches/p11bench) and prints the figures as
# Markdown on stdout, progress on stderr. Builds the release module and the
# fault-injection latency module first.
#
#   bash scripts/bench.sh                  # everything, about 10 minutes
#   bash scripts/bench.sh throughput --rounds 7 --ops ecdsa,rsa
#   bash scripts/bench.sh --help           # commands and options
#
# Needs SoftHSM2 (and valgrind for the callgrind figures); see
# scripts/setup-debian.sh.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build --release --lib --example fault_latency
exec cargo bench --bench p11bench -- "$@"
