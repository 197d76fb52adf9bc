//! The daemon: `vakt reconcile`. One leader per environment (and site) holds a lease in the
//! lock bucket (its max age is the lease; renewed by compare-and-set every third of it); replicas
//! stand by and take over when the lease lapses. The leader reconciles on every trigger: a poll
//! interval, a file-system watch on a local clone, a fetch from a remote, or a NATS message.
//!
//! Each step: (fetch) → resolve the env branch → refuse a branch that moved backwards or a commit
//! that fails validation (the last good commit stays, status says which commit and why) →
//! compile → plan against live KV → policy → apply. With self-heal off, a step with no new
//! commit only measures drift. A rollback applied with `--rev` stays pinned until the branch
//! head moves.
//!
//! Serves `/healthz`, `/metrics` (Prometheus text), `/status` (JSON) and `/snippets/*` through the
//! shared HTTP layer (`opsrepo::http`: timeouts, connection cap, security headers, `Host`
//! allow-list); with `--snippets-token` all but `/healthz` need that read token. SIGTERM ends the loop
//! between steps: an apply in progress finishes first, and the lease is released.
//!
//! Layer 4: may import from every layer below.

pub mod access;
pub mod alerts;
pub mod api;
pub mod client;
pub mod fetch;
pub mod lease;
pub mod metrics_source;
pub mod shared;
pub mod sitelinks;
pub mod snippets;

use shared::{Labels, Shared};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use futures_util::StreamExt;
use serde::Serialize;
use tokio::sync::{mpsc, watch};

use crate::desired::compile::Bucket;
use crate::ops::apply::{ApplyError, ApplyOpts};
use crate::ops::run::{self, Prepared};
use crate::outcome::{RefusalKind, StepOutcome};
use crate::store::Store;
use crate::store::audit::Audit;
use crate::store::state::{self, Status};
use crate::{EnvTarget, Error};

/// How the daemon runs.
#[derive(Debug, Clone)]
pub struct DaemonOpts {
    pub repo: PathBuf,
    pub target: EnvTarget,
    pub site: Option<String>,
    pub interval: Duration,
    pub watch: Option<PathBuf>,
    /// Fetch this remote (URL or name) into the repo before each step; the env branch is then
    /// read from `refs/remotes/origin/<branch>`.
    pub remote: Option<String>,
    pub trigger_subject: Option<String>,
    pub listen: Option<SocketAddr>,
    pub actor: String,
    pub allow_rewind: bool,
    /// This replica's id (lock holder).
    pub id: String,
    /// Write the live snippets here after every step and node poll.
    pub snippets: Option<PathBuf>,
    /// How often every declared node's health and info are polled.
    pub node_poll: Duration,
    /// Origin allowed to fetch `/snippets/*` from a browser (CORS), when the site is hosted
    /// elsewhere.
    pub cors_origin: Option<String>,
    /// Bearer tokens of the operator API; without them `/api/v1` denies everything.
    pub api_tokens: access::Tokens,
    /// Read token for `/snippets/*`, `/status` and `/metrics` (`--snippets-token`); without it
    /// they are open to whoever reaches the port.
    pub snippets_token: Option<String>,
    /// Timeouts, connection cap, body limit and `Host` allow-list of the port.
    pub http_limits: opsrepo::http::Limits,
    /// Scheduled backups, taken by the leader only.
    pub backups: Option<BackupSchedule>,
    /// Alertmanager base URLs (`--alertmanager`), read every `alert_poll` by the leader.
    pub alertmanagers: Vec<String>,
    pub alert_poll: Duration,
    /// How far before a condition started its related vakt changes are looked for.
    pub change_window: Duration,
    /// With `site`: how often the site leader publishes its heartbeat and probes the sites its
    /// declared links name (`sitelinks`).
    pub site_heartbeat: Duration,
    /// nats-server monitoring base URL: `/routez` and `/gatewayz` are shown on the
    /// `nats-cluster-route` links.
    pub nats_monitor: Option<String>,
    /// Prometheus-compatible query API (`--metrics-backend`): the decision header's ops
    /// metrics source. Without it the mode is `in_memory`.
    pub metrics_backend: Option<String>,
    /// How often the backend's query pack runs.
    pub metrics_poll: Duration,
    /// TLS for node admin calls (`--node-ca`, `--node-cert`, `--node-key`).
    pub node_tls: crate::ops::nodes::NodeTls,
}

/// `vakt reconcile --backup-dir DIR --backup-every D --backup-keep N`.
#[derive(Debug, Clone)]
pub struct BackupSchedule {
    pub dir: PathBuf,
    pub every: Duration,
    /// Verified backups of this environment kept in `dir`; older ones are deleted.
    pub keep: usize,
}

