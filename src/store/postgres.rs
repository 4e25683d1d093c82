//! The Postgres store: native types (TIMESTAMPTZ, NUMERIC, BYTEA).

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgPool, PgPoolOptions};

use std::collections::HashMap;

use sqlx::Row;

use super::tx::PgTx;
use super::{decimal_text, text, NewNotification, NewRun, StoreError, Unique, Upserted};

/// Opens the batch transaction and learns its id in the same round trip,
/// so that a COMMIT whose answer is lost can be looked up afterwards.
const BEGIN_BATCH: &str = "BEGIN; SELECT pg_current_xact_id()::text";

/// How long an ambiguous COMMIT is looked up before it is called unknown.
/// A server that restarts takes a few seconds; ClickBank's retry covers longer.
const RESOLVE_FOR: Duration = Duration::from_secs(3);

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

#[derive(Clone, Debug)]
pub struct PgStore {
    pool: PgPool,
}

/// The columns a new notification row is written with, in bind order.
pub(super) const NOTIFICATION_COLUMNS: &str = "account, role, receipt, transaction_type, \
    transaction_time, vendor, affiliate, total_account_amount, total_order_amount, \
    total_tax_amount, total_shipping_amount, currency, version, attempt_count, form, payload, \
    source_ip, received_at, last_seen_at, duplicates, refund_risk, customer_sealed, customer_index";

/// The runs of a batch's new notifications, one statement.
const INSERT_RUNS: &str = "\
INSERT INTO action_runs (notification_id, action, created_at, next_attempt_at, status, attempts, lease_until) \
SELECT u.notification_id, u.action, u.created_at, u.created_at, \
    CASE WHEN u.lease_until IS NULL THEN 'pending' ELSE 'running' END, \
    CASE WHEN u.lease_until IS NULL THEN 0 ELSE 1 END, u.lease_until \
FROM UNNEST($1::int8[], $2::text[], $3::timestamptz[], $4::timestamptz[]) \
    AS u(notification_id, action, created_at, lease_until) \
RETURNING id, notification_id, action";

/// A whole batch in one statement: one array per column.
const INSERT_BATCH: &str = "\
INSERT INTO notifications (account, role, receipt, transaction_type, transaction_time, vendor, \
    affiliate, total_account_amount, total_order_amount, total_tax_amount, total_shipping_amount, \
    currency, version, attempt_count, form, payload, source_ip, received_at, last_seen_at, duplicates, \
    refund_risk, customer_sealed, customer_index) \
SELECT u.account, u.role, u.receipt, u.transaction_type, u.transaction_time, u.vendor, u.affiliate, \
    u.a1::numeric, u.a2::numeric, u.a3::numeric, u.a4::numeric, u.currency, u.version, u.attempt_count, u.form, u.payload, u.source_ip, \
    u.received_at, u.received_at, u.duplicates, u.refund_risk, u.sealed, u.idx \
FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::text[], \
    $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], \
    $13::text[], $14::int4[], $15::text[], $16::text[], $17::text[], $18::timestamptz[], $19::int8[], \
    $20::float8[], $21::text[], $22::text[]) \
    AS u(account, role, receipt, transaction_type, transaction_time, vendor, affiliate, a1, a2, a3, \
    a4, currency, version, attempt_count, form, payload, source_ip, received_at, duplicates, refund_risk, \
    sealed, idx) \
ON CONFLICT (account, role, receipt, transaction_type, transaction_time) DO NOTHING \
RETURNING id, account, role, receipt, transaction_type, transaction_time";

/// Counts copies of notifications stored by earlier commits.
const COUNT_DUPLICATES: &str = "\
UPDATE notifications AS n \
SET duplicates = n.duplicates + u.copies, last_seen_at = GREATEST(n.last_seen_at, u.seen) \
FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::int8[], \
    $7::timestamptz[]) AS u(account, role, receipt, transaction_type, transaction_time, copies, seen) \
WHERE n.account = u.account AND n.role = u.role AND n.receipt = u.receipt \
    AND n.transaction_type = u.transaction_type AND n.transaction_time = u.transaction_time \
RETURNING n.id, n.account, n.role, n.receipt, n.transaction_type, n.transaction_time, n.payload";

