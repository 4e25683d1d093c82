//! The dispatcher: executes action runs. New runs arrive as ids over a
//! bounded channel right after their notification commits (the fast path;
//! a full channel drops the hint, never the run). A poller claims what is
//! due (retries, runs created by the CLI, runs whose process died), so the
//! database stays the truth. Each action has its own concurrency limit, and
//! a run is claimed only when a slot is free, so a lease never runs out
//! while a run waits. Claims and outcomes are written in batches (one
//! statement claims every waiting hint, a finisher task records outcomes
//! together), so follow-up work costs the database a few commits per burst,
//! not two per notification.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{Action, Actions};
use crate::metrics::Metrics;
use crate::store::{Claimed, NewRun, RunOutcome, RunSubject, Store};

/// How often due runs are looked for.
const POLL_EVERY: Duration = Duration::from_secs(1);
/// Run hints that may wait; beyond that the poller finds the runs.
const CHANNEL: usize = 4096;
/// A lease outlives the execution's own timeout by this much.
const LEASE_MARGIN: Duration = Duration::from_secs(5);
/// Slack past an action's own timeout before the dispatcher abandons it.
const SAFETY_NET: Duration = Duration::from_secs(1);
/// Hints claimed, and outcomes recorded, per statement at most.
const BATCH: usize = 512;

/// The handle the request path uses to hint at new runs.
#[derive(Clone, Debug)]
pub struct Dispatcher {
    tx: mpsc::Sender<NewRun>,
}

impl Dispatcher {
    /// Hints that runs exist. Never waits.
    pub fn notify(&self, runs: &[NewRun]) {
        for run in runs {
            // Full or closed: the poller will find the run in the database.
            let _ = self.tx.try_send(run.clone());
        }
    }

    /// Starts the dispatcher; it stops claiming when `shutdown` is
    /// cancelled, then gives running executions `grace` to finish.
    ///
    /// `actions` gives the actions in force each time it is called: a
    /// reload changes what the next claim sees, runs already executing
    /// finish with the action they started with.
    pub fn spawn(
        store: Store,
        actions: impl Fn() -> Arc<Actions> + Send + 'static,
        shutdown: CancellationToken,
        grace: Duration,
        metrics: Arc<Metrics>,
    ) -> (Dispatcher, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(CHANNEL);
        let task = tokio::spawn(run(store, actions, rx, shutdown, grace, metrics));
        (Dispatcher { tx }, task)
    }
}

/// Runs claimed by this process and not yet finished, to hand back at shutdown.
type InFlight = Arc<Mutex<HashSet<(i64, i32)>>>;
/// Where executions send how they ended.
type Finished = mpsc::Sender<(i64, i32, RunOutcome)>;

fn lease(action: &Action) -> chrono::Duration {
    chrono::Duration::from_std(action.timeout * 2 + LEASE_MARGIN)
        .unwrap_or(chrono::Duration::minutes(5))
}

