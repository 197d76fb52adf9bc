//! The ops metrics source mode of the decision header: `in_memory` (the daemon's own counters)
//! without `--metrics-backend`; `backend` with a real VictoriaMetrics scraping the daemon and
//! answering the query pack; killed → `in_memory`, degraded, a condition, the banner on the
//! built `/ops/` page, `vakt status` and `GET /api/v1/status`; restarted → `backend` again. A
//! backend that answers HTML, 500, `status: error` or never answers degrades in bounded time.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use vakt_tests::browser::{Driver, Server, build_site};
use vakt_tests::nats::{self, Daemon, NatsServer, ops_git, wait_until};
use vakt_tests::victoria::{Target, VictoriaMetrics};

const WAIT: Duration = Duration::from_secs(40);
const TOKEN: &str = "opsmodereadertoken001";

fn read(dir: &Path, name: &str) -> Option<Value> {
    serde_json::from_slice(&std::fs::read(dir.join(format!("{name}.json"))).ok()?).ok()
}

fn metrics_source(dir: &Path) -> Value {
    read(dir, "summary")
        .map(|s| s["metrics_source"].clone())
        .unwrap_or(Value::Null)
}

fn conditions(dir: &Path) -> Vec<Value> {
    read(dir, "actions")
        .and_then(|a| a["conditions"].as_array().cloned())
        .unwrap_or_default()
}

fn figures(ms: &Value, source: &str) -> Vec<Value> {
    ms["figures"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|f| f["source"] == source)
        .collect()
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

fn start_daemon(repo: &Path, n: &NatsServer, id: &str, snippets: &Path, extra: &[&str]) -> Daemon {
    let snip = snippets.to_string_lossy().into_owned();
    let mut args: Vec<&str> = vec!["--interval", "1h", "--lease", "2s", "--snippets", &snip];
    args.extend_from_slice(extra);
    Daemon::start(repo, n, "dev", id, &args)
}

fn status_cli(d: &Daemon) -> (i32, String, String) {
    vakt_tests::outcome(&vakt_tests::vakt(&[
        "status", "--api", &d.url, "--token", TOKEN,
    ]))
}

fn api_status(d: &Daemon) -> Value {
    let (code, body) =
        nats::http_req(&d.url, "GET", "/api/v1/status", Some(TOKEN), None).expect("api");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).expect("JSON")
}

