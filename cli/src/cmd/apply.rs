//! `vakt apply`.

use clap::ValueEnum;
use reconciler::apply::{ApplyError, ApplyOpts};
use reconciler::plan;

use super::env::{self, EnvArgs};
use crate::{exit, output};

/// Apply a commit of the environment's branch to its NATS KV buckets.
///
/// Refuses, with an audit event and a status that says why: a commit that is not on the env
/// branch, fails validation, or comes from a branch that moved backwards (unless
/// --allow-rewind); a plan inside a freeze window (unless --break-glass), deleting more than
/// max_deletions, or containing actions the policy gates without an approval bound to this exact
/// plan (`vakt approve`).
///
/// Writes are compare-and-set on the revision read when planning: a concurrent writer stops the
/// apply (re-run to recompute the plan). One audit event per change on VAKT_AUDIT, hash-chained.
/// An interrupted apply (crash, kill -9, NATS lost) is completed by the next one, with no
/// missing and no duplicated audit event.
///
/// Rollback: --rev <older commit of the branch> pins the environment behind its branch head;
/// status and drift say so until the branch itself is reverted.
///
/// Exit status: 0 applied (or nothing to do), 1 the apply failed part-way (see the error;
/// re-run), 3 could not run, 4 refused by a guard or policy.
///
/// Examples:
///   vakt apply --env dev --yes
///   vakt apply --env prod --dry-run
///   vakt apply --env prod --rev 3f2a9c1 --yes        # roll back, pinned
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct ApplyCmd {
    #[command(flatten)]
    pub target: EnvArgs,
    /// Commit of the env branch to apply (default: the branch head).
    #[arg(long, value_name = "REV")]
    pub rev: Option<String>,
    /// Show the plan against the live buckets; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Apply without asking (required when stdin is not a terminal).
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Apply inside a freeze window (incident fixes; audited).
    #[arg(long)]
    pub break_glass: bool,
    /// Follow a branch that moved backwards (force push; audited).
    #[arg(long)]
    pub allow_rewind: bool,
    /// Who is applying, for the audit trail (default: $VAKT_ACTOR, else user:$USER).
    #[arg(long, value_name = "WHO")]
    pub actor: Option<String>,
    #[arg(long, value_enum, default_value_t = Format::Human)]
    pub format: Format,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    Human,
    Json,
}

pub fn run(o: ApplyCmd) -> u8 {
    let target = match o.target.target(None) {
        Ok(t) => t,
        Err(e) => {
            output::error(&e.to_string());
            return env::code_of(&e);
        }
    };
    let repo = o.target.repo.clone();
    let envname = o.target.env.clone();
    let mut opts = ApplyOpts::new(&env::actor(&o.actor));
    opts.break_glass = o.break_glass;
    opts.causation_id = Some(format!("cli:apply:{}", std::process::id()));
    env::runtime().block_on(async move {
        let (store, mut audit) = match target.open().await {
            Ok(x) => x,
            Err(e) => {
                output::error(&e.to_string());
                return env::code_of(&e);
            }
        };
        let prev = reconciler::run::applied(&store).await.ok().flatten();
        let prev_head = prev.as_ref().and_then(|a| a.branch_head.clone());
        let today = time::OffsetDateTime::now_utc().date();
        let rev = o.rev.clone();
        let prepared = tokio::task::spawn_blocking(move || {
            reconciler::run::prepare(&repo, &envname, rev.as_deref(), prev_head.as_deref(), today)
        })
        .await
        .expect("prepare task");
        let prepared = match prepared {
            Ok(p) => p,
            Err(e) => {
                output::error(&e.to_string());
                return env::code_of(&e);
            }
        };
        // Show the plan first; apply only with --yes (or a confirmation on a terminal).
        if let Some(d) = &prepared.desired
            && (o.dry_run || !o.yes)
        {
            let live = match store.snapshot().await {
                Ok(l) => l,
                Err(e) => {
                    output::error(&e.to_string());
                    return exit::COULD_NOT_RUN;
                }
            };
            let p = plan::plan_live(d, &live);
            print_plan(&p, o.format);
            if o.dry_run {
                return exit::OK;
            }
            if p.is_empty() && prepared.findings.is_empty() {
                // nothing to write, but the markers may need to move (rollback or first run)
            } else if !confirm("Apply this plan? Type `yes`: ") {
                output::error("not applied: pass --yes to apply without a terminal");
                return exit::REFUSED;
            }
        }
        let (bar, progress) = output::progress("applying");
        let mut opts = opts;
        opts.progress = progress;
        let result =
            reconciler::run::guarded_apply(&store, &mut audit, &prepared, &opts, o.allow_rewind)
                .await;
        bar.finish_and_clear();
        match result {
            Ok(r) => {
                match o.format {
                    Format::Json => output::print(&format!(
                        "{}\n",
                        serde_json::to_string_pretty(&r).unwrap_or_default()
                    )),
                    Format::Human => {
                        let mut s = format!(
                            "Applied {} to {}: {} write(s) ({} add, {} change, {} remove).",
                            reconciler::run::short(&prepared.commit),
                            o.target.env,
                            r.written,
                            r.plan.counts.add,
                            r.plan.counts.change,
                            r.plan.counts.remove
                        );
                        if r.jobs_queued > 0 {
                            s.push_str(&format!(
                                " {} placement move(s) queued as migration jobs; the reconcile daemon runs them (`vakt jobs list --env {}`).",
                                r.jobs_queued, o.target.env
                            ));
                        }
                        if r.recovered > 0 {
                            s.push_str(&format!(
                                " Recorded {} audit event(s) of an interrupted earlier apply.",
                                r.recovered
                            ));
                        }
                        if r.pinned {
                            s.push_str(&format!(
                                " Pinned behind branch head {}: the daemon keeps this commit until {} changes.",
                                reconciler::run::short(&prepared.branch_head),
                                prepared.branch
                            ));
                        }
                        output::print(&format!("{s}\n"));
                    }
                }
                exit::OK
            }
            Err(ApplyError::Refused { reason, .. }) => {
                output::error(&format!("refused: {reason}"));
                exit::REFUSED
            }
            Err(e @ ApplyError::Failed { .. }) => {
                output::error(&e.to_string());
                exit::FINDINGS
            }
            Err(e) => {
                output::error(&e.to_string());
                exit::COULD_NOT_RUN
            }
        }
    })
}

fn print_plan(p: &plan::Plan, f: Format) {
    match f {
        Format::Human => output::print(&plan::render_human(p, output::color_stdout())),
        Format::Json => {}
    }
}

/// Asks on a terminal; false without one.
pub(crate) fn confirm(prompt: &str) -> bool {
    use std::io::{BufRead, IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        return false;
    }
    eprint!("{prompt}");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).is_ok() && line.trim() == "yes"
}
