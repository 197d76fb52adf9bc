//! `render`: what the observability stack reads, from one environment's view of the ops repo at
//! one commit. Rule files for Prometheus / vmalert (with `runbook_url` built from `runbook_id`
//! and an `env` label on every alert), a Prometheus scrape configuration from the inventory,
//! and Grafana provisioning (datasources, a dashboard file provider, the dashboards).
//!
//! Rendering is pure ([`render_model`]: typed model → ordered map of relative path → bytes, no
//! clock, no file system) and deterministic: the same commit gives byte-identical output.
//! [`write_atomically`] puts it on disk through a hidden sibling directory and two renames.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::diag::{Finding, Severity};
use crate::load::{Model, build_view, parse_all};
use crate::model::{Datasources, Rule, RuleFile};
pub use crate::rules::render::{ENV_LABEL, metrics_url, runbook_url};
use crate::rules::render::{is_label_name, parse_http_url, rule_file_name, runbook_base};
use crate::source::RepoFiles;
use crate::validate::{Report, ValidateOptions, validate_parsed};

/// Marks a directory as written by `vakt render`, so a later render may replace it.
pub const MARKER: &str = ".vakt-render";

/// Upper bound of everything one render writes (the input is bounded per file; this bounds the
/// whole output, so a repo of many large dashboards cannot fill a disk by accident).
pub const MAX_OUTPUT_BYTES: u64 = 512 * 1024 * 1024;

/// Rules whose outcome depends on the date, not on the commit: `vakt validate` reports them in
/// pull requests, but they never stop a commit from being rendered (like `vakt apply`).
pub const TIME_DEPENDENT_RULES: &[&str] = &["runbook.review-expired", "runbook.review-due"];

/// What to render.
#[derive(Debug, Clone)]
pub struct RenderOptions {
    /// The environment whose view (base documents plus its overlays) is rendered.
    pub env: String,
    /// The directory Grafana's dashboard file provider reads, as Grafana sees it (usually
    /// `<out>/grafana/dashboards` made absolute, or the path it is mounted at in a container).
    pub dashboards_path: String,
}

/// How much was rendered.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RenderCounts {
    pub rule_files: usize,
    pub alerts: usize,
    pub recording_rules: usize,
    pub scrape_jobs: usize,
    pub scrape_targets: usize,
    pub datasources: usize,
    pub dashboards: usize,
}

/// The rendered output of one environment: relative path → content, in path order.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub env: String,
    pub files: BTreeMap<String, Vec<u8>>,
    pub counts: RenderCounts,
}

impl Rendered {
    /// Total bytes of every file.
    pub fn bytes(&self) -> u64 {
        self.files.values().map(|b| b.len() as u64).sum()
    }
}

/// Why nothing was rendered or written. The output directory is never half-written.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("the ops repo has no valid vakt.toml; run `vakt validate` for details")]
    NoManifest,
    #[error("environment `{env}` is not declared in vakt.toml (declared: {declared})")]
    UnknownEnv { env: String, declared: String },
    #[error(
        "refusing to render `{env}`: the commit has {} error finding(s); fix them (`vakt validate --env {env}`) and render again",
        .report.count(Severity::Error)
    )]
    Invalid { env: String, report: Box<Report> },
    #[error(
        "cannot render:\n{}",
        .findings.iter().map(|f| format!("  {}:{}:{}: [{}] {}", f.path, f.line, f.col, f.rule, f.message)).collect::<Vec<_>>().join("\n")
    )]
    Unrenderable { findings: Vec<Finding> },
    #[error("the rendered output is {bytes} bytes, over the bound of {MAX_OUTPUT_BYTES} bytes")]
    TooLarge { bytes: u64 },
    #[error(
        "refusing to replace {path}: it is not empty and was not written by `vakt render` (no {MARKER} marker); choose another --out or remove it"
    )]
    ForeignOutput { path: PathBuf },
    #[error("refusing to write {path}: {why}")]
    BadOutput { path: PathBuf, why: &'static str },
    #[error("failed to {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

impl RenderError {
    fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.to_owned();
        move |source| RenderError::Io {
            action,
            path,
            source,
        }
    }
}

