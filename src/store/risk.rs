//! What the refund-risk model reads and keeps: matured sales, when each
//! receipt was refunded, and the fitted models.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use super::{on_pool, NotificationRow, Store, StoreError, StoredNotification, NOTIFICATION_SELECT};

/// A stored model.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, serde::Serialize)]
pub struct RiskModelRow {
    pub id: i64,
    pub trained_at: DateTime<Utc>,
    pub data_from: DateTime<Utc>,
    pub data_to: DateTime<Utc>,
    pub sales: i64,
    pub refunds: i64,
    /// JSON ([`crate::risk::Model`]).
    pub model: String,
    /// JSON ([`crate::risk::Evaluation`]).
    pub evaluation: String,
}

impl Store {
    /// SALEs with a transaction time before `before`, newest first.
    pub async fn sales_before(
        &self,
        before: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<StoredNotification>, StoreError> {
        let sql = format!(
            "{NOTIFICATION_SELECT} WHERE transaction_type = 'SALE' AND transaction_time < $1 \
             ORDER BY transaction_time DESC LIMIT $2"
        );
        let rows: Vec<NotificationRow> = on_pool!(self, pool => sqlx::query_as(&sql)
            .bind(before)
            .bind(limit)
            .fetch_all(pool)
            .await?);
        rows.into_iter().map(StoredNotification::try_from).collect()
    }

    /// The first refund's transaction time per (account, receipt).
    pub async fn refund_times(
        &self,
    ) -> Result<HashMap<(String, String), DateTime<Utc>>, StoreError> {
        let rows: Vec<(String, String, DateTime<Utc>)> = on_pool!(self, pool => sqlx::query_as(
            "SELECT account, receipt, MIN(transaction_time) FROM notifications \
             WHERE transaction_type = 'RFND' GROUP BY account, receipt",
        )
        .fetch_all(pool)
        .await?);
        Ok(rows.into_iter().map(|(a, r, t)| ((a, r), t)).collect())
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn save_risk_model(
        &self,
        trained_at: DateTime<Utc>,
        data_from: DateTime<Utc>,
        data_to: DateTime<Utc>,
        sales: i64,
        refunds: i64,
        model: &str,
        evaluation: &str,
    ) -> Result<i64, StoreError> {
        const INSERT: &str = "INSERT INTO risk_models (trained_at, data_from, data_to, sales, \
            refunds, model, evaluation) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id";
        macro_rules! insert {
            ($pool:expr) => {
                sqlx::query_scalar(INSERT)
                    .bind(trained_at)
                    .bind(data_from)
                    .bind(data_to)
                    .bind(sales)
                    .bind(refunds)
                    .bind(model)
                    .bind(evaluation)
                    .fetch_one($pool)
                    .await?
            };
        }
        Ok(match self {
            Store::Postgres(s) => insert!(s.pool()),
            Store::Sqlite(s) => {
                let _write = s.write_lock().await;
                insert!(s.pool())
            }
        })
    }

    /// The newest model, if any.
    pub async fn latest_risk_model(&self) -> Result<Option<RiskModelRow>, StoreError> {
        on_pool!(self, pool => Ok(sqlx::query_as(
            "SELECT id, trained_at, data_from, data_to, sales, refunds, model, evaluation \
             FROM risk_models ORDER BY id DESC LIMIT 1",
        )
        .fetch_optional(pool)
        .await?))
    }
}
