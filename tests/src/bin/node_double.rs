//! `vakt-node-double`: a stand-in for one platform node (gateway, aggregate, projection or
//! runner) that implements vakt's node admin contract (`openapi/node-admin.yaml`) for real and
//! exports the platform's metrics on `GET /metrics`. It is used by the test suite and the demo;
//! it is not part of vakt.
//!
//! It watches its service kind's placement keys in NATS KV and serves the tenants placed on its
//! shard; each served tenant holds `--inflight` units of work; a drain stops new work and
//! finishes one unit every `--drain-step-ms`.
//!
//! Fault switches (`--fault NAME`, repeatable, or at run time `POST /faults/NAME` and
//! `DELETE /faults/NAME`; `GET /faults` lists them with the metrics they move and the alerts
//! they fire): `error-500` (every admin call fails), `hang` (never answers), `lie-drained`
//! (reports drained while work is still inflight), `down` (503 everywhere, the scrape fails),
//! and the metric faults of the table in `node_double/platform.rs` (`high-error-rate`,
//! `disk-full`, `outbox-backlog`, ...). `vakt-node-double --help` prints the table.
//!
//!   vakt-node-double --id agg-osl1-01 --service-kind aggregate --site osl1 --shard agg-osl1-a \
//!       --listen 127.0.0.1:9090 --nats nats://127.0.0.1:4222 --prefix vakt_dev

#[path = "node_double/platform.rs"]
mod platform;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use serde_json::{Value, json};

use platform::{FAULTS, Fault, Kind, Platform, Served};

#[derive(Default)]
struct Tenant {
    state: &'static str,
    inflight: u64,
}

struct Node {
    id: String,
    kind: Kind,
    site: String,
    version: String,
    shard: String,
    inflight: u64,
    faults: Mutex<BTreeSet<Fault>>,
    tenants: Mutex<BTreeMap<String, Tenant>>,
    placement: Mutex<BTreeMap<String, String>>,
    platform: Mutex<Platform>,
    /// Admin calls being served (for `http_server_inflight_requests`).
    busy: Arc<AtomicI64>,
}

impl Node {
    fn has(&self, f: Fault) -> bool {
        self.faults.lock().expect("lock").contains(&f)
    }
}

