//! The dashboard's JSON/CSV API and pages over real HTTP on the admin
//! listener, against both backends: exact per-currency sums checked
//! against sums computed here from the posted notifications, both refund
//! rates and their intervals, filters, bad input, authentication, CSRF and
//! escaping of hostile text.

use std::collections::BTreeMap;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde_json::Value;

use crate::on_both_backends;
use crate::support::{envelope, Backend, TestApp, KEY, OTHER_KEY};

pub const TOKEN: &str = "dashboard-api-token-0123";

/// One notification of a test history.
#[derive(Clone, Debug)]
pub struct Post {
    pub receipt: &'static str,
    pub kind: &'static str,
    /// Transaction time, UTC.
    pub time: &'static str,
    pub amount: &'static str,
    pub currency: &'static str,
    pub item: &'static str,
    pub title: &'static str,
    pub tid: &'static str,
    pub source: &'static str,
}

impl Post {
    pub fn plaintext(&self, attempt: u32) -> String {
        serde_json::json!({
            "transactionTime": self.time,
            "receipt": self.receipt,
            "transactionType": self.kind,
            "vendor": "acmevendor",
            "affiliate": "aff1",
            "role": "VENDOR",
            "totalAccountAmount": Value::from_str(self.amount).unwrap(),
            "currency": self.currency,
            "paymentMethod": "VISA",
            "trackingCodes": [self.tid],
            "lineItems": [{ "itemNo": self.item, "productTitle": self.title, "recurring": false,
                            "accountAmount": Value::from_str(self.amount).unwrap() }],
            "customer": { "billing": { "firstName": "Zoë", "email": "zoe@example.com",
                                       "address": { "country": "SE" } } },
            "affiliateTrackingParameters": { "trafficSource": self.source, "extclid": "click-1" },
            "version": 8.0,
            "attemptCount": attempt,
        })
        .to_string()
    }
}

/// Amounts whose binary-float sum is wrong (0.1 + 0.2 + 0.7 ≠ 1.0 in f64),
/// a large one, two currencies, a refund and a chargeback of earlier sales,
/// and a refund dated in the range of a sale made before it.
pub fn history() -> Vec<Post> {
    let p = |receipt, kind, time, amount, currency, item, title, tid, source| Post {
        receipt,
        kind,
        time,
        amount,
        currency,
        item,
        title,
        tid,
        source,
    };
    vec![
        p(
            "OLDSALE1",
            "SALE",
            "2026-10-20T10:00:00Z",
            "5.00",
            "USD",
            "1",
            "Guide",
            "fb-1",
            "facebook",
        ),
        p(
            "EXACT001",
            "SALE",
            "2026-11-02T10:00:00Z",
            "0.10",
            "USD",
            "1",
            "Guide",
            "fb-1",
            "facebook",
        ),
        p(
            "EXACT002",
            "SALE",
            "2026-11-02T11:00:00Z",
            "0.20",
            "USD",
            "1",
            "Guide",
            "fb-2",
            "facebook",
        ),
        p(
            "EXACT003",
            "SALE",
            "2026-11-03T09:30:00Z",
            "0.70",
            "USD",
            "2",
            "Course",
            "fb-1",
            "google",
        ),
        p(
            "BIGSALE1",
            "SALE",
            "2026-11-05T23:59:59Z",
            "1234567.89",
            "USD",
            "2",
            "Course",
            "gg-1",
            "google",
        ),
        p(
            "EUROSAL1",
            "SALE",
            "2026-11-06T00:00:00Z",
            "19.99",
            "EUR",
            "3",
            "Kurs",
            "fb-1",
            "facebook",
        ),
        p(
            "EXACT002",
            "RFND",
            "2026-11-10T08:00:00Z",
            "-0.20",
            "USD",
            "1",
            "Guide",
            "fb-2",
            "facebook",
        ),
        p(
            "EXACT001",
            "CGBK",
            "2026-11-12T08:00:00Z",
            "-0.10",
            "USD",
            "1",
            "Guide",
            "fb-1",
            "facebook",
        ),
        p(
            "OLDSALE1",
            "RFND",
            "2026-11-14T08:00:00Z",
            "-5.00",
            "USD",
            "1",
            "Guide",
            "fb-1",
            "facebook",
        ),
        p(
            "TESTONE1",
            "TEST_SALE",
            "2026-11-15T08:00:00Z",
            "99.00",
            "USD",
            "1",
            "Guide",
            "fb-1",
            "facebook",
        ),
    ]
}

