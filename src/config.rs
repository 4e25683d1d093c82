//! Settings: one loader in layers (serde defaults, then the TOML file, then
//! `KACHING__SECTION__KEY` environment variables), then an explicit
//! [`Settings::validate`] that names the offending key. Data and loading
//! only: this module imports nothing of the application (the runtime is
//! built from it in [`crate::runtime`]). Secrets stay in [`SecretString`]s
//! and are redacted wherever settings are printed.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

mod alerts;
mod reconcile;

pub use alerts::{AlertSettings, PrivacySettings, RiskSettings};
pub use reconcile::ReconcileSettings;

use ipnet::IpNet;
use secrecy::SecretString;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The key of the demo account in `config/kaching.toml`. It is public (it is in
/// the README), so the daemon refuses to use it on anything but loopback.
pub const DEMO_SECRET_KEY: &str = "KACHINGDEMOKEY01";

/// The file used when neither `--config` nor `KACHING_CONFIG` names one.
pub const DEFAULT_CONFIG_FILE: &str = "config/kaching.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot load configuration")]
    Load(#[from] config::ConfigError),
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

/// A name of `[[actions]]` or `[[alerts]]`: letters, digits, - or _, and
/// not one of the `earlier` ones.
pub(crate) fn check_name<'a>(
    key: String,
    name: &str,
    mut earlier: impl Iterator<Item = &'a str>,
) -> Result<(), ConfigError> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(invalid(key, "must be non-empty letters, digits, - or _"));
    }
    if earlier.any(|o| o == name) {
        return Err(invalid(key, format!("`{name}` is used twice")));
    }
    Ok(())
}

pub(crate) fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub server: ServerSettings,
    pub tls: TlsSettings,
    pub database: DatabaseSettings,
    pub security: SecuritySettings,
    pub admin: AdminSettings,
    pub accounts: Vec<AccountSettings>,
    pub actions: Vec<ActionSettings>,
    pub alerts: Vec<AlertSettings>,
    pub risk: RiskSettings,
    pub privacy: PrivacySettings,
    pub log: LogSettings,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    pub ins_path: String,
    pub max_body_bytes: usize,
    /// Whole-request bound (headers, body, store), so a slow client cannot
    /// hold a connection and a worker forever.
    pub request_timeout_ms: u64,
    /// How long shutdown waits for in-flight requests.
    pub shutdown_timeout_ms: u64,
    /// A new connection that has not started a request this long after it
    /// was accepted (TLS handshake included) is closed.
    pub first_request_timeout_ms: u64,
    /// A connection with no request in flight (a kept-alive HTTP/1.1 one, an
    /// HTTP/2 one with no open stream) is closed after this long.
    pub idle_timeout_ms: u64,
    /// Open connections in all; at start it is lowered to fit the open-file limit.
    pub max_connections: usize,
    /// Open connections from one source address (`security.trusted_proxies` are exempt).
    pub max_connections_per_ip: usize,
    /// Requests being served at once, in all; beyond it a request is answered
    /// 503 with `Retry-After` at once (ClickBank retries) instead of queueing.
    pub max_in_flight: usize,
    /// Requests being served at once from one peer address
    /// (`security.trusted_proxies` are exempt).
    pub max_in_flight_per_ip: usize,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            ins_path: "/ins".into(),
            // A v6 notification is 1–4 KiB; a large cart stays far below 64 KiB.
            max_body_bytes: 64 * 1024,
            request_timeout_ms: 10_000,
            shutdown_timeout_ms: 10_000,
            // The same bound as the TLS handshake and the HTTP/1.1 request
            // head: a genuine sender (ClickBank) posts at once on a fresh
            // connection, well within a second.
            first_request_timeout_ms: 10_000,
            // Long enough for a relaying proxy or a client to reuse a
            // kept-alive connection for its next post, short enough that idle
            // ones cannot pile up: one idle client costs one file descriptor
            // for at most 15 s.
            idle_timeout_ms: 15_000,
            // ClickBank posts a few notifications at a time; 10,000 is far
            // above any genuine load and is clamped at start to the open-file
            // limit less a reserve (the database pool, files, actions).
            max_connections: 10_000,
            // One sender needs a handful; 256 leaves room for many clients
            // behind one NAT address while one address cannot take the
            // whole budget (1,024 descriptors by default under systemd).
            max_connections_per_ip: 256,
            // A request in flight holds its body (at most max_body_bytes) and
            // waits for a commit; 1,024 of them is 64 MiB at most, and several
            // times what group commit needs to reach its full rate.
            max_in_flight: 1024,
            max_in_flight_per_ip: 256,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    SelfSigned,
    Files,
    /// A certificate obtained and renewed by kaching itself ([`AcmeSettings`]).
    Acme,
    Off,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSettings {
    pub mode: TlsMode,
    pub cert_path: Option<PathBuf>,
    pub key_path: Option<PathBuf>,
    /// Where `self-signed` keeps the certificate it generated on first start.
    pub self_signed_dir: PathBuf,
    pub acme: AcmeSettings,
}

