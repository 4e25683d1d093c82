//! The JSON API, `/api/v1/…`, and its CSV exports (`?format=csv`): the
//! same figures as the pages, from the same functions of
//! [`crate::report::query`]. Money is decimal strings per currency.

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use super::csv::{self, Cell};
use super::params::{ParamError, ViewParams};
use super::AdminState;
use crate::report::query::{self, Row, Scope};
use crate::report::stats::Rate;
use crate::store::{ListedNotification, NotificationFilter, StoreError};

pub fn routes() -> Router<Arc<AdminState>> {
    Router::new()
        .route("/api/v1/summary", get(summary))
        .route("/api/v1/products", get(products))
        .route("/api/v1/affiliates", get(affiliates))
        .route("/api/v1/tracking", get(tracking))
        .route("/api/v1/compare", get(compare))
        .route("/api/v1/subscriptions", get(subscriptions))
        .route("/api/v1/notifications", get(notifications))
        .route("/api/v1/alerts", get(alerts))
}

/// `GET /api/v1/alerts[?type=firing]`: the latest alerts, newest first.
async fn alerts(
    State(state): State<Arc<AdminState>>,
    RawQuery(q): RawQuery,
) -> Result<Response, ViewError> {
    let p = ViewParams::parse(q.as_deref());
    let firing = p.get(&p.kind) == Some("firing");
    let alerts = state.store.list_alerts(firing, ALERTS_SHOWN).await?;
    Ok(Json(serde_json::json!({ "alerts": alerts })).into_response())
}

/// Alerts a listing shows.
pub const ALERTS_SHOWN: i64 = 200;

/// Why a view cannot answer.
#[derive(Debug)]
pub enum ViewError {
    Param(ParamError),
    Store(StoreError),
    NotFound(String),
}

impl From<ParamError> for ViewError {
    fn from(e: ParamError) -> Self {
        ViewError::Param(e)
    }
}
impl From<StoreError> for ViewError {
    fn from(e: StoreError) -> Self {
        ViewError::Store(e)
    }
}

impl ViewError {
    pub fn status(&self) -> StatusCode {
        match self {
            ViewError::Param(ParamError::Bad(_)) => StatusCode::BAD_REQUEST,
            ViewError::Param(ParamError::UnknownAccount(_)) | ViewError::NotFound(_) => {
                StatusCode::NOT_FOUND
            }
            ViewError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub fn message(&self) -> String {
        match self {
            ViewError::Param(ParamError::Bad(m)) | ViewError::NotFound(m) => m.clone(),
            ViewError::Param(ParamError::UnknownAccount(a)) => format!("no account named {a:?}"),
            ViewError::Store(e) => {
                tracing::warn!(error = %e, "admin: a view could not read the store");
                "the database cannot be read right now; try again shortly".to_owned()
            }
        }
    }
}

impl IntoResponse for ViewError {
    fn into_response(self) -> Response {
        (
            self.status(),
            Json(serde_json::json!({ "error": self.message() })),
        )
            .into_response()
    }
}

/// The accounts a view may name: the configured ones and any with stored
/// notifications (an account removed from the configuration keeps its history).
pub async fn accounts(state: &AdminState) -> Result<Vec<String>, StoreError> {
    let mut accounts: Vec<String> = state
        .live
        .load()
        .accounts
        .iter()
        .map(|a| a.keys.name.to_string())
        .collect();
    for a in state.store.report_accounts().await? {
        if !accounts.contains(&a) {
            accounts.push(a);
        }
    }
    Ok(accounts)
}

/// The scope of `p`, after projecting what is pending.
pub async fn scope(state: &AdminState, p: &ViewParams) -> Result<Scope, ViewError> {
    state.reports.catch_up().await?;
    Ok(p.scope.scope(&accounts(state).await?)?)
}

/// The breakdown `by` of a request: products, affiliates, or `?by=`.
pub fn dimension(p: &ViewParams, default: &'static str) -> Result<String, ViewError> {
    let by = p.get(&p.by).unwrap_or(default);
    if !query::is_dimension(by) {
        return Err(ParamError::Bad(format!(
            "by={by:?} is not a breakdown: use product, affiliate, tid or one of {}",
            crate::report::facts::TRACKING_PARAMETERS.join(", ")
        ))
        .into());
    }
    Ok(by.to_owned())
}

pub async fn rows(
    state: &AdminState,
    p: &ViewParams,
    by: &str,
) -> Result<(Scope, Vec<Row>), ViewError> {
    let scope = scope(state, p).await?;
    let sort = p.get(&p.sort).unwrap_or("net");
    let rows = query::breakdown(&state.store, &scope, by, None, sort, p.descending()).await?;
    Ok((scope, rows))
}

fn csv_response(name: &str, body: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}.csv\""),
            ),
        ],
        body,
    )
        .into_response()
}

