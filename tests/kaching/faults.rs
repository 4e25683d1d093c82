//! The store failing under load, for real: SQLite on a full filesystem (a
//! 4 MiB tmpfs, as root) and at its size cap (`PRAGMA max_page_count`, no
//! root needed), and a Postgres server stopped with `-m immediate` while
//! batches commit. In each, every 200 must be a stored row, duplicates count
//! only copies that were really sent, and kaching recovers by itself.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kaching::config::SecretUrl;
use sqlx::Connection;

use crate::support::{envelope, loud, plaintext, Backend, TestApp, KEY};

/// Sends of each receipt and whether one was acknowledged, shared by the posters.
#[derive(Default)]
struct Ledger {
    sends: HashMap<String, u32>,
    acked: HashMap<String, bool>,
    refused: u32,
}

/// Posts notification `receipt` (a fresh IV per send, as ClickBank retries)
/// and records the answer.
async fn send(app: &TestApp, ledger: &Mutex<Ledger>, receipt: &str) -> u16 {
    let body = envelope(
        KEY,
        &plaintext(receipt, "SALE", "2026-11-20T10:00:00-08:00", 1),
    );
    let status = match app
        .client
        .post(format!("{}/ins", app.base))
        .body(body)
        .send()
        .await
    {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    };
    let mut l = ledger.lock().unwrap();
    *l.sends.entry(receipt.to_owned()).or_default() += 1;
    if status == 200 {
        l.acked.insert(receipt.to_owned(), true);
    } else {
        l.acked.entry(receipt.to_owned()).or_insert(false);
        l.refused += 1;
    }
    status
}

/// `workers` posters sending new receipts `{prefix}{n}` until `stop` says so.
fn posters(
    app: &Arc<TestApp>,
    ledger: &Arc<Mutex<Ledger>>,
    prefix: &'static str,
    workers: usize,
    stop: impl Fn(&Ledger) -> bool + Send + Sync + 'static,
    deadline: Instant,
) -> Vec<tokio::task::JoinHandle<()>> {
    let stop = Arc::new(stop);
    (0..workers)
        .map(|w| {
            let (app, ledger, stop) = (app.clone(), ledger.clone(), stop.clone());
            tokio::spawn(async move {
                for n in 0.. {
                    if Instant::now() > deadline || stop(&ledger.lock().unwrap()) {
                        return;
                    }
                    send(&app, &ledger, &format!("{prefix}{w:02}X{n:05}")).await;
                }
            })
        })
        .collect()
}

async fn join(tasks: Vec<tokio::task::JoinHandle<()>>) {
    for t in tasks {
        t.await.unwrap();
    }
}

/// Every acknowledged receipt is stored; no row counts more copies than
/// were sent after its first. Returns (acked, stored).
async fn check_ledger(app: &TestApp, ledger: &Mutex<Ledger>) -> (usize, usize) {
    let rows = app.rows().await;
    let stored: HashMap<String, i64> = rows
        .iter()
        .map(|r| (r.notification.receipt.to_string(), r.duplicates))
        .collect();
    let l = ledger.lock().unwrap();
    let lost: Vec<&String> = l
        .acked
        .iter()
        .filter(|(r, ok)| **ok && !stored.contains_key(*r))
        .map(|(r, _)| r)
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged notifications are not stored, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    for (receipt, dups) in &stored {
        let sends = i64::from(*l.sends.get(receipt).unwrap_or(&0));
        assert!(
            *dups < sends,
            "{receipt}: {dups} duplicates counted but only {sends} sends"
        );
    }
    (l.acked.values().filter(|ok| **ok).count(), stored.len())
}

async fn ready(app: &TestApp) -> u16 {
    match app.client.get(format!("{}/readyz", app.base)).send().await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

/// Re-sends every receipt not yet acknowledged (ClickBank's retries) until
/// each is, within `within`; then checks the ledger again.
async fn retry_the_refused(app: &TestApp, ledger: &Mutex<Ledger>, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let pending: Vec<String> = {
            let l = ledger.lock().unwrap();
            l.acked
                .iter()
                .filter(|(_, ok)| !**ok)
                .map(|(r, _)| r.clone())
                .collect()
        };
        if pending.is_empty() {
            return;
        }
        let mut statuses = Vec::new();
        for r in pending {
            statuses.push(send(app, ledger, &r).await);
        }
        assert!(
            Instant::now() < deadline,
            "{} notifications still refused after recovery: {statuses:?}",
            statuses.len()
        );
    }
}

