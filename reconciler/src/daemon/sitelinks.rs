//! Measured cross-site links. With `vakt reconcile --site S`, the leader of site S publishes a
//! heartbeat on `vakt.site.<env>.<S>.heartbeat` every interval, answers round-trip probes on
//! `vakt.site.<env>.<S>.probe`, and probes every site that S's declared links
//! (`inventory/sites/S.toml`) name. Each declared link is then up, degraded (the median of the
//! last round trips is above its `max_rtt`) or down (no probe answer and no heartbeat for
//! [`DOWN_AFTER`] intervals), exported as `vakt_site_link_up{env,from,to,kind}` and
//! `vakt_site_link_rtt_seconds{env,from,to,kind}`, and overlaid on the `sites` snippet.
//!
//! One measurement per pair of sites stands for every kind of link between them: the probe
//! travels the NATS path between the two site leaders, which is the `nats-cluster-route` itself
//! and the same network path the replication links use. Each kind keeps its own threshold.
//! Where `--nats-monitor` names nats-server's monitoring endpoint, its `/routez` and
//! `/gatewayz` are read too and shown on the `nats-cluster-route` links.
//!
//! A lease takeover (a site leader replacing another holder) is a failover: the daemon records
//! it as a `leader.takeover` audit event, and [`failovers`] lists them for the datacenter view.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use opsrepo::snippets::{Failover, SitesSnippet, Status};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use crate::desired::compile::{Bucket, Desired};
use crate::store::audit::{Audit, AuditEvent};

/// Format version of heartbeats and probe messages.
pub const MESSAGE_VERSION: u32 = 1;
/// A link with no probe answer and no heartbeat for this many intervals is down.
pub const DOWN_AFTER: u32 = 3;
/// Round trips kept per peer; the median of them is compared with `max_rtt`.
const SAMPLES: usize = 5;
/// Largest heartbeat or probe message read; bigger ones are ignored.
const MAX_MESSAGE: usize = 64 * 1024;
/// Links a heartbeat may report (more are ignored).
const MAX_REPORTED_LINKS: usize = 64;
/// Largest `/routez` or `/gatewayz` body read.
const MAX_MONITOR_BODY: usize = 4 << 20;
/// Failovers listed on the datacenter view.
pub const MAX_FAILOVERS: usize = 20;
/// Audit action of a lease takeover.
pub const TAKEOVER_ACTION: &str = "leader.takeover";
/// Without a verdict change, the snippets are refreshed this often (two intervals, within
/// these bounds) for fresh RTTs, and in case a refresh could not run when a verdict changed
/// (before the first apply, say).
const REFRESH_MIN: Duration = Duration::from_secs(5);
const REFRESH_MAX: Duration = Duration::from_secs(30);

type Labels = Vec<(String, String)>;

#[derive(Debug, thiserror::Error)]
pub enum SiteLinkError {
    #[error(
        "invalid {what} `{value}` for site-link subjects: use lowercase letters, digits, `-` \
         and `_` (at most 63 characters)"
    )]
    InvalidName { what: &'static str, value: String },
    #[error("failed to subscribe to {subject}: {detail}")]
    Subscribe { subject: String, detail: String },
}

/// How the site-link monitor runs (`vakt reconcile --site S --site-heartbeat D`).
#[derive(Debug, Clone)]
pub struct SiteLinkOpts {
    pub env: String,
    pub site: String,
    /// This replica's id.
    pub id: String,
    /// Heartbeat and probe interval.
    pub interval: Duration,
    /// nats-server monitoring base URL (`http://host:8222`), for `/routez` and `/gatewayz`.
    pub nats_monitor: Option<String>,
}

fn check_name(what: &'static str, value: &str) -> Result<(), SiteLinkError> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(SiteLinkError::InvalidName {
            what,
            value: value.to_owned(),
        })
    }
}

/// `vakt.site.<env>.<site>.heartbeat`.
pub fn heartbeat_subject(env: &str, site: &str) -> String {
    format!("vakt.site.{env}.{site}.heartbeat")
}

/// `vakt.site.<env>.<site>.probe`.
pub fn probe_subject(env: &str, site: &str) -> String {
    format!("vakt.site.{env}.{site}.probe")
}

/// A link the inventory declares from this site.
#[derive(Debug, Clone, PartialEq)]
pub struct DeclaredLink {
    pub to: String,
    pub kind: String,
    pub max_rtt: Duration,
}

/// The links `site` declares in the inventory of a desired state (`None`: no such site).
pub fn declared_links(d: &Desired, site: &str) -> Option<Vec<DeclaredLink>> {
    d.bucket(Bucket::Inventory)
        .filter(|(k, _)| k.starts_with("site."))
        .filter_map(|(_, e)| serde_json::from_value::<opsrepo::model::Site>(e.spec_value()).ok())
        .find(|s| s.id == site)
        .map(|s| {
            s.links
                .iter()
                .map(|l| DeclaredLink {
                    to: l.to.clone(),
                    kind: l.kind.clone(),
                    max_rtt: l.max_rtt.get(),
                })
                .collect()
        })
}

