//! The outbox beyond one notification and one configuration: runs of
//! actions the configuration lost (orphaned, kept, run again once the action
//! is back), runs about another subject (an alert), and rows written before
//! migration 0004 that must survive it.

use std::time::Duration;

use chrono::Utc;
use kaching::config::{ActionSettings, RetrySettings};
use kaching::store::{AlertPhase, AlertSubject, Firing, NewAlert, RunRow, RunStatus, Store};

use crate::on_both_backends;
use crate::support::{sale, Backend, TestApp, KEY};
use crate::target::eventually;

const WAIT: Duration = Duration::from_secs(15);

/// Runs `$body` with `$pool` bound to the store's pool, on either backend.
macro_rules! on_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match $store {
            Store::Postgres(s) => {
                let $pool = s.pool();
                $body
            }
            Store::Sqlite(s) => {
                let $pool = s.pool();
                $body
            }
        }
    };
}

fn log_action(name: &str) -> ActionSettings {
    ActionSettings {
        name: name.into(),
        kind: "log".into(),
        ..Default::default()
    }
}

async fn all_runs(store: &Store) -> Vec<RunRow> {
    store.list_runs(None, None, 1000).await.unwrap()
}

/// `kaching actions list` against the app's database, with `actions` (TOML) configured.
fn actions_list(app: &TestApp, actions: &str) -> String {
    let path = app.dir.path().join("list.toml");
    let toml = format!(
        "[database]\nurl = \"{}\"\n[[accounts]]\nname = \"acme\"\nsecret_key = \"{KEY}\"\n{actions}",
        app.settings.database.url.expose()
    );
    std::fs::write(&path, toml).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kaching"))
        .args(["--config", path.to_str().unwrap(), "actions", "list"])
        .env_remove("KACHING_CONFIG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn a_run_whose_action_was_removed_is_kept_not_run_and_runs_once_the_action_is_back(
    backend: Backend,
) {
    // `gone` fails and retries an hour later: its run is pending when the
    // configuration loses it.
    let Some(app) = TestApp::spawn(backend, |s| {
        s.actions.push(ActionSettings {
            name: "gone".into(),
            kind: "command".into(),
            program: Some("false".into()),
            retry: RetrySettings {
                backoff_ms: 3_600_000,
                ..Default::default()
            },
            ..Default::default()
        });
    })
    .await
    else {
        return;
    };
    assert_eq!(app.post_ins(sale("ORPH0001")).await.0, 200);
    let run = eventually(WAIT, "the first attempt to fail", || async {
        all_runs(&app.store)
            .await
            .into_iter()
            .find(|r| r.status == "pending" && r.attempts == 1)
    })
    .await;
    assert_eq!(run.action, "gone");

    // Restarted without it (another action keeps the dispatcher busy).
    let app = app.stop().await;
    let mut settings = app.settings;
    settings.actions = vec![log_action("other")];
    let app = TestApp::start(settings, app.dir, app.pg).await;
    // Due now: it would run at once if its action were there.
    assert_eq!(
        app.store.retry_runs(&[run.id], Utc::now()).await.unwrap(),
        1
    );
    tokio::time::sleep(Duration::from_millis(2500)).await; // two polls
    let kept = all_runs(&app.store).await;
    assert_eq!(kept.len(), 1, "{kept:#?}");
    assert_eq!(
        (kept[0].id, kept[0].status.as_str(), kept[0].attempts),
        (run.id, "pending", 0),
        "kept, and not executed"
    );
    let listed = actions_list(&app, "[[actions]]\nname = \"other\"\nkind = \"log\"\n");
    assert!(
        listed.contains("pending (orphaned: no such action)"),
        "{listed}"
    );
    assert!(listed.contains("ORPH0001"), "{listed}");
    let listed = actions_list(
        &app,
        "[[actions]]\nname = \"gone\"\nkind = \"log\"\nenabled = false\n",
    );
    assert!(
        listed.contains("pending (orphaned: action disabled)"),
        "{listed}"
    );
    let listed = actions_list(&app, "[[actions]]\nname = \"gone\"\nkind = \"log\"\n");
    assert!(!listed.contains("orphaned"), "{listed}");

    // The action is back (as another kind: the name is what counts): it runs.
    let app = app.stop().await;
    let mut settings = app.settings;
    settings.actions = vec![log_action("gone")];
    let app = TestApp::start(settings, app.dir, app.pg).await;
    eventually(WAIT, "the kept run to be done", || async {
        all_runs(&app.store)
            .await
            .into_iter()
            .find(|r| r.id == run.id && r.status == "done" && r.attempts == 1)
    })
    .await;
    app.stop().await;
}

async fn a_run_about_an_alert_is_claimed_executed_and_recorded_done(backend: Backend) {
    let Some(app) = TestApp::spawn(backend, |s| s.actions.push(log_action("ops"))).await else {
        return;
    };
    let firing = Firing {
        alert: NewAlert {
            rule: "disk".into(),
            kind: "dead_letter",
            account: None,
            subject: "the disk".into(),
            one_shot: true,
            title: "The disk is almost full".into(),
            message: "…".into(),
            details: serde_json::json!({}),
        },
        notify: vec!["ops".into()],
        quiet_since: Utc::now(),
    };
    let (alert_id, runs) = app
        .store
        .fire_alert(&firing, Utc::now())
        .await
        .unwrap()
        .unwrap();
    // Open already: firing it again writes nothing.
    assert_eq!(
        app.store.fire_alert(&firing, Utc::now()).await.unwrap(),
        None
    );
    let id = runs[0].id;
    let alert = AlertSubject {
        id: alert_id,
        event: AlertPhase::Fired,
    };
    let done = eventually(WAIT, "the alert's run to be done", || async {
        app.store
            .list_runs(Some(RunStatus::Done), Some("ops"), 10)
            .await
            .unwrap()
            .into_iter()
            .find(|r| r.id == id)
    })
    .await;
    assert_eq!(
        (
            done.subject_kind.as_str(),
            done.notification_id,
            done.receipt.as_deref(),
            done.attempts,
            done.last_error.as_deref()
        ),
        ("alert", None, None, 1, None)
    );
    assert_eq!(done.subject_label(), format!("alert {alert_id}"));
    let stored: AlertSubject = serde_json::from_str(done.subject.as_deref().unwrap()).unwrap();
    assert_eq!(stored, alert);
    app.stop().await;
}

/// The migrations up to and including `last`, as a migrator of their own.
async fn migrator_up_to(
    backend: Backend,
    last: i64,
) -> (sqlx::migrate::Migrator, tempfile::TempDir) {
    let from = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(match backend {
        Backend::Sqlite => "migrations/sqlite",
        Backend::Postgres => "migrations/postgres",
    });
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&from).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        let version: i64 = name.split('_').next().unwrap().parse().unwrap();
        if version <= last {
            std::fs::copy(&path, dir.path().join(&name)).unwrap();
        }
    }
    let migrator = sqlx::migrate::Migrator::new(dir.path()).await.unwrap();
    (migrator, dir)
}

