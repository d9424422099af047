//! A polite client of Kalshi's REST API: every request waits its turn under a rate limit, times out, and is
//! retried on 429 (after the server's Retry-After, else a backoff), 5xx and transport errors (after a doubling
//! backoff), a bounded number of times. Other answers are errors that name the URL and Kalshi's message.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use reqwest::{StatusCode, Url};
use serde_json::Value;

use crate::error::Error;

/// How the client treats Kalshi.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Requests per second, all requests of the client together.
    pub rate: NonZeroU32,
    /// One request's whole time, connect to last byte.
    pub timeout: Duration,
    /// Retries of one request before it fails (429, 5xx, timeouts, broken connections).
    pub max_retries: u32,
    /// The first pause before a retry; it doubles with each retry of the same request, up to [`MAX_BACKOFF`].
    pub backoff: Duration,
}

/// The longest pause between two tries of a request, whatever Retry-After says.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Kalshi's REST API at `base` (e.g. `https://api.elections.kalshi.com/trade-api/v2`).
#[derive(Debug)]
pub struct KalshiRest {
    http: reqwest::Client,
    base: Url,
    limiter: DefaultDirectRateLimiter,
    policy: Policy,
    /// Requests sent, retries included.
    sent: AtomicU64,
    /// Retries after a 429, a 5xx or a transport error.
    retried: AtomicU64,
}

impl KalshiRest {
    /// A client of the API at `base`.
    pub fn new(base: &str, policy: Policy) -> Result<Self, Error> {
        let base = base.trim_end_matches('/');
        let base = Url::parse(&format!("{base}/")).map_err(|e| Error::invalid("base_url", format!("{base}: {e}")))?;
        let http = reqwest::Client::builder()
            .timeout(policy.timeout)
            .user_agent(concat!("kalshi-replay/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Kalshi { url: base.to_string(), reason: e.to_string() })?;
        let limiter = RateLimiter::direct(Quota::per_second(policy.rate).allow_burst(NonZeroU32::MIN));
        Ok(Self { http, base, limiter, policy, sent: AtomicU64::new(0), retried: AtomicU64::new(0) })
    }

    /// Requests sent so far, retries included, and the retries among them.
    pub fn counts(&self) -> (u64, u64) {
        (self.sent.load(Ordering::Relaxed), self.retried.load(Ordering::Relaxed))
    }

    /// GET `path` (relative to the base, e.g. `markets/trades`) with `query`, as JSON (numbers as their exact
    /// text). A 404 is `Ok(None)`.
    pub async fn get(&self, path: &str, query: &[(&str, String)]) -> Result<Option<Value>, Error> {
        let mut url = self.base.join(path).map_err(|e| Error::invalid("path", format!("{path}: {e}")))?;
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        }
        let mut pause = self.policy.backoff;
        let mut attempt = 0;
        loop {
            self.limiter.until_ready().await;
            self.sent.fetch_add(1, Ordering::Relaxed);
            let failure = match self.http.get(url.clone()).send().await {
                Ok(response) => {
                    let status = response.status();
                    let retry_after = retry_after(&response);
                    match response.bytes().await {
                        Ok(body) if status.is_success() => {
                            return serde_json::from_slice(&body)
                                .map(Some)
                                .map_err(|e| Error::Kalshi { url: url.to_string(), reason: format!("not JSON: {e}") });
                        }
                        Ok(_) if status == StatusCode::NOT_FOUND => return Ok(None),
                        Ok(body) if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() => {
                            if let Some(wait) = retry_after {
                                pause = wait.min(MAX_BACKOFF);
                            }
                            format!("{status}: {}", message(&body))
                        }
                        Ok(body) => {
                            return Err(Error::Kalshi {
                                url: url.to_string(),
                                reason: format!("{status}: {}", message(&body)),
                            });
                        }
                        Err(e) => format!("reading the answer: {}", crate::error::error_chain(&e)),
                    }
                }
                Err(e) => crate::error::error_chain(&e),
            };
            if attempt == self.policy.max_retries {
                let reason = format!("{failure} (after {attempt} retries)");
                return Err(Error::Kalshi { url: url.to_string(), reason });
            }
            attempt += 1;
            self.retried.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%url, %failure, retry = attempt, pause_ms = pause.as_millis() as u64, "kalshi: retrying");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_BACKOFF);
        }
    }
}

/// The Retry-After header in seconds (Kalshi sends seconds; an HTTP date is not honoured, the backoff applies).
fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    let value = response.headers().get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// Kalshi's error message from an error body (`{"error": {"message": ...}}` or `{"message": ...}`), else the
/// body's start.
fn message(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    if let Ok(value) = serde_json::from_str::<Value>(&text) {
        let found = [value.pointer("/error/message"), value.pointer("/message"), value.pointer("/error")]
            .into_iter()
            .flatten()
            .find_map(|v| v.as_str().map(str::to_owned));
        if let Some(found) = found {
            return found;
        }
    }
    text.chars().take(200).collect()
}