impl Default for TlsSettings {
    fn default() -> Self {
        Self {
            mode: TlsMode::SelfSigned,
            cert_path: None,
            key_path: None,
            self_signed_dir: PathBuf::from("data/tls"),
            acme: AcmeSettings::default(),
        }
    }
}

/// How an ACME challenge is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum AcmeChallenge {
    /// On the INS listener itself (which must be port 443 for a public CA).
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
    /// On `tls.acme.http_listen` (port 80 for a public CA).
    #[serde(rename = "http-01")]
    Http01,
}

/// `tls.mode = "acme"`: certificates from an ACME CA (Let's Encrypt by
/// default), obtained at start and renewed while serving.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AcmeSettings {
    /// The names on the certificate (at least one).
    pub domains: Vec<String>,
    /// Addresses the CA may write to about the certificates (`mailto:` added when missing).
    pub contact: Vec<String>,
    /// The CA's directory URL: Let's Encrypt production by default; its staging
    /// is `https://acme-staging-v02.api.letsencrypt.org/directory`.
    pub directory: String,
    /// A PEM root to trust for the directory's HTTPS (a private CA such as
    /// pebble); public CAs need none.
    pub directory_ca_file: Option<PathBuf>,
    /// Where the account key and the current certificate are kept.
    pub cache_dir: PathBuf,
    pub challenge: AcmeChallenge,
    /// Plain HTTP listener for `http-01` (e.g. `0.0.0.0:80`); it also
    /// redirects every other path to HTTPS. Optional with `tls-alpn-01`.
    pub http_listen: Option<SocketAddr>,
}

/// Let's Encrypt's production directory.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

impl Default for AcmeSettings {
    fn default() -> Self {
        Self {
            domains: Vec::new(),
            contact: Vec::new(),
            directory: LETS_ENCRYPT.to_owned(),
            directory_ca_file: None,
            cache_dir: PathBuf::from("data/acme"),
            challenge: AcmeChallenge::TlsAlpn01,
            http_listen: None,
        }
    }
}

/// A URL that may carry a password (a database, an SMTP server): printed
/// and debugged with the password replaced.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct SecretUrl(pub String);

/// The database URL.
pub type DatabaseUrl = SecretUrl;

/// Query parameters whose values are secrets, by a part of their name.
const SECRET_PARAMS: [&str; 8] = [
    "pass",
    "pwd",
    "secret",
    "token",
    "key",
    "auth",
    "signature",
    "credential",
];

