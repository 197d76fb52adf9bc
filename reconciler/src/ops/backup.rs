//! `vakt backup` and `vakt restore`: a verified, checksummed snapshot of an environment's NATS
//! state (the six desired buckets, the state and jobs buckets, and the environment's audit
//! events), and a restore with a preflight that says what it would write before it writes.
//!
//! A backup is a directory, never overwritten:
//!
//! ```text
//! manifest.json          format, id, env, prefix, time, applied commit, every file's size,
//!                        record count and SHA-256
//! manifest.sha256        SHA-256 of manifest.json
//! buckets/<name>.jsonl   one key per line, sorted: {"key","revision","value"|"value_base64"}
//! audit.jsonl            the environment's audit events in stream order: {"seq","event"}
//! ```
//!
//! It is written into a hidden sibling directory, synced, renamed into place, then read back and
//! verified; only a backup that verifies is recorded (`backup.last` in the state bucket and a
//! `backup` audit event). Buckets are read one after another, each with one ordered consumer:
//! every key is a committed value, but the buckets are not one atomic cut (the desired buckets
//! are reproducible from Git in any case).
//!
//! A restore writes with compare-and-set on the revisions its preflight read, republishes the
//! audit events the stream lacks (same ids, so the hash chain continues), and records what it
//! did. Writing over or deleting live keys is destructive: it needs an approval bound to the
//! restore plan's digest (`vakt approve restore-… --reason …`). It refuses while a reconciler
//! holds the environment's lease, and when the live audit trail has events the backup does not
//! (the chain would fork) unless told to leave the audit trail alone.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use base64::Engine as _;
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::Error;
use crate::desired::compile::Bucket;
use crate::desired::plan::LiveEntry;
use crate::fault;
use crate::ops::approvals::Gate;
use crate::store::audit::{self, Audit, AuditEvent, now_rfc3339};
use crate::store::state::{self, Approval};
use crate::store::{self, Store, StoreError, nats_err};

/// Backup format this vakt writes and reads.
pub const FORMAT: u32 = 1;
const MANIFEST: &str = "manifest.json";
const MANIFEST_SUM: &str = "manifest.sha256";
const AUDIT_FILE: &str = "audit.jsonl";
/// State records about backups and restores themselves: a restore neither writes nor deletes
/// them (otherwise the approval a destructive restore waits for would change its own plan);
/// nor the apply in-flight marker (see [`protected`]).
const LAST_BACKUP: &str = "backup.last";
const LAST_RESTORE: &str = "restore.last";
/// Keys listed per bucket in a restore's audit event (the count is always complete).
const AUDIT_KEY_LIMIT: usize = 1000;
/// Writes in flight during a restore.
const WINDOW: usize = 256;

/// Every bucket a backup holds, by the suffix after the prefix (`vakt_dev_config` → `config`).
pub fn bucket_names() -> Vec<&'static str> {
    Bucket::ALL
        .iter()
        .map(|b| b.as_str())
        .chain(["state", "jobs"])
        .collect()
}

fn kv_of<'a>(store: &'a Store, name: &str) -> Option<&'a kv::Store> {
    match name {
        "state" => Some(&store.state),
        "jobs" => Some(&store.jobs),
        n => Bucket::ALL
            .into_iter()
            .find(|b| b.as_str() == n)
            .map(|b| store.kv(b)),
    }
}

fn protected(bucket: &str, key: &str) -> bool {
    bucket == "state"
        && (key == LAST_BACKUP
            || key == LAST_RESTORE
            || key.starts_with("approval.restore-")
            // The in-flight marker names stream sequences of the server it was written on;
            // restored elsewhere it would send the next apply's recovery after the wrong writes.
            || key == state::INFLIGHT)
}

/// What `manifest.json` says.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub id: String,
    pub env: String,
    pub prefix: String,
    pub created_at: String,
    pub created_by: String,
    pub vakt_version: String,
    /// The commit applied to the environment when the backup was taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_commit: Option<String>,
    pub files: Vec<FileEntry>,
}

/// One data file of a backup.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Relative path: `buckets/<name>.jsonl` or `audit.jsonl`.
    pub path: String,
    /// The bucket suffix, for bucket files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    /// Lines (keys or events).
    pub records: usize,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyRecord {
    key: String,
    revision: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value_base64: Option<String>,
}

impl KeyRecord {
    fn new(key: &str, e: &LiveEntry) -> KeyRecord {
        let (value, value_base64) = match std::str::from_utf8(&e.value) {
            Ok(s) => (Some(s.to_owned()), None),
            Err(_) => (
                None,
                Some(base64::engine::general_purpose::STANDARD.encode(&e.value)),
            ),
        };
        KeyRecord {
            key: key.to_owned(),
            revision: e.revision,
            value,
            value_base64,
        }
    }

