//! `vakt render` end to end: a real Git commit of the bundled repo rendered for an environment,
//! the output checked by the real `promtool`, `vmalert`, `vmagent` and `victoria-metrics`,
//! pinned by a golden copy, deterministic, atomic, and refused on bad input.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use vakt_tests::nats::{commit_all, ops_git, wait_until};
use vakt_tests::{git, outcome, vakt, workspace};

/// The dashboards path the golden output is rendered with (independent of temp dirs).
const DASHBOARDS: &str = "/var/lib/grafana/dashboards/vakt";

fn render(repo: &Path, out: &Path, extra: &[&str]) -> (i32, String, String) {
    let repo_s = repo.to_string_lossy().into_owned();
    let out_s = out.to_string_lossy().into_owned();
    let mut a = vec![
        "render",
        "--repo",
        &repo_s,
        "--out",
        &out_s,
        "--dashboards-path",
        DASHBOARDS,
        "--now",
        vakt_tests::TODAY,
    ];
    a.extend_from_slice(extra);
    outcome(&vakt(&a))
}

fn render_ok(repo: &Path, out: &Path, extra: &[&str]) -> String {
    let (code, o, e) = render(repo, out, extra);
    assert_eq!(code, 0, "render {extra:?}: {o}\n{e}");
    o
}

fn yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap();
    opsrepo::parse::parse("x.yaml", opsrepo::parse::Format::Yaml, &text)
        .unwrap_or_else(|e| panic!("{}: {e:?}", path.display()))
        .value
}

