//! `vakt import dashboards DIR`: Grafana JSON as exported (`__inputs`, `__requires`,
//! datasource variables) -> `dashboards/<uid>.json`, every datasource reference rewritten to the
//! repo's datasource of the same type (`dashboards/datasources.toml`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::{Map, Value, json};

use super::walk::{read_text, walk};
use super::{DashboardLine, Defaulted, ImportOptions, MAX_FILE_BYTES, Plan, Problem};
use crate::source::RepoFiles;

/// Export-only keys removed from the dashboard.
const EXPORT_KEYS: &[&str] = &[
    "__inputs",
    "__requires",
    "__elements",
    "id",
    "version",
    "iteration",
];

/// Plans the import of the Grafana exports under `dir`.
pub fn plan(dir: &Path, current: &RepoFiles, opts: &ImportOptions) -> Plan {
    let mut plan = Plan::default();
    let repo_ds = repo_datasources(current);
    let mut uids: BTreeMap<String, String> = BTreeMap::new();
    for f in walk(dir, &["json"], &mut plan.report.problems) {
        let problems = &mut plan.report.problems;
        let Some(text) = read_text(&f, MAX_FILE_BYTES, problems) else {
            continue;
        };
        let v = match crate::parse::parse_value(&f.shown, crate::parse::Format::Json, &text) {
            Ok(v) => v,
            Err(e) => {
                problems.push(Problem {
                    file: f.shown.clone(),
                    line: e.line,
                    message: format!("is not JSON: {}; not imported", e.message),
                    help: "export the dashboard again from Grafana (Share > Export > Save to file)"
                        .into(),
                });
                continue;
            }
        };
        // The API format wraps the model: {"dashboard": {...}, "meta": {...}}.
        let mut d = match v {
            Value::Object(mut o)
                if o.get("dashboard").is_some_and(Value::is_object)
                    && !o.contains_key("panels") =>
            {
                o.remove("dashboard").unwrap_or_default()
            }
            other => other,
        };
        let Some(obj) = d.as_object_mut() else {
            problems.push(Problem::new(
                &f.shown,
                "is not a dashboard object; not imported",
                "import Grafana dashboard JSON only",
            ));
            continue;
        };
        if !obj.contains_key("panels") && obj.contains_key("rows") {
            problems.push(Problem::new(
                &f.shown,
                "uses the pre-5.0 `rows` layout; not imported",
                "open it in a current Grafana, save, and export it again",
            ));
            continue;
        }
        if !obj.get("panels").is_some_and(Value::is_array) {
            problems.push(Problem::new(
                &f.shown,
                "has no `panels` list; not a dashboard, not imported",
                "import Grafana dashboard JSON only",
            ));
            continue;
        }
        let title = obj
            .get("title")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let title = if title.is_empty() {
            f.rel.trim_end_matches(".json").to_owned()
        } else {
            title
        };
        obj.insert("title".into(), Value::String(title.clone()));
        // Variables of type datasource, and export inputs: name -> datasource type.
        let mut vars: BTreeMap<String, String> = BTreeMap::new();
        for i in obj
            .get("__inputs")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if i.get("type").and_then(Value::as_str) == Some("datasource")
                && let (Some(n), Some(t)) = (
                    i.get("name").and_then(Value::as_str),
                    i.get("pluginId").and_then(Value::as_str),
                )
            {
                vars.insert(n.to_owned(), t.to_owned());
            }
        }
        if let Some(list) = obj
            .get_mut("templating")
            .and_then(|t| t.get_mut("list"))
            .and_then(Value::as_array_mut)
        {
            list.retain(|v| {
                if v.get("type").and_then(Value::as_str) == Some("datasource") {
                    if let (Some(n), Some(t)) = (
                        v.get("name").and_then(Value::as_str),
                        v.get("query").and_then(Value::as_str),
                    ) {
                        vars.insert(n.to_owned(), t.to_owned());
                    }
                    false
                } else {
                    true
                }
            });
        }
        for k in EXPORT_KEYS {
            obj.remove(*k);
        }
        let uid = match obj.get("uid").and_then(Value::as_str) {
            Some(u) if valid_uid(u) => u.to_owned(),
            other => {
                let u = slug(&title);
                plan.report.defaulted.push(Defaulted {
                    subject: u.clone(),
                    field: "uid".into(),
                    value: u.clone(),
                    why: format!("the export's uid {} is not a valid uid ([a-zA-Z0-9_-], at most 40): derived from the title", other.map_or("(none)".to_owned(), |s| format!("`{s}`"))),
                });
                u
            }
        };
        obj.insert("uid".into(), Value::String(uid.clone()));
        if !obj.get("schemaVersion").is_some_and(Value::is_u64) {
            obj.insert("schemaVersion".into(), json!(39));
            plan.report.defaulted.push(Defaulted {
                subject: uid.clone(),
                field: "schemaVersion".into(),
                value: "39".into(),
                why: "the export has none".into(),
            });
        }
        if let Some(first) = uids.get(&uid) {
            problems.push(Problem::new(
                &f.shown,
                format!("dashboard uid `{uid}` is also the uid of {first}; not imported"),
                "give one of them another uid in Grafana and export again",
            ));
            continue;
        }
        uids.insert(uid.clone(), f.shown.clone());

        // Rewrite datasource references.
        let mut rewritten: BTreeSet<(String, String)> = BTreeSet::new();
        let mut unresolved: BTreeSet<String> = BTreeSet::new();
        let ctx = Resolve {
            vars: &vars,
            repo: &repo_ds,
            mapping: &opts.mapping.datasources,
        };
        rewrite(&mut d, &ctx, &mut rewritten, &mut unresolved, 0);
        for u in &unresolved {
            plan.report.problems.push(Problem::new(
                &f.shown,
                format!("datasource `{u}` has no counterpart of its type in dashboards/datasources.toml; left as it is"),
                "declare a datasource of that type in dashboards/datasources.toml (or map the type in [datasources] of --mapping) and import again",
            ));
        }
        // Panels need ids.
        if let Some(panels) = d.get_mut("panels").and_then(Value::as_array_mut) {
            let mut used = BTreeSet::new();
            collect_ids(panels, &mut used);
            let mut next = used.iter().max().copied().unwrap_or(0) + 1;
            assign_ids(panels, &mut used, &mut next);
        }
        let path = format!("dashboards/{uid}.json");
        let text = serde_json::to_string_pretty(&d).unwrap_or_default() + "\n";
        plan.files.insert(path.clone(), text);
        plan.report.dashboards.push(DashboardLine {
            source: f.shown.clone(),
            uid,
            path,
            datasources: rewritten.into_iter().collect(),
        });
    }
    super::finish(&mut plan, current, opts);
    plan
}

