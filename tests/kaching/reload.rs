//! Live reload on SIGHUP, for real: the daemon binary under a steady stream
//! of genuine posts gets a new key (the old one moved to
//! `previous_secret_keys`), a second account, a new action URL and new
//! certificate files; every post keeps getting 200, and the new account,
//! certificate and URL are served without a restart. Then an invalid file:
//! the old configuration keeps serving and the failure is logged.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::on_both_backends;
use crate::support::{envelope, plaintext, Backend, TestApp};
use crate::target::{eventually, reserve_port, Target};

const OLD_KEY: &str = "RELOADOLDKEY0001";
const NEW_KEY: &str = "RELOADNEWKEY0002";
const BETA_KEY: &str = "RELOADBETAKEY003";

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Daemon {
    fn hup(&self) {
        let ok = Command::new("kill")
            .args(["-HUP", &self.0.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -HUP");
    }
}

fn self_signed(
    dir: &std::path::Path,
    tag: &str,
) -> (std::path::PathBuf, std::path::PathBuf, Vec<u8>) {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert, key) = (
        dir.join(format!("{tag}.crt")),
        dir.join(format!("{tag}.key")),
    );
    std::fs::write(&cert, c.cert.pem()).unwrap();
    std::fs::write(&key, c.key_pair.serialize_pem()).unwrap();
    (cert, key, c.cert.der().to_vec())
}

#[allow(clippy::too_many_arguments)]
fn config(
    listen: std::net::SocketAddr,
    admin: std::net::SocketAddr,
    db: &str,
    cert: &std::path::Path,
    key: &std::path::Path,
    hook: std::net::SocketAddr,
    new_keys: bool,
) -> String {
    let accounts = if new_keys {
        format!(
            "[[accounts]]\nname = \"acme\"\nsecret_key = \"{NEW_KEY}\"\nprevious_secret_keys = [\"{OLD_KEY}\"]\n\
             [[accounts]]\nname = \"beta\"\nsecret_key = \"{BETA_KEY}\"\n"
        )
    } else {
        format!("[[accounts]]\nname = \"acme\"\nsecret_key = \"{OLD_KEY}\"\n")
    };
    format!(
        "[server]\nlisten = \"{listen}\"\n[admin]\nlisten = \"{admin}\"\n\
         [tls]\nmode = \"files\"\ncert_path = \"{}\"\nkey_path = \"{}\"\n\
         [database]\nurl = \"{db}\"\n{accounts}\
         [[actions]]\nname = \"hook\"\nkind = \"webhook\"\nallow_private_targets = true\nurl = \"http://{hook}/hook\"\ntimeout_ms = 2000\n\
         [actions.when]\ntypes = [\"SALE\"]\n\
         [actions.retry]\nbackoff_ms = 200\n",
        cert.display(),
        key.display()
    )
}

/// A client that trusts both certificates and reports which one it was served.
fn client(certs: &[&[u8]]) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_info(true)
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10));
    for der in certs {
        b = b.add_root_certificate(reqwest::Certificate::from_der(der).unwrap());
    }
    b.build().unwrap()
}

async fn post(client: &reqwest::Client, url: &str, key: &str, receipt: &str) -> (u16, Vec<u8>) {
    let body = envelope(
        key,
        &plaintext(receipt, "SALE", "2026-11-20T10:00:00-08:00", 1),
    );
    let Ok(r) = client.post(url).body(body).send().await else {
        return (0, Vec::new());
    };
    let served = r
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|t| t.peer_certificate().map(<[u8]>::to_vec))
        .unwrap_or_default();
    (r.status().as_u16(), served)
}

