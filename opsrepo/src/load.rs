//! Loading an ops repo: parse every file once (in parallel), check each against its schema,
//! merge environment overlays (JSON Merge Patch, RFC 7386) and build the typed model of a view.

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, OnceLock};

use rayon::prelude::*;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::diag::{Finding, Pos};
use crate::kinds::{Kind, kind_of_base_path, split_overlay};
use crate::model::*;
use crate::parse::{self, Format, LazySpans};
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
    pub value: Stored,
    /// Findings of the value scan for literal credentials, made while the parsed tree was at
    /// hand (the value may be kept as compact JSON afterwards).
    pub secret_findings: Vec<Finding>,
    /// Source positions, computed when a finding first needs one; they hold the file's text
    /// ([`SourceDoc::text`]).
    pub spans: Arc<LazySpans>,
    /// The typed document built from this file alone, shared by every view that does not
    /// overlay it (views are built in parallel; the first one to need it builds it).
    shared: OnceLock<Arc<dyn Any + Send + Sync>>,
}

impl SourceDoc {
    /// The file's text. A document from the validation cache has it read from Git now (runbook
    /// texts are always read); `None` if that fails.
    pub fn text(&self) -> Option<Arc<str>> {
        self.spans.text()
    }

    /// A document whose parse and schema check came from the validation cache
    /// ([`crate::cache`]); its text is read only if something asks for it.
    /// `value` is what [`Stored::keep`] made of the parsed value (the cache keeps it as it was).
    pub(crate) fn from_cache(
        path: &str,
        kind: Kind,
        value: Stored,
        text: Arc<parse::LazyText>,
    ) -> SourceDoc {
        let (env, base_path) = split_env(path);
        let format = Format::from_path(path).unwrap_or(Format::Toml);
        SourceDoc {
            path: path.to_owned(),
            kind,
            value,
            env,
            base_path,
            // The cache keeps a file's scan findings with its entry (`Parsed0::prescanned`).
            secret_findings: Vec::new(),
            spans: Arc::new(LazySpans::with_text(path, format, text)),
            shared: OnceLock::new(),
        }
    }

    /// The spans of this file alone, on the side (base or overlay) it belongs to.
    pub fn own_spans(&self) -> DocSpans {
        let own = Some(self.spans.clone());
        if self.env.is_none() {
            DocSpans {
                base: own,
                overlay: None,
            }
        } else {
            DocSpans {
                base: None,
                overlay: own,
            }
        }
    }
}

/// Where the values of a (possibly merged) document come from.
#[derive(Debug, Clone)]
pub struct DocSpans {
    /// The base file's spans (they know its path).
    pub base: Option<Arc<LazySpans>>,
    pub overlay: Option<Arc<LazySpans>>,
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
        let pick = |s: &Arc<LazySpans>| -> (usize, Pos) {
            let s = s.get();
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
                    (o.path(), po)
                } else {
                    (b.path(), pb)
                }
            }
            (Some(b), None) => (b.path(), pick(b).1),
            (None, Some(o)) => (o.path(), pick(o).1),
            (None, None) => ("", Pos::default()),
        }
    }

    /// The file a finding about the whole document should name.
    pub fn primary(&self) -> &str {
        self.base
            .as_ref()
            .or(self.overlay.as_ref())
            .map_or("", |s| s.path())
    }
}

/// A typed document of a view, with its merged JSON value and source spans. Cheap to clone:
/// views that do not overlay a document share it.
#[derive(Debug)]
pub struct Doc<T>(Arc<DocData<T>>);

/// What a [`Doc`] holds.
#[derive(Debug)]
pub struct DocData<T> {
    /// Where its values come from; the first of them names the document
    /// ([`DocData::path`]).
    pub spans: DocSpans,
    pub value: Stored,
    pub spec: T,
}

impl<T> Clone for Doc<T> {
    fn clone(&self) -> Self {
        Doc(self.0.clone())
    }
}

impl<T> std::ops::Deref for Doc<T> {
    type Target = DocData<T>;
    fn deref(&self) -> &DocData<T> {
        &self.0
    }
}

