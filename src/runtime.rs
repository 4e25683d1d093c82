//! The runtime: everything the daemon builds from its settings, built once.
//! Resolving secrets (inline, from the environment or a file), building the
//! actions (HTTP clients, SMTP transports, templates) and every check that
//! needs them happen here, in [`Runtime::build`], which `serve`, a live
//! reload and `kaching check-config` all go through: they cannot disagree.
//! A reload builds a new `Runtime` and swaps it in whole (see [`Live`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use ipnet::IpNet;
use secrecy::{ExposeSecret, SecretString};

use crate::actions::Actions;
use crate::alerts::Rules;
use crate::config::{
    invalid, AccountSettings, ConfigError, PrivacySettings, Settings, DEMO_SECRET_KEY,
};
use crate::ins::{AccountKey, AccountKeys, AccountName};
use crate::privacy::DataKeys;

/// One configured account: its keys and its own source-address allowlist.
#[derive(Debug)]
pub struct Account {
    pub keys: AccountKeys,
    pub allowed_ips: Vec<IpNet>,
    /// `[accounts.reconcile]`, resolved.
    pub reconcile: Option<Arc<crate::reconcile::Plan>>,
}

/// What a request, the dispatcher and the CLI need, resolved from settings.
#[derive(Debug)]
pub struct Runtime {
    pub accounts: Vec<Account>,
    by_name: HashMap<String, usize>,
    pub allowed_ips: Vec<IpNet>,
    pub trusted_proxies: Vec<IpNet>,
    pub actions: Arc<Actions>,
    pub alerts: Arc<Rules>,
    /// The keys that seal customer data (`None`: `privacy.encrypt = false`).
    pub data_keys: Option<Arc<DataKeys>>,
    /// Bound on one commit (and on `/readyz`'s probe).
    pub commit_timeout: Duration,
    /// Failed posts allowed per address per minute.
    pub max_failures_per_minute: u32,
}

/// The runtime in force, swapped whole by a reload. Readers take a
/// snapshot (`live.load()`) and keep it for the request they serve.
pub type Live = Arc<ArcSwap<Runtime>>;

impl Runtime {
    /// Validates `settings` and builds the runtime from them. Every error
    /// names the offending key.
    pub fn build(settings: &Settings) -> Result<Runtime, ConfigError> {
        settings.validate()?;
        let loopback = settings.server.listen.ip().is_loopback();
        let mut accounts = Vec::with_capacity(settings.accounts.len());
        for (i, a) in settings.accounts.iter().enumerate() {
            let keys = resolve(a, i)?;
            let uses_demo = keys.keys.iter().any(|k| k.secret() == DEMO_SECRET_KEY);
            if uses_demo && !loopback {
                return Err(invalid(
                    format!("accounts[{i}].secret_key"),
                    format!(
                        "the demo key is public; refusing to use it on {} (use a loopback address or your own key)",
                        settings.server.listen
                    ),
                ));
            }
            let reconcile = a
                .reconcile
                .as_ref()
                .map(|r| crate::reconcile::Plan::build(&keys.name, r, i).map(Arc::new))
                .transpose()?;
            accounts.push(Account {
                keys,
                allowed_ips: a.allowed_ips.clone(),
                reconcile,
            });
        }
        let by_name = accounts
            .iter()
            .enumerate()
            .map(|(i, a)| (a.keys.name.as_str().to_owned(), i))
            .collect();
        let data_keys = data_keys(&settings.privacy)?;
        let actions = Actions::from_settings(&settings.actions)?.with_keys(data_keys.clone());
        Ok(Runtime {
            data_keys,
            accounts,
            by_name,
            allowed_ips: settings.security.allowed_ips.clone(),
            trusted_proxies: settings.security.trusted_proxies.clone(),
            alerts: Arc::new(Rules::build(&settings.alerts, &actions)?),
            actions: Arc::new(actions),
            commit_timeout: Duration::from_millis(settings.database.commit_timeout_ms),
            max_failures_per_minute: settings.security.max_failures_per_minute,
        })
    }

    /// The account named `name`, if configured.
    pub fn account(&self, name: &str) -> Option<&Account> {
        self.by_name.get(name).map(|&i| &self.accounts[i])
    }

    /// Every account's keys, in configuration order.
    pub fn account_keys(&self) -> impl Iterator<Item = &AccountKeys> {
        self.accounts.iter().map(|a| &a.keys)
    }
}

