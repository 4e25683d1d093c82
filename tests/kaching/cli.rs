//! The `kaching` binary's subcommands, run as a user runs them.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use crate::on_both_backends;
use crate::support::{account, sale, Backend, TestApp, KEY};

fn kaching(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kaching"))
        .args(args)
        .env_remove("KACHING_CONFIG")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kaching");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().expect("kaching exits")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn check_config_prints_the_default_config_with_secrets_redacted() {
    let out = kaching(&["check-config"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let printed = text(&out.stdout);
    assert!(printed.contains("name = \"demo\""));
    assert!(printed.contains("[redacted]"));
    assert!(
        !printed.contains(kaching::config::DEMO_SECRET_KEY),
        "the key is never printed"
    );
}

const ACCT: &str = "[[accounts]]\nname = \"a\"\nsecret_key = \"K\"\n";

#[test]
fn check_config_names_the_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[tls]\nmode = \"files\"\ncert_path = \"/nonexistent.pem\"\n[[accounts]]\nname = \"a\"\nsecret_key = \"K\"\n", "tls.key_path"),
        ("[server]\nlisten = \"0.0.0.0:8443\"\n[[accounts]]\nname = \"demo\"\nsecret_key = \"KACHINGDEMOKEY01\"\n", "accounts[0].secret_key"),
        ("[[accounts]]\nname = \"a\"\nsecret_key_env = \"KACHING_TEST_UNSET_VARIABLE\"\n", "accounts[0].secret_key_env"),
        ("[[accounts]]\nname = \"a\"\nsecret_key = \"K\"\nsecret_key_file = \"/k\"\n", "accounts[0].secret_key"),
        ("[security]\nallowed_ips = [\"not-an-ip\"]\n[[accounts]]\nname = \"a\"\nsecret_key = \"K\"\n", "not-an-ip"),
        ("[server]\nlisen = \"x\"\n", "lisen"),
        (&format!("[admin]\nlisten = \"0.0.0.0:9090\"\n{ACCT}"), "admin.token_env"),
        ("[database]\nurl = \"mysql://x\"\n[[accounts]]\nname = \"a\"\nsecret_key = \"K\"\n", "database.url"),
        ("", "accounts"),
        (&format!("{ACCT}[[actions]]\nname = \"a\"\nkind = \"carrier-pigeon\"\n"), "actions[0].kind"),
        (&format!("{ACCT}[[actions]]\nname = \"a\"\nkind = \"webhook\"\nurl = \"not a url\"\n"), "actions[0].url"),
        (&format!("{ACCT}[[actions]]\nname = \"a\"\nkind = \"command\"\nprogram = \"/no/such/program\"\n"), "actions[0].program"),
        (&format!("{ACCT}[[actions]]\nname = \"a\"\nkind = \"log\"\nurl = \"http://x\"\n"), "actions[0].url"),
        (&format!("{ACCT}[[actions]]\nname = \"a\"\nkind = \"log\"\n[[actions]]\nname = \"a\"\nkind = \"log\"\n"), "actions[1].name"),
        (&format!("{ACCT}[[actions]]\nname = \"a\"\nkind = \"webhook\"\nurl = \"http://x\"\nsecret = \"nope\"\n"), "actions[0].secret"),
    ];
    for (toml, key) in cases.iter().map(|(t, k)| (t.to_string(), *k)) {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, &toml).unwrap();
        let out = kaching(&["--config", path.to_str().unwrap(), "check-config"], None);
        assert_eq!(out.status.code(), Some(1), "for {toml}");
        let err = text(&out.stderr);
        assert!(
            err.contains(key),
            "error for {toml:?} should name {key}: {err}"
        );
    }
}

