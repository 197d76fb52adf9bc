//! Label agreement: dashboard panel queries and annotations that match on a label of vakt's own
//! metrics use values vakt can emit (`outcome="succeeded"` matches nothing, so a change marker
//! never renders and nobody notices).
//!
//! `opsrepo` cannot depend on the reconciler, so the values are listed here; a test in the
//! `tests` crate compares them with the reconciler's typed enums.

use serde_json::Value;

use super::memo::Memo;
use super::promql;
use crate::diag::Finding;
use crate::load::Model;

/// `outcome` of `vakt_apply_total`: `reconciler::outcome::StepOutcome::metric_label`.
pub const APPLY_OUTCOMES: &[&str] = &["applied", "noop", "refused", "failed"];

/// `reason` of `vakt_reconcile_refused_total`: `reconciler::outcome::RefusalKind::metric_label`.
pub const REFUSAL_REASONS: &[&str] = &[
    "invalid_commit",
    "branch_rewound",
    "off_branch",
    "freeze_window",
    "max_deletions",
    "approval_required",
    "rejected",
    "plan_stale",
    "plan_invalid",
    "action_not_allowed",
    "not_found",
    "promotion_guard",
    "restore_guard",
    "leader_active",
    "other",
];

/// The labels with a closed set of values, per metric vakt exports.
pub const CLOSED_LABELS: &[(&str, &str, &[&str])] = &[
    ("vakt_apply_total", "outcome", APPLY_OUTCOMES),
    ("vakt_reconcile_refused_total", "reason", REFUSAL_REASONS),
];

/// Values of `metric`'s `label` vakt can emit, when that set is closed.
pub fn closed_values(metric: &str, label: &str) -> Option<&'static [&'static str]> {
    CLOSED_LABELS
        .iter()
        .find(|(m, l, _)| *m == metric && *l == label)
        .map(|(_, _, v)| *v)
}

pub(super) fn check(m: &Model, out: &mut Vec<Finding>) {
    for d in &m.dashboards {
        let value = d.value.tree();
        let mut exprs: Vec<(String, &str)> = Vec::new();
        collect(&value, &mut String::new(), &mut exprs, 0);
        for (ptr, expr) in exprs {
            let Some(fx) = promql::facts(expr) else {
                continue; // not PromQL: `dashboard.query` reports it
            };
            for s in &fx.selectors {
                let Some(metric) = &s.metric else { continue };
                for lm in &s.matchers {
                    let Some(allowed) = closed_values(metric, &lm.label) else {
                        continue;
                    };
                    let bad = match lm.op {
                        "=" => !allowed.contains(&lm.value.as_str()),
                        "=~" => !regex_matches_any(&lm.value, allowed),
                        _ => false,
                    };
                    if bad {
                        let (p, pos) = d.at(&ptr);
                        out.push(
                            Finding::new(
                                "dashboard.label-value",
                                p,
                                pos,
                                format!(
                                    "`{metric}{{{}{}\"{}\"}}` matches nothing: vakt emits {} = {}",
                                    lm.label,
                                    lm.op,
                                    lm.value,
                                    lm.label,
                                    allowed.join(", ")
                                ),
                            )
                            .help("use a value vakt emits; `vakt reconcile` documents its metrics"),
                        );
                    }
                }
            }
        }
    }
}

/// Whether an anchored Prometheus regex matches at least one allowed value. A regex that does
/// not compile matches nothing we can tell; it is left to the query rules.
fn regex_matches_any(re: &str, allowed: &[&str]) -> bool {
    // Compiled once per pattern for the life of the process (the daemon validates every commit
    // it applies, with the same dashboards).
    static MEMO: Memo<Option<regex::Regex>> = Memo::new(4096, 1024);
    let compiled = MEMO.get_or(re, |re| regex::Regex::new(&format!("^(?:{re})$")).ok());
    match compiled {
        Some(r) => allowed.iter().any(|v| r.is_match(v)),
        None => true,
    }
}

/// Every `expr` string in a dashboard (panel targets, annotations), with its JSON pointer.
/// The pointer is one buffer, pushed and truncated on the way down; only an `expr` copies it.
fn collect<'a>(v: &'a Value, ptr: &mut String, out: &mut Vec<(String, &'a str)>, depth: usize) {
    if depth > 64 {
        return;
    }
    let len = ptr.len();
    match v {
        Value::Object(map) => {
            for (k, x) in map {
                ptr.push('/');
                crate::parse::push_segment(ptr, k);
                match (k.as_str(), x) {
                    ("expr", Value::String(s)) => out.push((ptr.clone(), s)),
                    _ => collect(x, ptr, out, depth + 1),
                }
                ptr.truncate(len);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                use std::fmt::Write;
                let _ = write!(ptr, "/{i}");
                collect(x, ptr, out, depth + 1);
                ptr.truncate(len);
            }
        }
        _ => {}
    }
}
