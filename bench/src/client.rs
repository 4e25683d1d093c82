//! One HTTP/1.1 keep-alive connection per worker, over TCP or rustls: hyper's
//! connection-level client, no pool, no per-request work beyond the request
//! head and a reference to the pre-built body.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{HeaderValue, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;

pub type Sender = SendRequest<Full<Bytes>>;

/// Where to post, parsed once.
pub struct Target {
    pub url: String,
    pub addr: SocketAddr,
    path: Uri,
    host: HeaderValue,
    server_name: ServerName<'static>,
    tls: Option<tokio_rustls::TlsConnector>,
}

/// How to trust the daemon's certificate.
pub enum Trust<'a> {
    /// Accept any certificate (the daemon's self-signed one).
    Insecure,
    /// Trust the certificates in this PEM file.
    CaFile(&'a Path),
    /// The system's CA bundle.
    System,
}

/// The system CA bundles tried for `Trust::System`, after `SSL_CERT_FILE`.
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

impl Target {
    pub async fn new(url: &str, trust: Trust<'_>) -> anyhow::Result<Target> {
        let parsed = url::Url::parse(url).with_context(|| format!("bad --url {url}"))?;
        let tls = match parsed.scheme() {
            "https" => true,
            "http" => false,
            other => anyhow::bail!("--url: unsupported scheme {other} (want https or http)"),
        };
        let host = parsed
            .host_str()
            .context("--url has no host")?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = parsed
            .port_or_known_default()
            .context("--url has no port")?;
        let addr = tokio::net::lookup_host((host.as_str(), port))
            .await
            .with_context(|| format!("cannot resolve {host}"))?
            .next()
            .with_context(|| format!("{host} has no address"))?;
        let mut path = parsed.path().to_owned();
        if let Some(q) = parsed.query() {
            path.push('?');
            path.push_str(q);
        }
        let host_header = match parsed.port() {
            Some(p) => format!("{}:{p}", parsed.host_str().unwrap_or(&host)),
            None => parsed.host_str().unwrap_or(&host).to_owned(),
        };
        let server_name = ServerName::try_from(host.clone())
            .with_context(|| format!("{host} is not a valid TLS server name"))?;
        let tls = if tls {
            Some(tokio_rustls::TlsConnector::from(client_config(trust)?))
        } else {
            None
        };
        Ok(Target {
            url: url.to_owned(),
            addr,
            path: path.parse().context("bad path in --url")?,
            host: HeaderValue::from_str(&host_header).context("bad host in --url")?,
            server_name,
            tls,
        })
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Opens a connection: TCP (no Nagle), TLS if https, the HTTP/1.1 handshake.
    pub async fn connect(&self) -> anyhow::Result<Sender> {
        let tcp = TcpStream::connect(self.addr)
            .await
            .with_context(|| format!("connect {}", self.addr))?;
        self.over(tcp).await
    }

    /// [`Target::connect`] from a local address of this machine's choosing
    /// (another 127.0.0.0/8 address is another sender to the daemon).
    #[allow(dead_code)] // flood-bench
    pub async fn connect_from(&self, from: std::net::IpAddr) -> anyhow::Result<Sender> {
        self.over(self.tcp_from(from).await?).await
    }

    /// A bare TCP connection from `from` (no TLS, no HTTP).
    #[allow(dead_code)] // flood-bench
    pub async fn tcp_from(&self, from: std::net::IpAddr) -> anyhow::Result<TcpStream> {
        let socket = match from {
            std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
            std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
        }
        .context("socket")?;
        socket
            .bind(SocketAddr::new(from, 0))
            .with_context(|| format!("bind {from}"))?;
        socket
            .connect(self.addr)
            .await
            .with_context(|| format!("connect {} from {from}", self.addr))
    }

    /// The TLS session (if https) over `tcp`, as a stream.
    #[allow(dead_code)] // flood-bench
    pub async fn tls_over(
        &self,
        tcp: TcpStream,
    ) -> anyhow::Result<Option<tokio_rustls::client::TlsStream<TcpStream>>> {
        match &self.tls {
            Some(tls) => Ok(Some(
                tls.connect(self.server_name.clone(), tcp)
                    .await
                    .context("TLS handshake")?,
            )),
            None => Ok(None),
        }
    }

    async fn over(&self, tcp: TcpStream) -> anyhow::Result<Sender> {
        tcp.set_nodelay(true).context("TCP_NODELAY")?;
        match &self.tls {
            Some(tls) => {
                let stream = tls
                    .connect(self.server_name.clone(), tcp)
                    .await
                    .context("TLS handshake")?;
                handshake(stream).await
            }
            None => handshake(tcp).await,
        }
    }

    /// Posts `body`; returns the status once the whole answer is read.
    pub async fn post(&self, sender: &mut Sender, body: Bytes) -> Result<StatusCode, Failure> {
        sender.ready().await.map_err(Failure::Http)?;
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = self.path.clone();
        let headers = req.headers_mut();
        headers.insert(HOST, self.host.clone());
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let resp = sender.send_request(req).await.map_err(Failure::Http)?;
        let status = resp.status();
        // Read the answer to its end so that the connection can be reused.
        resp.into_body().collect().await.map_err(Failure::Http)?;
        Ok(status)
    }
}

/// Why a request got no answer.
#[derive(Debug)]
pub enum Failure {
    Connect(anyhow::Error),
    Http(hyper::Error),
    Timeout(Duration),
}

impl Failure {
    /// A short label for counting errors by kind.
    pub fn label(&self) -> String {
        match self {
            Failure::Connect(e) => format!("connect: {e:#}"),
            Failure::Http(e) => format!("http: {e}"),
            Failure::Timeout(t) => format!("no answer within {t:?}"),
        }
    }
}

async fn handshake<S>(stream: S) -> anyhow::Result<Sender>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP/1.1 handshake")?;
    tokio::spawn(async move {
        // Errors surface on the sender too; nothing more to do here.
        let _ = conn.await;
    });
    Ok(sender)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn client_config(trust: Trust<'_>) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let mut config = match trust {
        Trust::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider())))
            .with_no_client_auth(),
        Trust::CaFile(path) => builder
            .with_root_certificates(roots(path)?)
            .with_no_client_auth(),
        Trust::System => {
            let path = std::env::var_os("SSL_CERT_FILE")
                .map(std::path::PathBuf::from)
                .or_else(|| {
                    SYSTEM_BUNDLES
                        .iter()
                        .map(std::path::PathBuf::from)
                        .find(|p| p.is_file())
                })
                .context("no system CA bundle found: pass --ca-cert or --insecure")?;
            builder
                .with_root_certificates(roots(&path)?)
                .with_no_client_auth()
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn roots(path: &Path) -> anyhow::Result<rustls::RootCertStore> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("cannot read certificates from {}", path.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    anyhow::ensure!(added > 0, "no usable certificate in {}", path.display());
    Ok(roots)
}

/// `--insecure`: any certificate is accepted, but the handshake signatures are
/// still checked (it costs the same as a real client's).
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
