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
    ///
    /// Both trees are walked side by side in Git's entry order, descending only into subtrees
    /// whose ids differ, without allocating for equal entries: in a repo of 50,000 documents a
    /// one-file commit costs the inflating of the few trees on the changed path (a directory
    /// of 20,000 tenants is one of them) and one comparison per entry.
    pub fn changed_paths(&self, old: ObjectId, new: ObjectId) -> Result<Vec<String>, GitError> {
        let root = |id: ObjectId| -> Result<ObjectId, GitError> {
            self.repo
                .find_commit(id)
                .map_err(|e| self.other(e))?
                .tree_id()
                .map(|t| t.detach())
                .map_err(|e| self.other(e))
        };
        let (a, b) = (root(old)?, root(new)?);
        let mut out = Vec::new();
        if a != b {
            self.diff_trees(Some(a), Some(b), &mut String::new(), &mut out, 0)?;
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// Appends to `out` the paths of non-tree entries that differ between trees `a` and `b`
    /// (either may be absent: everything under the other one differs), under `prefix`.
    fn diff_trees(
        &self,
        a: Option<ObjectId>,
        b: Option<ObjectId>,
        prefix: &mut String,
        out: &mut Vec<String>,
        depth: usize,
    ) -> Result<(), GitError> {
        use std::cmp::Ordering;
        if depth > 256 {
            return Err(self.other(format!("trees nested deeper than 256 levels at {prefix}")));
        }
        let load = |id: Option<ObjectId>| -> Result<Option<gix::Object<'_>>, GitError> {
            id.map(|id| self.repo.find_object(id).map_err(|e| self.other(e)))
                .transpose()
        };
        let (oa, ob) = (load(a)?, load(b)?);
        let kind = self.repo.object_hash();
        let da: &[u8] = oa.as_ref().map_or(&[], |o| &o.data);
        let db: &[u8] = ob.as_ref().map_or(&[], |o| &o.data);
        let (mut ia, mut ib) = (
            gix::objs::TreeRefIter::from_bytes(da, kind),
            gix::objs::TreeRefIter::from_bytes(db, kind),
        );
        fn step<'a>(
            it: &mut gix::objs::TreeRefIter<'a>,
        ) -> Result<Option<gix::objs::tree::EntryRef<'a>>, String> {
            it.next().transpose().map_err(|e| e.to_string())
        }
        let (mut x, mut y) = (
            step(&mut ia).map_err(|e| self.other(e))?,
            step(&mut ib).map_err(|e| self.other(e))?,
        );
        // The entries of one name that differ (either side may lack it): its path when one of
        // them is not a tree, and the differences below the trees (everything below a tree the
        // other side lacks).
        type Entry<'e> = gix::objs::tree::EntryRef<'e>;
        let visit = |a: Option<&Entry<'_>>,
                     b: Option<&Entry<'_>>,
                     prefix: &mut String,
                     out: &mut Vec<String>|
         -> Result<(), GitError> {
            let Some(name) = a.or(b).map(|e| e.filename) else {
                return Ok(());
            };
            let len = prefix.len();
            prefix.push_str(&String::from_utf8_lossy(name));
            if [a, b].into_iter().flatten().any(|e| !e.mode.is_tree()) {
                out.push(prefix.clone());
            }
            let tree =
                |e: Option<&Entry<'_>>| e.filter(|e| e.mode.is_tree()).map(|e| e.oid.to_owned());
            let (ta, tb) = (tree(a), tree(b));
            let r = if ta.is_some() || tb.is_some() {
                prefix.push('/');
                self.diff_trees(ta, tb, prefix, out, depth + 1)
            } else {
                Ok(())
            };
            prefix.truncate(len);
            r
        };
        loop {
            let order = match (&x, &y) {
                (None, None) => break,
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some(p), Some(q)) => p.cmp(q),
            };
            match order {
                Ordering::Less => {
                    visit(x.as_ref(), None, prefix, out)?;
                    x = step(&mut ia).map_err(|e| self.other(e))?;
                }
                Ordering::Greater => {
                    visit(None, y.as_ref(), prefix, out)?;
                    y = step(&mut ib).map_err(|e| self.other(e))?;
                }
                Ordering::Equal => {
                    if let (Some(p), Some(q)) = (&x, &y)
                        && (p.oid != q.oid || p.mode != q.mode)
                    {
                        visit(Some(p), Some(q), prefix, out)?;
                    }
                    x = step(&mut ia).map_err(|e| self.other(e))?;
                    y = step(&mut ib).map_err(|e| self.other(e))?;
                }
            }
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn git(dir: &Path, args: &[&str]) -> String {
        let out = Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@t.invalid"])
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}");
        String::from_utf8(out.stdout).unwrap()
    }

    fn write(dir: &Path, path: &str, text: &str) {
        let p = dir.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    /// `changed_paths` between each pair of commits agrees with `git diff --name-only`
    /// (renames as two paths), over additions, deletions, edits, whole directories appearing
    /// and disappearing, a file turning into a directory and a symlink.
    #[test]
    fn changed_paths_agrees_with_git_diff() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        git(p, &["init", "-q", "-b", "main"]);
        write(p, "a.toml", "a");
        write(p, "config/tenants/t1/tenant.toml", "1");
        write(p, "config/tenants/t2/tenant.toml", "2");
        write(p, "config/x", "x");
        git(p, &["add", "-A"]);
        git(p, &["commit", "-qm", "c0"]);
        type Step = Box<dyn Fn(&Path)>;
        let steps: Vec<Step> = vec![
            Box::new(|p| write(p, "config/tenants/t2/tenant.toml", "2b")),
            Box::new(|p| {
                std::fs::remove_dir_all(p.join("config/tenants/t1")).unwrap();
                write(p, "config/tenants/t3/tenant.toml", "3");
                write(p, "config/tenants/t3/extra.toml", "e");
            }),
            Box::new(|p| {
                std::fs::remove_file(p.join("config/x")).unwrap();
                write(p, "config/x/inner.toml", "now a directory");
                std::os::unix::fs::symlink("a.toml", p.join("link.toml")).unwrap();
            }),
            Box::new(|p| {
                std::fs::rename(p.join("a.toml"), p.join("b.toml")).unwrap();
                std::fs::remove_dir_all(p.join("config")).unwrap();
            }),
        ];
        for (i, change) in steps.iter().enumerate() {
            change(p);
            git(p, &["add", "-A"]);
            git(p, &["commit", "-qm", &format!("c{}", i + 1)]);
        }
        let r = Repo::open(p).unwrap();
        let n = steps.len();
        for i in 0..=n {
            for j in 0..=n {
                let (a, b) = (format!("HEAD~{}", n - i), format!("HEAD~{}", n - j));
                let want: Vec<String> = git(p, &["diff", "--name-only", "--no-renames", &a, &b])
                    .lines()
                    .map(str::to_owned)
                    .collect();
                let got = r
                    .changed_paths(r.resolve(&a).unwrap(), r.resolve(&b).unwrap())
                    .unwrap();
                assert_eq!(got, want, "{a} → {b}");
            }
        }
    }
}
