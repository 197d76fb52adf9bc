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

use rayon::prelude::*;

use crate::diag::Finding;
use crate::kinds::Kind;
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
/// One group of rules: its name (in trace logs), the kinds of documents it reads, and its check.
struct Group {
    name: &'static str,
    reads: &'static [Kind],
    run: fn(&Model, &RuleContext, &mut Vec<Finding>),
}

/// Every rule group, in the order they run. `reads` lists every kind whose documents the
/// group's code touches (a test reads each group's source to keep the lists whole): a group
/// is a pure function of those documents.
const GROUPS: &[Group] = &[
    Group {
        name: "inventory",
        reads: &[
            Kind::RoleBinding,
            Kind::RunbookCatalog,
            Kind::DrStore,
            Kind::Manifest,
            Kind::Node,
            Kind::Placement,
            Kind::Role,
            Kind::Runbook,
            Kind::Service,
            Kind::Shard,
            Kind::Site,
            Kind::Tenant,
        ],
        run: |m, _, out| inventory::check(m, out),
    },
    Group {
        name: "definitions",
        reads: &[
            Kind::Aggregate,
            Kind::DefinitionManifest,
            Kind::EffectProvider,
            Kind::Projection,
            Kind::Saga,
            Kind::Tenant,
        ],
        run: |m, _, out| definitions::check(m, out),
    },
    Group {
        name: "runbooks",
        reads: &[
            Kind::RunbookCatalog,
            Kind::Dashboard,
            Kind::Manifest,
            Kind::Runbook,
            Kind::SavedQuery,
            Kind::Service,
        ],
        run: runbooks::check,
    },
    Group {
        name: "alerts",
        reads: &[Kind::AlertRules, Kind::RunbookCatalog, Kind::Runbook],
        run: |m, _, out| alerts::check(m, out),
    },
    Group {
        name: "observability",
        reads: &[
            Kind::RunbookCatalog,
            Kind::Dashboard,
            Kind::Datasources,
            Kind::Runbook,
            Kind::SavedQuery,
        ],
        run: |m, _, out| observability::check(m, out),
    },
    Group {
        name: "render",
        reads: &[
            Kind::AlertRules,
            Kind::Datasources,
            Kind::Manifest,
            Kind::Node,
        ],
        run: |m, _, out| render::check(m, out),
    },
    Group {
        name: "trigger",
        reads: &[Kind::AlertRules, Kind::RunbookCatalog, Kind::Runbook],
        run: |m, _, out| trigger::check(m, out),
    },
    Group {
        name: "labels",
        reads: &[Kind::Dashboard],
        run: |m, _, out| labels::check(m, out),
    },
    Group {
        name: "provenance",
        reads: &[
            Kind::AlertRules,
            Kind::Dashboard,
            Kind::Datasources,
            Kind::Exporter,
            Kind::SavedQuery,
            Kind::Service,
        ],
        run: |m, _, out| provenance::check(m, out),
    },
    Group {
        name: "topology",
        reads: &[
            Kind::Node,
            Kind::Placement,
            Kind::Service,
            Kind::Shard,
            Kind::Site,
            Kind::Tenant,
        ],
        run: |m, _, out| topology::check(m, out),
    },
];

/// The kinds read by the rule groups that read any of `changed` (what
/// [`check_reading`] with `changed` needs of a view).
pub fn kinds_read_by_groups_reading(changed: &[Kind]) -> Vec<Kind> {
    let mut kinds: Vec<Kind> = GROUPS
        .iter()
        .filter(|g| g.reads.iter().any(|k| changed.contains(k)))
        .flat_map(|g| g.reads.iter().copied())
        .collect();
    kinds.sort();
    kinds.dedup();
    kinds
}

