#!/usr/bin/env bash
# Runs the concurrency tests (many threads on one WLD slot, C_Finalize
# racing with calls in flight) under valgrind's memcheck:
# `bash scripts/valgrind.sh [SECONDS]`, 3 seconds of stress by default.
# Fails when valgrind reports an error (an invalid read or write, a use of
# uninitialized memory) or a block definitely lost, in p11wld or in the
# vendor modules it loads. The p11-kit server processes are not traced.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
seconds="${1:-3}"
test_binary=$(cargo test --test concurrency --no-run --message-format=json |
    python3 -c 'import json, sys
for line in sys.stdin:
    message = json.loads(line)
    if message.get("executable") and message["target"]["name"] == "concurrency":
        print(message["executable"])')
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT

P11WLD_STRESS_SECONDS=$seconds valgrind --tool=memcheck --fair-sched=yes --leak-check=full \
    --errors-for-leak-kinds=definite --trace-children=yes \
    --trace-children-skip='*p11-kit*' --log-file="$logs/valgrind.%p.log" \
    "$test_binary" --exact stress_one_wld_slot finalize_races_calls_in_flight --nocapture

status=0
checked=0
for log in "$logs"/valgrind.*.log; do
    # A process that replaced itself with an untraced program (the fixture
    # starting a p11-kit server) ends its log without a summary.
    grep -q "ERROR SUMMARY" "$log" || continue
    checked=$((checked + 1))
    if ! grep -q "ERROR SUMMARY: 0 errors" "$log"; then
        cat "$log" >&2
        status=1
    fi
done
if ((status != 0)); then
    echo "valgrind.sh: valgrind reported errors or leaks (logs above)" >&2
    exit 1
fi
echo "valgrind.sh: no error and no definitely lost block in $checked processes"
