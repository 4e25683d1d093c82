//! The ingest pipeline: one function from a post (source address, the
//! account named in the path, the raw body, a header lookup) to a committed
//! notification or the reason there is none. The HTTP handler, `kaching
//! rejected reprocess` and the tests all call [`Ingest::ingest`]; nothing
//! else assembles these steps.
//!
//! In order: source allowlist, candidate accounts, body, form (parsed once,
//! see [`ins::Recognised`]), authentication (a failure is kept for `kaching
//! rejected` and counted against its address, see [`FailureLimiter`]), the
//! matching actions, the commit
//! (group commit, bounded by the commit timeout). After every commit the
//! pipeline hints the new runs to the dispatcher (a bounded channel that
//! drops hints when full) and publishes a [`Committed`] on one broadcast
//! channel for whoever follows commits (the report projector, to wake up;
//! the dashboard's live feed; nothing is built or sent while nobody
//! subscribes). A subscriber that lags
//! only misses events, never slows an acknowledgement: the database stays
//! the truth, and the dispatcher's poller finds any run whose hint was lost.

mod error;
mod keeper;
mod limiter;

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::sync::broadcast;

use crate::actions::Dispatcher;
use crate::ins::{self, AccountKeys, AccountName, BodyForm, Notification, TransactionType};
use crate::runtime::{contains, Live, Runtime};
use crate::store::{
    NewNotification, NewRejected, NewRun, Recorded, StoreError, StoredNotification, Writer,
};

pub use error::{BodyError, IngestError};
pub use keeper::RejectedKeeper;
pub use limiter::FailureLimiter;

/// Committed events that may wait for a slow subscriber before it lags.
const EVENTS: usize = 4096;

/// One post, as received.
pub struct Post<'a> {
    /// The client's address (after trusted-proxy resolution).
    pub source_ip: IpAddr,
    /// The account named in the path (`{ins_path}/{account}`), if any.
    pub account_hint: Option<&'a str>,
    pub body: Result<Bytes, BodyError>,
    /// Looks up a request header by lowercase name (HMAC mode).
    pub header: &'a (dyn Fn(&str) -> Option<&'a str> + Sync),
    pub received_at: DateTime<Utc>,
}

/// A stored notification: what was stored, with which key, and what the
/// store did with it.
#[derive(Debug)]
pub struct Accepted {
    pub notification: NewNotification,
    /// 0: the account's current key; `n`: `previous_secret_keys[n - 1]`.
    pub key_index: usize,
    pub recorded: Recorded,
}

/// What the pipeline publishes after each commit.
#[derive(Debug, Clone)]
pub struct Committed {
    /// The row's id.
    pub id: i64,
    /// False when this was a copy of a stored notification (a retry).
    pub new: bool,
    pub account: AccountName,
    pub form: BodyForm,
    /// Type, role, amounts, currency, products: the parsed notification.
    pub notification: Arc<Notification>,
    pub received_at: DateTime<Utc>,
    /// The action runs created with it.
    pub runs: Vec<NewRun>,
}

/// The pipeline and what it holds between posts.
#[derive(Debug)]
pub struct Ingest {
    runtime: Live,
    writer: Writer,
    /// `None` where failures must not count (reprocessing kept posts).
    limiter: Option<FailureLimiter>,
    /// Where refused posts are kept; `None` where they must not be kept again
    /// (`kaching rejected reprocess`).
    rejected: Option<RejectedKeeper>,
    events: broadcast::Sender<Arc<Committed>>,
    /// The dispatcher, told of new runs directly: a hop through the
    /// broadcast and a forwarding task per notification cost 7-10 % of
    /// ingest throughput in the benchmark.
    runs: Option<Dispatcher>,
    /// The refund-risk model in force, scoring each new sale.
    risk: Option<crate::risk::Slot>,
    /// The orders reconciliation recovered, for their late copies.
    recovered: Option<Arc<crate::reconcile::Recovered>>,
}

impl Ingest {
    /// Scores new sales with the model in `slot` (when there is one).
    pub fn with_risk(mut self, slot: crate::risk::Slot) -> Self {
        self.risk = Some(slot);
        self
    }

    /// Stores a late copy of a recovered order as its duplicate.
    pub fn with_recovered(mut self, recovered: Arc<crate::reconcile::Recovered>) -> Self {
        self.recovered = Some(recovered);
        self
    }

    pub fn new(
        runtime: Live,
        writer: Writer,
        rejected: Option<RejectedKeeper>,
        runs: Option<Dispatcher>,
    ) -> Self {
        Self {
            runtime,
            writer,
            limiter: Some(FailureLimiter::new()),
            rejected,
            events: broadcast::channel(EVENTS).0,
            runs,
            risk: None,
            recovered: None,
        }
    }