/// Every value of a repeatable flag.
fn args_of(args: &[String], name: &str) -> Vec<String> {
    args.windows(2)
        .filter(|w| w[0] == name)
        .map(|w| w[1].clone())
        .collect()
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn usage() -> String {
    let mut s = String::from(
        "vakt-node-double: a stand-in platform node for vakt's tests and demo.

Usage: vakt-node-double --id ID --service-kind gateway|aggregate|projection|runner --site SITE
         --shard SHARD --nats URL --prefix PREFIX [--listen ADDR] [--version V]
         [--tls-cert FILE --tls-key FILE [--tls-client-ca FILE]]
         [--inflight N] [--drain-step-ms MS] [--fault NAME]...

Serves the node admin contract (/healthz, /admin/...), GET /metrics (the platform's metrics)
and the fault switches: GET /faults, POST /faults/NAME, DELETE /faults/NAME.

Faults (kinds: where it applies; alerts: bundled alerts it makes fire):
",
    );
    for f in FAULTS {
        let kinds = if f.kinds.is_empty() {
            "any".to_owned()
        } else {
            f.kinds
                .iter()
                .map(|k| k.as_str())
                .collect::<Vec<_>>()
                .join(",")
        };
        s.push_str(&format!("  {:<18} [{kinds}] {}\n", f.name, f.effect));
        if !f.alerts.is_empty() {
            s.push_str(&format!("  {:<18} alerts: {}\n", "", f.alerts.join(", ")));
        }
    }
    s.push_str("\nExit status: 1 cannot listen; 2 usage error.\n");
    s
}

fn usage_error(msg: &str) -> ! {
    eprintln!("vakt-node-double: {msg} (see vakt-node-double --help)");
    std::process::exit(2)
}

fn unknown_fault(name: &str) -> (StatusCode, String) {
    let names: Vec<&str> = FAULTS.iter().map(|f| f.name).collect();
    (
        StatusCode::NOT_FOUND,
        format!("unknown fault `{name}`; known: {}", names.join(", ")),
    )
}

/// Parses a fault name for a node of `kind`, or says what is wrong.
fn parse_fault(name: &str, kind: Kind) -> Result<Fault, (StatusCode, String)> {
    let Some(f) = Fault::parse(name) else {
        return Err(unknown_fault(name));
    };
    if !f.applies_to(kind) {
        let kinds: Vec<&str> = f.info().kinds.iter().map(|k| k.as_str()).collect();
        return Err((
            StatusCode::CONFLICT,
            format!(
                "fault `{name}` applies to {} nodes, this one is {}",
                kinds.join(" and "),
                kind.as_str()
            ),
        ));
    }
    Ok(f)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        print!("{}", usage());
        return;
    }
    let need = |n: &str| arg(&args, n).unwrap_or_else(|| usage_error(&format!("{n} is required")));
    let kind_s = need("--service-kind");
    let kind = Kind::parse(&kind_s).unwrap_or_else(|| {
        usage_error(&format!(
            "--service-kind `{kind_s}` is not one of gateway, aggregate, projection, runner"
        ))
    });
    let mut faults = BTreeSet::new();
    for name in args_of(&args, "--fault") {
        match parse_fault(&name, kind) {
            Ok(f) => {
                faults.insert(f);
            }
            Err((_, msg)) => usage_error(&msg),
        }
    }
    let id = need("--id");
    let version = arg(&args, "--version").unwrap_or_else(|| "1.0.0".into());
    let platform = Platform::new(kind, &id, &version);
    let busy = platform.real_inflight();
    let node = Arc::new(Node {
        id,
        kind,
        site: need("--site"),
        version,
        shard: need("--shard"),
        inflight: arg(&args, "--inflight")
            .map(|s| {
                s.parse()
                    .unwrap_or_else(|_| usage_error("--inflight takes a number"))
            })
            .unwrap_or(0),
        faults: Mutex::new(faults),
        tenants: Mutex::new(BTreeMap::new()),
        placement: Mutex::new(BTreeMap::new()),
        platform: Mutex::new(platform),
        busy,
    });
    let step = Duration::from_millis(
        arg(&args, "--drain-step-ms")
            .map(|s| {
                s.parse()
                    .unwrap_or_else(|_| usage_error("--drain-step-ms takes a number"))
            })
            .unwrap_or(100),
    );
    let listen = arg(&args, "--listen").unwrap_or_else(|| "127.0.0.1:0".into());
    let nats = need("--nats");
    let bucket = format!("{}_placement", need("--prefix"));

    // Watch placement: tenants placed on our shard are served.
    let n2 = node.clone();
    tokio::spawn(async move {
        loop {
            if let Err(e) = watch_placement(&nats, &bucket, &n2).await {
                eprintln!("vakt-node-double {}: placement watch: {e}; retrying", n2.id);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    // Drain progress.
    let n3 = node.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(step).await;
            let mut t = n3.tenants.lock().expect("lock");
            for s in t.values_mut() {
                if s.state == "draining" {
                    s.inflight = s.inflight.saturating_sub(1);
                    if s.inflight == 0 {
                        s.state = "drained";
                    }
                }
            }
        }
    });
    // The platform's metrics move four times a second.
    let n4 = node.clone();
    tokio::spawn(async move {
        let mut last = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let dt = last.elapsed().as_secs_f64();
            last = Instant::now();
            let served: Vec<Served> = n4
                .tenants
                .lock()
                .expect("lock")
                .iter()
                .map(|(t, s)| Served {
                    tenant: t.clone(),
                    inflight: s.inflight,
                    active: s.state == "active",
                })
                .collect();
            let faults = n4.faults.lock().expect("lock").clone();
            n4.platform.lock().expect("lock").step(dt, &faults, &served);
        }
    });

    let app = axum::Router::new()
        .route("/healthz", get(health))
        .route("/metrics", get(metrics))
        .route("/admin/info", get(info))
        .route("/admin/tenants/{tenant}", get(tenant))
        .route("/admin/tenants/{tenant}/drain", post(drain))
        .route("/admin/reload", post(info))
        .route("/faults", get(list_faults))
        .route("/faults/{name}", post(set_fault).delete(clear_fault))
        .route_layer(axum::middleware::from_fn_with_state(node.clone(), count))
        .with_state(node.clone());
    let l = tokio::net::TcpListener::bind(&listen)
        .await
        .unwrap_or_else(|e| {
            eprintln!("vakt-node-double: cannot listen on {listen}: {e}");
            std::process::exit(1)
        });
    let addr = l.local_addr().expect("addr");
    match arg(&args, "--tls-cert") {
        Some(cert) => {
            let key = arg(&args, "--tls-key")
                .unwrap_or_else(|| usage_error("--tls-cert needs --tls-key"));
            let acceptor = tls_acceptor(&cert, &key, arg(&args, "--tls-client-ca").as_deref());
            println!("vakt-node-double {} listening on https://{addr}", node.id);
            let _ = axum::serve(TlsListener { inner: l, acceptor }, app).await;
        }
        None => {
            println!("vakt-node-double {} listening on http://{addr}", node.id);
            let _ = axum::serve(l, app).await;
        }
    }
}

/// A TLS acceptor for `--tls-cert`/`--tls-key`; with `--tls-client-ca`, client certificates
/// signed by that CA are required (mutual TLS).
fn tls_acceptor(cert: &str, key: &str, client_ca: Option<&str>) -> tokio_rustls::TlsAcceptor {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls;
    let fail = |what: &str, e: &dyn std::fmt::Display| -> ! {
        eprintln!("vakt-node-double: {what}: {e}");
        std::process::exit(2)
    };
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .unwrap_or_else(|e| fail(cert, &e))
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| fail(cert, &e));
    let key = PrivateKeyDer::from_pem_file(key).unwrap_or_else(|e| fail(key, &e));
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|e| fail("TLS versions", &e));
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca).unwrap_or_else(|e| fail(ca, &e)) {
                roots
                    .add(c.unwrap_or_else(|e| fail(ca, &e)))
                    .unwrap_or_else(|e| fail(ca, &e));
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                std::sync::Arc::new(roots),
                provider,
            )
            .build()
            .unwrap_or_else(|e| fail("client verifier", &e));
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(certs, key)
        .unwrap_or_else(|e| fail("certificate", &e));
    tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config))
}

