//! ClickBank Instant Notifications: recognise the body form from raw bytes, authenticate
//! it against the candidate accounts' keys, decode it into a normalised [`Notification`].
//!
//! Pure: no HTTP types, no I/O. Files: `form` (recognition), `envelope` (AES, v6.0+),
//! `legacy` (form + `cverify`), `hmac` (HMAC-SHA256 mode), `plaintext` (the JSON shape),
//! `types` (checked values), `keys` (secrets), `error` (the boundary's error).

mod envelope;
mod error;
mod form;
mod hmac;
mod keys;
mod legacy;
mod plaintext;
mod types;

#[cfg(test)]
mod tests;

pub use envelope::{decrypt, encrypt, random_iv};
pub use error::{InsError, Reject};
pub use form::{recognise, BodyForm};
pub use hmac::hmac_hex;
pub use keys::{AccountKey, AccountKeys};
pub use legacy::legacy_cverify;
pub use types::{AccountName, Notification, Receipt, Role, TransactionType};

use form::Classified;

/// A notification that proved genuine, with who it is for and how it proved it.
#[derive(Clone, Debug)]
pub struct Authenticated {
    pub account: AccountName,
    /// Index into [`AccountKeys::keys`]: 0 is the current key, more means a previous one.
    pub key_index: usize,
    pub form: BodyForm,
    pub notification: Notification,
}

/// Recognises `body`, authenticates it against `accounts` (in order, each key in order;
/// the first success wins) and decodes it.
///
/// `header` looks up a request header by lowercase name (HMAC mode only). On failure the
/// [`Reject`] is the most advanced one over all accounts and keys tried.
pub fn authenticate<'h>(
    body: &[u8],
    header: &dyn Fn(&str) -> Option<&'h str>,
    accounts: &[&AccountKeys],
) -> Result<Authenticated, InsError> {
    let classified = form::classify(body).ok_or(InsError::Unrecognised)?;
    let result = match &classified {
        Classified::Envelope(wire) => envelope::authenticate(wire, accounts),
        Classified::LegacyForm(fields) => legacy::authenticate(fields, accounts),
        Classified::PlainJson => hmac::authenticate(body, header, accounts),
    };
    result.map_err(InsError::Rejected)
}