fn rate_cells(r: &Rate) -> [Cell; 3] {
    let f = |x: Option<f64>| Cell::Figure(x.map(|x| format!("{x:.4}")).unwrap_or_default());
    [f(r.rate), f(r.low), f(r.high)]
}

fn breakdown_csv(name: &str, rows: &[Row]) -> Response {
    let header = [
        "value",
        "label",
        "currency",
        "sales",
        "rebills",
        "refunds",
        "chargebacks",
        "gross",
        "refunded",
        "charged_back",
        "net",
        "average_order",
        "refund_rate",
        "refund_rate_low",
        "refund_rate_high",
        "cohort_refund_rate",
        "cohort_refund_rate_low",
        "cohort_refund_rate_high",
    ];
    let body = csv::write(
        &header,
        rows.iter().map(|r| {
            let mut cells = vec![
                Cell::Text(r.value.clone()),
                Cell::Text(r.label.clone()),
                Cell::Text(r.currency.clone()),
                Cell::Figure(r.counts.sales.to_string()),
                Cell::Figure(r.counts.rebills.to_string()),
                Cell::Figure(r.counts.refunds.to_string()),
                Cell::Figure(r.counts.chargebacks.to_string()),
                Cell::Figure(r.money.gross.clone()),
                Cell::Figure(r.money.refunds.clone()),
                Cell::Figure(r.money.chargebacks.clone()),
                Cell::Figure(r.money.net.clone()),
                Cell::Figure(r.money.average_order.clone().unwrap_or_default()),
            ];
            cells.extend(rate_cells(&r.refund_rate.period));
            cells.extend(rate_cells(&r.refund_rate.cohort));
            cells
        }),
    );
    csv_response(name, body)
}

async fn breakdown(state: &AdminState, p: ViewParams, by: &str) -> Result<Response, ViewError> {
    let (scope, rows) = rows(state, &p, by).await?;
    if p.csv() {
        return Ok(breakdown_csv(by, &rows));
    }
    Ok(Json(serde_json::json!({
        "account": scope.account, "from": scope.from, "to": scope.to, "by": by, "rows": rows,
    }))
    .into_response())
}

async fn summary(
    State(state): State<Arc<AdminState>>,
    RawQuery(q): RawQuery,
) -> Result<Response, ViewError> {
    let p = ViewParams::parse(q.as_deref());
    let scope = scope(&state, &p).await?;
    let s = query::summary(&state.store, &scope).await?;
    if p.csv() {
        let body = csv::write(
            &["day", "currency", "net", "orders", "refunds", "refund_rate"],
            s.daily.iter().flat_map(|d| {
                let rate = d.refund_rate.map(|r| format!("{r:.4}")).unwrap_or_default();
                let nets: Vec<(String, String)> = if d.net.is_empty() {
                    vec![(String::new(), "0.00".to_owned())]
                } else {
                    d.net.iter().map(|(c, n)| (c.clone(), n.clone())).collect()
                };
                nets.into_iter().map(move |(currency, net)| {
                    vec![
                        Cell::Figure(d.day.to_string()),
                        Cell::Text(currency),
                        Cell::Figure(net),
                        Cell::Figure(d.orders.to_string()),
                        Cell::Figure(d.refunds.to_string()),
                        Cell::Figure(rate.clone()),
                    ]
                })
            }),
        );
        return Ok(csv_response("summary", body));
    }
    Ok(Json(s).into_response())
}

async fn products(
    State(state): State<Arc<AdminState>>,
    RawQuery(q): RawQuery,
) -> Result<Response, ViewError> {
    breakdown(&state, ViewParams::parse(q.as_deref()), "product").await
}

async fn affiliates(
    State(state): State<Arc<AdminState>>,
    RawQuery(q): RawQuery,
) -> Result<Response, ViewError> {
    breakdown(&state, ViewParams::parse(q.as_deref()), "affiliate").await
}

async fn tracking(
    State(state): State<Arc<AdminState>>,
    RawQuery(q): RawQuery,
) -> Result<Response, ViewError> {
    let p = ViewParams::parse(q.as_deref());
    let by = dimension(&p, "tid")?;
    breakdown(&state, p, &by).await
}

