//! `vakt reconcile`: the daemon.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use reconciler::daemon::{self, DaemonOpts};

use super::env::{self, EnvArgs};
use crate::exit;
use crate::fail::{Exit, Fail};

/// Run the reconciler for one environment: apply what merges, keep NATS KV in sync.
///
/// It applies what is merged into the environment's branch, heals or reports drift, and serves
/// the operator API, metrics and live snippets.
///
/// One replica per environment (and --site) leads; it holds a lease in the `<prefix>_lock`
/// bucket (max age = --lease, renewed every third of it). Start two or three replicas: when the
/// leader dies, another takes over once the lease lapses.
///
/// Triggers: every --interval; a change under --watch (a local clone's .git); a fetch of
/// --remote before each step; a message on --trigger-subject (a Git hook or CI can publish one:
/// `nats pub vakt.trigger.prod ''`) for sub-second reaction.
///
/// A commit that fails validation is never applied (the last good commit stays; status says
/// which commit and why, with file and line); a branch that moved backwards is not followed
/// without --allow-rewind. With self_heal in the environment's policy, hand edits to KV are
/// restored and audited; without it they are reported (vakt_drifted_keys).
///
/// Serves /healthz, /metrics (Prometheus), /status (JSON), /snippets/* and the operator API
/// (/api/v1) on --listen. SIGTERM or Ctrl-C stop it between steps: an apply in progress
/// completes, the lease is released.
///
/// The port under hostile use: /healthz is always open (liveness probes); /snippets/*, /status
/// and /metrics are open unless --snippets-token FILE is given, then they need
/// `Authorization: Bearer <that token>` (the site asks for it once; Prometheus sends it with
/// `authorization: { credentials_file: … }`); /api/v1 always needs an API token. With
/// --allowed-host (repeatable) only those Host names are answered (421 otherwise). Every
/// connection must send its request head within --header-timeout (also the idle keep-alive
/// timeout) and its body within --body-timeout; at most --max-connections are served at once
/// (503 beyond); bodies over 64 KiB are refused with 413 before they are read.
///
/// Live alerts: with --alertmanager (repeatable) the leader reads each Alertmanager's
/// /api/v2/alerts every --alert-poll. Firing alerts become conditions carrying their catalog
/// runbook (from the runbook_id label or annotation, else the signal label), escalation,
/// remediation and owner, plus the vakt changes that touched the same tenant, service, site or
/// node within --change-window before they started. Silenced and inhibited alerts are listed
/// apart with the silence's author, end and comment. An alert without a catalog runbook is a
/// governance gap. A source that cannot be read is an urgent condition and its last alerts are
/// kept, marked stale.
///
/// Cross-site links: with --site, the site's leader publishes a heartbeat on
/// vakt.site.<env>.<site>.heartbeat every --site-heartbeat, answers round-trip probes on
/// vakt.site.<env>.<site>.probe, and probes every site its declared links
/// (inventory/sites/<site>.toml) name. A link is up, degraded (median round trip above its
/// max_rtt) or down (no answer for 3 heartbeats): vakt_site_link_up{env,from,to,kind} and
/// vakt_site_link_rtt_seconds on /metrics, the sites snippet, and a vakt_site_link_degraded
/// condition with its runbook. Run one daemon per site. With --nats-monitor, nats-server's
/// /routez and /gatewayz are shown on the nats-cluster-route links. A replica that takes a
/// lease over from another holder records a leader.takeover audit event (a failover on the
/// datacenter view).
///
/// Node TLS: a node's admin_url may be https://; --node-ca FILE is the CA bundle trusted for
/// it (no built-in roots), --node-cert FILE --node-key FILE the client certificate for nodes
/// that require mutual TLS. A node with tls = "required" in its inventory file is never called
/// over plain http://. A failed handshake says which option is missing (node status detail,
/// job errors).
///
/// One writer per environment: a hand-run `vakt apply` is refused while this daemon leads
/// (recorded by the leader), or handed to it with `--while-leader hand-off`. Every write path
/// (a pass, a job step, a backup, the inventory record, each KV write and audit event) checks
/// first that this replica still holds its lease at the revision it acquired; a replica paused
/// past its lease (SIGSTOP, a VM freeze) writes nothing on waking, logs `fenced` and shows
/// `fenced` in /status.
///
/// Ops metrics source: without --metrics-backend the decision header's figures are this
/// process's own counters since it started (mode in_memory: fine for dev and smoke checks).
/// With --metrics-backend URL (a Prometheus-compatible query API, e.g. VictoriaMetrics at
/// http://vm:8428) the leader runs a small query pack against URL/api/v1/query every
/// --metrics-poll (24 h totals of this environment's reconcile outcomes and refusals; 2 s
/// connect, 5 s total, 4 MiB body) and the mode is backend. When the query path fails
/// (refused, timeout, 5xx, not JSON, status error) the header falls back to in_memory with a
/// banner, the last backend totals are kept marked stale, and a vakt_metrics_backend_degraded
/// condition (action required; runbook ops.vakt.metrics-backend-degraded) says since when.
///
/// Exit codes: 0 stopped by SIGTERM or Ctrl-C, 2 usage (e.g. an invalid --site), 3 could not
/// run (NATS unreachable, listener address in use, unreadable token file).
///
/// Examples:
///   vakt reconcile --env prod --repo /srv/ops --watch /srv/ops/.git --listen 0.0.0.0:9464
///   vakt reconcile --env dev --remote https://git.example/ops.git --interval 1m
///   vakt reconcile --env prod --snippets /var/lib/vakt/snippets \
///       --alertmanager http://am-osl1:9093 --alertmanager http://am-bgo1:9093 --change-window 4h
///   vakt reconcile --env staging --metrics-backend http://victoria-metrics:8428 --metrics-poll 1m
///   vakt reconcile --env prod --site osl1 --site-heartbeat 5s --nats-monitor http://nats-osl1:8222
///   vakt reconcile --env prod --site bgo1 --nats https://nats-bgo1:4222
///   vakt reconcile --env prod --listen 0.0.0.0:9464 --snippets-token /etc/vakt/read-token \
///       --allowed-host vakt.ops.example --header-timeout 5s
///   vakt reconcile --env prod --node-ca /etc/vakt/nodes-ca.pem \
///       --node-cert /etc/vakt/node-client.pem --node-key /etc/vakt/node-client.key
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct ReconcileOpts {
    #[command(flatten)]
    pub target: EnvArgs,
    /// Site this replica serves (one leader per environment and site); its leader measures
    /// the site's declared cross-site links.
    #[arg(long, value_name = "SITE", value_parser = parse_site)]
    pub site: Option<String>,
    /// With --site: heartbeat and probe interval; a link is down after 3 without an answer.
    #[arg(long, default_value = "5s", value_parser = parse_heartbeat, value_name = "DURATION")]
    pub site_heartbeat: Duration,
    /// With --site: nats-server's monitoring URL (e.g. http://127.0.0.1:8222); /routez and
    /// /gatewayz are read every --site-heartbeat (2 s connect, 5 s total, 4 MiB body).
    #[arg(long, value_name = "URL", value_parser = parse_http_url, requires = "site")]
    pub nats_monitor: Option<String>,
    /// Poll interval, e.g. 30s, 1m.
    #[arg(long, default_value = "30s", value_parser = parse_dur, value_name = "DURATION")]
    pub interval: Duration,
    /// Watch this path (e.g. the clone's .git directory) and reconcile on change.
    #[arg(long, value_name = "PATH")]
    pub watch: Option<PathBuf>,
    /// Fetch this remote (URL or remote name) before each step; follow origin/<env branch>.
    #[arg(long, value_name = "URL")]
    pub remote: Option<String>,
    /// NATS subject that triggers a step at once (default: vakt.trigger.<env>; `-` disables).
    #[arg(long, value_name = "SUBJECT")]
    pub trigger_subject: Option<String>,
    /// Serve /healthz, /metrics and /status here (port 0 picks a free port; the URL is printed).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Leader lease.
    #[arg(long, default_value = "10s", value_parser = parse_dur, value_name = "DURATION")]
    pub lease: Duration,
    /// This replica's id in the lock and the status (default: host and process id).
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,
    /// Follow the env branch when it moved backwards (force push; audited).
    #[arg(long)]
    pub allow_rewind: bool,
    /// Actor recorded in audit events (default: reconciler:<id>).
    #[arg(long, value_name = "WHO")]
    pub actor: Option<String>,
    /// Write the live snippets (summary, actions, tasks, events, health, inventory, sites, dr)
    /// to this directory; they are also served at /snippets/<name>.json.
    #[arg(long, value_name = "DIR")]
    pub snippets: Option<PathBuf>,
    /// How often every declared node's /healthz and /admin/info are polled.
    #[arg(long, default_value = "30s", value_parser = parse_dur, value_name = "DURATION")]
    pub node_poll: Duration,
    /// Browser origin allowed to fetch /snippets/* (CORS), when the site is hosted elsewhere.
    #[arg(long, value_name = "ORIGIN")]
    pub cors_origin: Option<String>,
    /// Operator API tokens: a file outside the repo with `<token> <kind>:<name>` lines
    /// (e.g. `… user:kari.nordby`); also `VAKT_API_TOKENS_DATA` (same format, `;`-separated).
    /// Without tokens the API denies every call.
    #[arg(long, value_name = "FILE", env = "VAKT_API_TOKENS")]
    pub api_tokens: Option<PathBuf>,
    /// Take a verified backup (as `vakt backup`) into a new directory under DIR every
    /// --backup-every; only the leader does, so replicas never duplicate them.
    #[arg(long, value_name = "DIR")]
    pub backup_dir: Option<PathBuf>,
    /// How often the leader takes a backup (with --backup-dir).
    #[arg(long, default_value = "15m", value_parser = parse_dur, value_name = "DURATION")]
    pub backup_every: Duration,
    /// Backups of this environment kept under --backup-dir; older ones are deleted.
    #[arg(long, default_value_t = 96, value_name = "N")]
    pub backup_keep: usize,
    /// Read firing alerts from this Alertmanager (API v2 base URL, e.g. http://am:9093).
    /// Repeat for several: the same alert seen twice is shown once, tagged with both sources.
    /// A source that cannot be read is itself an urgent condition.
    #[arg(long = "alertmanager", value_name = "URL", value_parser = parse_http_url)]
    pub alertmanagers: Vec<String>,
    /// How often every --alertmanager is read (each read: 2 s connect, 5 s total, 16 MiB body).
    #[arg(long, default_value = "15s", value_parser = parse_dur, value_name = "DURATION")]
    pub alert_poll: Duration,
    /// "What changed?": vakt changes (applies, self-heals, migrations, drains, approvals,
    /// restores) this long before an alert or condition started are listed with it.
    #[arg(long, default_value = "2h", value_parser = parse_dur, value_name = "DURATION")]
    pub change_window: Duration,
    /// Prometheus-compatible query API for the decision header's durable totals (e.g.
    /// http://victoria-metrics:8428; a path prefix such as /select/0/prometheus is kept).
    /// Without it the header shows in-process counters only (mode in_memory).
    #[arg(long, value_name = "URL", value_parser = parse_http_url)]
    pub metrics_backend: Option<String>,
    /// How often the --metrics-backend query pack runs (each query: 2 s connect, 5 s total,
    /// 4 MiB body).
    #[arg(long, default_value = "30s", value_parser = parse_poll, value_name = "DURATION", requires = "metrics_backend")]
    pub metrics_poll: Duration,
    /// Read token for /snippets/*, /status and /metrics: a file outside the repo holding one
    /// token of 16 to 512 characters. Without it those endpoints are open to whoever reaches
    /// --listen (bind it to loopback or a private network then).
    #[arg(long, value_name = "FILE")]
    pub snippets_token: Option<PathBuf>,
    /// CA bundle (PEM) trusted for https:// node admin URLs. There are no built-in roots: an
    /// https:// node is called only with this.
    #[arg(long, value_name = "FILE")]
    pub node_ca: Option<PathBuf>,
    /// Client certificate (PEM) for nodes that require mutual TLS; needs --node-key.
    #[arg(long, value_name = "FILE", requires = "node_key")]
    pub node_cert: Option<PathBuf>,
    /// Private key (PEM) of --node-cert.
    #[arg(long, value_name = "FILE", requires = "node_cert")]
    pub node_key: Option<PathBuf>,
    #[command(flatten)]
    pub http: HttpArgs,
}

