//! `GET /metrics` on the admin listener, read by an independent parser:
//! Python's `prometheus_client` (PyPI), the Prometheus org's own client.

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use kaching::config::{ActionSettings, RetrySettings};
use serde_json::Value;

use crate::on_both_backends;
use crate::support::{envelope, loud, plaintext, sale, Backend, TestApp, KEY, OTHER_KEY};
use crate::target::{eventually, reserve_port};

const WAIT: Duration = Duration::from_secs(15);
const TIME: &str = "2026-11-20T10:00:00-08:00";

/// Parses Prometheus text with `prometheus_client.parser`; prints each sample as JSON.
const PARSER: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        out.append({"family": family.name, "type": family.type,
                    "name": s.name, "labels": s.labels, "value": s.value})
json.dump(out, sys.stdout, allow_nan=False)
"#;

/// The samples of `text` as the independent parser reads them; `None`
/// (after saying so loudly) when python3 or the module is missing, except
/// under CI, where that is a failure.
fn parse(text: &str) -> Option<Vec<Value>> {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let missing = |why: String| {
        assert!(
            !ci,
            "the metrics test cannot run under CI: {why} (python3 -m pip install prometheus_client)"
        );
        loud(&format!(
            "SKIPPED a metrics check: {why}. Run `python3 -m pip install prometheus_client`."
        ));
        None
    };
    let probe = Command::new("python3")
        .args(["-c", "import prometheus_client"])
        .output();
    match probe {
        Err(e) => return missing(format!("cannot run python3: {e}")),
        Ok(o) if !o.status.success() => {
            return missing("python3 has no prometheus_client module".into())
        }
        Ok(_) => {}
    }
    let mut child = Command::new("python3")
        .args(["-c", PARSER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client cannot parse the scrape: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(serde_json::from_slice(&out.stdout).unwrap())
}

/// The value of the sample `name` with exactly `labels`, if there is one.
fn sample(samples: &[Value], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            let got = s["labels"].as_object().unwrap();
            s["name"] == name
                && got.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| got.get(*k) == Some(&Value::from(*v)))
        })
        .map(|s| s["value"].as_f64().unwrap())
}

fn family_type<'a>(samples: &'a [Value], family: &str) -> Option<&'a str> {
    samples
        .iter()
        .find(|s| s["family"] == family)
        .and_then(|s| s["type"].as_str())
}

