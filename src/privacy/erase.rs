//! Erasure on request, retention, and rewrapping under a new key: the
//! operations on stored customer data (`kaching erase`, `kaching keys
//! rewrap`, the daily retention task).

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::{rejected_aad, row_aad, DataKeys};
use crate::runtime::Runtime;
use crate::store::{Store, StoreError};

/// What an erasure did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Erased {
    pub notifications: u64,
    pub rejected: u64,
    /// Where kaching forwarded personal data (the configured actions that do).
    pub recipients: Vec<String>,
}

/// Erases one buyer's personal data: every notification whose blind index
/// matches (under any configured key), and every kept rejected post whose
/// body names the address. The financial columns and the dedup key stay.
pub async fn erase(
    store: &Store,
    runtime: &Runtime,
    email: &str,
    now: DateTime<Utc>,
) -> anyhow::Result<Erased> {
    let keys = runtime.data_keys.as_deref().ok_or_else(|| {
        anyhow::anyhow!("privacy.encrypt is off: there is no blind index to find the buyer by")
    })?;
    let indexes = keys.email_indexes(email);
    let needle = email.trim().to_lowercase();
    let mut rejected = Vec::new();
    let mut after = 0;
    loop {
        let rows = store.rejected_after(after, 500).await?;
        let Some(last) = rows.last() else { break };
        after = last.id;
        for r in &rows {
            let body = if r.sealed {
                let aad = rejected_aad(r.received_at, r.source_ip.as_deref());
                match std::str::from_utf8(&r.body)
                    .ok()
                    .map(|s| keys.open(&aad, s))
                {
                    Some(Ok(b)) => b,
                    _ => continue,
                }
            } else {
                r.body.clone()
            };
            if String::from_utf8_lossy(&body)
                .to_lowercase()
                .contains(&needle)
            {
                rejected.push(r.id);
            }
        }
    }
    let (notifications, rejected) = store
        .erase_customer(&indexes, &rejected, "request", now)
        .await?;
    Ok(Erased {
        notifications,
        rejected,
        recipients: runtime
            .actions
            .iter()
            .filter_map(|a| a.recipient())
            .collect(),
    })
}

/// Re-seals every row not under the current key, and seals the rows stored
/// with their customer data in clear (before sealing existed, or with
/// `privacy.encrypt = false`), in batches of `batch` (while the daemon
/// runs: each batch is its own transaction); returns the rows rewritten. A
/// row that does not open is left as it is and counted in the second number.
pub async fn rewrap(store: &Store, keys: &DataKeys, batch: i64) -> Result<(u64, u64), StoreError> {
    let (mut done, mut failed) = (seal_clear(store, keys, batch).await?, 0);
    let mut after = 0;
    loop {
        let rows = store
            .sealed_not_under(keys.current_id(), after, batch)
            .await?;
        let Some(last) = rows.last() else { break };
        after = last.id;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let aad = row_aad(
                &r.account,
                &r.role,
                &r.receipt,
                &r.transaction_type,
                r.transaction_time,
            );
            let Ok(plain) = keys.open(&aad, &r.customer_sealed) else {
                failed += 1;
                continue;
            };
            let email = serde_json::from_slice::<serde_json::Value>(&plain)
                .ok()
                .and_then(|v| {
                    v.pointer("/customer/billing/email")
                        .or_else(|| v.get("ccustemail"))
                        .and_then(|e| e.as_str())
                        .filter(|e| !e.is_empty())
                        .map(str::to_owned)
                });
            out.push((
                r.id,
                keys.seal(&aad, &plain),
                email.map(|e| keys.email_index(&e)),
            ));
        }
        done += out.len() as u64;
        store.rewrap(&out).await?;
    }
    Ok((done, failed))
}

/// Seals the customer data of rows that hold it in clear.
async fn seal_clear(store: &Store, keys: &DataKeys, batch: i64) -> Result<u64, StoreError> {
    let (mut done, mut after) = (0, 0);
    loop {
        let rows = store.clear_customer_rows(after, batch).await?;
        let Some(last) = rows.last() else { break };
        after = last.id;
        let mut out = Vec::new();
        for r in rows {
            let Ok(form) = crate::ins::BodyForm::parse(&r.form) else {
                continue;
            };
            let cut = super::split(&r.payload, form);
            let Some(personal) = cut.personal else {
                continue;
            };
            let aad = row_aad(
                &r.account,
                &r.role,
                &r.receipt,
                &r.transaction_type,
                r.transaction_time,
            );
            out.push((
                r.id,
                cut.clear,
                keys.seal(&aad, personal.as_bytes()),
                cut.email.map(|e| keys.email_index(&e)),
            ));
        }
        done += out.len() as u64;
        store.seal_rows(&out).await?;
    }
    Ok(done)
}

/// How often retention runs.
const RETENTION_EVERY: Duration = Duration::from_secs(24 * 3600);

/// Retention, daily (the first run a minute after start): personal data of
/// notifications older than `customer_days` (when set), rejected posts
/// older than `rejected_days`.
pub fn spawn_retention(
    store: Store,
    customer_days: Option<u32>,
    rejected_days: u32,
    token: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut wait = Duration::from_secs(60);
        loop {
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            wait = RETENTION_EVERY;
            let now = Utc::now();
            let days = |d: u32| now - chrono::Duration::days(i64::from(d));
            match store
                .purge_before(customer_days.map(days), days(rejected_days), now)
                .await
            {
                Ok((0, 0)) => {}
                Ok((n, r)) => tracing::info!(
                    notifications = n,
                    rejected = r,
                    "privacy: retention erased personal data"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "privacy: retention could not run; trying again tomorrow")
                }
            }
        }
    })
}