/// The hardening flags of a port (`vakt reconcile --listen` and `vakt site serve`).
#[derive(Debug, Clone, clap::Args)]
pub struct HttpArgs {
    /// Answer only requests whose Host header names this host (repeatable; port ignored).
    /// Without it any Host is answered.
    #[arg(long = "allowed-host", value_name = "HOST", value_parser = parse_host)]
    pub allowed_hosts: Vec<String>,
    /// A client must send a request's head within this time; idle keep-alive connections
    /// are closed after it too.
    #[arg(long, default_value = "10s", value_parser = parse_timeout, value_name = "DURATION")]
    pub header_timeout: Duration,
    /// A request's body must arrive within this time.
    #[arg(long, default_value = "10s", value_parser = parse_timeout, value_name = "DURATION")]
    pub body_timeout: Duration,
    /// Connections served at once; one more gets 503 and is closed.
    #[arg(long, default_value_t = 256, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub max_connections: u32,
}

impl HttpArgs {
    pub fn limits(&self) -> opsrepo::http::Limits {
        opsrepo::http::Limits {
            header_read: self.header_timeout,
            body_read: self.body_timeout,
            max_connections: self.max_connections as usize,
            allowed_hosts: self.allowed_hosts.clone(),
            ..Default::default()
        }
    }
}