/// After space returns: ready again, posts acknowledged, within seconds.
async fn recovers_by_itself(app: &TestApp, ledger: &Mutex<Ledger>) -> Duration {
    let freed = Instant::now();
    let mut n = 0;
    loop {
        n += 1;
        let status = send(app, ledger, &format!("RECOVER{n:04}")).await;
        if status == 200 && ready(app).await == 200 {
            return freed.elapsed();
        }
        assert!(
            freed.elapsed() < Duration::from_secs(15),
            "no recovery 15 s after space returned (last status {status})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// A tmpfs of `size` mounted at `dir`, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(dir.to_owned()))
    }
}

impl Tmpfs {
    fn grow(&self, size: &str) -> bool {
        Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// SQLite on a filesystem that fills up under 16 concurrent posters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_on_a_full_disk_acknowledges_only_stored_rows_and_recovers_by_itself() {
    crate::support::init_logging();
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    let Some(fs) = (if is_root() {
        Tmpfs::mount(&mnt, "4m")
    } else {
        None
    }) else {
        assert!(
            !under_ci(),
            "CI runs as root and must mount a tmpfs for the full-disk test"
        );
        loud("SKIPPED the full-disk test: it mounts a tmpfs, which needs root");
        return;
    };
    let filler = mnt.join("filler");
    std::fs::write(&filler, vec![0u8; 1 << 20]).unwrap();
    let (mut settings, _) = TestApp::settings(Backend::Sqlite, &dir).await.unwrap();
    settings.database.url = SecretUrl(format!("sqlite://{}", mnt.join("kaching.db").display()));
    settings.database.commit_timeout_ms = 1_000;
    let app = TestApp::start(settings, dir, None).await;
    let app = fill_then_recover(app, "full disk", || async {
        // Space returns (the filler goes and the filesystem grows, as when
        // an operator extends a disk).
        std::fs::remove_file(&filler).unwrap();
        assert!(fs.grow("64m"), "remount the tmpfs larger");
    })
    .await;
    drop(fs);
    drop(app);
}

/// The same without root: SQLite's own size cap makes it report SQLITE_FULL,
/// and deleting rows (from another connection) gives it room again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_at_its_size_cap_acknowledges_only_stored_rows_and_recovers_by_itself() {
    let Some(app) = TestApp::spawn(Backend::Sqlite, |s| {
        s.database.sqlite_max_size_mib = 1;
        s.database.commit_timeout_ms = 1_000;
    })
    .await
    else {
        return;
    };
    // Take most of the megabyte with a table of the test's own.
    let path = app.dir.path().join("kaching.db");
    let mut outside = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    sqlx::query("CREATE TABLE filler (b BLOB)")
        .execute(&mut outside)
        .await
        .unwrap();
    for _ in 0..12 {
        sqlx::query("INSERT INTO filler VALUES (zeroblob(50000))")
            .execute(&mut outside)
            .await
            .unwrap();
    }
    fill_then_recover(app, "size cap", || async move {
        sqlx::query("DELETE FROM filler")
            .execute(&mut outside)
            .await
            .unwrap();
        outside.close().await.unwrap();
    })
    .await;
}

/// 16 posters until 50 posts are refused (the store is full): `/readyz`
/// says so and every 200 is a stored row. Then `make_room`: kaching stores
/// again by itself, ClickBank's retries of the refused ones all land, and
/// it still stops promptly. Returns the stopped app.
async fn fill_then_recover<F: std::future::Future<Output = ()>>(
    app: TestApp,
    what: &str,
    make_room: impl FnOnce() -> F,
) -> TestApp {
    let app = Arc::new(app);
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let deadline = Instant::now() + Duration::from_secs(120);
    join(posters(
        &app,
        &ledger,
        "FULL",
        16,
        |l| l.refused >= 50,
        deadline,
    ))
    .await;
    assert!(ledger.lock().unwrap().refused >= 50, "{what}: never full");
    assert_eq!(ready(&app).await, 503, "{what}: /readyz while commits fail");
    let (acked, stored) = check_ledger(&app, &ledger).await;
    eprintln!("{what}: {acked} acknowledged, {stored} stored");

    make_room().await;
    let took = recovers_by_itself(&app, &ledger).await;
    eprintln!("{what}: ready and storing again {took:?} after room returned");
    retry_the_refused(&app, &ledger, Duration::from_secs(30)).await;
    let (acked, stored) = check_ledger(&app, &ledger).await;
    assert_eq!(
        acked, stored,
        "{what}: after recovery every notification is stored"
    );

    let app = Arc::try_unwrap(app).ok().expect("posters are done");
    let stopping = Instant::now();
    let app = app.stop().await;
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "{what}: stopping took {:?}",
        stopping.elapsed()
    );
    app
}

