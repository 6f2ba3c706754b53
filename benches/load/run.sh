#!/usr/bin/env bash
# Load benchmark: released-sidecar against nginx doing the same job, against a bare
# pingora proxy (the framework floor) and against a lean loop on pingora-core (what the
# floor could be), all on 127.0.0.1.
#
#   benches/load/run.sh                        # ~7 minutes at the defaults (+ first build)
#   benches/load/run.sh --workers 2            # every proxy gets 2 workers on 2 pinned cores
#   DURATION=5 ROUNDS=1 benches/load/run.sh    # quick look, ~2 minutes
#   PROFILE=1 benches/load/run.sh              # also perf-record the sidecar (see README)
#   BENCHKIT=target/benchkit benches/load/run.sh   # bundled binaries, no build, no network
#
# What runs (every process started here is killed by its PID on exit; nothing listens
# or connects outside 127.0.0.1):
#   origin   nginx (WORKERS workers): /data.json (1 KB), /app.js (10 KB), /page.html (100 KB,
#            one <released-page>), /big.html (BIG_MB MiB), and /slow/ proxied to the slow
#            app; plus a second server that stands in for the Released token API and answers
#            at once: POST /auth/api/impersonation/token -> "tok-bench-…" (JSON), and
#            GET /auth-token -> 204 + X-Token (for nginx auth_request).
#   slow     benches/load/backend.py: page and token API each answering after 100 ms.
#   sidecar  the release build, `workers: WORKERS`, identity from X-Forwarded-User/-Email.
#   bare     examples/bare_proxy.rs: pingora's minimal ProxyHttp, same pingora build and
#            server knobs (threads, work_stealing, keep-alive pool) as the sidecar.
#   bare-lean  the same bare_proxy, `--loop lean`: its ProxyHttp impl driven by the
#            sidecar's HTTP/1 request loop (src/edge/h1) instead of pingora-proxy's HttpProxy.
#   lean     examples/lean_proxy.rs: the same job and knobs on pingora-core's HTTP/1
#            session without pingora-proxy (issue 24's prototype).
#   nginx-A  passthrough proxy (upstream keepalive = connections, HTTP/1.1).
#   nginx-B  the same plus auth_request to the token stand-in and sub_filter writing
#            auth-token="$tok" into the three embed tags (nginx's best effort at the job).
# The proxies run on the first WORKERS allowed cores (taskset); wrk, the origin, the token
# stand-in and the slow app on the others (when there are none left, everything shares).
#
# Options: --workers N  (or WORKERS=N) workers per proxy [1]
# Environment (defaults in brackets):
#   DURATION [10]  seconds per wrk run      ROUNDS [3]    interleaved rounds per target
#   WARMUP [2]     seconds, not recorded    CONNS [32 x WORKERS]  wrk connections
#   WRK_THREADS [WORKERS]                   ORIGIN_WORKERS [WORKERS]
#   SLOW_CONNS [4] for slow-100ms           BIG_MB [256]  size of the big page, MiB (0: no
#                                                         memory part)
#   SCENARIOS ["pass-1k-json pass-10k-js rewrite-100k slow-100ms"]; pass-100k-html is
#                  also available (the page without page-load headers: no token, no rewrite)
#   SIDECAR_LOG [warn]  RUST_LOG of the sidecar: no access log, like nginx's access_log off
#   SIDECAR_BIN, BARE_BIN, LEAN_BIN   use these binaries instead of building them
#   BARE_ARGS, LEAN_ARGS   extra bare_proxy / lean_proxy flags, e.g. "--work-stealing true"
#                  (BARE_ARGS applies to bare and bare-lean)
#   A/B in the same run: SIDECAR_B_BIN and/or SIDECAR_B_YAML (lines appended to its config)
#                  add a target "sidecar-b"; BARE_B_ARGS adds "bare-b".
#   BENCHKIT       a directory from benches/load/bundle.sh: bin/{nginx,wrk,curl,taskset,
#                  released-sidecar,bare_proxy,lean_proxy} and www/; nothing is installed or built,
#                  python3 is not needed (no slow-100ms, no memory part)
#   PROFILE [0]    1: perf record the sidecar under the rewrite and 1 KB passthrough loads
#   RESULTS_DIR [<cargo target dir>/bench-load/<timestamp>]   KEEP [0] 1: keep the temp dir
# Run time ~ sum over scenarios of targets x (ROUNDS x DURATION + WARMUP) + ~20 s.
set -euo pipefail

WORKERS=${WORKERS:-1}
while (($#)); do
  case $1 in
    --workers) WORKERS=${2:?--workers needs a number}; shift 2 ;;
    --workers=*) WORKERS=${1#*=}; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
    *) printf 'unknown option %s (see --help)\n' "$1" >&2; exit 2 ;;
  esac
