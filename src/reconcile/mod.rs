//! Reconciliation with ClickBank's Orders API: no sale lost when kaching
//! was down, misconfigured or unreachable past ClickBank's few retries.
//!
//! A run over a window of days (ClickBank's days, US Pacific):
//! 1. **Counts first.** `orders2/count` per day and transaction type (SALE,
//!    BILL, RFND, CGBK: the types the API lists), against kaching's own
//!    count of that account's notifications on that Pacific day.
//! 2. **Lists only what differs.** `orders2/list` for each (day, type)
//!    whose counts differ, every page.
//! 3. **Matches.** An order is kaching's already when a stored
//!    notification has its (account, role, receipt, type) and a
//!    transaction time within `match_tolerance` (5 minutes by default).
//!    Orders younger than [`SETTLE`] are left for INS to deliver.
//! 4. **Stores what is missing** through the ingest pipeline's own commit
//!    ([`crate::ingest::Ingest::store_recovered`]): one transaction with
//!    its action runs, the customer data sealed, `form = "orders-api"`, the
//!    event flagged `reconciled`. A dry run stops before this step.
//!
//! A late INS copy of a recovered order is a duplicate: by the dedup key
//! when the two transaction times are equal (ClickBank's record of one
//! transaction, to the second), and otherwise because the pipeline finds
//! its recovered twin within the tolerance in memory ([`Recovered`]: no
//! query on the request path) and stores it under the twin's key. The
//! daemon's own runs add to that index at once; a `kaching reconcile` run
//! in another process reaches it at the daemon's next refresh (every
//! [`REFRESH`]; one indexed query for the rows added since).
//!
//! Limits: at most `requests_per_second` (ClickBank allows 10 per
//! address), `daily_budget` calls per account per 24 hours counted over
//! every run (ClickBank allows 25,000 a day per account, shared with the
//! user's other tools), and a 403 (ClickBank's over-limit answer) backed
//! off from, 1 s, 2 s, then 4 s, before the run gives up.

mod api;
mod by_hand;
mod orders;
mod recovered;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, TimeZone as _, Utc};
use chrono_tz::America::Los_Angeles;
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

use crate::config::{invalid, secret_from, ConfigError, ReconcileSettings};
use crate::ingest::Ingest;
use crate::ins::{AccountName, Notification};
use crate::metrics::Metrics;
use crate::runtime::Live;
use crate::store::{Recorded, Store, StoredKey};

pub use api::{ApiError, Calls};
pub use by_hand::reconcile;
pub use recovered::Recovered;

/// The transaction types the Orders API lists (and kaching compares).
pub const TYPES: [&str; 4] = ["SALE", "BILL", "RFND", "CGBK"];
/// Orders younger than this are left for INS.
pub const SETTLE: Duration = Duration::from_secs(30 * 60);
/// The longest window of one run, in days.
pub const MAX_DAYS: u64 = 400;
/// How often the daemon reads the rows other processes recovered.
pub const REFRESH: Duration = Duration::from_secs(5);
/// `match_tolerance`'s default, also used for accounts without reconciliation.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(5 * 60);
/// The longest `match_tolerance`.
const MAX_TOLERANCE: Duration = Duration::from_secs(10 * 60);

/// `[accounts.reconcile]` of one account, resolved.
pub struct Plan {
    pub account: AccountName,
    api_key: SecretString,
    pub every: Option<Duration>,
    pub lookback_days: u32,
    pub api_url: reqwest::Url,
    pub tolerance: Duration,
    pub daily_budget: u32,
    pace: Duration,
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plan")
            .field("account", &self.account)
            .field("every", &self.every)
            .finish_non_exhaustive()
    }
}

