//! The statistics behind the rules, pure: exact tail probabilities, the
//! empirical-Bayes refund rate, the refund-delay distribution and the
//! hour-of-week sales profile. Floats are fine here: these are
//! probabilities and expected counts, never money.

use chrono::{DateTime, Datelike, Duration, DurationRound, Timelike, Utc};
use statrs::distribution::{DiscreteCDF, NegativeBinomial, Poisson};

/// P(X ≥ k) for X ~ Poisson(mean), exact (regularised incomplete gamma).
pub fn poisson_at_least(k: u64, mean: f64) -> f64 {
    if k == 0 {
        return 1.0;
    }
    if mean <= 0.0 {
        return 0.0;
    }
    Poisson::new(mean).map_or(1.0, |p| p.sf(k - 1))
}

/// A beta distribution of a refund rate: the prior (account-wide) or a
/// subject's posterior.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Beta {
    pub alpha: f64,
    pub beta: f64,
}

/// Prior strengths are held within these (pseudo-sales): at least a couple
/// of sales' worth, so a subject's own data always counts; at most this
/// many, so a large account's subjects are never pinned to its average.
const MIN_STRENGTH: f64 = 2.0;
const MAX_STRENGTH: f64 = 5_000.0;
/// A rate when an account has no matured sale at all: ClickBank's typical
/// refund rates are a few percent to a little over ten.
const DEFAULT_RATE: f64 = 0.08;

impl Beta {
    pub fn mean(self) -> f64 {
        self.alpha / (self.alpha + self.beta)
    }

    /// Empirical Bayes: the prior that the subjects' own (sales, refunds)
    /// imply, by the method of moments. Its mean is the pooled rate; its
    /// strength is what remains of the spread between subjects' rates once
    /// the binomial noise of their sizes is taken out. Subjects that all
    /// share one rate give a strong prior (shrink hard); subjects with truly
    /// different rates give a weak one.
    pub fn prior(subjects: &[(f64, f64)]) -> Beta {
        let n: f64 = subjects.iter().map(|s| s.0).sum();
        let k: f64 = subjects.iter().map(|s| s.1).sum();
        if n <= 0.0 {
            return Beta {
                alpha: DEFAULT_RATE * MIN_STRENGTH,
                beta: (1.0 - DEFAULT_RATE) * MIN_STRENGTH,
            };
        }
        let p0 = (k / n).clamp(1e-4, 1.0 - 1e-4);
        let sized: Vec<_> = subjects.iter().filter(|s| s.0 > 0.0).collect();
        let m = sized.len() as f64;
        let spread: f64 = sized.iter().map(|s| s.0 * (s.1 / s.0 - p0).powi(2)).sum();
        let squares: f64 = sized.iter().map(|s| s.0 * s.0).sum();
        // Fleiss's unbiased between-subject variance of binomial rates.
        let denominator = n - squares / n;
        let between = if m > 1.0 && denominator > 0.0 {
            (spread - (m - 1.0) * p0 * (1.0 - p0)) / denominator
        } else {
            0.0
        };
        let strength = if between > 0.0 {
            (p0 * (1.0 - p0) / between - 1.0).clamp(MIN_STRENGTH, MAX_STRENGTH)
        } else {
            MAX_STRENGTH
        };
        Beta {
            alpha: p0 * strength,
            beta: (1.0 - p0) * strength,
        }
    }

    /// The posterior after `sales` matured sales with `refunds` refunds.
    pub fn update(self, sales: f64, refunds: f64) -> Beta {
        Beta {
            alpha: self.alpha + refunds,
            beta: self.beta + (sales - refunds).max(0.0),
        }
    }
}

/// P(at least `observed` refunds) when the expected count is `rate ×
/// exposure` and the rate is uncertain as `rate` says: counts are Poisson
/// given the rate, and the rate is gamma with the beta's mean and shape (a
/// refund rate is small, where the two agree), so the count is negative
/// binomial: the Poisson analogue of the beta-binomial. Exact (regularised
/// incomplete beta). A subject with little history has a wide rate and
/// needs more refunds to fire than the plain Poisson tail would.
pub fn spike_probability(observed: u64, exposure: f64, rate: Beta) -> f64 {
    if observed == 0 {
        return 1.0;
    }
    if exposure <= 0.0 {
        return 0.0;
    }
    let shape = rate.alpha;
    let scale = rate.alpha + rate.beta;
    NegativeBinomial::new(shape, scale / (scale + exposure)).map_or(1.0, |d| d.sf(observed - 1))
}