/// Posts a known mix; the scrape shows exactly those counts, by account and
/// outcome, and no label value that came from a request.
async fn the_scrape_counts_a_known_mix_of_posts_by_account_and_outcome(backend: Backend) {
    let Some(app) = TestApp::spawn(backend, |_| {}).await else {
        return;
    };
    // 3 new for acme (on /ins, the account found by its key), 1 new for affil on its own path.
    app.post_accepted(
        &[
            ("MIX00001", "SALE"),
            ("MIX00002", "SALE"),
            ("MIX00003", "BILL"),
        ],
        TIME,
    )
    .await;
    let affil = envelope(OTHER_KEY, &plaintext("MIX00004", "SALE", TIME, 1));
    assert_eq!(app.post("/ins/affil", affil).await.status(), 200);
    // 2 duplicates: ClickBank's retries of the first two.
    for receipt in ["MIX00001", "MIX00002"] {
        let retry = envelope(KEY, &plaintext(receipt, "SALE", TIME, 2));
        assert_eq!(app.post_ins(retry).await.0, 200);
    }
    // 2 forged on /ins (no account known), 1 forged on /ins/acme.
    let forged = || envelope("WRONGKEY00000000", &plaintext("FORGED01", "SALE", TIME, 1));
    assert_eq!(app.post_ins(forged()).await.0, 403);
    assert_eq!(app.post_ins(forged()).await.0, 403);
    assert_eq!(app.post("/ins/acme", forged()).await.status(), 403);
    // 1 over-size, 1 to an account that does not exist, 1 garbage.
    let big = format!(
        "{{\"notification\":\"{}\",\"iv\":\"x\"}}",
        "A".repeat(70_000)
    );
    assert_eq!(app.post_ins(big).await.0, 413);
    assert_eq!(
        app.post("/ins/nosuch", sale("MIX00005")).await.status(),
        403
    );
    assert_eq!(app.post_ins("hello, world").await.0, 400);

    // The 4 refused posts are kept off the request path: wait for them.
    let text = eventually(WAIT, "the refused posts are kept", || async {
        let text = app.scrape().await;
        // 3 forged, 1 naming no account: each kept for `kaching rejected`.
        text.contains("kaching_rejected_posts_kept_total 4\n")
            .then_some(text)
    })
    .await;
    let Some(samples) = parse(&text) else {
        app.stop().await;
        return;
    };
    let n = "kaching_notifications_total";
    let mut expected = vec![
        (("acme", "accepted"), 3.0),
        (("affil", "accepted"), 1.0),
        (("acme", "duplicate"), 2.0),
        (("", "rejected"), 2.0),
        (("acme", "rejected"), 1.0),
        (("", "too-large"), 1.0),
        (("", "unknown-account"), 1.0),
        (("", "unrecognised"), 1.0),
    ];
    // Every other (account, outcome) pair exists, at 0.
    for account in ["", "acme", "affil"] {
        for outcome in kaching::metrics::notification_outcomes() {
            if !expected
                .iter()
                .any(|((a, o), _)| (*a, *o) == (account, outcome))
            {
                expected.push(((account, outcome), 0.0));
            }
        }
    }
    for ((account, outcome), count) in &expected {
        assert_eq!(
            sample(&samples, n, &[("account", account), ("outcome", outcome)]),
            Some(*count),
            "{n}{{account={account:?},outcome={outcome:?}}}"
        );
    }
    let series = samples.iter().filter(|s| s["name"] == n).count();
    assert_eq!(
        series,
        expected.len(),
        "no series beyond the configured accounts"
    );
    assert!(
        !text.contains("nosuch"),
        "a path segment became a label value"
    );
    assert_eq!(
        family_type(&samples, "kaching_notifications"),
        Some("counter")
    );

    // Every post was timed; 6 rows went through the writer (4 new, 2 copies).
    assert_eq!(
        sample(&samples, "kaching_ins_request_duration_seconds_count", &[]),
        Some(12.0)
    );
    assert_eq!(
        family_type(&samples, "kaching_ins_request_duration_seconds"),
        Some("histogram")
    );
    assert_eq!(
        sample(&samples, "kaching_store_commit_rows_sum", &[]),
        Some(6.0)
    );
    let commits = sample(&samples, "kaching_store_commit_duration_seconds_count", &[]).unwrap();
    assert!((1.0..=6.0).contains(&commits), "{commits} commits");
    assert_eq!(
        sample(&samples, "kaching_store_commit_rows_count", &[]),
        Some(commits)
    );
    assert_eq!(
        sample(&samples, "kaching_store_errors_total", &[]),
        Some(0.0)
    );
    assert_eq!(
        sample(&samples, "kaching_rejected_posts_kept_total", &[]),
        Some(4.0)
    );
    assert_eq!(
        sample(&samples, "kaching_rejected_posts_dropped_total", &[]),
        Some(0.0)
    );
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        sample(&samples, "kaching_build_info", &[("version", version)]),
        Some(1.0)
    );
    assert_eq!(
        sample(&samples, "kaching_config_reloads_total", &[]),
        Some(0.0)
    );
    assert_eq!(
        sample(&samples, "kaching_config_reload_failures_total", &[]),
        Some(0.0)
    );
    app.stop().await;
}

