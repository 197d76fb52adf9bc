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
use sha2::{Digest as _, Sha256};

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
        let size = AuditEvent::json_len;
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
        let mut out = Vec::with_capacity(1024);
        self.write_canonical(&mut out);
        canon::digest(&out)
    }

    /// Appends this event's canonical JSON with an empty `hash` (what [`Self::compute_hash`]
    /// covers) and returns the offset where the hash's characters go. Written field by field
    /// in sorted key order, equal to `canon::to_vec(serde_json::to_value(self))` with `hash`
    /// blanked (a unit test holds the two together), without building a `Value`.
    fn write_canonical(&self, out: &mut Vec<u8>) -> usize {
        self.write_parts(out, None).hash
    }

    /// [`Self::write_canonical`], or with `holes: Some(key)` the same bytes with three values
    /// left out, for [`Prepared`]: `detail.<key>` (a number), `prev_hash` and `time` (strings,
    /// quotes included). Returns where each hole (and the hash's characters) go.
    fn write_parts(&self, out: &mut Vec<u8>, holes: Option<&str>) -> Holes {
        fn key(out: &mut Vec<u8>, key: &str) {
            out.extend_from_slice(b",\"");
            out.extend_from_slice(key.as_bytes());
            out.extend_from_slice(b"\":");
        }
        fn field(out: &mut Vec<u8>, k: &str, v: &str) {
            key(out, k);
            canon::write_str(v, out);
        }
        fn opt(out: &mut Vec<u8>, key: &str, v: &Option<String>) {
            if let Some(v) = v {
                field(out, key, v);
            }
        }
        let mut at = Holes::default();
        out.extend_from_slice(b"{\"action\":");
        canon::write_str(&self.action, out);
        field(out, "actor", &self.actor);
        opt(out, "causation_id", &self.causation_id);
        opt(out, "client", &self.client);
        opt(out, "commit", &self.commit);
        opt(out, "correlation_id", &self.correlation_id);
        match (&self.detail, holes) {
            (Some(Value::Object(m)), Some(hole)) => {
                key(out, "detail");
                canon::write_object(m, out, |k, v, out| {
                    if k == hole {
                        at.revision = out.len();
                    } else {
                        canon::write(v, out);
                    }
                });
            }
            (Some(d), _) => {
                key(out, "detail");
                canon::write(d, out);
            }
            (None, _) => {}
        }
        field(out, "env", &self.env);
        out.extend_from_slice(b",\"hash\":\"");
        at.hash = out.len();
        out.push(b'"');
        field(out, "id", &self.id);
        opt(out, "job_id", &self.job_id);
        field(out, "outcome", &self.outcome);
        opt(out, "plan_id", &self.plan_id);
        key(out, "prev_hash");
        at.prev_hash = out.len();
        if holes.is_none() {
            canon::write_str(&self.prev_hash, out);
        }
        opt(out, "reason", &self.reason);
        opt(out, "site", &self.site);
        opt(out, "target", &self.target);
        key(out, "time");
        at.time = out.len();
        if holes.is_none() {
            canon::write_str(&self.time, out);
        }
        out.push(b'}');
        at
    }

    /// Sets `hash` and returns the event as stored: its canonical JSON with the hash in place
    /// (one serialisation for both the hash and the payload).
    pub fn seal(&mut self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1024);
        let at = self.write_canonical(&mut out);
        self.hash = canon::digest(&out);
        out.splice(at..at, self.hash.bytes());
        out
    }

    /// The length of this event's JSON (`serde_json::to_vec`'s: the same fields and values,
    /// only in another order).
    fn json_len(&self) -> usize {
        let mut out = Vec::with_capacity(1024);
        self.write_canonical(&mut out);
        out.len() + self.hash.len()
    }
}

pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Offsets into an event's canonical JSON (see [`AuditEvent::write_parts`]).
#[derive(Debug, Clone, Copy, Default)]
struct Holes {
    revision: usize,
    hash: usize,
    prev_hash: usize,
    time: usize,
}

/// An audit event made ready before the write it records is acknowledged ([`Prepared::new`]):
/// everything but what is only known when it is sent (the write's revision, the chain head and
/// the time) is already canonical JSON, so sending it ([`Audit::send_prepared`]) is a few
/// copies, one SHA-256 and the publish.
#[derive(Debug)]
pub struct Prepared {
    id: String,
    subject: async_nats::Subject,
    form: Form,
}

