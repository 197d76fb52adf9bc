//! `vakt import` end to end on fixture estates modelled on the public formats (kube-prometheus
//! PrometheusRule CRs with runbook_url, a prometheus-operator style runbooks tree, a community
//! Grafana export with `__inputs`), and the validate checks that used to skip input silently.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use vakt_tests::{TODAY, findings, outcome, vakt, workspace};

fn estate() -> PathBuf {
    workspace().join("tests/fixtures/import/estate")
}

/// A fresh `vakt init` repo with a Prometheus datasource, reviewed as of TODAY.
fn new_repo() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("ops");
    let (code, out, err) = outcome(&vakt(&["init", repo.to_str().unwrap()]));
    assert_eq!(code, 0, "{out}{err}");
    let cat = repo.join("runbooks/runbooks.catalog.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&cat).unwrap()).unwrap();
    for e in v["runbooks"].as_array_mut().unwrap() {
        e["last_reviewed_at"] = Value::String(TODAY.into());
    }
    std::fs::write(&cat, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    std::fs::create_dir_all(repo.join("dashboards")).unwrap();
    std::fs::write(
        repo.join("dashboards/datasources.toml"),
        "[[datasources]]\nuid = \"vm\"\ntype = \"prometheus\"\nname = \"VictoriaMetrics\"\ngrafana_url = \"http://127.0.0.1:3000\"\nurl = \"http://127.0.0.1:8428\"\n",
    )
    .unwrap();
    (tmp, repo)
}

/// Runs `vakt import <what> <args> --format json` and returns (exit code, report).
fn import(repo: &Path, what: &str, args: &[&str]) -> (i32, Value) {
    let mut a = vec![
        "import",
        what,
        "--repo",
        repo.to_str().unwrap(),
        "--now",
        TODAY,
        "--format",
        "json",
    ];
    a.extend_from_slice(args);
    let (code, out, err) = outcome(&vakt(&a));
    let v: Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("json report ({e}): {out}\nstderr: {err}"));
    (code, v)
}

fn problems_about(report: &Value, needle: &str) -> Vec<String> {
    report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["file"].as_str().unwrap().contains(needle))
        .map(|p| p["message"].as_str().unwrap().to_owned())
        .collect()
}

fn key(f: &Value) -> (String, String, String) {
    (
        f["rule"].as_str().unwrap().to_owned(),
        f["path"].as_str().unwrap().to_owned(),
        f["message"].as_str().unwrap().to_owned(),
    )
}