impl<T> DocData<T> {
    /// The base path (or the overlay path for overlay-only documents).
    pub fn path(&self) -> &str {
        self.spans.primary()
    }

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
    pub exporters: Vec<Doc<Exporter>>,
    pub roles: Vec<Doc<Role>>,
    pub bindings: Vec<Doc<RoleBinding>>,
    pub catalogs: Vec<Doc<RunbookCatalog>>,
    pub runbooks: Vec<RunbookDoc>,
    pub datasources: Vec<Doc<Datasources>>,
    pub saved_queries: Vec<Doc<SavedQuery>>,
    pub dashboards: Vec<Doc<Dashboard>>,
    pub alert_rules: Vec<Doc<RuleFile>>,
    pub dr_stores: Vec<Doc<DrStore>>,
    /// How many structured documents of each kind the view holds (typed; runbooks are in
    /// `runbooks`).
    pub documents: BTreeMap<Kind, usize>,
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
    /// Texts not read yet (documents from the validation cache), read if a finding names them;
    /// sorted by path (the order of a commit's listing), looked up by binary search.
    pub deferred_texts: Vec<Arc<parse::LazySpans>>,
    /// The per-file secret scans already ran and their findings are in `findings` (the cached
    /// parse keeps them with each file), so validation must not scan `texts` again.
    pub prescanned: bool,
    /// Whether `docs` are in path order, found by the first view built ([`build_view_of`]) and
    /// read by the others (each view of a validation run is built from the same docs).
    pub(crate) docs_sorted: std::sync::OnceLock<bool>,
}

/// The parsed values of a commit alone, for compiling once validation has run.
#[derive(Debug, Clone, Default)]
pub struct Values {
    pub manifest: Option<Manifest>,
    pub docs: Vec<ValueDoc>,
}

/// One parsed document's value, where it came from, and which base it overlays.
#[derive(Debug, Clone)]
pub struct ValueDoc {
    pub path: String,
    /// `Some(env)` for files under `environments/<env>/`.
    pub env: Option<String>,
    pub base_path: String,
    pub value: Stored,
}

/// A parsed document's value as it is kept once its file is parsed and checked.
///
/// Most documents are only typed and compiled after that, so they are kept as compact JSON
/// (about a fifth of the memory of a `serde_json::Value` tree with ordered maps) and
/// deserialised straight into their typed form, or back into a tree one at a time when
/// compiled. Documents whose raw value rules and renderers walk (dashboards, rule files, the
/// manifest), environment overlays (merged per view) and deeply nested values stay trees.
///
/// The JSON is a [`bytes::Bytes`]: a document from the validation cache shares the cache
/// file's buffer (a slice of it, counted by reference) instead of a copy.
#[derive(Clone)]
pub enum Stored {
    Tree(Arc<Value>),
    Json(bytes::Bytes),
}

impl std::fmt::Debug for Stored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stored::Tree(v) => f.debug_tuple("Tree").field(v).finish(),
            Stored::Json(b) => write!(f, "Json({} bytes)", b.len()),
        }
    }
}

/// Nesting deeper than this stays a tree: serde_json reads back at most 128 levels.
const JSON_DEPTH: usize = 64;

impl Stored {
    /// Keeps `v` as a tree for the kinds read as trees, as compact JSON otherwise.
    pub fn keep(kind: Kind, overlay: bool, v: Value) -> Stored {
        let tree = overlay
            || matches!(kind, Kind::Dashboard | Kind::AlertRules | Kind::Manifest)
            || deeper_than(&v, JSON_DEPTH);
        if tree {
            return Stored::Tree(Arc::new(v));
        }
        match serde_json::to_vec(&v) {
            // Boxed first: no spare capacity kept (peak memory of a large parse).
            Ok(b) => Stored::Json(b.into_boxed_slice().into()),
            Err(_) => Stored::Tree(Arc::new(v)),
        }
    }

    /// The value as a tree: shared when kept as one, read back from the JSON otherwise.
    pub fn tree(&self) -> Arc<Value> {
        match self {
            Stored::Tree(v) => v.clone(),
            Stored::Json(_) => Arc::new(self.to_value()),
        }
    }

    /// An owned copy of the value.
    pub fn to_value(&self) -> Value {
        match self {
            Stored::Tree(v) => Value::clone(v),
            // Written by `keep` from a value at most JSON_DEPTH deep: always reads back.
            Stored::Json(b) => serde_json::from_slice(b).unwrap_or(Value::Null),
        }
    }