/// `axum::serve` over TLS: each accepted connection is handshaken (5 s at most) first; failed
/// handshakes are logged and dropped.
struct TlsListener {
    inner: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((s, a)) = self.inner.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            match tokio::time::timeout(Duration::from_secs(5), self.acceptor.accept(s)).await {
                Ok(Ok(t)) => return (t, a),
                Ok(Err(e)) => eprintln!("vakt-node-double: TLS handshake from {a}: {e}"),
                Err(_) => eprintln!("vakt-node-double: TLS handshake from {a} timed out"),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// The route template of a path, so tenant names and fault names do not become label values.
fn route_of(path: &str) -> &'static str {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        ["healthz"] => "/healthz",
        ["metrics"] => "/metrics",
        ["admin", "info"] => "/admin/info",
        ["admin", "reload"] => "/admin/reload",
        ["admin", "tenants", _] => "/admin/tenants/{tenant}",
        ["admin", "tenants", _, "drain"] => "/admin/tenants/{tenant}/drain",
        ["faults"] => "/faults",
        ["faults", _] => "/faults/{name}",
        _ => "other",
    }
}

/// Counts every request the double serves into `http_server_requests_total` and
/// `http_server_request_duration_seconds`, by route template.
async fn count(State(n): State<Arc<Node>>, req: Request, next: Next) -> Response {
    let method = req.method().as_str().to_owned();
    let route = route_of(req.uri().path());
    n.busy.fetch_add(1, Ordering::Relaxed);
    let t0 = Instant::now();
    let r = next.run(req).await;
    n.busy.fetch_sub(1, Ordering::Relaxed);
    n.platform.lock().expect("lock").served(
        &method,
        route,
        r.status().as_u16(),
        t0.elapsed().as_secs_f64(),
    );
    r
}