/// What a site leader publishes every interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub version: u32,
    pub env: String,
    pub site: String,
    /// The leader's replica id.
    pub id: String,
    /// RFC 3339.
    pub at: String,
    /// Commit the leader last applied.
    #[serde(default)]
    pub commit: Option<String>,
    pub interval_ms: u64,
    /// The sender's own view of its declared links.
    #[serde(default)]
    pub links: Vec<ReportedLink>,
}

/// One link as the site that measures it reports it in its heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportedLink {
    pub to: String,
    pub kind: String,
    pub status: Status,
    #[serde(default)]
    pub rtt_ms: Option<f64>,
}

/// A probe request and its answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Probe {
    pub version: u32,
    /// The site that sends (request) or answers (reply).
    pub site: String,
    pub id: String,
    #[serde(default)]
    pub commit: Option<String>,
}

/// What is known about one remote site.
#[derive(Debug, Clone, Default)]
struct Peer {
    /// Last probe answer or heartbeat.
    last_answer: Option<Instant>,
    last_answer_at: Option<String>,
    rtts: VecDeque<Duration>,
    last_error: Option<String>,
    /// RFC 3339 time the link was first seen down (cleared when it answers again).
    down_since: Option<String>,
    heartbeat: Option<(Instant, Heartbeat)>,
}

impl Peer {
    fn median_rtt(&self) -> Option<Duration> {
        let mut v: Vec<Duration> = self.rtts.iter().copied().collect();
        v.sort();
        v.get(v.len() / 2).copied()
    }
}

/// Route and gateway state read from nats-server's monitoring port.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServerLinks {
    /// `None` while the monitoring port has not been read; `Err` when it could not be.
    pub state: Option<Result<RouteGateway, String>>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct RouteGateway {
    /// (remote server name or id, rtt as nats-server prints it).
    pub routes: Vec<(String, String)>,
    /// Outbound gateways by name (often the remote cluster or site), with rtt.
    pub gateways: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
struct Routez {
    #[serde(default)]
    routes: Vec<RouteInfo>,
}

#[derive(Debug, Deserialize)]
struct RouteInfo {
    #[serde(default)]
    remote_name: Option<String>,
    #[serde(default)]
    remote_id: Option<String>,
    #[serde(default)]
    rtt: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Gatewayz {
    #[serde(default)]
    outbound_gateways: BTreeMap<String, GatewayInfo>,
}

#[derive(Debug, Deserialize)]
struct GatewayInfo {
    #[serde(default)]
    connection: Option<GatewayConn>,
}

#[derive(Debug, Deserialize)]
struct GatewayConn {
    #[serde(default)]
    rtt: Option<String>,
}

#[derive(Debug, Default)]
struct Inner {
    links: Vec<DeclaredLink>,
    /// This site is not in the inventory of the applied commit.
    unknown_site: bool,
    peers: BTreeMap<String, Peer>,
    /// Heartbeats of sites this one has no declared link to (their view is still shown).
    others: BTreeMap<String, (Instant, Heartbeat)>,
    /// When this replica became leader (measurements start then).
    leading_since: Option<Instant>,
    server: ServerLinks,
    /// Verdicts at the last round (own links, reported links, silent sites).
    last_statuses: Vec<(String, Status)>,
    last_notify: Option<Instant>,
}

/// The site-link monitor of one daemon: measurements, metrics and the snippet overlay.
pub struct Monitor {
    opts: SiteLinkOpts,
    inner: Mutex<Inner>,
    pub(super) up: Family<Labels, Gauge>,
    pub(super) rtt: Family<Labels, Gauge<f64, AtomicU64>>,
}

/// One declared link with its measured state.
#[derive(Debug, Clone, PartialEq)]
pub struct MeasuredLink {
    pub from: String,
    pub to: String,
    pub kind: String,
    pub max_rtt: Duration,
    pub status: Status,
    pub rtt: Option<Duration>,
    pub last_seen_at: Option<String>,
    pub down_since: Option<String>,
    pub detail: Option<String>,
}

/// A link problem the snippet builder turns into a `vakt_site_link_degraded` condition: one
/// per pair of sites, listing every kind affected.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkProblem {
    pub from: String,
    pub to: String,
    pub down: bool,
    pub title: String,
    pub detail: String,
    pub since: Option<String>,
}

/// Everything the snippet builder needs from the monitor, taken at one instant.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct View {
    pub site: String,
    /// This site's links, measured here.
    pub links: Vec<MeasuredLink>,
    /// Other sites' links as their leaders last reported them (fresh heartbeats only).
    pub reported: BTreeMap<String, Vec<ReportedLink>>,
    /// Sites whose leader's heartbeat is older than the down limit (or never seen).
    pub silent: Vec<String>,
    pub unknown_site: bool,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 100.0
}