    /// Deserialises the typed form. Errors read as they would from the tree.
    pub fn deserialize<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        match self {
            Stored::Tree(v) => T::deserialize(&**v),
            // Checked as UTF-8 once, whole: read from bytes, serde_json checks every string
            // on its own (a tenth of typing a cached document). Bytes that are not UTF-8 would
            // fail as JSON too: like any failure, they are read from the tree.
            Stored::Json(b) => match std::str::from_utf8(b).map(serde_json::from_str) {
                Ok(Ok(t)) => Ok(t),
                _ => T::deserialize(&self.to_value()),
            },
        }
    }
}

/// Whether `v` nests more than `limit` arrays or objects deep.
fn deeper_than(v: &Value, limit: usize) -> bool {
    match v {
        Value::Array(a) => limit == 0 || a.iter().any(|c| deeper_than(c, limit - 1)),
        Value::Object(m) => limit == 0 || m.values().any(|c| deeper_than(c, limit - 1)),
        _ => false,
    }
}

impl Parsed0 {
    /// The text of a file, read now if it was deferred.
    pub fn text_of(&self, path: &str) -> Option<Arc<str>> {
        self.texts.get(path).cloned().or_else(|| {
            let i = self
                .deferred_texts
                .binary_search_by(|s| s.path().cmp(path))
                .ok()?;
            self.deferred_texts[i].text()
        })
    }

    /// Keeps the values and drops the rest: texts, source positions and the typed documents
    /// cached for views. A compile needs none of them, and on a large repo they are about half
    /// of what the parse holds (the peak memory of a one-off apply).
    pub fn into_values(self) -> Values {
        Values {
            manifest: self.manifest,
            docs: self
                .docs
                .into_iter()
                .map(|d| ValueDoc {
                    path: d.path,
                    env: d.env,
                    base_path: d.base_path,
                    value: d.value,
                })
                .collect(),
        }
    }
}

/// Parses and schema-checks every file. Findings on one file never stop the others.
pub fn parse_all(files: &RepoFiles) -> Parsed0 {
    let mut out = Parsed0 {
        files: files.files.len(),
        docs: Vec::with_capacity(files.files.len()),
        ..Default::default()
    };
    // The manifest first: its bindings decide the kind of other paths.
    out.manifest = files
        .files
        .iter()
        .find(|f| f.path == "vakt.toml")
        .and_then(manifest_of);
    let bindings = out
        .manifest
        .as_ref()
        .map(|m| m.bindings.clone())
        .unwrap_or_default();
    let results: Vec<(FileResult, Option<Arc<str>>)> = files
        .files
        .par_iter()
        .map(|raw| parse_file(raw, &bindings))
        .collect();
    out.texts.reserve(files.files.len());
    for (raw, (r, text)) in files.files.iter().zip(results) {
        if let Some(t) = text {
            out.texts.insert(raw.path.clone(), t);
        }
        out.add(r);
    }
    out
}

/// One file parsed and checked: its document (`None` for a file that holds none), or its
/// findings with the id a base document that failed its schema declares.
pub(crate) type FileResult = Result<Option<SourceDoc>, (Vec<Finding>, Option<String>)>;

/// Parses and checks one file that was read, as [`parse_all`] and the validation cache do;
/// also returns its text when it decodes.
pub(crate) fn parse_file(
    raw: &crate::source::RawFile,
    bindings: &[Binding],
) -> (FileResult, Option<Arc<str>>) {
    let text: Option<Arc<str>> = raw
        .content
        .as_ref()
        .ok()
        .and_then(|b| std::str::from_utf8(b).ok())
        .map(Arc::from);
    let r = parse_one(raw, bindings, text.clone()).map_err(|e| match e {
        ParseFail::Findings(f) => (f, None),
        ParseFail::Schema(f, id) => (f, id),
    });
    (r, text)
}

impl Parsed0 {
    /// Adds one file's result: its document, or its findings and broken id.
    pub(crate) fn add(&mut self, r: FileResult) {
        match r {
            Ok(Some(d)) => self.docs.push(d),
            Ok(None) => {}
            Err((f, id)) => {
                self.findings.extend(f);
                self.broken_ids.extend(id);
            }
        }
    }
}