/// A Postgres server of the test's own (initdb in a temp dir), so that it
/// can be stopped hard without touching the shared one.
struct OwnPostgres {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    as_postgres: bool,
}

impl OwnPostgres {
    fn bin_dir() -> Option<PathBuf> {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|d| d.join("initdb").exists())
            .collect();
        dirs.sort();
        dirs.pop()
    }

    fn run(&self, tool: &str, args: &[&str]) -> bool {
        let exe = self.bin.join(tool);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        };
        cmd.args(args)
            .stdout(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    fn create(dir: &Path) -> Option<OwnPostgres> {
        let bin = Self::bin_dir()?;
        let as_postgres = is_root();
        let data = dir.join("pg");
        std::fs::create_dir_all(&data).ok()?;
        if as_postgres {
            // The server refuses to run as root: give the folder to postgres.
            Command::new("chmod").arg("755").arg(dir).status().ok()?;
            Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&data)
                .status()
                .ok()?;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let pg = OwnPostgres {
            bin,
            data,
            port,
            as_postgres,
        };
        let data = pg.data.to_str()?.to_owned();
        pg.run(
            "initdb",
            &["-D", &data, "-A", "trust", "-U", "postgres", "--no-sync"],
        )
        .then_some(())?;
        pg.start().then_some(pg)
    }

    fn start(&self) -> bool {
        let data = self.data.to_str().unwrap_or_default();
        let opts = format!(
            "-p {} -k {data} -c listen_addresses=127.0.0.1 -c fsync=on",
            self.port
        );
        let log = self.data.join("server.log");
        self.run(
            "pg_ctl",
            &[
                "-D",
                data,
                "-o",
                &opts,
                "-l",
                log.to_str().unwrap_or_default(),
                "-w",
                "start",
            ],
        )
    }

    fn stop_immediately(&self) -> bool {
        let data = self.data.to_str().unwrap_or_default();
        self.run("pg_ctl", &["-D", data, "-m", "immediate", "-w", "stop"])
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        self.stop_immediately();
    }
}

