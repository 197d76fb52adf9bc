#!/usr/bin/env bash
# Cost curves: each benchmark at 1×, 2× and 4× its base size, each size measured with its
# peer in the same run, by calling the benchmark scripts with their knobs:
#   B1  bench/b1_validate.sh (B1_SCALES): vakt validate vs check-jsonschema, one process per
#       schema; 10k, 20k, 40k documents
#   B2  bench/b2_b7.sh ONLY=b2b3 (B2_DOCS): one-file compile + plan vs the full compile;
#       12.5k, 25k, 50k documents
#   B3  the same run (B3_DOCS 5.5k, 11k, 22k ≈ 12.5k, 25k, 50k keys): apply vs raw JetStream
#       publish of the same messages; B6: drift vs the read-back of the same keys
#   B5  bench/b5_site.sh (B5_RUNBOOKS): vakt site build cold / no-op / one-edit vs hugo and
#       hugo-json cold; 1,250, 2,500, 5,000 runbooks
# then writes OUT/points.json (one object per bench, tool and size: seconds, the load
# average when that size started, runs, and the bench's own fields), draws OUT/curves.svg
# with bench/plot.py and prints plot.py's Markdown table (OUT/table.md).
#
# Usage: bash bench/curves.sh        # 15–23 minutes on 2 shared cores with the defaults
#        cp bench/out/curves/curves.svg bench/curves.svg   # to update the committed figure
# Environment:
#   CURVES_BENCHES   benches to run (default "b1 b2 b3 b5"; b3 also gives B6; b2 and b3 run
#                    together when both are asked for)
#   CURVES_SCALES    multiples of the base sizes (default "1 2 4")
#   CURVES_RUNS      measured runs of vakt validate per size, and B2's runs (× 2, median)
#                    (default 3)
#   CURVES_B5_RUNS   hyperfine runs per tool, scenario and size of B5 (default 2)
#   CURVES_B3_RUNS   `vakt-bench b3` runs per size, median taken (default 2)
#   CURVES_SLOW_RUNS measured runs of check-jsonschema per size (default 2)
#   CURVES_B1_DOCS (10000), CURVES_B2_DOCS (12500), CURVES_B3_DOCS (5500),
#   CURVES_B5_RUNBOOKS (1250)   the 1× sizes
#   CURVES_B1_PARALLEL=1        also time check-jsonschema $(nproc) processes at a time
#   CURVES_OUT       output directory (default bench/out/curves, git-ignored); recreated
#   CURVES_NO_BUILD=1  skip `cargo build --release -p vakt -p vakt-bench`
#   VAKT_BIN, BENCH_BIN  binaries (default target/release/vakt and vakt-bench; no build)
# Progress goes to stderr. Exits non-zero if any benchmark fails.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCHES="${CURVES_BENCHES:-b1 b2 b3 b5}"
SCALES="${CURVES_SCALES:-1 2 4}"
RUNS="${CURVES_RUNS:-3}"
B3_RUNS="${CURVES_B3_RUNS:-2}"
B5_RUNS="${CURVES_B5_RUNS:-2}"
SLOW_RUNS="${CURVES_SLOW_RUNS:-2}"
B1_BASE="${CURVES_B1_DOCS:-10000}"
B2_BASE="${CURVES_B2_DOCS:-12500}"
B3_BASE="${CURVES_B3_DOCS:-5500}"
B5_BASE="${CURVES_B5_RUNBOOKS:-1250}"
OUT="${CURVES_OUT:-$ROOT/bench/out/curves}"
export VAKT_BIN="${VAKT_BIN:-$ROOT/target/release/vakt}"
export BENCH_BIN="${BENCH_BIN:-$ROOT/target/release/vakt-bench}"

die() { echo "curves: $*" >&2; exit 1; }
log() { echo "curves: [$(date -u +%H:%M:%S), load $(cut -d' ' -f1-3 /proc/loadavg)] $*" >&2; }
has() { [[ " $BENCHES " == *" $1 "* ]]; }
for b in $BENCHES; do
    case "$b" in b1 | b2 | b3 | b5) ;; *) die "CURVES_BENCHES: unknown bench '$b' (b1 b2 b3 b5)" ;; esac
done
for s in $SCALES; do [[ "$s" =~ ^[1-9][0-9]*$ ]] || die "CURVES_SCALES: '$s' is not a positive integer"; done
[[ $(echo $SCALES | wc -w) -ge 2 ]] || die "CURVES_SCALES needs at least two sizes for a curve"

if [[ "${CURVES_NO_BUILD:-}" != 1 && "$VAKT_BIN" == "$ROOT/target/release/vakt" ]]; then
    log "cargo build --release -p vakt -p vakt-bench"
    (cd "$ROOT" && cargo build --release -p vakt -p vakt-bench) || die "release build failed"
fi
[[ -x "$VAKT_BIN" ]] || die "$VAKT_BIN not found"
[[ -x "$BENCH_BIN" ]] || die "$BENCH_BIN not found"
rm -rf "$OUT"
mkdir -p "$OUT"
: > "$OUT/points.jsonl"
START=$(date +%s)

