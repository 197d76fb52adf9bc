#!/usr/bin/env bash
# Benchmark B1-incremental: `vakt validate --rev HEAD` on a generated ops repo (50,000 documents
# by default) after a one-file commit, with the validation cache (parses cached by blob id):
#   a. no-cache    vakt validate --rev HEAD --no-cache           (every blob read and parsed)
#   b. cold        the cache directory empty before each run     (parse all, then write the cache)
#   c. warm-pr     the cache as a run on HEAD~1 left it: the PR check (one file changed;
#                  one parse, one entry appended to the cache log)
#   d. warm-same   the cache already holds HEAD (no parse, nothing written)
# Goal: warm-pr <= 100 ms wall on 2 cores.
#
# Usage: bash bench/b1_incremental.sh
# Environment:
#   B1I_DOCS        documents in the generated repo (default 50000)
#   B1I_OUT         work directory (default bench/out/b1i, git-ignored); recreated
#   B1I_RUNS        measured runs per case (default 10)
#   B1I_NO_BUILD=1  skip `cargo build --release -p vakt`
#   VAKT_BIN        the vakt binary to measure (default: the release build; implies
#                   B1I_NO_BUILD=1), e.g. a copy of main's build for an A/B comparison
#   B1I_NO_HYPERFINE=1  use the /usr/bin/time loop even if hyperfine is installed
# Prints one JSON line on stdout: {"docs", "cores", "loadavg_before", "loadavg_after",
# "no_cache_ms", "cold_ms", "warm_pr_ms", "warm_same_ms" (means; *_stddev_ms, *_median_ms and
# *_min_ms beside each; the goal is judged on the mean),
# "cache_bytes", "goal_ms", "goal_met"}. Progress goes to stderr.
# Exits non-zero if the build, the generator, git or any measured command fails, or if the
# cached and uncached runs disagree.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DOCS="${B1I_DOCS:-50000}"
WORK="${B1I_OUT:-$ROOT/bench/out/b1i}"
RUNS="${B1I_RUNS:-10}"
NOW="2026-11-22"
VAKT="${VAKT_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/vakt}"
[[ -n "${VAKT_BIN:-}" ]] && B1I_NO_BUILD=1

die() { echo "b1i: $*" >&2; exit 1; }
for tool in python3 git; do
    command -v "$tool" >/dev/null || die "$tool is not installed"
done

# --- build -----------------------------------------------------------------------------
if [[ "${B1I_NO_BUILD:-}" != 1 ]]; then
    echo "b1i: cargo build --release -p vakt" >&2
    (cd "$ROOT" && cargo build --release -p vakt) || die "release build failed"
fi
[[ -x "$VAKT" ]] || die "$VAKT not found (build it with cargo build --release -p vakt)"

