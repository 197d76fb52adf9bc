//! The NATS side: connection (URL list, credentials file, NKey, TLS), the environment's KV
//! buckets (created with the configured history and replicas; a bucket someone else created with
//! other settings is refused, never reconfigured), consistent snapshots with revisions,
//! compare-and-set writes, and key history.
//!
//! Delete versus purge: vakt removes a key with a **delete marker** (`KV-Operation: DEL`), which
//! keeps the key's history so `vakt drift` and the audit trail can still say what was there and
//! who wrote it. vakt never purges a managed key; purging is left to an operator with the `nats`
//! CLI (it erases history).
//!
//! Layer 2: imports only from `desired` (and the crate's shared vocabulary).

pub mod audit;
pub mod state;
pub mod target;

/// The audit stream every environment's events go to (`vakt.audit.<env>.<action>`).
pub const AUDIT_STREAM: &str = "VAKT_AUDIT";

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use async_nats::{Client, ConnectOptions, HeaderMap};
use bytes::Bytes;
use futures_util::StreamExt;

use crate::desired::compile::{Bucket, KeyId};
use crate::desired::plan::LiveEntry;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "cannot connect to NATS at {urls}: {message} ({})",
        connect_hint(message)
    )]
    Connect { urls: String, message: String },
    #[error(
        "bucket `{bucket}` exists with other settings: {detail}; vakt does not reconfigure a bucket it did not create: fix it with `nats kv` or choose another --kv-prefix"
    )]
    BucketMismatch { bucket: String, detail: String },
    #[error(
        "bucket `{bucket}` does not exist: nothing has been applied to {env} with this prefix (check --env and --kv-prefix, or run `vakt apply --env {env}` first); read-only commands create nothing"
    )]
    Missing { bucket: String, env: String },
    #[error("NATS {op} failed: {message}")]
    Nats { op: String, message: String },
    #[error(
        "key `{key}` in bucket `{bucket}` changed since it was read (expected revision {expected}); another writer is active: re-run to recompute the plan"
    )]
    Conflict {
        bucket: String,
        key: String,
        expected: u64,
    },
    /// A daemon that lost its lease tried to write (see `daemon::lease`).
    #[error("{reason}")]
    Fenced { reason: String },
}

/// What to try, from a connection error's text.
fn connect_hint(message: &str) -> &'static str {
    if message.contains("CertificateRequired") {
        "the server wants a client certificate: pass --tls-cert and --tls-key"
    } else if message.contains("UnknownIssuer") || message.contains("invalid peer certificate") {
        "the server's certificate is not trusted: pass --tls-ca with the CA that signed it"
    } else if message.contains("authorization") || message.contains("Authorization") {
        "the server refused the credentials: check --creds or --nkey"
    } else {
        "is nats-server ≥ 2.10 running with -js? pass --nats URL or set NATS_URL"
    }
}

pub(crate) fn nats_err(op: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Nats {
        op: op.to_owned(),
        message: e.to_string(),
    }
}

/// How to reach NATS.
#[derive(Debug, Clone, Default)]
pub struct NatsOpts {
    /// Comma-separated server URLs.
    pub urls: String,
    pub creds: Option<PathBuf>,
    /// File holding an NKey seed (`SU…`).
    pub nkey: Option<PathBuf>,
    pub tls_ca: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_required: bool,
    /// Connection name shown by `nats server report connections`.
    pub name: String,
}

/// Connection attempts made by this process's clients after losing a connection (every call
/// of the reconnect delay; the daemon shows it in its status).
pub static RECONNECT_ATTEMPTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The wait before reconnect attempt `attempts` (1-based): none before the first, then 100 ms
/// doubling up to 2 s. So a NATS that is down is tried about every 2 s, never in a loop, and a
/// NATS that comes back is found within 2 s.
pub fn reconnect_delay(attempts: usize) -> Duration {
    if attempts <= 1 {
        return Duration::ZERO;
    }
    let exp = u32::try_from(attempts - 2).unwrap_or(u32::MAX).min(16);
    Duration::from_millis(100u64 << exp).min(Duration::from_secs(2))
}

