//! Live alerts from Alertmanager (API v2): read every source with bounded time and size, keep the
//! last good answer of a source that went down (marked stale), deduplicate the same alert seen by
//! several sources (tagged with each, as Karma does), join each alert to its runbook catalog entry
//! and to the vakt changes that preceded it, and make the bounded views and conditions the live
//! snippets carry.
//!
//! Everything but [`poll`] and [`poll_loop`] is a pure function of its inputs.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use opsrepo::load::Model;
use opsrepo::model::{EscalationClass, RemediationMode, RunbookEntry};
use opsrepo::snippets::{
    AlertCard, AlertGroup, AlertSourceStatus, AlertState, AlertsView, Condition, ConditionKind,
    MAX_ALERT_CARDS, MAX_ALERT_GROUPS, MAX_SILENCED_CARDS, RelatedChange, SilenceInfo, SourceState,
};
use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::daemon::fetch::{self, fetch_json};
use crate::store::audit::AuditEvent;

/// Largest body read from a source; a bigger one is an error for that source (read as a stream
/// and stopped at the limit, never buffered whole).
pub const MAX_BODY: usize = 16 << 20;
/// Changes listed per card or condition.
pub const MAX_CHANGES: usize = 10;
/// Signal of an alert source that cannot be read.
pub const SOURCE_DOWN_SIGNAL: &str = "vakt_alert_source_down";

const MAX_LABELS: usize = 32;
const MAX_LABEL_KEY: usize = 128;
const MAX_LABEL_VALUE: usize = 256;
const MAX_SUMMARY: usize = 1024;
const MAX_SILENCE_TEXT: usize = 512;

/// An alert as Alertmanager's `GET /api/v2/alerts` reports it (fields vakt uses; others are
/// ignored so newer Alertmanagers keep working).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct AmAlert {
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(rename = "startsAt", default)]
    pub starts_at: String,
    #[serde(rename = "endsAt", default)]
    pub ends_at: String,
    #[serde(default)]
    pub fingerprint: String,
    #[serde(default)]
    pub status: AmStatus,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct AmStatus {
    /// `active`, `suppressed` or `unprocessed`.
    #[serde(default)]
    pub state: String,
    #[serde(rename = "silencedBy", default)]
    pub silenced_by: Vec<String>,
    #[serde(rename = "inhibitedBy", default)]
    pub inhibited_by: Vec<String>,
}

/// A silence as `GET /api/v2/silences` reports it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct AmSilence {
    pub id: String,
    #[serde(rename = "createdBy", default)]
    pub created_by: String,
    #[serde(default)]
    pub comment: String,
    #[serde(rename = "endsAt", default)]
    pub ends_at: String,
}

/// One Alertmanager and what the daemon last read from it.
#[derive(Debug, Clone, PartialEq)]
pub struct Source {
    /// `host:port` (or the whole URL when two sources share it).
    pub name: String,
    /// Base URL (`http://am:9093`).
    pub url: String,
    pub state: SourceState,
    /// Alerts of the last good answer (unresolved only).
    pub alerts: Vec<AmAlert>,
    /// Silences by id, from the last good answer.
    pub silences: BTreeMap<String, AmSilence>,
    pub last_success_at: Option<String>,
    /// Since when the source has been down (first failed poll).
    pub down_since: Option<String>,
    pub error: Option<String>,
}

impl Source {
    /// Sources for the `--alertmanager` URLs, named by `host:port`.
    pub fn from_urls(urls: &[String]) -> Vec<Source> {
        let short = |u: &str| {
            let rest = u.split_once("://").map_or(u, |(_, r)| r);
            rest.split('/').next().unwrap_or(rest).to_owned()
        };
        urls.iter()
            .map(|u| {
                let base = u.trim_end_matches('/').to_owned();
                let s = short(&base);
                let unique = urls
                    .iter()
                    .filter(|o| short(o.trim_end_matches('/')) == s)
                    .count()
                    == 1;
                Source {
                    name: if unique { s } else { base.clone() },
                    url: base,
                    state: SourceState::Unknown,
                    alerts: Vec::new(),
                    silences: BTreeMap::new(),
                    last_success_at: None,
                    down_since: None,
                    error: None,
                }
            })
            .collect()
    }

    pub fn status(&self) -> AlertSourceStatus {
        AlertSourceStatus {
            name: self.name.clone(),
            url: self.url.clone(),
            state: self.state,
            last_success_at: self.last_success_at.clone(),
            error: self.error.clone(),
            alerts: self.alerts.len() as u32,
        }
    }
}

