//! The validation cache of `vakt validate --rev`: parses cached by blob id must give exactly the
//! findings a run without the cache gives, whatever happened to the cache (changed blobs,
//! deleted, truncated or corrupt cache files, concurrent runs).

use std::path::{Path, PathBuf};
use std::process::Command;

use vakt_tests::{TODAY, copy_bundled, git, outcome, vakt_bin};

/// Exit code, stdout and stderr of `vakt validate --repo REPO --rev REV --now TODAY ARGS`, with
/// `VAKT_LOG=opsrepo=debug,vakt=debug` so stderr carries the cache statistics.
fn validate(repo: &Path, rev: &str, args: &[&str], envs: &[(&str, &str)]) -> (i32, String, String) {
    let mut c = validate_cmd(repo, rev, args);
    for (k, v) in envs {
        c.env(k, v);
    }
    outcome(&c.output().expect("run vakt"))
}

/// `vakt validate --repo REPO --rev REV --now TODAY ARGS` with debug logging (the cache's
/// statistics) and no repo or cache directory from the environment.
fn validate_cmd(repo: &Path, rev: &str, args: &[&str]) -> Command {
    let mut c = Command::new(vakt_bin());
    c.args(["validate", "--repo"])
        .arg(repo)
        .args(["--rev", rev, "--now", TODAY])
        .args(args)
        .env("NO_COLOR", "1")
        .env("VAKT_LOG", "debug")
        .env_remove("VAKT_REPO")
        .env_remove("VAKT_CACHE_DIR");
    c
}

/// [`validate_cmd`] started in the background, its output captured.
fn spawn_validate(repo: &Path, rev: &str) -> std::process::Child {
    validate_cmd(repo, rev, &["--format", "json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn vakt")
}

/// `hits=` and `misses=` of the cache statistics line on stderr.
fn stats(stderr: &str) -> (usize, usize) {
    (stat(stderr, " hits="), stat(stderr, " misses="))
}

/// One number of the cache statistics line on stderr (`key` is ` name=`).
fn stat(stderr: &str, key: &str) -> usize {
    let line = stderr
        .lines()
        .find(|l| l.contains("validation cache"))
        .unwrap_or_else(|| panic!("no cache statistics on stderr:\n{stderr}"));
    let at = line.find(key).unwrap_or_else(|| panic!("{key} in {line}")) + key.len();
    line[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap_or_else(|_| panic!("{key} in {line}"))
}

/// Whether the cache statistics line says the run rewrote the log (instead of appending).
fn compacted(stderr: &str) -> bool {
    let line = stderr
        .lines()
        .find(|l| l.contains("validation cache"))
        .unwrap_or_else(|| panic!("no cache statistics on stderr:\n{stderr}"));
    line.contains(" compacted=true")
}

/// Asserts that the cached run and the `--no-cache` run report exactly the same, in JSON and in
/// the human format (which shows the offending lines, read lazily for cached files). Returns
/// the cached run's JSON findings and its stderr.
fn same_as_uncached(
    repo: &Path,
    rev: &str,
    envs: &[(&str, &str)],
) -> (Vec<serde_json::Value>, String) {
    let (code_c, json_c, err_c) = validate(repo, rev, &["--format", "json"], envs);
    let (code_n, json_n, err_n) = validate(repo, rev, &["--format", "json", "--no-cache"], envs);
    assert_eq!(
        json_c, json_n,
        "cached vs --no-cache JSON\ncached stderr: {err_c}\nuncached stderr: {err_n}"
    );
    assert_eq!(code_c, code_n);
    assert!(
        !err_n.contains("validation cache"),
        "--no-cache used the cache: {err_n}"
    );
    assert!(
        !err_c.contains("ERROR") && !err_c.contains("WARN"),
        "the cached run complained: {err_c}"
    );
    let (_, human_c, _) = validate(repo, rev, &[], envs);
    let (_, human_n, _) = validate(repo, rev, &["--no-cache"], envs);
    assert_eq!(human_c, human_n, "cached vs --no-cache human output");
    let v: serde_json::Value = serde_json::from_str(&json_c).expect("json");
    (v["findings"].as_array().cloned().unwrap_or_default(), err_c)
}

fn has(findings: &[serde_json::Value], rule: &str, path: &str) -> bool {
    findings
        .iter()
        .any(|f| f["rule"] == rule && f["path"] == path)
}

/// A Git repository of the bundled ops repo with one commit.
/// The bundled repo with one more commit that gives a tenant a tier of the wrong type.
fn bad_tier_repo() -> tempfile::TempDir {
    let dir = repo();
    let r = dir.path();
    edit(
        r,
        "config/tenants/fjord-logistics/tenant.toml",
        "tier = \"business\"",
        "tier = 7",
    );
    commit(r, "bad tier");
    dir
}

fn repo() -> tempfile::TempDir {
    let dir = copy_bundled();
    git(dir.path(), &["init", "-q", "-b", "main"]);
    commit(dir.path(), "bundled");
    dir
}

fn commit(dir: &Path, msg: &str) {
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "--allow-empty", "-m", msg]);
}

