//! `validate`: schema checks of every document, then every governance rule, over the base view
//! and every environment's view (overlays merged). Findings are deduplicated and sorted.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
#[cfg(test)]
use std::sync::atomic::Ordering;

use rayon::prelude::*;

use crate::diag::{Finding, Severity};
use crate::kinds::Kind;
use crate::load::{Model, Parsed0, build_view_of, parse_all};
use crate::rules::{self, RuleContext, secrets};
use crate::source::RepoFiles;

/// What to validate.
#[derive(Debug, Clone)]
pub struct ValidateOptions {
    /// Only this environment's view (and the base); `None`: every environment.
    pub env: Option<String>,
    /// "Today", for runbook review ages.
    pub today: time::Date,
}

/// The outcome of a validation run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub findings: Vec<Finding>,
    pub files: usize,
    pub documents: usize,
    pub documents_by_kind: BTreeMap<Kind, usize>,
    pub environments: Vec<String>,
    /// File texts for showing offending lines (not serialised).
    #[serde(skip)]
    pub texts: HashMap<String, Arc<str>>,
}

impl Report {
    pub fn count(&self, s: Severity) -> usize {
        self.findings.iter().filter(|f| f.severity == s).count()
    }

    pub fn has_errors(&self) -> bool {
        self.count(Severity::Error) > 0
    }
}

/// Validates the files of an ops repo.
pub fn validate(files: &RepoFiles, opts: &ValidateOptions) -> Report {
    let parsed = parse_all(files);
    validate_parsed(&parsed, opts)
}

/// [`validate_parsed`], also parsing every `vakt …` command in the runbooks with `commands`
/// (the `vakt` binary hands in its own argument parser; rule `runbook.command`). The parse of
/// a commit may come from the validation cache, [`crate::cache::parse_commit`].
pub fn validate_parsed_with_commands(
    parsed: &Parsed0,
    opts: &ValidateOptions,
    commands: &dyn rules::commands::CommandChecker,
) -> Report {
    let mut report = validate_parsed(parsed, opts);
    let t = std::time::Instant::now();
    let mut extra = Vec::new();
    for d in parsed
        .docs
        .iter()
        .filter(|d| d.kind == Kind::Runbook && d.env.is_none())
    {
        if let Some(text) = d.text() {
            rules::commands::check(&d.path, &text, commands, &mut extra);
        }
    }
    for f in &extra {
        if let Some(t) = parsed.text_of(&f.path) {
            report.texts.insert(f.path.clone(), t);
        }
    }
    report.findings.extend(extra);
    tracing::debug!(
        ms = crate::diag::ms(t),
        rss_mb = crate::diag::rss_mb(),
        "runbook commands checked"
    );
    let mut seen = HashSet::new();
    report.findings.retain(|f| seen.insert(f.clone()));
    report
        .findings
        .sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
    report
}

/// Validates an already parsed repo (lets callers reuse the parse).
pub fn validate_parsed(parsed: &Parsed0, opts: &ValidateOptions) -> Report {
    validate_with_model(parsed, opts).0
}

