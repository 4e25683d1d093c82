//! `refund_spike`: per breakdown value (a product by default), are the
//! refunds of the recent window far above what its history predicts?
//!
//! - Refunds are matched to the sale cohort they reverse (by receipt: the
//!   report's `cohort_refunds`). A subject's refund rate is learned from its
//!   matured cohorts only (sales older than `matured_after`, 60 days: they
//!   have had every refund they will get), shrunk toward the account-wide
//!   rate by empirical Bayes ([`Beta::prior`]): a product with 40 sales is
//!   mostly judged by the account, one with 4,000 by itself.
//! - When refunds come after their sale is learned from the account's
//!   matured refunds ([`Delays`]), so the refunds expected in the window
//!   follow the sales that can still be refunded: a launch that just began
//!   expects few refunds yet, and a product whose sales stopped still
//!   expects the refunds of its last weeks.
//! - It fires when the window's refunds are at least `min_refunds` and the
//!   exact probability of that many or more, if nothing changed, is below
//!   `sensitivity` ([`spike_probability`]: negative binomial, so a subject
//!   with a short history needs more refunds); it resolves when that
//!   probability is back above ten times `sensitivity`.

use chrono::{DateTime, Duration, NaiveDate, Timelike, Utc};
use serde_json::json;

use super::stats::{spike_probability, Beta, Delays};
use super::{odds, Rule, Verdict};
use crate::store::{Store, StoreError};

/// Days of history read (the matured cohorts and the refund delays).
pub const HISTORY_DAYS: usize = 365;

/// One breakdown value's days, oldest first, the last being today.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub value: String,
    pub label: String,
    pub sales: Vec<f64>,
    /// Refunds dated that day.
    pub refunds: Vec<f64>,
    /// Refunds, so far, of that day's sales.
    pub cohort_refunds: Vec<f64>,
}

impl Series {
    pub fn new(value: &str, label: &str, days: usize) -> Series {
        Series {
            value: value.to_owned(),
            label: label.to_owned(),
            sales: vec![0.0; days],
            refunds: vec![0.0; days],
            cohort_refunds: vec![0.0; days],
        }
    }
}

/// What the window says of one subject.
#[derive(Debug, Clone, PartialEq)]
pub struct Assessment {
    pub value: String,
    pub label: String,
    pub observed: u64,
    pub expected: f64,
    /// The subject's estimated refunds per sale.
    pub rate: f64,
    /// P(at least `observed` refunds) if its rate did not change.
    pub probability: f64,
    /// Matured sales its own rate was learned from.
    pub matured_sales: f64,
    /// Its rate's posterior, and the refunded sales the window can see.
    pub posterior: Beta,
    pub exposure: f64,
}

impl Assessment {
    /// The fewest refunds in the window that would fire at `sensitivity`.
    pub fn firing_from(&self, sensitivity: f64) -> Option<u64> {
        (1..100_000).find(|k| spike_probability(*k, self.exposure, self.posterior) < sensitivity)
    }
}

/// Assesses every subject of one breakdown. `window` and `matured` in
/// days; `today`: the part of today gone (0–1).
pub fn assess(
    series: &[Series],
    delays: &Delays,
    window: usize,
    matured: usize,
    today: f64,
) -> Vec<Assessment> {
    let Some(len) = series.first().map(|s| s.sales.len()) else {
        return Vec::new();
    };
    let matured_end = len.saturating_sub(matured + 1);
    let own: Vec<(f64, f64)> = series
        .iter()
        .map(|s| {
            (
                s.sales[..matured_end].iter().sum(),
                s.cohort_refunds[..matured_end].iter().sum(),
            )
        })
        .collect();
    let prior = Beta::prior(&own);
    series
        .iter()
        .zip(own)
        .map(|(s, (n, k))| {
            let posterior = prior.update(n, k);
            let observed = s.refunds[len.saturating_sub(window)..].iter().sum::<f64>() as u64;
            let exposure = delays.exposure(&s.sales, window, today);
            Assessment {
                value: s.value.clone(),
                label: s.label.clone(),
                observed,
                expected: posterior.mean() * exposure,
                rate: posterior.mean(),
                probability: spike_probability(observed, exposure, posterior),
                matured_sales: n,
                posterior,
                exposure,
            }
        })
        .collect()
}

