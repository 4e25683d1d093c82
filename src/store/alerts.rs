//! What the alert rules store: the alerts themselves (fired with their
//! delivery runs in one transaction, so an alert is never lost and never
//! delivered twice), when each rule was first configured, the JSON paths
//! schema_drift learned, and the reads the timer rules evaluate.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{on_pool, relaxed_tx, text, NewRun, Store, StoreError};

/// An alert about to fire.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAlert {
    /// The `[[alerts]]` name.
    pub rule: Arc<str>,
    pub kind: &'static str,
    pub account: Option<String>,
    /// Stable across evaluations: one open alert per (rule, subject).
    pub subject: String,
    /// An event that never resolves (a chargeback, a new field).
    pub one_shot: bool,
    pub title: String,
    pub message: String,
    pub details: serde_json::Value,
}

/// A [`NewAlert`] with what firing it needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Firing {
    pub alert: NewAlert,
    /// The actions that deliver it.
    pub notify: Vec<Arc<str>>,
    /// A subject whose alert resolved after this does not fire again yet.
    pub quiet_since: DateTime<Utc>,
}

/// Which delivery of an alert a run makes: its firing or its resolution.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertPhase {
    #[default]
    Fired,
    Resolved,
}

/// What an alert's run stores in `action_runs.subject`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertSubject {
    pub id: i64,
    #[serde(default)]
    pub event: AlertPhase,
}

/// An alert as stored.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, Serialize)]
pub struct AlertRow {
    pub id: i64,
    pub rule: String,
    pub kind: String,
    pub account: Option<String>,
    pub subject: String,
    /// firing, resolved or fired.
    pub state: String,
    pub title: String,
    pub message: String,
    /// JSON object (serialised as the object itself).
    #[serde(serialize_with = "as_json")]
    pub details: String,
    pub fired_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub resolved_message: Option<String>,
}

fn as_json<S: serde::Serializer>(text: &str, s: S) -> Result<S::Ok, S::Error> {
    serde_json::from_str::<serde_json::Value>(text)
        .unwrap_or(serde_json::Value::Null)
        .serialize(s)
}

const ALERT_COLUMNS: &str = "id, rule, kind, account, subject, state, title, message, details, \
    fired_at, resolved_at, resolved_message";

/// Inserts the alert unless its subject is open already (the unique index)
/// or resolved since `quiet_since` (the cooldown), and its runs when it did.
const FIRE: &str = "INSERT INTO alerts (rule, kind, account, subject, state, title, message, \
        details, fired_at) \
    SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9 \
    WHERE NOT EXISTS (SELECT 1 FROM alerts WHERE rule = $1 AND subject = $4 \
        AND state = 'resolved' AND resolved_at > $10) \
    ON CONFLICT DO NOTHING RETURNING id";

const RUN: &str = "INSERT INTO action_runs (subject_kind, subject, action, created_at, \
        next_attempt_at) VALUES ('alert', $1, $2, $3, $3) RETURNING id";

/// Fires `$firing` (a `&Firing`) in the transaction `$tx`: the alert's id
/// and its runs, or `None` when it was open or cooling down. A macro, so
/// that the projector's transaction can fire too, on either backend.
macro_rules! fire_in {
    ($tx:ident, $firing:expr, $now:expr) => {{
        let f: &$crate::store::Firing = $firing;
        let a = &f.alert;
        let details = a.details.to_string();
        let id: Option<i64> = sqlx::query_scalar($crate::store::alerts::FIRE_SQL)
            .bind(&*a.rule)
            .bind(a.kind)
            .bind(a.account.as_deref())
            .bind($crate::store::text(&a.subject).into_owned())
            .bind(if a.one_shot { "fired" } else { "firing" })
            .bind($crate::store::text(&a.title).into_owned())
            .bind($crate::store::text(&a.message).into_owned())
            .bind(details)
            .bind($now)
            .bind(f.quiet_since)
            .fetch_optional(&mut *$tx)
            .await?;
        let mut runs = Vec::new();
        if let Some(id) = id {
            let subject = $crate::store::alerts::subject_json(id, $crate::store::AlertPhase::Fired);
            for action in &f.notify {
                let run: i64 = sqlx::query_scalar($crate::store::alerts::RUN_SQL)
                    .bind(&subject)
                    .bind(&**action)
                    .bind($now)
                    .fetch_one(&mut *$tx)
                    .await?;
                runs.push($crate::store::NewRun {
                    id: run,
                    action: action.clone(),
                    claimed_until: None,
                });
            }
        }
        id.map(|id| (id, runs))
    }};
}
pub(crate) use fire_in;