/// Runs until `shutdown` fires.
pub async fn run(opts: DaemonOpts, mut shutdown: watch::Receiver<bool>) -> Result<(), Error> {
    let mut sh = Shared::new(&opts.target.env);
    sh.cors_origin = opts.cors_origin.clone();
    let shared = Arc::new(sh);
    let (mut store, audit) = opts.target.open().await?;
    let lock = store.lock_bucket(&opts.target.settings).await?;
    let (tx, mut rx) = mpsc::channel::<String>(64);

    if let Some(addr) = opts.listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| Error::Other(format!("cannot listen on {addr}: {e}")))?;
        let local = listener
            .local_addr()
            .map_err(|e| Error::Other(e.to_string()))?;
        println!(
            "vakt reconcile: env {} listening on http://{local}",
            opts.target.env
        );
        let api = Arc::new(crate::daemon::api::ApiState::new(
            store.clone(),
            Audit::open(&store).await?,
            opts.target.env.clone(),
            opts.api_tokens.clone(),
            shared.clone(),
        ));
        let app = http_router(shared.clone(), opts.snippets_token.clone())
            .merge(crate::daemon::api::router(api));
        let mut sd = shutdown.clone();
        let limits = opts.http_limits.clone();
        tokio::spawn(async move {
            let _ = opsrepo::http::serve(listener, app, limits, async move {
                let _ = sd.wait_for(|v| *v).await;
            })
            .await;
        });
    }

    // Measured cross-site links (one monitor per site leader).
    let (links_tx, mut links_rx) = mpsc::channel::<()>(1);
    let site_links = match &opts.site {
        Some(site) => {
            let monitor = {
                let mut reg = shared
                    .registry
                    .lock()
                    .map_err(|_| Error::Other("metrics registry poisoned".into()))?;
                crate::daemon::sitelinks::Monitor::new(
                    crate::daemon::sitelinks::SiteLinkOpts {
                        env: opts.target.env.clone(),
                        site: site.clone(),
                        id: opts.id.clone(),
                        interval: opts.site_heartbeat,
                        nats_monitor: opts.nats_monitor.clone(),
                    },
                    &mut reg,
                )
                .map_err(|e| Error::Other(e.to_string()))?
            };
            let monitor = Arc::new(monitor);
            let (s1, s2) = (shared.clone(), shared.clone());
            crate::daemon::sitelinks::start(
                monitor.clone(),
                store.client.clone(),
                crate::daemon::sitelinks::Hooks {
                    is_leader: Box::new(move || s1.is_leader.load(Ordering::SeqCst)),
                    commit: Box::new(move || {
                        s2.status.lock().ok().and_then(|v| {
                            v.get("applied_commit")
                                .and_then(|c| c.as_str())
                                .map(str::to_owned)
                        })
                    }),
                },
                links_tx,
                shutdown.clone(),
            )
            .await
            .map_err(|e| Error::Other(e.to_string()))?;
            Some(monitor)
        }
        None => None,
    };

    // Leader lease.
    let lock_key = match &opts.site {
        Some(s) => format!("leader.{s}"),
        None => "leader".to_owned(),
    };
    let fence = Arc::new(lease::Fence::new(&lock_key, opts.target.settings.lease));
    let _ = shared.fence.set(fence.clone());
    // The lease outlives a shutdown request until the main loop is between steps: released
    // while a step still writes, the step's remaining writes would hit the fence.
    let (lease_stop_tx, lease_stop) = watch::channel(false);
    {
        let mut sd = shutdown.clone();
        let env = opts.target.env.clone();
        tokio::spawn(async move {
            if sd.wait_for(|v| *v).await.is_ok() {
                tracing::info!(env = %env, "shutdown requested: the step in progress finishes, then the lease is released");
            }
        });
    }
    // The API (created above, with its own store) serves every replica; from here on the
    // leader's writers check the fence.
    store.fence = Some(audit_fence(&fence, "KV write"));
    let lease_task = tokio::spawn(lease_loop(
        fence.clone(),
        store.clone(),
        opts.target.settings.clone(),
        lock.clone(),
        lock_key.clone(),
        opts.id.clone(),
        (opts.site.clone(), opts.actor.clone()),
        opts.target.settings.lease,
        shared.clone(),
        tx.clone(),
        lease_stop,
    ));

    // Requests of hand-run commands (`vakt apply` while this replica leads): every replica
    // listens, only the leader answers; they run on the main loop, between passes, so the
    // leader stays the only writer of the audit chain.
    let (writer_tx, mut writer_rx) = mpsc::channel::<async_nats::Message>(8);
    {
        let subject = lease::writer_subject(&store.prefix, &opts.target.env);
        let mut sub = store
            .client
            .subscribe(subject.clone())
            .await
            .map_err(|e| Error::Other(format!("subscribe {subject}: {e}")))?;
        let sh = shared.clone();
        tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                if sh.is_leader.load(Ordering::SeqCst) && m.reply.is_some() {
                    let _ = writer_tx.try_send(m);
                }
            }
        });
    }

    // NATS trigger.
    if let Some(subject) = &opts.trigger_subject {
        let mut sub = store
            .client
            .subscribe(subject.clone())
            .await
            .map_err(|e| Error::Other(format!("subscribe {subject}: {e}")))?;
        let tx = tx.clone();
        let client = store.client.clone();
        tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                let _ = tx.try_send("nats".into());
                if let Some(reply) = m.reply {
                    let _ = client.publish(reply, "queued".into()).await;
                }
            }
        });
    }

    // The NATS connection: losing it makes the daemon degraded at once (see `NatsLink`).
    tokio::spawn(nats_watch(
        store.client.clone(),
        shared.clone(),
        tx.clone(),
        shutdown.clone(),
    ));

    // File-system watch.
    let _watcher = match &opts.watch {
        Some(p) => Some(start_watch(p, tx.clone())?),
        None => None,
    };

    tokio::spawn(jobs_loop(
        fence.clone(),
        opts.node_tls.clone(),
        store.clone(),
        opts.target.env.clone(),
        shared.clone(),
        opts.id.clone(),
        (opts.target.settings.lease * 2).max(Duration::from_secs(2)),
        shutdown.clone(),
    ));
    // Alert sources: polled in their own task so a slow source never delays a step.
    let (alerts_tx, mut alerts_rx) = mpsc::channel::<Arc<Vec<crate::daemon::alerts::Source>>>(1);
    if !opts.alertmanagers.is_empty() {
        let sh = shared.clone();
        tokio::spawn(crate::daemon::alerts::poll_loop(
            crate::daemon::alerts::Source::from_urls(&opts.alertmanagers),
            opts.alert_poll,
            move || sh.is_leader.load(Ordering::SeqCst),
            alerts_tx,
            shutdown.clone(),
        ));
    }
    // Ops metrics source: the backend's query pack, polled in its own task like the alerts.
    let (metrics_tx, mut metrics_rx) =
        mpsc::channel::<Arc<crate::daemon::metrics_source::Backend>>(1);
    let metrics_backend = opts
        .metrics_backend
        .as_deref()
        .map(crate::daemon::metrics_source::Backend::new);
    if let Some(b) = &metrics_backend {
        let sh = shared.clone();
        tokio::spawn(crate::daemon::metrics_source::poll_loop(
            b.clone(),
            opts.target.env.clone(),
            opts.metrics_poll,
            move || sh.is_leader.load(Ordering::SeqCst),
            metrics_tx,
            shutdown.clone(),
        ));
    }
    let mut audit = audit;
    audit.fence = Some(audit_fence(&fence, "audit event"));
    let (obs_tx, mut obs_rx) = mpsc::channel::<Vec<crate::ops::nodes::Observation>>(1);
    let mut ctx = Ctx {
        fence: fence.clone(),
        metrics_backend: metrics_backend.map(Arc::new),
        started_at: crate::store::audit::now_rfc3339(),
        recent: RecentEvents::default(),
        trigger: tx.clone(),
        alert_sources: Arc::new(crate::daemon::alerts::Source::from_urls(
            &opts.alertmanagers,
        )),
        opts: opts.clone(),
        store,
        audit,
        shared: shared.clone(),
        last_refused: None,
        prev_desired: None,
        declared: Vec::new(),
        observations: Vec::new(),
        poll_pending: false,
        polling: false,
        obs_tx,
        model: None,
        site_links,
    };
    // The first step comes from acquiring the lease (the "leader" trigger), so the poll starts
    // one interval later instead of racing it.
    let mut tick =
        tokio::time::interval_at(tokio::time::Instant::now() + opts.interval, opts.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut node_tick = tokio::time::interval(opts.node_poll);
    node_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let backup_every = opts
        .backups
        .as_ref()
        .map_or(Duration::from_secs(86_400), |b| b.every);
    let mut backup_tick =
        tokio::time::interval_at(tokio::time::Instant::now() + backup_every, backup_every);
    backup_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // A shutdown requested during the last step wins over any trigger queued meanwhile
        // (`select!` picks among ready branches at random).
        if *shutdown.borrow() {
            break;
        }
        let source = tokio::select! {
            _ = shutdown.wait_for(|v| *v) => break,
            _ = tick.tick() => "poll".to_owned(),
            _ = backup_tick.tick(), if opts.backups.is_some() => {
                if shared.is_leader.load(Ordering::SeqCst) {
                    ctx.scheduled_backup().await;
                    ctx.refresh_snippets().await;
                }
                continue;
            }
            _ = node_tick.tick() => {
                // The HTTP calls run beside the loop (a node that hangs must not hold a merge
                // back); only recording what they saw happens here.
                if shared.is_leader.load(Ordering::SeqCst) {
                    ctx.start_node_poll();
                }
                continue;
            }
            Some(observations) = obs_rx.recv() => {
                ctx.polling = false;
                if shared.is_leader.load(Ordering::SeqCst) {
                    ctx.record_observations(observations).await;
                    ctx.refresh_snippets().await;
                }
                continue;
            }
            Some(()) = links_rx.recv() => {
                if shared.is_leader.load(Ordering::SeqCst) {
                    ctx.refresh_snippets().await;
                }
                continue;
            }
            Some(backend) = metrics_rx.recv() => {
                ctx.metrics_backend = Some(backend);
                if shared.is_leader.load(Ordering::SeqCst) {
                    ctx.refresh_snippets().await;
                }
                continue;
            }
            Some(sources) = alerts_rx.recv() => {
                ctx.alert_sources = sources;
                if shared.is_leader.load(Ordering::SeqCst) {
                    ctx.refresh_snippets().await;
                }
                continue;
            }
            Some(m) = writer_rx.recv() => {
                if shared.is_leader.load(Ordering::SeqCst) {
                    ctx.writer_request(m).await;
                }
                continue;
            }
            Some(s) = rx.recv() => s,
        };
        // Coalesce a burst of triggers into one step.
        while rx.try_recv().is_ok() {}
        if !shared.is_leader.load(Ordering::SeqCst) {
            continue;
        }
        if let Ok(mut l) = shared.nats.lock()
            && !l.is_up()
        {
            // Degraded: a pass against a NATS that is down would only fail (and each of its
            // requests wait for a timeout). The watcher triggers a pass once it is back.
            l.passes_skipped += 1;
            tracing::debug!(env = %opts.target.env, trigger = %source, "NATS is down: pass not started");
            continue;
        }
        let _ = ctx.step(&source).await;
        shared.steps.fetch_add(1, Ordering::SeqCst);
    }
    // Between steps: now the lease goes.
    let _ = lease_stop_tx.send(true);
    let _ = lease_task.await;
    Ok(())
}

