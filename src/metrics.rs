//! Prometheus metrics: one [`Metrics`] built once at startup from the
//! settings, shared (`Arc`) by the INS handler, the store writer, the
//! dispatcher and the rejected-post keeper, and encoded by the admin
//! listener's `GET /metrics` (see [`crate::admin`]).
//!
//! Names follow the Prometheus naming guide: the `kaching_` prefix, base
//! units (seconds), `_total` on counters. Every label value comes from the
//! configuration (account and action names) or from a fixed set (outcomes),
//! never from a request: an account name in a URL that is not configured is
//! counted under `account=""`, so a stranger cannot grow the series count.
//!
//! The request path stays cheap: every per-account, per-outcome and
//! per-action series is created here, at startup, and its handle (an `Arc`
//! of an atomic) is kept in a plain vector, so counting is an index and a
//! `fetch_add`, with no lock and no hashing of label sets. A histogram
//! observation is a bucket search and a few additions under the
//! histogram's own mutex (prometheus-client's design), uncontended: one per
//! request, and the store's once per batch.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::actions::Actions;
use crate::ingest::IngestError;
use crate::store::RunOutcome;

/// The outcomes of a post besides the refusals: a new notification, a copy.
const STORED: [&str; 2] = ["accepted", "duplicate"];

/// Every `outcome` label value of `kaching_notifications_total`.
pub fn notification_outcomes() -> impl Iterator<Item = &'static str> {
    STORED.into_iter().chain(IngestError::OUTCOMES)
}

