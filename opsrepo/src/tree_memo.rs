//! Listing a commit's tree without reading the subtrees an earlier listing already saw.
//!
//! A tree id names the tree's whole content, so the files under a tree remembered from an
//! earlier commit are exactly the files under the same tree in this one: a remembered tree is
//! never read again and can never be stale. A pull request that changes one tenant file reads
//! the trees on that file's path (the root, `config/`, `config/tenants/`, the tenant's
//! directory) and copies every other directory's files from the memo.
//!
//! The memo is kept by the validation cache next to its log ([`TreeMemo::encode`],
//! [`TreeMemo::decode`]); a damaged memo is ignored, never an error.

use std::collections::HashMap;

use gix::prelude::FindExt;

/// What a non-tree entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum What {
    Blob,
    Link,
    /// A submodule (listed, never read).
    Commit,
}

/// A file, symlink or submodule of a commit, with its path from the root.
#[derive(Debug, Clone)]
pub(crate) struct TreeFile {
    pub path: Vec<u8>,
    pub what: What,
    pub oid: gix::ObjectId,
}

/// A tree of the listing: its files are `files[start..end]`, and its path prefix (with the
/// trailing `/`) is the first `prefix` bytes of each of their paths.
#[derive(Debug, Clone, Copy)]
struct MemoTree {
    oid: gix::ObjectId,
    start: u32,
    end: u32,
    prefix: u32,
}

/// Every file of one commit, depth first, and every tree with the range of its files.
#[derive(Debug, Clone, Default)]
pub struct TreeMemo {
    files: Vec<TreeFile>,
    /// In pre-order: a tree's subtrees follow it, before any tree that is not under it.
    trees: Vec<MemoTree>,
    index: HashMap<gix::ObjectId, u32>,
    /// Tree objects this listing read (the others came from the memo).
    read: usize,
}

/// Largest memo read or written (a listing of 1 million files is about 80 MB).
const MAX_BYTES: usize = 256 * 1024 * 1024;
const MAGIC: &[u8; 16] = b"vakt-trees-v1\n\0\0";

/// One entry of a tree object: name, what it is (`None`: a tree) and id.
type RawEntry = (Vec<u8>, Option<What>, gix::ObjectId);

/// Why a tree could not be listed.
#[derive(Debug)]
pub(crate) struct WalkError(pub String);

impl TreeMemo {
    /// The root tree's id, if this memo holds a listing.
    pub fn root(&self) -> Option<gix::ObjectId> {
        self.trees.first().map(|t| t.oid)
    }

    /// Number of files listed.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether the memo lists nothing.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Tree objects the walk that made this memo read (the others came from the old memo).
    pub fn trees_read(&self) -> usize {
        self.read
    }

    pub(crate) fn files(&self) -> &[TreeFile] {
        &self.files
    }

    /// Lists the tree `root` of `repo`, copying every subtree that `old` holds instead of
    /// reading it.
    pub(crate) fn walk(
        repo: &gix::Repository,
        root: gix::ObjectId,
        old: Option<&TreeMemo>,
    ) -> Result<TreeMemo, WalkError> {
        // Sized like the last listing: a commit of a large repo rarely changes its size much,
        // and growing vectors of 50,000 files copies them into fresh pages each time.
        let mut new = TreeMemo {
            files: Vec::with_capacity(old.map_or(0, |o| o.files.len() + o.files.len() / 64)),
            trees: Vec::with_capacity(old.map_or(0, |o| o.trees.len() + o.trees.len() / 64)),
            ..TreeMemo::default()
        };
        if let Some(old) = old
            && new.copy_from(old, root, &[])
        {
            new.build_index();
            return Ok(new);
        }
        struct Frame {
            tree: usize,
            entries: Vec<RawEntry>,
            next: usize,
        }
        let mut buf = Vec::new();
        let mut prefix: Vec<u8> = Vec::new();
        new.trees.push(MemoTree {
            oid: root,
            start: 0,
            end: 0,
            prefix: 0,
        });
        let mut stack = vec![Frame {
            tree: 0,
            entries: read_tree(repo, root, &mut buf)?,
            next: 0,
        }];
        new.read = 1;
        while let Some(top) = stack.last_mut() {
            let Some((name, what, oid)) = top.entries.get(top.next).cloned() else {
                let t = top.tree;
                new.trees[t].end = u32::try_from(new.files.len()).map_err(too_many)?;
                stack.pop();
                let parent = stack
                    .last()
                    .map_or(0, |f| new.trees[f.tree].prefix as usize);
                prefix.truncate(parent);
                continue;
            };
            top.next += 1;
            let mut path = Vec::with_capacity(prefix.len() + name.len() + 1);
            path.extend_from_slice(&prefix);
            path.extend_from_slice(&name);
            match what {
                Some(what) => new.files.push(TreeFile { path, what, oid }),
                None => {
                    path.push(b'/');
                    if let Some(old) = old
                        && new.copy_from(old, oid, &path)
                    {
                        continue;
                    }
                    if stack.len() > 4096 {
                        return Err(WalkError("trees are nested more than 4096 deep".into()));
                    }
                    new.trees.push(MemoTree {
                        oid,
                        start: u32::try_from(new.files.len()).map_err(too_many)?,
                        end: 0,
                        prefix: u32::try_from(path.len()).map_err(too_many)?,
                    });
                    prefix = path;
                    let entries = read_tree(repo, oid, &mut buf)?;
                    new.read += 1;
                    stack.push(Frame {
                        tree: new.trees.len() - 1,
                        entries,
                        next: 0,
                    });
                }
            }
        }
        new.build_index();
        Ok(new)
    }

