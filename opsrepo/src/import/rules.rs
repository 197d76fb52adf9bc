//! `vakt import rules`: Prometheus / vmalert rule files and Kubernetes `PrometheusRule` CRs
//! (single or multi-document YAML, `kind: List`) -> `alerts/<name>.yaml`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;

use serde_json::{Map, Value};

use super::walk::{read_text, walk};
use super::yaml::to_yaml;
use super::{
    AlertLine, DeadLink, Defaulted, ImportOptions, MAX_FILE_BYTES, Plan, Problem, id_segment,
    snake_case,
};
use crate::source::RepoFiles;

/// The catalog's path in the layout.
pub const CATALOG: &str = "runbooks/runbooks.catalog.json";

/// Group fields vakt's rule schema knows.
const GROUP_FIELDS: &[&str] = &["name", "interval", "rules"];
/// Rule fields vakt's rule schema knows.
const RULE_FIELDS: &[&str] = &[
    "alert",
    "record",
    "expr",
    "for",
    "keep_firing_for",
    "labels",
    "annotations",
];

/// One source of groups: a rule file or a CR.
struct Source {
    /// Where it came from, for messages (`file` or `file (document 2)`).
    shown: String,
    /// The name its output file is derived from.
    name: String,
    groups: Vec<Value>,
}

