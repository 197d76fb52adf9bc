//! Plans: what an apply would do. A plan compares a desired state with either another commit's
//! desired state (pull requests: no NATS needed) or the live KV buckets, and says per key: add,
//! change (with a field-level diff) or remove; orphans; which gated actions it contains and the
//! policy that gates them; and its impact on tenants, services and sites.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;

use opsrepo::model::{GatedAction, Policy};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::desired::canon;
use crate::desired::compile::{Bucket, Desired, KeyId};

/// What happens to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Add,
    Change,
    Remove,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Add => "add",
            Action::Change => "change",
            Action::Remove => "remove",
        }
    }
    fn sign(self) -> char {
        match self {
            Action::Add => '+',
            Action::Change => '~',
            Action::Remove => '-',
        }
    }
}

/// One changed leaf of a spec, by JSON pointer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldChange {
    pub pointer: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new: Option<Value>,
}

/// One key the plan writes or removes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Change {
    pub bucket: Bucket,
    pub key: String,
    pub action: Action,
    /// The file that declares the key (the one that declared it, for removals).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_digest: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to_digest: Option<String>,
    /// The live revision the write is conditional on (0: the key must not exist). Only in live
    /// plans.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_revision: Option<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub fields: Vec<FieldChange>,
    /// Gated actions this change contains (whether or not the policy gates them).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub actions: Vec<GatedAction>,
    /// Why, when it is not simply "Git changed": drift, an orphan, a foreign value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Removal of a key Git never declared (or that another writer created).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub orphan: bool,
}

/// A gated action present in the plan and the policy that gates it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Gate {
    pub action: GatedAction,
    pub policy: String,
    pub keys: Vec<String>,
}

/// Who and what a plan touches.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Impact {
    pub tenants: BTreeSet<String>,
    pub services: BTreeSet<String>,
    pub sites: BTreeSet<String>,
}

/// What the plan was computed against.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Against {
    /// Another commit's desired state (no NATS involved).
    Commit { commit: String },
    /// An empty state (the first apply of a commit, compared with nothing).
    Empty,
    /// The live KV buckets.
    Live,
}

impl Against {
    /// For people: `commit 3f2a9c1b7d4e` (`wrap` puts the id in markdown backticks),
    /// `an empty state`, `live NATS KV`.
    fn describe(&self, wrap: &str) -> String {
        match self {
            Against::Commit { commit } => format!("{wrap}{}{wrap}", super::short(commit)),
            Against::Empty => "an empty state".into(),
            Against::Live => "live NATS KV".into(),
        }
    }
}

/// A plan.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    /// `plan-<12 hex>`: a digest of the environment, the head commit and every change, so an
    /// approval binds to exactly this content.
    pub id: String,
    pub digest: String,
    pub env: String,
    pub head: String,
    pub against: Against,
    pub changes: Vec<Change>,
    /// Orphans left in place because the policy does not prune (reported only).
    pub orphans_kept: Vec<Change>,
    /// Gated actions the policy requires approval for.
    pub gates: Vec<Gate>,
    pub impact: Impact,
    pub counts: Counts,
    /// Keys compared.
    pub keys: usize,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Counts {
    pub add: usize,
    pub change: usize,
    pub remove: usize,
    pub orphans_kept: usize,
}

