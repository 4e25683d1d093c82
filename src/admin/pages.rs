//! The dashboard's pages: server-rendered minijinja templates embedded in
//! the binary, one stylesheet and one small script (the live feed) served
//! from it too. No inline script or style, so the CSP forbids both. Every
//! figure comes from the same function as the API's.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Form, Router};
use chrono::Utc;
use minijinja::{context, Environment, Value};
use serde::Deserialize;

use super::api::{self, ViewError};
use super::live::LiveItem;
use super::params::{encode, ViewParams};
use super::{client_ip, AdminState, Viewer};
use crate::report::facts::{masked_email, Facts, TRACKING_PARAMETERS};
use crate::report::query::{self, Day, SORTS};
use crate::store::{NewRun, RunStatus};

/// The templates, parsed once at startup.
pub struct Templates(Environment<'static>);

const TEMPLATES: [(&str, &str); 13] = [
    ("alerts.html", include_str!("templates/alerts.html")),
    ("customers.html", include_str!("templates/customers.html")),
    ("base.html", include_str!("templates/base.html")),
    ("login.html", include_str!("templates/login.html")),
    ("error.html", include_str!("templates/error.html")),
    ("overview.html", include_str!("templates/overview.html")),
    ("breakdown.html", include_str!("templates/breakdown.html")),
    ("compare.html", include_str!("templates/compare.html")),
    (
        "subscriptions.html",
        include_str!("templates/subscriptions.html"),
    ),
    (
        "notifications.html",
        include_str!("templates/notifications.html"),
    ),
    (
        "notification.html",
        include_str!("templates/notification.html"),
    ),
    ("actions.html", include_str!("templates/actions.html")),
    ("rejected.html", include_str!("templates/rejected.html")),
];

impl Templates {
    pub fn new() -> Result<Templates, minijinja::Error> {
        let mut env = Environment::new();
        // Autoescaping by extension: every .html template escapes by default.
        for (name, source) in TEMPLATES {
            env.add_template(name, source)?;
        }
        env.add_filter("pct", |x: Option<f64>| -> String {
            x.map(|x| format!("{:.1} %", x * 100.0))
                .unwrap_or_else(|| "–".into())
        });
        Ok(Templates(env))
    }

    pub(super) fn render(&self, name: &str, ctx: Value) -> Response {
        match self.0.get_template(name).and_then(|t| t.render(ctx)) {
            Ok(html) => Html(html).into_response(),
            Err(e) => {
                tracing::error!(error = %e, template = name, "admin: cannot render a page");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "cannot render this page\n",
                )
                    .into_response()
            }
        }
    }
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Templates")
    }
}

pub fn routes() -> Router<Arc<AdminState>> {
    Router::new()
        .route("/", get(overview))
        .route(
            "/products",
            get(|s, v, q| fixed_breakdown(s, v, q, "products", "product")),
        )
        .route(
            "/affiliates",
            get(|s, v, q| fixed_breakdown(s, v, q, "affiliates", "affiliate")),
        )
        .route("/tracking", get(tracking))
        .route("/compare", get(compare))
        .route("/subscriptions", get(subscriptions))
        .route("/notifications", get(notifications))
        .route("/notifications/{id}", get(notification))
        .route("/alerts", get(alerts))
        .route("/actions", get(actions))
        .route("/actions/retry", post(retry))
        .route("/rejected", get(rejected))
        .route("/rejected/reprocess", post(reprocess))
}

/// What every page's frame needs: navigation, the scope form, the CSRF token.
pub(super) async fn frame(
    state: &AdminState,
    viewer: &Viewer,
    page: &str,
    p: &ViewParams,
) -> Value {
    let accounts = api::accounts(state).await.unwrap_or_default();
    let behind = state.reports.behind();
    context! {
        page,
        scoped => !matches!(page, "actions" | "rejected" | "alerts" | "customers"),
        accounts,
        account => p.scope.account.clone().unwrap_or_default(),
        range => p.scope.range.clone().unwrap_or_default(),
        from => p.scope.from.clone().unwrap_or_default(),
        to => p.scope.to.clone().unwrap_or_default(),
        scope_query => p.scope.query(),
        csrf => viewer.csrf.clone(),
        logged_in => viewer.session.is_some(),
        behind,
    }
}

pub(super) fn error_page(state: &AdminState, e: ViewError) -> Response {
    let status = e.status();
    let mut r = state.templates.render(
        "error.html",
        context! { status => status.as_u16(), message => e.message() },
    );
    *r.status_mut() = status;
    r
}

