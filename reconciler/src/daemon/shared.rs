//! What the daemon's loops share with its HTTP server: metrics, the live status and snippets,
//! the applied commit's declared nodes and access rules.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};

pub type Labels = Vec<(String, String)>;

/// Metrics and live status, shared with the HTTP server.
pub struct Shared {
    pub(super) registry: Mutex<Registry>,
    pub(super) duration: Histogram,
    pub(super) applies: Family<Labels, Counter>,
    pub(super) refused: Family<Labels, Counter>,
    pub(super) drifted: Family<Labels, Gauge>,
    pub(super) commit_age: Family<Labels, Gauge<f64, AtomicU64>>,
    pub(super) approvals_pending: Family<Labels, Gauge>,
    pub(super) leader_gauge: Family<Labels, Gauge>,
    pub status: Mutex<serde_json::Value>,
    /// The latest live snippets, served at `/snippets/<name>.json`.
    pub snapshot: Mutex<Option<opsrepo::snippets::Snapshot>>,
    pub(super) node_up: Family<Labels, Gauge>,
    pub(super) backup_last: Family<Labels, Gauge>,
    pub(super) jobs_gauge: Family<Labels, Gauge>,
    pub(super) cors_origin: Option<String>,
    /// Declared nodes of the applied commit (for the job runner).
    pub declared: Mutex<Vec<crate::ops::nodes::Declared>>,
    /// Roles and bindings of the applied commit (for the API).
    pub access: Mutex<super::access::Access>,
    /// The desired state last compiled (for API operations that need the inventory).
    pub desired: Mutex<Option<Arc<crate::Desired>>>,
    pub is_leader: AtomicBool,
    /// This replica's lease fence (its `fenced` view is served live in `/status`).
    pub fence: std::sync::OnceLock<Arc<super::lease::Fence>>,
    pub healthy: AtomicBool,
    pub steps: AtomicU64,
    /// The connection to NATS as the watcher last saw it (served in `/healthz` and `/status`).
    pub nats: Mutex<NatsLink>,
    pub(super) env: String,
}

/// The daemon's view of its NATS connection, kept by the watcher task of `daemon::run` (every
/// 200 ms). While it is down the daemon is degraded: `/healthz` says so, no reconcile pass is
/// started (each trigger is counted in `passes_skipped` instead), and the client reconnects with
/// `store::reconnect_delay` (doubling from 100 ms, capped at 2 s); the first pass runs as soon as it is back.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NatsLink {
    /// `connected`, `disconnected` or `pending` (connecting).
    pub state: &'static str,
    /// When the connection was lost (RFC 3339), while it is down.
    pub down_since: Option<String>,
    /// Reconcile passes not started because NATS was down.
    pub passes_skipped: u64,
    /// Connections made so far by the daemon's client (1 until the first reconnect).
    pub connects: u64,
    /// Reconnect attempts so far (`store::RECONNECT_ATTEMPTS`): while NATS is down they come
    /// 100 ms, 200 ms, … apart, then every 2 s.
    pub reconnect_attempts: u64,
}

impl NatsLink {
    pub fn is_up(&self) -> bool {
        self.state == "connected"
    }
}

impl Shared {
    pub(super) fn new(env: &str) -> Shared {
        let mut reg = Registry::default();
        let duration = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        reg.register(
            "vakt_reconcile_duration_seconds",
            "Duration of one reconcile step",
            duration.clone(),
        );
        let applies = Family::<Labels, Counter>::default();
        reg.register(
            "vakt_apply",
            "Reconcile steps by outcome (applied, noop, refused, failed)",
            applies.clone(),
        );
        let refused = Family::<Labels, Counter>::default();
        reg.register(
            "vakt_reconcile_refused",
            "Refused commits and plans by reason",
            refused.clone(),
        );
        let drifted = Family::<Labels, Gauge>::default();
        reg.register(
            "vakt_drifted_keys",
            "Keys whose live value differs from the applied commit",
            drifted.clone(),
        );
        let commit_age = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        reg.register(
            "vakt_applied_commit_age_seconds",
            "Seconds since the applied commit was committed",
            commit_age.clone(),
        );
        let approvals_pending = Family::<Labels, Gauge>::default();
        reg.register(
            "vakt_approvals_pending",
            "Plans waiting for an operator's approval",
            approvals_pending.clone(),
        );
        let leader_gauge = Family::<Labels, Gauge>::default();
        reg.register(
            "vakt_leader",
            "1 while this replica holds the lease",
            leader_gauge.clone(),
        );
        let node_up = Family::<Labels, Gauge>::default();
        reg.register(
            "vakt_node_up",
            "1 when a declared node answers its health check",
            node_up.clone(),
        );
        let backup_last = Family::<Labels, Gauge>::default();
        reg.register(
            "vakt_backup_last_success_timestamp_seconds",
            "Unix time of the last verified `vakt backup` of a DR store",
            backup_last.clone(),
        );
        let jobs_gauge = Family::<Labels, Gauge>::default();
        reg.register("vakt_jobs", "Jobs by state", jobs_gauge.clone());
        let info = Family::<Labels, Gauge>::default();
        reg.register("vakt_build_info", "Build information", info.clone());
        info.get_or_create(&vec![("version".into(), env!("CARGO_PKG_VERSION").into())])
            .set(1);
        Shared {
            registry: Mutex::new(reg),
            duration,
            applies,
            refused,
            drifted,
            commit_age,
            approvals_pending,
            leader_gauge,
            status: Mutex::new(serde_json::Value::Null),
            snapshot: Mutex::new(None),
            node_up,
            backup_last,
            jobs_gauge,
            cors_origin: None,
            declared: Mutex::new(Vec::new()),
            access: Mutex::new(super::access::Access::default()),
            desired: Mutex::new(None),
            is_leader: AtomicBool::new(false),
            fence: std::sync::OnceLock::new(),
            healthy: AtomicBool::new(true),
            steps: AtomicU64::new(0),
            nats: Mutex::new(NatsLink {
                state: "connected",
                down_since: None,
                passes_skipped: 0,
                connects: 1,
                reconnect_attempts: 0,
            }),
            env: env.to_owned(),
        }
    }

