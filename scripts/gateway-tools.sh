#!/usr/bin/env bash
# Provisions the tools the gateway and deployment tests drive, into ignored directories so
# reruns are fast (each step is skipped when its result is already there):
#   target/tools/bin/oauth2-proxy       go install github.com/oauth2-proxy/oauth2-proxy/v7@$OAUTH2_PROXY_VERSION
#   target/tools/bin/caddy              go install github.com/caddyserver/caddy/v2/cmd/caddy@$CADDY_VERSION
#   tests/gateway/node_modules          npm ci (oauth2-mock-server, playwright-core; pinned in package-lock.json)
#   target/tools/venv                   kubernetes-validate (pinned in scripts/kubernetes-validate.txt; ships its schemas)
#   target/tools/html5lib-tests         the html5lib-tests tokenizer corpus (*.test), from the html5lib 1.1
#                                       sdist on PyPI, pinned by sha256 (tests/rewrite_html5lib.rs)
# Needs Go (>= 1.26: the go.mod of oauth2-proxy v7.15.6 and of Caddy v2.11.9 say so), Node.js (>= 20.19, with npm)
# and python3 with venv. System packages (nginx-light, chromium, ...) come from
# scripts/deps.sh test.
set -euo pipefail
cd "$(dirname "$0")/.."

OAUTH2_PROXY_VERSION=v7.15.6
CADDY_VERSION=v2.11.9
tools=target/tools
mkdir -p "$tools/bin"

# The official Go tarball installs to /usr/local/go, which a non-login shell may not have
# on PATH.
if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
  export PATH="$PATH:/usr/local/go/bin"
fi
missing=()
for tool in go node npm python3; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]})); then
  echo "scripts/gateway-tools.sh: not installed: ${missing[*]} (Go >= 1.26, Node.js >= 20.19, python3)" >&2
  exit 1
fi

# The module version Go recorded in a binary (`go version -m`): a `go install` build's own
# `--version` says "undefined", so this is the only trustworthy version line.
module_version() {
  go version -m "$1" 2>/dev/null | awk '$1 == "mod" {print $2, $3}'
}

# Builds `package@version` into $tools/bin unless the binary there already records
# `module version`. The Go module proxy serves the sources; after `cargo clean` (which
# removes target/tools) Go's own module and build caches make the rebuild quick.
go_tool() {
  local name=$1 module=$2 package=$3 version=$4
  local bin="$tools/bin/$name"
  if [ "$(module_version "$bin")" != "$module $version" ]; then
    echo "==> building $name $version (first time: a few minutes)"
    GOBIN="$PWD/$tools/bin" GOFLAGS=-buildvcs=false go install "$package@$version"
  fi
  echo "==> $name $(module_version "$bin")"
}

go_tool oauth2-proxy github.com/oauth2-proxy/oauth2-proxy/v7 \
  github.com/oauth2-proxy/oauth2-proxy/v7 "$OAUTH2_PROXY_VERSION"
# Caddy for the forward_auth topology of tests/gateway.rs.
go_tool caddy github.com/caddyserver/caddy/v2 \
  github.com/caddyserver/caddy/v2/cmd/caddy "$CADDY_VERSION"

# npm ci wipes node_modules; only run it when the lockfile changed since the last install.
stamp=tests/gateway/node_modules/.package-lock.json
if [ ! -f "$stamp" ] || [ tests/gateway/package-lock.json -nt "$stamp" ]; then
  echo "==> npm ci (tests/gateway)"
  (cd tests/gateway && npm ci --no-audit --no-fund --loglevel=error)
fi

venv="$tools/venv"
if ! "$venv/bin/kubernetes-validate" --version >/dev/null 2>&1 ||
  [ scripts/kubernetes-validate.txt -nt "$venv/bin/kubernetes-validate" ]; then
  echo "==> kubernetes-validate into $venv"
  # --clear: a venv that no longer runs (a moved checkout) is rebuilt, not patched.
  python3 -m venv --clear "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r scripts/kubernetes-validate.txt
  touch "$venv/bin/kubernetes-validate"
fi
echo "==> kubernetes-validate $("$venv/bin/kubernetes-validate" --version 2>&1 | tail -n1)"

# The tokenizer corpus ships inside the html5lib sdist; only its tokenizer/*.test files are
# kept. Pinned by hash, so a changed file on PyPI fails here instead of in the tests.
HTML5LIB_URL=https://files.pythonhosted.org/packages/ac/b6/b55c3f49042f1df3dcd422b7f224f939892ee94f22abcf503a9b7339eaf2/html5lib-1.1.tar.gz
HTML5LIB_SHA256=b2e5b40261e20f354d198eae92afc10d750afb487ed5e50f9c4eaf07c184146f
corpus="$tools/html5lib-tests"
if [ ! -f "$corpus/.sha256" ] || [ "$(cat "$corpus/.sha256")" != "$HTML5LIB_SHA256" ]; then
  echo "==> html5lib-tests tokenizer corpus into $corpus"
  tmp=$(mktemp -d)
  curl -sSfL -o "$tmp/html5lib.tar.gz" "$HTML5LIB_URL"
  echo "$HTML5LIB_SHA256  $tmp/html5lib.tar.gz" | sha256sum -c --quiet -
  tar -xzf "$tmp/html5lib.tar.gz" -C "$tmp" html5lib-1.1/html5lib/tests/testdata/tokenizer
  rm -rf "$corpus"
  mkdir -p "$corpus"
  mv "$tmp/html5lib-1.1/html5lib/tests/testdata/tokenizer" "$corpus/tokenizer"
  echo "$HTML5LIB_SHA256" >"$corpus/.sha256"
  rm -rf "$tmp"
fi
echo "==> html5lib-tests tokenizer corpus: $(ls "$corpus/tokenizer"/*.test | wc -l) files"
