//! Dashboards and saved queries: datasources resolve, variables are declared, queries parse.

use std::collections::{HashMap, HashSet};

use super::logql;
use crate::diag::Finding;
use crate::load::{Doc, IdMap, Model, index_by};
use crate::model::{Dashboard, DatasourceType, Panel, SavedQuery, SavedQueryRef, Target};

pub(super) fn check(m: &Model, out: &mut Vec<Finding>) {
    let mut ds: HashMap<&str, DatasourceType> = HashMap::new();
    for d in &m.datasources {
        for s in &d.spec.datasources {
            ds.insert(&s.uid, s.kind);
        }
    }
    let queries = index_by(&m.saved_queries, |q| &q.id, "/id", "saved query", out);
    // Saved queries whose own template is wrong: panels using them are not reported again.
    let mut broken: HashSet<&str> = HashSet::new();
    let mut used: HashSet<&str> = m
        .catalogs
        .iter()
        .flat_map(|c| c.spec.runbooks.iter())
        .flat_map(|e| e.saved_queries.iter().map(String::as_str))
        .collect();
    index_by(&m.dashboards, |d| &d.uid, "/uid", "dashboard", out);

    for q in &m.saved_queries {
        let findings_before = out.len();
        let kind = ds.get(q.spec.datasource.as_str()).copied();
        if kind.is_none() {
            let (p, pos) = q.at("/datasource");
            out.push(
                Finding::new(
                    "ref.datasource",
                    p,
                    pos,
                    format!("unknown datasource `{}`", q.spec.datasource),
                )
                .help("declare it in dashboards/datasources.toml or use a declared uid"),
            );
        }
        let declared: HashMap<&str, &str> = q
            .spec
            .variables
            .iter()
            .map(|v| (v.name.as_str(), v.example.as_str()))
            .collect();
        let in_template = placeholders(&q.spec.template);
        for u in &in_template {
            if !declared.contains_key(u.as_str()) {
                let (p, pos) = q.at("/template");
                out.push(
                    Finding::new(
                        "query.template",
                        p,
                        pos,
                        format!("placeholder `${{{u}}}` is not declared"),
                    )
                    .help("declare it under [[variables]] with a description and an example"),
                );
            }
        }
        for (i, v) in q.spec.variables.iter().enumerate() {
            if !in_template.iter().any(|u| u == &v.name) {
                let (p, pos) = q.at(&format!("/variables/{i}/name"));
                out.push(
                    Finding::new(
                        "query.template",
                        p,
                        pos,
                        format!("variable `{}` is declared but never used", v.name),
                    )
                    .help("remove it or use it in the template"),
                );
            }
        }
        let filled = fill(&q.spec.template, &declared);
        let err = match kind {
            Some(DatasourceType::Prometheus) => super::promql::parse(&filled).err(),
            Some(DatasourceType::Loki) => logql::check(&filled).err().map(|e| e.to_string()),
            None => None,
        };
        if err.is_some() || out.len() > findings_before {
            broken.insert(q.spec.id.as_str());
        }
        if let Some(e) = err {
            let (p, pos) = q.at("/template");
            out.push(
                Finding::new(
                    "query.template",
                    p,
                    pos,
                    format!("with its examples filled in, the query does not parse: {e}"),
                )
                .help("fix the query; try it in Grafana Explore with the example values"),
            );
        }
    }

    for d in &m.dashboards {
        let mut ids = HashSet::new();
        let mut stack: Vec<(String, &Panel)> = d
            .spec
            .panels
            .iter()
            .enumerate()
            .map(|(i, p)| (format!("/panels/{i}"), p))
            .collect();
        while let Some((ptr, panel)) = stack.pop() {
            if !ids.insert(panel.id) {
                let (p, pos) = d.at(&format!("{ptr}/id"));
                out.push(
                    Finding::new(
                        "id.duplicate",
                        p,
                        pos,
                        format!("panel id {} is used twice in this dashboard", panel.id),
                    )
                    .help("give every panel its own id"),
                );
            }
            for (i, child) in panel.panels.iter().enumerate() {
                stack.push((format!("{ptr}/panels/{i}"), child));
            }
            let panel_ds = panel.datasource.as_ref();
            for (i, t) in panel.targets.iter().enumerate() {
                let tptr = format!("{ptr}/targets/{i}");
                let Some(dref) = t.datasource.as_ref().or(panel_ds) else {
                    continue;
                };
                if dref.uid.starts_with("-- ") {
                    continue;
                }
                // A datasource variable (`${DS_PROMETHEUS}`, `$datasource`) stands for the
                // declared datasource of its type: the queries are checked against that type.
                let variable = ds_variable(&dref.uid);
                let kind = match variable {
                    Some(var) => variable_type(&d.spec, var, &dref.kind)
                        .and_then(|t| ds.values().copied().find(|k| type_name(*k) == t)),
                    None => ds.get(dref.uid.as_str()).copied(),
                };
                if kind.is_none() {
                    let sub = if t.datasource.is_some() {
                        format!("{tptr}/datasource/uid")
                    } else {
                        format!("{ptr}/datasource/uid")
                    };
                    let (p, pos) = d.at(&sub);
                    let (what, help) = if variable.is_some() {
                        (
                            format!(
                                "panel `{}` uses datasource variable `{}`, which resolves to no datasource declared in dashboards/datasources.toml",
                                panel.title, dref.uid
                            ),
                            "declare a datasource of the variable's type (prometheus or loki), or run `vakt import dashboards` to pin the panel to a declared uid",
                        )
                    } else {
                        (
                            format!(
                                "panel `{}` uses unknown datasource `{}`",
                                panel.title, dref.uid
                            ),
                            "declare it in dashboards/datasources.toml or use a declared uid",
                        )
                    };
                    out.push(Finding::new("ref.datasource", p, pos, what).help(help));
                    continue;
                }
                if let Some(expr) = &t.expr {
                    let filled = grafana_fill(expr);
                    let err = match kind {
                        Some(DatasourceType::Prometheus) => super::promql::parse(&filled)
                            .err()
                            .map(|e| format!("not valid PromQL: {e}")),
                        Some(DatasourceType::Loki) => logql::check(&filled)
                            .err()
                            .map(|e| format!("not valid LogQL: {e}")),
                        None => None,
                    };
                    if let Some(e) = err {
                        let (p, pos) = d.at(&format!("{tptr}/expr"));
                        out.push(
                            Finding::new(
                                "dashboard.query",
                                p,
                                pos,
                                format!("panel `{}`: query is {e}", panel.title),
                            )
                            .help("fix the expression; Grafana variables are allowed inside label values and range brackets"),
                        );
                    }
                }
                if let Some(r) = &t.saved_query
                    && let Some(kind) = kind
                {
                    used.insert(r.id.as_str());
                    let known = Known {
                        queries: &queries,
                        broken: &broken,
                        ds: &ds,
                    };
                    check_saved_ref(d, &panel.title, &tptr, t, r, kind, &known, out);
                }
            }
        }
    }

    // A saved query nobody links to is dead weight an operator never finds.
    for q in &m.saved_queries {
        if !used.contains(q.spec.id.as_str()) {
            let (p, pos) = q.at("/id");
            out.push(
                Finding::new(
                    "query.unused",
                    p,
                    pos,
                    format!(
                        "saved query `{}` is used by no runbook and no dashboard",
                        q.spec.id
                    ),
                )
                .help("list it under saved_queries of a runbook catalog entry, reference it from a panel target (\"savedQuery\"), or delete it"),
            );
        }
    }
}

