//! `vakt jobs`.

use clap::Subcommand;
use reconciler::ops::jobs::{self, Job, JobState};

use super::env::{self, EnvArgs};
use crate::fail::Exit;
use crate::output::Format;
use crate::{exit, output};

/// Inspect and steer jobs: tenant migrations created from placement moves.
///
/// Jobs live in the environment's `jobs` bucket; the reconcile daemon's leader runs them and any
/// replica resumes one whose owner died. Retry and cancel are audited with the reason given.
///
/// Examples:
///   vakt jobs list --env prod --state failed
///   vakt jobs show job-3f2a9c1b7d4e --env prod
///   vakt jobs retry job-3f2a9c1b7d4e --env prod --reason "node agg-osl1-02 back"
///   vakt jobs cancel job-3f2a9c1b7d4e --env prod --reason "wrong target shard"
///   vakt jobs dead-letters --env prod
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct JobsOpts {
    #[command(subcommand)]
    pub cmd: JobsCmd,
}

#[derive(Debug, Subcommand)]
pub enum JobsCmd {
    /// List jobs, newest first.
    List {
        #[command(flatten)]
        target: EnvArgs,
        #[command(flatten)]
        via: super::api::OptApi,
        /// Only jobs in this state (queued, running, succeeded, failed, retrying, cancelled,
        /// dead-lettered).
        #[arg(long)]
        state: Option<String>,
        /// Only jobs for this tenant.
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long, default_value = "human", value_parser = Format::only(output::HUMAN_JSON))]
        format: Format,
    },
    /// Show one job with its steps.
    Show {
        id: String,
        #[command(flatten)]
        target: EnvArgs,
        #[command(flatten)]
        via: super::api::OptApi,
        #[arg(long, default_value = "human", value_parser = Format::only(output::HUMAN_JSON))]
        format: Format,
    },
    /// Queue a failed, retrying or dead-lettered job again.
    Retry {
        id: String,
        #[command(flatten)]
        target: EnvArgs,
        #[command(flatten)]
        via: super::api::OptApi,
        #[arg(long)]
        reason: String,
        #[arg(long)]
        actor: Option<String>,
    },
    /// Cancel a queued or running job (refused once it wrote the placement).
    Cancel {
        id: String,
        #[command(flatten)]
        target: EnvArgs,
        #[command(flatten)]
        via: super::api::OptApi,
        #[arg(long)]
        reason: String,
        #[arg(long)]
        actor: Option<String>,
    },
    /// Queue a node drain: every tenant the node serves drains, time-boxed (placement is not
    /// changed; move tenants with a Git change).
    DrainNode {
        node: String,
        #[command(flatten)]
        target: EnvArgs,
        #[command(flatten)]
        via: super::api::OptApi,
        #[arg(long)]
        reason: String,
        #[arg(long)]
        actor: Option<String>,
    },
    /// List dead-lettered jobs (out of attempts).
    DeadLetters {
        #[command(flatten)]
        target: EnvArgs,
        #[command(flatten)]
        via: super::api::OptApi,
        #[arg(long, default_value = "human", value_parser = Format::only(output::HUMAN_JSON))]
        format: Format,
    },
}

fn line(j: &Job) -> String {
    format!(
        "{}  {:<13} {} {}: {} → {}  attempts {}/{}{}\n",
        j.id,
        j.state.as_str(),
        j.kind,
        j.migration.tenant,
        j.migration.from_shard,
        j.migration.to_shard,
        j.attempts,
        j.max_attempts,
        j.error
            .as_ref()
            .map(|e| format!("  ({e})"))
            .unwrap_or_default()
    )
}

fn print_list(list: &[Job], format: Format) {
    match format {
        Format::Json => output::print(&format!(
            "{}\n",
            serde_json::to_string_pretty(list).unwrap_or_default()
        )),
        _ => {
            if list.is_empty() {
                output::print("No jobs.\n");
            }
            for j in list {
                output::print(&line(j));
            }
        }
    }
}

/// The same operations through the operator API.
fn via_api(a: &super::api::ApiArgs, cmd: &JobsCmd) -> Exit {
    let (jobs, format): (Vec<Job>, Format) = match cmd {
        JobsCmd::List {
            state,
            tenant,
            format,
            ..
        } => {
            let mut q = Vec::new();
            if let Some(s) = state {
                q.push(("state", s.clone()));
            }
            if let Some(t) = tenant {
                q.push(("tenant", t.clone()));
            }
            (a.call(async |c| c.jobs(&q).await)?, *format)
        }
        JobsCmd::DeadLetters { format, .. } => (a.call(async |c| c.dead_letters().await)?, *format),
        JobsCmd::Show { id, format, .. } => (vec![a.call(async |c| c.job(id).await)?], *format),
        JobsCmd::Retry { id, reason, .. } => (
            vec![a.call(async |c| c.retry(id, reason).await)?],
            Format::Human,
        ),
        JobsCmd::Cancel { id, reason, .. } => (
            vec![a.call(async |c| c.cancel(id, reason).await)?],
            Format::Human,
        ),
        JobsCmd::DrainNode { node, reason, .. } => (
            vec![a.call(async |c| c.drain_node(node, reason).await)?],
            Format::Human,
        ),
    };
    let single = !matches!(cmd, JobsCmd::List { .. } | JobsCmd::DeadLetters { .. });
    match (format, single) {
        (Format::Json, true) => Format::print_json(&jobs[0]),
        (Format::Json, false) => Format::print_json(&jobs),
        (_, true) => output::print(&line(&jobs[0])),
        (_, false) => print_list(&jobs, Format::Human),
    }
    Ok(exit::OK)
}

