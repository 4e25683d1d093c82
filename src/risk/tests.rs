//! The model on generated sales with planted effects: it finds them, it
//! is calibrated, and with nothing to find beyond the products it says so.

use chrono::{Duration, TimeZone, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

/// Sales over a year: five products with their own refund rates; with
/// `planted`, traffic source "tiktok" is refunded 4× as often.
fn sales(seed: u64, n: usize, planted: bool) -> Vec<Example> {
    let mut rng = StdRng::seed_from_u64(seed);
    let start = Utc.with_ymd_and_hms(2025, 6, 1, 0, 0, 0).unwrap();
    let product_rates = [0.04, 0.06, 0.08, 0.10, 0.05];
    let sources = ["google", "facebook", "tiktok", "email", "bing", ""];
    let countries = ["US", "GB", "DE", "CA", "AU"];
    let payments = ["VISA", "MSTR", "PYPL", "AMEX"];
    (0..n)
        .map(|i| {
            let product = rng.random_range(0..product_rates.len());
            let source = sources[rng.random_range(0..sources.len())];
            let mut rate = product_rates[product];
            if planted && source == "tiktok" {
                rate *= 4.0;
            }
            let values: Values = [
                (product + 1).to_string(),
                format!("aff{}", rng.random_range(0..8)),
                source.to_owned(),
                countries[rng.random_range(0..countries.len())].to_owned(),
                payments[rng.random_range(0..payments.len())].to_owned(),
                ["<10", "25-50", "50-100"][product % 3].to_owned(),
                "no".to_owned(),
                if rng.random_range(0..5) == 0 {
                    "yes"
                } else {
                    "no"
                }
                .to_owned(),
                format!("{}-{}", rng.random_range(0..7), rng.random_range(0..4)),
            ];
            Example {
                values,
                refunded: rng.random::<f64>() < rate,
                at: start + Duration::minutes(i as i64 * 60),
            }
        })
        .collect()
}

#[test]
fn a_planted_traffic_source_effect_beats_both_baselines_and_is_calibrated() {
    let examples = sales(1, 12_000, true);
    let (model, e) = evaluate(&examples, 60).unwrap();
    eprint!("{}", report(&e));
    let auc = e.model.auc.unwrap();
    assert!(auc > e.per_product.auc.unwrap() + AUC_MARGIN, "{auc}");
    assert!(auc > e.base_rate.auc.unwrap() + AUC_MARGIN);
    assert!(e.model.log_loss < e.per_product.log_loss);
    assert!(e.beats_per_product);
    // Each decile's predicted rate within three standard errors of what happened.
    for d in &e.model.calibration {
        let se = (d.predicted * (1.0 - d.predicted) / d.sales as f64).sqrt();
        assert!(
            (d.predicted - d.observed).abs() <= 3.0 * se + 0.005,
            "decile {d:?} (se {se:.4})"
        );
    }
    // The planted effect is the strongest one found, near its true size.
    let (feature, value, odds) = model.strongest(1).remove(0);
    assert_eq!((feature, value.as_str()), ("traffic_source", "tiktok"));
    assert!((3.0..6.0).contains(&odds), "{odds}");
}

#[test]
fn without_an_effect_beyond_the_products_it_does_not_claim_one() {
    for seed in 2..5 {
        let examples = sales(seed, 12_000, false);
        let (_, e) = evaluate(&examples, 60).unwrap();
        assert!(!e.beats_per_product, "seed {seed}: {}", report(&e));
    }
}

#[test]
fn too_little_history_makes_no_model() {
    let examples = sales(5, 200, true);
    assert!(matches!(
        evaluate(&examples, 60),
        Err(RiskError::TooLittle { .. })
    ));
}
