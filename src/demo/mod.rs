//! `kaching demo`: a realistic, seeded history written into the configured
//! store through the real ingest pipeline, for trying the dashboard without
//! ClickBank. [`history`] makes the plaintexts (pure, see its module); [`run`]
//! encrypts each under the account's key with a fresh IV, exactly as
//! ClickBank would post it, and hands it to [`Ingest::ingest`] as a post from
//! [`DEMO_SOURCE`]. The same seed and end give the same history, so a second
//! run stores nothing new: every notification is a duplicate.

pub mod history;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use arc_swap::ArcSwap;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::task::JoinSet;

use crate::config::Settings;
use crate::ingest::{Ingest, Post};
use crate::ins;
use crate::runtime::Runtime;
use crate::store::{Recorded, Store, Writer};

pub use history::{
    history, history_at, DemoPost, Product, PRODUCTS, SALES_PER_DAY, SPIKE_DAYS, SPIKE_FACTOR,
    SPIKING,
};

/// The source address of every demo post (it never crosses a network).
pub const DEMO_SOURCE: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Posts in flight at once, so that the writer commits them in groups.
const IN_FLIGHT: usize = 32;

/// What a run sent and what the store did with it.
#[derive(Debug, Default)]
pub struct Summary {
    pub account: String,
    /// Posts sent, by transaction type (retries included).
    pub sent: BTreeMap<&'static str, usize>,
    /// Retries among them (`attemptCount` above 1).
    pub retries: usize,
    pub stored: usize,
    pub duplicates: usize,
    pub from: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// The spiking product's refunds per sale: in the last `SPIKE_DAYS`
    /// days, and in the days before.
    pub spike: (f64, f64),
    pub elapsed: Duration,
}

/// Writes `history_at(seed, days, end, sales_per_day)` for `account` (default: the first
/// configured one) through the pipeline. Configured actions are left out:
/// demo sales must not send mail or call webhooks. Allowlists are left out
/// too: the posts never cross a network.
pub async fn run(
    mut settings: Settings,
    store: &Store,
    account: Option<&str>,
    seed: u64,
    days: u32,
    end: DateTime<Utc>,
    sales_per_day: f64,
) -> anyhow::Result<Summary> {
    settings.actions.clear();
    settings.alerts.clear();
    settings.security.allowed_ips.clear();
    for a in &mut settings.accounts {
        a.allowed_ips.clear();
    }
    let runtime = Runtime::build(&settings)?;
    let keys = match account {
        Some(name) => runtime
            .account(name)
            .with_context(|| format!("no account named `{name}` in the configuration"))?,
        None => runtime
            .accounts
            .first()
            .context("the configuration has no account")?,
    };
    let name: Arc<str> = keys.keys.name.as_str().into();
    let secret = keys
        .keys
        .keys
        .first()
        .context("the account has no key")?
        .secret()
        .to_owned();
    crate::app::check_data_keys(store, &runtime).await?;
    let (writer, mut writers) = Writer::spawn(store.clone(), Default::default());
    let ingest = Arc::new(Ingest::new(
        Arc::new(ArcSwap::from_pointee(runtime)),
        writer,
        None,
        None,
    ));

    let started = Instant::now();
    let posts = history::history_at(seed, days, end, sales_per_day);
    let mut summary = Summary {
        account: name.to_string(),
        from: posts.iter().map(|p| p.time).min(),
        until: posts.iter().map(|p| p.time).max(),
        spike: spike_rates(&posts, end),
        ..Summary::default()
    };
    // ClickBank retries hours later: send them after every first delivery,
    // so the stored copy is always the first attempt.
    let (first, retries): (Vec<_>, Vec<_>) = posts.into_iter().partition(|p| p.attempt == 1);
    let mut tasks = JoinSet::new();
    for post in first.into_iter().chain(retries) {
        *summary.sent.entry(post.kind).or_default() += 1;
        summary.retries += usize::from(post.attempt > 1);
        while tasks.len() >= IN_FLIGHT {
            count(&mut summary, tasks.join_next().await)?;
        }
        // Received a few seconds after the transaction; a retry 4 hours
        // after the attempt before (section 2 of the protocol notes).
        let delay = chrono::Duration::seconds(2 + 4 * 3600 * i64::from(post.attempt - 1));
        let received_at = (post.time + delay).min(Utc::now());
        let body = Bytes::from(ins::encrypt(
            &secret,
            post.plaintext.as_bytes(),
            ins::random_iv(),
        ));
        let (ingest, name) = (ingest.clone(), name.clone());
        tasks.spawn(async move {
            let none: Option<&str> = None;
            let header = move |_: &str| none;
            let post = Post {
                source_ip: DEMO_SOURCE,
                account_hint: Some(&name),
                body: Ok(body),
                header: &header,
                received_at,
            };
            ingest.ingest(post).await.map(|a| a.recorded)
        });
    }
    while !tasks.is_empty() {
        count(&mut summary, tasks.join_next().await)?;
    }
    // The writers stop once the last sender is gone.
    drop(ingest);
    while writers.join_next().await.is_some() {}
    summary.elapsed = started.elapsed();
    Ok(summary)
}

