//! `compile(commit, env)`: the desired state of one environment, bucket → key → value, per the KV
//! contract (README "The NATS KV contract", ARCHITECTURE "Keys come from paths"). Values are canonical JSON `{"spec": …, "vakt": {commit, digest, env,
//! path}}`; `digest` is over the canonical spec, so an unchanged document gives an unchanged
//! digest and the plan never touches its key.
//!
//! Compilation is incremental: [`Desired::recompile`] takes the paths a Git tree diff reports
//! and recomputes only the keys those files feed (an overlay feeds the keys of its base).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;

use opsrepo::Finding;
use opsrepo::kinds::{Kind, kind_of_base_path, split_overlay};
use opsrepo::load::Stored;
use opsrepo::model::{Binding, Manifest};
use opsrepo::parse::{self, Format};
use opsrepo::source::RepoFiles;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::desired::canon;

/// The KV buckets vakt manages with content from Git.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Bucket {
    Config,
    Definitions,
    Placement,
    Access,
    Catalog,
    Inventory,
}

impl Bucket {
    pub const ALL: [Bucket; 6] = [
        Bucket::Config,
        Bucket::Definitions,
        Bucket::Placement,
        Bucket::Access,
        Bucket::Catalog,
        Bucket::Inventory,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Bucket::Config => "config",
            Bucket::Definitions => "definitions",
            Bucket::Placement => "placement",
            Bucket::Access => "access",
            Bucket::Catalog => "catalog",
            Bucket::Inventory => "inventory",
        }
    }

    pub fn from_name(s: &str) -> Option<Bucket> {
        Bucket::ALL.into_iter().find(|b| b.as_str() == s)
    }
}

impl fmt::Display for Bucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A bucket and a key in it.
pub type KeyId = (Bucket, String);

/// One desired KV entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The file that declares it (the base path; the overlay path for overlay-only documents).
    pub path: String,
    /// Canonical JSON of the spec.
    pub spec: Arc<[u8]>,
    /// `sha256:<hex>` of `spec`.
    pub digest: String,
    /// The commit that last changed the spec, as far as this compiler knows.
    pub commit: String,
}

impl Entry {
    /// The KV value: canonical JSON `{"spec": …, "vakt": {"commit","digest","env","path"}}`.
    pub fn value(&self, env: &str) -> Vec<u8> {
        // Written directly (keys already in canonical order) rather than through a `Value`:
        // this runs once per key on the apply path.
        let mut out = Vec::with_capacity(
            self.spec.len()
                + self.commit.len()
                + self.digest.len()
                + env.len()
                + self.path.len()
                + 64,
        );
        out.extend_from_slice(b"{\"spec\":");
        out.extend_from_slice(&self.spec);
        for (key, v) in [
            (&b",\"vakt\":{\"commit\":"[..], self.commit.as_str()),
            (b",\"digest\":", &self.digest),
            (b",\"env\":", env),
            (b",\"path\":", &self.path),
        ] {
            out.extend_from_slice(key);
            canon::write_str(v, &mut out);
        }
        out.extend_from_slice(b"}}");
        out
    }

    pub fn spec_value(&self) -> Value {
        serde_json::from_slice(&self.spec).unwrap_or(Value::Null)
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum CompileError {
    #[error("environment `{env}` is not declared in vakt.toml (declared: {declared})")]
    UnknownEnv { env: String, declared: String },
    #[error("vakt.toml is missing or does not parse; run `vakt validate` for details")]
    NoManifest,
    #[error("{path}:{line}:{col}: {message}", path = .0.path, line = .0.line, col = .0.col, message = .0.message)]
    Parse(Box<Finding>),
    #[error("{path}: {message}")]
    Key { path: String, message: String },
    #[error("{0}")]
    Git(String),
}

/// Stats of one incremental recompile.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RecompileStats {
    pub changed_files: usize,
    pub documents_recompiled: usize,
    pub keys_removed: usize,
    pub keys_written: usize,
    /// Every key the affected documents fed before or feed now: the only keys a plan between
    /// the two commits needs to compare.
    #[serde(skip)]
    pub touched: Vec<KeyId>,
}

/// The desired state of one environment at one commit.
#[derive(Debug, Clone)]
pub struct Desired {
    pub env: String,
    pub commit: String,
    pub manifest: Manifest,
    pub entries: BTreeMap<KeyId, Entry>,
    /// Base path → the keys it feeds.
    by_base: HashMap<String, Vec<KeyId>>,
}

/// A base path with its base and overlay bytes.
type DocInput<'a> = (&'a str, Option<&'a [u8]>, Option<&'a [u8]>);

