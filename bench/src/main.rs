//! `kaching-bench`: a load generator for a running kaching. It pre-generates
//! encrypted notifications (some retried, some forged), posts them over
//! HTTPS or HTTP, closed loop (`--connections`) or at a fixed rate
//! (`--rate`), prints throughput and latency percentiles, then checks in the
//! database that every acknowledged notification is stored exactly once.
//!
//! Exits 0 only when the check passes and no post got a 5xx, no answer, or an
//! answer its kind should not get (a genuine post refused, a forged one
//! accepted), so it doubles as a smoke test. See bench/README.md.

mod client;
mod load;
mod verify;
mod workload;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use hdrhistogram::Histogram;

use crate::client::{Target, Trust};
use crate::load::{Shared, Stats, Worker};
use crate::workload::Workload;

#[derive(Debug, Parser)]
#[command(
    name = "kaching-bench",
    version,
    about = "Load generator and exactly-once check for a running kaching"
)]
struct Args {
    /// The INS endpoint, e.g. https://127.0.0.1:8443/ins (http:// when tls.mode = "off").
    #[arg(long)]
    url: String,
    /// The secret key of an account the daemon has.
    #[arg(long, env = "KACHING_SECRET_KEY", hide_env_values = true)]
    secret_key: String,
    /// The daemon's database, for the exactly-once check (sqlite://PATH or postgres://...).
    #[arg(
        long,
        env = "KACHING_BENCH_DATABASE_URL",
        required_unless_present = "no_verify"
    )]
    database_url: Option<String>,
    /// Concurrent HTTP/1.1 keep-alive connections.
    #[arg(long, short = 'c', default_value_t = 64)]
    connections: usize,
    /// Measured requests (default 20000 unless --duration).
    #[arg(long, short = 'n', conflicts_with = "duration")]
    requests: Option<usize>,
    /// Measure for this long instead (e.g. 60s, 500ms, 2m).
    #[arg(long, short = 'd', value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Open loop: this many requests per second, scheduled at fixed intervals
    /// over the connections; latency counts from the scheduled time.
    #[arg(long, short = 'r', value_parser = positive)]
    rate: Option<f64>,
    /// Fraction of posts that are ClickBank retries of an earlier notification.
    #[arg(long, default_value_t = 0.0, value_parser = fraction)]
    duplicates: f64,
    /// Fraction of posts encrypted under a wrong key: 403, or 429 past the
    /// daemon's security.max_failures_per_minute for this address (both fit a
    /// forged post; genuine envelopes from the same address still get 200).
    #[arg(long, default_value_t = 0.0, value_parser = fraction)]
    forged: f64,
    /// Accept any server certificate (the daemon's self-signed one).
    #[arg(long, conflicts_with = "ca_cert")]
    insecure: bool,
    /// Trust the certificate(s) in this PEM file (e.g. data/tls/cert.pem).
    #[arg(long)]
    ca_cert: Option<PathBuf>,
    /// Posts sent (closed loop) before measuring; they are checked too.
    #[arg(long, default_value_t = 500)]
    warmup: usize,
    /// Skip the database check.
    #[arg(long)]
    no_verify: bool,
    /// With --duration and no --rate: how many posts to pre-generate (the run
    /// stops early if they run out). Default: enough for --duration at twice
    /// the warm-up's pace or 4000/s, whichever is more.
    #[arg(long)]
    pool: Option<usize>,
    /// A request without an answer after this long counts as a transport error.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    timeout: Duration,
    /// Runtime worker threads (default: the number of CPUs).
    #[arg(long)]
    threads: Option<usize>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (e.g. 60s, 500ms, 2m)"))?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => return Err(format!("unknown unit `{other}` (use ms, s, m or h)")),
    };
    if !(seconds > 0.0 && seconds.is_finite()) {
        return Err("must be positive".into());
    }
    Ok(Duration::from_secs_f64(seconds))
}

fn fraction(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if (0.0..1.0).contains(&v) {
        Ok(v)
    } else {
        Err("must be at least 0 and below 1".into())
    }
}

