//! `kind = "http"` and its presets against stand-ins of the real services
//! ([`crate::services`]), and the outbound safety rules, through the real
//! daemon: a signed notification in, the service's request out.

use std::time::Duration;

use kaching::config::{ActionSettings, RetrySettings};
use kaching::store::RunRow;
use serde_json::Value;

use crate::services::{self, Services};
use crate::support::{envelope, plaintext, Backend, TestApp, KEY};
use crate::target::{eventually, Target};

const WAIT: Duration = Duration::from_secs(20);
const PRODUCT: &str = r#"Widget "Pro" {v2} <!channel> & co"#;

/// A v8-shaped notification: a tracker's click id, a product title that
/// would break naive JSON templating or ping a Slack channel, now (so
/// Facebook accepts its event time).
fn v8(receipt: &str, kind: &str) -> String {
    let time = chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S+00:00")
        .to_string();
    let mut v: Value = serde_json::from_str(&plaintext(receipt, kind, &time, 1)).unwrap();
    v["version"] = serde_json::json!(8.0);
    v["lineItems"][0]["productTitle"] = PRODUCT.into();
    v["affiliateTrackingParameters"] =
        serde_json::json!({"extclid": "clk-abc-123", "affSub1": "fb"});
    v["role"] = "AFFILIATE".into();
    v.to_string()
}

/// The preset as a user would write it, its URL moved to the stand-in
/// (same path), loopback allowed.
fn preset(
    name: &str,
    services: &Services,
    edit: impl FnOnce(&mut ActionSettings),
) -> ActionSettings {
    let base = kaching::actions::http::presets::preset(name).expect("a preset");
    let mut s = ActionSettings {
        name: name.into(),
        kind: "http".into(),
        preset: Some(name.into()),
        allow_private_targets: true,
        timeout_ms: 3_000,
        retry: RetrySettings {
            backoff_ms: 200,
            max_attempts: 2,
            ..Default::default()
        },
        ..Default::default()
    };
    if let Some(url) = base.url {
        // https://api.hubapi.com/crm/… → http://127.0.0.1:port/crm/…
        let rest = url.splitn(4, '/').nth(3).unwrap_or("");
        s.url = Some(format!("{}/{rest}", services.origin()));
    }
    edit(&mut s);
    s
}

fn env(var: &str, value: &str) -> String {
    std::env::set_var(var, value);
    var.to_owned()
}

async fn runs(app: &TestApp) -> Vec<RunRow> {
    app.store.list_runs(None, None, 1000).await.unwrap()
}

async fn finished(app: &TestApp, n: usize) -> Vec<RunRow> {
    eventually(WAIT, "the runs to finish", || async {
        let r = runs(app).await;
        let done = r
            .iter()
            .filter(|r| r.status == "done" || r.status == "failed")
            .count();
        (done >= n).then_some(r)
    })
    .await
}

