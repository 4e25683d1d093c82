//! The load loops. Closed loop: each connection posts its next body when the
//! previous one was answered. Open loop: a timer thread releases one slot per
//! 1/rate; any idle connection takes the next slot, and latency counts from
//! the slot's scheduled time (so a stalled daemon cannot hide its queue:
//! no coordinated omission).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::sync::Semaphore;

use crate::client::{Failure, Sender, Target};
use crate::workload::Workload;

/// Per post: what became of it (for the verification).
pub const NOT_SENT: u8 = 0;
/// Answered 200: the daemon says it is stored.
pub const ACKED: u8 = 1;
/// Answered with a status that means "not stored" (4xx but 408).
pub const REFUSED: u8 = 2;
/// 408, 5xx or no answer: it may or may not have been stored.
pub const UNCERTAIN: u8 = 3;

/// Highest latency recorded (ten minutes, in microseconds); longer ones count as this.
const MAX_LATENCY_US: u64 = 600_000_000;

/// 32-bit counts: ~90 KiB per histogram, two per connection.
fn histogram() -> Histogram<u32> {
    // Three significant digits between 1 µs and ten minutes: valid bounds.
    Histogram::new_with_max(MAX_LATENCY_US, 3).unwrap_or_else(|_| unreachable!())
}

/// What one worker (or, merged, the whole run) saw.
pub struct Stats {
    /// Request to answer, microseconds (from the scheduled time in open loop).
    pub latency: Histogram<u32>,
    /// Open loop: scheduled time to actual send, microseconds.
    pub send_lag: Histogram<u32>,
    /// Answers by status code.
    pub status: Vec<u64>,
    pub errors: u64,
    pub error_kinds: HashMap<String, u64>,
    pub reconnects: u64,
    /// Answers (any status).
    pub answered: u64,
    /// Genuine or duplicate posts answered with anything but 200,
    /// forged posts answered with 200.
    pub unexpected: u64,
}

impl Stats {
    fn new() -> Stats {
        Stats {
            latency: histogram(),
            send_lag: histogram(),
            status: vec![0; 600],
            errors: 0,
            error_kinds: HashMap::new(),
            reconnects: 0,
            answered: 0,
            unexpected: 0,
        }
    }

    pub fn merge(&mut self, other: Stats) {
        // Same bounds on both sides: addition cannot fail.
        let _ = self.latency.add(&other.latency);
        let _ = self.send_lag.add(&other.send_lag);
        for (a, b) in self.status.iter_mut().zip(&other.status) {
            *a += b;
        }
        self.errors += other.errors;
        for (k, v) in other.error_kinds {
            *self.error_kinds.entry(k).or_default() += v;
        }
        self.reconnects += other.reconnects;
        self.answered += other.answered;
        self.unexpected += other.unexpected;
    }

    pub fn acked(&self) -> u64 {
        self.status[200]
    }

    pub fn server_errors(&self) -> u64 {
        self.status[500..].iter().sum()
    }
}

/// Shared by all workers of a run.
pub struct Shared {
    pub target: Target,
    pub workload: Workload,
    pub outcomes: Vec<AtomicU8>,
    pub timeout: Duration,
    next: AtomicUsize,
    stop: AtomicBool,
}

impl Shared {
    pub fn new(target: Target, workload: Workload, timeout: Duration) -> Shared {
        let outcomes = (0..workload.posts.len())
            .map(|_| AtomicU8::new(NOT_SENT))
            .collect();
        Shared {
            target,
            workload,
            outcomes,
            timeout,
            next: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
        }
    }

    /// Makes `n` more posts (between phases, when no worker runs).
    pub fn extend(&mut self, n: usize) -> anyhow::Result<()> {
        self.workload.extend(n)?;
        self.outcomes
            .resize_with(self.workload.posts.len(), || AtomicU8::new(NOT_SENT));
        Ok(())
    }

    /// Posts claimed so far (the next index to hand out).
    pub fn claimed(&self) -> usize {
        self.next
            .load(Ordering::Relaxed)
            .min(self.workload.posts.len())
    }
}

