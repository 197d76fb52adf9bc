//! One reconcile step shared by `vakt apply` and the daemon: resolve the env branch, refuse a
//! commit that is not on it, a branch that moved backwards, or a commit that fails validation,
//! then compile and apply.

use opsrepo::Severity;
use serde::Serialize;

use crate::Error;
use crate::desired::checkout::Checkout;
use crate::desired::compile::Desired;
use crate::desired::plan::LivePlan;
use crate::desired::saved::SavedPlan;
use crate::desired::short;
use crate::ops::apply::{self, ApplyError, ApplyOpts, ApplyReport};
use crate::outcome::{RefusalKind, Refused};
use crate::store::Store;
use crate::store::audit::{Audit, AuditEvent};
use crate::store::state::{self, Applied};

/// Rules whose outcome depends on the date, not on the commit: they gate pull requests in CI,
/// but never stop the reconciler from applying a commit that was valid when it merged.
const TIME_DEPENDENT: &[&str] = &["runbook.review-expired", "runbook.review-due"];

/// A commit ready to apply (or the reasons it must not be).
#[derive(Debug, Clone)]
pub struct Prepared {
    pub env: String,
    pub branch: String,
    pub branch_head: String,
    pub commit: String,
    pub summary: String,
    /// `None` when validation failed.
    pub desired: Option<Desired>,
    /// Error-level findings, `path:line:col: [rule] message`.
    pub findings: Vec<String>,
    /// The previously applied branch head is not an ancestor of the current one.
    pub moved_backwards_from: Option<String>,
    /// Commit time (Unix seconds).
    pub commit_time: Option<i64>,
    /// The typed model of the environment's view, from the same parse (for live snippets).
    pub model: Option<std::sync::Arc<opsrepo::load::Model>>,
}

/// Reads, validates and compiles `rev` (default: the env branch head) of the checkout.
/// Blocking.
pub fn prepare(
    checkout: &Checkout,
    rev: Option<&str>,
    prev_branch_head: Option<&str>,
    today: time::Date,
) -> Result<Prepared, Error> {
    prepare_inner(checkout, rev, prev_branch_head, today, None, false)
}

/// [`prepare`] for the daemon: compiles incrementally from `prev` when given, and keeps the
/// environment's typed model for the live snippets.
pub fn prepare_with(
    checkout: &Checkout,
    rev: Option<&str>,
    prev_branch_head: Option<&str>,
    today: time::Date,
    prev: Option<Desired>,
) -> Result<Prepared, Error> {
    prepare_inner(checkout, rev, prev_branch_head, today, prev, true)
}

