//! `[[alerts]]`: the settings of one alert rule, as written; `[risk]`; and
//! `[privacy]`. Every key is
//! optional but `name`, `kind` and `notify`; a key of another kind is
//! refused when the rules are built ([`crate::alerts::Rules::build`]), and
//! defaults that depend on the kind are filled in there.

use std::path::PathBuf;

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertSettings {
    pub name: String,
    /// `refund_spike`, `chargeback`, `silence`, `rejected_surge`,
    /// `schema_drift` or `dead_letter`.
    pub kind: String,
    pub enabled: bool,
    /// `[[actions]]` names the alert is delivered through.
    pub notify: Vec<String>,
    /// Accounts the rule watches; empty: all.
    pub accounts: Vec<String>,
    /// The false-alarm probability per subject per evaluation (the
    /// statistical kinds): smaller fires later and more rarely.
    pub sensitivity: Option<f64>,
    /// After an alert resolves, its subject does not fire again for this long.
    pub cooldown: String,
    /// How often a timer-evaluated rule runs, e.g. `"1m"`.
    pub every: Option<String>,
    /// The recent window: `"7d"` (refund_spike), `"10m"` (rejected_surge),
    /// `"30d"` (chargeback with rate_above).
    pub window: Option<String>,
    /// refund_spike: the breakdowns watched: `product`, `affiliate`, `tid`.
    pub by: Vec<String>,
    /// refund_spike: fewer refunds in the window never fire.
    pub min_refunds: Option<u32>,
    /// refund_spike: sales older than this have all the refunds they will get.
    pub matured_after: Option<String>,
    /// chargeback: only chargebacks of at least this amount (exact decimal, absolute).
    pub min_amount: Option<String>,
    /// chargeback: fire on the rate (chargebacks / sales in `window`) instead of each one.
    pub rate_above: Option<f64>,
    /// silence: an account with fewer sales in its 28-day profile is not watched.
    pub min_sales: Option<u32>,
    /// rejected_surge: fewer rejected posts in the window never fire.
    pub min_count: Option<u32>,
    /// schema_drift: notifications of a version and type learned before a change can fire.
    pub min_baseline: Option<u32>,
}

impl Default for AlertSettings {
    fn default() -> Self {
        Self {
            name: String::new(),
            kind: String::new(),
            enabled: true,
            notify: Vec::new(),
            accounts: Vec::new(),
            sensitivity: None,
            cooldown: "6h".into(),
            every: None,
            window: None,
            by: Vec::new(),
            min_refunds: None,
            matured_after: None,
            min_amount: None,
            rate_above: None,
            min_sales: None,
            min_count: None,
            min_baseline: None,
        }
    }
}

/// `[risk]`: the refund-risk score (see `crate::risk`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RiskSettings {
    /// Score new sales with the newest model (when there is one).
    pub enabled: bool,
    /// The refund window the model predicts, in days (ClickBank's default: 60).
    pub window_days: u32,
    /// Retrain in the daemon when the newest model is older than this, e.g.
    /// `"7d"`; unset: only `kaching risk train` trains.
    pub retrain_every: Option<String>,
}

impl Default for RiskSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            window_days: 60,
            retrain_every: None,
        }
    }
}

/// `[privacy]`: customer data at rest (see `crate::privacy`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrivacySettings {
    /// Seal the buyer's personal data before it reaches the database.
    pub encrypt: bool,
    /// The data key: 32 random bytes, base64, in this file…
    pub data_key_file: Option<PathBuf>,
    /// …or in this environment variable (takes precedence).
    pub data_key_env: Option<String>,
    /// Earlier data keys (base64), so rows sealed before a rotation still open.
    #[serde(serialize_with = "super::ser_redacted_vec")]
    pub previous_data_keys: Vec<SecretString>,
    /// Create `data_key_file` when it does not exist yet (a first start).
    pub generate_key: bool,
    /// Erase the personal data of notifications received longer ago than
    /// this many days (daily); unset: kept.
    pub customer_data_retention_days: Option<u32>,
    /// Delete kept rejected posts older than this many days (daily).
    pub rejected_retention_days: u32,
}

impl Default for PrivacySettings {
    fn default() -> Self {
        Self {
            encrypt: true,
            data_key_file: Some(PathBuf::from("data/kaching.key")),
            data_key_env: None,
            previous_data_keys: Vec::new(),
            generate_key: true,
            customer_data_retention_days: None,
            rejected_retention_days: 30,
        }
    }
}
