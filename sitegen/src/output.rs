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
use std::sync::Mutex;

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

impl Staged {
    /// Files in the staged site (the marker not counted).
    pub fn files(&self) -> usize {
        self.sums.len()
    }

    /// HTML pages in the staged site.
    pub fn pages(&self) -> usize {
        self.sums.keys().filter(|p| p.ends_with(".html")).count()
    }
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
/// hard-linked from `out`; the others are written with `token` replaced by `time`. (The build
/// streams its files into a [`Stager`] instead; this is the same for a list made in advance.)
#[cfg(test)]
pub fn stage(
    out: &Path,
    files: &[(String, String)],
    token: &str,
    time: &str,
    input: String,
    previous: Option<&Manifest>,
) -> Result<Staged, SiteError> {
    let stager = Stager::begin(out, token, time, previous)?;
    stager.make_dirs(directories(files))?;
    by_directory(files)
        .into_par_iter()
        .try_for_each(|(dir, members)| {
            let mut w = stager.dir(dir)?;
            members.into_iter().try_for_each(|i| {
                let (rel, content) = &files[i];
                w.put(rel.rsplit('/').next().unwrap_or(rel), content)
            })
        })?;
    Ok(stager.finish(input))
}

type Sums = BTreeMap<String, (u64, String)>;

/// Every directory the files need (ancestors included), relative to the site root, parents
/// before children (a `BTreeSet` of `/`-separated paths sorts `a` before `a/b`).
#[cfg(test)]
fn directories<S: AsRef<str>>(files: &[(S, String)]) -> BTreeSet<&str> {
    dirs_of(files.iter().map(|(rel, _)| rel.as_ref()))
}

/// Every directory the paths need (ancestors included), parents before children.
pub fn dirs_of<'p>(paths: impl IntoIterator<Item = &'p str>) -> BTreeSet<&'p str> {
    let mut dirs = BTreeSet::new();
    for rel in paths {
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
#[cfg(test)]
fn by_directory<S: AsRef<str>>(files: &[(S, String)]) -> Vec<(&str, Vec<usize>)> {
    let mut groups: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, (rel, _)) in files.iter().enumerate() {
        let rel = rel.as_ref();
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

/// Marks the staging directory as the top of a directory hierarchy (`chattr +T`,
/// `FS_TOPDIR_FL`), so ext4's Orlov allocator places its subdirectories (and with them the
/// site's ~15,000 inodes) in block groups of their own instead of the output's parent's.
///
/// Why: ext4 without a journal will not reuse an inode freed in the last 60 s (360 s while its
/// inode-table block is dirty), and every new inode scans the group's free inodes from the
/// start, looking each one up; after tens of thousands of deletions near the output (the
/// previous build's tree, a test run, a `cargo clean`) each create costs hundreds of
/// microseconds of system time, most of a cold build (profile: `recently_deleted` and
/// `find_get_block_common` under `ext4_create`). For a top directory's subdirectories the
/// allocator looks, from a start given by the hash of the name, for a group with more free
/// inodes and blocks than average and the fewest directories, not near the parent; the
/// names vary per build ([`Stager::make_dirs`]), so that is seldom the group a tree was just
/// deleted from. Measured after 20,000 files were deleted beside the output: 6.8 s of system
/// time without the flag, 0.4 s with it.
///
/// Best effort: other file systems ignore or refuse the flag, and nothing depends on it (the
/// layout and content of the site are the same; only where its inodes live differs).
fn mark_top_of_hierarchy(dir: &OwnedFd) {
    use rustix::fs::IFlags;
    if let Ok(flags) = rustix::fs::ioctl_getflags(dir)
        && !flags.contains(IFlags::TOPDIR)
    {
        let _ = rustix::fs::ioctl_setflags(dir, flags | IFlags::TOPDIR);
    }
}

/// A string that differs between calls and between builds (process id, time, a counter).
fn unique_suffix() -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{}-{nanos}-{n}", std::process::id())
}

/// A site being assembled in a hidden directory beside `out`, fed from many threads while
/// pages are still being rendered: the build streams every file in as soon as it exists
/// rather than rendering the whole site into memory first.
///
/// Creating an entry takes the parent directory's lock, and worker threads creating entries
/// in one directory spin on it (most of a cold build's system time, session 7), so the rule
/// is one writer per directory: [`Stager::make_dirs`] makes the directory skeleton on one
/// thread, and each directory is then written through one [`DirWriter`] at a time (relative
/// to a descriptor of the directory, no stat or read-back of what was written). A file the
/// previous build wrote with the same content is hard-linked from it instead.
///
/// Dropping a `Stager` without [`Stager::finish`] removes the staging directory (a failed
/// build leaves nothing behind).
pub struct Stager<'a> {
    tmp: PathBuf,
    out: &'a Path,
    root: OwnedFd,
    token: &'a str,
    time: &'a str,
    previous: Option<&'a Manifest>,
    done: Mutex<(Sums, Written)>,
    finished: bool,
}

