//! Typed model of every document kind in an ops repo.
//!
//! These types are the single source of the JSON Schemas under `schemas/`: `vakt schemas --write`
//! regenerates them from here and a test fails when the committed files disagree.

mod access;
mod catalog;
mod config;
mod definitions;
mod dr;
mod duration;
mod inventory;
mod manifest;
mod observability;

pub use access::*;
pub use catalog::*;
pub use config::*;
pub use definitions::*;
pub use dr::*;
pub use duration::{Duration, parse_prometheus};
pub use inventory::*;
pub use manifest::*;
pub use observability::*;

/// Pattern shared by tenant, site, node, shard and most other identifiers.
pub const ID_PATTERN: &str = r"^[a-z0-9][a-z0-9-]{0,62}$";
/// Dotted identifiers: runbook ids (`ops.outbox.relay`) and definition names.
pub const DOTTED_ID_PATTERN: &str = r"^[a-z0-9][a-z0-9_-]*(\.[a-z0-9][a-z0-9_-]*)*$";
/// Signal keys (`dlq_backlog_present`).
pub const SIGNAL_PATTERN: &str = r"^[a-z][a-z0-9_]*$";
/// Semantic version without build metadata.
pub const SEMVER_PATTERN: &str = r"^[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?$";
/// A secret reference: `secret://<backend>/<path>#<field>`.
pub const SECRET_REF_PATTERN: &str = r"^secret://[a-z0-9-]+/[A-Za-z0-9_./-]+#[A-Za-z0-9_.-]+$";
/// A duration such as `30s`, `5m`, `1h30m`, `7d`.
pub const DURATION_PATTERN: &str = r"^([0-9]+(ms|s|m|h|d|w))+$";

/// The service kinds the platform runs; placement is per kind.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceKind {
    Gateway,
    Aggregate,
    Projection,
    Runner,
}

impl ServiceKind {
    pub const ALL: [ServiceKind; 4] = [
        ServiceKind::Gateway,
        ServiceKind::Aggregate,
        ServiceKind::Projection,
        ServiceKind::Runner,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ServiceKind::Gateway => "gateway",
            ServiceKind::Aggregate => "aggregate",
            ServiceKind::Projection => "projection",
            ServiceKind::Runner => "runner",
        }
    }
}

impl std::fmt::Display for ServiceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a condition is escalated (operator-surface ADR).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum EscalationClass {
    Informational,
    ActionRequired,
    Urgent,
}

/// Who remediates a condition (operator-surface ADR runbook model).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum RemediationMode {
    Automatic,
    OperatorApproved,
    Manual,
}
