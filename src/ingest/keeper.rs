//! Keeps rejected posts for `kaching rejected`, off the request path: the
//! 403 never waits for it, and a flood of forged posts costs one batched
//! commit per burst instead of competing with genuine notifications for the
//! database. Best effort by design: when the queue is full, posts are
//! dropped (and counted in the log), never the other way round.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::metrics::Metrics;
use crate::store::{NewRejected, Store};

/// Posts waiting to be kept; a flood beyond this is dropped.
const QUEUE: usize = 1024;
const BATCH: usize = 256;

#[derive(Clone, Debug)]
pub struct RejectedKeeper {
    tx: mpsc::Sender<NewRejected>,
    dropped: Arc<AtomicU64>,
    metrics: Arc<Metrics>,
}

impl RejectedKeeper {
    /// Starts the keeper; it ends once every handle is dropped and the queue is empty.
    pub fn spawn(
        store: Store,
        max_rows: u32,
        metrics: Arc<Metrics>,
    ) -> (RejectedKeeper, JoinHandle<()>) {
        let (tx, mut rx) = mpsc::channel(QUEUE);
        let counts = metrics.clone();
        let task = tokio::spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            while rx.recv_many(&mut batch, BATCH).await > 0 {
                match store.record_rejected(&batch, max_rows).await {
                    Ok(()) => counts.rejected_kept(batch.len()),
                    Err(e) => {
                        counts.rejected_dropped(batch.len());
                        tracing::warn!(error = %e, posts = batch.len(), "ins: cannot keep rejected posts");
                    }
                }
                batch.clear();
            }
        });
        (
            RejectedKeeper {
                tx,
                dropped: Arc::default(),
                metrics,
            },
            task,
        )
    }

    /// Queues a rejected post; never waits.
    pub fn keep(&self, row: NewRejected) {
        if self.tx.try_send(row).is_err() {
            self.metrics.rejected_dropped(1);
            // A flood must not flood the log too: say so at 1, 2, 4, 8… drops.
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                tracing::warn!(
                    dropped,
                    "ins: too many rejected posts at once; not keeping some"
                );
            }
        }
    }
}
