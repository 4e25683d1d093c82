//! The legacy form format (v1.0, v2.1, v4.0): `application/x-www-form-urlencoded`,
//! authenticated by the 8-hex-character `cverify`, amounts in cents.
//!
//! Opt-in per account (`legacy_cverify`): ClickBank moved every account to v6.0 in 2014,
//! and 32 bits of `cverify` are weak, so the comparison is constant-time and the caller
//! should rate-limit failures.

use chrono::DateTime;
use rust_decimal::Decimal;
use sha1::{Digest, Sha1};
use subtle::ConstantTimeEq;

use super::{
    AccountKeys, Authenticated, BodyForm, Notification, Receipt, Reject, Role, TransactionType,
};

/// The posted (name, value) pairs, percent-decoded, in posted order.
pub(crate) type Fields = Vec<(String, String)>;

const CVERIFY: &str = "cverify";

/// The field order of the v1.0 scheme, before the secret.
const V1_ORDER: [&str; 15] = [
    "ccustname",
    "ccustemail",
    "ccustcc",
    "ccuststate",
    "ctransreceipt",
    "cproditem",
    "ctransaction",
    "ctransaffiliate",
    "ctranspublisher",
    "cprodtype",
    "cprodtitle",
    "ctranspaymentmethod",
    "ctransamount",
    "caffitid",
    "cvendthru",
];

/// Reads `body` as a form with a `cverify` field; `None` otherwise (then it is not a
/// legacy notification at all). The body must be UTF-8, as `cverify` hashes UTF-8.
pub(crate) fn parse(body: &[u8]) -> Option<Fields> {
    let text = std::str::from_utf8(body).ok()?;
    if text.trim().is_empty() {
        return None;
    }
    let fields: Fields = form_urlencoded::parse(text.as_bytes())
        .into_owned()
        .collect();
    fields.iter().any(|(n, _)| n == CVERIFY).then_some(fields)
}

/// `SHA-1(values joined by "|" + "|" + secret)`, first 8 hex characters, uppercase.
fn cverify_of<'a>(values: impl Iterator<Item = &'a str>, secret: &str) -> String {
    let mut hasher = Sha1::new();
    for v in values {
        hasher.update(v.as_bytes());
        hasher.update(b"|");
    }
    hasher.update(secret.as_bytes());
    let mut hex = hex::encode_upper(hasher.finalize());
    hex.truncate(8);
    hex
}

/// The v2.1+ `cverify` of `fields` under `secret`: every field except `cverify`, sorted
/// by name (bytewise), values joined with `|`, then `|` and the secret.
pub fn legacy_cverify(fields: &[(String, String)], secret: &str) -> String {
    let mut signed: Vec<&(String, String)> = fields.iter().filter(|(n, _)| n != CVERIFY).collect();
    // Stable, so repeated names (rejected by `authenticate` anyway) keep posted order.
    signed.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    cverify_of(signed.iter().map(|(_, v)| v.as_str()), secret)
}

/// The v1.0 `cverify`: a fixed list of fields (absent ones count as empty).
fn legacy_cverify_v1(fields: &[(String, String)], secret: &str) -> String {
    let value = |name: &str| field(fields, name).unwrap_or("");
    cverify_of(V1_ORDER.iter().map(|n| value(n)), secret)
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// A field that is present and not empty.
fn non_empty<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    field(fields, name).filter(|v| !v.is_empty())
}

fn ct_eq_hex(posted: &str, computed: &str) -> bool {
    posted
        .to_ascii_uppercase()
        .as_bytes()
        .ct_eq(computed.as_bytes())
        .into()
}

