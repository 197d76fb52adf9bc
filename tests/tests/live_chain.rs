//! The live-signals chain end to end, with real parts only: nats-server, one node double per
//! node of the dev view, `vakt apply`, `vakt render`, VictoriaMetrics scraping the doubles with
//! the rendered scrape configuration, vmalert evaluating the rendered rules against it and
//! notifying a real Alertmanager, and `vakt reconcile --alertmanager` writing the snippets that
//! the operator site shows in headless Chromium.
//!
//! A fault switch on a node double → VictoriaMetrics scrapes it → vmalert fires → Alertmanager
//! → the daemon → the `actions` snippet and Action required on `/ops/` show the card with its
//! escalation, runbook link and the apply that preceded it; a silence through Alertmanager's
//! API moves it to the silenced list with its comment; clearing the fault resolves it; stopping
//! Alertmanager is a source-down condition and the header stops saying OK.
//!
//! To stay fast, the test changes the RENDERED copy only (never `alerts/`): the chosen alert's
//! `for:` becomes `0s`, every group's `interval:` becomes `1s`, and the scrape configuration
//! gets a `global:` block with 1 s scrape interval and timeout. Everything else is evaluated
//! exactly as rendered. Every wait is a condition with a deadline.
//!
//! Needs nats-server, victoria-metrics (with vmalert), prometheus-alertmanager, chromium and
//! chromedriver, and `cargo build -p vakt -p vakt-tests --bins`.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use vakt_tests::alertmanager::Alertmanager;
use vakt_tests::browser::{Driver, Server, build_site};
use vakt_tests::nats::{self, Daemon, NatsServer, NodeDouble, http_req, wait_until};
use vakt_tests::victoria::VictoriaMetrics;
use vakt_tests::vmalert::Vmalert;

/// Generous: scrape (1 s) + evaluation (1 s) + vmalert → Alertmanager + poll (500 ms) on a
/// loaded 2-core machine.
const WAIT: Duration = Duration::from_secs(60);
/// The alert the `down` fault fires (`up == 0`), its rule file and its runbook.
const ALERT: &str = "ServiceInstanceDown";
const RULE_FILE: &str = "rules/availability.yaml";
const RUNBOOK: &str = "ops.service.down";
/// The node whose double is switched.
const NODE: &str = "gw-osl1-01";
const ACTOR: &str = "test:live-chain";

/// One declared node of the dev view: (id, kind, site, version, shard).
type Node = (String, String, String, String, String);

