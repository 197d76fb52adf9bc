//! The real Prometheus and VictoriaMetrics tools accept every rule file vakt ships.

use std::process::Command;

use vakt_tests::workspace;

fn rule_files() -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(workspace().join("alerts"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    v.sort();
    assert!(v.len() >= 5);
    v
}

#[test]
fn promtool_accepts_every_rule_file() {
    for f in rule_files() {
        let o = Command::new("promtool")
            .args(["check", "rules"])
            .arg(&f)
            .output()
            .expect("promtool is installed by scripts/test.sh (Debian package prometheus)");
        assert!(
            o.status.success(),
            "{}: {}{}",
            f.display(),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

#[test]
fn vmalert_dry_run_accepts_every_rule_file() {
    for f in rule_files() {
        let o = Command::new("vmalert")
            .arg("-dryRun")
            .arg(format!("-rule={}", f.display()))
            .output()
            .expect("vmalert is installed by scripts/test.sh (Debian package victoria-metrics)");
        assert!(
            o.status.success(),
            "{}: {}",
            f.display(),
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

#[test]
fn promtool_rejects_what_vakt_rejects() {
    // The check is not a pushover: a broken expression fails both tools.
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.yaml");
    std::fs::write(
        &f,
        "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: sum(rate(up[5m])\n",
    )
    .unwrap();
    let o = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&f)
        .output()
        .unwrap();
    assert!(!o.status.success());
}
