//! `kaching health`: the daemon's own health check, for a container's
//! HEALTHCHECK or a load balancer's script: GET `/healthz` (or `/readyz`)
//! on the configured INS listener, from this host.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use anyhow::Context as _;

use crate::config::{Settings, TlsMode};

/// Where this host reaches the INS listener: the configured address, or
/// loopback when it listens on every interface.
pub fn local_address(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// Ok when the daemon answers 200 (`ready`: its store takes commits too).
pub async fn health(settings: &Settings, ready: bool) -> anyhow::Result<String> {
    let addr = local_address(settings.server.listen);
    let scheme = match settings.tls.mode {
        TlsMode::Off => "http",
        TlsMode::SelfSigned | TlsMode::Files => "https",
    };
    let path = if ready { "readyz" } else { "healthz" };
    let url = format!("{scheme}://{addr}/{path}");
    // This host's own listener, reached by address: its certificate names
    // the public host, not this address, so it is not checked here.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .danger_accept_invalid_certs(true)
        .build()?;
    let r = client
        .get(&url)
        .send()
        .await
        .with_context(|| format!("nothing answers at {url}"))?;
    let status = r.status();
    let body = r.text().await.unwrap_or_default();
    anyhow::ensure!(
        status.is_success(),
        "{url} answered {status}: {}",
        body.trim()
    );
    Ok(format!("{url}: {}", body.trim()))
}
