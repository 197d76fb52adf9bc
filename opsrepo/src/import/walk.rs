//! Bounded folder walks for the import: symlinks followed once (a loop is a problem line, not a
//! hang), depth and file count bounded, files read with a size bound.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::{MAX_FILES, MAX_WALK_DEPTH, Problem};

/// A file found under an input folder.
#[derive(Debug, Clone)]
pub(crate) struct Found {
    /// `/`-separated path relative to the walked root (the file name for a single file).
    pub rel: String,
    /// The path as the user gave it (for messages).
    pub shown: String,
    pub full: PathBuf,
}

/// Files under `root` (or `root` itself when it is a file) whose extension is in `exts`.
pub(crate) fn walk(root: &Path, exts: &[&str], problems: &mut Vec<Problem>) -> Vec<Found> {
    let mut out = Vec::new();
    let shown_root = root.display().to_string();
    let meta = match std::fs::metadata(root) {
        Ok(m) => m,
        Err(e) => {
            problems.push(Problem::new(
                &shown_root,
                format!("cannot be read: {e}"),
                "check the path (a symlink loop or a dangling symlink shows up here too)",
            ));
            return out;
        }
    };
    if meta.is_file() {
        let rel = root
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        out.push(Found {
            rel,
            shown: shown_root,
            full: root.to_owned(),
        });
        return out;
    }
    let mut seen = HashSet::new();
    let mut full_stop = false;
    rec(
        root,
        "",
        &shown_root,
        exts,
        0,
        &mut seen,
        &mut out,
        problems,
        &mut full_stop,
    );
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    out
}

#[allow(clippy::too_many_arguments)]
fn rec(
    dir: &Path,
    rel: &str,
    shown_root: &str,
    exts: &[&str],
    depth: usize,
    seen: &mut HashSet<PathBuf>,
    out: &mut Vec<Found>,
    problems: &mut Vec<Problem>,
    full: &mut bool,
) {
    let shown = |r: &str| {
        if r.is_empty() {
            shown_root.to_owned()
        } else {
            format!("{}/{r}", shown_root.trim_end_matches('/'))
        }
    };
    let canon = match dir.canonicalize() {
        Ok(c) => c,
        Err(e) => {
            problems.push(Problem::new(
                shown(rel),
                format!("cannot be read: {e}"),
                "check the path; a symlink loop or a dangling symlink shows up here",
            ));
            return;
        }
    };
    if !seen.insert(canon) {
        problems.push(Problem::new(
            shown(rel),
            "this folder was already walked: a symlink loops back to it",
            "remove the symlink loop; the folder's files were imported once",
        ));
        return;
    }
    if depth > MAX_WALK_DEPTH {
        problems.push(Problem::new(
            shown(rel),
            format!("nested deeper than {MAX_WALK_DEPTH} folders; not walked"),
            "import the deeper folder on its own",
        ));
        return;
    }
    let mut entries: Vec<_> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.filter_map(Result::ok).collect(),
        Err(e) => {
            problems.push(Problem::new(
                shown(rel),
                format!("cannot be listed: {e}"),
                "check its permissions",
            ));
            return;
        }
    };
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        if *full {
            return;
        }
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let child_rel = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        let path = e.path();
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(err) => {
                problems.push(Problem::new(
                    shown(&child_rel),
                    format!("cannot be read: {err}"),
                    "fix or remove it (a symlink loop or a dangling symlink shows up here)",
                ));
                continue;
            }
        };
        if meta.is_dir() {
            rec(
                &path,
                &child_rel,
                shown_root,
                exts,
                depth + 1,
                seen,
                out,
                problems,
                full,
            );
        } else if meta.is_file() {
            let ext = name
                .rsplit_once('.')
                .map_or("", |(_, x)| x)
                .to_ascii_lowercase();
            if !exts.contains(&ext.as_str()) {
                continue;
            }
            if out.len() >= MAX_FILES {
                problems.push(Problem::new(
                    shown(&child_rel),
                    format!("more than {MAX_FILES} files to import; this file and the rest were not read"),
                    "import the subfolders one at a time",
                ));
                *full = true;
                return;
            }
            out.push(Found {
                rel: child_rel.clone(),
                shown: shown(&child_rel),
                full: path,
            });
        }
    }
}

/// Reads a file of at most `max` bytes as UTF-8.
pub(crate) fn read_text(f: &Found, max: u64, problems: &mut Vec<Problem>) -> Option<String> {
    use std::io::Read;
    let file = match std::fs::File::open(&f.full) {
        Ok(file) => file,
        Err(e) => {
            problems.push(Problem::new(
                &f.shown,
                format!("cannot be read: {e}"),
                "check the file",
            ));
            return None;
        }
    };
    let mut bytes = Vec::new();
    if let Err(e) = file.take(max + 1).read_to_end(&mut bytes) {
        problems.push(Problem::new(
            &f.shown,
            format!("cannot be read: {e}"),
            "check the file",
        ));
        return None;
    }
    if bytes.len() as u64 > max {
        problems.push(Problem::new(
            &f.shown,
            format!("is larger than {max} bytes; not imported"),
            "split it into smaller files",
        ));
        return None;
    }
    match String::from_utf8(bytes) {
        Ok(s) => Some(s),
        Err(_) => {
            problems.push(Problem::new(
                &f.shown,
                "is not UTF-8; not imported",
                "convert it to UTF-8",
            ));
            None
        }
    }
}