/// One connection and its statistics.
pub struct Worker {
    sender: Option<Sender>,
    pub stats: Stats,
}

impl Worker {
    /// Opens the connection now, so that handshakes are not measured.
    pub async fn connect(shared: &Shared) -> anyhow::Result<Worker> {
        Ok(Worker {
            sender: Some(shared.target.connect().await?),
            stats: Stats::new(),
        })
    }

    /// Replaces the connection (the daemon closes idle ones after 10 s).
    pub async fn reopen(&mut self, shared: &Shared) -> anyhow::Result<()> {
        self.sender = None;
        self.sender = Some(shared.target.connect().await?);
        Ok(())
    }

    /// Posts post `i`; `Some(when answered)` or `None` on a transport error.
    async fn exchange(&mut self, shared: &Shared, i: usize) -> Option<(Instant, u16)> {
        let post = &shared.workload.posts[i];
        let result = match self.sender.as_mut() {
            Some(sender) => {
                match tokio::time::timeout(
                    shared.timeout,
                    shared.target.post(sender, post.body.clone()),
                )
                .await
                {
                    Ok(r) => r,
                    Err(_) => Err(Failure::Timeout(shared.timeout)),
                }
            }
            None => {
                self.stats.reconnects += 1;
                match shared.target.connect().await {
                    Ok(mut sender) => {
                        let r = match tokio::time::timeout(
                            shared.timeout,
                            shared.target.post(&mut sender, post.body.clone()),
                        )
                        .await
                        {
                            Ok(r) => r,
                            Err(_) => Err(Failure::Timeout(shared.timeout)),
                        };
                        self.sender = Some(sender);
                        r
                    }
                    Err(e) => Err(Failure::Connect(e)),
                }
            }
        };
        let done = Instant::now();
        match result {
            Ok(status) => {
                let code = status.as_u16();
                let outcome = match code {
                    200 => ACKED,
                    408 | 500.. => UNCERTAIN,
                    _ => REFUSED,
                };
                shared.outcomes[i].store(outcome, Ordering::Relaxed);
                Some((done, code))
            }
            Err(failure) => {
                shared.outcomes[i].store(UNCERTAIN, Ordering::Relaxed);
                let connect_failed = matches!(failure, Failure::Connect(_));
                self.sender = None;
                self.stats.errors += 1;
                *self.stats.error_kinds.entry(failure.label()).or_default() += 1;
                if connect_failed {
                    // The daemon is down or refusing: do not spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                None
            }
        }
    }

    fn count(&mut self, shared: &Shared, i: usize, code: u16) {
        let stats = &mut self.stats;
        stats.answered += 1;
        if let Some(n) = stats.status.get_mut(usize::from(code)) {
            *n += 1;
        }
        let forged = shared.workload.posts[i].kind == crate::workload::Kind::Forged;
        if forged == (code == 200) {
            stats.unexpected += 1;
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Warm-up: posts `0..count` closed loop. Returns the workers with fresh
/// statistics, and the warm-up's own (answers and errors, no latency).
pub async fn warmup(
    shared: Arc<Shared>,
    workers: Vec<Worker>,
    count: usize,
) -> (Vec<Worker>, Option<Stats>) {
    shared.next.store(0, Ordering::Relaxed);
    let tasks: Vec<_> = workers
        .into_iter()
        .map(|mut w| {
            let shared = shared.clone();
            tokio::spawn(async move {
                loop {
                    let i = shared.next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        break;
                    }
                    if let Some((_, code)) = w.exchange(&shared, i).await {
                        w.count(&shared, i, code);
                    }
                }
                let stats = std::mem::replace(&mut w.stats, Stats::new());
                (w, stats)
            })
        })
        .collect();
    let mut total: Option<Stats> = None;
    let mut workers = Vec::with_capacity(tasks.len());
    for (w, stats) in join(tasks).await {
        workers.push(w);
        match &mut total {
            Some(t) => t.merge(stats),
            None => total = Some(stats),
        }
    }
    (workers, total)
}

/// Closed loop over posts `from..to`, until they are used up or `deadline`.
pub async fn closed_loop(
    shared: Arc<Shared>,
    workers: Vec<Worker>,
    from: usize,
    to: usize,
    deadline: Option<Instant>,
) -> Vec<Worker> {
    shared.next.store(from, Ordering::Relaxed);
    let tasks: Vec<_> = workers
        .into_iter()
        .map(|mut w| {
            let shared = shared.clone();
            tokio::spawn(async move {
                loop {
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        break;
                    }
                    let i = shared.next.fetch_add(1, Ordering::Relaxed);
                    if i >= to {
                        shared.stop.store(true, Ordering::Relaxed);
                        break;
                    }
                    let start = Instant::now();
                    if let Some((done, code)) = w.exchange(&shared, i).await {
                        w.stats.latency.saturating_record(micros(done - start));
                        w.count(&shared, i, code);
                    }
                }
                w
            })
        })
        .collect();
    join(tasks).await
}

/// True when a closed loop with a deadline ran out of pre-generated posts.
pub fn exhausted(shared: &Shared) -> bool {
    shared.stop.load(Ordering::Relaxed)
}

/// Open loop: `count` posts from `from`, slot `k` scheduled at
/// `t0 + k / rate`. Returns the workers and `t0`.
pub async fn open_loop(
    shared: Arc<Shared>,
    workers: Vec<Worker>,
    from: usize,
    count: usize,
    rate: f64,
) -> (Vec<Worker>, Instant) {
    let slots = Arc::new(Semaphore::new(0));
    let n_workers = workers.len();
    // Start a little ahead so that every worker is waiting for slot 0.
    let t0 = Instant::now() + Duration::from_millis(20);
    let at = move |k: usize| t0 + Duration::from_secs_f64(k as f64 / rate);
    shared.next.store(0, Ordering::Relaxed);

    let timer = {
        let slots = slots.clone();
        std::thread::Builder::new()
            .name("bench-schedule".into())
            .spawn(move || {
                let mut released = 0usize;
                while released < count {
                    let now = Instant::now();
                    // Every slot due by now (several at once if this thread was late).
                    let due = if now < t0 {
                        0
                    } else {
                        (((now - t0).as_secs_f64() * rate).floor() as usize + 1).min(count)
                    };
                    if due > released {
                        slots.add_permits(due - released);
                        released = due;
                    }
                    if released < count {
                        let next = at(released);
                        let now = Instant::now();
                        if next > now {
                            std::thread::sleep(next - now);
                        }
                    }
                }
                // One more per worker: each takes a slot beyond `count` and stops.
                slots.add_permits(n_workers);
            })
    };

    let timer = match timer {
        Ok(handle) => Some(handle),
        Err(e) => {
            eprintln!("kaching-bench: cannot start the schedule thread: {e}");
            slots.close();
            None
        }
    };

    let tasks: Vec<_> = workers
        .into_iter()
        .map(|mut w| {
            let shared = shared.clone();
            let slots = slots.clone();
            tokio::spawn(async move {
                loop {
                    match slots.acquire().await {
                        Ok(permit) => permit.forget(),
                        Err(_) => break,
                    }
                    let k = shared.next.fetch_add(1, Ordering::Relaxed);
                    if k >= count {
                        break;
                    }
                    let scheduled = at(k);
                    let start = Instant::now();
                    w.stats
                        .send_lag
                        .saturating_record(micros(start.saturating_duration_since(scheduled)));
                    if let Some((done, code)) = w.exchange(&shared, from + k).await {
                        w.stats
                            .latency
                            .saturating_record(micros(done.saturating_duration_since(scheduled)));
                        w.count(&shared, from + k, code);
                    }
                }
                w
            })
        })
        .collect();
    let workers = join(tasks).await;
    if let Some(handle) = timer {
        let _ = handle.join();
    }
    (workers, t0)
}

async fn join<T>(tasks: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut workers = Vec::with_capacity(tasks.len());
    for t in tasks {
        match t.await {
            Ok(w) => workers.push(w),
            Err(e) => eprintln!("kaching-bench: a worker failed: {e}"),
        }
    }
    workers
}
