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
/// One writer per environment: while a daemon (`vakt reconcile`) holds the environment's lease,
/// a hand-run apply is refused (exit 4) naming the leader and how long its lease runs; the
/// leader records the refusal in its own audit chain. `--while-leader hand-off` instead asks the
/// leader to reconcile its branch head now, records who asked, and waits for the leader's
/// applied marker (exit as the leader's pass: 0 applied or nothing to do, 4 refused, 1 failed).
/// A rollback (--rev) or a saved plan is never handed off: stop the daemon, or revert on the
/// branch. --dry-run writes nothing and is allowed.
///
/// Exit status: 0 applied (or nothing to do), 1 the apply failed part-way (see the error;
/// re-run), 3 could not run, 4 refused by a guard or policy.
///
/// Examples:
///   vakt apply --env dev --yes
///   vakt apply --env prod --dry-run
///   vakt plan --env prod --live --out prod.plan && vakt apply --env prod prod.plan
///   vakt apply --env prod --rev 3f2a9c1 --yes        # roll back, pinned
///   vakt apply --env prod --while-leader hand-off    # a daemon leads: let it apply now
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
    /// While a daemon leads the environment: `hand-off` asks it to apply its branch head now
    /// and waits for its applied marker (audited as apply.handed-off). Without it, the apply
    /// is refused.
    #[arg(long, value_name = "MODE", value_enum)]
    pub while_leader: Option<WhileLeader>,
    /// With --while-leader hand-off: how long to wait for the leader's pass.
    #[arg(long, default_value = "2m", value_name = "DURATION", value_parser = parse_wait)]
    pub leader_wait: std::time::Duration,
    #[arg(long, default_value = "human", value_parser = Format::only(output::HUMAN_JSON))]
    pub format: Format,
}

fn parse_wait(s: &str) -> Result<std::time::Duration, String> {
    s.parse::<opsrepo::model::Duration>().map(|d| d.get())
}

/// What `vakt apply` does while a daemon holds the environment's lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WhileLeader {
    /// Hand the apply to the leader: it reconciles its branch head now; wait for its marker.
    HandOff,
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
        if !o.dry_run
            && let Some(code) = leader_check(&o, &store, &opts).await?
        {
            return Ok(code);
        }
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

/// One writer per environment: `None` when no daemon leads (apply by hand), else what the
/// leader did with the refusal or the hand-off (see `reconciler::daemon::lease`).
async fn leader_check(
    o: &ApplyCmd,
    store: &reconciler::store::Store,
    opts: &ApplyOpts,
) -> Result<Option<u8>, Fail> {
    use reconciler::daemon::lease::{self, WriterRequest};
    let leaders = lease::leaders(store)
        .await
        .map_err(reconciler::Error::from)?;
    let Some(l) = leaders.first() else {
        return Ok(None);
    };
    let env = &o.target.env;
    let who = format!(
        "daemon `{}` leads {env} (lease key `{}` at revision {}, held since {}; it lapses in {:.1} s unless renewed)",
        l.holder, l.key, l.revision, l.since, l.expires_in_secs
    );
    let causation_id = opts
        .causation_id
        .clone()
        .unwrap_or_else(|| format!("cli:apply:{}", std::process::id()));
    let handing_off = o.while_leader == Some(WhileLeader::HandOff);
    if handing_off && (o.rev.is_some() || o.plan.is_some()) {
        let reason = format!(
            "{who}; --while-leader hand-off applies the branch head only, not {}: stop the daemon to apply it by hand, or revert on the branch",
            if o.plan.is_some() {
                "a saved plan"
            } else {
                "--rev"
            }
        );
        return Err(refuse_through(store, opts, reason, causation_id).await);
    }
    if !handing_off {
        let reason = format!(
            "{who}: a hand-run apply would be a second writer. Push to the env branch and let it apply, pass --while-leader hand-off to have it apply its branch head now, or stop the daemon first"
        );
        return Err(refuse_through(store, opts, reason, causation_id).await);
    }
    let req = WriterRequest::HandOff {
        actor: opts.actor.clone(),
        causation_id,
    };
    let Some(r) = lease::ask_leader(store, &req, o.leader_wait)
        .await
        .map_err(reconciler::Error::from)?
    else {
        return Err(Fail::refused(format!(
            "refused: {who}, and it did not answer within {:.0} s: nothing was handed off or written (is it paused or cut off from NATS?)",
            o.leader_wait.as_secs_f64()
        )));
    };
    let outcome = r.outcome.clone().unwrap_or_default();
    match o.format {
        Format::Json => Format::print_json(&r),
        _ => output::print(&format!(
            "Handed to leader `{}`: its pass ended `{outcome}`; applied commit {}{}.\n",
            r.leader,
            r.applied_commit
                .as_deref()
                .map_or("(none)", reconciler::desired::short),
            r.error
                .as_deref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        )),
    }
    Ok(Some(match outcome.as_str() {
        "applied" | "noop" if r.recorded => exit::OK,
        "refused" => reconciler::outcome::exit::REFUSED,
        _ => reconciler::outcome::exit::FINDINGS,
    }))
}

/// The refusal of a hand-run apply while a daemon leads, recorded by that leader (the only
/// writer of the chain); when it does not answer, the refusal stands unrecorded and says so.
async fn refuse_through(
    store: &reconciler::store::Store,
    opts: &ApplyOpts,
    reason: String,
    causation_id: String,
) -> Fail {
    use reconciler::daemon::lease::{self, WriterRequest};
    let req = WriterRequest::Refused {
        actor: opts.actor.clone(),
        reason: reason.clone(),
        causation_id,
    };
    let note = match lease::ask_leader(store, &req, std::time::Duration::from_secs(5)).await {
        Ok(Some(r)) if r.recorded => format!(" (audited by leader `{}`)", r.leader),
        Ok(Some(r)) => format!(
            " (leader `{}` could not record it: {})",
            r.leader,
            r.error.unwrap_or_default()
        ),
        Ok(None) => " (not audited: the leader did not answer within 5 s)".to_owned(),
        Err(e) => format!(" (not audited: {e})"),
    };
    Fail::new(
        reconciler::outcome::RefusalKind::LeaderActive.exit_code(),
        format!("refused: {reason}{note}"),
    )
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
