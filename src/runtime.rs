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
use crate::config::{invalid, AccountSettings, ConfigError, Settings, DEMO_SECRET_KEY};
use crate::ins::{AccountKey, AccountKeys, AccountName};

/// One configured account: its keys and its own source-address allowlist.
#[derive(Debug)]
pub struct Account {
    pub keys: AccountKeys,
    pub allowed_ips: Vec<IpNet>,
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
    /// Bound on one commit (and on `/readyz`'s probe).
    pub commit_timeout: Duration,
    /// Legacy `cverify` failures allowed per address per minute.
    pub max_auth_failures_per_minute: u32,
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
            accounts.push(Account {
                keys,
                allowed_ips: a.allowed_ips.clone(),
            });
        }
        let by_name = accounts
            .iter()
            .enumerate()
            .map(|(i, a)| (a.keys.name.as_str().to_owned(), i))
            .collect();
        let actions = Actions::from_settings(&settings.actions)?;
        Ok(Runtime {
            accounts,
            by_name,
            allowed_ips: settings.security.allowed_ips.clone(),
            trusted_proxies: settings.security.trusted_proxies.clone(),
            alerts: Arc::new(Rules::build(&settings.alerts, &actions)?),
            actions: Arc::new(actions),
            commit_timeout: Duration::from_millis(settings.database.commit_timeout_ms),
            max_auth_failures_per_minute: settings.security.max_auth_failures_per_minute,
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
