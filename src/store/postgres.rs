//! The Postgres store: native types (TIMESTAMPTZ, NUMERIC, BYTEA).

use std::time::Duration;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::Row;

use super::{NewNotification, NewRejected, RejectedRow, StoreError, StoredNotification};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

#[derive(Clone, Debug)]
pub struct PgStore {
    pool: PgPool,
}

/// Shared by both backends: `$n` parameters work in SQLite too.
pub(super) const INSERT_NOTIFICATION: &str = "\
INSERT INTO notifications (account, role, receipt, transaction_type, transaction_time, vendor, \
    affiliate, total_account_amount, total_order_amount, total_tax_amount, total_shipping_amount, \
    currency, version, attempt_count, form, payload, source_ip, received_at, last_seen_at) \
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $18) \
ON CONFLICT (account, role, receipt, transaction_type, transaction_time) DO UPDATE \
    SET duplicates = notifications.duplicates + 1, last_seen_at = excluded.last_seen_at \
RETURNING id, duplicates, CASE WHEN duplicates > 0 THEN payload END AS stored_payload";

pub(super) const INSERT_REJECTED: &str = "\
INSERT INTO rejected (received_at, source_ip, account_hint, reason, body, signature) \
VALUES ($1, $2, $3, $4, $5, $6) RETURNING id";

/// Keeps the newest `$1` rows; ids only grow, so this is an index range delete.
pub(super) const TRIM_REJECTED: &str =
    "DELETE FROM rejected WHERE id <= (SELECT MAX(id) FROM rejected) - $1";

pub(super) const SELECT_REJECTED: &str = "\
SELECT id, received_at, source_ip, account_hint, reason, body, signature \
FROM rejected WHERE id > $1 ORDER BY id LIMIT $2";

pub(super) const SELECT_RECENT: &str = "\
SELECT id, account, role, receipt, transaction_type, transaction_time, total_account_amount, \
    currency, version, attempt_count, form, payload, source_ip, received_at, duplicates, last_seen_at \
FROM notifications ORDER BY id DESC LIMIT $1";

impl PgStore {
    pub async fn connect(
        url: &str,
        max_connections: u32,
        timeout: Duration,
    ) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(timeout)
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

    pub async fn record(
        &self,
        n: &NewNotification<'_>,
    ) -> Result<(i64, i64, Option<String>), StoreError> {
        let x = n.notification;
        let row = sqlx::query(INSERT_NOTIFICATION)
            .bind(n.account.as_str())
            .bind(x.role.as_str())
            .bind(x.receipt.as_str())
            .bind(x.transaction_type.as_str())
            .bind(x.transaction_time)
            .bind(x.vendor.as_deref())
            .bind(x.affiliate.as_deref())
            .bind(x.total_account_amount)
            .bind(x.total_order_amount)
            .bind(x.total_tax_amount)
            .bind(x.total_shipping_amount)
            .bind(x.currency.as_deref())
            .bind(x.version.as_deref())
            .bind(x.attempt_count)
            .bind(n.form.as_str())
            .bind(&x.payload)
            .bind(n.source_ip.map(|ip| ip.to_string()))
            .bind(n.received_at)
            .fetch_one(&self.pool)
            .await?;
        Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?))
    }

    pub async fn record_rejected(
        &self,
        r: &NewRejected<'_>,
        max_rows: u32,
    ) -> Result<i64, StoreError> {
        let id: i64 = sqlx::query_scalar(INSERT_REJECTED)
            .bind(r.received_at)
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
                Ok(StoredNotification {
                    id: r.try_get(0)?,
                    account: r.try_get(1)?,
                    role: r.try_get(2)?,
                    receipt: r.try_get(3)?,
                    transaction_type: r.try_get(4)?,
                    transaction_time: r.try_get::<DateTime<Utc>, _>(5)?,
                    total_account_amount: r.try_get::<Option<Decimal>, _>(6)?,
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
