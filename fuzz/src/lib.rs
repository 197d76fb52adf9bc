//! Fuzz targets for every loader of untrusted bytes in vakt. Each `run_*` function takes one
//! input, must never panic on it, and checks a cheap property where one exists (a round trip, or
//! two entry points agreeing). The binaries in `src/bin/` hand AFL++'s inputs to these functions
//! (`cargo afl build`); `fuzz.sh check` starts every run from the committed corpus, crash
//! reproducers (`regress-*`) included, so AFL++'s dry run replays them all first.
//!
//! Multi-file targets (`overlay`, `backup`) read their input as sections: a line
//! `=== <path>` starts the file `<path>`, and the lines after it are its content.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use opsrepo::Pos;
use opsrepo::parse::{self, Format};
use opsrepo::snippets::{self, Snapshot, SnippetName};
use opsrepo::source::{Origin, RawFile, RepoFiles};
use reconciler::desired::canon;
use reconciler::desired::saved::SavedPlan;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Every target, by the name of its binary and its corpus directory.
pub const TARGETS: &[(&str, fn(&[u8]))] = &[
    ("parse_toml", run_parse_toml),
    ("parse_yaml", run_parse_yaml),
    ("parse_json", run_parse_json),
    ("overlay", run_overlay),
    ("markdown", run_markdown),
    ("logql", run_logql),
    ("promql", run_promql),
    ("snippets", run_snippets),
    ("saved_plan", run_saved_plan),
    ("backup", run_backup),
];

/// Largest input a target looks at (AFL++ keeps inputs far smaller; this bounds replays).
pub const MAX_INPUT: usize = 1 << 20;
/// Most files a sectioned input holds.
const MAX_SECTIONS: usize = 32;

/// Splits a sectioned input into `(path, content)` pairs; text before the first `=== ` line
/// belongs to `default`.
pub fn sections(data: &[u8], default: &str) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    for line in data.split_inclusive(|b| *b == b'\n') {
        if let Some(rest) = line.strip_prefix(b"=== ")
            && out.len() < MAX_SECTIONS
        {
            let name = String::from_utf8_lossy(rest)
                .trim()
                .chars()
                .take(200)
                .collect();
            out.push((name, Vec::new()));
            continue;
        }
        match out.last_mut() {
            Some((_, c)) => c.extend_from_slice(line),
            None => out.push((default.to_owned(), line.to_vec())),
        }
    }
    out
}

/// Every position a finding names lies inside the text it was found in.
fn check_pos(what: &str, text: &str, pos: Pos) {
    // YAML (and so the JSON loader, which is saphyr) counts a lone CR as a line break too.
    let lines =
        (text.split('\n').count() + text.replace("\r\n", "\n").matches('\r').count()) as u32;
    assert!(
        pos.line >= 1 && pos.line <= lines.max(1) + 1 && pos.col >= 1,
        "{what}: position {}:{} outside a text of {lines} lines",
        pos.line,
        pos.col
    );
}

fn structured(data: &[u8], path: &str, format: Format) {
    if data.len() > MAX_INPUT {
        return;
    }
    let text = match parse::decode(path, data) {
        Ok(t) => t,
        Err(f) => {
            assert_eq!(f.rule, "input.encoding");
            return;
        }
    };
    let with_spans = parse::parse(path, format, text);
    let value_only = parse::parse_value(path, format, text);
    match (&with_spans, &value_only) {
        (Ok(p), Ok(v)) => assert_eq!(&p.value, v, "parse and parse_value disagree"),
        (Err(a), Err(b)) => {
            assert_eq!(a.rule, b.rule, "parse and parse_value refuse differently");
            check_pos(
                "refusal",
                text,
                Pos {
                    line: a.line,
                    col: a.col,
                },
            );
        }
        _ => panic!(
            "parse and parse_value disagree: {:?} vs {:?}",
            with_spans.as_ref().map(|_| ()),
            value_only.as_ref().map(|_| ())
        ),
    }
    let Ok(p) = with_spans else { return };
    // Positions of the root and of every top-level key lie inside the text.
    check_pos("root", text, p.spans.value(""));
    if let Value::Object(m) = &p.value {
        for k in m.keys().take(64) {
            let ptr = format!("/{}", parse::escape_segment(k));
            check_pos("key", text, p.spans.key(&ptr));
            check_pos("value", text, p.spans.value(&ptr));
        }
    }
    // Round trip: the value, written as JSON, loads back through the JSON loader unchanged.
    // Known, not fixed: integers above i64::MAX load as floats through the JSON/YAML loader
    // (TOML keeps them as u64), so such values are left out (RELIABILITY.md, "Crashes found").
    if has_big_int(&p.value) {
        return;
    }
    let json = serde_json::to_string(&p.value).expect("a parsed value serialises");
    match parse::parse_value("roundtrip.json", Format::Json, &json) {
        Ok(back) => assert_eq!(back, p.value, "JSON round trip changed the value"),
        Err(f) => panic!("the JSON loader refuses what the {format:?} loader produced: {f:?}"),
    }
}

