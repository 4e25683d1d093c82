//! The checks of `kaching doctor`, one function per subject.

use std::path::Path;
use std::time::Duration;

use super::{Finding, Verdict};
use crate::config::{Settings, TlsMode, DEMO_SECRET_KEY};
use crate::runtime::Runtime;
use crate::store::Store;

/// A clock further off the database's than this is a problem.
const MAX_SKEW: Duration = Duration::from_secs(30);
/// A certificate expiring sooner than this is worth a warning.
const EXPIRY_WARNING_DAYS: i64 = 14;

/// Reachable, migrated, writable; and the clock against the database's.
pub async fn database(settings: &Settings) -> Vec<Finding> {
    let url = settings.database.url.redacted();
    if let Some(path) = sqlite_file(settings) {
        if !Path::new(&path).exists() {
            // Not created by a check: `serve` or `migrate` makes it.
            return vec![Finding::bad(
                "database",
                Verdict::Fail,
                format!("{path} does not exist yet"),
                "run `kaching migrate` (or start `kaching serve`, which creates and migrates it)",
            )];
        }
    }
    let connect = tokio::time::timeout(Duration::from_secs(10), Store::connect(&settings.database));
    let store = match connect.await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return vec![Finding::bad(
                "database",
                Verdict::Fail,
                format!("cannot open {url}: {e}"),
                "check database.url (or KACHING__DATABASE__URL), that the server runs and the role may log in",
            )]
        }
        Err(_) => {
            return vec![Finding::bad(
                "database",
                Verdict::Fail,
                format!("{url} did not answer within 10 s"),
                "check the host, the port and the firewall",
            )]
        }
    };
    let mut out = Vec::new();
    match store.pending_migrations().await {
        Ok(0) => out.push(Finding::ok(
            "database",
            format!("{url}: reachable and migrated"),
        )),
        Ok(n) => out.push(Finding::bad(
            "database",
            Verdict::Fail,
            format!("{url}: {n} migration(s) not applied"),
            "run `kaching migrate` (serve also migrates at start)",
        )),
        Err(e) => out.push(Finding::bad(
            "database",
            Verdict::Fail,
            format!("{url}: cannot read the migrations: {e}"),
            "the role needs to read _sqlx_migrations",
        )),
    }
    if out.iter().any(|f| f.verdict == Verdict::Fail) {
        store.close().await;
        return out;
    }
    match store.probe_write().await {
        Ok(()) => out.push(Finding::ok("database", "takes commits")),
        Err(e) => out.push(Finding::bad(
            "database",
            Verdict::Fail,
            format!("cannot commit: {e}"),
            "a full disk, a read-only role or a stuck lock; kaching answers 503 until it can",
        )),
    }
    out.push(clock(&store).await);
    store.close().await;
    out
}

async fn clock(store: &Store) -> Finding {
    let here = chrono::Utc::now();
    // Built after this: a clock before it is wrong.
    let floor = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
        .map(|t| t.with_timezone(&chrono::Utc))
        .unwrap_or(here);
    if here < floor {
        return Finding::bad(
            "clock",
            Verdict::Fail,
            format!("this machine says {here}"),
            "set the clock (chrony, systemd-timesyncd): TLS, alerts and reconciliation need it",
        );
    }
    match store.server_time().await {
        Ok(Some(there)) => {
            let skew = (here - there).abs().to_std().unwrap_or_default();
            if skew > MAX_SKEW {
                Finding::bad(
                    "clock",
                    Verdict::Fail,
                    format!("{} s off the database server's", skew.as_secs()),
                    "synchronise both clocks (chrony, systemd-timesyncd)",
                )
            } else {
                Finding::ok(
                    "clock",
                    format!("{} ms off the database server's", skew.as_millis()),
                )
            }
        }
        Ok(None) => Finding::ok("clock", format!("{}", here.format("%Y-%m-%d %H:%M:%S UTC"))),
        Err(e) => Finding::bad(
            "clock",
            Verdict::Warn,
            format!("cannot read the database server's time: {e}"),
            "none needed if the database works",
        ),
    }
}