impl Plan {
    /// A plan with no changes (what a refusal before planning carries).
    pub fn empty(env: &str, head: &str) -> Plan {
        Plan {
            id: String::new(),
            digest: String::new(),
            env: env.to_owned(),
            head: head.to_owned(),
            against: Against::Live,
            changes: Vec::new(),
            orphans_kept: Vec::new(),
            gates: Vec::new(),
            impact: Impact::default(),
            counts: Counts::default(),
            keys: 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    pub fn deletions(&self) -> usize {
        self.counts.remove
    }
}

/// A plan computed against the live buckets, with the last stream sequence of each bucket read
/// just before the snapshot. Every key the plan read had a revision at or below its bucket's
/// sequence, so "no bucket moved past its sequence" means "no key the plan read has changed".
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LivePlan {
    pub plan: Plan,
    pub read_seqs: BTreeMap<Bucket, u64>,
}

/// A live KV entry (the latest operation on the key).
#[derive(Debug, Clone)]
pub struct LiveEntry {
    pub revision: u64,
    pub value: bytes::Bytes,
    /// The latest operation is a delete marker (the key reads as absent).
    pub deleted: bool,
}

/// What a live value says about itself.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveView {
    /// Digest of the canonical spec actually stored (not the digest the value claims).
    pub digest: Option<String>,
    pub spec: Option<Value>,
    /// `vakt` metadata if present.
    pub path: Option<String>,
    pub commit: Option<String>,
    pub env: Option<String>,
    /// The value claims a digest that does not match its spec: edited by hand.
    pub tampered: bool,
    /// The value is not a JSON object with a `spec`.
    pub foreign: Option<String>,
}

/// Parses a live value.
pub fn view(value: &[u8]) -> LiveView {
    let mut v = LiveView {
        digest: None,
        spec: None,
        path: None,
        commit: None,
        env: None,
        tampered: false,
        foreign: None,
    };
    let parsed: Value = match serde_json::from_slice(value) {
        Ok(p) => p,
        Err(e) => {
            v.foreign = Some(format!("live value is not JSON ({e})"));
            return v;
        }
    };
    let Some(spec) = parsed.get("spec") else {
        v.foreign = Some("live value has no `spec` (not written by vakt)".into());
        return v;
    };
    let d = canon::digest(&canon::to_vec(spec));
    let meta = parsed.get("vakt");
    let s = |k: &str| {
        meta.and_then(|m| m.get(k))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    v.path = s("path");
    v.commit = s("commit");
    v.env = s("env");
    v.tampered = s("digest").is_some_and(|claimed| claimed != d);
    v.digest = Some(d);
    v.spec = Some(spec.clone());
    v
}

/// True when `live` is exactly what vakt writes for `e` (from any commit): `{"spec":` followed
/// by `e`'s canonical spec bytes, then `,"vakt":` and a metadata object whose claimed digest is
/// `e`'s, then `}`. The same verdict as [`view`] (digest equal, not tampered) for such values,
/// found with one byte comparison and a parse of the small metadata object instead of parsing,
/// canonicalising and hashing the spec; any other shape falls back to [`view`].
fn written_by_vakt_for(live: &[u8], e: &crate::desired::compile::Entry) -> bool {
    #[derive(Deserialize)]
    struct Meta<'a> {
        #[serde(borrow)]
        digest: std::borrow::Cow<'a, str>,
    }
    let Some(rest) = live
        .strip_prefix(b"{\"spec\":")
        .and_then(|r| r.strip_prefix(&*e.spec))
        .and_then(|r| r.strip_prefix(b",\"vakt\":"))
        .and_then(|r| r.strip_suffix(b"}"))
    else {
        return false;
    };
    rest.first() == Some(&b'{')
        && serde_json::from_slice::<Meta<'_>>(rest).is_ok_and(|m| m.digest == e.digest.as_str())
}

/// Plans `head` against another commit's desired state (`base`), or against nothing.
pub fn plan_commits(base: Option<&Desired>, head: &Desired) -> Plan {
    let policy = &head.manifest.environments[&head.env].policy;
    let mut changes = Vec::new();
    let empty = BTreeMap::new();
    let base_entries = base.map_or(&empty, |b| &b.entries);
    for (k, e) in &head.entries {
        match base_entries.get(k) {
            None => changes.push(change(k, Action::Add, Some(&e.path), None, Some(e), None)),
            Some(b) if b.digest != e.digest => {
                let old = b.spec_value();
                changes.push(change(
                    k,
                    Action::Change,
                    Some(&e.path),
                    Some((&b.digest, &old)),
                    Some(e),
                    None,
                ));
            }
            Some(_) => {}
        }
    }
    for (k, b) in base_entries {
        if !head.entries.contains_key(k) {
            let old = b.spec_value();
            changes.push(change(
                k,
                Action::Remove,
                Some(&b.path),
                Some((&b.digest, &old)),
                None,
                None,
            ));
        }
    }
    let against = match base {
        Some(b) => Against::Commit {
            commit: b.commit.clone(),
        },
        None => Against::Empty,
    };
    finish(
        head,
        against,
        changes,
        Vec::new(),
        policy,
        head.entries.len(),
        true,
    )
}

/// Plans `head` against `base` comparing only `touched` keys (from an incremental recompile):
/// the cost follows the size of the change, not of the repo.
pub fn plan_touched(base: &Desired, head: &Desired, touched: &[KeyId]) -> Plan {
    let policy = &head.manifest.environments[&head.env].policy;
    let mut changes = Vec::new();
    for k in touched {
        match (base.entries.get(k), head.entries.get(k)) {
            (None, Some(e)) => {
                changes.push(change(k, Action::Add, Some(&e.path), None, Some(e), None))
            }
            (Some(b), Some(e)) if b.digest != e.digest => {
                let old = b.spec_value();
                changes.push(change(
                    k,
                    Action::Change,
                    Some(&e.path),
                    Some((&b.digest, &old)),
                    Some(e),
                    None,
                ));
            }
            (Some(b), None) => {
                let old = b.spec_value();
                changes.push(change(
                    k,
                    Action::Remove,
                    Some(&b.path),
                    Some((&b.digest, &old)),
                    None,
                    None,
                ));
            }
            _ => {}
        }
    }
    let against = Against::Commit {
        commit: base.commit.clone(),
    };
    finish(
        head,
        against,
        changes,
        Vec::new(),
        policy,
        head.entries.len(),
        true,
    )
}

/// Plans `head` against the live buckets. `live` maps every key of the managed buckets to its
/// latest entry (delete markers included, so a re-creation names the marker's revision).
pub fn plan_live(head: &Desired, live: &BTreeMap<KeyId, LiveEntry>) -> Plan {
    plan_live_with(head, live, true)
}

/// [`plan_live`] without its impact summary (`impact` left empty): for an apply that computes
/// it with [`impact`] while the writes are in flight, off the path to the first write. Every
/// other member, the id included, is the one [`plan_live`] gives.
pub fn plan_live_deferred(head: &Desired, live: &BTreeMap<KeyId, LiveEntry>) -> Plan {
    plan_live_with(head, live, false)
}

fn plan_live_with(head: &Desired, live: &BTreeMap<KeyId, LiveEntry>, with_impact: bool) -> Plan {
    let policy = &head.manifest.environments[&head.env].policy;
    // At least this many keys are additions (declared, not live): room for them at once, so a
    // first apply of 50,000 keys does not grow (copy, and fault in fresh pages for) the list
    // seventeen times on the way to its first write. An applied state reserves nothing.
    let mut changes = Vec::with_capacity(head.entries.len().saturating_sub(live.len()));
    let mut kept = Vec::new();
    for (k, e) in &head.entries {
        match live.get(k) {
            None => changes.push(change(
                k,
                Action::Add,
                Some(&e.path),
                None,
                Some(e),
                Some(0),
            )),
            Some(l) if l.deleted => changes.push(change(
                k,
                Action::Add,
                Some(&e.path),
                None,
                Some(e),
                Some(l.revision),
            )),
            Some(l) if written_by_vakt_for(&l.value, e) => {}
            Some(l) => {
                let lv = view(&l.value);
                if lv.digest.as_deref() == Some(e.digest.as_str()) && !lv.tampered {
                    continue;
                }
                let reason = if let Some(f) = &lv.foreign {
                    Some(f.clone())
                } else if lv.tampered {
                    Some("live spec was edited outside vakt (its digest no longer matches)".into())
                } else if lv.commit.is_some() {
                    None
                } else {
                    Some("live value was not written by vakt".into())
                };
                let old = lv.spec.clone().unwrap_or(Value::Null);
                let from = lv.digest.clone().unwrap_or_else(|| "(not JSON)".into());
                let mut c = change(
                    k,
                    Action::Change,
                    Some(&e.path),
                    Some((&from, &old)),
                    Some(e),
                    Some(l.revision),
                );
                c.reason = reason;
                changes.push(c);
            }
        }
    }
    for (k, l) in live {
        if l.deleted || head.entries.contains_key(k) {
            continue;
        }
        let lv = view(&l.value);
        let ours = lv.env.as_deref() == Some(head.env.as_str()) && lv.path.is_some();
        let old = lv.spec.clone().unwrap_or(Value::Null);
        let from = lv.digest.clone().unwrap_or_else(|| "(not JSON)".into());
        let mut c = change(
            k,
            Action::Remove,
            lv.path.as_deref(),
            Some((&from, &old)),
            None,
            Some(l.revision),
        );
        c.orphan = !ours;
        c.reason = Some(if ours {
            "no longer declared in Git".into()
        } else {
            "orphan: not declared in Git and not written by vakt for this environment".into()
        });
        if policy.prune {
            changes.push(c);
        } else {
            c.reason = Some(format!(
                "{} (kept: prune is off for this environment)",
                c.reason.unwrap_or_default()
            ));
            kept.push(c);
        }
    }
    finish(
        head,
        Against::Live,
        changes,
        kept,
        policy,
        head.entries.len().max(live.len()),
        with_impact,
    )
}

fn change(
    k: &KeyId,
    action: Action,
    path: Option<&str>,
    old: Option<(&String, &Value)>,
    new: Option<&crate::desired::compile::Entry>,
    from_revision: Option<u64>,
) -> Change {
    // Parse the new spec only when there is an old one to compare with (adds need neither a
    // field diff nor a shard comparison; this keeps a 50k-key first apply cheap).
    let new_value = if old.is_some() {
        new.map(|e| e.spec_value())
    } else {
        None
    };
    let fields = match (&old, &new_value) {
        (Some((_, o)), Some(n)) => field_diff(o, n),
        _ => Vec::new(),
    };
    let mut c = Change {
        bucket: k.0,
        key: k.1.clone(),
        action,
        path: path.map(str::to_owned),
        from_digest: old.map(|(d, _)| d.clone()),
        to_digest: new.map(|e| e.digest.clone()),
        from_revision,
        fields,
        actions: Vec::new(),
        reason: None,
        orphan: false,
    };
    c.actions = classify(&c, old.map(|(_, v)| v), new_value.as_ref());
    c
}

/// The gated actions a change contains.
fn classify(c: &Change, old: Option<&Value>, new: Option<&Value>) -> Vec<GatedAction> {
    let mut out = Vec::new();
    if c.action == Action::Remove {
        out.push(GatedAction::Deletion);
    }
    match c.bucket {
        Bucket::Placement if c.action == Action::Change => {
            let shard = |v: Option<&Value>| v.and_then(|v| v.get("shard")).cloned();
            if shard(old) != shard(new) {
                out.push(GatedAction::PlacementMove);
            }
        }
        Bucket::Definitions => out.push(GatedAction::DefinitionChange),
        Bucket::Access => out.push(GatedAction::AccessChange),
        _ => {}
    }
    out
}

fn finish(
    head: &Desired,
    against: Against,
    mut changes: Vec<Change>,
    mut kept: Vec<Change>,
    policy: &Policy,
    keys: usize,
    with_impact: bool,
) -> Plan {
    // Usually in order already (the desired keys are walked in order, removals follow them
    // only when there are any): then the sort, and its scratch buffer, are skipped.
    let order = |a: &Change, b: &Change| (a.bucket, &a.key).cmp(&(b.bucket, &b.key));
    if !changes.is_sorted_by(|a, b| order(a, b).is_le()) {
        changes.sort_by(order);
    }
    kept.sort_by(order);
    let mut gates: BTreeMap<String, Gate> = BTreeMap::new();
    for c in &changes {
        for a in &c.actions {
            if policy.require_approval.contains(a) {
                let name = serde_json::to_value(a)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                gates
                    .entry(name.clone())
                    .or_insert_with(|| Gate {
                        action: *a,
                        policy: format!(
                            "vakt.toml [environments.{}.policy] require_approval includes \"{name}\"",
                            head.env
                        ),
                        keys: Vec::new(),
                    })
                    .keys
                    .push(format!("{}/{}", c.bucket, c.key));
            }
        }
    }
    // Each change's impact reads its spec (four fields, the rest skipped): in parallel, one
    // set of names per worker, merged.
    let impact = if with_impact {
        changes
            .par_iter()
            .chain(kept.par_iter())
            .fold(Impact::default, |mut acc, c| {
                impact_of(head, c, &mut acc);
                acc
            })
            .reduce(Impact::default, |mut a, b| {
                a.tenants.extend(b.tenants);
                a.services.extend(b.services);
                a.sites.extend(b.sites);
                a
            })
    } else {
        Impact::default()
    };
    let counts = Counts {
        add: changes.iter().filter(|c| c.action == Action::Add).count(),
        change: changes
            .iter()
            .filter(|c| c.action == Action::Change)
            .count(),
        remove: changes
            .iter()
            .filter(|c| c.action == Action::Remove)
            .count(),
        orphans_kept: kept.len(),
    };
    // SHA-256 of the environment, the head and one line per change, hashed line by line (the
    // same bytes as hashing them joined, without holding them: 6 MB for 50,000 changes).
    let mut h = Sha256::new();
    let mut line = Vec::with_capacity(256);
    line.extend_from_slice(head.env.as_bytes());
    line.push(0);
    line.extend_from_slice(head.commit.as_bytes());
    h.update(&line);
    for c in &changes {
        line.clear();
        // Writing to a Vec cannot fail.
        let _ = write!(
            line,
            "\n{} {} {} {:?} {:?}",
            c.action.as_str(),
            c.bucket,
            c.key,
            c.from_revision,
            c.to_digest
        );
        h.update(&line);
    }
    let digest = hex_digest(h);
    Plan {
        id: format!("plan-{}", &digest[7..19]),
        digest,
        env: head.env.clone(),
        head: head.commit.clone(),
        against,
        changes,
        orphans_kept: kept,
        gates: gates.into_values().collect(),
        impact,
        counts,
        keys,
    }
}

/// `h`'s digest as [`canon::digest`] writes it.
fn hex_digest(h: Sha256) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(7 + 64);
    s.push_str("sha256:");
    for b in h.finalize() {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 15)]));
    }
    s
}

