//! Storage: one small interface over a Postgres and a SQLite implementation,
//! chosen by the URL scheme. The database is the truth: a notification is
//! acknowledged only after [`Store::record_batch`] has committed it, and the
//! unique dedup key in the schema (not the application) makes it exactly-once.
//! [`Writer`] batches concurrent requests into one commit (group commit);
//! `runs` holds the outbox of follow-up actions.
//!
//! Most SQL is shared: `$n` parameters work in both, times bind as
//! `DateTime<Utc>` in both (SQLite keeps sqlx's RFC 3339 text, which sorts
//! correctly), and amounts are read back `CAST(… AS TEXT)`. Only the batch
//! insert is written per backend.

pub(crate) mod alerts;
mod postgres;
mod privacy;
mod reconcile;
mod report;
mod risk;
mod runs;
mod sqlite;
mod tx;
mod writer;

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use crate::config::DatabaseSettings;
use crate::ins::{AccountName, BodyForm, Notification, Receipt, Role, TransactionType};

pub use self::alerts::{
    AlertPhase, AlertRow, AlertSubject, FailedRun, Firing, HourRow, NewAlert, RefundDay,
    RejectedSeen, SchemaPath,
};
pub use self::postgres::PgStore;
pub use self::privacy::{ClearRow, CustomerRow, SealedRow};
pub use self::reconcile::{ReconcileRunRow, StoredKey};
pub use self::report::{
    CohortRow, Counters, DailyKey, FactRow, ListedNotification, NotificationFilter, Projection,
    SaleFacts, SubscriptionChange, SumQuery, SumRow,
};
pub use self::risk::RiskModelRow;
pub use self::runs::{
    ActionRef, Claimed, NewRun, PendingRuns, RunOutcome, RunRow, RunStatus, RunSubject,
};
pub use self::sqlite::SqliteStore;
pub use self::writer::Writer;

/// Runs `$body` with `$pool` bound to the backend's pool: the body is
/// written once and type-checked against each backend.
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
pub(crate) use on_pool;

/// Runs `$body` (which uses `tx` as its executor) in a transaction whose
/// commit does not wait for the disk. Only for bookkeeping whose loss in a
/// crash merely repeats work: action run claims and outcomes (delivery is at
/// least once anyway) and kept rejected posts. It keeps those commits from
/// doubling the fsyncs the notifications' own commits wait for. On SQLite it
/// also queues on the in-process write lock, like every write.
macro_rules! relaxed_tx {
    ($store:expr, $tx:ident => $body:expr) => {
        match $store {
            Store::Postgres(s) => {
                let mut $tx = $crate::store::tx::PgTx::begin(
                    s.pool(),
                    "BEGIN; SET LOCAL synchronous_commit = off",
                )
                .await?;
                let out = $body;
                $tx.commit().await?;
                out
            }
            Store::Sqlite(s) => {
                let _write = s.write_lock().await;
                let mut $tx =
                    $crate::store::tx::SqliteTx::begin(s.relaxed_pool(), "BEGIN IMMEDIATE").await?;
                let out = $body;
                $tx.commit().await?;
                out
            }
        }
    };
}
pub(crate) use relaxed_tx;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("cannot migrate: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("the database did not commit within {0:?}")]
    Timeout(Duration),
    #[error("unsupported database url (want sqlite:// or postgres://)")]
    UnsupportedUrl,
    #[error("the store writer has stopped")]
    WriterStopped,
    #[error("the database returned no row for a notification of the batch")]
    MissingRow,
    /// A stored value the ins layer's constructor no longer accepts.
    #[error("the stored {column} does not parse: {reason}")]
    BadValue {
        column: &'static str,
        reason: String,
    },
    /// The connection broke during COMMIT and the server could not say in
    /// time whether it committed: the rows are neither acknowledged nor
    /// retried (ClickBank's retry will find them, or store them).
    #[error("the outcome of a COMMIT is unknown: {0}")]
    CommitUnknown(sqlx::Error),
    #[error("the latest commit of a notification failed")]
    Failing,
    /// The failure of the batch a row was part of.
    #[error("{0}")]
    Batch(Arc<StoreError>),
}

