#!/usr/bin/env bash
# Benchmark B5: `vakt site build` for 5,000 runbooks against Hugo (Debian's `hugo`) building
# the same markdown in the same run.
#   a. vakt site build --repo OUT/repo --out OUT/site --now 2026-11-22
#      (every page of the operator site: 5,000 runbook pages, lists by id/group/owner, maps,
#      dashboards, DR/inventory/sites views, the catalog JSON API and the search index)
#   b. hugo --quiet -s OUT/hugo -d OUT/hugo-public
#      (the same 5,000 markdown bodies, one page each plus list pages, minimal layout)
#
# Usage: bash bench/b5_site.sh
# Environment:
#   B5_RUNBOOKS     runbooks in the generated repo (default 5000)
#   B5_OUT          work directory (default bench/out/b5, git-ignored); recreated
#   B5_RUNS         measured runs of each tool (default 10)
#   B5_NO_BUILD=1   skip `cargo build --release -p vakt`
# Needs hyperfine and hugo (apt-get install -y hyperfine hugo).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
N="${B5_RUNBOOKS:-5000}"
WORK="${B5_OUT:-$ROOT/bench/out/b5}"
RUNS="${B5_RUNS:-10}"
NOW="2026-11-22"
VAKT="$ROOT/target/release/vakt"

die() { echo "b5: $*" >&2; exit 1; }
for tool in python3 hugo hyperfine; do
    command -v "$tool" >/dev/null || die "$tool is not installed"
done
if [[ "${B5_NO_BUILD:-}" != 1 ]]; then
    echo "b5: cargo build --release -p vakt" >&2
    (cd "$ROOT" && cargo build --release -p vakt) || die "release build failed"
fi
[[ -x "$VAKT" ]] || die "$VAKT not found"

python3 "$ROOT/bench/gen_runbooks.py" "$WORK" "$N" || die "gen_runbooks.py failed"
mkdir -p "$WORK/results"

CMD_VAKT="$VAKT site build --repo $WORK/repo --out $WORK/site --now $NOW --format json > /dev/null"
CMD_HUGO="hugo --quiet -s $WORK/hugo -d $WORK/hugo-public"

# every command once, unmeasured, must succeed
"$VAKT" site build --repo "$WORK/repo" --out "$WORK/site" --now "$NOW" --format json \
    > "$WORK/results/vakt-report.json" || die "vakt site build failed"
$CMD_HUGO || die "hugo failed"
HUGO_PAGES=$(find "$WORK/hugo-public" -name '*.html' | wc -l)

echo "b5: measuring ($(nproc) cores)" >&2
hyperfine --style basic --warmup 1 --runs "$RUNS" \
    -n vakt "$CMD_VAKT" -n hugo "$CMD_HUGO" \
    --export-json "$WORK/results/hyperfine.json" --export-markdown "$WORK/results/hyperfine.md" >&2 \
    || die "a measured command failed"

python3 - "$WORK/results" "$HUGO_PAGES" <<'PY'
import json, sys
d, hugo_pages = sys.argv[1], int(sys.argv[2])
rep = json.load(open(f"{d}/vakt-report.json"))
hf = {r["command"]: r for r in json.load(open(f"{d}/hyperfine.json"))["results"]}
v, h = hf["vakt"], hf["hugo"]
s = rep["search"]
print(f"| tool | pages | wall time (mean ± stddev) | runs | time / vakt |")
print(f"|---|---|---|---|---|")
print(f"| vakt site build | {rep['pages']} HTML ({rep['runbooks']} runbooks), {rep['files']} files | "
      f"{v['mean']:.3f} s ± {v['stddev']:.3f} s | {len(v['times'])} | 1.0× |")
print(f"| hugo | {hugo_pages} HTML | {h['mean']:.3f} s ± {h['stddev']:.3f} s | {len(h['times'])} | "
      f"{h['mean'] / v['mean']:.2f}× |")
print()
print(f"search index: first download {s['first_download_bytes']} B (meta.json); "
      f"worst one-word query {s['worst_single_word_query_bytes'] / 1024:.1f} KiB; "
      f"whole index {s['total_bytes'] / 1024 / 1024:.2f} MiB")
PY