fn parse_host(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:".contains(&b));
    if ok {
        Ok(s.to_ascii_lowercase())
    } else {
        Err(format!(
            "`{s}` is not a host name (e.g. vakt.ops.example, 127.0.0.1 or ::1; no port, no scheme)"
        ))
    }
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    let d = parse_dur(s)?;
    if d < Duration::from_millis(100) || d > Duration::from_secs(600) {
        return Err(format!("`{s}` is outside 100ms..10m"));
    }
    Ok(d)
}

/// Reads a read-token file: one token, 16 to 512 printable characters, kept out of the repo.
pub fn read_token_file(path: &std::path::Path, repo: &std::path::Path) -> Result<String, String> {
    let canon = |p: &std::path::Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_owned());
    if canon(path).starts_with(canon(repo)) {
        return Err(format!(
            "{} is inside the ops repo; tokens must never be kept in Git: move the file out",
            path.display()
        ));
    }
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.len() > 4096 {
        return Err(format!(
            "{}: {} bytes; a token file holds one token (16 to 512 characters)",
            path.display(),
            meta.len()
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let t = text.trim();
    if t.len() < 16 || t.len() > 512 || !t.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "{}:1: expected one token of 16 to 512 printable characters without spaces",
            path.display()
        ));
    }
    Ok(t.to_owned())
}