/// A file's bytes as read from a commit or a work tree.
pub type ReadFn<'a> = dyn Fn(&str) -> Result<Option<Vec<u8>>, CompileError> + 'a;

impl Desired {
    /// Compiles every document of `files` for `env`.
    /// Compiles `env` from the documents validation already parsed (`opsrepo::load::parse_all`,
    /// then `Parsed0::into_values`): one parse of a commit serves validation and compile. Equal
    /// to [`Desired::compile`] of the same files. Consumes the values: each document's value is
    /// freed as soon as its keys are compiled (when nothing else shares it), so the parse and
    /// the compiled state are not both whole in memory.
    pub fn compile_parsed(
        values: opsrepo::load::Values,
        env: &str,
        commit: &str,
    ) -> Result<Desired, CompileError> {
        let manifest = values.manifest.ok_or(CompileError::NoManifest)?;
        check_env(&manifest, env)?;
        let allow_orphan = manifest.environments[env].policy.allow_overlay_without_base;
        let mut bases: BTreeMap<String, Stored> = BTreeMap::new();
        let mut overlays: BTreeMap<String, Stored> = BTreeMap::new();
        for d in values.docs {
            match d.env.as_deref() {
                None => {
                    bases.insert(d.base_path, d.value);
                }
                Some(e) if e == env => {
                    overlays.insert(d.base_path, d.value);
                }
                Some(_) => {}
            }
        }
        // (base path, base value, overlay value)
        type Pair = (String, Option<Stored>, Option<Stored>);
        let mut work: Vec<Pair> = Vec::new();
        for (p, b) in bases {
            let o = overlays.remove(&p);
            work.push((p, Some(b), o));
        }
        if allow_orphan {
            work.extend(overlays.into_iter().map(|(p, o)| (p, None, Some(o))));
        }
        let bindings = &manifest.bindings;
        let paths: Vec<String> = work.iter().map(|w| w.0.clone()).collect();
        let compiled: Vec<Result<Vec<(KeyId, Entry)>, CompileError>> = work
            .into_par_iter()
            .map(|(p, b, o)| match kind_of_base_path(&p, bindings) {
                Some(kind) if feeds_kv(kind) => {
                    // One document's tree at a time: read back from compact JSON here.
                    let o = o.map(|o| o.tree());
                    compile_values(kind, env, &p, b.map(|b| b.to_value()), o.as_deref(), commit)
                }
                _ => Ok(Vec::new()),
            })
            .collect();
        assemble(
            env,
            commit,
            manifest,
            paths.iter().map(String::as_str),
            compiled,
        )
    }

    pub fn compile(files: &RepoFiles, env: &str, commit: &str) -> Result<Desired, CompileError> {
        let manifest = manifest_of(
            files
                .files
                .iter()
                .find(|f| f.path == "vakt.toml")
                .and_then(|f| f.content.as_ref().ok())
                .map(Vec::as_slice),
        )?;
        check_env(&manifest, env)?;
        let allow_orphan = manifest.environments[env].policy.allow_overlay_without_base;
        let bindings = manifest.bindings.clone();
        let mut bases: BTreeMap<&str, &[u8]> = BTreeMap::new();
        let mut overlays: BTreeMap<&str, &[u8]> = BTreeMap::new();
        for f in &files.files {
            let Ok(bytes) = &f.content else {
                let finding = f.content.as_ref().err().cloned().unwrap_or_else(|| {
                    Finding::new(
                        "input.unreadable",
                        &f.path,
                        Default::default(),
                        "unreadable",
                    )
                });
                return Err(CompileError::Parse(Box::new(finding)));
            };
            match split_overlay(&f.path) {
                Some((e, rest)) if e == env => {
                    overlays.insert(rest, bytes);
                }
                Some(_) => {}
                None => {
                    bases.insert(&f.path, bytes);
                }
            }
        }
        let work: Vec<DocInput<'_>> = pair_documents(&bases, &overlays, allow_orphan);
        let compiled: Vec<Result<Vec<(KeyId, Entry)>, CompileError>> = work
            .par_iter()
            .map(|(p, b, o)| compile_doc(&bindings, env, p, *b, *o, commit))
            .collect();
        assemble(env, commit, manifest, work.iter().map(|w| w.0), compiled)
    }

