//! End-to-end: `vakt apply`, `plan`, `drift`, `promote` against a real `nats-server -js` and real
//! Git repositories with env branches.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use reconciler::desired::compile::Bucket;
use vakt_tests::nats::{self, NatsServer, audit_events, commit_all, ops_git, put_key, read_bucket};
use vakt_tests::{git, outcome, vakt_env};

fn run(repo: &Path, n: &NatsServer, args: &[&str]) -> (i32, String, String) {
    run_env(repo, n, args, &[])
}

fn run_env(
    repo: &Path,
    n: &NatsServer,
    args: &[&str],
    envs: &[(&str, &str)],
) -> (i32, String, String) {
    let repo_s = repo.to_string_lossy().into_owned();
    let url = n.url();
    let mut a: Vec<&str> = args.to_vec();
    a.extend(["--repo", &repo_s, "--nats", &url]);
    outcome(&vakt_env(&a, envs))
}

/// Every key of every managed bucket of `env`: (bucket, key) → (revision, value).
fn live(n: &NatsServer, env: &str) -> BTreeMap<(Bucket, String), (u64, Vec<u8>)> {
    let mut out = BTreeMap::new();
    for b in Bucket::ALL {
        for (k, v) in read_bucket(&n.url(), &format!("vakt_{env}_{b}")) {
            out.insert((b, k), v);
        }
    }
    out
}

fn apply_ok(repo: &Path, n: &NatsServer, env: &str) -> String {
    let (code, out, err) = run(repo, n, &["apply", "--env", env, "--yes"]);
    assert_eq!(code, 0, "apply {env}: {out}\n{err}");
    out
}

fn edit(repo: &Path, path: &str, from: &str, to: &str) {
    let p = repo.join(path);
    let s = std::fs::read_to_string(&p).expect("read");
    assert!(s.contains(from), "{path} does not contain {from:?}");
    std::fs::write(&p, s.replacen(from, to, 1)).expect("write");
}

fn state_json(n: &NatsServer, env: &str, key: &str) -> serde_json::Value {
    let s = read_bucket(&n.url(), &format!("vakt_{env}_state"));
    let (_, v) = s
        .get(key)
        .unwrap_or_else(|| panic!("state key {key} missing"));
    serde_json::from_slice(v).expect("state JSON")
}

#[test]
fn apply_writes_exactly_the_compiled_state() {
    let repo = ops_git();
    let n = NatsServer::start();
    let out = apply_ok(repo.path(), &n, "dev");
    assert!(out.contains("add"), "{out}");
    let desired = reconciler::compile_rev(repo.path(), "env/dev", "dev").expect("compile");
    let got = live(&n, "dev");
    let want: BTreeMap<(Bucket, String), Vec<u8>> = desired
        .entries
        .iter()
        .map(|(k, e)| (k.clone(), e.value("dev")))
        .collect();
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "live keys differ from the compiled state"
    );
    for (k, v) in &want {
        assert_eq!(&got[k].1, v, "value of {k:?}");
    }
    // Every bucket of the contract got content, and the markers name the branch head.
    for b in Bucket::ALL {
        assert!(got.keys().any(|(bb, _)| *bb == b), "bucket {b} is empty");
    }
    let head = git(repo.path(), &["rev-parse", "env/dev"]);
    assert_eq!(state_json(&n, "dev", "applied")["commit"], head.as_str());
    assert_eq!(state_json(&n, "dev", "last_good")["commit"], head.as_str());
    // A second apply is a no-op: no revision moves, no new change events.
    let events_before = audit_events(&n.url(), "dev").len();
    apply_ok(repo.path(), &n, "dev");
    assert_eq!(live(&n, "dev"), got);
    assert_eq!(audit_events(&n.url(), "dev").len(), events_before);
}

