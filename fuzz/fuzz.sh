#!/usr/bin/env bash
# Coverage-guided fuzzing of vakt's loaders with cargo-afl (AFL++). See RELIABILITY.md, "Fuzzing".
#
#   fuzz/fuzz.sh check [SECONDS]    bounded run of every target (default 6 s each); exits 1 and
#                                   prints each reproducer path if any target crashed
#   fuzz/fuzz.sh long SECONDS [T..] longer runs (all targets, or the ones named), then prints
#                                   execs_done, edges found and bitmap coverage per target
#   fuzz/fuzz.sh stats              prints the figures of the last runs again
#   fuzz/fuzz.sh seed               regenerates fuzz/corpus/<target>/ from the bundled repo and
#                                   tests/fixtures (make_seeds), minimised with afl-cmin.bash
#   fuzz/fuzz.sh repro TARGET FILE  runs one input through an instrumented target (a crash shows
#                                   its panic message and backtrace)
#
# Needs cargo-afl (`cargo install cargo-afl`, then `cargo afl config --build`); scripts/test.sh
# installs both when missing. Runs use fuzz/out/ (ignored by Git) and fuzz/target/.
set -euo pipefail
cd "$(dirname "$0")"
FUZZ_DIR="$PWD"
REPO="$(cd .. && pwd)"
TARGETS=(parse_toml parse_yaml parse_json overlay markdown logql promql snippets saved_plan backup)
export CARGO_TARGET_DIR="$FUZZ_DIR/target"
# Shared, loaded machines: no CPU binding, no CPU-governor or core_pattern demands, no UI.
export AFL_NO_AFFINITY=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1
export AFL_NO_UI=1 AFL_FAST_CAL=1
# The overlay target parses files in parallel with rayon: one thread keeps runs reproducible.
export RAYON_NUM_THREADS=1
# Optimisation of the instrumented build (cargo-afl defaults to 3): 1 builds several times
# faster on a small CI machine for a modest loss of executions per second.
export AFL_OPT_LEVEL="${AFL_OPT_LEVEL:-1}"
# cargo-afl's own AFL++ tools first: afl-cmin would otherwise pick up an older afl-showmap from
# PATH (Debian's afl++ 4.04c lacks options the 4.40c afl-cmin passes, and afl-cmin then hangs).
AFL_BIN=""
for d in "${XDG_DATA_HOME:-$HOME/.local/share}"/afl.rs/rustc-"$(rustc -V | cut -d' ' -f2)"-*/afl.rs-*/afl/bin; do
  [ -x "$d/afl-fuzz" ] && AFL_BIN="$d"
done
if [ -z "$AFL_BIN" ]; then
  echo "fuzz.sh: no AFL++ built by cargo-afl for $(rustc -V); run: cargo install cargo-afl && cargo afl config --build" >&2
  exit 2
fi
export PATH="$AFL_BIN:$PATH" AFL_PATH="$AFL_BIN"

build() {
  echo "==> cargo afl build --release (fuzz targets)"
  cargo afl build --release --quiet
}

# run TARGET SECONDS: one afl-fuzz run from the committed corpus into out/TARGET.
run() {
  local t="$1" secs="$2"
  rm -rf "out/$t"
  mkdir -p out
  # -t: 2 s per input, far above any input's cost, so a loaded machine does not report hangs.
  # afl-fuzz itself, not `cargo afl fuzz`: that one always adds `-c0` (CmpLog from the same
  # binary), and a stable-Rust build has no CmpLog instrumentation: every input then times out.
  if ! afl-fuzz -i "corpus/$t" -o "out/$t" -V "$secs" -t 2000 -- "target/release/$t" \
      >"out/$t.log" 2>&1; then
    echo "!! afl-fuzz failed on target $t (see fuzz/out/$t.log):" >&2
    tail -n 15 "out/$t.log" >&2
    return 1
  fi
}

stat() { sed -n "s/^$2 *: *//p" "out/$1/default/fuzzer_stats" 2>/dev/null | head -n1; }

report() {
  printf '%-11s %12s %9s %8s %13s %8s %6s\n' target seconds execs exec/s edges bitmap crashes
  for t in "$@"; do
    [ -f "out/$t/default/fuzzer_stats" ] || continue
    printf '%-11s %12s %9s %8s %13s %8s %6s\n' "$t" "$(stat "$t" run_time)" \
      "$(stat "$t" execs_done)" "$(stat "$t" execs_per_sec)" \
      "$(stat "$t" edges_found)/$(stat "$t" total_edges)" "$(stat "$t" bitmap_cvg)" \
      "$(stat "$t" saved_crashes)"
  done
}

# crashes TARGET...: prints every reproducer and fails if there is one.
crashes() {
  local found=0
  for t in "$@"; do
    for f in "out/$t"/default/crashes/id:*; do
      [ -e "$f" ] || continue
      found=1
      echo "!! $t crashed; reproducer: $FUZZ_DIR/$f" >&2
      echo "   replay: fuzz/fuzz.sh repro $t $FUZZ_DIR/$f" >&2
    done
  done
  return "$found"
}

cmd="${1:-check}"
case "$cmd" in
  check)
    secs="${2:-6}"
    build
    failed=0
    for t in "${TARGETS[@]}"; do
      echo "==> fuzz $t for ${secs}s"
      run "$t" "$secs" || failed=1
    done
    report "${TARGETS[@]}"
    crashes "${TARGETS[@]}" || failed=1
    exit "$failed"
    ;;
  long)
    secs="${2:?usage: fuzz.sh long SECONDS [TARGET...]}"
    shift 2
    sel=("$@")
    [ ${#sel[@]} -gt 0 ] || sel=("${TARGETS[@]}")
    build
    failed=0
    for t in "${sel[@]}"; do
      echo "==> fuzz $t for ${secs}s"
      run "$t" "$secs" || failed=1
    done
    report "${sel[@]}"
    crashes "${sel[@]}" || failed=1
    exit "$failed"
    ;;
  stats)
    report "${TARGETS[@]}"
    ;;
  seed)
    build
    rm -rf out/seeds
    "target/release/make_seeds" "$REPO" out/seeds
    for t in "${TARGETS[@]}"; do
      rm -rf "corpus/$t.new"
      # afl-cmin.bash: the Python afl-cmin of AFL++ 4.40c records no tuples for these
      # persistent-mode targets and keeps nothing.
      timeout 600 afl-cmin.bash -i "out/seeds/$t" -o "corpus/$t.new" -- "target/release/$t" \
        >"out/cmin-$t.log" 2>&1 ||
        { echo "!! afl-cmin failed for $t (see fuzz/out/cmin-$t.log)" >&2; exit 1; }
      rm -rf "corpus/$t"
      mv "corpus/$t.new" "corpus/$t"
      echo "$t: $(ls "out/seeds/$t" | wc -l) seeds -> $(ls "corpus/$t" | wc -l) after afl-cmin"
    done
    ;;
  repro)
    t="${2:?usage: fuzz.sh repro TARGET FILE}"
    f="${3:?usage: fuzz.sh repro TARGET FILE}"
    build
    RUST_BACKTRACE=1 "target/release/$t" <"$f"
    ;;
  *)
    echo "usage: fuzz/fuzz.sh check [SECONDS] | long SECONDS [TARGET...] | stats | seed | repro TARGET FILE" >&2
    exit 2
    ;;
esac
