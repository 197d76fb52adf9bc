//! Live snippets: the small JSON documents the daemon writes for the operator site (`summary`,
//! `actions`, `tasks`, `events`, `health`, `inventory`, `sites`, `dr`), and the build-time
//! snapshot of each one that can be derived from the ops repo alone.
//!
//! Every snippet carries `version` (bumped on incompatible change) and `generated_at` (RFC 3339,
//! UTC). Every condition an operator may have to act on carries its escalation class, remediation
//! mode and runbook id. The JSON Schemas under `schemas/snippets/` are generated from these types.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::load::Model;
use crate::model::{EscalationClass, RecoveryClass, RemediationMode, ServiceKind, SiteRole};

/// Current format version of every snippet.
pub const SNIPPET_VERSION: u32 = 1;

/// The snippets the site reads, in the order the site shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SnippetName {
    Summary,
    Actions,
    Tasks,
    Events,
    Health,
    Inventory,
    Sites,
    Dr,
}

impl SnippetName {
    pub const ALL: [SnippetName; 8] = [
        SnippetName::Summary,
        SnippetName::Actions,
        SnippetName::Tasks,
        SnippetName::Events,
        SnippetName::Health,
        SnippetName::Inventory,
        SnippetName::Sites,
        SnippetName::Dr,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SnippetName::Summary => "summary",
            SnippetName::Actions => "actions",
            SnippetName::Tasks => "tasks",
            SnippetName::Events => "events",
            SnippetName::Health => "health",
            SnippetName::Inventory => "inventory",
            SnippetName::Sites => "sites",
            SnippetName::Dr => "dr",
        }
    }

    pub fn from_name(s: &str) -> Option<SnippetName> {
        SnippetName::ALL.into_iter().find(|n| n.as_str() == s)
    }

    /// File name of the snippet (`summary.json`).
    pub fn file_name(self) -> String {
        format!("{}.json", self.as_str())
    }

    /// `$id` of the snippet's JSON Schema.
    pub fn schema_id(self) -> String {
        format!(
            "{}snippets/{}.schema.json",
            crate::kinds::SCHEMA_BASE,
            self.as_str()
        )
    }

    fn generate_schema(self) -> Value {
        let g = schemars::generate::SchemaSettings::draft2020_12().into_generator();
        let s = match self {
            SnippetName::Summary => g.into_root_schema_for::<SummarySnippet>(),
            SnippetName::Actions => g.into_root_schema_for::<ActionsSnippet>(),
            SnippetName::Tasks => g.into_root_schema_for::<TasksSnippet>(),
            SnippetName::Events => g.into_root_schema_for::<EventsSnippet>(),
            SnippetName::Health => g.into_root_schema_for::<HealthSnippet>(),
            SnippetName::Inventory => g.into_root_schema_for::<InventorySnippet>(),
            SnippetName::Sites => g.into_root_schema_for::<SitesSnippet>(),
            SnippetName::Dr => g.into_root_schema_for::<DrSnippet>(),
        };
        let mut v = s.to_value();
        if let Value::Object(m) = &mut v {
            m.insert("$id".into(), Value::String(self.schema_id()));
            m.insert(
                "description".into(),
                Value::String(format!("vakt live snippet `{}`", self.as_str())),
            );
        }
        v
    }
}

/// `(relative path, pretty JSON)` of every snippet schema, for `vakt schemas --write/--check`.
pub fn schema_files() -> Vec<(String, String)> {
    SnippetName::ALL
        .iter()
        .map(|n| {
            let text = serde_json::to_string_pretty(&n.generate_schema()).unwrap_or_default();
            (format!("snippets/{}.schema.json", n.as_str()), text + "\n")
        })
        .collect()
}

/// What produced a snippet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SnippetSource {
    /// Derived from the ops repo at site build time: declared state only, no live data.
    BuildSnapshot,
    /// Written by the running daemon from observed state.
    Live,
}

/// Observed status of a service, node, site or link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    Ok,
    Degraded,
    Down,
    /// Not observed (always the case in a build-time snapshot).
    Unknown,
}

/// What a condition is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ConditionKind {
    Alert,
    Drift,
    FailedJob,
    PendingApproval,
    UnhealthyNode,
    StaleBackup,
    DegradedSiteLink,
}