/// `text` with a URL's password and the values of its secret-looking query
/// parameters (`password`, `sslpassword`, `token`, `api_key`…) replaced by
/// `redacted`; unchanged when it is not a URL (a template).
pub fn redact_url(text: &str) -> String {
    let Ok(mut u) = url::Url::parse(text) else {
        return text.to_owned();
    };
    if u.password().is_some() {
        let _ = u.set_password(Some("redacted"));
    }
    let secret = |k: &str| {
        let k = k.to_ascii_lowercase();
        SECRET_PARAMS.iter().any(|s| k.contains(s))
    };
    if u.query_pairs().any(|(k, _)| secret(&k)) {
        let pairs: Vec<(String, String)> = u
            .query_pairs()
            .map(|(k, v)| {
                let v = if secret(&k) {
                    "redacted".into()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        u.query_pairs_mut().clear().extend_pairs(pairs);
    }
    u.to_string()
}

fn ser_redacted_url<S: Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(u) => s.serialize_some(&redact_url(u)),
        None => s.serialize_none(),
    }
}

impl SecretUrl {
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn redacted(&self) -> String {
        match url::Url::parse(&self.0) {
            Ok(_) => redact_url(&self.0),
            Err(_) => "(unparsable url)".into(),
        }
    }

    pub fn is_postgres(&self) -> bool {
        self.0.starts_with("postgres://") || self.0.starts_with("postgresql://")
    }

    pub fn is_sqlite(&self) -> bool {
        self.0.starts_with("sqlite:")
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl Serialize for SecretUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.redacted())
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSettings {
    pub url: DatabaseUrl,
    pub max_connections: u32,
    /// Bound on one commit. ClickBank is reported to give up after ~3 s, so a
    /// store that cannot commit within 2.5 s answers 503 and ClickBank retries.
    pub commit_timeout_ms: u64,
    /// SQLite only: the database file stops growing at this many MiB
    /// (`PRAGMA max_page_count`). Notifications then get 503, as on a full
    /// disk, instead of filling a disk that other things need. 0: no cap.
    pub sqlite_max_size_mib: u64,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: SecretUrl("sqlite://data/kaching.db".into()),
            max_connections: 10,
            commit_timeout_ms: 2_500,
            sqlite_max_size_mib: 0,
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecuritySettings {
    #[serde(deserialize_with = "de_nets")]
    pub allowed_ips: Vec<IpNet>,
    #[serde(deserialize_with = "de_nets")]
    pub trusted_proxies: Vec<IpNet>,
    /// Rejected posts kept for `kaching rejected`; older ones are dropped so
    /// that a flood of forged posts cannot fill the disk.
    pub rejected_max_rows: u32,
    /// Failed posts (of any form: refused, unreadable, unrecognised, for an
    /// unknown account) allowed per source address per minute. Past it, that
    /// address's failures get a cheap 429 (not kept, not logged one by one),
    /// and its legacy posts get 429 before any check, since a `cverify` is
    /// only 32 bits. Its AES envelopes and HMAC posts are still checked, so a
    /// forger sharing an address with ClickBank cannot lock ClickBank out.
    #[serde(alias = "max_auth_failures_per_minute")]
    pub max_failures_per_minute: u32,
}

impl Default for SecuritySettings {
    fn default() -> Self {
        Self {
            allowed_ips: Vec::new(),
            trusted_proxies: Vec::new(),
            rejected_max_rows: 10_000,
            max_failures_per_minute: 60,
        }
    }
}

/// The admin listener: `/metrics`, the dashboard and its JSON API, apart
/// from the public INS listener so that nothing operational faces ClickBank.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSettings {
    /// `host:port`; empty turns the admin listener off. On a loopback
    /// address it serves plain HTTP; on any other it serves TLS (the
    /// `[tls]` certificate) and requires a credential.
    pub listen: String,
    /// The name of an environment variable holding the bearer token (for
    /// scripts: `/metrics` and `/api/v1`). Also spelled `api_token_env`.
    #[serde(alias = "api_token_env")]
    pub token_env: Option<String>,
    /// ... or a file holding it (surrounding whitespace is ignored).
    #[serde(alias = "api_token_file")]
    pub token_file: Option<PathBuf>,
    /// The dashboard's login password as an argon2id PHC string, from
    /// `kaching admin hash-password`.
    pub password_hash: Option<String>,
    /// ... or the password itself in an environment variable ...
    pub password_env: Option<String>,
    /// ... or in a file.
    pub password_file: Option<PathBuf>,
    /// How long a dashboard login lasts.
    pub session_hours: u32,
}

impl Default for AdminSettings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9090".into(),
            token_env: None,
            token_file: None,
            password_hash: None,
            password_env: None,
            password_file: None,
            session_hours: 12,
        }
    }
}

/// The dashboard's password, as configured.
#[derive(Debug, Clone)]
pub enum Password {
    /// An argon2 PHC string (checked to parse).
    Hash(String),
    Plain(SecretString),
}

/// The admin listener as validated: where, and the credentials it takes.
#[derive(Debug)]
pub struct Admin {
    pub listen: SocketAddr,
    pub token: Option<SecretString>,
    pub password: Option<Password>,
    pub session: std::time::Duration,
}

impl Admin {
    /// Plain HTTP on loopback only; TLS everywhere else.
    pub fn tls(&self) -> bool {
        !self.listen.ip().is_loopback()
    }