pub(crate) const FIRE_SQL: &str = FIRE;
pub(crate) const RUN_SQL: &str = RUN;

pub(crate) fn subject_json(id: i64, event: AlertPhase) -> String {
    // Two plain fields: serialising cannot fail.
    serde_json::to_string(&AlertSubject { id, event }).unwrap_or_default()
}

/// A path schema_drift has learned.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SchemaPath {
    pub account: String,
    pub version: String,
    pub transaction_type: String,
    pub path: String,
    /// Comma-separated, sorted.
    pub kinds: String,
    /// Notifications that had it (in a projection: how many more).
    pub seen: i64,
}

/// One hour's sums per account (`report_hourly`); in a projection, what to add.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct HourRow {
    pub account: String,
    pub hour: String,
    pub sales: i64,
    pub tests: i64,
    pub others: i64,
    pub last_sale_at: Option<DateTime<Utc>>,
    pub last_test_at: Option<DateTime<Utc>>,
}

/// A day of one breakdown value, for refund_spike.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct RefundDay {
    pub value: String,
    pub label: String,
    pub day: String,
    pub sales: i64,
    pub refunds: i64,
    pub cohort_refunds: i64,
}

/// A rejected post, as rejected_surge counts it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct RejectedSeen {
    pub account_hint: Option<String>,
    pub received_at: DateTime<Utc>,
    pub reason: String,
}

/// A run that reached `failed`, for dead_letter.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct FailedRun {
    pub id: i64,
    pub action: String,
    pub notification_id: Option<i64>,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub finished_at: Option<DateTime<Utc>>,
    pub account: Option<String>,
    pub receipt: Option<String>,
    pub transaction_type: Option<String>,
}

impl Store {
    /// Fires an alert and creates its delivery runs, in one transaction.
    /// `None`: its subject is open already, or resolved within the
    /// cooldown; nothing was written.
    pub async fn fire_alert(
        &self,
        firing: &Firing,
        now: DateTime<Utc>,
    ) -> Result<Option<(i64, Vec<NewRun>)>, StoreError> {
        Ok(relaxed_tx!(self, tx => fire_in!(tx, firing, now)))
    }

    /// Resolves a firing alert and creates the runs that deliver the
    /// resolution. `None`: it was not firing (another daemon resolved it).
    pub async fn resolve_alert(
        &self,
        id: i64,
        message: &str,
        notify: &[Arc<str>],
        now: DateTime<Utc>,
    ) -> Result<Option<Vec<NewRun>>, StoreError> {
        Ok(relaxed_tx!(self, tx => {
            let done: Option<i64> = sqlx::query_scalar(
                "UPDATE alerts SET state = 'resolved', resolved_at = $2, resolved_message = $3 \
                 WHERE id = $1 AND state = 'firing' RETURNING id",
            )
            .bind(id)
            .bind(now)
            .bind(text(message).into_owned())
            .fetch_optional(&mut *tx)
            .await?;
            match done {
                None => None,
                Some(_) => {
                    let subject = subject_json(id, AlertPhase::Resolved);
                    let mut runs = Vec::new();
                    for action in notify {
                        let run: i64 = sqlx::query_scalar(RUN)
                            .bind(&subject)
                            .bind(&**action)
                            .bind(now)
                            .fetch_one(&mut *tx)
                            .await?;
                        runs.push(NewRun { id: run, action: action.clone(), claimed_until: None });
                    }
                    Some(runs)
                }
            }
        }))
    }

