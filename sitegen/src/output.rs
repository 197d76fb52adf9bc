//! Writing the site: everything goes into a temporary directory beside the output, which then
//! replaces the output in two renames. A failed build leaves the previous site untouched.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::SiteError;

/// Marks a directory as written by `vakt site build`, so a rebuild may replace it.
pub const MARKER: &str = ".vakt-site";

fn sibling(out: &Path, tag: &str) -> PathBuf {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "site".into());
    out.with_file_name(format!(".{name}.{tag}-{}", std::process::id()))
}

/// Writes `files` (relative path, content) as the new content of `out`. Returns bytes written.
pub fn write_atomically(out: &Path, files: &[(String, String)]) -> Result<u64, SiteError> {
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
    if let Some(parent) = out.parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent).map_err(SiteError::io("create", parent))?;
    }
    let tmp = sibling(out, "tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    let previous = out.join(MARKER).is_file().then_some(out);
    let result = write_all(&tmp, files, previous).and_then(|bytes| {
        swap_in(&tmp, out)?;
        Ok(bytes)
    });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

/// Writes every file under `tmp`. A file identical to the one in the `previous` site is
/// hard-linked instead of rewritten: a rebuild then writes only what changed, and removing
/// the previous tree frees only what changed.
fn write_all(
    tmp: &Path,
    files: &[(String, String)],
    previous: Option<&Path>,
) -> Result<u64, SiteError> {
    std::fs::create_dir_all(tmp).map_err(SiteError::io("create", tmp))?;
    let dirs: BTreeSet<PathBuf> = files
        .iter()
        .filter_map(|(p, _)| Path::new(p).parent().map(|d| tmp.join(d)))
        .collect();
    dirs.par_iter()
        .try_for_each(|d| std::fs::create_dir_all(d).map_err(SiteError::io("create", d)))?;
    files
        .par_iter()
        .map(|(rel, content)| {
            let p = tmp.join(rel);
            if let Some(prev) = previous {
                let old = prev.join(rel);
                let same = std::fs::metadata(&old)
                    .is_ok_and(|m| m.is_file() && m.len() == content.len() as u64)
                    && std::fs::read(&old).is_ok_and(|b| b == content.as_bytes());
                if same && std::fs::hard_link(&old, &p).is_ok() {
                    return Ok(content.len() as u64);
                }
            }
            std::fs::write(&p, content).map_err(SiteError::io("write", &p))?;
            Ok(content.len() as u64)
        })
        .chain(rayon::iter::once({
            let p = tmp.join(MARKER);
            std::fs::write(&p, "written by vakt site build; safe to replace\n")
                .map_err(SiteError::io("write", &p))
                .map(|()| 0)
        }))
        .sum()
}

fn swap_in(tmp: &Path, out: &Path) -> Result<(), SiteError> {
    if out.exists() {
        let old = sibling(out, "old");
        let _ = std::fs::remove_dir_all(&old);
        std::fs::rename(out, &old).map_err(SiteError::io("move aside", out))?;
        if let Err(e) = std::fs::rename(tmp, out) {
            // put the previous site back
            let _ = std::fs::rename(&old, out);
            return Err(SiteError::io("rename into place", out)(e));
        }
        remove_tree(&old);
    } else {
        std::fs::rename(tmp, out).map_err(SiteError::io("rename into place", out))?;
    }
    Ok(())
}

/// Removes a directory tree, unlinking files in parallel (a previous site is ~10k files).
/// Best effort: what cannot be removed stays as a hidden `.<out>.old-<pid>` sibling.
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
