//! refund_spike on generated histories: its false alarms against what the
//! sensitivity promises, and the refunds it takes to catch a planted spike.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

const DAYS: usize = HISTORY_DAYS;
const WINDOW: usize = 7;
const MATURED: usize = 60;

fn poisson(rng: &mut StdRng, mean: f64) -> u64 {
    // Knuth's method: fine for the small means here.
    let limit = (-mean).exp();
    let mut k = 0;
    let mut p = rng.random::<f64>();
    while p > limit {
        k += 1;
        p *= rng.random::<f64>();
    }
    k
}

/// Days from sale to refund: mostly 14–45 (protocol notes §1.2), some sooner, some later.
fn delay(rng: &mut StdRng) -> usize {
    match rng.random_range(0..10) {
        0 | 1 => rng.random_range(0..14),
        2..=7 => rng.random_range(14..45),
        _ => rng.random_range(45..60),
    }
}

/// 20 products with their own steady rates over a year; `plant`: this
/// product's refunds in the last week come `factor` times as often.
fn history(seed: u64, plant: Option<(usize, u32, f64)>) -> (Vec<Series>, Vec<(i64, u64)>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut ages = Vec::new();
    let series = (0..20)
        .map(|p| {
            let (mut sales_per_day, mut rate) =
                (rng.random_range(1.0..15.0), rng.random_range(0.02..0.15));
            // The planted product: `size` sales a day, 10 % refunded
            // (25 a day: about 17 refunds a week, 52 in the planted week).
            if let Some((_, _, size)) = plant.filter(|(q, _, _)| *q == p) {
                (sales_per_day, rate) = (size, 0.10);
            }
            let mut s = Series::new(&p.to_string(), "", DAYS);
            for day in 0..DAYS {
                let weekly = [1.1, 1.05, 1.0, 1.0, 0.95, 0.85, 0.9][day % 7];
                let n = poisson(&mut rng, sales_per_day * weekly);
                s.sales[day] += n as f64;
                for _ in 0..n {
                    // When it would be refunded, then whether it is: the
                    // planted product's sales are refunded `factor` times as
                    // often when that day falls in the last week.
                    let on = day + delay(&mut rng);
                    let factor = match plant {
                        Some((q, f, _)) if q == p && on >= DAYS - WINDOW => f64::from(f),
                        _ => 1.0,
                    };
                    if rng.random::<f64>() >= rate * factor || on >= DAYS {
                        continue;
                    }
                    s.refunds[on] += 1.0;
                    s.cohort_refunds[day] += 1.0;
                    if day + MATURED < DAYS {
                        ages.push(((on - day) as i64, 1));
                    }
                }
            }
            s
        })
        .collect();
    (series, ages)
}

fn rule() -> Rule {
    crate::alerts::test_rule("refund_spike")
}

fn fired(rule: &Rule, found: &[Assessment]) -> Vec<String> {
    verdicts(rule, "acme", "product", found)
        .into_iter()
        .filter_map(|v| match v {
            Verdict::Fire(a) => Some(a.details["value"].as_str().unwrap_or("").to_owned()),
            Verdict::Clear { .. } => None,
        })
        .collect()
}

#[test]
fn steady_products_rarely_fire_at_the_default_sensitivity() {
    let rule = rule();
    let seeds = 150;
    let mut alarms = 0;
    let mut evaluations = 0;
    for seed in 0..seeds {
        let (series, ages) = history(seed, None);
        let delays = Delays::learn(&ages, DAYS);
        let found = assess(&series, &delays, WINDOW, MATURED, 1.0);
        evaluations += found.len();
        alarms += fired(&rule, &found).len();
    }
    let promised = evaluations as f64 * rule.sensitivity;
    eprintln!(
        "refund_spike false alarms: {alarms} in {evaluations} subject-evaluations (the sensitivity promises at most {promised:.1})"
    );
    // The promise, with room for the Poisson noise of so few alarms.
    assert!(
        (alarms as f64) <= promised * 2.0 + 3.0,
        "{alarms} false alarms, {promised} promised"
    );
}

/// Detections of a tripled week on a product of `size` sales a day, in `seeds` histories.
fn planted(rule: &Rule, size: f64, seeds: u64) -> (u64, usize, Vec<(f64, u64, u64)>) {
    let (mut caught, mut others) = (0, 0);
    let mut needed = Vec::new();
    for seed in 0..seeds {
        let (series, ages) = history(1000 + seed, Some((3, 3, size)));
        let delays = Delays::learn(&ages, DAYS);
        let found = assess(&series, &delays, WINDOW, MATURED, 1.0);
        let f = fired(rule, &found);
        if f.iter().any(|v| v == "3") {
            caught += 1;
        }
        others += f.iter().filter(|v| *v != "3").count();
        // The refunds the window needed before it fired, for the same expectation.
        let planted = &found[3];
        let posterior_needed = planted.firing_from(rule.sensitivity).unwrap_or(0);
        needed.push((planted.expected, posterior_needed, planted.observed));
    }
    (caught, others, needed)
}

#[test]
fn a_tripled_refund_rate_on_one_product_fires_for_that_product_only() {
    let rule = rule();
    let seeds = 30;
    for size in [12.0, 25.0] {
        let (caught, others, needed) = planted(&rule, size, seeds);
        let mean = |f: &dyn Fn(&(f64, u64, u64)) -> f64| {
            needed.iter().map(f).sum::<f64>() / needed.len() as f64
        };
        eprintln!(
            "refund_spike planted 3x on a product of {size} sales a day: caught in {caught} of {seeds} histories; \
             other products fired {others} times; on average {:.1} refunds expected in the window, {:.1} observed, \
             firing from {:.1}",
            mean(&|n| n.0),
            mean(&|n| n.2 as f64),
            mean(&|n| n.1 as f64),
        );
        assert!(others <= 2, "{others} alarms on steady products");
        if size >= 25.0 {
            assert!(
                caught * 10 >= seeds * 9,
                "caught in only {caught} of {seeds}"
            );
        }
    }
}