/// Watches the client's connection state every 200 ms: records it in [`Shared::nats`], logs
/// the loss and the return once each, and triggers a pass when the connection is back.
async fn nats_watch(
    client: async_nats::Client,
    shared: Arc<Shared>,
    tx: mpsc::Sender<String>,
    mut shutdown: watch::Receiver<bool>,
) {
    use async_nats::connection::State;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_up = true;
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|v| *v) => return,
            _ = tick.tick() => {}
        }
        let state = client.connection_state();
        let up = state == State::Connected;
        let connects = client.statistics().connects.load(Ordering::Relaxed);
        if let Ok(mut l) = shared.nats.lock() {
            l.state = match state {
                State::Connected => "connected",
                State::Disconnected => "disconnected",
                State::Pending => "pending",
            };
            l.connects = connects;
            l.reconnect_attempts =
                crate::store::RECONNECT_ATTEMPTS.load(std::sync::atomic::Ordering::Relaxed);
            if up {
                l.down_since = None;
            } else if l.down_since.is_none() {
                l.down_since = Some(crate::store::audit::now_rfc3339());
            }
        }
        if was_up && !up {
            tracing::warn!(env = %shared.env, "NATS connection lost: degraded, no pass runs until it is back (reconnecting with backoff)");
        } else if !was_up && up {
            tracing::info!(env = %shared.env, connects, "NATS connection back: reconciling");
            let _ = tx.try_send("nats-reconnected".into());
        }
        was_up = up;
    }
}

/// Takes the lease key by creating it. When it exists and names another holder, that holder is
/// noted in `other` (a later takeover is a failover). When it names this replica, it is this
/// replica's own create whose answer was lost (sent while NATS was unreachable, stored when the
/// connection came back): it is renewed by compare-and-set on its revision instead of being
/// waited out for a whole lease. `Err(None)`: held by someone else (or renewed by someone else
/// meanwhile); `Err(Some(e))`: the create failed for another reason.
async fn take_lease(
    lock: &kv::Store,
    key: &str,
    me: &str,
    value: bytes::Bytes,
    other: &mut Option<String>,
) -> Result<u64, Option<kv::CreateError>> {
    match lock.create(key, value.clone()).await {
        Ok(r) => Ok(r),
        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
            let Ok(Some(entry)) = lock.entry(key).await else {
                return Err(None);
            };
            let holder = serde_json::from_slice::<lease::Holder>(&entry.value)
                .ok()
                .map(|h| h.holder);
            match holder {
                Some(h) if h == me && entry.operation == kv::Operation::Put => {
                    tracing::info!(holder = %me, revision = entry.revision, "the lease key is this replica's own (an answer lost to a NATS outage): renewing it");
                    lock.update(key, value, entry.revision)
                        .await
                        .map_err(|_| None)
                }
                Some(h) if h != me => {
                    *other = Some(h);
                    Err(None)
                }
                _ => Err(None),
            }
        }
        Err(e) => Err(Some(e)),
    }
}

/// What one pass learns and hands from step to step./// What one pass learns and hands from step to step.
struct Pass {
    /// What triggered it (`poll`, `watch`, `nats`, …), the causation of its audit events.
    source: String,
    applied: Option<crate::store::state::Applied>,
    prepared: Option<Prepared>,
}

/// What a step tells the loop.
enum Flow {
    /// Go on with the next step.
    Next,
    /// The pass is over, with this outcome (`record` still runs).
    Done(StepOutcome),
}

type StepFuture<'a> = futures_util::future::BoxFuture<'a, Result<Flow, String>>;
type StepFn = for<'a> fn(&'a mut Ctx, &'a mut Pass) -> StepFuture<'a>;

/// The reconcile pass, in order; all steps share one signature. An error ends the pass as
/// `failed` (retried on the next trigger; streams lost with NATS's data are re-created and the
/// pass re-run at once). `Ctx::record` runs after them, always.
const STEPS: [(&str, StepFn); 5] = [
    ("fetch", Ctx::fetch_step),
    ("prepare", Ctx::prepare_step),
    ("skip-repeated-refusal", Ctx::repeat_step),
    ("measure-drift", Ctx::drift_step),
    ("apply", Ctx::apply_step),
];

struct Ctx {
    /// This replica's lease fence: checked before every write.
    fence: Arc<lease::Fence>,
    opts: DaemonOpts,
    store: Store,
    audit: Audit,
    shared: Arc<Shared>,
    /// (commit, branch head) last refused for validation or rewind: not re-audited every tick.
    last_refused: Option<(String, String)>,
    prev_desired: Option<crate::Desired>,
    declared: Vec<crate::ops::nodes::Declared>,
    observations: Vec<crate::ops::nodes::Observation>,
    poll_pending: bool,
    /// A node poll is running beside the loop; its result arrives on `obs_tx`'s receiver.
    polling: bool,
    obs_tx: mpsc::Sender<Vec<crate::ops::nodes::Observation>>,
    /// Typed model of the applied commit (for snippets), with its commit.
    model: Option<(String, Arc<opsrepo::load::Model>)>,
    /// Alert sources as of their last poll.
    alert_sources: Arc<Vec<crate::daemon::alerts::Source>>,
    /// The site-link monitor (with `--site`).
    site_links: Option<Arc<crate::daemon::sitelinks::Monitor>>,
    /// The metrics backend as of its last query (with `--metrics-backend`).
    metrics_backend: Option<Arc<crate::daemon::metrics_source::Backend>>,
    /// When this process started counting (the in-process figures' window).
    started_at: String,
    /// The audit events the snippets show, kept between refreshes.
    recent: RecentEvents,
    /// The pass triggers' queue (only to see whether one is waiting).
    trigger: mpsc::Sender<String>,
}

/// The snippets' window of audit events: this environment's events among the last
/// [`RECENT_EVENTS`] sequences of the audit stream. Each refresh reads only what was appended
/// since the previous one (a refresh after every pass used to read the whole window again,
/// and the next trigger waited for it).
#[derive(Default)]
struct RecentEvents {
    /// The first sequence not read yet.
    next: u64,
    events: std::collections::VecDeque<crate::store::audit::Stored>,
}

/// How many sequences of the audit stream the snippets look back over.
const RECENT_EVENTS: u64 = 2000;

impl RecentEvents {
    /// Reads the events appended since the last call and drops those that left the window.
    async fn refresh(&mut self, audit: &Audit) {
        let Ok(last) = audit.last_seq().await else {
            return; // NATS unreachable: the window stays as it was
        };
        if last.saturating_add(1) < self.next {
            // The stream is behind what was read (re-created, restored): start over.
            *self = RecentEvents::default();
        }
        let cutoff = last.saturating_sub(RECENT_EVENTS);
        let from = self.next.max(cutoff);
        if from <= last {
            match audit.read(from).await {
                Ok(new) => {
                    let read_to = new.last().map_or(last, |s| s.seq.max(last));
                    self.events.extend(new);
                    self.next = read_to + 1;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "audit events for the snippets not read");
                }
            }
        }
        while self.events.front().is_some_and(|s| s.seq < cutoff) {
            self.events.pop_front();
        }
    }
}