/// Plans the import of rule files under `paths`.
pub fn plan(
    paths: &[PathBuf],
    url_base: Option<&str>,
    current: &RepoFiles,
    opts: &ImportOptions,
) -> Plan {
    let mut plan = Plan::default();
    let problems = &mut plan.report.problems;
    let mut sources = Vec::new();
    for p in paths {
        for f in walk(p, &["yaml", "yml"], problems) {
            let Some(text) = read_text(&f, MAX_FILE_BYTES, problems) else {
                continue;
            };
            let docs = match crate::parse::parse_yaml_documents(&f.shown, &text) {
                Ok(d) => d,
                Err(e) => {
                    problems.push(super::Problem::from_finding(&f.shown, &e));
                    continue;
                }
            };
            let stem = f
                .rel
                .rsplit('/')
                .next()
                .unwrap_or(&f.rel)
                .rsplit_once('.')
                .map_or(f.rel.as_str(), |(s, _)| s)
                .to_owned();
            let many = docs.len() > 1;
            for (i, d) in docs.into_iter().enumerate() {
                let shown = if many {
                    format!("{} (document {})", f.shown, i + 1)
                } else {
                    f.shown.clone()
                };
                classify(d, &shown, &stem, &mut sources, problems, 0);
            }
        }
    }

    // The catalog and the alert files already in the repo.
    let mut catalog = read_json(current, CATALOG);
    let ids: BTreeSet<String> = catalog_ids(catalog.as_ref());
    let mut written: BTreeMap<String, String> = BTreeMap::new(); // output path -> shown source
    let mut outputs: Vec<(String, Vec<Value>)> = Vec::new();
    for s in &sources {
        let out = format!("alerts/{}.yaml", id_segment(&s.name).replace('_', "-"));
        if let Some(first) = written.get(&out) {
            problems.push(Problem::new(
                &s.shown,
                format!("would write {out}, which {first} writes too; not imported"),
                "rename the rule file or the CR's metadata.name, or import it separately",
            ));
            continue;
        }
        written.insert(out.clone(), s.shown.clone());
        outputs.push((out, s.groups.clone()));
    }
    let mut group_owner: HashMap<String, String> = HashMap::new();
    let mut existing_runbook_refs: BTreeSet<String> = BTreeSet::new();
    for f in &current.files {
        if !f.path.starts_with("alerts/") || written.contains_key(&f.path) {
            continue;
        }
        let Ok(bytes) = &f.content else { continue };
        let Ok(text) = std::str::from_utf8(bytes) else {
            continue;
        };
        let Ok(v) = crate::parse::parse_value(&f.path, crate::parse::Format::Yaml, text) else {
            continue;
        };
        for g in v
            .get("groups")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(n) = g.get("name").and_then(Value::as_str) {
                group_owner.insert(n.to_owned(), f.path.clone());
            }
            for r in g
                .get("rules")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(id) = r.pointer("/annotations/runbook_id").and_then(Value::as_str) {
                    existing_runbook_refs.insert(id.to_owned());
                }
            }
        }
    }

    let mut dead: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut signals_for: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut referenced = existing_runbook_refs;
    for (out, groups) in outputs {
        let shown = written.get(&out).cloned().unwrap_or_default();
        let mut kept = Vec::new();
        for g in groups {
            let Value::Object(g) = g else {
                problems.push(Problem::new(
                    &shown,
                    "a group is not a mapping; skipped",
                    "write each group as `- name: ...` with `rules:`",
                ));
                continue;
            };
            let Some(name) = g.get("name").and_then(Value::as_str).map(str::to_owned) else {
                problems.push(Problem::new(
                    &shown,
                    "a group has no name; skipped",
                    "give every group a `name`",
                ));
                continue;
            };
            if let Some(first) = group_owner.get(&name) {
                problems.push(Problem::new(
                    &shown,
                    format!(
                        "group `{name}` is already defined in {first}; this one was not imported"
                    ),
                    "group names are unique across alerts/: rename one of them and import again",
                ));
                continue;
            }
            group_owner.insert(name.clone(), out.clone());
            let mut ng = Map::new();
            ng.insert("name".into(), Value::String(name.clone()));
            for k in g.keys() {
                if !GROUP_FIELDS.contains(&k.as_str()) {
                    problems.push(Problem::new(
                        &shown,
                        format!("group `{name}`: field `{k}` is not part of vakt's rule schema; dropped"),
                        "set it in the evaluator's configuration instead, or drop it from the source",
                    ));
                }
            }
            if let Some(iv) = g.get("interval") {
                match iv.as_str() {
                    Some(s) if is_duration(s) => {
                        ng.insert("interval".into(), Value::String(s.to_owned()));
                    }
                    _ => problems.push(Problem::new(
                        &shown,
                        format!("group `{name}`: interval {iv} is not a duration; dropped"),
                        "write it like 30s or 1m",
                    )),
                }
            }
            let mut rules_out = Vec::new();
            let rules = match g.get("rules") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(a)) => a.clone(),
                Some(_) => {
                    problems.push(Problem::new(
                        &shown,
                        format!("group `{name}`: rules is not a list; group skipped"),
                        "write rules as a list of `- alert:` / `- record:` entries",
                    ));
                    continue;
                }
            };
            for r in rules {
                let ctx = RuleCtx {
                    shown: &shown,
                    group: &name,
                    out: &out,
                    url_base,
                    ids: &ids,
                    opts,
                };
                if let Some(r) = rule(
                    r,
                    &ctx,
                    &mut plan.report.alerts,
                    &mut plan.report.defaulted,
                    problems,
                    &mut dead,
                    &mut signals_for,
                ) {
                    if let Some(id) = r.pointer("/annotations/runbook_id").and_then(Value::as_str) {
                        referenced.insert(id.to_owned());
                    }
                    rules_out.push(r);
                }
            }
            ng.insert("rules".into(), Value::Array(rules_out));
            kept.push(Value::Object(ng));
        }
        if kept.is_empty() {
            continue;
        }
        let mut doc = Map::new();
        doc.insert("groups".into(), Value::Array(kept));
        let doc = Value::Object(doc);
        let text = format!(
            "# Imported by `vakt import rules` from {shown}.\n{}",
            to_yaml(&doc)
        );
        match crate::parse::parse_value(&out, crate::parse::Format::Yaml, &text) {
            Ok(back) if back == doc => {
                plan.files.insert(out, text);
            }
            _ => problems.push(Problem::new(
                &shown,
                format!(
                    "could not be written as YAML that reads back the same ({out}); not imported"
                ),
                "report this as a bug in vakt, with the file",
            )),
        }
    }

    // Signals the catalog must list for the alerts now pointing at its runbooks.
    if let Some(cat) = catalog.as_mut()
        && add_signals(cat, &signals_for)
        && let Ok(text) = serde_json::to_string_pretty(cat)
    {
        plan.files.insert(CATALOG.to_owned(), text + "\n");
        plan.merged.insert(CATALOG.to_owned());
    }
    plan.report.dead_links = dead
        .into_iter()
        .map(|(url, mut alerts)| {
            alerts.sort();
            alerts.dedup();
            DeadLink { url, alerts }
        })
        .collect();
    plan.report.unreferenced_runbooks = ids.difference(&referenced).cloned().collect();
    super::finish(&mut plan, current, opts);
    plan
}

