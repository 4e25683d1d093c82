//! `silence`: no SALE for an account for longer than its own recent
//! hour-of-week profile makes plausible. The last four weeks' sales per
//! hour of the week ([`WeekProfile`]) give the sales expected since the
//! last one; with none arriving, P(0) is about e^−expected (Poisson, with
//! the expectation's own uncertainty: [`no_sale_probability`]). It fires
//! when that is below `sensitivity`, saying whether TEST posts (ClickBank's
//! Test button) or any other notification still arrive, which tells a
//! broken pay link from an INS URL or key ClickBank can no longer use. It
//! resolves with the next sale.

use chrono::{DateTime, Duration, NaiveDateTime, Utc};
use serde_json::json;

use super::stats::WeekProfile;
use super::{odds, Rule, Verdict};
use crate::store::{HourRow, Store, StoreError};

/// The profile's span.
pub const PROFILE_WEEKS: i64 = 4;

/// What the hours say.
#[derive(Debug, Clone, PartialEq)]
pub struct Assessment {
    pub sales: u64,
    pub last_sale: DateTime<Utc>,
    pub expected: f64,
    /// P(no sale since the last one) under the profile.
    pub probability: f64,
    pub last_test: Option<DateTime<Utc>>,
    /// The latest hour with any notification that is not a test.
    pub last_other_hour: Option<DateTime<Utc>>,
}

fn hour_start(hour: &str) -> Option<DateTime<Utc>> {
    NaiveDateTime::parse_from_str(&format!("{hour}:00:00"), "%Y-%m-%dT%H:%M:%S")
        .ok()
        .map(|t| t.and_utc())
}

/// P(no sale) when `expected` sales were expected, as learned from `weeks`
/// weeks: the expectation is itself uncertain (it is `expected × weeks`
/// sales seen over `weeks`), so this is the gamma-Poisson predictive,
/// (w / (w + 1))^(expected × w), a little above e^−expected: measured on
/// generated shops, the plain Poisson fired more often than `sensitivity`
/// promised.
pub fn no_sale_probability(expected: f64, weeks: f64) -> f64 {
    (expected * weeks * (weeks / (weeks + 1.0)).ln()).exp()
}

