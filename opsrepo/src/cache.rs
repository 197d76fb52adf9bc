//! The validation cache: what parsing and schema-checking one file produced, kept by the file's
//! Git blob id, so validating a commit re-parses only the files that changed since a commit
//! validated before. Cross-document rules still run over every document, every time.
//!
//! * **Key**: (blob id, kind, format, base or overlay), in a file whose header holds a
//!   fingerprint of everything else a parse depends on: the cache format, the vakt version, the
//!   executable (size and modification time: a rebuilt binary never reads an older one's
//!   entries) and a digest of every kind's JSON Schema. A blob id names its content, so an
//!   entry can never be stale; a different fingerprint makes the whole file a miss.
//! * **Value**: the parsed value (a tagged binary form), or the findings that refused the file, plus the
//!   file's secret-scan findings. Findings are stored without their path; the path is attached
//!   again on load (a blob may live at several paths).
//! * **Files**: an append-only log, `validate-v2.log`: a header (magic, fingerprint), then
//!   records (payload length, CRC-32, key, payload). It is read whole with one `read` into one
//!   buffer; a cached value kept as compact JSON ([`Stored::Json`]) is a slice of that buffer,
//!   so a hit decodes nothing but the kinds kept as trees. A run that parsed something new
//!   appends its records with one `write`, holding `validate-v2.lock` (an advisory lock), and
//!   rewrites the log (to a temporary name renamed over it) only to compact it: when it is
//!   absent or foreign, would pass the bound, or holds too many duplicates. Records are read
//!   up to the first torn or damaged one: a torn tail is a miss, never an error and never a
//!   wrong result, and the next writer cuts it off before appending.
//! * **Bound**: at most [`CacheOptions::max_bytes`] (default 256 MiB). A file over the bound is
//!   not read; a compaction keeps this run's entries first, then older ones, and drops what
//!   would exceed the bound.
//! * Runbooks (their text is checked by rules anyway), the manifest and files refused before
//!   they are parsed (unknown paths, unreadable blobs) are not cached.
//!
//! Deleting the cache directory at any time is safe: a run that already read it keeps its copy
//! in memory, a writer that still holds the old log appends to a file no one reads again, and
//! a run that finds nothing parses everything.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use rayon::prelude::*;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::diag::{Finding, RULES, Severity};
use crate::kinds::Kind;
use crate::load::{self, Parsed0, SourceDoc, Stored};
use crate::parse::{Format, LazySpans, LazyText};
use crate::rules::secrets;
use crate::source::{self, RawFile, SourceError};

/// Name of the cache log inside the cache directory.
pub const CACHE_FILE: &str = "validate-v2.log";
/// Name of the lock file writers hold while they append or compact.
pub const LOCK_FILE: &str = "validate-v2.lock";
/// The listing of the last commit validated, by tree id ([`source::TreeMemo`]).
pub const TREES_FILE: &str = "trees-v1.bin";
/// Default bound of the cache file (256 MiB; a 50,000-document repo needs about 20 MiB).
pub const DEFAULT_MAX_BYTES: u64 = 256 * 1024 * 1024;

const MAGIC: &[u8; 8] = b"VAKTVC02";
/// Bumped whenever the encoding or what a parse produces changes.
const FORMAT_VERSION: u32 = 2;
const HEADER_LEN: usize = 8 + 32;
/// Payload length, CRC-32, key (blob id, kind, format, overlay, a zero byte).
const RECORD_HEAD: usize = 4 + 4 + 20 + 4;

/// Where the cache lives and how large it may grow.
#[derive(Debug, Clone)]
pub struct CacheOptions {
    /// The cache directory; `None`: `<git-dir>/vakt/cache`.
    pub dir: Option<PathBuf>,
    /// Largest cache file read or written.
    pub max_bytes: u64,
}

impl Default for CacheOptions {
    fn default() -> Self {
        CacheOptions {
            dir: None,
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }
}

/// What a cached run did, for `--verbose` output and tests.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CacheStats {
    pub dir: PathBuf,
    /// Files whose parse came from the cache (their blobs were not read).
    pub hits: usize,
    /// Cacheable files parsed this run.
    pub misses: usize,
    /// Files never cached (runbooks, the manifest, refused paths).
    pub uncached: usize,
    /// Entries this run wrote: appended, or all of them when it compacted (0: nothing new).
    pub written_entries: usize,
    pub written_bytes: u64,
    /// The run rewrote the log instead of appending (absent, foreign, over the bound, or too
    /// many duplicates).
    pub compacted: bool,
    /// Why the existing cache file was not used (absent, other fingerprint, corrupt), if it was not.
    pub read_problem: Option<String>,
    /// Why writing failed, if it did (a failed write never fails the run).
    pub write_problem: Option<String>,
}

/// The cache key of one file (besides the fingerprint in the file header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    oid: [u8; 20],
    kind: u8,
    format: u8,
    overlay: bool,
}

/// What parsing and checking one file produced.
#[derive(Debug, Clone)]
pub(crate) enum Outcome {
    /// A document (schema-checked if it is a base document), as the loader keeps it: compact
    /// JSON is stored as is and read back as a slice of the cache buffer; a tree is stored in
    /// a tagged binary form and decoded.
    Doc(Stored),
    /// Findings that refused the file, and the id it declares if it failed its schema.
    Failed(Vec<Finding>, Option<String>),
}

/// One cache entry: the outcome and the file's own secret-scan findings.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub outcome: Outcome,
    pub scans: Vec<Finding>,
}

fn kind_code(kind: Kind) -> Option<u8> {
    Kind::WITH_SCHEMA
        .iter()
        .position(|k| *k == kind)
        .and_then(|i| u8::try_from(i).ok())
}

fn format_code(f: Format) -> u8 {
    match f {
        Format::Toml => 0,
        Format::Yaml => 1,
        Format::Json => 2,
        Format::Markdown => 3,
    }
}

/// Everything besides the key a cached parse depends on.
fn fingerprint() -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(MAGIC);
    h.update(FORMAT_VERSION.to_le_bytes());
    h.update(env!("CARGO_PKG_VERSION").as_bytes());
    // The parser and the schemas are compiled into the executable: another build is another
    // cache. Unknown (no executable path): the version and schemas alone.
    if let Ok(exe) = std::env::current_exe()
        && let Ok(m) = std::fs::metadata(&exe)
    {
        h.update(exe.to_string_lossy().as_bytes());
        h.update(m.len().to_le_bytes());
        if let Ok(t) = m.modified()
            && let Ok(d) = t.duration_since(std::time::UNIX_EPOCH)
        {
            h.update(d.as_nanos().to_le_bytes());
        }
    }
    for k in Kind::WITH_SCHEMA {
        h.update(k.name().as_bytes());
        if let Some(s) = k.schema() {
            h.update(s.to_string().as_bytes());
        }
        h.update([0]);
    }
    h.finalize().into()
}