/// ClickBank's keys are up to 16 uppercase letters and digits.
pub fn account_keys(runtime: &Runtime) -> Vec<Finding> {
    runtime
        .accounts
        .iter()
        .map(|a| {
            let name = a.keys.name.as_str();
            let Some(key) = a.keys.keys.first() else {
                return Finding::bad("key", Verdict::Fail, format!("{name}: no key"), "set secret_key");
            };
            let secret = key.secret();
            let shaped = !secret.is_empty()
                && secret.len() <= 16
                && secret.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
            if secret == DEMO_SECRET_KEY {
                Finding::bad(
                    "key",
                    Verdict::Warn,
                    format!("{name}: the public demo key"),
                    "put the account's own key (ClickBank: Settings, My Site, Advanced Tools) before going live",
                )
            } else if shaped {
                Finding::ok("key", format!("{name}: has ClickBank's shape ({} characters)", secret.len()))
            } else {
                Finding::bad(
                    "key",
                    Verdict::Fail,
                    format!("{name}: {} characters, not all uppercase letters and digits", secret.len()),
                    "copy the Secret Key from ClickBank again (up to 16 uppercase letters and digits; no spaces, no quotes)",
                )
            }
        })
        .collect()
}

/// The INS listener's certificate: present, a complete chain, its names,
/// its days to expiry.
pub fn certificate(settings: &Settings) -> Vec<Finding> {
    let tls = &settings.tls;
    match tls.mode {
        TlsMode::Off => {
            let public = !settings.server.listen.ip().is_loopback();
            vec![if public && settings.security.trusted_proxies.is_empty() {
                Finding::bad(
                    "certificate",
                    Verdict::Warn,
                    format!("tls.mode = \"off\" on {}", settings.server.listen),
                    "ClickBank posts over HTTPS: terminate TLS in a proxy (and set trusted_proxies) or use tls.mode = \"files\"",
                )
            } else {
                Finding::ok("certificate", "tls.mode = \"off\" (a proxy in front terminates TLS)")
            }]
        }
        TlsMode::SelfSigned => vec![Finding::bad(
            "certificate",
            Verdict::Warn,
            "self-signed",
            "fine for trying kaching; ClickBank needs a certificate from a public CA (tls.mode = \"files\")",
        )],
        TlsMode::Acme => {
            let path = tls.acme.cache_dir.join(crate::http::acme::CERT_FILE);
            if path.is_file() {
                chain(&path, &tls.acme.domains)
            } else {
                vec![Finding::bad(
                    "certificate",
                    Verdict::Warn,
                    format!("no certificate in {} yet", tls.acme.cache_dir.display()),
                    "kaching obtains one from the ACME CA at its first start (the INS listener must be reachable on port 443 for tls-alpn-01)",
                )]
            }
        }
        TlsMode::Files => {
            let Some(path) = &tls.cert_path else {
                return vec![Finding::bad("certificate", Verdict::Fail, "no tls.cert_path", "set it")];
            };
            chain(path, &[])
        }
    }
}

/// The names of `wanted` that none of the certificate's `names` covers
/// (exactly, or by a `*.` wildcard one label deep), case aside.
fn uncovered<'a>(wanted: &'a [String], names: &[String]) -> Vec<&'a str> {
    let covers = |name: &str, host: &str| {
        let (name, host) = (name.to_ascii_lowercase(), host.to_ascii_lowercase());
        match name.strip_prefix("*.") {
            Some(suffix) => host
                .split_once('.')
                .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
            None => name == host,
        }
    };
    wanted
        .iter()
        .filter(|host| !names.iter().any(|n| covers(n, host)))
        .map(String::as_str)
        .collect()
}

