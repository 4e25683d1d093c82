//! Wiring: from validated settings to a running server. `main` and the tests
//! use the same steps: [`App::build`] (store, migrations, TLS, metrics), then
//! [`App::serve`] on the listeners the caller bound (the INS one, and the
//! admin one from [`bind_admin`] when `[admin]` is on), until a shutdown future.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use arc_swap::ArcSwap;

use crate::actions::Dispatcher;
use crate::admin::{self, AdminState};
use crate::config::{Settings, TlsMode};
use crate::http::{self, AppState};
use crate::ingest::{Ingest, RejectedKeeper};
use crate::metrics::Metrics;
use crate::reload::Reloader;
use crate::report::Reports;
use crate::runtime::{Live, Runtime};
use crate::store::{Store, Writer};

/// Open connections the admin listener takes: a scraper or two and an
/// operator's browser need a handful.
const ADMIN_MAX_CONNECTIONS: usize = 64;

pub struct App {
    state: Arc<AppState>,
    writers: tokio::task::JoinSet<()>,
    dispatcher: tokio::task::JoinHandle<()>,
    keeper: tokio::task::JoinHandle<()>,
    projector: tokio::task::JoinHandle<()>,
    alerts: tokio::task::JoinHandle<()>,
    reconcile: tokio::task::JoinHandle<()>,
    risk: tokio::task::JoinHandle<()>,
    retention: tokio::task::JoinHandle<()>,
    token: CancellationToken,
    router: axum::Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    reloader: Reloader,
    limits: Arc<http::connections::Limits>,
    grace: Duration,
    metrics: Arc<Metrics>,
    admin: Option<AdminServer>,
    /// `tls.mode = "acme"`: the renewal task, started once the listeners are
    /// bound, and the `http-01` listener's address.
    acme: Option<(http::acme::Acme, Option<std::net::SocketAddr>)>,
}

/// The admin listener's half of the app (see [`crate::admin`]).
struct AdminServer {
    router: axum::Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: Arc<http::connections::Limits>,
}

/// Binds `[admin] listen`; `None` when the admin listener is off.
pub async fn bind_admin(settings: &Settings) -> anyhow::Result<Option<TcpListener>> {
    let Some(admin) = settings.admin.resolve(settings.tls.mode)? else {
        return Ok(None);
    };
    let listener = TcpListener::bind(admin.listen)
        .await
        .with_context(|| format!("cannot listen on {} (admin.listen)", admin.listen))?;
    Ok(Some(listener))
}

/// Connects to the configured database and, when `migrate`, applies the
/// embedded migrations (commands that only read skip them: they may run with
/// a read-only role).
pub async fn open_store(settings: &Settings, migrate: bool) -> anyhow::Result<Store> {
    let store = Store::connect(&settings.database)
        .await
        .with_context(|| format!("cannot open the database {:?}", settings.database.url))?;
    if migrate {
        store
            .migrate()
            .await
            .context("cannot migrate the database")?;
    }
    Ok(store)
}

/// Refuses a data key that cannot open what the database holds: every key
/// that ever sealed a row here must be the data key or a previous one.
pub async fn check_data_keys(store: &Store, runtime: &Runtime) -> anyhow::Result<()> {
    let Some(keys) = &runtime.data_keys else {
        return Ok(());
    };
    let unknown: Vec<String> = store
        .data_key_ids()
        .await
        .context("cannot read the data keys in use")?
        .into_iter()
        .filter(|id| !keys.knows(id))
        .collect();
    if !unknown.is_empty() {
        anyhow::bail!(
            "privacy.data_key_file / data_key_env: the database holds customer data sealed under key {} \
             but the configured data key is {} and previous_data_keys has none of them: \
             configure the key that was used (a new key goes in data_key_file, the old one in previous_data_keys)",
            unknown.join(", "),
            keys.current_id()
        );
    }
    store
        .record_data_key(keys.current_id(), chrono::Utc::now())
        .await
        .context("cannot record the data key")?;
    tracing::info!(
        key = keys.current_id(),
        "privacy: customer data is sealed at rest"
    );
    Ok(())
}

