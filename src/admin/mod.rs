//! The admin listener's routes: `GET /metrics` now, the dashboard later
//! (add routes to [`router`]). It is served on its own address
//! (`[admin] listen`), never on the public INS listener, and every route
//! sits behind the bearer token when one is configured (it must be, off
//! loopback: see [`crate::config::AdminSettings::resolve`]).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chrono::Utc;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::metrics::{self, Metrics};
use crate::store::Store;

/// Bound on one admin request; a scrape is one query and an encoding.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What the admin routes share.
#[derive(Debug)]
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub store: Store,
    /// The configured action names, in order: the outbox gauges' labels.
    pub actions: Vec<String>,
    /// SHA-256 of the bearer token, when one is required.
    token: Option<[u8; 32]>,
}

impl AdminState {
    pub fn new(
        metrics: Arc<Metrics>,
        store: Store,
        actions: Vec<String>,
        token: Option<&SecretString>,
    ) -> Self {
        Self {
            metrics,
            store,
            actions,
            token: token.map(|t| digest(t.expose_secret().as_bytes())),
        }
    }
}

/// Compared as digests, so the comparison's time says nothing about the
/// token's length or content.
fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The admin routes.
pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .with_state(state)
}

/// Every admin route requires `Authorization: Bearer <token>` when a token is configured.
async fn authorize(State(state): State<Arc<AdminState>>, request: Request, next: Next) -> Response {
    let Some(expected) = &state.token else {
        return next.run(request).await;
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| digest(t.trim().as_bytes()));
    match given {
        Some(given) if bool::from(given.ct_eq(expected)) => next.run(request).await,
        _ => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "unauthorized\n",
        )
            .into_response(),
    }
}

/// `GET /metrics`. The outbox gauges are computed now, one indexed query
/// per action (cheap: its cost follows the pending runs), rather than on a
/// timer: exact at each scrape, and no database work when nobody scrapes.
async fn metrics_text(State(state): State<Arc<AdminState>>) -> Response {
    let now = Utc::now();
    for (index, action) in state.actions.iter().enumerate() {
        match state.store.pending_runs(action).await {
            Ok(p) => {
                let age = p
                    .oldest
                    .and_then(|t| (now - t).to_std().ok())
                    .unwrap_or_default();
                state.metrics.outbox(index, p.count, age);
            }
            // The rest is still worth having; the gauges keep their last values.
            Err(e) => {
                tracing::warn!(error = %e, action, "admin: cannot count pending runs for /metrics");
            }
        }
    }
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        state.metrics.encode(),
    )
        .into_response()
}
