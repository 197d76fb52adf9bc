//! Definitions: aggregates, projections, sagas, effect providers and manifests.

use super::Duration;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The program a node runs for a definition.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Program {
    /// Runtime that executes it, e.g. `wasm` or `builtin`.
    pub runtime: String,
    /// Artifact reference (OCI reference or builtin name).
    pub artifact: String,
    /// `sha256:<64 hex>` digest of the artifact.
    #[schemars(regex(pattern = r"^sha256:[0-9a-f]{64}$"))]
    pub digest: String,
}

/// `definitions/aggregates/<name>.toml`. KV key `aggregate.<name>`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Aggregate {
    #[schemars(regex(pattern = r"^[a-z][a-z0-9_]*$"))]
    pub name: String,
    #[schemars(regex(pattern = r"^[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?$"))]
    pub version: String,
    pub description: String,
    pub owner_team: String,
    /// Commands the aggregate decides on.
    pub commands: Vec<String>,
    /// Events the aggregate emits.
    pub events: Vec<String>,
    /// Snapshot every N events.
    pub snapshot_every: u32,
    pub program: Program,
}

/// `definitions/projections/<name>.toml`. KV key `projection.<name>`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Projection {
    #[schemars(regex(pattern = r"^[a-z][a-z0-9_]*$"))]
    pub name: String,
    #[schemars(regex(pattern = r"^[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?$"))]
    pub version: String,
    pub description: String,
    pub owner_team: String,
    /// Read-model type label used in metrics (`view_type`).
    pub view_type: String,
    /// Events consumed, as `<aggregate>.<event>`; the aggregate must exist and emit the event.
    pub consumes: Vec<String>,
    pub program: Program,
}

/// `definitions/sagas/<name>.toml`. KV key `saga.<name>`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Saga {
    #[schemars(regex(pattern = r"^[a-z][a-z0-9_]*$"))]
    pub name: String,
    #[schemars(regex(pattern = r"^[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?$"))]
    pub version: String,
    pub description: String,
    pub owner_team: String,
    /// Events that start the saga, as `<aggregate>.<event>`.
    pub triggered_by: Vec<String>,
    pub steps: Vec<SagaStep>,
    /// Overall time-box for one saga instance.
    pub timeout: Duration,
    pub program: Program,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SagaStep {
    pub name: String,
    /// A command sent to an aggregate, `<aggregate>.<command>`.
    #[serde(default)]
    pub command: Option<String>,
    /// An effect provider invoked, by provider name.
    #[serde(default)]
    pub effect: Option<String>,
    /// The compensating command if a later step fails, `<aggregate>.<command>`.
    #[serde(default)]
    pub compensate: Option<String>,
}

/// `definitions/effects/<name>.toml`. KV key `effect.<name>`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EffectProvider {
    #[schemars(regex(pattern = r"^[a-z][a-z0-9_]*$"))]
    pub name: String,
    #[schemars(regex(pattern = r"^[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?$"))]
    pub version: String,
    pub description: String,
    pub owner_team: String,
    /// Transport: `http`, `smtp`, `nats` …
    pub transport: String,
    /// Endpoint the runner calls.
    pub endpoint: String,
    /// Credentials, only as `secret://<backend>/<path>#<field>`.
    #[serde(default)]
    #[schemars(regex(pattern = r"^secret://[a-z0-9-]+/[A-Za-z0-9_./-]+#[A-Za-z0-9_.-]+$"))]
    pub credentials: Option<String>,
    pub timeout: Duration,
    #[schemars(range(min = 1))]
    pub max_attempts: u32,
    /// Whether the provider honours idempotency keys (required for automatic retry).
    pub idempotent: bool,
}

/// `definitions/manifests/<name>.toml`: a versioned bundle tying definitions together.
/// KV key `manifest.<name>`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DefinitionManifest {
    #[schemars(regex(pattern = r"^[a-z][a-z0-9_]*$"))]
    pub name: String,
    #[schemars(regex(pattern = r"^[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?$"))]
    pub version: String,
    pub description: String,
    pub owner_team: String,
    pub aggregates: Vec<DefinitionRef>,
    pub projections: Vec<DefinitionRef>,
    pub sagas: Vec<DefinitionRef>,
    pub effects: Vec<DefinitionRef>,
}

/// A pinned reference to a definition by name and exact version.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DefinitionRef {
    pub name: String,
    pub version: String,
}