    /// No credential at all: only allowed on loopback, where the dashboard is open.
    pub fn open(&self) -> bool {
        self.token.is_none() && self.password.is_none()
    }
}

/// A bearer token this short is guessable over the network.
const MIN_ADMIN_TOKEN: usize = 16;

/// A secret from the environment variable `env` or the file `file` (at
/// most one of them; `keys` names them in errors; a file's surrounding
/// white space is trimmed).
pub(crate) fn secret_from(
    env: &Option<String>,
    file: &Option<PathBuf>,
    keys: (&str, &str),
) -> Result<Option<String>, ConfigError> {
    match (env, file) {
        (None, None) => Ok(None),
        (Some(var), None) => std::env::var(var)
            .map(Some)
            .map_err(|_| invalid(keys.0, format!("environment variable `{var}` is not set"))),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map(|s| Some(s.trim().to_owned()))
            .map_err(|e| invalid(keys.1, format!("cannot read `{}`: {e}", path.display()))),
        (Some(_), Some(_)) => Err(invalid(
            keys.0,
            format!("set at most one of {} and {}", keys.0, keys.1),
        )),
    }
}

impl AdminSettings {
    /// Resolves `[admin]`: `None` when it is off. The one place that reads
    /// the token and the password, for both `validate` and startup.
    pub fn resolve(&self, tls: TlsMode) -> Result<Option<Admin>, ConfigError> {
        let listen = self.listen.trim();
        if listen.is_empty() {
            return Ok(None);
        }
        let listen: SocketAddr = listen.parse().map_err(|_| {
            invalid(
                "admin.listen",
                format!("`{listen}` is not an address and port, e.g. 127.0.0.1:9090"),
            )
        })?;
        let token = secret_from(
            &self.token_env,
            &self.token_file,
            ("admin.token_env", "admin.token_file"),
        )?;
        if let Some(t) = &token {
            let key = if self.token_env.is_some() {
                "admin.token_env"
            } else {
                "admin.token_file"
            };
            if t.len() < MIN_ADMIN_TOKEN || !t.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(invalid(
                    key,
                    format!(
                        "the token must be at least {MIN_ADMIN_TOKEN} printable ASCII characters without spaces"
                    ),
                ));
            }
        }
        let plain = secret_from(
            &self.password_env,
            &self.password_file,
            ("admin.password_env", "admin.password_file"),
        )?;
        let password =
            match (&self.password_hash, plain) {
                (None, None) => None,
                (Some(hash), None) => {
                    argon2::PasswordHash::new(hash.trim()).map_err(|e| {
                        invalid(
                            "admin.password_hash",
                            format!(
                            "not a PHC string ({e}); make one with `kaching admin hash-password`"
                        ),
                        )
                    })?;
                    Some(Password::Hash(hash.trim().to_owned()))
                }
                (None, Some(p)) if p.is_empty() => {
                    return Err(invalid("admin.password_env", "the password is empty"))
                }
                (None, Some(p)) => Some(Password::Plain(SecretString::from(p))),
                (Some(_), Some(_)) => return Err(invalid(
                    "admin.password_hash",
                    "set one of admin.password_hash, admin.password_env and admin.password_file",
                )),
            };
        if self.session_hours == 0 {
            return Err(invalid("admin.session_hours", "must be at least 1"));
        }
        let admin = Admin {
            listen,
            token: token.map(SecretString::from),
            password,
            session: std::time::Duration::from_secs(u64::from(self.session_hours) * 3600),
        };
        if admin.tls() {
            if admin.open() {
                return Err(invalid(
                    "admin.token_env",
                    format!(
                        "admin.listen {listen} is not a loopback address: set a credential (admin.password_hash \
                         from `kaching admin hash-password`, admin.password_env or _file for the dashboard; \
                         admin.token_env or admin.token_file for scripts), or listen on 127.0.0.1"
                    ),
                ));
            }
            if tls == TlsMode::Off {
                return Err(invalid(
                    "admin.listen",
                    format!(
                        "{listen} is not a loopback address, so the admin listener needs TLS, but tls.mode is \"off\""
                    ),
                ));
            }
        }
        Ok(Some(admin))
    }
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccountSettings {
    pub name: String,
    #[serde(serialize_with = "ser_redacted_opt")]
    pub secret_key: Option<SecretString>,
    pub secret_key_env: Option<String>,
    pub secret_key_file: Option<PathBuf>,
    #[serde(serialize_with = "ser_redacted_vec")]
    pub previous_secret_keys: Vec<SecretString>,
    pub legacy_cverify: bool,
    /// Empty = HMAC mode off for this account.
    pub hmac_header: String,
    #[serde(deserialize_with = "de_nets")]
    pub allowed_ips: Vec<IpNet>,
    /// Reconciliation with ClickBank's Orders API (off without it).
    pub reconcile: Option<ReconcileSettings>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    pub format: LogFormat,
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: LogFormat::Pretty,
            level: "info".into(),
        }
    }
}

