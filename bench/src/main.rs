//! Benchmark driver: measures vakt's reconciler in-process against the named peer of each
//! benchmark, in the same run, and prints one JSON object per benchmark. Driven by
//! `bench/b2_b7.sh`; see BENCHMARKS.md.
//!
//!   vakt-bench b2 REPO ENV BASE HEAD RUNS       incremental compile+plan vs full compile
//!   vakt-bench b3 REPO ENV NATS_URL             apply vs raw JetStream publish (after an
//!                                               unmeasured warm-up apply, B3_WARMUP=0 skips
//!                                               it; the peer before and after the apply;
//!                                               B3_COLD_PEER_URL: the peer once, after the
//!                                               apply, on that server); drift (B6)
//!                                               vs read-back; peak RSS (B7); the client's
//!                                               and the nats-server's CPU per phase (the
//!                                               server found by the URL's port, or
//!                                               B3_SERVER_PID), the load average; with
//!                                               B3_DIAG=1 also each phase's CLOCK_MONOTONIC
//!                                               span (`perf report --time A,B` of a
//!                                               `perf record -k CLOCK_MONOTONIC -a`)
//!   vakt-bench b4 REPO NATS_URL VAKT_BIN N      merge → visible latency with a NATS trigger
//!   vakt-bench b9 REPO NATS_URL AM_URL RUNS PEER_RUNS
//!                                               one alert poll of the daemon (fetch, dedupe,
//!                                               catalog join, change correlation, snippets)
//!                                               vs `amtool alert query -o json`; peak RSS

use std::path::Path;
use std::time::{Duration, Instant};

/// The allocator `vakt` ships with, so in-process figures are the binary's (the peers in this
/// driver run in the same process and use it too).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use futures_util::StreamExt;
use reconciler::desired::compile::Bucket;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let a = |i: usize| args.get(i).cloned().unwrap_or_else(|| usage());
    match args.get(1).map(String::as_str) {
        Some("b2") => b2(
            Path::new(&a(2)),
            &a(3),
            &a(4),
            &a(5),
            a(6).parse().unwrap_or(10),
        ),
        Some("b3") => rt().block_on(b3(Path::new(&a(2)), &a(3), &a(4))),
        Some("b4") => rt().block_on(b4(
            Path::new(&a(2)),
            &a(3),
            &a(4),
            a(5).parse().unwrap_or(30),
        )),
        Some("b9") => rt().block_on(b9(
            Path::new(&a(2)),
            &a(3),
            &a(4),
            a(5).parse().unwrap_or(20),
            a(6).parse().unwrap_or(10),
        )),
        _ => usage(),
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: vakt-bench b2 REPO ENV BASE HEAD RUNS | b3 REPO ENV NATS_URL | b4 REPO NATS_URL VAKT_BIN N \
         | b9 REPO NATS_URL AM_URL RUNS PEER_RUNS"
    );
    std::process::exit(2)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn pct(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

/// CPU time (user + system) this process has used so far, ms (`/proc/self/stat`, in clock
/// ticks of 10 ms): on a shared machine the client's own work, less disturbed by the load than
/// wall time.
fn cpu_ms() -> f64 {
    stat_cpu_ms("self").unwrap_or(0.0)
}

/// User + system CPU from `/proc/<pid>/stat`, ms (clock ticks of 10 ms).
fn stat_cpu_ms(pid: &str) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at state, field 3.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) * 10.0)
}

/// CPU time (user + system) process `pid` has used so far, ms (`/proc/PID/stat`, clock ticks
/// of 10 ms), or `None` if it cannot be read.
fn pid_cpu_ms(pid: u32) -> Option<f64> {
    stat_cpu_ms(&pid.to_string())
}

/// The nats-server process serving `url` on this machine (`B3_SERVER_PID`, else the
/// `nats-server` whose command line names the URL's port), so B3 can report the server's CPU
/// per phase beside the client's: on two shared cores the wall time is both processes' CPU.
fn server_pid(url: &str) -> Option<u32> {
    if let Some(p) = std::env::var("B3_SERVER_PID")
        .ok()
        .and_then(|p| p.parse().ok())
    {
        return Some(p);
    }
    let port = url.rsplit(':').next()?.trim_end_matches('/');
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|d| {
        let pid: u32 = d.file_name().to_str()?.parse().ok()?;
        let cmd = std::fs::read(d.path().join("cmdline")).ok()?;
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        let is_server = args.first().is_some_and(|a| a.ends_with(b"nats-server"));
        let on_port = args
            .windows(2)
            .any(|w| (w[0] == b"-p" || w[0] == b"--port") && w[1] == port.as_bytes());
        (is_server && on_port).then_some(pid)
    })
}

