//! TLS: a certificate from files (production), or a self-signed one generated
//! on first start and kept on disk (local runs), as a rustls server config
//! whose certificate can be replaced while it serves ([`CertResolver`]).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::{TlsMode, TlsSettings};

/// The self-signed certificate's file names inside `tls.self_signed_dir`.
pub const SELF_SIGNED_CERT: &str = "cert.pem";
pub const SELF_SIGNED_KEY: &str = "key.pem";

/// The certificate being served, swappable: a reload (or a renewal) puts a
/// new one in place and every new connection gets it, while connections
/// already open keep theirs. rustls asks this on each handshake. An ACME
/// CA's TLS-ALPN-01 validation (ALPN `acme-tls/1`) gets the challenge
/// certificate for the name it asks for instead.
#[derive(Debug)]
pub struct CertResolver {
    current: ArcSwap<CertifiedKey>,
    challenges: Arc<super::acme::Challenges>,
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let acme = hello
            .alpn()
            .is_some_and(|mut p| p.any(|p| p == super::acme::ACME_TLS_ALPN));
        if acme {
            return hello
                .server_name()
                .and_then(|name| self.challenges.tls_alpn(name));
        }
        Some(self.current.load_full())
    }
}

impl CertResolver {
    /// Serves `key` to every new connection from now on.
    pub fn replace(&self, key: CertifiedKey) {
        self.current.store(Arc::new(key));
    }

    /// The ACME challenge answers this resolver serves.
    pub fn challenges(&self) -> &Arc<super::acme::Challenges> {
        &self.challenges
    }
}

/// The rustls config for `settings` and the resolver that lets its
/// certificate change, or `None` when TLS is off.
pub fn server_config(
    settings: &TlsSettings,
    listen: SocketAddr,
) -> anyhow::Result<Option<(Arc<rustls::ServerConfig>, Arc<CertResolver>)>> {
    let Some(key) = load(settings, listen)? else {
        return Ok(None);
    };
    let resolver = Arc::new(CertResolver {
        current: ArcSwap::from_pointee(key),
        challenges: Arc::default(),
    });
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("cannot set TLS protocol versions")?
        .with_no_client_auth()
        .with_cert_resolver(resolver.clone());
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    if settings.mode == TlsMode::Acme {
        // Last: chosen only by a CA's validator, which offers nothing else.
        config
            .alpn_protocols
            .push(super::acme::ACME_TLS_ALPN.to_vec());
    }
    Ok(Some((Arc::new(config), resolver)))
}

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads (or, self-signed, first makes) the certificate chain and key, and
/// checks that they match; `None` when TLS is off.
pub fn load(settings: &TlsSettings, listen: SocketAddr) -> anyhow::Result<Option<CertifiedKey>> {
    let (cert, key) = match settings.mode {
        TlsMode::Off => return Ok(None),
        TlsMode::Files => match (&settings.cert_path, &settings.key_path) {
            (Some(c), Some(k)) => (c.clone(), k.clone()),
            _ => anyhow::bail!("tls.mode = \"files\" needs tls.cert_path and tls.key_path"),
        },
        TlsMode::SelfSigned => {
            let dir = &settings.self_signed_dir;
            ensure_self_signed(dir, listen)?;
            (dir.join(SELF_SIGNED_CERT), dir.join(SELF_SIGNED_KEY))
        }
        // The cached certificate, or a stand-in until the first is issued.
        TlsMode::Acme => return super::acme::initial(&settings.acme).map(Some),
    };
    read_pair(&cert, &key).map(Some)
}

/// A PEM chain and key from files, checked to match.
pub(crate) fn read_pair(cert: &Path, key: &Path) -> anyhow::Result<CertifiedKey> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("cannot read certificates from {}", cert.display()))?;
    anyhow::ensure!(!chain.is_empty(), "no certificate in {}", cert.display());
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("cannot read the private key from {}", key.display()))?;
    CertifiedKey::from_der(chain, key, &provider())
        .context("the TLS certificate and key do not match or are unusable")
}

/// Generates the self-signed certificate once; later starts reuse it so that
/// a client that pinned it keeps working.
fn ensure_self_signed(dir: &Path, listen: SocketAddr) -> anyhow::Result<()> {
    let cert_path = dir.join(SELF_SIGNED_CERT);
    let key_path = dir.join(SELF_SIGNED_KEY);
    if cert_path.exists() && key_path.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    let ip = listen.ip();
    if !ip.is_unspecified() && !ip.is_loopback() {
        names.push(ip.to_string());
    }
    let generated =
        rcgen::generate_simple_self_signed(names).context("cannot generate a certificate")?;
    write_private(&key_path, generated.key_pair.serialize_pem().as_bytes())?;
    std::fs::write(&cert_path, generated.cert.pem())
        .with_context(|| format!("cannot write {}", cert_path.display()))?;
    tracing::info!(cert = %cert_path.display(), "tls: generated a self-signed certificate");
    Ok(())
}

/// Writes a file readable by its owner only (a private key).
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(bytes)
        .with_context(|| format!("cannot write {}", path.display()))
}
