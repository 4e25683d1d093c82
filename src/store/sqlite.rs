//! The SQLite store, the embedded default. WAL with `synchronous = FULL`:
//! a commit is on disk before the 200 goes out (NORMAL could lose the last
//! transactions on power loss). Times are sqlx's RFC 3339 UTC text, one
//! shape everywhere, so the unique dedup key and time ranges compare them as
//! text correctly; amounts are decimal text, because SQLite has no exact
//! decimal type.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use super::postgres::NOTIFICATION_COLUMNS;
use super::tx::SqliteTx;
use super::{decimal_text, text, ActionRef, NewRun, StoreError, Unique, Upserted};

/// Rows per multi-row statement: SQLite binds each parameter by looking up
/// its name, so statements stay small (19 columns a notification).
const CHUNK: usize = 32;

/// A notification's dedup key as stored (text as [`text`] writes it).
type Key = (String, String, String, String, DateTime<Utc>);

fn stored_key(u: &Unique<'_>) -> Key {
    let (a, r, rc, t, tt) = u.row.key();
    let owned = |s: &str| text(s).into_owned();
    (owned(a), owned(r), owned(rc), owned(t), tt)
}

/// Counts copies of a notification stored by an earlier commit.
const COUNT_DUPLICATES: &str = "\
UPDATE notifications SET duplicates = duplicates + $6, last_seen_at = MAX(last_seen_at, $7) \
WHERE account = $1 AND role = $2 AND receipt = $3 AND transaction_type = $4 \
    AND transaction_time = $5 \
RETURNING id, payload";

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// `synchronous = NORMAL`: commits that need not wait for the disk (see
    /// `relaxed_tx!`). A later FULL commit syncs the shared WAL for them too.
    relaxed: SqlitePool,
    /// Every write in this process queues here: SQLite has one writer, and
    /// its busy handler waits by sleeping (1, 2, 5… up to 100 ms), which
    /// turns contention into latency spikes.
    write: Arc<tokio::sync::Mutex<()>>,
}

