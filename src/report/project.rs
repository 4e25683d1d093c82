//! The projector: reads committed notifications the reports have not seen
//! and writes what they mean (facts, daily sums, subscriptions) in one
//! transaction per batch. The database is the truth here too: a pass finds
//! its work with a query, so a notification stored while kaching was down,
//! by `kaching demo` or by another process is projected like a live one;
//! the post-commit channel only wakes the projector sooner.
//!
//! Ids are not committed in order on Postgres (several writers): a row can
//! become visible after a pass has read past its id. So the durable
//! watermark ("every id up to N is projected") only moves to an N that was
//! the highest id at least [`GRACE`] before a verifying pass read everything
//! above the old watermark; ordinary passes start where this process last
//! read, so a backfill reads each row once; a verifying pass every
//! [`VERIFY`] picks up the late ones. Above the watermark, a pass looks for
//! ids with no facts row: a short index range.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::alerts::Rules;
use crate::report::facts::{Dim, Facts, Kind};
use crate::store::{
    Counters, DailyKey, FactRow, HourRow, Projection, SaleFacts, Store, StoreError,
    StoredNotification, SubscriptionChange,
};

/// Notifications per transaction.
pub const BATCH: i64 = 1000;
/// On SQLite, whose one write lock the notification writer waits for while
/// a projection commits: a smaller batch bounds that wait (a projection
/// commit does not wait for the disk, so more of them cost little).
pub const SQLITE_BATCH: i64 = 100;

/// How long a notification's transaction may stay open after its id is
/// taken (the commit timeout and the request timeout, with a wide margin).
pub const GRACE: Duration = Duration::from_secs(30);

/// How often the background task re-reads everything above the durable
/// watermark (a verifying pass): it finds rows that committed after a pass
/// had read past their id, and it lets the watermark advance.
pub const VERIFY: Duration = Duration::from_secs(10);

/// What the projector remembers between passes.
#[derive(Debug, Default)]
pub struct Cursor {
    /// The highest id this process has read: an ordinary pass starts there,
    /// so a backfill reads each row once.
    resume: Option<i64>,
    /// (when, the highest id then) at the start of recent verifying passes.
    candidates: VecDeque<(Instant, i64)>,
    last_verify: Option<Instant>,
    /// The last pass stopped at its budget: a backfill is under way, and a
    /// verifying pass (which could not catch up) would only re-read it.
    backlog: bool,
    /// What the alert rules keep between batches.
    observe: crate::alerts::observe::State,
}

impl Cursor {
    /// The next verifying pass may run now.
    pub fn force_verify(&mut self) {
        self.last_verify = None;
        self.backlog = false;
    }
}

/// What a pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    pub projected: usize,
    /// Nothing committed is left unprojected (as of the pass's start).
    pub caught_up: bool,
    /// When not caught up: at most this many ids are left (ids are not dense).
    pub remaining: i64,
}

