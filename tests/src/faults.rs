//! Fault injectors for the fault-matrix tests (`tests/tests/faults.rs`): a node admin endpoint
//! that answers with a 10 MB body, a small tmpfs mounted full or read-only, and the migration
//! scaffolding (two Oslo aggregate nodes on loopback) those tests share with `daemon.rs`.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::nats::{self, NatsServer, wait_until};

/// Size of the oversized answer: 10 MB.
pub const BIG: usize = 10 * 1024 * 1024;

/// What [`BigAnswer`] saw: each request's path, and the body bytes each connection managed to
/// send before the client hung up.
#[derive(Default, Debug, Clone)]
pub struct Seen {
    pub paths: Vec<String>,
    pub body_bytes_sent: Vec<usize>,
}

/// A node admin endpoint on loopback: `GET /healthz` answers 200 with `{}`; every other path
/// answers 200 with a 10 MB JSON-looking body, streamed in chunks (no `Content-Length`, so the
/// client cannot refuse it from the header). One thread per connection; the listener thread
/// lives as long as the test process.
pub struct BigAnswer {
    pub port: u16,
    pub seen: Arc<Mutex<Seen>>,
}

impl BigAnswer {
    pub fn start() -> BigAnswer {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let s = seen.clone();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(conn) = conn else { continue };
                let s = s.clone();
                std::thread::spawn(move || serve_big(conn, &s));
            }
        });
        BigAnswer { port, seen }
    }

    pub fn seen(&self) -> Seen {
        self.seen.lock().expect("lock").clone()
    }
}

fn serve_big(conn: std::net::TcpStream, seen: &Mutex<Seen>) {
    let _ = conn.set_write_timeout(Some(Duration::from_secs(30)));
    let mut r = BufReader::new(conn.try_clone().expect("clone"));
    let mut w = conn;
    // The client keeps connections alive: serve requests until it hangs up. Request bodies
    // are not read (the calls are GETs and body-less POSTs).
    loop {
        let mut first = String::new();
        if r.read_line(&mut first).unwrap_or(0) == 0 {
            return;
        }
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            if h == "\r\n" || h == "\n" {
                break;
            }
        }
        let path = first.split_whitespace().nth(1).unwrap_or("").to_owned();
        seen.lock().expect("lock").paths.push(path.clone());
        if path == "/healthz" {
            if w.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
            )
            .is_err()
            {
                return;
            }
            continue;
        }
        let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
        if w.write_all(head.as_bytes()).is_err() {
            return;
        }
        // `[0,0,0,…` in 64 KiB chunks: valid JSON up to where it stops.
        let chunk = {
            let mut c = Vec::with_capacity(64 * 1024);
            c.push(b'[');
            while c.len() < 64 * 1024 {
                c.extend_from_slice(b"0,");
            }
            c.truncate(64 * 1024);
            c
        };
        let mut sent = 0;
        let mut ok = true;
        while sent < BIG {
            let n = chunk.len().min(BIG - sent);
            let framed = [
                format!("{n:x}\r\n").as_bytes(),
                &chunk[..n],
                b"\r\n".as_slice(),
            ]
            .concat();
            if w.write_all(&framed).is_err() {
                ok = false;
                break;
            }
            sent += n;
        }
        if ok {
            let _ = w.write_all(b"0\r\n\r\n");
        }
        seen.lock().expect("lock").body_bytes_sent.push(sent);
        if !ok {
            return;
        }
    }
}