impl Plan {
    /// Resolves `accounts[i].reconcile`; errors name the key.
    pub fn build(
        account: &AccountName,
        s: &ReconcileSettings,
        i: usize,
    ) -> Result<Plan, ConfigError> {
        let key = |k: &str| format!("accounts[{i}].reconcile.{k}");
        let api_key = secret_from(
            &s.api_key_env,
            &s.api_key_file,
            (&key("api_key_env"), &key("api_key_file")),
        )?
        .ok_or_else(|| invalid(key("api_key_env"), "set api_key_env or api_key_file"))?;
        let shaped = !api_key.is_empty()
            && api_key.bytes().all(|b| b.is_ascii_graphic())
            && api_key.split(':').all(|part| !part.is_empty())
            && api_key.split(':').count() <= 2;
        if !shaped {
            return Err(invalid(
                key("api_key_env"),
                "a ClickBank API key is `API-…` (or the legacy `DEV-…:API-…`)",
            ));
        }
        let duration = |name: &str, text: &str| {
            humantime::parse_duration(text)
                .map_err(|e| invalid(key(name), format!("`{text}`: {e}")))
        };
        let every = s
            .every
            .as_deref()
            .map(|e| duration("every", e))
            .transpose()?;
        if every.is_some_and(|e| e < Duration::from_secs(15 * 60)) {
            return Err(invalid(
                key("every"),
                "at least 15m (ClickBank's limits are shared)",
            ));
        }
        let tolerance = duration("match_tolerance", &s.match_tolerance)?;
        if tolerance > MAX_TOLERANCE {
            return Err(invalid(key("match_tolerance"), "at most 10m"));
        }
        if !(1..=90).contains(&s.lookback_days) {
            return Err(invalid(key("lookback_days"), "from 1 to 90"));
        }
        if !(s.requests_per_second > 0.0 && s.requests_per_second <= 100.0) {
            return Err(invalid(key("requests_per_second"), "above 0, at most 100"));
        }
        let api_url = reqwest::Url::parse(&s.api_url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .ok_or_else(|| invalid(key("api_url"), "must be an http(s) URL"))?;
        Ok(Plan {
            account: account.clone(),
            api_key: SecretString::from(api_key),
            every,
            lookback_days: s.lookback_days,
            api_url,
            tolerance,
            daily_budget: s.daily_budget,
            pace: Duration::from_secs_f64(1.0 / s.requests_per_second),
        })
    }

    /// The window of a scheduled run: `lookback_days` back from today.
    pub fn window(&self, now: DateTime<Utc>) -> (NaiveDate, NaiveDate) {
        let today = pacific_day(now);
        let from = today - chrono::Days::new(u64::from(self.lookback_days.saturating_sub(1)));
        (from, today)
    }
}

/// The day of `t` in ClickBank's time zone.
pub fn pacific_day(t: DateTime<Utc>) -> NaiveDate {
    t.with_timezone(&Los_Angeles).date_naive()
}

/// The start of a Pacific day, in UTC.
fn pacific_midnight(day: NaiveDate) -> DateTime<Utc> {
    Los_Angeles
        .from_local_datetime(&day.and_time(chrono::NaiveTime::MIN))
        .earliest()
        .map_or_else(
            || day.and_time(chrono::NaiveTime::MIN).and_utc(),
            |t| t.with_timezone(&Utc),
        )
}

/// An order ClickBank has and kaching had not stored.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Missing {
    pub receipt: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub transaction_time: DateTime<Utc>,
    /// Stored by this run (false in a dry run, or when a post came first).
    pub recovered: bool,
}

/// What one run did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub account: String,
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub dry_run: bool,
    /// Every request made to the Orders API.
    pub calls: u64,
    pub by_kind: Calls,
    /// (day, type) pairs compared, and those whose counts differed.
    pub compared: usize,
    pub differing: Vec<(NaiveDate, String)>,
    pub listed: usize,
    pub missing: Vec<Missing>,
    pub recovered: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("the store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("storing a recovered order: {0}")]
    Ingest(String),
    #[error("the window: {0}")]
    Window(String),
}

