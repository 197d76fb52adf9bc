//! Writing the site, atomically and only what changed.
//!
//! * **Atomic.** The new site is assembled in a hidden directory beside `out` and exchanged
//!   with it in one `renameat2(RENAME_EXCHANGE)`: a reader sees the old tree or the new one,
//!   never a mix and never a missing `out`. Where the file system cannot exchange, two renames
//!   are used (the old tree moves aside, the new one moves in), as on the first build.
//! * **Only what changed.** The `.vakt-site` marker holds a manifest: the digest of the
//!   build's inputs, the report of the build that wrote it, and the length and SHA-256 of
//!   every file. A file whose content hashes the same as in the previous build is hard-linked
//!   from it rather than written; a rebuild whose inputs hash the same as the previous build's
//!   writes nothing at all (see `build` in lib.rs).
//! * **Build time.** Pages say when their snapshot was taken. They are rendered with a fixed
//!   token in place of that time, compared in that form, and the token is replaced by the
//!   build time only in the files that are written; a page that did not change keeps the
//!   time it was last written, which is when its content was produced.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{IoSlice, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};

use crate::SiteError;

/// Marks a directory as written by `vakt site build`, so a rebuild may replace it; holds the
/// [`Manifest`].
pub const MARKER: &str = ".vakt-site";

/// The marker's content is bounded: a manifest of 100,000 files is about 12 MB.
const MARKER_MAX_BYTES: u64 = 64 << 20;

/// What the previous build wrote, read from its marker.
#[derive(Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub written_by: String,
    /// Digest of everything the build read (see `input_digest` in lib.rs).
    pub input: String,
    /// The report of the build that wrote this tree.
    pub report: serde_json::Value,
    /// Path → (length as written, SHA-256 of the content with the build-time token).
    pub files: BTreeMap<String, (u64, String)>,
}

impl Manifest {
    /// The manifest of the site in `out`, if it has one (a site from an older vakt has a
    /// plain-text marker: it is treated as having none, so everything is written).
    pub fn read(out: &Path) -> Option<Manifest> {
        let p = out.join(MARKER);
        let meta = std::fs::metadata(&p).ok()?;
        if !meta.is_file() || meta.len() > MARKER_MAX_BYTES {
            return None;
        }
        serde_json::from_slice(&std::fs::read(&p).ok()?).ok()
    }

    /// Every file the manifest lists is still in `out` with its length (a deleted or
    /// truncated file makes the next build write again).
    pub fn intact(&self, out: &Path) -> bool {
        self.files.par_iter().all(|(rel, (len, _))| {
            std::fs::symlink_metadata(out.join(rel)).is_ok_and(|m| m.is_file() && m.len() == *len)
        })
    }
}

/// What writing the site did.
#[derive(Debug, Clone, Copy, Default)]
pub struct Written {
    /// Bytes of the whole site.
    pub bytes: u64,
    /// Files whose content was written.
    pub written: usize,
    /// Files kept from the previous build (hard links).
    pub reused: usize,
}

/// A site assembled beside `out`, not yet visible.
pub struct Staged {
    tmp: PathBuf,
    out: PathBuf,
    input: String,
    sums: BTreeMap<String, (u64, String)>,
    pub written: Written,
}

fn sibling(out: &Path, tag: &str) -> PathBuf {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "site".into());
    out.with_file_name(format!(".{name}.{tag}-{}", std::process::id()))
}

/// Refuses to replace a non-empty directory that `vakt site build` did not write.
pub fn check_replaceable(out: &Path) -> Result<(), SiteError> {
    if out.exists() {
        let empty = std::fs::read_dir(out)
            .map_err(SiteError::io("read", out))?
            .next()
            .is_none();
        if !empty && !out.join(MARKER).is_file() {
            return Err(SiteError::ForeignOutput {
                path: out.to_owned(),
            });
        }
    }
    Ok(())
}

