//! NATS transport security end to end: a real `nats-server` that requires TLS with client
//! certificates (mutual TLS), certificates made by `openssl` for the test.

use std::path::Path;
use std::process::Command;

use vakt_tests::nats::{NatsServer, ops_git};
use vakt_tests::{outcome, vakt};

/// `openssl …` in `dir`, failing the test with its output.
fn openssl(dir: &Path, args: &[&str]) {
    let o = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (apt-get install openssl)");
    assert!(
        o.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA.
fn make_pki(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=vakt test CA",
    ]);
    openssl(dir, &ca);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for who in ["server", "client"] {
        let key = format!("{who}.key");
        let csr = format!("{who}.csr");
        let pem = format!("{who}.pem");
        let ext = format!("{who}.ext");
        let subj = format!("/CN=vakt test {who}");
        let mut req = vec!["req"];
        req.extend(ec);
        req.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
        openssl(dir, &req);
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                &ext,
            ],
        );
    }
}

#[test]
fn nats_with_mutual_tls_needs_the_ca_and_a_client_certificate() {
    let pki = tempfile::tempdir().expect("tempdir");
    make_pki(pki.path());
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
