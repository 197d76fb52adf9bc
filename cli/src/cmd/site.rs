//! `vakt site build` and `vakt site serve`: the operator site.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::RepoOpts;
use crate::fail::{Exit, Fail};
use crate::output::Format;
use crate::{exit, output};

/// Build or serve the operator site: a static, read-only site built from the ops repo and
/// hydrated in the browser from the daemon's live JSON snippets.
///
/// Run `vakt site build --help` and `vakt site serve --help` for the flags.
///
/// Examples:
///   vakt site build --out public
///   vakt site serve --addr 8080 --watch --snippets-dir /var/lib/vakt/snippets
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct SiteOpts {
    #[command(subcommand)]
    pub command: SiteCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum SiteCommand {
    Build(BuildOpts),
    Serve(ServeOpts),
}

/// Flags shared by `build` and `serve --watch`.
#[derive(Debug, Clone, clap::Args)]
pub struct BuildArgs {
    #[command(flatten)]
    pub repo: RepoOpts,
    /// Build the view of this environment (base documents plus its overlays).
    #[arg(long, value_name = "ENV")]
    pub env: Option<String>,
    /// Output directory. Replaced atomically on success; never half-written.
    #[arg(
        long,
        env = "VAKT_SITE_OUT",
        default_value = "site",
        value_name = "DIR"
    )]
    pub out: PathBuf,
    /// Override built-in templates with files of the same name in DIR (e.g. ops.html).
    #[arg(long, value_name = "DIR")]
    pub templates: Option<PathBuf>,
    /// "Now" for review ages and the snapshot time: YYYY-MM-DD or RFC 3339 (default: now).
    #[arg(long, value_name = "DATE", value_parser = parse_now)]
    pub now: Option<time::OffsetDateTime>,
    /// Seconds between live snippet refreshes in the browser.
    #[arg(long, default_value_t = 5, value_name = "SECS", value_parser = clap::value_parser!(u32).range(1..=3600))]
    pub refresh: u32,
    /// A snippet older than this many seconds shows a stale banner.
    #[arg(long, default_value_t = 30, value_name = "SECS", value_parser = clap::value_parser!(u32).range(1..=86400))]
    pub stale_after: u32,
}

/// Build the operator site into a directory.
///
/// Pages: /ops/ (decision first), tasks, events, health, inventory and drift, datacenters, DR
/// posture, runbooks by id, by signal group and by owner (with review age), signal and alert
/// maps, dashboards and query templates, search, and the catalog API under api/v1/admin/runbooks/.
/// Without JavaScript pages show the snapshot embedded at build time: the snippet files of
/// --snippets-dir when given, else what the repo alone declares.
///
/// Exit status: 0 built, 1 bad input (repo, template, snippet), 3 could not run.
///
/// Examples:
///   vakt site build --out public
///   vakt site build --repo ops --rev origin/env/prod --env prod --out public
///   vakt site build --snippets-url https://vakt.example.internal/snippets/ --out public
///   vakt site build --templates my-templates --now 2026-11-22 --format json
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct BuildOpts {
    #[command(flatten)]
    pub args: BuildArgs,
    /// Where the browser fetches live snippets (<URL><name>.json).
    #[arg(long, default_value = "/snippets/", value_name = "URL")]
    pub snippets_url: String,
    /// Embed these snippet files (summary.json, actions.json, …) as the no-JavaScript snapshot.
    #[arg(long, value_name = "DIR")]
    pub snippets_dir: Option<PathBuf>,
    /// Output format of the build report.
    #[arg(long, default_value = "human", value_parser = Format::only(output::HUMAN_JSON))]
    pub format: Format,
}

/// Serve a built site and the live snippets directory on HTTP.
///
/// Serves --out at / and --snippets-dir at /snippets/ (without it, the build-time snapshot in
/// <out>/snapshot/). With --watch the site is built first and rebuilt whenever the repo or the
/// templates change; open pages reload themselves. Prints the URL on the first line.
///
/// The site is for operators only: bind to loopback and put it behind the authenticating
/// proxy (see README, "Operator site").
///
/// Examples:
///   vakt site serve --out public
///   vakt site serve --addr 8080 --watch --snippets-dir /var/lib/vakt/snippets
///   vakt site serve --addr 127.0.0.1:0 --watch     # any free port; the URL is printed
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct ServeOpts {
    #[command(flatten)]
    pub args: BuildArgs,
    /// Address to listen on: PORT or HOST:PORT (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR", value_parser = parse_addr)]
    pub addr: std::net::SocketAddr,
    /// Build first, then rebuild on every change to the repo or templates.
    #[arg(long)]
    pub watch: bool,
    /// Directory of live snippet files served at /snippets/.
    #[arg(long, value_name = "DIR")]
    pub snippets_dir: Option<PathBuf>,
}

