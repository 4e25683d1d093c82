//! Recognising which INS form a raw body is, before any key is involved.
//!
//! Recognition depends on the body's structure only, never on a key, so answering 400
//! for an unrecognised body reveals nothing about decryption.

use serde_json::value::RawValue;

use super::{envelope, legacy};

/// The three body forms the daemon accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BodyForm {
    /// `{"notification":"…","iv":"…"}`: ClickBank's encrypted JSON (v6.0+).
    Envelope,
    /// `application/x-www-form-urlencoded` with `cverify` (v1.0 to v4.0).
    LegacyForm,
    /// Any other JSON object, authenticated by an HMAC header.
    PlainJson,
    /// Not a post: an order ClickBank's Orders API listed and no post had
    /// brought, stored by reconciliation (`kaching::reconcile`).
    OrdersApi,
}

impl BodyForm {
    /// A short stable name for logs and the store.
    pub fn as_str(self) -> &'static str {
        match self {
            BodyForm::Envelope => "envelope",
            BodyForm::LegacyForm => "legacy-form",
            BodyForm::PlainJson => "hmac-json",
            BodyForm::OrdersApi => "orders-api",
        }
    }

    /// The form named by [`BodyForm::as_str`] (a stored value read back).
    pub fn parse(s: &str) -> Result<BodyForm, String> {
        [
            BodyForm::Envelope,
            BodyForm::LegacyForm,
            BodyForm::PlainJson,
            BodyForm::OrdersApi,
        ]
        .into_iter()
        .find(|f| f.as_str() == s)
        .ok_or_else(|| {
            "body form must be envelope, legacy-form, hmac-json or orders-api".to_owned()
        })
    }
}

impl std::fmt::Display for BodyForm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A recognised body, parsed just enough to authenticate it.
pub(crate) enum Classified {
    Envelope(envelope::Wire),
    LegacyForm(legacy::Fields),
    PlainJson,
}

impl Classified {
    pub(crate) fn form(&self) -> BodyForm {
        match self {
            Classified::Envelope(_) => BodyForm::Envelope,
            Classified::LegacyForm(_) => BodyForm::LegacyForm,
            Classified::PlainJson => BodyForm::PlainJson,
        }
    }
}

pub(crate) fn classify(body: &[u8]) -> Option<Classified> {
    match serde_json::from_slice::<&RawValue>(body) {
        Ok(raw) if raw.get().starts_with('{') => Some(
            envelope::Wire::parse_strict(body).map_or(Classified::PlainJson, Classified::Envelope),
        ),
        // JSON, but not an object (`null`, `[1]`, `"x"`, `3`).
        Ok(_) => None,
        Err(_) => envelope::Wire::parse_lenient(body)
            .map(Classified::Envelope)
            .or_else(|| legacy::parse(body).map(Classified::LegacyForm)),
    }
}

/// Which form `body` is, or `None` (the caller answers 400).
///
/// - `Envelope`: a JSON object whose `notification` and `iv` members are strings (other
///   members ignored), also when raw line breaks inside the base64 make it invalid JSON.
/// - `PlainJson`: any other JSON object.
/// - `LegacyForm`: not JSON, UTF-8, form-urlencoded with a `cverify` field.
pub fn recognise(body: &[u8]) -> Option<BodyForm> {
    classify(body).map(|c| c.form())
}
