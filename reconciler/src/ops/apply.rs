//! Apply: policy checks, compare-and-set writes, one audit event per change, applied-commit and
//! last-known-good markers. Idempotent and resumable.
//!
//! Order of one apply:
//! 1. If an `apply.inflight` marker exists, a previous apply was interrupted: every key whose
//!    revision is newer than the marker's bucket sequences was written by it; each one without
//!    its audit event (looked up in the stream, not only in the server's duplicate window) gets
//!    it now, then `apply.interrupted` is recorded and the marker removed.
//! 2. Snapshot the live buckets, plan against the desired state.
//! 3. Policy: freeze windows (unless break-glass), maximum deletions, gated actions (need an
//!    approval bound to the plan's digest). A refusal is audited and put in the status.
//! 4. Write the inflight marker, record `apply.started`, then pipeline CAS writes; as each write
//!    is acknowledged its audit event is published (so an event never claims a write that did
//!    not happen). A conflict or a NATS failure stops the apply: what was written is audited,
//!    the failure is recorded, and the caller gets an error, never a partial success.
//! 5. Applied and last-good markers, `apply.completed`, marker removed.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use opsrepo::model::{FreezeWindow, Policy, Weekday};
use serde::Serialize;
use time::OffsetDateTime;

use crate::desired::canon;
use crate::desired::compile::{Bucket, Desired};
use crate::desired::plan::{self, Action, LivePlan, Plan};
use crate::fault;
use crate::ops::approvals::Gate;
use crate::outcome::{RefusalKind, Refused, SyncState};
use crate::store::audit::{Audit, AuditEvent, Prepared, Template, now_rfc3339};
use crate::store::state::{self, Applied, Approval, Inflight, LastGood, Refusal, Status};
use crate::store::{Store, StoreError};

/// How to apply.
#[derive(Debug, Clone)]
pub struct ApplyOpts {
    pub actor: String,
    pub dry_run: bool,
    /// Apply inside a freeze window (audited as break-glass).
    pub break_glass: bool,
    pub now: OffsetDateTime,
    /// The env branch head; `Some` and different from the desired commit means a pinned
    /// rollback.
    pub branch_head: Option<String>,
    /// Writes in flight at once.
    pub window: usize,
    /// Test hook: after this many acknowledged writes, wait until `pause_until` exists.
    pub pause_after_writes: Option<usize>,
    pub pause_until: Option<std::path::PathBuf>,
    /// Causation id for audit events (the trigger, the daemon tick, the operator's request).
    pub causation_id: Option<String>,
    pub site: Option<String>,
    /// Told after every acknowledged write.
    pub progress: Option<crate::Progress>,
}

impl ApplyOpts {
    pub fn new(actor: &str) -> Self {
        ApplyOpts {
            actor: actor.to_owned(),
            dry_run: false,
            break_glass: false,
            now: OffsetDateTime::now_utc(),
            branch_head: None,
            window: 512,
            pause_after_writes: fault::env_usize("VAKT_TEST_PAUSE_AFTER_WRITES"),
            pause_until: fault::env_path("VAKT_TEST_PAUSE_UNTIL"),
            causation_id: None,
            site: None,
            progress: None,
        }
    }
}

