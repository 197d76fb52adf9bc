//! Disaster-recovery posture, `dr/stores/<id>.toml`.

use super::Duration;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A protected store and how it is recovered.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DrStore {
    #[schemars(regex(pattern = r"^[a-z0-9][a-z0-9-]{0,62}$"))]
    pub id: String,
    pub name: String,
    pub description: String,
    pub owner_team: String,
    pub recovery_class: RecoveryClass,
    /// Recovery point objective, e.g. `15m`.
    pub rpo: Duration,
    /// Recovery time objective, e.g. `1h`.
    pub rto: Duration,
    pub backup: Backup,
    pub recovery_path: RecoveryPath,
    /// Whether losing one datacenter loses this store's availability (not its data).
    pub survives_site_loss: bool,
    /// Runbook id with the recovery workflow.
    pub runbook: String,
    /// Sites hosting replicas or primaries.
    pub sites: Vec<String>,
    /// Last recovery exercise, ISO-8601 date.
    #[serde(default)]
    #[schemars(regex(pattern = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"))]
    pub last_exercised_at: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RecoveryClass {
    ControlPlaneCritical,
    PlatformCapabilityCritical,
    TenantDataCritical,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RecoveryPath {
    InPlace,
    CrossSite,
    Rebuild,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Backup {
    /// Method: `pgbackrest`, `vakt-backup`, `nats-stream-snapshot`, `git` …
    pub method: String,
    /// Cron schedule (5 fields, UTC); absent when the store is rebuilt from Git.
    #[serde(default)]
    pub schedule: Option<String>,
    /// Maximum age of the last successful backup before it counts as stale.
    pub max_age: Duration,
    pub retention: String,
    pub locations: Vec<BackupLocation>,
    /// Whether restores are verified automatically after each backup.
    pub verified: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BackupLocation {
    pub site: String,
    /// `object-store`, `filesystem`, `git`, `replica`.
    pub kind: String,
    /// Where, without credentials (`s3://dv-backups-osl2/pg/`).
    pub uri: String,
}
