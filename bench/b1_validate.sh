#!/usr/bin/env bash
# Benchmark B1: `vakt validate` on an ops repo of 10,000 documents (and 2×, 4× that), against
# check-jsonschema on the same documents, in the same run:
#   a. vakt validate --repo OUT --now 2026-11-22 --format json [--no-cache]
#      (all documents, base view + 3 environments; --no-cache when the binary has it, so
#      every run is cold)
#   b. check-jsonschema, one `--schemafile schemas/<kind>.schema.json FILES...` process per
#      schema with all of that schema's files (22 schemas: the fewest processes it allows,
#      it takes one --schemafile per process), run one after the other
#   c. the same 22 processes, $(nproc) at a time (vakt uses every core too), largest first
#   d. at 1× only: promtool check rules OUT/alerts/*.yaml (peer for the rule files only), and
#      check-jsonschema over the tenant files alone (the biggest kind, one process)
# At every scale (B1_SCALES, default 1 2 4: 10k, 20k, 40k documents) the repo is generated,
# every command must succeed once, then each is measured. The report gives the total times
# and their ratio per scale, and the marginal cost per document of each tool: the slope of
# wall time against documents (least squares over the scales), which leaves out fixed costs
# such as Python start-up and schema loading on one side and process start-up on the other.
#
# Usage: bash bench/b1_validate.sh
# Environment:
#   B1_DOCS        documents in the 1× repo (default 10000)
#   B1_SCALES      multiples of B1_DOCS to measure (default "1 2 4"; "1" = one size only)
#   B1_OUT         work directory (default bench/out/b1, git-ignored); recreated
#   B1_RUNS        measured runs of vakt and promtool (default 20)
#   B1_SLOW_RUNS   measured runs of each check-jsonschema command (default 3)
#   B1_PARALLEL=0  skip (c), the parallel check-jsonschema run
#   B1_NO_BUILD=1  skip `cargo build --release -p vakt`
#   B1_NO_HYPERFINE=1  use the /usr/bin/time loop even if hyperfine is installed
#   VAKT_BIN       the vakt binary (default target/release/vakt; B1_NO_BUILD is implied)
# Output: the Markdown report on stdout; OUT/points.json (one object per tool and size:
# bench, tool, size, seconds, stddev, runs, load) for bench/curves.sh and bench/plot.py;
# OUT/x<scale>/results/*.json (mean, stddev, runs per command).
# Uses hyperfine when installed (apt-get install -y hyperfine), else a loop of /usr/bin/time.
# Exits non-zero if the build, the generator or any measured command fails.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DOCS="${B1_DOCS:-10000}"
SCALES="${B1_SCALES:-1 2 4}"
WORK="${B1_OUT:-$ROOT/bench/out/b1}"
RUNS="${B1_RUNS:-20}"
SLOW_RUNS="${B1_SLOW_RUNS:-3}"
PARALLEL="${B1_PARALLEL:-1}"
NOW="2026-11-22"
VAKT="${VAKT_BIN:-$ROOT/target/release/vakt}"
NPROC="$(nproc)"

die() { echo "b1: $*" >&2; exit 1; }
for tool in python3 check-jsonschema promtool; do
    command -v "$tool" >/dev/null || die "$tool is not installed"
done
for s in $SCALES; do [[ "$s" =~ ^[1-9][0-9]*$ ]] || die "B1_SCALES: '$s' is not a positive integer"; done

# --- build -----------------------------------------------------------------------------
if [[ "${B1_NO_BUILD:-}" != 1 && -z "${VAKT_BIN:-}" ]]; then
    echo "b1: cargo build --release -p vakt" >&2
    (cd "$ROOT" && cargo build --release -p vakt) || die "release build failed"
fi
[[ -x "$VAKT" ]] || die "$VAKT not found (build it with cargo build --release -p vakt)"
# Cold runs: no validation cache, if this vakt has one.
NO_CACHE=""
if "$VAKT" validate --help 2>/dev/null | grep -q -- '--no-cache'; then NO_CACHE="--no-cache"; fi
echo "b1: $VAKT (validate ${NO_CACHE:-has no cache option: every run is cold})" >&2

rm -rf "$WORK"
mkdir -p "$WORK"
: > "$WORK/points.jsonl"