    pub(super) fn l(&self, k: &str, v: &str) -> Labels {
        vec![("env".into(), self.env.clone()), (k.into(), v.into())]
    }

    pub(super) fn env_l(&self) -> Labels {
        vec![("env".into(), self.env.clone())]
    }

    /// Prometheus text exposition.
    pub fn metrics_text(&self) -> String {
        let mut s = String::new();
        if let Ok(r) = self.registry.lock() {
            let _ = encode(&mut s, &r);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// Sample names of every family in an exposition, from its `# TYPE` lines (a fresh
    /// registry has families without samples): counters as `_total`, histograms as `_bucket`,
    /// `_sum` and `_count`, info metrics as `_info`.
    fn sample_names(text: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for l in text.lines() {
            let Some(rest) = l.strip_prefix("# TYPE ") else {
                continue;
            };
            let mut it = rest.split_whitespace();
            let (Some(name), Some(ty)) = (it.next(), it.next()) else {
                continue;
            };
            let suffixes: &[&str] = match ty {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                "summary" => &["", "_sum", "_count"],
                "info" => &["_info"],
                _ => &[""],
            };
            for s in suffixes {
                out.insert(format!("{name}{s}"));
            }
        }
        out
    }

    /// `inventory/exporters/vakt.toml` declares exactly the names the daemon's registry
    /// exports, so `metric.provenance` can trust it.
    #[test]
    fn the_bundled_vakt_exporter_declaration_matches_the_registry() {
        let shared = Shared::new("dev");
        // The encoder leaves families without a series out: give each one a series.
        let l = shared.l("k", "v");
        shared.applies.get_or_create(&l).inc();
        shared.refused.get_or_create(&l).inc();
        shared.drifted.get_or_create(&l).set(1);
        shared.commit_age.get_or_create(&l).set(1.0);
        shared.approvals_pending.get_or_create(&l).set(1);
        shared.leader_gauge.get_or_create(&l).set(1);
        shared.node_up.get_or_create(&l).set(1);
        shared.backup_last.get_or_create(&l).set(1);
        shared.jobs_gauge.get_or_create(&l).set(1);
        {
            let mut reg = shared.registry.lock().expect("registry");
            let m = crate::daemon::sitelinks::Monitor::new(
                crate::daemon::sitelinks::SiteLinkOpts {
                    env: "dev".into(),
                    site: "osl1".into(),
                    id: "t".into(),
                    interval: std::time::Duration::from_secs(1),
                    nats_monitor: None,
                },
                &mut reg,
            )
            .expect("monitor");
            m.up.get_or_create(&l).set(1);
            m.rtt.get_or_create(&l).set(0.01);
        }
        let exported = sample_names(&shared.metrics_text());
        // Every family the daemon's code registers got a series above (else the encoder left
        // it out and the comparison below could not see it).
        for src in [include_str!("shared.rs"), include_str!("sitelinks.rs")] {
            let code = src.split("#[cfg(test)]").next().unwrap_or(src);
            for piece in code.split(".register(").skip(1) {
                let Some(name) = piece.trim_start().strip_prefix('"') else {
                    continue;
                };
                let name = name.split('"').next().unwrap_or("");
                assert!(
                    exported.iter().any(|e| e.starts_with(name)),
                    "family `{name}` has no series in this test: give it one"
                );
            }
        }
        assert!(exported.contains("vakt_apply_total"), "{exported:?}");
        assert!(exported.contains("vakt_site_link_up"), "{exported:?}");

        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../inventory/exporters/vakt.toml"
        );
        let text = std::fs::read_to_string(path).expect("read inventory/exporters/vakt.toml");
        let v = opsrepo::parse::parse_value(path, opsrepo::parse::Format::Toml, &text)
            .expect("parse vakt.toml");
        let decl: opsrepo::model::Exporter = serde_json::from_value(v).expect("an exporter");
        let declared: BTreeSet<String> = decl.metrics.into_iter().map(|m| m.0).collect();
        let missing: Vec<&String> = exported.difference(&declared).collect();
        let extra: Vec<&String> = declared.difference(&exported).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "inventory/exporters/vakt.toml is out of date: add {missing:?}, remove {extra:?}"
        );
    }
}