fn classify(
    d: Value,
    shown: &str,
    stem: &str,
    out: &mut Vec<Source>,
    problems: &mut Vec<Problem>,
    depth: usize,
) {
    let kind = d.get("kind").and_then(Value::as_str).unwrap_or("");
    let name = d
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or(stem)
        .to_owned();
    match &d {
        Value::Null => {}
        Value::Object(o) if o.contains_key("groups") && kind.is_empty() => match &o["groups"] {
            Value::Array(g) => out.push(Source {
                shown: shown.to_owned(),
                name: stem.to_owned(),
                groups: g.clone(),
            }),
            _ => problems.push(Problem::new(
                shown,
                "`groups` is not a list; nothing imported",
                "write groups as a list of `- name: ...` entries",
            )),
        },
        Value::Object(_) if kind == "PrometheusRule" => match d.pointer("/spec/groups") {
            Some(Value::Array(g)) => out.push(Source {
                shown: shown.to_owned(),
                name,
                groups: g.clone(),
            }),
            Some(Value::Null) | None if d.get("spec").is_none_or(Value::is_null) => {
                problems.push(Problem::new(
                    shown,
                    format!("PrometheusRule `{name}` has no spec; nothing to import"),
                    "add spec.groups to the CR, or leave the document out",
                ))
            }
            _ => problems.push(Problem::new(
                shown,
                format!("PrometheusRule `{name}`: spec.groups is missing or not a list"),
                "write spec.groups as a list of rule groups",
            )),
        },
        Value::Object(o) if kind.ends_with("List") && depth < 4 => match o.get("items") {
            Some(Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    classify(
                        item.clone(),
                        &format!("{shown} (item {})", i + 1),
                        stem,
                        out,
                        problems,
                        depth + 1,
                    );
                }
            }
            _ => problems.push(Problem::new(
                shown,
                format!("{kind} has no items list; nothing imported"),
                "check the export",
            )),
        },
        _ => problems.push(Problem::new(
            shown,
            if kind.is_empty() {
                "neither a rule file (`groups:`) nor a PrometheusRule; nothing imported".to_owned()
            } else {
                format!("a `{kind}` is neither a rule file nor a PrometheusRule; nothing imported")
            },
            "import only rule files and PrometheusRule manifests",
        )),
    }
}

struct RuleCtx<'a> {
    shown: &'a str,
    group: &'a str,
    out: &'a str,
    url_base: Option<&'a str>,
    ids: &'a BTreeSet<String>,
    opts: &'a ImportOptions,
}

