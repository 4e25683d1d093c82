//! Alerts: the configured `[[alerts]]` rules (validated once, with the
//! actions they notify), and the engine that evaluates them. Two ways in:
//! the projector calls [`observe`] on every batch it projects (chargebacks
//! and schema changes, in the projection's own transaction: cheap, exactly
//! once, never on the request path), and [`spawn`] evaluates the
//! statistical rules on a timer ([`refunds`], [`silence`], [`surge`],
//! [`events`]). An alert is a row in `alerts` plus one delivery run per
//! notified action, written in one transaction; the unique index on an
//! open (rule, subject) is what makes two daemons fire it once.

pub mod drift;
pub mod events;
pub mod observe;
pub mod refunds;
pub mod silence;
pub mod stats;
pub mod surge;

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use tokio_util::sync::CancellationToken;

use crate::actions::Actions;
use crate::config::{check_name, invalid, AlertSettings, ConfigError};
use crate::runtime::Live;
use crate::store::{Firing, NewAlert, Store, StoreError};

pub use observe::observe;

/// The default false-alarm probability per subject and evaluation.
pub const DEFAULT_SENSITIVITY: f64 = 0.001;

/// What a rule watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    RefundSpike,
    Chargeback,
    Silence,
    RejectedSurge,
    SchemaDrift,
    DeadLetter,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::RefundSpike => "refund_spike",
            Kind::Chargeback => "chargeback",
            Kind::Silence => "silence",
            Kind::RejectedSurge => "rejected_surge",
            Kind::SchemaDrift => "schema_drift",
            Kind::DeadLetter => "dead_letter",
        }
    }

    fn parse(s: &str) -> Option<Kind> {
        [
            Kind::RefundSpike,
            Kind::Chargeback,
            Kind::Silence,
            Kind::RejectedSurge,
            Kind::SchemaDrift,
            Kind::DeadLetter,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }

    /// The keys of `[[alerts]]` that apply to this kind, beyond the common ones.
    fn keys(self) -> &'static [&'static str] {
        match self {
            Kind::RefundSpike => &[
                "sensitivity",
                "window",
                "by",
                "min_refunds",
                "matured_after",
            ],
            Kind::Chargeback => &["min_amount", "rate_above", "window"],
            Kind::Silence => &["sensitivity", "min_sales"],
            Kind::RejectedSurge => &["sensitivity", "window", "min_count"],
            Kind::SchemaDrift => &["min_baseline"],
            Kind::DeadLetter => &[],
        }
    }
}

/// One configured rule, with every default filled in.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: Arc<str>,
    pub kind: Kind,
    pub notify: Vec<Arc<str>>,
    /// Empty: every account.
    pub accounts: Vec<String>,
    pub sensitivity: f64,
    pub cooldown: Duration,
    pub every: Duration,
    pub window: Duration,
    pub by: Vec<String>,
    pub min_refunds: u64,
    pub matured_after: Duration,
    pub min_amount: Option<Decimal>,
    pub rate_above: Option<f64>,
    pub min_sales: u64,
    pub min_count: u64,
    pub min_baseline: i64,
}

impl Rule {
    /// Evaluated on the timer (the others on commit, by the projector).
    pub fn timed(&self) -> bool {
        match self.kind {
            Kind::Chargeback => self.rate_above.is_some(),
            Kind::SchemaDrift => false,
            Kind::RefundSpike | Kind::Silence | Kind::RejectedSurge | Kind::DeadLetter => true,
        }
    }

    pub fn watches(&self, account: &str) -> bool {
        self.accounts.is_empty() || self.accounts.iter().any(|a| a == account)
    }

    /// An alert of this rule.
    pub fn alert(&self, account: Option<&str>, subject: String) -> NewAlert {
        NewAlert {
            rule: self.name.clone(),
            kind: self.kind.as_str(),
            account: account.map(str::to_owned),
            subject,
            one_shot: false,
            title: String::new(),
            message: String::new(),
            details: serde_json::Value::Null,
        }
    }

    /// What firing `alert` through this rule's actions needs.
    pub fn firing(&self, alert: NewAlert, now: DateTime<Utc>) -> Firing {
        Firing {
            alert,
            notify: self.notify.clone(),
            quiet_since: now - chrono::Duration::from_std(self.cooldown).unwrap_or_default(),
        }
    }
}

