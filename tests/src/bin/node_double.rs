//! `vakt-node-double`: a stand-in for one platform node (gateway, aggregate, projection or
//! runner) that implements vakt's node admin contract (`openapi/node-admin.yaml`) for real. It
//! is used by the test suite and the demo; it is not part of vakt.
//!
//! It watches its service kind's placement keys in NATS KV and serves the tenants placed on its
//! shard; each served tenant holds `--inflight` units of work; a drain stops new work and
//! finishes one unit every `--drain-step-ms`. Faults for tests: `--fault error-500` (every admin
//! call fails), `--fault hang` (never answers), `--fault lie-drained` (reports drained while work
//! is still inflight).
//!
//!   vakt-node-double --id agg-osl1-01 --service-kind aggregate --site osl1 --shard agg-osl1-a \
//!       --listen 127.0.0.1:9090 --nats nats://127.0.0.1:4222 --prefix vakt_dev

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use serde_json::{Value, json};

#[derive(Default)]
struct Tenant {
    state: &'static str,
    inflight: u64,
}

struct Node {
    id: String,
    kind: String,
    site: String,
    version: String,
    shard: String,
    inflight: u64,
    fault: Option<String>,
    tenants: Mutex<BTreeMap<String, Tenant>>,
    placement: Mutex<BTreeMap<String, String>>,
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let need = |n: &str| {
        arg(&args, n).unwrap_or_else(|| {
            eprintln!("vakt-node-double: {n} is required (see the source header for usage)");
            std::process::exit(2)
        })
    };
    let node = Arc::new(Node {
        id: need("--id"),
        kind: need("--service-kind"),
        site: need("--site"),
        version: arg(&args, "--version").unwrap_or_else(|| "1.0.0".into()),
        shard: need("--shard"),
        inflight: arg(&args, "--inflight")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        fault: arg(&args, "--fault"),
        tenants: Mutex::new(BTreeMap::new()),
        placement: Mutex::new(BTreeMap::new()),
    });
    let step = Duration::from_millis(
        arg(&args, "--drain-step-ms")
            .and_then(|s| s.parse().ok())
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

    let app = axum::Router::new()
        .route("/healthz", get(health))
        .route("/admin/info", get(info))
        .route("/admin/tenants/{tenant}", get(tenant))
        .route("/admin/tenants/{tenant}/drain", post(drain))
        .route("/admin/reload", post(info))
        .with_state(node.clone());
    let l = tokio::net::TcpListener::bind(&listen)
        .await
        .unwrap_or_else(|e| {
            eprintln!("vakt-node-double: cannot listen on {listen}: {e}");
            std::process::exit(1)
        });
    println!(
        "vakt-node-double {} listening on http://{}",
        node.id,
        l.local_addr().expect("addr")
    );
    let _ = axum::serve(l, app).await;
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
        .watch_with_history(format!("{}.>", node.kind))
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
    match node.fault.as_deref() {
        Some("error-500") => Some(
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(json!({"error": "injected fault"})),
            )
                .into_response(),
        ),
        _ => None,
    }
}

async fn hang(node: &Node) {
    if node.fault.as_deref() == Some("hang") {
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
        "node_id": n.id, "service_kind": n.kind, "site": n.site, "version": n.version,
        "labels": {"double": "true"}, "tenants": tenants,
    }))
    .into_response()
}

fn state_of(n: &Node, tenant: &str) -> Response {
    let t = n.tenants.lock().expect("lock");
    match t.get(tenant) {
        Some(s) => {
            let state = if n.fault.as_deref() == Some("lie-drained") && s.state == "draining" {
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
