//! The checked values that leave the INS boundary: account names, receipts, roles,
//! transaction types, and the normalised [`Notification`] every body form decodes into.
//!
//! Each newtype is built only through `parse`, so code past this module never sees an
//! unchecked value.

use std::fmt;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

/// `true` for printable ASCII other than space (`!`..=`~`).
fn all_graphic(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_graphic())
}

macro_rules! string_newtype_common {
    ($t:ident) => {
        impl $t {
            /// The checked value.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $t {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

/// The name of a configured ClickBank account: 1 to 64 of `[A-Za-z0-9_-]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccountName(String);

impl AccountName {
    /// Checks `s` (it is used in URLs, logs and the store, hence the narrow alphabet).
    pub fn parse(s: &str) -> Result<Self, String> {
        let ok_char = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'-';
        if s.is_empty() || s.len() > 64 {
            return Err(format!(
                "account name must be 1 to 64 characters long, not {}",
                s.len()
            ));
        }
        if !s.bytes().all(ok_char) {
            return Err("account name may only contain A-Z, a-z, 0-9, '_' and '-'".to_owned());
        }
        Ok(Self(s.to_owned()))
    }
}
string_newtype_common!(AccountName);

/// A ClickBank receipt: 1 to 64 printable ASCII characters without whitespace
/// (`ABCD1234`, `ABCD1234-B002`, `********` from the Test button).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Receipt(String);

impl Receipt {
    /// Checks `s`. The error message never repeats the value.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() || s.len() > 64 {
            return Err(format!(
                "receipt must be 1 to 64 characters long, not {}",
                s.len()
            ));
        }
        if !all_graphic(s) {
            return Err("receipt may only contain printable ASCII without spaces".to_owned());
        }
        Ok(Self(s.to_owned()))
    }
}
string_newtype_common!(Receipt);

/// The role of the account in the transaction (`VENDOR`, `AFFILIATE`, `JV_UPSELL`, …):
/// up to 32 printable ASCII characters without lowercase letters. Empty when the
/// notification carries no role.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Role(String);

impl Role {
    /// Checks `s`; the empty string is the "no role" value.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.len() > 32 {
            return Err(format!(
                "role must be at most 32 characters, not {}",
                s.len()
            ));
        }
        if !all_graphic(s) || s.bytes().any(|b| b.is_ascii_lowercase()) {
            return Err("role may only contain uppercase printable ASCII".to_owned());
        }
        Ok(Self(s.to_owned()))
    }

    /// The "no role" value.
    pub fn none() -> Self {
        Self(String::new())
    }

    /// `true` for the "no role" value.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}
string_newtype_common!(Role);

/// The `transactionType` (`ctransaction` in the legacy form). New values appear over
/// time, so unknown ones are kept in [`TransactionType::Other`] rather than rejected.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TransactionType {
    Sale,
    Bill,
    Rfnd,
    Cgbk,
    Insf,
    CancelRebill,
    UncancelRebill,
    SubscriptionChg,
    AbandonedOrder,
    Test,
    TestSale,
    TestBill,
    TestRfnd,
    CancelTestRebill,
    UncancelTestRebill,
    /// Any other value, exactly as sent (`CUSTOMER_CHANGE`, `PURCHASE_…`, future ones).
    /// Build it through [`TransactionType::parse`] so it never holds a known spelling.
    Other(String),
}

/// Every known variant with its exact ClickBank spelling; one table keeps `parse` and
/// `as_str` in agreement.
const KNOWN_TYPES: [(&str, TransactionType); 15] = [
    ("SALE", TransactionType::Sale),
    ("BILL", TransactionType::Bill),
    ("RFND", TransactionType::Rfnd),
    ("CGBK", TransactionType::Cgbk),
    ("INSF", TransactionType::Insf),
    ("CANCEL-REBILL", TransactionType::CancelRebill),
    ("UNCANCEL-REBILL", TransactionType::UncancelRebill),
    ("SUBSCRIPTION-CHG", TransactionType::SubscriptionChg),
    ("ABANDONED_ORDER", TransactionType::AbandonedOrder),
    ("TEST", TransactionType::Test),
    ("TEST_SALE", TransactionType::TestSale),
    ("TEST_BILL", TransactionType::TestBill),
    ("TEST_RFND", TransactionType::TestRfnd),
    ("CANCEL-TEST-REBILL", TransactionType::CancelTestRebill),
    ("UNCANCEL-TEST-REBILL", TransactionType::UncancelTestRebill),
];