fn parse_http_url(s: &str) -> Result<String, String> {
    let rest = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"))
        .ok_or_else(|| format!("`{s}` is not an http:// or https:// URL"))?;
    if rest.is_empty() || rest.starts_with('/') || s.len() > 2048 || s.chars().any(char::is_control)
    {
        return Err(format!("`{s}` has no host (e.g. http://127.0.0.1:9093)"));
    }
    Ok(s.trim_end_matches('/').to_owned())
}

fn parse_site(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "`{s}` is not a site id: use the `id` of an inventory/sites/*.toml file \
             (lowercase letters, digits and `-`)"
        ))
    }
}

fn parse_heartbeat(s: &str) -> Result<Duration, String> {
    let d = parse_dur(s)?;
    if d < Duration::from_millis(100) || d > Duration::from_secs(3600) {
        return Err(format!("`{s}` is outside 100ms..1h"));
    }
    Ok(d)
}

fn parse_poll(s: &str) -> Result<Duration, String> {
    let d = parse_dur(s)?;
    if d < Duration::from_millis(100) || d > Duration::from_secs(86_400) {
        return Err(format!("`{s}` is outside 100ms..24h"));
    }
    Ok(d)
}

fn parse_dur(s: &str) -> Result<Duration, String> {
    s.parse::<opsrepo::model::Duration>().map(|d| d.get())
}

