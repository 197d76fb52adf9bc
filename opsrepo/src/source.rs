//! Reading the files of an ops repo from a work tree or straight from a Git commit.
//!
//! Only the directories of the ops repo layout are read. Every file is checked before it is
//! parsed: path names (no `..`, no control characters), symlinks (never out of the repository),
//! and size (documents larger than [`MAX_FILE_BYTES`] are refused unread).

use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::diag::{Finding, Pos};
pub use crate::tree_memo::TreeMemo;
use crate::tree_memo::{TreeFile, What};

/// Largest document vakt reads (8 MiB). Larger files get an `input.too-large` finding.
pub const MAX_FILE_BYTES: u64 = 8 * 1024 * 1024;

/// Top-level entries that belong to the ops repo. Anything else (the tool's own source) is ignored.
pub const ROOTS: [&str; 10] = [
    "vakt.toml",
    "config",
    "environments",
    "definitions",
    "inventory",
    "access",
    "runbooks",
    "dashboards",
    "alerts",
    "dr",
];

/// A file of the repo, read or refused.
#[derive(Debug, Clone)]
pub struct RawFile {
    /// `/`-separated path relative to the repository root.
    pub path: String,
    pub content: Result<Vec<u8>, Finding>,
}

/// Where the files came from, for messages and for the `commit` field of KV values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    WorkTree(PathBuf),
    Commit {
        repo: PathBuf,
        rev: String,
        id: String,
    },
}

/// The files of an ops repo at one point in time.
#[derive(Debug, Clone)]
pub struct RepoFiles {
    pub origin: Origin,
    /// Sorted by path.
    pub files: Vec<RawFile>,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("failed to read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("failed to open Git repository at {path}: {message}")]
    OpenRepo { path: PathBuf, message: String },
    #[error("failed to resolve revision `{rev}`: {message}")]
    Revision { rev: String, message: String },
    #[error("failed to read the tree of {rev}: {message}")]
    Tree { rev: String, message: String },
    #[error(
        "{path} is not an ops repo: vakt.toml is missing (run `vakt init {path}` to create one)"
    )]
    NotOpsRepo { path: PathBuf },
}

fn in_layout(path: &str) -> bool {
    let first = path.split('/').next().unwrap_or("");
    ROOTS.contains(&first)
}

/// Checks one path for names a reviewer could be fooled by. Returns the offending reason.
pub fn check_path_name(path: &str) -> Option<String> {
    for seg in path.split('/') {
        if seg.is_empty() || seg == "." || seg == ".." {
            return Some(format!("path segment `{seg}` is not allowed"));
        }
        if let Some(c) = seg.chars().find(|c| c.is_control()) {
            return Some(format!(
                "file name contains the control character U+{:04X}",
                c as u32
            ));
        }
    }
    None
}

fn bad_path(path: &str, why: String) -> RawFile {
    RawFile {
        path: sanitize_path(path),
        content: Err(bad_path_finding(path, why)),
    }
}

fn bad_path_finding(path: &str, why: String) -> Finding {
    Finding::new("input.bad-path", sanitize_path(path), Pos::default(), why)
        .help("rename the file to a plain name (letters, digits, `-`, `_`, `.`)")
}

