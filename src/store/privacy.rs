//! What erasure, retention and key rotation do to the stored customer data
//! (see `crate::privacy`), and the ids of the data keys that sealed it: the
//! financial and product columns and the dedup key stay, so a late
//! ClickBank retry stays a duplicate and brings nothing back.

use chrono::{DateTime, Utc};

use super::{on_pool, relaxed_tx, Store, StoreError};

/// A notification of one buyer, as `kaching customers find` lists it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct CustomerRow {
    pub id: i64,
    pub account: String,
    pub receipt: String,
    pub transaction_type: String,
    pub transaction_time: DateTime<Utc>,
}

/// A row whose sealed data is not under the current key.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SealedRow {
    pub id: i64,
    pub account: String,
    pub role: String,
    pub receipt: String,
    pub transaction_type: String,
    pub transaction_time: DateTime<Utc>,
    pub customer_sealed: String,
}

/// A row stored before its customer data was sealed.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ClearRow {
    pub id: i64,
    pub account: String,
    pub role: String,
    pub receipt: String,
    pub transaction_type: String,
    pub transaction_time: DateTime<Utc>,
    pub form: String,
    pub payload: String,
}

/// What erasing a notification's personal data sets (`$2`: when).
const ERASE: &str = "customer_sealed = NULL, customer_index = NULL, erased_at = $2";

/// One erasure: when, why (request, retention), how many rows of each.
const RECORD_ERASURE: &str =
    "INSERT INTO erasures (erased_at, reason, notifications, rejected) VALUES ($1, $2, $3, $4)";

/// `$1`: a JSON array of blind indexes.
fn index_in(store: &Store) -> &'static str {
    match store {
        Store::Postgres(_) => {
            "customer_index IN (SELECT jsonb_array_elements_text(CAST($1 AS jsonb)))"
        }
        Store::Sqlite(_) => "customer_index IN (SELECT value FROM json_each($1))",
    }
}

impl Store {
    /// The notifications whose buyer has one of these blind indexes.
    pub async fn customers_find(&self, indexes: &[String]) -> Result<Vec<CustomerRow>, StoreError> {
        let sql = format!(
            "SELECT id, account, receipt, transaction_type, transaction_time FROM notifications \
             WHERE {} ORDER BY id",
            index_in(self)
        );
        let list = serde_json::to_string(indexes).unwrap_or_else(|_| "[]".into());
        on_pool!(self, pool => Ok(sqlx::query_as(&sql).bind(list).fetch_all(pool).await?))
    }

