//! Accepting, deduplicating and refusing notifications.

use std::sync::Arc;

use kaching::ins::{BodyForm, TransactionType};

use crate::on_both_backends;
use crate::support::{envelope, plaintext, sale, Backend, TestApp, KEY, OTHER_KEY};

async fn a_genuine_notification_is_stored_once_and_acknowledged(backend: Backend) {
    let Some(app) = TestApp::spawn(backend, |_| {}).await else {
        return;
    };
    let pt = plaintext("ABCD1234", "SALE", "20220810T162015-0700", 1);
    let (status, body) = app.post_ins(envelope(KEY, &pt)).await;
    assert_eq!((status, body.as_str()), (200, "OK"));

    let rows = app.rows().await;
    assert_eq!(rows.len(), 1);
    let (r, n) = (&rows[0], &rows[0].notification);
    assert_eq!(r.account.as_str(), "acme");
    assert_eq!(n.role.as_str(), "VENDOR");
    assert_eq!(n.receipt.as_str(), "ABCD1234");
    assert_eq!(n.transaction_type, TransactionType::Sale);
    assert_eq!(n.transaction_time.to_rfc3339(), "2022-08-10T23:20:15+00:00");
    assert_eq!(
        n.total_account_amount.map(|a| a.to_string()).as_deref(),
        Some("37.00")
    );
    assert_eq!(n.currency.as_deref(), Some("USD"));
    assert_eq!(n.version.as_deref(), Some("6.0"));
    assert_eq!(n.attempt_count, 1);
    assert_eq!(r.form, BodyForm::Envelope);
    // Stored in clear: the plaintext exactly as received but for the
    // customer, which is sealed (see the privacy tests).
    assert_eq!(
        n.payload,
        kaching::privacy::split(&pt, BodyForm::Envelope).clear,
        "the payload is the plaintext exactly as received, the customer cut out"
    );
    assert_eq!(r.source_ip, Some("127.0.0.1".parse().unwrap()));
    assert_eq!(r.duplicates, 0);
    app.stop().await;
}

async fn the_real_test_button_notification_is_accepted(backend: Backend) {
    let Some(app) = TestApp::spawn(backend, |s| {
        s.accounts
            .push(crate::support::account("ketoboost1", "01GA50AY4BYGZKG6"));
    })
    .await
    else {
        return;
    };
    let vector: serde_json::Value =
        serde_json::from_str(include_str!("../fixtures/v7_test_button.json")).unwrap();
    let body = vector["http_body"].as_str().unwrap().to_owned();
    assert_eq!(app.post_ins(body.clone()).await, (200, "OK".to_owned()));
    // The named-account route finds it too, as a duplicate.
    let r = app.post("/ins/ketoboost1", body).await;
    assert_eq!(r.status(), 200);
    let rows = app.rows().await;
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (
            rows[0].account.as_str(),
            rows[0].notification.receipt.as_str(),
            rows[0].notification.transaction_type.as_str()
        ),
        ("ketoboost1", "********", "TEST")
    );
    assert_eq!(rows[0].duplicates, 1);
    app.stop().await;
}

async fn a_duplicate_is_acknowledged_and_counted_not_stored_again(backend: Backend) {
    let Some(app) = TestApp::spawn(backend, |_| {}).await else {
        return;
    };
    let body = sale("DUPE0001");
    for _ in 0..3 {
        assert_eq!(app.post_ins(body.clone()).await.0, 200);
    }
    let rows = app.rows().await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].duplicates, 2);
    assert!(rows[0].last_seen_at >= rows[0].received_at);
    app.stop().await;
}

async fn fifty_identical_notifications_at_once_leave_one_row(backend: Backend) {
    let Some(app) = TestApp::spawn(backend, |_| {}).await else {
        return;
    };
    let app = Arc::new(app);
    let body = sale("CONC0001");
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (app, body) = (app.clone(), body.clone());
            tokio::spawn(async move { app.post_ins(body).await.0 })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    let rows = app.rows().await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].duplicates, 49);
}