/// The audit hook of a leader's writers: the local lease deadline (see [`lease::Fence`]).
fn audit_fence(fence: &Arc<lease::Fence>, what: &'static str) -> crate::store::audit::AuditFence {
    let f = fence.clone();
    Arc::new(move || {
        f.check_local().map(|_| ()).map_err(|e| {
            f.refused(what, &e);
            e.to_string()
        })
    })
}

impl Ctx {
    /// Whether this replica still holds its lease at the revision it acquired (checked before a
    /// write path). When not: logs and records the fencing, steps down and publishes the status.
    async fn fenced_ok(&mut self, what: &str) -> bool {
        match self.fence.check().await {
            Ok(_) => true,
            Err(f) => {
                self.fence.refused(what, &f);
                self.shared.is_leader.store(false, Ordering::SeqCst);
                self.publish_status().await;
                false
            }
        }
    }

    /// A hand-run command's request (see [`lease::WriterRequest`]), answered on its reply
    /// subject. Recorded through this leader's (fenced) audit writer.
    async fn writer_request(&mut self, m: async_nats::Message) {
        let Some(reply_to) = m.reply.clone() else {
            return;
        };
        let mut reply = lease::WriterReply {
            leader: self.opts.id.clone(),
            recorded: false,
            outcome: None,
            applied_commit: None,
            error: None,
        };
        let req = if m.payload.len() > lease::MAX_WRITER_REQUEST {
            Err(format!(
                "request of {} bytes; the most is {}",
                m.payload.len(),
                lease::MAX_WRITER_REQUEST
            ))
        } else {
            serde_json::from_slice::<lease::WriterRequest>(&m.payload).map_err(|e| e.to_string())
        };
        match req {
            Err(e) => reply.error = Some(format!("bad request: {e}")),
            Ok(lease::WriterRequest::Refused {
                actor,
                reason,
                causation_id,
            }) => {
                let mut opts = ApplyOpts::new(&actor);
                opts.causation_id = Some(causation_id);
                opts.site = self.opts.site.clone();
                let r = crate::outcome::Refused::new(RefusalKind::LeaderActive, reason);
                match crate::ops::apply::record_refusal(
                    &self.store,
                    &mut self.audit,
                    "-",
                    None,
                    &opts,
                    &r,
                    &[],
                )
                .await
                {
                    Ok(()) => reply.recorded = true,
                    Err(e) => reply.error = Some(e.to_string()),
                }
                self.shared
                    .refused
                    .get_or_create(
                        &self
                            .shared
                            .l("reason", RefusalKind::LeaderActive.metric_label()),
                    )
                    .inc();
            }
            Ok(lease::WriterRequest::HandOff {
                actor,
                causation_id,
            }) => {
                let mut ev = crate::store::audit::AuditEvent::new(
                    format!("{causation_id}/handed-off"),
                    &self.opts.target.env,
                    &actor,
                    "apply.handed-off",
                    "accepted",
                );
                ev.causation_id = Some(causation_id);
                ev.site = self.opts.site.clone();
                ev.reason = Some(format!(
                    "a hand-run apply was handed to the leader `{}` (--while-leader hand-off)",
                    self.opts.id
                ));
                let recorded = match self.audit.refresh_head().await {
                    Ok(()) => self.audit.record(ev).await.map(|_| ()),
                    Err(e) => Err(e),
                };
                match recorded {
                    Err(e) => reply.error = Some(e.to_string()),
                    Ok(()) => {
                        reply.recorded = true;
                        let outcome = self.step("hand-off").await;
                        self.shared.steps.fetch_add(1, Ordering::SeqCst);
                        reply.outcome = Some(
                            outcome
                                .map_or(StepOutcome::Failed, |o| o)
                                .metric_label()
                                .to_owned(),
                        );
                        if let Ok(Some((st, _))) =
                            state::get::<Status>(&self.store.state, state::STATUS).await
                        {
                            reply.applied_commit = st.applied_commit.clone();
                            reply.error = st
                                .refused
                                .as_ref()
                                .filter(|_| reply.outcome.as_deref() == Some("refused"))
                                .map(|r| r.reason.clone())
                                .or_else(|| {
                                    st.last_error
                                        .clone()
                                        .filter(|_| reply.outcome.as_deref() == Some("failed"))
                                });
                        }
                    }
                }
            }
        }
        let body = serde_json::to_vec(&reply).unwrap_or_default();
        let _ = self.store.client.publish(reply_to, body.into()).await;
    }

    /// One reconcile pass: the steps of [`STEPS`] in order, a rebuild when NATS lost its
    /// streams, then the `record` step, which always runs.
    async fn step(&mut self, source: &str) -> Result<StepOutcome, String> {
        let t0 = Instant::now();
        if !self.fenced_ok("reconcile pass").await {
            return Err("fenced: this replica no longer holds the lease".into());
        }
        let mut outcome = self.run_steps(source).await;
        if outcome.is_err() && self.nats_up() {
            let missing = self.store.missing_streams().await;
            if missing.is_empty() && self.fence.check_local().is_ok() {
                // A NATS cluster that lost a server answers "no responders" or times out while
                // it elects new stream leaders. Passes are idempotent (compare-and-set writes,
                // an interrupted apply is recovered): retry once before the pass counts as
                // failed.
                if let Err(e) = &outcome {
                    tracing::warn!(env = %self.opts.target.env, error = %e, "reconcile pass failed; retrying it once in 1 s");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                outcome = self.run_steps(source).await;
            }
            if !missing.is_empty() {
                // NATS lost its data (or someone deleted streams): recreate the buckets and the
                // audit stream, then rebuild the desired state from Git in the same step.
                tracing::warn!(env = %self.opts.target.env, missing = ?missing, "streams missing: re-creating them and rebuilding from Git");
                match self.opts.target.open().await {
                    Ok((mut store, mut audit)) => {
                        audit.fence = Some(audit_fence(&self.fence, "audit event"));
                        store.fence = Some(audit_fence(&self.fence, "KV write"));
                        self.store = store;
                        self.audit = audit;
                        self.prev_desired = None;
                        outcome = self.run_steps(source).await;
                    }
                    Err(e) => outcome = Err(e.to_string()),
                }
            }
        }
        let ret = outcome.clone();
        self.record(t0, outcome).await;
        ret
    }

    /// Step `record`, the last of every pass whatever happened before it: starts the first node poll,
    /// the step metrics and health, a failure into the status, the status and the snippets.
    async fn record(&mut self, t0: Instant, outcome: Result<StepOutcome, String>) {
        if self.poll_pending {
            self.poll_pending = false;
            self.start_node_poll();
        }
        self.shared.duration.observe(t0.elapsed().as_secs_f64());
        let (step, err) = match &outcome {
            Ok(o) => (*o, None),
            Err(e) => (StepOutcome::Failed, Some(e.clone())),
        };
        self.shared
            .applies
            .get_or_create(&self.shared.l("outcome", step.metric_label()))
            .inc();
        self.shared
            .healthy
            .store(step != StepOutcome::Failed, Ordering::SeqCst);
        if let Some(e) = &err
            && let Err(f) = self.fence.check_local()
        {
            // The lease lapsed during the pass: its writes stopped at the fence; the status
            // is the new leader's to write.
            tracing::warn!(env = %self.opts.target.env, error = %e, "reconcile pass ended by the fence: {f}");
            self.shared.is_leader.store(false, Ordering::SeqCst);
        } else if let Some(e) = &err
            && !self.nats_up()
        {
            // Degraded: every NATS read or write would only wait for its timeout. The status
            // keeps the error locally; the pass the watcher triggers once NATS is back records it.
            tracing::warn!(env = %self.opts.target.env, error = %e, "reconcile step failed: NATS is down");
            if let Ok(mut s) = self.shared.status.lock()
                && s.is_object()
            {
                s["last_error"] = e.clone().into();
            }
            return;
        } else if let Some(e) = &err {
            tracing::warn!(env = %self.opts.target.env, error = %e, "reconcile step failed");
            let e2 = e.clone();
            let _ = crate::ops::apply::set_status(&self.store, |s| {
                s.state = crate::outcome::SyncState::Failed;
                s.last_error = Some(e2);
            })
            .await;
        }
        if !self.nats_up() {
            // Both read NATS: the pass the watcher triggers once it is back refreshes them.
            return;
        }
        self.publish_status().await;
        // A trigger that came in during this pass is served first: its pass ends with the
        // refresh (a refresh reads NATS a dozen times, and a merge must not wait for it).
        if self.trigger.capacity() < self.trigger.max_capacity() {
            tracing::debug!("snippets refreshed after the next pass: a trigger is waiting");
        } else {
            self.refresh_snippets().await;
        }
    }

    /// Whether the daemon's NATS connection is up (see [`shared::NatsLink`]).
    fn nats_up(&self) -> bool {
        self.store.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Takes a scheduled backup into the backup directory and deletes the oldest beyond `keep`.
    async fn scheduled_backup(&mut self) {
        let Some(b) = self.opts.backups.clone() else {
            return;
        };
        if !self.fenced_ok("scheduled backup").await {
            return;
        }
        let stamp = time::OffsetDateTime::now_utc()
            .format(time::macros::format_description!(
                "[year][month][day]T[hour][minute][second].[subsecond digits:3]Z"
            ))
            .unwrap_or_default();
        let dir = b.dir.join(format!("{}-{stamp}", self.opts.target.env));
        match crate::ops::backup::backup(&self.store, &mut self.audit, &dir, &self.opts.actor).await
        {
            Ok(r) => {
                tracing::info!(dir = %r.dir.display(), id = %r.manifest.id, "backup taken and verified");
                crate::ops::backup::prune(&b.dir, &self.opts.target.env, b.keep);
            }
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "scheduled backup failed");
            }
        }
    }

