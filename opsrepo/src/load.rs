//! Loading an ops repo: parse every file once (in parallel), check each against its schema,
//! merge environment overlays (JSON Merge Patch, RFC 7386) and build the typed model of a view.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use rayon::prelude::*;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::diag::{Finding, Pos};
use crate::kinds::{Kind, kind_of_base_path, split_overlay};
use crate::model::*;
use crate::parse::{self, Format, Parsed, Spans};
use crate::source::RepoFiles;

/// One parsed file.
#[derive(Debug, Clone)]
pub struct SourceDoc {
    pub path: String,
    pub kind: Kind,
    /// `Some(env)` for files under `environments/<env>/`.
    pub env: Option<String>,
    /// The path of the base document this overlays (the path itself for base documents).
    pub base_path: String,
    pub text: Arc<str>,
    pub parsed: Parsed,
}

/// Where the values of a (possibly merged) document come from.
#[derive(Debug, Clone)]
pub struct DocSpans {
    pub base: Option<(String, Spans)>,
    pub overlay: Option<(String, Spans)>,
}

impl DocSpans {
    /// File and position of the value at `pointer`: the overlay's if it sets it, else the base's.
    pub fn locate(&self, pointer: &str) -> (&str, Pos) {
        self.locate_with(pointer, false)
    }

    /// Like [`locate`](Self::locate), but the position of the key.
    pub fn locate_key(&self, pointer: &str) -> (&str, Pos) {
        self.locate_with(pointer, true)
    }

    fn locate_with(&self, pointer: &str, key: bool) -> (&str, Pos) {
        let pick = |(_, s): &(String, Spans)| -> (usize, Pos) {
            // depth of the longest recorded ancestor, to prefer the more specific file
            let mut q = pointer;
            loop {
                if s.contains(q) || q.is_empty() {
                    break;
                }
                q = &q[..q.rfind('/').unwrap_or(0)];
            }
            (
                q.len(),
                if key {
                    s.key(pointer)
                } else {
                    s.value(pointer)
                },
            )
        };
        match (&self.base, &self.overlay) {
            (Some(b), Some(o)) => {
                let (lb, pb) = pick(b);
                let (lo, po) = pick(o);
                if lo >= lb && lo > 0 {
                    (&o.0, po)
                } else {
                    (&b.0, pb)
                }
            }
            (Some(b), None) => (&b.0, pick(b).1),
            (None, Some(o)) => (&o.0, pick(o).1),
            (None, None) => ("", Pos::default()),
        }
    }

    /// The file a finding about the whole document should name.
    pub fn primary(&self) -> &str {
        self.base
            .as_ref()
            .or(self.overlay.as_ref())
            .map_or("", |(p, _)| p)
    }
}

/// A typed document of a view, with its merged JSON value and source spans.
#[derive(Debug, Clone)]
pub struct Doc<T> {
    /// The base path (or the overlay path for overlay-only documents).
    pub path: String,
    pub spans: DocSpans,
    pub value: Value,
    pub spec: T,
}

impl<T> Doc<T> {
    pub fn at(&self, pointer: &str) -> (&str, Pos) {
        self.spans.locate(pointer)
    }

    pub fn at_key(&self, pointer: &str) -> (&str, Pos) {
        self.spans.locate_key(pointer)
    }
}

/// A runbook markdown file.
#[derive(Debug, Clone)]
pub struct RunbookDoc {
    pub path: String,
    pub text: Arc<str>,
}