/// Every rule over one view, or, with `changed`, only the groups that read a kind in it: the
/// others see the same documents as in a view already checked (the base view, for an
/// environment whose overlays are all of the `changed` kinds), so their findings are that
/// view's.
pub fn check_reading(model: &Model, ctx: &RuleContext, changed: Option<&[Kind]>) -> Vec<Finding> {
    // The groups are independent: they run as tasks of their own, so the views' groups spread
    // over every core (a view's largest group, not the base view's whole rule set, is what
    // the others wait for). Findings keep the groups' order.
    let mut out: Vec<Finding> = GROUPS
        .par_iter()
        .filter(|g| changed.is_none_or(|c| g.reads.iter().any(|k| c.contains(k))))
        .map(|g| {
            let t = std::time::Instant::now();
            let mut out = Vec::new();
            (g.run)(model, ctx, &mut out);
            tracing::trace!(group = g.name, ms = crate::diag::ms(t), "rule group");
            out
        })
        .flatten_iter()
        .collect();
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

pub(crate) fn check_render(model: &Model, out: &mut Vec<Finding>) {
    render::check(model, out);
}

/// Looks a rule up by id.
pub fn rule(id: &str) -> Option<&'static RuleInfo> {
    RULES.iter().find(|r| r.id == id)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The model's fields that hold documents, and their kind (`None`: every kind).
    const FIELDS: &[(&str, Option<Kind>)] = &[
        ("manifest", Some(Kind::Manifest)),
        ("global", Some(Kind::GlobalConfig)),
        ("config_items", Some(Kind::ConfigItem)),
        ("tenants", Some(Kind::Tenant)),
        ("aggregates", Some(Kind::Aggregate)),
        ("projections", Some(Kind::Projection)),
        ("sagas", Some(Kind::Saga)),
        ("effects", Some(Kind::EffectProvider)),
        ("definition_manifests", Some(Kind::DefinitionManifest)),
        ("sites", Some(Kind::Site)),
        ("nodes", Some(Kind::Node)),
        ("shards", Some(Kind::Shard)),
        ("services", Some(Kind::Service)),
        ("placements", Some(Kind::Placement)),
        ("exporters", Some(Kind::Exporter)),
        ("roles", Some(Kind::Role)),
        ("bindings", Some(Kind::RoleBinding)),
        ("catalogs", Some(Kind::RunbookCatalog)),
        ("runbooks", Some(Kind::Runbook)),
        ("datasources", Some(Kind::Datasources)),
        ("saved_queries", Some(Kind::SavedQuery)),
        ("dashboards", Some(Kind::Dashboard)),
        ("alert_rules", Some(Kind::AlertRules)),
        ("dr_stores", Some(Kind::DrStore)),
        ("documents", None),
        ("env", None),
    ];

    /// Every `.field` of the model a source text names (any receiver: a field of the same name
    /// on another type only makes the list longer, never shorter).
    fn fields_named(src: &str) -> Vec<&'static str> {
        let code: String = src
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        let b = code.as_bytes();
        FIELDS
            .iter()
            .map(|(f, _)| *f)
            .filter(|f| {
                code.match_indices(&format!(".{f}")).any(|(i, m)| {
                    let after = b.get(i + m.len()).copied().unwrap_or(b' ');
                    !(after.is_ascii_alphanumeric() || after == b'_')
                })
            })
            .collect()
    }

    #[test]
    fn every_group_declares_every_kind_its_code_reads() {
        let sources = [
            ("inventory", include_str!("inventory.rs")),
            ("definitions", include_str!("definitions.rs")),
            ("runbooks", include_str!("runbooks.rs")),
            ("alerts", include_str!("alerts.rs")),
            ("observability", include_str!("observability.rs")),
            ("render", include_str!("render.rs")),
            ("trigger", include_str!("trigger.rs")),
            ("labels", include_str!("labels.rs")),
            ("provenance", include_str!("provenance.rs")),
            ("topology", include_str!("topology.rs")),
        ];
        assert_eq!(
            sources.len(),
            GROUPS.len(),
            "a group without its source here"
        );
        for (name, src) in sources {
            let g = GROUPS.iter().find(|g| g.name == name).expect(name);
            for field in fields_named(src) {
                let kind = FIELDS
                    .iter()
                    .find(|(f, _)| *f == field)
                    .and_then(|(_, k)| *k);
                match kind {
                    Some(k) => assert!(
                        g.reads.contains(&k),
                        "rule group `{name}` reads `.{field}` but does not declare {k:?}"
                    ),
                    None => panic!(
                        "rule group `{name}` reads `.{field}`: it depends on every document \
                         or on the view itself, so its findings cannot be reused across views"
                    ),
                }
            }
        }
    }

    #[test]
    fn the_scan_sees_a_field_and_not_a_longer_name() {
        assert_eq!(fields_named("m.tenants.iter()"), vec!["tenants"]);
        assert!(fields_named("x.tenants_total + y.nodesets").is_empty());
        assert_eq!(fields_named("m\n    .shards\n"), vec!["shards"]);
    }
}