#[derive(Debug)]
enum Form {
    /// The event's canonical JSON with the holes of [`Holes`] (`hash` empty), and the SHA-256
    /// state after the bytes before the first hole (the revision's), hashed ahead.
    Parts {
        json: Vec<u8>,
        at: Holes,
        prefix: Box<Sha256>,
    },
    /// An event [`AuditEvent::bounded`] would change (a long field, a large detail): sent
    /// through [`Audit::send`], with the revision set in its detail then.
    Event { ev: Box<AuditEvent>, key: String },
}

impl Prepared {
    /// The event's id (its `Nats-Msg-Id`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Prepares `ev` to be sent later with [`Audit::send_prepared`], which fills in
    /// `detail.<revision_key>` (a number; `ev.detail` must be an object holding that key), the
    /// chain fields and the time. The result is the event [`Audit::send`] would have stored.
    /// `env` and `client` are the writer's.
    pub fn new(
        mut ev: AuditEvent,
        env: &str,
        client: Option<&str>,
        revision_key: &str,
    ) -> Prepared {
        let subject = async_nats::Subject::from(subject(env, &ev.action));
        let id = ev.id.clone();
        if ev.client.is_none() {
            ev.client = client.map(str::to_owned);
        }
        env.clone_into(&mut ev.env);
        let has_key = matches!(&ev.detail, Some(Value::Object(m)) if m.contains_key(revision_key));
        // The parts only for an event `bounded` leaves as it is: byte lengths (never fewer
        // than characters) under the character limits, the whole well under the size bound.
        let short = |s: &str, max: usize| s.len() <= max;
        let fits = has_key
            && [
                &ev.site,
                &ev.commit,
                &ev.plan_id,
                &ev.job_id,
                &ev.correlation_id,
                &ev.causation_id,
                &ev.target,
            ]
            .iter()
            .all(|o| o.as_deref().is_none_or(|s| short(s, MAX_TARGET_CHARS)))
            && short(&ev.id, MAX_TARGET_CHARS)
            && short(&ev.actor, MAX_TARGET_CHARS)
            && short(&ev.action, 64)
            && short(&ev.outcome, 64)
            && ev
                .reason
                .as_deref()
                .is_none_or(|r| short(r, MAX_REASON_CHARS));
        if fits {
            let mut json = Vec::with_capacity(1024);
            let at = ev.write_parts(&mut json, Some(revision_key));
            // Room for the revision (20 digits), the time and the two hashes, with margin.
            if json.len() + 20 + 64 + 2 * 80 <= MAX_EVENT_BYTES - 200 {
                return Prepared::parts(id, subject, json, at);
            }
        }
        Prepared {
            id,
            subject,
            form: Form::Event {
                ev: Box::new(ev),
                key: revision_key.to_owned(),
            },
        }
    }

    /// A prepared event of canonical JSON `json` with holes `at`: the bytes before the first
    /// hole are hashed now (the acknowledgement then hashes only the rest).
    fn parts(id: String, subject: async_nats::Subject, json: Vec<u8>, at: Holes) -> Prepared {
        let mut prefix = Sha256::new();
        prefix.update(&json[..at.revision]);
        Prepared {
            id,
            subject,
            form: Form::Parts {
                json,
                at,
                prefix: Box::new(prefix),
            },
        }
    }

    /// The stored JSON and hash of the event with `revision`, chained to `prev_hash`, at
    /// `time`; `None` for an event kept whole (sent through [`Audit::send`]). The bytes are
    /// the ones [`AuditEvent::seal`] writes: the hash covers them with `hash` empty, and is then
    /// written into the room left for it. Written into the prepared buffer itself: the bytes
    /// before the revision stay where they are, only the rest is moved (no second buffer the
    /// size of the event per acknowledgement). [`Audit::send_prepared`] does this to the parts
    /// it takes apart; the tests call it on the whole.
    #[cfg(test)]
    pub(crate) fn assemble(
        self,
        revision: u64,
        prev_hash: &str,
        time: &str,
    ) -> Option<(Vec<u8>, String)> {
        self.form.assemble(revision, prev_hash, time)
    }
}