fn rule_files(out: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(out.join("rules"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

/// The static target of `node` in a rendered scrape.yaml: (job, targets, labels).
fn target(out: &Path, node: &str) -> Option<(String, Value, Value)> {
    let s = yaml(&out.join("scrape.yaml"));
    for job in s["scrape_configs"].as_array()? {
        for st in job["static_configs"].as_array()? {
            if st["labels"]["node"] == node {
                return Some((
                    job["job_name"].as_str()?.to_owned(),
                    st["targets"].clone(),
                    st["labels"].clone(),
                ));
            }
        }
    }
    None
}

fn check(tool: &str, args: &[String]) {
    let o = Command::new(tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{tool} is installed by scripts/test.sh: {e}"));
    assert!(
        o.status.success(),
        "{tool} {args:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn env_branch_renders_and_the_real_tools_accept_it() {
    let repo = ops_git();
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("rendered");
    let o = render_ok(repo.path(), &out, &["--env", "prod"]);
    assert!(o.contains("rendered prod (env/prod at "), "{o}");

    // Rule files: every alerts/ file, accepted by promtool and vmalert.
    let rules = rule_files(&out);
    let sources = std::fs::read_dir(repo.path().join("alerts"))
        .unwrap()
        .count();
    assert_eq!(rules.len(), sources);
    let mut args = vec!["check".to_owned(), "rules".to_owned()];
    args.extend(rules.iter().map(|p| p.display().to_string()));
    check("promtool", &args);
    for r in &rules {
        check(
            "vmalert",
            &["-dryRun".to_owned(), format!("-rule={}", r.display())],
        );
    }
    // env on every alert, runbook_url from runbook_id, recording rules untouched.
    let mut alerts = 0;
    for r in &rules {
        for g in yaml(r)["groups"].as_array().unwrap() {
            for rule in g["rules"].as_array().unwrap() {
                if rule.get("alert").is_some() {
                    alerts += 1;
                    assert_eq!(rule["labels"]["env"], "prod", "{rule}");
                    if let Some(id) = rule["annotations"]["runbook_id"].as_str() {
                        assert_eq!(
                            rule["annotations"]["runbook_url"],
                            format!("https://ops.dataverket.internal/runbooks/{id}/")
                        );
                    }
                } else {
                    assert!(rule["labels"].get("env").is_none(), "{rule}");
                }
            }
        }
    }
    assert!(alerts > 20, "{alerts}");
    let down = yaml(&out.join("rules/availability.yaml"));
    assert_eq!(
        down["groups"][0]["rules"][0]["annotations"]["runbook_url"],
        "https://ops.dataverket.internal/runbooks/ops.service.down/"
    );

    // Scrape configuration: accepted by promtool, vmagent and victoria-metrics.
    let scrape = out.join("scrape.yaml");
    check(
        "promtool",
        &[
            "check".into(),
            "config".into(),
            scrape.display().to_string(),
        ],
    );
    for tool in ["vmagent", "victoria-metrics"] {
        check(
            tool,
            &[
                format!("-promscrape.config={}", scrape.display()),
                "-promscrape.config.dryRun".into(),
                "-loggerLevel=ERROR".into(),
            ],
        );
    }
    // The prod-only node (environments/prod/inventory/) with its prod-only shard.
    let (job, targets, labels) = target(&out, "agg-osl1-03").expect("agg-osl1-03 target");
    assert_eq!(job, "aggregate");
    assert_eq!(
        targets,
        serde_json::json!(["agg-osl1-03.dataverket.internal:9090"])
    );
    for (k, v) in [
        ("env", "prod"),
        ("site", "osl1"),
        ("service", "aggregate"),
        ("node", "agg-osl1-03"),
        ("shard", "agg-osl1-c"),
        ("__metrics_path__", "/metrics"),
        ("__scheme__", "http"),
    ] {
        assert_eq!(labels[k], v, "{k}: {labels}");
    }
    // dev does not see the prod-only node.
    let dev = out_dir.path().join("dev");
    render_ok(repo.path(), &dev, &["--env", "dev"]);
    assert!(target(&dev, "agg-osl1-03").is_none());
    assert_eq!(target(&dev, "agg-osl1-01").unwrap().2["env"], "dev");

    // Grafana provisioning.
    let ds = yaml(&out.join("grafana/provisioning/datasources/vakt.yaml"));
    assert_eq!(ds["apiVersion"], 1);
    assert_eq!(ds["datasources"][0]["uid"], "victoriametrics");
    assert_eq!(ds["datasources"][0]["type"], "prometheus");
    assert_eq!(
        ds["datasources"][0]["url"],
        "http://victoriametrics.dataverket.internal:8428"
    );
    let prov = yaml(&out.join("grafana/provisioning/dashboards/vakt.yaml"));
    assert_eq!(prov["providers"][0]["type"], "file");
    assert_eq!(prov["providers"][0]["options"]["path"], DASHBOARDS);
    // Dashboards: the same JSON as in the repo.
    let mut n = 0;
    for e in std::fs::read_dir(repo.path().join("dashboards")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "json") {
            let src: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
            let uid = src["uid"].as_str().unwrap();
            let got: Value = serde_json::from_slice(
                &std::fs::read(out.join(format!("grafana/dashboards/{uid}.json"))).unwrap(),
            )
            .unwrap();
            assert_eq!(got, src, "{uid}");
            n += 1;
        }
    }
    assert!(n >= 10);
    // The default dashboards path is the output directory, made absolute.
    let plain = out_dir.path().join("plain");
    let (code, o, e) = outcome(&vakt(&[
        "render",
        "--repo",
        &repo.path().to_string_lossy(),
        "--env",
        "staging",
        "--out",
        &plain.to_string_lossy(),
        "--format",
        "json",
    ]));
    assert_eq!(code, 0, "{o}{e}");
    let j: Value = serde_json::from_str(&o).unwrap();
    assert_eq!(j["counts"]["rule_files"], sources);
    let prov = yaml(&plain.join("grafana/provisioning/dashboards/vakt.yaml"));
    assert_eq!(
        prov["providers"][0]["options"]["path"],
        plain.join("grafana/dashboards").display().to_string()
    );
}

#[test]
fn golden_output_is_pinned() {
    let repo = ops_git();
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("r");
    render_ok(repo.path(), &out, &["--env", "prod"]);
    // Dashboards are compared with their sources above; the golden copy holds the rest.
    let got: BTreeMap<String, Vec<u8>> = vakt_tests::files_under(&out)
        .into_iter()
        .filter(|(p, _)| p != ".vakt-render" && !p.starts_with("grafana/dashboards/"))
        .collect();
    let fixture = workspace().join("tests/fixtures/render/prod");
    if std::env::var_os("VAKT_BLESS").is_some() {
        let _ = std::fs::remove_dir_all(&fixture);
        for (p, b) in &got {
            let f = fixture.join(p);
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(f, b).unwrap();
        }
    }
    assert!(
        fixture.is_dir(),
        "fixture missing (VAKT_BLESS=1 to write it)"
    );
    let want = vakt_tests::files_under(&fixture);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "rendered files changed; VAKT_BLESS=1 to accept"
    );
    for (p, b) in &got {
        assert!(
            want[p] == *b,
            "{p} changed; VAKT_BLESS=1 to accept:\n{}",
            String::from_utf8_lossy(b)
        );
    }
}

#[test]
fn rendering_twice_is_byte_identical_and_replaces_its_own_output() {
    let repo = ops_git();
    let out_dir = tempfile::tempdir().unwrap();
    let a = out_dir.path().join("a");
    let b = out_dir.path().join("b");
    render_ok(repo.path(), &a, &["--env", "prod"]);
    let first = vakt_tests::files_under(&a);
    let o = render_ok(repo.path(), &a, &["--env", "prod", "--format", "json"]);
    let j: Value = serde_json::from_str(&o).unwrap();
    assert_eq!(j["replaced"], true);
    assert_eq!(vakt_tests::files_under(&a), first);
    render_ok(repo.path(), &b, &["--env", "prod"]);
    assert_eq!(vakt_tests::files_under(&b), first);
    // The marker names the commit rendered.
    let marker: Value = serde_json::from_slice(&first[".vakt-render"]).unwrap();
    assert_eq!(
        marker["commit"],
        git(repo.path(), &["rev-parse", "env/prod"])
    );
    assert_eq!(marker["env"], "prod");
    // No temporary directory is left beside the output.
    let names: Vec<String> = std::fs::read_dir(out_dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

const NEW_NODE: &str = r#"id = "gw-osl1-02"
site = "osl1"
service_kind = "gateway"
admin_url = "http://gw-osl1-02.dataverket.internal:9090"
metrics_url = "https://gw-osl1-02.dataverket.internal:9443/internal/metrics"
version = "3.8.2"

[capacity]
cpu_cores = 8
memory_gb = 16
max_tenants = 40
max_inflight = 4096
"#;

#[test]
fn a_node_added_in_a_new_commit_becomes_a_scrape_target() {
    let repo = ops_git();
    let p = repo.path();
    let before = git(p, &["rev-parse", "env/dev"]);
    std::fs::write(p.join("inventory/nodes/gw-osl1-02.toml"), NEW_NODE).unwrap();
    let shard = p.join("inventory/shards/gw-osl1.toml");
    let s = std::fs::read_to_string(&shard).unwrap();
    std::fs::write(
        &shard,
        s.replace(r#"["gw-osl1-01"]"#, r#"["gw-osl1-01", "gw-osl1-02"]"#),
    )
    .unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("r");
    // Not committed yet: the work tree is never read.
    render_ok(p, &out, &["--env", "dev"]);
    assert!(target(&out, "gw-osl1-02").is_none());
    commit_all(p, "add gw-osl1-02");
    render_ok(p, &out, &["--env", "dev"]);
    let (job, targets, labels) = target(&out, "gw-osl1-02").expect("new node is a target");
    assert_eq!(job, "gateway");
    assert_eq!(
        targets,
        serde_json::json!(["gw-osl1-02.dataverket.internal:9443"])
    );
    assert_eq!(labels["__scheme__"], "https");
    assert_eq!(labels["__metrics_path__"], "/internal/metrics");
    assert_eq!(labels["shard"], "gw-osl1");
    assert_eq!(labels["site"], "osl1");
    assert_eq!(labels["env"], "dev");
    // An older commit still renders without it.
    render_ok(p, &out, &["--env", "dev", "--rev", &before]);
    assert!(target(&out, "gw-osl1-02").is_none());

    // victoria-metrics loads the scrape configuration and scrapes the node where it says.
    render_ok(p, &out, &["--env", "dev"]);
    let vm = VictoriaMetrics::start(&out.join("scrape.yaml"));
    let mut found = None;
    let ok = wait_until(Duration::from_secs(30), || {
        let Some(body) = get(&vm.addr, "/api/v1/targets") else {
            return false;
        };
        let Ok(v) = serde_json::from_str::<Value>(&body) else {
            return false;
        };
        found = v["data"]["activeTargets"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|t| t["labels"]["node"] == "gw-osl1-02")
            .cloned();
        found.is_some()
    });
    assert!(ok, "victoria-metrics never listed the target");
    let t = found.unwrap();
    assert_eq!(
        t["scrapeUrl"],
        "https://gw-osl1-02.dataverket.internal:9443/internal/metrics"
    );
    for (k, v) in [
        ("env", "dev"),
        ("site", "osl1"),
        ("service", "gateway"),
        ("shard", "gw-osl1"),
        ("job", "gateway"),
    ] {
        assert_eq!(t["labels"][k], v, "{k}: {t}");
    }
}

#[test]
fn a_broken_commit_is_refused_and_the_output_is_untouched() {
    let repo = ops_git();
    let p = repo.path();
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("r");
    render_ok(p, &out, &["--env", "dev"]);
    let before = vakt_tests::files_under(&out);
    let f = p.join("alerts/availability.yaml");
    let s = std::fs::read_to_string(&f).unwrap();
    std::fs::write(&f, s.replacen("expr: up == 0", "expr: sum(up", 1)).unwrap();
    commit_all(p, "broken alert");
    let (code, o, e) = render(p, &out, &["--env", "dev"]);
    assert_eq!(code, 1, "{o}{e}");
    assert!(o.contains("alerts/availability.yaml:9:"), "{o}");
    assert!(o.contains("alert.promql"), "{o}");
    assert!(e.contains("refusing to render `dev`"), "{e}");
    assert_eq!(vakt_tests::files_under(&out), before);
    // JSON findings for automation.
    let (code, o, _) = render(p, &out, &["--env", "dev", "--format", "json"]);
    assert_eq!(code, 1);
    let j: Value = serde_json::from_str(&o).unwrap();
    assert_eq!(j["findings"][0]["path"], "alerts/availability.yaml");
    assert_eq!(vakt_tests::files_under(&out), before);
    let names = std::fs::read_dir(out_dir.path()).unwrap().count();
    assert_eq!(names, 1, "a temporary directory was left behind");

    // A render-only problem (the site URL) is refused the same way, naming vakt.toml.
    git(p, &["checkout", "-q", "-B", "env/dev", "HEAD~1"]);
    let m = p.join("vakt.toml");
    let s = std::fs::read_to_string(&m).unwrap();
    std::fs::write(
        &m,
        s.replace(
            r#"site_url = "https://ops.dataverket.internal""#,
            r#"site_url = "ops.dataverket.internal""#,
        ),
    )
    .unwrap();
    commit_all(p, "relative site url");
    let (code, o, _) = render(p, &out, &["--env", "dev"]);
    assert_eq!(code, 1);
    assert!(o.contains("vakt.toml:22:"), "{o}");
    assert!(o.contains("render.runbook-url"), "{o}");
    assert_eq!(vakt_tests::files_under(&out), before);
}

#[test]
fn a_directory_not_written_by_render_is_never_replaced() {
    let repo = ops_git();
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("etc");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("prometheus.yml"), "keep me").unwrap();
    let (code, _, e) = render(repo.path(), &out, &["--env", "prod"]);
    assert_eq!(code, 4, "a refusal exits 4: {e}");
    assert!(e.contains("was not written by `vakt render`"), "{e}");
    assert_eq!(
        std::fs::read(out.join("prometheus.yml")).unwrap(),
        b"keep me"
    );
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 1);
    // Unknown environment and unknown revision.
    let x = out_dir.path().join("x");
    let (code, _, e) = render(repo.path(), &x, &["--env", "qa", "--rev", "env/prod"]);
    assert_eq!(code, 1);
    assert!(e.contains("environment `qa` is not declared"), "{e}");
    let (code, _, e) = render(repo.path(), &x, &["--env", "qa"]);
    assert_eq!(code, 3);
    assert!(
        e.contains("env/qa") && e.contains("is it declared in vakt.toml"),
        "{e}"
    );
    let (code, _, e) = render(
        repo.path(),
        &out_dir.path().join("x"),
        &["--env", "prod", "--rev", "no-such-branch"],
    );
    assert_eq!(code, 3, "{e}");
    assert!(!out_dir.path().join("x").exists());
}

/// `victoria-metrics` with its own data dir on a free loopback port, killed on drop.
struct VictoriaMetrics {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl VictoriaMetrics {
    fn start(scrape: &Path) -> VictoriaMetrics {
        let dir = tempfile::tempdir().unwrap();
        let port = vakt_tests::nats::port();
        let addr = format!("127.0.0.1:{port}");
        let child = Command::new("victoria-metrics")
            .arg(format!(
                "-storageDataPath={}",
                dir.path().join("data").display()
            ))
            .arg(format!("-httpListenAddr={addr}"))
            .arg(format!("-promscrape.config={}", scrape.display()))
            .arg("-loggerLevel=ERROR")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("victoria-metrics is installed by scripts/test.sh");
        VictoriaMetrics {
            child,
            addr,
            _dir: dir,
        }
    }
}

impl Drop for VictoriaMetrics {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// HTTP/1.0 GET (no chunked encoding): the body on 200.
fn get(addr: &str, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    (head.split_whitespace().nth(1)? == "200").then(|| body.to_owned())
}
