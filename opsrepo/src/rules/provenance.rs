//! `metric.provenance`: every metric name an alert, a recording rule, a dashboard (panel
//! targets, annotations, query variables) or a saved query selects is provided by someone: a
//! recording rule in the repo, a platform service that lists it under `exports`
//! (`inventory/services/<kind>.toml`), or an external exporter
//! (`inventory/exporters/<id>.toml`). A name nobody provides is a query that returns nothing
//! at 3 a.m., and an alert over it never fires.
//!
//! An expression that does not parse is left to `alert.promql`, `dashboard.query` and
//! `query.template`: it is reported once, by its own rule. Selectors that pick metric names
//! by pattern (`{__name__=~"…"}`) name no metric and are not checked.

use std::collections::{BTreeSet, HashMap};

use serde_json::Value;

use super::observability::{fill, grafana_fill};
use super::promql;
use crate::diag::Finding;
use crate::load::{Doc, Model, index_by};
use crate::model::{DatasourceRef, DatasourceType, MetricName};

/// The help line of every finding.
pub const HELP: &str = "record it in a rule, add it to the exporting service's `exports`, or declare it external (inventory/exporters/<id>.toml)";

/// Who provides which metric names in one view.
struct Providers<'a> {
    recorded: BTreeSet<&'a str>,
    /// (provider, names or prefixes).
    declared: Vec<(String, &'a [MetricName])>,
}

impl Providers<'_> {
    fn provides(&self, metric: &str) -> bool {
        self.recorded.contains(metric)
            || self
                .declared
                .iter()
                .any(|(_, names)| names.iter().any(|n| n.provides(metric)))
    }
}

pub(super) fn check(m: &Model, out: &mut Vec<Finding>) {
    let mut p = Providers {
        recorded: BTreeSet::new(),
        declared: Vec::new(),
    };
    for f in &m.alert_rules {
        for g in &f.spec.groups {
            for r in &g.rules {
                if let Some(rec) = &r.record {
                    p.recorded.insert(rec);
                }
            }
        }
    }
    for s in &m.services {
        p.declared
            .push((format!("service {}", s.spec.kind), &s.spec.exports));
    }
    index_by(&m.exporters, |e| &e.id, "/id", "exporter", out);
    for e in &m.exporters {
        p.declared
            .push((format!("exporter {}", e.spec.id), &e.spec.metrics));
    }

    for f in &m.alert_rules {
        for (g, group) in f.spec.groups.iter().enumerate() {
            for (r, rule) in group.rules.iter().enumerate() {
                let name = rule
                    .alert
                    .as_deref()
                    .or(rule.record.as_deref())
                    .unwrap_or("");
                let what = if rule.alert.is_some() {
                    format!("alert `{name}`")
                } else {
                    format!("recording rule `{name}`")
                };
                let ptr = format!("/groups/{g}/rules/{r}/expr");
                report(&p, &rule.expr, &what, || f.at(&ptr), out);
            }
        }
    }

    let ds: HashMap<&str, DatasourceType> = m
        .datasources
        .iter()
        .flat_map(|d| d.spec.datasources.iter())
        .map(|d| (d.uid.as_str(), d.kind))
        .collect();
    for q in &m.saved_queries {
        if ds.get(q.spec.datasource.as_str()) != Some(&DatasourceType::Prometheus) {
            continue;
        }
        let examples: HashMap<&str, &str> = q
            .spec
            .variables
            .iter()
            .map(|v| (v.name.as_str(), v.example.as_str()))
            .collect();
        let filled = fill(&q.spec.template, &examples);
        let what = format!("saved query `{}`", q.spec.id);
        report(&p, &filled, &what, || q.at("/template"), out);
    }

    for d in &m.dashboards {
        dashboard(&p, &ds, d, out);
    }
}

fn is_prometheus(ds: &HashMap<&str, DatasourceType>, r: &DatasourceRef) -> bool {
    match ds.get(r.uid.as_str()) {
        Some(k) => *k == DatasourceType::Prometheus,
        // A datasource variable (`${DS_PROMETHEUS}`): the type it declares decides.
        None => r.kind == "prometheus",
    }
}

