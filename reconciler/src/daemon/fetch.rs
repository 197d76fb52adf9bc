//! Bounded HTTP reads and the periodic loop every poller of the daemon shares: Alertmanager
//! sources, the metrics backend, NATS monitoring, and the operator API client. Every request
//! has a connect and a total timeout, follows no redirect, and reads at most a given number of
//! bytes as a stream (a bigger answer is refused, never buffered whole).

use std::time::Duration;

/// Connect timeout per request.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Total time per request, body included.
pub const TOTAL_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a bounded fetch failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("failed to connect to {url}: {detail}")]
    Connect { url: String, detail: String },
    #[error("{url} did not answer within {secs} s")]
    Timeout { url: String, secs: u64 },
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url} sent more than {limit} bytes; the answer was refused")]
    TooLarge { url: String, limit: usize },
    #[error("{url} did not answer with an Alertmanager API v2 list: {detail}")]
    InvalidBody { url: String, detail: String },
    #[error("failed to read {url}: {detail}")]
    Transport { url: String, detail: String },
}

/// The HTTP client for what the daemon reads: 2 s connect, 5 s in total, no redirects.
pub fn client() -> reqwest::Client {
    client_with(TOTAL_TIMEOUT)
}

/// [`client`] with another total time per request.
pub fn client_with(total: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(total)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap_or_default()
}

fn classify(url: &str, e: &reqwest::Error) -> FetchError {
    if e.is_timeout() {
        FetchError::Timeout {
            url: url.to_owned(),
            secs: TOTAL_TIMEOUT.as_secs(),
        }
    } else if e.is_connect() {
        FetchError::Connect {
            url: url.to_owned(),
            detail: source_chain(e),
        }
    } else {
        FetchError::Transport {
            url: url.to_owned(),
            detail: source_chain(e),
        }
    }
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// GETs `url` and parses its JSON body, reading at most `limit` bytes.
pub async fn fetch_json<T: serde::de::DeserializeOwned>(
    client: &reqwest::Client,
    url: &str,
    limit: usize,
) -> Result<T, FetchError> {
    let mut resp = client
        .get(url)
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| classify(url, &e))?;
    let status = resp.status();
    if !status.is_success() {
        return Err(FetchError::Status {
            url: url.to_owned(),
            status: status.as_u16(),
        });
    }
    let too_large = || FetchError::TooLarge {
        url: url.to_owned(),
        limit,
    };
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let buf = match read_body(&mut resp, limit).await {
        Ok(b) => b,
        Err(BodyError::TooLarge) => return Err(too_large()),
        Err(BodyError::Transport(e)) => return Err(classify(url, &e)),
    };
    serde_json::from_slice(&buf).map_err(|e| FetchError::InvalidBody {
        url: url.to_owned(),
        detail: e.to_string(),
    })
}

/// Why a body could not be read whole.
#[derive(Debug)]
pub enum BodyError {
    /// More than the limit.
    TooLarge,
    Transport(reqwest::Error),
}

/// Reads a response body as a stream, stopping at `limit` bytes.
pub async fn read_body(resp: &mut reqwest::Response, limit: usize) -> Result<Vec<u8>, BodyError> {
    let mut buf: Vec<u8> = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(BodyError::Transport)? {
        if buf.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

/// The tick of a poller: every `every` while the daemon leads (a standby does nothing), until
/// `shutdown` fires. A slow poll delays the next tick; ticks never pile up.
pub struct Ticker {
    tick: tokio::time::Interval,
    shutdown: tokio::sync::watch::Receiver<bool>,
}

impl Ticker {
    pub fn new(every: Duration, shutdown: tokio::sync::watch::Receiver<bool>) -> Ticker {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ticker { tick, shutdown }
    }

    /// Waits for the next tick on which `active()` holds; `false` once shutdown fired.
    pub async fn next(&mut self, active: &impl Fn() -> bool) -> bool {
        loop {
            tokio::select! {
                _ = self.shutdown.wait_for(|v| *v) => return false,
                _ = self.tick.tick() => {}
            }
            if active() {
                return true;
            }
        }
    }

    /// `work`, unless shutdown fires first (`None`).
    pub async fn unless_shutdown<T>(
        &mut self,
        work: impl std::future::Future<Output = T>,
    ) -> Option<T> {
        tokio::select! {
            _ = self.shutdown.wait_for(|v| *v) => None,
            out = work => Some(out),
        }
    }
}
