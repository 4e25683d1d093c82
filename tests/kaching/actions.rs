//! Follow-up actions against real parts: a real HTTP endpoint for webhooks,
//! real processes for commands, the real daemon killed with SIGKILL.

use std::time::Duration;

use base64::Engine as _;
use hmac::Mac as _;
use kaching::config::{ActionSettings, RetrySettings, WhenSettings};
use kaching::store::RunStatus;
use secrecy::SecretString;

use crate::on_both_backends;
use crate::support::{envelope, plaintext, sale, Backend, TestApp, KEY};
use crate::target::{eventually, reserve_port, Target};

const SECRET_B64: &str = "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const WAIT: Duration = Duration::from_secs(15);

pub fn webhook(name: &str, url: &str) -> ActionSettings {
    ActionSettings {
        name: name.into(),
        kind: "webhook".into(),
        url: Some(url.into()),
        // The test targets listen on loopback.
        allow_private_targets: true,
        timeout_ms: 2_000,
        retry: RetrySettings {
            backoff_ms: 200,
            ..Default::default()
        },
        ..Default::default()
    }
}

/// The Standard Webhooks check, written from the spec, independently of kaching's code.
fn verify_standard_webhook(
    secret: &str,
    id: &str,
    timestamp: &str,
    body: &[u8],
    header: &str,
) -> bool {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    header
        .split(' ')
        .any(|sig| sig.strip_prefix("v1,") == Some(expected.as_str()))
}

async fn runs(app: &TestApp, status: Option<RunStatus>) -> Vec<kaching::store::RunRow> {
    app.store.list_runs(status, None, 1000).await.unwrap()
}

async fn a_sale_is_forwarded_signed_with_a_stable_id(backend: Backend) {
    let target = Target::start("127.0.0.1:0".parse().unwrap()).await;
    let secret = format!("whsec_{SECRET_B64}");
    let Some(app) = TestApp::spawn(backend, |s| {
        let mut hook = webhook("crm", &target.url());
        hook.secret = Some(SecretString::from(secret.clone()));
        hook.headers.insert("X-Api-Key".into(), "k-123".into());
        s.actions.push(hook);
    })
    .await
    else {
        return;
    };
    let pt = plaintext("HOOK0001", "SALE", "2026-11-20T10:00:00-08:00", 1);
    assert_eq!(app.post_ins(envelope(KEY, &pt)).await.0, 200);
    // A retry of the same notification is a duplicate: no second run.
    assert_eq!(
        app.post_ins(envelope(
            KEY,
            &plaintext("HOOK0001", "SALE", "2026-11-20T10:00:00-08:00", 2)
        ))
        .await
        .0,
        200
    );

    let got = target.wait_for(1, WAIT).await;
    assert_eq!(got.len(), 1);
    let d = &got[0];
    assert_eq!(d.header("content-type"), "application/json");
    assert_eq!(d.header("x-api-key"), "k-123");
    let id = d.header("webhook-id");
    assert!(id.starts_with("evt_") && id.len() == 36, "{id}");
    let ts = d.header("webhook-timestamp");
    let age = chrono::Utc::now().timestamp() - ts.parse::<i64>().unwrap();
    assert!((0..60).contains(&age));
    assert!(verify_standard_webhook(
        &secret,
        id,
        ts,
        &d.body,
        d.header("webhook-signature")
    ));
    assert!(!verify_standard_webhook(
        "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        id,
        ts,
        &d.body,
        d.header("webhook-signature")
    ));

    let e = d.json();
    assert_eq!(e["id"], id);
    assert_eq!(e["type"], "SALE");
    assert_eq!(e["test"], false);
    assert_eq!(e["account"], "acme");
    assert_eq!(e["receipt"], "HOOK0001");
    assert_eq!(e["role"], "VENDOR");
    assert_eq!(e["transaction_time"], "2026-11-20T18:00:00Z");
    assert_eq!(e["amounts"]["account"], "37.00");
    assert_eq!(e["amounts"]["order"], "47.00");
    assert_eq!(e["currency"], "USD");
    assert_eq!(e["line_items"][0]["itemNo"], "1");
    assert_eq!(e["customer"]["billing"]["fullName"], "Zoë Ångström");
    assert_eq!(e["notification"]["attemptCount"], 1);

    let done = eventually(WAIT, "the run to be done", || async {
        let r = runs(&app, Some(RunStatus::Done)).await;
        (!r.is_empty()).then_some(r)
    })
    .await;
    assert_eq!((done.len(), done[0].attempts), (1, 1));
    assert_eq!(runs(&app, None).await.len(), 1, "the duplicate made no run");
    app.stop().await;
}