    fn insert_doc(&mut self, base: &str, items: Vec<(KeyId, Entry)>) -> Result<(), CompileError> {
        let mut keys = Vec::with_capacity(items.len());
        for (k, e) in items {
            if let Some(prev) = self.entries.get(&k)
                && prev.path != e.path
            {
                return Err(CompileError::Key {
                    path: e.path,
                    message: format!(
                        "key `{}` in bucket `{}` is also declared by {}; each key has one source",
                        k.1, k.0, prev.path
                    ),
                });
            }
            keys.push(k.clone());
            self.entries.insert(k, e);
        }
        if !keys.is_empty() {
            self.by_base.insert(base.to_owned(), keys);
        }
        Ok(())
    }

    /// Recomputes the keys fed by `changed` paths (added, modified or deleted between
    /// `self.commit` and `commit`); `read` returns a path's bytes at `commit` (`None` if absent).
    /// Returns `Ok(None)` when the change needs a full compile (vakt.toml changed).
    pub fn recompile(
        &mut self,
        changed: &[String],
        read: &ReadFn<'_>,
        commit: &str,
    ) -> Result<Option<RecompileStats>, CompileError> {
        if changed.iter().any(|p| p == "vakt.toml") {
            return Ok(None);
        }
        let env = self.env.clone();
        let allow_orphan = self.manifest.environments[&env]
            .policy
            .allow_overlay_without_base;
        let mut affected: BTreeSet<&str> = BTreeSet::new();
        for p in changed {
            match split_overlay(p) {
                Some((e, rest)) if e == env => {
                    affected.insert(rest);
                }
                Some(_) => {}
                None => {
                    affected.insert(p);
                }
            }
        }
        let bindings = self.manifest.bindings.clone();
        // Read sequentially (Git object access is not shared across threads), compile in
        // parallel.
        let mut inputs = Vec::with_capacity(affected.len());
        for base in &affected {
            let b = read(base)?;
            let o = if b.is_none() && !allow_orphan {
                None
            } else {
                read(&format!("environments/{env}/{base}"))?
            };
            inputs.push((*base, b, o));
        }
        let results: Vec<Result<Vec<(KeyId, Entry)>, CompileError>> = inputs
            .par_iter()
            .map(|(base, b, o)| {
                compile_doc(&bindings, &env, base, b.as_deref(), o.as_deref(), commit)
            })
            .collect();
        let mut stats = RecompileStats {
            changed_files: changed.len(),
            documents_recompiled: affected.len(),
            ..Default::default()
        };
        let mut old: HashMap<KeyId, Entry> = HashMap::new();
        for base in &affected {
            for k in self.by_base.remove(*base).unwrap_or_default() {
                if let Some(e) = self.entries.remove(&k) {
                    stats.touched.push(k.clone());
                    old.insert(k, e);
                }
            }
        }
        for (r, base) in results.into_iter().zip(&affected) {
            let mut items = r?;
            for (k, e) in &mut items {
                if let Some(o) = old.remove(k)
                    && o.digest == e.digest
                {
                    e.commit = o.commit;
                }
                stats.keys_written += 1;
                stats.touched.push(k.clone());
            }
            self.insert_doc(base, items)?;
        }
        stats.keys_removed = old.len();
        stats.touched.sort();
        stats.touched.dedup();
        self.commit = commit.to_owned();
        Ok(Some(stats))
    }

