#!/usr/bin/env bash
# Packs everything benches/load/device.sh needs into one directory, for a machine that has
# no network, no nginx, no wrk, no Rust and no python3:
#
#   benches/load/bundle.sh [DIR]      # DIR defaults to target/benchkit (ignored by git)
#
#   DIR/bin/NAME   runs NAME (nginx, wrk, curl, taskset, released-sidecar, bare_proxy,
#                  lean_proxy) through the bundled dynamic loader with the bundled shared
#                  libraries
#   DIR/www/       the origin's files (data.json, app.js, page.html), generated here
#
# It builds the release sidecar, examples/bare_proxy.rs and examples/lean_proxy.rs (or takes
# SIDECAR_BIN, BARE_BIN, LEAN_BIN), installs nginx and wrk here if missing (scripts/deps.sh
# bench) and strips the copies. With SIDECAR_B_BIN (another sidecar build, e.g. the one
# before a change) it also packs that as DIR/bin/released-sidecar-b, which device.sh then
# runs as the A/B target "sidecar-b".
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$REPO"
DIR=${1:-target/benchkit}
TARGET_DIR=${CARGO_TARGET_DIR:-target}

"$REPO/scripts/deps.sh" bench
if [ -z "${SIDECAR_BIN:-}" ] || [ -z "${BARE_BIN:-}" ] || [ -z "${LEAN_BIN:-}" ]; then
  cargo build --release --locked --bin released-sidecar --example bare_proxy --example lean_proxy
fi
SIDECAR_BIN=${SIDECAR_BIN:-$TARGET_DIR/release/released-sidecar}
BARE_BIN=${BARE_BIN:-$TARGET_DIR/release/examples/bare_proxy}
LEAN_BIN=${LEAN_BIN:-$TARGET_DIR/release/examples/lean_proxy}

rm -rf "$DIR"
mkdir -p "$DIR/lib" "$DIR/real" "$DIR/bin" "$DIR/www"
# The same packing as /work/shared/tools/bundle-binaries.sh: each program with every
# shared library ldd names, started through the bundled loader.
for prog in nginx wrk curl taskset "$SIDECAR_BIN" "$BARE_BIN" "$LEAN_BIN" ${SIDECAR_B_BIN:+"$SIDECAR_B_BIN"}; do
  path=$(command -v "$prog" || echo "$prog")
  [ -x "$path" ] || { echo "not an executable: $prog" >&2; exit 1; }
  name=$(basename "$path")
  # The B build is another released-sidecar: it needs a name of its own.
  [ "$prog" = "${SIDECAR_B_BIN:-}" ] && name=released-sidecar-b
  cp -L "$path" "$DIR/real/$name"
  strip "$DIR/real/$name" 2>/dev/null || true
  ldd "$path" | awk '/=>/ { print $3 } /ld-linux/ { print $1 }' | while read -r lib; do
    if [ -f "$lib" ]; then cp -Ln "$lib" "$DIR/lib/" 2>/dev/null || true; fi
  done
  cat >"$DIR/bin/$name" <<W
#!/bin/sh
D=\$(cd "\$(dirname "\$0")/.." && pwd)
exec "\$D/lib/ld-linux-x86-64.so.2" --library-path "\$D/lib" "\$D/real/$name" "\$@"
W
  chmod +x "$DIR/bin/$name"
done
python3 "$REPO/benches/load/backend.py" gen "$DIR/www" 0
rm -f "$DIR/www/big.html"
echo "bundled into $DIR: $(ls "$DIR/bin" | tr '\n' ' ')($(du -sh "$DIR" | cut -f1))"
