//! Follow-up actions: the configured `[[actions]]` (validated once, at
//! startup and by `check-config`), which notifications each one runs for,
//! how one execution ends, and the retry policy. [`dispatcher`] runs them.

mod command;
pub mod dispatcher;
mod email;
pub mod event;
pub mod http;
mod outbound;
mod template;
mod webhook;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng as _;
use rust_decimal::Decimal;

use crate::config::{check_name, invalid, ActionSettings, ConfigError};
use crate::ins::{BodyForm, Notification, TransactionType};
use crate::privacy::{DataKeys, KeyError};
use crate::store::{ActionRef, AlertPhase, AlertRow, RunOutcome, StoredNotification};

pub use dispatcher::Dispatcher;
pub use event::Event;
pub use outbound::non_public;

/// The longest a retry waits (before jitter), whatever the attempt number.
const MAX_BACKOFF: Duration = Duration::from_secs(6 * 3600);
/// A `Retry-After` longer than this is not believed.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// How one execution ended, as the action itself sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// Worth trying again; `after` when the target said when (`Retry-After`).
    Retry {
        error: String,
        after: Option<Duration>,
    },
    /// Trying again would not help (a 4xx, a missing address).
    Failed {
        error: String,
    },
}

impl Outcome {
    fn retry(error: impl Into<String>) -> Outcome {
        Outcome::Retry {
            error: error.into(),
            after: None,
        }
    }
}

#[derive(Debug)]
enum Kind {
    Webhook(webhook::Webhook),
    Http(Box<http::Http>),
    Email(Box<email::Email>),
    Command(command::Command),
    Log,
}

/// Which notifications an action runs for.
#[derive(Debug, Clone)]
struct Filter {
    types: Vec<TransactionType>,
    roles: Vec<String>,
    accounts: Vec<String>,
    items: Vec<String>,
    min_amount: Option<Decimal>,
    include_tests: bool,
    /// `when.notifications = false`: an action for alerts only.
    notifications: bool,
    /// Only sales scored at least this (none without a score).
    min_refund_risk: Option<f64>,
    /// Orders recovered by reconciliation too.
    reconciled: bool,
}

impl Filter {
    /// Does a notification for `account` pass? Looks at the typed fields
    /// the ins layer parsed, stored or not.
    fn matches(
        &self,
        account: &str,
        form: BodyForm,
        n: &Notification,
        refund_risk: Option<f64>,
    ) -> bool {
        let listed = |list: &[String], v: &str| list.is_empty() || list.iter().any(|x| x == v);
        self.notifications
            && (self.reconciled || form != BodyForm::OrdersApi)
            && self
                .min_refund_risk
                .is_none_or(|min| refund_risk.is_some_and(|r| r >= min))
            && (!n.transaction_type.is_test() || self.include_tests)
            && (self.types.is_empty() || self.types.contains(&n.transaction_type))
            && listed(&self.roles, n.role.as_str())
            && listed(&self.accounts, account)
            && self
                .min_amount
                .is_none_or(|min| n.total_account_amount.is_some_and(|a| a >= min))
            && (self.items.is_empty()
                || item_numbers(&n.payload)
                    .iter()
                    .any(|i| self.items.contains(i)))
    }
}

/// `lineItems[].itemNo` of a v6+ notification, or `cproditem` of a legacy one.
fn item_numbers(payload: &str) -> Vec<String> {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(payload) else {
        return Vec::new();
    };
    let as_text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    match v.get("lineItems").and_then(|l| l.as_array()) {
        Some(items) => items
            .iter()
            .filter_map(|i| i.get("itemNo").and_then(as_text))
            .collect(),
        None => v.get("cproditem").and_then(as_text).into_iter().collect(),
    }
}

/// When to try again and when to give up.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub max_age: Duration,
    pub backoff: Duration,
}