/// What an apply did.
#[derive(Debug, Clone, Serialize)]
pub struct ApplyReport {
    pub plan: Plan,
    pub written: usize,
    /// Migration jobs queued for placement moves.
    pub jobs_queued: usize,
    /// Audit events recorded for writes of an interrupted earlier apply.
    pub recovered: usize,
    pub dry_run: bool,
    pub pinned: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("refused: {reason}")]
    Refused {
        kind: RefusalKind,
        reason: String,
        plan: Box<Plan>,
    },
    #[error("apply of {plan_id} stopped after {written} of {total} writes: {source}")]
    Failed {
        plan_id: String,
        written: usize,
        total: usize,
        source: StoreError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ApplyError {
    fn refused(r: Refused, plan: Plan) -> Self {
        ApplyError::Refused {
            kind: r.kind,
            reason: r.reason,
            plan: Box::new(plan),
        }
    }

    /// The documented exit code: refusals 4, a failure part-way 1, could not run 3.
    pub fn exit_code(&self) -> u8 {
        match self {
            ApplyError::Refused { kind, .. } => kind.exit_code(),
            ApplyError::Failed { .. } => crate::outcome::exit::FINDINGS,
            ApplyError::Store(_) => crate::outcome::exit::COULD_NOT_RUN,
        }
    }
}

/// Snapshots the live buckets and plans `desired` against them.
pub async fn plan_live(store: &Store, desired: &Desired) -> Result<LivePlan, StoreError> {
    // Sequences first: a write landing between the two reads makes the plan look stale (safe),
    // never fresh.
    let read_seqs = store.last_sequences().await?;
    let live = store.snapshot().await?;
    Ok(LivePlan {
        plan: plan::plan_live(desired, &live),
        read_seqs,
    })
}

/// Keys written since a plan read its buckets (at most `limit` named), or `None` if no bucket
/// moved.
pub async fn moved_since(
    store: &Store,
    read_seqs: &BTreeMap<Bucket, u64>,
    limit: usize,
) -> Result<Option<(usize, Vec<String>)>, StoreError> {
    let now = store.last_sequences().await?;
    let moved: Vec<Bucket> = now
        .iter()
        .filter(|(b, seq)| **seq > read_seqs.get(*b).copied().unwrap_or(0))
        .map(|(b, _)| *b)
        .collect();
    if moved.is_empty() {
        return Ok(None);
    }
    let live = store.snapshot().await?;
    let keys: Vec<String> = live
        .iter()
        .filter(|((b, _), e)| {
            moved.contains(b) && e.revision > read_seqs.get(b).copied().unwrap_or(0)
        })
        .map(|((b, k), _)| format!("{b}/{k}"))
        .collect();
    let n = keys.len();
    Ok(Some((n, keys.into_iter().take(limit).collect())))
}

/// Applies `desired` to the store: one snapshot, one plan, and that plan is what is written.
pub async fn apply(
    store: &Store,
    audit: &mut Audit,
    desired: &Desired,
    opts: &ApplyOpts,
) -> Result<ApplyReport, ApplyError> {
    // Other writers (approvals, another replica before us) may have extended the chain.
    audit.refresh_head().await?;
    let recovered = if opts.dry_run {
        0
    } else {
        recover(store, audit, &opts.actor).await?
    };
    // The plan's impact summary (it reads every changed spec) is not needed to decide or to
    // write: it is computed while the writes are in flight (see `execute`).
    let live = store.snapshot().await?;
    let plan = plan::plan_live_deferred(desired, &live);
    drop(live);
    execute(store, audit, desired, plan, opts, recovered, true).await
}

/// Applies a plan computed earlier against the live buckets (a saved plan, or the plan shown to
/// an operator and confirmed): exactly that plan is written, or the apply is refused when a key
/// it read has changed since.
pub async fn apply_planned(
    store: &Store,
    audit: &mut Audit,
    desired: &Desired,
    planned: LivePlan,
    opts: &ApplyOpts,
) -> Result<ApplyReport, ApplyError> {
    audit.refresh_head().await?;
    let recovered = recover(store, audit, &opts.actor).await?;
    let stale = if desired.commit != planned.plan.head || desired.env != planned.plan.env {
        Some(Refused::new(
            RefusalKind::PlanInvalid,
            format!(
                "plan {} is for {} at {}, not {} at {}",
                planned.plan.id,
                planned.plan.env,
                crate::desired::short(&planned.plan.head),
                desired.env,
                crate::desired::short(&desired.commit)
            ),
        ))
    } else {
        moved_since(store, &planned.read_seqs, 5).await?.map(|(n, keys)| {
            Refused::new(
                RefusalKind::PlanStale,
                format!(
                    "plan {} is stale: {n} key(s) changed since it was made ({}{}); nothing was written. Make a new plan",
                    planned.plan.id,
                    keys.join(", "),
                    if n > keys.len() { ", …" } else { "" }
                ),
            )
        })
    };
    if let Some(r) = stale {
        let plan = Some(&planned.plan);
        record_refusal(store, audit, &desired.commit, plan, opts, &r, &[]).await?;
        return Err(ApplyError::refused(r, planned.plan));
    }
    execute(store, audit, desired, planned.plan, opts, recovered, false).await
}

/// Policy, migration jobs, writes and markers for one plan. `impact_pending`: the plan comes
/// from [`plan::plan_live_deferred`], its impact summary still to compute (while the writes
/// are in flight when there are writes; before returning it otherwise).
async fn execute(
    store: &Store,
    audit: &mut Audit,
    desired: &Desired,
    mut plan: Plan,
    opts: &ApplyOpts,
    recovered: usize,
    impact_pending: bool,
) -> Result<ApplyReport, ApplyError> {
    // Migration jobs take placement moves out of the plan, and the impact is the whole plan's:
    // with a move in it, the impact is computed now.
    let moves = plan
        .changes
        .iter()
        .any(|c| c.bucket == Bucket::Placement && c.action == Action::Change);
    let mut impact_pending = impact_pending;
    if impact_pending && (opts.dry_run || moves || plan.is_empty()) {
        plan.impact = plan::impact(desired, &plan);
        impact_pending = false;
    }
    let policy = &desired.manifest.environments[&desired.env].policy;
    let pinned = opts
        .branch_head
        .as_ref()
        .is_some_and(|h| h != &desired.commit);
    if opts.dry_run {
        return Ok(ApplyReport {
            plan,
            written: 0,
            jobs_queued: 0,
            recovered,
            dry_run: true,
            pinned,
        });
    }
    if let Err(r) = check_policy(store, &plan, policy, opts).await? {
        if impact_pending {
            plan.impact = plan::impact(desired, &plan);
        }
        refuse(store, audit, desired, &plan, opts, &r).await?;
        return Err(ApplyError::refused(r, plan));
    }
    // Placement moves become migration jobs (drain → write → reload → verify) when both
    // shards have a declared node; the rest of the plan is written now.
    let jobs = crate::ops::jobs::migrations_of(&mut plan, desired, opts.causation_id.clone());
    let queued = crate::ops::jobs::enqueue(store, audit, &opts.actor, &jobs).await?;
    let written = if plan.is_empty() {
        if impact_pending {
            plan.impact = plan::impact(desired, &plan);
        }
        0
    } else {
        let (written, impact) =
            write_plan_and(store, audit, desired, &plan, opts, impact_pending).await?;
        if let Some(i) = impact {
            plan.impact = i;
        }
        written
    };
    let at = now_rfc3339();
    let prev_applied = state::get::<Applied>(&store.state, state::APPLIED).await?;
    let changed_marker = prev_applied.as_ref().is_none_or(|(a, _)| {
        a.commit != desired.commit || a.pinned != pinned || a.branch_head != opts.branch_head
    });
    if written > 0 || changed_marker {
        store.fenced()?;
        state::put(
            &store.state,
            state::APPLIED,
            &Applied {
                commit: desired.commit.clone(),
                branch_head: opts.branch_head.clone(),
                pinned,
                plan_id: plan.id.clone(),
                at: at.clone(),
                actor: opts.actor.clone(),
                keys: desired.len(),
            },
        )
        .await?;
        state::put(
            &store.state,
            state::LAST_GOOD,
            &LastGood {
                commit: desired.commit.clone(),
                at: at.clone(),
            },
        )
        .await?;
    }
    if written > 0 {
        let mut ev = event(
            store,
            &plan,
            opts,
            format!("{}/completed", plan.id),
            "apply.completed",
            "succeeded",
        );
        ev.commit = Some(desired.commit.clone());
        ev.detail = Some(serde_json::json!({
            "written": written, "add": plan.counts.add, "change": plan.counts.change,
            "remove": plan.counts.remove, "pinned": pinned,
        }));
        audit.record(ev).await?;
        fault::hold("apply.completed", 0).await;
        state::delete(&store.state, state::INFLIGHT).await?;
    }
    set_status(store, |s| {
        s.state = SyncState::InSync;
        s.applied_commit = Some(desired.commit.clone());
        s.branch_head = opts.branch_head.clone().or(Some(desired.commit.clone()));
        s.last_good = Some(desired.commit.clone());
        s.refused = None;
        s.last_error = None;
        s.drifted_keys = 0;
        s.pending_plan = None;
    })
    .await?;
    Ok(ApplyReport {
        plan,
        written,
        jobs_queued: queued,
        recovered,
        dry_run: false,
        pinned,
    })
}

fn event(
    store: &Store,
    plan: &Plan,
    opts: &ApplyOpts,
    id: String,
    action: &str,
    outcome: &str,
) -> AuditEvent {
    event_in(&store.env, plan, opts, id, action, outcome)
}

/// [`event`] of environment `env`.
fn event_in(
    env: &str,
    plan: &Plan,
    opts: &ApplyOpts,
    id: String,
    action: &str,
    outcome: &str,
) -> AuditEvent {
    let mut ev = AuditEvent::new(id, env, &opts.actor, action, outcome);
    ev.plan_id = Some(plan.id.clone());
    ev.commit = Some(plan.head.clone());
    ev.correlation_id = Some(plan.id.clone());
    ev.causation_id = opts.causation_id.clone();
    ev.site = opts.site.clone();
    ev
}

/// Updates the status record.
pub async fn set_status(store: &Store, f: impl FnOnce(&mut Status)) -> Result<Status, StoreError> {
    store.fenced()?;
    let mut f = Some(f);
    let env = store.env.clone();
    state::update_fenced::<Status, _>(
        &store.state,
        state::STATUS,
        || store.fenced(),
        |s| {
            if let Some(f) = f.take() {
                f(s);
            }
            s.env = env.clone();
            s.updated_at = now_rfc3339();
        },
    )
    .await
}

/// Records a refusal in the audit stream and the status.
pub async fn refuse(
    store: &Store,
    audit: &mut Audit,
    desired: &Desired,
    plan: &Plan,
    opts: &ApplyOpts,
    refusal: &Refused,
) -> Result<(), StoreError> {
    refuse_commit(
        store,
        audit,
        &desired.commit,
        Some(plan),
        opts,
        refusal,
        Vec::new(),
    )
    .await
}

/// Records the refusal of a commit (validation failed, branch moved backwards, policy, a stale
/// saved plan).
pub async fn refuse_commit(
    store: &Store,
    audit: &mut Audit,
    commit: &str,
    plan: Option<&Plan>,
    opts: &ApplyOpts,
    refusal: &Refused,
    findings: Vec<String>,
) -> Result<(), StoreError> {
    record_refusal(store, audit, commit, plan, opts, refusal, &findings).await?;
    let reason = refusal.reason.as_str();
    let waiting = refusal.kind.waits_for_approval() && plan.is_some_and(|p| !p.gates.is_empty());
    set_status(store, |s| {
        s.state = if waiting {
            SyncState::WaitingApproval
        } else {
            SyncState::Refused
        };
        s.refused = Some(Refusal {
            commit: commit.to_owned(),
            kind: refusal.kind,
            reason: reason.to_owned(),
            findings,
            at: now_rfc3339(),
        });
        s.pending_plan = if waiting {
            plan.map(|p| p.id.clone())
        } else {
            None
        };
    })
    .await?;
    Ok(())
}

/// Records a refusal in the audit stream only (a saved plan that cannot be applied changes
/// nothing about the environment, so its status stays as it is).
pub async fn record_refusal(
    store: &Store,
    audit: &mut Audit,
    commit: &str,
    plan: Option<&Plan>,
    opts: &ApplyOpts,
    refusal: &Refused,
    findings: &[String],
) -> Result<(), StoreError> {
    audit.refresh_head().await?;
    let mut ev = AuditEvent::new(
        format!("{commit}/refused/{}", now_rfc3339()),
        &store.env,
        &opts.actor,
        "apply.refused",
        "refused",
    );
    ev.commit = Some(commit.to_owned());
    ev.plan_id = plan.map(|p| p.id.clone());
    ev.correlation_id = Some(plan.map_or_else(|| commit.to_owned(), |p| p.id.clone()));
    ev.causation_id = opts.causation_id.clone();
    ev.site = opts.site.clone();
    ev.reason = Some(refusal.reason.clone());
    ev.detail = Some(if findings.is_empty() {
        serde_json::json!({ "kind": refusal.kind })
    } else {
        serde_json::json!({ "kind": refusal.kind, "findings": findings })
    });
    audit.record(ev).await.map(|_| ())
}

/// `Ok(Err(reason))` when the policy refuses the plan.
async fn check_policy(
    store: &Store,
    plan: &Plan,
    policy: &Policy,
    opts: &ApplyOpts,
) -> Result<Result<(), Refused>, StoreError> {
    if plan.is_empty() {
        return Ok(Ok(()));
    }
    if let Some(w) = freeze_window(policy, opts.now)
        && !opts.break_glass
    {
        return Ok(Err(Refused::new(
            RefusalKind::FreezeWindow,
            format!(
                "freeze window `{}` is active ({}); apply with --break-glass only for an incident fix (audited)",
                w.name, w.reason
            ),
        )));
    }
    if plan.deletions() > policy.max_deletions as usize {
        return Ok(Err(Refused::new(
            RefusalKind::MaxDeletions,
            format!(
                "plan deletes {} keys, more than max_deletions = {} for {}; check the change, or raise the limit in vakt.toml",
                plan.deletions(),
                policy.max_deletions,
                store.env
            ),
        )));
    }
    if !plan.gates.is_empty() {
        let now = opts.now;
        let ttl = policy.approval_ttl.get();
        let actions = plan
            .gates
            .iter()
            .filter_map(|g| {
                serde_json::to_value(g.action)
                    .ok()?
                    .as_str()
                    .map(str::to_owned)
            })
            .collect();
        let expires = (now + ttl)
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let request = Approval::request(
            &plan.id,
            &plan.digest,
            &opts.actor,
            expires,
            &plan.head,
            actions,
        );
        match crate::ops::approvals::gate(store, &request, now).await? {
            Gate::Approved => return Ok(Ok(())),
            Gate::Expired(at) => {
                return Ok(Err(Refused::new(
                    RefusalKind::ApprovalExpired,
                    format!(
                        "the approval of {} expired at {at}; needs approval again: `vakt approve {} --reason …`",
                        plan.id, plan.id
                    ),
                )));
            }
            Gate::Rejected(by, why) => {
                return Ok(Err(Refused::new(
                    RefusalKind::Rejected,
                    format!(
                        "{} was rejected by {by} ({why}); change the commit to get a new plan",
                        plan.id
                    ),
                )));
            }
            Gate::Pending => {}
        }
        let names: Vec<String> = plan
            .gates
            .iter()
            .map(|g| {
                format!(
                    "{} ({} keys)",
                    serde_json::to_value(g.action)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default(),
                    g.keys.len()
                )
            })
            .collect();
        return Ok(Err(Refused::new(
            RefusalKind::ApprovalRequired,
            format!(
                "{} needs approval for {}: run `vakt approve {} --env {} --reason …`",
                plan.id,
                names.join(", "),
                plan.id,
                store.env
            ),
        )));
    }
    Ok(Ok(()))
}

/// Writes an already computed plan (CAS on each change's `from_revision`), auditing each
/// acknowledged write. Used by [`apply`]; exposed so a stale plan can be exercised.
pub async fn write_plan(
    store: &Store,
    audit: &mut Audit,
    desired: &Desired,
    plan: &Plan,
    opts: &ApplyOpts,
) -> Result<usize, ApplyError> {
    write_plan_and(store, audit, desired, plan, opts, false)
        .await
        .map(|(n, _)| n)
}

/// [`write_plan`]; with `impact`, also the plan's impact summary ([`plan::impact`]), computed
/// while the writes are in flight on a thread of its own when the writes are prepared on one
/// (it only reads the plan and the desired state), else before the first write.
async fn write_plan_and(
    store: &Store,
    audit: &mut Audit,
    desired: &Desired,
    plan: &Plan,
    opts: &ApplyOpts,
    impact: bool,
) -> Result<(usize, Option<plan::Impact>), ApplyError> {
    let total = plan.changes.len();
    // With the pause hook, one write in flight at a time: exactly N writes land before it.
    let window = if opts.pause_after_writes.is_some() {
        1
    } else {
        opts.window.max(1)
    };
    // Each write's value and audit event (canonical JSON, all but the revision, the chain head
    // and the time) are prepared ahead, while the writes before them are in flight; an
    // acknowledgement then only fills in its revision, hashes and publishes. On a
    // multi-threaded runtime the preparing runs on a thread of its own (borrowing the plan and
    // the desired state, so nothing is copied), a window ahead, in batches; elsewhere (a
    // current-thread runtime: unit tests) the publishing task prepares the next window itself.
    let threaded = window > 1
        && total > 1
        && tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
        && std::env::var_os("VAKT_APPLY_PREPARE_INLINE").is_none();
    // Without a thread of its own, the impact is computed before the first write, as a plan
    // with it would have been: nothing is added between a write and the next.
    let mut summary = (impact && !threaded).then(|| plan::impact(desired, plan));
    fault::hold("apply.begin", 0).await;
    let inflight = Inflight {
        plan_id: plan.id.clone(),
        commit: desired.commit.clone(),
        started_at: now_rfc3339(),
        actor: opts.actor.clone(),
        bucket_seqs: store.last_sequences().await?,
        audit_seq: audit.last_seq().await?,
    };
    state::put(&store.state, state::INFLIGHT, &inflight).await?;
    let mut ev = event(
        store,
        plan,
        opts,
        format!("{}/started", plan.id),
        "apply.started",
        "started",
    );
    ev.detail = Some(serde_json::json!({
        "add": plan.counts.add, "change": plan.counts.change, "remove": plan.counts.remove,
        "against": plan.against, "break_glass": opts.break_glass,
    }));
    audit.record(ev).await?;
    fault::hold("apply.started", 0).await;

    let (audit_env, audit_client) = (audit.env.clone(), audit.client.clone());
    let events = ChangeEvents::new(
        (&store.env, &store.prefix),
        plan,
        opts,
        &audit_env,
        audit_client.as_deref(),
    );
    let mut prep = Preparer { desired, events };
    let (written, failure) = if threaded {
        let handle = tokio::runtime::Handle::current();
        tokio::task::block_in_place(|| {
            std::thread::scope(|s| {
                let summing = impact.then(|| s.spawn(|| plan::impact(desired, plan)));
                let (tx, rx) = tokio::sync::mpsc::channel(window.div_ceil(PREPARE_BATCH));
                s.spawn(move || {
                    let mut from = 0;
                    while from < total {
                        let to = (from + PREPARE_BATCH).min(total);
                        let batch: Vec<Item> = (from..to).map(|i| prep.prepare(plan, i)).collect();
                        if tx.blocking_send(batch).is_err() {
                            return; // the publishing side stopped
                        }
                        from = to;
                    }
                });
                let mut src = Source::Thread {
                    rx,
                    batch: Vec::new().into_iter(),
                };
                let pumped = handle.block_on(pump(store, audit, plan, opts, window, &mut src));
                if let Some(h) = summing {
                    // `plan::impact` does not panic; if it did, the panic is this thread's.
                    summary = Some(h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
                }
                pumped
            })
        })
    } else {
        let mut src = Source::Inline {
            prep: Box::new(prep),
            ready: VecDeque::new(),
            prepared: 0,
        };
        pump(store, audit, plan, opts, window, &mut src).await
    };
    if let Some(source) = failure {
        let mut ev = event(
            store,
            plan,
            opts,
            format!("{}/failed/{written}", plan.id),
            "apply.failed",
            "failed",
        );
        ev.reason = Some(source.to_string());
        ev.detail = Some(serde_json::json!({"written": written, "total": total}));
        // Best effort: NATS may be the thing that failed.
        let quick = Duration::from_secs(3);
        let _ = tokio::time::timeout(quick, audit.record(ev)).await;
        let msg = source.to_string();
        let _ = tokio::time::timeout(
            quick,
            set_status(store, |s| {
                s.state = SyncState::Failed;
                s.last_error = Some(msg);
            }),
        )
        .await;
        return Err(ApplyError::Failed {
            plan_id: plan.id.clone(),
            written,
            total,
            source,
        });
    }
    fault::hold("apply.written", 0).await;
    Ok((written, summary))
}

/// Changes prepared together on the preparing thread (one channel message).
const PREPARE_BATCH: usize = 64;

/// A write's value (`None`: a delete marker) and its audit event, prepared. (The write's
/// message, its subject and `Nats-Expected-Last-Subject-Sequence` header, is built by the
/// publishing task: built here, the header map cost more there, read from another core's cache,
/// than building it there did.)
type Item = (Option<bytes::Bytes>, Prepared);

/// Prepares the writes of one plan ([`Item`]s).
struct Preparer<'a> {
    desired: &'a Desired,
    events: ChangeEvents<'a>,
}

impl Preparer<'_> {
    fn prepare(&mut self, plan: &Plan, i: usize) -> Item {
        let c = &plan.changes[i];
        let value = match c.action {
            Action::Remove => None,
            _ => self
                .desired
                .get(c.bucket, &c.key)
                .map(|e| bytes::Bytes::from(e.value(&self.desired.env))),
        };
        (value, self.events.prepare(c))
    }
}