/// CLOCK_MONOTONIC now, seconds (what `perf record -k CLOCK_MONOTONIC` stamps samples with), so
/// a whole-machine profile can be cut to one phase (`perf report --time A,B`). Read from
/// `Instant`'s debug form, which prints the `timespec` it holds; `None` if that ever changes.
fn mono_s() -> Option<f64> {
    let d = format!("{:?}", Instant::now());
    let num = |k: &str| -> Option<f64> {
        let rest = &d[d.find(k)? + k.len()..];
        rest[..rest.find(|c: char| !c.is_ascii_digit())?]
            .parse()
            .ok()
    };
    Some(num("tv_sec: ")? + num("tv_nsec: ")? / 1e9)
}

/// Peak resident set of this process (VmHWM), MB.
fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn b2(repo: &Path, env: &str, base: &str, head: &str, runs: usize) {
    let t = Instant::now();
    let base_d = reconciler::compile_rev(repo, base, env).expect("compile base");
    let first_full = t.elapsed();
    let mut full = Vec::new();
    let mut keys = 0;
    for _ in 0..runs {
        let t = Instant::now();
        let d = reconciler::compile_rev(repo, head, env).expect("full compile");
        full.push(ms(t.elapsed()));
        keys = d.len();
    }
    let mut inc = Vec::new();
    let mut changes = 0;
    let mut touched = 0;
    for _ in 0..runs {
        let copy = base_d.clone();
        let t = Instant::now();
        let (head_d, stats) = reconciler::advance(repo, copy, head).expect("advance");
        let stats = stats.expect("incremental");
        let plan = reconciler::desired::plan::plan_touched(&base_d, &head_d, &stats.touched);
        inc.push(ms(t.elapsed()));
        changes = plan.changes.len();
        touched = stats.touched.len();
    }
    let (f, i) = (median(full), median(inc));
    println!(
        "{}",
        serde_json::json!({
            "bench": "B2", "keys": keys, "plan_changes": changes, "touched_keys": touched,
            "full_compile_ms_median": f, "incremental_compile_plan_ms_median": i,
            "speedup": f / i, "first_full_compile_ms": ms(first_full), "runs": runs,
        })
    );
}

/// A target for `desired` under key-value prefix `prefix`, opened (buckets created).
async fn b3_open(
    repo: &Path,
    env: &str,
    url: &str,
    prefix: String,
) -> (reconciler::store::Store, reconciler::store::audit::Audit) {
    let target = reconciler::EnvTarget::resolve(
        &reconciler::desired::checkout::Checkout::open(repo, env),
        reconciler::store::NatsOpts {
            urls: url.to_owned(),
            ..Default::default()
        },
        Some(prefix),
        Default::default(),
    )
    .expect("target");
    target.open().await.expect("open")
}

/// The `kv.put` events an apply published, as it published them (the same fields, so the
/// same bytes), in chain order.
async fn put_events(audit: &reconciler::store::audit::Audit, n: usize) -> Vec<bytes::Bytes> {
    let events: Vec<bytes::Bytes> = audit
        .read(0)
        .await
        .expect("read audit events")
        .into_iter()
        .filter(|s| s.event.action == "kv.put")
        .map(|s| bytes::Bytes::from(serde_json::to_vec(&s.event).expect("encode")))
        .collect();
    assert_eq!(events.len(), n, "one audit event per write");
    events
}

/// The peer's messages: each KV value and its audit event, interleaved as the apply sends
/// them, on subjects under `root`.
fn raw_payloads(
    desired: &reconciler::Desired,
    env: &str,
    events: Vec<bytes::Bytes>,
    root: &str,
) -> Vec<(String, bytes::Bytes)> {
    let mut payloads = Vec::with_capacity(2 * events.len());
    for (((b, k), e), ev) in desired.entries.iter().zip(events) {
        payloads.push((format!("{root}.{b}.{k}"), bytes::Bytes::from(e.value(env))));
        payloads.push((format!("{root}.audit.{env}.kv.put"), ev));
    }
    payloads
}