pub async fn compared(
    state: &AdminState,
    p: &ViewParams,
) -> Result<(Scope, String, query::Compared), ViewError> {
    let by = dimension(p, "tid")?;
    let scope = scope(state, p).await?;
    let c = query::compare(&state.store, &scope, &by, &p.values).await?;
    Ok((scope, by, c))
}

async fn compare(
    State(state): State<Arc<AdminState>>,
    RawQuery(q): RawQuery,
) -> Result<Response, ViewError> {
    let p = ViewParams::parse(q.as_deref());
    if p.values.len() < 2 {
        return Err(
            ParamError::Bad("compare needs two or more values: ?by=tid&v=a&v=b".into()).into(),
        );
    }
    let (scope, by, c) = compared(&state, &p).await?;
    if p.csv() {
        return Ok(breakdown_csv("compare", &c.rows));
    }
    Ok(Json(serde_json::json!({
        "account": scope.account, "from": scope.from, "to": scope.to, "by": by,
        "rows": c.rows, "comparison": c.comparison,
    }))
    .into_response())
}

async fn subscriptions(
    State(state): State<Arc<AdminState>>,
    RawQuery(q): RawQuery,
) -> Result<Response, ViewError> {
    let p = ViewParams::parse(q.as_deref());
    let scope = scope(&state, &p).await?;
    let s = query::subscriptions(&state.store, &scope).await?;
    if p.csv() {
        let body = csv::write(
            &[
                "month",
                "item_no",
                "title",
                "started",
                "active",
                "cancelled",
                "refunded",
                "rebilled_1",
                "rebilled_2",
                "rebilled_3",
                "rebilled_6",
            ],
            s.cohorts.iter().map(|c| {
                let r = &c.row;
                let mut cells = vec![
                    Cell::Figure(r.month.clone()),
                    Cell::Text(r.item_no.clone()),
                    Cell::Text(r.title.clone()),
                    Cell::Figure(r.started.to_string()),
                    Cell::Figure(r.active.to_string()),
                    Cell::Figure(r.cancelled.to_string()),
                    Cell::Figure(r.refunded.to_string()),
                ];
                cells.extend(
                    c.retention
                        .iter()
                        .map(|r| Cell::Figure(r.map(|r| format!("{r:.4}")).unwrap_or_default())),
                );
                cells
            }),
        );
        return Ok(csv_response("subscriptions", body));
    }
    Ok(Json(s).into_response())
}

/// Rows per page of the notification list.
pub const PAGE: i64 = 50;

/// The notification list of `p`: filters by receipt, type, account, range
/// (only when given) and a breakdown value (`dim`/`value`).
pub async fn listed(
    state: &AdminState,
    p: &ViewParams,
) -> Result<Vec<ListedNotification>, ViewError> {
    state.reports.catch_up().await?;
    let accounts = accounts(state).await?;
    let account = p.get(&p.scope.account);
    if let Some(a) = account {
        if !accounts.iter().any(|x| x == a) {
            return Err(ParamError::UnknownAccount(a.to_owned()).into());
        }
    }
    let ranged = p.get(&p.scope.from).is_some()
        || p.get(&p.scope.to).is_some()
        || p.get(&p.scope.range).is_some();
    let scope = if ranged {
        Some(p.scope.scope(&accounts)?)
    } else {
        None
    };
    let dim = match (p.get(&p.dim), p.value.as_deref()) {
        (Some(d), Some(v)) if query::is_dimension(d) => Some((d, v)),
        (Some(d), _) => {
            return Err(
                ParamError::Bad(format!("dim={d:?} needs a value and must be a breakdown")).into(),
            )
        }
        _ => None,
    };
    let before_id = match p.get(&p.before) {
        Some(b) => Some(
            b.parse::<i64>()
                .map_err(|_| ParamError::Bad(format!("before={b:?} is not an id")))?,
        ),
        None => None,
    };
    Ok(state
        .store
        .find_notifications(&NotificationFilter {
            receipt: p.get(&p.receipt),
            kind: p.get(&p.kind),
            account,
            from: scope.as_ref().map(|s| s.from.to_string()),
            to: scope.as_ref().map(|s| s.to.to_string()),
            dim,
            before_id,
            limit: PAGE,
        })
        .await?)
}

async fn notifications(
    State(state): State<Arc<AdminState>>,
    RawQuery(q): RawQuery,
) -> Result<Response, ViewError> {
    let p = ViewParams::parse(q.as_deref());
    let rows = listed(&state, &p).await?;
    Ok(Json(serde_json::json!({ "notifications": rows })).into_response())
}
