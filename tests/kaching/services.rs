//! Stand-ins for the APIs the `http` presets call, written from each
//! service's published API reference (independently of kaching's presets):
//! each route checks the method, path, authentication and body shape the
//! service documents and answers as the service does, 400 with the reason
//! when something is off. Every request is recorded with its verdict.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use base64::Engine as _;
use serde_json::{json, Value};
use sha2::Digest as _;

pub const SLACK_PATH: &str = "/services/T0001/B0001/slacktoken";
pub const DISCORD_PATH: &str = "/api/webhooks/1234567890/discordtoken";
pub const HUBSPOT_TOKEN: &str = "pat-na1-hubspot-token";
pub const MAILCHIMP_KEY: &str = "0123456789abcdef-us21";
pub const SENDGRID_KEY: &str = "SG.sendgrid-key";
pub const FB_TOKEN: &str = "EAAB-fb-token";
pub const GA4_SECRET: &str = "ga4-api-secret";

/// One request a stand-in received.
#[derive(Debug, Clone)]
pub struct Call {
    pub service: &'static str,
    pub path: String,
    pub query: HashMap<String, String>,
    pub body: Value,
    /// Empty when the request had the documented shape.
    pub problems: Vec<String>,
}

#[derive(Default)]
struct Shared {
    calls: Mutex<Vec<Call>>,
}