impl RetryPolicy {
    /// The run's next state after attempt number `attempts` ended in `outcome`.
    pub fn decide(
        &self,
        outcome: Outcome,
        attempts: i32,
        created_at: chrono::DateTime<chrono::Utc>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> RunOutcome {
        let (error, after) = match outcome {
            Outcome::Done => return RunOutcome::Done,
            Outcome::Failed { error } => return RunOutcome::Failed { error },
            Outcome::Retry { error, after } => (error, after),
        };
        let age = (now - created_at).to_std().unwrap_or_default();
        if u32::try_from(attempts).unwrap_or(u32::MAX) >= self.max_attempts {
            return RunOutcome::Failed {
                error: format!("gave up after {attempts} attempts: {error}"),
            };
        }
        if age >= self.max_age {
            return RunOutcome::Failed {
                error: format!(
                    "gave up after {}: {error}",
                    humantime::format_duration(self.max_age)
                ),
            };
        }
        let delay = after
            .map(|a| a.clamp(Duration::from_secs(1), MAX_RETRY_AFTER))
            .unwrap_or_else(|| self.backoff_for(attempts));
        RunOutcome::Retry {
            at: now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::zero()),
            error,
        }
    }

    /// Exponential, capped, with ±20 % jitter so a recovered target is not
    /// hit by every run at once.
    fn backoff_for(&self, attempts: i32) -> Duration {
        let exp = u32::try_from(attempts.saturating_sub(1))
            .unwrap_or(0)
            .min(20);
        let base = self.backoff.saturating_mul(1 << exp).min(MAX_BACKOFF);
        base.mul_f64(rand::rng().random_range(0.8..1.2))
    }
}

/// One configured action, ready to run.
#[derive(Debug)]
pub struct Action {
    pub name: Arc<str>,
    pub retry: RetryPolicy,
    pub timeout: Duration,
    pub concurrency: usize,
    /// Personal data in what leaves the machine (webhooks).
    pub include_customer: bool,
    filter: Filter,
    kind: Kind,
    /// What opens the sealed customer data (see [`crate::privacy`]).
    keys: Option<Arc<DataKeys>>,
}

impl Action {
    /// Executes once. The caller bounds it with `timeout` too.
    pub async fn execute(&self, event: &Event) -> Outcome {
        match &self.kind {
            Kind::Webhook(w) => w.send(event).await,
            Kind::Http(h) => h.send(event).await,
            Kind::Email(e) => e.send(event).await,
            Kind::Command(c) => c.run(event, self.timeout).await,
            Kind::Log => {
                match event {
                    Event::Notification(n) => tracing::info!(
                        action = %self.name,
                        event = %n.id,
                        account = %n.account,
                        r#type = %n.kind,
                        receipt = %n.receipt,
                        amount = n.amounts.account.as_deref().unwrap_or(""),
                        currency = n.currency.as_deref().unwrap_or(""),
                        "action: notification"
                    ),
                    Event::Alert(a) => tracing::info!(
                        action = %self.name,
                        event = %a.id,
                        alert = a.alert.id,
                        rule = %a.alert.rule,
                        kind = %a.alert.kind,
                        subject = %a.alert.subject,
                        title = %a.alert.title,
                        "action: alert"
                    ),
                }
                Outcome::Done
            }
        }
    }

    /// The event this action sends for `n`; an error when its customer
    /// data is needed and does not open (a missing previous key).
    pub fn event(&self, n: &StoredNotification) -> Result<Event, KeyError> {
        match self.kind {
            Kind::Log => Ok(Event::summary(n)),
            _ if !self.include_customer => Ok(Event::new(n, None, false)),
            _ => {
                let personal = match (&n.personal, &self.keys) {
                    (Some(sealed), Some(keys)) => {
                        Some(crate::privacy::open_customer(keys, n, sealed)?)
                    }
                    (Some(_), None) => return Err(KeyError::UnknownKey("none configured".into())),
                    (None, _) => None,
                };
                Ok(Event::new(n, personal.as_deref(), true))
            }
        }
    }

    /// The event this action sends for an alert's firing or resolution.
    pub fn alert_event(&self, alert: &AlertRow, phase: AlertPhase) -> Event {
        Event::alert(alert, phase)
    }

    /// Where this action sends the buyer's personal data, if it does
    /// (GDPR Art. 19: the recipients a seller must tell of an erasure).
    pub fn recipient(&self) -> Option<String> {
        match &self.kind {
            Kind::Webhook(w) if self.include_customer => {
                Some(format!("webhook `{}` to {}", self.name, w.origin()))
            }
            Kind::Http(h) if self.include_customer => {
                Some(format!("http `{}` to {}", self.name, h.origin()))
            }
            Kind::Email(e) if self.include_customer => {
                Some(format!("email `{}` to {}", self.name, e.recipient()))
            }
            Kind::Command(_) if self.include_customer => {
                Some(format!("command `{}` (on its standard input)", self.name))
            }
            _ => None,
        }
    }