    fn bytes(&self) -> Result<Bytes, String> {
        match (&self.value, &self.value_base64) {
            (Some(v), None) => Ok(Bytes::from(v.clone().into_bytes())),
            (None, Some(b)) => base64::engine::general_purpose::STANDARD
                .decode(b)
                .map(Bytes::from)
                .map_err(|e| format!("value_base64 is not base64: {e}")),
            _ => Err("a record needs exactly one of value and value_base64".into()),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditRecord {
    seq: u64,
    event: AuditEvent,
}

/// A backup read back and checked: its manifest and contents.
#[derive(Debug, Clone)]
pub struct Verified {
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// SHA-256 of `manifest.json`: identifies the backup's exact contents.
    pub digest: String,
    /// bucket suffix → key → value.
    pub buckets: BTreeMap<String, BTreeMap<String, Bytes>>,
    /// The environment's audit events, in stream order.
    pub events: Vec<AuditEvent>,
}

/// What `vakt backup` reports.
#[derive(Debug, Clone, Serialize)]
pub struct BackupReport {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub digest: String,
}

fn sha256_hex(b: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(b))
}

fn io_err(path: &Path, e: std::io::Error) -> Error {
    Error::Other(format!("{}: {e}", path.display()))
}

fn damaged(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::refused(
        crate::outcome::RefusalKind::RestoreGuard,
        format!(
            "{}: {what}; the backup is damaged or was altered: use another one",
            path.display()
        ),
    )
}

/// Takes a backup of `store`'s environment into `out` (which must not exist), verifies it and
/// records it.
pub async fn backup(
    store: &Store,
    audit: &mut Audit,
    out: &Path,
    actor: &str,
) -> Result<BackupReport, Error> {
    if out.exists() {
        return Err(Error::refused(
            crate::outcome::RefusalKind::RestoreGuard,
            format!(
                "{} already exists; a backup is never overwritten: name a new directory",
                out.display()
            ),
        ));
    }
    let name = out.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
        Error::refused(
            crate::outcome::RefusalKind::RestoreGuard,
            format!("{} names no directory", out.display()),
        )
    })?;
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| io_err(&parent, e))?;
    let tmp = parent.join(format!(".{name}.partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(tmp.join("buckets")).map_err(|e| io_err(&tmp, e))?;
    let r = write_backup(store, &tmp, actor).await;
    let manifest = match r {
        Ok(m) => m,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    fault::hold("backup.written", 0).await;
    std::fs::rename(&tmp, out).map_err(|e| io_err(out, e))?;
    if let Ok(d) = std::fs::File::open(&parent) {
        let _ = d.sync_all();
    }
    fault::hold("backup.renamed", 0).await;
    // Read back what is on disk: only a backup that verifies counts.
    let v = verify(out).await?;
    if v.manifest != manifest {
        return Err(damaged(
            &out.join(MANIFEST),
            "the manifest read back differs from the one written",
        ));
    }
    let record = serde_json::json!({
        "id": manifest.id,
        "at": manifest.created_at,
        "dir": out.canonicalize().unwrap_or_else(|_| out.to_path_buf()),
        "digest": v.digest,
        "keys": manifest.files.iter().filter(|f| f.bucket.is_some()).map(|f| f.records).sum::<usize>(),
        "events": v.events.len(),
        "by": actor,
    });
    state::put(&store.state, LAST_BACKUP, &record).await?;
    let mut ev = AuditEvent::new(
        format!("{}/backup", manifest.id),
        &store.env,
        actor,
        "backup",
        "ok",
    );
    ev.target = Some(out.display().to_string());
    ev.commit = manifest.applied_commit.clone();
    ev.detail = Some(record);
    // The daemon's other writers (jobs, the API) may have extended the chain since this
    // writer last wrote.
    audit.refresh_head().await?;
    audit.record(ev).await?;
    Ok(BackupReport {
        dir: out.to_path_buf(),
        manifest,
        digest: v.digest,
    })
}

/// Writes the files and the manifest into `dir`.
async fn write_backup(store: &Store, dir: &Path, actor: &str) -> Result<Manifest, Error> {
    let created = OffsetDateTime::now_utc();
    let created_at = created
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let stamp = created
        .format(time::macros::format_description!(
            "[year][month][day]T[hour][minute][second]Z"
        ))
        .unwrap_or_default();
    let applied_commit = state::get::<state::Applied>(&store.state, state::APPLIED)
        .await?
        .map(|(a, _)| a.commit);
    let mut files = Vec::new();
    for name in bucket_names() {
        let Some(kv) = kv_of(store, name) else {
            continue;
        };
        let entries = store::snapshot_bucket(kv).await?;
        let path = format!("buckets/{name}.jsonl");
        let mut lines = Vec::new();
        let mut records = 0;
        for (k, e) in entries.iter().filter(|(_, e)| !e.deleted) {
            serde_json::to_writer(&mut lines, &KeyRecord::new(k, e))
                .map_err(|e| Error::Other(e.to_string()))?;
            lines.push(b'\n');
            records += 1;
        }
        files.push(write_file(dir, &path, Some(name), records, &lines)?);
        fault::hold("backup.file", files.len()).await;
    }
    let stream = audit::ensure_stream(&store.js, store.replicas).await?;
    let events = audit::read_events(&stream, &store.env, 1).await?;
    let mut lines = Vec::new();
    for s in &events {
        serde_json::to_writer(
            &mut lines,
            &AuditRecord {
                seq: s.seq,
                event: s.event.clone(),
            },
        )
        .map_err(|e| Error::Other(e.to_string()))?;
        lines.push(b'\n');
    }
    files.push(write_file(dir, AUDIT_FILE, None, events.len(), &lines)?);
    fault::hold("backup.file", files.len()).await;
    // Seconds are not unique (two backups in one second had one id, and the second's audit
    // event was dropped as a duplicate): the id ends in a digest of the exact time, the process
    // and the content.
    let mut tag = Sha256::new();
    tag.update(created.unix_timestamp_nanos().to_le_bytes());
    tag.update(std::process::id().to_le_bytes());
    for f in &files {
        tag.update(f.sha256.as_bytes());
    }
    let tag = format!("{:x}", tag.finalize());
    let manifest = Manifest {
        format: FORMAT,
        id: format!("backup-{}-{stamp}-{}", store.env, &tag[..8]),
        env: store.env.clone(),
        prefix: store.prefix.clone(),
        created_at,
        created_by: actor.to_owned(),
        vakt_version: env!("CARGO_PKG_VERSION").to_owned(),
        applied_commit,
        files,
    };
    let mut m = serde_json::to_vec_pretty(&manifest).map_err(|e| Error::Other(e.to_string()))?;
    m.push(b'\n');
    write_synced(&dir.join(MANIFEST), &m)?;
    // `sha256sum -c manifest.sha256` checks it too.
    write_synced(
        &dir.join(MANIFEST_SUM),
        format!("{:x}  {MANIFEST}\n", Sha256::digest(&m)).as_bytes(),
    )?;
    Ok(manifest)
}

/// Deletes the oldest backups of `env` in `dir` beyond the newest `keep`. Only directories whose
/// manifest names `env` count (anything else in `dir` is left alone); ordered by `created_at`.
pub fn prune(dir: &Path, env: &str, keep: usize) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<(String, PathBuf)> = entries
        .filter_map(Result::ok)
        // Hidden entries are backups still being written.
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| e.path())
        .filter_map(|p| {
            let m: Manifest =
                serde_json::from_slice(&std::fs::read(p.join(MANIFEST)).ok()?).ok()?;
            (m.env == env).then_some((m.created_at, p))
        })
        .collect();
    found.sort();
    let excess = found.len().saturating_sub(keep.max(1));
    let mut removed = Vec::new();
    for (_, p) in found.into_iter().take(excess) {
        if std::fs::remove_dir_all(&p).is_ok() {
            removed.push(p);
        }
    }
    removed
}

