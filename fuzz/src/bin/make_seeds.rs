//! Writes the seed inputs of every fuzz target from the bundled ops repo and `tests/fixtures`:
//! `make_seeds <repo root> <out dir>` fills `<out dir>/<target>/`. The committed corpora under
//! `fuzz/corpus/` are these seeds minimised with `afl-cmin` (see `fuzz/fuzz.sh seed`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use opsrepo::parse::{self, Format};
use opsrepo::snippets::SnippetName;
use reconciler::desired::plan::{LivePlan, Plan};
use reconciler::desired::saved::{Origin, SavedPlan};
use reconciler::store::audit::{AuditEvent, GENESIS};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Seeds larger than this are left out: AFL++ mutates small inputs far better.
const MAX_SEED: usize = 24 * 1024;

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<PathBuf> = rd.filter_map(Result::ok).map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with('.') || name == "target" || name == "fuzz" {
            continue;
        }
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}

struct Out {
    dir: PathBuf,
    seen: BTreeSet<(String, Vec<u8>)>,
}

impl Out {
    fn put(&mut self, target: &str, bytes: Vec<u8>) {
        if bytes.is_empty() || bytes.len() > MAX_SEED {
            return;
        }
        if !self.seen.insert((target.to_owned(), bytes.clone())) {
            return;
        }
        let d = self.dir.join(target);
        std::fs::create_dir_all(&d).expect("create the seed directory");
        let name = format!("{:.16x}", Sha256::digest(&bytes))
            .chars()
            .take(16)
            .collect::<String>();
        std::fs::write(d.join(format!("seed-{name}")), bytes).expect("write a seed");
    }
}

fn collect_exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr" | "query", Value::String(s)) => out.push(s.clone()),
                    _ => collect_exprs(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| collect_exprs(x, out)),
        _ => {}
    }
}

