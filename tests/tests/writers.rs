//! One writer per environment: lease fencing of a paused leader, and `vakt apply` refused while
//! a daemon leads. Real nats-server, real daemons, real signals.

use std::time::Duration;

use vakt_tests::nats::{Daemon, NatsServer, audit_events, ops_git, read_bucket, wait_until};

use vakt_tests::nats::DESIRED_BUCKETS;

/// Every event links to the one before it: one writer at a time extended the chain.
fn assert_linear_chain(events: &[serde_json::Value]) {
    for w in events.windows(2) {
        assert_eq!(
            w[1]["prev_hash"], w[0]["hash"],
            "audit chain forks at {} (after {}): two writers interleaved",
            w[1]["id"], w[0]["id"]
        );
    }
}

/// A bucket's keys: key → (revision, value).
type Bucket = std::collections::BTreeMap<String, (u64, Vec<u8>)>;

/// The content of every bucket of `env` but the lock: (bucket, key) → (revision, value).
fn buckets(url: &str, env: &str) -> Vec<(String, Bucket)> {
    DESIRED_BUCKETS
        .iter()
        .chain(&["state", "jobs"])
        .map(|b| {
            let name = format!("vakt_{env}_{b}");
            let content = read_bucket(url, &name);
            (name, content)
        })
        .collect()
}

#[test]
fn a_leader_paused_past_its_lease_writes_nothing_when_it_wakes() {
    let repo = ops_git();
    let n = NatsServer::start();
    // a's first apply (every key, one write in flight) parks after 20 writes until `go`
    // exists: SIGSTOP then lands in the middle of a pass, past every "am I leader" check, with
    // writes still to send. Without fencing, a would send them on waking.
    let go = n.dir.path().join("go");
    let go_s = go.to_string_lossy().into_owned();
    let a = Daemon::start_at(
        repo.path(),
        &n.url(),
        n.dir.path(),
        "dev",
        "a",
        &["--interval", "1h", "--lease", "2s", "--actor", "daemon:a"],
        &[
            ("VAKT_TEST_PAUSE_AFTER_WRITES", "20"),
            ("VAKT_TEST_PAUSE_UNTIL", &go_s),
        ],
    );
    let written = |url: &str| {
        DESIRED_BUCKETS
            .iter()
            .map(|b| read_bucket(url, &format!("vakt_dev_{b}")).len())
            .sum::<usize>()
    };
    assert!(
        wait_until(Duration::from_secs(20), || a.is_leader()
            && written(&n.url()) == 20),
        "a's first apply did not park after 20 writes ({} keys)",
        written(&n.url())
    );
    let b = Daemon::start(
        repo.path(),
        &n,
        "dev",
        "b",
        &["--interval", "1h", "--lease", "2s", "--actor", "daemon:b"],
    );
    assert!(
        wait_until(Duration::from_secs(10), || b.health().is_some()),
        "b is not serving"
    );
    assert!(!b.is_leader(), "two leaders");

    a.signal("-STOP");
    // b takes over once a's lease lapses, and finishes its first pass as leader.
    assert!(
        wait_until(Duration::from_secs(10), || b.is_leader()
            && b.health().is_some_and(|h| h["steps"].as_u64() >= Some(1))),
        "b did not take over from the paused leader"
    );
    assert!(
        written(&n.url()) > 20,
        "b did not complete the interrupted apply"
    );
    let events_before = audit_events(&n.url(), "dev");
    assert!(
        events_before
            .iter()
            .any(|e| e["action"] == "leader.takeover" && e["actor"] == "daemon:b"),
        "the takeover is not audited: {events_before:#?}"
    );
    let kv_before = buckets(&n.url(), "dev");

    std::fs::write(&go, b"").expect("go");
    a.signal("-CONT");
    // Positive signals: a's parked apply went on and ended at the fence, and a reports itself
    // fenced.
    let log = || std::fs::read_to_string(n.dir.path().join("daemon-a.log")).unwrap_or_default();
    assert!(
        wait_until(Duration::from_secs(15), || a
            .health()
            .is_some_and(|h| h["steps"].as_u64() >= Some(1))),
        "a's parked pass never ended; log:\n{}",
        log()
    );
    let mut fenced = serde_json::Value::Null;
    assert!(
        wait_until(Duration::from_secs(10), || {
            let Some((_, body)) = a.get("/status") else {
                return false;
            };
            let s: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            fenced = s["fenced"].clone();
            !fenced.is_null() && s["is_leader"] == false
        }),
        "a never reported itself fenced"
    );
    eprintln!("a: {fenced:#}");
    assert_eq!(
        fenced["current_holder"],
        "b",
        "{fenced:#}\nlog of a:\n{}",
        log()
    );
    assert!(
        fenced["current_revision"].as_u64() > fenced["held_revision"].as_u64(),
        "{fenced:#}"
    );
    assert!(fenced["writes_refused"].as_u64() >= Some(1), "{fenced:#}");
    // Then the absence: a wrote no key and no audit event, and the chain is one writer's.
    assert!(!a.is_leader(), "a still claims to lead");
    assert!(b.is_leader(), "b lost the lease to the resumed leader");
    let kv_after = buckets(&n.url(), "dev");
    for ((name, before), (_, after)) in kv_before.iter().zip(&kv_after) {
        for (k, v) in after {
            assert!(
                before.get(k) == Some(v),
                "the resumed leader wrote {name}/{k} (revision {:?} → {}): {}",
                before.get(k).map(|b| b.0),
                v.0,
                String::from_utf8_lossy(&v.1)
            );
        }
        assert_eq!(
            before.len(),
            after.len(),
            "the resumed leader deleted from {name}"
        );
    }
    let events_after = audit_events(&n.url(), "dev");
    assert_eq!(
        events_after.len(),
        events_before.len(),
        "the resumed leader wrote audit events: {:#?}",
        &events_after[events_before.len().min(events_after.len())..]
    );
    assert_linear_chain(&events_after);
    assert!(
        log().contains("reconcile pass ended by the fence"),
        "a's log does not say its pass stopped at the fence:\n{}",
        log()
    );
}

