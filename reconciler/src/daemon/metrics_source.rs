//! The ops metrics source mode of the decision header. `in_memory`: the figures are the daemon's
//! own process counters since it started (local/dev, smoke checks, no backend needed).
//! `backend` (`vakt reconcile --metrics-backend URL`): a small query pack runs against a
//! Prometheus-compatible query API (`/api/v1/query`, e.g. VictoriaMetrics) every
//! `--metrics-poll`, so the header shows durable 24 h totals next to the in-process counters.
//! Any failure of the query path (refused, timeout, non-2xx, not JSON, `status: error`, not a
//! vector) degrades the header to `in_memory`, keeps the last good backend figures marked stale,
//! and becomes a `vakt_metrics_backend_degraded` condition.
//!
//! Fetches reuse the alert sources' bounded helper ([`crate::daemon::fetch::fetch_json`]: 2 s
//! connect, 5 s total, no redirects, body read as a stream up to [`MAX_BODY`]). Everything but
//! [`poll`] and [`poll_loop`] is a pure function of its inputs.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use opsrepo::snippets::{
    MAX_METRIC_FIGURES, MetricFigure, MetricsMode, MetricsSource, SourceState,
};
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::daemon::fetch::{self, FetchError, fetch_json};
use crate::daemon::shared::Shared;
use crate::outcome::{RefusalKind, StepOutcome};

/// Largest answer read from the backend per query.
pub const MAX_BODY: usize = 4 << 20;
/// Signal of a backend whose query path fails.
pub const DEGRADED_SIGNAL: &str = "vakt_metrics_backend_degraded";
/// Range of the backend's totals.
pub const WINDOW: &str = "24h";
/// `window` of the in-process figures.
pub const SINCE_START: &str = "since_start";
/// Series kept per query (there are 4 outcomes and 14 refusal reasons; anything beyond is not
/// vakt's and is dropped).
const MAX_SERIES: usize = 24;
/// Longest label value kept from an answer.
const MAX_LABEL: usize = 64;

/// Why the backend's query path failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// Refused, timeout, non-2xx, oversize, transport (the alert sources' fetch errors).
    #[error(transparent)]
    Fetch(FetchError),
    #[error("metrics backend {url} did not answer with JSON: {detail}")]
    NotJson { url: String, detail: String },
    #[error("metrics backend {url} answered status \"error\" ({kind}): {detail}")]
    ErrorStatus {
        url: String,
        kind: String,
        detail: String,
    },
    #[error("metrics backend {url} did not answer with a Prometheus instant vector: {detail}")]
    Shape { url: String, detail: String },
}

/// One query of the pack: what it counts and by which label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// `reconcile_steps` or `refusals` (the figure's `metric`).
    pub metric: &'static str,
    /// The label the query groups by.
    pub by: &'static str,
    /// PromQL.
    pub expr: String,
}

/// The query pack for one environment: 24 h totals of reconcile outcomes and of refusals.
pub fn queries(env: &str) -> Vec<Query> {
    let e = promql_string(env);
    vec![
        Query {
            metric: "reconcile_steps",
            by: "outcome",
            expr: format!("sum by (outcome) (increase(vakt_apply_total{{env=\"{e}\"}}[{WINDOW}]))"),
        },
        Query {
            metric: "refusals",
            by: "reason",
            expr: format!(
                "sum by (reason) (increase(vakt_reconcile_refused_total{{env=\"{e}\"}}[{WINDOW}]))"
            ),
        },
    ]
}

/// Escapes a value for a double-quoted PromQL string.
fn promql_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max).collect();
    out.push('…');
    out
}