/// The manifest read leniently from `vakt.toml` (its own findings come from its parse).
pub(crate) fn manifest_of(raw: &crate::source::RawFile) -> Option<Manifest> {
    let bytes = raw.content.as_ref().ok()?;
    let text = parse::decode(&raw.path, bytes).ok()?;
    let p = parse::parse(&raw.path, Format::Toml, text).ok()?;
    serde_json::from_value(p.value).ok()
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
            let (env, base_path) = split_env(&raw.path);
            let Some(kind) = kind_of(&base_path, bindings) else {
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
            // Decoded once by the caller; decoded here only to name the invalid byte.
            let text: Arc<str> = match text_arc {
                Some(t) => t,
                None => Arc::from(parse::decode(&raw.path, bytes).map_err(|f| vec![f])?),
            };
            let format = Format::from_path(&raw.path).unwrap_or(Format::Toml);
            // The value alone: positions are computed only for a file a finding names.
            let mut value = parse::parse_value(&raw.path, format, &text).map_err(|f| vec![f])?;
            if kind == Kind::AlertRules {
                if let Some(f) = prometheus_rule_cr(&raw.path, &value) {
                    return Err(ParseFail::Schema(vec![f], None));
                }
                null_rules_to_empty(&mut value);
            }
            let mut doc = SourceDoc {
                path: raw.path.clone(),
                kind,
                env,
                base_path,
                spans: Arc::new(LazySpans::new(&raw.path, format, text)),
                value: Stored::Tree(Arc::new(Value::Null)),
                secret_findings: Vec::new(),
                shared: OnceLock::new(),
            };
            // Base documents are checked against their schema on their own; overlays are
            // partial and are checked once merged, per environment.
            if doc.env.is_none() && kind != Kind::Runbook {
                let spans = DocSpans {
                    base: Some(doc.spans.clone()),
                    overlay: None,
                };
                let f = schema_findings(kind, &value, &spans);
                if !f.is_empty() {
                    return Err(ParseFail::Schema(f, declared_id(&value)));
                }
            }
            // Credentials in values, once per file (a view's merged document holds only values
            // of its base and its overlay). Dashboards and rule files hold queries, not
            // credentials; runbooks have their text scanned.
            if !matches!(kind, Kind::Dashboard | Kind::AlertRules | Kind::Runbook) {
                let spans = doc.own_spans();
                let locate = |ptr: &str| {
                    let (file, pos) = spans.locate(ptr);
                    (file.to_owned(), pos)
                };
                crate::rules::secrets::scan_values(&value, &locate, &mut doc.secret_findings);
            }
            // A base document is typed now, from the tree, while it is at hand: from the kept
            // JSON it would be parsed again. (Runbooks and overlays have no type of their own.)
            let mut value = Some(value);
            if doc.env.is_none()
                && let Some((stored, typed)) = kind
                    .with_type(TypeAndKeep {
                        kind,
                        spans: doc.own_spans(),
                        value: &mut value,
                    })
                    .flatten()
            {
                doc.value = stored;
                let _ = doc.shared.set(typed);
            } else if let Some(v) = value {
                doc.value = Stored::keep(kind, doc.env.is_some(), v);
            }
            Ok(Some(doc))
        }
    }
}

/// `(Some(env), base path)` for a file under `environments/<env>/`, else `(None, path)`.
pub(crate) fn split_env(path: &str) -> (Option<String>, String) {
    match split_overlay(path) {
        Some((env, rest)) => (Some(env.to_owned()), rest.to_owned()),
        None => (None, path.to_owned()),
    }
}

/// The kind of a base path: the manifest's bindings, the built-in layout, then subfolders.
pub(crate) fn kind_of(base_path: &str, bindings: &[Binding]) -> Option<Kind> {
    kind_of_base_path(base_path, bindings).or_else(|| subfolder_kind(base_path))
}

