#!/usr/bin/env bash
# Benchmark B5: `vakt site build` for 5,000 runbooks against Hugo (Debian's `hugo`) building
# the same markdown in the same run.
#   vakt       vakt site build --repo OUT/repo --out OUT/site --now 2026-11-22
#              (every page of the operator site: 5,000 runbook pages and 5,000 catalog API
#              JSON files, lists by id/group/owner, maps, dashboards, DR/inventory/sites views,
#              the search index; ~10,100 files)
#   hugo       hugo --quiet -s OUT/hugo -d public       (same markdown, one HTML page each)
#   hugo-json  hugo --quiet -s OUT/hugo-json -d public  (same, plus one JSON file per runbook)
# Three scenarios, each tool measured in the same hyperfine run:
#   cold     there is no output directory before any run: --prepare (untimed) moves the
#            previous run's output into OUT/retired (a rename; nothing is deleted) and runs
#            `sync`, and OUT/retired is removed after the last scenario. Deleting the outputs
#            there instead (as before session 8) charged the deletion to the next timed run of
#            EITHER tool: ext4 without a journal skips inodes freed in the last 30 s
#            (dirty_expire_centisecs) whose inode-table block is dirty again, and rescans
#            them on every allocation, which made cold runs 2-3x slower and very noisy.
#            Disk: about 150 MB per run and tool until the end of the script.
#   no-op    rebuild over the previous output, nothing changed
#   one-edit rebuild after one runbook's markdown changed (the same file edited for every
#            tool by --prepare, untimed)
# and, for each, how many files the rebuild wrote (files newer than a stamp taken before it).
#
# Usage: bash bench/b5_site.sh
# Environment:
#   B5_RUNBOOKS     runbooks in the generated repo (default 5000)
#   B5_OUT          work directory (default bench/out/b5, git-ignored); recreated
#   B5_RUNS         measured runs per tool and scenario (default 10)
#   B5_NO_BUILD=1   skip `cargo build --release -p vakt`
#   VAKT_BIN        the vakt binary (default target/release/vakt; B5_NO_BUILD is implied)
#   B5_KEEP=1       keep the retired outputs and the previous work directory instead of
#                   deleting them when the script ends (the caller deletes them later): for
#                   A/B runs back to back, where the end of one run's deletions would charge
#                   ext4's skipping of freed inodes to the next run's cold builds
#   B5_SETTLE       seconds that must have passed since the previous run's clean-up before
#                   anything is measured (default 360; 0 measures at once). ext4 without a
#                   journal will not hand out an inode freed in the last 60 s, or 360 s while
#                   its inode-table block is dirty, and each new inode rescans the skipped ones:
#                   Hugo (and vakt before session 10) creating 10,000-15,000 inodes beside the
#                   ~100,000 files the previous run deleted paid seconds of system time for it.
#                   The script waits out that window (it prints how long) instead of charging it
#                   to whichever tool runs first. The time of the clean-up is kept in
#                   OUT.cleaned-at.
# Raw figures: OUT/results/{cold,no-op,one-edit}.json (hyperfine's JSON, with the load
# average when the scenario started in OUT/results/load.txt).
# Needs hyperfine and hugo (apt-get install -y hyperfine hugo).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
N="${B5_RUNBOOKS:-5000}"
WORK="${B5_OUT:-$ROOT/bench/out/b5}"
RUNS="${B5_RUNS:-10}"
NOW="2026-11-22"
VAKT="${VAKT_BIN:-$ROOT/target/release/vakt}"

die() { echo "b5: $*" >&2; exit 1; }
for tool in python3 hugo hyperfine; do
    command -v "$tool" >/dev/null || die "$tool is not installed"
done
if [[ "${B5_NO_BUILD:-}" != 1 && -z "${VAKT_BIN:-}" ]]; then
    echo "b5: cargo build --release -p vakt" >&2
    (cd "$ROOT" && cargo build --release -p vakt) || die "release build failed"
fi
[[ -x "$VAKT" ]] || die "$VAKT not found"