/// Status of one declared link from what is known about its peer (a pure function).
pub fn classify(
    link: &DeclaredLink,
    last_answer: Option<Instant>,
    rtt: Option<Duration>,
    leading_since: Instant,
    now: Instant,
    interval: Duration,
) -> Status {
    let limit = interval * DOWN_AFTER;
    match last_answer {
        Some(t) if now.saturating_duration_since(t) <= limit => match rtt {
            Some(r) if r > link.max_rtt => Status::Degraded,
            _ => Status::Ok,
        },
        None if now.saturating_duration_since(leading_since) <= limit => Status::Unknown,
        _ => Status::Down,
    }
}

impl Monitor {
    /// A monitor whose metric families are registered in `reg`.
    pub fn new(opts: SiteLinkOpts, reg: &mut Registry) -> Result<Monitor, SiteLinkError> {
        check_name("environment", &opts.env)?;
        check_name("site", &opts.site)?;
        let up = Family::<Labels, Gauge>::default();
        reg.register(
            "vakt_site_link_up",
            "1 when the leader of site `to` answered the probes or heartbeats of the leader of `from` within 3 intervals, 0 when it did not",
            up.clone(),
        );
        let rtt = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        reg.register(
            "vakt_site_link_rtt_seconds",
            "Median round trip of the last probes between the site leaders of `from` and `to`",
            rtt.clone(),
        );
        Ok(Monitor {
            opts,
            inner: Mutex::new(Inner::default()),
            up,
            rtt,
        })
    }

