//! After the run: every acknowledged notification is in the database exactly
//! once, no forged one is, and the duplicates column counts the retries that
//! reached it.

use std::sync::atomic::Ordering;

use anyhow::Context as _;
use kaching::config::{DatabaseSettings, SecretUrl};
use kaching::store::Store;

use crate::load::{Shared, ACKED, NOT_SENT, UNCERTAIN};
use crate::workload::{parse_receipt, receipt, Kind, Parsed};

/// Problems listed in full; beyond this only counted.
const SHOWN: usize = 10;

pub struct Verdict {
    pub rows: usize,
    pub duplicates_counted: i64,
    /// Duplicate posts acknowledged after their notification was stored.
    pub duplicates_expected: i64,
    pub problems: Vec<String>,
    pub problem_count: usize,
}

impl Verdict {
    pub fn ok(&self) -> bool {
        self.problem_count == 0
    }

    fn problem(&mut self, p: String) {
        self.problem_count += 1;
        if self.problems.len() < SHOWN {
            self.problems.push(p);
        }
    }
}

/// Per genuine notification: its posts by outcome.
#[derive(Clone, Copy, Default)]
struct Tally {
    acked: i64,
    uncertain: i64,
    sent: i64,
    rows: i64,
    duplicates: i64,
}

/// Refuses a SQLite URL whose file does not exist: connecting would create an
/// empty database and report every notification missing.
fn check_sqlite_file(url: &str) -> anyhow::Result<()> {
    let Some(rest) = url
        .strip_prefix("sqlite://")
        .or(url.strip_prefix("sqlite:"))
    else {
        return Ok(());
    };
    let path = rest.split('?').next().unwrap_or(rest);
    if path.is_empty() || path == ":memory:" {
        anyhow::bail!("--database-url {url}: the daemon's database cannot be in memory");
    }
    anyhow::ensure!(
        std::path::Path::new(path).is_file(),
        "--database-url {url}: no such SQLite file"
    );
    Ok(())
}

pub async fn verify(shared: &Shared, database_url: &str) -> anyhow::Result<Verdict> {
    check_sqlite_file(database_url)?;
    let settings = DatabaseSettings {
        url: SecretUrl(database_url.to_owned()),
        max_connections: 1,
        ..Default::default()
    };
    let store = Store::connect(&settings)
        .await
        .with_context(|| format!("cannot open {}", settings.url.redacted()))?;
    let w = &shared.workload;
    let rows = store
        .receipts_with_prefix(&w.prefix)
        .await
        .context("cannot read this run's notifications")?;
    store.close().await;

    let mut v = Verdict {
        rows: rows.len(),
        duplicates_counted: 0,
        duplicates_expected: 0,
        problems: Vec::new(),
        problem_count: 0,
    };
    let mut tally = vec![Tally::default(); w.genuine as usize];
    for (post, outcome) in w.posts.iter().zip(&shared.outcomes) {
        let outcome = outcome.load(Ordering::Relaxed);
        match post.kind {
            Kind::Genuine | Kind::Duplicate => {
                let t = &mut tally[post.id as usize];
                t.acked += i64::from(outcome == ACKED);
                t.uncertain += i64::from(outcome == UNCERTAIN);
                t.sent += i64::from(outcome != NOT_SENT);
            }
            Kind::Forged => {
                if outcome == ACKED {
                    v.problem(format!("forged post {} was acknowledged with 200", post.id));
                }
            }
        }
    }
    for (r, transaction_type, duplicates) in &rows {
        v.duplicates_counted += duplicates;
        match parse_receipt(&w.prefix, r) {
            Parsed::Genuine(id) if id < w.genuine => {
                let t = &mut tally[id as usize];
                t.rows += 1;
                t.duplicates = *duplicates;
                if transaction_type != "SALE" {
                    v.problem(format!("{r}: stored as {transaction_type}, sent as SALE"));
                }
            }
            Parsed::Forged(id) => v.problem(format!("{r}: forged post {id} was stored")),
            Parsed::Genuine(_) | Parsed::Unknown => {
                v.problem(format!("{r}: stored, but this run never sent it"));
            }
        }
    }
    for (id, t) in tally.iter().enumerate() {
        let r = || receipt(&w.prefix, id as u32);
        v.duplicates_expected += (t.acked - 1).max(0);
        match t.rows {
            0 if t.acked > 0 => v.problem(format!(
                "{}: acknowledged {} time(s) but not stored",
                r(),
                t.acked
            )),
            0 => {}
            1 if t.acked + t.uncertain == 0 => v.problem(format!(
                "{}: stored but {}",
                r(),
                if t.sent == 0 {
                    "never sent"
                } else {
                    "every post of it was refused"
                }
            )),
            1 => {
                // Each post that reached the commit after the first counts once;
                // an unanswered one may or may not have.
                let low = (t.acked - 1).max(0);
                let high = t.acked + t.uncertain - 1;
                if t.duplicates < low || t.duplicates > high {
                    let expected = if low == high {
                        low.to_string()
                    } else {
                        format!("{low}..={high}")
                    };
                    v.problem(format!(
                        "{}: duplicates = {}, expected {expected} ({} acknowledged post(s), {} unanswered)",
                        r(),
                        t.duplicates,
                        t.acked,
                        t.uncertain
                    ));
                }
            }
            n => v.problem(format!("{}: stored {n} times", r())),
        }
    }
    Ok(v)
}
