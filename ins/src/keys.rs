//! Account secrets and the AES key derived from them, and what each account accepts.

use std::fmt;

use secrecy::{ExposeSecret, SecretBox, SecretString};
use sha1::{Digest, Sha1};

/// One secret key of an account, with the AES-256 key derived from it once at startup.
pub struct AccountKey {
    secret: SecretString,
    aes: SecretBox<[u8; 32]>,
}

impl AccountKey {
    /// Derives the AES key from `secret` (see [`derive_aes_key`]).
    pub fn new(secret: SecretString) -> Self {
        let aes = SecretBox::init_with(|| derive_aes_key(secret.expose_secret()));
        Self { secret, aes }
    }

    /// The secret key itself (the demo-key check, `kaching doctor`'s shape check).
    pub fn secret(&self) -> &str {
        self.secret.expose_secret()
    }

    pub(crate) fn aes_key(&self) -> &[u8; 32] {
        self.aes.expose_secret()
    }
}

impl Clone for AccountKey {
    fn clone(&self) -> Self {
        Self::new(self.secret.clone())
    }
}

impl fmt::Debug for AccountKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccountKey([REDACTED])")
    }
}

/// Everything needed to authenticate notifications for one account.
#[derive(Clone, Debug)]
pub struct AccountKeys {
    pub name: super::AccountName,
    /// `[0]` is the current key, `[1..]` previous ones (rotation), tried in that order.
    pub keys: Vec<AccountKey>,
    /// Accept the pre-2014 form-encoded notifications verified by `cverify`.
    pub legacy_cverify: bool,
    /// Lowercase name of the header carrying the HMAC-SHA256 of plain JSON bodies;
    /// `None` turns HMAC mode off for this account.
    pub hmac_header: Option<String>,
}

/// ClickBank's key derivation: the ASCII bytes of the first 32 characters of the
/// lowercase hex SHA-1 of the secret. The hex text itself is the key, not its bytes.
pub(crate) fn derive_aes_key(secret: &str) -> [u8; 32] {
    let digest = Sha1::digest(secret.as_bytes());
    let mut hex_text = [0u8; 40];
    // 20 bytes always encode into exactly 40 characters.
    let _ = hex::encode_to_slice(digest, &mut hex_text);
    let mut key = [0u8; 32];
    for (k, h) in key.iter_mut().zip(hex_text.iter()) {
        *k = *h;
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_keys_match_the_vectors() {
        // aes_key_ascii of the two envelope fixtures.
        let cases = [
            ("01GA50AY4BYGZKG6", "7b1a85e536478e7119378baba2bb5044"),
            ("G3B7H7T87J2E0VFN", "5c4cb16b116f92f7f500caa4774103d8"),
        ];
        for (secret, key) in cases {
            assert_eq!(&derive_aes_key(secret), key.as_bytes());
            let k = AccountKey::new(SecretString::from(secret));
            assert_eq!(k.aes_key(), key.as_bytes());
            assert_eq!(k.clone().aes_key(), key.as_bytes());
        }
    }

    #[test]
    fn debug_is_redacted() {
        let k = AccountKey::new(SecretString::from("SECRETKEY123"));
        let keys = AccountKeys {
            name: super::super::AccountName::parse("main").unwrap(),
            keys: vec![k],
            legacy_cverify: false,
            hmac_header: None,
        };
        let shown = format!("{keys:?}");
        assert!(!shown.contains("SECRETKEY123"), "{shown}");
        assert!(shown.contains("REDACTED"));
    }
}
