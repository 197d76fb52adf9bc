//! End-to-end: the `vakt reconcile` daemon against a real nats-server and a real Git repo.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use vakt_tests::nats::{
    self, Daemon, NatsServer, audit_events, commit_all, ops_git, publish, put_key, read_bucket,
    wait_until,
};

use vakt_tests::faults::{agg_node, edit, migration_repo, move_polar_retail};

const LONG: &[&str] = &["--interval", "1h", "--lease", "2s"];

#[test]
fn one_leader_and_a_standby_takes_over_within_two_leases() {
    let repo = ops_git();
    let n = NatsServer::start();
    let mut a = Daemon::start(repo.path(), &n, "dev", "a", LONG);
    assert!(
        wait_until(Duration::from_secs(10), || a.is_leader()),
        "a never led"
    );
    let b = Daemon::start(repo.path(), &n, "dev", "b", LONG);
    // b's leader gauge appears once its lease loop has tried for the lease; then a renews
    // the lease twice (every lease/3) while b keeps trying on the same period, so b has
    // competed for the lease after it was up; only then is "no second leader" worth asserting.
    assert!(
        wait_until(Duration::from_secs(10), || b
            .get("/metrics")
            .is_some_and(|(_, m)| m.contains("vakt_leader{env=\"dev\"} 0"))),
        "b never tried for the lease"
    );
    let lease_rev = || {
        read_bucket(&n.url(), "vakt_dev_lock")
            .values()
            .map(|(rev, v)| {
                let h: serde_json::Value = serde_json::from_slice(v).unwrap();
                (*rev, h["holder"].as_str().unwrap_or("").to_owned())
            })
            .max()
            .expect("a lease key")
    };
    let (r0, holder) = lease_rev();
    assert_eq!(holder, "a");
    assert!(
        wait_until(Duration::from_secs(10), || lease_rev().0 >= r0 + 2),
        "a stopped renewing its lease"
    );
    assert_eq!(lease_rev().1, "a", "the lease changed hands");
    assert!(!b.is_leader(), "two leaders");
    assert!(a.is_leader());
    // kill -9 the leader: b takes over once the lease (2 s) lapses; allow two leases + a poll.
    let _ = a.child.kill();
    let _ = a.child.wait();
    let t0 = Instant::now();
    assert!(
        wait_until(Duration::from_secs(4) + Duration::from_millis(800), || b
            .is_leader()),
        "b did not take over"
    );
    eprintln!("takeover after {:?}", t0.elapsed());
    // b applied the branch as the new leader.
    assert!(wait_until(Duration::from_secs(10), || !read_bucket(
        &n.url(),
        "vakt_dev_config"
    )
    .is_empty()));
}

#[test]
fn commit_plus_nats_trigger_reaches_a_kv_watcher() {
    let repo = ops_git();
    let n = NatsServer::start();
    let d = Daemon::start(repo.path(), &n, "dev", "t", LONG);
    assert!(
        wait_until(Duration::from_secs(15), || d.status()["applied_commit"]
            .is_string()),
        "initial apply"
    );
    let key = "tenant.nordlys-energi.tenant";
    edit(
        repo.path(),
        "config/tenants/nordlys-energi/tenant.toml",
        "requests_per_second = ",
        "requests_per_second = 1",
    );
    let c = commit_all(repo.path(), "nordlys: rate");
    let url = n.url();
    let seen = nats::rt().block_on(async move {
        let client = async_nats::connect(&url).await.unwrap();
        let js = async_nats::jetstream::new(client.clone());
        let kv = js.get_key_value("vakt_dev_config").await.unwrap();
        let mut w = kv.watch(key).await.unwrap();
        let t0 = Instant::now();
        client.publish("vakt.trigger.dev", "".into()).await.unwrap();
        client.flush().await.unwrap();
        let e = tokio::time::timeout(Duration::from_secs(20), w.next())
            .await
            .expect("no change seen")
            .unwrap()
            .unwrap();
        (t0.elapsed(), e.value)
    });
    let v: serde_json::Value = serde_json::from_slice(&seen.1).unwrap();
    assert_eq!(v["vakt"]["commit"], c.as_str());
    eprintln!("merge→visible {:?}", seen.0);
    // The step is in the metrics.
    let (code, m) = d.get("/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(
        m.contains("vakt_apply_total{env=\"dev\",outcome=\"applied\"}"),
        "{m}"
    );
    assert!(m.contains("vakt_reconcile_duration_seconds_count"), "{m}");
    assert!(m.contains("vakt_build_info"), "{m}");
    assert!(
        m.contains("vakt_applied_commit_age_seconds{env=\"dev\"}"),
        "{m}"
    );
}