/// A `log` action that succeeds and a webhook whose target is down: runs
/// counted by outcome, the webhook's run pending in the outbox gauges.
async fn action_runs_are_counted_by_action_and_outcome(backend: Backend) {
    let down = reserve_port(); // nothing listens there
    let Some(app) = TestApp::spawn(backend, |s| {
        s.actions.push(ActionSettings {
            name: "log".into(),
            kind: "log".into(),
            ..Default::default()
        });
        s.actions.push(ActionSettings {
            name: "hook".into(),
            kind: "webhook".into(),
            url: Some(format!("http://{down}/hook")),
            allow_private_targets: true,
            timeout_ms: 1_000,
            retry: RetrySettings {
                backoff_ms: 600_000,
                ..Default::default()
            },
            ..Default::default()
        });
    })
    .await
    else {
        return;
    };
    app.post_accepted(&[("RUNS0001", "SALE"), ("RUNS0002", "SALE")], TIME)
        .await;
    let text = eventually(WAIT, "both actions ran twice", || async {
        let text = app.scrape().await;
        (text.contains(r#"kaching_action_runs_total{action="log",outcome="done"} 2"#)
            && text.contains(r#"kaching_action_runs_total{action="hook",outcome="retry"} 2"#))
        .then_some(text)
    })
    .await;
    let Some(samples) = parse(&text) else {
        app.stop().await;
        return;
    };
    let runs = "kaching_action_runs_total";
    for (action, outcome, count) in [
        ("log", "done", 2.0),
        ("log", "retry", 0.0),
        ("log", "failed", 0.0),
        ("hook", "done", 0.0),
        ("hook", "retry", 2.0),
        ("hook", "failed", 0.0),
    ] {
        assert_eq!(
            sample(&samples, runs, &[("action", action), ("outcome", outcome)]),
            Some(count),
            "{runs}{{action={action:?},outcome={outcome:?}}}"
        );
    }
    let pending = "kaching_outbox_pending_runs";
    assert_eq!(family_type(&samples, pending), Some("gauge"));
    assert_eq!(sample(&samples, pending, &[("action", "log")]), Some(0.0));
    let age = "kaching_outbox_oldest_pending_age_seconds";
    assert_eq!(sample(&samples, age, &[("action", "log")]), Some(0.0));
    // The webhook's runs wait for their retry (due in 10 minutes); once the
    // outcome is recorded they are pending again, and growing older.
    let text = eventually(WAIT, "the webhook's runs are pending", || async {
        let text = app.scrape().await;
        text.contains(r#"kaching_outbox_pending_runs{action="hook"} 2"#)
            .then_some(text)
    })
    .await;
    let samples = parse(&text).unwrap();
    let oldest = sample(&samples, age, &[("action", "hook")]).unwrap();
    assert!((0.0..60.0).contains(&oldest), "{oldest}");
    app.stop().await;
}

on_both_backends!(
    the_scrape_counts_a_known_mix_of_posts_by_account_and_outcome,
    action_runs_are_counted_by_action_and_outcome,
);

/// Nothing operational on the INS listener, no INS on the admin listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_and_ins_listeners_serve_apart() {
    let Some(app) = TestApp::spawn(Backend::Sqlite, |_| {}).await else {
        return;
    };
    let get = |url: String| {
        let client = app.client.clone();
        async move { client.get(url).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(get(format!("{}/metrics", app.base)).await, 404);
    assert_eq!(get(format!("{}/healthz", app.base)).await, 200);
    assert_eq!(get(format!("{}/metrics", app.admin())).await, 200);
    assert_eq!(get(format!("{}/healthz", app.admin())).await, 404);
    let r = app
        .client
        .post(format!("{}/ins", app.admin()))
        .body(sale("APART001"))
        .send()
        .await
        .unwrap();
    assert!(matches!(r.status().as_u16(), 404 | 405), "{}", r.status());
    assert!(app.rows().await.is_empty());
    let r = app
        .client
        .get(format!("{}/metrics", app.admin()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    app.stop().await;
}

/// With a token configured, even on loopback, every admin request needs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_admin_token_is_required() {
    let secrets = tempfile::tempdir().unwrap();
    let token_file = secrets.path().join("admin-token");
    let token = "t0ken-for-the-admin-listener";
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let Some(app) = TestApp::spawn(Backend::Sqlite, |s| {
        s.admin.token_file = Some(token_file.clone());
    })
    .await
    else {
        return;
    };
    let url = format!("{}/metrics", app.admin());
    let status = |auth: Option<String>| {
        let mut r = app.client.get(&url);
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        async move { r.send().await.unwrap() }
    };
    let none = status(None).await;
    assert_eq!(none.status(), 401);
    assert_eq!(none.headers()["www-authenticate"], "Bearer");
    assert_eq!(status(Some("Bearer nope".into())).await.status(), 401);
    assert_eq!(status(Some(format!("Bearer {token}x"))).await.status(), 401);
    assert_eq!(status(Some(format!("Basic {token}"))).await.status(), 401);
    let ok = status(Some(format!("Bearer {token}"))).await;
    assert_eq!(ok.status(), 200);
    assert!(ok.text().await.unwrap().contains("kaching_build_info"));
    app.stop().await;
}
