//! What `vakt render` would refuse or get wrong: runbook URLs that cannot be built, nodes with
//! no usable metrics endpoint, rules Prometheus rejects once rendered, two alert files that
//! render to the same rule file, datasources Grafana would get without a URL.

use std::collections::BTreeMap;

use crate::diag::{Finding, Severity};
use crate::load::Model;

pub(crate) fn check(m: &Model, out: &mut Vec<Finding>) {
    runbook_urls(m, out);
    for n in &m.nodes {
        let url = metrics_url(&n.spec);
        if let Err(why) = parse_http_url(&url) {
            let (field, how) = match n.spec.metrics_url {
                Some(_) => ("/metrics_url", ""),
                None => ("/admin_url", " (derived from admin_url + /metrics)"),
            };
            let (p, pos) = n.at(field);
            out.push(
                Finding::new(
                    "render.metrics-url",
                    p,
                    pos,
                    format!("node `{}`: metrics URL `{url}`{how} {why}", n.spec.id),
                )
                .help("set `metrics_url` to the node's http(s) metrics endpoint: host[:port] and path, no credentials, query or fragment"),
            );
        }
    }
    let mut outputs: BTreeMap<String, &str> = BTreeMap::new();
    for f in &m.alert_rules {
        let name = rule_file_name(f.path());
        if let Some(first) = outputs.get(&name) {
            let (p, pos) = f.at("");
            out.push(
                Finding::new(
                    "render.collision",
                    p,
                    pos,
                    format!("renders to {name}, like {first}"),
                )
                .help("rename one of the two files; rule files are rendered by file name"),
            );
        } else {
            outputs.insert(name, f.path());
        }
        for (g, group) in f.spec.groups.iter().enumerate() {
            for (r, rule) in group.rules.iter().enumerate() {
                let ptr = format!("/groups/{g}/rules/{r}");
                let mut bad = |field: &str, key: bool, message: String, help: &str| {
                    let ptr = format!("{ptr}{field}");
                    let (p, pos) = if key { f.at_key(&ptr) } else { f.at(&ptr) };
                    out.push(Finding::new("render.rule", p, pos, message).help(help));
                };
                let name = rule
                    .alert
                    .as_deref()
                    .or(rule.record.as_deref())
                    .unwrap_or("");
                for k in rule.labels.keys() {
                    if !is_label_name(k) {
                        bad(
                            &format!("/labels/{}", esc(k)),
                            true,
                            format!("`{name}`: `{k}` is not a valid label name"),
                            "label names match [a-zA-Z_][a-zA-Z0-9_]*; Prometheus rejects the file otherwise",
                        );
                    }
                }
                for k in rule.annotations.keys() {
                    if !is_label_name(k) {
                        bad(
                            &format!("/annotations/{}", esc(k)),
                            true,
                            format!("`{name}`: `{k}` is not a valid annotation name"),
                            "annotation names match [a-zA-Z_][a-zA-Z0-9_]*; Prometheus rejects the file otherwise",
                        );
                    }
                }
                if rule.alert.is_some() && rule.labels.contains_key(ENV_LABEL) {
                    bad(
                        &format!("/labels/{ENV_LABEL}"),
                        true,
                        format!("alert `{name}` sets the `{ENV_LABEL}` label"),
                        "remove it: `vakt render` sets `env` to the environment it renders",
                    );
                }
                if let Some(rec) = &rule.record {
                    if !is_metric_name(rec) {
                        bad(
                            "/record",
                            false,
                            format!("`{rec}` is not a valid metric name"),
                            "recording rule names match [a-zA-Z_:][a-zA-Z0-9_:]*",
                        );
                    }
                    for (field, set) in [
                        ("for", rule.for_.is_some()),
                        ("keep_firing_for", rule.keep_firing_for.is_some()),
                        ("annotations", !rule.annotations.is_empty()),
                    ] {
                        if set {
                            bad(
                                &format!("/{field}"),
                                true,
                                format!("recording rule `{rec}` has `{field}`"),
                                "only alerting rules take `for`, `keep_firing_for` and `annotations`; Prometheus rejects the file otherwise",
                            );
                        }
                    }
                }
            }
        }
    }
    for d in &m.datasources {
        for (i, s) in d.spec.datasources.iter().enumerate() {
            match &s.url {
                None => {
                    let (p, pos) = d.at(&format!("/datasources/{i}/uid"));
                    out.push(
                        Finding::new(
                            "render.datasource-url",
                            p,
                            pos,
                            format!("datasource `{}` has no `url`; Grafana provisioning would create it without one", s.uid),
                        )
                        .help("set `url` to where Grafana reaches the datasource, e.g. http://victoriametrics:8428"),
                    );
                }
                Some(u) => {
                    if let Err(why) = parse_http_url(u) {
                        let (p, pos) = d.at(&format!("/datasources/{i}/url"));
                        out.push(
                            Finding::new(
                                "render.datasource-url",
                                p,
                                pos,
                                format!("datasource `{}`: url `{u}` {why}", s.uid),
                            )
                            .severity(Severity::Error)
                            .help("set `url` to an http(s) URL Grafana can reach"),
                        );
                    }
                }
            }
        }
    }
}

