//! A typed client of the daemon's operator API (`/api/v1`, `openapi/operator-api.yaml`): what
//! `vakt status`, `vakt events`, `vakt jobs --api` and `vakt approve --api` use. Every call is
//! bounded (2 s to connect, 10 s in all, 16 MiB of answer) and never follows a redirect, so a
//! token is only ever sent to the URL the operator gave.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::daemon::fetch;
use crate::ops::jobs::Job;
use crate::outcome::exit;
use crate::store::state::Approval;

/// The largest answer read.
pub const MAX_BODY: usize = 16 * 1024 * 1024;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The daemon could not be reached, or its answer could not be read.
    #[error("cannot reach {url}: {message}")]
    Unreachable { url: String, message: String },
    /// The daemon refused: bad token, missing role, unknown id, a state that forbids it.
    #[error("{message} ({status})")]
    Refused { status: u16, message: String },
    /// The daemon failed (5xx) or answered something that is not the documented shape.
    #[error("{message} ({status})")]
    Failed { status: u16, message: String },
}

impl ClientError {
    /// The documented exit code: refusals 4, the rest 3 (could not run).
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Refused { .. } => exit::REFUSED,
            _ => exit::COULD_NOT_RUN,
        }
    }
}

/// A connection to one daemon's operator API with one bearer token.
#[derive(Debug, Clone)]
pub struct ApiClient {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl ApiClient {
    pub fn new(base: &str, token: &str) -> ApiClient {
        ApiClient {
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            http: fetch::client_with(Duration::from_secs(10)),
        }
    }

    /// `GET /api/v1/status`: the decision header, live conditions, jobs and approvals.
    pub async fn status(&self) -> Result<Value, ClientError> {
        self.get("/api/v1/status", &[]).await
    }

    /// `GET /api/v1/events` filtered by `query` (`correlation_id`, `resource`, `limit`, …).
    pub async fn events(&self, query: &[(&str, String)]) -> Result<Vec<Value>, ClientError> {
        self.get("/api/v1/events", query).await
    }

    /// `GET /api/v1/jobs` filtered by `query` (`state`, `tenant`, `site`).
    pub async fn jobs(&self, query: &[(&str, String)]) -> Result<Vec<Job>, ClientError> {
        self.get("/api/v1/jobs", query).await
    }

    /// `GET /api/v1/dead-letters`.
    pub async fn dead_letters(&self) -> Result<Vec<Job>, ClientError> {
        self.get("/api/v1/dead-letters", &[]).await
    }

    /// `GET /api/v1/jobs/{id}`.
    pub async fn job(&self, id: &str) -> Result<Job, ClientError> {
        self.get(&format!("/api/v1/jobs/{id}"), &[]).await
    }

    /// `POST /api/v1/jobs/{id}/retry` (audited, needs a reason).
    pub async fn retry(&self, id: &str, reason: &str) -> Result<Job, ClientError> {
        self.post(&format!("/api/v1/jobs/{id}/retry"), reason).await
    }

    /// `POST /api/v1/jobs/{id}/cancel` (audited, needs a reason).
    pub async fn cancel(&self, id: &str, reason: &str) -> Result<Job, ClientError> {
        self.post(&format!("/api/v1/jobs/{id}/cancel"), reason)
            .await
    }

    /// `POST /api/v1/nodes/{node}/drain`: the node-drain job it queued.
    pub async fn drain_node(&self, node: &str, reason: &str) -> Result<Job, ClientError> {
        self.post(&format!("/api/v1/nodes/{node}/drain"), reason)
            .await
    }

    /// `POST /api/v1/approvals/{plan}/approve` or `/reject`: the decided approval.
    pub async fn decide(
        &self,
        plan: &str,
        approve: bool,
        reason: &str,
    ) -> Result<Approval, ClientError> {
        let verb = if approve { "approve" } else { "reject" };
        self.post(&format!("/api/v1/approvals/{plan}/{verb}"), reason)
            .await
    }

    async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        let req = self.http.get(&url).query(query);
        self.send(&url, req).await
    }

    async fn post<T: DeserializeOwned>(&self, path: &str, reason: &str) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        let req = self.http.post(&url).json(&json!({ "reason": reason }));
        self.send(&url, req).await
    }

    async fn send<T: DeserializeOwned>(
        &self,
        url: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let unreachable = |e: &dyn std::fmt::Display| ClientError::Unreachable {
            url: url.to_owned(),
            message: e.to_string(),
        };
        let mut r = req
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| unreachable(&e))?;
        let status = r.status().as_u16();
        let body = match fetch::read_body(&mut r, MAX_BODY).await {
            Ok(b) => b,
            Err(fetch::BodyError::TooLarge) => {
                return Err(ClientError::Failed {
                    status,
                    message: format!("the answer of {url} is larger than {MAX_BODY} bytes"),
                });
            }
            Err(fetch::BodyError::Transport(e)) => return Err(unreachable(&e)),
        };
        if (200..300).contains(&status) {
            return serde_json::from_slice(&body).map_err(|e| ClientError::Failed {
                status,
                message: format!("{url} answered something vakt does not understand: {e}"),
            });
        }
        let message = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or_else(|| "request failed".to_owned());
        Err(match status {
            400 | 401 | 403 | 404 | 409 => ClientError::Refused { status, message },
            _ => ClientError::Failed { status, message },
        })
    }
}
