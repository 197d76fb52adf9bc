//! The HTTP hygiene both servers share (the daemon's port and `vakt site serve`): one accept loop
//! with a connection cap, a header-read timeout (which hyper also applies while a keep-alive
//! connection waits for its next request, so it is the idle timeout too), a body-read deadline,
//! `413` for a declared body over the limit before a byte of it is read, an optional `Host`
//! allow-list, security headers on every response (errors and redirects included), the client
//! address on every request, and the helpers for bearer tokens (scheme case-insensitive,
//! constant-time comparison).
//!
//! Behind the `http` feature: only the crates that serve HTTP pull in hyper.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

/// Limits of one server. [`Limits::default`] is what both servers use unless told otherwise.
#[derive(Debug, Clone)]
pub struct Limits {
    /// A client must send a request's complete head within this time, and an idle keep-alive
    /// connection is closed after it (hyper starts the clock when it waits for a head).
    pub header_read: Duration,
    /// A request body must arrive completely within this time after its head.
    pub body_read: Duration,
    /// Connections served at once; one more is answered `503` and closed.
    pub max_connections: usize,
    /// Largest request body; a larger `Content-Length` is answered `413` unread.
    pub max_body: u64,
    /// Largest request head (request line and headers).
    pub max_header_bytes: usize,
    /// When not empty, the only `Host` names (without port) answered; others get `421`.
    pub allowed_hosts: Vec<String>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read: Duration::from_secs(10),
            body_read: Duration::from_secs(10),
            max_connections: 256,
            max_body: 64 * 1024,
            max_header_bytes: 16 * 1024,
            allowed_hosts: Vec::new(),
        }
    }
}

/// The client address of a request served by [`serve`] (`None` in unit tests of a router).
pub fn client_addr(headers_ext: &axum::http::Extensions) -> Option<SocketAddr> {
    headers_ext
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(a)| *a)
}

/// The token of an `Authorization: Bearer <token>` header; the scheme is case-insensitive
/// (RFC 9110 §11.1). `None` when there is no such header or another scheme.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = v.split_once([' ', '\t'])?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Compares two secrets in time that depends only on their lengths, never on where they differ.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    // Keep the fold from being turned into an early exit.
    std::hint::black_box(diff) == 0
}

/// Adds the security headers to `h` (kept when a handler set them already).
fn secure(h: &mut HeaderMap) {
    for (k, v) in [
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("x-frame-options", "DENY"),
        ("cache-control", "no-store"),
        ("cross-origin-resource-policy", "same-origin"),
    ] {
        if !h.contains_key(k) {
            h.insert(k, HeaderValue::from_static(v));
        }
    }
}

fn plain(code: StatusCode, msg: &str) -> Response {
    let mut r = (code, format!("{msg}\n")).into_response();
    secure(r.headers_mut());
    r
}

/// Whether `host` (a `Host` header, maybe with a port) names one of `allowed`.
fn host_allowed(allowed: &[String], host: Option<&str>) -> bool {
    if allowed.is_empty() {
        return true;
    }
    let Some(h) = host else { return false };
    let name = if let Some(rest) = h.strip_prefix('[') {
        // [::1]:8080
        rest.split(']').next().unwrap_or("")
    } else {
        h.rsplit_once(':').map_or(h, |(n, p)| {
            if p.bytes().all(|b| b.is_ascii_digit()) {
                n
            } else {
                h
            }
        })
    };
    allowed.iter().any(|a| a.eq_ignore_ascii_case(name))
}

/// The middleware: Host check, body size and deadline, security headers on whatever comes back.
async fn guard(State(l): State<Arc<Limits>>, req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.to_string()));
    if !host_allowed(&l.allowed_hosts, host.as_deref()) {
        return plain(
            StatusCode::MISDIRECTED_REQUEST,
            "this server does not answer for that Host (see --allowed-host)",
        );
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .map(|v| v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()));
    match declared {
        Some(None) => return plain(StatusCode::BAD_REQUEST, "unreadable Content-Length"),
        Some(Some(n)) if n > l.max_body => {
            return plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!(
                    "request body of {n} bytes is over the limit of {}",
                    l.max_body
                ),
            );
        }
        _ => {}
    }
    let (parts, body) = req.into_parts();
    let body = Body::new(Bounded {
        inner: body,
        left: l.max_body,
        deadline: Box::pin(tokio::time::sleep(l.body_read)),
    });
    let mut r = next.run(Request::from_parts(parts, body)).await;
    secure(r.headers_mut());
    r
}

/// Why a request body was cut off.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the request body is over the limit of {0} bytes")]
    TooLarge(u64),
    #[error("the request body did not arrive in time")]
    TimedOut,
    #[error("failed to read the request body: {0}")]
    Read(axum::Error),
}

