//! The figures: what the overview, the breakdown pages and the API show,
//! computed from the daily sums. One function per view; pages and API call
//! the same ones, so they show the same numbers.
//!
//! Definitions (also on the pages):
//! - orders: sales plus rebills; gross: their account amount; net: gross
//!   minus refunds minus chargebacks (absolute amounts), per currency.
//! - period refund rate (ClickBank's): refunds dated in the range ÷ orders
//!   dated in the range.
//! - cohort refund rate: of the orders dated in the range, the share
//!   refunded so far (matched by receipt). Immature while the range is
//!   within [`REFUND_WINDOW_DAYS`] of today: more refunds may come.

use std::collections::BTreeMap;

use chrono::{Duration, NaiveDate, Utc};
use serde::Serialize;

use crate::report::facts::{money_text, TRACKING_PARAMETERS};
use crate::report::stats::{self, Comparison, Rate};
use crate::store::{CohortRow, Counters, Store, StoreError, SumQuery, SumRow};

/// ClickBank's default refund window (30–90 per product, 180 for PayPal).
pub const REFUND_WINDOW_DAYS: i64 = 60;

/// The breakdowns, by their `by` name: `product`, `affiliate`, `tid` and
/// the v8 tracking parameters.
pub fn is_dimension(by: &str) -> bool {
    matches!(by, "product" | "affiliate" | "tid") || TRACKING_PARAMETERS.contains(&by)
}

/// The UTC days `[from, to]` of a view, and the account (`None`: all).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub account: Option<String>,
    pub from: NaiveDate,
    pub to: NaiveDate,
}

impl Scope {
    fn query<'a>(&'a self, dim: &'a str, value: Option<&'a str>, by_day: bool) -> SumQuery<'a> {
        SumQuery {
            dim,
            from: self.from.to_string(),
            to: self.to.to_string(),
            account: self.account.as_deref(),
            value,
            by_day,
        }
    }

    /// The cohort rate is immature when the range ends within the refund window.
    pub fn immature(&self) -> bool {
        self.to > Utc::now().date_naive() - Duration::days(REFUND_WINDOW_DAYS)
    }
}

/// Money of one currency, as decimal strings.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Money {
    pub currency: String,
    pub gross: String,
    pub refunds: String,
    pub chargebacks: String,
    pub net: String,
    /// Gross ÷ orders.
    pub average_order: Option<String>,
}

impl Money {
    fn of(currency: &str, c: &Counters) -> Money {
        let orders = c.sales + c.rebills;
        Money {
            currency: currency.to_owned(),
            gross: money_text(c.gross_micros),
            refunds: money_text(c.refund_micros),
            chargebacks: money_text(c.chargeback_micros),
            net: money_text(net_micros(c)),
            average_order: (orders > 0).then(|| money_text(cents(c.gross_micros / orders))),
        }
    }
}

/// Micros rounded half-even to whole cents (for an average, not a sum).
fn cents(micros: i64) -> i64 {
    let d = rust_decimal::Decimal::new(micros, 6).round_dp(2);
    crate::report::facts::micros(d).unwrap_or(micros)
}

fn net_micros(c: &Counters) -> i64 {
    c.gross_micros - c.refund_micros - c.chargeback_micros
}

/// Counts (these may be summed across currencies; money may not).
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, Default)]
pub struct Counts {
    pub sales: i64,
    pub rebills: i64,
    pub orders: i64,
    pub refunds: i64,
    pub chargebacks: i64,
    pub cancellations: i64,
    pub uncancellations: i64,
}

impl Counts {
    fn of(c: &Counters) -> Counts {
        Counts {
            sales: c.sales,
            rebills: c.rebills,
            orders: c.sales + c.rebills,
            refunds: c.refunds,
            chargebacks: c.chargebacks,
            cancellations: c.cancels,
            uncancellations: c.uncancels,
        }
    }
}

/// Both refund rates of a group of counters.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct RefundRates {
    /// Refunds dated in the range ÷ orders dated in the range.
    pub period: Rate,
    /// Orders of the range refunded so far ÷ orders of the range.
    pub cohort: Rate,
    pub cohort_immature: bool,
}

