//! Idle connections of every kind are closed, capped and made room from, so
//! genuine notifications keep getting 200: the real binary, under a 1,024
//! open-file limit (systemd's default), against thousands of idle holders.
//! `KACHING_BIN` names another build of the binary to test (a release build).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

use crate::support::{loud, sale, KEY};
use crate::target::reserve_port;

/// How long the holders keep the pressure on.
const HOLD: Duration = Duration::from_secs(60);
/// Idle connections of each kind.
const HOLDERS: usize = 1_100;
/// A holder whose connection the server closed opens a new one after this.
const REOPEN_AFTER: Duration = Duration::from_secs(1);
/// A genuine post must be answered within this.
const POST_TIMEOUT: Duration = Duration::from_secs(5);

/// Lets this process hold thousands of sockets.
fn raise_own_nofile() {
    let n = rlimit::increase_nofile_limit(u64::MAX).unwrap();
    assert!(
        n >= 8 * HOLDERS as u64,
        "this test needs an open-file hard limit of at least {}, it is {n}",
        8 * HOLDERS
    );
}

/// The daemon as a child process with RLIMIT_NOFILE 1024 soft and hard.
struct Daemon {
    child: Child,
    addr: SocketAddr,
    tls: bool,
    dir: tempfile::TempDir,
}

impl Daemon {
    async fn start(tls: bool, server: &str) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let addr = reserve_port();
        let cfg = dir.path().join("kaching.toml");
        let mode = if tls { "self-signed" } else { "off" };
        std::fs::write(
            &cfg,
            format!(
                "[server]\nlisten = \"{addr}\"\n{server}\n\
                 [admin]\nlisten = \"127.0.0.1:0\"\n\
                 [tls]\nmode = \"{mode}\"\nself_signed_dir = \"{tls_dir}\"\n\
                 [database]\nurl = \"sqlite://{db}\"\n\
                 [log]\nlevel = \"info\"\n\
                 [[accounts]]\nname = \"acme\"\nsecret_key = \"{KEY}\"\n",
                tls_dir = dir.path().join("tls").display(),
                db = dir.path().join("kaching.db").display(),
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("kaching.log")).unwrap();
        let child = Command::new("prlimit")
            .arg("--nofile=1024:1024")
            .arg("--")
            .arg(std::env::var_os("KACHING_BIN").unwrap_or(env!("CARGO_BIN_EXE_kaching").into()))
            .args(["--config", cfg.to_str().unwrap(), "serve"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start kaching under prlimit (util-linux)");
        let daemon = Daemon {
            child,
            addr,
            tls,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ok = client()
                .get(format!("{}/healthz", daemon.base()))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            if ok {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not start: {}",
                daemon.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        daemon
    }

    fn base(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("kaching.log")).unwrap_or_default()
    }

    fn cert(&self) -> PathBuf {
        self.dir.path().join("tls").join("cert.pem")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client that opens a fresh connection from 127.0.0.1 for every request.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .use_rustls_tls()
        .danger_accept_invalid_certs(true)
        .pool_max_idle_per_host(0)
        .local_address(IpAddr::V4(Ipv4Addr::LOCALHOST))
        .timeout(POST_TIMEOUT)
        .build()
        .unwrap()
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    /// Plain TCP that never sends a byte.
    Silent,
    /// HTTP/2 with prior knowledge over plain TCP, no stream.
    H2c,
    /// HTTP/2 over TLS (ALPN h2), no stream.
    H2Tls,
}

#[derive(Default, Debug)]
struct Tally {
    opened: AtomicU64,
    closed_by_server: AtomicU64,
    failed: AtomicU64,
}

async fn connect_from(from: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    socket.connect(to).await
}

fn tls_client(cert: &Path) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(cert).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// An HTTP/2 client connection that opens no stream; returns when the server
/// closes it. It answers the server's pings, as a live peer does.
async fn h2_without_streams<I>(io: I) -> std::io::Result<()>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake::<_, Empty<Bytes>>(TokioIo::new(io))
        .await
        .map_err(std::io::Error::other)?;
    let _ = conn.await;
    drop(send);
    Ok(())
}

/// Connects once and holds the connection idle until the server closes it.
async fn hold_once(
    kind: Kind,
    from: IpAddr,
    to: SocketAddr,
    tls: Option<&tokio_rustls::TlsConnector>,
    tally: &Tally,
) -> std::io::Result<()> {
    let mut stream = connect_from(from, to).await?;
    tally.opened.fetch_add(1, Ordering::Relaxed);
    match kind {
        Kind::Silent => {
            let mut buf = [0u8; 256];
            while stream.read(&mut buf).await? > 0 {}
            Ok(())
        }
        Kind::H2c => h2_without_streams(stream).await,
        Kind::H2Tls => {
            let name = rustls::pki_types::ServerName::IpAddress(to.ip().into());
            let tls = tls.expect("a TLS connector").connect(name, stream).await?;
            assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
            h2_without_streams(tls).await
        }
    }
}

/// Keeps one idle connection of `kind` open until `until`, opening a new one
/// whenever the server closes it.
fn spawn_holder(
    kind: Kind,
    from: IpAddr,
    to: SocketAddr,
    tls: Option<tokio_rustls::TlsConnector>,
    tally: Arc<Tally>,
    until: Instant,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while Instant::now() < until {
            match tokio::time::timeout_at(until, hold_once(kind, from, to, tls.as_ref(), &tally))
                .await
            {
                Err(_) => return,
                Ok(Ok(())) => tally.closed_by_server.fetch_add(1, Ordering::Relaxed),
                Ok(Err(_)) => tally.failed.fetch_add(1, Ordering::Relaxed),
            };
            tokio::time::sleep(REOPEN_AFTER).await;
        }
    })
}

/// Posts a genuine notification on a fresh connection every 500 ms until
/// `until`; returns each post's (status, latency), 0 for no answer in time.
async fn post_genuine(
    base: String,
    tag: &'static str,
    receipt: &'static str,
    until: Instant,
) -> Vec<(u16, Duration)> {
    let mut results = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut i = 0;
    // No idle pool: every post opens a connection of its own, as ClickBank's do.
    let client = client();
    while Instant::now() < until {
        tick.tick().await;
        i += 1;
        let started = Instant::now();
        let outcome = client
            .post(format!("{base}/ins"))
            .body(sale(&format!("{receipt}{i:05}")))
            .send()
            .await;
        let status = match outcome {
            Ok(r) => r.status().as_u16(),
            Err(e) => {
                loud(&format!("{tag}: post {i}: {e:?}"));
                0
            }
        };
        results.push((status, started.elapsed()));
    }
    results
}

struct Target<'a> {
    daemon: &'a Daemon,
    kinds: &'a [Kind],
    /// Holders connect from these addresses, round robin.
    from: Vec<IpAddr>,
    tag: &'static str,
    /// Receipts of its genuine posts start with this.
    receipt: &'static str,
}