fn write_file(
    dir: &Path,
    rel: &str,
    bucket: Option<&str>,
    records: usize,
    bytes: &[u8],
) -> Result<FileEntry, Error> {
    write_synced(&dir.join(rel), bytes)?;
    Ok(FileEntry {
        path: rel.to_owned(),
        bucket: bucket.map(str::to_owned),
        records,
        bytes: bytes.len() as u64,
        sha256: sha256_hex(bytes),
    })
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let mut f = std::fs::File::create(path).map_err(|e| io_err(path, e))?;
    f.write_all(bytes).map_err(|e| io_err(path, e))?;
    f.sync_all().map_err(|e| io_err(path, e))
}

/// Reads a backup back and checks everything: the manifest's checksum, its format, that it
/// lists every bucket once, and each file's size, checksum, record count and every line.
pub async fn verify(dir: &Path) -> Result<Verified, Error> {
    let dir_owned = dir.to_path_buf();
    // File reads and hashing are blocking work.
    tokio::task::spawn_blocking(move || verify_blocking(&dir_owned))
        .await
        .map_err(|e| Error::Other(format!("verify: {e}")))?
}

fn verify_blocking(dir: &Path) -> Result<Verified, Error> {
    verify_files(dir, &|rel| std::fs::read(dir.join(rel)))
}

