//! The test harness: the real server on 127.0.0.1:0 over real TLS, against a
//! fresh SQLite file or a fresh database on the real Postgres server.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use kaching::app::App;
use kaching::config::{AccountSettings, SecretUrl, Settings, TlsMode};
use kaching::store::{Store, StoredNotification};
use secrecy::SecretString;
use sqlx::Connection;
use tokio::sync::oneshot;

/// The key of the `acme` account every test app has.
pub const KEY: &str = "ACMEKEY123456789";
/// A second account, `affil`.
pub const OTHER_KEY: &str = "AFFILKEY00000002";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Declares each listed `async fn name(backend: Backend)` as two tests,
/// `sqlite::name` and `postgres::name`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { super::$name($crate::support::Backend::Sqlite).await } )*
        }
        mod postgres {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { super::$name($crate::support::Backend::Postgres).await } )*
        }
    };
}

pub fn init_logging() {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "debug,sqlx=warn,hyper=info,rustls=info",
            ))
            .with_test_writer()
            .try_init();
    }
}

/// Says something past libtest's output capture (which takes only the
/// print macros), so a skipped test is seen even when it "passes".
pub fn loud(message: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "\n*** {message} ***\n");
}

fn admin_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A database of its own on the Postgres server, dropped when this is.
pub struct PgDatabase {
    pub name: String,
    pub url: String,
}

impl PgDatabase {
    /// `None` (after saying so loudly) when no server is reachable, except
    /// under CI, where that is a failure.
    pub async fn create() -> Option<PgDatabase> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let admin = admin_url();
        let mut conn =
            match tokio::time::timeout(Duration::from_secs(5), sqlx::PgConnection::connect(&admin))
                .await
            {
                Ok(Ok(c)) => c,
                outcome => {
                    let why = match outcome {
                        Ok(Err(e)) => e.to_string(),
                        _ => "timed out".to_owned(),
                    };
                    if std::env::var("CI").is_ok_and(|v| v == "true") {
                        panic!(
                            "Postgres tests cannot run under CI: cannot connect to {admin}: {why}"
                        );
                    }
                    loud(&format!(
                    "SKIPPED a Postgres test: cannot connect to {admin} ({why}). Set DATABASE_URL."
                ));
                    return None;
                }
            };
        let name = format!(
            "kaching_test_{}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            rand::random::<u32>()
        );
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .expect("create the test database");
        let mut url = url::Url::parse(&admin).expect("DATABASE_URL is a URL");
        url.set_path(&name);
        Some(PgDatabase {
            name,
            url: url.to_string(),
        })
    }

    /// Runs a statement on the admin connection (for breaking the database on purpose).
    pub async fn admin(&self, sql: &str) {
        let mut conn = sqlx::PgConnection::connect(&admin_url())
            .await
            .expect("admin connection");
        sqlx::query(sql)
            .execute(&mut conn)
            .await
            .expect("admin statement");
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside any runtime guarantee: use a thread of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(rt) = rt {
                rt.block_on(async {
                    if let Ok(mut c) = sqlx::PgConnection::connect(&admin_url()).await {
                        let _ =
                            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                                .execute(&mut c)
                                .await;
                    }
                });
            }
        })
        .join();
    }
}

pub fn account(name: &str, key: &str) -> AccountSettings {
    AccountSettings {
        name: name.into(),
        secret_key: Some(SecretString::from(key.to_owned())),
        ..Default::default()
    }
}

pub struct TestApp {
    pub base: String,
    pub addr: std::net::SocketAddr,
    /// The admin listener's base URL (`http://127.0.0.1:PORT`), when `[admin]` is on.
    pub admin_base: Option<String>,
    pub client: reqwest::Client,
    pub store: Store,
    pub settings: Settings,
    pub dir: tempfile::TempDir,
    pub pg: Option<PgDatabase>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestApp {
    /// Settings for a test: loopback, self-signed TLS in a temp dir, accounts
    /// `acme` and `affil`, and the database of `backend`.
    pub async fn settings(
        backend: Backend,
        dir: &tempfile::TempDir,
    ) -> Option<(Settings, Option<PgDatabase>)> {
        let mut s = Settings::default();
        s.server.listen = "127.0.0.1:0".parse().expect("address");
        s.admin.listen = "127.0.0.1:0".into();
        s.tls.mode = TlsMode::SelfSigned;
        s.tls.self_signed_dir = dir.path().join("tls");
        s.privacy.data_key_file = Some(dir.path().join("kaching.key"));
        s.accounts = vec![account("acme", KEY), account("affil", OTHER_KEY)];
        let pg = match backend {
            Backend::Sqlite => {
                s.database.url = SecretUrl(format!(
                    "sqlite://{}",
                    dir.path().join("kaching.db").display()
                ));
                None
            }
            Backend::Postgres => {
                let db = PgDatabase::create().await?;
                s.database.url = SecretUrl(db.url.clone());
                Some(db)
            }
        };
        Some((s, pg))
    }

    /// Starts the real server. `None` when the backend cannot run here (see [`PgDatabase::create`]).
    pub async fn spawn(backend: Backend, configure: impl FnOnce(&mut Settings)) -> Option<TestApp> {
        init_logging();
        let dir = tempfile::tempdir().expect("temp dir");
        let (mut settings, pg) = Self::settings(backend, &dir).await?;
        configure(&mut settings);
        Some(Self::start(settings, dir, pg).await)
    }

    pub async fn start(
        settings: Settings,
        dir: tempfile::TempDir,
        pg: Option<PgDatabase>,
    ) -> TestApp {
        let app = App::build(&settings).await.expect("build the app");
        let store = app.store().clone();
        let listener = tokio::net::TcpListener::bind(settings.server.listen)
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let admin = kaching::app::bind_admin(&settings)
            .await
            .expect("bind the admin listener");
        let admin_addr = admin
            .as_ref()
            .map(|l| l.local_addr().expect("admin local addr"));
        let (tx, rx) = oneshot::channel::<()>();
        let server = tokio::spawn(app.serve(listener, admin, async move {
            let _ = rx.await;
        }));
        let tls = settings.tls.mode != TlsMode::Off;
        let scheme = if tls { "https" } else { "http" };
        TestApp {
            base: format!("{scheme}://{addr}"),
            addr,
            admin_base: admin_addr.map(|a| format!("http://{a}")),
            client: Self::client_for(&settings, None),
            store,
            settings,
            dir,
            pg,
            shutdown: Some(tx),
            server: Some(server),
        }
    }

    /// A client that trusts the server's certificate and, given `from`,
    /// connects from that local address (another 127.0.0.0/8 address is
    /// another sender to the server).
    fn client_for(settings: &Settings, from: Option<std::net::IpAddr>) -> reqwest::Client {
        let mut client = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .local_address(from)
            .use_rustls_tls();
        if settings.tls.mode == TlsMode::SelfSigned {
            let pem = std::fs::read(settings.tls.self_signed_dir.join("cert.pem"))
                .expect("the generated certificate");
            client =
                client.add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("PEM"));
        }
        client.build().expect("client")
    }