/// Rule files and dashboards in subfolders of `alerts/` and `dashboards/` are discovered and
/// checked like the top-level ones (never skipped with a warning). `dashboards/queries/` keeps
/// its own kind.
fn subfolder_kind(path: &str) -> Option<Kind> {
    let segs: Vec<&str> = path.split('/').collect();
    let ext = path.rsplit_once('.').map_or("", |(_, e)| e);
    match (segs.first().copied(), ext) {
        (Some("alerts"), "yaml" | "yml") if segs.len() > 2 => Some(Kind::AlertRules),
        (Some("dashboards"), "json") if segs.len() > 2 && segs[1] != "queries" => {
            Some(Kind::Dashboard)
        }
        _ => None,
    }
}

/// A Kubernetes `PrometheusRule` manifest where a rule file belongs: one finding that names
/// the command that converts it (the schema's "unknown field `spec`" would suggest deleting
/// every rule).
fn prometheus_rule_cr(path: &str, v: &Value) -> Option<Finding> {
    let kind = v.get("kind")?.as_str()?;
    if kind != "PrometheusRule" && !(kind.ends_with("List") && v.get("items").is_some()) {
        return None;
    }
    Some(
        Finding::new(
            "schema.invalid",
            path,
            Pos { line: 1, col: 1 },
            format!("a Kubernetes `{kind}` manifest, not a rule file"),
        )
        .help(format!(
            "convert it with `vakt import rules {path}` (the groups under spec.groups become a rule file), then remove this file"
        )),
    )
}