/// From the account's hours of the last weeks and its last sale ever.
pub fn assess(
    hours: &[HourRow],
    last_sale: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Option<Assessment> {
    let last_sale = last_sale?;
    let first = hours.iter().filter_map(|h| hour_start(&h.hour)).min()?;
    let weeks = ((now - first).num_hours() as f64 / 168.0).clamp(1.0, PROFILE_WEEKS as f64);
    let sales: Vec<(DateTime<Utc>, u64)> = hours
        .iter()
        .filter_map(|h| Some((hour_start(&h.hour)?, h.sales.max(0) as u64)))
        .collect();
    let profile = WeekProfile::learn(&sales, weeks);
    let expected = profile.expected(last_sale, now);
    Some(Assessment {
        sales: sales.iter().map(|s| s.1).sum(),
        last_sale,
        expected,
        probability: no_sale_probability(expected, weeks),
        last_test: hours.iter().filter_map(|h| h.last_test_at).max(),
        last_other_hour: hours
            .iter()
            .filter(|h| h.sales + h.others > 0)
            .filter_map(|h| hour_start(&h.hour))
            .max(),
    })
}

pub fn verdict(rule: &Rule, account: &str, a: &Assessment, now: DateTime<Utc>) -> Option<Verdict> {
    let subject = format!("{account} sales");
    if a.sales < rule.min_sales {
        return None;
    }
    if a.probability >= rule.sensitivity {
        return Some(Verdict::Clear {
            subject,
            message: format!(
                "Sales are arriving again for {account}: the last at {}.",
                a.last_sale.format("%Y-%m-%d %H:%M UTC")
            ),
        });
    }
    let gap = humantime::format_duration(std::time::Duration::from_secs(
        (now - a.last_sale).num_minutes().max(0) as u64 * 60,
    ));
    let hint = match a.last_test {
        Some(t) if t > a.last_sale => format!(
            "TEST notifications still arrive (the last at {}), so ClickBank reaches kaching and the \
             key works: the sales themselves stopped. Check the products' pay links and order forms.",
            t.format("%Y-%m-%d %H:%M UTC")
        ),
        _ if a.last_other_hour.is_some_and(|h| h > a.last_sale) => {
            "Other notifications still arrive, so ClickBank reaches kaching: the sales themselves stopped. \
             Check the products' pay links and order forms."
                .to_owned()
        }
        _ => "Nothing else has arrived since either: check that ClickBank can still reach kaching \
              (the INS URL in ClickBank, the certificate, the firewall) and that the secret key \
              matches (rejected posts show in `kaching rejected`); send a Test from ClickBank to see."
            .to_owned(),
    };
    let mut alert = super::Rule::alert(rule, Some(account), subject);
    alert.title = format!("No sale for {account} in {gap}");
    alert.message = format!(
        "The last SALE for {account} was at {}, {gap} ago. Its last {PROFILE_WEEKS} weeks, hour by \
         hour, predict about {:.1} sales in that time; none by chance alone: {}. {hint}",
        a.last_sale.format("%Y-%m-%d %H:%M UTC"),
        a.expected,
        odds(a.probability),
    );
    alert.details = json!({
        "last_sale": a.last_sale,
        "expected": (a.expected * 100.0).round() / 100.0,
        "probability": a.probability,
        "sensitivity": rule.sensitivity,
        "profile_sales": a.sales,
        "last_test": a.last_test,
    });
    Some(Verdict::Fire(alert))
}

pub async fn evaluate(
    store: &Store,
    rule: &Rule,
    account: &str,
    now: DateTime<Utc>,
) -> Result<Option<Verdict>, StoreError> {
    let since = (now - Duration::weeks(PROFILE_WEEKS))
        .format("%Y-%m-%dT%H")
        .to_string();
    let hours = store.hours(account, &since).await?;
    let last_sale = store.last_sale(account).await?;
    Ok(assess(&hours, last_sale, now).and_then(|a| verdict(rule, account, &a, now)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule() -> Rule {
        crate::alerts::test_rule("silence")
    }

    /// Four weeks of hours ending at `end`: `per_hour(hour of day)` sales each.
    fn weeks(end: DateTime<Utc>, per_hour: &dyn Fn(u32) -> i64) -> Vec<HourRow> {
        (0..(PROFILE_WEEKS * 168))
            .map(|i| {
                let at = end - Duration::hours(PROFILE_WEEKS * 168 - i);
                let h = chrono::Timelike::hour(&at);
                HourRow {
                    account: "acme".into(),
                    hour: at.format("%Y-%m-%dT%H").to_string(),
                    sales: per_hour(h),
                    tests: 0,
                    others: 0,
                    last_sale_at: None,
                    last_test_at: None,
                }
            })
            .collect()
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn a_busy_account_silent_for_twelve_hours_fires_and_its_next_sale_resolves() {
        let rule = rule();
        let now = at("2026-11-20T20:00:00Z");
        let busy = weeks(now - Duration::hours(12), &|h| {
            if (8..22).contains(&h) {
                6
            } else {
                1
            }
        });
        let a = assess(&busy, Some(now - Duration::hours(12)), now).unwrap();
        assert!(a.expected > 40.0, "{a:?}");
        assert!(matches!(
            verdict(&rule, "acme", &a, now),
            Some(Verdict::Fire(_))
        ));
        // Two hours of silence in its busy hours is already improbable here.
        let b = assess(&busy, Some(now - Duration::hours(2)), now).unwrap();
        assert!(matches!(
            verdict(&rule, "acme", &b, now),
            Some(Verdict::Fire(_))
        ));
        // Thirty minutes is not.
        let c = assess(&busy, Some(now - Duration::minutes(30)), now).unwrap();
        assert!(matches!(
            verdict(&rule, "acme", &c, now),
            Some(Verdict::Clear { .. })
        ));
    }

    #[test]
    fn a_quiet_accounts_normal_night_does_not_fire() {
        let rule = rule();
        // About 12 sales a day, all between 09:00 and 17:00 UTC.
        let quiet = |h: u32| {
            if (9..17).contains(&h) && h % 2 == 0 {
                3
            } else {
                0
            }
        };
        let now = at("2026-11-20T08:30:00Z");
        let hours = weeks(now, &quiet);
        let a = assess(&hours, Some(at("2026-11-19T16:40:00Z")), now).unwrap();
        assert!(
            matches!(verdict(&rule, "acme", &a, now), Some(Verdict::Clear { .. })),
            "{a:?}"
        );
        // A whole working day without a sale is not normal for it.
        let evening = at("2026-11-20T18:00:00Z");
        let b = assess(&hours, Some(at("2026-11-19T16:40:00Z")), evening).unwrap();
        assert!(
            matches!(verdict(&rule, "acme", &b, evening), Some(Verdict::Fire(_))),
            "{b:?}"
        );
    }

    /// Seeded shops selling by a day-and-night profile: over their fifth
    /// week, evaluated every hour against the four weeks before, how often
    /// does a normal lull fire, against what the sensitivity promises?
    #[test]
    fn normal_lulls_rarely_fire_and_a_planted_gap_does() {
        use rand::{Rng, SeedableRng};
        let rule = rule();
        let start = at("2026-10-05T00:00:00Z"); // a Monday
        let (mut evaluations, mut alarms, mut caught, mut planted) = (0u64, 0u64, 0u64, 0u64);
        for seed in 0..50u64 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let per_hour: f64 = rng.random_range(0.2..6.0);
            let shape = |h: u32| if (8..23).contains(&h) { 1.4 } else { 0.25 };
            // Sale times over five weeks; with a planted 12-hour gap in seeds 0..30.
            let gap = (seed < 25).then(|| start + Duration::days(31) + Duration::hours(8));
            let mut sales: Vec<DateTime<Utc>> = Vec::new();
            for hour in 0..(5 * 168) {
                let t0 = start + Duration::hours(hour);
                let mean: f64 = per_hour * shape(chrono::Timelike::hour(&t0));
                let mut n = 0;
                let mut p = rng.random::<f64>();
                while p > (-mean).exp() {
                    n += 1;
                    p *= rng.random::<f64>();
                }
                for _ in 0..n {
                    let t = t0 + Duration::seconds(rng.random_range(0..3600));
                    if gap.is_some_and(|g| t >= g && t < g + Duration::hours(12)) {
                        continue;
                    }
                    sales.push(t);
                }
            }
            sales.sort();
            let mut all: Vec<HourRow> = Vec::new();
            for t in &sales {
                let hour = t.format("%Y-%m-%dT%H").to_string();
                match all.last_mut() {
                    Some(r) if r.hour == hour => r.sales += 1,
                    _ => all.push(HourRow {
                        account: "acme".into(),
                        hour,
                        sales: 1,
                        tests: 0,
                        others: 0,
                        last_sale_at: None,
                        last_test_at: None,
                    }),
                }
            }
            // The profile's four weeks before `until` (as the store's query reads them).
            let hours_of = |until: DateTime<Utc>| -> &[HourRow] {
                let from = (until - Duration::weeks(PROFILE_WEEKS))
                    .format("%Y-%m-%dT%H")
                    .to_string();
                let to = until.format("%Y-%m-%dT%H").to_string();
                let a = all.partition_point(|r| r.hour < from);
                let b = all.partition_point(|r| r.hour <= to);
                &all[a..b]
            };
            let mut fired_in_gap = false;
            for hour in ((4 * 168)..(5 * 168)).step_by(2) {
                let now = start + Duration::hours(hour) + Duration::minutes(30);
                let last = sales[..sales.partition_point(|t| *t < now)].last().copied();
                let Some(a) = assess(hours_of(now), last, now) else {
                    continue;
                };
                let fires = matches!(verdict(&rule, "acme", &a, now), Some(Verdict::Fire(_)));
                let in_gap = gap.is_some_and(|g| now >= g && now < g + Duration::hours(12));
                if in_gap {
                    fired_in_gap |= fires;
                } else {
                    evaluations += 1;
                    alarms += u64::from(fires);
                }
            }
            if gap.is_some() {
                planted += 1;
                caught += u64::from(fired_in_gap);
            }
        }
        let promised = evaluations as f64 * rule.sensitivity;
        eprintln!(
            "silence: {alarms} false alarms in {evaluations} evaluations, one every 2 hours of a fifth week (the sensitivity promises at most {promised:.1}); \
             a 12-hour gap caught in {caught} of {planted} shops"
        );
        assert!(
            (alarms as f64) <= promised * 2.0 + 3.0,
            "{alarms} false alarms"
        );
        assert!(caught * 10 >= planted * 9, "caught {caught} of {planted}");
    }

    #[test]
    fn an_account_with_too_few_sales_is_not_watched() {
        let rule = rule();
        let now = at("2026-11-20T08:30:00Z");
        let hours = weeks(now, &|_| 0);
        assert!(assess(&hours, None, now).is_none());
        let one = weeks(now, &|h| i64::from(h == 3));
        let a = assess(&one[..24], Some(now - Duration::days(20)), now).unwrap();
        assert_eq!(verdict(&rule, "acme", &a, now), None);
    }
}
