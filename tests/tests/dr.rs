//! Disaster recovery end to end: `vakt backup` and `vakt restore` against a real
//! `nats-server -js`, loss of the NATS data directory (by hand and under a running reconciler),
//! rebuild from Git, and a three-server NATS cluster losing a server while reconciling.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use reconciler::desired::compile::Bucket;
use vakt_tests::nats::{
    Daemon, NatsCluster, NatsServer, audit_events, commit_all, desired_count, ops_git, read_bucket,
    try_get, wait_until,
};
use vakt_tests::{outcome, vakt_env};

fn run_at(repo: &Path, urls: &str, args: &[&str]) -> (i32, String, String) {
    let repo_s = repo.to_string_lossy().into_owned();
    let mut a: Vec<&str> = args.to_vec();
    a.extend(["--repo", &repo_s, "--nats", urls]);
    outcome(&vakt_env(&a, &[("VAKT_ACTOR", "user:dr-test")]))
}

fn run(repo: &Path, n: &NatsServer, args: &[&str]) -> (i32, String, String) {
    run_at(repo, &n.url(), args)
}

/// Every key of every bucket a backup covers: (bucket, key) → value.
fn everything(url: &str, env: &str) -> BTreeMap<(String, String), Vec<u8>> {
    let mut out = BTreeMap::new();
    for b in Bucket::ALL
        .iter()
        .map(|b| b.as_str())
        .chain(["state", "jobs"])
    {
        for (k, (_, v)) in read_bucket(url, &format!("vakt_{env}_{b}")) {
            out.insert((b.to_owned(), k), v);
        }
    }
    out
}

/// The desired buckets only: (bucket, key) → value.
fn desired(url: &str, env: &str) -> BTreeMap<(String, String), Vec<u8>> {
    everything(url, env)
        .into_iter()
        .filter(|((b, _), _)| b != "state" && b != "jobs")
        .collect()
}

fn edit(repo: &Path, path: &str, from: &str, to: &str) {
    let p = repo.join(path);
    let s = std::fs::read_to_string(&p).expect("read");
    assert!(s.contains(from), "{path} does not contain {from:?}");
    std::fs::write(&p, s.replacen(from, to, 1)).expect("write");
}

/// Simulates losing the server's data directory: kill, delete, start empty on the same port.
fn lose_data(n: &mut NatsServer) {
    n.kill();
    std::fs::remove_dir_all(n.data_dir()).expect("remove data dir");
    n.restart();
}

const TENANT: &str = "config/tenants/fjord-logistics/tenant.toml";

