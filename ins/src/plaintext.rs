//! Decoding of the v6+ JSON plaintext (shared by the envelope and HMAC modes) into a
//! [`Notification`], and the time and money parsers it needs.
//!
//! Only the fields the daemon stores are looked at; unknown fields are ignored, never
//! rejected. Numbers are read from their text ([`RawValue`]) so money stays exact.

use chrono::{DateTime, FixedOffset, NaiveDateTime, Timelike, Utc};
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{Notification, Receipt, Reject, Role, TransactionType};

/// The stored fields of the plaintext, as raw JSON so each can be checked precisely.
/// `null` reads as absent. A repeated known field is a serde error, hence `BadJson`.
#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(borrow, rename = "transactionTime")]
    transaction_time: Option<&'a RawValue>,
    #[serde(borrow)]
    receipt: Option<&'a RawValue>,
    #[serde(borrow, rename = "transactionType")]
    transaction_type: Option<&'a RawValue>,
    #[serde(borrow)]
    role: Option<&'a RawValue>,
    #[serde(borrow)]
    vendor: Option<&'a RawValue>,
    #[serde(borrow)]
    affiliate: Option<&'a RawValue>,
    #[serde(borrow, rename = "totalAccountAmount")]
    total_account_amount: Option<&'a RawValue>,
    #[serde(borrow, rename = "totalOrderAmount")]
    total_order_amount: Option<&'a RawValue>,
    #[serde(borrow, rename = "totalTaxAmount")]
    total_tax_amount: Option<&'a RawValue>,
    #[serde(borrow, rename = "totalShippingAmount")]
    total_shipping_amount: Option<&'a RawValue>,
    #[serde(borrow)]
    currency: Option<&'a RawValue>,
    #[serde(borrow)]
    version: Option<&'a RawValue>,
    #[serde(borrow, rename = "attemptCount")]
    attempt_count: Option<&'a RawValue>,
}

/// Decodes the plaintext JSON object `text`; `text` becomes the notification's payload.
pub fn decode(text: String) -> Result<Notification, Reject> {
    // serde would also read a struct from a JSON array: insist on an object first.
    if !text.trim_start().starts_with('{') {
        return Err(Reject::BadJson);
    }
    let wire: Wire<'_> = serde_json::from_str(&text).map_err(|_| Reject::BadJson)?;

    let time_text = required_string(wire.transaction_time, "transactionTime")?;
    let transaction_time = parse_time(&time_text).ok_or(Reject::BadField("transactionTime"))?;
    let receipt = Receipt::parse(&required_string(wire.receipt, "receipt")?)
        .map_err(|_| Reject::BadField("receipt"))?;
    let transaction_type =
        TransactionType::parse(&required_string(wire.transaction_type, "transactionType")?)
            .map_err(|_| Reject::BadField("transactionType"))?;
    let role = match optional_string(wire.role, "role")? {
        // ClickBank sends uppercase; normalise rather than lose a genuine notification.
        Some(r) => Role::parse(&r.to_ascii_uppercase()).map_err(|_| Reject::BadField("role"))?,
        None => Role::none(),
    };

    let notification = Notification {
        role,
        receipt,
        transaction_type,
        transaction_time,
        vendor: optional_string(wire.vendor, "vendor")?,
        affiliate: optional_string(wire.affiliate, "affiliate")?,
        total_account_amount: amount(wire.total_account_amount, "totalAccountAmount")?,
        total_order_amount: amount(wire.total_order_amount, "totalOrderAmount")?,
        total_tax_amount: amount(wire.total_tax_amount, "totalTaxAmount")?,
        total_shipping_amount: amount(wire.total_shipping_amount, "totalShippingAmount")?,
        currency: optional_string(wire.currency, "currency")?,
        version: version(wire.version)?,
        attempt_count: attempt_count(wire.attempt_count)?,
        payload: String::new(),
    };
    Ok(Notification {
        payload: text,
        ..notification
    })
}

