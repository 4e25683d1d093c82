//! kaching's own event: what webhooks receive as their body, commands on
//! stdin, and email templates as their context. Documented in the README.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::ins::BodyForm;
use crate::store::{AlertPhase, AlertRow, StoredNotification};

/// What an action receives: about a notification (the documented event),
/// or about another subject.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Event {
    Notification(Box<NotificationEvent>),
    /// About an alert firing or resolving.
    Alert(Box<AlertEvent>),
}

/// The event of an alert (README, "Alerts"): `{"id": "alr_7", "type":
/// "alert", "event": "fired", "alert": {…}}`; its resolution is a second
/// event, `alr_7_resolved`, with `"event": "resolved"`.
#[derive(Debug, Clone, Serialize)]
pub struct AlertEvent {
    /// `alr_` and the alert's id (and `_resolved`): every delivery of one
    /// alert's firing, or of its resolution, carries the same.
    pub id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub event: AlertPhase,
    pub alert: AlertBody,
}

/// The alert itself, as stored; never personal data.
#[derive(Debug, Clone, Serialize)]
pub struct AlertBody {
    pub id: i64,
    pub rule: String,
    pub kind: String,
    /// firing, resolved or fired (a one-shot event).
    pub state: String,
    pub account: Option<String>,
    pub subject: String,
    pub title: String,
    pub message: String,
    pub details: Value,
    pub fired_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub resolved_message: Option<String>,
}

/// The event of a notification, as the README documents it.
#[derive(Debug, Clone, Serialize)]
pub struct NotificationEvent {
    /// Stable: derived from the dedup key, so every delivery of one
    /// notification (retries, restarts, replays) carries the same id.
    pub id: String,
    pub notification_id: i64,
    pub account: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// TEST, TEST_*, CANCEL-TEST-REBILL… (the Test button, test purchases).
    pub test: bool,
    /// Recovered by reconciliation with ClickBank's Orders API: no post
    /// brought it, and it may be hours or days late.
    pub reconciled: bool,
    pub role: String,
    pub receipt: String,
    pub transaction_time: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
    pub vendor: Option<String>,
    pub affiliate: Option<String>,
    pub amounts: Amounts,
    pub currency: Option<String>,
    /// A sale's P(refund within the window) from the model in force when it
    /// arrived; null without a model (and for every other type).
    pub refund_risk: Option<f64>,
    /// `lineItems` of the notification as sent (legacy posts: empty).
    pub line_items: Value,
    /// `customer` as sent (legacy: the `ccust*` fields); absent when the
    /// action has `include_customer = false`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customer: Option<Value>,
    /// The decrypted notification as received (without customer data when
    /// `include_customer = false`).
    pub notification: Value,
}

/// Exact decimals as strings ("37.00"): JSON numbers would invite floats.
#[derive(Debug, Clone, Serialize)]
pub struct Amounts {
    pub account: Option<String>,
    pub order: Option<String>,
    pub tax: Option<String>,
    pub shipping: Option<String>,
}

/// `evt_` and 32 hex digits of the SHA-256 of the dedup key.
pub fn event_id(n: &StoredNotification) -> String {
    let x = &n.notification;
    let mut h = Sha256::new();
    for part in [
        n.account.as_str(),
        x.role.as_str(),
        x.receipt.as_str(),
        x.transaction_type.as_str(),
    ] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    h.update(x.transaction_time.to_rfc3339().as_bytes());
    let digest = hex::encode(h.finalize());
    format!("evt_{}", &digest[..32])
}

fn is_legacy_customer_field(k: &str) -> bool {
    k.starts_with("ccust")
}

impl Event {
    /// The event of `n`; `personal`: its opened customer data (see
    /// [`crate::privacy`]), put back before the customer is included.
    pub fn new(n: &StoredNotification, personal: Option<&str>, include_customer: bool) -> Event {
        Self::build(n, personal, include_customer, true)
    }

    /// The event without the notification's body (`notification` null, no
    /// line items, no customer): what a `log` action reads, so its runs do
    /// not parse the payload.
    pub fn summary(n: &StoredNotification) -> Event {
        Self::build(n, None, false, false)
    }

