//! One environment's checkout of the ops repo, opened once per command (or daemon pass): the
//! repository, the branch the environment follows, that branch's head, and the `vakt.toml`
//! that governs it, each read once.
//!
//! Which branch an environment follows is declared in `vakt.toml`, so the branch is found from
//! the `vakt.toml` of the commit checked out at `HEAD` (the one bootstrap read); everything
//! that governs the environment (NATS settings, bucket prefix, replicas) then comes from the
//! `vakt.toml` at the head of that branch, the commit that is applied. When `HEAD` is that
//! commit, the file is parsed once. The work tree is read only when the directory is not a Git
//! repository at all: uncommitted edits never choose what is applied.

use std::path::{Path, PathBuf};

use gix::ObjectId;
use opsrepo::model::Manifest;

use super::compile::{self, CompileError};
use super::git::{GitError, Repo};
use crate::Error;

/// An environment's view of the repository. See the module documentation.
pub struct Checkout {
    path: PathBuf,
    repo: Result<Repo, String>,
    env: String,
    branch: String,
    head: Option<ObjectId>,
    manifest: Result<Manifest, CompileError>,
}

impl std::fmt::Debug for Checkout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkout")
            .field("path", &self.path)
            .field("env", &self.env)
            .field("branch", &self.branch)
            .field("head", &self.head)
            .finish_non_exhaustive()
    }
}

impl Checkout {
    /// Opens `path` for `env`: the environment follows its declared branch.
    pub fn open(path: &Path, env: &str) -> Checkout {
        Self::open_with(path, env, false)
    }

    /// Like [`open`](Self::open), but the environment follows the remote-tracking branch
    /// (`origin/<branch>`), as the daemon does after a fetch.
    pub fn open_remote(path: &Path, env: &str) -> Checkout {
        Self::open_with(path, env, true)
    }

    fn open_with(path: &Path, env: &str, remote: bool) -> Checkout {
        let declared_branch = |m: &Manifest| m.environments.get(env).map(|e| e.branch.clone());
        let repo = match Repo::open(path) {
            Ok(r) => r,
            Err(e) => {
                // Not a Git repository: the work tree is all there is.
                let manifest =
                    compile::manifest_of(std::fs::read(path.join("vakt.toml")).ok().as_deref());
                let branch = manifest
                    .as_ref()
                    .ok()
                    .and_then(declared_branch)
                    .unwrap_or_else(|| format!("env/{env}"));
                return Checkout {
                    path: path.to_owned(),
                    repo: Err(e.to_string()),
                    env: env.to_owned(),
                    branch,
                    head: None,
                    manifest,
                };
            }
        };
        let at = |c: ObjectId| -> Result<Manifest, CompileError> {
            let bytes = repo
                .read_at(c, "vakt.toml")
                .map_err(|e| CompileError::Git(e.to_string()))?;
            compile::manifest_of(bytes.as_deref())
        };
        let checked_out = repo.try_resolve("HEAD");
        let at_head = checked_out.map(at);
        let declared = at_head
            .as_ref()
            .and_then(|m| m.as_ref().ok())
            .and_then(declared_branch)
            .unwrap_or_else(|| format!("env/{env}"));
        let branch = if remote {
            format!("origin/{declared}")
        } else {
            declared
        };
        let head = repo.try_resolve(&branch);
        let manifest = match (head, at_head) {
            (Some(h), Some(m)) if Some(h) == checked_out => m,
            (Some(h), _) => at(h),
            // The branch does not exist yet: what is checked out governs.
            (None, Some(m)) => m,
            (None, None) => Err(CompileError::NoManifest),
        };
        Checkout {
            path: path.to_owned(),
            repo: Ok(repo),
            env: env.to_owned(),
            branch,
            head,
            manifest,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn env(&self) -> &str {
        &self.env
    }

    /// The branch the environment follows (`origin/<branch>` for [`open_remote`](Self::open_remote)).
    pub fn branch(&self) -> &str {
        &self.branch
    }

    /// The head of [`branch`](Self::branch), `None` when it does not exist (or no Git).
    pub fn head(&self) -> Option<ObjectId> {
        self.head
    }

    /// The Git repository, or why the directory is not one.
    pub fn git(&self) -> Result<&Repo, Error> {
        self.repo.as_ref().map_err(|m| {
            Error::Git(GitError::Open {
                path: self.path.clone(),
                message: m.clone(),
            })
        })
    }

    /// The `vakt.toml` that governs the environment: at the branch head (else at `HEAD` while
    /// the branch does not exist; the work tree only without Git).
    pub fn manifest(&self) -> Result<&Manifest, Error> {
        self.manifest
            .as_ref()
            .map_err(|e| Error::Compile(e.clone()))
    }

    /// The environment's settings in [`manifest`](Self::manifest); an error naming the declared
    /// environments when it is not declared there.
    pub fn settings(&self) -> Result<&opsrepo::model::Environment, Error> {
        let m = self.manifest()?;
        m.environments.get(&self.env).ok_or_else(|| {
            Error::Compile(CompileError::UnknownEnv {
                env: self.env.clone(),
                declared: m.env_names(),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn git(dir: &Path, args: &[&str]) {
        let ok = Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@t.invalid"])
            .args(args)
            .current_dir(dir)
            .status()
            .unwrap()
            .success();
        assert!(ok, "git {args:?}");
    }

    fn manifest(prefix: &str) -> String {
        format!(
            "version = 1\n[project]\nname = \"t\"\nresource_prefix = \"t\"\nsite_url = \"https://t.invalid\"\nowner_team = \"t\"\n\n\
             [environments.dev]\nbranch = \"deploy/dev\"\norder = 1\nnats_url = \"nats://127.0.0.1:4222\"\nkv_prefix = \"{prefix}\"\nsites = []\n\
             [environments.dev.policy]\nself_heal = true\nprune = true\nmax_deletions = 10\n"
        )
    }

    #[test]
    fn the_branch_comes_from_head_and_the_settings_from_the_branch_head_never_the_work_tree() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        git(p, &["init", "-q", "-b", "main"]);
        std::fs::write(p.join("vakt.toml"), manifest("at_main")).unwrap();
        git(p, &["add", "-A"]);
        git(p, &["commit", "-qm", "one"]);
        git(p, &["branch", "deploy/dev"]);
        std::fs::write(p.join("vakt.toml"), manifest("at_main_two")).unwrap();
        git(p, &["commit", "-qam", "two"]);
        // An uncommitted edit changes nothing.
        std::fs::write(p.join("vakt.toml"), manifest("in_work_tree")).unwrap();

        let c = Checkout::open(p, "dev");
        assert_eq!(c.branch(), "deploy/dev");
        let s = c.settings().unwrap();
        assert_eq!(s.kv_prefix.as_deref(), Some("at_main"));
        assert_eq!(c.head(), c.git().unwrap().try_resolve("deploy/dev"));

        let r = Checkout::open_remote(p, "dev");
        assert_eq!(r.branch(), "origin/deploy/dev");
        assert_eq!(r.head(), None);

        let e = Checkout::open(p, "prod")
            .settings()
            .unwrap_err()
            .to_string();
        assert!(e.contains("prod") && e.contains("dev"), "{e}");
    }

    #[test]
    fn without_git_the_work_tree_is_read() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("vakt.toml"), manifest("plain")).unwrap();
        let c = Checkout::open(d.path(), "dev");
        assert!(c.git().is_err());
        assert_eq!(c.branch(), "deploy/dev");
        assert_eq!(c.settings().unwrap().kv_prefix.as_deref(), Some("plain"));
    }
}