/// Makes a path printable: control characters become `\u{..}` escapes.
pub fn sanitize_path(path: &str) -> String {
    path.chars()
        .map(|c| {
            if c.is_control() {
                format!("\\u{{{:x}}}", c as u32)
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn too_large(path: &str, len: u64) -> RawFile {
    RawFile {
        path: path.to_owned(),
        content: Err(Finding::new(
            "input.too-large",
            path,
            Pos::default(),
            format!("file is {len} bytes; documents are limited to {MAX_FILE_BYTES} bytes"),
        )
        .help("split the document or move bulk data out of the ops repo")),
    }
}

/// Reads the ops repo files of a work tree.
pub fn read_work_tree(root: &Path) -> Result<RepoFiles, SourceError> {
    if !root.join("vakt.toml").is_file() {
        return Err(SourceError::NotOpsRepo {
            path: root.to_owned(),
        });
    }
    let canon_root = root.canonicalize().map_err(|source| SourceError::Io {
        path: root.to_owned(),
        source,
    })?;
    let t = std::time::Instant::now();
    // Directories are walked in parallel and each file is read where it is found: on a repo
    // of tens of thousands of files, a sequential walk was a third of `vakt validate`.
    let per_root: Vec<Vec<RawFile>> = ROOTS
        .par_iter()
        .filter_map(|top| {
            let meta = root.join(top).symlink_metadata().ok()?;
            Some(walk(&canon_root, root, (*top).to_owned(), meta.file_type()))
        })
        .collect::<Result<_, _>>()?;
    let mut files: Vec<RawFile> = per_root.into_iter().flatten().collect();
    files.sort_by(|a, b| a.path.cmp(&b.path));
    tracing::debug!(
        ms = crate::diag::ms(t),
        files = files.len(),
        "work tree read"
    );
    Ok(RepoFiles {
        origin: Origin::WorkTree(root.to_owned()),
        files,
    })
}

fn unreadable(rel: &str, message: String) -> RawFile {
    RawFile {
        path: rel.to_owned(),
        content: Err(Finding::new(
            "input.unreadable",
            rel,
            Pos::default(),
            message,
        )),
    }
}

/// Reads one regular file (or the file a checked symlink points to), refusing large ones
/// unread. Most ops repo files fit one 8 KiB read, so they cost `open` + `read` + the read that
/// sees the end; only a file that fills it has its size taken from the open file (`fstat`)
/// before the rest is read.
fn read_file(root: &Path, rel: String) -> RawFile {
    use std::io::Read;
    const FIRST: usize = 8 * 1024;
    let full = root.join(&rel);
    let mut f = match std::fs::File::open(&full) {
        Ok(f) => f,
        Err(e) => return unreadable(&rel, format!("failed to read: {e}")),
    };
    let failed = |e: std::io::Error| RawFile {
        content: Err(Finding::new(
            "input.unreadable",
            &rel,
            Pos::default(),
            format!("failed to read: {e}"),
        )),
        path: rel.clone(),
    };
    // The first read goes to the stack: a file that fits is copied into a vector of its own
    // size (a vector of the read's size would hold 8 KiB for every small file).
    let mut first = [0u8; FIRST];
    let mut n = 0;
    while n < FIRST {
        match f.read(&mut first[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return failed(e),
        }
    }
    let mut buf = first[..n].to_vec();
    if n == FIRST {
        let len = match f.metadata() {
            Ok(m) => m.len(),
            Err(e) => return failed(e),
        };
        if len > MAX_FILE_BYTES {
            return too_large(&rel, len);
        }
        buf.reserve((len as usize).saturating_sub(FIRST) + 1);
        // At most one byte past the limit, in case the file grows while it is read.
        match f
            .take(MAX_FILE_BYTES + 1 - FIRST as u64)
            .read_to_end(&mut buf)
        {
            Ok(_) if buf.len() as u64 > MAX_FILE_BYTES => {
                return too_large(&rel, buf.len() as u64);
            }
            Ok(_) => {}
            Err(e) => return failed(e),
        }
    }
    RawFile {
        path: rel,
        content: Ok(buf),
    }
}

fn walk(
    canon_root: &Path,
    root: &Path,
    rel: String,
    file_type: std::fs::FileType,
) -> Result<Vec<RawFile>, SourceError> {
    let mut out = Vec::new();
    if let Some(why) = check_path_name(&rel) {
        out.push(bad_path(&rel, why));
        return Ok(out);
    }
    let full = root.join(&rel);
    let (is_dir, is_file) = if file_type.is_symlink() {
        match full.canonicalize() {
            Ok(target) if target.starts_with(canon_root) => match target.metadata() {
                Ok(m) => (m.is_dir(), m.is_file()),
                Err(e) => {
                    out.push(unreadable(&rel, e.to_string()));
                    return Ok(out);
                }
            },
            Ok(target) => {
                out.push(RawFile {
                    path: rel.clone(),
                    content: Err(Finding::new(
                        "input.symlink-escape",
                        &rel,
                        Pos::default(),
                        format!("symlink points outside the repository (to {})", target.display()),
                    )
                    .help("replace the symlink with the file itself; vakt never reads outside the repo")),
                });
                return Ok(out);
            }
            Err(e) => {
                // A link whose target would stay inside the repository but does not exist is a
                // file that cannot be read; one that would leave it is an escape either way.
                let target = std::fs::read_link(&full)
                    .ok()
                    .and_then(|t| t.to_str().map(str::to_owned));
                let inside = target.as_deref().and_then(|t| resolve_link(&rel, t));
                let finding = match inside {
                    Some(to) => dangling(&rel, &to, &e.to_string()),
                    None => Finding::new(
                        "input.symlink-escape",
                        &rel,
                        Pos::default(),
                        "symlink target does not exist or cannot be resolved",
                    )
                    .help("remove the dangling symlink"),
                };
                out.push(RawFile {
                    path: rel.clone(),
                    content: Err(finding),
                });
                return Ok(out);
            }
        }
    } else {
        (file_type.is_dir(), file_type.is_file())
    };
    if is_dir {
        let mut entries: Vec<_> = std::fs::read_dir(&full)
            .map_err(|source| SourceError::Io {
                path: full.clone(),
                source,
            })?
            .filter_map(Result::ok)
            .collect();
        entries.sort_by_key(|e| e.file_name());
        // Entries in parallel, each subtree walked and each file read by the worker that
        // meets it.
        let parts: Vec<Vec<RawFile>> = entries
            .par_iter()
            .map(|e| {
                let name = e.file_name();
                let Some(name) = name.to_str() else {
                    let lossy = name.to_string_lossy().into_owned();
                    return Ok(vec![bad_path(
                        &format!("{rel}/{lossy}"),
                        "file name is not valid UTF-8".into(),
                    )]);
                };
                if name.starts_with('.') && name != ".keep" {
                    return Ok(Vec::new());
                }
                // The type from the directory entry (no extra `stat` on most file systems).
                let ft = e.file_type().map_err(|source| SourceError::Io {
                    path: e.path(),
                    source,
                })?;
                walk(canon_root, root, format!("{rel}/{name}"), ft)
            })
            .collect::<Result<_, _>>()?;
        out.extend(parts.into_iter().flatten());
    } else if is_file {
        out.push(read_file(root, rel));
    } else {
        // A FIFO, socket or device: never opened (a FIFO would block the read), never skipped.
        out.push(RawFile {
            path: rel.clone(),
            content: Err(Finding::new(
                "input.unreadable",
                &rel,
                Pos::default(),
                "not a regular file (a FIFO, socket or device): it is not read",
            )
            .help("replace it with a regular file, or remove it from the ops repo")),
        });
    }
    Ok(out)
}

/// A symlink inside the repository whose target does not exist.
fn dangling(rel: &str, to: &str, why: &str) -> Finding {
    Finding::new(
        "input.unreadable",
        rel,
        Pos::default(),
        format!(
            "symlink target `{}` does not exist ({why})",
            sanitize_path(to)
        ),
    )
    .help("create the target file, or remove the dangling symlink")
}

/// Reads the ops repo files of a commit, without a checkout. `rev` is a branch, tag or sha.
pub fn read_commit(repo_path: &Path, rev: &str) -> Result<RepoFiles, SourceError> {
    let listing = list_commit(repo_path, rev)?;
    let repo = &listing.repo;
    let files: Vec<RawFile> = listing
        .files
        .into_iter()
        .map(|f| RawFile {
            content: f.blob.and_then(|oid| read_blob(repo, oid, &f.path)),
            path: f.path,
        })
        .collect();
    Ok(RepoFiles {
        origin: listing.origin,
        files,
    })
}

/// A file of a commit before its content is read: its blob id (a symlink's is its target's),
/// or why it is refused.
#[derive(Debug, Clone)]
pub struct ListedFile {
    /// `/`-separated path relative to the repository root.
    pub path: String,
    pub blob: Result<gix::ObjectId, Finding>,
}

/// The ops repo files of a commit, listed from its tree without reading their blobs.
pub struct CommitListing {
    pub origin: Origin,
    /// Sorted by path.
    pub files: Vec<ListedFile>,
    /// The opened repository, to read blobs from.
    pub repo: gix::Repository,
}

impl ListedFile {
    /// A path refused by its name.
    fn bad_path(path: &str, why: String) -> ListedFile {
        ListedFile {
            path: sanitize_path(path),
            blob: Err(bad_path_finding(path, why)),
        }
    }
}

/// Lists the ops repo files of a commit with their blob ids (the tree walk of [`read_commit`]:
/// same path checks, symlinks resolved inside the commit). Reads no blob but symlink targets.
pub fn list_commit(repo_path: &Path, rev: &str) -> Result<CommitListing, SourceError> {
    list_commit_with(repo_path, rev, |_| None).map(|(listing, _)| listing)
}

/// [`list_commit`], copying the files of every subtree that the memo of an earlier listing
/// holds instead of reading the tree (`old` is given the Git directory and returns the memo);
/// also returns this listing's memo.
pub fn list_commit_with(
    repo_path: &Path,
    rev: &str,
    old: impl FnOnce(&Path) -> Option<TreeMemo>,
) -> Result<(CommitListing, TreeMemo), SourceError> {
    let repo = gix::open(repo_path).map_err(|e| SourceError::OpenRepo {
        path: repo_path.to_owned(),
        message: e.to_string(),
    })?;
    let old = old(repo.git_dir());
    let (id, memo) = {
        let commit = resolve_commit(&repo, rev)?;
        let tree_err = |message: String| SourceError::Tree {
            rev: rev.to_owned(),
            message,
        };
        let root = commit.tree_id().map_err(|e| tree_err(e.to_string()))?;
        let memo = TreeMemo::walk(&repo, root.detach(), old.as_ref()).map_err(|e| tree_err(e.0))?;
        (commit.id.to_string(), memo)
    };
    let entries = memo.files();
    // Blob ids by path, for resolving symlinks: built on the first symlink only (a large repo
    // has tens of thousands of paths and usually no symlink).
    let by_path = std::cell::OnceCell::new();
    if !entries
        .iter()
        .any(|e| e.what == What::Blob && e.path.as_slice() == b"vakt.toml")
    {
        return Err(SourceError::NotOpsRepo {
            path: PathBuf::from(format!("{}@{rev}", repo_path.display())),
        });
    }
    let mut files: Vec<ListedFile> = Vec::with_capacity(entries.len());
    for e in entries {
        if e.what == What::Commit {
            continue;
        }
        let Ok(path) = std::str::from_utf8(&e.path) else {
            let lossy = String::from_utf8_lossy(&e.path).into_owned();
            if in_layout(&lossy) {
                files.push(ListedFile::bad_path(
                    &lossy,
                    "file name is not valid UTF-8".into(),
                ));
            }
            continue;
        };
        if !in_layout(path) {
            continue;
        }
        if let Some(why) = check_path_name(path) {
            files.push(ListedFile::bad_path(path, why));
            continue;
        }
        if path.rsplit('/').next().is_some_and(|n| n.starts_with('.')) {
            continue;
        }
        let oid = if e.what == What::Link {
            let target = read_blob(&repo, e.oid, path);
            let target = match target {
                Ok(t) => String::from_utf8_lossy(&t).into_owned(),
                Err(f) => {
                    files.push(ListedFile {
                        path: path.to_owned(),
                        blob: Err(f),
                    });
                    continue;
                }
            };
            let inside = resolve_link(path, &target);
            match (
                inside.as_deref(),
                inside.as_deref().and_then(|p| {
                    by_path
                        .get_or_init(|| blobs_by_path(entries))
                        .get(p.as_bytes())
                }),
            ) {
                (_, Some(oid)) => *oid,
                (Some(to), None) => {
                    files.push(ListedFile {
                        path: path.to_owned(),
                        blob: Err(dangling(path, to, "not in this commit")),
                    });
                    continue;
                }
                (None, None) => {
                    files.push(ListedFile {
                        path: path.to_owned(),
                        blob: Err(Finding::new(
                            "input.symlink-escape",
                            path,
                            Pos::default(),
                            format!("symlink to `{}` leaves the repository or points at nothing", sanitize_path(&target)),
                        )
                        .help("replace the symlink with the file itself; vakt never reads outside the repo")),
                    });
                    continue;
                }
            }
        } else {
            e.oid
        };
        files.push(ListedFile {
            path: path.to_owned(),
            blob: Ok(oid),
        });
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok((
        CommitListing {
            origin: Origin::Commit {
                repo: repo_path.to_owned(),
                rev: rev.to_owned(),
                id,
            },
            files,
            repo,
        },
        memo,
    ))
}

/// The blob ids of a tree listing by path.
fn blobs_by_path(entries: &[TreeFile]) -> std::collections::HashMap<&[u8], gix::ObjectId> {
    entries
        .iter()
        .filter(|e| e.what == What::Blob)
        .map(|e| (e.path.as_slice(), e.oid))
        .collect()
}

/// Resolves a revision to a commit.
pub fn resolve_commit<'r>(
    repo: &'r gix::Repository,
    rev: &str,
) -> Result<gix::Commit<'r>, SourceError> {
    let err = |message: String| SourceError::Revision {
        rev: rev.to_owned(),
        message,
    };
    let obj = repo
        .rev_parse_single(rev)
        .map_err(|e| err(e.to_string()))?
        .object()
        .map_err(|e| err(e.to_string()))?;
    obj.peel_to_commit().map_err(|e| err(e.to_string()))
}

/// Reads one blob, refusing one larger than [`MAX_FILE_BYTES`] unread.
pub fn read_blob(
    repo: &gix::Repository,
    oid: gix::ObjectId,
    path: &str,
) -> Result<Vec<u8>, Finding> {
    let header = repo
        .find_header(oid)
        .map_err(|e| Finding::new("input.unreadable", path, Pos::default(), e.to_string()))?;
    if header.size() > MAX_FILE_BYTES {
        return Err(too_large(path, header.size()).content.unwrap_err());
    }
    let obj = repo
        .find_object(oid)
        .map_err(|e| Finding::new("input.unreadable", path, Pos::default(), e.to_string()))?;
    Ok(obj.detach().data)
}

/// Resolves a relative symlink target against the link's directory; `None` if it escapes.
fn resolve_link(link_path: &str, target: &str) -> Option<String> {
    if target.starts_with('/') {
        return None;
    }
    let mut parts: Vec<&str> = link_path.split('/').collect();
    parts.pop();
    for seg in target.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            s => parts.push(s),
        }
    }
    Some(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_around_the_first_read_and_the_limit_are_read_whole_or_refused() {
        let dir = tempfile::tempdir().unwrap();
        let max = MAX_FILE_BYTES as usize;
        for len in [0, 1, 8191, 8192, 8193, 100_000, max] {
            let content: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            std::fs::write(dir.path().join("f"), &content).unwrap();
            let raw = read_file(dir.path(), "f".into());
            assert_eq!(
                raw.content.as_deref().ok(),
                Some(&content[..]),
                "{len} bytes"
            );
        }
        std::fs::write(dir.path().join("f"), vec![b'x'; max + 1]).unwrap();
        let f = read_file(dir.path(), "f".into()).content.unwrap_err();
        assert_eq!(f.rule, "input.too-large");
        assert!(
            f.message.contains(&format!("file is {} bytes", max + 1)),
            "{}",
            f.message
        );
    }

    #[test]
    fn link_resolution_stays_inside() {
        assert_eq!(
            resolve_link("config/a.toml", "b.toml").as_deref(),
            Some("config/b.toml")
        );
        assert_eq!(
            resolve_link("config/x/a.toml", "../b.toml").as_deref(),
            Some("config/b.toml")
        );
        assert_eq!(resolve_link("a.toml", "../../etc/passwd"), None);
        assert_eq!(resolve_link("config/a.toml", "/etc/passwd"), None);
    }

    #[test]
    fn path_names() {
        assert!(check_path_name("config/ok-name.toml").is_none());
        assert!(check_path_name("config/../x.toml").is_some());
        assert!(check_path_name("config/a\u{1b}b.toml").is_some());
    }
}
