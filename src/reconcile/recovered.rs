//! The orders reconciliation recovered, by (account, role, receipt, type),
//! in memory: what lets a late INS copy find its recovered twin without a
//! query on the request path (see [`super`]). Loaded from the store at
//! start, added to by this process's own runs at once, and caught up with
//! other processes' runs (`kaching reconcile`) on every refresh.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::RwLock;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::ins::Notification;
use crate::store::{Store, StoreError};

type Key = (String, String, String, String);

/// Ids read again on each refresh.
const OVERLAP: i64 = 1000;

#[derive(Debug, Default)]
pub struct Recovered {
    times: RwLock<HashMap<Key, Vec<DateTime<Utc>>>>,
    /// The highest notification id read from the store.
    seen: AtomicI64,
}

fn key(account: &str, n: &Notification) -> Key {
    (
        account.to_owned(),
        n.role.to_string(),
        n.receipt.to_string(),
        n.transaction_type.to_string(),
    )
}

impl Recovered {
    /// Reads the recovered rows stored since the last refresh, and again
    /// the last [`OVERLAP`] ids before it: concurrent writers may commit ids
    /// out of order.
    pub async fn refresh(&self, store: &Store) -> Result<(), StoreError> {
        let mut after = self.seen.load(Ordering::Acquire).saturating_sub(OVERLAP);
        loop {
            let rows = store.recovered_after(after, 1000).await?;
            let Some(last) = rows.last().map(|r| r.0) else {
                return Ok(());
            };
            {
                let mut times = self.times.write().unwrap_or_else(|e| e.into_inner());
                for (_, account, role, receipt, kind, time) in rows {
                    let known = times.entry((account, role, receipt, kind)).or_default();
                    if !known.contains(&time) {
                        known.push(time);
                    }
                }
            }
            self.seen.fetch_max(last, Ordering::AcqRel);
            after = last;
        }
    }

    /// A row this process just recovered.
    pub fn add(&self, account: &str, n: &Notification) {
        let mut times = self.times.write().unwrap_or_else(|e| e.into_inner());
        let known = times.entry(key(account, n)).or_default();
        if !known.contains(&n.transaction_time) {
            known.push(n.transaction_time);
        }
    }

    /// The transaction time of `n`'s recovered twin, if one is within `tolerance`.
    pub fn twin(
        &self,
        account: &str,
        n: &Notification,
        tolerance: Duration,
    ) -> Option<DateTime<Utc>> {
        let times = self.times.read().unwrap_or_else(|e| e.into_inner());
        if times.is_empty() {
            return None;
        }
        let tolerance = chrono::Duration::from_std(tolerance).unwrap_or_default();
        // A recovered order without a role matches a post of any role, as
        // reconciliation matches them.
        let (a, role, receipt, kind) = key(account, n);
        let bare = (a.clone(), String::new(), receipt.clone(), kind.clone());
        [(a, role, receipt, kind), bare]
            .iter()
            .filter_map(|k| times.get(k))
            .flatten()
            .copied()
            .filter(|t| (*t - n.transaction_time).abs() <= tolerance)
            .min_by_key(|t| (*t - n.transaction_time).abs())
    }
}
