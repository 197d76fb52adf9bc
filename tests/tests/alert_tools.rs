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

/// A rule file with one rule in the style of the bundled files (the labels and the runbook
/// vakt requires of an alert): `kind` is `alert` or `record`.
fn rule_file(kind: &str, name: &str, expr: &str) -> String {
    let mut s = format!(
        "groups:\n  - name: bad\n    rules:\n      - {kind}: {name}\n        expr: {expr}\n"
    );
    if kind == "alert" {
        s.push_str("        for: 2m\n");
    }
    s.push_str("        labels:\n          severity: critical\n          escalation: urgent\n          signal: service_down\n");
    if kind == "alert" {
        s.push_str("        annotations:\n          summary: bad\n          runbook_id: ops.service.down\n");
    }
    s
}

#[test]
fn promtool_rejects_what_vakt_rejects() {
    // The checks are not pushovers: each broken rule file is refused by `vakt validate` (with
    // the rule id that names the problem), by `promtool check rules` and by `vmalert -dryRun`.
    let cases = [
        (
            "unbalanced parenthesis",
            rule_file("alert", "BadExpr", "sum(rate(up[5m])"),
            "alert.promql",
        ),
        (
            "comparison without a right-hand side",
            rule_file("alert", "BadCompare", "sum(up) >"),
            "alert.promql",
        ),
        (
            "recording rule with a bad range duration",
            rule_file("record", "job:up:rate5x", "sum(rate(up[5x]))"),
            "alert.promql",
        ),
        (
            "`for` that is not a duration",
            rule_file("alert", "BadFor", "up == 0").replace("for: 2m", "for: 2 minutes"),
            "schema.invalid",
        ),
    ];
    let mut failures = Vec::new();
    for (what, content, rule) in &cases {
        let repo = vakt_tests::copy_bundled();
        let f = repo.path().join("alerts/bad.yaml");
        std::fs::write(&f, content).unwrap();
        let (code, findings) = vakt_tests::findings(repo.path(), &[]);
        let here: Vec<_> = findings
            .iter()
            .filter(|x| x["path"] == "alerts/bad.yaml")
            .map(|x| x["rule"].as_str().unwrap_or("").to_owned())
            .collect();
        if code != 1 || !here.iter().any(|r| r == rule) {
            failures.push(format!(
                "{what}: vakt exit {code}, expected {rule} on alerts/bad.yaml, got {here:?}"
            ));
        }
        let promtool = Command::new("promtool")
            .args(["check", "rules"])
            .arg(&f)
            .output()
            .expect("promtool");
        if promtool.status.success() {
            failures.push(format!("{what}: promtool accepted it"));
        }
        let vmalert = Command::new("vmalert")
            .arg("-dryRun")
            .arg(format!("-rule={}", f.display()))
            .output()
            .expect("vmalert");
        if vmalert.status.success() {
            failures.push(format!("{what}: vmalert -dryRun accepted it"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // And the same template with a good expression passes all three: the cases fail for
    // their defect, not for the template.
    let repo = vakt_tests::copy_bundled();
    let f = repo.path().join("alerts/bad.yaml");
    std::fs::write(&f, rule_file("alert", "GoodExpr", "sum(rate(up[5m])) == 0")).unwrap();
    let (code, findings) = vakt_tests::findings(repo.path(), &[]);
    let here: Vec<_> = findings
        .iter()
        .filter(|x| x["path"] == "alerts/bad.yaml" && x["severity"] == "error")
        .collect();
    assert!(here.is_empty() && code == 0, "{findings:#?}");
    let o = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&f)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    let o = Command::new("vmalert")
        .arg("-dryRun")
        .arg(format!("-rule={}", f.display()))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// The bundled repo's typed model (base view): rule files, DR stores.
fn bundled_model() -> opsrepo::load::Model {
    let files = opsrepo::read_work_tree(&workspace()).expect("read the bundled repo");
    let parsed = opsrepo::load::parse_all(&files);
    opsrepo::load::build_view(&parsed, None).0
}

/// Writes every rule file of the repo into `dir` without annotations: the unit tests pin
/// expressions, `for` and labels, while `promtool check rules` above checks the annotation
/// templates. JSON is YAML, so promtool reads the files as they are written.
fn stripped_rule_files(m: &opsrepo::load::Model, dir: &std::path::Path) {
    for f in &m.alert_rules {
        let mut spec = f.spec.clone();
        for g in &mut spec.groups {
            for r in &mut g.rules {
                r.annotations.clear();
            }
        }
        // Unset optional fields are left out: promtool reads `"record": null` as set.
        let mut v = serde_json::to_value(&spec).unwrap();
        drop_nulls(&mut v);
        let name = f.path().rsplit('/').next().unwrap();
        std::fs::write(dir.join(name), v.to_string()).unwrap();
    }
}

fn drop_nulls(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            m.retain(|_, x| !x.is_null());
            m.values_mut().for_each(drop_nulls);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(drop_nulls),
        _ => {}
    }
}

fn promtool_tests() -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(workspace().join("tests/promtool"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".test.yaml"))
        .collect();
    v.sort();
    v
}

#[test]
fn promtool_unit_tests_pass_and_cover_firing_silence_and_for_of_every_group() {
    let m = bundled_model();
    let dir = tempfile::tempdir().unwrap();
    stripped_rule_files(&m, dir.path());
    // What the tests check, read from the test files themselves.
    let mut fires: std::collections::BTreeSet<String> = Default::default();
    let mut silent: std::collections::BTreeSet<String> = Default::default();
    let mut tested_files: std::collections::BTreeSet<String> = Default::default();
    for t in promtool_tests() {
        let text = std::fs::read_to_string(&t).unwrap();
        let v = opsrepo::parse::parse_value("t.yaml", opsrepo::parse::Format::Yaml, &text)
            .unwrap_or_else(|f| panic!("{}: {}", t.display(), f.message));
        for f in v["rule_files"].as_array().unwrap() {
            tested_files.insert(f.as_str().unwrap().to_owned());
        }
        for case in v["tests"].as_array().unwrap() {
            for a in case["alert_rule_test"].as_array().into_iter().flatten() {
                let name = a["alertname"].as_str().unwrap().to_owned();
                if a["exp_alerts"].as_array().is_some_and(|x| !x.is_empty()) {
                    fires.insert(name);
                } else {
                    silent.insert(name);
                }
            }
        }
        let dest = dir.path().join(t.file_name().unwrap());
        std::fs::write(&dest, &text).unwrap();
        let o = Command::new("promtool")
            .args(["test", "rules"])
            .arg(&dest)
            .current_dir(dir.path())
            .output()
            .expect("promtool is installed by scripts/test.sh (Debian package prometheus)");
        assert!(
            o.status.success(),
            "{}: {}{}",
            t.display(),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    for f in &m.alert_rules {
        let file = f.path().rsplit('/').next().unwrap();
        let alerts: Vec<&String> = f
            .spec
            .groups
            .iter()
            .flat_map(|g| g.rules.iter())
            .filter_map(|r| r.alert.as_ref())
            .collect();
        if alerts.is_empty() {
            continue;
        }
        assert!(tested_files.contains(file), "no promtool test loads {file}");
        for a in &alerts {
            assert!(
                fires.contains(*a),
                "no promtool test sees {a} ({file}) fire"
            );
        }
        // Silence, and the `for` delay: an alert checked silent while its condition already
        // holds, then firing later in the same test.
        let delayed = f
            .spec
            .groups
            .iter()
            .flat_map(|g| g.rules.iter())
            .filter(|r| r.for_.is_some())
            .filter_map(|r| r.alert.as_ref())
            .any(|a| silent.contains(a) && fires.contains(a));
        assert!(
            delayed,
            "{file}: no alert with a `for` is tested both silent and firing"
        );
    }
}

#[test]
fn recorded_backup_max_ages_match_the_dr_stores() {
    let m = bundled_model();
    let mut recorded: std::collections::BTreeMap<String, u64> = Default::default();
    for r in m
        .alert_rules
        .iter()
        .flat_map(|f| f.spec.groups.iter())
        .flat_map(|g| g.rules.iter())
        .filter(|r| r.record.as_deref() == Some("vakt:backup_max_age_seconds"))
    {
        let store = r.labels.get("store").expect("a store label").clone();
        let secs = r
            .expr
            .trim()
            .strip_prefix("vector(")
            .and_then(|s| s.strip_suffix(')'))
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{store}: expr is not vector(<seconds>): {}", r.expr));
        assert!(
            recorded.insert(store.clone(), secs).is_none(),
            "{store} recorded twice"
        );
    }
    assert!(m.dr_stores.len() >= 5);
    for s in &m.dr_stores {
        let want = s.spec.backup.max_age.get().as_secs();
        assert_eq!(
            recorded.remove(&s.spec.id),
            Some(want),
            "{}: vakt:backup_max_age_seconds must be {want} (max_age {} in {})",
            s.spec.id,
            s.spec.backup.max_age.as_str(),
            s.path()
        );
    }
    assert!(
        recorded.is_empty(),
        "recorded for stores that do not exist: {recorded:?}"
    );
}