fn parse_addr(s: &str) -> Result<std::net::SocketAddr, String> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    }
    s.parse()
        .map_err(|e| format!("`{s}` is neither a port nor HOST:PORT: {e}"))
}

fn parse_now(s: &str) -> Result<time::OffsetDateTime, String> {
    if let Ok(t) = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) {
        return Ok(t);
    }
    super::parse_date(s).map(|d| d.midnight().assume_utc())
}

impl BuildArgs {
    fn options(&self, snippets_url: &str, snippets_dir: Option<PathBuf>) -> sitegen::SiteOptions {
        let mut o = sitegen::SiteOptions::new(self.repo.repo.clone(), self.out.clone());
        o.rev = self.repo.rev.clone();
        o.env = self.env.clone();
        o.snippets_url = snippets_url.to_owned();
        o.snippets_dir = snippets_dir;
        o.templates = self.templates.clone();
        if let Some(now) = self.now {
            o.now = now;
        }
        o.refresh_seconds = self.refresh;
        o.stale_after_seconds = self.stale_after;
        o
    }
}

pub fn run(o: SiteOpts) -> Exit {
    match o.command {
        SiteCommand::Build(b) => build(b),
        SiteCommand::Serve(s) => serve(s),
    }
}

fn build(o: BuildOpts) -> Exit {
    let opts = o.args.options(&o.snippets_url, o.snippets_dir.clone());
    let start = Instant::now();
    let r = sitegen::build(&opts)?;
    let ms = start.elapsed().as_millis();
    for w in &r.warnings {
        eprintln!("warning: {w}");
    }
    match o.format {
        Format::Json => {
            let mut v = serde_json::to_value(&r).unwrap_or_default();
            v["elapsed_ms"] = serde_json::json!(ms);
            output::print(&(serde_json::to_string_pretty(&v).unwrap_or_default() + "\n"));
        }
        _ => output::print(&format!(
            "built {} pages ({} runbooks, {} files, {} KiB) into {} in {ms} ms\n\
                     snapshot: {}; search: {} B first download, {} KiB worst one-word query\n",
            r.pages,
            r.runbooks,
            r.files,
            r.bytes / 1024,
            r.out.display(),
            r.snapshot,
            r.search.first_download_bytes,
            r.search.worst_single_word_query_bytes / 1024,
        )),
    }
    Ok(exit::OK)
}

struct ServeState {
    site: PathBuf,
    snippets: PathBuf,
    version: AtomicU64,
}