/// A JSON string member; `None` when absent, null or empty.
fn optional_string(raw: Option<&RawValue>, name: &'static str) -> Result<Option<String>, Reject> {
    let Some(raw) = raw else { return Ok(None) };
    let s: String = serde_json::from_str(raw.get()).map_err(|_| Reject::BadField(name))?;
    Ok(if s.is_empty() { None } else { Some(s) })
}

fn required_string(raw: Option<&RawValue>, name: &'static str) -> Result<String, Reject> {
    optional_string(raw, name)?.ok_or(Reject::MissingField(name))
}

/// A money amount: a JSON number (parsed from its text) or a string holding one.
fn amount(raw: Option<&RawValue>, name: &'static str) -> Result<Option<Decimal>, Reject> {
    let Some(raw) = raw else { return Ok(None) };
    let text = raw.get();
    let parsed = if text.starts_with('"') {
        let s: String = serde_json::from_str(text).map_err(|_| Reject::BadField(name))?;
        if s.is_empty() {
            return Ok(None);
        }
        parse_plain_decimal(&s)
    } else if text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
        parse_json_number(text)
    } else {
        None
    };
    parsed.map(Some).ok_or(Reject::BadField(name))
}

/// A money amount anywhere in a plaintext (a line item's `accountAmount`):
/// a JSON number or a string holding one, exactly; `None` when it is
/// neither. For readers past the boundary, which skip what they cannot read.
pub fn money(raw: &RawValue) -> Option<Decimal> {
    amount(Some(raw), "amount").ok().flatten()
}

/// The text of a JSON number (already validated by serde_json), exactly.
fn parse_json_number(text: &str) -> Option<Decimal> {
    if text.contains(['e', 'E']) {
        Decimal::from_scientific(text).ok()
    } else {
        Decimal::from_str_exact(text).ok()
    }
}

/// `-?digits(.digits)?`: what a string amount may hold. Stricter than `Decimal`'s own
/// parser, which also takes `_` separators.
pub(crate) fn parse_plain_decimal(s: &str) -> Option<Decimal> {
    let unsigned = s.strip_prefix('-').unwrap_or(s);
    let (int, frac) = match unsigned.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (unsigned, None),
    };
    let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    if !digits(int) || !frac.is_none_or(digits) {
        return None;
    }
    Decimal::from_str_exact(s).ok()
}

/// `version`: the number's text as sent (`6.0` stays `"6.0"`), or a string's content.
fn version(raw: Option<&RawValue>) -> Result<Option<String>, Reject> {
    let Some(raw) = raw else { return Ok(None) };
    let text = raw.get();
    if text.starts_with('"') {
        optional_string(Some(raw), "version")
    } else if text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
        Ok(Some(text.to_owned()))
    } else {
        Err(Reject::BadField("version"))
    }
}

/// `attemptCount`: an integer (or a string holding one); 1 when absent.
fn attempt_count(raw: Option<&RawValue>) -> Result<i32, Reject> {
    let Some(raw) = raw else { return Ok(1) };
    let text = raw.get();
    let bad = Reject::BadField("attemptCount");
    if text.starts_with('"') {
        let s: String = serde_json::from_str(text).map_err(|_| bad)?;
        s.parse().map_err(|_| bad)
    } else {
        serde_json::from_str(text).map_err(|_| bad)
    }
}

/// Both formats ClickBank has used, to UTC: RFC 3339 (`2014-12-20T14:03:10-08:00`, also
/// with `Z`) and the compact `20220810T162015-0700`. Leniency: `Z` on the compact form,
/// and `+0000`-style offsets on the dashed form. A time without an offset is ambiguous
/// and rejected.
pub(crate) fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    // Both stores keep microseconds: a finer time would not match itself
    // when read back (Postgres rounds it), so it is cut here, once.
    parse_time_exact(s).and_then(|t| t.with_nanosecond(t.nanosecond() / 1000 * 1000))
}

