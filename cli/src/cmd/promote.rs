//! `vakt promote`.

use std::path::PathBuf;

use crate::fail::Exit;
use crate::output::Format;
use crate::{exit, output};

/// Promote one environment to the next (dev → staging → prod), or check that it may.
///
/// --check is the guard CI runs on a pull request into an env branch: every commit that would
/// reach the target (from --head, default the source branch) must already be in the source
/// environment's branch. Without --check, fast-forwards the target branch to the source branch
/// in the local clone (push it yourself, through your review process); refuses when the target
/// has commits the source lacks.
///
/// Exit status: 0 ok, 1 the check failed (commits listed), 3 could not run, 4 refused.
///
/// Examples:
///   vakt promote --from dev --to staging --check --head origin/my-change
///   vakt promote --from staging --to prod
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct PromoteOpts {
    #[arg(long, value_name = "ENV")]
    pub from: String,
    #[arg(long, value_name = "ENV")]
    pub to: String,
    /// Only check; change nothing.
    #[arg(long)]
    pub check: bool,
    /// The commit that would be merged (default: the source branch).
    #[arg(long, value_name = "REV", requires = "check")]
    pub head: Option<String>,
    #[arg(long, env = "VAKT_REPO", default_value = ".", value_name = "DIR")]
    pub repo: PathBuf,
    #[arg(long, default_value = "human", value_parser = Format::only(output::HUMAN_JSON))]
    pub format: Format,
}

pub fn run(o: PromoteOpts) -> Exit {
    let r = (|| {
        let manifest = reconciler::read_manifest(&o.repo)?;
        let repo = reconciler::desired::git::Repo::open(&o.repo)?;
        if o.check {
            reconciler::ops::promote::check(&repo, &manifest, &o.from, &o.to, o.head.as_deref())
        } else {
            reconciler::ops::promote::promote(&repo, &manifest, &o.from, &o.to)
        }
    })();
    let c = r?;

    match o.format {
        Format::Json => Format::print_json(&c),
        _ => {
            let mut s = String::new();
            if c.ok {
                s.push_str(&format!(
                    "ok: all {} commit(s) that would reach {} ({}) are already in {} ({}).\n",
                    c.commits, c.to, c.to_branch, c.from, c.from_branch
                ));
                if !o.check {
                    s.push_str(&format!(
                        "{} now points at {}; push it to promote.\n",
                        c.to_branch,
                        reconciler::desired::short(&c.head)
                    ));
                }
            } else {
                s.push_str(&format!(
                    "promotion order violated: {} commit(s) would reach {} before {}:\n",
                    c.offenders.len(),
                    c.to,
                    c.from
                ));
                for off in &c.offenders {
                    s.push_str(&format!(
                        "  {} {}\n",
                        reconciler::desired::short(&off.commit),
                        off.summary
                    ));
                }
                s.push_str(&format!(
                    "merge them into {} first and let them run there.\n",
                    c.from_branch
                ));
            }
            output::print(&s);
        }
    }
    Ok(if c.ok { exit::OK } else { exit::FINDINGS })
}
