//! The daemon's port and `vakt site serve` under hostile use: the audit trail cannot
//! be flooded by strangers, no operator action happens without its audit event, snippets,
//! status and metrics can require a read token, the role × endpoint table of the README holds,
//! slow-loris connections are closed while /healthz stays fast, and `site serve` never leaves
//! its root.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use vakt_tests::nats::{self, Daemon, NatsServer, wait_until};

const OP: &str = "op-token-0123456789abcdef";
const RO: &str = "ro-token-0123456789abcdef";

/// The bundled repo as Git, with one token per bundled role (a global binding `user:test-<role>`
/// for each) and the operator/read-only tokens of the daemon tests.
fn repo_with_role_tokens() -> (tempfile::TempDir, tempfile::TempDir, Vec<(String, String)>) {
    let repo = nats::ops_git();
    let mut roles = Vec::new();
    for e in std::fs::read_dir(repo.path().join("access/roles")).unwrap() {
        let p = e.unwrap().path();
        let v: toml::Value = toml::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        roles.push(v["id"].as_str().unwrap().to_owned());
    }
    roles.sort();
    let mut lines = format!("{OP} group:platform-runtime\n{RO} service-account:ci-vakt-plan\n");
    let mut tokens = Vec::new();
    for r in &roles {
        std::fs::write(
            repo.path().join(format!("access/bindings/test-{r}.toml")),
            format!(
                "id = \"test-{r}\"\ndescription = \"Test binding of the role {r}.\"\nroles = [\"{r}\"]\nscope = {{ kind = \"global\" }}\n\n[[subjects]]\nkind = \"user\"\nname = \"test-{r}\"\n"
            ),
        )
        .unwrap();
        let tok = format!("{r}-token-0123456789abcdef");
        lines.push_str(&format!("{tok} user:test-{r}\n"));
        tokens.push((r.clone(), tok));
    }
    // ops_git() has env/dev checked out: the daemon of env dev applies this commit.
    nats::commit_all(repo.path(), "test bindings, one per role");
    let secrets = tempfile::tempdir().unwrap();
    std::fs::write(secrets.path().join("tokens"), lines).unwrap();
    (repo, secrets, tokens)
}

/// A raw request; (status, head, body).
fn raw(base: &str, req: &str) -> (u16, String, String) {
    let addr = base.trim_start_matches("http://").trim_end_matches('/');
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, head.to_ascii_lowercase(), body.to_owned())
}

fn get(base: &str, path: &str, auth: Option<&str>) -> (u16, String, String) {
    let addr = base.trim_start_matches("http://").trim_end_matches('/');
    let auth = auth.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
    raw(
        base,
        &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"),
    )
}

fn post(base: &str, path: &str, token: &str, body: &str) -> (u16, String) {
    let (c, _, b) = raw(
        base,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    );
    (c, b)
}

fn start(repo: &Path, n: &NatsServer, tokens: &Path, extra: &[&str]) -> Daemon {
    let tk = tokens.to_string_lossy().into_owned();
    let mut args = vec!["--interval", "1h", "--lease", "2s", "--api-tokens", &tk];
    args.extend_from_slice(extra);
    let d = Daemon::start(repo, n, "dev", "hostile", &args);
    assert!(
        wait_until(Duration::from_secs(60), || {
            get(&d.url, "/api/v1/status", Some(&format!("Bearer {OP}"))).0 == 200
        }),
        "the first apply never loaded the roles"
    );
    d
}

fn stream_state(url: &str) -> (u64, i64, i64) {
    nats::rt().block_on(async {
        let c = async_nats::connect(url).await.unwrap();
        let js = async_nats::jetstream::new(c);
        let mut s = js.get_stream("VAKT_AUDIT").await.unwrap();
        let i = s.info().await.unwrap();
        (
            i.state.bytes,
            i.config.max_bytes,
            i.config.max_message_size as i64,
        )
    })
}