#[test]
fn backend_mode_degrades_to_in_memory_with_a_banner_when_victoria_metrics_dies_and_recovers() {
    let repo = ops_git();
    let n = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let secrets = tempfile::tempdir().unwrap();
    let tokens = secrets.path().join("tokens");
    std::fs::write(&tokens, format!("{TOKEN} service-account:ci-vakt-plan\n")).unwrap();
    let tokens_s = tokens.to_string_lossy().into_owned();
    // The backend's port is known before it runs, so the daemon can be pointed at it and
    // VictoriaMetrics can scrape the daemon's /metrics.
    let vm_port = nats::port();
    let backend = format!("http://127.0.0.1:{vm_port}");
    let d = start_daemon(
        repo.path(),
        &n,
        "opsmode",
        dir.path(),
        &[
            "--metrics-backend",
            &backend,
            "--metrics-poll",
            "500ms",
            "--api-tokens",
            &tokens_s,
        ],
    );
    let mut vm = VictoriaMetrics::start_on(
        vm_port,
        &[Target {
            address: d.url.trim_start_matches("http://").to_owned(),
            labels: vec![],
        }],
        Duration::from_secs(1),
    );

    // Backend mode with durable figures: the 24 h totals of this env's reconcile outcomes,
    // next to the in-process counters.
    assert!(
        wait_until(WAIT, || {
            let ms = metrics_source(dir.path());
            ms["mode"] == "backend"
                && figures(&ms, "backend")
                    .iter()
                    .any(|f| f["metric"] == "reconcile_steps" && f["label"] == "applied")
        }),
        "{}\n{}",
        metrics_source(dir.path()),
        vm.log()
    );
    let ms = metrics_source(dir.path());
    assert_eq!(ms["configured_mode"], "backend");
    assert_eq!(ms["degraded"], false);
    assert_eq!(ms["backend_host"], format!("127.0.0.1:{vm_port}"));
    assert!(
        ms["checked_at"].is_string() && ms["last_success_at"].is_string(),
        "{ms}"
    );
    assert_eq!(ms["runbook"], "ops.vakt.metrics-backend-degraded");
    let applied = figures(&ms, "backend")
        .into_iter()
        .find(|f| f["label"] == "applied")
        .unwrap();
    assert_eq!(applied["window"], "24h");
    assert!(applied["value"].as_f64().unwrap() >= 0.0);
    let local = figures(&ms, "in_memory");
    let local_applied = local
        .iter()
        .find(|f| f["metric"] == "reconcile_steps" && f["label"] == "applied")
        .unwrap_or_else(|| panic!("{ms}"));
    assert!(local_applied["value"].as_f64().unwrap() >= 1.0, "{ms}");
    assert_eq!(local_applied["window"], "since_start");
    assert!(
        !conditions(dir.path())
            .iter()
            .any(|c| c["id"] == "metrics-backend.dev")
    );
    validate("summary", &read(dir.path(), "summary").unwrap());
    assert!(wait_until(
        WAIT,
        || api_status(&d)["live"]["metrics_source"]["mode"] == "backend"
    ));
    let (_, out, _) = status_cli(&d);
    assert!(
        out.lines()
            .next()
            .unwrap_or("")
            .starts_with(&format!("metrics: backend 127.0.0.1:{vm_port}")),
        "{out}"
    );

    // Kill VictoriaMetrics: within a bounded wait the header falls back to in-process counters,
    // degraded, with the last good backend totals marked stale and a condition.
    vm.kill();
    let t0 = Instant::now();
    assert!(
        wait_until(WAIT, || metrics_source(dir.path())["degraded"] == true),
        "{}",
        metrics_source(dir.path())
    );
    assert!(t0.elapsed() < Duration::from_secs(15), "{:?}", t0.elapsed());
    let ms = metrics_source(dir.path());
    assert_eq!(ms["mode"], "in_memory");
    assert_eq!(ms["configured_mode"], "backend");
    assert!(ms["degraded_since"].is_string(), "{ms}");
    let err = ms["error"].as_str().unwrap();
    assert!(
        err.contains(&format!("127.0.0.1:{vm_port}")) && err.contains("connect"),
        "{err}"
    );
    let stale = figures(&ms, "backend");
    assert!(!stale.is_empty(), "{ms}");
    assert!(stale.iter().all(|f| f["stale"] == true), "{ms}");
    assert!(!figures(&ms, "in_memory").is_empty());
    let cond = conditions(dir.path())
        .into_iter()
        .find(|c| c["id"] == "metrics-backend.dev")
        .unwrap_or_else(|| panic!("{:?}", conditions(dir.path())));
    assert_eq!(cond["runbook"], "ops.vakt.metrics-backend-degraded");
    assert_eq!(cond["escalation_class"], "action-required");
    assert_eq!(cond["remediation_mode"], "manual");
    assert_eq!(cond["governance_gap"], Value::Null);
    assert!(cond["detail"].as_str().unwrap().contains("stale"), "{cond}");
    let summary = read(dir.path(), "summary").unwrap();
    assert_ne!(summary["decision"]["level"], "ok", "{summary}");
    validate("summary", &summary);
    validate("actions", &read(dir.path(), "actions").unwrap());

    // The API, the CLI and the built page show the mode first, with the banner and runbook.
    // (the files are written just before the served copy is swapped)
    assert!(wait_until(
        WAIT,
        || api_status(&d)["live"]["metrics_source"]["degraded"] == true
    ));
    let (code, out, err_out) = status_cli(&d);
    assert_eq!(code, 1, "{out}{err_out}");
    let first = out.lines().next().unwrap_or("");
    assert!(
        first.starts_with("metrics: IN_MEMORY (DEGRADED)")
            && first.contains("metrics backend unreachable"),
        "{out}"
    );
    assert!(
        out.contains("runbook ops.vakt.metrics-backend-degraded"),
        "{out}"
    );
    assert!(out.contains("stale"), "{out}");
    let site = tempfile::tempdir().unwrap();
    let out_dir = site.path().join("public");
    let snip = dir.path().to_string_lossy().into_owned();
    build_site(
        repo.path(),
        &out_dir,
        &["--snippets-dir", &snip, "--refresh", "1"],
    );
    let page = std::fs::read_to_string(out_dir.join("ops/index.html")).unwrap();
    let banner = page
        .find("metrics backend unreachable: showing in-process counters since the daemon started")
        .unwrap_or_else(|| panic!("no banner on /ops/"));
    // The mode comes first in the decision header: before the decision level.
    let decision = page.find("class=\"decision-level\"").unwrap();
    assert!(banner < decision);
    assert!(page.contains("data-mode=\"in_memory\""));
    assert!(page.contains("runbooks/ops.vakt.metrics-backend-degraded/"));
    assert!(
        out_dir
            .join("runbooks/ops.vakt.metrics-backend-degraded/index.html")
            .exists()
    );

    // The live renderer (headless Chromium) shows the same banner first in the header.
    vakt_tests::browser::require_chromium();
    let server = Server::start(&out_dir, &["--snippets-dir", &snip]);
    let driver = Driver::start();
    let session = driver.session(true);
    session.goto(&server.url("/ops/"));
    let banner_js = "const r = document.querySelector('[data-live=\"decision\"]'); \
         if (!r || r.dataset.source !== 'live') return null; \
         const b = r.querySelector('.decision > .metrics-source:first-child .banner.metrics-degraded'); \
         return b ? b.textContent + ' | ' + b.querySelector('a').getAttribute('href') : 'no banner'";
    let text = session.wait_for(banner_js, WAIT, "live metrics banner");
    let text = text.as_str().unwrap_or("").to_owned();
    assert!(
        text.starts_with(
            "metrics backend unreachable: showing in-process counters since the daemon started"
        ) && text.ends_with("runbooks/ops.vakt.metrics-backend-degraded/"),
        "{text}"
    );

    // Restart it: back to backend mode, the condition and the banner gone.
    vm.restart();
    assert!(
        wait_until(WAIT, || {
            let ms = metrics_source(dir.path());
            ms["mode"] == "backend" && ms["degraded"] == false
        }),
        "{}",
        metrics_source(dir.path())
    );
    assert!(
        !conditions(dir.path())
            .iter()
            .any(|c| c["id"] == "metrics-backend.dev")
    );
    let ms = metrics_source(dir.path());
    assert!(
        ms["error"].is_null() && ms["degraded_since"].is_null(),
        "{ms}"
    );
    assert!(
        figures(&ms, "backend").iter().all(|f| f["stale"].is_null()),
        "{ms}"
    );
    // The open page follows: backend mode, no banner.
    session.wait_for(
        "const m = document.querySelector('[data-live=\"decision\"] .metrics-source'); \
         return m && m.dataset.mode === 'backend' && !m.querySelector('.banner') ? true : null",
        WAIT,
        "live page back in backend mode",
    );
}