fn edit(dir: &Path, path: &str, from: &str, to: &str) {
    let p = dir.join(path);
    let text = std::fs::read_to_string(&p).unwrap();
    assert!(text.contains(from), "{path}: `{from}` not found");
    std::fs::write(&p, text.replacen(from, to, 1)).unwrap();
}

fn cache_file(repo: &Path) -> PathBuf {
    repo.join(".git/vakt/cache/validate-v2.log")
}

#[test]
fn a_changed_blob_is_parsed_again_and_findings_match_the_uncached_run() {
    let dir = repo();
    let r = dir.path();
    // Cold, then warm: the second run parses nothing cacheable.
    let (f0, err) = same_as_uncached(r, "HEAD", &[]);
    assert!(cache_file(r).is_file(), "no cache written: {err}");
    let (_, _, err) = validate(r, "HEAD", &["--format", "json"], &[]);
    let (hits, misses) = stats(&err);
    assert!(
        hits > 50 && misses == 0,
        "warm run: {hits} hits, {misses} misses"
    );

    // A schema finding appears in one edited file: exactly one miss.
    let tenant = "config/tenants/fjord-logistics/tenant.toml";
    edit(
        r,
        tenant,
        "tier = \"business\"",
        "tier = \"business\"\ncolour = \"blue\"",
    );
    commit(r, "unknown field");
    let (_, _, err) = validate(r, "HEAD", &["--format", "json"], &[]);
    assert_eq!(stats(&err).1, 1, "one changed file, one miss: {err}");
    let (f1, _) = same_as_uncached(r, "HEAD", &[]);
    assert!(has(&f1, "schema.invalid", tenant), "{f1:#?}");
    assert!(!has(&f0, "schema.invalid", tenant));

    // A literal credential in another file: the secret scan of the new blob runs and is cached.
    let item = "config/tenants/fjord-logistics/tenant.toml";
    edit(
        r,
        item,
        "ops@fjord-logistics.example",
        "AKIAIOSFODNN7EXAMPLE",
    );
    commit(r, "secret");
    let (f2, _) = same_as_uncached(r, "HEAD", &[]);
    assert!(has(&f2, "secret.value", item), "{f2:#?}");
    // Cached now: the findings come from the cache, the same again.
    let (f2b, err) = same_as_uncached(r, "HEAD", &[]);
    assert_eq!(stats(&err).1, 0);
    assert_eq!(f2, f2b);

    // Back to the clean text: the findings disappear (the old blob's entry is a hit again).
    git(r, &["checkout", "-q", "HEAD~2", "--", tenant]);
    commit(r, "revert");
    let (f3, err) = same_as_uncached(r, "HEAD", &[]);
    assert_eq!(f3, f0);
    assert_eq!(
        stats(&err).1,
        0,
        "the reverted blob was cached from the first commit"
    );

    // A cross-document finding in an unchanged, cached file (its text is read for positions):
    // the placement of a removed tenant.
    std::fs::remove_file(r.join(tenant)).unwrap();
    commit(r, "remove a tenant");
    let (f4, _) = same_as_uncached(r, "HEAD", &[]);
    let placement = "inventory/placement/fjord-logistics.toml";
    let at = f4
        .iter()
        .find(|f| f["rule"] == "ref.placement" && f["path"] == placement)
        .unwrap_or_else(|| panic!("no ref.placement on {placement}: {f4:#?}"));
    assert!(at["line"].as_u64() > Some(1), "a real position: {at}");

    // Older commits still validate the same (their entries are kept within the bound).
    let (old, err) = same_as_uncached(r, "HEAD~3", &[]);
    assert_eq!(stats(&err).1, 0, "the first edit's blob is still cached");
    assert!(has(&old, "schema.invalid", tenant));
}