fn sha256_hex(b: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(b))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: make_seeds <repo root> <out dir>");
        std::process::exit(2);
    }
    let root = PathBuf::from(&args[1]);
    let mut out = Out {
        dir: PathBuf::from(&args[2]),
        seen: BTreeSet::new(),
    };
    let mut files = Vec::new();
    walk(&root, &mut files);
    // (relative path, content) of every document: the repo's files and the fixtures' writes.
    let mut docs: Vec<(String, Vec<u8>)> = Vec::new();
    for p in &files {
        let rel = p
            .strip_prefix(&root)
            .unwrap_or(p)
            .to_string_lossy()
            .replace('\\', "/");
        let skip = [
            "cli/",
            "opsrepo/",
            "reconciler/",
            "sitegen/",
            "bench/",
            "scripts/",
        ];
        if skip.iter().any(|s| rel.starts_with(s)) || rel.starts_with("tests/src") {
            continue;
        }
        let Ok(bytes) = std::fs::read(p) else {
            continue;
        };
        if rel.ends_with("case.toml")
            && let Ok(t) = std::str::from_utf8(&bytes)
            && let Ok(v) = toml::from_str::<toml::Table>(t)
        {
            for w in v
                .get("write")
                .and_then(|w| w.as_array())
                .into_iter()
                .flatten()
            {
                if let (Some(path), Some(c)) = (
                    w.get("path").and_then(|x| x.as_str()),
                    w.get("content").and_then(|x| x.as_str()),
                ) {
                    docs.push((path.to_owned(), c.as_bytes().to_vec()));
                }
            }
        }
        docs.push((rel, bytes));
    }
    let mut exprs = Vec::new();
    for (rel, bytes) in &docs {
        let target = match Format::from_path(rel) {
            Some(Format::Toml) => "parse_toml",
            Some(Format::Yaml) => "parse_yaml",
            Some(Format::Json) => "parse_json",
            Some(Format::Markdown) => "markdown",
            None => continue,
        };
        out.put(target, bytes.clone());
        if let Ok(t) = std::str::from_utf8(bytes)
            && let Some(f) = Format::from_path(rel).filter(|f| *f != Format::Markdown)
            && let Ok(v) = parse::parse_value(rel, f, t)
        {
            collect_exprs(&v, &mut exprs);
        }
    }
    for e in &exprs {
        out.put("promql", e.as_bytes().to_vec());
        out.put("logql", e.as_bytes().to_vec());
    }

    // overlay: the manifest, a base document and an environment's overlay of it.
    let manifest = std::fs::read(root.join("vakt.toml")).expect("the repo root has vakt.toml");
    for (rel, bytes) in &docs {
        let Some(rest) = rel.strip_prefix("environments/") else {
            continue;
        };
        let Some((_, base)) = rest.split_once('/') else {
            continue;
        };
        let Ok(base_bytes) = std::fs::read(root.join(base)) else {
            continue;
        };
        let mut s = b"=== vakt.toml\n".to_vec();
        s.extend_from_slice(&manifest);
        for (p, c) in [(base, &base_bytes), (rel.as_str(), bytes)] {
            s.extend_from_slice(format!("\n=== {p}\n").as_bytes());
            s.extend_from_slice(c);
        }
        out.put("overlay", s);
    }

    // snippets: the build-time snapshot of the bundled repo, each with its selector byte.
    let repo = opsrepo::read_work_tree(&root).expect("read the bundled repo");
    let parsed = opsrepo::load::parse_all(&repo);
    let (model, _) = opsrepo::load::build_view(&parsed, None);
    let snap = opsrepo::snippets::snapshot(&model, "2026-01-01T00:00:00Z");
    for (i, name) in SnippetName::ALL.iter().enumerate() {
        let mut b = vec![i as u8];
        b.extend(serde_json::to_vec_pretty(&snap.to_value(*name)).expect("serialises"));
        out.put("snippets", b);
    }

    // saved_plan: an empty plan and one with an add, a change and a removal.
    let head = "c".repeat(40);
    let origin = Origin {
        env: "dev",
        kv_prefix: "vakt_dev",
        branch: "env/dev",
        branch_head: &head,
        actor: "user:fuzz",
    };
    let now = time::OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000);
    let mut empty = Plan::empty("dev", &head);
    empty.id = "plan-0123456789ab".into();
    let mut full: Plan = serde_json::from_value(json!({
        "id": "plan-abcdef012345", "digest": "sha256:aa", "env": "dev", "head": head,
        "against": {"kind": "live"},
        "changes": [
            {"bucket": "config", "key": "tenant.acme", "action": "add",
             "path": "config/tenants/acme/tenant.toml", "to_digest": "sha256:01", "from_revision": 0},
            {"bucket": "placement", "key": "acme.core", "action": "change", "from_digest": "sha256:02",
             "to_digest": "sha256:03", "from_revision": 7,
             "fields": [{"pointer": "/replicas", "old": 2, "new": 3}], "actions": ["migrate"]},
            {"bucket": "inventory", "key": "node.old", "action": "remove", "from_digest": "sha256:04",
             "from_revision": 9, "orphan": true, "reason": "not declared in Git"}
        ],
        "orphans_kept": [], "gates": [], "impact": {"tenants": ["acme"], "services": [], "sites": ["osl1"]},
        "counts": {"add": 1, "change": 1, "remove": 1, "orphans_kept": 0}, "keys": 40
    }))
    .unwrap_or_else(|_| Plan::empty("dev", &head));
    full.id = "plan-abcdef012345".into();
    for plan in [empty, full] {
        let mut seqs = std::collections::BTreeMap::new();
        seqs.insert(reconciler::desired::compile::Bucket::Config, 12);
        let s = SavedPlan::new(
            &origin,
            LivePlan {
                plan,
                read_seqs: seqs,
            },
            now,
            std::time::Duration::from_secs(3600),
        );
        out.put("saved_plan", s.to_bytes());
    }

    // backup: every bucket (two with keys, one value binary), and a two-event audit chain.
    let mut sections: Vec<(String, Vec<u8>)> = Vec::new();
    let mut entries = Vec::new();
    for b in reconciler::ops::backup::bucket_names() {
        let lines = match b {
            "config" => concat!(
                r#"{"key":"tenant.acme","revision":3,"value":"{\"id\":\"acme\"}"}"#,
                "\n",
                r#"{"key":"tenant.zeta","revision":5,"value_base64":"AAEC"}"#,
                "\n"
            )
            .to_owned(),
            "state" => {
                r#"{"key":"applied","revision":1,"value":"{\"commit\":\"cc\"}"}"#.to_owned() + "\n"
            }
            _ => String::new(),
        };
        let path = format!("buckets/{b}.jsonl");
        entries.push(
            json!({"path": path, "bucket": b, "records": lines.lines().count(),
            "bytes": lines.len(), "sha256": sha256_hex(lines.as_bytes())}),
        );
        sections.push((path, lines.into_bytes()));
    }
    let mut prev = GENESIS.to_owned();
    let mut audit = String::new();
    for (i, action) in ["apply", "backup"].iter().enumerate() {
        let mut e = AuditEvent::new(format!("ev-{i}"), "dev", "user:fuzz", action, "ok");
        e.time = "2026-01-01T00:00:00Z".into();
        e.prev_hash = prev.clone();
        e.hash = e.compute_hash();
        prev = e.hash.clone();
        audit.push_str(&serde_json::to_string(&json!({"seq": i + 1, "event": e})).expect("json"));
        audit.push('\n');
    }
    entries.push(
        json!({"path": "audit.jsonl", "records": 2, "bytes": audit.len(),
        "sha256": sha256_hex(audit.as_bytes())}),
    );
    sections.push(("audit.jsonl".into(), audit.into_bytes()));
    let m = json!({"format": reconciler::ops::backup::FORMAT, "id": "backup-dev-1", "env": "dev",
        "prefix": "vakt_dev", "created_at": "2026-01-01T00:00:00Z", "created_by": "user:fuzz",
        "vakt_version": "0.1.0", "applied_commit": "cc", "files": entries});
    let mut m = serde_json::to_vec_pretty(&m).expect("json");
    m.push(b'\n');
    let mut b = b"=== manifest.json\n".to_vec();
    b.extend_from_slice(&m);
    b.extend_from_slice(
        format!("=== manifest.sha256\n{}  manifest.json\n", sha256_hex(&m)).as_bytes(),
    );
    for (p, c) in &sections {
        b.extend_from_slice(format!("=== {p}\n").as_bytes());
        b.extend_from_slice(c);
    }
    out.put("backup", b);
}