impl Form {
    /// [`Prepared::assemble`].
    fn assemble(self, revision: u64, prev_hash: &str, time: &str) -> Option<(Vec<u8>, String)> {
        let Form::Parts {
            mut json,
            at,
            prefix,
        } = self
        else {
            return None;
        };
        // The bytes after the revision's hole, moved out once (a few hundred bytes; freed on
        // this thread).
        let rest = json.split_off(at.revision);
        let part = |from: usize, to: usize| &rest[from - at.revision..to - at.revision];
        json.reserve(rest.len() + 24 + HASH_LEN + prev_hash.len() + time.len() + 8);
        write_decimal(revision, &mut json);
        json.extend_from_slice(part(at.revision, at.hash));
        let hash_at = json.len();
        json.extend_from_slice(&[0; HASH_LEN]);
        json.extend_from_slice(part(at.hash, at.prev_hash));
        canon::write_str(prev_hash, &mut json);
        json.extend_from_slice(part(at.prev_hash, at.time));
        canon::write_str(time, &mut json);
        json.extend_from_slice(part(at.time, at.revision + rest.len()));
        // The prefix state covers the bytes before the revision, which did not move.
        let mut h = *prefix;
        h.update(&json[at.revision..hash_at]);
        h.update(&json[hash_at + HASH_LEN..]);
        let hash = hex_digest(h);
        json[hash_at..hash_at + HASH_LEN].copy_from_slice(hash.as_bytes());
        Some((json, hash))
    }
}

/// Appends `n` in decimal, as `write!(out, "{n}")` does, without the formatting machinery
/// (once per acknowledged write).
fn write_decimal(mut n: u64, out: &mut Vec<u8>) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        // A digit: `n % 10` is below 10.
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// The length of a hash as written: `sha256:` and 64 hex digits.
const HASH_LEN: usize = 7 + 64;

/// `h`'s digest as [`canon::digest`] writes it.
fn hex_digest(h: Sha256) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(HASH_LEN);
    s.push_str("sha256:");
    for b in h.finalize() {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 15)]));
    }
    s
}

/// The members shared by a run of events that differ only in their action, id, target, reason
/// and detail (the change events of one apply), written as canonical JSON once:
/// [`Template::prepare`] then writes only what differs, straight into the [`Prepared`] form
/// (no [`AuditEvent`], no `serde_json::Value`). The result is byte for byte what
/// [`Prepared::new`] makes of the same event (a unit test holds the two together).
#[derive(Debug)]
pub struct Template {
    env: String,
    /// The members between `action` and `detail`: `actor` to `correlation_id`.
    head: Vec<u8>,
    /// `env` and the start of `hash`.
    env_hash: Vec<u8>,
    /// `job_id`, `outcome`, `plan_id` and the start of `prev_hash`.
    tail: Vec<u8>,
    /// The `site` member (between `reason` and `target`).
    site: Vec<u8>,
    /// Every shared field is within what [`AuditEvent::bounded`] keeps as it is.
    fits: bool,
    /// Subjects by action.
    subjects: Vec<(String, async_nats::Subject)>,
}

impl Template {
    /// The shared members of `proto` (its actor, causation, client, commit, correlation, job,
    /// outcome, plan and site; the rest is ignored), for a writer of environment `env` whose
    /// `client` is used when `proto` names none, as [`Prepared::new`] does.
    pub fn new(proto: &AuditEvent, env: &str, client: Option<&str>) -> Template {
        fn key(out: &mut Vec<u8>, key: &str) {
            out.extend_from_slice(b",\"");
            out.extend_from_slice(key.as_bytes());
            out.extend_from_slice(b"\":");
        }
        fn opt(out: &mut Vec<u8>, k: &str, v: Option<&str>) {
            if let Some(v) = v {
                key(out, k);
                canon::write_str(v, out);
            }
        }
        let client = proto.client.as_deref().or(client);
        let mut head = Vec::new();
        opt(&mut head, "actor", Some(&proto.actor));
        opt(&mut head, "causation_id", proto.causation_id.as_deref());
        opt(&mut head, "client", client);
        opt(&mut head, "commit", proto.commit.as_deref());
        opt(&mut head, "correlation_id", proto.correlation_id.as_deref());
        let mut env_hash = Vec::new();
        opt(&mut env_hash, "env", Some(env));
        env_hash.extend_from_slice(b",\"hash\":\"");
        let mut tail = Vec::new();
        opt(&mut tail, "job_id", proto.job_id.as_deref());
        opt(&mut tail, "outcome", Some(&proto.outcome));
        opt(&mut tail, "plan_id", proto.plan_id.as_deref());
        key(&mut tail, "prev_hash");
        let mut site = Vec::new();
        opt(&mut site, "site", proto.site.as_deref());
        let short = |s: Option<&str>, max: usize| s.is_none_or(|s| s.len() <= max);
        // The client is not cut by `bounded`; the rest as in `Prepared::new`.
        let fits = [
            proto.site.as_deref(),
            proto.commit.as_deref(),
            proto.plan_id.as_deref(),
            proto.job_id.as_deref(),
            proto.correlation_id.as_deref(),
            proto.causation_id.as_deref(),
            Some(proto.actor.as_str()),
        ]
        .into_iter()
        .all(|s| short(s, MAX_TARGET_CHARS))
            && short(Some(&proto.outcome), 64);
        Template {
            env: env.to_owned(),
            head,
            env_hash,
            tail,
            site,
            fits,
            subjects: Vec::new(),
        }
    }

