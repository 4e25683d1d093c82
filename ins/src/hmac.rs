//! HMAC-SHA256 mode (not ClickBank's own scheme): a plain JSON notification in the v6
//! plaintext shape, with a header carrying the hex HMAC of the raw body under the
//! account's secret. For relays and for testing with curl.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::{plaintext, AccountKeys, Authenticated, BodyForm, Reject};

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &str, body: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length; the error arm cannot happen.
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| HmacSha256::new(&Default::default()));
    mac.update(body);
    mac
}

/// Lowercase hex HMAC-SHA256 of `body` under `secret` (UTF-8 bytes).
pub fn hmac_hex(secret: &str, body: &[u8]) -> String {
    hex::encode(mac(secret, body).finalize().into_bytes())
}

/// The signature bytes of a header value: hex in any case, optionally `sha256=`-prefixed.
fn signature_bytes(value: &str) -> Option<Vec<u8>> {
    let value = value.trim();
    let hex_part = match value.get(..7) {
        Some(prefix) if prefix.eq_ignore_ascii_case("sha256=") => value.get(7..)?,
        _ => value,
    };
    hex::decode(hex_part).ok()
}

/// Checks the signature header of every account with HMAC mode on, under each key in
/// order; the first match decodes the body.
pub(crate) fn authenticate<'h>(
    body: &[u8],
    header: &dyn Fn(&str) -> Option<&'h str>,
    accounts: &[&AccountKeys],
) -> Result<Authenticated, Reject> {
    let mut best = None;
    let mut any_candidate = false;
    for account in accounts {
        let Some(name) = account.hmac_header.as_deref() else {
            continue;
        };
        if account.keys.is_empty() {
            continue;
        }
        any_candidate = true;
        let Some(value) = header(&name.to_ascii_lowercase()) else {
            Reject::keep_most_advanced(&mut best, Reject::MissingSignature);
            continue;
        };
        let Some(signature) = signature_bytes(value) else {
            Reject::keep_most_advanced(&mut best, Reject::BadSignature);
            continue;
        };
        for (key_index, key) in account.keys.iter().enumerate() {
            // `verify_slice` compares in constant time.
            if mac(key.secret(), body).verify_slice(&signature).is_err() {
                Reject::keep_most_advanced(&mut best, Reject::BadSignature);
                continue;
            }
            // Authentic: a decoding error is final, the body is the same under any key.
            let text = String::from_utf8(body.to_vec()).map_err(|_| Reject::BadUtf8)?;
            return Ok(Authenticated {
                account: account.name.clone(),
                key_index,
                form: BodyForm::PlainJson,
                notification: plaintext::decode(text)?,
            });
        }
    }
    if !any_candidate {
        return Err(Reject::NoAccountForForm);
    }
    Err(best.unwrap_or(Reject::BadSignature))
}
