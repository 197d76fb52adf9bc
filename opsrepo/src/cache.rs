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
//! * **Files**: one file, `validate-v1.bin` (header, index, data), read whole with one `read` and
//!   written whole to a temporary file that is renamed over it (atomic; concurrent runs each
//!   rename a complete file, the last one wins). Every entry and the index carry a CRC-32: a
//!   corrupt or truncated file or entry is a miss, never an error and never a wrong result.
//! * **Bound**: at most [`CacheOptions::max_bytes`] (default 256 MiB). A file over the bound is
//!   not read; a write keeps this run's entries first, then older ones, and drops what would
//!   exceed the bound.
//! * Runbooks (their text is checked by rules anyway), the manifest and files refused before
//!   they are parsed (unknown paths, unreadable blobs) are not cached.
//!
//! Deleting the cache directory at any time is safe: a run that already read it keeps its copy
//! in memory, and a run that finds nothing parses everything.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rayon::prelude::*;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::diag::{Finding, RULES, Severity};
use crate::kinds::Kind;
use crate::load::{self, Parsed0, SourceDoc};
use crate::parse::{Format, LazyText};
use crate::rules::secrets;
use crate::source::{self, RawFile, SourceError};

/// Name of the cache file inside the cache directory.
pub const CACHE_FILE: &str = "validate-v1.bin";
/// Default bound of the cache file (256 MiB; a 50,000-document repo needs about 30 MiB).
pub const DEFAULT_MAX_BYTES: u64 = 256 * 1024 * 1024;

const MAGIC: &[u8; 8] = b"VAKTVC01";
/// Bumped whenever the encoding or what a parse produces changes.
const FORMAT_VERSION: u32 = 1;
const HEADER_LEN: usize = 8 + 32 + 4;
const INDEX_ENTRY_LEN: usize = 20 + 4 + 8 + 4 + 4;

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
    /// Entries in the cache file written by this run (0: nothing new, not written).
    pub written_entries: usize,
    pub written_bytes: u64,
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
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Outcome {
    /// A document (schema-checked if it is a base document).
    Doc(Value),
    /// Findings that refused the file, and the id it declares if it failed its schema.
    Failed(Vec<Finding>, Option<String>),
}