/// Postgres stopped with `-m immediate` while 16 posters keep batches
/// committing, then started again: only stored rows were acknowledged, no
/// batch's own rows were counted as copies, and kaching carried on without
/// a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_hard_mid_commit_acknowledges_only_stored_rows() {
    crate::support::init_logging();
    let dir = tempfile::tempdir().unwrap();
    let Some(pg) = OwnPostgres::create(dir.path()) else {
        assert!(
            !under_ci(),
            "CI must be able to run a Postgres server of its own (initdb)"
        );
        loud("SKIPPED the Postgres hard-stop test: cannot initdb/start a server of its own");
        return;
    };
    let (mut settings, _) = TestApp::settings(Backend::Sqlite, &dir).await.unwrap();
    settings.database.url = SecretUrl(pg.url());
    settings.database.commit_timeout_ms = 2_500;
    let app = Arc::new(TestApp::start(settings, dir, None).await);
    let ledger = Arc::new(Mutex::new(Ledger::default()));

    let started = Instant::now();
    let load = posters(
        &app,
        &ledger,
        "HARD",
        16,
        |_| false,
        started + Duration::from_secs(9),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = ledger.lock().unwrap().acked.len();
    assert!(pg.stop_immediately(), "pg_ctl stop -m immediate");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(pg.start(), "pg_ctl start");
    join(load).await;
    eprintln!(
        "postgres hard stop: {before} sent before the stop, {} refused",
        ledger.lock().unwrap().refused
    );
    assert!(
        ledger.lock().unwrap().refused > 0,
        "the stop refused nothing: the fault did not happen"
    );
    retry_the_refused(&app, &ledger, Duration::from_secs(30)).await;
    let (acked, stored) = check_ledger(&app, &ledger).await;
    eprintln!("postgres hard stop: {acked} acknowledged, {stored} stored");
    assert_eq!(acked, stored);
    let app = Arc::try_unwrap(app).ok().expect("posters are done");
    app.stop().await;
}

/// A TCP proxy to Postgres that, while `cuts` is above zero, forwards a
/// client's `COMMIT` and then breaks both connections before the answer can
/// come back: the commit happens, but kaching never hears so.
async fn commit_cutting_proxy(
    upstream: std::net::SocketAddr,
    cuts: Arc<std::sync::atomic::AtomicU32>,
) -> std::net::SocketAddr {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A simple-protocol query message: 'Q', length 11, "COMMIT\0".
    const COMMIT: &[u8] = b"Q\0\0\0\x0bCOMMIT\0";
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let cuts = cuts.clone();
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let mut down = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut sr, &mut cw).await;
                });
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match cr.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let chunk = &buf[..n];
                    let cut = chunk.windows(COMMIT.len()).any(|w| w == COMMIT)
                        && cuts
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |c| c.checked_sub(1))
                            .is_ok();
                    if cut {
                        // Stop relaying answers first, then let the server
                        // commit, then break the connection: the answer is lost.
                        down.abort();
                        let _ = (&mut down).await;
                    }
                    if sw.write_all(chunk).await.is_err() {
                        break;
                    }
                    if cut {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        return;
                    }
                }
                down.abort();
            });
        }
    });
    addr
}

/// Commits whose answer is lost (the connection breaks right after COMMIT
/// is sent) are looked up, not guessed: the rows they stored are
/// acknowledged, and not counted as copies of themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_answer_is_lost_is_looked_up_not_counted_as_copies() {
    crate::support::init_logging();
    let dir = tempfile::tempdir().unwrap();
    let Some((mut settings, pg)) = TestApp::settings(Backend::Postgres, &dir).await else {
        return;
    };
    let cuts = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let proxy = commit_cutting_proxy("127.0.0.1:5432".parse().unwrap(), cuts.clone()).await;
    let mut url = url::Url::parse(&pg.as_ref().unwrap().url).unwrap();
    url.set_port(Some(proxy.port())).unwrap();
    // In clear, so that the proxy can see the COMMIT go by.
    url.query_pairs_mut().append_pair("sslmode", "disable");
    settings.database.url = SecretUrl(url.to_string());
    let app = Arc::new(TestApp::start(settings, dir, pg).await);
    let ledger = Arc::new(Mutex::new(Ledger::default()));

    // 16 posters, so batches hold several rows; the next 5 commits lose their answers.
    cuts.store(5, std::sync::atomic::Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(60);
    join(posters(
        &app,
        &ledger,
        "CUT",
        16,
        |l| l.acked.len() >= 400,
        deadline,
    ))
    .await;
    assert_eq!(
        cuts.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "every planned cut happened"
    );
    retry_the_refused(&app, &ledger, Duration::from_secs(30)).await;
    let (acked, stored) = check_ledger(&app, &ledger).await;
    eprintln!(
        "lost commit answers: {acked} acknowledged, {stored} stored, {} refused",
        ledger.lock().unwrap().refused
    );
    assert_eq!(acked, stored);
    let app = Arc::try_unwrap(app).ok().expect("posters are done");
    app.stop().await;
}
