//! The dispatcher: executes action runs. New runs arrive as ids over a
//! bounded channel right after their notification commits (the fast path;
//! a full channel drops the hint, never the run). A poller claims what is
//! due (retries, runs created by the CLI, runs whose process died), so the
//! database stays the truth. Each action has its own concurrency limit, and
//! a run is claimed only when a slot is free, so a lease never runs out
//! while a run waits.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{Action, Actions};
use crate::store::{RunOutcome, Store};

/// How often due runs are looked for.
const POLL_EVERY: Duration = Duration::from_secs(1);
/// Run hints that may wait; beyond that the poller finds the runs.
const CHANNEL: usize = 4096;
/// A lease outlives the execution's own timeout by this much.
const LEASE_MARGIN: Duration = Duration::from_secs(5);

/// The handle the request path uses to hint at new runs.
#[derive(Clone, Debug)]
pub struct Dispatcher {
    tx: mpsc::Sender<(i64, usize)>,
}

impl Dispatcher {
    /// Hints that runs `(run id, action index)` exist. Never waits.
    pub fn notify(&self, runs: &[(i64, usize)]) {
        for run in runs {
            // Full or closed: the poller will find the run in the database.
            let _ = self.tx.try_send(*run);
        }
    }

    /// Starts the dispatcher; it stops claiming when `shutdown` is
    /// cancelled, then gives running executions `grace` to finish.
    pub fn spawn(
        store: Store,
        actions: Arc<Actions>,
        shutdown: CancellationToken,
        grace: Duration,
    ) -> (Dispatcher, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(CHANNEL);
        let task = tokio::spawn(run(store, actions, rx, shutdown, grace));
        (Dispatcher { tx }, task)
    }
}

/// Runs claimed by this process and not yet finished, to hand back at shutdown.
type InFlight = Arc<Mutex<HashSet<(i64, i32)>>>;

fn lease(action: &Action) -> chrono::Duration {
    chrono::Duration::from_std(action.timeout * 2 + LEASE_MARGIN)
        .unwrap_or(chrono::Duration::minutes(5))
}

async fn run(
    store: Store,
    actions: Arc<Actions>,
    mut rx: mpsc::Receiver<(i64, usize)>,
    shutdown: CancellationToken,
    grace: Duration,
) {
    if actions.is_empty() {
        // Nothing to run; still drain hints so senders never see a full channel.
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = async { while rx.recv().await.is_some() {} } => {}
        }
        return;
    }
    let slots: Vec<Arc<Semaphore>> = actions
        .iter()
        .map(|a| Arc::new(Semaphore::new(a.concurrency)))
        .collect();
    let in_flight: InFlight = Arc::default();
    let mut tasks = JoinSet::new();
    let mut poll = tokio::time::interval(POLL_EVERY);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!(actions = slots.len(), "dispatcher: started");
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            Some((id, index)) = rx.recv() => {
                let (Some(action), Some(slot)) = (actions.get(index), slots.get(index)) else { continue };
                let Ok(permit) = slot.clone().try_acquire_owned() else { continue };
                let now = Utc::now();
                match store.claim_run(id, now, now + lease(action)).await {
                    Ok(Some(attempts)) => start(&mut tasks, &store, &actions, index, id, attempts, permit, &in_flight),
                    Ok(None) => {}
                    Err(e) => tracing::warn!(error = %e, run = id, "dispatcher: cannot claim"),
                }
            }
            _ = poll.tick() => {
                for action in actions.iter() {
                    let slot = &slots[action.index];
                    let free = slot.available_permits();
                    if free == 0 {
                        continue;
                    }
                    let now = Utc::now();
                    let claimed = match store.claim_due(&action.name, i64::try_from(free).unwrap_or(1), now, now + lease(action)).await {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::warn!(error = %e, action = %action.name, "dispatcher: cannot look for due runs");
                            continue;
                        }
                    };
                    for (id, attempts) in claimed {
                        match slot.clone().try_acquire_owned() {
                            Ok(permit) => start(&mut tasks, &store, &actions, action.index, id, attempts, permit, &in_flight),
                            Err(_) => {
                                let _ = store.release_run(id, attempts).await;
                            }
                        }
                    }
                }
            }
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                if let Err(e) = done {
                    tracing::error!(error = %e, "dispatcher: an execution panicked");
                }
            }
        }
    }
    tracing::info!(
        running = tasks.len(),
        "dispatcher: stopped claiming; waiting for running actions"
    );
    let drained =
        tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        let left: Vec<(i64, i32)> = in_flight
            .lock()
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        for (id, attempts) in &left {
            let _ = store.release_run(*id, *attempts).await;
        }
        tracing::warn!(
            released = left.len(),
            "dispatcher: interrupted actions left pending for the next start"
        );
    }
    tracing::info!("dispatcher: stopped");
}

#[allow(clippy::too_many_arguments)]
fn start(
    tasks: &mut JoinSet<()>,
    store: &Store,
    actions: &Arc<Actions>,
    index: usize,
    id: i64,
    attempts: i32,
    permit: OwnedSemaphorePermit,
    in_flight: &InFlight,
) {
    if let Ok(mut s) = in_flight.lock() {
        s.insert((id, attempts));
    }
    let (store, actions, in_flight) = (store.clone(), actions.clone(), in_flight.clone());
    let span = tracing::info_span!("action", run = id, attempt = attempts);
    tasks.spawn(
        async move {
            if let Some(action) = actions.get(index) {
                execute(&store, action, id, attempts).await;
            }
            if let Ok(mut s) = in_flight.lock() {
                s.remove(&(id, attempts));
            }
            drop(permit);
        }
        .instrument(span),
    );
}

/// One execution of one run, start to recorded finish.
async fn execute(store: &Store, action: &Action, id: i64, attempts: i32) {
    let ctx = match store.run_context(id).await {
        Ok(Some(ctx)) => ctx,
        Ok(None) => return,
        Err(e) => {
            // Leave it running: the lease expires and the poller retries it.
            tracing::warn!(error = %e, "dispatcher: cannot load the run");
            return;
        }
    };
    let event = action.event(&ctx.notification);
    let started = std::time::Instant::now();
    let outcome = tokio::time::timeout(action.timeout, action.execute(&event))
        .await
        .unwrap_or_else(|_| super::Outcome::retry(format!("timed out after {:?}", action.timeout)));
    let now = Utc::now();
    let next = action.retry.decide(outcome, attempts, ctx.created_at, now);
    let latency_ms = started.elapsed().as_millis() as u64;
    match &next {
        RunOutcome::Done => {
            tracing::info!(action = %action.name, event = %event.id, receipt = %event.receipt, latency_ms, "action: done")
        }
        RunOutcome::Retry { at, error } => {
            tracing::warn!(action = %action.name, event = %event.id, receipt = %event.receipt, %error, retry_at = %at, "action: will retry")
        }
        RunOutcome::Failed { error } => {
            tracing::error!(action = %action.name, event = %event.id, receipt = %event.receipt, %error, "action: failed (dead letter)")
        }
    }
    match store.finish_run(id, attempts, &next, now).await {
        Ok(true) => {}
        Ok(false) => {
            tracing::warn!(action = %action.name, "dispatcher: the run was taken over (lease expired) before it finished")
        }
        Err(e) => {
            tracing::error!(error = %e, action = %action.name, "dispatcher: cannot record the outcome; the run will be retried after its lease")
        }
    }
}
