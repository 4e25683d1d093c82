//! `kaching health`: the daemon's own health check, for a container's
//! HEALTHCHECK or a load balancer's script: GET `/healthz` (or `/readyz`)
//! on the configured INS listener, from this host. And `kaching doctor`:
//! what users get wrong, each with how to fix it ([`doctor`]).

mod checks;

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
        TlsMode::SelfSigned | TlsMode::Files | TlsMode::Acme => "https",
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

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    /// Works, but is worth a look (a certificate expiring in 10 days).
    Warn,
    /// A problem: `kaching doctor` exits non-zero.
    Fail,
}

/// One finding of `kaching doctor`: what was checked, what was found, and
/// how to fix it when it is not right.
#[derive(Debug, Clone)]
pub struct Finding {
    pub check: &'static str,
    pub verdict: Verdict,
    pub detail: String,
    pub fix: Option<String>,
}

impl Finding {
    fn ok(check: &'static str, detail: impl Into<String>) -> Finding {
        Finding {
            check,
            verdict: Verdict::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    fn bad(
        check: &'static str,
        verdict: Verdict,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Finding {
        Finding {
            check,
            verdict,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

/// Every check, in order; those that need a valid configuration are
/// skipped when it is not.
pub async fn doctor(config: Option<&std::path::Path>) -> Vec<Finding> {
    let mut out = Vec::new();
    let settings = match Settings::load(config) {
        Ok(s) => s,
        Err(e) => {
            out.push(Finding::bad(
                "config",
                Verdict::Fail,
                format!("{e}: {}", error_chain(&e)),
                "fix the file (kaching check-config names the key)",
            ));
            return out;
        }
    };
    let runtime = match crate::runtime::Runtime::build(&settings) {
        Ok(r) => r,
        Err(e) => {
            out.push(Finding::bad(
                "config",
                Verdict::Fail,
                e.to_string(),
                "fix the key it names (kaching check-config)",
            ));
            return out;
        }
    };
    out.push(Finding::ok(
        "config",
        format!(
            "valid: {} account(s), {} action(s), {} alert rule(s)",
            runtime.accounts.len(),
            runtime.actions.iter().count(),
            settings.alerts.len()
        ),
    ));
    out.extend(checks::database(&settings).await);
    out.extend(checks::account_keys(&runtime));
    out.extend(checks::certificate(&settings));
    out.push(checks::listen(&settings).await);
    out.extend(checks::permissions(&settings));
    out.extend(checks::targets(&settings).await);
    out
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = Vec::new();
    let mut source = e.source();
    while let Some(s) = source {
        parts.push(s.to_string());
        source = s.source();
    }
    parts.join(": ")
}