/// Something an operator may have to act on. Every condition says how it escalates, who
/// remediates it and which runbook applies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    /// Stable id of this condition instance (e.g. `drift.prod.placement.acme`).
    pub id: String,
    pub kind: ConditionKind,
    /// One line an operator reads first.
    pub title: String,
    pub escalation_class: EscalationClass,
    pub remediation_mode: RemediationMode,
    /// Runbook id from the catalog.
    pub runbook: String,
    /// When the condition started, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Resource identifier (KV key, node id, store id, canonical resource name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// Further detail, plain text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Owning team of the runbook (catalog `owner_team`), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// No catalog runbook could be resolved for this condition (a governance gap): `runbook` is
    /// then a placeholder id.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub governance_gap: bool,
    /// vakt changes (audit events) that touched the same tenant, service, site or node in the
    /// change window before the condition started, newest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<RelatedChange>,
}

/// A vakt change (one audit event, or one apply's writes collapsed) related to a condition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RelatedChange {
    /// Audit event id (the first one, when several writes of one plan are collapsed).
    pub event_id: String,
    /// RFC 3339.
    pub at: String,
    /// Audit action: `kv.put`, `kv.heal`, `job.succeeded`, `approval.approve`, `restore.done` …
    pub action: String,
    pub actor: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_id: Option<String>,
    /// First target (`<bucket>/<key>`) of the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Audit events collapsed into this change (writes of one plan with the same action).
    pub events: u32,
    /// What links it to the condition: `tenant:<t>`, `service:<s>`, `site:<s>`, `node:<n>` or
    /// `global` (a global config change touches everything).
    pub matched: String,
}

/// Whether an alert source answered its last poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SourceState {
    /// Answered the last poll with a valid alert list.
    Live,
    /// Could not be read (refused, timeout, 5xx, invalid JSON, oversize): what is shown from
    /// it is its last good answer, marked stale.
    Down,
    /// Not polled yet.
    Unknown,
}

/// One Alertmanager the daemon reads (`vakt reconcile --alertmanager URL`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertSourceStatus {
    /// Short name (`host:port`), used to tag alerts with where they were seen.
    pub name: String,
    pub url: String,
    pub state: SourceState,
    /// Last successful poll, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success_at: Option<String>,
    /// Why the last poll failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Alerts in its last good answer.
    pub alerts: u32,
}

/// How Alertmanager reports an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum AlertState {
    Firing,
    Silenced,
    Inhibited,
}

/// A silence that mutes an alert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SilenceInfo {
    pub id: String,
    pub created_by: String,
    /// RFC 3339.
    pub ends_at: String,
    pub comment: String,
}

/// One alert as the operator sees it: deduplicated across sources, joined to its catalog entry
/// and to the vakt changes that preceded it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertCard {
    /// Alertmanager fingerprint (a hash of the label set).
    pub fingerprint: String,
    /// `alertname` label.
    pub name: String,
    pub state: AlertState,
    /// RFC 3339.
    pub starts_at: String,
    /// `summary` annotation (plain text, truncated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// Labels (bounded: at most 32, values truncated to 256 characters).
    pub labels: std::collections::BTreeMap<String, String>,
    /// Every source that reported it.
    pub sources: Vec<String>,
    /// Every source that reported it is down: this is its last good state.
    pub stale: bool,
    /// `signal` label, when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    pub runbook: String,
    pub governance_gap: bool,
    pub escalation_class: EscalationClass,
    pub remediation_mode: RemediationMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Silences muting it (silenced alerts only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub silenced_by: Vec<SilenceInfo>,
    /// Fingerprints of the alerts inhibiting it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inhibited_by: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<RelatedChange>,
}

/// Alerts of one signal and runbook, with counts (all of them, listed or not).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertGroup {
    /// `signal` label, else `alertname`.
    pub signal: String,
    pub runbook: String,
    pub escalation_class: EscalationClass,
    pub firing: u32,
    pub silenced: u32,
    /// Firing alerts of this group not listed as cards (the card cap).
    pub unlisted: u32,
}

/// The alerts part of `actions.json`. Bounded: at most [`MAX_ALERT_CARDS`] firing cards and
/// [`MAX_SILENCED_CARDS`] silenced ones, [`MAX_ALERT_GROUPS`] groups; totals count everything.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertsView {
    pub sources: Vec<AlertSourceStatus>,
    /// Firing alerts, most urgent first, then newest.
    pub firing: Vec<AlertCard>,
    /// Silenced and inhibited alerts, shown apart.
    pub silenced: Vec<AlertCard>,
    pub groups: Vec<AlertGroup>,
    pub firing_total: u32,
    pub silenced_total: u32,
}

