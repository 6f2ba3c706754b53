#!/usr/bin/env bash
# The 1/2/4-worker comparison (nginx, bare pingora in both request loops, lean loop,
# sidecar) on a many-core
# machine with no network, no nginx, no wrk and no python3, from a bundle made here by
# benches/load/bundle.sh:
#
#   benches/load/bundle.sh                      # here: build + pack into target/benchkit
#   benches/load/device.sh [target/benchkit]    # there: ~6 minutes at the defaults
#   SCENARIOS="pass-1k-json pass-10k-js" benches/load/device.sh   # passthrough only, ~3.5
#
# For each worker count N it runs benches/load/run.sh --workers N (proxies on N pinned
# cores, wrk and the origin on the others, N x CONNS_PER_WORKER connections), then prints
# one table across the worker counts: req/s, p99 and CPU µs/request per target, the
# scaling from the fewest to the most workers as a fraction of linear, and each target
# against nginx. Everything stays on 127.0.0.1. With $OUT set, the table and every run's
# raw output are written under $OUT/.
#
# Environment (defaults in brackets): WORKER_LIST ["1 2 4"], SCENARIOS ["pass-1k-json
# pass-10k-js rewrite-100k"], DURATION [4] s, ROUNDS [2], WARMUP [1] s, CONNS_PER_WORKER
# [64]; SIDECAR_B_BIN / SIDECAR_B_YAML / BARE_B_ARGS add A/B targets (see run.sh); a
# bundle made with SIDECAR_B_BIN has bin/released-sidecar-b, used as SIDECAR_B_BIN unless
# one is given.
# Run time ~ workers x (target-runs x (ROUNDS x DURATION + WARMUP) + ~10 s), with 5
# target-runs per passthrough scenario (sidecar, bare, bare-lean, lean, nginx-A) and 2 for
# rewrite-100k: 3 x (12 x 9 s + 10 s) = ~6 minutes at the defaults.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
KIT=${1:-$REPO/target/benchkit}
[[ "$KIT" = /* ]] || KIT="$PWD/$KIT"
[ -x "$KIT/bin/released-sidecar" ] || {
  echo "no bundle at $KIT: run benches/load/bundle.sh first (on a machine with the tools)" >&2
  exit 1
}
if [ -z "${SIDECAR_B_BIN:-}" ] && [ -x "$KIT/bin/released-sidecar-b" ]; then
  export SIDECAR_B_BIN=$KIT/bin/released-sidecar-b
fi
WORKER_LIST=${WORKER_LIST:-1 2 4}
export SCENARIOS=${SCENARIOS:-pass-1k-json pass-10k-js rewrite-100k}
export DURATION=${DURATION:-4} ROUNDS=${ROUNDS:-2} WARMUP=${WARMUP:-1}
CONNS_PER_WORKER=${CONNS_PER_WORKER:-64}
BASE=${OUT:-$REPO/target/bench-device/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$BASE"

started=$(date +%s)
for n in $WORKER_LIST; do
  # A bound per run, so a hung process cannot hold the machine: the planned time plus slack.
  RESULTS_DIR="$BASE/workers-$n" CONNS=$((n * CONNS_PER_WORKER)) BENCHKIT="$KIT" \
    timeout --foreground 240 "$REPO/benches/load/run.sh" --workers "$n" \
    >"$BASE/run-workers-$n.log" 2>&1 || {
    echo "run with $n worker(s) failed; last lines of $BASE/run-workers-$n.log:" >&2
    tail -20 "$BASE/run-workers-$n.log" >&2
    exit 1
  }
  echo "==> $n worker(s) done after $(($(date +%s) - started)) s" >&2
done

for n in $WORKER_LIST; do
  awk -F'\t' -v n="$n" '{ print n "\t" $0 }' "$BASE/workers-$n/runs.tsv"
done >"$BASE/all-runs.tsv"

{
  echo "### 1/2/4-worker comparison — $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs, workers: $WORKER_LIST, ${ROUNDS} rounds x ${DURATION}s, ${CONNS_PER_WORKER} connections per worker"
  echo
  awk -F'\t' -v workers="$WORKER_LIST" '
    function median(list,   a, n, i, j, t) {
      n = split(list, a, " ")
      for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
      return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    {
      w = $1; s = $2; t = $3
      if (!((s, t) in seen)) { seen[s, t] = 1; order[++k] = s SUBSEP t }
      rps[w, s, t] = rps[w, s, t] " " $5; p99[w, s, t] = p99[w, s, t] " " $7; cpu[w, s, t] = cpu[w, s, t] " " $9
      if (t ~ /^nginx/) ngx[s] = t
    }
    END {
      nw = split(workers, W, " ")
      head = "| scenario | target |"; rule = "| --- | --- |"
      for (i = 1; i <= nw; i++) { head = head " " W[i] " w: req/s · p99 ms · CPU µs/req |"; rule = rule " --- |" }
      head = head " " W[1] "→" W[nw] " w scaling (of linear) |"; rule = rule " --- |"
      for (i = 1; i <= nw; i++) { head = head " vs nginx at " W[i] " w |"; rule = rule " --- |" }
      print head; print rule
      for (o = 1; o <= k; o++) {
        split(order[o], st, SUBSEP); s = st[1]; t = st[2]
        line = "| " s " | " t " |"
        for (i = 1; i <= nw; i++) {
          key = W[i] SUBSEP s SUBSEP t
          if (key in rps) {
            r[i] = median(rps[key])
            line = line sprintf(" %.0f · %.2f · %.1f |", r[i], median(p99[key]), median(cpu[key]))
          } else { r[i] = 0; line = line " — |" }
        }
        line = line ((r[1] > 0 && r[nw] > 0 && nw > 1) ? sprintf(" %.2fx (%.2f) |", r[nw] / r[1], r[nw] / r[1] / (W[nw] / W[1])) : " — |")
        for (i = 1; i <= nw; i++) {
          nk = W[i] SUBSEP s SUBSEP ngx[s]
          line = line ((t !~ /^nginx/ && (nk in rps) && r[i] > 0) ? sprintf(" %.2fx |", r[i] / median(rps[nk])) : " — |")
        }
        print line
      }
    }' "$BASE/all-runs.tsv"
  echo
  echo "Per worker count: $BASE/workers-N/summary.md (p50, min–max, errors, idle RSS). Total $(($(date +%s) - started)) s."
} >"$BASE/device-summary.md"
for n in $WORKER_LIST; do
  echo
  sed -n '1,/^$/d; /^| /p' "$BASE/workers-$n/summary.md" | sed "1i\\#### $n worker(s)"
done >>"$BASE/device-summary.md"
cat "$BASE/device-summary.md"
