//! `vakt status` and `vakt events`: clients of the daemon's operator API.

use serde_json::Value;

use reconciler::daemon::client::{ApiClient, ClientError};

use super::env;
use crate::fail::{Exit, Fail};
use crate::output::Format;
use crate::{exit, output};

/// Where the operator API is and who calls it.
#[derive(Debug, Clone, clap::Args)]
pub struct ApiArgs {
    /// Base URL of a `vakt reconcile --listen` daemon.
    #[arg(long, env = "VAKT_API", value_name = "URL")]
    pub api: String,
    /// Bearer token (from the daemon's --api-tokens file).
    #[arg(long, env = "VAKT_TOKEN", value_name = "TOKEN", hide_env_values = true)]
    pub token: String,
}

/// The decision header of one environment: what runs, what failed, what waits for a human.
///
/// It also says what the platform is remediating automatically.
///
/// With alert sources (`vakt reconcile --alertmanager`), it also lists which sources are live,
/// every firing alert with its runbook and the vakt changes that preceded it ("changed before"),
/// and the silenced or inhibited alerts with who silenced them, until when and why.
///
/// The first line is the ops metrics source mode: `backend` (durable 24 h totals from
/// `vakt reconcile --metrics-backend`) or `in_memory` (the daemon's own counters since it
/// started), with a banner, the error and the runbook when the backend fails.
///
/// Exit status: 0 nothing needs a human, 1 something does (failed work, pending approvals,
/// action-required or urgent conditions, an alert source down, a degraded metrics backend), 3 could not reach the API,
/// 4 refused (token/role).
///
/// Examples:
///   vakt status --api http://127.0.0.1:9464 --token "$VAKT_TOKEN"
///   vakt status --format json | jq '.live.decision'
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct StatusOpts {
    #[command(flatten)]
    pub api: ApiArgs,
    #[arg(long, default_value = "human", value_parser = Format::only(output::HUMAN_JSON))]
    pub format: Format,
}

/// Audit events of the environment, oldest first.
///
/// Filter them by correlation id, causation id, resource, task (job) id or site. Denied API
/// requests (`api.denied`, aggregated per client and reason) are left out unless asked for:
/// they are noise next to what operators and the reconciler did.
///
/// Examples:
///   vakt events --correlation-id plan-54e85d52b4f5
///   vakt events --task-id job-3f2a9c1b7d4e --format json
///   vakt events --include-denials --limit 50      # who is knocking
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct EventsOpts {
    #[command(flatten)]
    pub api: ApiArgs,
    #[arg(long)]
    pub correlation_id: Option<String>,
    #[arg(long)]
    pub causation_id: Option<String>,
    /// Substring of the target (bucket/key).
    #[arg(long)]
    pub resource: Option<String>,
    #[arg(long)]
    pub task_id: Option<String>,
    #[arg(long)]
    pub site: Option<String>,
    #[arg(long, default_value_t = 200)]
    pub limit: usize,
    /// Include denied API requests (`api.denied` events).
    #[arg(long)]
    pub include_denials: bool,
    #[arg(long, default_value = "human", value_parser = Format::only(output::HUMAN_JSON))]
    pub format: Format,
}

/// `--api` and `--token` for commands that can go through the operator API instead of NATS.
#[derive(Debug, Clone, clap::Args)]
pub struct OptApi {
    /// Go through the operator API of this daemon (token auth, RBAC, audited) instead of
    /// talking to NATS directly.
    #[arg(long = "api", env = "VAKT_API", value_name = "URL")]
    pub api: Option<String>,
    /// Bearer token for --api.
    #[arg(
        long = "token",
        env = "VAKT_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true,
        requires = "api"
    )]
    pub token: Option<String>,
}

impl OptApi {
    pub fn args(&self) -> Option<ApiArgs> {
        Some(ApiArgs {
            api: self.api.clone()?,
            token: self.token.clone().unwrap_or_default(),
        })
    }
}

impl ApiArgs {
    /// Runs `f` with a client of this daemon's API; its failure is the command's.
    pub fn call<T>(
        &self,
        f: impl AsyncFnOnce(&ApiClient) -> Result<T, ClientError>,
    ) -> Result<T, Fail> {
        let client = ApiClient::new(&self.api, &self.token);
        Ok(env::runtime().block_on(f(&client))?)
    }
}

