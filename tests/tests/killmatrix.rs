//! The kill -9 matrix: `vakt apply`, `vakt backup`, `vakt restore` and the `vakt reconcile`
//! daemon are started as real processes against a real nats-server and killed with SIGKILL from
//! outside at seeded points, then the same command is run again to completion and the result is
//! checked: no drift, exactly one `kv.put` event per desired key, no duplicate event id, the hash
//! chain verifies, and the recovery path the kill point needs is visible.
//!
//! A kill point is `<point>:<n>` (the `fault-injection` hook `VAKT_TEST_HOLD`): the process
//! stops there with everything else it has in flight (pipelined writes, audit events) left to
//! the server, creates the file `VAKT_TEST_HOLD_READY` names, and is killed by the test. The
//! apply keeps its normal write window (512), so acknowledged writes without their events and
//! sent but unacknowledged writes exist at the kill.
//!
//! 54 points per run: 30 in `vakt apply` (two families), 3 in the daemon's apply, 11 in
//! `vakt backup`, 10 in `vakt restore`. Each family reuses one nats-server and deletes every
//! stream between its points.
//!
//! The seed comes from `VAKT_KILL_SEED` (else the clock) and is printed first: a failure
//! replays with `VAKT_KILL_SEED=<seed> cargo nextest run -p vakt-tests --test killmatrix`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reconciler::desired::compile::{Bucket, Desired};
use serde_json::Value;
use vakt_tests::nats::{Daemon, NatsServer, audit_events, ops_git, read_bucket, rt, wait_until};
use vakt_tests::{outcome, vakt_bin, vakt_env};

/// The reason the recovery gives the events it records for an interrupted apply's writes.
const RECOVERED: &str = "recorded after the apply was interrupted";

/// splitmix64: small, seeded, and the same on every platform.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `1..=n`.
    fn pick(&mut self, n: usize) -> usize {
        1 + (self.next() % n.max(1) as u64) as usize
    }

    /// `k` distinct values in `1..=n` (all of them when `n <= k`), ascending.
    fn sample(&mut self, n: usize, k: usize) -> Vec<usize> {
        let mut out = BTreeSet::new();
        while out.len() < k.min(n) {
            out.insert(self.pick(n));
        }
        out.into_iter().collect()
    }

    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
    }
}

/// The run's seed, printed so a failure replays; each family derives its own stream from it.
fn seeded(family: &str) -> (u64, Rng) {
    let seed = match std::env::var("VAKT_KILL_SEED") {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("VAKT_KILL_SEED={s:?} is not an unsigned integer")),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_nanos() as u64,
    };
    eprintln!(
        "kill matrix ({family}): seed {seed}; replay with VAKT_KILL_SEED={seed} cargo nextest run -p vakt-tests --test killmatrix"
    );
    let salt = family.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    (seed, Rng(seed ^ salt))
}

fn run(repo: &Path, n: &NatsServer, args: &[&str]) -> (i32, String, String) {
    let repo_s = repo.to_string_lossy().into_owned();
    let url = n.url();
    let mut a: Vec<&str> = args.to_vec();
    a.extend(["--repo", &repo_s, "--nats", &url]);
    outcome(&vakt_env(&a, &[("VAKT_ACTOR", "user:kill-test")]))
}

/// `vakt <args> --repo … --nats …` as a child process, not yet started.
fn vakt_cmd(repo: &Path, n: &NatsServer, args: &[&str]) -> Command {
    let mut c = Command::new(vakt_bin());
    c.args(args)
        .arg("--repo")
        .arg(repo)
        .args(["--nats", &n.url()])
        .env("NO_COLOR", "1")
        .env_remove("VAKT_REPO")
        .env_remove("NATS_URL")
        .env("VAKT_ACTOR", "user:kill-test");
    c
}

