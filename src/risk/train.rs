//! Training from the store, and the model in force: [`train_and_store`]
//! fits on the matured sales and keeps the model with its holdout
//! evaluation; [`spawn`] picks up a newer model (trained by `kaching risk
//! train` or by another daemon) and retrains on `risk.retrain_every`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwapOption;
use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::{evaluate, features, Evaluation, Example, Model};
use crate::store::Store;

/// The newest matured sales a model learns from, at most: a bound on the
/// training's memory (a dense row per sale).
pub const MAX_TRAINING_SALES: i64 = 30_000;
/// How often the daemon looks for a newer model.
const REFRESH: Duration = Duration::from_secs(60);

/// The model in force and its id.
#[derive(Debug)]
pub struct Scorer {
    pub id: i64,
    pub model: Model,
}

/// Where ingestion reads the model in force from.
pub type Slot = Arc<ArcSwapOption<Scorer>>;

/// The matured sales (older than the window) with their labels: refunded
/// within `window_days` of the sale.
pub async fn training_set(
    store: &Store,
    window_days: i64,
    now: DateTime<Utc>,
) -> anyhow::Result<Vec<Example>> {
    let window = chrono::Duration::days(window_days);
    let sales = store
        .sales_before(now - window, MAX_TRAINING_SALES)
        .await
        .context("cannot read the matured sales")?;
    let refunds = store
        .refund_times()
        .await
        .context("cannot read the refunds")?;
    Ok(sales
        .iter()
        .map(|s| {
            let t = s.notification.transaction_time;
            let key = (
                s.account.as_str().to_owned(),
                s.notification.receipt.as_str().to_owned(),
            );
            Example {
                values: features::values(&s.notification),
                refunded: refunds.get(&key).is_some_and(|r| *r - t <= window),
                at: t,
            }
        })
        .collect())
}

/// Fits a model on the matured sales, evaluates it on a time-based holdout,
/// refits on all of them, and stores it (in force from then on).
pub async fn train_and_store(
    store: &Store,
    window_days: i64,
    now: DateTime<Utc>,
) -> anyhow::Result<(i64, Model, Evaluation)> {
    let examples = training_set(store, window_days, now).await?;
    let (model, evaluation, examples) = tokio::task::spawn_blocking(move || {
        let (_, evaluation) = evaluate(&examples, window_days)?;
        let all: Vec<&Example> = examples.iter().collect();
        let model = Model::fit(&all, window_days)?;
        Ok::<_, super::RiskError>((model, evaluation, examples))
    })
    .await
    .context("the training task failed")??;
    let from = examples.iter().map(|e| e.at).min().unwrap_or(now);
    let to = examples.iter().map(|e| e.at).max().unwrap_or(now);
    let refunds = examples.iter().filter(|e| e.refunded).count();
    let id = store
        .save_risk_model(
            now,
            from,
            to,
            examples.len() as i64,
            refunds as i64,
            &serde_json::to_string(&model)?,
            &serde_json::to_string(&evaluation)?,
        )
        .await
        .context("cannot store the model")?;
    Ok((id, model, evaluation))
}

/// Loads the newest stored model into `slot` if it is newer than the one there.
pub async fn refresh(store: &Store, slot: &Slot) -> anyhow::Result<()> {
    let Some(row) = store.latest_risk_model().await? else {
        return Ok(());
    };
    if slot.load().as_ref().is_some_and(|s| s.id == row.id) {
        return Ok(());
    }
    let model: Model = serde_json::from_str(&row.model)
        .with_context(|| format!("risk model {} does not parse", row.id))?;
    tracing::info!(model = row.id, sales = row.sales, trained_at = %row.trained_at, "risk: model in force");
    slot.store(Some(Arc::new(Scorer { id: row.id, model })));
    Ok(())
}

/// Keeps `slot` on the newest model and, with `retrain_every`, retrains
/// when the newest is older than that.
pub fn spawn(
    store: Store,
    slot: Slot,
    window_days: i64,
    retrain_every: Option<Duration>,
    token: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        // After a failed training (too little history yet), wait this long.
        let mut next_try = tokio::time::Instant::now();
        loop {
            if let Err(e) = refresh(&store, &slot).await {
                tracing::warn!(error = %e, "risk: cannot load the model");
            }
            if let Some(every) = retrain_every {
                let due = match store.latest_risk_model().await {
                    Ok(None) => true,
                    Ok(Some(m)) => {
                        (Utc::now() - m.trained_at).to_std().unwrap_or_default() >= every
                    }
                    Err(_) => false,
                };
                if due && tokio::time::Instant::now() >= next_try {
                    match train_and_store(&store, window_days, Utc::now()).await {
                        Ok((id, _, e)) => {
                            tracing::info!(
                                model = id,
                                sales = e.train_sales + e.test_sales,
                                beats_per_product = e.beats_per_product,
                                "risk: retrained"
                            );
                            continue;
                        }
                        Err(e) => {
                            next_try =
                                tokio::time::Instant::now() + every.min(Duration::from_secs(3600));
                            tracing::warn!(error = %e, "risk: cannot retrain");
                        }
                    }
                }
            }
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tokio::time::sleep(REFRESH) => {}
            }
        }
    })
}