    pub fn site(&self) -> &str {
        &self.opts.site
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the declared links from the applied commit's desired state.
    pub fn set_desired(&self, d: &Desired) {
        let found = declared_links(d, &self.opts.site);
        let mut g = self.lock();
        if found.is_none() && !g.unknown_site {
            tracing::warn!(site = %self.opts.site, "--site names a site the inventory does not declare: no links to measure");
        }
        g.unknown_site = found.is_none();
        let links = found.unwrap_or_default();
        if links != g.links {
            // Series of links no longer declared must go.
            self.up.clear();
            self.rtt.clear();
            g.links = links;
        }
    }

    fn labels(&self, l: &DeclaredLink) -> Labels {
        vec![
            ("env".into(), self.opts.env.clone()),
            ("from".into(), self.opts.site.clone()),
            ("to".into(), l.to.clone()),
            ("kind".into(), l.kind.clone()),
        ]
    }

    /// Starts measuring (on becoming leader) or forgets everything (on losing it).
    fn set_leading(&self, leading: bool, now: Instant) {
        let mut g = self.lock();
        match (leading, g.leading_since.is_some()) {
            (true, false) => {
                g.leading_since = Some(now);
                g.peers.clear();
            }
            (false, true) => {
                g.leading_since = None;
                g.peers.clear();
                g.last_statuses.clear();
                drop(g);
                self.up.clear();
                self.rtt.clear();
            }
            _ => {}
        }
    }

    /// The measured state at `now`.
    pub fn view_at(&self, now: Instant) -> View {
        let g = self.lock();
        let limit = self.opts.interval * DOWN_AFTER;
        let mut v = View {
            site: self.opts.site.clone(),
            unknown_site: g.unknown_site,
            ..View::default()
        };
        let Some(since) = g.leading_since else {
            return v;
        };
        for l in &g.links {
            let peer = g.peers.get(&l.to);
            let rtt = peer.and_then(Peer::median_rtt);
            let last = peer.and_then(|p| p.last_answer);
            let status = classify(l, last, rtt, since, now, self.opts.interval);
            let mut detail = match status {
                Status::Down => Some(match (last, peer.and_then(|p| p.last_error.clone())) {
                    (Some(t), e) => format!(
                        "no probe answer or heartbeat from {}'s leader for {} s{}",
                        l.to,
                        now.saturating_duration_since(t).as_secs(),
                        e.map(|e| format!(" (last probe: {e})")).unwrap_or_default()
                    ),
                    (None, e) => format!(
                        "{}'s leader has not answered since this leader started measuring{}",
                        l.to,
                        e.map(|e| format!(" (last probe: {e})")).unwrap_or_default()
                    ),
                }),
                Status::Degraded => rtt.map(|r| {
                    format!(
                        "median round trip {} ms is above the declared {} ms",
                        ms(r),
                        ms(l.max_rtt)
                    )
                }),
                _ => None,
            };
            if l.kind == "nats-cluster-route"
                && let Some(s) = &g.server.state
            {
                let text = match s {
                    Ok(rg) => {
                        let routes = if rg.routes.is_empty() {
                            "no route connected".to_owned()
                        } else {
                            format!(
                                "{} route(s) connected ({})",
                                rg.routes.len(),
                                rg.routes
                                    .iter()
                                    .map(|(n, r)| format!("{n} rtt {r}"))
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            )
                        };
                        match rg.gateways.get(&l.to) {
                            Some(r) => format!("nats-server: {routes}; gateway {} rtt {r}", l.to),
                            None => format!("nats-server: {routes}"),
                        }
                    }
                    Err(e) => format!("nats-server monitoring unreadable: {e}"),
                };
                detail = Some(match detail {
                    Some(d) => format!("{d}; {text}"),
                    None => text,
                });
            }
            v.links.push(MeasuredLink {
                from: self.opts.site.clone(),
                to: l.to.clone(),
                kind: l.kind.clone(),
                max_rtt: l.max_rtt,
                status,
                rtt: if status == Status::Down { None } else { rtt },
                last_seen_at: peer.and_then(|p| p.last_answer_at.clone()),
                down_since: peer.and_then(|p| p.down_since.clone()),
                detail,
            });
        }
        let heartbeats = g
            .peers
            .iter()
            .filter_map(|(s, p)| p.heartbeat.as_ref().map(|h| (s, h)))
            .chain(g.others.iter());
        for (site, (at, hb)) in heartbeats {
            if now.saturating_duration_since(*at) <= limit {
                v.reported.insert(site.clone(), hb.links.clone());
            }
        }
        for (site, p) in &g.peers {
            let fresh = p
                .heartbeat
                .as_ref()
                .is_some_and(|(t, _)| now.saturating_duration_since(*t) <= limit);
            if !fresh {
                v.silent.push(site.clone());
            }
        }
        v
    }

    /// Records a probe answer or a failure.
    fn record_probe(&self, to: &str, result: Result<Duration, String>, now: Instant) {
        let mut g = self.lock();
        let p = g.peers.entry(to.to_owned()).or_default();
        match result {
            Ok(rtt) => {
                p.last_answer = Some(now);
                p.last_answer_at = Some(crate::store::audit::now_rfc3339());
                p.rtts.push_back(rtt);
                while p.rtts.len() > SAMPLES {
                    p.rtts.pop_front();
                }
                p.last_error = None;
            }
            Err(e) => p.last_error = Some(e),
        }
    }

    /// Records a heartbeat from another site.
    fn record_heartbeat(&self, hb: Heartbeat, now: Instant) {
        let mut g = self.lock();
        if g.leading_since.is_none() {
            return;
        }
        let declared = g.links.iter().any(|l| l.to == hb.site);
        if declared {
            let p = g.peers.entry(hb.site.clone()).or_default();
            p.last_answer = Some(now);
            p.last_answer_at = Some(crate::store::audit::now_rfc3339());
            p.heartbeat = Some((now, hb));
        } else if g.others.len() < 64 || g.others.contains_key(&hb.site) {
            g.others.insert(hb.site.clone(), (now, hb));
        }
    }

    /// After a round: sets the metrics, keeps `down_since`, and says whether the snippets
    /// should be refreshed (a status changed, or new round trips are due on the page).
    fn settle(&self, now: Instant) -> bool {
        let view = self.view_at(now);
        for m in &view.links {
            let l = DeclaredLink {
                to: m.to.clone(),
                kind: m.kind.clone(),
                max_rtt: m.max_rtt,
            };
            let labels = self.labels(&l);
            match m.status {
                Status::Unknown => {
                    self.up.remove(&labels);
                }
                s => {
                    self.up
                        .get_or_create(&labels)
                        .set(i64::from(s != Status::Down));
                }
            }
            match m.rtt {
                Some(r) => {
                    self.rtt.get_or_create(&labels).set(r.as_secs_f64());
                }
                None => {
                    self.rtt.remove(&labels);
                }
            }
        }
        // Own verdicts, the other sites' reported ones and who fell silent: a change in any of
        // them is a change on the page.
        let statuses: Vec<(String, Status)> = view
            .links
            .iter()
            .map(|m| (format!("{}>{}:{}", m.from, m.to, m.kind), m.status))
            .chain(view.reported.iter().flat_map(|(site, links)| {
                links
                    .iter()
                    .map(move |l| (format!("{site}>{}:{}", l.to, l.kind), l.status))
            }))
            .chain(
                view.silent
                    .iter()
                    .map(|s| (format!("{s} silent"), Status::Unknown)),
            )
            .collect();
        let mut g = self.lock();
        for m in &view.links {
            if let Some(p) = g.peers.get_mut(&m.to) {
                if m.status == Status::Down {
                    if p.down_since.is_none() {
                        p.down_since = Some(crate::store::audit::now_rfc3339());
                    }
                } else if m.status == Status::Ok {
                    p.down_since = None;
                }
            } else if m.status == Status::Down {
                g.peers.entry(m.to.clone()).or_default().down_since =
                    Some(crate::store::audit::now_rfc3339());
            }
        }
        let changed = statuses != g.last_statuses;
        let due = g.last_notify.is_none_or(|t| {
            now.saturating_duration_since(t)
                >= (self.opts.interval * 2).clamp(REFRESH_MIN, REFRESH_MAX)
        });
        g.last_statuses = statuses;
        if changed || due {
            g.last_notify = Some(now);
        }
        changed || due
    }

    fn heartbeat(&self, commit: Option<String>, now: Instant) -> Heartbeat {
        let view = self.view_at(now);
        Heartbeat {
            version: MESSAGE_VERSION,
            env: self.opts.env.clone(),
            site: self.opts.site.clone(),
            id: self.opts.id.clone(),
            at: crate::store::audit::now_rfc3339(),
            commit,
            interval_ms: u64::try_from(self.opts.interval.as_millis()).unwrap_or(u64::MAX),
            links: view
                .links
                .iter()
                .map(|m| ReportedLink {
                    to: m.to.clone(),
                    kind: m.kind.clone(),
                    status: m.status,
                    rtt_ms: m.rtt.map(ms),
                })
                .collect(),
        }
    }

    fn peers_to_probe(&self) -> Vec<String> {
        let g = self.lock();
        let mut v: Vec<String> = g.links.iter().map(|l| l.to.clone()).collect();
        v.sort();
        v.dedup();
        v.retain(|s| *s != self.opts.site);
        v
    }
}

/// Hooks into the daemon: whether this replica leads, and the commit it applied.
pub struct Hooks {
    pub is_leader: Box<dyn Fn() -> bool + Send + Sync>,
    pub commit: Box<dyn Fn() -> Option<String> + Send + Sync>,
}

/// Starts the responder, the heartbeat listener and the prober; they run until `shutdown`.
/// `notify` gets a message when the snippets should be rebuilt.
pub async fn start(
    monitor: Arc<Monitor>,
    client: async_nats::Client,
    hooks: Hooks,
    notify: mpsc::Sender<()>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), SiteLinkError> {
    let env = monitor.opts.env.clone();
    let site = monitor.opts.site.clone();
    let hooks = Arc::new(hooks);
    let sub = |subject: String| {
        let client = client.clone();
        async move {
            client
                .subscribe(subject.clone())
                .await
                .map_err(|e| SiteLinkError::Subscribe {
                    subject,
                    detail: e.to_string(),
                })
        }
    };
    let mut probes = sub(probe_subject(&env, &site)).await?;
    let mut beats = sub(format!("vakt.site.{env}.*.heartbeat")).await?;

    // Responder: only the leader answers, so a paused or dead leader is seen as such even
    // when a standby of the same site is running.
    {
        let (client, hooks, m, mut sd) = (
            client.clone(),
            hooks.clone(),
            monitor.clone(),
            shutdown.clone(),
        );
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    _ = sd.wait_for(|v| *v) => break,
                    m = probes.next() => match m { Some(m) => m, None => break },
                };
                if !(hooks.is_leader)() || msg.payload.len() > MAX_MESSAGE {
                    continue;
                }
                let Some(reply) = msg.reply else { continue };
                if serde_json::from_slice::<Probe>(&msg.payload).is_err() {
                    continue;
                }
                let answer = Probe {
                    version: MESSAGE_VERSION,
                    site: m.opts.site.clone(),
                    id: m.opts.id.clone(),
                    commit: (hooks.commit)(),
                };
                if let Ok(b) = serde_json::to_vec(&answer) {
                    let _ = client.publish(reply, b.into()).await;
                }
            }
        });
    }

    // Heartbeats of the other sites.
    {
        let (m, mut sd) = (monitor.clone(), shutdown.clone());
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    _ = sd.wait_for(|v| *v) => break,
                    m = beats.next() => match m { Some(m) => m, None => break },
                };
                if msg.payload.len() > MAX_MESSAGE {
                    continue;
                }
                let Ok(mut hb) = serde_json::from_slice::<Heartbeat>(&msg.payload) else {
                    tracing::debug!(subject = %msg.subject, "ignoring a heartbeat that does not parse");
                    continue;
                };
                if hb.site == m.opts.site
                    || hb.env != m.opts.env
                    || msg.subject.as_str() != heartbeat_subject(&hb.env, &hb.site)
                {
                    continue;
                }
                hb.links.truncate(MAX_REPORTED_LINKS);
                m.record_heartbeat(hb, Instant::now());
            }
        });
    }

    // Prober and heartbeat publisher.
    let m = monitor;
    let mut sd = shutdown;
    tokio::spawn(async move {
        let http = m
            .opts
            .nats_monitor
            .as_ref()
            .map(|_| crate::daemon::fetch::client());
        let mut tick = tokio::time::interval(m.opts.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = sd.wait_for(|v| *v) => break,
                _ = tick.tick() => {}
            }
            let leading = (hooks.is_leader)();
            m.set_leading(leading, Instant::now());
            if !leading {
                continue;
            }
            let hb = m.heartbeat((hooks.commit)(), Instant::now());
            if let Ok(b) = serde_json::to_vec(&hb) {
                let _ = client
                    .publish(heartbeat_subject(&m.opts.env, &m.opts.site), b.into())
                    .await;
            }
            let timeout = m.opts.interval.min(Duration::from_secs(5));
            let request = Probe {
                version: MESSAGE_VERSION,
                site: m.opts.site.clone(),
                id: m.opts.id.clone(),
                commit: None,
            };
            let body = bytes::Bytes::from(serde_json::to_vec(&request).unwrap_or_default());
            let peers = m.peers_to_probe();
            let results = futures_util::future::join_all(peers.iter().map(|to| {
                let (client, body, env) = (client.clone(), body.clone(), m.opts.env.clone());
                async move {
                    let t0 = Instant::now();
                    let r = tokio::time::timeout(
                        timeout,
                        client.request(probe_subject(&env, to), body),
                    )
                    .await;
                    let rtt = t0.elapsed();
                    let r = match r {
                        Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
                        Ok(Err(e)) => Err(e.to_string()),
                        Ok(Ok(msg)) => match serde_json::from_slice::<Probe>(&msg.payload) {
                            Ok(p) if p.site == *to => Ok(rtt),
                            Ok(p) => Err(format!("answered by site `{}`", p.site)),
                            Err(e) => Err(format!("invalid answer: {e}")),
                        },
                    };
                    (to.clone(), r)
                }
            }))
            .await;
            let now = Instant::now();
            for (to, r) in results {
                m.record_probe(&to, r, now);
            }
            if let (Some(http), Some(base)) = (&http, &m.opts.nats_monitor) {
                let state = read_server_links(http, base).await;
                m.lock().server.state = Some(state);
            }
            if m.settle(Instant::now()) {
                let _ = notify.try_send(());
            }
        }
    });
    Ok(())
}

