//! ClickBank Instant Notifications: recognise the body form from raw bytes, authenticate
//! it against the candidate accounts' keys, decode it into a normalised [`Notification`].
//!
//! A crate of its own (`kaching-ins`, re-exported by the daemon as `kaching::ins`)
//! so that it builds alone: the fuzz targets in `fuzz/` instrument it and its
//! few dependencies, not the daemon's.
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

#[cfg(any(test, feature = "harness"))]
pub mod harness;
#[cfg(test)]
mod tests;

pub use envelope::{decrypt, encrypt, random_iv};
pub use error::{InsError, Reject};
pub use form::{recognise, BodyForm};
pub use hmac::hmac_hex;
pub use keys::{AccountKey, AccountKeys};
pub use legacy::legacy_cverify;
pub use plaintext::decode as decode_plaintext;
pub use plaintext::money;
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

/// A body whose form is recognised, parsed just enough to authenticate it: the
/// caller decides on the form (a 400, a rate limit) and then authenticates it
/// with [`Recognised::authenticate`], without parsing the body a second time.
pub struct Recognised(Classified);

impl Recognised {
    /// Which form `body` is, or `None` (the caller answers 400). See [`recognise`].
    pub fn parse(body: &[u8]) -> Option<Recognised> {
        form::classify(body).map(Recognised)
    }

    pub fn form(&self) -> BodyForm {
        self.0.form()
    }

    /// Authenticates `body` (the same bytes it was recognised from) against
    /// `accounts`; see [`authenticate`].
    pub fn authenticate<'h>(
        &self,
        body: &[u8],
        header: &dyn Fn(&str) -> Option<&'h str>,
        accounts: &[&AccountKeys],
    ) -> Result<Authenticated, Reject> {
        match &self.0 {
            Classified::Envelope(wire) => envelope::authenticate(wire, accounts),
            Classified::LegacyForm(fields) => legacy::authenticate(fields, accounts),
            Classified::PlainJson => hmac::authenticate(body, header, accounts),
        }
    }
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
    Recognised::parse(body)
        .ok_or(InsError::Unrecognised)?
        .authenticate(body, header, accounts)
        .map_err(InsError::Rejected)
}
