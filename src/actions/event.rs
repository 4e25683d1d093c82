//! kaching's own event: what webhooks receive as their body, commands on
//! stdin, and email templates as their context. Documented in the README.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::ins::TransactionType;
use crate::store::StoredNotification;

#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Stable: derived from the dedup key, so every delivery of one
    /// notification (retries, restarts, replays) carries the same id.
    pub id: String,
    pub notification_id: i64,
    pub account: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// TEST, TEST_*, CANCEL-TEST-REBILL… (the Test button, test purchases).
    pub test: bool,
    pub role: String,
    pub receipt: String,
    pub transaction_time: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
    pub vendor: Option<String>,
    pub affiliate: Option<String>,
    pub amounts: Amounts,
    pub currency: Option<String>,
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
    let mut h = Sha256::new();
    for part in [
        n.account.as_str(),
        n.role.as_str(),
        n.receipt.as_str(),
        n.transaction_type.as_str(),
    ] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    h.update(n.transaction_time.to_rfc3339().as_bytes());
    let digest = hex::encode(h.finalize());
    format!("evt_{}", &digest[..32])
}

fn is_legacy_customer_field(k: &str) -> bool {
    k.starts_with("ccust")
}

impl Event {
    pub fn new(n: &StoredNotification, include_customer: bool) -> Event {
        let mut notification: Value =
            serde_json::from_str(&n.payload).unwrap_or_else(|_| Value::String(n.payload.clone()));
        let legacy = n.form == "legacy-form";
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
        Event {
            id: event_id(n),
            notification_id: n.id,
            account: n.account.clone(),
            test: TransactionType::parse(&n.transaction_type).is_ok_and(|t| t.is_test()),
            kind: n.transaction_type.clone(),
            role: n.role.clone(),
            receipt: n.receipt.clone(),
            transaction_time: n.transaction_time,
            received_at: n.received_at,
            vendor: n.vendor.clone(),
            affiliate: n.affiliate.clone(),
            amounts: Amounts {
                account: text(n.total_account_amount),
                order: text(n.total_order_amount),
                tax: text(n.total_tax_amount),
                shipping: text(n.total_shipping_amount),
            },
            currency: n.currency.clone(),
            line_items,
            customer: if include_customer { customer } else { None },
            notification,
        }
    }

    /// The buyer's email: `customer.billing.email` (legacy: `ccustemail`).
    pub fn customer_email(&self) -> Option<&str> {
        let c = self.customer.as_ref()?;
        c.pointer("/billing/email")
            .or_else(|| c.get("ccustemail"))
            .and_then(Value::as_str)
            .filter(|e| !e.is_empty())
    }
}