    /// A client posting from `from` (e.g. 127.0.0.2) instead of 127.0.0.1.
    pub fn client_from(&self, from: &str) -> reqwest::Client {
        Self::client_for(&self.settings, Some(from.parse().expect("an address")))
    }

    pub async fn post(&self, path: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.client
            .post(format!("{}{path}", self.base))
            .body(body)
            .send()
            .await
            .expect("the request reaches the server")
    }

    /// Posts to `/ins` and returns (status, body text).
    pub async fn post_ins(&self, body: impl Into<reqwest::Body>) -> (u16, String) {
        let r = self.post("/ins", body).await;
        (r.status().as_u16(), r.text().await.expect("body"))
    }

    /// Posts one notification per (receipt, type) at transaction time `time`,
    /// each encrypted under `KEY`, and asserts each is acknowledged.
    pub async fn post_accepted(&self, posts: &[(&str, &str)], time: &str) {
        for (receipt, kind) in posts {
            let (status, _) = self
                .post_ins(envelope(KEY, &plaintext(receipt, kind, time, 1)))
                .await;
            assert_eq!(status, 200, "{receipt} {kind}");
        }
    }

    /// The admin base URL; panics when the test turned `[admin]` off.
    pub fn admin(&self) -> &str {
        self.admin_base
            .as_deref()
            .expect("the admin listener is on")
    }

    /// `GET {admin}/metrics`: the Prometheus text.
    pub async fn scrape(&self) -> String {
        let r = self
            .client
            .get(format!("{}/metrics", self.admin()))
            .send()
            .await
            .expect("the scrape reaches the admin listener");
        assert_eq!(r.status(), 200, "GET /metrics");
        r.text().await.expect("the metrics text")
    }

    pub async fn rows(&self) -> Vec<StoredNotification> {
        self.store
            .recent_notifications(10_000, None)
            .await
            .expect("list notifications")
    }

    /// Stops the server the way a signal would; returns once it has.
    pub async fn stop(mut self) -> Self {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            tokio::time::timeout(Duration::from_secs(15), server)
                .await
                .expect("the server stops in time")
                .expect("the server task")
                .expect("serve returns Ok");
        }
        self
    }
}

/// A v6 plaintext notification in ClickBank's own field order and number
/// format (`37.00`, `6.0`), with non-ASCII customer names.
pub fn plaintext(receipt: &str, kind: &str, time: &str, attempt: u32) -> String {
    format!(
        concat!(
            r#"{{"transactionTime":"{time}","receipt":"{receipt}","transactionType":"{kind}","#,
            r#""vendor":"acmevendor","affiliate":"someaff","role":"VENDOR","totalAccountAmount":37.00,"#,
            r#""paymentMethod":"VISA","totalOrderAmount":47.00,"totalTaxAmount":0.00,"totalShippingAmount":0.00,"#,
            r#""currency":"USD","lineItems":[{{"itemNo":"1","productTitle":"Widget","shippable":false,"#,
            r#""recurring":false,"accountAmount":37.00,"quantity":1,"lineItemType":"ORIGINAL"}}],"#,
            r#""customer":{{"billing":{{"firstName":"Zoë","lastName":"Ångström","fullName":"Zoë Ångström","#,
            r#""email":"zoe@example.com","address":{{"country":"SE"}}}}}},"version":6.0,"attemptCount":{attempt}}}"#
        ),
        time = time,
        receipt = receipt,
        kind = kind,
        attempt = attempt
    )
}

/// `plaintext` encrypted under `key` with a fresh IV, as ClickBank sends it.
pub fn envelope(key: &str, plaintext: &str) -> String {
    kaching::ins::encrypt(key, plaintext.as_bytes(), kaching::ins::random_iv())
}

pub fn sale(receipt: &str) -> String {
    envelope(
        KEY,
        &plaintext(receipt, "SALE", "2026-11-20T10:00:00-08:00", 1),
    )
}

/// Counts every stored notification in the reports, while the app's own
/// projector may be doing the same: a pass that collides with it (the
/// same rows, projected once) is tried again.
pub async fn projected(store: &Store) {
    let reports = kaching::report::Reports::new(store.clone(), None);
    for _ in 0..50 {
        if reports.backfill().await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the reports never caught up");
}