    /// Does this action run for a stored notification? (`kaching replay`)
    pub fn matches_stored(&self, n: &StoredNotification) -> bool {
        self.filter
            .matches(n.account.as_str(), n.form, &n.notification, n.refund_risk)
    }
}

/// Every enabled action, in configuration order.
#[derive(Debug, Default)]
pub struct Actions {
    list: Vec<Action>,
}

impl Actions {
    /// Validates and builds the actions; errors name the offending key.
    pub fn from_settings(settings: &[ActionSettings]) -> Result<Actions, ConfigError> {
        let mut list = Vec::new();
        for (i, given) in settings.iter().enumerate() {
            let key = |k: &str| format!("actions[{i}].{k}");
            check_name(
                key("name"),
                &given.name,
                settings[..i].iter().map(|o| o.name.as_str()),
            )?;
            let s = &http::presets::apply(given, &key)?;
            let kind = match s.kind.as_str() {
                "webhook" => Kind::Webhook(webhook::Webhook::from_settings(s, &key)?),
                "http" => Kind::Http(Box::new(http::Http::from_settings(s, &key)?)),
                "email" => Kind::Email(Box::new(email::Email::from_settings(s, &key)?)),
                "command" => Kind::Command(command::Command::from_settings(s, &key)?),
                "log" => Kind::Log,
                other => {
                    return Err(invalid(
                        key("kind"),
                        format!("unknown kind `{other}` (webhook, http, email, command or log)"),
                    ))
                }
            };
            check_kind_keys(s, &key)?;
            if s.timeout_ms == 0 {
                return Err(invalid(key("timeout_ms"), "must be positive"));
            }
            if s.concurrency == 0 {
                return Err(invalid(key("concurrency"), "must be at least 1"));
            }
            if s.retry.max_attempts == 0 {
                return Err(invalid(key("retry.max_attempts"), "must be at least 1"));
            }
            let max_age = humantime::parse_duration(&s.retry.max_age).map_err(|e| {
                invalid(key("retry.max_age"), format!("`{}`: {e}", s.retry.max_age))
            })?;
            let min_amount = s
                .when
                .min_amount
                .as_deref()
                .map(|m| {
                    Decimal::from_str(m.trim()).map_err(|_| {
                        invalid(key("when.min_amount"), format!("`{m}` is not a decimal"))
                    })
                })
                .transpose()?;
            let types = s
                .when
                .types
                .iter()
                .map(|t| TransactionType::parse(t).map_err(|e| invalid(key("when.types"), e)))
                .collect::<Result<Vec<_>, _>>()?;
            if s.when
                .min_refund_risk
                .is_some_and(|r| !(0.0..=1.0).contains(&r))
            {
                return Err(invalid(
                    key("when.min_refund_risk"),
                    "is a probability, from 0 to 1",
                ));
            }
            if !s.enabled {
                continue;
            }
            list.push(Action {
                name: Arc::from(s.name.as_str()),
                retry: RetryPolicy {
                    max_attempts: s.retry.max_attempts,
                    max_age,
                    backoff: Duration::from_millis(s.retry.backoff_ms.max(1)),
                },
                timeout: Duration::from_millis(s.timeout_ms),
                concurrency: usize::try_from(s.concurrency).unwrap_or(1),
                include_customer: s.includes_customer(),
                filter: Filter {
                    types,
                    roles: s.when.roles.clone(),
                    accounts: s.when.accounts.clone(),
                    items: s.when.items.clone(),
                    min_amount,
                    include_tests: s.when.include_tests,
                    notifications: s.when.notifications,
                    min_refund_risk: s.when.min_refund_risk,
                    reconciled: s.when.reconciled,
                },
                kind,
                keys: None,
            });
        }
        Ok(Actions { list })
    }

    /// The actions, able to open sealed customer data with `keys`.
    pub fn with_keys(mut self, keys: Option<Arc<DataKeys>>) -> Actions {
        for a in &mut self.list {
            a.keys.clone_from(&keys);
        }
        self
    }

    pub fn iter(&self) -> impl Iterator<Item = &Action> {
        self.list.iter()
    }

