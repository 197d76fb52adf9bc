//! `vakt plan`.

use clap::ValueEnum;
use reconciler::plan;

use super::env::{self, EnvArgs};
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
/// Exit status: 0 success (with --detailed-exitcode: 0 no changes, 2 changes), 1 compile
/// error, 3 could not run.
///
/// Examples:
///   vakt plan --env staging --base origin/env/staging --head HEAD --format markdown > plan.md
///   vakt plan --env prod --live
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
    #[arg(long, value_enum, default_value_t = PlanFormat::Human)]
    pub format: PlanFormat,
    /// Exit 2 when the plan has changes (Terraform's convention).
    #[arg(long)]
    pub detailed_exitcode: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum PlanFormat {
    Human,
    Json,
    /// GitHub-flavoured markdown for a pull request comment.
    Markdown,
}

pub fn run(o: PlanOpts) -> u8 {
    let repo = o.target.repo.clone();
    let envname = o.target.env.clone();
    let result: Result<plan::Plan, reconciler::Error> = if o.live {
        let rev = o
            .rev
            .clone()
            .or(o.head.clone())
            .unwrap_or_else(|| reconciler::env_branch(&repo, &envname));
        let target = match o.target.target(None) {
            Ok(t) => t,
            Err(e) => return fail(&e),
        };
        env::runtime().block_on(async {
            let desired = reconciler::compile_rev(&repo, &rev, &envname)?;
            // Nothing applied yet (no buckets): every key is an add, and nothing is created.
            let live = match target.open_existing().await {
                Ok(store) => store.snapshot().await?,
                Err(reconciler::Error::Store(reconciler::store::StoreError::Missing {
                    ..
                })) => Default::default(),
                Err(e) => return Err(e),
            };
            Ok(plan::plan_live(&desired, &live))
        })
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
        (|| {
            match reconciler::plan_revs(&repo, &base, &head, &envname) {
                // A new environment branch that does not exist yet: everything is an add.
                Err(reconciler::Error::Source(opsrepo::SourceError::Revision { .. }))
                | Err(reconciler::Error::Git(reconciler::git::GitError::Revision { .. }))
                    if reconciler::git::Repo::open(&repo)
                        .map(|r| r.try_resolve(&base).is_none())
                        .unwrap_or(false) =>
                {
                    let head_d = reconciler::compile_rev(&repo, &head, &envname)?;
                    Ok(plan::plan_commits(None, &head_d))
                }
                other => other,
            }
        })()
    };
    let p = match result {
        Ok(p) => p,
        Err(e) => return fail(&e),
    };
    match o.format {
        PlanFormat::Human => output::print(&plan::render_human(&p, output::color_stdout())),
        PlanFormat::Markdown => output::print(&plan::render_markdown(&p)),
        PlanFormat::Json => output::print(&format!(
            "{}\n",
            serde_json::to_string_pretty(&p).unwrap_or_default()
        )),
    }
    if o.detailed_exitcode && !p.is_empty() {
        exit::CHANGES
    } else {
        exit::OK
    }
}

fn fail(e: &reconciler::Error) -> u8 {
    output::error(&e.to_string());
    match e {
        reconciler::Error::Compile(_) => exit::FINDINGS,
        other => env::code_of(other),
    }
}
