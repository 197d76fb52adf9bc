//! `vakt plan`.

use reconciler::desired::plan;

use super::env::{self, EnvArgs};
use crate::fail::{Exit, Fail};
use crate::output::Format;
use crate::{exit, output};

/// Show what an apply would change, per bucket and key, before anything is written.
///
/// Without --live, compares two commits and needs no NATS: the base (default: the env branch)
/// with the head (default: HEAD), the way a pull request into the env branch would change it.
/// The head is compiled incrementally from the base: only files the Git diff names are read.
/// With --live, compares the commit (default: the env branch head) with the live KV buckets.
///
/// Each change shows the source file and a field-level diff; removals, orphans, the gated
/// actions the environment's policy holds for approval, and the impact on tenants, services and
/// sites follow.
///
/// Saved plans (--live --out FILE): the plan is sealed into FILE (commit, environment, branch
/// head, every change with the live revision it expects, each bucket's stream sequence when it
/// was read, expiry, digest). `vakt apply --env E FILE` then writes exactly that plan, or refuses
/// naming why (edited, expired, branch moved, a key changed since). Approvals bind to the plan's
/// digest, so an approval of the saved plan is an approval of what will be written.
///
/// Exit status: 0 success (with --detailed-exitcode: 0 no changes, 2 changes), 1 compile
/// error, 3 could not run.
///
/// Examples:
///   vakt plan --env staging --base origin/env/staging --head HEAD --format markdown > plan.md
///   vakt plan --env prod --live
///   vakt plan --env prod --live --out prod.plan --valid-for 2h
///   vakt plan --env dev --live --format json | jq '.counts'
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct PlanOpts {
    #[command(flatten)]
    pub target: EnvArgs,
    /// The commit to plan (with --live: default the env branch head).
    #[arg(long, value_name = "REV", conflicts_with = "head")]
    pub rev: Option<String>,
    /// Compare against this commit (default: the env branch).
    #[arg(long, value_name = "REV", conflicts_with = "live")]
    pub base: Option<String>,
    /// The commit to plan (default: HEAD).
    #[arg(long, value_name = "REV")]
    pub head: Option<String>,
    /// Compare with the live NATS KV buckets instead of a commit.
    #[arg(long)]
    pub live: bool,
    /// Save the plan to FILE for `vakt apply FILE` (needs --live).
    #[arg(long, value_name = "FILE", requires = "live")]
    pub out: Option<std::path::PathBuf>,
    /// How long a saved plan may be applied (e.g. 30m, 2h).
    #[arg(long, value_name = "DURATION", default_value = "1h", requires = "out")]
    pub valid_for: opsrepo::model::Duration,
    /// Who is planning, recorded in a saved plan (default: $VAKT_ACTOR, else user:$USER).
    #[arg(long, value_name = "WHO")]
    pub actor: Option<String>,
    #[arg(long, default_value = "human", value_parser = Format::only(&[Format::Human, Format::Json, Format::Markdown]))]
    pub format: Format,
    /// Exit 2 when the plan has changes (Terraform's convention).
    #[arg(long)]
    pub detailed_exitcode: bool,
}

pub fn run(o: PlanOpts) -> Exit {
    let repo = o.target.repo.clone();
    let envname = o.target.env.clone();
    let p = if o.live {
        live(&o)?
    } else {
        let base = o
            .base
            .clone()
            .unwrap_or_else(|| reconciler::env_branch(&repo, &envname));
        let head = o
            .head
            .clone()
            .or(o.rev.clone())
            .unwrap_or_else(|| "HEAD".into());
        match reconciler::plan_revs(&repo, &base, &head, &envname) {
            // A new environment branch that does not exist yet: everything is an add.
            Err(reconciler::Error::Source(opsrepo::SourceError::Revision { .. }))
            | Err(reconciler::Error::Git(reconciler::desired::git::GitError::Revision {
                ..
            })) if reconciler::desired::git::Repo::open(&repo)
                .map(|r| r.try_resolve(&base).is_none())
                .unwrap_or(false) =>
            {
                let head_d = reconciler::compile_rev(&repo, &head, &envname)?;
                plan::plan_commits(None, &head_d)
            }
            other => other?,
        }
    };
    match o.format {
        Format::Json => Format::print_json(&p),
        Format::Markdown => output::print(&plan::render_markdown(&p)),
        _ => output::print(&plan::render_human(&p, output::color_stdout())),
    }
    Ok(if o.detailed_exitcode && !p.is_empty() {
        exit::CHANGES
    } else {
        exit::OK
    })
}

/// The plan against the live buckets; with --out, sealed and saved.
fn live(o: &PlanOpts) -> Result<plan::Plan, Fail> {
    let repo = &o.target.repo;
    let envname = &o.target.env;
    let checkout = o.target.checkout();
    let branch = checkout.branch().to_owned();
    let rev = o.rev.clone().or(o.head.clone()).unwrap_or(branch.clone());
    let target = o.target.target_in(&checkout, None)?;
    let desired = reconciler::compile_rev(repo, &rev, envname)?;
    let planned = env::runtime().block_on(async {
        // Nothing applied yet (no buckets): every key is an add, and nothing is created.
        match target.open_existing().await {
            Ok(store) => Ok(reconciler::ops::apply::plan_live(&store, &desired).await?),
            Err(reconciler::Error::Store(reconciler::store::StoreError::Missing { .. })) => {
                Ok(reconciler::desired::plan::LivePlan {
                    plan: plan::plan_live(&desired, &Default::default()),
                    read_seqs: Default::default(),
                })
            }
            Err(e) => Err(Fail::from(e)),
        }
    })?;
    let Some(out) = &o.out else {
        return Ok(planned.plan);
    };
    let git = reconciler::desired::git::Repo::open(repo).map_err(reconciler::Error::from)?;
    let head = git
        .resolve(&branch)
        .map_err(reconciler::Error::from)?
        .to_string();
    let actor = env::actor(&o.actor);
    let saved = reconciler::desired::saved::SavedPlan::new(
        &reconciler::desired::saved::Origin {
            env: envname,
            kv_prefix: &target.prefix,
            branch: &branch,
            branch_head: &head,
            actor: &actor,
        },
        planned,
        time::OffsetDateTime::now_utc(),
        o.valid_for.get(),
    );
    saved
        .write(out)
        .map_err(|e| Fail::could_not_run(format!("cannot write {}: {e}", out.display())))?;
    if o.format != Format::Json {
        eprintln!(
            "Saved plan {} to {} (valid until {}). Apply exactly this plan with:\n  vakt apply --env {} {}",
            saved.planned.plan.id,
            out.display(),
            saved.expires_at,
            envname,
            out.display()
        );
    }
    Ok(saved.planned.plan)
}
