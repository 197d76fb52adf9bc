//! Live alerts from real Alertmanagers in the daemon: cards with their catalog runbook and the
//! preceding apply, the silenced list, resolution within one poll, a source that goes down, two
//! sources deduplicated, faulty sources (HTML, 500, 50 MB, never answering) and inert HTML in
//! alert labels on the operator site.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use vakt_tests::alertmanager::{Alertmanager, rfc3339, time_offset};
use vakt_tests::browser::{Driver, Server, build_site};
use vakt_tests::nats::{self, Daemon, NatsServer, ops_git, wait_until};

const WAIT: Duration = Duration::from_secs(30);

fn read(dir: &Path, name: &str) -> Option<Value> {
    serde_json::from_slice(&std::fs::read(dir.join(format!("{name}.json"))).ok()?).ok()
}

fn start_daemon(
    repo: &Path,
    n: &NatsServer,
    id: &str,
    snippets: &Path,
    sources: &[String],
    extra: &[&str],
) -> Daemon {
    let snip = snippets.to_string_lossy().into_owned();
    let mut args: Vec<&str> = vec![
        "--interval",
        "1h",
        "--lease",
        "2s",
        "--alert-poll",
        "500ms",
        "--snippets",
        &snip,
    ];
    for s in sources {
        args.push("--alertmanager");
        args.push(s);
    }
    args.extend_from_slice(extra);
    Daemon::start(repo, n, "dev", id, &args)
}

fn conditions(dir: &Path) -> Vec<Value> {
    read(dir, "actions")
        .and_then(|a| a["conditions"].as_array().cloned())
        .unwrap_or_default()
}

fn alerts(dir: &Path) -> Value {
    read(dir, "actions")
        .map(|a| a["alerts"].clone())
        .unwrap_or(Value::Null)
}

fn card<'a>(list: &'a Value, name: &str) -> Option<&'a Value> {
    list.as_array()?.iter().find(|c| c["name"] == name)
}

fn firing(name: &str, tenant: &str, extra: Value) -> Value {
    let mut labels =
        json!({"alertname": name, "tenant": tenant, "site": "osl1", "severity": "critical"});
    for (k, v) in extra.as_object().unwrap() {
        labels[k] = v.clone();
    }
    json!({
        "labels": labels,
        "annotations": {"summary": format!("{name} for {tenant}")},
        "startsAt": rfc3339(time_offset(0)),
        "endsAt": rfc3339(time_offset(3600)),
    })
}