pub fn run(o: ReconcileOpts) -> Exit {
    let target = o.target.target(Some(o.lease))?;
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "host".into());
    let id =
        o.id.clone()
            .unwrap_or_else(|| format!("{host}-{}", std::process::id()));
    let trigger = match o.trigger_subject.as_deref() {
        Some("-") => None,
        Some(s) => Some(s.to_owned()),
        None => Some(format!("vakt.trigger.{}", o.target.env)),
    };
    let from_file = match &o.api_tokens {
        Some(p) => reconciler::daemon::api::Tokens::load(p, &o.target.repo),
        None => Ok(Default::default()),
    };
    let api_tokens = match from_file.and_then(reconciler::daemon::api::Tokens::from_env) {
        Ok(t) => t,
        Err(e) => {
            return Err(Fail::new(exit::COULD_NOT_RUN, e));
        }
    };
    let snippets_token = match &o.snippets_token {
        Some(p) => Some(
            read_token_file(p, &o.target.repo).map_err(|e| Fail::new(exit::COULD_NOT_RUN, e))?,
        ),
        None => None,
    };
    let node_tls = reconciler::ops::nodes::NodeTls::load(
        o.node_ca.as_deref(),
        o.node_cert.as_deref(),
        o.node_key.as_deref(),
    )
    .map_err(|e| Fail::new(exit::COULD_NOT_RUN, e.to_string()))?;
    let opts = DaemonOpts {
        node_tls,
        repo: o.target.repo.clone(),
        target,
        site: o.site.clone(),
        interval: o.interval,
        watch: o.watch.clone(),
        remote: o.remote.clone(),
        trigger_subject: trigger,
        listen: o.listen,
        actor: o
            .actor
            .clone()
            .unwrap_or_else(|| format!("reconciler:{id}")),
        allow_rewind: o.allow_rewind,
        id,
        snippets: o.snippets.clone(),
        node_poll: o.node_poll,
        cors_origin: o.cors_origin.clone(),
        api_tokens,
        snippets_token,
        http_limits: o.http.limits(),
        backups: o
            .backup_dir
            .clone()
            .map(|dir| reconciler::daemon::BackupSchedule {
                dir,
                every: o.backup_every,
                keep: o.backup_keep,
            }),
        alertmanagers: o.alertmanagers.clone(),
        alert_poll: o.alert_poll,
        change_window: o.change_window,
        site_heartbeat: o.site_heartbeat,
        nats_monitor: o.nats_monitor.clone(),
        metrics_backend: o.metrics_backend.clone(),
        metrics_poll: o.metrics_poll,
    };
    env::runtime().block_on(async move {
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            let _ = tx.send(true);
        });
        daemon::run(opts, rx).await?;
        Ok(exit::OK)
    })
}