/// The chain at `path`; `hosts`, when given, are names it must cover.
fn chain(path: &Path, hosts: &[String]) -> Vec<Finding> {
    use x509_parser::prelude::*;
    let pem = match std::fs::read(path) {
        Ok(p) => p,
        Err(e) => {
            return vec![Finding::bad(
                "certificate",
                Verdict::Fail,
                format!("cannot read {}: {e}", path.display()),
                "check tls.cert_path and that the kaching user may read it",
            )]
        }
    };
    let ders: Vec<Vec<u8>> = Pem::iter_from_buffer(&pem)
        .filter_map(Result::ok)
        .filter(|p| p.label == "CERTIFICATE")
        .map(|p| p.contents)
        .collect();
    let certs: Vec<X509Certificate<'_>> = ders
        .iter()
        .filter_map(|d| X509Certificate::from_der(d).ok().map(|(_, c)| c))
        .collect();
    let Some(leaf) = certs.first() else {
        return vec![Finding::bad(
            "certificate",
            Verdict::Fail,
            format!("{}: no certificate in it", path.display()),
            "point tls.cert_path at the PEM certificate chain (fullchain.pem)",
        )];
    };
    let mut out = Vec::new();
    let names: Vec<String> = leaf
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some((*d).to_owned()),
                    GeneralName::IPAddress(_) => Some("(an IP address)".to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let days = (leaf.validity().not_after.timestamp() - chrono::Utc::now().timestamp()) / 86_400;
    let detail = format!(
        "{} for {} ({days} days left)",
        path.display(),
        names.join(", ")
    );
    out.push(if days < 0 {
        Finding::bad(
            "certificate",
            Verdict::Fail,
            format!("{detail}: expired"),
            "renew it, then `systemctl reload kaching`",
        )
    } else if days < EXPIRY_WARNING_DAYS {
        Finding::bad(
            "certificate",
            Verdict::Warn,
            detail,
            "renew it soon, then `systemctl reload kaching`",
        )
    } else if names.is_empty() {
        Finding::bad(
            "certificate",
            Verdict::Fail,
            detail,
            "the certificate names no host (subjectAltName): ClickBank will refuse it",
        )
    } else {
        Finding::ok("certificate", detail)
    });
    let missing = uncovered(hosts, &names);
    if !missing.is_empty() {
        out.push(Finding::bad(
            "certificate",
            Verdict::Fail,
            format!("it does not name {}", missing.join(", ")),
            "kaching orders a new certificate for tls.acme.domains at its next start; restart it",
        ));
    }
    let self_issued = leaf.issuer() == leaf.subject();
    let linked = certs.windows(2).all(|w| w[0].issuer() == w[1].subject());
    out.push(if self_issued {
        Finding::bad(
            "certificate",
            Verdict::Warn,
            "self-signed",
            "ClickBank needs a certificate from a public CA",
        )
    } else if certs.len() < 2 || !linked {
        Finding::bad(
            "certificate",
            Verdict::Fail,
            format!(
                "the chain has {} certificate(s) and does not reach the issuer",
                certs.len()
            ),
            "use the full chain (leaf, then intermediates: fullchain.pem), not the leaf alone",
        )
    } else {
        Finding::ok(
            "certificate",
            format!("a complete chain of {}", certs.len()),
        )
    });
    out
}

/// The SQLite database's file, when the store is SQLite.
fn sqlite_file(settings: &Settings) -> Option<String> {
    let url = settings.database.url.expose();
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or(rest);
    (!path.is_empty() && path != ":memory:").then(|| path.to_owned())
}

/// Can the listen address be bound here, or does a kaching already serve it?
pub async fn listen(settings: &Settings) -> Finding {
    let addr = settings.server.listen;
    match tokio::net::TcpListener::bind(addr).await {
        Ok(_) => Finding::ok("listen", format!("{addr} is free (kaching is not running)")),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            match super::health(settings, false).await {
                Ok(_) => Finding::ok("listen", format!("{addr}: a kaching answers /healthz there")),
                Err(_) => Finding::bad(
                    "listen",
                    Verdict::Fail,
                    format!("{addr} is taken by another program"),
                    "stop it, or change server.listen",
                ),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Finding::bad(
            "listen",
            Verdict::Fail,
            format!("{addr}: permission denied"),
            "a port below 1024 needs CAP_NET_BIND_SERVICE (deploy/low-port.conf) or a proxy in front",
        ),
        Err(e) => Finding::bad(
            "listen",
            Verdict::Fail,
            format!("{addr}: {e}"),
            "server.listen must be an address of this host",
        ),
    }
}

/// The data key, the data directory, the TLS key and the SQLite file are
/// not readable (or writable) by other users.
pub fn permissions(settings: &Settings) -> Vec<Finding> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut files: Vec<(&'static str, std::path::PathBuf)> = Vec::new();
    if let (true, None, Some(k)) = (
        settings.privacy.encrypt,
        &settings.privacy.data_key_env,
        &settings.privacy.data_key_file,
    ) {
        files.push(("the data key", k.clone()));
    }
    if let Some(k) = &settings.tls.key_path {
        files.push(("the TLS key", k.clone()));
    }
    if let Some(db) = sqlite_file(settings) {
        files.push(("the database", db.into()));
    }
    let mut out = Vec::new();
    for (what, path) in files {
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        let mode = meta.permissions().mode() & 0o777;
        // The keys open everything; the database holds sealed data and money.
        let verdict = if what == "the database" {
            Verdict::Warn
        } else {
            Verdict::Fail
        };
        out.push(if mode & 0o077 != 0 {
            Finding::bad(
                "permissions",
                verdict,
                format!(
                    "{what} {} is mode {mode:03o}: other users can read it",
                    path.display()
                ),
                format!("chmod 600 {}", path.display()),
            )
        } else {
            Finding::ok(
                "permissions",
                format!("{what} {} is mode {mode:03o}", path.display()),
            )
        });
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if let Ok(m) = std::fs::metadata(dir) {
                let mode = m.permissions().mode() & 0o777;
                if mode & 0o002 != 0 {
                    out.push(Finding::bad(
                        "permissions",
                        Verdict::Fail,
                        format!(
                            "{} (holding {what}) is writable by every user",
                            dir.display()
                        ),
                        format!("chmod o-w {}", dir.display()),
                    ));
                }
            }
        }
    }
    out
}

/// Each webhook's and http action's host, and each SMTP server, resolves;
/// and to an address the action may reach.
pub async fn targets(settings: &Settings) -> Vec<Finding> {
    let mut out = Vec::new();
    for a in settings.actions.iter().filter(|a| a.enabled) {
        let url = match (a.kind.as_str(), &a.url, &a.smtp_url) {
            ("webhook" | "http", Some(u), _) if !u.contains("{{") => u.clone(),
            ("email", _, Some(u)) => u.expose().to_owned(),
            _ => continue,
        };
        let Ok(parsed) = url::Url::parse(&url) else {
            continue;
        };
        let Some(host) = parsed
            .host_str()
            .map(|h| h.trim_matches(['[', ']']).to_owned())
        else {
            continue;
        };
        let port = parsed.port_or_known_default().unwrap_or(443);
        let name = &a.name;
        let resolved = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::net::lookup_host((host.as_str(), port)),
        )
        .await;
        let addrs: Vec<std::net::SocketAddr> = match resolved {
            Ok(Ok(a)) => a.collect(),
            Ok(Err(e)) => {
                out.push(Finding::bad(
                    "targets",
                    Verdict::Fail,
                    format!("action {name}: {host} does not resolve ({e})"),
                    "check the host name in its url (or smtp_url)",
                ));
                continue;
            }
            Err(_) => {
                out.push(Finding::bad(
                    "targets",
                    Verdict::Fail,
                    format!("action {name}: resolving {host} timed out"),
                    "check this host's DNS",
                ));
                continue;
            }
        };
        let http = a.kind != "email";
        let private = addrs
            .iter()
            .all(|s| crate::actions::non_public(s.ip()).is_some());
        out.push(if http && private && !a.allow_private_targets {
            Finding::bad(
                "targets",
                Verdict::Fail,
                format!(
                    "action {name}: {host} is a private or loopback address; it would be refused"
                ),
                "set allow_private_targets = true on the action if that is meant",
            )
        } else {
            Finding::ok("targets", format!("action {name}: {host} resolves"))
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::uncovered;

    #[test]
    fn names_cover_hosts_exactly_or_one_label_under_a_wildcard() {
        let names = [
            "ins.example.com".to_owned(),
            "*.shop.example.com".to_owned(),
        ];
        let wanted: Vec<String> = [
            "INS.example.com",
            "a.shop.example.com",
            "shop.example.com",
            "a.b.shop.example.com",
            "other.example.com",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        assert_eq!(
            uncovered(&wanted, &names),
            [
                "shop.example.com",
                "a.b.shop.example.com",
                "other.example.com"
            ]
        );
    }
}