fn validate(name: &str, doc: &Value) {
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(
            vakt_tests::workspace().join(format!("schemas/snippets/{name}.schema.json")),
        )
        .unwrap(),
    )
    .unwrap();
    let v = jsonschema::draft202012::new(&schema).unwrap();
    let errors: Vec<String> = v
        .iter_errors(doc)
        .map(|e| format!("{} {e}", e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{name}: {errors:?}");
}

#[test]
fn firing_alert_is_a_card_with_its_runbook_and_the_preceding_apply_then_silenced_resolved_and_source_down()
 {
    let repo = ops_git();
    let n = NatsServer::start();
    let mut am = Alertmanager::start();
    let dir = tempfile::tempdir().unwrap();
    let secrets = tempfile::tempdir().unwrap();
    let tokens = secrets.path().join("tokens");
    std::fs::write(
        &tokens,
        "alertsreadertoken0001 service-account:ci-vakt-plan\n",
    )
    .unwrap();
    let tokens_s = tokens.to_string_lossy().into_owned();
    let d = start_daemon(
        repo.path(),
        &n,
        "alerts",
        dir.path(),
        &[am.url()],
        &["--api-tokens", &tokens_s],
    );
    // The first apply writes every key of polar-retail; wait for it to be live and audited.
    assert!(
        wait_until(WAIT, || read(dir.path(), "summary").is_some_and(
            |s| s["commit"].is_string() && s["alert_sources"][0]["state"] == "live"
        )),
        "{:?}",
        read(dir.path(), "summary")
    );
    let commit = read(dir.path(), "summary").unwrap()["commit"]
        .as_str()
        .unwrap()
        .to_owned();
    // Alerts start after the apply (same second is inside the window too).
    std::thread::sleep(Duration::from_millis(1100));
    am.post_alerts(&json!([
        firing(
            "TenantErrorRate",
            "polar-retail",
            json!({"runbook_id": "ops.api.error-rate", "service": "gateway"})
        ),
        firing(
            "TenantLatency",
            "polar-retail",
            json!({"signal": "vakt_drift_detected"})
        ),
        firing("NoRunbookAnywhere", "polar-retail", json!({})),
    ]));
    assert!(
        wait_until(WAIT, || [
            "TenantErrorRate",
            "TenantLatency",
            "NoRunbookAnywhere"
        ]
        .iter()
        .all(|a| card(&alerts(dir.path())["firing"], a).is_some())),
        "{}",
        alerts(dir.path())
    );
    let view = alerts(dir.path());
    let c = card(&view["firing"], "TenantErrorRate").unwrap();
    let entry = vakt_tests::catalog_entry("ops.api.error-rate");
    assert_eq!(c["runbook"], "ops.api.error-rate");
    assert_eq!(c["escalation_class"], entry["escalation_class"]);
    assert_eq!(c["remediation_mode"], entry["remediation_mode"]);
    assert_eq!(c["owner"], entry["owner_team"]);
    assert_eq!(c["governance_gap"], false);
    assert_eq!(c["stale"], false);
    assert_eq!(c["sources"], json!([format!("127.0.0.1:{}", am.port)]));
    // "What changed?": the apply that wrote polar-retail's keys, with commit, actor and plan.
    let changes = c["changes"].as_array().expect("changes");
    let apply = changes
        .iter()
        .find(|ch| ch["action"] == "kv.put" && ch["matched"] == "tenant:polar-retail")
        .unwrap_or_else(|| panic!("no preceding apply in {changes:?}"));
    assert_eq!(apply["commit"], commit.as_str());
    assert!(
        apply["plan_id"].as_str().unwrap().starts_with("plan-"),
        "{apply}"
    );
    assert!(
        apply["actor"].as_str().unwrap().starts_with("reconciler:"),
        "{apply}"
    );
    // The signal label resolves through the catalog; no runbook at all is a governance gap.
    assert_eq!(
        card(&view["firing"], "TenantLatency").unwrap()["runbook"],
        "ops.vakt.drift"
    );
    let gap = card(&view["firing"], "NoRunbookAnywhere").unwrap();
    assert_eq!(gap["governance_gap"], true);
    assert_eq!(gap["escalation_class"], "urgent");
    // Each firing card is a condition in Action required, with the same changes.
    let conds = conditions(dir.path());
    let cond = conds
        .iter()
        .find(|x| x["id"] == format!("alert.{}", c["fingerprint"].as_str().unwrap()))
        .expect("alert condition");
    assert_eq!(cond["kind"], "alert");
    assert_eq!(cond["runbook"], "ops.api.error-rate");
    assert_eq!(cond["changes"], c["changes"]);
    let summary = read(dir.path(), "summary").unwrap();
    assert_eq!(summary["counts"]["alerts_firing"], 3);
    validate("actions", &read(dir.path(), "actions").unwrap());
    validate("summary", &summary);
    // The API and `vakt status` carry the same.
    let api = |path: &str| nats::http_req(&d.url, "GET", path, Some("alertsreadertoken0001"), None);
    assert!(
        wait_until(WAIT, || api("/api/v1/alerts")
            .is_some_and(|(code, b)| code == 200
                && b.contains("TenantErrorRate")
                && b.contains("\"changes\""))),
        "{:?}",
        api("/api/v1/alerts")
    );
    let (code, out, err) = vakt_tests::outcome(&vakt_tests::vakt(&[
        "status",
        "--api",
        &d.url,
        "--token",
        "alertsreadertoken0001",
    ]));
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("alert sources: 127.0.0.1:"), "{out}");
    assert!(out.contains("TenantErrorRate"), "{out}");
    assert!(
        out.contains("changed before:") && out.contains("kv.put"),
        "{out}"
    );

    // Silence one: it moves to the silenced list with who, until when and why.
    am.silence(
        "TenantErrorRate",
        "kari.nordby",
        "known: failover drill until 14:00",
    );
    assert!(
        wait_until(WAIT, || card(
            &alerts(dir.path())["silenced"],
            "TenantErrorRate"
        )
        .is_some()
            && card(&alerts(dir.path())["firing"], "TenantErrorRate").is_none()),
        "{}",
        alerts(dir.path())
    );
    let s = card(&alerts(dir.path())["silenced"], "TenantErrorRate")
        .unwrap()
        .clone();
    assert_eq!(s["state"], "silenced");
    assert_eq!(s["silenced_by"][0]["created_by"], "kari.nordby");
    assert_eq!(
        s["silenced_by"][0]["comment"],
        "known: failover drill until 14:00"
    );
    assert!(
        s["silenced_by"][0]["ends_at"].as_str().unwrap().len() >= 20,
        "{s}"
    );
    assert!(
        !conditions(dir.path())
            .iter()
            .any(|x| x["id"] == format!("alert.{}", s["fingerprint"].as_str().unwrap()))
    );
    let (_, out, _) = vakt_tests::outcome(&vakt_tests::vakt(&[
        "status",
        "--api",
        &d.url,
        "--token",
        "alertsreadertoken0001",
    ]));
    assert!(
        out.contains("silenced by kari.nordby") && out.contains("failover drill"),
        "{out}"
    );

    // Resolve one (endsAt in the past): it leaves Action required within one poll.
    let mut resolved = firing(
        "TenantLatency",
        "polar-retail",
        json!({"signal": "vakt_drift_detected"}),
    );
    resolved["startsAt"] = json!(rfc3339(time_offset(-60)));
    resolved["endsAt"] = json!(rfc3339(time_offset(-1)));
    am.post_alerts(&json!([resolved]));
    let t0 = Instant::now();
    assert!(
        wait_until(WAIT, || card(
            &alerts(dir.path())["firing"],
            "TenantLatency"
        )
        .is_none()),
        "{}",
        alerts(dir.path())
    );
    // One poll is 500 ms; snippets follow each poll. Leave room for a loaded machine.
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());

    // Stop Alertmanager: the source itself is an urgent condition, the header is not OK and
    // names it, and its last alerts stay, marked stale.
    am.kill();
    let down_id = format!("alert-source-down.127.0.0.1:{}", am.port);
    assert!(
        wait_until(WAIT, || conditions(dir.path())
            .iter()
            .any(|c| c["id"] == down_id)),
        "{:?}",
        conditions(dir.path())
    );
    let c = conditions(dir.path())
        .into_iter()
        .find(|c| c["id"] == down_id)
        .unwrap();
    assert_eq!(c["escalation_class"], "urgent");
    assert_eq!(c["runbook"], "ops.vakt.alert-source-down");
    assert!(
        c["title"].as_str().unwrap().contains("may be incomplete"),
        "{c}"
    );
    let summary = read(dir.path(), "summary").unwrap();
    assert_ne!(summary["decision"]["level"], "ok");
    assert!(
        summary["decision"]["headline"]
            .as_str()
            .unwrap()
            .contains("not answering"),
        "{summary}"
    );
    assert_eq!(summary["alert_sources"][0]["state"], "down");
    let stale = card(&alerts(dir.path())["firing"], "NoRunbookAnywhere")
        .unwrap()
        .clone();
    assert_eq!(stale["stale"], true);
}