/// `rules: null` in a group means no rules, as promtool reads it.
fn null_rules_to_empty(v: &mut Value) {
    if let Some(groups) = v.get_mut("groups").and_then(Value::as_array_mut) {
        for g in groups {
            if let Some(r) = g.get_mut("rules")
                && r.is_null()
            {
                *r = Value::Array(Vec::new());
            }
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
    build_view_of(p, env, None)
}

/// [`build_view`]; with `wanted`, the model holds only the base documents of those kinds (and
/// every document an overlay of the view changes): enough for rules that read only them. The
/// view's own findings (its overlays') are all there either way.
pub fn build_view_of(
    p: &Parsed0,
    env: Option<&str>,
    wanted: Option<&[Kind]>,
) -> (Model, Vec<Finding>) {
    let mut findings = Vec::new();
    let envs: BTreeSet<String> = p
        .manifest
        .as_ref()
        .map(|m| m.environments.keys().cloned().collect())
        .unwrap_or_default();
    let allow_orphan_overlay = env
        .and_then(|e| p.manifest.as_ref()?.environments.get(e))
        .is_some_and(|e| e.policy.allow_overlay_without_base);

    // Base documents in path order: the parse keeps files sorted, so this is one pass (and a
    // sort only for a caller that did not).
    let mut bases: Vec<&SourceDoc> = Vec::with_capacity(p.docs.len());
    let mut overlays: BTreeMap<&str, &SourceDoc> = BTreeMap::new();
    for d in &p.docs {
        match &d.env {
            None => bases.push(d),
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
    let sorted = *p
        .docs_sorted
        .get_or_init(|| p.docs.is_sorted_by(|a, b| a.path < b.path));
    // A subsequence of sorted docs is sorted.
    if !sorted && !bases.is_sorted_by(|a, b| a.path < b.path) {
        bases.sort_by(|a, b| a.path.cmp(&b.path));
        bases.dedup_by(|a, b| a.path == b.path);
    }
    // Each overlay at the index of its base document, in base order (the walk below meets
    // them with a cursor instead of looking every base path up among the overlays), and the
    // overlays without a base document.
    let mut overlaid: Vec<(usize, &SourceDoc)> = Vec::with_capacity(overlays.len());
    let mut orphans: Vec<(&str, &SourceDoc)> = Vec::new();
    for (base_path, o) in &overlays {
        match bases.binary_search_by(|b| b.path.as_str().cmp(base_path)) {
            Ok(i) => overlaid.push((i, *o)),
            Err(_) => orphans.push((base_path, *o)),
        }
    }
    overlaid.sort_by_key(|(i, _)| *i);
    let mut overlaid = overlaid.into_iter().peekable();
    let mut entries: Vec<(Kind, Entry)> = Vec::with_capacity(bases.len());
    for (i, base) in bases.iter().enumerate() {
        let overlay = overlaid.next_if(|(at, _)| *at == i).map(|(_, o)| o);
        if wanted.is_some_and(|w| !w.contains(&base.kind)) && overlay.is_none() {
            continue;
        }
        if base.kind == Kind::Runbook {
            model.runbooks.push(RunbookDoc {
                path: base.path.clone(),
                text: base.text().unwrap_or_else(|| Arc::from("")),
            });
            // The base runbook is the one every environment sees; the overlay is refused.
            if let Some(o) = overlay {
                findings.push(runbook_overlay(o));
            }
            continue;
        }
        match overlay {
            Some(o) if o.kind == Kind::Runbook => findings.push(runbook_overlay(o)),
            Some(o) => {
                let mut v = base.value.to_value();
                merge_patch(&mut v, &o.value.tree());
                let spans = DocSpans {
                    base: Some(base.spans.clone()),
                    overlay: Some(o.spans.clone()),
                };
                let f = schema_findings(base.kind, &v, &spans);
                if f.is_empty() {
                    entries.push((
                        base.kind,
                        Entry::Merged(Box::new(MergedDoc { spans, value: v })),
                    ));
                } else {
                    model.broken_ids.extend(declared_id(&v));
                    findings.extend(f);
                }
            }
            None => entries.push((base.kind, Entry::Shared(base))),
        }
    }
    for (base_path, o) in orphans {
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
            findings.push(runbook_overlay(o));
            continue;
        }
        let spans = DocSpans {
            base: None,
            overlay: Some(o.spans.clone()),
        };
        let tree = o.value.tree();
        let f = schema_findings(o.kind, &tree, &spans);
        if f.is_empty() {
            entries.push((o.kind, Entry::Shared(o)));
        } else {
            model.broken_ids.extend(declared_id(&tree));
            findings.extend(f);
        }
    }

    for (kind, entry) in entries {
        type_into(&mut model, &mut findings, kind, entry);
    }
    (model, findings)
}

/// The finding for a runbook under `environments/<env>/`: runbooks are the same in every
/// environment, so an overlay of one is refused rather than silently left out.
fn runbook_overlay(o: &SourceDoc) -> Finding {
    Finding::new(
        "overlay.forbidden",
        &o.path,
        Pos::default(),
        "runbooks are the same in every environment and cannot be overlaid",
    )
    .help("edit the runbook itself (runbooks/), and remove this file")
}

/// Types one entry of a view into its place in `model` (a typing error into `findings`).
fn type_into(model: &mut Model, findings: &mut Vec<Finding>, kind: Kind, entry: Entry<'_>) {
    let mut f = |r: Result<(), Finding>| match r {
        Ok(()) => *model.documents.entry(kind).or_default() += 1,
        Err(e) => findings.push(e),
    };
    match kind {
        Kind::Manifest => {
            let mut one = Vec::new();
            f(entry.typed(&mut one));
            model.manifest = one.pop().or(model.manifest.take());
        }
        Kind::GlobalConfig => f(entry.typed(&mut model.global)),
        Kind::ConfigItem => f(entry.typed(&mut model.config_items)),
        Kind::Tenant => f(entry.typed(&mut model.tenants)),
        Kind::Aggregate => f(entry.typed(&mut model.aggregates)),
        Kind::Projection => f(entry.typed(&mut model.projections)),
        Kind::Saga => f(entry.typed(&mut model.sagas)),
        Kind::EffectProvider => f(entry.typed(&mut model.effects)),
        Kind::DefinitionManifest => f(entry.typed(&mut model.definition_manifests)),
        Kind::Site => f(entry.typed(&mut model.sites)),
        Kind::Node => f(entry.typed(&mut model.nodes)),
        Kind::Shard => f(entry.typed(&mut model.shards)),
        Kind::Service => f(entry.typed(&mut model.services)),
        Kind::Placement => f(entry.typed(&mut model.placements)),
        Kind::Exporter => f(entry.typed(&mut model.exporters)),
        Kind::Role => f(entry.typed(&mut model.roles)),
        Kind::RoleBinding => f(entry.typed(&mut model.bindings)),
        Kind::RunbookCatalog => f(entry.typed(&mut model.catalogs)),
        Kind::Datasources => f(entry.typed(&mut model.datasources)),
        Kind::SavedQuery => f(entry.typed(&mut model.saved_queries)),
        Kind::Dashboard => f(entry.typed(&mut model.dashboards)),
        Kind::AlertRules => f(entry.typed(&mut model.alert_rules)),
        Kind::DrStore => f(entry.typed(&mut model.dr_stores)),
        Kind::Runbook => {}
    }
}

/// Types every base document not typed yet, in parallel, ahead of the views: a view's typing
/// is one sequential pass, and the views that run at once would otherwise wait on each other
/// for the same documents. Each view then finds its shared documents typed. (The parse and the
/// validation cache type each base document as they make it; this catches any other.)
pub fn type_shared(p: &Parsed0) {
    p.docs.par_iter().for_each(SourceDoc::type_once);
}

impl SourceDoc {
    /// Types a base document for every view that will use it unchanged, unless that is done
    /// (overlays are typed per view, merged with their base). The validation cache calls it
    /// right after decoding an entry, while its bytes are still in the processor's cache.
    pub(crate) fn type_once(&self) {
        struct Once<'a>(&'a SourceDoc);
        impl crate::kinds::WithType for Once<'_> {
            type Out = ();
            fn with<T: DeserializeOwned + Send + Sync + 'static>(self) {
                shared_typed::<T>(self.0);
            }
        }
        if self.env.is_none() && self.shared.get().is_none() {
            self.kind.with_type(Once(self));
        }
    }
}