impl<'a> Stager<'a> {
    /// Creates the (empty) staging directory beside `out`. Files are written with `token`
    /// replaced by `time`; `previous` is the manifest of the site in `out`, if any.
    pub fn begin(
        out: &'a Path,
        token: &'a str,
        time: &'a str,
        previous: Option<&'a Manifest>,
    ) -> Result<Self, SiteError> {
        check_replaceable(out)?;
        if let Some(parent) = out.parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent).map_err(SiteError::io("create", parent))?;
        }
        let tmp = sibling(out, "tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir(&tmp).map_err(SiteError::io("create", &tmp))?;
        let root = match open_dir(rustix::fs::CWD, &tmp) {
            Ok(fd) => fd,
            Err(e) => {
                let _ = std::fs::remove_dir(&tmp);
                return Err(SiteError::io("open", &tmp)(e));
            }
        };
        mark_top_of_hierarchy(&root);
        Ok(Stager {
            tmp,
            out,
            root,
            token,
            time,
            previous,
            done: Mutex::new((Sums::new(), Written::default())),
            finished: false,
        })
    }

    /// Creates directories (relative to the site root; each parent before its children, as
    /// [`dirs_of`] returns them), one after another on the calling thread.
    ///
    /// A directory directly below the root is made under a name of its own and then renamed:
    /// ext4 places a subdirectory of a top directory (see [`mark_top_of_hierarchy`]) by
    /// searching block groups from a start derived from the hash of its name, so `runbooks`
    /// would land in the same group in every build, the group the previous build's tree was
    /// just deleted from (after a rebuild, or a clean-up); a name that differs per build
    /// starts the search somewhere else.
    pub fn make_dirs<'d>(&self, dirs: impl IntoIterator<Item = &'d str>) -> Result<(), SiteError> {
        let mode = Mode::from_raw_mode(0o777);
        dirs.into_iter().try_for_each(|d| {
            let err = |e: rustix::io::Errno| SiteError::io("create", &self.tmp.join(d))(e.into());
            if d.contains('/') {
                return rustix::fs::mkdirat(&self.root, d, mode).map_err(err);
            }
            let scratch = format!(".{d}.{}", unique_suffix());
            rustix::fs::mkdirat(&self.root, &scratch, mode).map_err(err)?;
            rustix::fs::renameat(&self.root, &scratch, &self.root, d).map_err(|e| {
                let _ = rustix::fs::unlinkat(&self.root, &scratch, AtFlags::REMOVEDIR);
                err(e)
            })
        })
    }

    /// A writer for the files of directory `rel` (`""` is the root), which must exist. Only
    /// one writer per directory should be open at a time (see the type's documentation).
    pub fn dir(&self, rel: &str) -> Result<DirWriter<'_, 'a>, SiteError> {
        let fd = open_dir(&self.root, Path::new(rel))
            .map_err(SiteError::io("open", &self.tmp.join(rel)))?;
        Ok(DirWriter {
            stager: self,
            rel: rel.to_owned(),
            fd,
            old: None,
            sums: Vec::new(),
            written: Written::default(),
        })
    }

    /// Writes one file at `rel` (its directory must exist) through a writer of its own: for
    /// files alone in their directory, such as `runbooks/<id>/index.html`.
    pub fn put(&self, rel: &str, content: &str) -> Result<(), SiteError> {
        let (dir, name) = rel.rsplit_once('/').unwrap_or(("", rel));
        self.dir(dir)?.put(name, content)
    }

    /// Everything has been written: the staged tree, ready to publish.
    pub fn finish(mut self, input: String) -> Staged {
        self.finished = true;
        let (sums, written) = std::mem::take(&mut *lock(&self.done));
        Staged {
            tmp: self.tmp.clone(),
            out: self.out.to_owned(),
            input,
            sums,
            written,
        }
    }
}

impl Drop for Stager<'_> {
    fn drop(&mut self) {
        if !self.finished {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Writes the files of one staged directory; what it wrote is added to the [`Stager`]'s
/// manifest when it is dropped.
pub struct DirWriter<'s, 'a> {
    stager: &'s Stager<'a>,
    rel: String,
    fd: OwnedFd,
    /// The previous tree's directory, opened when a file in it may first be reused.
    old: Option<Option<OwnedFd>>,
    sums: Vec<(String, (u64, String))>,
    written: Written,
}

impl DirWriter<'_, '_> {
    /// Adds file `name` with `content` (the build-time token standing for the time): a
    /// hard link to the previous build's file when that has the same content, else written.
    pub fn put(&mut self, name: &str, content: &str) -> Result<(), SiteError> {
        let rel = if self.rel.is_empty() {
            name.to_owned()
        } else {
            format!("{}/{name}", self.rel)
        };
        let hash = sum(content);
        let st = self.stager;
        if let Some((len, _)) = st
            .previous
            .and_then(|m| m.files.get(&rel))
            .filter(|(_, h)| *h == hash)
        {
            let old = self
                .old
                .get_or_insert_with(|| open_dir(rustix::fs::CWD, &st.out.join(&self.rel)).ok());
            if let Some(old) = old
                && relink(old, &self.fd, name, *len)
            {
                self.written.bytes += len;
                self.written.reused += 1;
                self.sums.push((rel, (*len, hash)));
                return Ok(());
            }
        }
        let len = write_file(&self.fd, name, content, st.token, st.time)
            .map_err(SiteError::io("write", &st.tmp.join(&rel)))?;
        self.written.bytes += len;
        self.written.written += 1;
        self.sums.push((rel, (len, hash)));
        Ok(())
    }
}

impl Drop for DirWriter<'_, '_> {
    fn drop(&mut self) {
        let mut done = lock(&self.stager.done);
        done.0.extend(self.sums.drain(..));
        done.1.bytes += self.written.bytes;
        done.1.written += self.written.written;
        done.1.reused += self.written.reused;
    }
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
        // the top directories were made under scratch names and renamed: none is left over
        let mut top: Vec<_> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        top.sort();
        assert_eq!(top, [MARKER, "api", "index.html", "runbooks"]);
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