// --- entry encoding --------------------------------------------------------------------------

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) -> Option<()> {
    put_u32(out, u32::try_from(b.len()).ok()?);
    out.extend_from_slice(b);
    Some(())
}

fn put_findings(out: &mut Vec<u8>, path: &str, f: &[Finding]) -> Option<()> {
    put_u32(out, u32::try_from(f.len()).ok()?);
    for f in f {
        // Only findings about this file, of a known rule, can be stored without their path.
        if f.path != path || !RULES.iter().any(|r| r.id == f.rule) {
            return None;
        }
        put_bytes(out, f.rule.as_bytes())?;
        out.push(match f.severity {
            Severity::Note => 0,
            Severity::Warning => 1,
            Severity::Error => 2,
        });
        put_u32(out, f.line);
        put_u32(out, f.col);
        put_bytes(out, f.message.as_bytes())?;
        put_bytes(out, f.help.as_bytes())?;
    }
    Some(())
}

/// Deepest value decoded (parsed documents are limited to 64 levels).
const MAX_DEPTH: usize = 128;

/// A value in a tagged binary form (nothing to unescape or parse on decode, unlike JSON text).
fn put_value(out: &mut Vec<u8>, v: &Value) -> Option<()> {
    match v {
        Value::Null => out.push(0),
        Value::Bool(false) => out.push(1),
        Value::Bool(true) => out.push(2),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                out.push(3);
                out.extend_from_slice(&u.to_le_bytes());
            } else if let Some(i) = n.as_i64() {
                out.push(4);
                out.extend_from_slice(&i.to_le_bytes());
            } else {
                out.push(5);
                out.extend_from_slice(&n.as_f64()?.to_le_bytes());
            }
        }
        Value::String(s) => {
            out.push(6);
            put_bytes(out, s.as_bytes())?;
        }
        Value::Array(a) => {
            out.push(7);
            put_u32(out, u32::try_from(a.len()).ok()?);
            for v in a {
                put_value(out, v)?;
            }
        }
        Value::Object(m) => {
            out.push(8);
            put_u32(out, u32::try_from(m.len()).ok()?);
            for (k, v) in m {
                put_bytes(out, k.as_bytes())?;
                put_value(out, v)?;
            }
        }
    }
    Some(())
}

/// Encodes an entry of the file at `path`; `None` if it cannot be stored path-independently.
pub(crate) fn encode_entry(e: &Entry, path: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    match &e.outcome {
        Outcome::Doc(Stored::Tree(v)) => {
            out.push(0);
            put_value(&mut out, v)?;
        }
        Outcome::Doc(Stored::Json(b)) => {
            out.push(2);
            put_bytes(&mut out, b)?;
        }
        Outcome::Failed(f, id) => {
            out.push(1);
            put_findings(&mut out, path, f)?;
            match id {
                Some(id) => {
                    out.push(1);
                    put_bytes(&mut out, id.as_bytes())?;
                }
                None => out.push(0),
            }
        }
    }
    put_findings(&mut out, path, &e.scans)?;
    Some(out)
}

struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.b.len() < n {
            return None;
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Some(h)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn str(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.bytes()?).ok()
    }
    fn value(&mut self, depth: usize) -> Option<Value> {
        if depth > MAX_DEPTH {
            return None;
        }
        let n8 = |r: &mut Self| -> Option<[u8; 8]> { r.take(8)?.try_into().ok() };
        Some(match self.u8()? {
            0 => Value::Null,
            1 => Value::Bool(false),
            2 => Value::Bool(true),
            3 => Value::from(u64::from_le_bytes(n8(self)?)),
            4 => Value::from(i64::from_le_bytes(n8(self)?)),
            5 => Value::Number(serde_json::Number::from_f64(f64::from_le_bytes(n8(self)?))?),
            6 => Value::String(self.str()?.to_owned()),
            7 => {
                let n = self.u32()? as usize;
                if n > self.b.len() {
                    return None;
                }
                let mut a = Vec::with_capacity(n);
                for _ in 0..n {
                    a.push(self.value(depth + 1)?);
                }
                Value::Array(a)
            }
            8 => {
                let n = self.u32()? as usize;
                // A member takes at least 5 bytes (key length and a tag).
                if n > self.b.len() / 5 {
                    return None;
                }
                let mut m = serde_json::Map::with_capacity(n);
                for _ in 0..n {
                    let k = self.str()?.to_owned();
                    let v = self.value(depth + 1)?;
                    m.insert(k, v);
                }
                Value::Object(m)
            }
            _ => return None,
        })
    }

    fn findings(&mut self, path: &str) -> Option<Vec<Finding>> {
        let n = self.u32()? as usize;
        // Every finding takes at least 21 bytes: a count beyond that is corruption.
        if n > self.b.len() / 21 {
            return None;
        }
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let rule = self.str()?;
            let rule = RULES.iter().find(|r| r.id == rule)?.id;
            let severity = match self.u8()? {
                0 => Severity::Note,
                1 => Severity::Warning,
                2 => Severity::Error,
                _ => return None,
            };
            let line = self.u32()?;
            let col = self.u32()?;
            let message = self.str()?.to_owned();
            let help = self.str()?.to_owned();
            out.push(Finding {
                rule,
                severity,
                path: path.to_owned(),
                line,
                col,
                message,
                help,
            });
        }
        Some(out)
    }
}

/// Decodes an entry for the file at `path`; `None` if it is malformed. A value kept as JSON
/// is a slice of `b` (no copy).
pub(crate) fn decode_entry(b: &Bytes, path: &str) -> Option<Entry> {
    let mut r = Reader { b: &b[..] };
    let outcome = match r.u8()? {
        0 => Outcome::Doc(Stored::Tree(Arc::new(r.value(0)?))),
        2 => Outcome::Doc(Stored::Json(b.slice_ref(r.bytes()?))),
        1 => {
            let f = r.findings(path)?;
            let id = match r.u8()? {
                0 => None,
                1 => Some(r.str()?.to_owned()),
                _ => return None,
            };
            Outcome::Failed(f, id)
        }
        _ => return None,
    };
    let scans = r.findings(path)?;
    r.b.is_empty().then_some(Entry { outcome, scans })
}

// --- the cache file --------------------------------------------------------------------------

/// Identity of the cache file as a run saw it: a writer holding the lock compares it with the
/// file on disk to know whether its copy is still the file's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    len: u64,
    modified: Option<std::time::SystemTime>,
    #[cfg(unix)]
    ino: (u64, u64),
}