/// A fake backend on loopback that misbehaves in one way.
fn fake_backend(mode: &'static str) -> String {
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
                let reply = |s: &mut std::net::TcpStream, status: &str, ctype: &str, body: &str| {
                    let _ = write!(
                        s,
                        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                };
                match mode {
                    "html" => reply(
                        &mut s,
                        "200 OK",
                        "text/html",
                        "<html><body><h1>502 Bad Gateway</h1></body></html>",
                    ),
                    "500" => reply(&mut s, "500 Internal Server Error", "text/plain", "oops!"),
                    "error" => reply(
                        &mut s,
                        "200 OK",
                        "application/json",
                        r#"{"status":"error","errorType":"bad_data","error":"unknown function increase"}"#,
                    ),
                    _ => std::thread::sleep(Duration::from_secs(120)),
                }
            });
        }
    });
    format!("http://{addr}")
}

#[test]
fn a_backend_answering_html_500_status_error_or_nothing_degrades_in_bounded_time() {
    let repo = ops_git();
    for (mode, expect) in [
        ("html", "did not answer with JSON"),
        ("500", "HTTP 500"),
        (
            "error",
            "status \"error\" (bad_data): unknown function increase",
        ),
        ("hang", "did not answer within 5 s"),
    ] {
        let n = NatsServer::start();
        let dir = tempfile::tempdir().unwrap();
        let url = fake_backend(mode);
        let t0 = Instant::now();
        let d = start_daemon(
            repo.path(),
            &n,
            &format!("fault-{mode}"),
            dir.path(),
            &["--metrics-backend", &url, "--metrics-poll", "500ms"],
        );
        assert!(
            wait_until(WAIT, || metrics_source(dir.path())["degraded"] == true
                && conditions(dir.path())
                    .iter()
                    .any(|c| c["id"] == "metrics-backend.dev")),
            "{mode}: {}",
            metrics_source(dir.path())
        );
        // The never-answering backend is given up on after the 5 s total timeout.
        assert!(
            t0.elapsed() < Duration::from_secs(25),
            "{mode}: {:?}",
            t0.elapsed()
        );
        let ms = metrics_source(dir.path());
        assert_eq!(ms["mode"], "in_memory", "{mode}");
        let err = ms["error"].as_str().unwrap_or("");
        assert!(err.contains(expect), "{mode}: {err}");
        assert!(
            err.contains(url.trim_start_matches("http://")),
            "{mode}: {err}"
        );
        assert!(figures(&ms, "backend").is_empty(), "{mode}: {ms}");
        assert_eq!(
            conditions(dir.path())
                .iter()
                .filter(|c| c["id"] == "metrics-backend.dev")
                .count(),
            1
        );
        // Still serving, nothing crashed.
        assert!(
            d.health().is_some_and(|h| h["status"] == "ok"),
            "{mode}: {:?}",
            d.health()
        );
    }
}

