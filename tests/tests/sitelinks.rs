//! End-to-end: measured cross-site links. One `vakt reconcile --site` per site of the bundled
//! inventory (osl1, bgo1) against a real nats-server: each site leader heartbeats and probes the
//! other; a paused leader makes the other site raise the site-link condition and export
//! `vakt_site_link_up … 0`, which clear when it resumes; a standby that takes a site's lease
//! over records a failover that the datacenter view lists.

use std::time::Duration;

use serde_json::Value;
use vakt_tests::nats::{Daemon, NatsServer, ops_git, publish, wait_until};

/// Heartbeat every 300 ms: a link is down after 900 ms without an answer.
fn args(site: &str) -> Vec<&str> {
    vec![
        "--interval",
        "1h",
        "--lease",
        "2s",
        "--node-poll",
        "1h",
        "--site-heartbeat",
        "300ms",
        "--site",
        site,
    ]
}

fn snippet(d: &Daemon, name: &str) -> Option<Value> {
    let (code, body) = d.get(&format!("/snippets/{name}.json"))?;
    (code == 200).then(|| serde_json::from_str(&body).ok())?
}

/// The link `from → to` of `kind` in a daemon's `sites` snippet.
fn link(d: &Daemon, from: &str, to: &str, kind: &str) -> Option<Value> {
    let s = snippet(d, "sites")?;
    s["sites"].as_array()?.iter().find(|x| x["id"] == from)?["links"]
        .as_array()?
        .iter()
        .find(|l| l["to"] == to && l["kind"] == kind)
        .cloned()
}

fn metric(d: &Daemon, from: &str, to: &str, kind: &str) -> Option<String> {
    let (_, m) = d.get("/metrics")?;
    let key =
        format!("vakt_site_link_up{{env=\"dev\",from=\"{from}\",to=\"{to}\",kind=\"{kind}\"}} ");
    m.lines()
        .find_map(|l| l.strip_prefix(&key).map(|v| v.trim().to_owned()))
}

