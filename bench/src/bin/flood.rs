//! `flood-bench`: ClickBank's posts while someone floods the endpoint. It
//! starts the real daemon (the `kaching` binary beside this one) with
//! self-signed TLS on SQLite (or `--database-url`), its limits as shipped,
//! and runs one phase after another, `--duration` each. In every phase,
//! genuine notifications come from 127.0.0.2 at `--genuine-rate` (50/s), each
//! on a new TLS connection as ClickBank sends them, timed from the instant
//! it was due (a stalled daemon shows as latency, not as fewer posts):
//!
//! - `alone`: nothing else (the baseline);
//! - `forged-rate`: forged posts (a wrong key) from 127.0.0.1 at
//!   `--forged-rate` (3,000/s) over `--forged-connections` keep-alive
//!   connections;
//! - `forged-max`: the same, as fast as those connections are answered;
//! - `slowloris`: `--slowloris` (2,000) connections from 127.0.1.1–8 that
//!   send a request head a line every 2 s, and reconnect when closed.
//!
//! Per phase it prints the genuine posts acknowledged (target: at least
//! 99.9 %) and their latency (target: p99 under 50 ms), what the flood got
//! answered, the daemon's CPU and its peak resident memory. Exits 1 when a
//! target is missed.
//!
//! ```text
//! cargo build --release -p kaching -p kaching-bench
//! target/release/flood-bench                     # every phase, 20 s each
//! target/release/flood-bench --phases forged-max --duration 60s
//! ```

#[allow(dead_code)]
#[path = "../client.rs"]
mod client;
#[allow(dead_code)]
#[path = "../workload.rs"]
mod workload;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use client::{Target, Trust};

const KEY: &str = "FLOODKEY00000001";
const WRONG_KEY: &str = "WRONGKEY00000001";
/// A genuine post not answered within this counts as lost.
const POST_TIMEOUT: Duration = Duration::from_secs(10);
/// Targets (issue 13).
const MIN_ACKED: f64 = 0.999;
const MAX_P99: Duration = Duration::from_millis(50);

#[derive(Debug, Parser)]
#[command(
    name = "flood-bench",
    about = "Genuine posts while the endpoint is flooded"
)]
struct Args {
    /// The daemon's database (default: SQLite in a temporary directory).
    #[arg(long)]
    database_url: Option<String>,
    /// How long each phase lasts (e.g. 20s, 1m).
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Phases to run, in order: alone, forged-rate, forged-max, slowloris.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "alone,forged-rate,forged-max,slowloris"
    )]
    phases: Vec<String>,
    #[arg(long, default_value_t = 50.0)]
    genuine_rate: f64,
    #[arg(long, default_value_t = 3000.0)]
    forged_rate: f64,
    #[arg(long, default_value_t = 64)]
    forged_connections: usize,
    #[arg(long, default_value_t = 2000)]
    slowloris: usize,
    /// The daemon binary (default: `kaching` beside this program).
    #[arg(long)]
    kaching: Option<PathBuf>,
    /// Extra lines for the daemon's configuration file (e.g. to try other limits).
    #[arg(long, default_value = "")]
    config_extra: String,
}

/// The daemon under test, as a child process.
struct Daemon {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Daemon {
    fn start(args: &Args) -> anyhow::Result<Daemon> {
        let dir = tempfile::tempdir()?;
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            l.local_addr()?
        };
        let d = dir.path().display();
        let db = args
            .database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{d}/kaching.db"));
        let config = format!(
            "[server]\nlisten = \"{addr}\"\n[admin]\nlisten = \"\"\n\
             [tls]\nmode = \"self-signed\"\nself_signed_dir = \"{d}/tls\"\n\
             [database]\nurl = \"{db}\"\n[log]\nformat = \"json\"\nlevel = \"info\"\n\
             [privacy]\ndata_key_file = \"{d}/kaching.key\"\n\
             [[accounts]]\nname = \"flood\"\nsecret_key = \"{KEY}\"\n{}\n",
            args.config_extra
        );
        let path = dir.path().join("kaching.toml");
        std::fs::write(&path, config)?;
        let bin = match &args.kaching {
            Some(p) => p.clone(),
            None => std::env::current_exe()?
                .parent()
                .context("this program's directory")?
                .join("kaching"),
        };
        let log = std::fs::File::create(dir.path().join("daemon.log"))?;
        let child = Command::new(&bin)
            .arg("--config")
            .arg(&path)
            .arg("serve")
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        Ok(Daemon { child, addr, dir })
    }