/// One run over `from..=to` (Pacific days).
pub async fn run(
    plan: &Plan,
    store: &Store,
    ingest: &Ingest,
    (from, to): (NaiveDate, NaiveDate),
    dry_run: bool,
    metrics: Option<&Metrics>,
) -> Result<Report, ReconcileError> {
    let account = plan.account.as_str();
    let now = Utc::now();
    let used = store
        .reconcile_calls_since(account, now - chrono::Duration::hours(24))
        .await?;
    let left = u64::from(plan.daily_budget).saturating_sub(u64::try_from(used).unwrap_or(0));
    let days = u64::try_from((to - from).num_days() + 1).unwrap_or(0);
    if days == 0 || days > MAX_DAYS {
        return Err(ReconcileError::Window(format!(
            "{from} to {to}: a window is 1 to {MAX_DAYS} days"
        )));
    }
    let counts = days * TYPES.len() as u64;
    if counts > left {
        return Err(ReconcileError::Window(format!(
            "{from} to {to} takes {counts} count calls; the daily budget has {left} left"
        )));
    }
    let api = api::Api::new(plan.api_url.clone(), &plan.api_key, plan.pace, left)?;
    let id = store.start_reconcile_run(account, now, from, to).await?;
    let mut report = Report {
        account: account.to_owned(),
        from,
        to,
        dry_run,
        calls: 0,
        by_kind: Calls::default(),
        compared: 0,
        differing: Vec::new(),
        listed: 0,
        missing: Vec::new(),
        recovered: 0,
    };
    let outcome =
        compare_and_recover(plan, store, ingest, &api, id, &mut report, dry_run, now).await;
    report.calls = api.made();
    report.by_kind = api.calls();
    let missing = report.missing.len() as u64;
    let error = outcome.as_ref().err().map(ToString::to_string);
    store
        .finish_reconcile_run(
            id,
            report.calls,
            missing,
            report.recovered as u64,
            error.as_deref(),
        )
        .await?;
    if let Some(m) = metrics {
        m.reconcile(
            account,
            report.calls,
            report.recovered as u64,
            outcome.is_ok(),
        );
    }
    outcome.map(|()| report)
}

/// Is `k` the stored copy of `n`? Same receipt and type, the same role
/// (or one of them without), transaction times within `tolerance`.
fn same(k: &StoredKey, n: &Notification, tolerance: chrono::Duration) -> bool {
    k.transaction_type == n.transaction_type.as_str()
        && k.receipt == n.receipt.as_str()
        && (k.role == n.role.as_str() || k.role.is_empty() || n.role.is_empty())
        && (k.transaction_time - n.transaction_time).abs() <= tolerance
}

#[allow(clippy::too_many_arguments)]
async fn compare_and_recover(
    plan: &Plan,
    store: &Store,
    ingest: &Ingest,
    api: &api::Api,
    run_id: i64,
    report: &mut Report,
    dry_run: bool,
    now: DateTime<Utc>,
) -> Result<(), ReconcileError> {
    let account = plan.account.as_str();
    let tolerance = chrono::Duration::from_std(plan.tolerance).unwrap_or_default();
    let start = pacific_midnight(report.from);
    let end = pacific_midnight(report.to + chrono::Days::new(1));
    // A margin either side: a notification near midnight matches an order
    // listed on the day beside.
    let stored = store
        .stored_keys(account, start - tolerance, end + tolerance)
        .await?;
    let mut local: HashMap<(NaiveDate, &str), u64> = HashMap::new();
    for k in &stored {
        if (start..end).contains(&k.transaction_time) {
            *local
                .entry((pacific_day(k.transaction_time), k.transaction_type.as_str()))
                .or_default() += 1;
        }
    }
    let mut day = report.from;
    while day <= report.to {
        for kind in TYPES {
            report.compared += 1;
            let theirs = api.count(day, kind).await?;
            let ours = local.get(&(day, kind)).copied().unwrap_or(0);
            if theirs != ours {
                report.differing.push((day, kind.to_owned()));
            }
        }
        day = day + chrono::Days::new(1);
    }
    store.reconcile_progress(run_id, api.made()).await?;
    let settled = now - chrono::Duration::from_std(SETTLE).unwrap_or_default();
    // Each (day, type) is stored before the next is listed: a run that
    // stops (the budget, a 403) keeps what it recovered.
    for (day, kind) in report.differing.clone() {
        let mut found: Vec<Notification> = Vec::new();
        for order in api.list(day, day, &kind).await? {
            report.listed += 1;
            let text = orders::plaintext(&order).map_err(ApiError::Shape)?;
            let n = crate::ins::decode_plaintext(text)
                .map_err(|e| ApiError::Shape(format!("an order kaching cannot read: {e}")))?;
            let ours = stored.iter().any(|k| same(k, &n, tolerance))
                || found.iter().any(|f| same(&key_of(f), &n, tolerance));
            if n.transaction_time <= settled && !ours {
                found.push(n);
            }
        }
        store.reconcile_progress(run_id, api.made()).await?;
        for n in found {
            let mut missing = Missing {
                receipt: n.receipt.to_string(),
                kind: n.transaction_type.to_string(),
                transaction_time: n.transaction_time,
                recovered: false,
            };
            // A post may have brought it since the run read the keys.
            let arrived = store
                .keys_of(account, n.receipt.as_str(), n.transaction_type.as_str())
                .await?
                .iter()
                .any(|k| same(k, &n, tolerance));
            if !dry_run && !arrived {
                let recorded = ingest
                    .store_recovered(plan.account.clone(), n, Utc::now())
                    .await
                    .map_err(|e| ReconcileError::Ingest(e.to_string()))?;
                if let Recorded::New { .. } = recorded {
                    missing.recovered = true;
                    report.recovered += 1;
                }
            }
            if !arrived {
                report.missing.push(missing);
            }
        }
    }
    if report.recovered > 0 {
        tracing::warn!(
            account,
            recovered = report.recovered,
            "reconcile: stored orders ClickBank had and no post had brought"
        );
    }
    Ok(())
}