/// Where [`pump`] takes the prepared writes from, in plan order.
enum Source<'a> {
    /// The preparing thread's batches.
    Thread {
        rx: tokio::sync::mpsc::Receiver<Vec<Item>>,
        batch: std::vec::IntoIter<Item>,
    },
    /// Prepared by the publishing task: the next window while the current one is in flight.
    Inline {
        prep: Box<Preparer<'a>>,
        ready: VecDeque<Item>,
        /// How many changes were prepared so far.
        prepared: usize,
    },
}

impl Source<'_> {
    /// The prepared write of change `i` (the next one in plan order).
    async fn next(&mut self, plan: &Plan, i: usize) -> Result<Item, StoreError> {
        match self {
            Source::Thread { rx, batch } => loop {
                if let Some(item) = batch.next() {
                    return Ok(item);
                }
                match rx.recv().await {
                    Some(b) => *batch = b.into_iter(),
                    None => {
                        return Err(crate::store::nats_err(
                            "prepare",
                            "the preparing thread stopped early",
                        ));
                    }
                }
            },
            Source::Inline {
                prep,
                ready,
                prepared,
            } => Ok(match ready.pop_front() {
                Some(r) => r,
                None => {
                    *prepared = (*prepared).max(i + 1);
                    prep.prepare(plan, i)
                }
            }),
        }
    }

    /// Inline only: prepares up to `window` writes ahead while the window is in flight.
    fn ahead(&mut self, plan: &Plan, window: usize) {
        if let Source::Inline {
            prep,
            ready,
            prepared,
        } = self
        {
            while *prepared < plan.changes.len() && ready.len() < window {
                ready.push_back(prep.prepare(plan, *prepared));
                *prepared += 1;
            }
        }
    }
}

