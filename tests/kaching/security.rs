//! Source addresses: allowlists, trusted proxies, the failure limit.

use crate::on_both_backends;
use crate::support::{envelope, plaintext, sale, Backend, TestApp, KEY};

fn nets(list: &[&str]) -> Vec<ipnet::IpNet> {
    list.iter().map(|n| n.parse().unwrap()).collect()
}

async fn post_from(app: &TestApp, path: &str, xff: Option<&str>, body: String) -> u16 {
    let mut req = app.client.post(format!("{}{path}", app.base)).body(body);
    if let Some(xff) = xff {
        req = req.header("X-Forwarded-For", xff);
    }
    req.send().await.unwrap().status().as_u16()
}

async fn the_allowlist_without_trusted_proxies_ignores_forwarded_headers(backend: Backend) {
    let Some(app) = TestApp::spawn(backend, |s| {
        s.security.allowed_ips = nets(&["203.0.113.0/24"])
    })
    .await
    else {
        return;
    };
    // The peer is 127.0.0.1: not allowed, whatever the header claims.
    assert_eq!(
        post_from(&app, "/ins", Some("203.0.113.7"), sale("IPDENY01")).await,
        403
    );
    assert!(app.rows().await.is_empty());
    assert!(
        app.store.rejected_after(0, 10).await.unwrap().is_empty(),
        "an address refusal is not kept"
    );
    app.stop().await;
}

async fn the_allowlist_behind_a_trusted_proxy_uses_the_forwarded_client(backend: Backend) {
    let Some(app) = TestApp::spawn(backend, |s| {
        s.security.allowed_ips = nets(&["203.0.113.0/24"]);
        s.security.trusted_proxies = nets(&["127.0.0.1/32"]);
    })
    .await
    else {
        return;
    };
    assert_eq!(
        post_from(&app, "/ins", Some("203.0.113.7"), sale("IPPROX01")).await,
        200
    );
    // A spoofed left-hand entry does not help: the right-most untrusted one counts.
    assert_eq!(
        post_from(
            &app,
            "/ins",
            Some("203.0.113.7, 198.51.100.1"),
            sale("IPPROX02")
        )
        .await,
        403
    );
    assert_eq!(post_from(&app, "/ins", None, sale("IPPROX03")).await, 403);
    let rows = app.rows().await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].source_ip, Some("203.0.113.7".parse().unwrap()));
    app.stop().await;
}

async fn a_per_account_allowlist_limits_only_that_account(backend: Backend) {
    let Some(app) = TestApp::spawn(backend, |s| {
        s.accounts[0].allowed_ips = nets(&["203.0.113.0/24"])
    })
    .await
    else {
        return;
    };
    // acme refuses 127.0.0.1, affil does not.
    assert_eq!(
        post_from(&app, "/ins/acme", None, sale("ACCTIP01")).await,
        403
    );
    assert_eq!(post_from(&app, "/ins", None, sale("ACCTIP02")).await, 403);
    let affil = envelope(
        crate::support::OTHER_KEY,
        &plaintext("ACCTIP03", "SALE", "2026-11-20T10:00:00Z", 1),
    );
    assert_eq!(post_from(&app, "/ins", None, affil).await, 200);
    app.stop().await;
}

async fn repeated_cverify_failures_get_429_and_only_for_legacy_posts(backend: Backend) {
    let vector: serde_json::Value =
        serde_json::from_str(include_str!("../fixtures/legacy_v4_sale.json")).unwrap();
    let secret = vector["secret_key"].as_str().unwrap().to_owned();
    let genuine = vector["http_body"].as_str().unwrap().to_owned();
    let Some(app) = TestApp::spawn(backend, |s| {
        s.security.max_auth_failures_per_minute = 3;
        let mut legacy = crate::support::account("legacy", &secret);
        legacy.legacy_cverify = true;
        s.accounts.push(legacy);
    })
    .await
    else {
        return;
    };
    // Guessing a 32-bit cverify: three tries, then 429 for the rest of the minute.
    let guess = |n: u32| genuine.replace("cverify=73707949", &format!("cverify={n:08X}"));
    for n in 0..3 {
        assert_eq!(app.post_ins(guess(n)).await.0, 403);
    }
    let r = app.post("/ins", guess(3)).await;
    assert_eq!(r.status(), 429);
    assert!(r.headers().get("retry-after").is_some());
    // Even the right cverify gets no answer from this address now: no oracle.
    assert_eq!(app.post_ins(genuine.clone()).await.0, 429);
    // Envelopes cannot be guessed, so the limit never locks them out:
    // neither forged ones nor, above all, ClickBank's own.
    let forged = envelope(
        "WRONGKEY00000000",
        &plaintext("LIMIT001", "SALE", "2026-11-20T10:00:00Z", 1),
    );
    for _ in 0..5 {
        assert_eq!(app.post_ins(forged.clone()).await.0, 403);
    }
    let real = envelope(
        KEY,
        &plaintext("LIMIT002", "SALE", "2026-11-20T10:00:00Z", 1),
    );
    assert_eq!(app.post_ins(real).await.0, 200);
    app.stop().await;
}

on_both_backends!(
    the_allowlist_without_trusted_proxies_ignores_forwarded_headers,
    the_allowlist_behind_a_trusted_proxy_uses_the_forwarded_client,
    a_per_account_allowlist_limits_only_that_account,
    repeated_cverify_failures_get_429_and_only_for_legacy_posts,
);
