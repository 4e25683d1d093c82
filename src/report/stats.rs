//! Small statistics helpers for the sales dashboard: Wilson intervals,
//! Fisher's exact test, Pearson chi-square and a plain-English comparison.

use statrs::distribution::{ChiSquared, ContinuousCDF};
use statrs::function::factorial::ln_factorial;

/// z for a two-sided 95 % interval.
const Z95: f64 = 1.959_963_984_540_054;

/// A proportion k of n with its 95 % Wilson score interval.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Rate {
    /// Number of events (clamped to `trials`).
    pub events: u64,
    /// Number of trials.
    pub trials: u64,
    /// Point estimate `events / trials`; `None` when `trials == 0`.
    pub rate: Option<f64>,
    /// Lower 95 % Wilson bound.
    pub low: Option<f64>,
    /// Upper 95 % Wilson bound.
    pub high: Option<f64>,
}

/// Wilson score interval for `events` of `trials`.
/// All `Option` fields are `None` when `trials == 0`; `events > trials` is clamped to `trials`.
pub fn wilson(events: u64, trials: u64) -> Rate {
    let events = events.min(trials);
    if trials == 0 {
        return Rate {
            events,
            trials,
            rate: None,
            low: None,
            high: None,
        };
    }
    let (k, n) = (events as f64, trials as f64);
    let p = k / n;
    let z2 = Z95 * Z95;
    let denom = 1.0 + z2 / n;
    let centre = (p + z2 / (2.0 * n)) / denom;
    let half = Z95 * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt() / denom;
    Rate {
        events,
        trials,
        rate: Some(p),
        low: Some((centre - half).max(0.0)),
        high: Some((centre + half).min(1.0)),
    }
}

/// Two-sided Fisher exact test p-value for the 2x2 table `[[a, b], [c, d]]`
/// (row 1 = group 1 events / non-events, row 2 = group 2), summing all tables with
/// the same margins whose probability is <= the observed one (relative tolerance 1e-7, as R).
/// Tables with probability below ~1e-326 (which would underflow to 0) are skipped.
pub fn fisher_exact(a: u64, b: u64, c: u64, d: u64) -> f64 {
    let (r1, r2, c1) = (a + b, c + d, a + c);
    let c2 = b + d;
    let lo = c1.saturating_sub(r2);
    let hi = c1.min(r1);
    // Log hypergeometric probability of the table with top-left cell x (up to a constant).
    let lp = |x: u64| -> f64 {
        -(ln_factorial(x) + ln_factorial(r1 - x) + ln_factorial(c1 - x) + ln_factorial(r2 + x - c1))
    };
    let constant = ln_factorial(r1) + ln_factorial(r2) + ln_factorial(c1) + ln_factorial(c2)
        - ln_factorial(r1 + r2);
    let cutoff = lp(a) + (1.0 + 1e-7_f64).ln();
    // The pmf is log-concave: walk out from the mode and stop once terms underflow to 0.
    let mode = ((u128::from(c1) + 1) * (u128::from(r1) + 1) / (u128::from(r1 + r2) + 2)) as u64;
    let mode = mode.clamp(lo, hi);
    let term = |x: u64| -> Option<f64> {
        let l = lp(x);
        (l + constant > -750.0).then(|| {
            if l <= cutoff {
                (l + constant).exp()
            } else {
                0.0
            }
        })
    };
    let up: f64 = (mode..=hi).map_while(term).sum();
    let down: f64 = (lo..mode).rev().map_while(term).sum();
    let total = up + down;
    total.min(1.0)
}

/// Result of a Pearson chi-square test.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct ChiSquare {
    /// Pearson X² statistic.
    pub statistic: f64,
    /// Degrees of freedom (groups used − 1).
    pub df: u64,
    /// Upper-tail p-value.
    pub p_value: f64,
}

