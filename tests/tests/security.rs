//! NATS transport security end to end: a real `nats-server` that requires TLS with client
//! certificates (mutual TLS), certificates made by `openssl` for the test.

use vakt_tests::nats::{NatsServer, ops_git};
use vakt_tests::{outcome, vakt};

/// `openssl …` in `dir`, failing the test with its output.
#[test]
fn nats_with_mutual_tls_needs_the_ca_and_a_client_certificate() {
    let pki = tempfile::tempdir().expect("tempdir");
    vakt_tests::test_pki(pki.path());
    let f = |name: &str| pki.path().join(name).to_string_lossy().into_owned();
    let n = NatsServer::start_with(vec![
        "--tlsverify".into(),
        "--tlscert".into(),
        f("server.pem"),
        "--tlskey".into(),
        f("server.key"),
        "--tlscacert".into(),
        f("ca.pem"),
    ]);
    let repo = ops_git();
    let repo_s = repo.path().to_string_lossy().into_owned();
    let url = format!("tls://127.0.0.1:{}", n.port);
    let (ca, cert, key) = (f("ca.pem"), f("client.pem"), f("client.key"));
    let apply = |extra: &[&str]| {
        let mut a = vec![
            "apply", "--env", "dev", "--yes", "--repo", &repo_s, "--nats", &url, "--tls",
        ];
        a.extend_from_slice(extra);
        outcome(&vakt(&a))
    };

    // Without a client certificate the server refuses the handshake: exit 3, nothing written.
    let (code, out, err) = apply(&["--tls-ca", &ca]);
    assert_eq!(code, 3, "{out}{err}");
    assert!(err.contains(&url), "the error names the servers: {err}");
    assert!(
        err.contains("--tls-cert"),
        "the error says what to pass: {err}"
    );
    // Without the CA, vakt does not trust the server.
    let (code, out, err) = apply(&["--tls-cert", &cert, "--tls-key", &key]);
    assert_eq!(code, 3, "{out}{err}");
    assert!(
        err.contains("--tls-ca"),
        "the error says what to pass: {err}"
    );

    // With both, the apply goes through TLS.
    let (code, out, err) = apply(&["--tls-ca", &ca, "--tls-cert", &cert, "--tls-key", &key]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("Applied"), "{out}");

    // A plain connection fails; a TLS one sees what vakt wrote.
    let plain = format!("nats://127.0.0.1:{}", n.port);
    let (code, _, err) = outcome(&vakt(&[
        "drift", "--env", "dev", "--repo", &repo_s, "--nats", &plain,
    ]));
    assert_ne!(code, 0, "a plain connection must fail: {err}");
    let (code, out, err) = outcome(&vakt(&[
        "drift",
        "--env",
        "dev",
        "--repo",
        &repo_s,
        "--nats",
        &url,
        "--tls-ca",
        &ca,
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
    ]));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("In sync"), "{out}");
}
