//! `kaching reconcile`: one run, by hand, beside a running daemon or not.

use std::sync::Arc;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use chrono::NaiveDate;

use super::Report;
use crate::config::Settings;
use crate::ingest::Ingest;
use crate::runtime::Runtime;
use crate::store::{Store, Writer};

/// Reconciles `account` over `from..=to` (ClickBank's days). Recovered
/// orders' runs are created pending, for the daemon's dispatcher.
pub async fn reconcile(
    settings: &Settings,
    store: &Store,
    account: &str,
    (from, to): (NaiveDate, NaiveDate),
    dry_run: bool,
) -> anyhow::Result<Report> {
    anyhow::ensure!(from <= to, "--since is after --until");
    let runtime = Runtime::build(settings)?;
    let plan = runtime
        .account(account)
        .with_context(|| format!("no account named `{account}` in the configuration"))?
        .reconcile
        .clone()
        .with_context(|| format!("account `{account}` has no [accounts.reconcile] block"))?;
    crate::app::check_data_keys(store, &runtime).await?;
    let (writer, mut writers) = Writer::spawn(store.clone(), Default::default());
    let ingest = Ingest::new(Arc::new(ArcSwap::from_pointee(runtime)), writer, None, None);
    let report = super::run(&plan, store, &ingest, (from, to), dry_run, None).await;
    // The writers stop once the last sender is gone.
    drop(ingest);
    while writers.join_next().await.is_some() {}
    Ok(report?)
}
