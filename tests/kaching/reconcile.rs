//! Reconciliation against a stand-in of ClickBank's Orders API
//! ([`crate::orders_api`]) and the real daemon: the orders no post brought
//! are recovered exactly once, with their actions' runs; a dry run changes
//! nothing; a second run adds nothing; a late INS copy is a duplicate.

use std::time::Duration;

use chrono::{DateTime, Utc};
use kaching::config::{ActionSettings, ReconcileSettings};
use kaching::ins::BodyForm;

use crate::actions::webhook;
use crate::orders_api::{self, Order, OrdersApi};
use crate::support::{envelope, plaintext, Backend, TestApp, KEY};
use crate::target::{eventually, Target};

fn reconcile_block(api: &OrdersApi, key_var: &str, per_second: f64) -> ReconcileSettings {
    ReconcileSettings {
        api_key_env: Some(key_var.into()),
        api_url: api.url(),
        requests_per_second: per_second,
        ..Default::default()
    }
}

/// Sales over the last 6 days (150 of them on one day, for paging), a
/// rebill, refunds, a chargeback; from 10:00 at ClickBank (US Pacific) on.
fn history(now: DateTime<Utc>) -> Vec<Order> {
    use chrono::TimeZone as _;
    let mut orders = Vec::new();
    let at = |days: u64, minutes: i64| {
        let day = orders_api::day(now) - chrono::Days::new(days);
        let ten = chrono_tz::America::Los_Angeles
            .from_local_datetime(&day.and_hms_opt(10, 0, 0).unwrap())
            .earliest()
            .unwrap()
            .with_timezone(&Utc);
        ten + chrono::Duration::minutes(minutes)
    };
    for i in 0..150 {
        orders.push(Order {
            receipt: format!("PG{i:06}"),
            kind: "SALE",
            time: at(3, i),
            amount: "47.00",
            cart: i % 10 == 0,
        });
    }
    for d in [1, 2, 4, 5, 6] {
        for i in 0..4 {
            orders.push(Order {
                receipt: format!("D{d}{i:06}"),
                kind: "SALE",
                time: at(d, 60 + 7 * i),
                amount: "37.00",
                cart: false,
            });
        }
    }
    orders.push(Order {
        receipt: "D1000000-B002".into(),
        kind: "BILL",
        time: at(1, 30),
        amount: "19.00",
        cart: false,
    });
    for (receipt, days) in [("D2000001", 1), ("PG000007", 2)] {
        orders.push(Order {
            receipt: receipt.into(),
            kind: "RFND",
            time: at(days, 10),
            amount: "-47.00",
            cart: false,
        });
    }
    orders.push(Order {
        receipt: "D4000002".into(),
        kind: "CGBK",
        time: at(2, 90),
        amount: "-37.00",
        cart: false,
    });
    orders
}

fn ins(o: &Order) -> String {
    envelope(KEY, &plaintext(&o.receipt, o.kind, &o.time.to_rfc3339(), 1))
}

async fn recovered(app: &TestApp) -> usize {
    app.rows()
        .await
        .iter()
        .filter(|r| r.form == BodyForm::OrdersApi)
        .count()
}