impl FileId {
    fn of(m: &std::fs::Metadata) -> FileId {
        #[cfg(unix)]
        use std::os::unix::fs::MetadataExt;
        FileId {
            len: m.len(),
            modified: m.modified().ok(),
            #[cfg(unix)]
            ino: (m.dev(), m.ino()),
        }
    }
}

/// The cache log read into one buffer, with its index. Values handed out are slices of the
/// buffer (no copy).
struct CacheFile {
    buf: Bytes,
    /// Key -> payload range in `buf`, for the first good record of each key.
    index: load::IdMap<Key, (usize, usize)>,
    /// Keys in file order.
    order: Vec<Key>,
    /// End of the last good record: anything after it is a torn or damaged tail.
    valid_end: usize,
    /// Bytes of records whose key an earlier record already has (concurrent runs).
    dead: usize,
    id: FileId,
}

/// Bytes a record of a payload of `len` bytes takes.
fn record_len(len: usize) -> usize {
    RECORD_HEAD + len
}

/// Appends one record: payload length, CRC-32 of everything after the CRC, key, payload.
fn put_record(out: &mut Vec<u8>, k: &Key, payload: &[u8]) -> Option<()> {
    let len = u32::try_from(payload.len()).ok()?;
    let at = out.len();
    put_u32(out, len);
    put_u32(out, 0);
    out.extend_from_slice(&k.oid);
    out.push(k.kind);
    out.push(k.format);
    out.push(u8::from(k.overlay));
    out.push(0);
    out.extend_from_slice(payload);
    let mut h = crc32fast::Hasher::new();
    h.update(&out[at..at + 4]);
    h.update(&out[at + 8..]);
    let crc = h.finalize();
    out[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
    Some(())
}

impl CacheFile {
    /// Reads and indexes the cache file; `Err` says why it is not used (a miss, not an error).
    fn load(path: &Path, fp: &[u8; 32], max_bytes: u64) -> Result<CacheFile, String> {
        let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let m = f.metadata().map_err(|e| e.to_string())?;
        let len = m.len();
        if len > max_bytes {
            return Err(format!(
                "{} is {len} bytes, over the bound of {max_bytes}",
                path.display()
            ));
        }
        let mut buf = Vec::with_capacity(len as usize);
        f.take(max_bytes)
            .read_to_end(&mut buf)
            .map_err(|e| e.to_string())?;
        Self::parse(buf.into(), fp, FileId::of(&m))
            .ok_or_else(|| format!("{} is from another vakt build or damaged", path.display()))
    }

    /// Indexes a log; `None` if its header is not this build's. Records are read up to the
    /// first one that is torn or fails its CRC: the rest of the file is a miss.
    fn parse(buf: Bytes, fp: &[u8; 32], id: FileId) -> Option<CacheFile> {
        if buf.len() < HEADER_LEN || &buf[..8] != MAGIC || &buf[8..HEADER_LEN] != fp {
            return None;
        }
        let mut c = CacheFile {
            index: load::IdMap::with_capacity_and_hasher(buf.len() / 300, Default::default()),
            order: Vec::with_capacity(buf.len() / 300),
            valid_end: HEADER_LEN,
            dead: 0,
            id,
            buf,
        };
        let b = &c.buf[..];
        let mut at = HEADER_LEN;
        while let Some(head) = b.get(at..at + RECORD_HEAD) {
            let le =
                |i: usize| u32::from_le_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
            let len = le(0) as usize;
            let Some(end) = (at + RECORD_HEAD)
                .checked_add(len)
                .filter(|e| *e <= b.len())
            else {
                break;
            };
            let mut h = crc32fast::Hasher::new();
            h.update(&head[..4]);
            h.update(&b[at + 8..end]);
            if h.finalize() != le(4) {
                break;
            }
            let key = Key {
                oid: head[8..28].try_into().ok()?,
                kind: head[28],
                format: head[29],
                overlay: head[30] == 1,
            };
            match c.index.entry(key) {
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert((at + RECORD_HEAD, end));
                    c.order.push(key);
                }
                std::collections::hash_map::Entry::Occupied(_) => c.dead += record_len(len),
            }
            at = end;
            c.valid_end = end;
        }
        Some(c)
    }

    /// The entry's bytes (a slice of the buffer, CRC-checked when the file was read).
    fn get(&self, key: &Key) -> Option<Bytes> {
        let (s, e) = *self.index.get(key)?;
        Some(self.buf.slice(s..e))
    }
}

/// What a write did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Written {
    entries: usize,
    bytes: u64,
    compacted: bool,
}

/// How long a run waits for another run's write before it gives up writing (the run itself is
/// not affected: its new entries are simply not cached).
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The lock file of `dir`, locked until dropped; an error if another run kept it too long.
fn lock(dir: &Path) -> std::io::Result<std::fs::File> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(LOCK_FILE))?;
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match f.try_lock() {
            Ok(()) => return Ok(f),
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::WouldBlock,
                    "another vakt run is writing the cache",
                ));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
    }
}

/// Adds this run's new entries to the cache log in `dir`, under the directory's lock file.
///
/// Appends the new records (one `write` of whole records) when the log on disk is this build's;
/// drops a torn or damaged tail first. Compacts instead (rewrites a new file holding `fresh`,
/// then `hits`, then the other entries, to a temporary name renamed over the log) when the
/// log is absent, foreign or damaged at its head, when appending would pass `max_bytes`, or
/// when duplicate records pass a quarter of the file.
fn store(
    dir: &Path,
    fp: &[u8; 32],
    max_bytes: u64,
    seen: Option<&CacheFile>,
    fresh: &[(Key, Vec<u8>)],
    hits: &[Key],
) -> std::io::Result<Written> {
    std::fs::create_dir_all(dir)?;
    let _lock = lock(dir)?;
    let path = dir.join(CACHE_FILE);
    // The log as it is now: the copy this run read if nothing changed since, else read again.
    let on_disk = std::fs::metadata(&path).ok().map(|m| FileId::of(&m));
    let reread;
    let cur = match (on_disk, seen) {
        (None, _) => None,
        (Some(id), Some(c)) if c.id == id => Some(c),
        (Some(_), _) => {
            reread = CacheFile::load(&path, fp, max_bytes).ok();
            reread.as_ref()
        }
    };
    let mut keys = HashSet::new();
    let mut new: Vec<u8> = Vec::new();
    let mut n = 0;
    for (k, b) in fresh {
        if cur.is_some_and(|c| c.index.contains_key(k)) || !keys.insert(*k) {
            continue;
        }
        put_record(&mut new, k, b).ok_or_else(|| std::io::Error::other("entry too large"))?;
        n += 1;
    }
    if n == 0 {
        return Ok(Written::default());
    }
    if let Some(c) = cur {
        let total = c.valid_end + new.len();
        if (total as u64) <= max_bytes && c.dead * 4 <= total {
            let mut f = std::fs::OpenOptions::new().append(true).open(&path)?;
            if c.id.len != c.valid_end as u64 {
                f.set_len(c.valid_end as u64)?;
            }
            f.write_all(&new)?;
            return Ok(Written {
                entries: n,
                bytes: new.len() as u64,
                compacted: false,
            });
        }
    }
    // Compact: this run's entries first, then the others while the bound allows.
    let get = |k: &Key| cur.or(seen).and_then(|c| c.get(k));
    let this_run = fresh
        .iter()
        .map(|(k, b)| (*k, Bytes::copy_from_slice(b)))
        .chain(hits.iter().filter_map(|k| Some((*k, get(k)?))));
    let older = cur
        .into_iter()
        .flat_map(|c| c.order.iter().filter_map(|k| Some((*k, c.get(k)?))));
    let (entries, bytes) = write_file(dir, fp, max_bytes, this_run.chain(older))?;
    Ok(Written {
        entries,
        bytes,
        compacted: true,
    })
}