/// Every enabled rule, in configuration order.
#[derive(Debug, Default)]
pub struct Rules {
    list: Vec<Rule>,
}

fn duration(value: &str, key: String) -> Result<Duration, ConfigError> {
    humantime::parse_duration(value)
        .map_err(|e| invalid(key, format!("`{value}`: {e}")))
        .and_then(|d| {
            if d.is_zero() {
                Err(invalid(String::new(), "must be positive"))
            } else {
                Ok(d)
            }
        })
}

impl Rules {
    /// Validates and builds the rules; `notify` must name configured actions.
    pub fn build(settings: &[AlertSettings], actions: &Actions) -> Result<Rules, ConfigError> {
        let mut list = Vec::new();
        for (i, s) in settings.iter().enumerate() {
            let key = |k: &str| format!("alerts[{i}].{k}");
            check_name(
                key("name"),
                &s.name,
                settings[..i].iter().map(|o| o.name.as_str()),
            )?;
            let kind = Kind::parse(&s.kind).ok_or_else(|| {
                invalid(
                    key("kind"),
                    format!(
                        "unknown kind `{}` (refund_spike, chargeback, silence, rejected_surge, schema_drift or dead_letter)",
                        s.kind
                    ),
                )
            })?;
            let given: [(&str, bool); 10] = [
                ("sensitivity", s.sensitivity.is_some()),
                ("window", s.window.is_some()),
                ("by", !s.by.is_empty()),
                ("min_refunds", s.min_refunds.is_some()),
                ("matured_after", s.matured_after.is_some()),
                ("min_amount", s.min_amount.is_some()),
                ("rate_above", s.rate_above.is_some()),
                ("min_sales", s.min_sales.is_some()),
                ("min_count", s.min_count.is_some()),
                ("min_baseline", s.min_baseline.is_some()),
            ];
            for (name, present) in given {
                if present && !kind.keys().contains(&name) {
                    return Err(invalid(
                        key(name),
                        format!("does not apply to kind = \"{}\"", s.kind),
                    ));
                }
            }
            if s.notify.is_empty() {
                return Err(invalid(
                    key("notify"),
                    "names no action: list the [[actions]] that deliver this alert",
                ));
            }
            let mut notify = Vec::new();
            for n in &s.notify {
                let action = actions.by_name(n).ok_or_else(|| {
                    invalid(
                        key("notify"),
                        format!("`{n}` is not an enabled [[actions]] name"),
                    )
                })?;
                notify.push(action.name.clone());
            }
            let sensitivity = s.sensitivity.unwrap_or(DEFAULT_SENSITIVITY);
            if !(sensitivity > 0.0 && sensitivity < 1.0) {
                return Err(invalid(key("sensitivity"), "must be between 0 and 1"));
            }
            let fix = |e: ConfigError, k: &str| match e {
                ConfigError::Invalid { message, .. } => invalid(key(k), message),
                other => other,
            };
            let every_default = match kind {
                Kind::RefundSpike => "5m",
                Kind::DeadLetter => "30s",
                _ => "1m",
            };
            let window_default = match kind {
                Kind::RejectedSurge => "10m",
                Kind::Chargeback => "30d",
                _ => "7d",
            };
            let every = duration(s.every.as_deref().unwrap_or(every_default), key("every"))
                .map_err(|e| fix(e, "every"))?;
            let window = duration(s.window.as_deref().unwrap_or(window_default), key("window"))
                .map_err(|e| fix(e, "window"))?;
            let cooldown = humantime::parse_duration(&s.cooldown)
                .map_err(|e| invalid(key("cooldown"), format!("`{}`: {e}", s.cooldown)))?;
            let matured_after = duration(
                s.matured_after.as_deref().unwrap_or("60d"),
                key("matured_after"),
            )
            .map_err(|e| fix(e, "matured_after"))?;
            if kind == Kind::RefundSpike && window.as_secs() < 86_400 {
                return Err(invalid(
                    key("window"),
                    "must be at least a day (refunds are counted per day)",
                ));
            }
            let by = if s.by.is_empty() {
                vec!["product".to_owned()]
            } else {
                s.by.clone()
            };
            if let Some(bad) = by.iter().find(|b| !crate::report::query::is_dimension(b)) {
                return Err(invalid(
                    key("by"),
                    format!("`{bad}` is not a breakdown (product, affiliate, tid or a v8 tracking parameter)"),
                ));
            }
            let min_amount = s
                .min_amount
                .as_deref()
                .map(|m| {
                    Decimal::from_str(m.trim())
                        .map_err(|_| invalid(key("min_amount"), format!("`{m}` is not a decimal")))
                })
                .transpose()?;
            if let Some(r) = s.rate_above {
                if !(r > 0.0 && r < 1.0) {
                    return Err(invalid(
                        key("rate_above"),
                        "is a fraction of sales, between 0 and 1 (0.01 is 1 %)",
                    ));
                }
            }
            if !s.enabled {
                continue;
            }
            list.push(Rule {
                name: Arc::from(s.name.as_str()),
                kind,
                notify,
                accounts: s.accounts.clone(),
                sensitivity,
                cooldown,
                every,
                window,
                by,
                min_refunds: u64::from(s.min_refunds.unwrap_or(3)),
                matured_after,
                min_amount,
                rate_above: s.rate_above,
                min_sales: u64::from(s.min_sales.unwrap_or(20)),
                min_count: u64::from(s.min_count.unwrap_or(5)),
                min_baseline: i64::from(s.min_baseline.unwrap_or(20)),
            });
        }
        Ok(Rules { list })
    }