    pub async fn alert(&self, id: i64) -> Result<Option<AlertRow>, StoreError> {
        let sql = format!("SELECT {ALERT_COLUMNS} FROM alerts WHERE id = $1");
        on_pool!(self, pool => Ok(sqlx::query_as(&sql).bind(id).fetch_optional(pool).await?))
    }

    /// The firing alerts of `rule`.
    pub async fn firing_alerts(&self, rule: &str) -> Result<Vec<AlertRow>, StoreError> {
        let sql =
            format!("SELECT {ALERT_COLUMNS} FROM alerts WHERE rule = $1 AND state = 'firing'");
        on_pool!(self, pool => Ok(sqlx::query_as(&sql).bind(rule).fetch_all(pool).await?))
    }

    /// Alerts, newest first: the firing ones only, or all.
    pub async fn list_alerts(
        &self,
        firing_only: bool,
        limit: i64,
    ) -> Result<Vec<AlertRow>, StoreError> {
        let sql = format!(
            "SELECT {ALERT_COLUMNS} FROM alerts WHERE ($1 = 0 OR state = 'firing') \
             ORDER BY id DESC LIMIT $2"
        );
        on_pool!(self, pool => Ok(sqlx::query_as(&sql)
            .bind(i64::from(firing_only))
            .bind(limit)
            .fetch_all(pool)
            .await?))
    }

