//! `tls.mode = "acme"`: kaching obtains its certificate from an ACME CA
//! (Let's Encrypt by default) and renews it while serving, the way Caddy
//! does. instant-acme speaks the protocol; this module answers the
//! challenges, decides when to renew, and keeps the cache.
//!
//! - **Start.** The cached certificate (`cache_dir/cert.pem`, `key.pem`) is
//!   served at once, whatever its age; without one, a self-signed stand-in
//!   for the domains is served until the first certificate is issued.
//! - **Challenges.** `tls-alpn-01` on the INS listener: a handshake offering
//!   only ALPN `acme-tls/1` gets the challenge certificate for its name
//!   ([`super::tls::CertResolver`]) and the connection then ends. `http-01`
//!   on `http_listen`, which redirects every other path to HTTPS.
//! - **Renewal.** Once two thirds of the certificate's lifetime have passed
//!   (day 60 of Let's Encrypt's 90). The new certificate is written to the
//!   cache, then swapped in: new connections get it, open ones keep theirs.
//! - **Failure.** Logged, counted (`kaching_acme_failures_total`), retried
//!   after 10 s, doubling to at most an hour. The certificate being served
//!   stays until a new one is issued: a failed renewal never leaves nothing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use tokio_util::sync::CancellationToken;

use super::tls::CertResolver;
use crate::config::{AcmeChallenge, AcmeSettings};
use crate::metrics::Metrics;

/// The ALPN protocol of TLS-ALPN-01 (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";
/// Files in `tls.acme.cache_dir`.
pub const CERT_FILE: &str = "cert.pem";
pub const KEY_FILE: &str = "key.pem";
const ACCOUNT_FILE: &str = "account.json";
/// Retry after a failure: from this, doubling, to at most `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// How long the CA may take to validate and to issue.
const CA_PATIENCE: Duration = Duration::from_secs(90);

/// The challenge answers being served while an order is open.
#[derive(Debug, Default)]
pub struct Challenges {
    /// TLS-ALPN-01: the certificate for each name.
    tls_alpn: Mutex<HashMap<String, Arc<CertifiedKey>>>,
    /// HTTP-01: the key authorization for each token.
    http: Mutex<HashMap<String, String>>,
}

impl Challenges {
    pub fn tls_alpn(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let map = self.tls_alpn.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(&name.to_ascii_lowercase()).cloned()
    }

    pub fn http(&self, token: &str) -> Option<String> {
        let map = self.http.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(token).cloned()
    }

