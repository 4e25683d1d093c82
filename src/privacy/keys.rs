//! The data keys: field-level encryption of customer data with
//! XChaCha20-Poly1305 (RustCrypto's `chacha20poly1305`). A sealed value is
//! `v1.<key id>.<base64 of nonce ‖ ciphertext>`: the key id says which key
//! opens it (so rotation keeps old rows readable), the 24-byte nonce is
//! random, and the associated data binds it to its row (a ciphertext copied
//! to another row does not open). The blind index is HMAC-SHA256 under a key
//! derived from the data key with HKDF, so lookups by email need no
//! decryption.

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use rand::RngCore as _;
use sha2::{Digest, Sha256};

/// A data key is this many random bytes, written as base64.
pub const KEY_BYTES: usize = 32;
const PREFIX: &str = "v1";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("is not base64 of {KEY_BYTES} bytes")]
    Malformed,
    #[error(
        "was sealed under key {0}, which is neither the data key nor one of previous_data_keys"
    )]
    UnknownKey(String),
    #[error(
        "does not decrypt: the key is wrong, or the value was altered or belongs to another row"
    )]
    Corrupt,
    #[error("is not a sealed value")]
    NotSealed,
}

struct Key {
    id: String,
    cipher: XChaCha20Poly1305,
    /// The blind-index key derived from this key.
    index: [u8; 32],
}

impl Key {
    fn parse(text: &str) -> Result<Key, KeyError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| KeyError::Malformed)?;
        if bytes.len() != KEY_BYTES {
            return Err(KeyError::Malformed);
        }
        let mut index = [0u8; 32];
        hkdf::Hkdf::<Sha256>::new(Some(b"kaching"), &bytes)
            .expand(b"blind index v1", &mut index)
            .map_err(|_| KeyError::Malformed)?;
        Ok(Key {
            index,
            id: key_id(&bytes),
            cipher: XChaCha20Poly1305::new_from_slice(&bytes).map_err(|_| KeyError::Malformed)?,
        })
    }
}

/// 8 hex digits of the SHA-256 of a key: names it without revealing it.
fn key_id(bytes: &[u8]) -> String {
    let digest = Sha256::digest([b"kaching key id\0".as_slice(), bytes].concat());
    hex::encode(&digest[..4])
}

/// The current data key and the previous ones.
pub struct DataKeys {
    current: Key,
    previous: Vec<Key>,
}

impl std::fmt::Debug for DataKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataKeys")
            .field("current", &self.current.id)
            .field(
                "previous",
                &self.previous.iter().map(|k| &k.id).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// A new random key, base64 (`kaching keys generate`).
pub fn generate() -> String {
    let mut bytes = [0u8; KEY_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

impl DataKeys {
    /// From the current key and the previous ones, all base64.
    pub fn new(current: &str, previous: &[&str]) -> Result<DataKeys, KeyError> {
        let current_key = Key::parse(current)?;
        let previous = previous
            .iter()
            .map(|p| Key::parse(p))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(DataKeys {
            current: current_key,
            previous,
        })
    }

    /// The current key's id.
    pub fn current_id(&self) -> &str {
        &self.current.id
    }

    /// Whether `id` is a key this configuration has.
    pub fn knows(&self, id: &str) -> bool {
        self.current.id == id || self.previous.iter().any(|k| k.id == id)
    }

    /// Seals `plaintext` for the row `aad` names.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> String {
        let mut nonce = [0u8; 24];
        rand::rng().fill_bytes(&mut nonce);
        // Encryption with a valid key and nonce cannot fail.
        let ct = self
            .current
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .unwrap_or_default();
        let mut body = nonce.to_vec();
        body.extend_from_slice(&ct);
        format!(
            "{PREFIX}.{}.{}",
            self.current.id,
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(body)
        )
    }

    /// Opens a sealed value of the row `aad` names.
    pub fn open(&self, aad: &[u8], sealed: &str) -> Result<Vec<u8>, KeyError> {
        let id = sealed_key_id(sealed).ok_or(KeyError::NotSealed)?;
        let key = std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| k.id == id)
            .ok_or_else(|| KeyError::UnknownKey(id.to_owned()))?;
        let body = sealed
            .rsplit('.')
            .next()
            .and_then(|b| {
                base64::engine::general_purpose::STANDARD_NO_PAD
                    .decode(b)
                    .ok()
            })
            .filter(|b| b.len() > 24)
            .ok_or(KeyError::Corrupt)?;
        let (nonce, ct) = body.split_at(24);
        key.cipher
            .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad })
            .map_err(|_| KeyError::Corrupt)
    }

    /// The blind index of an email address under the current key:
    /// HMAC-SHA256 of it trimmed and lowercased, hex.
    pub fn email_index(&self, email: &str) -> String {
        index_of(&self.current, email)
    }

    /// Its blind index under every key (rows sealed before a rotation and
    /// not rewrapped yet carry an older key's).
    pub fn email_indexes(&self, email: &str) -> Vec<String> {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .map(|k| index_of(k, email))
            .collect()
    }
}

fn index_of(key: &Key, email: &str) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key.index).expect("HMAC takes any key");
    mac.update(email.trim().to_lowercase().as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// The key id a sealed value names, if it is one.
pub fn sealed_key_id(sealed: &str) -> Option<&str> {
    let mut parts = sealed.splitn(3, '.');
    (parts.next()? == PREFIX).then_some(())?;
    let id = parts.next()?;
    parts.next()?;
    Some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_opens_for_its_row_only_and_under_a_previous_key() {
        let old = generate();
        let keys = DataKeys::new(&old, &[]).unwrap();
        let sealed = keys.seal(b"row 1", b"zoe@example.com");
        assert!(!sealed.contains("zoe"));
        assert_eq!(keys.open(b"row 1", &sealed).unwrap(), b"zoe@example.com");
        assert_eq!(keys.open(b"row 2", &sealed), Err(KeyError::Corrupt));
        // Two seals of one value differ (random nonces).
        assert_ne!(keys.seal(b"row 1", b"x"), keys.seal(b"row 1", b"x"));
        // Rotated: the old key as a previous one still opens it.
        let new = generate();
        let rotated = DataKeys::new(&new, &[&old]).unwrap();
        assert_eq!(rotated.open(b"row 1", &sealed).unwrap(), b"zoe@example.com");
        assert!(rotated.seal(b"r", b"x").contains(rotated.current_id()));
        // Without it: named, not garbage.
        let without = DataKeys::new(&new, &[]).unwrap();
        assert!(matches!(
            without.open(b"row 1", &sealed),
            Err(KeyError::UnknownKey(_))
        ));
        assert_eq!(DataKeys::new("short", &[]).err(), Some(KeyError::Malformed));
    }

    #[test]
    fn the_blind_index_ignores_case_and_spaces_and_depends_on_the_key() {
        let keys = DataKeys::new(&generate(), &[]).unwrap();
        assert_eq!(
            keys.email_index(" Zoe@Example.com "),
            keys.email_index("zoe@example.com")
        );
        let other = DataKeys::new(&generate(), &[]).unwrap();
        assert_ne!(
            keys.email_index("zoe@example.com"),
            other.email_index("zoe@example.com")
        );
    }
}
