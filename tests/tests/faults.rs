//! End-to-end: the fault rows of RELIABILITY.md that need a real fault, against real processes
//! (nats-server, `vakt reconcile`, `vakt-node-double`): NATS down for 30 s during a daemon
//! reconcile, a cluster server lost in steady state and during a migration job, a full or
//! read-only backup directory (a real tmpfs), and a node admin endpoint that answers 10 MB.

use std::path::Path;
use std::time::{Duration, Instant};

use vakt_tests::faults::{
    BigAnswer, Tmpfs, agg_node, edit, entries, job_where, migration_repo, move_polar_retail,
    shard_of_polar_retail,
};
use vakt_tests::nats::{
    self, Daemon, NatsCluster, NatsServer, audit_events, commit_all, desired_count, ops_git,
    publish, read_bucket, try_get, wait_until,
};

/// `vakt ARGS --repo REPO --nats URLS`: (exit code, stdout, stderr).
fn run(repo: &Path, urls: &str, args: &[&str]) -> (i32, String, String) {
    let rp = repo.to_string_lossy().into_owned();
    let mut a: Vec<&str> = args.to_vec();
    a.extend(["--repo", &rp, "--nats", urls]);
    vakt_tests::outcome(&vakt_tests::vakt_env(&a, &[]))
}

fn log_of(dir: &Path, id: &str) -> String {
    std::fs::read_to_string(dir.join(format!("daemon-{id}.log"))).unwrap_or_default()
}