/// Pearson chi-square test of homogeneity for groups of `(events, trials)` (no continuity
/// correction). Groups with `trials == 0` are ignored; `None` when fewer than 2 groups remain
/// or the pooled rate is 0 or 1.
pub fn chi_square(groups: &[(u64, u64)]) -> Option<ChiSquare> {
    let used: Vec<(f64, f64)> = groups
        .iter()
        .filter(|&&(_, n)| n > 0)
        .map(|&(e, n)| (e.min(n) as f64, n as f64))
        .collect();
    if used.len() < 2 {
        return None;
    }
    let events: f64 = used.iter().map(|g| g.0).sum();
    let trials: f64 = used.iter().map(|g| g.1).sum();
    let pooled = events / trials;
    if pooled <= 0.0 || pooled >= 1.0 {
        return None;
    }
    let statistic: f64 = used
        .iter()
        .map(|&(e, n)| (e - n * pooled).powi(2) / (n * pooled * (1.0 - pooled)))
        .sum();
    let df = used.len() as u64 - 1;
    let p_value = ChiSquared::new(df as f64).ok()?.sf(statistic);
    Some(ChiSquare {
        statistic,
        df,
        p_value,
    })
}

/// Outcome of comparing refund rates between groups.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Comparison {
    /// Name of the test used (or `"none"` when no test could be run).
    pub test: &'static str,
    /// p-value, if a test could be run.
    pub p_value: Option<f64>,
    /// Whether p < 0.05.
    pub significant: bool,
    /// Plain-English verdict (when significant) or note.
    pub summary: String,
}

/// Formats a p-value as `p = 0.003`, or `p < 0.001`.
fn fmt_p(p: f64) -> String {
    if p < 0.001 {
        return "p < 0.001".to_string();
    }
    let s = format!("{p:.3}");
    format!("p = {}", s.trim_end_matches('0').trim_end_matches('.'))
}

