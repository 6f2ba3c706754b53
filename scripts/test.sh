#!/usr/bin/env bash
# Runs every check and test of released-sidecar, installing missing system packages and
# test tools first (a test that still lacks its tool prints a SKIP line; under CI it fails).
# This is the README's test command and what CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh test
# oauth2-proxy, the npm packages and kubernetes-validate, into ignored directories.
if ! scripts/gateway-tools.sh; then
  if [ "${CI:-}" = true ]; then
    exit 1
  fi
  echo "==> scripts/gateway-tools.sh failed: the tests needing those tools print SKIP" >&2
fi

if cargo fmt --version >/dev/null 2>&1; then
  echo "==> cargo fmt --check"
  cargo fmt --all -- --check
else
  echo "==> rustfmt not installed: skipping the format check"
fi

if cargo clippy --version >/dev/null 2>&1; then
  echo "==> cargo clippy"
  cargo clippy --locked --all-targets -- -D warnings
else
  echo "==> clippy not installed: skipping lints"
fi

echo "==> cargo test"
cargo test --locked -- "$@"