/// Connects, failing fast (5 s) instead of retrying forever; a connection lost later is
/// retried with [`reconnect_delay`].
pub async fn connect(o: &NatsOpts) -> Result<Client, StoreError> {
    let err = |m: String| StoreError::Connect {
        urls: o.urls.clone(),
        message: m,
    };
    let mut opts = ConnectOptions::new()
        .name(if o.name.is_empty() { "vakt" } else { &o.name })
        .connection_timeout(Duration::from_secs(5))
        .request_timeout(Some(Duration::from_secs(10)))
        .reconnect_delay_callback(|attempts| {
            RECONNECT_ATTEMPTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            reconnect_delay(attempts)
        });
    if let Some(c) = &o.creds {
        opts = opts
            .credentials_file(c)
            .await
            .map_err(|e| err(format!("credentials file {}: {e}", c.display())))?;
    }
    if let Some(k) = &o.nkey {
        let seed = std::fs::read_to_string(k)
            .map_err(|e| err(format!("NKey seed file {}: {e}", k.display())))?;
        opts = opts.nkey(seed.trim().to_owned());
    }
    if let Some(ca) = &o.tls_ca {
        opts = opts.add_root_certificates(ca.clone());
    }
    if let (Some(c), Some(k)) = (&o.tls_cert, &o.tls_key) {
        opts = opts.add_client_certificate(c.clone(), k.clone());
    }
    if o.tls_required {
        opts = opts.require_tls(true);
    }
    let urls: Vec<&str> = o
        .urls
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if urls.is_empty() {
        return Err(err("no server URL given".into()));
    }
    opts.connect(urls.as_slice())
        .await
        .map_err(|e| err(e.to_string()))
}

/// Settings of the managed buckets.
#[derive(Debug, Clone)]
pub struct BucketSettings {
    /// Revisions kept per key (drift uses them to say who wrote a value).
    pub history: i64,
    /// Replicas of what vakt creates; 0 when resolving a target means "from the environment's
    /// `kv_replicas` in vakt.toml, else 1".
    pub replicas: usize,
    /// Lease of the leader lock (the lock bucket's max age).
    pub lease: Duration,
}

impl Default for BucketSettings {
    fn default() -> Self {
        BucketSettings {
            history: 10,
            replicas: 1,
            lease: Duration::from_secs(10),
        }
    }
}

/// A check run before a write (see [`Store::fence`], `audit::Audit::fence`): `Err` carries why
/// this process may not write.
pub type WriteFence = std::sync::Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// The buckets of one environment.
#[derive(Clone)]
pub struct Store {
    pub client: Client,
    pub js: jetstream::Context,
    pub env: String,
    pub prefix: String,
    /// Replicas of the streams vakt creates (buckets and the audit stream).
    pub replicas: usize,
    kvs: BTreeMap<Bucket, kv::Store>,
    pub state: kv::Store,
    pub jobs: kv::Store,
    /// Checked before every compare-and-set write and status update: the daemon's lease fence
    /// (`daemon::lease`), so a leader that lost its lease writes no key. `None` for one-off
    /// commands.
    pub fence: Option<WriteFence>,
}

/// A historical revision of a key.
#[derive(Debug, Clone)]
pub struct Revision {
    pub revision: u64,
    pub created: String,
    pub operation: &'static str,
    pub value: Bytes,
}