/// `project.site_url` must give runbook URLs when some alert names a runbook.
fn runbook_urls(m: &Model, out: &mut Vec<Finding>) {
    let Some(man) = &m.manifest else { return };
    let with_runbook = m
        .alert_rules
        .iter()
        .flat_map(|f| f.spec.groups.iter())
        .flat_map(|g| g.rules.iter())
        .filter(|r| r.alert.is_some() && r.annotations.contains_key("runbook_id"))
        .count();
    if with_runbook == 0 {
        return;
    }
    if let Err(why) = runbook_base(&man.spec.project.site_url) {
        let (p, pos) = man.at("/project/site_url");
        out.push(
            Finding::new(
                "render.runbook-url",
                p,
                pos,
                format!(
                    "project.site_url `{}` {why}, so the runbook_url of {with_runbook} alert(s) cannot be built",
                    man.spec.project.site_url
                ),
            )
            .help("set project.site_url to the operator site's absolute http(s) URL; runbook_url is <site_url>/runbooks/<runbook_id>/"),
        );
    }
}

/// Escapes a JSON pointer segment.
fn esc(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

// Names and URLs as the rendered files need them (shared with `crate::render`).

/// `alerts/<name>.yaml` (or `.yml`, or a file bound elsewhere) → `rules/<name>.yaml`.
pub(crate) fn rule_file_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file
        .strip_suffix(".yaml")
        .or_else(|| file.strip_suffix(".yml"))
        .unwrap_or(file);
    format!("rules/{stem}.yaml")
}

/// The runbook URL of `id` under the site's base URL (the site's page is `runbooks/<id>/`).
pub fn runbook_url(base: &str, id: &str) -> String {
    format!("{base}/runbooks/{id}/")
}

/// `project.site_url` without a trailing slash, or why runbook URLs cannot be built from it.
pub(crate) fn runbook_base(site_url: &str) -> Result<String, String> {
    parse_http_url(site_url)?;
    if site_url.contains(['?', '#']) {
        return Err("has a query or fragment".into());
    }
    Ok(site_url.trim_end_matches('/').to_owned())
}

/// An http(s) URL split the way a scrape target needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HttpUrl {
    pub scheme: String,
    /// `host[:port]`, as written.
    pub authority: String,
    /// The path, `/` when empty.
    pub path: String,
}

/// Parses an absolute `http://` or `https://` URL with a host, no credentials, no query and no
/// fragment. The error says what is wrong, for a finding.
pub(crate) fn parse_http_url(s: &str) -> Result<HttpUrl, String> {
    if s.is_empty() {
        return Err("is empty".into());
    }
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("contains whitespace or control characters".into());
    }
    let Some((scheme, rest)) = s.split_once("://") else {
        return Err("is not an absolute URL (`http://host[:port]/path`)".into());
    };
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return Err(format!("has scheme `{scheme}`, not http or https"));
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if authority.is_empty() {
        return Err("has no host".into());
    }
    if authority.contains('@') {
        return Err("carries credentials (`user@host`); secrets never go in the repo".into());
    }
    if tail.contains(['?', '#']) {
        return Err("has a query string or fragment".into());
    }
    // host, [v6]:port or host:port
    let port = if let Some(r) = authority.strip_prefix('[') {
        match r.split_once(']') {
            Some((h, p)) if !h.is_empty() => match p {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or("has a malformed IPv6 host")?),
            },
            _ => return Err("has a malformed IPv6 host".into()),
        }
    } else {
        match authority.split_once(':') {
            Some(("", _)) => return Err("has no host".into()),
            Some((_, p)) => Some(p),
            None => None,
        }
    };
    if let Some(p) = port
        && !matches!(p.parse::<u32>(), Ok(1..=65535))
    {
        return Err(format!("has port `{p}`, not a number from 1 to 65535"));
    }
    Ok(HttpUrl {
        scheme,
        authority: authority.to_owned(),
        path: if tail.is_empty() { "/" } else { tail }.to_owned(),
    })
}

/// A node's metrics URL: `metrics_url`, else `<admin_url>/metrics`.
pub fn metrics_url(node: &crate::model::Node) -> String {
    match &node.metrics_url {
        Some(u) => u.clone(),
        None => format!("{}/metrics", node.admin_url.trim_end_matches('/')),
    }
}

/// A Prometheus label name (also what annotation names must be).
pub(crate) fn is_label_name(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
}

/// A Prometheus metric name (what a recording rule's `record` must be).
pub(crate) fn is_metric_name(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || f == ':')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_' || x == ':')
}

/// The label `vakt render` sets on every alert.
pub const ENV_LABEL: &str = "env";