/// Runs every target's holders and genuine posts in one window, then checks
/// each target: every post 200 in time, no `Too many open files` in its log.
async fn under_pressure(targets: &[Target<'_>]) {
    raise_own_nofile();
    let until = Instant::now() + HOLD;
    let mut holders = Vec::new();
    let mut tallies = Vec::new();
    for t in targets {
        let tls = t.daemon.tls.then(|| tls_client(&t.daemon.cert()));
        for &kind in t.kinds {
            let tally = Arc::new(Tally::default());
            tallies.push((t.tag, kind, tally.clone()));
            for i in 0..HOLDERS {
                let from = t.from[i % t.from.len()];
                holders.push(spawn_holder(
                    kind,
                    from,
                    t.daemon.addr,
                    tls.clone(),
                    tally.clone(),
                    until,
                ));
            }
        }
    }
    // Let the holders fill the daemons before the first genuine post.
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The genuine posts get a runtime of their own, so that their latency is
    // the daemon's and not this process's queue of holder tasks.
    let posters: Vec<_> = targets
        .iter()
        .map(|t| {
            let (base, tag, receipt) = (t.daemon.base(), t.tag, t.receipt);
            std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(post_genuine(base, tag, receipt, until))
            })
        })
        .collect();
    let outcomes: Vec<_> = posters.into_iter().map(|p| p.join().unwrap()).collect();
    for h in holders {
        h.await.unwrap();
    }
    for (tag, kind, tally) in &tallies {
        loud(&format!("{tag} {kind:?} holders: {tally:?}"));
    }
    for (t, results) in targets.iter().zip(&outcomes) {
        let mut latencies: Vec<Duration> = results.iter().map(|r| r.1).collect();
        latencies.sort();
        let ok = results.iter().filter(|r| r.0 == 200).count();
        let mut statuses: Vec<u16> = results.iter().map(|r| r.0).collect();
        statuses.dedup();
        loud(&format!(
            "{}: {ok} of {} genuine posts got 200 (statuses {statuses:?}); latency p50 {:?}, p99 {:?}, max {:?}",
            t.tag,
            results.len(),
            latencies[latencies.len() / 2],
            latencies[latencies.len() * 99 / 100],
            latencies[latencies.len() - 1],
        ));
    }
    for (t, results) in targets.iter().zip(&outcomes) {
        let log = t.daemon.log();
        for line in log.lines().filter(|l| l.contains("ins:")).take(3) {
            loud(line);
        }
        assert!(
            !log.contains("Too many open files"),
            "{}: the daemon ran out of descriptors",
            t.tag
        );
        assert!(results.len() >= 100, "{}: too few posts", t.tag);
        let failed: Vec<_> = results.iter().filter(|r| r.0 != 200).collect();
        if !failed.is_empty() {
            for line in log.lines().filter(|l| l.contains("connection limit")) {
                loud(line);
            }
        }
        assert!(
            failed.is_empty(),
            "{}: {} of {} genuine posts failed (status 0 = no answer within {POST_TIMEOUT:?}): {failed:?}",
            t.tag,
            failed.len(),
            results.len()
        );
    }
    for (tag, kind, tally) in &tallies {
        assert!(
            tally.closed_by_server.load(Ordering::Relaxed) > 0,
            "{tag} {kind:?}: the server never closed an idle connection"
        );
    }
}