/// [`validate_parsed`], also returning the typed model of `opts.env`'s view when it was built
/// (the reconciler keeps it for the live snippets instead of parsing the commit again).
pub fn validate_with_model(parsed: &Parsed0, opts: &ValidateOptions) -> (Report, Option<Model>) {
    let ctx = RuleContext { today: opts.today };
    let mut findings = parsed.findings.clone();
    // Raw-text secret scan over every decoded file, in parallel (unless the parse did it).
    let no_texts = HashMap::new();
    let texts = if parsed.prescanned {
        &no_texts
    } else {
        &parsed.texts
    };
    let text_findings: Vec<Finding> = texts
        .par_iter()
        .flat_map_iter(|(p, t)| {
            let mut out = Vec::new();
            secrets::scan_text(p, t, &mut out);
            out
        })
        .collect();
    findings.extend(text_findings);
    // The value scan ran once per file while it was parsed (`SourceDoc::secret_findings`): a
    // view's merged document holds only values of its base and its overlay. Documents from
    // the validation cache have theirs in `parsed.findings` already.
    findings.extend(
        parsed
            .docs
            .iter()
            .flat_map(|d| d.secret_findings.iter().cloned()),
    );

    let mut envs: Vec<Option<String>> = vec![None];
    let declared: Vec<String> = parsed
        .manifest
        .as_ref()
        .map(|m| m.environments.keys().cloned().collect())
        .unwrap_or_default();
    match &opts.env {
        Some(e) => {
            if !declared.contains(e) {
                findings.push(
                    Finding::new(
                        "manifest.environments",
                        "vakt.toml",
                        crate::diag::Pos::default(),
                        format!("environment `{e}` is not declared"),
                    )
                    .help(format!("declared environments: {}", declared.join(", "))),
                );
            } else {
                envs.push(Some(e.clone()));
            }
        }
        None => envs.extend(declared.iter().cloned().map(Some)),
    }
    // An environment without overlay files sees exactly the base documents, and no rule reads
    // the view's name: its findings are the base view's. Its view is built only when it is
    // the model the caller keeps, and its rules never run.
    // Each overlaid environment with the kinds its overlays change.
    let mut overlaid: BTreeMap<&str, Vec<Kind>> = BTreeMap::new();
    for d in &parsed.docs {
        if let Some(e) = d.env.as_deref() {
            let kinds = overlaid.entry(e).or_default();
            if !kinds.contains(&d.kind) {
                kinds.push(d.kind);
            }
        }
    }
    let t = std::time::Instant::now();
    crate::load::type_shared(parsed);
    tracing::debug!(
        ms = crate::diag::ms(t),
        rss_mb = crate::diag::rss_mb(),
        "documents typed"
    );
    type View = (Vec<Finding>, usize, BTreeMap<Kind, usize>, Option<Model>);
    let per_view: Vec<View> = envs
        .par_iter()
        .filter(|env| {
            env.as_deref()
                .is_none_or(|e| overlaid.contains_key(e) || opts.env.as_deref() == Some(e))
        })
        .map(|env| {
            let t = std::time::Instant::now();
            let kept = env.is_some() && *env == opts.env;
            // Rule groups that read none of the kinds an environment overlays would find what
            // they found in the base view: only the others run, and a view whose model is not
            // kept holds only the kinds they read.
            let changed = env.as_deref().and_then(|e| overlaid.get(e));
            #[cfg(test)]
            let changed = changed.filter(|_| !tests::NO_REUSE.load(Ordering::Relaxed));
            let wanted = changed
                .filter(|_| !kept)
                .map(|c| rules::kinds_read_by_groups_reading(c));
            let (model, mut f) = build_view_of(parsed, env.as_deref(), wanted.as_deref());
            let built = crate::diag::ms(t);
            let t = std::time::Instant::now();
            match env.as_deref() {
                Some(e) if !overlaid.contains_key(e) => {}
                _ => f.extend(rules::check_reading(
                    &model,
                    &ctx,
                    changed.map(Vec::as_slice),
                )),
            }
            tracing::debug!(
                env = env.as_deref().unwrap_or("(base)"),
                build_ms = built,
                rules_ms = crate::diag::ms(t),
                rss_mb = crate::diag::rss_mb(),
                "view checked"
            );
            let mut by_kind = model.documents.clone();
            *by_kind.entry(Kind::Runbook).or_default() += model.runbooks.len();
            let n = by_kind.values().sum();
            let keep = kept.then_some(model);
            (f, n, by_kind, keep)
        })
        .collect();
    let mut documents = 0;
    let mut documents_by_kind = BTreeMap::new();
    let mut env_model = None;
    for (i, (f, n, k, m)) in per_view.into_iter().enumerate() {
        findings.extend(f);
        if i == 0 {
            documents = n;
            documents_by_kind = k;
        }
        if m.is_some() {
            env_model = m;
        }
    }
    let mut seen = HashSet::new();
    findings.retain(|f| seen.insert(f.clone()));
    findings.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
    let report = Report {
        files: parsed.files,
        documents,
        documents_by_kind,
        environments: envs.into_iter().flatten().collect(),
        // Only the files a finding names: the human format shows their offending lines.
        texts: findings
            .iter()
            .filter_map(|f| Some((f.path.clone(), parsed.text_of(&f.path)?)))
            .collect(),
        findings,
    };
    (report, env_model)
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::source::{RawFile, read_work_tree};

    /// Makes every environment view run every rule group (for comparing with the reuse).
    pub(super) static NO_REUSE: AtomicBool = AtomicBool::new(false);

    fn bundled_with(extra: &[(&str, &str)]) -> RepoFiles {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut files = read_work_tree(&root).expect("the bundled repo reads");
        for (path, text) in extra {
            files.files.retain(|f| f.path != *path);
            files.files.push(RawFile {
                path: (*path).to_owned(),
                content: Ok(text.as_bytes().to_vec()),
            });
        }
        files.files.sort_by(|a, b| a.path.cmp(&b.path));
        files
    }

    #[test]
    fn runbook_overlays_are_refused_and_orphan_overlays_follow_the_policy() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let runbook = std::fs::read_to_string(root.join("runbooks/dr.control-plane.restore.md"))
            .expect("bundled runbook");
        let ghost = std::fs::read_to_string(root.join("config/tenants/polar-retail/tenant.toml"))
            .expect("bundled tenant")
            .replace("id = \"polar-retail\"", "id = \"ghost\"");
        let with_base = "environments/staging/runbooks/dr.control-plane.restore.md";
        let without_base = "environments/prod/runbooks/only-in-prod.md";
        // Staging forbids overlays without a base document, prod allows them.
        let staging_orphan = "environments/staging/config/tenants/ghost/tenant.toml";
        let prod_orphan = "environments/prod/config/tenants/ghost/tenant.toml";
        let parsed = parse_all(&bundled_with(&[
            (with_base, runbook.as_str()),
            (without_base, runbook.as_str()),
            (staging_orphan, ghost.as_str()),
            (prod_orphan, ghost.as_str()),
        ]));
        let opts = ValidateOptions {
            env: None,
            today: time::macros::date!(2026 - 11 - 22),
        };
        let found = validate_parsed(&parsed, &opts).findings;
        let has = |rule: &str, path: &str| found.iter().any(|f| f.rule == rule && f.path == path);
        assert!(has("overlay.forbidden", with_base), "{found:#?}");
        assert!(has("overlay.forbidden", without_base), "{found:#?}");
        assert!(has("overlay.no-base", staging_orphan), "{found:#?}");
        assert!(!has("overlay.no-base", prod_orphan), "{found:#?}");
        let prod = ValidateOptions {
            env: Some("prod".into()),
            ..opts
        };
        let (_, model) = validate_with_model(&parsed, &prod);
        let model = model.expect("the prod model is kept");
        assert!(model.tenants.iter().any(|t| t.spec.id == "ghost"));
        // The runbook every environment sees is the base one, once.
        let restores = model
            .runbooks
            .iter()
            .filter(|r| r.path.ends_with("dr.control-plane.restore.md"))
            .count();
        assert_eq!(restores, 1);
    }

    #[test]
    fn a_site_short_of_shard_room_is_reported_with_its_counts() {
        // Oslo's one gateway shard down to one tenant: the six placed tenants (four homed in
        // Oslo, two in Bergen) do not fit there when Bergen is lost.
        let shard = "inventory/shards/gw-osl1.toml";
        let text = "id = \"gw-osl1\"\nservice_kind = \"gateway\"\nsite = \"osl1\"\nnodes = [\"gw-osl1-01\"]\nmax_tenants = 1\n";
        let parsed = parse_all(&bundled_with(&[(shard, text)]));
        let opts = ValidateOptions {
            env: None,
            today: time::macros::date!(2026 - 11 - 22),
        };
        let found = validate_parsed(&parsed, &opts).findings;
        let capacity: Vec<_> = found
            .iter()
            .filter(|f| f.rule == "topology.capacity")
            .collect();
        assert_eq!(capacity.len(), 1, "{capacity:#?}");
        assert_eq!(capacity[0].path, "inventory/sites/osl1.toml");
        assert!(
            capacity[0].message.contains(
                "gateway shards hold 1 tenants, 6 are placed (4 here, 2 elsewhere): short by 5"
            ),
            "{}",
            capacity[0].message
        );
    }

    #[test]
    fn reusing_base_findings_for_groups_an_overlay_cannot_change_loses_nothing() {
        // Staging overlays its global config (bundled) and, here, one stateful shard down to a
        // single node: the topology rules must run in staging and say so at the overlay.
        let overlay = "environments/staging/inventory/shards/agg-osl1-a.toml";
        let files = bundled_with(&[(overlay, "nodes = [\"agg-osl1-01\"]\n")]);
        let parsed = parse_all(&files);
        let opts = ValidateOptions {
            env: None,
            today: time::macros::date!(2026 - 11 - 22),
        };
        let reused = validate_parsed(&parsed, &opts);
        assert!(
            reused
                .findings
                .iter()
                .any(|f| f.rule == "topology.stateful-replicas" && f.path == overlay),
            "{:#?}",
            reused.findings
        );
        let staging = ValidateOptions {
            env: Some("staging".into()),
            ..opts.clone()
        };
        let (reused_staging, model) = validate_with_model(&parsed, &staging);
        let model = model.expect("the staging model is kept");
        NO_REUSE.store(true, Ordering::Relaxed);
        let full = validate_parsed(&parsed, &opts);
        let (full_staging, full_model) = validate_with_model(&parsed, &staging);
        NO_REUSE.store(false, Ordering::Relaxed);
        assert_eq!(reused.findings, full.findings);
        assert_eq!(reused_staging.findings, full_staging.findings);
        // The kept model is whole, not only the kinds the rules that ran read.
        let full_model = full_model.expect("the staging model is kept");
        assert_eq!(model.documents, full_model.documents);
        assert_eq!(model.config_items.len(), full_model.config_items.len());
        assert!(!model.config_items.is_empty());
    }
}