macro_rules! page {
    ($state:expr, $body:expr) => {
        match $body {
            Ok(r) => r,
            Err(e) => error_page(&$state, e),
        }
    };
}

/// A bar chart of a day series, as SVG coordinates (drawn by the template).
#[derive(Debug, serde::Serialize)]
struct Chart {
    title: String,
    bars: Vec<Bar>,
    max: String,
    min: String,
    width: usize,
}

#[derive(Debug, serde::Serialize)]
struct Bar {
    x: f64,
    y: f64,
    w: f64,
    h: f64,
    negative: bool,
    tip: String,
}

const CHART_W: f64 = 720.0;
const CHART_H: f64 = 160.0;

fn chart(
    title: String,
    days: &[Day],
    value: impl Fn(&Day) -> f64,
    tip: impl Fn(&Day, f64) -> String,
    fmt: impl Fn(f64) -> String,
) -> Chart {
    let values: Vec<f64> = days.iter().map(&value).collect();
    let max = values.iter().cloned().fold(0.0_f64, f64::max);
    let min = values.iter().cloned().fold(0.0_f64, f64::min);
    let span = if max - min > 0.0 { max - min } else { 1.0 };
    let w = CHART_W / values.len().max(1) as f64;
    let zero = CHART_H * max / span;
    let bars = days
        .iter()
        .zip(&values)
        .enumerate()
        .map(|(i, (d, v))| {
            let h = (v.abs() / span * CHART_H).max(if *v != 0.0 { 1.0 } else { 0.0 });
            Bar {
                x: i as f64 * w,
                y: if *v >= 0.0 { zero - h } else { zero },
                w: (w - 1.0).max(0.5),
                h,
                negative: *v < 0.0,
                tip: tip(d, *v),
            }
        })
        .collect();
    Chart {
        title,
        bars,
        max: fmt(max),
        min: fmt(min),
        width: CHART_W as usize,
    }
}

async fn overview(
    State(state): State<Arc<AdminState>>,
    Extension(viewer): Extension<Viewer>,
    RawQuery(q): RawQuery,
) -> Response {
    let p = ViewParams::parse(q.as_deref());
    page!(
        state,
        async {
            let scope = api::scope(&state, &p).await?;
            let summary = query::summary(&state.store, &scope).await?;
            let mut charts = Vec::new();
            for m in &summary.money {
                let cur = m.currency.clone();
                let c2 = cur.clone();
                charts.push(chart(
                    format!("Net revenue per day, {cur}"),
                    &summary.daily,
                    |d| d.net_micros.get(&cur).copied().unwrap_or(0) as f64 / 1e6,
                    |d, v| format!("{}: {v:.2} {c2}", d.day),
                    |v| format!("{v:.0}"),
                ));
            }
            charts.push(chart(
                "Refund rate per day (refunds ÷ orders of the day)".into(),
                &summary.daily,
                |d| d.refund_rate.unwrap_or(0.0),
                |d, v| {
                    format!(
                        "{}: {:.1} % ({} refunds, {} orders)",
                        d.day,
                        v * 100.0,
                        d.refunds,
                        d.orders
                    )
                },
                |v| format!("{:.0} %", v * 100.0),
            ));
            let recent: Vec<LiveItem> = state
                .store
                .recent_notifications(15, scope.account.as_deref())
                .await?
                .iter()
                .map(LiveItem::of_stored)
                .collect();
            let ctx = frame(&state, &viewer, "overview", &p).await;
            Ok::<_, ViewError>(state.templates.render(
                "overview.html",
                context! { ..ctx, ..context! { summary, charts, recent } },
            ))
        }
        .await
    )
}

async fn breakdown_page(
    state: Arc<AdminState>,
    viewer: Viewer,
    p: ViewParams,
    page: &str,
    by: String,
) -> Response {
    page!(
        state,
        async {
            let (scope, rows) = api::rows(&state, &p, &by).await?;
            let ctx = frame(&state, &viewer, page, &p).await;
            let sort = p.get(&p.sort).unwrap_or("net").to_owned();
            Ok::<_, ViewError>(state.templates.render(
                "breakdown.html",
                context! { ..ctx, ..context! {
                    rows, by, sort, descending => p.descending(), sorts => SORTS,
                    parameters => TRACKING_PARAMETERS, immature => scope.immature(),
                    refund_window => query::REFUND_WINDOW_DAYS,
                }},
            ))
        }
        .await
    )
}

