//! `rejected_surge`: many posts that look like ClickBank's own (a
//! well-formed envelope, HMAC post or legacy form that no configured key
//! opens) are rejected in a window where there usually are none: the
//! secret key was probably changed in ClickBank but not in kaching. Noise of
//! other shapes (not base64, a wrong IV length, not an INS body at all) is
//! not counted. The usual rate is the same account's over the last week
//! (plus one pseudo-post, so a week with none still allows some); it fires
//! when at least `min_count` such posts arrived in `window` and the exact
//! Poisson probability of that many is below `sensitivity`.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use serde_json::json;

use super::stats::poisson_at_least;
use super::{odds, Rule, Verdict};
use crate::ins::Reject;
use crate::store::{RejectedSeen, Store, StoreError};

/// The baseline's span.
pub const BASELINE_DAYS: i64 = 7;

/// Does a rejection reason say "authentic in shape, wrong key"?
pub fn key_shaped(reason: &str) -> bool {
    [
        Reject::NoKeyDecrypts,
        Reject::BadUtf8,
        Reject::BadJson,
        Reject::BadSignature,
        Reject::BadCverify,
    ]
    .iter()
    .any(|r| r.to_string() == reason)
}

/// (account hint or "", in the window, in the baseline before it).
pub fn count(
    rows: &[RejectedSeen],
    window: Duration,
    now: DateTime<Utc>,
) -> BTreeMap<String, (u64, u64)> {
    let mut out: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for r in rows.iter().filter(|r| key_shaped(&r.reason)) {
        let e = out
            .entry(r.account_hint.clone().unwrap_or_default())
            .or_default();
        if r.received_at >= now - window {
            e.0 += 1;
        } else {
            e.1 += 1;
        }
    }
    out
}

pub fn verdicts(
    rule: &Rule,
    counts: &BTreeMap<String, (u64, u64)>,
    watched: &[&String],
) -> Vec<Verdict> {
    let window = Duration::from_std(rule.window).unwrap_or(Duration::minutes(10));
    let baseline = Duration::days(BASELINE_DAYS) - window;
    let per_window = window.num_seconds() as f64 / baseline.num_seconds().max(1) as f64;
    let mut out = Vec::new();
    for (hint, &(now_count, before)) in counts {
        if !hint.is_empty() && !watched.contains(&hint) {
            continue;
        }
        let who = if hint.is_empty() {
            "posts to the shared INS path".to_owned()
        } else {
            format!("account {hint}")
        };
        let subject = format!(
            "rejected {}",
            if hint.is_empty() {
                "(shared path)"
            } else {
                hint
            }
        );
        let usual = (before as f64 + 1.0) * per_window;
        let p = poisson_at_least(now_count, usual);
        if now_count >= rule.min_count && p < rule.sensitivity {
            let mut alert = rule.alert((!hint.is_empty()).then_some(hint.as_str()), subject);
            let minutes = window.num_minutes();
            alert.title = format!("ClickBank's posts are being rejected ({who})");
            alert.message = format!(
                "{now_count} posts shaped like ClickBank's were rejected for {who} in the last {minutes} minutes, \
                 where about {usual:.2} are usual ({before} in the week before); by chance alone: {}. \
                 The secret key may have been changed in ClickBank but not in kaching: compare the key in \
                 ClickBank (Vendor Settings → My Site → Advanced Tools) with the account's secret_key, \
                 then run `kaching rejected reprocess` to store the posts that were turned away.",
                odds(p)
            );
            alert.details = json!({
                "account_hint": hint,
                "in_window": now_count,
                "window_minutes": minutes,
                "baseline": before,
                "expected": usual,
                "probability": p,
                "sensitivity": rule.sensitivity,
            });
            out.push(Verdict::Fire(alert));
        } else if p >= (rule.sensitivity * 10.0).min(0.5) || now_count < rule.min_count {
            out.push(Verdict::Clear {
                subject,
                message: format!("Posts for {who} are no longer being rejected in numbers."),
            });
        }
    }
    out
}