    pub fn by_name(&self, name: &str) -> Option<&Action> {
        self.list.iter().find(|a| &*a.name == name)
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The actions a new notification gets runs for.
    ///
    /// `claim_at`: the runs are created claimed by this process from then
    /// (see [`ActionRef::claimed_until`]); `None`: created pending.
    pub fn matching(
        &self,
        account: &str,
        form: BodyForm,
        n: &Notification,
        refund_risk: Option<f64>,
        claim_at: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Vec<ActionRef> {
        self.list
            .iter()
            .filter(|a| a.filter.matches(account, form, n, refund_risk))
            .map(|a| ActionRef {
                name: a.name.clone(),
                claimed_until: claim_at.map(|t| t + dispatcher::creation_lease(a)),
            })
            .collect()
    }
}

/// A key of another kind is a mistake worth naming (a `url` on an email).
fn check_kind_keys(s: &ActionSettings, key: &dyn Fn(&str) -> String) -> Result<(), ConfigError> {
    const HOOK: &[&str] = &["webhook", "http"];
    const HTTP: &[&str] = &["http"];
    let map = |m: &std::collections::BTreeMap<String, String>| !m.is_empty();
    let set: [(&str, bool, &[&str]); 28] = [
        ("url", s.url.is_some(), HOOK),
        ("url_env", s.url_env.is_some(), HOOK),
        ("url_file", s.url_file.is_some(), HOOK),
        ("allow_private_targets", s.allow_private_targets, HOOK),
        ("secret", s.secret.is_some(), &["webhook"]),
        ("headers", map(&s.headers), HOOK),
        ("preset", s.preset.is_some(), HTTP),
        ("method", s.method.is_some(), HTTP),
        ("query", map(&s.query), HTTP),
        ("vars", map(&s.vars), HTTP),
        ("json", s.json.is_some(), HTTP),
        ("form", s.form.is_some(), HTTP),
        ("content_type", s.content_type.is_some(), HTTP),
        ("only_if", s.only_if.is_some(), HTTP),
        ("headers_env", map(&s.headers_env), HTTP),
        ("query_env", map(&s.query_env), HTTP),
        (
            "bearer_env",
            s.bearer_env.is_some() || s.bearer_file.is_some(),
            HTTP,
        ),
        ("basic_user", s.basic_user.is_some(), HTTP),
        (
            "basic_password_env",
            s.basic_password_env.is_some() || s.basic_password_file.is_some(),
            HTTP,
        ),
        ("smtp_url", s.smtp_url.is_some(), &["email"]),
        ("from", s.from.is_some(), &["email"]),
        ("to", s.to.is_some(), &["email"]),
        ("subject", s.subject.is_some(), &["email"]),
        ("body", s.body.is_some(), &["email", "http"]),
        ("html_body", s.html_body.is_some(), &["email"]),
        ("reply_to", s.reply_to.is_some(), &["email"]),
        ("program", s.program.is_some(), &["command"]),
        (
            "working_dir",
            s.working_dir.is_some() || !s.args.is_empty(),
            &["command"],
        ),
    ];
    for (name, present, kinds) in set {
        if present && !kinds.contains(&s.kind.as_str()) {
            return Err(invalid(
                key(name),
                format!("does not apply to kind = \"{}\"", s.kind),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter() -> Filter {
        Filter {
            types: vec![],
            roles: vec![],
            accounts: vec![],
            items: vec![],
            min_amount: None,
            include_tests: false,
            notifications: true,
            min_refund_risk: None,
            reconciled: true,
        }
    }

    /// A notification for account `acme` as the ins layer would parse it.
    fn subject(kind: &str, amount: &str, payload: &str) -> Notification {
        Notification {
            role: crate::ins::Role::parse("VENDOR").unwrap(),
            receipt: crate::ins::Receipt::parse("ABCD1234").unwrap(),
            transaction_type: TransactionType::parse(kind).unwrap(),
            transaction_time: chrono::Utc::now(),
            vendor: None,
            affiliate: None,
            total_account_amount: Decimal::from_str(amount).ok(),
            total_order_amount: None,
            total_tax_amount: None,
            total_shipping_amount: None,
            currency: None,
            version: None,
            attempt_count: 1,
            payload: payload.to_owned(),
        }
    }

    #[test]
    fn filters_match_as_documented() {
        let p = r#"{"lineItems":[{"itemNo":"ebook"},{"itemNo":"7"}]}"#;
        let f = |edit: &dyn Fn(&mut Filter)| {
            let mut f = filter();
            edit(&mut f);
            f
        };
        let cases: Vec<(Filter, Notification, bool)> = vec![
            (filter(), subject("SALE", "1.00", p), true),
            (filter(), subject("TEST", "1.00", p), false),
            (filter(), subject("TEST_SALE", "1.00", p), false),
            (
                f(&|f| f.include_tests = true),
                subject("TEST", "1.00", p),
                true,
            ),
            (
                f(&|f| f.notifications = false),
                subject("SALE", "1.00", p),
                false,
            ),
            (
                f(&|f| f.types = vec![TransactionType::Sale]),
                subject("RFND", "1.00", p),
                false,
            ),
            (
                f(&|f| f.types = vec![TransactionType::Sale, TransactionType::Bill]),
                subject("BILL", "1.00", p),
                true,
            ),
            (
                f(&|f| f.roles = vec!["AFFILIATE".into()]),
                subject("SALE", "1.00", p),
                false,
            ),
            (
                f(&|f| f.accounts = vec!["other".into()]),
                subject("SALE", "1.00", p),
                false,
            ),
            (
                f(&|f| f.items = vec!["7".into()]),
                subject("SALE", "1.00", p),
                true,
            ),
            (
                f(&|f| f.items = vec!["8".into()]),
                subject("SALE", "1.00", p),
                false,
            ),
            (
                f(&|f| f.min_amount = Some(Decimal::new(1000, 2))),
                subject("SALE", "9.99", p),
                false,
            ),
            (
                f(&|f| f.min_amount = Some(Decimal::new(1000, 2))),
                subject("SALE", "10.00", p),
                true,
            ),
            (
                f(&|f| f.min_amount = Some(Decimal::new(1000, 2))),
                subject("SALE", "x", p),
                false,
            ),
            (
                f(&|f| f.items = vec!["1037".into()]),
                subject("SALE", "1", r#"{"cproditem":"1037"}"#),
                true,
            ),
        ];
        for (i, (f, s, want)) in cases.iter().enumerate() {
            assert_eq!(
                f.matches("acme", BodyForm::Envelope, s, None),
                *want,
                "case {i}"
            );
        }
        let sale = subject("SALE", "1.00", p);
        assert!(filter().matches("acme", BodyForm::OrdersApi, &sale, None));
        let on_time = f(&|f| f.reconciled = false);
        assert!(!on_time.matches("acme", BodyForm::OrdersApi, &sale, None));
        assert!(on_time.matches("acme", BodyForm::Envelope, &sale, None));
        let risky = f(&|f| f.min_refund_risk = Some(0.3));
        let sale = subject("SALE", "1.00", p);
        let e = BodyForm::Envelope;
        assert!(risky.matches("acme", e, &sale, Some(0.31)));
        assert!(!risky.matches("acme", e, &sale, Some(0.29)));
        assert!(!risky.matches("acme", e, &sale, None), "no score: no match");
    }

    #[test]
    fn the_retry_policy_backs_off_then_gives_up() {
        let p = RetryPolicy {
            max_attempts: 3,
            max_age: Duration::from_secs(3600),
            backoff: Duration::from_secs(10),
        };
        let t0 = chrono::Utc::now();
        let retry = || Outcome::retry("503");
        match p.decide(retry(), 1, t0, t0) {
            RunOutcome::Retry { at, .. } => {
                let d = (at - t0).num_milliseconds();
                assert!((8_000..=12_000).contains(&d), "{d}");
            }
            other => panic!("{other:?}"),
        }
        match p.decide(retry(), 2, t0, t0) {
            RunOutcome::Retry { at, .. } => assert!((at - t0).num_milliseconds() >= 16_000),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            p.decide(retry(), 3, t0, t0),
            RunOutcome::Failed { .. }
        ));
        let old = t0 - chrono::Duration::hours(2);
        assert!(matches!(
            p.decide(retry(), 1, old, t0),
            RunOutcome::Failed { .. }
        ));
        let after = Outcome::Retry {
            error: "429".into(),
            after: Some(Duration::from_secs(120)),
        };
        match p.decide(after, 1, t0, t0) {
            RunOutcome::Retry { at, .. } => assert_eq!((at - t0).num_seconds(), 120),
            other => panic!("{other:?}"),
        }
        assert_eq!(p.decide(Outcome::Done, 1, t0, t0), RunOutcome::Done);
        assert!(matches!(
            p.decide(
                Outcome::Failed {
                    error: "404".into()
                },
                1,
                t0,
                t0
            ),
            RunOutcome::Failed { .. }
        ));
    }
}
