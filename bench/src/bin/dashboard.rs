//! `dashboard-bench`: the dashboard's speed at scale. It fills a database
//! with `--notifications` demo notifications of one large vendor (through
//! kaching's real ingest pipeline, encrypted as ClickBank sends them),
//! counts them into the reports (timing the backfill), starts the real
//! daemon on it, and times each page and API call for a 30-day range, and
//! how long a committed notification takes to reach the live feed.
//!
//! ```text
//! cargo run --release -p kaching-bench --bin dashboard-bench -- \
//!     --database-url sqlite:///tmp/dash.db --notifications 1000000
//! cargo run --release -p kaching-bench --bin dashboard-bench -- \
//!     --database-url postgres://postgres@127.0.0.1/dash --notifications 1000000
//! ```
//! A second run on the same database skips the fill (it counts what is there).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::Utc;
use clap::Parser;
use kaching::app::App;
use kaching::config::{AccountSettings, SecretUrl, Settings, TlsMode};
use secrecy::SecretString;

const KEY: &str = "BENCHKEY00000001";
/// Days of history per generated chunk (and per demo seed).
const CHUNK_DAYS: u32 = 30;

#[derive(Debug, Parser)]
#[command(
    name = "dashboard-bench",
    about = "Dashboard page timings over a large store"
)]
struct Args {
    /// sqlite://PATH or postgres://…/DB (the database must exist for Postgres).
    #[arg(long)]
    database_url: String,
    /// Notifications to have stored before timing.
    #[arg(long, default_value_t = 1_000_000)]
    notifications: i64,
    /// Over how many days (ending today).
    #[arg(long, default_value_t = 360)]
    days: u32,
    /// Timed requests per page (the median and the slowest are printed).
    #[arg(long, default_value_t = 7)]
    repeat: usize,
}

fn settings(url: &str) -> Settings {
    let mut s = Settings::default();
    s.database.url = SecretUrl(url.to_owned());
    s.database.max_connections = 8;
    s.server.listen = "127.0.0.1:0".parse().expect("an address");
    s.admin.listen = "127.0.0.1:0".into();
    s.tls.mode = TlsMode::Off;
    s.log.level = "warn".into();
    s.accounts = vec![AccountSettings {
        name: "bench".into(),
        secret_key: Some(SecretString::from(KEY.to_owned())),
        ..Default::default()
    }];
    s
}