/// Reads `/routez` and `/gatewayz` (bounded time and body, as every other fetch).
async fn read_server_links(http: &reqwest::Client, base: &str) -> Result<RouteGateway, String> {
    let base = base.trim_end_matches('/');
    let routez: Routez =
        crate::daemon::fetch::fetch_json(http, &format!("{base}/routez"), MAX_MONITOR_BODY)
            .await
            .map_err(|e| e.to_string())?;
    // A server without gateways answers /gatewayz with an empty object.
    let gatewayz: Gatewayz =
        crate::daemon::fetch::fetch_json(http, &format!("{base}/gatewayz"), MAX_MONITOR_BODY)
            .await
            .map_err(|e| e.to_string())?;
    let cut = |s: String| s.chars().take(128).collect::<String>();
    Ok(RouteGateway {
        routes: routez
            .routes
            .into_iter()
            .take(64)
            .map(|r| {
                (
                    cut(r.remote_name.or(r.remote_id).unwrap_or_default()),
                    cut(r.rtt.unwrap_or_else(|| "?".into())),
                )
            })
            .collect(),
        gateways: gatewayz
            .outbound_gateways
            .into_iter()
            .take(64)
            .map(|(n, g)| {
                (
                    cut(n),
                    cut(g
                        .connection
                        .and_then(|c| c.rtt)
                        .unwrap_or_else(|| "?".into())),
                )
            })
            .collect(),
    })
}

