//! Configuration: global platform config, tenants, and generic config items.

use super::Duration;
use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::ServiceKind;

/// `config/global/platform.toml`: gateway routing and rate limits, per-service caps, drain
/// thresholds. KV key `global.platform`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GlobalConfig {
    pub schema_version: u32,
    pub gateway: GatewayConfig,
    /// Concurrency caps and limits per service kind.
    pub services: BTreeMap<ServiceKind, ServiceLimits>,
    pub drain: DrainThresholds,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Where the gateway reads tenant placement from.
    pub placement_source: PlacementSource,
    /// KV bucket holding placement when `placement_source = "nats-kv"`.
    pub placement_bucket: String,
    /// Reload placement on KV change without restart.
    pub hot_reload: bool,
    /// Header carrying the tenant id.
    pub tenant_header: String,
    pub default_rate_limit: RateLimit,
    /// Per-route overrides, by route template (`/v1/commands/{aggregate}`).
    #[serde(default)]
    pub route_limits: BTreeMap<String, RateLimit>,
    /// Request timeout for upstream calls.
    pub upstream_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum PlacementSource {
    NatsKv,
    Static,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    #[schemars(range(min = 1))]
    pub requests_per_second: u32,
    #[schemars(range(min = 1))]
    pub burst: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceLimits {
    /// Maximum concurrent units of work per node (commands, events, effects).
    #[schemars(range(min = 1))]
    pub max_concurrency: u32,
    /// Maximum concurrent work per tenant on one node.
    #[schemars(range(min = 1))]
    pub per_tenant_concurrency: u32,
    /// Queue depth above which the node sheds load.
    #[schemars(range(min = 1))]
    pub max_queue_depth: u32,
}

/// Safety thresholds for drains and migrations.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DrainThresholds {
    /// Preflight refuses a migration when the tenant has more inflight work than this.
    pub max_inflight_to_start: u32,
    /// Preflight refuses when the consumer lag of the tenant is above this many messages.
    pub max_consumer_lag: u64,
    /// Time-box for a drain to converge.
    pub drain_timeout: Duration,
    /// How often drain progress is polled.
    pub poll_interval: Duration,
    /// Attempts before a migration job is dead-lettered.
    #[schemars(range(min = 1))]
    pub max_attempts: u32,
}

/// `config/tenants/<tenant_id>/tenant.toml`. KV key `tenant.<tenant_id>.tenant`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Tenant {
    #[schemars(regex(pattern = r"^[a-z0-9][a-z0-9-]{0,62}$"))]
    pub id: String,
    pub name: String,
    pub status: TenantStatus,
    pub tier: TenantTier,
    /// Region segment of canonical resource names.
    pub region: String,
    /// Site that is home to this tenant's primary placement.
    pub home_site: String,
    pub owner_team: String,
    /// Contact address for incidents (a mailbox, never a person's secret).
    pub contact: String,
    /// Projects of this tenant (project segment of canonical resource names).
    #[serde(default)]
    pub projects: Vec<String>,
    pub quotas: Quotas,
    /// Feature flags by name.
    #[serde(default)]
    pub flags: BTreeMap<String, bool>,
    pub kill_switches: KillSwitches,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum TenantStatus {
    Provisioning,
    Active,
    Draining,
    Migrating,
    Degraded,
    Suspended,
    Archived,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum TenantTier {
    Free,
    Standard,
    Business,
    Enterprise,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Quotas {
    pub requests_per_second: u32,
    pub max_inflight_commands: u32,
    pub max_projections: u32,
    pub max_sagas: u32,
    pub storage_gb: u32,
    pub event_retention_days: u32,
}

/// Soft kill switches: pause commands or effects without a deploy.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KillSwitches {
    /// Refuse every command for this tenant.
    pub all_commands: bool,
    /// Stop dispatching every effect for this tenant.
    pub all_effects: bool,
    /// Commands refused by name (`<aggregate>.<command>`).
    #[serde(default)]
    pub commands: Vec<String>,
    /// Effect providers paused by name.
    #[serde(default)]
    pub effects: Vec<String>,
}

/// A generic, schema-versioned config item: `config/global/<name>.toml` (other than
/// `platform.toml`) or `config/tenants/<tenant_id>/<name>.toml` (other than `tenant.toml`).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfigItem {
    pub schema_version: u32,
    pub description: String,
    pub owner_team: String,
    /// Services that read this item.
    pub consumers: Vec<ServiceKind>,
    /// Staged rollout: `immediate` or `canary` (one shard first).
    #[serde(default)]
    pub rollout: Rollout,
    /// The value services read. Secrets appear only as `secret://` references.
    #[schemars(with = "serde_json::Map<String, serde_json::Value>")]
    pub value: FreeForm,
}

/// A free-form table: checked to be one when the document is typed, and not held. Nothing
/// reads a config item's value typed (it is the document's `value` member, in its untyped
/// value), and building it as a tree for every item was a sixth of the typing of a large repo.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FreeForm;

impl<'de> Deserialize<'de> for FreeForm {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = FreeForm;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<FreeForm, A::Error> {
                while m
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(FreeForm)
            }
        }
        d.deserialize_map(V)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Rollout {
    #[default]
    Immediate,
    Canary,
}