/// Parses a `/api/v1/query` answer into `(label value of by, value)`, sorted by label, at most
/// [`MAX_SERIES`]. Non-finite values are skipped (JSON has no NaN).
pub fn parse_vector(host: &str, body: &Value, by: &str) -> Result<Vec<(String, f64)>, QueryError> {
    let shape = |detail: &str| QueryError::Shape {
        url: host.to_owned(),
        detail: detail.to_owned(),
    };
    let Some(obj) = body.as_object() else {
        return Err(shape("the answer is not a JSON object"));
    };
    match obj.get("status").and_then(Value::as_str) {
        Some("success") => {}
        Some("error") => {
            return Err(QueryError::ErrorStatus {
                url: host.to_owned(),
                kind: truncate(
                    obj.get("errorType")
                        .and_then(Value::as_str)
                        .unwrap_or("unknown"),
                    MAX_LABEL,
                ),
                detail: truncate(obj.get("error").and_then(Value::as_str).unwrap_or(""), 512),
            });
        }
        _ => return Err(shape("no `status` of success or error")),
    }
    let data = obj
        .get("data")
        .and_then(Value::as_object)
        .ok_or_else(|| shape("no `data` object"))?;
    match data.get("resultType").and_then(Value::as_str) {
        Some("vector") => {}
        Some(other) => {
            return Err(shape(&format!(
                "resultType is `{}`, not `vector`",
                truncate(other, MAX_LABEL)
            )));
        }
        None => return Err(shape("no `data.resultType`")),
    }
    let result = data
        .get("result")
        .and_then(Value::as_array)
        .ok_or_else(|| shape("no `data.result` array"))?;
    let mut out: BTreeMap<String, f64> = BTreeMap::new();
    for s in result {
        let label = s
            .get("metric")
            .and_then(|m| m.get(by))
            .and_then(Value::as_str)
            .map_or_else(|| "(none)".to_owned(), |v| truncate(v, MAX_LABEL));
        let value = s
            .get("value")
            .and_then(Value::as_array)
            .filter(|v| v.len() == 2)
            .and_then(|v| v[1].as_str())
            .ok_or_else(|| shape("a sample without a `value` pair [time, \"number\"]"))?;
        let v: f64 = value.parse().map_err(|_| {
            shape(&format!(
                "sample value `{}` is not a number",
                truncate(value, 32)
            ))
        })?;
        if !v.is_finite() {
            continue;
        }
        if out.len() >= MAX_SERIES && !out.contains_key(&label) {
            continue;
        }
        *out.entry(label).or_insert(0.0) += v;
    }
    Ok(out.into_iter().collect())
}

/// The configured backend and what the daemon last read from it.
#[derive(Debug, Clone, PartialEq)]
pub struct Backend {
    /// Base URL of the query API (`http://vm:8428`, or with a path prefix such as
    /// `http://vmselect:8481/select/0/prometheus`).
    pub url: String,
    /// `host:port` only: what the snippet and messages show.
    pub host: String,
    pub state: SourceState,
    /// Backend figures of the last good answer.
    pub figures: Vec<MetricFigure>,
    pub checked_at: Option<String>,
    pub last_success_at: Option<String>,
    /// First failed query of the current failure.
    pub down_since: Option<String>,
    pub error: Option<String>,
}

impl Backend {
    /// A backend not queried yet.
    pub fn new(url: &str) -> Backend {
        let base = url.trim_end_matches('/').to_owned();
        Backend {
            host: host_of(&base),
            url: base,
            state: SourceState::Unknown,
            figures: Vec::new(),
            checked_at: None,
            last_success_at: None,
            down_since: None,
            error: None,
        }
    }

    /// Records one round of the query pack: its figures, or why it failed.
    pub fn record(&mut self, at: &str, outcome: Result<Vec<MetricFigure>, QueryError>) {
        self.checked_at = Some(at.to_owned());
        match outcome {
            Ok(figures) => {
                self.figures = figures;
                self.state = SourceState::Live;
                self.last_success_at = Some(at.to_owned());
                self.down_since = None;
                self.error = None;
            }
            Err(e) => {
                if self.state != SourceState::Down {
                    self.down_since = Some(at.to_owned());
                }
                self.state = SourceState::Down;
                self.error = Some(e.to_string());
            }
        }
    }
}

/// `host[:port]` of a URL, without scheme, credentials, path or query.
pub fn host_of(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => match (u.host_str(), u.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_owned(),
            _ => "(no host)".to_owned(),
        },
        Err(_) => "(invalid URL)".to_owned(),
    }
}

/// A fetch error with the query URL (which may carry credentials and is long) replaced by the
/// host.
fn redact(e: FetchError, url: &str, host: &str) -> QueryError {
    let h = || format!("metrics backend {host}");
    let d = |s: String| s.replace(url, host);
    match e {
        FetchError::InvalidBody { detail, .. } => QueryError::NotJson {
            url: host.to_owned(),
            detail: d(detail),
        },
        FetchError::Connect { detail, .. } => QueryError::Fetch(FetchError::Connect {
            url: h(),
            detail: d(detail),
        }),
        FetchError::Timeout { secs, .. } => {
            QueryError::Fetch(FetchError::Timeout { url: h(), secs })
        }
        FetchError::Status { status, .. } => {
            QueryError::Fetch(FetchError::Status { url: h(), status })
        }
        FetchError::TooLarge { limit, .. } => {
            QueryError::Fetch(FetchError::TooLarge { url: h(), limit })
        }
        FetchError::Transport { detail, .. } => QueryError::Fetch(FetchError::Transport {
            url: h(),
            detail: d(detail),
        }),
    }
}