/// The impact summary of `plan` (its changes and the orphans it keeps) on one thread: what
/// [`plan_live`] puts in `impact` and [`plan_live_deferred`] leaves out.
pub fn impact(head: &Desired, plan: &Plan) -> Impact {
    let mut out = Impact::default();
    for c in plan.changes.iter().chain(&plan.orphans_kept) {
        impact_of(head, c, &mut out);
    }
    out
}

fn impact_of(head: &Desired, c: &Change, out: &mut Impact) {
    /// Inserts `s` unless it is there (most changes name a tenant or site already seen).
    fn add(set: &mut BTreeSet<String>, s: &str) {
        if !set.contains(s) {
            set.insert(s.to_owned());
        }
    }
    let mut parts = c.key.split('.');
    let (first, second, third) = (parts.next(), parts.next(), parts.next());
    match (c.bucket, first, second, third) {
        (Bucket::Config, Some("tenant"), Some(t), _) => add(&mut out.tenants, t),
        (Bucket::Placement, Some(sk), Some(t), None) => {
            add(&mut out.tenants, t);
            add(&mut out.services, sk);
        }
        (Bucket::Inventory, Some("service"), Some(k), None) => add(&mut out.services, k),
        (Bucket::Inventory, Some("site"), Some(s), None) => add(&mut out.sites, s),
        _ => {}
    }
    let Some(spec) = head.get(c.bucket, &c.key) else {
        return;
    };
    let spec = ImpactFields::of(&spec.spec);
    for s in [&spec.site, &spec.home_site].into_iter().flatten() {
        add(&mut out.sites, s);
    }
    if let Some(s) = &spec.service_kind {
        add(&mut out.services, s);
    }
    if c.bucket == Bucket::Placement
        && let Some(shard) = &spec.shard
        && let Some(e) = head.get(Bucket::Inventory, &format!("shard.{shard}"))
        && let Some(site) = &ImpactFields::of(&e.spec).site
    {
        add(&mut out.sites, site);
    }
}

