//! The current ClickBank format (v6.0+): `{"notification":"<base64>","iv":"<base64>"}`,
//! AES-256-CBC with PKCS#7 under a key derived from the account's secret.
//!
//! There is no MAC: a body is genuine only because it decrypts with valid padding into
//! the expected JSON. Every failure here therefore ends in the same `Rejected` outcome;
//! the reasons only feed the log.

use aes::cipher::{block_padding::Pkcs7, BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::{alphabet, Engine as _};
use rand::Rng as _;
use serde::Deserialize;

use super::keys::derive_aes_key;
use super::{plaintext, AccountKeys, Authenticated, BodyForm, InsError, Reject};

type Aes256CbcDec = cbc::Decryptor<aes::Aes256>;
type Aes256CbcEnc = cbc::Encryptor<aes::Aes256>;

/// AES block size, and the IV length.
const BLOCK: usize = 16;

/// Standard alphabet, padding optional: some senders drop the trailing `=`.
const LENIENT_B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The two members of an envelope body, JSON-decoded (so `\/` escapes are undone).
#[derive(Deserialize)]
pub(crate) struct Wire {
    notification: String,
    iv: String,
}

impl Wire {
    /// Reads `body` as an envelope: a JSON object whose `notification` and `iv` are strings.
    ///
    /// If the body is not valid JSON but becomes an envelope once every ASCII whitespace
    /// byte is removed, it is accepted too: captured bodies wrap the base64 every 76
    /// characters, and a raw line break inside a JSON string is invalid JSON. Removing
    /// whitespace cannot alter the base64 (it is stripped anyway) nor the member names.
    pub(crate) fn parse(body: &[u8]) -> Option<Self> {
        Self::parse_strict(body).or_else(|| Self::parse_lenient(body))
    }

    /// Only for bodies that are not valid JSON (see [`Wire::parse`]).
    pub(crate) fn parse_lenient(body: &[u8]) -> Option<Self> {
        let compact: Vec<u8> = body
            .iter()
            .copied()
            .filter(|b| !b.is_ascii_whitespace())
            .collect();
        Self::parse_strict(&compact)
    }

    pub(crate) fn parse_strict(body: &[u8]) -> Option<Self> {
        // serde would also read the struct from a JSON array: insist on an object.
        if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return None;
        }
        serde_json::from_slice(body).ok()
    }

    /// Base64-decodes both members and checks the lengths; independent of the key.
    fn decode(&self) -> Result<([u8; BLOCK], Vec<u8>), Reject> {
        let iv = b64_decode(&self.iv)?;
        let iv: [u8; BLOCK] = iv.try_into().map_err(|_| Reject::BadIvLength)?;
        let ciphertext = b64_decode(&self.notification)?;
        if ciphertext.is_empty() || ciphertext.len() % BLOCK != 0 {
            return Err(Reject::BadCiphertextLength);
        }
        Ok((iv, ciphertext))
    }
}

fn b64_decode(s: &str) -> Result<Vec<u8>, Reject> {
    let compact: String = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    LENIENT_B64.decode(compact).map_err(|_| Reject::BadBase64)
}

/// AES-256-CBC with strict PKCS#7 unpadding, then the 0x00–0x1A trim of ClickBank's PHP
/// sample, then UTF-8.
fn decrypt_text(key: &[u8; 32], iv: &[u8; BLOCK], ciphertext: &[u8]) -> Result<String, Reject> {
    let plain = Aes256CbcDec::new(key.into(), iv.into())
        .decrypt_padded_vec_mut::<Pkcs7>(ciphertext)
        .map_err(|_| Reject::NoKeyDecrypts)?;
    let is_trimmed = |b: &u8| *b <= 0x1a;
    let start = plain
        .iter()
        .position(|b| !is_trimmed(b))
        .unwrap_or(plain.len());
    let end = plain
        .iter()
        .rposition(|b| !is_trimmed(b))
        .map_or(start, |i| i + 1);
    let trimmed = plain.get(start..end).unwrap_or_default();
    String::from_utf8(trimmed.to_vec()).map_err(|_| Reject::BadUtf8)
}

/// Tries every key of every account in order; the first that decodes wins.
pub(crate) fn authenticate(
    wire: &Wire,
    accounts: &[&AccountKeys],
) -> Result<Authenticated, Reject> {
    if accounts.iter().all(|a| a.keys.is_empty()) {
        return Err(Reject::NoAccountForForm);
    }
    let (iv, ciphertext) = wire.decode()?;
    let mut best = None;
    for account in accounts {
        for (key_index, key) in account.keys.iter().enumerate() {
            let decoded = decrypt_text(key.aes_key(), &iv, &ciphertext).and_then(plaintext::decode);
            match decoded {
                Ok(notification) => {
                    return Ok(Authenticated {
                        account: account.name.clone(),
                        key_index,
                        form: BodyForm::Envelope,
                        notification,
                    })
                }
                Err(e) => Reject::keep_most_advanced(&mut best, e),
            }
        }
    }
    Err(best.unwrap_or(Reject::NoKeyDecrypts))
}

/// Encrypts `plaintext` as ClickBank does and returns the exact compact body
/// `{"notification":"…","iv":"…"}` (for the CLI, tests and load generation).
pub fn encrypt(secret: &str, plaintext: &[u8], iv: [u8; 16]) -> String {
    let key = derive_aes_key(secret);
    let ciphertext =
        Aes256CbcEnc::new((&key).into(), (&iv).into()).encrypt_padded_vec_mut::<Pkcs7>(plaintext);
    // Base64 never needs JSON escaping.
    format!(
        r#"{{"notification":"{}","iv":"{}"}}"#,
        STANDARD.encode(ciphertext),
        STANDARD.encode(iv)
    )
}

/// A fresh IV in ClickBank's style: 16 random uppercase hex characters, used as bytes.
pub fn random_iv() -> [u8; 16] {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut iv = [0u8; 16];
    rand::rng().fill(&mut iv);
    for b in &mut iv {
        // The mask keeps the index below 16.
        *b = HEX[usize::from(*b & 0x0f)];
    }
    iv
}

/// The plaintext of an envelope body under one secret (for `kaching decrypt`). Checks
/// padding and UTF-8, not the JSON shape, so a malformed notification can be inspected.
pub fn decrypt(secret: &str, body: &[u8]) -> Result<String, InsError> {
    let wire = Wire::parse(body).ok_or(InsError::Unrecognised)?;
    let (iv, ciphertext) = wire.decode()?;
    Ok(decrypt_text(&derive_aes_key(secret), &iv, &ciphertext)?)
}