    pub fn get(&self, bucket: Bucket, key: &str) -> Option<&Entry> {
        self.entries.get(&(bucket, key.to_owned()))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries of one bucket, in key order.
    pub fn bucket(&self, bucket: Bucket) -> impl Iterator<Item = (&str, &Entry)> {
        self.entries
            .range((bucket, String::new())..)
            .take_while(move |((b, _), _)| *b == bucket)
            .map(|((_, k), e)| (k.as_str(), e))
    }

    /// The digest of the whole desired state (every key and spec digest), for comparing
    /// compilations.
    pub fn fingerprint(&self) -> String {
        let mut s = Vec::new();
        for ((b, k), e) in &self.entries {
            s.extend_from_slice(b.as_str().as_bytes());
            s.push(0);
            s.extend_from_slice(k.as_bytes());
            s.push(0);
            s.extend_from_slice(e.digest.as_bytes());
            s.push(b'\n');
        }
        canon::digest(&s)
    }
}

fn check_env(m: &Manifest, env: &str) -> Result<(), CompileError> {
    if m.environments.contains_key(env) {
        Ok(())
    } else {
        Err(CompileError::UnknownEnv {
            env: env.to_owned(),
            declared: m.env_names(),
        })
    }
}

/// The documents of one environment's view, by base path: every base with its overlay, and
/// overlays without a base where the policy allows them.
fn pair_documents<'a, T: Copy>(
    bases: &BTreeMap<&'a str, T>,
    overlays: &BTreeMap<&'a str, T>,
    allow_orphan: bool,
) -> Vec<(&'a str, Option<T>, Option<T>)> {
    let mut work: Vec<(&'a str, Option<T>, Option<T>)> = bases
        .iter()
        .map(|(p, b)| (*p, Some(*b), overlays.get(p).copied()))
        .collect();
    if allow_orphan {
        for (p, o) in overlays {
            if !bases.contains_key(p) {
                work.push((p, None, Some(*o)));
            }
        }
    }
    work
}

/// The desired state from the keys each document compiled to (in the order of `paths`); a key
/// two documents declare is an error naming both.
fn assemble<'a>(
    env: &str,
    commit: &str,
    manifest: Manifest,
    paths: impl Iterator<Item = &'a str>,
    compiled: Vec<Result<Vec<(KeyId, Entry)>, CompileError>>,
) -> Result<Desired, CompileError> {
    let mut d = Desired {
        env: env.to_owned(),
        commit: commit.to_owned(),
        manifest,
        entries: BTreeMap::new(),
        by_base: HashMap::new(),
    };
    for (r, p) in compiled.into_iter().zip(paths) {
        d.insert_doc(p, r?)?;
    }
    Ok(d)
}

/// Parses `vakt.toml`.
pub fn manifest_of(bytes: Option<&[u8]>) -> Result<Manifest, CompileError> {
    let bytes = bytes.ok_or(CompileError::NoManifest)?;
    let text = parse::decode("vakt.toml", bytes).map_err(|f| CompileError::Parse(Box::new(f)))?;
    let p = parse::parse("vakt.toml", Format::Toml, text)
        .map_err(|f| CompileError::Parse(Box::new(f)))?;
    serde_json::from_value(p.value).map_err(|_| CompileError::NoManifest)
}

fn parse_value(path: &str, bytes: &[u8]) -> Result<Value, CompileError> {
    let text = parse::decode(path, bytes).map_err(|f| CompileError::Parse(Box::new(f)))?;
    let format = Format::from_path(path).unwrap_or(Format::Toml);
    parse::parse(path, format, text)
        .map(|p| p.value)
        .map_err(|f| CompileError::Parse(Box::new(f)))
}

/// Compiles one document (base and/or overlay) into its keys.
fn compile_doc(
    bindings: &[Binding],
    env: &str,
    base_path: &str,
    base: Option<&[u8]>,
    overlay: Option<&[u8]>,
    commit: &str,
) -> Result<Vec<(KeyId, Entry)>, CompileError> {
    let Some(kind) = kind_of_base_path(base_path, bindings) else {
        return Ok(Vec::new());
    };
    if !feeds_kv(kind) {
        return Ok(Vec::new());
    }
    let overlay_path = format!("environments/{env}/{base_path}");
    let base = base.map(|b| parse_value(base_path, b)).transpose()?;
    let overlay = overlay.map(|o| parse_value(&overlay_path, o)).transpose()?;
    compile_values(kind, env, base_path, base, overlay.as_ref(), commit)
}

