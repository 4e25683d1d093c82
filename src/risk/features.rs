//! What a sale looks like to the refund-risk model: categorical features
//! read from the notification, the same way at training and at scoring.
//! Pure.

use chrono::{Datelike, Timelike};
use serde_json::Value;

use crate::ins::Notification;
use crate::report::facts::{Facts, MICROS};

/// The features, by name, in a fixed order.
pub const NAMES: [&str; 9] = [
    "product",
    "affiliate",
    "traffic_source",
    "country",
    "payment_method",
    "price_band",
    "recurring",
    "upsell",
    "hour_of_week",
];

/// One sale's feature values, in [`NAMES`] order.
pub type Values = [String; 9];

/// Price bands in whole currency units: where refund rates usually differ.
const BANDS: [(i64, &str); 5] = [
    (10, "<10"),
    (25, "10-25"),
    (50, "25-50"),
    (100, "50-100"),
    (200, "100-200"),
];

/// The feature values of a sale.
pub fn values(n: &Notification) -> Values {
    let f = Facts::of(n);
    let product = f
        .lines
        .first()
        .map(|l| l.item_no.clone())
        .unwrap_or_default();
    let source = f
        .parameters
        .iter()
        .find(|(k, _)| *k == "trafficSource")
        .map(|(_, v)| v.clone())
        .or_else(|| f.tids.first().cloned())
        .unwrap_or_default();
    let units = f.micros.abs() / MICROS;
    let band = BANDS
        .iter()
        .find(|(limit, _)| units < *limit)
        .map_or("200+", |(_, b)| b);
    let recurring = f.lines.iter().any(|l| l.recurring);
    let upsell = serde_json::from_str::<Value>(&n.payload)
        .ok()
        .and_then(|v| {
            v.pointer("/upsell/upsellOriginalReceipt")
                .and_then(Value::as_str)
                .map(|r| !r.is_empty())
        })
        .unwrap_or(false);
    let t = n.transaction_time;
    // Six-hour blocks of each weekday (UTC): 28 values.
    let hour = format!("{}-{}", t.weekday().num_days_from_monday(), t.hour() / 6);
    [
        product,
        f.affiliate,
        source,
        f.country.unwrap_or_default(),
        f.payment_method.unwrap_or_default(),
        band.to_owned(),
        if recurring { "yes" } else { "no" }.to_owned(),
        if upsell { "yes" } else { "no" }.to_owned(),
        hour,
    ]
}