fn positive(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if v > 0.0 && v.is_finite() {
        Ok(v)
    } else {
        Err("must be positive".into())
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let threads = args
        .threads
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
        .unwrap_or(2)
        .max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build();
    let result = match runtime {
        Ok(rt) => rt.block_on(run(args, threads)),
        Err(e) => Err(anyhow::Error::new(e).context("cannot start the runtime")),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("kaching-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn percentiles(h: &Histogram<u32>) -> [f64; 5] {
    [
        ms(h.value_at_quantile(0.50)),
        ms(h.value_at_quantile(0.90)),
        ms(h.value_at_quantile(0.99)),
        ms(h.value_at_quantile(0.999)),
        ms(h.max()),
    ]
}

fn percent(f: f64) -> String {
    format!("{:.1}%", f * 100.0)
}

/// Runs the benchmark; `Ok(true)` when everything passed.
async fn run(args: Args, threads: usize) -> anyhow::Result<bool> {
    anyhow::ensure!(args.connections > 0, "--connections must be at least 1");
    let trust = match (&args.ca_cert, args.insecure) {
        (Some(path), _) => Trust::CaFile(path),
        (None, true) => Trust::Insecure,
        (None, false) => Trust::System,
    };
    let target = Target::new(&args.url, trust).await?;

    // How many posts to measure. A closed loop for a duration sends as many
    // as the daemon takes: unless --pool says, they are generated after the
    // warm-up, from its pace.
    let adaptive = args.duration.is_some() && args.rate.is_none() && args.pool.is_none();
    let measured = match (args.duration, args.rate, args.requests) {
        (Some(d), Some(rate), _) => (rate * d.as_secs_f64()).ceil() as usize,
        (Some(_), None, _) => args.pool.unwrap_or(0),
        (None, _, n) => n.unwrap_or(20_000),
    };
    anyhow::ensure!(
        adaptive || measured > 0,
        "nothing to send: --requests and --pool must be positive"
    );

    let started = Instant::now();
    let mut workload = Workload::new(&args.secret_key, args.duplicates, args.forged, threads)?;
    workload.extend(args.warmup + measured)?;
    let mut generated = started.elapsed();

    let mode = match args.rate {
        Some(r) => format!("open loop at {r}/s over {} connections", args.connections),
        None => format!("closed loop, {} connections", args.connections),
    };
    let amount = match args.duration {
        Some(d) => format!("{:.1} s", d.as_secs_f64()),
        None => format!("{measured} requests"),
    };
    let tls = if !target.is_tls() {
        "plain HTTP"
    } else if args.insecure {
        "TLS, any certificate"
    } else if args.ca_cert.is_some() {
        "TLS, --ca-cert"
    } else {
        "TLS, system CAs"
    };
    println!(
        "kaching-bench: POST {} ({tls}); {mode}; {amount} after {} warm-up; duplicates {}, forged {}; receipts {}*; {threads} threads",
        target.url,
        args.warmup,
        percent(args.duplicates),
        percent(args.forged),
        workload.prefix,
    );

    let mut shared = Arc::new(Shared::new(target, workload, args.timeout));

    // Every connection is open before anything is timed.
    let connecting: Vec<_> = (0..args.connections)
        .map(|_| {
            let shared = shared.clone();
            tokio::spawn(async move { Worker::connect(&shared).await })
        })
        .collect();
    let mut workers = Vec::with_capacity(args.connections);
    for c in connecting {
        let worker = c.await.context("a connecting task failed")?;
        let hint = if shared.target.is_tls() && !args.insecure && args.ca_cert.is_none() {
            " (for a self-signed certificate pass --ca-cert PATH/cert.pem or --insecure)"
        } else {
            ""
        };
        workers.push(worker.with_context(|| format!("cannot connect{hint}"))?);
    }

    let mut warm = None;
    let mut warm_pace = None;
    if args.warmup > 0 {
        let t = Instant::now();
        let (w, stats) = load::warmup(shared.clone(), workers, args.warmup).await;
        workers = w;
        let took = t.elapsed().as_secs_f64();
        warm_pace = Some(args.warmup as f64 / took);
        let answers = stats.as_ref().map(status_line).unwrap_or_default();
        println!(
            "warm-up          {} posts in {took:.2} s ({answers}{})",
            args.warmup,
            match stats.as_ref().map_or(0, |s| s.errors) {
                0 => String::new(),
                n => format!(", {n} without an answer"),
            }
        );
        warm = stats;
    }

    if let (true, Some(d)) = (adaptive, args.duration) {
        // A slow straggler can make the warm-up look slow: at least 4000/s.
        let pace = (warm_pace.unwrap_or(0.0) * 2.0).max(4000.0);
        let pool = ((pace * d.as_secs_f64()).ceil() as usize).clamp(10_000, 4_000_000);
        let t = Instant::now();
        Arc::get_mut(&mut shared)
            .context("the workers still hold the posts")?
            .extend(pool)?;
        generated += t.elapsed();
        if t.elapsed() > Duration::from_secs(5) {
            // The daemon closes connections idle for 10 s: start afresh.
            for w in &mut workers {
                w.reopen(&shared).await.context("cannot reconnect")?;
            }
        }
    }
    let w = &shared.workload;
    println!(
        "generated        {} posts ({} distinct, {} retries, {} forged; plaintext {} B, body {} B) in {:.2} s",
        w.posts.len(),
        w.genuine,
        w.duplicates,
        w.forged,
        w.mean_plaintext(),
        w.mean_body(),
        generated.as_secs_f64()
    );
    let total = w.posts.len();

    let from = args.warmup;
    let (workers, t0) = match args.rate {
        Some(rate) => load::open_loop(shared.clone(), workers, from, measured, rate).await,
        None => {
            let t0 = Instant::now();
            let deadline = args.duration.map(|d| t0 + d);
            let w = load::closed_loop(shared.clone(), workers, from, total, deadline).await;
            (w, t0)
        }
    };
    let elapsed = t0.elapsed().as_secs_f64();
    let stats = workers
        .into_iter()
        .map(|w| w.stats)
        .reduce(|mut a, b| {
            a.merge(b);
            a
        })
        .context("no worker finished")?;
    let exhausted = args.duration.is_some() && args.rate.is_none() && load::exhausted(&shared);
    report(
        &stats,
        elapsed,
        args.rate,
        exhausted,
        shared.claimed().saturating_sub(from),
    );

    let verdict = match (&args.database_url, args.no_verify) {
        (Some(url), false) => match verify::verify(&shared, url).await {
            Ok(v) => {
                if v.ok() {
                    println!(
                        "verify: OK ({} rows, {} duplicates counted)",
                        v.rows, v.duplicates_counted
                    );
                } else {
                    println!(
                        "verify: FAILED ({} problem(s); {} rows, {} duplicates counted, {} expected)",
                        v.problem_count, v.rows, v.duplicates_counted, v.duplicates_expected
                    );
                    for p in &v.problems {
                        println!("  {p}");
                    }
                    if v.problem_count > v.problems.len() {
                        println!("  ... and {} more", v.problem_count - v.problems.len());
                    }
                }
                if v.ok() {
                    "OK"
                } else {
                    "FAILED"
                }
            }
            Err(e) => {
                println!("verify: FAILED: {e:#}");
                "FAILED"
            }
        },
        _ => {
            println!("verify: skipped");
            "skipped"
        }
    };

    let mut failures = Vec::new();
    if let Some(w) = &warm {
        let bad = w.server_errors() + w.errors + w.unexpected;
        if bad > 0 {
            failures.push(format!(
                "during the warm-up: {} 5xx, {} without an answer, {} that did not fit the post",
                w.server_errors(),
                w.errors,
                w.unexpected
            ));
        }
    }
    if stats.answered == 0 {
        failures.push("no request was answered".to_owned());
    }
    if stats.server_errors() > 0 {
        failures.push(format!("{} answers were 5xx", stats.server_errors()));
    }
    if stats.errors > 0 {
        failures.push(format!("{} requests got no answer", stats.errors));
    }
    if stats.unexpected > 0 {
        let mut f = format!(
            "{} answers did not fit the post (a genuine one refused or a forged one accepted)",
            stats.unexpected
        );
        if stats.status[429] > 0 {
            f.push_str(&format!(
                "; {} were 429: the daemon's security.max_failures_per_minute was reached for this address",
                stats.status[429]
            ));
        }
        failures.push(f);
    }
    if verdict == "FAILED" {
        failures.push("the database check failed".to_owned());
    }
    let [p50, p90, p99, p999, max] = percentiles(&stats.latency);
    println!(
        "summary: requests_per_s={:.1} acked_per_s={:.1} p50_ms={p50:.3} p90_ms={p90:.3} p99_ms={p99:.3} p999_ms={p999:.3} max_ms={max:.3} s5xx={} errors={} unexpected={} verify={verdict}",
        stats.answered as f64 / elapsed,
        stats.acked() as f64 / elapsed,
        stats.server_errors(),
        stats.errors,
        stats.unexpected,
    );
    for f in &failures {
        println!("FAILED: {f}");
    }
    Ok(failures.is_empty())
}

fn report(stats: &Stats, elapsed: f64, rate: Option<f64>, exhausted: bool, claimed: usize) {
    println!("elapsed          {elapsed:.2} s");
    if exhausted {
        println!(
            "                 (stopped early: all {claimed} pre-generated posts were sent; pass a larger --pool)"
        );
    }
    println!(
        "requests         {} answered, {:.1}/s",
        stats.answered,
        stats.answered as f64 / elapsed
    );
    println!(
        "acknowledged     {} (200), {:.1}/s",
        stats.acked(),
        stats.acked() as f64 / elapsed
    );
    if let Some(target) = rate {
        println!(
            "achieved rate    {:.1}/s (target {target}/s)",
            (stats.answered + stats.errors) as f64 / elapsed
        );
    }
    println!("status           {}", status_line(stats));
    println!(
        "transport errors {} (reconnects {})",
        stats.errors, stats.reconnects
    );
    let mut kinds: Vec<_> = stats.error_kinds.iter().collect();
    kinds.sort_by(|a, b| b.1.cmp(a.1));
    for (kind, n) in kinds.into_iter().take(5) {
        println!("                 {n} x {kind}");
    }
    let [p50, p90, p99, p999, max] = percentiles(&stats.latency);
    println!(
        "latency ms       p50 {p50:.3}  p90 {p90:.3}  p99 {p99:.3}  p99.9 {p999:.3}  max {max:.3}{}",
        if rate.is_some() {
            "  (from the scheduled send time)"
        } else {
            ""
        }
    );
    if rate.is_some() {
        let [l50, _, l99, _, lmax] = percentiles(&stats.send_lag);
        println!(
            "send lag ms      p50 {l50:.3}  p99 {l99:.3}  max {lmax:.3}  (scheduled time to send; included above)"
        );
    }
}

/// `200: 9990  403: 10`, or `(none)`.
fn status_line(stats: &Stats) -> String {
    let statuses: Vec<String> = stats
        .status
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(code, n)| format!("{code}: {n}"))
        .collect();
    if statuses.is_empty() {
        "(none)".to_owned()
    } else {
        statuses.join("  ")
    }
}