done
[[ "$WORKERS" =~ ^[1-9][0-9]*$ ]] || { echo "--workers wants a whole number above 0" >&2; exit 2; }
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-$((32 * WORKERS))}
WRK_THREADS=${WRK_THREADS:-$WORKERS}
ORIGIN_WORKERS=${ORIGIN_WORKERS:-$WORKERS}
SLOW_CONNS=${SLOW_CONNS:-4}
BIG_MB=${BIG_MB:-256}
SIDECAR_LOG=${SIDECAR_LOG:-warn}
PROFILE=${PROFILE:-0}
SCENARIOS=${SCENARIOS:-pass-1k-json pass-10k-js rewrite-100k slow-100ms}
KEEP=${KEEP:-0}
BARE_ARGS=${BARE_ARGS:-}
BARE_B_ARGS=${BARE_B_ARGS:-}
LEAN_ARGS=${LEAN_ARGS:-}
SIDECAR_B_YAML=${SIDECAR_B_YAML:-}
BENCHKIT=${BENCHKIT:-}
SLOW_DELAY_MS=100
TOKEN="tok-bench-instant-0123456789abcdef"
SECRET="bench-shared-secret-not-a-real-one"

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE="$REPO/benches/load"
cd "$REPO"

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- tools and build
TARGET_DIR=${CARGO_TARGET_DIR:-target}
[[ "$TARGET_DIR" = /* ]] || TARGET_DIR="$REPO/$TARGET_DIR"
if [ -n "$BENCHKIT" ]; then
  [[ "$BENCHKIT" = /* ]] || BENCHKIT="$REPO/$BENCHKIT"
  [ -f "$BENCHKIT/www/page.html" ] || die "$BENCHKIT is not a bundle (benches/load/bundle.sh)"
  NGINX="$BENCHKIT/bin/nginx"
  WRK="$BENCHKIT/bin/wrk"
  CURL_BIN="$BENCHKIT/bin/curl"
  TASKSET="$BENCHKIT/bin/taskset"
  SIDECAR_BIN=${SIDECAR_BIN:-$BENCHKIT/bin/released-sidecar}
  BARE_BIN=${BARE_BIN:-$BENCHKIT/bin/bare_proxy}
  LEAN_BIN=${LEAN_BIN:-$BENCHKIT/bin/lean_proxy}
  PYTHON=""
  BIG_MB=0
else
  "$REPO/scripts/deps.sh" bench
  if ! command -v python3 >/dev/null 2>&1; then
    say "installing python3 (the slow backend and the page generator)"
    sudo=(); [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q --no-install-recommends python3
  fi
  for tool in nginx wrk curl python3 taskset; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is missing"
  done
  NGINX=$(command -v nginx)
  WRK=$(command -v wrk)
  CURL_BIN=$(command -v curl)
  TASKSET=$(command -v taskset)
  PYTHON=$(command -v python3)
  if [ -z "${SIDECAR_BIN:-}" ] || [ -z "${BARE_BIN:-}" ] || [ -z "${LEAN_BIN:-}" ]; then
    say "building the sidecar, the bare pingora proxy and the lean loop (release)"
    cargo build --release --locked --bin released-sidecar --example bare_proxy --example lean_proxy
  fi
  SIDECAR_BIN=${SIDECAR_BIN:-$TARGET_DIR/release/released-sidecar}
  BARE_BIN=${BARE_BIN:-$TARGET_DIR/release/examples/bare_proxy}
  LEAN_BIN=${LEAN_BIN:-$TARGET_DIR/release/examples/lean_proxy}
fi
for bin in "$NGINX" "$WRK" "$CURL_BIN" "$TASKSET" "$SIDECAR_BIN" "$BARE_BIN" "$LEAN_BIN" ${SIDECAR_B_BIN:+"$SIDECAR_B_BIN"}; do
  [ -x "$bin" ] || die "not an executable: $bin"
done
if [ -z "$PYTHON" ]; then
  for scn in slow-100ms; do
    [[ " $SCENARIOS " == *" $scn "* ]] && die "$scn needs python3 (benches/load/backend.py)"
  done
fi
SIDECAR_B=0
[ -n "${SIDECAR_B_BIN:-}$SIDECAR_B_YAML" ] && SIDECAR_B=1
SIDECAR_B_BIN=${SIDECAR_B_BIN:-$SIDECAR_BIN}

# ---------------------------------------------------------------- cores
# The allowed cores, in order; the proxies get the first WORKERS, the load the rest.
CPUS=()
IFS=, read -ra ranges < <(awk '/^Cpus_allowed_list:/ { print $2 }' /proc/self/status)
for r in "${ranges[@]}"; do
  if [[ "$r" == *-* ]]; then
    for ((c = ${r%-*}; c <= ${r#*-}; c++)); do CPUS+=("$c"); done
  else
    CPUS+=("$r")
  fi
done
join_cpus() { local IFS=,; echo "$*"; }
if ((WORKERS < ${#CPUS[@]})); then
  PROXY_CPUS=$(join_cpus "${CPUS[@]:0:WORKERS}")
  LOAD_CPUS=$(join_cpus "${CPUS[@]:WORKERS}")
else
  PROXY_CPUS=$(join_cpus "${CPUS[@]:0:WORKERS}")
  LOAD_CPUS=$(join_cpus "${CPUS[@]}")
  say "only ${#CPUS[@]} cores for $WORKERS proxy workers: wrk and the origin share them"
fi
# Prefixes, not functions: a function started with `&` runs in a subshell, and $! would be
# that subshell's PID instead of the program's (taskset execs it, keeping its own PID).
ON_PROXY_CPUS=("$TASKSET" -c "$PROXY_CPUS")
ON_LOAD_CPUS=("$TASKSET" -c "$LOAD_CPUS")

# From here on nothing may leave the machine: no proxy may capture loopback traffic
# (curl and the sidecar's token client both honour these variables).
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY no_proxy NO_PROXY

LOADAVG_START=$(cut -d' ' -f1-3 /proc/loadavg)
RESULTS_DIR=${RESULTS_DIR:-$TARGET_DIR/bench-load/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$RESULTS_DIR"
WORK=$(mktemp -d -t released-bench.XXXXXX)
# nginx workers drop privileges when started as root: they must read the files.
chmod 755 "$WORK"

PIDS=()
cleanup() {
  local status=$?
  for pid in "${PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  if [ "$KEEP" = 1 ]; then
    say "temp dir kept: $WORK"
  else
    rm -rf "$WORK"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- ports
# Listening ports are picked below the kernel's ephemeral range, so that no outgoing
# connection of the run can take one before the process that needs it listens.
read -r EPHEMERAL_LOW _ </proc/sys/net/ipv4/ip_local_port_range
PORT_LOW=10000
PORT_SPAN=$((EPHEMERAL_LOW - PORT_LOW))
((PORT_SPAN >= 1000)) || { PORT_LOW=61000; PORT_SPAN=4000; }
USED_PORTS=" "
pick_port() { # VAR: sets VAR to a free loopback port not handed out before
  local p
  for _ in $(seq 1 200); do
    p=$((PORT_LOW + RANDOM % PORT_SPAN))
    [[ "$USED_PORTS" == *" $p "* ]] && continue
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      USED_PORTS+="$p "
      printf -v "$1" '%s' "$p"
      return
    fi
  done
  die "no free port"
}
for var in ORIGIN_PORT TOKEN_PORT SLOW_PORT SIDECAR_PORT ADMIN_PORT MEM_PORT MEM_ADMIN_PORT \
  NGX_A_PORT NGX_B_PORT BARE_PORT BARE_B_PORT BARE_LEAN_PORT LEAN_PORT SIDECAR_B_PORT ADMIN_B_PORT; do
  pick_port "$var"
done

# Every URL requested below goes through this: loopback only, by construction and by check.
url() {
  local u="http://127.0.0.1:$1$2"
  [[ "$u" == http://127.0.0.1:* ]] || die "refusing non-loopback URL $u"
  echo "$u"
}
CURL=("$CURL_BIN" --noproxy '*' -sS --max-time 60)
PAGE_HEADERS=(-H 'Accept: text/html' -H 'X-Forwarded-User: alice' -H 'X-Forwarded-Email: alice@example.com')

wait_port() { # PORT PID NAME LOG
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    kill -0 "$2" 2>/dev/null || { tail -20 "$4" >&2; die "$3 exited at start"; }
    sleep 0.1
  done
  tail -20 "$4" >&2
  die "$3 did not listen on 127.0.0.1:$1"
}

# ---------------------------------------------------------------- content
mkdir -p "$WORK/www"
if [ -n "$BENCHKIT" ]; then
  cp "$BENCHKIT/www/"* "$WORK/www/"
else
  say "generating the pages (BIG_MB=$BIG_MB)"
  "$PYTHON" "$HERE/backend.py" gen "$WORK/www" "$BIG_MB"
fi
mkdir -p "$WORK/www/slow"
chmod -R a+rX "$WORK/www"
PAGE_BYTES=$(stat -c %s "$WORK/www/page.html")
BIG_BYTES=$(stat -c %s "$WORK/www/big.html" 2>/dev/null || echo 0)
ATTR=" auth-token=\"$TOKEN\""

# ---------------------------------------------------------------- processes
nginx_conf() { # NAME WORKERS -> writes $WORK/NAME/nginx.conf header; body on stdin
  local dir="$WORK/$1"
  mkdir -p "$dir/tmp"
  chmod 1777 "$dir/tmp"
  {
    # Started as root, nginx switches its workers to the build's default user (www-data
    # on Debian), which a bare benchmark machine may not have: keep them as we are.
    [ "$(id -u)" = 0 ] && echo "user root $(id -gn);"
    cat <<EOF
worker_processes $2;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  tcp_nodelay on;
  keepalive_timeout 65;
  keepalive_requests 1000000;
  client_body_temp_path $dir/tmp/body;
  proxy_temp_path $dir/tmp/proxy;
  fastcgi_temp_path $dir/tmp/fastcgi;
  uwsgi_temp_path $dir/tmp/uwsgi;
  scgi_temp_path $dir/tmp/scgi;
  types { text/html html; application/javascript js; application/json json; }
  default_type application/octet-stream;
EOF
    cat
    echo "}"
  } >"$dir/nginx.conf"
}

start_nginx() { # NAME PORT proxy|load (which cores)
  local dir="$WORK/$1" pin=("${ON_LOAD_CPUS[@]}")
  [ "$3" = proxy ] && pin=("${ON_PROXY_CPUS[@]}")
  "$NGINX" -t -q -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" || die "nginx $1 config"
  "${pin[@]}" "$NGINX" -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" &
  PIDS+=($!)
  wait_port "$2" "$!" "nginx $1" "$dir/error.log"
}

nginx_conf origin "$ORIGIN_WORKERS" <<EOF
  charset utf-8;
  open_file_cache max=64;
  upstream slow { server 127.0.0.1:$SLOW_PORT; keepalive 32; keepalive_requests 1000000; }
  server {
    listen 127.0.0.1:$ORIGIN_PORT;
    root $WORK/www;
    location /slow/ {
      proxy_pass http://slow;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_max_temp_file_size 0;
    }
  }
  server {
    listen 127.0.0.1:$TOKEN_PORT;
    location = /auth/api/impersonation/token {
      if (\$http_authorization != "Bearer $SECRET") { return 401; }
      default_type application/json;
      return 200 '"$TOKEN"';
    }
    location = /auth-token {
      add_header X-Token "$TOKEN" always;
      return 204;
    }
  }
EOF

PROXY_COMMON='proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_max_temp_file_size 0;'
SUB_FILTER='proxy_set_header Accept-Encoding "";
      sub_filter_once off;
      sub_filter "<released-page" "<released-page auth-token=\"$tok\"";
      sub_filter "<released-widget" "<released-widget auth-token=\"$tok\"";
      sub_filter "<released-form" "<released-form auth-token=\"$tok\"";'
nginx_conf proxy "$WORKERS" <<EOF
  upstream origin { server 127.0.0.1:$ORIGIN_PORT; keepalive $CONNS; keepalive_requests 1000000; }
  upstream token { server 127.0.0.1:$TOKEN_PORT; keepalive $CONNS; keepalive_requests 1000000; }
  upstream slow { server 127.0.0.1:$SLOW_PORT; keepalive 32; keepalive_requests 1000000; }
  server {
    listen 127.0.0.1:$NGX_A_PORT;
    location / {
      proxy_pass http://origin;
      $PROXY_COMMON
    }
  }
  server {
    listen 127.0.0.1:$NGX_B_PORT;
    location / {
      auth_request /_token;
      auth_request_set \$tok \$upstream_http_x_token;
      proxy_pass http://origin;
      $PROXY_COMMON
      $SUB_FILTER
    }
    location /slow/ {
      auth_request /_token_slow;
      auth_request_set \$tok \$upstream_http_x_token;
      proxy_pass http://origin;
      $PROXY_COMMON
      $SUB_FILTER
    }
    location = /_token {
      internal;
      proxy_pass http://token/auth-token;
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      $PROXY_COMMON
    }
    location = /_token_slow {
      internal;
      proxy_pass http://slow/auth-token;
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      $PROXY_COMMON
    }
  }
EOF

# The sidecar watches the directories of its config and secret: keep them apart from
# anything written during the run (its own log included), or every log line wakes the
# watcher thread.
mkdir -p "$WORK/conf" "$WORK/logs"
printf '%s\n' "$SECRET" >"$WORK/conf/secret"
sidecar_conf() { # LISTEN_PORT ADMIN_PORT FILE
  cat >"$3" <<EOF
listen: "127.0.0.1:$1"
upstream: "http://127.0.0.1:$ORIGIN_PORT"
admin: { listen: "127.0.0.1:$2" }
trusted_proxies: ["127.0.0.1/32", "::1/128"]
released:
  api_url: "http://127.0.0.1:$TOKEN_PORT/auth/api/impersonation/token"
  account_id: "bench-account"
  shared_secret_file: "$WORK/conf/secret"
  timeout: "1500ms"
identity:
  user_id:    { header: X-Forwarded-User, transform: [escape] }
  user_email: { header: X-Forwarded-Email }
routes:
  - name: slow
    match: { path: "^/slow/" }
    released: { api_url: "http://127.0.0.1:$SLOW_PORT/auth/api/impersonation/token" }
  - name: default
workers: $WORKERS
EOF
  [ "$1" = "$SIDECAR_B_PORT" ] && printf '%s\n' "$SIDECAR_B_YAML" >>"$3"
  return 0
}

start_sidecar() { # NAME LISTEN_PORT ADMIN_PORT [BINARY] -> sets LAST_PID
  local bin=${4:-$SIDECAR_BIN}
  sidecar_conf "$2" "$3" "$WORK/conf/$1.yaml"
  "$bin" check --config "$WORK/conf/$1.yaml" >/dev/null || die "sidecar config $1"
  RUST_LOG="$SIDECAR_LOG" "${ON_PROXY_CPUS[@]}" "$bin" run --config "$WORK/conf/$1.yaml" 2>"$WORK/logs/$1.log" &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
  wait_port "$2" "$LAST_PID" "sidecar $1" "$WORK/logs/$1.log"
  for _ in $(seq 1 50); do
    [ "$("${CURL[@]}" -o /dev/null -w '%{http_code}' "$(url "$3" /readyz)" 2>/dev/null)" = 200 ] && return 0
    sleep 0.1
  done
  die "sidecar $1 not ready"
}

start_bare() { # NAME PORT ARGS [BINARY] -> sets LAST_PID (bare_proxy and lean_proxy share flags)
  local bin=${4:-$BARE_BIN}
  # shellcheck disable=SC2086 # ARGS are flags, split on purpose
  "${ON_PROXY_CPUS[@]}" "$bin" --listen "127.0.0.1:$2" --upstream "127.0.0.1:$ORIGIN_PORT" \
    --workers "$WORKERS" $3 2>"$WORK/logs/$1.log" &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
  wait_port "$2" "$LAST_PID" "$1" "$WORK/logs/$1.log"
}

# PID -> its child processes' PIDs, from /proc (a bare machine may have no `ps`).
children_of() {
  local f line ppid
  for f in /proc/[0-9]*/stat; do
    { read -r line <"$f"; } 2>/dev/null || continue
    read -r _ ppid _ <<<"${line##*) }"
    [ "$ppid" = "$1" ] && { f=${f#/proc/}; echo "${f%/stat}"; }
  done
  return 0
}

say "starting origin + token stand-in (nginx), slow backend, proxies on cores $PROXY_CPUS, load on $LOAD_CPUS"
start_nginx origin "$ORIGIN_PORT" load
wait_port "$TOKEN_PORT" "${PIDS[-1]}" "nginx token" "$WORK/origin/error.log"
if [ -n "$PYTHON" ]; then
  PAGE="$WORK/www/page.html" "${ON_LOAD_CPUS[@]}" "$PYTHON" "$HERE/backend.py" serve "$SLOW_PORT" "$SLOW_DELAY_MS" \
    2>"$WORK/logs/slow.log" &
  PIDS+=($!)
  wait_port "$SLOW_PORT" "$!" "slow backend" "$WORK/logs/slow.log"
fi
start_nginx proxy "$NGX_A_PORT" proxy
NGINX_PROXY_PID=${PIDS[-1]}
NGINX_WORKER_PID=""
for _ in $(seq 1 50); do
  # No `| head -1`: with several workers head would close the pipe early, and pipefail
  # turns the writer's SIGPIPE into an exit.
  NGINX_WORKER_PID=$(children_of "$NGINX_PROXY_PID")
  NGINX_WORKER_PID=${NGINX_WORKER_PID%%$'\n'*}
  [ -n "$NGINX_WORKER_PID" ] && break
  sleep 0.1
done
[ -n "$NGINX_WORKER_PID" ] || die "no nginx proxy worker"
wait_port "$NGX_B_PORT" "$NGINX_PROXY_PID" "nginx-B" "$WORK/proxy/error.log"
start_sidecar sidecar "$SIDECAR_PORT" "$ADMIN_PORT"
SIDECAR_PID=$LAST_PID
SIDECAR_B_PID=""
if [ "$SIDECAR_B" = 1 ]; then
  start_sidecar sidecar-b "$SIDECAR_B_PORT" "$ADMIN_B_PORT" "$SIDECAR_B_BIN"
  SIDECAR_B_PID=$LAST_PID
fi
start_bare bare "$BARE_PORT" "$BARE_ARGS"
BARE_PID=$LAST_PID
BARE_B_PID=""
if [ -n "$BARE_B_ARGS" ]; then
  start_bare bare-b "$BARE_B_PORT" "$BARE_B_ARGS"
  BARE_B_PID=$LAST_PID
fi
start_bare bare-lean "$BARE_LEAN_PORT" "--loop lean $BARE_ARGS"
BARE_LEAN_PID=$LAST_PID
start_bare lean "$LEAN_PORT" "$LEAN_ARGS" "$LEAN_BIN"
LEAN_PID=$LAST_PID

rss_kb() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }
mb() { awk -v kb="$1" 'BEGIN { printf "%.1f", kb / 1024 }'; }
sleep 1
IDLE_RSS_KB=$(rss_kb "$SIDECAR_PID" VmRSS)

# ---------------------------------------------------------------- verification
say "verifying the responses before measuring"
expect_token() { # PORT PATH WANT_COUNT WANT_TOKEN_PREFIX NAME
  local body="$WORK/check.html" n
  "${CURL[@]}" "${PAGE_HEADERS[@]}" -o "$body" "$(url "$1" "$2")" || die "$5: request failed"
  n=$(grep -o "auth-token=\"$4" "$body" | wc -l)
  [ "$n" -eq "$3" ] || die "$5: $n auth-token=\"$4… attributes in $2, want $3 (see $body)"
}
expect_token "$SIDECAR_PORT" /page.html 1 "$TOKEN" "sidecar"
expect_token "$NGX_B_PORT" /page.html 1 "$TOKEN" "nginx-B"
[ "$SIDECAR_B" = 1 ] && expect_token "$SIDECAR_B_PORT" /page.html 1 "$TOKEN" "sidecar-b"
if [ -n "$PYTHON" ]; then
  expect_token "$SIDECAR_PORT" /slow/page.html 1 tok-slow- "sidecar (slow)"
  expect_token "$NGX_B_PORT" /slow/page.html 1 tok-slow- "nginx-B (slow)"
fi
for f in data.json app.js page.html; do
  for port in "$SIDECAR_PORT" "$NGX_A_PORT" "$BARE_PORT" "$BARE_LEAN_PORT" "$LEAN_PORT" ${SIDECAR_B_PID:+"$SIDECAR_B_PORT"} ${BARE_B_PID:+"$BARE_B_PORT"}; do
    "${CURL[@]}" -o "$WORK/check.out" "$(url "$port" "/$f")"
    cmp -s "$WORK/check.out" "$WORK/www/$f" || die "passthrough of /$f via port $port is not byte-identical"
  done
done
got=$("${CURL[@]}" "${PAGE_HEADERS[@]}" -o /dev/null -w '%{size_download}' "$(url "$SIDECAR_PORT" /page.html)")
[ "$got" -eq $((PAGE_BYTES + ${#ATTR})) ] || die "sidecar page is $got bytes, want $((PAGE_BYTES + ${#ATTR}))"
say "ok: sidecar and nginx-B inject the token; passthrough is byte-identical through every proxy"

# ---------------------------------------------------------------- measuring
RAW="$RESULTS_DIR/runs.tsv"
: >"$RAW"
to_ms() { # wrk latency like 812.00us / 1.23ms / 1.02s
  awk -v v="$1" 'BEGIN {
    n = v + 0
    if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n += 0; else if (v ~ /m$/) n *= 60000; else if (v ~ /s$/) n *= 1000
    printf "%.2f", n }'
}
# CPU time (user + system, all threads) of every process of a target, in clock ticks: the
# sidecar's, bare or lean proxy's one process, or the proxy nginx's master and all its workers
# (auth_request subrequests included). No figure includes the origin or token stand-in.
CLK_TCK=$(getconf CLK_TCK)
target_pids() {
  case $1 in
    sidecar) echo "$SIDECAR_PID" ;;
    sidecar-b) echo "$SIDECAR_B_PID" ;;
    bare) echo "$BARE_PID" ;;
    bare-b) echo "$BARE_B_PID" ;;
    bare-lean) echo "$BARE_LEAN_PID" ;;
    lean) echo "$LEAN_PID" ;;
    nginx-*) echo "$NGINX_PROXY_PID" $(children_of "$NGINX_PROXY_PID") ;;
  esac
}
cpu_ticks() { # PID... -> summed utime + stime
  local pid total=0 t
  for pid in "$@"; do
    t=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | awk '{ print $12 + $13 }') || t=0
    total=$((total + ${t:-0}))
  done
  echo "$total"
}