    pub fn iter(&self) -> impl Iterator<Item = &Rule> {
        self.list.iter()
    }

    pub fn of_kind(&self, kind: Kind) -> impl Iterator<Item = &Rule> {
        self.list.iter().filter(move |r| r.kind == kind)
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

/// What one evaluation says of one subject.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// The condition holds: fire, unless its subject is firing already.
    Fire(NewAlert),
    /// The condition is over: resolve the subject's firing alert, if any.
    Clear { subject: String, message: String },
}

/// How often the engine looks for rules that are due.
const TICK: Duration = Duration::from_secs(5);
/// The first evaluation waits this long after start, so that the projector
/// has counted what was stored while kaching was down (`kaching demo`).
const START_DELAY: Duration = Duration::from_secs(10);

/// Evaluates the timer rules until `token` is cancelled.
pub fn spawn(store: Store, live: Live, token: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut started = false;
        let mut last: HashMap<Arc<str>, tokio::time::Instant> = HashMap::new();
        let mut registered: Vec<(String, String)> = Vec::new();
        let mut first_seen = HashMap::new();
        loop {
            let runtime = live.load_full();
            let rules = runtime.alerts.clone();
            let names: Vec<(String, String)> = rules
                .iter()
                .map(|r| (r.name.to_string(), r.kind.as_str().to_owned()))
                .collect();
            if names != registered {
                let pairs: Vec<(&str, &str)> = names
                    .iter()
                    .map(|(a, b)| (a.as_str(), b.as_str()))
                    .collect();
                match store.register_alert_rules(&pairs, Utc::now()).await {
                    Ok(map) => {
                        first_seen = map;
                        registered = names;
                    }
                    Err(e) => tracing::warn!(error = %e, "alerts: cannot record the rules"),
                }
            }
            if !started {
                started = true;
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = tokio::time::sleep(START_DELAY) => {}
                }
            }
            let accounts: Vec<String> = runtime
                .account_keys()
                .map(|k| k.name.as_str().to_owned())
                .collect();
            for rule in rules.iter().filter(|r| r.timed()) {
                if last
                    .get(&rule.name)
                    .is_some_and(|t| t.elapsed() < rule.every)
                {
                    continue;
                }
                last.insert(rule.name.clone(), tokio::time::Instant::now());
                let now = Utc::now();
                let since = first_seen.get(&*rule.name).copied().unwrap_or(now);
                let verdicts = tokio::select! {
                    _ = token.cancelled() => return,
                    v = evaluate(&store, rule, &accounts, since, now) => v,
                };
                match verdicts {
                    Ok(v) => {
                        if let Err(e) = reconcile(&store, rule, v, now).await {
                            tracing::warn!(rule = %rule.name, error = %e, "alerts: cannot record an evaluation");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(rule = %rule.name, error = %e, "alerts: cannot evaluate")
                    }
                }
            }
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tokio::time::sleep(TICK) => {}
            }
        }
    })
}