#[test]
fn invalid_commit_is_not_applied_and_status_names_file_and_line() {
    let repo = ops_git();
    let n = NatsServer::start();
    let d = Daemon::start(repo.path(), &n, "dev", "v", LONG);
    assert!(wait_until(Duration::from_secs(15), || {
        d.status()["applied_commit"].is_string()
    }));
    let good = d.status()["applied_commit"].clone();
    std::fs::write(repo.path().join("config/global/auth.toml"), "[broken\n").unwrap();
    let bad = commit_all(repo.path(), "break auth.toml");
    publish(&n.url(), "vakt.trigger.dev");
    assert!(
        wait_until(Duration::from_secs(15), || d.status()["state"] == "refused"),
        "{}",
        d.status()
    );
    let s = d.status();
    assert_eq!(s["applied_commit"], good);
    assert_eq!(s["refused"]["commit"], bad.as_str());
    let f = s["refused"]["findings"][0].as_str().unwrap();
    assert!(f.starts_with("config/global/auth.toml:1:"), "{f}");
    let (_, m) = d.get("/metrics").unwrap();
    assert!(
        m.contains("vakt_reconcile_refused_total{env=\"dev\",reason=\"invalid_commit\"} 1"),
        "{m}"
    );
    // Triggered again: refused once, not re-audited every step. The pass counter (every
    // outcome of `vakt_apply_total`) moving on proves the second trigger was processed.
    let passes = || {
        let (_, m) = d.get("/metrics").unwrap();
        m.lines()
            .filter(|l| l.starts_with("vakt_apply_total{env=\"dev\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    // The refused pass is fully recorded (its outcome counted) before the count is taken.
    assert!(wait_until(Duration::from_secs(15), || d
        .get("/metrics")
        .is_some_and(|(_, m)| m.contains(
            "vakt_apply_total{env=\"dev\",outcome=\"refused\"} 1"
        ))));
    let before = passes();
    publish(&n.url(), "vakt.trigger.dev");
    assert!(
        wait_until(Duration::from_secs(15), || passes() > before),
        "the second trigger was never processed"
    );
    assert_eq!(d.status()["state"], "refused");
    let refusals = audit_events(&n.url(), "dev")
        .into_iter()
        .filter(|e| e["action"] == "apply.refused")
        .count();
    assert_eq!(refusals, 1);
}

#[test]
fn self_heal_restores_a_hand_edit_and_audits_it() {
    let repo = ops_git();
    let n = NatsServer::start();
    let d = Daemon::start(repo.path(), &n, "dev", "h", LONG);
    assert!(wait_until(Duration::from_secs(15), || {
        d.status()["applied_commit"].is_string()
    }));
    let key = "global.platform";
    let before = read_bucket(&n.url(), "vakt_dev_config")[key].1.clone();
    put_key(
        &n.url(),
        "vakt_dev_config",
        key,
        br#"{"spec":{"hand":"edited"}}"#,
    );
    publish(&n.url(), "vakt.trigger.dev");
    assert!(
        wait_until(Duration::from_secs(15), || read_bucket(
            &n.url(),
            "vakt_dev_config"
        )[key]
            .1
            == before),
        "not healed"
    );
    let ev = audit_events(&n.url(), "dev");
    let heal = ev
        .iter()
        .find(|e| e["action"] == "kv.heal")
        .expect("heal event");
    assert!(
        heal["target"]
            .as_str()
            .unwrap()
            .ends_with("/global.platform")
    );
    // The step that healed it names its trigger (the NATS message, or the daemon's first poll
    // tick when that was still pending).
    let cause = heal["causation_id"].as_str().unwrap();
    assert!(
        cause == "trigger:nats" || cause == "trigger:poll",
        "{cause}"
    );
    assert_eq!(heal["reason"], "live value was not written by vakt");
}

#[test]
fn file_watch_triggers_a_step_on_commit() {
    let repo = ops_git();
    let n = NatsServer::start();
    let git_dir = repo.path().join(".git");
    let gd = git_dir.to_string_lossy().into_owned();
    let d = Daemon::start(
        repo.path(),
        &n,
        "dev",
        "w",
        &[
            "--interval",
            "1h",
            "--lease",
            "2s",
            "--trigger-subject",
            "-",
            "--watch",
            &gd,
        ],
    );
    assert!(wait_until(Duration::from_secs(15), || {
        d.status()["applied_commit"].is_string()
    }));
    edit(
        repo.path(),
        "config/global/auth.toml",
        "\n",
        "\n# watched\n",
    );
    let c = commit_all(repo.path(), "watched change");
    assert!(
        wait_until(Duration::from_secs(15), || d.status()["applied_commit"]
            == c.as_str()),
        "{}",
        d.status()
    );
}

use vakt_tests::nats::DESIRED_BUCKETS;

#[test]
fn sigterm_stops_between_steps_and_releases_the_lease() {
    let repo = ops_git();
    let n = NatsServer::start();
    // The first apply (every key, one write in flight) parks after 20 writes until `go`
    // exists: SIGTERM then lands in the middle of a step, not while the daemon idles.
    let go = n.dir.path().join("go");
    let go_s = go.to_string_lossy().into_owned();
    let mut d = Daemon::start_at(
        repo.path(),
        &n.url(),
        n.dir.path(),
        "dev",
        "s",
        &["--interval", "1h", "--lease", "30s"],
        &[
            ("VAKT_TEST_PAUSE_AFTER_WRITES", "20"),
            ("VAKT_TEST_PAUSE_UNTIL", &go_s),
        ],
    );
    let written = || {
        DESIRED_BUCKETS
            .iter()
            .map(|b| read_bucket(&n.url(), &format!("vakt_dev_{b}")).len())
            .sum::<usize>()
    };
    assert!(
        wait_until(Duration::from_secs(20), || d.is_leader() && written() == 20),
        "the first apply did not park after 20 writes ({} keys)",
        written()
    );
    assert_eq!(
        d.health().unwrap()["steps"],
        0,
        "the step is still in progress"
    );
    d.signal("-TERM");
    // Positive signal: the daemon logged the request. SIGTERM does not cut the step short:
    // it is still running, still holding the lease, with the apply parked.
    let log = || std::fs::read_to_string(n.dir.path().join("daemon-s.log")).unwrap_or_default();
    assert!(
        wait_until(Duration::from_secs(10), || log()
            .contains("shutdown requested")),
        "SIGTERM not handled; log:\n{}",
        log()
    );
    assert!(d.child.try_wait().unwrap().is_none(), "exited mid-step");
    assert!(
        !read_bucket(&n.url(), "vakt_dev_lock").is_empty(),
        "lease released mid-step"
    );
    assert_eq!(written(), 20, "the parked apply moved on");
    std::fs::write(&go, b"").unwrap();
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = d.child.try_wait().unwrap() {
            break s;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "did not stop");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    // The step it was in finished: the apply completed and was audited; no further step ran.
    assert!(written() > 20, "the apply stopped at the signal");
    let completed: Vec<_> = audit_events(&n.url(), "dev")
        .into_iter()
        .filter(|e| e["action"] == "apply.completed")
        .collect();
    assert_eq!(completed.len(), 1, "{completed:#?}");
    // The lease is released at once (not after 30 s): a new replica leads immediately, and
    // its first pass finds nothing left to write.
    assert!(read_bucket(&n.url(), "vakt_dev_lock").is_empty());
    let keys = written();
    let d2 = Daemon::start(
        repo.path(),
        &n,
        "dev",
        "s2",
        &["--interval", "1h", "--lease", "30s"],
    );
    assert!(wait_until(Duration::from_secs(5), || d2.is_leader()));
    assert!(
        wait_until(Duration::from_secs(15), || d2.get("/metrics").is_some_and(
            |(_, m)| m.contains("vakt_apply_total{env=\"dev\",outcome=\"noop\"} 1")
        )),
        "the next leader had to finish the interrupted apply: {:?}",
        d2.get("/metrics").map(|(_, m)| m
            .lines()
            .filter(|l| l.starts_with("vakt_apply_total"))
            .collect::<Vec<_>>()
            .join("\n"))
    );
    assert_eq!(written(), keys);
}

#[test]
fn remote_fetch_follows_the_upstream_branch() {
    let upstream = ops_git();
    let clone = tempfile::tempdir().unwrap();
    let dst = clone.path().join("ops");
    vakt_tests::git(
        clone.path(),
        &["clone", "-q", &upstream.path().to_string_lossy(), "ops"],
    );
    let n = NatsServer::start();
    let url = format!("file://{}", upstream.path().display());
    let d = Daemon::start(
        &dst,
        &n,
        "dev",
        "r",
        &["--interval", "1h", "--lease", "2s", "--remote", &url],
    );
    assert!(
        wait_until(Duration::from_secs(15), || d.status()["applied_commit"]
            .is_string()),
        "{}",
        d.status()
    );
    edit(
        upstream.path(),
        "config/global/auth.toml",
        "\n",
        "\n# upstream change\n",
    );
    let c = commit_all(upstream.path(), "upstream change");
    publish(&n.url(), "vakt.trigger.dev");
    assert!(
        wait_until(Duration::from_secs(15), || d.status()["applied_commit"]
            == c.as_str()),
        "{}",
        d.status()
    );
}

#[test]
fn live_snippets_follow_node_health_and_validate_against_their_schemas() {
    let repo = ops_git();
    let n = NatsServer::start();
    let port = nats::port();
    // One declared node points at a real double; the others stay unreachable (down).
    edit(
        repo.path(),
        "inventory/nodes/agg-osl1-01.toml",
        "http://agg-osl1-01.dataverket.internal:9090",
        &format!("http://127.0.0.1:{port}"),
    );
    commit_all(repo.path(), "agg-osl1-01 admin URL on loopback");
    let node = agg_node(&n, 1, port, &[]);
    let dir = tempfile::tempdir().unwrap();
    let snippets = dir.path().to_string_lossy().into_owned();
    let d = Daemon::start(
        repo.path(),
        &n,
        "dev",
        "snip",
        &[
            "--interval",
            "1h",
            "--lease",
            "2s",
            "--node-poll",
            "1s",
            "--snippets",
            &snippets,
        ],
    );
    let read = |name: &str| -> Option<serde_json::Value> {
        serde_json::from_slice(&std::fs::read(dir.path().join(format!("{name}.json"))).ok()?).ok()
    };
    assert!(
        // dr.json is written last of the eight: once it exists, every snippet does.
        wait_until(Duration::from_secs(20), || read("dr").is_some()
            && read("health").is_some_and(|h| h["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x["id"] == "agg-osl1-01" && x["status"] == "ok"))),
        "{:?}",
        read("health")
    );
    // The double serves the tenants placed on its shard, from NATS KV.
    let (_, info) = nats::http_get(&node.url, "/admin/info").unwrap();
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    let tenants = info["tenants"].as_array().unwrap();
    assert!(tenants.iter().any(|t| t == "polar-retail"), "{info}");

    let health = read("health").unwrap();
    let down = health["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == "run-osl1-01")
        .unwrap();
    assert_eq!(down["status"], "down");
    let inventory = read("inventory").unwrap();
    let agg = inventory["declared"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == "agg-osl1-01")
        .unwrap();
    assert_eq!(agg["trust"], "confirmed");
    // Every condition carries escalation class, remediation mode and a catalog runbook.
    let actions = read("actions").unwrap();
    let cond = actions["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "node-down.run-osl1-01")
        .expect("node-down condition");
    assert!(cond["runbook"].as_str().unwrap().contains('.'), "{cond}");
    assert!(cond["escalation_class"].is_string() && cond["remediation_mode"].is_string());
    let summary = read("summary").unwrap();
    assert_eq!(summary["source"], "live");
    assert_ne!(summary["decision"]["level"], "ok");
    // Each snippet validates against its committed schema and is served over HTTP too.
    for name in [
        "summary",
        "actions",
        "tasks",
        "events",
        "health",
        "inventory",
        "sites",
        "dr",
    ] {
        let schema: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(
                vakt_tests::workspace().join(format!("schemas/snippets/{name}.schema.json")),
            )
            .unwrap(),
        )
        .unwrap();
        let v = jsonschema::draft202012::new(&schema).unwrap();
        let doc = read(name).unwrap();
        let errors: Vec<String> = v
            .iter_errors(&doc)
            .map(|e| format!("{} {e}", e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{name}: {errors:?}");
        assert!(
            doc["generated_at"].is_string() && doc["version"] == 1,
            "{name}"
        );
        let (code, _) = d.get(&format!("/snippets/{name}.json")).unwrap();
        assert_eq!(code, 200, "{name}");
    }
    // Events carry the audit trail.
    let events = read("events").unwrap();
    assert!(
        events["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "apply.completed")
    );
    let (_, m) = d.get("/metrics").unwrap();
    assert!(m.contains("vakt_node_up{env=\"dev\",node=\"agg-osl1-01\",site=\"osl1\",service_kind=\"aggregate\"} 1"), "{m}");

    // The snippets follow the node's health: the double goes down (503 everywhere), health
    // and actions say so on a later poll; it comes back, and they follow again.
    let status_of = |id: &str| -> Option<String> {
        read("health")?["nodes"]
            .as_array()?
            .iter()
            .find(|x| x["id"] == id)
            .and_then(|x| x["status"].as_str().map(str::to_owned))
    };
    let has_condition = |id: &str| {
        read("actions").is_some_and(|a| {
            a["conditions"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["id"] == id))
        })
    };
    let switch = |method: &str| {
        let (code, body) =
            nats::http_req(&node.url, method, "/faults/down", None, None).expect("fault switch");
        assert_eq!(code, 200, "{method} /faults/down: {body}");
    };
    assert!(!has_condition("node-down.agg-osl1-01"));
    switch("POST");
    assert!(
        wait_until(Duration::from_secs(20), || status_of("agg-osl1-01")
            .is_some_and(|s| s != "ok")
            && has_condition("node-down.agg-osl1-01")),
        "the snippets did not follow the node going down: {:?}",
        status_of("agg-osl1-01")
    );
    assert_eq!(status_of("agg-osl1-01").as_deref(), Some("down"));
    assert!(
        wait_until(Duration::from_secs(10), || {
            d
            .get("/metrics")
            .is_some_and(|(_, m)| m.contains("vakt_node_up{env=\"dev\",node=\"agg-osl1-01\",site=\"osl1\",service_kind=\"aggregate\"} 0"))
        }),
        "vakt_node_up did not follow"
    );
    switch("DELETE");
    assert!(
        wait_until(Duration::from_secs(20), || status_of("agg-osl1-01")
            .as_deref()
            == Some("ok")
            && !has_condition("node-down.agg-osl1-01")),
        "the snippets did not follow the node coming back: {:?}",
        status_of("agg-osl1-01")
    );
    // The unreachable node stayed down throughout.
    assert_eq!(status_of("run-osl1-01").as_deref(), Some("down"));
}

fn jobs_json(repo: &std::path::Path, n: &NatsServer) -> Vec<serde_json::Value> {
    let rp = repo.to_string_lossy().into_owned();
    let (code, out, err) = vakt_tests::outcome(&vakt_tests::vakt_env(
        &[
            "jobs",
            "list",
            "--env",
            "dev",
            "--repo",
            &rp,
            "--nats",
            &n.url(),
            "--format",
            "json",
        ],
        &[],
    ));
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap()
}

/// Waits for the daemon's first apply (the placement bucket filled), then commits the
/// polar-retail move and triggers a step.
fn move_after_first_apply(repo: &std::path::Path, n: &NatsServer) {
    assert!(
        wait_until(Duration::from_secs(15), || !read_bucket(
            &n.url(),
            "vakt_dev_placement"
        )
        .is_empty()),
        "no first apply"
    );
    move_polar_retail(repo);
    publish(&n.url(), "vakt.trigger.dev");
}

#[test]
fn placement_move_migrates_the_tenant_after_the_drain_with_inflight_work() {
    let (p1, p2) = (nats::port(), nats::port());
    let repo = migration_repo(p1, p2, "drain_timeout = \"20s\"\npoll_interval = \"100ms\"");
    let n = NatsServer::start();
    let old = agg_node(&n, 1, p1, &["--inflight", "5", "--drain-step-ms", "100"]);
    let new = agg_node(&n, 2, p2, &[]);
    let d = Daemon::start(repo.path(), &n, "dev", "m", LONG);
    let serves = |node: &nats::NodeDouble, t: &str| {
        nats::http_get(&node.url, "/admin/info")
            .and_then(|(_, b)| serde_json::from_str::<serde_json::Value>(&b).ok())
            .is_some_and(|v| v["tenants"].as_array().unwrap().iter().any(|x| x == t))
    };
    assert!(
        wait_until(Duration::from_secs(15), || serves(&old, "polar-retail")),
        "old node never served the tenant"
    );
    move_polar_retail(repo.path());
    publish(&n.url(), "vakt.trigger.dev");
    assert!(
        wait_until(Duration::from_secs(30), || jobs_json(repo.path(), &n)
            .first()
            .is_some_and(|j| j["state"] == "succeeded")),
        "{:?}",
        jobs_json(repo.path(), &n)
    );
    assert!(serves(&new, "polar-retail"));
    let placement = read_bucket(&n.url(), "vakt_dev_placement");
    let v: serde_json::Value =
        serde_json::from_slice(&placement["aggregate.polar-retail"].1).unwrap();
    assert_eq!(v["spec"]["shard"], "agg-osl1-b");
    // The placement was written only after the drain converged, and every step is audited
    // with the job id and the plan as correlation id.
    let ev = audit_events(&n.url(), "dev");
    let pos = |a: &str| {
        ev.iter()
            .position(|e| e["action"] == a)
            .unwrap_or_else(|| panic!("no {a}"))
    };
    assert!(pos("job.step.wait-drained") < pos("job.step.write-placement"));
    assert!(pos("job.step.write-placement") < pos("job.succeeded"));
    let job = &jobs_json(repo.path(), &n)[0];
    let drained = job["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "drain")
        .unwrap();
    assert!(
        drained["detail"].as_str().unwrap().contains("draining"),
        "{drained}"
    );
    assert!(
        ev.iter()
            .filter(|e| e["job_id"] == job["id"])
            .all(|e| e["correlation_id"] == job["correlation_id"])
    );
    drop(d);
}

#[test]
fn drain_that_never_converges_fails_then_dead_letters_and_placement_stays() {
    let (p1, p2) = (nats::port(), nats::port());
    let repo = migration_repo(
        p1,
        p2,
        "drain_timeout = \"1s\"\npoll_interval = \"100ms\"\nmax_attempts = 2",
    );
    let n = NatsServer::start();
    let _old = agg_node(
        &n,
        1,
        p1,
        &["--inflight", "5", "--drain-step-ms", "1000000"],
    );
    let _new = agg_node(&n, 2, p2, &[]);
    let _d = Daemon::start(repo.path(), &n, "dev", "dl", LONG);
    move_after_first_apply(repo.path(), &n);
    assert!(
        wait_until(Duration::from_secs(30), || jobs_json(repo.path(), &n)
            .first()
            .is_some_and(|j| j["state"] == "dead-lettered")),
        "{:?}",
        jobs_json(repo.path(), &n)
    );
    let job = jobs_json(repo.path(), &n)[0].clone();
    assert_eq!(job["attempts"], 2);
    assert!(
        job["error"].as_str().unwrap().contains("did not converge"),
        "{job}"
    );
    let placement = read_bucket(&n.url(), "vakt_dev_placement");
    let v: serde_json::Value =
        serde_json::from_slice(&placement["aggregate.polar-retail"].1).unwrap();
    assert_eq!(v["spec"]["shard"], "agg-osl1-a", "placement must not move");
    let ev = audit_events(&n.url(), "dev");
    assert!(ev.iter().any(|e| e["action"] == "job.retrying"));
    assert!(ev.iter().any(|e| e["action"] == "job.dead-lettered"));
    let rp = repo.path().to_string_lossy().into_owned();
    let url = n.url();
    let id = job["id"].as_str().unwrap();
    let run = |args: &[&str]| {
        let mut a = args.to_vec();
        a.extend(["--env", "dev", "--repo", &rp, "--nats", &url]);
        vakt_tests::outcome(&vakt_tests::vakt_env(&a, &[]))
    };
    let (code, out, _) = run(&["jobs", "dead-letters"]);
    assert_eq!(code, 0);
    assert!(out.contains(id), "{out}");
    // Cancel of a finished job and retry without a reason are refused; a retry is accepted.
    let (code, _, err) = run(&["jobs", "cancel", id, "--reason", "x"]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("already dead-lettered"), "{err}");
    let (code, _, err) = run(&["jobs", "retry", "job-000000000000", "--reason", "x"]);
    assert_eq!(code, 4, "{err}");
    let (code, out, err) = run(&["jobs", "retry", id, "--reason", "operator retry"]);
    assert_eq!(code, 0, "{out}{err}");
    let ev = audit_events(&n.url(), "dev");
    assert!(
        ev.iter()
            .any(|e| e["action"] == "job.cancel" && e["outcome"] == "refused")
    );
    assert!(
        ev.iter()
            .any(|e| e["action"] == "job.retry" && e["reason"] == "operator retry")
    );
}

#[test]
fn operator_api_authenticates_authorizes_and_audits() {
    let (p1, p2) = (nats::port(), nats::port());
    let repo = migration_repo(
        p1,
        p2,
        "drain_timeout = \"1s\"\npoll_interval = \"100ms\"\nmax_attempts = 1",
    );
    let n = NatsServer::start();
    let _old = agg_node(
        &n,
        1,
        p1,
        &["--inflight", "5", "--drain-step-ms", "1000000"],
    );
    let _new = agg_node(&n, 2, p2, &[]);
    // Tokens live outside the repo; one inside is refused.
    let secrets = tempfile::tempdir().unwrap();
    let tokens = secrets.path().join("tokens");
    let (op, ro) = ("op-token-0123456789abcdef", "ro-token-0123456789abcdef");
    std::fs::write(
        &tokens,
        format!("# test tokens\n{op} group:sre-oncall\n{ro} service-account:ci-vakt-plan\n"),
    )
    .unwrap();
    let inside = repo.path().join("tokens");
    std::fs::copy(&tokens, &inside).unwrap();
    let rp = repo.path().to_string_lossy().into_owned();
    let (code, _, err) = vakt_tests::outcome(&vakt_tests::vakt_env(
        &[
            "reconcile",
            "--env",
            "dev",
            "--repo",
            &rp,
            "--nats",
            &n.url(),
            "--api-tokens",
            &inside.to_string_lossy(),
        ],
        &[],
    ));
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("inside the ops repo"), "{err}");
    std::fs::remove_file(&inside).unwrap();

    let tk = tokens.to_string_lossy().into_owned();
    let d = Daemon::start(
        repo.path(),
        &n,
        "dev",
        "api",
        &["--interval", "1h", "--lease", "2s", "--api-tokens", &tk],
    );
    move_after_first_apply(repo.path(), &n);
    assert!(wait_until(Duration::from_secs(30), || jobs_json(
        repo.path(),
        &n
    )
    .first()
    .is_some_and(|j| j["state"] == "dead-lettered")));
    let job = jobs_json(repo.path(), &n)[0].clone();
    let id = job["id"].as_str().unwrap().to_owned();
    let plan = job["correlation_id"].as_str().unwrap().to_owned();
    let req = |m: &str, p: &str, t: Option<&str>, b: Option<&str>| {
        nats::http_req(&d.url, m, p, t, b).unwrap()
    };

    assert_eq!(req("GET", "/api/v1/status", None, None).0, 401);
    assert_eq!(
        req("GET", "/api/v1/status", Some("nope-nope-nope-nope"), None).0,
        401
    );
    let (code, body) = req("GET", "/api/v1/status", Some(ro), None);
    assert_eq!(code, 200, "{body}");
    let (code, body) = req(
        "GET",
        "/api/v1/jobs?state=dead-lettered&tenant=polar-retail",
        Some(ro),
        None,
    );
    assert_eq!(code, 200);
    assert!(body.contains(&id), "{body}");
    // read-only may look, not act; the operator must give a reason.
    let retry = format!("/api/v1/jobs/{id}/retry");
    assert_eq!(
        req(
            "POST",
            "/api/v1/approvals/plan-000000000000/approve",
            Some(ro),
            Some(r#"{"reason":"ok"}"#)
        )
        .0,
        403,
        "read-only cannot approve"
    );
    assert_eq!(
        req("POST", &retry, Some(ro), Some(r#"{"reason":"try"}"#)).0,
        403
    );
    assert_eq!(
        req("POST", &retry, Some(op), Some(r#"{"reason":" "}"#)).0,
        400
    );
    let (code, body) = req(
        "POST",
        &format!("/api/v1/jobs/{id}/cancel"),
        Some(op),
        Some(r#"{"reason":"stop"}"#),
    );
    assert_eq!(code, 409, "{body}");
    assert_eq!(
        req(
            "POST",
            "/api/v1/jobs/job-000000000000/retry",
            Some(op),
            Some(r#"{"reason":"x"}"#)
        )
        .0,
        404
    );
    let (code, body) = req("POST", &retry, Some(op), Some(r#"{"reason":"node fixed"}"#));
    assert_eq!(code, 200, "{body}");
    let ev = audit_events(&n.url(), "dev");
    let denied: Vec<_> = ev.iter().filter(|e| e["action"] == "api.denied").collect();
    assert!(denied.len() >= 3, "{denied:?}");
    assert!(
        denied
            .iter()
            .any(|e| e["actor"] == "service-account:ci-vakt-plan")
    );
    assert!(ev.iter().any(|e| e["action"] == "job.retry"
        && e["actor"] == "group:sre-oncall"
        && e["reason"] == "node fixed"));
    assert_eq!(
        req(
            "POST",
            "/api/v1/nodes/no-such-node/drain",
            Some(op),
            Some(r#"{"reason":"x"}"#)
        )
        .0,
        404
    );
    assert_eq!(
        req(
            "POST",
            "/api/v1/nodes/agg-osl1-02/drain",
            Some(ro),
            Some(r#"{"reason":"x"}"#)
        )
        .0,
        403
    );
    let (code, body) = req(
        "POST",
        "/api/v1/nodes/agg-osl1-02/drain",
        Some(op),
        Some(r#"{"reason":"patching"}"#),
    );
    assert_eq!(code, 202, "{body}");
    let (code, body) = req("GET", "/api/v1/drift", Some(ro), None);
    assert_eq!(code, 200, "{body}");
    let drift: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(drift["drifted"].is_array(), "{drift}");
    assert_eq!(req("GET", "/api/v1/plans", Some(ro), None).0, 200);
    let (code, y) = req("GET", "/api/v1/openapi.yaml", None, None);
    assert_eq!(code, 200);
    assert!(y.contains("vakt operator API"));

    // The CLI over the API.
    let cli = |args: &[&str]| {
        let mut a = args.to_vec();
        a.extend(["--api", &d.url, "--token", op]);
        vakt_tests::outcome(&vakt_tests::vakt_env(&a, &[]))
    };
    let (_, out, err) = cli(&["status"]);
    assert!(
        out.contains("Waits for a human") && out.contains("Running:"),
        "{out}{err}"
    );
    let (code, out, _) = cli(&["events", "--correlation-id", &plan]);
    assert_eq!(code, 0);
    assert!(
        out.contains("job.created") && out.contains("job.retry"),
        "{out}"
    );
    let (code, out, _) = cli(&["events", "--task-id", &id, "--format", "json"]);
    assert_eq!(code, 0);
    let evs: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert!(!evs.is_empty() && evs.iter().all(|e| e["job_id"] == id.as_str()));
    // jobs and approve go through the API too (with the token's roles).
    let via = |args: &[&str], token: &str| {
        let mut a = args.to_vec();
        a.extend([
            "--env", "dev", "--repo", &rp, "--api", &d.url, "--token", token,
        ]);
        vakt_tests::outcome(&vakt_tests::vakt_env(&a, &[]))
    };
    let (code, out, err) = via(&["jobs", "list", "--tenant", "polar-retail"], ro);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&id), "{out}");
    let (code, _, err) = via(&["jobs", "cancel", &id, "--reason", "stop"], ro);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("ops.jobs.cancel"), "{err}");
    let (code, _, err) = via(&["approve", "plan-000000000000", "--reason", "x"], op);
    assert_eq!(code, 4, "{err}");
    let (code, _, err) = vakt_tests::outcome(&vakt_tests::vakt_env(
        &["status", "--api", &d.url, "--token", "nope-nope-nope-nope"],
        &[],
    ));
    assert_eq!(code, 4, "{err}");
}

fn job_where(
    repo: &std::path::Path,
    n: &NatsServer,
    secs: u64,
    f: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let mut last = Vec::new();
    let ok = wait_until(Duration::from_secs(secs), || {
        last = jobs_json(repo, n);
        last.first().is_some_and(&f)
    });
    assert!(ok, "job never reached the expected state: {last:?}");
    last[0].clone()
}

fn shard_of_polar_retail(n: &NatsServer) -> String {
    let placement = read_bucket(&n.url(), "vakt_dev_placement");
    let v: serde_json::Value =
        serde_json::from_slice(&placement["aggregate.polar-retail"].1).unwrap();
    v["spec"]["shard"].as_str().unwrap().to_owned()
}

#[test]
fn node_down_at_preflight_blocks_with_its_reason_and_a_retry_succeeds_once_it_is_up() {
    let (p1, p2) = (nats::port(), nats::port());
    let repo = migration_repo(
        p1,
        p2,
        "drain_timeout = \"10s\"\npoll_interval = \"100ms\"\nmax_attempts = 1",
    );
    let n = NatsServer::start();
    let _old = agg_node(&n, 1, p1, &["--inflight", "2"]);
    let _d = Daemon::start(repo.path(), &n, "dev", "pf", LONG);
    move_after_first_apply(repo.path(), &n);
    let job = job_where(repo.path(), &n, 30, |j| j["state"] == "dead-lettered");
    let err = job["error"].as_str().unwrap();
    assert!(
        err.contains("preflight blocked") && err.contains("agg-osl1-02"),
        "{err}"
    );
    assert_eq!(shard_of_polar_retail(&n), "agg-osl1-a");
    // The node comes up; an operator retries; the move completes.
    let _new = agg_node(&n, 2, p2, &[]);
    let rp = repo.path().to_string_lossy().into_owned();
    let id = job["id"].as_str().unwrap();
    let (code, out, err) = vakt_tests::outcome(&vakt_tests::vakt_env(
        &[
            "jobs",
            "retry",
            id,
            "--reason",
            "agg-osl1-02 is back",
            "--env",
            "dev",
            "--repo",
            &rp,
            "--nats",
            &n.url(),
        ],
        &[],
    ));
    assert_eq!(code, 0, "{out}{err}");
    job_where(repo.path(), &n, 30, |j| j["state"] == "succeeded");
    assert_eq!(shard_of_polar_retail(&n), "agg-osl1-b");
}

#[test]
fn a_node_that_lies_about_being_drained_is_not_trusted() {
    let (p1, p2) = (nats::port(), nats::port());
    let repo = migration_repo(
        p1,
        p2,
        "drain_timeout = \"10s\"\npoll_interval = \"100ms\"\nmax_attempts = 1",
    );
    let n = NatsServer::start();
    let _old = agg_node(
        &n,
        1,
        p1,
        &[
            "--inflight",
            "5",
            "--drain-step-ms",
            "1000000",
            "--fault",
            "lie-drained",
        ],
    );
    let _new = agg_node(&n, 2, p2, &[]);
    let _d = Daemon::start(repo.path(), &n, "dev", "lie", LONG);
    move_after_first_apply(repo.path(), &n);
    let job = job_where(repo.path(), &n, 30, |j| j["state"] == "dead-lettered");
    assert!(
        job["error"].as_str().unwrap().contains("not trusted"),
        "{job}"
    );
    assert_eq!(shard_of_polar_retail(&n), "agg-osl1-a");
}

#[test]
fn a_long_drain_is_cancelled_and_the_placement_stays() {
    let (p1, p2) = (nats::port(), nats::port());
    let repo = migration_repo(p1, p2, "drain_timeout = \"60s\"\npoll_interval = \"100ms\"");
    let n = NatsServer::start();
    let _old = agg_node(
        &n,
        1,
        p1,
        &["--inflight", "5", "--drain-step-ms", "1000000"],
    );
    let _new = agg_node(&n, 2, p2, &[]);
    let _d = Daemon::start(repo.path(), &n, "dev", "cx", LONG);
    move_after_first_apply(repo.path(), &n);
    let job = job_where(repo.path(), &n, 30, |j| {
        j["state"] == "running" && j["steps"][2]["state"] == "running"
    });
    let rp = repo.path().to_string_lossy().into_owned();
    let id = job["id"].as_str().unwrap();
    let (code, out, err) = vakt_tests::outcome(&vakt_tests::vakt_env(
        &[
            "jobs",
            "cancel",
            id,
            "--reason",
            "wrong shard",
            "--env",
            "dev",
            "--repo",
            &rp,
            "--nats",
            &n.url(),
        ],
        &[],
    ));
    assert_eq!(code, 0, "{out}{err}");
    let job = job_where(repo.path(), &n, 20, |j| {
        j["state"] == "cancelled" || j["state"] == "failed"
    });
    assert_eq!(job["state"], "cancelled", "{job}");
    assert_eq!(shard_of_polar_retail(&n), "agg-osl1-a");
}

#[test]
fn a_replica_resumes_a_migration_whose_leader_died_and_finishes_it_once() {
    let (p1, p2) = (nats::port(), nats::port());
    let repo = migration_repo(p1, p2, "drain_timeout = \"60s\"\npoll_interval = \"100ms\"");
    let n = NatsServer::start();
    let _old = agg_node(&n, 1, p1, &["--inflight", "8", "--drain-step-ms", "500"]);
    let _new = agg_node(&n, 2, p2, &[]);
    let mut a = Daemon::start(repo.path(), &n, "dev", "ra", LONG);
    assert!(wait_until(Duration::from_secs(15), || a.is_leader()));
    let b = Daemon::start(repo.path(), &n, "dev", "rb", LONG);
    move_after_first_apply(repo.path(), &n);
    job_where(repo.path(), &n, 30, |j| {
        j["state"] == "running" && j["owner"] == "ra" && j["steps"][2]["state"] == "running"
    });
    let _ = a.child.kill();
    let _ = a.child.wait();
    let job = job_where(repo.path(), &n, 40, |j| j["state"] == "succeeded");
    assert_eq!(job["owner"], serde_json::Value::Null);
    assert!(b.is_leader());
    assert_eq!(shard_of_polar_retail(&n), "agg-osl1-b");
    let ev = audit_events(&n.url(), "dev");
    let of = |a: &str| {
        ev.iter()
            .filter(|e| e["action"] == a && e["job_id"] == job["id"])
            .count()
    };
    assert_eq!(of("job.resumed"), 1, "resumed once");
    assert_eq!(of("job.step.write-placement"), 1, "placement written once");
    assert_eq!(of("job.succeeded"), 1);
    assert!(
        ev.iter()
            .any(|e| e["action"] == "job.resumed" && e["actor"] == "rb")
    );
}

#[test]
fn discovered_nodes_are_adopted_into_a_work_tree_or_rejected_as_untrusted() {
    let repo = ops_git();
    let n = NatsServer::start();
    let (p1, p2) = (nats::port(), nats::port());
    for (node, port) in [("agg-osl1-01", p1), ("agg-osl1-02", p2)] {
        edit(
            repo.path(),
            &format!("inventory/nodes/{node}.toml"),
            &format!("http://{node}.dataverket.internal:9090"),
            &format!("http://127.0.0.1:{port}"),
        );
    }
    commit_all(repo.path(), "aggregate nodes on loopback");
    // Another node answers at agg-osl1-01's URL; agg-osl1-02 runs a version Git does not declare.
    let _a = nats::NodeDouble::start(
        &n,
        "vakt_dev",
        "agg-osl1-04",
        "aggregate",
        "osl1",
        "agg-osl1-a",
        "2.15.0",
        p1,
        &[],
    );
    let _b = nats::NodeDouble::start(
        &n,
        "vakt_dev",
        "agg-osl1-02",
        "aggregate",
        "osl1",
        "agg-osl1-b",
        "9.9.9",
        p2,
        &[],
    );
    let dir = tempfile::tempdir().unwrap();
    let snippets = dir.path().to_string_lossy().into_owned();
    let _d = Daemon::start(
        repo.path(),
        &n,
        "dev",
        "inv",
        &[
            "--interval",
            "1h",
            "--lease",
            "2s",
            "--node-poll",
            "1s",
            "--snippets",
            &snippets,
        ],
    );
    let rp = repo.path().to_string_lossy().into_owned();
    let url = n.url();
    let run = |args: &[&str]| {
        let mut a = args.to_vec();
        a.extend(["--env", "dev", "--repo", &rp, "--nats", &url]);
        vakt_tests::outcome(&vakt_tests::vakt_env(&a, &[]))
    };
    assert!(
        wait_until(Duration::from_secs(20), || {
            let (_, out, _) = run(&["inventory", "list"]);
            out.contains("agg-osl1-04") && out.contains("9.9.9")
        }),
        "{:?}",
        run(&["inventory", "list"])
    );
    let (code, out, err) = run(&["inventory", "adopt", "agg-osl1-04"]);
    assert_eq!(code, 0, "{out}{err}");
    let written =
        std::fs::read_to_string(repo.path().join("inventory/nodes/agg-osl1-04.toml")).unwrap();
    assert!(
        written.contains("id = \"agg-osl1-04\"") && written.contains("version = \"2.15.0\""),
        "{written}"
    );
    let (code, out, err) = run(&["inventory", "adopt", "agg-osl1-02"]);
    assert_eq!(code, 0, "{out}{err}");
    let updated =
        std::fs::read_to_string(repo.path().join("inventory/nodes/agg-osl1-02.toml")).unwrap();
    assert!(updated.contains("version = \"9.9.9\""), "{updated}");
    // The adopted declarations validate as a pull request would.
    let (code, out, _) = vakt_tests::outcome(&vakt_tests::vakt(&[
        "validate",
        "--repo",
        &rp,
        "--env",
        "dev",
        "--now",
        vakt_tests::TODAY,
    ]));
    assert!(!out.contains("agg-osl1-04.toml") || code == 0, "{out}");
    let (code, _, err) = run(&["inventory", "reject", "nobody-01", "--reason", "x"]);
    assert_eq!(code, 4, "{err}");
    let (code, out, err) = run(&[
        "inventory",
        "reject",
        "agg-osl1-04",
        "--reason",
        "not in the change calendar",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let ev = audit_events(&n.url(), "dev");
    assert!(ev.iter().any(|e| e["action"] == "inventory.adopt"));
    assert!(
        ev.iter()
            .any(|e| e["action"] == "inventory.reject"
                && e["reason"] == "not in the change calendar")
    );
    // The site's inventory snippet shows the discovered item as rejected.
    assert!(wait_until(Duration::from_secs(10), || {
        std::fs::read(dir.path().join("inventory.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .is_some_and(|v| {
                v["discovered"].as_array().unwrap().iter().any(|x| {
                    x["id"] == "agg-osl1-04"
                        && x["detail"]
                            .as_str()
                            .unwrap()
                            .contains("rejected as untrusted")
                })
            })
    }));
}

#[test]
fn a_node_that_hangs_or_answers_500_blocks_the_preflight_and_placement_stays() {
    let (p1, p2) = (nats::port(), nats::port());
    let repo = migration_repo(
        p1,
        p2,
        "drain_timeout = \"10s\"\npoll_interval = \"100ms\"\nmax_attempts = 1",
    );
    let n = NatsServer::start();
    let _old = agg_node(&n, 1, p1, &["--fault", "hang"]);
    let _new = agg_node(&n, 2, p2, &["--fault", "error-500"]);
    let _d = Daemon::start(repo.path(), &n, "dev", "flt", LONG);
    move_after_first_apply(repo.path(), &n);
    let job = job_where(repo.path(), &n, 40, |j| j["state"] == "dead-lettered");
    let err = job["error"].as_str().unwrap();
    assert!(err.contains("preflight blocked"), "{err}");
    assert!(
        err.contains("agg-osl1-01") && err.contains("agg-osl1-02"),
        "both nodes named: {err}"
    );
    assert!(
        err.contains("timed out") || err.contains("operation timed out"),
        "{err}"
    );
    assert_eq!(shard_of_polar_retail(&n), "agg-osl1-a");
}

#[test]
fn node_drain_drains_every_tenant_on_the_node_and_waits_for_inflight_work() {
    let (p1, p2) = (nats::port(), nats::port());
    let repo = migration_repo(p1, p2, "drain_timeout = \"20s\"\npoll_interval = \"100ms\"");
    let n = NatsServer::start();
    let node = agg_node(&n, 1, p1, &["--inflight", "3", "--drain-step-ms", "100"]);
    let _other = agg_node(&n, 2, p2, &[]);
    let d = Daemon::start(repo.path(), &n, "dev", "nd", LONG);
    assert!(wait_until(Duration::from_secs(15), || {
        d.status()["applied_commit"].is_string()
    }));
    let served = || -> Vec<String> {
        nats::http_get(&node.url, "/admin/info")
            .and_then(|(_, b)| serde_json::from_str::<serde_json::Value>(&b).ok())
            .map(|v| {
                v["tenants"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| t.as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    assert!(
        wait_until(Duration::from_secs(15), || served().len() >= 2),
        "{:?}",
        served()
    );
    let tenants = served();
    let rp = repo.path().to_string_lossy().into_owned();
    let url = n.url();
    let run = |args: &[&str]| {
        let mut a = args.to_vec();
        a.extend(["--env", "dev", "--repo", &rp, "--nats", &url]);
        vakt_tests::outcome(&vakt_tests::vakt_env(&a, &[]))
    };
    let (code, _, err) = run(&["jobs", "drain-node", "no-such-node", "--reason", "x"]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("not declared"), "{err}");
    let (code, out, err) = run(&[
        "jobs",
        "drain-node",
        "agg-osl1-01",
        "--reason",
        "kernel patch",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let job = job_where(repo.path(), &n, 30, |j| {
        j["kind"] == "node-drain" && j["state"] == "succeeded"
    });
    for t in &tenants {
        let (_, b) = nats::http_get(&node.url, &format!("/admin/tenants/{t}")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&b).unwrap();
        assert_eq!(v["state"], "drained", "{t}: {v}");
        assert_eq!(v["inflight"], 0);
    }
    assert_eq!(
        shard_of_polar_retail(&n),
        "agg-osl1-a",
        "a node drain does not move placement"
    );
    let ev = audit_events(&n.url(), "dev");
    assert!(
        ev.iter()
            .any(|e| e["action"] == "job.created" && e["job_id"] == job["id"])
    );
    assert!(
        ev.iter()
            .any(|e| e["action"] == "job.succeeded" && e["job_id"] == job["id"])
    );
}

#[test]
fn operator_api_survives_schemathesis_against_its_openapi_document() {
    let repo = ops_git();
    let n = NatsServer::start();
    let secrets = tempfile::tempdir().unwrap();
    let tokens = secrets.path().join("tokens");
    let op = "op-token-0123456789abcdef";
    std::fs::write(&tokens, format!("{op} group:sre-oncall\n")).unwrap();
    let tk = tokens.to_string_lossy().into_owned();
    let d = Daemon::start(
        repo.path(),
        &n,
        "dev",
        "fuzz",
        &["--interval", "1h", "--lease", "2s", "--api-tokens", &tk],
    );
    assert!(wait_until(Duration::from_secs(15), || {
        d.status()["applied_commit"].is_string()
    }));
    let spec = vakt_tests::workspace().join("openapi/operator-api.yaml");
    let out = std::process::Command::new("st")
        .args(["run"])
        .arg(&spec)
        .args([
            "--url",
            &d.url,
            "-H",
            &format!("Authorization: Bearer {op}"),
        ])
        .args(["--checks", "all", "--max-examples", "15", "--seed", "42"])
        .env("NO_COLOR", "1")
        // schemathesis keeps a cache in its working directory: not in the repo.
        .current_dir(secrets.path())
        .output()
        .expect(
            "schemathesis (`st`) is installed by scripts/test.sh: pip install schemathesis==4.32.5",
        );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "schemathesis found failures:\n{text}");
    assert!(text.contains("passed"), "{text}");
}

#[test]
fn a_placement_changed_under_a_migration_fails_it_for_good_and_a_retry_is_refused() {
    let (p1, p2) = (nats::port(), nats::port());
    let repo = migration_repo(p1, p2, "drain_timeout = \"30s\"\npoll_interval = \"100ms\"");
    let n = NatsServer::start();
    let _old = agg_node(&n, 1, p1, &["--inflight", "10", "--drain-step-ms", "300"]);
    let _new = agg_node(&n, 2, p2, &[]);
    let d = Daemon::start(repo.path(), &n, "dev", "cas", LONG);
    assert!(wait_until(Duration::from_secs(15), || {
        d.status()["applied_commit"].is_string()
    }));
    move_polar_retail(repo.path());
    publish(&n.url(), "vakt.trigger.dev");
    job_where(repo.path(), &n, 30, |j| j["steps"][2]["state"] == "running");
    // Someone writes the placement key while the drain runs: the job's CAS must not overwrite it.
    let hand =
        br#"{"spec":{"service_kind":"aggregate","shard":"agg-osl1-a","tenant":"polar-retail"}}"#;
    put_key(
        &n.url(),
        "vakt_dev_placement",
        "aggregate.polar-retail",
        hand,
    );
    let job = job_where(repo.path(), &n, 30, |j| j["state"] == "failed");
    assert_eq!(job["retryable"], false, "{job}");
    assert!(
        job["error"]
            .as_str()
            .unwrap()
            .contains("changed since it was read"),
        "{job}"
    );
    let rp = repo.path().to_string_lossy().into_owned();
    let id = job["id"].as_str().unwrap();
    let (code, _, err) = vakt_tests::outcome(&vakt_tests::vakt_env(
        &[
            "jobs",
            "retry",
            id,
            "--reason",
            "again",
            "--env",
            "dev",
            "--repo",
            &rp,
            "--nats",
            &n.url(),
        ],
        &[],
    ));
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("not retryable"), "{err}");
    let ev = audit_events(&n.url(), "dev");
    assert!(
        ev.iter()
            .any(|e| e["action"] == "job.retry" && e["outcome"] == "refused")
    );
}

#[test]
fn api_tokens_from_the_environment_authenticate_and_bad_entries_stop_the_daemon() {
    let n = NatsServer::start();
    let repo = nats::ops_git();
    let rp = repo.path().to_string_lossy().into_owned();
    // A malformed entry is refused before anything starts, naming the entry.
    let (code, _, err) = vakt_tests::outcome(&vakt_tests::vakt_env(
        &[
            "reconcile",
            "--env",
            "dev",
            "--repo",
            &rp,
            "--nats",
            &n.url(),
        ],
        &[(
            "VAKT_API_TOKENS_DATA",
            "ro-token-0123456789abcdef service-account:ci-vakt-plan;short user:x",
        )],
    ));
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("VAKT_API_TOKENS_DATA entry 2"), "{err}");

    let (op, ro) = ("op-token-0123456789abcdef", "ro-token-0123456789abcdef");
    let data = format!("{op} group:sre-oncall; {ro} service-account:ci-vakt-plan");
    // The first commit is invalid, so nothing gets applied at first.
    let tenant = repo
        .path()
        .join("config/tenants/fjord-logistics/tenant.toml");
    let good = std::fs::read_to_string(&tenant).unwrap();
    std::fs::write(&tenant, good.replacen("tier = ", "tierr = ", 1)).unwrap();
    nats::commit_all(repo.path(), "typo");
    let d = Daemon::start_at(
        repo.path(),
        &n.url(),
        n.dir.path(),
        "dev",
        "env-tokens",
        &["--interval", "500ms", "--lease", "2s"],
        &[("VAKT_API_TOKENS_DATA", &data)],
    );
    assert!(wait_until(Duration::from_secs(15), || d.is_leader()));
    let req = |m: &str, p: &str, t: Option<&str>, b: Option<&str>| {
        nats::http_req(&d.url, m, p, t, b).unwrap()
    };
    // Roles come from the applied commit: none yet, and the refusal says so.
    let (code, body) = req("GET", "/api/v1/status", Some(op), None);
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("nothing is applied yet"), "{body}");
    std::fs::write(&tenant, good).unwrap();
    nats::commit_all(repo.path(), "fix the typo");
    assert_eq!(req("GET", "/api/v1/status", None, None).0, 401);
    assert_eq!(
        req(
            "GET",
            "/api/v1/status",
            Some("not-a-token-0123456789"),
            None
        )
        .0,
        401
    );
    // Roles and bindings come from the applied commit: allowed once the first apply is done.
    assert!(
        wait_until(Duration::from_secs(15), || req(
            "GET",
            "/api/v1/status",
            Some(ro),
            None
        )
        .0 == 200),
        "{:?}",
        req("GET", "/api/v1/status", Some(ro), None)
    );
    let (code, body) = req("GET", "/api/v1/status", Some(op), None);
    assert_eq!(code, 200, "{body}");
    // Roles still come from access/: the read-only service account cannot approve.
    assert_eq!(
        req(
            "POST",
            "/api/v1/approvals/plan-000000000000/approve",
            Some(ro),
            Some(r#"{"reason":"ok"}"#)
        )
        .0,
        403
    );
}

/// `openssl …` in `dir`, failing the test with its output.
#[test]
fn nodes_over_mutual_tls_need_the_ca_and_a_client_certificate_and_plain_http_is_refused() {
    let pki = tempfile::tempdir().unwrap();
    vakt_tests::test_pki(pki.path());
    let f = |name: &str| pki.path().join(name).to_string_lossy().into_owned();
    let repo = ops_git();
    let n = NatsServer::start();
    let (p1, p2) = (nats::port(), nats::port());
    // agg-osl1-01 serves TLS and requires a client certificate. agg-osl1-02 will require TLS
    // but declare a plain http:// URL, where a listener counts every connection it gets:
    // validation refuses that commit (`inventory.node-tls`), so it is committed last.
    let require_tls = |node: &str, url: &str| {
        edit(
            repo.path(),
            &format!("inventory/nodes/{node}.toml"),
            &format!("admin_url = \"http://{node}.dataverket.internal:9090\""),
            &format!("admin_url = \"{url}\"\ntls = \"required\""),
        );
    };
    require_tls("agg-osl1-01", &format!("https://127.0.0.1:{p1}"));
    commit_all(repo.path(), "agg-osl1-01 on loopback, TLS required");
    let _node = agg_node(
        &n,
        1,
        p1,
        &[
            "--tls-cert",
            &f("server.pem"),
            "--tls-key",
            &f("server.key"),
            "--tls-client-ca",
            &f("ca.pem"),
        ],
    );
    let plain = std::net::TcpListener::bind(("127.0.0.1", p2)).unwrap();
    plain.set_nonblocking(true).unwrap();
    let plain_calls = || {
        let mut k = 0;
        while plain.accept().is_ok() {
            k += 1;
        }
        k
    };
    let detail_of = |d: &Daemon, id: &str| -> Option<String> {
        let (_, b) = d.get("/snippets/inventory.json")?;
        let v: serde_json::Value = serde_json::from_str(&b).ok()?;
        v["declared"].as_array()?.iter().find(|x| x["id"] == id)?["detail"]
            .as_str()
            .map(str::to_owned)
    };
    let status_of = |d: &Daemon, id: &str| -> Option<String> {
        let (_, b) = d.get("/snippets/health.json")?;
        let v: serde_json::Value = serde_json::from_str(&b).ok()?;
        v["nodes"].as_array()?.iter().find(|x| x["id"] == id)?["status"]
            .as_str()
            .map(str::to_owned)
    };
    let start = |id: &str, tls: &[&str]| {
        let mut args = vec!["--interval", "1h", "--lease", "2s", "--node-poll", "1s"];
        args.extend(tls);
        Daemon::start(repo.path(), &n, "dev", id, &args)
    };
    let wait_detail = |d: &Daemon, id: &str, want: &str| {
        let mut last = None;
        let ok = wait_until(Duration::from_secs(20), || {
            last = detail_of(d, id);
            last.as_deref().is_some_and(|s| s.contains(want))
        });
        assert!(ok, "{id}: wanted {want:?} in the detail, got {last:?}");
    };

    // No TLS options: the handshake fails and says --node-ca is missing.
    let d = start("no-tls", &[]);
    wait_detail(&d, "agg-osl1-01", "--node-ca");
    assert_eq!(status_of(&d, "agg-osl1-01").as_deref(), Some("down"));
    drop(d);

    // The CA only: the node asks for a client certificate.
    let ca = f("ca.pem");
    let d = start("ca-only", &["--node-ca", &ca]);
    wait_detail(&d, "agg-osl1-01", "--node-cert");
    drop(d);

    // CA, certificate and key: the node is up and confirmed.
    let (cert, key) = (f("client.pem"), f("client.key"));
    let d = start(
        "mtls",
        &["--node-ca", &ca, "--node-cert", &cert, "--node-key", &key],
    );
    assert!(
        wait_until(Duration::from_secs(20), || status_of(&d, "agg-osl1-01")
            .as_deref()
            == Some("ok")),
        "agg-osl1-01 never up over mutual TLS: {:?}",
        detail_of(&d, "agg-osl1-01")
    );
    // A commit where agg-osl1-02 requires TLS on a plain http:// URL is refused before it is
    // applied, naming the node file; the node is never called over plain HTTP.
    let applied = d.status()["applied_commit"].clone();
    assert!(applied.is_string(), "{}", d.status());
    require_tls("agg-osl1-02", &format!("http://127.0.0.1:{p2}"));
    let bad = commit_all(repo.path(), "agg-osl1-02 on plain http, TLS required");
    publish(&n.url(), "vakt.trigger.dev");
    assert!(
        wait_until(Duration::from_secs(15), || d.status()["refused"]["commit"]
            == bad.as_str()),
        "{}",
        d.status()
    );
    let s = d.status();
    assert_eq!(s["applied_commit"], applied);
    let f = s["refused"]["findings"][0].as_str().unwrap();
    assert!(
        f.starts_with("inventory/nodes/agg-osl1-02.toml:") && f.contains("requires TLS"),
        "{f}"
    );
    assert_eq!(
        plain_calls(),
        0,
        "a node requiring TLS was called over http://"
    );

    // A certificate without its key is a usage error.
    let o = vakt_tests::vakt(&["reconcile", "--env", "dev", "--node-cert", &cert]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A seeded kill -9 of the leader at a job transition (after the job record is saved, before
/// or after its audit event is sent): the replica that takes over finishes the job, and every
/// transition has exactly one event, in an intact chain. The seed is printed; replay with
/// `VAKT_KILL_SEED=<seed>`.
#[test]
fn kill_9_of_the_leader_at_job_transitions_leaves_every_transition_audited_once() {
    let seed: u64 = match std::env::var("VAKT_KILL_SEED") {
        Ok(s) => s
            .trim()
            .parse()
            .expect("VAKT_KILL_SEED is an unsigned integer"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    };
    eprintln!("job kill points: seed {seed}; replay with VAKT_KILL_SEED={seed}");
    // Transitions of a migration job: 1 started, 2..=7 its six steps, 8 succeeded. A kill
    // after the save and before the event, and one after the event, each at a seeded
    // transition; plus the terminal save (nobody resumes a finished job: the outbox is sent
    // by the next pass).
    let mut x = seed | 1;
    let mut next = |m: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % m
    };
    let points = [
        ("job.saved", 1 + next(7)),
        ("job.audited", 1 + next(7)),
        ("job.saved", 8),
    ];
    for (point, k) in points {
        let ctx = format!("seed {seed}, kill point {point}:{k}");
        let (p1, p2) = (nats::port(), nats::port());
        let repo = migration_repo(p1, p2, "drain_timeout = \"30s\"\npoll_interval = \"100ms\"");
        let n = NatsServer::start();
        let _old = agg_node(&n, 1, p1, &[]);
        let _new = agg_node(&n, 2, p2, &[]);
        let ready = n.dir.path().join("held");
        let spec = format!("{point}:{k}");
        let ready_s = ready.to_string_lossy().into_owned();
        let mut a = Daemon::start_at(
            repo.path(),
            &n.url(),
            n.dir.path(),
            "dev",
            "ka",
            LONG,
            &[
                ("VAKT_TEST_HOLD", &spec),
                ("VAKT_TEST_HOLD_READY", &ready_s),
            ],
        );
        move_after_first_apply(repo.path(), &n);
        assert!(
            wait_until(Duration::from_secs(60), || ready.exists()),
            "{ctx}: the leader never reached the kill point"
        );
        a.child.kill().expect("kill -9");
        let _ = a.child.wait();
        let _b = Daemon::start(repo.path(), &n, "dev", "kb", LONG);
        let job = job_where(repo.path(), &n, 60, |j| {
            j["state"] == "succeeded" && j.get("unaudited").is_none()
        });
        assert_eq!(shard_of_polar_retail(&n), "agg-osl1-b", "{ctx}");
        let ev = vakt_tests::nats::verified_events(&n.url(), "dev");
        let mine: Vec<&serde_json::Value> =
            ev.iter().filter(|e| e["job_id"] == job["id"]).collect();
        let mut ids = std::collections::BTreeSet::new();
        for e in &mine {
            assert!(
                ids.insert(e["id"].to_string()),
                "{ctx}: duplicate {}",
                e["id"]
            );
        }
        let of = |a: &str| mine.iter().filter(|e| e["action"] == a).count();
        assert_eq!(of("job.created"), 1, "{ctx}");
        assert_eq!(of("job.started"), 1, "{ctx}");
        for s in job["steps"].as_array().unwrap() {
            let action = format!("job.step.{}", s["name"].as_str().unwrap());
            assert_eq!(of(&action), 1, "{ctx}: {action}");
        }
        assert_eq!(of("job.succeeded"), 1, "{ctx}");
        // The replica resumed the job unless the kill came after its last transition.
        let resumed = if k == 8 { 0 } else { 1 };
        assert_eq!(of("job.resumed"), resumed, "{ctx}");
    }
}