async fn a_retry_with_a_fresh_iv_and_higher_attempt_is_a_duplicate(backend: Backend) {
    let Some(app) = TestApp::spawn(backend, |_| {}).await else {
        return;
    };
    let time = "2026-11-20T10:00:00-08:00";
    let first = envelope(KEY, &plaintext("RETRY001", "SALE", time, 1));
    let retry = envelope(KEY, &plaintext("RETRY001", "SALE", time, 2));
    assert_ne!(first, retry, "a retry is a different body");
    assert_eq!(app.post_ins(first).await.0, 200);
    assert_eq!(app.post_ins(retry).await.0, 200);
    let rows = app.rows().await;
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].notification.attempt_count, rows[0].duplicates),
        (1, 1)
    );
    app.stop().await;
}

async fn a_refund_and_a_second_cancel_on_the_same_receipt_are_new_notifications(backend: Backend) {
    let Some(app) = TestApp::spawn(backend, |_| {}).await else {
        return;
    };
    let posts = [
        plaintext("RFND0001", "SALE", "2026-11-20T10:00:00-08:00", 1),
        plaintext("RFND0001", "RFND", "2026-11-21T10:00:00-08:00", 1),
        plaintext("RFND0001", "CANCEL-REBILL", "2026-11-22T10:00:00-08:00", 1),
        plaintext("RFND0001", "CANCEL-REBILL", "2026-11-23T10:00:00-08:00", 1),
    ];
    for p in &posts {
        assert_eq!(app.post_ins(envelope(KEY, p)).await.0, 200);
    }
    let mut kinds: Vec<String> = app
        .rows()
        .await
        .into_iter()
        .map(|r| r.notification.transaction_type.to_string())
        .collect();
    kinds.sort();
    assert_eq!(kinds, ["CANCEL-REBILL", "CANCEL-REBILL", "RFND", "SALE"]);
    app.stop().await;
}

async fn the_same_receipt_for_two_accounts_is_two_notifications(backend: Backend) {
    let Some(app) = TestApp::spawn(backend, |_| {}).await else {
        return;
    };
    let pt = plaintext("SHARED01", "SALE", "2026-11-20T10:00:00-08:00", 1);
    assert_eq!(app.post_ins(envelope(KEY, &pt)).await.0, 200);
    assert_eq!(app.post_ins(envelope(OTHER_KEY, &pt)).await.0, 200);
    let mut accounts: Vec<String> = app
        .rows()
        .await
        .into_iter()
        .map(|r| r.account.to_string())
        .collect();
    accounts.sort();
    assert_eq!(accounts, ["acme", "affil"]);
    app.stop().await;
}