async fn metrics(State(n): State<Arc<Node>>) -> Response {
    hang(&n).await;
    if n.has(Fault::Down) {
        return (StatusCode::SERVICE_UNAVAILABLE, "injected fault: down\n").into_response();
    }
    let text = n.platform.lock().expect("lock").render();
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

fn faults_json(n: &Node) -> Value {
    let active: Vec<&str> = n
        .faults
        .lock()
        .expect("lock")
        .iter()
        .map(|f| f.info().name)
        .collect();
    let table: Vec<Value> = FAULTS
        .iter()
        .map(|f| {
            json!({
                "name": f.name,
                "applies": f.fault.applies_to(n.kind),
                "kinds": f.kinds.iter().map(|k| k.as_str()).collect::<Vec<_>>(),
                "effect": f.effect,
                "metrics": f.metrics,
                "alerts": f.alerts,
            })
        })
        .collect();
    json!({"node_id": n.id, "service_kind": n.kind.as_str(), "active": active, "faults": table})
}

async fn list_faults(State(n): State<Arc<Node>>) -> Response {
    Json(faults_json(&n)).into_response()
}

async fn set_fault(State(n): State<Arc<Node>>, Path(name): Path<String>) -> Response {
    match parse_fault(&name, n.kind) {
        Ok(f) => {
            n.faults.lock().expect("lock").insert(f);
            Json(faults_json(&n)).into_response()
        }
        Err((code, msg)) => (code, Json(json!({"error": msg}))).into_response(),
    }
}

async fn clear_fault(State(n): State<Arc<Node>>, Path(name): Path<String>) -> Response {
    // Clearing a fault that does not apply here is not an error: it is off.
    match Fault::parse(&name) {
        Some(f) => {
            n.faults.lock().expect("lock").remove(&f);
            Json(faults_json(&n)).into_response()
        }
        None => {
            let (code, msg) = unknown_fault(&name);
            (code, Json(json!({"error": msg}))).into_response()
        }
    }
}

async fn watch_placement(url: &str, bucket: &str, node: &Node) -> Result<(), String> {
    let c = async_nats::connect(url).await.map_err(|e| e.to_string())?;
    let js = async_nats::jetstream::new(c);
    let kv = loop {
        match js.get_key_value(bucket).await {
            Ok(kv) => break kv,
            Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    };
    let mut w = kv
        .watch_with_history(format!("{}.>", node.kind.as_str()))
        .await
        .map_err(|e| e.to_string())?;
    while let Some(e) = w.next().await {
        let e = e.map_err(|e| e.to_string())?;
        let tenant = e
            .key
            .split_once('.')
            .map(|(_, t)| t.to_owned())
            .unwrap_or_default();
        let shard = serde_json::from_slice::<Value>(&e.value)
            .ok()
            .and_then(|v| v["spec"]["shard"].as_str().map(str::to_owned));
        let mut p = node.placement.lock().expect("lock");
        match (e.operation, shard) {
            (async_nats::jetstream::kv::Operation::Put, Some(s)) => {
                p.insert(tenant.clone(), s);
            }
            _ => {
                p.remove(&tenant);
            }
        }
        let ours = p.get(&tenant).is_some_and(|s| *s == node.shard);
        let mut t = node.tenants.lock().expect("lock");
        if ours {
            t.entry(tenant).or_insert(Tenant {
                state: "active",
                inflight: node.inflight,
            });
        } else if t.get(&tenant).is_some_and(|s| s.state == "drained") || !ours {
            t.remove(&tenant);
        }
    }
    Ok(())
}

fn fault(node: &Node) -> Option<Response> {
    if node.has(Fault::Down) {
        return Some(
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"error": "injected fault: down"})),
            )
                .into_response(),
        );
    }
    node.has(Fault::Error500).then(|| {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": "injected fault"})),
        )
            .into_response()
    })
}

async fn hang(node: &Node) {
    if node.has(Fault::Hang) {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}

async fn health(State(n): State<Arc<Node>>) -> Response {
    hang(&n).await;
    if let Some(r) = fault(&n) {
        return r;
    }
    Json(json!({"status": "ok"})).into_response()
}

async fn info(State(n): State<Arc<Node>>) -> Response {
    hang(&n).await;
    if let Some(r) = fault(&n) {
        return r;
    }
    let tenants: Vec<String> = n.tenants.lock().expect("lock").keys().cloned().collect();
    Json(json!({
        "node_id": n.id, "service_kind": n.kind.as_str(), "site": n.site, "version": n.version,
        "labels": {"double": "true"}, "tenants": tenants,
    }))
    .into_response()
}

fn state_of(n: &Node, tenant: &str) -> Response {
    let t = n.tenants.lock().expect("lock");
    match t.get(tenant) {
        Some(s) => {
            let state = if n.has(Fault::LieDrained) && s.state == "draining" {
                "drained"
            } else {
                s.state
            };
            Json(json!({"tenant": tenant, "state": state, "inflight": s.inflight})).into_response()
        }
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": format!("tenant {tenant} is not served here")})),
        )
            .into_response(),
    }
}

async fn tenant(State(n): State<Arc<Node>>, Path(tenant): Path<String>) -> Response {
    hang(&n).await;
    if let Some(r) = fault(&n) {
        return r;
    }
    state_of(&n, &tenant)
}

async fn drain(State(n): State<Arc<Node>>, Path(tenant): Path<String>) -> Response {
    hang(&n).await;
    if let Some(r) = fault(&n) {
        return r;
    }
    {
        let mut t = n.tenants.lock().expect("lock");
        if let Some(s) = t.get_mut(&tenant)
            && s.state == "active"
        {
            s.state = if s.inflight == 0 {
                "drained"
            } else {
                "draining"
            };
        }
    }
    let mut r = state_of(&n, &tenant);
    if r.status() == StatusCode::OK {
        *r.status_mut() = StatusCode::ACCEPTED;
    }
    r
}
