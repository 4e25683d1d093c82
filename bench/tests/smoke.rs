#![allow(clippy::unwrap_used)] // tests: a panic is the failure report
//! A small run of the load benchmark against the real server: no timing
//! assertions (the machines are shared), only correctness: every genuine post
//! acknowledged and stored exactly once, retries counted, forged ones refused,
//! no 5xx. The server runs in-process (kaching::app::App), started by the
//! daemon's own integration-test harness; the generator is this crate's binary.
//! `TEST_LOG=1` shows the server's logs.

use std::process::Command;

use support::{Backend, TestApp, KEY};

// The daemon's harness, shared rather than copied; this test uses only a part of it.
#[allow(dead_code)]
#[path = "../../tests/kaching/support.rs"]
mod support;

async fn the_benchmark_smoke_run_is_exactly_once(backend: Backend) {
    let Some(app) = TestApp::spawn(backend, |s| {
        s.actions.push(kaching::config::ActionSettings {
            name: "log".into(),
            kind: "log".into(),
            ..Default::default()
        });
    })
    .await
    else {
        return;
    };
    let cert = app.settings.tls.self_signed_dir.join("cert.pem");
    let (url, db) = (
        format!("{}/ins", app.base),
        app.settings.database.url.expose().to_owned(),
    );
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_kaching-bench"))
            .args(["--url", &url, "--secret-key", KEY, "--database-url", &db])
            .args(["--ca-cert", cert.to_str().unwrap(), "--warmup", "0"])
            .args([
                "-n",
                "400",
                "-c",
                "16",
                "--duplicates",
                "0.1",
                "--forged",
                "0.05",
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("verify: OK"), "{stdout}");
    app.stop().await;
}

on_both_backends!(the_benchmark_smoke_run_is_exactly_once);
