#!/usr/bin/env bash
# Runs the self-contained demo: a sample legacy page, a LOCAL STAND-IN for the Released
# token API (not the real service) and released-sidecar in front of the page, all on
# 127.0.0.1. Prints what to curl and what to expect. Ctrl+C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh
echo "==> building (first build takes a few minutes)"
cargo build --locked --bin released-sidecar --example demo
exec target/debug/examples/demo "$@"
