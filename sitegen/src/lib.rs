//! The operator site: a static, read-only site built from the ops repo (runbooks, maps,
//! dashboards, DR posture, inventory) and hydrated in the browser from the daemon's live JSON
//! snippets. Without JavaScript every page shows the snapshot taken at build time.
//!
//! ```no_run
//! let opts = sitegen::SiteOptions::new("ops".into(), "public".into());
//! let report = sitegen::build(&opts)?;
//! println!("{} pages in {}", report.pages, report.out.display());
//! # Ok::<(), sitegen::SiteError>(())
//! ```

mod assets;
pub mod markdown;
mod output;
mod pages;
mod safe_html;
pub mod search;
pub mod serve;
mod templates;

use std::path::{Path, PathBuf};

use opsrepo::Severity;
use opsrepo::snippets::{Snapshot, SnippetName};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use templates::TEMPLATE_NAMES;

/// Everything a build needs. Construct with [`SiteOptions::new`] and adjust fields.
#[derive(Debug, Clone)]
pub struct SiteOptions {
    /// The ops repo: a work tree, or a Git repository when `rev` is set.
    pub repo: PathBuf,
    /// Read this commit instead of the work tree.
    pub rev: Option<String>,
    /// Build the view of this environment (base documents plus its overlays).
    pub env: Option<String>,
    /// Output directory; replaced atomically on success.
    pub out: PathBuf,
    /// Where the browser fetches live snippets (`<url><name>.json`).
    pub snippets_url: String,
    /// Snippet files to embed as the no-JavaScript snapshot instead of the repo-only one.
    pub snippets_dir: Option<PathBuf>,
    /// Directory of templates overriding the built-in ones, by file name.
    pub templates: Option<PathBuf>,
    /// "Now" for review ages and the snapshot's `generated_at`.
    pub now: time::OffsetDateTime,
    /// Seconds between snippet refreshes in the browser.
    pub refresh_seconds: u32,
    /// A snippet older than this many seconds is shown as stale.
    pub stale_after_seconds: u32,
    /// Pages poll `__vakt/version` and reload when it changes (`vakt site serve --watch`).
    pub live_reload: bool,
}

impl SiteOptions {
    pub fn new(repo: PathBuf, out: PathBuf) -> Self {
        SiteOptions {
            repo,
            rev: None,
            env: None,
            out,
            snippets_url: "/snippets/".to_owned(),
            snippets_dir: None,
            templates: None,
            now: time::OffsetDateTime::now_utc(),
            refresh_seconds: 5,
            stale_after_seconds: 30,
            live_reload: false,
        }
    }
}

/// What a build produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BuildReport {
    pub out: PathBuf,
    /// HTML pages in the site.
    pub pages: usize,
    pub runbooks: usize,
    /// Every file of the site (pages, assets, JSON).
    pub files: usize,
    /// Bytes of the whole site.
    pub bytes: u64,
    /// Files this build wrote; the others were kept from the previous build unchanged.
    #[serde(default)]
    pub written: usize,
    /// True when the inputs were the same as the previous build's and nothing was written.
    #[serde(default)]
    pub unchanged: bool,
    /// Where the no-JavaScript snapshot came from: `repo` or `snippets-dir`.
    pub snapshot: String,
    pub search: SearchSizes,
    /// Things worth knowing that did not stop the build.
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SearchSizes {
    /// Bytes fetched when the search page loads.
    pub first_download_bytes: usize,
    /// Worst case for a one-word query: meta + largest term shard + largest doc chunk.
    pub worst_single_word_query_bytes: usize,
    pub total_bytes: usize,
}

/// Why a build failed. Nothing is written to `out` when a build fails.
#[derive(Debug, thiserror::Error)]
pub enum SiteError {
    #[error(transparent)]
    Source(#[from] opsrepo::SourceError),
    #[error(
        "failed to load the ops repo: {} error(s); run `vakt validate` for details:\n{}",
        .findings.len(),
        .findings.iter().take(10).map(|f| format!("  {f}")).collect::<Vec<_>>().join("\n")
    )]
    InvalidRepo { findings: Vec<String> },
    #[error("unknown environment `{env}`: vakt.toml declares {declared}")]
    UnknownEnv { env: String, declared: String },
    #[error("failed to render template {file}{}: {message}", .line.map(|l| format!(":{l}")).unwrap_or_default())]
    Template {
        /// Path of the override file, or `(built-in) <name>`.
        file: String,
        line: Option<usize>,
        message: String,
    },
    #[error("runbook `{id}`: {message}")]
    Runbook { id: String, message: String },
    #[error("failed to read snippet {path}: {message}")]
    Snippet { path: PathBuf, message: String },
    #[error("invalid --snippets-url `{url}`: {why}")]
    SnippetsUrl { url: String, why: &'static str },
    #[error(
        "refusing to replace {path}: it exists and was not written by `vakt site build` (no .vakt-site marker); choose another --out or remove it"
    )]
    ForeignOutput { path: PathBuf },
    #[error("failed to {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