fn serve(o: ServeOpts) -> Exit {
    let mut opts = o.args.options("/snippets/", None);
    opts.live_reload = o.watch;
    if o.watch {
        if let Err(e) = sitegen::build(&opts) {
            return Err(e.into());
        }
    } else if !o.args.out.join("index.html").is_file() {
        return Err(Fail::new(
            exit::COULD_NOT_RUN,
            format!(
                "{} holds no built site: run `vakt site build --out {}` first, or add --watch",
                o.args.out.display(),
                o.args.out.display()
            ),
        ));
    }
    if let Some(d) = &o.snippets_dir
        && !d.is_dir()
    {
        return Err(Fail::new(
            exit::COULD_NOT_RUN,
            format!("--snippets-dir {} is not a directory", d.display()),
        ));
    }
    let snippets = o
        .snippets_dir
        .clone()
        .unwrap_or_else(|| o.args.out.join("snapshot"));
    let state = Arc::new(ServeState {
        site: o.args.out.clone(),
        snippets,
        version: AtomicU64::new(1),
    });
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return Err(Fail::new(
                exit::COULD_NOT_RUN,
                format!("failed to start the HTTP runtime: {e}"),
            ));
        }
    };
    rt.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(o.addr).await {
            Ok(l) => l,
            Err(e) => {
                return Err(Fail::new(
                    exit::COULD_NOT_RUN,
                    format!("failed to listen on {}: {e}", o.addr),
                ));
            }
        };
        let addr = listener.local_addr().unwrap_or(o.addr);
        output::print(&format!(
            "serving http://{addr}/ops/ (site {}, snippets {})\n",
            state.site.display(),
            state.snippets.display()
        ));
        let mut _watcher = None;
        if o.watch {
            match watch(&opts, state.clone()) {
                Ok(w) => _watcher = Some(w),
                Err(e) => {
                    return Err(Fail::new(exit::COULD_NOT_RUN, e));
                }
            }
        }
        let app = http::router(state);
        // Ctrl-C or SIGTERM (systemd, docker stop) ends the server after in-flight requests.
        let shutdown = async {
            #[cfg(unix)]
            {
                use tokio::signal::unix::{SignalKind, signal};
                match signal(SignalKind::terminate()) {
                    Ok(mut term) => {
                        tokio::select! {
                            _ = tokio::signal::ctrl_c() => {}
                            _ = term.recv() => {}
                        }
                    }
                    Err(_) => {
                        let _ = tokio::signal::ctrl_c().await;
                    }
                }
            }
            #[cfg(not(unix))]
            {
                let _ = tokio::signal::ctrl_c().await;
            }
        };
        match axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            Ok(()) => Ok(exit::OK),
            Err(e) => Err(Fail::could_not_run(format!("HTTP server failed: {e}"))),
        }
    })
}

/// Rebuilds on every change to the repo or the templates; the caller built once already.
fn watch(
    opts: &sitegen::SiteOptions,
    state: Arc<ServeState>,
) -> Result<
    notify_debouncer_full::Debouncer<
        notify_debouncer_full::notify::RecommendedWatcher,
        notify_debouncer_full::RecommendedCache,
    >,
    String,
> {
    use notify_debouncer_full::notify::{EventKind, RecursiveMode};
    let opts = opts.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let mut d = notify_debouncer_full::new_debouncer(Duration::from_millis(300), None, tx)
        .map_err(|e| format!("failed to watch: {e}"))?;
    d.watch(&opts.repo, RecursiveMode::Recursive)
        .map_err(|e| format!("failed to watch {}: {e}", opts.repo.display()))?;
    if let Some(t) = &opts.templates {
        d.watch(t, RecursiveMode::Recursive)
            .map_err(|e| format!("failed to watch {}: {e}", t.display()))?;
    }
    let out = absolute(&opts.out);
    // With --rev the site follows commits, so changes under .git matter; otherwise they are noise.
    let skip_git = opts.rev.is_none();
    std::thread::spawn(move || {
        for res in rx {
            let Ok(events) = res else { continue };
            let relevant = events.iter().any(|ev| {
                matches!(
                    ev.kind,
                    EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_)
                ) && ev
                    .paths
                    .iter()
                    .any(|p| !ignored(&absolute(p), &out, skip_git))
            });
            if !relevant {
                continue;
            }
            let start = Instant::now();
            match sitegen::build(&opts) {
                Ok(r) => {
                    let v = state.version.fetch_add(1, Ordering::SeqCst) + 1;
                    eprintln!(
                        "rebuilt {} pages in {} ms (version {v})",
                        r.pages,
                        start.elapsed().as_millis()
                    );
                }
                Err(e) => output::error(&format!(
                    "rebuild failed, still serving the previous site: {e}"
                )),
            }
        }
    });
    Ok(d)
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_owned())
}

/// Changes the watcher should not react to: the output itself, its temporary siblings, and
/// Git's own files when `skip_git`.
fn ignored(p: &Path, out: &Path, skip_git: bool) -> bool {
    if p.starts_with(out) {
        return true;
    }
    let out_name = out
        .file_name()
        .map(|n| format!(".{}.", n.to_string_lossy()));
    p.components().any(|c| match c {
        Component::Normal(n) => {
            let n = n.to_string_lossy();
            (skip_git && n == ".git") || out_name.as_deref().is_some_and(|o| n.starts_with(o))
        }
        _ => false,
    })
}

mod http {
    //! The HTTP side of `vakt site serve`: static files, snippets, the reload version.