async fn sighup_applies_keys_accounts_actions_and_certificates_live(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some((settings, _pg)) = TestApp::settings(backend, &dir).await else {
        return;
    };
    let db = settings.database.url.expose().to_owned();
    let (cert_a, key_a, der_a) = self_signed(dir.path(), "a");
    let (cert_b, key_b, der_b) = self_signed(dir.path(), "b");
    // The daemon reads fixed paths; replacing the certificate is writing new files there.
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::copy(&cert_a, &cert).unwrap();
    std::fs::copy(&key_a, &key).unwrap();
    let (first, second) = (
        Target::start("127.0.0.1:0".parse().unwrap()).await,
        Target::start("127.0.0.1:0".parse().unwrap()).await,
    );
    let (listen, admin) = (reserve_port(), reserve_port());
    let cfg = dir.path().join("kaching.toml");
    std::fs::write(
        &cfg,
        config(listen, admin, &db, &cert, &key, first.addr, false),
    )
    .unwrap();
    let log = dir.path().join("kaching.log");
    let daemon = Daemon(
        Command::new(env!("CARGO_BIN_EXE_kaching"))
            .args(["--config", cfg.to_str().unwrap(), "serve"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let client = client(&[&der_a, &der_b]);
    let ins = format!("https://localhost:{}/ins", listen.port());
    eventually(Duration::from_secs(20), "the daemon to answer", || async {
        client
            .get(format!("https://localhost:{}/healthz", listen.port()))
            .send()
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    let (status, served) = post(&client, &ins, OLD_KEY, "BEFORE01").await;
    assert_eq!((status, served == der_a), (200, true));
    let beta = format!("{ins}/beta");
    assert_eq!(post(&client, &beta, BETA_KEY, "BETA0000").await.0, 403);

    // A steady stream under the old key, which stays valid as a previous key.
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, refused) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let stream = {
        let (client, ins, stop, sent, refused) = (
            client.clone(),
            ins.clone(),
            stop.clone(),
            sent.clone(),
            refused.clone(),
        );
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let (status, _) = post(&client, &ins, OLD_KEY, &format!("STREAM{n:04}")).await;
                sent.fetch_add(1, Ordering::SeqCst);
                if status != 200 {
                    refused.fetch_add(1, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    // New key, new account, new action URL, new certificate: one SIGHUP.
    std::fs::copy(&cert_b, &cert).unwrap();
    std::fs::copy(&key_b, &key).unwrap();
    std::fs::write(
        &cfg,
        config(listen, admin, &db, &cert, &key, second.addr, true),
    )
    .unwrap();
    daemon.hup();
    eventually(
        Duration::from_secs(10),
        "the new account to be served",
        || async { (post(&client, &beta, BETA_KEY, "BETA0001").await.0 == 200).then_some(()) },
    )
    .await;
    // A client of its own: no TLS session to resume from before the reload.
    let fresh = self::client(&[&der_a, &der_b]);
    let (status, served) = post(&fresh, &ins, NEW_KEY, "AFTER001").await;
    assert_eq!(status, 200, "the new key");
    assert!(served == der_b, "a new connection gets the new certificate");
    eventually(
        Duration::from_secs(15),
        "a delivery to the new URL",
        || async {
            second
                .deliveries()
                .iter()
                .any(|d| d.json()["receipt"] == "AFTER001")
                .then_some(())
        },
    )
    .await;
    assert!(
        !first
            .deliveries()
            .iter()
            .any(|d| d.json()["receipt"] == "AFTER001"),
        "the old URL no longer gets deliveries"
    );

    // An invalid file is refused whole: the running configuration stays.
    std::fs::write(
        &cfg,
        config(listen, admin, &db, &cert, &key, second.addr, true).replace(NEW_KEY, "not a key!"),
    )
    .unwrap();
    daemon.hup();
    eventually(
        Duration::from_secs(10),
        "the refusal in the log",
        || async {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("reload: refused")
                .then_some(())
        },
    )
    .await;
    assert_eq!(post(&client, &ins, NEW_KEY, "AFTER002").await.0, 200);
    assert_eq!(post(&client, &beta, BETA_KEY, "BETA0002").await.0, 200);

    // Both reloads are counted.
    let metrics = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("kaching_config_reloads_total 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("kaching_config_reload_failures_total 1\n"),
        "{metrics}"
    );

    stop.store(true, Ordering::SeqCst);
    stream.await.unwrap();
    let (sent, refused) = (sent.load(Ordering::SeqCst), refused.load(Ordering::SeqCst));
    assert!(sent >= 10, "the stream sent {sent}");
    assert_eq!(
        refused, 0,
        "{refused} of {sent} posts in the stream were refused"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("accounts[0].secret_key"),
        "the log names the bad key"
    );
    drop(daemon);
}

on_both_backends!(sighup_applies_keys_accounts_actions_and_certificates_live);
