//! Lease fencing and the one-writer rule.
//!
//! The leader holds key `leader` (or `leader.<site>`) of the `<prefix>_lock` bucket, whose max
//! age is the lease. Holding it is tied to one KV revision: the one this replica created or last
//! renewed by compare-and-set. A [`Fence`] remembers that revision and the monotonic instant the
//! renewal that produced it was *sent*; the server expires the key no earlier than `lease` after
//! it stored it, so until `sent + lease - margin` no other replica can hold it.
//!
//! Every write path of the daemon checks the fence first: a reconcile pass, a job tick, a
//! scheduled backup and the inventory record call [`Fence::check`] (the local deadline, then the
//! lock key's revision must still be the one held); every audit event the leader sends checks
//! [`Fence::check_local`] (no round trip, so pipelined applies stay pipelined). A leader paused
//! past its lease (SIGSTOP, a VM freeze, a long GC) therefore finds on waking that its deadline
//! passed or that the key has another revision, writes nothing, logs `fenced` and says so in its
//! status (`fenced`), then competes for the lease again like any standby.
//!
//! What is left: a pause between a check and the bytes leaving the socket. KV writes of an apply
//! are compare-and-set on the revisions its plan read, so such a write still fails if the new
//! leader changed the key; the window is one write, not a pass.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use serde::Serialize;

/// Why this replica may not write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("fenced: {reason}; this replica writes nothing until it holds the lease again")]
pub struct Fenced {
    /// The lock revision this replica held (none: it never led).
    pub held_revision: Option<u64>,
    /// The lock key's revision, when it was read (by this check, or by the one that made this
    /// replica give the lease up).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_revision: Option<u64>,
    /// Who holds the lease, when known (read as `current_revision` was).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_holder: Option<String>,
    pub reason: String,
}

#[derive(Debug, Default)]
struct Held {
    /// The lock revision held, and when the write that produced it was sent.
    rev: Option<(u64, Instant)>,
    /// The last fencing, for the status.
    last: Option<(Fenced, String)>,
    refused: u64,
    /// The lock key's revision and holder as this replica last read them while fenced: a
    /// local refusal (no round trip) names them too, whichever of a pass's writes and the
    /// lease loop is refused last.
    seen: Option<(u64, Option<String>)>,
}

/// The fence of one replica's lease (see the module documentation).
pub struct Fence {
    key: String,
    lease: Duration,
    lock: Mutex<Option<kv::Store>>,
    held: Mutex<Held>,
}

/// The lock value: who holds the lease and since when.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Holder {
    pub holder: String,
    #[serde(default)]
    pub since: String,
}

impl Fence {
    pub fn new(key: &str, lease: Duration) -> Fence {
        Fence {
            key: key.to_owned(),
            lease,
            lock: Mutex::new(None),
            held: Mutex::new(Held::default()),
        }
    }

    /// How long before the lease's end this replica stops writing (clock-rate slack).
    fn margin(&self) -> Duration {
        (self.lease / 5).max(Duration::from_millis(50))
    }

    /// The lease loop created or renewed the key: revision `rev`, by a write sent at `sent`.
    pub fn held(&self, lock: &kv::Store, rev: u64, sent: Instant) {
        if let Ok(mut l) = self.lock.lock() {
            *l = Some(lock.clone());
        }
        if let Ok(mut h) = self.held.lock() {
            h.rev = Some((rev, sent));
            h.seen = None;
        }
    }

    /// The lease loop lost (or released) the key.
    pub fn released(&self) {
        if let Ok(mut h) = self.held.lock() {
            h.rev = None;
        }
    }