/// One run of the peer: wall time, the client's CPU and the server's CPU (ms; `None` when the
/// server's process is not found).
struct RawRun {
    ms: f64,
    cpu_ms: f64,
    server_cpu_ms: Option<f64>,
}

/// The peer, raw JetStream publish: `payloads` into a fresh plain stream `name` (subjects
/// `root.>`), `window` messages in flight, every ack awaited. With `headers` (the diagnostic,
/// not the peer) each write carries an expected last subject sequence of 0 and each event a
/// `Nats-Msg-Id`, into a stream with a duplicate window, as the apply sends them.
async fn raw_publish(
    js: &async_nats::jetstream::Context,
    name: &str,
    root: &str,
    payloads: Vec<(String, bytes::Bytes)>,
    window: usize,
    server_cpu: &dyn Fn() -> Option<f64>,
    headers: bool,
) -> RawRun {
    js.create_stream(async_nats::jetstream::stream::Config {
        name: name.to_owned(),
        subjects: vec![format!("{root}.>")],
        duplicate_window: if headers {
            Duration::from_secs(120)
        } else {
            Duration::default()
        },
        ..Default::default()
    })
    .await
    .expect("raw stream");
    let (t, cpu, scpu) = (Instant::now(), cpu_ms(), server_cpu());
    let mut pending = std::collections::VecDeque::new();
    for (i, (s, p)) in payloads.into_iter().enumerate() {
        let ack = if headers {
            let m = async_nats::jetstream::message::PublishMessage::build().payload(p);
            let m = if i % 2 == 0 {
                m.expected_last_subject_sequence(0)
            } else {
                m.message_id(format!("{name}/{i}"))
            };
            js.send_publish(s, m).await
        } else {
            js.publish(s, p).await
        };
        pending.push_back(ack.expect("publish"));
        if pending.len() >= window {
            pending.pop_front().unwrap().await.expect("ack");
        }
    }
    for f in pending {
        f.await.expect("ack");
    }
    RawRun {
        ms: ms(t.elapsed()),
        cpu_ms: cpu_ms() - cpu,
        server_cpu_ms: server_cpu().zip(scpu).map(|(a, b)| a - b),
    }
}