/// Checks `cverify` under every key of every account with legacy enabled, then maps the
/// fields. The v1.0 scheme is tried only for bodies without `cnoticeversion` (v1.0 and
/// v2.1 posts have none): it signs a fixed subset of fields, so accepting it for a v4.0
/// body would let the unsigned fields be altered.
pub(crate) fn authenticate(
    fields: &[(String, String)],
    accounts: &[&AccountKeys],
) -> Result<Authenticated, Reject> {
    let candidates: Vec<&&AccountKeys> = accounts
        .iter()
        .filter(|a| a.legacy_cverify && !a.keys.is_empty())
        .collect();
    if candidates.is_empty() {
        return Err(Reject::NoAccountForForm);
    }
    if has_duplicate_names(fields) {
        return Err(Reject::DuplicateField);
    }
    let posted = field(fields, CVERIFY).unwrap_or("");
    let try_v1 = field(fields, "cnoticeversion").is_none();

    for account in candidates {
        for (key_index, key) in account.keys.iter().enumerate() {
            let ok = ct_eq_hex(posted, &legacy_cverify(fields, key.secret()))
                | (try_v1 && ct_eq_hex(posted, &legacy_cverify_v1(fields, key.secret())));
            if ok {
                // Genuine: a mapping error is final, another key cannot fix the fields.
                return Ok(Authenticated {
                    account: account.name.clone(),
                    key_index,
                    form: BodyForm::LegacyForm,
                    notification: map(fields)?,
                });
            }
        }
    }
    Err(Reject::BadCverify)
}

fn has_duplicate_names(fields: &[(String, String)]) -> bool {
    let mut names: Vec<&str> = fields.iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    names.windows(2).any(|w| w.first() == w.get(1))
}

fn required<'a>(fields: &'a [(String, String)], name: &'static str) -> Result<&'a str, Reject> {
    non_empty(fields, name).ok_or(Reject::MissingField(name))
}

/// Cents (possibly negative) to an exact decimal; empty or absent is `None`.
fn cents(fields: &[(String, String)], name: &'static str) -> Result<Option<Decimal>, Reject> {
    let Some(v) = non_empty(fields, name) else {
        return Ok(None);
    };
    let cents: i64 = v.parse().map_err(|_| Reject::BadField(name))?;
    Ok(Some(Decimal::new(cents, 2)))
}

/// Maps the posted fields of an authenticated body to a [`Notification`].
fn map(fields: &[(String, String)]) -> Result<Notification, Reject> {
    let receipt = Receipt::parse(required(fields, "ctransreceipt")?)
        .map_err(|_| Reject::BadField("ctransreceipt"))?;
    let transaction_type = TransactionType::parse(required(fields, "ctransaction")?)
        .map_err(|_| Reject::BadField("ctransaction"))?;
    let seconds: i64 = required(fields, "ctranstime")?
        .parse()
        .map_err(|_| Reject::BadField("ctranstime"))?;
    let transaction_time =
        DateTime::from_timestamp(seconds, 0).ok_or(Reject::BadField("ctranstime"))?;
    let role = match non_empty(fields, "ctransrole") {
        Some(r) => {
            Role::parse(&r.to_ascii_uppercase()).map_err(|_| Reject::BadField("ctransrole"))?
        }
        None => Role::none(),
    };
    // v1.0 posts call the account amount `ctransamount`.
    let total_account_amount = match cents(fields, "caccountamount")? {
        Some(a) => Some(a),
        None => cents(fields, "ctransamount")?,
    };
    let owned = |name: &str| non_empty(fields, name).map(str::to_owned);

    Ok(Notification {
        role,
        receipt,
        transaction_type,
        transaction_time,
        vendor: owned("ctransvendor").or_else(|| owned("ctranspublisher")),
        affiliate: owned("ctransaffiliate"),
        total_account_amount,
        total_order_amount: cents(fields, "corderamount")?,
        total_tax_amount: cents(fields, "ctaxamount")?,
        total_shipping_amount: cents(fields, "cshippingamount")?,
        currency: owned("ccurrency"),
        version: owned("cnoticeversion"),
        attempt_count: 1,
        payload: payload_json(fields),
    })
}

/// A compact JSON object of every posted field (strings) in posted order. Built by hand
/// because `serde_json::Map` would sort the keys.
fn payload_json(fields: &[(String, String)]) -> String {
    let mut out = String::from("{");
    for (i, (name, value)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&json_string(name));
        out.push(':');
        out.push_str(&json_string(value));
    }
    out.push('}');
    out
}

fn json_string(s: &str) -> String {
    // Serialising a &str cannot fail; the fallback only avoids an unwrap.
    serde_json::to_string(s).unwrap_or_else(|_| String::from("\"\""))
}
