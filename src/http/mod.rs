//! HTTP: the public router (the INS endpoint and health checks only; the
//! operational routes are on the admin listener, [`crate::admin`]), and the
//! mapping of every outcome to a status. Authentication is delegated to the pure
//! [`crate::ins`] module, storage to [`crate::store`].

mod client_ip;
pub mod connections;
mod error;
mod ins_handler;
mod keeper;
mod limiter;
pub mod server;
pub mod tls;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use ipnet::IpNet;

use crate::actions::{Actions, Dispatcher};
use crate::config::Settings;
use crate::ins::AccountKeys;
use crate::metrics::Metrics;
use crate::store::{Store, Writer};

pub use error::IngestError;
pub use keeper::RejectedKeeper;
pub use limiter::FailureLimiter;

/// One configured account: its keys and its own source-address allowlist.
#[derive(Debug)]
pub struct Account {
    pub keys: AccountKeys,
    pub allowed_ips: Vec<IpNet>,
}

/// What the handlers share. Built once at startup from validated settings.
#[derive(Debug)]
pub struct AppState {
    pub store: Store,
    /// Group commit in front of `store`, for the request path.
    pub writer: Writer,
    pub actions: Arc<Actions>,
    pub dispatcher: Dispatcher,
    pub accounts: Vec<Account>,
    pub by_name: HashMap<String, usize>,
    pub allowed_ips: Vec<IpNet>,
    pub trusted_proxies: Vec<IpNet>,
    /// Where rejected posts go, off the request path.
    pub rejected: RejectedKeeper,
    pub commit_timeout: Duration,
    pub limiter: FailureLimiter,
    pub metrics: Arc<Metrics>,
}

impl AppState {
    pub fn new(
        settings: &Settings,
        store: Store,
        writer: Writer,
        actions: Arc<Actions>,
        dispatcher: Dispatcher,
        rejected: RejectedKeeper,
        metrics: Arc<Metrics>,
    ) -> Result<Self, crate::config::ConfigError> {
        let accounts: Vec<Account> = settings
            .account_keys()?
            .into_iter()
            .zip(&settings.accounts)
            .map(|(keys, a)| Account {
                keys,
                allowed_ips: a.allowed_ips.clone(),
            })
            .collect();
        let by_name = accounts
            .iter()
            .enumerate()
            .map(|(i, a)| (a.keys.name.as_str().to_owned(), i))
            .collect();
        Ok(Self {
            store,
            writer,
            actions,
            dispatcher,
            accounts,
            by_name,
            allowed_ips: settings.security.allowed_ips.clone(),
            trusted_proxies: settings.security.trusted_proxies.clone(),
            rejected,
            commit_timeout: Duration::from_millis(settings.database.commit_timeout_ms),
            limiter: FailureLimiter::new(settings.security.max_auth_failures_per_minute),
            metrics,
        })
    }
}

/// The application's routes.
pub fn router(settings: &Settings, state: Arc<AppState>) -> Router {
    let ins_path = settings.server.ins_path.as_str();
    let timeout = Duration::from_millis(settings.server.request_timeout_ms);
    Router::new()
        .route(ins_path, post(ins_handler::receive_any))
        .route(
            &format!("{ins_path}/{{account}}"),
            post(ins_handler::receive_for),
        )
        .layer(DefaultBodyLimit::max(settings.server.max_body_bytes))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
        .with_state(state)
}

/// The process is up.
async fn healthz() -> &'static str {
    "ok\n"
}

/// The store takes commits: this instance can take notifications. A read
/// is not enough (a full disk still reads), so this is a commit when no
/// notification has committed lately, and after any failed commit.
async fn readyz(State(state): State<Arc<AppState>>) -> (StatusCode, &'static str) {
    match state.writer.ready(state.commit_timeout).await {
        Ok(()) => (StatusCode::OK, "ready\n"),
        Err(e) => {
            tracing::warn!(error = %e, "readyz: the store does not take commits");
            (StatusCode::SERVICE_UNAVAILABLE, "store unavailable\n")
        }
    }
}
