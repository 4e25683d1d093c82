//! The templates of actions (email subjects and bodies, `http` requests):
//! one minijinja environment with the helpers the APIs need, and one
//! context, the event plus a few values every integration looks for.
//!
//! A missing value (none, undefined) renders as nothing, not `none`.
//!
//! Helpers, beside minijinja's own (`lower`, `upper`, `trim`, `default`,
//! `tojson`…):
//! - `urlencode`: every character but `A-Z a-z 0-9 - . _ ~` percent-encoded
//!   (`/` too, unlike minijinja's own, so a value cannot add path segments).
//! - `sha256`, `md5`: lowercase hex of the text (Facebook's hashed email,
//!   Mailchimp's subscriber hash).
//! - `unix_time`: an RFC 3339 time (`transaction_time`) as Unix seconds.
//! - `decimal(2)`: an amount as exact decimal text, `"37.00"` (2 places
//!   unless given).
//! - `number`: an amount as a JSON number (`37.0`), for APIs that want one.
//! - `slack`: `&`, `<` and `>` escaped as Slack's message format asks, so a
//!   product title cannot mention `<!channel>`.
//!
//! Context: the event (README, "The event"), and `summary` (one readable
//! line: "Sale ABCD1234: Widget Guide, 47.00 USD (account 37.00 USD)"),
//! `email`, `first_name`,
//! `last_name` (from the customer data, when the action includes it),
//! `product` (the first line item's title), `click_id` (v8
//! `affiliateTrackingParameters.extclid`, else the first of
//! `trackingCodes`, else the legacy `ctid`), `unix_time` (of the
//! transaction) and `vars` (the action's own `vars` table).

use std::collections::BTreeMap;
use std::str::FromStr;

use minijinja::{Error, ErrorKind, Value};
use rust_decimal::Decimal;
use serde_json::Value as Json;
use sha2::Digest as _;

use super::Event;

/// An environment with the helpers, undefined values chained (a missing
/// `customer.billing.email` is empty, not an error).
pub fn environment() -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Chainable);
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env.set_formatter(|out, state, value| {
        if value.is_none() || value.is_undefined() {
            Ok(())
        } else {
            minijinja::escape_formatter(out, state, value)
        }
    });
    env.add_filter("urlencode", |v: Value| {
        const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
            .remove(b'-')
            .remove(b'.')
            .remove(b'_')
            .remove(b'~');
        if v.is_none() || v.is_undefined() {
            return String::new();
        }
        let text = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
        percent_encoding::utf8_percent_encode(&text, SET).to_string()
    });
    env.add_filter("sha256", |s: String| {
        hex::encode(sha2::Sha256::digest(s.as_bytes()))
    });
    env.add_filter("md5", |s: String| {
        hex::encode(md5::Md5::digest(s.as_bytes()))
    });
    env.add_filter("unix_time", unix_time);
    env.add_filter("decimal", decimal);
    env.add_filter("number", number);
    env.add_filter("slack", |s: String| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    });
    env
}

/// The context of a template for `event`.
pub fn context(event: &Event, vars: &BTreeMap<String, String>) -> Value {
    let derived = derived(event);
    // The first map with a key wins: the event's own fields first.
    minijinja::value::merge_maps([
        Value::from_serialize(event),
        Value::from_serialize(derived),
        minijinja::context! { vars => Value::from_serialize(vars) },
    ])
}

#[derive(serde::Serialize, Default)]
struct Derived {
    summary: String,
    email: Option<String>,
    first_name: Option<String>,
    last_name: Option<String>,
    product: Option<String>,
    click_id: Option<String>,
    unix_time: Option<i64>,
}

