//! What one stored notification means for the reports: its kind, its UTC
//! day, its money in exact micros, and the breakdown values (dimensions) it
//! counts under: its products (line items), affiliate, tracking codes and
//! v8 tracking parameters. Pure: from a [`Notification`] to [`Facts`].
//!
//! Reading is lenient: a field of an unexpected shape is skipped, never an
//! error (the notification is stored already; a report can only lose a
//! label, not a sale). Money is read from the number's text, as the ins
//! layer reads it, and never through a float.

use std::collections::HashMap;

use chrono::NaiveDate;
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use serde_json::value::RawValue;

use crate::ins::{self, Notification, TransactionType};

/// Money is kept as integer millionths of the currency unit ("micros"):
/// exact, summable by both backends' integer `SUM`, and enough for any
/// currency's minor units.
pub const MICROS: i64 = 1_000_000;

/// The v8 `affiliateTrackingParameters` a report breaks down by, in
/// ClickBank's spelling (section 1.1 of the protocol notes). Per-click ids
/// (`extclid`, `fbclid`, `uniqueAffSub*`, `contactId`) are not here: a
/// breakdown by them would have one row per sale. The API's `by` accepts
/// exactly these and `tid`.
pub const TRACKING_PARAMETERS: [&str; 12] = [
    "offer",
    "trafficType",
    "trafficSource",
    "campaign",
    "adgroup",
    "ad",
    "creative",
    "affSub1",
    "affSub2",
    "affSub3",
    "affSub4",
    "affSub5",
];

/// What a notification is, for the reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Sale,
    Rebill,
    Refund,
    Chargeback,
    Cancel,
    Uncancel,
    /// Test notifications: stored and listed, never counted.
    Test,
    /// Everything else (`INSF`, `SUBSCRIPTION-CHG`, customer-service events…).
    Other,
}

impl Kind {
    pub fn of(t: &TransactionType) -> Kind {
        match t {
            _ if t.is_test() => Kind::Test,
            TransactionType::Sale => Kind::Sale,
            TransactionType::Bill => Kind::Rebill,
            TransactionType::Rfnd => Kind::Refund,
            TransactionType::Cgbk => Kind::Chargeback,
            TransactionType::CancelRebill => Kind::Cancel,
            TransactionType::UncancelRebill => Kind::Uncancel,
            _ => Kind::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Sale => "sale",
            Kind::Rebill => "rebill",
            Kind::Refund => "refund",
            Kind::Chargeback => "chargeback",
            Kind::Cancel => "cancel",
            Kind::Uncancel => "uncancel",
            Kind::Test => "test",
            Kind::Other => "other",
        }
    }

    /// Money in: a sale or a rebill (the orders refund rates divide by).
    pub fn is_order(self) -> bool {
        matches!(self, Kind::Sale | Kind::Rebill)
    }

    /// Money back out: a refund or a chargeback of an earlier order.
    pub fn is_reversal(self) -> bool {
        matches!(self, Kind::Refund | Kind::Chargeback)
    }
}

/// One line item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub item_no: String,
    pub title: String,
    pub recurring: bool,
    /// The line's `accountAmount`, or the whole amount for a one-line
    /// notification without one.
    pub micros: i64,
}

/// One value a notification counts under in a breakdown, with the money
/// it brings there.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Dim {
    /// `all`, `product`, `affiliate`, `tid` or a [`TRACKING_PARAMETERS`] name.
    pub dim: String,
    /// The item number, nickname, code or parameter value; `""` for none.
    pub value: String,
    /// What a page shows for it (a product's title); usually the value.
    pub label: String,
    pub micros: i64,
}

/// What a notification means for the reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    pub kind: Kind,
    pub day: NaiveDate,
    /// `""` when the notification names none.
    pub currency: String,
    /// `totalAccountAmount` in micros, signed as sent (0 when absent).
    pub micros: i64,
    pub lines: Vec<Line>,
    /// `""` for a sale without an affiliate.
    pub affiliate: String,
    pub tids: Vec<String>,
    /// The v8 tracking parameters of [`TRACKING_PARAMETERS`] that it has.
    pub parameters: Vec<(&'static str, String)>,
    /// Every `affiliateTrackingParameters` member, per-click ids included
    /// (for filtering the notification list, not for breakdowns).
    pub tracking: Vec<(String, String)>,
    pub payment_method: Option<String>,
    pub country: Option<String>,
    /// The receipt of the original sale: a rebill's `ABCD1234-B002` is
    /// `ABCD1234`'s; a refund reuses the receipt it reverses.
    pub sale_receipt: String,
}