/// A request body with a size bound (for chunked bodies, which declare no length) and a deadline.
struct Bounded {
    inner: Body,
    left: u64,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl http_body::Body for Bounded {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    let n = d.len() as u64;
                    if n > this.left {
                        return Poll::Ready(Some(Err(BodyError::TooLarge(this.left))));
                    }
                    this.left -= n;
                }
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(BodyError::Read(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(BodyError::TimedOut))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Reads a whole request body (bounded by [`serve`]'s limits): the status to answer when it
/// cannot be read, `413` when it is too large, `408` when it came too slowly.
pub async fn read_body(body: Body, max: usize) -> Result<Bytes, (StatusCode, String)> {
    axum::body::to_bytes(body, max).await.map_err(|e| {
        let mut src: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(s) = src {
            if let Some(b) = s.downcast_ref::<BodyError>() {
                let code = match b {
                    BodyError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
                    BodyError::TimedOut => StatusCode::REQUEST_TIMEOUT,
                    BodyError::Read(_) => StatusCode::BAD_REQUEST,
                };
                return (code, b.to_string());
            }
            if s.to_string().contains("length limit") {
                return (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the request body is over the limit of {max} bytes"),
                );
            }
            src = s.source();
        }
        (
            StatusCode::BAD_REQUEST,
            format!("failed to read the request body: {e}"),
        )
    })
}

/// Wraps `app` in the middleware of `limits` (what [`serve`] does; exposed for tests).
pub fn layer(app: Router, limits: &Limits) -> Router {
    app.layer(axum::middleware::from_fn_with_state(
        Arc::new(limits.clone()),
        guard,
    ))
}

/// Serves `app` on `listener` with `limits` until `shutdown` completes; connections in flight
/// are asked to finish their current request and given `header_read` to do it.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = layer(app, &limits);
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (mut stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                // Out of file descriptors and the like: wait a moment instead of spinning.
                Err(_) => { tokio::time::sleep(Duration::from_millis(50)).await; continue; }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tokio::spawn(async move {
                let _ = tokio::time::timeout(
                    Duration::from_secs(1),
                    stream.write_all(
                        b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 30\r\nconnection: close\r\nx-content-type-options: nosniff\r\ncache-control: no-store\r\n\r\ntoo many connections; retry\r\n\r\n",
                    ),
                )
                .await;
            });
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let mut stop = stop_rx.clone();
        let limits = limits.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let svc = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(ConnectInfo(peer));
                    let app = app.clone();
                    async move {
                        use tower_service::Service;
                        let mut app = app;
                        Ok::<_, Infallible>(
                            app.call(req.map(Body::new))
                                .await
                                .unwrap_or_else(|e| match e {}),
                        )
                    }
                },
            );
            let mut b = hyper::server::conn::http1::Builder::new();
            b.timer(TokioTimer::new())
                .header_read_timeout(limits.header_read)
                .max_buf_size(limits.max_header_bytes.max(8192))
                .keep_alive(true);
            let conn = b.serve_connection(TokioIo::new(stream), svc);
            let mut conn = std::pin::pin!(conn);
            let stopped = tokio::select! {
                _ = conn.as_mut() => false,
                r = stop.wait_for(|v| *v) => r.is_ok(),
            };
            if stopped {
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(limits.header_read, conn).await;
            }
        });
    }
    let _ = stop_tx.send(true);
    // Wait for the connections to finish (each is bounded by its own deadlines).
    let all = u32::try_from(limits.max_connections.max(1)).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(
        limits.header_read + limits.body_read,
        slots.acquire_many(all),
    )
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        let mut h = HeaderMap::new();
        for v in ["Bearer abc", "bearer abc", "BEARER   abc ", "bEaReR\tabc"] {
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
            assert_eq!(bearer(&h), Some("abc"), "{v}");
        }
        for v in ["Basic abc", "Bearer", "Bearer ", "Bearerabc"] {
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
            assert_eq!(bearer(&h), None, "{v}");
        }
    }

    #[test]
    fn constant_time_equality() {
        assert!(ct_eq(b"secret-token-1234", b"secret-token-1234"));
        assert!(!ct_eq(b"secret-token-1234", b"secret-token-1235"));
        assert!(!ct_eq(b"short", b"longer"));
    }

    #[test]
    fn host_allow_list() {
        let l = vec!["ops.example".to_owned(), "::1".to_owned()];
        assert!(host_allowed(&[], None));
        assert!(host_allowed(&l, Some("ops.example:8080")));
        assert!(host_allowed(&l, Some("OPS.example")));
        assert!(host_allowed(&l, Some("[::1]:80")));
        assert!(!host_allowed(&l, Some("evil.example")));
        assert!(!host_allowed(&l, None));
    }
}