/// The writes of [`write_plan`]: pipelined CAS publishes, `window` in flight; as each is
/// acknowledged (in plan order) its audit event is chained and published. Returns how many
/// writes were acknowledged and the first failure, after draining what was in flight.
///
/// Each publish and acknowledgement is bounded by the client's own timeout (the JetStream
/// context's, 5 s): a lost server fails the apply rather than hanging it, without a timer of
/// ours per message.
async fn pump(
    store: &Store,
    audit: &mut Audit,
    plan: &Plan,
    opts: &ApplyOpts,
    window: usize,
    src: &mut Source<'_>,
) -> (usize, Option<StoreError>) {
    let total = plan.changes.len();
    let mut pending: VecDeque<(
        usize,
        async_nats::jetstream::context::PublishAckFuture,
        Prepared,
    )> = VecDeque::with_capacity(window);
    let mut audits: VecDeque<async_nats::jetstream::context::PublishAckFuture> =
        VecDeque::with_capacity(window + 1);
    let mut written = 0usize;
    let mut sent = 0usize;
    let mut failure: Option<StoreError> = None;

    let mut idx = 0;
    while idx < total || !pending.is_empty() {
        // Fill the window.
        while failure.is_none() && idx < total && pending.len() < window {
            let c = &plan.changes[idx];
            tracing::trace!(idx, key = %c.key, "send");
            let (value, ev) = match src.next(plan, idx).await {
                Ok(item) => item,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            };
            match store
                .send_cas(c.bucket, &c.key, value, c.from_revision.unwrap_or(0))
                .await
            {
                Ok(f) => {
                    pending.push_back((idx, f, ev));
                    sent += 1;
                    fault::hold("apply.send", sent).await;
                }
                Err(e) => failure = Some(e),
            }
            idx += 1;
        }
        // Prepare the writes that refill the window while it is in flight.
        if failure.is_none() {
            src.ahead(plan, window);
        }
        if failure.is_some() && pending.is_empty() {
            break;
        }
        let Some((i, f, ev)) = pending.pop_front() else {
            break;
        };
        let c = &plan.changes[i];
        match store
            .await_cas(f, c.bucket, &c.key, c.from_revision.unwrap_or(0))
            .await
        {
            Ok(seq) => {
                written += 1;
                if let Some(p) = &opts.progress {
                    p.report(written as u64, total as u64);
                }
                fault::hold("apply.ack", written).await;
                match audit.send_prepared(ev, seq).await {
                    Ok(a) => audits.push_back(a),
                    Err(e) => {
                        failure.get_or_insert(e);
                    }
                }
                fault::hold("apply.write", written).await;
                if opts.pause_after_writes == Some(written)
                    && let Some(until) = &opts.pause_until
                {
                    // Test hook: hold here until the file exists (the test cuts NATS meanwhile).
                    tracing::debug!(written, "test hook: paused");
                    while !until.exists() {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    tracing::debug!(written, "test hook: resumed");
                }
                while audits.len() > window {
                    if let Some(a) = audits.pop_front()
                        && let Err(e) = a.await
                    {
                        failure.get_or_insert(crate::store::nats_err("audit ack", e));
                    }
                }
            }
            Err(e) => {
                failure.get_or_insert(e);
            }
        }
        if let Some(f) = &failure {
            tracing::debug!(written, error = %f, "apply stopping");
            idx = total; // stop sending; drain what is in flight
        }
    }
    for a in audits {
        if let Err(e) = a.await {
            failure.get_or_insert(crate::store::nats_err("audit ack", e));
        }
    }
    (written, failure)
}

/// The key of a change event's detail that holds the write's revision (filled in when the
/// write is acknowledged, see [`Prepared::new`]).
const REVISION: &str = "revision";

/// The audit action of a change.
fn change_action(c: &plan::Change) -> &'static str {
    match c.action {
        Action::Remove => "kv.delete",
        // A change the Git history does not explain: drift being healed.
        Action::Change if c.reason.is_some() => "kv.heal",
        _ => "kv.put",
    }
}