fn site_link_condition(d: &Daemon, from: &str, to: &str) -> Option<Value> {
    let a = snippet(d, "actions")?;
    a["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["id"] == format!("site-link.dev.{from}.{to}"))
        .cloned()
}

#[test]
fn site_leaders_measure_each_other_and_a_lost_site_raises_the_link_condition() {
    let repo = ops_git();
    // Loopback round trips on a loaded 2-core runner can exceed the bundled 15 ms budget;
    // this test is about a lost site, so the budgets are widened (the RTT budget itself is
    // covered by the unit tests of `sitelinks`).
    for site in ["osl1", "bgo1"] {
        let p = repo.path().join(format!("inventory/sites/{site}.toml"));
        let t = std::fs::read_to_string(&p).unwrap();
        let t = t
            .replace("max_rtt = \"15ms\"", "max_rtt = \"1500ms\"")
            .replace("max_rtt = \"20ms\"", "max_rtt = \"2s\"")
            .replace("max_rtt = \"40ms\"", "max_rtt = \"4s\"");
        std::fs::write(&p, t).unwrap();
    }
    vakt_tests::nats::commit_all(repo.path(), "wide RTT budgets");
    for b in ["env/staging", "env/prod"] {
        vakt_tests::git(repo.path(), &["branch", "-f", b, "HEAD"]);
    }
    let n = NatsServer::start();
    let osl = Daemon::start(repo.path(), &n, "dev", "osl1-a", &args("osl1"));
    let bgo = Daemon::start(repo.path(), &n, "dev", "bgo1-a", &args("bgo1"));
    let kinds = [
        "nats-cluster-route",
        "postgres-replication",
        "object-store-replication",
    ];

    // Both leaders see their link to the other up, with a measured round trip.
    for (d, from, to) in [(&osl, "osl1", "bgo1"), (&bgo, "bgo1", "osl1")] {
        assert!(
            wait_until(Duration::from_secs(30), || {
                kinds.iter().all(|k| {
                    link(d, from, to, k).is_some_and(|l| {
                        l["status"] == "ok" && l["rtt_ms"].as_f64().is_some_and(|r| r >= 0.0)
                    }) && metric(d, from, to, k).as_deref() == Some("1")
                })
            }),
            "{from} never saw {to} up: {:?} / {:?}",
            link(d, from, to, "nats-cluster-route"),
            d.get("/metrics").map(|m| m.1)
        );
    }
    let l = link(&osl, "osl1", "bgo1", "nats-cluster-route").unwrap();
    assert_eq!(l["max_rtt"], "1500ms");
    assert!(l["last_seen_at"].is_string(), "{l}");
    let (_, m) = osl.get("/metrics").unwrap();
    assert!(
        m.contains("vakt_site_link_rtt_seconds{env=\"dev\",from=\"osl1\",to=\"bgo1\",kind=\"nats-cluster-route\"}"),
        "{m}"
    );
    // The other site's view, as its heartbeat reports it.
    assert!(
        wait_until(Duration::from_secs(10), || link(
            &osl,
            "bgo1",
            "osl1",
            "nats-cluster-route"
        )
        .is_some_and(|l| l["status"] == "ok")),
        "{:?}",
        link(&osl, "bgo1", "osl1", "nats-cluster-route")
    );
    assert!(site_link_condition(&osl, "osl1", "bgo1").is_none());

    // Pause bgo1's leader: osl1 raises the site-link condition with its runbook, metric 0.
    bgo.signal("-STOP");
    assert!(
        wait_until(Duration::from_secs(20), || site_link_condition(
            &osl, "osl1", "bgo1"
        )
        .is_some()
            && metric(&osl, "osl1", "bgo1", "nats-cluster-route").as_deref()
                == Some("0")),
        "no site-link condition on osl1: {:?}",
        snippet(&osl, "actions").map(|a| a["conditions"].clone())
    );
    let c = site_link_condition(&osl, "osl1", "bgo1").unwrap();
    assert_eq!(c["kind"], "degraded-site-link");
    assert_eq!(c["runbook"], "ops.vakt.site-link-degraded");
    assert_eq!(c["escalation_class"], "urgent");
    assert_eq!(c["remediation_mode"], "manual");
    assert_eq!(c["site"], "osl1");
    assert!(
        c["title"].as_str().unwrap().contains("osl1 → bgo1 down"),
        "{c}"
    );
    // The detail says bgo1's leader stopped answering: "no probe answer or heartbeat from
    // bgo1's leader for N s", or, if osl1's leader re-took its lease meanwhile (a renewal
    // missed on a loaded machine starts its measurements afresh), "bgo1's leader has not
    // answered since this leader started measuring".
    let detail = c["detail"].as_str().unwrap();
    assert!(
        detail.contains("bgo1's leader")
            && (detail.contains("no probe answer") || detail.contains("has not answered")),
        "{c}"
    );
    let s = snippet(&osl, "sites").unwrap();
    assert!(
        s["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["id"] == "site-link.dev.osl1.bgo1"),
        "{s}"
    );
    assert_eq!(
        link(&osl, "osl1", "bgo1", "postgres-replication").unwrap()["status"],
        "down"
    );
    let summary = snippet(&osl, "summary").unwrap();
    assert_eq!(summary["decision"]["level"], "urgent", "{summary}");

    // Resume it: the link comes back and the condition clears.
    bgo.signal("-CONT");
    assert!(
        wait_until(Duration::from_secs(20), || site_link_condition(
            &osl, "osl1", "bgo1"
        )
        .is_none()
            && metric(&osl, "osl1", "bgo1", "nats-cluster-route").as_deref()
                == Some("1")
            && link(&osl, "osl1", "bgo1", "nats-cluster-route")
                .is_some_and(|l| l["status"] == "ok")),
        "the condition did not clear: {:?}",
        site_link_condition(&osl, "osl1", "bgo1")
    );
}

#[test]
fn a_standby_taking_a_site_lease_over_is_a_failover_on_the_datacenter_view() {
    let repo = ops_git();
    let n = NatsServer::start();
    let snippets = tempfile::tempdir().unwrap();
    let snippets_dir = snippets.path().to_string_lossy().into_owned();
    let mut osl_args = args("osl1");
    osl_args.extend(["--snippets", snippets_dir.as_str()]);
    let osl = Daemon::start(repo.path(), &n, "dev", "osl1-a", &osl_args);
    let mut bgo_a = Daemon::start(repo.path(), &n, "dev", "bgo1-a", &args("bgo1"));
    assert!(wait_until(Duration::from_secs(15), || bgo_a.is_leader()));
    let bgo_b = Daemon::start(repo.path(), &n, "dev", "bgo1-b", &args("bgo1"));
    // b stands by (and has seen a hold the lease) before a dies.
    std::thread::sleep(Duration::from_millis(1200));
    assert!(!bgo_b.is_leader(), "two leaders in bgo1");
    assert!(osl.is_leader(), "osl1 has its own lease");
    let _ = bgo_a.child.kill();
    let _ = bgo_a.child.wait();
    assert!(
        wait_until(Duration::from_secs(10), || bgo_b.is_leader()),
        "bgo1-b did not take over"
    );
    let failover = |d: &Daemon| {
        snippet(d, "sites").and_then(|s| {
            s["failovers"]
                .as_array()?
                .iter()
                .find(|f| f["site"] == "bgo1" && f["from"] == "bgo1-a" && f["to"] == "bgo1-b")
                .cloned()
        })
    };
    // Both daemons list it (osl1 reads the same audit stream) once their snippets refresh;
    // a trigger makes them refresh now.
    for d in [&bgo_b, &osl] {
        assert!(
            wait_until(Duration::from_secs(20), || {
                publish(&n.url(), "vakt.trigger.dev");
                std::thread::sleep(Duration::from_millis(200));
                failover(d).is_some()
            }),
            "no failover on {}: {:?}",
            d.id,
            snippet(d, "sites").map(|s| s["failovers"].clone())
        );
    }
    let f = failover(&osl).unwrap();
    assert_eq!(f["scope"], "control-plane");
    assert!(f["reason"].as_str().unwrap().contains("bgo1-a"), "{f}");
    // The datacenter view built from osl1's snippets shows the measured link and the failover.
    assert!(
        wait_until(Duration::from_secs(20), || link(
            &osl,
            "osl1",
            "bgo1",
            "nats-cluster-route"
        )
        .is_some_and(|l| l["status"] == "ok" && l["rtt_ms"].is_number())),
        "{:?}",
        link(&osl, "osl1", "bgo1", "nats-cluster-route")
    );
    publish(&n.url(), "vakt.trigger.dev");
    let out = tempfile::tempdir().unwrap();
    let site_out = out.path().join("site");
    assert!(
        wait_until(Duration::from_secs(10), || {
            let o = vakt_tests::vakt(&[
                "site",
                "build",
                "--repo",
                &repo.path().to_string_lossy(),
                "--env",
                "dev",
                "--out",
                &site_out.to_string_lossy(),
                "--snippets-dir",
                &snippets_dir,
            ]);
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            let html = std::fs::read_to_string(site_out.join("sites/index.html")).unwrap();
            html.contains("data-link=\"osl1:bgo1:nats-cluster-route\"")
                && html.contains(" ms of max 15ms")
                && html.contains("<td>bgo1-a</td><td>bgo1-b</td>")
        }),
        "{}",
        std::fs::read_to_string(site_out.join("sites/index.html")).unwrap_or_default()
    );
    // The new leader measures the link as well.
    assert!(
        wait_until(Duration::from_secs(20), || link(
            &bgo_b,
            "bgo1",
            "osl1",
            "nats-cluster-route"
        )
        .is_some_and(|l| l["status"] == "ok")),
        "{:?}",
        link(&bgo_b, "bgo1", "osl1", "nats-cluster-route")
    );
}

#[test]
fn nats_route_state_from_the_monitoring_port_is_shown_on_the_route_link() {
    let repo = ops_git();
    let monitor = vakt_tests::nats::port();
    let n = NatsServer::start_with(vec!["-m".into(), monitor.to_string()]);
    let url = format!("http://127.0.0.1:{monitor}");
    let mut a = args("osl1");
    a.extend(["--nats-monitor", url.as_str()]);
    let osl = Daemon::start(repo.path(), &n, "dev", "osl1-a", &a);
    let _bgo = Daemon::start(repo.path(), &n, "dev", "bgo1-a", &args("bgo1"));
    // A single server has no routes: the route link says so; other kinds carry no route state.
    assert!(
        wait_until(Duration::from_secs(30), || link(
            &osl,
            "osl1",
            "bgo1",
            "nats-cluster-route"
        )
        .is_some_and(
            |l| l["status"] == "ok" && l["detail"] == "nats-server: no route connected"
        )),
        "{:?}",
        link(&osl, "osl1", "bgo1", "nats-cluster-route")
    );
    assert!(
        link(&osl, "osl1", "bgo1", "postgres-replication").unwrap()["detail"].is_null(),
        "{:?}",
        link(&osl, "osl1", "bgo1", "postgres-replication")
    );
    // A monitoring URL that does not answer is said, not hidden.
    let dead = format!("http://127.0.0.1:{}", vakt_tests::nats::port());
    let mut b = args("osl1");
    b.extend(["--nats-monitor", dead.as_str()]);
    drop(osl);
    let osl = Daemon::start(repo.path(), &n, "dev", "osl1-b", &b);
    assert!(
        wait_until(Duration::from_secs(30), || link(
            &osl,
            "osl1",
            "bgo1",
            "nats-cluster-route"
        )
        .and_then(|l| l["detail"].as_str().map(str::to_owned))
        .is_some_and(|d| d.contains("nats-server monitoring unreadable"))),
        "{:?}",
        link(&osl, "osl1", "bgo1", "nats-cluster-route")
    );
}