fn sum(content: &str) -> String {
    format!("{:x}", Sha256::digest(content.as_bytes()))
}

/// Assembles `files` (relative path, content with `token` standing for the build time) in a
/// hidden directory beside `out`. A file the `previous` build wrote with the same content is
/// hard-linked from `out`; the others are written with `token` replaced by `time`.
pub fn stage(
    out: &Path,
    files: &[(String, String)],
    token: &str,
    time: &str,
    input: String,
    previous: Option<&Manifest>,
) -> Result<Staged, SiteError> {
    check_replaceable(out)?;
    if let Some(parent) = out.parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent).map_err(SiteError::io("create", parent))?;
    }
    let tmp = sibling(out, "tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    match write_all(&tmp, out, files, token, time, previous) {
        Ok((sums, written)) => Ok(Staged {
            tmp,
            out: out.to_owned(),
            input,
            sums,
            written,
        }),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

type Sums = BTreeMap<String, (u64, String)>;

/// Every directory the files need (ancestors included), relative to the site root, parents
/// before children (a `BTreeSet` of `/`-separated paths sorts `a` before `a/b`).
fn directories(files: &[(String, String)]) -> BTreeSet<&str> {
    let mut dirs = BTreeSet::new();
    for (rel, _) in files {
        let mut end = rel.len();
        while let Some(i) = rel[..end].rfind('/') {
            if !dirs.insert(&rel[..i]) {
                break;
            }
            end = i;
        }
    }
    dirs
}

/// The files grouped by parent directory (`""` is the root), the largest group first.
fn by_directory(files: &[(String, String)]) -> Vec<(&str, Vec<usize>)> {
    let mut groups: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, (rel, _)) in files.iter().enumerate() {
        let dir = rel.rfind('/').map_or("", |at| &rel[..at]);
        groups.entry(dir).or_default().push(i);
    }
    let mut groups: Vec<_> = groups.into_iter().collect();
    groups.sort_by_key(|(_, files)| std::cmp::Reverse(files.len()));
    groups
}