/// Firing alert cards listed in `actions.json` (and as conditions); the rest are counted in
/// their group.
pub const MAX_ALERT_CARDS: usize = 100;
/// Silenced or inhibited alert cards listed.
pub const MAX_SILENCED_CARDS: usize = 50;
/// Alert groups listed (most urgent, then largest first).
pub const MAX_ALERT_GROUPS: usize = 50;

/// `summary.json`: the decision header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SummarySnippet {
    pub version: u32,
    /// RFC 3339, UTC.
    pub generated_at: String,
    pub source: SnippetSource,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    /// Applied commit, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    pub decision: Decision,
    pub counts: Counts,
    /// Alert sources and whether each answered its last poll (empty without `--alertmanager`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alert_sources: Vec<AlertSourceStatus>,
    /// Where the header's reconcile figures come from: the ops metrics source mode (absent in
    /// a build-time snapshot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_source: Option<MetricsSource>,
}

/// The ops metrics source modes of the operator surface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MetricsMode {
    /// The daemon's own process counters (since it started): the local/dev fallback, good for
    /// smoke checks, lost on restart and blind to other replicas.
    InMemory,
    /// Durable totals and trends queried from the observability backend (Prometheus query
    /// API); required for staging and production incident response.
    Backend,
}

/// The metrics source of the decision header: configured and effective mode, and the figures
/// with the mode each came from. Bounded: at most [`MAX_METRIC_FIGURES`] figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MetricsSource {
    /// `backend` with `vakt reconcile --metrics-backend`, else `in_memory`.
    pub configured_mode: MetricsMode,
    /// The mode of what the header shows now: `in_memory` when configured so, before the
    /// backend answered, or while the backend's query path fails (then `degraded`).
    pub mode: MetricsMode,
    /// The backend's `host:port` (no scheme, path, query or credentials).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_host: Option<String>,
    /// Configured for the backend but it failed its last query: the header falls back to
    /// in-process counters.
    pub degraded: bool,
    /// Why the last backend query failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Since when the backend has been failing (first failed query), RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degraded_since: Option<String>,
    /// Last backend query, RFC 3339 (absent before the first or without a backend).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checked_at: Option<String>,
    /// Last successful backend query, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success_at: Option<String>,
    /// When this daemon started counting: the in-process figures cover the time since then.
    pub in_memory_since: String,
    /// Runbook for this mode and its failure (catalog id).
    pub runbook: String,
    /// In-process counters and, once the backend answered, its totals (kept, marked stale,
    /// while it fails).
    pub figures: Vec<MetricFigure>,
}

/// One figure of the decision header and where it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MetricFigure {
    /// What is counted: `reconcile_steps` (label `outcome`) or `refusals` (label `reason`).
    pub metric: String,
    /// The label value (`applied`, `noop`, `refused`, `failed`; a refusal reason).
    pub label: String,
    pub value: f64,
    /// The mode the figure came from.
    pub source: MetricsMode,
    /// The window it covers: `since_start` (in-process) or the backend's query range (`24h`).
    pub window: String,
    /// A backend figure from the last good answer, shown while the backend fails.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stale: bool,
}

/// Figures listed in `metrics_source` (per source, reconcile outcomes before refusals).
pub const MAX_METRIC_FIGURES: usize = 64;

/// The first thing on `/ops/`: is a human needed now?
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    pub level: DecisionLevel,
    pub headline: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum DecisionLevel {
    /// Nothing needs a human.
    Ok,
    /// Action required, nothing urgent.
    Attention,
    /// Urgent conditions: control-plane safety or multi-site availability.
    Urgent,
    /// No live data (build-time snapshot).
    Unknown,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Counts {
    pub urgent: u32,
    pub action_required: u32,
    pub informational: u32,
    pub tasks_running: u32,
    pub tasks_failed: u32,
    pub dead_lettered: u32,
    pub pending_approvals: u32,
    pub sites_degraded: u32,
    /// Firing alerts from the alert sources (all of them, listed or not).
    #[serde(default)]
    pub alerts_firing: u32,
    /// Silenced or inhibited alerts.
    #[serde(default)]
    pub alerts_silenced: u32,
    /// Alert sources that could not be read on their last poll.
    #[serde(default)]
    pub alert_sources_down: u32,
}

/// `actions.json`: every condition that needs or may need an operator, most urgent first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ActionsSnippet {
    pub version: u32,
    pub generated_at: String,
    pub conditions: Vec<Condition>,
    /// Live alerts from Alertmanager: firing cards, the silenced list, groups and sources.
    #[serde(default)]
    pub alerts: AlertsView,
}

