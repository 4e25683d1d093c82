//! The dispatcher: executes action runs. New runs arrive as hints over a
//! bounded channel right after their notification commits, each with the
//! notification it is about, so the fast path never reads it back (a full
//! channel drops the hint, never the run). A poller claims what is due
//! (retries, runs created by the CLI, runs whose process died), so the
//! database stays the truth.
//!
//! A run made with its notification by this process is created already
//! claimed (see [`creation_lease`]): its hint goes straight to the queue,
//! with no claim statement. Other runs are claimed in batches
//! of up to [`claim_size`] into a per-action queue, with a lease long
//! enough for the whole queue to execute one slot-full at a time (see
//! [`lease`]), so a lease never runs out while its run waits. Outcomes are
//! recorded together by a finisher task. So follow-up work costs the
//! database one claim per batch and one outcome commit per burst, not
//! statements per notification.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{Action, Actions};
use crate::metrics::Metrics;
use crate::store::{Claimed, NewRun, RunOutcome, RunSubject, Store, StoredNotification};

/// How often due runs are looked for.
const POLL_EVERY: Duration = Duration::from_secs(1);
/// Run hints that may wait; beyond that the poller finds the runs.
const CHANNEL: usize = 4096;
/// A lease outlives the executions it covers by this much.
const LEASE_MARGIN: Duration = Duration::from_secs(5);
/// The longest lease a claim takes: what a crash can delay a run by.
const LEASE_CAP: Duration = Duration::from_secs(120);
/// Slack past an action's own timeout before the dispatcher abandons it.
const SAFETY_NET: Duration = Duration::from_secs(1);
/// After the first outcome of a burst, how long the finisher waits for more
/// (the lease covers it; nothing waits for an outcome's commit).
const OUTCOMES_COALESCE: Duration = Duration::from_millis(50);
/// Runs claimed, and outcomes recorded, per statement at most.
const BATCH: usize = 512;

/// A new run, with the notification it is about when the hint comes from
/// the commit (the execution then does not read it back).
#[derive(Debug, Clone)]
pub struct Hint {
    pub run: NewRun,
    pub subject: Option<Arc<StoredNotification>>,
}

/// The handle the request path uses to hint at new runs.
#[derive(Clone, Debug)]
pub struct Dispatcher {
    tx: mpsc::Sender<Hint>,
}

impl Dispatcher {
    /// Hints that runs exist. Never waits.
    pub fn notify(&self, runs: &[NewRun]) {
        self.notify_with(runs, None);
    }