/// Validates the files for `opts.env` and renders that view. Refused ([`RenderError::Invalid`])
/// when validation has error findings other than the date-dependent ones; the report is
/// returned either way so warnings can be shown.
pub fn render_repo(
    files: &RepoFiles,
    opts: &RenderOptions,
    today: time::Date,
) -> Result<(Rendered, Report), RenderError> {
    let parsed = parse_all(files);
    let Some(manifest) = &parsed.manifest else {
        return Err(RenderError::NoManifest);
    };
    if !manifest.environments.contains_key(&opts.env) {
        return Err(RenderError::UnknownEnv {
            env: opts.env.clone(),
            declared: manifest.env_names(),
        });
    }
    let report = validate_parsed(
        &parsed,
        &ValidateOptions {
            env: Some(opts.env.clone()),
            today,
        },
    );
    let refusing = report
        .findings
        .iter()
        .any(|f| f.severity == Severity::Error && !TIME_DEPENDENT_RULES.contains(&f.rule));
    if refusing {
        return Err(RenderError::Invalid {
            env: opts.env.clone(),
            report: Box::new(report),
        });
    }
    let (model, _) = build_view(&parsed, Some(&opts.env));
    let rendered = render_model(&model, opts)?;
    Ok((rendered, report))
}

/// Renders one view. Pure and deterministic: labels and annotations in name order, groups and
/// rules in file order, jobs by name, targets by node id, files by path.
pub fn render_model(model: &Model, opts: &RenderOptions) -> Result<Rendered, RenderError> {
    let manifest = model.manifest.as_ref().ok_or(RenderError::NoManifest)?;
    if !manifest.spec.environments.contains_key(&opts.env) {
        return Err(RenderError::UnknownEnv {
            env: opts.env.clone(),
            declared: manifest.spec.env_names(),
        });
    }
    // The same checks `vakt validate` runs (`render.*`): what would make the output wrong.
    let mut findings = Vec::new();
    crate::rules::check_render(model, &mut findings);
    findings.retain(|f| f.severity == Severity::Error);
    if !findings.is_empty() {
        findings.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
        return Err(RenderError::Unrenderable { findings });
    }
    let unrenderable = |path: &str, message: String| RenderError::Unrenderable {
        findings: vec![Finding::new(
            "render.rule",
            path,
            Default::default(),
            message,
        )],
    };
    let env = opts.env.as_str();
    let mut files = BTreeMap::new();
    let mut counts = RenderCounts::default();

    // 1. Rule files.
    let runbook_base = runbook_base(&manifest.spec.project.site_url).ok();
    for doc in &model.alert_rules {
        let name = rule_file_name(doc.path());
        let (y, alerts, records) = rule_file(&doc.spec, env, runbook_base.as_deref())
            .map_err(|m| unrenderable(doc.path(), m))?;
        counts.rule_files += 1;
        counts.alerts += alerts;
        counts.recording_rules += records;
        let head = format!(
            "# Generated by `vakt render --env {env}` from {}; do not edit.\n",
            doc.path()
        );
        files.insert(name, (head + &y.to_yaml()).into_bytes());
    }

    // 2. Scrape configuration.
    let (scrape, jobs, targets) =
        scrape_config(model, env).map_err(|(p, m)| unrenderable(&p, m))?;
    counts.scrape_jobs = jobs;
    counts.scrape_targets = targets;
    files.insert(
        "scrape.yaml".to_owned(),
        (format!("# Generated by `vakt render --env {env}` from inventory/; do not edit.\n")
            + &scrape.to_yaml())
            .into_bytes(),
    );

    // 3. Grafana provisioning.
    let all_ds: Vec<&Datasources> = model.datasources.iter().map(|d| &d.spec).collect();
    let mut ds_items = Vec::new();
    for d in all_ds.iter().flat_map(|d| d.datasources.iter()) {
        let mut m = vec![
            ("name", Y::str(&d.name)),
            (
                "type",
                Y::str(match d.kind {
                    crate::model::DatasourceType::Prometheus => "prometheus",
                    crate::model::DatasourceType::Loki => "loki",
                }),
            ),
            ("uid", Y::str(&d.uid)),
            ("access", Y::str("proxy")),
        ];
        if let Some(u) = &d.url {
            m.push(("url", Y::str(u)));
        }
        m.push(("editable", Y::Bool(false)));
        ds_items.push(Y::map(m));
        counts.datasources += 1;
    }
    let datasources = Y::map(vec![
        ("apiVersion", Y::Int(1)),
        ("datasources", Y::Seq(ds_items)),
    ]);
    files.insert(
        "grafana/provisioning/datasources/vakt.yaml".to_owned(),
        (format!(
            "# Generated by `vakt render --env {env}` from dashboards/datasources.toml; do not edit.\n"
        ) + &datasources.to_yaml())
            .into_bytes(),
    );
    let provider = Y::map(vec![
        ("apiVersion", Y::Int(1)),
        (
            "providers",
            Y::Seq(vec![Y::map(vec![
                ("name", Y::str(&format!("vakt-{env}"))),
                ("orgId", Y::Int(1)),
                ("type", Y::str("file")),
                ("disableDeletion", Y::Bool(true)),
                ("allowUiUpdates", Y::Bool(false)),
                ("updateIntervalSeconds", Y::Int(30)),
                (
                    "options",
                    Y::map(vec![("path", Y::str(&opts.dashboards_path))]),
                ),
            ])]),
        ),
    ]);
    files.insert(
        "grafana/provisioning/dashboards/vakt.yaml".to_owned(),
        (format!("# Generated by `vakt render --env {env}`; do not edit.\n") + &provider.to_yaml())
            .into_bytes(),
    );
    for d in &model.dashboards {
        let mut bytes = serde_json::to_vec_pretty(&*d.value.tree())
            .map_err(|e| unrenderable(d.path(), format!("dashboard does not serialise: {e}")))?;
        bytes.push(b'\n');
        files.insert(format!("grafana/dashboards/{}.json", d.spec.uid), bytes);
        counts.dashboards += 1;
    }

    let rendered = Rendered {
        env: env.to_owned(),
        files,
        counts,
    };
    let bytes = rendered.bytes();
    if bytes > MAX_OUTPUT_BYTES {
        return Err(RenderError::TooLarge { bytes });
    }
    Ok(rendered)
}

