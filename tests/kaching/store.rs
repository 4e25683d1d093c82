//! The store's write path directly: batches, copies within a batch, group
//! commit under concurrency, a bad row that must not fail its batch, and
//! values one backend could not store.

use std::sync::Arc;

use chrono::{SubsecRound as _, Utc};
use kaching::ins::{self, AccountKey, AccountKeys, AccountName, TransactionType};
use kaching::store::{NewNotification, Recorded, Store, StoreError, Writer};

use crate::on_both_backends;
use crate::support::{plaintext, Backend, TestApp, KEY};

/// Authenticates a plaintext the way the handler does, ready to store.
fn row(pt: &str) -> NewNotification {
    let keys = AccountKeys {
        name: AccountName::parse("acme").unwrap(),
        keys: vec![AccountKey::new(KEY.to_owned().into())],
        legacy_cverify: false,
        hmac_header: None,
    };
    let body = ins::encrypt(KEY, pt.as_bytes(), ins::random_iv());
    let auth = ins::authenticate(body.as_bytes(), &|_| None, &[&keys]).unwrap();
    NewNotification {
        account: auth.account,
        form: auth.form,
        notification: Arc::new(auth.notification),
        source_ip: None,
        received_at: Utc::now(),
        actions: Vec::new(),
        refund_risk: None,
        personal: None,
        email_index: None,
    }
}

async fn open(
    backend: Backend,
) -> Option<(Store, tempfile::TempDir, Option<crate::support::PgDatabase>)> {
    let dir = tempfile::tempdir().unwrap();
    let (settings, pg) = TestApp::settings(backend, &dir).await?;
    let store = Store::connect(&settings.database).await.unwrap();
    store.migrate().await.unwrap();
    Some((store, dir, pg))
}

async fn a_batch_stores_each_notification_once_and_counts_copies(backend: Backend) {
    let Some((store, _dir, _pg)) = open(backend).await else {
        return;
    };
    let t = "2026-11-20T10:00:00-08:00";
    let a1 = row(&plaintext("BATCH00A", "SALE", t, 1));
    let a2 = row(&plaintext("BATCH00A", "SALE", t, 2));
    let b = row(&plaintext("BATCH00B", "SALE", t, 1));
    let out = store.record_batch(&[a1, a2, b]).await.unwrap();
    let Recorded::New { id: a, .. } = out[0] else {
        panic!("{out:?}")
    };
    assert_eq!(
        out[1],
        Recorded::Duplicate {
            id: a,
            differs: false
        }
    );
    assert!(matches!(out[2], Recorded::New { id, .. } if id != a));

    // Next batch: a copy of an earlier commit, a changed copy, and a new one.
    let mut changed = plaintext("BATCH00A", "SALE", t, 3);
    changed = changed.replace("37.00", "38.00");
    let out = store
        .record_batch(&[
            row(&plaintext("BATCH00A", "SALE", t, 3)),
            row(&changed),
            row(&plaintext("BATCH00C", "SALE", t, 1)),
        ])
        .await
        .unwrap();
    assert_eq!(
        out[0],
        Recorded::Duplicate {
            id: a,
            differs: false
        }
    );
    assert_eq!(
        out[1],
        Recorded::Duplicate {
            id: a,
            differs: true
        }
    );
    assert!(matches!(out[2], Recorded::New { .. }));

    let rows = store.recent_notifications(10, None).await.unwrap();
    let dups: Vec<(String, i64)> = {
        let mut v: Vec<_> = rows
            .iter()
            .map(|r| (r.notification.receipt.to_string(), r.duplicates))
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        dups,
        [
            ("BATCH00A".to_owned(), 3),
            ("BATCH00B".to_owned(), 0),
            ("BATCH00C".to_owned(), 0)
        ]
    );
    store.close().await;
}