/// Runs the query pack once: every query must succeed for the round to count.
pub async fn query_pack(
    client: &reqwest::Client,
    backend: &Backend,
    env: &str,
    limit: usize,
) -> Result<Vec<MetricFigure>, QueryError> {
    let mut figures = Vec::new();
    for q in queries(env) {
        let url = reqwest::Url::parse_with_params(
            &format!("{}/api/v1/query", backend.url),
            &[("query", q.expr.as_str())],
        )
        .map_err(|e| QueryError::Shape {
            url: backend.host.clone(),
            detail: format!("cannot build the query URL: {e}"),
        })?;
        let body: Value = fetch_json(client, url.as_str(), limit)
            .await
            .map_err(|e| redact(e, url.as_str(), &backend.host))?;
        for (label, value) in parse_vector(&backend.host, &body, q.by)? {
            figures.push(MetricFigure {
                metric: q.metric.to_owned(),
                label,
                value,
                source: MetricsMode::Backend,
                window: WINDOW.to_owned(),
                stale: false,
            });
        }
    }
    Ok(figures)
}

/// Queries the backend once and records the outcome.
pub async fn poll(client: &reqwest::Client, backend: &mut Backend, env: &str, limit: usize) {
    let at = OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default();
    let outcome = query_pack(client, backend, env, limit).await;
    if let Err(e) = &outcome {
        tracing::warn!(backend = %backend.host, error = %e, "metrics backend query failed");
    }
    backend.record(&at, outcome);
}

/// Queries the backend every `every` while `active()` holds and sends each new state. Ends
/// when `shutdown` fires or the receiver is gone.
pub async fn poll_loop(
    mut backend: Backend,
    env: String,
    every: Duration,
    active: impl Fn() -> bool,
    tx: tokio::sync::mpsc::Sender<Arc<Backend>>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let client = fetch::client();
    let mut ticker = fetch::Ticker::new(every, shutdown);
    while ticker.next(&active).await {
        if ticker
            .unless_shutdown(poll(&client, &mut backend, &env, MAX_BODY))
            .await
            .is_none()
            || tx.send(Arc::new(backend.clone())).await.is_err()
        {
            break;
        }
    }
}

/// The daemon's own counters (`vakt_apply_total`, `vakt_reconcile_refused_total`) as figures:
/// every step outcome (0 when none yet), and the refusal reasons seen.
pub(crate) fn in_process(shared: &Shared) -> Vec<MetricFigure> {
    let fig = |metric: &str, label: &str, value: u64| MetricFigure {
        metric: metric.to_owned(),
        label: label.to_owned(),
        value: value as f64,
        source: MetricsMode::InMemory,
        window: SINCE_START.to_owned(),
        stale: false,
    };
    let mut out = Vec::new();
    for o in [
        StepOutcome::Applied,
        StepOutcome::Noop,
        StepOutcome::Refused(RefusalKind::Other),
        StepOutcome::Failed,
    ] {
        let l = shared.l("outcome", o.metric_label());
        let v = shared.applies.get(&l).map_or(0, |c| c.get());
        out.push(fig("reconcile_steps", o.metric_label(), v));
    }
    let mut seen: Vec<&str> = Vec::new();
    for k in RefusalKind::ALL {
        let label = k.metric_label();
        if seen.contains(&label) {
            continue;
        }
        seen.push(label);
        if let Some(c) = shared.refused.get(&shared.l("reason", label)) {
            out.push(fig("refusals", label, c.get()));
        }
    }
    out
}

