//! The reconciler: compiles merged commits into the desired state of an environment's NATS KV
//! buckets, plans against another commit or the live buckets, applies with compare-and-set
//! writes and an audit event per change, detects drift, and runs as a daemon with one leader per
//! environment and site.
//!
//! Four layers, each a folder; a module imports only from its own layer or the ones below it
//! (checked by the `layers` test):
//!
//! 1. [`desired`]: pure desired state from Git: compile, canonical values, plans, saved plans.
//! 2. [`store`]: the environment's NATS KV buckets, the audit stream, the state records.
//! 3. [`ops`]: operations on the store: apply, drift, approvals, jobs, backup and restore,
//!    promotion, inventory decisions, the node client.
//! 4. [`daemon`]: the long-running reconciler: lease, triggers, HTTP API, live snippets, alert
//!    ingestion.
//!
//! [`outcome`] (refusal kinds, states, exit codes), [`Error`] and [`Progress`] are the shared
//! vocabulary at the root.

pub mod daemon;
pub mod desired;
pub(crate) mod fault;
pub mod ops;
pub mod outcome;
pub mod store;

pub use desired::compile::{Bucket, CompileError, Desired};
pub use desired::plan::Plan;
pub use desired::{advance, compile_rev, env_branch, plan_revs, read_manifest};
pub use store::target::EnvTarget;

/// Errors of the reconciler, each naming what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Source(#[from] opsrepo::SourceError),
    #[error(transparent)]
    Git(#[from] desired::git::GitError),
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