/// Reads one source's alerts (and, when some are silenced, its silences). On failure the last
/// good answer is kept and the source is marked down.
pub async fn poll(client: &reqwest::Client, src: &mut Source, now: OffsetDateTime, limit: usize) {
    let at = now.format(&Rfc3339).unwrap_or_default();
    let url = format!("{}/api/v2/alerts", src.url);
    match fetch_json::<Vec<AmAlert>>(client, &url, limit).await {
        Ok(list) => {
            src.alerts = list.into_iter().filter(|a| !resolved(a, now)).collect();
            let silenced = src.alerts.iter().any(|a| !a.status.silenced_by.is_empty());
            if silenced {
                let url = format!("{}/api/v2/silences", src.url);
                match fetch_json::<Vec<AmSilence>>(client, &url, limit).await {
                    Ok(list) => {
                        src.silences = list.into_iter().map(|s| (s.id.clone(), s)).collect();
                    }
                    Err(e) => {
                        // The alerts are good; only the silence details are missing.
                        tracing::warn!(source = %src.name, error = %e, "cannot read silences");
                    }
                }
            }
            src.state = SourceState::Live;
            src.last_success_at = Some(at);
            src.down_since = None;
            src.error = None;
        }
        Err(e) => {
            tracing::warn!(source = %src.name, error = %e, "alert source down");
            if src.state != SourceState::Down {
                src.down_since = Some(at);
            }
            src.state = SourceState::Down;
            src.error = Some(e.to_string());
        }
    }
}

/// Polls every source concurrently every `every` while `active()` holds, and sends each new set
/// of sources. Ends when `shutdown` fires or the receiver is gone.
pub async fn poll_loop(
    mut sources: Vec<Source>,
    every: Duration,
    active: impl Fn() -> bool,
    tx: tokio::sync::mpsc::Sender<Arc<Vec<Source>>>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let client = fetch::client();
    let mut ticker = fetch::Ticker::new(every, shutdown);
    while ticker.next(&active).await {
        let now = OffsetDateTime::now_utc();
        let polls = sources.iter_mut().map(|s| poll(&client, s, now, MAX_BODY));
        if ticker
            .unless_shutdown(futures_util::future::join_all(polls))
            .await
            .is_none()
            || tx.send(Arc::new(sources.clone())).await.is_err()
        {
            break;
        }
    }
}

fn parse_time(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &Rfc3339).ok()
}

/// An alert whose `endsAt` has passed is resolved (Alertmanager may still list it briefly).
fn resolved(a: &AmAlert, now: OffsetDateTime) -> bool {
    parse_time(&a.ends_at).is_some_and(|t| t <= now)
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max).collect();
    out.push('…');
    out
}

/// One alert after deduplication across sources.
#[derive(Debug, Clone)]
pub struct Merged<'a> {
    pub alert: &'a AmAlert,
    pub state: AlertState,
    /// Names of every source that reported it.
    pub sources: Vec<String>,
    /// Every source that reported it is down.
    pub stale: bool,
    /// Silence ids muting it, over every source.
    pub silence_ids: Vec<String>,
    pub inhibited_by: Vec<String>,
}

fn state_of(a: &AmAlert) -> AlertState {
    if a.status.state == "suppressed" {
        if !a.status.silenced_by.is_empty() {
            return AlertState::Silenced;
        }
        if !a.status.inhibited_by.is_empty() {
            return AlertState::Inhibited;
        }
    }
    AlertState::Firing
}

/// Deduplicates the alerts of every source by label set. An alert firing in any source is
/// firing (a silence in one Alertmanager does not hide it in another).
pub fn merge(sources: &[Source]) -> Vec<Merged<'_>> {
    let mut out: Vec<Merged<'_>> = Vec::new();
    let mut index: HashMap<&BTreeMap<String, String>, usize> = HashMap::new();
    for src in sources {
        let down = src.state != SourceState::Live;
        for a in &src.alerts {
            let st = state_of(a);
            match index.get(&a.labels) {
                Some(&i) => {
                    let m = &mut out[i];
                    if !m.sources.contains(&src.name) {
                        m.sources.push(src.name.clone());
                    }
                    m.stale &= down;
                    if st == AlertState::Firing || m.state == AlertState::Firing {
                        m.state = AlertState::Firing;
                    } else if st == AlertState::Silenced {
                        m.state = AlertState::Silenced;
                    }
                    for s in &a.status.silenced_by {
                        if !m.silence_ids.contains(s) {
                            m.silence_ids.push(s.clone());
                        }
                    }
                    for s in &a.status.inhibited_by {
                        if !m.inhibited_by.contains(s) {
                            m.inhibited_by.push(s.clone());
                        }
                    }
                }
                None => {
                    index.insert(&a.labels, out.len());
                    out.push(Merged {
                        alert: a,
                        state: st,
                        sources: vec![src.name.clone()],
                        stale: down,
                        silence_ids: a.status.silenced_by.clone(),
                        inhibited_by: a.status.inhibited_by.clone(),
                    });
                }
            }
        }
    }
    out
}

/// The catalog entry of a runbook id.
fn entry_by_id<'m>(model: &'m Model, id: &str) -> Option<&'m RunbookEntry> {
    model
        .catalogs
        .iter()
        .flat_map(|c| c.spec.runbooks.iter())
        .find(|r| r.id == id)
}

/// The catalog entry that lists `signal`.
pub fn entry_for_signal<'m>(model: &'m Model, signal: &str) -> Option<&'m RunbookEntry> {
    model
        .catalogs
        .iter()
        .flat_map(|c| c.spec.runbooks.iter())
        .find(|r| r.signals.iter().any(|s| s == signal))
}

/// How an alert is handled: from its catalog entry, or a governance gap.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub runbook: String,
    pub escalation_class: EscalationClass,
    pub remediation_mode: RemediationMode,
    pub owner: Option<String>,
    /// Why no runbook could be resolved.
    pub gap: Option<String>,
}