/// The checks of [`verify`] on files that `read` supplies by relative path (`manifest.json`,
/// `manifest.sha256`, then the paths the manifest lists, each checked before it is read);
/// `dir` only names them in messages. The byte-level entry point of the fuzz target `backup`.
pub fn verify_files(
    dir: &Path,
    read: &dyn Fn(&str) -> std::io::Result<Vec<u8>>,
) -> Result<Verified, Error> {
    let mpath = dir.join(MANIFEST);
    let m = read(MANIFEST).map_err(|e| {
        Error::refused(
            crate::outcome::RefusalKind::RestoreGuard,
            format!(
                "{}: {e}; is {} a vakt backup directory?",
                mpath.display(),
                dir.display()
            ),
        )
    })?;
    let spath = dir.join(MANIFEST_SUM);
    let sum = read(MANIFEST_SUM)
        .and_then(|b| {
            String::from_utf8(b)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
        })
        .map_err(|e| damaged(&spath, e))?;
    let digest = sha256_hex(&m);
    let want = format!(
        "sha256:{}",
        sum.split_whitespace()
            .next()
            .unwrap_or_default()
            .trim_start_matches("sha256:")
    );
    if want != digest {
        return Err(damaged(
            &mpath,
            format!("checksum {digest} does not match {want} in {MANIFEST_SUM}"),
        ));
    }
    let manifest: Manifest =
        serde_json::from_slice(&m).map_err(|e| damaged(&mpath, format!("not a manifest: {e}")))?;
    if manifest.format != FORMAT {
        return Err(Error::refused(
            crate::outcome::RefusalKind::RestoreGuard,
            format!(
                "{}: backup format {} is not supported by vakt {} (it reads format {FORMAT})",
                mpath.display(),
                manifest.format,
                env!("CARGO_PKG_VERSION")
            ),
        ));
    }
    let mut buckets = BTreeMap::new();
    let mut events = None;
    for f in &manifest.files {
        let expected_path = match &f.bucket {
            Some(b) if bucket_names().contains(&b.as_str()) => format!("buckets/{b}.jsonl"),
            Some(b) => return Err(damaged(&mpath, format!("unknown bucket `{b}`"))),
            None => AUDIT_FILE.to_owned(),
        };
        if f.path != expected_path {
            return Err(damaged(
                &mpath,
                format!("file `{}` should be `{expected_path}`", f.path),
            ));
        }
        let path = dir.join(&f.path);
        let bytes = read(&f.path).map_err(|e| damaged(&path, e))?;
        if bytes.len() as u64 != f.bytes {
            return Err(damaged(
                &path,
                format!("{} bytes, the manifest says {}", bytes.len(), f.bytes),
            ));
        }
        let sha = sha256_hex(&bytes);
        if sha != f.sha256 {
            return Err(damaged(
                &path,
                format!("checksum {sha} does not match {} in the manifest", f.sha256),
            ));
        }
        let text = std::str::from_utf8(&bytes).map_err(|e| damaged(&path, e))?;
        let lines: Vec<&str> = text.lines().collect();
        if lines.len() != f.records {
            return Err(damaged(
                &path,
                format!("{} records, the manifest says {}", lines.len(), f.records),
            ));
        }
        let at = |i: usize, e: String| damaged(&path, format!("line {}: {e}", i + 1));
        match &f.bucket {
            Some(b) => {
                let mut keys = BTreeMap::new();
                for (i, l) in lines.iter().enumerate() {
                    let r: KeyRecord = serde_json::from_str(l).map_err(|e| at(i, e.to_string()))?;
                    let v = r.bytes().map_err(|e| at(i, e))?;
                    if keys.insert(r.key.clone(), v).is_some() {
                        return Err(at(i, format!("key `{}` appears twice", r.key)));
                    }
                }
                if buckets.insert(b.clone(), keys).is_some() {
                    return Err(damaged(&mpath, format!("bucket `{b}` is listed twice")));
                }
            }
            None => {
                if events.is_some() {
                    return Err(damaged(&mpath, "the audit file is listed twice"));
                }
                let mut evs = Vec::with_capacity(lines.len());
                for (i, l) in lines.iter().enumerate() {
                    let r: AuditRecord =
                        serde_json::from_str(l).map_err(|e| at(i, e.to_string()))?;
                    if r.event.env != manifest.env {
                        return Err(at(i, format!("event of environment `{}`", r.event.env)));
                    }
                    evs.push(r.event);
                }
                if let Err((i, why)) = audit::verify_chain(&evs, audit::GENESIS) {
                    return Err(at(i, format!("audit chain broken: {why}")));
                }
                events = Some(evs);
            }
        }
    }
    for b in bucket_names() {
        if !buckets.contains_key(b) {
            return Err(damaged(&mpath, format!("bucket `{b}` is missing")));
        }
    }
    let events = events.ok_or_else(|| damaged(&mpath, "the audit file is missing"))?;
    Ok(Verified {
        dir: dir.to_path_buf(),
        manifest,
        digest,
        buckets,
        events,
    })
}

/// How to restore.
#[derive(Debug, Clone)]
pub struct RestoreOpts {
    /// Only these buckets (suffixes); `None`: every bucket.
    pub buckets: Option<Vec<String>>,
    /// Leave the audit stream as it is (when it has events the backup lacks).
    pub skip_audit: bool,
    pub actor: String,
    /// Why (required for a destructive restore; recorded).
    pub reason: Option<String>,
    pub now: OffsetDateTime,
    /// How long an approval request stays valid.
    pub approval_ttl: Duration,
    /// Told after every acknowledged write.
    pub progress: Option<crate::Progress>,
}

/// What a restore would do to one bucket.
#[derive(Debug, Clone, Serialize)]
pub struct BucketPlan {
    pub bucket: String,
    /// Keys the backup has and the bucket lacks.
    pub create: Vec<String>,
    /// Keys whose live value differs from the backup's (destructive).
    pub overwrite: Vec<String>,
    /// Keys the bucket has and the backup lacks (destructive).
    pub delete: Vec<String>,
    pub unchanged: usize,
    #[serde(skip)]
    writes: Vec<Write1>,
}

#[derive(Debug, Clone)]
struct Write1 {
    key: String,
    value: Option<Bytes>,
    /// The key's live revision (0: never written): the compare-and-set condition.
    expected: u64,
}

/// What a restore would do to the audit trail.
#[derive(Debug, Clone, Serialize)]
pub struct AuditPlan {
    pub in_backup: usize,
    pub live: usize,
    /// Events to republish (the backup's events after the live ones).
    pub to_publish: usize,
    pub skipped: bool,
}