/// A tmpfs mounted on a fresh directory, unmounted on drop: a real file system that is full
/// (`size=` smaller than a backup) or read-only (`ro`). Needs CAP_SYS_ADMIN (the suite runs as
/// root; root ignores mode bits, so `chmod` cannot make a read-only directory for it).
pub struct Tmpfs {
    pub dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Whether this process may mount a file system (root with CAP_SYS_ADMIN). A machine that
    /// may not (an unprivileged container) cannot run the full/read-only backup row; the test
    /// says so on stderr instead of failing on the environment.
    pub fn permitted() -> bool {
        let dir = tempfile::tempdir().expect("tempdir");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=4k", "vakt-probe"])
            .arg(dir.path())
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            let _ = Command::new("umount").arg(dir.path()).status();
        }
        ok
    }

    /// Mounts `tmpfs -o <opts>`; panics naming why when mounting is not permitted.
    pub fn mount(opts: &str) -> Tmpfs {
        let dir = tempfile::tempdir().expect("tempdir");
        let o = Command::new("mount")
            .args(["-t", "tmpfs", "-o", opts, "vakt-test"])
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(
            o.status.success(),
            "mount -t tmpfs -o {opts}: {} (this test needs root with CAP_SYS_ADMIN to mount a real full or read-only file system)",
            String::from_utf8_lossy(&o.stderr)
        );
        Tmpfs { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Remounts with other options (`remount,ro`).
    pub fn remount(&self, opts: &str) {
        let o = Command::new("mount")
            .args(["-o", opts])
            .arg(self.dir.path())
            .output()
            .expect("run mount");
        assert!(
            o.status.success(),
            "mount -o {opts}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Every entry directly under `dir` (hidden ones too), sorted.
pub fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|r| r.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Replaces the first `from` with `to` in `repo/path` (which must contain it).
pub fn edit(repo: &Path, path: &str, from: &str, to: &str) {
    let p = repo.join(path);
    let s = std::fs::read_to_string(&p).expect("read");
    assert!(s.contains(from), "{path}: {from:?}");
    std::fs::write(&p, s.replacen(from, to, 1)).expect("write");
}

/// The bundled repo as Git, with the two Oslo aggregate nodes on loopback ports `p1`
/// (agg-osl1-01, shard agg-osl1-a) and `p2` (agg-osl1-02, shard agg-osl1-b), and the dev
/// `[drain]` limits replaced by `drain`.
pub fn migration_repo(p1: u16, p2: u16, drain: &str) -> tempfile::TempDir {
    let repo = nats::ops_git();
    for (node, port) in [("agg-osl1-01", p1), ("agg-osl1-02", p2)] {
        edit(
            repo.path(),
            &format!("inventory/nodes/{node}.toml"),
            &format!("http://{node}.dataverket.internal:9090"),
            &format!("http://127.0.0.1:{port}"),
        );
    }
    edit(
        repo.path(),
        "environments/dev/config/global/platform.toml",
        "drain_timeout = \"2m\"\npoll_interval = \"2s\"",
        drain,
    );
    nats::commit_all(
        repo.path(),
        "aggregate nodes on loopback; short drains in dev",
    );
    repo
}

/// A node double for agg-osl1-01 (`which` 1) or agg-osl1-02 (2) on `port`, reading placement
/// from `nats_url`'s `vakt_dev_placement`.
pub fn agg_node(n: &NatsServer, which: u8, port: u16, extra: &[&str]) -> nats::NodeDouble {
    let (id, shard) = if which == 1 {
        ("agg-osl1-01", "agg-osl1-a")
    } else {
        ("agg-osl1-02", "agg-osl1-b")
    };
    nats::NodeDouble::start(
        n,
        "vakt_dev",
        id,
        "aggregate",
        "osl1",
        shard,
        "2.14.0",
        port,
        extra,
    )
}

/// Commits the polar-retail move (agg-osl1-a → agg-osl1-b).
pub fn move_polar_retail(repo: &Path) {
    edit(
        repo,
        "inventory/placement/polar-retail.toml",
        "aggregate = \"agg-osl1-a\"",
        "aggregate = \"agg-osl1-b\"",
    );
    nats::commit_all(repo, "move polar-retail to agg-osl1-b");
}

/// `vakt jobs list --format json` of dev against `urls`.
pub fn jobs_json(repo: &Path, urls: &str) -> Option<Vec<serde_json::Value>> {
    let rp = repo.to_string_lossy().into_owned();
    let (code, out, _) = crate::outcome(&crate::vakt_env(
        &[
            "jobs", "list", "--env", "dev", "--repo", &rp, "--nats", urls, "--format", "json",
        ],
        &[],
    ));
    if code != 0 {
        return None;
    }
    serde_json::from_str(&out).ok()
}

/// Waits (up to `secs`) for the newest job to satisfy `f`; panics with the last list.
pub fn job_where(
    repo: &Path,
    urls: &str,
    secs: u64,
    f: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let mut last = Vec::new();
    let ok = wait_until(Duration::from_secs(secs), || {
        if let Some(l) = jobs_json(repo, urls) {
            last = l;
        }
        last.first().is_some_and(&f)
    });
    assert!(ok, "job never reached the expected state: {last:#?}");
    last[0].clone()
}

/// The shard polar-retail's placement names, read at `url`.
pub fn shard_of_polar_retail(url: &str) -> Option<String> {
    let v = nats::try_get(url, "vakt_dev_placement", "aggregate.polar-retail")?;
    let v: serde_json::Value = serde_json::from_slice(&v).ok()?;
    v["spec"]["shard"].as_str().map(str::to_owned)
}