/// Starts `c` held at kill point `point` and kills it with SIGKILL once it is there. Panics
/// when the process ends before reaching the point (a point the command never passes).
fn kill_at(mut c: Command, point: &str, scratch: &Path, ctx: &str) {
    let ready = scratch.join("held");
    let _ = std::fs::remove_file(&ready);
    let log = scratch.join("killed.log");
    c.env("VAKT_TEST_HOLD", point)
        .env("VAKT_TEST_HOLD_READY", &ready)
        .env("VAKT_LOG", "reconciler=debug,vakt=debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"));
    let mut child = c.spawn().expect("start vakt");
    let t0 = Instant::now();
    loop {
        if ready.exists() {
            break;
        }
        if let Some(status) = child.try_wait().expect("wait") {
            panic!(
                "{ctx}: vakt ended ({status}) before reaching kill point {point}:\n{}",
                tail(&log)
            );
        }
        if t0.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!(
                "{ctx}: kill point {point} not reached in 60 s:\n{}",
                tail(&log)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // std's kill is SIGKILL on Unix: nothing of the process runs after it.
    child.kill().expect("kill -9");
    let status = child.wait().expect("reap");
    assert!(!status.success(), "{ctx}: {status}");
}

/// The last lines of a log.
fn tail(log: &Path) -> String {
    let s = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Deletes every stream (KV buckets and the audit stream): a fresh server for the next point.
fn wipe(n: &NatsServer) {
    use futures_util::StreamExt;
    let url = n.url();
    rt().block_on(async move {
        let c = async_nats::connect(&url).await.expect("connect");
        let js = async_nats::jetstream::new(c);
        let names: Vec<String> = js
            .stream_names()
            .map(|r| r.expect("stream name"))
            .collect()
            .await;
        for s in names {
            js.delete_stream(&s).await.expect("delete stream");
        }
    });
}

/// Keys in the desired buckets of dev.
fn landed(n: &NatsServer) -> usize {
    Bucket::ALL
        .iter()
        .map(|b| read_bucket(&n.url(), &format!("vakt_dev_{b}")).len())
        .sum()
}

fn state(n: &NatsServer) -> BTreeMap<String, (u64, Vec<u8>)> {
    read_bucket(&n.url(), "vakt_dev_state")
}

/// The audit trail of dev, checked: unique ids, an intact hash chain, and exactly one `kv.put`
/// per desired key (none for anything else).
fn checked_trail(n: &NatsServer, desired: &Desired, ctx: &str) -> Vec<Value> {
    let events = audit_events(&n.url(), "dev");
    let mut ids = BTreeSet::new();
    for e in &events {
        assert!(
            ids.insert(e["id"].as_str().expect("id").to_owned()),
            "{ctx}: duplicate audit event {}",
            e["id"]
        );
    }
    let parsed: Vec<reconciler::store::audit::AuditEvent> = events
        .iter()
        .map(|e| serde_json::from_value(e.clone()).expect("audit event"))
        .collect();
    if let Err((i, why)) =
        reconciler::store::audit::verify_chain(&parsed, reconciler::store::audit::GENESIS)
    {
        panic!("{ctx}: the hash chain breaks at event {i}: {why}");
    }
    let mut puts: BTreeMap<String, usize> = BTreeMap::new();
    for e in events.iter().filter(|e| e["action"] == "kv.put") {
        *puts
            .entry(e["target"].as_str().expect("target").to_owned())
            .or_default() += 1;
    }
    for (b, k) in desired.entries.keys() {
        let t = format!("vakt_dev_{b}/{k}");
        assert_eq!(puts.get(&t), Some(&1), "{ctx}: kv.put events for {t}");
    }
    assert_eq!(
        puts.len(),
        desired.len(),
        "{ctx}: kv.put events for other keys"
    );
    events
}

fn count(events: &[Value], f: impl Fn(&Value) -> bool) -> usize {
    events.iter().filter(|e| f(e)).count()
}

fn recovered(events: &[Value]) -> usize {
    count(events, |e| {
        e["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with(RECOVERED))
    })
}

fn drift_free(repo: &Path, n: &NatsServer, ctx: &str) {
    let (code, out, err) = run(repo, n, &["drift", "--env", "dev"]);
    assert_eq!(code, 0, "{ctx}: drift after the rerun:\n{out}{err}");
}

/// What was on the server right after a kill of an apply.
#[derive(Debug)]
struct AtKill {
    landed: usize,
    puts: usize,
    inflight: bool,
}

fn at_kill(n: &NatsServer) -> AtKill {
    AtKill {
        landed: landed(n),
        puts: count(&audit_events(&n.url(), "dev"), |e| e["action"] == "kv.put"),
        inflight: state(n).contains_key("apply.inflight"),
    }
}

/// The recovery an apply killed at `point:k` needs, checked on the trail after the rerun (and
/// on what the rerun printed, when it was `vakt apply`). Returns whether writes beyond the
/// acknowledged ones had landed at the kill.
fn assert_recovery(
    point: &str,
    k: usize,
    total: usize,
    at: &AtKill,
    events: &[Value],
    out: Option<&str>,
    ctx: &str,
) -> bool {
    let out = out.unwrap_or_default();
    let rec = recovered(events);
    let interrupted = count(events, |e| e["action"] == "apply.interrupted");
    let ctx = format!("{ctx}: at the kill {at:?}, recovered {rec}, interrupted {interrupted}");
    if point == "apply.begin" {
        // Killed before the in-flight marker and any write: nothing to recover.
        assert!(!at.inflight && at.landed == 0 && at.puts == 0, "{ctx}");
        assert_eq!((rec, interrupted), (0, 0), "{ctx}");
        assert!(!out.contains("interrupted earlier apply"), "{ctx}: {out}");
        return false;
    }
    // Every later point left the marker; the rerun removes it.
    assert!(at.inflight, "{ctx}: no in-flight marker");
    if point == "apply.completed" {
        // Everything was in but the marker: no interruption to record.
        assert_eq!(
            (at.landed, at.puts, rec, interrupted),
            (total, total, 0, 0),
            "{ctx}"
        );
        assert_eq!(
            count(events, |e| e["action"] == "apply.completed"),
            1,
            "{ctx}"
        );
        return false;
    }
    // The rerun records the interruption, once.
    assert_eq!(interrupted, 1, "{ctx}");
    if rec > 0 && !out.is_empty() {
        let line = format!("Recorded {rec} audit event(s) of an interrupted earlier apply.");
        assert!(
            out.contains(&line),
            "{ctx}: the rerun does not say {line:?}: {out}"
        );
    } else {
        assert!(!out.contains("interrupted earlier apply"), "{ctx}: {out}");
    }
    // The killed apply recorded no `apply.completed` (that point returned above): the
    // rerun's says how many keys it wrote; the killed apply wrote the rest.
    let rerun_written: usize = events
        .iter()
        .filter(|e| e["action"] == "apply.completed")
        .map(|e| e["detail"]["written"].as_u64().expect("written") as usize)
        .sum();
    let killed_wrote = total - rerun_written;
    assert!(
        rec <= killed_wrote,
        "{ctx}: recorded events for writes it did not make"
    );
    match point {
        "apply.started" => {
            assert_eq!((at.landed, at.puts, rec), (0, 0, 0), "{ctx}");
            false
        }
        "apply.send" => {
            // No acknowledgement was processed: no event was sent, so every write of the killed
            // apply that landed gets its event from the recovery.
            assert_eq!(at.puts, 0, "{ctx}");
            assert!(at.landed <= k, "{ctx}: more writes than were sent");
            assert_eq!(rec, killed_wrote, "{ctx}: rerun wrote {rerun_written}");
            assert!(rec >= at.landed, "{ctx}");
            false
        }
        "apply.ack" | "apply.write" => {
            // `k` writes acknowledged; events sent for k-1 (ack) or k (write) of them.
            let sent_events = if point == "apply.ack" { k - 1 } else { k };
            assert!(at.landed >= k, "{ctx}: fewer writes than acknowledged");
            assert!(at.puts <= sent_events, "{ctx}: more events than were sent");
            assert!(
                rec >= at.landed - sent_events,
                "{ctx}: acknowledged or pipelined writes left without their event"
            );
            if point == "apply.ack" {
                assert!(rec >= 1, "{ctx}: the k-th write's event was never sent");
            }
            at.landed > k
        }
        "apply.written" => {
            assert_eq!((at.landed, at.puts, rec), (total, total, 0), "{ctx}");
            false
        }
        other => panic!("unknown point {other}"),
    }
}

/// Kills `vakt apply` at each point (on a wiped server), reruns it and checks the result.
/// Returns how many kills caught writes landed past the last processed acknowledgement.
fn apply_matrix(
    family: &str,
    points: impl FnOnce(&mut Rng, usize) -> Vec<(&'static str, usize)>,
) -> (u64, usize) {
    let (seed, mut rng) = seeded(family);
    let repo = ops_git();
    let n = NatsServer::start();
    let desired = reconciler::compile_rev(repo.path(), "env/dev", "dev").expect("compile");
    let total = desired.len();
    assert!(total > 50, "{total} keys: too few to pipeline");
    let mut points = points(&mut rng, total);
    rng.shuffle(&mut points);
    eprintln!("{} apply kill points: {points:?}", points.len());
    let scratch = tempfile::tempdir().expect("tempdir");
    let mut pipelined = 0;
    for (point, k) in &points {
        let ctx = format!("seed {seed}, kill point {point}:{k}");
        wipe(&n);
        kill_at(
            vakt_cmd(repo.path(), &n, &["apply", "--env", "dev", "--yes"]),
            &format!("{point}:{k}"),
            scratch.path(),
            &ctx,
        );
        let at = at_kill(&n);
        let (code, out, err) = run(repo.path(), &n, &["apply", "--env", "dev", "--yes"]);
        assert_eq!(code, 0, "{ctx}: the rerun failed:\n{out}{err}");
        drift_free(repo.path(), &n, &ctx);
        let events = checked_trail(&n, &desired, &ctx);
        if assert_recovery(point, *k, total, &at, &events, Some(&out), &ctx) {
            pipelined += 1;
        }
        assert!(
            !state(&n).contains_key("apply.inflight"),
            "{ctx}: the rerun left the in-flight marker"
        );
    }
    (seed, pipelined)
}

#[test]
fn kill_9_of_apply_around_its_writes_converges_with_every_event_once() {
    // Before the marker, after `apply.started`, after N writes sent (none acknowledged yet),
    // after all writes, after `apply.completed`.
    apply_matrix("apply-around", |rng, total| {
        let mut p = vec![
            ("apply.begin", 0),
            ("apply.started", 0),
            ("apply.written", 0),
            ("apply.completed", 0),
        ];
        p.extend(
            rng.sample(total.min(512), 7)
                .into_iter()
                .map(|k| ("apply.send", k)),
        );
        p
    });
}

#[test]
fn kill_9_of_apply_between_writes_and_their_events_converges_with_every_event_once() {
    // After the N-th acknowledgement (its event not sent) and after its event was sent, with
    // the normal window: the writes sent after it land too.
    let (seed, pipelined) = apply_matrix("apply-between", |rng, total| {
        let mut p: Vec<_> = rng
            .sample(total, 10)
            .into_iter()
            .map(|k| ("apply.ack", k))
            .collect();
        p.extend(rng.sample(total, 9).into_iter().map(|k| ("apply.write", k)));
        p
    });
    // The point of the normal window: some kill caught writes sent and landed past the last
    // acknowledgement the apply had processed.
    assert!(
        pipelined > 0,
        "seed {seed}: no kill caught pipelined writes past the acknowledged ones"
    );
}

#[test]
fn kill_9_of_the_daemon_mid_apply_converges_after_a_restart() {
    let (seed, mut rng) = seeded("daemon");
    let repo = ops_git();
    let n = NatsServer::start();
    let desired = reconciler::compile_rev(repo.path(), "env/dev", "dev").expect("compile");
    let total = desired.len();
    let head = vakt_tests::git(repo.path(), &["rev-parse", "env/dev"]);
    let mut points: Vec<(&str, usize)> = vec![("apply.started", 0)];
    points.extend(rng.sample(total, 2).into_iter().map(|k| {
        (
            if rng.next() % 2 == 0 {
                "apply.ack"
            } else {
                "apply.write"
            },
            k,
        )
    }));
    eprintln!("{} daemon kill points: {points:?}", points.len());
    let scratch = tempfile::tempdir().expect("tempdir");
    let lease = ["--interval", "1h", "--lease", "2s"];
    for (i, (point, k)) in points.iter().enumerate() {
        let ctx = format!("seed {seed}, daemon kill point {point}:{k}");
        wipe(&n);
        let mut c = Command::new(vakt_bin());
        c.args(["reconcile", "--env", "dev", "--repo"])
            .arg(repo.path())
            .args(["--nats", &n.url(), "--listen", "127.0.0.1:0"])
            .args(["--id", &format!("killed-{i}")])
            .args(lease);
        kill_at(c, &format!("{point}:{k}"), scratch.path(), &ctx);
        let at = at_kill(&n);
        let d = Daemon::start(repo.path(), &n, "dev", &format!("after-{i}"), &lease);
        let synced = wait_until(Duration::from_secs(60), || {
            let s = d.status();
            s["state"] == "in-sync" && s["applied_commit"] == head.as_str()
        });
        assert!(
            synced,
            "{ctx}: the restarted daemon did not converge: {}",
            d.status()
        );
        drop(d);
        drift_free(repo.path(), &n, &ctx);
        let events = checked_trail(&n, &desired, &ctx);
        // The daemon prints nothing per apply: the recovery is checked on the trail.
        assert_recovery(point, *k, total, &at, &events, None, &ctx);
    }
}

/// Every key of every bucket a backup covers, without the records of backups and restores.
fn everything(n: &NatsServer) -> BTreeMap<(String, String), Vec<u8>> {
    let mut out = BTreeMap::new();
    for b in Bucket::ALL
        .iter()
        .map(|b| b.as_str())
        .chain(["state", "jobs"])
    {
        for (k, (_, v)) in read_bucket(&n.url(), &format!("vakt_dev_{b}")) {
            if b == "state" && (k == "backup.last" || k == "restore.last") {
                continue;
            }
            out.insert((b.to_owned(), k), v);
        }
    }
    out
}

/// The backups a listing shows: the visible entries of `dir` (a backup in progress is hidden).
fn listed(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .expect("backup dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect()
}

fn backup_record(n: &NatsServer) -> Option<Value> {
    state(n)
        .get("backup.last")
        .map(|(_, v)| serde_json::from_slice(v).expect("backup.last JSON"))
}

#[test]
fn kill_9_during_backup_never_lists_a_partial_backup_and_the_rerun_succeeds() {
    let (seed, mut rng) = seeded("backup");
    let repo = ops_git();
    let n = NatsServer::start();
    let desired = reconciler::compile_rev(repo.path(), "env/dev", "dev").expect("compile");
    let (code, out, err) = run(repo.path(), &n, &["apply", "--env", "dev", "--yes"]);
    assert_eq!(code, 0, "{out}{err}");
    let files = Bucket::ALL.len() + 3; // the desired buckets, state, jobs, audit.jsonl
    let mut points: Vec<(&str, usize)> = (1..=files).map(|k| ("backup.file", k)).collect();
    points.extend([("backup.written", 0), ("backup.renamed", 0)]);
    rng.shuffle(&mut points);
    eprintln!("{} backup kill points: {points:?}", points.len());
    let bk = tempfile::tempdir().expect("tempdir");
    let scratch = tempfile::tempdir().expect("tempdir");
    let mut good: BTreeSet<String> = BTreeSet::new();
    for (i, (point, k)) in points.iter().enumerate() {
        let ctx = format!("seed {seed}, backup kill point {point}:{k}");
        let name = format!("snap-{i}");
        let out_dir = bk.path().join(&name);
        let out_s = out_dir.to_string_lossy().into_owned();
        let record_before = backup_record(&n);
        let events_before = count(&audit_events(&n.url(), "dev"), |e| e["action"] == "backup");
        kill_at(
            vakt_cmd(
                repo.path(),
                &n,
                &["backup", "--env", "dev", "--out", &out_s],
            ),
            &format!("{point}:{k}"),
            scratch.path(),
            &ctx,
        );
        // Not recorded as a success: neither the state record nor an audit event.
        assert_eq!(backup_record(&n), record_before, "{ctx}");
        assert_eq!(
            count(&audit_events(&n.url(), "dev"), |e| e["action"] == "backup"),
            events_before,
            "{ctx}"
        );
        let (rerun_name, rerun_s) = if *point == "backup.renamed" {
            // Complete on disk (renamed into place) but unrecorded: it verifies, and is never
            // overwritten; the operator's next backup takes a new name.
            let (code, out, err) = run(
                repo.path(),
                &n,
                &["restore", "--env", "dev", "--from", &out_s, "--preflight"],
            );
            assert_eq!(
                code, 0,
                "{ctx}: the renamed backup does not verify:\n{out}{err}"
            );
            good.insert(name.clone());
            let (code, _, err) = run(
                repo.path(),
                &n,
                &["backup", "--env", "dev", "--out", &out_s],
            );
            assert_eq!(code, 4, "{ctx}: {err}");
            assert!(err.contains("already exists"), "{ctx}: {err}");
            let again = format!("{name}-again");
            let s = bk.path().join(&again).to_string_lossy().into_owned();
            (again, s)
        } else {
            // Killed before the rename: nothing under its name, nothing listed.
            assert!(!out_dir.exists(), "{ctx}: a partial backup is in place");
            assert_eq!(listed(bk.path()), good, "{ctx}: a partial backup is listed");
            (name.clone(), out_s.clone())
        };
        let (code, out, err) = run(
            repo.path(),
            &n,
            &["backup", "--env", "dev", "--out", &rerun_s],
        );
        assert_eq!(code, 0, "{ctx}: the rerun failed:\n{out}{err}");
        good.insert(rerun_name.clone());
        let record = backup_record(&n).expect("backup.last");
        let dir = PathBuf::from(record["dir"].as_str().expect("dir"));
        assert_eq!(
            dir.file_name().and_then(|f| f.to_str()),
            Some(rerun_name.as_str()),
            "{ctx}: {record}"
        );
        let events = checked_trail(&n, &desired, &ctx);
        assert_eq!(
            count(&events, |e| e["action"] == "backup"),
            events_before + 1,
            "{ctx}"
        );
        assert_eq!(listed(bk.path()), good, "{ctx}");
    }
    // Everything listed is a whole backup.
    for name in &good {
        let s = bk.path().join(name).to_string_lossy().into_owned();
        let (code, out, err) = run(
            repo.path(),
            &n,
            &["restore", "--env", "dev", "--from", &s, "--preflight"],
        );
        assert_eq!(code, 0, "seed {seed}: listed backup {name}:\n{out}{err}");
    }
}

/// The plan id of the first `restore.start` in the trail (the killed run's).
fn killed_plan(events: &[Value]) -> Value {
    events
        .iter()
        .find(|e| e["action"] == "restore.start")
        .map(|e| e["plan_id"].clone())
        .unwrap_or(Value::Null)
}

#[test]
fn kill_9_during_restore_then_the_rerun_converges_to_the_backup() {
    let (seed, mut rng) = seeded("restore");
    let repo = ops_git();
    let n = NatsServer::start();
    let desired = reconciler::compile_rev(repo.path(), "env/dev", "dev").expect("compile");
    let (code, out, err) = run(repo.path(), &n, &["apply", "--env", "dev", "--yes"]);
    assert_eq!(code, 0, "{out}{err}");
    let expected = everything(&n);
    let bk = tempfile::tempdir().expect("tempdir");
    let from = bk.path().join("base").to_string_lossy().into_owned();
    let (code, out, err) = run(repo.path(), &n, &["backup", "--env", "dev", "--out", &from]);
    assert_eq!(code, 0, "{out}{err}");
    // The backup's events: everything before its own `backup` event.
    let backed_up: Vec<String> = audit_events(&n.url(), "dev")
        .iter()
        .take_while(|e| e["action"] != "backup")
        .map(|e| e["id"].as_str().expect("id").to_owned())
        .collect();
    let preflight = |ctx: &str| -> Value {
        let (code, out, err) = run(
            repo.path(),
            &n,
            &[
                "restore",
                "--env",
                "dev",
                "--from",
                &from,
                "--preflight",
                "--format",
                "json",
            ],
        );
        assert_eq!(code, 0, "{ctx}: preflight:\n{out}{err}");
        let plan: Value = serde_json::from_str(&out).expect("preflight JSON");
        assert_eq!(plan["destructive"], false, "{ctx}: {plan}");
        assert_eq!(
            plan["refusals"].as_array().map(Vec::len),
            Some(0),
            "{ctx}: {plan}"
        );
        plan
    };
    let creates = |plan: &Value| -> usize {
        plan["buckets"]
            .as_array()
            .expect("buckets")
            .iter()
            .map(|b| b["create"].as_array().expect("create").len())
            .sum()
    };
    wipe(&n);
    let full = preflight("empty server");
    let events_total = full["audit"]["to_publish"].as_u64().expect("to_publish") as usize;
    assert_eq!(events_total, backed_up.len());
    let writes_total = creates(&full);
    let mut points: Vec<(&str, usize)> = rng
        .sample(events_total, 4)
        .into_iter()
        .map(|k| ("restore.event", k))
        .collect();
    points.extend(
        rng.sample(writes_total, 6)
            .into_iter()
            .map(|k| ("restore.key", k)),
    );
    rng.shuffle(&mut points);
    eprintln!("{} restore kill points: {points:?}", points.len());
    let scratch = tempfile::tempdir().expect("tempdir");
    for (point, k) in &points {
        let ctx = format!("seed {seed}, restore kill point {point}:{k}");
        wipe(&n);
        kill_at(
            vakt_cmd(
                repo.path(),
                &n,
                &["restore", "--env", "dev", "--from", &from, "--yes"],
            ),
            &format!("{point}:{k}"),
            scratch.path(),
            &ctx,
        );
        // What the rerun must still do: exactly the rest.
        let plan = preflight(&ctx);
        let to_publish = plan["audit"]["to_publish"].as_u64().expect("to_publish") as usize;
        if *point == "restore.event" {
            assert_eq!(to_publish, events_total - k, "{ctx}: {plan}");
            assert_eq!(creates(&plan), writes_total, "{ctx}: {plan}");
        } else {
            assert_eq!(to_publish, 0, "{ctx}: {plan}");
            assert!(creates(&plan) <= writes_total - k, "{ctx}: {plan}");
        }
        let (code, out, err) = run(
            repo.path(),
            &n,
            &["restore", "--env", "dev", "--from", &from, "--yes"],
        );
        assert_eq!(code, 0, "{ctx}: the rerun failed:\n{out}{err}");
        assert!(
            everything(&n) == expected,
            "{ctx}: restored buckets differ from the backup"
        );
        drift_free(repo.path(), &n, &ctx);
        let events = checked_trail(&n, &desired, &ctx);
        let ids: Vec<&str> = events.iter().filter_map(|e| e["id"].as_str()).collect();
        assert_eq!(
            ids[..backed_up.len()],
            backed_up.iter().map(String::as_str).collect::<Vec<_>>()[..],
            "{ctx}: the backup's events are not the trail's beginning"
        );
        // Killed after its `restore.start`: the rerun says it completes that restore, and
        // records the interruption once, before its own start.
        let started = count(&events, |e| e["action"] == "restore.start");
        let interrupted = count(&events, |e| e["action"] == "restore.interrupted");
        if *point == "restore.key" {
            assert_eq!(plan["resumes"], killed_plan(&events), "{ctx}: {plan}");
            assert_eq!((started, interrupted), (2, 1), "{ctx}");
        } else {
            assert!(plan.get("resumes").is_none(), "{ctx}: {plan}");
            assert_eq!((started, interrupted), (1, 0), "{ctx}");
        }
        assert_eq!(
            count(&events, |e| e["action"] == "restore.done"),
            1,
            "{ctx}"
        );
    }
}