/// The preflight of a restore: what it would write, and whether it may.
#[derive(Debug, Clone, Serialize)]
pub struct RestorePlan {
    /// `restore-<12 hex>`, bound to the digest.
    pub id: String,
    /// SHA-256 over the backup's digest and every planned write with its live revision.
    pub digest: String,
    pub env: String,
    pub backup_id: String,
    pub backup_created_at: String,
    pub backup_digest: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub applied_commit: Option<String>,
    pub buckets: Vec<BucketPlan>,
    pub audit: AuditPlan,
    /// It writes over or deletes live keys: it needs an approval.
    pub destructive: bool,
    /// Why it cannot run at all.
    pub refusals: Vec<String>,
    /// An earlier restore that started and never finished (killed, NATS lost): its plan id.
    /// This one completes it, records `restore.interrupted` for it, and runs even when nothing
    /// is left to write, so the trail ends in a `restore.done`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resumes: Option<String>,
    /// `restore.interrupted` for `resumes` is already in the trail (an earlier rerun was
    /// interrupted too).
    #[serde(skip)]
    resumes_recorded: bool,
    #[serde(skip)]
    events: Vec<AuditEvent>,
}

impl RestorePlan {
    pub fn writes(&self) -> usize {
        self.buckets.iter().map(|b| b.writes.len()).sum()
    }
}

/// Reads the backup, checks it and compares it with the live buckets. Writes nothing.
pub async fn preflight(
    store: &Store,
    dir: &Path,
    opts: &RestoreOpts,
) -> Result<RestorePlan, Error> {
    let v = verify(dir).await?;
    if v.manifest.env != store.env {
        return Err(Error::refused(
            crate::outcome::RefusalKind::RestoreGuard,
            format!(
                "backup {} is of environment `{}`; this restore targets `{}`",
                v.manifest.id, v.manifest.env, store.env
            ),
        ));
    }
    let selected: Vec<String> = match &opts.buckets {
        Some(bs) => {
            for b in bs {
                if !bucket_names().contains(&b.as_str()) {
                    return Err(Error::refused(
                        crate::outcome::RefusalKind::RestoreGuard,
                        format!(
                            "unknown bucket `{b}`; choose from {}",
                            bucket_names().join(", ")
                        ),
                    ));
                }
            }
            bs.clone()
        }
        None => bucket_names().into_iter().map(str::to_owned).collect(),
    };
    let mut refusals = Vec::new();
    if let Some(leader) = leader_of(store).await {
        refusals.push(format!(
            "reconciler `{leader}` holds the lease of {}: stop `vakt reconcile` for {} first (it would write while the restore does)",
            store.env, store.env
        ));
    }
    let mut buckets = Vec::new();
    let mut hasher = Sha256::new();
    hasher.update(v.digest.as_bytes());
    for name in &selected {
        let Some(kv) = kv_of(store, name) else {
            continue;
        };
        let live = store::snapshot_bucket(kv).await?;
        let empty = BTreeMap::new();
        let want = v.buckets.get(name).unwrap_or(&empty);
        let mut p = BucketPlan {
            bucket: name.clone(),
            create: Vec::new(),
            overwrite: Vec::new(),
            delete: Vec::new(),
            unchanged: 0,
            writes: Vec::new(),
        };
        for (k, value) in want {
            if protected(name, k) {
                continue;
            }
            match live.get(k) {
                Some(e) if !e.deleted && e.value == *value => p.unchanged += 1,
                Some(e) if !e.deleted => {
                    p.overwrite.push(k.clone());
                    p.writes.push(Write1 {
                        key: k.clone(),
                        value: Some(value.clone()),
                        expected: e.revision,
                    });
                }
                other => {
                    p.create.push(k.clone());
                    p.writes.push(Write1 {
                        key: k.clone(),
                        value: Some(value.clone()),
                        expected: other.map_or(0, |e| e.revision),
                    });
                }
            }
        }
        for (k, e) in &live {
            if e.deleted || want.contains_key(k) || protected(name, k) {
                continue;
            }
            p.delete.push(k.clone());
            p.writes.push(Write1 {
                key: k.clone(),
                value: None,
                expected: e.revision,
            });
        }
        for w in &p.writes {
            hasher.update(
                format!(
                    "{name}\0{}\0{}\0{}\n",
                    w.key,
                    w.expected,
                    w.value.as_ref().map_or(0, Bytes::len)
                )
                .as_bytes(),
            );
        }
        buckets.push(p);
    }
    let stream = audit::ensure_stream(&store.js, store.replicas).await?;
    let live_events = audit::read_events(&stream, &store.env, 1).await?;
    let mut audit_plan = AuditPlan {
        in_backup: v.events.len(),
        live: live_events.len(),
        to_publish: 0,
        skipped: opts.skip_audit,
    };
    let mut events = Vec::new();
    if !opts.skip_audit {
        let same =
            |(l, b): (&audit::Stored, &AuditEvent)| l.event.id == b.id && l.event.hash == b.hash;
        // One trail must extend the other: the live one may have lost its tail (data loss:
        // republish the rest) or grown past the backup (nothing to republish).
        let agree = live_events.iter().zip(&v.events).all(same);
        if agree {
            if live_events.len() < v.events.len() {
                events = v.events[live_events.len()..].to_vec();
            }
            audit_plan.to_publish = events.len();
        } else {
            refusals.push(format!(
                "the audit trail of {} and the backup's diverge (events were written after the data loss, starting a new chain): republishing the backup's events would fork the hash chain; pass --skip-audit to restore the buckets only (the backup's audit file stays the record of the older events)",
                store.env
            ));
        }
    }
    // The last restore that started without finishing, if the trail ends inside one.
    let mut resumes: Option<String> = None;
    for e in live_events.iter().map(|s| &s.event) {
        match e.action.as_str() {
            "restore.start" => resumes = e.plan_id.clone(),
            "restore.done" => resumes = None,
            _ => {}
        }
    }
    let resumes_recorded = resumes.as_ref().is_some_and(|p| {
        let id = format!("{p}/interrupted");
        live_events.iter().any(|s| s.event.id == id)
    });
    hasher.update(format!("audit\0{}\n", audit_plan.to_publish).as_bytes());
    hasher.update(format!("resumes\0{}\n", resumes.as_deref().unwrap_or("")).as_bytes());
    let digest = format!("sha256:{:x}", hasher.finalize());
    let id = format!("restore-{}", &digest[7..19]);
    let destructive = buckets
        .iter()
        .any(|b| !b.overwrite.is_empty() || !b.delete.is_empty());
    Ok(RestorePlan {
        id,
        digest,
        env: store.env.clone(),
        backup_id: v.manifest.id.clone(),
        backup_created_at: v.manifest.created_at.clone(),
        backup_digest: v.digest.clone(),
        applied_commit: v.manifest.applied_commit.clone(),
        buckets,
        audit: audit_plan,
        destructive,
        refusals,
        resumes,
        resumes_recorded,
        events,
    })
}