impl TransactionType {
    /// Exact, case-sensitive match on the known spellings; anything else that is 1 to 64
    /// printable ASCII characters becomes `Other`.
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Some((_, t)) = KNOWN_TYPES.iter().find(|(name, _)| *name == s) {
            return Ok(t.clone());
        }
        if s.is_empty() || s.len() > 64 || !all_graphic(s) {
            return Err(
                "transaction type must be 1 to 64 printable ASCII characters without spaces"
                    .to_owned(),
            );
        }
        Ok(Self::Other(s.to_owned()))
    }

    /// The exact ClickBank spelling.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Sale => "SALE",
            Self::Bill => "BILL",
            Self::Rfnd => "RFND",
            Self::Cgbk => "CGBK",
            Self::Insf => "INSF",
            Self::CancelRebill => "CANCEL-REBILL",
            Self::UncancelRebill => "UNCANCEL-REBILL",
            Self::SubscriptionChg => "SUBSCRIPTION-CHG",
            Self::AbandonedOrder => "ABANDONED_ORDER",
            Self::Test => "TEST",
            Self::TestSale => "TEST_SALE",
            Self::TestBill => "TEST_BILL",
            Self::TestRfnd => "TEST_RFND",
            Self::CancelTestRebill => "CANCEL-TEST-REBILL",
            Self::UncancelTestRebill => "UNCANCEL-TEST-REBILL",
            Self::Other(s) => s,
        }
    }

    /// `true` for notifications from the Test button or test purchases: `TEST`, `TEST_*`
    /// (known or not), `CANCEL-TEST-REBILL`, `UNCANCEL-TEST-REBILL`.
    pub fn is_test(&self) -> bool {
        match self {
            Self::Test
            | Self::TestSale
            | Self::TestBill
            | Self::TestRfnd
            | Self::CancelTestRebill
            | Self::UncancelTestRebill => true,
            Self::Other(s) => s.starts_with("TEST_"),
            Self::Sale
            | Self::Bill
            | Self::Rfnd
            | Self::Cgbk
            | Self::Insf
            | Self::CancelRebill
            | Self::UncancelRebill
            | Self::SubscriptionChg
            | Self::AbandonedOrder => false,
        }
    }
}

impl fmt::Display for TransactionType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One authenticated notification, normalised across the envelope, legacy and HMAC forms.
#[derive(Clone, PartialEq, Eq)]
pub struct Notification {
    pub role: Role,
    pub receipt: Receipt,
    pub transaction_type: TransactionType,
    /// Both ClickBank time formats, converted to UTC.
    pub transaction_time: DateTime<Utc>,
    pub vendor: Option<String>,
    pub affiliate: Option<String>,
    /// Exact decimal from the number's text (never through f64); legacy: cents / 100.
    pub total_account_amount: Option<Decimal>,
    pub total_order_amount: Option<Decimal>,
    pub total_tax_amount: Option<Decimal>,
    pub total_shipping_amount: Option<Decimal>,
    pub currency: Option<String>,
    /// The `version` number's text as sent (`"6.0"`); legacy: `cnoticeversion`.
    pub version: Option<String>,
    /// Delivery attempt, 1 for the first (and when absent).
    pub attempt_count: i32,
    /// Envelope: the decrypted plaintext; legacy: a compact JSON object of all posted
    /// fields in posted order; HMAC mode: the body as received. Holds personal data.
    pub payload: String,
}

/// Written by hand so that `?notification` in a log line cannot print the payload
/// (customer names, e-mails, addresses).
impl fmt::Debug for Notification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Notification")
            .field("role", &self.role)
            .field("receipt", &self.receipt)
            .field("transaction_type", &self.transaction_type)
            .field("transaction_time", &self.transaction_time)
            .field("vendor", &self.vendor)
            .field("affiliate", &self.affiliate)
            .field("total_account_amount", &self.total_account_amount)
            .field("total_order_amount", &self.total_order_amount)
            .field("total_tax_amount", &self.total_tax_amount)
            .field("total_shipping_amount", &self.total_shipping_amount)
            .field("currency", &self.currency)
            .field("version", &self.version)
            .field("attempt_count", &self.attempt_count)
            .field(
                "payload",
                &format_args!("<{} bytes redacted>", self.payload.len()),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_names() {
        for ok in ["a", "main-vendor_2", &"x".repeat(64)] {
            assert_eq!(AccountName::parse(ok).unwrap().as_str(), ok);
        }
        for bad in ["", "a b", "é", "a/b", &"x".repeat(65)] {
            assert!(AccountName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn receipts() {
        for ok in ["ABCD1234", "ABCD1234-B002", "********"] {
            assert_eq!(Receipt::parse(ok).unwrap().to_string(), ok);
        }
        for bad in ["", "AB CD", "AB\tCD", "ÄBC", &"A".repeat(65)] {
            assert!(Receipt::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn roles() {
        for ok in ["", "VENDOR", "AFFILIATE", "JV_UPSELL"] {
            assert_eq!(Role::parse(ok).unwrap().as_str(), ok);
        }
        for bad in ["vendor", "VEN DOR", &"A".repeat(33)] {
            assert!(Role::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn transaction_types_round_trip() {
        for (name, t) in &KNOWN_TYPES {
            let parsed = TransactionType::parse(name).unwrap();
            assert_eq!(&parsed, t);
            assert_eq!(parsed.as_str(), *name);
            assert_eq!(parsed.to_string(), *name);
        }
        let cases = [
            ("CUSTOMER_CHANGE", false),
            ("PURCHASE_UPDATE", false),
            ("sale", false),
            ("TEST_SOMETHING_NEW", true),
        ];
        for (name, test) in cases {
            let t = TransactionType::parse(name).unwrap();
            assert_eq!(t, TransactionType::Other(name.to_owned()));
            assert_eq!(t.as_str(), name);
            assert_eq!(t.is_test(), test, "{name}");
        }
        for bad in ["", "A B", &"A".repeat(65)] {
            assert!(TransactionType::parse(bad).is_err());
        }
    }

    #[test]
    fn test_types() {
        let tests = [
            "TEST",
            "TEST_SALE",
            "TEST_BILL",
            "TEST_RFND",
            "CANCEL-TEST-REBILL",
            "UNCANCEL-TEST-REBILL",
        ];
        for (name, t) in &KNOWN_TYPES {
            assert_eq!(t.is_test(), tests.contains(name), "{name}");
        }
    }
}
