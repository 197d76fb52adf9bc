//! Layer 1: the desired state, from Git alone (no NATS): compile a commit into keys and
//! canonical values, plan one state against another, seal a plan into a saved plan.

pub mod canon;
pub mod checkout;
pub mod compile;
pub mod git;
pub mod plan;
pub mod saved;

use std::path::Path;

use crate::Error;
use compile::{CompileError, Desired};
use plan::Plan;

/// Compiles the desired state of `env` at `rev` (a branch, tag or sha) of the repo at `repo`.
/// Returns it with the full commit id.
pub fn compile_rev(repo: &Path, rev: &str, env: &str) -> Result<Desired, Error> {
    let files = opsrepo::read_commit(repo, rev)?;
    let id = match &files.origin {
        opsrepo::source::Origin::Commit { id, .. } => id.clone(),
        opsrepo::source::Origin::WorkTree(_) => rev.to_owned(),
    };
    Ok(Desired::compile(&files, env, &id)?)
}

/// The branch of `env`, from `vakt.toml` at the repository's `HEAD` commit (the work tree only
/// when the directory is not a Git repository); `env/<env>` if neither says. Uncommitted edits
/// never choose what is applied. (A [`checkout::Checkout`] holds it with the rest.)
pub fn env_branch(repo: &Path, env: &str) -> String {
    checkout::Checkout::open(repo, env).branch().to_owned()
}

/// `vakt.toml` at `HEAD` of the repository, or in the work tree when the directory is not a Git
/// repository.
pub fn read_manifest(repo: &Path) -> Result<opsrepo::model::Manifest, Error> {
    match git::Repo::open(repo) {
        Ok(r) => {
            let head = r.resolve("HEAD")?;
            Ok(compile::manifest_of(
                r.read_at(head, "vakt.toml")?.as_deref(),
            )?)
        }
        Err(_) => {
            let b = std::fs::read(repo.join("vakt.toml")).ok();
            Ok(compile::manifest_of(b.as_deref())?)
        }
    }
}

/// Compiles `head_rev` incrementally from an already compiled `base` (consumed): only the files
/// the Git diff between the two commits names are read and recompiled. Falls back to a full
/// compile when vakt.toml changed (stats `None`).
pub fn advance(
    repo: &Path,
    base: Desired,
    head_rev: &str,
) -> Result<(Desired, Option<compile::RecompileStats>), Error> {
    let r = git::Repo::open(repo)?;
    let new = r.resolve(head_rev)?;
    let new_s = new.to_string();
    let env = base.env.clone();
    advance_in(&r, base, new, || compile_rev(repo, &new_s, &env))
}

/// The one incremental compile, on an open repository: `base` advanced to commit `new` by
/// recompiling the paths the Git diff names; `full` compiles `new` from scratch when the diff
/// touches what every key depends on (vakt.toml). Used by `plan_revs` and the reconcile pass.
pub fn advance_in(
    r: &git::Repo,
    base: Desired,
    new: gix::ObjectId,
    full: impl FnOnce() -> Result<Desired, Error>,
) -> Result<(Desired, Option<compile::RecompileStats>), Error> {
    let old = r.resolve(&base.commit)?;
    let changed = r.changed_paths(old, new)?;
    let mut next = base;
    let read = |p: &str| -> Result<Option<Vec<u8>>, CompileError> {
        r.read_at(new, p)
            .map_err(|e| CompileError::Git(e.to_string()))
    };
    match next.recompile(&changed, &read, &new.to_string())? {
        Some(stats) => Ok((next, Some(stats))),
        None => Ok((full()?, None)),
    }
}

/// Plans `head_rev` against `base_rev` for `env` without NATS: compiles the base, advances it
/// incrementally to the head and compares only the keys the changed files feed.
pub fn plan_revs(repo: &Path, base_rev: &str, head_rev: &str, env: &str) -> Result<Plan, Error> {
    let base = compile_rev(repo, base_rev, env)?;
    let (head, stats) = advance(repo, base.clone(), head_rev)?;
    Ok(match stats {
        Some(s) => plan::plan_touched(&base, &head, &s.touched),
        None => plan::plan_commits(Some(&base), &head),
    })
}

/// The first 12 characters of a commit id, as vakt prints them.
pub fn short(c: &str) -> &str {
    &c[..c.len().min(12)]
}