/// NATS killed while the daemon's first apply is parked after 20 writes, kept down for a real
/// 30 s, then restarted on the same port and data directory. The daemon reports degraded in
/// `/healthz` and `/status` within one interval, starts no pass while NATS is down (each
/// trigger is counted as skipped: at most one per interval, no retry loop), and within 10 s of
/// NATS returning has applied the branch head, including a commit made during the outage,
/// with no drift, every key once in the audit trail and the chain intact.
#[test]
fn nats_down_for_30_s_mid_reconcile_is_degraded_then_converges_within_10_s_losing_nothing() {
    const INTERVAL: Duration = Duration::from_secs(2);
    const OUTAGE: Duration = Duration::from_secs(30);
    let repo = ops_git();
    let mut n = NatsServer::start();
    let go = n.dir.path().join("go");
    let go_s = go.to_string_lossy().into_owned();
    let d = Daemon::start_at(
        repo.path(),
        &n.url(),
        n.dir.path(),
        "dev",
        "out",
        &["--interval", "2s", "--lease", "3s"],
        &[
            ("VAKT_TEST_PAUSE_AFTER_WRITES", "20"),
            ("VAKT_TEST_PAUSE_UNTIL", &go_s),
        ],
    );
    let logs = n.dir.path().to_path_buf();
    let log = || log_of(&logs, "out");
    assert!(
        wait_until(Duration::from_secs(30), || d.is_leader()
            && desired_count(&n.url()) == 20),
        "the first apply did not park after 20 writes; log:\n{}",
        log()
    );
    assert_eq!(d.health().unwrap()["status"], "ok");

    n.kill();
    let down_at = Instant::now();
    std::fs::write(&go, b"").expect("go");
    let mut health = serde_json::Value::Null;
    assert!(
        wait_until(INTERVAL, || {
            health = d.health().unwrap_or_default();
            health["status"] == "degraded"
        }),
        "not degraded within one interval ({INTERVAL:?}): {health:#}"
    );
    assert_eq!(health["nats"]["state"], "disconnected", "{health:#}");
    assert!(health["nats"]["down_since"].is_string(), "{health:#}");
    let status = d.status();
    assert_eq!(status["nats"]["state"], "disconnected", "{status:#}");

    // A commit lands during the outage: it must not be lost.
    edit(
        repo.path(),
        "config/tenants/fjord-logistics/tenant.toml",
        "requests_per_second = 400",
        "requests_per_second = 401",
    );
    let head = commit_all(repo.path(), "a change made while NATS is down");

    // The whole outage: degraded at every look, no pass started.
    let steps_down = d.health().unwrap()["steps"].as_u64().unwrap();
    let mut looks = 0;
    while down_at.elapsed() < OUTAGE {
        let h = d
            .health()
            .expect("the daemon serves /healthz while NATS is down");
        assert_eq!(h["status"], "degraded", "{h:#}");
        looks += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    let h = d.health().unwrap();
    eprintln!("after {OUTAGE:?} down ({looks} looks): {h:#}");
    assert!(
        h["steps"].as_u64().unwrap() <= steps_down + 1,
        "passes ran against a NATS that is down: {steps_down} then {h:#}"
    );
    let skipped = h["nats"]["passes_skipped"].as_u64().unwrap();
    let most = OUTAGE.as_secs() / INTERVAL.as_secs() + 2;
    assert!(
        skipped <= most,
        "{skipped} passes tried in {OUTAGE:?} (at most one per interval: {most}): no backoff"
    );
    // Reconnecting backs off: 100 ms doubling to 2 s between attempts, so about 20 in 30 s
    // (a client retrying in a loop would make thousands).
    let attempts = h["nats"]["reconnect_attempts"].as_u64().unwrap();
    assert!(
        (5..=40).contains(&attempts),
        "{attempts} reconnect attempts in {OUTAGE:?}: no backoff, or no retrying"
    );
    assert!(
        log().contains("NATS connection lost: degraded"),
        "the loss is not logged:\n{}",
        log()
    );

    n.restart();
    let back_at = Instant::now();
    let converged = || {
        let h = d.health().unwrap_or_default();
        h["status"] == "ok"
            && h["nats"]["state"] == "connected"
            && try_get(&n.url(), "vakt_dev_state", "applied")
                .is_some_and(|v| String::from_utf8_lossy(&v).contains(&head))
    };
    assert!(
        wait_until(Duration::from_secs(10), converged),
        "not converged within 10 s of NATS returning: {:#}; log:\n{}",
        d.health().unwrap_or_default(),
        log()
    );
    let took = back_at.elapsed();
    eprintln!("converged {took:?} after NATS returned");
    assert!(took <= Duration::from_secs(10), "{took:?}");
    let h = d.health().unwrap();
    assert!(h["nats"]["connects"].as_u64() >= Some(2), "{h:#}");
    assert!(h["nats"]["down_since"].is_null(), "{h:#}");

    // Nothing lost: no drift against the head, every desired key written once, the change
    // written once more, the chain intact.
    let (code, out, err) = run(repo.path(), &n.url(), &["drift", "--env", "dev"]);
    assert_eq!(code, 0, "drift after the outage: {out}{err}");
    let desired = reconciler::compile_rev(repo.path(), "env/dev", "dev").unwrap();
    assert_eq!(desired_count(&n.url()), desired.len());
    let events = vakt_tests::nats::verified_events(&n.url(), "dev");
    let mut puts: std::collections::BTreeMap<String, usize> = Default::default();
    for e in events.iter().filter(|e| e["action"] == "kv.put") {
        *puts
            .entry(e["target"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert_eq!(puts.len(), desired.len(), "one event per key");
    let twice: Vec<_> = puts.iter().filter(|(_, c)| **c > 1).collect();
    assert!(
        twice.len() <= 1
            && twice
                .iter()
                .all(|(k, c)| **c == 2 && k.contains("fjord-logistics")),
        "duplicate events beyond the one changed key: {twice:?}"
    );
}

/// A 3-server cluster (R3 buckets) with the two aggregate node doubles (reading placement
/// from server 0, which is never killed) and a daemon whose first apply is done.
struct ClusterRig {
    c: NatsCluster,
    repo: tempfile::TempDir,
    logs: tempfile::TempDir,
    d: Daemon,
    _nodes: (nats::NodeDouble, nats::NodeDouble),
}

impl ClusterRig {
    fn start(id: &str) -> ClusterRig {
        let c = NatsCluster::start();
        let (p1, p2) = (nats::port(), nats::port());
        let repo = migration_repo(p1, p2, "drain_timeout = \"60s\"\npoll_interval = \"100ms\"");
        edit(
            repo.path(),
            "vakt.toml",
            "branch = \"env/dev\"\n",
            "branch = \"env/dev\"\nkv_replicas = 3\n",
        );
        commit_all(repo.path(), "dev runs on a three-server cluster");
        let logs = tempfile::tempdir().expect("tempdir");
        let old = agg_node(
            &c.nodes[0],
            1,
            p1,
            &["--inflight", "6", "--drain-step-ms", "700"],
        );
        let new = agg_node(&c.nodes[0], 2, p2, &[]);
        let d = Daemon::start_at(
            repo.path(),
            &c.urls(),
            logs.path(),
            "dev",
            id,
            // The default lease (10 s): a stream leader election after losing a server takes
            // a few seconds, and a renewal NATS does not answer keeps the lease that long.
            &["--interval", "1s", "--lease", "10s"],
            &[],
        );
        let r = ClusterRig {
            c,
            repo,
            logs,
            d,
            _nodes: (old, new),
        };
        let head = r.head();
        assert!(
            wait_until(Duration::from_secs(60), || r.applied(&head)),
            "no first apply; log:\n{}",
            r.log()
        );
        assert_eq!(
            r.failed(),
            0.0,
            "a pass failed before any fault; log:\n{}",
            r.log()
        );
        r
    }

    fn survivor(&self) -> String {
        self.c.nodes[0].url()
    }

    fn log(&self) -> String {
        log_of(self.logs.path(), &self.d.id)
    }

    fn head(&self) -> String {
        vakt_tests::git(self.repo.path(), &["rev-parse", "HEAD"])
    }

    fn applied(&self, head: &str) -> bool {
        try_get(&self.survivor(), "vakt_dev_state", "applied")
            .is_some_and(|v| String::from_utf8_lossy(&v).contains(head))
    }

    /// The daemon's count of failed passes (`vakt_apply_total{outcome="failed"}`).
    fn failed(&self) -> f64 {
        let (_, m) = self.d.get("/metrics").unwrap_or_default();
        m.lines()
            .find(|l| l.starts_with("vakt_apply_total") && l.contains("outcome=\"failed\""))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    }

    fn steps(&self) -> u64 {
        self.d
            .health()
            .and_then(|h| h["steps"].as_u64())
            .unwrap_or(0)
    }
}

/// Steady state on a 3-server cluster: a server is killed; the daemon goes on polling (one
/// pass a second), no pass fails, and a commit made afterwards is applied.
#[test]
fn a_cluster_server_lost_in_steady_state_fails_no_pass_and_a_new_commit_is_applied() {
    let mut r = ClusterRig::start("steady");
    r.c.kill(2);
    let s0 = r.steps();
    assert!(
        wait_until(Duration::from_secs(30), || r.steps() >= s0 + 5),
        "the daemon stopped reconciling with a server down; log:\n{}",
        r.log()
    );
    edit(
        r.repo.path(),
        "config/tenants/fjord-logistics/tenant.toml",
        "tier = ",
        "# after a server was lost\ntier = ",
    );
    let head = commit_all(r.repo.path(), "a change with one server down");
    publish(&r.survivor(), "vakt.trigger.dev");
    assert!(
        wait_until(Duration::from_secs(30), || r.applied(&head)),
        "a commit is not applied with one server down; log:\n{}",
        r.log()
    );
    assert_eq!(
        r.failed(),
        0.0,
        "a pass failed with one server down; log:\n{}",
        r.log()
    );
    assert_eq!(r.d.health().unwrap()["status"], "ok");
}

/// A migration job on a 3-server cluster: a server is killed while the job's drain runs. No
/// pass fails, the job succeeds on its first attempt, and the placement is written once.
#[test]
fn a_cluster_server_lost_while_a_migration_job_runs_fails_no_pass_and_the_job_completes() {
    let mut r = ClusterRig::start("mig");
    move_polar_retail(r.repo.path());
    publish(&r.survivor(), "vakt.trigger.dev");
    // Kill a server while the job drains: the drain itself (step 1) or the wait for it (2),
    // whichever the node's pace makes the long one.
    job_where(r.repo.path(), &r.survivor(), 60, |j| {
        j["state"] == "running"
            && (j["steps"][1]["state"] == "running" || j["steps"][2]["state"] == "running")
    });
    r.c.kill(1);
    let job = job_where(r.repo.path(), &r.survivor(), 90, |j| {
        j["state"] == "succeeded" || j["state"] == "dead-lettered" || j["state"] == "failed"
    });
    assert_eq!(job["state"], "succeeded", "{job:#}\nlog:\n{}", r.log());
    assert_eq!(job["attempts"], 1, "the job needed no retry: {job:#}");
    assert_eq!(
        shard_of_polar_retail(&r.survivor()).as_deref(),
        Some("agg-osl1-b")
    );
    let head = r.head();
    assert!(
        wait_until(Duration::from_secs(30), || r.applied(&head)),
        "the move commit is not applied; log:\n{}",
        r.log()
    );
    assert_eq!(
        r.failed(),
        0.0,
        "a pass failed during the migration; log:\n{}",
        r.log()
    );
    let ev = audit_events(&r.survivor(), "dev");
    let of = |a: &str| {
        ev.iter()
            .filter(|e| e["action"] == a && e["job_id"] == job["id"])
            .count()
    };
    assert_eq!(of("job.step.write-placement"), 1, "placement written once");
    assert_eq!(of("job.succeeded"), 1);
}

/// Scheduled backups into a real tmpfs that is full (`size=16k`) and into one mounted
/// read-only. Each fails, names the cause in the log, leaves nothing in the directory (no
/// partial hidden directory either), records nothing (`backup.last` and the `backup` audit
/// events unchanged), and the stale-backup condition stays up in the `dr` snippet.
#[test]
fn a_full_or_read_only_backup_directory_fails_the_backup_cleanly_and_the_stale_condition_stays() {
    if !Tmpfs::permitted() {
        eprintln!(
            "NOT RUN: this machine may not mount a tmpfs (needs root with CAP_SYS_ADMIN), so a real full or read-only backup directory cannot be made"
        );
        return;
    }
    let n = NatsServer::start();
    let repo = ops_git();
    // One second old is stale: the good backup below is stale by the time the daemon looks.
    edit(
        repo.path(),
        "dr/stores/vakt-state.toml",
        "max_age = \"45m\"",
        "max_age = \"1s\"",
    );
    commit_all(repo.path(), "vakt-state backups go stale after 1 s");
    let (code, out, err) = run(repo.path(), &n.url(), &["apply", "--env", "dev", "--yes"]);
    assert_eq!(code, 0, "{out}{err}");
    let good = tempfile::tempdir().expect("tempdir");
    let good_s = good.path().join("first").to_string_lossy().into_owned();
    let (code, out, err) = run(
        repo.path(),
        &n.url(),
        &["backup", "--env", "dev", "--out", &good_s],
    );
    assert_eq!(code, 0, "{out}{err}");
    let last = || {
        let v = read_bucket(&n.url(), "vakt_dev_state")["backup.last"]
            .1
            .clone();
        serde_json::from_slice::<serde_json::Value>(&v).unwrap()
    };
    let recorded = last();
    let backups_audited = || {
        audit_events(&n.url(), "dev")
            .iter()
            .filter(|e| e["action"] == "backup")
            .count()
    };
    assert_eq!(backups_audited(), 1);

    for (case, opts, cause) in [
        ("full", "size=16k", "No space left on device"),
        ("ro", "ro,size=1m", "Read-only file system"),
    ] {
        let fs = Tmpfs::mount(opts);
        let dir_s = fs.path().to_string_lossy().into_owned();
        let d = Daemon::start(
            repo.path(),
            &n,
            "dev",
            case,
            &[
                "--interval",
                "1h",
                "--lease",
                "2s",
                "--backup-dir",
                &dir_s,
                "--backup-every",
                "300ms",
            ],
        );
        let log = || log_of(n.dir.path(), case);
        let failures = || log().matches("scheduled backup failed").count();
        assert!(
            wait_until(Duration::from_secs(30), || failures() >= 3),
            "{case}: no failed backups; log:\n{}",
            log()
        );
        assert!(
            log().contains(cause),
            "{case}: the cause is not named; log:\n{}",
            log()
        );
        assert!(
            !log().contains("backup taken and verified"),
            "{case}: a backup was reported taken; log:\n{}",
            log()
        );
        // The stale-backup condition stays up while backups fail.
        let mut dr = serde_json::Value::Null;
        assert!(
            wait_until(Duration::from_secs(15), || {
                dr = d
                    .get("/snippets/dr.json")
                    .and_then(|(_, b)| serde_json::from_str(&b).ok())
                    .unwrap_or_default();
                dr["conditions"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|c| c["kind"] == "stale-backup"))
            }),
            "{case}: no stale-backup condition: {dr:#}"
        );
        let stale = dr["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["kind"] == "stale-backup")
            .cloned()
            .unwrap_or_default();
        assert_eq!(stale["id"], "backup.dev.vakt-state", "{case}: {stale:#}");
        assert_eq!(stale["since"], recorded["at"], "{case}: {stale:#}");
        drop(d);
        assert_eq!(
            entries(fs.path()),
            Vec::<std::path::PathBuf>::new(),
            "{case}: something was left in the backup directory"
        );
        assert_eq!(last(), recorded, "{case}: backup.last changed");
        assert_eq!(backups_audited(), 1, "{case}: a failed backup was audited");
    }
}

/// agg-osl1-01's admin endpoint answers every call but `/healthz` with a 10 MB streamed body.
/// The tenant call of the migration's preflight fails within the call timeout, having read at
/// most the answer cap (named in the error), the job retries per its policy (`max_attempts =
/// 2`: two attempts, one retry, then dead-lettered, each attempt in the job and the audit
/// trail), and the placement stays. Memory: the error proves the reader stopped at the cap
/// (`read_capped` never holds more than the cap and one chunk); the daemon's peak RSS is no
/// usable measure here (it grows by tens of MB compiling the moved commit).
#[test]
fn a_node_answering_10_mb_fails_within_the_timeout_reads_at_most_the_cap_and_the_job_retries_per_policy()
 {
    let big = BigAnswer::start();
    let p2 = nats::port();
    let repo = migration_repo(
        big.port,
        p2,
        "drain_timeout = \"10s\"\npoll_interval = \"100ms\"\nmax_attempts = 2",
    );
    let n = NatsServer::start();
    let _new = agg_node(&n, 2, p2, &[]);
    let _d = Daemon::start(
        repo.path(),
        &n,
        "dev",
        "big",
        &["--interval", "1h", "--lease", "2s"],
    );
    assert!(
        wait_until(Duration::from_secs(30), || !read_bucket(
            &n.url(),
            "vakt_dev_placement"
        )
        .is_empty()),
        "no first apply"
    );
    // The node poll has already called /admin/info (10 MB) by now: wait for it, then take the
    // baseline.
    assert!(
        wait_until(Duration::from_secs(30), || big
            .seen()
            .paths
            .iter()
            .any(|p| p == "/admin/info")),
        "the node was never polled: {:?}",
        big.seen()
    );
    move_polar_retail(repo.path());
    publish(&n.url(), "vakt.trigger.dev");
    let t0 = Instant::now();
    let job = job_where(repo.path(), &n.url(), 60, |j| j["state"] == "dead-lettered");
    let took = t0.elapsed();
    eprintln!("dead-lettered after {took:?}: {job:#}");
    let err = job["error"].as_str().unwrap();
    assert!(err.contains("preflight blocked"), "{err}");
    assert!(
        err.contains("agg-osl1-01")
            && err.contains(&format!(
                "answer larger than {} bytes",
                reconciler::ops::nodes::MAX_ANSWER
            )),
        "{err}"
    );
    assert_eq!(
        (job["attempts"].as_u64(), job["max_attempts"].as_u64()),
        (Some(2), Some(2))
    );
    // Bounded time: two attempts, each bounded by the 5 s call timeout, and one 1 s backoff.
    assert!(took < Duration::from_secs(30), "{took:?}");
    let seen = big.seen();
    let tenant_calls = seen
        .paths
        .iter()
        .filter(|p| p.starts_with("/admin/tenants/polar-retail"))
        .count();
    assert_eq!(
        tenant_calls, 2,
        "one tenant call per attempt: {:?}",
        seen.paths
    );
    let ev = audit_events(&n.url(), "dev");
    let of = |a: &str| {
        ev.iter()
            .filter(|e| e["action"] == a && e["job_id"] == job["id"])
            .count()
    };
    assert_eq!(
        (
            of("job.started"),
            of("job.retrying"),
            of("job.dead-lettered")
        ),
        (2, 1, 1),
        "attempts in the audit trail"
    );
    // Each answer was cut off: the client hung up before 10 MB were sent (what was sent is
    // bounded by the cap plus the kernel's socket buffers, not by the client's memory).
    eprintln!(
        "body bytes sent per 10 MB answer: {:?}",
        seen.body_bytes_sent
    );
    assert_eq!(
        shard_of_polar_retail(&n.url()).as_deref(),
        Some("agg-osl1-a")
    );
}