/// The Products and Affiliates pages: a breakdown by a fixed dimension.
async fn fixed_breakdown(
    State(state): State<Arc<AdminState>>,
    Extension(viewer): Extension<Viewer>,
    RawQuery(q): RawQuery,
    page: &'static str,
    by: &'static str,
) -> Response {
    breakdown_page(
        state,
        viewer,
        ViewParams::parse(q.as_deref()),
        page,
        by.into(),
    )
    .await
}

async fn tracking(
    State(state): State<Arc<AdminState>>,
    Extension(viewer): Extension<Viewer>,
    RawQuery(q): RawQuery,
) -> Response {
    let p = ViewParams::parse(q.as_deref());
    match api::dimension(&p, "tid") {
        Ok(by) => breakdown_page(state, viewer, p, "tracking", by).await,
        Err(e) => error_page(&state, e),
    }
}

async fn compare(
    State(state): State<Arc<AdminState>>,
    Extension(viewer): Extension<Viewer>,
    RawQuery(q): RawQuery,
) -> Response {
    let p = ViewParams::parse(q.as_deref());
    page!(state, async {
        let (_, by, compared) = api::compared(&state, &p).await?;
        let ctx = frame(&state, &viewer, "compare", &p).await;
        Ok::<_, ViewError>(state.templates.render(
            "compare.html",
            context! { ..ctx, ..context! { by, compared, values => p.values.clone(), parameters => TRACKING_PARAMETERS } },
        ))
    }
    .await)
}

async fn subscriptions(
    State(state): State<Arc<AdminState>>,
    Extension(viewer): Extension<Viewer>,
    RawQuery(q): RawQuery,
) -> Response {
    let p = ViewParams::parse(q.as_deref());
    page!(
        state,
        async {
            let scope = api::scope(&state, &p).await?;
            let subs = query::subscriptions(&state.store, &scope).await?;
            let ctx = frame(&state, &viewer, "subscriptions", &p).await;
            Ok::<_, ViewError>(state.templates.render(
                "subscriptions.html",
                context! { ..ctx, ..context! { subs } },
            ))
        }
        .await
    )
}

async fn notifications(
    State(state): State<Arc<AdminState>>,
    Extension(viewer): Extension<Viewer>,
    RawQuery(q): RawQuery,
) -> Response {
    let p = ViewParams::parse(q.as_deref());
    page!(
        state,
        async {
            let rows = api::listed(&state, &p).await?;
            let older = (rows.len() as i64 == api::PAGE)
                .then(|| rows.last().map(|r| r.id))
                .flatten();
            let filter_query = {
                let mut filter = form_urlencoded::Serializer::new(String::new());
                for (k, v) in [
                    ("receipt", &p.receipt),
                    ("type", &p.kind),
                    ("dim", &p.dim),
                    ("value", &p.value),
                ] {
                    if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
                        filter.append_pair(k, v);
                    }
                }
                filter.finish()
            };
            let ctx = frame(&state, &viewer, "notifications", &p).await;
            Ok::<_, ViewError>(state.templates.render(
                "notifications.html",
                context! { ..ctx, ..context! {
                    rows, older, filter_query,
                    receipt => p.receipt.clone().unwrap_or_default(),
                    kind => p.kind.clone().unwrap_or_default(),
                    dim => p.dim.clone().unwrap_or_default(),
                    value => p.value.clone().unwrap_or_default(),
                }},
            ))
        }
        .await
    )
}

async fn notification(
    State(state): State<Arc<AdminState>>,
    Extension(viewer): Extension<Viewer>,
    Path(id): Path<i64>,
) -> Response {
    page!(state, async {
        let n = state
            .store
            .notification(id)
            .await?
            .ok_or_else(|| ViewError::NotFound(format!("no notification {id}")))?;
        let facts = Facts::of(&n.notification);
        let runs = state.store.runs_of_notification(id).await?;
        let ctx = frame(&state, &viewer, "notifications", &ViewParams::default()).await;
        let x = &n.notification;
        Ok::<_, ViewError>(state.templates.render(
            "notification.html",
            context! { ..ctx, ..context! {
                id => n.id, account => n.account.as_str(), form => n.form.as_str(),
                receipt => x.receipt.as_str(), kind => x.transaction_type.as_str(), role => x.role.as_str(),
                time => x.transaction_time.to_rfc3339(), received => n.received_at.to_rfc3339(),
                vendor => x.vendor.clone(), affiliate => x.affiliate.clone(),
                amount => x.total_account_amount.map(|d| d.to_string()), order_amount => x.total_order_amount.map(|d| d.to_string()),
                currency => x.currency.clone(), version => x.version.clone(), attempt => x.attempt_count,
                duplicates => n.duplicates, refund_risk => n.refund_risk, source_ip => n.source_ip.map(|ip| ip.to_string()),
                email => masked_email(&x.payload), payload_bytes => x.payload.len(),
                lines => facts.lines.iter().map(|l| context! { item_no => l.item_no.clone(), title => l.title.clone(), recurring => l.recurring, amount => crate::report::facts::money_text(l.micros) }).collect::<Vec<_>>(),
                tids => facts.tids.clone(), tracking => facts.tracking.clone(),
                payment_method => facts.payment_method.clone(), country => facts.country.clone(),
                sale_receipt => facts.sale_receipt.clone(),
                runs,
            }},
        ))
    }
    .await)
}