/// The catalog entry of the alert's `runbook_id` (label or annotation), else of its `signal`
/// label; without either, a governance gap with the escalation its labels ask for.
pub fn resolve(model: &Model, a: &AmAlert) -> Resolved {
    let runbook_id = a
        .labels
        .get("runbook_id")
        .or_else(|| a.annotations.get("runbook_id"));
    let signal = a.labels.get("signal");
    let entry = runbook_id
        .and_then(|id| entry_by_id(model, id))
        .or_else(|| signal.and_then(|s| entry_for_signal(model, s)));
    if let Some(e) = entry {
        return Resolved {
            runbook: e.id.clone(),
            escalation_class: e.escalation_class,
            remediation_mode: e.remediation_mode,
            owner: Some(e.owner_team.clone()),
            gap: None,
        };
    }
    let name = a.labels.get("alertname").map_or("unnamed", String::as_str);
    let escalation_class = match a.labels.get("escalation").map(String::as_str) {
        Some("urgent") => EscalationClass::Urgent,
        Some("informational") => EscalationClass::Informational,
        Some("action-required") => EscalationClass::ActionRequired,
        _ if matches!(
            a.labels.get("severity").map(String::as_str),
            Some("critical" | "page")
        ) =>
        {
            EscalationClass::Urgent
        }
        _ => EscalationClass::ActionRequired,
    };
    let (runbook, gap) = match (runbook_id, signal) {
        (Some(id), _) => (
            truncate(id, MAX_LABEL_VALUE),
            format!(
                "runbook_id `{}` is not in the runbook catalog",
                truncate(id, 64)
            ),
        ),
        (None, Some(s)) => (
            format!("unmapped.{}", truncate(s, 64)),
            format!(
                "signal `{}` maps to no runbook in the catalog",
                truncate(s, 64)
            ),
        ),
        (None, None) => (
            format!("unmapped.{}", truncate(name, 64)),
            "the alert has neither a runbook_id nor a signal label".to_owned(),
        ),
    };
    Resolved {
        runbook,
        escalation_class,
        remediation_mode: RemediationMode::Manual,
        owner: a.labels.get("team").map(|t| truncate(t, 64)),
        gap: Some(gap),
    }
}

/// What a condition or alert is about, for "what changed?".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scope {
    pub tenant: Option<String>,
    pub service: Option<String>,
    pub site: Option<String>,
    pub node: Option<String>,
}

impl Scope {
    pub fn of_labels(l: &BTreeMap<String, String>) -> Scope {
        Scope {
            tenant: l.get("tenant").cloned(),
            service: l.get("service").or_else(|| l.get("service_kind")).cloned(),
            site: l.get("site").cloned(),
            node: l.get("node").cloned(),
        }
    }

    fn is_empty(&self) -> bool {
        self.tenant.is_none()
            && self.service.is_none()
            && self.site.is_none()
            && self.node.is_none()
    }
}

/// A vakt change from the audit trail, parsed once.
#[derive(Debug, Clone)]
pub struct Change<'a> {
    pub at: OffsetDateTime,
    pub event: &'a AuditEvent,
    pub tenant: Option<String>,
    pub service: Option<String>,
    pub site: Option<String>,
    pub nodes: Vec<String>,
    pub global: bool,
}

/// Audit actions that are changes (applies, self-heals, migrations, drains, approvals,
/// restores, inventory decisions), not observations or refusals.
fn is_change(action: &str) -> bool {
    matches!(
        action,
        "kv.put"
            | "kv.delete"
            | "kv.heal"
            | "job.created"
            | "job.succeeded"
            | "job.failed"
            | "job.dead-lettered"
            | "job.cancelled"
            | "approval.approve"
            | "approval.reject"
            | "restore.bucket"
            | "restore.done"
            | "inventory.adopt"
            | "inventory.reject"
    )
}

/// The changes among `events` with what each touched.
pub fn changes(events: &[AuditEvent]) -> Vec<Change<'_>> {
    let mut out = Vec::new();
    for e in events.iter().filter(|e| is_change(&e.action)) {
        let Some(at) = parse_time(&e.time) else {
            continue;
        };
        let mut c = Change {
            at,
            event: e,
            tenant: None,
            service: None,
            site: e.site.clone(),
            nodes: Vec::new(),
            global: false,
        };
        if let Some((bucket, key)) = e.target.as_deref().and_then(|t| t.split_once('/')) {
            let parts: Vec<&str> = key.split('.').collect();
            let kind = bucket.rsplit('_').next().unwrap_or(bucket);
            match (kind, parts.as_slice()) {
                ("config", ["tenant", t, ..]) => c.tenant = Some((*t).to_owned()),
                ("config", ["global", ..]) => c.global = true,
                ("placement", [svc, t]) => {
                    c.service = Some((*svc).to_owned());
                    c.tenant = Some((*t).to_owned());
                }
                ("inventory", ["node", n]) => c.nodes.push((*n).to_owned()),
                ("inventory", ["site", s]) => c.site = Some((*s).to_owned()),
                ("inventory", ["service", s]) => c.service = Some((*s).to_owned()),
                _ => {}
            }
        }
        if let Some(d) = &e.detail {
            for k in ["from", "to", "node"] {
                if let Some(n) = d[k].as_str() {
                    c.nodes.push(n.to_owned());
                }
            }
            if c.tenant.is_none() {
                c.tenant = d["tenant"].as_str().map(str::to_owned);
            }
        }
        out.push(c);
    }
    out
}

