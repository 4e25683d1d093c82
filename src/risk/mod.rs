//! The refund-risk score: P(a sale is refunded within the refund window),
//! learned from the account's own matured sales by L2-regularised logistic
//! regression (`linfa-logistic`) over categorical features ([`features`]).
//! [`evaluate`] holds the newest quarter of the matured sales out, and
//! compares the model on it with two baselines (the base rate, per-product
//! rates) by AUC, log-loss and calibration ([`metrics`]). A model is only
//! ever trained from enough history; with none, sales get no score.

pub mod features;
pub mod metrics;
pub mod train;

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use linfa::prelude::*;
use linfa_logistic::LogisticRegression;
use ndarray::{Array1, Array2};
use serde::{Deserialize, Serialize};

use features::{Values, NAMES};
use metrics::Scores;

pub use train::{spawn, train_and_store, training_set, Slot};

/// A feature value needs this many training sales to get its own weight;
/// rarer ones share the reference (no weight), like an unseen value.
pub const MIN_VALUE_SALES: usize = 30;
/// At most this many values per feature (the most frequent).
pub const MAX_VALUES: usize = 40;
/// The L2 penalty (linfa's `alpha`).
pub const L2: f64 = 1.0;
/// Too little history for a model: fewer matured sales or refunds than these.
pub const MIN_SALES: usize = 300;
pub const MIN_REFUNDS: usize = 20;
/// The per-product baseline's shrinkage toward the base rate, in pseudo-sales.
const PRODUCT_PRIOR: f64 = 20.0;
/// The newest share of matured sales held out by [`evaluate`].
pub const HOLDOUT: f64 = 0.25;

#[derive(Debug, thiserror::Error)]
pub enum RiskError {
    #[error("too little history for a model: {sales} matured sales with {refunds} refunds (at least {MIN_SALES} and {MIN_REFUNDS} needed)")]
    TooLittle { sales: usize, refunds: usize },
    #[error("cannot fit the model: {0}")]
    Fit(String),
}

/// One matured sale: its features, whether it was refunded within the window, when.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub values: Values,
    pub refunded: bool,
    pub at: DateTime<Utc>,
}

/// A fitted model: one weight per (feature, value) column, and an intercept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Model {
    pub columns: Vec<(usize, String)>,
    pub weights: Vec<f64>,
    pub intercept: f64,
    /// The refund window the labels used, in days.
    pub window_days: i64,
    pub base_rate: f64,
}

fn check(examples: &[&Example]) -> Result<(), RiskError> {
    let refunds = examples.iter().filter(|e| e.refunded).count();
    if examples.len() < MIN_SALES || refunds < MIN_REFUNDS {
        return Err(RiskError::TooLittle {
            sales: examples.len(),
            refunds,
        });
    }
    Ok(())
}

impl Model {
    /// Fits on `examples` (already matured).
    pub fn fit(examples: &[&Example], window_days: i64) -> Result<Model, RiskError> {
        check(examples)?;
        let mut columns = Vec::new();
        for f in 0..NAMES.len() {
            let mut counts: HashMap<&str, usize> = HashMap::new();
            for e in examples {
                *counts.entry(e.values[f].as_str()).or_default() += 1;
            }
            let mut values: Vec<(&str, usize)> = counts
                .into_iter()
                .filter(|(_, n)| *n >= MIN_VALUE_SALES)
                .collect();
            values.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
            // The most frequent value is the reference (no column): the
            // columns of one feature are then not collinear with the intercept.
            columns.extend(
                values
                    .into_iter()
                    .skip(1)
                    .take(MAX_VALUES)
                    .map(|(v, _)| (f, v.to_owned())),
            );
        }
        let index: HashMap<(usize, &str), usize> = columns
            .iter()
            .enumerate()
            .map(|(i, (f, v))| ((*f, v.as_str()), i))
            .collect();
        let mut x = Array2::<f64>::zeros((examples.len(), columns.len().max(1)));
        for (row, e) in examples.iter().enumerate() {
            for (f, v) in e.values.iter().enumerate() {
                if let Some(&c) = index.get(&(f, v.as_str())) {
                    x[[row, c]] = 1.0;
                }
            }
        }
        let y = Array1::from_iter(examples.iter().map(|e| e.refunded));
        let base_rate = y.iter().filter(|r| **r).count() as f64 / y.len() as f64;
        let fitted = LogisticRegression::default()
            .alpha(L2)
            .max_iterations(200)
            .fit(&Dataset::new(x, y))
            .map_err(|e| RiskError::Fit(e.to_string()))?;
        // linfa's parameters are for its "positive" class, which it picks
        // itself: turn them into the log-odds of a refund.
        let sign = if fitted.labels().pos.class { 1.0 } else { -1.0 };
        let mut weights: Vec<f64> = fitted.params().iter().map(|w| sign * w).collect();
        weights.truncate(columns.len());
        Ok(Model {
            columns,
            weights,
            intercept: sign * fitted.intercept(),
            window_days,
            base_rate,
        })
    }

    /// P(refund) of a sale with these values.
    pub fn score(&self, values: &Values) -> f64 {
        let z = self.intercept
            + self
                .columns
                .iter()
                .zip(&self.weights)
                .filter(|((f, v), _)| values[*f] == *v)
                .map(|(_, w)| w)
                .sum::<f64>();
        1.0 / (1.0 + (-z).exp())
    }