/// The reconciler holding the environment's lease, if any.
async fn leader_of(store: &Store) -> Option<String> {
    let lock = store
        .js
        .get_key_value(format!("{}_lock", store.prefix))
        .await
        .ok()?;
    let mut keys = lock.keys().await.ok()?;
    while let Some(Ok(k)) = keys.next().await {
        if let Ok(Some(v)) = lock.get(&k).await
            && !v.is_empty()
        {
            return Some(String::from_utf8_lossy(&v).into_owned());
        }
    }
    None
}

/// What a restore did.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreOutcome {
    pub plan: RestorePlan,
    pub written: usize,
    pub events_published: usize,
}

/// Carries out a restore plan from [`preflight`]: the approval gate for destructive plans,
/// audit events, then compare-and-set writes on the revisions the preflight read (a key changed
/// since stops the restore); records what it did.
pub async fn restore(
    store: &Store,
    audit: &mut Audit,
    plan: RestorePlan,
    opts: &RestoreOpts,
) -> Result<RestoreOutcome, Error> {
    if !plan.refusals.is_empty() {
        return Err(Error::refused(
            crate::outcome::RefusalKind::RestoreGuard,
            plan.refusals.join("; "),
        ));
    }
    if plan.destructive {
        gate(store, &plan, opts).await?;
    }
    // The audit trail first: the restore's own events then chain after the restored ones.
    for (i, ev) in plan.events.iter().enumerate() {
        let payload = serde_json::to_vec(ev).map_err(|e| nats_err("encode audit event", e))?;
        let ack = store
            .js
            .send_publish(
                audit::subject(&store.env, &ev.action),
                jetstream::message::PublishMessage::build()
                    .payload(payload.into())
                    .message_id(&ev.id),
            )
            .await
            .map_err(|e| nats_err("publish audit event", e))?;
        tokio::time::timeout(Duration::from_secs(10), ack)
            .await
            .map_err(|_| nats_err("audit ack", "timed out after 10 s"))?
            .map_err(|e| nats_err("audit ack", e))?;
        fault::hold("restore.event", i + 1).await;
    }
    audit.refresh_head().await?;
    if let Some(prev) = plan.resumes.as_ref().filter(|_| !plan.resumes_recorded) {
        let mut ev = AuditEvent::new(
            format!("{prev}/interrupted"),
            &store.env,
            &opts.actor,
            "restore.interrupted",
            "recovered",
        );
        ev.plan_id = Some(prev.clone());
        ev.target = Some(plan.backup_id.clone());
        ev.reason = Some(format!(
            "restore {prev} started and did not finish; {} completes it",
            plan.id
        ));
        audit.record(ev).await?;
    }
    let mut start = AuditEvent::new(
        format!("{}/start", plan.id),
        &store.env,
        &opts.actor,
        "restore.start",
        "ok",
    );
    start.plan_id = Some(plan.id.clone());
    start.reason = opts.reason.clone();
    start.target = Some(plan.backup_id.clone());
    start.detail = Some(serde_json::json!({
        "backup_digest": plan.backup_digest,
        "backup_created_at": plan.backup_created_at,
        "events_republished": plan.events.len(),
    }));
    audit.record(start).await?;
    let mut written = 0;
    let total = plan.writes() as u64;
    for b in &plan.buckets {
        let Some(kv) = kv_of(store, &b.bucket) else {
            continue;
        };
        written += write_bucket(store, kv, &b.bucket, &b.writes, written, |n| {
            if let Some(p) = &opts.progress {
                p.report((written + n) as u64, total);
            }
        })
        .await?;
        let mut ev = AuditEvent::new(
            format!("{}/{}", plan.id, b.bucket),
            &store.env,
            &opts.actor,
            "restore.bucket",
            "ok",
        );
        ev.plan_id = Some(plan.id.clone());
        ev.target = Some(format!("{}_{}", store.prefix, b.bucket));
        let cap = |v: &Vec<String>| v.iter().take(AUDIT_KEY_LIMIT).cloned().collect::<Vec<_>>();
        ev.detail = Some(serde_json::json!({
            "created": b.create.len(),
            "overwritten": b.overwrite.len(),
            "deleted": b.delete.len(),
            "unchanged": b.unchanged,
            "keys_created": cap(&b.create),
            "keys_overwritten": cap(&b.overwrite),
            "keys_deleted": cap(&b.delete),
        }));
        audit.record(ev).await?;
    }
    let record = serde_json::json!({
        "plan_id": plan.id,
        "backup_id": plan.backup_id,
        "backup_created_at": plan.backup_created_at,
        "at": now_rfc3339(),
        "by": opts.actor,
        "reason": opts.reason,
        "written": written,
        "events_republished": plan.events.len(),
    });
    state::put(&store.state, LAST_RESTORE, &record).await?;
    let mut done = AuditEvent::new(
        format!("{}/done", plan.id),
        &store.env,
        &opts.actor,
        "restore.done",
        "ok",
    );
    done.plan_id = Some(plan.id.clone());
    done.detail = Some(record);
    audit.record(done).await?;
    let events_published = plan.events.len();
    Ok(RestoreOutcome {
        plan,
        written,
        events_published,
    })
}