fn prepare_inner(
    checkout: &Checkout,
    rev: Option<&str>,
    prev_branch_head: Option<&str>,
    today: time::Date,
    prev: Option<Desired>,
    keep_model: bool,
) -> Result<Prepared, Error> {
    let r = checkout.git()?;
    let env = checkout.env();
    let branch = checkout.branch().to_owned();
    // The branch must exist: resolving it names it in the error.
    let head = match checkout.head() {
        Some(h) => h,
        None => r.resolve(&branch)?,
    };
    let commit = match rev {
        Some(x) => r.resolve(x)?,
        None => head,
    };
    if !r.is_ancestor(commit, head)? {
        return Err(Error::refused(
            RefusalKind::OffBranch,
            format!(
                "commit {} is not on branch {branch}; only commits of the environment's branch are applied",
                &commit.to_string()[..12]
            ),
        ));
    }
    let moved_backwards_from =
        match prev_branch_head.and_then(|h| r.try_resolve(h).map(|id| (h, id))) {
            Some((h, id)) if !r.is_ancestor(id, head)? => Some(h.to_owned()),
            // The previous head no longer exists here at all (force push and gc): also backwards.
            None if prev_branch_head.is_some() => prev_branch_head.map(str::to_owned),
            _ => None,
        };
    let commit_s = commit.to_string();
    // One parse of the commit: validation, compile and the daemon's snippets all use it. The
    // daemon parses only the files its last pass did not (the cache in memory); a one-off
    // apply parses everything (nothing to reuse, and no cache file held in memory).
    let parsed = if keep_model {
        parse_memoized(checkout.path(), &commit_s)?
    } else {
        let files = opsrepo::read_commit(checkout.path(), &commit_s)?;
        opsrepo::load::parse_all(&files)
    };
    let (report, model) = opsrepo::validate::validate_with_model(
        &parsed,
        &opsrepo::ValidateOptions {
            env: Some(env.to_owned()),
            today,
        },
    );
    // A one-off apply has no use for the model: free it before compiling (peak memory).
    // (An explicit drop: a binding shadowed by `None` would live to the end of the function.)
    let model = if keep_model {
        model
    } else {
        drop(model);
        None
    };
    // Input and schema errors first: they are the cause; reference errors often follow from them.
    let mut errors: Vec<&opsrepo::Finding> = report
        .findings
        .iter()
        .filter(|f| f.severity == Severity::Error && !TIME_DEPENDENT.contains(&f.rule))
        .collect();
    errors.sort_by_key(|f| !(f.rule.starts_with("input.") || f.rule.starts_with("schema.")));
    let findings: Vec<String> = errors
        .into_iter()
        .map(|f| {
            format!(
                "{}:{}:{}: [{}] {}",
                f.path, f.line, f.col, f.rule, f.message
            )
        })
        .collect();
    drop(report);
    // Compile from the values alone: texts, positions and cached typed documents go first.
    let values = parsed.into_values();
    let desired = if !findings.is_empty() {
        None
    } else if let Some(p) = prev.filter(|p| p.env == env) {
        // Only the files the diff names are recompiled.
        let full = || Ok(Desired::compile_parsed(values, env, &commit_s)?);
        Some(crate::desired::advance_in(r, p, commit, full)?.0)
    } else {
        Some(Desired::compile_parsed(values, env, &commit_s)?)
    };
    Ok(Prepared {
        env: env.to_owned(),
        branch,
        branch_head: head.to_string(),
        commit: commit_s,
        summary: r.summary(commit),
        desired,
        findings,
        moved_backwards_from,
        commit_time: r.commit_time(commit),
        model: model.map(std::sync::Arc::new),
    })
}

/// The daemon's validation cache, kept in memory from one pass to the next: the entries of the
/// last commit it prepared (`opsrepo::cache::MemoryCache`). A pass takes it out and puts it
/// back, so the lock is never held during a parse; a concurrent prepare (none in the daemon)
/// would just parse everything.
static PARSE_MEMO: std::sync::Mutex<Option<opsrepo::cache::MemoryCache>> =
    std::sync::Mutex::new(None);

/// Parses `rev` of the repository at `path` through [`PARSE_MEMO`].
fn parse_memoized(
    path: &std::path::Path,
    rev: &str,
) -> Result<opsrepo::load::Parsed0, opsrepo::source::SourceError> {
    let t = std::time::Instant::now();
    let mut memo = PARSE_MEMO
        .lock()
        .ok()
        .and_then(|mut g| g.take())
        .unwrap_or_default();
    let r = opsrepo::cache::parse_commit_in_memory(path, rev, &mut memo);
    if let Ok(mut g) = PARSE_MEMO.lock() {
        *g = Some(memo);
    }
    let (parsed, stats) = r?;
    tracing::debug!(
        ms = t.elapsed().as_secs_f64() * 1000.0,
        hits = stats.hits,
        misses = stats.misses,
        uncached = stats.uncached,
        "parsed through the cache in memory"
    );
    Ok(parsed)
}

/// Outcome of a guarded apply.
#[derive(Debug, Serialize)]
pub struct Outcome {
    pub report: ApplyReport,
}

