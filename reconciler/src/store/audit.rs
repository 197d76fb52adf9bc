//! The audit trail: JetStream stream `VAKT_AUDIT`, subjects `vakt.audit.<env>.<action>`, one
//! event per change or operator action, each chained to the previous event of its environment by
//! a SHA-256 hash and published with a deterministic `Nats-Msg-Id`. The server dedupes only
//! inside its duplicate window, so writers that resume work read what was already recorded
//! ([`Audit::recorded_ids`]) instead of relying on it.

use std::collections::HashSet;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::desired::canon;
use crate::store::{StoreError, nats_err};

pub const STREAM: &str = super::AUDIT_STREAM;

/// The largest event stored (its JSON). [`Audit::send`] shortens longer fields to fit
/// ([`AuditEvent::bounded`]), so an event is never refused for its size and never larger.
pub const MAX_EVENT_BYTES: usize = 8 * 1024;
/// The stream's byte limit. With discard-new, a full stream refuses new events (the caller's
/// action is then refused too) instead of dropping old ones: nothing recorded is ever lost to
/// noise. Sizing (ARCHITECTURE.md): denials are the only events a stranger can cause, and the API
/// emits at most [`DENIAL_BURST`] plus one a minute of them, each under 1 KiB: over
/// [`MAX_AGE`] that is under 600 MiB, so at least 400 MiB stay for real events.
pub const MAX_BYTES: i64 = 1024 * 1024 * 1024;
/// How long events are kept (13 months: a year of history plus a month to look back from).
pub const MAX_AGE: Duration = Duration::from_secs(400 * 24 * 3600);
/// The most denial events the API emits at once; after that, one a minute (see `daemon::api`).
pub const DENIAL_BURST: u32 = 30;
/// Longest `target`, `reason` (characters) kept in an event.
pub const MAX_TARGET_CHARS: usize = 256;
pub const MAX_REASON_CHARS: usize = 1024;
/// Hash of "no previous event".
pub const GENESIS: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

/// One audit event.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuditEvent {
    /// Deterministic id, also the `Nats-Msg-Id`.
    pub id: String,
    pub time: String,
    pub env: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    pub actor: String,
    /// The client address of the HTTP request that caused it (operator API), when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<String>,
    pub outcome: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<Value>,
    pub prev_hash: String,
    pub hash: String,
}

impl AuditEvent {
    /// A new event with the required fields; chain fields are filled in by [`Audit::send`].
    pub fn new(id: impl Into<String>, env: &str, actor: &str, action: &str, outcome: &str) -> Self {
        AuditEvent {
            id: id.into(),
            time: now_rfc3339(),
            env: env.to_owned(),
            site: None,
            actor: actor.to_owned(),
            client: None,
            action: action.to_owned(),
            target: None,
            commit: None,
            plan_id: None,
            job_id: None,
            correlation_id: None,
            causation_id: None,
            outcome: outcome.to_owned(),
            reason: None,
            detail: None,
            prev_hash: String::new(),
            hash: String::new(),
        }
    }

    /// This event cut to [`MAX_EVENT_BYTES`]: long strings are shortened (marked with `…`) and a
    /// `detail` too large to keep is replaced by its size and digest.
    pub fn bounded(mut self) -> Self {
        fn cut(s: &mut String, max: usize) {
            if s.chars().count() > max {
                *s = s.chars().take(max.saturating_sub(1)).collect::<String>() + "…";
            }
        }
        for f in [
            &mut self.site,
            &mut self.commit,
            &mut self.plan_id,
            &mut self.job_id,
            &mut self.correlation_id,
            &mut self.causation_id,
        ]
        .into_iter()
        .flatten()
        {
            cut(f, MAX_TARGET_CHARS);
        }
        cut(&mut self.id, MAX_TARGET_CHARS);
        cut(&mut self.actor, MAX_TARGET_CHARS);
        cut(&mut self.action, 64);
        cut(&mut self.outcome, 64);
        if let Some(t) = &mut self.target {
            cut(t, MAX_TARGET_CHARS);
        }
        if let Some(r) = &mut self.reason {
            cut(r, MAX_REASON_CHARS);
        }
        let size = |e: &AuditEvent| serde_json::to_vec(e).map_or(usize::MAX, |v| v.len());
        // Room for the two hashes filled in later.
        let room = MAX_EVENT_BYTES - 200;
        if size(&self) > room
            && let Some(d) = self.detail.take()
        {
            let b = canon::to_vec(&d);
            self.detail = Some(serde_json::json!({
                "omitted": "detail too large for the audit trail",
                "bytes": b.len(),
                "digest": canon::digest(&b),
            }));
        }
        if size(&self) > room
            && let Some(r) = &mut self.reason
        {
            cut(r, 256);
        }
        self
    }

