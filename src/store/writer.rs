//! Group commit. Requests hand their notification to a queue; a writer task
//! takes whatever is waiting (never waiting for company, so a lone request
//! commits at once), stores it with [`Store::record_batch`] in one
//! transaction, and answers each request only after that commit. Under load
//! a batch forms while the previous one commits: one fsync serves many
//! requests instead of one.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Mutex};
use tokio::task::JoinSet;

use super::{NewNotification, Recorded, Store, StoreError};

/// Largest batch: a commit's size stays bounded and a batch's rows are
/// acknowledged together, so this also bounds how long the first waits.
const MAX_BATCH: usize = 256;
/// Requests that may wait for a writer; past that `record` waits for room
/// (the caller's timeout then answers 503), so memory stays bounded.
const QUEUE: usize = 4096;

struct Job {
    row: NewNotification,
    reply: oneshot::Sender<Result<Recorded, StoreError>>,
}

/// The handle requests use. Cheap to clone; when every clone is dropped the
/// writers finish what is queued and stop.
#[derive(Clone, Debug)]
pub struct Writer {
    tx: mpsc::Sender<Job>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").finish_non_exhaustive()
    }
}

impl Writer {
    /// Starts the writer tasks: several for Postgres (one commits while
    /// another gathers the next batch), one for SQLite (it has one writer lock).
    pub fn spawn(store: Store) -> (Writer, JoinSet<()>) {
        let writers = match store {
            Store::Postgres(_) => 4,
            Store::Sqlite(_) => 1,
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        let mut tasks = JoinSet::new();
        for _ in 0..writers {
            tasks.spawn(run(store.clone(), rx.clone()));
        }
        (Writer { tx }, tasks)
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

async fn run(store: Store, rx: Arc<Mutex<mpsc::Receiver<Job>>>) {
    let mut jobs = Vec::with_capacity(MAX_BATCH);
    loop {
        {
            let mut rx = rx.lock().await;
            if rx.recv_many(&mut jobs, MAX_BATCH).await == 0 {
                return; // every Writer dropped and the queue is empty
            }
        }
        commit(&store, &mut jobs).await;
    }
}

/// Commits `jobs` as one batch and answers each. If the batch fails, each
/// row is tried alone, so one bad row cannot fail the others.
async fn commit(store: &Store, jobs: &mut Vec<Job>) {
    let rows: Vec<NewNotification> = jobs.iter().map(|j| j.row.clone()).collect();
    match store.record_batch(&rows).await {
        Ok(results) => {
            for (job, result) in jobs.drain(..).zip(results) {
                let _ = job.reply.send(Ok(result));
            }
        }
        Err(e) if jobs.len() == 1 => {
            if let Some(job) = jobs.pop() {
                let _ = job.reply.send(Err(e));
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, rows = jobs.len(), "store: batch failed; committing its rows one by one");
            for job in jobs.drain(..) {
                let result = store.record(job.row).await;
                let _ = job.reply.send(result);
            }
        }
    }
}