/// The typed model of one view of the repo (the base, or one environment with its overlays).
#[derive(Debug, Clone, Default)]
pub struct Model {
    pub env: Option<String>,
    pub manifest: Option<Doc<Manifest>>,
    pub global: Vec<Doc<GlobalConfig>>,
    pub config_items: Vec<Doc<ConfigItem>>,
    pub tenants: Vec<Doc<Tenant>>,
    pub aggregates: Vec<Doc<Aggregate>>,
    pub projections: Vec<Doc<Projection>>,
    pub sagas: Vec<Doc<Saga>>,
    pub effects: Vec<Doc<EffectProvider>>,
    pub definition_manifests: Vec<Doc<DefinitionManifest>>,
    pub sites: Vec<Doc<Site>>,
    pub nodes: Vec<Doc<Node>>,
    pub shards: Vec<Doc<Shard>>,
    pub services: Vec<Doc<Service>>,
    pub placements: Vec<Doc<Placement>>,
    pub roles: Vec<Doc<Role>>,
    pub bindings: Vec<Doc<RoleBinding>>,
    pub catalogs: Vec<Doc<RunbookCatalog>>,
    pub runbooks: Vec<RunbookDoc>,
    pub datasources: Vec<Doc<Datasources>>,
    pub saved_queries: Vec<Doc<SavedQuery>>,
    pub dashboards: Vec<Doc<Dashboard>>,
    pub alert_rules: Vec<Doc<RuleFile>>,
    pub dr_stores: Vec<Doc<DrStore>>,
    /// Every structured document of the view, by kind, for generic checks and compilation.
    pub documents: Vec<(Kind, Doc<()>)>,
    /// Ids declared by documents that failed their schema: references to them are not reported
    /// again (the document's own finding says what to fix).
    pub broken_ids: std::collections::HashSet<String>,
}

/// Everything parsed from the files, before views are built.
#[derive(Debug, Clone, Default)]
pub struct Parsed0 {
    pub docs: Vec<SourceDoc>,
    pub manifest: Option<Manifest>,
    pub findings: Vec<Finding>,
    /// Number of files read (documents and refused files).
    pub files: usize,
    /// Text of every file that decoded, for showing offending lines.
    pub texts: HashMap<String, Arc<str>>,
    /// Ids declared by base documents that failed their schema.
    pub broken_ids: BTreeSet<String>,
}

/// Parses and schema-checks every file. Findings on one file never stop the others.
pub fn parse_all(files: &RepoFiles) -> Parsed0 {
    let mut out = Parsed0 {
        files: files.files.len(),
        ..Default::default()
    };
    // The manifest first: its bindings decide the kind of other paths.
    if let Some(raw) = files.files.iter().find(|f| f.path == "vakt.toml")
        && let Ok(bytes) = &raw.content
        && let Ok(text) = parse::decode(&raw.path, bytes)
        && let Ok(p) = parse::parse(&raw.path, Format::Toml, text)
    {
        out.manifest = serde_json::from_value(p.value).ok();
    }
    let bindings = out
        .manifest
        .as_ref()
        .map(|m| m.bindings.clone())
        .unwrap_or_default();
    type One = (
        Result<Option<SourceDoc>, (Vec<Finding>, Option<String>)>,
        Option<(String, Arc<str>)>,
    );
    let results: Vec<One> = files
        .files
        .par_iter()
        .map(|raw| {
            let text: Option<(String, Arc<str>)> = raw
                .content
                .as_ref()
                .ok()
                .and_then(|b| std::str::from_utf8(b).ok())
                .map(|t| (raw.path.clone(), Arc::from(t)));
            let r = parse_one(raw, &bindings, text.as_ref().map(|t| t.1.clone()));
            let r = r.map_err(|e| match e {
                ParseFail::Findings(f) => (f, None),
                ParseFail::Schema(f, id) => (f, id),
            });
            (r, text)
        })
        .collect();
    for (r, text) in results {
        if let Some((p, t)) = text {
            out.texts.insert(p, t);
        }
        match r {
            Ok(Some(d)) => out.docs.push(d),
            Ok(None) => {}
            Err((f, id)) => {
                out.findings.extend(f);
                out.broken_ids.extend(id);
            }
        }
    }
    out
}

/// The id a document declares, read leniently from its raw value.
fn declared_id(v: &Value) -> Option<String> {
    ["id", "name", "uid", "tenant"]
        .iter()
        .find_map(|k| v.get(*k)?.as_str().map(str::to_owned))
}

enum ParseFail {
    Findings(Vec<Finding>),
    Schema(Vec<Finding>, Option<String>),
}

impl From<Vec<Finding>> for ParseFail {
    fn from(f: Vec<Finding>) -> Self {
        ParseFail::Findings(f)
    }
}