    /// Appends the files of tree `oid` from `old` under `prefix`, with the trees under it;
    /// `false` (and nothing appended) if `old` does not hold that tree or is inconsistent.
    fn copy_from(&mut self, old: &TreeMemo, oid: gix::ObjectId, prefix: &[u8]) -> bool {
        let Some(&i) = old.index.get(&oid) else {
            return false;
        };
        let t = old.trees[i as usize];
        let (s, e, plen) = (t.start as usize, t.end as usize, t.prefix as usize);
        let Some(files) = old.files.get(s..e) else {
            return false;
        };
        let (files_len, trees_len) = (self.files.len(), self.trees.len());
        let base = files_len;
        for f in files {
            let Some(rel) = f.path.get(plen..) else {
                self.files.truncate(files_len);
                return false;
            };
            let mut path = Vec::with_capacity(prefix.len() + rel.len());
            path.extend_from_slice(prefix);
            path.extend_from_slice(rel);
            self.files.push(TreeFile {
                path,
                what: f.what,
                oid: f.oid,
            });
        }
        // The trees under it follow it in pre-order and start inside its range (an empty tree
        // at its very end is left out: it is read again if a later listing needs it).
        for (j, u) in old.trees[i as usize..].iter().enumerate() {
            let (us, ue) = (u.start as usize, u.end as usize);
            if j > 0 && us >= e {
                break;
            }
            let ok = us >= s && ue <= e && u.prefix as usize >= plen;
            let fit = |n: usize| u32::try_from(n).ok();
            match (
                ok,
                fit(us - s + base),
                fit(ue.wrapping_sub(s) + base),
                fit((u.prefix as usize).wrapping_sub(plen) + prefix.len()),
            ) {
                (true, Some(start), Some(end), Some(p)) => self.trees.push(MemoTree {
                    oid: u.oid,
                    start,
                    end,
                    prefix: p,
                }),
                _ => {
                    self.files.truncate(files_len);
                    self.trees.truncate(trees_len);
                    return false;
                }
            }
        }
        true
    }

    fn build_index(&mut self) {
        self.index = HashMap::with_capacity(self.trees.len());
        for (i, t) in self.trees.iter().enumerate() {
            self.index.entry(t.oid).or_insert(i as u32);
        }
    }