fn dashboard(
    p: &Providers<'_>,
    ds: &HashMap<&str, DatasourceType>,
    d: &Doc<crate::model::Dashboard>,
    out: &mut Vec<Finding>,
) {
    let mut stack: Vec<(String, &crate::model::Panel)> = d
        .spec
        .panels
        .iter()
        .enumerate()
        .map(|(i, x)| (format!("/panels/{i}"), x))
        .collect();
    while let Some((ptr, panel)) = stack.pop() {
        for (i, child) in panel.panels.iter().enumerate() {
            stack.push((format!("{ptr}/panels/{i}"), child));
        }
        for (i, t) in panel.targets.iter().enumerate() {
            let Some(expr) = &t.expr else { continue };
            let Some(r) = t.datasource.as_ref().or(panel.datasource.as_ref()) else {
                continue;
            };
            if !is_prometheus(ds, r) {
                continue;
            }
            let what = format!("panel `{}`", panel.title);
            let tptr = format!("{ptr}/targets/{i}/expr");
            report(p, &grafana_fill(expr), &what, || d.at(&tptr), out);
        }
    }
    // Annotations with a Prometheus datasource.
    if let Some(Value::Array(list)) = d.value.tree().pointer("/annotations/list") {
        for (i, a) in list.iter().enumerate() {
            let (Some(Value::String(expr)), Some(r)) = (
                a.get("expr"),
                a.get("datasource")
                    .and_then(|v| serde_json::from_value::<DatasourceRef>(v.clone()).ok()),
            ) else {
                continue;
            };
            if !is_prometheus(ds, &r) {
                continue;
            }
            let name = a.get("name").and_then(Value::as_str).unwrap_or("");
            let what = format!("annotation `{name}`");
            let aptr = format!("/annotations/list/{i}/expr");
            report(p, &grafana_fill(expr), &what, || d.at(&aptr), out);
        }
    }
    // Query variables: `label_values(<selector>, label)` and `query_result(<expr>)`.
    if let Some(t) = &d.spec.templating {
        for (i, v) in t.list.iter().enumerate() {
            if v.get("type").and_then(Value::as_str) != Some("query") {
                continue;
            }
            let (q, ptr) = match v.get("query") {
                Some(Value::String(s)) => (s.as_str(), format!("/templating/list/{i}/query")),
                Some(Value::Object(o)) => match o.get("query") {
                    Some(Value::String(s)) => {
                        (s.as_str(), format!("/templating/list/{i}/query/query"))
                    }
                    _ => continue,
                },
                _ => continue,
            };
            if let Some(r) = v
                .get("datasource")
                .and_then(|x| serde_json::from_value::<DatasourceRef>(x.clone()).ok())
                && !is_prometheus(ds, &r)
            {
                continue;
            }
            let Some(expr) = variable_expr(q) else {
                continue;
            };
            let name = v.get("name").and_then(Value::as_str).unwrap_or("");
            let what = format!("variable `{name}`");
            report(p, &grafana_fill(expr), &what, || d.at(&ptr), out);
        }
    }
}

/// The PromQL inside a Grafana query variable: the selector of `label_values(sel, label)`, the
/// expression of `query_result(expr)`; `None` for `label_values(label)`, `label_names()` and
/// anything else.
pub fn variable_expr(q: &str) -> Option<&str> {
    let q = q.trim();
    if let Some(inner) = q
        .strip_prefix("query_result(")
        .and_then(|r| r.strip_suffix(')'))
    {
        return Some(inner.trim());
    }
    let inner = q
        .strip_prefix("label_values(")
        .and_then(|r| r.strip_suffix(')'))?;
    // The label is the last argument; the selector (if any) is everything before it.
    let (sel, _label) = inner.rsplit_once(',')?;
    Some(sel.trim())
}

/// One finding per metric name `expr` uses that nobody provides.
fn report<'a>(
    p: &Providers<'_>,
    expr: &str,
    what: &str,
    at: impl Fn() -> (&'a str, crate::diag::Pos),
    out: &mut Vec<Finding>,
) {
    // Not PromQL: the syntax rules report it.
    let Some(facts) = promql::facts(expr) else {
        return;
    };
    let missing: BTreeSet<&str> = facts.metrics().filter(|n| !p.provides(n)).collect();
    for n in missing {
        let (path, pos) = at();
        out.push(
            Finding::new(
                "metric.provenance",
                path,
                pos,
                format!(
                    "{what} uses metric `{n}`, which no recording rule records, no service exports and no external exporter declares"
                ),
            )
            .help(HELP),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variable_queries() {
        assert_eq!(
            variable_expr(r#"label_values(up{env="$env"}, site)"#),
            Some(r#"up{env="$env"}"#)
        );
        assert_eq!(variable_expr("label_values(env)"), None);
        assert_eq!(
            variable_expr("query_result(topk(5, x))"),
            Some("topk(5, x)")
        );
        assert_eq!(variable_expr("label_names()"), None);
    }

    #[test]
    fn prefixes_provide_names() {
        let n = MetricName("aggregate_*".into());
        assert!(n.provides("aggregate_in_flight_commands"));
        assert!(!n.provides("gateway_x"));
        let e = MetricName("up".into());
        assert!(e.provides("up") && !e.provides("upx"));
    }
}
