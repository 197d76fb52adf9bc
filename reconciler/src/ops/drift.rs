//! Drift: the live buckets compared with the desired state of the applied commit. Each drifted
//! key says what was expected, what is there, and what last wrote it (from the key's history).

use serde::Serialize;
use serde_json::Value;

use crate::desired::compile::{Bucket, Desired};
use crate::desired::plan::{self, Action, FieldChange};
use crate::store::{Store, StoreError};

/// Who wrote a live value.
#[derive(Debug, Clone, Serialize)]
pub struct Writer {
    pub revision: u64,
    pub at: String,
    pub operation: String,
    /// `vakt` when the value carries vakt's metadata with a matching digest, else `outside vakt`.
    pub by: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DriftItem {
    pub bucket: Bucket,
    pub key: String,
    /// changed | missing | orphan | not-declared
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_digest: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actual_digest: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actual: Option<Value>,
    pub fields: Vec<FieldChange>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_writer: Option<Writer>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DriftReport {
    pub env: String,
    /// The commit compared against (the applied one).
    pub commit: String,
    pub in_sync: bool,
    pub keys_checked: usize,
    pub drifted: Vec<DriftItem>,
    pub orphans: Vec<DriftItem>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Compares the live buckets with `desired`.
pub async fn drift(store: &Store, desired: &Desired) -> Result<DriftReport, StoreError> {
    let live = store.snapshot().await?;
    let p = plan::plan_live(desired, &live);
    let mut drifted = Vec::new();
    let mut orphans = Vec::new();
    for c in p.changes.iter().chain(&p.orphans_kept) {
        let actual = live
            .get(&(c.bucket, c.key.clone()))
            .filter(|l| !l.deleted)
            .map(|l| plan::view(&l.value));
        let last_writer = last_writer(store, c.bucket, &c.key).await?;
        let kind = match c.action {
            Action::Add => "missing",
            Action::Change => "changed",
            Action::Remove if c.orphan => "orphan",
            Action::Remove => "not-declared",
        };
        let item = DriftItem {
            bucket: c.bucket,
            key: c.key.clone(),
            kind: kind.into(),
            path: c.path.clone(),
            expected_digest: c.to_digest.clone(),
            actual_digest: actual.as_ref().and_then(|a| a.digest.clone()),
            expected: desired.get(c.bucket, &c.key).map(|e| e.spec_value()),
            actual: actual.and_then(|a| a.spec),
            fields: c.fields.clone(),
            last_writer,
            reason: c.reason.clone(),
        };
        if c.action == Action::Remove {
            orphans.push(item);
        } else {
            drifted.push(item);
        }
    }
    Ok(DriftReport {
        env: desired.env.clone(),
        commit: desired.commit.clone(),
        in_sync: drifted.is_empty() && orphans.is_empty(),
        keys_checked: live.len().max(desired.len()),
        drifted,
        orphans,
        note: None,
    })
}

async fn last_writer(store: &Store, b: Bucket, key: &str) -> Result<Option<Writer>, StoreError> {
    let hist = store.history(b, key).await.unwrap_or_default();
    let Some(last) = hist.last() else {
        return Ok(None);
    };
    let v = plan::view(&last.value);
    let by_vakt =
        last.operation == "put" && v.commit.is_some() && !v.tampered && v.foreign.is_none();
    Ok(Some(Writer {
        revision: last.revision,
        at: last.created.clone(),
        operation: last.operation.into(),
        by: if by_vakt {
            "vakt".into()
        } else if last.operation == "put" {
            "outside vakt".into()
        } else {
            format!("outside vakt ({})", last.operation)
        },
        commit: if by_vakt { v.commit } else { None },
    }))
}

/// Renders a drift report for a terminal.
pub fn render_human(r: &DriftReport) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Drift for env {} against commit {}: {} keys checked",
        r.env,
        &r.commit[..r.commit.len().min(12)],
        r.keys_checked
    );
    if let Some(n) = &r.note {
        let _ = writeln!(s, "{n}");
    }
    if r.in_sync {
        let _ = writeln!(s, "In sync.");
        return s;
    }
    for d in r.drifted.iter().chain(&r.orphans) {
        let _ = writeln!(s, "\n{} {}/{}", d.kind, d.bucket, d.key);
        if let Some(p) = &d.path {
            let _ = writeln!(s, "  declared in {p}");
        }
        if let Some(reason) = &d.reason {
            let _ = writeln!(s, "  {reason}");
        }
        let _ = writeln!(
            s,
            "  expected {}  actual {}",
            d.expected_digest.as_deref().unwrap_or("(absent)"),
            d.actual_digest.as_deref().unwrap_or("(absent)")
        );
        for f in &d.fields {
            let _ = writeln!(
                s,
                "  {}: expected {} actual {}",
                f.pointer,
                f.new.as_ref().map_or("(absent)".into(), |v| v.to_string()),
                f.old.as_ref().map_or("(absent)".into(), |v| v.to_string())
            );
        }
        if let Some(w) = &d.last_writer {
            let _ = writeln!(
                s,
                "  last written by {} at {} (revision {}{})",
                w.by,
                w.at,
                w.revision,
                w.commit
                    .as_ref()
                    .map(|c| format!(", commit {}", &c[..c.len().min(12)]))
                    .unwrap_or_default()
            );
        }
    }
    let _ = writeln!(
        s,
        "\n{} drifted, {} orphaned.",
        r.drifted.len(),
        r.orphans.len()
    );
    s
}
