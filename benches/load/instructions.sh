#!/usr/bin/env bash
# Instructions per request, counted by valgrind's callgrind: a figure that does not move
# when other work shares the machine, unlike the CPU µs of run.sh. One keep-alive
# connection (curl) sends N sequential GETs through each target to an nginx origin; the
# target's instructions while they run, less what it executes idle over the same wall
# time (timer and housekeeping threads), divided by N. Everything stays on 127.0.0.1.
#
#   benches/load/instructions.sh                     # ~3 minutes after the release build
#   N=500 TARGETS="bare bare-lean lean" benches/load/instructions.sh
#   SIDECAR_B_BIN=path/to/other/released-sidecar benches/load/instructions.sh  # + sidecar-b
#
# Targets (one worker each, same builds as run.sh): nginx (proxy_pass + upstream
# keepalive, master_process off so the one process is the worker), bare
# (examples/bare_proxy.rs), bare-lean (the same, `--loop lean`: the sidecar's request
# loop), lean (examples/lean_proxy.rs), sidecar (the release binary, passthrough: no
# page-load headers, so no token call), sidecar-b (SIDECAR_B_BIN, same config).
#
# Environment (defaults in brackets): N [2000] requests per path, WARM [100] requests
# first, TARGETS ["nginx bare bare-lean lean sidecar", plus sidecar-b with SIDECAR_B_BIN],
# PATHS ["/data.json /app.js"] (W1 1 KB JSON,
# W2 10 KB JS), SIDECAR_BIN / BARE_BIN / LEAN_BIN (else the release builds, built here),
# RESULTS_DIR [<cargo target dir>/bench-instructions/<timestamp>], KEEP_DUMPS [0] (1: copy
# the callgrind dumps there, for callgrind_annotate: which functions the requests ran).
# Needs valgrind (callgrind_control), nginx, curl and python3.
set -euo pipefail

N=${N:-2000}
WARM=${WARM:-100}
TARGETS=${TARGETS:-nginx bare bare-lean lean sidecar${SIDECAR_B_BIN:+ sidecar-b}}
PATHS=${PATHS:-/data.json /app.js}

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE="$REPO/benches/load"
cd "$REPO"
say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

for t in $TARGETS; do
  [[ " nginx bare bare-lean lean sidecar sidecar-b " == *" $t "* ]] ||
    die "unknown target $t (nginx, bare, bare-lean, lean, sidecar, sidecar-b)"
  [ "$t" != sidecar-b ] || [ -x "${SIDECAR_B_BIN:-}" ] || die "sidecar-b needs SIDECAR_B_BIN"
done
for tool in valgrind callgrind_control nginx curl python3; do
  command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || die "$tool is missing"