/// Overlays the measured links on the `sites` snippet and returns the problems to raise.
pub fn overlay(view: &View, sites: &mut SitesSnippet) -> Vec<LinkProblem> {
    for s in &mut sites.sites {
        if s.id == view.site {
            for l in &mut s.links {
                if let Some(m) = view.links.iter().find(|m| m.to == l.to && m.kind == l.kind) {
                    l.status = m.status;
                    l.rtt_ms = m.rtt.map(ms);
                    l.last_seen_at = m.last_seen_at.clone();
                    l.detail = m.detail.clone();
                }
            }
        } else if let Some(rep) = view.reported.get(&s.id) {
            for l in &mut s.links {
                if let Some(r) = rep.iter().find(|r| r.to == l.to && r.kind == l.kind) {
                    l.status = r.status;
                    l.rtt_ms = r.rtt_ms;
                    l.detail = Some(format!("as reported by {}'s leader", s.id));
                }
            }
        } else if view.silent.contains(&s.id) {
            for l in &mut s.links {
                l.detail = Some(format!(
                    "unknown: no heartbeat from {}'s leader (measured from {})",
                    s.id, view.site
                ));
            }
        }
    }
    let mut problems: BTreeMap<&str, Vec<&MeasuredLink>> = BTreeMap::new();
    for m in &view.links {
        if matches!(m.status, Status::Down | Status::Degraded) {
            problems.entry(m.to.as_str()).or_default().push(m);
        }
    }
    problems
        .into_iter()
        .map(|(to, ms_)| {
            let down = ms_.iter().any(|m| m.status == Status::Down);
            let kinds: Vec<String> = ms_
                .iter()
                .map(|m| match m.rtt {
                    Some(r) if m.status == Status::Degraded => {
                        format!("{} ({} ms > {} ms)", m.kind, ms(r), ms(m.max_rtt))
                    }
                    _ => m.kind.clone(),
                })
                .collect();
            LinkProblem {
                from: view.site.clone(),
                to: to.to_owned(),
                down,
                title: format!(
                    "Site link {} → {to} {}: {}",
                    view.site,
                    if down { "down" } else { "slow" },
                    kinds.join(", ")
                ),
                detail: ms_
                    .iter()
                    .filter_map(|m| m.detail.clone())
                    .next()
                    .unwrap_or_default(),
                since: ms_.iter().find_map(|m| m.down_since.clone()),
            }
        })
        .collect()
}

