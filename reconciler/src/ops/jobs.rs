//! Jobs: multi-step operations kept in the `jobs` bucket so any replica can resume them.
//!
//! A placement move in a plan becomes a `tenant-migration` job instead of a direct write:
//! preflight (both nodes healthy, inflight below `[drain] max_inflight_to_start`) → drain on the
//! old shard's node → wait until drained, time-boxed by `drain_timeout` → compare-and-set write
//! of the placement key → reload on the new node → verify the new node serves the tenant.
//!
//! States: queued, running, succeeded, failed, retrying, cancelled, dead-lettered. A replica
//! claims a job by compare-and-set (owner + lease); a job whose lease lapsed is resumed by
//! another replica from the step it recorded. Steps are idempotent and the placement write is a
//! CAS on the revision seen when the job was created (skipped when the key already holds the new
//! value), so the move happens exactly once. Every transition is audited with the job id, the
//! plan as correlation id and the trigger as causation id.

use std::time::Duration;

use async_nats::jetstream::kv;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::desired::compile::{Bucket, Desired};
use crate::desired::plan::{Action, Plan};
use crate::fault;
use crate::ops::nodes::NodeClient;
use crate::store::audit::{Audit, AuditEvent, now_rfc3339};
use crate::store::{Store, StoreError, nats_err};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Retrying,
    Cancelled,
    DeadLettered,
}

impl JobState {
    /// No runner will pick the job up again.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled | JobState::DeadLettered
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Retrying => "retrying",
            JobState::Cancelled => "cancelled",
            JobState::DeadLettered => "dead-lettered",
        }
    }

    pub fn finished(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Cancelled | JobState::DeadLettered
        )
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Step {
    pub name: String,
    /// pending | running | done | failed | skipped
    pub state: String,
    #[serde(default)]
    pub started_at: Option<String>,
    #[serde(default)]
    pub finished_at: Option<String>,
    #[serde(default)]
    pub detail: Option<String>,
}

/// What a tenant migration moves.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Migration {
    pub tenant: String,
    pub service_kind: String,
    pub from_shard: String,
    pub to_shard: String,
    pub from_node: String,
    pub to_node: String,
    /// Placement key and the exact value to write, with the revision it must replace.
    pub key: String,
    pub value: String,
    pub digest: String,
    pub expected_revision: u64,
    pub commit: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Job {
    pub id: String,
    pub kind: String,
    pub env: String,
    pub state: JobState,
    pub migration: Migration,
    pub steps: Vec<Step>,
    pub attempts: u32,
    pub max_attempts: u32,
    /// Base of the exponential backoff between automatic retries.
    pub backoff_ms: u64,
    #[serde(default)]
    pub next_attempt_at: Option<String>,
    pub retryable: bool,
    #[serde(default)]
    pub error: Option<String>,
    pub correlation_id: String,
    #[serde(default)]
    pub causation_id: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub lease_until: Option<String>,
    #[serde(default)]
    pub cancel_requested: bool,
    /// Drain limits taken from `config/global/platform.toml` `[drain]` when the job was made.
    pub drain_timeout_ms: u64,
    pub poll_interval_ms: u64,
    pub max_inflight_to_start: u64,
    /// The runner's transitions saved with the job whose audit events are not yet confirmed
    /// (an outbox): sent right after the save, and, when the runner died first, sent by the
    /// replica that resumes the job (or found already recorded). So every saved transition has
    /// exactly one event, whatever moment a kill -9 picks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unaudited: Vec<PendingEvent>,
    /// Runner transitions so far: numbers their event ids (deterministic, so a resend is
    /// recognised).
    #[serde(default)]
    pub transitions: u64,
}

/// A runner transition waiting for its audit event (see [`Job::unaudited`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PendingEvent {
    pub id: String,
    /// The replica that made the transition.
    pub actor: String,
    pub action: String,
    pub outcome: String,
    #[serde(default)]
    pub reason: Option<String>,
    /// The audit stream's last sequence before the transition was saved: if the event was
    /// recorded, it is after this.
    pub after_seq: u64,
    pub detail: Value,
}

impl Job {
    /// A queued job with the drain limits of `config/global/platform.toml` `[drain]`.
    #[allow(clippy::too_many_arguments)]
    fn queued(
        id: String,
        kind: &str,
        env: &str,
        migration: Migration,
        steps: &[&str],
        drain: &Value,
        correlation_id: String,
        causation_id: Option<String>,
    ) -> Job {
        let now = now_rfc3339();
        Job {
            id,
            kind: kind.into(),
            env: env.to_owned(),
            state: JobState::Queued,
            migration,
            steps: steps
                .iter()
                .map(|s| Step {
                    name: (*s).into(),
                    state: "pending".into(),
                    started_at: None,
                    finished_at: None,
                    detail: None,
                })
                .collect(),
            attempts: 0,
            max_attempts: drain["max_attempts"].as_u64().unwrap_or(3) as u32,
            backoff_ms: 1000,
            next_attempt_at: None,
            retryable: true,
            error: None,
            correlation_id,
            causation_id,
            created_at: now.clone(),
            updated_at: now,
            owner: None,
            lease_until: None,
            cancel_requested: false,
            drain_timeout_ms: drain["drain_timeout"]
                .as_str()
                .and_then(ms)
                .unwrap_or(600_000),
            poll_interval_ms: drain["poll_interval"]
                .as_str()
                .and_then(ms)
                .unwrap_or(5_000),
            max_inflight_to_start: drain["max_inflight_to_start"].as_u64().unwrap_or(200),
            unaudited: Vec::new(),
            transitions: 0,
        }
    }
}

