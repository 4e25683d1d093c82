//! HTTP: the public router (the INS endpoint and health checks only; the
//! operational routes are on the admin listener, [`crate::admin`]), and the
//! mapping of every outcome to a status. Authentication is delegated to the pure
//! [`crate::ins`] module, storage to [`crate::store`].

pub mod acme;
mod client_ip;
pub mod connections;
mod error;
mod ins_handler;
pub mod server;
pub mod tls;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;

use crate::config::Settings;
use crate::ingest::Ingest;
use crate::metrics::Metrics;
use crate::store::Store;

/// What the handlers share: the store (for reads) and the ingest pipeline
/// (which holds the writer and the runtime in force).
#[derive(Debug)]
pub struct AppState {
    pub store: Store,
    pub ingest: Arc<Ingest>,
    pub metrics: Arc<Metrics>,
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
    let timeout = { state.ingest.runtime().commit_timeout };
    match state.ingest.writer().ready(timeout).await {
        Ok(()) => (StatusCode::OK, "ready\n"),
        Err(e) => {
            tracing::warn!(error = %e, "readyz: the store does not take commits");
            (StatusCode::SERVICE_UNAVAILABLE, "store unavailable\n")
        }
    }
}