impl App {
    /// Connects and migrates the store, loads or makes the TLS certificate.
    pub async fn build(settings: &Settings) -> anyhow::Result<App> {
        let runtime = Runtime::build(settings).context("invalid configuration")?;
        let store = open_store(settings, true).await?;
        tracing::info!(backend = store.backend(), "store: migrated");
        check_data_keys(&store, &runtime).await?;
        let (tls, certs) = match http::tls::server_config(&settings.tls, settings.server.listen)? {
            Some((config, certs)) => (Some(config), Some(certs)),
            None => (None, None),
        };
        if settings.tls.mode == TlsMode::Off {
            tracing::warn!("tls: off; serve only behind a TLS-terminating proxy");
            if settings.security.trusted_proxies.is_empty() {
                tracing::warn!(
                    "security: tls is off but no trusted_proxies: every post will seem to come from the proxy, \
                     so allowed_ips and the failure limit see one address"
                );
            }
        }
        if settings.security.allowed_ips.is_empty() {
            tracing::warn!(
                "security: no allowed_ips; any address may post (ClickBank publishes no IP ranges, so this is usual)"
            );
        }
        let actions = runtime.actions.clone();
        let metrics = Arc::new(Metrics::from_settings(settings, &actions));
        let (writer, writers) = Writer::spawn(store.clone(), metrics.clone());
        let token = CancellationToken::new();
        let grace = Duration::from_millis(settings.server.shutdown_timeout_ms);
        let live: Live = Arc::new(ArcSwap::from_pointee(runtime));
        let in_force = live.clone();
        let (dispatch, dispatcher) = Dispatcher::spawn(
            store.clone(),
            move || in_force.load().actions.clone(),
            token.clone(),
            grace,
            metrics.clone(),
        );
        let (rejected, keeper) = RejectedKeeper::spawn(
            store.clone(),
            settings.security.rejected_max_rows,
            metrics.clone(),
        );
        let slot: crate::risk::Slot = Default::default();
        if let Err(e) = crate::risk::train::refresh(&store, &slot).await {
            tracing::warn!(error = %e, "risk: cannot load the model; sales are not scored until one loads");
        }
        let retrain_every = settings
            .risk
            .retrain_every
            .as_deref()
            .map(humantime::parse_duration)
            .transpose()
            .context("risk.retrain_every is not a duration")?;
        let risk = crate::risk::spawn(
            store.clone(),
            slot.clone(),
            i64::from(settings.risk.window_days),
            retrain_every,
            token.clone(),
        );
        let retention = crate::privacy::erase::spawn_retention(
            store.clone(),
            settings.privacy.customer_data_retention_days,
            settings.privacy.rejected_retention_days,
            token.clone(),
        );
        let recovered = Arc::new(crate::reconcile::Recovered::default());
        recovered
            .refresh(&store)
            .await
            .context("cannot read the orders reconciliation recovered")?;
        let mut ingest = Ingest::new(live.clone(), writer, Some(rejected), Some(dispatch.clone()))
            .with_recovered(recovered.clone());
        if settings.risk.enabled {
            ingest = ingest.with_risk(slot);
        }
        let reports = Reports::new(store.clone(), Some(live.clone()));
        let alerts = crate::alerts::spawn(store.clone(), live.clone(), token.clone());
        let projector = reports.clone().spawn(ingest.subscribe(), token.clone());
        let admin = match settings.admin.resolve(settings.tls.mode)? {
            None => None,
            Some(a) => {
                if a.open() {
                    tracing::warn!(
                        listen = %a.listen,
                        "admin: no credential configured: the dashboard and API are open to anyone on this machine (loopback only)"
                    );
                }
                let state = AdminState {
                    metrics: metrics.clone(),
                    store: store.clone(),
                    actions: actions.iter().map(|a| a.name.to_string()).collect(),
                    reports: reports.clone(),
                    auth: admin::Auth::new(&a),
                    live: live.clone(),
                    commits: ingest.commits(),
                    dispatcher: Some(dispatch),
                    templates: admin::pages::Templates::new()
                        .context("the dashboard's templates do not parse")?,
                };
                let caps = http::connections::Caps {
                    total: ADMIN_MAX_CONNECTIONS,
                    per_ip: ADMIN_MAX_CONNECTIONS,
                    // A dashboard page makes a few requests at once, a scraper one.
                    in_flight: ADMIN_MAX_CONNECTIONS * 4,
                    in_flight_per_ip: ADMIN_MAX_CONNECTIONS * 4,
                    nofile: None,
                };
                Some(AdminServer {
                    router: admin::router(Arc::new(state)),
                    // Plain HTTP on loopback; the INS listener's certificate elsewhere.
                    tls: if a.tls() { tls.clone() } else { None },
                    limits: Arc::new(http::connections::Limits::new(
                        settings,
                        caps,
                        metrics.clone(),
                    )),
                })
            }
        };
        let ingest = Arc::new(ingest);
        let reconcile = crate::reconcile::spawn(
            store.clone(),
            live.clone(),
            ingest.clone(),
            recovered,
            metrics.clone(),
            token.clone(),
        );
        let state = Arc::new(AppState {
            store,
            ingest,
            metrics: metrics.clone(),
        });
        let reloader = Reloader::new(settings, live, certs.clone(), metrics.clone());
        let router = http::router(settings, state.clone());
        let acme = match (&certs, settings.tls.mode) {
            (Some(certs), TlsMode::Acme) => Some((
                http::acme::Acme::new(&settings.tls.acme, certs.clone(), metrics.clone()),
                settings.tls.acme.http_listen,
            )),
            _ => None,
        };
        let caps = http::connections::caps(settings);
        let limits = Arc::new(http::connections::Limits::new(
            settings,
            caps,
            metrics.clone(),
        ));
        Ok(App {
            state,
            writers,
            dispatcher,
            keeper,
            projector,
            alerts,
            reconcile,
            risk,
            retention,
            token,
            router,
            tls,
            reloader,
            limits,
            grace: Duration::from_millis(settings.server.shutdown_timeout_ms),
            metrics,
            admin,
            acme,
        })
    }

