//! Reading an ops repo straight from Git commits and branches (no checkout).

use vakt_tests::{TODAY, copy_bundled, git, outcome, vakt};

#[test]
fn validate_reads_branches_and_commits_without_a_checkout() {
    let repo = copy_bundled();
    let dir = repo.path();
    git(dir, &["init", "-q", "-b", "env/dev"]);
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", "initial ops repo"]);
    let good = git(dir, &["rev-parse", "HEAD"]);
    git(dir, &["branch", "env/prod"]);
    // A broken commit on env/dev only.
    let p = dir.join("inventory/sites/osl1.toml");
    let t = std::fs::read_to_string(&p)
        .unwrap()
        .replacen("to = \"bgo1\"", "to = \"bgo9\"", 1);
    std::fs::write(&p, t).unwrap();
    git(dir, &["commit", "-q", "-am", "typo in a site link"]);
    git(dir, &["tag", "broken"]);
    // Make the work tree clean again, so only Git holds the broken content.
    git(dir, &["checkout", "-q", "env/prod"]);

    let d = dir.to_string_lossy();
    let run = |rev: &str| {
        outcome(&vakt(&[
            "validate", "--repo", &d, "--rev", rev, "--now", TODAY, "--format", "json",
        ]))
    };
    let (code, out, _) = run("env/prod");
    assert_eq!(code, 0, "{out}");
    let (code, out, _) = run(&good);
    assert_eq!(code, 0, "{out}");
    for rev in ["env/dev", "broken", "env/prod~0"] {
        let (code, out, _) = run(rev);
        if rev == "env/prod~0" {
            assert_eq!(code, 0);
            continue;
        }
        assert_eq!(code, 1, "{rev}: {out}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["findings"][0]["rule"], "ref.inventory");
        assert_eq!(v["findings"][0]["path"], "inventory/sites/osl1.toml");
    }
    let (code, _, err) = run("no-such-branch");
    assert_eq!(code, 3);
    assert!(err.contains("no-such-branch"), "{err}");
}

#[cfg(unix)]
#[test]
fn committed_symlink_out_of_the_repo_is_refused() {
    let repo = copy_bundled();
    let dir = repo.path();
    git(dir, &["init", "-q", "-b", "main"]);
    std::os::unix::fs::symlink("../../../etc/passwd", dir.join("config/global/passwd.toml"))
        .unwrap();
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", "sneaky"]);
    let (code, out, _) = outcome(&vakt(&[
        "validate",
        "--repo",
        &dir.to_string_lossy(),
        "--rev",
        "main",
        "--now",
        TODAY,
        "--format",
        "json",
    ]));
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["findings"].as_array().unwrap().len(), 1, "{out}");
    assert_eq!(v["findings"][0]["rule"], "input.symlink-escape");
}