# The previous run's work directory is moved aside and deleted when this run ends: deleting
# tens of thousands of files just before the cold runs would charge ext4's skipping of
# recently deleted inodes to whichever tool is measured first.
OLD="$WORK.old.$$"
if [[ -e "$WORK" ]]; then mv "$WORK" "$OLD"; fi
python3 "$ROOT/bench/gen_runbooks.py" "$WORK" "$N" || die "gen_runbooks.py failed"
mkdir -p "$WORK/results"
: > "$WORK/results/load.txt"
"$VAKT" validate --repo "$WORK/repo" --now "$NOW" | tail -n 1 >&2 \
    || die "the generated repo does not validate"

CMD_VAKT="$VAKT site build --repo $WORK/repo --out $WORK/site --now $NOW --format json > /dev/null"
CMD_HUGO="hugo --quiet -s $WORK/hugo -d public"
CMD_HUGO_JSON="hugo --quiet -s $WORK/hugo-json -d public"
# cold runs start without an output; the previous run's output is retired, not deleted (see
# the header), and the retired outputs are removed at the end
RETIRED="$WORK/retired"
CLEANED_AT="$WORK.cleaned-at"
if [[ "${B5_KEEP:-}" == 1 ]]; then
    trap 'echo "b5: kept $RETIRED${OLD:+ and $OLD} (B5_KEEP=1); delete them when done" >&2' EXIT
else
    trap 'rm -rf "$RETIRED" "$OLD"; date +%s > "$CLEANED_AT"' EXIT
fi
cat > "$WORK/results/retire.sh" <<EOF
#!/usr/bin/env bash
set -e
d=\$(mktemp -d "$RETIRED/run.XXXXXX")
for out in "$WORK/site" "$WORK/hugo/public" "$WORK/hugo-json/public"; do
    if [[ -e "\$out" ]]; then mkdir -p "\$d\$out" && mv "\$out" "\$d\$out/"; fi
done
sync
EOF
mkdir -p "$RETIRED"
CLEAN="bash $WORK/results/retire.sh"
# the runbook edited by the one-edit scenario, in the vakt repo and in both Hugo sites
EDIT_ID=$(cd "$WORK/repo/runbooks" && ls gen.*.r00001.md | head -n 1)
EDIT_ID="${EDIT_ID%.md}"
EDIT="for f in $WORK/repo/runbooks/$EDIT_ID.md $WORK/hugo/content/runbooks/$EDIT_ID.md $WORK/hugo-json/content/runbooks/$EDIT_ID.md; do printf '\\nEdited at %s.\\n' \$(date +%s%N) >> \$f; done"

# every command once, unmeasured, must succeed
"$VAKT" site build --repo "$WORK/repo" --out "$WORK/site" --now "$NOW" --format json \
    > "$WORK/results/vakt-report.json" || die "vakt site build failed"
$CMD_HUGO || die "hugo failed"
$CMD_HUGO_JSON || die "hugo (json) failed"
FILES_VAKT=$(find "$WORK/site" -type f | wc -l)
FILES_HUGO=$(find "$WORK/hugo/public" -type f | wc -l)
FILES_HUGO_JSON=$(find "$WORK/hugo-json/public" -type f | wc -l)

# files each tool writes in a scenario: run it once more after a stamp, count newer files
written() { # scenario
    local stamp="$WORK/results/stamp" out
    if [[ "$1" == one-edit ]]; then bash -c "$EDIT"; fi
    for tool in vakt hugo hugo-json; do
        case $tool in
            vakt) out="$WORK/site"; cmd="$CMD_VAKT" ;;
            hugo) out="$WORK/hugo/public"; cmd="$CMD_HUGO" ;;
            hugo-json) out="$WORK/hugo-json/public"; cmd="$CMD_HUGO_JSON" ;;
        esac
        # no-op: a first run takes in what earlier scenarios changed; the counted run follows
        if [[ "$1" == no-op ]]; then bash -c "$cmd" || die "$tool failed"; fi
        touch "$stamp"; sleep 0.05
        bash -c "$cmd" || die "$tool failed"
        echo "$1 $tool $(find "$out" -type f -newer "$stamp" | wc -l)"
    done
}

