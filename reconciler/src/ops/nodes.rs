//! The node admin contract (`openapi/node-admin.yaml`): a client that only ever calls the
//! `admin_url` a node declares in the inventory, with timeouts and bounded retries, and the
//! comparison of what nodes report with what Git declares (trust levels).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::desired::compile::{Bucket, Desired};

/// `GET /admin/info`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeInfo {
    pub node_id: String,
    pub service_kind: String,
    pub site: String,
    pub version: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub tenants: Vec<String>,
}

/// `GET /admin/tenants/{tenant}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TenantState {
    pub tenant: String,
    /// active | draining | drained
    pub state: String,
    pub inflight: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("node `{0}` is not declared in the inventory; vakt calls only declared admin URLs")]
    Undeclared(String),
    #[error("node `{node}` ({url}): {message}")]
    Call {
        node: String,
        url: String,
        message: String,
    },
    #[error("node `{node}` does not serve tenant `{tenant}`")]
    UnknownTenant { node: String, tenant: String },
}

/// A declared node: id → admin URL, service kind, site, version.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Declared {
    pub id: String,
    pub admin_url: String,
    pub service_kind: String,
    pub site: String,
    pub version: String,
}

/// The nodes the inventory of a desired state declares.
pub fn declared_nodes(d: &Desired) -> Vec<Declared> {
    d.bucket(Bucket::Inventory)
        .filter(|(k, _)| k.starts_with("node."))
        .filter_map(|(_, e)| {
            let v = e.spec_value();
            let s = |k: &str| {
                v.get(k)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned()
            };
            Some(Declared {
                id: v.get("id")?.as_str()?.to_owned(),
                admin_url: s("admin_url"),
                service_kind: s("service_kind"),
                site: s("site"),
                version: s("version"),
            })
        })
        .collect()
}

/// Calls nodes by id, never by URL.
#[derive(Clone)]
pub struct NodeClient {
    http: reqwest::Client,
    nodes: BTreeMap<String, String>,
    attempts: u32,
}

impl NodeClient {
    /// A client for exactly the declared nodes.
    pub fn new(declared: &[Declared]) -> NodeClient {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("HTTP client");
        NodeClient {
            http,
            nodes: declared
                .iter()
                .map(|d| (d.id.clone(), d.admin_url.trim_end_matches('/').to_owned()))
                .collect(),
            attempts: 3,
        }
    }