/// Prepares the audit events of one plan's changes ([`change_event`] as [`Prepared`]): the
/// members every change event shares are written once ([`Template`]), and each event's own
/// (id, target, reason, detail) straight as canonical JSON.
struct ChangeEvents<'a> {
    /// The store's environment and key-value prefix.
    store: (&'a str, &'a str),
    plan: &'a Plan,
    opts: &'a ApplyOpts,
    env: &'a str,
    client: Option<&'a str>,
    template: Template,
    target: String,
}

impl<'a> ChangeEvents<'a> {
    fn new(
        store: (&'a str, &'a str),
        plan: &'a Plan,
        opts: &'a ApplyOpts,
        env: &'a str,
        client: Option<&'a str>,
    ) -> Self {
        let proto = event_in(store.0, plan, opts, String::new(), "kv.put", "applied");
        ChangeEvents {
            store,
            plan,
            opts,
            env,
            client,
            template: Template::new(&proto, env, client),
            target: String::new(),
        }
    }

    /// `c`'s event, its revision left to fill in on the acknowledgement.
    fn prepare(&mut self, c: &plan::Change) -> Prepared {
        use std::fmt::Write as _;
        self.target.clear();
        // `Store::bucket_name`, then the key (writing to a String cannot fail).
        let _ = write!(self.target, "{}_{}/{}", self.store.1, c.bucket, c.key);
        self.template
            .prepare(
                change_action(c),
                change_event_id(&self.plan.id, c.bucket, &c.key),
                Some(&self.target),
                c.reason.as_deref(),
                |out| write_change_detail(c, out),
            )
            .unwrap_or_else(|| {
                Prepared::new(
                    change_event(self.store, self.plan, self.opts, c),
                    self.env,
                    self.client,
                    REVISION,
                )
            })
    }
}

