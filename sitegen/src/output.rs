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
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

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

fn write_all(
    tmp: &Path,
    out: &Path,
    files: &[(String, String)],
    token: &str,
    time: &str,
    previous: Option<&Manifest>,
) -> Result<(Sums, Written), SiteError> {
    std::fs::create_dir_all(tmp).map_err(SiteError::io("create", tmp))?;
    let dirs: BTreeSet<PathBuf> = files
        .iter()
        .filter_map(|(p, _)| Path::new(p).parent().map(|d| tmp.join(d)))
        .collect();
    dirs.par_iter()
        .try_for_each(|d| std::fs::create_dir_all(d).map_err(SiteError::io("create", d)))?;
    let results: Vec<(String, u64, String, bool)> = files
        .par_iter()
        .map(|(rel, content)| {
            let p = tmp.join(rel);
            let hash = sum(content);
            if let Some((len, _)) = previous
                .and_then(|m| m.files.get(rel))
                .filter(|(_, h)| *h == hash)
            {
                let old = out.join(rel);
                let same_len =
                    std::fs::symlink_metadata(&old).is_ok_and(|m| m.is_file() && m.len() == *len);
                if same_len && std::fs::hard_link(&old, &p).is_ok() {
                    return Ok((rel.clone(), *len, hash, false));
                }
            }
            let body = if content.contains(token) {
                std::borrow::Cow::Owned(content.replace(token, time))
            } else {
                std::borrow::Cow::Borrowed(content.as_str())
            };
            std::fs::write(&p, body.as_bytes()).map_err(SiteError::io("write", &p))?;
            Ok((rel.clone(), body.len() as u64, hash, true))
        })
        .collect::<Result<_, SiteError>>()?;
    let mut w = Written::default();
    let mut sums = BTreeMap::new();
    for (rel, len, hash, wrote) in results {
        w.bytes += len;
        if wrote {
            w.written += 1;
        } else {
            w.reused += 1;
        }
        sums.insert(rel, (len, hash));
    }
    Ok((sums, w))
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

/// Removes a directory tree, unlinking files in parallel (a previous site is ~10k files).
/// Best effort: what cannot be removed stays as a hidden sibling of the output.
fn remove_tree(dir: &Path) {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_owned()];
    let mut i = 0;
    while i < dirs.len() {
        if let Ok(rd) = std::fs::read_dir(&dirs[i]) {
            for e in rd.flatten() {
                match e.file_type() {
                    Ok(t) if t.is_dir() => dirs.push(e.path()),
                    _ => files.push(e.path()),
                }
            }
        }
        i += 1;
    }
    files.par_iter().for_each(|f| {
        let _ = std::fs::remove_file(f);
    });
    for d in dirs.iter().rev() {
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
