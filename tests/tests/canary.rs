//! End-to-end: no secret escapes. Canary values sit behind a `secret://` reference of a test
//! repo (in a stand-in secrets backend the reference points into, with its address and token in
//! the environment) and in environment variables the daemon and the one-off commands see (one
//! of them the operator API token the daemon really authenticates with). Then the daemon runs
//! at debug level (applies, snippets, scheduled backups, node polls, API calls with the
//! canary token and with a wrong one), the one-off commands run (plan, apply, drift, backup,
//! render, site build), and every output is searched for every canary: each KV value and the raw
//! JetStream store files, every audit event, every log line and command output, every backup,
//! snippet, rendered and site file, and every page the daemon serves.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use vakt_tests::nats::{self, Daemon, NatsServer, audit_events, commit_all, ops_git, wait_until};

/// A canary: a fixed prefix and 24 random hex digits, so a hit is never a coincidence.
fn canary(what: &str) -> String {
    let mut b = [0u8; 12];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .expect("urandom");
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("canary{what}{hex}")
}

/// Every KV bucket and stream name on the server.
fn stream_names(url: &str) -> Vec<String> {
    use futures_util::StreamExt;
    nats::rt().block_on(async {
        let c = async_nats::connect(url).await.expect("connect");
        let js = async_nats::jetstream::new(c);
        let mut names = js.stream_names();
        let mut out = Vec::new();
        while let Some(n) = names.next().await {
            out.push(n.expect("stream name"));
        }
        out
    })
}

/// Where `needle` occurs in `hay` (by name), for the failure message.
fn hits<'a>(hay: &'a BTreeMap<String, Vec<u8>>, needle: &str) -> Vec<&'a str> {
    hay.iter()
        .filter(|(_, v)| v.windows(needle.len()).any(|w| w == needle.as_bytes()))
        .map(|(k, _)| k.as_str())
        .collect()
}

fn add_tree(hay: &mut BTreeMap<String, Vec<u8>>, label: &str, dir: &Path) {
    for (p, b) in vakt_tests::files_under(dir) {
        hay.insert(format!("{label}/{p}"), b);
    }
}