    use std::path::{Component, Path, PathBuf};
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    use axum::Router;
    use axum::extract::{Path as UrlPath, State};
    use axum::http::{HeaderValue, StatusCode, Uri, header};
    use axum::response::{IntoResponse, Response};
    use axum::routing::get;

    use super::ServeState;

    pub fn router(state: Arc<ServeState>) -> Router {
        Router::new()
            .route("/__vakt/version", get(version))
            .route("/snippets/{name}", get(snippet))
            .fallback(get(static_file))
            .with_state(state)
    }

    async fn version(State(s): State<Arc<ServeState>>) -> Response {
        with_headers(
            s.version.load(Ordering::SeqCst).to_string().into_bytes(),
            "text/plain; charset=utf-8",
        )
    }

    async fn snippet(State(s): State<Arc<ServeState>>, UrlPath(name): UrlPath<String>) -> Response {
        let ok = name.ends_with(".json")
            && name.len() > 5
            && name[..name.len() - 5]
                .chars()
                .all(|c| c.is_ascii_lowercase() || c == '-');
        if !ok {
            return not_found();
        }
        match tokio::fs::read(s.snippets.join(&name)).await {
            Ok(b) => with_headers(b, "application/json"),
            Err(_) => not_found(),
        }
    }

    fn decode(path: &str) -> Option<String> {
        let b = path.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' {
                let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(h, 16).ok()?);
                i += 3;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        String::from_utf8(out).ok()
    }

    /// Maps a URL path to a file under `root`; `None` for anything that could escape it.
    fn resolve(root: &Path, url_path: &str) -> Option<PathBuf> {
        let decoded = decode(url_path)?;
        if decoded.contains('\\') || decoded.contains('\0') {
            return None;
        }
        let rel = Path::new(decoded.trim_start_matches('/'));
        let mut p = root.to_owned();
        for c in rel.components() {
            match c {
                Component::Normal(n) if !n.to_string_lossy().starts_with('.') => p.push(n),
                _ => return None,
            }
        }
        Some(p)
    }

    async fn static_file(State(s): State<Arc<ServeState>>, uri: Uri) -> Response {
        let Some(mut p) = resolve(&s.site, uri.path()) else {
            return not_found();
        };
        if p.is_dir() {
            if !uri.path().ends_with('/') {
                let mut r = StatusCode::PERMANENT_REDIRECT.into_response();
                if let Ok(v) = HeaderValue::from_str(&format!("{}/", uri.path())) {
                    r.headers_mut().insert(header::LOCATION, v);
                }
                return r;
            }
            p.push("index.html");
        }
        match tokio::fs::read(&p).await {
            Ok(b) => with_headers(b, content_type(&p)),
            Err(_) => not_found(),
        }
    }

    fn content_type(p: &Path) -> &'static str {
        match p.extension().and_then(|e| e.to_str()) {
            Some("html") => "text/html; charset=utf-8",
            Some("css") => "text/css; charset=utf-8",
            Some("js") => "text/javascript; charset=utf-8",
            Some("json") => "application/json",
            Some("svg") => "image/svg+xml",
            Some("png") => "image/png",
            Some("txt") => "text/plain; charset=utf-8",
            _ => "application/octet-stream",
        }
    }

    fn with_headers(body: Vec<u8>, ctype: &'static str) -> Response {
        let mut r = body.into_response();
        let h = r.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(
            "x-content-type-options",
            HeaderValue::from_static("nosniff"),
        );
        h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
        h.insert("x-frame-options", HeaderValue::from_static("DENY"));
        r
    }

    fn not_found() -> Response {
        (StatusCode::NOT_FOUND, "not found\n").into_response()
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn paths_cannot_escape_the_site() {
            let root = Path::new("/srv/site");
            assert_eq!(resolve(root, "/ops/"), Some(PathBuf::from("/srv/site/ops")));
            assert_eq!(
                resolve(root, "/runbooks/ops.vakt.drift/"),
                Some(PathBuf::from("/srv/site/runbooks/ops.vakt.drift"))
            );
            for bad in [
                "/../etc/passwd",
                "/%2e%2e/x",
                "/.vakt-site",
                "/a/..%2f..%2fb",
                "/a\\b",
            ] {
                assert_eq!(resolve(root, bad), None, "{bad}");
            }
        }
    }
}