async fn alerts(
    State(state): State<Arc<AdminState>>,
    Extension(viewer): Extension<Viewer>,
    RawQuery(q): RawQuery,
) -> Response {
    let p = ViewParams::parse(q.as_deref());
    let firing = p.get(&p.kind) == Some("firing");
    page!(
        state,
        async {
            let alerts: Vec<Value> = state
                .store
                .list_alerts(firing, api::ALERTS_SHOWN)
                .await?
                .into_iter()
                .map(|a| {
                    let details: Value = serde_json::from_str(&a.details).unwrap_or_default();
                    context! { ..Value::from_serialize(&a), ..context! { details } }
                })
                .collect();
            let ctx = frame(&state, &viewer, "alerts", &p).await;
            Ok::<_, ViewError>(state.templates.render(
                "alerts.html",
                context! { ..ctx, ..context! { alerts, firing } },
            ))
        }
        .await
    )
}

async fn actions(
    State(state): State<Arc<AdminState>>,
    Extension(viewer): Extension<Viewer>,
    RawQuery(q): RawQuery,
) -> Response {
    let p = ViewParams::parse(q.as_deref());
    let status = p.get(&p.kind).and_then(|s| match s {
        "pending" => Some(RunStatus::Pending),
        "running" => Some(RunStatus::Running),
        "done" => Some(RunStatus::Done),
        "failed" => Some(RunStatus::Failed),
        _ => None,
    });
    page!(state, async {
        let runs = state.store.list_runs(status, None, 100).await?;
        let counts = state.store.run_counts().await?;
        let ctx = frame(&state, &viewer, "actions", &p).await;
        Ok::<_, ViewError>(state.templates.render(
            "actions.html",
            context! { ..ctx, ..context! { runs, counts, status => status.map(RunStatus::as_str) } },
        ))
    }
    .await)
}

#[derive(Debug, Deserialize)]
pub struct RetryForm {
    csrf: String,
    id: i64,
}

/// `POST /actions/retry`: the run is due again now, with a fresh budget.
async fn retry(
    State(state): State<Arc<AdminState>>,
    Extension(viewer): Extension<Viewer>,
    Form(f): Form<RetryForm>,
) -> Response {
    if let Some(refused) = csrf_refusal(&state, &viewer, &f.csrf) {
        return refused;
    }
    let now = Utc::now();
    match state.store.retry_runs(&[f.id], now).await {
        Ok(_) => {
            if let (Some(d), Ok(Some(run))) = (&state.dispatcher, state.store.run(f.id).await) {
                d.notify(&[NewRun {
                    id: run.id,
                    action: run.action.into(),
                    claimed_until: None,
                }]);
            }
            tracing::info!(run = f.id, "admin: run retried from the dashboard");
            Redirect::to("/actions").into_response()
        }
        Err(e) => error_page(&state, e.into()),
    }
}

/// The 403 for a form whose CSRF token is not the viewer's; `None` when it is.
pub(super) fn csrf_refusal(state: &AdminState, viewer: &Viewer, given: &str) -> Option<Response> {
    let ok = viewer.person
        && match &viewer.session {
            Some(s) => state.auth.csrf_ok(s, given),
            None => state.auth.open() && given == state.auth.open_csrf(),
        };
    (!ok).then(|| {
        (
            StatusCode::FORBIDDEN,
            "bad or missing CSRF token; reload the page\n",
        )
            .into_response()
    })
}

async fn rejected(
    State(state): State<Arc<AdminState>>,
    Extension(viewer): Extension<Viewer>,
    RawQuery(q): RawQuery,
) -> Response {
    let p = ViewParams::parse(q.as_deref());
    let done = p.get(&p.value).map(str::to_owned);
    page!(state, async {
        let rows = state.store.rejected_after(0, 500).await?;
        let rows: Vec<Value> = rows
            .iter()
            .rev()
            .map(|r| context! {
                id => r.id, received => r.received_at.to_rfc3339(), source_ip => r.source_ip.clone(),
                account_hint => r.account_hint.clone(), reason => r.reason.clone(), bytes => r.body.len(),
            })
            .collect();
        let ctx = frame(&state, &viewer, "rejected", &p).await;
        Ok::<_, ViewError>(state.templates.render("rejected.html", context! { ..ctx, ..context! { rows, done } }))
    }
    .await)
}