async fn run(
    store: Store,
    actions: impl Fn() -> Arc<Actions> + Send + 'static,
    mut rx: mpsc::Receiver<NewRun>,
    shutdown: CancellationToken,
    grace: Duration,
    metrics: Arc<Metrics>,
) {
    // By action name: runs name their action, and a run whose action is
    // not configured (removed, renamed) has no slot, so it is never claimed.
    let mut slots = Slots::new();
    let in_flight: InFlight = Arc::default();
    let (finished, finisher) = {
        let (tx, rx) = mpsc::channel(CHANNEL);
        (tx, tokio::spawn(record_outcomes(store.clone(), rx)))
    };
    let mut tasks = JoinSet::new();
    let mut poll = tokio::time::interval(POLL_EVERY);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut hints = Vec::with_capacity(BATCH);
    let mut hints_open = true;
    tracing::info!(actions = actions().iter().count(), "dispatcher: started");
    loop {
        let current = actions();
        sync_slots(&mut slots, &current);
        let ctx = Ctx {
            store: &store,
            actions: &current,
            slots: &slots,
            in_flight: &in_flight,
            finished: &finished,
            metrics: &metrics,
        };
        tokio::select! {
            () = shutdown.cancelled() => break,
            n = rx.recv_many(&mut hints, BATCH), if hints_open && hints.len() < CHANNEL => {
                if n == 0 {
                    hints_open = false;
                    continue;
                }
                claim_hinted(&ctx, &mut tasks, &mut hints).await;
            }
            _ = poll.tick() => claim_due(&ctx, &mut tasks).await,
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                // Every execution that has ended frees its slot before the next claim.
                let mut done = Some(done);
                while let Some(ended) = done {
                    if let Err(e) = ended {
                        tracing::error!(error = %e, "dispatcher: an execution panicked");
                    }
                    done = tasks.try_join_next();
                }
                if !hints.is_empty() {
                    claim_hinted(&ctx, &mut tasks, &mut hints).await;
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
    }
    drop(finished);
    let _ = finisher.await;
    let left: Vec<(i64, i32)> = in_flight
        .lock()
        .map(|s| s.iter().copied().collect())
        .unwrap_or_default();
    for (id, attempts) in &left {
        let _ = store.release_run(*id, *attempts).await;
    }
    if !left.is_empty() {
        tracing::warn!(
            released = left.len(),
            "dispatcher: interrupted actions left pending for the next start"
        );
    }
    tracing::info!("dispatcher: stopped");
}

/// What claiming and starting runs needs.
struct Ctx<'a> {
    store: &'a Store,
    actions: &'a Arc<Actions>,
    slots: &'a Slots,
    in_flight: &'a InFlight,
    finished: &'a Finished,
    metrics: &'a Arc<Metrics>,
}

/// Each configured action's concurrency limit (and the limit it was made
/// with), by name.
type Slots = HashMap<Arc<str>, (usize, Arc<Semaphore>)>;

/// Keeps one slot per action in force: a new action gets one, a removed one
/// loses it (its runs wait, orphaned), a changed concurrency gets a new one
/// (executions holding the old one finish under it).
fn sync_slots(slots: &mut Slots, actions: &Actions) {
    slots.retain(|name, _| actions.by_name(name).is_some());
    for a in actions.iter() {
        if slots
            .get(&a.name)
            .is_none_or(|(limit, _)| *limit != a.concurrency)
        {
            let slot = (a.concurrency, Arc::new(Semaphore::new(a.concurrency)));
            slots.insert(a.name.clone(), slot);
        }
    }
}

impl Ctx<'_> {
    fn slot(&self, action: &Action) -> Option<&Arc<Semaphore>> {
        self.slots.get(&action.name).map(|(_, s)| s)
    }

    fn free(&self, action: &Action) -> usize {
        self.slot(action).map_or(0, |s| s.available_permits())
    }
}

/// Claims the hinted runs that have a free slot, one statement per action.
/// A hint without a free slot waits here (up to [`CHANNEL`] of them) for the
/// next slot; a hint of an action not configured, or one whose claim failed,
/// is dropped: the poller finds that run later.
async fn claim_hinted(ctx: &Ctx<'_>, tasks: &mut JoinSet<()>, hints: &mut Vec<NewRun>) {
    let mut tried: HashSet<i64> = HashSet::new();
    for action in ctx.actions.iter() {
        let free = ctx.free(action);
        let ids: Vec<i64> = hints
            .iter()
            .filter(|hint| hint.action == action.name)
            .map(|hint| hint.id)
            .take(free)
            .collect();
        if ids.is_empty() {
            continue;
        }
        tried.extend(&ids);
        let now = Utc::now();
        match ctx.store.claim_runs(&ids, now, now + lease(action)).await {
            Ok(claimed) => start_all(ctx, tasks, action, claimed).await,
            Err(e) => tracing::warn!(error = %e, action = %action.name, "dispatcher: cannot claim"),
        }
    }
    hints.retain(|hint| !tried.contains(&hint.id) && ctx.actions.by_name(&hint.action).is_some());
}

/// Claims what is due (retries, orphans, runs made by the CLI), up to each
/// action's free slots.
async fn claim_due(ctx: &Ctx<'_>, tasks: &mut JoinSet<()>) {
    for action in ctx.actions.iter() {
        let free = ctx.free(action);
        if free == 0 {
            continue;
        }
        let now = Utc::now();
        let limit = i64::try_from(free).unwrap_or(1);
        match ctx
            .store
            .claim_due(&action.name, limit, now, now + lease(action))
            .await
        {
            Ok(claimed) => start_all(ctx, tasks, action, claimed).await,
            Err(e) => {
                tracing::warn!(error = %e, action = %action.name, "dispatcher: cannot look for due runs")
            }
        }
    }
}