fn rates(c: &Counters, immature: bool) -> RefundRates {
    let orders = u64::try_from(c.sales + c.rebills).unwrap_or(0);
    RefundRates {
        period: stats::wilson(u64::try_from(c.refunds).unwrap_or(0), orders),
        cohort: stats::wilson(u64::try_from(c.cohort_refunds).unwrap_or(0), orders),
        cohort_immature: immature,
    }
}

/// The overview.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub account: Option<String>,
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub money: Vec<Money>,
    pub counts: Counts,
    pub refund_rate: RefundRates,
    pub daily: Vec<Day>,
}

/// One day of the overview's chart.
#[derive(Debug, Clone, Serialize)]
pub struct Day {
    pub day: NaiveDate,
    /// Net per currency, as decimal strings.
    pub net: BTreeMap<String, String>,
    #[serde(skip)]
    pub net_micros: BTreeMap<String, i64>,
    pub orders: i64,
    pub refunds: i64,
    /// Period refund rate of the day.
    pub refund_rate: Option<f64>,
}

pub async fn summary(store: &Store, scope: &Scope) -> Result<Summary, StoreError> {
    let rows = store.daily_sums(&scope.query("all", None, true)).await?;
    let mut by_currency: BTreeMap<String, Counters> = BTreeMap::new();
    let mut by_day: BTreeMap<String, (Counters, BTreeMap<String, i64>)> = BTreeMap::new();
    let mut all = Counters::default();
    for r in &rows {
        by_currency
            .entry(r.currency.clone())
            .or_default()
            .add(&r.counters);
        let day = by_day.entry(r.key.clone()).or_default();
        day.0.add(&r.counters);
        *day.1.entry(r.currency.clone()).or_default() += net_micros(&r.counters);
        all.add(&r.counters);
    }
    let mut daily = Vec::new();
    let mut d = scope.from;
    // Every day of the range, zero where nothing happened (ranges of years
    // are allowed: the chart then has as many points).
    while d <= scope.to {
        let (c, net) = by_day.remove(&d.to_string()).unwrap_or_default();
        let orders = c.sales + c.rebills;
        daily.push(Day {
            day: d,
            net: net
                .iter()
                .map(|(k, v)| (k.clone(), money_text(*v)))
                .collect(),
            net_micros: net,
            orders,
            refunds: c.refunds,
            refund_rate: (orders > 0).then(|| c.refunds as f64 / orders as f64),
        });
        let Some(next) = d.succ_opt() else { break };
        d = next;
    }
    Ok(Summary {
        account: scope.account.clone(),
        from: scope.from,
        to: scope.to,
        money: by_currency
            .iter()
            .filter(|(_, c)| **c != Counters::default())
            .map(|(cur, c)| Money::of(cur, c))
            .collect(),
        counts: Counts::of(&all),
        refund_rate: rates(&all, scope.immature()),
        daily,
    })
}

/// One row of a breakdown: one value in one currency.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub value: String,
    pub label: String,
    pub currency: String,
    pub counts: Counts,
    pub money: Money,
    pub refund_rate: RefundRates,
    #[serde(skip)]
    pub net_micros: i64,
    #[serde(skip)]
    pub aov_micros: i64,
}

/// A breakdown's sort keys.
pub const SORTS: [&str; 7] = [
    "value",
    "sales",
    "orders",
    "net",
    "refunds",
    "refund_rate",
    "aov",
];

