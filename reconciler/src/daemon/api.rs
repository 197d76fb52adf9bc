//! The operator HTTP API on the daemon (`/api/v1/...`, documented in `openapi/operator-api.yaml`
//! and served at `/api/v1/openapi.yaml`).
//!
//! Token auth: bearer tokens come from a file outside the repo (`--api-tokens`), one
//! `<token> <kind>:<name>` per line (`kind` = user, group or service-account). Authorization
//! uses the roles and bindings of `access/` at the applied commit: a subject's bindings whose
//! scope is global or this environment (and not expired) give roles, roles give permissions
//! (`ops.jobs.retry`, `ops.*`). Deny by default. Every mutating call needs a `reason` and is
//! audited; refusals (unknown token, missing role, bad request) are audited too.

// Handlers return `Result<_, Response>` so a refusal is an early `return`; the size of
// `Response` does not matter on this path.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::store::Store;
use crate::store::audit::{Audit, AuditEvent, now_rfc3339};

pub use super::access::{Access, Tokens, grants};

pub const OPENAPI: &str = include_str!("../../../openapi/operator-api.yaml");

pub struct ApiState {
    pub store: Store,
    pub audit: tokio::sync::Mutex<Audit>,
    pub env: String,
    pub tokens: Tokens,
    pub shared: Arc<super::shared::Shared>,
}

type S = State<Arc<ApiState>>;

fn err(code: StatusCode, msg: impl Into<String>) -> Response {
    (code, Json(json!({"error": msg.into()}))).into_response()
}

/// Authenticates and authorizes; refusals are audited.
async fn authorize(
    st: &ApiState,
    headers: &HeaderMap,
    perm: &str,
    what: &str,
) -> Result<String, Response> {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let subject = token.and_then(|t| st.tokens.0.get(t).cloned());
    let (deny, code, actor) = match &subject {
        None => (
            Some(if token.is_some() {
                "unknown token"
            } else {
                "no bearer token"
            }),
            StatusCode::UNAUTHORIZED,
            "anonymous".to_owned(),
        ),
        Some(s) => {
            let (ok, loaded) = st
                .shared
                .access
                .lock()
                .map(|a| (a.allows(s, &st.env, perm), a.is_loaded()))
                .unwrap_or((false, false));
            if ok {
                (None, StatusCode::OK, s.clone())
            } else if !loaded {
                (
                    Some(
                        "no roles yet (they come from access/ of the applied commit, and nothing is applied yet)",
                    ),
                    StatusCode::FORBIDDEN,
                    s.clone(),
                )
            } else {
                (Some("no role grants it"), StatusCode::FORBIDDEN, s.clone())
            }
        }
    };
    match deny {
        None => Ok(actor),
        Some(why) => {
            let mut ev = AuditEvent::new(
                format!("api/denied/{}", now_rfc3339()),
                &st.env,
                &actor,
                "api.denied",
                "refused",
            );
            ev.target = Some(what.to_owned());
            ev.reason = Some(format!("{perm}: {why}"));
            let mut a = st.audit.lock().await;
            let _ = a.refresh_head().await;
            let _ = a.record(ev).await;
            Err(err(code, format!("{why}: `{perm}` is required for {what}")))
        }
    }
}

#[derive(Deserialize)]
struct Reason {
    reason: Option<String>,
}

/// A JSON body with a reason, or why it could not be read (answered as JSON, never as text).
type Body = Result<Json<Reason>, axum::extract::rejection::JsonRejection>;

fn reason_of(body: &Body) -> Result<String, Response> {
    match body.as_ref().ok().and_then(|b| b.reason.clone()) {
        Some(r) if !r.trim().is_empty() => Ok(r),
        _ => Err(err(
            StatusCode::BAD_REQUEST,
            "a non-empty `reason` is required for every change",
        )),
    }
}

fn refused(e: crate::Error) -> Response {
    match e {
        crate::Error::Refused(r) => {
            let code = if r.kind == crate::outcome::RefusalKind::NotFound {
                StatusCode::NOT_FOUND
            } else {
                StatusCode::CONFLICT
            };
            err(code, r.reason)
        }
        other => err(StatusCode::SERVICE_UNAVAILABLE, other.to_string()),
    }
}

