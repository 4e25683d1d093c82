//! The accept loop: TCP (optionally TLS) connections served by hyper with
//! the axum router, each request tagged with its peer address; every
//! connection state bounded in time (handshake, first request, idle), the
//! number of open connections capped (see [`super::connections`]), and one
//! graceful shutdown path.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{sleep_until, Instant};
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use super::connections::{Conn, Limits, Registration};

/// A client that opens a connection and says nothing is dropped after this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Slow-loris bound on the request head (hyper's own default is 30 s).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 pings on a connection that has been silent this long, so a dead
/// peer under an open stream is found; half the default idle timeout.
const H2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// An unanswered ping closes the connection after this; a live peer answers
/// within a round trip, 10 s allows for a congested path.
const H2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// After a graceful close was asked for (idle), how long the connection may
/// take to say goodbye (an HTTP/2 GOAWAY and its ping) before it is dropped.
const CLOSE_BOUND: Duration = Duration::from_secs(1);

/// Serves `router` on `listener` until `shutdown` is cancelled, then stops
/// accepting and gives in-flight connections up to `grace` to finish.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    router: Router,
    limits: Arc<Limits>,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let tracker = TaskTracker::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(H2_KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(H2_KEEP_ALIVE_TIMEOUT);
    let builder = Arc::new(builder);

    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "http: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Refused: dropping the stream closes it at once.
        let Some(registration) = limits.admit(peer.ip()) else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tracker.spawn(serve_one(Connection {
            stream,
            peer,
            registration,
            acceptor: acceptor.clone(),
            builder: builder.clone(),
            router: router.clone(),
            limits: limits.clone(),
            shutdown: shutdown.clone(),
            grace,
        }));
    }
    drop(listener);
    tracker.close();
    tracing::info!("http: stopped accepting; finishing in-flight requests");
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!(?grace, "http: in-flight requests did not finish in time");
    }
}

/// What one connection's task owns.
struct Connection {
    stream: TcpStream,
    peer: SocketAddr,
    registration: Registration,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    router: Router,
    limits: Arc<Limits>,
    shutdown: CancellationToken,
    grace: Duration,
}

/// Why a connection is being closed, for the log.
#[derive(Debug, Clone, Copy)]
enum Closing {
    Idle,
    Evicted,
    Shutdown,
}

async fn serve_one(c: Connection) {
    let Connection {
        stream,
        peer,
        registration,
        acceptor,
        builder,
        router,
        limits,
        shutdown,
        grace,
    } = c;
    let state: Arc<Conn> = registration.conn().clone();
    let io = match acceptor {
        None => Either::Right(stream),
        Some(acceptor) => {
            let first_request = Instant::now() + limits.first_request;
            tokio::select! {
                handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)) => match handshake {
                    Ok(Ok(tls)) => Either::Left(tls),
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "http: TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "http: TLS handshake timed out");
                        return;
                    }
                },
                () = sleep_until(first_request) => {
                    tracing::debug!(%peer, "http: no request in time (TLS handshake)");
                    return;
                }
                () = state.evicted() => return,
                () = shutdown.cancelled() => return,
            }
        }
    };
    let service = {
        let state = state.clone();
        hyper::service::service_fn(
            move |mut req: axum::extract::Request<hyper::body::Incoming>| {
                let in_flight = state.begin();
                req.extensions_mut().insert(ConnectInfo(peer));
                let router = router.clone();
                async move {
                    let response = router.oneshot(req).await;
                    drop(in_flight);
                    response
                }
            },
        )
    };
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    // Once a close is under way: why, and when to give up waiting for it.
    let mut closing: Option<(Closing, Instant)> = None;
    loop {
        let idle_at = match state.idle_deadline(limits.first_request, limits.idle) {
            Ok(at) | Err(at) => at,
        };
        let close_by = closing.map_or(idle_at, |(_, by)| by);
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "http: connection ended with an error");
                }
                return;
            }
            () = sleep_until(idle_at), if closing.is_none() => {
                if matches!(state.idle_deadline(limits.first_request, limits.idle), Ok(at) if at <= Instant::now()) {
                    tracing::debug!(%peer, "http: closing an idle connection");
                    conn.as_mut().graceful_shutdown();
                    closing = Some((Closing::Idle, Instant::now() + CLOSE_BOUND));
                }
            }
            () = state.evicted(), if closing.is_none() => {
                // Picked because it was idle: if it still is, nothing is lost by dropping it now.
                if state.idle_now() {
                    return;
                }
                conn.as_mut().graceful_shutdown();
                closing = Some((Closing::Evicted, Instant::now() + CLOSE_BOUND));
            }
            () = shutdown.cancelled(), if closing.is_none() => {
                conn.as_mut().graceful_shutdown();
                closing = Some((Closing::Shutdown, Instant::now() + grace));
            }
            () = sleep_until(close_by), if closing.is_some() => {
                tracing::debug!(%peer, why = ?closing.map(|(why, _)| why), "http: connection did not close in time; dropped");
                return;
            }
        }
    }
}

/// The peer address as seen on the socket.
pub type Peer = ConnectInfo<SocketAddr>;
