//! The accept loop: TCP (optionally TLS) connections served by hyper with
//! the axum router, each request tagged with its peer address; every
//! connection state bounded in time (handshake, first request, idle), the
//! number of open connections and of requests in flight capped (see
//! [`super::connections`]: a request past a cap is answered 503 with
//! `Retry-After` before any routing), a panicking handler answered 500 and
//! counted while the connection goes on, and one graceful shutdown path.

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
use crate::metrics::Metrics;

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
/// Streams one HTTP/2 connection may have open; past it the client waits
/// (its own queue, not kaching's). ClickBank posts over HTTP/1.1.
const H2_MAX_STREAMS: u32 = 64;
/// What a shed request is told: ClickBank retries on its own schedule, a
/// client that honours the header comes back after this.
const SHED_RETRY_AFTER: &str = "5";

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
        .keep_alive_timeout(H2_KEEP_ALIVE_TIMEOUT)
        .max_concurrent_streams(H2_MAX_STREAMS);
    let builder = Arc::new(builder);
    let router = catch_panics(router, limits.metrics().clone());

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
                    // A CA's TLS-ALPN-01 validation: the handshake was the answer.
                    Ok(Ok(tls)) if tls.get_ref().1.alpn_protocol() == Some(super::acme::ACME_TLS_ALPN) => {
                        tracing::debug!(%peer, "http: answered an ACME tls-alpn-01 validation");
                        return;
                    }
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
        let limits = limits.clone();
        hyper::service::service_fn(
            move |mut req: axum::extract::Request<hyper::body::Incoming>| {
                let in_flight = state.begin();
                req.extensions_mut().insert(ConnectInfo(peer));
                let router = router.clone();
                let limits = limits.clone();
                async move {
                    match in_flight {
                        Ok(in_flight) => {
                            let response = router.oneshot(req).await;
                            drop(in_flight);
                            response
                        }
                        Err(why) => {
                            limits.shed(peer.ip(), why);
                            Ok(shed())
                        }
                    }
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

/// The answer to a request past an in-flight cap.
fn shed() -> axum::response::Response {
    use axum::response::IntoResponse as _;
    (
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        [(axum::http::header::RETRY_AFTER, SHED_RETRY_AFTER)],
        "overloaded; retry later\n",
    )
        .into_response()
}

/// A handler that panics is a bug, not a reason to drop the connection
/// unanswered: the panic is logged (its message, which names the code, not
/// the request), counted, and answered 500; the process serves on.
fn catch_panics(router: Router, metrics: Arc<Metrics>) -> Router {
    router.layer(tower_http::catch_panic::CatchPanicLayer::custom(
        move |panic: Box<dyn std::any::Any + Send>| {
            metrics.panicked();
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(panic = %message, "http: a request handler panicked; answered 500 (a bug: please report it)");
            use axum::response::IntoResponse as _;
            (
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                "internal error\n",
            )
                .into_response()
        },
    ))
}

/// The peer address as seen on the socket.
pub type Peer = ConnectInfo<SocketAddr>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;
    use crate::http::connections::Caps;

    #[tokio::test]
    async fn a_panicking_handler_gets_500_and_the_connection_serves_on() {
        let metrics = Arc::new(Metrics::default());
        let caps = Caps {
            total: 8,
            per_ip: 8,
            in_flight: 8,
            in_flight_per_ip: 8,
            nofile: None,
        };
        let limits = Arc::new(Limits::new(&Settings::default(), caps, metrics.clone()));
        let router = Router::new()
            .route(
                "/boom",
                axum::routing::get(|| async {
                    if std::hint::black_box(true) {
                        panic!("a bug in a handler");
                    }
                    "unreachable"
                }),
            )
            .route("/fine", axum::routing::get(|| async { "fine" }));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(
            listener,
            None,
            router,
            limits,
            shutdown.clone(),
            Duration::from_secs(1),
        ));
        // One kept-alive connection for all three requests.
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .build()
            .unwrap();
        let get = |path: &str| client.get(format!("http://{addr}{path}")).send();
        let r = get("/boom").await.unwrap();
        assert_eq!(r.status(), 500);
        assert_eq!(r.text().await.unwrap(), "internal error\n");
        assert_eq!(get("/fine").await.unwrap().text().await.unwrap(), "fine");
        assert_eq!(get("/boom").await.unwrap().status(), 500);
        assert!(metrics.encode().contains("kaching_http_panics_total 2"));
        shutdown.cancel();
        server.await.unwrap();
    }
}
