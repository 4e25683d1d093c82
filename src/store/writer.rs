//! Group commit. Requests hand their notification to a queue; a writer task
//! takes whatever is waiting (never waiting for company, so a lone request
//! commits at once), stores it with [`Store::record_batch`] in one
//! transaction, and answers each request only after that commit. Under load
//! a batch forms while the previous one commits: one fsync serves many
//! requests instead of one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, Mutex};
use tokio::task::JoinSet;

use super::{NewNotification, Recorded, Store, StoreError};
use crate::metrics::Metrics;

/// Largest batch: a commit's size stays bounded and a batch's rows are
/// acknowledged together, so this also bounds how long the first waits.
const MAX_BATCH: usize = 256;
/// Requests that may wait for a writer; past that `record` waits for room
/// (the caller's timeout then answers 503), so memory stays bounded.
const QUEUE: usize = 4096;
/// A commit this recent proves the store writable without probing it; a
/// failed notification commit this recent makes it not ready, whatever a
/// probe says (a one-row probe can fit where a batch does not).
const FRESH: Duration = Duration::from_secs(5);

/// How commits went, as the writers last saw them: `/readyz` answers from
/// this, and probes with a commit of its own when it is stale.
#[derive(Debug)]
struct CommitHealth {
    /// Milliseconds after `epoch` of the last successful / failed commit (0: never).
    last_ok_ms: AtomicU64,
    last_failed_ms: AtomicU64,
    epoch: Instant,
}

impl CommitHealth {
    fn new() -> Self {
        Self {
            last_ok_ms: AtomicU64::new(0),
            last_failed_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        (self.epoch.elapsed().as_millis() as u64).max(1)
    }

    fn record(&self, ok: bool) {
        let at = if ok {
            &self.last_ok_ms
        } else {
            &self.last_failed_ms
        };
        at.store(self.now_ms(), Ordering::Relaxed);
    }

    /// `Some(true)`: ready without probing; `Some(false)`: not ready;
    /// `None`: nothing recent to go by, probe.
    fn verdict(&self) -> Option<bool> {
        let (ok, failed) = (
            self.last_ok_ms.load(Ordering::Relaxed),
            self.last_failed_ms.load(Ordering::Relaxed),
        );
        let recent = |t: u64| t > 0 && self.now_ms() - t < FRESH.as_millis() as u64;
        if failed > ok && recent(failed) {
            Some(false)
        } else if ok > failed && recent(ok) {
            Some(true)
        } else {
            None
        }
    }
}

struct Job {
    row: NewNotification,
    reply: oneshot::Sender<Result<Recorded, StoreError>>,
}

/// The handle requests use. Cheap to clone; when every clone is dropped the
/// writers finish what is queued and stop.
#[derive(Clone, Debug)]
pub struct Writer {
    tx: mpsc::Sender<Job>,
    store: Store,
    health: Arc<CommitHealth>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").finish_non_exhaustive()
    }
}

impl Writer {
    /// Starts the writer tasks: several for Postgres (one commits while
    /// another gathers the next batch), one for SQLite (it has one writer lock).
    pub fn spawn(store: Store, metrics: Arc<Metrics>) -> (Writer, JoinSet<()>) {
        let writers = match store {
            Store::Postgres(_) => 4,
            Store::Sqlite(_) => 1,
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        let health = Arc::new(CommitHealth::new());
        let mut tasks = JoinSet::new();
        for _ in 0..writers {
            tasks.spawn(run(
                store.clone(),
                rx.clone(),
                health.clone(),
                metrics.clone(),
            ));
        }
        (Writer { tx, store, health }, tasks)
    }

    /// Ok when the store takes commits: a notification committed in the
    /// last few seconds and none failed since; not when one failed in the
    /// last few seconds and none succeeded since; otherwise a probe commit
    /// (bounded by `timeout`) decides. So after a full disk it turns ready
    /// by itself once commits work again, with or without traffic.
    pub async fn ready(&self, timeout: Duration) -> Result<(), StoreError> {
        match self.health.verdict() {
            Some(true) => return Ok(()),
            Some(false) => return Err(StoreError::Failing),
            None => {}
        }
        let probe = tokio::time::timeout(timeout, self.store.probe_write())
            .await
            .unwrap_or(Err(StoreError::Timeout(timeout)));
        self.health.record(probe.is_ok());
        probe
    }

    /// The store it writes to.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Stores `row`; returns after the commit that contains it.
    pub async fn record(&self, row: NewNotification) -> Result<Recorded, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Job { row, reply })
            .await
            .map_err(|_| StoreError::WriterStopped)?;
        answer.await.map_err(|_| StoreError::WriterStopped)?
    }
}

async fn run(
    store: Store,
    rx: Arc<Mutex<mpsc::Receiver<Job>>>,
    health: Arc<CommitHealth>,
    metrics: Arc<Metrics>,
) {
    let mut jobs = Vec::with_capacity(MAX_BATCH);
    loop {
        {
            let mut rx = rx.lock().await;
            if rx.recv_many(&mut jobs, MAX_BATCH).await == 0 {
                return; // every Writer dropped and the queue is empty
            }
        }
        commit(&store, &health, &metrics, &mut jobs).await;
    }
}

/// Commits `jobs` as one batch and answers each: Ok only for rows whose
/// commit returned success. If the database refused the batch, each row is
/// tried alone, so one bad row cannot fail the others; if it could not be
/// reached, or a COMMIT's outcome is unknown, every row of the batch fails
/// (503, and ClickBank retries).
async fn commit(store: &Store, health: &CommitHealth, metrics: &Metrics, jobs: &mut Vec<Job>) {
    let rows: Vec<NewNotification> = jobs.iter().map(|j| j.row.clone()).collect();
    let started = Instant::now();
    let result = store.record_batch(&rows).await;
    metrics.commit(rows.len(), started.elapsed(), result.is_ok());
    health.record(result.is_ok());
    match result {
        Ok(results) => {
            for (job, result) in jobs.drain(..).zip(results) {
                let _ = job.reply.send(Ok(result));
            }
        }
        Err(e) if jobs.len() > 1 && e.worth_retrying_alone() => {
            tracing::warn!(error = %e, rows = jobs.len(), "store: batch failed; committing its rows one by one");
            for job in jobs.drain(..) {
                let started = Instant::now();
                let result = store.record(job.row).await;
                metrics.commit(1, started.elapsed(), result.is_ok());
                health.record(result.is_ok());
                let _ = job.reply.send(result);
            }
        }
        Err(e) => {
            if jobs.len() > 1 {
                tracing::warn!(error = %e, rows = jobs.len(), "store: batch failed; failing its rows");
            }
            let e = Arc::new(e);
            for job in jobs.drain(..) {
                let _ = job.reply.send(Err(StoreError::Batch(e.clone())));
            }
        }
    }
}