# --- generate: HEAD~1 = the generated repo, HEAD = one tenant's tier changed -------------------
rm -rf "$WORK"
mkdir -p "$WORK/results"
REPO="$WORK/repo"
python3 "$ROOT/bench/gen_repo.py" "$REPO" "$DOCS" >&2 || die "gen_repo.py failed"
g() { git -C "$REPO" -c user.name=bench -c user.email=bench@vakt.invalid "$@"; }
g init -q -b main || die "git init failed"
g add -A && g commit -q -m generated || die "git commit failed"
ONE=$(cd "$REPO" && ls config/tenants/*/tenant.toml | tail -n 1)
python3 - "$REPO/$ONE" <<'EOF' || die "editing $ONE failed"
import re, sys
p = sys.argv[1]
t = open(p).read()
n = re.sub(r'(?m)^name = "(.*)"$', r'name = "\1 (renamed)"', t, count=1)
if n == t:
    sys.exit(f"no name line in {p}")
open(p, "w").write(n)
EOF
g commit -q -am "rename one tenant" || die "git commit failed"
echo "b1i: HEAD changes $ONE" >&2

C="$WORK/cache"        # the cache the measured runs use
PR="$WORK/cache-pr"    # the cache as validating HEAD~1 left it
SAME="$WORK/cache-same" # the cache as validating HEAD left it
BASE="$VAKT validate --repo $REPO --now $NOW --format json"

# --- check: cached and uncached runs agree and succeed -------------------------------------------
"$VAKT" validate --repo "$REPO" --rev HEAD~1 --now "$NOW" --cache-dir "$PR" > /dev/null \
    || die "vakt validate --rev HEAD~1 failed (findings on the generated repo?)"
$BASE --rev HEAD --no-cache > "$WORK/no-cache.json" || die "vakt validate --no-cache failed"
rm -rf "$SAME" && cp -a "$PR" "$SAME"
$BASE --rev HEAD --cache-dir "$SAME" > "$WORK/cached.json" || die "cached vakt validate failed"
cmp -s "$WORK/no-cache.json" "$WORK/cached.json" || die "cached and --no-cache findings differ"
$BASE --rev HEAD --cache-dir "$SAME" > "$WORK/cached2.json" || die "warm vakt validate failed"
cmp -s "$WORK/no-cache.json" "$WORK/cached2.json" || die "warm and --no-cache findings differ"
# The cache file's name depends on the cache format (validate-v1.bin before the log).
CACHE_BYTES=$(find "$SAME" -maxdepth 1 -name 'validate-v*' ! -name '*.lock' -printf '%s\n' | head -n 1)
[[ -n "$CACHE_BYTES" ]] || die "no cache file in $SAME"

# --- measure -----------------------------------------------------------------------------
measure() {  # name prepare command
    local name="$1" prep="$2" cmd="$3"
    if [[ "${B1I_NO_HYPERFINE:-}" != 1 ]] && command -v hyperfine >/dev/null; then
        hyperfine --style basic --warmup 2 --runs "$RUNS" -n "$name" --prepare "$prep" \
            --export-json "$WORK/results/$name.hf.json" "$cmd" >&2 \
            || die "$name failed under hyperfine"
        python3 - "$WORK/results/$name.hf.json" > "$WORK/results/$name.json" <<'EOF'
import json, statistics, sys
r = json.load(open(sys.argv[1]))["results"][0]
t = r["times"]
print(json.dumps({"mean": r["mean"], "stddev": r["stddev"] or 0.0, "median": statistics.median(t),
                  "min": min(t), "runs": len(t)}))
EOF
    else
        local i
        : > "$WORK/results/$name.times"
        for ((i = 0; i < RUNS + 2; i++)); do
            bash -c "$prep" || die "$name: prepare failed"
            if ((i < 2)); then bash -c "$cmd" || die "$name failed"; continue; fi
            /usr/bin/time -f %e -a -o "$WORK/results/$name.times" bash -c "$cmd" \
                || die "$name failed"
        done
        python3 - "$WORK/results/$name.times" > "$WORK/results/$name.json" <<'EOF'
import json, statistics, sys
t = [float(x) for x in open(sys.argv[1]).read().split()]
print(json.dumps({"mean": statistics.mean(t),
                  "stddev": statistics.stdev(t) if len(t) > 1 else 0.0,
                  "median": statistics.median(t), "min": min(t), "runs": len(t)}))
EOF
    fi
    echo "b1i: $name: $(cat "$WORK/results/$name.json")" >&2
}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
echo "b1i: measuring ($(nproc) cores, load average $LOAD_BEFORE)" >&2
measure no-cache "true" "$BASE --rev HEAD --no-cache > /dev/null"
measure cold "rm -rf $C" "$BASE --rev HEAD --cache-dir $C > /dev/null"
measure warm-pr "rm -rf $C && cp -a $PR $C" "$BASE --rev HEAD --cache-dir $C > /dev/null"
measure warm-same "rm -rf $C && cp -a $SAME $C" "$BASE --rev HEAD --cache-dir $C > /dev/null"
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

python3 - "$WORK/results" "$DOCS" "$(nproc)" "$LOAD_BEFORE" "$LOAD_AFTER" "$CACHE_BYTES" <<'EOF'
import json, sys
d, docs, cores, lb, la, cache_bytes = sys.argv[1:7]
r = {n: json.load(open(f"{d}/{n}.json")) for n in ("no-cache", "cold", "warm-pr", "warm-same")}
out = {"docs": int(docs), "cores": int(cores), "loadavg_before": lb, "loadavg_after": la}
for n, m in r.items():
    k = n.replace("-", "_")
    out[f"{k}_ms"] = round(m["mean"] * 1000, 1)
    out[f"{k}_stddev_ms"] = round(m["stddev"] * 1000, 1)
    out[f"{k}_median_ms"] = round(m["median"] * 1000, 1)
    out[f"{k}_min_ms"] = round(m["min"] * 1000, 1)
out["runs"] = r["warm-pr"]["runs"]
out["cache_bytes"] = int(cache_bytes)
out["goal_ms"] = 100
out["goal_met"] = out["warm_pr_ms"] <= 100
print(json.dumps(out))
EOF