    /// The event with this template's shared members and `action`, `id`, `target`, `reason`
    /// and the object `detail` writes (canonical JSON; it returns where its revision number
    /// goes, see [`Prepared::new`]), ready for [`Audit::send_prepared`]. `None` when the event
    /// is one [`AuditEvent::bounded`] would change (a long field, a large detail): prepare it
    /// with [`Prepared::new`] instead, which keeps it whole.
    pub fn prepare(
        &mut self,
        action: &str,
        id: String,
        target: Option<&str>,
        reason: Option<&str>,
        detail: impl FnOnce(&mut Vec<u8>) -> usize,
    ) -> Option<Prepared> {
        let short = |s: Option<&str>, max: usize| s.is_none_or(|s| s.len() <= max);
        if !(self.fits
            && short(Some(action), 64)
            && short(Some(&id), MAX_TARGET_CHARS)
            && short(target, MAX_TARGET_CHARS)
            && short(reason, MAX_REASON_CHARS))
        {
            return None;
        }
        let mut json = Vec::with_capacity(1024);
        json.extend_from_slice(b"{\"action\":");
        canon::write_str(action, &mut json);
        json.extend_from_slice(&self.head);
        json.extend_from_slice(b",\"detail\":");
        let revision = detail(&mut json);
        json.extend_from_slice(&self.env_hash);
        let hash = json.len();
        json.extend_from_slice(b"\",\"id\":");
        canon::write_str(&id, &mut json);
        json.extend_from_slice(&self.tail);
        let prev_hash = json.len();
        if let Some(r) = reason {
            json.extend_from_slice(b",\"reason\":");
            canon::write_str(r, &mut json);
        }
        json.extend_from_slice(&self.site);
        if let Some(t) = target {
            json.extend_from_slice(b",\"target\":");
            canon::write_str(t, &mut json);
        }
        json.extend_from_slice(b",\"time\":");
        let time = json.len();
        json.push(b'}');
        if json.len() + 20 + 64 + 2 * 80 > MAX_EVENT_BYTES - 200 {
            return None;
        }
        let subject = match self.subjects.iter().find(|(a, _)| a == action) {
            Some((_, s)) => s.clone(),
            None => {
                let s = async_nats::Subject::from(subject(&self.env, action));
                self.subjects.push((action.to_owned(), s.clone()));
                s
            }
        };
        let at = Holes {
            revision,
            hash,
            prev_hash,
            time,
        };
        Some(Prepared::parts(id, subject, json, at))
    }
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
        let payload = ev.seal();
        let subject = async_nats::Subject::from(subject(&self.env, &ev.action));
        self.publish(subject, payload, &ev.id, ev.hash).await
    }

    /// Publishes a sealed event and makes its hash the chain head.
    async fn publish(
        &mut self,
        subject: async_nats::Subject,
        payload: Vec<u8>,
        id: &str,
        hash: String,
    ) -> Result<jetstream::context::PublishAckFuture, StoreError> {
        let fut = self
            .js
            .send_publish(
                subject,
                jetstream::message::PublishMessage::build()
                    .payload(payload.into())
                    .message_id(id),
            )
            .await
            .map_err(|e| nats_err("publish audit event", e))?;
        self.head = hash;
        Ok(fut)
    }

    /// Chains a [`Prepared`] event to the head, with `revision` in its detail and the current
    /// time, and publishes it without waiting for the acknowledgement.
    pub async fn send_prepared(
        &mut self,
        p: Prepared,
        revision: u64,
    ) -> Result<jetstream::context::PublishAckFuture, StoreError> {
        if let Form::Event { mut ev, key } = p.form {
            if let Some(Value::Object(m)) = &mut ev.detail {
                m.insert(key, Value::from(revision));
            }
            ev.time = now_rfc3339();
            return self.send(*ev).await;
        }
        if let Some(f) = &self.fence {
            f().map_err(|reason| StoreError::Fenced { reason })?;
        }
        let Prepared { id, subject, form } = p;
        let Some((out, hash)) = form.assemble(revision, &self.head, &now_rfc3339()) else {
            return Err(nats_err(
                "publish audit event",
                "prepared event without its parts",
            ));
        };
        self.publish(subject, out, &id, hash).await
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
    fn decimals_are_written_as_format_writes_them() {
        for n in [
            0,
            1,
            9,
            10,
            42,
            99,
            100,
            12_345,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut out = b"x".to_vec();
            write_decimal(n, &mut out);
            assert_eq!(out, format!("x{n}").into_bytes());
        }
    }

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

    /// The old way: `serde_json::to_value`, `hash` blanked, canonical bytes.
    fn via_value(ev: &AuditEvent) -> Vec<u8> {
        let mut v = serde_json::to_value(ev).unwrap();
        if let Value::Object(m) = &mut v {
            m.insert("hash".into(), Value::String(String::new()));
        }
        canon::to_vec(&v)
    }

    #[test]
    fn the_direct_writer_equals_the_canonical_json_of_the_value() {
        let mut full = AuditEvent::new("p/cfg/k\"é", "dev", "ada \\ 😀", "kv.heal", "applied");
        full.site = Some("fra\n1".into());
        full.client = Some("10.0.0.1:5\u{1}".into());
        full.target = Some("vakt_dev_config/k</script>".into());
        full.commit = Some("c".repeat(40));
        full.plan_id = Some("plan-1".into());
        full.job_id = Some("job-1".into());
        full.correlation_id = Some("plan-1".into());
        full.causation_id = Some("tick-9".into());
        full.reason = Some("drift: \"x\" \t".into());
        full.detail = Some(serde_json::json!({
            "z": 1, "a": {"y": [1.5, null, {"b": true, "a": "é"}], "x": u64::MAX}, "m": -3
        }));
        full.prev_hash = GENESIS.into();
        full.hash = "sha256:stale".into();
        let bare = AuditEvent::new("", "", "", "", "");
        for ev in [full, bare] {
            let mut out = Vec::new();
            let at = ev.write_canonical(&mut out);
            assert_eq!(out, via_value(&ev));
            assert_eq!(&out[at - 8..=at], b"\"hash\":\"\"");
            assert_eq!(ev.compute_hash(), canon::digest(&via_value(&ev)));
            // Same length as serde_json's own rendering (what `bounded` measures).
            assert_eq!(ev.json_len(), serde_json::to_vec(&ev).unwrap().len());
            // Sealed: the stored bytes read back as the event with its hash, which verifies.
            let mut sealed = ev.clone();
            let payload = sealed.seal();
            let back: AuditEvent = serde_json::from_slice(&payload).unwrap();
            assert_eq!(back, sealed);
            assert_eq!(back.compute_hash(), back.hash);
            assert!(verify_chain(std::slice::from_ref(&back), &ev.prev_hash).is_ok());
        }
    }

    #[test]
    fn a_template_prepares_the_event_prepared_new_does() {
        let mut proto = AuditEvent::new("", "other", "ada \"é", "", "applied");
        proto.job_id = Some("job-1".into());
        proto.plan_id = Some("plan-1".into());
        proto.commit = Some("c".repeat(40));
        proto.site = Some("fra\n1".into());
        let detail = |out: &mut Vec<u8>| {
            out.extend_from_slice(b"{\"a\":[1,null],\"revision\":");
            let at = out.len();
            out.extend_from_slice(b",\"z\":\"x\"}");
            at
        };
        let (head, time) = ("sha256:abc", "2026-11-29T20:00:00.5Z");
        for client in [None, Some("10.0.0.1:5")] {
            let mut t = Template::new(&proto, "dev", client);
            for (action, target, reason) in [
                ("kv.put", Some("vakt_dev_config/k\"é"), None),
                ("kv.heal", None, Some("drift: \"x\"")),
                ("kv.put", Some("t"), Some("r")),
            ] {
                let id = format!("plan-1/config/{action}");
                let got = t
                    .prepare(action, id.clone(), target, reason, detail)
                    .expect("fits");
                let mut ev = proto.clone();
                ev.id = id;
                ev.action = action.into();
                ev.target = target.map(str::to_owned);
                ev.reason = reason.map(str::to_owned);
                ev.detail = Some(serde_json::json!({"a": [1, null], "revision": null, "z": "x"}));
                let want = Prepared::new(ev, "dev", client, "revision");
                assert_eq!(got.subject.as_str(), want.subject.as_str());
                assert_eq!(got.id(), want.id());
                let (got, want) = (got.assemble(7, head, time), want.assemble(7, head, time));
                let text = |p: Option<(Vec<u8>, String)>| {
                    p.map(|(j, h)| (String::from_utf8(j).unwrap(), h))
                };
                let (got, want) = (text(got), text(want));
                assert!(want.is_some());
                assert_eq!(got, want);
            }
            // What `bounded` would cut is left to `Prepared::new`.
            let long = "k".repeat(MAX_TARGET_CHARS + 1);
            assert!(
                t.prepare("kv.put", "i".into(), Some(&long), None, detail)
                    .is_none()
            );
            let big = |out: &mut Vec<u8>| {
                out.extend_from_slice(b"{\"revision\":");
                let at = out.len();
                out.extend_from_slice(b",\"x\":\"");
                out.extend(std::iter::repeat_n(b'y', MAX_EVENT_BYTES));
                out.extend_from_slice(b"\"}");
                at
            };
            assert!(t.prepare("kv.put", "i".into(), None, None, big).is_none());
        }
    }

    #[test]
    fn a_prepared_event_is_the_event_send_would_store() {
        let mut ev = AuditEvent::new("plan-1/config/k", "other", "ada", "kv.heal", "applied");
        ev.plan_id = Some("plan-1".into());
        ev.target = Some("vakt_dev_config/k\"é".into());
        ev.reason = Some("drift: \"x\"\n".into());
        ev.detail = Some(serde_json::json!({
            "change": "change", "path": "a/b.toml", "from_digest": null, "from_revision": 7,
            "revision": null, "to_digest": "sha256:1", "fields": ["/x", "/y"],
        }));
        let (head, time) = ("sha256:abc", "2026-11-29T20:00:00.5Z");
        let p = Prepared::new(ev.clone(), "dev", Some("10.0.0.1:5"), "revision");
        assert_eq!(p.id(), "plan-1/config/k");
        assert_eq!(p.subject.as_str(), "vakt.audit.dev.kv.heal");
        let (json, hash) = p.assemble(42, head, time).expect("parts");
        // What `Audit::send` stores for the same event.
        let mut want = ev.clone().bounded();
        want.env = "dev".into();
        want.client = Some("10.0.0.1:5".into());
        if let Some(Value::Object(m)) = &mut want.detail {
            m.insert("revision".into(), 42.into());
        }
        want.prev_hash = head.into();
        want.time = time.into();
        let stored = want.seal();
        assert_eq!(
            String::from_utf8(json).unwrap(),
            String::from_utf8(stored).unwrap()
        );
        assert_eq!(hash, want.hash);
        // An event `bounded` would cut, or one without the revision key, is kept whole.
        let mut long = ev.clone();
        long.target = Some("k".repeat(MAX_TARGET_CHARS + 1));
        let mut big = ev.clone();
        big.reason = Some("r".repeat(MAX_REASON_CHARS));
        big.detail = Some(serde_json::json!({"revision": null, "x": "y".repeat(MAX_EVENT_BYTES)}));
        let mut bare = ev.clone();
        bare.detail = None;
        for e in [long, big, bare] {
            let p = Prepared::new(e, "dev", None, "revision");
            assert!(p.assemble(1, head, time).is_none());
        }
    }
}