/// Declared datasources: (uid, type, name).
fn repo_datasources(current: &RepoFiles) -> Vec<(String, String, String)> {
    let Some(f) = current
        .files
        .iter()
        .find(|f| f.path == "dashboards/datasources.toml")
    else {
        return Vec::new();
    };
    let Some(text) = f
        .content
        .as_ref()
        .ok()
        .and_then(|b| std::str::from_utf8(b).ok())
    else {
        return Vec::new();
    };
    let Ok(t) = toml::from_str::<crate::model::Datasources>(text) else {
        return Vec::new();
    };
    t.datasources
        .into_iter()
        .map(|d| {
            let kind = serde_json::to_value(d.kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            (d.uid, kind, d.name)
        })
        .collect()
}

struct Resolve<'a> {
    vars: &'a BTreeMap<String, String>,
    repo: &'a [(String, String, String)],
    mapping: &'a BTreeMap<String, String>,
}

impl Resolve<'_> {
    /// The repo datasource (uid, type) for a reference: a variable, a uid, or a name.
    fn target(&self, reference: &str, kind_hint: Option<&str>) -> Option<(String, String)> {
        let var = variable_name(reference);
        let kind = match var {
            Some(v) => self.vars.get(v).map(String::as_str).or(kind_hint),
            None => {
                if let Some((u, k, _)) = self
                    .repo
                    .iter()
                    .find(|(u, _, n)| u == reference || n == reference)
                {
                    return Some((u.clone(), k.clone()));
                }
                kind_hint
            }
        }?;
        let kind = if kind == "victoriametrics-datasource"
            || kind == "victoriametrics-metrics-datasource"
        {
            "prometheus"
        } else {
            kind
        };
        if let Some(u) = self.mapping.get(kind) {
            return Some((u.clone(), kind.to_owned()));
        }
        self.repo
            .iter()
            .find(|(_, k, _)| k == kind)
            .map(|(u, k, _)| (u.clone(), k.clone()))
    }
}