/// Appends the detail of `c`'s event as canonical JSON (the object [`change_event`] builds,
/// keys in sorted order), without the revision's number: returns where it goes.
fn write_change_detail(c: &plan::Change, out: &mut Vec<u8>) -> usize {
    use std::io::Write as _;
    fn opt_str(out: &mut Vec<u8>, v: Option<&str>) {
        match v {
            Some(s) => canon::write_str(s, out),
            None => out.extend_from_slice(b"null"),
        }
    }
    out.extend_from_slice(b"{\"change\":");
    canon::write_str(c.action.as_str(), out);
    out.extend_from_slice(b",\"fields\":[");
    for (i, f) in c.fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        canon::write_str(&f.pointer, out);
    }
    out.extend_from_slice(b"],\"from_digest\":");
    opt_str(out, c.from_digest.as_deref());
    out.extend_from_slice(b",\"from_revision\":");
    // Writing to a Vec cannot fail.
    let _ = match c.from_revision {
        Some(r) => write!(out, "{r}"),
        None => out.write_all(b"null"),
    };
    out.extend_from_slice(b",\"path\":");
    opt_str(out, c.path.as_deref());
    out.extend_from_slice(b",\"");
    out.extend_from_slice(REVISION.as_bytes());
    out.extend_from_slice(b"\":");
    let at = out.len();
    out.extend_from_slice(b",\"to_digest\":");
    opt_str(out, c.to_digest.as_deref());
    out.push(b'}');
    at
}