async fn every_preset_sends_what_its_service_documents(backend: Backend) {
    let svc = Services::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, content: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, format!("{content}\n")).unwrap();
        Some(p)
    };
    let slack_url = file(
        "slack",
        &format!("{}{}", svc.origin(), services::SLACK_PATH),
    );
    let discord_url = file(
        "discord",
        &format!("{}{}", svc.origin(), services::DISCORD_PATH),
    );
    let hubspot = file("hubspot", services::HUBSPOT_TOKEN);
    let mailchimp = file("mailchimp", services::MAILCHIMP_KEY);
    let sendgrid = file("sendgrid", services::SENDGRID_KEY);
    let fb = env("KACHING_TEST_FB_TOKEN", services::FB_TOKEN);
    let ga = env("KACHING_TEST_GA4_SECRET", services::GA4_SECRET);
    let actions = vec![
        preset("slack", &svc, |s| s.url_file = slack_url),
        preset("discord", &svc, |s| s.url_file = discord_url),
        preset("hubspot", &svc, |s| s.bearer_file = hubspot),
        preset("mailchimp", &svc, |s| {
            s.basic_password_file = mailchimp;
            s.vars.insert("dc".into(), "us21".into());
            s.vars.insert("list_id".into(), "a1b2c3".into());
        }),
        preset("sendgrid", &svc, |s| {
            s.bearer_file = sendgrid;
            s.vars.insert("from".into(), "shop@example.com".into());
        }),
        preset("facebook-capi", &svc, |s| {
            s.query_env.insert("access_token".into(), fb);
            s.vars.insert("pixel_id".into(), "1234567890".into());
        }),
        preset("ga4", &svc, |s| {
            s.query_env.insert("api_secret".into(), ga);
            s.vars.insert("measurement_id".into(), "G-TEST123".into());
        }),
        preset("postback", &svc, |s| {
            s.url = Some(format!("{}/postback", svc.origin()))
        }),
    ];
    let Some(app) = TestApp::spawn(backend, |s| s.actions = actions).await else {
        return;
    };
    assert_eq!(
        app.post_ins(envelope(KEY, &v8("PRESET01", "SALE"))).await.0,
        200
    );
    // The refund once the sale's 8 runs are over, so the order is known.
    finished(&app, 8).await;
    assert_eq!(
        app.post_ins(envelope(KEY, &v8("PRESET01", "RFND"))).await.0,
        200
    );

    // A sale: all 8. A refund: Slack, Discord, GA4 and the postback (not a
    // Purchase for Facebook, not a new contact or email).
    let all = finished(&app, 12).await;
    let failed: Vec<_> = all.iter().filter(|r| r.status != "done").collect();
    assert!(failed.is_empty(), "{failed:#?}");
    assert_eq!(all.len(), 12, "{all:#?}");
    for service in [
        "slack",
        "discord",
        "hubspot",
        "mailchimp",
        "sendgrid",
        "facebook",
        "ga4",
        "postback",
    ] {
        for call in svc.calls(service) {
            assert!(
                call.problems.is_empty(),
                "{service}: {:?} in {}",
                call.problems,
                call.body
            );
        }
    }

    let slack = svc.calls("slack");
    assert_eq!(slack.len(), 2);
    let text = slack[0].body["text"].as_str().unwrap();
    assert!(text.starts_with("Sale PRESET01: Widget"), "{text}");
    assert!(
        text.contains("&lt;!channel&gt; &amp; co"),
        "escaped for Slack: {text}"
    );
    assert!(!text.contains("zoe@"), "no personal data in chat: {text}");
    assert!(slack[1].body["text"]
        .as_str()
        .unwrap()
        .starts_with("Refund PRESET01"));

    let discord = svc.calls("discord");
    assert_eq!(discord.len(), 2);
    assert_eq!(
        discord[0].body["allowed_mentions"]["parse"],
        serde_json::json!([])
    );
    assert!(
        discord[0].body["content"]
            .as_str()
            .unwrap()
            .contains(PRODUCT),
        "the title as sent"
    );

    let hub = svc.calls("hubspot");
    assert_eq!(hub.len(), 1);
    let contact = &hub[0].body["inputs"][0];
    assert_eq!(contact["id"], "zoe@example.com");
    assert_eq!(contact["properties"]["firstname"], "Zoë");
    assert_eq!(contact["properties"]["lastname"], "Ångström");

    let chimp = svc.calls("mailchimp");
    assert_eq!(chimp.len(), 1);
    assert!(chimp[0].path.starts_with("/3.0/lists/a1b2c3/members/"));
    assert_eq!(chimp[0].body["merge_fields"]["FNAME"], "Zoë");

    let mail = svc.calls("sendgrid");
    assert_eq!(mail.len(), 1);
    let content = mail[0].body["content"][0]["value"].as_str().unwrap();
    assert!(
        content.contains("Hello Zoë") && content.contains(PRODUCT),
        "{content}"
    );

    let fbc = svc.calls("facebook");
    assert_eq!(fbc.len(), 1, "a refund is not a purchase");
    let e = &fbc[0].body["data"][0];
    assert_eq!(e["event_name"], "Purchase");
    assert_eq!(
        e["user_data"]["em"][0],
        services::sha256_hex("zoe@example.com")
    );
    assert_eq!(e["custom_data"]["value"], serde_json::json!(47));
    assert_eq!(e["custom_data"]["currency"], "USD");
    let id = e["event_id"].as_str().unwrap();
    assert!(
        id.starts_with("evt_") && id.len() == 36,
        "the event id, stable across retries: {id}"
    );
    assert!(
        fbc[0].body.get("test_event_code").is_none(),
        "an unset optional key is left out"
    );
    assert_eq!(fbc[0].path, "/v26.0/1234567890/events");

    let ga = svc.calls("ga4");
    let names: Vec<&str> = ga
        .iter()
        .map(|c| c.body["events"][0]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["purchase", "refund"]);
    assert_eq!(
        ga[1].body["events"][0]["params"]["transaction_id"],
        "PRESET01"
    );
    assert_eq!(ga[0].query["measurement_id"], "G-TEST123");
    assert!(
        ga[0].body.to_string().find("zoe").is_none(),
        "no personal data to GA"
    );

    let pb = svc.calls("postback");
    assert_eq!(pb.len(), 2);
    assert_eq!(pb[0].query["clickid"], "clk-abc-123");
    assert_eq!(pb[0].query["payout"], "37.00");
    assert_eq!(pb[0].query["type"], "SALE");
    assert_eq!(pb[1].query["type"], "RFND");
    app.stop().await;
}