/// Types a base document's tree, then keeps the tree as [`Stored::keep`] does (taking it out
/// of `value`; a kind without a type leaves it there).
struct TypeAndKeep<'a> {
    kind: Kind,
    spans: DocSpans,
    value: &'a mut Option<Value>,
}

impl crate::kinds::WithType for TypeAndKeep<'_> {
    type Out = Option<(Stored, Arc<dyn Any + Send + Sync>)>;
    fn with<T: DeserializeOwned + Send + Sync + 'static>(self) -> Self::Out {
        let value = self.value.take()?;
        let spec = T::deserialize(&value);
        let stored = Stored::keep(self.kind, false, value);
        let typed = typed_doc::<T>(self.spans, stored.clone(), spec);
        Some((stored, Arc::new(typed)))
    }
}

/// A shared document's typing, done once.
fn shared_typed<T: DeserializeOwned + Send + Sync + 'static>(
    src: &SourceDoc,
) -> &Arc<dyn Any + Send + Sync> {
    src.shared.get_or_init(|| {
        Arc::new(type_doc::<T>(src.own_spans(), src.value.clone())) as Arc<dyn Any + Send + Sync>
    })
}

/// A document of a view before it is typed: a file used as it is (shared by every view that
/// uses it unchanged) or a base document merged with this view's overlay.
enum Entry<'a> {
    Shared(&'a SourceDoc),
    /// Boxed: a view holds one entry per document, most of them shared.
    Merged(Box<MergedDoc>),
}

struct MergedDoc {
    spans: DocSpans,
    value: Value,
}

/// A typed document, or why it could not be typed. The finding is boxed: every document keeps
/// its result, and nearly all are `Ok`.
type Typed<T> = Result<Doc<T>, Box<Finding>>;

impl Entry<'_> {
    /// Types the document and pushes it to `out`.
    fn typed<T>(self, out: &mut Vec<Doc<T>>) -> Result<(), Finding>
    where
        T: DeserializeOwned + Send + Sync + 'static,
    {
        let r = match self {
            Entry::Shared(src) => match shared_typed::<T>(src).downcast_ref::<Typed<T>>() {
                Some(r) => r.clone(),
                // A path is always read as the same kind, and `Kind::with_type` names the
                // type the model holds; building afresh keeps this correct even if not.
                None => {
                    debug_assert!(false, "{} typed as another type", src.path);
                    type_doc::<T>(src.own_spans(), src.value.clone())
                }
            },
            Entry::Merged(m) => {
                let MergedDoc { spans, value } = *m;
                type_doc::<T>(spans, Stored::Tree(Arc::new(value)))
            }
        };
        r.map(|typed| out.push(typed)).map_err(|e| *e)
    }
}

