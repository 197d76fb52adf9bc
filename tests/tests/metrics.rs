//! End-to-end: the platform's metrics. Every metric name a bundled alert, recording rule,
//! dashboard panel or saved query uses is exported by a component of the demo (the node
//! double, `vakt reconcile`'s registry, a recording rule) or declared external in
//! `tests/fixtures/external-metrics.toml`; and every fault switch of the node double makes its
//! alerts' expressions return series in a real VictoriaMetrics that scrapes the doubles.
//!
//! Needs nats-server, victoria-metrics and `cargo build -p vakt-tests --bin vakt-node-double`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use promql_parser::parser::Expr;
use serde::Deserialize;
use vakt_tests::nats::{self, NatsServer, NodeDouble, http_req, wait_until};
use vakt_tests::victoria::{Target, VictoriaMetrics};

/// Where each used metric name is used: name -> ["alerts/x.yaml: AlertName", ...].
type Uses = BTreeMap<String, BTreeSet<String>>;

/// Every metric name in a PromQL expression (vector and matrix selectors, at any depth).
fn selector_names(e: &Expr, out: &mut BTreeSet<String>) -> Result<(), String> {
    match e {
        Expr::Aggregate(a) => {
            selector_names(&a.expr, out)?;
            if let Some(p) = &a.param {
                selector_names(p, out)?;
            }
        }
        Expr::Unary(u) => selector_names(&u.expr, out)?,
        Expr::Binary(b) => {
            selector_names(&b.lhs, out)?;
            selector_names(&b.rhs, out)?;
        }
        Expr::Paren(p) => selector_names(&p.expr, out)?,
        Expr::Subquery(s) => selector_names(&s.expr, out)?,
        Expr::VectorSelector(vs) => vector_name(vs, out)?,
        Expr::MatrixSelector(ms) => vector_name(&ms.vs, out)?,
        Expr::Call(c) => {
            for a in &c.args.args {
                selector_names(a, out)?;
            }
        }
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
    Ok(())
}

fn vector_name(
    vs: &promql_parser::parser::VectorSelector,
    out: &mut BTreeSet<String>,
) -> Result<(), String> {
    if let Some(n) = &vs.name {
        out.insert(n.clone());
        return Ok(());
    }
    let by_name = vs.matchers.matchers.iter().find(|m| m.name == "__name__");
    match by_name {
        Some(m) if matches!(m.op, promql_parser::label::MatchOp::Equal) => {
            out.insert(m.value.clone());
            Ok(())
        }
        Some(_) => Err(format!(
            "selector {vs} picks metric names by pattern; name them so coverage can be checked"
        )),
        None => Err(format!("selector {vs} names no metric")),
    }
}

fn names_in(expr: &str) -> Result<BTreeSet<String>, String> {
    let e = promql_parser::parser::parse(expr).map_err(|e| format!("not PromQL ({e}): {expr}"))?;
    let mut out = BTreeSet::new();
    selector_names(&e, &mut out)?;
    Ok(out)
}

/// The bundled ops repo's observability documents, as vakt loads them.
fn bundled_model() -> opsrepo::load::Model {
    let files = opsrepo::read_work_tree(&vakt_tests::workspace()).expect("read the bundled repo");
    let parsed = opsrepo::load::parse_all(&files);
    let (model, _) = opsrepo::load::build_view(&parsed, None);
    assert!(!model.alert_rules.is_empty(), "no alert rule files loaded");
    assert!(!model.dashboards.is_empty(), "no dashboards loaded");
    assert!(!model.saved_queries.is_empty(), "no saved queries loaded");
    model
}

/// Metric names used by alerts, recording rules, dashboards and saved queries (Prometheus
/// datasources only), and the names recording rules produce.
fn used_names(m: &opsrepo::load::Model) -> (Uses, BTreeSet<String>) {
    use opsrepo::model::DatasourceType;
    let mut uses = Uses::new();
    let mut recorded = BTreeSet::new();
    let mut errors = Vec::new();
    let mut add = |expr: &str, at: String, uses: &mut Uses| match names_in(expr) {
        Ok(ns) => {
            for n in ns {
                uses.entry(n).or_default().insert(at.clone());
            }
        }
        Err(e) => errors.push(format!("{at}: {e}")),
    };
    for doc in &m.alert_rules {
        for g in &doc.spec.groups {
            for r in &g.rules {
                let name = r
                    .alert
                    .clone()
                    .or_else(|| r.record.clone())
                    .unwrap_or_default();
                add(&r.expr, format!("{}: {name}", doc.path()), &mut uses);
                if let Some(rec) = &r.record {
                    recorded.insert(rec.clone());
                }
            }
        }
    }
    let kinds: BTreeMap<&str, DatasourceType> = m
        .datasources
        .iter()
        .flat_map(|d| d.spec.datasources.iter())
        .map(|d| (d.uid.as_str(), d.kind))
        .collect();
    for q in &m.saved_queries {
        if kinds.get(q.spec.datasource.as_str()) != Some(&DatasourceType::Prometheus) {
            continue;
        }
        let examples: std::collections::HashMap<&str, &str> = q
            .spec
            .variables
            .iter()
            .map(|v| (v.name.as_str(), v.example.as_str()))
            .collect();
        let filled = opsrepo::rules::observability::fill(&q.spec.template, &examples);
        add(&filled, format!("{}: {}", q.path(), q.spec.id), &mut uses);
    }
    for d in &m.dashboards {
        let mut stack: Vec<&opsrepo::model::Panel> = d.spec.panels.iter().collect();
        while let Some(p) = stack.pop() {
            stack.extend(p.panels.iter());
            for t in &p.targets {
                let Some(expr) = &t.expr else { continue };
                let Some(ds) = t.datasource.as_ref().or(p.datasource.as_ref()) else {
                    continue;
                };
                // A `$datasource` variable: its declared type decides.
                let prometheus = match kinds.get(ds.uid.as_str()) {
                    Some(k) => *k == DatasourceType::Prometheus,
                    None => ds.kind == "prometheus",
                };
                if prometheus {
                    let filled = opsrepo::rules::observability::grafana_fill(expr);
                    add(
                        &filled,
                        format!("{}: panel `{}`", d.path(), p.title),
                        &mut uses,
                    );
                }
            }
        }
    }
    assert!(
        errors.is_empty(),
        "queries that cannot be checked:\n{}",
        errors.join("\n")
    );
    (uses, recorded)
}

/// Names registered in `vakt reconcile`'s Prometheus registry, read from the reconciler's
/// source (a fresh daemon leaves unused families out of /metrics, so a scrape would miss
/// `vakt_reconcile_refused_total` until something is refused). Counter families are exported
/// with `_total`, histograms as `_bucket`, `_sum` and `_count`.
fn daemon_names() -> BTreeSet<String> {
    let re_reg = regex::Regex::new(
        r#"\.register\(\s*"([a-zA-Z_:][a-zA-Z0-9_:]*)"\s*,\s*"(?:[^"\\]|\\.)*"\s*,\s*([a-z_][a-z0-9_]*)\.clone\(\)"#,
    )
    .expect("regex");
    let dir = vakt_tests::workspace().join("reconciler/src");
    let mut out = BTreeSet::new();
    let mut stack = vec![dir];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read reconciler/src") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            if p.extension().is_none_or(|x| x != "rs") {
                continue;
            }
            let src = std::fs::read_to_string(&p).expect("read source");
            for c in re_reg.captures_iter(&src) {
                let (name, var) = (&c[1], &c[2]);
                let decl = regex::Regex::new(&format!(
                    r"let\s+(?:mut\s+)?{var}\s*(?::[^=]*)?=\s*([^;]*);"
                ))
                .expect("regex");
                let ty = decl
                    .captures(&src)
                    .map(|d| d[0].to_owned())
                    .unwrap_or_else(|| {
                        panic!(
                            "{}: cannot find how `{var}` (metric {name}) is made; \
                             update daemon_names() in tests/tests/metrics.rs",
                            p.display()
                        )
                    });
                if ty.contains("Histogram") {
                    for s in ["_bucket", "_sum", "_count"] {
                        out.insert(format!("{name}{s}"));
                    }
                } else if ty.contains("Counter") {
                    out.insert(format!("{name}_total"));
                } else if ty.contains("Gauge") {
                    out.insert(name.to_owned());
                } else {
                    panic!("{}: metric {name} has an unknown type: {ty}", p.display());
                }
            }
        }
    }
    assert!(
        out.contains("vakt_apply_total") && out.contains("vakt_reconcile_duration_seconds_bucket"),
        "the daemon's registry was not found in reconciler/src: {out:?}"
    );
    out
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExternalFile {
    metric: Vec<External>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct External {
    name: String,
    exporter: String,
    reason: String,
}

fn external() -> Vec<External> {
    let p = vakt_tests::workspace().join("tests/fixtures/external-metrics.toml");
    let text = std::fs::read_to_string(&p).expect("read external-metrics.toml");
    let f: ExternalFile = toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    f.metric
}

/// One double per service kind, on osl1, each serving two tenants through real placement keys.
struct Fleet {
    nats: NatsServer,
    doubles: Vec<(&'static str, &'static str, &'static str, NodeDouble)>,
}

const PREFIX: &str = "vakt_metrics";
const TENANTS: [&str; 2] = ["nordlys-energi", "polar-retail"];
/// (kind, node id, shard), as in the bundled inventory.
const NODES: [(&str, &str, &str); 4] = [
    ("gateway", "gw-osl1-01", "gw-osl1"),
    ("aggregate", "agg-osl1-01", "agg-osl1-a"),
    ("projection", "proj-osl1-01", "proj-osl1-a"),
    ("runner", "run-osl1-01", "run-osl1-a"),
];

impl Fleet {
    fn start() -> Fleet {
        let n = NatsServer::start();
        let url = n.url();
        nats::rt().block_on(async {
            let c = async_nats::connect(&url).await.expect("connect");
            let js = async_nats::jetstream::new(c);
            let kv = js
                .create_key_value(async_nats::jetstream::kv::Config {
                    bucket: format!("{PREFIX}_placement"),
                    ..Default::default()
                })
                .await
                .expect("placement bucket");
            for (kind, _, shard) in NODES {
                for t in TENANTS {
                    let v = serde_json::json!({"spec": {"shard": shard}}).to_string();
                    kv.put(format!("{kind}.{t}"), v.into())
                        .await
                        .expect("placement key");
                }
            }
        });
        let doubles = NODES
            .iter()
            .map(|(kind, id, shard)| {
                let d = NodeDouble::start(
                    &n,
                    PREFIX,
                    id,
                    kind,
                    "osl1",
                    shard,
                    "2.14.0",
                    nats::port(),
                    &[],
                );
                (*kind, *id, *shard, d)
            })
            .collect::<Vec<_>>();
        for (_, id, _, d) in &doubles {
            let served = wait_until(Duration::from_secs(15), || {
                nats::http_get(&d.url, "/admin/info")
                    .and_then(|(_, b)| serde_json::from_str::<serde_json::Value>(&b).ok())
                    .and_then(|v| v["tenants"].as_array().map(Vec::len))
                    == Some(TENANTS.len())
            });
            assert!(served, "{id} never served its placed tenants");
        }
        Fleet { nats: n, doubles }
    }

    fn double(&self, kind: &str) -> &NodeDouble {
        &self
            .doubles
            .iter()
            .find(|d| d.0 == kind)
            .expect("a double of every kind")
            .3
    }
}

/// Sample names in an exposition (`name{...} value` / `name value` lines).
fn sample_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_metric_name_the_bundled_queries_use_is_exported_or_declared_external() {
    let model = bundled_model();
    let (uses, recorded) = used_names(&model);
    let fleet = Fleet::start();
    // Two simulation ticks, so every family has samples.
    std::thread::sleep(Duration::from_millis(600));
    let mut exported: BTreeMap<String, String> = BTreeMap::new();
    for (kind, id, _, d) in &fleet.doubles {
        let (code, text) = nats::http_get(&d.url, "/metrics").expect("scrape the double");
        assert_eq!(code, 200, "{id}: {text}");
        for n in sample_names(&text) {
            exported
                .entry(n)
                .or_insert_with(|| format!("vakt-node-double ({kind})"));
        }
    }
    for n in daemon_names() {
        exported.entry(n).or_insert_with(|| "vakt reconcile".into());
    }
    for n in &recorded {
        exported
            .entry(n.clone())
            .or_insert_with(|| "recording rule".into());
    }
    let external = external();
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    for e in &external {
        if !seen.insert(e.name.as_str()) {
            problems.push(format!(
                "external-metrics.toml: `{}` is listed twice",
                e.name
            ));
        }
        if e.exporter.trim().is_empty() || e.reason.trim().is_empty() {
            problems.push(format!(
                "external-metrics.toml: `{}` needs an exporter and a reason",
                e.name
            ));
        }
        if let Some(by) = exported.get(&e.name) {
            problems.push(format!(
                "external-metrics.toml: `{}` is exported by {by}; remove it from the list",
                e.name
            ));
        }
        if !uses.contains_key(&e.name) {
            problems.push(format!(
                "external-metrics.toml: `{}` is used by no alert, rule or dashboard; remove it",
                e.name
            ));
        }
    }
    for (name, at) in &uses {
        if !exported.contains_key(name) && !seen.contains(name.as_str()) {
            problems.push(format!(
                "`{name}` is exported by no component of the demo (used by {}); export it from \
                 the node double or declare its exporter in tests/fixtures/external-metrics.toml",
                at.iter().cloned().collect::<Vec<_>>().join("; ")
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // The check has teeth: it saw the names the alerts are about.
    for n in [
        "http_server_requests_total",
        "runner_outbox_depth",
        "node_filesystem_avail_bytes",
        "jetstream_consumer_num_pending",
        "vakt_drifted_keys",
    ] {
        assert!(uses.contains_key(n), "{n} is not used any more?");
        assert!(exported.contains_key(n), "{n} is not exported");
    }
}

/// The alert expressions of the bundled rules, by alert name.
fn alert_exprs(m: &opsrepo::load::Model) -> BTreeMap<String, String> {
    m.alert_rules
        .iter()
        .flat_map(|d| d.spec.groups.iter())
        .flat_map(|g| g.rules.iter())
        .filter_map(|r| r.alert.clone().map(|a| (a, r.expr.clone())))
        .collect()
}

fn fault_table(d: &NodeDouble) -> Vec<(String, Vec<String>)> {
    let (code, body) = nats::http_get(&d.url, "/faults").expect("GET /faults");
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("faults JSON");
    v["faults"]
        .as_array()
        .expect("faults")
        .iter()
        .map(|f| {
            (
                f["name"].as_str().unwrap_or_default().to_owned(),
                f["alerts"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|a| a.as_str().map(str::to_owned))
                    .collect(),
            )
        })
        .collect()
}

fn switch(d: &NodeDouble, method: &str, fault: &str) {
    let (code, body) =
        http_req(&d.url, method, &format!("/faults/{fault}"), None, None).expect("fault switch");
    assert_eq!(code, 200, "{method} /faults/{fault}: {body}");
}

#[test]
fn each_fault_switch_makes_its_alerts_fire_in_victoria_metrics() {
    let model = bundled_model();
    let exprs = alert_exprs(&model);
    let fleet = Fleet::start();
    let targets: Vec<Target> = fleet
        .doubles
        .iter()
        .map(|(kind, id, shard, d)| Target {
            address: d.url.trim_start_matches("http://").to_owned(),
            labels: [
                ("env", "dev"),
                ("site", "osl1"),
                ("service", kind),
                ("node", id),
                ("shard", shard),
            ]
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        })
        .collect();
    let vm = VictoriaMetrics::start(&targets, Duration::from_secs(1));
    let fires = |alert: &str| -> bool {
        let expr = &exprs[alert];
        !vm.query(expr)
            .unwrap_or_else(|e| panic!("{alert}: {e}"))
            .is_empty()
    };
    // Every double scraped, with enough samples for rates over the traffic guard.
    let ready = wait_until(Duration::from_secs(60), || {
        vm.query("sum by (service) (rate(http_server_requests_total[5m])) > 1")
            .is_ok_and(|r| r.len() == NODES.len())
    });
    assert!(
        ready,
        "victoria-metrics never scraped the doubles:\n{}",
        vm.log()
    );

    // Which double each fault is flipped on; the order keeps ratio alerts early (their
    // windows then hold little baseline) and `down` last (it silences that double's series).
    let plan: [(&str, &str); 17] = [
        ("high-error-rate", "gateway"),
        ("dispatch-failures", "runner"),
        ("slow-disk", "aggregate"),
        ("slow-api", "projection"),
        ("slow-db", "gateway"),
        ("login-anomalies", "gateway"),
        ("command-pileup", "aggregate"),
        ("consumer-lag", "runner"),
        ("redeliveries", "projection"),
        ("projection-lag", "projection"),
        ("outbox-backlog", "runner"),
        ("relay-down", "runner"),
        ("poison-messages", "runner"),
        ("disk-full", "projection"),
        ("restart-loop", "runner"),
        ("oom-kills", "gateway"),
        ("down", "aggregate"),
    ];
    let table = fault_table(fleet.double("gateway"));
    let planned: BTreeSet<&str> = plan.iter().map(|p| p.0).collect();
    let switches: BTreeSet<&str> = table
        .iter()
        .filter(|(_, alerts)| !alerts.is_empty())
        .map(|(n, _)| n.as_str())
        .collect();
    assert_eq!(
        planned, switches,
        "every fault switch that fires alerts is exercised"
    );
    let alerts_of: BTreeMap<&str, Vec<String>> =
        table.iter().map(|(n, a)| (n.as_str(), a.clone())).collect();
    for a in alerts_of.values().flatten() {
        assert!(
            exprs.contains_key(a),
            "the fault table names unknown alert {a}"
        );
    }

    // Nothing fires before its fault is switched on.
    let all: Vec<&String> = plan.iter().flat_map(|(f, _)| &alerts_of[f]).collect();
    let early: Vec<&&String> = all.iter().filter(|a| fires(a)).collect();
    assert!(early.is_empty(), "firing with no fault on: {early:?}");

    for (i, (fault, kind)) in plan.iter().enumerate() {
        let t0 = std::time::Instant::now();
        switch(fleet.double(kind), "POST", fault);
        let alerts = &alerts_of[fault];
        let fired = wait_until(Duration::from_secs(90), || alerts.iter().all(|a| fires(a)));
        let silent: Vec<&String> = alerts.iter().filter(|a| !fires(a)).collect();
        assert!(
            fired,
            "{fault} on {kind}: {silent:?} did not fire within 90 s"
        );
        eprintln!(
            "{fault} on {kind}: {alerts:?} fired after {:?}",
            t0.elapsed()
        );
        // And it was this fault: the alerts of the faults still off stay silent.
        let later: Vec<&String> = plan[i + 1..]
            .iter()
            .flat_map(|(f, _)| &alerts_of[f])
            .filter(|a| fires(a))
            .collect();
        assert!(later.is_empty(), "after {fault}: {later:?} fire too");
    }

    // Switched off at run time, level alerts clear within a few scrapes (alerts over a rate or
    // increase window keep firing until the window has passed, as in production).
    for (fault, kind, alert) in [
        ("relay-down", "runner", "OutboxRelayDegraded"),
        ("outbox-backlog", "runner", "RunnerOutboxDepthHigh"),
        ("command-pileup", "aggregate", "TenantInFlightCommandsHigh"),
        (
            "projection-lag",
            "projection",
            "ProjectionCheckpointLagHigh",
        ),
        ("disk-full", "projection", "MdbxDiskNearlyFull"),
        ("down", "aggregate", "ServiceInstanceDown"),
    ] {
        switch(fleet.double(kind), "DELETE", fault);
        let cleared = wait_until(Duration::from_secs(30), || !fires(alert));
        assert!(
            cleared,
            "{alert} still fires after {fault} was switched off"
        );
    }
}

#[test]
fn the_readme_documents_every_fault_with_its_alerts() {
    let fleet = Fleet::start();
    let readme =
        std::fs::read_to_string(vakt_tests::workspace().join("README.md")).expect("README.md");
    for (name, alerts) in fault_table(fleet.double("runner")) {
        if alerts.is_empty() {
            assert!(readme.contains(&format!("`{name}`")), "README.md: {name}");
            continue;
        }
        let row = readme
            .lines()
            .find(|l| l.starts_with(&format!("| `{name}` |")))
            .unwrap_or_else(|| panic!("README.md has no fault table row for `{name}`"));
        for a in &alerts {
            assert!(
                row.contains(a.as_str()),
                "README.md row `{name}` misses alert {a}"
            );
        }
    }
}

#[test]
fn fault_switches_reject_unknown_and_misplaced_faults() {
    let fleet = Fleet::start();
    let gw = fleet.double("gateway");
    let (code, body) = http_req(&gw.url, "POST", "/faults/disk-ful", None, None).unwrap();
    assert_eq!(code, 404, "{body}");
    assert!(
        body.contains("unknown fault `disk-ful`") && body.contains("disk-full"),
        "{body}"
    );
    let (code, body) = http_req(&gw.url, "POST", "/faults/outbox-backlog", None, None).unwrap();
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("runner"), "{body}");
    // Nothing was switched on by the refused calls.
    let (_, body) = nats::http_get(&gw.url, "/faults").unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["active"], serde_json::json!([]), "{body}");
    // A bad --fault at start is a usage error (exit 2) naming the fault.
    let bin = vakt_tests::vakt_bin().with_file_name("vakt-node-double");
    let o = std::process::Command::new(bin)
        .args(["--id", "x", "--service-kind", "gateway", "--site", "osl1"])
        .args([
            "--shard",
            "gw-osl1",
            "--nats",
            &fleet.nats.url(),
            "--prefix",
            PREFIX,
        ])
        .args(["--fault", "outbox-backlog"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("outbox-backlog") && err.contains("runner"),
        "{err}"
    );
}
