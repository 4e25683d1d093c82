//! The SQLite store, the embedded default. WAL with `synchronous = FULL`:
//! a commit is on disk before the 200 goes out (NORMAL could lose the last
//! transactions on power loss). Times are sqlx's RFC 3339 UTC text, one
//! shape everywhere, so the unique dedup key and time ranges compare them as
//! text correctly; amounts are decimal text, because SQLite has no exact
//! decimal type.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use super::postgres::NOTIFICATION_COLUMNS;
use super::tx::SqliteTx;
use super::{decimal_text, text, NewRun, StoreError, Unique, Upserted};

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

    /// One transaction, one commit: SQLite statements are in-process and
    /// cheap, the commit's fsync is what costs, so a statement per row is fine.
    pub(super) async fn upsert(&self, rows: &[Unique<'_>]) -> Result<Vec<Upserted>, StoreError> {
        let insert = format!(
            "INSERT INTO notifications ({NOTIFICATION_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $18, $19) \
             ON CONFLICT (account, role, receipt, transaction_type, transaction_time) DO NOTHING \
             RETURNING id"
        );
        let mut out = Vec::with_capacity(rows.len());
        let _write = self.write_lock().await;
        // IMMEDIATE: take the write lock now, not at the first insert.
        let mut tx = SqliteTx::begin(&self.pool, "BEGIN IMMEDIATE").await?;
        for u in rows {
            let (row, x) = (u.row, &u.row.notification);
            let id: Option<i64> = sqlx::query_scalar(&insert)
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
                .fetch_optional(&mut *tx)
                .await?;
            out.push(match id {
                Some(id) => {
                    let mut runs = Vec::with_capacity(row.actions.len());
                    for a in &row.actions {
                        let run: i64 = sqlx::query_scalar(
                            "INSERT INTO action_runs (notification_id, action, created_at, next_attempt_at) \
                             VALUES ($1, $2, $3, $3) RETURNING id",
                        )
                        .bind(id)
                        .bind(&*a.name)
                        .bind(row.received_at)
                        .fetch_one(&mut *tx)
                        .await?;
                        runs.push(NewRun {
                            id: run,
                            action: a.name.clone(),
                        });
                    }
                    Upserted::Inserted(id, runs)
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
                    Upserted::Existing(id, payload)
                }
            });
        }
        // SQLite runs in this process: a COMMIT that fails did not commit
        // (the guard then discards the connection, rolling back what is left).
        tx.commit().await?;
        Ok(out)
    }
}
