//! A client of ClickBank's Orders API (`/rest/1.3/orders2`), as far as
//! reconciliation needs it: `count` and `list`, within a budget of calls,
//! paced, backing off from ClickBank's over-limit answer (a 403, not a 429).
//!
//! Reference: ClickBank's "Orders API" article. `list` returns 100 orders a
//! page; the next page is asked for with a `Page: n` header while the
//! answer is 206 (Partial Content), and 200 marks the last page (a page
//! may hold fewer than 100 orders and still not be the last).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::NaiveDate;
use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION};
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use super::orders;

/// Pages of one `list` at most (100 orders each).
const MAX_PAGES: u32 = 500;
/// Tries of one request that met a 403, a 429, a 5xx or no answer.
const TRIES: u32 = 4;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the daily budget of Orders API calls for this account is spent")]
    Budget,
    #[error("ClickBank answered 403 {tries} times: over its rate limit (10 requests a second, 25,000 a day per account, shared with your other tools), or the API key lacks the API Order Read role")]
    Forbidden { tries: u32 },
    #[error("ClickBank answered {0}")]
    Status(StatusCode),
    #[error("cannot reach the Orders API: {0}")]
    Transport(String),
    #[error("the Orders API's answer is not what its documentation describes: {0}")]
    Shape(String),
}

/// The calls one run made, by kind.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct Calls {
    pub count: u64,
    pub list: u64,
    /// Of all calls: answers of 403 that were backed off from.
    pub forbidden: u64,
}

pub struct Api {
    base: reqwest::Url,
    authorization: HeaderValue,
    client: reqwest::Client,
    pace: Duration,
    backoff: Duration,
    last: tokio::sync::Mutex<Option<tokio::time::Instant>>,
    budget: u64,
    made: AtomicU64,
    count_calls: AtomicU64,
    list_calls: AtomicU64,
    forbidden: AtomicU64,
}

impl Api {
    /// At most `budget` calls, one per `pace` at most.
    pub fn new(
        base: reqwest::Url,
        key: &SecretString,
        pace: Duration,
        budget: u64,
    ) -> Result<Api, ApiError> {
        let mut authorization = HeaderValue::from_str(key.expose_secret())
            .map_err(|_| ApiError::Shape("the API key is not a header value".into()))?;
        authorization.set_sensitive(true);
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .user_agent(concat!("kaching/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ApiError::Transport(e.to_string()))?;
        Ok(Api {
            base,
            authorization,
            client,
            pace,
            backoff: Duration::from_secs(1),
            last: tokio::sync::Mutex::new(None),
            budget,
            made: AtomicU64::new(0),
            count_calls: AtomicU64::new(0),
            list_calls: AtomicU64::new(0),
            forbidden: AtomicU64::new(0),
        })
    }

    /// Every request made so far (what the budget counts).
    pub fn made(&self) -> u64 {
        self.made.load(Ordering::Relaxed)
    }

    pub fn calls(&self) -> Calls {
        Calls {
            count: self.count_calls.load(Ordering::Relaxed),
            list: self.list_calls.load(Ordering::Relaxed),
            forbidden: self.forbidden.load(Ordering::Relaxed),
        }
    }

    /// Orders of `kind` on `day` (ClickBank's day).
    pub async fn count(&self, day: NaiveDate, kind: &str) -> Result<u64, ApiError> {
        let (_, body) = self
            .get("count", day, day, kind, None, &self.count_calls)
            .await?;
        orders::count(&body).map_err(ApiError::Shape)
    }

    /// Every order of `kind` from `from` to `to` (inclusive), all pages.
    pub async fn list(
        &self,
        from: NaiveDate,
        to: NaiveDate,
        kind: &str,
    ) -> Result<Vec<Value>, ApiError> {
        let mut all = Vec::new();
        for page in 1..=MAX_PAGES {
            let (status, body) = self
                .get("list", from, to, kind, Some(page), &self.list_calls)
                .await?;
            all.extend(orders::orders(&body).map_err(ApiError::Shape)?);
            if status != StatusCode::PARTIAL_CONTENT {
                return Ok(all);
            }
        }
        Err(ApiError::Shape(format!(
            "more than {MAX_PAGES} pages for one day and type"
        )))
    }

    async fn get(
        &self,
        method: &str,
        from: NaiveDate,
        to: NaiveDate,
        kind: &str,
        page: Option<u32>,
        counter: &AtomicU64,
    ) -> Result<(StatusCode, String), ApiError> {
        let mut url = self
            .base
            .join(&format!("/rest/1.3/orders2/{method}"))
            .map_err(|e| ApiError::Shape(e.to_string()))?;
        url.query_pairs_mut()
            .append_pair("startDate", &from.to_string())
            .append_pair("endDate", &to.to_string())
            .append_pair("type", kind);
        let mut tries = 0;
        loop {
            tries += 1;
            if self.made() >= self.budget {
                return Err(ApiError::Budget);
            }
            self.wait_turn().await;
            self.made.fetch_add(1, Ordering::Relaxed);
            counter.fetch_add(1, Ordering::Relaxed);
            let mut request = self
                .client
                .get(url.clone())
                .header(AUTHORIZATION, self.authorization.clone())
                .header(ACCEPT, "application/json, text/plain");
            if let Some(p) = page.filter(|p| *p > 1) {
                request = request.header("Page", p.to_string());
            }
            let retry_in = self.backoff * 2u32.pow(tries - 1);
            match request.send().await {
                Ok(r) if r.status().is_success() => {
                    let status = r.status();
                    let body = r
                        .text()
                        .await
                        .map_err(|e| ApiError::Transport(e.without_url().to_string()))?;
                    return Ok((status, body));
                }
                Ok(r) if r.status() == StatusCode::FORBIDDEN => {
                    self.forbidden.fetch_add(1, Ordering::Relaxed);
                    if tries >= TRIES {
                        return Err(ApiError::Forbidden { tries });
                    }
                    tracing::info!(
                        tries,
                        "reconcile: ClickBank answered 403; backing off for {retry_in:?}"
                    );
                }
                Ok(r)
                    if r.status() == StatusCode::TOO_MANY_REQUESTS
                        || r.status().is_server_error() =>
                {
                    if tries >= TRIES {
                        return Err(ApiError::Status(r.status()));
                    }
                }
                Ok(r) => return Err(ApiError::Status(r.status())),
                Err(e) if tries >= TRIES => {
                    return Err(ApiError::Transport(e.without_url().to_string()))
                }
                Err(_) => {}
            }
            tokio::time::sleep(retry_in).await;
        }
    }

    /// Keeps requests `pace` apart.
    async fn wait_turn(&self) {
        let mut last = self.last.lock().await;
        if let Some(at) = *last {
            tokio::time::sleep_until(at + self.pace).await;
        }
        *last = Some(tokio::time::Instant::now());
    }
}
