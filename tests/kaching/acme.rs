//! `tls.mode = "acme"` against a real ACME server: Debian's `pebble`, with
//! `pebble-challtestsrv` as its DNS (every name is 127.0.0.1). Issuance over
//! TLS-ALPN-01 on the INS listener, the served chain verifying against
//! pebble's root, renewal of a 30-second certificate while a connection
//! stays open, a restart serving the cached certificate at once, and a
//! failed renewal (pebble gone) that keeps the certificate in force.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};

use crate::support::{Backend, TestApp};
use crate::target::{eventually, reserve_port};

const DOMAIN: &str = "kaching.test";
/// Pebble's certificates live this long: renewal is due after 20 s.
const VALIDITY_SECS: u64 = 30;

struct Killed(Vec<Child>);

impl Drop for Killed {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Pebble and its DNS, answering for `tls_port` (the INS listener).
struct Pebble {
    processes: Killed,
    directory: String,
    management: SocketAddr,
    /// The CA of pebble's own HTTPS listeners.
    https_ca: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn installed() -> bool {
    let found = ["pebble", "pebble-challtestsrv"]
        .iter()
        .all(|b| Command::new(b).arg("-h").output().is_ok());
    if !found {
        crate::support::loud("SKIPPED: pebble is not installed (apt-get install pebble)");
        assert!(
            std::env::var_os("CI").is_none(),
            "pebble is required under CI"
        );
    }
    found
}

impl Pebble {
    fn start(tls_port: u16, http_port: u16) -> Pebble {
        let dir = tempfile::tempdir().unwrap();
        // Pebble's own HTTPS certificate, from a CA of the test's.
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .unwrap()
            .signed_by(&key, &ca, &ca_key)
            .unwrap();
        let p = |name: &str| dir.path().join(name);
        std::fs::write(p("ca.pem"), ca.pem()).unwrap();
        std::fs::write(p("cert.pem"), leaf.pem()).unwrap();
        std::fs::write(p("key.pem"), key.serialize_pem()).unwrap();
        let (listen, management, dns) = (reserve_port(), reserve_port(), reserve_port());
        let config = serde_json::json!({"pebble": {
            "listenAddress": listen.to_string(),
            "managementListenAddress": management.to_string(),
            "certificate": p("cert.pem"),
            "privateKey": p("key.pem"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
            "certificateValidityPeriod": VALIDITY_SECS,
        }});
        std::fs::write(p("pebble.json"), config.to_string()).unwrap();
        let quiet = || Stdio::null();
        let dns_server = Command::new("pebble-challtestsrv")
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args(["-dns01", &dns.to_string(), "-http01", "", "-https01", ""])
            .args(["-tlsalpn01", "", "-management", &reserve_port().to_string()])
            .stdout(quiet())
            .stderr(quiet())
            .spawn()
            .unwrap();
        let pebble = Command::new("pebble")
            .arg("-config")
            .arg(p("pebble.json"))
            .args(["-dnsserver", &dns.to_string()])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(quiet())
            .stderr(quiet())
            .spawn()
            .unwrap();
        Pebble {
            processes: Killed(vec![pebble, dns_server]),
            directory: format!("https://{listen}/dir"),
            management,
            https_ca: p("ca.pem"),
            _dir: dir,
        }
    }

    fn https(&self) -> reqwest::Client {
        let pem = std::fs::read(&self.https_ca).unwrap();
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
            .build()
            .unwrap()
    }

    /// Pebble's root for the certificates it issues (made at its start).
    async fn root(&self) -> rustls::RootCertStore {
        let client = self.https();
        let url = format!("https://{}/roots/0", self.management);
        let pem = eventually(Duration::from_secs(20), "pebble's root", || {
            let (client, url) = (client.clone(), url.clone());
            async move {
                let r = client.get(&url).send().await.ok()?;
                r.status().is_success().then_some(())?;
                r.text().await.ok()
            }
        })
        .await;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        roots
    }
}

fn connector(roots: &rustls::RootCertStore) -> tokio_rustls::TlsConnector {
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots.clone())
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// The leaf served for DOMAIN, if the chain verifies against `roots`.
async fn served(addr: SocketAddr, roots: &rustls::RootCertStore) -> Option<Vec<u8>> {
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let tls = connector(roots)
        .connect(ServerName::try_from(DOMAIN).unwrap(), tcp)
        .await
        .ok()?;
    let leaf = tls.get_ref().1.peer_certificates()?.first()?.to_vec();
    Some(leaf)
}

fn settings_for(
    s: &mut kaching::config::Settings,
    pebble: &Pebble,
    listen: SocketAddr,
    dir: &std::path::Path,
) {
    s.server.listen = listen;
    // The connection held across the renewal idles for 20 s.
    s.server.idle_timeout_ms = 120_000;
    s.tls.mode = kaching::config::TlsMode::Acme;
    s.tls.acme.domains = vec![DOMAIN.into()];
    s.tls.acme.contact = vec!["ops@kaching.test".into()];
    s.tls.acme.directory = pebble.directory.clone();
    s.tls.acme.directory_ca_file = Some(pebble.https_ca.clone());
    s.tls.acme.cache_dir = dir.join("acme");
}

fn counter(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn certificates_are_issued_renewed_cached_and_kept_when_the_ca_fails() {
    if !installed() {
        return;
    }
    let listen = reserve_port();
    let mut pebble = Pebble::start(listen.port(), reserve_port().port());
    let roots = pebble.root().await;
    let cache = tempfile::tempdir().unwrap();
    let cache_path = cache.path().to_owned();
    let app = TestApp::spawn(Backend::Sqlite, |s| {
        settings_for(s, &pebble, listen, &cache_path)
    })
    .await
    .unwrap();

    // Issued over TLS-ALPN-01 on the INS listener; the chain verifies.
    let first = eventually(Duration::from_secs(60), "a certificate from pebble", || {
        served(listen, &roots)
    })
    .await;
    // A connection opened now stays usable across the renewal.
    let tcp = tokio::net::TcpStream::connect(listen).await.unwrap();
    let tls = connector(&roots)
        .connect(ServerName::try_from(DOMAIN).unwrap(), tcp)
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    // It asks every 2 s while the renewal happens; every answer is 200.
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let held = tokio::spawn(async move {
        let mut answered = 0u32;
        tokio::pin!(stopped);
        loop {
            sender
                .ready()
                .await
                .expect("the held connection stays open");
            let request = hyper::Request::get("/healthz")
                .header("host", DOMAIN)
                .body(Empty::<Bytes>::new())
                .unwrap();
            let r = sender.send_request(request).await.expect("answered");
            assert_eq!(r.status(), 200);
            // Read to the end, or the client cannot reuse the connection.
            r.into_body().collect().await.unwrap();
            answered += 1;
            tokio::select! {
                _ = &mut stopped => return answered,
                () = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
        }
    });

    // Renewed before it expires (two thirds in: about 20 s), without a restart.
    let renewed = eventually(Duration::from_secs(60), "a renewed certificate", || {
        let first = first.clone();
        let roots = roots.clone();
        async move { served(listen, &roots).await.filter(|leaf| *leaf != first) }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _ = stop.send(());
    let answered = held
        .await
        .expect("the connection opened before the renewal served on");
    assert!(answered >= 10, "{answered} requests on the held connection");
    let text = app.scrape().await;
    assert!(
        counter(&text, "kaching_acme_certificates_issued_total") >= 2,
        "{text}"
    );
    assert_eq!(counter(&text, "kaching_acme_failures_total"), 0, "{text}");
    let cached = std::fs::read_to_string(cache_path.join("acme/cert.pem")).unwrap();
    let cached_leaf = CertificateDer::pem_slice_iter(cached.as_bytes())
        .next()
        .unwrap()
        .unwrap();

    // A restart serves the cached certificate at once.
    let TestApp { settings, dir, .. } = app.stop().await;
    let app = TestApp::start(settings, dir, None).await;
    let at_once = served(listen, &roots)
        .await
        .expect("served at once after a restart");
    assert_eq!(at_once, cached_leaf.to_vec());
    assert_ne!(at_once, first);
    let _ = renewed;

    // The CA goes away: the renewal fails, is counted, and the certificate stays.
    drop(std::mem::replace(&mut pebble.processes, Killed(Vec::new())));
    let failures = eventually(Duration::from_secs(60), "a failed renewal", || async {
        let n = counter(&app.scrape().await, "kaching_acme_failures_total");
        (n >= 1).then_some(n)
    })
    .await;
    assert!(failures >= 1);
    // Renewal was due with a third of the lifetime left: still valid, still served.
    let leaf = served(listen, &roots)
        .await
        .expect("the certificate in force is still served and valid");
    assert_eq!(leaf, at_once);
    app.stop().await;
}

#[tokio::test]
async fn http_01_issues_on_its_own_listener_which_redirects_everything_else() {
    if !installed() {
        return;
    }
    let (listen, http) = (reserve_port(), reserve_port());
    let pebble = Pebble::start(listen.port(), http.port());
    let roots = pebble.root().await;
    let cache = tempfile::tempdir().unwrap();
    let cache_path = cache.path().to_owned();
    let app = TestApp::spawn(Backend::Sqlite, |s| {
        settings_for(s, &pebble, listen, &cache_path);
        s.tls.acme.challenge = kaching::config::AcmeChallenge::Http01;
        s.tls.acme.http_listen = Some(http);
    })
    .await
    .unwrap();
    eventually(
        Duration::from_secs(60),
        "a certificate over http-01",
        || served(listen, &roots),
    )
    .await;
    // Every other path on the HTTP listener goes to HTTPS, path and query kept.
    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = plain
        .get(format!("http://{http}/ins?x=1"))
        .header("host", format!("{DOMAIN}:80"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 308);
    assert_eq!(r.headers()["location"], "https://kaching.test/ins?x=1");
    let r = plain
        .get(format!("http://{http}/.well-known/acme-challenge/unknown"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "no challenge open: nothing to answer");
    let text = app.scrape().await;
    assert_eq!(
        counter(&text, "kaching_acme_certificates_issued_total"),
        1,
        "{text}"
    );
    app.stop().await;
}