fn parse_one(
    raw: &crate::source::RawFile,
    bindings: &[Binding],
    text_arc: Option<Arc<str>>,
) -> Result<Option<SourceDoc>, ParseFail> {
    {
        {
            let bytes = raw.content.as_ref().map_err(|f| vec![f.clone()])?;
            let (env, base_path) = match split_overlay(&raw.path) {
                Some((env, rest)) => (Some(env.to_owned()), rest.to_owned()),
                None => (None, raw.path.clone()),
            };
            let Some(kind) = kind_of_base_path(&base_path, bindings) else {
                return Err(ParseFail::Findings(vec![Finding::new(
                    "input.unknown-file",
                    &raw.path,
                    Pos::default(),
                    "file matches no document kind of the ops repo layout and is ignored",
                )
                .help("move it to the right directory, rename its extension, or bind it with [[bindings]] in vakt.toml")]));
            };
            if kind == Kind::Manifest && env.is_some() {
                return Err(ParseFail::Findings(vec![
                    Finding::new(
                        "overlay.forbidden",
                        &raw.path,
                        Pos::default(),
                        "vakt.toml cannot be overlaid per environment",
                    )
                    .help("put per-environment settings under [environments.<env>] in vakt.toml"),
                ]));
            }
            let text = parse::decode(&raw.path, bytes).map_err(|f| vec![f])?;
            let format = Format::from_path(&raw.path).unwrap_or(Format::Toml);
            let parsed = parse::parse(&raw.path, format, text).map_err(|f| vec![f])?;
            let doc = SourceDoc {
                path: raw.path.clone(),
                kind,
                env,
                base_path,
                text: text_arc.unwrap_or_else(|| Arc::from(text)),
                parsed,
            };
            // Base documents are checked against their schema on their own; overlays are
            // partial and are checked once merged, per environment.
            if doc.env.is_none() && kind != Kind::Runbook {
                let spans = DocSpans {
                    base: Some((doc.path.clone(), doc.parsed.spans.clone())),
                    overlay: None,
                };
                let f = schema_findings(kind, &doc.parsed.value, &spans);
                if !f.is_empty() {
                    return Err(ParseFail::Schema(f, declared_id(&doc.parsed.value)));
                }
            }
            Ok(Some(doc))
        }
    }
}

/// Checks a value against the schema of `kind`; findings point at the offending text.
pub fn schema_findings(kind: Kind, value: &Value, spans: &DocSpans) -> Vec<Finding> {
    let Some(validator) = kind.validator() else {
        return Vec::new();
    };
    if validator.is_valid(value) {
        return Vec::new();
    }
    let mut out = Vec::new();
    for e in validator.iter_errors(value) {
        let pointer = e.instance_path().as_str().to_owned();
        let (path, pos, message, help) = match e.kind() {
            jsonschema::error::ValidationErrorKind::AdditionalProperties { unexpected } => {
                let first = unexpected.first().cloned().unwrap_or_default();
                let child = format!("{pointer}/{}", parse::escape_segment(&first));
                let (path, pos) = spans.locate_key(&child);
                (
                    path,
                    pos,
                    format!(
                        "unknown field `{}` in {}",
                        unexpected.join("`, `"),
                        kind.name()
                    ),
                    format!("remove it or fix its spelling; see {}", kind.schema_path()),
                )
            }
            jsonschema::error::ValidationErrorKind::Required { property } => {
                let (path, pos) = spans.locate_key(&pointer);
                (
                    path,
                    pos,
                    format!("missing required field {property} in {}", where_(&pointer)),
                    format!("add it; see {}", kind.schema_path()),
                )
            }
            _ => {
                let (path, pos) = spans.locate(&pointer);
                (
                    path,
                    pos,
                    format!("{} at {}", e, where_(&pointer)),
                    format!("fix the value to match {}", kind.schema_path()),
                )
            }
        };
        out.push(Finding::new("schema.invalid", path, pos, message).help(help));
    }
    out.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
    out.dedup();
    out
}

fn where_(pointer: &str) -> String {
    if pointer.is_empty() {
        "the document root".to_owned()
    } else {
        format!("`{pointer}`")
    }
}

/// RFC 7386 JSON Merge Patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    if let Value::Object(p) = patch {
        if !target.is_object() {
            *target = Value::Object(serde_json::Map::new());
        }
        let t = target.as_object_mut().expect("just made an object");
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    } else {
        *target = patch.clone();
    }
}