async fn missed_orders_are_recovered_exactly_once(backend: Backend) {
    let now = Utc::now();
    let mut orders = history(now);
    // Younger than 30 minutes: left for INS, not recovered.
    orders.push(Order {
        receipt: "YOUNG001".into(),
        kind: "SALE",
        time: now - chrono::Duration::minutes(5),
        amount: "37.00",
        cart: false,
    });
    // What kaching missed: two sales (one on the paged day), the rebill,
    // a refund, the chargeback; and the young sale.
    let missed = [
        ("PG000120", "SALE"),
        ("D5000003", "SALE"),
        ("D1000000-B002", "BILL"),
        ("D2000001", "RFND"),
        ("D4000002", "CGBK"),
        ("YOUNG001", "SALE"),
    ];
    let api = OrdersApi::start(orders.clone(), 20).await;
    std::env::set_var("KACHING_TEST_CB_API_KEY", orders_api::API_KEY);
    let target = Target::start("127.0.0.1:0".parse().unwrap()).await;
    let Some(app) = TestApp::spawn(backend, |s| {
        s.accounts[0].reconcile = Some(reconcile_block(&api, "KACHING_TEST_CB_API_KEY", 15.0));
        s.actions.push(webhook("crm", &target.url()));
        // A thank-you days late is worse than none.
        let mut late_thanks = ActionSettings {
            name: "thanks".into(),
            kind: "log".into(),
            ..Default::default()
        };
        late_thanks.when.reconciled = false;
        s.actions.push(late_thanks);
    })
    .await
    else {
        return;
    };
    for o in orders
        .iter()
        .filter(|o| !missed.contains(&(o.receipt.as_str(), o.kind)))
    {
        assert_eq!(app.post_ins(ins(o)).await.0, 200, "{}", o.receipt);
    }
    let posted = app.rows().await.len();
    assert_eq!(posted, orders.len() - missed.len());
    let window = (
        orders_api::day(now) - chrono::Days::new(6),
        orders_api::day(now),
    );

    // A dry run: the same comparison, nothing stored.
    let dry = kaching::reconcile::reconcile(&app.settings, &app.store, "acme", window, true)
        .await
        .expect("the dry run");
    assert_eq!(dry.missing.len(), 5, "{dry:#?}");
    assert_eq!(dry.recovered, 0);
    assert_eq!(app.rows().await.len(), posted, "a dry run stores nothing");
    assert_eq!(dry.compared, 7 * 4, "7 days x SALE, BILL, RFND, CGBK");
    assert_eq!(dry.by_kind.count, 28, "one count call per day and type");
    let pages = api.calls().iter().filter(|c| c.method == "list").count() as u64;
    assert_eq!(dry.by_kind.list, pages);
    assert!(
        api.calls()
            .iter()
            .any(|c| c.method == "list" && c.page == 2 && c.status == 200),
        "the 150-sale day came in two pages, 206 then 200: {:?}",
        api.calls()
    );
    println!(
        "reconcile dry run, 7 days: {} calls ({} count, {} list), {} of {} (day, type) differed, {} orders listed, {} missing",
        dry.calls,
        dry.by_kind.count,
        dry.by_kind.list,
        dry.differing.len(),
        dry.compared,
        dry.listed,
        dry.missing.len()
    );

    // For real: the five stored once, through the pipeline, with runs.
    let real = kaching::reconcile::reconcile(&app.settings, &app.store, "acme", window, false)
        .await
        .expect("the run");
    assert_eq!(real.recovered, 5, "{real:#?}");
    assert_eq!(recovered(&app).await, 5);
    assert_eq!(app.rows().await.len(), posted + 5);
    let young = app
        .rows()
        .await
        .into_iter()
        .any(|r| r.notification.receipt.as_str() == "YOUNG001");
    assert!(!young, "an order younger than 30 minutes is left for INS");
    let sale = app
        .rows()
        .await
        .into_iter()
        .find(|r| r.notification.receipt.as_str() == "PG000120")
        .expect("the recovered sale");
    assert_eq!(
        sale.notification.total_order_amount.unwrap().to_string(),
        "47.00"
    );
    assert!(
        sale.personal.is_some(),
        "the buyer's data is sealed like a post's"
    );
    assert!(
        !sale.notification.payload.contains("zoe@"),
        "{}",
        sale.notification.payload
    );

    // Their runs: the webhook (flagged reconciled), not the late thank-you.
    let hooks = target.wait_for(posted + 5, Duration::from_secs(30)).await;
    assert_eq!(hooks.len(), posted + 5);
    let flagged = hooks
        .iter()
        .filter(|h| h.json()["reconciled"] == true)
        .count();
    assert_eq!(flagged, 5);
    let runs = app
        .store
        .list_runs(None, Some("thanks"), 1000)
        .await
        .unwrap();
    assert_eq!(runs.len(), posted, "`thanks` ran for the posts only");

    // A second run: the counts agree now, but for today's young sale (one
    // list call); nothing added.
    let again = kaching::reconcile::reconcile(&app.settings, &app.store, "acme", window, false)
        .await
        .expect("the second run");
    assert_eq!(
        (again.missing.len(), again.recovered, again.by_kind.list),
        (0, 0, 1),
        "{again:#?}"
    );
    assert_eq!(again.calls, 29);
    assert_eq!(app.rows().await.len(), posted + 5);

    // ClickBank's own retry of a recovered sale arrives at last, its time 2 s
    // off the Orders API's: a duplicate of the recovered row, once the
    // daemon has read what this (other) process recovered.
    tokio::time::sleep(kaching::reconcile::REFRESH + Duration::from_secs(1)).await;
    let late = Order {
        time: sale.notification.transaction_time + chrono::Duration::seconds(2),
        ..orders
            .iter()
            .find(|o| o.receipt == "PG000120")
            .unwrap()
            .clone()
    };
    assert_eq!(app.post_ins(ins(&late)).await.0, 200);
    assert_eq!(app.rows().await.len(), posted + 5, "not stored twice");
    let row = app
        .rows()
        .await
        .into_iter()
        .find(|r| r.id == sale.id)
        .unwrap();
    assert_eq!(row.duplicates, 1, "counted as a copy of the recovered row");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        target.deliveries().len(),
        posted + 5,
        "and no second delivery"
    );

    // The runs are on record with their calls (the daily budget).
    let log = app.store.reconcile_runs(10).await.unwrap();
    assert_eq!(log.len(), 3);
    assert_eq!(
        log.iter().map(|r| r.calls).sum::<i64>() as u64,
        dry.calls + real.calls + again.calls
    );
    app.stop().await;
}

