//! `vakt validate` end to end: the bundled repo is clean, every rule fires exactly once on its
//! fixture, bad input is contained, and every output format is well-formed.

use std::path::Path;

use serde::Deserialize;
use vakt_tests::{TODAY, copy_bundled, findings, outcome, vakt, vakt_env, workspace};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    description: String,
    #[serde(default)]
    edit: Vec<Edit>,
    #[serde(default)]
    write: Vec<Write>,
    #[serde(default)]
    remove: Vec<Remove>,
    #[serde(default)]
    symlink: Vec<Symlink>,
    expect: Expect,
}

/// A symbolic link `path` → `target` (as written: relative to the link's directory, or absolute).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Symlink {
    path: String,
    target: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Edit {
    path: String,
    find: String,
    replace: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Write {
    path: String,
    #[serde(default)]
    content: String,
    /// Raw bytes written after `content` (text that is not UTF-8).
    #[serde(default)]
    bytes: Vec<u8>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Remove {
    path: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    rule: String,
    path: String,
    line: u64,
}

fn apply(case: &Case, root: &Path) {
    for e in &case.edit {
        let p = root.join(&e.path);
        let text = std::fs::read_to_string(&p).unwrap_or_else(|_| panic!("{}", e.path));
        assert!(text.contains(&e.find), "{}: `{}` not found", e.path, e.find);
        std::fs::write(&p, text.replacen(&e.find, &e.replace, 1)).unwrap();
    }
    for w in &case.write {
        let p = root.join(&w.path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        let mut data = w.content.clone().into_bytes();
        data.extend_from_slice(&w.bytes);
        std::fs::write(&p, data).unwrap();
    }
    for r in &case.remove {
        std::fs::remove_file(root.join(&r.path)).unwrap();
    }
    for l in &case.symlink {
        let p = root.join(&l.path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(&l.target, &p).unwrap();
        #[cfg(not(unix))]
        panic!("{}: symlink fixtures need a unix file system", l.path);
    }
}

fn read_case(dir: &Path) -> Case {
    let name = dir.file_name().unwrap().to_string_lossy();
    toml::from_str(&std::fs::read_to_string(dir.join("case.toml")).unwrap())
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn fixture_dirs() -> Vec<std::path::PathBuf> {
    let dir = workspace().join("tests/fixtures/validate");
    let mut cases: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    cases.sort();
    cases
}

/// `--list-rules --format json`: every rule with the command that checks it.
fn listed_rules() -> Vec<serde_json::Value> {
    let (code, out, err) = outcome(&vakt(&["validate", "--list-rules", "--format", "json"]));
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// Every rule `vakt validate --list-rules` says validate checks has a fixture expecting exactly
/// that rule; `every_rule_fixture_reports_exactly_one_finding` proves each fixture triggers
/// its rule and nothing else, so together every listed rule is shown to fire. A rule another
/// command checks is listed under its own heading and has no validate fixture.
#[test]
fn every_listed_rule_has_a_fixture_that_triggers_it() {
    let rules = listed_rules();
    assert!(rules.len() >= 40, "{rules:#?}");
    let expected: std::collections::BTreeSet<String> = fixture_dirs()
        .iter()
        .map(|d| read_case(d).expect.rule)
        .collect();
    let mut missing = Vec::new();
    let mut misplaced = Vec::new();
    for r in &rules {
        let id = r["id"].as_str().unwrap();
        match r["command"].as_str() {
            Some("validate") if !expected.contains(id) => missing.push(id.to_owned()),
            Some("validate") => {}
            Some(_) if expected.contains(id) => misplaced.push(id.to_owned()),
            Some(_) => {}
            None => panic!("rule {id} names no command: {r}"),
        }
    }
    assert!(
        missing.is_empty(),
        "rules validate lists with no fixture under tests/fixtures/validate/ that triggers them: {}",
        missing.join(", ")
    );
    assert!(
        misplaced.is_empty(),
        "rules another command checks, yet a validate fixture expects them: {}",
        misplaced.join(", ")
    );
    // A fixture expecting a rule the list does not know is a typo.
    for e in &expected {
        assert!(
            rules.iter().any(|r| r["id"] == e.as_str()),
            "fixture expects unknown rule {e}"
        );
    }
}

/// `promotion.order` needs the env branches' history: `vakt promote --check` reports it, and
/// the human list says so instead of claiming validate checks it.
#[test]
fn rules_of_other_commands_are_listed_apart() {
    let rules = listed_rules();
    let promo = rules.iter().find(|r| r["id"] == "promotion.order").unwrap();
    assert_eq!(promo["command"], "promote --check", "{promo}");
    let (code, out, _) = outcome(&vakt(&["validate", "--list-rules"]));
    assert_eq!(code, 0);
    let (ours, others) = out
        .split_once("Checked by other commands, not by validate:")
        .unwrap_or_else(|| panic!("no heading for other commands' rules:\n{out}"));
    assert!(!ours.contains("promotion.order"), "{out}");
    assert!(ours.contains("inventory.node-tls"), "{out}");
    assert!(
        others.contains("promotion.order") && others.contains("(vakt promote --check)"),
        "{out}"
    );
}

#[test]
fn bundled_repo_is_clean() {
    let (code, out, err) = outcome(&vakt(&[
        "validate",
        "--repo",
        &workspace().to_string_lossy(),
        "--now",
        TODAY,
    ]));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("0 errors, 0 warnings"), "{out}");
}

#[test]
fn every_rule_fixture_reports_exactly_one_finding() {
    let cases = fixture_dirs();
    assert!(cases.len() >= 30, "fixtures missing");
    // Each case is a `vakt validate` of its own copy of the repo: four at a time.
    let check = |c: &Path| -> Option<String> {
        let name = c.file_name().unwrap().to_string_lossy().into_owned();
        let case = read_case(c);
        let repo = copy_bundled();
        apply(&case, repo.path());
        let (code, f) = findings(repo.path(), &[]);
        let summary: Vec<String> = f
            .iter()
            .map(|x| format!("{} {}:{} {}", x["rule"], x["path"], x["line"], x["message"]))
            .collect();
        let ok = f.len() == 1
            && f[0]["rule"] == case.expect.rule.as_str()
            && f[0]["path"] == case.expect.path.as_str()
            && f[0]["line"] == case.expect.line;
        let is_error = f.first().is_some_and(|x| x["severity"] == "error");
        (!ok || (code == 1) != is_error).then(|| {
            format!(
                "{name} ({}): expected {} at {}:{}, exit {code}, got {summary:#?}",
                case.description, case.expect.rule, case.expect.path, case.expect.line
            )
        })
    };
    let mut failures = Vec::new();
    for chunk in cases.chunks(4) {
        std::thread::scope(|s| {
            let handles: Vec<_> = chunk.iter().map(|c| s.spawn(|| check(c))).collect();
            failures.extend(handles.into_iter().filter_map(|h| h.join().unwrap()));
        });
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn one(repo: &Path) -> serde_json::Value {
    let (code, f) = findings(repo, &[]);
    assert_eq!(code, 1, "{f:#?}");
    assert_eq!(f.len(), 1, "{f:#?}");
    f[0].clone()
}

#[test]
fn huge_document_is_refused_unread() {
    let repo = copy_bundled();
    let p = repo.path().join("config/global/huge.toml");
    let line = format!("# {}\n", "x".repeat(1022));
    std::fs::write(&p, line.repeat(50 * 1024)).unwrap();
    let f = one(repo.path());
    assert_eq!(f["rule"], "input.too-large");
    assert_eq!(f["path"], "config/global/huge.toml");
}

#[test]
fn deep_nesting_is_refused() {
    let repo = copy_bundled();
    let deep = format!(
        "schema_version = 1\nvalue = {}{}\n",
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    std::fs::write(repo.path().join("config/global/deep.toml"), deep).unwrap();
    let mut yaml = String::from("groups:\n");
    for i in 0..1_000 {
        yaml.push_str(&" ".repeat(i + 2));
        yaml.push_str("- k:\n");
    }
    std::fs::write(repo.path().join("alerts/deep.yaml"), yaml).unwrap();
    let (code, f) = findings(repo.path(), &[]);
    assert_eq!(code, 1);
    let rules: Vec<_> = f
        .iter()
        .map(|x| (x["rule"].clone(), x["path"].clone()))
        .collect();
    assert_eq!(rules.len(), 2, "{f:#?}");
    assert!(f.iter().all(|x| x["rule"] == "input.too-deep"), "{f:#?}");
}

#[test]
fn non_utf8_is_located() {
    let repo = copy_bundled();
    std::fs::write(
        repo.path().join("config/global/latin1.toml"),
        b"schema_version = 1\ndescription = \"caf\xe9\"\n",
    )
    .unwrap();
    let f = one(repo.path());
    assert_eq!(
        (f["rule"].as_str(), f["line"].as_u64()),
        (Some("input.encoding"), Some(2))
    );
}

#[cfg(unix)]
#[test]
fn symlink_out_of_the_repo_is_refused() {
    let repo = copy_bundled();
    std::os::unix::fs::symlink("/etc/passwd", repo.path().join("config/global/passwd.toml"))
        .unwrap();
    let f = one(repo.path());
    assert_eq!(f["rule"], "input.symlink-escape");
    assert_eq!(f["path"], "config/global/passwd.toml");
}

/// A FIFO in the layout is reported, not opened (reading it would block) and not skipped.
#[cfg(unix)]
#[test]
fn a_fifo_in_the_layout_is_unreadable_not_skipped() {
    let repo = copy_bundled();
    let p = repo.path().join("config/global/pipe.toml");
    let st = std::process::Command::new("mkfifo")
        .arg(&p)
        .status()
        .expect("mkfifo");
    assert!(st.success());
    let f = one(repo.path());
    assert_eq!(
        (f["rule"].as_str(), f["path"].as_str()),
        (Some("input.unreadable"), Some("config/global/pipe.toml"))
    );
    assert!(
        f["message"]
            .as_str()
            .unwrap()
            .contains("not a regular file"),
        "{f}"
    );
}

/// In a commit, a link to a path inside the tree that holds no file cannot be read; a link
/// that leaves the tree stays an escape.
#[cfg(unix)]
#[test]
fn a_committed_dangling_symlink_is_unreadable() {
    let repo = copy_bundled();
    let dir = repo.path();
    vakt_tests::git(dir, &["init", "-q", "-b", "main"]);
    std::os::unix::fs::symlink("removed.toml", dir.join("config/global/gone.toml")).unwrap();
    vakt_tests::git(dir, &["add", "-A"]);
    vakt_tests::git(dir, &["commit", "-q", "-m", "dangling link"]);
    let (code, f) = findings(dir, &["--rev", "main"]);
    assert_eq!(code, 1, "{f:#?}");
    assert_eq!(f.len(), 1, "{f:#?}");
    assert_eq!(f[0]["rule"], "input.unreadable");
    assert_eq!(f[0]["path"], "config/global/gone.toml");
    assert!(
        f[0]["message"]
            .as_str()
            .unwrap()
            .contains("`config/global/removed.toml` does not exist"),
        "{f:#?}"
    );
}

#[test]
fn control_characters_in_file_names_are_refused() {
    let repo = copy_bundled();
    std::fs::write(
        repo.path().join("config/global/evil\u{1b}[2J.toml"),
        "schema_version = 1\n",
    )
    .unwrap();
    let f = one(repo.path());
    assert_eq!(f["rule"], "input.bad-path");
    assert!(
        !f["path"].as_str().unwrap().contains('\u{1b}'),
        "escape kept in output: {f}"
    );
}

#[test]
fn one_bad_file_does_not_hide_findings_in_others() {
    let repo = copy_bundled();
    std::fs::write(repo.path().join("config/global/broken.toml"), "a = [\n").unwrap();
    let p = repo.path().join("inventory/sites/osl1.toml");
    let t = std::fs::read_to_string(&p)
        .unwrap()
        .replacen("to = \"bgo1\"", "to = \"bgo9\"", 1);
    std::fs::write(&p, t).unwrap();
    let (_, f) = findings(repo.path(), &[]);
    let rules: Vec<&str> = f.iter().map(|x| x["rule"].as_str().unwrap()).collect();
    assert_eq!(rules, ["input.syntax", "ref.inventory"], "{f:#?}");
}

#[test]
fn human_format_shows_the_offending_line() {
    let repo = copy_bundled();
    let p = repo.path().join("inventory/nodes/gw-osl1-01.toml");
    let t = std::fs::read_to_string(&p).unwrap().replacen(
        "site = \"osl1\"\n",
        "site = \"osl1\"\ncolour = \"blue\"\n",
        1,
    );
    std::fs::write(&p, t).unwrap();
    let (code, out, _) = outcome(&vakt(&[
        "validate",
        "--repo",
        &repo.path().to_string_lossy(),
        "--now",
        TODAY,
    ]));
    assert_eq!(code, 1);
    assert!(
        out.contains("error[schema.invalid]: unknown field `colour` in node"),
        "{out}"
    );
    assert!(
        out.contains("--> inventory/nodes/gw-osl1-01.toml:"),
        "{out}"
    );
    assert!(out.contains("| colour = \"blue\""), "{out}");
    assert!(out.contains("= help: "), "{out}");
    assert!(
        !out.contains('\x1b'),
        "no colour when NO_COLOR is set / not a terminal"
    );
}

#[test]
fn github_annotations_follow_the_workflow_command_syntax() {
    let repo = copy_bundled();
    std::fs::write(repo.path().join("config/global/broken.toml"), "a = [\n").unwrap();
    std::fs::write(repo.path().join("runbooks/orphan.md"), "# x\n").unwrap();
    let (code, out, _) = outcome(&vakt(&[
        "validate",
        "--repo",
        &repo.path().to_string_lossy(),
        "--now",
        TODAY,
        "--format",
        "github",
    ]));
    assert_eq!(code, 1);
    let re = regex::Regex::new(
        r"^::(error|warning|notice) file=[^,:]+,line=\d+,col=\d+,title=[^,:]+::[^\r\n]+$",
    )
    .unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines.len() >= 3, "{out}");
    for l in lines {
        assert!(re.is_match(l), "not a workflow command: {l}");
    }
}

#[test]
fn sarif_validates_against_the_sarif_2_1_0_schema() {
    let repo = copy_bundled();
    std::fs::write(repo.path().join("config/global/broken.toml"), "a = [\n").unwrap();
    let (code, out, _) = outcome(&vakt(&[
        "validate",
        "--repo",
        &repo.path().to_string_lossy(),
        "--now",
        TODAY,
        "--format",
        "sarif",
    ]));
    assert_eq!(code, 1);
    let log: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mut schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(workspace().join("tests/fixtures/sarif/sarif-schema-2.1.0.json"))
            .unwrap(),
    )
    .unwrap();
    // The official file (oasis-tcs/sarif-spec 85971b3) misplaces region's `anyOf` inside
    // `properties`; move it beside them, where the spec means it, so it is enforced.
    let region = &mut schema["definitions"]["region"];
    if let Some(any_of) = region["properties"]
        .as_object_mut()
        .and_then(|p| p.remove("anyOf"))
    {
        region["anyOf"] = any_of;
    }
    // Its `language` pattern uses `(?i)`, which ECMA-262 regexes (JSON Schema's dialect) lack.
    for def in ["run", "toolComponent"] {
        schema["definitions"][def]["properties"]["language"]["pattern"] =
            "^[a-zA-Z]{2}(-[a-zA-Z]{2})?$".into();
    }
    let v = jsonschema::draft7::new(&schema).unwrap();
    let errors: Vec<String> = v
        .iter_errors(&log)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    assert_eq!(log["runs"][0]["results"][0]["ruleId"], "input.syntax");
    // The schema is not a pushover: a bad level is refused.
    let mut bad = log.clone();
    bad["runs"][0]["results"][0]["level"] = "catastrophic".into();
    assert!(!v.is_valid(&bad));
}

#[test]
fn json_format_has_summary_and_findings() {
    let (code, out, _) = outcome(&vakt(&[
        "validate",
        "--repo",
        &workspace().to_string_lossy(),
        "--now",
        TODAY,
        "--format",
        "json",
    ]));
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(
        v["summary"]["environments"],
        serde_json::json!(["dev", "prod", "staging"])
    );
    let kinds = &v["summary"]["documents_by_kind"];
    assert!(kinds["tenant"].as_u64().unwrap() >= 5);
    assert!(kinds["node"].as_u64().unwrap() >= 8);
    assert!(kinds["dashboard"].as_u64().unwrap() >= 12);
}

#[test]
fn could_not_run_exits_3() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = outcome(&vakt(&[
        "validate",
        "--repo",
        &dir.path().to_string_lossy(),
    ]));
    assert_eq!(code, 3);
    assert!(err.contains("vakt.toml is missing"), "{err}");
}

#[test]
fn list_rules_names_every_rule_once() {
    let (code, out, _) = outcome(&vakt(&["validate", "--list-rules", "--format", "json"]));
    assert_eq!(code, 0);
    let rules: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let mut ids: Vec<&str> = rules.iter().map(|r| r["id"].as_str().unwrap()).collect();
    let n = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n);
}

#[test]
fn diagnostics_snapshot() {
    // Two findings of different kinds, as an operator reads them: rule id, file:line:col, the
    // offending line, what to do. The text is pinned; re-bless with INSTA_UPDATE=always.
    let repo = copy_bundled();
    for case in ["alert-promql", "unknown-field"] {
        let c: Case = toml::from_str(
            &std::fs::read_to_string(
                workspace()
                    .join("tests/fixtures/validate")
                    .join(case)
                    .join("case.toml"),
            )
            .unwrap(),
        )
        .unwrap();
        apply(&c, repo.path());
    }
    let root = repo.path().to_string_lossy().into_owned();
    let (code, out, err) = outcome(&vakt_env(
        &["validate", "--repo", &root, "--now", TODAY],
        &[("NO_COLOR", "1")],
    ));
    assert_eq!(code, 1, "{out}{err}");
    // The repo's document counts change with the bundled repo; the findings do not.
    let counts = regex::Regex::new(r"\d+ documents in \d+ files").unwrap();
    let out = out.replace(&root, "<repo>");
    let text = counts.replace_all(&out, "N documents in M files");
    insta::assert_snapshot!("diagnostics_human", text);
}

#[test]
fn every_vakt_command_in_every_bundled_runbook_parses() {
    // The commands are found the way `vakt validate` finds them...
    let dir = workspace().join("runbooks");
    let mut total = 0;
    let mut approvals = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_none_or(|x| x != "md") {
            continue;
        }
        let text = std::fs::read_to_string(&p).unwrap();
        for c in opsrepo::rules::commands::extract(&text) {
            let args = c
                .args
                .unwrap_or_else(|e| panic!("{}:{}: {e}", p.display(), c.pos.line));
            total += 1;
            if args.first().is_some_and(|a| a == "approve") && args.len() > 1 {
                approvals += 1;
                assert!(
                    args.iter().any(|a| a == "--env"),
                    "{}:{}: {}",
                    p.display(),
                    c.pos.line,
                    c.text
                );
            }
        }
    }
    assert!(total > 150, "only {total} commands found");
    assert!(approvals > 10, "only {approvals} `vakt approve` lines");
    // ...and each of them parses against the real CLI: no `runbook.command` finding.
    let (code, f) = findings(&workspace(), &[]);
    let bad: Vec<_> = f
        .iter()
        .filter(|x| x["rule"] == "runbook.command")
        .collect();
    assert!(bad.is_empty(), "{bad:#?}");
    assert_eq!(code, 0, "{f:#?}");
}

#[test]
fn a_runbook_command_is_checked_flag_by_flag() {
    let repo = copy_bundled();
    let p = repo.path().join("runbooks/ops.vakt.drift.md");
    let text = std::fs::read_to_string(&p).unwrap();
    let extra = "\n```sh\nvakt approve PLAN --reason \"ok\"\nvakt jobs list --env prod --site bgo1\nvakt drift --env <env> --format json | jq .\nvakt nosuch --env prod\nnats kv ls --bogus\n```\n";
    std::fs::write(&p, format!("{text}{extra}")).unwrap();
    let (code, f) = findings(repo.path(), &[]);
    assert_eq!(code, 1);
    let msgs: Vec<String> = f
        .iter()
        .filter(|x| x["rule"] == "runbook.command")
        .map(|x| x["message"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(msgs.len(), 3, "{msgs:#?}");
    assert!(msgs[0].contains("--env"), "{msgs:#?}");
    assert!(msgs[1].contains("--site"), "{msgs:#?}");
    assert!(msgs[2].contains("nosuch"), "{msgs:#?}");
}

#[test]
fn closed_label_values_match_the_reconciler_enums() {
    use reconciler::outcome::{RefusalKind, StepOutcome};
    let steps = [
        StepOutcome::Applied,
        StepOutcome::Noop,
        StepOutcome::Refused(RefusalKind::Other),
        StepOutcome::Failed,
    ];
    // A new variant fails to compile here: add it to the list above and to opsrepo's list.
    for s in steps {
        match s {
            StepOutcome::Applied
            | StepOutcome::Noop
            | StepOutcome::Refused(_)
            | StepOutcome::Failed => {}
        }
    }
    let mut emitted: Vec<&str> = steps.iter().map(|s| s.metric_label()).collect();
    let mut listed = opsrepo::rules::labels::APPLY_OUTCOMES.to_vec();
    emitted.sort();
    listed.sort();
    assert_eq!(emitted, listed, "vakt_apply_total outcome values");

    let mut emitted: Vec<&str> = RefusalKind::ALL.iter().map(|k| k.metric_label()).collect();
    emitted.sort();
    emitted.dedup();
    let mut listed = opsrepo::rules::labels::REFUSAL_REASONS.to_vec();
    listed.sort();
    assert_eq!(
        emitted, listed,
        "vakt_reconcile_refused_total reason values"
    );
}

/// A copy of the bundled repo with 40 unreadable TOML files (`input.syntax`) and 7 runbook pages
/// no catalog entry names, so several rules have many findings.
fn repo_with_many_findings() -> tempfile::TempDir {
    let repo = copy_bundled();
    for i in 0..40 {
        std::fs::write(
            repo.path().join(format!("config/global/broken{i:02}.toml")),
            "a = [\n",
        )
        .unwrap();
    }
    for i in 0..7 {
        std::fs::write(repo.path().join(format!("runbooks/orphan{i}.md")), "# x\n").unwrap();
    }
    repo
}

/// Counts per rule id computed from the full JSON findings, most frequent first.
fn counted(f: &[serde_json::Value]) -> Vec<(String, u64)> {
    let mut by = std::collections::BTreeMap::<String, u64>::new();
    for x in f {
        *by.entry(x["rule"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    let mut v: Vec<(String, u64)> = by.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v
}

#[test]
fn summary_counts_findings_per_rule_in_json_and_human() {
    let repo = repo_with_many_findings();
    let root = repo.path().to_string_lossy().to_string();
    let (code, all) = findings(repo.path(), &[]);
    assert_eq!(code, 1);
    let expected = counted(&all);
    assert_eq!(
        expected
            .iter()
            .find(|(r, _)| r == "input.syntax")
            .map(|x| x.1),
        Some(40),
        "{expected:?}"
    );
    assert!(expected.len() >= 2, "{expected:?}");

    // JSON: summary.by_rule, in order, with the findings kept.
    let (code, out, _) = outcome(&vakt(&[
        "validate",
        "--repo",
        &root,
        "--now",
        TODAY,
        "--format",
        "json",
        "--summary",
    ]));
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let by_rule: Vec<(String, u64)> = v["summary"]["by_rule"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            assert!(["error", "warning", "note"].contains(&c["severity"].as_str().unwrap()));
            (
                c["rule"].as_str().unwrap().to_string(),
                c["count"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(by_rule, expected);
    assert_eq!(v["findings"].as_array().unwrap().len(), all.len());

    // Without --summary the JSON keeps its old shape.
    let (_, out, _) = outcome(&vakt(&[
        "validate", "--repo", &root, "--now", TODAY, "--format", "json",
    ]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["summary"].get("by_rule").is_none(), "{}", v["summary"]);

    // Human: the table instead of the findings, same exit status.
    let (code, out, _) = outcome(&vakt(&[
        "validate",
        "--repo",
        &root,
        "--now",
        TODAY,
        "--summary",
    ]));
    assert_eq!(code, 1, "{out}");
    assert!(
        !out.contains("error["),
        "no findings with --summary alone:\n{out}"
    );
    assert!(out.contains("findings by rule:"), "{out}");
    let rows: Vec<(String, u64)> = out
        .lines()
        .skip_while(|l| !l.starts_with("findings by rule:"))
        .skip(2)
        .take_while(|l| !l.trim().is_empty())
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(w.len(), 3, "{l}");
            (w[2].to_string(), w[0].parse().unwrap())
        })
        .collect();
    assert_eq!(rows, expected, "{out}");
    let errors = all.iter().filter(|f| f["severity"] == "error").count();
    let last = out.trim_end().lines().last().unwrap();
    assert!(last.starts_with("failed: "), "{out}");
    assert!(last.contains(&format!(": {errors} errors,")), "{out}");
}

#[test]
fn max_per_rule_caps_the_human_format_and_says_what_was_left_out() {
    let repo = repo_with_many_findings();
    let root = repo.path().to_string_lossy().to_string();
    let (_, all) = findings(repo.path(), &[]);
    let expected = counted(&all);
    let (code, out, _) = outcome(&vakt(&[
        "validate",
        "--repo",
        &root,
        "--now",
        TODAY,
        "--max-per-rule",
        "3",
    ]));
    assert_eq!(code, 1, "{out}");
    for (rule, n) in &expected {
        let shown = out
            .lines()
            .filter(|l| {
                ["error", "warning", "note"]
                    .iter()
                    .any(|s| l.starts_with(&format!("{s}[{rule}]:")))
            })
            .count() as u64;
        assert_eq!(shown, (*n).min(3), "{rule}:\n{out}");
        let line = format!("note: {} more {rule} finding", n.saturating_sub(3));
        assert_eq!(out.contains(&line), *n > 3, "{line}:\n{out}");
    }
    assert!(
        out.contains("note: 37 more input.syntax findings not shown (raise --max-per-rule"),
        "{out}"
    );
    assert!(!out.contains("findings by rule:"), "{out}");
    // The final line still counts every finding.
    let errors = all.iter().filter(|f| f["severity"] == "error").count();
    assert!(out.contains(&format!(": {errors} errors,")), "{out}");

    // With --summary: the capped findings, then the table.
    let (code, out, _) = outcome(&vakt(&[
        "validate",
        "--repo",
        &root,
        "--now",
        TODAY,
        "--max-per-rule",
        "1",
        "--summary",
    ]));
    assert_eq!(code, 1);
    assert_eq!(out.matches("error[input.syntax]").count(), 1, "{out}");
    assert!(out.contains("note: 39 more input.syntax findings"), "{out}");
    let table = out.find("findings by rule:").expect("table");
    assert!(out.find("error[input.syntax]").unwrap() < table, "{out}");
    assert!(
        out[table..].contains("     40  error    input.syntax"),
        "{out}"
    );
}

#[test]
fn summary_and_cap_refuse_formats_they_do_not_shape() {
    let root = workspace().to_string_lossy().to_string();
    for args in [
        &["--summary", "--format", "sarif"][..],
        &["--summary", "--format", "github"][..],
        &["--max-per-rule", "5", "--format", "json"][..],
        &["--max-per-rule", "0"][..],
        &["--max-per-rule", "x"][..],
    ] {
        let mut a = vec!["validate", "--repo", &root, "--now", TODAY];
        a.extend_from_slice(args);
        let (code, out, err) = outcome(&vakt(&a));
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert!(out.is_empty(), "{args:?}: nothing on stdout: {out}");
        assert!(
            err.contains("--summary") || err.contains("--max-per-rule"),
            "{err}"
        );
    }
}