/// `job-<12 hex>` / `plan-<12 hex>`; anything else cannot exist (and must not reach NATS as a key).
fn well_formed(prefix: &str, id: &str) -> bool {
    id.strip_prefix(prefix).is_some_and(|h| {
        h.len() == 12
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

fn not_found(what: &str, id: &str) -> Response {
    err(StatusCode::NOT_FOUND, format!("no {what} `{id}`"))
}

/// The `/api/v1` routes.
pub fn router(st: Arc<ApiState>) -> axum::Router {
    axum::Router::new()
        .route(
            "/api/v1/openapi.yaml",
            get(|| async { ([("content-type", "application/yaml")], OPENAPI) }),
        )
        .route("/api/v1/status", get(status))
        .route("/api/v1/jobs", get(jobs))
        .route("/api/v1/jobs/{id}", get(job))
        .route("/api/v1/jobs/{id}/retry", post(retry))
        .route("/api/v1/jobs/{id}/cancel", post(cancel))
        .route("/api/v1/dead-letters", get(dead_letters))
        .route("/api/v1/nodes/{node}/drain", post(drain_node))
        .route("/api/v1/approvals", get(approvals))
        .route("/api/v1/plans", get(plans))
        .route("/api/v1/drift", get(drift))
        .route("/api/v1/approvals/{plan}/approve", post(approve))
        .route("/api/v1/approvals/{plan}/reject", post(reject))
        .route("/api/v1/events", get(events))
        .route("/api/v1/health", get(health))
        .route("/api/v1/inventory", get(inventory))
        .route("/api/v1/alerts", get(alerts))
        .with_state(st)
}

async fn status(State(st): S, h: HeaderMap) -> Response {
    if let Err(r) = authorize(&st, &h, "ops.jobs.view", "status").await {
        return r;
    }
    let mut v = st
        .shared
        .status
        .lock()
        .map(|s| s.clone())
        .unwrap_or_default();
    let jobs = crate::ops::jobs::list(&st.store).await.unwrap_or_default();
    let approvals = crate::ops::approvals::list(&st.store)
        .await
        .unwrap_or_default();
    let summary = st.shared.snapshot.lock().ok().and_then(|s| s.as_ref().map(|s| json!({"decision": s.summary.decision, "counts": s.summary.counts, "conditions": s.actions.conditions, "alerts": s.actions.alerts, "metrics_source": s.summary.metrics_source})));
    v["jobs"] = json!({
        "running": jobs.iter().filter(|j| j.state == crate::ops::jobs::JobState::Running).map(|j| &j.id).collect::<Vec<_>>(),
        "failed": jobs.iter().filter(|j| matches!(j.state, crate::ops::jobs::JobState::Failed | crate::ops::jobs::JobState::DeadLettered | crate::ops::jobs::JobState::Retrying)).map(|j| &j.id).collect::<Vec<_>>(),
    });
    v["pending_approvals"] = json!(
        approvals
            .iter()
            .filter(|a| a.decision == crate::outcome::Decision::Pending)
            .collect::<Vec<_>>()
    );
    v["live"] = summary.unwrap_or(Value::Null);
    Json(v).into_response()
}

#[derive(Deserialize, Default)]
struct JobQuery {
    state: Option<String>,
    tenant: Option<String>,
    site: Option<String>,
}

async fn jobs(
    State(st): S,
    h: HeaderMap,
    q: Result<Query<JobQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Err(r) = authorize(&st, &h, "ops.jobs.view", "jobs").await {
        return r;
    }
    let q = match q {
        Ok(Query(q)) => q,
        Err(e) => return err(StatusCode::BAD_REQUEST, format!("bad query: {e}")),
    };
    const STATES: [&str; 7] = [
        "queued",
        "running",
        "succeeded",
        "failed",
        "retrying",
        "cancelled",
        "dead-lettered",
    ];
    if let Some(s) = &q.state
        && !STATES.contains(&s.as_str())
    {
        return err(
            StatusCode::BAD_REQUEST,
            format!("unknown state `{s}` (one of {})", STATES.join(", ")),
        );
    }
    let declared = st
        .shared
        .declared
        .lock()
        .map(|d| d.clone())
        .unwrap_or_default();
    let site_of = |node: &str| {
        declared
            .iter()
            .find(|d| d.id == node)
            .map(|d| d.site.clone())
    };
    match crate::ops::jobs::list(&st.store).await {
        Ok(list) => Json(
            list.into_iter()
                .filter(|j| q.state.as_deref().is_none_or(|s| j.state.as_str() == s))
                .filter(|j| q.tenant.as_deref().is_none_or(|t| j.migration.tenant == t))
                .filter(|j| {
                    q.site.as_deref().is_none_or(|s| {
                        site_of(&j.migration.from_node).as_deref() == Some(s)
                            || site_of(&j.migration.to_node).as_deref() == Some(s)
                    })
                })
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(e) => err(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

async fn job(State(st): S, h: HeaderMap, UrlPath(id): UrlPath<String>) -> Response {
    if let Err(r) = authorize(&st, &h, "ops.jobs.view", &format!("job {id}")).await {
        return r;
    }
    if !well_formed("job-", &id) {
        return not_found("job", &id);
    }
    match crate::ops::jobs::get(&st.store, &id).await {
        Ok(Some((j, _))) => Json(j).into_response(),
        Ok(None) => err(StatusCode::NOT_FOUND, format!("no job `{id}`")),
        Err(e) => err(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// Retry or cancel: the permission, the reason and the audit trail are the same shape.
async fn job_action(
    st: Arc<ApiState>,
    h: HeaderMap,
    id: String,
    body: Body,
    retry: bool,
) -> Response {
    let (perm, verb) = if retry {
        ("ops.jobs.retry", "retry")
    } else {
        ("ops.jobs.cancel", "cancel")
    };
    let actor = match authorize(&st, &h, perm, &format!("{verb} {id}")).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    if !well_formed("job-", &id) {
        return not_found("job", &id);
    }
    let reason = match reason_of(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let mut a = st.audit.lock().await;
    let r = if retry {
        crate::ops::jobs::retry(&st.store, &mut a, &id, &actor, &reason).await
    } else {
        crate::ops::jobs::cancel(&st.store, &mut a, &id, &actor, &reason).await
    };
    match r {
        Ok(j) => Json(j).into_response(),
        Err(e) => refused(e),
    }
}

async fn retry(State(st): S, h: HeaderMap, UrlPath(id): UrlPath<String>, body: Body) -> Response {
    job_action(st, h, id, body, true).await
}

async fn cancel(State(st): S, h: HeaderMap, UrlPath(id): UrlPath<String>, body: Body) -> Response {
    job_action(st, h, id, body, false).await
}

async fn drain_node(
    State(st): S,
    h: HeaderMap,
    UrlPath(node): UrlPath<String>,
    body: Body,
) -> Response {
    let actor = match authorize(&st, &h, "ops.nodes.drain", &format!("drain node {node}")).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let reason = match reason_of(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let Some(desired) = st.shared.desired.lock().ok().and_then(|d| d.clone()) else {
        return err(
            StatusCode::CONFLICT,
            "nothing compiled yet; try again after the first reconcile",
        );
    };
    let job =
        match crate::ops::jobs::node_drain(&desired, &node, Some(format!("api:{actor}: {reason}")))
        {
            Ok(j) => j,
            Err(e) => return refused(e),
        };
    let mut a = st.audit.lock().await;
    match crate::ops::jobs::enqueue(&st.store, &mut a, &actor, std::slice::from_ref(&job)).await {
        Ok(_) => (StatusCode::ACCEPTED, Json(job)).into_response(),
        Err(e) => err(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

async fn dead_letters(State(st): S, h: HeaderMap) -> Response {
    if let Err(r) = authorize(&st, &h, "ops.jobs.view", "dead letters").await {
        return r;
    }
    match crate::ops::jobs::list(&st.store).await {
        Ok(list) => Json(
            list.into_iter()
                .filter(|j| j.state == crate::ops::jobs::JobState::DeadLettered)
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(e) => err(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

async fn approvals(State(st): S, h: HeaderMap) -> Response {
    if let Err(r) = authorize(&st, &h, "ops.approvals.view", "approvals").await {
        return r;
    }
    match crate::ops::approvals::list(&st.store).await {
        Ok(l) => Json(l).into_response(),
        Err(e) => refused(e),
    }
}

/// Plans that met a gated action, with their approval state (pending, approved, rejected).
async fn plans(State(st): S, h: HeaderMap) -> Response {
    if let Err(r) = authorize(&st, &h, "ops.approvals.view", "plans").await {
        return r;
    }
    match crate::ops::approvals::list(&st.store).await {
        Ok(l) => Json(
            l.into_iter()
                .map(|a| json!({"plan_id": a.plan_id, "digest": a.digest, "commit": a.commit, "actions": a.actions,
                    "state": a.decision, "requested_by": a.requested_by, "requested_at": a.requested_at,
                    "expires_at": a.expires_at}))
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(e) => refused(e),
    }
}

/// Drift of the live buckets against the desired state the daemon compiled last.
async fn drift(State(st): S, h: HeaderMap) -> Response {
    if let Err(r) = authorize(&st, &h, "ops.drift.view", "drift").await {
        return r;
    }
    let Some(desired) = st.shared.desired.lock().ok().and_then(|d| d.clone()) else {
        return err(
            StatusCode::CONFLICT,
            "nothing compiled yet; try again after the first reconcile",
        );
    };
    match crate::ops::drift::drift(&st.store, &desired).await {
        Ok(r) => Json(r).into_response(),
        Err(e) => err(
            StatusCode::CONFLICT,
            format!("drift could not be computed: {e}"),
        ),
    }
}

async fn decide(
    st: Arc<ApiState>,
    h: HeaderMap,
    plan: String,
    body: Body,
    approve: bool,
) -> Response {
    let perm = if approve {
        "ops.approvals.approve"
    } else {
        "ops.approvals.reject"
    };
    let actor = match authorize(&st, &h, perm, &format!("plan {plan}")).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    if !well_formed("plan-", &plan) {
        return not_found("plan", &plan);
    }
    let reason = match reason_of(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let mut a = st.audit.lock().await;
    match crate::ops::approvals::decide(&st.store, &mut a, &plan, approve, &actor, &reason).await {
        Ok(x) => Json(x).into_response(),
        Err(e) => refused(e),
    }
}

async fn approve(
    State(st): S,
    h: HeaderMap,
    UrlPath(plan): UrlPath<String>,
    body: Body,
) -> Response {
    decide(st, h, plan, body, true).await
}

async fn reject(
    State(st): S,
    h: HeaderMap,
    UrlPath(plan): UrlPath<String>,
    body: Body,
) -> Response {
    decide(st, h, plan, body, false).await
}

#[derive(Deserialize, Default)]
struct EventQuery {
    correlation_id: Option<String>,
    causation_id: Option<String>,
    resource: Option<String>,
    task_id: Option<String>,
    site: Option<String>,
    limit: Option<usize>,
}

async fn events(
    State(st): S,
    h: HeaderMap,
    q: Result<Query<EventQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Err(r) = authorize(&st, &h, "ops.jobs.view", "events").await {
        return r;
    }
    let q = match q {
        Ok(Query(q)) if q.limit != Some(0) => q,
        Ok(_) => return err(StatusCode::BAD_REQUEST, "limit must be at least 1"),
        Err(e) => return err(StatusCode::BAD_REQUEST, format!("bad query: {e}")),
    };
    let a = st.audit.lock().await;
    let from = a.last_seq().await.unwrap_or(0).saturating_sub(10_000);
    let list = match a.read(from).await {
        Ok(l) => l,
        Err(e) => return err(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    drop(a);
    let m = |want: &Option<String>, have: &Option<String>| {
        want.as_ref().is_none_or(|w| have.as_ref() == Some(w))
    };
    let mut out: Vec<AuditEvent> = list
        .into_iter()
        .map(|s| s.event)
        .filter(|e| m(&q.correlation_id, &e.correlation_id) && m(&q.causation_id, &e.causation_id))
        .filter(|e| m(&q.task_id, &e.job_id) && m(&q.site, &e.site))
        .filter(|e| {
            q.resource
                .as_ref()
                .is_none_or(|r| e.target.as_deref().is_some_and(|t| t.contains(r.as_str())))
        })
        .collect();
    let limit = q.limit.unwrap_or(500);
    if out.len() > limit {
        out.drain(..out.len() - limit);
    }
    Json(out).into_response()
}

/// A live snippet as an API response.
async fn snippet(
    st: Arc<ApiState>,
    h: HeaderMap,
    name: opsrepo::snippets::SnippetName,
) -> Response {
    if let Err(r) = authorize(&st, &h, "ops.inventory.view", name.as_str()).await {
        return r;
    }
    let v = st
        .shared
        .snapshot
        .lock()
        .ok()
        .and_then(|s| s.as_ref().map(|s| s.to_value(name)));
    Json(v.unwrap_or(Value::Null)).into_response()
}

async fn health(State(st): S, h: HeaderMap) -> Response {
    snippet(st, h, opsrepo::snippets::SnippetName::Health).await
}

async fn inventory(State(st): S, h: HeaderMap) -> Response {
    snippet(st, h, opsrepo::snippets::SnippetName::Inventory).await
}

/// Live alerts from the alert sources: sources, firing cards (with their catalog entry and the
/// vakt changes that preceded them), the silenced list and groups with counts.
async fn alerts(State(st): S, h: HeaderMap) -> Response {
    if let Err(r) = authorize(&st, &h, "ops.jobs.view", "alerts").await {
        return r;
    }
    let v = st
        .shared
        .snapshot
        .lock()
        .ok()
        .and_then(|s| s.as_ref().map(|s| serde_json::to_value(&s.actions.alerts)));
    match v {
        Some(Ok(v)) => Json(v).into_response(),
        _ => {
            Json(serde_json::to_value(opsrepo::snippets::AlertsView::default()).unwrap_or_default())
                .into_response()
        }
    }
}