type Key = (String, String, String, String, DateTime<Utc>);

/// A row either statement returns: the id and the dedup key (and, for
/// copies of stored notifications, the stored payload).
#[derive(sqlx::FromRow)]
struct Returned {
    id: i64,
    account: String,
    role: String,
    receipt: String,
    transaction_type: String,
    transaction_time: DateTime<Utc>,
    #[sqlx(default)]
    payload: Option<String>,
}

impl Returned {
    fn into_entry(self) -> (Key, Upserted) {
        let key = (
            self.account,
            self.role,
            self.receipt,
            self.transaction_type,
            self.transaction_time,
        );
        match self.payload {
            Some(p) => (key, Upserted::Existing(self.id, p)),
            None => (key, Upserted::Inserted(self.id, Vec::new())),
        }
    }
}

impl PgStore {
    /// One run per (new notification, matching action), in the same transaction.
    async fn insert_runs(
        &self,
        tx: &mut PgTx,
        rows: &[Unique<'_>],
        found: &mut HashMap<Key, Upserted>,
    ) -> Result<(), StoreError> {
        let (mut ids, mut names, mut times, mut leases, mut index) =
            (vec![], vec![], vec![], vec![], HashMap::new());
        for u in rows {
            if let Some(Upserted::Inserted(id, _)) = found.get(&key_of(u)) {
                for a in &u.row.actions {
                    ids.push(*id);
                    names.push(a.name.to_string());
                    times.push(u.row.received_at);
                    leases.push(a.claimed_until);
                    index.insert((*id, a.name.to_string()), (key_of(u), a.clone()));
                }
            }
        }
        if ids.is_empty() {
            return Ok(());
        }
        let created: Vec<(i64, i64, String)> = sqlx::query_as(INSERT_RUNS)
            .bind(ids)
            .bind(names)
            .bind(times)
            .bind(leases)
            .fetch_all(&mut **tx)
            .await?;
        for (run, notification, action) in created {
            let (key, action) = index
                .remove(&(notification, action))
                .ok_or(StoreError::MissingRow)?;
            if let Some(Upserted::Inserted(_, runs)) = found.get_mut(&key) {
                runs.push(NewRun {
                    id: run,
                    action: action.name,
                    claimed_until: action.claimed_until,
                });
            }
        }
        Ok(())
    }
}

/// One bind array: a field of every row.
fn col<'a, T>(rows: &[&Unique<'a>], f: impl Fn(&'a NewNotification) -> T) -> Vec<T> {
    rows.iter().map(|u| f(u.row)).collect()
}

fn key_of(u: &Unique<'_>) -> Key {
    let (a, r, rc, t, tt) = u.row.key();
    (a.to_owned(), r.to_owned(), rc.to_owned(), t.to_owned(), tt)
}

