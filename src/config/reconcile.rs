//! `[accounts.reconcile]`: reconciliation with ClickBank's Orders API, as
//! written. Resolved (the key read, durations parsed) by
//! [`crate::reconcile::Plan::build`].

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReconcileSettings {
    /// The ClickBank API key (`API-…`, or the legacy `DEV-…:API-…`), from
    /// an environment variable or a file. One is required.
    pub api_key_env: Option<String>,
    pub api_key_file: Option<PathBuf>,
    /// How often the daemon reconciles, e.g. `"6h"`; unset: only by hand
    /// (`kaching reconcile`).
    pub every: Option<String>,
    /// Days back from today each run looks at.
    pub lookback_days: u32,
    pub api_url: String,
    /// How far apart the Orders API's and an INS notification's
    /// transaction times may be and still be one transaction.
    pub match_tolerance: String,
    /// Requests to the Orders API per day, for this account, counting every
    /// run (ClickBank allows 25,000 a day per account, shared with the
    /// user's other tools).
    pub daily_budget: u32,
    /// Requests per second at most (ClickBank allows 10 per address).
    pub requests_per_second: f64,
}

impl Default for ReconcileSettings {
    fn default() -> Self {
        Self {
            api_key_env: None,
            api_key_file: None,
            every: None,
            lookback_days: 7,
            api_url: "https://api.clickbank.com".into(),
            match_tolerance: "5m".into(),
            daily_budget: 2_000,
            requests_per_second: 4.0,
        }
    }
}