    /// Starts a poll of the declared nodes beside the loop, unless one is running: the HTTP
    /// calls (bounded by the node client's timeouts) never hold a trigger back; the result
    /// comes back on the loop's observation channel and is recorded there.
    fn start_node_poll(&mut self) {
        if self.polling || self.declared.is_empty() {
            return;
        }
        self.polling = true;
        let client = crate::ops::nodes::NodeClient::with_tls(&self.declared, &self.opts.node_tls);
        let declared = self.declared.clone();
        let tx = self.obs_tx.clone();
        tokio::spawn(async move {
            let _ = tx
                .send(crate::ops::nodes::observe(&client, &declared).await)
                .await;
        });
    }

    /// Keeps what a node poll saw, records the discovered inventory (fenced) and sets the
    /// per-node metrics.
    async fn record_observations(&mut self, observations: Vec<crate::ops::nodes::Observation>) {
        self.observations = observations;
        if !self.fenced_ok("inventory record").await {
            return;
        }
        if let Err(e) = crate::ops::inventory::record(&self.store, &self.observations).await {
            tracing::warn!(error = %e, "cannot record discovered inventory");
        }
        for o in &self.observations {
            let d = o.declared.as_ref();
            let labels = vec![
                ("env".to_owned(), self.shared.env.clone()),
                ("node".to_owned(), o.id.clone()),
                (
                    "site".to_owned(),
                    d.map(|d| d.site.clone()).unwrap_or_default(),
                ),
                (
                    "service_kind".to_owned(),
                    d.map(|d| d.service_kind.clone()).unwrap_or_default(),
                ),
            ];
            self.shared
                .node_up
                .get_or_create(&labels)
                .set(i64::from(o.up));
        }
    }

    /// Rebuilds the live snippets, serves them and writes them to `--snippets`.
    async fn refresh_snippets(&mut self) {
        let Ok(Some((status, _))) = state::get::<Status>(&self.store.state, state::STATUS).await
        else {
            return;
        };
        let commit = status
            .applied_commit
            .clone()
            .or_else(|| status.refused.as_ref().map(|r| r.commit.clone()));
        let Some(commit) = commit else { return };
        if self.model.as_ref().is_none_or(|(c, _)| *c != commit) {
            let repo = self.opts.repo.clone();
            let env = self.opts.target.env.clone();
            let c2 = commit.clone();
            let built = tokio::task::spawn_blocking(move || {
                let files = opsrepo::read_commit(&repo, &c2).ok()?;
                let parsed = opsrepo::load::parse_all(&files);
                Some(opsrepo::load::build_view(&parsed, Some(&env)).0)
            })
            .await
            .ok()
            .flatten();
            match built {
                Some(m) => self.model = Some((commit, Arc::new(m))),
                None => return,
            }
        }
        let Some((_, model)) = &self.model else {
            return;
        };
        let approvals = crate::ops::approvals::list(&self.store)
            .await
            .unwrap_or_default();
        // The pending-approvals gauge comes from the same listing as the snippets.
        let pending = approvals
            .iter()
            .filter(|a| a.decision == crate::outcome::Decision::Pending)
            .count();
        self.shared
            .approvals_pending
            .get_or_create(&self.shared.env_l())
            .set(pending as i64);
        self.recent.refresh(&self.audit).await;
        let events: Vec<crate::store::audit::AuditEvent> =
            self.recent.events.iter().map(|s| s.event.clone()).collect();
        let at = crate::store::audit::now_rfc3339();
        let last_backup =
            crate::store::state::get::<serde_json::Value>(&self.store.state, "backup.last")
                .await
                .ok()
                .flatten()
                .map(|(v, _)| v);
        let links_view = self
            .site_links
            .as_ref()
            .map(|m| m.view_at(std::time::Instant::now()));
        let snap = crate::daemon::snippets::live(&crate::daemon::snippets::Inputs {
            model,
            env: &self.opts.target.env,
            status: &status,
            observations: &self.observations,
            events: &events,
            approvals: &approvals,
            jobs: &crate::ops::jobs::list(&self.store)
                .await
                .unwrap_or_default(),
            discovered: &crate::ops::inventory::list(&self.store)
                .await
                .unwrap_or_default(),
            generated_at: &at,
            last_backup: last_backup.as_ref(),
            alert_sources: &self.alert_sources,
            change_window: self.opts.change_window,
            site_links: links_view.as_ref(),
            metrics_backend: self.metrics_backend.as_deref(),
            in_process: &crate::daemon::metrics_source::in_process(&self.shared),
            started_at: &self.started_at,
        });
        for st in &snap.dr.stores {
            if let Some(t) = st.last_success_at.as_deref().and_then(|t| {
                time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
            }) {
                let mut l = self.shared.env_l();
                l.push(("store".into(), st.id.clone()));
                self.shared
                    .backup_last
                    .get_or_create(&l)
                    .set(t.unix_timestamp());
            }
        }
        if let Some(dir) = &self.opts.snippets
            && let Err(e) = crate::daemon::snippets::write_dir(dir, &snap)
        {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot write snippets");
        }
        if let Ok(mut s) = self.shared.snapshot.lock() {
            *s = Some(snap);
        }
    }