async fn actions_reach_only_public_addresses_unless_allowed(backend: Backend) {
    let target = Target::start("127.0.0.1:0".parse().unwrap()).await;
    let port = target.addr.port();
    let http = |name: &str, url: String| ActionSettings {
        name: name.into(),
        kind: "http".into(),
        url: Some(url),
        json: Some(serde_json::json!({"receipt": "{{ receipt }}"})),
        timeout_ms: 2_000,
        ..Default::default()
    };
    let Some(app) = TestApp::spawn(backend, |s| {
        s.actions = vec![
            http("literal", target.url()),
            http("by-name", format!("http://localhost:{port}/hook")),
            // A template cannot steer a request to the metadata service.
            http(
                "templated",
                "http://{{ vars.host }}/latest/meta-data".into(),
            ),
            ActionSettings {
                name: "webhook".into(),
                kind: "webhook".into(),
                url: Some(target.url()),
                ..Default::default()
            },
            ActionSettings {
                allow_private_targets: true,
                ..http("allowed", target.url())
            },
        ];
        s.actions[2]
            .vars
            .insert("host".into(), "169.254.169.254".into());
    })
    .await
    else {
        return;
    };
    assert_eq!(
        app.post_ins(envelope(KEY, &v8("SAFE0001", "SALE"))).await.0,
        200
    );
    let all = finished(&app, 5).await;
    let by = |name: &str| all.iter().find(|r| r.action == name).unwrap();
    for name in ["literal", "by-name", "templated", "webhook"] {
        let r = by(name);
        assert_eq!(
            r.status, "failed",
            "{name}: refused at once, not retried: {r:?}"
        );
        assert_eq!(r.attempts, 1, "{name}");
        let error = r.last_error.as_deref().unwrap_or("");
        assert!(error.contains("allow_private_targets"), "{name}: {error}");
    }
    assert!(by("by-name")
        .last_error
        .as_deref()
        .unwrap()
        .contains("localhost resolves to"));
    assert_eq!(by("allowed").status, "done");
    let got = target.deliveries();
    assert_eq!(got.len(), 1, "only the allowed action reached loopback");
    assert_eq!(got[0].json()["receipt"], "SAFE0001");
    app.stop().await;
}