/// One cache entry: the outcome and the file's own secret-scan findings.
#[derive(Debug, Clone, PartialEq)]
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
        Outcome::Doc(v) => {
            out.push(0);
            put_value(&mut out, v)?;
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
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
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

/// Decodes an entry for the file at `path`; `None` if it is malformed.
pub(crate) fn decode_entry(b: &[u8], path: &str) -> Option<Entry> {
    let mut r = Reader { b };
    let outcome = match r.u8()? {
        0 => Outcome::Doc(r.value(0)?),
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

/// A cache file read into memory, with its index.
struct CacheFile {
    buf: Vec<u8>,
    /// Key -> (start, end, crc) of the entry in `buf`, in file order.
    index: HashMap<Key, (usize, usize, u32)>,
    order: Vec<Key>,
}

impl CacheFile {
    /// Reads and indexes the cache file; `Err` says why it is not used (a miss, not an error).
    fn load(path: &Path, fp: &[u8; 32], max_bytes: u64) -> Result<CacheFile, String> {
        let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let len = f.metadata().map_err(|e| e.to_string())?.len();
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
        Self::parse(buf, fp)
            .ok_or_else(|| format!("{} is from another vakt build or damaged", path.display()))
    }

    fn parse(buf: Vec<u8>, fp: &[u8; 32]) -> Option<CacheFile> {
        let mut r = Reader { b: &buf };
        if r.take(8)? != MAGIC || r.take(32)? != fp {
            return None;
        }
        let n = r.u32()? as usize;
        let index_len = n.checked_mul(INDEX_ENTRY_LEN)?;
        let index_bytes = r.take(index_len)?;
        let index_crc = r.u32()?;
        if crc32fast::hash(&buf[..HEADER_LEN + index_len]) != index_crc {
            return None;
        }
        let data_start = HEADER_LEN + index_len + 4;
        let mut ir = Reader { b: index_bytes };
        let mut index = HashMap::with_capacity(n);
        let mut order = Vec::with_capacity(n);
        for _ in 0..n {
            let oid: [u8; 20] = ir.take(20)?.try_into().ok()?;
            let kind = ir.u8()?;
            let format = ir.u8()?;
            let overlay = ir.u8()? == 1;
            ir.u8()?;
            let off = usize::try_from(ir.u64()?).ok()?;
            let len = ir.u32()? as usize;
            let crc = ir.u32()?;
            let start = data_start.checked_add(off)?;
            let end = start.checked_add(len)?;
            if end > buf.len() {
                continue; // truncated: this entry is a miss
            }
            let key = Key {
                oid,
                kind,
                format,
                overlay,
            };
            if index.insert(key, (start, end, crc)).is_none() {
                order.push(key);
            }
        }
        Some(CacheFile { buf, index, order })
    }

    /// The entry's bytes if its checksum holds.
    fn get(&self, key: &Key) -> Option<&[u8]> {
        let (s, e, crc) = *self.index.get(key)?;
        let b = &self.buf[s..e];
        (crc32fast::hash(b) == crc).then_some(b)
    }
}

/// Writes `entries` (first ones kept when the bound is reached) to `dir/CACHE_FILE`
/// atomically. Returns the entries and bytes written.
fn write_file<'a>(
    dir: &Path,
    fp: &[u8; 32],
    max_bytes: u64,
    entries: impl Iterator<Item = (Key, &'a [u8])>,
) -> std::io::Result<(usize, u64)> {
    let mut keep: Vec<(Key, &[u8])> = Vec::new();
    let mut seen = HashSet::new();
    let mut total = (HEADER_LEN + 4) as u64;
    for (k, b) in entries {
        let add = (INDEX_ENTRY_LEN + b.len()) as u64;
        if total + add > max_bytes {
            break;
        }
        if seen.insert(k) {
            total += add;
            keep.push((k, b));
        }
    }
    let mut out = Vec::with_capacity(total as usize);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(fp);
    put_u32(&mut out, keep.len() as u32);
    let mut off = 0u64;
    for (k, b) in &keep {
        out.extend_from_slice(&k.oid);
        out.push(k.kind);
        out.push(k.format);
        out.push(u8::from(k.overlay));
        out.push(0);
        out.extend_from_slice(&off.to_le_bytes());
        put_u32(&mut out, b.len() as u32);
        put_u32(&mut out, crc32fast::hash(b));
        off += b.len() as u64;
    }
    let crc = crc32fast::hash(&out);
    put_u32(&mut out, crc);
    for (_, b) in &keep {
        out.extend_from_slice(b);
    }
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile_in(dir)?;
    tmp.1.write_all(&out)?;
    drop(tmp.1);
    let target = dir.join(CACHE_FILE);
    if let Err(e) = std::fs::rename(&tmp.0, &target) {
        let _ = std::fs::remove_file(&tmp.0);
        return Err(e);
    }
    Ok((keep.len(), out.len() as u64))
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
    deferred: Option<Arc<LazyText>>,
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
        Ok(Some(d)) => Some(Outcome::Doc(d.value.to_value())),
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
    Hit(&'a str, Kind, Key, gix::ObjectId, &'a [u8]),
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
    let listing = source::list_commit(repo_path, rev)?;
    let repo = &listing.repo;
    tracing::debug!(
        ms = ms(t0),
        files = listing.files.len(),
        "cache: tree listed"
    );
    let dir = opts
        .dir
        .clone()
        .unwrap_or_else(|| repo.git_dir().join("vakt").join("cache"));
    let fp = fingerprint();
    let mut stats = CacheStats {
        dir: dir.clone(),
        ..Default::default()
    };
    let old = match CacheFile::load(&dir.join(CACHE_FILE), &fp, opts.max_bytes) {
        Ok(c) => Some(c),
        Err(why) => {
            stats.read_problem = Some(why);
            None
        }
    };

    tracing::debug!(ms = ms(t0), "cache: cache file read");
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

    // Look every file up; read the blobs of the others (a repository handle stays on its
    // thread, so blobs are read here, in order; a hit reads nothing).
    let pending: Vec<Pending> = listing
        .files
        .iter()
        .map(|f| {
            let oid = match &f.blob {
                Ok(oid) => *oid,
                Err(finding) => {
                    return Pending::Read(
                        RawFile {
                            path: f.path.clone(),
                            content: Err(finding.clone()),
                        },
                        None,
                    );
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
                && let Some(bytes) = old.as_ref().and_then(|c| c.get(&key))
            {
                return Pending::Hit(&f.path, kind, key, oid, bytes);
            }
            let raw = RawFile {
                path: f.path.clone(),
                content: source::read_blob(repo, oid, &f.path),
            };
            Pending::Read(raw, key.map(|(_, k)| k))
        })
        .collect();

    tracing::debug!(ms = ms(t0), "cache: looked up, misses read");
    let results: Vec<One> = pending
        .into_par_iter()
        .map(|p| match p {
            Pending::Read(raw, Some(key)) => parse_miss(&raw, key, &bindings),
            Pending::Read(raw, None) => parse_read(&raw, &bindings),
            Pending::Hit(path, kind, key, oid, bytes) => {
                hit(repo_path, path, kind, key, oid, bytes).unwrap_or_else(|| {
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

    tracing::debug!(ms = ms(t0), "cache: parsed and decoded");
    let mut out = Parsed0 {
        files: listing.files.len(),
        manifest,
        prescanned: true,
        ..Default::default()
    };
    let mut fresh: Vec<(Key, Vec<u8>)> = Vec::new();
    let mut hits: Vec<Key> = Vec::new();
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
            out.deferred_texts.insert(f.path.clone(), t);
        }
        out.findings.extend(one.scans);
        out.add(one.result);
    }

    tracing::debug!(ms = ms(t0), "cache: assembled");
    // Only a run that parsed something new writes: this run's entries first, then the older
    // ones (other commits' blobs) while the bound allows.
    if !fresh.is_empty() {
        let get = |k: &Key| old.as_ref().and_then(|c| c.get(k));
        let this_run = fresh
            .iter()
            .map(|(k, b)| (*k, &b[..]))
            .chain(hits.iter().filter_map(|k| Some((*k, get(k)?))));
        let older = old.iter().flat_map(|c| {
            c.order.iter().filter_map(|k| {
                let (s, e, _) = c.index.get(k)?;
                Some((*k, &c.buf[*s..*e]))
            })
        });
        match write_file(&dir, &fp, opts.max_bytes, this_run.chain(older)) {
            Ok((n, bytes)) => {
                stats.written_entries = n;
                stats.written_bytes = bytes;
            }
            Err(e) => stats.write_problem = Some(format!("{}: {e}", dir.display())),
        }
    }
    tracing::debug!(ms = ms(t0), "cache: done");
    Ok((out, stats))
}

/// A file whose entry is in the cache; `None` if the entry does not decode.
fn hit(
    repo_path: &Path,
    path: &str,
    kind: Kind,
    key: Key,
    oid: gix::ObjectId,
    bytes: &[u8],
) -> Option<One> {
    let entry = decode_entry(bytes, path)?;
    let text = {
        let repo_path = repo_path.to_owned();
        let path = path.to_owned();
        Arc::new(LazyText::deferred(move || {
            blob_text(&repo_path, oid, &path)
        }))
    };
    let result = match entry.outcome {
        Outcome::Doc(v) => Ok(Some(SourceDoc::from_cache(path, kind, v, text.clone()))),
        Outcome::Failed(f, id) => Err((f, id)),
    };
    Some(One {
        result,
        scans: entry.scans,
        text: None,
        deferred: Some(text),
        status: Status::Hit(key),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diag::Pos;

    fn roundtrip(e: &Entry, path: &str) -> Option<Entry> {
        decode_entry(&encode_entry(e, path)?, path)
    }

    #[test]
    fn values_round_trip_exactly() {
        let v: Value = serde_json::from_str(
            r#"{"z": 1, "a": [1.5, -2, 18446744073709551615, 1e300, 0.1, true, null],
                "s": "line\nbreak \u0000 ünï", "o": {"b": {}, "a": []}, "f": 3.0}"#,
        )
        .unwrap();
        let e = Entry {
            outcome: Outcome::Doc(v.clone()),
            scans: vec![],
        };
        let back = roundtrip(&e, "config/a.toml").unwrap();
        assert_eq!(back, e);
        // Key order is kept (documents are shown and compiled in their own order).
        let Outcome::Doc(b) = back.outcome else {
            panic!("not a doc")
        };
        assert_eq!(
            serde_json::to_string(&b).unwrap(),
            serde_json::to_string(&v).unwrap()
        );
        assert!(b["f"].is_f64() && b["a"][2].is_u64());
    }

    #[test]
    fn values_deeper_than_the_bound_are_misses() {
        let mut v = Value::Null;
        for _ in 0..=MAX_DEPTH + 1 {
            v = Value::Array(vec![v]);
        }
        let e = Entry {
            outcome: Outcome::Doc(v),
            scans: vec![],
        };
        let bytes = encode_entry(&e, "a.json").unwrap();
        assert!(decode_entry(&bytes, "a.json").is_none());
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
        let back = decode_entry(&bytes, "c/d.toml").unwrap();
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
            assert!(decode_entry(&bytes[..n], "a.toml").is_none(), "prefix {n}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode_entry(&longer, "a.toml").is_none());
    }

    fn key(n: u8) -> Key {
        Key {
            oid: [n; 20],
            kind: 1,
            format: 0,
            overlay: false,
        }
    }

    #[test]
    fn cache_file_round_trips_and_rejects_damage() {
        let dir = tempfile::tempdir().unwrap();
        let fp = [7u8; 32];
        let entries: Vec<(Key, Vec<u8>)> = (0..50)
            .map(|n| (key(n), vec![n; 10 + n as usize]))
            .collect();
        let (n, bytes) = write_file(
            dir.path(),
            &fp,
            DEFAULT_MAX_BYTES,
            entries.iter().map(|(k, b)| (*k, &b[..])),
        )
        .unwrap();
        assert_eq!(n, 50);
        let path = dir.path().join(CACHE_FILE);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), bytes);
        let c = CacheFile::load(&path, &fp, DEFAULT_MAX_BYTES).unwrap();
        for (k, b) in &entries {
            assert_eq!(c.get(k), Some(&b[..]));
        }
        // Another fingerprint: the whole file is a miss.
        assert!(CacheFile::load(&path, &[8u8; 32], DEFAULT_MAX_BYTES).is_err());
        // Over the bound: not read.
        assert!(CacheFile::load(&path, &fp, 100).is_err());
        // Truncated: the entries past the end are misses, the others still hit.
        let full = std::fs::read(&path).unwrap();
        std::fs::write(&path, &full[..full.len() - 5]).unwrap();
        let c = CacheFile::load(&path, &fp, DEFAULT_MAX_BYTES).unwrap();
        assert_eq!(c.get(&key(49)), None);
        assert_eq!(c.get(&key(0)), Some(&entries[0].1[..]));
        // A flipped data byte: that entry is a miss.
        let mut bad = full.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        std::fs::write(&path, &bad).unwrap();
        let c = CacheFile::load(&path, &fp, DEFAULT_MAX_BYTES).unwrap();
        assert_eq!(c.get(&key(49)), None);
        // A flipped index byte: the whole file is a miss.
        let mut bad = full.clone();
        bad[HEADER_LEN + 3] ^= 1;
        std::fs::write(&path, &bad).unwrap();
        assert!(CacheFile::load(&path, &fp, DEFAULT_MAX_BYTES).is_err());
        // The bound on writing keeps the first entries.
        let (n, bytes) = write_file(
            dir.path(),
            &fp,
            600,
            entries.iter().map(|(k, b)| (*k, &b[..])),
        )
        .unwrap();
        assert!(n < 50 && bytes <= 600, "{n} entries, {bytes} bytes");
        let c = CacheFile::load(&path, &fp, DEFAULT_MAX_BYTES).unwrap();
        assert!(c.get(&key(0)).is_some() && c.get(&key(49)).is_none());
    }
}