#[test]
fn a_deleted_cache_gives_the_same_findings() {
    let dir = bad_tier_repo();
    let r = dir.path();
    let (f0, _) = same_as_uncached(r, "HEAD", &[]);
    assert!(!f0.is_empty());
    std::fs::remove_dir_all(r.join(".git/vakt")).unwrap();
    let (f1, err) = same_as_uncached(r, "HEAD", &[]);
    assert_eq!(f0, f1);
    assert!(cache_file(r).is_file(), "the cache is written again: {err}");
}

#[test]
fn a_corrupt_or_truncated_cache_is_a_miss_never_an_error() {
    let dir = bad_tier_repo();
    let r = dir.path();
    let (f0, _) = same_as_uncached(r, "HEAD", &[]);
    let good = std::fs::read(cache_file(r)).unwrap();
    assert!(good.len() > 1000);
    let damaged: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("half", good[..good.len() / 2].to_vec()),
        ("one byte short", good[..good.len() - 1].to_vec()),
        (
            "garbage",
            (0..good.len()).map(|i| (i * 7919 % 251) as u8).collect(),
        ),
        ("header flipped", {
            let mut b = good.clone();
            b[3] ^= 0x40;
            b
        }),
        ("index flipped", {
            let mut b = good.clone();
            b[60] ^= 0x01;
            b
        }),
        ("data flipped", {
            let mut b = good.clone();
            for i in (b.len() / 2..b.len()).step_by(97) {
                b[i] ^= 0x20;
            }
            b
        }),
    ];
    for (what, bytes) in damaged {
        std::fs::write(cache_file(r), &bytes).unwrap();
        let (code, json, err) = validate(r, "HEAD", &["--format", "json"], &[]);
        let v: serde_json::Value =
            serde_json::from_str(&json).unwrap_or_else(|e| panic!("{what}: {e}: {json}\n{err}"));
        assert_eq!(v["findings"].as_array().unwrap(), &f0, "{what}");
        assert_eq!(code, 1, "{what}: the bad tier is an error");
        assert!(
            !err.contains("ERROR") && !err.contains("WARN"),
            "{what}: {err}"
        );
        let (_, misses) = stats(&err);
        assert!(
            misses > 0 || what == "data flipped",
            "{what}: nothing was parsed again"
        );
        // The run rewrote a good cache: the next run hits everything.
        let (_, _, err) = validate(r, "HEAD", &["--format", "json"], &[]);
        assert_eq!(stats(&err).1, 0, "{what}: the cache was not repaired");
    }
}