pub async fn evaluate(
    store: &Store,
    rule: &Rule,
    watched: &[&String],
    now: DateTime<Utc>,
) -> Result<Vec<Verdict>, StoreError> {
    let rows = store
        .rejected_since(now - Duration::days(BASELINE_DAYS))
        .await?;
    let window = Duration::from_std(rule.window).unwrap_or(Duration::minutes(10));
    let mut counts = count(&rows, window, now);
    // Subjects with nothing at all still resolve.
    for f in store.firing_alerts(&rule.name).await? {
        if let Some(hint) = f.subject.strip_prefix("rejected ") {
            let hint = if hint == "(shared path)" { "" } else { hint };
            counts.entry(hint.to_owned()).or_default();
        }
    }
    Ok(verdicts(rule, &counts, watched))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule() -> Rule {
        crate::alerts::test_rule("rejected_surge")
    }

    /// A week of forgers' noise at up to a few key-shaped posts an hour,
    /// evaluated every 10 minutes of its last day; then the posts a changed
    /// key makes (ClickBank's retries of a few sales) on top.
    #[test]
    fn steady_noise_rarely_fires_and_a_changed_key_does() {
        use rand::{Rng, SeedableRng};
        let rule = rule();
        let now0 = DateTime::parse_from_rfc3339("2026-11-20T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let watched = ["acme".to_owned()];
        let watched: Vec<&String> = watched.iter().collect();
        let (mut evaluations, mut alarms, mut caught) = (0u64, 0u64, 0u64);
        let seeds = 100;
        for seed in 0..seeds {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let per_hour: f64 = rng.random_range(0.0..3.0);
            let n = (per_hour * 24.0 * 8.0) as usize;
            let mut rows: Vec<RejectedSeen> = (0..n)
                .map(|_| RejectedSeen {
                    account_hint: Some("acme".into()),
                    received_at: now0 - Duration::seconds(rng.random_range(0..8 * 86_400)),
                    reason: Reject::NoKeyDecrypts.to_string(),
                })
                .collect();
            for step in 0..144 {
                let now = now0 - Duration::minutes(10 * step);
                let seen: Vec<RejectedSeen> = rows
                    .iter()
                    .filter(|r| r.received_at < now && r.received_at >= now - Duration::days(7))
                    .cloned()
                    .collect();
                let v = verdicts(&rule, &count(&seen, Duration::minutes(10), now), &watched);
                evaluations += 1;
                alarms += v.iter().filter(|v| matches!(v, Verdict::Fire(_))).count() as u64;
            }
            // The key changed: ClickBank's next posts, 8 in 10 minutes.
            rows.extend((0..8).map(|i| RejectedSeen {
                account_hint: Some("acme".into()),
                received_at: now0 + Duration::seconds(60 * i),
                reason: Reject::NoKeyDecrypts.to_string(),
            }));
            let now = now0 + Duration::minutes(9);
            let v = verdicts(&rule, &count(&rows, Duration::minutes(10), now), &watched);
            caught += u64::from(v.iter().any(|v| matches!(v, Verdict::Fire(_))));
        }
        let promised = evaluations as f64 * rule.sensitivity;
        eprintln!(
            "rejected_surge: {alarms} false alarms in {evaluations} evaluations of noise up to 3 an hour \
             (the sensitivity promises at most {promised:.1}); 8 posts under a changed key caught in {caught} of {seeds}"
        );
        assert!((alarms as f64) <= promised * 2.0 + 3.0, "{alarms}");
        assert!(caught * 10 >= seeds * 8, "caught {caught} of {seeds}");
    }

    #[test]
    fn only_key_shaped_rejections_count() {
        assert!(key_shaped(&Reject::NoKeyDecrypts.to_string()));
        assert!(key_shaped(&Reject::BadSignature.to_string()));
        assert!(!key_shaped(&Reject::BadBase64.to_string()));
        assert!(!key_shaped(&Reject::BadIvLength.to_string()));
        assert!(!key_shaped("no such account"));
    }
}
