//! The dashboard in a real browser (headless Chromium over WebDriver): log
//! in through the form, see the overview's figures equal sums computed
//! here, see a new notification arrive in the live feed without a reload,
//! retry a failed action run from the Actions page, and no console errors
//! (the CSP forbids inline script and style: a violation would be one).

use std::str::FromStr;
use std::time::{Duration, Instant};

use fantoccini::Locator;
use kaching::config::RetrySettings;
use kaching::store::RunStatus;
use rust_decimal::Decimal;

use crate::actions::webhook;
use crate::browser::{screenshot_dir, Browser};
use crate::dashboard::{expected, history, post_all, Post, FROM, TO};
use crate::support::{account, envelope, Backend, TestApp, KEY};
use crate::target::{eventually, Target};

const PASSWORD: &str = "a dashboard password";
const WAIT: Duration = Duration::from_secs(15);

async fn text(b: &Browser, css: &str) -> String {
    match b
        .client
        .wait()
        .at_most(WAIT)
        .for_element(Locator::Css(css))
        .await
    {
        Ok(e) => e.text().await.unwrap(),
        Err(e) => {
            let url = b
                .client
                .current_url()
                .await
                .map(|u| u.to_string())
                .unwrap_or_default();
            let source = b.client.source().await.unwrap_or_default();
            panic!("{css}: {e} on {url}:\n{source}");
        }
    }
}