pub const FROM: &str = "2026-11-01";
pub const TO: &str = "2026-11-30";

/// Posts `posts` under `KEY` (each first delivery, and a ClickBank retry of
/// the first three), asserting every one is acknowledged.
pub async fn post_all(app: &TestApp, posts: &[Post]) {
    for (i, p) in posts.iter().enumerate() {
        let (status, _) = app.post_ins(envelope(KEY, &p.plaintext(1))).await;
        assert_eq!(status, 200, "{p:?}");
        if i < 3 {
            let (status, _) = app.post_ins(envelope(KEY, &p.plaintext(2))).await;
            assert_eq!(status, 200, "retry of {p:?}");
        }
    }
}

/// The sums the API must show, computed here from the posts: exact
/// decimals per currency, for transactions dated in [FROM, TO].
#[derive(Debug, Default)]
pub struct Expected {
    pub gross: BTreeMap<String, Decimal>,
    pub refunds: BTreeMap<String, Decimal>,
    pub chargebacks: BTreeMap<String, Decimal>,
    pub orders: u64,
    pub refund_count: u64,
    pub cohort_refunds: u64,
}

pub fn expected(posts: &[Post]) -> Expected {
    let mut e = Expected::default();
    let in_range = |p: &Post| &p.time[..10] >= FROM && &p.time[..10] <= TO;
    for p in posts.iter().filter(|p| in_range(p)) {
        let amount = Decimal::from_str(p.amount).unwrap();
        let cur = p.currency.to_owned();
        match p.kind {
            "SALE" | "BILL" => {
                *e.gross.entry(cur).or_default() += amount;
                e.orders += 1;
                // Refunded later, matched by receipt.
                if posts
                    .iter()
                    .any(|r| r.kind == "RFND" && r.receipt == p.receipt)
                {
                    e.cohort_refunds += 1;
                }
            }
            "RFND" => {
                *e.refunds.entry(cur).or_default() += amount.abs();
                e.refund_count += 1;
            }
            "CGBK" => *e.chargebacks.entry(cur).or_default() += amount.abs(),
            _ => {}
        }
    }
    e
}

/// The 95 % Wilson interval, written here from the formula.
pub fn wilson(k: f64, n: f64) -> (f64, f64) {
    let z = 1.959_963_984_540_054_f64;
    let p = k / n;
    let centre = (p + z * z / (2.0 * n)) / (1.0 + z * z / n);
    let half = z / (1.0 + z * z / n) * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt();
    (centre - half, centre + half)
}

