//! The refund-risk score against real parts: trained from the demo history
//! stored through the real pipeline, then a new sale posted over TLS is
//! scored, stored with its score, filtered on it and shown with it.

use std::time::Duration;

use chrono::Utc;
use kaching::config::Settings;

use crate::actions::webhook;
use crate::on_both_backends;
use crate::support::{account, envelope, plaintext, Backend, TestApp, KEY};
use crate::target::{eventually, Target};

async fn a_new_sale_is_scored_stored_filtered_and_shown(backend: Backend) {
    let target = Target::start("127.0.0.1:0".parse().unwrap()).await;
    let configure = |s: &mut Settings| {
        let mut any = webhook("scored", &target.url());
        any.when.min_refund_risk = Some(0.0);
        s.actions.push(any);
        let mut never = webhook("risky-only", &target.url());
        never.when.min_refund_risk = Some(0.99);
        s.actions.push(never);
    };
    let Some(app) = TestApp::spawn(backend, configure).await else {
        return;
    };
    // Before any model: a sale gets no score, and a risk filter does not match it.
    let time = Utc::now().format("%Y-%m-%dT%H:%M:%S+00:00").to_string();
    let first = plaintext("RISK0001", "SALE", &time, 1);
    assert_eq!(app.post_ins(envelope(KEY, &first)).await.0, 200);
    let stored = app.rows().await;
    assert_eq!(stored[0].refund_risk, None);
    assert!(app
        .store
        .list_runs(None, None, 10)
        .await
        .unwrap()
        .is_empty());

    let demo = Settings {
        accounts: vec![account("acme", KEY)],
        privacy: app.settings.privacy.clone(),
        ..Default::default()
    };
    kaching::demo::run(demo, &app.store, Some("acme"), 3, 200, Utc::now(), 40.0)
        .await
        .unwrap();
    let (id, model, evaluation) = kaching::risk::train_and_store(&app.store, 60, Utc::now())
        .await
        .unwrap();
    assert!(evaluation.train_sales > 1000, "{evaluation:?}");
    assert!(!model.columns.is_empty());

    // A restart loads the newest model (a running daemon does within a minute).
    let app = app.stop().await;
    let app = TestApp::start(app.settings, app.dir, app.pg).await;
    let second = plaintext("RISK0002", "SALE", &time, 1);
    assert_eq!(app.post_ins(envelope(KEY, &second)).await.0, 200);
    let scored = app
        .rows()
        .await
        .into_iter()
        .find(|n| n.notification.receipt.as_str() == "RISK0002")
        .unwrap();
    let risk = scored.refund_risk.expect("a score");
    assert!((0.0..=1.0).contains(&risk), "{risk}");
    let features = kaching::risk::features::values(&scored.notification);
    assert!(
        (model.score(&features) - risk).abs() < 1e-12,
        "scored by model {id}"
    );

    let got = target.wait_for(1, Duration::from_secs(15)).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        target.deliveries().len(),
        1,
        "only the action whose threshold it meets"
    );
    let e = got[0].json();
    assert_eq!(e["receipt"], "RISK0002");
    assert!((e["refund_risk"].as_f64().unwrap() - risk).abs() < 1e-12);

    let page = eventually(Duration::from_secs(10), "the notification page", || async {
        let r = app
            .client
            .get(format!("{}/notifications/{}", app.admin(), scored.id))
            .send()
            .await
            .ok()?;
        let text = r.text().await.ok()?;
        text.contains("refund-risk").then_some(text)
    })
    .await;
    assert!(page.contains(&format!("{:.1} %", risk * 100.0)), "{page}");
    app.stop().await;
}

on_both_backends!(a_new_sale_is_scored_stored_filtered_and_shown);