#[test]
fn an_anonymous_flood_is_aggregated_and_the_events_view_keeps_real_events() {
    let n = NatsServer::start();
    let (repo, secrets, _) = repo_with_role_tokens();
    let d = start(
        repo.path(),
        &n,
        &secrets.path().join("tokens"),
        &["--node-poll", "1s"],
    );
    let real = || -> Vec<_> {
        nats::audit_events(&n.url(), "dev")
            .into_iter()
            .filter(|e| e["action"] != "api.denied")
            .collect()
    };
    // The roles load when the commit is prepared; its events follow when it is written.
    assert!(
        wait_until(Duration::from_secs(60), || !real().is_empty()),
        "the first apply is audited"
    );
    let real_before = real();
    let (bytes_before, max_bytes, max_msg) = stream_state(&n.url());
    assert!(max_bytes > 0, "the audit stream has a byte limit");
    assert!(max_msg > 0, "the audit stream has a message size limit");

    // 200 anonymous requests with long ids and 200 without a token: a few aggregated events.
    let long = "a".repeat(4000);
    for i in 0..200 {
        let (c, _, _) = get(&d.url, &format!("/api/v1/jobs/{long}{i}"), None);
        assert_eq!(
            c, 404,
            "a malformed id is not found, before anything is audited"
        );
        let (c, head, _) = get(&d.url, "/api/v1/status", None);
        assert_eq!(c, 401);
        assert!(head.contains("x-content-type-options: nosniff"), "{head}");
        assert!(head.contains("cache-control: no-store"), "{head}");
    }
    let (c, _, _) = get(&d.url, "/api/v1/status", Some("Bearer nope-nope-nope-nope"));
    assert_eq!(c, 401);
    let events = nats::audit_events(&n.url(), "dev");
    let denied: Vec<_> = events
        .iter()
        .filter(|e| e["action"] == "api.denied")
        .collect();
    assert!(
        (1..=4).contains(&denied.len()),
        "denials are aggregated per client and reason: {denied:?}"
    );
    assert!(denied.iter().all(|e| e["detail"]["client"] == "127.0.0.1"));
    assert!(
        events
            .iter()
            .all(|e| serde_json::to_vec(e).unwrap().len() <= 8 * 1024)
    );
    let (bytes_after, _, _) = stream_state(&n.url());
    let noise: usize = denied
        .iter()
        .map(|e| serde_json::to_vec(e).unwrap().len())
        .sum();
    assert!(noise < 4 * 1024, "the flood left {noise} bytes of denials");
    assert!(bytes_after <= max_bytes as u64 && bytes_before <= bytes_after);

    // The events API leaves denials out unless asked, and needs audit.view.
    let (c, _, body) = get(&d.url, "/api/v1/events", Some(&format!("bearer {OP}")));
    assert_eq!(c, 200, "lower-case bearer is accepted: {body}");
    let list: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    assert!(list.iter().all(|e| e["action"] != "api.denied"));
    assert!(list.len() >= real_before.len(), "{body}");
    let (c, _, body) = get(
        &d.url,
        "/api/v1/events?include_denials=true",
        Some(&format!("Bearer {OP}")),
    );
    assert_eq!(c, 200);
    assert!(body.contains("api.denied"), "{body}");
    // `vakt events` the same: denials only with --include-denials.
    let cli = |extra: &[&str]| -> String {
        let mut args = vec!["events", "--api", &d.url, "--token", OP, "--format", "json"];
        args.extend_from_slice(extra);
        let out = vakt_tests::vakt(&args);
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(!cli(&[]).contains("api.denied"));
    assert!(cli(&["--include-denials"]).contains("api.denied"));
    let (c, _, _) = get(&d.url, "/api/v1/events", Some(&format!("Bearer {RO}")));
    assert_eq!(c, 403, "read-only has no audit permission");

    // The events view (the `events` snippet), rebuilt after the flood, shows real events only.
    let flood_end = time_now();
    let mut view = serde_json::Value::Null;
    assert!(
        wait_until(Duration::from_secs(30), || {
            let (c, _, b) = get(&d.url, "/snippets/events.json", None);
            view = serde_json::from_str(&b).unwrap_or_default();
            c == 200
                && view["generated_at"]
                    .as_str()
                    .is_some_and(|g| g > flood_end.as_str())
        }),
        "the events snippet was not rebuilt after the flood"
    );
    let kinds: Vec<&str> = view["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"apply.completed"), "{kinds:?}");
    assert!(!kinds.contains(&"api.denied"), "{kinds:?}");
}

#[test]
fn an_oversized_reason_is_refused_and_a_failing_audit_write_means_no_action() {
    let n = NatsServer::start();
    let (repo, secrets, _) = repo_with_role_tokens();
    let d = start(repo.path(), &n, &secrets.path().join("tokens"), &[]);
    let drain = "/api/v1/nodes/agg-osl1-01/drain";
    let jobs = |d: &Daemon| {
        let (c, _, b) = get(&d.url, "/api/v1/jobs", Some(&format!("Bearer {OP}")));
        assert_eq!(c, 200, "{b}");
        serde_json::from_str::<Vec<serde_json::Value>>(&b).unwrap()
    };
    let drains = || {
        nats::audit_events(&n.url(), "dev")
            .into_iter()
            .filter(|e| e["action"] == "job.created")
            .count()
    };
    // 1.9 MB: 413 from its Content-Length, unread; 2000 characters: 400 naming the limit.
    let huge = format!(r#"{{"reason":"{}"}}"#, "x".repeat(1_900_000));
    assert_eq!(post(&d.url, drain, OP, &huge).0, 413);
    let long = format!(r#"{{"reason":"{}"}}"#, "x".repeat(2000));
    let (c, b) = post(&d.url, drain, OP, &long);
    assert_eq!(c, 400, "{b}");
    assert!(b.contains("1024"), "{b}");
    assert!(jobs(&d).is_empty(), "nothing was queued");
    assert_eq!(drains(), 0, "nothing was audited as done");

    // A drain that is audited: its event names the client address.
    let (c, b) = post(&d.url, drain, OP, r#"{"reason":"kernel update"}"#);
    assert_eq!(c, 202, "{b}");
    let id = serde_json::from_str::<serde_json::Value>(&b).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        nats::audit_events(&n.url(), "dev")
            .iter()
            .any(|e| e["action"] == "job.created"
                && e["job_id"] == id.as_str()
                && e["client"] == "127.0.0.1")
    );
    assert_eq!(jobs(&d).len(), 1);

    // The audit stream is full (its limit lowered to what it holds, discard new): the drain
    // is refused with 5xx and no job exists.
    let url = n.url();
    nats::rt().block_on(async {
        let c = async_nats::connect(&url).await.unwrap();
        let js = async_nats::jetstream::new(c);
        let mut s = js.get_stream("VAKT_AUDIT").await.unwrap();
        let i = s.info().await.unwrap();
        let mut cfg = i.config.clone();
        cfg.max_bytes = i.state.bytes as i64;
        cfg.discard = async_nats::jetstream::stream::DiscardPolicy::New;
        js.update_stream(&cfg).await.unwrap();
    });
    let (c, b) = post(
        &d.url,
        "/api/v1/nodes/agg-osl1-02/drain",
        OP,
        r#"{"reason":"maintenance"}"#,
    );
    assert!((500..600).contains(&c), "{c} {b}");
    assert!(b.contains("not queued"), "{b}");
    let after = jobs(&d);
    assert_eq!(after.len(), 1, "no job without its audit event: {after:?}");
    assert_eq!(after[0]["id"], id.as_str());
}

#[test]
fn snippets_status_and_metrics_need_the_read_token_and_hosts_are_checked() {
    let n = NatsServer::start();
    let (repo, secrets, _) = repo_with_role_tokens();
    let read = secrets.path().join("read-token");
    std::fs::write(&read, "read-token-0123456789\n").unwrap();
    let rt = read.to_string_lossy().into_owned();
    let d = start(
        repo.path(),
        &n,
        &secrets.path().join("tokens"),
        &[
            "--snippets-token",
            &rt,
            "--allowed-host",
            "127.0.0.1",
            "--allowed-host",
            "vakt.ops.example",
        ],
    );
    for p in ["/snippets/summary.json", "/status", "/metrics"] {
        let (c, head, body) = get(&d.url, p, None);
        assert_eq!(c, 401, "{p} without the token: {body}");
        assert!(head.contains("x-content-type-options: nosniff"), "{head}");
        assert!(body.contains("--snippets-token"), "{body}");
        assert_eq!(get(&d.url, p, Some("Bearer wrong-token-0123456789")).0, 401);
    }
    assert!(wait_until(Duration::from_secs(30), || get(
        &d.url,
        "/snippets/summary.json",
        Some("Bearer read-token-0123456789")
    )
    .0 == 200));
    assert_eq!(
        get(&d.url, "/metrics", Some("bearer read-token-0123456789")).0,
        200
    );
    assert_eq!(get(&d.url, "/healthz", None).0, 200, "liveness stays open");
    let (c, _, _) = raw(
        &d.url,
        "GET /healthz HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(c, 421, "a Host outside --allowed-host is refused");
    let (c, _, _) = raw(
        &d.url,
        "GET /healthz HTTP/1.1\r\nHost: vakt.ops.example:9464\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(c, 200);
}

#[test]
fn every_endpoint_answers_every_bundled_role_as_the_readme_table_says() {
    let readme = std::fs::read_to_string(vakt_tests::workspace().join("README.md")).unwrap();
    let start_at = readme
        .find("| Endpoint | Permission |")
        .expect("README has the role table");
    let mut lines = readme[start_at..].lines();
    let header: Vec<String> = lines
        .next()
        .unwrap()
        .split('|')
        .map(|c| c.trim().to_owned())
        .filter(|c| !c.is_empty())
        .collect();
    lines.next();
    let mut rows = Vec::new();
    for l in lines.take_while(|l| l.starts_with('|')) {
        let cells: Vec<String> = l
            .split('|')
            .map(|c| c.trim().trim_matches('`').to_owned())
            .filter(|c| !c.is_empty())
            .collect();
        rows.push(cells);
    }
    assert!(rows.len() >= 16, "every endpoint has a row");

    let n = NatsServer::start();
    let (repo, secrets, tokens) = repo_with_role_tokens();
    let roles: Vec<&str> = header[2..].iter().map(String::as_str).collect();
    let mine: Vec<&str> = tokens.iter().map(|(r, _)| r.as_str()).collect();
    assert_eq!(
        roles, mine,
        "the README table has one column per bundled role"
    );
    let d = start(repo.path(), &n, &secrets.path().join("tokens"), &[]);
    let mut wrong = Vec::new();
    for row in &rows {
        let (method, path) = row[0].split_once(' ').unwrap();
        let path = path
            .replace("{id}", "job-000000000000")
            .replace("{plan}", "plan-000000000000")
            .replace("{node}", "no-such-node");
        for (i, (role, tok)) in tokens.iter().enumerate() {
            let allowed = row[2 + i] == "✓";
            let code = if method == "GET" {
                get(&d.url, &path, Some(&format!("Bearer {tok}"))).0
            } else {
                post(&d.url, &path, tok, r#"{"reason":"matrix"}"#).0
            };
            if allowed == (code == 403 || code == 401) {
                wrong.push(format!(
                    "{method} {path} as {role}: {code}, table says {}",
                    row[2 + i]
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn slow_loris_connections_are_closed_while_healthz_stays_fast() {
    let n = NatsServer::start();
    let (repo, secrets, _) = repo_with_role_tokens();
    let d = start(
        repo.path(),
        &n,
        &secrets.path().join("tokens"),
        &["--header-timeout", "1s", "--max-connections", "64"],
    );
    let addr = d.url.trim_start_matches("http://").to_owned();
    let t0 = Instant::now();
    let mut slow: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut s = TcpStream::connect(&addr).unwrap();
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s
        })
        .collect();
    // /healthz answers quickly meanwhile.
    let h0 = Instant::now();
    assert_eq!(get(&d.url, "/healthz", None).0, 200);
    assert!(h0.elapsed() < Duration::from_secs(1), "{:?}", h0.elapsed());
    // Every half-sent request is closed by the server within the header timeout (plus slack).
    for s in &mut slow {
        let mut buf = [0u8; 512];
        // Ok: closed (0) or answered; a reset is closed too; a read timeout means still open.
        if let Err(e) = s.read(&mut buf) {
            assert!(
                !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
                "a half-sent request is still open after 10 s"
            );
        }
    }
    assert!(t0.elapsed() < Duration::from_secs(6), "{:?}", t0.elapsed());
    // An idle keep-alive connection is closed too.
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut all = Vec::new();
    let t1 = Instant::now();
    let r = s.read_to_end(&mut all);
    assert!(r.is_ok(), "closed, not timed out: {r:?}");
    assert!(String::from_utf8_lossy(&all).starts_with("HTTP/1.1 200"));
    assert!(t1.elapsed() < Duration::from_secs(6), "{:?}", t1.elapsed());
}

/// `vakt site serve` of `out` on a free port; the child and its base URL
/// (`http://127.0.0.1:PORT`, from the line it prints).
fn site_serve(extra: &[&str], out: &Path) -> (std::process::Child, String) {
    use std::process::{Command, Stdio};
    let mut child = Command::new(vakt_tests::vakt_bin())
        .args(["site", "serve", "--addr", "127.0.0.1:0"])
        .args(extra)
        .arg("--out")
        .arg(out)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap()
        .to_owned();
    // "http://127.0.0.1:PORT/ops/" → "http://127.0.0.1:PORT"
    let host_end = url["http://".len()..]
        .find('/')
        .map_or(url.len(), |i| i + 7);
    (child, url[..host_end].to_owned())
}

#[test]
fn site_serve_refuses_symlinks_out_of_its_root_and_redirects_safely() {
    let site = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret.txt"), "do not serve").unwrap();
    std::fs::write(site.path().join("index.html"), "<!doctype html><p>site</p>").unwrap();
    std::fs::create_dir(site.path().join("ops")).unwrap();
    std::fs::write(site.path().join("ops/index.html"), "<p>ops</p>").unwrap();
    std::os::unix::fs::symlink(
        outside.path().join("secret.txt"),
        site.path().join("leak.txt"),
    )
    .unwrap();
    std::os::unix::fs::symlink(outside.path(), site.path().join("out")).unwrap();
    let (mut child, url) = site_serve(&[], site.path());
    let (c, _, body) = get(&url, "/ops/", None);
    assert_eq!(c, 200, "{body}");
    for p in ["/leak.txt", "/out/secret.txt"] {
        let (c, head, body) = get(&url, p, None);
        assert_eq!(c, 404, "{p}: {body}");
        assert!(!body.contains("do not serve"));
        assert!(head.contains("x-content-type-options: nosniff"), "{head}");
    }
    let (c, head, _) = get(&url, "//ops", None);
    assert_eq!(c, 308);
    assert!(head.contains("location: /ops/\r\n"), "{head}");
    assert!(head.contains("cache-control: no-store"), "{head}");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn the_site_asks_for_the_read_token_with_a_banner_and_then_shows_live_data() {
    use std::process::{Command, Stdio};
    use vakt_tests::browser::{Driver, build_site};
    let n = NatsServer::start();
    let (repo, secrets, _) = repo_with_role_tokens();
    let read = secrets.path().join("read-token");
    std::fs::write(&read, "read-token-0123456789\n").unwrap();
    let site_port = nats::port();
    let origin = format!("http://127.0.0.1:{site_port}");
    let rt = read.to_string_lossy().into_owned();
    let d = start(
        repo.path(),
        &n,
        &secrets.path().join("tokens"),
        &["--snippets-token", &rt, "--cors-origin", &origin],
    );
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("site");
    let snippets_url = format!("{}/snippets/", d.url.trim_end_matches('/'));
    build_site(
        &vakt_tests::workspace(),
        &out,
        &["--snippets-url", &snippets_url, "--refresh", "1"],
    );
    let mut site = Command::new(vakt_tests::vakt_bin())
        .args([
            "site",
            "serve",
            "--addr",
            &format!("127.0.0.1:{site_port}"),
            "--out",
        ])
        .arg(&out)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(site.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let driver = Driver::start();
    let s = driver.session(true);
    s.goto(&format!("{origin}/ops/"));
    let wait = Duration::from_secs(30);
    let text = s.wait_for(
        "const b = document.querySelector('#live-status [data-banner=\"token\"]'); \
         return b && b.querySelector('form') ? b.textContent : null",
        wait,
        "the read-token banner with its form",
    );
    assert!(
        text.as_str().unwrap().contains("--snippets-token"),
        "{text}"
    );
    // The page is intact: its sections still show the build-time snapshot.
    assert_eq!(
        s.js("return document.querySelectorAll('main > section').length > 0"),
        serde_json::json!(true)
    );
    s.js("const f = document.querySelector('#live-status form'); \
          f.querySelector('input').value = 'read-token-0123456789'; \
          f.requestSubmit(); return true");
    s.wait_for(
        "return document.querySelector('#live-status [data-banner=\"live\"]') ? true : null",
        wait,
        "live data once the token is entered",
    );
    assert_eq!(
        s.js("return window.localStorage.getItem('vakt.snippets-token')"),
        serde_json::json!("read-token-0123456789")
    );
    let _ = site.kill();
    let _ = site.wait();
}

/// Now as RFC 3339 UTC with seconds, comparable as a string with the snippets' `generated_at`.
fn time_now() -> String {
    vakt_tests::browser::rfc3339_ago(0)
}

#[test]
fn the_connection_cap_answers_503_and_frees_slots_when_connections_close() {
    let site = tempfile::tempdir().unwrap();
    std::fs::write(site.path().join("index.html"), "<p>site</p>").unwrap();
    let (mut child, url) = site_serve(
        &["--max-connections", "2", "--header-timeout", "30s"],
        site.path(),
    );
    let addr = url.trim_start_matches("http://").to_owned();
    let held: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut s = TcpStream::connect(&addr).unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
            s
        })
        .collect();
    // The two held connections are accepted before the third (one accept loop, in order).
    assert!(
        wait_until(Duration::from_secs(10), || get(&url, "/", None).0 == 503),
        "a third connection is refused while two are held"
    );
    drop(held);
    assert!(
        wait_until(Duration::from_secs(10), || get(&url, "/", None).0 == 200),
        "slots are freed when connections close"
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// Approving needs `ops.approvals.approve.<action>` for every gated action of the plan: the
/// on-call operator cannot approve an access change, security-admin can (access that
/// matches the policy). The denial is audited and names the missing permission.
#[test]
fn each_gated_action_needs_its_own_approve_permission() {
    let n = NatsServer::start();
    let (repo, secrets, tokens) = repo_with_role_tokens();
    let manifest = repo.path().join("vakt.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    assert!(text.contains("require_approval = []"), "dev gates nothing");
    std::fs::write(
        &manifest,
        text.replacen(
            "require_approval = []",
            "require_approval = [\"access-change\"]",
            1,
        ),
    )
    .unwrap();
    nats::commit_all(repo.path(), "dev gates access changes");
    let d = start(repo.path(), &n, &secrets.path().join("tokens"), &[]);
    let token = |role: &str| tokens.iter().find(|(r, _)| r == role).unwrap().1.clone();

    // The first apply adds the access bucket's keys: an access change, pending.
    let mut plan = String::new();
    assert!(
        wait_until(Duration::from_secs(60), || {
            let (c, _, b) = get(&d.url, "/api/v1/approvals", Some(&format!("Bearer {OP}")));
            let v: serde_json::Value = serde_json::from_str(&b).unwrap_or_default();
            match v.as_array().and_then(|a| a.first()) {
                Some(a) if c == 200 && a["decision"] == "pending" => {
                    assert_eq!(a["actions"], serde_json::json!(["access-change"]), "{a}");
                    plan = a["plan_id"].as_str().unwrap().to_owned();
                    true
                }
                _ => false,
            }
        }),
        "the first apply waits for an approval of its access change"
    );
    let path = format!("/api/v1/approvals/{plan}/approve");
    let body = r#"{"reason":"reviewed the bindings"}"#;

    let (c, b) = post(&d.url, &path, &token("operator"), body);
    assert_eq!(c, 403, "{b}");
    assert!(b.contains("ops.approvals.approve.access-change"), "{b}");
    let denied = nats::audit_events(&n.url(), "dev").into_iter().any(|e| {
        e["action"] == "api.denied"
            && e.to_string()
                .contains("ops.approvals.approve.access-change")
    });
    assert!(denied, "the denial is audited with the missing permission");
    let (_, _, b) = get(&d.url, "/api/v1/approvals", Some(&format!("Bearer {OP}")));
    assert!(
        b.contains("\"pending\""),
        "still pending after the denial: {b}"
    );

    let (c, b) = post(&d.url, &path, &token("security-admin"), body);
    assert_eq!(c, 200, "{b}");
    assert!(b.contains("\"approved\""), "{b}");
}