/// Builds the view of one environment (`None`: the base documents only).
pub fn build_view(p: &Parsed0, env: Option<&str>) -> (Model, Vec<Finding>) {
    let mut findings = Vec::new();
    let envs: BTreeSet<String> = p
        .manifest
        .as_ref()
        .map(|m| m.environments.keys().cloned().collect())
        .unwrap_or_default();
    let allow_orphan_overlay = env
        .and_then(|e| p.manifest.as_ref()?.environments.get(e))
        .is_some_and(|e| e.policy.allow_overlay_without_base);

    let mut bases: BTreeMap<&str, &SourceDoc> = BTreeMap::new();
    let mut overlays: BTreeMap<&str, &SourceDoc> = BTreeMap::new();
    for d in &p.docs {
        match &d.env {
            None => {
                bases.insert(&d.path, d);
            }
            Some(e) => {
                if !envs.contains(e) {
                    if env.is_none() {
                        findings.push(
                            Finding::new(
                                "overlay.unknown-env",
                                &d.path,
                                Pos::default(),
                                format!("overlay for environment `{e}`, which vakt.toml does not declare"),
                            )
                            .help(format!("declare [environments.{e}] in vakt.toml or move the file")),
                        );
                    }
                } else if Some(e.as_str()) == env {
                    overlays.insert(&d.base_path, d);
                }
            }
        }
    }

    let mut model = Model {
        env: env.map(str::to_owned),
        ..Default::default()
    };
    // Base documents that failed their schema in parse_all never reach a view.
    model.broken_ids.extend(p.broken_ids.iter().cloned());
    let mut entries: Vec<(Kind, DocSpans, Value, String)> = Vec::new();
    for (path, base) in &bases {
        if base.kind == Kind::Runbook {
            model.runbooks.push(RunbookDoc {
                path: base.path.clone(),
                text: base.text.clone(),
            });
            continue;
        }
        let base_spans = Some((base.path.clone(), base.parsed.spans.clone()));
        match overlays.get(path) {
            Some(o) if o.kind == Kind::Runbook => {
                findings.push(
                    Finding::new(
                        "overlay.forbidden",
                        &o.path,
                        Pos::default(),
                        "runbooks are the same in every environment and cannot be overlaid",
                    )
                    .help("edit the runbook itself"),
                );
            }
            Some(o) => {
                let mut v = base.parsed.value.clone();
                merge_patch(&mut v, &o.parsed.value);
                let spans = DocSpans {
                    base: base_spans,
                    overlay: Some((o.path.clone(), o.parsed.spans.clone())),
                };
                let f = schema_findings(base.kind, &v, &spans);
                if f.is_empty() {
                    entries.push((base.kind, spans, v, base.path.clone()));
                } else {
                    model.broken_ids.extend(declared_id(&v));
                    findings.extend(f);
                }
            }
            None => {
                let spans = DocSpans {
                    base: base_spans,
                    overlay: None,
                };
                entries.push((
                    base.kind,
                    spans,
                    base.parsed.value.clone(),
                    base.path.clone(),
                ));
            }
        }
    }
    for (base_path, o) in &overlays {
        if bases.contains_key(base_path) {
            continue;
        }
        if !allow_orphan_overlay {
            findings.push(
                Finding::new(
                    "overlay.no-base",
                    &o.path,
                    Pos::default(),
                    format!("overlay has no base document `{base_path}`"),
                )
                .help(format!(
                    "add `{base_path}`, or set allow_overlay_without_base = true in [environments.{}.policy]",
                    env.unwrap_or_default()
                )),
            );
            continue;
        }
        if o.kind == Kind::Runbook {
            continue;
        }
        let spans = DocSpans {
            base: None,
            overlay: Some((o.path.clone(), o.parsed.spans.clone())),
        };
        let f = schema_findings(o.kind, &o.parsed.value, &spans);
        if f.is_empty() {
            entries.push((o.kind, spans, o.parsed.value.clone(), o.path.clone()));
        } else {
            model.broken_ids.extend(declared_id(&o.parsed.value));
            findings.extend(f);
        }
    }

    for (kind, spans, value, path) in entries {
        let untyped = Doc {
            path: path.clone(),
            spans: spans.clone(),
            value: value.clone(),
            spec: (),
        };
        let ok = match kind {
            Kind::Manifest => typed(&untyped, &mut findings).map(|d| model.manifest = Some(d)),
            Kind::GlobalConfig => typed(&untyped, &mut findings).map(|d| model.global.push(d)),
            Kind::ConfigItem => typed(&untyped, &mut findings).map(|d| model.config_items.push(d)),
            Kind::Tenant => typed(&untyped, &mut findings).map(|d| model.tenants.push(d)),
            Kind::Aggregate => typed(&untyped, &mut findings).map(|d| model.aggregates.push(d)),
            Kind::Projection => typed(&untyped, &mut findings).map(|d| model.projections.push(d)),
            Kind::Saga => typed(&untyped, &mut findings).map(|d| model.sagas.push(d)),
            Kind::EffectProvider => typed(&untyped, &mut findings).map(|d| model.effects.push(d)),
            Kind::DefinitionManifest => {
                typed(&untyped, &mut findings).map(|d| model.definition_manifests.push(d))
            }
            Kind::Site => typed(&untyped, &mut findings).map(|d| model.sites.push(d)),
            Kind::Node => typed(&untyped, &mut findings).map(|d| model.nodes.push(d)),
            Kind::Shard => typed(&untyped, &mut findings).map(|d| model.shards.push(d)),
            Kind::Service => typed(&untyped, &mut findings).map(|d| model.services.push(d)),
            Kind::Placement => typed(&untyped, &mut findings).map(|d| model.placements.push(d)),
            Kind::Role => typed(&untyped, &mut findings).map(|d| model.roles.push(d)),
            Kind::RoleBinding => typed(&untyped, &mut findings).map(|d| model.bindings.push(d)),
            Kind::RunbookCatalog => typed(&untyped, &mut findings).map(|d| model.catalogs.push(d)),
            Kind::Datasources => typed(&untyped, &mut findings).map(|d| model.datasources.push(d)),
            Kind::SavedQuery => typed(&untyped, &mut findings).map(|d| model.saved_queries.push(d)),
            Kind::Dashboard => typed(&untyped, &mut findings).map(|d| model.dashboards.push(d)),
            Kind::AlertRules => typed(&untyped, &mut findings).map(|d| model.alert_rules.push(d)),
            Kind::DrStore => typed(&untyped, &mut findings).map(|d| model.dr_stores.push(d)),
            Kind::Runbook => None,
        };
        if ok.is_some() {
            model.documents.push((kind, untyped));
        }
    }
    (model, findings)
}