fn derived(event: &Event) -> Derived {
    let n = match event {
        Event::Alert(a) => {
            let state = match a.event {
                crate::store::AlertPhase::Fired => "Alert",
                crate::store::AlertPhase::Resolved => "Resolved",
            };
            return Derived {
                summary: format!("{state}: {}", a.alert.title),
                ..Derived::default()
            };
        }
        Event::Notification(n) => n,
    };
    let text = |v: Option<&Json>| {
        v.and_then(Json::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let customer = n.customer.as_ref();
    let billing = |field: &str, legacy: &str| {
        text(customer.and_then(|c| c.pointer(&format!("/billing/{field}"))))
            .or_else(|| text(customer.and_then(|c| c.get(legacy))))
    };
    let first_item = match &n.line_items {
        Json::Array(items) => items.first(),
        item @ Json::Object(_) => Some(item),
        _ => None,
    };
    let body = &n.notification;
    let click_id = text(body.pointer("/affiliateTrackingParameters/extclid"))
        .or_else(|| match body.get("trackingCodes") {
            Some(Json::Array(codes)) => text(codes.first()),
            other => text(other),
        })
        .or_else(|| text(body.get("ctid")));
    let product = text(first_item.and_then(|i| i.get("productTitle")))
        .or_else(|| text(body.get("cprodtitle")));
    Derived {
        summary: summary(n, product.as_deref()),
        email: event.customer_email().map(str::to_owned),
        first_name: billing("firstName", "ccustfirstname"),
        last_name: billing("lastName", "ccustlastname"),
        product,
        click_id,
        unix_time: Some(n.transaction_time.timestamp()),
    }
}

/// "Refund ABCD1234: Widget Guide, -37.00 USD, affiliate bob (test)".
fn summary(n: &super::event::NotificationEvent, product: Option<&str>) -> String {
    let label = match n.kind.as_str() {
        "SALE" | "TEST_SALE" => "Sale",
        "BILL" | "TEST_BILL" => "Rebill",
        "RFND" | "TEST_RFND" => "Refund",
        "CGBK" => "Chargeback",
        "INSF" => "Insufficient funds",
        "CANCEL-REBILL" | "CANCEL-TEST-REBILL" => "Subscription cancelled",
        "UNCANCEL-REBILL" | "UNCANCEL-TEST-REBILL" => "Subscription resumed",
        "TEST" => "Test notification",
        other => other,
    };
    let mut line = format!("{label} {}", n.receipt);
    let currency = n.currency.as_deref().unwrap_or("");
    let mut parts = Vec::new();
    if let Some(p) = product {
        parts.push(p.to_owned());
    }
    match (&n.amounts.order, &n.amounts.account) {
        (Some(order), Some(account)) if order != account => {
            parts.push(format!("{order} {currency} (account {account} {currency})"))
        }
        (Some(a), _) | (None, Some(a)) => parts.push(format!("{a} {currency}")),
        (None, None) => {}
    }
    if let Some(a) = &n.affiliate {
        parts.push(format!("affiliate {a}"));
    }
    if !parts.is_empty() {
        line.push_str(": ");
        line.push_str(parts.join(", ").trim());
    }
    if n.test {
        line.push_str(" (test)");
    }
    line
}

fn unix_time(v: Value) -> Result<i64, Error> {
    if let Some(i) = v.as_i64() {
        return Ok(i);
    }
    let text = v.as_str().unwrap_or_default();
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp())
        .map_err(|_| {
            Error::new(
                ErrorKind::InvalidOperation,
                format!("unix_time: `{text}` is not an RFC 3339 time"),
            )
        })
}

/// A decimal from a string or a number (through its shortest text).
fn as_decimal(v: &Value, filter: &str) -> Result<Option<Decimal>, Error> {
    if v.is_undefined() || v.is_none() {
        return Ok(None);
    }
    let text = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
    Decimal::from_str(text.trim())
        .or_else(|_| Decimal::from_scientific(text.trim()))
        .map(Some)
        .map_err(|_| {
            Error::new(
                ErrorKind::InvalidOperation,
                format!("{filter}: `{text}` is not an amount"),
            )
        })
}

fn decimal(v: Value, places: Option<u32>) -> Result<Value, Error> {
    let places = places.unwrap_or(2).min(12);
    Ok(match as_decimal(&v, "decimal")? {
        Some(d) => Value::from(format!(
            "{:.*}",
            places as usize,
            d.round_dp_with_strategy(places, rust_decimal::RoundingStrategy::MidpointAwayFromZero)
        )),
        None => Value::UNDEFINED,
    })
}

fn number(v: Value) -> Result<Value, Error> {
    use rust_decimal::prelude::ToPrimitive as _;
    Ok(match as_decimal(&v, "number")? {
        Some(d) if d.fract().is_zero() && d.abs() < Decimal::from(1_i64 << 53) => {
            Value::from(d.to_i64().unwrap_or_default())
        }
        Some(d) => Value::from(d.to_f64().unwrap_or_default()),
        None => Value::UNDEFINED,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(src: &str, ctx: Value) -> String {
        environment().render_str(src, ctx).unwrap()
    }

    #[test]
    fn helpers_give_what_the_apis_expect() {
        let ctx = minijinja::context! { email => " Zoe@Example.com ", t => "2026-11-20T18:15:00Z", a => "37.5", n => "-12.00" };
        // Facebook: SHA-256 of the trimmed, lowercased email.
        assert_eq!(
            render("{{ email | trim | lower | sha256 }}", ctx.clone()),
            hex::encode(sha2::Sha256::digest(b"zoe@example.com"))
        );
        // Mailchimp: MD5 of the lowercased email.
        assert_eq!(
            render("{{ 'Zoe@Example.com' | lower | md5 }}", ctx.clone()),
            "76cec4168e20ad317a8afb3a81ae3fce"
        );
        assert_eq!(render("{{ t | unix_time }}", ctx.clone()), "1795198500");
        assert_eq!(render("{{ a | decimal }}", ctx.clone()), "37.50");
        assert_eq!(render("{{ a | decimal(0) }}", ctx.clone()), "38");
        assert_eq!(render("{{ a | number }}", ctx.clone()), "37.5");
        assert_eq!(render("{{ n | number | abs }}", ctx.clone()), "12");
        assert_eq!(
            render("{{ 'a b&c' | urlencode }}", ctx.clone()),
            "a%20b%26c"
        );
        assert_eq!(
            render("{{ '../x/y' | urlencode }}", ctx.clone()),
            "..%2Fx%2Fy"
        );
        assert_eq!(render("{{ missing | decimal }}", ctx), "");
        // Nothing for a missing value, not minijinja's `none`.
        let none = minijinja::context! { first_name => Value::from(()) };
        assert_eq!(
            render("Hello {{ first_name }}{{ gone.deeper }}!", none),
            "Hello !"
        );
    }
}