run_wrk() { # SCENARIO TARGET PORT PATH CONNS SECONDS ROUND [HEADERS...]
  local scn=$1 target=$2 port=$3 path=$4 conns=$5 secs=$6 round=$7
  shift 7
  local out="$RESULTS_DIR/wrk-$scn-$target-$round.txt" pids ticks threads=$WRK_THREADS
  ((threads <= conns)) || threads=$conns
  read -ra pids < <(target_pids "$target")
  ticks=$(cpu_ticks "${pids[@]}")
  "${ON_LOAD_CPUS[@]}" "$WRK" -t"$threads" -c"$conns" -d"${secs}s" --timeout 5s --latency "$@" \
    "$(url "$port" "$path")" >"$out" 2>&1 || die "wrk failed: $(cat "$out")"
  ticks=$(($(cpu_ticks "${pids[@]}") - ticks))
  [ "$round" = warmup ] && return 0
  local rps p50 p99 errs reqs cpu
  rps=$(awk '/^Requests\/sec:/ { print $2 }' "$out")
  p50=$(to_ms "$(awk '$1 == "50%" { print $2 }' "$out")")
  p99=$(to_ms "$(awk '$1 == "99%" { print $2 }' "$out")")
  errs=$(awk '/Non-2xx/ { n += $NF } /Socket errors/ { gsub(/,/, ""); n += $4 + $6 + $8 + $10 } END { print n + 0 }' "$out")
  reqs=$(awk '/ requests in / { print $1 }' "$out")
  cpu=$(awk -v t="$ticks" -v hz="$CLK_TCK" -v n="$reqs" 'BEGIN { printf "%.1f", (n + 0 > 0) ? t * 1e6 / hz / n : 0 }')
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$scn" "$target" "$round" "$rps" "$p50" "$p99" "$errs" "$cpu" >>"$RAW"
  printf '    %-16s %-8s round %s: %9s req/s  p50 %7s ms  p99 %7s ms  CPU %6s us/req  errors %s\n' \
    "$scn" "$target" "$round" "$rps" "$p50" "$p99" "$cpu" "$errs" >&2
}

