//! Observability documents: datasources, saved queries, dashboards, alert rule groups.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `dashboards/datasources.toml`: the datasources dashboards and saved queries may use.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Datasources {
    pub datasources: Vec<Datasource>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Datasource {
    /// Grafana datasource uid.
    pub uid: String,
    /// Grafana datasource type: `prometheus` or `loki`.
    #[serde(rename = "type")]
    pub kind: DatasourceType,
    pub name: String,
    /// Grafana's base URL, for deep links (`/explore`, `/d/<uid>`).
    pub grafana_url: String,
    /// Where Grafana reaches the datasource (e.g. `http://victoriametrics:8428`), written into
    /// the Grafana provisioning by `vakt render`. Without it the provisioned datasource has no
    /// URL and `vakt validate` warns (`render.datasource-url`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DatasourceType {
    Prometheus,
    Loki,
}

/// `dashboards/queries/<id>.toml`: a named query template.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SavedQuery {
    #[schemars(regex(pattern = r"^[a-z][a-z0-9_]*$"))]
    pub id: String,
    pub title: String,
    /// Datasource uid from `dashboards/datasources.toml`.
    pub datasource: String,
    /// The query; `${name}` placeholders must be declared in `variables`.
    pub template: String,
    #[serde(default)]
    pub variables: Vec<QueryVariable>,
    /// Service that owns the symptom this query investigates.
    pub owner_service: String,
    /// The symptom an operator starts from.
    pub symptom: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QueryVariable {
    #[schemars(regex(pattern = r"^[a-z][a-z0-9_]*$"))]
    pub name: String,
    pub description: String,
    /// Value used when none is given (and for syntax checks).
    pub example: String,
}

/// A Grafana dashboard model (`dashboards/<uid>.json`). Only the fields vakt checks are typed;
/// everything else Grafana understands is kept as is.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Dashboard {
    #[schemars(regex(pattern = r"^[a-zA-Z0-9_-]{1,40}$"))]
    pub uid: String,
    pub title: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    pub panels: Vec<Panel>,
    #[serde(default)]
    pub templating: Option<Templating>,
    #[serde(flatten)]
    #[schemars(skip)]
    pub other: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Panel {
    pub id: u32,
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    #[serde(default)]
    pub datasource: Option<DatasourceRef>,
    #[serde(default)]
    pub targets: Vec<Target>,
    /// Rows nest panels.
    #[serde(default)]
    pub panels: Vec<Panel>,
    #[serde(flatten)]
    #[schemars(skip)]
    pub other: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct DatasourceRef {
    #[serde(rename = "type")]
    pub kind: String,
    pub uid: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Target {
    #[serde(rename = "refId")]
    pub ref_id: String,
    #[serde(default)]
    pub datasource: Option<DatasourceRef>,
    /// PromQL or LogQL.
    #[serde(default)]
    pub expr: Option<String>,
    /// The saved query this target runs (vakt's own key; Grafana keeps it as is). `expr` must
    /// then be the query's template with these variables filled in.
    #[serde(
        default,
        rename = "savedQuery",
        skip_serializing_if = "Option::is_none"
    )]
    pub saved_query: Option<SavedQueryRef>,
    #[serde(flatten)]
    #[schemars(skip)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// A panel target's reference to a saved query (`dashboards/queries/<id>.toml`).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SavedQueryRef {
    /// The saved query's id.
    pub id: String,
    /// A value for every variable of the saved query, usually a dashboard variable such as
    /// `$service`.
    #[serde(default)]
    pub variables: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Templating {
    pub list: Vec<serde_json::Value>,
}

/// `alerts/<group>.yaml`: a Prometheus / vmalert rule file.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    pub groups: Vec<RuleGroup>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleGroup {
    pub name: String,
    #[serde(default)]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h|d|w|y))+$"))]
    pub interval: Option<String>,
    pub rules: Vec<Rule>,
}

/// An alerting rule (`alert`) or a recording rule (`record`).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    #[serde(default)]
    pub alert: Option<String>,
    #[serde(default)]
    pub record: Option<String>,
    pub expr: String,
    #[serde(default, rename = "for")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h|d|w|y))+$"))]
    pub for_: Option<String>,
    #[serde(default)]
    pub keep_firing_for: Option<String>,
    /// Alerts carry `severity` (critical, warning, info), `escalation` (informational,
    /// action-required, urgent) and `signal` (a signal key).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Alerts carry `summary`, `description` and `runbook_id`; `runbook_url` is generated.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}
