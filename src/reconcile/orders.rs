//! The Orders API's answers, read as ClickBank really sends them, and an
//! order turned into the plaintext of the INS notification it stands for.
//!
//! ClickBank's JSON is generated from its XML schema: a list with one
//! element comes as an object rather than an array (`orderData`,
//! `lineItemData`, as ClickBank's own changelog and other clients report),
//! an absent value as `{"@nil": "true"}`, and scalars mostly as strings.
//! `count` answers a bare number.

use std::str::FromStr;

use rust_decimal::Decimal;
use serde_json::{json, Map, Value};

/// A count: `42`, `"42"` or `{"count": 42}`.
pub fn count(body: &str) -> Result<u64, String> {
    let text = body.trim();
    if let Ok(n) = text.parse::<u64>() {
        return Ok(n);
    }
    let v: Value = serde_json::from_str(text).map_err(|_| format!("count: `{}`", cut(text)))?;
    let n = match &v {
        Value::Object(o) => o.values().next().cloned().unwrap_or(Value::Null),
        other => other.clone(),
    };
    scalar(&n)
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| format!("count: `{}`", cut(text)))
}

/// The orders of one `list` page: `{"orderData": [...]}`, `{"orderData": {...}}`
/// for one, and nothing (an empty body, `null`, `{}`) for none.
pub fn orders(body: &str) -> Result<Vec<Value>, String> {
    let text = body.trim();
    if text.is_empty() || text == "null" {
        return Ok(Vec::new());
    }
    let v: Value = serde_json::from_str(text).map_err(|e| format!("list: {e}"))?;
    match v {
        Value::Object(mut o) => Ok(o.remove("orderData").map(list).unwrap_or_default()),
        Value::Array(items) => Ok(items),
        other => Err(format!("list: a {}", kind(&other))),
    }
}

/// A list that may come as one object, or `@nil`.
fn list(v: Value) -> Vec<Value> {
    match v {
        Value::Array(items) => items,
        Value::Null => Vec::new(),
        o @ Value::Object(_) if is_nil(&o) => Vec::new(),
        one => vec![one],
    }
}

fn is_nil(v: &Value) -> bool {
    v.get("@nil").and_then(scalar).as_deref() == Some("true")
}