type Outcome = Option<Result<Result<Recorded, crate::ingest::IngestError>, tokio::task::JoinError>>;

fn count(summary: &mut Summary, outcome: Outcome) -> anyhow::Result<()> {
    match outcome {
        None => {}
        Some(joined) => match joined.context("a demo post panicked")? {
            Ok(Recorded::New { .. }) => summary.stored += 1,
            Ok(Recorded::Duplicate { .. }) => summary.duplicates += 1,
            Err(e) => return Err(anyhow::anyhow!("a demo notification was refused: {e}")),
        },
    }
    Ok(())
}

/// The spiking product's refund rate as ClickBank computes it (refunds
/// dated in a period over sales dated in it): the last `SPIKE_DAYS` days,
/// and the days before (after the first 45, while refunds build up).
pub fn spike_rates(posts: &[DemoPost], end: DateTime<Utc>) -> (f64, f64) {
    let from = end - chrono::Duration::days(SPIKE_DAYS);
    let first = posts.iter().map(|p| p.time).min().unwrap_or(end);
    let settled = first + chrono::Duration::days(45);
    let item = PRODUCTS[SPIKING].item;
    let rate = |lo: DateTime<Utc>, hi: DateTime<Utc>| {
        let of = |kind: &str| {
            posts
                .iter()
                .filter(|p| {
                    p.attempt == 1
                        && p.item == item
                        && p.kind == kind
                        && p.time >= lo
                        && p.time < hi
                })
                .count() as f64
        };
        let sales = of("SALE");
        if sales == 0.0 {
            0.0
        } else {
            of("RFND") / sales
        }
    };
    let before = if settled < from {
        rate(settled, from)
    } else {
        rate(first, from)
    };
    (rate(from, end), before)
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let total: usize = self.sent.values().sum();
        let day = |t: Option<DateTime<Utc>>| t.map(|t| t.format("%Y-%m-%d").to_string());
        writeln!(
            f,
            "sent {total} notifications for account `{}` from {} to {}:",
            self.account,
            day(self.from).unwrap_or_default(),
            day(self.until).unwrap_or_default()
        )?;
        for (kind, n) in &self.sent {
            writeln!(f, "  {kind:<14} {n:>6}")?;
        }
        writeln!(
            f,
            "stored {} new, {} duplicates ({} of them ClickBank retries)",
            self.stored, self.duplicates, self.retries
        )?;
        let p = &PRODUCTS[SPIKING];
        writeln!(
            f,
            "refund spike: \"{}\" (item {}), {:.1} % of its sales refunded in the last {SPIKE_DAYS} days, {:.1} % before",
            p.title,
            p.item,
            self.spike.0 * 100.0,
            self.spike.1 * 100.0
        )?;
        write!(f, "took {:.1} s", self.elapsed.as_secs_f64())
    }
}

#[cfg(test)]
mod tests;