#[test]
fn the_same_alert_in_two_alertmanagers_is_one_card_tagged_with_both() {
    let repo = ops_git();
    let n = NatsServer::start();
    let a = Alertmanager::start();
    let b = Alertmanager::start();
    let dir = tempfile::tempdir().unwrap();
    let _d = start_daemon(repo.path(), &n, "two", dir.path(), &[a.url(), b.url()], &[]);
    let alert = firing(
        "TenantErrorRate",
        "polar-retail",
        json!({"runbook_id": "ops.api.error-rate"}),
    );
    a.post_alerts(&json!([alert.clone()]));
    b.post_alerts(&json!([alert]));
    assert!(
        wait_until(WAIT, || card(
            &alerts(dir.path())["firing"],
            "TenantErrorRate"
        )
        .is_some_and(|c| c["sources"].as_array().unwrap().len() == 2)),
        "{}",
        alerts(dir.path())
    );
    let v = alerts(dir.path());
    let cards: Vec<&Value> = v["firing"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["name"] == "TenantErrorRate")
        .collect();
    assert_eq!(cards.len(), 1, "{v}");
    assert_eq!(
        cards[0]["sources"],
        json!([
            format!("127.0.0.1:{}", a.port),
            format!("127.0.0.1:{}", b.port)
        ])
    );
    assert_eq!(v["firing_total"], 1);
}