async fn start_all(ctx: &Ctx<'_>, tasks: &mut JoinSet<()>, action: &Action, claimed: Vec<Claimed>) {
    for run in claimed {
        match ctx.slot(action).map(|s| s.clone().try_acquire_owned()) {
            Some(Ok(permit)) => start(ctx, tasks, action.name.clone(), run, permit),
            // Cannot happen (we claimed at most the free slots), but never run unbounded.
            Some(Err(_)) | None => {
                let _ = ctx.store.release_run(run.id, run.attempts).await;
            }
        }
    }
}

/// Records outcomes in batches; ends when every sender is gone.
async fn record_outcomes(store: Store, mut rx: mpsc::Receiver<(i64, i32, RunOutcome)>) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let mut tries = 0;
        loop {
            match store.finish_runs(&batch, Utc::now()).await {
                Ok(0) => break,
                Ok(stale) => {
                    tracing::warn!(
                        stale,
                        "dispatcher: runs were taken over (lease expired) before they finished"
                    );
                    break;
                }
                Err(e) if tries < 3 => {
                    tries += 1;
                    tracing::warn!(error = %e, "dispatcher: cannot record outcomes; trying again");
                    tokio::time::sleep(Duration::from_millis(200 * tries)).await;
                }
                Err(e) => {
                    tracing::error!(error = %e, runs = batch.len(), "dispatcher: cannot record outcomes; the runs will be retried after their lease");
                    break;
                }
            }
        }
        batch.clear();
    }
}

fn start(
    ctx: &Ctx<'_>,
    tasks: &mut JoinSet<()>,
    action: Arc<str>,
    run: Claimed,
    permit: OwnedSemaphorePermit,
) {
    let (id, attempts) = (run.id, run.attempts);
    if let Ok(mut s) = ctx.in_flight.lock() {
        s.insert((id, attempts));
    }
    let (store, actions, in_flight, finished, metrics) = (
        ctx.store.clone(),
        ctx.actions.clone(),
        ctx.in_flight.clone(),
        ctx.finished.clone(),
        ctx.metrics.clone(),
    );
    let span = tracing::info_span!("action", run = id, attempt = attempts);
    tasks.spawn(
        async move {
            if let Some(action) = actions.by_name(&action) {
                if let Some(outcome) = execute(&store, action, run).await {
                    metrics.action_run(&action.name, &outcome);
                    let _ = finished.send((id, attempts, outcome)).await;
                }
            }
            if let Ok(mut s) = in_flight.lock() {
                s.remove(&(id, attempts));
            }
            drop(permit);
        }
        .instrument(span),
    );
}

/// One execution of one run; returns the run's next state.
async fn execute(store: &Store, action: &Action, run: Claimed) -> Option<RunOutcome> {
    let event = match &run.subject {
        RunSubject::Notification(id) => match store.notification(*id).await {
            Ok(Some(n)) => action.event(&n),
            Ok(None) => return None,
            Err(e) => {
                // Leave it running: the lease expires and the poller retries it.
                tracing::warn!(error = %e, "dispatcher: cannot load the notification");
                return None;
            }
        },
        RunSubject::Alert(alert) => action.alert_event(alert),
    };
    let started = std::time::Instant::now();
    // Each kind enforces `timeout` itself and says how it ended; this bound
    // is the safety net for one that would hang anyway.
    let outcome = tokio::time::timeout(action.timeout + SAFETY_NET, action.execute(&event))
        .await
        .unwrap_or_else(|_| super::Outcome::retry(format!("timed out after {:?}", action.timeout)));
    let now = Utc::now();
    let next = action
        .retry
        .decide(outcome, run.attempts, run.created_at, now);
    let latency_ms = started.elapsed().as_millis() as u64;
    match &next {
        RunOutcome::Done => {
            tracing::debug!(action = %action.name, event = %event.id(), receipt = %event.receipt(), latency_ms, "action: done")
        }
        RunOutcome::Retry { at, error } => {
            tracing::warn!(action = %action.name, event = %event.id(), receipt = %event.receipt(), %error, retry_at = %at, "action: will retry")
        }
        RunOutcome::Failed { error } => {
            tracing::error!(action = %action.name, event = %event.id(), receipt = %event.receipt(), %error, "action: failed (dead letter)")
        }
    }
    Some(next)
}