fn key_of(n: &Notification) -> StoredKey {
    StoredKey {
        role: n.role.to_string(),
        receipt: n.receipt.to_string(),
        transaction_type: n.transaction_type.to_string(),
        transaction_time: n.transaction_time,
    }
}

/// The daemon's reconciliation: each account with `every` set, once per
/// `every` (the first a minute after start), over its lookback window; and
/// every [`REFRESH`], `recovered` caught up with other processes' runs.
pub fn spawn(
    store: Store,
    live: Live,
    ingest: Arc<Ingest>,
    recovered: Arc<Recovered>,
    metrics: Arc<Metrics>,
    token: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    // Caught up on its own, so a long run does not hold it back.
    let refresher = {
        let (store, token) = (store.clone(), token.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = token.cancelled() => return,
                    () = tokio::time::sleep(REFRESH) => {}
                }
                if let Err(e) = recovered.refresh(&store).await {
                    tracing::warn!(error = %e, "reconcile: cannot read the recovered orders");
                }
            }
        })
    };
    tokio::spawn(async move {
        let _refresher = AbortOnDrop(refresher);
        let started = tokio::time::Instant::now();
        let mut last: HashMap<String, tokio::time::Instant> = HashMap::new();
        loop {
            tokio::select! {
                () = token.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(30)) => {}
            }
            let plans: Vec<Arc<Plan>> = live
                .load()
                .accounts
                .iter()
                .filter_map(|a| a.reconcile.clone())
                .filter(|p| p.every.is_some())
                .collect();
            for plan in plans {
                let every = plan.every.unwrap_or(Duration::MAX);
                let due = match last.get(plan.account.as_str()) {
                    Some(at) => at.elapsed() >= every,
                    None => started.elapsed() >= Duration::from_secs(60),
                };
                if !due {
                    continue;
                }
                last.insert(plan.account.to_string(), tokio::time::Instant::now());
                let window = plan.window(Utc::now());
                let result = tokio::select! {
                    () = token.cancelled() => return,
                    r = run(&plan, &store, &ingest, window, false, Some(&metrics)) => r,
                };
                match result {
                    Ok(r) => tracing::info!(
                        account = %plan.account,
                        calls = r.calls,
                        differing = r.differing.len(),
                        missing = r.missing.len(),
                        recovered = r.recovered,
                        "reconcile: done"
                    ),
                    Err(e) => {
                        tracing::warn!(account = %plan.account, error = %e, "reconcile: failed")
                    }
                }
            }
        }
    })
}

/// Aborts its task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