/// A string, number or boolean as text; `None` for empty, null and `@nil`.
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn cut(s: &str) -> &str {
    let mut end = s.len().min(60);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The v6-shaped plaintext of the INS notification `order` stands for:
/// ClickBank's field names (`paytmentMethod` read as it is spelled),
/// amounts as exact decimal strings, `lineItemData` as `lineItems`,
/// `totalAccountAmount` the sum of the line items' `accountAmount`, the
/// customer's fields under `customer.billing` (sealed like any
/// notification's), and `"source": "orders-api"`.
pub fn plaintext(order: &Value) -> Result<String, String> {
    let field = |name: &str| order.get(name).and_then(scalar);
    let required = |name: &str| field(name).ok_or_else(|| format!("an order without {name}"));
    let mut n = Map::new();
    n.insert(
        "transactionTime".into(),
        required("transactionTime")?.into(),
    );
    n.insert("receipt".into(), required("receipt")?.into());
    n.insert(
        "transactionType".into(),
        required("transactionType")?.into(),
    );
    for (to, from) in [
        ("role", "role"),
        ("vendor", "vendor"),
        ("affiliate", "affiliate"),
        ("currency", "currency"),
        ("totalOrderAmount", "totalOrderAmount"),
        ("totalTaxAmount", "totalTaxAmount"),
        ("totalShippingAmount", "totalShippingAmount"),
    ] {
        if let Some(v) = field(from) {
            n.insert(to.into(), v.into());
        }
    }
    if let Some(p) = field("paytmentMethod").or_else(|| field("paymentMethod")) {
        n.insert("paymentMethod".into(), p.into());
    }
    let items: Vec<Value> = order
        .get("lineItemData")
        .cloned()
        .map(list)
        .unwrap_or_default()
        .iter()
        .map(line_item)
        .collect();
    let total: Option<Decimal> = items
        .iter()
        .filter_map(|i| i.get("accountAmount").and_then(Value::as_str))
        .map(Decimal::from_str)
        .collect::<Result<Vec<_>, _>>()
        .ok()
        .filter(|v| !v.is_empty())
        .map(|v| v.into_iter().sum());
    if let Some(t) = total {
        n.insert("totalAccountAmount".into(), t.to_string().into());
    }
    n.insert("lineItems".into(), Value::Array(items));
    if let Some(tid) = field("trackingId") {
        n.insert("trackingCodes".into(), json!([tid]));
    }
    let mut billing = Map::new();
    for name in ["firstName", "lastName", "fullName", "email"] {
        if let Some(v) = field(name) {
            billing.insert(name.into(), v.into());
        }
    }
    let mut address = Map::new();
    for name in ["country", "state", "postalCode"] {
        if let Some(v) = field(name) {
            address.insert(name.into(), v.into());
        }
    }
    if !address.is_empty() {
        billing.insert("address".into(), Value::Object(address));
    }
    if !billing.is_empty() {
        n.insert("customer".into(), json!({ "billing": billing }));
    }
    let variables: Map<String, Value> = order
        .pointer("/vendorVariables/item")
        .cloned()
        .map(list)
        .unwrap_or_default()
        .iter()
        .filter_map(|v| {
            Some((
                v.get("name").and_then(scalar)?,
                v.get("value").and_then(scalar)?.into(),
            ))
        })
        .collect();
    if !variables.is_empty() {
        n.insert("vendorVariables".into(), Value::Object(variables));
    }
    n.insert("source".into(), "orders-api".into());
    Ok(Value::Object(n).to_string())
}

/// A `lineItemData` element as an INS line item.
fn line_item(item: &Value) -> Value {
    let mut out = Map::new();
    for name in [
        "itemNo",
        "productTitle",
        "accountAmount",
        "customerAmount",
        "quantity",
        "lineItemType",
        "recurring",
        "shippable",
    ] {
        if let Some(v) = item.get(name).and_then(scalar) {
            let v = match (name, v.as_str()) {
                ("recurring" | "shippable", "true") => Value::Bool(true),
                ("recurring" | "shippable", "false") => Value::Bool(false),
                ("quantity", q) => q
                    .parse::<u64>()
                    .map_or(Value::String(v.clone()), Value::from),
                _ => Value::String(v),
            };
            out.insert(name.into(), v);
        }
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_in_every_shape_seen() {
        assert_eq!(count("42"), Ok(42));
        assert_eq!(count(" 7\n"), Ok(7));
        assert_eq!(count("\"3\""), Ok(3));
        assert_eq!(count("{\"count\":5}"), Ok(5));
        assert!(count("<xml/>").is_err());
    }

    #[test]
    fn lists_of_one_come_as_objects() {
        let one = r#"{"orderData":{"receipt":"AAAA1111","transactionType":"SALE",
            "transactionTime":"2026-11-20T10:00:00-08:00","lineItemData":{"itemNo":"1","accountAmount":"37.00"}}}"#;
        let got = orders(one).unwrap();
        assert_eq!(got.len(), 1);
        let text = plaintext(&got[0]).unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["lineItems"][0]["itemNo"], "1");
        assert_eq!(v["totalAccountAmount"], "37.00");
        for empty in [
            "",
            "null",
            "{}",
            "{\"orderData\":null}",
            "{\"orderData\":{\"@nil\":\"true\"}}",
        ] {
            assert_eq!(orders(empty).unwrap().len(), 0, "{empty:?}");
        }
    }

    #[test]
    fn an_order_becomes_the_notification_it_stands_for() {
        let order = json!({
            "transactionTime": "2026-11-20T10:00:00-08:00",
            "receipt": "BBBB2222",
            "trackingId": "spring",
            "paytmentMethod": "VISA",
            "transactionType": "SALE",
            "totalOrderAmount": "47.00",
            "totalTaxAmount": "0.00",
            "vendor": "acmevendor",
            "affiliate": {"@nil": "true"},
            "role": "VENDOR",
            "currency": "USD",
            "email": "zoe@example.com",
            "firstName": "Zoë",
            "country": "SE",
            "lineItemData": [
                {"itemNo": "1", "productTitle": "Widget", "accountAmount": "30.00", "quantity": "1", "recurring": "false"},
                {"itemNo": "2", "accountAmount": "7.50"}
            ],
            "vendorVariables": {"item": {"name": "src", "value": "fb"}}
        });
        let text = plaintext(&order).unwrap();
        let n = crate::ins::decode_plaintext(text.clone()).expect("decodes as INS plaintext");
        assert_eq!(n.receipt.as_str(), "BBBB2222");
        assert_eq!(n.total_account_amount, Some(Decimal::new(3750, 2)));
        assert_eq!(n.total_order_amount, Some(Decimal::new(4700, 2)));
        assert_eq!(n.affiliate, None, "@nil is absent");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["paymentMethod"], "VISA");
        assert_eq!(v["trackingCodes"], json!(["spring"]));
        assert_eq!(v["customer"]["billing"]["email"], "zoe@example.com");
        assert_eq!(v["customer"]["billing"]["address"]["country"], "SE");
        assert_eq!(v["lineItems"][0]["quantity"], 1);
        assert_eq!(v["lineItems"][0]["recurring"], false);
        assert_eq!(v["vendorVariables"]["src"], "fb");
        assert!(plaintext(&json!({"receipt": "X"})).is_err());
    }
}