fn rule_file(
    f: &RuleFile,
    env: &str,
    runbook_base: Option<&str>,
) -> Result<(Y, usize, usize), String> {
    let (mut alerts, mut records) = (0, 0);
    let mut groups = Vec::new();
    for g in &f.groups {
        let mut rules = Vec::new();
        for r in &g.rules {
            rules.push(rule(r, env, runbook_base)?);
            if r.alert.is_some() {
                alerts += 1;
            } else {
                records += 1;
            }
        }
        let mut m = vec![("name", Y::str(&g.name))];
        if let Some(i) = &g.interval {
            m.push(("interval", Y::str(i)));
        }
        m.push(("rules", Y::Seq(rules)));
        groups.push(Y::map(m));
    }
    Ok((Y::map(vec![("groups", Y::Seq(groups))]), alerts, records))
}

fn rule(r: &Rule, env: &str, runbook_base: Option<&str>) -> Result<Y, String> {
    let str_map = |m: &BTreeMap<String, String>| {
        Y::Map(
            m.iter()
                .map(|(k, v)| (k.clone(), Y::Str(v.clone())))
                .collect(),
        )
    };
    match (&r.alert, &r.record) {
        (Some(name), None) => {
            let mut m = vec![("alert", Y::str(name)), ("expr", Y::str(&r.expr))];
            if let Some(x) = &r.for_ {
                m.push(("for", Y::str(x)));
            }
            if let Some(x) = &r.keep_firing_for {
                m.push(("keep_firing_for", Y::str(x)));
            }
            let mut labels = r.labels.clone();
            labels.insert(ENV_LABEL.to_owned(), env.to_owned());
            m.push(("labels", str_map(&labels)));
            let mut ann = r.annotations.clone();
            if let Some(id) = r.annotations.get("runbook_id") {
                let base = runbook_base.ok_or_else(|| {
                    format!("alert `{name}`: project.site_url cannot give a runbook_url")
                })?;
                ann.insert("runbook_url".to_owned(), runbook_url(base, id));
            }
            if !ann.is_empty() {
                m.push(("annotations", str_map(&ann)));
            }
            Ok(Y::map(m))
        }
        (None, Some(name)) => {
            let mut m = vec![("record", Y::str(name)), ("expr", Y::str(&r.expr))];
            if !r.labels.is_empty() {
                m.push(("labels", str_map(&r.labels)));
            }
            Ok(Y::map(m))
        }
        _ => Err("a rule has exactly one of `alert` and `record`".to_owned()),
    }
}

