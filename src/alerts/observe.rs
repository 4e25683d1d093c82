//! The projector's hook: what a batch of newly projected notifications
//! fires at once (each chargeback; schema changes) and what schema_drift
//! learns from it. Called inside the projection, so the alerts, their runs
//! and the learned paths commit with the batch's facts: exactly once, and
//! two daemons on one database never both fire for one notification.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::json;

use super::drift::{self, Change, Learned};
use super::{Kind, Rule, Rules};
use crate::ins::BodyForm;
use crate::report::facts::{self, Facts};
use crate::store::{Firing, SchemaPath, Store, StoreError, StoredNotification};

/// A notification received longer ago than this (a backfill, a restart
/// after a long outage), or whose transaction is older than [`RECENT`]
/// (`kaching demo` while the daemon runs), still teaches schema_drift but
/// fires nothing: an alert is about what is happening now.
pub const FRESH: chrono::Duration = chrono::Duration::hours(1);
/// ClickBank's retries of one notification span about a day (protocol notes §2).
pub const RECENT: chrono::Duration = chrono::Duration::days(3);

/// What was learned is written at most this often (and whenever a change
/// fires): a count lost in a crash only delays a `missing` by a few
/// notifications, and writing every pass cost ingestion (measured).
const FLUSH: Duration = Duration::from_secs(30);
/// What another daemon learned is read back this often.
const RELOAD: Duration = Duration::from_secs(300);

/// What the projector keeps between batches.
#[derive(Debug, Default)]
pub struct State {
    learned: HashMap<String, Learned>,
    loaded_at: Option<Instant>,
    /// Shapes already checked, per account: they cannot fire again.
    checked: HashSet<(String, u64)>,
    flushed_at: Option<Instant>,
    rules_seen: Option<(Instant, HashMap<String, DateTime<Utc>>)>,
}

/// What a batch fires and learns.
#[derive(Debug, Default)]
pub struct Observed {
    pub alerts: Vec<Firing>,
    pub schema: Vec<SchemaPath>,
}

/// Observes `rows` (the batch, in id order) under the rules in force.
pub async fn observe(
    store: &Store,
    rules: &Rules,
    rows: &[StoredNotification],
    state: &mut State,
    now: DateTime<Utc>,
) -> Result<Observed, StoreError> {
    let mut out = Observed::default();
    let chargeback: Vec<&Rule> = rules
        .of_kind(Kind::Chargeback)
        .filter(|r| r.rate_above.is_none())
        .collect();
    let drift: Vec<&Rule> = rules.of_kind(Kind::SchemaDrift).collect();
    if chargeback.is_empty() && drift.is_empty() {
        return Ok(out);
    }
    if state
        .rules_seen
        .as_ref()
        .is_none_or(|(at, _)| at.elapsed() >= FLUSH)
    {
        state.rules_seen = Some((Instant::now(), store.alert_rules_seen().await?));
    }
    let no_rules = HashMap::new();
    let first_seen = state.rules_seen.as_ref().map_or(&no_rules, |(_, m)| m);
    // A rule the engine has not recorded yet fires nothing.
    let fresh = |rule: &Rule, n: &StoredNotification| {
        first_seen.get(&*rule.name).is_some_and(|t| {
            n.received_at >= *t
                && n.received_at >= now - FRESH
                && n.notification.transaction_time >= now - RECENT
        })
    };
    for n in rows {
        if facts::Kind::of(&n.notification.transaction_type) != facts::Kind::Chargeback {
            continue;
        }
        for rule in &chargeback {
            if !rule.watches(n.account.as_str()) || !fresh(rule, n) {
                continue;
            }
            let amount = n.notification.total_account_amount;
            if rule
                .min_amount
                .is_some_and(|min| amount.is_none_or(|a| a.abs() < min))
            {
                continue;
            }
            out.alerts.push(rule.firing(chargeback_alert(rule, n), now));
        }
    }
    if drift.is_empty() {
        return Ok(out);
    }
    let stale = state.loaded_at.is_none_or(|t| t.elapsed() >= RELOAD);
    let missing: Vec<String> = {
        let mut a: Vec<String> = rows
            .iter()
            .map(|n| n.account.as_str())
            .filter(|a| stale || !state.learned.contains_key(*a))
            .map(str::to_owned)
            .collect();
        a.sort();
        a.dedup();
        a
    };
    if !missing.is_empty() {
        if stale {
            // Written with this batch; what is read back below lacks it
            // until the next reload (counts only, which lag a little).
            for (account, l) in &mut state.learned {
                out.schema.extend(l.delta(account));
            }
            state.learned.clear();
            state.checked.clear();
            state.loaded_at = Some(Instant::now());
        }
        let stored = store.learned_schema(&missing).await?;
        for a in &missing {
            state.learned.insert(
                a.clone(),
                Learned::from_rows(stored.iter().filter(|r| &r.account == a)),
            );
        }
    }
    // One threshold for learning: the smallest any rule asks for.
    let baseline = drift.iter().map(|r| r.min_baseline).min().unwrap_or(20);
    let mut changed = false;
    for n in rows {
        let t = &n.notification.transaction_type;
        // A recovered order's payload is kaching's own rendering, not ClickBank's INS.
        if t.is_test() || n.form == BodyForm::OrdersApi {
            continue;
        }
        let version = match (&n.notification.version, n.form) {
            (Some(v), _) => v.clone(),
            (None, BodyForm::LegacyForm) => "legacy".to_owned(),
            (None, _) => "none".to_owned(),
        };
        let account = n.account.as_str();
        let Some(l) = state.learned.get_mut(account) else {
            continue;
        };
        let paths = drift::paths(&n.notification.payload);
        let shape = (
            account.to_owned(),
            drift::shape(&version, t.as_str(), &paths),
        );
        if state.checked.contains(&shape) {
            l.count(&version, t.as_str(), &paths);
            continue;
        }
        let changes = l.learn(&version, t.as_str(), &paths, baseline);
        if changes.is_empty() {
            state.checked.insert(shape);
        }
        for change in changes {
            changed = true;
            for rule in &drift {
                if rule.watches(account) && fresh(rule, n) {
                    out.alerts
                        .push(rule.firing(drift_alert(rule, n, &change), now));
                }
            }
        }
    }
    if changed || state.flushed_at.is_none_or(|t| t.elapsed() >= FLUSH) {
        for (account, l) in &mut state.learned {
            out.schema.extend(l.delta(account));
        }
        state.flushed_at = Some(Instant::now());
    }
    Ok(out)
}