/// The data keys of `[privacy]`: from the environment or the key file,
/// which a first start creates (mode 0600) when `generate_key` allows.
fn data_keys(p: &PrivacySettings) -> Result<Option<Arc<DataKeys>>, ConfigError> {
    if !p.encrypt {
        return Ok(None);
    }
    let (key, current) = match (&p.data_key_env, &p.data_key_file) {
        (Some(var), _) => (
            "privacy.data_key_env",
            std::env::var(var).map_err(|_| {
                invalid(
                    "privacy.data_key_env",
                    format!("environment variable `{var}` is not set"),
                )
            })?,
        ),
        (None, Some(path)) => match std::fs::read_to_string(path) {
            Ok(text) => ("privacy.data_key_file", text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && p.generate_key => {
                ("privacy.data_key_file", new_key_file(path)?)
            }
            Err(e) => {
                return Err(invalid(
                    "privacy.data_key_file",
                    format!("cannot read `{}`: {e}", path.display()),
                ))
            }
        },
        (None, None) => {
            return Err(invalid(
                "privacy",
                "set data_key_file or data_key_env (or encrypt = false)",
            ))
        }
    };
    let previous: Vec<&str> = p
        .previous_data_keys
        .iter()
        .map(|k| k.expose_secret())
        .collect();
    // The current key alone first, so an error names the right setting.
    DataKeys::new(&current, &[]).map_err(|e| invalid(key, format!("the data key {e}")))?;
    DataKeys::new(&current, &previous)
        .map(|k| Some(Arc::new(k)))
        .map_err(|e| invalid("privacy.previous_data_keys", format!("a key {e}")))
}

/// Writes a new key to `path` (mode 0600, atomically) and returns it.
fn new_key_file(path: &std::path::Path) -> Result<String, ConfigError> {
    use std::io::Write as _;
    let fail = |e: std::io::Error| {
        invalid(
            "privacy.data_key_file",
            format!("cannot create `{}`: {e}", path.display()),
        )
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    let key = crate::privacy::generate();
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(&tmp).map_err(fail)?;
    f.write_all(key.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(fail)?;
    // Another process may have made one meanwhile: theirs wins.
    if std::fs::hard_link(&tmp, path).is_err() {
        let _ = std::fs::remove_file(&tmp);
        return std::fs::read_to_string(path).map_err(fail);
    }
    let _ = std::fs::remove_file(&tmp);
    const ADVICE: &str = "keep a copy apart from the database (without it the customer data cannot be read), and in production keep the key off the database's disk";
    if tracing::dispatcher::has_been_set() {
        tracing::warn!(file = %path.display(), "privacy: generated a new data key for the customer data; {ADVICE}");
    } else {
        // A command without logging (`kaching demo`): said on the terminal.
        eprintln!(
            "kaching: generated a new data key for the customer data in {}; {ADVICE}",
            path.display()
        );
    }
    Ok(key)
}

/// True when `ip` is in one of `nets` (IPv4-mapped IPv6 counts as IPv4).
pub fn contains(nets: &[IpNet], ip: IpAddr) -> bool {
    let ip = canonical(ip);
    nets.iter().any(|n| n.contains(&ip))
}

/// IPv4-mapped IPv6 (`::ffff:1.2.3.4`, seen on dual-stack sockets) as IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The current key first, then the previous ones.
fn secrets(a: &AccountSettings, i: usize) -> Result<Vec<SecretString>, ConfigError> {
    let key = |k: &str| format!("accounts[{i}].{k}");
    let current: SecretString = match (&a.secret_key, &a.secret_key_env, &a.secret_key_file) {
        (Some(k), None, None) => k.clone(),
        (None, Some(var), None) => std::env::var(var).map(SecretString::from).map_err(|_| {
            invalid(
                key("secret_key_env"),
                format!("environment variable `{var}` is not set"),
            )
        })?,
        (None, None, Some(path)) => std::fs::read_to_string(path)
            .map(|s| SecretString::from(s.trim().to_owned()))
            .map_err(|e| {
                invalid(
                    key("secret_key_file"),
                    format!("cannot read `{}`: {e}", path.display()),
                )
            })?,
        _ => {
            return Err(invalid(
                key("secret_key"),
                "set exactly one of secret_key, secret_key_env, secret_key_file",
            ))
        }
    };
    check_secret(&current).map_err(|m| invalid(key("secret_key"), m))?;
    let mut all = vec![current];
    for (j, k) in a.previous_secret_keys.iter().enumerate() {
        check_secret(k).map_err(|m| invalid(key(&format!("previous_secret_keys[{j}]")), m))?;
        all.push(k.clone());
    }
    Ok(all)
}

fn resolve(a: &AccountSettings, i: usize) -> Result<AccountKeys, ConfigError> {
    let name =
        AccountName::parse(&a.name).map_err(|e| invalid(format!("accounts[{i}].name"), e))?;
    let hmac_header = match a.hmac_header.trim() {
        "" => None,
        h if h
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
        {
            Some(h.to_ascii_lowercase())
        }
        h => {
            return Err(invalid(
                format!("accounts[{i}].hmac_header"),
                format!("`{h}` is not a header name"),
            ))
        }
    };
    Ok(AccountKeys {
        name,
        keys: secrets(a, i)?.into_iter().map(AccountKey::new).collect(),
        legacy_cverify: a.legacy_cverify,
        hmac_header,
    })
}

/// ClickBank's keys are up to 16 upper-case letters and digits; anything else is
/// almost certainly a paste error (a trailing space, the account's nickname…).
fn check_secret(k: &SecretString) -> Result<(), String> {
    let k = k.expose_secret();
    if k.is_empty() {
        return Err("is empty".into());
    }
    if k.len() > 64 || !k.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("must be printable ASCII without spaces, at most 64 characters".into());
    }
    Ok(())
}