pub async fn breakdown(
    store: &Store,
    scope: &Scope,
    by: &str,
    values: Option<&[String]>,
    sort: &str,
    descending: bool,
) -> Result<Vec<Row>, StoreError> {
    let rows = store.daily_sums(&scope.query(by, None, false)).await?;
    let immature = scope.immature();
    let mut out: Vec<Row> = rows
        .into_iter()
        .filter(|r| values.is_none_or(|v| v.contains(&r.key)))
        .map(|r: SumRow| {
            let c = r.counters;
            let orders = c.sales + c.rebills;
            Row {
                label: if r.label.is_empty() {
                    r.key.clone()
                } else {
                    r.label
                },
                value: r.key,
                money: Money::of(&r.currency, &c),
                currency: r.currency,
                counts: Counts::of(&c),
                refund_rate: rates(&c, immature),
                net_micros: net_micros(&c),
                aov_micros: if orders > 0 {
                    c.gross_micros / orders
                } else {
                    0
                },
            }
        })
        .collect();
    let key = |r: &Row| -> (i64, f64) {
        match sort {
            "sales" => (r.counts.sales, 0.0),
            "orders" => (r.counts.orders, 0.0),
            "net" => (r.net_micros, 0.0),
            "refunds" => (r.counts.refunds, 0.0),
            "refund_rate" => (0, r.refund_rate.period.rate.unwrap_or(-1.0)),
            "aov" => (r.aov_micros, 0.0),
            _ => (0, 0.0),
        }
    };
    out.sort_by(|a, b| {
        let o = if sort == "value" || !SORTS.contains(&sort) {
            a.label.cmp(&b.label).then(a.currency.cmp(&b.currency))
        } else {
            let (ka, kb) = (key(a), key(b));
            ka.0.cmp(&kb.0).then(ka.1.total_cmp(&kb.1))
        };
        if descending {
            o.reverse()
        } else {
            o
        }
    });
    Ok(out)
}

/// Two or more values side by side, and whether their cohort refund rates
/// differ significantly.
#[derive(Debug, Clone, Serialize)]
pub struct Compared {
    pub rows: Vec<Row>,
    pub comparison: Comparison,
}

pub async fn compare(
    store: &Store,
    scope: &Scope,
    by: &str,
    values: &[String],
) -> Result<Compared, StoreError> {
    let rows = breakdown(store, scope, by, Some(values), "value", false).await?;
    let label = |r: &Row| {
        if rows.iter().filter(|o| o.value == r.value).count() > 1 {
            format!("{} ({})", r.label, r.currency)
        } else {
            r.label.clone()
        }
    };
    let labels: Vec<String> = rows.iter().map(label).collect();
    let groups: Vec<(&str, u64, u64)> = rows
        .iter()
        .zip(&labels)
        .map(|(r, l)| {
            (
                l.as_str(),
                r.refund_rate.cohort.events,
                r.refund_rate.cohort.trials,
            )
        })
        .collect();
    let comparison = stats::compare(&groups);
    Ok(Compared { rows, comparison })
}

/// Subscriptions: rebills and cancellations per product in the range, and
/// retention by month of first sale (all time).
#[derive(Debug, Clone, Serialize)]
pub struct Subscriptions {
    pub products: Vec<Row>,
    pub active: i64,
    pub cohorts: Vec<Cohort>,
}

/// One month of first sales of one product, and how its subscriptions fared.
#[derive(Debug, Clone, Serialize)]
pub struct Cohort {
    #[serde(flatten)]
    pub row: CohortRow,
    /// Share of the month's subscriptions with at least 1, 2, 3 and 6 rebills.
    pub retention: [Option<f64>; 4],
}

pub async fn subscriptions(store: &Store, scope: &Scope) -> Result<Subscriptions, StoreError> {
    let cohorts: Vec<CohortRow> = store.subscription_cohorts(scope.account.as_deref()).await?;
    let products = breakdown(store, scope, "product", None, "value", false)
        .await?
        .into_iter()
        .filter(|r| {
            r.counts.rebills > 0 || r.counts.cancellations > 0 || r.counts.uncancellations > 0
        })
        .collect();
    let share = |n: i64, of: i64| (of > 0).then(|| n as f64 / of as f64);
    Ok(Subscriptions {
        products,
        active: cohorts.iter().map(|c| c.active).sum(),
        cohorts: cohorts
            .into_iter()
            .map(|c| Cohort {
                retention: [
                    share(c.rebilled1, c.started),
                    share(c.rebilled2, c.started),
                    share(c.rebilled3, c.started),
                    share(c.rebilled6, c.started),
                ],
                row: c,
            })
            .collect(),
    })
}