fn has_big_int(v: &Value) -> bool {
    match v {
        Value::Number(n) => n.as_u64().is_some_and(|u| u > i64::MAX as u64),
        Value::Array(a) => a.iter().any(has_big_int),
        Value::Object(m) => m.values().any(has_big_int),
        _ => false,
    }
}

pub fn run_parse_toml(data: &[u8]) {
    structured(data, "config/fuzz.toml", Format::Toml);
}

pub fn run_parse_yaml(data: &[u8]) {
    structured(data, "alerts/fuzz.yaml", Format::Yaml);
}

pub fn run_parse_json(data: &[u8]) {
    structured(data, "dashboards/fuzz.json", Format::Json);
}

/// A small in-memory repo (sections), parsed and viewed as the base and as each environment;
/// and RFC 7386 merge patch idempotence over its documents' values.
pub fn run_overlay(data: &[u8]) {
    if data.len() > MAX_INPUT {
        return;
    }
    let mut files: Vec<RawFile> = sections(data, "vakt.toml")
        .into_iter()
        .map(|(path, c)| RawFile {
            path,
            content: Ok(c),
        })
        .collect();
    files.sort_by(|a, b| a.path.cmp(&b.path));
    files.dedup_by(|a, b| a.path == b.path);
    let repo = RepoFiles {
        origin: Origin::WorkTree(PathBuf::from("/fuzz")),
        files,
    };
    let parsed = opsrepo::load::parse_all(&repo);
    let (_, findings) = opsrepo::load::build_view(&parsed, None);
    let envs: Vec<String> = parsed
        .manifest
        .as_ref()
        .map(|m| m.environments.keys().take(4).cloned().collect())
        .unwrap_or_default();
    let mut all = findings;
    for env in &envs {
        all.extend(opsrepo::load::build_view(&parsed, Some(env)).1);
    }
    for f in all.iter().take(256) {
        if let Some(t) = parsed.texts.get(&f.path) {
            check_pos(
                f.rule,
                t,
                Pos {
                    line: f.line,
                    col: f.col,
                },
            );
        }
    }
    let values: Vec<Value> = parsed.docs.iter().map(|d| d.value.to_value()).take(4).collect();
    for pair in values.windows(2) {
        let mut once = pair[0].clone();
        opsrepo::load::merge_patch(&mut once, &pair[1]);
        let mut twice = once.clone();
        opsrepo::load::merge_patch(&mut twice, &pair[1]);
        assert_eq!(once, twice, "merge patch is not idempotent");
    }
}

/// The runbook markdown checks, and the operator site's rendering of the same markdown (its direct
/// writer against ammonia, see `sitegen/src/safe_html.rs`).
pub fn run_markdown(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if text.len() > MAX_INPUT {
        return;
    }
    // The operator site's two sanitising paths: a document the direct writer takes must come
    // out exactly as ammonia writes it, and neither output may carry a script tag.
    let fast = sitegen::markdown::render(text);
    let reference = sitegen::markdown::render_with_ammonia(text);
    if !fast.via_ammonia {
        assert_eq!(fast.html, reference.html, "direct writer differs from ammonia");
    }
    for html in [&fast.html, &reference.html] {
        assert!(!html.contains("<script"), "script tag in sanitised HTML");
    }
    let mut out = Vec::new();
    opsrepo::rules::runbook_markdown("runbooks/fuzz.md", text, &mut out);
    for f in &out {
        check_pos(
            f.rule,
            text,
            Pos {
                line: f.line,
                col: f.col,
            },
        );
    }
}

/// The LogQL checker, on the query as written and with Grafana variables filled in as the
/// dashboard rule does.
pub fn run_logql(data: &[u8]) {
    let Ok(q) = std::str::from_utf8(data) else {
        return;
    };
    if q.len() > MAX_INPUT {
        return;
    }
    let _ = opsrepo::rules::logql::check(q);
    let filled = opsrepo::rules::observability::grafana_fill(q);
    let _ = opsrepo::rules::logql::check(&filled);
}

/// PromQL extraction: Grafana variable filling, then the facts the rules read.
pub fn run_promql(data: &[u8]) {
    use opsrepo::rules::{observability, promql};
    let Ok(q) = std::str::from_utf8(data) else {
        return;
    };
    if q.len() > MAX_INPUT {
        return;
    }
    let _ = observability::placeholders(q);
    let filled = observability::grafana_fill(q);
    for e in [q, filled.as_str()] {
        let facts = promql::facts(e);
        let cmp = promql::has_comparison(e);
        if let Some(f) = &facts {
            let _ = f.metrics().count();
            if f.threshold.is_some() {
                assert!(cmp, "a threshold without a comparison in {e:?}");
            }
            for d in &f.durations {
                let _ = promql::show_duration(*d);
            }
        }
    }
    if let Some(d) = promql::duration(q) {
        let shown = promql::show_duration(d);
        assert_eq!(
            promql::duration(&shown),
            Some(d),
            "duration {q:?} shown as {shown:?} reads back differently"
        );
    }
}