impl StoreError {
    /// True when the database refused something in the batch (a row it
    /// cannot store, a full disk): committing the rows one by one may save
    /// the others. False when the database could not be reached or the
    /// outcome is unknown: retrying would only delay the 503 (or, after an
    /// unknown COMMIT, count the batch's own rows as copies).
    pub fn worth_retrying_alone(&self) -> bool {
        matches!(self, StoreError::Database(sqlx::Error::Database(_)))
    }
}

/// A text column's value. Postgres cannot store NUL in `text`, and
/// ClickBank's fields can hold one (`\u0000` in JSON, `%00` in a legacy
/// post): it becomes U+FFFD, the replacement character, on both backends so
/// that both store the same. The JSON payload never holds a raw NUL (JSON
/// escapes it), so it is stored exactly as received.
pub(crate) fn text(s: &str) -> Cow<'_, str> {
    if s.contains('\0') {
        Cow::Owned(s.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(s)
    }
}

/// An amount as its exact text ("0.00"), as both backends are given it:
/// SQLite has no decimal type, and Postgres's `::numeric` of the text keeps
/// the scale, which sqlx's binary encoding of a zero Decimal drops (0.00 → 0).
pub(crate) fn decimal_text(d: Option<Decimal>) -> Option<String> {
    d.map(|d| d.to_string())
}

/// A notification that passed authentication, about to be stored. Owned,
/// so that it can wait in the [`Writer`]'s queue.
#[derive(Debug, Clone)]
pub struct NewNotification {
    pub account: AccountName,
    pub form: BodyForm,
    pub notification: Arc<Notification>,
    pub source_ip: Option<IpAddr>,
    pub received_at: DateTime<Utc>,
    /// The actions whose filter matches: each gets a run if the notification is new.
    pub actions: Vec<ActionRef>,
    /// A sale's refund-risk score, when a model is in force ([`crate::risk`]).
    pub refund_risk: Option<f64>,
    /// The personal data cut out of the payload, sealed ([`crate::privacy`]).
    pub personal: Option<String>,
    /// The blind index of the buyer's email.
    pub email_index: Option<String>,
}

impl NewNotification {
    /// The dedup key: (account, role, receipt, transaction type, transaction time).
    fn key(&self) -> (&str, &str, &str, &str, DateTime<Utc>) {
        let n = &self.notification;
        (
            self.account.as_str(),
            n.role.as_str(),
            n.receipt.as_str(),
            n.transaction_type.as_str(),
            n.transaction_time,
        )
    }
}

/// What storing one notification did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// First copy: a new row, and the action runs created with it.
    New { id: i64, runs: Vec<NewRun> },
    /// A copy of a stored notification (a ClickBank retry, a replay).
    /// `differs` is true when it differs from the stored one in more than
    /// `attemptCount`, which a genuine retry never does.
    Duplicate { id: i64, differs: bool },
}

/// One distinct notification of a batch, and how many copies of it the batch holds.
pub(crate) struct Unique<'a> {
    pub row: &'a NewNotification,
    pub copies: i64,
}

/// What the backend found for one [`Unique`].
#[derive(Debug)]
pub(crate) enum Upserted {
    /// Inserted, with `duplicates = copies - 1`, and its runs.
    Inserted(i64, Vec<NewRun>),
    /// Already stored (by an earlier commit): `duplicates += copies`. The stored payload.
    Existing(i64, String),
}

/// A post that failed authentication.
#[derive(Debug, Clone)]
pub struct NewRejected {
    pub received_at: DateTime<Utc>,
    pub source_ip: Option<IpAddr>,
    pub account_hint: Option<String>,
    pub reason: String,
    pub body: Vec<u8>,
    pub signature: Option<String>,
    /// `body` is the post sealed under the data key ([`crate::privacy`]).
    pub sealed: bool,
}

/// A stored notification, read back typed: the [`Notification`] the ins
/// layer parsed (role, receipt, transaction type, amounts…) and the row's
/// own metadata. What `kaching notifications`, the dispatcher, replay and
/// the tests see; nothing past the store re-parses a column.
#[derive(Debug, Clone)]
pub struct StoredNotification {
    pub id: i64,
    pub account: AccountName,
    pub form: BodyForm,
    pub notification: Notification,
    pub source_ip: Option<IpAddr>,
    pub received_at: DateTime<Utc>,
    pub duplicates: i64,
    pub last_seen_at: DateTime<Utc>,
    /// A sale's refund-risk score at receipt (see [`crate::risk`]).
    pub refund_risk: Option<f64>,
    /// Its personal data, sealed ([`crate::privacy`]); `None` when it has
    /// none, was stored unencrypted, or was erased.
    pub personal: Option<String>,
}