async fn group_commit_under_concurrency_stores_everything_exactly_once(backend: Backend) {
    let Some((store, _dir, _pg)) = open(backend).await else {
        return;
    };
    let (writer, mut tasks) = Writer::spawn(store.clone(), Default::default());
    let t = "2026-11-20T10:00:00-08:00";
    let mut calls = Vec::new();
    for i in 0..200 {
        // 100 distinct notifications, each sent twice (the second as a retry).
        let pt = plaintext(&format!("GROUP{:03}", i % 100), "SALE", t, 1 + i / 100);
        let writer = writer.clone();
        let r = row(&pt);
        calls.push(tokio::spawn(async move { writer.record(r).await }));
    }
    let mut new = 0;
    for c in calls {
        match c.await.unwrap().unwrap() {
            Recorded::New { .. } => new += 1,
            Recorded::Duplicate { differs, .. } => assert!(!differs),
        }
    }
    assert_eq!(new, 100);
    let rows = store.recent_notifications(1000, None).await.unwrap();
    assert_eq!(rows.len(), 100);
    assert!(rows.iter().all(|r| r.duplicates == 1));
    drop(writer);
    while tasks.join_next().await.is_some() {}
    store.close().await;
}

/// A row the database refuses (here a rule the test adds: no vendor named
/// `poison`) fails alone: its batch-mates are stored.
async fn a_row_the_database_refuses_fails_alone_not_its_batch(backend: Backend) {
    let Some((store, _dir, _pg)) = open(backend).await else {
        return;
    };
    let refuse = match backend {
        Backend::Sqlite => {
            "CREATE TRIGGER refuse_poison BEFORE INSERT ON notifications \
             WHEN NEW.vendor = 'poison' BEGIN SELECT RAISE(ABORT, 'poison'); END"
        }
        Backend::Postgres => {
            "ALTER TABLE notifications ADD CONSTRAINT refuse_poison CHECK (vendor <> 'poison')"
        }
    };
    match &store {
        Store::Sqlite(s) => sqlx::query(refuse).execute(s.pool()).await.map(drop),
        Store::Postgres(s) => sqlx::query(refuse).execute(s.pool()).await.map(drop),
    }
    .unwrap();
    let (writer, _tasks) = Writer::spawn(store.clone(), Default::default());
    let t = "2026-11-20T10:00:00-08:00";
    let poisoned = plaintext("POISON01", "SALE", t, 1).replace("acmevendor", "poison");
    // Stored together, the bad row fails the whole transaction...
    let together = store
        .record_batch(&[row(&plaintext("FINE9999", "SALE", t, 1)), row(&poisoned)])
        .await;
    assert!(together.is_err());
    assert!(store
        .recent_notifications(10, None)
        .await
        .unwrap()
        .is_empty());
    // ...so the writer retries a failed batch row by row.
    let mut calls = Vec::new();
    for i in 0..50 {
        let pt = if i == 25 {
            poisoned.clone()
        } else {
            plaintext(&format!("FINE{i:04}"), "SALE", t, 1)
        };
        let writer = writer.clone();
        let r = row(&pt);
        calls.push(tokio::spawn(async move { writer.record(r).await }));
    }
    let results: Vec<_> = futures_join(calls).await;
    assert_eq!(results.iter().filter(|r| r.is_err()).count(), 1);
    assert_eq!(
        store.recent_notifications(100, None).await.unwrap().len(),
        49
    );
    // The store still takes commits after the refusal.
    let after = store
        .record(row(&plaintext("AFTER001", "SALE", t, 1)))
        .await;
    assert!(matches!(after, Ok(Recorded::New { .. })), "{after:?}");
}

/// Postgres cannot keep NUL in `text`; a notification holding one (here in
/// `vendor`, as `\u0000` in its JSON) is stored all the same, on both
/// backends alike: U+FFFD in the typed column, the payload exactly as sent.
async fn a_notification_holding_nul_is_stored(backend: Backend) {
    let Some((store, _dir, _pg)) = open(backend).await else {
        return;
    };
    let t = "2026-11-20T10:00:00-08:00";
    let pt = plaintext("NULBYTE1", "SALE", t, 1).replace("acmevendor", "acme\\u0000vendor");
    let out = store.record(row(&pt)).await;
    assert!(matches!(out, Ok(Recorded::New { .. })), "{out:?}");
    // A retry is a duplicate of it, not a second row.
    let again = store.record(row(&pt)).await;
    assert!(
        matches!(again, Ok(Recorded::Duplicate { differs: false, .. })),
        "{again:?}"
    );
    let rows = store.recent_notifications(10, None).await.unwrap();
    assert_eq!(rows.len(), 1);
    let n = &rows[0].notification;
    assert_eq!(n.vendor.as_deref(), Some("acme\u{FFFD}vendor"));
    assert_eq!(n.payload, pt);
    assert_eq!(rows[0].duplicates, 1);
}