    /// The revision held, if the local deadline has not passed. No round trip.
    pub fn check_local(&self) -> Result<u64, Fenced> {
        let h = self.held.lock().map_err(|_| Fenced {
            held_revision: None,
            current_revision: None,
            current_holder: None,
            reason: "lease state poisoned".into(),
        })?;
        match h.rev {
            None => Err(Fenced {
                held_revision: None,
                current_revision: h.seen.as_ref().map(|s| s.0),
                current_holder: h.seen.as_ref().and_then(|s| s.1.clone()),
                reason: "this replica does not hold the lease".into(),
            }),
            Some((rev, sent)) => {
                let age = sent.elapsed();
                if age + self.margin() >= self.lease {
                    Err(Fenced {
                        held_revision: Some(rev),
                        current_revision: None,
                        current_holder: None,
                        reason: format!(
                            "the lease at revision {rev} was last renewed {:.1}s ago and runs {:.1}s: it may have lapsed (was this process paused?)",
                            age.as_secs_f64(),
                            self.lease.as_secs_f64()
                        ),
                    })
                } else {
                    Ok(rev)
                }
            }
        }
    }

    /// [`Fence::check_local`], then the lock key must still be at the revision held.
    pub async fn check(&self) -> Result<u64, Fenced> {
        let lock = self.lock.lock().ok().and_then(|l| l.clone());
        let rev = match self.check_local() {
            Ok(r) => r,
            Err(mut f) => {
                // Say who holds it now, when the key can be read.
                if let Some(lock) = &lock
                    && let Ok(Some(e)) = lock.entry(&self.key).await
                    && e.operation == kv::Operation::Put
                {
                    f.current_revision = Some(e.revision);
                    f.current_holder = serde_json::from_slice::<Holder>(&e.value)
                        .ok()
                        .map(|h| h.holder);
                }
                return Err(f);
            }
        };
        let Some(lock) = lock else {
            return Err(Fenced {
                held_revision: Some(rev),
                current_revision: None,
                current_holder: None,
                reason: "no lock bucket".into(),
            });
        };
        match lock.entry(&self.key).await {
            Ok(Some(e)) if e.revision == rev && e.operation == kv::Operation::Put => Ok(rev),
            Ok(Some(e)) => Err(Fenced {
                held_revision: Some(rev),
                current_revision: Some(e.revision),
                current_holder: serde_json::from_slice::<Holder>(&e.value)
                    .ok()
                    .map(|h| h.holder),
                reason: format!(
                    "the lease key `{}` is at revision {}, not {rev} which this replica held: another replica took over",
                    self.key, e.revision
                ),
            }),
            Ok(None) => Err(Fenced {
                held_revision: Some(rev),
                current_revision: None,
                current_holder: None,
                reason: format!("the lease key `{}` is gone (lapsed)", self.key),
            }),
            Err(e) => Err(Fenced {
                held_revision: Some(rev),
                current_revision: None,
                current_holder: None,
                reason: format!("cannot read the lease key `{}`: {e}", self.key),
            }),
        }
    }

    /// Records a refused write (`what`), for the log, the status and the metric.
    pub fn refused(&self, what: &str, f: &Fenced) {
        tracing::warn!(write = what, held_revision = ?f.held_revision, current_revision = ?f.current_revision, holder = ?f.current_holder, "fenced: {}; not writing", f.reason);
        if let Ok(mut h) = self.held.lock() {
            h.refused += 1;
            if let Some(rev) = f.current_revision {
                h.seen = Some((rev, f.current_holder.clone()));
            }
            h.last = Some((f.clone(), what.to_owned()));
        }
    }

    /// The status view: the last fencing and how many writes were refused.
    pub fn status(&self) -> serde_json::Value {
        let Ok(h) = self.held.lock() else {
            return serde_json::Value::Null;
        };
        match &h.last {
            None => serde_json::Value::Null,
            Some((f, what)) => serde_json::json!({
                "held_revision": f.held_revision,
                "current_revision": f.current_revision,
                "current_holder": f.current_holder,
                "reason": f.reason,
                "write": what,
                "writes_refused": h.refused,
            }),
        }
    }
}

/// The leader of an environment as the lock bucket says: holder, revision, and how long its
/// lease still runs at most.
#[derive(Debug, Clone, Serialize)]
pub struct Leader {
    pub key: String,
    pub holder: String,
    pub since: String,
    pub revision: u64,
    /// Seconds until the lease lapses unless renewed.
    pub expires_in_secs: f64,
}