/// When refunds come, in whole days after their sale: a probability per
/// age, 0 ..= `max_age`.
#[derive(Debug, Clone, PartialEq)]
pub struct Delays(Vec<f64>);

/// Refunds' ages are learned from the account's own matured refunds,
/// mixed with this many pseudo-refunds spread evenly over ClickBank's
/// default refund window (60 days, protocol notes §1.2), so that a young
/// account still has a sensible shape.
const DELAY_PSEUDO_REFUNDS: f64 = 20.0;
const DEFAULT_WINDOW_DAYS: usize = 60;

impl Delays {
    /// From (age in days, refunds) pairs; ages beyond `max_age` are dropped.
    pub fn learn(ages: &[(i64, u64)], max_age: usize) -> Delays {
        let mut counts = vec![0.0; max_age + 1];
        for &(age, n) in ages {
            if let Ok(a) = usize::try_from(age) {
                if a <= max_age {
                    counts[a] += n as f64;
                }
            }
        }
        let total: f64 = counts.iter().sum();
        let spread = DEFAULT_WINDOW_DAYS.min(max_age) + 1;
        for c in counts.iter_mut().take(spread) {
            *c += DELAY_PSEUDO_REFUNDS / spread as f64;
        }
        let sum = total + DELAY_PSEUDO_REFUNDS;
        Delays(counts.into_iter().map(|c| c / sum).collect())
    }

    /// P(a refund comes `age` days after its sale).
    pub fn at(&self, age: usize) -> f64 {
        self.0.get(age).copied().unwrap_or(0.0)
    }

    /// The refunds expected on the window's days per refunded sale, from
    /// the sales per day (`sales[i]` on day `i`, the last being today):
    /// Σ over window days r (today weighted by `today`, the part of it
    /// gone) of Σ over cohorts c ≤ r of sales[c] · P(age = r − c).
    pub fn exposure(&self, sales: &[f64], window: usize, today: f64) -> f64 {
        let last = sales.len();
        let mut total = 0.0;
        for r in last.saturating_sub(window)..last {
            let weight = if r + 1 == last { today } else { 1.0 };
            let on_day: f64 = (0..=r).map(|c| sales[c] * self.at(r - c)).sum();
            total += weight * on_day;
        }
        total
    }
}

/// Expected sales per hour of the week (0: Monday 00:00 UTC), from an
/// account's recent weeks.
#[derive(Debug, Clone, PartialEq)]
pub struct WeekProfile {
    per_hour: [f64; 168],
}

/// Each hour of the week is smoothed toward the same hour of the day on
/// the other days by this many weeks' worth of it, and toward the
/// account's average hour by a little, so that an hour that happened to
/// have no sale in the last weeks is not taken as certain to have none,
/// while a shop that sells only by day keeps its quiet nights.
const PROFILE_DAY_WEEKS: f64 = 1.0;
const PROFILE_MEAN_WEEKS: f64 = 0.1;

pub fn hour_of_week(t: DateTime<Utc>) -> usize {
    t.weekday().num_days_from_monday() as usize * 24 + t.hour() as usize
}

impl WeekProfile {
    /// From sales per UTC hour over `weeks` weeks.
    pub fn learn(hours: &[(DateTime<Utc>, u64)], weeks: f64) -> WeekProfile {
        let mut counts = [0.0; 168];
        for &(at, n) in hours {
            counts[hour_of_week(at)] += n as f64;
        }
        let weeks = weeks.max(1.0);
        let mean = counts.iter().sum::<f64>() / 168.0 / weeks;
        let mut of_day = [0.0; 24];
        for (h, c) in counts.iter().enumerate() {
            of_day[h % 24] += c / 7.0 / weeks;
        }
        let mut per_hour = [0.0; 168];
        for (h, (p, c)) in per_hour.iter_mut().zip(counts).enumerate() {
            *p = (c + PROFILE_DAY_WEEKS * of_day[h % 24] + PROFILE_MEAN_WEEKS * mean)
                / (weeks + PROFILE_DAY_WEEKS + PROFILE_MEAN_WEEKS);
        }
        WeekProfile { per_hour }
    }

    /// Sales expected between two instants (hours cut pro rata).
    pub fn expected(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
        if to <= from {
            return 0.0;
        }
        let hour = Duration::hours(1);
        let mut at = from;
        let mut total = 0.0;
        // Bounded: a silence of years is not worth more than a year's hours.
        for _ in 0..(24 * 366) {
            if at >= to {
                break;
            }
            let start = at.duration_trunc(hour).unwrap_or(at);
            let end = (start + hour).min(to);
            let part = (end - at).num_seconds() as f64 / 3600.0;
            total += self.per_hour[hour_of_week(at)] * part;
            at = end;
        }
        total
    }