/// Writes `entries` (first ones kept when the bound is reached) as a new log in
/// `dir/CACHE_FILE`, atomically. Returns the entries and bytes written.
fn write_file(
    dir: &Path,
    fp: &[u8; 32],
    max_bytes: u64,
    entries: impl Iterator<Item = (Key, Bytes)>,
) -> std::io::Result<(usize, u64)> {
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(fp);
    let mut seen = HashSet::new();
    let mut n = 0;
    for (k, b) in entries {
        if (out.len() + record_len(b.len())) as u64 > max_bytes {
            break;
        }
        if seen.insert(k) && put_record(&mut out, &k, &b).is_some() {
            n += 1;
        }
    }
    replace_file(dir, CACHE_FILE, &out)?;
    Ok((n, out.len() as u64))
}

/// Writes `bytes` to `dir/name` through a temporary file renamed over it: a reader sees the
/// old file or the new one, never a part.
fn replace_file(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let (tmp, mut f) = tempfile_in(dir)?;
    let written = f.write_all(bytes);
    drop(f);
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, dir.join(name))) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(())
}

/// The bytes of `path` if it exists and is at most `max` bytes long.
fn read_bounded(path: &Path, max: u64) -> Option<Vec<u8>> {
    use std::io::Read;
    let f = std::fs::File::open(path).ok()?;
    let mut out = Vec::new();
    f.take(max.saturating_add(1)).read_to_end(&mut out).ok()?;
    (out.len() as u64 <= max).then_some(out)
}

/// Replaces the tree memo in `dir` ([`replace_file`]). A memo over its bound is not written.
fn store_trees(dir: &Path, memo: &source::TreeMemo) -> std::io::Result<()> {
    match memo.encode() {
        Some(bytes) => replace_file(dir, TREES_FILE, &bytes),
        None => Ok(()),
    }
}