/// The fields of a spec an impact summary reads. A plan of 50,000 additions reads them from
/// every spec: the other fields are skipped as raw JSON instead of being built into a tree, and
/// a string without escapes is borrowed from the spec (the summary copies only a name it has
/// not seen yet). A field that is not a string reads as absent, as the tree lookups this
/// replaces did.
struct ImpactFields<'a> {
    site: Option<std::borrow::Cow<'a, str>>,
    home_site: Option<std::borrow::Cow<'a, str>>,
    service_kind: Option<std::borrow::Cow<'a, str>>,
    shard: Option<std::borrow::Cow<'a, str>>,
}

impl<'a> ImpactFields<'a> {
    fn of(spec: &'a [u8]) -> ImpactFields<'a> {
        use serde_json::value::RawValue;
        use std::borrow::Cow;
        #[derive(Default, serde::Deserialize)]
        #[serde(default)]
        struct Raw<'a> {
            #[serde(borrow)]
            site: Option<&'a RawValue>,
            #[serde(borrow)]
            home_site: Option<&'a RawValue>,
            #[serde(borrow)]
            service_kind: Option<&'a RawValue>,
            #[serde(borrow)]
            shard: Option<&'a RawValue>,
        }
        let raw: Raw<'a> = serde_json::from_slice(spec).unwrap_or_default();
        let string = |r: Option<&'a RawValue>| {
            let r = r.filter(|r| r.get().starts_with('"'))?.get();
            // Borrowed when the JSON string has no escapes; decoded otherwise.
            match serde_json::from_str::<&'a str>(r) {
                Ok(s) => Some(Cow::Borrowed(s)),
                Err(_) => serde_json::from_str::<String>(r).ok().map(Cow::Owned),
            }
        };
        ImpactFields {
            site: string(raw.site),
            home_site: string(raw.home_site),
            service_kind: string(raw.service_kind),
            shard: string(raw.shard),
        }
    }
}