fn edit(repo: &std::path::Path, path: &str, from: &str, to: &str) {
    let p = repo.join(path);
    let s = std::fs::read_to_string(&p).unwrap();
    assert!(s.contains(from), "{path}: {from:?}");
    std::fs::write(&p, s.replacen(from, to, 1)).unwrap();
}

fn apply(repo: &std::path::Path, n: &NatsServer, extra: &[&str]) -> (i32, String, String) {
    let repo_s = repo.to_string_lossy().into_owned();
    let url = n.url();
    let mut a = vec![
        "apply", "--env", "dev", "--yes", "--repo", &repo_s, "--nats", &url,
    ];
    a.extend(extra);
    vakt_tests::outcome(&vakt_tests::vakt_env(&a, &[("VAKT_ACTOR", "user:oncall")]))
}

#[test]
fn a_hand_run_apply_is_refused_while_a_daemon_leads_or_handed_to_it() {
    let repo = ops_git();
    let n = NatsServer::start();
    let d = Daemon::start(
        repo.path(),
        &n,
        "dev",
        "leader-1",
        &[
            "--interval",
            "1h",
            "--lease",
            "10s",
            "--trigger-subject",
            "-",
        ],
    );
    assert!(
        wait_until(Duration::from_secs(15), || d.status()["applied_commit"]
            .is_string()),
        "initial apply"
    );
    let first = d.status()["applied_commit"].as_str().unwrap().to_owned();
    // A new commit the daemon does not see by itself (no trigger, a poll an hour away).
    edit(
        repo.path(),
        "config/tenants/nordlys-energi/tenant.toml",
        "requests_per_second = ",
        "requests_per_second = 1",
    );
    let c = vakt_tests::nats::commit_all(repo.path(), "nordlys: rate");
    let config_before = read_bucket(&n.url(), "vakt_dev_config");

    // Refused: exit 4, the leader and its lease named, nothing written, recorded by the leader.
    let (code, out, err) = apply(repo.path(), &n, &[]);
    assert_eq!(code, 4, "{out}\n{err}");
    assert!(err.contains("daemon `leader-1` leads dev"), "{err}");
    assert!(err.contains("lapses in"), "{err}");
    assert!(err.contains("--while-leader hand-off"), "{err}");
    assert!(err.contains("audited by leader `leader-1`"), "{err}");
    assert_eq!(
        read_bucket(&n.url(), "vakt_dev_config"),
        config_before,
        "written while refused"
    );
    assert_eq!(d.status()["applied_commit"], first.as_str());
    let ev = audit_events(&n.url(), "dev");
    let refusal = ev
        .iter()
        .find(|e| e["action"] == "apply.refused" && e["actor"] == "user:oncall")
        .unwrap_or_else(|| panic!("refusal not audited: {ev:#?}"));
    assert_eq!(refusal["detail"]["kind"], "leader_active");
    assert_linear_chain(&ev);

    // A rollback is never handed off.
    let (code, _, err) = apply(
        repo.path(),
        &n,
        &["--while-leader", "hand-off", "--rev", &first],
    );
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("branch head only"), "{err}");

    // Handed off: the leader applies its branch head now and answers with its marker.
    let (code, out, err) = apply(
        repo.path(),
        &n,
        &["--while-leader", "hand-off", "--format", "json"],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(r["leader"], "leader-1", "{r}");
    assert_eq!(r["outcome"], "applied", "{r}");
    assert_eq!(r["applied_commit"], c.as_str(), "{r}");
    assert_ne!(read_bucket(&n.url(), "vakt_dev_config"), config_before);
    let ev = audit_events(&n.url(), "dev");
    let at = ev
        .iter()
        .position(|e| e["action"] == "apply.handed-off" && e["actor"] == "user:oncall")
        .unwrap_or_else(|| panic!("hand-off not audited: {ev:#?}"));
    // Everything after the hand-off is the leader's pass, under the leader's actor.
    assert!(
        ev[at + 1..]
            .iter()
            .all(|e| e["causation_id"] == "trigger:hand-off" && e["actor"] != "user:oncall"),
        "{:#?}",
        &ev[at + 1..]
    );
    assert!(
        ev[at + 1..]
            .iter()
            .any(|e| e["action"] == "apply.completed")
    );
    assert_linear_chain(&ev);
}