async fn customer_data_is_left_out_when_asked(backend: Backend) {
    let target = Target::start("127.0.0.1:0".parse().unwrap()).await;
    let Some(app) = TestApp::spawn(backend, |s| {
        let mut hook = webhook("slack", &target.url());
        hook.include_customer = Some(false);
        s.actions.push(hook);
    })
    .await
    else {
        return;
    };
    assert_eq!(app.post_ins(sale("PRIV0001")).await.0, 200);
    let got = target.wait_for(1, WAIT).await;
    let body = String::from_utf8(got[0].body.to_vec()).unwrap();
    assert!(!body.contains("customer"), "{body}");
    assert!(
        !body.contains("zoe@example.com") && !body.contains("Zoë"),
        "{body}"
    );
    assert_eq!(got[0].json()["receipt"], "PRIV0001");
    app.stop().await;
}

async fn a_target_that_is_down_then_up_gets_the_delivery(backend: Backend) {
    let addr = reserve_port();
    let url = format!("http://{addr}/hook");
    let Some(app) = TestApp::spawn(backend, |s| s.actions.push(webhook("later", &url))).await
    else {
        return;
    };
    assert_eq!(app.post_ins(sale("DOWNUP01")).await.0, 200);
    // Refused connections are retried: the run goes back to pending with the error.
    let pending = eventually(WAIT, "a failed first attempt", || async {
        runs(&app, Some(RunStatus::Pending))
            .await
            .into_iter()
            .find(|r| r.attempts >= 1 && r.last_error.is_some())
    })
    .await;
    assert!(
        pending.last_error.unwrap().contains("connection"),
        "the error says why"
    );
    let target = Target::start(addr).await;
    target.answer(503, None);
    target.wait_for(1, WAIT).await;
    target.answer(200, None);
    eventually(WAIT, "delivery after recovery", || async {
        (!runs(&app, Some(RunStatus::Done)).await.is_empty()).then_some(())
    })
    .await;
    let ids: Vec<String> = target
        .deliveries()
        .iter()
        .map(|d| d.header("webhook-id").to_owned())
        .collect();
    assert!(
        ids.len() >= 2 && ids.iter().all(|i| *i == ids[0]),
        "one id for every attempt: {ids:?}"
    );
    app.stop().await;
}

async fn a_4xx_fails_at_once_and_can_be_retried_by_hand(backend: Backend) {
    let target = Target::start("127.0.0.1:0".parse().unwrap()).await;
    target.answer(404, None);
    let Some(app) =
        TestApp::spawn(backend, |s| s.actions.push(webhook("gone", &target.url()))).await
    else {
        return;
    };
    assert_eq!(app.post_ins(sale("GONE0001")).await.0, 200);
    let failed = eventually(WAIT, "the dead letter", || async {
        runs(&app, Some(RunStatus::Failed)).await.into_iter().next()
    })
    .await;
    assert_eq!(failed.attempts, 1, "no retry after a 404");
    assert!(failed.last_error.unwrap().contains("404"));
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(target.deliveries().len(), 1);

    target.answer(200, None);
    assert_eq!(
        app.store
            .retry_failed(Some("gone"), chrono::Utc::now())
            .await
            .unwrap(),
        1
    );
    eventually(WAIT, "the retried run", || async {
        (!runs(&app, Some(RunStatus::Done)).await.is_empty()).then_some(())
    })
    .await;
    assert_eq!(target.deliveries().len(), 2);
    app.stop().await;
}

async fn retry_after_is_honoured(backend: Backend) {
    let target = Target::start("127.0.0.1:0".parse().unwrap()).await;
    target.answer(429, Some("2"));
    let Some(app) =
        TestApp::spawn(backend, |s| s.actions.push(webhook("busy", &target.url()))).await
    else {
        return;
    };
    assert_eq!(app.post_ins(sale("BUSY0001")).await.0, 200);
    let first = target.wait_for(1, WAIT).await[0].at;
    target.answer(200, None);
    let got = target.wait_for(2, WAIT).await;
    assert_eq!(got.len(), 2);
    let waited = got[1].at - first;
    assert!(
        waited >= Duration::from_millis(1900),
        "waited only {waited:?} despite Retry-After: 2"
    );
    app.stop().await;
}