/// One `[[actions]]` block: the common keys, then each kind's own keys
/// (checked against `kind` by [`crate::actions::Actions::from_settings`]).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ActionSettings {
    pub name: String,
    /// `webhook`, `email`, `command` or `log`.
    pub kind: String,
    pub enabled: bool,
    pub when: WhenSettings,
    pub retry: RetrySettings,
    pub timeout_ms: u64,
    pub concurrency: u32,
    /// `webhook` and `http`: may reach loopback and private networks.
    pub allow_private_targets: bool,
    /// The buyer's personal data in what leaves the machine (default true,
    /// or the preset's).
    pub include_customer: Option<bool>,
    // kind = "webhook" (and `url`, `headers` for "http")
    #[serde(serialize_with = "ser_redacted_url")]
    pub url: Option<String>,
    /// The URL from an environment variable or a file, when the URL itself
    /// is the secret (Slack, Discord).
    pub url_env: Option<String>,
    pub url_file: Option<PathBuf>,
    #[serde(serialize_with = "ser_redacted_opt")]
    pub secret: Option<SecretString>,
    pub headers: BTreeMap<String, String>,
    // kind = "http"
    pub preset: Option<String>,
    pub method: Option<String>,
    pub query: BTreeMap<String, String>,
    /// The user's own values for templates (`{{ vars.list_id }}`).
    pub vars: BTreeMap<String, String>,
    /// A JSON body: string values are templates, the rest kept as given.
    pub json: Option<serde_json::Value>,
    /// A URL-encoded form body, each value a template.
    pub form: Option<BTreeMap<String, String>>,
    /// With a raw `body` template.
    pub content_type: Option<String>,
    /// A template: the request is sent only when it renders non-empty.
    pub only_if: Option<String>,
    /// Header name to environment variable holding its value.
    pub headers_env: BTreeMap<String, String>,
    /// Query parameter to environment variable holding its value.
    pub query_env: BTreeMap<String, String>,
    pub bearer_env: Option<String>,
    pub bearer_file: Option<PathBuf>,
    pub basic_user: Option<String>,
    pub basic_password_env: Option<String>,
    pub basic_password_file: Option<PathBuf>,
    // kind = "email"
    pub smtp_url: Option<SecretUrl>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub subject: Option<String>,
    pub body: Option<String>,
    pub html_body: Option<String>,
    pub reply_to: Option<String>,
    // kind = "command"
    pub program: Option<String>,
    pub args: Vec<String>,
    pub working_dir: Option<PathBuf>,
}

impl ActionSettings {
    /// `include_customer`, true unless set (or a preset says otherwise).
    pub fn includes_customer(&self) -> bool {
        self.include_customer.unwrap_or(true)
    }
}

impl Default for ActionSettings {
    fn default() -> Self {
        Self {
            name: String::new(),
            kind: String::new(),
            enabled: true,
            when: WhenSettings::default(),
            retry: RetrySettings::default(),
            timeout_ms: 10_000,
            concurrency: 4,
            allow_private_targets: false,
            include_customer: None,
            url: None,
            url_env: None,
            url_file: None,
            secret: None,
            headers: BTreeMap::new(),
            preset: None,
            method: None,
            query: BTreeMap::new(),
            vars: BTreeMap::new(),
            json: None,
            form: None,
            content_type: None,
            only_if: None,
            headers_env: BTreeMap::new(),
            query_env: BTreeMap::new(),
            bearer_env: None,
            bearer_file: None,
            basic_user: None,
            basic_password_env: None,
            basic_password_file: None,
            smtp_url: None,
            from: None,
            to: None,
            subject: None,
            body: None,
            html_body: None,
            reply_to: None,
            program: None,
            args: Vec::new(),
            working_dir: None,
        }
    }
}