    /// The hash this event must carry: SHA-256 over its canonical JSON with `hash` empty.
    pub fn compute_hash(&self) -> String {
        // `hash` is always serialised, so blanking it in the value equals hashing a copy with
        // an empty `hash` (without cloning the event).
        let mut v = serde_json::to_value(self).unwrap_or(Value::Null);
        if let Value::Object(m) = &mut v {
            m.insert("hash".into(), Value::String(String::new()));
        }
        canon::digest(&canon::to_vec(&v))
    }
}

pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// A stored event with its stream sequence.
#[derive(Debug, Clone)]
pub struct Stored {
    pub seq: u64,
    pub event: AuditEvent,
}

/// The audit writer of one environment.
pub struct Audit {
    js: jetstream::Context,
    stream: stream::Stream,
    pub env: String,
    /// Hash of the last event of this environment.
    pub head: String,
    /// Recorded as `client` on events sent while set (the API sets it around an action).
    pub client: Option<String>,
    /// Checked before every event is sent: the daemon's lease fence (`daemon::lease`), so a
    /// leader that lost its lease sends nothing. `Err` carries why.
    pub fence: Option<AuditFence>,
}

/// A check run before every event an [`Audit`] sends (see [`Audit::fence`]).
pub type AuditFence = crate::store::WriteFence;

/// Subject of an event.
pub fn subject(env: &str, action: &str) -> String {
    format!("vakt.audit.{env}.{action}")
}

impl Audit {
    /// Opens (creating if needed, with the store's replicas) the audit stream and finds the
    /// head of the chain of the store's environment.
    pub async fn open(store: &crate::store::Store) -> Result<Audit, StoreError> {
        let (js, env) = (&store.js, store.env.as_str());
        let stream = ensure_stream(js, store.replicas).await?;
        let mut a = Audit {
            js: js.clone(),
            stream,
            env: env.to_owned(),
            head: GENESIS.to_owned(),
            client: None,
            fence: None,
        };
        a.refresh_head().await?;
        Ok(a)
    }

    /// Re-reads the chain head from the stream.
    pub async fn refresh_head(&mut self) -> Result<(), StoreError> {
        match self
            .stream
            .get_last_raw_message_by_subject(&format!("vakt.audit.{}.>", self.env))
            .await
        {
            Ok(m) => {
                let ev: AuditEvent = serde_json::from_slice(&m.payload)
                    .map_err(|e| nats_err("decode audit event", e))?;
                self.head = ev.hash;
            }
            Err(e) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {
                self.head = GENESIS.to_owned();
            }
            Err(e) => return Err(nats_err("read audit head", e)),
        }
        Ok(())
    }

    /// Chains `ev` to the head and publishes it without waiting for the acknowledgement.
    pub async fn send(
        &mut self,
        ev: AuditEvent,
    ) -> Result<jetstream::context::PublishAckFuture, StoreError> {
        if let Some(f) = &self.fence {
            f().map_err(|reason| StoreError::Fenced { reason })?;
        }
        let mut ev = ev.bounded();
        if ev.client.is_none() {
            ev.client.clone_from(&self.client);
        }
        ev.env = self.env.clone();
        ev.prev_hash = self.head.clone();
        ev.hash = ev.compute_hash();
        let payload = serde_json::to_vec(&ev).map_err(|e| nats_err("encode audit event", e))?;
        let fut = self
            .js
            .send_publish(
                subject(&self.env, &ev.action),
                jetstream::message::PublishMessage::build()
                    .payload(payload.into())
                    .message_id(&ev.id),
            )
            .await
            .map_err(|e| nats_err("publish audit event", e))?;
        self.head = ev.hash;
        Ok(fut)
    }