/// Compares refund rates of `(label, refunds, sales)` groups: Fisher's exact test for exactly
/// two groups, chi-square for more. Groups with no sales are ignored. When p < 0.05 the
/// summary names the group with the lowest rate as better; otherwise it is a neutral note.
pub fn compare(groups: &[(&str, u64, u64)]) -> Comparison {
    let used: Vec<(&str, u64, u64)> = groups
        .iter()
        .filter(|g| g.2 > 0)
        .map(|&(l, e, n)| (l, e.min(n), n))
        .collect();
    let none = |summary: &str| Comparison {
        test: "none",
        p_value: None,
        significant: false,
        summary: summary.to_string(),
    };
    let (test, p) = match used.as_slice() {
        [] | [_] => return none("not enough data: need at least two groups with sales"),
        [(_, e1, n1), (_, e2, n2)] => (
            "Fisher's exact test",
            fisher_exact(*e1, n1 - e1, *e2, n2 - e2),
        ),
        _ => {
            let counts: Vec<(u64, u64)> = used.iter().map(|g| (g.1, g.2)).collect();
            match chi_square(&counts) {
                Some(r) => ("chi-square test", r.p_value),
                None => {
                    return none(
                        "no difference: refund rate is the same (0 % or 100 %) in every group",
                    );
                }
            }
        }
    };
    let significant = p < 0.05;
    let rate = |g: &(&str, u64, u64)| g.1 as f64 / g.2 as f64;
    let best = used.iter().min_by(|x, y| rate(x).total_cmp(&rate(y)));
    let summary = match (significant, best, used.as_slice()) {
        (true, Some(b), [x, y]) => {
            let other = if std::ptr::eq(b, x) { y } else { x };
            format!(
                "{} has a lower refund rate than {} ({test}, {})",
                b.0,
                other.0,
                fmt_p(p)
            )
        }
        (true, Some(b), _) => format!("{} has the lowest refund rate ({test}, {})", b.0, fmt_p(p)),
        _ => format!("no significant difference ({test}, {})", fmt_p(p)),
    };
    Comparison {
        test,
        p_value: Some(p),
        significant,
        summary,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn close(x: f64, y: f64, tol: f64) -> bool {
        (x - y).abs() <= tol * y.abs().max(1e-300)
    }

    #[test]
    fn wilson_known_values() {
        // Reference values: closed-form Wilson computed in Python.
        for (k, n, lo, hi) in [
            (1, 2, 0.094_531_205_734_230_74, 0.905_468_794_265_769_3),
            (0, 10, 0.0, 0.277_532_799_862_889_2),
            (50, 100, 0.403_831_530_365_995_6, 0.596_168_469_634_004_4),
        ] {
            let r = wilson(k, n);
            assert!((r.low.unwrap_or(f64::NAN) - lo).abs() < 1e-9, "{r:?}");
            assert!((r.high.unwrap_or(f64::NAN) - hi).abs() < 1e-9, "{r:?}");
        }
        assert_eq!(wilson(3, 0).rate, None);
        assert_eq!(wilson(7, 5).events, 5);
    }

    #[test]
    fn fisher_matches_r_and_scipy() {
        // R: fisher.test(matrix(c(3,1,1,3),2)) and matrix(c(10,2,3,15),2); scipy 1.17.1.
        assert!(close(
            fisher_exact(3, 1, 1, 3),
            0.485_714_285_714_285_65,
            1e-9
        ));
        assert!(close(
            fisher_exact(10, 3, 2, 15),
            0.000_536_724_119_143_435_7,
            1e-9
        ));
        assert!(close(
            fisher_exact(12, 88, 30, 70),
            0.002_866_560_763_284_443,
            1e-9
        ));
        assert!(close(
            fisher_exact(0, 5, 5, 0),
            0.007_936_507_936_507_938,
            1e-9
        ));
        assert!(close(fisher_exact(0, 0, 3, 4), 1.0, 1e-12));
    }

    #[test]
    fn fisher_large_n_is_fast() {
        let t = std::time::Instant::now();
        let p = fisher_exact(50_000, 50_000, 50_500, 49_500);
        let ms = t.elapsed().as_millis();
        assert!(close(p, 0.025_639_596_625_392_31, 1e-6), "p = {p}");
        assert!(close(
            fisher_exact(2000, 98_000, 2150, 97_850),
            0.019_412_880_280_080_678,
            1e-6
        ));
        assert!(ms < 50, "took {ms} ms");
    }

    #[test]
    fn chi_square_matches_scipy() {
        // scipy.stats.chi2_contingency([[12,88],[30,70],[20,100]], correction=False)
        let r = chi_square(&[(12, 100), (30, 100), (20, 120)]).unwrap();
        assert!(close(r.statistic, 11.272_151_371_176_127, 1e-9));
        assert_eq!(r.df, 2);
        assert!(close(r.p_value, 0.003_566_838_372_252_722_7, 1e-7));
        assert!(chi_square(&[(0, 10), (0, 20)]).is_none());
        assert!(chi_square(&[(1, 10), (0, 0)]).is_none());
    }

    #[test]
    fn compare_summaries() {
        let c = compare(&[("TID fall", 30, 100), ("TID spring", 12, 100)]);
        assert!(c.significant);
        assert_eq!(
            c.summary,
            "TID spring has a lower refund rate than TID fall (Fisher's exact test, p = 0.003)"
        );
        let c = compare(&[("A", 3, 4), ("B", 1, 4)]);
        assert_eq!(
            c.summary,
            "no significant difference (Fisher's exact test, p = 0.486)"
        );
        let c = compare(&[("A", 12, 100), ("B", 30, 100), ("C", 20, 120)]);
        assert_eq!(c.test, "chi-square test");
        assert_eq!(
            c.summary,
            "A has the lowest refund rate (chi-square test, p = 0.004)"
        );
        assert_eq!(compare(&[("A", 1, 10)]).p_value, None);
    }
}
