//! Governance rules over the typed model of one view. Each rule has a stable id; findings say
//! what to do.

mod alerts;
mod definitions;
mod inventory;
pub mod logql;
pub mod observability;
mod render;
mod runbooks;
pub mod secrets;

use crate::diag::{Finding, Severity};
use crate::load::Model;

/// A rule's documentation entry (`vakt validate --list-rules`).
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct RuleInfo {
    pub id: &'static str,
    pub severity: Severity,
    pub summary: &'static str,
}

macro_rules! rules {
    ($( $id:literal, $sev:ident, $summary:literal; )*) => {
        /// Every rule vakt checks, with its default severity.
        pub const RULES: &[RuleInfo] = &[ $( RuleInfo { id: $id, severity: Severity::$sev, summary: $summary }, )* ];
    };
}

rules! {
    "input.syntax", Error, "the file is not valid TOML, YAML or JSON";
    "input.encoding", Error, "the file is not UTF-8";
    "input.too-large", Error, "the document is larger than 8 MiB or expands to too many values";
    "input.too-deep", Error, "the document nests deeper than 64 levels";
    "input.bad-path", Error, "a path segment is `..`, empty, or holds control characters";
    "input.symlink-escape", Error, "a symlink points outside the repository";
    "input.unreadable", Error, "the file could not be read";
    "input.unknown-file", Warning, "a file in the layout matches no document kind";
    "schema.invalid", Error, "the document does not match the schema of its kind";
    "overlay.no-base", Error, "an environment overlay has no base document and the policy forbids it";
    "overlay.unknown-env", Error, "an overlay directory names an environment vakt.toml does not declare";
    "overlay.forbidden", Error, "this kind cannot be overlaid per environment";
    "id.duplicate", Error, "two documents declare the same id";
    "manifest.environments", Error, "environments: promotion order, branches or sites are inconsistent";
    "ref.inventory", Error, "an inventory reference (site, node, shard) does not resolve or does not match";
    "ref.placement", Error, "a placement names an unknown tenant or a shard of another service kind";
    "placement.incomplete", Error, "a tenant lacks a placement for a service kind";
    "ref.definition", Error, "a definition reference (aggregate, event, command, effect, version) does not resolve";
    "ref.access", Error, "a binding names an unknown role, tenant or environment, or a permission an unknown domain";
    "ref.runbook", Error, "a reference to a runbook id does not resolve";
    "ref.datasource", Error, "a dashboard or saved query names an undeclared datasource";
    "ref.query", Error, "a saved query id does not resolve";
    "ref.dashboard", Error, "a dashboard uid does not resolve";
    "alert.runbook-missing", Error, "an actionable alert has no `runbook_id` annotation";
    "alert.runbook-url", Error, "an alert has a hand-written `runbook_url` (vakt generates it)";
    "alert.labels", Error, "an alert lacks a valid `severity`, `escalation` or `signal` label";
    "alert.signal-mismatch", Warning, "an alert's runbook does not list the alert's signal";
    "alert.promql", Error, "an alert or recording rule expression is not valid PromQL";
    "signal.unmapped", Error, "a signal key used by an alert, a health check or vakt itself maps to no runbook";
    "runbook.markdown-missing", Error, "a catalog entry has no markdown file";
    "runbook.catalog-missing", Error, "a runbook markdown file has no catalog entry";
    "runbook.section-missing", Error, "a runbook lacks a required section";
    "runbook.review-due", Warning, "a runbook's review window closes soon";
    "runbook.review-expired", Error, "a runbook has not been reviewed within the review window";
    "runbook.active-content", Error, "runbook markdown carries raw HTML, scripts or script links";
    "query.template", Error, "a saved query uses an undeclared variable or does not parse";
    "query.unused", Warning, "a saved query is used by no runbook and no dashboard";
    "dashboard.query", Error, "a dashboard panel query is not valid PromQL or LogQL";
    "dashboard.saved-query", Error, "a panel's saved query reference does not match the saved query (datasource, variables, expression)";
    "secret.value", Error, "a secret value appears in the repository";
    "render.runbook-url", Error, "an alert's runbook_url cannot be built: project.site_url is not an absolute http(s) URL";
    "render.metrics-url", Error, "a node has no usable metrics endpoint for the scrape configuration";
    "render.rule", Error, "a rule Prometheus would reject once rendered (label names, recording rule fields, a hand-set `env` label)";
    "render.collision", Error, "two alert rule files render to the same rules/<name>.yaml";
    "render.datasource-url", Warning, "a datasource has no (valid) `url` for Grafana provisioning";
    "promotion.order", Error, "a commit would reach an environment before the one it is promoted from";
}

/// Options for the rules that depend on the world outside the repo.
#[derive(Debug, Clone)]
pub struct RuleContext {
    /// Today, for review ages.
    pub today: time::Date,
}

/// Signals vakt raises itself; each must map to a runbook.
pub const BUILTIN_SIGNALS: &[&str] = &[
    "vakt_drift_detected",
    "vakt_apply_failed",
    "vakt_invalid_commit",
    "vakt_branch_rewound",
    "vakt_approval_pending",
    "vakt_job_dead_lettered",
    "vakt_node_unhealthy",
    "vakt_site_link_degraded",
    "vakt_backup_stale",
    "vakt_alert_source_down",
    "inventory_trust_conflict",
    "tenant_drain_not_converging",
];

/// Runs every cross-document rule over one view.
pub fn check(model: &Model, ctx: &RuleContext) -> Vec<Finding> {
    let mut out = Vec::new();
    inventory::check(model, &mut out);
    definitions::check(model, &mut out);
    runbooks::check(model, ctx, &mut out);
    alerts::check(model, &mut out);
    observability::check(model, &mut out);
    render::check(model, &mut out);
    // A reference to a document that failed its own schema is not a second problem.
    if !model.broken_ids.is_empty() {
        out.retain(|f| {
            let is_ref = f.rule.starts_with("ref.") || f.rule == "placement.incomplete";
            !is_ref
                || !model
                    .broken_ids
                    .iter()
                    .any(|id| f.message.contains(&format!("`{id}`")))
        });
    }
    out
}

/// The `render.*` rules alone: what `vakt render` checks before it renders a view.
pub(crate) fn check_render(model: &Model, out: &mut Vec<Finding>) {
    render::check(model, out);
}

/// Looks a rule up by id.
pub fn rule(id: &str) -> Option<&'static RuleInfo> {
    RULES.iter().find(|r| r.id == id)
}