async fn no_console_errors(b: &Browser, page: &str) {
    let errors = b.console_errors().await;
    assert!(errors.is_empty(), "console errors on {page}: {errors:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_in_see_exact_figures_follow_the_live_feed_and_retry_a_run() {
    let target = Target::start("127.0.0.1:0".parse().unwrap()).await;
    target.answer(500, None);
    let hash = kaching::admin::hash_password(PASSWORD).unwrap();
    let Some(app) = TestApp::spawn(Backend::Sqlite, |s| {
        s.admin.password_hash = Some(hash);
        let mut hook = webhook("crm", &target.url());
        hook.retry = RetrySettings {
            max_attempts: 1,
            ..hook.retry.clone()
        };
        s.actions.push(hook);
    })
    .await
    else {
        return;
    };
    let Some(b) = Browser::start().await else {
        return;
    };
    let (shots, _keep) = screenshot_dir();
    let posts = history();
    post_all(&app, &posts).await;
    let admin = app.admin().to_owned();

    // Log in through the form; the page asked for comes back.
    b.client
        .goto(&format!("{admin}/?from={FROM}&to={TO}"))
        .await
        .unwrap();
    b.client
        .wait()
        .at_most(WAIT)
        .for_element(Locator::Css("#password"))
        .await
        .unwrap();
    let url = b.client.current_url().await.unwrap();
    assert_eq!(url.path(), "/login");
    b.client
        .find(Locator::Css("#password"))
        .await
        .unwrap()
        .send_keys(PASSWORD)
        .await
        .unwrap();
    b.client
        .find(Locator::Css("#login"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();

    // The overview's figures, against sums computed here.
    let e = expected(&posts);
    let usd = |field: &str| format!(".card[data-currency=\"USD\"] dd.{field}");
    let gross = e.gross["USD"];
    let net = gross - e.refunds["USD"] - e.chargebacks["USD"];
    assert_eq!(
        Decimal::from_str(&text(&b, &usd("net")).await).unwrap(),
        net
    );
    assert_eq!(
        Decimal::from_str(&text(&b, &usd("gross")).await).unwrap(),
        gross
    );
    let eur_net = text(&b, ".card[data-currency=\"EUR\"] dd.net").await;
    assert_eq!(Decimal::from_str(&eur_net).unwrap(), e.gross["EUR"]);
    assert_eq!(text(&b, "#counts dd.sales").await, "5");
    assert_eq!(text(&b, "#counts dd.refunds").await, "2");
    assert!(text(&b, "#period-rate").await.starts_with("40.0 %"));
    no_console_errors(&b, "the overview").await;

    // The live feed: a new sale appears without a reload.
    b.client
        .execute("window.kachingMarker = 42; return 1;", vec![])
        .await
        .unwrap();
    b.client
        .wait()
        .at_most(WAIT)
        .for_element(Locator::Css("#live-status.on"))
        .await
        .unwrap();
    let live = Post {
        receipt: "LIVE0001",
        time: "2026-11-29T12:00:00Z",
        ..posts[1].clone()
    };
    let sent = Instant::now();
    assert_eq!(app.post_ins(envelope(KEY, &live.plaintext(1))).await.0, 200);
    let row = b
        .client
        .wait()
        .at_most(WAIT)
        .for_element(Locator::XPath(
            "//table[@id='live']//tr[@data-id]//a[text()='LIVE0001']",
        ))
        .await
        .expect("the new sale in the live feed");
    let shown = sent.elapsed();
    assert_eq!(row.text().await.unwrap(), "LIVE0001");
    let marker = b
        .client
        .execute("return window.kachingMarker;", vec![])
        .await
        .unwrap();
    assert_eq!(marker, 42, "the page was not reloaded");
    let buyer = text(&b, "#live tbody tr[data-id] td:last-child").await;
    assert_eq!(buyer, "z***@e***.com", "the buyer is masked");
    eprintln!("live feed: shown {shown:?} after the post");
    b.screenshot(&shots, "overview-live").await;
    no_console_errors(&b, "the live overview").await;

    // Every run failed once (the endpoint answers 500, one attempt allowed).
    let failed = eventually(WAIT, "the runs fail", || async {
        let runs = app
            .store
            .list_runs(Some(RunStatus::Failed), None, 100)
            .await
            .unwrap();
        (runs.len() == 10).then_some(runs)
    })
    .await;
    target.answer(200, None);
    b.client
        .goto(&format!("{admin}/actions?type=failed"))
        .await
        .unwrap();
    let first = failed.iter().map(|r| r.id).min().unwrap();
    let button = format!("tr[data-run=\"{first}\"] button.retry");
    b.client
        .wait()
        .at_most(WAIT)
        .for_element(Locator::Css(&button))
        .await
        .unwrap();
    b.screenshot(&shots, "actions").await;
    b.client
        .find(Locator::Css(&button))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    eventually(WAIT, "the retried run is done", || async {
        let run = app.store.run(first).await.unwrap().unwrap();
        (run.status == "done").then_some(())
    })
    .await;
    assert!(
        !target.deliveries().is_empty(),
        "the endpoint got the retried delivery"
    );
    b.client.goto(&format!("{admin}/actions")).await.unwrap();
    let status = text(&b, &format!("tr[data-run=\"{first}\"] .status")).await;
    assert_eq!(status, "done");
    no_console_errors(&b, "the actions page").await;
    b.close().await;
    app.stop().await;
}

/// Every page with the demo history, in the browser: it renders, shows
/// data and logs no error. With `KACHING_SCREENSHOTS=docs/screenshots`
/// this makes the README's screenshots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_renders_the_demo_history_without_console_errors() {
    // 3,000 commits while other tests load the machine: a generous bound.
    let Some(app) = TestApp::spawn(Backend::Sqlite, |s| {
        s.database.commit_timeout_ms = 30_000;
        s.actions.push(kaching::config::ActionSettings {
            name: "ops".into(),
            kind: "log".into(),
            when: kaching::config::WhenSettings {
                notifications: false,
                ..Default::default()
            },
            ..Default::default()
        });
        s.alerts.push(kaching::config::AlertSettings {
            name: "refunds".into(),
            kind: "refund_spike".into(),
            notify: vec!["ops".into()],
            ..Default::default()
        });
    })
    .await
    else {
        return;
    };
    let Some(b) = Browser::start().await else {
        return;
    };
    let (shots, _keep) = screenshot_dir();
    let mut demo = kaching::config::Settings::default();
    demo.database.url = app.settings.database.url.clone();
    demo.accounts = vec![account("acme", KEY)];
    demo.privacy = app.settings.privacy.clone();
    kaching::demo::run(
        demo,
        &app.store,
        Some("acme"),
        1,
        90,
        chrono::Utc::now(),
        kaching::demo::SALES_PER_DAY,
    )
    .await
    .expect("the demo history is stored");
    // The refund spike of the demo's history, fired as the daemon's timer would.
    crate::support::projected(&app.store).await;
    let actions = kaching::actions::Actions::from_settings(&app.settings.actions).unwrap();
    let rules = kaching::alerts::Rules::build(&app.settings.alerts, &actions).unwrap();
    let now = chrono::Utc::now();
    for rule in rules.iter() {
        let v = kaching::alerts::evaluate(&app.store, rule, &["acme".to_owned()], now, now)
            .await
            .unwrap();
        kaching::alerts::reconcile(&app.store, rule, v, now)
            .await
            .unwrap();
    }
    let admin = app.admin().to_owned();
    let pages = [
        ("overview", "/", "#money .card"),
        ("products", "/products", "#breakdown tbody tr td.label"),
        (
            "affiliates",
            "/affiliates?sort=refund_rate",
            "#breakdown tbody tr td.label",
        ),
        (
            "tracking",
            "/tracking?by=trafficSource",
            "#breakdown tbody tr td.label",
        ),
        (
            "compare",
            "/compare?by=trafficSource&v=facebook&v=google&v=tiktok",
            "#compare tbody tr",
        ),
        (
            "subscriptions",
            "/subscriptions?range=90d",
            "#retention tbody tr",
        ),
        (
            "notifications",
            "/notifications",
            "#notifications tbody tr td a",
        ),
        ("rejected", "/rejected", "#rejected"),
        ("customers", "/customers", "#email"),
        (
            "alerts",
            "/alerts",
            "#alerts tbody tr[data-kind='refund_spike'][data-state='firing']",
        ),
    ];
    for (name, path, shows) in pages {
        b.client.goto(&format!("{admin}{path}")).await.unwrap();
        b.client
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Css(shows))
            .await
            .unwrap_or_else(|e| panic!("{path} shows {shows}: {e}"));
        b.screenshot(&shots, name).await;
        no_console_errors(&b, path).await;
    }
    // A notification's detail: its buyer masked, no name.
    b.client
        .goto(&format!("{admin}/notifications?type=SALE"))
        .await
        .unwrap();
    b.client
        .wait()
        .at_most(WAIT)
        .for_element(Locator::Css("#notifications tbody tr td a"))
        .await
        .unwrap();
    b.client
        .find(Locator::Css("#notifications tbody tr td a"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let detail = text(&b, "main").await;
    assert!(detail.contains("***@"), "{detail}");
    b.screenshot(&shots, "notification").await;
    no_console_errors(&b, "a notification").await;
    b.close().await;
    app.stop().await;
}
