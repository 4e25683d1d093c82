//! `kaching rejected reprocess`: try the kept rejected posts again with the
//! current keys (for the day a user pasted the wrong key). Those that now
//! authenticate are stored like any notification (deduplicated) and removed
//! from the rejected table; the rest stay. Their action runs are picked up
//! by the running daemon's dispatcher.

use chrono::Utc;

use crate::actions::Actions;
use crate::config::Settings;
use crate::ins::{self, AccountKeys};
use crate::store::{NewNotification, Recorded, Store};

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reprocessed {
    pub stored: usize,
    pub duplicates: usize,
    pub still_rejected: usize,
}

/// Rows handled per round trip, so a full table is not loaded at once.
const BATCH: i64 = 500;

pub async fn reprocess(settings: &Settings, store: &Store) -> anyhow::Result<Reprocessed> {
    let accounts = settings.account_keys()?;
    let actions = Actions::from_settings(&settings.actions)?;
    let mut summary = Reprocessed::default();
    let mut seen = 0i64;
    loop {
        let rows = store.rejected_after(seen, BATCH).await?;
        let Some(last) = rows.last() else { break };
        seen = last.id;
        for row in &rows {
            let candidates: Vec<&AccountKeys> = match &row.account_hint {
                Some(name) => accounts
                    .iter()
                    .filter(|a| a.name.as_str() == name)
                    .collect(),
                None => accounts.iter().collect(),
            };
            let signature = row.signature.as_deref();
            let header = |_: &str| signature;
            let auth = match ins::authenticate(&row.body, &header, &candidates) {
                Ok(auth) => auth,
                Err(_) => {
                    summary.still_rejected += 1;
                    continue;
                }
            };
            let receipt = auth.notification.receipt.clone();
            let new = NewNotification {
                actions: actions.matching(auth.account.as_str(), &auth.notification),
                account: auth.account,
                form: auth.form,
                notification: std::sync::Arc::new(auth.notification),
                source_ip: row.source_ip.as_deref().and_then(|ip| ip.parse().ok()),
                received_at: Utc::now(),
            };
            match store.record(new).await? {
                Recorded::New { id, .. } => {
                    summary.stored += 1;
                    tracing::info!(rejected_id = row.id, id, %receipt, "rejected: stored");
                }
                Recorded::Duplicate { id, .. } => {
                    summary.duplicates += 1;
                    tracing::info!(rejected_id = row.id, id, "rejected: already stored");
                }
            }
            store.delete_rejected(row.id).await?;
        }
    }
    Ok(summary)
}
