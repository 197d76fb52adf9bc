//! `vakt.toml`: the ops repo manifest (project, environments and their policies, layout bindings).

use super::Duration;
use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The ops repo manifest, `vakt.toml` at the repository root.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Format version of this file; currently 1.
    pub version: u32,
    pub project: Project,
    /// Environments by name, e.g. `dev`, `staging`, `prod`.
    pub environments: BTreeMap<String, Environment>,
    /// Extra path bindings (glob → kind), consulted before the built-in layout.
    #[serde(default)]
    pub bindings: Vec<Binding>,
    /// Review policy for runbooks.
    #[serde(default)]
    pub review: ReviewPolicy,
}

impl Manifest {
    /// The declared environment names, comma separated (for "not declared" messages).
    pub fn env_names(&self) -> String {
        self.environments
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Project {
    /// Human name of the platform this repo describes.
    pub name: String,
    /// `<org>:<platform>` prefix of canonical resource names
    /// (`<org>:<platform>:<region>:<tenant>:<project>:<type>:<id>`).
    #[schemars(regex(pattern = r"^[a-z0-9-]+:[a-z0-9-]+$"))]
    pub resource_prefix: String,
    /// Base URL where the operator site is published; runbook URLs are generated from it.
    pub site_url: String,
    /// Default owner team for anything that does not name one.
    pub owner_team: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Environment {
    /// Git branch whose commits are applied to this environment, e.g. `env/prod`.
    pub branch: String,
    /// Position in the promotion order (dev 1 → staging 2 → prod 3).
    pub order: u32,
    /// The environment a commit must reach first before it may reach this one.
    #[serde(default)]
    pub promote_from: Option<String>,
    /// Default NATS servers (comma separated URLs) for this environment.
    pub nats_url: String,
    /// Prefix of the KV buckets; defaults to `vakt_<env>`.
    #[serde(default)]
    pub kv_prefix: Option<String>,
    /// Replicas of the KV buckets and the audit stream vakt creates: 1 for a single server, 3
    /// for a three-server cluster. Default 1; `--replicas` overrides it.
    #[serde(default)]
    #[schemars(range(min = 1, max = 5))]
    pub kv_replicas: Option<usize>,
    /// Sites this environment spans.
    pub sites: Vec<String>,
    pub policy: Policy,
}

/// Reconcile policy of one environment.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Restore keys that were edited by hand in NATS KV.
    pub self_heal: bool,
    /// Delete keys that Git no longer declares.
    pub prune: bool,
    /// Refuse an apply that would delete more keys than this.
    pub max_deletions: u32,
    /// Allow an overlay under `environments/<env>/` with no base document.
    #[serde(default)]
    pub allow_overlay_without_base: bool,
    /// Actions that wait for `vakt approve` before they are applied.
    #[serde(default)]
    pub require_approval: Vec<GatedAction>,
    /// Windows during which nothing is applied (unless `--break-glass`).
    #[serde(default)]
    pub freeze_windows: Vec<FreezeWindow>,
    /// How long an approval stays valid.
    #[serde(default = "default_approval_ttl")]
    pub approval_ttl: Duration,
}

fn default_approval_ttl() -> Duration {
    Duration::parse("24h").expect("a valid duration")
}

/// Actions a policy may gate behind an operator's approval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum GatedAction {
    PlacementMove,
    Deletion,
    DefinitionChange,
    AccessChange,
    Failover,
    Restore,
}

/// A period during which applies are refused.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FreezeWindow {
    pub name: String,
    pub reason: String,
    /// Weekly recurrence: the days it applies to (`mon`..`sun`). Empty with `from`/`until` set
    /// means a one-off window.
    #[serde(default)]
    pub days: Vec<Weekday>,
    /// Start time of day, `HH:MM` UTC, for weekly windows.
    #[serde(default)]
    #[schemars(regex(pattern = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"))]
    pub start: Option<String>,
    /// End time of day, `HH:MM` UTC, for weekly windows (exclusive; may wrap past midnight).
    #[serde(default)]
    #[schemars(regex(pattern = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"))]
    pub end: Option<String>,
    /// One-off window start, RFC 3339.
    #[serde(default)]
    pub from: Option<String>,
    /// One-off window end, RFC 3339.
    #[serde(default)]
    pub until: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Weekday {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

/// Binds a path glob to a document kind.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Binding {
    /// Glob relative to the repository root (`*` within a segment, `**` across segments).
    pub glob: String,
    /// Kind name, as listed by `vakt schemas --list`.
    pub kind: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReviewPolicy {
    /// A runbook not reviewed for this many days is an error.
    pub window_days: u32,
    /// Warn this many days before the window closes.
    pub warn_days: u32,
}

impl Default for ReviewPolicy {
    fn default() -> Self {
        ReviewPolicy {
            window_days: 90,
            warn_days: 14,
        }
    }
}