fn parse_time_exact(s: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    if let Some(naive) = s.strip_suffix(['Z', 'z']) {
        return ["%Y%m%dT%H%M%S", "%Y-%m-%dT%H:%M:%S", "%Y%m%dT%H%M%S%.f"]
            .iter()
            .find_map(|f| NaiveDateTime::parse_from_str(naive, f).ok())
            .map(|t| t.and_utc());
    }
    [
        "%Y%m%dT%H%M%S%z",
        "%Y-%m-%dT%H:%M:%S%z",
        "%Y-%m-%dT%H:%M:%S%.f%z",
    ]
    .iter()
    .find_map(|f| DateTime::<FixedOffset>::parse_from_str(s, f).ok())
    .map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
    }

    #[test]
    fn time_formats() {
        let cases = [
            ("20220810T162015-0700", Some(utc(2022, 8, 10, 23, 20, 15))),
            (
                "2014-12-20T14:03:10-08:00",
                Some(utc(2014, 12, 20, 22, 3, 10)),
            ),
            (
                "2023-07-28T02:07:57+00:00",
                Some(utc(2023, 7, 28, 2, 7, 57)),
            ),
            ("2023-07-28T02:07:57Z", Some(utc(2023, 7, 28, 2, 7, 57))),
            ("2023-07-28T02:07:57+0000", Some(utc(2023, 7, 28, 2, 7, 57))),
            (
                "2023-07-28T02:07:57-0530",
                Some(utc(2023, 7, 28, 7, 37, 57)),
            ),
            ("20230728T020757Z", Some(utc(2023, 7, 28, 2, 7, 57))),
            ("20230728T020757+00:00", Some(utc(2023, 7, 28, 2, 7, 57))),
            (
                "2023-07-28T02:07:57.250Z",
                Some(utc(2023, 7, 28, 2, 7, 57) + chrono::Duration::milliseconds(250)),
            ),
            ("2023-07-28T02:07:57", None),
            ("20230728T020757", None),
            ("yesterday", None),
            ("", None),
            ("2023-02-30T02:07:57Z", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_time(text), want, "{text}");
        }
    }

    #[test]
    fn amounts_are_exact() {
        let raw = |s: &str| -> Box<RawValue> { RawValue::from_string(s.to_owned()).unwrap() };
        let cases: [(&str, Option<&str>); 12] = [
            ("1.00", Some("1.00")),
            ("-37.00", Some("-37.00")),
            ("0", Some("0")),
            ("12345678901234567890.12", Some("12345678901234567890.12")),
            ("0.1000000000000000055511151231257827", None),
            ("\"1.00\"", Some("1.00")),
            ("\"-0.01\"", Some("-0.01")),
            ("1e2", Some("100")),
            ("\"1_000\"", None),
            ("\"abc\"", None),
            ("true", None),
            ("{}", None),
        ];
        for (text, want) in cases {
            let r = raw(text);
            let got = amount(Some(&r), "x");
            match want {
                Some(w) => assert_eq!(got.unwrap().unwrap().to_string(), w, "{text}"),
                None => assert_eq!(got, Err(Reject::BadField("x")), "{text}"),
            }
        }
        assert_eq!(amount(None, "x"), Ok(None));
        assert_eq!(amount(Some(&raw("\"\"")), "x"), Ok(None));
    }

    #[test]
    fn attempt_counts() {
        let raw = |s: &str| -> Box<RawValue> { RawValue::from_string(s.to_owned()).unwrap() };
        assert_eq!(attempt_count(None), Ok(1));
        assert_eq!(attempt_count(Some(&raw("3"))), Ok(3));
        assert_eq!(attempt_count(Some(&raw("\"2\""))), Ok(2));
        for bad in ["1.5", "99999999999", "\"x\"", "[]"] {
            assert!(attempt_count(Some(&raw(bad))).is_err(), "{bad}");
        }
    }
}
