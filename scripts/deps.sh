#!/usr/bin/env bash
# Installs the system packages released-sidecar needs on Debian/Ubuntu, only when missing.
#   scripts/deps.sh          build: cmake and a C compiler (pingora's zlib-ng is C)
#   scripts/deps.sh test     + systemd-analyze (unit checks), promtool (metrics lint), curl,
#                              nginx-light and chromium (gateway tests), python3-venv
#                              (kubernetes-validate); scripts/gateway-tools.sh does the rest
#   scripts/deps.sh bench    + nginx-light and wrk (load benchmark)
set -euo pipefail

want=()
# need TOOL PACKAGE: install PACKAGE unless TOOL is on PATH (or in /usr/sbin, which a
# non-root PATH may lack).
need() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || want+=("$2"); }

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
    need nginx nginx-light
    need chromium chromium
    need python3 python3
    need curl curl
    if command -v python3 >/dev/null 2>&1 && ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
      want+=(python3-venv)
    fi
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
# Every package is required: under CI a test whose tool is missing fails.
"${sudo[@]}" apt-get install -y -q --no-install-recommends "${want[@]}"