#[test]
fn backup_then_losing_the_data_directory_then_restore_gives_back_every_key_and_the_audit_chain() {
    let mut n = NatsServer::start();
    let repo = ops_git();
    let (code, out, err) = run(repo.path(), &n, &["apply", "--env", "dev", "--yes"]);
    assert_eq!(code, 0, "{out}{err}");
    let before = everything(&n.url(), "dev");
    let events_before = vakt_tests::nats::verified_events(&n.url(), "dev");
    assert!(before.len() > 100, "{}", before.len());

    let bk = tempfile::tempdir().expect("tempdir");
    let dir = bk.path().join("snap-1");
    let dir_s = dir.to_string_lossy().into_owned();
    let (code, out, err) = run(
        repo.path(),
        &n,
        &["backup", "--env", "dev", "--out", &dir_s],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("verified"), "{out}");
    // The manifest's own checksum is in sha256sum's format.
    let sum = std::process::Command::new("sha256sum")
        .args(["-c", "manifest.sha256"])
        .current_dir(&dir)
        .output()
        .expect("sha256sum");
    assert!(
        sum.status.success(),
        "{}",
        String::from_utf8_lossy(&sum.stdout)
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["env"], "dev");
    assert_eq!(manifest["files"].as_array().unwrap().len(), 9);
    // Recorded: state key and audit event.
    let state = read_bucket(&n.url(), "vakt_dev_state");
    assert!(state.contains_key("backup.last"), "{:?}", state.keys());
    assert!(
        audit_events(&n.url(), "dev")
            .iter()
            .any(|e| e["action"] == "backup" && e["outcome"] == "ok")
    );
    // A backup is never overwritten.
    let (code, _, err) = run(
        repo.path(),
        &n,
        &["backup", "--env", "dev", "--out", &dir_s],
    );
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("already exists"), "{err}");

    lose_data(&mut n);
    assert!(everything(&n.url(), "dev").is_empty());

    let (code, out, err) = run(
        repo.path(),
        &n,
        &[
            "restore",
            "--env",
            "dev",
            "--from",
            &dir_s,
            "--preflight",
            "--format",
            "json",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let plan: serde_json::Value = serde_json::from_str(&out).expect("preflight JSON");
    assert_eq!(plan["destructive"], false, "{plan}");
    assert_eq!(
        plan["audit"]["to_publish"].as_u64(),
        Some(events_before.len() as u64)
    );
    // Preflight wrote nothing.
    assert!(everything(&n.url(), "dev").is_empty());

    let (code, out, err) = run(
        repo.path(),
        &n,
        &["restore", "--env", "dev", "--from", &dir_s, "--yes"],
    );
    assert_eq!(code, 0, "{out}{err}");
    let after = everything(&n.url(), "dev");
    let mut expected = before.clone();
    expected.retain(|(b, k), _| !(b == "state" && k == "backup.last"));
    let mut got = after.clone();
    got.retain(|(b, k), _| !(b == "state" && k == "restore.last"));
    assert_eq!(got, expected, "restored buckets differ from the backup");
    // The chain continues: old events republished, then the restore's own.
    let events = vakt_tests::nats::verified_events(&n.url(), "dev");
    assert_eq!(
        events[..events_before.len()]
            .iter()
            .map(|e| e["id"].clone())
            .collect::<Vec<_>>(),
        events_before
            .iter()
            .map(|e| e["id"].clone())
            .collect::<Vec<_>>()
    );
    let actions: Vec<&str> = events[events_before.len()..]
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert_eq!(actions.first(), Some(&"restore.start"), "{actions:?}");
    assert_eq!(actions.last(), Some(&"restore.done"), "{actions:?}");
    let (code, out, err) = run(repo.path(), &n, &["drift", "--env", "dev"]);
    assert_eq!(code, 0, "{out}{err}");
    // A second restore has nothing to do.
    let (code, out, err) = run(
        repo.path(),
        &n,
        &["restore", "--env", "dev", "--from", &dir_s, "--yes"],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("Nothing to restore"), "{out}");
}

#[test]
fn restoring_over_live_state_waits_for_an_approval_bound_to_its_plan() {
    let n = NatsServer::start();
    let repo = ops_git();
    assert_eq!(
        run(repo.path(), &n, &["apply", "--env", "dev", "--yes"]).0,
        0
    );
    let bk = tempfile::tempdir().expect("tempdir");
    let dir_s = bk.path().join("b").to_string_lossy().into_owned();
    assert_eq!(
        run(
            repo.path(),
            &n,
            &["backup", "--env", "dev", "--out", &dir_s]
        )
        .0,
        0
    );
    let old = read_bucket(&n.url(), "vakt_dev_config")["tenant.fjord-logistics.tenant"]
        .1
        .clone();
    edit(
        repo.path(),
        TENANT,
        "status = \"active\"",
        "status = \"suspended\"",
    );
    commit_all(repo.path(), "suspend fjord-logistics");
    assert_eq!(
        run(repo.path(), &n, &["apply", "--env", "dev", "--yes"]).0,
        0
    );
    let changed = read_bucket(&n.url(), "vakt_dev_config")["tenant.fjord-logistics.tenant"]
        .1
        .clone();
    assert_ne!(old, changed);

    let restore = |extra: &[&str]| {
        let mut a = vec!["restore", "--env", "dev", "--from", dir_s.as_str(), "--yes"];
        a.extend_from_slice(extra);
        run(repo.path(), &n, &a)
    };
    // Destructive without a reason: refused, nothing written.
    let (code, out, err) = restore(&[]);
    assert_eq!(code, 4, "{out}{err}");
    assert!(
        out.contains("overwrite tenant.fjord-logistics.tenant"),
        "{out}"
    );
    assert!(err.contains("reason"), "{err}");
    // With a reason: an approval is requested, still nothing written.
    let (code, _, err) = restore(&["--reason", "INC-7: undo the suspension"]);
    assert_eq!(code, 4, "{err}");
    let plan_id = err
        .split_whitespace()
        .find(|w| w.starts_with("restore-"))
        .expect("plan id in the message")
        .trim_matches(|c: char| !c.is_ascii_alphanumeric() && c != '-')
        .to_owned();
    assert!(err.contains(&format!("vakt approve {plan_id}")), "{err}");
    assert_eq!(
        read_bucket(&n.url(), "vakt_dev_config")["tenant.fjord-logistics.tenant"].1,
        changed
    );
    let (code, out, err) = run(
        repo.path(),
        &n,
        &[
            "approve",
            &plan_id,
            "--env",
            "dev",
            "--reason",
            "IC approved in #inc-7",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    // Live state changes after the approval: the approved plan is stale. The restore now
    // overwrites a second key, so its plan differs; the old approval does not cover it.
    let other = "tenant.nordlys-energi.tenant";
    edit(
        repo.path(),
        "config/tenants/nordlys-energi/tenant.toml",
        "requests_per_second = ",
        "requests_per_second = 1",
    );
    commit_all(repo.path(), "nordlys: rate");
    assert_eq!(
        run(repo.path(), &n, &["apply", "--env", "dev", "--yes"]).0,
        0
    );
    let live = |key: &str| read_bucket(&n.url(), "vakt_dev_config")[key].1.clone();
    let other_changed = live(other);
    let (code, out, err) = restore(&["--reason", "INC-7: undo the suspension"]);
    assert_eq!(
        code, 4,
        "the approval of the old plan was honoured: {out}{err}"
    );
    assert!(out.contains(&format!("overwrite {other}")), "{out}");
    let new_plan = err
        .split_whitespace()
        .find(|w| w.starts_with("restore-"))
        .expect("plan id in the message")
        .trim_matches(|c: char| !c.is_ascii_alphanumeric() && c != '-')
        .to_owned();
    assert_ne!(new_plan, plan_id, "the plan did not change with live state");
    assert!(err.contains(&format!("vakt approve {new_plan}")), "{err}");
    // Nothing was written under the stale approval.
    assert_eq!(live("tenant.fjord-logistics.tenant"), changed);
    assert_eq!(live(other), other_changed);
    assert!(
        !audit_events(&n.url(), "dev")
            .iter()
            .any(|e| e["action"] == "restore.start"),
        "a restore started on a stale approval"
    );
    let (code, out, err) = run(
        repo.path(),
        &n,
        &[
            "approve",
            &new_plan,
            "--env",
            "dev",
            "--reason",
            "IC re-approved in #inc-7",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = restore(&["--reason", "INC-7: undo the suspension"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(live("tenant.fjord-logistics.tenant"), old);
    assert_ne!(live(other), other_changed);
    let events = vakt_tests::nats::verified_events(&n.url(), "dev");
    let start = events
        .iter()
        .find(|e| e["action"] == "restore.start")
        .expect("restore.start");
    assert_eq!(start["plan_id"], new_plan.as_str());
    assert_eq!(start["reason"], "INC-7: undo the suspension");
    let bucket_ev = events
        .iter()
        .find(|e| e["action"] == "restore.bucket" && e["target"] == "vakt_dev_config")
        .expect("restore.bucket for config");
    assert_eq!(bucket_ev["detail"]["overwritten"], 2);
    // The environment's branch is ahead of what the restore put back: drift says so.
    let (code, _, _) = run(
        repo.path(),
        &n,
        &["drift", "--env", "dev", "--rev", "env/dev"],
    );
    assert_eq!(code, 2);
}

#[test]
fn a_damaged_or_foreign_backup_is_refused_naming_the_file() {
    let n = NatsServer::start();
    let repo = ops_git();
    assert_eq!(
        run(repo.path(), &n, &["apply", "--env", "dev", "--yes"]).0,
        0
    );
    let bk = tempfile::tempdir().expect("tempdir");
    let good = bk.path().join("good");
    let good_s = good.to_string_lossy().into_owned();
    assert_eq!(
        run(
            repo.path(),
            &n,
            &["backup", "--env", "dev", "--out", &good_s]
        )
        .0,
        0
    );
    let copy = |name: &str| {
        let d = bk.path().join(name);
        let status = std::process::Command::new("cp")
            .arg("-r")
            .arg(&good)
            .arg(&d)
            .status()
            .expect("cp");
        assert!(status.success());
        d
    };
    let preflight = |d: &Path, env: &str| {
        run(
            repo.path(),
            &n,
            &[
                "restore",
                "--env",
                env,
                "--from",
                &d.to_string_lossy(),
                "--preflight",
            ],
        )
    };
    // One flipped byte in a bucket file.
    let d = copy("flipped");
    let p = d.join("buckets/config.jsonl");
    let mut b = std::fs::read(&p).unwrap();
    let i = b.iter().position(|c| *c == b'1').expect("a digit");
    b[i] = b'2';
    std::fs::write(&p, b).unwrap();
    let (code, _, err) = preflight(&d, "dev");
    assert_eq!(code, 4, "{err}");
    assert!(
        err.contains("buckets/config.jsonl") && err.contains("checksum"),
        "{err}"
    );
    // An edited manifest.
    let d = copy("manifest");
    let p = d.join("manifest.json");
    let m = std::fs::read_to_string(&p)
        .unwrap()
        .replacen("\"records\": ", "\"records\": 1", 1);
    std::fs::write(&p, m).unwrap();
    let (code, _, err) = preflight(&d, "dev");
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("manifest.json"), "{err}");
    // A missing file.
    let d = copy("missing");
    std::fs::remove_file(d.join("audit.jsonl")).unwrap();
    let (code, _, err) = preflight(&d, "dev");
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("audit.jsonl"), "{err}");
    // Not a backup at all.
    let (code, _, err) = preflight(repo.path(), "dev");
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("manifest.json"), "{err}");
    // Another environment's backup.
    let (code, _, err) = preflight(&good, "staging");
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("environment `dev`"), "{err}");
    // Nothing of that touched the live state or wrote a restore record.
    assert!(!read_bucket(&n.url(), "vakt_dev_state").contains_key("restore.last"));
}

#[test]
fn rebuild_from_git_alone_reproduces_the_desired_buckets_exactly() {
    let mut n = NatsServer::start();
    let repo = ops_git();
    assert_eq!(
        run(repo.path(), &n, &["apply", "--env", "dev", "--yes"]).0,
        0
    );
    let before = desired(&n.url(), "dev");
    assert!(!before.is_empty());
    lose_data(&mut n);
    let (code, out, err) = run(repo.path(), &n, &["apply", "--env", "dev", "--yes"]);
    assert_eq!(code, 0, "{out}{err}");
    let after = desired(&n.url(), "dev");
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>()
    );
    for (k, v) in &before {
        assert_eq!(
            v, &after[k],
            "{k:?} differs after the rebuild (byte-exact values expected)"
        );
    }
}

#[test]
fn a_reconciler_rebuilds_from_git_when_nats_loses_its_data_and_restore_waits_for_it_to_stop() {
    let mut n = NatsServer::start();
    let repo = ops_git();
    let d = Daemon::start(
        repo.path(),
        &n,
        "dev",
        "r1",
        // A lease long enough that two busy CI cores never let it lapse between the leader
        // check and the restore below (a lapsed lease showed the next refusal instead).
        &["--interval", "1s", "--lease", "6s"],
    );
    let applied = |n: &NatsServer| {
        read_bucket(&n.url(), "vakt_dev_state")
            .get("applied")
            .and_then(|(_, v)| serde_json::from_slice::<serde_json::Value>(v).ok())
            .and_then(|v| v["commit"].as_str().map(str::to_owned))
    };
    let head = vakt_tests::git(repo.path(), &["rev-parse", "HEAD"]);
    assert!(
        wait_until(Duration::from_secs(30), || applied(&n).as_deref()
            == Some(head.as_str())),
        "first apply"
    );
    let before = desired(&n.url(), "dev");
    let bk = tempfile::tempdir().expect("tempdir");
    let dir_s = bk.path().join("b").to_string_lossy().into_owned();
    assert_eq!(
        run(
            repo.path(),
            &n,
            &["backup", "--env", "dev", "--out", &dir_s]
        )
        .0,
        0
    );

    // The DR snippet and the metric show the backup of the store vakt backs up itself.
    let store_of = |body: &str| -> Option<serde_json::Value> {
        let v: serde_json::Value = serde_json::from_str(body).ok()?;
        v["stores"]
            .as_array()?
            .iter()
            .find(|s| s["id"] == "vakt-state")
            .cloned()
    };
    assert!(
        wait_until(Duration::from_secs(20), || d
            .get("/snippets/dr.json")
            .and_then(|(_, b)| store_of(&b))
            .is_some_and(
                |s| s["last_success_at"].is_string() && s["recoverable"] == "yes"
            )),
        "dr snippet: {:?}",
        d.get("/snippets/dr.json")
    );
    let (_, metrics) = d.get("/metrics").expect("metrics");
    assert!(
        metrics.contains("vakt_backup_last_success_timestamp_seconds{")
            && metrics.contains("store=\"vakt-state\""),
        "{metrics}"
    );

    lose_data(&mut n);
    // The running reconciler re-creates its buckets and the audit stream and rebuilds from Git.
    assert!(
        wait_until(Duration::from_secs(60), || applied(&n).as_deref()
            == Some(head.as_str())),
        "no rebuild after the data loss; log: {}",
        std::fs::read_to_string(n.dir.path().join("daemon-r1.log")).unwrap_or_default()
    );
    assert_eq!(desired(&n.url(), "dev"), before);
    vakt_tests::nats::verified_events(&n.url(), "dev");
    assert!(
        wait_until(Duration::from_secs(20), || d.is_leader()),
        "not leader after the rebuild; log: {}",
        std::fs::read_to_string(n.dir.path().join("daemon-r1.log")).unwrap_or_default()
    );

    // A restore refuses while the reconciler holds the lease…
    let (code, _, err) = run(
        repo.path(),
        &n,
        &["restore", "--env", "dev", "--from", &dir_s, "--preflight"],
    );
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("holds the lease"), "{err}");
    drop(d);
    // …and, once it is stopped, refuses to fork the audit chain the rebuild started, unless
    // told to restore the buckets only.
    let lease_gone = wait_until(Duration::from_secs(30), || {
        let (_, _, err) = run(
            repo.path(),
            &n,
            &["restore", "--env", "dev", "--from", &dir_s, "--preflight"],
        );
        !err.contains("holds the lease")
    });
    assert!(lease_gone, "the lease did not expire");
    let (code, _, err) = run(
        repo.path(),
        &n,
        &["restore", "--env", "dev", "--from", &dir_s, "--preflight"],
    );
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("fork the hash chain"), "{err}");
    let (code, out, err) = run(
        repo.path(),
        &n,
        &[
            "restore",
            "--env",
            "dev",
            "--from",
            &dir_s,
            "--skip-audit",
            "--buckets",
            "state,jobs",
            "--reason",
            "restore state after NATS data loss",
            "--preflight",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("left as it is"), "{out}");
}

#[test]
fn three_server_cluster_losing_a_server_while_reconciling_converges() {
    let mut c = NatsCluster::start();
    let urls = c.urls();
    let repo = ops_git();
    // The environment declares its replicas once; no command needs --replicas.
    edit(
        repo.path(),
        "vakt.toml",
        "branch = \"env/dev\"\n",
        "branch = \"env/dev\"\nkv_replicas = 3\n",
    );
    commit_all(repo.path(), "dev runs on a three-server cluster");
    let logs = tempfile::tempdir().expect("tempdir");
    // The first apply (every key) pauses after 20 writes until `go` exists: a server is lost
    // in the middle of it.
    let go = logs.path().join("go");
    let go_s = go.to_string_lossy().into_owned();
    let _d = Daemon::start_at(
        repo.path(),
        &urls,
        logs.path(),
        "dev",
        "r1",
        &["--interval", "1s", "--lease", "3s"],
        &[
            ("VAKT_TEST_PAUSE_AFTER_WRITES", "20"),
            ("VAKT_TEST_PAUSE_UNTIL", &go_s),
        ],
    );
    let log = || std::fs::read_to_string(logs.path().join("daemon-r1.log")).unwrap_or_default();
    let survivor = c.nodes[0].url();
    assert!(
        wait_until(Duration::from_secs(60), || try_get(
            &survivor,
            "vakt_dev_state",
            "apply.inflight"
        )
        .is_some()),
        "the first apply did not start; log: {}",
        log()
    );
    std::thread::sleep(Duration::from_millis(500));
    let written_before = desired_count(&survivor);
    assert!(
        written_before < 138,
        "the apply did not pause ({written_before} keys)"
    );
    c.kill(2);
    std::fs::write(&go, b"").expect("go");
    let key = "tenant.fjord-logistics.tenant";
    let value_of = |url: &str| {
        try_get(url, "vakt_dev_config", key).map(|v| String::from_utf8_lossy(&v).into_owned())
    };
    let head = vakt_tests::git(repo.path(), &["rev-parse", "HEAD"]);
    assert!(
        wait_until(Duration::from_secs(60), || {
            try_get(&survivor, "vakt_dev_state", "applied")
                .is_some_and(|v| String::from_utf8_lossy(&v).contains(&head))
        }),
        "the interrupted apply did not complete with a server down; log: {}",
        log()
    );
    // A direct get may be answered by a replica that has not applied the last committed write
    // yet (JetStream direct gets are eventually consistent): the value converges, it is not
    // read once.
    assert!(
        wait_until(Duration::from_secs(10), || value_of(&survivor)
            .is_some_and(|v| v.contains("\"active\""))),
        "the survivor does not hold the applied value; log: {}",
        log()
    );

    // A change with the server down.
    edit(
        repo.path(),
        TENANT,
        "status = \"active\"",
        "status = \"suspended\"",
    );
    commit_all(repo.path(), "suspend fjord-logistics");
    assert!(
        wait_until(Duration::from_secs(60), || value_of(&survivor)
            .is_some_and(|v| v.contains("suspended"))),
        "change not applied with a server down; log: {}",
        log()
    );
    // A second change with the server still down.
    edit(
        repo.path(),
        TENANT,
        "status = \"suspended\"",
        "status = \"active\"",
    );
    let head = commit_all(repo.path(), "reactivate fjord-logistics");
    assert!(
        wait_until(Duration::from_secs(60), || {
            try_get(&survivor, "vakt_dev_state", "applied")
                .is_some_and(|v| String::from_utf8_lossy(&v).contains(&head))
        }),
        "second change not applied; log: {}",
        log()
    );
    let two = format!("{},{}", c.nodes[0].url(), c.nodes[1].url());
    let (code, out, err) = run_at(repo.path(), &two, &["drift", "--env", "dev"]);
    assert_eq!(code, 0, "{out}{err}");
    vakt_tests::nats::verified_events(&survivor, "dev");
}

#[test]
fn the_leader_takes_scheduled_backups_and_keeps_the_newest() {
    let n = NatsServer::start();
    let repo = ops_git();
    let backups = tempfile::tempdir().expect("tempdir");
    // Something else in the backup directory is never touched.
    std::fs::create_dir(backups.path().join("not-a-backup")).unwrap();
    let dir_s = backups.path().to_string_lossy().into_owned();
    let d = Daemon::start(
        repo.path(),
        &n,
        "dev",
        "r1",
        &[
            "--interval",
            "1h",
            "--lease",
            "2s",
            "--backup-dir",
            &dir_s,
            "--backup-every",
            "700ms",
            "--backup-keep",
            "2",
        ],
    );
    let taken = || {
        audit_events(&n.url(), "dev")
            .iter()
            .filter(|e| e["action"] == "backup")
            .count()
    };
    assert!(
        wait_until(Duration::from_secs(30), || taken() >= 4),
        "scheduled backups: {}; log: {}",
        taken(),
        std::fs::read_to_string(n.dir.path().join("daemon-r1.log")).unwrap_or_default()
    );
    // Stopped first: a backup pruned while its checksum is being checked is not a failure.
    drop(d);
    let mut kept: Vec<_> = std::fs::read_dir(backups.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.join("manifest.json").exists()
                && !p.file_name().unwrap().to_string_lossy().starts_with('.')
        })
        .collect();
    kept.sort();
    assert!(
        (1..=3).contains(&kept.len()),
        "keep 2 (a third between its rename and the prune): {kept:?}"
    );
    // Which ones: the newest of the backups the audit trail records, in its (chain) order. A
    // backup renamed into place just before the stop may not be audited yet: it is left out.
    let made: Vec<String> = audit_events(&n.url(), "dev")
        .iter()
        .filter(|e| e["action"] == "backup")
        .filter_map(|e| e["target"].as_str().map(str::to_owned))
        .collect();
    assert!(made.len() >= 4, "{made:?}");
    let kept_s: std::collections::BTreeSet<String> = kept
        .iter()
        .map(|p| p.display().to_string())
        .filter(|p| made.contains(p))
        .collect();
    assert!(
        !kept_s.is_empty(),
        "no audited backup kept: {kept:?} of {made:?}"
    );
    let newest: std::collections::BTreeSet<String> =
        made[made.len() - kept_s.len()..].iter().cloned().collect();
    assert_eq!(kept_s, newest, "the newest backups are kept; all: {made:?}");
    for k in &kept {
        let sum = std::process::Command::new("sha256sum")
            .args(["-c", "manifest.sha256"])
            .current_dir(k)
            .output()
            .expect("sha256sum");
        assert!(sum.status.success(), "{k:?}");
    }
    assert!(backups.path().join("not-a-backup").exists());
    // The newest backup is what the state records.
    let last = read_bucket(&n.url(), "vakt_dev_state")["backup.last"]
        .1
        .clone();
    let last: serde_json::Value = serde_json::from_slice(&last).unwrap();
    assert!(last["dir"].as_str().unwrap().contains("dev-"), "{last}");
}