async fn b3(repo: &Path, env: &str, url: &str) {
    let desired = reconciler::compile_rev(repo, &format!("env/{env}"), env).expect("compile");
    let n = desired.len();
    let bytes: usize = desired.entries.values().map(|e| e.value(env).len()).sum();
    let tag = std::process::id();
    let opts = reconciler::ops::apply::ApplyOpts::new("bench");
    // The window: apply keeps `opts.window` writes and as many events in flight.
    let window = 2 * opts.window;
    // The server's CPU per phase (None when its process is not found on this machine).
    let server = server_pid(url);
    let server_cpu = || server.and_then(pid_cpu_ms);
    // Warm-up (`B3_WARMUP=0` turns it off): one unmeasured apply of the same keys into
    // buckets of their own, so both measured phases find a server (a long-running process in
    // production: Go's heap grown, its stream machinery exercised) and a connection as warm.
    // Without it the apply, measured first, ran on a just-started server and the peer, after
    // it, on the server the apply had warmed: the first apply on a fresh server is about
    // 300 ms slower than the next one on the same server; the peer barely moves.
    let warm = std::env::var_os("B3_WARMUP").is_none_or(|v| v != "0");
    let mut warmup_apply_ms = None;
    let warm_events = if warm {
        let (store, mut audit) = b3_open(repo, env, url, format!("bwarm{tag}")).await;
        let t = Instant::now();
        let r = reconciler::ops::apply::apply(&store, &mut audit, &desired, &opts)
            .await
            .expect("warm-up apply");
        warmup_apply_ms = Some(ms(t.elapsed()));
        assert_eq!(r.written, n);
        Some(put_events(&audit, n).await)
    } else {
        None
    };
    let (store, mut audit) = b3_open(repo, env, url, format!("bench{tag}")).await;
    let js = async_nats::jetstream::new(store.client.clone());
    // Diagnostics (`B3_DIAG=1`, off by default so a run does the same work as before): where
    // an apply's time goes besides publishing. Its snapshot and plan, read-only, on the same
    // empty buckets (`apply` below makes its own).
    let diag = std::env::var_os("B3_DIAG").is_some_and(|v| v == "1");
    let mut plan_ms = None;
    if diag {
        let t = Instant::now();
        let planned = reconciler::ops::apply::plan_live(&store, &desired)
            .await
            .expect("plan");
        plan_ms = Some(ms(t.elapsed()));
        assert_eq!(planned.plan.changes.len(), n);
    }
    let since = |before: Option<f64>| Some(server_cpu()? - before?);
    let mut phases = serde_json::Map::new();
    let mut phase = |name: &str, from: Option<f64>| {
        if let (true, Some(a), Some(b)) = (diag, from, mono_s()) {
            phases.insert(name.to_owned(), serde_json::json!([a, b]));
        }
    };
    // Peer, before the apply (with the warm-up): raw JetStream publish of the same messages,
    // the KV values and the warm-up apply's audit events (the same fields and sizes as the
    // measured apply's), with the same in-flight window (the apply's 512 writes + 512 events =
    // 1024 messages), every ack awaited, on the same connection. It is measured again after
    // the apply with the measured apply's own events; the peer's figure is the mean of both,
    // so neither side gains from going first or second.
    let mut raws = Vec::new();
    if let Some(events) = warm_events {
        let m = mono_s();
        let root = format!("rawa{tag}");
        let payloads = raw_payloads(&desired, env, events, &root);
        raws.push(
            raw_publish(
                &js,
                &format!("RAWA{tag}"),
                &root,
                payloads,
                window,
                &server_cpu,
                false,
            )
            .await,
        );
        phase("raw_before", m);
    }
    // B3: apply every key (CAS writes + one audit event per key).
    let (t, cpu, scpu, m) = (Instant::now(), cpu_ms(), server_cpu(), mono_s());
    let r = reconciler::ops::apply::apply(&store, &mut audit, &desired, &opts)
        .await
        .expect("apply");
    phase("apply", m);
    let apply_ms = ms(t.elapsed());
    let apply_cpu_ms = cpu_ms() - cpu;
    let apply_server_cpu_ms = since(scpu);
    assert_eq!(r.written, n);
    // Peer, after the apply: the measured apply's own messages. With `B3_COLD_PEER_URL`
    // (`b2_b7.sh` with `B3_COLD=1`, no warm-up) on a server of its own, started for it and
    // not used before, as the apply's was: cold against cold.
    let cold_peer = match std::env::var("B3_COLD_PEER_URL") {
        Ok(u) => {
            let client = async_nats::connect(&u)
                .await
                .expect("connect to the peer's server");
            Some((async_nats::jetstream::new(client), server_pid(&u)))
        }
        Err(_) => None,
    };
    let peer_server_cpu = || match &cold_peer {
        Some((_, pid)) => pid.and_then(pid_cpu_ms),
        None => server_cpu(),
    };
    let peer_js = cold_peer.as_ref().map_or(&js, |(js, _)| js);
    let root = format!("raw{tag}");
    let payloads = raw_payloads(&desired, env, put_events(&audit, n).await, &root);
    let raw_bytes: usize = payloads.iter().map(|p| p.1.len()).sum();
    let raw_messages = payloads.len();
    // Only the diagnostic keeps a second reference to the payloads (the peer consumes them,
    // so they do not raise the peak RSS reported for B7).
    let again = diag.then(|| payloads.clone());
    let m = mono_s();
    raws.push(
        raw_publish(
            peer_js,
            &format!("RAW{tag}"),
            &root,
            payloads,
            window,
            &peer_server_cpu,
            false,
        )
        .await,
    );
    phase("raw", m);
    let mean = |f: fn(&RawRun) -> Option<f64>| {
        let v: Option<Vec<f64>> = raws.iter().map(f).collect();
        v.map(|v| v.iter().sum::<f64>() / v.len() as f64)
    };
    let raw_ms = mean(|r| Some(r.ms)).unwrap_or(f64::NAN);
    let raw_cpu_ms = mean(|r| Some(r.cpu_ms));
    let raw_server_cpu_ms = mean(|r| r.server_cpu_ms);
    let raw_runs_ms: Vec<f64> = raws.iter().map(|r| r.ms).collect();
    // Diagnostic, not the peer: the same messages with the headers apply must send (expected
    // last subject sequence 0 on each write, a `Nats-Msg-Id` on each event), to a fresh
    // stream: the server's share of compare-and-set and deduplication.
    let mut raw_headers_ms = None;
    let mut raw_headers_cpu = (None, None);
    if let Some(payloads) = again {
        let root = format!("rawh{tag}");
        let payloads = payloads
            .into_iter()
            .map(|(s, p)| (s.replacen(&format!("raw{tag}."), &format!("{root}."), 1), p))
            .collect();
        let m = mono_s();
        let r = raw_publish(
            &js,
            &format!("RAWH{tag}"),
            &root,
            payloads,
            window,
            &server_cpu,
            true,
        )
        .await;
        phase("raw_with_headers", m);
        raw_headers_ms = Some(r.ms);
        raw_headers_cpu = (Some(r.cpu_ms), r.server_cpu_ms);
    }
    // B6: drift over every key vs the read-back (snapshot) it builds on.
    let t = Instant::now();
    let live = store.snapshot().await.expect("snapshot");
    let readback_ms = ms(t.elapsed());
    assert_eq!(live.len(), n);
    let t = Instant::now();
    let d = reconciler::ops::drift::drift(&store, &desired)
        .await
        .expect("drift");
    let drift_ms = ms(t.elapsed());
    assert!(d.in_sync);
    println!(
        "{}",
        serde_json::json!({
            "bench": "B3/B6/B7", "keys": n, "value_bytes": bytes,
            "apply_ms": apply_ms, "raw_publish_ms": raw_ms, "apply_vs_raw": apply_ms / raw_ms,
            "raw_messages": raw_messages, "raw_bytes": raw_bytes, "window": window,
            "warmup": warm, "warmup_apply_ms": warmup_apply_ms, "cold_peer_server": cold_peer.is_some(), "raw_publish_runs_ms": raw_runs_ms,
            "plan_live_ms": plan_ms, "raw_publish_with_headers_ms": raw_headers_ms,
            "apply_cpu_ms": apply_cpu_ms, "raw_publish_cpu_ms": raw_cpu_ms,
            "apply_server_cpu_ms": apply_server_cpu_ms, "raw_publish_server_cpu_ms": raw_server_cpu_ms,
            "raw_publish_with_headers_cpu_ms": raw_headers_cpu.0,
            "raw_publish_with_headers_server_cpu_ms": raw_headers_cpu.1,
            "loadavg": std::fs::read_to_string("/proc/loadavg").ok().map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" ")),
            "drift_ms": drift_ms, "readback_ms": readback_ms, "drift_vs_readback": drift_ms / readback_ms,
            "peak_rss_mb": peak_rss_mb(),
            "phases_monotonic_s": diag.then_some(phases),
        })
    );
    let _ = Bucket::ALL;
}