#[test]
fn encrypt_then_decrypt_round_trips_and_decrypt_reads_a_real_capture() {
    let pt = r#"{"transactionTime":"2026-11-20T10:00:00-08:00","receipt":"CLI00001","transactionType":"SALE"}"#;
    let enc = kaching(&["encrypt", "--secret-key", KEY], Some(pt));
    assert!(enc.status.success(), "{}", text(&enc.stderr));
    let body = text(&enc.stdout);
    assert!(body.starts_with("{\"notification\":\""), "{body}");
    let dec = kaching(&["decrypt", "--secret-key", KEY, "-"], Some(&body));
    assert!(dec.status.success(), "{}", text(&dec.stderr));
    assert_eq!(text(&dec.stdout).trim_end(), pt);

    let vector: serde_json::Value =
        serde_json::from_str(include_str!("../fixtures/v7_test_button.json")).unwrap();
    let dec = kaching(
        &["decrypt", "--secret-key", "01GA50AY4BYGZKG6"],
        Some(vector["http_body"].as_str().unwrap()),
    );
    assert_eq!(
        text(&dec.stdout).trim_end(),
        vector["expected"]["plaintext"].as_str().unwrap()
    );
    let wrong = kaching(
        &["decrypt", "--secret-key", "WRONG"],
        Some(vector["http_body"].as_str().unwrap()),
    );
    assert_eq!(wrong.status.code(), Some(1));
}

/// A config file for the same database as `app`, with `acme`'s key set to `key`.
/// The app's data key file: the CLI must seal and open with the same key.
pub fn key_file(app: &TestApp) -> std::path::PathBuf {
    app.settings
        .privacy
        .data_key_file
        .clone()
        .expect("tests set a key file")
}

fn config_file(app: &TestApp, key: &str) -> std::path::PathBuf {
    let path = app.dir.path().join("kaching.toml");
    let toml = format!(
        "[database]\nurl = \"{}\"\n[privacy]\ndata_key_file = \"{}\"\n\
         [[accounts]]\nname = \"acme\"\nsecret_key = \"{key}\"\n",
        app.settings.database.url.expose(),
        key_file(app).display()
    );
    std::fs::write(&path, toml).unwrap();
    path
}

async fn rejected_posts_are_kept_and_reprocessed_once_the_key_is_fixed(backend: Backend) {
    // The user pasted the wrong key.
    let Some(app) = TestApp::spawn(backend, |s| {
        s.accounts = vec![account("acme", "PASTEDWRONGKEY00")]
    })
    .await
    else {
        return;
    };
    assert_eq!(app.post_ins(sale("REPRO001")).await.0, 403);
    assert_eq!(app.post("/ins/acme", sale("REPRO002")).await.status(), 403);
    assert!(app.rows().await.is_empty());
    // Rejected posts are kept off the request path: wait for them.
    crate::target::eventually(
        std::time::Duration::from_secs(10),
        "two kept posts",
        || async { (app.store.rejected_after(0, 10).await.unwrap().len() == 2).then_some(()) },
    )
    .await;

    let cfg = config_file(&app, KEY);
    let cfg = cfg.to_str().unwrap();
    let list = kaching(&["--config", cfg, "rejected", "list"], None);
    assert!(list.status.success(), "{}", text(&list.stderr));
    let listed = text(&list.stdout);
    assert_eq!(listed.lines().count(), 3, "a header and two rows: {listed}");
    assert!(listed.contains("padding"), "the reason is listed: {listed}");

    let out = kaching(&["--config", cfg, "rejected", "reprocess"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout).trim(),
        "stored 2, already stored 0, still rejected 0"
    );
    let mut receipts: Vec<String> = app
        .rows()
        .await
        .into_iter()
        .map(|r| r.notification.receipt.to_string())
        .collect();
    receipts.sort();
    assert_eq!(receipts, ["REPRO001", "REPRO002"]);
    assert!(app.store.rejected_after(0, 10).await.unwrap().is_empty());

    let list = kaching(&["--config", cfg, "notifications"], None);
    assert!(text(&list.stdout).contains("REPRO001"));
    app.stop().await;
}

on_both_backends!(rejected_posts_are_kept_and_reprocessed_once_the_key_is_fixed);