/// Lease takeovers from the audit stream, newest first (at most [`MAX_FAILOVERS`]).
pub fn failovers(events: &[AuditEvent]) -> Vec<Failover> {
    events
        .iter()
        .rev()
        .filter(|e| e.action == TAKEOVER_ACTION)
        .take(MAX_FAILOVERS)
        .map(|e| {
            let d = e.detail.as_ref();
            let s = |k: &str| {
                d.and_then(|d| d.get(k))
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or("?")
                    .to_owned()
            };
            Failover {
                at: e.time.clone(),
                from: s("previous_holder"),
                to: s("holder"),
                scope: "control-plane".to_owned(),
                reason: e.reason.clone().unwrap_or_default(),
                correlation_id: e.correlation_id.clone(),
                site: e.site.clone(),
            }
        })
        .collect()
}

/// Records that `holder` took the lease `lock_key` over from `previous` (a failover).
pub async fn record_takeover(
    audit: &mut Audit,
    site: Option<&str>,
    lock_key: &str,
    lock_revision: u64,
    holder: &str,
    actor: &str,
    previous: &str,
) -> Result<(), crate::store::StoreError> {
    audit.refresh_head().await?;
    let env = audit.env.clone();
    let mut ev = AuditEvent::new(
        format!("takeover/{env}/{lock_key}/{lock_revision}"),
        &env,
        actor,
        TAKEOVER_ACTION,
        "ok",
    );
    ev.site = site.map(str::to_owned);
    ev.target = Some(format!("lock/{lock_key}"));
    ev.reason = Some(format!(
        "{previous} stopped renewing the lease; {holder} took over{}",
        site.map(|s| format!(" as leader of site {s}"))
            .unwrap_or_default()
    ));
    ev.detail = Some(serde_json::json!({
        "holder": holder,
        "previous_holder": previous,
        "lock_key": lock_key,
    }));
    audit.record(ev).await.map(|_| ())
}