    /// The pipeline for `kaching rejected reprocess`: a post that fails
    /// again is neither kept again nor counted against its address.
    pub fn for_reprocessing(runtime: Live, writer: Writer) -> Self {
        Self {
            runtime,
            writer,
            limiter: None,
            rejected: None,
            events: broadcast::channel(EVENTS).0,
            runs: None,
            risk: None,
            recovered: None,
        }
    }

    /// The channel of commits, for subscribers made later (each live-feed viewer).
    pub fn commits(&self) -> broadcast::Sender<Arc<Committed>> {
        self.events.clone()
    }

    /// Every commit from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Committed>> {
        self.events.subscribe()
    }

    /// The runtime in force (a snapshot for one request).
    pub fn runtime(&self) -> arc_swap::Guard<Arc<Runtime>> {
        self.runtime.load()
    }

    pub fn writer(&self) -> &Writer {
        &self.writer
    }

    /// Authenticates and stores one post; Ok only after its commit.
    pub async fn ingest(&self, post: Post<'_>) -> Result<Accepted, IngestError> {
        let runtime = self.runtime.load();
        let (ip, max) = (post.source_ip, runtime.max_failures_per_minute);
        // Past its limit, an address's failures are answered cheaply (see `failed`).
        let blocked = self.limiter.as_ref().and_then(|l| l.blocked(ip, max));
        let auth = match self.authenticate(&runtime, &post, blocked) {
            Ok(auth) => auth,
            Err(e) => return Err(self.failed(ip, max, blocked, e)),
        };
        let key_index = auth.key_index;
        let (notification, recorded) = self
            .commit(
                runtime,
                auth.account,
                auth.form,
                auth.notification,
                Some(ip),
                post.received_at,
            )
            .await?;
        Ok(Accepted {
            notification,
            key_index,
            recorded,
        })
    }

    /// Every check of a post before its commit. A failure is kept for
    /// `kaching rejected` unless its address is `blocked` (past its limit).
    fn authenticate(
        &self,
        runtime: &Runtime,
        post: &Post<'_>,
        blocked: Option<std::time::Duration>,
    ) -> Result<ins::Authenticated, IngestError> {
        let ip = post.source_ip;
        let keep = blocked.is_none();
        if !runtime.allowed_ips.is_empty() && !contains(&runtime.allowed_ips, ip) {
            return Err(IngestError::SourceNotAllowed);
        }
        let candidates: Vec<&AccountKeys> = match post.account_hint {
            Some(name) => match runtime.account(name) {
                Some(a) => vec![a],
                None => {
                    // Kept like any refused post (a mistyped account in
                    // ClickBank's URL shows in `kaching rejected`), which also
                    // makes its refusal cost what a wrong key's does.
                    if let (Ok(body), true) = (&post.body, keep) {
                        self.keep(post, body, "no such account".to_owned(), None);
                    }
                    return Err(IngestError::UnknownAccount);
                }
            },
            None => runtime.accounts.iter().collect(),
        }
        .into_iter()
        .filter(|a| a.allowed_ips.is_empty() || contains(&a.allowed_ips, ip))
        .map(|a| &a.keys)
        .collect();
        if candidates.is_empty() {
            return Err(IngestError::SourceNotAllowed);
        }
        let body = post.body.as_ref().map_err(|e| IngestError::Body(*e))?;
        let recognised = ins::Recognised::parse(body).ok_or(IngestError::Unrecognised)?;
        // A legacy cverify is 32 bits: from a blocked address it gets no
        // answer at all, or guessing would go on. An AES envelope or an HMAC
        // cannot be guessed, so those are still checked.
        if let (Some(wait), BodyForm::LegacyForm) = (blocked, recognised.form()) {
            return Err(IngestError::RateLimited(wait));
        }
        recognised
            .authenticate(body, post.header, &candidates)
            .map_err(|reason| {
                if keep {
                    let signature = candidates
                        .iter()
                        .filter_map(|a| a.hmac_header.as_deref())
                        .find_map(post.header);
                    self.keep(post, body, reason.to_string(), signature);
                }
                IngestError::Rejected(reason)
            })
    }

    /// Counts a failed post against its address: a forger from one address
    /// cannot make kaching keep, log and answer in full more than `max` of
    /// its posts a minute. Once `blocked`, its failures become a 429 that
    /// costs no write and no log line (the 403 it would have been is not told).
    fn failed(
        &self,
        ip: IpAddr,
        max: u32,
        blocked: Option<std::time::Duration>,
        e: IngestError,
    ) -> IngestError {
        if matches!(e, IngestError::RateLimited(_) | IngestError::Unavailable(_)) {
            return e;
        }
        if let Some(limiter) = &self.limiter {
            if limiter.failed(ip, max) {
                tracing::warn!(%ip, max, "ins: failure limit reached for this address; its failed posts get 429 for the rest of the minute, and its legacy posts are not checked");
            }
        }
        match blocked {
            Some(wait) => IngestError::RateLimited(wait),
            None => e,
        }
    }

    /// Stores an order that reached kaching another way than a post
    /// (reconciliation, [`crate::reconcile`]): sealed, scored and committed
    /// with its matching actions' runs exactly as a post's notification.
    pub async fn store_recovered(
        &self,
        account: AccountName,
        notification: Notification,
        received_at: DateTime<Utc>,
    ) -> Result<Recorded, IngestError> {
        let runtime = self.runtime.load();
        self.commit(
            runtime,
            account,
            BodyForm::OrdersApi,
            notification,
            None,
            received_at,
        )
        .await
        .map(|(new, recorded)| {
            if let (Some(r), Recorded::New { .. }) = (&self.recovered, &recorded) {
                r.add(new.account.as_str(), &new.notification);
            }
            recorded
        })
    }

    /// From an authenticated notification to its commit: the customer data
    /// sealed, a sale scored, the matching runs, the write, the hints.
    async fn commit(
        &self,
        runtime: arc_swap::Guard<Arc<Runtime>>,
        account: AccountName,
        form: BodyForm,
        mut notification: Notification,
        source_ip: Option<IpAddr>,
        received_at: DateTime<Utc>,
    ) -> Result<(NewNotification, Recorded), IngestError> {
        let (personal, email_index) = match &runtime.data_keys {
            Some(keys) => crate::privacy::seal_customer(keys, &account, form, &mut notification),
            None => (None, None),
        };
        if let (Some(recovered), false) = (&self.recovered, form == BodyForm::OrdersApi) {
            // A copy of an order reconciliation recovered is stored as its
            // duplicate, under its key (see [`crate::reconcile`]).
            let tolerance = runtime
                .account(account.as_str())
                .and_then(|a| a.reconcile.as_ref())
                .map_or(crate::reconcile::DEFAULT_TOLERANCE, |p| p.tolerance);
            if let Some(t) = recovered.twin(account.as_str(), &notification, tolerance) {
                notification.transaction_time = t;
            }
        }
        let refund_risk = match &self.risk {
            Some(slot) if notification.transaction_type == TransactionType::Sale => slot
                .load()
                .as_ref()
                .map(|s| s.model.score(&crate::risk::features::values(&notification))),
            _ => None,
        };
        let new = NewNotification {
            actions: runtime.actions.matching(
                account.as_str(),
                form,
                &notification,
                refund_risk,
                // This process's dispatcher runs them: created claimed.
                self.runs.as_ref().map(|_| received_at),
            ),
            refund_risk,
            personal,
            email_index,
            account,
            form,
            notification: Arc::new(notification),
            source_ip,
            received_at,
        };
        let timeout = runtime.commit_timeout;
        drop(runtime);
        let recorded = tokio::time::timeout(timeout, self.writer.record(new.clone()))
            .await
            .map_err(|_| StoreError::Timeout(timeout))
            .and_then(|r| r)
            .map_err(IngestError::Unavailable)?;
        self.publish(&new, &recorded);
        Ok((new, recorded))
    }

    fn keep(&self, post: &Post<'_>, body: &Bytes, reason: String, signature: Option<&str>) {
        if let Some(keeper) = &self.rejected {
            use chrono::SubsecRound as _;
            // Microseconds: what both databases keep, and the sealed body's binding.
            let received_at = post.received_at.trunc_subsecs(6);
            let source_ip = post.source_ip.to_string();
            let (body, sealed) = match &self.runtime.load().data_keys {
                Some(keys) => (
                    keys.seal(
                        &crate::privacy::rejected_aad(received_at, Some(&source_ip)),
                        body,
                    )
                    .into_bytes(),
                    true,
                ),
                None => (body.to_vec(), false),
            };
            keeper.keep(NewRejected {
                received_at,
                source_ip: Some(post.source_ip),
                account_hint: post.account_hint.map(str::to_owned),
                reason,
                body,
                signature: signature.map(str::to_owned),
                sealed,
            });
        }
    }

    fn publish(&self, n: &NewNotification, recorded: &Recorded) {
        if let (Some(dispatcher), Recorded::New { id, runs }) = (&self.runs, recorded) {
            if !runs.is_empty() {
                let subject = Arc::new(StoredNotification::committed(*id, n));
                dispatcher.notify_with(runs, Some(subject));
            }
        }
        if self.events.receiver_count() == 0 {
            return;
        }
        let (id, new, runs) = match recorded {
            Recorded::New { id, runs } => (*id, true, runs.clone()),
            Recorded::Duplicate { id, .. } => (*id, false, Vec::new()),
        };
        // No subscriber, or all lagging: nothing waits on them.
        let _ = self.events.send(Arc::new(Committed {
            id,
            new,
            account: n.account.clone(),
            form: n.form,
            notification: n.notification.clone(),
            received_at: n.received_at,
            runs,
        }));
    }
}