    /// Publishes `ev` and waits for the server to store it. Returns its sequence.
    pub async fn record(&mut self, ev: AuditEvent) -> Result<u64, StoreError> {
        let f = self.send(ev).await?;
        let ack = f.await.map_err(|e| nats_err("audit ack", e))?;
        if ack.duplicate {
            // Stored before (inside the duplicate window): the chain continues from what the
            // stream holds, not from what we computed.
            self.refresh_head().await?;
        }
        Ok(ack.sequence)
    }

    /// A reader of this environment's events that shares nothing with the writer, so listing
    /// events never waits for (or blocks) a write.
    pub fn reader(&self) -> Reader {
        Reader {
            stream: self.stream.clone(),
            env: self.env.clone(),
        }
    }

    /// Last sequence of the stream (all environments).
    pub async fn last_seq(&self) -> Result<u64, StoreError> {
        self.reader().last_seq().await
    }

    /// Events of `env` with sequence ≥ `from`, oldest first.
    pub async fn read(&self, from: u64) -> Result<Vec<Stored>, StoreError> {
        read_events(&self.stream, &self.env, from).await
    }

    /// The ids of `env`'s events with sequence ≥ `from`.
    pub async fn recorded_ids(&self, from: u64) -> Result<HashSet<String>, StoreError> {
        Ok(self
            .read(from)
            .await?
            .into_iter()
            .map(|s| s.event.id)
            .collect())
    }
}

/// Reads one environment's events (see [`Audit::reader`]).
#[derive(Clone)]
pub struct Reader {
    stream: stream::Stream,
    env: String,
}

impl Reader {
    /// Last sequence of the stream (all environments).
    pub async fn last_seq(&self) -> Result<u64, StoreError> {
        let mut s = self.stream.clone();
        Ok(s.info()
            .await
            .map_err(|e| nats_err("audit info", e))?
            .state
            .last_sequence)
    }

    /// Events of the environment with sequence ≥ `from`, oldest first.
    pub async fn read(&self, from: u64) -> Result<Vec<Stored>, StoreError> {
        read_events(&self.stream, &self.env, from).await
    }
}

/// Creates the audit stream if needed (deny delete and purge, 2-minute duplicate window,
/// replicated like the buckets: in a cluster, losing one server must not lose the trail), with
/// the limits [`MAX_BYTES`], [`MAX_AGE`] and a message size bound, discard-new. A stream made
/// before these limits existed gets them; limits an operator set (`nats stream edit`) are kept.
pub async fn ensure_stream(
    js: &jetstream::Context,
    replicas: usize,
) -> Result<stream::Stream, StoreError> {
    let mut s = js
        .get_or_create_stream(stream::Config {
            name: STREAM.to_owned(),
            subjects: vec!["vakt.audit.>".to_owned()],
            duplicate_window: Duration::from_secs(120),
            deny_delete: true,
            deny_purge: true,
            num_replicas: replicas.max(1),
            storage: stream::StorageType::File,
            max_bytes: MAX_BYTES,
            max_age: MAX_AGE,
            max_message_size: (2 * MAX_EVENT_BYTES) as i32,
            discard: stream::DiscardPolicy::New,
            ..Default::default()
        })
        .await
        .map_err(|e| nats_err("create audit stream", e))?;
    let cfg = s
        .info()
        .await
        .map_err(|e| nats_err("audit stream info", e))?
        .config
        .clone();
    if cfg.max_bytes < 0 || cfg.max_age.is_zero() || cfg.max_message_size < 0 {
        let mut c = cfg.clone();
        if c.max_bytes < 0 {
            c.max_bytes = MAX_BYTES;
            c.discard = stream::DiscardPolicy::New;
        }
        if c.max_age.is_zero() {
            c.max_age = MAX_AGE;
        }
        if c.max_message_size < 0 {
            c.max_message_size = (2 * MAX_EVENT_BYTES) as i32;
        }
        js.update_stream(&c)
            .await
            .map_err(|e| nats_err("set the audit stream's limits", e))?;
    }
    let have = cfg.num_replicas;
    if have < replicas {
        return Err(StoreError::Nats {
            op: "audit stream".into(),
            message: format!(
                "{STREAM} has {have} replica(s) but vakt runs with --replicas {replicas}: losing one server could lose the trail; raise it with `nats stream edit {STREAM} --replicas {replicas}`"
            ),
        });
    }
    Ok(s)
}