fn open_dir(at: impl AsFd, path: &Path) -> std::io::Result<OwnedFd> {
    let path = if path.as_os_str().is_empty() {
        Path::new(".")
    } else {
        path
    };
    Ok(rustix::fs::openat(
        at,
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// How one file got into the staged tree: `(length, written rather than linked)`.
type Placed = (u64, bool);

/// Writes the staged tree. Creating an entry takes the parent directory's lock, and worker
/// threads creating entries in one directory spin on it (most of a cold build's system time
/// before this), so every directory has exactly one writer: the directory skeleton is made by
/// one thread while the others hash the files, then each directory's files are written (or
/// hard-linked from the previous tree) by one worker, relative to a descriptor of the
/// directory, with no stat or read-back of what was written.
fn write_all(
    tmp: &Path,
    out: &Path,
    files: &[(String, String)],
    token: &str,
    time: &str,
    previous: Option<&Manifest>,
) -> Result<(Sums, Written), SiteError> {
    std::fs::create_dir(tmp).map_err(SiteError::io("create", tmp))?;
    let root = open_dir(rustix::fs::CWD, tmp).map_err(SiteError::io("open", tmp))?;
    let dirs = directories(files);
    let (made, hashes) = rayon::join(
        || {
            dirs.iter().try_for_each(|d| {
                rustix::fs::mkdirat(&root, *d, Mode::from_raw_mode(0o777))
                    .map_err(|e| SiteError::io("create", &tmp.join(d))(e.into()))
            })
        },
        || {
            files
                .par_iter()
                .map(|(_, content)| sum(content))
                .collect::<Vec<String>>()
        },
    );
    made?;
    let by_file: Vec<Vec<(usize, Placed)>> = by_directory(files)
        .into_par_iter()
        .map(|(dir, members)| {
            let dir = Path::new(dir);
            let new = open_dir(&root, dir).map_err(SiteError::io("open", &tmp.join(dir)))?;
            // the previous tree's directory, opened when a file in it may be reused
            let old = previous
                .filter(|m| {
                    members.iter().any(|&i| {
                        m.files
                            .get(&files[i].0)
                            .is_some_and(|(_, h)| *h == hashes[i])
                    })
                })
                .and_then(|_| open_dir(rustix::fs::CWD, &out.join(dir)).ok());
            members
                .into_iter()
                .map(|i| {
                    let (rel, content) = &files[i];
                    let name = rel.rsplit('/').next().unwrap_or(rel);
                    if let Some(old) = &old
                        && let Some((len, _)) = previous
                            .and_then(|m| m.files.get(rel))
                            .filter(|(_, h)| *h == hashes[i])
                        && relink(old, &new, name, *len)
                    {
                        return Ok((i, (*len, false)));
                    }
                    let len = write_file(&new, name, content, token, time)
                        .map_err(SiteError::io("write", &tmp.join(rel)))?;
                    Ok((i, (len, true)))
                })
                .collect::<Result<Vec<_>, SiteError>>()
        })
        .collect::<Result<_, SiteError>>()?;
    let mut placed: Vec<Option<Placed>> = vec![None; files.len()];
    for (i, p) in by_file.into_iter().flatten() {
        placed[i] = Some(p);
    }
    let mut w = Written::default();
    let mut sums = BTreeMap::new();
    for (((rel, _), hash), p) in files.iter().zip(hashes).zip(placed) {
        let (len, wrote) = p.unwrap_or_default();
        w.bytes += len;
        if wrote {
            w.written += 1;
        } else {
            w.reused += 1;
        }
        sums.insert(rel.clone(), (len, hash));
    }
    Ok((sums, w))
}

/// Hard-links `name` from the previous tree when it is still a file of the length the
/// manifest records (a truncated or replaced file is written again).
fn relink(old: &OwnedFd, new: &OwnedFd, name: &str, len: u64) -> bool {
    let intact = rustix::fs::statat(old, name, AtFlags::SYMLINK_NOFOLLOW).is_ok_and(|st| {
        FileType::from_raw_mode(st.st_mode) == FileType::RegularFile
            && u64::try_from(st.st_size).ok() == Some(len)
    });
    intact && rustix::fs::linkat(old, name, new, name, AtFlags::empty()).is_ok()
}

/// Creates `name` (it must not exist: the staging directory is new) with `content`, the
/// build-time token replaced by `time`; returns the length written. The pieces between the
/// tokens are written as they are (one `writev`), not copied into a new string first.
fn write_file(
    dir: &OwnedFd,
    name: &str,
    content: &str,
    token: &str,
    time: &str,
) -> std::io::Result<u64> {
    let mut parts = Vec::new();
    for (k, piece) in content.split(token).enumerate() {
        if k > 0 {
            parts.push(IoSlice::new(time.as_bytes()));
        }
        if !piece.is_empty() {
            parts.push(IoSlice::new(piece.as_bytes()));
        }
    }
    let len = parts.iter().map(|p| p.len() as u64).sum();
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o666),
    )?;
    let mut file = std::fs::File::from(fd);
    let mut rest = &mut parts[..];
    while !rest.is_empty() {
        match file.write_vectored(rest) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut rest, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(len)
}

impl Staged {
    /// Writes the manifest (with `report`) and makes the staged site the content of `out`.
    pub fn publish(self, report: serde_json::Value) -> Result<(), SiteError> {
        let manifest = Manifest {
            written_by: "vakt site build; safe to replace".into(),
            input: self.input.clone(),
            report,
            files: self.sums.clone(),
        };
        let p = self.tmp.join(MARKER);
        let result = serde_json::to_vec(&manifest)
            .map_err(|e| SiteError::io("encode", &p)(std::io::Error::other(e)))
            .and_then(|bytes| std::fs::write(&p, bytes).map_err(SiteError::io("write", &p)))
            .and_then(|()| swap_in(&self.tmp, &self.out));
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
        result
    }
}

fn swap_in(tmp: &Path, out: &Path) -> Result<(), SiteError> {
    if !out.exists() {
        return std::fs::rename(tmp, out).map_err(SiteError::io("rename into place", out));
    }
    // One atomic exchange: `out` is the new tree and `tmp` the old one.
    let exchanged = rustix::fs::renameat_with(
        rustix::fs::CWD,
        tmp,
        rustix::fs::CWD,
        out,
        rustix::fs::RenameFlags::EXCHANGE,
    );
    if exchanged.is_ok() {
        remove_tree(tmp);
        return Ok(());
    }
    let old = sibling(out, "old");
    let _ = std::fs::remove_dir_all(&old);
    std::fs::rename(out, &old).map_err(SiteError::io("move aside", out))?;
    if let Err(e) = std::fs::rename(tmp, out) {
        // put the previous site back
        let _ = std::fs::rename(&old, out);
        return Err(SiteError::io("rename into place", out)(e));
    }
    remove_tree(&old);
    Ok(())
}

/// Removes a directory tree (a previous site is ~10k files). Like writing, every directory is
/// emptied by one worker (unlinks in one directory take its lock), level by level, and the
/// directories are removed deepest first. Best effort: what cannot be removed stays as a
/// hidden sibling of the output.
fn remove_tree(dir: &Path) {
    let mut level = vec![dir.to_owned()];
    let mut all = Vec::new();
    while !level.is_empty() {
        let next: Vec<PathBuf> = level
            .par_iter()
            .flat_map_iter(|d| {
                let mut subdirs = Vec::new();
                if let (Ok(rd), Ok(fd)) = (std::fs::read_dir(d), open_dir(rustix::fs::CWD, d)) {
                    for e in rd.flatten() {
                        if e.file_type().is_ok_and(|t| t.is_dir()) {
                            subdirs.push(e.path());
                        } else {
                            let _ = rustix::fs::unlinkat(&fd, e.file_name(), AtFlags::empty());
                        }
                    }
                }
                subdirs
            })
            .collect();
        all.append(&mut level);
        level = next;
    }
    for d in all.iter().rev() {
        let _ = std::fs::remove_dir(d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    const TOKEN: &str = "@@T@@";

    fn files(a: &str) -> Vec<(String, String)> {
        vec![
            ("index.html".into(), format!("<p>{a} at @@T@@</p>")),
            ("runbooks/x.html".into(), "<p>x at @@T@@</p>".into()),
            ("api/x.json".into(), "{}".into()),
        ]
    }

    fn build(out: &Path, files: &[(String, String)], time: &str) -> Written {
        let prev = Manifest::read(out);
        let s = stage(out, files, TOKEN, time, "in".into(), prev.as_ref()).unwrap();
        let w = s.written;
        s.publish(serde_json::json!({})).unwrap();
        w
    }

    #[test]
    fn only_changed_files_are_written_and_unchanged_ones_keep_their_time() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("site");
        let w = build(&out, &files("a"), "T1");
        assert_eq!((w.written, w.reused), (3, 0));
        let ino = std::fs::metadata(out.join("runbooks/x.html"))
            .unwrap()
            .ino();
        let w = build(&out, &files("b"), "T2");
        assert_eq!((w.written, w.reused), (1, 2));
        assert_eq!(
            std::fs::read_to_string(out.join("index.html")).unwrap(),
            "<p>b at T2</p>"
        );
        // the unchanged page is the same file, with the time of the build that wrote it
        let m = std::fs::metadata(out.join("runbooks/x.html")).unwrap();
        assert_eq!(m.ino(), ino);
        assert_eq!(
            std::fs::read_to_string(out.join("runbooks/x.html")).unwrap(),
            "<p>x at T1</p>"
        );
        let man = Manifest::read(&out).unwrap();
        assert_eq!(man.files.len(), 3);
        assert!(man.intact(&out));
        // no staging directories are left beside the output
        let left: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("site")]);
    }

    #[test]
    fn a_truncated_or_deleted_file_is_written_again() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("site");
        build(&out, &files("a"), "T1");
        std::fs::write(out.join("runbooks/x.html"), "").unwrap();
        std::fs::remove_file(out.join("api/x.json")).unwrap();
        assert!(!Manifest::read(&out).unwrap().intact(&out));
        let w = build(&out, &files("a"), "T2");
        assert_eq!((w.written, w.reused), (2, 1));
        assert_eq!(
            std::fs::read_to_string(out.join("runbooks/x.html")).unwrap(),
            "<p>x at T2</p>"
        );
        assert!(Manifest::read(&out).unwrap().intact(&out));
    }

    #[test]
    fn a_plain_marker_from_an_older_build_means_no_manifest() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("site");
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(out.join(MARKER), "written by vakt site build\n").unwrap();
        std::fs::write(out.join("index.html"), "old").unwrap();
        assert!(Manifest::read(&out).is_none());
        let w = build(&out, &files("a"), "T1");
        assert_eq!(w.written, 3);
    }

    #[test]
    fn directories_come_with_their_ancestors_parents_first_and_files_group_by_directory() {
        let files: Vec<(String, String)> = [
            "a/b/c/x.html",
            "a/b/y.html",
            "index.html",
            "a/b/c/z.json",
            "d/w.json",
        ]
        .iter()
        .map(|p| (p.to_string(), String::new()))
        .collect();
        let dirs: Vec<&str> = directories(&files).into_iter().collect();
        assert_eq!(dirs, vec!["a", "a/b", "a/b/c", "d"]);
        let groups = by_directory(&files);
        assert_eq!(groups[0], ("a/b/c", vec![0, 3]));
        let mut rest: Vec<_> = groups[1..].to_vec();
        rest.sort();
        assert_eq!(rest, vec![("", vec![2]), ("a/b", vec![1]), ("d", vec![4])]);
    }

    #[test]
    fn every_token_is_replaced_and_deep_trees_are_written_and_replaced_whole() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("site");
        let mut many: Vec<(String, String)> = (0..300)
            .map(|i| (format!("api/r/{i}.json"), format!("{{\"n\": {i}}}")))
            .collect();
        many.push((
            "runbooks/a/b/index.html".into(),
            format!("{TOKEN}<p>{TOKEN} and {TOKEN}</p>{TOKEN}"),
        ));
        many.push(("empty.txt".into(), String::new()));
        let w = build(&out, &many, "T1");
        assert_eq!((w.written, w.reused), (302, 0));
        assert_eq!(
            std::fs::read_to_string(out.join("runbooks/a/b/index.html")).unwrap(),
            "T1<p>T1 and T1</p>T1"
        );
        assert_eq!(
            std::fs::read_to_string(out.join("api/r/299.json")).unwrap(),
            "{\"n\": 299}"
        );
        assert_eq!(std::fs::read(out.join("empty.txt")).unwrap(), b"");
        let man = Manifest::read(&out).unwrap();
        assert_eq!(man.files["runbooks/a/b/index.html"].0, 20);
        // a rebuild with fewer files: the old tree, deep directories included, is gone
        let w = build(&out, &files("a"), "T2");
        assert_eq!(w.written, 3);
        assert!(!out.join("api/r").exists() && !out.join("runbooks/a").exists());
        let left: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("site")]);
    }

    #[test]
    fn a_foreign_directory_is_never_replaced() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("site");
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(out.join("important.txt"), "keep").unwrap();
        let e = stage(&out, &files("a"), TOKEN, "T", "in".into(), None);
        assert!(matches!(e, Err(SiteError::ForeignOutput { .. })));
        assert_eq!(
            std::fs::read_to_string(out.join("important.txt")).unwrap(),
            "keep"
        );
    }
}