#[test]
fn estate_imports_as_announced_and_again_changes_nothing() {
    let (_tmp, repo) = new_repo();
    let e = estate();
    let runbooks = e.join("runbooks");
    let rules = e.join("rules");
    let dashboards = e.join("dashboards");
    let url_base = "https://runbooks.prometheus-operator.dev/runbooks/";

    // --dry-run writes nothing but lists the files.
    let before = vakt_tests::files_under(&repo);
    let (_, dry) = import(
        &repo,
        "runbooks",
        &[runbooks.to_str().unwrap(), "--dry-run"],
    );
    assert_eq!(
        vakt_tests::files_under(&repo),
        before,
        "--dry-run wrote files"
    );
    assert!(dry["dry_run"].as_bool().unwrap());
    assert!(dry["files"].as_array().unwrap().iter().any(|f| f["path"]
        == "runbooks/kubernetes.kubepodcrashlooping.md"
        && f["action"] == "create"));

    // Runbooks.
    let (code, rb) = import(&repo, "runbooks", &[runbooks.to_str().unwrap()]);
    assert_eq!(code, 1, "problems are announced with exit 1: {rb:#}");
    let mut ids: Vec<&str> = rb["runbooks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        [
            "general.targetdownold",
            "kubernetes.kubedeploymentreplicasmismatch",
            "kubernetes.kubepodcrashlooping",
            "node.nodefilesystemalmostoutofspace"
        ]
    );
    assert_eq!(problems_about(&rb, "BrokenFrontMatter").len(), 1, "{rb:#}");
    assert!(problems_about(&rb, "NoHeadings")[0].contains("no `##` headings"));
    assert_eq!(problems_about(&rb, "_index.md").len(), 2, "{rb:#}");
    let md =
        std::fs::read_to_string(repo.join("runbooks/kubernetes.kubepodcrashlooping.md")).unwrap();
    assert!(!md.contains('<'), "HTML passed through:\n{md}");
    assert!(
        md.contains("**Debugging a container that exits at once**"),
        "{md}"
    );
    assert!(md.contains("## Trigger\n\n### Meaning"), "{md}");
    let cat: Value = serde_json::from_str(
        &std::fs::read_to_string(repo.join("runbooks/runbooks.catalog.json")).unwrap(),
    )
    .unwrap();
    let entry = |id: &str| {
        cat["runbooks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["id"] == id)
            .cloned()
            .unwrap()
    };
    assert_eq!(
        entry("kubernetes.kubepodcrashlooping")["last_reviewed_at"],
        "2026-11-01"
    );
    assert_eq!(
        entry("kubernetes.kubepodcrashlooping")["owner_team"],
        "platform-k8s"
    );
    // No review date in the source: never reviewed, never an invented date.
    assert_eq!(
        entry("kubernetes.kubedeploymentreplicasmismatch")["last_reviewed_at"],
        "0000-01-01"
    );

    // Rules.
    let (code, rr) = import(
        &repo,
        "rules",
        &[rules.to_str().unwrap(), "--runbook-url-base", url_base],
    );
    assert_eq!(code, 1);
    let dead: Vec<(String, Vec<String>)> = rr["dead_links"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["url"].as_str().unwrap().to_owned(),
                d["alerts"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| a.as_str().unwrap().to_owned())
                    .collect(),
            )
        })
        .collect();
    let want = |u: &str, a: &str| (format!("{url_base}{u}"), vec![a.to_owned()]);
    assert_eq!(
        dead,
        [
            want("general/infoinhibitor", "InfoInhibitor"),
            want("general/targetdown", "TargetDown"),
            want("kubernetes/kubejobfailed", "KubeJobFailed"),
        ]
    );
    let alert_rb: BTreeMap<&str, Option<&str>> = rr["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["alert"].as_str().unwrap(), a["runbook_id"].as_str()))
        .collect();
    assert_eq!(
        alert_rb["KubePodCrashLooping"],
        Some("kubernetes.kubepodcrashlooping")
    );
    assert_eq!(
        alert_rb["NodeFilesystemAlmostOutOfSpace"],
        Some("node.nodefilesystemalmostoutofspace")
    );
    assert_eq!(alert_rb["KubeJobFailed"], None);
    assert_eq!(
        rr["unreferenced_runbooks"],
        serde_json::json!(["general.targetdownold", "ops.vakt.control-plane"])
    );
    let msgs: Vec<String> = rr["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            format!(
                "{}: {}",
                p["file"].as_str().unwrap(),
                p["message"].as_str().unwrap()
            )
        })
        .collect();
    let has = |s: &str| msgs.iter().any(|m| m.contains(s));
    assert!(
        has("PrometheusRule `broken-rules` has no spec"),
        "{msgs:#?}"
    );
    assert!(has("a `ConfigMap` is neither"), "{msgs:#?}");
    assert!(
        has("group `kubernetes-apps` is already defined"),
        "{msgs:#?}"
    );
    assert!(has("field `limit` is not part"), "{msgs:#?}");
    let rules_text =
        std::fs::read_to_string(repo.join("alerts/kubernetes-monitoring-rules.yaml")).unwrap();
    assert!(!rules_text.contains("runbook_url"), "{rules_text}");
    assert!(
        rules_text.contains("runbook_id: \"kubernetes.kubepodcrashlooping\""),
        "{rules_text}"
    );
    let node_text = std::fs::read_to_string(repo.join("alerts/node-exporter-rules.yaml")).unwrap();
    assert!(
        node_text.contains("record: \"instance:node_num_cpu:sum\""),
        "{node_text}"
    );

    // Dashboards.
    let (code, dr) = import(&repo, "dashboards", &[dashboards.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert_eq!(problems_about(&dr, "truncated.json").len(), 1, "{dr:#}");
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(repo.join("dashboards/rYdddlPWk.json")).unwrap(),
    )
    .unwrap();
    let text = dash.to_string();
    assert!(
        !text.contains("DS_PROMETHEUS") && !text.contains("$datasource"),
        "{text}"
    );
    assert!(dash.get("__inputs").is_none() && dash.get("__requires").is_none());
    assert_eq!(dash["panels"][1]["datasource"]["uid"], "vm");
    assert_eq!(dash["panels"][2]["targets"][0]["datasource"]["uid"], "vm");

    // The repo fails validate with exactly the findings the last report announced.
    let (code, after) = findings(&repo, &[]);
    let mut got: Vec<_> = after.iter().map(key).collect();
    let mut announced: Vec<_> = dr["findings_after"]
        .as_array()
        .unwrap()
        .iter()
        .map(key)
        .collect();
    got.sort();
    announced.sort();
    assert_eq!(got, announced);
    assert_eq!(code, 1);
    let rule_ids: Vec<&str> = after.iter().map(|f| f["rule"].as_str().unwrap()).collect();
    assert!(rule_ids.contains(&"runbook.review-expired"), "{rule_ids:?}");
    assert!(rule_ids.contains(&"alert.runbook-missing"), "{rule_ids:?}");

    // Re-import: nothing changes, every file is reported unchanged.
    let before = vakt_tests::files_under(&repo);
    for (what, args) in [
        ("runbooks", vec![runbooks.to_str().unwrap()]),
        (
            "rules",
            vec![rules.to_str().unwrap(), "--runbook-url-base", url_base],
        ),
        ("dashboards", vec![dashboards.to_str().unwrap()]),
    ] {
        let (_, r) = import(&repo, what, &args);
        for f in r["files"].as_array().unwrap() {
            assert_eq!(f["action"], "unchanged", "{what}: {f}");
        }
    }
    assert_eq!(
        vakt_tests::files_under(&repo),
        before,
        "a re-import changed files"
    );
}