/// Leaf-level differences between two values, by JSON pointer (at most 50).
pub fn field_diff(old: &Value, new: &Value) -> Vec<FieldChange> {
    let mut out = Vec::new();
    diff_into("", old, new, &mut out);
    out.truncate(50);
    out
}

fn diff_into(ptr: &str, old: &Value, new: &Value, out: &mut Vec<FieldChange>) {
    if old == new || out.len() > 50 {
        return;
    }
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for k in keys {
                let p = format!("{ptr}/{}", opsrepo::parse::escape_segment(k));
                match (a.get(k), b.get(k)) {
                    (Some(x), Some(y)) => diff_into(&p, x, y, out),
                    (x, y) => out.push(FieldChange {
                        pointer: p,
                        old: x.cloned(),
                        new: y.cloned(),
                    }),
                }
            }
        }
        _ => out.push(FieldChange {
            pointer: if ptr.is_empty() {
                "/".into()
            } else {
                ptr.into()
            },
            old: Some(old.clone()),
            new: Some(new.clone()),
        }),
    }
}

fn short(v: &Option<Value>) -> String {
    match v {
        None => "(absent)".into(),
        Some(v) => {
            let s = v.to_string();
            if s.chars().count() > 80 {
                format!("{}…", s.chars().take(79).collect::<String>())
            } else {
                s
            }
        }
    }
}

