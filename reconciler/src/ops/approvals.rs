//! Approvals of gated plans. An apply that meets a gated action stores a pending approval with
//! the plan's content digest and an expiry; `vakt approve` or `vakt reject` decides it (who,
//! why, when: audited). The approval binds to the digest, so a changed plan needs a new one.

use crate::Error;
use crate::outcome::Decision;
use crate::store::Store;
use crate::store::audit::{Audit, AuditEvent, now_rfc3339};
use crate::store::state::{self, Approval};

/// Pending, approved and rejected plans, newest first.
pub async fn list(store: &Store) -> Result<Vec<Approval>, Error> {
    use futures_util::StreamExt;
    let mut keys = store
        .state
        .keys()
        .await
        .map_err(|e| crate::store::nats_err("list approvals", e))?;
    let mut out = Vec::new();
    while let Some(k) = keys.next().await {
        let k = k.map_err(|e| crate::store::nats_err("list approvals", e))?;
        if k.starts_with("approval.")
            && let Some((a, _)) = state::get::<Approval>(&store.state, &k).await?
        {
            out.push(a);
        }
    }
    out.sort_by(|a, b| b.requested_at.cmp(&a.requested_at));
    Ok(out)
}

/// Approves or rejects a pending plan.
pub async fn decide(
    store: &Store,
    audit: &mut Audit,
    plan_id: &str,
    approve: bool,
    actor: &str,
    reason: &str,
) -> Result<Approval, Error> {
    if reason.trim().is_empty() {
        return Err(Error::refused(
            crate::outcome::RefusalKind::ActionNotAllowed,
            "a reason is required (--reason \"…\")",
        ));
    }
    let key = format!("approval.{plan_id}");
    let Some((mut a, rev)) = state::get::<Approval>(&store.state, &key).await? else {
        let mut ev = AuditEvent::new(
            format!("{plan_id}/decide/{}", now_rfc3339()),
            &store.env,
            actor,
            if approve {
                "approval.approve"
            } else {
                "approval.reject"
            },
            "refused",
        );
        ev.plan_id = Some(plan_id.to_owned());
        ev.reason = Some(format!(
            "no plan {plan_id} waits for approval in {}",
            store.env
        ));
        audit.record(ev).await?;
        return Err(Error::refused(
            crate::outcome::RefusalKind::NotFound,
            format!(
                "no plan `{plan_id}` waits for approval in {}; `vakt status --env {}` shows the pending one",
                store.env, store.env
            ),
        ));
    };
    if a.decision != Decision::Pending {
        return Err(Error::refused(
            crate::outcome::RefusalKind::ActionNotAllowed,
            format!(
                "{plan_id} was already {} by {} ({})",
                a.decision,
                a.decided_by.clone().unwrap_or_default(),
                a.reason.clone().unwrap_or_default()
            ),
        ));
    }
    a.decision = if approve {
        Decision::Approved
    } else {
        Decision::Rejected
    };
    a.decided_by = Some(actor.to_owned());
    a.reason = Some(reason.to_owned());
    a.decided_at = Some(now_rfc3339());
    let b = serde_json::to_vec(&a).map_err(|e| Error::Other(e.to_string()))?;
    let pending = state::get::<Approval>(&store.state, &key)
        .await?
        .map(|(p, _)| p);
    let new_rev = store.state.update(&key, b.into(), rev).await.map_err(|e| {
        Error::refused(
            crate::outcome::RefusalKind::ActionNotAllowed,
            format!("{plan_id} changed while deciding ({e}); try again"),
        )
    })?;
    let mut ev = AuditEvent::new(
        format!("{plan_id}/{}", a.decision),
        &store.env,
        actor,
        if approve {
            "approval.approve"
        } else {
            "approval.reject"
        },
        a.decision.as_str(),
    );
    ev.plan_id = Some(plan_id.to_owned());
    ev.correlation_id = Some(plan_id.to_owned());
    ev.commit = Some(a.commit.clone());
    ev.reason = Some(reason.to_owned());
    ev.detail = Some(serde_json::json!({"digest": a.digest, "actions": a.actions}));
    if let Err(e) = audit.record(ev).await {
        // No decision without its audit event: the plan goes back to pending.
        let undone = match pending.map(|p| serde_json::to_vec(&p)) {
            Some(Ok(b)) => store.state.update(&key, b.into(), new_rev).await.is_ok(),
            _ => false,
        };
        return Err(Error::Other(format!(
            "the audit trail refused the event of this decision on {plan_id} ({e}); {}",
            if undone {
                "the plan is still pending, nothing was decided"
            } else {
                "the decision could not be undone: check the plan"
            }
        )));
    }
    Ok(a)
}

/// Where a gated plan stands.
#[derive(Debug, Clone, PartialEq)]
pub enum Gate {
    /// Approved for this digest and not expired: it may run.
    Approved,
    /// Approved, but the approval expired at this time.
    Expired(String),
    /// Rejected: by whom, why.
    Rejected(String, String),
    /// Waiting for a decision (the request is stored).
    Pending,
}

/// Looks up the approval of `request.plan_id`; when there is none, stores `request` (a pending
/// approval with the plan's digest and expiry) so `vakt approve` can decide it.
pub async fn gate(
    store: &Store,
    request: &Approval,
    now: time::OffsetDateTime,
) -> Result<Gate, crate::store::StoreError> {
    let key = format!("approval.{}", request.plan_id);
    Ok(match state::get::<Approval>(&store.state, &key).await? {
        Some((a, _)) if a.decision == Decision::Approved && a.digest == request.digest => {
            let valid = time::OffsetDateTime::parse(
                &a.expires_at,
                &time::format_description::well_known::Rfc3339,
            )
            .is_ok_and(|e| e > now);
            if valid {
                Gate::Approved
            } else {
                Gate::Expired(a.expires_at)
            }
        }
        Some((a, _)) if a.decision == Decision::Rejected => Gate::Rejected(
            a.decided_by.unwrap_or_default(),
            a.reason.unwrap_or_default(),
        ),
        Some(_) => Gate::Pending,
        None => {
            state::put(&store.state, &key, request).await?;
            Gate::Pending
        }
    })
}