pub const STEPS: [&str; 6] = [
    "preflight",
    "drain",
    "wait-drained",
    "write-placement",
    "reload",
    "verify",
];

fn key(id: &str) -> String {
    format!("job.{id}")
}

fn ms(s: &str) -> Option<u64> {
    opsrepo::model::Duration::parse(s).map(|d| d.get().as_millis() as u64)
}

fn parse_time(s: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

fn rfc(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The shard → first node map and the drain thresholds of a desired state.
fn topology(d: &Desired) -> (std::collections::BTreeMap<String, String>, Value) {
    let mut shard_node = std::collections::BTreeMap::new();
    for (k, e) in d.bucket(Bucket::Inventory) {
        if let Some(id) = k.strip_prefix("shard.") {
            let v = e.spec_value();
            if let Some(n) = v["nodes"]
                .as_array()
                .and_then(|a| a.first())
                .and_then(Value::as_str)
            {
                shard_node.insert(id.to_owned(), n.to_owned());
            }
        }
    }
    let drain = d
        .get(Bucket::Config, "global.platform")
        .map(|e| e.spec_value()["drain"].clone())
        .unwrap_or(Value::Null);
    (shard_node, drain)
}

/// Splits placement moves out of a plan into migration jobs. Returns the jobs; the plan keeps
/// every other change.
pub fn migrations_of(plan: &mut Plan, desired: &Desired, causation: Option<String>) -> Vec<Job> {
    let (shard_node, drain) = topology(desired);
    let mut jobs = Vec::new();
    plan.changes.retain(|c| {
        let moves = c.bucket == Bucket::Placement
            && c.action == Action::Change
            && c.actions
                .contains(&opsrepo::model::GatedAction::PlacementMove);
        if !moves {
            return true;
        }
        let Some(e) = desired.get(c.bucket, &c.key) else {
            return true;
        };
        let new = e.spec_value();
        let old_shard = c
            .fields
            .iter()
            .find(|f| f.pointer == "/shard")
            .and_then(|f| f.old.as_ref())
            .and_then(Value::as_str)
            .map(str::to_owned);
        let (Some(from_shard), Some(to_shard)) =
            (old_shard, new["shard"].as_str().map(str::to_owned))
        else {
            return true;
        };
        let (Some(from_node), Some(to_node)) =
            (shard_node.get(&from_shard), shard_node.get(&to_shard))
        else {
            return true;
        };
        // One id per move (env, key, target value, revision it replaces): re-planning the same
        // move never makes a second job.
        let id = format!(
            "job-{}",
            &crate::desired::canon::digest(
                format!(
                    "{}:{}:{}:{}",
                    desired.env,
                    c.key,
                    e.digest,
                    c.from_revision.unwrap_or(0)
                )
                .as_bytes()
            )[7..19]
        );
        jobs.push(Job::queued(
            id,
            "tenant-migration",
            &desired.env,
            Migration {
                tenant: new["tenant"].as_str().unwrap_or_default().to_owned(),
                service_kind: new["service_kind"].as_str().unwrap_or_default().to_owned(),
                from_shard,
                to_shard,
                from_node: from_node.clone(),
                to_node: to_node.clone(),
                key: c.key.clone(),
                value: String::from_utf8_lossy(&e.value(&desired.env)).into_owned(),
                digest: e.digest.clone(),
                expected_revision: c.from_revision.unwrap_or(0),
                commit: desired.commit.clone(),
            },
            &STEPS,
            &drain,
            plan.id.clone(),
            causation.clone(),
        ));
        false
    });
    jobs
}

/// Steps of a node drain.
pub const NODE_DRAIN_STEPS: [&str; 3] = ["preflight", "drain-all", "wait-all-drained"];

/// A node drain: every tenant the node serves stops taking work and finishes what is inflight,
/// time-boxed, before the node is taken out (maintenance, decommission). Placement is not
/// changed: moving the tenants is a Git change whose moves become migration jobs. The job
/// reuses [`Migration`] with `from_node = to_node = node` and tenant `*`.
pub fn node_drain(
    desired: &Desired,
    node: &str,
    causation: Option<String>,
) -> Result<Job, crate::Error> {
    let nodes = crate::ops::nodes::declared_nodes(desired);
    let Some(d) = nodes.iter().find(|d| d.id == node) else {
        return Err(crate::Error::refused(
            crate::outcome::RefusalKind::NotFound,
            format!(
                "node `{node}` is not declared in the inventory of {}",
                desired.env
            ),
        ));
    };
    let (shard_node, drain) = topology(desired);
    let shard = shard_node
        .iter()
        .find(|(_, n)| *n == node)
        .map(|(s, _)| s.clone())
        .unwrap_or_default();
    let now = now_rfc3339();
    Ok(Job::queued(
        format!(
            "job-{}",
            &crate::desired::canon::digest(
                format!("{}:drain:{node}:{now}", desired.env).as_bytes()
            )[7..19]
        ),
        "node-drain",
        &desired.env,
        Migration {
            tenant: "*".into(),
            service_kind: d.service_kind.clone(),
            from_shard: shard.clone(),
            to_shard: shard,
            from_node: node.to_owned(),
            to_node: node.to_owned(),
            key: String::new(),
            value: String::new(),
            digest: String::new(),
            expected_revision: 0,
            commit: desired.commit.clone(),
        },
        &NODE_DRAIN_STEPS,
        &drain,
        format!("drain-{node}"),
        causation,
    ))
}

/// Reads a job and its revision.
pub async fn get(store: &Store, id: &str) -> Result<Option<(Job, u64)>, StoreError> {
    crate::store::state::get::<Job>(&store.jobs, &key(id)).await
}

/// Every job, newest first.
pub async fn list(store: &Store) -> Result<Vec<Job>, StoreError> {
    let mut out = Vec::new();
    let mut keys = match store.jobs.keys().await {
        Ok(k) => k,
        Err(e) => return Err(nats_err("list jobs", e)),
    };
    while let Some(k) = keys.next().await {
        let k = k.map_err(|e| nats_err("list jobs", e))?;
        if let Some(id) = k.strip_prefix("job.")
            && let Some((j, _)) = get(store, id).await?
        {
            out.push(j);
        }
    }
    out.sort_by(|a, b| b.created_at.cmp(&a.created_at));
    Ok(out)
}

/// Records a job transition; an operator action whose event cannot be recorded is undone.
async fn try_audit_job(
    audit: &mut Audit,
    actor: &str,
    j: &Job,
    action: &str,
    outcome: &str,
    reason: Option<String>,
) -> Result<(), StoreError> {
    let id = format!("{}/{action}/{}/{}", j.id, j.attempts, now_rfc3339());
    let ev = job_event(j, &id, actor, action, outcome, reason, job_detail(j));
    let _ = audit.refresh_head().await;
    audit.record(ev).await.map(|_| ())
}

/// What a job event says about the job's state after the transition.
fn job_detail(j: &Job) -> Value {
    serde_json::json!({
        "tenant": j.migration.tenant, "from": j.migration.from_node, "to": j.migration.to_node,
        "state": j.state, "attempts": j.attempts,
    })
}

fn job_event(
    j: &Job,
    id: &str,
    actor: &str,
    action: &str,
    outcome: &str,
    reason: Option<String>,
    detail: Value,
) -> AuditEvent {
    let mut ev = AuditEvent::new(id, &j.env, actor, action, outcome);
    ev.job_id = Some(j.id.clone());
    ev.correlation_id = Some(j.correlation_id.clone());
    ev.causation_id = j.causation_id.clone();
    ev.plan_id = Some(j.correlation_id.clone());
    ev.commit = Some(j.migration.commit.clone());
    ev.target = Some(format!("placement/{}", j.migration.key));
    ev.reason = reason;
    ev.detail = Some(detail);
    ev
}

/// Notes a runner transition of `j` in its outbox; the next [`save`] stores it with the job,
/// and [`flush`] then sends its event.
async fn note(
    audit: &Audit,
    me: &str,
    j: &mut Job,
    action: &str,
    outcome: &str,
    reason: Option<String>,
) -> Result<(), StoreError> {
    let after_seq = audit.last_seq().await?;
    j.transitions += 1;
    j.unaudited.push(PendingEvent {
        id: format!("{}/{}/{action}", j.id, j.transitions),
        actor: me.to_owned(),
        action: action.to_owned(),
        outcome: outcome.to_owned(),
        reason,
        after_seq,
        detail: job_detail(j),
    });
    Ok(())
}

/// Sends the events of `j`'s saved transitions, oldest first; each one sent leaves the outbox
/// (the next save stores that). With `check`, events a runner that died already sent are
/// found in the stream and not sent again. Returns whether the outbox is now empty; a
/// failure leaves the rest for the next save and flush.
async fn flush(audit: &mut Audit, j: &mut Job, check: bool) -> bool {
    if check && let Some(from) = j.unaudited.iter().map(|p| p.after_seq).min() {
        match audit.recorded_ids(from + 1).await {
            Ok(ids) => j.unaudited.retain(|p| !ids.contains(&p.id)),
            Err(e) => {
                tracing::warn!(job = %j.id, error = %e, "cannot check the job's unaudited transitions");
                return false;
            }
        }
    }
    while let Some(p) = j.unaudited.first().cloned() {
        let ev = job_event(
            j, &p.id, &p.actor, &p.action, &p.outcome, p.reason, p.detail,
        );
        let _ = audit.refresh_head().await;
        if let Err(e) = audit.record(ev).await {
            tracing::warn!(job = %j.id, action = %p.action, error = %e, "cannot audit job transition (kept in the job's outbox)");
            return false;
        }
        j.unaudited.remove(0);
    }
    true
}

/// Saves a job that reached a resting state with its outbox emptied by [`flush`].
async fn save_flushed(store: &Store, j: &mut Job, rev: u64) -> Result<(), StoreError> {
    let _ = save(store, j, rev).await?;
    Ok(())
}

/// Stores new jobs (an existing id is left alone: re-planning the same move is idempotent).
pub async fn enqueue(
    store: &Store,
    audit: &mut Audit,
    actor: &str,
    jobs: &[Job],
) -> Result<usize, StoreError> {
    let mut n = 0;
    for j in jobs {
        let b = serde_json::to_vec(j).map_err(|e| nats_err("encode job", e))?;
        match store.jobs.create(key(&j.id), b.into()).await {
            Ok(rev) => {
                // No job without its audit event: take the job back when the event fails.
                if let Err(e) = try_audit_job(audit, actor, j, "job.created", "queued", None).await
                {
                    let _ = store
                        .jobs
                        .delete_expect_revision(key(&j.id), Some(rev))
                        .await;
                    return Err(e);
                }
                n += 1;
            }
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
            Err(e) => return Err(nats_err("create job", e)),
        }
    }
    Ok(n)
}

/// CAS write of a job; `Ok(None)` when someone else changed it first. Fenced: a daemon that
/// lost its lease neither writes the job nor goes on to its next step.
async fn save(store: &Store, j: &mut Job, rev: u64) -> Result<Option<u64>, StoreError> {
    store.fenced()?;
    let kv = &store.jobs;
    j.updated_at = now_rfc3339();
    let b = serde_json::to_vec(j).map_err(|e| nats_err("encode job", e))?;
    match kv.update(key(&j.id), b.into(), rev).await {
        Ok(r) => Ok(Some(r)),
        Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
        Err(e) => Err(nats_err("write job", e)),
    }
}

/// Runs every job of `jobs` (a fresh [`list`]) that is due: queued, retrying past its backoff,
/// or running with a lapsed lease. Returns how many were worked on.
pub async fn run_due(
    store: &Store,
    audit: &mut Audit,
    nodes: &NodeClient,
    me: &str,
    lease: Duration,
    jobs: &[Job],
) -> Result<usize, StoreError> {
    let now = time::OffsetDateTime::now_utc();
    let mut n = 0;
    for j in jobs {
        let due = match j.state {
            JobState::Queued => true,
            JobState::Retrying => j
                .next_attempt_at
                .as_deref()
                .and_then(parse_time)
                .is_none_or(|t| t <= now),
            JobState::Running => j
                .lease_until
                .as_deref()
                .and_then(parse_time)
                .is_none_or(|t| t <= now),
            _ => false,
        };
        if due {
            run_one(store, audit, nodes, me, &j.id, lease).await?;
            n += 1;
        } else if !j.unaudited.is_empty() && j.state.is_final() {
            // Its runner died between the last save and its event.
            if let Some((mut fresh, rev)) = get(store, &j.id).await?
                && flush(audit, &mut fresh, true).await
            {
                save_flushed(store, &mut fresh, rev).await?;
            }
        }
    }
    Ok(n)
}

enum StepOutcome {
    Done(Option<String>),
    Skipped(String),
    Fail(String, bool),
}

/// Claims and runs one job to its next resting state.
pub async fn run_one(
    store: &Store,
    audit: &mut Audit,
    nodes: &NodeClient,
    me: &str,
    id: &str,
    lease: Duration,
) -> Result<(), StoreError> {
    let Some((mut j, mut rev)) = get(store, id).await? else {
        return Ok(());
    };
    let resumed = j.claim(me, time::OffsetDateTime::now_utc(), lease);
    // Events a previous runner saved but may not have sent are checked against the stream.
    let inherited = !j.unaudited.is_empty();
    note(
        audit,
        me,
        &mut j,
        if resumed {
            "job.resumed"
        } else {
            "job.started"
        },
        "running",
        None,
    )
    .await?;
    match save(store, &mut j, rev).await? {
        Some(r) => rev = r,
        None => return Ok(()), // another replica claimed it
    }
    fault::hold("job.saved", j.transitions as usize).await;
    flush(audit, &mut j, inherited).await;
    fault::hold("job.audited", j.transitions as usize).await;
    loop {
        if j.cancel_requested {
            j.state = JobState::Cancelled;
            j.owner = None;
            note(
                audit,
                me,
                &mut j,
                "job.cancelled",
                "cancelled",
                Some("cancel requested by an operator".into()),
            )
            .await?;
            return finish(store, audit, &mut j, rev).await;
        }
        let Some(i) = j.next_step() else {
            j.state = JobState::Succeeded;
            j.error = None;
            j.owner = None;
            note(audit, me, &mut j, "job.succeeded", "succeeded", None).await?;
            return finish(store, audit, &mut j, rev).await;
        };
        j.steps[i].state = "running".into();
        j.steps[i].started_at.get_or_insert_with(now_rfc3339);
        j.lease_until = Some(rfc(time::OffsetDateTime::now_utc() + lease));
        match save(store, &mut j, rev).await? {
            Some(r) => rev = r,
            None => return Ok(()),
        }
        let outcome = step(store, nodes, &j, i).await;
        // Re-read: an operator may have asked to cancel meanwhile.
        if let Some((fresh, r)) = get(store, id).await? {
            j.cancel_requested = fresh.cancel_requested;
            rev = r;
        }
        let name = j.steps[i].name.clone();
        match outcome_to_state(outcome) {
            (state, detail, None) => {
                j.steps[i].state = state.into();
                j.steps[i].detail = detail.clone();
                j.steps[i].finished_at = Some(now_rfc3339());
                note(
                    audit,
                    me,
                    &mut j,
                    &format!("job.step.{name}"),
                    state,
                    detail,
                )
                .await?;
                match save(store, &mut j, rev).await? {
                    Some(r) => rev = r,
                    None => return Ok(()),
                }
                fault::hold("job.saved", j.transitions as usize).await;
                flush(audit, &mut j, false).await;
                fault::hold("job.audited", j.transitions as usize).await;
            }
            (_, _, Some((why, retryable))) => {
                let (state, action) =
                    j.fail_attempt(i, &why, retryable, time::OffsetDateTime::now_utc());
                let error = j.error.clone();
                note(audit, me, &mut j, action, state.as_str(), error).await?;
                return finish(store, audit, &mut j, rev).await;
            }
        }
    }
}

/// Saves a job at a resting state (succeeded, cancelled, retrying, failed, dead-lettered),
/// sends its transition's event, and stores the emptied outbox.
async fn finish(store: &Store, audit: &mut Audit, j: &mut Job, rev: u64) -> Result<(), StoreError> {
    let Some(rev) = save(store, j, rev).await? else {
        return Ok(());
    };
    fault::hold("job.saved", j.transitions as usize).await;
    if flush(audit, j, false).await {
        save_flushed(store, j, rev).await?;
    }
    Ok(())
}

impl Job {
    /// The job state machine, part 1: a replica claims the job for one attempt (or resumes the
    /// attempt a lapsed owner left running). Returns whether it resumed.
    pub fn claim(&mut self, me: &str, now: time::OffsetDateTime, lease: Duration) -> bool {
        let resumed = self.state == JobState::Running;
        self.state = JobState::Running;
        self.owner = Some(me.to_owned());
        self.lease_until = Some(rfc(now + lease));
        if !resumed {
            self.attempts += 1;
        }
        resumed
    }

    /// The first step not done or skipped; `None` when the job has succeeded.
    pub fn next_step(&self) -> Option<usize> {
        self.steps
            .iter()
            .position(|s| s.state != "done" && s.state != "skipped")
    }

    /// The job state machine, part 2: step `i` failed. The attempt ends; the next one restarts
    /// from preflight, except that a placement already written is never written again. The job
    /// is cancelled if an operator asked, failed if the error is not retryable, dead-lettered
    /// at `max_attempts`, else retrying after an exponential backoff. Returns the new state and
    /// the audit action that records it.
    pub fn fail_attempt(
        &mut self,
        i: usize,
        why: &str,
        retryable: bool,
        now: time::OffsetDateTime,
    ) -> (JobState, &'static str) {
        let name = self.steps[i].name.clone();
        self.steps[i].detail = Some(why.to_owned());
        self.steps[i].finished_at = Some(rfc(now));
        for s in &mut self.steps[..i] {
            if s.name != "write-placement" {
                s.state = "pending".into();
            }
        }
        self.steps[i].state = "pending".into();
        self.error = Some(format!("{name}: {why}"));
        self.retryable = retryable;
        self.owner = None;
        self.lease_until = None;
        let (state, action) = if self.cancel_requested {
            (JobState::Cancelled, "job.cancelled")
        } else if !retryable {
            (JobState::Failed, "job.failed")
        } else if self.attempts >= self.max_attempts {
            (JobState::DeadLettered, "job.dead-lettered")
        } else {
            let wait = self.backoff_ms << (self.attempts.saturating_sub(1)).min(10);
            self.next_attempt_at = Some(rfc(now + Duration::from_millis(wait)));
            (JobState::Retrying, "job.retrying")
        };
        self.state = state;
        (state, action)
    }
}

fn outcome_to_state(o: StepOutcome) -> (&'static str, Option<String>, Option<(String, bool)>) {
    match o {
        StepOutcome::Done(d) => ("done", d, None),
        StepOutcome::Skipped(d) => ("skipped", Some(d), None),
        StepOutcome::Fail(why, retryable) => ("failed", None, Some((why, retryable))),
    }
}

/// One try of step `write-placement`: skipped if the placement already holds the new shard
/// (an earlier try's write whose acknowledgement was lost), else one compare-and-set. `Err` is
/// a NATS error worth trying again.
async fn write_placement_once(store: &Store, m: &Migration) -> Result<StepOutcome, String> {
    let current = store
        .kv(Bucket::Placement)
        .entry(&m.key)
        .await
        .map_err(|e| format!("read placement: {e}"))?;
    if let Some(e) = &current
        && e.operation == kv::Operation::Put
        && crate::desired::plan::view(&e.value).digest.as_deref() == Some(m.digest.as_str())
    {
        return Ok(StepOutcome::Skipped(
            "placement already holds the new shard".into(),
        ));
    }
    match store
        .cas(
            Bucket::Placement,
            &m.key,
            Some(m.value.clone().into()),
            m.expected_revision,
        )
        .await
    {
        Ok(r) => Ok(StepOutcome::Done(Some(format!(
            "placement {} → {} (revision {r})",
            m.key, m.to_shard
        )))),
        Err(e @ StoreError::Nats { .. }) => Err(e.to_string()),
        Err(e) => Ok(StepOutcome::Fail(e.to_string(), false)),
    }
}

async fn step(store: &Store, nodes: &NodeClient, j: &Job, i: usize) -> StepOutcome {
    if j.kind == "node-drain" {
        return node_drain_step(store, nodes, j, i).await;
    }
    let m = &j.migration;
    match j.steps[i].name.as_str() {
        "preflight" => {
            let mut problems = Vec::new();
            for n in [&m.from_node, &m.to_node] {
                match nodes.health(n).await {
                    Ok(true) => {}
                    Ok(false) => problems.push(format!("node {n} reports unhealthy")),
                    Err(e) => problems.push(e.to_string()),
                }
            }
            if problems.is_empty() {
                match nodes.tenant(&m.from_node, &m.tenant).await {
                    Ok(t) if t.inflight > j.max_inflight_to_start => problems.push(format!(
                        "tenant {} has {} inflight on {}, above max_inflight_to_start = {}",
                        m.tenant, t.inflight, m.from_node, j.max_inflight_to_start
                    )),
                    Ok(_) => {}
                    // Not served there (any more): nothing to drain.
                    Err(crate::ops::nodes::NodeError::UnknownTenant { .. }) => {}
                    Err(e) => problems.push(e.to_string()),
                }
            }
            if problems.is_empty() {
                StepOutcome::Done(Some(format!("{} and {} healthy", m.from_node, m.to_node)))
            } else {
                StepOutcome::Fail(format!("preflight blocked: {}", problems.join("; ")), true)
            }
        }
        "drain" => match nodes.drain(&m.from_node, &m.tenant).await {
            Ok(t) => StepOutcome::Done(Some(format!(
                "{} on {}: {} inflight",
                t.state, m.from_node, t.inflight
            ))),
            Err(crate::ops::nodes::NodeError::UnknownTenant { .. }) => {
                StepOutcome::Skipped(format!("{} does not serve {}", m.from_node, m.tenant))
            }
            Err(e) => StepOutcome::Fail(e.to_string(), true),
        },
        "wait-drained" => {
            let deadline = tokio::time::Instant::now() + Duration::from_millis(j.drain_timeout_ms);
            loop {
                match nodes.tenant(&m.from_node, &m.tenant).await {
                    Ok(t) if t.state == "drained" && t.inflight == 0 => {
                        return StepOutcome::Done(Some(format!("drained on {}", m.from_node)));
                    }
                    Ok(t) if t.state == "drained" => {
                        return StepOutcome::Fail(
                            format!(
                                "{} reports drained with {} still inflight; not trusted",
                                m.from_node, t.inflight
                            ),
                            true,
                        );
                    }
                    Ok(t) => {
                        if tokio::time::Instant::now() >= deadline {
                            return StepOutcome::Fail(
                                format!(
                                    "drain on {} did not converge within {} ms ({} still inflight); placement unchanged",
                                    m.from_node, j.drain_timeout_ms, t.inflight
                                ),
                                true,
                            );
                        }
                    }
                    Err(crate::ops::nodes::NodeError::UnknownTenant { .. }) => {
                        return StepOutcome::Done(Some(
                            "tenant no longer served on the old node".into(),
                        ));
                    }
                    Err(e) => return StepOutcome::Fail(e.to_string(), true),
                }
                if let Ok(Some((fresh, _))) = get(store, &j.id).await
                    && fresh.cancel_requested
                {
                    return StepOutcome::Fail(
                        "cancelled while waiting for the drain".into(),
                        false,
                    );
                }
                tokio::time::sleep(Duration::from_millis(j.poll_interval_ms.max(50))).await;
            }
        }
        "write-placement" => {
            // NATS errors here are often transient (a cluster electing a new stream leader
            // answers "no stream found" for a few seconds): the read and the compare-and-set are
            // tried again until a deadline. Each try first checks whether an earlier try's write
            // landed (its acknowledgement lost), so the placement is written at most once.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            loop {
                let transient = match write_placement_once(store, m).await {
                    Ok(outcome) => return outcome,
                    Err(transient) => transient,
                };
                if tokio::time::Instant::now() >= deadline {
                    return StepOutcome::Fail(transient, true);
                }
                tracing::debug!(job = %j.id, error = %transient, "write-placement: NATS not ready, trying again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        "reload" => match nodes.reload(&m.to_node).await {
            Ok(_) => StepOutcome::Done(Some(format!("{} reloaded", m.to_node))),
            Err(e) => StepOutcome::Fail(e.to_string(), true),
        },
        "verify" => {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            loop {
                match nodes.tenant(&m.to_node, &m.tenant).await {
                    Ok(t) if t.state == "active" => {
                        return StepOutcome::Done(Some(format!(
                            "{} serves {}",
                            m.to_node, m.tenant
                        )));
                    }
                    Ok(_) | Err(crate::ops::nodes::NodeError::UnknownTenant { .. })
                        if tokio::time::Instant::now() < deadline => {}
                    Ok(t) => {
                        return StepOutcome::Fail(
                            format!("{} reports {} for {}", m.to_node, t.state, m.tenant),
                            true,
                        );
                    }
                    Err(e) => {
                        return StepOutcome::Fail(format!("verify on {}: {e}", m.to_node), true);
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        other => StepOutcome::Fail(format!("unknown step {other}"), false),
    }
}

async fn node_drain_step(store: &Store, nodes: &NodeClient, j: &Job, i: usize) -> StepOutcome {
    let node = &j.migration.from_node;
    let served = match nodes.info(node).await {
        Ok(info) => info.tenants,
        Err(e) => return StepOutcome::Fail(format!("{} blocked: {e}", j.steps[i].name), true),
    };
    match j.steps[i].name.as_str() {
        "preflight" => match nodes.health(node).await {
            Ok(_) => StepOutcome::Done(Some(format!(
                "{node} healthy, serving {} tenant(s)",
                served.len()
            ))),
            Err(e) => StepOutcome::Fail(format!("preflight blocked: {e}"), true),
        },
        "drain-all" => {
            for t in &served {
                if let Err(e) = nodes.drain(node, t).await {
                    return StepOutcome::Fail(format!("drain {t}: {e}"), true);
                }
            }
            StepOutcome::Done(Some(format!("drain requested for {}", served.join(", "))))
        }
        "wait-all-drained" => {
            let deadline = tokio::time::Instant::now() + Duration::from_millis(j.drain_timeout_ms);
            loop {
                let mut pending = Vec::new();
                for t in &served {
                    match nodes.tenant(node, t).await {
                        Ok(s) if s.state == "drained" && s.inflight == 0 => {}
                        Ok(s) if s.state == "drained" => {
                            return StepOutcome::Fail(
                                format!(
                                    "{node} reports {t} drained with {} still inflight; not trusted",
                                    s.inflight
                                ),
                                true,
                            );
                        }
                        Ok(s) => pending.push(format!("{t} ({} inflight)", s.inflight)),
                        Err(crate::ops::nodes::NodeError::UnknownTenant { .. }) => {}
                        Err(e) => return StepOutcome::Fail(e.to_string(), true),
                    }
                }
                if pending.is_empty() {
                    return StepOutcome::Done(Some(format!(
                        "{} tenant(s) drained on {node}",
                        served.len()
                    )));
                }
                if tokio::time::Instant::now() >= deadline {
                    return StepOutcome::Fail(
                        format!(
                            "drain on {node} did not converge within {} ms: {}",
                            j.drain_timeout_ms,
                            pending.join(", ")
                        ),
                        true,
                    );
                }
                if let Ok(Some((fresh, _))) = get(store, &j.id).await
                    && fresh.cancel_requested
                {
                    return StepOutcome::Fail(
                        "cancelled while waiting for the drain".into(),
                        false,
                    );
                }
                tokio::time::sleep(Duration::from_millis(j.poll_interval_ms.max(50))).await;
            }
        }
        other => StepOutcome::Fail(format!("unknown step {other}"), false),
    }
}

/// Operator actions on a job.
pub async fn retry(
    store: &Store,
    audit: &mut Audit,
    id: &str,
    actor: &str,
    reason: &str,
) -> Result<Job, crate::Error> {
    change(store, audit, id, actor, reason, "job.retry", |j| {
        match j.state {
            JobState::Failed | JobState::DeadLettered | JobState::Retrying => {
                if !j.retryable && j.state == JobState::Failed {
                    return Err(format!(
                        "{} failed in a step that is not retryable ({})",
                        j.id,
                        j.error.clone().unwrap_or_default()
                    ));
                }
                j.state = JobState::Queued;
                j.max_attempts = j.max_attempts.max(j.attempts + 1);
                j.next_attempt_at = None;
                Ok(())
            }
            s => Err(format!(
                "{} is {}; only failed, retrying or dead-lettered jobs can be retried",
                j.id,
                s.as_str()
            )),
        }
    })
    .await
}

pub async fn cancel(
    store: &Store,
    audit: &mut Audit,
    id: &str,
    actor: &str,
    reason: &str,
) -> Result<Job, crate::Error> {
    change(store, audit, id, actor, reason, "job.cancel", |j| {
        if j.state.finished() {
            return Err(format!(
                "{} is already {}; nothing to cancel",
                j.id,
                j.state.as_str()
            ));
        }
        if j.steps
            .iter()
            .any(|s| s.name == "write-placement" && (s.state == "done" || s.state == "skipped"))
        {
            return Err(format!(
                "{} already wrote the placement; it can only finish (reload, verify)",
                j.id
            ));
        }
        if j.state == JobState::Running {
            j.cancel_requested = true;
        } else {
            j.state = JobState::Cancelled;
        }
        Ok(())
    })
    .await
}

async fn change(
    store: &Store,
    audit: &mut Audit,
    id: &str,
    actor: &str,
    reason: &str,
    action: &str,
    f: impl Fn(&mut Job) -> Result<(), String>,
) -> Result<Job, crate::Error> {
    if reason.trim().is_empty() {
        return Err(crate::Error::refused(
            crate::outcome::RefusalKind::ActionNotAllowed,
            "a reason is required (--reason \"…\")",
        ));
    }
    for _ in 0..5 {
        let Some((mut j, rev)) = get(store, id).await? else {
            return Err(crate::Error::refused(
                crate::outcome::RefusalKind::NotFound,
                format!("no job `{id}` in {}", store.env),
            ));
        };
        if let Err(why) = f(&mut j) {
            let mut ev = AuditEvent::new(
                format!("{id}/{action}/refused/{}", now_rfc3339()),
                &store.env,
                actor,
                action,
                "refused",
            );
            ev.job_id = Some(id.to_owned());
            ev.reason = Some(format!("{why} (asked: {reason})"));
            let _ = audit.refresh_head().await;
            audit.record(ev).await?;
            return Err(crate::Error::refused(
                crate::outcome::RefusalKind::ActionNotAllowed,
                why,
            ));
        }
        let before = j.clone();
        if let Some(new_rev) = save(store, &mut j, rev).await? {
            // No operator action without its audit event: undo the change when it fails.
            if let Err(e) = try_audit_job(
                audit,
                actor,
                &j,
                action,
                "accepted",
                Some(reason.to_owned()),
            )
            .await
            {
                let mut back = before;
                let undone = save(store, &mut back, new_rev).await;
                return Err(crate::Error::Other(format!(
                    "the audit trail refused the event of {action} on {id} ({e}); {}",
                    match undone {
                        Ok(Some(_)) => "the change was undone, nothing happened",
                        _ => "the change could not be undone: check the job",
                    }
                )));
            }
            return Ok(j);
        }
    }
    Err(crate::Error::refused(
        crate::outcome::RefusalKind::ActionNotAllowed,
        format!("{id} kept changing; try again"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(max_attempts: u32) -> Job {
        let m = Migration {
            tenant: "acme".into(),
            service_kind: "gateway".into(),
            from_shard: "gw-a".into(),
            to_shard: "gw-b".into(),
            from_node: "n1".into(),
            to_node: "n2".into(),
            key: "gateway.acme".into(),
            value: "{}".into(),
            digest: "sha256:x".into(),
            expected_revision: 7,
            commit: "c".repeat(40),
        };
        let drain = serde_json::json!({"max_attempts": max_attempts, "drain_timeout": "2m", "poll_interval": "250ms"});
        let mut j = Job::queued(
            "job-0123456789ab".into(),
            "tenant-migration",
            "dev",
            m,
            &STEPS,
            &drain,
            "plan-0123456789ab".into(),
            None,
        );
        j.backoff_ms = 1000;
        j
    }

    fn t0() -> time::OffsetDateTime {
        time::OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000)
    }

    #[test]
    fn drain_limits_are_read_from_the_config_durations() {
        let j = job(3);
        assert_eq!(j.drain_timeout_ms, 120_000);
        assert_eq!(j.poll_interval_ms, 250);
        assert_eq!(j.max_attempts, 3);
        assert_eq!(j.state, JobState::Queued);
        assert_eq!(j.next_step(), Some(0));
    }

    #[test]
    fn a_claim_counts_an_attempt_and_a_resume_does_not() {
        let mut j = job(3);
        assert!(!j.claim("r1", t0(), Duration::from_secs(30)));
        assert_eq!((j.attempts, j.state), (1, JobState::Running));
        assert_eq!(j.owner.as_deref(), Some("r1"));
        // Another replica takes over a running job whose lease lapsed: same attempt.
        assert!(j.claim("r2", t0(), Duration::from_secs(30)));
        assert_eq!(j.attempts, 1);
        assert_eq!(j.owner.as_deref(), Some("r2"));
    }

    #[test]
    fn a_failed_attempt_retries_with_backoff_then_dead_letters() {
        let mut j = job(3);
        for attempt in 1..=2u32 {
            j.claim("r1", t0(), Duration::from_secs(30));
            assert_eq!(j.attempts, attempt);
            let (state, action) = j.fail_attempt(1, "node n1 refused", true, t0());
            assert_eq!((state, action), (JobState::Retrying, "job.retrying"));
            let wait = time::Duration::milliseconds(1000 << (attempt - 1));
            assert_eq!(j.next_attempt_at, Some(rfc(t0() + wait)), "backoff doubles");
            assert_eq!(j.owner, None);
            assert_eq!(j.error.as_deref(), Some("drain: node n1 refused"));
        }
        j.claim("r1", t0(), Duration::from_secs(30));
        let (state, action) = j.fail_attempt(0, "still down", true, t0());
        assert_eq!(
            (state, action),
            (JobState::DeadLettered, "job.dead-lettered")
        );
        assert!(state.finished());
    }

    #[test]
    fn a_retry_restarts_from_preflight_but_never_rewrites_the_placement() {
        let mut j = job(5);
        j.claim("r1", t0(), Duration::from_secs(30));
        for s in &mut j.steps[..4] {
            s.state = "done".into();
        }
        // `reload` (index 4) fails after the placement was written.
        j.fail_attempt(4, "reload timed out", true, t0());
        let states: Vec<(&str, &str)> = j
            .steps
            .iter()
            .map(|s| (s.name.as_str(), s.state.as_str()))
            .collect();
        assert_eq!(
            states,
            vec![
                ("preflight", "pending"),
                ("drain", "pending"),
                ("wait-drained", "pending"),
                ("write-placement", "done"),
                ("reload", "pending"),
                ("verify", "pending"),
            ]
        );
        assert_eq!(j.next_step(), Some(0));
    }

    #[test]
    fn an_unretryable_failure_fails_and_a_cancel_wins_over_both() {
        let mut j = job(5);
        j.claim("r1", t0(), Duration::from_secs(30));
        assert_eq!(
            j.fail_attempt(0, "tenant unknown to node", false, t0()),
            (JobState::Failed, "job.failed")
        );
        assert!(!j.retryable);
        let mut j = job(1);
        j.claim("r1", t0(), Duration::from_secs(30));
        j.cancel_requested = true;
        assert_eq!(
            j.fail_attempt(0, "x", true, t0()),
            (JobState::Cancelled, "job.cancelled")
        );
    }

    #[test]
    fn a_job_with_every_step_done_or_skipped_has_no_next_step() {
        let mut j = job(3);
        for (i, s) in j.steps.iter_mut().enumerate() {
            s.state = if i % 2 == 0 { "done" } else { "skipped" }.into();
        }
        assert_eq!(j.next_step(), None);
    }
}