/// The changes that touched `scope` in `window` before `started`, newest first, writes of one
/// plan with the same action and the same match collapsed, at most [`MAX_CHANGES`].
pub fn related(
    changes: &[Change<'_>],
    scope: &Scope,
    started: OffsetDateTime,
    window: Duration,
) -> Vec<RelatedChange> {
    if scope.is_empty() {
        return Vec::new();
    }
    let from = started - window;
    let mut out: Vec<RelatedChange> = Vec::new();
    let mut hits: Vec<&Change<'_>> = changes
        .iter()
        .filter(|c| c.at >= from && c.at <= started)
        .collect();
    hits.sort_by_key(|c| std::cmp::Reverse(c.at));
    for c in hits {
        let eq = |a: &Option<String>, b: &Option<String>| a.is_some() && a == b;
        let matched = if eq(&scope.tenant, &c.tenant) {
            format!("tenant:{}", c.tenant.as_deref().unwrap_or_default())
        } else if scope.node.as_ref().is_some_and(|n| c.nodes.contains(n)) {
            format!("node:{}", scope.node.as_deref().unwrap_or_default())
        } else if eq(&scope.service, &c.service) {
            format!("service:{}", c.service.as_deref().unwrap_or_default())
        } else if eq(&scope.site, &c.site) {
            format!("site:{}", c.site.as_deref().unwrap_or_default())
        } else if c.global {
            "global".to_owned()
        } else {
            continue;
        };
        let e = c.event;
        if let Some(prev) = out.iter_mut().find(|r| {
            r.action == e.action
                && r.plan_id.is_some()
                && r.plan_id == e.plan_id
                && r.matched == matched
        }) {
            prev.events += 1;
            continue;
        }
        if out.len() >= MAX_CHANGES {
            continue;
        }
        out.push(RelatedChange {
            event_id: e.id.clone(),
            at: e.time.clone(),
            action: e.action.clone(),
            actor: e.actor.clone(),
            commit: e.commit.clone(),
            plan_id: e.plan_id.clone(),
            target: e.target.clone(),
            events: 1,
            matched,
        });
    }
    out
}

fn rank(e: EscalationClass) -> u8 {
    match e {
        EscalationClass::Urgent => 0,
        EscalationClass::ActionRequired => 1,
        EscalationClass::Informational => 2,
    }
}

/// What [`build`] needs.
pub struct ViewInputs<'a> {
    pub model: &'a Model,
    pub env: &'a str,
    pub sources: &'a [Source],
    pub changes: &'a [Change<'a>],
    pub window: Duration,
    pub now: OffsetDateTime,
}

fn card(i: &ViewInputs<'_>, m: &Merged<'_>, silences: &BTreeMap<&str, &AmSilence>) -> AlertCard {
    let a = m.alert;
    let r = resolve(i.model, a);
    let labels: BTreeMap<String, String> = a
        .labels
        .iter()
        .take(MAX_LABELS)
        .map(|(k, v)| (truncate(k, MAX_LABEL_KEY), truncate(v, MAX_LABEL_VALUE)))
        .collect();
    let scope = Scope::of_labels(&a.labels);
    let started = parse_time(&a.starts_at).unwrap_or(i.now);
    let changes = related(i.changes, &scope, started, i.window);
    let short = |v: Option<&String>| v.map(|s| truncate(s, MAX_LABEL_VALUE));
    AlertCard {
        fingerprint: truncate(&a.fingerprint, 64),
        name: truncate(
            a.labels.get("alertname").map_or("unnamed", String::as_str),
            MAX_LABEL_VALUE,
        ),
        state: m.state,
        starts_at: truncate(&a.starts_at, 64),
        summary: a
            .annotations
            .get("summary")
            .or_else(|| a.annotations.get("description"))
            .map(|s| truncate(s, MAX_SUMMARY)),
        labels,
        sources: m.sources.clone(),
        stale: m.stale,
        signal: short(a.labels.get("signal")),
        runbook: r.runbook,
        governance_gap: r.gap.is_some(),
        escalation_class: r.escalation_class,
        remediation_mode: r.remediation_mode,
        owner: r.owner,
        tenant: short(scope.tenant.as_ref()),
        service: short(scope.service.as_ref()),
        site: short(scope.site.as_ref()),
        node: short(scope.node.as_ref()),
        silenced_by: m
            .silence_ids
            .iter()
            .take(8)
            .map(|id| match silences.get(id.as_str()) {
                Some(s) => SilenceInfo {
                    id: truncate(id, 64),
                    created_by: truncate(&s.created_by, MAX_SILENCE_TEXT),
                    ends_at: truncate(&s.ends_at, 64),
                    comment: truncate(&s.comment, MAX_SILENCE_TEXT),
                },
                None => SilenceInfo {
                    id: truncate(id, 64),
                    created_by: "(unknown: silence details not read)".into(),
                    ends_at: String::new(),
                    comment: String::new(),
                },
            })
            .collect(),
        inhibited_by: m
            .inhibited_by
            .iter()
            .take(8)
            .map(|s| truncate(s, 64))
            .collect(),
        changes,
    }
}

