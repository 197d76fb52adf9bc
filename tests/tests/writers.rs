//! One writer per environment: lease fencing of a paused leader, and `vakt apply` refused while
//! a daemon leads. Real nats-server, real daemons, real signals.

use std::time::Duration;

use vakt_tests::nats::{Daemon, NatsServer, audit_events, ops_git, read_bucket, wait_until};

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

/// The content of every bucket of `env` but the lock: (bucket, key) → (revision, value).
fn buckets(url: &str, env: &str) -> Vec<(String, std::collections::BTreeMap<String, (u64, Vec<u8>)>)> {
    ["config", "inventory", "placement", "state", "jobs"]
        .iter()
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
    // a polls often: on waking, its overdue tick would run a pass (and write the status) at
    // once if nothing fenced it.
    let a = Daemon::start(
        repo.path(),
        &n,
        "dev",
        "a",
        &["--interval", "200ms", "--lease", "2s", "--actor", "daemon:a"],
    );
    assert!(
        wait_until(Duration::from_secs(10), || a.is_leader()
            && a.health().is_some_and(|h| h["steps"].as_u64() >= Some(2))),
        "a never led"
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
    let events_before = audit_events(&n.url(), "dev");
    assert!(
        events_before
            .iter()
            .any(|e| e["action"] == "leader.takeover" && e["actor"] == "daemon:b"),
        "the takeover is not audited: {events_before:#?}"
    );
    let kv_before = buckets(&n.url(), "dev");

    a.signal("-CONT");
    // Positive signal: a noticed, on waking, that its lease is gone and refused to write.
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
    assert_eq!(fenced["current_holder"], "b", "{fenced:#}");
    assert!(
        fenced["current_revision"].as_u64() > fenced["held_revision"].as_u64(),
        "{fenced:#}"
    );
    let log = std::fs::read_to_string(n.dir.path().join("daemon-a.log")).unwrap();
    assert!(log.contains("fenced"), "a's log does not say it was fenced:\n{log}");
    // Then the absence: a wrote no key and no audit event, and the chain is one writer's.
    assert!(!a.is_leader(), "a still claims to lead");
    assert!(b.is_leader(), "b lost the lease to the resumed leader");
    assert_eq!(buckets(&n.url(), "dev"), kv_before, "the resumed leader wrote KV");
    let events_after = audit_events(&n.url(), "dev");
    assert_eq!(
        events_after.len(),
        events_before.len(),
        "the resumed leader wrote audit events: {:#?}",
        &events_after[events_before.len().min(events_after.len())..]
    );
    assert_linear_chain(&events_after);
}