/// One `GET` over a fresh connection; the status and the time to the last byte.
fn get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, Duration, usize)> {
    let started = Instant::now();
    let mut s = TcpStream::connect(addr)?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut body = Vec::new();
    s.read_to_end(&mut body)?;
    let text = String::from_utf8_lossy(&body);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no status line")?;
    Ok((status, started.elapsed(), body.len()))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut s = settings(&args.database_url);
    kaching::telemetry::init(&s.log);
    let store = kaching::app::open_store(&s, true).await?;
    let stored: i64 = store.report_position().await?.1;
    println!("backend {}: {stored} notifications stored", store.backend());

    // Fill: chunks of CHUNK_DAYS, each its own seed, back from today, at a
    // daily volume that reaches the target over --days.
    if stored < args.notifications {
        let missing = args.notifications - stored;
        // The demo sends about 1.1 notifications per sale over 30 days.
        let per_day = missing as f64 / f64::from(args.days) / 1.1;
        let started = Instant::now();
        let mut written = 0;
        let mut k = 0;
        // Chunks back from today (the first runs' seeds), then further back
        // until the target is reached.
        while stored + (written as i64) < args.notifications {
            let end = Utc::now() - chrono::Duration::days(i64::from(k * CHUNK_DAYS));
            let summary = kaching::demo::run(
                settings(&args.database_url),
                &store,
                Some("bench"),
                1000 + u64::from(k),
                CHUNK_DAYS,
                end,
                per_day,
            )
            .await?;
            written += summary.stored;
            k += 1;
            println!(
                "fill: chunk {k} (to {}): {} stored ({:.0}/s overall)",
                end.date_naive(),
                summary.stored,
                written as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
    let (_, stored) = store.report_position().await?;

    // Backfill the reports, timed.
    let reports = kaching::report::Reports::new(store.clone(), None);
    let started = Instant::now();
    let projected = reports.backfill().await?;
    let took = started.elapsed();
    println!(
        "backfill: {projected} notifications counted in {:.1} s ({:.0}/s); {stored} stored",
        took.as_secs_f64(),
        projected as f64 / took.as_secs_f64().max(1e-9)
    );
    store.close().await;

    // The real daemon on that database.
    s.admin.listen = "127.0.0.1:0".into();
    let app = App::build(&s).await?;
    let listener = tokio::net::TcpListener::bind(s.server.listen).await?;
    let ins = listener.local_addr()?;
    let admin_listener = kaching::app::bind_admin(&s)
        .await?
        .context("the admin listener")?;
    let admin = admin_listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.serve(listener, Some(admin_listener), async move {
        let _ = stopped.await;
    }));

    let paths = [
        "/?range=30d",
        "/products?range=30d",
        "/affiliates?range=30d",
        "/tracking?by=tid&range=30d",
        "/tracking?by=trafficSource&range=30d",
        "/tracking?by=creative&range=30d",
        "/compare?by=trafficSource&v=facebook&v=google&range=30d",
        "/subscriptions?range=30d",
        "/notifications?range=30d",
        "/api/v1/summary?range=30d",
        "/api/v1/products?range=30d",
        "/api/v1/affiliates?range=30d",
        "/api/v1/tracking?by=campaign&range=30d",
        "/api/v1/tracking?by=tid&range=30d&format=csv",
    ];
    println!(
        "{:<58} {:>8} {:>8} {:>9}",
        "page (30 days)", "median", "max", "bytes"
    );
    let mut worst = Duration::ZERO;
    for path in paths {
        let mut times = Vec::new();
        let mut bytes = 0;
        for _ in 0..args.repeat {
            let owned = path.to_owned();
            let (status, t, n) = tokio::task::spawn_blocking(move || get(admin, &owned)).await??;
            anyhow::ensure!(status == 200, "{path}: status {status}");
            times.push(t);
            bytes = n;
        }
        times.sort();
        let (median, max) = (times[times.len() / 2], times[times.len() - 1]);
        worst = worst.max(median);
        println!(
            "{path:<58} {:>6.1}ms {:>6.1}ms {bytes:>9}",
            median.as_secs_f64() * 1e3,
            max.as_secs_f64() * 1e3
        );
    }
    println!("slowest median: {:.1} ms", worst.as_secs_f64() * 1e3);

    // The live feed: from the 200 of a post to the event on an open stream.
    let mut lags = Vec::new();
    for i in 0..10 {
        let lag = tokio::task::spawn_blocking(move || live_lag(admin, ins, i)).await??;
        lags.push(lag);
    }
    lags.sort();
    println!(
        "live feed: commit to event median {:.1} ms, max {:.1} ms (10 posts)",
        lags[lags.len() / 2].as_secs_f64() * 1e3,
        lags[lags.len() - 1].as_secs_f64() * 1e3
    );
    let _ = stop.send(());
    server.await??;
    Ok(())
}

/// Opens `/events`, posts one sale, and times the 200 to its event.
fn live_lag(admin: SocketAddr, ins: SocketAddr, i: u32) -> anyhow::Result<Duration> {
    let mut events = TcpStream::connect(admin)?;
    write!(
        events,
        "GET /events HTTP/1.1\r\nHost: {admin}\r\nAccept: text/event-stream\r\n\r\n"
    )?;
    events.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(events.try_clone()?);
    let mut line = String::new();
    // The response head, then the stream.
    while reader.read_line(&mut line)? > 0 && line != "\r\n" {
        line.clear();
    }
    let receipt = format!("LIVE{:04}", 1000 + i);
    let plaintext = format!(
        r#"{{"transactionTime":"{}","receipt":"{receipt}","transactionType":"SALE","role":"VENDOR","totalAccountAmount":1.00,"currency":"USD","version":8.0}}"#,
        Utc::now().to_rfc3339()
    );
    let body = kaching::ins::encrypt(KEY, plaintext.as_bytes(), kaching::ins::random_iv());
    let mut post = TcpStream::connect(ins)?;
    write!(
        post,
        "POST /ins HTTP/1.1\r\nHost: {ins}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut answer = String::new();
    post.read_to_string(&mut answer)?;
    let acked = Instant::now();
    anyhow::ensure!(
        answer.starts_with("HTTP/1.1 200"),
        "the post was not acknowledged: {answer}"
    );
    loop {
        line.clear();
        anyhow::ensure!(reader.read_line(&mut line)? > 0, "the event stream ended");
        if line.contains(&receipt) {
            return Ok(acked.elapsed());
        }
    }
}