/// Micros of an exact amount, rounded half-even past the sixth decimal;
/// `None` beyond ±9.2 × 10¹² units.
pub fn micros(d: Decimal) -> Option<i64> {
    d.checked_mul(Decimal::from(MICROS))?.round().to_i64()
}

/// The exact amount of `micros`.
pub fn decimal(micros: i64) -> Decimal {
    Decimal::new(micros, 6).normalize()
}

/// An amount as the API and pages show it: at least two decimals (`12.50`,
/// `0.00`, `0.125`).
pub fn money_text(micros: i64) -> String {
    let d = decimal(micros);
    if d.scale() < 2 {
        let mut d = d;
        d.rescale(2);
        d.to_string()
    } else {
        d.to_string()
    }
}

/// `ABCD1234-B002` → `ABCD1234`; other receipts as they are.
pub fn sale_receipt(receipt: &str) -> &str {
    match receipt.rsplit_once("-B") {
        Some((sale, n))
            if !sale.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) =>
        {
            sale
        }
        _ => receipt,
    }
}

impl Facts {
    /// The facts of `n`.
    pub fn of(n: &Notification) -> Facts {
        let kind = Kind::of(&n.transaction_type);
        let micros_total = n.total_account_amount.and_then(micros).unwrap_or(0);
        let mut facts = Facts {
            kind,
            day: n.transaction_time.date_naive(),
            currency: n.currency.clone().unwrap_or_default(),
            micros: micros_total,
            lines: Vec::new(),
            affiliate: n.affiliate.clone().unwrap_or_default(),
            tids: Vec::new(),
            parameters: Vec::new(),
            tracking: Vec::new(),
            payment_method: None,
            country: None,
            sale_receipt: sale_receipt(n.receipt.as_str()).to_owned(),
        };
        if let Ok(fields) = serde_json::from_str::<HashMap<&str, &RawValue>>(&n.payload) {
            if fields.contains_key("ctransreceipt") {
                facts.read_legacy(&fields);
            } else {
                facts.read_json(&fields);
            }
        }
        if facts.lines.len() == 1 && facts.lines[0].micros == 0 {
            facts.lines[0].micros = micros_total;
        }
        facts
    }

    fn read_json(&mut self, f: &HashMap<&str, &RawValue>) {
        self.payment_method = f.get("paymentMethod").and_then(|r| string(r));
        if let Some(items) = f.get("lineItems") {
            for item in objects(items) {
                let Some(item_no) = item.get("itemNo").and_then(|r| scalar(r)) else {
                    continue;
                };
                self.lines.push(Line {
                    title: item
                        .get("productTitle")
                        .and_then(|r| string(r))
                        .unwrap_or_else(|| item_no.clone()),
                    item_no,
                    recurring: item
                        .get("recurring")
                        .is_some_and(|r| matches!(r.get(), "true" | "\"true\"")),
                    micros: item
                        .get("accountAmount")
                        .and_then(|r| ins::money(r))
                        .and_then(micros)
                        .unwrap_or(0),
                });
            }
        }
        if let Some(codes) = f.get("trackingCodes") {
            self.tids = strings(codes);
        }
        if let Some(tracking) = f.get("affiliateTrackingParameters") {
            if let Ok(map) = serde_json::from_str::<HashMap<String, &RawValue>>(tracking.get()) {
                let mut members: Vec<(String, String)> = map
                    .into_iter()
                    .filter_map(|(k, v)| Some((k, scalar(v)?)))
                    .filter(|(_, v)| !v.is_empty())
                    .collect();
                members.sort();
                self.parameters = TRACKING_PARAMETERS
                    .iter()
                    .filter_map(|p| {
                        let (_, v) = members.iter().find(|(k, _)| k == p)?;
                        Some((*p, v.clone()))
                    })
                    .collect();
                self.tracking = members;
            }
        }
        let billing_country = f
            .get("customer")
            .and_then(|c| member(c, "billing"))
            .and_then(|b| member(b, "address"))
            .and_then(|a| member(a, "country"))
            .and_then(string);
        let click_country = f
            .get("commonTrackingParameters")
            .and_then(|c| member(c, "country"))
            .and_then(string);
        self.country = billing_country.or(click_country);
    }