/// Applies a prepared commit after the guards. Refusals are audited and shown in the status.
///
/// With `planned` (the plan shown to an operator, or a saved plan), exactly that plan is
/// written, or the apply is refused if a key it read changed since; without, the live buckets
/// are read and planned once, and that plan is written.
pub async fn guarded_apply(
    store: &Store,
    audit: &mut Audit,
    p: &Prepared,
    opts: &ApplyOpts,
    allow_rewind: bool,
    planned: Option<LivePlan>,
) -> Result<ApplyReport, ApplyError> {
    let mut opts = opts.clone();
    opts.branch_head = Some(p.branch_head.clone());
    if !p.findings.is_empty() {
        let r = Refused::new(
            RefusalKind::InvalidCommit,
            format!(
                "commit {} fails validation ({} error(s)); the last good commit stays applied. First: {}",
                short(&p.commit),
                p.findings.len(),
                p.findings[0]
            ),
        );
        apply::refuse_commit(store, audit, &p.commit, None, &opts, &r, p.findings.clone()).await?;
        return Err(refused(r));
    }
    if let Some(prev) = &p.moved_backwards_from {
        if !allow_rewind {
            let r = Refused::new(
                RefusalKind::BranchRewound,
                format!(
                    "branch {} moved backwards: it was at {} and is now at {}, which does not contain it (force push?); the applied state is kept. Re-run with --allow-rewind to follow it (audited)",
                    p.branch,
                    short(prev),
                    short(&p.branch_head)
                ),
            );
            apply::refuse_commit(store, audit, &p.commit, None, &opts, &r, Vec::new()).await?;
            return Err(refused(r));
        }
        let mut ev = AuditEvent::new(
            format!("{}/rewind/{}", p.commit, crate::store::audit::now_rfc3339()),
            &store.env,
            &opts.actor,
            "apply.rewind-allowed",
            "allowed",
        );
        ev.commit = Some(p.commit.clone());
        ev.reason = Some(format!(
            "branch {} moved backwards from {prev}; followed with --allow-rewind",
            p.branch
        ));
        audit.record(ev).await?;
    }
    let Some(desired) = p.desired.as_ref() else {
        return Err(refused(Refused::new(
            RefusalKind::InvalidCommit,
            format!("commit {} was not compiled", short(&p.commit)),
        )));
    };
    match planned {
        Some(lp) => apply::apply_planned(store, audit, desired, lp, &opts).await,
        None => apply::apply(store, audit, desired, &opts).await,
    }
}

/// Applies a saved plan (`vakt apply FILE`): the plan must be for this environment and bucket
/// prefix, unexpired, made at the branch's current head, not applied already, and its commit
/// must compile to the values it lists; then the guards of [`guarded_apply`] run and exactly
/// the saved plan is written. Every refusal is audited and names its cause.
pub async fn apply_saved(
    store: &Store,
    audit: &mut Audit,
    p: &Prepared,
    saved: SavedPlan,
    opts: &ApplyOpts,
    allow_rewind: bool,
) -> Result<ApplyReport, ApplyError> {
    let id = saved.planned.plan.id.clone();
    let mut check = saved
        .check_origin(&p.env, &store.prefix)
        .and_then(|()| saved.check_fresh(&p.branch_head, opts.now));
    if check.is_ok()
        && let Some(a) = applied(store).await?
        && a.plan_id == id
        && a.commit == saved.commit
        && !saved.planned.plan.is_empty()
    {
        check = Err(Refused::new(
            RefusalKind::PlanStale,
            format!(
                "saved plan {id} was already applied at {} by {}; nothing was written",
                a.at, a.actor
            ),
        ));
    }
    if check.is_ok()
        && let Some(d) = &p.desired
    {
        check = saved.check_desired(d);
    }
    if let Err(r) = check {
        apply::record_refusal(
            store,
            audit,
            &saved.commit,
            Some(&saved.planned.plan),
            opts,
            &r,
            &[],
        )
        .await?;
        return Err(refused(r));
    }
    guarded_apply(store, audit, p, opts, allow_rewind, Some(saved.planned)).await
}

fn refused(r: Refused) -> ApplyError {
    ApplyError::Refused {
        kind: r.kind,
        reason: r.reason,
        plan: Box::new(crate::desired::plan::Plan::empty("", "")),
    }
}

/// The applied marker, if any.
pub async fn applied(store: &Store) -> Result<Option<Applied>, crate::store::StoreError> {
    Ok(state::get::<Applied>(&store.state, state::APPLIED)
        .await?
        .map(|(a, _)| a))
}