    fn stat(&self, file: &str) -> String {
        std::fs::read_to_string(format!("/proc/{}/{file}", self.child.id())).unwrap_or_default()
    }

    /// User plus system CPU so far, in seconds.
    fn cpu(&self) -> f64 {
        let stat = self.stat("stat");
        // Fields after the command name (which is in parentheses).
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map_or("", |(_, rest)| rest)
            .split_whitespace()
            .collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        (ticks(11) + ticks(12)) / 100.0
    }

    /// (VmRSS, VmHWM) in MiB.
    fn memory(&self) -> (f64, f64) {
        let status = self.stat("status");
        let kib = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        (kib("VmRSS:") / 1024.0, kib("VmHWM:") / 1024.0)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The genuine posts of one phase.
#[derive(Default)]
struct Genuine {
    sent: u64,
    statuses: BTreeMap<u16, u64>,
    errors: BTreeMap<String, u64>,
    latency: Option<Histogram<u64>>,
}

/// What the flood of one phase got.
#[derive(Default)]
struct Flood {
    statuses: BTreeMap<u16, u64>,
    errors: u64,
    reconnects: u64,
}

fn count<K: Ord>(map: &mut BTreeMap<K, u64>, key: K) {
    *map.entry(key).or_default() += 1;
}

fn genuine_body(receipt: &str) -> Bytes {
    let mut text = String::new();
    workload::plaintext(&mut text, "2026-12-03T10:00:00-08:00", receipt, 1);
    Bytes::from(kaching::ins::encrypt(
        KEY,
        text.as_bytes(),
        kaching::ins::random_iv(),
    ))
}

/// Genuine posts from 127.0.0.2 at `rate` for `duration`, each on its own
/// TLS connection, timed from when each was due.
async fn genuine(target: Arc<Target>, phase: &str, rate: f64, duration: Duration) -> Genuine {
    let from = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    let n = (rate * duration.as_secs_f64()).ceil() as u64;
    let bodies: Vec<Bytes> = (0..n)
        .map(|i| genuine_body(&format!("G{}{i:07}", &phase[..2].to_uppercase())))
        .collect();
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let results = Arc::new(Mutex::new(Genuine {
        latency: Histogram::new_with_bounds(1, 60_000_000, 3).ok(),
        ..Genuine::default()
    }));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, body) in bodies.into_iter().enumerate() {
        let due = start + interval * i as u32;
        tokio::time::sleep_until(due).await;
        let (target, results) = (target.clone(), results.clone());
        tasks.spawn(async move {
            let outcome = tokio::time::timeout(POST_TIMEOUT, async {
                let mut sender = target
                    .connect_from(from)
                    .await
                    .map_err(|e| format!("{e:#}"))?;
                target.post(&mut sender, body).await.map_err(|e| e.label())
            })
            .await;
            let took = due.elapsed();
            let mut r = results.lock().unwrap_or_else(|e| e.into_inner());
            r.sent += 1;
            match outcome {
                Ok(Ok(status)) => {
                    count(&mut r.statuses, status.as_u16());
                    if let Some(h) = &mut r.latency {
                        let _ = h.record(took.as_micros() as u64);
                    }
                }
                Ok(Err(e)) => count(&mut r.errors, e),
                Err(_) => count(&mut r.errors, format!("no answer within {POST_TIMEOUT:?}")),
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    Arc::try_unwrap(results)
        .ok()
        .map(|m| m.into_inner().unwrap_or_else(|e| e.into_inner()))
        .unwrap_or_default()
}

/// Forged posts from 127.0.0.1 over `connections` keep-alive connections,
/// each connection at `rate / connections` per second (`None`: closed loop).
async fn forged(
    target: Arc<Target>,
    connections: usize,
    rate: Option<f64>,
    stop: Arc<AtomicBool>,
) -> Flood {
    let from = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let bodies: Arc<Vec<Bytes>> = Arc::new(
        (0..512)
            .map(|i| {
                let mut text = String::new();
                workload::plaintext(
                    &mut text,
                    "2026-12-03T10:00:00-08:00",
                    &format!("F{i:07}"),
                    1,
                );
                Bytes::from(kaching::ins::encrypt(
                    WRONG_KEY,
                    text.as_bytes(),
                    kaching::ins::random_iv(),
                ))
            })
            .collect(),
    );
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..connections {
        let (target, bodies, stop) = (target.clone(), bodies.clone(), stop.clone());
        tasks.spawn(async move {
            let mut flood = Flood::default();
            let interval = rate.map(|r| Duration::from_secs_f64(connections as f64 / r));
            let mut due = tokio::time::Instant::now();
            let mut sender = None;
            let mut i = c;
            while !stop.load(Ordering::Relaxed) {
                if let Some(interval) = interval {
                    due += interval;
                    tokio::time::sleep_until(due).await;
                }
                if sender.is_none() {
                    match target.connect_from(from).await {
                        Ok(s) => sender = Some(s),
                        Err(_) => {
                            flood.errors += 1;
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    }
                }
                let Some(s) = sender.as_mut() else { continue };
                i = (i + connections) % bodies.len();
                match target.post(s, bodies[i].clone()).await {
                    Ok(status) => count(&mut flood.statuses, status.as_u16()),
                    Err(_) => {
                        flood.errors += 1;
                        flood.reconnects += 1;
                        sender = None;
                    }
                }
            }
            flood
        });
    }
    let mut all = Flood::default();
    while let Some(Ok(f)) = tasks.join_next().await {
        for (k, v) in f.statuses {
            *all.statuses.entry(k).or_default() += v;
        }
        all.errors += f.errors;
        all.reconnects += f.reconnects;
    }
    all
}

/// `connections` slow clients from 127.0.1.1–8: a TLS session, then a
/// request head a line every 2 s, never finished; a new connection when the
/// daemon closes one.
async fn slowloris(target: Arc<Target>, connections: usize, stop: Arc<AtomicBool>) -> Flood {
    let reconnects = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..connections {
        let (target, stop, reconnects) = (target.clone(), stop.clone(), reconnects.clone());
        let from = IpAddr::V4(Ipv4Addr::new(127, 0, 1, 1 + (c % 8) as u8));
        tasks.spawn(async move {
            // Spread the first connections over a second.
            tokio::time::sleep(Duration::from_micros(500 * c as u64)).await;
            while !stop.load(Ordering::Relaxed) {
                let held = async {
                    let tcp = target.tcp_from(from).await?;
                    let Some(mut tls) = target.tls_over(tcp).await? else {
                        anyhow::bail!("slowloris needs https");
                    };
                    tls.write_all(b"POST /ins HTTP/1.1\r\nhost: kaching\r\n")
                        .await?;
                    let mut buf = [0u8; 256];
                    for n in 0u32.. {
                        if stop.load(Ordering::Relaxed) {
                            return Ok(());
                        }
                        match tokio::time::timeout(Duration::from_secs(2), tls.read(&mut buf)).await
                        {
                            // Closed (or answered, which closes it too).
                            Ok(Ok(0) | Err(_)) => return Ok(()),
                            Ok(Ok(_)) => {}
                            Err(_) => {
                                tls.write_all(format!("x-slow-{n}: 1\r\n").as_bytes())
                                    .await?;
                            }
                        }
                    }
                    Ok(())
                };
                let _ = held.await;
                reconnects.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    Flood {
        reconnects: reconnects.load(Ordering::Relaxed),
        ..Flood::default()
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// Runs one phase and prints its line; true when it met the targets.
async fn phase(
    args: &Args,
    daemon: &Daemon,
    target: &Arc<Target>,
    name: &str,
) -> anyhow::Result<bool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flood = match name {
        "alone" => None,
        "forged-rate" => Some(tokio::spawn(forged(
            target.clone(),
            args.forged_connections,
            Some(args.forged_rate),
            stop.clone(),
        ))),
        "forged-max" => Some(tokio::spawn(forged(
            target.clone(),
            args.forged_connections,
            None,
            stop.clone(),
        ))),
        "slowloris" => Some(tokio::spawn(slowloris(
            target.clone(),
            args.slowloris,
            stop.clone(),
        ))),
        other => anyhow::bail!("unknown phase {other} (alone, forged-rate, forged-max, slowloris)"),
    };
    // Let the flood build up before the genuine posts start.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (cpu0, t0) = (daemon.cpu(), Instant::now());
    let peak = Arc::new(Mutex::new(0.0f64));
    let sampler = {
        let (peak, stop, pid) = (peak.clone(), stop.clone(), daemon.child.id());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let status =
                    std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
                if let Some(kib) = status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
                {
                    let mut p = peak.lock().unwrap_or_else(|e| e.into_inner());
                    *p = p.max(kib / 1024.0);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let g = genuine(target.clone(), name, args.genuine_rate, args.duration).await;
    let (cpu1, t1) = (daemon.cpu(), Instant::now());
    stop.store(true, Ordering::Relaxed);
    let f = match flood {
        Some(task) => Some(task.await?),
        None => None,
    };
    let _ = sampler.await;
    let elapsed = (t1 - t0).as_secs_f64();
    let ok = g.statuses.get(&200).copied().unwrap_or(0);
    let acked = ok as f64 / g.sent.max(1) as f64;
    let (p50, p99, max) = g.latency.as_ref().map_or((0, 0, 0), |h| {
        (h.value_at_quantile(0.5), h.value_at_quantile(0.99), h.max())
    });
    let met = acked >= MIN_ACKED && Duration::from_micros(p99) < MAX_P99;
    println!(
        "{name:<12} genuine {ok}/{} acked ({:.2} %), p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms{}{}",
        g.sent,
        acked * 100.0,
        ms(p50),
        ms(p99),
        ms(max),
        if g.statuses.len() > 1 {
            format!(", statuses {:?}", g.statuses)
        } else {
            String::new()
        },
        if g.errors.is_empty() {
            String::new()
        } else {
            format!(", errors {:?}", g.errors)
        },
    );
    if let Some(f) = f {
        let answered: u64 = f.statuses.values().sum();
        let secs = args.duration.as_secs_f64() + 2.0;
        println!(
            "{:<12} flood: {:.0} answers/s {:?}, {} errors, {} reconnects",
            "",
            answered as f64 / secs,
            f.statuses,
            f.errors,
            f.reconnects
        );
    }
    let (rss, hwm) = daemon.memory();
    println!(
        "{:<12} daemon: CPU {:.0} % of a core, RSS peak {:.1} MiB this phase (now {rss:.1}, since start {hwm:.1}) -> {}",
        "",
        (cpu1 - cpu0) / elapsed * 100.0,
        *peak.lock().unwrap_or_else(|e| e.into_inner()),
        if met { "met" } else { "MISSED" }
    );
    Ok(met)
}

async fn run(args: Args) -> anyhow::Result<bool> {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let daemon = Daemon::start(&args)?;
    let cert = daemon.dir.path().join("tls/cert.pem");
    let started = Instant::now();
    loop {
        let up = cert.exists() && tokio::net::TcpStream::connect(daemon.addr).await.is_ok();
        if up {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(30),
            "the daemon did not start; see {}",
            daemon.dir.path().join("daemon.log").display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let target = Arc::new(
        Target::new(
            &format!("https://127.0.0.1:{}/ins", daemon.addr.port()),
            Trust::CaFile(&cert),
        )
        .await?,
    );
    println!(
        "flood-bench: {} per phase; genuine {}/s from 127.0.0.2, each on a new TLS connection; targets: >= {:.1} % acked, p99 < {} ms",
        humantime::format_duration(args.duration),
        args.genuine_rate,
        MIN_ACKED * 100.0,
        MAX_P99.as_millis()
    );
    let mut all = true;
    for name in &args.phases {
        all &= phase(&args, &daemon, &target, name).await?;
    }
    Ok(all)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("flood-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("flood-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
