#!/usr/bin/env bash
# Runs the concurrency tests (stress on one WLD slot, C_Finalize racing with
# calls in flight) with the module and the test built under ThreadSanitizer:
# `bash scripts/tsan.sh [SECONDS]`, 10 seconds of stress by default.
#
# Needs the nightly toolchain with its rust-src component, because the
# standard library is rebuilt with the sanitizer (-Zbuild-std). The vendor
# modules (SoftHSM2, p11-kit-client.so) are not instrumented, so races
# inside them are not seen; every access of p11wld's own state is. The test
# executable exports the sanitizer runtime (--export-dynamic) for the module
# that it loads with dlopen, and p11wld loads vendors without RTLD_DEEPBIND
# when it finds that runtime in the process.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
seconds="${1:-10}"
target_dir="${TSAN_TARGET_DIR:-target/tsan}"
triple=x86_64-unknown-linux-gnu
if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "tsan.sh: the nightly toolchain is missing (rustup toolchain install nightly)" >&2
    exit 1
fi

export CARGO_TARGET_DIR=$target_dir
export RUSTFLAGS="-Zsanitizer=thread -Clink-arg=-Wl,--export-dynamic"
test_binary=$(cargo +nightly test -Zbuild-std --target "$triple" --test concurrency --no-run \
    --message-format=json |
    python3 -c 'import json, sys
for line in sys.stdin:
    message = json.loads(line)
    if message.get("executable") and message["target"]["name"] == "concurrency":
        print(message["executable"])')
module=$target_dir/$triple/debug/deps/libp11wld.so
log=$(mktemp)
trap 'rm -f "$log"' EXIT

# ThreadSanitizer needs the address space layout without randomization on
# kernels with high mmap entropy.
P11WLD_TEST_MODULE=$module P11WLD_STRESS_SECONDS=$seconds \
    TSAN_OPTIONS="halt_on_error=0 report_signal_unsafe=0" \
    setarch -R "$test_binary" --nocapture stress_one_wld_slot finalize_races 2>&1 | tee "$log"
reports=$(grep -c "WARNING: ThreadSanitizer" "$log" || true)
if ((reports > 0)); then
    echo "tsan.sh: ThreadSanitizer reported $reports data races" >&2
    exit 1
fi
echo "tsan.sh: no data race reported"
