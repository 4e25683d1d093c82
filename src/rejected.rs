//! `kaching rejected reprocess`: try the kept rejected posts again with the
//! current keys (for the day a user pasted the wrong key). Those that now
//! authenticate are stored like any notification (deduplicated) and removed
//! from the rejected table; the rest stay. Their action runs are picked up
//! by the running daemon's dispatcher.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use chrono::Utc;

use crate::config::Settings;
use crate::ingest::{Ingest, IngestError, Post};
use crate::runtime::{Live, Runtime};
use crate::store::{Recorded, Store, Writer};

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reprocessed {
    pub stored: usize,
    pub duplicates: usize,
    pub still_rejected: usize,
}

/// Rows handled per round trip, so a full table is not loaded at once.
const BATCH: i64 = 500;

/// Each kept post goes through the same pipeline as a live one (allowlists,
/// the account it named, authentication, actions, group commit), except
/// that a post failing again is not kept a second time and does not count
/// against its address's failure limit.
pub async fn reprocess(settings: &Settings, store: &Store) -> anyhow::Result<Reprocessed> {
    let runtime = Runtime::build(settings)?;
    crate::app::check_data_keys(store, &runtime).await?;
    reprocess_with(Arc::new(ArcSwap::from_pointee(runtime)), store).await
}

/// [`reprocess`] with the runtime in force (the dashboard's button).
pub async fn reprocess_with(runtime: Live, store: &Store) -> anyhow::Result<Reprocessed> {
    // A command, not a server: its metrics are never scraped.
    let (writer, _writers) = Writer::spawn(store.clone(), Default::default());
    let keys = runtime.load().data_keys.clone();
    // A kept post of an order reconciliation recovered since is its duplicate.
    let recovered = Arc::new(crate::reconcile::Recovered::default());
    recovered.refresh(store).await?;
    let ingest = Ingest::for_reprocessing(runtime, writer).with_recovered(recovered);
    let mut summary = Reprocessed::default();
    let mut seen = 0i64;
    loop {
        let rows = store.rejected_after(seen, BATCH).await?;
        let Some(last) = rows.last() else { break };
        seen = last.id;

        for row in &rows {
            let body = match (row.sealed, &keys) {
                (false, _) => row.body.clone(),
                (true, Some(keys)) => {
                    let aad =
                        crate::privacy::rejected_aad(row.received_at, row.source_ip.as_deref());
                    match std::str::from_utf8(&row.body)
                        .map_err(|_| crate::privacy::KeyError::NotSealed)
                        .and_then(|sealed| keys.open(&aad, sealed))
                    {
                        Ok(b) => b,
                        Err(e) => {
                            tracing::warn!(rejected_id = row.id, error = %e, "rejected: cannot open the kept post");
                            summary.still_rejected += 1;
                            continue;
                        }
                    }
                }
                (true, None) => {
                    tracing::warn!(
                        rejected_id = row.id,
                        "rejected: the kept post is sealed and privacy.encrypt is off"
                    );
                    summary.still_rejected += 1;
                    continue;
                }
            };
            let signature = row.signature.as_deref();
            let header = |_: &str| signature;
            let post = Post {
                source_ip: row
                    .source_ip
                    .as_deref()
                    .and_then(|ip| ip.parse().ok())
                    .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
                account_hint: row.account_hint.as_deref(),
                body: Ok(Bytes::from(body)),
                header: &header,
                received_at: Utc::now(),
            };
            match ingest.ingest(post).await {
                Ok(accepted) => match accepted.recorded {
                    Recorded::New { id, .. } => {
                        summary.stored += 1;
                        tracing::info!(rejected_id = row.id, id, receipt = %accepted.notification.notification.receipt, "rejected: stored");
                    }
                    Recorded::Duplicate { id, .. } => {
                        summary.duplicates += 1;
                        tracing::info!(rejected_id = row.id, id, "rejected: already stored");
                    }
                },
                Err(IngestError::Unavailable(e)) => return Err(e.into()),
                Err(_) => {
                    summary.still_rejected += 1;
                    continue;
                }
            }
            store.delete_rejected(row.id).await?;
        }
    }
    Ok(summary)
}
