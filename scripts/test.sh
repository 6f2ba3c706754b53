#!/usr/bin/env bash
# Runs every check and test of released-sidecar, installing missing system packages first.
# This is the README's test command and what CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh test

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
