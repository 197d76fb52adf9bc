//! One writer per environment: lease fencing of a paused leader, and `vakt apply` refused while
//! a daemon leads. Real nats-server, real daemons, real signals.

use std::time::Duration;

use vakt_tests::nats::{Daemon, NatsServer, audit_events, ops_git, read_bucket, wait_until};

/// The buckets an apply writes.
const DESIRED_BUCKETS: [&str; 6] = [
    "config",
    "definitions",
    "placement",
    "access",
    "catalog",
    "inventory",
];

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
        wait_until(Duration::from_secs(20), || a.is_leader() && written(&n.url()) == 20),
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
    assert_eq!(fenced["current_holder"], "b", "{fenced:#}");
    assert!(
        fenced["current_revision"].as_u64() > fenced["held_revision"].as_u64(),
        "{fenced:#}"
    );
    assert!(
        fenced["writes_refused"].as_u64() >= Some(1),
        "{fenced:#}"
    );
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
        assert_eq!(before.len(), after.len(), "the resumed leader deleted from {name}");
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