async fn a_stored_notification_reads_back_with_the_typed_fields_it_was_stored_with(
    backend: Backend,
) {
    let Some((store, _dir, _pg)) = open(backend).await else {
        return;
    };
    let t = "2026-11-20T10:00:00-08:00";
    for (receipt, kind) in [("TRIP0001", "SALE"), ("TRIP0002", "CUSTOMER_CHANGE")] {
        let mut new = row(&plaintext(receipt, kind, t, 1));
        new.source_ip = Some("203.0.113.9".parse().unwrap());
        // Postgres keeps microseconds.
        new.received_at = new.received_at.trunc_subsecs(6);
        let Recorded::New { id, .. } = store.record(new.clone()).await.unwrap() else {
            panic!("{receipt} is new")
        };
        let got = store.notification(id).await.unwrap().unwrap();
        assert_eq!(got.id, id);
        assert_eq!(got.account, new.account);
        assert_eq!(got.form, new.form);
        assert_eq!(got.source_ip, new.source_ip);
        assert_eq!(got.received_at, new.received_at);
        assert_eq!((got.duplicates, got.last_seen_at), (0, new.received_at));
        assert_eq!(got.notification, *new.notification, "{receipt}");
        assert_eq!(
            got.notification.transaction_type,
            TransactionType::parse(kind).unwrap()
        );
        // Exact, scale included: 37.00, not 37.
        let amounts = |n: &ins::Notification| {
            [
                n.total_account_amount,
                n.total_order_amount,
                n.total_tax_amount,
                n.total_shipping_amount,
            ]
            .map(|a| a.map(|a| a.to_string()))
        };
        assert_eq!(amounts(&got.notification), amounts(&new.notification));
        assert_eq!(
            got.notification.total_account_amount.unwrap().to_string(),
            "37.00"
        );
    }
}

async fn a_stored_value_that_no_longer_parses_is_an_error_naming_its_column(backend: Backend) {
    let Some((store, _dir, _pg)) = open(backend).await else {
        return;
    };
    let new = row(&plaintext(
        "BADV0001",
        "SALE",
        "2026-11-20T10:00:00-08:00",
        1,
    ));
    let Recorded::New { id, .. } = store.record(new).await.unwrap() else {
        panic!("new")
    };
    let cases = [
        ("receipt", "'NOT A RECEIPT'", "'BADV0001'"),
        ("role", "'vendor'", "'VENDOR'"),
        ("transaction_type", "''", "'SALE'"),
        ("account", "'a/b'", "'acme'"),
        ("form", "'carrier-pigeon'", "'envelope'"),
        ("source_ip", "'somewhere'", "NULL"),
    ];
    for (column, bad, good) in cases {
        let set = |v: &str| format!("UPDATE notifications SET {column} = {v} WHERE id = {id}");
        exec(&store, &set(bad)).await;
        match store.notification(id).await {
            Err(StoreError::BadValue { column: c, .. }) => assert_eq!(c, column),
            other => panic!("{column}: {other:?}"),
        }
        assert!(
            store.recent_notifications(10, None).await.is_err(),
            "{column}"
        );
        exec(&store, &set(good)).await;
        assert!(store.notification(id).await.unwrap().is_some(), "{column}");
    }
}

async fn exec(store: &Store, sql: &str) {
    match store {
        Store::Postgres(s) => drop(sqlx::query(sql).execute(s.pool()).await.unwrap()),
        Store::Sqlite(s) => drop(sqlx::query(sql).execute(s.pool()).await.unwrap()),
    }
}

on_both_backends!(
    a_stored_notification_reads_back_with_the_typed_fields_it_was_stored_with,
    a_stored_value_that_no_longer_parses_is_an_error_naming_its_column,
    a_batch_stores_each_notification_once_and_counts_copies,
    group_commit_under_concurrency_stores_everything_exactly_once,
    a_row_the_database_refuses_fails_alone_not_its_batch,
    a_notification_holding_nul_is_stored,
);

async fn futures_join<T: Send + 'static>(handles: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}