impl Store {
    /// Opens (and with `create`, creates) the environment's buckets.
    pub async fn open(
        client: Client,
        env: &str,
        prefix: &str,
        settings: &BucketSettings,
    ) -> Result<Store, StoreError> {
        let js = jetstream::new(client.clone());
        let mut kvs = BTreeMap::new();
        for b in Bucket::ALL {
            let name = format!("{prefix}_{}", b.as_str());
            kvs.insert(
                b,
                ensure_bucket(&js, &name, settings.history, settings.replicas, None).await?,
            );
        }
        let state = ensure_bucket(
            &js,
            &format!("{prefix}_state"),
            settings.history,
            settings.replicas,
            None,
        )
        .await?;
        let jobs = ensure_bucket(
            &js,
            &format!("{prefix}_jobs"),
            settings.history,
            settings.replicas,
            None,
        )
        .await?;
        Ok(Store {
            client,
            js,
            env: env.to_owned(),
            prefix: prefix.to_owned(),
            replicas: settings.replicas,
            kvs,
            state,
            jobs,
            fence: None,
        })
    }

    /// Streams of this environment that do not exist: its eight buckets and the audit stream
    /// (NATS lost its data directory, or someone deleted them).
    pub async fn missing_streams(&self) -> Vec<String> {
        let mut names: Vec<String> = Bucket::ALL
            .iter()
            .map(|b| format!("KV_{}", self.bucket_name(*b)))
            .collect();
        names.push(format!("KV_{}_state", self.prefix));
        names.push(format!("KV_{}_jobs", self.prefix));
        names.push(AUDIT_STREAM.to_owned());
        let mut out = Vec::new();
        for n in names {
            if let Err(e) = self.js.get_stream(&n).await
                && matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(j)
                    if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND)
            {
                out.push(n);
            }
        }
        out
    }

    /// Opens the environment's buckets without creating any (read-only commands: `drift`,
    /// `plan --live`): a missing bucket is [`StoreError::Missing`].
    pub async fn open_existing(
        client: Client,
        env: &str,
        prefix: &str,
    ) -> Result<Store, StoreError> {
        let js = jetstream::new(client.clone());
        let get = |name: String| {
            let js = js.clone();
            async move {
                match js.get_stream(format!("KV_{name}")).await {
                    Err(e)
                        if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(j)
                            if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
                    {
                        Err(StoreError::Missing {
                            bucket: name,
                            env: env.to_owned(),
                        })
                    }
                    Err(e) => Err(nats_err(&format!("look up bucket {name}"), e)),
                    Ok(_) => js
                        .get_key_value(&name)
                        .await
                        .map_err(|e| nats_err(&format!("open bucket {name}"), e)),
                }
            }
        };
        let mut kvs = BTreeMap::new();
        for b in Bucket::ALL {
            kvs.insert(b, get(format!("{prefix}_{}", b.as_str())).await?);
        }
        let state = get(format!("{prefix}_state")).await?;
        let jobs = get(format!("{prefix}_jobs")).await?;
        Ok(Store {
            client,
            js,
            env: env.to_owned(),
            prefix: prefix.to_owned(),
            replicas: 1,
            kvs,
            state,
            jobs,
            fence: None,
        })
    }

    /// The lock bucket: history 1, max age = the lease.
    pub async fn lock_bucket(&self, settings: &BucketSettings) -> Result<kv::Store, StoreError> {
        ensure_bucket(
            &self.js,
            &format!("{}_lock", self.prefix),
            1,
            settings.replicas,
            Some(settings.lease),
        )
        .await
    }

    pub fn kv(&self, b: Bucket) -> &kv::Store {
        &self.kvs[&b]
    }

    /// Name of a bucket, e.g. `vakt_dev_config`.
    pub fn bucket_name(&self, b: Bucket) -> String {
        format!("{}_{}", self.prefix, b.as_str())
    }

    /// The latest entry of every key in every managed bucket (deleted keys marked).
    pub async fn snapshot(&self) -> Result<BTreeMap<KeyId, LiveEntry>, StoreError> {
        // The six buckets are read concurrently (one ordered consumer each).
        let reads = Bucket::ALL.map(|b| async move { (b, snapshot_bucket(self.kv(b)).await) });
        let mut out = BTreeMap::new();
        for (b, r) in futures_util::future::join_all(reads).await {
            for (k, e) in r? {
                out.insert((b, k), e);
            }
        }
        Ok(out)
    }

    /// The last stream sequence of each managed bucket (used to find writes of an interrupted
    /// apply).
    pub async fn last_sequences(&self) -> Result<BTreeMap<Bucket, u64>, StoreError> {
        let reads = Bucket::ALL.map(|b| async move {
            let mut s = self.kv(b).stream.clone();
            (b, s.info().await.map(|i| i.state.last_sequence))
        });
        let mut out = BTreeMap::new();
        for (b, r) in futures_util::future::join_all(reads).await {
            out.insert(b, r.map_err(|e| nats_err("stream info", e))?);
        }
        Ok(out)
    }

    /// Every revision of a key still held, oldest first.
    pub async fn history(&self, b: Bucket, key: &str) -> Result<Vec<Revision>, StoreError> {
        let mut h = self
            .kv(b)
            .history(key)
            .await
            .map_err(|e| nats_err("history", e))?;
        let mut out = Vec::new();
        while let Some(e) = h.next().await {
            let e = e.map_err(|e| nats_err("history", e))?;
            out.push(Revision {
                revision: e.revision,
                created: e
                    .created
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default(),
                operation: match e.operation {
                    kv::Operation::Put => "put",
                    kv::Operation::Delete => "delete",
                    kv::Operation::Purge => "purge",
                },
                value: e.value,
            });
            if e.delta == 0 {
                break;
            }
        }
        Ok(out)
    }

    /// Sends a compare-and-set write (a put, or a delete marker with `value: None`) without
    /// waiting for the acknowledgement. `expected` is the key's last revision, 0 if it must not
    /// exist.
    pub async fn send_cas(
        &self,
        b: Bucket,
        key: &str,
        value: Option<Bytes>,
        expected: u64,
    ) -> Result<jetstream::context::PublishAckFuture, StoreError> {
        self.fenced()?;
        send_cas_to(&self.js, self.kv(b), key, value, expected).await
    }

    /// `Err(Fenced)` when a fence is set and says this process may not write.
    pub fn fenced(&self) -> Result<(), StoreError> {
        match &self.fence {
            Some(f) => f().map_err(|reason| StoreError::Fenced { reason }),
            None => Ok(()),
        }
    }

    /// Waits for a CAS acknowledgement; a wrong-last-sequence answer becomes
    /// [`StoreError::Conflict`].
    pub async fn await_cas(
        &self,
        fut: jetstream::context::PublishAckFuture,
        b: Bucket,
        key: &str,
        expected: u64,
    ) -> Result<u64, StoreError> {
        match fut.await {
            Ok(ack) => Ok(ack.sequence),
            Err(e) if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => {
                Err(StoreError::Conflict {
                    bucket: self.bucket_name(b),
                    key: key.to_owned(),
                    expected,
                })
            }
            Err(e) => Err(nats_err("publish ack", e)),
        }
    }

    /// A compare-and-set write, waiting for the acknowledgement.
    pub async fn cas(
        &self,
        b: Bucket,
        key: &str,
        value: Option<Bytes>,
        expected: u64,
    ) -> Result<u64, StoreError> {
        let f = self.send_cas(b, key, value, expected).await?;
        self.await_cas(f, b, key, expected).await
    }
}