async fn b4(repo: &Path, url: &str, vakt: &str, n: usize) {
    let mut child = tokio::process::Command::new(vakt)
        .args(["reconcile", "--env", "dev", "--repo"])
        .arg(repo)
        .args([
            "--nats",
            url,
            "--interval",
            "1h",
            "--lease",
            "5s",
            "--id",
            "bench",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(match std::env::var_os("B4_DAEMON_LOG") {
            // The daemon's debug log (step timings), to see where a slow trigger went.
            Some(p) => std::process::Stdio::from(std::fs::File::create(p).expect("daemon log")),
            None => std::process::Stdio::null(),
        })
        .env(
            "VAKT_LOG",
            if std::env::var_os("B4_DAEMON_LOG").is_some() {
                "vakt=debug,reconciler=debug"
            } else {
                "warn"
            },
        )
        .kill_on_drop(true)
        .spawn()
        .expect("start vakt reconcile");
    let client = async_nats::connect(url).await.expect("connect");
    let js = async_nats::jetstream::new(client.clone());
    // Wait for the first apply.
    let kv = loop {
        if let Ok(kv) = js.get_key_value("vakt_dev_config").await
            && kv.get("global.platform").await.ok().flatten().is_some()
        {
            break kv;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let file = repo.join("config/tenants/polar-retail/tenant.toml");
    let original = std::fs::read_to_string(&file).expect("tenant file");
    // One watcher for the whole run, as a service watching a key keeps one: a new watcher per
    // merge created a consumer on the server each time, and the dropped ones piled up until
    // the server expired them, slowing the daemon's writes on the same server.
    let mut w = kv.watch("tenant.polar-retail.tenant").await.expect("watch");
    // Merges before the measured ones, not counted: the first passes of a daemon fill its
    // in-memory parse cache and rule memos, and a machine that was idle a moment ago runs the
    // first second or so slower (the same 30 merges took 40 ms each in a first run and 18 ms
    // in the run right after it). B4 is the latency of a daemon that has been running.
    let warmup: usize = std::env::var("B4_WARMUP")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let mut lat = Vec::new();
    for i in 0..warmup + n {
        let text = original.replacen(
            "requests_per_second = 100",
            &format!("requests_per_second = {}", 1000 + i),
            1,
        );
        std::fs::write(&file, text).expect("write");
        let ok = std::process::Command::new("git")
            .args(["-C"])
            .arg(repo)
            .args([
                "-c",
                "user.name=bench",
                "-c",
                "user.email=bench@vakt.invalid",
                "commit",
                "-qam",
            ])
            .arg(format!("bench {i}"))
            .status()
            .expect("git")
            .success();
        assert!(ok, "git commit");
        let t = Instant::now();
        client
            .publish("vakt.trigger.dev", bytes::Bytes::new())
            .await
            .expect("publish");
        client.flush().await.expect("flush");
        // This merge's value (the watcher sees every change of the key, in order).
        let want = format!("\"requests_per_second\":{}", 1000 + i);
        tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(e) = w.next().await {
                let e = e.expect("watch entry");
                if String::from_utf8_lossy(&e.value).contains(&want) {
                    return;
                }
            }
            panic!("the watcher ended");
        })
        .await
        .expect("change not seen");
        if i >= warmup {
            lat.push(ms(t.elapsed()));
        }
    }
    let _ = child.kill().await;
    println!(
        "{}",
        serde_json::json!({
            "bench": "B4", "runs": n, "warmup": warmup, "trigger_p50_ms": pct(&lat, 0.5), "trigger_p99_ms": pct(&lat, 0.99),
            "trigger_max_ms": pct(&lat, 1.0), "samples_ms": lat,
        })
    );
}

/// B9: what the daemon does on every alert poll, over the alerts already posted to a real
/// Alertmanager at `am` (10,000 in `bench/b9_alerts.sh`), with the audit events and status of
/// a real `vakt apply` of `repo`'s env/dev on `nats`: read `/api/v2/alerts` (and the silences),
/// deduplicate, join every alert to its catalog entry, correlate with the last 2,000 audit
/// events, build every snippet and write them to a directory, exactly as
/// `Daemon::refresh_snippets` does. Peer: `amtool alert query -o json` on the same
/// Alertmanager, which only fetches and prints.
async fn b9(repo: &Path, nats: &str, am: &str, runs: usize, peer_runs: usize) {
    let env = "dev";
    let target = reconciler::EnvTarget::resolve(
        &reconciler::desired::checkout::Checkout::open(repo, env),
        reconciler::store::NatsOpts {
            urls: nats.to_owned(),
            ..Default::default()
        },
        None,
        Default::default(),
    )
    .expect("target");
    let store = target.open_existing().await.expect("open buckets");
    let audit = reconciler::store::audit::Audit::open(&store)
        .await
        .expect("audit");
    let (status, _) = reconciler::store::state::get::<reconciler::store::state::Status>(
        &store.state,
        reconciler::store::state::STATUS,
    )
    .await
    .expect("status")
    .expect("a status record: run `vakt apply --env dev` first");
    let commit = status.applied_commit.clone().expect("an applied commit");
    let files = opsrepo::read_commit(repo, &commit).expect("read the applied commit");
    let model = opsrepo::load::build_view(&opsrepo::load::parse_all(&files), Some(env)).0;
    let from = audit.last_seq().await.unwrap_or(0).saturating_sub(2000);
    let events: Vec<reconciler::store::audit::AuditEvent> = audit
        .read(from)
        .await
        .expect("audit events")
        .into_iter()
        .map(|s| s.event)
        .collect();
    let out = std::env::temp_dir().join(format!("vakt-b9-{}", std::process::id()));
    std::fs::create_dir_all(&out).expect("snippets dir");
    let client = reconciler::daemon::fetch::client();
    let rss_before = peak_rss_mb();
    // Alertmanager's own share: the same GET, body read, nothing parsed.
    let mut raw = Vec::new();
    let mut body_bytes = 0;
    for _ in 0..=runs {
        let t = Instant::now();
        let body = client
            .get(format!("{am}/api/v2/alerts"))
            .send()
            .await
            .expect("GET /api/v2/alerts")
            .bytes()
            .await
            .expect("body");
        raw.push(ms(t.elapsed()));
        body_bytes = body.len();
    }
    raw.remove(0);
    let mut sources = reconciler::daemon::alerts::Source::from_urls(&[am.to_owned()]);
    let (mut fetch, mut build, mut write, mut total) = (vec![], vec![], vec![], vec![]);
    let mut view = serde_json::Value::Null;
    let mut actions_bytes = 0;
    // One unmeasured poll first (connection set-up, page cache), as in a running daemon.
    for i in 0..=runs {
        let t0 = Instant::now();
        let now = time::OffsetDateTime::now_utc();
        reconciler::daemon::alerts::poll(
            &client,
            &mut sources[0],
            now,
            reconciler::daemon::alerts::MAX_BODY,
        )
        .await;
        let t1 = Instant::now();
        let at = reconciler::store::audit::now_rfc3339();
        let snap = reconciler::daemon::snippets::live(&reconciler::daemon::snippets::Inputs {
            model: &model,
            env,
            status: &status,
            observations: &[],
            events: &events,
            approvals: &[],
            jobs: &[],
            discovered: &[],
            generated_at: &at,
            last_backup: None,
            alert_sources: &sources,
            change_window: Duration::from_secs(2 * 3600),
            site_links: None,
            metrics_backend: None,
            in_process: &[],
            started_at: &at,
        });
        let t2 = Instant::now();
        reconciler::daemon::snippets::write_dir(&out, &snap).expect("write snippets");
        let t3 = Instant::now();
        assert_eq!(
            sources[0].state,
            opsrepo::snippets::SourceState::Live,
            "{:?}",
            sources[0].error
        );
        if i == 0 {
            continue;
        }
        fetch.push(ms(t1 - t0));
        build.push(ms(t2 - t1));
        write.push(ms(t3 - t2));
        total.push(ms(t3 - t0));
        if i == runs {
            let text = std::fs::read(out.join("actions.json")).expect("actions.json");
            actions_bytes = text.len();
            let v: serde_json::Value = serde_json::from_slice(&text).expect("actions JSON");
            let a = &v["alerts"];
            view = serde_json::json!({
                "firing_total": a["firing_total"], "silenced_total": a["silenced_total"],
                "cards": a["firing"].as_array().map_or(0, Vec::len),
                "silenced_cards": a["silenced"].as_array().map_or(0, Vec::len),
                "groups": a["groups"].as_array().map_or(0, Vec::len),
                "cards_with_changes": a["firing"].as_array().map_or(0, |c| c.iter()
                    .filter(|c| c["changes"].as_array().is_some_and(|x| !x.is_empty())).count()),
                "conditions": v["conditions"].as_array().map_or(0, Vec::len),
            });
        }
    }
    let rss = peak_rss_mb();
    let _ = std::fs::remove_dir_all(&out);
    let alerts_fetched = sources[0].alerts.len();
    // Peer: amtool, as an operator runs it, output discarded.
    let mut peer = Vec::new();
    for _ in 0..=peer_runs {
        let t = Instant::now();
        let st = std::process::Command::new("amtool")
            .args(["alert", "query", "-o", "json", "--alertmanager.url", am])
            .stdout(std::process::Stdio::null())
            .status()
            .expect("run amtool (Debian package prometheus-alertmanager)");
        assert!(st.success(), "amtool failed: {st}");
        peer.push(ms(t.elapsed()));
    }
    peer.remove(0);
    println!(
        "{}",
        serde_json::json!({
            "bench": "B9", "alerts_fetched": alerts_fetched, "audit_events": events.len(),
            "runs": runs, "poll_ms_median": median(total.clone()), "poll_ms_p95": pct(&total, 0.95),
            "poll_ms_max": pct(&total, 1.0),
            "fetch_ms_median": median(fetch), "build_ms_median": median(build),
            "write_ms_median": median(write), "actions_json_bytes": actions_bytes,
            "peak_rss_mb": rss, "rss_before_polls_mb": rss_before, "view": view,
            "raw_get_ms_median": median(raw), "body_bytes": body_bytes,
            "amtool_query_ms_median": median(peer.clone()), "amtool_runs": peer_runs,
            "poll_vs_amtool": median(total) / median(peer),
        })
    );
}