    /// Records the rules configured now (a rule keeps the time it was first
    /// seen) and returns when each was first seen.
    pub async fn register_alert_rules(
        &self,
        rules: &[(&str, &str)],
        now: DateTime<Utc>,
    ) -> Result<HashMap<String, DateTime<Utc>>, StoreError> {
        relaxed_tx!(self, tx => {
            for (name, kind) in rules {
                sqlx::query(
                    "INSERT INTO alert_rules (name, kind, first_seen) VALUES ($1, $2, $3) \
                     ON CONFLICT (name) DO NOTHING",
                )
                .bind(*name)
                .bind(*kind)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
        });
        self.alert_rules_seen().await
    }

    /// When each rule was first seen.
    pub async fn alert_rules_seen(&self) -> Result<HashMap<String, DateTime<Utc>>, StoreError> {
        let rows: Vec<(String, DateTime<Utc>)> = on_pool!(self, pool => sqlx::query_as(
            "SELECT name, first_seen FROM alert_rules"
        )
        .fetch_all(pool)
        .await?);
        Ok(rows.into_iter().collect())
    }

    /// What schema_drift learned for these accounts.
    pub async fn learned_schema(&self, accounts: &[String]) -> Result<Vec<SchemaPath>, StoreError> {
        let list = serde_json::to_string(accounts).unwrap_or_else(|_| "[]".into());
        let sql = match self {
            Store::Postgres(_) => {
                "SELECT account, version, transaction_type, path, kinds, seen FROM schema_paths \
                 WHERE account IN (SELECT jsonb_array_elements_text(CAST($1 AS jsonb)))"
            }
            Store::Sqlite(_) => {
                "SELECT account, version, transaction_type, path, kinds, seen FROM schema_paths \
                 WHERE account IN (SELECT value FROM json_each($1))"
            }
        };
        on_pool!(self, pool => Ok(sqlx::query_as(sql).bind(list).fetch_all(pool).await?))
    }

    /// Per day and breakdown value of `dim` since `since_day` (inclusive):
    /// sales, refunds (by their own day) and the day's cohort refunds.
    pub async fn refund_days(
        &self,
        account: &str,
        dim: &str,
        since_day: &str,
    ) -> Result<Vec<RefundDay>, StoreError> {
        on_pool!(self, pool => Ok(sqlx::query_as(
            "SELECT value, MAX(label) AS label, day, CAST(SUM(sales) AS BIGINT) AS sales, \
                 CAST(SUM(refunds) AS BIGINT) AS refunds, \
                 CAST(SUM(cohort_refunds) AS BIGINT) AS cohort_refunds \
             FROM report_daily WHERE dim = $1 AND day >= $2 AND account = $3 \
             GROUP BY value, day ORDER BY value, day",
        )
        .bind(dim)
        .bind(since_day)
        .bind(account)
        .fetch_all(pool)
        .await?))
    }

    /// (sale day, refund day, refunds) of the account's refunds dated since
    /// `since_day`, matched to their sale by receipt.
    pub async fn refund_ages(
        &self,
        account: &str,
        since_day: &str,
    ) -> Result<Vec<(String, String, i64)>, StoreError> {
        on_pool!(self, pool => Ok(sqlx::query_as(
            "SELECT s.day, r.day, CAST(COUNT(*) AS BIGINT) FROM report_facts r \
             JOIN report_facts s ON s.receipt = r.sale_receipt AND s.account = r.account \
                 AND s.kind = 'sale' \
             WHERE r.kind = 'refund' AND r.day >= $1 AND r.account = $2 \
             GROUP BY s.day, r.day",
        )
        .bind(since_day)
        .bind(account)
        .fetch_all(pool)
        .await?))
    }

    /// Chargebacks and sales of the account dated since `since_day`.
    pub async fn chargebacks_and_sales(
        &self,
        account: &str,
        since_day: &str,
    ) -> Result<(i64, i64), StoreError> {
        on_pool!(self, pool => Ok(sqlx::query_as(
            "SELECT CAST(COALESCE(SUM(chargebacks), 0) AS BIGINT), \
                 CAST(COALESCE(SUM(sales), 0) AS BIGINT) \
             FROM report_daily WHERE dim = 'all' AND day >= $1 AND account = $2",
        )
        .bind(since_day)
        .bind(account)
        .fetch_one(pool)
        .await?))
    }

    /// The account's hours since `since_hour` (inclusive, `YYYY-MM-DDTHH`).
    pub async fn hours(&self, account: &str, since_hour: &str) -> Result<Vec<HourRow>, StoreError> {
        on_pool!(self, pool => Ok(sqlx::query_as(
            "SELECT account, hour, sales, tests, others, last_sale_at, last_test_at \
             FROM report_hourly WHERE account = $1 AND hour >= $2 ORDER BY hour",
        )
        .bind(account)
        .bind(since_hour)
        .fetch_all(pool)
        .await?))
    }

    /// The account's latest sale, ever.
    pub async fn last_sale(&self, account: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
        on_pool!(self, pool => Ok(sqlx::query_scalar(
            "SELECT MAX(last_sale_at) FROM report_hourly WHERE account = $1",
        )
        .bind(account)
        .fetch_one(pool)
        .await?))
    }

    /// Rejected posts received since `since`.
    pub async fn rejected_since(
        &self,
        since: DateTime<Utc>,
    ) -> Result<Vec<RejectedSeen>, StoreError> {
        on_pool!(self, pool => Ok(sqlx::query_as(
            "SELECT account_hint, received_at, reason FROM rejected WHERE received_at >= $1",
        )
        .bind(since)
        .fetch_all(pool)
        .await?))
    }

    /// Notification runs that failed since `since`.
    pub async fn failed_runs_since(
        &self,
        since: DateTime<Utc>,
    ) -> Result<Vec<FailedRun>, StoreError> {
        on_pool!(self, pool => Ok(sqlx::query_as(
            "SELECT r.id, r.action, r.notification_id, r.attempts, r.last_error, r.finished_at, \
                 n.account, n.receipt, n.transaction_type \
             FROM action_runs r LEFT JOIN notifications n ON n.id = r.notification_id \
             WHERE r.status = 'failed' AND r.finished_at >= $1 AND r.subject_kind = 'notification' \
             ORDER BY r.id LIMIT 1000",
        )
        .bind(since)
        .fetch_all(pool)
        .await?))
    }
}