async fn every_key_dependent_failure_gets_the_same_403(backend: Backend) {
    let Some(app) = TestApp::spawn(backend, |_| {}).await else {
        return;
    };
    let good = sale("FORGE001");
    let v: serde_json::Value = serde_json::from_str(&good).unwrap();
    let (ct, iv) = (
        v["notification"].as_str().unwrap(),
        v["iv"].as_str().unwrap(),
    );
    let flip = |s: &str| {
        let mut b = s.as_bytes().to_vec();
        b[10] = if b[10] == b'A' { b'B' } else { b'A' };
        String::from_utf8(b).unwrap()
    };
    let forged = [
        envelope(
            "WRONGKEY00000000",
            &plaintext("FORGE001", "SALE", "2026-11-20T10:00:00Z", 1),
        ),
        serde_json::json!({"notification": flip(ct), "iv": iv}).to_string(),
        serde_json::json!({"notification": ct, "iv": flip(iv)}).to_string(),
        serde_json::json!({"notification": &ct[..ct.len() - 24], "iv": iv}).to_string(),
        serde_json::json!({"notification": "%%%not base64%%%", "iv": iv}).to_string(),
        serde_json::json!({"notification": ct, "iv": "QUJD"}).to_string(),
        serde_json::json!({"notification": "", "iv": ""}).to_string(),
        envelope(KEY, "this is not json"),
        envelope(KEY, r#"{"receipt":"NOTIME01","transactionType":"SALE"}"#),
        // plain JSON, but no account has HMAC mode on
        plaintext("FORGE001", "SALE", "2026-11-20T10:00:00Z", 1),
    ];
    for body in forged {
        let (status, text) = app.post_ins(body.clone()).await;
        assert_eq!(
            (status, text.as_str()),
            (403, "forbidden\n"),
            "for body {body}"
        );
    }
    assert!(app.rows().await.is_empty());
    // Every forged post is kept for inspection (off the request path).
    crate::target::eventually(
        std::time::Duration::from_secs(10),
        "ten kept posts",
        || async {
            let kept = app.store.rejected_after(0, 100).await.unwrap();
            assert!(kept.len() <= 10);
            (kept.len() == 10).then_some(())
        },
    )
    .await;
    app.stop().await;
}

async fn a_body_that_is_no_ins_form_gets_400_and_an_oversized_one_413(backend: Backend) {
    let Some(app) = TestApp::spawn(backend, |s| s.server.max_body_bytes = 2048).await else {
        return;
    };
    for junk in ["", "hello", "[1,2]", "null", "a=b&c=d"] {
        assert_eq!(app.post_ins(junk).await.0, 400, "for {junk:?}");
    }
    let big = format!("{{\"notification\":\"{}\",\"iv\":\"x\"}}", "A".repeat(4096));
    assert_eq!(
        app.post_ins(big).await,
        (413, "payload too large\n".to_owned()),
        "a fixed body, like every other refusal"
    );
    // Other methods and paths.
    let r = app
        .client
        .get(format!("{}/ins", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(app.post("/elsewhere", "x").await.status(), 404);
    // An unknown account answers exactly as a known one with a wrong key:
    // same status, body and headers (but the date), so names cannot be probed.
    let answer = |r: reqwest::Response| async move {
        let mut headers: Vec<(String, String)> = r
            .headers()
            .iter()
            .filter(|(k, _)| *k != "date")
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        headers.sort();
        (r.status().as_u16(), headers, r.text().await.unwrap())
    };
    let unknown = answer(app.post("/ins/nosuchaccount", sale("NOACC001")).await).await;
    let wrong_key = answer(
        app.post(
            "/ins/acme",
            envelope(
                OTHER_KEY,
                &plaintext("NOACC001", "SALE", "2026-11-20T10:00:00-08:00", 1),
            ),
        )
        .await,
    )
    .await;
    assert_eq!(unknown.0, 403);
    assert_eq!(unknown, wrong_key);
    // The server is still fine.
    assert_eq!(app.post_ins(sale("AFTER001")).await.0, 200);
    app.stop().await;
}

async fn a_previous_key_still_authenticates_during_rotation(backend: Backend) {
    const OLD: &str = "OLDKEY0000000001";
    let Some(app) = TestApp::spawn(backend, |s| {
        s.accounts[0].previous_secret_keys = vec![secrecy::SecretString::from(OLD.to_owned())];
    })
    .await
    else {
        return;
    };
    let t = "2026-11-20T10:00:00-08:00";
    assert_eq!(
        app.post_ins(envelope(OLD, &plaintext("ROTATE01", "SALE", t, 1)))
            .await
            .0,
        200
    );
    assert_eq!(
        app.post_ins(envelope(KEY, &plaintext("ROTATE02", "SALE", t, 1)))
            .await
            .0,
        200
    );
    assert_eq!(
        app.post_ins(envelope(
            "NEVERKEY00000000",
            &plaintext("ROTATE03", "SALE", t, 1)
        ))
        .await
        .0,
        403
    );
    let rows = app.rows().await;
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r.account.as_str() == "acme"));
    app.stop().await;
}

async fn a_legacy_form_post_is_accepted_only_where_enabled(backend: Backend) {
    let vector: serde_json::Value =
        serde_json::from_str(include_str!("../fixtures/legacy_v4_sale.json")).unwrap();
    let secret = vector["secret_key"].as_str().unwrap().to_owned();
    let body = vector["http_body"].as_str().unwrap().to_owned();
    let Some(app) = TestApp::spawn(backend, |s| {
        let mut legacy = crate::support::account("legacy", &secret);
        legacy.legacy_cverify = true;
        s.accounts.push(legacy);
        s.accounts
            .push(crate::support::account("nolegacy", &secret));
    })
    .await
    else {
        return;
    };
    assert_eq!(app.post("/ins/nolegacy", body.clone()).await.status(), 403);
    let tampered = body.replace("caccountamount=830", "caccountamount=99999");
    assert_eq!(app.post("/ins/legacy", tampered).await.status(), 403);
    assert_eq!(app.post("/ins/legacy", body).await.status(), 200);
    let rows = app.rows().await;
    assert_eq!(rows.len(), 1);
    let (r, n) = (&rows[0], &rows[0].notification);
    assert_eq!(
        (n.receipt.as_str(), r.form, n.version.as_deref()),
        ("7965F6NE", BodyForm::LegacyForm, Some("4.0"))
    );
    assert_eq!(
        n.total_account_amount.map(|a| a.to_string()).as_deref(),
        Some("8.30")
    );
    assert_eq!(n.transaction_time.timestamp(), 1383864458);
    app.stop().await;
}

async fn an_hmac_signed_plain_json_is_accepted_where_enabled(backend: Backend) {
    let Some(app) = TestApp::spawn(backend, |s| {
        s.accounts[0].hmac_header = "X-Signature".into()
    })
    .await
    else {
        return;
    };
    let body = plaintext("HMAC0001", "SALE", "2026-11-20T10:00:00Z", 1);
    let sig = kaching::ins::hmac_hex(KEY, body.as_bytes());
    let send = |sig: String| {
        app.client
            .post(format!("{}/ins", app.base))
            .header("X-Signature", sig)
            .body(body.clone())
            .send()
    };
    assert_eq!(send("sha256=0000".into()).await.unwrap().status(), 403);
    assert_eq!(send(format!("sha256={sig}")).await.unwrap().status(), 200);
    let rows = app.rows().await;
    assert_eq!((rows.len(), rows[0].form.as_str()), (1, "hmac-json"));
    app.stop().await;
}

async fn health_and_readiness_answer(backend: Backend) {
    let Some(app) = TestApp::spawn(backend, |_| {}).await else {
        return;
    };
    for path in ["/healthz", "/readyz"] {
        let r = app
            .client
            .get(format!("{}{path}", app.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    app.stop().await;
}

async fn shutdown_stops_accepting_and_keeps_what_was_stored(backend: Backend) {
    let Some(app) = TestApp::spawn(backend, |_| {}).await else {
        return;
    };
    assert_eq!(app.post_ins(sale("SHUT0001")).await.0, 200);
    let addr = app.addr;
    let app = app.stop().await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer listening"
    );
    // Reopen the store: the row is there.
    let store = kaching::store::Store::connect(&app.settings.database)
        .await
        .unwrap();
    let rows = store.recent_notifications(10, None).await.unwrap();
    assert_eq!(rows.len(), 1);
    store.close().await;
}

on_both_backends!(
    a_genuine_notification_is_stored_once_and_acknowledged,
    the_real_test_button_notification_is_accepted,
    a_duplicate_is_acknowledged_and_counted_not_stored_again,
    fifty_identical_notifications_at_once_leave_one_row,
    a_retry_with_a_fresh_iv_and_higher_attempt_is_a_duplicate,
    a_refund_and_a_second_cancel_on_the_same_receipt_are_new_notifications,
    the_same_receipt_for_two_accounts_is_two_notifications,
    every_key_dependent_failure_gets_the_same_403,
    a_body_that_is_no_ins_form_gets_400_and_an_oversized_one_413,
    a_previous_key_still_authenticates_during_rotation,
    a_legacy_form_post_is_accepted_only_where_enabled,
    an_hmac_signed_plain_json_is_accepted_where_enabled,
    health_and_readiness_answer,
    shutdown_stops_accepting_and_keeps_what_was_stored,
);
