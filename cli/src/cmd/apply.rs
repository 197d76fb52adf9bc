//! `vakt apply`.

use reconciler::desired::plan;
use reconciler::ops::apply::ApplyOpts;

use super::env::{self, EnvArgs};
use crate::fail::{Exit, Fail};
use crate::output::Format;
use crate::{exit, output};

/// Apply a commit of the environment's branch to its NATS KV buckets, or a saved plan.
///
/// Without PLAN: reads the live buckets once, shows the plan, asks (or takes --yes), and
/// writes exactly the plan it showed; if a key it read changed in between, nothing is written
/// and the apply is refused (plan again).
///
/// With PLAN (a file from `vakt plan --live --out PLAN`): applies exactly that plan, or refuses
/// (exit 4, audited) naming why: the file was edited, truncated, is for another environment or
/// bucket prefix, from another repository or a newer vakt; the plan expired; the env branch
/// moved since the plan was made; a key it read changed since; it was already applied. A saved
/// plan needs no confirmation: reviewing it was the confirmation.
///
/// Refuses, with an audit event and a status that says why: a commit that is not on the env
/// branch, fails validation, or comes from a branch that moved backwards (unless
/// --allow-rewind); a plan inside a freeze window (unless --break-glass), deleting more than
/// max_deletions, or containing actions the policy gates without an approval bound to this exact
/// plan's digest (`vakt approve`).
///
/// Writes are compare-and-set on the revision read when planning. One audit event per change on
/// VAKT_AUDIT, hash-chained. An interrupted apply (crash, kill -9, NATS lost) is completed by
/// the next one, with no missing and no duplicated audit event.
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
///   vakt plan --env prod --live --out prod.plan && vakt apply --env prod prod.plan
///   vakt apply --env prod --rev 3f2a9c1 --yes        # roll back, pinned
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct ApplyCmd {
    /// A saved plan (`vakt plan --live --out FILE`) to apply exactly.
    #[arg(value_name = "PLAN", conflicts_with_all = ["rev", "dry_run"])]
    pub plan: Option<std::path::PathBuf>,
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
    #[arg(long, default_value = "human", value_parser = Format::only(output::HUMAN_JSON))]
    pub format: Format,
}

pub fn run(o: ApplyCmd) -> Exit {
    // The repository and its vakt.toml are read once, here: the target, the branch and the
    // commit to apply all come from this checkout.
    let checkout = o.target.checkout();
    let target = o.target.target_in(&checkout, None)?;
    // A saved plan is read and checked before anything else: a damaged file costs no NATS round
    // trip. Its refusals are audited once the store is open.
    let saved = o
        .plan
        .as_deref()
        .map(reconciler::desired::saved::SavedPlan::read);
    let repo = o.target.repo.clone();
    let mut opts = ApplyOpts::new(&env::actor(&o.actor));
    opts.break_glass = o.break_glass;
    opts.causation_id = Some(format!("cli:apply:{}", std::process::id()));
    env::runtime().block_on(async move {
        let (store, mut audit) = target.open().await?;
        let saved = match saved {
            None => None,
            Some(Ok(s)) => Some(s),
            Some(Err(reconciler::desired::saved::ReadError::Invalid(r))) => {
                let commit = o.plan.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
                reconciler::ops::apply::record_refusal(&store, &mut audit, &commit, None, &opts, &r, &[])
                    .await?;
                return Err(Fail::new(r.kind.exit_code(), format!("refused: {}", r.reason)));
            }
            Some(Err(e)) => return Err(Fail::could_not_run(e.to_string())),
        };
        let prev = reconciler::ops::run::applied(&store).await.ok().flatten();
        let prev_head = prev.as_ref().and_then(|a| a.branch_head.clone());
        let today = time::OffsetDateTime::now_utc().date();
        let rev = match &saved {
            Some(s) => {
                // Another environment's plan, or a commit this repository does not have (the
                // plan is from another one): refused before anything is compiled.
                let r = checkout.git()?;
                let origin = s.check_origin(&target.env, &target.prefix).and_then(|()| {
                    match r.try_resolve(&s.commit) {
                        Some(_) => Ok(()),
                        None => Err(reconciler::outcome::Refused::new(
                            reconciler::outcome::RefusalKind::PlanInvalid,
                            format!(
                                "saved plan {} names commit {}, which {} does not have: it was made from another repository",
                                s.planned.plan.id,
                                reconciler::desired::short(&s.commit),
                                repo.display()
                            ),
                        )),
                    }
                });
                if let Err(refusal) = origin {
                    reconciler::ops::apply::record_refusal(
                        &store, &mut audit, &s.commit, Some(&s.planned.plan), &opts, &refusal, &[],
                    )
                    .await?;
                    return Err(Fail::refused(format!("refused: {}", refusal.reason)));
                }
                Some(s.commit.clone())
            }
            None => o.rev.clone(),
        };
        // Compiling is CPU work: the runtime's other workers keep the NATS connection alive.
        let prepared = tokio::task::block_in_place(|| {
            reconciler::ops::run::prepare(&checkout, rev.as_deref(), prev_head.as_deref(), today)
        })?;
        let (bar, progress) = output::progress("applying");
        let mut opts = opts;
        opts.progress = progress;
        let result = if let Some(s) = saved {
            reconciler::ops::run::apply_saved(&store, &mut audit, &prepared, s, &opts, o.allow_rewind)
                .await
        } else {
            // Show the plan first; apply only with --yes (or a confirmation on a terminal). What
            // is written is this very plan.
            let mut planned = None;
            if let Some(d) = &prepared.desired {
                let lp = reconciler::ops::apply::plan_live(&store, d).await?;
                if o.dry_run || !o.yes {
                    if o.format == Format::Human {
                        output::print(&plan::render_human(&lp.plan, output::color_stdout()));
                    }
                    if o.dry_run {
                        if o.format == Format::Json {
                            Format::print_json(&lp.plan);
                        }
                        return Ok(exit::OK);
                    }
                    let nothing = lp.plan.is_empty() && prepared.findings.is_empty();
                    if !nothing && !confirm("Apply this plan? Type `yes`: ") {
                        return Err(Fail::refused(
                            "not applied: pass --yes to apply without a terminal",
                        ));
                    }
                }
                planned = Some(lp);
            }
            reconciler::ops::run::guarded_apply(
                &store,
                &mut audit,
                &prepared,
                &opts,
                o.allow_rewind,
                planned,
            )
            .await
        };
        bar.finish_and_clear();
        let r = result?;
        match o.format {
            Format::Json => Format::print_json(&r),
            _ => {
                let mut s = format!(
                    "Applied {} to {}: {} write(s) ({} add, {} change, {} remove).",
                    reconciler::desired::short(&prepared.commit),
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
                        reconciler::desired::short(&prepared.branch_head),
                        prepared.branch
                    ));
                }
                output::print(&format!("{s}\n"));
            }
        }
        Ok(exit::OK)
    })
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