#[test]
fn without_a_backend_the_mode_is_in_memory_and_not_degraded() {
    let repo = ops_git();
    let n = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let _d = start_daemon(repo.path(), &n, "local", dir.path(), &[]);
    assert!(
        wait_until(WAIT, || {
            let s = read(dir.path(), "summary").unwrap_or(Value::Null);
            s["commit"].is_string()
                && figures(&s["metrics_source"], "in_memory")
                    .iter()
                    .any(|f| f["label"] == "applied" && f["value"] == 1.0)
        }),
        "{:?}",
        read(dir.path(), "summary")
    );
    let ms = metrics_source(dir.path());
    assert_eq!(ms["configured_mode"], "in_memory");
    assert_eq!(ms["mode"], "in_memory");
    assert_eq!(ms["degraded"], false);
    assert!(
        ms["backend_host"].is_null() && ms["error"].is_null(),
        "{ms}"
    );
    assert!(figures(&ms, "backend").is_empty());
    // Every step outcome is listed, from this process's counters.
    let labels: Vec<Value> = figures(&ms, "in_memory")
        .iter()
        .filter(|f| f["metric"] == "reconcile_steps")
        .map(|f| f["label"].clone())
        .collect();
    assert_eq!(labels, ["applied", "noop", "refused", "failed"]);
    assert!(!conditions(dir.path()).iter().any(|c| {
        c["id"]
            .as_str()
            .unwrap_or("")
            .starts_with("metrics-backend")
    }));
    validate("summary", &read(dir.path(), "summary").unwrap());
    // The page says which mode it is and shows no banner.
    let site = tempfile::tempdir().unwrap();
    let out_dir = site.path().join("public");
    let snip = dir.path().to_string_lossy().into_owned();
    build_site(repo.path(), &out_dir, &["--snippets-dir", &snip]);
    let page = std::fs::read_to_string(out_dir.join("ops/index.html")).unwrap();
    assert!(page.contains("data-configured-mode=\"in_memory\""));
    assert!(page.contains("in-process counters only"));
    assert!(!page.contains("metrics backend unreachable"));
}