fn addresses(range: std::ops::RangeInclusive<u8>) -> Vec<IpAddr> {
    range
        .map(|d| IpAddr::V4(Ipv4Addr::new(127, 0, 0, d)))
        .collect()
}

/// 1,100 idle connections of each kind from one address, and, on another
/// daemon, 1,100 of each spread over 19 addresses against a total cap of 800:
/// in both, the oldest idle connections make room and genuine posts get 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_by_the_thousand_do_not_stop_genuine_notifications() {
    crate::support::init_logging();
    let plain = Daemon::start(false, "").await;
    let tls = Daemon::start(true, "").await;
    let capped = Daemon::start(true, "max_connections = 800").await;
    under_pressure(&[
        Target {
            daemon: &plain,
            kinds: &[Kind::Silent, Kind::H2c],
            from: addresses(2..=2),
            tag: "plain, one address",
            receipt: "PLAIN",
        },
        Target {
            daemon: &tls,
            kinds: &[Kind::H2Tls],
            from: addresses(2..=2),
            tag: "tls, one address",
            receipt: "TLSONE",
        },
        Target {
            daemon: &capped,
            kinds: &[Kind::Silent, Kind::H2Tls],
            from: addresses(2..=20),
            tag: "tls, total cap 800",
            receipt: "TLSCAP",
        },
    ])
    .await;
}

/// Waits for `closed` (the server closed the connection); returns how long it took.
async fn closed_within<F: std::future::Future>(within: Duration, closed: F) -> Duration {
    let started = Instant::now();
    tokio::time::timeout(within, closed)
        .await
        .expect("the server closes the idle connection in time");
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_after_the_idle_timeout() {
    crate::support::init_logging();
    let timeouts = "first_request_timeout_ms = 1000\nidle_timeout_ms = 1000";
    let plain = Daemon::start(false, timeouts).await;
    let tls = Daemon::start(true, timeouts).await;
    let local = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let within = Duration::from_secs(3);

    // Plain TCP, not a byte sent.
    let mut silent = connect_from(local, plain.addr).await.unwrap();
    let took = closed_within(within, async {
        let mut buf = [0u8; 16];
        while silent.read(&mut buf).await.unwrap_or(0) > 0 {}
    })
    .await;
    assert!(
        took >= Duration::from_millis(800),
        "not before the timeout: {took:?}"
    );

    // HTTP/2 without a stream, plain and over TLS.
    let h2c = connect_from(local, plain.addr).await.unwrap();
    closed_within(within, h2_without_streams(h2c)).await;
    let stream = connect_from(local, tls.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::IpAddress(tls.addr.ip().into());
    let h2 = tls_client(&tls.cert()).connect(name, stream).await.unwrap();
    closed_within(within, h2_without_streams(h2)).await;

    // HTTP/2 after a request: idle again once its stream is done.
    let stream = connect_from(local, plain.addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let req = hyper::Request::get(format!("http://{}/healthz", plain.addr))
        .body(Empty::<Bytes>::new())
        .unwrap();
    assert_eq!(send.send_request(req).await.unwrap().status(), 200);
    closed_within(within, conn).await;
    drop(send);
}
