//! The operator HTTP API on the daemon (`/api/v1/...`, documented in `openapi/operator-api.yaml`
//! and served at `/api/v1/openapi.yaml`).
//!
//! Token auth: bearer tokens come from a file outside the repo (`--api-tokens`), one
//! `<token> <kind>:<name>` per line (`kind` = user, group or service-account). Authorization
//! uses the roles and bindings of `access/` at the applied commit: a subject's bindings whose
//! scope is global or this environment (and not expired) give roles, roles give permissions
//! (`ops.jobs.retry`, `ops.*`). Deny by default. Every mutating call needs a `reason` and is
//! audited; an action whose audit event cannot be written does not happen (5xx).
//!
//! Hostile callers: identifiers are checked (length, charset) before anything is audited, and a
//! malformed one is simply `404`; request bodies are read only after the token is checked, and
//! capped. Refusals are audited as aggregated `api.denied` events: one per client address, actor
//! and reason per minute, with a count, under a global budget ([`audit::DENIAL_BURST`] then one a
//! minute), so strangers cannot flood the trail. Reading events needs `audit.view`.

// Handlers return `Result<_, Response>` so a refusal is an early `return`; the size of
// `Response` does not matter on this path.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Body as RawBody;
use axum::extract::{FromRequestParts, Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::store::Store;
use crate::store::audit::{self, Audit, AuditEvent, now_rfc3339};

pub use super::access::{Access, Tokens, grants};

pub const OPENAPI: &str = include_str!("../../../openapi/operator-api.yaml");

pub struct ApiState {
    pub store: Store,
    pub audit: tokio::sync::Mutex<Audit>,
    /// Reads events without the writer's lock.
    pub reader: audit::Reader,
    pub env: String,
    pub tokens: Tokens,
    pub shared: Arc<super::shared::Shared>,
    pub denials: std::sync::Mutex<Denials>,
}

impl ApiState {
    pub fn new(
        store: Store,
        audit: Audit,
        env: String,
        tokens: Tokens,
        shared: Arc<super::shared::Shared>,
    ) -> ApiState {
        ApiState {
            reader: audit.reader(),
            store,
            audit: tokio::sync::Mutex::new(audit),
            env,
            tokens,
            shared,
            denials: std::sync::Mutex::new(Denials::default()),
        }
    }
}

type S = State<Arc<ApiState>>;

/// Largest request body the API reads (a reason and little else).
pub const MAX_BODY: usize = 16 * 1024;
/// How long denials of one client, actor and reason are folded into one event.
const DENIAL_WINDOW: Duration = Duration::from_secs(60);
/// Distinct (client, actor, reason) keys tracked at once; more fold into one `other` key.
const DENIAL_KEYS: usize = 4096;

/// The client address of a request (from the shared HTTP layer).
pub struct Client(pub Option<IpAddr>);

impl<S2: Send + Sync> FromRequestParts<S2> for Client {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S2,
    ) -> Result<Self, Self::Rejection> {
        Ok(Client(
            opsrepo::http::client_addr(&parts.extensions).map(|a| a.ip()),
        ))
    }
}

impl Client {
    fn addr(&self) -> Option<String> {
        self.0.map(|a| a.to_string())
    }
}

/// One (client, actor, reason) in the current window.
struct Folded {
    since: Instant,
    count: u64,
    /// Counted but not yet in an event.
    unreported: u64,
    perm: String,
    last_target: String,
}

/// Denials being aggregated, and the budget of denial events (a token bucket: a burst of
/// [`audit::DENIAL_BURST`], then one a minute).
pub struct Denials {
    keys: HashMap<(String, String, String), Folded>,
    tokens: f64,
    refilled: Instant,
    /// Denials counted while the budget was spent; reported in the next event.
    suppressed: u64,
}

impl Default for Denials {
    fn default() -> Self {
        Denials {
            keys: HashMap::new(),
            tokens: f64::from(audit::DENIAL_BURST),
            refilled: Instant::now(),
            suppressed: 0,
        }
    }
}