fn base_snapshot() -> &'static Snapshot {
    static S: OnceLock<Snapshot> = OnceLock::new();
    S.get_or_init(|| snippets::snapshot(&opsrepo::load::Model::default(), "2026-01-01T00:00:00Z"))
}

/// A snippet file as the site and the daemon read it; a snippet that loads writes back and
/// loads again to the same value.
pub fn run_snippets(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    if rest.len() > MAX_INPUT {
        return;
    }
    let Ok(v) = serde_json::from_slice::<Value>(rest) else {
        return;
    };
    // The first byte picks the snippet; the name a document carries is not trusted.
    let name = SnippetName::ALL[usize::from(sel) % SnippetName::ALL.len()];
    let mut s = base_snapshot().clone();
    if s.set(name, v).is_ok() {
        let written = s.to_value(name);
        let mut again = base_snapshot().clone();
        again
            .set(name, written.clone())
            .expect("a snippet vakt wrote loads back");
        assert_eq!(
            again.to_value(name),
            written,
            "snippet round trip changed it"
        );
    }
}

/// `SavedPlan::parse` on the bytes as given, and once more with the digest recomputed so the
/// checks behind the digest are reached; a plan that loads writes back and loads identically.
pub fn run_saved_plan(data: &[u8]) {
    if data.len() > MAX_INPUT {
        return;
    }
    let mut inputs = vec![data.to_vec()];
    if let Ok(Value::Object(mut o)) = serde_json::from_slice::<Value>(data) {
        o.remove("digest");
        let digest = canon::digest(&canon::to_vec(&Value::Object(o.clone())));
        o.insert("digest".into(), Value::String(digest));
        inputs.push(serde_json::to_vec(&Value::Object(o)).expect("serialises"));
    }
    for bytes in inputs {
        let Ok(plan) = SavedPlan::parse("fuzz.plan.json", &bytes) else {
            continue;
        };
        let written = plan.to_bytes();
        let back =
            SavedPlan::parse("fuzz.plan.json", &written).expect("a plan vakt wrote loads back");
        assert_eq!(back.to_bytes(), written, "saved plan round trip changed it");
        let _ = plan.check_origin("dev", "vakt_dev");
        let now = time::OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000);
        let _ = plan.check_fresh(&"c".repeat(40), now);
    }
}

fn sha256_hex(b: &[u8]) -> String {
    let d = Sha256::digest(b);
    let mut s = String::with_capacity(71);
    s.push_str("sha256:");
    for x in d {
        s.push_str(&format!("{x:02x}"));
    }
    s
}

fn verify_backup(files: &HashMap<String, Vec<u8>>) {
    let dir = Path::new("/fuzz/backup");
    let read = |rel: &str| {
        files.get(rel).cloned().ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, format!("{rel}: no such file"))
        })
    };
    if let Ok(v) = reconciler::ops::backup::verify_files(dir, &read) {
        assert_eq!(v.manifest.format, reconciler::ops::backup::FORMAT);
        for b in reconciler::ops::backup::bucket_names() {
            assert!(
                v.buckets.contains_key(b),
                "verified backup lacks bucket {b}"
            );
        }
    }
}

/// The backup reader on a backup given as sections (`manifest.json`, `manifest.sha256`,
/// `buckets/<name>.jsonl`, `audit.jsonl`): as given, and once more with the manifest's sizes
/// and checksums (and its own checksum) made to match the files, so the record checks are
/// reached.
pub fn run_backup(data: &[u8]) {
    if data.len() > MAX_INPUT {
        return;
    }
    let mut files: HashMap<String, Vec<u8>> = sections(data, "manifest.json").into_iter().collect();
    verify_backup(&files);
    let Some(m) = files.get("manifest.json") else {
        return;
    };
    let Ok(mut mv) = serde_json::from_slice::<Value>(m) else {
        return;
    };
    if let Some(list) = mv.get_mut("files").and_then(Value::as_array_mut) {
        for f in list.iter_mut() {
            let Some(path) = f.get("path").and_then(Value::as_str).map(str::to_owned) else {
                continue;
            };
            let Some(content) = files.get(&path) else {
                continue;
            };
            let (n, sha) = (content.len() as u64, sha256_hex(content));
            if let Some(o) = f.as_object_mut() {
                o.insert("bytes".into(), n.into());
                o.insert("sha256".into(), sha.into());
            }
        }
    }
    let m = serde_json::to_vec_pretty(&mv).expect("serialises");
    files.insert("manifest.sha256".into(), sha256_hex(&m).into_bytes());
    files.insert("manifest.json".into(), m);
    verify_backup(&files);
}