/// Which notifications an action runs for. Empty lists match everything.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WhenSettings {
    pub types: Vec<String>,
    pub roles: Vec<String>,
    pub accounts: Vec<String>,
    /// Line-item `itemNo`s (legacy: `cproditem`); any one matching is enough.
    pub items: Vec<String>,
    /// Exact decimal, compared with `totalAccountAmount` (a string, `"10.00"`, or a number).
    #[serde(deserialize_with = "de_decimal_text")]
    pub min_amount: Option<String>,
    /// TEST and TEST_* notifications (the account's Test button) match only when true.
    pub include_tests: bool,
    /// Runs for notifications at all: `false` makes an action for alerts only.
    pub notifications: bool,
    /// Only sales whose refund-risk score is at least this (0–1); a sale
    /// without a score (no model yet) does not match.
    pub min_refund_risk: Option<f64>,
    /// Orders recovered by reconciliation (`form = "orders-api"`, hours or
    /// days late) match only when true: `false` keeps a late thank-you away.
    pub reconciled: bool,
}

impl Default for WhenSettings {
    fn default() -> Self {
        Self {
            types: Vec::new(),
            roles: Vec::new(),
            accounts: Vec::new(),
            items: Vec::new(),
            min_amount: None,
            include_tests: false,
            notifications: true,
            min_refund_risk: None,
            reconciled: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetrySettings {
    /// Executions before the run is failed (dead-lettered).
    pub max_attempts: u32,
    /// Age after which a failing run is failed, e.g. `"3d"`, `"12h"`.
    pub max_age: String,
    /// The first retry's delay; each later one doubles (capped at 6 h), with jitter.
    pub backoff_ms: u64,
}

impl Default for RetrySettings {
    fn default() -> Self {
        Self {
            max_attempts: 12,
            max_age: "3d".into(),
            backoff_ms: 30_000,
        }
    }
}

fn de_decimal_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Amount {
        Text(String),
        Int(i64),
        Float(f64),
    }
    Ok(match Option::<Amount>::deserialize(d)? {
        None => None,
        Some(Amount::Text(s)) => Some(s),
        Some(Amount::Int(i)) => Some(i.to_string()),
        Some(Amount::Float(f)) => Some(f.to_string()),
    })
}

/// Accepts CIDRs (`10.0.0.0/8`) and bare addresses (`203.0.113.7`).
fn parse_net(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("`{s}` is not an IP address or CIDR"))
}

fn de_nets<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
    // The environment layer hands over a comma-separated string, files a list.
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Nets {
        List(Vec<String>),
        One(String),
    }
    let items = match Nets::deserialize(d)? {
        Nets::List(v) => v,
        Nets::One(s) => s
            .split(',')
            .filter(|p| !p.trim().is_empty())
            .map(str::to_owned)
            .collect(),
    };
    items
        .iter()
        .map(|s| parse_net(s).map_err(serde::de::Error::custom))
        .collect()
}

fn ser_redacted_opt<S: Serializer>(v: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(_) => s.serialize_some("[redacted]"),
        None => s.serialize_none(),
    }
}

pub(crate) fn ser_redacted_vec<S: Serializer>(v: &[SecretString], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|_| "[redacted]"))
}

