//! Live snippets: the daemon's view of the environment in the shapes of `opsrepo::snippets`
//! (schemas under `schemas/snippets/`), written atomically to a directory and served at
//! `/snippets/<name>.json`. Every condition takes its escalation class, remediation mode and
//! runbook from the catalog entry that lists the condition's signal.

use std::path::Path;

use opsrepo::load::Model;
use opsrepo::model::{EscalationClass, RemediationMode};
use opsrepo::snippets::{
    Condition, ConditionKind, DecisionLevel, Event, InventoryItem, InventoryKind, Recoverable,
    Snapshot, SnippetName, SnippetSource, Status as SnipStatus, TrustLevel,
};

use crate::ops::nodes::{Observation, Trust};
use crate::store::audit::AuditEvent;
use crate::store::state::{Approval, Status};

/// What the daemon knows when it writes snippets.
pub struct Inputs<'a> {
    pub model: &'a Model,
    pub env: &'a str,
    pub status: &'a Status,
    pub observations: &'a [Observation],
    pub events: &'a [AuditEvent],
    pub approvals: &'a [Approval],
    pub jobs: &'a [crate::ops::jobs::Job],
    pub discovered: &'a [(
        crate::ops::inventory::Discovered,
        Option<crate::ops::inventory::Rejected>,
    )],
    pub generated_at: &'a str,
    /// The `backup.last` record of the state bucket (written by `vakt backup`).
    pub last_backup: Option<&'a serde_json::Value>,
    /// Alert sources (`--alertmanager`) with their last answers; empty without them.
    pub alert_sources: &'a [crate::daemon::alerts::Source],
    /// How far before a condition started its related vakt changes are looked for.
    pub change_window: std::time::Duration,
    /// Measured cross-site links (`--site`); `None` without a site.
    pub site_links: Option<&'a crate::daemon::sitelinks::View>,
    /// The metrics backend and its last answer (`--metrics-backend`); `None` without one.
    pub metrics_backend: Option<&'a crate::daemon::metrics_source::Backend>,
    /// The daemon's own counters as figures (the `in_memory` mode).
    pub in_process: &'a [opsrepo::snippets::MetricFigure],
    /// When the daemon started (the in-process figures' window).
    pub started_at: &'a str,
}

/// The catalog entry for a signal: (runbook id, escalation class, remediation mode).
fn runbook_for(model: &Model, signal: &str) -> (String, EscalationClass, RemediationMode) {
    for c in &model.catalogs {
        for r in &c.spec.runbooks {
            if r.signals.iter().any(|s| s == signal) {
                return (r.id.clone(), r.escalation_class, r.remediation_mode);
            }
        }
    }
    (
        format!("unmapped.{signal}"),
        EscalationClass::ActionRequired,
        RemediationMode::Manual,
    )
}

fn condition(
    model: &Model,
    env: &str,
    id: String,
    kind: ConditionKind,
    signal: &str,
    title: String,
) -> Condition {
    let (runbook, escalation_class, remediation_mode) = runbook_for(model, signal);
    let owner =
        crate::daemon::alerts::entry_for_signal(model, signal).map(|e| e.owner_team.clone());
    Condition {
        id,
        kind,
        title,
        escalation_class,
        remediation_mode,
        runbook,
        since: None,
        env: Some(env.to_owned()),
        site: None,
        tenant: None,
        resource: None,
        task_id: None,
        correlation_id: None,
        detail: None,
        governance_gap: owner.is_none(),
        owner,
        changes: Vec::new(),
    }
}

/// Tenant named by an audit target (`<bucket>/tenant.<t>.<name>` or `<bucket>/<kind>.<t>`).
fn tenant_of(target: &str) -> Option<String> {
    let (bucket, key) = target.split_once('/')?;
    let parts: Vec<&str> = key.split('.').collect();
    if bucket.ends_with("_config") && parts.first() == Some(&"tenant") {
        return parts.get(1).map(|s| (*s).to_owned());
    }
    if bucket.ends_with("_placement") && parts.len() == 2 {
        return Some(parts[1].to_owned());
    }
    None
}