    fn build(
        n: &StoredNotification,
        personal: Option<&str>,
        include_customer: bool,
        body: bool,
    ) -> Event {
        let x = &n.notification;
        let mut notification: Value = if body {
            serde_json::from_str(&x.payload).unwrap_or_else(|_| Value::String(x.payload.clone()))
        } else {
            Value::Null
        };
        if let Some(p) = personal {
            crate::privacy::restore(&mut notification, p);
        }
        let legacy = n.form == BodyForm::LegacyForm;
        let customer = match notification.as_object_mut() {
            Some(o) if legacy => {
                let fields: serde_json::Map<String, Value> = o
                    .iter()
                    .filter(|(k, _)| is_legacy_customer_field(k))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                if !include_customer {
                    o.retain(|k, _| !is_legacy_customer_field(k));
                }
                Some(Value::Object(fields))
            }
            Some(o) if include_customer => o.get("customer").cloned(),
            Some(o) => o.remove("customer"),
            None => None,
        };
        let line_items = notification
            .get("lineItems")
            .cloned()
            .unwrap_or_else(|| Value::Array(Vec::new()));
        let text = |d: Option<rust_decimal::Decimal>| d.map(|d| d.to_string());
        Event::Notification(Box::new(NotificationEvent {
            id: event_id(n),
            notification_id: n.id,
            account: n.account.to_string(),
            test: x.transaction_type.is_test(),
            reconciled: n.form == BodyForm::OrdersApi,
            kind: x.transaction_type.to_string(),
            role: x.role.to_string(),
            receipt: x.receipt.to_string(),
            transaction_time: x.transaction_time,
            received_at: n.received_at,
            vendor: x.vendor.clone(),
            affiliate: x.affiliate.clone(),
            amounts: Amounts {
                account: text(x.total_account_amount),
                order: text(x.total_order_amount),
                tax: text(x.total_tax_amount),
                shipping: text(x.total_shipping_amount),
            },
            currency: x.currency.clone(),
            refund_risk: n.refund_risk,
            line_items,
            customer: if include_customer { customer } else { None },
            notification,
        }))
    }

    /// The event of an alert's firing or resolution.
    pub fn alert(row: &AlertRow, phase: AlertPhase) -> Event {
        let id = match phase {
            AlertPhase::Fired => format!("alr_{}", row.id),
            AlertPhase::Resolved => format!("alr_{}_resolved", row.id),
        };
        Event::Alert(Box::new(AlertEvent {
            id,
            kind: "alert",
            event: phase,
            alert: AlertBody {
                id: row.id,
                rule: row.rule.clone(),
                kind: row.kind.clone(),
                state: row.state.clone(),
                account: row.account.clone(),
                subject: row.subject.clone(),
                title: row.title.clone(),
                message: row.message.clone(),
                details: serde_json::from_str(&row.details).unwrap_or(Value::Null),
                fired_at: row.fired_at,
                resolved_at: row.resolved_at,
                resolved_message: row.resolved_message.clone(),
            },
        }))
    }

    /// Stable across deliveries of one subject: webhook ids, message ids.
    pub fn id(&self) -> &str {
        match self {
            Event::Notification(n) => &n.id,
            Event::Alert(a) => &a.id,
        }
    }

    /// The transaction type, or `alert`.
    pub fn kind(&self) -> &str {
        match self {
            Event::Notification(n) => &n.kind,
            Event::Alert(a) => a.kind,
        }
    }

    /// The notification's receipt, or empty (for logs).
    pub fn receipt(&self) -> &str {
        self.as_notification().map_or("", |n| n.receipt.as_str())
    }

    pub fn as_notification(&self) -> Option<&NotificationEvent> {
        match self {
            Event::Notification(n) => Some(n),
            Event::Alert(_) => None,
        }
    }

    /// The buyer's email: `customer.billing.email` (legacy: `ccustemail`).
    pub fn customer_email(&self) -> Option<&str> {
        let c = self.as_notification()?.customer.as_ref()?;
        c.pointer("/billing/email")
            .or_else(|| c.get("ccustemail"))
            .and_then(Value::as_str)
            .filter(|e| !e.is_empty())
    }
}
