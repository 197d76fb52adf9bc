//! The reconciler: compiles merged commits into the desired state of an environment's NATS KV
//! buckets, plans against another commit or the live buckets, applies with compare-and-set
//! writes and an audit event per change, detects drift, and runs as a daemon with one leader per
//! environment and site.

pub mod alerts;
pub mod api;
pub mod apply;
pub mod approvals;
pub mod audit;
pub mod backup;
pub mod canon;
pub mod compile;
pub mod daemon;
pub mod drift;
pub mod git;
pub mod inventory;
pub mod jobs;
pub mod nodes;
pub mod outcome;
pub mod plan;
pub mod promote;
pub mod run;
pub mod saved;
pub mod sitelinks;
pub mod snippets;
pub mod state;
pub mod store;

use std::path::Path;

pub use compile::{Bucket, CompileError, Desired};
pub use plan::Plan;

/// Errors of the reconciler, each naming what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Source(#[from] opsrepo::SourceError),
    #[error(transparent)]
    Git(#[from] git::GitError),
    #[error(transparent)]
    Compile(#[from] CompileError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Refused(#[from] outcome::Refused),
    #[error("{0}")]
    Other(String),
}

impl Error {
    /// A refusal of `kind`, with the sentence the operator reads.
    pub fn refused(kind: outcome::RefusalKind, reason: impl Into<String>) -> Self {
        Error::Refused(outcome::Refused::new(kind, reason))
    }

    /// The documented exit code of this error: refusals 4, compile errors 1, the rest 3.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Refused(r) => r.kind.exit_code(),
            Error::Compile(_) => outcome::exit::FINDINGS,
            _ => outcome::exit::COULD_NOT_RUN,
        }
    }
}

/// A progress callback for long work (writes done, writes in all). Libraries never print; the
/// binary draws a bar from it when stderr is a terminal.
#[derive(Clone)]
pub struct Progress(pub std::sync::Arc<dyn Fn(u64, u64) + Send + Sync>);

impl Progress {
    pub fn report(&self, done: u64, total: u64) {
        (self.0)(done, total);
    }
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Progress")
    }
}

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

/// The branch of `env`, from `vakt.toml` at `HEAD` of the repo (or its work tree); `env/<env>`
/// if neither says.
pub fn env_branch(repo: &Path, env: &str) -> String {
    let from_bytes = |b: &[u8]| -> Option<String> {
        let m = compile::manifest_of(Some(b)).ok()?;
        Some(m.environments.get(env)?.branch.clone())
    };
    if let Ok(b) = std::fs::read(repo.join("vakt.toml"))
        && let Some(br) = from_bytes(&b)
    {
        return br;
    }
    if let Ok(r) = git::Repo::open(repo)
        && let Some(head) = r.try_resolve("HEAD")
        && let Ok(Some(b)) = r.read_at(head, "vakt.toml")
        && let Some(br) = from_bytes(&b)
    {
        return br;
    }
    format!("env/{env}")
}

/// Everything needed to reach an environment's buckets.
#[derive(Debug, Clone)]
pub struct EnvTarget {
    pub env: String,
    pub nats: store::NatsOpts,
    /// KV bucket prefix (`vakt_<env>` unless vakt.toml or --kv-prefix says otherwise).
    pub prefix: String,
    pub settings: store::BucketSettings,
}

impl EnvTarget {
    /// Resolves the NATS URLs (`--nats`, else `NATS_URL`, else the environment's `nats_url` in
    /// vakt.toml) and the bucket prefix.
    pub fn resolve(
        repo: &Path,
        env: &str,
        mut nats: store::NatsOpts,
        prefix: Option<String>,
        mut settings: store::BucketSettings,
    ) -> Result<EnvTarget, Error> {
        let manifest = read_manifest(repo)?;
        let e = manifest.environments.get(env).ok_or_else(|| {
            Error::Compile(CompileError::UnknownEnv {
                env: env.to_owned(),
                declared: manifest
                    .environments
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
            })
        })?;
        if nats.urls.is_empty() {
            nats.urls = std::env::var("NATS_URL")
                .ok()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| e.nats_url.clone());
        }
        let prefix = prefix
            .or_else(|| e.kv_prefix.clone())
            .unwrap_or_else(|| format!("vakt_{env}"));
        if settings.replicas == 0 {
            settings.replicas = e.kv_replicas.unwrap_or(1).max(1);
        }
        Ok(EnvTarget {
            env: env.to_owned(),
            nats,
            prefix,
            settings,
        })
    }

    /// Connects and opens the existing buckets, creating nothing (read-only commands).
    pub async fn open_existing(&self) -> Result<store::Store, Error> {
        let client = store::connect(&self.nats).await?;
        Ok(store::Store::open_existing(client, &self.env, &self.prefix).await?)
    }

    /// Connects and opens the buckets and the audit stream.
    pub async fn open(&self) -> Result<(store::Store, audit::Audit), Error> {
        let client = store::connect(&self.nats).await?;
        let s = store::Store::open(client, &self.env, &self.prefix, &self.settings).await?;
        let a = audit::Audit::open(&s).await?;
        Ok((s, a))
    }
}

/// `vakt.toml` from the work tree, else from `HEAD`.
pub fn read_manifest(repo: &Path) -> Result<opsrepo::model::Manifest, Error> {
    if let Ok(b) = std::fs::read(repo.join("vakt.toml")) {
        return Ok(compile::manifest_of(Some(&b))?);
    }
    let r = git::Repo::open(repo)?;
    let head = r.resolve("HEAD")?;
    let b = r.read_at(head, "vakt.toml")?;
    Ok(compile::manifest_of(b.as_deref())?)
}

/// Compiles `head` incrementally from an already compiled `base` (consumed): only the files the
/// Git diff between the two commits names are read and recompiled. Falls back to a full
/// compile when vakt.toml changed (stats `None`).
pub fn advance(
    repo: &Path,
    base: Desired,
    head_rev: &str,
) -> Result<(Desired, Option<compile::RecompileStats>), Error> {
    let r = git::Repo::open(repo)?;
    let old = r.resolve(&base.commit)?;
    let new = r.resolve(head_rev)?;
    let changed = r.changed_paths(old, new)?;
    let env = base.env.clone();
    let mut next = base;
    let read = |p: &str| -> Result<Option<Vec<u8>>, CompileError> {
        r.read_at(new, p)
            .map_err(|e| CompileError::Git(e.to_string()))
    };
    let new_s = new.to_string();
    match next.recompile(&changed, &read, &new_s)? {
        Some(stats) => Ok((next, Some(stats))),
        None => Ok((compile_rev(repo, &new_s, &env)?, None)),
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