/// Reads the lease keys of `<prefix>_lock` (without creating the bucket): the replicas that
/// lead the environment now (one per site with `--site`).
pub async fn leaders(store: &crate::store::Store) -> Result<Vec<Leader>, crate::store::StoreError> {
    use futures_util::StreamExt;
    let lock = match store
        .js
        .get_key_value(format!("{}_lock", store.prefix))
        .await
    {
        Ok(l) => l,
        Err(e) if e.kind() == async_nats::jetstream::context::KeyValueErrorKind::GetBucket => {
            return Ok(Vec::new());
        }
        Err(e) => return Err(crate::store::nats_err("open the lock bucket", e)),
    };
    let max_age = lock.status().await.map(|s| s.max_age()).unwrap_or_default();
    let mut keys = lock
        .keys()
        .await
        .map_err(|e| crate::store::nats_err("list the lock bucket", e))?;
    let mut out = Vec::new();
    // Bounded: one key per site.
    let mut n = 0;
    while let Some(k) = keys.next().await {
        n += 1;
        if n > 1024 {
            break;
        }
        let Ok(k) = k else { continue };
        let Ok(Some(e)) = lock.entry(&k).await else {
            continue;
        };
        if e.operation != kv::Operation::Put {
            continue;
        }
        let Ok(h) = serde_json::from_slice::<Holder>(&e.value) else {
            continue;
        };
        let age = (time::OffsetDateTime::now_utc() - e.created)
            .max(time::Duration::ZERO)
            .as_seconds_f64();
        out.push(Leader {
            key: k,
            holder: h.holder,
            since: h.since,
            revision: e.revision,
            expires_in_secs: (max_age.as_secs_f64() - age).max(0.0),
        });
    }
    Ok(out)
}

/// Subject on which the leader of `env` (bucket prefix `prefix`) takes requests from hand-run
/// commands (`vakt apply` while it leads); only the leader answers.
pub fn writer_subject(prefix: &str, env: &str) -> String {
    format!("vakt.writer.{prefix}.{env}")
}

/// The largest request the leader reads on [`writer_subject`].
pub const MAX_WRITER_REQUEST: usize = 16 * 1024;

/// What a hand-run command asks of the leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", tag = "request")]
pub enum WriterRequest {
    /// Record (in the leader's own audit chain) that a hand-run apply was refused.
    Refused {
        actor: String,
        reason: String,
        causation_id: String,
    },
    /// Run a reconcile pass now (the branch head), record who asked, and answer with the
    /// applied marker afterwards.
    HandOff { actor: String, causation_id: String },
}

/// The leader's answer.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct WriterReply {
    /// The leader's replica id.
    pub leader: String,
    /// The request was recorded in the audit stream.
    pub recorded: bool,
    /// After a hand-off: the pass's outcome (`applied`, `noop`, `refused`, `failed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// After a hand-off: the applied marker's commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_commit: Option<String>,
    /// After a hand-off that did not apply: why (the status's refusal or error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Sends `req` to the leader and waits up to `wait` for its answer; `Ok(None)` when no leader
/// answered in time.
pub async fn ask_leader(
    store: &crate::store::Store,
    req: &WriterRequest,
    wait: Duration,
) -> Result<Option<WriterReply>, crate::store::StoreError> {
    let body = serde_json::to_vec(req).map_err(|e| crate::store::nats_err("encode", e))?;
    let subject = writer_subject(&store.prefix, &store.env);
    let request = async_nats::Request::new()
        .payload(body.into())
        .timeout(Some(wait));
    match tokio::time::timeout(
        wait + Duration::from_secs(1),
        store.client.send_request(subject, request),
    )
    .await
    {
        Err(_) => Ok(None),
        Ok(Err(e))
            if matches!(
                e.kind(),
                async_nats::RequestErrorKind::NoResponders | async_nats::RequestErrorKind::TimedOut
            ) =>
        {
            Ok(None)
        }
        Ok(Err(e)) => Err(crate::store::nats_err("ask the leader", e)),
        Ok(Ok(m)) => serde_json::from_slice(&m.payload)
            .map(Some)
            .map_err(|e| crate::store::nats_err("decode the leader's answer", e)),
    }
}