# --- B1: b1_validate.sh measures every scale itself -------------------------------------
if has b1; then
    B1_SCALE_LIST=""
    for s in $SCALES; do B1_SCALE_LIST+="$s "; done
    log "B1: $B1_BASE documents × ($B1_SCALE_LIST)"
    B1_DOCS="$B1_BASE" B1_SCALES="$B1_SCALE_LIST" B1_RUNS="$RUNS" B1_SLOW_RUNS="$SLOW_RUNS" \
        B1_PARALLEL="${CURVES_B1_PARALLEL:-0}" B1_OUT="$OUT/b1" \
        bash "$ROOT/bench/b1_validate.sh" > "$OUT/b1.md" || die "b1_validate.sh failed"
    python3 -c 'import json,sys; [print(json.dumps(p)) for p in json.load(open(sys.argv[1]))]' \
        "$OUT/b1/points.json" >> "$OUT/points.jsonl"
fi

# --- B2, B3/B6: one b2_b7.sh run per scale -------------------------------------------------
if has b2 || has b3; then
    ONLY=""
    has b2 && ONLY+=b2
    has b3 && ONLY+=b3
    for s in $SCALES; do
        D="$OUT/b2b3-x$s"
        LOAD="$(cut -d' ' -f1-3 /proc/loadavg)"
        log "B2/B3 ${s}×: ONLY=$ONLY B2_DOCS=$((B2_BASE * s)) B3_DOCS=$((B3_BASE * s))"
        ONLY="$ONLY" B2_DOCS=$((B2_BASE * s)) B3_DOCS=$((B3_BASE * s)) B2_RUNS=$((RUNS * 2)) \
            B3_RUNS="$B3_RUNS" BENCH_OUT="$D" bash "$ROOT/bench/b2_b7.sh" > "$D.log" \
            || { tail -n 20 "$D.log" >&2; die "b2_b7.sh failed at ${s}×"; }
        python3 - "$D" "$((B2_BASE * s))" "$((B3_BASE * s))" "$LOAD" >> "$OUT/points.jsonl" <<'EOF'
import json, os, statistics, sys
d, b2_docs, b3_docs, load = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
def pt(bench, tool, size, unit, ms, **kw):
    print(json.dumps({"bench": bench, "tool": tool, "size": size, "unit": unit,
                      "seconds": ms / 1000, "load": load, **kw}))
if os.path.exists(f"{d}/b2.json"):
    r = json.load(open(f"{d}/b2.json"))
    pt("B2 compile + plan", "vakt one-file compile + plan", b2_docs, "documents",
       r["incremental_compile_plan_ms_median"], keys=r["keys"], runs=r["runs"])
    pt("B2 compile + plan", "full compile (peer)", b2_docs, "documents",
       r["full_compile_ms_median"], keys=r["keys"], runs=r["runs"])
if os.path.exists(f"{d}/b3.jsonl"):
    rs = [json.loads(l) for l in open(f"{d}/b3.jsonl") if l.strip()]
    keys = rs[0]["keys"]
    med = lambda k: statistics.median(r[k] for r in rs)
    extra = {"documents": b3_docs, "runs": len(rs)}
    pt("B3 apply", "vakt apply", keys, "keys", med("apply_ms"), **extra)
    pt("B3 apply", "raw JetStream publish (peer)", keys, "keys", med("raw_publish_ms"),
       raw_messages=rs[0]["raw_messages"], **extra)
    pt("B6 drift", "vakt drift", keys, "keys", med("drift_ms"), **extra)
    pt("B6 drift", "read-back (peer)", keys, "keys", med("readback_ms"), **extra)
EOF
    done
fi

# --- B5: one b5_site.sh run per scale --------------------------------------------------------
if has b5; then
    for s in $SCALES; do
        N=$((B5_BASE * s))
        D="$OUT/b5-x$s"
        log "B5 ${s}×: $N runbooks"
        B5_RUNBOOKS="$N" B5_RUNS="$B5_RUNS" B5_OUT="$D" bash "$ROOT/bench/b5_site.sh" > "$D.md" \
            2> "$D.log" || { tail -n 20 "$D.log" >&2; die "b5_site.sh failed at ${s}×"; }
        python3 - "$D/results" "$N" >> "$OUT/points.jsonl" <<'EOF'
import json, sys
d, n = sys.argv[1], int(sys.argv[2])
load = dict(l.split(" ", 1) for l in open(f"{d}/load.txt").read().splitlines())
for scen, tools in (("cold", ("vakt", "hugo", "hugo-json")), ("no-op", ("vakt",)),
                    ("one-edit", ("vakt",))):
    hf = {r["command"]: r for r in json.load(open(f"{d}/{scen}.json"))["results"]}
    for t in tools:
        r = hf[t]
        print(json.dumps({"bench": "B5 site build", "tool": f"{t} {scen}", "size": n,
                          "unit": "runbooks", "seconds": r["mean"], "stddev": r["stddev"] or 0.0,
                          "runs": len(r["times"]), "load": load[scen]}))
EOF
    done
fi

python3 -c 'import json,sys; json.dump([json.loads(l) for l in open(sys.argv[1])], open(sys.argv[2], "w"), indent=1)' \
    "$OUT/points.jsonl" "$OUT/points.json"
python3 "$ROOT/bench/plot.py" "$OUT/points.json" "$OUT/curves.svg" > "$OUT/table.md" \
    || die "plot.py failed"
log "done in $(( $(date +%s) - START )) s: $OUT/points.json, $OUT/curves.svg, $OUT/table.md"
cat "$OUT/table.md"
if has b1; then echo; cat "$OUT/b1.md"; fi
