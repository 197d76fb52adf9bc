//! Promotion order: a commit reaches an environment only after the environment it is promoted
//! from (`promote_from` in vakt.toml). `check` is the guard CI runs on a pull request into an env
//! branch; `promote` performs the promotion in a local clone as a fast-forward.

use opsrepo::model::Manifest;
use serde::Serialize;

use crate::Error;
use crate::desired::git::Repo;

#[derive(Debug, Clone, Serialize)]
pub struct Offender {
    pub commit: String,
    pub summary: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct PromoteCheck {
    pub from: String,
    pub to: String,
    pub from_branch: String,
    pub to_branch: String,
    /// The commit that would be merged into the target.
    pub head: String,
    /// Commits that would reach the target.
    pub commits: usize,
    /// Those not yet in the source environment's branch.
    pub offenders: Vec<Offender>,
    pub ok: bool,
}

fn branches(m: &Manifest, from: &str, to: &str) -> Result<(String, String), Error> {
    let env = |e: &str| {
        m.environments.get(e).ok_or_else(|| {
            Error::refused(
                crate::outcome::RefusalKind::PromotionGuard,
                format!(
                    "environment `{e}` is not declared in vakt.toml (declared: {})",
                    m.env_names()
                ),
            )
        })
    };
    let (f, t) = (env(from)?, env(to)?);
    if t.promote_from.as_deref() != Some(from) {
        return Err(Error::refused(
            crate::outcome::RefusalKind::PromotionGuard,
            match &t.promote_from {
                Some(p) => format!("`{to}` is promoted from `{p}`, not from `{from}` (vakt.toml)"),
                None => {
                    format!("`{to}` is first in the promotion order; nothing is promoted into it")
                }
            },
        ));
    }
    Ok((f.branch.clone(), t.branch.clone()))
}

/// Checks that every commit `head` (default: the source branch) would bring into the target
/// branch is already in the source branch.
pub fn check(
    repo: &Repo,
    manifest: &Manifest,
    from: &str,
    to: &str,
    head: Option<&str>,
) -> Result<PromoteCheck, Error> {
    let (fb, tb) = branches(manifest, from, to)?;
    let from_tip = repo.resolve(&fb)?;
    let to_tip = repo.try_resolve(&tb);
    let head_id = match head {
        Some(h) => repo.resolve(h)?,
        None => from_tip,
    };
    let commits = repo.commits_between(head_id, to_tip)?;
    let in_source = repo.ancestors(from_tip)?;
    let offenders: Vec<Offender> = commits
        .iter()
        .filter(|c| !in_source.contains(*c))
        .map(|c| Offender {
            commit: c.to_string(),
            summary: repo.summary(*c),
        })
        .collect();
    Ok(PromoteCheck {
        from: from.into(),
        to: to.into(),
        from_branch: fb,
        to_branch: tb,
        head: head_id.to_string(),
        commits: commits.len(),
        ok: offenders.is_empty(),
        offenders,
    })
}

/// Fast-forwards the target branch to the source branch. Refuses when the target has commits
/// the source does not (a hotfix on the target must first be merged back into the source).
pub fn promote(
    repo: &Repo,
    manifest: &Manifest,
    from: &str,
    to: &str,
) -> Result<PromoteCheck, Error> {
    let c = check(repo, manifest, from, to, None)?;
    let from_tip = repo.resolve(&c.from_branch)?;
    let to_tip = repo.resolve(&c.to_branch)?;
    if !repo.is_ancestor(to_tip, from_tip)? {
        return Err(Error::refused(
            crate::outcome::RefusalKind::PromotionGuard,
            format!(
                "`{}` has commits that `{}` does not; merge {} into {} first (through a pull request), then promote",
                c.to_branch, c.from_branch, c.to_branch, c.from_branch
            ),
        ));
    }
    if to_tip != from_tip {
        repo.fast_forward(
            &c.to_branch,
            to_tip,
            from_tip,
            &format!("vakt promote {from} -> {to}"),
        )?;
    }
    Ok(c)
}