/// `tasks.json`: running, queued, failed, retried, cancelled and dead-lettered work.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TasksSnippet {
    pub version: u32,
    pub generated_at: String,
    pub tasks: Vec<Task>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Task {
    pub id: String,
    /// What the task does: `apply`, `drift-check`, `backup`, `node-call` …
    pub kind: String,
    pub state: TaskState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
    #[serde(default)]
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Runbook for a failed or dead-lettered task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runbook: Option<String>,
    /// Operator actions that are safe for this task now.
    #[serde(default)]
    pub allowed_actions: Vec<TaskAction>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum TaskState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Retried,
    Cancelled,
    DeadLettered,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum TaskAction {
    Inspect,
    Retry,
    Cancel,
    Approve,
    Reject,
}

/// `events.json`: recent important events with every correlation key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventsSnippet {
    pub version: u32,
    pub generated_at: String,
    pub events: Vec<Event>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Event {
    pub id: String,
    /// RFC 3339.
    pub at: String,
    /// `apply.started`, `self_heal`, `approval.requested`, `failover` …
    pub kind: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
}

/// `health.json`: service, node and site-level health.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthSnippet {
    pub version: u32,
    pub generated_at: String,
    pub services: Vec<ServiceHealth>,
    pub nodes: Vec<NodeHealth>,
    pub conditions: Vec<Condition>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceHealth {
    pub service_kind: ServiceKind,
    pub site: String,
    pub status: Status,
    pub nodes_up: u32,
    pub nodes_total: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeHealth {
    pub id: String,
    pub site: String,
    pub service_kind: ServiceKind,
    pub status: Status,
    /// Declared version.
    pub version: String,
    /// Version the node reports, when observed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_version: Option<String>,
}

/// `inventory.json`: declared and discovered inventory, trust levels, drift and approvals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InventorySnippet {
    pub version: u32,
    pub generated_at: String,
    pub declared: Vec<InventoryItem>,
    pub discovered: Vec<InventoryItem>,
    /// Drift and pending approvals.
    pub conditions: Vec<Condition>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InventoryItem {
    pub id: String,
    pub kind: InventoryKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    pub trust: TrustLevel,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum InventoryKind {
    Site,
    Node,
    Shard,
    Placement,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum TrustLevel {
    /// In Git, not (yet) observed.
    DeclaredOnly,
    /// Observed, not in Git: waits for approval.
    DiscoveredOnly,
    /// Observed and matching Git.
    Confirmed,
    /// Observed and disagreeing with Git (kind, site or version).
    Conflicting,
}

/// `sites.json`: per-datacenter status, cross-site links and recent failovers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SitesSnippet {
    pub version: u32,
    pub generated_at: String,
    pub sites: Vec<SiteStatus>,
    pub failovers: Vec<Failover>,
    pub conditions: Vec<Condition>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SiteStatus {
    pub id: String,
    pub name: String,
    pub role: SiteRole,
    pub status: Status,
    pub links: Vec<LinkStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LinkStatus {
    pub to: String,
    pub kind: String,
    pub status: Status,
    /// Declared degradation threshold (`15ms`).
    pub max_rtt: String,
    /// Measured round trip (median of the last probes), milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_ms: Option<f64>,
    /// Last probe answer or heartbeat from the other site's leader, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen_at: Option<String>,
    /// Why the link is down or degraded, who measured it, and nats-server's route and gateway
    /// state for `nats-cluster-route` links (plain text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Failover {
    pub at: String,
    pub from: String,
    pub to: String,
    /// What failed over (`postgres`, `nats-jetstream`, `control-plane`).
    pub scope: String,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// Site whose leader changed (a `control-plane` failover of `vakt reconcile --site`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
}

/// `dr.json`: disaster-recovery posture per protected store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DrSnippet {
    pub version: u32,
    pub generated_at: String,
    pub stores: Vec<DrStoreStatus>,
    pub conditions: Vec<Condition>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DrStoreStatus {
    pub id: String,
    pub name: String,
    pub recovery_class: RecoveryClass,
    pub rpo: String,
    pub rto: String,
    /// Age after which the last successful backup is stale.
    pub max_backup_age: String,
    /// Last successful backup, RFC 3339, when observed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success_at: Option<String>,
    pub recoverable: Recoverable,
    pub runbook: String,
}

/// Whether a store could be recovered right now within its RPO.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Recoverable {
    Yes,
    No,
    Unknown,
}

/// One value of every snippet.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub summary: SummarySnippet,
    pub actions: ActionsSnippet,
    pub tasks: TasksSnippet,
    pub events: EventsSnippet,
    pub health: HealthSnippet,
    pub inventory: InventorySnippet,
    pub sites: SitesSnippet,
    pub dr: DrSnippet,
}

impl Snapshot {
    /// The snippet `name` as JSON.
    pub fn to_value(&self, name: SnippetName) -> Value {
        let r = match name {
            SnippetName::Summary => serde_json::to_value(&self.summary),
            SnippetName::Actions => serde_json::to_value(&self.actions),
            SnippetName::Tasks => serde_json::to_value(&self.tasks),
            SnippetName::Events => serde_json::to_value(&self.events),
            SnippetName::Health => serde_json::to_value(&self.health),
            SnippetName::Inventory => serde_json::to_value(&self.inventory),
            SnippetName::Sites => serde_json::to_value(&self.sites),
            SnippetName::Dr => serde_json::to_value(&self.dr),
        };
        r.unwrap_or(Value::Null)
    }

    /// Replaces one snippet with a parsed document (e.g. a file the daemon wrote).
    pub fn set(&mut self, name: SnippetName, value: Value) -> Result<(), serde_json::Error> {
        match name {
            SnippetName::Summary => self.summary = serde_json::from_value(value)?,
            SnippetName::Actions => self.actions = serde_json::from_value(value)?,
            SnippetName::Tasks => self.tasks = serde_json::from_value(value)?,
            SnippetName::Events => self.events = serde_json::from_value(value)?,
            SnippetName::Health => self.health = serde_json::from_value(value)?,
            SnippetName::Inventory => self.inventory = serde_json::from_value(value)?,
            SnippetName::Sites => self.sites = serde_json::from_value(value)?,
            SnippetName::Dr => self.dr = serde_json::from_value(value)?,
        }
        Ok(())
    }
}

/// The build-time snapshot of every snippet: declared state from the repo, nothing observed.
/// `generated_at` is RFC 3339.
pub fn snapshot(model: &Model, generated_at: &str) -> Snapshot {
    let at = generated_at.to_owned();
    let v = SNIPPET_VERSION;
    // The snapshot holds no conditions: nothing has been observed yet.
    let mut nodes: Vec<NodeHealth> = model
        .nodes
        .iter()
        .map(|n| NodeHealth {
            id: n.spec.id.clone(),
            site: n.spec.site.clone(),
            service_kind: n.spec.service_kind,
            status: Status::Unknown,
            version: n.spec.version.clone(),
            observed_version: None,
        })
        .collect();
    nodes.sort_by(|a, b| (&a.site, &a.id).cmp(&(&b.site, &b.id)));
    let mut services: Vec<ServiceHealth> = Vec::new();
    for n in &nodes {
        match services
            .iter_mut()
            .find(|s| s.site == n.site && s.service_kind == n.service_kind)
        {
            Some(s) => s.nodes_total += 1,
            None => services.push(ServiceHealth {
                service_kind: n.service_kind,
                site: n.site.clone(),
                status: Status::Unknown,
                nodes_up: 0,
                nodes_total: 1,
            }),
        }
    }
    services.sort_by(|a, b| (&a.site, a.service_kind).cmp(&(&b.site, b.service_kind)));

    let mut declared = Vec::new();
    for s in &model.sites {
        declared.push(InventoryItem {
            id: s.spec.id.clone(),
            kind: InventoryKind::Site,
            site: Some(s.spec.id.clone()),
            trust: TrustLevel::DeclaredOnly,
            detail: Some(format!("{} ({})", s.spec.name, s.spec.location)),
        });
    }
    for n in &nodes {
        declared.push(InventoryItem {
            id: n.id.clone(),
            kind: InventoryKind::Node,
            site: Some(n.site.clone()),
            trust: TrustLevel::DeclaredOnly,
            detail: Some(format!("{} {}", n.service_kind, n.version)),
        });
    }
    for s in &model.shards {
        declared.push(InventoryItem {
            id: s.spec.id.clone(),
            kind: InventoryKind::Shard,
            site: Some(s.spec.site.clone()),
            trust: TrustLevel::DeclaredOnly,
            detail: Some(format!(
                "{} on {}",
                s.spec.service_kind,
                s.spec.nodes.join(", ")
            )),
        });
    }
    for p in &model.placements {
        declared.push(InventoryItem {
            id: p.spec.tenant.clone(),
            kind: InventoryKind::Placement,
            site: None,
            trust: TrustLevel::DeclaredOnly,
            detail: Some(
                p.spec
                    .shards
                    .iter()
                    .map(|(k, s)| format!("{k}: {s}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
        });
    }

    let mut sites: Vec<SiteStatus> = model
        .sites
        .iter()
        .map(|s| SiteStatus {
            id: s.spec.id.clone(),
            name: s.spec.name.clone(),
            role: s.spec.role,
            status: Status::Unknown,
            links: s
                .spec
                .links
                .iter()
                .map(|l| LinkStatus {
                    to: l.to.clone(),
                    kind: l.kind.clone(),
                    status: Status::Unknown,
                    max_rtt: l.max_rtt.to_string(),
                    rtt_ms: None,
                    last_seen_at: None,
                    detail: None,
                })
                .collect(),
        })
        .collect();
    sites.sort_by(|a, b| a.id.cmp(&b.id));

    let mut stores: Vec<DrStoreStatus> = model
        .dr_stores
        .iter()
        .map(|d| DrStoreStatus {
            id: d.spec.id.clone(),
            name: d.spec.name.clone(),
            recovery_class: d.spec.recovery_class,
            rpo: d.spec.rpo.to_string(),
            rto: d.spec.rto.to_string(),
            max_backup_age: d.spec.backup.max_age.to_string(),
            last_success_at: None,
            recoverable: Recoverable::Unknown,
            runbook: d.spec.runbook.clone(),
        })
        .collect();
    stores.sort_by(|a, b| a.id.cmp(&b.id));

    Snapshot {
        summary: SummarySnippet {
            version: v,
            generated_at: at.clone(),
            source: SnippetSource::BuildSnapshot,
            env: model.env.clone(),
            commit: None,
            decision: Decision {
                level: DecisionLevel::Unknown,
                headline: "Build-time snapshot: declared state only, no live data. \
                           Live status appears when the daemon's snippets are reachable."
                    .to_owned(),
            },
            counts: Counts::default(),
            alert_sources: Vec::new(),
            metrics_source: None,
        },
        actions: ActionsSnippet {
            version: v,
            generated_at: at.clone(),
            conditions: Vec::new(),
            alerts: AlertsView::default(),
        },
        tasks: TasksSnippet {
            version: v,
            generated_at: at.clone(),
            tasks: Vec::new(),
        },
        events: EventsSnippet {
            version: v,
            generated_at: at.clone(),
            events: Vec::new(),
        },
        health: HealthSnippet {
            version: v,
            generated_at: at.clone(),
            services,
            nodes,
            conditions: Vec::new(),
        },
        inventory: InventorySnippet {
            version: v,
            generated_at: at.clone(),
            declared,
            discovered: Vec::new(),
            conditions: Vec::new(),
        },
        sites: SitesSnippet {
            version: v,
            generated_at: at.clone(),
            sites,
            failovers: Vec::new(),
            conditions: Vec::new(),
        },
        dr: DrSnippet {
            version: v,
            generated_at: at,
            stores,
            conditions: Vec::new(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_schemas_have_ids() {
        for n in SnippetName::ALL {
            assert_eq!(SnippetName::from_name(n.as_str()), Some(n));
        }
        let files = schema_files();
        assert_eq!(files.len(), 8);
        for (path, text) in files {
            let v: Value = serde_json::from_str(&text).unwrap();
            assert!(v["$id"].as_str().unwrap().ends_with(&path), "{path}");
            assert!(v["properties"]["generated_at"].is_object(), "{path}");
            assert!(v["properties"]["version"].is_object(), "{path}");
        }
    }

    #[test]
    fn condition_requires_escalation_remediation_and_runbook() {
        let ok = serde_json::json!({
            "id": "d1", "kind": "drift", "title": "t",
            "escalation_class": "action-required", "remediation_mode": "automatic",
            "runbook": "ops.vakt.drift"
        });
        assert!(serde_json::from_value::<Condition>(ok.clone()).is_ok());
        for k in ["escalation_class", "remediation_mode", "runbook"] {
            let mut v = ok.clone();
            v.as_object_mut().unwrap().remove(k);
            assert!(serde_json::from_value::<Condition>(v).is_err(), "{k}");
        }
    }
}