impl SiteError {
    pub(crate) fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.to_owned();
        move |source| SiteError::Io {
            action,
            path,
            source,
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ`.
pub fn rfc3339(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    let fmt = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    t.format(&fmt).unwrap_or_default()
}

/// The snippets URL ends up in attributes and in the page's Content-Security-Policy: accept
/// only a path or an http(s) URL made of plain URL characters.
fn check_snippets_url(url: &str) -> Result<(), SiteError> {
    let bad = |why| {
        Err(SiteError::SnippetsUrl {
            url: url.to_owned(),
            why,
        })
    };
    if url.is_empty() {
        return bad("it is empty");
    }
    if !url
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-._~:/?#[]@!$&()*+=%".contains(c))
    {
        return bad("only URL characters are allowed (no spaces, quotes, `;` or `,`)");
    }
    let has_scheme = url
        .split('/')
        .next()
        .is_some_and(|first| first.contains(':'));
    if has_scheme && !(url.starts_with("https://") || url.starts_with("http://")) {
        return bad("only http and https URLs are allowed");
    }
    if !url.ends_with('/') {
        return bad("it must end with `/` (snippets are fetched as <url><name>.json)");
    }
    Ok(())
}

/// Stands in for the build time in rendered pages until they are compared with the previous
/// build (output.rs): letters and digits only, so escaping leaves it as it is.
const BUILD_TIME_TOKEN: &str = "vakt0build0time0c5b1e7f09a3d4862";

/// The digest of everything a build reads: the repo's files, the options that shape pages,
/// the day (review ages), the template overrides, the snippet files and the built-in
/// templates and assets. The same digest means the same site, so a rebuild can skip.
fn input_digest(opts: &SiteOptions, files: &opsrepo::RepoFiles) -> String {
    let mut h = Sha256::new();
    let mut field = |name: &str, bytes: &[u8]| {
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    field("format", b"vakt-site-input-1");
    field("version", env!("CARGO_PKG_VERSION").as_bytes());
    if let opsrepo::source::Origin::Commit { id, .. } = &files.origin {
        field("commit", id.as_bytes());
    }
    field("env", opts.env.as_deref().unwrap_or("").as_bytes());
    field("snippets_url", opts.snippets_url.as_bytes());
    field("refresh", &opts.refresh_seconds.to_le_bytes());
    field("stale", &opts.stale_after_seconds.to_le_bytes());
    field("live_reload", &[u8::from(opts.live_reload)]);
    field("day", opts.now.date().to_string().as_bytes());
    for (path, content) in assets::files() {
        field(&path, content.as_bytes());
    }
    for name in TEMPLATE_NAMES {
        field(name, templates::builtin(name).unwrap_or("").as_bytes());
        if let Some(dir) = &opts.templates {
            let over = std::fs::read(dir.join(name)).unwrap_or_else(|_| b"\0absent".to_vec());
            field(&format!("override/{name}"), &over);
        }
    }
    if let Some(dir) = &opts.snippets_dir {
        for name in SnippetName::ALL {
            let got =
                std::fs::read(dir.join(name.file_name())).unwrap_or_else(|_| b"\0absent".to_vec());
            field(&format!("snippet/{}", name.as_str()), &got);
        }
    }
    for f in &files.files {
        match &f.content {
            Ok(b) => field(&f.path, b),
            Err(finding) => field(
                &f.path,
                format!("\0unreadable {}", finding.message).as_bytes(),
            ),
        }
    }
    format!("{:x}", h.finalize())
}

/// Reads the repo view and the snippet snapshot the pages embed.
fn load(
    opts: &SiteOptions,
    files: &opsrepo::RepoFiles,
) -> Result<(opsrepo::load::Model, Snapshot, &'static str), SiteError> {
    let parsed = opsrepo::load::parse_all(files);
    if let Some(env) = &opts.env {
        let declared: Vec<String> = parsed
            .manifest
            .as_ref()
            .map(|m| m.environments.keys().cloned().collect())
            .unwrap_or_default();
        if !declared.contains(env) {
            return Err(SiteError::UnknownEnv {
                env: env.clone(),
                declared: if declared.is_empty() {
                    "no environments".into()
                } else {
                    declared.join(", ")
                },
            });
        }
    }
    let (model, view_findings) = opsrepo::load::build_view(&parsed, opts.env.as_deref());
    let errors: Vec<String> = parsed
        .findings
        .iter()
        .chain(view_findings.iter())
        .filter(|f| f.severity == Severity::Error)
        .map(|f| {
            format!(
                "{}:{}:{}: {} [{}]",
                f.path, f.line, f.col, f.message, f.rule
            )
        })
        .collect();
    if !errors.is_empty() {
        return Err(SiteError::InvalidRepo { findings: errors });
    }
    let mut snap = opsrepo::snippets::snapshot(&model, BUILD_TIME_TOKEN);
    let mut source = "repo";
    if let Some(dir) = &opts.snippets_dir {
        if !dir.is_dir() {
            return Err(SiteError::Snippet {
                path: dir.clone(),
                message: "not a directory".into(),
            });
        }
        for name in SnippetName::ALL {
            let p = dir.join(name.file_name());
            let text = match std::fs::read_to_string(&p) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(SiteError::Snippet {
                        path: p,
                        message: e.to_string(),
                    });
                }
            };
            let value: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| SiteError::Snippet {
                    path: p.clone(),
                    message: format!("not JSON: {e}"),
                })?;
            snap.set(name, value).map_err(|e| SiteError::Snippet {
                path: p.clone(),
                message: format!(
                    "does not match schemas/snippets/{}.schema.json: {e}",
                    name.as_str()
                ),
            })?;
            source = "snippets-dir";
        }
    }
    Ok((model, snap, source))
}

/// Builds the site into `opts.out`. Pages are rendered into a hidden directory beside it,
/// which is exchanged with `out` only when everything succeeded. A file that the previous
/// build wrote with the same content is kept (hard-linked), and when every input is the same
/// as the previous build's, nothing is rendered or written (`unchanged` in the report).
pub fn build(opts: &SiteOptions) -> Result<BuildReport, SiteError> {
    let t = std::time::Instant::now();
    check_snippets_url(&opts.snippets_url)?;
    output::check_replaceable(&opts.out)?;
    let files = match &opts.rev {
        Some(rev) => opsrepo::read_commit(&opts.repo, rev)?,
        None => opsrepo::read_work_tree(&opts.repo)?,
    };
    let input = input_digest(opts, &files);
    let previous = output::Manifest::read(&opts.out);
    if let Some(prev) = &previous
        && prev.input == input
        && let Ok(mut report) = serde_json::from_value::<BuildReport>(prev.report.clone())
        && prev.intact(&opts.out)
    {
        tracing::debug!(
            elapsed_ms = t.elapsed().as_millis() as u64,
            "site: inputs unchanged, nothing to write"
        );
        report.out = opts.out.clone();
        report.written = 0;
        report.unchanged = true;
        return Ok(report);
    }
    let (model, snap, snapshot_source) = load(opts, &files)?;
    drop(files);
    tracing::debug!(
        elapsed_ms = t.elapsed().as_millis() as u64,
        "site: repo loaded"
    );
    let templates = templates::Templates::new(opts.templates.as_deref())?;
    let site = pages::Site::new(&model, &snap, opts)?;
    tracing::debug!(
        elapsed_ms = t.elapsed().as_millis() as u64,
        "site: markdown rendered"
    );
    let time = rfc3339(opts.now);
    let stager = output::Stager::begin(&opts.out, BUILD_TIME_TOKEN, &time, previous.as_ref())?;
    let search = site.write(&templates, &stager)?;
    let mut assets = stager.dir("assets")?;
    for (path, content) in assets::files() {
        assets.put(path.rsplit('/').next().unwrap_or(&path), &content)?;
    }
    drop(assets);
    let staged = stager.finish(input);
    tracing::debug!(
        elapsed_ms = t.elapsed().as_millis() as u64,
        files = staged.files(),
        "site: pages rendered and staged"
    );
    let w = staged.written;
    let report = BuildReport {
        out: opts.out.clone(),
        pages: staged.pages(),
        runbooks: site.runbook_count(),
        files: staged.files(),
        bytes: w.bytes,
        written: w.written,
        unchanged: false,
        snapshot: snapshot_source.to_owned(),
        search,
        warnings: site.warnings(),
    };
    staged.publish(serde_json::to_value(&report).unwrap_or_default())?;
    tracing::debug!(
        elapsed_ms = t.elapsed().as_millis() as u64,
        written = w.written,
        reused = w.reused,
        "site: written"
    );
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snippets_urls() {
        for ok in [
            "/snippets/",
            "https://vakt.example.internal/snippets/",
            "../live/",
        ] {
            assert!(check_snippets_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "/snippets",
            "javascript:alert(1)//x/",
            "https://a; script-src */",
            "/a b/",
            "ftp://x/",
        ] {
            assert!(check_snippets_url(bad).is_err(), "{bad}");
        }
    }
}