#[test]
fn existing_files_are_not_overwritten_without_force() {
    let (_tmp, repo) = new_repo();
    let dashboards = estate().join("dashboards");
    import(&repo, "dashboards", &[dashboards.to_str().unwrap()]);
    let path = repo.join("dashboards/rYdddlPWk.json");
    std::fs::write(&path, "{\"edited\": true}\n").unwrap();
    let (code, r) = import(&repo, "dashboards", &[dashboards.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "{\"edited\": true}\n"
    );
    assert!(
        r["files"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["action"] == "conflict")
    );
    let (_, r) = import(
        &repo,
        "dashboards",
        &[dashboards.to_str().unwrap(), "--force"],
    );
    assert!(
        r["files"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["action"] == "overwrite")
    );
    assert!(
        std::fs::read_to_string(&path)
            .unwrap()
            .contains("Node Exporter Full")
    );
}

#[cfg(unix)]
#[test]
fn symlink_loops_and_too_many_files_are_report_lines() {
    let (tmp, repo) = new_repo();
    let src = tmp.path().join("pages");
    std::fs::create_dir_all(src.join("a")).unwrap();
    std::os::unix::fs::symlink(&src, src.join("a/loop")).unwrap();
    std::fs::write(
        src.join("a/Page.md"),
        "---\nlast_reviewed: 2026-11-01\n---\n# P\n\n## Meaning\n\nx\n\n## Mitigation\n\ny\n",
    )
    .unwrap();
    let (_, r) = import(&repo, "runbooks", &[src.to_str().unwrap()]);
    assert!(
        r["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["message"].as_str().unwrap().contains("symlink loops")),
        "{r:#}"
    );
    assert_eq!(r["runbooks"].as_array().unwrap().len(), 1, "{r:#}");

    let many = tmp.path().join("many");
    std::fs::create_dir_all(&many).unwrap();
    for i in 0..10_000 {
        std::fs::write(many.join(format!("d{i:05}.json")), "{}").unwrap();
    }
    let (code, r) = import(&repo, "dashboards", &[many.to_str().unwrap(), "--dry-run"]);
    assert_eq!(code, 1);
    let msgs: Vec<&str> = r["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["message"].as_str().unwrap())
        .collect();
    assert!(
        msgs.iter().any(|m| m.contains("more than 5000 files")),
        "{msgs:?}"
    );
}

#[test]
fn validate_checks_subfolders_datasource_variables_and_names_import_for_crs() {
    let (_tmp, repo) = new_repo();
    let fx = workspace().join("tests/fixtures/import/validate");
    for rel in [
        "alerts/team-a/broken.yaml",
        "alerts/kube-cr.yaml",
        "dashboards/team-a/vars.json",
    ] {
        let dest = repo.join(rel);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(fx.join(rel), &dest).unwrap();
    }
    let (code, f) = findings(&repo, &[]);
    assert_eq!(code, 1);
    let at = |rule: &str, path: &str| {
        f.iter()
            .filter(|x| x["rule"] == rule && x["path"] == path)
            .cloned()
            .collect::<Vec<_>>()
    };
    // The rule file in a subfolder is parsed and its PromQL checked; `rules: null` is fine.
    assert_eq!(
        at("alert.promql", "alerts/team-a/broken.yaml").len(),
        1,
        "{f:#?}"
    );
    assert!(
        f.iter().all(|x| x["rule"] != "input.unknown-file"),
        "{f:#?}"
    );
    // The PrometheusRule manifest names the command that converts it.
    let cr = at("schema.invalid", "alerts/kube-cr.yaml");
    assert_eq!(cr.len(), 1, "{f:#?}");
    assert!(
        cr[0]["help"]
            .as_str()
            .unwrap()
            .contains("vakt import rules")
    );
    // `$datasource` resolves to the declared prometheus datasource and its query is checked;
    // `${DS_LOKI}` has no declared loki datasource: a finding, not silence.
    let d = "dashboards/team-a/vars.json";
    assert_eq!(at("dashboard.query", d).len(), 1, "{f:#?}");
    let ds = at("ref.datasource", d);
    assert_eq!(ds.len(), 1, "{f:#?}");
    assert!(ds[0]["message"].as_str().unwrap().contains("${DS_LOKI}"));
}