/// Projects up to `budget` notifications, from where this process last
/// read or, when `may_verify` and it is time, from the durable watermark.
/// Stops early when caught up.
///
/// A verifying pass that catches up at time T has read, at T or later,
/// every row above the watermark: any id that was the highest at least
/// [`GRACE`] before T is then safe (its transaction and every earlier one
/// has ended), and becomes the watermark.
pub async fn pass(
    store: &Store,
    cursor: &mut Cursor,
    budget: usize,
    may_verify: bool,
    rules: Option<&Rules>,
) -> Result<Pass, StoreError> {
    let (watermark, max_id) = store.report_position().await?;
    let verify = cursor.resume.is_none()
        || (may_verify
            && !cursor.backlog
            && cursor.last_verify.is_none_or(|t| t.elapsed() >= VERIFY));
    let started = Instant::now();
    let mut after = if verify {
        watermark
    } else {
        cursor.resume.unwrap_or(watermark).max(watermark)
    };
    let mut projected = 0;
    let caught_up = loop {
        let batch = match store {
            Store::Postgres(_) => BATCH,
            Store::Sqlite(_) => SQLITE_BATCH,
        };
        let rows = store.unprojected(after, batch).await?;
        let full = rows.len() as i64 == batch;
        if let Some(last) = rows.last() {
            after = last.id;
            let projection = project(store, &rows, rules, &mut cursor.observe).await?;
            store.apply_projection(&projection).await?;
            projected += rows.len();
        }
        if !full {
            break true;
        }
        if projected >= budget {
            break false;
        }
    };
    cursor.backlog = !caught_up;
    // Everything up to `max_id` was read (or, not caught up, up to `after`).
    let read_to = if caught_up { max_id.max(after) } else { after };
    cursor.resume = Some(cursor.resume.unwrap_or(0).max(read_to));
    if verify {
        cursor.candidates.push_back((started, max_id));
        if caught_up {
            cursor.last_verify = Some(started);
            let mut safe = None;
            while let Some(&(at, id)) = cursor.candidates.front() {
                if started.duration_since(at) < GRACE {
                    break;
                }
                safe = Some(id);
                cursor.candidates.pop_front();
            }
            if let Some(id) = safe.filter(|id| *id > watermark) {
                store
                    .apply_projection(&Projection {
                        watermark: Some(id),
                        ..Projection::default()
                    })
                    .await?;
            }
        }
        // A bound, should verifying passes never catch up.
        while cursor.candidates.len() > 64 {
            cursor.candidates.pop_front();
        }
    }
    Ok(Pass {
        projected,
        caught_up,
        remaining: if caught_up {
            0
        } else {
            (max_id - after).max(0)
        },
    })
}