/// The audit event of one change, its `detail.revision` still null.
/// `store` is the store's environment and key-value prefix.
fn change_event(
    store: (&str, &str),
    plan: &Plan,
    opts: &ApplyOpts,
    c: &plan::Change,
) -> AuditEvent {
    let action = change_action(c);
    let mut ev = event_in(
        store.0,
        plan,
        opts,
        change_event_id(&plan.id, c.bucket, &c.key),
        action,
        "applied",
    );
    // `Store::bucket_name`, then the key.
    ev.target = Some(format!("{}_{}/{}", store.1, c.bucket.as_str(), c.key));
    ev.reason = c.reason.clone();
    ev.detail = Some(serde_json::json!({
        "change": c.action, "path": c.path, "from_digest": c.from_digest, "to_digest": c.to_digest,
        "from_revision": c.from_revision, "revision": null, // REVISION
        "fields": c.fields.iter().map(|f| f.pointer.clone()).collect::<Vec<_>>(),
    }));
    ev
}

/// The deterministic id of the audit event of one change of a plan.
pub fn change_event_id(plan_id: &str, bucket: Bucket, key: &str) -> String {
    format!("{plan_id}/{bucket}/{key}")
}

/// Records the writes of an interrupted apply that have no audit event yet. Returns how many
/// were recorded.
pub async fn recover(store: &Store, audit: &mut Audit, actor: &str) -> Result<usize, StoreError> {
    let Some((inf, _)) = state::get::<Inflight>(&store.state, state::INFLIGHT).await? else {
        return Ok(0);
    };
    let recorded = audit.recorded_ids(inf.audit_seq + 1).await?;
    if recorded.contains(&format!("{}/completed", inf.plan_id)) {
        // Killed after `apply.completed` and before the marker went: every write and event is
        // in, nothing was interrupted that needs recording.
        state::delete(&store.state, state::INFLIGHT).await?;
        return Ok(0);
    }
    let live = store.snapshot().await?;
    let mut n = 0;
    let mut by_bucket: BTreeMap<Bucket, Vec<(&String, &plan::LiveEntry)>> = BTreeMap::new();
    for ((b, k), e) in &live {
        if e.revision > inf.bucket_seqs.get(b).copied().unwrap_or(0) {
            by_bucket.entry(*b).or_default().push((k, e));
        }
    }
    for (b, entries) in by_bucket {
        for (k, e) in entries {
            let id = change_event_id(&inf.plan_id, b, k);
            if recorded.contains(&id) {
                continue;
            }
            let lv = plan::view(&e.value);
            // Only writes that carry this apply's commit (or its delete markers) are its own.
            if !e.deleted
                && lv.commit.as_deref() != Some(inf.commit.as_str())
                && lv.env.as_deref() != Some(store.env.as_str())
            {
                continue;
            }
            let mut ev = AuditEvent::new(
                id,
                &store.env,
                &inf.actor,
                if e.deleted { "kv.delete" } else { "kv.put" },
                "applied",
            );
            ev.plan_id = Some(inf.plan_id.clone());
            ev.correlation_id = Some(inf.plan_id.clone());
            ev.commit = Some(inf.commit.clone());
            ev.target = Some(format!("{}/{k}", store.bucket_name(b)));
            ev.reason = Some(
                "recorded after the apply was interrupted (write acknowledged, event missing)"
                    .into(),
            );
            ev.detail = Some(serde_json::json!({"revision": e.revision, "digest": lv.digest}));
            audit.record(ev).await?;
            n += 1;
        }
    }
    let mut ev = AuditEvent::new(
        format!("{}/interrupted", inf.plan_id),
        &store.env,
        actor,
        "apply.interrupted",
        "recovered",
    );
    ev.plan_id = Some(inf.plan_id.clone());
    ev.correlation_id = Some(inf.plan_id.clone());
    ev.commit = Some(inf.commit.clone());
    ev.reason = Some(format!(
        "apply started at {} by {} did not finish; {n} write(s) recorded now; the next plan completes it",
        inf.started_at, inf.actor
    ));
    if !recorded.contains(&ev.id) {
        audit.record(ev).await?;
    }
    state::delete(&store.state, state::INFLIGHT).await?;
    Ok(n)
}

/// The freeze window active at `now`, if any.
pub fn freeze_window(policy: &Policy, now: OffsetDateTime) -> Option<&FreezeWindow> {
    policy.freeze_windows.iter().find(|w| in_window(w, now))
}

fn in_window(w: &FreezeWindow, now: OffsetDateTime) -> bool {
    let rfc = &time::format_description::well_known::Rfc3339;
    if let (Some(from), Some(until)) = (&w.from, &w.until) {
        let (Ok(f), Ok(u)) = (
            OffsetDateTime::parse(from, rfc),
            OffsetDateTime::parse(until, rfc),
        ) else {
            return false;
        };
        return now >= f && now < u;
    }
    let (Some(start), Some(end)) = (&w.start, &w.end) else {
        return false;
    };
    let mins = |s: &str| -> Option<u32> {
        let (h, m) = s.split_once(':')?;
        Some(h.parse::<u32>().ok()? * 60 + m.parse::<u32>().ok()?)
    };
    let (Some(s), Some(e)) = (mins(start), mins(end)) else {
        return false;
    };
    let now = now.to_offset(time::UtcOffset::UTC);
    let t = now.hour() as u32 * 60 + now.minute() as u32;
    let day = weekday(now.weekday());
    let prev = weekday(now.weekday().previous());
    let on = |d: Weekday| w.days.is_empty() || w.days.contains(&d);
    if s <= e {
        on(day) && t >= s && t < e
    } else {
        // wraps past midnight: the window that started yesterday, or the one starting today
        (on(day) && t >= s) || (on(prev) && t < e)
    }
}