    /// The legacy form's posted fields (`cproditem`, `cprodtitle`, `ctid`…).
    fn read_legacy(&mut self, f: &HashMap<&str, &RawValue>) {
        let get = |name: &str| f.get(name).and_then(|r| string(r));
        self.payment_method = get("ctranspaymentmethod");
        self.country = get("ccustcc");
        if let Some(item_no) = get("cproditem") {
            self.lines.push(Line {
                title: get("cprodtitle").unwrap_or_else(|| item_no.clone()),
                item_no,
                recurring: get("cprodtype").is_some_and(|t| t.eq_ignore_ascii_case("RECURRING")),
                micros: 0,
            });
        }
        self.tids = get("ctid").into_iter().collect();
    }

    /// Whether a sale starts a subscription.
    pub fn recurring(&self) -> Option<&Line> {
        self.lines.iter().find(|l| l.recurring)
    }

    /// The breakdown values it counts under, `all` first. Products carry
    /// their line's money; the rest the whole amount.
    pub fn dims(&self) -> Vec<Dim> {
        let whole = |dim: &str, value: &str| Dim {
            dim: dim.to_owned(),
            value: value.to_owned(),
            label: value.to_owned(),
            micros: self.micros,
        };
        let mut dims = vec![whole("all", "")];
        for line in &self.lines {
            dims.push(Dim {
                dim: "product".to_owned(),
                value: line.item_no.clone(),
                label: line.title.clone(),
                micros: line.micros,
            });
        }
        if self.lines.is_empty() {
            dims.push(whole("product", ""));
        }
        dims.push(whole("affiliate", &self.affiliate));
        let mut tids = self.tids.clone();
        tids.sort();
        tids.dedup();
        for tid in &tids {
            dims.push(whole("tid", tid));
        }
        if tids.is_empty() {
            dims.push(whole("tid", ""));
        }
        for (name, value) in &self.parameters {
            dims.push(whole(name, value));
        }
        dims
    }
}

/// A JSON string's content, or `None`.
fn string(raw: &RawValue) -> Option<String> {
    serde_json::from_str::<String>(raw.get())
        .ok()
        .filter(|s| !s.is_empty())
}

/// A string, or a number's text (`"itemNo": 12`).
fn scalar(raw: &RawValue) -> Option<String> {
    let text = raw.get();
    if text.starts_with('"') {
        string(raw)
    } else if text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
        Some(text.to_owned())
    } else {
        None
    }
}

/// An array of strings, or one string.
fn strings(raw: &RawValue) -> Vec<String> {
    if let Ok(list) = serde_json::from_str::<Vec<&RawValue>>(raw.get()) {
        list.into_iter().filter_map(scalar).collect()
    } else {
        scalar(raw).into_iter().collect()
    }
}

/// An array of objects, or one object (ClickBank has sent both shapes).
fn objects(raw: &RawValue) -> Vec<HashMap<&str, &RawValue>> {
    if let Ok(list) = serde_json::from_str::<Vec<HashMap<&str, &RawValue>>>(raw.get()) {
        list
    } else {
        serde_json::from_str::<HashMap<&str, &RawValue>>(raw.get())
            .into_iter()
            .collect()
    }
}

fn member<'a>(raw: &'a RawValue, name: &str) -> Option<&'a RawValue> {
    serde_json::from_str::<HashMap<&str, &RawValue>>(raw.get())
        .ok()?
        .get(name)
        .copied()
}