fn chargeback_alert(rule: &Rule, n: &StoredNotification) -> crate::store::NewAlert {
    let x = &n.notification;
    let amount = x
        .total_account_amount
        .map(|a| a.abs().to_string())
        .unwrap_or_else(|| "an unknown amount".into());
    let currency = x.currency.clone().unwrap_or_default();
    let f = Facts::of(x);
    let products: Vec<String> = f
        .lines
        .iter()
        .map(|l| {
            if l.title.is_empty() {
                l.item_no.clone()
            } else {
                format!("{} \"{}\"", l.item_no, l.title)
            }
        })
        .collect();
    let account = n.account.as_str();
    let mut alert = rule.alert(
        Some(account),
        format!(
            "{account} chargeback {} {}",
            x.receipt,
            x.transaction_time.to_rfc3339()
        ),
    );
    alert.one_shot = true;
    alert.title = format!("Chargeback on {}: {amount} {currency}", x.receipt);
    let by = if f.affiliate.is_empty() {
        "a direct sale".to_owned()
    } else {
        format!("affiliate {}", f.affiliate)
    };
    alert.message = format!(
        "The buyer's bank reversed receipt {} ({}; {by}): {amount} {currency} is taken back, and \
         ClickBank counts it against the account's chargeback rate. Look the order up in ClickBank \
         (Reporting → Transactions) and check for fraud from the same traffic source.",
        x.receipt,
        if products.is_empty() {
            "no product named".to_owned()
        } else {
            products.join(", ")
        },
    );
    alert.details = json!({
        "receipt": x.receipt.as_str(),
        "notification_id": n.id,
        "amount": x.total_account_amount.map(|a| a.to_string()),
        "currency": x.currency,
        "products": f.lines.iter().map(|l| l.item_no.clone()).collect::<Vec<_>>(),
        "affiliate": f.affiliate,
        "transaction_time": x.transaction_time,
    });
    alert
}

fn drift_alert(rule: &Rule, n: &StoredNotification, change: &Change) -> crate::store::NewAlert {
    let account = n.account.as_str();
    let t = n.notification.transaction_type.as_str();
    let (subject, title, message, details) = match change {
        Change::NewVersion { version, known } => (
            format!("{account} version {version}"),
            format!("ClickBank sent INS version {version}"),
            format!(
                "The first notification of version {version} arrived for {account} (until now: {}). \
                 Check ClickBank's notes on what changed; kaching stores it as sent.",
                known.join(", ")
            ),
            json!({"change": "new_version", "version": version, "known": known}),
        ),
        Change::NewType { transaction_type } => (
            format!("{account} type {transaction_type}"),
            format!("A new transaction type: {transaction_type}"),
            format!(
                "{account} received its first {transaction_type} notification. \
                 Check that your actions' `when.types` cover it if they should."
            ),
            json!({"change": "new_type", "transaction_type": transaction_type}),
        ),
        Change::NewPaths {
            version,
            seen,
            paths,
        } => (
            format!("{account} v{version} new {}", paths.join(" ")),
            format!("ClickBank added {} to version {version}", plural(paths.len(), "field")),
            format!(
                "A {t} notification carried {} that none of the {seen} earlier notifications of \
                 version {version} had: {}. (Values are not shown: they can be personal data.)",
                plural(paths.len(), "field"),
                paths.join(", ")
            ),
            json!({"change": "new_paths", "version": version, "paths": paths, "transaction_type": t}),
        ),
        Change::Missing {
            version,
            transaction_type,
            seen,
            paths,
        } => (
            format!("{account} v{version} {transaction_type} missing {}", paths.join(" ")),
            format!(
                "{} missing from {transaction_type} notifications",
                plural(paths.len(), "field")
            ),
            format!(
                "Notification {} lacks {} that every one of the {seen} earlier {transaction_type} \
                 notifications of version {version} had: {}.",
                n.id,
                if paths.len() == 1 { "a field" } else { "fields" },
                paths.join(", ")
            ),
            json!({"change": "missing_paths", "version": version, "paths": paths, "transaction_type": transaction_type}),
        ),
        Change::KindChanged { version, paths } => (
            format!(
                "{account} v{version} kind {}",
                paths
                    .iter()
                    .map(|(p, _, now)| format!("{p}={now}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            format!("A field of version {version} changed its type"),
            format!(
                "In a {t} notification: {}.",
                paths
                    .iter()
                    .map(|(p, was, now)| format!("{p} was {was}, is now {now}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            json!({"change": "kind_changed", "version": version, "paths": paths.iter().map(|(p, was, now)| json!({"path": p, "was": was, "now": now})).collect::<Vec<_>>()}),
        ),
    };
    let mut alert = rule.alert(Some(account), subject);
    alert.one_shot = true;
    alert.title = title;
    alert.message = message;
    alert.details = details;
    alert
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("a {word}")
    } else {
        format!("{n} {word}s")
    }
}