/// The `outcome` label values of `kaching_action_runs_total`.
pub const RUN_OUTCOMES: [&str; 3] = ["done", "retry", "failed"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NotificationLabels {
    account: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunLabels {
    action: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabel {
    action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AccountLabel {
    account: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CapLabel {
    cap: &'static str,
}

/// The caps a request can be shed by (`http::connections::Shed::as_str`).
pub const SHED_CAPS: [&str; 2] = ["server.max_in_flight", "server.max_in_flight_per_ip"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: &'static str,
}

/// The registry and a handle on every series. Build with [`Metrics::new`].
pub struct Metrics {
    registry: Registry,
    /// Index 0 is `account=""`; index `i + 1` is the account named `accounts[i]`.
    notifications: Vec<Vec<Counter>>,
    account_index: HashMap<String, usize>,
    ins_duration: Histogram,
    commit_duration: Histogram,
    batch_rows: Histogram,
    store_errors: Counter,
    /// `[action index][done, retry, failed]`.
    action_runs: Vec<[Counter; 3]>,
    /// Action name to its index in `action_runs`: the actions configured at
    /// start (one added by a reload gets its series at the next restart).
    action_index: HashMap<String, usize>,
    /// `[action index]`, set at each scrape.
    outbox_pending: Vec<Gauge>,
    outbox_oldest_age: Vec<Gauge<f64, AtomicU64>>,
    rejected_kept: Counter,
    rejected_dropped: Counter,
    config_reloads: Counter,
    config_reload_failures: Counter,
    /// `[account index]`: Orders API calls, orders recovered, failed runs.
    reconcile: Vec<[Counter; 3]>,
    /// By [`SHED_CAPS`] index.
    shed: [Counter; 2],
    connections_refused: Counter,
    connections_evicted: Counter,
    panics: Counter,
    acme_issued: Counter,
    acme_failures: Counter,
    acme_expiry: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    /// No accounts and no actions (for tests of a single part).
    fn default() -> Self {
        Self::new(&[], &[])
    }
}

impl Metrics {
    /// Registers every family and creates every series for the configured
    /// `accounts` and `actions` (names, in the settings' order).
    pub fn new(accounts: &[&str], actions: &[&str]) -> Metrics {
        let mut registry = Registry::with_prefix("kaching");

        let build_info = Family::<VersionLabel, Gauge>::default();
        build_info
            .get_or_create(&VersionLabel {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register(
            "build_info",
            "Always 1; the version label is kaching's version",
            build_info,
        );

        let family = Family::<NotificationLabels, Counter>::default();
        let notifications = std::iter::once("")
            .chain(accounts.iter().copied())
            .map(|account| {
                notification_outcomes()
                    .map(|outcome| {
                        family
                            .get_or_create(&NotificationLabels {
                                account: account.to_owned(),
                                outcome,
                            })
                            .clone()
                    })
                    .collect()
            })
            .collect();
        registry.register(
            "notifications",
            "Posts to the INS endpoint by account (empty when none is known) and outcome",
            family,
        );
        let account_index = accounts
            .iter()
            .enumerate()
            .map(|(i, a)| ((*a).to_owned(), i + 1))
            .collect();

        // 0.5 ms to 8 s: a refusal waits 2 ms, a commit takes 1-50 ms, the
        // request timeout is 10 s.
        let ins_duration = Histogram::new(exponential_buckets(0.0005, 2.0, 15));
        registry.register_with_unit(
            "ins_request_duration",
            "Time from a post's arrival at the INS handler to its answer",
            Unit::Seconds,
            ins_duration.clone(),
        );
        // 0.1 ms to 3.3 s: past commit_timeout_ms (2.5 s) the post got 503 anyway.
        let commit_duration = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        registry.register_with_unit(
            "store_commit_duration",
            "Time one group commit of notifications took (successful or not)",
            Unit::Seconds,
            commit_duration.clone(),
        );
        // 1 to 256, the writer's largest batch.
        let batch_rows = Histogram::new(exponential_buckets(1.0, 2.0, 9));
        registry.register(
            "store_commit_rows",
            "Notifications per group commit",
            batch_rows.clone(),
        );
        let store_errors = Counter::default();
        registry.register(
            "store_errors",
            "Commits of notifications that failed (each answered 503, or was retried row by row)",
            store_errors.clone(),
        );

        let runs = Family::<RunLabels, Counter>::default();
        let action_runs = actions
            .iter()
            .map(|action| {
                RUN_OUTCOMES.map(|outcome| {
                    runs.get_or_create(&RunLabels {
                        action: (*action).to_owned(),
                        outcome,
                    })
                    .clone()
                })
            })
            .collect();
        registry.register(
            "action_runs",
            "Executions of action runs by action and outcome (retry: due again later; failed: dead letter)",
            runs,
        );
        let pending = Family::<ActionLabel, Gauge>::default();
        let age = Family::<ActionLabel, Gauge<f64, AtomicU64>>::default();
        let label = |a: &&str| ActionLabel {
            action: (*a).to_owned(),
        };
        let outbox_pending = actions
            .iter()
            .map(|a| pending.get_or_create(&label(a)).clone())
            .collect();
        let outbox_oldest_age = actions
            .iter()
            .map(|a| age.get_or_create(&label(a)).clone())
            .collect();
        registry.register(
            "outbox_pending_runs",
            "Action runs waiting to be executed (status pending), by action, as of the scrape",
            pending,
        );
        registry.register_with_unit(
            "outbox_oldest_pending_age",
            "Age of the oldest pending action run by action, as of the scrape (0 when none)",
            Unit::Seconds,
            age,
        );

        let rejected_kept = Counter::default();
        registry.register(
            "rejected_posts_kept",
            "Refused posts stored for `kaching rejected`",
            rejected_kept.clone(),
        );
        let rejected_dropped = Counter::default();
        registry.register(
            "rejected_posts_dropped",
            "Refused posts not stored: the keeper's queue was full, or its commit failed",
            rejected_dropped.clone(),
        );
        let config_reloads = Counter::default();
        registry.register(
            "config_reloads",
            "Configuration reloads that took effect",
            config_reloads.clone(),
        );
        let config_reload_failures = Counter::default();
        registry.register(
            "config_reload_failures",
            "Configuration reloads refused (the running configuration stayed)",
            config_reload_failures.clone(),
        );

        let calls = Family::<AccountLabel, Counter>::default();
        let recovered = Family::<AccountLabel, Counter>::default();
        let failed = Family::<AccountLabel, Counter>::default();
        let reconcile = accounts
            .iter()
            .map(|a| {
                let l = AccountLabel {
                    account: (*a).to_owned(),
                };
                [
                    calls.get_or_create(&l).clone(),
                    recovered.get_or_create(&l).clone(),
                    failed.get_or_create(&l).clone(),
                ]
            })
            .collect();
        registry.register(
            "reconcile_api_calls",
            "Requests made to ClickBank's Orders API by reconciliation, by account",
            calls,
        );
        registry.register(
            "reconcile_recovered",
            "Orders reconciliation stored that no post had brought, by account",
            recovered,
        );
        registry.register(
            "reconcile_failures",
            "Reconciliation runs that stopped on an error, by account",
            failed,
        );

        let shed_family = Family::<CapLabel, Counter>::default();
        let shed = SHED_CAPS.map(|cap| shed_family.get_or_create(&CapLabel { cap }).clone());
        registry.register(
            "http_requests_shed",
            "Requests answered 503 with Retry-After at once because a cap on requests in flight was reached, by cap",
            shed_family,
        );
        let connections_refused = Counter::default();
        registry.register(
            "http_connections_refused",
            "Connections closed at accept: a connection cap was reached and no idle connection could make room",
            connections_refused.clone(),
        );
        let connections_evicted = Counter::default();
        registry.register(
            "http_connections_evicted",
            "Idle connections closed to make room for a new one under a connection cap",
            connections_evicted.clone(),
        );
        let panics = Counter::default();
        registry.register(
            "http_panics",
            "Requests whose handler panicked (answered 500; a bug: please report it)",
            panics.clone(),
        );

        let acme_issued = Counter::default();
        registry.register(
            "acme_certificates_issued",
            "Certificates obtained from the ACME CA (tls.mode = \"acme\"), renewals included",
            acme_issued.clone(),
        );
        let acme_failures = Counter::default();
        registry.register(
            "acme_failures",
            "Attempts to obtain a certificate from the ACME CA that failed (retried with backoff)",
            acme_failures.clone(),
        );
        let acme_expiry = Gauge::default();
        registry.register_with_unit(
            "acme_certificate_expiry_timestamp",
            "When the ACME certificate in force expires, in Unix time (0: none yet)",
            Unit::Seconds,
            acme_expiry.clone(),
        );

        Metrics {
            registry,
            reconcile,
            acme_issued,
            acme_failures,
            acme_expiry,
            shed,
            connections_refused,
            connections_evicted,
            panics,
            notifications,
            account_index,
            action_index: actions
                .iter()
                .enumerate()
                .map(|(i, a)| ((*a).to_owned(), i))
                .collect(),
            ins_duration,
            commit_duration,
            batch_rows,
            store_errors,
            action_runs,
            outbox_pending,
            outbox_oldest_age,
            rejected_kept,
            rejected_dropped,
            config_reloads,
            config_reload_failures,
        }
    }

    /// Built from the configured account names and the enabled actions
    /// (whose indexes the dispatcher reports by).
    pub fn from_settings(settings: &crate::config::Settings, actions: &Actions) -> Metrics {
        let accounts: Vec<&str> = settings.accounts.iter().map(|a| a.name.as_str()).collect();
        let actions: Vec<&str> = actions.iter().map(|a| &*a.name).collect();
        Metrics::new(&accounts, &actions)
    }

    /// One post to the INS endpoint answered: its account (a configured
    /// one, or `None`; any other name counts as `None`), its outcome (one
    /// of [`notification_outcomes`]) and how long it took.
    pub fn notification(&self, account: Option<&str>, outcome: &str, took: Duration) {
        self.ins_duration.observe(took.as_secs_f64());
        let row = account
            .and_then(|a| self.account_index.get(a).copied())
            .unwrap_or(0);
        // Outcomes are a handful of static strings: a scan beats a hash.
        let column = notification_outcomes().position(|o| o == outcome);
        match (self.notifications.get(row), column) {
            (Some(counters), Some(c)) => {
                if let Some(counter) = counters.get(c) {
                    counter.inc();
                }
            }
            _ => debug_assert!(false, "outcome {outcome:?} has no series"),
        }
    }

    /// One group commit of `rows` notifications, and whether it committed.
    pub fn commit(&self, rows: usize, took: Duration, ok: bool) {
        self.commit_duration.observe(took.as_secs_f64());
        self.batch_rows.observe(rows as f64);
        if !ok {
            self.store_errors.inc();
        }
    }

    /// One execution of the action named `action` ended as `outcome`.
    pub fn action_run(&self, action: &str, outcome: &RunOutcome) {
        let Some(&index) = self.action_index.get(action) else {
            return;
        };
        let column = match outcome {
            RunOutcome::Done => 0,
            RunOutcome::Retry { .. } => 1,
            RunOutcome::Failed { .. } => 2,
        };
        if let Some(counters) = self.action_runs.get(index) {
            counters[column].inc();
        }
    }

    /// Sets the outbox gauges of the action at `index`.
    pub fn outbox(&self, index: usize, pending: i64, oldest_age: Duration) {
        if let (Some(p), Some(a)) = (
            self.outbox_pending.get(index),
            self.outbox_oldest_age.get(index),
        ) {
            p.set(pending);
            a.set(oldest_age.as_secs_f64());
        }
    }

    /// One reconciliation run of a configured account ended.
    pub fn reconcile(&self, account: &str, calls: u64, recovered: u64, ok: bool) {
        let Some(c) = self
            .account_index
            .get(account)
            .and_then(|i| self.reconcile.get(i - 1))
        else {
            return;
        };
        c[0].inc_by(calls);
        c[1].inc_by(recovered);
        if !ok {
            c[2].inc();
        }
    }

    pub fn rejected_kept(&self, posts: usize) {
        self.rejected_kept.inc_by(posts as u64);
    }

    pub fn rejected_dropped(&self, posts: usize) {
        self.rejected_dropped.inc_by(posts as u64);
    }

    /// For live reload: a reload took effect (`ok`) or was refused.
    /// A request shed by `cap` (one of [`SHED_CAPS`]).
    pub fn shed(&self, cap: &str) {
        if let Some(i) = SHED_CAPS.iter().position(|c| *c == cap) {
            self.shed[i].inc();
        }
    }

    pub fn connection_refused(&self) {
        self.connections_refused.inc();
    }

    pub fn connection_evicted(&self) {
        self.connections_evicted.inc();
    }

    /// A certificate from the ACME CA, in force until `not_after` (Unix seconds).
    pub fn acme_issued(&self, not_after: i64) {
        self.acme_issued.inc();
        self.acme_expiry(not_after);
    }

    /// The expiry of the ACME certificate in force.
    pub fn acme_expiry(&self, not_after: i64) {
        self.acme_expiry.set(not_after);
    }

    pub fn acme_failed(&self) {
        self.acme_failures.inc();
    }

    /// A request whose handler panicked.
    pub fn panicked(&self) {
        self.panics.inc();
    }

    pub fn config_reload(&self, ok: bool) {
        if ok {
            self.config_reloads.inc();
        } else {
            self.config_reload_failures.inc();
        }
    }

    /// The Prometheus text format (version 0.0.4) of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::with_capacity(16 * 1024);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry);
        text
    }
}

/// The `Content-Type` of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, start: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(start))
    }

    #[test]
    fn series_exist_before_anything_happens_and_names_follow_the_guide() {
        let m = Metrics::new(&["acme"], &["log"]);
        let text = m.encode();
        assert!(
            line(&text, r#"kaching_build_info{version=""#).is_some(),
            "{text}"
        );
        for outcome in notification_outcomes() {
            for account in ["", "acme"] {
                let series = format!(
                    r#"kaching_notifications_total{{account="{account}",outcome="{outcome}"}} 0"#
                );
                assert!(line(&text, &series).is_some(), "{series} in {text}");
            }
        }
        for outcome in RUN_OUTCOMES {
            let series =
                format!(r#"kaching_action_runs_total{{action="log",outcome="{outcome}"}} 0"#);
            assert!(line(&text, &series).is_some(), "{series}");
        }
        for name in [
            "kaching_ins_request_duration_seconds_bucket",
            "kaching_store_commit_duration_seconds_count",
            "kaching_store_commit_rows_sum",
            "kaching_store_errors_total 0",
            r#"kaching_outbox_pending_runs{action="log"} 0"#,
            r#"kaching_outbox_oldest_pending_age_seconds{action="log"} 0"#,
            "kaching_rejected_posts_kept_total 0",
            "kaching_rejected_posts_dropped_total 0",
            "kaching_config_reloads_total 0",
            "kaching_config_reload_failures_total 0",
            r#"kaching_http_requests_shed_total{cap="server.max_in_flight"} 0"#,
            r#"kaching_http_requests_shed_total{cap="server.max_in_flight_per_ip"} 0"#,
            "kaching_http_connections_refused_total 0",
            "kaching_http_connections_evicted_total 0",
            "kaching_http_panics_total 0",
        ] {
            assert!(line(&text, name).is_some(), "{name} in {text}");
        }
    }

    #[test]
    fn an_unknown_account_counts_as_none_and_creates_no_series() {
        let m = Metrics::new(&["acme"], &[]);
        m.notification(Some("acme"), "accepted", Duration::from_millis(3));
        m.notification(Some("nosuch"), "unknown-account", Duration::from_millis(2));
        m.notification(None, "bad-body", Duration::from_millis(1));
        let text = m.encode();
        assert!(!text.contains("nosuch"));
        assert!(
            text.contains(r#"kaching_notifications_total{account="acme",outcome="accepted"} 1"#)
        );
        assert!(
            text.contains(r#"kaching_notifications_total{account="",outcome="unknown-account"} 1"#)
        );
        assert!(text.contains(r#"kaching_notifications_total{account="",outcome="bad-body"} 1"#));
        assert!(text.contains("kaching_ins_request_duration_seconds_count 3"));
    }

    #[test]
    fn reloads_and_failures_are_counted_apart() {
        let m = Metrics::default();
        m.config_reload(true);
        m.config_reload(false);
        m.config_reload(false);
        let text = m.encode();
        assert!(text.contains("kaching_config_reloads_total 1"));
        assert!(text.contains("kaching_config_reload_failures_total 2"));
    }
}