    /// The memo as bytes: a header, the files, the trees and a CRC-32 of all that; `None` if
    /// it would be larger than the bound.
    pub fn encode(&self) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(32 + self.files.len() * 64 + self.trees.len() * 32);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&u32::try_from(self.files.len()).ok()?.to_le_bytes());
        out.extend_from_slice(&u32::try_from(self.trees.len()).ok()?.to_le_bytes());
        for f in &self.files {
            out.push(match f.what {
                What::Blob => 0,
                What::Link => 1,
                What::Commit => 2,
            });
            out.extend_from_slice(f.oid.as_slice().get(..20)?);
            out.extend_from_slice(&u16::try_from(f.path.len()).ok()?.to_le_bytes());
            out.extend_from_slice(&f.path);
        }
        for t in &self.trees {
            out.extend_from_slice(t.oid.as_slice().get(..20)?);
            for v in [t.start, t.end, t.prefix] {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        (out.len() <= MAX_BYTES).then_some(out)
    }

    /// Reads a memo written by [`TreeMemo::encode`]; `None` if it is damaged in any way.
    pub fn decode(b: &[u8]) -> Option<TreeMemo> {
        if b.len() > MAX_BYTES || b.len() < MAGIC.len() + 12 || !b.starts_with(MAGIC) {
            return None;
        }
        let (body, crc) = b.split_at(b.len() - 4);
        if crc32fast::hash(body).to_le_bytes() != crc {
            return None;
        }
        let mut r = &body[MAGIC.len()..];
        let mut take = |n: usize| -> Option<&[u8]> {
            let (h, t) = r.split_at_checked(n)?;
            r = t;
            Some(h)
        };
        let u32_at = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let nfiles = u32_at(take(4)?) as usize;
        let ntrees = u32_at(take(4)?) as usize;
        // Every file takes at least 23 bytes and every tree 32: counts beyond that are damage.
        if nfiles.checked_mul(23)? > body.len() || ntrees.checked_mul(32)? > body.len() {
            return None;
        }
        let mut files = Vec::with_capacity(nfiles);
        for _ in 0..nfiles {
            let what = match take(1)?[0] {
                0 => What::Blob,
                1 => What::Link,
                2 => What::Commit,
                _ => return None,
            };
            let oid = gix::ObjectId::try_from(take(20)?).ok()?;
            let l = take(2)?;
            let len = u16::from_le_bytes([l[0], l[1]]) as usize;
            let path = take(len)?.to_vec();
            files.push(TreeFile { path, what, oid });
        }
        let mut trees = Vec::with_capacity(ntrees);
        for _ in 0..ntrees {
            let oid = gix::ObjectId::try_from(take(20)?).ok()?;
            let v = take(12)?;
            let t = MemoTree {
                oid,
                start: u32_at(&v[0..4]),
                end: u32_at(&v[4..8]),
                prefix: u32_at(&v[8..12]),
            };
            if t.start > t.end || t.end as usize > nfiles {
                return None;
            }
            trees.push(t);
        }
        if !r.is_empty() {
            return None;
        }
        let mut memo = TreeMemo {
            files,
            trees,
            ..Default::default()
        };
        memo.build_index();
        Some(memo)
    }
}

fn too_many(_: std::num::TryFromIntError) -> WalkError {
    WalkError("the commit has more than 4 billion files".into())
}

