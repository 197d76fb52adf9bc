//! Governance rules over the typed model of one view. Each rule has a stable id; findings say
//! what to do.

mod alerts;
pub mod commands;
mod definitions;
mod inventory;
pub mod labels;
pub mod logql;
mod memo;
pub mod observability;
pub mod promql;
pub mod provenance;
pub(crate) mod render;
mod runbooks;
mod topology;
pub use runbooks::REQUIRED_SECTIONS;
pub mod secrets;
mod trigger;

use crate::diag::Finding;
use crate::load::Model;

pub use crate::diag::{RULES, RuleInfo};
/// The markdown checks of one runbook (sections, raw HTML, script links), on its text alone:
/// the entry point of the fuzz target `markdown`.
pub use runbooks::markdown as runbook_markdown;

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
    "vakt_metrics_backend_degraded",
    "inventory_trust_conflict",
    "tenant_drain_not_converging",
];

/// Runs every cross-document rule over one view.
pub fn check(model: &Model, ctx: &RuleContext) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut t = std::time::Instant::now();
    let mut lap = |group: &str| {
        tracing::trace!(group, ms = crate::diag::ms(t), "rule group");
        t = std::time::Instant::now();
    };
    inventory::check(model, &mut out);
    lap("inventory");
    definitions::check(model, &mut out);
    lap("definitions");
    runbooks::check(model, ctx, &mut out);
    lap("runbooks");
    alerts::check(model, &mut out);
    lap("alerts");
    observability::check(model, &mut out);
    lap("observability");
    render::check(model, &mut out);
    lap("render");
    trigger::check(model, &mut out);
    lap("trigger");
    labels::check(model, &mut out);
    lap("labels");
    provenance::check(model, &mut out);
    lap("provenance");
    topology::check(model, &mut out);
    lap("topology");
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
