#!/usr/bin/env bash
# Counts the instructions that p11wld adds to each PKCS#11 call, under
# valgrind's callgrind, through a WLD slot over SoftHSM2. The figure does
# not depend on how busy the machine is. The callgrind output files stay in
# target/callgrind for callgrind_annotate.
#
#   bash scripts/callgrind.sh              # every operation
#   bash scripts/callgrind.sh --scale 2    # twice the iterations
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
if ! command -v valgrind >/dev/null; then
    echo "callgrind.sh: valgrind not found; install it with apt-get install valgrind" >&2
    exit 1
fi
cargo build --release --lib
exec cargo bench --bench p11bench -- callgrind "$@"
