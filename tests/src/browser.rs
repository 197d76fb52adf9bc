//! Browser harness: headless Chromium driven through ChromeDriver's WebDriver HTTP API with a
//! small JSON client over std TCP, and `vakt site serve` as a real process.
//!
//! Each test owns its ChromeDriver and server (nextest runs every test in its own process);
//! both are killed when their guard drops.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Chromium flags: headless, quiet, reproducible, no network beyond what the page asks for.
pub const CHROME_ARGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--disable-dev-shm-usage",
    "--window-size=1200,900",
];

fn free_port() -> u16 {
    crate::nats::port()
}

/// A plain HTTP/1.1 request; returns status and body.
pub fn http(method: &str, url: &str, body: Option<&str>) -> (u16, String) {
    let rest = url.strip_prefix("http://").expect("http:// url");
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let mut s = TcpStream::connect(host).unwrap_or_else(|e| panic!("connect {host}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(60))).ok();
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("write request");
    // Read the head, then exactly Content-Length bytes (servers may keep the connection open).
    let mut reader = BufReader::new(s);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).expect("read response") == 0 || line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let lower = head.to_ascii_lowercase();
    let length = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    let mut raw = Vec::new();
    match length {
        Some(n) => {
            raw.resize(n, 0);
            reader.read_exact(&mut raw).expect("read body");
        }
        None => {
            reader.read_to_end(&mut raw).expect("read body");
        }
    }
    let payload = String::from_utf8_lossy(&raw).into_owned();
    let payload = if lower.contains("transfer-encoding: chunked") {
        dechunk(&payload)
    } else {
        payload
    };
    (status, payload)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Skips nothing: a missing browser is a setup error (`scripts/test.sh` installs it).
pub fn require_chromium() {
    for p in [CHROMIUM, CHROMEDRIVER] {
        assert!(
            Path::new(p).exists(),
            "{p} is missing: apt-get install -y chromium chromium-driver (scripts/test.sh does)"
        );
    }
}

/// A running ChromeDriver.
pub struct Driver {
    child: Child,
    pub base: String,
}

impl Driver {
    pub fn start() -> Driver {
        require_chromium();
        let port = free_port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let base = format!("http://127.0.0.1:{port}");
        let d = Driver { child, base };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                let (code, body) = http("GET", &format!("{}/status", d.base), None);
                if code == 200 && body.contains("\"ready\":true") {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        d
    }

    /// A new browser session (its own fresh profile directory).
    pub fn session(&self, javascript: bool) -> Session<'_> {
        let profile = tempfile::tempdir().expect("profile dir");
        let mut args: Vec<String> = CHROME_ARGS.iter().map(|s| s.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        if !javascript {
            args.push("--blink-settings=scriptEnabled=false".into());
        }
        let mut opts = json!({"binary": CHROMIUM, "args": args});
        if !javascript {
            opts["prefs"] = json!({"profile.managed_default_content_settings.javascript": 2});
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": opts,
        }}});
        let (code, body) = http(
            "POST",
            &format!("{}/session", self.base),
            Some(&caps.to_string()),
        );
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let id = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("new session failed ({code}): {body}"))
            .to_owned();
        Session {
            driver: self,
            id,
            _profile: profile,
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One WebDriver session.
pub struct Session<'d> {
    driver: &'d Driver,
    id: String,
    _profile: tempfile::TempDir,
}

impl Session<'_> {
    fn cmd(&self, method: &str, what: &str, body: Value) -> Value {
        let url = format!("{}/session/{}/{what}", self.driver.base, self.id);
        let (code, text) = http(method, &url, Some(&body.to_string()));
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        assert!(code == 200, "webdriver {what} failed ({code}): {text}");
        v["value"].clone()
    }

    pub fn goto(&self, url: &str) {
        self.cmd("POST", "url", json!({"url": url}));
    }

    /// Runs `script` (a function body; `return` a value) in the page.
    pub fn js(&self, script: &str) -> Value {
        self.cmd(
            "POST",
            "execute/sync",
            json!({"script": script, "args": []}),
        )
    }

    /// Polls `script` until it returns something truthy; panics with `what` after `timeout`.
    pub fn wait_for(&self, script: &str, timeout: Duration, what: &str) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.js(script);
            let truthy = match &v {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                Value::Array(a) => !a.is_empty(),
                Value::Object(_) => true,
            };
            if truthy {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; page text:\n{}",
                self.js("return document.body ? document.body.innerText.slice(0, 3000) : ''")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The positive signal before asserting that an injected payload did NOT run: a probe
    /// image inserted now, with the same broken `src="x"` the payloads use, fails after any
    /// payload image requested before it; its error listener (added by the test, so no page
    /// policy blocks it) then queues a task behind every task already queued (a clicked
    /// `javascript:` link, an `onload`). Once the probe has fired, a payload had every chance
    /// to run. Panics after `timeout`.
    pub fn settle(&self, timeout: Duration) {
        self.js(
            "window.__probeDone = false; const i = document.createElement('img');              i.addEventListener('error', () => setTimeout(() => { window.__probeDone = true; i.remove(); }, 0));              i.src = 'x'; document.body.appendChild(i); return true",
        );
        self.wait_for(
            "return window.__probeDone === true",
            timeout,
            "the probe image's error handler (the page's pending events processed)",
        );
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        let _ = http(
            "DELETE",
            &format!("{}/session/{}", self.driver.base, self.id),
            None,
        );
    }
}

/// `vakt site serve` as a child process.
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub base: String,
}

impl Server {
    /// Serves `out` (already built) with `extra` flags (e.g. `--snippets-dir DIR`).
    pub fn start(out: &Path, extra: &[&str]) -> Server {
        let mut child = Command::new(crate::vakt_bin())
            .args(["site", "serve", "--addr", "127.0.0.1:0", "--out"])
            .arg(out)
            .args(extra)
            .env("NO_COLOR", "1")
            .env_remove("VAKT_REPO")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start vakt site serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read serve output");
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("no URL in `{line}`"));
        let base = url
            .trim_end_matches('/')
            .trim_end_matches("/ops")
            .to_owned();
        Server { child, base }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Builds the site of `repo` into `out` with fixed "now" and extra flags; panics on failure.
pub fn build_site(repo: &Path, out: &Path, extra: &[&str]) -> String {
    let repo_s = repo.to_string_lossy();
    let out_s = out.to_string_lossy();
    let mut args = vec![
        "site",
        "build",
        "--repo",
        &repo_s,
        "--out",
        &out_s,
        "--now",
        crate::TODAY,
    ];
    args.extend_from_slice(extra);
    let (code, stdout, stderr) = crate::outcome(&crate::vakt(&args));
    assert_eq!(code, 0, "site build failed:\n{stdout}{stderr}");
    stdout
}

/// Now as RFC 3339 (UTC), `offset_secs` in the past.
pub fn rfc3339_ago(offset_secs: u64) -> String {
    let t = std::time::SystemTime::now() - Duration::from_secs(offset_secs);
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after epoch")
        .as_secs() as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // civil-from-days (Howard Hinnant)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Writes `name.json` into `dir` atomically (write + rename), as the daemon would.
pub fn write_snippet(dir: &Path, name: &str, body: &str) {
    let tmp: PathBuf = dir.join(format!(".{name}.json.tmp"));
    std::fs::write(&tmp, body).expect("write snippet");
    std::fs::rename(&tmp, dir.join(format!("{name}.json"))).expect("rename snippet");
}
