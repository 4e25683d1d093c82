//! Reports: what the stored notifications say about the business. [`facts`]
//! reads a notification's meaning (pure), [`project`] keeps the report
//! tables up to date from the store, [`query`] turns them into the figures
//! the dashboard and its API show (money exact per currency, refund rates
//! with their intervals), [`stats`] holds the intervals and tests.
//!
//! [`Reports`] is the handle: a background task projects after commits, and
//! every read first projects what is still pending (up to a budget), so a
//! figure includes the notifications committed before the request.

pub mod facts;
pub mod project;
pub mod query;
pub mod stats;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, Mutex};
use tokio_util::sync::CancellationToken;

use crate::alerts::Rules;
use crate::ingest::Committed;
use crate::runtime::Live;
use crate::store::{Store, StoreError};

pub use project::Pass;

/// Notifications a read projects before it answers; beyond that (a large
/// backfill) it answers with what is projected and says how far behind.
const READ_BUDGET: usize = 5_000;
/// Notifications the background task projects per pass before yielding.
const TASK_BUDGET: usize = 20_000;
/// After a commit, wait this long for more before projecting: one pass
/// per burst, not one per notification.
const COALESCE: Duration = Duration::from_millis(200);
/// A pass even without commits (notifications written by another process).
const TICK: Duration = Duration::from_secs(5);

/// The projector and the store it reads.
#[derive(Debug)]
pub struct Reports {
    store: Store,
    /// The runtime whose alert rules the projector observes with (`None`:
    /// commands that only count).
    live: Option<Live>,
    cursor: Mutex<project::Cursor>,
    /// What the last pass left (0: caught up), for the pages' banner.
    remaining: AtomicI64,
}

impl Reports {
    pub fn new(store: Store, live: Option<Live>) -> Arc<Reports> {
        Arc::new(Reports {
            store,
            live,
            cursor: Mutex::new(project::Cursor::default()),
            remaining: AtomicI64::new(0),
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    fn rules(&self) -> Option<Arc<Rules>> {
        self.live.as_ref().map(|l| l.load().alerts.clone())
    }

    /// Projects what is pending, up to a budget; the figures read next
    /// include every notification committed before this call unless the
    /// returned pass is not caught up.
    pub async fn catch_up(&self) -> Result<Pass, StoreError> {
        let mut cursor = self.cursor.lock().await;
        let pass = project::pass(
            &self.store,
            &mut cursor,
            READ_BUDGET,
            false,
            self.rules().as_deref(),
        )
        .await?;
        self.remaining.store(pass.remaining, Ordering::Relaxed);
        Ok(pass)
    }

    /// Counts everything pending, however much (`kaching report backfill`),
    /// then verifies once more, so that a backfill longer than the grace
    /// period leaves the watermark at its start and the daemon's first pass
    /// does not re-read it. Returns the notifications counted.
    pub async fn backfill(&self) -> Result<usize, StoreError> {
        let mut cursor = self.cursor.lock().await;
        let mut total = 0;
        loop {
            let pass = project::pass(
                &self.store,
                &mut cursor,
                usize::MAX,
                true,
                self.rules().as_deref(),
            )
            .await?;
            total += pass.projected;
            if pass.caught_up {
                break;
            }
        }
        cursor.force_verify();
        total += project::pass(
            &self.store,
            &mut cursor,
            usize::MAX,
            true,
            self.rules().as_deref(),
        )
        .await?
        .projected;
        self.remaining.store(0, Ordering::Relaxed);
        Ok(total)
    }

    /// How many stored notifications the reports had not counted at the
    /// last pass (an upper bound: ids are not dense); 0 when caught up.
    pub fn behind(&self) -> i64 {
        self.remaining.load(Ordering::Relaxed)
    }

    /// Projects in the background: soon after commits, and every few
    /// seconds, until `token` is cancelled.
    pub fn spawn(
        self: Arc<Self>,
        mut commits: broadcast::Receiver<Arc<Committed>>,
        token: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut backlog = true;
            loop {
                if !backlog {
                    tokio::select! {
                        _ = token.cancelled() => return,
                        r = commits.recv() => match r {
                            // No sender left (shutting down): the tick alone.
                            Err(broadcast::error::RecvError::Closed) => tokio::time::sleep(TICK).await,
                            _ => tokio::time::sleep(COALESCE).await,
                        },
                        _ = tokio::time::sleep(TICK) => {}
                    }
                }
                // Whatever queued meanwhile is in this pass.
                while let Ok(_) | Err(broadcast::error::TryRecvError::Lagged(_)) =
                    commits.try_recv()
                {}
                let rules = self.rules();
                let pass = {
                    let mut cursor = self.cursor.lock().await;
                    tokio::select! {
                        _ = token.cancelled() => return,
                        p = project::pass(&self.store, &mut cursor, TASK_BUDGET, true, rules.as_deref()) => p,
                    }
                };
                match pass {
                    Ok(p) => {
                        self.remaining.store(p.remaining, Ordering::Relaxed);
                        backlog = !p.caught_up;
                        if p.projected > 0 {
                            tracing::debug!(
                                projected = p.projected,
                                caught_up = p.caught_up,
                                "report: projected"
                            );
                        }
                    }
                    Err(e) => {
                        backlog = false;
                        tracing::warn!(error = %e, "report: cannot project; trying again shortly");
                    }
                }
            }
        })
    }
}
