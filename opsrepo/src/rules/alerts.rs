//! Alert rule groups: labels, runbook annotations, signal coverage, PromQL syntax.

use std::collections::HashMap;

use crate::diag::Finding;
use crate::load::Model;

pub(super) fn check(m: &Model, out: &mut Vec<Finding>) {
    let mut runbooks: HashMap<&str, &crate::model::RunbookEntry> = HashMap::new();
    let mut signal_owner: HashMap<&str, &str> = HashMap::new();
    for c in &m.catalogs {
        for e in &c.spec.runbooks {
            runbooks.insert(&e.id, e);
            for s in &e.signals {
                signal_owner.entry(s).or_insert(&e.id);
            }
        }
    }
    for f in &m.alert_rules {
        for (g, group) in f.spec.groups.iter().enumerate() {
            for (r, rule) in group.rules.iter().enumerate() {
                let ptr = format!("/groups/{g}/rules/{r}");
                let name = rule
                    .alert
                    .as_deref()
                    .or(rule.record.as_deref())
                    .unwrap_or("");
                if let Err(e) = super::promql::parse(&rule.expr) {
                    let (p, pos) = f.at(&format!("{ptr}/expr"));
                    out.push(
                        Finding::new(
                            "alert.promql",
                            p,
                            pos,
                            format!("`{name}`: expression is not valid PromQL: {e}"),
                        )
                        .help("fix the expression; `promtool check rules` shows the same error"),
                    );
                }
                match (&rule.alert, &rule.record) {
                    (Some(_), Some(_)) | (None, None) => {
                        let (p, pos) = f.at(&ptr);
                        out.push(
                            Finding::new(
                                "schema.invalid",
                                p,
                                pos,
                                "a rule has exactly one of `alert` and `record`",
                            )
                            .help("split it into an alerting and a recording rule"),
                        );
                        continue;
                    }
                    (None, Some(_)) => continue,
                    (Some(_), None) => {}
                }
                let label = |k: &str| rule.labels.get(k).map(String::as_str);
                let severity = label("severity");
                if !matches!(severity, Some("critical" | "warning" | "info")) {
                    let (p, pos) = f.at(&format!("{ptr}/labels"));
                    out.push(
                        Finding::new(
                            "alert.labels",
                            p,
                            pos,
                            format!(
                                "alert `{name}` needs label severity: critical, warning or info"
                            ),
                        )
                        .help("set `severity` so routing and the site know how urgent it is"),
                    );
                }
                if !matches!(
                    label("escalation"),
                    Some("informational" | "action-required" | "urgent")
                ) {
                    let (p, pos) = f.at(&format!("{ptr}/labels"));
                    out.push(
                        Finding::new(
                            "alert.labels",
                            p,
                            pos,
                            format!("alert `{name}` needs label escalation: informational, action-required or urgent"),
                        )
                        .help("set `escalation` to the class of the condition (operator-surface escalation model)"),
                    );
                }
                let signal = label("signal");
                if signal.is_none() {
                    let (p, pos) = f.at(&format!("{ptr}/labels"));
                    out.push(
                        Finding::new("alert.labels", p, pos, format!("alert `{name}` needs a `signal` label"))
                            .help("name the signal key this alert raises, as listed in the runbook catalog"),
                    );
                }
                if rule.annotations.contains_key("runbook_url") {
                    let (p, pos) = f.at_key(&format!("{ptr}/annotations/runbook_url"));
                    out.push(
                        Finding::new(
                            "alert.runbook-url",
                            p,
                            pos,
                            format!("alert `{name}` has a hand-written runbook_url"),
                        )
                        .help(
                            "remove it and set `runbook_id`; vakt renders runbook_url from the id",
                        ),
                    );
                }
                let actionable = matches!(severity, Some("critical" | "warning"));
                match rule.annotations.get("runbook_id") {
                    None if actionable => {
                        let (p, pos) = f.at(&format!("{ptr}/alert"));
                        out.push(
                            Finding::new(
                                "alert.runbook-missing",
                                p,
                                pos,
                                format!("actionable alert `{name}` has no runbook_id annotation"),
                            )
                            .help("add annotations.runbook_id naming a runbook from runbooks/runbooks.catalog.json"),
                        );
                    }
                    None => {}
                    Some(id) => match runbooks.get(id.as_str()) {
                        None => {
                            let (p, pos) = f.at(&format!("{ptr}/annotations/runbook_id"));
                            out.push(
                                Finding::new(
                                    "ref.runbook",
                                    p,
                                    pos,
                                    format!("alert `{name}` names unknown runbook `{id}`"),
                                )
                                .help("name a runbook id from runbooks/runbooks.catalog.json"),
                            );
                        }
                        Some(rb) => {
                            if let Some(s) = signal
                                && !rb.signals.iter().any(|x| x == s)
                            {
                                let (p, pos) = f.at(&format!("{ptr}/labels/signal"));
                                out.push(
                                        Finding::new(
                                            "alert.signal-mismatch",
                                            p,
                                            pos,
                                            format!("runbook `{id}` does not list signal `{s}`"),
                                        )
                                        .help("add the signal to that runbook's `signals`, or point the alert at the right runbook"),
                                    );
                            }
                        }
                    },
                }
                if let Some(s) = signal
                    && !signal_owner.contains_key(s)
                {
                    let (p, pos) = f.at(&format!("{ptr}/labels/signal"));
                    out.push(
                            Finding::new("signal.unmapped", p, pos, format!("signal `{s}` of alert `{name}` maps to no runbook"))
                                .help("list the signal under `signals` of a runbook in runbooks/runbooks.catalog.json"),
                        );
                }
            }
        }
    }
}