    fn clear(&self) {
        self.tls_alpn
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        self.http
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

/// What to serve at start: the cached certificate, or a self-signed
/// stand-in for the domains until the first one is issued.
pub fn initial(settings: &AcmeSettings) -> anyhow::Result<CertifiedKey> {
    let (cert, key) = (
        settings.cache_dir.join(CERT_FILE),
        settings.cache_dir.join(KEY_FILE),
    );
    if cert.is_file() && key.is_file() {
        return super::tls::read_pair(&cert, &key);
    }
    let generated = rcgen::generate_simple_self_signed(settings.domains.clone())
        .context("cannot generate the stand-in certificate")?;
    certified(
        vec![generated.cert.der().clone()],
        &generated.key_pair.serialize_pem(),
    )
}

fn certified(chain: Vec<CertificateDer<'static>>, key_pem: &str) -> anyhow::Result<CertifiedKey> {
    use rustls::pki_types::pem::PemObject as _;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).context("the private key")?;
    CertifiedKey::from_der(chain, key, &super::tls::provider())
        .context("the certificate and key do not match")
}

/// The validity of the leaf of `chain`, in Unix seconds.
fn validity(chain: &[CertificateDer<'_>]) -> Option<(i64, i64)> {
    let leaf = chain.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    let v = cert.validity();
    Some((v.not_before.timestamp(), v.not_after.timestamp()))
}

/// True when the leaf of `chain` names every one of `domains`.
fn names_all(chain: &[CertificateDer<'_>], domains: &[String]) -> bool {
    use x509_parser::extensions::GeneralName;
    let Some(Ok((_, cert))) = chain
        .first()
        .map(|l| x509_parser::parse_x509_certificate(l.as_ref()))
    else {
        return false;
    };
    let names: Vec<String> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    domains
        .iter()
        .all(|d| names.contains(&d.to_ascii_lowercase()))
}

/// When a certificate valid over `(from, until)` is renewed: two thirds in.
fn renew_at((from, until): (i64, i64)) -> i64 {
    from + (until - from) * 2 / 3
}

/// The renewal task.
pub struct Acme {
    settings: AcmeSettings,
    resolver: Arc<CertResolver>,
    metrics: Arc<Metrics>,
}

impl Acme {
    pub fn new(
        settings: &AcmeSettings,
        resolver: Arc<CertResolver>,
        metrics: Arc<Metrics>,
    ) -> Acme {
        Acme {
            settings: AcmeSettings {
                domains: settings.domains.clone(),
                contact: settings.contact.clone(),
                directory: settings.directory.clone(),
                directory_ca_file: settings.directory_ca_file.clone(),
                cache_dir: settings.cache_dir.clone(),
                challenge: settings.challenge,
                http_listen: settings.http_listen,
            },
            resolver,
            metrics,
        }
    }

    /// The challenge answers (for the `http-01` listener).
    pub fn challenges(&self) -> &Arc<Challenges> {
        self.resolver.challenges()
    }

    fn cached_validity(&self) -> Option<(i64, i64)> {
        use rustls::pki_types::pem::PemObject as _;
        let chain = CertificateDer::pem_file_iter(self.settings.cache_dir.join(CERT_FILE))
            .ok()?
            .collect::<Result<Vec<_>, _>>()
            .ok()?;
        // Cached for other names (tls.acme.domains changed): order now.
        if !names_all(&chain, &self.settings.domains) {
            tracing::info!(domains = ?self.settings.domains, "acme: the cached certificate does not name every domain; ordering a new one");
            return None;
        }
        validity(&chain)
    }

    /// Issues and renews until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        // instant-acme's client takes the process's default provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut current = self.cached_validity();
        if let Some((_, until)) = current {
            self.metrics.acme_expiry(until);
        }
        let mut backoff = FIRST_BACKOFF;
        loop {
            let wait = current.map_or(0, |v| renew_at(v) - chrono::Utc::now().timestamp());
            let wait = Duration::from_secs(u64::try_from(wait).unwrap_or(0));
            if !wait.is_zero() {
                tracing::info!(renew_in = %humantime::format_duration(wait), domains = ?self.settings.domains, "acme: certificate in force");
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            tracing::info!(domains = ?self.settings.domains, directory = %self.settings.directory, "acme: ordering a certificate");
            let outcome = tokio::select! {
                () = shutdown.cancelled() => return,
                outcome = self.issue() => outcome,
            };
            self.resolver.challenges().clear();
            match outcome {
                Ok((chain, until)) => {
                    tracing::info!(domains = ?self.settings.domains, certificates = chain, not_after = %chrono::DateTime::from_timestamp(until.1, 0).unwrap_or_default(), "acme: certificate issued and in force");
                    self.metrics.acme_issued(until.1);
                    current = Some(until);
                    backoff = FIRST_BACKOFF;
                }
                Err(e) => {
                    self.metrics.acme_failed();
                    tracing::error!(error = format!("{e:#}"), retry_in = %humantime::format_duration(backoff), "acme: could not obtain a certificate; the one being served stays");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// One order, from the account to the certificate in force; returns
    /// the chain's length and the new certificate's validity.
    async fn issue(&self) -> anyhow::Result<(usize, (i64, i64))> {
        let account = self.account().await?;
        let ids: Vec<Identifier> = self
            .settings
            .domains
            .iter()
            .map(|d| Identifier::Dns(d.clone()))
            .collect();
        let mut order = account
            .new_order(&NewOrder::new(&ids))
            .await
            .context("new order")?;
        let kind = match self.settings.challenge {
            AcmeChallenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
            AcmeChallenge::Http01 => ChallengeType::Http01,
        };
        let challenges = self.resolver.challenges();
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.context("authorization")?;
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => anyhow::bail!("an authorization is {other:?}"),
            }
            let mut challenge = authz
                .challenge(kind.clone())
                .with_context(|| format!("the CA offers no {kind:?} challenge"))?;
            let Identifier::Dns(name) = challenge.identifier().identifier.clone() else {
                anyhow::bail!("the CA asks to validate something other than a DNS name");
            };
            let key_authorization = challenge.key_authorization();
            match self.settings.challenge {
                AcmeChallenge::TlsAlpn01 => {
                    let cert = alpn_certificate(&name, key_authorization.digest().as_ref())?;
                    challenges
                        .tls_alpn
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(name.to_ascii_lowercase(), Arc::new(cert));
                }
                AcmeChallenge::Http01 => {
                    challenges
                        .http
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(
                            challenge.token.clone(),
                            key_authorization.as_str().to_owned(),
                        );
                }
            }
            challenge.set_ready().await.context("challenge ready")?;
        }
        let retry = RetryPolicy::new().timeout(CA_PATIENCE);
        let status = order.poll_ready(&retry).await.context("validation")?;
        anyhow::ensure!(
            status == OrderStatus::Ready,
            "the order is {status:?}: the CA could not validate the challenges"
        );
        let key = rcgen::KeyPair::generate().context("a certificate key")?;
        let mut params = rcgen::CertificateParams::new(self.settings.domains.clone())
            .context("the certificate request")?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        let csr = params
            .serialize_request(&key)
            .context("the certificate request")?;
        order.finalize_csr(csr.der()).await.context("finalize")?;
        let pem = order
            .poll_certificate(&retry)
            .await
            .context("the certificate")?;
        self.install(&pem, &key.serialize_pem())
    }

    /// Checks the issued chain, writes it to the cache, then serves it.
    fn install(&self, chain_pem: &str, key_pem: &str) -> anyhow::Result<(usize, (i64, i64))> {
        use rustls::pki_types::pem::PemObject as _;
        let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .context("the issued chain is not PEM")?;
        let until = validity(&chain).context("the issued certificate has no validity")?;
        let n = chain.len();
        let key = certified(chain, key_pem)?;
        let dir = &self.settings.cache_dir;
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        // The key first: a cached chain never goes without its key.
        write_atomically(&dir.join(KEY_FILE), key_pem.as_bytes(), true)?;
        write_atomically(&dir.join(CERT_FILE), chain_pem.as_bytes(), false)?;
        self.resolver.replace(key);
        Ok((n, until))
    }

    /// The ACME account: from the cache, or created and cached.
    async fn account(&self) -> anyhow::Result<Account> {
        let builder = || match &self.settings.directory_ca_file {
            Some(ca) => Account::builder_with_root(ca),
            None => Account::builder(),
        };
        let path = self.settings.cache_dir.join(ACCOUNT_FILE);
        if let Ok(text) = std::fs::read_to_string(&path) {
            let credentials: AccountCredentials = serde_json::from_str(&text)
                .with_context(|| format!("{} does not parse", path.display()))?;
            return builder()
                .context("the ACME client")?
                .from_credentials(credentials)
                .await
                .context("the cached ACME account");
        }
        let contact: Vec<String> = self
            .settings
            .contact
            .iter()
            .map(|c| {
                if c.contains(':') {
                    c.clone()
                } else {
                    format!("mailto:{c}")
                }
            })
            .collect();
        let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
        let (account, credentials) = builder()
            .context("the ACME client")?
            .create(
                &NewAccount {
                    contact: &contact,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                self.settings.directory.clone(),
                None,
            )
            .await
            .context("creating the ACME account")?;
        std::fs::create_dir_all(&self.settings.cache_dir)
            .with_context(|| format!("cannot create {}", self.settings.cache_dir.display()))?;
        let text = serde_json::to_string(&credentials).context("the account credentials")?;
        write_atomically(&path, text.as_bytes(), true)?;
        tracing::info!(account = account.id(), "acme: account created");
        Ok(account)
    }
}

/// The self-signed certificate that answers a TLS-ALPN-01 challenge for
/// `name`: the key authorization's digest in the acmeIdentifier extension.
fn alpn_certificate(name: &str, digest: &[u8]) -> anyhow::Result<CertifiedKey> {
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()])
        .context("the challenge certificate")?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate().context("the challenge key")?;
    let cert = params
        .self_signed(&key)
        .context("the challenge certificate")?;
    // Not `certified`: its key check parses the certificate with webpki,
    // which refuses the critical acmeIdentifier extension. The key is the
    // one just generated for this certificate.
    let der = PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let signing = super::tls::provider()
        .key_provider
        .load_private_key(der)
        .context("the challenge key")?;
    Ok(CertifiedKey::new(vec![cert.der().clone()], signing))
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a
/// crash leaves the old file or the new one, never half of one.
fn write_atomically(path: &Path, bytes: &[u8], private: bool) -> anyhow::Result<()> {
    let tmp = PathBuf::from(format!("{}.tmp", path.display()));
    if private {
        super::tls::write_private(&tmp, bytes)?;
    } else {
        std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

/// The `http-01` listener's routes: the challenge answers, and a redirect
/// to HTTPS for everything else.
pub fn http_router(challenges: Arc<Challenges>) -> axum::Router {
    use axum::extract::Path as UrlPath;
    use axum::http::{header, StatusCode, Uri};
    use axum::response::{IntoResponse, Response};
    axum::Router::new()
        .route(
            "/.well-known/acme-challenge/{token}",
            axum::routing::get(move |UrlPath(token): UrlPath<String>| {
                let answer = challenges.http(&token);
                async move {
                    match answer {
                        Some(a) => (StatusCode::OK, a).into_response(),
                        None => (StatusCode::NOT_FOUND, "no such challenge\n").into_response(),
                    }
                }
            }),
        )
        .fallback(|headers: axum::http::HeaderMap, uri: Uri| async move {
            let host = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(|h| h.rsplit_once(':').map_or(h, |(name, _)| name).to_owned());
            let Some(host) = host else {
                return (StatusCode::BAD_REQUEST, "no Host header\n").into_response();
            };
            let path = uri.path_and_query().map_or("/", |p| p.as_str());
            Response::builder()
                .status(StatusCode::PERMANENT_REDIRECT)
                .header(header::LOCATION, format!("https://{host}{path}"))
                .body(axum::body::Body::empty())
                .unwrap_or_default()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_two_thirds_into_the_lifetime() {
        let day = 86_400;
        assert_eq!(renew_at((0, 90 * day)), 60 * day);
        assert_eq!(renew_at((1000, 1060)), 1040);
    }
}