/// The verdicts of one breakdown's assessments under `rule`.
pub fn verdicts(rule: &Rule, account: &str, dim: &str, found: &[Assessment]) -> Vec<Verdict> {
    let window_days = rule.window.as_secs() / 86_400;
    found
        .iter()
        .filter(|a| !(dim == "product" && a.value.is_empty()))
        .filter_map(|a| {
            let subject = format!("{account} {dim} {}", shown(dim, &a.value));
            let name = if a.label.is_empty() || a.label == a.value {
                format!("{dim} {}", shown(dim, &a.value))
            } else {
                format!("{dim} {} \"{}\"", a.value, a.label)
            };
            if a.probability < rule.sensitivity && a.observed >= rule.min_refunds {
                let mut alert = rule.alert(Some(account), subject);
                alert.title = format!("Refunds of {name} are climbing");
                alert.message = format!(
                    "{} had {} refunds in the last {window_days} days where about {:.1} were expected \
                     from its history (a refund rate of {:.1} % of sales, {:.1}× the expected count). \
                     That many or more by chance alone: {} (p = {:.2e}). \
                     Check its sales page, its traffic sources and recent reviews; consider pausing its ads.",
                    capitalised(&name),
                    a.observed,
                    a.expected,
                    a.rate * 100.0,
                    a.observed as f64 / a.expected.max(1e-9),
                    odds(a.probability),
                    a.probability,
                );
                alert.details = json!({
                    "dimension": dim,
                    "value": a.value,
                    "label": a.label,
                    "window_days": window_days,
                    "observed": a.observed,
                    "expected": round(a.expected, 3),
                    "refund_rate": round(a.rate, 5),
                    "probability": a.probability,
                    "sensitivity": rule.sensitivity,
                    "matured_sales": a.matured_sales,
                });
                Some(Verdict::Fire(alert))
            } else if a.probability >= (rule.sensitivity * 10.0).min(0.5)
                || a.observed < rule.min_refunds
            {
                Some(Verdict::Clear {
                    subject,
                    message: format!(
                        "Refunds of {name} are back to what its history predicts: {} in the last {window_days} days, about {:.1} expected.",
                        a.observed, a.expected
                    ),
                })
            } else {
                None
            }
        })
        .collect()
}

fn capitalised(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

fn shown<'a>(dim: &str, value: &'a str) -> &'a str {
    match (dim, value) {
        ("affiliate", "") => "(direct)",
        (_, "") => "(none)",
        _ => value,
    }
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

/// Reads the account's history and assesses every breakdown of the rule.
pub async fn evaluate(
    store: &Store,
    rule: &Rule,
    account: &str,
    now: DateTime<Utc>,
) -> Result<Vec<Verdict>, StoreError> {
    let today = now.date_naive();
    let first = today - Duration::days(HISTORY_DAYS as i64 - 1);
    let since = first.format("%Y-%m-%d").to_string();
    let matured = (rule.matured_after.as_secs() / 86_400) as usize;
    let window = ((rule.window.as_secs() / 86_400) as usize).max(1);
    let index = |day: &str| -> Option<usize> {
        let d = NaiveDate::parse_from_str(day, "%Y-%m-%d").ok()?;
        usize::try_from((d - first).num_days())
            .ok()
            .filter(|i| *i < HISTORY_DAYS)
    };
    let last_matured = today - Duration::days(matured as i64);
    let ages: Vec<(i64, u64)> = store
        .refund_ages(account, &since)
        .await?
        .into_iter()
        .filter_map(|(sale, refund, n)| {
            let s = NaiveDate::parse_from_str(&sale, "%Y-%m-%d").ok()?;
            let r = NaiveDate::parse_from_str(&refund, "%Y-%m-%d").ok()?;
            (s <= last_matured).then(|| ((r - s).num_days(), n.max(0) as u64))
        })
        .collect();
    let delays = Delays::learn(&ages, HISTORY_DAYS);
    let part_of_today = f64::from(now.num_seconds_from_midnight()) / 86_400.0;
    let mut out = Vec::new();
    for dim in &rule.by {
        let mut series: Vec<Series> = Vec::new();
        for row in store.refund_days(account, dim, &since).await? {
            let Some(i) = index(&row.day) else { continue };
            if series.last().is_none_or(|s| s.value != row.value) {
                series.push(Series::new(&row.value, &row.label, HISTORY_DAYS));
            }
            if let Some(s) = series.last_mut() {
                s.sales[i] += row.sales as f64;
                s.refunds[i] += row.refunds as f64;
                s.cohort_refunds[i] += row.cohort_refunds as f64;
            }
        }
        let found = assess(&series, &delays, window, matured, part_of_today.max(0.01));
        out.extend(verdicts(rule, account, dim, &found));
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