/// `scrape_configs`: one job per service (`job` = its `metrics_service`), one static target per
/// node. Returns the document, the number of jobs and targets, or (path, message).
fn scrape_config(model: &Model, env: &str) -> Result<(Y, usize, usize), (String, String)> {
    let service_label: BTreeMap<crate::model::ServiceKind, &str> = model
        .services
        .iter()
        .map(|s| (s.spec.kind, s.spec.metrics_service.as_str()))
        .collect();
    let mut shards_of: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for s in &model.shards {
        for n in &s.spec.nodes {
            shards_of.entry(n).or_default().insert(&s.spec.id);
        }
    }
    let mut nodes: Vec<_> = model.nodes.iter().collect();
    nodes.sort_by(|a, b| a.spec.id.cmp(&b.spec.id));
    // job → targets (in node id order)
    let mut jobs: BTreeMap<&str, Vec<Y>> = BTreeMap::new();
    for n in &nodes {
        let node = &n.spec;
        let url = metrics_url(node);
        let u = parse_http_url(&url).map_err(|why| {
            (
                n.path().to_owned(),
                format!("node `{}`: metrics URL `{url}` {why}", node.id),
            )
        })?;
        let service = service_label
            .get(&node.service_kind)
            .copied()
            .unwrap_or(node.service_kind.as_str());
        let mut labels = vec![
            ("__metrics_path__", Y::Str(u.path.clone())),
            ("__scheme__", Y::Str(u.scheme.clone())),
            ("env", Y::str(env)),
            ("node", Y::str(&node.id)),
            ("service", Y::str(service)),
        ];
        if let Some(s) = shards_of.get(node.id.as_str()) {
            labels.push((
                "shard",
                Y::Str(s.iter().copied().collect::<Vec<_>>().join(",")),
            ));
        }
        labels.push(("site", Y::str(&node.site)));
        jobs.entry(service).or_default().push(Y::map(vec![
            ("targets", Y::Seq(vec![Y::Str(u.authority)])),
            ("labels", Y::map(labels)),
        ]));
    }
    let targets = nodes.len();
    let njobs = jobs.len();
    let configs = jobs
        .into_iter()
        .map(|(job, statics)| {
            Y::map(vec![
                ("job_name", Y::str(job)),
                ("static_configs", Y::Seq(statics)),
            ])
        })
        .collect();
    Ok((
        Y::map(vec![("scrape_configs", Y::Seq(configs))]),
        njobs,
        targets,
    ))
}

/// A YAML document vakt writes: block style, keys in the order given, strings double-quoted
/// (or as literal blocks when multi-line and safe), so no value is ever re-typed by a reader
/// (no "Norway problem", no numbers that were strings).
#[derive(Debug, Clone)]
enum Y {
    Map(Vec<(String, Y)>),
    Seq(Vec<Y>),
    Str(String),
    Int(i64),
    Bool(bool),
}

impl Y {
    fn str(s: &str) -> Y {
        Y::Str(s.to_owned())
    }

    fn map(m: Vec<(&str, Y)>) -> Y {
        Y::Map(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
    }

    fn to_yaml(&self) -> String {
        let mut out = String::new();
        match self {
            Y::Map(m) if !m.is_empty() => emit_map(m, 0, &mut out),
            Y::Seq(s) if !s.is_empty() => emit_seq(s, 0, &mut out),
            other => {
                out.push_str(&scalar(other));
                out.push('\n');
            }
        }
        out
    }
}

fn pad(out: &mut String, n: usize) {
    out.extend(std::iter::repeat_n(' ', n));
}

fn emit_map(m: &[(String, Y)], indent: usize, out: &mut String) {
    for (k, v) in m {
        pad(out, indent);
        out.push_str(&key(k));
        out.push(':');
        emit_value(v, indent, out);
    }
}

/// The value after `key:` (or after `- ` for sequence items that are scalars).
fn emit_value(v: &Y, indent: usize, out: &mut String) {
    match v {
        Y::Map(m) if !m.is_empty() => {
            out.push('\n');
            emit_map(m, indent + 2, out);
        }
        Y::Seq(s) if !s.is_empty() => {
            out.push('\n');
            emit_seq(s, indent + 2, out);
        }
        Y::Str(s) if literal_ok(s) => {
            let body = s.strip_suffix('\n');
            out.push_str(if body.is_some() { " |\n" } else { " |-\n" });
            for line in body.unwrap_or(s).split('\n') {
                if !line.is_empty() {
                    pad(out, indent + 2);
                    out.push_str(line);
                }
                out.push('\n');
            }
        }
        other => {
            out.push(' ');
            out.push_str(&scalar(other));
            out.push('\n');
        }
    }
}

fn emit_seq(s: &[Y], indent: usize, out: &mut String) {
    for item in s {
        match item {
            Y::Map(m) if !m.is_empty() => {
                // The first entry goes on the dash's line: render at indent + 2 and put the
                // dash in place of the first line's indentation.
                let mut inner = String::new();
                emit_map(m, indent + 2, &mut inner);
                pad(out, indent);
                out.push_str("- ");
                out.push_str(&inner[indent + 2..]);
            }
            Y::Seq(x) if !x.is_empty() => {
                pad(out, indent);
                out.push_str("-\n");
                emit_seq(x, indent + 2, out);
            }
            other => {
                pad(out, indent);
                out.push_str("- ");
                out.push_str(&scalar(other));
                out.push('\n');
            }
        }
    }
}

fn scalar(v: &Y) -> String {
    match v {
        Y::Map(_) => "{}".to_owned(),
        Y::Seq(_) => "[]".to_owned(),
        Y::Str(s) => quote(s),
        Y::Int(i) => i.to_string(),
        Y::Bool(b) => b.to_string(),
    }
}

fn key(k: &str) -> String {
    let plain = is_label_name(k)
        && !matches!(
            k.to_ascii_lowercase().as_str(),
            "true" | "false" | "null" | "yes" | "no" | "on" | "off" | "y" | "n"
        );
    if plain { k.to_owned() } else { quote(k) }
}

/// Characters a YAML reader takes as written (libyaml's printable set, minus the characters it
/// also treats as line breaks, NEL, LS and PS, and the byte-order mark).
fn printable(c: char) -> bool {
    matches!(c, ' '..='~' | '\u{a0}'..='\u{d7ff}' | '\u{e000}'..='\u{fffd}' | '\u{10000}'..)
        && !matches!(c, '\u{2028}' | '\u{2029}' | '\u{feff}')
}

/// A YAML double-quoted scalar.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if printable(c) => out.push(c),
            c => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
        }
    }
    out.push('"');
    out
}