#[derive(Debug, Deserialize)]
pub struct CsrfForm {
    csrf: String,
}

/// `POST /rejected/reprocess`: every kept post through the pipeline again
/// with the keys in force.
async fn reprocess(
    State(state): State<Arc<AdminState>>,
    Extension(viewer): Extension<Viewer>,
    Form(f): Form<CsrfForm>,
) -> Response {
    if let Some(refused) = csrf_refusal(&state, &viewer, &f.csrf) {
        return refused;
    }
    match crate::rejected::reprocess_with(state.live.clone(), &state.store).await {
        Ok(r) => {
            tracing::info!(
                stored = r.stored,
                duplicates = r.duplicates,
                still_rejected = r.still_rejected,
                "admin: rejected posts reprocessed from the dashboard"
            );
            let done = format!(
                "{} stored, {} already stored, {} still rejected",
                r.stored, r.duplicates, r.still_rejected
            );
            Redirect::to(&format!("/rejected?value={}", encode(&done))).into_response()
        }
        Err(e) => {
            tracing::warn!(error = %e, "admin: reprocessing failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "reprocessing failed; see the log\n",
            )
                .into_response()
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct LoginForm {
    password: String,
    #[serde(default)]
    next: String,
}

/// Only local paths: `next` must not send a logged-in user elsewhere.
fn local(next: &str) -> &str {
    if next.starts_with('/') && !next.starts_with("//") && !next.contains('\\') {
        next
    } else {
        "/"
    }
}

pub async fn login_page(State(state): State<Arc<AdminState>>, RawQuery(q): RawQuery) -> Response {
    let next = form_urlencoded::parse(q.unwrap_or_default().as_bytes())
        .find(|(k, _)| k == "next")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| "/".into());
    state.templates.render(
        "login.html",
        context! { next => local(&next), error => None::<String>, has_login => state.auth.has_login(), page => "login" },
    )
}

pub async fn login(
    State(state): State<Arc<AdminState>>,
    connect: ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
    let ip = client_ip(Some(&connect));
    let next = local(&f.next).to_owned();
    let fail = |status: StatusCode, error: String| {
        let mut r = state.templates.render(
            "login.html",
            context! { next, error, has_login => state.auth.has_login(), page => "login" },
        );
        *r.status_mut() = status;
        r
    };
    if !super::same_origin(&headers) {
        return fail(StatusCode::FORBIDDEN, "cross-origin login refused".into());
    }
    if let Some(wait) = state.auth.locked_out(ip) {
        tracing::warn!(%ip, "admin: login refused: too many failures from this address");
        return fail(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "too many failed logins from your address; try again in {} minutes",
                wait.as_secs() / 60 + 1
            ),
        );
    }
    if state.auth.open() || !state.auth.login(ip, &f.password).await {
        tracing::warn!(%ip, "admin: failed login");
        return fail(StatusCode::UNAUTHORIZED, "wrong password".into());
    }
    tracing::info!(%ip, "admin: logged in");
    (
        [(header::SET_COOKIE, state.auth.new_session())],
        Redirect::to(&next),
    )
        .into_response()
}

pub async fn logout(
    State(state): State<Arc<AdminState>>,
    headers: HeaderMap,
    Form(f): Form<CsrfForm>,
) -> Response {
    match state.auth.session(&headers) {
        Some(s) if state.auth.csrf_ok(&s, &f.csrf) && super::same_origin(&headers) => (
            [(header::SET_COOKIE, state.auth.end_session(&s))],
            Redirect::to("/login"),
        )
            .into_response(),
        Some(_) => (StatusCode::FORBIDDEN, "bad or missing CSRF token\n").into_response(),
        None => Redirect::to("/login").into_response(),
    }
}

const CSS: &str = include_str!("assets/app.css");
const LIVE_JS: &str = include_str!("assets/live.js");
const FAVICON: &str = include_str!("assets/favicon.svg");

pub async fn asset(Path(file): Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "app.css" => (CSS, "text/css; charset=utf-8"),
        "live.js" => (LIVE_JS, "text/javascript; charset=utf-8"),
        "favicon.svg" => (FAVICON, "image/svg+xml"),
        _ => return (StatusCode::NOT_FOUND, "no such asset\n").into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        body,
    )
        .into_response()
}
