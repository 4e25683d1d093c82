//! Do the 403s tell by their timing which check failed?
//!
//! Starts the real server in-process (plain HTTP on loopback, SQLite in a
//! temp dir, so that nothing but the server's own work varies), then sends
//! refused posts of four kinds interleaved on one keep-alive connection:
//!
//! - `wrong-key`: encrypted under another key (fails at the padding, mostly);
//! - `bad-json`: the right key, valid padding, a plaintext that is no JSON;
//! - `missing-field`: the right key, JSON without the required fields;
//! - `unknown-account`: `/ins/{name}` naming no account (no decryption at all).
//!
//! It prints each kind's median answer time and, against `wrong-key`, the
//! difference of medians with a bootstrap 95 % interval. An interval that
//! excludes 0 means the difference is measurable on loopback.
//!
//! `cargo run --release --example refusal_timing [-- ROUNDS]` (default 2000).

use std::time::{Duration, Instant};

use kaching::app::App;
use kaching::config::{AccountSettings, SecretUrl, Settings, TlsMode};
use rand::Rng;
use secrecy::SecretString;

const KEY: &str = "TIMINGKEY0000001";

/// A kind of refused post: its name, the path it goes to, and how to make one.
type Kind = (&'static str, &'static str, Box<dyn Fn() -> String>);
const OTHER: &str = "SOMEOTHERKEY0002";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let rounds: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(2000);
    let dir = tempfile::tempdir()?;
    let mut s = Settings::default();
    s.server.listen = "127.0.0.1:0".parse()?;
    s.tls.mode = TlsMode::Off;
    s.database.url = SecretUrl(format!("sqlite://{}", dir.path().join("t.db").display()));
    s.accounts = vec![AccountSettings {
        name: "acme".into(),
        secret_key: Some(SecretString::from(KEY.to_owned())),
        ..Default::default()
    }];
    // Genuine posts never fail; refused ones must not be rate-limited here.
    s.security.max_failures_per_minute = u32::MAX;
    let app = App::build(&s).await?;
    let listener = tokio::net::TcpListener::bind(s.server.listen).await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    // No admin listener: this measures the INS one alone.
    let server = tokio::spawn(app.serve(listener, None, async {
        let _ = stopped.await;
    }));

    let sale = SALE;
    let kinds: [Kind; 4] = [
        ("wrong-key", "/ins/acme", Box::new(|| enc(OTHER, sale))),
        (
            "bad-json",
            "/ins/acme",
            Box::new(|| enc(KEY, &same_length("this is no json at all"))),
        ),
        (
            "missing-field",
            "/ins/acme",
            Box::new(|| enc(KEY, &same_length(r#"{"version":6.0}"#))),
        ),
        (
            "unknown-account",
            "/ins/nosuch",
            Box::new(|| enc(KEY, sale)),
        ),
    ];
    // One connection, reused: only the server's work differs between kinds.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()?;
    let mut times: Vec<Vec<f64>> = vec![Vec::with_capacity(rounds); kinds.len()];
    let mut order: Vec<usize> = (0..kinds.len()).collect();
    let mut rng = rand::rng();
    for round in 0..rounds + 100 {
        // A shuffled order each round, so no kind always follows another.
        for i in (1..order.len()).rev() {
            order.swap(i, rng.random_range(0..=i));
        }
        for &k in &order {
            let (_, path, body) = &kinds[k];
            let body = body();
            let started = Instant::now();
            let r = client
                .post(format!("{base}{path}"))
                .body(body)
                .send()
                .await?;
            let status = r.status();
            r.bytes().await?;
            let took = started.elapsed();
            anyhow::ensure!(status == 403, "{}: got {status}", kinds[k].0);
            if round >= 100 {
                // The first 100 rounds warm up.
                times[k].push(took.as_secs_f64() * 1e6);
            }
        }
    }
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(15), server).await;

    println!("{rounds} posts of each kind, interleaved on one connection; times in µs");
    println!(
        "{:<16} {:>9} {:>26}",
        "kind", "median", "minus wrong-key (95 % CI)"
    );
    let base_times = times[0].clone();
    for (k, (name, _, _)) in kinds.iter().enumerate() {
        let m = median(&times[k]);
        if k == 0 {
            println!("{name:<16} {m:>9.1}");
        } else {
            let (lo, hi) = bootstrap(&times[k], &base_times, &mut rng);
            println!(
                "{name:<16} {m:>9.1} {:>+10.1} [{lo:+.1}, {hi:+.1}]",
                m - median(&base_times)
            );
        }
    }
    Ok(())
}

/// The sale's plaintext, used by the other kinds.
const SALE: &str = r#"{"transactionTime":"2026-11-20T10:00:00-08:00","receipt":"TIME0001","transactionType":"SALE","role":"VENDOR","version":6.0,"attemptCount":1}"#;

/// `text` padded with spaces (JSON white space) to the sale's length, so
/// that every kind's body is as long and only the server's checks differ.
fn same_length(text: &str) -> String {
    format!("{text:<width$}", width = SALE.len())
}

fn enc(key: &str, plaintext: &str) -> String {
    kaching::ins::encrypt(key, plaintext.as_bytes(), kaching::ins::random_iv())
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// 95 % percentile-bootstrap interval of median(a) - median(b), 2,000 resamples.
fn bootstrap(a: &[f64], b: &[f64], rng: &mut impl Rng) -> (f64, f64) {
    let resample = |v: &[f64], rng: &mut dyn rand::RngCore| -> f64 {
        let s: Vec<f64> = (0..v.len())
            .map(|_| v[rng.random_range(0..v.len())])
            .collect();
        median(&s)
    };
    let mut diffs: Vec<f64> = (0..2000)
        .map(|_| resample(a, rng) - resample(b, rng))
        .collect();
    diffs.sort_by(f64::total_cmp);
    (diffs[50], diffs[1949])
}
