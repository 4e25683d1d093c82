//! Live reload: on SIGHUP (the convention for daemons) `kaching serve`
//! re-reads its file and environment, builds a new [`Runtime`] and swaps it
//! in whole, and puts a re-read certificate in front of new connections.
//! Nothing is dropped: a request in flight finishes on the runtime it
//! started with, an open connection keeps its certificate.
//!
//! An invalid new configuration is refused as a whole (the old one keeps
//! serving, the log names the key, as `kaching check-config` would).
//! Settings that cannot change while serving (listen addresses, the
//! database, its pool) are named in the log when they differ and keep their
//! old value until a restart.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::config::Settings;
use crate::http::tls::{self, CertResolver};
use crate::metrics::Metrics;
use crate::runtime::{Live, Runtime};

/// The settings a reload cannot change, as they were at start.
#[derive(Debug, Clone, PartialEq)]
struct Fixed(Vec<(&'static str, String)>);

impl Fixed {
    fn of(s: &Settings) -> Fixed {
        Fixed(vec![
            ("server.listen", s.server.listen.to_string()),
            ("server.ins_path", s.server.ins_path.clone()),
            ("server.max_body_bytes", s.server.max_body_bytes.to_string()),
            (
                "server.max_connections",
                s.server.max_connections.to_string(),
            ),
            (
                "server.max_connections_per_ip",
                s.server.max_connections_per_ip.to_string(),
            ),
            ("tls.mode", format!("{:?}", s.tls.mode)),
            ("database.url", s.database.url.redacted()),
            (
                "database.max_connections",
                s.database.max_connections.to_string(),
            ),
            (
                "security.rejected_max_rows",
                s.security.rejected_max_rows.to_string(),
            ),
            ("log", format!("{:?}", s.log)),
        ])
    }
}

/// Applies new settings to a running app. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Reloader {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    live: Live,
    certs: Option<Arc<CertResolver>>,
    fixed: Fixed,
    /// One reload at a time.
    busy: Mutex<()>,
    metrics: Arc<Metrics>,
}

impl Reloader {
    pub(crate) fn new(
        settings: &Settings,
        live: Live,
        certs: Option<Arc<CertResolver>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Reloader {
            inner: Arc::new(Inner {
                live,
                certs,
                fixed: Fixed::of(settings),
                busy: Mutex::new(()),
                metrics,
            }),
        }
    }

    /// Builds everything from `settings` first and swaps only when all of
    /// it built: a failure changes nothing.
    pub fn apply(&self, settings: &Settings) -> anyhow::Result<()> {
        let _one = self.inner.busy.lock().unwrap_or_else(|e| e.into_inner());
        let result = self.build_and_swap(settings);
        self.inner.metrics.config_reload(result.is_ok());
        match &result {
            Ok(()) => {}
            Err(e) => {
                tracing::error!(
                    error = format!("{e:#}"),
                    "reload: refused; the running configuration stays in force"
                );
            }
        }
        result
    }

    fn build_and_swap(&self, settings: &Settings) -> anyhow::Result<()> {
        let runtime = Runtime::build(settings)?;
        let cert = match &self.inner.certs {
            // ACME certificates are renewed by their own task, not reloaded.
            Some(_) if settings.tls.mode == crate::config::TlsMode::Acme => None,
            Some(_) => tls::load(&settings.tls, settings.server.listen)?,
            None => None,
        };
        let now = Fixed::of(settings);
        for ((key, old), (_, new)) in self.inner.fixed.0.iter().zip(&now.0) {
            if old != new {
                tracing::warn!(
                    key,
                    "reload: this setting cannot change while serving; it keeps its old value until a restart"
                );
            }
        }
        let accounts = runtime.accounts.len();
        let actions = runtime.actions.iter().count();
        self.inner.live.store(Arc::new(runtime));
        if let (Some(certs), Some(cert)) = (&self.inner.certs, cert) {
            certs.replace(cert);
        }
        tracing::info!(accounts, actions, "reload: applied");
        Ok(())
    }

    /// Reloads from `config` (the `--config` file, or the default) on every
    /// SIGHUP until the process ends.
    pub fn on_sighup(self, config: Option<PathBuf>) {
        #[cfg(unix)]
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let mut hup = match signal(SignalKind::hangup()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "reload: cannot listen for SIGHUP");
                    return;
                }
            };
            while hup.recv().await.is_some() {
                tracing::info!("reload: SIGHUP");
                match Settings::load(config.as_deref()) {
                    Ok(settings) => {
                        let _ = self.apply(&settings);
                    }
                    Err(e) => {
                        self.inner.metrics.config_reload(false);
                        tracing::error!(
                            error = format!("{e:#}"),
                            "reload: cannot load the configuration; the running one stays in force"
                        );
                    }
                }
            }
        });
        #[cfg(not(unix))]
        let _ = config;
    }
}