/// One evaluation of a timer rule over the accounts it watches; `since`:
/// when the rule was first configured (events before it do not fire).
pub async fn evaluate(
    store: &Store,
    rule: &Rule,
    accounts: &[String],
    since: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Vec<Verdict>, StoreError> {
    let watched: Vec<&String> = accounts.iter().filter(|a| rule.watches(a)).collect();
    let mut out = Vec::new();
    match rule.kind {
        Kind::RefundSpike => {
            for a in watched {
                out.extend(refunds::evaluate(store, rule, a, now).await?);
            }
        }
        Kind::Silence => {
            for a in watched {
                out.extend(silence::evaluate(store, rule, a, now).await?);
            }
        }
        Kind::RejectedSurge => out.extend(surge::evaluate(store, rule, &watched, now).await?),
        Kind::Chargeback => {
            for a in watched {
                out.extend(events::chargeback_rate(store, rule, a, now).await?);
            }
        }
        Kind::DeadLetter => out.extend(events::dead_letters(store, rule, since, now).await?),
        Kind::SchemaDrift => {}
    }
    Ok(out)
}

/// Fires what newly holds and resolves what is over; returns the ids fired.
pub async fn reconcile(
    store: &Store,
    rule: &Rule,
    verdicts: Vec<Verdict>,
    now: DateTime<Utc>,
) -> Result<Vec<i64>, StoreError> {
    let firing = store.firing_alerts(&rule.name).await?;
    let mut fired = Vec::new();
    for v in verdicts {
        match v {
            Verdict::Fire(alert) => {
                if firing.iter().any(|f| f.subject == alert.subject) {
                    continue;
                }
                let title = alert.title.clone();
                if let Some((id, runs)) = store.fire_alert(&rule.firing(alert, now), now).await? {
                    tracing::warn!(rule = %rule.name, alert = id, runs = runs.len(), %title, "alert: fired");
                    fired.push(id);
                }
            }
            Verdict::Clear { subject, message } => {
                for f in firing.iter().filter(|f| f.subject == subject) {
                    if let Some(runs) = store
                        .resolve_alert(f.id, &message, &rule.notify, now)
                        .await?
                    {
                        tracing::info!(rule = %rule.name, alert = f.id, runs = runs.len(), "alert: resolved");
                    }
                }
            }
        }
    }
    Ok(fired)
}

/// A probability in words a seller can read ("1 in 4,200").
pub fn odds(p: f64) -> String {
    if p <= 0.0 {
        return "less than 1 in a billion".into();
    }
    let one_in = 1.0 / p;
    if one_in >= 1e9 {
        "less than 1 in a billion".into()
    } else if one_in >= 1e6 {
        format!("about 1 in {:.0} million", one_in / 1e6)
    } else {
        let n = one_in.round() as u64;
        let s = n.to_string();
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        format!("about 1 in {out}")
    }
}

/// A rule of `kind` with every default, notifying a `log` action (tests).
#[cfg(test)]
pub(crate) fn test_rule(kind: &str) -> Rule {
    let actions = Actions::from_settings(&[crate::config::ActionSettings {
        name: "log".into(),
        kind: "log".into(),
        ..Default::default()
    }])
    .expect("a log action");
    let settings = AlertSettings {
        name: "rule".into(),
        kind: kind.into(),
        notify: vec!["log".into()],
        ..Default::default()
    };
    let rules = Rules::build(&[settings], &actions).expect("a rule of every default");
    let rule = rules.iter().next().expect("one rule").clone();
    rule
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odds_read_as_words() {
        assert_eq!(odds(0.5), "about 1 in 2");
        assert_eq!(odds(1.0 / 4200.0), "about 1 in 4,200");
        assert_eq!(odds(2e-7), "about 1 in 5 million");
        assert_eq!(odds(0.0), "less than 1 in a billion");
    }
}