fn type_doc<T: DeserializeOwned>(spans: DocSpans, value: Stored) -> Typed<T> {
    let spec = value.deserialize::<T>();
    typed_doc(spans, value, spec)
}

/// A document typed as `spec`, or the finding that says why it could not be.
fn typed_doc<T>(spans: DocSpans, value: Stored, spec: Result<T, serde_json::Error>) -> Typed<T> {
    match spec {
        Ok(spec) => Ok(Doc(Arc::new(DocData { spans, value, spec }))),
        Err(e) => {
            let (file, pos) = spans.locate("");
            Err(Box::new(
                Finding::new(
                    "schema.invalid",
                    file,
                    pos,
                    format!("document does not match its kind: {e}"),
                )
                .help("fix the document to match its schema"),
            ))
        }
    }
}

/// A hash map for the rules' look-ups by id: tens of thousands of string keys per view, where
/// SipHash (the standard map's) was a tenth of the rules' time.
pub type IdMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Index of documents by an id, reporting duplicates.
pub fn index_by<'a, T>(
    docs: &'a [Doc<T>],
    id: impl Fn(&T) -> &str,
    pointer: &str,
    what: &str,
    findings: &mut Vec<Finding>,
) -> IdMap<&'a str, &'a Doc<T>> {
    let mut map: IdMap<&str, &Doc<T>> =
        IdMap::with_capacity_and_hasher(docs.len(), Default::default());
    for d in docs {
        let key = id(&d.spec);
        // One probe per document: an id seen before is the rare case.
        let first = match map.entry(key) {
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(d);
                continue;
            }
            std::collections::hash_map::Entry::Occupied(o) => *o.get(),
        };
        let (path, pos) = d.at(pointer);
        findings.push(
            Finding::new(
                "id.duplicate",
                path,
                pos,
                format!("{what} id `{key}` is already declared in {}", first.path()),
            )
            .help("ids are unique; rename one of them (renaming a file never renames an id)"),
        );
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_json_reads_back_as_the_same_tree_in_the_same_order() {
        let v = serde_json::json!({"z": 1, "a": [1.5, "x", {"k": null, "b": true}], "m": -7});
        let s = Stored::keep(Kind::Tenant, false, v.clone());
        assert!(matches!(s, Stored::Json(_)));
        let back = s.to_value();
        assert_eq!(back, v);
        let keys: Vec<&String> = back.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["z", "a", "m"]);
        assert_eq!(*s.tree(), v);
    }

    #[test]
    fn rule_read_kinds_overlays_and_deep_values_stay_trees() {
        let v = serde_json::json!({"a": 1});
        for kind in [Kind::Dashboard, Kind::AlertRules, Kind::Manifest] {
            assert!(matches!(
                Stored::keep(kind, false, v.clone()),
                Stored::Tree(_)
            ));
        }
        assert!(matches!(
            Stored::keep(Kind::Tenant, true, v),
            Stored::Tree(_)
        ));
        let mut deep = serde_json::json!(1);
        for _ in 0..(JSON_DEPTH + 1) {
            deep = serde_json::json!([deep]);
        }
        let s = Stored::keep(Kind::Tenant, false, deep.clone());
        assert!(matches!(s, Stored::Tree(_)));
        assert_eq!(s.to_value(), deep);
        let mut shallow = serde_json::json!(1);
        for _ in 0..JSON_DEPTH {
            shallow = serde_json::json!([shallow]);
        }
        let s = Stored::keep(Kind::Tenant, false, shallow.clone());
        assert!(matches!(s, Stored::Json(_)));
        assert_eq!(s.to_value(), shallow);
    }

    #[test]
    fn typing_from_json_fails_with_the_message_the_tree_gives() {
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct T {
            id: String,
            n: u8,
        }
        let v = serde_json::json!({"id": "x", "n": 300});
        let tree_err = <T as serde::Deserialize>::deserialize(&v)
            .unwrap_err()
            .to_string();
        let s = Stored::keep(Kind::Tenant, false, v);
        assert_eq!(s.deserialize::<T>().unwrap_err().to_string(), tree_err);
        let ok = Stored::keep(Kind::Tenant, false, serde_json::json!({"id": "y", "n": 3}));
        assert_eq!(ok.deserialize::<T>().unwrap().n, 3);
    }
}