/// Builds every snippet from live inputs on top of the repo's declared state.
pub fn live(i: &Inputs<'_>) -> Snapshot {
    let mut s = opsrepo::snippets::snapshot(i.model, i.generated_at);
    let env = i.env;
    let mut conditions: Vec<Condition> = Vec::new();

    // Reconciler conditions.
    if let Some(r) = &i.status.refused {
        let kind = if r.kind.waits_for_approval() {
            ConditionKind::PendingApproval
        } else {
            ConditionKind::Alert
        };
        let signal = r.kind.signal();
        let mut c = condition(
            i.model,
            env,
            format!("refused.{env}.{}", &r.commit[..r.commit.len().min(12)]),
            kind,
            signal,
            format!(
                "Commit {} not applied to {env}",
                &r.commit[..r.commit.len().min(12)]
            ),
        );
        c.since = Some(r.at.clone());
        c.resource = Some(format!("commit:{}", r.commit));
        c.detail = Some(match r.findings.first() {
            Some(f) => format!("{} First finding: {f}", r.reason),
            None => r.reason.clone(),
        });
        conditions.push(c);
    }
    if i.status.state == crate::outcome::SyncState::Failed
        && let Some(e) = &i.status.last_error
    {
        let mut c = condition(
            i.model,
            env,
            format!("apply-failed.{env}"),
            ConditionKind::FailedJob,
            "vakt_apply_failed",
            format!("Reconcile of {env} failed"),
        );
        c.detail = Some(e.clone());
        conditions.push(c);
    }
    if i.status.drifted_keys > 0 {
        let mut c = condition(
            i.model,
            env,
            format!("drift.{env}"),
            ConditionKind::Drift,
            "vakt_drift_detected",
            format!(
                "{} KV key(s) in {env} differ from the applied commit",
                i.status.drifted_keys
            ),
        );
        c.detail = Some(format!(
            "run `vakt drift --env {env}` for each key and its last writer"
        ));
        conditions.push(c);
    }
    for a in i
        .approvals
        .iter()
        .filter(|a| a.decision == crate::outcome::Decision::Pending)
    {
        let mut c = condition(
            i.model,
            env,
            format!("approval.{}", a.plan_id),
            ConditionKind::PendingApproval,
            "vakt_approval_pending",
            format!(
                "Plan {} waits for approval ({})",
                a.plan_id,
                a.actions.join(", ")
            ),
        );
        c.since = Some(a.requested_at.clone());
        c.correlation_id = Some(a.plan_id.clone());
        c.resource = Some(format!("commit:{}", a.commit));
        c.detail = Some(format!(
            "`vakt approve {} --env {env} --reason …` (expires {})",
            a.plan_id, a.expires_at
        ));
        conditions.push(c);
    }

    // Nodes: health, versions, trust.
    for n in &mut s.health.nodes {
        if let Some(o) = i.observations.iter().find(|o| o.id == n.id) {
            n.status = if o.up {
                SnipStatus::Ok
            } else {
                SnipStatus::Down
            };
            n.observed_version = o.info.as_ref().map(|x| x.version.clone());
        }
    }
    for svc in &mut s.health.services {
        let members: Vec<_> = s
            .health
            .nodes
            .iter()
            .filter(|n| n.site == svc.site && n.service_kind == svc.service_kind)
            .collect();
        let up = members
            .iter()
            .filter(|n| n.status == SnipStatus::Ok)
            .count() as u32;
        let observed = members.iter().any(|n| n.status != SnipStatus::Unknown);
        svc.nodes_up = up;
        svc.status = if !observed {
            SnipStatus::Unknown
        } else if up == svc.nodes_total {
            SnipStatus::Ok
        } else if up == 0 {
            SnipStatus::Down
        } else {
            SnipStatus::Degraded
        };
    }
    let mut node_conditions = Vec::new();
    for o in i.observations {
        let site = o.declared.as_ref().map(|d| d.site.clone());
        let problems = [
            (!o.up).then_some((
                "node-down",
                ConditionKind::UnhealthyNode,
                "vakt_node_unhealthy",
                "is not answering its health check",
            )),
            (o.trust == Trust::Conflicting).then_some((
                "inventory-conflict",
                ConditionKind::Alert,
                "inventory_trust_conflict",
                "disagrees with the inventory",
            )),
        ];
        for (prefix, kind, signal, what) in problems.into_iter().flatten() {
            let mut c = condition(
                i.model,
                env,
                format!("{prefix}.{}", o.id),
                kind,
                signal,
                format!("Node {} {what}", o.id),
            );
            c.site = site.clone();
            c.resource = Some(format!("node:{}", o.id));
            c.detail = o.detail.clone();
            node_conditions.push(c);
        }
        if let Some(item) = s
            .inventory
            .declared
            .iter_mut()
            .find(|it| it.kind == InventoryKind::Node && it.id == o.id)
        {
            item.trust = match o.trust {
                Trust::Confirmed => TrustLevel::Confirmed,
                Trust::Conflicting => TrustLevel::Conflicting,
                Trust::DeclaredOnly => TrustLevel::DeclaredOnly,
                Trust::DiscoveredOnly => TrustLevel::DiscoveredOnly,
            };
            if let Some(d) = &o.detail {
                item.detail = Some(d.clone());
            }
        }
    }
    for (d, rejected) in i.discovered {
        let mut detail = format!(
            "answers at the admin URL of {}: {}",
            d.declared_as, d.detail
        );
        if let Some(r) = rejected {
            detail.push_str(&format!(
                "; rejected as untrusted by {} ({})",
                r.by, r.reason
            ));
        } else {
            detail.push_str(&format!(
                "; pending: `vakt inventory adopt {}` or `reject`",
                d.node_id
            ));
        }
        s.inventory.discovered.push(InventoryItem {
            id: d.node_id.clone(),
            kind: InventoryKind::Node,
            site: Some(d.site.clone()),
            trust: if d.node_id == d.declared_as {
                TrustLevel::Conflicting
            } else {
                TrustLevel::DiscoveredOnly
            },
            detail: Some(detail),
        });
    }
    s.health.conditions = node_conditions.clone();
    s.inventory.conditions = node_conditions
        .iter()
        .filter(|c| c.id.starts_with("inventory-conflict."))
        .cloned()
        .collect();
    conditions.extend(node_conditions);

    // Sites: degraded when some of their observed nodes are down.
    let mut sites_degraded = 0;
    for site in &mut s.sites.sites {
        let nodes: Vec<_> = s
            .health
            .nodes
            .iter()
            .filter(|n| n.site == site.id)
            .collect();
        let observed: Vec<_> = nodes
            .iter()
            .filter(|n| n.status != SnipStatus::Unknown)
            .collect();
        let up = observed
            .iter()
            .filter(|n| n.status == SnipStatus::Ok)
            .count();
        site.status = if observed.is_empty() {
            SnipStatus::Unknown
        } else if up == observed.len() {
            SnipStatus::Ok
        } else if up == 0 {
            SnipStatus::Down
        } else {
            SnipStatus::Degraded
        };
        if matches!(site.status, SnipStatus::Degraded | SnipStatus::Down) {
            sites_degraded += 1;
        }
    }

    // Cross-site links measured by this site's leader; recent failovers from the audit stream.
    if let Some(view) = i.site_links {
        for p in crate::daemon::sitelinks::overlay(view, &mut s.sites) {
            let mut c = condition(
                i.model,
                env,
                format!("site-link.{env}.{}.{}", p.from, p.to),
                ConditionKind::DegradedSiteLink,
                "vakt_site_link_degraded",
                p.title,
            );
            c.site = Some(p.from.clone());
            c.resource = Some(format!("site-link:{}->{}", p.from, p.to));
            c.since = p.since;
            c.detail = Some(p.detail);
            s.sites.conditions.push(c.clone());
            conditions.push(c);
        }
    }
    s.sites.failovers = crate::daemon::sitelinks::failovers(i.events);

    // Tasks: the migration jobs, with what an operator may do next; failed and dead-lettered
    // ones are conditions too.
    use crate::ops::jobs::JobState as J;
    use opsrepo::snippets::{Task, TaskAction, TaskState};
    s.tasks.tasks = i
        .jobs
        .iter()
        .map(|j| {
            let state = match j.state {
                J::Queued => TaskState::Queued,
                J::Running => TaskState::Running,
                J::Succeeded => TaskState::Succeeded,
                J::Failed => TaskState::Failed,
                J::Retrying => TaskState::Retried,
                J::Cancelled => TaskState::Cancelled,
                J::DeadLettered => TaskState::DeadLettered,
            };
            let mut allowed = vec![TaskAction::Inspect];
            if matches!(j.state, J::Failed | J::Retrying | J::DeadLettered) && j.retryable {
                allowed.push(TaskAction::Retry);
            }
            if !j.state.finished()
                && !j
                    .steps
                    .iter()
                    .any(|st| st.name == "write-placement" && st.state == "done")
            {
                allowed.push(TaskAction::Cancel);
            }
            Task {
                id: j.id.clone(),
                kind: j.kind.clone(),
                state,
                env: Some(j.env.clone()),
                site: None,
                tenant: Some(j.migration.tenant.clone()),
                resource: Some(format!("placement/{}", j.migration.key)),
                correlation_id: Some(j.correlation_id.clone()),
                started_at: Some(j.created_at.clone()),
                updated_at: Some(j.updated_at.clone()),
                attempts: j.attempts,
                error: j.error.clone(),
                runbook: Some(runbook_for(i.model, "tenant_drain_not_converging").0),
                allowed_actions: allowed,
            }
        })
        .collect();
    for j in i
        .jobs
        .iter()
        .filter(|j| matches!(j.state, J::Failed | J::DeadLettered))
    {
        let signal = if j.state == J::DeadLettered {
            "vakt_job_dead_lettered"
        } else {
            "tenant_drain_not_converging"
        };
        let mut c = condition(
            i.model,
            env,
            format!("job.{}", j.id),
            ConditionKind::FailedJob,
            signal,
            format!(
                "Migration of {} ({} → {}) {}",
                j.migration.tenant,
                j.migration.from_shard,
                j.migration.to_shard,
                j.state.as_str()
            ),
        );
        c.tenant = Some(j.migration.tenant.clone());
        c.task_id = Some(j.id.clone());
        c.correlation_id = Some(j.correlation_id.clone());
        c.resource = Some(format!("placement/{}", j.migration.key));
        c.detail = j.error.clone();
        conditions.push(c);
    }

    // Events: newest first; API denials are left out (aggregated noise next to real events;
    // `GET /api/v1/events?include_denials=true` lists them).
    s.events.events = i
        .events
        .iter()
        .rev()
        .filter(|e| e.action != "api.denied")
        .take(200)
        .map(|e| Event {
            id: e.id.clone(),
            at: e.time.clone(),
            kind: e.action.clone(),
            message: format!(
                "{} {}{}{}",
                e.action,
                e.outcome,
                e.target
                    .as_ref()
                    .map(|t| format!(" {t}"))
                    .unwrap_or_default(),
                e.reason
                    .as_ref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            ),
            task_id: e.job_id.clone(),
            correlation_id: e.correlation_id.clone(),
            causation_id: e.causation_id.clone(),
            resource: e.target.clone(),
            tenant: e.target.as_deref().and_then(tenant_of),
            site: e.site.clone(),
            actor: Some(e.actor.clone()),
        })
        .collect();

    // DR: the store vakt backs up itself (backup method `vakt-backup`) gets its last backup.
    let now = time::OffsetDateTime::parse(
        i.generated_at,
        &time::format_description::well_known::Rfc3339,
    )
    .ok();
    let mut dr_conditions = Vec::new();
    for st in &mut s.dr.stores {
        let is_vakt = i
            .model
            .dr_stores
            .iter()
            .any(|d| d.spec.id == st.id && d.spec.backup.method == "vakt-backup");
        let Some(at) = i
            .last_backup
            .filter(|_| is_vakt)
            .and_then(|b| b["at"].as_str())
        else {
            continue;
        };
        st.last_success_at = Some(at.to_owned());
        let age = time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
            .ok()
            .zip(now)
            .map(|(t, n)| n - t);
        let max = opsrepo::model::Duration::parse(&st.max_backup_age).map(|d| d.get());
        let fresh = match (age, max) {
            (Some(a), Some(m)) => a <= time::Duration::try_from(m).unwrap_or(time::Duration::MAX),
            _ => false,
        };
        st.recoverable = if fresh {
            Recoverable::Yes
        } else {
            Recoverable::No
        };
        if !fresh {
            let mut c = condition(
                i.model,
                env,
                format!("backup.{env}.{}", st.id),
                ConditionKind::StaleBackup,
                "vakt_backup_stale",
                format!(
                    "Last backup of {} is older than {} (taken {at})",
                    st.name, st.max_backup_age
                ),
            );
            c.resource = Some(st.id.clone());
            c.since = Some(at.to_owned());
            dr_conditions.push(c);
        }
    }
    s.dr.conditions.extend(dr_conditions.iter().cloned());
    conditions.extend(dr_conditions);

    // Ops metrics source: a backend whose query path fails is a condition (alerts still flow,
    // so it needs an operator, not a page).
    let metrics_source = crate::daemon::metrics_source::view(
        i.metrics_backend,
        i.in_process,
        i.started_at,
        &runbook_for(i.model, crate::daemon::metrics_source::DEGRADED_SIGNAL).0,
    );
    if metrics_source.degraded {
        let host = metrics_source.backend_host.clone().unwrap_or_default();
        let mut c = condition(
            i.model,
            env,
            format!("metrics-backend.{env}"),
            ConditionKind::Alert,
            crate::daemon::metrics_source::DEGRADED_SIGNAL,
            format!(
                "Metrics backend {host} unreachable: the header shows in-process counters since the daemon started"
            ),
        );
        c.since = metrics_source.degraded_since.clone();
        c.resource = Some(format!("metrics-backend:{host}"));
        c.detail = Some(format!(
            "{} (24 h totals from the last good answer are shown stale{})",
            metrics_source.error.as_deref().unwrap_or("query failed"),
            metrics_source
                .last_success_at
                .as_deref()
                .map(|t| format!(", from {t}"))
                .unwrap_or_default()
        ));
        conditions.push(c);
    }
    s.summary.metrics_source = Some(metrics_source);

    // "What changed?": every condition about a tenant, site or node lists the vakt changes that
    // touched it before it started.
    let now = now.unwrap_or_else(time::OffsetDateTime::now_utc);
    let changes = crate::daemon::alerts::changes(i.events);
    for c in &mut conditions {
        let scope = crate::daemon::alerts::Scope {
            tenant: c.tenant.clone(),
            service: None,
            site: c.site.clone(),
            node: c
                .resource
                .as_deref()
                .and_then(|r| r.strip_prefix("node:"))
                .map(str::to_owned),
        };
        let started = c
            .since
            .as_deref()
            .and_then(|t| {
                time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
            })
            .unwrap_or(now);
        c.changes = crate::daemon::alerts::related(&changes, &scope, started, i.change_window);
    }

    // Live alerts (they carry their own related changes).
    let (alerts, alert_conditions) =
        crate::daemon::alerts::build(&crate::daemon::alerts::ViewInputs {
            model: i.model,
            env,
            sources: i.alert_sources,
            changes: &changes,
            window: i.change_window,
            now,
        });
    conditions.extend(alert_conditions);
    let sources_down = alerts
        .sources
        .iter()
        .filter(|s| s.state != opsrepo::snippets::SourceState::Live)
        .count() as u32;

    // Decision header.
    conditions.sort_by_key(|c| match c.escalation_class {
        EscalationClass::Urgent => 0,
        EscalationClass::ActionRequired => 1,
        EscalationClass::Informational => 2,
    });
    let count = |e: EscalationClass| {
        conditions
            .iter()
            .filter(|c| c.escalation_class == e)
            .count() as u32
    };
    s.summary.source = SnippetSource::Live;
    s.summary.env = Some(env.to_owned());
    s.summary.commit = i.status.applied_commit.clone();
    s.summary.counts.urgent = count(EscalationClass::Urgent);
    s.summary.counts.action_required = count(EscalationClass::ActionRequired);
    s.summary.counts.informational = count(EscalationClass::Informational);
    s.summary.counts.pending_approvals = i
        .approvals
        .iter()
        .filter(|a| a.decision == crate::outcome::Decision::Pending)
        .count() as u32;
    s.summary.counts.sites_degraded = sites_degraded;
    s.summary.counts.tasks_failed = u32::from(i.status.state == crate::outcome::SyncState::Failed)
        + i.jobs.iter().filter(|j| j.state == J::Failed).count() as u32;
    s.summary.counts.tasks_running = i
        .jobs
        .iter()
        .filter(|j| matches!(j.state, J::Running | J::Queued | J::Retrying))
        .count() as u32;
    s.summary.counts.dead_lettered =
        i.jobs.iter().filter(|j| j.state == J::DeadLettered).count() as u32;
    let (level, headline) = if s.summary.counts.urgent > 0 {
        (
            DecisionLevel::Urgent,
            format!(
                "{} urgent condition(s) in {env}: act now",
                s.summary.counts.urgent
            ),
        )
    } else if s.summary.counts.action_required > 0 {
        (
            DecisionLevel::Attention,
            format!(
                "{} condition(s) in {env} need an operator",
                s.summary.counts.action_required
            ),
        )
    } else {
        (
            DecisionLevel::Ok,
            format!(
                "{env} is in sync at {}; nothing needs a human",
                i.status
                    .applied_commit
                    .as_deref()
                    .map(|c| &c[..c.len().min(12)])
                    .unwrap_or("(nothing applied)")
            ),
        )
    };
    // Never "nothing needs a human" from partial data.
    let (level, mut headline) = if sources_down > 0 && level == DecisionLevel::Ok {
        (
            DecisionLevel::Attention,
            format!(
                "{sources_down} alert source(s) cannot be read: what you see may be incomplete"
            ),
        )
    } else {
        (level, headline)
    };
    if !alerts.sources.is_empty() {
        let live: Vec<&str> = alerts
            .sources
            .iter()
            .filter(|s| s.state == opsrepo::snippets::SourceState::Live)
            .map(|s| s.name.as_str())
            .collect();
        let down: Vec<&str> = alerts
            .sources
            .iter()
            .filter(|s| s.state != opsrepo::snippets::SourceState::Live)
            .map(|s| s.name.as_str())
            .collect();
        headline.push_str(&format!(
            " · alert sources live: {}",
            if live.is_empty() {
                "none".to_owned()
            } else {
                live.join(", ")
            }
        ));
        if !down.is_empty() {
            headline.push_str(&format!(" · not answering: {}", down.join(", ")));
        }
    }
    s.summary.counts.alerts_firing = alerts.firing_total;
    s.summary.counts.alerts_silenced = alerts.silenced_total;
    s.summary.counts.alert_sources_down = sources_down;
    s.summary.alert_sources = alerts.sources.clone();
    s.actions.alerts = alerts;
    s.summary.decision.level = level;
    s.summary.decision.headline = headline;
    s.actions.conditions = conditions;
    s
}

/// Writes every snippet as `<dir>/<name>.json`, each atomically (temporary file + rename).
pub fn write_dir(dir: &Path, snap: &Snapshot) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for name in SnippetName::ALL {
        let body = serde_json::to_vec_pretty(&snap.to_value(name)).unwrap_or_default();
        let path = dir.join(name.file_name());
        let tmp = dir.join(format!(".{}.tmp", name.file_name()));
        std::fs::write(&tmp, &body)?;
        std::fs::rename(&tmp, &path)?;
    }
    Ok(())
}