impl StoredNotification {
    /// The row `n` became (`id`) as it stands at its commit: what the
    /// dispatcher is handed with a new run instead of reading it back.
    pub fn committed(id: i64, n: &NewNotification) -> Self {
        Self {
            id,
            account: n.account.clone(),
            form: n.form,
            notification: (*n.notification).clone(),
            source_ip: n.source_ip,
            received_at: n.received_at,
            duplicates: 0,
            last_seen_at: n.received_at,
            refund_risk: n.refund_risk,
            personal: n.personal.clone(),
        }
    }
}

/// The columns of [`StoredNotification`], amounts as text (exact in both backends).
const NOTIFICATION_SELECT: &str = "\
SELECT id, account, role, receipt, transaction_type, transaction_time, vendor, affiliate, \
    CAST(total_account_amount AS TEXT) AS total_account_amount, \
    CAST(total_order_amount AS TEXT) AS total_order_amount, \
    CAST(total_tax_amount AS TEXT) AS total_tax_amount, \
    CAST(total_shipping_amount AS TEXT) AS total_shipping_amount, \
    currency, version, attempt_count, form, payload, source_ip, received_at, duplicates, last_seen_at, \
    refund_risk, customer_sealed \
FROM notifications";

/// A `notifications` row as both backends decode it: the one place columns
/// become a [`StoredNotification`] (see its `TryFrom`).
#[derive(sqlx::FromRow)]
struct NotificationRow {
    id: i64,
    account: String,
    role: String,
    receipt: String,
    transaction_type: String,
    transaction_time: DateTime<Utc>,
    vendor: Option<String>,
    affiliate: Option<String>,
    total_account_amount: Option<String>,
    total_order_amount: Option<String>,
    total_tax_amount: Option<String>,
    total_shipping_amount: Option<String>,
    currency: Option<String>,
    version: Option<String>,
    attempt_count: i32,
    form: String,
    payload: String,
    source_ip: Option<String>,
    received_at: DateTime<Utc>,
    duplicates: i64,
    last_seen_at: DateTime<Utc>,
    refund_risk: Option<f64>,
    customer_sealed: Option<String>,
}