/// What a panel's saved query reference is checked against.
struct Known<'a> {
    queries: &'a IdMap<&'a str, &'a Doc<SavedQuery>>,
    /// Saved queries with a finding of their own.
    broken: &'a HashSet<&'a str>,
    ds: &'a HashMap<&'a str, DatasourceType>,
}

/// Checks a panel target's `savedQuery` against the saved query it names.
#[allow(clippy::too_many_arguments)]
fn check_saved_ref(
    d: &Doc<Dashboard>,
    title: &str,
    tptr: &str,
    t: &Target,
    r: &SavedQueryRef,
    kind: DatasourceType,
    known: &Known<'_>,
    out: &mut Vec<Finding>,
) {
    let Known {
        queries,
        broken,
        ds,
    } = known;
    let Some(q) = queries.get(r.id.as_str()) else {
        let (p, pos) = d.at(&format!("{tptr}/savedQuery/id"));
        out.push(
            Finding::new(
                "ref.query",
                p,
                pos,
                format!("panel `{title}` refers to unknown saved query `{}`", r.id),
            )
            .help("name a query id from dashboards/queries/"),
        );
        return;
    };
    if broken.contains(r.id.as_str()) {
        return;
    }
    let q = &q.spec;
    let mismatch = |ptr: &str, message: String, help: String| {
        let (p, pos) = d.at(&format!("{tptr}{ptr}"));
        Finding::new("dashboard.saved-query", p, pos, message).help(help)
    };
    if let Some(qkind) = ds.get(q.datasource.as_str())
        && *qkind != kind
    {
        out.push(mismatch(
            "/savedQuery/id",
            format!(
                "panel `{title}` queries a {} datasource, but saved query `{}` runs on `{}` ({})",
                kind_name(kind),
                q.id,
                q.datasource,
                kind_name(*qkind)
            ),
            "use a panel datasource of the saved query's type, or another saved query".into(),
        ));
        return;
    }
    let mut bad = false;
    for v in &q.variables {
        if !r.variables.contains_key(&v.name) {
            bad = true;
            out.push(mismatch(
                "/savedQuery",
                format!(
                    "panel `{title}` binds no value for variable `{}` of saved query `{}`",
                    v.name, q.id
                ),
                format!(
                    "add \"{}\": \"$<dashboard variable>\" under savedQuery.variables ({})",
                    v.name, v.description
                ),
            ));
        }
    }
    for name in r.variables.keys() {
        if !q.variables.iter().any(|v| &v.name == name) {
            bad = true;
            out.push(mismatch(
                &format!(
                    "/savedQuery/variables/{}",
                    crate::parse::escape_segment(name)
                ),
                format!("saved query `{}` has no variable `{name}`", q.id),
                format!(
                    "remove it; the query's variables are: {}",
                    q.variables
                        .iter()
                        .map(|v| v.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
    }
    if bad {
        return;
    }
    let bindings: HashMap<&str, &str> = r
        .variables
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let expected = fill(&q.template, &bindings);
    if t.expr.as_deref() != Some(expected.as_str()) {
        out.push(mismatch(
            if t.expr.is_some() { "/expr" } else { "" },
            format!(
                "panel `{title}`: the query is not saved query `{}` with its variables filled in",
                q.id
            ),
            format!("set \"expr\" to {expected:?} (or change the saved query, and every panel that uses it)"),
        ));
    }
}

fn kind_name(k: DatasourceType) -> &'static str {
    match k {
        DatasourceType::Prometheus => "Prometheus",
        DatasourceType::Loki => "Loki",
    }
}

/// `${name}` placeholders of a saved query template, in order of first use.
pub fn placeholders(template: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut rest = template;
    while let Some(i) = rest.find("${") {
        let after = &rest[i + 2..];
        match after.find('}') {
            Some(j) => {
                let name = after[..j].to_owned();
                if !out.contains(&name) {
                    out.push(name);
                }
                rest = &after[j + 1..];
            }
            None => break,
        }
    }
    out
}

/// Replaces `${name}` with the given values.
pub fn fill(template: &str, values: &HashMap<&str, &str>) -> String {
    let mut s = template.to_owned();
    for (k, v) in values {
        s = s.replace(&format!("${{{k}}}"), v);
    }
    s
}

/// Substitutes Grafana's variables so the expression can be parsed as PromQL:
/// interval variables become `5m`; other variables become `x` inside strings and `1` elsewhere.
pub fn grafana_fill(expr: &str) -> String {
    let mut out = String::with_capacity(expr.len());
    let chars: Vec<char> = expr.chars().collect();
    let mut i = 0;
    let mut quote: Option<char> = None;
    while i < chars.len() {
        let c = chars[i];
        if let Some(q) = quote {
            if c == '\\' && i + 1 < chars.len() {
                out.push(c);
                out.push(chars[i + 1]);
                i += 2;
                continue;
            }
            if c == q {
                quote = None;
            }
        } else if c == '"' || c == '\'' || c == '`' {
            quote = Some(c);
        }
        if c == '$' {
            let (name, len) = if chars.get(i + 1) == Some(&'{') {
                let end = chars[i + 2..]
                    .iter()
                    .position(|&c| c == '}')
                    .map_or(chars.len(), |p| i + 2 + p);
                (
                    chars[i + 2..end.min(chars.len())]
                        .iter()
                        .collect::<String>(),
                    end + 1 - i,
                )
            } else {
                let n: String = chars[i + 1..]
                    .iter()
                    .take_while(|c| c.is_alphanumeric() || **c == '_')
                    .collect();
                let l = n.chars().count() + 1;
                (n, l)
            };
            let name = name.split(':').next().unwrap_or("").to_owned();
            let interval = name.starts_with("__")
                && (name.contains("interval") || name.contains("range"))
                || name.contains("window")
                || name.contains("interval");
            let prev = out.trim_end().chars().last();
            let replacement = if quote.is_some() {
                "x"
            } else if interval || prev == Some('[') || prev == Some(':') {
                "5m"
            } else {
                "1"
            };
            out.push_str(replacement);
            i += len.max(1);
            continue;
        }
        out.push(c);
        i += 1;
    }
    out
}

/// The variable name of a datasource reference: `${DS_PROMETHEUS}`, `${ds:raw}`, `$datasource`,
/// `[[ds]]`.
fn ds_variable(uid: &str) -> Option<&str> {
    let u = uid.trim();
    if let Some(r) = u.strip_prefix("${") {
        return r
            .strip_suffix('}')
            .map(|n| n.split(':').next().unwrap_or(n));
    }
    if let Some(r) = u.strip_prefix("[[") {
        return r.strip_suffix("]]");
    }
    u.strip_prefix('$')
}

/// The datasource type a variable stands for: a templating variable of type `datasource`
/// (its `query` is the type), an export input (`__inputs[].pluginId`), else the type the
/// reference itself names.
fn variable_type<'a>(d: &'a Dashboard, var: &str, ref_kind: &'a str) -> Option<&'a str> {
    let from_templating = d
        .templating
        .iter()
        .flat_map(|t| t.list.iter())
        .find_map(|v| {
            (v.get("type")?.as_str()? == "datasource" && v.get("name")?.as_str()? == var)
                .then(|| v.get("query")?.as_str())
                .flatten()
        });
    let from_inputs = || {
        d.other.get("__inputs")?.as_array()?.iter().find_map(|i| {
            (i.get("name")?.as_str()? == var)
                .then(|| i.get("pluginId")?.as_str())
                .flatten()
        })
    };
    from_templating
        .or_else(from_inputs)
        .or((!ref_kind.is_empty()).then_some(ref_kind))
}

fn type_name(k: DatasourceType) -> &'static str {
    match k {
        DatasourceType::Prometheus => "prometheus",
        DatasourceType::Loki => "loki",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grafana_variables_become_parseable() {
        let e = r#"sum by (service) (rate(http_server_requests_total{env="$env",service=~"${service:regex}"}[$__rate_interval]))"#;
        let f = grafana_fill(e);
        assert!(promql_parser::parser::parse(&f).is_ok(), "{f}");
        assert!(promql_parser::parser::parse(&grafana_fill("topk($k, up)")).is_ok());
    }
}
