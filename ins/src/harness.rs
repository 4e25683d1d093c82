//! The fuzz targets' bodies (`fuzz/`, run with cargo-afl), here so that the
//! ordinary test suite replays every committed seed and every input a fuzz
//! run ever crashed on (`fuzz/corpus/`, `fuzz/regressions/`) through the
//! same checks. Each function panics when a property fails; any other
//! panic is a bug in this crate.
//!
//! Compiled for tests and with the `harness` feature (the fuzz crate's).

use secrecy::SecretString;

use crate::{AccountKey, AccountKeys, AccountName, Authenticated, BodyForm, Recognised};

/// The keys of the seed corpus: the real vectors' (`tests/fixtures`).
pub const ENVELOPE_KEYS: [&str; 3] = ["NEWKEY00000001", "G3B7H7T87J2E0VFN", "01GA50AY4BYGZKG6"];
pub const LEGACY_KEY: &str = "76AFC0778E648BDA05705047BAFA96ED";
pub const HMAC_KEY: &str = "HMACKEY0000001";
pub const HMAC_HEADER: &str = "x-kaching-signature";
/// The targets, by name (a directory of `fuzz/corpus/` each).
pub const TARGETS: [&str; 4] = ["authenticate", "plaintext", "legacy", "hmac"];

/// The accounts a fuzzed body is tried against: an AES envelope account with
/// previous keys, a legacy `cverify` account, an HMAC account.
pub struct Harness {
    accounts: Vec<AccountKeys>,
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}

fn account(name: &str, keys: &[&str], legacy: bool, hmac: bool) -> AccountKeys {
    AccountKeys {
        name: AccountName::parse(name).expect("a valid name"),
        keys: keys
            .iter()
            .map(|k| AccountKey::new(SecretString::from((*k).to_owned())))
            .collect(),
        legacy_cverify: legacy,
        hmac_header: hmac.then(|| HMAC_HEADER.to_owned()),
    }
}

impl Harness {
    pub fn new() -> Harness {
        Harness {
            accounts: vec![
                account("envelope", &ENVELOPE_KEYS, false, false),
                account("legacy", &[LEGACY_KEY], true, false),
                account("hmac", &[HMAC_KEY], false, true),
            ],
        }
    }

    /// Runs target `name` (one of [`TARGETS`]) on `data`.
    pub fn run(&self, name: &str, data: &[u8]) {
        match name {
            "authenticate" => self.authenticate(data),
            "plaintext" => self.plaintext(data),
            "legacy" => self.legacy(data),
            "hmac" => self.hmac(data),
            other => panic!("no fuzz target {other}"),
        }
    }

    fn refs(&self) -> Vec<&AccountKeys> {
        self.accounts.iter().collect()
    }

    /// What must hold of anything authenticated: an account tried, a key it
    /// has, a form it accepts, a notification whose values stay in shape.
    fn check(&self, auth: &Authenticated) {
        let account = self
            .accounts
            .iter()
            .find(|a| a.name == auth.account)
            .expect("authenticated for an account that was tried");
        assert!(auth.key_index < account.keys.len());
        match auth.form {
            BodyForm::LegacyForm => assert!(account.legacy_cverify),
            BodyForm::PlainJson => assert!(account.hmac_header.is_some()),
            BodyForm::Envelope | BodyForm::OrdersApi => {}
        }
        assert!(!auth.notification.receipt.as_str().is_empty());
        let _ = format!("{:?}", auth.notification);
    }

    /// Any bytes as a post's body (and, after a 0xFF byte, as the HMAC
    /// header): recognition, then authentication against every account.
    pub fn authenticate(&self, data: &[u8]) {
        let (body, signature) = match data.iter().position(|&b| b == 0xFF) {
            Some(i) => (&data[..i], std::str::from_utf8(&data[i + 1..]).ok()),
            None => (data, None),
        };
        let header = |name: &str| signature.filter(|_| name == HMAC_HEADER);
        let form = crate::recognise(body);
        match Recognised::parse(body) {
            Some(recognised) => {
                assert_eq!(Some(recognised.form()), form);
                if let Ok(auth) = recognised.authenticate(body, &header, &self.refs()) {
                    self.check(&auth);
                }
            }
            None => assert!(form.is_none()),
        }
    }

