//! Who may use the admin listener: a script with the bearer token (API and
//! `/metrics`), a person with a login session (everything), or anyone on
//! loopback when no credential is configured at all.
//!
//! A session is a signed cookie: `expiry.nonce.mac` with HMAC-SHA256 under
//! a key made at startup (a restart logs everybody out). Logging out
//! revokes the nonce until it would have expired. A state-changing request
//! carries a CSRF token, the MAC of the session's nonce under the same key.
//! Failed logins are limited per address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::{Argon2, PasswordHash, PasswordVerifier};
use axum::http::{header, HeaderMap};
use chrono::Utc;
use hmac::{Hmac, Mac};
use rand::RngCore;
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{Admin, Password};

/// The session cookie's name.
pub const COOKIE: &str = "kaching_session";
/// Failed logins an address may make per window before it must wait.
const MAX_FAILURES: u32 = 5;
const FAILURE_WINDOW: Duration = Duration::from_secs(15 * 60);

type HmacSha256 = Hmac<Sha256>;

/// A valid session: its nonce, and the CSRF token its forms carry.
#[derive(Debug, Clone)]
pub struct Session {
    nonce: String,
    expires: i64,
    pub csrf: String,
}

#[derive(Debug)]
pub struct Auth {
    token: Option<[u8; 32]>,
    password: Option<Password>,
    key: [u8; 32],
    ttl: Duration,
    /// Cookies get `Secure` when the listener serves TLS.
    pub secure: bool,
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
    revoked: Mutex<HashMap<String, i64>>,
}

/// Compared as digests, so the comparison's time says nothing about the
/// secret's length or content.
fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

impl Auth {
    pub fn new(admin: &Admin) -> Auth {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        Auth {
            token: admin
                .token
                .as_ref()
                .map(|t| digest(t.expose_secret().as_bytes())),
            password: admin.password.clone(),
            key,
            ttl: admin.session,
            secure: admin.tls(),
            failures: Mutex::new(HashMap::new()),
            revoked: Mutex::new(HashMap::new()),
        }
    }

    /// The CSRF token of an open dashboard (loopback, no credential): its
    /// forms carry one too, so a page of another site cannot post to it.
    pub fn open_csrf(&self) -> String {
        self.mac(&[b"csrf", b"open"])
    }

    /// No credential configured: open (on loopback only; config enforces it).
    pub fn open(&self) -> bool {
        self.token.is_none() && self.password.is_none()
    }

    /// Whether a login form can succeed: a password, or else the token.
    pub fn has_login(&self) -> bool {
        self.password.is_some() || self.token.is_some()
    }

    /// `Authorization: Bearer <token>` matches.
    pub fn bearer(&self, headers: &HeaderMap) -> bool {
        let Some(expected) = &self.token else {
            return false;
        };
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|t| bool::from(digest(t.trim().as_bytes()).ct_eq(expected)))
    }

    fn mac(&self, parts: &[&[u8]]) -> String {
        // An HMAC takes a key of any length: `new_from_slice` cannot fail here.
        let Ok(mut mac) = HmacSha256::new_from_slice(&self.key) else {
            return String::new();
        };
        for p in parts {
            mac.update(p);
            mac.update(b"\n");
        }
        hex::encode(mac.finalize().into_bytes())
    }

    /// The session of the request's cookie, if it is valid.
    pub fn session(&self, headers: &HeaderMap) -> Option<Session> {
        let value = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))?;
        let mut parts = value.splitn(3, '.');
        let (expires, nonce, mac) = (parts.next()?, parts.next()?, parts.next()?);
        let expected = self.mac(&[b"session", expires.as_bytes(), nonce.as_bytes()]);
        if !bool::from(expected.as_bytes().ct_eq(mac.as_bytes())) {
            return None;
        }
        let expires: i64 = expires.parse().ok()?;
        if expires <= Utc::now().timestamp() {
            return None;
        }
        if self.revoked.lock().ok()?.contains_key(nonce) {
            return None;
        }
        Some(Session {
            csrf: self.mac(&[b"csrf", nonce.as_bytes()]),
            nonce: nonce.to_owned(),
            expires,
        })
    }

    /// The `Set-Cookie` of a new session.
    pub fn new_session(&self) -> String {
        let mut nonce = [0u8; 16];
        rand::rng().fill_bytes(&mut nonce);
        let nonce = hex::encode(nonce);
        let expires = Utc::now().timestamp() + self.ttl.as_secs() as i64;
        let mac = self.mac(&[b"session", expires.to_string().as_bytes(), nonce.as_bytes()]);
        self.cookie(&format!("{expires}.{nonce}.{mac}"), self.ttl.as_secs())
    }

    /// Revokes `session`; the `Set-Cookie` that clears it.
    pub fn end_session(&self, session: &Session) -> String {
        if let Ok(mut revoked) = self.revoked.lock() {
            let now = Utc::now().timestamp();
            revoked.retain(|_, exp| *exp > now);
            revoked.insert(session.nonce.clone(), session.expires);
        }
        self.cookie("", 0)
    }

    fn cookie(&self, value: &str, max_age: u64) -> String {
        let secure = if self.secure { "; Secure" } else { "" };
        format!("{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}")
    }

    /// The form's CSRF token is the session's.
    pub fn csrf_ok(&self, session: &Session, given: &str) -> bool {
        bool::from(session.csrf.as_bytes().ct_eq(given.as_bytes()))
    }

    /// `Some(wait)` when `ip` failed too often lately.
    pub fn locked_out(&self, ip: IpAddr) -> Option<Duration> {
        let failures = self.failures.lock().ok()?;
        let (n, since) = failures.get(&ip)?;
        let elapsed = since.elapsed();
        (*n >= MAX_FAILURES && elapsed < FAILURE_WINDOW).then(|| FAILURE_WINDOW - elapsed)
    }

    /// Checks a login; counts a failure against `ip`. Argon2 takes its
    /// time, so this runs on a blocking thread.
    pub async fn login(&self, ip: IpAddr, password: &str) -> bool {
        let ok = match &self.password {
            Some(Password::Hash(phc)) => {
                let (phc, given) = (phc.clone(), password.to_owned());
                tokio::task::spawn_blocking(move || {
                    PasswordHash::new(&phc).is_ok_and(|h| {
                        Argon2::default()
                            .verify_password(given.as_bytes(), &h)
                            .is_ok()
                    })
                })
                .await
                .unwrap_or(false)
            }
            Some(Password::Plain(p)) => {
                bool::from(digest(password.as_bytes()).ct_eq(&digest(p.expose_secret().as_bytes())))
            }
            None => self
                .token
                .is_some_and(|t| bool::from(digest(password.as_bytes()).ct_eq(&t))),
        };
        if let Ok(mut failures) = self.failures.lock() {
            if ok {
                failures.remove(&ip);
            } else {
                let entry = failures.entry(ip).or_insert((0, Instant::now()));
                if entry.1.elapsed() >= FAILURE_WINDOW {
                    *entry = (0, Instant::now());
                }
                entry.0 += 1;
                // Bounded: forget the oldest addresses under a flood.
                if failures.len() > 10_000 {
                    failures.retain(|_, (_, since)| since.elapsed() < FAILURE_WINDOW);
                }
            }
        }
        ok
    }
}

/// `kaching admin hash-password`: an argon2id PHC string of `password`.
pub fn hash_password(password: &str) -> Result<String, argon2::password_hash::Error> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    let salt = SaltString::encode_b64(&bytes)?;
    Ok(Argon2::default()
        .hash_password(password.as_bytes(), &salt)?
        .to_string())
}