/// The buyer's e-mail address, masked for a page (`j***@example.com`), or
/// `None`. Nothing else of the customer ever leaves the store.
pub fn masked_email(payload: &str) -> Option<String> {
    let fields = serde_json::from_str::<HashMap<&str, &RawValue>>(payload).ok()?;
    let email = match fields.get("ccustemail") {
        Some(raw) => string(raw)?,
        None => {
            let billing = member(fields.get("customer")?, "billing")?;
            string(member(billing, "email")?)?
        }
    };
    let (local, domain) = email.rsplit_once('@')?;
    let first: String = local.chars().take(1).collect();
    Some(format!("{first}***@{domain}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ins::{Receipt, Role};
    use chrono::TimeZone;

    fn notification(kind: &str, receipt: &str, amount: &str, payload: &str) -> Notification {
        Notification {
            role: Role::parse("VENDOR").unwrap(),
            receipt: Receipt::parse(receipt).unwrap(),
            transaction_type: TransactionType::parse(kind).unwrap(),
            transaction_time: Utc.with_ymd_and_hms(2026, 11, 30, 23, 59, 0).unwrap(),
            vendor: Some("v".into()),
            affiliate: Some("aff1".into()),
            total_account_amount: Some(amount.parse().unwrap()),
            total_order_amount: None,
            total_tax_amount: None,
            total_shipping_amount: None,
            currency: Some("USD".into()),
            version: Some("8.0".into()),
            attempt_count: 1,
            payload: payload.into(),
        }
    }
    use chrono::Utc;

    #[test]
    fn a_v8_cart_with_tracking() {
        let payload = r#"{"paymentMethod":"PYPL","trackingCodes":["fb-1","fb-1","x"],
            "lineItems":[{"itemNo":"1","productTitle":"Guide","accountAmount":0.10,"recurring":false},
                         {"itemNo":2,"productTitle":"Club","accountAmount":"0.20","recurring":true}],
            "customer":{"billing":{"email":"jane@example.com","address":{"country":"DE"}}},
            "affiliateTrackingParameters":{"trafficSource":"facebook","extclid":"abc","campaign":"","creative":7}}"#;
        let f = Facts::of(&notification("SALE", "ABCD1234", "0.30", payload));
        assert_eq!(f.kind, Kind::Sale);
        assert_eq!(f.day, NaiveDate::from_ymd_opt(2026, 11, 30).unwrap());
        assert_eq!(f.micros, 300_000);
        assert_eq!(f.lines.len(), 2);
        assert_eq!(
            (f.lines[1].item_no.as_str(), f.lines[1].micros),
            ("2", 200_000)
        );
        assert!(f.recurring().is_some());
        assert_eq!(f.payment_method.as_deref(), Some("PYPL"));
        assert_eq!(f.country.as_deref(), Some("DE"));
        assert_eq!(
            f.parameters,
            vec![
                ("trafficSource", "facebook".to_owned()),
                ("creative", "7".to_owned())
            ]
        );
        assert!(f.tracking.iter().any(|(k, _)| k == "extclid"));
        let dims = f.dims();
        let tids: Vec<_> = dims
            .iter()
            .filter(|d| d.dim == "tid")
            .map(|d| d.value.as_str())
            .collect();
        assert_eq!(tids, ["fb-1", "x"]);
        assert_eq!(masked_email(payload).as_deref(), Some("j***@example.com"));
    }

    #[test]
    fn odd_shapes_are_skipped_not_errors() {
        let payload = r#"{"lineItems":{"itemNo":"9","accountAmount":"abc"},"trackingCodes":"solo",
            "affiliateTrackingParameters":[1,2],"customer":"nobody"}"#;
        let f = Facts::of(&notification("RFND", "ABCD1234", "-5.00", payload));
        assert_eq!(f.kind, Kind::Refund);
        assert_eq!(f.lines.len(), 1);
        assert_eq!(
            f.lines[0].micros, -5_000_000,
            "a lone line takes the whole amount"
        );
        assert_eq!(f.tids, ["solo"]);
        assert!(f.parameters.is_empty());
        assert_eq!(masked_email(payload), None);
        let f = Facts::of(&notification("SALE", "ABCD1234", "1.00", "not json"));
        assert!(f.lines.is_empty());
        assert_eq!(f.dims().len(), 4, "all, product none, affiliate, tid none");
    }

    #[test]
    fn receipts_and_money() {
        assert_eq!(sale_receipt("ABCD1234-B002"), "ABCD1234");
        assert_eq!(sale_receipt("ABCD1234"), "ABCD1234");
        assert_eq!(sale_receipt("AB-BX"), "AB-BX");
        assert_eq!(sale_receipt("-B2"), "-B2");
        assert_eq!(money_text(0), "0.00");
        assert_eq!(money_text(12_500_000), "12.50");
        assert_eq!(money_text(-125_000), "-0.125");
        assert_eq!(micros("0.1234567".parse().unwrap()), Some(123_457));
        assert_eq!(Kind::of(&TransactionType::TestSale), Kind::Test);
    }
}
