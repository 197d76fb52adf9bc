#!/usr/bin/env bash
# The main job on a fresh Debian machine with Rust: build vakt and check the bundled ops repo
# the way CI checks every pull request, then print what the repo holds.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "==> building vakt (release)"
cargo build --release --quiet -p vakt
VAKT=./target/release/vakt
echo "==> vakt validate (every environment: dev, staging, prod)"
status=0
"$VAKT" validate --repo . || status=$?
exit $status