/// Compiles one document from its parsed values: base ⊕ overlay (RFC 7386), its keys, their
/// canonical specs and digests.
fn compile_values(
    kind: Kind,
    env: &str,
    base_path: &str,
    base: Option<Value>,
    overlay: Option<&Value>,
    commit: &str,
) -> Result<Vec<(KeyId, Entry)>, CompileError> {
    let (value, path) = match (base, overlay) {
        (Some(mut v), Some(ov)) => {
            opsrepo::load::merge_patch(&mut v, ov);
            (v, base_path.to_owned())
        }
        (Some(v), None) => (v, base_path.to_owned()),
        (None, Some(ov)) => (ov.clone(), format!("environments/{env}/{base_path}")),
        (None, None) => return Ok(Vec::new()),
    };
    let specs = keys_for(kind, base_path, value).map_err(|message| CompileError::Key {
        path: path.clone(),
        message,
    })?;
    specs
        .into_iter()
        .map(|(bucket, key, spec)| {
            check_key(&key).map_err(|message| CompileError::Key {
                path: path.clone(),
                message,
            })?;
            let bytes = canon::to_vec(&spec);
            let digest = canon::digest(&bytes);
            Ok((
                (bucket, key),
                Entry {
                    path: path.clone(),
                    spec: Arc::from(bytes),
                    digest,
                    commit: commit.to_owned(),
                },
            ))
        })
        .collect()
}

/// Whether documents of this kind are compiled into KV. Dashboards, saved queries, datasources
/// and alert rules go to Grafana and vmalert, runbook markdown to the site.
pub fn feeds_kv(kind: Kind) -> bool {
    !matches!(
        kind,
        Kind::Manifest
            | Kind::Runbook
            | Kind::Datasources
            | Kind::SavedQuery
            | Kind::Dashboard
            | Kind::AlertRules
            | Kind::Exporter
    )
}

fn stem(path: &str) -> &str {
    let name = path.rsplit('/').next().unwrap_or(path);
    name.rsplit_once('.').map_or(name, |(s, _)| s)
}

/// The keys a document feeds, with the spec of each.
pub fn keys_for(
    kind: Kind,
    base_path: &str,
    value: Value,
) -> Result<Vec<(Bucket, String, Value)>, String> {
    let segs: Vec<&str> = base_path.split('/').collect();
    let name = stem(base_path);
    let one = |b: Bucket, k: String, v: Value| Ok(vec![(b, k, v)]);
    match kind {
        Kind::GlobalConfig | Kind::ConfigItem | Kind::Tenant => match segs.as_slice() {
            ["config", "global", _] => one(Bucket::Config, format!("global.{name}"), value),
            ["config", "tenants", t, _] => one(Bucket::Config, format!("tenant.{t}.{name}"), value),
            _ => Err(format!(
                "config documents live under config/global/ or config/tenants/<tenant>/, not {base_path}"
            )),
        },
        Kind::Aggregate => one(Bucket::Definitions, format!("aggregate.{name}"), value),
        Kind::Projection => one(Bucket::Definitions, format!("projection.{name}"), value),
        Kind::Saga => one(Bucket::Definitions, format!("saga.{name}"), value),
        Kind::EffectProvider => one(Bucket::Definitions, format!("effect.{name}"), value),
        Kind::DefinitionManifest => one(Bucket::Definitions, format!("manifest.{name}"), value),
        Kind::Site => one(Bucket::Inventory, format!("site.{name}"), value),
        Kind::Node => one(Bucket::Inventory, format!("node.{name}"), value),
        Kind::Shard => one(Bucket::Inventory, format!("shard.{name}"), value),
        Kind::Service => one(Bucket::Inventory, format!("service.{name}"), value),
        Kind::Role => one(Bucket::Access, format!("role.{name}"), value),
        Kind::RoleBinding => one(Bucket::Access, format!("binding.{name}"), value),
        Kind::DrStore => one(Bucket::Catalog, format!("dr.{name}"), value),
        Kind::Placement => {
            let tenant = value
                .get("tenant")
                .and_then(Value::as_str)
                .ok_or("placement has no `tenant`")?
                .to_owned();
            let shards = value
                .get("shards")
                .and_then(Value::as_object)
                .ok_or("placement has no `shards` table")?;
            shards
                .iter()
                .map(|(sk, shard)| {
                    let shard = shard
                        .as_str()
                        .ok_or_else(|| format!("shards.{sk} is not a shard id"))?;
                    Ok((
                        Bucket::Placement,
                        format!("{sk}.{tenant}"),
                        json!({"tenant": tenant, "service_kind": sk, "shard": shard}),
                    ))
                })
                .collect()
        }
        Kind::RunbookCatalog => {
            let list = value
                .get("runbooks")
                .and_then(Value::as_array)
                .ok_or("catalog has no `runbooks` list")?;
            list.iter()
                .map(|r| {
                    let id = r
                        .get("id")
                        .and_then(Value::as_str)
                        .ok_or("a catalog entry has no `id`")?;
                    Ok((Bucket::Catalog, format!("runbook.{id}"), r.clone()))
                })
                .collect()
        }
        Kind::Manifest
        | Kind::Runbook
        | Kind::Datasources
        | Kind::SavedQuery
        | Kind::Dashboard
        | Kind::AlertRules
        | Kind::Exporter => Ok(Vec::new()),
    }
}

