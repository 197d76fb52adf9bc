//! Inventory: sites (datacenters), nodes, shards, services and tenant placement.

use super::Duration;
use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::ServiceKind;

/// `inventory/sites/<id>.toml`: a datacenter.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Site {
    #[schemars(regex(pattern = r"^[a-z0-9][a-z0-9-]{0,62}$"))]
    pub id: String,
    pub name: String,
    pub region: String,
    /// Physical location, e.g. `Oslo, NO`.
    pub location: String,
    pub role: SiteRole,
    /// Cross-site links whose health vakt reports.
    #[serde(default)]
    pub links: Vec<SiteLink>,
    /// Voting members this site holds per quorum system (`nats = 2`, `vault = 2`): the
    /// `topology.quorum` rule checks that every system keeps a majority when any one site is
    /// lost.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub quorum: BTreeMap<String, u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SiteRole {
    Primary,
    Secondary,
    /// Holds no tenant shards: a quorum tie-breaker (a NATS server without JetStream storage
    /// for tenant streams, a Vault raft voter) so the quorum survives the loss of either
    /// datacenter.
    Witness,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SiteLink {
    /// The other site.
    pub to: String,
    /// What crosses the link: `nats-cluster-route`, `nats-leafnode`, `postgres-replication` …
    pub kind: String,
    /// Round-trip time above which the link counts as degraded.
    pub max_rtt: Duration,
}

/// `inventory/nodes/<id>.toml`: one instance of a platform service.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Node {
    #[schemars(regex(pattern = r"^[a-z0-9][a-z0-9-]{0,62}$"))]
    pub id: String,
    pub site: String,
    pub service_kind: ServiceKind,
    /// Base URL of the node admin API; the only URL vakt ever calls for this node.
    #[schemars(regex(pattern = r"^https?://[^\s/$.?#][^\s]*$"))]
    pub admin_url: String,
    /// Where Prometheus scrapes this node's metrics (`vakt render` writes it into the scrape
    /// configuration). Default: `<admin_url>/metrics`, the platform services' convention of
    /// serving metrics on the admin listener. vakt itself never calls it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://[^\s/$.?#][^\s]*$"))]
    pub metrics_url: Option<String>,
    /// `required`: vakt calls this node only over `https://` and refuses a plain `http://`
    /// admin URL (the daemon's `--node-ca`, `--node-cert`, `--node-key` set the trust and the
    /// client certificate). Default `optional`: the admin URL's scheme decides.
    #[serde(default, skip_serializing_if = "NodeTls::is_optional")]
    pub tls: NodeTls,
    /// Expected running version.
    #[schemars(regex(pattern = r"^[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?$"))]
    pub version: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub capacity: Capacity,
}

/// Whether a node's admin API must be called over TLS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NodeTls {
    /// The admin URL's scheme decides (`http://` or `https://`).
    #[default]
    Optional,
    /// Only `https://`; a plain `http://` admin URL is never called.
    Required,
}

impl NodeTls {
    pub fn is_optional(&self) -> bool {
        *self == NodeTls::Optional
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Capacity {
    pub cpu_cores: u32,
    pub memory_gb: u32,
    pub max_tenants: u32,
    pub max_inflight: u32,
}

/// `inventory/shards/<id>.toml`: a placement target served by one or more nodes.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Shard {
    #[schemars(regex(pattern = r"^[a-z0-9][a-z0-9-]{0,62}$"))]
    pub id: String,
    pub service_kind: ServiceKind,
    pub site: String,
    /// Nodes serving this shard; each must be of the same service kind and site.
    pub nodes: Vec<String>,
    /// Tenants this shard may hold at most.
    pub max_tenants: u32,
}

/// `inventory/services/<kind>.toml`: a platform service and its health checks.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub kind: ServiceKind,
    pub description: String,
    pub owner_team: String,
    pub image: String,
    #[schemars(regex(pattern = r"^[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?$"))]
    pub version: String,
    /// Metric `service` label.
    pub metrics_service: String,
    /// Keeps tenant data on its nodes (an event store, read models, an outbox): every shard of
    /// a stateful service needs at least two nodes (rule `topology.stateful-replicas`).
    #[serde(default)]
    pub stateful: bool,
    /// Metric names this service's nodes export on their metrics endpoint: exact names, or a
    /// prefix ending in `*` (`aggregate_*`). Rule `metric.provenance` accepts a metric an
    /// alert, recording rule or dashboard uses when a service exports it.
    #[serde(default)]
    pub exports: Vec<MetricName>,
    pub health_checks: Vec<HealthCheck>,
}

/// A metric name (`node_cpu_seconds_total`, `vakt:apply:ratio5m`) or a name prefix ending in
/// `*` (`aggregate_*`).
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(transparent)]
pub struct MetricName(
    #[schemars(regex(pattern = r"^[a-zA-Z_:][a-zA-Z0-9_:]{0,199}\*?$"))] pub String,
);

impl MetricName {
    /// Whether this name (or prefix) provides `metric`.
    pub fn provides(&self, metric: &str) -> bool {
        match self.0.strip_suffix('*') {
            Some(prefix) => metric.starts_with(prefix),
            None => self.0 == metric,
        }
    }
}

/// `inventory/exporters/<id>.toml`: an exporter outside the platform services (node_exporter,
/// the NATS exporter, postgres_exporter, Vault, the scraper's self-metrics, vakt itself) and
/// the metric names it provides.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Exporter {
    #[schemars(regex(pattern = r"^[a-z0-9][a-z0-9-]{0,62}$"))]
    pub id: String,
    /// What runs it and where, e.g. `node_exporter on every host, :9100`.
    pub description: String,
    /// Metric names it provides: exact names, or a prefix ending in `*`.
    pub metrics: Vec<MetricName>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    pub name: String,
    /// Signal key raised when the check fails; must map to a runbook.
    #[schemars(regex(pattern = r"^[a-z][a-z0-9_]*$"))]
    pub signal: String,
    pub description: String,
}

/// `inventory/placement/<tenant_id>.toml`: tenant → shard per service kind.
/// KV keys `<service_kind>.<tenant_id>` in the `placement` bucket.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Placement {
    pub tenant: String,
    /// Shard id per service kind; every kind must be present.
    pub shards: BTreeMap<ServiceKind, String>,
}