fn gate_name(a: GatedAction) -> String {
    serde_json::to_value(a)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Renders a plan for a terminal.
pub fn render_human(p: &Plan, color: bool) -> String {
    use std::fmt::Write;
    let (g, y, r, b, z) = if color {
        ("\x1b[32m", "\x1b[33m", "\x1b[31m", "\x1b[1m", "\x1b[0m")
    } else {
        ("", "", "", "", "")
    };
    let mut s = String::new();
    let against = match &p.against {
        Against::Commit { .. } => format!("commit {}", p.against.describe("")),
        other => other.describe(""),
    };
    let _ = writeln!(
        s,
        "{b}Plan {}{z} for env {b}{}{z}: commit {} against {against}",
        p.id,
        p.env,
        super::short(&p.head)
    );
    if p.changes.is_empty() && p.orphans_kept.is_empty() {
        let _ = writeln!(s, "No changes. {} keys in sync.", p.keys);
        return s;
    }
    let mut bucket = None;
    for c in &p.changes {
        if bucket != Some(c.bucket) {
            let _ = writeln!(s, "\n{b}{}{z}", c.bucket);
            bucket = Some(c.bucket);
        }
        let col = match c.action {
            Action::Add => g,
            Action::Change => y,
            Action::Remove => r,
        };
        let _ = write!(s, "  {col}{} {}{z}", c.action.sign(), c.key);
        if let Some(path) = &c.path {
            let _ = write!(s, "  ({path})");
        }
        if !c.actions.is_empty() {
            let names: Vec<String> = c.actions.iter().map(|a| gate_name(*a)).collect();
            let _ = write!(s, "  [{}]", names.join(", "));
        }
        let _ = writeln!(s);
        if let Some(reason) = &c.reason {
            let _ = writeln!(s, "      {reason}");
        }
        for f in &c.fields {
            let _ = writeln!(
                s,
                "      {}: {} → {}",
                f.pointer,
                short(&f.old),
                short(&f.new)
            );
        }
    }
    if !p.orphans_kept.is_empty() {
        let _ = writeln!(s, "\n{b}Orphans kept (prune is off){z}");
        for c in &p.orphans_kept {
            let _ = writeln!(s, "  ? {}/{}", c.bucket, c.key);
        }
    }
    let _ = writeln!(
        s,
        "\n{} to add, {} to change, {} to remove{}.",
        p.counts.add,
        p.counts.change,
        p.counts.remove,
        if p.counts.orphans_kept > 0 {
            format!(", {} orphans kept", p.counts.orphans_kept)
        } else {
            String::new()
        }
    );
    let list = |set: &BTreeSet<String>| {
        if set.is_empty() {
            "none".to_owned()
        } else {
            set.iter().cloned().collect::<Vec<_>>().join(", ")
        }
    };
    let _ = writeln!(
        s,
        "Impact: tenants {}; services {}; sites {}.",
        list(&p.impact.tenants),
        list(&p.impact.services),
        list(&p.impact.sites)
    );
    for gt in &p.gates {
        let _ = writeln!(
            s,
            "{y}Needs approval{z}: {} ({} key(s)); {}. Run `vakt approve {} --reason …`.",
            gate_name(gt.action),
            gt.keys.len(),
            gt.policy,
            p.id
        );
    }
    s
}

fn md_escape(s: &str) -> String {
    s.replace('|', "\\|")
        .replace('`', "'")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Renders a plan as GitHub-flavoured markdown, ready to post as a pull request comment.
pub fn render_markdown(p: &Plan) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let against = p.against.describe("`");
    let _ = writeln!(
        s,
        "### vakt plan for `{}`: `{}` against {against}\n",
        p.env,
        super::short(&p.head)
    );
    if p.changes.is_empty() && p.orphans_kept.is_empty() {
        let _ = writeln!(s, "No changes: {} keys in sync.", p.keys);
        return s;
    }
    let _ = writeln!(
        s,
        "**{}** to add, **{}** to change, **{}** to remove{} · plan `{}`\n",
        p.counts.add,
        p.counts.change,
        p.counts.remove,
        if p.counts.orphans_kept > 0 {
            format!(", **{}** orphans kept", p.counts.orphans_kept)
        } else {
            String::new()
        },
        p.id
    );
    if !p.gates.is_empty() {
        let _ = writeln!(
            s,
            "> [!WARNING]\n> This plan needs an operator's approval before it is applied:"
        );
        for g in &p.gates {
            let _ = writeln!(
                s,
                "> - **{}** ({} key(s)): {}",
                gate_name(g.action),
                g.keys.len(),
                md_escape(&g.policy)
            );
        }
        let _ = writeln!(
            s,
            ">\n> After merge the reconciler holds these changes until an operator runs `vakt approve <plan> --env {} --reason \"…\"`; the live plan id is in the reconciler's status and its `apply.refused` audit event.\n",
            p.env
        );
    }
    let list = |set: &BTreeSet<String>| {
        if set.is_empty() {
            "none".to_owned()
        } else {
            set.iter()
                .map(|x| format!("`{}`", md_escape(x)))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    let _ = writeln!(
        s,
        "Impact: tenants {} · services {} · sites {}\n",
        list(&p.impact.tenants),
        list(&p.impact.services),
        list(&p.impact.sites)
    );
    let _ = writeln!(
        s,
        "| | bucket | key | source | detail |\n|---|---|---|---|---|"
    );
    for c in p.changes.iter().chain(&p.orphans_kept) {
        let mut detail: Vec<String> = c
            .fields
            .iter()
            .take(5)
            .map(|f| {
                format!(
                    "`{}`: {} → {}",
                    md_escape(&f.pointer),
                    md_escape(&short(&f.old)),
                    md_escape(&short(&f.new))
                )
            })
            .collect();
        if c.fields.len() > 5 {
            detail.push(format!("… {} more", c.fields.len() - 5));
        }
        if let Some(r) = &c.reason {
            detail.insert(0, md_escape(r));
        }
        let gates: Vec<String> = c
            .actions
            .iter()
            .map(|a| format!("**{}**", gate_name(*a)))
            .collect();
        if !gates.is_empty() {
            detail.push(gates.join(" "));
        }
        let sign = if p.orphans_kept.iter().any(|k| std::ptr::eq(k, c)) {
            "?"
        } else {
            c.action.as_str()
        };
        let _ = writeln!(
            s,
            "| {} | {} | `{}` | {} | {} |",
            sign,
            c.bucket,
            md_escape(&c.key),
            c.path
                .as_deref()
                .map(|p| format!("`{}`", md_escape(p)))
                .unwrap_or_default(),
            detail.join("<br>")
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn impact_fields_read_strings_and_nothing_else() {
        let f = ImpactFields::of(
            br#"{"a":{"site":"x"},"site":"osl1","home_site":"b\u00e5d","service_kind":7,"shard":null,"z":[1,2]}"#,
        );
        assert_eq!(f.site.as_deref(), Some("osl1"));
        assert_eq!(f.home_site.as_deref(), Some("båd"));
        // No escapes: borrowed from the spec, not copied.
        assert!(matches!(f.site, Some(std::borrow::Cow::Borrowed(_))));
        assert_eq!(f.service_kind, None);
        assert_eq!(f.shard, None);
        for bad in [&b"[1]"[..], b"", b"{\"site\":", b"\"s\""] {
            let f = ImpactFields::of(bad);
            assert!(f.site.is_none() && f.home_site.is_none() && f.shard.is_none());
        }
    }

    const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

    /// The bundled repo's dev state (the workspace root is the bundled ops repo).
    fn desired() -> Desired {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let files = opsrepo::read_work_tree(&root).expect("read the bundled repo");
        Desired::compile(&files, "dev", COMMIT).expect("compile")
    }

    /// The live state a fresh apply of `d` would leave: every key at revision 1, 2, …
    fn live_of(d: &Desired) -> BTreeMap<KeyId, LiveEntry> {
        d.entries
            .iter()
            .enumerate()
            .map(|(i, (k, e))| {
                (
                    k.clone(),
                    LiveEntry {
                        revision: i as u64 + 1,
                        value: bytes::Bytes::from(e.value(&d.env)),
                        deleted: false,
                    },
                )
            })
            .collect()
    }

    fn key(b: Bucket, k: &str) -> KeyId {
        (b, k.to_owned())
    }

    /// The byte-level shortcut agrees with the full parse on every shape of live value.
    #[test]
    fn the_fast_in_sync_check_agrees_with_the_full_view() {
        let d = desired();
        let agree = |value: &[u8], e: &crate::desired::compile::Entry| {
            let lv = view(value);
            let full = lv.digest.as_deref() == Some(e.digest.as_str()) && !lv.tampered;
            let fast = written_by_vakt_for(value, e);
            // the shortcut may only say "in sync" when the full view does
            assert!(!fast || full, "{}", String::from_utf8_lossy(value));
            fast
        };
        let mut checked = 0;
        for e in d.entries.values().take(50) {
            let mine = e.value("dev");
            assert!(agree(&mine, e), "vakt's own value is in sync");
            // written by another commit, for another env: the spec is what counts
            let mut other = e.clone();
            other.commit = "f".repeat(40);
            assert!(agree(&other.value("staging"), e));
            // a claimed digest that is not the spec's (tampered metadata)
            let forged = String::from_utf8(mine.clone())
                .unwrap()
                .replace(&e.digest, "sha256:00");
            assert!(!agree(forged.as_bytes(), e));
            // trailing data, a second spec, whitespace, a truncated value
            let mut trailing = mine.clone();
            trailing.extend_from_slice(b" x");
            assert!(!agree(&trailing, e));
            let dup = [&mine[..mine.len() - 1], b",\"spec\":1}"].concat();
            assert!(!agree(&dup, e));
            let spaced = [b"{ ".as_slice(), &mine[1..]].concat();
            assert!(
                !written_by_vakt_for(&spaced, e),
                "other shapes take the full path"
            );
            assert!(!agree(&mine[..mine.len() - 2], e));
            checked += 1;
        }
        assert_eq!(checked, 50);
    }

    /// A live state that differs from Git in one key of each kind: missing (add), edited by
    /// hand (change), and an extra key (remove or orphan).
    fn scenario() -> (Desired, BTreeMap<KeyId, LiveEntry>) {
        let d = desired();
        let mut live = live_of(&d);
        live.remove(&key(Bucket::Config, "global.platform"));
        let t = key(Bucket::Config, "tenant.fjord-logistics.tenant");
        let mut v: Value = serde_json::from_slice(&live[&t].value).unwrap();
        v["spec"]["status"] = "suspended".into();
        live.get_mut(&t).unwrap().value = bytes::Bytes::from(serde_json::to_vec(&v).unwrap());
        live.insert(
            key(Bucket::Config, "tenant.gone.tenant"),
            LiveEntry {
                revision: 9_999,
                value: bytes::Bytes::from_static(
                    br#"{"spec":{"name":"gone"},"vakt":{"commit":"c","digest":"sha256:0","env":"dev","path":"config/tenants/gone/tenant.toml"}}"#,
                ),
                deleted: false,
            },
        );
        (d, live)
    }

    #[test]
    fn a_live_plan_adds_changes_and_removes_exactly_what_differs() {
        let (d, live) = scenario();
        let p = plan_live(&d, &live);
        let got: Vec<(Action, &str, Option<u64>)> = p
            .changes
            .iter()
            .map(|c| (c.action, c.key.as_str(), c.from_revision))
            .collect();
        let rev = |k: &str| live[&key(Bucket::Config, k)].revision;
        let mut want = vec![
            (Action::Add, "global.platform", Some(0)),
            (
                Action::Change,
                "tenant.fjord-logistics.tenant",
                Some(rev("tenant.fjord-logistics.tenant")),
            ),
        ];
        if d.manifest.environments["dev"].policy.prune {
            want.push((Action::Remove, "tenant.gone.tenant", Some(9_999)));
        }
        assert_eq!(got, want);
        let change = &p.changes[1];
        assert_eq!(change.fields.len(), 1, "{:?}", change.fields);
        assert_eq!(change.fields[0].pointer, "/status");
        assert_eq!(change.fields[0].old, Some("suspended".into()));
        assert!(
            change
                .reason
                .as_deref()
                .unwrap_or("")
                .contains("edited outside vakt"),
            "a hand edit is named as such: {:?}",
            change.reason
        );
    }

    #[test]
    fn a_deferred_plan_is_the_plan_and_its_impact_is_computed_after() {
        let (d, live) = scenario();
        // The orphan kept or removed, with and without changes: the impact covers both lists.
        for live in [live.clone(), BTreeMap::new(), live_of(&d)] {
            let whole = plan_live(&d, &live);
            let mut deferred = plan_live_deferred(&d, &live);
            assert_eq!(deferred.id, whole.id);
            assert_eq!(deferred.digest, whole.digest);
            assert_eq!(deferred.changes.len(), whole.changes.len());
            assert_eq!(deferred.orphans_kept.len(), whole.orphans_kept.len());
            assert!(deferred.impact.tenants.is_empty() && deferred.impact.sites.is_empty());
            deferred.impact = impact(&d, &deferred);
            assert_eq!(
                serde_json::to_value(&deferred).unwrap(),
                serde_json::to_value(&whole).unwrap()
            );
        }
        assert!(
            !impact(&d, &plan_live(&d, &BTreeMap::new()))
                .tenants
                .is_empty()
        );
    }

    #[test]
    fn the_plan_id_binds_to_the_revisions_it_read() {
        let (d, live) = scenario();
        let a = plan_live(&d, &live);
        assert_eq!(a.id, plan_live(&d, &live).id, "same inputs, same plan");
        let mut moved = live.clone();
        moved
            .get_mut(&key(Bucket::Config, "tenant.fjord-logistics.tenant"))
            .unwrap()
            .revision += 1;
        let b = plan_live(&d, &moved);
        assert_ne!(a.id, b.id, "an approval of one never covers the other");
        assert_ne!(a.digest, b.digest);
        // Nothing differs: an empty plan.
        let same = live_of(&d);
        assert!(plan_live(&d, &same).is_empty());
    }

    #[test]
    fn plan_renderers_snapshot() {
        let (d, live) = scenario();
        let p = plan_live(&d, &live);
        insta::assert_snapshot!("plan_human", render_human(&p, false));
        insta::assert_snapshot!("plan_markdown", render_markdown(&p));
    }
}