pub fn run(o: JobsOpts) -> Exit {
    let via = match &o.cmd {
        JobsCmd::List { via, .. }
        | JobsCmd::Show { via, .. }
        | JobsCmd::Retry { via, .. }
        | JobsCmd::Cancel { via, .. }
        | JobsCmd::DrainNode { via, .. }
        | JobsCmd::DeadLetters { via, .. } => via.args(),
    };
    if let Some(a) = via {
        return via_api(&a, &o.cmd);
    }
    let target_args = match &o.cmd {
        JobsCmd::List { target, .. }
        | JobsCmd::Show { target, .. }
        | JobsCmd::Retry { target, .. }
        | JobsCmd::Cancel { target, .. }
        | JobsCmd::DrainNode { target, .. }
        | JobsCmd::DeadLetters { target, .. } => target.clone(),
    };
    let target = target_args.target(None)?;
    env::runtime().block_on(async move {
        let (store, mut audit) = target.open().await?;
        let r: Result<u8, reconciler::Error> = async {
            match o.cmd {
                JobsCmd::List {
                    state,
                    tenant,
                    format,
                    ..
                } => {
                    let list: Vec<Job> = jobs::list(&store)
                        .await?
                        .into_iter()
                        .filter(|j| state.as_deref().is_none_or(|s| j.state.as_str() == s))
                        .filter(|j| tenant.as_deref().is_none_or(|t| j.migration.tenant == t))
                        .collect();
                    print_list(&list, format);
                    Ok(exit::OK)
                }
                JobsCmd::DeadLetters { format, .. } => {
                    let list: Vec<Job> = jobs::list(&store)
                        .await?
                        .into_iter()
                        .filter(|j| j.state == JobState::DeadLettered)
                        .collect();
                    print_list(&list, format);
                    Ok(exit::OK)
                }
                JobsCmd::Show { id, format, .. } => {
                    let Some((j, _)) = jobs::get(&store, &id).await? else {
                        return Err(reconciler::Error::refused(
                            reconciler::outcome::RefusalKind::NotFound,
                            format!("no job `{id}`"),
                        ));
                    };
                    match format {
                        Format::Json => Format::print_json(&j),
                        _ => {
                            let mut s = line(&j);
                            s.push_str(&format!(
                                "  {} on {} → {} on {}; correlation {}; created {}\n",
                                j.migration.from_shard,
                                j.migration.from_node,
                                j.migration.to_shard,
                                j.migration.to_node,
                                j.correlation_id,
                                j.created_at
                            ));
                            for st in &j.steps {
                                s.push_str(&format!(
                                    "  {:<16} {:<8} {}\n",
                                    st.name,
                                    st.state,
                                    st.detail.clone().unwrap_or_default()
                                ));
                            }
                            output::print(&s);
                        }
                    }
                    Ok(exit::OK)
                }
                JobsCmd::Retry {
                    id, reason, actor, ..
                } => {
                    let j =
                        jobs::retry(&store, &mut audit, &id, &env::actor(&actor), &reason).await?;
                    output::print(&format!(
                        "{} queued again (attempt {} of {}).\n",
                        j.id,
                        j.attempts + 1,
                        j.max_attempts
                    ));
                    Ok(exit::OK)
                }
                JobsCmd::DrainNode {
                    node,
                    reason,
                    actor,
                    target: t,
                    ..
                } => {
                    if reason.trim().is_empty() {
                        return Err(reconciler::Error::refused(
                            reconciler::outcome::RefusalKind::ActionNotAllowed,
                            "a reason is required (--reason \"…\")",
                        ));
                    }
                    let applied =
                        reconciler::ops::run::applied(&store)
                            .await?
                            .ok_or_else(|| {
                                reconciler::Error::refused(
                                    reconciler::outcome::RefusalKind::ActionNotAllowed,
                                    format!("nothing is applied to {} yet", t.env),
                                )
                            })?;
                    let desired = reconciler::compile_rev(&t.repo, &applied.commit, &t.env)?;
                    let actor = env::actor(&actor);
                    let job =
                        jobs::node_drain(&desired, &node, Some(format!("cli:{actor}: {reason}")))?;
                    jobs::enqueue(&store, &mut audit, &actor, std::slice::from_ref(&job)).await?;
                    output::print(&format!(
                        "{} queued: drain every tenant on {node}; the reconcile daemon runs it.\n",
                        job.id
                    ));
                    Ok(exit::OK)
                }
                JobsCmd::Cancel {
                    id, reason, actor, ..
                } => {
                    let j =
                        jobs::cancel(&store, &mut audit, &id, &env::actor(&actor), &reason).await?;
                    output::print(&format!(
                        "{} {}.\n",
                        j.id,
                        if j.cancel_requested {
                            "will stop before its next step"
                        } else {
                            "cancelled"
                        }
                    ));
                    Ok(exit::OK)
                }
            }
        }
        .await;
        Ok(r?)
    })
}