    /// Erases the personal data of the notifications with these blind
    /// indexes, and deletes the kept rejected posts `rejected`; records the
    /// erasure. Returns (notifications, rejected posts).
    pub async fn erase_customer(
        &self,
        indexes: &[String],
        rejected: &[i64],
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<(u64, u64), StoreError> {
        let sql = format!("UPDATE notifications SET {ERASE} WHERE {}", index_in(self));
        let list = serde_json::to_string(indexes).unwrap_or_else(|_| "[]".into());
        Ok(relaxed_tx!(self, tx => {
            let n = sqlx::query(&sql).bind(list).bind(now).execute(&mut *tx).await?.rows_affected();
            let mut r = 0;
            for id in rejected {
                r += sqlx::query("DELETE FROM rejected WHERE id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
            }
            sqlx::query(RECORD_ERASURE)
            .bind(now)
            .bind(reason)
            .bind(n as i64)
            .bind(r as i64)
            .execute(&mut *tx)
            .await?;
            (n, r)
        }))
    }

    /// Retention: erases the personal data of notifications received before
    /// `before`, and deletes rejected posts received before `rejected_before`.
    pub async fn purge_before(
        &self,
        before: Option<DateTime<Utc>>,
        rejected_before: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<(u64, u64), StoreError> {
        Ok(relaxed_tx!(self, tx => {
            let n = match before {
                Some(b) => sqlx::query(&format!(
                    "UPDATE notifications SET {ERASE} WHERE received_at < $1 AND customer_sealed IS NOT NULL"
                ))
                .bind(b)
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected(),
                None => 0,
            };
            let r = sqlx::query("DELETE FROM rejected WHERE received_at < $1")
                .bind(rejected_before)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n + r > 0 {
                sqlx::query(RECORD_ERASURE)
                .bind(now)
                .bind("retention")
                .bind(n as i64)
                .bind(r as i64)
                .execute(&mut *tx)
                .await?;
            }
            (n, r)
        }))
    }

    /// Up to `limit` rows sealed under another key than `current`.
    pub async fn sealed_not_under(
        &self,
        current: &str,
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<SealedRow>, StoreError> {
        on_pool!(self, pool => Ok(sqlx::query_as(
            "SELECT id, account, role, receipt, transaction_type, transaction_time, customer_sealed \
             FROM notifications WHERE id > $1 AND customer_sealed IS NOT NULL \
             AND customer_sealed NOT LIKE $2 ORDER BY id LIMIT $3",
        )
        .bind(after_id)
        .bind(format!("v1.{current}.%"))
        .bind(limit)
        .fetch_all(pool)
        .await?))
    }

    /// Rewrites rows' sealed data and blind index: (id, sealed, index).
    /// A row erased meanwhile stays erased.
    pub async fn rewrap(&self, rows: &[(i64, String, Option<String>)]) -> Result<(), StoreError> {
        relaxed_tx!(self, tx => {
            for (id, sealed, index) in rows {
                sqlx::query(
                    "UPDATE notifications SET customer_sealed = $2, customer_index = $3 \
                     WHERE id = $1 AND customer_sealed IS NOT NULL",
                )
                .bind(id)
                .bind(sealed)
                .bind(index.as_deref())
                .execute(&mut *tx)
                .await?;
            }
        });
        Ok(())
    }

    /// Up to `limit` rows that may hold customer data in clear (stored
    /// before sealing, or with `privacy.encrypt = false`), not erased.
    pub async fn clear_customer_rows(
        &self,
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<ClearRow>, StoreError> {
        on_pool!(self, pool => Ok(sqlx::query_as(
            "SELECT id, account, role, receipt, transaction_type, transaction_time, form, payload \
             FROM notifications WHERE id > $1 AND customer_sealed IS NULL AND erased_at IS NULL \
             AND (payload LIKE '%\"customer\"%' OR payload LIKE '%\"ccust%') ORDER BY id LIMIT $2",
        )
        .bind(after_id)
        .bind(limit)
        .fetch_all(pool)
        .await?))
    }

    /// Replaces rows' clear payload with the cut one and its sealed part:
    /// (id, payload, sealed, index); a row sealed or erased meanwhile is left.
    pub async fn seal_rows(
        &self,
        rows: &[(i64, String, String, Option<String>)],
    ) -> Result<(), StoreError> {
        relaxed_tx!(self, tx => {
            for (id, payload, sealed, index) in rows {
                sqlx::query(
                    "UPDATE notifications SET payload = $2, customer_sealed = $3, customer_index = $4 \
                     WHERE id = $1 AND customer_sealed IS NULL AND erased_at IS NULL",
                )
                .bind(id)
                .bind(payload)
                .bind(sealed)
                .bind(index.as_deref())
                .execute(&mut *tx)
                .await?;
            }
        });
        Ok(())
    }

    /// How many erasures were recorded, and their rows (for the tests and `kaching erase`).
    pub async fn erasures(&self) -> Result<Vec<(DateTime<Utc>, String, i64, i64)>, StoreError> {
        on_pool!(self, pool => Ok(sqlx::query_as(
            "SELECT erased_at, reason, notifications, rejected FROM erasures ORDER BY id",
        )
        .fetch_all(pool)
        .await?))
    }
}

impl Store {
    /// The ids of the data keys that have sealed rows here.
    pub async fn data_key_ids(&self) -> Result<Vec<String>, StoreError> {
        on_pool!(self, pool => Ok(sqlx::query_scalar("SELECT id FROM privacy_keys ORDER BY first_used")
            .fetch_all(pool)
            .await?))
    }

    /// Records that the key `id` seals rows from now on.
    pub async fn record_data_key(&self, id: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
        const INSERT: &str =
            "INSERT INTO privacy_keys (id, first_used) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING";
        match self {
            Store::Postgres(s) => {
                sqlx::query(INSERT)
                    .bind(id)
                    .bind(now)
                    .execute(s.pool())
                    .await?;
            }
            Store::Sqlite(s) => {
                let _write = s.write_lock().await;
                sqlx::query(INSERT)
                    .bind(id)
                    .bind(now)
                    .execute(s.pool())
                    .await?;
            }
        }
        Ok(())
    }
}