pub async fn get(app: &TestApp, path: &str, token: Option<&str>) -> (u16, String) {
    let mut r = app.client.get(format!("{}{path}", app.admin()));
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let r = r.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

pub async fn get_json(app: &TestApp, path: &str) -> Value {
    let (status, body) = get(app, path, Some(TOKEN)).await;
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

pub fn dec(v: &Value) -> Decimal {
    Decimal::from_str(
        v.as_str()
            .unwrap_or_else(|| panic!("a decimal string: {v}")),
    )
    .unwrap()
}

async fn with_token(backend: Backend) -> Option<(TestApp, tempfile::TempDir)> {
    let secrets = tempfile::tempdir().unwrap();
    let token_file = secrets.path().join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let app = TestApp::spawn(backend, |s| s.admin.token_file = Some(token_file.clone())).await?;
    Some((app, secrets))
}

async fn figures_are_exact_per_currency_and_match_the_posts(backend: Backend) {
    let Some((app, _secrets)) = with_token(backend).await else {
        return;
    };
    let posts = history();
    post_all(&app, &posts).await;
    let e = expected(&posts);
    // The test has power: the same amounts summed as floats are wrong.
    let (a, b): (f64, f64) = ("0.10".parse().unwrap(), "0.20".parse().unwrap());
    assert_ne!(a + b, 0.3);

    let s = get_json(&app, &format!("/api/v1/summary?from={FROM}&to={TO}")).await;
    let money: BTreeMap<String, &Value> = s["money"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["currency"].as_str().unwrap().to_owned(), m))
        .collect();
    assert_eq!(
        money.keys().collect::<Vec<_>>(),
        ["EUR", "USD"],
        "never summed across currencies"
    );
    for (cur, m) in &money {
        let gross = e.gross.get(cur).copied().unwrap_or_default();
        let refunds = e.refunds.get(cur).copied().unwrap_or_default();
        let chargebacks = e.chargebacks.get(cur).copied().unwrap_or_default();
        assert_eq!(dec(&m["gross"]), gross, "{cur} gross");
        assert_eq!(dec(&m["refunds"]), refunds, "{cur} refunds");
        assert_eq!(dec(&m["chargebacks"]), chargebacks, "{cur} chargebacks");
        assert_eq!(dec(&m["net"]), gross - refunds - chargebacks, "{cur} net");
    }
    assert_eq!(money["USD"]["gross"], "1234568.89");
    assert_eq!(money["USD"]["net"], "1234563.59");
    let counts = &s["counts"];
    assert_eq!(
        counts["sales"], 5,
        "retries and the test sale are not counted: {counts}"
    );
    assert_eq!(counts["orders"].as_u64().unwrap(), e.orders);
    assert_eq!(counts["refunds"].as_u64().unwrap(), e.refund_count);
    assert_eq!(counts["chargebacks"], 1);

    // Period: 2 refunds dated in November ÷ 5 orders dated in November.
    // Cohort: of November's 5 orders, 1 (EXACT002) has been refunded; the
    // refund of October's sale does not count for November's cohort.
    let rates = &s["refund_rate"];
    let period = &rates["period"];
    assert_eq!(
        (period["events"].as_u64(), period["trials"].as_u64()),
        (Some(2), Some(5))
    );
    let (low, high) = wilson(2.0, 5.0);
    assert!(
        (period["low"].as_f64().unwrap() - low).abs() < 1e-9,
        "{period}"
    );
    assert!(
        (period["high"].as_f64().unwrap() - high).abs() < 1e-9,
        "{period}"
    );
    let cohort = &rates["cohort"];
    assert_eq!(cohort["events"].as_u64().unwrap(), e.cohort_refunds);
    assert_eq!(cohort["trials"].as_u64().unwrap(), e.orders);
    assert_eq!(s["daily"].as_array().unwrap().len(), 30);
    let nov2 = &s["daily"][1];
    assert_eq!(
        (nov2["day"].as_str(), nov2["net"]["USD"].as_str()),
        (Some("2026-11-02"), Some("0.30"))
    );

    // Products: per item and currency, the line amounts.
    let p = get_json(
        &app,
        &format!("/api/v1/products?from={FROM}&to={TO}&sort=value&dir=asc"),
    )
    .await;
    let rows = p["rows"].as_array().unwrap();
    let guide = rows.iter().find(|r| r["value"] == "1").unwrap();
    assert_eq!(guide["label"], "Guide");
    assert_eq!(guide["money"]["gross"], "0.30");
    assert_eq!(
        guide["money"]["net"], "-5.00",
        "0.30 − 5.20 refunded − 0.10 charged back"
    );
    let course = rows.iter().find(|r| r["value"] == "2").unwrap();
    assert_eq!(course["money"]["gross"], "1234568.59");

    // Tracking by a v8 parameter, and its CSV (parsed by a CSV reader).
    let t = get_json(
        &app,
        &format!("/api/v1/tracking?by=trafficSource&from={FROM}&to={TO}"),
    )
    .await;
    let google = t["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["value"] == "google")
        .unwrap();
    assert_eq!(
        (
            google["counts"]["sales"].as_i64(),
            google["money"]["net"].as_str()
        ),
        (Some(2), Some("1234568.59"))
    );
    let (status, csv_text) = get(
        &app,
        &format!("/api/v1/tracking?by=trafficSource&from={FROM}&to={TO}&format=csv"),
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, 200);
    let mut reader = csv::Reader::from_reader(csv_text.as_bytes());
    let header: Vec<String> = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_owned)
        .collect();
    let records: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(records.len(), t["rows"].as_array().unwrap().len());
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    let google_csv = records
        .iter()
        .find(|r| &r[col("value")] == "google")
        .unwrap();
    assert_eq!(&google_csv[col("net")], "1234568.59");
    assert_eq!(&google_csv[col("currency")], "USD");

    let tid = get_json(
        &app,
        &format!("/api/v1/tracking?by=tid&from={FROM}&to={TO}"),
    )
    .await;
    let fb2 = tid["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["value"] == "fb-2")
        .unwrap();
    assert_eq!(fb2["refund_rate"]["period"]["rate"], 1.0);
    let (low, _) = wilson(1.0, 1.0);
    assert!((fb2["refund_rate"]["period"]["low"].as_f64().unwrap() - low).abs() < 1e-9);

    // Filters and edges.
    let other = get_json(
        &app,
        &format!("/api/v1/summary?account=affil&from={FROM}&to={TO}"),
    )
    .await;
    assert_eq!(other["money"], serde_json::json!([]));
    assert_eq!(other["counts"]["sales"], 0);
    let acme = get_json(
        &app,
        &format!("/api/v1/summary?account=acme&from={FROM}&to={TO}"),
    )
    .await;
    assert_eq!(acme["money"], s["money"]);
    let empty = get_json(&app, "/api/v1/summary?from=2020-01-01&to=2020-01-31").await;
    assert_eq!(
        (
            empty["money"].as_array().unwrap().len(),
            empty["counts"]["orders"].as_i64()
        ),
        (0, Some(0))
    );
    let decade = get_json(&app, "/api/v1/summary?from=2016-12-01&to=2026-11-30").await;
    assert_eq!(decade["daily"].as_array().unwrap().len(), 3652);
    assert_eq!(decade["counts"]["sales"], 6);
    for (path, status, needle) in [
        ("/api/v1/summary?from=2026-11-31", 400, "YYYY-MM-DD"),
        ("/api/v1/summary?from=yesterday", 400, "YYYY-MM-DD"),
        (
            "/api/v1/summary?from=2026-11-10&to=2026-11-01",
            400,
            "after",
        ),
        ("/api/v1/tracking?by=email", 400, "not a breakdown"),
        ("/api/v1/summary?account=nobody", 404, "nobody"),
        ("/api/v1/compare?by=tid&v=fb-1", 400, "two or more"),
    ] {
        let (got, body) = get(&app, path, Some(TOKEN)).await;
        assert_eq!(got, status, "{path}: {body}");
        let error: Value = serde_json::from_str(&body).unwrap();
        assert!(
            error["error"].as_str().unwrap().contains(needle),
            "{path}: {body}"
        );
    }
    // No credential, a wrong one: 401.
    for token in [None, Some("wrong-token-wrong-token")] {
        let (status, _) = get(&app, "/api/v1/summary", token).await;
        assert_eq!(status, 401);
    }

    // The notification list: by breakdown value, by receipt (with its refund), by type.
    let by_tid = get_json(&app, "/api/v1/notifications?dim=tid&value=fb-2").await;
    let receipts: Vec<&str> = by_tid["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["receipt"].as_str().unwrap())
        .collect();
    assert_eq!(
        receipts,
        ["EXACT002", "EXACT002"],
        "the sale and its refund"
    );
    let by_receipt = get_json(&app, "/api/v1/notifications?receipt=OLDSALE1&type=RFND").await;
    assert_eq!(by_receipt["notifications"].as_array().unwrap().len(), 1);

    // Compare two tracking codes: too few orders for a verdict.
    let c = get_json(
        &app,
        &format!("/api/v1/compare?by=tid&v=fb-1&v=fb-2&from={FROM}&to={TO}"),
    )
    .await;
    assert_eq!(
        c["rows"].as_array().unwrap().len(),
        3,
        "fb-1 in USD and EUR, fb-2"
    );
    assert_eq!(c["comparison"]["significant"], false);
    app.stop().await;
}

/// A refund spike big enough to be significant gets a verdict naming the test.
async fn a_significant_difference_gets_a_plain_verdict(backend: Backend) {
    let Some((app, _secrets)) = with_token(backend).await else {
        return;
    };
    let receipts: Vec<String> = (0..60).map(|i| format!("CMP{i:05}")).collect();
    for (i, r) in receipts.iter().enumerate() {
        let (tid, refunded) = if i < 30 {
            ("good", i < 1)
        } else {
            ("bad", i < 45)
        };
        let time = format!("2026-11-{:02}T10:00:00Z", 1 + i % 20);
        let sale = serde_json::json!({
            "transactionTime": time, "receipt": r, "transactionType": "SALE", "role": "VENDOR",
            "totalAccountAmount": 10.00, "currency": "USD", "trackingCodes": [tid], "version": 8.0,
        });
        assert_eq!(app.post_ins(envelope(KEY, &sale.to_string())).await.0, 200);
        if refunded {
            let mut refund = sale.clone();
            refund["transactionType"] = "RFND".into();
            refund["transactionTime"] = "2026-11-25T10:00:00Z".into();
            refund["totalAccountAmount"] = Value::from_str("-10.00").unwrap();
            assert_eq!(
                app.post_ins(envelope(KEY, &refund.to_string())).await.0,
                200
            );
        }
    }
    let c = get_json(
        &app,
        &format!("/api/v1/compare?by=tid&v=good&v=bad&from={FROM}&to={TO}"),
    )
    .await;
    let verdict = &c["comparison"];
    assert_eq!(verdict["significant"], true, "{verdict}");
    let summary = verdict["summary"].as_str().unwrap();
    assert!(
        summary.starts_with("good has a lower refund rate than bad"),
        "{summary}"
    );
    assert!(summary.contains("Fisher's exact test"), "{summary}");
    app.stop().await;
}

on_both_backends!(
    figures_are_exact_per_currency_and_match_the_posts,
    a_significant_difference_gets_a_plain_verdict,
);

const PASSWORD: &str = "correct horse battery staple";

/// A client that keeps cookies and does not follow redirects.
fn browser_like() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn session_cookie(r: &reqwest::Response) -> Option<String> {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with("kaching_session="))
        .map(str::to_owned)
}

fn csrf_of(html: &str) -> String {
    let at = html.find("name=\"csrf\" value=\"").expect("a CSRF field") + 19;
    html[at..at + 64].to_owned()
}

/// Login with an argon2id hash from `kaching admin hash-password`'s
/// function, the session cookie's attributes, CSRF, logout, the rate limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_sessions_csrf_and_the_failed_login_limit() {
    let hash = kaching::admin::hash_password(PASSWORD).unwrap();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    let Some(app) = TestApp::spawn(Backend::Sqlite, |s| {
        s.admin.password_hash = Some(hash.clone())
    })
    .await
    else {
        return;
    };
    let admin = app.admin().to_owned();
    let c = browser_like();
    // Pages redirect to the login; the API answers 401.
    let r = c
        .get(format!("{admin}/products?range=7d"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(
        r.headers()["location"],
        "/login?next=%2Fproducts%3Frange%3D7d"
    );
    assert_eq!(
        c.get(format!("{admin}/api/v1/summary"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        c.get(format!("{admin}/metrics"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    // The login page carries the CSP: no inline script or style allowed.
    let r = c.get(format!("{admin}/login")).send().await.unwrap();
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );

    let login = |password: &'static str| {
        let c = c.clone();
        let admin = admin.clone();
        async move {
            c.post(format!("{admin}/login"))
                .form(&[("password", password), ("next", "/subscriptions")])
                .send()
                .await
                .unwrap()
        }
    };
    let wrong = login("wrong").await;
    assert_eq!(wrong.status(), 401);
    assert!(session_cookie(&wrong).is_none());
    let ok = login(PASSWORD).await;
    assert_eq!(ok.status(), 303);
    assert_eq!(ok.headers()["location"], "/subscriptions");
    let cookie = session_cookie(&ok).unwrap();
    for attr in ["HttpOnly", "SameSite=Strict", "Max-Age=43200", "Path=/"] {
        assert!(cookie.contains(attr), "{cookie}");
    }
    assert!(
        !cookie.contains("Secure"),
        "plain HTTP on loopback: {cookie}"
    );
    let pair = cookie.split(';').next().unwrap().to_owned();
    let with = |path: &str| {
        c.get(format!("{admin}{path}"))
            .header("cookie", pair.clone())
    };
    let page = with("/actions").send().await.unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    let csrf = csrf_of(&html);
    assert_eq!(
        with("/api/v1/summary").send().await.unwrap().status(),
        200,
        "a session may use the API"
    );
    // A tampered cookie is no session.
    let tampered = pair.replacen("kaching_session=", "kaching_session=9", 1);
    let r = c
        .get(format!("{admin}/"))
        .header("cookie", tampered)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);

    // State changes need the session's CSRF token, and a same-origin Origin.
    let post = |path: &str, csrf: &str, origin: Option<&str>| {
        let mut r = c
            .post(format!("{admin}{path}"))
            .header("cookie", pair.clone())
            .form(&[("csrf", csrf.to_owned()), ("id", "1".to_owned())]);
        if let Some(o) = origin {
            r = r.header("origin", o);
        }
        r.send()
    };
    assert_eq!(
        post("/actions/retry", "0".repeat(64).as_str(), None)
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(
        post("/rejected/reprocess", "", None)
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(
        post("/actions/retry", &csrf, Some("https://evil.example"))
            .await
            .unwrap()
            .status(),
        403,
        "a cross-origin post"
    );
    assert_eq!(
        post("/actions/retry", &csrf, Some(&admin))
            .await
            .unwrap()
            .status(),
        303
    );
    // Logout revokes the session.
    let out = post("/logout", &csrf, None).await.unwrap();
    assert_eq!(out.status(), 303);
    assert!(session_cookie(&out).unwrap().contains("Max-Age=0"));
    assert_eq!(
        with("/").send().await.unwrap().status(),
        303,
        "the old cookie is dead"
    );

    // Five failures from one address, then even the right password waits.
    for _ in 0..5 {
        assert_eq!(login("wrong").await.status(), 401);
    }
    let limited = login(PASSWORD).await;
    assert_eq!(limited.status(), 429);
    assert!(limited
        .text()
        .await
        .unwrap()
        .contains("too many failed logins"));
    app.stop().await;
}

/// Product titles, tracking codes and vendor variables holding markup,
/// quotes and template syntax are text on every page, defused in CSV and
/// exact in the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_text_is_escaped_on_pages_csv_and_api() {
    let Some((app, _secrets)) = with_token(Backend::Sqlite).await else {
        return;
    };
    let title = r#"<script>alert("t")</script> 'q' {{ 7*7 }}"#;
    let tid = r#"=HYPERLINK("http://evil")"#;
    let pt = serde_json::json!({
        "transactionTime": "2026-11-20T10:00:00Z", "receipt": "EVIL0001", "transactionType": "SALE",
        "role": "VENDOR", "affiliate": "<b>aff</b>", "totalAccountAmount": 1.00, "currency": "USD",
        "trackingCodes": [tid], "version": 8.0,
        "lineItems": [{ "itemNo": "<i>9</i>", "productTitle": title, "accountAmount": 1.00 }],
        "vendorVariables": { "v1": "<img src=x onerror=alert(1)>", "v2": "{% raw %}" },
        "affiliateTrackingParameters": { "campaign": "@SUM(A1)", "creative": "\"><svg onload=alert(1)>" },
    });
    assert_eq!(app.post_ins(envelope(KEY, &pt.to_string())).await.0, 200);
    let id = app.rows().await[0].id;
    let q = "from=2026-11-01&to=2026-11-30";
    for path in [
        format!("/?{q}"),
        format!("/products?{q}"),
        format!("/affiliates?{q}"),
        format!("/tracking?by=tid&{q}"),
        format!("/tracking?by=campaign&{q}"),
        format!("/tracking?by=creative&{q}"),
        format!("/compare?by=tid&v={}&v=x&{q}", encode(tid)),
        "/notifications".to_owned(),
        format!("/notifications/{id}"),
    ] {
        let r = browser_like()
            .get(format!("{}{path}", app.admin()))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        // A bearer token is for scripts: the pages want a person.
        assert_eq!(r.status(), 303, "{path}");
    }
    app.stop().await;

    // Open (loopback, no credential): the pages render.
    let Some(app) = TestApp::spawn(Backend::Sqlite, |_| {}).await else {
        return;
    };
    assert_eq!(app.post_ins(envelope(KEY, &pt.to_string())).await.0, 200);
    let id = app.rows().await[0].id;
    for path in [
        format!("/?{q}"),
        format!("/products?{q}"),
        format!("/affiliates?{q}"),
        format!("/tracking?by=tid&{q}"),
        format!("/tracking?by=campaign&{q}"),
        format!("/tracking?by=creative&{q}"),
        format!("/compare?by=tid&v={}&v=x&{q}", encode(tid)),
        "/notifications".to_owned(),
        format!("/notifications/{id}"),
    ] {
        let (status, html) = get(&app, &path, None).await;
        assert_eq!(status, 200, "{path}");
        for raw in [
            "<script>alert",
            "<b>aff</b>",
            "<i>9</i>",
            "<svg onload",
            "<img src=x",
        ] {
            assert!(!html.contains(raw), "{path} shows {raw:?} unescaped");
        }
    }
    let (_, html) = get(&app, &format!("/products?{q}"), None).await;
    assert!(
        html.contains("&lt;script&gt;alert(&quot;t&quot;)&lt;"),
        "{html}"
    );
    assert!(
        html.contains("{{ 7*7 }}"),
        "template syntax in data is text, not evaluated"
    );
    let (_, csv_text) = get(
        &app,
        &format!("/api/v1/tracking?by=tid&{q}&format=csv"),
        None,
    )
    .await;
    let mut reader = csv::Reader::from_reader(csv_text.as_bytes());
    let row = reader.records().next().unwrap().unwrap();
    assert_eq!(
        &row[0],
        format!("'{tid}"),
        "a formula is defused: {csv_text}"
    );
    let (_, csv_text) = get(
        &app,
        &format!("/api/v1/tracking?by=campaign&{q}&format=csv"),
        None,
    )
    .await;
    assert!(csv_text.contains("'@SUM(A1)"), "{csv_text}");
    let (_, json) = get(&app, &format!("/api/v1/products?{q}"), None).await;
    let v: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["rows"][0]["label"], title, "the API gives the exact text");
    app.stop().await;
}

pub fn encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The second account's key authenticates only its own history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_are_reported_apart() {
    let Some((app, _secrets)) = with_token(Backend::Sqlite).await else {
        return;
    };
    let posts = history();
    post_all(&app, &posts[..3]).await;
    let sale = posts[4].plaintext(1);
    assert_eq!(app.post_ins(envelope(OTHER_KEY, &sale)).await.0, 200);
    let acme = get_json(
        &app,
        &format!("/api/v1/summary?account=acme&from={FROM}&to={TO}"),
    )
    .await;
    let affil = get_json(
        &app,
        &format!("/api/v1/summary?account=affil&from={FROM}&to={TO}"),
    )
    .await;
    assert_eq!(acme["money"][0]["gross"], "0.30");
    assert_eq!(affil["money"][0]["gross"], "1234567.89");
    app.stop().await;
}

/// Postgres commits ids out of order (several writers): a notification
/// whose transaction commits after a later id was counted is still
/// counted, by the projector's verifying pass, within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_committed_out_of_id_order_is_still_counted() {
    use sqlx::Connection;
    let Some((app, _secrets)) = with_token(Backend::Postgres).await else {
        return;
    };
    let url = app.pg.as_ref().unwrap().url.clone();
    let mut slow = sqlx::PgConnection::connect(&url).await.unwrap();
    let payload = serde_json::json!({
        "transactionTime": "2026-11-20T10:00:00Z", "receipt": "SLOW0001", "transactionType": "SALE",
        "role": "VENDOR", "totalAccountAmount": 7.00, "currency": "USD", "version": 8.0,
    })
    .to_string();
    // An open transaction holds the lower id…
    sqlx::query("BEGIN").execute(&mut slow).await.unwrap();
    sqlx::query(
        "INSERT INTO notifications (account, role, receipt, transaction_type, transaction_time, \
             total_account_amount, currency, version, attempt_count, form, payload, received_at, last_seen_at) \
         VALUES ('acme', 'VENDOR', 'SLOW0001', 'SALE', '2026-11-20T10:00:00Z', 7.00, 'USD', '8.0', 1, \
             'envelope', $1, now(), now())",
    )
    .bind(&payload)
    .execute(&mut slow)
    .await
    .unwrap();
    // …while a later one commits and is counted.
    post_all(&app, &history()[1..2]).await;
    let summary = || async {
        let s = get_json(&app, &format!("/api/v1/summary?from={FROM}&to={TO}")).await;
        (
            s["counts"]["sales"].as_i64().unwrap(),
            s["money"][0]["gross"].as_str().unwrap().to_owned(),
        )
    };
    assert_eq!(summary().await, (1, "0.10".to_owned()));
    sqlx::query("COMMIT").execute(&mut slow).await.unwrap();
    crate::target::eventually(
        std::time::Duration::from_secs(30),
        "the late commit is counted",
        || async { (summary().await == (2, "7.10".to_owned())).then_some(()) },
    )
    .await;
    app.stop().await;
}