#[test]
fn one_file_change_gives_only_its_keys_a_new_revision() {
    let repo = ops_git();
    let n = NatsServer::start();
    apply_ok(repo.path(), &n, "dev");
    let before = live(&n, "dev");
    edit(
        repo.path(),
        "config/tenants/skagerrak-bank/tenant.toml",
        "requests_per_second = ",
        "requests_per_second = 1",
    );
    let c = commit_all(repo.path(), "skagerrak-bank: raise rate limit");
    let (code, out, err) = run(repo.path(), &n, &["plan", "--env", "dev", "--live"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("tenant.skagerrak-bank.tenant"), "{out}");
    assert!(
        out.contains("/quotas/requests_per_second"),
        "field-level diff missing: {out}"
    );
    apply_ok(repo.path(), &n, "dev");
    let after = live(&n, "dev");
    let moved: Vec<_> = before
        .iter()
        .filter(|(k, v)| after.get(*k).map(|a| a.0) != Some(v.0))
        .map(|(k, _)| k.clone())
        .collect();
    assert_eq!(
        moved,
        vec![(Bucket::Config, "tenant.skagerrak-bank.tenant".to_owned())]
    );
    let v: serde_json::Value =
        serde_json::from_slice(&after[&(Bucket::Config, "tenant.skagerrak-bank.tenant".into())].1)
            .unwrap();
    assert_eq!(v["vakt"]["commit"], c.as_str());
    // Unchanged keys still name the commit that last changed them.
    let other: serde_json::Value =
        serde_json::from_slice(&after[&(Bucket::Config, "global.platform".into())].1).unwrap();
    assert_ne!(other["vakt"]["commit"], c.as_str());
}

#[test]
fn deleted_document_is_pruned_where_policy_allows_and_reported_where_not() {
    let repo = ops_git();
    let n = NatsServer::start();
    apply_ok(repo.path(), &n, "dev");
    std::fs::remove_file(repo.path().join("access/bindings/ci-vakt-plan.toml")).unwrap();
    commit_all(repo.path(), "drop the CI plan binding");
    apply_ok(repo.path(), &n, "dev");
    let got = live(&n, "dev");
    assert!(!got.contains_key(&(Bucket::Access, "binding.ci-vakt-plan".into())));
    let ev = audit_events(&n.url(), "dev");
    assert!(ev.iter().any(|e| {
        e["action"] == "kv.delete"
            && e["target"]
                .as_str()
                .unwrap_or("")
                .ends_with("/binding.ci-vakt-plan")
    }));

    // With prune off, an orphan is reported, never deleted.
    edit(
        repo.path(),
        "vakt.toml",
        "[environments.dev.policy]\nself_heal = true\nprune = true",
        "[environments.dev.policy]\nself_heal = true\nprune = false",
    );
    std::fs::remove_file(repo.path().join("access/roles/support.toml")).unwrap();
    let bindings = std::fs::read_dir(repo.path().join("access/bindings")).unwrap();
    for b in bindings {
        let p = b.unwrap().path();
        if std::fs::read_to_string(&p).unwrap().contains("\"support\"") {
            std::fs::remove_file(p).unwrap();
        }
    }
    commit_all(repo.path(), "dev: prune off; drop the support role");
    let (code, out, err) = run(repo.path(), &n, &["apply", "--env", "dev", "--yes"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(live(&n, "dev").contains_key(&(Bucket::Access, "role.support".into())));
    let (code, out, _) = run(repo.path(), &n, &["drift", "--env", "dev"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("role.support"), "{out}");
}

#[test]
fn hand_edit_is_drift_naming_the_key_and_its_writer() {
    let repo = ops_git();
    let n = NatsServer::start();
    apply_ok(repo.path(), &n, "dev");
    let (code, out, _) = run(repo.path(), &n, &["drift", "--env", "dev"]);
    assert_eq!(code, 0, "{out}");
    let key = "tenant.fjord-logistics.tenant";
    let (_, v) = &live(&n, "dev")[&(Bucket::Config, key.to_owned())];
    let mut v: serde_json::Value = serde_json::from_slice(v).unwrap();
    v["spec"]["status"] = "suspended".into();
    put_key(&n.url(), "vakt_dev_config", key, v.to_string().as_bytes());
    let (code, out, err) = run(repo.path(), &n, &["drift", "--env", "dev"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(out.contains(key), "{out}");
    assert!(out.contains("outside vakt"), "{out}");
    assert!(out.contains("/status"), "{out}");
    let (code, out, _) = run(
        repo.path(),
        &n,
        &["drift", "--env", "dev", "--format", "json"],
    );
    assert_eq!(code, 2);
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["drifted"][0]["key"], key);
    assert_eq!(j["drifted"][0]["last_writer"]["by"], "outside vakt");
    assert_eq!(j["drifted"][0]["actual"]["status"], "suspended");

    // A value that is not JSON at all.
    put_key(&n.url(), "vakt_dev_config", "global.auth", b"{not json");
    let (code, out, _) = run(repo.path(), &n, &["drift", "--env", "dev"]);
    assert_eq!(code, 2);
    assert!(
        out.contains("global.auth") && out.contains("not JSON"),
        "{out}"
    );
    // Apply restores both, auditing each as a heal.
    apply_ok(repo.path(), &n, "dev");
    let (code, out, _) = run(repo.path(), &n, &["drift", "--env", "dev"]);
    assert_eq!(code, 0, "{out}");
    let heals: Vec<_> = audit_events(&n.url(), "dev")
        .into_iter()
        .filter(|e| e["action"] == "kv.heal")
        .collect();
    assert_eq!(heals.len(), 2, "{heals:?}");
}

#[test]
fn drift_with_unreachable_nats_is_an_error_not_a_verdict() {
    let repo = ops_git();
    let mut n = NatsServer::start();
    n.kill();
    let (code, _, err) = run(repo.path(), &n, &["drift", "--env", "dev"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("cannot connect to NATS"), "{err}");
}

#[test]
fn invalid_commit_is_refused_and_the_last_good_commit_stays() {
    let repo = ops_git();
    let n = NatsServer::start();
    apply_ok(repo.path(), &n, "dev");
    let good = git(repo.path(), &["rev-parse", "HEAD"]);
    let before = live(&n, "dev");
    edit(
        repo.path(),
        "inventory/placement/polar-retail.toml",
        "tenant = ",
        "tenantt = ",
    );
    let bad = commit_all(repo.path(), "typo in placement");
    let (code, out, err) = run(repo.path(), &n, &["apply", "--env", "dev", "--yes"]);
    assert_eq!(code, 4, "{out}{err}");
    assert!(err.contains("fails validation"), "{err}");
    assert!(
        err.contains("inventory/placement/polar-retail.toml:"),
        "{err}"
    );
    assert_eq!(live(&n, "dev"), before, "nothing may be written");
    let status = state_json(&n, "dev", "status");
    assert_eq!(status["state"], "refused");
    assert_eq!(status["refused"]["commit"], bad.as_str());
    assert!(
        status["refused"]["findings"][0]
            .as_str()
            .unwrap()
            .starts_with("inventory/placement/polar-retail.toml:"),
        "{status}"
    );
    assert_eq!(state_json(&n, "dev", "applied")["commit"], good.as_str());
    let ev = audit_events(&n.url(), "dev");
    let last = ev.last().unwrap();
    assert_eq!(last["action"], "apply.refused");
    assert_eq!(last["commit"], bad.as_str());
}

#[test]
fn branch_that_moved_backwards_is_refused_unless_rewind_is_allowed() {
    let repo = ops_git();
    let n = NatsServer::start();
    let a = git(repo.path(), &["rev-parse", "HEAD"]);
    edit(
        repo.path(),
        "config/global/platform.toml",
        "\n",
        "\n# note\n",
    );
    commit_all(repo.path(), "b");
    apply_ok(repo.path(), &n, "dev");
    git(repo.path(), &["reset", "-q", "--hard", &a]);
    git(
        repo.path(),
        &["commit", "-q", "--allow-empty", "-m", "rewritten"],
    );
    let (code, out, err) = run(repo.path(), &n, &["apply", "--env", "dev", "--yes"]);
    assert_eq!(code, 4, "{out}{err}");
    assert!(err.contains("moved backwards"), "{err}");
    assert_eq!(state_json(&n, "dev", "status")["state"], "refused");
    let (code, out, err) = run(
        repo.path(),
        &n,
        &["apply", "--env", "dev", "--yes", "--allow-rewind"],
    );
    assert_eq!(code, 0, "{out}{err}");
    let ev = audit_events(&n.url(), "dev");
    assert!(ev.iter().any(|e| e["action"] == "apply.rewind-allowed"));
}

#[test]
fn a_concurrent_writer_stops_the_apply_instead_of_being_overwritten() {
    let repo = ops_git();
    let n = NatsServer::start();
    apply_ok(repo.path(), &n, "dev");
    edit(
        repo.path(),
        "config/global/auth.toml",
        "\n",
        "\n# rotated\n",
    );
    edit(
        repo.path(),
        "config/tenants/fjord-logistics/tenant.toml",
        "requests_per_second = ",
        "requests_per_second = 1",
    );
    commit_all(repo.path(), "two changes");
    let desired = reconciler::compile_rev(repo.path(), "env/dev", "dev").unwrap();
    let key = "tenant.fjord-logistics.tenant";
    nats::rt().block_on(async {
        let target = reconciler::EnvTarget::resolve(
            &reconciler::desired::checkout::Checkout::open(repo.path(), "dev"),
            reconciler::store::NatsOpts {
                urls: n.url(),
                ..Default::default()
            },
            None,
            Default::default(),
        )
        .unwrap();
        let (store, mut audit) = target.open().await.unwrap();
        let live = store.snapshot().await.unwrap();
        let plan = reconciler::desired::plan::plan_live(&desired, &live);
        assert_eq!(plan.counts.change, 1, "{:?}", plan.changes);
        // Someone writes the key after the plan read it.
        let hand = br#"{"spec":{"hand":"edit"}}"#;
        store
            .kv(Bucket::Config)
            .put(key, hand.to_vec().into())
            .await
            .unwrap();
        let opts = reconciler::ops::apply::ApplyOpts::new("test");
        let err = reconciler::ops::apply::write_plan(&store, &mut audit, &desired, &plan, &opts)
            .await
            .expect_err("stale plan must not be written");
        let msg = err.to_string();
        assert!(msg.contains("changed since it was read"), "{msg}");
        let v = store.kv(Bucket::Config).get(key).await.unwrap().unwrap();
        assert_eq!(&v[..], hand, "the concurrent write was overwritten");
    });
    // The failure is audited and a re-run recomputes the plan and converges.
    let ev = audit_events(&n.url(), "dev");
    assert!(ev.iter().any(|e| e["action"] == "apply.failed"));
    apply_ok(repo.path(), &n, "dev");
    let (code, out, _) = run(repo.path(), &n, &["drift", "--env", "dev"]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn a_bucket_created_with_other_settings_is_refused() {
    let repo = ops_git();
    let n = NatsServer::start();
    nats::rt().block_on(async {
        let c = async_nats::connect(n.url()).await.unwrap();
        let js = async_nats::jetstream::new(c);
        js.create_key_value(async_nats::jetstream::kv::Config {
            bucket: "vakt_dev_config".into(),
            history: 3,
            ..Default::default()
        })
        .await
        .unwrap();
    });
    let (code, out, err) = run(repo.path(), &n, &["apply", "--env", "dev", "--yes"]);
    assert_eq!(code, 3, "{out}{err}");
    assert!(
        err.contains("vakt_dev_config") && err.contains("history 3"),
        "{err}"
    );
    assert!(read_bucket(&n.url(), "vakt_dev_placement").is_empty());
}

#[test]
fn gated_plan_waits_for_an_approval_bound_to_its_digest() {
    let repo = ops_git();
    let n = NatsServer::start();
    git(repo.path(), &["checkout", "-q", "env/staging"]);
    // staging gates access changes: the first apply (all adds, access included) waits.
    let (code, _, err) = run(repo.path(), &n, &["apply", "--env", "staging", "--yes"]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("needs approval"), "{err}");
    let plan_id = err
        .split_whitespace()
        .find(|w| w.starts_with("plan-"))
        .unwrap()
        .trim_end_matches(':')
        .to_owned();
    assert!(read_bucket(&n.url(), "vakt_staging_access").is_empty());
    assert_eq!(
        state_json(&n, "staging", "status")["state"],
        "waiting-approval"
    );
    // An unknown plan and a missing reason are refused.
    let (code, _, err) = run(
        repo.path(),
        &n,
        &[
            "approve",
            "plan-000000000000",
            "--env",
            "staging",
            "--reason",
            "x",
        ],
    );
    assert_eq!(code, 4, "{err}");
    let (code, _, err) = run(
        repo.path(),
        &n,
        &["approve", &plan_id, "--env", "staging", "--reason", " "],
    );
    assert_eq!(code, 4, "{err}");
    let (code, out, err) = run(
        repo.path(),
        &n,
        &[
            "approve",
            &plan_id,
            "--env",
            "staging",
            "--reason",
            "bootstrap reviewed",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    apply_ok(repo.path(), &n, "staging");
    assert!(!read_bucket(&n.url(), "vakt_staging_access").is_empty());
    let ev = audit_events(&n.url(), "staging");
    let appr = ev
        .iter()
        .find(|e| e["action"] == "approval.approve" && e["outcome"] == "approved")
        .unwrap();
    assert_eq!(appr["actor"], "test:e2e");
    assert_eq!(appr["reason"], "bootstrap reviewed");

    // A changed plan needs a new approval.
    edit(
        repo.path(),
        "access/roles/support.toml",
        "\n",
        "\n# reviewed\n",
    );
    edit(
        repo.path(),
        "access/roles/support.toml",
        "description = \"",
        "description = \"Changed: ",
    );
    commit_all(repo.path(), "support role text");
    let (code, _, err) = run(repo.path(), &n, &["apply", "--env", "staging", "--yes"]);
    assert_eq!(code, 4, "{err}");
    assert!(
        err.contains("needs approval") && !err.contains(&plan_id),
        "{err}"
    );
}

#[test]
fn freeze_window_refuses_unless_break_glass() {
    let repo = ops_git();
    let n = NatsServer::start();
    edit(
        repo.path(),
        "vakt.toml",
        "approval_ttl = \"24h\"",
        "approval_ttl = \"24h\"\n\n[[environments.dev.policy.freeze_windows]]\nname = \"test-freeze\"\nreason = \"always frozen in this test\"\nfrom = \"2000-01-01T00:00:00Z\"\nuntil = \"2999-01-01T00:00:00Z\"\n",
    );
    commit_all(repo.path(), "freeze dev");
    let (code, _, err) = run(repo.path(), &n, &["apply", "--env", "dev", "--yes"]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("freeze window `test-freeze`"), "{err}");
    assert!(read_bucket(&n.url(), "vakt_dev_config").is_empty());
    let (code, out, err) = run(
        repo.path(),
        &n,
        &["apply", "--env", "dev", "--yes", "--break-glass"],
    );
    assert_eq!(code, 0, "{out}{err}");
    let ev = audit_events(&n.url(), "dev");
    let started = ev.iter().find(|e| e["action"] == "apply.started").unwrap();
    assert_eq!(started["detail"]["break_glass"], true);
}

#[test]
fn max_deletions_refuses_a_plan_that_deletes_too_much() {
    let repo = ops_git();
    let n = NatsServer::start();
    apply_ok(repo.path(), &n, "dev");
    edit(
        repo.path(),
        "vakt.toml",
        "max_deletions = 500",
        "max_deletions = 2",
    );
    std::fs::remove_dir_all(repo.path().join("dr")).unwrap();
    commit_all(repo.path(), "drop DR posture (too much)");
    let (code, _, err) = run(repo.path(), &n, &["apply", "--env", "dev", "--yes"]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("max_deletions = 2"), "{err}");
    assert!(
        live(&n, "dev")
            .keys()
            .any(|(b, k)| *b == Bucket::Catalog && k.starts_with("dr."))
    );
}

#[test]
fn rollback_pins_the_environment_behind_its_branch_head() {
    let repo = ops_git();
    let n = NatsServer::start();
    let a = git(repo.path(), &["rev-parse", "HEAD"]);
    apply_ok(repo.path(), &n, "dev");
    edit(
        repo.path(),
        "config/tenants/skagerrak-bank/tenant.toml",
        "requests_per_second = ",
        "requests_per_second = 1",
    );
    let b = commit_all(repo.path(), "b");
    apply_ok(repo.path(), &n, "dev");
    let (code, out, err) = run(
        repo.path(),
        &n,
        &["apply", "--env", "dev", "--yes", "--rev", &a],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("Pinned behind branch head"), "{out}");
    let applied = state_json(&n, "dev", "applied");
    assert_eq!(applied["commit"], a.as_str());
    assert_eq!(applied["branch_head"], b.as_str());
    assert_eq!(applied["pinned"], true);
    let (code, out, _) = run(repo.path(), &n, &["drift", "--env", "dev"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("Pinned behind branch head") && out.contains("1 commit(s) behind"),
        "{out}"
    );
    // A commit that is not on the env branch is refused.
    git(repo.path(), &["checkout", "-q", "-b", "feature"]);
    let f = commit_all(repo.path(), "feature work");
    git(repo.path(), &["checkout", "-q", "env/dev"]);
    let (code, _, err) = run(
        repo.path(),
        &n,
        &["apply", "--env", "dev", "--yes", "--rev", &f],
    );
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("not on branch env/dev"), "{err}");
}

#[test]
fn plan_between_commits_needs_no_nats_and_renders_markdown() {
    let repo = ops_git();
    git(repo.path(), &["checkout", "-q", "-b", "change"]);
    edit(
        repo.path(),
        "config/tenants/polar-retail/tenant.toml",
        "requests_per_second = 100",
        "requests_per_second = 150",
    );
    edit(
        repo.path(),
        "inventory/placement/polar-retail.toml",
        "aggregate = \"agg-osl1-a\"",
        "aggregate = \"agg-osl1-b\"",
    );
    std::fs::remove_file(repo.path().join("access/bindings/ci-vakt-plan.toml")).unwrap();
    commit_all(
        repo.path(),
        "move polar-retail, raise its rate, drop a binding",
    );
    let args = [
        "plan", "--env", "prod", "--base", "env/prod", "--head", "change", "--format", "markdown",
        "--repo",
    ];
    let mut a: Vec<&str> = args.to_vec();
    let rp = repo.path().to_string_lossy().into_owned();
    a.push(&rp);
    // No --nats and an unreachable NATS_URL: the plan must not need it.
    let (code, out, err) = outcome(&vakt_env(&a, &[("NATS_URL", "nats://127.0.0.1:1")]));
    assert_eq!(code, 0, "{err}");
    let re = regex::Regex::new(r"\b[0-9a-f]{12}\b").unwrap();
    let normalized = re.replace_all(&out, "<sha>").into_owned();
    let fixture = vakt_tests::workspace().join("tests/fixtures/plan/prod-change.md");
    if std::env::var_os("VAKT_BLESS").is_some() {
        std::fs::create_dir_all(fixture.parent().unwrap()).unwrap();
        std::fs::write(&fixture, &normalized).unwrap();
    }
    let want = std::fs::read_to_string(&fixture).expect("fixture (VAKT_BLESS=1 to write it)");
    assert_eq!(
        normalized, want,
        "markdown plan changed; VAKT_BLESS=1 to accept"
    );
    // JSON for automation, with the gates of prod's policy.
    let mut a2 = a.clone();
    let i = a2.iter().position(|x| *x == "markdown").unwrap();
    a2[i] = "json";
    let (code, out, _) = outcome(&vakt_env(&a2, &[]));
    assert_eq!(code, 0);
    let p: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(p["counts"]["change"], 2);
    assert_eq!(p["counts"]["remove"], 1);
    let gates: Vec<&str> = p["gates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["action"].as_str().unwrap())
        .collect();
    assert!(
        gates.contains(&"placement-move")
            && gates.contains(&"deletion")
            && gates.contains(&"access-change"),
        "{gates:?}"
    );
    assert!(
        p["impact"]["tenants"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == "polar-retail")
    );
    // --detailed-exitcode: 2 with changes.
    let mut a3 = a2.clone();
    a3.push("--detailed-exitcode");
    assert_eq!(outcome(&vakt_env(&a3, &[])).0, 2);
}

#[test]
fn promotion_order_guard_and_fast_forward() {
    let repo = ops_git();
    let p = repo.path();
    let rp = p.to_string_lossy().into_owned();
    // A change made straight on a branch off staging skips dev.
    git(p, &["checkout", "-q", "-b", "hotfix", "env/staging"]);
    edit(p, "config/global/platform.toml", "\n", "\n# hotfix\n");
    commit_all(p, "hotfix straight to staging");
    let (code, out, _) = outcome(&vakt_env(
        &[
            "promote", "--from", "dev", "--to", "staging", "--check", "--head", "hotfix", "--repo",
            &rp,
        ],
        &[],
    ));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("hotfix straight to staging"), "{out}");
    // Through dev first: ok.
    git(p, &["checkout", "-q", "env/dev"]);
    git(p, &["merge", "-q", "--ff-only", "hotfix"]);
    let (code, out, _) = outcome(&vakt_env(
        &[
            "promote", "--from", "dev", "--to", "staging", "--check", "--head", "hotfix", "--repo",
            &rp,
        ],
        &[],
    ));
    assert_eq!(code, 0, "{out}");
    // Promote fast-forwards staging to dev.
    let (code, out, err) = outcome(&vakt_env(
        &["promote", "--from", "dev", "--to", "staging", "--repo", &rp],
        &[],
    ));
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        git(p, &["rev-parse", "env/staging"]),
        git(p, &["rev-parse", "env/dev"])
    );
    // Skipping a step of the order is refused.
    let (code, _, err) = outcome(&vakt_env(
        &[
            "promote", "--from", "dev", "--to", "prod", "--check", "--repo", &rp,
        ],
        &[],
    ));
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("promoted from `staging`"), "{err}");
}

#[test]
fn nats_lost_mid_apply_fails_loudly_and_the_rerun_converges() {
    let repo = ops_git();
    let mut n = NatsServer::start();
    let go = n.dir.path().join("go");
    let repo_s = repo.path().to_string_lossy().into_owned();
    let url = n.url();
    let child = std::process::Command::new(vakt_tests::vakt_bin())
        .args([
            "apply", "--env", "dev", "--yes", "--repo", &repo_s, "--nats", &url,
        ])
        .env("NO_COLOR", "1")
        .env("VAKT_TEST_PAUSE_AFTER_WRITES", "20")
        .env("VAKT_TEST_PAUSE_UNTIL", &go)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        nats::wait_until(std::time::Duration::from_secs(20), || live(&n, "dev").len()
            >= 20),
        "apply did not reach 20 writes"
    );
    n.kill();
    std::fs::write(&go, b"").unwrap();
    let out = child.wait_with_output().unwrap();
    let (code, err) = (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("stopped after 20 of"), "{err}");
    n.restart();
    assert_eq!(
        live(&n, "dev").len(),
        20,
        "the acknowledged writes survive the restart"
    );
    let (code, out, err) = run(repo.path(), &n, &["apply", "--env", "dev", "--yes"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, _) = run(repo.path(), &n, &["drift", "--env", "dev"]);
    assert_eq!(code, 0, "{out}");
    let events = audit_events(&n.url(), "dev");
    let mut puts: HashMap<String, usize> = HashMap::new();
    for e in events.iter().filter(|e| e["action"] == "kv.put") {
        *puts
            .entry(e["target"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    let desired = reconciler::compile_rev(repo.path(), "env/dev", "dev").unwrap();
    assert_eq!(puts.len(), desired.len(), "one event per key");
    assert!(puts.values().all(|c| *c == 1), "duplicate events");
    let parsed: Vec<reconciler::store::audit::AuditEvent> = events
        .iter()
        .map(|e| serde_json::from_value(e.clone()).unwrap())
        .collect();
    reconciler::store::audit::verify_chain(&parsed, reconciler::store::audit::GENESIS)
        .expect("chain");
}

#[test]
fn nkey_authentication() {
    let kp = nkeys::KeyPair::new_user();
    let n = NatsServer::start_with_nkey(&kp.public_key());
    let repo = ops_git();
    let (code, _, err) = run(repo.path(), &n, &["apply", "--env", "dev", "--yes"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("cannot connect to NATS"), "{err}");
    let seed = n.dir.path().join("user.nk");
    std::fs::write(&seed, kp.seed().unwrap()).unwrap();
    let seed_s = seed.to_string_lossy().into_owned();
    let (code, out, err) = run(
        repo.path(),
        &n,
        &["apply", "--env", "dev", "--yes", "--nkey", &seed_s],
    );
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn read_only_commands_create_nothing() {
    let n = NatsServer::start();
    let repo = ops_git();
    let (code, _, err) = run(repo.path(), &n, &["drift", "--env", "dev"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("does not exist"), "{err}");
    let (code, out, err) = run(
        repo.path(),
        &n,
        &["plan", "--env", "dev", "--live", "--format", "json"],
    );
    assert_eq!(code, 0, "{out}{err}");
    let plan: serde_json::Value = serde_json::from_str(&out).expect("plan JSON");
    assert!(plan["counts"]["add"].as_u64().unwrap_or(0) > 100, "{plan}");
    let streams = nats::rt().block_on(async {
        use futures_util::StreamExt;
        let c = async_nats::connect(n.url()).await.expect("connect");
        let js = async_nats::jetstream::new(c);
        js.stream_names().collect::<Vec<_>>().await.len()
    });
    assert_eq!(streams, 0, "a read-only command created streams");
}

/// Rewrites `tenant_header` in the global platform config (a spec change in the config bucket).
fn set_tenant_header(repo: &Path, value: &str) -> String {
    let p = repo.join("config/global/platform.toml");
    let s = std::fs::read_to_string(&p).expect("read");
    let line = s
        .lines()
        .find(|l| l.starts_with("tenant_header = "))
        .expect("tenant_header line")
        .to_owned();
    std::fs::write(
        &p,
        s.replacen(&line, &format!("tenant_header = \"{value}\""), 1),
    )
    .expect("write");
    commit_all(repo, &format!("tenant header {value}"))
}

/// `vakt plan --live --out FILE`, returning the plan id.
fn save_plan(repo: &Path, n: &NatsServer, env: &str, file: &Path) -> String {
    let f = file.to_string_lossy().into_owned();
    let (code, out, err) = run(
        repo,
        n,
        &[
            "plan", "--env", env, "--live", "--out", &f, "--format", "json",
        ],
    );
    assert_eq!(code, 0, "plan --out: {out}{err}");
    let p: serde_json::Value = serde_json::from_str(&out).expect("plan JSON");
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(file).expect("saved plan")).expect("saved JSON");
    assert_eq!(saved["planned"]["plan"]["id"], p["id"]);
    assert_eq!(saved["kind"], "vakt-plan");
    p["id"].as_str().expect("plan id").to_owned()
}

/// Refusal events (`apply.refused`) of a kind in the env's audit trail.
fn refusals(n: &NatsServer, env: &str, kind: &str) -> Vec<serde_json::Value> {
    audit_events(&n.url(), env)
        .into_iter()
        .filter(|e| e["action"] == "apply.refused" && e["detail"]["kind"] == kind)
        .collect()
}

#[test]
fn a_saved_plan_is_applied_exactly_once_and_refused_when_the_world_moved() {
    let repo = ops_git();
    let n = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    apply_ok(repo.path(), &n, "dev");

    // Planned, saved, applied: exactly the saved plan's writes happen.
    set_tenant_header(repo.path(), "x-tenant-a");
    let p1 = dir.path().join("p1.json");
    let id1 = save_plan(repo.path(), &n, "dev", &p1);
    let p1s = p1.to_string_lossy().into_owned();
    let (code, out, err) = run(repo.path(), &n, &["apply", "--env", "dev", &p1s]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("1 write(s)"), "{out}");
    let puts = |n: &NatsServer| {
        audit_events(&n.url(), "dev")
            .iter()
            .filter(|e| e["action"] == "kv.put" && e["plan_id"] == id1.as_str())
            .count()
    };
    assert_eq!(puts(&n), 1);
    assert_eq!(state_json(&n, "dev", "applied")["plan_id"], id1.as_str());

    // Applied twice, written once.
    let (code, _, err) = run(repo.path(), &n, &["apply", "--env", "dev", &p1s]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("already applied"), "{err}");
    assert_eq!(puts(&n), 1, "the second apply wrote nothing");

    // The branch moved after the plan was made.
    set_tenant_header(repo.path(), "x-tenant-b");
    let p2 = dir.path().join("p2.json");
    save_plan(repo.path(), &n, "dev", &p2);
    set_tenant_header(repo.path(), "x-tenant-c");
    let before = live(&n, "dev");
    let (code, _, err) = run(
        repo.path(),
        &n,
        &["apply", "--env", "dev", &p2.to_string_lossy()],
    );
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("branch env/dev moved from"), "{err}");
    assert_eq!(live(&n, "dev"), before, "nothing was written");

    // A key the plan read was changed by hand after it was made.
    let p3 = dir.path().join("p3.json");
    save_plan(repo.path(), &n, "dev", &p3);
    let hand = br#"{"spec":{"by":"hand"}}"#;
    put_key(
        &n.url(),
        "vakt_dev_config",
        "tenant.fjord-logistics.tenant",
        hand,
    );
    let before = live(&n, "dev");
    let (code, _, err) = run(
        repo.path(),
        &n,
        &["apply", "--env", "dev", &p3.to_string_lossy()],
    );
    assert_eq!(code, 4, "{err}");
    assert!(
        err.contains("is stale") && err.contains("config/tenant.fjord-logistics.tenant"),
        "the refusal names the key that moved: {err}"
    );
    assert_eq!(live(&n, "dev"), before, "nothing was written");
    assert_eq!(
        refusals(&n, "dev", "plan_stale").len(),
        3,
        "each refusal is audited"
    );
}

#[test]
fn a_damaged_or_foreign_saved_plan_is_refused_naming_why() {
    let repo = ops_git();
    let n = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    apply_ok(repo.path(), &n, "dev");
    set_tenant_header(repo.path(), "x-tenant-d");
    let good = dir.path().join("good.json");
    save_plan(repo.path(), &n, "dev", &good);
    let text = std::fs::read_to_string(&good).unwrap();
    let before = live(&n, "dev");
    let try_apply = |name: &str, body: &str, env: &str| {
        let f = dir.path().join(name);
        std::fs::write(&f, body).unwrap();
        run(
            repo.path(),
            &n,
            &["apply", "--env", env, &f.to_string_lossy()],
        )
    };
    let edited = text.replacen("x-tenant-d", "x-tenant-evil", 1);
    let mut future: serde_json::Value = serde_json::from_str(&text).unwrap();
    future["format"] = 2.into();
    let mut foreign: serde_json::Value = serde_json::from_str(&text).unwrap();
    foreign["commit"] = "0123456789abcdef0123456789abcdef01234567".into();
    let cases: Vec<(&str, String, &str, &str)> = vec![
        ("edited.json", edited, "dev", "changed after vakt wrote it"),
        (
            "truncated.json",
            text[..text.len() / 2].to_owned(),
            "dev",
            "truncated",
        ),
        (
            "future.json",
            future.to_string(),
            "dev",
            "format 2 plan, newer than this vakt",
        ),
        ("other-env.json", text.clone(), "staging", "not staging"),
        (
            "not-a-plan.json",
            "{\"kind\":\"terraform\"}".into(),
            "dev",
            "is not a saved plan",
        ),
        // Editing the commit breaks the digest first: a plan cannot be re-pointed.
        ("foreign.json", foreign.to_string(), "dev", "changed after"),
    ];
    for (name, body, env, want) in &cases {
        let (code, out, err) = try_apply(name, body, env);
        assert_eq!(code, 4, "{name}: {out}{err}");
        assert!(err.contains(want), "{name}: wants {want:?} in {err}");
        if *name != "other-env.json" {
            assert!(
                err.contains(name),
                "{name}: the message names the file: {err}"
            );
        }
    }
    // A sound plan made from another repository (its commit does not exist here).
    let other = ops_git();
    set_tenant_header(other.path(), "x-tenant-elsewhere");
    let elsewhere = dir.path().join("elsewhere.json");
    save_plan(other.path(), &n, "dev", &elsewhere);
    let (code, _, err) = run(
        repo.path(),
        &n,
        &["apply", "--env", "dev", &elsewhere.to_string_lossy()],
    );
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("made from another repository"), "{err}");
    assert_eq!(live(&n, "dev"), before, "nothing was written");
    assert_eq!(
        refusals(&n, "dev", "plan_invalid").len(),
        cases.len(),
        "every refusal in dev is audited"
    );
    assert_eq!(refusals(&n, "staging", "plan_invalid").len(), 1);
    // The intact plan still applies.
    let (code, out, err) = run(
        repo.path(),
        &n,
        &["apply", "--env", "dev", &good.to_string_lossy()],
    );
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn a_saved_gated_plan_waits_for_its_approval_and_is_refused_once_it_expired() {
    let repo = ops_git();
    let n = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    git(repo.path(), &["checkout", "-q", "env/staging"]);
    // Approvals of staging plans expire after one second in this test.
    edit(
        repo.path(),
        "vakt.toml",
        "approval_ttl = \"12h\"",
        "approval_ttl = \"1s\"",
    );
    commit_all(repo.path(), "short approvals");
    let file = dir.path().join("staging.json");
    let id = save_plan(repo.path(), &n, "staging", &file);
    let f = file.to_string_lossy().into_owned();
    let (code, _, err) = run(repo.path(), &n, &["apply", "--env", "staging", &f]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains(&format!("{id} needs approval")), "{err}");
    let (code, out, err) = run(
        repo.path(),
        &n,
        &["approve", &id, "--env", "staging", "--reason", "reviewed"],
    );
    assert_eq!(code, 0, "{out}{err}");
    // The approval lapses (its expiry is one second after the request).
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let (code, _, err) = run(repo.path(), &n, &["apply", "--env", "staging", &f]);
    assert_eq!(code, 4, "{err}");
    assert!(
        err.contains("approval") && err.contains("expired"),
        "the refusal names the expired approval: {err}"
    );
    assert!(read_bucket(&n.url(), "vakt_staging_access").is_empty());
    assert!(!refusals(&n, "staging", "approval_expired").is_empty());
}

#[test]
fn uncommitted_edits_to_vakt_toml_never_choose_what_is_applied() {
    // Settings come from the vakt.toml merged into the env branch, like the policy comes from
    // the commit applied: an edit in the work tree that nobody committed changes nothing.
    let repo = ops_git();
    let n = NatsServer::start();
    edit(
        repo.path(),
        "vakt.toml",
        "[environments.dev]\n",
        "[environments.dev]\nkv_prefix = \"worktree_only\"\n",
    );
    let out = apply_ok(repo.path(), &n, "dev");
    assert!(out.contains("add"), "{out}");
    assert!(!read_bucket(&n.url(), "vakt_dev_config").is_empty());
    let (code, _, err) = run(
        repo.path(),
        &n,
        &["drift", "--env", "dev", "--kv-prefix", "worktree_only"],
    );
    assert_ne!(
        code, 0,
        "nothing was written under the uncommitted prefix: {err}"
    );
    // Once committed on the branch, it is the setting.
    commit_all(repo.path(), "dev: own prefix");
    apply_ok(repo.path(), &n, "dev");
    assert!(!read_bucket(&n.url(), "worktree_only_config").is_empty());
}