/// Gauges of the last round (for tests).
#[cfg(test)]
fn gauge(m: &Monitor, to: &str, kind: &str) -> Option<i64> {
    let l = m.labels(&DeclaredLink {
        to: to.into(),
        kind: kind.into(),
        max_rtt: Duration::ZERO,
    });
    let mut found = None;
    // Family has no read accessor without creating: encode and look.
    let mut reg = Registry::default();
    reg.register("x", "x", m.up.clone());
    let mut s = String::new();
    let _ = prometheus_client::encoding::text::encode(&mut s, &reg);
    let key = format!(
        "x{{env=\"{}\",from=\"{}\",to=\"{}\",kind=\"{}\"}} ",
        l[0].1, l[1].1, l[2].1, l[3].1
    );
    for line in s.lines() {
        if let Some(v) = line.strip_prefix(&key) {
            found = v.trim().parse().ok();
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(max_ms: u64) -> DeclaredLink {
        DeclaredLink {
            to: "bgo1".into(),
            kind: "nats-cluster-route".into(),
            max_rtt: Duration::from_millis(max_ms),
        }
    }

    fn monitor() -> Monitor {
        let mut reg = Registry::default();
        let m = Monitor::new(
            SiteLinkOpts {
                env: "dev".into(),
                site: "osl1".into(),
                id: "a".into(),
                interval: Duration::from_secs(1),
                nats_monitor: None,
            },
            &mut reg,
        )
        .unwrap();
        m.lock().links = vec![
            link(15),
            DeclaredLink {
                to: "bgo1".into(),
                kind: "postgres-replication".into(),
                max_rtt: Duration::from_millis(20),
            },
        ];
        m
    }

    #[test]
    fn classify_covers_unknown_up_degraded_down() {
        let t0 = Instant::now();
        let i = Duration::from_secs(1);
        let l = link(15);
        // Nothing heard yet, within the grace period: unknown; after it: down.
        assert_eq!(classify(&l, None, None, t0, t0 + i, i), Status::Unknown);
        assert_eq!(classify(&l, None, None, t0, t0 + i * 4, i), Status::Down);
        let fast = Some(Duration::from_millis(3));
        let slow = Some(Duration::from_millis(40));
        assert_eq!(classify(&l, Some(t0), fast, t0, t0 + i, i), Status::Ok);
        assert_eq!(
            classify(&l, Some(t0), slow, t0, t0 + i, i),
            Status::Degraded
        );
        // Exactly at the limit still up; past it down.
        assert_eq!(classify(&l, Some(t0), fast, t0, t0 + i * 3, i), Status::Ok);
        assert_eq!(
            classify(
                &l,
                Some(t0),
                fast,
                t0,
                t0 + i * 3 + Duration::from_millis(1),
                i
            ),
            Status::Down
        );
    }

    #[test]
    fn median_ignores_one_slow_probe_and_thresholds_are_per_kind() {
        let m = monitor();
        let t0 = Instant::now();
        m.set_leading(true, t0);
        for ms_ in [5, 6, 90, 5, 6] {
            m.record_probe("bgo1", Ok(Duration::from_millis(ms_)), t0);
        }
        let v = m.view_at(t0);
        assert!(v.links.iter().all(|l| l.status == Status::Ok), "{v:?}");
        // Median 18 ms: above the route's 15 ms, under replication's 20 ms.
        for ms_ in [18, 18, 18] {
            m.record_probe("bgo1", Ok(Duration::from_millis(ms_)), t0);
        }
        let v = m.view_at(t0);
        let st: Vec<_> = v
            .links
            .iter()
            .map(|l| (l.kind.as_str(), l.status))
            .collect();
        assert_eq!(
            st,
            vec![
                ("nats-cluster-route", Status::Degraded),
                ("postgres-replication", Status::Ok)
            ]
        );
        assert!(m.settle(t0));
        assert_eq!(gauge(&m, "bgo1", "nats-cluster-route"), Some(1));
    }

    #[test]
    fn silence_makes_the_link_down_with_one_condition_per_pair() {
        let m = monitor();
        let t0 = Instant::now();
        m.set_leading(true, t0);
        m.record_probe("bgo1", Ok(Duration::from_millis(2)), t0);
        let later = t0 + Duration::from_secs(5);
        m.record_probe("bgo1", Err("no answer within 1000 ms".into()), later);
        assert!(m.settle(later));
        assert_eq!(gauge(&m, "bgo1", "nats-cluster-route"), Some(0));
        let v = m.view_at(later);
        assert!(
            v.links
                .iter()
                .all(|l| l.status == Status::Down && l.rtt.is_none())
        );
        let mut snap = SitesSnippet {
            version: 1,
            generated_at: String::new(),
            sites: vec![opsrepo::snippets::SiteStatus {
                id: "osl1".into(),
                name: "Oslo".into(),
                role: opsrepo::model::SiteRole::Primary,
                status: Status::Unknown,
                links: vec![opsrepo::snippets::LinkStatus {
                    to: "bgo1".into(),
                    kind: "nats-cluster-route".into(),
                    status: Status::Unknown,
                    max_rtt: "15ms".into(),
                    rtt_ms: None,
                    last_seen_at: None,
                    detail: None,
                }],
            }],
            failovers: Vec::new(),
            conditions: Vec::new(),
        };
        let p = overlay(&v, &mut snap);
        assert_eq!(p.len(), 1);
        assert!(p[0].down);
        assert!(p[0].title.contains("osl1 → bgo1 down"), "{}", p[0].title);
        assert!(p[0].detail.contains("no probe answer"), "{}", p[0].detail);
        assert!(p[0].since.is_some());
        assert_eq!(snap.sites[0].links[0].status, Status::Down);
        // It answers again: up, and the down time is forgotten.
        let again = later + Duration::from_millis(10);
        m.record_probe("bgo1", Ok(Duration::from_millis(2)), again);
        assert!(m.settle(again));
        assert_eq!(gauge(&m, "bgo1", "nats-cluster-route"), Some(1));
        assert!(overlay(&m.view_at(again), &mut snap).is_empty());
    }

    #[test]
    fn losing_leadership_forgets_measurements_and_series() {
        let m = monitor();
        let t0 = Instant::now();
        m.set_leading(true, t0);
        m.record_probe("bgo1", Ok(Duration::from_millis(2)), t0);
        m.settle(t0);
        assert_eq!(gauge(&m, "bgo1", "nats-cluster-route"), Some(1));
        m.set_leading(false, t0);
        assert_eq!(gauge(&m, "bgo1", "nats-cluster-route"), None);
        assert!(m.view_at(t0).links.is_empty());
    }

    #[test]
    fn names_must_be_subject_tokens() {
        for bad in ["", "osl1.x", "a b", "*", ">", "OSL1"] {
            assert!(check_name("site", bad).is_err(), "{bad}");
        }
        assert!(check_name("site", "osl1").is_ok());
    }

    #[test]
    fn failovers_come_from_takeover_events_newest_first() {
        let mut evs = Vec::new();
        for (i, (prev, now)) in [("a", "b"), ("b", "c")].iter().enumerate() {
            let mut e = AuditEvent::new(format!("t{i}"), "dev", "r", TAKEOVER_ACTION, "ok");
            e.site = Some("bgo1".into());
            e.detail = Some(serde_json::json!({"holder": now, "previous_holder": prev}));
            evs.push(e);
        }
        evs.push(AuditEvent::new("x", "dev", "r", "kv.put", "ok"));
        let f = failovers(&evs);
        assert_eq!(f.len(), 2);
        assert_eq!((f[0].from.as_str(), f[0].to.as_str()), ("b", "c"));
        assert_eq!(f[0].site.as_deref(), Some("bgo1"));
    }
}