fn str_value(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn string_map(
    v: Option<&Value>,
    what: &str,
    ctx: &RuleCtx,
    subject: &str,
    problems: &mut Vec<Problem>,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Some(Value::Object(m)) = v {
        for (k, v) in m {
            match str_value(v) {
                Some(s) => {
                    out.insert(k.clone(), s);
                }
                None if v.is_null() => {}
                None => problems.push(Problem::new(
                    ctx.shown,
                    format!("`{subject}`: {what} `{k}` is not a string; dropped"),
                    "make it a string",
                )),
            }
        }
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn rule(
    r: Value,
    ctx: &RuleCtx,
    alerts: &mut Vec<AlertLine>,
    defaulted: &mut Vec<Defaulted>,
    problems: &mut Vec<Problem>,
    dead: &mut BTreeMap<String, Vec<String>>,
    signals_for: &mut BTreeMap<String, BTreeSet<String>>,
) -> Option<Value> {
    let Value::Object(o) = r else {
        problems.push(Problem::new(
            ctx.shown,
            format!("group `{}`: a rule is not a mapping; skipped", ctx.group),
            "write each rule as `- alert:` or `- record:` with `expr:`",
        ));
        return None;
    };
    let alert = o.get("alert").and_then(Value::as_str);
    let record = o.get("record").and_then(Value::as_str);
    let subject = alert.or(record).unwrap_or("?").to_owned();
    let Some(expr) = o.get("expr").and_then(str_value) else {
        problems.push(Problem::new(
            ctx.shown,
            format!(
                "group `{}`: rule `{subject}` has no expr; skipped",
                ctx.group
            ),
            "give the rule an expression",
        ));
        return None;
    };
    for k in o.keys() {
        if !RULE_FIELDS.contains(&k.as_str()) {
            problems.push(Problem::new(
                ctx.shown,
                format!("rule `{subject}`: field `{k}` is not part of vakt's rule schema; dropped"),
                "drop it from the source, or keep it in a label or annotation",
            ));
        }
    }
    let mut out = Map::new();
    if let Some(a) = alert {
        out.insert("alert".into(), Value::String(a.to_owned()));
    }
    if let Some(rec) = record {
        out.insert("record".into(), Value::String(rec.to_owned()));
    }
    out.insert("expr".into(), Value::String(expr));
    for k in ["for", "keep_firing_for"] {
        if let Some(v) = o.get(k).and_then(Value::as_str) {
            out.insert(k.into(), Value::String(v.to_owned()));
        }
    }
    let mut labels = string_map(o.get("labels"), "label", ctx, &subject, problems);
    let mut annotations = string_map(o.get("annotations"), "annotation", ctx, &subject, problems);
    if let Some(alert) = alert {
        let mapping = &ctx.opts.mapping;
        if !labels.contains_key("escalation") {
            let sev = labels.get("severity").cloned().unwrap_or_default();
            let (esc, default) = mapping.escalation(&sev);
            if default {
                defaulted.push(Defaulted {
                    subject: alert.to_owned(),
                    field: "labels.escalation".into(),
                    value: esc.clone(),
                    why: format!(
                        "from severity `{sev}` by the default mapping; override it in [escalation] of --mapping"
                    ),
                });
            }
            labels.insert("escalation".into(), esc);
        }
        let signal = match labels.get("signal") {
            Some(s) => s.clone(),
            None => {
                let (s, default) = match mapping.signals.get(alert) {
                    Some(s) => (s.clone(), false),
                    None => (snake_case(alert), true),
                };
                if default {
                    defaulted.push(Defaulted {
                        subject: alert.to_owned(),
                        field: "labels.signal".into(),
                        value: s.clone(),
                        why: "the alert name in snake_case; override it in [signals] of --mapping"
                            .into(),
                    });
                }
                labels.insert("signal".into(), s.clone());
                s
            }
        };
        let url = annotations.remove("runbook_url");
        let (id, reason) = if let Some(id) = annotations.get("runbook_id") {
            (Some(id.clone()), None)
        } else if let Some(url) = url {
            match resolve_url(&url, ctx.url_base, ctx.ids, &mapping.runbook_urls) {
                Some(id) => (Some(id), None),
                None => {
                    dead.entry(url.clone()).or_default().push(alert.to_owned());
                    (
                        None,
                        Some(format!(
                            "runbook_url {url} matches no runbook of the catalog (dead link)"
                        )),
                    )
                }
            }
        } else {
            (None, Some("the source has no runbook_url".to_owned()))
        };
        if let Some(id) = &id {
            annotations.insert("runbook_id".into(), id.clone());
            signals_for.entry(id.clone()).or_default().insert(signal);
        }
        alerts.push(AlertLine {
            alert: alert.to_owned(),
            group: ctx.group.to_owned(),
            file: ctx.out.to_owned(),
            runbook_id: id,
            reason,
        });
    }
    let to_obj = |m: BTreeMap<String, String>| {
        Value::Object(m.into_iter().map(|(k, v)| (k, Value::String(v))).collect())
    };
    if !labels.is_empty() {
        out.insert("labels".into(), to_obj(labels));
    }
    if !annotations.is_empty() {
        out.insert("annotations".into(), to_obj(annotations));
    }
    Some(Value::Object(out))
}

fn is_duration(s: &str) -> bool {
    static RE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    RE.get_or_init(|| regex::Regex::new(r"^([0-9]+(ms|s|m|h|d|w|y))+$").expect("valid regex"))
        .is_match(s)
}

/// Reads a JSON document of the repo.
pub(crate) fn read_json(current: &RepoFiles, path: &str) -> Option<Value> {
    let f = current.files.iter().find(|f| f.path == path)?;
    let bytes = f.content.as_ref().ok()?;
    serde_json::from_slice(bytes).ok()
}

/// Runbook ids of a catalog value.
pub(crate) fn catalog_ids(cat: Option<&Value>) -> BTreeSet<String> {
    cat.and_then(|c| c.get("runbooks"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|e| e.get("id").and_then(Value::as_str).map(str::to_owned))
        .collect()
}

/// Adds each alert signal to its runbook's `signals`; true when the catalog changed.
fn add_signals(cat: &mut Value, signals_for: &BTreeMap<String, BTreeSet<String>>) -> bool {
    let mut changed = false;
    let Some(list) = cat.get_mut("runbooks").and_then(Value::as_array_mut) else {
        return false;
    };
    for e in list {
        let Some(id) = e.get("id").and_then(Value::as_str).map(str::to_owned) else {
            continue;
        };
        let Some(want) = signals_for.get(&id) else {
            continue;
        };
        let Some(have) = e.get_mut("signals").and_then(Value::as_array_mut) else {
            continue;
        };
        for s in want {
            if !have.iter().any(|h| h.as_str() == Some(s)) {
                have.push(Value::String(s.clone()));
                changed = true;
            }
        }
    }
    changed
}

/// The runbook id a page path (relative to the imported folder) gets by default:
/// `kubernetes/KubePodCrashLooping.md` -> `kubernetes.kubepodcrashlooping`; `_index.md` stands
/// for its folder; a single segment is put under `runbooks.`.
pub fn path_id(rel: &str) -> String {
    let rel = rel.trim_matches('/');
    let rel = rel
        .strip_suffix(".md")
        .or_else(|| rel.strip_suffix(".markdown"))
        .or_else(|| rel.strip_suffix(".html"))
        .unwrap_or(rel);
    let mut segs: Vec<String> = rel
        .split('/')
        .map(id_segment)
        .filter(|s| !s.is_empty())
        .collect();
    if segs.last().is_some_and(|s| s == "index") {
        segs.pop();
    }
    match segs.len() {
        0 => "runbooks.index".to_owned(),
        1 => format!("runbooks.{}", segs[0]),
        _ => segs.join("."),
    }
}

/// The catalog id a `runbook_url` points at: an explicit mapping, the path after
/// `--runbook-url-base`, else the longest trailing part of the URL path that is a catalog id.
pub fn resolve_url(
    url: &str,
    base: Option<&str>,
    ids: &BTreeSet<String>,
    explicit: &BTreeMap<String, String>,
) -> Option<String> {
    if let Some(id) = explicit.get(url) {
        return Some(id.clone());
    }
    let clean = url.split(['#', '?']).next().unwrap_or(url);
    if let Some(b) = base {
        let rest = clean.strip_prefix(b)?;
        let id = path_id(rest);
        return ids.contains(&id).then_some(id);
    }
    let path = match clean.split_once("://") {
        Some((_, rest)) => rest.split_once('/').map_or("", |(_, p)| p),
        None => clean,
    };
    let rel = path
        .trim_matches('/')
        .trim_end_matches(".md")
        .trim_end_matches(".html");
    let segs: Vec<String> = rel
        .split('/')
        .map(id_segment)
        .filter(|s| !s.is_empty())
        .collect();
    for k in (2..=segs.len()).rev() {
        let id = segs[segs.len() - k..].join(".");
        if ids.contains(&id) {
            return Some(id);
        }
    }
    // A bare page name (`https://wiki/watchdog`) is a top-level page.
    if segs.len() != 1 {
        return None;
    }
    let last = path_id(&segs[0]);
    ids.contains(&last).then_some(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_resolve_to_ids() {
        let ids: BTreeSet<String> = ["kubernetes.kubepodcrashlooping", "runbooks.watchdog"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let none = BTreeMap::new();
        let u = "https://runbooks.prometheus-operator.dev/runbooks/kubernetes/kubepodcrashlooping";
        assert_eq!(
            resolve_url(u, None, &ids, &none).as_deref(),
            Some("kubernetes.kubepodcrashlooping")
        );
        assert_eq!(
            resolve_url(
                u,
                Some("https://runbooks.prometheus-operator.dev/runbooks/"),
                &ids,
                &none
            )
            .as_deref(),
            Some("kubernetes.kubepodcrashlooping")
        );
        assert_eq!(
            resolve_url(
                "https://x.dev/runbooks/general/watchdog/",
                None,
                &ids,
                &none
            ),
            None
        );
        assert_eq!(
            resolve_url("https://x.dev/watchdog", None, &ids, &none).as_deref(),
            Some("runbooks.watchdog")
        );
        assert_eq!(
            path_id("kubernetes/KubePodCrashLooping.md"),
            "kubernetes.kubepodcrashlooping"
        );
        assert_eq!(path_id("general/_index.md"), "runbooks.general");
    }
}