impl PgStore {
    pub async fn connect(
        url: &str,
        max_connections: u32,
        timeout: Duration,
    ) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(timeout)
            // A ping before every acquire costs a round trip per request; a
            // dead connection fails its statement instead and is replaced.
            .test_before_acquire(false)
            .connect(url)
            .await?;
        Ok(Self { pool })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    /// The migrations of this backend.
    pub(super) fn migrator() -> &'static sqlx::migrate::Migrator {
        &MIGRATOR
    }

    /// A COMMIT returned an error: the transaction may or may not have
    /// committed (a server shutting down reports an error even when the
    /// commit record is already on disk, and a broken connection reports
    /// nothing at all). Ask the server what became of transaction `xid`
    /// (`pg_xact_status`, made for this) instead of guessing. Ok when it
    /// committed; the error when it did not; [`StoreError::CommitUnknown`]
    /// when the server cannot tell us in time (the caller must then neither
    /// acknowledge nor retry the rows).
    async fn resolve_commit(&self, xid: &str, error: sqlx::Error) -> Result<(), StoreError> {
        let deadline = tokio::time::Instant::now() + RESOLVE_FOR;
        loop {
            let status: Result<Option<String>, sqlx::Error> =
                sqlx::query_scalar("SELECT pg_xact_status(CAST($1 AS xid8))")
                    .bind(xid)
                    .fetch_one(&self.pool)
                    .await;
            match status.as_ref().map(Option::as_deref) {
                Ok(Some("committed")) => {
                    tracing::warn!(xid, error = %error, "store: a COMMIT lost its answer; the server says it committed");
                    return Ok(());
                }
                Ok(Some("aborted")) => return Err(error.into()),
                // "in progress": the old session has not finished yet; Err:
                // the server is not back yet; None: too old to know.
                Ok(Some(_)) | Err(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                _ => {
                    tracing::error!(xid, error = %error, "store: a COMMIT lost its answer and its outcome cannot be looked up");
                    return Err(StoreError::CommitUnknown(error));
                }
            }
        }
    }

    /// One transaction: insert the new ones in one statement, count the
    /// copies of already stored ones in another, commit once.
    pub(super) async fn upsert(&self, rows: &[Unique<'_>]) -> Result<Vec<Upserted>, StoreError> {
        let all: Vec<&Unique<'_>> = rows.iter().collect();
        let (mut tx, xid) = PgTx::begin_returning(&self.pool, BEGIN_BATCH).await?;
        let xid: String = xid.try_get(0)?;
        let inserted: Vec<Returned> = sqlx::query_as(INSERT_BATCH)
            .bind(col(&all, |r| text(r.account.as_str())))
            .bind(col(&all, |r| text(r.notification.role.as_str())))
            .bind(col(&all, |r| text(r.notification.receipt.as_str())))
            .bind(col(&all, |r| {
                text(r.notification.transaction_type.as_str())
            }))
            .bind(col(&all, |r| r.notification.transaction_time))
            .bind(col(&all, |r| r.notification.vendor.as_deref().map(text)))
            .bind(col(&all, |r| r.notification.affiliate.as_deref().map(text)))
            .bind(col(&all, |r| {
                decimal_text(r.notification.total_account_amount)
            }))
            .bind(col(&all, |r| {
                decimal_text(r.notification.total_order_amount)
            }))
            .bind(col(&all, |r| decimal_text(r.notification.total_tax_amount)))
            .bind(col(&all, |r| {
                decimal_text(r.notification.total_shipping_amount)
            }))
            .bind(col(&all, |r| r.notification.currency.as_deref().map(text)))
            .bind(col(&all, |r| r.notification.version.as_deref().map(text)))
            .bind(col(&all, |r| r.notification.attempt_count))
            .bind(col(&all, |r| r.form.as_str()))
            .bind(col(&all, |r| text(&r.notification.payload)))
            .bind(col(&all, |r| r.source_ip.map(|ip| ip.to_string())))
            .bind(col(&all, |r| r.received_at))
            .bind(all.iter().map(|u| u.copies - 1).collect::<Vec<_>>())
            .bind(col(&all, |r| r.refund_risk))
            .bind(col(&all, |r| r.personal.clone()))
            .bind(col(&all, |r| r.email_index.clone()))
            .fetch_all(&mut *tx)
            .await?;
        let mut found: HashMap<Key, Upserted> =
            inserted.into_iter().map(Returned::into_entry).collect();
        self.insert_runs(&mut tx, rows, &mut found).await?;
        let existing: Vec<&Unique<'_>> = rows
            .iter()
            .filter(|u| !found.contains_key(&key_of(u)))
            .collect();
        if !existing.is_empty() {
            let counted: Vec<Returned> = sqlx::query_as(COUNT_DUPLICATES)
                .bind(col(&existing, |r| text(r.account.as_str())))
                .bind(col(&existing, |r| text(r.notification.role.as_str())))
                .bind(col(&existing, |r| text(r.notification.receipt.as_str())))
                .bind(col(&existing, |r| {
                    text(r.notification.transaction_type.as_str())
                }))
                .bind(col(&existing, |r| r.notification.transaction_time))
                .bind(existing.iter().map(|u| u.copies).collect::<Vec<_>>())
                .bind(col(&existing, |r| r.received_at))
                .fetch_all(&mut *tx)
                .await?;
            found.extend(counted.into_iter().map(Returned::into_entry));
        }
        if let Err(e) = tx.commit().await {
            self.resolve_commit(&xid, e).await?;
        }
        rows.iter()
            .map(|u| found.remove(&key_of(u)).ok_or(StoreError::MissingRow))
            .collect()
    }
}
