#!/usr/bin/env bash
# Runs the self-contained demo: a sample legacy page, a LOCAL STAND-IN for the Released
# token API (not the real service) and released-sidecar in front of the page, all on
# 127.0.0.1. Prints what to curl and what to expect. Ctrl+C (or SIGTERM, SIGHUP) stops
# everything and removes the demo's temporary directory (its config and secret file).
#   scripts/demo.sh --once   one checked page load, then stop and clean up (exit 0 if the
#                            token was injected)
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh
echo "==> building (first build takes a few minutes)"
cargo build --locked --bin released-sidecar --example demo
# exec: the demo itself receives the signals and cleans up.
exec "${CARGO_TARGET_DIR:-target}/debug/examples/demo" "$@"
