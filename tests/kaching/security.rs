//! Source addresses: allowlists, trusted proxies, the per-address failure limit.

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

async fn post_as(
    client: &reqwest::Client,
    app: &TestApp,
    path: &str,
    xff: Option<&str>,
    body: &str,
) -> reqwest::Response {
    let mut req = client
        .post(format!("{}{path}", app.base))
        .body(body.to_owned());
    if let Some(xff) = xff {
        req = req.header("X-Forwarded-For", xff);
    }
    req.send().await.unwrap()
}

async fn failures_past_the_limit_get_429_from_that_address_only(backend: Backend) {
    let vector: serde_json::Value =
        serde_json::from_str(include_str!("../fixtures/legacy_v4_sale.json")).unwrap();
    let secret = vector["secret_key"].as_str().unwrap().to_owned();
    let genuine = vector["http_body"].as_str().unwrap().to_owned();
    let Some(app) = TestApp::spawn(backend, |s| {
        s.security.max_failures_per_minute = 3;
        s.security.trusted_proxies = nets(&["127.0.0.3/32"]);
        let mut legacy = crate::support::account("legacy", &secret);
        legacy.legacy_cverify = true;
        s.accounts.push(legacy);
    })
    .await
    else {
        return;
    };
    let forger = app.client_from("127.0.0.1");
    let other = app.client_from("127.0.0.2");
    let proxy = app.client_from("127.0.0.3");
    let status = |r: reqwest::Response| r.status().as_u16();
    let forged = |receipt: &str| {
        envelope(
            "WRONGKEY00000000",
            &plaintext(receipt, "SALE", "2026-11-20T10:00:00Z", 1),
        )
    };
    let real =
        |receipt: &str| envelope(KEY, &plaintext(receipt, "SALE", "2026-11-20T10:00:00Z", 1));

    // Guessing a 32-bit cverify: three tries, then 429 for the rest of the minute.
    let guess = |n: u32| genuine.replace("cverify=73707949", &format!("cverify={n:08X}"));
    for n in 0..3 {
        assert_eq!(
            status(post_as(&forger, &app, "/ins", None, &guess(n)).await),
            403
        );
    }
    let r = post_as(&forger, &app, "/ins", None, &guess(3)).await;
    assert_eq!(r.status(), 429);
    let wait: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&wait), "Retry-After: {wait}");
    // Even the right cverify gets no answer from this address now: no oracle.
    assert_eq!(
        status(post_as(&forger, &app, "/ins", None, &genuine).await),
        429
    );
    // Every other failure from it is a 429 now, whatever its form…
    for (path, body) in [
        ("/ins", forged("LIMIT001")),
        ("/ins", "not an INS body".to_owned()),
        ("/ins/nosuch", real("LIMIT002")),
    ] {
        assert_eq!(
            status(post_as(&forger, &app, path, None, &body).await),
            429,
            "{path} {body}"
        );
    }
    // …but an envelope cannot be guessed, so a genuine one is still checked
    // and stored: a forger sharing ClickBank's address cannot lock it out.
    assert_eq!(
        status(post_as(&forger, &app, "/ins", None, &real("LIMIT003")).await),
        200
    );

    // Another address is not touched by any of it.
    assert_eq!(
        status(post_as(&other, &app, "/ins", None, &forged("LIMIT004")).await),
        403
    );
    assert_eq!(
        status(post_as(&other, &app, "/ins", None, &real("LIMIT005")).await),
        200
    );
    assert_eq!(
        status(post_as(&other, &app, "/ins", None, &genuine).await),
        200
    );

    // Behind a trusted proxy the limit is the forwarded client's.
    let (proxy, app_ref) = (&proxy, &app);
    let via_proxy = |client: &'static str, receipt: &'static str| {
        let body = forged(receipt);
        async move { status(post_as(proxy, app_ref, "/ins", Some(client), &body).await) }
    };
    for _ in 0..3 {
        assert_eq!(via_proxy("198.51.100.1", "LIMIT006").await, 403);
    }
    assert_eq!(via_proxy("198.51.100.1", "LIMIT006").await, 429);
    assert_eq!(
        via_proxy("198.51.100.2", "LIMIT007").await,
        403,
        "the proxy's other clients are not limited"
    );

    // Only the failures before each limit were kept: 3 + 1 + 3 + 1.
    let kept = async {
        loop {
            let rows = app.store.rejected_after(0, 1000).await.unwrap();
            if rows.len() >= 8 {
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                return app.store.rejected_after(0, 1000).await.unwrap();
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    };
    let rows = tokio::time::timeout(std::time::Duration::from_secs(10), kept)
        .await
        .expect("the refused posts are kept");
    let from = |ip: &str| {
        rows.iter()
            .filter(|r| r.source_ip.as_deref() == Some(ip))
            .count()
    };
    assert_eq!(rows.len(), 8);
    assert_eq!((from("127.0.0.1"), from("127.0.0.2")), (3, 1));
    assert_eq!((from("198.51.100.1"), from("198.51.100.2")), (3, 1));
    let text = app.scrape().await;
    assert!(
        text.contains(r#"kaching_notifications_total{account="",outcome="rate-limited"} 6"#),
        "{text}"
    );
    app.stop().await;
}

on_both_backends!(
    the_allowlist_without_trusted_proxies_ignores_forwarded_headers,
    the_allowlist_behind_a_trusted_proxy_uses_the_forwarded_client,
    a_per_account_allowlist_limits_only_that_account,
    failures_past_the_limit_get_429_from_that_address_only,
);