/// The entries of one tree object: name, what it is (`None`: a tree) and id.
fn read_tree(
    repo: &gix::Repository,
    oid: gix::ObjectId,
    buf: &mut Vec<u8>,
) -> Result<Vec<RawEntry>, WalkError> {
    let tree = repo
        .objects
        .find_tree_iter(&oid, buf)
        .map_err(|e| WalkError(format!("tree {oid}: {e}")))?;
    let mut out = Vec::new();
    for e in tree {
        let e = e.map_err(|e| WalkError(format!("tree {oid}: {e}")))?;
        let what = if e.mode.is_tree() {
            None
        } else if e.mode.is_link() {
            Some(What::Link)
        } else if e.mode.is_commit() {
            Some(What::Commit)
        } else {
            Some(What::Blob)
        };
        out.push((e.filename.to_vec(), what, e.oid.to_owned()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::process::Command;

    fn git(dir: &Path, args: &[&str]) -> String {
        let out = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["-c", "user.name=t", "-c", "user.email=t@vakt.invalid"])
            .args(args)
            .output()
            .expect("git");
        assert!(out.status.success(), "git {args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    fn write(dir: &Path, rel: &str, text: &str) {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    /// Commits the work tree and returns the root tree id.
    fn commit(dir: &Path, msg: &str) -> gix::ObjectId {
        git(dir, &["add", "-A"]);
        git(dir, &["commit", "-qm", msg]);
        gix::ObjectId::from_hex(git(dir, &["rev-parse", "HEAD^{tree}"]).as_bytes()).unwrap()
    }

    /// What git itself lists: (path, what, id), in path order.
    fn git_listing(dir: &Path) -> Vec<(Vec<u8>, What, gix::ObjectId)> {
        let out = git(dir, &["ls-tree", "-r", "-z", "HEAD"]);
        let mut v: Vec<_> = out
            .split('\0')
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (meta, path) = l.split_once('\t').unwrap();
                let mut m = meta.split(' ');
                let (mode, _, oid) = (m.next().unwrap(), m.next(), m.next().unwrap());
                let what = match mode {
                    "120000" => What::Link,
                    "160000" => What::Commit,
                    _ => What::Blob,
                };
                (
                    path.as_bytes().to_vec(),
                    what,
                    gix::ObjectId::from_hex(oid.as_bytes()).unwrap(),
                )
            })
            .collect();
        v.sort();
        v
    }

    fn listed(m: &TreeMemo) -> Vec<(Vec<u8>, What, gix::ObjectId)> {
        let mut v: Vec<_> = m
            .files()
            .iter()
            .map(|f| (f.path.clone(), f.what, f.oid))
            .collect();
        v.sort();
        v
    }

    impl PartialOrd for What {
        fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
            Some(self.cmp(o))
        }
    }
    impl Ord for What {
        fn cmp(&self, o: &Self) -> std::cmp::Ordering {
            (*self as u8).cmp(&(*o as u8))
        }
    }

    #[test]
    fn a_listing_from_the_memo_is_what_git_lists() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path();
        git(dir, &["init", "-q"]);
        for t in 0..30 {
            write(
                dir,
                &format!("config/tenants/t{t:02}/tenant.toml"),
                &format!("id = \"t{t}\"\n"),
            );
            write(dir, &format!("inventory/placement/t{t:02}.toml"), "x = 1\n");
        }
        write(dir, "inventory/nodes/a/b/c/deep.toml", "deep = true\n");
        write(dir, "vakt.toml", "[environments]\n");
        #[cfg(unix)]
        std::os::unix::fs::symlink("../vakt.toml", dir.join("config/link.toml")).unwrap();
        let a = commit(dir, "a");
        let repo = gix::open(dir).unwrap();
        let fresh_a = TreeMemo::walk(&repo, a, None).unwrap();
        assert_eq!(listed(&fresh_a), git_listing(dir));
        assert_eq!(fresh_a.root(), Some(a));

        // One tenant changed: the memo gives the same listing as a fresh walk and as git.
        write(dir, "config/tenants/t07/tenant.toml", "id = \"changed\"\n");
        let b = commit(dir, "b");
        let repo = gix::open(dir).unwrap();
        let from_memo_b = TreeMemo::walk(&repo, b, Some(&fresh_a)).unwrap();
        assert_eq!(listed(&from_memo_b), git_listing(dir));
        // The root, config/, config/tenants/ and config/tenants/t07/: nothing else was read.
        assert_eq!(from_memo_b.trees_read(), 4);
        assert!(fresh_a.trees_read() > 30);
        assert_eq!(
            listed(&from_memo_b),
            listed(&TreeMemo::walk(&repo, b, None).unwrap())
        );

        // The memo of b (inventory/ copied whole from a's) still knows inventory's subtrees:
        // a change under inventory/ lists correctly, through the memo that was copied.
        write(dir, "inventory/placement/t03.toml", "x = 2\n");
        write(dir, "inventory/nodes/a/b/new.toml", "n = 1\n");
        std::fs::remove_file(dir.join("config/tenants/t01/tenant.toml")).unwrap();
        let c = commit(dir, "c");
        let repo = gix::open(dir).unwrap();
        let from_memo_c = TreeMemo::walk(&repo, c, Some(&from_memo_b)).unwrap();
        assert_eq!(listed(&from_memo_c), git_listing(dir));
        // root, config/, config/tenants/ (t01/ is gone), inventory/, placement/, nodes/,
        // nodes/a/, nodes/a/b/ (nodes/a/b/c/ came from the memo).
        assert_eq!(from_memo_c.trees_read(), 8);
        assert!(
            from_memo_b
                .trees
                .iter()
                .any(|t| from_memo_b.files[t.start as usize]
                    .path
                    .starts_with(b"inventory/nodes/a/b/c/")),
            "nested trees of a copied tree are remembered"
        );

        // The same commit again: everything is copied from the root.
        let again = TreeMemo::walk(&repo, c, Some(&from_memo_c)).unwrap();
        assert_eq!(listed(&again), listed(&from_memo_c));
        assert_eq!(again.trees_read(), 0);

        // A memo that went through the file format gives the same listing.
        let bytes = from_memo_b.encode().unwrap();
        let back = TreeMemo::decode(&bytes).unwrap();
        assert_eq!(listed(&back), listed(&from_memo_b));
        assert_eq!(
            listed(&TreeMemo::walk(&repo, c, Some(&back)).unwrap()),
            git_listing(dir)
        );
    }

    #[test]
    fn a_damaged_memo_is_not_used() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path();
        git(dir, &["init", "-q"]);
        write(dir, "vakt.toml", "a = 1\n");
        write(dir, "config/x/y.toml", "b = 2\n");
        let root = commit(dir, "a");
        let repo = gix::open(dir).unwrap();
        let bytes = TreeMemo::walk(&repo, root, None).unwrap().encode().unwrap();
        assert!(TreeMemo::decode(&bytes).is_some());
        for i in [0, 17, 20, bytes.len() / 2, bytes.len() - 1] {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert!(TreeMemo::decode(&bad).is_none(), "byte {i} flipped");
        }
        for n in [0, 10, bytes.len() - 5, bytes.len() - 1] {
            assert!(TreeMemo::decode(&bytes[..n]).is_none(), "cut at {n}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(TreeMemo::decode(&longer).is_none());
    }
}
