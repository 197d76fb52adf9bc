//! `vakt site build` and `vakt site serve`: the operator site.

use std::path::PathBuf;
use std::time::Instant;

use sitegen::serve::{Rebuild, ServeState};

use super::RepoOpts;
use crate::fail::{Exit, Fail};
use crate::output::Format;
use crate::{exit, output};

/// Build or serve the operator site.
///
/// A static, read-only site built from the ops repo and hydrated in the browser from the
/// daemon's live JSON snippets.
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
/// Rebuilds are incremental and atomic: the new site is assembled beside --out and exchanged
/// with it in one rename, so a reader never sees a half-built site. A file whose content is
/// the same as in the previous build is kept, not rewritten; when the repo, the options, the
/// day and the template and snippet files are all as they were, nothing is written at all.
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
/// proxy (see README, "Operator site"). Only files under --out (and --snippets-dir) are served,
/// after resolving symlinks; every response carries nosniff, no-store, no-referrer and
/// DENY framing; --header-timeout, --body-timeout, --max-connections and --allowed-host work
/// as for `vakt reconcile`.
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
    #[command(flatten)]
    pub http: super::reconcile::HttpArgs,
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
        _ if r.unchanged => output::print(&format!(
            "{} is up to date: the inputs are those of its last build; nothing written ({} pages, {} files) in {ms} ms\n",
            r.out.display(),
            r.pages,
            r.files,
        )),
        _ => output::print(&format!(
            "built {} pages ({} runbooks, {} files, {} KiB) into {} in {ms} ms; wrote {} file(s), kept {} unchanged\n\
                     snapshot: {}; search: {} B first download, {} KiB worst one-word query\n",
            r.pages,
            r.runbooks,
            r.files,
            r.bytes / 1024,
            r.out.display(),
            r.written,
            r.files - r.written,
            r.snapshot,
            r.search.first_download_bytes,
            r.search.worst_single_word_query_bytes / 1024,
        )),
    }
    Ok(exit::OK)
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
    let state = ServeState::new(o.args.out.clone(), snippets);
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
            let on_rebuild = |r: Rebuild| match r {
                Rebuild::Built {
                    pages,
                    elapsed,
                    version,
                } => eprintln!(
                    "rebuilt {pages} pages in {} ms (version {version})",
                    elapsed.as_millis()
                ),
                Rebuild::Failed(e) => {
                    eprintln!("error: rebuild failed, still serving the previous site: {e}")
                }
            };
            match sitegen::serve::watch(&opts, state.clone(), on_rebuild) {
                Ok(w) => _watcher = Some(w),
                Err(e) => {
                    return Err(Fail::new(exit::COULD_NOT_RUN, e));
                }
            }
        }
        let app = sitegen::serve::router(state);
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
        match sitegen::serve::serve(listener, app, o.http.limits(), shutdown).await {
            Ok(()) => Ok(exit::OK),
            Err(e) => Err(Fail::could_not_run(format!("HTTP server failed: {e}"))),
        }
    })
}