/// Parses a stored value with the ins layer's own constructor; a value that
/// no longer parses (edited by hand, written by a later version) is an error
/// naming its column, never a panic and never silently accepted.
fn column<T>(
    column: &'static str,
    value: &str,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, StoreError> {
    parse(value).map_err(|reason| StoreError::BadValue { column, reason })
}

fn decimal(name: &'static str, s: Option<String>) -> Result<Option<Decimal>, StoreError> {
    s.map(|s| {
        column(name, &s, |s| {
            Decimal::from_str(s).map_err(|_| "not a decimal".to_owned())
        })
    })
    .transpose()
}

impl TryFrom<NotificationRow> for StoredNotification {
    type Error = StoreError;
    fn try_from(r: NotificationRow) -> Result<Self, StoreError> {
        Ok(StoredNotification {
            id: r.id,
            account: column("account", &r.account, AccountName::parse)?,
            form: column("form", &r.form, BodyForm::parse)?,
            notification: Notification {
                role: column("role", &r.role, Role::parse)?,
                receipt: column("receipt", &r.receipt, Receipt::parse)?,
                transaction_type: column(
                    "transaction_type",
                    &r.transaction_type,
                    TransactionType::parse,
                )?,
                transaction_time: r.transaction_time,
                vendor: r.vendor,
                affiliate: r.affiliate,
                total_account_amount: decimal("total_account_amount", r.total_account_amount)?,
                total_order_amount: decimal("total_order_amount", r.total_order_amount)?,
                total_tax_amount: decimal("total_tax_amount", r.total_tax_amount)?,
                total_shipping_amount: decimal("total_shipping_amount", r.total_shipping_amount)?,
                currency: r.currency,
                version: r.version,
                attempt_count: r.attempt_count,
                payload: r.payload,
            },
            source_ip: r
                .source_ip
                .map(|ip| {
                    column("source_ip", &ip, |s| {
                        IpAddr::from_str(s).map_err(|_| "not an IP address".to_owned())
                    })
                })
                .transpose()?,
            received_at: r.received_at,
            duplicates: r.duplicates,
            last_seen_at: r.last_seen_at,
            refund_risk: r.refund_risk,
            personal: r.customer_sealed,
        })
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RejectedRow {
    pub id: i64,
    pub received_at: DateTime<Utc>,
    pub source_ip: Option<String>,
    pub account_hint: Option<String>,
    pub reason: String,
    pub body: Vec<u8>,
    pub signature: Option<String>,
    pub sealed: bool,
}

/// The store, Postgres or SQLite. Cheap to clone (a pool handle).
#[derive(Clone, Debug)]
pub enum Store {
    Postgres(PgStore),
    Sqlite(SqliteStore),
}

impl Store {
    /// Connects (creating a SQLite file and its folder if missing). Does not migrate.
    pub async fn connect(settings: &DatabaseSettings) -> Result<Store, StoreError> {
        let timeout = Duration::from_millis(settings.commit_timeout_ms);
        let (url, max) = (settings.url.expose(), settings.max_connections);
        if settings.url.is_postgres() {
            Ok(Store::Postgres(PgStore::connect(url, max, timeout).await?))
        } else if settings.url.is_sqlite() {
            Ok(Store::Sqlite(
                SqliteStore::connect(url, max, timeout, settings.sqlite_max_size_mib).await?,
            ))
        } else {
            Err(StoreError::UnsupportedUrl)
        }
    }

    pub fn backend(&self) -> &'static str {
        match self {
            Store::Postgres(_) => "postgres",
            Store::Sqlite(_) => "sqlite",
        }
    }

    /// Applies the embedded migrations of this backend.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match self {
            Store::Postgres(s) => s.migrate().await,
            Store::Sqlite(s) => s.migrate().await,
        }
    }

    /// Stores one notification: inserts it, or counts a duplicate. Returns
    /// only after the commit.
    pub async fn record(&self, row: NewNotification) -> Result<Recorded, StoreError> {
        let mut out = self.record_batch(std::slice::from_ref(&row)).await?;
        out.pop().ok_or(StoreError::MissingRow)
    }

    /// Stores a batch in one transaction and one commit: every distinct
    /// notification once (with its action runs), copies within the batch and
    /// copies of earlier commits counted as duplicates. One result per input
    /// row, in order.
    pub async fn record_batch(
        &self,
        rows: &[NewNotification],
    ) -> Result<Vec<Recorded>, StoreError> {
        // Copies of one notification in one batch are one row with a count:
        // Postgres cannot upsert the same key twice in one statement.
        let mut first_of: HashMap<_, usize> = HashMap::with_capacity(rows.len());
        let mut uniques: Vec<Unique<'_>> = Vec::with_capacity(rows.len());
        let mut unique_of = Vec::with_capacity(rows.len());
        for row in rows {
            let u = *first_of.entry(row.key()).or_insert_with(|| {
                uniques.push(Unique { row, copies: 0 });
                uniques.len() - 1
            });
            uniques[u].copies += 1;
            unique_of.push(u);
        }
        // One lock order for every writer, so concurrent batches cannot deadlock.
        let mut order: Vec<usize> = (0..uniques.len()).collect();
        order.sort_by_key(|&u| uniques[u].row.key());
        let sorted: Vec<Unique<'_>> = order
            .iter()
            .map(|&u| Unique {
                row: uniques[u].row,
                copies: uniques[u].copies,
            })
            .collect();
        let upserted = match self {
            Store::Postgres(s) => s.upsert(&sorted).await?,
            Store::Sqlite(s) => s.upsert(&sorted).await?,
        };
        if upserted.len() != sorted.len() {
            return Err(StoreError::MissingRow);
        }
        let mut outcome_of: Vec<Option<Upserted>> = (0..uniques.len()).map(|_| None).collect();
        for (&u, up) in order.iter().zip(upserted) {
            outcome_of[u] = Some(up);
        }
        let mut seen = vec![false; uniques.len()];
        rows.iter()
            .zip(&unique_of)
            .map(|(row, &u)| {
                let first = !std::mem::replace(&mut seen[u], true);
                Ok(
                    match outcome_of[u].as_mut().ok_or(StoreError::MissingRow)? {
                        Upserted::Inserted(id, runs) if first => Recorded::New {
                            id: *id,
                            runs: std::mem::take(runs),
                        },
                        Upserted::Inserted(id, _) => Recorded::Duplicate {
                            id: *id,
                            differs: payload_differs(
                                &uniques[u].row.notification.payload,
                                &row.notification.payload,
                            ),
                        },
                        Upserted::Existing(id, stored) => Recorded::Duplicate {
                            id: *id,
                            differs: payload_differs(stored, &row.notification.payload),
                        },
                    },
                )
            })
            .collect()
    }

    /// Keeps rejected posts in one transaction, then drops the oldest
    /// beyond `max_rows`.
    pub async fn record_rejected(
        &self,
        rows: &[NewRejected],
        max_rows: u32,
    ) -> Result<(), StoreError> {
        relaxed_tx!(self, tx => {
            for r in rows {
                sqlx::query(
                    "INSERT INTO rejected (received_at, source_ip, account_hint, reason, body, signature, \
                     sealed) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(r.received_at)
                .bind(r.source_ip.map(|ip| ip.to_string()))
                .bind(r.account_hint.as_deref().map(text))
                .bind(text(&r.reason))
                .bind(&r.body)
                .bind(r.signature.as_deref())
                .bind(r.sealed)
                .execute(&mut *tx)
                .await?;
            }
            // Ids only grow: keeping the newest is an index range delete.
            sqlx::query("DELETE FROM rejected WHERE id <= (SELECT MAX(id) FROM rejected) - $1")
                .bind(i64::from(max_rows))
                .execute(&mut *tx)
                .await?;
        });
        Ok(())
    }

    /// Rejected posts with an id above `after_id`, oldest first.
    pub async fn rejected_after(
        &self,
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<RejectedRow>, StoreError> {
        on_pool!(self, pool => Ok(sqlx::query_as(
            "SELECT id, received_at, source_ip, account_hint, reason, body, signature, sealed \
             FROM rejected WHERE id > $1 ORDER BY id LIMIT $2",
        )
        .bind(after_id)
        .bind(limit)
        .fetch_all(pool)
        .await?))
    }

    pub async fn delete_rejected(&self, id: i64) -> Result<(), StoreError> {
        on_pool!(self, pool => {
            sqlx::query("DELETE FROM rejected WHERE id = $1").bind(id).execute(pool).await?;
            Ok(())
        })
    }

    /// The most recent notifications (of one account), newest first.
    pub async fn recent_notifications(
        &self,
        limit: i64,
        account: Option<&str>,
    ) -> Result<Vec<StoredNotification>, StoreError> {
        let sql = format!(
            "{NOTIFICATION_SELECT} WHERE ($2 IS NULL OR account = $2) ORDER BY id DESC LIMIT $1"
        );
        let rows: Vec<NotificationRow> = on_pool!(self, pool => sqlx::query_as(&sql)
            .bind(limit)
            .bind(account)
            .fetch_all(pool)
            .await?);
        rows.into_iter().map(StoredNotification::try_from).collect()
    }

    /// One notification by id.
    pub async fn notification(&self, id: i64) -> Result<Option<StoredNotification>, StoreError> {
        let sql = format!("{NOTIFICATION_SELECT} WHERE id = $1");
        let row: Option<NotificationRow> =
            on_pool!(self, pool => sqlx::query_as(&sql).bind(id).fetch_optional(pool).await?);
        row.map(StoredNotification::try_from).transpose()
    }

    /// Notifications with a transaction time in `[since, until)` and an id
    /// above `after_id`, oldest id first (for `kaching replay`, in pages).
    pub async fn notifications_between(
        &self,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<StoredNotification>, StoreError> {
        let sql = format!(
            "{NOTIFICATION_SELECT} WHERE transaction_time >= $1 AND transaction_time < $2 \
             AND id > $3 ORDER BY id LIMIT $4"
        );
        let rows: Vec<NotificationRow> = on_pool!(self, pool => sqlx::query_as(&sql)
            .bind(since)
            .bind(until)
            .bind(after_id)
            .bind(limit)
            .fetch_all(pool)
            .await?);
        rows.into_iter().map(StoredNotification::try_from).collect()
    }

    /// Receipt, type and duplicate count of every notification whose receipt
    /// starts with `prefix` (for the benchmark's exactly-once check).
    pub async fn receipts_with_prefix(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, String, i64)>, StoreError> {
        let pattern = format!("{}%", prefix.replace(['%', '_'], ""));
        on_pool!(self, pool => Ok(sqlx::query_as(
            "SELECT receipt, transaction_type, duplicates FROM notifications WHERE receipt LIKE $1",
        )
        .bind(pattern)
        .fetch_all(pool)
        .await?))
    }

    /// Migrations not applied yet (`kaching doctor`).
    pub async fn pending_migrations(&self) -> Result<usize, StoreError> {
        let migrator = match self {
            Store::Postgres(_) => PgStore::migrator(),
            Store::Sqlite(_) => SqliteStore::migrator(),
        };
        // No table yet: none applied.
        let applied: Vec<i64> = on_pool!(self, pool => sqlx::query_scalar(
            "SELECT version FROM _sqlx_migrations WHERE success",
        )
        .fetch_all(pool)
        .await
        .unwrap_or_default());
        Ok(migrator
            .iter()
            .filter(|m| !m.migration_type.is_down_migration() && !applied.contains(&m.version))
            .count())
    }

    /// The database server's clock; `None` for SQLite (this machine's).
    pub async fn server_time(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        match self {
            Store::Postgres(s) => Ok(Some(
                sqlx::query_scalar("SELECT now()")
                    .fetch_one(s.pool())
                    .await?,
            )),
            Store::Sqlite(_) => Ok(None),
        }
    }

    /// A small durable commit, on the same path as the notifications'
    /// (SQLite: the write lock, a full-sync commit): can the database still
    /// take commits? A read alone says nothing about a full disk.
    pub async fn probe_write(&self) -> Result<(), StoreError> {
        const PROBE: &str = "INSERT INTO write_probe (id, probed_at) VALUES (1, $1) \
            ON CONFLICT (id) DO UPDATE SET probed_at = excluded.probed_at";
        let now = Utc::now();
        match self {
            Store::Postgres(s) => {
                let mut tx = tx::PgTx::begin(s.pool(), "BEGIN").await?;
                sqlx::query(PROBE).bind(now).execute(&mut *tx).await?;
                tx.commit().await?;
            }
            Store::Sqlite(s) => {
                let _write = s.write_lock().await;
                let mut tx = tx::SqliteTx::begin(s.pool(), "BEGIN IMMEDIATE").await?;
                sqlx::query(PROBE).bind(now).execute(&mut *tx).await?;
                tx.commit().await?;
            }
        }
        Ok(())
    }

    /// A trivial query: is the database reachable?
    pub async fn ping(&self) -> Result<(), StoreError> {
        on_pool!(self, pool => {
            sqlx::query("SELECT 1").execute(pool).await?;
            Ok(())
        })
    }

    pub async fn close(&self) {
        if let Store::Sqlite(s) = self {
            s.relaxed_pool().close().await;
        }
        on_pool!(self, pool => pool.close().await)
    }
}

/// True when two payloads differ in more than `attemptCount`. Compared as
/// JSON so that key order and white space do not count.
fn payload_differs(stored: &str, new: &str) -> bool {
    fn normalise(s: &str) -> Option<serde_json::Value> {
        let mut v: serde_json::Value = serde_json::from_str(s).ok()?;
        if let Some(o) = v.as_object_mut() {
            o.remove("attemptCount");
        }
        Some(v)
    }
    match (normalise(stored), normalise(new)) {
        (Some(a), Some(b)) => a != b,
        _ => stored != new,
    }
}

#[cfg(test)]
mod tests {
    use super::payload_differs;

    #[test]
    fn a_retry_differs_only_in_attempt_count() {
        let a = r#"{"receipt":"A","attemptCount":1,"totalAccountAmount":1.00}"#;
        let b = r#"{"totalAccountAmount":1.00, "receipt":"A","attemptCount":3}"#;
        assert!(!payload_differs(a, b));
        let c = r#"{"receipt":"A","attemptCount":2,"totalAccountAmount":2.00}"#;
        assert!(payload_differs(a, c));
    }
}