# --- measure -----------------------------------------------------------------------------
# measure DIR NAME RUNS WARMUP COMMAND: writes DIR/NAME.json {"mean","stddev","runs","load",
# "cpu"}: wall time mean and stddev, user + system CPU time mean (less sensitive than wall
# time to other work on the machine), the load average before the runs.
measure() {
    local dir="$1" name="$2" runs="$3" warmup="$4" cmd="$5" load
    load="$(cut -d' ' -f1-3 /proc/loadavg)"
    if [[ "${B1_NO_HYPERFINE:-}" != 1 ]] && command -v hyperfine >/dev/null; then
        hyperfine --style basic --warmup "$warmup" --runs "$runs" -n "$name" \
            --export-json "$dir/$name.hf.json" "$cmd" >&2 \
            || die "$name failed under hyperfine"
        python3 - "$dir/$name.hf.json" "$load" > "$dir/$name.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))["results"][0]
print(json.dumps({"mean": r["mean"], "stddev": r["stddev"] or 0.0, "runs": len(r["times"]),
                  "load": sys.argv[2], "cpu": r["user"] + r["system"]}))
EOF
    else
        local i
        for ((i = 0; i < warmup; i++)); do bash -c "$cmd" || die "$name failed"; done
        : > "$dir/$name.times"
        for ((i = 0; i < runs; i++)); do
            /usr/bin/time -f "%e %U %S" -a -o "$dir/$name.times" bash -c "$cmd" || die "$name failed"
        done
        python3 - "$dir/$name.times" "$load" > "$dir/$name.json" <<'EOF'
import json, statistics, sys
rows = [[float(x) for x in l.split()] for l in open(sys.argv[1]) if l.strip()]
t = [r[0] for r in rows]
print(json.dumps({"mean": statistics.mean(t), "stddev": statistics.stdev(t) if len(t) > 1 else 0.0,
                  "runs": len(t), "load": sys.argv[2],
                  "cpu": statistics.mean(r[1] + r[2] for r in rows)}))
EOF
        echo "b1: $name: $(cat "$dir/$name.json")" >&2
    fi
}

point() { # RESULT_JSON TOOL SIZE SCHEMA_DOCS: append one point to points.jsonl
    python3 - "$@" >> "$WORK/points.jsonl" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
print(json.dumps({"bench": "B1 validate", "tool": sys.argv[2], "size": int(sys.argv[3]),
                  "unit": "documents", "schema_documents": int(sys.argv[4]),
                  "seconds": r["mean"], "stddev": r["stddev"], "runs": r["runs"],
                  "cpu_seconds": r["cpu"], "load": r["load"]}))
EOF
}

# --- every scale ---------------------------------------------------------------------------
for s in $SCALES; do
    N=$((DOCS * s))
    D="$WORK/x$s"
    REPO="$D/repo"
    mkdir -p "$D/lists" "$D/results"
    echo "b1: ${s}×: generating $N documents" >&2
    python3 "$ROOT/bench/gen_repo.py" "$REPO" "$N" >&2 || die "gen_repo.py failed"

    # Per-schema file lists for check-jsonschema (base documents with a schema; runbook
    # markdown has none, environment overlays are partial documents checked by vakt after
    # merging). Ordered by file count, largest first (for the parallel run).
    python3 "$ROOT/bench/gen_repo.py" --list-kinds "$REPO" > "$D/lists/all.tsv"
    KINDS=$(cut -f1 "$D/lists/all.tsv" | sort | uniq -c | sort -rn | awk '{print $2}')
    for k in $KINDS; do
        awk -F'\t' -v k="$k" '$1 == k { print $2 }' "$D/lists/all.tsv" > "$D/lists/$k"
        [[ -f "$ROOT/schemas/$k.schema.json" ]] || die "no schema for kind $k"
    done
    SCHEMA_DOCS=$(wc -l < "$D/lists/all.tsv")
    NKINDS=$(echo $KINDS | wc -w)

    # One process per schema, with all its files; fails if any fails.
    cat > "$D/cjs_one.sh" <<EOF
#!/usr/bin/env bash
# Generated by bench/b1_validate.sh: check-jsonschema on one schema's files.
set -u
cd "$REPO"
mapfile -t files < "$D/lists/\$1"
check-jsonschema --schemafile "$ROOT/schemas/\$1.schema.json" "\${files[@]}" > /dev/null \
    || { echo "check-jsonschema failed for \$1" >&2; exit 1; }