    /// Any text as the plaintext inside a genuine AES envelope: the decoder
    /// behind a right key, through the whole envelope path (JSON, base64,
    /// AES-CBC, padding). The envelope authenticates exactly when the text
    /// decodes on its own, to the same notification; on its own once the
    /// envelope's trim of 0x00-0x1A at both ends (ClickBank's PHP sample's)
    /// is applied, as the first fuzz run found.
    pub fn plaintext(&self, data: &[u8]) {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        let trimmed = text.trim_matches(|c: char| c <= '\u{1a}');
        let alone = crate::decode_plaintext(trimmed.to_owned());
        let body = crate::encrypt(ENVELOPE_KEYS[1], data, [7; 16]);
        let recognised = Recognised::parse(body.as_bytes()).expect("an envelope is recognised");
        let sealed = recognised.authenticate(body.as_bytes(), &|_| None, &self.refs());
        match (alone, sealed) {
            (Ok(n), Ok(auth)) => {
                assert_eq!(auth.key_index, 1);
                assert_eq!(n.receipt, auth.notification.receipt);
                self.check(&auth);
            }
            (Err(_), Err(_)) => {}
            (alone, sealed) => panic!(
                "decoding alone and in an envelope disagree: {} / {}",
                alone.is_ok(),
                sealed.is_ok()
            ),
        }
    }

    /// Any bytes as a legacy form body, given its right `cverify`: the field
    /// parsing, the checksum and the v1-v4 decoder behind it.
    pub fn legacy(&self, data: &[u8]) {
        let fields: Vec<(String, String)> = form_urlencoded::parse(data)
            .into_owned()
            .filter(|(k, _)| k != "cverify")
            .collect();
        let cverify = crate::legacy_cverify(&fields, LEGACY_KEY);
        let mut body = form_urlencoded::Serializer::new(String::new());
        body.extend_pairs(&fields).append_pair("cverify", &cverify);
        let body = body.finish();
        if let Some(recognised) = Recognised::parse(body.as_bytes()) {
            if let Ok(auth) = recognised.authenticate(body.as_bytes(), &|_| None, &self.refs()) {
                self.check(&auth);
            }
        }
    }

    /// Any bytes as a plain JSON body signed with the right HMAC: the HMAC
    /// mode's checks and the decoder behind them.
    pub fn hmac(&self, data: &[u8]) {
        let signature = crate::hmac_hex(HMAC_KEY, data);
        let header = |name: &str| (name == HMAC_HEADER).then_some(signature.as_str());
        if let Some(recognised) = Recognised::parse(data) {
            if let Ok(auth) = recognised.authenticate(data, &header, &self.refs()) {
                self.check(&auth);
                if auth.form == BodyForm::PlainJson {
                    assert_eq!(auth.account.as_str(), "hmac");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every committed seed and every regression (an input a fuzz run once
    /// crashed on) passes its target's checks.
    #[test]
    fn the_corpus_and_every_regression_pass() {
        let h = Harness::new();
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
        let mut seen = 0;
        for dir in ["corpus", "regressions"] {
            for target in TARGETS {
                let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
                    continue;
                };
                for entry in entries {
                    let path = entry.expect("a directory entry").path();
                    let data = std::fs::read(&path).expect("a seed");
                    let outcome = std::panic::catch_unwind(|| h.run(target, &data));
                    assert!(outcome.is_ok(), "{target} fails on {}", path.display());
                    seen += 1;
                }
            }
        }
        assert!(
            seen >= 12,
            "only {seen} seeds found under {}",
            root.display()
        );
    }
}