/// `${DS_PROMETHEUS}`, `$datasource`, `[[ds]]` -> the variable name.
pub fn variable_name(s: &str) -> Option<&str> {
    let s = s.trim();
    if let Some(r) = s.strip_prefix("${") {
        return r
            .strip_suffix('}')
            .map(|n| n.split(':').next().unwrap_or(n));
    }
    if let Some(r) = s.strip_prefix("[[") {
        return r.strip_suffix("]]");
    }
    s.strip_prefix('$')
}

fn rewrite(
    v: &mut Value,
    ctx: &Resolve,
    done: &mut BTreeSet<(String, String)>,
    unresolved: &mut BTreeSet<String>,
    depth: usize,
) {
    if depth > crate::parse::MAX_DEPTH {
        return;
    }
    match v {
        Value::Object(o) => {
            if let Some(ds) = o.get_mut("datasource") {
                resolve_ref(ds, ctx, done, unresolved);
            }
            for (k, child) in o.iter_mut() {
                if k != "datasource" {
                    rewrite(child, ctx, done, unresolved, depth + 1);
                }
            }
        }
        Value::Array(a) => {
            for child in a {
                rewrite(child, ctx, done, unresolved, depth + 1);
            }
        }
        _ => {}
    }
}

fn resolve_ref(
    ds: &mut Value,
    ctx: &Resolve,
    done: &mut BTreeSet<(String, String)>,
    unresolved: &mut BTreeSet<String>,
) {
    let (reference, hint) = match ds {
        Value::String(s) => (s.clone(), None),
        Value::Object(o) => match o.get("uid").and_then(Value::as_str) {
            Some(u) => (
                u.to_owned(),
                o.get("type").and_then(Value::as_str).map(str::to_owned),
            ),
            None => return,
        },
        _ => return,
    };
    if reference.starts_with("-- ")
        || reference.is_empty()
        || matches!(
            hint.as_deref(),
            Some("grafana" | "datasource" | "dashboard")
        )
    {
        return;
    }
    match ctx.target(&reference, hint.as_deref()) {
        Some((uid, kind)) => {
            if reference != uid {
                done.insert((reference, uid.clone()));
            }
            let mut m = Map::new();
            m.insert("type".into(), Value::String(kind));
            m.insert("uid".into(), Value::String(uid));
            *ds = Value::Object(m);
        }
        None => {
            unresolved.insert(reference);
        }
    }
}

fn collect_ids(panels: &[Value], used: &mut BTreeSet<u64>) {
    for p in panels {
        if let Some(id) = p.get("id").and_then(Value::as_u64) {
            used.insert(id);
        }
        if let Some(c) = p.get("panels").and_then(Value::as_array) {
            collect_ids(c, used);
        }
    }
}

fn assign_ids(panels: &mut [Value], used: &mut BTreeSet<u64>, next: &mut u64) {
    for p in panels {
        if let Some(o) = p.as_object_mut() {
            if !o.get("id").is_some_and(Value::is_u64) {
                o.insert("id".into(), json!(*next));
                used.insert(*next);
                *next += 1;
            }
            if !o.contains_key("title") {
                o.insert("title".into(), Value::String(String::new()));
            }
            if let Some(c) = o.get_mut("panels").and_then(Value::as_array_mut) {
                assign_ids(c, used, next);
            }
        }
    }
}

fn valid_uid(u: &str) -> bool {
    !u.is_empty()
        && u.len() <= 40
        && u.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn slug(title: &str) -> String {
    let s = super::id_segment(title);
    let s: String = s.chars().take(40).collect();
    let s = s.trim_end_matches(['-', '_']).to_owned();
    if s.is_empty() { "imported".into() } else { s }
}