async fn filters_decide_which_notifications_get_runs(backend: Backend) {
    let target = Target::start("127.0.0.1:0".parse().unwrap()).await;
    let Some(app) = TestApp::spawn(backend, |s| {
        let mut hook = webhook("big-sales", &target.url());
        hook.when = WhenSettings {
            types: vec!["SALE".into()],
            min_amount: Some("30.00".into()),
            ..Default::default()
        };
        s.actions.push(hook);
        s.actions.push(ActionSettings {
            name: "everything".into(),
            kind: "log".into(),
            ..Default::default()
        });
    })
    .await
    else {
        return;
    };
    let t = "2026-11-20T10:00:00Z";
    app.post_accepted(
        &[
            ("FILT0001", "SALE"),
            ("FILT0002", "RFND"),
            ("********", "TEST"),
        ],
        t,
    )
    .await;
    let mut made: Vec<(String, String)> = runs(&app, None)
        .await
        .into_iter()
        .map(|r| (r.action, r.receipt.unwrap_or_default()))
        .collect();
    made.sort();
    let want = [
        ("big-sales", "FILT0001"),
        ("everything", "FILT0001"),
        ("everything", "FILT0002"),
    ];
    assert_eq!(
        made,
        want.map(|(a, r)| (a.to_owned(), r.to_owned())),
        "TEST gets nothing by default"
    );
    app.stop().await;
}