impl Denials {
    fn take_token(&mut self, now: Instant) -> bool {
        let dt = now.duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        self.tokens = (self.tokens + dt / 60.0).min(f64::from(audit::DENIAL_BURST));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Counts one denial; returns the event to write now, if any (the first of its key in a
    /// window, within the budget).
    fn note(
        &mut self,
        env: &str,
        client: &str,
        actor: &str,
        why: &str,
        perm: &str,
        target: &str,
    ) -> Option<AuditEvent> {
        let now = Instant::now();
        let mut key = (client.to_owned(), actor.to_owned(), why.to_owned());
        if !self.keys.contains_key(&key) && self.keys.len() >= DENIAL_KEYS {
            key = ("other".into(), "other".into(), why.to_owned());
        }
        let f = self.keys.entry(key.clone()).or_insert_with(|| Folded {
            since: now,
            count: 0,
            unreported: 0,
            perm: perm.to_owned(),
            last_target: String::new(),
        });
        f.count += 1;
        f.unreported += 1;
        f.perm = perm.to_owned();
        f.last_target = target.chars().take(audit::MAX_TARGET_CHARS).collect();
        if f.count == 1 {
            if self.take_token(now) {
                let f = self.keys.get_mut(&key)?;
                let n = f.unreported;
                f.unreported = 0;
                let s = std::mem::take(&mut self.suppressed);
                let f = &self.keys[&key];
                return Some(denial_event(env, &key, f, n, s));
            }
            self.suppressed += 1;
            if let Some(f) = self.keys.get_mut(&key) {
                f.unreported -= 1;
            }
        }
        None
    }

    /// Ends the windows that are over: one event per key with unreported denials (budget
    /// allowing; the rest are counted in `suppressed`).
    fn flush(&mut self, env: &str) -> Vec<AuditEvent> {
        let now = Instant::now();
        let over: Vec<_> = self
            .keys
            .iter()
            .filter(|(_, f)| now.duration_since(f.since) >= DENIAL_WINDOW)
            .map(|(k, _)| k.clone())
            .collect();
        let mut out = Vec::new();
        for k in over {
            let Some(f) = self.keys.remove(&k) else {
                continue;
            };
            if f.unreported == 0 {
                continue;
            }
            if self.take_token(now) {
                let s = std::mem::take(&mut self.suppressed);
                out.push(denial_event(env, &k, &f, f.unreported, s));
            } else {
                self.suppressed += f.unreported;
            }
        }
        out
    }
}

fn denial_event(
    env: &str,
    (client, actor, why): &(String, String, String),
    f: &Folded,
    count: u64,
    suppressed: u64,
) -> AuditEvent {
    let mut ev = AuditEvent::new(
        format!("api/denied/{}/{}", now_rfc3339(), client),
        env,
        actor,
        "api.denied",
        "refused",
    );
    ev.target = Some(f.last_target.clone());
    ev.client = Some(client.clone());
    ev.reason = Some(format!("{}: {why}", f.perm));
    ev.detail = Some(json!({
        "client": client,
        "count": count,
        "window_seconds": DENIAL_WINDOW.as_secs(),
        "suppressed_elsewhere": suppressed,
    }));
    ev
}

/// Writes the denial events of windows that ended; runs for the life of the server.
async fn flush_denials(st: std::sync::Weak<ApiState>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        let Some(st) = st.upgrade() else { return };
        let evs = st
            .denials
            .lock()
            .map(|mut d| d.flush(&st.env))
            .unwrap_or_default();
        if !evs.is_empty() {
            let mut a = st.audit.lock().await;
            for ev in evs {
                let _ = a.refresh_head().await;
                if let Err(e) = a.record(ev).await {
                    tracing::warn!(error = %e, "cannot audit API denials");
                }
            }
        }
    }
}

/// Re-reads the audit chain's head before an action is audited: the API's writer was opened
/// when the daemon started, and the leader's passes and jobs have appended events since, so its
/// cached head is stale (an event chained to it breaks the chain). `Some` is the 503 answer
/// when the head cannot be read; nothing has happened then.
async fn chain_head(a: &mut Audit) -> Option<Response> {
    a.refresh_head().await.err().map(|e| {
        err(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot read the audit trail's head: {e}; nothing changed, try again"),
        )
    })
}

fn err(code: StatusCode, msg: impl Into<String>) -> Response {
    (code, Json(json!({"error": msg.into()}))).into_response()
}

/// Authenticates and authorizes; refusals are counted and audited in aggregate.
async fn authorize(
    st: &ApiState,
    headers: &HeaderMap,
    client: &Client,
    perm: &str,
    what: &str,
) -> Result<String, Response> {
    let token = opsrepo::http::bearer(headers);
    let has_auth = headers.contains_key("authorization");
    let subject = token.and_then(|t| st.tokens.subject(t)).map(str::to_owned);
    let (deny, code, actor) = match &subject {
        None => (
            Some(if token.is_some() || has_auth {
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
            let addr = client
                .0
                .map_or_else(|| "unknown".to_owned(), |a| a.to_string());
            let ev = st
                .denials
                .lock()
                .ok()
                .and_then(|mut d| d.note(&st.env, &addr, &actor, why, perm, what));
            if let Some(ev) = ev {
                let mut a = st.audit.lock().await;
                let _ = a.refresh_head().await;
                if let Err(e) = a.record(ev).await {
                    tracing::warn!(error = %e, "cannot audit an API denial");
                }
            }
            let mut r = err(code, format!("{why}: `{perm}` is required for {what}"));
            if code == StatusCode::UNAUTHORIZED {
                r.headers_mut().insert(
                    "www-authenticate",
                    axum::http::HeaderValue::from_static("Bearer"),
                );
            }
            Err(r)
        }
    }
}

#[derive(Deserialize)]
struct Reason {
    reason: Option<String>,
}

/// The request body of a change, read only after the caller was authorized.
type Body = RawBody;

/// The `reason` of a change: present, not blank, at most [`audit::MAX_REASON_CHARS`] characters.
async fn reason_of(body: Body) -> Result<String, Response> {
    let bytes = opsrepo::http::read_body(body, MAX_BODY)
        .await
        .map_err(|(code, msg)| err(code, msg))?;
    let parsed: Option<Reason> = serde_json::from_slice(&bytes).ok();
    match parsed.and_then(|b| b.reason) {
        Some(r) if r.chars().count() > audit::MAX_REASON_CHARS => Err(err(
            StatusCode::BAD_REQUEST,
            format!(
                "`reason` is {} characters; at most {} are kept in the audit trail: shorten it and link to details",
                r.chars().count(),
                audit::MAX_REASON_CHARS
            ),
        )),
        Some(r) if !r.trim().is_empty() => Ok(r),
        _ => Err(err(
            StatusCode::BAD_REQUEST,
            "a JSON body with a non-empty `reason` is required for every change",
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

/// A node id as the inventory declares them: 1 to 64 of `a-z 0-9 . _ -`.
fn well_formed_name(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

/// A malformed identifier: answered before anything is checked or audited, without echoing it.
fn not_found(what: &str, id: &str) -> Response {
    if id.len() > 64 {
        return err(
            StatusCode::NOT_FOUND,
            format!(
                "no {what} with that id (ids are short; this one has {} bytes)",
                id.len()
            ),
        );
    }
    err(StatusCode::NOT_FOUND, format!("no {what} `{id}`"))
}

/// The `/api/v1` routes.
pub fn router(st: Arc<ApiState>) -> axum::Router {
    tokio::spawn(flush_denials(Arc::downgrade(&st)));
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

async fn status(State(st): S, h: HeaderMap, c: Client) -> Response {
    if let Err(r) = authorize(&st, &h, &c, "ops.jobs.view", "status").await {
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
    c: Client,
    q: Result<Query<JobQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Err(r) = authorize(&st, &h, &c, "ops.jobs.view", "jobs").await {
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

async fn job(State(st): S, h: HeaderMap, c: Client, UrlPath(id): UrlPath<String>) -> Response {
    if !well_formed("job-", &id) {
        return not_found("job", &id);
    }
    if let Err(r) = authorize(&st, &h, &c, "ops.jobs.view", &format!("job {id}")).await {
        return r;
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
    c: Client,
    id: String,
    body: Body,
    retry: bool,
) -> Response {
    let (perm, verb) = if retry {
        ("ops.jobs.retry", "retry")
    } else {
        ("ops.jobs.cancel", "cancel")
    };
    if !well_formed("job-", &id) {
        return not_found("job", &id);
    }
    let actor = match authorize(&st, &h, &c, perm, &format!("{verb} {id}")).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let reason = match reason_of(body).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let mut a = st.audit.lock().await;
    if let Some(r) = chain_head(&mut a).await {
        return r;
    }
    a.client = c.addr();
    let r = if retry {
        crate::ops::jobs::retry(&st.store, &mut a, &id, &actor, &reason).await
    } else {
        crate::ops::jobs::cancel(&st.store, &mut a, &id, &actor, &reason).await
    };
    a.client = None;
    match r {
        Ok(j) => Json(j).into_response(),
        Err(e) => refused(e),
    }
}

async fn retry(
    State(st): S,
    h: HeaderMap,
    c: Client,
    UrlPath(id): UrlPath<String>,
    body: Body,
) -> Response {
    job_action(st, h, c, id, body, true).await
}

async fn cancel(
    State(st): S,
    h: HeaderMap,
    c: Client,
    UrlPath(id): UrlPath<String>,
    body: Body,
) -> Response {
    job_action(st, h, c, id, body, false).await
}

async fn drain_node(
    State(st): S,
    h: HeaderMap,
    c: Client,
    UrlPath(node): UrlPath<String>,
    body: Body,
) -> Response {
    if !well_formed_name(&node) {
        return not_found("node", &node);
    }
    let actor = match authorize(
        &st,
        &h,
        &c,
        "ops.nodes.drain",
        &format!("drain node {node}"),
    )
    .await
    {
        Ok(a) => a,
        Err(r) => return r,
    };
    let reason = match reason_of(body).await {
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
    if let Some(r) = chain_head(&mut a).await {
        return r;
    }
    a.client = c.addr();
    let r = crate::ops::jobs::enqueue(&st.store, &mut a, &actor, std::slice::from_ref(&job)).await;
    a.client = None;
    match r {
        // 0: the same drain was queued before; that job exists and is the one answered.
        Ok(_) => (StatusCode::ACCEPTED, Json(job)).into_response(),
        Err(e) => err(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the drain was not queued: {e}; nothing changed, try again"),
        ),
    }
}

async fn dead_letters(State(st): S, h: HeaderMap, c: Client) -> Response {
    if let Err(r) = authorize(&st, &h, &c, "ops.jobs.view", "dead letters").await {
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

async fn approvals(State(st): S, h: HeaderMap, c: Client) -> Response {
    if let Err(r) = authorize(&st, &h, &c, "ops.approvals.view", "approvals").await {
        return r;
    }
    match crate::ops::approvals::list(&st.store).await {
        Ok(l) => Json(l).into_response(),
        Err(e) => refused(e),
    }
}

/// Plans that met a gated action, with their approval state (pending, approved, rejected).
async fn plans(State(st): S, h: HeaderMap, c: Client) -> Response {
    if let Err(r) = authorize(&st, &h, &c, "ops.approvals.view", "plans").await {
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
async fn drift(State(st): S, h: HeaderMap, c: Client) -> Response {
    if let Err(r) = authorize(&st, &h, &c, "ops.drift.view", "drift").await {
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
    c: Client,
    plan: String,
    body: Body,
    approve: bool,
) -> Response {
    let perm = if approve {
        "ops.approvals.approve"
    } else {
        "ops.approvals.reject"
    };
    if !well_formed("plan-", &plan) {
        return not_found("plan", &plan);
    }
    let actor = match authorize(&st, &h, &c, perm, &format!("plan {plan}")).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    // Approving also needs, for each gated action of the plan, its own permission
    // (`ops.approvals.approve.<action>`): who may approve a failover is not who may approve an
    // access change. Rejecting stops a change and needs no more than `ops.approvals.reject`.
    if approve
        && let Ok(Some((a, _))) = crate::store::state::get::<crate::store::state::Approval>(
            &st.store.state,
            &format!("approval.{plan}"),
        )
        .await
    {
        for action in &a.actions {
            let perm = format!("ops.approvals.approve.{action}");
            if let Err(r) = authorize(&st, &h, &c, &perm, &format!("plan {plan}")).await {
                return r;
            }
        }
    }
    let reason = match reason_of(body).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let mut a = st.audit.lock().await;
    if let Some(r) = chain_head(&mut a).await {
        return r;
    }
    a.client = c.addr();
    let r = crate::ops::approvals::decide(&st.store, &mut a, &plan, approve, &actor, &reason).await;
    a.client = None;
    match r {
        Ok(x) => Json(x).into_response(),
        Err(e) => refused(e),
    }
}

async fn approve(
    State(st): S,
    h: HeaderMap,
    c: Client,
    UrlPath(plan): UrlPath<String>,
    body: Body,
) -> Response {
    decide(st, h, c, plan, body, true).await
}

async fn reject(
    State(st): S,
    h: HeaderMap,
    c: Client,
    UrlPath(plan): UrlPath<String>,
    body: Body,
) -> Response {
    decide(st, h, c, plan, body, false).await
}

#[derive(Deserialize, Default)]
struct EventQuery {
    correlation_id: Option<String>,
    causation_id: Option<String>,
    resource: Option<String>,
    task_id: Option<String>,
    site: Option<String>,
    limit: Option<usize>,
    /// Include `api.denied` events (left out by default: they are noise next to real events).
    include_denials: Option<bool>,
}

async fn events(
    State(st): S,
    h: HeaderMap,
    c: Client,
    q: Result<Query<EventQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Err(r) = authorize(&st, &h, &c, "audit.view", "events").await {
        return r;
    }
    let q = match q {
        Ok(Query(q)) if q.limit != Some(0) => q,
        Ok(_) => return err(StatusCode::BAD_REQUEST, "limit must be at least 1"),
        Err(e) => return err(StatusCode::BAD_REQUEST, format!("bad query: {e}")),
    };
    for (name, v) in [
        ("correlation_id", &q.correlation_id),
        ("causation_id", &q.causation_id),
        ("resource", &q.resource),
        ("task_id", &q.task_id),
        ("site", &q.site),
    ] {
        if v.as_ref()
            .is_some_and(|v| v.len() > audit::MAX_TARGET_CHARS)
        {
            return err(
                StatusCode::BAD_REQUEST,
                format!("`{name}` is longer than {} bytes", audit::MAX_TARGET_CHARS),
            );
        }
    }
    // The reader shares nothing with the writer: concurrent listings do not wait for each
    // other or for an action being audited.
    let from = st
        .reader
        .last_seq()
        .await
        .unwrap_or(0)
        .saturating_sub(10_000);
    let list = match st.reader.read(from).await {
        Ok(l) => l,
        Err(e) => return err(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    let denials = q.include_denials.unwrap_or(false);
    let m = |want: &Option<String>, have: &Option<String>| {
        want.as_ref().is_none_or(|w| have.as_ref() == Some(w))
    };
    let mut out: Vec<AuditEvent> = list
        .into_iter()
        .map(|s| s.event)
        .filter(|e| denials || e.action != "api.denied")
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
    c: Client,
    name: opsrepo::snippets::SnippetName,
) -> Response {
    if let Err(r) = authorize(&st, &h, &c, "ops.inventory.view", name.as_str()).await {
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

async fn health(State(st): S, h: HeaderMap, c: Client) -> Response {
    snippet(st, h, c, opsrepo::snippets::SnippetName::Health).await
}

async fn inventory(State(st): S, h: HeaderMap, c: Client) -> Response {
    snippet(st, h, c, opsrepo::snippets::SnippetName::Inventory).await
}

/// Live alerts from the alert sources: sources, firing cards (with their catalog entry and the
/// vakt changes that preceded them), the silenced list and groups with counts.
async fn alerts(State(st): S, h: HeaderMap, c: Client) -> Response {
    if let Err(r) = authorize(&st, &h, &c, "ops.jobs.view", "alerts").await {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_denials_fold_into_one_event_per_client_actor_and_reason() {
        let mut d = Denials::default();
        let mut events = 0;
        for i in 0..1000 {
            let target = format!("job {}", "x".repeat(i));
            if d.note(
                "dev",
                "127.0.0.1",
                "anonymous",
                "no bearer token",
                "ops.jobs.view",
                &target,
            )
            .is_some()
            {
                events += 1;
            }
        }
        assert_eq!(events, 1);
        let f = &d.keys[&(
            "127.0.0.1".to_owned(),
            "anonymous".to_owned(),
            "no bearer token".to_owned(),
        )];
        assert_eq!((f.count, f.unreported), (1000, 999));
        assert!(f.last_target.chars().count() <= audit::MAX_TARGET_CHARS);
    }

    #[test]
    fn many_sources_cannot_exceed_the_denial_budget() {
        let mut d = Denials::default();
        let emitted = (0..500)
            .filter(|i| {
                d.note(
                    "dev",
                    &format!("10.0.0.{i}"),
                    "anonymous",
                    "no bearer token",
                    "p",
                    "t",
                )
                .is_some()
            })
            .count();
        assert_eq!(emitted, audit::DENIAL_BURST as usize);
        assert_eq!(d.suppressed, 500 - u64::from(audit::DENIAL_BURST));
    }
}
