//! The simple timer rules: `chargeback` with `rate_above` (chargebacks per
//! sale over `window`), and `dead_letter` (a notification's action run
//! that gave up; an alert's own failed delivery is not alerted on, which
//! would loop).

use chrono::{DateTime, Duration, Utc};
use serde_json::json;

use super::{Rule, Verdict};
use crate::store::{Store, StoreError};

/// Fewer sales in the window say nothing about a rate.
const MIN_SALES_FOR_RATE: i64 = 20;

/// Runs that failed longer ago than this, or before the rule existed, do not fire.
const DEAD_LETTER_LOOKBACK: Duration = Duration::days(1);

pub async fn chargeback_rate(
    store: &Store,
    rule: &Rule,
    account: &str,
    now: DateTime<Utc>,
) -> Result<Option<Verdict>, StoreError> {
    let Some(limit) = rule.rate_above else {
        return Ok(None);
    };
    let days = (rule.window.as_secs() / 86_400).max(1) as i64;
    let since = (now.date_naive() - Duration::days(days - 1))
        .format("%Y-%m-%d")
        .to_string();
    let (chargebacks, sales) = store.chargebacks_and_sales(account, &since).await?;
    let subject = format!("{account} chargeback rate");
    if sales < MIN_SALES_FOR_RATE {
        return Ok(None);
    }
    let rate = chargebacks as f64 / sales as f64;
    if rate > limit {
        let mut alert = rule.alert(Some(account), subject);
        alert.title = format!("Chargeback rate {:.2} % for {account}", rate * 100.0);
        alert.message = format!(
            "{chargebacks} chargebacks against {sales} sales in the last {days} days: {:.2} %, above \
             the {:.2} % set. Card networks act on sustained rates around 1 %: look for a traffic \
             source or product that brings them.",
            rate * 100.0,
            limit * 100.0
        );
        alert.details = json!({"chargebacks": chargebacks, "sales": sales, "rate": rate, "rate_above": limit, "window_days": days});
        Ok(Some(Verdict::Fire(alert)))
    } else if rate <= limit * 0.8 {
        Ok(Some(Verdict::Clear {
            subject,
            message: format!(
                "The chargeback rate for {account} is down to {:.2} % ({chargebacks} of {sales} sales in {days} days).",
                rate * 100.0
            ),
        }))
    } else {
        Ok(None)
    }
}

pub async fn dead_letters(
    store: &Store,
    rule: &Rule,
    since: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Vec<Verdict>, StoreError> {
    let since = since.max(now - DEAD_LETTER_LOOKBACK);
    let mut out = Vec::new();
    for run in store.failed_runs_since(since).await? {
        if let Some(a) = run.account.as_deref() {
            if !rule.watches(a) {
                continue;
            }
        }
        let finished = run.finished_at.unwrap_or(now);
        let mut alert = rule.alert(
            run.account.as_deref(),
            format!("run {} failed {}", run.id, finished.to_rfc3339()),
        );
        alert.one_shot = true;
        let what = match (&run.transaction_type, &run.receipt) {
            (Some(t), Some(r)) => format!("{t} {r}"),
            _ => format!("notification {}", run.notification_id.unwrap_or_default()),
        };
        alert.title = format!("Action {} gave up on {what}", run.action);
        alert.message = format!(
            "The {} action failed for good on {what} after {} attempts (a dead letter): {}. \
             Fix the target, then retry the run on the Actions page or with `kaching actions retry`.",
            run.action,
            run.attempts,
            run.last_error.as_deref().unwrap_or("no error recorded"),
        );
        alert.details = json!({
            "run": run.id,
            "action": run.action,
            "notification_id": run.notification_id,
            "attempts": run.attempts,
            "error": run.last_error,
        });
        out.push(Verdict::Fire(alert));
    }
    Ok(out)
}