#[test]
fn concurrent_runs_do_not_corrupt_the_cache() {
    let dir = bad_tier_repo();
    let r = dir.path();
    let (_, expected, _) = validate(r, "HEAD", &["--format", "json", "--no-cache"], &[]);
    for round in 0..3 {
        let _ = std::fs::remove_dir_all(r.join(".git/vakt"));
        let children: Vec<_> = (0..4).map(|_| spawn_validate(r, "HEAD")).collect();
        for c in children {
            let (code, out, err) = outcome(&c.wait_with_output().unwrap());
            assert_eq!(out, expected, "round {round}: {err}");
            assert_eq!(code, 1);
        }
        let (_, out, err) = validate(r, "HEAD", &["--format", "json"], &[]);
        assert_eq!(out, expected);
        assert_eq!(
            stats(&err).1,
            0,
            "round {round}: the cache left behind is whole"
        );
        // No temporary files left behind: the tree memo, the log and its lock file.
        let mut left: Vec<_> = std::fs::read_dir(r.join(".git/vakt/cache"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        left.sort();
        assert_eq!(
            left,
            ["trees-v1.bin", "validate-v2.lock", "validate-v2.log"]
        );
    }
}

#[test]
fn cache_dir_flag_and_env_and_the_work_tree_is_not_cached() {
    let dir = repo();
    let r = dir.path();
    let elsewhere = tempfile::tempdir().unwrap();
    let flag_dir = elsewhere.path().join("by-flag");
    let env_dir = elsewhere.path().join("by-env");
    let flag_s = flag_dir.to_string_lossy().into_owned();
    let (code, _, err) = validate(r, "HEAD", &["--cache-dir", &flag_s], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(flag_dir.join("validate-v2.log").is_file());
    let env_s = env_dir.to_string_lossy().into_owned();
    let (code, _, err) = validate(r, "HEAD", &[], &[("VAKT_CACHE_DIR", &env_s)]);
    assert_eq!(code, 0, "{err}");
    assert!(env_dir.join("validate-v2.log").is_file());
    assert!(!r.join(".git/vakt").exists(), "nothing in the Git dir");
    // The work tree (no --rev) never uses the cache.
    let o = Command::new(vakt_bin())
        .args(["validate", "--repo"])
        .arg(r)
        .args(["--now", TODAY])
        .env("VAKT_LOG", "debug")
        .env_remove("VAKT_REPO")
        .output()
        .unwrap();
    let (code, _, err) = outcome(&o);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("validation cache"));
    assert!(!r.join(".git/vakt").exists());
    // A cache directory that cannot be created: a warning, the same findings.
    let blocker = elsewhere.path().join("file");
    std::fs::write(&blocker, "not a directory").unwrap();
    let bad = blocker.join("cache").to_string_lossy().into_owned();
    let (code, _, err) = validate(r, "HEAD", &["--cache-dir", &bad], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("validation cache not written"), "{err}");
}

#[test]
fn a_one_file_commit_appends_to_the_log() {
    let dir = repo();
    let r = dir.path();
    let (_, _, err) = validate(r, "HEAD", &["--format", "json"], &[]);
    assert!(compacted(&err), "the first run writes the log whole: {err}");
    let first = std::fs::read(cache_file(r)).unwrap();
    // Two commits, one file each: each run appends one entry, the bytes before stay as they were.
    let mut before = first.clone();
    let edits = [
        ("tier = \"business\"", "tier = \"business\"\n# a"),
        ("# a", "# b"),
    ];
    for (n, (from, to)) in edits.into_iter().enumerate() {
        edit(r, "config/tenants/fjord-logistics/tenant.toml", from, to);
        commit(r, &format!("edit {n}"));
        let (_, _, err) = validate(r, "HEAD", &["--format", "json"], &[]);
        assert_eq!(stats(&err).1, 1, "edit {n}: one miss: {err}");
        assert!(!compacted(&err), "edit {n}: appended, not rewritten: {err}");
        assert_eq!(stat(&err, " written_entries="), 1, "{err}");
        let now = std::fs::read(cache_file(r)).unwrap();
        assert!(
            now.len() > before.len() && now.starts_with(&before),
            "edit {n}: not an append"
        );
        assert_eq!(
            (now.len() - before.len()) as usize,
            stat(&err, " written_bytes="),
            "{err}"
        );
        before = now;
    }
    // Every commit is whole in the log and gives the uncached findings.
    for rev in ["HEAD~2", "HEAD~1", "HEAD"] {
        let (_, err) = same_as_uncached(r, rev, &[]);
        assert_eq!(stats(&err).1, 0, "{rev}: {err}");
    }
}

#[test]
fn a_torn_tail_is_a_miss_and_is_cut_off_by_the_next_append() {
    let dir = bad_tier_repo();
    let r = dir.path();
    let (f0, _) = same_as_uncached(r, "HEAD~1", &[]);
    let (f1, _) = same_as_uncached(r, "HEAD", &[]);
    let whole = std::fs::read(cache_file(r)).unwrap();
    // The last append (HEAD's one new entry) torn at every few bytes, and junk after a whole log.
    let (_, _, err) = validate(r, "HEAD", &["--format", "json"], &[]);
    assert_eq!(stats(&err).1, 0);
    let mut cases: Vec<(String, Vec<u8>)> = (1..40)
        .step_by(7)
        .map(|cut| {
            (
                format!("{cut} bytes cut"),
                whole[..whole.len() - cut].to_vec(),
            )
        })
        .collect();
    cases.push((
        "junk appended".into(),
        [&whole[..], &[0xAB; 13][..]].concat(),
    ));
    cases.push(("zeros appended".into(), [&whole[..], &[0; 64][..]].concat()));
    for (what, bytes) in cases {
        std::fs::write(cache_file(r), &bytes).unwrap();
        // HEAD~1 is whole before the tear: no miss.
        let (_, json, err) = validate(r, "HEAD~1", &["--format", "json"], &[]);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["findings"].as_array().unwrap(), &f0, "{what}");
        assert_eq!(stats(&err).1, 0, "{what}: {err}");
        // HEAD: its torn entry is a miss, the findings are the same, the tail is cut and the
        // entry appended again (not a rewrite).
        let (code, json, err) = validate(r, "HEAD", &["--format", "json"], &[]);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["findings"].as_array().unwrap(), &f1, "{what}");
        assert_eq!(code, 1, "{what}");
        assert!(
            !err.contains("ERROR") && !err.contains("WARN"),
            "{what}: {err}"
        );
        let misses = stats(&err).1;
        assert!(misses <= 1, "{what}: {misses} misses");
        assert!(!compacted(&err), "{what}: {err}");
        let now = std::fs::read(cache_file(r)).unwrap();
        if misses == 1 {
            assert_eq!(now, whole, "{what}: the same record appended again");
        } else {
            assert!(now.starts_with(&whole), "{what}");
        }
        let (_, _, err) = validate(r, "HEAD", &["--format", "json"], &[]);
        assert_eq!(stats(&err).1, 0, "{what}: the entry is not whole: {err}");
    }
}