/// A new file in `dir` with a name no other run uses.
fn tempfile_in(dir: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    loop {
        let name = format!(
            ".{CACHE_FILE}.{}.{nanos}.{}.tmp",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let p = dir.join(name);
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&p)
        {
            Ok(f) => return Ok((p, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

// --- parsing a commit through the cache ------------------------------------------------------

/// One file's result.
struct One {
    result: load::FileResult,
    scans: Vec<Finding>,
    /// The text, when it was read.
    text: Option<Arc<str>>,
    /// The text, read on demand, when the parse came from the cache.
    deferred: Option<Arc<LazySpans>>,
    status: Status,
}

enum Status {
    Hit(Key),
    Miss(Key, Option<Vec<u8>>),
    Uncached,
}

/// Parses and checks a file that was read, with its secret scans (as `parse_all` and
/// `validate` do).
fn parse_read(raw: &RawFile, bindings: &[crate::model::Binding]) -> One {
    let (mut result, text) = load::parse_file(raw, bindings);
    let mut scans = Vec::new();
    if let Some(t) = &text {
        secrets::scan_text(&raw.path, t, &mut scans);
    }
    // The value scan ran in `parse_one`; its findings move to the entry, like a hit's.
    if let Ok(Some(d)) = &mut result {
        scans.append(&mut d.secret_findings);
    }
    One {
        result,
        scans,
        text,
        deferred: None,
        status: Status::Uncached,
    }
}

/// Parses a file that was read, and encodes its cache entry.
fn parse_miss(raw: &RawFile, key: Key, bindings: &[crate::model::Binding]) -> One {
    let mut one = parse_read(raw, bindings);
    // A blob that could not be read is not cached (the next run tries again).
    let outcome = match &one.result {
        _ if raw.content.is_err() => None,
        Ok(Some(d)) => Some(Outcome::Doc(d.value.clone())),
        Ok(None) => None,
        Err((f, id)) => Some(Outcome::Failed(f.clone(), id.clone())),
    };
    let bytes = outcome.and_then(|outcome| {
        let e = Entry {
            outcome,
            scans: one.scans.clone(),
        };
        encode_entry(&e, &raw.path)
    });
    one.status = Status::Miss(key, bytes);
    one
}

/// Runs `f` with this thread's handle on the repository at `path` (opened once per thread:
/// a `gix::Repository` cannot move between threads).
fn with_repo<T>(path: &Path, f: impl FnOnce(&gix::Repository) -> T) -> Option<T> {
    use std::cell::RefCell;
    thread_local! {
        static OPEN: RefCell<Vec<(PathBuf, gix::Repository)>> = const { RefCell::new(Vec::new()) };
    }
    OPEN.with(|open| {
        let mut open = open.borrow_mut();
        if !open.iter().any(|(p, _)| p == path) {
            let repo = gix::open(path).ok()?;
            // A few repositories per thread at most (one in practice).
            if open.len() >= 4 {
                open.remove(0);
            }
            open.push((path.to_owned(), repo));
        }
        let (_, repo) = open.iter().find(|(p, _)| p == path)?;
        Some(f(repo))
    })
}

/// The text of a blob, or `None` if it cannot be read or is not UTF-8.
fn blob_text(repo_path: &Path, oid: gix::ObjectId, path: &str) -> Option<Arc<str>> {
    let bytes = with_repo(repo_path, |r| source::read_blob(r, oid, path).ok())??;
    String::from_utf8(bytes).ok().map(Arc::from)
}

/// A file after the (sequential) look-up: a cache entry to decode, or content to parse.
enum Pending<'a> {
    Hit(&'a str, Kind, Key, gix::ObjectId, Bytes),
    Read(RawFile, Option<Key>),
}

/// Lists a commit, then parses every file that is not in the cache and loads the others from it;
/// writes the new entries back. The result is what [`load::parse_all`] of
/// [`source::read_commit`] gives, with the secret scans done ([`Parsed0::prescanned`]).
/// Problems with the cache are never errors: they make misses.
pub fn parse_commit(
    repo_path: &Path,
    rev: &str,
    opts: &CacheOptions,
) -> Result<(Parsed0, CacheStats), SourceError> {
    let t0 = std::time::Instant::now();
    let ms = |t: std::time::Instant| t.elapsed().as_secs_f64() * 1000.0;
    let fp = fingerprint();
    // Three pieces of work that do not depend on each other run side by side: listing the
    // commit (on this thread), reading and indexing the cache log (started as soon as the
    // cache directory is known), and writing the new tree memo (once the listing is done).
    std::thread::scope(|s| {
        let mut dir = PathBuf::new();
        let mut old_root = None;
        let mut loader = None;
        let (listing, memo) = source::list_commit_with(repo_path, rev, |git_dir| {
            dir = opts
                .dir
                .clone()
                .unwrap_or_else(|| git_dir.join("vakt").join("cache"));
            let log = dir.join(CACHE_FILE);
            let max = opts.max_bytes;
            loader = Some(s.spawn(move || CacheFile::load(&log, &fp, max)));
            let m = read_bounded(&dir.join(TREES_FILE), opts.max_bytes)
                .and_then(|b| source::TreeMemo::decode(&b))?;
            old_root = m.root();
            Some(m)
        })?;
        tracing::debug!(
            ms = ms(t0),
            files = listing.files.len(),
            trees_read = memo.trees_read(),
            rss_mb = crate::diag::rss_mb(),
            "cache: tree listed"
        );
        let mut stats = CacheStats {
            dir: dir.clone(),
            ..Default::default()
        };
        let trees_writer = (old_root != memo.root()).then(|| {
            let dir = dir.clone();
            s.spawn(move || store_trees(&dir, &memo))
        });
        let old = match loader.map(|h| h.join()) {
            Some(Ok(Ok(c))) => Some(c),
            Some(Ok(Err(why))) => {
                stats.read_problem = Some(why);
                None
            }
            Some(Err(_)) => {
                stats.read_problem = Some("reading the cache failed".into());
                None
            }
            None => None,
        };
        tracing::debug!(
            ms = ms(t0),
            rss_mb = crate::diag::rss_mb(),
            "cache: cache file read"
        );
        let (out, fresh, hits) = parse_listing(repo_path, &listing, old.as_ref(), &mut stats);
        // Only a run that parsed something new writes: it appends its new entries (or compacts).
        if !fresh.is_empty() {
            match store(&dir, &fp, opts.max_bytes, old.as_ref(), &fresh, &hits) {
                Ok(w) => {
                    stats.written_entries = w.entries;
                    stats.written_bytes = w.bytes;
                    stats.compacted = w.compacted;
                }
                Err(e) => stats.write_problem = Some(format!("{}: {e}", dir.display())),
            }
        }
        let trees_written = trees_writer.map(|h| h.join());
        if let Some(problem) = match trees_written {
            Some(Ok(Err(e))) => Some(e.to_string()),
            Some(Err(_)) => Some("writing the tree memo failed".into()),
            _ => None,
        } {
            stats.write_problem = Some(format!("{}: {problem}", dir.display()));
        }
        tracing::debug!(ms = ms(t0), rss_mb = crate::diag::rss_mb(), "cache: done");
        Ok((out, stats))
    })
}

/// The validation cache kept in memory between the runs of one process (the daemon's passes)
/// instead of a file: the entries of the last commit parsed through it, for one repository.
/// It holds about what one parse of the repository holds; nothing is written to disk.
#[derive(Default)]
pub struct MemoryCache {
    repo: Option<PathBuf>,
    file: Option<CacheFile>,
    /// The listing of the last commit, by tree id.
    trees: Option<source::TreeMemo>,
}

impl std::fmt::Debug for MemoryCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryCache")
            .field("repo", &self.repo)
            .field("entries", &self.file.as_ref().map_or(0, |c| c.order.len()))
            .finish()
    }
}

/// [`parse_commit`] with a [`MemoryCache`]: parses only the files whose blobs the last commit
/// parsed through `memo` did not have, then keeps this commit's entries in `memo`.
pub fn parse_commit_in_memory(
    repo_path: &Path,
    rev: &str,
    memo: &mut MemoryCache,
) -> Result<(Parsed0, CacheStats), SourceError> {
    if memo.repo.as_deref() != Some(repo_path) {
        *memo = MemoryCache {
            repo: Some(repo_path.to_owned()),
            ..Default::default()
        };
    }
    let old_trees = memo.trees.take();
    let (listing, trees) = source::list_commit_with(repo_path, rev, |_| old_trees)?;
    memo.trees = Some(trees);
    let mut stats = CacheStats::default();
    let (out, fresh, hits) = parse_listing(repo_path, &listing, memo.file.as_ref(), &mut stats);
    if !fresh.is_empty() {
        // This commit's entries only: what the next commit most likely shares.
        let mut buf = Vec::with_capacity(HEADER_LEN);
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&[0; 32]);
        let mut keys = HashSet::new();
        let old = memo.file.as_ref();
        let entries = fresh
            .iter()
            .map(|(k, b)| (*k, Bytes::copy_from_slice(b)))
            .chain(hits.iter().filter_map(|k| Some((*k, old?.get(k)?))));
        for (k, b) in entries {
            if !keys.contains(&k) && put_record(&mut buf, &k, &b).is_some() {
                keys.insert(k);
            }
        }
        let id = FileId {
            len: buf.len() as u64,
            modified: None,
            #[cfg(unix)]
            ino: (0, 0),
        };
        stats.written_entries = keys.len();
        stats.written_bytes = buf.len() as u64;
        memo.file = CacheFile::parse(buf.into_boxed_slice().into(), &[0; 32], id);
    }
    Ok((out, stats))
}

/// New entries of a run: key and encoded entry.
type Fresh = Vec<(Key, Vec<u8>)>;

/// Looks the files of `listing` up in `old`, parses the others; returns the result, the new
/// entries (encoded) and the keys that hit.
fn parse_listing(
    repo_path: &Path,
    listing: &source::CommitListing,
    old: Option<&CacheFile>,
    stats: &mut CacheStats,
) -> (Parsed0, Fresh, Vec<Key>) {
    let t0 = std::time::Instant::now();
    let ms = |t: std::time::Instant| t.elapsed().as_secs_f64() * 1000.0;
    // One copy of the repository path for every hit's lazily read text.
    let shared_path: Arc<Path> = Arc::from(repo_path);
    let repo = &listing.repo;
    // The manifest first: its bindings decide the kind of other paths.
    let manifest = listing
        .files
        .iter()
        .find(|f| f.path == "vakt.toml")
        .and_then(|f| {
            let oid = f.blob.as_ref().ok()?;
            let bytes = source::read_blob(repo, *oid, &f.path).ok()?;
            load::manifest_of(&RawFile {
                path: f.path.clone(),
                content: Ok(bytes),
            })
        });
    let bindings = manifest
        .as_ref()
        .map(|m| m.bindings.clone())
        .unwrap_or_default();

    // Look every file up, in parallel; then read the blobs of the others here, in order (a
    // repository handle stays on its thread; a hit reads nothing).
    let looked_up: Vec<Result<Pending, (Option<Key>, gix::ObjectId)>> = listing
        .files
        .par_iter()
        .map(|f| {
            let oid = match &f.blob {
                Ok(oid) => *oid,
                Err(finding) => {
                    return Ok(Pending::Read(
                        RawFile {
                            path: f.path.clone(),
                            content: Err(finding.clone()),
                        },
                        None,
                    ));
                }
            };
            let (env, base_path) = load::split_env(&f.path);
            let format = Format::from_path(&f.path).unwrap_or(Format::Toml);
            let key = load::kind_of(&base_path, &bindings)
                .filter(|k| *k != Kind::Runbook && !(*k == Kind::Manifest && env.is_some()))
                .and_then(|k| {
                    let key = Key {
                        oid: oid.as_slice().try_into().ok()?,
                        kind: kind_code(k)?,
                        format: format_code(format),
                        overlay: env.is_some(),
                    };
                    Some((k, key))
                });
            if let Some((kind, key)) = key
                && let Some(bytes) = old.and_then(|c| c.get(&key))
            {
                return Ok(Pending::Hit(&f.path, kind, key, oid, bytes));
            }
            Err((key.map(|(_, k)| k), oid))
        })
        .collect();
    let pending: Vec<Pending> = looked_up
        .into_iter()
        .zip(&listing.files)
        .map(|(p, f)| {
            p.unwrap_or_else(|(key, oid)| {
                let raw = RawFile {
                    path: f.path.clone(),
                    content: source::read_blob(repo, oid, &f.path),
                };
                Pending::Read(raw, key)
            })
        })
        .collect();

    tracing::debug!(
        ms = ms(t0),
        rss_mb = crate::diag::rss_mb(),
        "cache: looked up, misses read"
    );
    let results: Vec<One> = pending
        .into_par_iter()
        .map(|p| match p {
            Pending::Read(raw, Some(key)) => parse_miss(&raw, key, &bindings),
            Pending::Read(raw, None) => parse_read(&raw, &bindings),
            Pending::Hit(path, kind, key, oid, bytes) => {
                hit(&shared_path, path, kind, key, oid, &bytes).unwrap_or_else(|| {
                    // Checksummed but not decodable (cannot happen short of a bug): parse it.
                    let raw = RawFile {
                        path: path.to_owned(),
                        content: with_repo(repo_path, |r| source::read_blob(r, oid, path))
                            .unwrap_or_else(|| {
                                Err(Finding::new(
                                    "input.unreadable",
                                    path,
                                    crate::diag::Pos::default(),
                                    format!("failed to open {}", repo_path.display()),
                                ))
                            }),
                    };
                    parse_miss(&raw, key, &bindings)
                })
            }
        })
        .collect();

    tracing::debug!(
        ms = ms(t0),
        rss_mb = crate::diag::rss_mb(),
        "cache: parsed and decoded"
    );
    let mut out = Parsed0 {
        files: listing.files.len(),
        manifest,
        prescanned: true,
        ..Default::default()
    };
    // Sized once: growing a vector of 50,000 documents copies it into fresh pages each time.
    out.docs.reserve_exact(listing.files.len());
    out.deferred_texts.reserve_exact(listing.files.len());
    let mut fresh: Fresh = Vec::new();
    let mut hits: Vec<Key> = Vec::with_capacity(listing.files.len());
    for (f, one) in listing.files.iter().zip(results) {
        match one.status {
            Status::Hit(k) => {
                stats.hits += 1;
                hits.push(k);
            }
            Status::Miss(k, bytes) => {
                stats.misses += 1;
                fresh.extend(bytes.map(|b| (k, b)));
            }
            Status::Uncached => stats.uncached += 1,
        }
        if let Some(t) = one.text {
            out.texts.insert(f.path.clone(), t);
        }
        if let Some(t) = one.deferred {
            // In path order: the listing is sorted.
            out.deferred_texts.push(t);
        }
        out.findings.extend(one.scans);
        out.add(one.result);
    }

    tracing::debug!(
        ms = ms(t0),
        rss_mb = crate::diag::rss_mb(),
        "cache: assembled"
    );
    (out, fresh, hits)
}

/// A file whose entry is in the cache; `None` if the entry does not decode.
fn hit(
    repo_path: &Arc<Path>,
    path: &str,
    kind: Kind,
    key: Key,
    oid: gix::ObjectId,
    bytes: &Bytes,
) -> Option<One> {
    let entry = decode_entry(bytes, path)?;
    let text = {
        let repo_path = repo_path.clone();
        // The path would only name the blob in a finding, which is not kept: a read that
        // fails leaves the text unknown.
        Arc::new(LazyText::deferred(move || blob_text(&repo_path, oid, "")))
    };
    // One spans handle serves the document and the report's lookup of offending lines.
    let (result, deferred) = match entry.outcome {
        Outcome::Doc(v) => {
            let d = SourceDoc::from_cache(path, kind, v, text);
            d.type_once();
            let spans = d.spans.clone();
            (Ok(Some(d)), spans)
        }
        Outcome::Failed(f, id) => {
            let format = Format::from_path(path).unwrap_or(Format::Toml);
            (
                Err((f, id)),
                Arc::new(LazySpans::with_text(path, format, text)),
            )
        }
    };
    Some(One {
        result,
        scans: entry.scans,
        text: None,
        deferred: Some(deferred),
        status: Status::Hit(key),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diag::Pos;

    fn roundtrip(e: &Entry, path: &str) -> Option<Entry> {
        decode_entry(&Bytes::from(encode_entry(e, path)?), path)
    }

    fn doc(e: &Entry) -> &Stored {
        match &e.outcome {
            Outcome::Doc(s) => s,
            Outcome::Failed(..) => panic!("not a doc"),
        }
    }

    #[test]
    fn values_round_trip_exactly() {
        let v: Value = serde_json::from_str(
            r#"{"z": 1, "a": [1.5, -2, 18446744073709551615, 1e300, 0.1, true, null],
                "s": "line\nbreak \u0000 ünï", "o": {"b": {}, "a": []}, "f": 3.0}"#,
        )
        .unwrap();
        for kept in [
            Stored::keep(Kind::Dashboard, false, v.clone()),
            Stored::keep(Kind::Tenant, false, v.clone()),
        ] {
            let e = Entry {
                outcome: Outcome::Doc(kept.clone()),
                scans: vec![],
            };
            let back = roundtrip(&e, "config/a.toml").unwrap();
            let b = doc(&back);
            assert_eq!(
                matches!(b, Stored::Json(_)),
                matches!(kept, Stored::Json(_)),
                "kept the same way"
            );
            let b = b.to_value();
            assert_eq!(b, v);
            // Key order is kept (documents are shown and compiled in their own order).
            assert_eq!(
                serde_json::to_string(&b).unwrap(),
                serde_json::to_string(&v).unwrap()
            );
            assert!(b["f"].is_f64() && b["a"][2].is_u64());
        }
    }

    #[test]
    fn a_json_value_is_a_slice_of_the_buffer() {
        let kept = Stored::keep(Kind::Tenant, false, serde_json::json!({"id": "t", "n": 2}));
        let bytes = Bytes::from(
            encode_entry(
                &Entry {
                    outcome: Outcome::Doc(kept),
                    scans: vec![],
                },
                "a.toml",
            )
            .unwrap(),
        );
        let back = decode_entry(&bytes, "a.toml").unwrap();
        let Stored::Json(j) = doc(&back) else {
            panic!("not JSON")
        };
        let range = bytes.as_ptr_range();
        assert!(range.contains(&j.as_ptr()), "copied instead of sliced");
        assert_eq!(&j[..], br#"{"id":"t","n":2}"#);
    }

    #[test]
    fn values_deeper_than_the_bound_are_misses() {
        let mut v = Value::Null;
        for _ in 0..=MAX_DEPTH + 1 {
            v = Value::Array(vec![v]);
        }
        let e = Entry {
            outcome: Outcome::Doc(Stored::Tree(Arc::new(v))),
            scans: vec![],
        };
        let bytes = encode_entry(&e, "a.json").unwrap();
        assert!(decode_entry(&bytes.into(), "a.json").is_none());
    }

    #[test]
    fn findings_get_their_path_back() {
        let f = Finding::new("schema.invalid", "a/b.toml", Pos { line: 3, col: 7 }, "bad")
            .help("fix it")
            .severity(Severity::Warning);
        let e = Entry {
            outcome: Outcome::Failed(vec![f.clone()], Some("t-1".into())),
            scans: vec![Finding::new(
                "secret.value",
                "a/b.toml",
                Pos::default(),
                "key",
            )],
        };
        let bytes = encode_entry(&e, "a/b.toml").unwrap();
        let back = decode_entry(&bytes.into(), "c/d.toml").unwrap();
        let Outcome::Failed(fs, id) = back.outcome else {
            panic!("not failed")
        };
        assert_eq!(id.as_deref(), Some("t-1"));
        assert_eq!(fs[0].path, "c/d.toml");
        assert_eq!(
            (fs[0].line, fs[0].col, fs[0].severity),
            (3, 7, Severity::Warning)
        );
        assert_eq!(
            (fs[0].message.as_str(), fs[0].help.as_str()),
            ("bad", "fix it")
        );
        assert_eq!(back.scans[0].path, "c/d.toml");
    }

    #[test]
    fn findings_of_other_files_or_unknown_rules_are_not_stored() {
        let other = Finding::new("schema.invalid", "x.toml", Pos::default(), "m");
        let e = Entry {
            outcome: Outcome::Failed(vec![other], None),
            scans: vec![],
        };
        assert!(encode_entry(&e, "a.toml").is_none());
        let unknown = Finding::new("no.such-rule", "a.toml", Pos::default(), "m");
        let e = Entry {
            outcome: Outcome::Failed(vec![unknown], None),
            scans: vec![],
        };
        assert!(encode_entry(&e, "a.toml").is_none());
    }

    #[test]
    fn every_truncation_is_rejected() {
        let e = Entry {
            outcome: Outcome::Failed(
                vec![Finding::new(
                    "schema.invalid",
                    "a.toml",
                    Pos { line: 2, col: 1 },
                    "m",
                )],
                Some("id".into()),
            ),
            scans: vec![],
        };
        let bytes = encode_entry(&e, "a.toml").unwrap();
        for n in 0..bytes.len() {
            let prefix = Bytes::copy_from_slice(&bytes[..n]);
            assert!(decode_entry(&prefix, "a.toml").is_none(), "prefix {n}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode_entry(&longer.into(), "a.toml").is_none());
    }

    fn key(n: u8) -> Key {
        Key {
            oid: [n; 20],
            kind: 1,
            format: 0,
            overlay: false,
        }
    }

    fn entries(range: std::ops::Range<u8>) -> Vec<(Key, Vec<u8>)> {
        range.map(|n| (key(n), vec![n; 10 + n as usize])).collect()
    }

    fn load(dir: &Path, fp: &[u8; 32]) -> CacheFile {
        CacheFile::load(&dir.join(CACHE_FILE), fp, DEFAULT_MAX_BYTES).unwrap()
    }

    #[test]
    fn cache_file_round_trips_and_rejects_damage() {
        let dir = tempfile::tempdir().unwrap();
        let fp = [7u8; 32];
        let entries = entries(0..50);
        let (n, bytes) = write_file(
            dir.path(),
            &fp,
            DEFAULT_MAX_BYTES,
            entries.iter().map(|(k, b)| (*k, Bytes::copy_from_slice(b))),
        )
        .unwrap();
        assert_eq!(n, 50);
        let path = dir.path().join(CACHE_FILE);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), bytes);
        let c = load(dir.path(), &fp);
        for (k, b) in &entries {
            assert_eq!(c.get(k).as_deref(), Some(&b[..]));
        }
        // Another fingerprint: the whole file is a miss.
        assert!(CacheFile::load(&path, &[8u8; 32], DEFAULT_MAX_BYTES).is_err());
        // Over the bound: not read.
        assert!(CacheFile::load(&path, &fp, 100).is_err());
        // Truncated: the entries past the end are misses, the others still hit.
        let full = std::fs::read(&path).unwrap();
        std::fs::write(&path, &full[..full.len() - 5]).unwrap();
        let c = load(dir.path(), &fp);
        assert_eq!(c.get(&key(49)), None);
        assert_eq!(c.get(&key(0)).as_deref(), Some(&entries[0].1[..]));
        // A flipped byte in the middle: that record and every later one are misses.
        let mut bad = full.clone();
        let mid = full.len() / 2;
        bad[mid] ^= 1;
        std::fs::write(&path, &bad).unwrap();
        let c = load(dir.path(), &fp);
        assert!(c.get(&key(0)).is_some() && c.get(&key(49)).is_none());
        assert!(c.valid_end <= mid);
        // A flipped header byte: the whole file is a miss.
        let mut bad = full.clone();
        bad[3] ^= 1;
        std::fs::write(&path, &bad).unwrap();
        assert!(CacheFile::load(&path, &fp, DEFAULT_MAX_BYTES).is_err());
        // The bound on writing keeps the first entries.
        let (n, bytes) = write_file(
            dir.path(),
            &fp,
            600,
            entries.iter().map(|(k, b)| (*k, Bytes::copy_from_slice(b))),
        )
        .unwrap();
        assert!(n < 50 && bytes <= 600, "{n} entries, {bytes} bytes");
        let c = load(dir.path(), &fp);
        assert!(c.get(&key(0)).is_some() && c.get(&key(49)).is_none());
    }

    #[test]
    fn two_runs_append_and_a_torn_tail_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let fp = [7u8; 32];
        // First run: no log yet, so it is written whole.
        let w = store(d, &fp, DEFAULT_MAX_BYTES, None, &entries(0..10), &[]).unwrap();
        assert!(w.compacted && w.entries == 10, "{w:?}");
        let len1 = std::fs::metadata(d.join(CACHE_FILE)).unwrap().len();
        // Second run: appends only its new entries; the first bytes stay as they were.
        let seen = load(d, &fp);
        let w = store(d, &fp, DEFAULT_MAX_BYTES, Some(&seen), &entries(5..12), &[]).unwrap();
        assert_eq!((w.entries, w.compacted), (2, false), "{w:?}");
        let after = std::fs::read(d.join(CACHE_FILE)).unwrap();
        assert_eq!(after.len() as u64, len1 + w.bytes);
        let c = load(d, &fp);
        assert_eq!(c.order.len(), 12);
        assert_eq!(c.dead, 0);
        assert_eq!(c.get(&key(11)).as_deref(), Some(&vec![11u8; 21][..]));
        // A torn append (a crash mid-write): the torn record is a miss, the others hit.
        let mut torn = after.clone();
        put_record(&mut torn, &key(12), &[12; 22]).unwrap();
        torn.truncate(torn.len() - 3);
        std::fs::write(d.join(CACHE_FILE), &torn).unwrap();
        let seen = load(d, &fp);
        assert_eq!(seen.get(&key(12)), None);
        assert_eq!(seen.valid_end, after.len());
        assert_eq!(seen.order.len(), 12);
        // The next writer cuts the tail off before it appends: its record is readable.
        let w = store(
            d,
            &fp,
            DEFAULT_MAX_BYTES,
            Some(&seen),
            &entries(12..14),
            &[],
        )
        .unwrap();
        assert_eq!((w.entries, w.compacted), (2, false));
        let c = load(d, &fp);
        assert_eq!(c.order.len(), 14);
        assert_eq!(c.valid_end as u64, after.len() as u64 + w.bytes);
        assert_eq!(c.get(&key(13)).as_deref(), Some(&vec![13u8; 23][..]));
    }

    #[test]
    fn a_stale_copy_rereads_the_log_and_the_bound_compacts() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let fp = [7u8; 32];
        store(d, &fp, DEFAULT_MAX_BYTES, None, &entries(0..4), &[]).unwrap();
        // Two runs read the same log; both append: the second sees the first's records (it
        // reads the log again under the lock) and appends only what is still missing.
        let a = load(d, &fp);
        let b = load(d, &fp);
        store(d, &fp, DEFAULT_MAX_BYTES, Some(&a), &entries(4..8), &[]).unwrap();
        let w = store(d, &fp, DEFAULT_MAX_BYTES, Some(&b), &entries(6..9), &[]).unwrap();
        assert_eq!((w.entries, w.compacted), (1, false));
        let c = load(d, &fp);
        assert_eq!((c.order.len(), c.dead), (9, 0));
        // Appending past the bound compacts: this run's entries and hits first.
        let len = c.valid_end as u64;
        let w = store(d, &fp, len + 40, Some(&c), &entries(20..21), &[key(0)]).unwrap();
        assert!(w.compacted, "{w:?}");
        let c = CacheFile::load(&d.join(CACHE_FILE), &fp, len + 40).unwrap();
        assert_eq!(c.order[..2], [key(20), key(0)]);
        assert!(c.valid_end as u64 <= len + 40);
        // Another build's log is replaced, not appended to.
        let w = store(d, &[9u8; 32], DEFAULT_MAX_BYTES, None, &entries(0..1), &[]).unwrap();
        assert!(w.compacted);
        assert_eq!(load(d, &[9u8; 32]).order, vec![key(0)]);
        assert!(CacheFile::load(&d.join(CACHE_FILE), &fp, DEFAULT_MAX_BYTES).is_err());
    }

    #[test]
    fn concurrent_writers_never_corrupt_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_owned();
        let fp = [7u8; 32];
        store(&d, &fp, DEFAULT_MAX_BYTES, None, &entries(0..1), &[]).unwrap();
        let seen = Arc::new(load(&d, &fp));
        let threads: Vec<_> = (0..8u8)
            .map(|t| {
                let d = d.clone();
                let seen = seen.clone();
                std::thread::spawn(move || {
                    for round in 0..10u8 {
                        let n = 1 + t * 10 + round;
                        // Every writer also adds key 200: duplicates must not corrupt.
                        let fresh = vec![(key(n), vec![n; 50]), (key(200), vec![200; 30])];
                        store(&d, &fp, DEFAULT_MAX_BYTES, Some(&seen), &fresh, &[]).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let c = load(&d, &fp);
        assert_eq!(
            c.valid_end,
            std::fs::metadata(d.join(CACHE_FILE)).unwrap().len() as usize
        );
        for n in 0..=80u8 {
            assert_eq!(
                c.get(&key(n)).as_deref(),
                Some(&vec![n; if n == 0 { 10 } else { 50 }][..])
            );
        }
        assert_eq!(c.get(&key(200)).as_deref(), Some(&[200u8; 30][..]));
        assert_eq!(c.dead, 0, "each writer reads what the others appended");
    }
}
