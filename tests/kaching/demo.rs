//! `kaching demo`: the real binary writes its seeded history through the
//! pipeline; what it stores matches the library's `history`.

use std::collections::HashSet;
use std::process::Command;

use chrono::{NaiveDate, NaiveTime};
use kaching::store::Store;

use crate::on_both_backends;
use crate::support::{Backend, TestApp, KEY};

fn demo(config: &std::path::Path) -> (String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kaching"))
        .args(["--config", config.to_str().unwrap()])
        .args(["demo", "--days", "30", "--seed", "7", "--end", "2026-06-30"])
        .env_remove("KACHING_CONFIG")
        .output()
        .expect("run kaching demo");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    (stdout, stderr)
}

async fn demo_stores_each_generated_notification_once_and_retries_as_duplicates(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some((settings, _pg)) = TestApp::settings(backend, &dir).await else {
        return;
    };
    // `[admin]` and `[tls]` stay at their defaults: `demo` serves nothing.
    let config = dir.path().join("kaching.toml");
    std::fs::write(
        &config,
        format!(
            "[database]\nurl = \"{}\"\n[[accounts]]\nname = \"acme\"\nsecret_key = \"{KEY}\"\n",
            settings.database.url.expose()
        ),
    )
    .unwrap();

    let end = NaiveDate::from_ymd_opt(2026, 7, 1)
        .unwrap()
        .and_time(NaiveTime::MIN)
        .and_utc();
    let posts = kaching::demo::history(7, 30, end);
    let distinct: HashSet<_> = posts.iter().map(|p| (&p.receipt, p.kind, p.time)).collect();
    let retries = posts.iter().filter(|p| p.attempt > 1).count();
    assert!(
        retries > 0 && distinct.len() > 500,
        "{retries} {}",
        distinct.len()
    );

    let (out, _) = demo(&config);
    assert!(
        out.contains(&format!(
            "stored {} new, {retries} duplicates",
            distinct.len()
        )),
        "{out}"
    );
    assert!(out.contains("refund spike"), "{out}");
    let store = Store::connect(&settings.database).await.unwrap();
    let rows = store.recent_notifications(100_000, None).await.unwrap();
    assert_eq!(rows.len(), distinct.len());
    let stored: HashSet<_> = rows
        .iter()
        .map(|r| {
            (
                r.notification.receipt.to_string(),
                r.notification.transaction_type.to_string(),
                r.notification.transaction_time,
            )
        })
        .collect();
    let expected: HashSet<_> = distinct
        .iter()
        .map(|(r, k, t)| (r.to_string(), k.to_string(), *t))
        .collect();
    assert_eq!(stored, expected);
    assert!(rows
        .iter()
        .all(|r| r.notification.attempt_count == 1
            && r.source_ip == Some(kaching::demo::DEMO_SOURCE)));
    let duplicates: i64 = rows.iter().map(|r| r.duplicates).sum();
    assert_eq!(duplicates, retries as i64);

    // The same history again: nothing new.
    let (out, _) = demo(&config);
    assert!(
        out.contains(&format!("stored 0 new, {} duplicates", posts.len())),
        "{out}"
    );
    let again = store.recent_notifications(100_000, None).await.unwrap();
    assert_eq!(again.len(), distinct.len());
    let duplicates: i64 = again.iter().map(|r| r.duplicates).sum();
    assert_eq!(duplicates, (retries + posts.len()) as i64);
    store.close().await;
}

on_both_backends!(demo_stores_each_generated_notification_once_and_retries_as_duplicates);
