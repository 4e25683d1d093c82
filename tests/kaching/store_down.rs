//! When the store cannot commit: 503 with Retry-After, never 200; then recovery.

use std::time::Duration;

use sqlx::Connection;

use crate::on_both_backends;
use crate::support::{sale, Backend, TestApp};

async fn a_store_that_cannot_commit_gets_503_then_recovers(backend: Backend) {
    let Some(app) = TestApp::spawn(backend, |s| s.database.commit_timeout_ms = 700).await else {
        return;
    };
    assert_eq!(app.post_ins(sale("DOWN0001")).await.0, 200);

    // Break the store for real.
    let mut sqlite_lock = None;
    match backend {
        Backend::Sqlite => {
            // Another process holding the write lock is what a stuck writer looks like.
            let path = app.dir.path().join("kaching.db");
            let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
                .await
                .unwrap();
            sqlx::query("BEGIN EXCLUSIVE")
                .execute(&mut c)
                .await
                .unwrap();
            sqlite_lock = Some(c);
        }
        Backend::Postgres => {
            let db = app.pg.as_ref().unwrap();
            db.admin(&format!(
                "ALTER DATABASE {} ALLOW_CONNECTIONS false",
                db.name
            ))
            .await;
            db.admin(&format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{}'",
                db.name
            ))
            .await;
        }
    }

    let r = app.post("/ins", sale("DOWN0002")).await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().get("retry-after").is_some());
    if backend == Backend::Postgres {
        let ready = app
            .client
            .get(format!("{}/readyz", app.base))
            .send()
            .await
            .unwrap();
        assert_eq!(ready.status(), 503);
    }

    // Repair it; ClickBank's retry of the same notification now lands.
    match backend {
        Backend::Sqlite => {
            let mut c = sqlite_lock.take().unwrap();
            sqlx::query("ROLLBACK").execute(&mut c).await.unwrap();
            c.close().await.unwrap();
        }
        Backend::Postgres => {
            let db = app.pg.as_ref().unwrap();
            db.admin(&format!(
                "ALTER DATABASE {} ALLOW_CONNECTIONS true",
                db.name
            ))
            .await;
        }
    }
    let mut status = 0;
    for _ in 0..20 {
        status = app.post_ins(sale("DOWN0002")).await.0;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(status, 200);
    let mut receipts: Vec<String> = app
        .rows()
        .await
        .into_iter()
        .map(|r| r.notification.receipt.to_string())
        .collect();
    receipts.sort();
    assert_eq!(receipts, ["DOWN0001", "DOWN0002"]);
    app.stop().await;
}

on_both_backends!(a_store_that_cannot_commit_gets_503_then_recovers);
