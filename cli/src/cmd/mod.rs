//! One module per subcommand.

pub mod api;
pub mod apply;
pub mod approve;
pub mod backup;
pub mod drift;
pub mod env;
pub mod import;
pub mod init;
pub mod inventory;
pub mod jobs;
pub mod plan;
pub mod promote;
pub mod reconcile;
pub mod render;
pub mod schemas;
pub mod site;
pub mod validate;

use std::path::PathBuf;

use opsrepo::{RepoFiles, SourceError};

/// Where to read the ops repo from: `--repo DIR` and optionally `--rev REV`.
#[derive(Debug, Clone, clap::Args)]
pub struct RepoOpts {
    /// The ops repo: a work tree, or a Git repository when --rev is given.
    #[arg(long, env = "VAKT_REPO", default_value = ".", value_name = "DIR")]
    pub repo: PathBuf,
    /// Read this commit (branch, tag or sha) straight from Git instead of the work tree.
    #[arg(long, value_name = "REV")]
    pub rev: Option<String>,
}

impl RepoOpts {
    pub fn read(&self) -> Result<RepoFiles, SourceError> {
        match &self.rev {
            Some(rev) => opsrepo::read_commit(&self.repo, rev),
            None => opsrepo::read_work_tree(&self.repo),
        }
    }
}

/// Today's date in UTC.
pub fn today() -> time::Date {
    time::OffsetDateTime::now_utc().date()
}

/// Parses `YYYY-MM-DD`.
pub fn parse_date(s: &str) -> Result<time::Date, String> {
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(s, &fmt).map_err(|e| format!("`{s}` is not a date (YYYY-MM-DD): {e}"))
}