port_of() {
  case $1 in
    sidecar) echo "$SIDECAR_PORT" ;;
    sidecar-b) echo "$SIDECAR_B_PORT" ;;
    bare) echo "$BARE_PORT" ;;
    bare-b) echo "$BARE_B_PORT" ;;
    bare-lean) echo "$BARE_LEAN_PORT" ;;
    lean) echo "$LEAN_PORT" ;;
    nginx-A) echo "$NGX_A_PORT" ;;
    nginx-B) echo "$NGX_B_PORT" ;;
  esac
}

# SCENARIO "TARGETS" PATH CONNS [HEADERS...]: warm every target up, then ROUNDS rounds,
# rotating which target goes first each round, so a drift in the machine's load hits all.
scenario() {
  local scn=$1 path=$3 conns=$4 targets round i n t
  read -ra targets <<<"$2"
  shift 4
  n=${#targets[@]}
  say "scenario $scn: $path, $conns connections, ${DURATION}s x $ROUNDS rounds per target (${targets[*]})"
  for t in "${targets[@]}"; do
    run_wrk "$scn" "$t" "$(port_of "$t")" "$path" "$conns" "$WARMUP" warmup "$@"
  done
  for round in $(seq 1 "$ROUNDS"); do
    for ((i = 0; i < n; i++)); do
      if ((round % 2)); then t=${targets[(i + round - 1) % n]}; else t=${targets[n - 1 - (i + round - 1) % n]}; fi
      run_wrk "$scn" "$t" "$(port_of "$t")" "$path" "$conns" "$DURATION" "$round" "$@"
    done
  done
}

PASS_TARGETS="sidecar${SIDECAR_B_PID:+ sidecar-b} bare${BARE_B_PID:+ bare-b} bare-lean lean nginx-A"
PAGE_TARGETS="sidecar${SIDECAR_B_PID:+ sidecar-b} nginx-B"
wanted() { [[ " $SCENARIOS " == *" $1 "* ]]; }
wanted pass-1k-json && scenario pass-1k-json "$PASS_TARGETS" /data.json "$CONNS"
wanted pass-10k-js && scenario pass-10k-js "$PASS_TARGETS" /app.js "$CONNS"
# Optional: the 100 KB page without page-load headers (no token, no rewrite), to split the
# rewrite scenario's cost into proxying and token + rewrite.
wanted pass-100k-html && scenario pass-100k-html "$PASS_TARGETS" /page.html "$CONNS"
wanted rewrite-100k && scenario rewrite-100k "$PAGE_TARGETS" /page.html "$CONNS" "${PAGE_HEADERS[@]}"
wanted slow-100ms && scenario slow-100ms "sidecar nginx-B" /slow/page.html "$SLOW_CONNS" "${PAGE_HEADERS[@]}"

LOADED_RSS_KB=$(rss_kb "$SIDECAR_PID" VmRSS)
LOADED_HWM_KB=$(rss_kb "$SIDECAR_PID" VmHWM)

# ---------------------------------------------------------------- profile (optional)
if [ "$PROFILE" = 1 ]; then
  if command -v perf >/dev/null 2>&1 && perf stat -e task-clock true >/dev/null 2>&1; then
    for spec in "rewrite-100k /page.html page" "pass-1k-json /data.json plain"; do
      read -r scn path kind <<<"$spec"
      say "profiling the sidecar under $scn (perf record, ${DURATION}s)"
      hdrs=(); [ "$kind" = page ] && hdrs=("${PAGE_HEADERS[@]}")
      perf record -F 999 -g -p "$SIDECAR_PID" -o "$RESULTS_DIR/perf-$scn.data" \
        -- sleep $((DURATION > 3 ? DURATION - 1 : DURATION)) >/dev/null 2>&1 &
      perf_pid=$!
      PIDS+=("$perf_pid")
      run_wrk "$scn" sidecar "$SIDECAR_PORT" "$path" "$CONNS" "$DURATION" profile "${hdrs[@]}"
      wait "$perf_pid" || true
      unset 'PIDS[-1]' # reaped: its PID must not be signalled again
      # Flat self-time per function (release builds have no frame pointers, so call
      # chains are not reliable), then per shared object.
      perf report -i "$RESULTS_DIR/perf-$scn.data" --stdio --no-children -F overhead,dso,sym \
        -g none --percent-limit 0.3 2>/dev/null | grep -v '^#' | grep -v '^$' |
        sed 's/ \{2,\}/  /g' | head -80 >"$RESULTS_DIR/perf-$scn.txt" || true
      perf report -i "$RESULTS_DIR/perf-$scn.data" --stdio --no-children -F overhead,dso \
        -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | sed 's/ \{2,\}/  /g' \
        >"$RESULTS_DIR/perf-$scn-dso.txt" || true
      say "profile: $RESULTS_DIR/perf-$scn.txt"
    done
    sed -i '/\tprofile\t/d' "$RAW"
  else
    say "perf is not available: skipping the profile (apt-get install linux-perf)"
  fi
fi

# ---------------------------------------------------------------- token audit
# A page load whose token call failed is served unrewritten, and cheaper: a rewrite figure
# only counts if every page load of the run got its token. Each sidecar's own counters say.
TOKEN_AUDIT=()
audit_tokens() { # NAME ADMIN_PORT
  local metrics failed
  metrics=$("${CURL[@]}" "$(url "$2" /metrics)") || die "$1: no /metrics"
  failed=$(awk '/^released_sidecar_token_requests_total\{/ && !/result="(success|abandoned)"/ { n += $2 } END { print n + 0 }' <<<"$metrics")
  TOKEN_AUDIT+=("$1: $(awk '
    /^released_sidecar_token_requests_total\{result="success"\}/ { ok = $2 }
    /^released_sidecar_token_requests_total\{result="abandoned"\}/ { ab = $2 }
    /^released_sidecar_tags_rewritten_total / { tags = $2 }
    END { printf "%d token calls succeeded, %d abandoned (wrk closing connections mid-page), %d tags rewritten", ok, ab, tags }' <<<"$metrics"), $failed failed")
  ((failed == 0)) || die "$1: $failed token calls failed during the run: its rewrite figures measured pages without a token ($(grep '^released_sidecar_token_requests_total' <<<"$metrics" | grep -v ' 0$' | tr '\n' ' '))"
}
audit_tokens sidecar "$ADMIN_PORT"
[ "$SIDECAR_B" = 1 ] && audit_tokens sidecar-b "$ADMIN_B_PORT"

# ---------------------------------------------------------------- memory
MEM_IDLE_KB=""
if ((BIG_MB > 0)); then
  say "memory: a fresh sidecar, idle, then one ${BIG_MB} MiB page through the rewrite path"
  start_sidecar mem "$MEM_PORT" "$MEM_ADMIN_PORT"
  MEM_PID=$LAST_PID
  sleep 1
  MEM_IDLE_KB=$(rss_kb "$MEM_PID" VmRSS)
  read -r origin_total < <("${CURL[@]}" --max-time 120 -o /dev/null -w '%{time_total}\n' "$(url "$ORIGIN_PORT" /big.html)")
  read -r code ttfb total size < <("${CURL[@]}" --max-time 120 "${PAGE_HEADERS[@]}" -o /dev/null \
    -w '%{http_code} %{time_starttransfer} %{time_total} %{size_download}\n' "$(url "$MEM_PORT" /big.html)")
  BIG_HWM_KB=$(rss_kb "$MEM_PID" VmHWM)
  BIG_RSS_AFTER_KB=$(rss_kb "$MEM_PID" VmRSS)
  [ "$code" = 200 ] || die "big page: status $code"
  [ "$size" -eq $((BIG_BYTES + ${#ATTR})) ] ||
    die "big page: $size bytes, want $((BIG_BYTES + ${#ATTR})) (one token, nothing lost)"
  read -r ncode nttfb ntotal < <("${CURL[@]}" --max-time 120 "${PAGE_HEADERS[@]}" -o /dev/null \
    -w '%{http_code} %{time_starttransfer} %{time_total}\n' "$(url "$NGX_B_PORT" /big.html)")
  NGINX_WORKER_HWM_KB=$(rss_kb "$NGINX_WORKER_PID" VmHWM)
fi

# ---------------------------------------------------------------- report
ms() { awk -v s="$1" 'BEGIN { printf "%.1f", s * 1000 }'; }
verdict() { awk -v v="$1" -v op="$2" -v t="$3" 'BEGIN { ok = (op == "<=") ? (v <= t) : (v >= t); print ok ? "ok" : "MISSED" }'; }

TABLE="$RESULTS_DIR/summary.md"
{
  echo "### released-sidecar vs nginx — $(date -u +%Y-%m-%dT%H:%MZ), ${#CPUS[@]} CPUs, $WORKERS worker(s) per proxy on cores $PROXY_CPUS, load on $LOAD_CPUS, ${ROUNDS} rounds x ${DURATION}s, wrk -t$WRK_THREADS -c$CONNS, load average at start: $LOADAVG_START"
  echo
  echo "| scenario | target | req/s median (min–max) | p50 ms | p99 ms | CPU µs/req | errors | vs nginx: req/s · p99 · CPU/req |"
  echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
  awk -F'\t' '
    function median(list,   a, n, i, j, t) {
      n = split(list, a, " ")
      for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
      return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    function minmax(list, want,   a, n, i, m) {
      n = split(list, a, " "); m = a[1]
      for (i = 2; i <= n; i++) if ((want == "min" && a[i] + 0 < m + 0) || (want == "max" && a[i] + 0 > m + 0)) m = a[i]
      return m
    }
    {
      key = $1 SUBSEP $2
      if (!(key in rps)) { order[++k] = key; scn[key] = $1; tgt[key] = $2 }
      rps[key] = rps[key] " " $4; p50[key] = p50[key] " " $5; p99[key] = p99[key] " " $6
      err[key] += $7; cpu[key] = cpu[key] " " $8
    }
    END {
      for (i = 1; i <= k; i++) {
        key = order[i]
        med_rps[scn[key], tgt[key]] = median(rps[key])
        med_p99[scn[key], tgt[key]] = median(p99[key])
        med_cpu[scn[key], tgt[key]] = median(cpu[key])
      }
      for (i = 1; i <= k; i++) {
        key = order[i]; s = scn[key]; t = tgt[key]
        ratio = "—"
        if (t !~ /^nginx/) {
          other = ""
          for (j = 1; j <= k; j++) if (scn[order[j]] == s && tgt[order[j]] ~ /^nginx/) other = tgt[order[j]]
          if (med_rps[s, other] > 0 && med_p99[s, other] > 0 && med_cpu[s, other] > 0)
            ratio = sprintf("%.2fx · %.2fx · %.2fx", med_rps[s, t] / med_rps[s, other],
              med_p99[s, t] / med_p99[s, other], med_cpu[s, t] / med_cpu[s, other])
        }
        printf "| %s | %s | %.0f (%.0f–%.0f) | %.2f | %.2f | %.1f | %d | %s |\n", s, t, med_rps[s, t],
          minmax(rps[key], "min"), minmax(rps[key], "max"), median(p50[key]), med_p99[s, t],
          med_cpu[s, t], err[key], ratio
      }
    }' "$RAW"
  echo
  slow_side=$(awk -F'\t' '$1 == "slow-100ms" && $2 == "sidecar" { print $5 }' "$RAW" | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }')
  slow_ngx=$(awk -F'\t' '$1 == "slow-100ms" && $2 == "nginx-B" { print $5 }' "$RAW" | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }')
  if wanted slow-100ms; then
    echo "- latency hiding (app ${SLOW_DELAY_MS} ms + token API ${SLOW_DELAY_MS} ms, ${SLOW_CONNS} connections): page p50 sidecar ${slow_side} ms (target ≤ 115: $(verdict "$slow_side" "<=" 115)), nginx-B ${slow_ngx} ms (auth_request runs before the upstream request)"
  fi
  if [ -n "$MEM_IDLE_KB" ]; then
    echo "- idle RSS: sidecar at start $(mb "$IDLE_RSS_KB") MB; fresh instance $(mb "$MEM_IDLE_KB") MB (target ≤ 30: $(verdict "$(mb "$MEM_IDLE_KB")" "<=" 30)); after the load runs RSS $(mb "$LOADED_RSS_KB") MB, peak $(mb "$LOADED_HWM_KB") MB"
    echo "- $(awk -v b="$BIG_BYTES" 'BEGIN { printf "%.0f", b / 1048576 }') MiB page, rewrite path: peak RSS (VmHWM) $(mb "$BIG_HWM_KB") MB (target ≤ 64: $(verdict "$(mb "$BIG_HWM_KB")" "<=" 64)), RSS after $(mb "$BIG_RSS_AFTER_KB") MB; first byte $(ms "$ttfb") ms, total $(ms "$total") ms (origin alone: $(ms "$origin_total") ms; first byte before the upstream finished: $(verdict "$(ms "$ttfb")" "<=" "$(ms "$origin_total")"))"
    echo "- same page via nginx-B: status $ncode, first byte $(ms "$nttfb") ms, total $(ms "$ntotal") ms${NGINX_WORKER_HWM_KB:+, nginx worker peak RSS over the whole run $(mb "$NGINX_WORKER_HWM_KB") MB}"
  else
    echo "- idle RSS: sidecar at start $(mb "$IDLE_RSS_KB") MB (target ≤ 30: $(verdict "$(mb "$IDLE_RSS_KB")" "<=" 30)); after the load runs RSS $(mb "$LOADED_RSS_KB") MB, peak $(mb "$LOADED_HWM_KB") MB (no big-page part: BIG_MB=0)"
  fi
  for line in "${TOKEN_AUDIT[@]}"; do echo "- token calls, $line"; done
  echo "- sidecar log level: RUST_LOG=$SIDECAR_LOG; raw wrk output: $RESULTS_DIR"
} >"$TABLE"
echo
cat "$TABLE"