done
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
TARGET_DIR=${CARGO_TARGET_DIR:-target}
[[ "$TARGET_DIR" = /* ]] || TARGET_DIR="$REPO/$TARGET_DIR"
if [ -z "${SIDECAR_BIN:-}" ] || [ -z "${BARE_BIN:-}" ] || [ -z "${LEAN_BIN:-}" ]; then
  say "building the sidecar, the bare pingora proxy and the lean loop (release)"
  cargo build --release --locked --bin released-sidecar --example bare_proxy --example lean_proxy
fi
SIDECAR_BIN=${SIDECAR_BIN:-$TARGET_DIR/release/released-sidecar}
BARE_BIN=${BARE_BIN:-$TARGET_DIR/release/examples/bare_proxy}
LEAN_BIN=${LEAN_BIN:-$TARGET_DIR/release/examples/lean_proxy}

unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY no_proxy NO_PROXY
RESULTS_DIR=${RESULTS_DIR:-$TARGET_DIR/bench-instructions/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$RESULTS_DIR"
WORK=$(mktemp -d -t released-instr.XXXXXX)
chmod 755 "$WORK"
PIDS=()
cleanup() {
  local status=$?
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ "${KEEP_DUMPS:-0}" = 1 ] && [ -d "$WORK/cg" ]; then
    cp -r "$WORK/cg" "$RESULTS_DIR/callgrind" && say "callgrind dumps: $RESULTS_DIR/callgrind"
  fi
  rm -rf "$WORK"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

read -r EPHEMERAL_LOW _ </proc/sys/net/ipv4/ip_local_port_range
PORT_LOW=10000
PORT_SPAN=$((EPHEMERAL_LOW - PORT_LOW))
((PORT_SPAN >= 1000)) || { PORT_LOW=61000; PORT_SPAN=4000; }
USED_PORTS=" "
pick_port() { # VAR
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
for var in ORIGIN_PORT PROXY_PORT ADMIN_PORT; do pick_port "$var"; done

wait_port() { # PORT PID NAME LOG SECONDS
  for _ in $(seq 1 $(($5 * 10))); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    kill -0 "$2" 2>/dev/null || { tail -20 "$4" >&2; die "$3 exited at start"; }
    sleep 0.1
  done
  tail -20 "$4" >&2
  die "$3 did not listen on 127.0.0.1:$1"
}

mkdir -p "$WORK/www" "$WORK/cg" "$WORK/logs"
python3 "$HERE/backend.py" gen "$WORK/www" 0
chmod -R a+rX "$WORK/www"

nginx_conf() { # DIR SERVER_BLOCK [EXTRA_MAIN]
  mkdir -p "$1/tmp"
  chmod 1777 "$1/tmp"
  {
    [ "$(id -u)" = 0 ] && echo "user root $(id -gn);"
    cat <<EOF
worker_processes 1;
daemon off;
${3:-}
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  tcp_nodelay on;
  keepalive_timeout 65;
  keepalive_requests 1000000;
  client_body_temp_path $1/tmp;
  proxy_temp_path $1/tmp;
  fastcgi_temp_path $1/tmp;
  uwsgi_temp_path $1/tmp;
  scgi_temp_path $1/tmp;
  default_type application/octet-stream;
  types { text/html html; application/javascript js; application/json json; }
  charset utf-8;
$2
}
EOF
  } >"$1/nginx.conf"
}

nginx_conf "$WORK/origin" "  server {
    listen 127.0.0.1:$ORIGIN_PORT;
    root $WORK/www;
  }"
"$NGINX" -c "$WORK/origin/nginx.conf" 2>"$WORK/logs/origin.log" &
PIDS+=($!)
wait_port "$ORIGIN_PORT" "$!" "nginx origin" "$WORK/logs/origin.log" 10

# The same proxy nginx as run.sh's nginx-A, as one process.
nginx_conf "$WORK/proxy" "  upstream origin { server 127.0.0.1:$ORIGIN_PORT; keepalive 32; keepalive_requests 1000000; }
  server {
    listen 127.0.0.1:$PROXY_PORT;
    location / {
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_max_temp_file_size 0;
    }
  }" "master_process off;"

printf '%s\n' "bench-shared-secret-not-a-real-one" >"$WORK/secret"
cat >"$WORK/sidecar.yaml" <<EOF
listen: "127.0.0.1:$PROXY_PORT"
upstream: "http://127.0.0.1:$ORIGIN_PORT"
admin: { listen: "127.0.0.1:$ADMIN_PORT" }
released:
  api_url: "http://127.0.0.1:$ORIGIN_PORT/auth/api/impersonation/token"
  account_id: "bench-account"
  shared_secret_file: "$WORK/secret"
identity:
  user_id: { header: X-Forwarded-User }
  user_email: { header: X-Forwarded-Email }
workers: 1
EOF

target_cmd() { # TARGET -> the command line, one word per line
  case $1 in
    nginx) printf '%s\n' "$NGINX" -c "$WORK/proxy/nginx.conf" ;;
    bare) printf '%s\n' "$BARE_BIN" --listen "127.0.0.1:$PROXY_PORT" --upstream "127.0.0.1:$ORIGIN_PORT" --workers 1 ;;
    bare-lean) printf '%s\n' "$BARE_BIN" --listen "127.0.0.1:$PROXY_PORT" --upstream "127.0.0.1:$ORIGIN_PORT" --workers 1 --loop lean ;;
    lean) printf '%s\n' "$LEAN_BIN" --listen "127.0.0.1:$PROXY_PORT" --upstream "127.0.0.1:$ORIGIN_PORT" --workers 1 ;;
    sidecar) printf '%s\n' "$SIDECAR_BIN" run --config "$WORK/sidecar.yaml" ;;
    sidecar-b) printf '%s\n' "$SIDECAR_B_BIN" run --config "$WORK/sidecar.yaml" ;;
  esac
}

# COUNT PATH: COUNT GETs of PATH on one keep-alive connection; fails unless all are 200.
requests() {
  local i config="$WORK/curl-$1${2//\//_}.conf"
  if [ ! -f "$config" ]; then
    for ((i = 0; i < $1; i++)); do
      printf 'url = "http://127.0.0.1:%s%s"\noutput = "/dev/null"\n' "$PROXY_PORT" "$2"
    done >"$config"
  fi
  local ok
  ok=$(curl --noproxy '*' -sS --max-time 600 -K "$config" -w '%{http_code}\n' | grep -c '^200$' || true)
  [ "$ok" -eq "$1" ] || die "$ok of $1 requests for $2 answered 200"
}

# PID -> Ir of the dump callgrind writes now (since the last zeroing).
dump_ir() {
  local before after file
  before=$(find "$WORK/cg" -type f | wc -l)
  callgrind_control -d "$1" >/dev/null 2>&1
  for _ in $(seq 1 100); do
    after=$(find "$WORK/cg" -type f | wc -l)
    ((after > before)) && break
    sleep 0.1
  done
  file=$(find "$WORK/cg" -type f -printf '%T@ %p\n' | sort -n | tail -1 | cut -d' ' -f2-)
  awk '/^totals:/ { print $2; exit }' "$file"
}

RAW="$RESULTS_DIR/instructions.tsv"
: >"$RAW"
for t in $TARGETS; do
  mapfile -t cmd < <(target_cmd "$t")
  say "$t under callgrind"
  RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$WORK/cg/$t.%p" \
    "${cmd[@]}" >"$WORK/logs/$t.log" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  wait_port "$PROXY_PORT" "$pid" "$t" "$WORK/logs/$t.log" 180
  for path in $PATHS; do
    requests "$WARM" "$path"
    callgrind_control -z "$pid" >/dev/null 2>&1
    start=$(date +%s%N)
    requests "$N" "$path"
    elapsed_ns=$(($(date +%s%N) - start))
    busy=$(dump_ir "$pid")
    callgrind_control -z "$pid" >/dev/null 2>&1
    sleep "$(awk -v ns="$elapsed_ns" 'BEGIN { printf "%.3f", ns / 1e9 }')"
    idle=$(dump_ir "$pid")
    per=$(awk -v b="$busy" -v i="$idle" -v n="$N" 'BEGIN { printf "%.0f", (b - i) / n }')
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "$path" "$per" "$busy" "$idle" "$elapsed_ns" >>"$RAW"
    say "  $path: $per instructions/request ($busy in $N requests, $idle idle over the same $((elapsed_ns / 1000000)) ms)"
  done
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  unset 'PIDS[-1]'
  # nginx keeps the port a moment after exiting under valgrind; the next target needs it.
  for _ in $(seq 1 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PROXY_PORT") 2>/dev/null || break
    sleep 0.1
  done
done

TABLE="$RESULTS_DIR/summary.md"
{
  echo "### instructions per request (callgrind), $(date -u +%Y-%m-%dT%H:%MZ): $N sequential GETs on one keep-alive connection, one worker, idle instructions over the same time subtracted"
  echo
  echo "| path | target | instructions/request | vs nginx | vs bare |"
  echo "| --- | --- | --- | --- | --- |"
  awk -F'\t' '
    { ir[$2, $1] = $3; if (!($2 in seen)) { seen[$2] = 1; paths[++np] = $2 } if (!($1 in tseen)) { tseen[$1] = 1; targets[++nt] = $1 } }
    END {
      for (p = 1; p <= np; p++) for (t = 1; t <= nt; t++) {
        path = paths[p]; tg = targets[t]
        if (!((path, tg) in ir)) continue
        vn = ((path, "nginx") in ir && tg != "nginx") ? sprintf("%.2fx", ir[path, tg] / ir[path, "nginx"]) : "—"
        vb = ((path, "bare") in ir && tg != "bare") ? sprintf("%.2fx", ir[path, tg] / ir[path, "bare"]) : "—"
        printf "| %s | %s | %d | %s | %s |\n", path, tg, ir[path, tg], vn, vb
      }
    }' "$RAW"
} >"$TABLE"
echo
cat "$TABLE"
