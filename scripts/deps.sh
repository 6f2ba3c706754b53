#!/usr/bin/env bash
# Installs the system packages released-sidecar needs on Debian/Ubuntu, only when missing.
#   scripts/deps.sh          build: cmake and a C compiler (pingora's zlib-ng is C)
#   scripts/deps.sh test     + systemd-analyze (unit checks) and promtool (metrics lint)
#   scripts/deps.sh bench    + nginx-light and wrk (load benchmark)
set -euo pipefail

want=()
need() { command -v "$1" >/dev/null 2>&1 || want+=("$2"); }

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install Rust first (https://rustup.rs)" >&2
  exit 1
fi
need cmake cmake
need cc gcc
need make make
case "${1:-}" in
  test)
    need systemd-analyze systemd
    need promtool prometheus
    ;;
  bench)
    need nginx nginx-light
    need wrk wrk
    ;;
esac

if ((${#want[@]} == 0)); then
  exit 0
fi

echo "==> installing missing packages: ${want[*]}"
sudo=()
if [ "$(id -u)" -ne 0 ]; then
  if ! command -v sudo >/dev/null 2>&1; then
    echo "need root (or sudo) to install: ${want[*]}" >&2
    exit 1
  fi
  sudo=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -q
# prometheus is only wanted for promtool; a failed install of it is not fatal.
optional=(prometheus)
required=()
for p in "${want[@]}"; do
  [[ " ${optional[*]} " == *" $p "* ]] || required+=("$p")
done
if ((${#required[@]})); then
  "${sudo[@]}" apt-get install -y -q --no-install-recommends "${required[@]}"
fi
for p in "${want[@]}"; do
  if [[ " ${optional[*]} " == *" $p "* ]]; then
    "${sudo[@]}" apt-get install -y -q --no-install-recommends "$p" ||
      echo "==> optional package $p could not be installed; the tests that use it are skipped" >&2
  fi
done