/// Reads `env`'s events from sequence `from` on, with an ordered consumer.
pub async fn read_events(
    stream: &stream::Stream,
    env: &str,
    from: u64,
) -> Result<Vec<Stored>, StoreError> {
    let mut s = stream.clone();
    let info = s.info().await.map_err(|e| nats_err("audit info", e))?;
    let last = info.state.last_sequence;
    let mut out = Vec::new();
    if last == 0 || from > last {
        return Ok(out);
    }
    // The newest event of this env: nothing to read if it is older than `from`.
    match stream
        .get_last_raw_message_by_subject(&format!("vakt.audit.{env}.>"))
        .await
    {
        Ok(m) if m.sequence < from => return Ok(out),
        Ok(_) => {}
        Err(e) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {
            return Ok(out);
        }
        Err(e) => return Err(nats_err("read audit head", e)),
    }
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: format!("vakt.audit.{env}.>"),
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: from.max(1),
            },
            ..Default::default()
        })
        .await
        .map_err(|e| nats_err("audit consumer", e))?;
    let mut msgs = consumer
        .messages()
        .await
        .map_err(|e| nats_err("audit consumer", e))?;
    loop {
        // An env with no events after `from` delivers nothing: bound the wait.
        let next = tokio::time::timeout(Duration::from_millis(500), msgs.next()).await;
        let Ok(Some(m)) = next else { break };
        let m = m.map_err(|e| nats_err("audit read", e))?;
        let info = m.info().map_err(|e| nats_err("audit read", e))?;
        let (seq, pending) = (info.stream_sequence, info.pending);
        let event: AuditEvent =
            serde_json::from_slice(&m.payload).map_err(|e| nats_err("decode audit event", e))?;
        out.push(Stored { seq, event });
        if pending == 0 || seq >= last {
            break;
        }
    }
    Ok(out)
}

/// Checks the hash chain of a sequence of events of one environment: each event's hash matches
/// its content and names the previous event's hash. Returns the index of the first bad event.
pub fn verify_chain(events: &[AuditEvent], start: &str) -> Result<(), (usize, String)> {
    let mut prev = start.to_owned();
    for (i, e) in events.iter().enumerate() {
        if e.prev_hash != prev {
            return Err((
                i,
                format!(
                    "event {} names previous hash {} but the previous event is {}",
                    e.id, e.prev_hash, prev
                ),
            ));
        }
        let h = e.compute_hash();
        if h != e.hash {
            return Err((
                i,
                format!(
                    "event {} was altered: its hash is {} but its content hashes to {h}",
                    e.id, e.hash
                ),
            ));
        }
        prev = e.hash.clone();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_covers_the_event_with_an_empty_hash_field() {
        let mut ev = AuditEvent::new("p/1", "dev", "ada", "kv.put", "applied");
        ev.detail = Some(serde_json::json!({"b": 1, "a": [true, null, "x"]}));
        ev.prev_hash = GENESIS.into();
        ev.hash = "sha256:stale".into();
        let mut blank = ev.clone();
        blank.hash = String::new();
        let expected = canon::digest(&canon::to_vec(&serde_json::to_value(&blank).unwrap()));
        assert_eq!(ev.compute_hash(), expected);
        assert_eq!(blank.compute_hash(), expected);
        // and any field change moves it
        let mut other = ev.clone();
        other.actor = "bob".into();
        assert_ne!(other.compute_hash(), expected);
    }
}