/// The alerts view of `actions.json` and the conditions it adds (one per listed firing card,
/// one per group with unlisted alerts, one per source that is down). Bounded whatever the
/// number of alerts.
pub fn build(i: &ViewInputs<'_>) -> (AlertsView, Vec<Condition>) {
    let merged = merge(i.sources);
    let silences: BTreeMap<&str, &AmSilence> = i
        .sources
        .iter()
        .flat_map(|s| s.silences.iter().map(|(k, v)| (k.as_str(), v)))
        .collect();
    // Classify everything once (cheap), build cards only for what is listed.
    let mut firing: Vec<(&Merged<'_>, Resolved)> = Vec::new();
    let mut muted: Vec<&Merged<'_>> = Vec::new();
    let mut groups: BTreeMap<(String, String), AlertGroup> = BTreeMap::new();
    for m in &merged {
        let r = resolve(i.model, m.alert);
        let signal = m
            .alert
            .labels
            .get("signal")
            .or_else(|| m.alert.labels.get("alertname"))
            .map_or_else(|| "unnamed".to_owned(), |s| truncate(s, 128));
        let g = groups
            .entry((signal.clone(), r.runbook.clone()))
            .or_insert_with(|| AlertGroup {
                signal,
                runbook: r.runbook.clone(),
                escalation_class: r.escalation_class,
                firing: 0,
                silenced: 0,
                unlisted: 0,
            });
        if m.state == AlertState::Firing {
            g.firing += 1;
            firing.push((m, r));
        } else {
            g.silenced += 1;
            muted.push(m);
        }
    }
    let starts = |m: &Merged<'_>| parse_time(&m.alert.starts_at).unwrap_or(i.now);
    firing.sort_by(|(a, ra), (b, rb)| {
        rank(ra.escalation_class)
            .cmp(&rank(rb.escalation_class))
            .then(a.stale.cmp(&b.stale))
            .then(starts(b).cmp(&starts(a)))
            .then(a.alert.fingerprint.cmp(&b.alert.fingerprint))
    });
    muted.sort_by(|a, b| {
        starts(b)
            .cmp(&starts(a))
            .then(a.alert.fingerprint.cmp(&b.alert.fingerprint))
    });
    for (m, r) in firing.iter().skip(MAX_ALERT_CARDS) {
        let signal = m
            .alert
            .labels
            .get("signal")
            .or_else(|| m.alert.labels.get("alertname"))
            .map_or_else(|| "unnamed".to_owned(), |s| truncate(s, 128));
        if let Some(g) = groups.get_mut(&(signal, r.runbook.clone())) {
            g.unlisted += 1;
        }
    }
    let firing_cards: Vec<AlertCard> = firing
        .iter()
        .take(MAX_ALERT_CARDS)
        .map(|(m, _)| card(i, m, &silences))
        .collect();
    let silenced_cards: Vec<AlertCard> = muted
        .iter()
        .take(MAX_SILENCED_CARDS)
        .map(|m| card(i, m, &silences))
        .collect();
    let mut groups: Vec<AlertGroup> = groups.into_values().collect();
    groups.sort_by(|a, b| {
        rank(a.escalation_class)
            .cmp(&rank(b.escalation_class))
            .then(b.firing.cmp(&a.firing))
            .then(a.signal.cmp(&b.signal))
    });

    let mut conditions = Vec::new();
    for s in i.sources.iter().filter(|s| s.state == SourceState::Down) {
        let e = entry_for_signal(i.model, SOURCE_DOWN_SIGNAL);
        conditions.push(Condition {
            id: format!("alert-source-down.{}", s.name),
            kind: ConditionKind::Alert,
            title: format!(
                "Alert source {} is down: what you see may be incomplete",
                s.name
            ),
            escalation_class: e.map_or(EscalationClass::Urgent, |e| e.escalation_class),
            remediation_mode: e.map_or(RemediationMode::Manual, |e| e.remediation_mode),
            runbook: e.map_or_else(
                || format!("unmapped.{SOURCE_DOWN_SIGNAL}"),
                |e| e.id.clone(),
            ),
            since: s.down_since.clone(),
            env: Some(i.env.to_owned()),
            site: None,
            tenant: None,
            resource: Some(s.url.clone()),
            task_id: None,
            correlation_id: None,
            detail: Some(format!(
                "{}; {}",
                s.error.as_deref().unwrap_or("not answering"),
                match &s.last_success_at {
                    Some(t) => format!(
                        "its last good answer ({t}, {} alert(s)) is shown, marked stale",
                        s.alerts.len()
                    ),
                    None => "it has never answered".to_owned(),
                }
            )),
            owner: e.map(|e| e.owner_team.clone()),
            governance_gap: e.is_none(),
            changes: Vec::new(),
        });
    }
    for c in &firing_cards {
        let mut detail = Vec::new();
        if let Some(s) = &c.summary {
            detail.push(s.clone());
        }
        detail.push(format!("seen by {}", c.sources.join(", ")));
        if c.stale {
            detail.push("stale: every source that reported it is down".into());
        }
        if c.governance_gap {
            detail.push("governance gap: no runbook in the catalog for this alert".into());
        }
        conditions.push(Condition {
            id: format!("alert.{}", c.fingerprint),
            kind: ConditionKind::Alert,
            title: format!(
                "{}{}",
                c.name,
                [&c.tenant, &c.service, &c.site, &c.node]
                    .iter()
                    .filter_map(|x| x.as_deref())
                    .map(|x| format!(" {x}"))
                    .collect::<String>()
            ),
            escalation_class: c.escalation_class,
            remediation_mode: c.remediation_mode,
            runbook: c.runbook.clone(),
            since: Some(c.starts_at.clone()),
            env: Some(i.env.to_owned()),
            site: c.site.clone(),
            tenant: c.tenant.clone(),
            resource: c.node.as_ref().map(|n| format!("node:{n}")),
            task_id: None,
            correlation_id: None,
            detail: Some(detail.join(" · ")),
            owner: c.owner.clone(),
            governance_gap: c.governance_gap,
            changes: c.changes.clone(),
        });
    }
    let further = if groups.len() > MAX_ALERT_GROUPS {
        groups.split_off(MAX_ALERT_GROUPS)
    } else {
        Vec::new()
    };
    for g in groups.iter().filter(|g| g.unlisted > 0) {
        let e = entry_by_id(i.model, &g.runbook);
        conditions.push(Condition {
            id: format!("alert-group.{}.{}", g.signal, g.runbook),
            kind: ConditionKind::Alert,
            title: format!(
                "{} more firing alert(s) of {} (not listed one by one)",
                g.unlisted, g.signal
            ),
            escalation_class: g.escalation_class,
            remediation_mode: e.map_or(RemediationMode::Manual, |e| e.remediation_mode),
            runbook: g.runbook.clone(),
            since: None,
            env: Some(i.env.to_owned()),
            site: None,
            tenant: None,
            resource: None,
            task_id: None,
            correlation_id: None,
            detail: Some(format!(
                "{} firing in this group in total; see the alert groups",
                g.firing
            )),
            owner: e.map(|e| e.owner_team.clone()),
            governance_gap: e.is_none(),
            changes: Vec::new(),
        });
    }
    let (n, unlisted) = further
        .iter()
        .filter(|g| g.unlisted > 0)
        .fold((0u32, 0u32), |(n, u), g| (n + 1, u + g.unlisted));
    // The further groups are sorted most urgent first: the first one names the runbook.
    if let Some(first) = further.iter().find(|g| g.unlisted > 0) {
        conditions.push(Condition {
            id: "alert-group.further".to_owned(),
            kind: ConditionKind::Alert,
            title: format!("{unlisted} more firing alert(s) in {n} further group(s)"),
            escalation_class: first.escalation_class,
            remediation_mode: RemediationMode::Manual,
            runbook: first.runbook.clone(),
            since: None,
            env: Some(i.env.to_owned()),
            site: None,
            tenant: None,
            resource: None,
            task_id: None,
            correlation_id: None,
            detail: Some(format!(
                "only the {MAX_ALERT_GROUPS} most urgent groups are listed; the most urgent of the \
                 rest is {} (runbook {}); query Alertmanager for them all",
                first.signal, first.runbook
            )),
            owner: None,
            governance_gap: entry_by_id(i.model, &first.runbook).is_none(),
            changes: Vec::new(),
        });
    }
    let view = AlertsView {
        sources: i.sources.iter().map(Source::status).collect(),
        firing: firing_cards,
        silenced: silenced_cards,
        groups,
        firing_total: firing.len() as u32,
        silenced_total: muted.len() as u32,
    };
    (view, conditions)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn model() -> Model {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap()
            .to_path_buf();
        let files = opsrepo::source::read_work_tree(&root).unwrap();
        opsrepo::load::build_view(&opsrepo::load::parse_all(&files), Some("dev")).0
    }

    fn alert(labels: serde_json::Value, state: &str, silenced: &[&str]) -> AmAlert {
        serde_json::from_value(json!({
            "labels": labels,
            "annotations": {"summary": "it broke"},
            "startsAt": "2026-11-22T10:00:00Z",
            "endsAt": "2026-11-22T11:00:00Z",
            "fingerprint": format!("fp{}", labels.to_string().len()),
            "status": {"state": state, "silencedBy": silenced, "inhibitedBy": []},
            "receivers": [{"name": "x"}],
            "updatedAt": "2026-11-22T10:00:00Z"
        }))
        .unwrap()
    }

    fn source(name: &str, state: SourceState, alerts: Vec<AmAlert>) -> Source {
        let mut s = Source::from_urls(&[format!("http://{name}")]).remove(0);
        s.state = state;
        s.alerts = alerts;
        s
    }

    fn at(s: &str) -> OffsetDateTime {
        OffsetDateTime::parse(s, &Rfc3339).unwrap()
    }

    fn event(id: &str, time: &str, action: &str, target: Option<&str>) -> AuditEvent {
        let mut e = AuditEvent::new(id, "dev", "reconciler:test", action, "applied");
        e.time = time.to_owned();
        e.target = target.map(str::to_owned);
        e.plan_id = Some("plan-0123456789ab".into());
        e.commit = Some("c0ffee".into());
        e
    }

    #[test]
    fn the_same_alert_from_two_sources_is_one_card_tagged_with_both() {
        let l = json!({"alertname": "X", "tenant": "polar-retail"});
        let a = source(
            "am1:1",
            SourceState::Live,
            vec![alert(l.clone(), "active", &[])],
        );
        let b = source("am2:2", SourceState::Live, vec![alert(l, "active", &[])]);
        let merged = merge(
            std::slice::from_ref(&a)
                .iter()
                .chain([&b])
                .cloned()
                .collect::<Vec<_>>()
                .as_slice(),
        )
        .into_iter()
        .map(|m| (m.sources, m.stale))
        .collect::<Vec<_>>();
        assert_eq!(
            merged,
            vec![(vec!["am1:1".to_owned(), "am2:2".to_owned()], false)]
        );
    }

    #[test]
    fn firing_anywhere_wins_and_stale_only_when_every_source_is_down() {
        let l = json!({"alertname": "X"});
        let srcs = vec![
            source(
                "a:1",
                SourceState::Down,
                vec![alert(l.clone(), "active", &[])],
            ),
            source(
                "b:1",
                SourceState::Live,
                vec![alert(l.clone(), "suppressed", &["s1"])],
            ),
        ];
        let m = merge(&srcs);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].state, AlertState::Firing);
        assert!(!m[0].stale);
        let srcs = vec![source(
            "a:1",
            SourceState::Down,
            vec![alert(l, "suppressed", &["s1"])],
        )];
        let m = merge(&srcs);
        assert_eq!(m[0].state, AlertState::Silenced);
        assert!(m[0].stale);
    }

    #[test]
    fn runbook_from_id_then_signal_else_a_governance_gap() {
        let m = model();
        let by_id = alert(
            json!({"alertname": "A", "runbook_id": "ops.vakt.node-unhealthy"}),
            "active",
            &[],
        );
        let r = resolve(&m, &by_id);
        assert_eq!(r.runbook, "ops.vakt.node-unhealthy");
        assert_eq!(r.escalation_class, EscalationClass::Urgent);
        assert_eq!(r.owner.as_deref(), Some("platform-runtime"));
        assert!(r.gap.is_none());
        let mut ann = alert(json!({"alertname": "A"}), "active", &[]);
        ann.annotations
            .insert("runbook_id".into(), "ops.vakt.backup-stale".into());
        assert_eq!(resolve(&m, &ann).runbook, "ops.vakt.backup-stale");
        let by_signal = alert(
            json!({"alertname": "B", "signal": "vakt_drift_detected"}),
            "active",
            &[],
        );
        assert_eq!(resolve(&m, &by_signal).runbook, "ops.vakt.drift");
        let gap = alert(
            json!({"alertname": "C", "severity": "critical"}),
            "active",
            &[],
        );
        let r = resolve(&m, &gap);
        assert!(r.gap.is_some());
        assert_eq!(r.runbook, "unmapped.C");
        assert_eq!(r.escalation_class, EscalationClass::Urgent);
        let unknown = alert(
            json!({"alertname": "D", "runbook_id": "ops.nope"}),
            "active",
            &[],
        );
        assert!(resolve(&m, &unknown).gap.unwrap().contains("ops.nope"));
    }

    #[test]
    fn related_changes_are_in_the_window_on_the_same_scope_and_collapsed_per_plan() {
        let events = vec![
            event(
                "e1",
                "2026-11-22T09:00:00Z",
                "kv.put",
                Some("vakt_dev_config/tenant.polar-retail.limits"),
            ),
            event(
                "e2",
                "2026-11-22T09:00:01Z",
                "kv.put",
                Some("vakt_dev_config/tenant.polar-retail.flags"),
            ),
            event(
                "e3",
                "2026-11-22T09:30:00Z",
                "kv.put",
                Some("vakt_dev_config/tenant.other.flags"),
            ),
            event(
                "e4",
                "2026-11-22T07:00:00Z",
                "kv.put",
                Some("vakt_dev_config/tenant.polar-retail.old"),
            ),
            event(
                "e5",
                "2026-11-22T10:30:00Z",
                "kv.put",
                Some("vakt_dev_config/tenant.polar-retail.after"),
            ),
            event("e6", "2026-11-22T09:10:00Z", "apply.started", None),
            event(
                "e7",
                "2026-11-22T09:20:00Z",
                "kv.heal",
                Some("vakt_dev_inventory/node.agg-osl1-01"),
            ),
        ];
        let ch = changes(&events);
        let scope = Scope {
            tenant: Some("polar-retail".into()),
            node: Some("agg-osl1-01".into()),
            ..Scope::default()
        };
        let r = related(
            &ch,
            &scope,
            at("2026-11-22T10:00:00Z"),
            Duration::from_secs(7200),
        );
        let got: Vec<(&str, u32, &str)> = r
            .iter()
            .map(|c| (c.event_id.as_str(), c.events, c.matched.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("e7", 1, "node:agg-osl1-01"),
                ("e2", 2, "tenant:polar-retail")
            ]
        );
        assert_eq!(r[1].commit.as_deref(), Some("c0ffee"));
        assert!(
            related(
                &ch,
                &Scope::default(),
                at("2026-11-22T10:00:00Z"),
                Duration::from_secs(7200)
            )
            .is_empty()
        );
    }

    #[test]
    fn ten_thousand_alerts_stay_bounded_grouped_and_most_urgent_first() {
        let m = model();
        let mut list = Vec::new();
        for i in 0..10_000 {
            let (name, rb) = if i % 10 == 0 {
                ("NodeDown", "ops.vakt.node-unhealthy")
            } else {
                ("Drift", "ops.vakt.drift")
            };
            let mut a = alert(
                json!({"alertname": name, "runbook_id": rb, "i": i.to_string()}),
                "active",
                &[],
            );
            a.fingerprint = format!("{i:016x}");
            list.push(a);
        }
        for i in 0..300 {
            let mut a = alert(
                json!({"alertname": "Muted", "i": i.to_string()}),
                "suppressed",
                &["s1"],
            );
            a.fingerprint = format!("m{i}");
            list.push(a);
        }
        let srcs = vec![source("am:1", SourceState::Live, list)];
        let t0 = std::time::Instant::now();
        let (v, conds) = build(&ViewInputs {
            model: &m,
            env: "dev",
            sources: &srcs,
            changes: &[],
            window: Duration::from_secs(7200),
            now: at("2026-11-22T10:05:00Z"),
        });
        assert!(t0.elapsed() < Duration::from_secs(5));
        assert_eq!(v.firing_total, 10_000);
        assert_eq!(v.silenced_total, 300);
        assert_eq!(v.firing.len(), MAX_ALERT_CARDS);
        assert_eq!(v.silenced.len(), MAX_SILENCED_CARDS);
        assert!(
            v.firing
                .iter()
                .all(|c| c.escalation_class == EscalationClass::Urgent)
        );
        assert_eq!(v.groups[0].runbook, "ops.vakt.node-unhealthy");
        assert_eq!(v.groups[0].firing, 1000);
        assert_eq!(v.groups[0].unlisted, 900);
        assert!(conds.len() <= MAX_ALERT_CARDS + MAX_ALERT_GROUPS + 1);
        assert!(
            conds
                .iter()
                .any(|c| c.id.starts_with("alert-group.") && c.title.starts_with("9000 more"))
        );
        let size = serde_json::to_vec(&v).unwrap().len();
        assert!(size < 1 << 20, "{size} bytes");
    }

    #[test]
    fn a_down_source_is_an_urgent_condition_with_its_runbook_and_stale_cards() {
        let m = model();
        let mut s = source(
            "am:1",
            SourceState::Down,
            vec![alert(json!({"alertname": "X"}), "active", &[])],
        );
        s.error = Some("failed to connect".into());
        s.last_success_at = Some("2026-11-22T10:00:00Z".into());
        let (v, conds) = build(&ViewInputs {
            model: &m,
            env: "dev",
            sources: &[s],
            changes: &[],
            window: Duration::from_secs(7200),
            now: at("2026-11-22T10:05:00Z"),
        });
        let c = conds
            .iter()
            .find(|c| c.id == "alert-source-down.am:1")
            .unwrap();
        assert_eq!(c.escalation_class, EscalationClass::Urgent);
        assert_eq!(c.runbook, "ops.vakt.alert-source-down");
        assert!(c.title.contains("may be incomplete"));
        assert!(v.firing[0].stale);
        assert!(v.firing[0].governance_gap);
    }

    #[test]
    fn huge_labels_are_truncated_and_resolved_alerts_dropped() {
        let mut labels = serde_json::Map::new();
        labels.insert(
            "alertname".into(),
            json!("<script>alert(1)</script>".repeat(100)),
        );
        for i in 0..100 {
            labels.insert(format!("l{i:03}"), json!("v"));
        }
        let a = alert(serde_json::Value::Object(labels), "active", &[]);
        let m = model();
        let srcs = vec![source("am:1", SourceState::Live, vec![a.clone()])];
        let (v, _) = build(&ViewInputs {
            model: &m,
            env: "dev",
            sources: &srcs,
            changes: &[],
            window: Duration::from_secs(60),
            now: at("2026-11-22T10:05:00Z"),
        });
        assert_eq!(v.firing[0].labels.len(), MAX_LABELS);
        assert!(v.firing[0].name.chars().count() <= MAX_LABEL_VALUE + 1);
        assert!(resolved(&a, at("2026-11-22T11:00:01Z")));
        assert!(!resolved(&a, at("2026-11-22T10:59:59Z")));
    }

    #[test]
    fn source_names_are_host_and_port_unless_ambiguous() {
        let s = Source::from_urls(&["http://a:9093/".into(), "http://b:9093".into()]);
        assert_eq!(
            (s[0].name.as_str(), s[0].url.as_str()),
            ("a:9093", "http://a:9093")
        );
        let s = Source::from_urls(&["http://a:9093/x".into(), "http://a:9093/y".into()]);
        assert_eq!(s[0].name, "http://a:9093/x");
    }
}