/// NATS KV keys: `[-/_=.a-zA-Z0-9]+`, no leading or trailing `.`.
pub fn check_key(key: &str) -> Result<(), String> {
    let ok = !key.is_empty()
        && !key.starts_with('.')
        && !key.ends_with('.')
        && !key.contains("..")
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-/_=.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{key}` is not a valid NATS KV key (letters, digits and -/_=. only); rename the file or id"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kv_value_is_the_canonical_json_of_spec_and_metadata() {
        let spec = canon::to_vec(&json!({"b": [1, "x\"y"], "a": {"z": null}}));
        let e = Entry {
            path: "config/tenants/ä \"q\"/tenant.toml".into(),
            digest: canon::digest(&spec),
            spec: spec.into(),
            commit: "0123abc".into(),
        };
        let v: Value = serde_json::from_slice(&e.value("dev\n")).unwrap();
        assert_eq!(canon::to_vec(&v), e.value("dev\n"), "canonical");
        assert_eq!(
            v["vakt"],
            json!({"commit": "0123abc", "digest": e.digest, "env": "dev\n", "path": e.path})
        );
        assert_eq!(canon::to_vec(&v["spec"]), &*e.spec);
    }

    #[test]
    fn placement_feeds_one_key_per_service_kind() {
        let v = json!({"tenant": "acme", "shards": {"gateway": "gw-1", "runner": "run-1"}});
        let keys = keys_for(Kind::Placement, "inventory/placement/acme.toml", v).unwrap();
        let names: Vec<_> = keys.iter().map(|(b, k, _)| (*b, k.as_str())).collect();
        assert_eq!(
            names,
            [
                (Bucket::Placement, "gateway.acme"),
                (Bucket::Placement, "runner.acme")
            ]
        );
        assert_eq!(keys[0].2["shard"], "gw-1");
    }

    #[test]
    fn config_keys_follow_the_layout() {
        let k = |p| {
            keys_for(Kind::ConfigItem, p, json!({})).unwrap()[0]
                .1
                .clone()
        };
        assert_eq!(k("config/global/auth.toml"), "global.auth");
        assert_eq!(
            k("config/tenants/acme/retention.toml"),
            "tenant.acme.retention"
        );
        assert!(check_key("tenant.acme.x").is_ok());
        assert!(check_key("tenant.ac me").is_err());
        assert!(check_key("a..b").is_err());
    }

    #[test]
    fn value_is_canonical_json_with_sorted_meta() {
        let e = Entry {
            path: "p.toml".into(),
            spec: Arc::from(&b"{\"a\":1}"[..]),
            digest: "sha256:x".into(),
            commit: "c1".into(),
        };
        let v = e.value("dev");
        assert_eq!(
            std::str::from_utf8(&v).unwrap(),
            r#"{"spec":{"a":1},"vakt":{"commit":"c1","digest":"sha256:x","env":"dev","path":"p.toml"}}"#
        );
        let parsed: Value = serde_json::from_slice(&v).unwrap();
        assert_eq!(canon::to_vec(&parsed), v);
    }
}

#[cfg(test)]
mod parsed_tests {
    use super::*;

    #[test]
    fn compiling_the_parsed_documents_equals_compiling_the_files() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let files = opsrepo::read_work_tree(&root).unwrap();
        let parsed = opsrepo::load::parse_all(&files);
        for env in ["dev", "staging", "prod"] {
            let a = Desired::compile(&files, env, "c1").unwrap();
            let b = Desired::compile_parsed(parsed.clone().into_values(), env, "c1").unwrap();
            assert_eq!(a.entries.len(), b.entries.len(), "{env}");
            for (k, e) in &a.entries {
                let f = &b.entries[k];
                assert_eq!((&e.digest, &e.path), (&f.digest, &f.path), "{env} {k:?}");
            }
            assert!(a.entries.len() > 50, "{env}: {}", a.entries.len());
        }
    }
}
