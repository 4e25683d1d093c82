//! The one error type of the INS boundary, and the reasons a body was rejected.
//!
//! The caller maps [`InsError`] to a status: `Unrecognised` to 400, every `Rejected` to one
//! fixed 403. The [`Reject`] reason is for the local log only: telling the sender which
//! step failed would turn CBC decryption into a padding oracle.

use std::fmt;

/// Why an INS body could not be turned into a notification.
#[derive(thiserror::Error, Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsError {
    /// Not an envelope, a JSON object or a legacy form: the caller answers 400.
    #[error("body is not a recognised INS form")]
    Unrecognised,
    /// Recognised but not authentic or not decodable: the caller answers 403.
    #[error("rejected: {0}")]
    Rejected(Reject),
}

/// The reason for a rejection, for the log only. Never holds secrets or customer data:
/// the `&'static str` payloads are field names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reject {
    /// No candidate account accepts this form (legacy off, no HMAC header configured).
    NoAccountForForm,
    /// A base64 string of the envelope does not decode.
    BadBase64,
    /// The envelope's IV does not decode to 16 bytes.
    BadIvLength,
    /// The ciphertext is empty or not a whole number of AES blocks.
    BadCiphertextLength,
    /// The PKCS#7 padding is invalid under every key tried.
    NoKeyDecrypts,
    /// The plaintext (or the plain JSON body) is not UTF-8.
    BadUtf8,
    /// The plaintext is not a JSON object of the expected shape.
    BadJson,
    /// A required field is absent, null or empty.
    MissingField(&'static str),
    /// A field has the wrong type or an unparseable value.
    BadField(&'static str),
    /// A legacy form posts the same field name twice.
    DuplicateField,
    /// The legacy `cverify` does not match under any key.
    BadCverify,
    /// HMAC mode: the configured header is absent.
    MissingSignature,
    /// HMAC mode: the header is not hex, or the HMAC does not match.
    BadSignature,
}

impl Reject {
    /// How far the body got before failing. When several accounts and keys are tried, the
    /// highest stage is the one worth logging: a key that unpadded into bad JSON says more
    /// than "no key decrypts".
    pub(crate) fn stage(self) -> u8 {
        match self {
            Reject::NoAccountForForm => 0,
            Reject::BadBase64 | Reject::DuplicateField | Reject::MissingSignature => 1,
            Reject::BadIvLength | Reject::BadSignature | Reject::BadCverify => 2,
            Reject::BadCiphertextLength => 3,
            Reject::NoKeyDecrypts => 4,
            Reject::BadUtf8 => 5,
            Reject::BadJson => 6,
            Reject::MissingField(_) => 7,
            Reject::BadField(_) => 8,
        }
    }

    /// Keeps the more advanced of two failures (the earlier one on a tie).
    pub(crate) fn keep_most_advanced(best: &mut Option<Reject>, new: Reject) {
        if best.is_none_or(|b| new.stage() > b.stage()) {
            *best = Some(new);
        }
    }
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reject::NoAccountForForm => f.write_str("no candidate account accepts this body form"),
            Reject::BadBase64 => f.write_str("bad base64"),
            Reject::BadIvLength => f.write_str("iv is not 16 bytes"),
            Reject::BadCiphertextLength => {
                f.write_str("ciphertext is empty or not a multiple of 16 bytes")
            }
            Reject::NoKeyDecrypts => f.write_str("bad padding under every key"),
            Reject::BadUtf8 => f.write_str("plaintext is not UTF-8"),
            Reject::BadJson => f.write_str("plaintext is not a JSON object of the INS shape"),
            Reject::MissingField(name) => write!(f, "missing field {name}"),
            Reject::BadField(name) => write!(f, "bad field {name}"),
            Reject::DuplicateField => f.write_str("a form field is posted twice"),
            Reject::BadCverify => f.write_str("cverify does not match"),
            Reject::MissingSignature => f.write_str("signature header missing"),
            Reject::BadSignature => f.write_str("signature does not match"),
        }
    }
}

impl From<Reject> for InsError {
    fn from(r: Reject) -> Self {
        InsError::Rejected(r)
    }
}
