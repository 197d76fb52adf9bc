//! The runbook catalog, `runbooks/runbooks.catalog.json`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{EscalationClass, RemediationMode};

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunbookCatalog {
    /// Format version; currently 1.
    pub version: u32,
    pub runbooks: Vec<RunbookEntry>,
}

/// One runbook's metadata (runbook architecture §3 plus the operator-surface runbook model).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunbookEntry {
    /// Stable id; never derived from the file name.
    #[schemars(regex(pattern = r"^[a-z0-9][a-z0-9_-]*(\.[a-z0-9][a-z0-9_-]*)+$"))]
    pub id: String,
    pub title: String,
    pub severity_hint: SeverityHint,
    pub owner_team: String,
    /// ISO-8601 date of the last review.
    #[schemars(regex(pattern = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"))]
    pub last_reviewed_at: String,
    /// Path of the markdown, relative to the repository root.
    pub url: String,
    /// Signal keys this runbook addresses.
    #[schemars(length(min = 1))]
    pub signals: Vec<String>,
    /// Group used to list runbooks on the site (`vakt`, `availability`, `backlogs`, …).
    pub signal_group: String,
    pub remediation_mode: RemediationMode,
    pub escalation_class: EscalationClass,
    /// Saved query ids to open first.
    #[serde(default)]
    pub saved_queries: Vec<String>,
    /// Dashboard uids relevant to this runbook.
    #[serde(default)]
    pub dashboards: Vec<String>,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum SeverityHint {
    Sev1,
    Sev2,
    Sev3,
}