fn command(name: &str, script: &str, timeout_ms: u64) -> ActionSettings {
    ActionSettings {
        name: name.into(),
        kind: "command".into(),
        program: Some("sh".into()),
        args: vec!["-c".into(), script.into()],
        timeout_ms,
        retry: RetrySettings {
            backoff_ms: 100,
            ..Default::default()
        },
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_gets_the_event_on_stdin_and_its_environment() {
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("event.json");
    let script = format!(
        "cat > {0} && echo \"$KACHING_TYPE $KACHING_RECEIPT $KACHING_ACCOUNT $KACHING_AMOUNT\" > {0}.env",
        file.display()
    );
    let Some(app) = TestApp::spawn(Backend::Sqlite, |s| {
        s.actions.push(command("ding", &script, 5_000))
    })
    .await
    else {
        return;
    };
    assert_eq!(app.post_ins(sale("CMD00001")).await.0, 200);
    eventually(WAIT, "the command's run", || async {
        (!runs(&app, Some(RunStatus::Done)).await.is_empty()).then_some(())
    })
    .await;
    let event: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(event["receipt"], "CMD00001");
    let env = std::fs::read_to_string(format!("{}.env", file.display())).unwrap();
    assert_eq!(env.trim(), "SALE CMD00001 acme 37.00");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_command_is_retried_and_a_slow_one_killed() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("tried");
    // Fails the first time (and says why on stderr), succeeds the second.
    let flaky = format!(
        "if [ -e {0} ]; then exit 0; else touch {0}; echo 'speaker busy' >&2; exit 3; fi",
        marker.display()
    );
    let pidfile = dir.path().join("slow.pid");
    let childfile = dir.path().join("child.pid");
    // A script with a child of its own: the timeout kills both.
    let slow = format!(
        "sleep 30 & echo $! > {}; echo $$ > {}; wait",
        childfile.display(),
        pidfile.display()
    );
    let Some(app) = TestApp::spawn(Backend::Sqlite, |s| {
        s.actions.push(command("flaky", &flaky, 5_000));
        let mut slow = command("slow", &slow, 300);
        slow.retry.max_attempts = 1;
        s.actions.push(slow);
    })
    .await
    else {
        return;
    };
    assert_eq!(app.post_ins(sale("CMD00002")).await.0, 200);
    let done = eventually(WAIT, "the flaky command to succeed", || async {
        runs(&app, Some(RunStatus::Done))
            .await
            .into_iter()
            .find(|r| r.action == "flaky")
    })
    .await;
    assert_eq!(done.attempts, 2);
    assert!(
        done.last_error.unwrap().contains("speaker busy"),
        "the first failure's stderr is kept"
    );

    let failed = eventually(WAIT, "the slow command to be killed", || async {
        runs(&app, Some(RunStatus::Failed))
            .await
            .into_iter()
            .find(|r| r.action == "slow")
    })
    .await;
    assert!(failed.last_error.unwrap().contains("killed after"));
    for file in [&pidfile, &childfile] {
        let pid = std::fs::read_to_string(file).unwrap();
        // Gone, or a zombie waiting for init to reap it: not running either way.
        let running = || {
            std::fs::read_to_string(format!("/proc/{}/stat", pid.trim()))
                .is_ok_and(|stat| stat.split_whitespace().nth(2).is_none_or(|s| s != "Z"))
        };
        eventually(
            Duration::from_secs(5),
            "the killed process to be gone",
            || async { (!running()).then_some(()) },
        )
        .await;
    }
    app.stop().await;
}

async fn replay_creates_runs_for_stored_notifications(backend: Backend) {
    let target = Target::start("127.0.0.1:0".parse().unwrap()).await;
    let Some(app) = TestApp::spawn(backend, |_| {}).await else {
        return;
    };
    let t = "2026-11-20T10:00:00Z";
    app.post_accepted(
        &[
            ("REPL0001", "SALE"),
            ("REPL0002", "SALE"),
            ("REPL0003", "RFND"),
        ],
        t,
    )
    .await;
    // The action is added afterwards, then replayed by a user with the CLI.
    let (dir, url, key) = (
        app.dir.path().to_owned(),
        app.settings.database.url.expose().to_owned(),
        crate::cli::key_file(&app),
    );
    let app = app.stop().await;
    let cfg = dir.join("replay.toml");
    std::fs::write(
        &cfg,
        format!(
            "[database]\nurl = \"{url}\"\n[privacy]\ndata_key_file = \"{}\"\n\
             [[accounts]]\nname = \"acme\"\nsecret_key = \"{KEY}\"\n\
             [[actions]]\nname = \"crm\"\nkind = \"webhook\"\nallow_private_targets = true\nurl = \"{}\"\n[actions.when]\ntypes = [\"SALE\"]\n",
            key.display(),
            target.url()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kaching"))
        .args([
            "--config",
            cfg.to_str().unwrap(),
            "replay",
            "--action",
            "crm",
            "--since",
            "2026-11-01",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "created 2 runs of `crm` (1 notifications in range did not match its filter)"
    );
    // The daemon, restarted with the action, delivers them.
    let mut settings = TestApp::settings(Backend::Sqlite, &tempfile::tempdir().unwrap())
        .await
        .unwrap()
        .0;
    settings.database.url = app.settings.database.url.clone();
    settings.privacy = app.settings.privacy.clone();
    settings.tls.self_signed_dir = dir.join("tls");
    settings.actions.push(webhook("crm", &target.url()));
    let app = TestApp::start(settings, app.dir, app.pg).await;
    let got = target.wait_for(2, WAIT).await;
    let mut receipts: Vec<String> = got
        .iter()
        .map(|d| d.json()["receipt"].as_str().unwrap().to_owned())
        .collect();
    receipts.sort();
    assert_eq!(receipts, ["REPL0001", "REPL0002"]);
    app.stop().await;
}

on_both_backends!(
    a_sale_is_forwarded_signed_with_a_stable_id,
    customer_data_is_left_out_when_asked,
    a_target_that_is_down_then_up_gets_the_delivery,
    a_4xx_fails_at_once_and_can_be_retried_by_hand,
    retry_after_is_honoured,
    filters_decide_which_notifications_get_runs,
    replay_creates_runs_for_stored_notifications,
);

/// Several daemons on one Postgres database: each run is executed by one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_on_one_postgres_execute_every_run_once() {
    let target = Target::start("127.0.0.1:0".parse().unwrap()).await;
    let Some(first) = TestApp::spawn(Backend::Postgres, |s| {
        s.actions.push(webhook("crm", &target.url()))
    })
    .await
    else {
        return;
    };
    let mut settings = TestApp::settings(Backend::Sqlite, &tempfile::tempdir().unwrap())
        .await
        .unwrap()
        .0;
    settings.database.url = first.settings.database.url.clone();
    settings.privacy = first.settings.privacy.clone();
    settings.tls.self_signed_dir = first.dir.path().join("tls2");
    settings.actions.push(webhook("crm", &target.url()));
    let second = TestApp::start(settings, tempfile::tempdir().unwrap(), None).await;
    let n = 60;
    for i in 0..n {
        let app = if i % 2 == 0 { &first } else { &second };
        assert_eq!(app.post_ins(sale(&format!("TWO{i:05}"))).await.0, 200);
    }
    eventually(WAIT, "every run done", || async {
        (runs(&first, Some(RunStatus::Done)).await.len() == n).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await; // let any double execution show
    let mut ids: Vec<String> = target
        .deliveries()
        .iter()
        .map(|d| d.header("webhook-id").to_owned())
        .collect();
    ids.sort();
    let total = ids.len();
    ids.dedup();
    assert_eq!(
        (total, ids.len()),
        (n, n),
        "each of {n} events delivered exactly once"
    );
    second.stop().await;
    first.stop().await;
}
