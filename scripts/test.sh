#!/usr/bin/env bash
# Runs every test of the workspace: installs the Debian packages that the
# tests need (scripts/setup-debian.sh), then `cargo test --workspace`.
# Arguments are passed on to cargo test, for example `bash scripts/test.sh -- --nocapture`.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup-debian.sh
cargo test --workspace "$@"
