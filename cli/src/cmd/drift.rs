//! `vakt drift`.

use super::env::{self, EnvArgs};
use crate::fail::{Exit, Fail};
use crate::output::Format;
use crate::{exit, output};

/// Compare the live KV buckets with the commit the environment has applied.
///
/// Lists each drifted key with the expected and actual digest, a field-level diff and what last
/// wrote it (from the key's KV history: vakt and its commit, or "outside vakt"), then orphans
/// (keys Git does not declare). A rollback pinned behind the branch head is reported.
///
/// Exit status (Terraform's detailed-exitcode convention): 0 in sync, 2 drift, 1 error.
///
/// Examples:
///   vakt drift --env prod
///   vakt drift --env prod --format json | jq '.drifted[].key'
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct DriftOpts {
    #[command(flatten)]
    pub target: EnvArgs,
    /// Compare with this commit instead of the applied one.
    #[arg(long, value_name = "REV")]
    pub rev: Option<String>,
    #[arg(long, default_value = "human", value_parser = Format::only(output::HUMAN_JSON))]
    pub format: Format,
}

pub fn run(o: DriftOpts) -> Exit {
    let checkout = o.target.checkout();
    let branch = checkout.branch().to_owned();
    let target = o
        .target
        .target_in(&checkout, None)
        .map_err(|e| Fail::from(e).with_code(exit::FINDINGS))?;
    let repo = o.target.repo.clone();
    let envname = o.target.env.clone();
    let r = env::runtime().block_on(async move {
        let store = target.open_existing().await?;
        let applied = reconciler::ops::run::applied(&store).await?;
        let rev = o
            .rev
            .clone()
            .or(applied.as_ref().map(|a| a.commit.clone()))
            .unwrap_or_else(|| branch.clone());
        let desired = reconciler::compile_rev(&repo, &rev, &envname)?;
        let mut report = reconciler::ops::drift::drift(&store, &desired).await?;
        let mut notes = Vec::new();
        if applied.is_none() {
            notes.push(format!("Nothing applied to {envname} yet; compared with {branch}."));
        }
        if let Some(a) = &applied
            && let Ok(r) = reconciler::desired::git::Repo::open(&repo)
            && let Ok(head) = r.resolve(&branch)
            && head.to_string().as_str() != a.commit.as_str()
            && let Ok(c) = r.resolve(&a.commit)
        {
            let behind = r.commits_between(head, Some(c)).map(|v| v.len()).unwrap_or(0);
            if a.pinned {
                notes.push(format!(
                    "Pinned behind branch head: {} applied with --rev, {behind} commit(s) behind {branch} ({}).",
                    reconciler::desired::short(&a.commit),
                    reconciler::desired::short(&head.to_string())
                ));
            } else {
                notes.push(format!(
                    "{branch} is {behind} commit(s) ahead of the applied commit (not applied yet)."
                ));
            }
        }
        if !notes.is_empty() {
            report.note = Some(notes.join(" "));
        }
        Ok::<_, reconciler::Error>(report)
    });
    // Terraform's -detailed-exitcode convention: any error is 1 (0 in sync, 2 drift).
    let report = r.map_err(|e| Fail::from(e).with_code(exit::FINDINGS))?;
    match o.format {
        Format::Json => Format::print_json(&report),
        _ => output::print(&reconciler::ops::drift::render_human(&report)),
    }
    Ok(if report.in_sync {
        exit::OK
    } else {
        exit::CHANGES
    })
}