#[test]
fn concurrent_appends_from_a_warm_cache_stay_whole() {
    let dir = repo();
    let r = dir.path();
    let tenant = "config/tenants/fjord-logistics/tenant.toml";
    // Four commits, each with its own version of one file; the cache holds the first only.
    for n in 0..4 {
        edit(
            r,
            tenant,
            "tier = \"business\"",
            &format!("tier = \"business\"\n# {n}"),
        );
        commit(r, &format!("edit {n}"));
    }
    let (_, _, err) = validate(r, "HEAD~4", &["--format", "json"], &[]);
    assert!(stats(&err).1 > 50, "a cold run parses everything: {err}");
    let expected: Vec<String> = (0..4)
        .map(|n| {
            validate(
                r,
                &format!("HEAD~{n}"),
                &["--format", "json", "--no-cache"],
                &[],
            )
            .1
        })
        .collect();
    // Each run appends its commit's new entry at the same time as the others.
    let children: Vec<_> = (0..4)
        .map(|n| spawn_validate(r, &format!("HEAD~{n}")))
        .collect();
    for (n, c) in children.into_iter().enumerate() {
        let (code, out, err) = outcome(&c.wait_with_output().unwrap());
        assert_eq!(out, expected[n], "HEAD~{n}: {err}");
        assert_eq!(code, 0, "{err}");
        assert!(!err.contains("WARN"), "HEAD~{n}: {err}");
    }
    // Every run's entry is in the log: no misses for any of them.
    for (n, want) in expected.iter().enumerate() {
        let (_, out, err) = validate(r, &format!("HEAD~{n}"), &["--format", "json"], &[]);
        assert_eq!(&out, want);
        assert_eq!(stats(&err).1, 0, "HEAD~{n}: {err}");
    }
}