# wait until inodes the previous run freed are handed out again without a rescan (see B5_SETTLE)
SETTLE="${B5_SETTLE:-360}"
[[ "$SETTLE" =~ ^[0-9]+$ ]] || die "B5_SETTLE must be a number of seconds, not '$SETTLE'"
if [[ -r "$CLEANED_AT" ]]; then
    cleaned=$(head -c 20 "$CLEANED_AT" | tr -cd '0-9')
    wait_s=$(( ${cleaned:-0} + SETTLE - $(date +%s) ))
    if (( wait_s > 0 )); then
        echo "b5: the previous run deleted its outputs $(( SETTLE - wait_s )) s ago; waiting ${wait_s} s until ext4 reuses those inodes without a rescan (B5_SETTLE=0 skips)" >&2
        sleep "$wait_s"
    fi
fi
echo "b5: measuring cold builds ($(nproc) cores)" >&2
echo "cold $(cut -d' ' -f1-3 /proc/loadavg)" >> "$WORK/results/load.txt"
hyperfine --style basic --runs "$RUNS" --prepare "$CLEAN" \
    -n vakt "$CMD_VAKT" -n hugo "$CMD_HUGO" -n hugo-json "$CMD_HUGO_JSON" \
    --export-json "$WORK/results/cold.json" >&2 || die "a measured command failed"
echo "b5: measuring no-op rebuilds" >&2
echo "no-op $(cut -d' ' -f1-3 /proc/loadavg)" >> "$WORK/results/load.txt"
hyperfine --style basic --runs "$RUNS" --warmup 1 \
    -n vakt "$CMD_VAKT" -n hugo "$CMD_HUGO" -n hugo-json "$CMD_HUGO_JSON" \
    --export-json "$WORK/results/no-op.json" >&2 || die "a measured command failed"
echo "b5: measuring rebuilds after one runbook edit" >&2
echo "one-edit $(cut -d' ' -f1-3 /proc/loadavg)" >> "$WORK/results/load.txt"
hyperfine --style basic --runs "$RUNS" --warmup 1 --prepare "$EDIT" \
    -n vakt "$CMD_VAKT" -n hugo "$CMD_HUGO" -n hugo-json "$CMD_HUGO_JSON" \
    --export-json "$WORK/results/one-edit.json" >&2 || die "a measured command failed"
{ written no-op; written one-edit; } > "$WORK/results/written.txt"

python3 - "$WORK/results" "$FILES_VAKT" "$FILES_HUGO" "$FILES_HUGO_JSON" <<'PY'
import json, sys
d, fv, fh, fhj = sys.argv[1], *map(int, sys.argv[2:5])
rep = json.load(open(f"{d}/vakt-report.json"))
files = {"vakt": fv, "hugo": fh, "hugo-json": fhj}
written = {}
for line in open(f"{d}/written.txt"):
    scen, tool, n = line.split()
    written[(scen, tool)] = int(n)
print("| scenario | tool | files in output | files written | wall time (mean ± stddev) | user + sys CPU | runs | time / vakt |")
print("|---|---|---|---|---|---|---|---|")
for scen in ("cold", "no-op", "one-edit"):
    hf = {r["command"]: r for r in json.load(open(f"{d}/{scen}.json"))["results"]}
    v = hf["vakt"]["mean"]
    for name in ("vakt", "hugo", "hugo-json"):
        r = hf[name]
        w = files[name] if scen == "cold" else written[(scen, name)]
        print(f"| {scen} | {name} | {files[name]} | {w} | {r['mean']:.3f} s ± {r['stddev']:.3f} s | "
              f"{r['user']:.2f} + {r['system']:.2f} s | {len(r['times'])} | {r['mean'] / v:.2f}× |")
s = rep["search"]
print()
print(f"vakt: {rep['pages']} HTML pages, {rep['runbooks']} runbooks, {rep['files']} files, "
      f"{rep['bytes'] / 1024 / 1024:.1f} MiB")
print(f"search index: first download {s['first_download_bytes']} B (search/meta.json); "
      f"worst one-word query {s['worst_single_word_query_bytes'] / 1024:.1f} KiB "
      f"(meta + largest term shard + largest doc chunk); whole index "
      f"{s['total_bytes'] / 1024 / 1024:.2f} MiB")
PY
