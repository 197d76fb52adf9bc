//! End-to-end harness: the `vakt` binary, copies of the bundled ops repo, real Git repositories,
//! real NATS servers ([`nats`]), VictoriaMetrics ([`victoria`]), vmalert ([`vmalert`]) and
//! Alertmanager ([`alertmanager`]).

pub mod alertmanager;
pub mod faults;
pub mod nats;
pub mod victoria;
pub mod vmalert;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The workspace root (the bundled ops repo).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf()
}

/// The `vakt` binary built beside the running test binary (`target/<profile>/vakt`).
pub fn vakt_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let bin = profile_dir.join("vakt");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --workspace` first (the suite needs the fault-injection feature its crate enables)",
        bin.display()
    );
    bin
}

/// Runs `vakt` with arguments; colour off.
pub fn vakt(args: &[&str]) -> Output {
    Command::new(vakt_bin())
        .args(args)
        .env("NO_COLOR", "1")
        .env_remove("VAKT_REPO")
        .output()
        .expect("run vakt")
}

/// Exit code, stdout and stderr of a finished command.
pub fn outcome(o: &Output) -> (i32, String, String) {
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// The ops repo directories of the layout (plus vakt.toml).
pub const LAYOUT: [&str; 10] = opsrepo::source::ROOTS;

/// Copies the bundled ops repo (layout only) into a fresh temporary directory.
pub fn copy_bundled() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for top in LAYOUT {
        let src = workspace().join(top);
        if src.exists() {
            copy_tree(&src, &dir.path().join(top));
        }
    }
    dir
}

fn copy_tree(src: &Path, dst: &Path) {
    if src.is_dir() {
        std::fs::create_dir_all(dst).expect("mkdir");
        for e in std::fs::read_dir(src).expect("read_dir") {
            let e = e.expect("entry");
            copy_tree(&e.path(), &dst.join(e.file_name()));
        }
    } else {
        std::fs::copy(src, dst).expect("copy");
    }
}

/// The fixed "today" for review-age rules, so tests do not rot.
pub const TODAY: &str = "2026-11-22";

/// Runs `git` in `dir`, panicking on failure.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let o = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "vakt test")
        .env("GIT_AUTHOR_EMAIL", "test@vakt.invalid")
        .env("GIT_COMMITTER_NAME", "vakt test")
        .env("GIT_COMMITTER_EMAIL", "test@vakt.invalid")
        .output()
        .expect("run git");
    assert!(
        o.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

/// Findings of `vakt validate --format json` on `repo`.
pub fn findings(repo: &Path, extra: &[&str]) -> (i32, Vec<serde_json::Value>) {
    let repo_s = repo.to_string_lossy();
    let mut args = vec![
        "validate", "--repo", &repo_s, "--now", TODAY, "--format", "json",
    ];
    args.extend_from_slice(extra);
    let (code, out, err) = outcome(&vakt(&args));
    let v: serde_json::Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("json output ({e}): {out}\nstderr: {err}"));
    (code, v["findings"].as_array().cloned().unwrap_or_default())
}

pub mod browser;

/// Runs `vakt` with arguments and extra environment variables; colour off.
pub fn vakt_env(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut c = Command::new(vakt_bin());
    c.args(args)
        .env("NO_COLOR", "1")
        .env_remove("VAKT_REPO")
        .env_remove("NATS_URL")
        .env("VAKT_ACTOR", "test:e2e");
    for (k, v) in envs {
        c.env(k, v);
    }
    c.output().expect("run vakt")
}

fn openssl(dir: &Path, args: &[&str]) {
    let o = std::process::Command::new("openssl")
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

/// A test PKI made with openssl in `dir`: `ca.pem`/`ca.key`, a server certificate for
/// 127.0.0.1 and localhost (`server.pem`/`server.key`) and a client certificate
/// (`client.pem`/`client.key`), both signed by the CA. For the TLS tests (NATS, nodes).
pub fn test_pki(dir: &Path) {
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

/// Every file under `dir`: its path relative to `dir` (with `/`) and its bytes.
pub fn files_under(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p
                    .strip_prefix(dir)
                    .unwrap()
                    .to_string_lossy()
                    .replace('\\', "/");
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// The bundled runbook catalog's entry for runbook `id`.
pub fn catalog_entry(id: &str) -> serde_json::Value {
    let cat: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(workspace().join("runbooks/runbooks.catalog.json")).unwrap(),
    )
    .unwrap();
    cat["runbooks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == id)
        .unwrap()
        .clone()
}