/// What `rows` (in id order) add to the reports. Reads the sales that
/// reversals in `rows` refer to, when they are not in `rows`.
async fn project(
    store: &Store,
    rows: &[StoredNotification],
    rules: Option<&Rules>,
    observe: &mut crate::alerts::observe::State,
) -> Result<Projection, StoreError> {
    let mut daily: HashMap<DailyKey, (Counters, String)> = HashMap::new();
    let mut hourly: HashMap<(String, String), HourRow> = HashMap::new();
    let mut sales: HashMap<(String, String), SaleFacts> = HashMap::new();
    let mut out = Projection::default();
    for row in rows {
        let account = row.account.as_str().to_owned();
        let receipt = row.notification.receipt.as_str().to_owned();
        let f = Facts::of(&row.notification);
        let day = f.day.to_string();
        let dims = f.dims();
        let dims_json = serde_json::to_string(&dims).unwrap_or_else(|_| "[]".into());
        let mut add =
            |dims: &[Dim], day: &str, currency: &str, counters: &dyn Fn(i64) -> Counters| {
                for d in dims {
                    let key = DailyKey {
                        dim: d.dim.clone(),
                        day: day.to_owned(),
                        account: account.clone(),
                        currency: currency.to_owned(),
                        value: d.value.clone(),
                    };
                    let entry = daily.entry(key).or_default();
                    entry.0.add(&counters(d.micros));
                    entry.1.clone_from(&d.label);
                }
            };
        let kind = f.kind;
        let at = row.notification.transaction_time;
        let hour = hourly
            .entry((account.clone(), at.format("%Y-%m-%dT%H").to_string()))
            .or_insert_with_key(|(account, hour)| HourRow {
                account: account.clone(),
                hour: hour.clone(),
                sales: 0,
                tests: 0,
                others: 0,
                last_sale_at: None,
                last_test_at: None,
            });
        match kind {
            Kind::Sale => {
                hour.sales += 1;
                hour.last_sale_at = hour.last_sale_at.max(Some(at));
            }
            Kind::Test => {
                hour.tests += 1;
                hour.last_test_at = hour.last_test_at.max(Some(at));
            }
            _ => hour.others += 1,
        }
        let own = |micros: i64| match kind {
            Kind::Sale => Counters {
                sales: 1,
                gross_micros: micros,
                ..Counters::default()
            },
            Kind::Rebill => Counters {
                rebills: 1,
                gross_micros: micros,
                ..Counters::default()
            },
            Kind::Refund => Counters {
                refunds: 1,
                refund_micros: micros.abs(),
                ..Counters::default()
            },
            Kind::Chargeback => Counters {
                chargebacks: 1,
                chargeback_micros: micros.abs(),
                ..Counters::default()
            },
            Kind::Cancel => Counters {
                cancels: 1,
                ..Counters::default()
            },
            Kind::Uncancel => Counters {
                uncancels: 1,
                ..Counters::default()
            },
            Kind::Test | Kind::Other => Counters::default(),
        };
        if !matches!(kind, Kind::Test | Kind::Other) {
            add(&dims, &day, &f.currency, &own);
        }
        if kind.is_order() {
            sales.insert(
                (account.clone(), receipt.clone()),
                SaleFacts {
                    day: day.clone(),
                    currency: f.currency.clone(),
                    dims: dims_json.clone(),
                },
            );
        }
        if kind.is_reversal() {
            let sale = match sales.get(&(account.clone(), receipt.clone())) {
                Some(s) => Some(s.clone()),
                None => store.sale_facts(&account, &receipt).await?,
            };
            if let Some(sale) = sale {
                let sale_dims: Vec<Dim> = serde_json::from_str(&sale.dims).unwrap_or_default();
                let cohort = |_| match kind {
                    Kind::Refund => Counters {
                        cohort_refunds: 1,
                        ..Counters::default()
                    },
                    _ => Counters {
                        cohort_chargebacks: 1,
                        ..Counters::default()
                    },
                };
                add(&sale_dims, &sale.day, &sale.currency, &cohort);
            }
        }
        let change = match kind {
            Kind::Sale => f.recurring().map(|line| SubscriptionChange::Start {
                account: account.clone(),
                receipt: receipt.clone(),
                item_no: line.item_no.clone(),
                title: line.title.clone(),
                currency: f.currency.clone(),
                day: day.clone(),
            }),
            Kind::Rebill => Some(SubscriptionChange::Rebill {
                account: account.clone(),
                receipt: f.sale_receipt.clone(),
                day: day.clone(),
            }),
            Kind::Cancel => Some(SubscriptionChange::Cancel {
                account: account.clone(),
                receipt: f.sale_receipt.clone(),
                day: day.clone(),
            }),
            Kind::Uncancel => Some(SubscriptionChange::Uncancel {
                account: account.clone(),
                receipt: f.sale_receipt.clone(),
            }),
            // A refund of the sale itself ends the subscription; one of a
            // single rebill does not.
            Kind::Refund | Kind::Chargeback if f.sale_receipt == receipt => {
                Some(SubscriptionChange::Refund {
                    account: account.clone(),
                    receipt: receipt.clone(),
                    day: day.clone(),
                })
            }
            _ => None,
        };
        out.subscriptions.extend(change);
        let tracking: serde_json::Map<String, serde_json::Value> = f
            .tracking
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        out.facts.push(FactRow {
            notification_id: row.id,
            account,
            receipt,
            day,
            kind: kind.as_str(),
            currency: f.currency,
            micros: f.micros,
            sale_receipt: f.sale_receipt,
            payment_method: f.payment_method,
            country: f.country,
            dims: dims_json,
            tracking: serde_json::Value::Object(tracking).to_string(),
        });
    }
    let mut daily: Vec<_> = daily.into_iter().map(|(k, (c, l))| (k, c, l)).collect();
    // One order for every writer of these rows, so two passes cannot deadlock.
    daily.sort_by(|a, b| a.0.cmp(&b.0));
    out.daily = daily;
    let mut hourly: Vec<HourRow> = hourly.into_values().collect();
    hourly.sort_by(|a, b| (&a.account, &a.hour).cmp(&(&b.account, &b.hour)));
    out.hourly = hourly;
    if let Some(rules) = rules.filter(|r| !r.is_empty()) {
        let observed =
            crate::alerts::observe(store, rules, rows, observe, chrono::Utc::now()).await?;
        out.alerts = observed.alerts;
        out.schema = observed.schema;
    }
    Ok(out)
}
