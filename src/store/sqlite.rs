//! The SQLite store, the embedded default. WAL with `synchronous = FULL`:
//! a commit is on disk before the 200 goes out (NORMAL could lose the last
//! transactions on power loss). Times are RFC 3339 UTC text in one fixed
//! shape, so the unique dedup key compares them as text correctly; amounts are
//! decimal text, because SQLite has no exact decimal type.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use rust_decimal::Decimal;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::Row;

use super::postgres::{
    INSERT_REJECTED, NOTIFICATION_COLUMNS, SELECT_RECENT, SELECT_REJECTED, TRIM_REJECTED,
};
use super::{NewRejected, RejectedRow, StoreError, StoredNotification, Unique, Upserted};

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
}

/// The one text shape of a time in SQLite: second precision for transaction
/// times (the dedup key), microseconds for the times kaching takes itself.
fn time_text(t: DateTime<Utc>, format: SecondsFormat) -> String {
    t.to_rfc3339_opts(format, true)
}

fn decimal_text(d: Option<Decimal>) -> Option<String> {
    d.map(|d| d.to_string())
}

impl SqliteStore {
    pub async fn connect(
        url: &str,
        max_connections: u32,
        timeout: Duration,
    ) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(timeout)
            .foreign_keys(true);
        if let Some(dir) = options.get_filename().parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir).map_err(|e| StoreError::Database(e.into()))?;
            }
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(timeout)
            .connect_with(options)
            .await?;
        Ok(Self { pool })
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
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
        let mut tx = self.pool.begin().await?;
        for u in rows {
            let (row, x) = (u.row, &u.row.notification);
            let tt = time_text(x.transaction_time, SecondsFormat::Secs);
            let seen = time_text(row.received_at, SecondsFormat::Micros);
            let id: Option<i64> = sqlx::query_scalar(&insert)
                .bind(row.account.as_str())
                .bind(x.role.as_str())
                .bind(x.receipt.as_str())
                .bind(x.transaction_type.as_str())
                .bind(&tt)
                .bind(x.vendor.as_deref())
                .bind(x.affiliate.as_deref())
                .bind(decimal_text(x.total_account_amount))
                .bind(decimal_text(x.total_order_amount))
                .bind(decimal_text(x.total_tax_amount))
                .bind(decimal_text(x.total_shipping_amount))
                .bind(x.currency.as_deref())
                .bind(x.version.as_deref())
                .bind(x.attempt_count)
                .bind(row.form.as_str())
                .bind(&x.payload)
                .bind(row.source_ip.map(|ip| ip.to_string()))
                .bind(&seen)
                .bind(u.copies - 1)
                .fetch_optional(&mut *tx)
                .await?;
            out.push(match id {
                Some(id) => Upserted::Inserted(id),
                None => {
                    let (id, payload): (i64, String) = sqlx::query_as(COUNT_DUPLICATES)
                        .bind(row.account.as_str())
                        .bind(x.role.as_str())
                        .bind(x.receipt.as_str())
                        .bind(x.transaction_type.as_str())
                        .bind(&tt)
                        .bind(u.copies)
                        .bind(&seen)
                        .fetch_one(&mut *tx)
                        .await?;
                    Upserted::Existing(id, payload)
                }
            });
        }
        tx.commit().await?;
        Ok(out)
    }

    pub async fn record_rejected(
        &self,
        r: &NewRejected<'_>,
        max_rows: u32,
    ) -> Result<i64, StoreError> {
        let id: i64 = sqlx::query_scalar(INSERT_REJECTED)
            .bind(time_text(r.received_at, SecondsFormat::Micros))
            .bind(r.source_ip.map(|ip| ip.to_string()))
            .bind(r.account_hint)
            .bind(r.reason)
            .bind(r.body)
            .bind(r.signature)
            .fetch_one(&self.pool)
            .await?;
        sqlx::query(TRIM_REJECTED)
            .bind(i64::from(max_rows))
            .execute(&self.pool)
            .await?;
        Ok(id)
    }

    pub async fn rejected_after(
        &self,
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<RejectedRow>, StoreError> {
        let rows = sqlx::query(SELECT_REJECTED)
            .bind(after_id)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(RejectedRow {
                    id: r.try_get(0)?,
                    received_at: r.try_get(1)?,
                    source_ip: r.try_get(2)?,
                    account_hint: r.try_get(3)?,
                    reason: r.try_get(4)?,
                    body: r.try_get(5)?,
                    signature: r.try_get(6)?,
                })
            })
            .collect()
    }

    pub async fn delete_rejected(&self, id: i64) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM rejected WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn recent_notifications(
        &self,
        limit: i64,
    ) -> Result<Vec<StoredNotification>, StoreError> {
        let rows = sqlx::query(SELECT_RECENT)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let amount: Option<String> = r.try_get(6)?;
                Ok(StoredNotification {
                    id: r.try_get(0)?,
                    account: r.try_get(1)?,
                    role: r.try_get(2)?,
                    receipt: r.try_get(3)?,
                    transaction_type: r.try_get(4)?,
                    transaction_time: r.try_get::<DateTime<Utc>, _>(5)?,
                    total_account_amount: amount
                        .map(|a| Decimal::from_str(&a))
                        .transpose()
                        .map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
                    currency: r.try_get(7)?,
                    version: r.try_get(8)?,
                    attempt_count: r.try_get(9)?,
                    form: r.try_get(10)?,
                    payload: r.try_get(11)?,
                    source_ip: r.try_get(12)?,
                    received_at: r.try_get(13)?,
                    duplicates: r.try_get(14)?,
                    last_seen_at: r.try_get(15)?,
                })
            })
            .collect()
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}