/// The `metrics_source` of the summary: the configured and effective mode, and the figures with
/// the mode each came from (in-process first, then the backend's, stale while it fails).
pub fn view(
    backend: Option<&Backend>,
    in_process: &[MetricFigure],
    started_at: &str,
    runbook: &str,
) -> MetricsSource {
    let mut figures: Vec<MetricFigure> = in_process
        .iter()
        .take(MAX_METRIC_FIGURES / 2)
        .cloned()
        .collect();
    let Some(b) = backend else {
        return MetricsSource {
            configured_mode: MetricsMode::InMemory,
            mode: MetricsMode::InMemory,
            backend_host: None,
            degraded: false,
            error: None,
            degraded_since: None,
            checked_at: None,
            last_success_at: None,
            in_memory_since: started_at.to_owned(),
            runbook: runbook.to_owned(),
            figures,
        };
    };
    let live = b.state == SourceState::Live;
    let degraded = b.state == SourceState::Down;
    figures.extend(
        b.figures
            .iter()
            .take(MAX_METRIC_FIGURES / 2)
            .cloned()
            .map(|mut f| {
                f.stale = !live;
                f
            }),
    );
    MetricsSource {
        configured_mode: MetricsMode::Backend,
        mode: if live {
            MetricsMode::Backend
        } else {
            MetricsMode::InMemory
        },
        backend_host: Some(b.host.clone()),
        degraded,
        error: b.error.clone().filter(|_| degraded),
        degraded_since: b.down_since.clone().filter(|_| degraded),
        checked_at: b.checked_at.clone(),
        last_success_at: b.last_success_at.clone(),
        in_memory_since: started_at.to_owned(),
        runbook: runbook.to_owned(),
        figures,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ok(result: Value) -> Value {
        json!({"status": "success", "data": {"resultType": "vector", "result": result}})
    }

    #[test]
    fn a_vector_is_parsed_sorted_and_summed_per_label() {
        let body = ok(json!([
            {"metric": {"outcome": "noop"}, "value": [1700000000.1, "12"]},
            {"metric": {"outcome": "applied"}, "value": [1700000000.1, "3.5"]},
            {"metric": {}, "value": [1700000000.1, "1"]},
            {"metric": {"outcome": "noop"}, "value": [1700000000.1, "1"]},
        ]));
        let v = parse_vector("vm:8428", &body, "outcome").unwrap();
        assert_eq!(
            v,
            vec![
                ("(none)".to_owned(), 1.0),
                ("applied".to_owned(), 3.5),
                ("noop".to_owned(), 13.0)
            ]
        );
        assert!(
            parse_vector("h", &ok(json!([])), "outcome")
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn non_finite_values_are_skipped_and_series_are_bounded() {
        let mut result = vec![json!({"metric": {"reason": "x"}, "value": [1, "NaN"]})];
        result.push(json!({"metric": {"reason": "y"}, "value": [1, "+Inf"]}));
        for i in 0..100 {
            result.push(json!({"metric": {"reason": format!("r{i:03}")}, "value": [1, "1"]}));
        }
        result.push(json!({"metric": {"reason": "z".repeat(500)}, "value": [1, "1"]}));
        let v = parse_vector("h", &ok(Value::Array(result)), "reason").unwrap();
        assert_eq!(v.len(), MAX_SERIES);
        assert!(v.iter().all(|(l, _)| l != "x" && l != "y"));
        assert!(v.iter().all(|(l, _)| l.chars().count() <= MAX_LABEL + 1));
    }

    #[test]
    fn error_status_and_wrong_shapes_are_errors_naming_the_host() {
        let e = parse_vector(
            "vm:8428",
            &json!({"status": "error", "errorType": "bad_data", "error": "parse error at char 3"}),
            "outcome",
        )
        .unwrap_err();
        assert!(matches!(e, QueryError::ErrorStatus { .. }));
        let text = e.to_string();
        assert!(
            text.contains("vm:8428") && text.contains("bad_data") && text.contains("parse error"),
            "{text}"
        );
        for (body, why) in [
            (json!([1, 2]), "not a JSON object"),
            (json!({"data": {}}), "status"),
            (json!({"status": "success"}), "data"),
            (
                json!({"status": "success", "data": {"resultType": "matrix", "result": []}}),
                "matrix",
            ),
            (
                json!({"status": "success", "data": {"resultType": "vector"}}),
                "result",
            ),
            (ok(json!([{"metric": {}, "value": "3"}])), "value"),
            (
                ok(json!([{"metric": {}, "value": [1, "three"]}])),
                "not a number",
            ),
        ] {
            let e = parse_vector("vm:8428", &body, "outcome").unwrap_err();
            assert!(matches!(e, QueryError::Shape { .. }), "{body}");
            assert!(e.to_string().contains(why), "{e} / {why}");
            assert!(e.to_string().contains("vm:8428"), "{e}");
        }
    }

    #[test]
    fn queries_name_the_env_escaped() {
        let q = queries("dev");
        assert_eq!(
            q[0].expr,
            "sum by (outcome) (increase(vakt_apply_total{env=\"dev\"}[24h]))"
        );
        assert_eq!(q[1].by, "reason");
        let q = queries("a\"b\\c");
        assert!(q[0].expr.contains("env=\"a\\\"b\\\\c\""), "{}", q[0].expr);
    }

    #[test]
    fn hosts_never_carry_credentials_or_paths() {
        assert_eq!(
            host_of("http://user:secret@vm.example:8428/select/0/prometheus?x=1"),
            "vm.example:8428"
        );
        assert_eq!(host_of("https://vm.example"), "vm.example");
        let e = redact(
            FetchError::Connect {
                url: "http://u:p@vm:1/api/v1/query?query=x".into(),
                detail: "error sending request for url (http://u:p@vm:1/api/v1/query?query=x)"
                    .into(),
            },
            "http://u:p@vm:1/api/v1/query?query=x",
            "vm:1",
        );
        assert!(!e.to_string().contains("u:p"), "{e}");
        let e = redact(
            FetchError::InvalidBody {
                url: "http://vm:1/api/v1/query?query=x".into(),
                detail: "expected value at line 1".into(),
            },
            "http://vm:1/api/v1/query?query=x",
            "vm:1",
        );
        assert_eq!(
            e.to_string(),
            "metrics backend vm:1 did not answer with JSON: expected value at line 1"
        );
    }

    fn fig(metric: &str, label: &str, value: f64, source: MetricsMode) -> MetricFigure {
        MetricFigure {
            metric: metric.into(),
            label: label.into(),
            value,
            source,
            window: if source == MetricsMode::Backend {
                WINDOW
            } else {
                SINCE_START
            }
            .into(),
            stale: false,
        }
    }

    #[test]
    fn modes_follow_the_backend_and_its_failures() {
        let local = vec![fig(
            "reconcile_steps",
            "applied",
            1.0,
            MetricsMode::InMemory,
        )];
        // Not configured: in_memory, not degraded.
        let v = view(None, &local, "2026-01-01T00:00:00Z", "rb");
        assert_eq!(
            (v.configured_mode, v.mode, v.degraded),
            (MetricsMode::InMemory, MetricsMode::InMemory, false)
        );
        assert_eq!(v.figures.len(), 1);
        assert!(v.backend_host.is_none());

        // Configured, not queried yet: in-process figures, not degraded.
        let mut b = Backend::new("http://vm:8428/");
        assert_eq!(b.url, "http://vm:8428");
        let v = view(Some(&b), &local, "t0", "rb");
        assert_eq!(
            (v.configured_mode, v.mode, v.degraded),
            (MetricsMode::Backend, MetricsMode::InMemory, false)
        );

        // A good answer: backend mode with both kinds of figures.
        b.record(
            "t1",
            Ok(vec![fig(
                "reconcile_steps",
                "applied",
                40.0,
                MetricsMode::Backend,
            )]),
        );
        let v = view(Some(&b), &local, "t0", "rb");
        assert_eq!((v.mode, v.degraded), (MetricsMode::Backend, false));
        assert_eq!(v.figures.len(), 2);
        assert!(v.figures.iter().all(|f| !f.stale));
        assert_eq!(v.last_success_at.as_deref(), Some("t1"));

        // Failures: in_memory, degraded since the first, last good figures stale.
        let err = || {
            QueryError::Fetch(FetchError::Status {
                url: "metrics backend vm:8428".into(),
                status: 503,
            })
        };
        b.record("t2", Err(err()));
        b.record("t3", Err(err()));
        let v = view(Some(&b), &local, "t0", "rb");
        assert_eq!((v.mode, v.degraded), (MetricsMode::InMemory, true));
        assert_eq!(v.degraded_since.as_deref(), Some("t2"));
        assert_eq!(v.checked_at.as_deref(), Some("t3"));
        assert!(v.error.as_deref().unwrap().contains("HTTP 503"));
        let backend: Vec<_> = v
            .figures
            .iter()
            .filter(|f| f.source == MetricsMode::Backend)
            .collect();
        assert_eq!(backend.len(), 1);
        assert!(backend[0].stale && backend[0].value == 40.0);

        // Recovery clears it.
        b.record("t4", Ok(vec![]));
        let v = view(Some(&b), &local, "t0", "rb");
        assert_eq!((v.mode, v.degraded), (MetricsMode::Backend, false));
        assert!(v.error.is_none() && v.degraded_since.is_none());
    }
}