impl SqliteStore {
    pub async fn connect(
        url: &str,
        max_connections: u32,
        timeout: Duration,
        max_size_mib: u64,
    ) -> Result<Self, StoreError> {
        let mut options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(timeout)
            .foreign_keys(true);
        if max_size_mib > 0 {
            // The page size is SQLite's default, 4 KiB.
            options = options.pragma("max_page_count", (max_size_mib * 256).to_string());
        }
        if let Some(dir) = options.get_filename().parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir).map_err(|e| StoreError::Database(e.into()))?;
            }
        }
        let pool_options = || {
            SqlitePoolOptions::new()
                .acquire_timeout(timeout)
                // A ping before every acquire costs a round trip per request; a
                // dead connection fails its statement instead and is replaced.
                .test_before_acquire(false)
        };
        let pool = pool_options()
            .max_connections(max_connections)
            .connect_with(options.clone())
            .await?;
        let relaxed = pool_options()
            .max_connections(2)
            .connect_with(options.synchronous(SqliteSynchronous::Normal))
            .await?;
        Ok(Self {
            pool,
            relaxed,
            write: Arc::default(),
        })
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    pub(super) fn relaxed_pool(&self) -> &SqlitePool {
        &self.relaxed
    }

    pub(super) async fn write_lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.write.lock().await
    }

    pub async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    /// The migrations of this backend.
    pub(super) fn migrator() -> &'static sqlx::migrate::Migrator {
        &MIGRATOR
    }

    /// One transaction, one commit, and few statements: sqlx hands every
    /// SQLite statement to the connection's own thread and back, which
    /// costs more than the statement, so new rows go in multi-row inserts
    /// of [`CHUNK`] rows (their runs likewise) and only copies of stored
    /// notifications get a statement each.
    pub(super) async fn upsert(&self, rows: &[Unique<'_>]) -> Result<Vec<Upserted>, StoreError> {
        let _write = self.write_lock().await;
        // IMMEDIATE: take the write lock now, not at the first insert.
        let mut tx = SqliteTx::begin(&self.pool, "BEGIN IMMEDIATE").await?;
        let mut found: HashMap<Key, i64> = HashMap::with_capacity(rows.len());
        for chunk in rows.chunks(CHUNK) {
            let mut sql = format!("INSERT INTO notifications ({NOTIFICATION_COLUMNS}) VALUES ");
            for r in 0..chunk.len() {
                let p = |c: usize| format!("${}", r * 22 + c);
                sql.push_str(if r == 0 { "(" } else { ", (" });
                let cols: Vec<String> = (1..=18)
                    .map(p)
                    .chain([p(18), p(19), p(20), p(21), p(22)])
                    .collect();
                sql.push_str(&cols.join(", "));
                sql.push(')');
            }
            sql.push_str(
                " ON CONFLICT (account, role, receipt, transaction_type, transaction_time) DO NOTHING \
                 RETURNING id, account, role, receipt, transaction_type, transaction_time",
            );
            let mut q =
                sqlx::query_as::<_, (i64, String, String, String, String, DateTime<Utc>)>(&sql);
            for u in chunk {
                let (row, x) = (u.row, &u.row.notification);
                q = q
                    .bind(text(row.account.as_str()))
                    .bind(text(x.role.as_str()))
                    .bind(text(x.receipt.as_str()))
                    .bind(text(x.transaction_type.as_str()))
                    .bind(x.transaction_time)
                    .bind(x.vendor.as_deref().map(text))
                    .bind(x.affiliate.as_deref().map(text))
                    .bind(decimal_text(x.total_account_amount))
                    .bind(decimal_text(x.total_order_amount))
                    .bind(decimal_text(x.total_tax_amount))
                    .bind(decimal_text(x.total_shipping_amount))
                    .bind(x.currency.as_deref().map(text))
                    .bind(x.version.as_deref().map(text))
                    .bind(x.attempt_count)
                    .bind(row.form.as_str())
                    .bind(text(&x.payload))
                    .bind(row.source_ip.map(|ip| ip.to_string()))
                    .bind(row.received_at)
                    .bind(u.copies - 1)
                    .bind(row.refund_risk)
                    .bind(row.personal.as_deref())
                    .bind(row.email_index.as_deref());
            }
            for (id, a, r, rc, t, tt) in q.fetch_all(&mut *tx).await? {
                found.insert((a, r, rc, t, tt), id);
            }
        }
        let mut out = Vec::with_capacity(rows.len());
        let mut new_runs: Vec<(i64, &ActionRef, DateTime<Utc>)> = Vec::new();
        for u in rows {
            let (row, x) = (u.row, &u.row.notification);
            match found.get(&stored_key(u)) {
                Some(&id) => {
                    new_runs.extend(row.actions.iter().map(|a| (id, a, row.received_at)));
                    out.push(Upserted::Inserted(id, Vec::new()));
                }
                None => {
                    let (id, payload): (i64, String) = sqlx::query_as(COUNT_DUPLICATES)
                        .bind(text(row.account.as_str()))
                        .bind(text(x.role.as_str()))
                        .bind(text(x.receipt.as_str()))
                        .bind(text(x.transaction_type.as_str()))
                        .bind(x.transaction_time)
                        .bind(u.copies)
                        .bind(row.received_at)
                        .fetch_one(&mut *tx)
                        .await?;
                    out.push(Upserted::Existing(id, payload));
                }
            }
        }
        let mut runs: HashMap<i64, Vec<NewRun>> = HashMap::new();
        for chunk in new_runs.chunks(CHUNK) {
            let mut sql = String::from(
                "INSERT INTO action_runs \
                     (notification_id, action, created_at, next_attempt_at, status, attempts, lease_until) \
                 VALUES ",
            );
            for r in 0..chunk.len() {
                let p = |c: usize| format!("${}", r * 4 + c);
                sql.push_str(&format!(
                    "{}({}, {}, {}, {}, CASE WHEN {} IS NULL THEN 'pending' ELSE 'running' END, \
                     CASE WHEN {} IS NULL THEN 0 ELSE 1 END, {})",
                    if r == 0 { "" } else { ", " },
                    p(1),
                    p(2),
                    p(3),
                    p(3),
                    p(4),
                    p(4),
                    p(4)
                ));
            }
            sql.push_str(" RETURNING id, notification_id, action");
            let mut q = sqlx::query_as::<_, (i64, i64, String)>(&sql);
            for (id, a, at) in chunk {
                q = q.bind(id).bind(&*a.name).bind(at).bind(a.claimed_until);
            }
            let mut by_key: HashMap<(i64, String), &ActionRef> = chunk
                .iter()
                .map(|(id, a, _)| ((*id, a.name.to_string()), *a))
                .collect();
            for (run, notification, action) in q.fetch_all(&mut *tx).await? {
                let a = by_key
                    .remove(&(notification, action))
                    .ok_or(StoreError::MissingRow)?;
                runs.entry(notification).or_default().push(NewRun {
                    id: run,
                    action: a.name.clone(),
                    claimed_until: a.claimed_until,
                });
            }
        }
        for up in &mut out {
            if let Upserted::Inserted(id, r) = up {
                *r = runs.remove(id).unwrap_or_default();
            }
        }
        // SQLite runs in this process: a COMMIT that fails did not commit
        // (the guard then discards the connection, rolling back what is left).
        tx.commit().await?;
        Ok(out)
    }
}