async fn the_legacy_key_form_and_the_rate_limit(backend: Backend) {
    let now = Utc::now();
    let orders = history(now);
    // ClickBank allows 10 requests a second; this client asks for 40.
    let api = OrdersApi::start(orders.clone(), 10).await;
    std::env::set_var("KACHING_TEST_CB_LEGACY_KEY", orders_api::LEGACY_KEY);
    let Some(mut app) = TestApp::spawn(backend, |s| {
        s.accounts[0].reconcile = Some(reconcile_block(&api, "KACHING_TEST_CB_LEGACY_KEY", 40.0));
    })
    .await
    else {
        return;
    };
    let window = (
        orders_api::day(now) - chrono::Days::new(6),
        orders_api::day(now),
    );
    let r = kaching::reconcile::reconcile(&app.settings, &app.store, "acme", window, false)
        .await
        .expect("the run backs off and completes");
    assert!(r.by_kind.forbidden > 0, "the stand-in refused some: {r:#?}");
    assert_eq!(r.recovered, orders.len(), "all of them: nothing was posted");
    assert_eq!(
        r.calls as usize,
        api.calls().len(),
        "every call counted, 403s included"
    );
    eventually(Duration::from_secs(10), "the rows", || async {
        (recovered(&app).await == orders.len()).then_some(())
    })
    .await;

    // A budget of 5 calls more than spent today: the next run does not start.
    let spent = r.calls as u32;
    app.settings.accounts[0]
        .reconcile
        .as_mut()
        .unwrap()
        .daily_budget = spent + 5;
    let before = api.calls().len();
    let e = kaching::reconcile::reconcile(&app.settings, &app.store, "acme", window, false)
        .await
        .expect_err("over the budget");
    assert!(e.to_string().contains("budget"), "{e}");
    assert_eq!(
        api.calls().len(),
        before,
        "refused before a call: 28 counts do not fit in 5"
    );
    app.stop().await;
}

crate::on_both_backends!(
    missed_orders_are_recovered_exactly_once,
    the_legacy_key_form_and_the_rate_limit
);

/// The demo history's last week, a few posts lost: what a run costs in
/// calls (the figure the README gives).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_week_of_the_demo_history_costs_a_few_dozen_calls() {
    let now = Utc::now();
    let end = now - chrono::Duration::hours(1);
    let week = orders_api::day(now) - chrono::Days::new(6);
    let posts: Vec<_> = kaching::demo::history::history_at(1, 30, end, 30.0)
        .into_iter()
        .filter(|p| p.attempt == 1 && orders_api::day(p.time) >= week)
        .collect();
    let orders: Vec<Order> = posts
        .iter()
        .filter(|p| kaching::reconcile::TYPES.contains(&p.kind))
        .map(|p| Order {
            receipt: p.receipt.clone(),
            kind: p.kind,
            time: p.time,
            amount: "37.00",
            cart: false,
        })
        .collect();
    let api = OrdersApi::start(orders.clone(), 20).await;
    std::env::set_var("KACHING_TEST_CB_DEMO_KEY", orders_api::API_KEY);
    let Some(app) = TestApp::spawn(Backend::Sqlite, |s| {
        s.accounts[0].reconcile = Some(reconcile_block(&api, "KACHING_TEST_CB_DEMO_KEY", 15.0));
    })
    .await
    else {
        return;
    };
    // Every 40th post of the week lost (kaching down, say).
    let mut lost = 0;
    for (i, p) in posts.iter().enumerate() {
        if i % 40 == 7 && kaching::reconcile::TYPES.contains(&p.kind) {
            lost += 1;
            continue;
        }
        assert_eq!(app.post_ins(envelope(KEY, &p.plaintext)).await.0, 200);
    }
    let window = (week, orders_api::day(now));
    let r = kaching::reconcile::reconcile(&app.settings, &app.store, "acme", window, false)
        .await
        .expect("the run");
    assert_eq!((r.missing.len(), r.recovered), (lost, lost), "{r:#?}");
    let again = kaching::reconcile::reconcile(&app.settings, &app.store, "acme", window, false)
        .await
        .expect("the second run");
    assert_eq!(again.recovered, 0);
    println!(
        "demo week: {} posts, {} orders at ClickBank, {lost} lost; run 1: {} calls ({} count, {} list pages), {} (day, type) differed, {} orders listed; run 2: {} calls",
        posts.len(),
        orders.len(),
        r.calls,
        r.by_kind.count,
        r.by_kind.list,
        r.differing.len(),
        r.listed,
        again.calls
    );
    app.stop().await;
}