/// Sends a compare-and-set write to any bucket (a put, or a delete marker with `value: None`)
/// without waiting for the acknowledgement. `expected` is the key's last revision, 0 if it must
/// not exist.
pub async fn send_cas_to(
    js: &jetstream::Context,
    kv: &kv::Store,
    key: &str,
    value: Option<Bytes>,
    expected: u64,
) -> Result<jetstream::context::PublishAckFuture, StoreError> {
    // One allocation, no formatting machinery: this runs once per write of an apply.
    let prefix = kv.put_prefix.as_ref().unwrap_or(&kv.prefix);
    let mut subject = String::with_capacity(prefix.len() + key.len());
    subject.push_str(prefix);
    subject.push_str(key);
    let mut msg =
        jetstream::message::PublishMessage::build().expected_last_subject_sequence(expected);
    match value {
        Some(v) => msg = msg.payload(v),
        None => {
            let mut h = HeaderMap::new();
            h.insert("KV-Operation", "DEL");
            h.insert(
                async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                expected.to_string().as_str(),
            );
            msg = msg.headers(h);
        }
    }
    js.send_publish(subject, msg)
        .await
        .map_err(|e| nats_err("publish", e))
}

/// Opens a bucket, creating it with the given settings if it does not exist; refuses one whose
/// settings differ.
pub async fn ensure_bucket(
    js: &jetstream::Context,
    name: &str,
    history: i64,
    replicas: usize,
    max_age: Option<Duration>,
) -> Result<kv::Store, StoreError> {
    match js.get_stream(format!("KV_{name}")).await {
        Ok(mut s) => {
            let info = s.info().await.map_err(|e| nats_err("stream info", e))?;
            let c = &info.config;
            let mut diffs = Vec::new();
            if c.max_messages_per_subject != history {
                diffs.push(format!(
                    "history {} (vakt expects {history})",
                    c.max_messages_per_subject
                ));
            }
            if c.num_replicas != replicas {
                diffs.push(format!(
                    "replicas {} (vakt expects {replicas})",
                    c.num_replicas
                ));
            }
            let want_age = max_age.unwrap_or_default();
            if c.max_age != want_age {
                diffs.push(format!(
                    "max age {:?} (vakt expects {want_age:?})",
                    c.max_age
                ));
            }
            if !diffs.is_empty() {
                return Err(StoreError::BucketMismatch {
                    bucket: name.to_owned(),
                    detail: diffs.join(", "),
                });
            }
            js.get_key_value(name)
                .await
                .map_err(|e| nats_err(&format!("open bucket {name}"), e))
        }
        Err(e)
            if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(j)
                if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
        {
            js.create_key_value(kv::Config {
                bucket: name.to_owned(),
                history,
                num_replicas: replicas,
                max_age: max_age.unwrap_or_default(),
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| nats_err(&format!("create bucket {name}"), e))
        }
        Err(e) => Err(nats_err(&format!("look up bucket {name}"), e)),
    }
}

/// The latest entry of every key of one bucket, read with one ordered consumer
/// (deliver-last-per-subject). Deleted keys are kept with `deleted: true`: their marker's
/// revision is what a compare-and-set re-creation must name.
pub async fn snapshot_bucket(kv: &kv::Store) -> Result<BTreeMap<String, LiveEntry>, StoreError> {
    let mut out = BTreeMap::new();
    // Fresh stream state (`kv.status()` returns the info cached when the bucket was opened).
    let info = kv
        .stream
        .get_info()
        .await
        .map_err(|e| nats_err("bucket info", e))?;
    if info.state.messages == 0 {
        return Ok(out);
    }
    let mut w = kv
        .watch_with_history(">")
        .await
        .map_err(|e| nats_err("watch", e))?;
    while let Some(e) = w.next().await {
        let e = e.map_err(|e| nats_err("watch", e))?;
        match e.operation {
            kv::Operation::Put => {
                out.insert(
                    e.key,
                    LiveEntry {
                        revision: e.revision,
                        value: e.value,
                        deleted: false,
                    },
                );
            }
            kv::Operation::Delete | kv::Operation::Purge => {
                out.insert(
                    e.key,
                    LiveEntry {
                        revision: e.revision,
                        value: Bytes::new(),
                        deleted: true,
                    },
                );
            }
        }
        if e.delta == 0 {
            break;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::reconnect_delay;
    use std::time::Duration;

    #[test]
    fn reconnecting_backs_off_doubling_to_two_seconds() {
        let ms = |a| reconnect_delay(a).as_millis();
        assert_eq!(
            (1..=8).map(ms).collect::<Vec<_>>(),
            [0, 100, 200, 400, 800, 1600, 2000, 2000]
        );
        assert_eq!(reconnect_delay(usize::MAX), Duration::from_secs(2));
    }
}