async fn runs_written_before_migration_4_keep_their_ids_actions_and_notifications(
    backend: Backend,
) {
    let dir = tempfile::tempdir().unwrap();
    let Some((settings, _pg)) = TestApp::settings(backend, &dir).await else {
        return;
    };
    let store = Store::connect(&settings.database).await.unwrap();
    let (old, _old_dir) = migrator_up_to(backend, 3).await;
    assert_eq!(old.iter().count(), 3);
    let t = Utc::now();
    const NOTIFICATION: &str = "INSERT INTO notifications (account, role, receipt, \
        transaction_type, transaction_time, attempt_count, form, payload, received_at, last_seen_at) \
        VALUES ('acme', 'VENDOR', 'MIGR0001', 'SALE', $1, 1, 'envelope', '{}', $1, $1) RETURNING id";
    const RUN: &str = "INSERT INTO action_runs (notification_id, action, status, attempts, \
        created_at, next_attempt_at, last_error) VALUES ($1, $2, $3, $4, $5, $5, $6) RETURNING id";
    let runs = [
        ("crm", "done", 1, None),
        ("mail", "failed", 5, Some("gave up after 5 attempts: 503")),
        ("crm", "pending", 0, None),
    ];
    let (notification, ids): (i64, Vec<i64>) = on_pool!(&store, pool => {
        old.run(pool).await.unwrap();
        let n: i64 = sqlx::query_scalar(NOTIFICATION).bind(t).fetch_one(pool).await.unwrap();
        let mut ids = Vec::new();
        for (action, status, attempts, error) in runs {
            ids.push(
                sqlx::query_scalar(RUN)
                    .bind(n)
                    .bind(action)
                    .bind(status)
                    .bind(attempts)
                    .bind(t)
                    .bind(error)
                    .fetch_one(pool)
                    .await
                    .unwrap(),
            );
        }
        // A deleted newest run: its id must not come back (SQLite AUTOINCREMENT).
        let last: i64 = sqlx::query_scalar(RUN)
            .bind(n)
            .bind("crm")
            .bind("done")
            .bind(1)
            .bind(t)
            .bind(None::<&str>)
            .fetch_one(pool)
            .await
            .unwrap();
        sqlx::query("DELETE FROM action_runs WHERE id = $1")
            .bind(last)
            .execute(pool)
            .await
            .unwrap();
        ids.push(last);
        (n, ids)
    });

    store.migrate().await.unwrap();
    let mut after = all_runs(&store).await;
    after.sort_by_key(|r| r.id);
    let got: Vec<_> = after
        .iter()
        .map(|r| {
            (
                r.id,
                r.action.as_str(),
                r.status.as_str(),
                r.attempts,
                r.last_error.as_deref(),
                r.subject_kind.as_str(),
                r.notification_id,
                r.subject.as_deref(),
                r.receipt.as_deref(),
            )
        })
        .collect();
    let want: Vec<_> = runs
        .iter()
        .zip(&ids)
        .map(|((action, status, attempts, error), id)| {
            (
                *id,
                *action,
                *status,
                *attempts,
                *error,
                "notification",
                Some(notification),
                None,
                Some("MIGR0001"),
            )
        })
        .collect();
    assert_eq!(got, want);

    // The migrated table works as before: new runs get new ids, the pending
    // one is claimed, and a run needs exactly one subject.
    let new = store
        .create_runs(&[notification], "crm", Utc::now())
        .await
        .unwrap();
    assert!(new[0] > ids[3], "{new:?} reuses an id of {ids:?}");
    let now = Utc::now();
    let claimed = store
        .claim_due("crm", 10, now, now + chrono::Duration::minutes(1))
        .await
        .unwrap();
    let mut claimed: Vec<i64> = claimed.iter().map(|c| c.id).collect();
    claimed.sort();
    assert_eq!(claimed, [ids[2], new[0]]);
    let neither = "INSERT INTO action_runs (subject_kind, action, created_at, next_attempt_at) \
        VALUES ('notification', 'crm', $1, $1)";
    let both = "INSERT INTO action_runs (subject_kind, notification_id, subject, action, \
        created_at, next_attempt_at) VALUES ('alert', $2, '{}', 'crm', $1, $1)";
    on_pool!(&store, pool => {
        let refused = sqlx::query(neither).bind(now).execute(pool).await;
        assert!(refused.is_err(), "a run about nothing");
        let refused = sqlx::query(both).bind(now).bind(notification).execute(pool).await;
        assert!(refused.is_err(), "a run about two subjects");
    });
    store.close().await;
}

on_both_backends!(
    a_run_whose_action_was_removed_is_kept_not_run_and_runs_once_the_action_is_back,
    a_run_about_an_alert_is_claimed_executed_and_recorded_done,
    runs_written_before_migration_4_keep_their_ids_actions_and_notifications,
);
