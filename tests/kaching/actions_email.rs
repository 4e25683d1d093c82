//! `kind = "email"` against a real SMTP server (aiosmtpd, see `smtp.rs`):
//! what arrives, which notifications send mail, and retries while the
//! server is down.

use std::time::{Duration, Instant};

use kaching::actions::Actions;
use kaching::config::{ActionSettings, ConfigError, RetrySettings, SecretUrl, WhenSettings};
use kaching::store::RunRow;

use crate::on_both_backends;
use crate::smtp::{aiosmtpd_available, reserve_port, SmtpServer};
use crate::support::{envelope, plaintext, sale, Backend, TestApp, KEY};

/// The bound on every wait for an asynchronous effect.
const WAIT: Duration = Duration::from_secs(15);
/// How long "nothing else arrives" is watched for: more than the
/// dispatcher's poll interval (1 s), so a stray due run would be seen.
const QUIET: Duration = Duration::from_millis(1_500);

/// The action of the brief: a thank-you to the customer, for sales.
fn thanks(port: u16) -> ActionSettings {
    ActionSettings {
        name: "thanks".into(),
        kind: "email".into(),
        smtp_url: Some(SecretUrl(format!("smtp://127.0.0.1:{port}"))),
        from: Some("Shop <shop@example.com>".into()),
        to: Some("customer".into()),
        subject: Some("Thanks for order {{ receipt }}".into()),
        body: Some(
            "Hello {{ customer.billing.firstName }}, you paid {{ amounts.account }} {{ currency }}."
                .into(),
        ),
        reply_to: Some("help@example.com".into()),
        when: WhenSettings {
            types: vec!["SALE".into()],
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Polls the runs of `action` until `done` holds for them; panics (showing
/// them) after [`WAIT`].
async fn wait_for_runs(
    app: &TestApp,
    action: &str,
    what: &str,
    done: impl Fn(&[RunRow]) -> bool,
) -> Vec<RunRow> {
    let deadline = Instant::now() + WAIT;
    loop {
        let runs = app
            .store
            .list_runs(None, Some(action), 100)
            .await
            .expect("list runs");
        if done(&runs) {
            return runs;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; the runs: {runs:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn all_done(runs: &[RunRow]) -> bool {
    !runs.is_empty() && runs.iter().all(|r| r.status == "done")
}

async fn a_sale_emails_the_customer_once(backend: Backend) {
    let Some(smtp) = SmtpServer::start().await else {
        return;
    };
    let port = smtp.port;
    let Some(app) = TestApp::spawn(backend, |s| s.actions.push(thanks(port))).await else {
        return;
    };
    let body = sale("MAIL0001");
    assert_eq!(app.post_ins(body.clone()).await, (200, "OK".to_owned()));
    // ClickBank's retry of the same notification is a duplicate: no second mail.
    assert_eq!(app.post_ins(body).await, (200, "OK".to_owned()));

    let mails = smtp.wait_for_messages(1, WAIT).await;
    assert_eq!(mails.len(), 1, "aiosmtpd log:\n{}", smtp.log());
    let m = &mails[0];
    assert_eq!(m.header("From"), Some("Shop <shop@example.com>"));
    assert_eq!(m.header("To"), Some("zoe@example.com"));
    assert_eq!(m.header("Reply-To"), Some("help@example.com"));
    let message_id = m.header("Message-ID").unwrap_or_default();
    assert!(
        message_id.starts_with("<evt_") && message_id.ends_with(".thanks@example.com>"),
        "a Message-ID stable across retries: {message_id}"
    );
    assert_eq!(m.header("Subject"), Some("Thanks for order MAIL0001"));
    assert_eq!(m.header_count("To"), 1);
    assert_eq!(m.header_count("Cc") + m.header_count("Bcc"), 0);
    // The SMTP envelope, as aiosmtpd recorded it.
    assert_eq!(m.header("X-MailFrom"), Some("shop@example.com"));
    assert_eq!(m.header("X-RcptTo"), Some("zoe@example.com"));
    assert_eq!(m.mimetype, "text/plain");
    assert_eq!(m.parts.len(), 1);
    assert_eq!(m.parts[0].charset, "utf-8");
    assert!(
        ["quoted-printable", "base64"].contains(&m.parts[0].transfer_encoding.as_str()),
        "non-ASCII text is transfer-encoded, not sent as raw 8-bit: {}",
        m.raw
    );
    assert_eq!(
        m.text(),
        Some("Hello Zoë, you paid 37.00 USD."),
        "{}",
        m.raw
    );

    let runs = wait_for_runs(&app, "thanks", "the run to be done", all_done).await;
    assert_eq!(runs.len(), 1, "{runs:#?}");
    let r = &runs[0];
    assert_eq!(
        (
            r.status.as_str(),
            r.attempts,
            r.last_error.as_deref(),
            r.receipt.as_deref(),
            r.transaction_type.as_deref()
        ),
        ("done", 1, None, Some("MAIL0001"), Some("SALE"))
    );
    assert!(r.finished_at.is_some());
    // Nothing else arrives.
    assert_eq!(smtp.wait_for_messages(2, QUIET).await.len(), 1);
    app.stop().await;
}

async fn only_the_notifications_the_filter_names_send_mail(backend: Backend) {
    let Some(smtp) = SmtpServer::start().await else {
        return;
    };
    let port = smtp.port;
    let Some(app) = TestApp::spawn(backend, |s| {
        let mut a = thanks(port);
        // TEST is listed so that only `include_tests = false` keeps it out.
        a.when.types = vec!["SALE".into(), "TEST".into()];
        a.when.include_tests = false;
        s.actions.push(a);
    })
    .await
    else {
        return;
    };
    let t = "2026-11-20T10:00:00-08:00";
    app.post_accepted(
        &[
            ("FILT0001", "RFND"),
            ("FILT0002", "TEST"),
            ("FILT0003", "SALE"),
        ],
        t,
    )
    .await;
    assert_eq!(app.rows().await.len(), 3, "all three are stored");

    let runs = wait_for_runs(&app, "thanks", "the SALE's run to be done", all_done).await;
    let runs: Vec<(&str, &str)> = runs
        .iter()
        .map(|r| {
            (
                r.receipt.as_deref().unwrap(),
                r.transaction_type.as_deref().unwrap(),
            )
        })
        .collect();
    assert_eq!(runs, [("FILT0003", "SALE")], "no runs for RFND and TEST");
    let all = app.store.list_runs(None, None, 100).await.unwrap();
    assert_eq!(all.len(), 1, "{all:#?}");

    // Watched for a while: only the SALE's mail ever arrives.
    let mails = smtp.wait_for_messages(2, QUIET).await;
    let subjects: Vec<Option<&str>> = mails.iter().map(|m| m.header("Subject")).collect();
    assert_eq!(subjects, [Some("Thanks for order FILT0003")]);
    app.stop().await;
}

async fn mail_waits_for_a_down_smtp_server_then_arrives(backend: Backend) {
    if !aiosmtpd_available() {
        return;
    }
    // Reserved now, served later.
    let port = reserve_port();
    let Some(app) = TestApp::spawn(backend, |s| {
        let mut a = thanks(port);
        a.retry = RetrySettings {
            backoff_ms: 200,
            ..Default::default()
        };
        a.timeout_ms = 2_000;
        s.actions.push(a);
    })
    .await
    else {
        return;
    };
    assert_eq!(app.post_ins(sale("DOWN0001")).await.0, 200);

    let runs = wait_for_runs(&app, "thanks", "a failed attempt", |runs| {
        runs.iter()
            .any(|r| r.status == "pending" && r.attempts >= 1 && r.last_error.is_some())
    })
    .await;
    assert_eq!(runs.len(), 1);
    let error = runs[0].last_error.clone().unwrap_or_default();
    assert!(
        error.starts_with("cannot send: "),
        "a transient error, to be retried: {error}"
    );

    let Some(smtp) = SmtpServer::start_on(port).await else {
        return;
    };
    let mails = smtp.wait_for_messages(1, WAIT).await;
    assert_eq!(mails.len(), 1, "aiosmtpd log:\n{}", smtp.log());
    assert_eq!(mails[0].header("To"), Some("zoe@example.com"));
    assert_eq!(
        mails[0].header("Subject"),
        Some("Thanks for order DOWN0001")
    );
    assert_eq!(mails[0].text(), Some("Hello Zoë, you paid 37.00 USD."));

    let runs = wait_for_runs(&app, "thanks", "the run to be done", all_done).await;
    assert_eq!(runs.len(), 1);
    assert!(runs[0].attempts >= 2, "{runs:#?}");
    assert_eq!(smtp.wait_for_messages(2, QUIET).await.len(), 1);
    app.stop().await;
}

on_both_backends!(
    a_sale_emails_the_customer_once,
    only_the_notifications_the_filter_names_send_mail,
    mail_waits_for_a_down_smtp_server_then_arrives,
);

/// A fixed recipient with an HTML body: multipart/alternative, both parts
/// rendered, customer data HTML-escaped in the HTML part only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_recipient_gets_text_and_html_alternatives() {
    let Some(smtp) = SmtpServer::start().await else {
        return;
    };
    let port = smtp.port;
    let Some(app) = TestApp::spawn(Backend::Sqlite, |s| {
        let mut a = thanks(port);
        a.name = "ops".into();
        a.to = Some("Orders <orders@example.com>".into());
        a.subject = Some("New sale {{ receipt }}: {{ amounts.account }} {{ currency }}".into());
        a.body =
            Some("{{ customer.billing.fullName }} bought {{ line_items[0].productTitle }}.".into());
        a.html_body = Some(
            "<p><b>{{ customer.billing.fullName }}</b> bought {{ line_items[0].productTitle }}.</p>"
                .into(),
        );
        s.actions.push(a);
    })
    .await
    else {
        return;
    };
    // A customer name with HTML in it.
    let pt = plaintext("HTML0001", "SALE", "2026-11-20T10:00:00-08:00", 1).replace(
        r#""fullName":"Zoë Ångström""#,
        r#""fullName":"Zoë <Ångström> & Co""#,
    );
    assert!(pt.contains("Zoë <Ångström> & Co"));
    assert_eq!(app.post_ins(envelope(KEY, &pt)).await.0, 200);

    let mails = smtp.wait_for_messages(1, WAIT).await;
    assert_eq!(mails.len(), 1, "aiosmtpd log:\n{}", smtp.log());
    let m = &mails[0];
    assert_eq!(m.header("To"), Some("Orders <orders@example.com>"));
    assert_eq!(m.header("X-RcptTo"), Some("orders@example.com"));
    assert_eq!(m.header("Subject"), Some("New sale HTML0001: 37.00 USD"));
    assert_eq!(m.mimetype, "multipart/alternative");
    let kinds: Vec<&str> = m.parts.iter().map(|p| p.mimetype.as_str()).collect();
    assert_eq!(kinds, ["text/plain", "text/html"]);
    assert!(
        m.parts.iter().all(|p| p.charset == "utf-8"),
        "{:?}",
        m.parts
    );
    assert_eq!(m.text(), Some("Zoë <Ångström> & Co bought Widget."));
    assert_eq!(
        m.html(),
        Some("<p><b>Zoë &lt;Ångström&gt; &amp; Co</b> bought Widget.</p>")
    );
    wait_for_runs(&app, "ops", "the run to be done", all_done).await;
    app.stop().await;
}

/// A valid email action, to break one key at a time.
fn valid() -> ActionSettings {
    thanks(2525)
}

fn rejected(edit: impl FnOnce(&mut ActionSettings)) -> (String, String) {
    let mut a = valid();
    edit(&mut a);
    match Actions::from_settings(&[a]) {
        Err(ConfigError::Invalid { key, message }) => (key, message),
        Err(other) => panic!("not a key error: {other:?}"),
        Ok(actions) => panic!("accepted: {actions:?}"),
    }
}

// In a runtime: with lettre's `pool` feature, building a transport spawns a task.
#[tokio::test]
async fn check_config_rejects_broken_email_actions() {
    assert!(Actions::from_settings(&[valid()]).is_ok());

    let (key, message) = rejected(|a| a.subject = Some("{{ receipt ".into()));
    assert_eq!(key, "actions[0].subject");
    assert!(message.contains("syntax error"), "{message}");
    assert!(message.contains("subject:1"), "names the line: {message}");

    let (key, message) = rejected(|a| a.body = Some("Hello,\n\n{% if receipt %}no end".into()));
    assert_eq!(key, "actions[0].body");
    assert!(message.contains("body:3"), "names the line: {message}");

    let (key, message) = rejected(|a| a.html_body = Some("<p>{{ }}</p>".into()));
    assert_eq!(key, "actions[0].html_body");
    assert!(message.contains("syntax error"), "{message}");

    let (key, message) = rejected(|a| a.from = Some("Shop at example.com".into()));
    assert_eq!(key, "actions[0].from");
    assert!(
        message.starts_with("`Shop at example.com` is not an email address"),
        "{message}"
    );

    let (key, _) = rejected(|a| a.to = Some("not an address".into()));
    assert_eq!(key, "actions[0].to");
    let (key, _) = rejected(|a| a.reply_to = Some("help@".into()));
    assert_eq!(key, "actions[0].reply_to");

    for (missing, edit) in [
        ("to", (|a| a.to = None) as fn(&mut ActionSettings)),
        ("from", |a| a.from = None),
        ("subject", |a| a.subject = None),
        ("body", |a| a.body = None),
        ("smtp_url", |a| a.smtp_url = None),
    ] {
        let (key, message) = rejected(edit);
        assert_eq!(
            (key.as_str(), message.as_str()),
            (
                format!("actions[0].{missing}").as_str(),
                "is required for kind = \"email\""
            )
        );
    }

    let (key, message) = rejected(|a| a.smtp_url = Some(SecretUrl("ftp://example.com".into())));
    assert_eq!(key, "actions[0].smtp_url");
    assert!(!message.is_empty());

    // A webhook key on an email action is named too.
    let (key, _) = rejected(|a| a.url = Some("https://example.com".into()));
    assert_eq!(key, "actions[0].url");
}