pub struct Services {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Services {
    pub async fn start() -> Services {
        let shared = Arc::new(Shared::default());
        let app = axum::Router::new()
            .route(SLACK_PATH, post(slack))
            .route(DISCORD_PATH, post(discord))
            .route("/crm/v3/objects/contacts/batch/upsert", post(hubspot))
            .route("/3.0/lists/{list}/members/{hash}", put(mailchimp))
            .route("/v3/mail/send", post(sendgrid))
            .route("/{version}/{pixel}/events", post(facebook))
            .route("/mp/collect", post(ga4))
            .route("/postback", get(postback))
            // Not a service: an API that echoes the request in its error, and
            // one that redirects elsewhere.
            .route("/echo", get(echo))
            .route("/elsewhere", post(elsewhere))
            .with_state(shared.clone());
        let addr = crate::target::serve(app).await;
        Services { addr, shared }
    }

    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn calls(&self, service: &str) -> Vec<Call> {
        let all = self.shared.calls.lock().unwrap();
        all.iter()
            .filter(|c| c.service == service)
            .cloned()
            .collect()
    }
}

/// Records the call; answers `ok` (the service's own success) or 400.
fn verdict(
    shared: &Shared,
    service: &'static str,
    path: String,
    query: HashMap<String, String>,
    body: Value,
    problems: Vec<String>,
    ok: Response,
) -> Response {
    let bad = problems.join("; ");
    shared.calls.lock().unwrap().push(Call {
        service,
        path,
        query,
        body,
        problems: problems.clone(),
    });
    if problems.is_empty() {
        ok
    } else {
        (StatusCode::BAD_REQUEST, bad).into_response()
    }
}

fn json_body(headers: &HeaderMap, body: &Bytes, problems: &mut Vec<String>) -> Value {
    let ct = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct.starts_with("application/json") {
        problems.push(format!("content-type is `{ct}`"));
    }
    serde_json::from_slice(body).unwrap_or_else(|e| {
        problems.push(format!("not JSON: {e}"));
        Value::Null
    })
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

fn check(problems: &mut Vec<String>, ok: bool, what: &str) {
    if !ok {
        problems.push(what.to_owned());
    }
}

fn is_string(v: &Value) -> bool {
    v.as_str().is_some_and(|s| !s.is_empty())
}

/// Slack incoming webhook: `{"text": …}`; 200 `ok`.
async fn slack(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let mut p = Vec::new();
    let v = json_body(&headers, &body, &mut p);
    check(
        &mut p,
        is_string(&v["text"]),
        "text is required (invalid_payload)",
    );
    verdict(
        &s,
        "slack",
        SLACK_PATH.into(),
        HashMap::new(),
        v,
        p,
        "ok".into_response(),
    )
}

/// Discord execute webhook: content (≤ 2000 characters) or embeds; 204.
async fn discord(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let mut p = Vec::new();
    let v = json_body(&headers, &body, &mut p);
    let content = v["content"].as_str().unwrap_or("");
    check(
        &mut p,
        !content.is_empty() || v["embeds"].is_array(),
        "content or embeds",
    );
    check(
        &mut p,
        content.chars().count() <= 2000,
        "content over 2000 characters",
    );
    let ok = StatusCode::NO_CONTENT.into_response();
    verdict(&s, "discord", DISCORD_PATH.into(), HashMap::new(), v, p, ok)
}

/// HubSpot CRM v3 batch upsert: Bearer token; inputs[] of {idProperty, id,
/// properties} with string property values; 200 with results.
async fn hubspot(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let mut p = Vec::new();
    check(
        &mut p,
        header(&headers, "authorization") == format!("Bearer {HUBSPOT_TOKEN}"),
        "Authorization: Bearer <private app token>",
    );
    let v = json_body(&headers, &body, &mut p);
    match v["inputs"].as_array() {
        Some(inputs) if !inputs.is_empty() => {
            for i in inputs {
                check(&mut p, is_string(&i["id"]), "inputs[].id");
                check(&mut p, i["properties"].is_object(), "inputs[].properties");
                if let Some(props) = i["properties"].as_object() {
                    check(
                        &mut p,
                        props.values().all(Value::is_string),
                        "property values are strings",
                    );
                }
                if i["idProperty"] == "email" {
                    check(
                        &mut p,
                        i["properties"]["email"] == i["id"],
                        "properties.email equals id",
                    );
                }
            }
        }
        _ => p.push("inputs is required".into()),
    }
    let ok = Json200(json!({"status": "COMPLETE", "results": [{"id": "501", "new": true}]}));
    verdict(
        &s,
        "hubspot",
        "/crm/v3/objects/contacts/batch/upsert".into(),
        HashMap::new(),
        v,
        p,
        ok.into_response(),
    )
}

/// Mailchimp: PUT /3.0/lists/{list}/members/{MD5 of the lowercased email},
/// HTTP Basic with the API key as password; email_address, status_if_new.
async fn mailchimp(
    State(s): State<Arc<Shared>>,
    Path((list, hash)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut p = Vec::new();
    let auth = header(&headers, "authorization");
    let password = auth
        .strip_prefix("Basic ")
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|pair| pair.split_once(':').map(|(_, pw)| pw.to_owned()));
    check(
        &mut p,
        password.as_deref() == Some(MAILCHIMP_KEY),
        "Basic anystring:<api key>",
    );
    let v = json_body(&headers, &body, &mut p);
    let email = v["email_address"].as_str().unwrap_or("");
    check(&mut p, !email.is_empty(), "email_address is required");
    check(
        &mut p,
        hash == hex::encode(md5::Md5::digest(email.to_lowercase().as_bytes())),
        "subscriber_hash is the MD5 of the lowercased email",
    );
    check(
        &mut p,
        [
            "subscribed",
            "unsubscribed",
            "cleaned",
            "pending",
            "transactional",
        ]
        .contains(&v["status_if_new"].as_str().unwrap_or("")),
        "status_if_new",
    );
    let ok = Json200(json!({"id": hash, "email_address": email, "status": "subscribed"}));
    verdict(
        &s,
        "mailchimp",
        format!("/3.0/lists/{list}/members/{hash}"),
        HashMap::new(),
        v,
        p,
        ok.into_response(),
    )
}

/// SendGrid v3 mail/send: Bearer; personalizations[].to[].email, from.email,
/// subject, content[] of {type, value}; 202 with an empty body.
async fn sendgrid(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let mut p = Vec::new();
    check(
        &mut p,
        header(&headers, "authorization") == format!("Bearer {SENDGRID_KEY}"),
        "Authorization: Bearer <api key>",
    );
    let v = json_body(&headers, &body, &mut p);
    check(
        &mut p,
        is_string(&v["personalizations"][0]["to"][0]["email"]),
        "personalizations[0].to[0].email",
    );
    check(&mut p, is_string(&v["from"]["email"]), "from.email");
    check(&mut p, is_string(&v["subject"]), "subject");
    check(
        &mut p,
        is_string(&v["content"][0]["type"]) && is_string(&v["content"][0]["value"]),
        "content[0].type and value",
    );
    verdict(
        &s,
        "sendgrid",
        "/v3/mail/send".into(),
        HashMap::new(),
        v,
        p,
        StatusCode::ACCEPTED.into_response(),
    )
}

/// Meta Conversions API: POST /{version}/{pixel}/events?access_token=…;
/// data[] with event_name, event_time (Unix seconds, within 7 days),
/// action_source, user_data.em (SHA-256 hex), custom_data value and currency.
async fn facebook(
    State(s): State<Arc<Shared>>,
    Path((version, pixel)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut p = Vec::new();
    check(&mut p, version.starts_with('v'), "a Graph API version");
    check(
        &mut p,
        q.get("access_token").map(String::as_str) == Some(FB_TOKEN),
        "access_token",
    );
    let v = json_body(&headers, &body, &mut p);
    let now = chrono::Utc::now().timestamp();
    match v["data"].as_array() {
        Some(events) if !events.is_empty() => {
            for e in events {
                check(&mut p, is_string(&e["event_name"]), "event_name");
                let t = e["event_time"].as_i64().unwrap_or(0);
                check(
                    &mut p,
                    (now - 7 * 86_400..=now + 60).contains(&t),
                    "event_time: Unix seconds within 7 days",
                );
                check(
                    &mut p,
                    [
                        "email",
                        "website",
                        "app",
                        "phone_call",
                        "chat",
                        "physical_store",
                        "system_generated",
                        "business_messaging",
                        "other",
                    ]
                    .contains(&e["action_source"].as_str().unwrap_or("")),
                    "action_source",
                );
                let hashed = |v: &Value| {
                    v.as_str().is_some_and(|h| {
                        h.len() == 64
                            && h.bytes()
                                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                    })
                };
                check(
                    &mut p,
                    e["user_data"]["em"]
                        .as_array()
                        .is_some_and(|a| !a.is_empty() && a.iter().all(hashed)),
                    "user_data.em: SHA-256 hex of the normalised email",
                );
                check(
                    &mut p,
                    e["custom_data"]["value"].is_number(),
                    "custom_data.value is a number",
                );
                check(
                    &mut p,
                    e["custom_data"]["currency"]
                        .as_str()
                        .is_some_and(|c| c.len() == 3),
                    "custom_data.currency",
                );
            }
        }
        _ => p.push("data is required".into()),
    }
    let ok = Json200(json!({"events_received": 1, "messages": [], "fbtrace_id": "AbC"}));
    verdict(
        &s,
        "facebook",
        format!("/{version}/{pixel}/events"),
        q,
        v,
        p,
        ok.into_response(),
    )
}

/// GA4 Measurement Protocol: ?measurement_id=G-…&api_secret=…; client_id,
/// events[] with name and params (transaction_id, numeric value, currency); 204.
async fn ga4(
    State(s): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut p = Vec::new();
    check(
        &mut p,
        q.get("measurement_id").is_some_and(|m| m.starts_with("G-")),
        "measurement_id",
    );
    check(
        &mut p,
        q.get("api_secret").map(String::as_str) == Some(GA4_SECRET),
        "api_secret",
    );
    let v = json_body(&headers, &body, &mut p);
    check(&mut p, is_string(&v["client_id"]), "client_id is required");
    match v["events"].as_array() {
        Some(events) if !events.is_empty() && events.len() <= 25 => {
            for e in events {
                let name = e["name"].as_str().unwrap_or("");
                check(
                    &mut p,
                    !name.is_empty() && name.len() <= 40,
                    "events[].name",
                );
                if name == "purchase" || name == "refund" {
                    check(
                        &mut p,
                        is_string(&e["params"]["transaction_id"]),
                        "params.transaction_id",
                    );
                    check(
                        &mut p,
                        e["params"]["value"].as_f64().is_some_and(|x| x >= 0.0),
                        "params.value: a number",
                    );
                    check(
                        &mut p,
                        is_string(&e["params"]["currency"]),
                        "params.currency with value",
                    );
                }
            }
        }
        _ => p.push("events: 1 to 25".into()),
    }
    verdict(
        &s,
        "ga4",
        "/mp/collect".into(),
        q,
        v,
        p,
        StatusCode::NO_CONTENT.into_response(),
    )
}

/// A tracker's S2S postback: GET with the click id.
async fn postback(
    State(s): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let mut p = Vec::new();
    check(
        &mut p,
        q.get("clickid").is_some_and(|c| !c.is_empty()),
        "clickid",
    );
    verdict(
        &s,
        "postback",
        "/postback".into(),
        q,
        Value::Null,
        p,
        "OK".into_response(),
    )
}

async fn echo(uri: axum::http::Uri) -> Response {
    (StatusCode::BAD_REQUEST, format!("bad request: GET {uri}")).into_response()
}

async fn elsewhere() -> Response {
    (StatusCode::FOUND, [("location", "http://192.0.2.1/stolen")]).into_response()
}

struct Json200(Value);

impl IntoResponse for Json200 {
    fn into_response(self) -> Response {
        (StatusCode::OK, axum::Json(self.0)).into_response()
    }
}

/// `sha256` of a text, as lowercase hex (for the tests' own checks).
pub fn sha256_hex(text: &str) -> String {
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}
