//! Which parts of a notification are the buyer's personal data, pure: the
//! `customer` object of a JSON notification, the `ccust*` fields of a legacy
//! form. [`split`] cuts them out of the payload text (everything else stays
//! byte for byte as received) and leaves what analytics need: the billing
//! and shipping countries, and the email masked (`z***@e***.com`) for the
//! dashboard. [`restore`] puts them back into a parsed payload.

use std::collections::HashMap;

use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::ins::BodyForm;

/// A payload cut in two.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// The payload without personal data (stored in clear).
    pub clear: String,
    /// The personal data as a JSON object (stored sealed); `None` when the
    /// notification carries none.
    pub personal: Option<String>,
    /// The buyer's email, for the blind index.
    pub email: Option<String>,
}

/// The legacy field that stays clear: the billing country.
const LEGACY_CLEAR: [&str; 1] = ["ccustcc"];

/// `z***@e***.com`: the first character of each side and the last label.
pub fn mask_email(email: &str) -> String {
    let Some((local, domain)) = email.trim().rsplit_once('@') else {
        return "***".to_owned();
    };
    let first = |s: &str| s.chars().next().map(String::from).unwrap_or_default();
    let tld = domain.rsplit_once('.').map(|(_, t)| t).unwrap_or("");
    format!("{}***@{}***.{tld}", first(local), first(domain))
}

fn span(payload: &str, raw: &RawValue) -> (usize, usize) {
    let start = raw.get().as_ptr() as usize - payload.as_ptr() as usize;
    (start, start + raw.get().len())
}

/// Cuts the personal data out of `payload`.
pub fn split(payload: &str, form: BodyForm) -> Split {
    let none = || Split {
        clear: payload.to_owned(),
        personal: None,
        email: None,
    };
    let Ok(members) = serde_json::from_str::<HashMap<&str, &RawValue>>(payload) else {
        return none();
    };
    // (start, end, replacement) of each value replaced, in text order.
    let mut edits: Vec<(usize, usize, String)> = Vec::new();
    let mut personal = Map::new();
    let mut email = None;
    match form {
        BodyForm::LegacyForm => {
            for (k, raw) in &members {
                if !k.starts_with("ccust") || LEGACY_CLEAR.contains(k) {
                    continue;
                }
                let value: Value = serde_json::from_str(raw.get()).unwrap_or(Value::Null);
                let (s, e) = span(payload, raw);
                let replacement = match (*k, value.as_str()) {
                    ("ccustemail", Some(addr)) if !addr.is_empty() => {
                        email = Some(addr.to_owned());
                        Value::String(mask_email(addr)).to_string()
                    }
                    _ => "\"\"".to_owned(),
                };
                edits.push((s, e, replacement));
                personal.insert((*k).to_owned(), value);
            }
        }
        BodyForm::Envelope | BodyForm::PlainJson | BodyForm::OrdersApi => {
            let Some(raw) = members.get("customer") else {
                return none();
            };
            let customer: Value = serde_json::from_str(raw.get()).unwrap_or(Value::Null);
            if customer.is_null() {
                return none();
            }
            email = customer
                .pointer("/billing/email")
                .and_then(Value::as_str)
                .filter(|e| !e.is_empty())
                .map(str::to_owned);
            let mut stub = Map::new();
            for side in ["billing", "shipping"] {
                let mut part = Map::new();
                if let Some(c) = customer.pointer(&format!("/{side}/address/country")) {
                    part.insert("address".into(), serde_json::json!({ "country": c }));
                }
                if side == "billing" {
                    if let Some(e) = &email {
                        part.insert("email".into(), Value::String(mask_email(e)));
                    }
                }
                if !part.is_empty() {
                    stub.insert(side.into(), Value::Object(part));
                }
            }
            let (s, e) = span(payload, raw);
            edits.push((s, e, Value::Object(stub).to_string()));
            personal.insert("customer".into(), customer);
        }
    }
    if personal.is_empty() {
        return none();
    }
    edits.sort_by_key(|e| e.0);
    let mut clear = String::with_capacity(payload.len());
    let mut at = 0;
    for (s, e, replacement) in edits {
        clear.push_str(&payload[at..s]);
        clear.push_str(&replacement);
        at = e;
    }
    clear.push_str(&payload[at..]);
    Split {
        clear,
        personal: Some(Value::Object(personal).to_string()),
        email,
    }
}

/// Puts the personal data (`personal`, as [`split`] made it) back into a
/// parsed payload.
pub fn restore(payload: &mut Value, personal: &str) {
    let (Some(target), Ok(Value::Object(fields))) = (
        payload.as_object_mut(),
        serde_json::from_str::<Value>(personal),
    ) else {
        return;
    };
    for (k, v) in fields {
        target.insert(k, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V6: &str = r#"{"receipt":"A1","customer":{"billing":{"firstName":"Zoë","email":"zoe@example.com","address":{"country":"SE","address1":"Storgatan 1"}},"shipping":{"address":{"country":"NO"}}},"version":6.0}"#;

    #[test]
    fn the_customer_object_is_cut_out_and_the_rest_kept_as_received() {
        let s = split(V6, BodyForm::Envelope);
        assert_eq!(
            s.clear,
            r#"{"receipt":"A1","customer":{"billing":{"address":{"country":"SE"},"email":"z***@e***.com"},"shipping":{"address":{"country":"NO"}}},"version":6.0}"#
        );
        for personal in ["Zoë", "zoe@example.com", "Storgatan"] {
            assert!(!s.clear.contains(personal));
        }
        assert_eq!(s.email.as_deref(), Some("zoe@example.com"));
        let mut v: Value = serde_json::from_str(&s.clear).unwrap();
        restore(&mut v, s.personal.as_deref().unwrap());
        let original: Value = serde_json::from_str(V6).unwrap();
        assert_eq!(v, original);
        // Nothing personal: unchanged.
        let plain = r#"{"receipt":"A1","version":6.0}"#;
        assert_eq!(split(plain, BodyForm::Envelope).personal, None);
        assert_eq!(split(plain, BodyForm::Envelope).clear, plain);
    }

    #[test]
    fn legacy_ccust_fields_are_emptied_but_the_country() {
        let p = r#"{"ccustname":"Zoë Å","ccustemail":"zoe@example.com","ccustcc":"SE","cproditem":"1"}"#;
        let s = split(p, BodyForm::LegacyForm);
        assert_eq!(
            s.clear,
            r#"{"ccustname":"","ccustemail":"z***@e***.com","ccustcc":"SE","cproditem":"1"}"#
        );
        let mut v: Value = serde_json::from_str(&s.clear).unwrap();
        restore(&mut v, s.personal.as_deref().unwrap());
        assert_eq!(v, serde_json::from_str::<Value>(p).unwrap());
    }

    #[test]
    fn masks_keep_one_letter_a_side() {
        assert_eq!(mask_email("jane.doe@mail.example.org"), "j***@m***.org");
        assert_eq!(mask_email("nobody"), "***");
    }
}