#[test]
fn canary_secrets_never_appear_in_kv_audit_logs_backups_snippets_rendered_files_or_pages() {
    let behind_ref = canary("ref");
    let vault_token = canary("vaulttoken");
    let in_env = canary("env");
    let api_token = canary("apitoken");
    let canaries = [&behind_ref, &vault_token, &in_env, &api_token];

    // The stand-in secrets backend: the reference's path and field hold the canary.
    let backend = tempfile::tempdir().expect("tempdir");
    let secret_path = "platform/canary/db";
    let secret_ref = format!("secret://vault/{secret_path}#password");
    std::fs::create_dir_all(backend.path().join("platform/canary")).unwrap();
    std::fs::write(
        backend.path().join(format!("{secret_path}.json")),
        format!("{{\"password\": \"{behind_ref}\"}}\n"),
    )
    .unwrap();
    let vault_addr = format!("file://{}", backend.path().display());

    let repo = ops_git();
    let auth = repo.path().join("config/global/auth.toml");
    let text = std::fs::read_to_string(&auth).unwrap();
    let old_ref = "secret://vault/platform/gateway/session-signing#current";
    assert!(
        text.contains(old_ref),
        "the bundled auth.toml has its reference"
    );
    std::fs::write(&auth, text.replace(old_ref, &secret_ref)).unwrap();
    commit_all(
        repo.path(),
        "the session signing key behind a canary reference",
    );

    let n = NatsServer::start();
    let out = tempfile::tempdir().expect("tempdir");
    let (snippets, backups, render, site) = (
        out.path().join("snippets"),
        out.path().join("backups"),
        out.path().join("render"),
        out.path().join("site"),
    );
    let tokens = format!("{api_token} group:sre-oncall");
    let envs: Vec<(&str, &str)> = vec![
        ("VAKT_LOG", "debug"),
        ("RUST_LOG", "debug"),
        ("VAULT_ADDR", &vault_addr),
        ("VAULT_TOKEN", &vault_token),
        ("VAKT_CANARY_SECRET", &in_env),
        ("DATABASE_PASSWORD", &in_env),
        ("VAKT_API_TOKENS_DATA", &tokens),
    ];
    let s = |p: &Path| p.to_string_lossy().into_owned();
    let (snippets_s, backups_s) = (s(&snippets), s(&backups));
    let d = Daemon::start_at(
        repo.path(),
        &n.url(),
        n.dir.path(),
        "dev",
        "canary",
        &[
            "--interval",
            "500ms",
            "--lease",
            "2s",
            "--snippets",
            &snippets_s,
            "--backup-dir",
            &backups_s,
            "--backup-every",
            "1s",
        ],
        &envs,
    );
    let head = vakt_tests::git(repo.path(), &["rev-parse", "HEAD"]);
    assert!(
        wait_until(Duration::from_secs(30), || d.is_leader()
            && d.status()["applied_commit"] == head.as_str()),
        "no first apply: {:#}",
        d.status()
    );
    let backups_audited = || {
        audit_events(&n.url(), "dev")
            .iter()
            .filter(|e| e["action"] == "backup")
            .count()
    };
    assert!(
        wait_until(Duration::from_secs(30), || backups_audited() >= 1),
        "no scheduled backup"
    );

    // Pages the daemon serves, with the canary token, a wrong token and none.
    let mut hay: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let (code, body) = nats::http_req(&d.url, "GET", "/api/v1/status", Some(&api_token), None)
        .expect("api status");
    assert_eq!(code, 200, "the canary token authenticates: {body}");
    hay.insert("page /api/v1/status".into(), body.into_bytes());
    for (m, p, t, b) in [
        ("GET", "/api/v1/jobs", Some(api_token.as_str()), None),
        ("GET", "/api/v1/approvals", Some(api_token.as_str()), None),
        (
            "POST",
            "/api/v1/approvals/plan-000000000000/approve",
            Some(api_token.as_str()),
            Some(r#"{"reason":"canary check"}"#),
        ),
        ("GET", "/api/v1/status", Some(&in_env), None),
        ("GET", "/api/v1/status", None, None),
    ] {
        let (code, body) = nats::http_req(&d.url, m, p, t, b).expect("api");
        hay.insert(format!("page {m} {p} ({code})"), body.into_bytes());
    }
    for p in ["/healthz", "/status", "/metrics"] {
        let (_, body) = d.get(p).expect(p);
        hay.insert(format!("page {p}"), body.into_bytes());
    }
    let names: Vec<String> = vakt_tests::files_under(&snippets)
        .into_keys()
        .filter(|k| k.ends_with(".json"))
        .collect();
    assert!(names.len() >= 5, "snippets written: {names:?}");
    for name in &names {
        let (_, body) = d.get(&format!("/snippets/{name}")).expect("snippet");
        hay.insert(format!("page /snippets/{name}"), body.into_bytes());
    }

    // One-off commands with the same environment.
    let rp = s(repo.path());
    let url = n.url();
    let (render_s, site_s, one_off) = (s(&render), s(&site), s(&out.path().join("one-off")));
    let commands: Vec<Vec<&str>> = vec![
        vec!["plan", "--env", "dev", "--repo", &rp, "--nats", &url],
        vec!["drift", "--env", "dev", "--repo", &rp, "--nats", &url],
        vec!["validate", "--repo", &rp, "--now", vakt_tests::TODAY],
        vec![
            "backup", "--env", "dev", "--out", &one_off, "--repo", &rp, "--nats", &url,
        ],
        vec!["render", "--env", "dev", "--out", &render_s, "--repo", &rp],
        vec![
            "site",
            "build",
            "--env",
            "dev",
            "--out",
            &site_s,
            "--repo",
            &rp,
            "--snippets-dir",
            &snippets_s,
            "--now",
            vakt_tests::TODAY,
        ],
    ];
    for args in &commands {
        let o = vakt_tests::vakt_env(args, &envs);
        let (code, stdout, stderr) = vakt_tests::outcome(&o);
        assert!(
            code == 0 || (args[0] == "validate" && code == 1),
            "vakt {args:?}: {code}\n{stdout}\n{stderr}"
        );
        hay.insert(format!("stdout of vakt {}", args[0]), o.stdout);
        hay.insert(format!("stderr of vakt {}", args[0]), o.stderr);
    }
    drop(d);

    // Every KV value and stream message as the server holds them, and the raw store files.
    let url = n.url();
    let names = stream_names(&url);
    assert!(names.iter().any(|s| s == "KV_vakt_dev_config"), "{names:?}");
    for st in &names {
        if let Some(bucket) = st.strip_prefix("KV_") {
            for (k, (_, v)) in nats::read_bucket(&url, bucket) {
                hay.insert(format!("kv {bucket} {k}"), v);
            }
        }
    }
    for (i, e) in audit_events(&url, "dev").iter().enumerate() {
        hay.insert(format!("audit event {i}"), e.to_string().into_bytes());
    }
    add_tree(&mut hay, "nats store", &n.data_dir());
    add_tree(&mut hay, "snippets", &snippets);
    add_tree(&mut hay, "backups", &backups);
    add_tree(&mut hay, "one-off backup", &out.path().join("one-off"));
    add_tree(&mut hay, "render", &render);
    add_tree(&mut hay, "site", &site);
    let log = std::fs::read(n.dir.path().join("daemon-canary.log")).unwrap();
    hay.insert("daemon log".into(), log.clone());

    // The search looks where the secret would be: the reference itself is in KV, in the
    // backups and in the raw store files; the log is at debug level; every kind of output is there.
    assert!(
        !hits(&hay, &secret_ref).is_empty()
            && hits(&hay, &secret_ref).iter().any(|h| h.starts_with("kv "))
            && hits(&hay, &secret_ref)
                .iter()
                .any(|h| h.starts_with("backups/"))
            && hits(&hay, &secret_ref)
                .iter()
                .any(|h| h.starts_with("nats store/")),
        "the reference itself is written where expected: {:?}",
        hits(&hay, &secret_ref)
    );
    let log_s = String::from_utf8_lossy(&log);
    assert!(
        log_s.contains("DEBUG"),
        "the daemon log is not at debug level"
    );
    for kind in [
        "kv ",
        "audit event",
        "nats store/",
        "snippets/",
        "backups/",
        "render/",
        "site/",
        "page ",
        "stderr of",
    ] {
        assert!(
            hay.keys().any(|k| k.starts_with(kind)),
            "nothing searched of kind {kind:?}"
        );
    }
    eprintln!(
        "searched {} outputs, {} bytes",
        hay.len(),
        hay.values().map(Vec::len).sum::<usize>()
    );
    for c in canaries {
        let found = hits(&hay, c);
        assert!(found.is_empty(), "canary {c} escaped into: {found:?}");
    }
}