fn weekday(d: time::Weekday) -> Weekday {
    match d {
        time::Weekday::Monday => Weekday::Mon,
        time::Weekday::Tuesday => Weekday::Tue,
        time::Weekday::Wednesday => Weekday::Wed,
        time::Weekday::Thursday => Weekday::Thu,
        time::Weekday::Friday => Weekday::Fri,
        time::Weekday::Saturday => Weekday::Sat,
        time::Weekday::Sunday => Weekday::Sun,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn weekly(days: Vec<Weekday>, start: &str, end: &str) -> FreezeWindow {
        FreezeWindow {
            name: "w".into(),
            reason: "r".into(),
            days,
            start: Some(start.into()),
            end: Some(end.into()),
            from: None,
            until: None,
        }
    }

    #[test]
    fn weekly_windows_wrap_midnight() {
        // 2026-11-20 is a Friday.
        let w = weekly(vec![Weekday::Fri], "22:00", "06:00");
        assert!(in_window(&w, datetime!(2026-11-20 23:00 UTC)));
        assert!(in_window(&w, datetime!(2026-11-21 05:59 UTC)));
        assert!(!in_window(&w, datetime!(2026-11-21 06:00 UTC)));
        assert!(!in_window(&w, datetime!(2026-11-20 21:59 UTC)));
        let d = weekly(vec![], "09:00", "10:00");
        assert!(in_window(&d, datetime!(2026-11-22 09:30 UTC)));
        // Ending at 00:00: until midnight, the last minute of the day included.
        let e = weekly(vec![Weekday::Fri], "15:00", "00:00");
        assert!(in_window(&e, datetime!(2026-11-20 23:59 UTC)));
        assert!(!in_window(&e, datetime!(2026-11-21 00:00 UTC)));
        assert!(!in_window(&e, datetime!(2026-11-20 14:59 UTC)));
    }

    #[test]
    fn prepared_change_events_are_the_events_change_event_makes() {
        use crate::desired::plan::FieldChange;
        let mut plan = Plan::empty("dev", &"c".repeat(40));
        plan.id = "plan-0123456789ab".into();
        let change = |bucket, key: &str, action, rev: Option<u64>| plan::Change {
            bucket,
            key: key.into(),
            action,
            path: Some("config/tenants/a.toml".into()),
            from_digest: None,
            to_digest: Some("sha256:1".into()),
            from_revision: rev,
            fields: Vec::new(),
            actions: Vec::new(),
            reason: None,
            orphan: false,
        };
        let add = change(Bucket::Config, "tenant.a.tenant", Action::Add, Some(0));
        let mut heal = change(Bucket::Placement, "k\"é\\ 😀", Action::Change, Some(7));
        heal.from_digest = Some("sha256:0".into());
        heal.reason = Some("drift: \"x\"\n".into());
        heal.fields = ["/a", "/b~1c"]
            .map(|p| FieldChange {
                pointer: p.into(),
                old: None,
                new: None,
            })
            .into();
        let mut remove = change(Bucket::Access, "r", Action::Remove, Some(9));
        remove.path = None;
        remove.to_digest = None;
        remove.reason = Some("orphan".into());
        let unpinned = change(Bucket::Inventory, "site.x", Action::Add, None);
        // Kept whole (`bounded` would cut them): a long key, a long reason.
        let long_key = change(Bucket::Config, &"k".repeat(300), Action::Add, Some(0));
        let mut long_reason = change(Bucket::Config, "x", Action::Change, Some(3));
        long_reason.reason = Some("r".repeat(MAX_REASON + 1));
        let mut opts = ApplyOpts::new("ada");
        let bare = opts.clone();
        opts.causation_id = Some("tick-9".into());
        opts.site = Some("fra1".into());
        for (opts, client) in [(&opts, Some("10.0.0.1:5")), (&bare, None)] {
            let store = ("dev", "vakt_dev");
            let mut events = ChangeEvents::new(store, &plan, opts, "dev", client);
            for c in [&add, &heal, &remove, &unpinned, &long_key, &long_reason] {
                let got = events.prepare(c);
                let want =
                    Prepared::new(change_event(store, &plan, opts, c), "dev", client, REVISION);
                assert_eq!(got.id(), want.id());
                let (head, time) = ("sha256:abc", "2026-11-29T20:00:00.5Z");
                let (got, want) = (got.assemble(42, head, time), want.assemble(42, head, time));
                let whole = std::ptr::eq(c, &long_key) || std::ptr::eq(c, &long_reason);
                assert_eq!(got.is_none(), whole, "{}", c.key);
                assert_eq!(
                    got.map(|(j, h)| (String::from_utf8(j).unwrap(), h)),
                    want.map(|(j, h)| (String::from_utf8(j).unwrap(), h)),
                );
            }
        }
    }

    /// The longest reason an audit event keeps whole.
    const MAX_REASON: usize = crate::store::audit::MAX_REASON_CHARS;

    #[test]
    fn one_off_windows() {
        let w = FreezeWindow {
            name: "ye".into(),
            reason: "r".into(),
            days: vec![],
            start: None,
            end: None,
            from: Some("2026-12-18T00:00:00Z".into()),
            until: Some("2027-01-04T00:00:00Z".into()),
        };
        assert!(in_window(&w, datetime!(2026-12-24 12:00 UTC)));
        assert!(!in_window(&w, datetime!(2027-01-04 00:00 UTC)));
    }
}