async fn a_refused_request_keeps_the_answer_and_a_busy_one_waits(backend: Backend) {
    let target = Target::start("127.0.0.1:0".parse().unwrap()).await;
    let action = ActionSettings {
        name: "crm".into(),
        kind: "http".into(),
        url: Some(target.url()),
        allow_private_targets: true,
        form: Some([("email".to_owned(), "{{ email }}".to_owned())].into()),
        timeout_ms: 2_000,
        retry: RetrySettings {
            backoff_ms: 100,
            ..Default::default()
        },
        ..Default::default()
    };
    let Some(app) = TestApp::spawn(backend, |s| s.actions.push(action)).await else {
        return;
    };
    target.answer(429, Some("1"));
    assert_eq!(
        app.post_ins(envelope(KEY, &v8("BUSY0001", "SALE"))).await.0,
        200
    );
    target.wait_for(1, WAIT).await;
    target.answer(200, None);
    let done = eventually(WAIT, "the retried run", || async {
        runs(&app).await.into_iter().find(|r| r.status == "done")
    })
    .await;
    assert_eq!(done.attempts, 2);
    let d = target.deliveries();
    assert!(
        d[1].at - d[0].at >= Duration::from_millis(900),
        "Retry-After: 1 was honoured"
    );
    assert_eq!(
        d[0].header("content-type"),
        "application/x-www-form-urlencoded"
    );
    assert_eq!(&d[0].body[..], b"email=zoe%40example.com");

    // A 4xx will not fix itself: failed at once, the status kept.
    target.answer(422, None);
    assert_eq!(
        app.post_ins(envelope(KEY, &v8("BUSY0002", "SALE"))).await.0,
        200
    );
    let failed = eventually(WAIT, "the refused run", || async {
        runs(&app).await.into_iter().find(|r| r.status == "failed")
    })
    .await;
    assert_eq!(failed.attempts, 1);
    assert!(
        failed.last_error.as_deref().unwrap().contains("422"),
        "{failed:?}"
    );
    app.stop().await;
}

/// No email, no click id: the presets that need them skip the event
/// (done, nothing sent); a secret echoed by an API stays out of the run's
/// error; a redirect to another origin is not followed.
async fn conditions_secrets_and_redirects(backend: Backend) {
    let svc = Services::start().await;
    let token = env("KACHING_TEST_ECHO_TOKEN", "tok-0123456789-secret");
    let hubspot = env("KACHING_TEST_HUBSPOT_UNUSED", services::HUBSPOT_TOKEN);
    let actions = vec![
        preset("postback", &svc, |s| {
            s.url = Some(format!("{}/postback", svc.origin()))
        }),
        preset("hubspot", &svc, |s| s.bearer_env = Some(hubspot)),
        ActionSettings {
            name: "echo".into(),
            kind: "http".into(),
            method: Some("GET".into()),
            url: Some(format!("{}/echo", svc.origin())),
            query_env: [("token".to_owned(), token)].into(),
            allow_private_targets: true,
            ..Default::default()
        },
        ActionSettings {
            name: "redirected".into(),
            kind: "http".into(),
            url: Some(format!("{}/elsewhere", svc.origin())),
            json: Some(serde_json::json!({"receipt": "{{ receipt }}"})),
            allow_private_targets: true,
            ..Default::default()
        },
    ];
    let Some(app) = TestApp::spawn(backend, |s| s.actions = actions).await else {
        return;
    };
    let mut bare: Value = serde_json::from_str(&plaintext(
        "BARE0001",
        "SALE",
        "2026-11-20T10:00:00-08:00",
        1,
    ))
    .unwrap();
    bare.as_object_mut().unwrap().remove("customer");
    assert_eq!(app.post_ins(envelope(KEY, &bare.to_string())).await.0, 200);
    let all = finished(&app, 4).await;
    let by = |name: &str| all.iter().find(|r| r.action == name).unwrap().clone();
    for skipped in ["postback", "hubspot"] {
        assert_eq!(
            by(skipped).status,
            "done",
            "{skipped}: nothing to send is done"
        );
        assert!(svc.calls(skipped).is_empty(), "{skipped} sent nothing");
    }
    let echo = by("echo");
    assert_eq!(echo.status, "failed");
    let error = echo.last_error.unwrap();
    assert!(
        error.contains("400") && error.contains("bad request"),
        "the answer's start: {error}"
    );
    assert!(!error.contains("tok-0123456789"), "{error}");
    assert!(error.contains("[secret]"), "{error}");
    let redirected = by("redirected");
    assert_eq!(redirected.status, "failed");
    assert!(
        redirected.last_error.unwrap().contains("302"),
        "not followed to another origin"
    );
    app.stop().await;
}

crate::on_both_backends!(every_preset_sends_what_its_service_documents);

mod sqlite_only {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn actions_reach_only_public_addresses() {
        actions_reach_only_public_addresses_unless_allowed(Backend::Sqlite).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conditions_secrets_and_redirects_behave() {
        conditions_secrets_and_redirects(Backend::Sqlite).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_request_keeps_the_answer() {
        a_refused_request_keeps_the_answer_and_a_busy_one_waits(Backend::Sqlite).await
    }
}