    /// Hints that runs about `subject`, just committed, exist. Never waits.
    pub fn notify_with(&self, runs: &[NewRun], subject: Option<Arc<StoredNotification>>) {
        for run in runs {
            // Full or closed: the poller will find the run in the database.
            let _ = self.tx.try_send(Hint {
                run: run.clone(),
                subject: subject.clone(),
            });
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

/// Runs claimed by this process and not yet finished (queued or
/// executing), to hand back at shutdown.
type InFlight = Arc<Mutex<HashSet<(i64, i32)>>>;
/// Where executions send how they ended.
type Finished = mpsc::Sender<(i64, i32, RunOutcome)>;

/// The longest one execution may hold a slot.
fn wave(action: &Action) -> Duration {
    action.timeout + SAFETY_NET
}

/// The lease for a claim of `n` runs into an empty queue: the executions
/// holding the slots end within one wave, then the queue runs one
/// slot-full per wave, the last run ending within a wave of its start.
fn lease(action: &Action, n: usize) -> chrono::Duration {
    let per_slot = n.saturating_sub(1) / action.concurrency.max(1);
    let waves = u32::try_from(per_slot + 2).unwrap_or(u32::MAX);
    chrono::Duration::from_std(wave(action).saturating_mul(waves) + LEASE_MARGIN)
        .unwrap_or(chrono::Duration::minutes(5))
}

/// The lease a run made with its notification is created under when this
/// process will execute it: as for a claim of one.
pub fn creation_lease(action: &Action) -> chrono::Duration {
    lease(action, 1)
}

/// How many runs one claim takes: as many as [`LEASE_CAP`] allows, never
/// fewer than a slot-full, never more than [`BATCH`].
fn claim_size(action: &Action) -> usize {
    let waves =
        LEASE_CAP.saturating_sub(LEASE_MARGIN).as_millis() / wave(action).as_millis().max(1);
    let per_slot = usize::try_from(waves).unwrap_or(1).saturating_sub(1).max(1);
    (per_slot * action.concurrency.max(1)).min(BATCH)
}

/// A claimed run waiting for a slot: the run, the notification it came
/// with, and when its lease ends.
type Queued = (Claimed, Option<Arc<StoredNotification>>, DateTime<Utc>);

/// Claimed runs of one action waiting for a slot, oldest claim first.
#[derive(Default)]
struct Queue {
    ready: VecDeque<Queued>,
    /// The last look for due runs filled a whole claim: look again as soon
    /// as the queue empties instead of at the next tick.
    more_due: bool,
}

async fn run(
    store: Store,
    actions: impl Fn() -> Arc<Actions> + Send + 'static,
    mut rx: mpsc::Receiver<Hint>,
    shutdown: CancellationToken,
    grace: Duration,
    metrics: Arc<Metrics>,
) {
    // By action name: runs name their action, and a run whose action is
    // not configured (removed, renamed) has no slot, so it is never claimed.
    let mut slots = Slots::new();
    let mut queues: HashMap<Arc<str>, Queue> = HashMap::new();
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
        let mut ctx = Ctx {
            store: &store,
            actions: &current,
            slots: &slots,
            queues: &mut queues,
            in_flight: &in_flight,
            finished: &finished,
            metrics: &metrics,
            tasks: &mut tasks,
        };
        ctx.release_orphaned().await;
        tokio::select! {
            () = shutdown.cancelled() => break,
            n = rx.recv_many(&mut hints, BATCH), if hints_open && hints.len() < CHANNEL => {
                if n == 0 {
                    hints_open = false;
                    continue;
                }
                ctx.fill(&mut hints).await;
            }
            _ = poll.tick() => {
                ctx.claim_due().await;
                ctx.fill(&mut hints).await;
            }
            Some(done) = ctx.tasks.join_next(), if !ctx.tasks.is_empty() => {
                // Every execution that has ended frees its slot before the next start.
                let mut done = Some(done);
                while let Some(ended) = done {
                    if let Err(e) = ended {
                        tracing::error!(error = %e, "dispatcher: an execution panicked");
                    }
                    done = ctx.tasks.try_join_next();
                }
                ctx.fill(&mut hints).await;
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
    // Queued runs never started; interrupted ones did not finish; runs
    // created claimed whose hint was still waiting were never queued.
    rx.close();
    while let Ok(hint) = rx.try_recv() {
        hints.push(hint);
    }
    let mut left: Vec<(i64, i32)> = in_flight
        .lock()
        .map(|s| s.iter().copied().collect())
        .unwrap_or_default();
    left.extend(
        hints
            .iter()
            .filter(|h| h.run.claimed_until.is_some())
            .map(|h| (h.run.id, 1)),
    );
    for (id, attempts) in &left {
        let _ = store.release_run(*id, *attempts).await;
    }
    if !left.is_empty() {
        tracing::warn!(
            released = left.len(),
            "dispatcher: queued or interrupted actions left pending for the next start"
        );
    }
    tracing::info!("dispatcher: stopped");
}

/// What claiming and starting runs needs.
struct Ctx<'a> {
    store: &'a Store,
    actions: &'a Arc<Actions>,
    slots: &'a Slots,
    queues: &'a mut HashMap<Arc<str>, Queue>,
    in_flight: &'a InFlight,
    finished: &'a Finished,
    metrics: &'a Arc<Metrics>,
    tasks: &'a mut JoinSet<()>,
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
    /// Queued runs of an action a reload removed go back to pending.
    async fn release_orphaned(&mut self) {
        let gone: Vec<Arc<str>> = self
            .queues
            .keys()
            .filter(|name| self.actions.by_name(name).is_none())
            .cloned()
            .collect();
        for name in gone {
            for (run, _, _) in self.queues.remove(&name).unwrap_or_default().ready {
                self.forget(&run);
                let _ = self.store.release_run(run.id, run.attempts).await;
            }
        }
    }

    fn forget(&self, run: &Claimed) {
        if let Ok(mut s) = self.in_flight.lock() {
            s.remove(&(run.id, run.attempts));
        }
    }

    /// Queues the runs created claimed; starts what has a free slot; then,
    /// for each action whose queue emptied, claims its next batch from the
    /// hints (or, when the last look for due runs was full, from the
    /// database) and starts again. A hint whose action is not configured,
    /// or whose claim failed, is dropped: the poller finds that run later.
    async fn fill(&mut self, hints: &mut Vec<Hint>) {
        let mut tried: HashSet<i64> = HashSet::new();
        let actions = self.actions.clone();
        for action in actions.iter() {
            let owned: Vec<Queued> = hints
                .iter()
                .filter(|hint| hint.run.action == action.name)
                .filter_map(created_claimed)
                .collect();
            tried.extend(owned.iter().map(|(run, _, _)| run.id));
            self.enqueue(action, owned);
            self.start_ready(action);
            if !self.queue(action).ready.is_empty() {
                continue;
            }
            let mut subjects: HashMap<i64, Option<Arc<StoredNotification>>> = hints
                .iter()
                .filter(|hint| hint.run.action == action.name && !tried.contains(&hint.run.id))
                .take(claim_size(action))
                .map(|hint| (hint.run.id, hint.subject.clone()))
                .collect();
            if subjects.is_empty() {
                if self.queue(action).more_due {
                    self.claim_due_of(action).await;
                    self.start_ready(action);
                }
                continue;
            }
            let ids: Vec<i64> = subjects.keys().copied().collect();
            tried.extend(&ids);
            let now = Utc::now();
            let until = now + lease(action, ids.len());
            match self.store.claim_runs(&ids, now, until).await {
                Ok(claimed) => {
                    let claimed = claimed
                        .into_iter()
                        .map(|run| {
                            let subject = subjects.remove(&run.id).flatten();
                            (run, subject, until)
                        })
                        .collect();
                    self.enqueue(action, claimed);
                }
                Err(e) => {
                    tracing::warn!(error = %e, action = %action.name, "dispatcher: cannot claim")
                }
            }
            self.start_ready(action);
        }
        hints.retain(|hint| {
            !tried.contains(&hint.run.id) && self.actions.by_name(&hint.run.action).is_some()
        });
    }

    /// Looks for due runs (retries, orphans, runs made by the CLI) of every
    /// action whose queue is empty.
    async fn claim_due(&mut self) {
        let actions = self.actions.clone();
        for action in actions.iter() {
            if self.queue(action).ready.is_empty() {
                self.claim_due_of(action).await;
            }
        }
    }

    async fn claim_due_of(&mut self, action: &Action) {
        let size = claim_size(action);
        let now = Utc::now();
        let until = now + lease(action, size);
        let limit = i64::try_from(size).unwrap_or(1);
        match self.store.claim_due(&action.name, limit, now, until).await {
            Ok(claimed) => {
                self.queue(action).more_due = claimed.len() == size;
                let claimed = claimed.into_iter().map(|run| (run, None, until)).collect();
                self.enqueue(action, claimed);
            }
            Err(e) => {
                self.queue(action).more_due = false;
                tracing::warn!(error = %e, action = %action.name, "dispatcher: cannot look for due runs")
            }
        }
    }

    fn queue(&mut self, action: &Action) -> &mut Queue {
        self.queues.entry(action.name.clone()).or_default()
    }

    fn enqueue(&mut self, action: &Action, claimed: Vec<Queued>) {
        if let Ok(mut s) = self.in_flight.lock() {
            s.extend(claimed.iter().map(|(run, _, _)| (run.id, run.attempts)));
        }
        self.queue(action).ready.extend(claimed);
    }

    /// Starts queued runs of `action` while it has free slots. A run whose
    /// lease would end before its execution could (it waited too long
    /// behind a backlog) is left alone: once the lease ends the poller
    /// claims it again, so it never runs twice at once.
    fn start_ready(&mut self, action: &Action) {
        let Some(slot) = self.slots.get(&action.name).map(|(_, s)| s.clone()) else {
            return;
        };
        let enough = chrono::Duration::from_std(wave(action)).unwrap_or(chrono::Duration::MAX);
        while let Ok(permit) = slot.clone().try_acquire_owned() {
            let Some((run, subject, until)) = self.queue(action).ready.pop_front() else {
                break;
            };
            if until - Utc::now() < enough {
                tracing::debug!(run = run.id, action = %action.name, "dispatcher: lease too short to start; leaving the run to the poller");
                self.forget(&run);
                continue;
            }
            self.start(action.name.clone(), run, subject, permit);
        }
    }

    fn start(
        &mut self,
        action: Arc<str>,
        run: Claimed,
        subject: Option<Arc<StoredNotification>>,
        permit: OwnedSemaphorePermit,
    ) {
        let (id, attempts) = (run.id, run.attempts);
        let (store, actions, in_flight, finished, metrics) = (
            self.store.clone(),
            self.actions.clone(),
            self.in_flight.clone(),
            self.finished.clone(),
            self.metrics.clone(),
        );
        let span = tracing::info_span!("action", run = id, attempt = attempts);
        self.tasks.spawn(
            async move {
                if let Some(action) = actions.by_name(&action) {
                    if let Some(outcome) = execute(&store, action, run, subject).await {
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
}

/// The queued form of a hint for a run this process created claimed; `None`
/// for one it must claim (or one without its notification, left to the
/// poller once its lease ends).
fn created_claimed(hint: &Hint) -> Option<Queued> {
    let until = hint.run.claimed_until?;
    let subject = hint.subject.clone()?;
    let run = Claimed {
        id: hint.run.id,
        attempts: 1,
        created_at: subject.received_at,
        subject: RunSubject::Notification(subject.id),
    };
    Some((run, Some(subject), until))
}

/// Records outcomes in batches; ends when every sender is gone.
async fn record_outcomes(store: Store, mut rx: mpsc::Receiver<(i64, i32, RunOutcome)>) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        if batch.len() < BATCH {
            // One commit per burst, not per run: at a steady trickle each
            // outcome would otherwise be a transaction of its own (and on
            // SQLite a turn at the write lock the notifications wait for).
            tokio::time::sleep(OUTCOMES_COALESCE).await;
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(outcome) => batch.push(outcome),
                    Err(_) => break,
                }
            }
        }
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

/// One execution of one run; returns the run's next state.
async fn execute(
    store: &Store,
    action: &Action,
    run: Claimed,
    carried: Option<Arc<StoredNotification>>,
) -> Option<RunOutcome> {
    let opened = match &run.subject {
        RunSubject::Notification(id) if carried.as_ref().is_some_and(|n| n.id == *id) => {
            action.event(carried.as_deref()?)
        }
        RunSubject::Notification(id) => match store.notification(*id).await {
            Ok(Some(n)) => action.event(&n),
            Ok(None) => return None,
            Err(e) => {
                // Leave it running: the lease expires and the poller retries it.
                tracing::warn!(error = %e, "dispatcher: cannot load the notification");
                return None;
            }
        },
        RunSubject::Alert(subject) => match store.alert(subject.id).await {
            Ok(Some(alert)) => Ok(action.alert_event(&alert, subject.event)),
            Ok(None) => {
                return Some(RunOutcome::Failed {
                    error: format!("alert {} is not in the database", subject.id),
                })
            }
            Err(e) => {
                tracing::warn!(error = %e, "dispatcher: cannot load the alert");
                return None;
            }
        },
    };
    let event = match opened {
        Ok(event) => event,
        Err(e) => {
            // Retried: adding the missing previous key (and reloading) opens it.
            let error = format!("the customer data does not open: {e}");
            tracing::error!(action = %action.name, %error, "action: cannot build the event");
            return Some(action.retry.decide(
                super::Outcome::Retry { error, after: None },
                run.attempts,
                run.created_at,
                Utc::now(),
            ));
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ActionSettings;

    fn log_action(timeout_ms: u64, concurrency: u32) -> Arc<Actions> {
        let s = ActionSettings {
            name: "log".into(),
            kind: "log".into(),
            timeout_ms,
            concurrency,
            ..ActionSettings::default()
        };
        Arc::new(Actions::from_settings(&[s]).unwrap())
    }

    #[test]
    fn a_claim_is_as_big_as_its_lease_can_cover() {
        let actions = log_action(10_000, 4);
        let a = actions.by_name("log").unwrap();
        // 11 s a wave (timeout + safety net), 5 s margin: 10 waves fit in
        // 120 s; one is for the executions already holding the slots.
        assert_eq!(claim_size(a), 36);
        let full = lease(a, claim_size(a)).to_std().unwrap();
        assert!(full <= LEASE_CAP, "{full:?}");
        assert!(lease(a, claim_size(a) + 4).to_std().unwrap() > LEASE_CAP);
        // A slot-full waits for the running wave, then runs within one.
        assert_eq!(lease(a, 4).num_seconds(), 27);
        assert_eq!(creation_lease(a), lease(a, 1));
        assert_eq!(lease(a, 5).num_seconds(), 38);
    }

    #[test]
    fn a_slow_action_still_claims_a_slot_full() {
        let actions = log_action(90_000, 3);
        let a = actions.by_name("log").unwrap();
        assert_eq!(claim_size(a), 3);
        let actions = log_action(1, 1000);
        assert_eq!(claim_size(actions.by_name("log").unwrap()), BATCH);
    }
}