/// Whether `s` can be written as a literal block (`|` / `|-`) and read back unchanged:
/// several lines, every character printable, no tabs, no line that is only spaces, the first
/// line not indented (its indentation would be taken as the block's), at most one trailing
/// newline.
fn literal_ok(s: &str) -> bool {
    let body = s.strip_suffix('\n').unwrap_or(s);
    body.contains('\n')
        && !body.ends_with('\n')
        && body.chars().all(|c| c == '\n' || printable(c))
        && !body.starts_with(' ')
        && !body.starts_with('\n')
        && body
            .split('\n')
            .all(|l| l.is_empty() || !l.trim_start_matches(' ').is_empty())
}

/// What [`write_atomically`] did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Written {
    pub out: PathBuf,
    pub files: usize,
    pub bytes: u64,
    /// A previous render was replaced.
    pub replaced: bool,
}

fn sibling(out: &Path, name: &str, tag: &str) -> PathBuf {
    out.with_file_name(format!(".{name}.{tag}-{}", std::process::id()))
}

/// Writes `r` as the new content of `out`: into a hidden sibling directory first, then renamed
/// into place (a previous render is moved aside and removed). Refuses a non-empty `out` that
/// carries no [`MARKER`]. On any error `out` is as it was.
pub fn write_atomically(
    out: &Path,
    r: &Rendered,
    commit: Option<&str>,
) -> Result<Written, RenderError> {
    let name = match out.file_name() {
        Some(n) => n.to_string_lossy().into_owned(),
        None => {
            return Err(RenderError::BadOutput {
                path: out.to_owned(),
                why: "it has no directory name (use e.g. `--out rendered`)",
            });
        }
    };
    let mut replaced = false;
    match std::fs::symlink_metadata(out) {
        Ok(m) if !m.is_dir() => {
            return Err(RenderError::BadOutput {
                path: out.to_owned(),
                why: "it exists and is not a directory",
            });
        }
        Ok(_) => {
            let empty = std::fs::read_dir(out)
                .map_err(RenderError::io("read", out))?
                .next()
                .is_none();
            if !empty && !out.join(MARKER).is_file() {
                return Err(RenderError::ForeignOutput {
                    path: out.to_owned(),
                });
            }
            replaced = !empty;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(RenderError::io("inspect", out)(e)),
    }
    if let Some(parent) = out.parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent).map_err(RenderError::io("create", parent))?;
    }
    let tmp = sibling(out, &name, "render-tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    let result = write_tree(&tmp, r, commit).and_then(|()| swap_in(&tmp, out, &name));
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result?;
    Ok(Written {
        out: out.to_owned(),
        files: r.files.len(),
        bytes: r.bytes(),
        replaced,
    })
}