/// Compare-and-set writes of one bucket, `WINDOW` in flight.
async fn write_bucket(
    store: &Store,
    kv: &kv::Store,
    bucket: &str,
    writes: &[Write1],
    written_before: usize,
    progress: impl Fn(usize),
) -> Result<usize, Error> {
    let name = format!("{}_{bucket}", store.prefix);
    let mut acks = futures_util::stream::iter(writes.iter().map(|w| {
        let name = name.clone();
        async move {
            let fut =
                store::send_cas_to(&store.js, kv, &w.key, w.value.clone(), w.expected).await?;
            match tokio::time::timeout(Duration::from_secs(10), fut).await {
                Err(_) => Err(nats_err("restore write", "no acknowledgement in 10 s")),
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e))
                    if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence =>
                {
                    Err(StoreError::Conflict {
                        bucket: name,
                        key: w.key.clone(),
                        expected: w.expected,
                    })
                }
                Ok(Err(e)) => Err(nats_err("restore write", e)),
            }
        }
    }))
    .buffered(WINDOW);
    let mut n = 0;
    while let Some(r) = acks.next().await {
        r?;
        n += 1;
        progress(n);
        fault::hold("restore.key", written_before + n).await;
    }
    Ok(n)
}

/// A destructive restore runs only with an unexpired approval bound to its digest; otherwise it
/// requests one.
async fn gate(store: &Store, plan: &RestorePlan, opts: &RestoreOpts) -> Result<(), Error> {
    if opts.reason.as_deref().is_none_or(|r| r.trim().is_empty()) {
        return Err(Error::refused(
            crate::outcome::RefusalKind::RestoreGuard,
            format!(
                "{} writes over or deletes live keys: give a reason (--reason \"…\"); it is recorded with the approval",
                plan.id
            ),
        ));
    }
    let mut actions = Vec::new();
    if plan.buckets.iter().any(|b| !b.overwrite.is_empty()) {
        actions.push("restore.overwrite".to_owned());
    }
    if plan.buckets.iter().any(|b| !b.delete.is_empty()) {
        actions.push("restore.delete".to_owned());
    }
    let expires = (opts.now + opts.approval_ttl)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let mut request = Approval::request(
        &plan.id,
        &plan.digest,
        &opts.actor,
        expires,
        &plan.backup_id,
        actions,
    );
    request.reason = opts.reason.clone();
    match crate::ops::approvals::gate(store, &request, opts.now).await? {
        Gate::Approved => Ok(()),
        Gate::Expired(at) => Err(Error::refused(
            crate::outcome::RefusalKind::RestoreGuard,
            format!(
                "the approval of {} expired at {at}; it needs approval again",
                plan.id
            ),
        )),
        Gate::Rejected(by, why) => Err(Error::refused(
            crate::outcome::RefusalKind::RestoreGuard,
            format!("{} was rejected by {by} ({why})", plan.id),
        )),
        Gate::Pending => {
            let (o, d): (usize, usize) = plan.buckets.iter().fold((0, 0), |(o, d), b| {
                (o + b.overwrite.len(), d + b.delete.len())
            });
            Err(Error::refused(
                crate::outcome::RefusalKind::RestoreGuard,
                format!(
                    "{} overwrites {o} and deletes {d} live keys: it needs approval: `vakt approve {} --env {} --reason …`, then run the same restore again",
                    plan.id, plan.id, store.env
                ),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes a well-formed backup of env `dev` into `dir`: one key per bucket, no events.
    fn write_backup_dir(dir: &Path) {
        std::fs::create_dir_all(dir.join("buckets")).unwrap();
        let mut files = Vec::new();
        for b in bucket_names() {
            let line = serde_json::to_string(&KeyRecord {
                key: format!("k.{b}"),
                revision: 3,
                value: Some(format!("{{\"spec\":{{\"bucket\":\"{b}\"}}}}")),
                value_base64: None,
            })
            .unwrap()
                + "\n";
            let path = format!("buckets/{b}.jsonl");
            std::fs::write(dir.join(&path), &line).unwrap();
            files.push(FileEntry {
                path,
                bucket: Some(b.to_owned()),
                records: 1,
                bytes: line.len() as u64,
                sha256: sha256_hex(line.as_bytes()),
            });
        }
        std::fs::write(dir.join(AUDIT_FILE), "").unwrap();
        files.push(FileEntry {
            path: AUDIT_FILE.into(),
            bucket: None,
            records: 0,
            bytes: 0,
            sha256: sha256_hex(b""),
        });
        let m = Manifest {
            format: FORMAT,
            id: "backup-test".into(),
            env: "dev".into(),
            prefix: "vakt_dev".into(),
            created_at: "2026-11-29T00:00:00Z".into(),
            created_by: "test".into(),
            vakt_version: "0".into(),
            applied_commit: None,
            files,
        };
        let mb = serde_json::to_vec_pretty(&m).unwrap();
        std::fs::write(dir.join(MANIFEST), &mb).unwrap();
        let sum = sha256_hex(&mb);
        std::fs::write(
            dir.join(MANIFEST_SUM),
            format!("{}  {MANIFEST}\n", sum.trim_start_matches("sha256:")),
        )
        .unwrap();
    }

    fn refusal(dir: &Path) -> String {
        match verify_blocking(dir) {
            Ok(_) => panic!("{} verified", dir.display()),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_well_formed_backup_verifies_with_its_contents() {
        let t = tempfile::tempdir().unwrap();
        write_backup_dir(t.path());
        let v = verify_blocking(t.path()).unwrap();
        assert_eq!(v.manifest.env, "dev");
        assert_eq!(v.buckets.len(), bucket_names().len());
        assert_eq!(
            v.buckets["config"]["k.config"],
            Bytes::from_static(br#"{"spec":{"bucket":"config"}}"#)
        );
        assert!(v.events.is_empty());
        assert!(v.digest.starts_with("sha256:"));
    }

    #[test]
    fn verify_files_asks_its_reader_only_for_paths_the_format_allows() {
        let t = tempfile::tempdir().unwrap();
        write_backup_dir(t.path());
        let s = std::fs::read_to_string(t.path().join(MANIFEST))
            .unwrap()
            .replace("\"buckets/jobs.jsonl\"", "\"../../etc/passwd\"");
        std::fs::write(t.path().join(MANIFEST), &s).unwrap();
        let sum = sha256_hex(s.as_bytes());
        std::fs::write(
            t.path().join(MANIFEST_SUM),
            format!("{}  {MANIFEST}\n", sum.trim_start_matches("sha256:")),
        )
        .unwrap();
        let asked = std::sync::Mutex::new(Vec::<String>::new());
        let dir = t.path();
        let r = verify_files(dir, &|rel| {
            asked.lock().unwrap().push(rel.to_owned());
            std::fs::read(dir.join(rel))
        });
        let e = r.expect_err("a manifest naming ../ is refused").to_string();
        assert!(e.contains("should be `buckets/jobs.jsonl`"), "{e}");
        let asked = asked.into_inner().unwrap();
        assert!(asked.contains(&MANIFEST.to_owned()), "{asked:?}");
        assert!(!asked.iter().any(|p| p.contains("..")), "{asked:?}");
    }

    #[test]
    fn a_changed_data_file_is_named_with_what_differs() {
        let t = tempfile::tempdir().unwrap();
        write_backup_dir(t.path());
        let f = t.path().join("buckets/placement.jsonl");
        let s = std::fs::read_to_string(&f)
            .unwrap()
            .replace("k.placement", "k.placemenx");
        std::fs::write(&f, s).unwrap();
        let e = refusal(t.path());
        assert!(e.contains("buckets/placement.jsonl"), "{e}");
        assert!(e.contains("does not match"), "{e}");
    }

    #[test]
    fn an_edited_manifest_a_missing_file_and_an_empty_directory_are_refused() {
        let t = tempfile::tempdir().unwrap();
        write_backup_dir(t.path());
        let m = t.path().join(MANIFEST);
        let s = std::fs::read_to_string(&m)
            .unwrap()
            .replace("vakt_dev", "vakt_prod");
        std::fs::write(&m, &s).unwrap();
        let e = refusal(t.path());
        assert!(
            e.contains(MANIFEST_SUM),
            "the manifest's own checksum catches it: {e}"
        );

        let t = tempfile::tempdir().unwrap();
        write_backup_dir(t.path());
        std::fs::remove_file(t.path().join("buckets/jobs.jsonl")).unwrap();
        let e = refusal(t.path());
        assert!(e.contains("buckets/jobs.jsonl"), "{e}");

        let t = tempfile::tempdir().unwrap();
        let e = refusal(t.path());
        assert!(
            e.contains("is") && e.contains("a vakt backup directory"),
            "{e}"
        );
    }
}
