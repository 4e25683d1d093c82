//! A stand-in for ClickBank's Orders API (`/rest/1.3/orders2`), written
//! from ClickBank's "Orders API" article and what other clients report of
//! the real one:
//! - `Authorization: API-…` (the current key) or `DEV-…:API-…` (legacy);
//!   anything else is 403.
//! - More than `per_second` requests in a second: 403 (ClickBank's
//!   over-limit answer is a 403, not a 429).
//! - `count`: a bare number, `text/plain`.
//! - `list`: 100 orders a page, the next page asked for with a `Page: n`
//!   header; 206 while more remain, 200 on the last page; an empty result
//!   is an empty 200. A page of one order has `orderData` as an object, not
//!   an array; an order of one line item has `lineItemData` as an object;
//!   an absent affiliate is `{"@nil": "true"}`; scalars are strings.
//! - Days are ClickBank's, US Pacific.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::America::Los_Angeles;
use serde_json::{json, Value};

pub const API_KEY: &str = "API-0123456789abcdef0123456789abcdef01234567";
pub const LEGACY_KEY: &str = "DEV-ABCDEF0123456789:API-0123456789abcdef";

/// One order as the stand-in holds it.
#[derive(Debug, Clone)]
pub struct Order {
    pub receipt: String,
    pub kind: &'static str,
    pub time: DateTime<Utc>,
    pub amount: &'static str,
    /// Two line items instead of one (`lineItemData` as an array).
    pub cart: bool,
}

#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    pub page: u32,
    pub status: u16,
}

struct Shared {
    orders: Mutex<Vec<Order>>,
    calls: Mutex<Vec<Call>>,
    per_second: usize,
    recent: Mutex<Vec<Instant>>,
}

pub struct OrdersApi {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl OrdersApi {
    pub async fn start(orders: Vec<Order>, per_second: usize) -> OrdersApi {
        let shared = Arc::new(Shared {
            orders: Mutex::new(orders),
            calls: Mutex::new(Vec::new()),
            per_second,
            recent: Mutex::new(Vec::new()),
        });
        let app = axum::Router::new()
            .route("/rest/1.3/orders2/count", axum::routing::get(count))
            .route("/rest/1.3/orders2/list", axum::routing::get(list))
            .with_state(shared.clone());
        let addr = crate::target::serve(app).await;
        OrdersApi { addr, shared }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn calls(&self) -> Vec<Call> {
        self.shared.calls.lock().unwrap().clone()
    }
}

/// The day of `t` at ClickBank.
pub fn day(t: DateTime<Utc>) -> NaiveDate {
    t.with_timezone(&Los_Angeles).date_naive()
}

/// The shared checks: the key, the rate, the dates. The matching orders.
fn admit(
    s: &Shared,
    headers: &HeaderMap,
    q: &HashMap<String, String>,
    method: &str,
    page: u32,
) -> Result<Vec<Order>, (StatusCode, &'static str)> {
    let refuse = |status: StatusCode, why: &'static str| {
        s.calls.lock().unwrap().push(Call {
            method: method.into(),
            page,
            status: status.as_u16(),
        });
        Err((status, why))
    };
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if auth != API_KEY && auth != LEGACY_KEY {
        return refuse(StatusCode::FORBIDDEN, "Forbidden");
    }
    {
        let mut recent = s.recent.lock().unwrap();
        recent.retain(|t| t.elapsed().as_millis() < 1000);
        if recent.len() >= s.per_second {
            drop(recent);
            return refuse(StatusCode::FORBIDDEN, "Rate limit exceeded");
        }
        recent.push(Instant::now());
    }
    let date = |k: &str| {
        q.get(k)
            .and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
    };
    let (Some(from), Some(to)) = (date("startDate"), date("endDate")) else {
        return refuse(StatusCode::BAD_REQUEST, "startDate and endDate, yyyy-mm-dd");
    };
    let kind = q.get("type").cloned();
    let mut found: Vec<Order> = s
        .orders
        .lock()
        .unwrap()
        .iter()
        .filter(|o| (from..=to).contains(&day(o.time)))
        .filter(|o| kind.as_deref().is_none_or(|k| k == o.kind))
        .cloned()
        .collect();
    found.sort_by_key(|o| (o.time, o.receipt.clone()));
    Ok(found)
}

async fn count(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    match admit(&s, &headers, &q, "count", 1) {
        Ok(found) => {
            s.calls.lock().unwrap().push(Call {
                method: "count".into(),
                page: 1,
                status: 200,
            });
            ([("content-type", "text/plain")], found.len().to_string()).into_response()
        }
        Err(r) => r.into_response(),
    }
}

async fn list(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let page: u32 = headers
        .get("page")
        .and_then(|v| v.to_str().ok())
        .and_then(|p| p.parse().ok())
        .unwrap_or(1);
    let found = match admit(&s, &headers, &q, "list", page) {
        Ok(f) => f,
        Err(r) => return r.into_response(),
    };
    let start = (page as usize - 1) * 100;
    let rows: Vec<Value> = found.iter().skip(start).take(100).map(shape).collect();
    let more = found.len() > start + 100;
    let status = if more {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    s.calls.lock().unwrap().push(Call {
        method: "list".into(),
        page,
        status: status.as_u16(),
    });
    let body = match rows.len() {
        0 => String::new(),
        1 => json!({ "orderData": rows[0] }).to_string(),
        _ => json!({ "orderData": rows }).to_string(),
    };
    (status, [("content-type", "application/json")], body).into_response()
}

/// An order in the Orders API's JSON.
fn shape(o: &Order) -> Value {
    let item = |no: &str, amount: &str| {
        json!({"itemNo": no, "productTitle": "Widget", "recurring": "false", "shippable": "false",
               "customerAmount": amount, "accountAmount": amount, "quantity": "1", "lineItemType": "ORIGINAL"})
    };
    let items = if o.cart {
        json!([item("1", o.amount), item("2", "0.00")])
    } else {
        item("1", o.amount)
    };
    json!({
        "transactionTime": o.time.with_timezone(&Los_Angeles).to_rfc3339(),
        "receipt": o.receipt,
        "trackingId": {"@nil": "true"},
        "paytmentMethod": "VISA",
        "transactionType": o.kind,
        "totalOrderAmount": o.amount,
        "totalShippingAmount": "0.00",
        "totalTaxAmount": "0.00",
        "vendor": "acmevendor",
        "affiliate": {"@nil": "true"},
        "country": "SE",
        "lastName": "Ångström",
        "firstName": "Zoë",
        "currency": "USD",
        "email": "zoe@example.com",
        "role": "VENDOR",
        "fullName": "Zoë Ångström",
        "lineItemData": items,
    })
}