    fn url(&self, node: &str, path: &str) -> Result<String, NodeError> {
        let base = self
            .nodes
            .get(node)
            .ok_or_else(|| NodeError::Undeclared(node.to_owned()))?;
        Ok(format!("{base}{path}"))
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        node: &str,
        post: bool,
        path: &str,
    ) -> Result<(u16, Option<T>), NodeError> {
        let url = self.url(node, path)?;
        let mut last = String::new();
        for attempt in 0..self.attempts {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
            }
            let req = if post {
                self.http.post(&url)
            } else {
                self.http.get(&url)
            };
            match req.send().await {
                Ok(r) => {
                    let code = r.status().as_u16();
                    if code >= 500 {
                        last = format!("answered {code}");
                        continue;
                    }
                    if code == 404 {
                        return Ok((code, None));
                    }
                    if !(200..300).contains(&code) {
                        return Err(NodeError::Call {
                            node: node.into(),
                            url,
                            message: format!("answered {code}"),
                        });
                    }
                    return r.json::<T>().await.map(|v| (code, Some(v))).map_err(|e| {
                        NodeError::Call {
                            node: node.into(),
                            url: url.clone(),
                            message: format!("invalid answer: {e}"),
                        }
                    });
                }
                Err(e) => {
                    last = if e.is_timeout() {
                        "timed out".into()
                    } else {
                        format!("unreachable ({e})")
                    };
                }
            }
        }
        Err(NodeError::Call {
            node: node.into(),
            url,
            message: format!("{last} after {} attempts", self.attempts),
        })
    }

    /// `GET /healthz`: `Ok(true)` when 2xx; a timeout, a refused connection or another status
    /// is an error that says which.
    pub async fn health(&self, node: &str) -> Result<bool, NodeError> {
        let url = self.url(node, "/healthz")?;
        let fail = |message: String| NodeError::Call {
            node: node.into(),
            url: url.clone(),
            message,
        };
        match self.http.get(&url).send().await {
            Ok(r) if r.status().is_success() => Ok(true),
            Ok(r) => Err(fail(format!(
                "health check answered {}",
                r.status().as_u16()
            ))),
            Err(e) if e.is_timeout() => Err(fail("health check timed out after 5 s".into())),
            Err(e) if e.is_connect() => Err(fail("connection refused or unreachable".into())),
            Err(e) => Err(fail(e.to_string())),
        }
    }

    pub async fn info(&self, node: &str) -> Result<NodeInfo, NodeError> {
        let (_, v) = self.call::<NodeInfo>(node, false, "/admin/info").await?;
        v.ok_or_else(|| NodeError::Call {
            node: node.into(),
            url: self.url(node, "/admin/info").unwrap_or_default(),
            message: "answered 404".into(),
        })
    }

    pub async fn tenant(&self, node: &str, tenant: &str) -> Result<TenantState, NodeError> {
        let (_, v) = self
            .call::<TenantState>(node, false, &format!("/admin/tenants/{tenant}"))
            .await?;
        v.ok_or_else(|| NodeError::UnknownTenant {
            node: node.into(),
            tenant: tenant.into(),
        })
    }

    pub async fn drain(&self, node: &str, tenant: &str) -> Result<TenantState, NodeError> {
        let (_, v) = self
            .call::<TenantState>(node, true, &format!("/admin/tenants/{tenant}/drain"))
            .await?;
        v.ok_or_else(|| NodeError::UnknownTenant {
            node: node.into(),
            tenant: tenant.into(),
        })
    }

    pub async fn reload(&self, node: &str) -> Result<NodeInfo, NodeError> {
        let (_, v) = self.call::<NodeInfo>(node, true, "/admin/reload").await?;
        v.ok_or_else(|| NodeError::Call {
            node: node.into(),
            url: self.url(node, "/admin/reload").unwrap_or_default(),
            message: "answered 404".into(),
        })
    }
}

/// Trust level of an inventory item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Trust {
    /// In Git, not (yet) observed.
    DeclaredOnly,
    /// Observed, not in Git.
    DiscoveredOnly,
    /// Observed and matching Git.
    Confirmed,
    /// Observed and disagreeing with Git (kind, site or version).
    Conflicting,
}

/// One node as declared and as observed.
#[derive(Debug, Clone, Serialize)]
pub struct Observation {
    pub id: String,
    pub declared: Option<Declared>,
    pub up: bool,
    pub info: Option<NodeInfo>,
    pub trust: Trust,
    pub detail: Option<String>,
}

/// Polls every declared node's health and info, and classifies each.
pub async fn observe(client: &NodeClient, declared: &[Declared]) -> Vec<Observation> {
    let polls = declared.iter().map(|d| async move {
        let up = client.health(&d.id).await.unwrap_or(false);
        let info = if up {
            client.info(&d.id).await.ok()
        } else {
            None
        };
        (d, up, info)
    });
    let results = futures_util::future::join_all(polls).await;
    let mut out = Vec::new();
    for (d, up, info) in results {
        let (trust, detail) = match &info {
            None => (
                Trust::DeclaredOnly,
                (!up).then(|| "not answering its health check".to_owned()),
            ),
            Some(i) => {
                let mut diffs = Vec::new();
                if i.node_id != d.id {
                    diffs.push(format!("reports id {}", i.node_id));
                }
                if i.service_kind != d.service_kind {
                    diffs.push(format!(
                        "reports service kind {} (Git: {})",
                        i.service_kind, d.service_kind
                    ));
                }
                if i.site != d.site {
                    diffs.push(format!("reports site {} (Git: {})", i.site, d.site));
                }
                if i.version != d.version {
                    diffs.push(format!("runs version {} (Git: {})", i.version, d.version));
                }
                if diffs.is_empty() {
                    (Trust::Confirmed, None)
                } else {
                    (Trust::Conflicting, Some(diffs.join("; ")))
                }
            }
        };
        out.push(Observation {
            id: d.id.clone(),
            declared: Some(d.clone()),
            up,
            info,
            trust,
            detail,
        });
    }
    out
}
