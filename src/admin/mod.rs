//! The admin listener: `GET /metrics`, the dashboard's pages ([`pages`]),
//! its live feed ([`live`]) and the JSON/CSV API ([`api`]). Served on its
//! own address (`[admin] listen`), never on the public INS listener.
//! Who may see what is [`auth`]'s: the bearer token for scripts (API and
//! metrics), a login session for people, everything open on loopback when
//! no credential is configured. Every response carries a strict
//! Content-Security-Policy (no inline script or style).

pub mod api;
pub mod auth;
mod csv;
mod customers;
mod live;
pub mod pages;
mod params;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use chrono::Utc;
use tokio::sync::broadcast;

use crate::actions::Dispatcher;
use crate::ingest::Committed;
use crate::metrics::{self, Metrics};
use crate::report::Reports;
use crate::runtime::Live;
use crate::store::Store;

pub use auth::{hash_password, Auth};

/// Bound on one admin request; the slowest is a breakdown over years.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
    connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// What the admin routes share.
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub store: Store,
    /// The action names at startup, in order: the outbox gauges' labels.
    pub actions: Vec<String>,
    pub reports: Arc<Reports>,
    pub auth: Auth,
    /// The settings in force: accounts, actions, keys (for reprocessing).
    pub live: Live,
    /// Every commit, for the live feed.
    pub commits: broadcast::Sender<Arc<Committed>>,
    /// Told about runs retried from the Actions page.
    pub dispatcher: Option<Dispatcher>,
    pub templates: pages::Templates,
}

impl std::fmt::Debug for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminState").finish_non_exhaustive()
    }
}

/// Who is asking, as [`authorize`] found: handlers read it from the
/// request's extensions.
#[derive(Debug, Clone)]
pub struct Viewer {
    pub session: Option<auth::Session>,
    /// The CSRF token this viewer's forms carry.
    pub csrf: String,
    /// Logged in (or open): may use the pages, not only the API.
    pub person: bool,
}

/// The admin routes.
pub fn router(state: Arc<AdminState>) -> Router {
    let guarded = Router::new()
        .route("/metrics", get(metrics_text))
        .merge(api::routes())
        .merge(pages::routes())
        .merge(customers::routes())
        .route("/events", get(live::events))
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize));
    Router::new()
        .merge(guarded)
        .route("/login", get(pages::login_page).post(pages::login))
        .route("/logout", post(pages::logout))
        .route("/assets/{file}", get(pages::asset))
        .layer(middleware::from_fn(headers))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .with_state(state)
}

/// Security headers on every response.
async fn headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// Every guarded route: open when no credential is configured; otherwise
/// a session (pages and API) or the bearer token (API and `/metrics`).
/// A POST also needs a same-origin `Origin` when the browser sends one
/// (its CSRF token is checked by the handler, which parses the form).
async fn authorize(
    State(state): State<Arc<AdminState>>,
    mut request: Request,
    next: Next,
) -> Response {
    let headers = request.headers();
    let path = request.uri().path().to_owned();
    let scripted = path == "/metrics" || path.starts_with("/api/");
    if request.method() == Method::POST && !same_origin(headers) {
        return (StatusCode::FORBIDDEN, "cross-origin request refused\n").into_response();
    }
    let viewer = if state.auth.open() {
        Some(Viewer {
            session: None,
            csrf: state.auth.open_csrf(),
            person: true,
        })
    } else if let Some(session) = state.auth.session(headers) {
        Some(Viewer {
            csrf: session.csrf.clone(),
            session: Some(session),
            person: true,
        })
    } else if state.auth.bearer(headers) {
        Some(Viewer {
            session: None,
            csrf: String::new(),
            person: false,
        })
    } else {
        None
    };
    match viewer {
        Some(v) if v.person || scripted => {
            request.extensions_mut().insert(v);
            next.run(request).await
        }
        _ if scripted => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            axum::Json(serde_json::json!({ "error": "unauthorized: log in or send Authorization: Bearer <token>" })),
        )
            .into_response(),
        _ => {
            let next_page = request.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
            let target = format!("/login?next={}", params::encode(next_page));
            Redirect::to(&target).into_response()
        }
    }
}

/// `Origin`, when present, names this host.
fn same_origin(headers: &axum::http::HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    origin
        .split_once("://")
        .is_some_and(|(_, rest)| rest.trim_end_matches('/') == host)
}

/// The client's address, for the login limiter.
pub(crate) fn client_ip(connect: Option<&ConnectInfo<SocketAddr>>) -> std::net::IpAddr {
    connect
        .map(|c| c.0.ip())
        .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
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
