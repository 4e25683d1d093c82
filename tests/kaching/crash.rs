//! The daemon killed with SIGKILL while its webhook target is down: after a
//! restart every run completes, and no event is delivered under two ids.

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kaching::store::{RunStatus, Store};

use crate::on_both_backends;
use crate::support::{sale, Backend, TestApp, KEY};
use crate::target::{eventually, reserve_port, Target};

/// The real binary serving `cfg`, its log appended to `log`.
pub fn start_daemon(cfg: &std::path::Path, log: &std::path::Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_kaching"))
        .args(["--config", cfg.to_str().unwrap(), "serve"])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start kaching")
}

pub async fn wait_healthy(client: &reqwest::Client, base: &str) {
    eventually(
        Duration::from_secs(20),
        "the daemon to answer /healthz",
        || async {
            client
                .get(format!("{base}/healthz"))
                .send()
                .await
                .ok()
                .filter(|r| r.status() == 200)
                .map(|_| ())
        },
    )
    .await;
}

/// A daemon's configuration for a test that kills it: plain HTTP on a free
/// port, account `acme`, the database of `backend`, and `tail` (its actions
/// and alerts; `{target}` stands for the address reserved for a target).
pub struct Daemon {
    /// Holds the database file and the log; removed when dropped.
    _dir: tempfile::TempDir,
    pub settings: kaching::config::Settings,
    pub cfg: std::path::PathBuf,
    pub log: std::path::PathBuf,
    pub base: String,
    pub target: std::net::SocketAddr,
    _pg: Option<crate::support::PgDatabase>,
}

impl Daemon {
    pub async fn configure(backend: Backend, tail: &str) -> Option<Daemon> {
        let dir = tempfile::tempdir().unwrap();
        let (settings, pg) = TestApp::settings(backend, &dir).await?;
        let (listen, target) = (reserve_port(), reserve_port());
        let cfg = dir.path().join("kaching.toml");
        std::fs::write(
            &cfg,
            format!(
                "[server]\nlisten = \"{listen}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[tls]\nmode = \"off\"\n[database]\nurl = \"{}\"\n\
                 [privacy]\ndata_key_file = \"{}\"\n\
                 [[accounts]]\nname = \"acme\"\nsecret_key = \"{KEY}\"\n{}",
                settings.database.url.expose(),
                dir.path().join("kaching.key").display(),
                tail.replace("{target}", &target.to_string())
            ),
        )
        .unwrap();
        Some(Daemon {
            log: dir.path().join("kaching.log"),
            _dir: dir,
            settings,
            cfg,
            base: format!("http://{listen}"),
            target,
            _pg: pg,
        })
    }
}

async fn every_run_completes_after_a_sigkill(backend: Backend) {
    let Some(d) = Daemon::configure(
        backend,
        "[[actions]]\nname = \"crm\"\nkind = \"webhook\"\nallow_private_targets = true\nurl = \"http://{target}/hook\"\ntimeout_ms = 1000\n\
         [actions.retry]\nbackoff_ms = 200\n",
    )
    .await
    else {
        return;
    };
    let (settings, cfg, log, target_addr) = (&d.settings, &d.cfg, &d.log, d.target);
    let base = d.base.clone();
    let client = reqwest::Client::new();

    let mut daemon = start_daemon(cfg, log);
    wait_healthy(&client, &base).await;
    let n = 20;
    for i in 0..n {
        let r = client
            .post(format!("{base}/ins"))
            .body(sale(&format!("KILL{i:04}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let store = Store::connect(&settings.database).await.unwrap();
    eventually(Duration::from_secs(20), "failed first attempts", || async {
        let tried = store
            .list_runs(None, None, 100)
            .await
            .unwrap()
            .iter()
            // A run is created claimed (attempt 1) by the daemon that will
            // execute it: an error is what shows an attempt was made.
            .filter(|r| r.last_error.is_some())
            .count();
        (tried >= n / 2).then_some(())
    })
    .await;
    daemon.kill().unwrap(); // SIGKILL: no shutdown path runs
    daemon.wait().unwrap();

    let target = Target::start(target_addr).await;
    let mut daemon = start_daemon(cfg, log);
    wait_healthy(&client, &base).await;
    eventually(
        Duration::from_secs(30),
        "every run done after the restart",
        || async {
            (store
                .list_runs(Some(RunStatus::Done), None, 100)
                .await
                .unwrap()
                .len()
                == n)
                .then_some(())
        },
    )
    .await;
    daemon.kill().unwrap();
    daemon.wait().unwrap();

    let mut ids_by_receipt: HashMap<String, HashSet<String>> = HashMap::new();
    for d in target.deliveries() {
        let receipt = d.json()["receipt"].as_str().unwrap().to_owned();
        ids_by_receipt
            .entry(receipt)
            .or_default()
            .insert(d.header("webhook-id").to_owned());
    }
    assert_eq!(ids_by_receipt.len(), n, "every notification delivered");
    assert!(
        ids_by_receipt.values().all(|ids| ids.len() == 1),
        "one id per notification: {ids_by_receipt:?}"
    );
    store.close().await;
}

on_both_backends!(every_run_completes_after_a_sigkill);