fn typed<T: DeserializeOwned>(doc: &Doc<()>, findings: &mut Vec<Finding>) -> Option<Doc<T>> {
    match serde_json::from_value::<T>(doc.value.clone()) {
        Ok(spec) => Some(Doc {
            path: doc.path.clone(),
            spans: doc.spans.clone(),
            value: doc.value.clone(),
            spec,
        }),
        Err(e) => {
            let (path, pos) = doc.at("");
            findings.push(
                Finding::new(
                    "schema.invalid",
                    path,
                    pos,
                    format!("document does not match its kind: {e}"),
                )
                .help("fix the document to match its schema"),
            );
            None
        }
    }
}

/// Index of documents by an id, reporting duplicates.
pub fn index_by<'a, T>(
    docs: &'a [Doc<T>],
    id: impl Fn(&T) -> &str,
    pointer: &str,
    what: &str,
    findings: &mut Vec<Finding>,
) -> HashMap<&'a str, &'a Doc<T>> {
    let mut map: HashMap<&str, &Doc<T>> = HashMap::new();
    for d in docs {
        let key = id(&d.spec);
        if let Some(first) = map.get(key) {
            let (path, pos) = d.at(pointer);
            findings.push(
                Finding::new(
                    "id.duplicate",
                    path,
                    pos,
                    format!("{what} id `{key}` is already declared in {}", first.path),
                )
                .help("ids are unique; rename one of them (renaming a file never renames an id)"),
            );
        } else {
            map.insert(key, d);
        }
    }
    map
}