/// The daemon keeps the cache in memory between passes: a changed blob is parsed again and
/// its new value applied, never a cached value of the old one.
#[test]
fn the_daemon_applies_a_changed_blob_not_a_cached_value() {
    use std::time::Duration;
    use vakt_tests::nats;
    use vakt_tests::nats::{Daemon, NatsServer, commit_all, ops_git, publish, wait_until};

    let repo = ops_git();
    let r = repo.path();
    let n = NatsServer::start();
    let d = Daemon::start_at(
        r,
        &n.url(),
        n.dir.path(),
        "dev",
        "pc",
        &["--interval", "1h", "--lease", "2s"],
        &[("VAKT_LOG", "info,reconciler::ops::run=debug")],
    );
    assert!(
        wait_until(Duration::from_secs(30), || d.status()["applied_commit"]
            .is_string()),
        "initial apply"
    );
    let tenant = "config/tenants/nordlys-energi/tenant.toml";
    let key = "tenant.nordlys-energi.tenant";
    // The applied value of the key at `commit`, compact.
    let applied_at = |commit: &str| -> Option<String> {
        let b = nats::try_get(&n.url(), "vakt_dev_config", key)?;
        let v: serde_json::Value = serde_json::from_slice(&b).ok()?;
        (v["vakt"]["commit"] == commit).then(|| v.to_string())
    };
    let mut seen = Vec::new();
    for (from, to) in [
        ("requests_per_second = 1200", "requests_per_second = 1201"),
        ("requests_per_second = 1201", "requests_per_second = 1200"),
        ("requests_per_second = 1200", "requests_per_second = 1202"),
    ] {
        edit(r, tenant, from, to);
        let c = commit_all(r, to);
        publish(&n.url(), "vakt.trigger.dev");
        let mut value = None;
        assert!(
            wait_until(Duration::from_secs(30), || {
                value = applied_at(&c);
                value.is_some()
            }),
            "{to}: commit {c} not applied: {}",
            d.status()
        );
        let value = value.unwrap();
        let want = to.trim_start_matches("requests_per_second = ");
        assert!(
            value.contains(&format!("\"requests_per_second\":{want}")),
            "{to}: {value}"
        );
        seen.push(value);
    }
    // The passes after the first parsed only the changed file.
    let log = std::fs::read_to_string(n.dir.path().join("daemon-pc.log")).unwrap();
    let passes: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("parsed through the cache in memory"))
        .collect();
    assert!(
        passes.iter().filter(|l| l.contains(" misses=1 ")).count() >= 3,
        "{passes:#?}"
    );
}

/// `trees_read=` of the tree listing line on stderr.
fn trees_read(stderr: &str) -> usize {
    let line = stderr
        .lines()
        .find(|l| l.contains("cache: tree listed"))
        .unwrap_or_else(|| panic!("no tree listing line on stderr:\n{stderr}"));
    let at = line.find(" trees_read=").expect("trees_read") + " trees_read=".len();
    line[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .expect("a number")
}

#[test]
fn the_tree_memo_reads_only_changed_trees_and_a_damaged_memo_is_ignored() {
    let dir = repo();
    let r = dir.path();
    let memo = r.join(".git/vakt/cache/trees-v1.bin");
    let (f0, err) = same_as_uncached(r, "HEAD", &[]);
    assert!(memo.is_file(), "no tree memo written: {err}");
    let (_, _, err) = validate(r, "HEAD", &["--format", "json"], &[]);
    assert_eq!(trees_read(&err), 0, "the same commit lists from the memo");

    // One tenant changed: the root, config/, config/tenants/ and the tenant's directory.
    let tenant = "config/tenants/fjord-logistics/tenant.toml";
    edit(
        r,
        tenant,
        "tier = \"business\"",
        "tier = \"business\"\ncolour = \"blue\"",
    );
    commit(r, "one tenant");
    let (f1, err) = same_as_uncached(r, "HEAD", &[]);
    assert_eq!(trees_read(&err), 4, "{err}");
    assert!(
        has(&f1, "schema.invalid", tenant),
        "the edited tenant is seen: {f1:#?}"
    );
    assert!(!has(&f0, "schema.invalid", tenant));

    // Whatever happened to the memo, the listing (and so every finding) is the same.
    let good = std::fs::read(&memo).unwrap();
    let damaged: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("half", good[..good.len() / 2].to_vec()),
        ("one byte short", good[..good.len() - 1].to_vec()),
        ("a byte flipped", {
            let mut b = good.clone();
            b[good.len() / 3] ^= 0x08;
            b
        }),
        (
            "garbage",
            (0..good.len()).map(|i| (i * 7919 % 251) as u8).collect(),
        ),
    ];
    for (what, bytes) in damaged {
        std::fs::write(&memo, &bytes).unwrap();
        let (f, err) = same_as_uncached(r, "HEAD", &[]);
        assert_eq!(f, f1, "{what}");
        assert!(
            trees_read(&err) > 4,
            "{what}: a damaged memo was used: {err}"
        );
    }
    // A memo of another commit (older, here) serves as well as any.
    std::fs::write(&memo, &good).unwrap();
    let (f, _) = same_as_uncached(r, "HEAD~1", &[]);
    assert_eq!(f, f0);
}