/// A fake alert source on loopback that misbehaves in one way.
fn fake_source(mode: &'static str) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut s) = conn else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(k) => head.extend_from_slice(&buf[..k]),
                    }
                }
                match mode {
                    "html" => {
                        let body = "<html><body><h1>502 Bad Gateway</h1></body></html>";
                        let _ = write!(
                            s,
                            "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        );
                    }
                    "500" => {
                        let _ = write!(
                            s,
                            "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 5\r\nConnection: close\r\n\r\noops!"
                        );
                    }
                    "huge" => {
                        // 50 MB of a valid-looking JSON array, no Content-Length: only a
                        // streaming limit stops it.
                        let _ = write!(
                            s,
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n["
                        );
                        let chunk = "{\"labels\":{\"alertname\":\"x\"}},".repeat(1024);
                        let mut sent = 0;
                        while sent < 50 << 20 {
                            if s.write_all(chunk.as_bytes()).is_err() {
                                return;
                            }
                            sent += chunk.len();
                        }
                    }
                    _ => {
                        // Never answers.
                        std::thread::sleep(Duration::from_secs(120));
                    }
                }
            });
        }
    });
    format!("http://{addr}")
}

#[test]
fn faulty_sources_are_one_condition_each_in_bounded_time_and_the_daemon_keeps_going() {
    let repo = ops_git();
    let n = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let html = fake_source("html");
    let e500 = fake_source("500");
    let huge = fake_source("huge");
    let hang = fake_source("hang");
    let sources = vec![html.clone(), e500.clone(), huge.clone(), hang.clone()];
    let t0 = Instant::now();
    let d = start_daemon(repo.path(), &n, "faults", dir.path(), &sources, &[]);
    let ids: Vec<String> = sources
        .iter()
        .map(|u| format!("alert-source-down.{}", u.trim_start_matches("http://")))
        .collect();
    assert!(
        wait_until(WAIT, || {
            let c = conditions(dir.path());
            ids.iter()
                .all(|id| c.iter().filter(|x| &x["id"] == id).count() == 1)
        }),
        "{:?}",
        conditions(dir.path())
    );
    // The never-answering source is given up on after the 5 s total timeout.
    assert!(t0.elapsed() < Duration::from_secs(25), "{:?}", t0.elapsed());
    let summary = read(dir.path(), "summary").unwrap();
    let detail = |u: &str| -> String {
        summary["alert_sources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["url"] == u)
            .map(|s| s["error"].as_str().unwrap_or("").to_owned())
            .unwrap_or_default()
    };
    assert!(
        detail(&html).contains("did not answer with an Alertmanager"),
        "{summary}"
    );
    assert!(detail(&e500).contains("HTTP 500"), "{summary}");
    assert!(detail(&huge).contains("more than"), "{summary}");
    assert!(detail(&hang).contains("did not answer within"), "{summary}");
    assert_eq!(summary["counts"]["alert_sources_down"], 4);
    assert_ne!(summary["decision"]["level"], "ok");
    assert!(
        summary["decision"]["headline"]
            .as_str()
            .unwrap()
            .contains("alert sources live: none"),
        "{summary}"
    );
    // Still serving, still polling, nothing crashed.
    assert!(
        d.health().is_some_and(|h| h["status"] == "ok"),
        "{:?}",
        d.health()
    );
    let steps_before = alerts(dir.path());
    assert!(steps_before["sources"].as_array().unwrap().len() == 4);
}

#[test]
fn html_in_alert_labels_and_annotations_never_runs_on_the_ops_page() {
    vakt_tests::browser::require_chromium();
    let repo = ops_git();
    let n = NatsServer::start();
    let am = Alertmanager::start();
    let dir = tempfile::tempdir().unwrap();
    let _d = start_daemon(repo.path(), &n, "xss", dir.path(), &[am.url()], &[]);
    let payload = "<img src=x onerror=\"window.__xss40=1\"><script>window.__xss41=1</script>";
    am.post_alerts(&json!([{
        "labels": {"alertname": format!("Evil{payload}"), "tenant": "<svg onload=\"window.__xss42=1\">",
                   "runbook_id": "javascript:window.__xss43=1"},
        "annotations": {"summary": payload},
        "startsAt": rfc3339(time_offset(0)),
        "endsAt": rfc3339(time_offset(3600)),
    }]));
    assert!(
        wait_until(WAIT, || alerts(dir.path())["firing"]
            .as_array()
            .is_some_and(|a| a
                .iter()
                .any(|c| c["name"].as_str().unwrap_or("").starts_with("Evil")))),
        "{}",
        alerts(dir.path())
    );
    // Build-time rendering of the same snippets (templates) and live rendering (site.js).
    let out = tempfile::tempdir().unwrap();
    let out_dir = out.path().join("public");
    let snip = dir.path().to_string_lossy().into_owned();
    build_site(
        repo.path(),
        &out_dir,
        &["--snippets-dir", &snip, "--refresh", "1"],
    );
    let page = std::fs::read_to_string(out_dir.join("ops/index.html")).unwrap();
    assert!(
        page.contains("Evil&lt;img"),
        "the alert card is in the build-time page"
    );
    assert_eq!(page.matches("<script").count(), 1, "only site.js");
    let server = Server::start(&out_dir, &["--snippets-dir", &snip]);
    let driver = Driver::start();
    let s = driver.session(true);
    s.goto(&server.url("/ops/"));
    s.wait_for(
        "return document.querySelector('[data-live=\"alerts\"]').getAttribute('data-source') === 'live'",
        WAIT,
        "live alerts rendered",
    );
    let text = s.js(
        "return document.querySelector('[data-live=\"alerts\"] li.alert-card .cond-title').textContent",
    );
    assert!(
        text.as_str()
            .unwrap()
            .contains("<script>window.__xss41=1</script>"),
        "{text}"
    );
    // Wait for the page to have processed its pending events, then assert nothing ran.
    s.settle(WAIT);
    assert_eq!(
        s.js("return Object.keys(window).filter(k => k.startsWith('__xss'))"),
        json!([]),
        "an alert payload ran"
    );
    assert_eq!(
        s.js("return document.querySelectorAll('main [onerror], main [onload], main script, a[href^=\"javascript:\"]').length"),
        json!(0)
    );
}
