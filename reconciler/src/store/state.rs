//! The reconciler's own records in the `state` bucket: the applied-commit marker, the last known
//! good commit, the marker of an apply in progress, the status the daemon and every refusal
//! write, and approvals.

use std::collections::BTreeMap;

use async_nats::jetstream::kv;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::desired::compile::Bucket;
use crate::outcome::{Decision, RefusalKind, SyncState};
use crate::store::{StoreError, nats_err};

pub const APPLIED: &str = "applied";
pub const LAST_GOOD: &str = "last_good";
pub const INFLIGHT: &str = "apply.inflight";
pub const STATUS: &str = "status";

/// The commit the environment's buckets hold.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Applied {
    pub commit: String,
    /// The env branch head when this was applied; differs from `commit` when pinned.
    #[serde(default)]
    pub branch_head: Option<String>,
    /// Applied with `--rev` behind the branch head (a rollback): the daemon does not move it
    /// forward until the branch itself changes.
    #[serde(default)]
    pub pinned: bool,
    pub plan_id: String,
    pub at: String,
    pub actor: String,
    pub keys: usize,
}

/// The last commit that was applied completely.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LastGood {
    pub commit: String,
    pub at: String,
}

/// An apply in progress. Present after a crash: the next apply records what the interrupted one
/// wrote before it does anything else.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Inflight {
    pub plan_id: String,
    pub commit: String,
    pub started_at: String,
    pub actor: String,
    /// Last sequence of each bucket's stream before the first write.
    pub bucket_seqs: BTreeMap<Bucket, u64>,
    /// Audit stream sequence before the apply's first event.
    pub audit_seq: u64,
}

/// A refusal the status shows until a later commit is applied.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Refusal {
    pub commit: String,
    /// What kind of refusal (records of older versions read as `other`).
    #[serde(default)]
    pub kind: RefusalKind,
    pub reason: String,
    /// `path:line:col: message` of each blocking finding, when validation refused it.
    #[serde(default)]
    pub findings: Vec<String>,
    pub at: String,
}

/// What the environment's reconciler last did, for `vakt status`, the site and automation.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub env: String,
    pub state: SyncState,
    pub applied_commit: Option<String>,
    pub branch_head: Option<String>,
    /// Commits the applied one is behind the branch head (a pinned rollback).
    #[serde(default)]
    pub pinned_behind: Option<usize>,
    pub last_good: Option<String>,
    #[serde(default)]
    pub refused: Option<Refusal>,
    #[serde(default)]
    pub last_error: Option<String>,
    #[serde(default)]
    pub drifted_keys: usize,
    #[serde(default)]
    pub pending_plan: Option<String>,
    pub leader: Option<String>,
    pub updated_at: String,
}

/// Approval of a gated plan.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Approval {
    pub plan_id: String,
    /// The content digest the approval binds to.
    pub digest: String,
    pub decision: Decision,
    pub requested_by: String,
    pub requested_at: String,
    #[serde(default)]
    pub decided_by: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub decided_at: Option<String>,
    pub expires_at: String,
    pub commit: String,
    /// Gated actions in the plan.
    pub actions: Vec<String>,
}

impl Approval {
    /// A request for approval of a gated plan, bound to its digest, valid until `expires_at`.
    pub fn request(
        plan_id: &str,
        digest: &str,
        requested_by: &str,
        expires_at: String,
        commit: &str,
        actions: Vec<String>,
    ) -> Approval {
        Approval {
            plan_id: plan_id.to_owned(),
            digest: digest.to_owned(),
            decision: Decision::Pending,
            requested_by: requested_by.to_owned(),
            requested_at: crate::store::audit::now_rfc3339(),
            decided_by: None,
            reason: None,
            decided_at: None,
            expires_at,
            commit: commit.to_owned(),
            actions,
        }
    }
}

/// Reads a JSON record and its revision.
pub async fn get<T: DeserializeOwned>(
    kv: &kv::Store,
    key: &str,
) -> Result<Option<(T, u64)>, StoreError> {
    let Some(e) = kv.entry(key).await.map_err(|e| nats_err("read state", e))? else {
        return Ok(None);
    };
    if e.operation != kv::Operation::Put {
        return Ok(None);
    }
    let v = serde_json::from_slice(&e.value).map_err(|err| StoreError::Nats {
        op: format!("decode state record `{key}`"),
        message: err.to_string(),
    })?;
    Ok(Some((v, e.revision)))
}

/// Writes a JSON record unconditionally (records only the reconciler writes).
pub async fn put<T: Serialize>(kv: &kv::Store, key: &str, v: &T) -> Result<u64, StoreError> {
    let b = serde_json::to_vec(v).map_err(|e| nats_err("encode state", e))?;
    kv.put(key, b.into())
        .await
        .map_err(|e| nats_err("write state", e))
}

/// Deletes a record.
pub async fn delete(kv: &kv::Store, key: &str) -> Result<(), StoreError> {
    kv.delete(key)
        .await
        .map_err(|e| nats_err("delete state", e))
}

/// Reads, changes and writes back a record with compare-and-set, retrying on conflict.
pub async fn update<T, F>(kv: &kv::Store, key: &str, f: F) -> Result<T, StoreError>
where
    T: Serialize + DeserializeOwned + Default,
    F: FnMut(&mut T),
{
    update_fenced(kv, key, || Ok(()), f).await
}

/// [`update`] with `fence` checked right before each write (after the read's round trip), so
/// a writer paused during the read finds out before writing, not only before reading.
pub async fn update_fenced<T, F>(
    kv: &kv::Store,
    key: &str,
    fence: impl Fn() -> Result<(), StoreError>,
    mut f: F,
) -> Result<T, StoreError>
where
    T: Serialize + DeserializeOwned + Default,
    F: FnMut(&mut T),
{
    for _ in 0..10 {
        let (mut v, rev) = match get::<T>(kv, key).await? {
            Some((v, r)) => (v, Some(r)),
            None => (T::default(), None),
        };
        f(&mut v);
        fence()?;
        let b: bytes::Bytes = serde_json::to_vec(&v)
            .map_err(|e| nats_err("encode state", e))?
            .into();
        let r = match rev {
            Some(r) => kv
                .update(key, b, r)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            None => kv
                .create(key, b)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
        };
        if r.is_ok() {
            return Ok(v);
        }
    }
    Err(nats_err(
        "update state",
        format!("`{key}` kept changing under concurrent writers"),
    ))
}