/// Rewrites every node's `admin_url` in the repo copy to a free loopback port and returns the
/// nodes of the dev view with their ports (the dev overlays only change capacities).
fn nodes_on_loopback(repo: &Path) -> Vec<(Node, u16)> {
    let mut shard_of = std::collections::BTreeMap::new();
    let mut shards: Vec<_> = std::fs::read_dir(repo.join("inventory/shards"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    shards.sort();
    for p in shards {
        let v: toml::Value = toml::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        for n in v["nodes"].as_array().unwrap() {
            shard_of
                .entry(n.as_str().unwrap().to_owned())
                .or_insert_with(|| v["id"].as_str().unwrap().to_owned());
        }
    }
    let mut files: Vec<_> = std::fs::read_dir(repo.join("inventory/nodes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let v: toml::Value = toml::from_str(&text).unwrap();
            let s = |k: &str| v[k].as_str().unwrap().to_owned();
            let port = nats::port();
            assert!(
                v.get("metrics_url").is_none(),
                "{}: metrics_url",
                p.display()
            );
            std::fs::write(
                &p,
                text.replace(&s("admin_url"), &format!("http://127.0.0.1:{port}")),
            )
            .unwrap();
            let id = s("id");
            let shard = shard_of.get(&id).cloned().unwrap_or_else(|| "-".into());
            (
                (id, s("service_kind"), s("site"), s("version"), shard),
                port,
            )
        })
        .collect()
}

fn read(dir: &Path, name: &str) -> Option<Value> {
    serde_json::from_slice(&std::fs::read(dir.join(format!("{name}.json"))).ok()?).ok()
}

fn alerts(dir: &Path) -> Value {
    read(dir, "actions")
        .map(|a| a["alerts"].clone())
        .unwrap_or(Value::Null)
}

/// The card of [`ALERT`] on [`NODE`] in `list` (`firing` or `silenced`).
fn card(dir: &Path, list: &str) -> Option<Value> {
    alerts(dir)[list]
        .as_array()?
        .iter()
        .find(|c| c["name"] == ALERT && c["node"] == NODE)
        .cloned()
}

/// The test-only edits of the rendered copy (see the module comment). Each edit must change
/// something, so a reworded render cannot silently leave the test waiting minutes.
fn speed_up(render: &Path) {
    let rules = render.join(RULE_FILE);
    let text = std::fs::read_to_string(&rules).unwrap();
    // As rendered: `- alert: "NAME"`, then `expr: "…"` on one line, then `for: "…"`.
    let head = format!("- alert: \"{ALERT}\"\n");
    let at = text.find(&head).expect("the alert in the rendered rules") + head.len();
    let (before, rest) = text.split_at(at);
    let mut lines = rest.splitn(3, '\n');
    let (expr, for_line, tail) = (
        lines.next().unwrap(),
        lines.next().unwrap(),
        lines.next().unwrap(),
    );
    assert!(
        expr.trim_start().starts_with("expr: ") && for_line.trim_start().starts_with("for: "),
        "unexpected rendered rule layout after {head}{expr}\n{for_line}"
    );
    let indent = &for_line[..for_line.find("for:").unwrap()];
    let after = format!("{expr}\n{indent}for: \"0s\"\n{tail}");
    std::fs::write(&rules, format!("{before}{after}")).unwrap();
    let mut intervals = 0;
    for e in std::fs::read_dir(render.join("rules")).unwrap() {
        let p = e.unwrap().path();
        let t = std::fs::read_to_string(&p).unwrap();
        let lines: Vec<String> = t
            .lines()
            .map(|l| {
                if l.trim_start().starts_with("interval: ") {
                    intervals += 1;
                    let indent = &l[..l.find("interval:").unwrap()];
                    format!("{indent}interval: \"1s\"")
                } else {
                    l.to_owned()
                }
            })
            .collect();
        std::fs::write(&p, lines.join("\n") + "\n").unwrap();
    }
    // The chosen alert's group has its own interval (30s as rendered).
    assert!(
        std::fs::read_to_string(&rules)
            .unwrap()
            .contains("interval: \"1s\""),
        "{intervals} group intervals rewritten"
    );
    let scrape = render.join("scrape.yaml");
    let t = std::fs::read_to_string(&scrape).unwrap();
    assert!(!t.contains("global:"), "the render now sets global: {t}");
    std::fs::write(
        &scrape,
        format!("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n{t}"),
    )
    .unwrap();
}

fn switch(double: &NodeDouble, method: &str) {
    let (code, body) =
        http_req(&double.url, method, "/faults/down", None, None).expect("fault switch");
    assert_eq!(code, 200, "{method} /faults/down: {body}");
}

#[test]
fn a_fault_on_a_node_reaches_action_required_with_its_runbook_and_the_preceding_apply_then_silenced_and_resolved()
 {
    vakt_tests::browser::require_chromium();
    let repo = vakt_tests::copy_bundled();
    let nodes = nodes_on_loopback(repo.path());
    assert!(nodes.len() >= 4 && nodes.iter().any(|((id, ..), _)| id == NODE));
    let r = repo.path();
    vakt_tests::git(r, &["init", "-q", "-b", "main"]);
    let commit = nats::commit_all(r, "ops repo with node admin URLs on loopback");
    for b in ["env/dev", "env/staging", "env/prod"] {
        vakt_tests::git(r, &["branch", b]);
    }
    vakt_tests::git(r, &["checkout", "-q", "env/dev"]);

    // NATS, one double per node, then the apply the card must name.
    let n = NatsServer::start();
    let doubles: Vec<(String, NodeDouble)> = nodes
        .iter()
        .map(|((id, kind, site, version, shard), port)| {
            let d = NodeDouble::start(&n, "vakt_dev", id, kind, site, shard, version, *port, &[]);
            (id.clone(), d)
        })
        .collect();
    let repo_s = r.to_string_lossy().into_owned();
    let (code, out, err) = vakt_tests::outcome(&vakt_tests::vakt(&[
        "apply",
        "--env",
        "dev",
        "--repo",
        &repo_s,
        "--nats",
        &n.url(),
        "--yes",
        "--actor",
        ACTOR,
    ]));
    assert_eq!(code, 0, "vakt apply:\n{out}{err}");

    // What the observability stack reads, rendered from the same commit.
    let work = tempfile::tempdir().unwrap();
    let render = work.path().join("render");
    let render_s = render.to_string_lossy().into_owned();
    let (code, out, err) = vakt_tests::outcome(&vakt_tests::vakt(&[
        "render", "--env", "dev", "--repo", &repo_s, "--out", &render_s,
    ]));
    assert_eq!(code, 0, "vakt render:\n{out}{err}");
    speed_up(&render);

    let mut am = Alertmanager::start();
    let vm = VictoriaMetrics::start_with_config(
        &std::fs::read_to_string(render.join("scrape.yaml")).unwrap(),
    );
    let _vmalert = Vmalert::start(
        &render.join("rules/*.yaml"),
        &vm.url(),
        &am.url(),
        Duration::from_secs(1),
    );
    let snippets = work.path().join("snippets");
    std::fs::create_dir_all(&snippets).unwrap();
    let snip_s = snippets.to_string_lossy().into_owned();
    let am_url = am.url();
    let _daemon = Daemon::start(
        r,
        &n,
        "dev",
        "live-chain",
        &[
            "--interval",
            "1h",
            "--lease",
            "2s",
            "--alert-poll",
            "500ms",
            "--snippets",
            &snip_s,
            "--alertmanager",
            &am_url,
        ],
    );

    // Baseline: every node is scraped through the rendered configuration (labels from the
    // inventory) and up, the source is live, and nothing fires for the node yet.
    let scraped = || {
        vm.query("up == 1").map(|s| {
            s.iter()
                .filter(|x| x.labels.get("env").and_then(Value::as_str) == Some("dev"))
                .count()
        })
    };
    assert!(
        wait_until(WAIT, || scraped().is_ok_and(|k| k == nodes.len())),
        "not every node is scraped and up: {:?}\n{}",
        vm.query("up"),
        vm.log()
    );
    let up = vm.query(&format!("up{{node=\"{NODE}\"}}")).unwrap();
    assert_eq!(up.len(), 1, "{up:?}");
    assert_eq!(up[0].labels["service"], "gateway");
    assert_eq!(up[0].labels["site"], "osl1");
    assert_eq!(up[0].labels["job"], "gateway");
    assert!(
        wait_until(WAIT, || read(&snippets, "summary").is_some_and(
            |s| s["commit"] == commit.as_str() && s["alert_sources"][0]["state"] == "live"
        )),
        "{:?}",
        read(&snippets, "summary")
    );
    assert!(card(&snippets, "firing").is_none(), "{}", alerts(&snippets));

    // Fault: the double stops answering /metrics, so up == 0 → the alert fires.
    let double = &doubles.iter().find(|(id, _)| id == NODE).unwrap().1;
    switch(double, "POST");
    assert!(
        wait_until(WAIT, || card(&snippets, "firing").is_some()),
        "no {ALERT} card for {NODE}: {}\nvmalert: {}\nvm up: {:?}",
        alerts(&snippets),
        _vmalert.alerts(),
        vm.query("up")
    );
    let c = card(&snippets, "firing").unwrap();
    let entry = vakt_tests::catalog_entry(RUNBOOK);
    assert_eq!(c["runbook"], RUNBOOK);
    assert_eq!(c["governance_gap"], false);
    assert_eq!(c["escalation_class"], entry["escalation_class"]);
    assert_eq!(c["escalation_class"], "urgent");
    assert_eq!(c["remediation_mode"], entry["remediation_mode"]);
    assert_eq!(c["owner"], entry["owner_team"]);
    assert_eq!(c["site"], "osl1");
    assert_eq!(c["service"], "gateway");
    assert_eq!(
        c["sources"],
        serde_json::json!([format!("127.0.0.1:{}", am.port)])
    );
    // The rendered rule carried env, the scrape configuration the target labels, and
    // vmalert the generated runbook_url (Alertmanager keeps annotations, not labels).
    assert_eq!(c["labels"]["env"], "dev");
    assert_eq!(c["labels"]["shard"], "gw-osl1");
    // vmalert sent the rendered runbook_url (an annotation, which the card does not copy).
    let (code, body) =
        vakt_tests::browser::http("GET", &format!("{}/api/v2/alerts", am.url()), None);
    assert_eq!(code, 200, "{body}");
    let sent: Value = serde_json::from_str(&body).unwrap();
    let ours = sent
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["labels"]["alertname"] == ALERT && a["labels"]["node"] == NODE)
        .unwrap_or_else(|| panic!("{ALERT} not in Alertmanager: {sent}"));
    assert_eq!(
        ours["annotations"]["runbook_url"],
        format!("https://ops.dataverket.internal/runbooks/{RUNBOOK}/")
    );
    assert_eq!(ours["annotations"]["runbook_id"], RUNBOOK);
    // "What changed?": the apply above, with its commit, actor and plan.
    let changes = c["changes"].as_array().expect("changes").clone();
    let apply = changes
        .iter()
        .find(|ch| ch["action"] == "kv.put" && ch["matched"] == format!("node:{NODE}"))
        .unwrap_or_else(|| panic!("no preceding apply touching {NODE} in {changes:?}"));
    assert_eq!(apply["commit"], commit.as_str());
    assert_eq!(apply["actor"], ACTOR);
    assert!(
        apply["plan_id"].as_str().unwrap().starts_with("plan-"),
        "{apply}"
    );
    // The card is a condition in Action required, and the header is not OK.
    let cond_id = format!("alert.{}", c["fingerprint"].as_str().unwrap());
    let actions = read(&snippets, "actions").unwrap();
    let cond = actions["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == cond_id)
        .unwrap_or_else(|| panic!("no condition {cond_id}: {actions}"))
        .clone();
    assert_eq!(cond["kind"], "alert");
    assert_eq!(cond["runbook"], RUNBOOK);
    assert_eq!(cond["escalation_class"], "urgent");
    assert_ne!(
        read(&snippets, "summary").unwrap()["decision"]["level"],
        "ok"
    );

    // The same on /ops/ in headless Chromium, rendered live from the snippets by site.js.
    let site = work.path().join("site");
    build_site(
        r,
        &site,
        &["--env", "dev", "--snippets-dir", &snip_s, "--refresh", "1"],
    );
    let server = Server::start(&site, &["--snippets-dir", &snip_s]);
    let driver = Driver::start();
    let s = driver.session(true);
    s.goto(&server.url("/ops/"));
    let card_js = format!(
        "var live = document.querySelector('#action-required [data-live=\"alerts\"]');
         if (!live || live.getAttribute('data-source') !== 'live') return null;
         var cards = live.querySelectorAll('ul.alert-cards.LIST li.alert-card');
         for (var i = 0; i < cards.length; i++) {{
           var t = cards[i].querySelector('.cond-title');
           if (t && t.textContent === '{ALERT}' && cards[i].textContent.indexOf('node: {NODE}') >= 0) {{
             var a = cards[i].querySelector('.cond-runbook a.runbook-link');
             var ch = cards[i].querySelector('.changes');
             return {{esc: cards[i].className,
                      runbook: a ? a.getAttribute('href') : '', runbook_text: a ? a.textContent : '',
                      changes: ch ? ch.textContent : '', silence: Array.from(cards[i].querySelectorAll('p.silence')).map(function (p) {{ return p.textContent; }}).join(' ')}};
           }}
         }}
         return null;"
    );
    let shown = s.wait_for(
        &card_js.replace("LIST", "firing"),
        WAIT,
        "the firing card on /ops/",
    );
    assert!(
        shown["esc"].as_str().unwrap().contains("esc-urgent"),
        "{shown}"
    );
    assert_eq!(shown["runbook_text"], RUNBOOK);
    assert!(
        shown["runbook"]
            .as_str()
            .unwrap()
            .ends_with(&format!("runbooks/{RUNBOOK}/")),
        "{shown}"
    );
    let changes_text = shown["changes"].as_str().unwrap();
    assert!(
        changes_text.contains("What changed before it")
            && changes_text.contains(&format!("by {ACTOR}"))
            && changes_text.contains(&format!("commit {}", &commit[..12]))
            && changes_text.contains(&format!("node:{NODE}")),
        "{shown}"
    );
    // The runbook link resolves to the runbook's page on the site.
    let (code, _) = nats::http_get(&server.base, &format!("/runbooks/{RUNBOOK}/")).unwrap();
    assert_eq!(code, 200);

    // Silence it through Alertmanager's API: the card moves to silenced with the comment.
    let comment = "live-chain: gateway maintenance, looking at it";
    am.silence(ALERT, "kari.nordby", comment);
    assert!(
        wait_until(WAIT, || card(&snippets, "silenced").is_some()
            && card(&snippets, "firing").is_none()),
        "{}",
        alerts(&snippets)
    );
    let sc = card(&snippets, "silenced").unwrap();
    assert_eq!(sc["state"], "silenced");
    assert_eq!(sc["silenced_by"][0]["created_by"], "kari.nordby");
    assert_eq!(sc["silenced_by"][0]["comment"], comment);
    assert!(
        !read(&snippets, "actions").unwrap()["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["id"] == cond_id),
        "a silenced alert is no condition"
    );
    let shown = s.wait_for(
        &card_js.replace("LIST", "silenced"),
        WAIT,
        "the silenced card on /ops/",
    );
    assert!(
        shown["silence"]
            .as_str()
            .unwrap()
            .contains("Silenced by kari.nordby until 20"),
        "{shown}"
    );
    assert!(
        shown["silence"].as_str().unwrap().contains(comment),
        "{shown}"
    );

    // Clear the fault: up == 1 again, vmalert resolves it, it leaves both lists.
    switch(double, "DELETE");
    assert!(
        wait_until(WAIT, || {
            let a = alerts(&snippets);
            a["firing"].is_array()
                && card(&snippets, "firing").is_none()
                && card(&snippets, "silenced").is_none()
        }),
        "still listed after the fault cleared: {}\nvmalert: {}",
        alerts(&snippets),
        _vmalert.alerts()
    );
    s.wait_for(
        &format!(
            "var live = document.querySelector('#action-required [data-live=\"alerts\"]');
             return live && live.textContent.indexOf('{ALERT}') < 0;"
        ),
        WAIT,
        "the card gone from /ops/",
    );

    // The source is part of the truth: Alertmanager stopped → an urgent source-down
    // condition, and the header does not say OK.
    am.kill();
    let down_id = format!("alert-source-down.127.0.0.1:{}", am.port);
    assert!(
        wait_until(WAIT, || read(&snippets, "actions").is_some_and(|a| {
            a["conditions"]
                .as_array()
                .is_some_and(|c| c.iter().any(|x| x["id"] == down_id))
        })),
        "{:?}",
        read(&snippets, "actions")
    );
    let summary = read(&snippets, "summary").unwrap();
    assert_ne!(summary["decision"]["level"], "ok", "{summary}");
    assert_eq!(summary["alert_sources"][0]["state"], "down", "{summary}");
}