pub fn status(o: StatusOpts) -> Exit {
    let v = o.api.call(async |c| c.status().await)?;
    match o.format {
        Format::Json => Format::print_json(&v),
        _ => output::print(&render_status(&v)),
    }
    Ok(if needs_human(&v) {
        exit::FINDINGS
    } else {
        exit::OK
    })
}

/// Something waits for a human: failed work, a pending approval, a condition that is not
/// informational, a refused or failed environment, or an alert source that is not live.
fn needs_human(v: &Value) -> bool {
    let live = &v["live"];
    let nonempty = |x: &Value| x.as_array().is_some_and(|a| !a.is_empty());
    nonempty(&v["jobs"]["failed"])
        || nonempty(&v["pending_approvals"])
        || live["conditions"]
            .as_array()
            .is_some_and(|cs| cs.iter().any(|c| c["escalation_class"] != "informational"))
        || v["state"] == "refused"
        || v["state"] == "failed"
        || live["alerts"]["sources"]
            .as_array()
            .is_some_and(|s| s.iter().any(|x| x["state"] != "live"))
}

/// The decision header of `vakt status` from the API's status document.
fn render_status(v: &Value) -> String {
    let live = &v["live"];
    let conditions = live["conditions"].as_array().cloned().unwrap_or_default();
    let failed = v["jobs"]["failed"].as_array().cloned().unwrap_or_default();
    let pending = v["pending_approvals"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut s = metrics_line(&live["metrics_source"]);
    s.push_str(&format!(
        "{}: {}\n",
        live["decision"]["level"]
            .as_str()
            .unwrap_or("unknown")
            .to_uppercase(),
        live["decision"]["headline"]
            .as_str()
            .unwrap_or("(no live data yet)")
    ));
    s.push_str(&format!(
        "env {} · state {} · applied {} · leader {}\n",
        v["env"].as_str().unwrap_or("?"),
        v["state"].as_str().unwrap_or("?"),
        v["applied_commit"]
            .as_str()
            .map(|c| &c[..c.len().min(12)])
            .unwrap_or("-"),
        v["leader"].as_str().unwrap_or("-")
    ));
    s.push_str(&alert_lines(&live["alerts"]));
    let running = v["jobs"]["running"].as_array().cloned().unwrap_or_default();
    s.push_str(&format!(
        "\nRunning: {}\n",
        if running.is_empty() {
            "nothing".into()
        } else {
            list(&running)
        }
    ));
    s.push_str(&format!(
        "Failed: {}\n",
        if failed.is_empty() {
            "nothing".into()
        } else {
            list(&failed)
        }
    ));
    if let Some(r) = v["refused"].as_object() {
        s.push_str(&format!(
            "Refused commit: {}\n",
            r.get("reason").and_then(Value::as_str).unwrap_or("")
        ));
    }
    s.push_str("\nWaits for a human:\n");
    let mut any = false;
    for a in &pending {
        any = true;
        s.push_str(&format!(
            "  approve or reject {} ({})\n",
            a["plan_id"].as_str().unwrap_or(""),
            a["actions"]
        ));
    }
    for c in conditions
        .iter()
        .filter(|c| c["remediation_mode"] != "automatic")
    {
        any = true;
        s.push_str(&format!(
            "  [{}] {} → runbook {}{}\n",
            c["escalation_class"].as_str().unwrap_or(""),
            c["title"].as_str().unwrap_or(""),
            c["runbook"].as_str().unwrap_or(""),
            if c["governance_gap"] == true {
                " (governance gap: not in the catalog)"
            } else {
                ""
            }
        ));
        s.push_str(&change_lines(c));
    }
    if !any {
        s.push_str("  nothing\n");
    }
    s.push_str("Automatic (the platform is remediating):\n");
    let auto: Vec<&Value> = conditions
        .iter()
        .filter(|c| c["remediation_mode"] == "automatic")
        .collect();
    if auto.is_empty() {
        s.push_str("  nothing\n");
    }
    for c in auto {
        s.push_str(&format!(
            "  {} → runbook {}\n",
            c["title"].as_str().unwrap_or(""),
            c["runbook"].as_str().unwrap_or("")
        ));
        s.push_str(&change_lines(c));
    }
    s
}

/// The ops metrics source mode, first: where the figures come from, and the fallback banner
/// when the backend fails.
fn metrics_line(m: &Value) -> String {
    let Some(mode) = m["mode"].as_str() else {
        return String::new();
    };
    let host = m["backend_host"].as_str().unwrap_or("");
    let figures = |source: &str| -> String {
        let parts: Vec<String> = m["figures"]
            .as_array()
            .map(|v| v.as_slice())
            .unwrap_or_default()
            .iter()
            .filter(|f| f["source"] == source && f["metric"] == "reconcile_steps")
            .map(|f| {
                format!(
                    "{} {}",
                    f["label"].as_str().unwrap_or("?"),
                    f["value"].as_f64().unwrap_or(0.0).round()
                )
            })
            .collect();
        parts.join(", ")
    };
    let local = format!(
        "in-process since {}: {}",
        m["in_memory_since"].as_str().unwrap_or("start"),
        figures("in_memory")
    );
    let mut s = if m["degraded"] == true {
        format!(
            "metrics: IN_MEMORY (DEGRADED) · metrics backend unreachable: showing in-process counters since the daemon started\n  backend {host} failing since {}: {}\n  {local}\n  runbook {}\n",
            m["degraded_since"].as_str().unwrap_or("?"),
            m["error"].as_str().unwrap_or("?"),
            m["runbook"].as_str().unwrap_or("")
        )
    } else if mode == "backend" {
        format!(
            "metrics: backend {host} · 24h: {} · checked {}\n  {local}\n",
            figures("backend"),
            m["checked_at"].as_str().unwrap_or("?")
        )
    } else if m["configured_mode"] == "backend" {
        format!("metrics: in_memory (backend {host} not queried yet) · {local}\n")
    } else {
        format!("metrics: in_memory (no --metrics-backend) · {local}\n")
    };
    if m["degraded"] == true {
        let stale = figures("backend");
        if !stale.is_empty() {
            s.push_str(&format!(
                "  last good 24h totals (stale, from {}): {stale}\n",
                m["last_success_at"].as_str().unwrap_or("?")
            ));
        }
    }
    s
}

/// Alert sources, counts and the silenced list of the live `alerts` view.
fn alert_lines(a: &Value) -> String {
    let Some(sources) = a["sources"].as_array().filter(|s| !s.is_empty()) else {
        return String::new();
    };
    let mut s = String::from("alert sources: ");
    let parts: Vec<String> = sources
        .iter()
        .map(|x| {
            let name = x["name"].as_str().unwrap_or("?");
            match x["state"].as_str() {
                Some("live") => format!("{name} live"),
                Some(st) => format!(
                    "{name} {} ({})",
                    st.to_uppercase(),
                    x["error"].as_str().unwrap_or("not polled yet")
                ),
                None => format!("{name} ?"),
            }
        })
        .collect();
    s.push_str(&parts.join(" · "));
    s.push_str(&format!(
        "\nalerts: {} firing, {} silenced or inhibited\n",
        a["firing_total"].as_u64().unwrap_or(0),
        a["silenced_total"].as_u64().unwrap_or(0)
    ));
    let silenced = a["silenced"].as_array().cloned().unwrap_or_default();
    if !silenced.is_empty() {
        s.push_str("Silenced or inhibited (not in action required):\n");
        for c in &silenced {
            let by: Vec<String> = c["silenced_by"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|x| {
                    format!(
                        "silenced by {} until {}: {}",
                        x["created_by"].as_str().unwrap_or("?"),
                        x["ends_at"].as_str().unwrap_or("?"),
                        x["comment"].as_str().unwrap_or("")
                    )
                })
                .collect();
            s.push_str(&format!(
                "  {} [{}] {}\n",
                c["name"].as_str().unwrap_or(""),
                c["state"].as_str().unwrap_or(""),
                if by.is_empty() {
                    "inhibited by another alert".to_owned()
                } else {
                    by.join("; ")
                }
            ));
        }
    }
    s
}

/// "What changed?" lines under a condition.
fn change_lines(c: &Value) -> String {
    let mut s = String::new();
    for ch in c["changes"].as_array().cloned().unwrap_or_default() {
        s.push_str(&format!(
            "      changed before: {} {} by {}{}{}{} ({})\n",
            ch["at"].as_str().unwrap_or(""),
            ch["action"].as_str().unwrap_or(""),
            ch["actor"].as_str().unwrap_or(""),
            ch["commit"]
                .as_str()
                .map(|x| format!(" commit {}", x.chars().take(12).collect::<String>()))
                .unwrap_or_default(),
            ch["plan_id"]
                .as_str()
                .map(|x| format!(" plan {x}"))
                .unwrap_or_default(),
            ch["target"]
                .as_str()
                .map(|x| format!(" {x}"))
                .unwrap_or_default(),
            ch["matched"].as_str().unwrap_or("")
        ));
    }
    s
}

fn list(v: &[Value]) -> String {
    v.iter()
        .filter_map(Value::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn events(o: EventsOpts) -> Exit {
    let mut q: Vec<(&str, String)> = vec![("limit", o.limit.to_string())];
    if o.include_denials {
        q.push(("include_denials", "true".into()));
    }
    for (k, v) in [
        ("correlation_id", &o.correlation_id),
        ("causation_id", &o.causation_id),
        ("resource", &o.resource),
        ("task_id", &o.task_id),
        ("site", &o.site),
    ] {
        if let Some(v) = v {
            q.push((k, v.clone()));
        }
    }
    let v = Value::Array(o.api.call(async |c| c.events(&q).await)?);
    match o.format {
        Format::Json => Format::print_json(&v),
        _ => {
            let mut s = String::new();
            for e in v.as_array().cloned().unwrap_or_default() {
                s.push_str(&format!(
                    "{}  {:<22} {:<9} {}{}{}\n",
                    e["time"].as_str().unwrap_or(""),
                    e["action"].as_str().unwrap_or(""),
                    e["outcome"].as_str().unwrap_or(""),
                    e["actor"].as_str().unwrap_or(""),
                    e["target"]
                        .as_str()
                        .map(|t| format!(" {t}"))
                        .unwrap_or_default(),
                    e["reason"]
                        .as_str()
                        .map(|r| format!(": {r}"))
                        .unwrap_or_default()
                ));
            }
            if s.is_empty() {
                s.push_str("No events match.\n");
            }
            output::print(&s);
        }
    }
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc() -> Value {
        json!({
            "env": "prod",
            "state": "waiting-approval",
            "applied_commit": "0123456789abcdef0123456789abcdef01234567",
            "leader": "osl1-a",
            "jobs": {"running": ["job-aaaaaaaaaaaa"], "failed": []},
            "pending_approvals": [{"plan_id": "plan-bbbbbbbbbbbb", "actions": ["access-change"]}],
            "live": {
                "decision": {"level": "action", "headline": "1 approval waits; 1 alert firing"},
                "alerts": {"sources": [{"name": "am-1:9093", "state": "live"},
                                       {"name": "am-2:9093", "state": "down", "error": "connection refused"}],
                           "firing_total": 1, "silenced_total": 1,
                           "silenced": [{"name": "DiskFillingUp", "state": "suppressed",
                                         "silenced_by": [{"created_by": "ola", "ends_at": "2026-11-29T06:00:00Z",
                                                          "comment": "disk swap in progress"}]}]},
                "conditions": [
                    {"escalation_class": "urgent", "remediation_mode": "manual",
                     "title": "OutboxBacklogHigh on gw-osl1-1", "runbook": "ops.outbox.relay",
                     "changes": [{"action": "kv.put", "commit": "fedcba9876543210", "actor": "user:kari",
                                  "plan_id": "plan-cccccccccccc", "at": "2026-11-29T02:59:00Z",
                                  "target": "vakt_prod_config/tenant.fjord-logistics.tenant",
                                  "matched": "tenant fjord-logistics"}]},
                    {"escalation_class": "informational", "remediation_mode": "automatic",
                     "title": "Drift healed on config/global.platform", "runbook": "ops.vakt.drift"}
                ]
            }
        })
    }

    #[test]
    fn the_status_header_says_what_waits_for_a_human() {
        let v = doc();
        assert!(needs_human(&v));
        insta::assert_snapshot!("status_human", render_status(&v));
        let quiet = json!({"state": "in-sync", "jobs": {}, "live": {"conditions": [
            {"escalation_class": "informational", "remediation_mode": "automatic"}]}});
        assert!(!needs_human(&quiet));
        let mut down = quiet.clone();
        down["live"]["alerts"] = json!({"sources": [{"state": "down"}]});
        assert!(
            needs_human(&down),
            "a source that is down is never all clear"
        );
    }
}