impl Settings {
    /// Loads the layers. `path` is the user's file; when it is `None` the
    /// default file is used if it exists.
    pub fn load(path: Option<&Path>) -> Result<Settings, ConfigError> {
        let mut builder = config::Config::builder();
        match path {
            Some(p) => builder = builder.add_source(config::File::from(p).required(true)),
            None if Path::new(DEFAULT_CONFIG_FILE).exists() => {
                builder = builder.add_source(config::File::with_name(DEFAULT_CONFIG_FILE))
            }
            None => {}
        }
        builder = builder.add_source(
            config::Environment::with_prefix("KACHING")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true),
        );
        Ok(builder.build()?.try_deserialize()?)
    }

    /// The checks that need nothing but the settings themselves. What needs
    /// resolving (secrets from the environment or files, action clients and
    /// templates) is checked by building the runtime from them
    /// ([`crate::runtime::Runtime::build`]), the one step `serve`, reloads
    /// and `check-config` share.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let s = &self.server;
        if !s.ins_path.starts_with('/') || s.ins_path.len() < 2 || s.ins_path.ends_with('/') {
            return Err(invalid(
                "server.ins_path",
                "must start with `/`, not end with `/`, and not be `/` alone",
            ));
        }
        if s.max_body_bytes < 1024 {
            return Err(invalid("server.max_body_bytes", "must be at least 1024"));
        }
        if s.request_timeout_ms == 0 {
            return Err(invalid("server.request_timeout_ms", "must be positive"));
        }
        if s.first_request_timeout_ms == 0 {
            return Err(invalid(
                "server.first_request_timeout_ms",
                "must be positive",
            ));
        }
        if s.idle_timeout_ms == 0 {
            return Err(invalid("server.idle_timeout_ms", "must be positive"));
        }
        if s.max_connections == 0 {
            return Err(invalid("server.max_connections", "must be at least 1"));
        }
        if s.max_connections_per_ip == 0 {
            return Err(invalid(
                "server.max_connections_per_ip",
                "must be at least 1",
            ));
        }
        if s.max_in_flight == 0 {
            return Err(invalid("server.max_in_flight", "must be at least 1"));
        }
        if s.max_in_flight_per_ip == 0 {
            return Err(invalid("server.max_in_flight_per_ip", "must be at least 1"));
        }
        match self.tls.mode {
            TlsMode::Files => match (&self.tls.cert_path, &self.tls.key_path) {
                (None, _) => {
                    return Err(invalid(
                        "tls.cert_path",
                        "is required when tls.mode = \"files\"",
                    ))
                }
                (Some(_), None) => {
                    return Err(invalid(
                        "tls.key_path",
                        "tls.cert_path is set but tls.key_path is missing",
                    ))
                }
                (Some(c), Some(k)) => {
                    for (key, p) in [("tls.cert_path", c), ("tls.key_path", k)] {
                        if !p.is_file() {
                            return Err(invalid(
                                key,
                                format!("`{}` is not a readable file", p.display()),
                            ));
                        }
                    }
                }
            },
            TlsMode::Acme => {
                let acme = &self.tls.acme;
                if acme.domains.is_empty() {
                    return Err(invalid(
                        "tls.acme.domains",
                        "is required when tls.mode = \"acme\": the names ClickBank posts to",
                    ));
                }
                if let Some(bad) = acme.domains.iter().find(|d| {
                    d.is_empty()
                        || d.parse::<std::net::IpAddr>().is_ok()
                        || !d
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
                }) {
                    return Err(invalid(
                        "tls.acme.domains",
                        format!("`{bad}` is not a DNS name (ACME certificates name hosts, not addresses)"),
                    ));
                }
                if acme.challenge == AcmeChallenge::Http01 && acme.http_listen.is_none() {
                    return Err(invalid(
                        "tls.acme.http_listen",
                        "is required with tls.acme.challenge = \"http-01\" (e.g. \"0.0.0.0:80\")",
                    ));
                }
                if let Some(ca) = &acme.directory_ca_file {
                    if !ca.is_file() {
                        return Err(invalid(
                            "tls.acme.directory_ca_file",
                            format!("`{}` is not a readable file", ca.display()),
                        ));
                    }
                }
            }
            TlsMode::SelfSigned | TlsMode::Off => {}
        }
        let db = &self.database;
        if !db.url.is_postgres() && !db.url.is_sqlite() {
            return Err(invalid(
                "database.url",
                "must start with sqlite:// or postgres://",
            ));
        }
        if db.max_connections == 0 {
            return Err(invalid("database.max_connections", "must be at least 1"));
        }
        if db.commit_timeout_ms == 0 {
            return Err(invalid("database.commit_timeout_ms", "must be positive"));
        }
        if self.security.max_failures_per_minute == 0 {
            return Err(invalid(
                "security.max_failures_per_minute",
                "must be at least 1",
            ));
        }
        if self.accounts.is_empty() {
            return Err(invalid(
                "accounts",
                "no [[accounts]] configured: kaching could authenticate nothing",
            ));
        }
        if let Some(admin) = self.admin.resolve(self.tls.mode)? {
            if admin.listen == self.server.listen && admin.listen.port() != 0 {
                return Err(invalid(
                    "admin.listen",
                    "must differ from server.listen: the admin listener is kept apart from the INS one",
                ));
            }
        }
        for (i, a) in self.accounts.iter().enumerate() {
            if self.accounts[..i].iter().any(|b| b.name == a.name) {
                return Err(invalid(
                    format!("accounts[{i}].name"),
                    format!("`{}` is used twice", a.name),
                ));
            }
        }
        Ok(())
    }

    /// The effective settings as TOML, secrets and passwords redacted.
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot print settings: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn passwords_in_a_query_string_are_redacted_too() {
        let db = SecretUrl(
            "postgres://kaching:hunter2@db/kaching?sslmode=require&password=hunter3".into(),
        );
        let shown = format!("{db:?} {}", serde_json::to_string(&db).unwrap());
        assert!(
            !shown.contains("hunter2") && !shown.contains("hunter3"),
            "{shown}"
        );
        assert!(shown.contains("sslmode=require"), "{shown}");
        let hook = ActionSettings {
            url: Some("https://hooks.example.com/x?api_key=k-123&Token=t-9&shop=acme".into()),
            ..Default::default()
        };
        let printed = toml::to_string(&hook).unwrap();
        assert!(
            !printed.contains("k-123") && !printed.contains("t-9"),
            "{printed}"
        );
        assert!(printed.contains("shop=acme"), "{printed}");
        // A template is left as it is.
        assert_eq!(
            redact_url("https://{{ vars.dc }}.x/{{ id }}"),
            "https://{{ vars.dc }}.x/{{ id }}"
        );
    }

    fn settings() -> Settings {
        Settings {
            accounts: vec![AccountSettings {
                name: "acme".into(),
                secret_key: Some(SecretString::from("ACMEKEY123456789".to_owned())),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn refusal(s: &Settings) -> (String, String) {
        match s.validate() {
            Err(ConfigError::Invalid { key, message }) => (key, message),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn the_default_admin_listener_is_loopback_plain_and_needs_no_token() {
        let s = settings();
        s.validate().unwrap();
        let admin = s.admin.resolve(s.tls.mode).unwrap().unwrap();
        assert_eq!(admin.listen, "127.0.0.1:9090".parse().unwrap());
        assert!(!admin.tls());
        assert!(admin.token.is_none());
    }

    #[test]
    fn an_empty_admin_listen_turns_it_off() {
        let mut s = settings();
        s.admin.listen = String::new();
        s.validate().unwrap();
        assert!(s.admin.resolve(s.tls.mode).unwrap().is_none());
    }

    #[test]
    fn a_non_loopback_admin_listener_without_a_credential_is_refused() {
        let mut s = settings();
        s.admin.listen = "0.0.0.0:9090".into();
        let (key, message) = refusal(&s);
        assert_eq!(key, "admin.token_env");
        assert!(message.contains("admin.token_file"), "{message}");
    }

    #[test]
    fn a_non_loopback_admin_listener_with_a_token_file_is_accepted_with_tls() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cr3t-admin-token-0123\n").unwrap();
        let mut s = settings();
        s.admin.listen = "0.0.0.0:9090".into();
        s.admin.token_file = Some(path);
        s.validate().unwrap();
        let admin = s.admin.resolve(s.tls.mode).unwrap().unwrap();
        assert!(admin.tls());
        assert_eq!(
            admin.token.unwrap().expose_secret(),
            "s3cr3t-admin-token-0123"
        );
        // ...but not without TLS.
        s.tls.mode = TlsMode::Off;
        assert_eq!(refusal(&s).0, "admin.listen");
    }

    #[test]
    fn admin_token_mistakes_name_their_key() {
        let mut s = settings();
        s.admin.token_env = Some("KACHING_TEST_NO_SUCH_VARIABLE".into());
        assert_eq!(refusal(&s).0, "admin.token_env");
        s.admin.token_file = Some(PathBuf::from("/nonexistent/token"));
        assert_eq!(refusal(&s).0, "admin.token_env");
        s.admin.token_env = None;
        assert_eq!(refusal(&s).0, "admin.token_file");
        s.admin.token_file = None;
        s.admin.listen = "nowhere".into();
        assert_eq!(refusal(&s).0, "admin.listen");
        s.admin.listen = s.server.listen.to_string();
        assert_eq!(refusal(&s).0, "admin.listen");
    }
}
