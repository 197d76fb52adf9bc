//! The Git operations the reconciler needs, over gix: resolve a branch head, list the paths a
//! commit changed, read files at a commit, ancestry for backwards-branch and promotion checks,
//! and fetch from a remote.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use gix::ObjectId;

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("failed to open Git repository at {path}: {message}")]
    Open { path: PathBuf, message: String },
    #[error("failed to resolve `{rev}` in {repo}: {message}")]
    Revision {
        repo: PathBuf,
        rev: String,
        message: String,
    },
    #[error("Git error in {repo}: {message}")]
    Other { repo: PathBuf, message: String },
}

/// An opened repository.
pub struct Repo {
    pub path: PathBuf,
    repo: gix::Repository,
}

impl Repo {
    pub fn open(path: &Path) -> Result<Repo, GitError> {
        let mut repo = gix::open(path).map_err(|e| GitError::Open {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        // Decompressed objects are kept: an incremental compile diffs two trees and then looks
        // paths up in the same (large) directory trees, which would otherwise be inflated again.
        repo.object_cache_size_if_unset(32 << 20);
        Ok(Repo {
            path: path.to_owned(),
            repo,
        })
    }

    fn other(&self, e: impl std::fmt::Display) -> GitError {
        GitError::Other {
            repo: self.path.clone(),
            message: e.to_string(),
        }
    }

    /// Resolves a branch, tag or sha to a commit id.
    pub fn resolve(&self, rev: &str) -> Result<ObjectId, GitError> {
        let err = |m: String| GitError::Revision {
            repo: self.path.clone(),
            rev: rev.to_owned(),
            message: m,
        };
        let id = self
            .repo
            .rev_parse_single(rev)
            .map_err(|e| err(e.to_string()))?;
        let c = id
            .object()
            .map_err(|e| err(e.to_string()))?
            .peel_to_commit()
            .map_err(|e| err(e.to_string()))?;
        Ok(c.id)
    }

    /// Like [`resolve`](Self::resolve), but `None` when the revision does not exist.
    pub fn try_resolve(&self, rev: &str) -> Option<ObjectId> {
        self.resolve(rev).ok()
    }

    /// Paths (blobs only) added, modified or deleted between two commits; renames appear as a
    /// deletion and an addition.
    pub fn changed_paths(&self, old: ObjectId, new: ObjectId) -> Result<Vec<String>, GitError> {
        let tree = |id: ObjectId| -> Result<gix::Tree<'_>, GitError> {
            self.repo
                .find_commit(id)
                .map_err(|e| self.other(e))?
                .tree()
                .map_err(|e| self.other(e))
        };
        let (a, b) = (tree(old)?, tree(new)?);
        let changes = self
            .repo
            .diff_tree_to_tree(Some(&a), Some(&b), gix::diff::Options::default())
            .map_err(|e| self.other(e))?;
        let mut out = Vec::with_capacity(changes.len());
        use gix::object::tree::diff::ChangeDetached as C;
        for c in changes {
            let (loc, mode, extra) = match c {
                C::Addition {
                    location,
                    entry_mode,
                    ..
                }
                | C::Deletion {
                    location,
                    entry_mode,
                    ..
                }
                | C::Modification {
                    location,
                    entry_mode,
                    ..
                } => (location, entry_mode, None),
                C::Rewrite {
                    source_location,
                    location,
                    entry_mode,
                    ..
                } => (location, entry_mode, Some(source_location)),
            };
            if mode.is_tree() {
                continue;
            }
            out.push(String::from_utf8_lossy(&loc).into_owned());
            if let Some(s) = extra {
                out.push(String::from_utf8_lossy(&s).into_owned());
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// Reads one file at a commit; `None` if the path does not exist there. Symlinks are refused.
    pub fn read_at(&self, commit: ObjectId, path: &str) -> Result<Option<Vec<u8>>, GitError> {
        let tree = self
            .repo
            .find_commit(commit)
            .map_err(|e| self.other(e))?
            .tree()
            .map_err(|e| self.other(e))?;
        let Some(entry) = tree.lookup_entry_by_path(path).map_err(|e| self.other(e))? else {
            return Ok(None);
        };
        if !entry.mode().is_blob() {
            if entry.mode().is_link() {
                return Err(self.other(format!(
                    "{path} is a symlink at {commit}; vakt reads symlinked documents only in a full compile"
                )));
            }
            return Ok(None);
        }
        let obj = entry.object().map_err(|e| self.other(e))?;
        if obj.data.len() as u64 > opsrepo::source::MAX_FILE_BYTES {
            return Err(self.other(format!("{path} is larger than 8 MiB")));
        }
        Ok(Some(obj.detach().data))
    }

    /// Whether `ancestor` is reachable from `descendant` (or equal to it).
    pub fn is_ancestor(&self, ancestor: ObjectId, descendant: ObjectId) -> Result<bool, GitError> {
        if ancestor == descendant {
            return Ok(true);
        }
        match self.repo.merge_base(ancestor, descendant) {
            Ok(base) => Ok(base.map(|b| b.detach()) == Some(ancestor)),
            Err(e) => Err(self.other(e)),
        }
    }

    /// Commits reachable from `tip` but not from `exclude`, newest first.
    pub fn commits_between(
        &self,
        tip: ObjectId,
        exclude: Option<ObjectId>,
    ) -> Result<Vec<ObjectId>, GitError> {
        let hidden: HashSet<ObjectId> = match exclude {
            Some(x) => self.ancestors(x)?,
            None => HashSet::new(),
        };
        let walk = self.repo.rev_walk([tip]).all().map_err(|e| self.other(e))?;
        let mut out = Vec::new();
        for info in walk {
            let id = info.map_err(|e| self.other(e))?.id;
            if !hidden.contains(&id) {
                out.push(id);
            }
        }
        Ok(out)
    }

    pub fn ancestors(&self, tip: ObjectId) -> Result<HashSet<ObjectId>, GitError> {
        let walk = self.repo.rev_walk([tip]).all().map_err(|e| self.other(e))?;
        let mut out = HashSet::new();
        for info in walk {
            out.insert(info.map_err(|e| self.other(e))?.id);
        }
        Ok(out)
    }

    /// Commit time, Unix seconds.
    pub fn commit_time(&self, id: ObjectId) -> Option<i64> {
        self.repo
            .find_commit(id)
            .ok()?
            .time()
            .ok()
            .map(|t| t.seconds)
    }

    /// First line of a commit's message.
    pub fn summary(&self, id: ObjectId) -> String {
        self.repo
            .find_commit(id)
            .ok()
            .and_then(|c| c.message().ok().map(|m| m.summary().to_string()))
            .unwrap_or_default()
    }

    /// Moves `refs/heads/<branch>` to `to`, only if it currently points at `expected`
    /// (compare-and-set on the ref, as Git does for a fast-forward push).
    pub fn fast_forward(
        &self,
        branch: &str,
        expected: ObjectId,
        to: ObjectId,
        message: &str,
    ) -> Result<(), GitError> {
        use gix::refs::Target;
        use gix::refs::transaction::{Change, LogChange, PreviousValue, RefEdit, RefLog};
        let name = format!("refs/heads/{branch}");
        self.repo
            .edit_reference(RefEdit {
                change: Change::Update {
                    log: LogChange {
                        mode: RefLog::AndReference,
                        force_create_reflog: false,
                        message: message.into(),
                    },
                    expected: PreviousValue::MustExistAndMatch(Target::Object(expected)),
                    new: Target::Object(to),
                },
                name: name.try_into().map_err(|e| self.other(e))?,
                deref: false,
            })
            .map_err(|e| self.other(e))?;
        Ok(())
    }
}

/// Fetches `remote` (a URL or a configured remote name) into `refs/remotes/origin/*` of the repo
/// at `path`. Blocking; run it on a blocking thread under tokio.
pub fn fetch(path: &Path, remote: &str) -> Result<(), GitError> {
    let other = |e: &dyn std::fmt::Display| GitError::Other {
        repo: path.to_owned(),
        message: format!("fetch {remote}: {e}"),
    };
    let repo = gix::open(path).map_err(|e| other(&e))?;
    let r = match repo.find_remote(remote) {
        Ok(r) => r,
        Err(_) => repo
            .remote_at(remote)
            .map_err(|e| other(&e))?
            .with_refspecs(
                Some("+refs/heads/*:refs/remotes/origin/*"),
                gix::remote::Direction::Fetch,
            )
            .map_err(|e| other(&e))?,
    };
    r.connect(gix::remote::Direction::Fetch)
        .map_err(|e| other(&e))?
        .prepare_fetch(gix::progress::Discard, Default::default())
        .map_err(|e| other(&e))?
        .receive(gix::progress::Discard, &gix::interrupt::IS_INTERRUPTED)
        .map_err(|e| other(&e))?;
    Ok(())
}