fn write_tree(tmp: &Path, r: &Rendered, commit: Option<&str>) -> Result<(), RenderError> {
    std::fs::create_dir_all(tmp).map_err(RenderError::io("create", tmp))?;
    for (rel, bytes) in &r.files {
        let p = tmp.join(rel);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).map_err(RenderError::io("create", d))?;
        }
        std::fs::write(&p, bytes).map_err(RenderError::io("write", &p))?;
    }
    let marker = serde_json::json!({
        "version": 1,
        "written_by": "vakt render",
        "env": r.env,
        "commit": commit,
    });
    let p = tmp.join(MARKER);
    std::fs::write(&p, format!("{marker}\n")).map_err(RenderError::io("write", &p))
}

fn swap_in(tmp: &Path, out: &Path, name: &str) -> Result<(), RenderError> {
    if out.exists() {
        let old = sibling(out, name, "render-old");
        let _ = std::fs::remove_dir_all(&old);
        std::fs::rename(out, &old).map_err(RenderError::io("move aside", out))?;
        if let Err(e) = std::fs::rename(tmp, out) {
            // put the previous render back
            let _ = std::fs::rename(&old, out);
            return Err(RenderError::io("rename into place", out)(e));
        }
        let _ = std::fs::remove_dir_all(&old);
    } else {
        std::fs::rename(tmp, out).map_err(RenderError::io("rename into place", out))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked() {
        let u = parse_http_url("http://agg-1.internal:9090/metrics").unwrap();
        assert_eq!(
            (u.scheme.as_str(), u.authority.as_str(), u.path.as_str()),
            ("http", "agg-1.internal:9090", "/metrics")
        );
        assert_eq!(parse_http_url("https://[::1]:8443").unwrap().path, "/");
        for bad in [
            "",
            "agg-1:9090/metrics",
            "ftp://x/metrics",
            "http:///metrics",
            "http://u:p@x/metrics",
            "http://x/metrics?a=b",
            "http://x:99999/metrics",
            "http://x:/metrics",
            "http://[::1/metrics",
            "http://x /metrics",
        ] {
            assert!(parse_http_url(bad).is_err(), "{bad}");
        }
        assert_eq!(
            runbook_base("https://ops.example/").unwrap(),
            "https://ops.example"
        );
    }

    #[test]
    fn yaml_round_trips_through_a_yaml_reader() {
        let tricky = [
            "no",
            "on",
            "1.0",
            "",
            " leading",
            "a: b",
            "- x",
            "#c",
            "sum(rate(x[5m]))\n  / 2\n",
            "two\nlines",
            "tab\there",
            "nel\u{85}ls\u{2028}bom\u{feff}del\u{7f}",
            "quote \" and \\ backslash",
            "blank\n\nline\n",
            "   \nspaces only first",
            "x\n   \ny",
            "{{ $labels.service }}",
        ];
        let y = Y::Map(
            tricky
                .iter()
                .enumerate()
                .map(|(i, s)| (format!("k{i}"), Y::str(s)))
                .chain([
                    ("yes".to_owned(), Y::Seq(vec![Y::str("a"), Y::Int(3)])),
                    (
                        "list".to_owned(),
                        Y::Seq(vec![Y::map(vec![
                            ("a", Y::str("x\ny")),
                            ("b", Y::Bool(true)),
                        ])]),
                    ),
                ])
                .collect(),
        );
        let text = y.to_yaml();
        let doc = crate::parse::parse("t.yaml", crate::parse::Format::Yaml, &text)
            .unwrap_or_else(|e| panic!("{e:?}\n{text}"))
            .value;
        for (i, s) in tricky.iter().enumerate() {
            assert_eq!(
                doc[format!("k{i}").as_str()].as_str(),
                Some(*s),
                "k{i} in:\n{text}"
            );
        }
        assert_eq!(doc["yes"][1], serde_json::json!(3));
        assert_eq!(doc["list"][0]["a"], "x\ny");
        assert_eq!(doc["list"][0]["b"], true);
    }

    #[test]
    fn rule_file_names() {
        assert_eq!(rule_file_name("alerts/a.yaml"), "rules/a.yaml");
        assert_eq!(rule_file_name("alerts/a.yml"), "rules/a.yaml");
        assert_eq!(
            rule_file_name("environments/prod/alerts/b.yaml"),
            "rules/b.yaml"
        );
    }
}