    /// The largest effects, for a reader: (feature, value, odds ratio).
    pub fn strongest(&self, n: usize) -> Vec<(&'static str, String, f64)> {
        let mut w: Vec<_> = self
            .columns
            .iter()
            .zip(&self.weights)
            .map(|((f, v), w)| (NAMES[*f], v.clone(), w.exp()))
            .collect();
        w.sort_by(|a, b| b.2.ln().abs().total_cmp(&a.2.ln().abs()));
        w.truncate(n);
        w
    }
}

/// The model against the baselines on the newest matured sales.
#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    pub train_sales: usize,
    pub train_refunds: usize,
    pub test_sales: usize,
    pub test_refunds: usize,
    pub train_from: DateTime<Utc>,
    pub test_from: DateTime<Utc>,
    pub test_to: DateTime<Utc>,
    pub model: Scores,
    pub base_rate: Scores,
    pub per_product: Scores,
    /// Better than per-product rates on both AUC (by at least
    /// [`AUC_MARGIN`]) and log-loss.
    pub beats_per_product: bool,
}

/// How much better than the per-product baseline a model's holdout AUC must
/// be to count as better (the AUC's own noise on a few thousand sales).
pub const AUC_MARGIN: f64 = 0.01;

/// Holds the newest [`HOLDOUT`] of `examples` out, fits on the rest, and
/// scores the model and both baselines on the held-out sales.
pub fn evaluate(examples: &[Example], window_days: i64) -> Result<(Model, Evaluation), RiskError> {
    let mut sorted: Vec<&Example> = examples.iter().collect();
    sorted.sort_by_key(|e| e.at);
    let cut = ((sorted.len() as f64) * (1.0 - HOLDOUT)) as usize;
    let (train, test) = sorted.split_at(cut);
    check(train)?;
    let (Some(first), Some(test_first), Some(last)) = (train.first(), test.first(), test.last())
    else {
        return Err(RiskError::TooLittle {
            sales: examples.len(),
            refunds: 0,
        });
    };
    let model = Model::fit(train, window_days)?;
    let labels: Vec<bool> = test.iter().map(|e| e.refunded).collect();
    let predicted: Vec<f64> = test.iter().map(|e| model.score(&e.values)).collect();
    let base = model.base_rate;
    let mut by_product: HashMap<&str, (f64, f64)> = HashMap::new();
    for e in train {
        let p = by_product.entry(e.values[0].as_str()).or_default();
        p.0 += 1.0;
        p.1 += f64::from(u8::from(e.refunded));
    }
    let product_rate = |e: &Example| {
        let (n, k) = by_product
            .get(e.values[0].as_str())
            .copied()
            .unwrap_or_default();
        (k + PRODUCT_PRIOR * base) / (n + PRODUCT_PRIOR)
    };
    let per_product: Vec<f64> = test.iter().map(|e| product_rate(e)).collect();
    let model_scores = metrics::scores("model", &predicted, &labels);
    let product_scores = metrics::scores("per-product rates", &per_product, &labels);
    let beats = match (model_scores.auc, product_scores.auc) {
        (Some(m), Some(p)) => {
            m >= p + AUC_MARGIN && model_scores.log_loss < product_scores.log_loss
        }
        _ => false,
    };
    let evaluation = Evaluation {
        train_sales: train.len(),
        train_refunds: train.iter().filter(|e| e.refunded).count(),
        test_sales: test.len(),
        test_refunds: labels.iter().filter(|l| **l).count(),
        train_from: first.at,
        test_from: test_first.at,
        test_to: last.at,
        base_rate: metrics::scores("base rate", &vec![base; test.len()], &labels),
        per_product: product_scores,
        model: model_scores,
        beats_per_product: beats,
    };
    Ok((model, evaluation))
}

/// The evaluation as a reader sees it (`kaching risk evaluate`).
pub fn report(e: &Evaluation) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "trained on {} matured sales ({} refunded) from {}; tested on the {} newest ({} refunded), {} to {}",
        e.train_sales,
        e.train_refunds,
        e.train_from.format("%Y-%m-%d"),
        e.test_sales,
        e.test_refunds,
        e.test_from.format("%Y-%m-%d"),
        e.test_to.format("%Y-%m-%d"),
    );
    let _ = writeln!(out, "\n{:<20} {:>7} {:>9}", "predictor", "AUC", "log-loss");
    for s in [&e.model, &e.per_product, &e.base_rate] {
        let auc = s.auc.map_or("-".to_owned(), |a| format!("{a:.3}"));
        let _ = writeln!(out, "{:<20} {:>7} {:>9.4}", s.name, auc, s.log_loss);
    }
    let _ = writeln!(
        out,
        "\ncalibration by decile of the model's prediction (held-out sales):\n{:>7} {:>8} {:>10} {:>9}",
        "decile", "sales", "predicted", "observed"
    );
    for (i, d) in e.model.calibration.iter().enumerate() {
        let _ = writeln!(
            out,
            "{:>7} {:>8} {:>9.1} % {:>7.1} %",
            i + 1,
            d.sales,
            d.predicted * 100.0,
            d.observed * 100.0
        );
    }
    let _ = writeln!(
        out,
        "\n{}",
        if e.beats_per_product {
            "The model beats the per-product baseline on held-out sales."
        } else {
            "The model does NOT beat the per-product baseline on held-out sales: its scores add nothing \
             to each product's own refund rate (sales still get them, but do not act on them)."
        }
    );
    out
}

#[cfg(test)]
mod tests;