    /// Sales expected per week.
    pub fn weekly(&self) -> f64 {
        self.per_hour.iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poisson_tails_are_exact() {
        // P(X ≥ 1) = 1 − e^−λ; P(X ≥ 3 | λ = 1) = 1 − e^−1 (1 + 1 + 1/2).
        assert!((poisson_at_least(1, 2.0) - (1.0 - (-2.0f64).exp())).abs() < 1e-12);
        let p3 = 1.0 - (-1.0f64).exp() * 2.5;
        assert!((poisson_at_least(3, 1.0) - p3).abs() < 1e-12);
        assert_eq!(poisson_at_least(0, 1.0), 1.0);
        assert_eq!(poisson_at_least(2, 0.0), 0.0);
        // Far tails stay accurate (not 1 − cdf rounding to 0).
        let tail = poisson_at_least(30, 2.0);
        assert!(tail > 0.0 && tail < 1e-15, "{tail}");
    }

    #[test]
    fn a_strong_prior_makes_the_negative_binomial_poisson() {
        let tight = Beta {
            alpha: 1e6 * 0.05,
            beta: 1e6 * 0.95,
        };
        let nb = spike_probability(12, 100.0, tight);
        let poisson = poisson_at_least(12, 5.0);
        assert!((nb - poisson).abs() / poisson < 0.01, "{nb} vs {poisson}");
        // A vague rate needs more refunds for the same probability.
        let vague = Beta {
            alpha: 0.5,
            beta: 9.5,
        };
        assert!(spike_probability(12, 100.0, vague) > nb * 10.0);
    }

    #[test]
    fn the_prior_shrinks_hard_when_subjects_agree_and_little_when_they_differ() {
        let same: Vec<_> = (0..20).map(|i| (1000.0, 50.0 + (i % 3) as f64)).collect();
        let p = Beta::prior(&same);
        assert!(p.alpha + p.beta > 1000.0, "{p:?}");
        assert!((p.mean() - 0.051).abs() < 0.002);
        let apart: Vec<_> = (0..20)
            .map(|i| (1000.0, if i % 2 == 0 { 20.0 } else { 150.0 }))
            .collect();
        let q = Beta::prior(&apart);
        assert!(q.alpha + q.beta < 100.0, "{q:?}");
        assert_eq!(Beta::prior(&[]).mean(), DEFAULT_RATE);
    }

    #[test]
    fn delays_sum_to_one_and_exposure_follows_the_sales() {
        let d = Delays::learn(&[(10, 50), (20, 50), (400, 3)], 120);
        let total: f64 = (0..=120).map(|a| d.at(a)).sum();
        assert!((total - 1.0).abs() < 1e-9);
        assert!(d.at(10) > d.at(11) * 5.0);
        // Steady sales of 10 a day for a year: the refunds per refunded
        // sale expected in 7 days are 7 × 10.
        let sales = vec![10.0; 365];
        let x = d.exposure(&sales, 7, 1.0);
        assert!((x - 70.0).abs() < 1e-6, "{x}");
        // Today half gone: six and a half days.
        assert!((d.exposure(&sales, 7, 0.5) - 65.0).abs() < 1e-6);
        // No sales in the last 60 days: few refunds can still come.
        let mut stopped = vec![10.0; 365];
        stopped[300..].iter_mut().for_each(|s| *s = 0.0);
        assert!(d.exposure(&stopped, 7, 1.0) < 5.0);
    }

    #[test]
    fn a_profile_expects_the_hours_it_saw() {
        let monday = DateTime::parse_from_rfc3339("2026-11-02T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        // Four weeks, 10 sales every hour from 09:00 to 17:00 UTC, none at night.
        let mut hours = Vec::new();
        for day in 0..28 {
            for h in 9..17 {
                hours.push((monday + Duration::days(day) + Duration::hours(h), 10));
            }
        }
        let p = WeekProfile::learn(&hours, 4.0);
        let night = p.expected(monday + Duration::hours(20), monday + Duration::hours(32));
        let day = p.expected(monday + Duration::hours(9), monday + Duration::hours(17));
        assert!(night < 2.0, "{night}");
        assert!(day > 60.0, "{day}");
        let half = p.expected(
            monday + Duration::minutes(9 * 60 + 30),
            monday + Duration::hours(10),
        );
        assert!(
            (half - p.expected(monday + Duration::hours(9), monday + Duration::hours(10)) / 2.0)
                .abs()
                < 1e-9
        );
        assert!((p.weekly() - 560.0).abs() < 1e-6);
    }
}