EOF
    cat > "$D/cjs_seq.sh" <<EOF
#!/usr/bin/env bash
# Generated by bench/b1_validate.sh: one check-jsonschema process per schema, in turn.
set -u
rc=0
for k in $(echo $KINDS); do bash "$D/cjs_one.sh" "\$k" || rc=1; done
exit \$rc
EOF
    cat > "$D/cjs_par.sh" <<EOF
#!/usr/bin/env bash
# Generated by bench/b1_validate.sh: the same processes, $NPROC at a time, largest first.
set -u
printf '%s\n' $(echo $KINDS) | xargs -P $NPROC -n 1 bash "$D/cjs_one.sh"
EOF

    CMD_VAKT="$VAKT validate --repo $REPO --now $NOW --format json $NO_CACHE > /dev/null"

    # --- every command once, showing its output on failure ---------------------------------
    echo "b1: ${s}×: checking that every command succeeds on the generated repo" >&2
    # shellcheck disable=SC2086
    if ! "$VAKT" validate --repo "$REPO" --now "$NOW" $NO_CACHE > "$D/vakt-validate.txt" 2>&1; then
        cat "$D/vakt-validate.txt" >&2
        die "vakt validate reports errors on the generated repo"
    fi
    tail -n 1 "$D/vakt-validate.txt" >&2
    bash "$D/cjs_seq.sh" || die "check-jsonschema reports errors on the generated repo"

    echo "b1: ${s}×: measuring $N documents ($NPROC cores, load $(cut -d' ' -f1-3 /proc/loadavg))" >&2
    measure "$D/results" vakt "$RUNS" 3 "$CMD_VAKT"
    measure "$D/results" check-jsonschema "$SLOW_RUNS" 0 "bash $D/cjs_seq.sh"
    point "$D/results/vakt.json" "vakt validate" "$N" "$SCHEMA_DOCS"
    point "$D/results/check-jsonschema.json" "check-jsonschema" "$N" "$SCHEMA_DOCS"
    if [[ "$PARALLEL" != 0 ]]; then
        measure "$D/results" check-jsonschema-par "$SLOW_RUNS" 0 "bash $D/cjs_par.sh"
        point "$D/results/check-jsonschema-par.json" "check-jsonschema ×$NPROC" "$N" "$SCHEMA_DOCS"
    fi
    if [[ "$s" == "$(echo $SCALES | cut -d' ' -f1)" ]]; then
        promtool check rules "$REPO"/alerts/*.yaml > "$D/promtool.txt" 2>&1 \
            || { cat "$D/promtool.txt" >&2; die "promtool check rules failed"; }
        measure "$D/results" promtool "$RUNS" 3 "promtool check rules $REPO/alerts/*.yaml > /dev/null"
        measure "$D/results" check-jsonschema-tenant "$SLOW_RUNS" 0 "bash $D/cjs_one.sh tenant"
        echo "$(wc -l < "$D/lists/tenant") $(ls "$REPO"/alerts/*.yaml | wc -l)" > "$D/results/counts"
        FIRST="$D"
    fi
    echo "$N $SCHEMA_DOCS $NKINDS" > "$D/results/size"
done

python3 -c 'import json,sys; json.dump([json.loads(l) for l in open(sys.argv[1])], open(sys.argv[2], "w"), indent=1)' \
    "$WORK/points.jsonl" "$WORK/points.json"

# --- report ------------------------------------------------------------------------------
python3 - "$ROOT/bench" "$WORK" "$FIRST" "$NPROC" <<'EOF'
import json, os, sys
sys.path.insert(0, sys.argv[1])
from plot import fit
work, first, nproc = sys.argv[2], sys.argv[3], sys.argv[4]
pts = json.load(open(f"{work}/points.json"))
def t(x): return f"{x * 1000:.1f} ms" if x < 1 else f"{x:.3f} s"
sizes = sorted({p["size"] for p in pts})
tools = [x for x in ("vakt validate", "check-jsonschema", f"check-jsonschema ×{nproc}")
         if any(p["tool"] == x for p in pts)]
by = {(p["tool"], p["size"]): p for p in pts}
print()
print("Totals (wall time, mean ± stddev; the ratio is the peer's time over vakt's):")
print()
print("| documents (schema-checked) | load | " + " | ".join(tools) + " | " +
      " | ".join(f"{x} / vakt" for x in tools[1:]) + " |")
print("|---|---|" + "---|" * (2 * len(tools) - 1))
for n in sizes:
    v = by[("vakt validate", n)]
    cells = [f"{t(by[(x, n)]['seconds'])} ± {t(by[(x, n)]['stddev'])} ({by[(x, n)]['runs']})" for x in tools]
    ratios = [f"**{by[(x, n)]['seconds'] / v['seconds']:.1f}×**" for x in tools[1:]]
    print(f"| {n:,} ({v['schema_documents']:,}) | {v['load']} | " + " | ".join(cells + ratios) + " |")
print()
print("CPU time (user + system, mean per run; less sensitive than wall time to other work on "
      "the machine):")
print()
print("| documents | " + " | ".join(tools) + " | " + " | ".join(f"{x} / vakt" for x in tools[1:]) + " |")
print("|---|" + "---|" * (2 * len(tools) - 1))
for n in sizes:
    v = by[("vakt validate", n)]
    print(f"| {n:,} | " + " | ".join(t(by[(x, n)]["cpu_seconds"]) for x in tools) + " | " +
          " | ".join(f"{by[(x, n)]['cpu_seconds'] / v['cpu_seconds']:.1f}×" for x in tools[1:]) + " |")
if len(sizes) >= 2:
    print()
    print("Marginal cost per document (least-squares slope of wall time against documents over "
          f"{', '.join(f'{n:,}' for n in sizes)}) and the fixed cost (intercept):")
    print()
    print("| tool | wall per document | fixed wall | wall per document / vakt's | "
          "CPU per document | fixed CPU | CPU per document / vakt's |")
    print("|---|---|---|---|---|---|---|")
    vs, _ = fit([(n, by[("vakt validate", n)]["seconds"]) for n in sizes])
    vc, _ = fit([(n, by[("vakt validate", n)]["cpu_seconds"]) for n in sizes])
    for x in tools:
        slope, icpt = fit([(n, by[(x, n)]["seconds"]) for n in sizes])
        cslope, cicpt = fit([(n, by[(x, n)]["cpu_seconds"]) for n in sizes])
        print(f"| {x} | {slope * 1e6:.1f} µs | {t(icpt)} | **{slope / vs:.1f}×** | "
              f"{cslope * 1e6:.1f} µs | {t(cicpt)} | **{cslope / vc:.1f}×** |")
r = {n: json.load(open(f"{first}/results/{n}.json"))
     for n in ("vakt", "check-jsonschema-tenant", "promtool")}
ntenant, nrules = open(f"{first}/results/counts").read().split()
v = r["vakt"]["mean"]
print()
print(f"At {sizes[0]:,} documents: check-jsonschema over the {int(ntenant):,} tenant files alone "
      f"(one process) {t(r['check-jsonschema-tenant']['mean'])} ± "
      f"{t(r['check-jsonschema-tenant']['stddev'])}, "
      f"{r['check-jsonschema-tenant']['mean'] / v:.1f}× vakt's whole repo ({t(v)}); "
      f"promtool check rules ({nrules} rule files only, also part of vakt's run) "
      f"{t(r['promtool']['mean'])} ± {t(r['promtool']['stddev'])}, {r['promtool']['mean'] / v:.2f}× vakt.")
n0 = sizes[0]
ratio = by[("check-jsonschema", n0)]["seconds"] / by[("vakt validate", n0)]["seconds"]
line = (f"Goal ≥ 20× (total, cold, one process per schema) at {n0:,} documents: {ratio:.1f}× "
        f"({'met' if ratio >= 20 else 'NOT met'})")
if len(sizes) >= 2:
    cs, _ = fit([(n, by[("check-jsonschema", n)]["seconds"]) for n in sizes])
    cc, _ = fit([(n, by[("check-jsonschema", n)]["cpu_seconds"]) for n in sizes])
    line += (f"; per document: wall {cs / vs:.1f}× ({'met' if cs / vs >= 20 else 'NOT met'}), "
             f"CPU {cc / vc:.1f}× ({'met' if cc / vc >= 20 else 'NOT met'})")
print(line + ".")
EOF
