//! Dashboards and saved queries: datasources resolve, variables are declared, queries parse.

use std::collections::{HashMap, HashSet};

use crate::diag::Finding;
use crate::load::{Model, index_by};
use crate::model::{DatasourceType, Panel};

pub(super) fn check(m: &Model, out: &mut Vec<Finding>) {
    let mut ds: HashMap<&str, DatasourceType> = HashMap::new();
    for d in &m.datasources {
        for s in &d.spec.datasources {
            ds.insert(&s.uid, s.kind);
        }
    }
    index_by(&m.saved_queries, |q| &q.id, "/id", "saved query", out);
    index_by(&m.dashboards, |d| &d.uid, "/uid", "dashboard", out);

    for q in &m.saved_queries {
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
        let used = placeholders(&q.spec.template);
        for u in &used {
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
            if !used.iter().any(|u| u == &v.name) {
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
            Some(DatasourceType::Prometheus) => promql_parser::parser::parse(&filled).err(),
            Some(DatasourceType::Loki) => logql_shape(&filled).err(),
            None => None,
        };
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
                if dref.uid.starts_with('$') || dref.uid.starts_with("-- ") {
                    continue;
                }
                let kind = ds.get(dref.uid.as_str()).copied();
                if kind.is_none() {
                    let sub = if t.datasource.is_some() {
                        format!("{tptr}/datasource/uid")
                    } else {
                        format!("{ptr}/datasource/uid")
                    };
                    let (p, pos) = d.at(&sub);
                    out.push(
                        Finding::new(
                            "ref.datasource",
                            p,
                            pos,
                            format!(
                                "panel `{}` uses unknown datasource `{}`",
                                panel.title, dref.uid
                            ),
                        )
                        .help("declare it in dashboards/datasources.toml or use a declared uid"),
                    );
                    continue;
                }
                if kind == Some(DatasourceType::Prometheus)
                    && let Some(expr) = &t.expr
                    && let Err(e) = promql_parser::parser::parse(&grafana_fill(expr))
                {
                    let (p, pos) = d.at(&format!("{tptr}/expr"));
                    out.push(
                                Finding::new(
                                    "dashboard.query",
                                    p,
                                    pos,
                                    format!("panel `{}`: query is not valid PromQL: {e}", panel.title),
                                )
                                .help("fix the expression; Grafana variables are allowed inside label values and range brackets"),
                            );
                }
            }
        }
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

/// A shape check for LogQL (no full parser): a stream selector in braces, balanced quotes.
fn logql_shape(q: &str) -> Result<(), String> {
    let t = q.trim();
    let selector_start = t.find('{').ok_or("no stream selector `{...}`")?;
    let prefix = &t[..selector_start];
    if !prefix.trim().is_empty() && !prefix.contains('(') {
        return Err(format!(
            "unexpected `{}` before the stream selector",
            prefix.trim()
        ));
    }
    let mut depth = 0i32;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for c in t.chars() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' && q == '"' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '"' | '`' => quote = Some(c),
            '{' | '(' | '[' => depth += 1,
            '}' | ')' | ']' => {
                depth -= 1;
                if depth < 0 {
                    return Err("unbalanced closing bracket".into());
                }
            }
            _ => {}
        }
    }
    if quote.is_some() {
        return Err("unterminated string".into());
    }
    if depth != 0 {
        return Err("unbalanced brackets".into());
    }
    Ok(())
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

    #[test]
    fn logql_shapes() {
        assert!(logql_shape(r#"{service="gateway"} | json | correlation_id="abc""#).is_ok());
        assert!(
            logql_shape(r#"sum by (service) (count_over_time({service="x"} |= "error" [5m]))"#)
                .is_ok()
        );
        assert!(logql_shape(r#"{service="gateway" | json"#).is_err());
        assert!(logql_shape("service=gateway").is_err());
    }
}
