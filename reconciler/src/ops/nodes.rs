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
    #[error(
        "node `{node}` requires TLS (tls = \"required\" in inventory/nodes/{node}.toml) but its admin_url {url} is plain HTTP: it is not called; change admin_url to https://"
    )]
    TlsRequired { node: String, url: String },
}

/// The largest CA bundle, certificate or key file read for node TLS.
pub const MAX_TLS_FILE: u64 = 1024 * 1024;

/// The largest admin answer read from a node (its JSON answers are a few hundred bytes). A
/// node that declares or streams more is cut off at this many bytes: the call fails, naming
/// the limit, and nothing larger is ever held in memory.
pub const MAX_ANSWER: usize = 1024 * 1024;

/// Reads an answer's body, refusing more than [`MAX_ANSWER`] bytes (declared by
/// `Content-Length` or streamed) without reading the rest.
async fn read_capped(mut r: reqwest::Response) -> Result<Vec<u8>, String> {
    let too_large = || format!("answer larger than {MAX_ANSWER} bytes: not read further");
    if r.content_length().is_some_and(|n| n > MAX_ANSWER as u64) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = r.chunk().await.map_err(|e| {
        if e.is_timeout() {
            "timed out reading the answer".to_owned()
        } else {
            format!("cannot read the answer: {e}")
        }
    })? {
        if body.len() + chunk.len() > MAX_ANSWER {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Why the node TLS options cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum NodeTlsError {
    #[error("cannot read {option} {path}: {message}")]
    Read {
        option: &'static str,
        path: std::path::PathBuf,
        message: String,
    },
    #[error("{option} {path} is not a usable PEM file: {message}")]
    Invalid {
        option: &'static str,
        path: std::path::PathBuf,
        message: String,
    },
    #[error("--node-cert and --node-key go together: give both (mutual TLS) or neither")]
    Pair,
}

/// TLS for node admin calls (`vakt reconcile --node-ca FILE [--node-cert FILE --node-key FILE]`):
/// the CAs trusted for `https://` admin URLs (no built-in roots: node certificates come from
/// the operator's CA) and the client certificate for nodes that require one.
#[derive(Clone, Default)]
pub struct NodeTls {
    roots: Vec<reqwest::Certificate>,
    identity: Option<reqwest::Identity>,
    ca_file: Option<std::path::PathBuf>,
    cert_file: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeTls")
            .field("ca_file", &self.ca_file)
            .field("cert_file", &self.cert_file)
            .finish()
    }
}

fn read_bounded(option: &'static str, path: &std::path::Path) -> Result<Vec<u8>, NodeTlsError> {
    use std::io::Read;
    let err = |e: std::io::Error| NodeTlsError::Read {
        option,
        path: path.to_owned(),
        message: e.to_string(),
    };
    let mut buf = Vec::new();
    std::fs::File::open(path)
        .map_err(err)?
        .take(MAX_TLS_FILE + 1)
        .read_to_end(&mut buf)
        .map_err(err)?;
    if buf.len() as u64 > MAX_TLS_FILE {
        return Err(NodeTlsError::Invalid {
            option,
            path: path.to_owned(),
            message: format!("larger than {MAX_TLS_FILE} bytes"),
        });
    }
    Ok(buf)
}

impl NodeTls {
    /// Reads the CA bundle and the client certificate and key (PEM).
    pub fn load(
        ca: Option<&std::path::Path>,
        cert: Option<&std::path::Path>,
        key: Option<&std::path::Path>,
    ) -> Result<NodeTls, NodeTlsError> {
        let mut t = NodeTls::default();
        if let Some(ca) = ca {
            let pem = read_bounded("--node-ca", ca)?;
            t.roots =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| NodeTlsError::Invalid {
                    option: "--node-ca",
                    path: ca.to_owned(),
                    message: e.to_string(),
                })?;
            if t.roots.is_empty() {
                return Err(NodeTlsError::Invalid {
                    option: "--node-ca",
                    path: ca.to_owned(),
                    message: "no certificate in it".into(),
                });
            }
            t.ca_file = Some(ca.to_owned());
        }
        match (cert, key) {
            (None, None) => {}
            (Some(c), Some(k)) => {
                let mut pem = read_bounded("--node-cert", c)?;
                pem.push(b'\n');
                pem.extend(read_bounded("--node-key", k)?);
                t.identity =
                    Some(
                        reqwest::Identity::from_pem(&pem).map_err(|e| NodeTlsError::Invalid {
                            option: "--node-cert/--node-key",
                            path: c.to_owned(),
                            message: e.to_string(),
                        })?,
                    );
                t.cert_file = Some(c.to_owned());
            }
            _ => return Err(NodeTlsError::Pair),
        }
        Ok(t)
    }

    /// What to do about a failed TLS handshake, from the error's text (rustls's wording).
    fn hint(&self, err: &str) -> Option<String> {
        let e = err.to_ascii_lowercase();
        if e.contains("unknownissuer") || e.contains("invalid peer certificate") {
            return Some(match &self.ca_file {
                None => "TLS handshake failed: the node's certificate is not signed by a trusted CA and the daemon has no --node-ca: pass --node-ca FILE (the CA bundle that signed the node certificates)".into(),
                Some(f) => format!("TLS handshake failed: the node's certificate is not valid for it or not signed by the CA in --node-ca {} ({err})", f.display()),
            });
        }
        if e.contains("certificaterequired")
            || e.contains("certificate required")
            || e.contains("handshakefailure")
            || e.contains("unknownca")
            || e.contains("badcertificate")
        {
            return Some(match &self.cert_file {
                None => "TLS handshake failed: the node requires a client certificate (mutual TLS) and the daemon has none: pass --node-cert FILE --node-key FILE".into(),
                Some(f) => format!("TLS handshake failed: the node refused the client certificate in --node-cert {} ({err})", f.display()),
            });
        }
        if e.contains("invalidcontenttype")
            || e.contains("corrupt message")
            || e.contains("invalid content type")
        {
            return Some("TLS handshake failed: the node does not speak TLS on this port (is its admin_url meant to be http://?)".into());
        }
        None
    }
}

/// The error and its sources, joined (reqwest hides the TLS cause a few levels down).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    let mut n = 0;
    while let Some(c) = src {
        n += 1;
        if n > 8 {
            break;
        }
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// A declared node: id → admin URL, service kind, site, version.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Declared {
    pub id: String,
    pub admin_url: String,
    /// `tls = "required"`: never called over plain HTTP.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tls_required: bool,
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
                tls_required: v.get("tls").and_then(Value::as_str) == Some("required"),
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
    /// Nodes marked `tls = "required"`.
    tls_required: std::collections::BTreeSet<String>,
    tls: NodeTls,
    attempts: u32,
}

impl NodeClient {
    /// A client for exactly the declared nodes.
    pub fn new(declared: &[Declared]) -> NodeClient {
        NodeClient::with_tls(declared, &NodeTls::default())
    }

    /// A client for exactly the declared nodes, with the daemon's node TLS settings.
    pub fn with_tls(declared: &[Declared], tls: &NodeTls) -> NodeClient {
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none());
        for c in &tls.roots {
            b = b.add_root_certificate(c.clone());
        }
        if let Some(id) = &tls.identity {
            b = b.identity(id.clone());
        }
        // Building fails only when the TLS backend cannot start; the settings were checked by
        // `NodeTls::load`.
        let http = b.build().unwrap_or_else(|_| reqwest::Client::new());
        NodeClient {
            tls_required: declared
                .iter()
                .filter(|d| d.tls_required)
                .map(|d| d.id.clone())
                .collect(),
            tls: tls.clone(),
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
        if self.tls_required.contains(node) && !base.starts_with("https://") {
            return Err(NodeError::TlsRequired {
                node: node.to_owned(),
                url: base.clone(),
            });
        }
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
                    let body = read_capped(r).await.map_err(|message| NodeError::Call {
                        node: node.into(),
                        url: url.clone(),
                        message,
                    })?;
                    return serde_json::from_slice::<T>(&body)
                        .map(|v| (code, Some(v)))
                        .map_err(|e| NodeError::Call {
                            node: node.into(),
                            url: url.clone(),
                            message: format!("invalid answer: {e}"),
                        });
                }
                Err(e) => {
                    let full = chain(&e);
                    if let Some(h) = self.tls.hint(&full) {
                        // A handshake fails the same way every time: no retry.
                        return Err(NodeError::Call {
                            node: node.into(),
                            url,
                            message: h,
                        });
                    }
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
            Err(e) => {
                let full = chain(&e);
                match self.tls.hint(&full) {
                    Some(h) => Err(fail(h)),
                    None if e.is_connect() => Err(fail("connection refused or unreachable".into())),
                    None => Err(fail(full)),
                }
            }
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
        let health = client.health(&d.id).await;
        let up = matches!(health, Ok(true));
        let info = if up {
            client.info(&d.id).await.ok()
        } else {
            None
        };
        (d, up, info, health.err())
    });
    let results = futures_util::future::join_all(polls).await;
    let mut out = Vec::new();
    for (d, up, info, error) in results {
        let (trust, detail) = match &info {
            None => (
                Trust::DeclaredOnly,
                (!up).then(|| match &error {
                    Some(e @ (NodeError::TlsRequired { .. } | NodeError::Call { .. }))
                        if e.to_string().contains("TLS") =>
                    {
                        format!("not answering its health check: {e}")
                    }
                    _ => "not answering its health check".to_owned(),
                }),
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
