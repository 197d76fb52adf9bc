//! `vakt site serve`: the built site and the live snippets over HTTP (no-store, nosniff, no
//! framing), a reload version for `--watch`, and the watcher that rebuilds on every change.
//! Paths are resolved under the site root only and canonicalised: nothing outside it is ever
//! served, symlinks pointing out included. Redirects are built from the resolved path. The
//! connection hygiene (timeouts, cap, security headers on every response) is `opsrepo::http`.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::{SiteError, SiteOptions};

/// What the server reads: the site directory, the snippets directory, the reload version.
pub struct ServeState {
    pub site: PathBuf,
    pub snippets: PathBuf,
    pub version: AtomicU64,
}

impl ServeState {
    pub fn new(site: PathBuf, snippets: PathBuf) -> Arc<ServeState> {
        Arc::new(ServeState {
            site,
            snippets,
            version: AtomicU64::new(1),
        })
    }
}

/// The file watcher; rebuilding stops when it is dropped.
pub type Watcher = notify_debouncer_full::Debouncer<
    notify_debouncer_full::notify::RecommendedWatcher,
    notify_debouncer_full::RecommendedCache,
>;

/// What a rebuild triggered by the watcher gave.
#[derive(Debug)]
pub enum Rebuild {
    Built {
        pages: usize,
        elapsed: Duration,
        version: u64,
    },
    /// The previous site is still served.
    Failed(SiteError),
}

/// Rebuilds on every change to the repo or the templates; the caller built once already.
pub fn watch(
    opts: &SiteOptions,
    state: Arc<ServeState>,
    on_rebuild: impl Fn(Rebuild) + Send + 'static,
) -> Result<Watcher, String> {
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
            match crate::build(&opts) {
                Ok(r) => {
                    let version = state.version.fetch_add(1, Ordering::SeqCst) + 1;
                    on_rebuild(Rebuild::Built {
                        pages: r.pages,
                        elapsed: start.elapsed(),
                        version,
                    });
                }
                Err(e) => on_rebuild(Rebuild::Failed(e)),
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

/// Serves `app` on `listener` with `limits` until `shutdown` completes (in-flight requests
/// finish first).
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: opsrepo::http::Limits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    opsrepo::http::serve(listener, app, limits, shutdown).await
}

/// The routes of `vakt site serve`: `/__vakt/version`, `/snippets/<name>.json`, static files.
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
    match inside(&s.snippets, &s.snippets.join(&name)) {
        Some(p) => match tokio::fs::read(p).await {
            Ok(b) => with_headers(b, "application/json"),
            Err(_) => not_found(),
        },
        None => not_found(),
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

/// `p` canonicalised, when it exists and lies under `root` (canonicalised too): a symlink that
/// leads out of the root, at any level, is refused.
fn inside(root: &Path, p: &Path) -> Option<PathBuf> {
    let root = std::fs::canonicalize(root).ok()?;
    let real = std::fs::canonicalize(p).ok()?;
    real.starts_with(&root).then_some(real)
}

async fn static_file(State(s): State<Arc<ServeState>>, uri: Uri) -> Response {
    let Some(p) = resolve(&s.site, uri.path()) else {
        return not_found();
    };
    let Some(mut real) = inside(&s.site, &p) else {
        return not_found();
    };
    if real.is_dir() {
        if !uri.path().ends_with('/') {
            // Built from the resolved path, never from the request: `//ops` must not become a
            // protocol-relative redirect to another host.
            let rel = p.strip_prefix(&s.site).unwrap_or(Path::new(""));
            let mut loc = String::from("/");
            for c in rel.components() {
                if let Component::Normal(n) = c {
                    loc.push_str(&encode_segment(&n.to_string_lossy()));
                    loc.push('/');
                }
            }
            let mut r = StatusCode::PERMANENT_REDIRECT.into_response();
            if let Ok(v) = HeaderValue::from_str(&loc) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            return r;
        }
        let Some(index) = inside(&s.site, &real.join("index.html")) else {
            return not_found();
        };
        real = index;
    }
    match tokio::fs::read(&real).await {
        Ok(b) => with_headers(b, content_type(&real)),
        Err(_) => not_found(),
    }
}

/// Percent-encodes what may not stand in a path segment of a `Location`.
fn encode_segment(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
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