    pub fn store(&self) -> &Store {
        &self.state.store
    }

    /// What applies new settings to this app while it serves.
    pub fn reloader(&self) -> Reloader {
        self.reloader.clone()
    }

    /// The metrics (for a configuration reload to count itself).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Serves INS on `listener` and, when `[admin]` is on, the admin routes
    /// on `admin` (from [`bind_admin`]; `None` serves none), until
    /// `shutdown` completes; then drains and closes the store.
    pub async fn serve(
        self,
        listener: TcpListener,
        admin: Option<TcpListener>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let addr = listener
            .local_addr()
            .context("cannot read the listening address")?;
        let token = self.token.clone();
        let trigger = token.clone();
        tokio::spawn(async move {
            shutdown.await;
            // systemd (Type=notify): stopping, not stuck.
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
            trigger.cancel();
        });
        tracing::info!(
            %addr,
            tls = self.tls.is_some(),
            accounts = self.state.ingest.runtime().accounts.len(),
            "http: listening"
        );
        let admin = match (self.admin, admin) {
            (Some(server), Some(listener)) => {
                let addr = listener
                    .local_addr()
                    .context("cannot read the admin listening address")?;
                tracing::info!(%addr, tls = server.tls.is_some(), "admin: listening (dashboard, /api/v1, /metrics)");
                Some(http::server::serve(
                    listener,
                    server.tls,
                    server.router,
                    server.limits,
                    token.clone(),
                    self.grace,
                ))
            }
            (None, Some(_)) => {
                tracing::warn!("admin: [admin] listen is off; not serving the listener given");
                None
            }
            (_, None) => None,
        };
        let public = http::server::serve(
            listener,
            self.tls,
            self.router,
            self.limits,
            token,
            self.grace,
        );
        let acme = match self.acme {
            Some((acme, http_listen)) => {
                if let Some(addr) = http_listen {
                    let listener = TcpListener::bind(addr)
                        .await
                        .with_context(|| format!("cannot listen on tls.acme.http_listen {addr}"))?;
                    let router = http::acme::http_router(acme.challenges().clone());
                    let stop = self.token.clone();
                    tracing::info!(%addr, "acme: http-01 listener (challenges, and redirects to HTTPS)");
                    tokio::spawn(async move {
                        let serving = axum::serve(listener, router)
                            .with_graceful_shutdown(async move { stop.cancelled().await });
                        if let Err(e) = serving.await {
                            tracing::error!(error = %e, "acme: the http-01 listener failed");
                        }
                    });
                }
                Some(tokio::spawn(acme.run(self.token.clone())))
            }
            None => None,
        };
        // systemd (Type=notify): both listeners are bound, the store is
        // migrated and open. Nothing happens without $NOTIFY_SOCKET.
        if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
            tracing::warn!(error = %e, "systemd: cannot report readiness");
        }
        match admin {
            Some(admin) => {
                tokio::join!(public, admin);
            }
            None => public.await,
        }
        // The writers stop once the last request holding a handle is gone.
        let store = self.state.store.clone();
        drop(self.state);
        // It saw the token: it stops, and lets go of its hold on the writers.
        let _ = tokio::time::timeout(self.grace, self.reconcile).await;
        let mut writers = self.writers;
        if tokio::time::timeout(self.grace, async {
            while writers.join_next().await.is_some() {}
        })
        .await
        .is_err()
        {
            tracing::warn!("store: writers did not finish in time");
        }
        if tokio::time::timeout(self.grace, self.keeper).await.is_err() {
            tracing::warn!("ins: rejected posts still queued at shutdown were not kept");
        }
        // The projector saw the token too; what it did not project, the next start will.
        let _ = tokio::time::timeout(self.grace, self.projector).await;
        let _ = tokio::time::timeout(self.grace, self.alerts).await;
        self.risk.abort();
        self.retention.abort();
        if let Some(acme) = acme {
            acme.abort();
        }
        // The dispatcher saw the same token: it stopped claiming and drains itself.
        if let Err(e) = self.dispatcher.await {
            tracing::error!(error = %e, "dispatcher: ended abnormally");
        }
        store.close().await;
        tracing::info!("kaching: stopped");
        Ok(())
    }
}