    async fn publish_status(&self) {
        let mut st: Status = state::get(&self.store.state, state::STATUS)
            .await
            .ok()
            .flatten()
            .map(|(s, _)| s)
            .unwrap_or_default();
        st.leader = Some(self.opts.id.clone());
        if let Ok(mut s) = self.shared.status.lock() {
            *s = serde_json::to_value(&st).unwrap_or_default();
            s["leader"] = serde_json::Value::String(self.opts.id.clone());
            s["is_leader"] = serde_json::Value::Bool(self.shared.is_leader.load(Ordering::SeqCst));
            s["steps"] = self.shared.steps.load(Ordering::SeqCst).into();
            s["fenced"] = self.fence.status();
        }
    }

    /// Runs the steps of one pass in order until one ends it.
    async fn run_steps(&mut self, source: &str) -> Result<StepOutcome, String> {
        let mut pass = Pass {
            source: source.to_owned(),
            applied: None,
            prepared: None,
        };
        for (name, step) in STEPS {
            let t = Instant::now();
            let r = step(self, &mut pass).await;
            tracing::debug!(
                step = name,
                elapsed_us = t.elapsed().as_micros() as u64,
                "step timing"
            );
            match r {
                Ok(Flow::Next) => {}
                Ok(Flow::Done(outcome)) => {
                    tracing::debug!(env = %self.opts.target.env, step = name, ?outcome, "pass ended");
                    return Ok(outcome);
                }
                Err(e) => {
                    tracing::debug!(env = %self.opts.target.env, step = name, error = %e, "step failed");
                    return Err(e);
                }
            }
        }
        Ok(StepOutcome::Noop)
    }