#[test]
fn a_pending_approval_survives_data_loss_through_backup_and_restore_and_still_works() {
    let mut n = NatsServer::start();
    let repo = ops_git();
    vakt_tests::git(repo.path(), &["checkout", "-q", "env/staging"]);
    // staging gates access changes: the first apply waits for an approval.
    let (code, _, err) = run(repo.path(), &n, &["apply", "--env", "staging", "--yes"]);
    assert_eq!(code, 4, "{err}");
    let plan_id = err
        .split_whitespace()
        .find(|w| w.starts_with("plan-"))
        .expect("plan id")
        .trim_end_matches(':')
        .to_owned();
    let approval_key = format!("approval.{plan_id}");
    let before = read_bucket(&n.url(), "vakt_staging_state")[&approval_key]
        .1
        .clone();
    let bk = tempfile::tempdir().expect("tempdir");
    let dir_s = bk.path().join("s").to_string_lossy().into_owned();
    let (code, out, err) = run(
        repo.path(),
        &n,
        &["backup", "--env", "staging", "--out", &dir_s],
    );
    assert_eq!(code, 0, "{out}{err}");

    lose_data(&mut n);
    let (code, out, err) = run(
        repo.path(),
        &n,
        &["restore", "--env", "staging", "--from", &dir_s, "--yes"],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        read_bucket(&n.url(), "vakt_staging_state")[&approval_key].1,
        before,
        "the pending approval is back, byte for byte"
    );
    // It can be decided, and the apply it gates then proceeds.
    let (code, out, err) = run(
        repo.path(),
        &n,
        &[
            "approve",
            &plan_id,
            "--env",
            "staging",
            "--reason",
            "CHG-9 reviewed after the restore",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = run(repo.path(), &n, &["apply", "--env", "staging", "--yes"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!read_bucket(&n.url(), "vakt_staging_access").is_empty());
    vakt_tests::nats::verified_events(&n.url(), "staging");
}
