//! What reconciliation reads and keeps: the dedup keys of an account's
//! stored notifications in a window, the rows it recovered, and one row per
//! run (its calls, for the daily budget).

use chrono::{DateTime, NaiveDate, Utc};

use super::{on_pool, Store, StoreError};

/// The dedup key of a stored notification, without its account.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct StoredKey {
    pub role: String,
    pub receipt: String,
    pub transaction_type: String,
    pub transaction_time: DateTime<Utc>,
}

/// What a run found, as stored.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct ReconcileRunRow {
    pub id: i64,
    pub account: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub calls: i64,
    pub missing: i64,
    pub recovered: i64,
    pub error: Option<String>,
}

impl Store {
    /// The keys of `account`'s notifications with a transaction time in
    /// `[from, to)`.
    pub async fn stored_keys(
        &self,
        account: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<StoredKey>, StoreError> {
        const SQL: &str = "SELECT role, receipt, transaction_type, transaction_time \
            FROM notifications WHERE account = $1 AND transaction_time >= $2 AND transaction_time < $3";
        Ok(on_pool!(self, pool => sqlx::query_as(SQL)
            .bind(account)
            .bind(from)
            .bind(to)
            .fetch_all(pool)
            .await?))
    }

    /// The keys of `account`'s notifications of one receipt and type.
    pub async fn keys_of(
        &self,
        account: &str,
        receipt: &str,
        kind: &str,
    ) -> Result<Vec<StoredKey>, StoreError> {
        const SQL: &str = "SELECT role, receipt, transaction_type, transaction_time \
            FROM notifications WHERE account = $1 AND receipt = $2 AND transaction_type = $3";
        Ok(on_pool!(self, pool => sqlx::query_as(SQL)
            .bind(account)
            .bind(receipt)
            .bind(kind)
            .fetch_all(pool)
            .await?))
    }

    /// The calls a run in progress has made so far (the budget counts them).
    pub async fn reconcile_progress(&self, id: i64, calls: u64) -> Result<(), StoreError> {
        const SQL: &str = "UPDATE reconcile_runs SET calls = $2 WHERE id = $1";
        on_pool!(self, pool => sqlx::query(SQL)
            .bind(id)
            .bind(i64::try_from(calls).unwrap_or(i64::MAX))
            .execute(pool)
            .await
            .map(|_| ())?);
        Ok(())
    }

    /// Rows reconciliation stored (`form = 'orders-api'`) with an id above
    /// `after`, lowest first: (id, account, role, receipt, type, time).
    pub async fn recovered_after(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<(i64, String, String, String, String, DateTime<Utc>)>, StoreError> {
        const SQL: &str = "SELECT id, account, role, receipt, transaction_type, transaction_time \
            FROM notifications WHERE form = 'orders-api' AND id > $1 ORDER BY id LIMIT $2";
        Ok(on_pool!(self, pool => sqlx::query_as(SQL)
            .bind(after)
            .bind(limit)
            .fetch_all(pool)
            .await?))
    }

    /// Orders API calls of `account`'s runs started since `since`.
    pub async fn reconcile_calls_since(
        &self,
        account: &str,
        since: DateTime<Utc>,
    ) -> Result<i64, StoreError> {
        const SQL: &str = "SELECT CAST(COALESCE(SUM(calls), 0) AS BIGINT) FROM reconcile_runs \
            WHERE account = $1 AND started_at >= $2";
        Ok(on_pool!(self, pool => sqlx::query_scalar(SQL)
            .bind(account)
            .bind(since)
            .fetch_one(pool)
            .await?))
    }

    pub async fn start_reconcile_run(
        &self,
        account: &str,
        started_at: DateTime<Utc>,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<i64, StoreError> {
        const SQL: &str =
            "INSERT INTO reconcile_runs (account, started_at, window_from, window_to) \
            VALUES ($1, $2, $3, $4) RETURNING id";
        Ok(on_pool!(self, pool => sqlx::query_scalar(SQL)
            .bind(account)
            .bind(started_at)
            .bind(from)
            .bind(to)
            .fetch_one(pool)
            .await?))
    }

    pub async fn finish_reconcile_run(
        &self,
        id: i64,
        calls: u64,
        missing: u64,
        recovered: u64,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        const SQL: &str = "UPDATE reconcile_runs SET finished_at = $2, calls = $3, missing = $4, \
            recovered = $5, error = $6 WHERE id = $1";
        let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        on_pool!(self, pool => sqlx::query(SQL)
            .bind(id)
            .bind(Utc::now())
            .bind(n(calls))
            .bind(n(missing))
            .bind(n(recovered))
            .bind(error)
            .execute(pool)
            .await
            .map(|_| ())?);
        Ok(())
    }

    /// The latest runs, newest first.
    pub async fn reconcile_runs(&self, limit: i64) -> Result<Vec<ReconcileRunRow>, StoreError> {
        const SQL: &str =
            "SELECT id, account, started_at, finished_at, calls, missing, recovered, \
            error FROM reconcile_runs ORDER BY id DESC LIMIT $1";
        Ok(on_pool!(self, pool => sqlx::query_as(SQL).bind(limit).fetch_all(pool).await?))
    }
}