    /// Step `fetch`: with `--remote`, fetch the env branches (gix, on a blocking thread).
    fn fetch_step<'a>(c: &'a mut Ctx, _: &'a mut Pass) -> StepFuture<'a> {
        Box::pin(async move {
            if let Some(remote) = c.opts.remote.clone() {
                let r = c.opts.repo.clone();
                tokio::task::spawn_blocking(move || crate::desired::git::fetch(&r, &remote))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())?;
            }
            Ok(Flow::Next)
        })
    }

    /// Step `prepare`: resolve the branch (or keep a pinned rollback), validate and compile
    /// the commit (incrementally from the last one), and hand the applied commit's model to the
    /// API and the node poller.
    fn prepare_step<'a>(c: &'a mut Ctx, p: &'a mut Pass) -> StepFuture<'a> {
        Box::pin(async move {
            let env = c.opts.target.env.clone();
            let applied = run::applied(&c.store).await.map_err(|e| e.to_string())?;
            let prev_head = applied.as_ref().and_then(|a| a.branch_head.clone());
            let remote = c.opts.remote.is_some();
            let today = time::OffsetDateTime::now_utc().date();
            // A pinned rollback stays until the branch head moves.
            let pinned_rev = applied
                .as_ref()
                .filter(|a| a.pinned)
                .map(|a| (a.commit.clone(), a.branch_head.clone()));
            let prev = c.prev_desired.take();
            let r2 = c.opts.repo.clone();
            let env2 = env.clone();
            let prepared: Prepared = tokio::task::spawn_blocking(move || {
                // One checkout per pass: the repository and vakt.toml are read once.
                let co = if remote {
                    crate::desired::checkout::Checkout::open_remote(&r2, &env2)
                } else {
                    crate::desired::checkout::Checkout::open(&r2, &env2)
                };
                let mut p = run::prepare_with(&co, None, prev_head.as_deref(), today, prev)?;
                if let Some((commit, Some(head))) = pinned_rev
                    && head == p.branch_head
                {
                    p = run::prepare_with(&co, Some(&commit), None, today, None)?;
                }
                Ok::<_, Error>(p)
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
            if let Some(d) = &prepared.desired {
                let first = c.declared.is_empty();
                c.declared = crate::ops::nodes::declared_nodes(d);
                if let Ok(mut g) = c.shared.declared.lock() {
                    *g = c.declared.clone();
                }
                if let Ok(mut g) = c.shared.access.lock() {
                    *g = access::Access::from_desired(d);
                }
                if let Ok(mut g) = c.shared.desired.lock() {
                    *g = Some(Arc::new(d.clone()));
                }
                if let Some(m) = &c.site_links {
                    m.set_desired(d);
                }
                // The snippets use the model validation built from the same parse.
                if let Some(m) = &prepared.model {
                    c.model = Some((prepared.commit.clone(), m.clone()));
                }
                c.prev_desired = Some(d.clone());
                // First inventory: poll the nodes right after this step's apply, not before it
                // (a hanging node must not delay the apply).
                c.poll_pending |= first;
            }
            p.applied = applied;
            p.prepared = Some(prepared);
            Ok(Flow::Next)
        })
    }

    /// Step `skip-repeated-refusal`: a commit already refused for validation or a rewind is not
    /// refused (and audited) again on every tick.
    fn repeat_step<'a>(c: &'a mut Ctx, p: &'a mut Pass) -> StepFuture<'a> {
        Box::pin(async move {
            let Some(prepared) = &p.prepared else {
                return Ok(Flow::Next);
            };
            let key = (prepared.commit.clone(), prepared.branch_head.clone());
            let repeat = c.last_refused.as_ref() == Some(&key);
            if repeat && prepared.desired.is_none() {
                return Ok(Flow::Done(StepOutcome::Refused(RefusalKind::InvalidCommit)));
            }
            if repeat && prepared.moved_backwards_from.is_some() {
                return Ok(Flow::Done(StepOutcome::Refused(RefusalKind::BranchRewound)));
            }
            Ok(Flow::Next)
        })
    }

    /// Step `measure-drift`: with self-heal off and the commit already applied, measure drift
    /// (metrics and status) and end the pass without writing.
    fn drift_step<'a>(c: &'a mut Ctx, p: &'a mut Pass) -> StepFuture<'a> {
        Box::pin(async move {
            let Some(prepared) = &p.prepared else {
                return Ok(Flow::Next);
            };
            let Some(d) = prepared.desired.as_ref() else {
                return Ok(Flow::Next);
            };
            let self_heal = d.manifest.environments[&c.opts.target.env].policy.self_heal;
            let same_commit = p
                .applied
                .as_ref()
                .is_some_and(|a| a.commit == prepared.commit);
            if !same_commit || self_heal {
                return Ok(Flow::Next);
            }
            let report = crate::ops::drift::drift(&c.store, d)
                .await
                .map_err(|e| e.to_string())?;
            c.record_drift(&report);
            c.update_commit_age(prepared);
            let n = report.drifted.len() + report.orphans.len();
            let _ = crate::ops::apply::set_status(&c.store, |s| {
                s.drifted_keys = n;
                if n > 0 {
                    s.state = crate::outcome::SyncState::Drift;
                } else if s.state == crate::outcome::SyncState::Drift {
                    s.state = crate::outcome::SyncState::InSync;
                }
            })
            .await;
            Ok(Flow::Done(StepOutcome::Noop))
        })
    }

    /// Step `apply`: the guards, one plan against the live buckets, policy, and the writes.
    fn apply_step<'a>(c: &'a mut Ctx, p: &'a mut Pass) -> StepFuture<'a> {
        Box::pin(async move {
            let Some(prepared) = &p.prepared else {
                return Ok(Flow::Done(StepOutcome::Noop));
            };
            let env = c.opts.target.env.clone();
            let mut opts = ApplyOpts::new(&c.opts.actor);
            opts.causation_id = Some(format!("trigger:{}", p.source));
            opts.site = c.opts.site.clone();
            match run::guarded_apply(
                &c.store,
                &mut c.audit,
                prepared,
                &opts,
                c.opts.allow_rewind,
                None,
            )
            .await
            {
                Ok(r) => {
                    c.last_refused = None;
                    for b in Bucket::ALL {
                        c.shared.drifted.get_or_create(&c.bucket_l(b)).set(0);
                    }
                    c.update_commit_age(prepared);
                    if r.written > 0 {
                        tracing::info!(env = %env, commit = %prepared.commit, written = r.written, "applied");
                        Ok(Flow::Done(StepOutcome::Applied))
                    } else {
                        Ok(Flow::Done(StepOutcome::Noop))
                    }
                }
                Err(ApplyError::Refused { kind, reason, .. }) => {
                    c.shared
                        .refused
                        .get_or_create(&c.shared.l("reason", kind.metric_label()))
                        .inc();
                    c.last_refused = Some((prepared.commit.clone(), prepared.branch_head.clone()));
                    tracing::warn!(env = %env, %reason, "refused");
                    Ok(Flow::Done(StepOutcome::Refused(kind)))
                }
                Err(e) => Err(e.to_string()),
            }
        })
    }

    fn bucket_l(&self, b: Bucket) -> Labels {
        vec![
            ("env".into(), self.shared.env.clone()),
            ("bucket".into(), b.as_str().into()),
        ]
    }

    fn record_drift(&self, r: &crate::ops::drift::DriftReport) {
        for b in Bucket::ALL {
            let n = r
                .drifted
                .iter()
                .chain(&r.orphans)
                .filter(|d| d.bucket == b)
                .count();
            self.shared
                .drifted
                .get_or_create(&self.bucket_l(b))
                .set(n as i64);
        }
    }

    fn update_commit_age(&self, p: &Prepared) {
        if let Some(t) = p.commit_time {
            let age = time::OffsetDateTime::now_utc().unix_timestamp() - t;
            self.shared
                .commit_age
                .get_or_create(&self.shared.env_l())
                .set(age.max(0) as f64);
        }
    }
}

/// Runs due jobs while this replica leads.
#[allow(clippy::too_many_arguments)]
async fn jobs_loop(
    fence: Arc<lease::Fence>,
    node_tls: crate::ops::nodes::NodeTls,
    store: Store,
    env: String,
    shared: Arc<Shared>,
    me: String,
    lease: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut audit = match Audit::open(&store).await {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, "job runner cannot open the audit stream");
            return;
        }
    };
    audit.fence = Some(audit_fence(&fence, "audit event"));
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|v| *v) => break,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        if !shared.is_leader.load(Ordering::SeqCst) {
            continue;
        }
        if let Err(f) = fence.check().await {
            fence.refused("job tick", &f);
            shared.is_leader.store(false, Ordering::SeqCst);
            continue;
        }
        let declared = shared
            .declared
            .lock()
            .map(|g| g.clone())
            .unwrap_or_default();
        let nodes = crate::ops::nodes::NodeClient::with_tls(&declared, &node_tls);
        // One listing per tick: it decides what runs and feeds the gauges (which therefore lag
        // the transitions of this tick by one tick).
        let jobs = match crate::ops::jobs::list(&store).await {
            Ok(j) => j,
            Err(e) => {
                tracing::warn!(error = %e, "job runner cannot list jobs");
                continue;
            }
        };
        if let Err(e) =
            crate::ops::jobs::run_due(&store, &mut audit, &nodes, &me, lease, &jobs).await
        {
            tracing::warn!(error = %e, "job runner");
        }
        for st in [
            crate::ops::jobs::JobState::Queued,
            crate::ops::jobs::JobState::Running,
            crate::ops::jobs::JobState::Succeeded,
            crate::ops::jobs::JobState::Failed,
            crate::ops::jobs::JobState::Retrying,
            crate::ops::jobs::JobState::Cancelled,
            crate::ops::jobs::JobState::DeadLettered,
        ] {
            let n = jobs.iter().filter(|j| j.state == st).count() as i64;
            let label = st.as_str().replace('-', "_");
            shared
                .jobs_gauge
                .get_or_create(&vec![("env".into(), env.clone()), ("state".into(), label)])
                .set(n);
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn lease_loop(
    fence: Arc<lease::Fence>,
    store: Store,
    settings: crate::store::BucketSettings,
    mut lock: kv::Store,
    key: String,
    me: String,
    (site, actor): (Option<String>, String),
    lease: Duration,
    shared: Arc<Shared>,
    tx: mpsc::Sender<String>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut rev: Option<u64> = None;
    // The other replica seen holding the lease while this one stood by: taking over from it
    // is a failover, recorded in the audit stream.
    let mut other_holder: Option<String> = None;
    let every = (lease / 3).max(Duration::from_millis(100));
    let value = || {
        bytes::Bytes::from(
            serde_json::json!({"holder": me, "since": crate::store::audit::now_rfc3339()})
                .to_string(),
        )
    };
    loop {
        let sent = Instant::now();
        rev = match rev {
            None => match take_lease(&lock, &key, &me, value(), &mut other_holder).await {
                Ok(r) => {
                    tracing::info!(holder = %me, revision = r, "acquired leadership");
                    fence.held(&lock, r, sent);
                    shared.is_leader.store(true, Ordering::SeqCst);
                    let _ = tx.try_send("leader".into());
                    if let Some(prev) = other_holder.take() {
                        let (store, site, actor, key, me) = (
                            store.clone(),
                            site.clone(),
                            actor.clone(),
                            key.clone(),
                            me.clone(),
                        );
                        tokio::spawn(async move {
                            let recorded = match Audit::open(&store).await {
                                Ok(mut audit) => {
                                    crate::daemon::sitelinks::record_takeover(
                                        &mut audit,
                                        site.as_deref(),
                                        &key,
                                        r,
                                        &me,
                                        &actor,
                                        &prev,
                                    )
                                    .await
                                }
                                Err(e) => Err(e),
                            };
                            if let Err(e) = recorded {
                                tracing::warn!(error = %e, "cannot record the lease takeover");
                            }
                        });
                    }
                    Some(r)
                }
                Err(None) => None,
                Err(Some(e)) => {
                    // The lock bucket itself may be gone (NATS lost its data): recreate it.
                    tracing::warn!(error = %e, "cannot take the lease; re-creating the lock bucket");
                    if let Ok(l) = store.lock_bucket(&settings).await {
                        lock = l;
                    }
                    None
                }
            },
            Some(r) => match lock.update(&key, value(), r).await {
                Ok(r) => {
                    fence.held(&lock, r, sent);
                    // Stepped down by a fence check that could not read the key: the renewal
                    // proves the lease is still this replica's.
                    if !shared.is_leader.swap(true, Ordering::SeqCst) {
                        let _ = tx.try_send("leader".into());
                    }
                    Some(r)
                }
                Err(e)
                    if e.kind() != kv::UpdateErrorKind::WrongLastRevision
                        && fence.check_local().is_ok() =>
                {
                    // Not a refusal, and the lease has not lapsed by this replica's own clock:
                    // NATS did not answer (a cluster electing the lock stream's leader after
                    // losing a server answers "no stream found" for a few seconds). Keep the
                    // revision and renew at the next tick. Once the lease may have lapsed, the
                    // branch below gives it up (and the lock bucket is re-created if it is gone).
                    tracing::warn!(holder = %me, held_revision = r, error = %e, "cannot renew the lease; retrying");
                    Some(r)
                }
                Err(e) => {
                    tracing::warn!(holder = %me, held_revision = r, error = %e, "lost leadership");
                    // The renewal was a compare-and-set on the revision held: the server
                    // refused it, so another replica may lead now. Say who, for the status.
                    let now = lock.entry(&key).await.ok().flatten();
                    fence.refused(
                        "lease renewal",
                        &lease::Fenced {
                            held_revision: Some(r),
                            current_revision: now.as_ref().map(|e| e.revision),
                            current_holder: now.as_ref().and_then(|e| {
                                serde_json::from_slice::<lease::Holder>(&e.value)
                                    .ok()
                                    .map(|h| h.holder)
                            }),
                            reason: format!("renewing the lease at revision {r} was refused: {e}"),
                        },
                    );
                    fence.released();
                    shared.is_leader.store(false, Ordering::SeqCst);
                    None
                }
            },
        };
        shared
            .leader_gauge
            .get_or_create(&shared.env_l())
            .set(i64::from(rev.is_some()));
        tokio::select! {
            _ = shutdown.wait_for(|v| *v) => break,
            _ = tokio::time::sleep(every) => {}
        }
    }
    if let Some(r) = rev {
        fence.released();
        let _ = lock.delete_expect_revision(&key, Some(r)).await;
        shared.is_leader.store(false, Ordering::SeqCst);
    }
}

fn start_watch(
    path: &std::path::Path,
    tx: mpsc::Sender<String>,
) -> Result<
    notify_debouncer_full::Debouncer<
        notify_debouncer_full::notify::RecommendedWatcher,
        notify_debouncer_full::RecommendedCache,
    >,
    Error,
> {
    use notify_debouncer_full::notify::{EventKind, RecursiveMode};
    let mut d = notify_debouncer_full::new_debouncer(
        Duration::from_millis(50),
        None,
        move |res: notify_debouncer_full::DebounceEventResult| {
            if let Ok(events) = res
                && events
                    .iter()
                    .any(|e| !matches!(e.kind, EventKind::Access(_)))
            {
                let _ = tx.try_send("watch".into());
            }
        },
    )
    .map_err(|e| Error::Other(format!("watch {}: {e}", path.display())))?;
    d.watch(path, RecursiveMode::Recursive)
        .map_err(|e| Error::Other(format!("watch {}: {e}", path.display())))?;
    Ok(d)
}

#[derive(Serialize)]
struct Health {
    /// `ok`, `failing` (the last pass failed) or `degraded` (NATS is down).
    status: &'static str,
    leader: bool,
    steps: u64,
    nats: shared::NatsLink,
}

/// Whether a request may read `/snippets/*`, `/status`, `/metrics`: always without a read token,
/// else with `Authorization: Bearer <token>` (compared in constant time).
fn read_allowed(token: Option<&str>, h: &axum::http::HeaderMap) -> bool {
    token.is_none_or(|t| {
        opsrepo::http::bearer(h).is_some_and(|p| opsrepo::http::ct_eq(p.as_bytes(), t.as_bytes()))
    })
}

fn http_router(shared: Arc<Shared>, token: Option<String>) -> axum::Router {
    use axum::http::{HeaderMap, StatusCode, header};
    use axum::response::IntoResponse;
    use axum::routing::get;
    let s1 = shared.clone();
    let s2 = shared.clone();
    let s3 = shared.clone();
    let s4 = shared.clone();
    let s5 = shared.clone();
    let token = Arc::new(token);
    let (t2, t3, t4) = (token.clone(), token.clone(), token.clone());
    let cors = move |s: &Shared, headers: &mut HeaderMap| {
        if let Some(o) = &s.cors_origin
            && let Ok(v) = o.parse()
        {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                header::HeaderValue::from_static("authorization"),
            );
            headers.insert(header::VARY, header::HeaderValue::from_static("origin"));
            // The site's fetches include credentials (an authenticating proxy's cookie).
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                header::HeaderValue::from_static("true"),
            );
        }
    };
    let unauthorized = move |s: &Shared| {
        let mut headers = HeaderMap::new();
        cors(s, &mut headers);
        headers.insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        (
            StatusCode::UNAUTHORIZED,
            headers,
            axum::Json(serde_json::json!({"error": "this daemon was started with --snippets-token: send `Authorization: Bearer <read token>` (the site asks for it once and keeps it in this browser)"})),
        )
            .into_response()
    };
    axum::Router::new()
        .route(
            "/snippets/{name}",
            get(
                move |axum::extract::Path(name): axum::extract::Path<String>, h: HeaderMap| {
                    let s = s4.clone();
                    let t = t4.clone();
                    async move {
                        if !read_allowed(t.as_deref(), &h) {
                            return unauthorized(&s);
                        }
                        let n = name
                            .strip_suffix(".json")
                            .and_then(opsrepo::snippets::SnippetName::from_name);
                        let body = n.and_then(|n| {
                            s.snapshot
                                .lock()
                                .ok()
                                .and_then(|g| g.as_ref().map(|snap| snap.to_value(n)))
                        });
                        let mut headers = axum::http::HeaderMap::new();
                        headers.insert(header::CACHE_CONTROL, "no-store".parse().expect("header"));
                        cors(&s, &mut headers);
                        match body {
                            Some(b) => (StatusCode::OK, headers, axum::Json(b)).into_response(),
                            None => (StatusCode::NOT_FOUND, headers, "no such snippet (yet)")
                                .into_response(),
                        }
                    }
                },
            )
            .options(move || {
                // The CORS preflight of a site on another origin sending the read token.
                let s = s5.clone();
                async move {
                    let mut headers = HeaderMap::new();
                    cors(&s, &mut headers);
                    headers.insert(
                        header::ACCESS_CONTROL_ALLOW_METHODS,
                        header::HeaderValue::from_static("GET"),
                    );
                    (StatusCode::NO_CONTENT, headers).into_response()
                }
            }),
        )
        .route(
            "/healthz",
            get(move || {
                let s = s1.clone();
                async move {
                    let nats = s.nats.lock().map(|l| l.clone()).ok();
                    let nats_up = nats.as_ref().is_some_and(shared::NatsLink::is_up);
                    let ok = s.healthy.load(Ordering::SeqCst) && nats_up;
                    let body = axum::Json(Health {
                        status: if !nats_up {
                            "degraded"
                        } else if ok {
                            "ok"
                        } else {
                            "failing"
                        },
                        leader: s.is_leader.load(Ordering::SeqCst),
                        steps: s.steps.load(Ordering::SeqCst),
                        nats: nats.unwrap_or(shared::NatsLink {
                            state: "unknown",
                            down_since: None,
                            passes_skipped: 0,
                            connects: 0,
                            reconnect_attempts: 0,
                        }),
                    });
                    (
                        if ok {
                            StatusCode::OK
                        } else {
                            StatusCode::SERVICE_UNAVAILABLE
                        },
                        body,
                    )
                }
            }),
        )
        .route(
            "/metrics",
            get(move |h: HeaderMap| {
                let s = s2.clone();
                let t = t2.clone();
                async move {
                    if !read_allowed(t.as_deref(), &h) {
                        return unauthorized(&s);
                    }
                    (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        s.metrics_text(),
                    )
                        .into_response()
                }
            }),
        )
        .route(
            "/status",
            get(move |h: HeaderMap| {
                let s = s3.clone();
                let t = t3.clone();
                async move {
                    if !read_allowed(t.as_deref(), &h) {
                        return unauthorized(&s);
                    }
                    let mut v = s.status.lock().map(|v| v.clone()).unwrap_or_default();
                    if v.is_null() {
                        // No pass recorded yet (or NATS went down before the first one): the
                        // live fields below still say what this replica is doing.
                        v = serde_json::json!({});
                    }
                    if v.is_object() {
                        v["is_leader"] = s.is_leader.load(Ordering::SeqCst).into();
                        if let Some(f) = s.fence.get() {
                            v["fenced"] = f.status();
                        }
                        if let Ok(l) = s.nats.lock() {
                            v["nats"] = serde_json::to_value(&*l).unwrap_or_default();
                        }
                    }
                    axum::Json(v).into_response()
                }
            }),
        )
}
