use std::collections::{HashMap, HashSet};

use chrono::{DateTime, TimeZone, Utc};

use super::*;

fn end() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 30, 0, 0, 0).unwrap()
}

#[test]
fn the_same_seed_gives_the_same_history_and_another_seed_another() {
    let a = history(1, 30, end());
    assert_eq!(a, history(1, 30, end()));
    assert_ne!(a, history(2, 30, end()));
}

#[test]
fn every_type_is_present_and_every_plaintext_is_v8_json() {
    let posts = history(1, 90, end());
    let kinds: HashSet<&str> = posts.iter().map(|p| p.kind).collect();
    for kind in ["SALE", "BILL", "RFND", "CGBK", "CANCEL-REBILL"] {
        assert!(kinds.contains(kind), "{kind} missing");
    }
    assert!(
        (2_000..6_000).contains(&posts.len()),
        "{} posts",
        posts.len()
    );
    for p in &posts {
        let v: serde_json::Value = serde_json::from_str(&p.plaintext).unwrap();
        assert_eq!(v["transactionType"], p.kind);
        assert_eq!(v["receipt"], p.receipt.as_str());
        assert_eq!(v["attemptCount"], p.attempt);
        assert!(p.plaintext.contains(r#""version":8.0"#));
        assert!(p.time >= end() - chrono::Duration::days(90) && p.time < end());
    }
    let eur = posts
        .iter()
        .any(|p| p.plaintext.contains(r#""currency":"EUR""#));
    assert!(eur, "one product is priced in EUR");
}

#[test]
fn a_retry_differs_from_its_original_only_in_attempt_count() {
    let posts = history(1, 90, end());
    let key = |p: &DemoPost| (p.receipt.clone(), p.kind, p.time);
    let firsts: HashMap<_, _> = posts
        .iter()
        .filter(|p| p.attempt == 1)
        .map(|p| (key(p), p))
        .collect();
    assert_eq!(
        firsts.len(),
        posts.iter().filter(|p| p.attempt == 1).count(),
        "first deliveries are distinct notifications"
    );
    let retries: Vec<_> = posts.iter().filter(|p| p.attempt > 1).collect();
    let share = retries.len() as f64 / posts.len() as f64;
    assert!((0.01..0.04).contains(&share), "{share}");
    for r in retries {
        let first = firsts[&key(r)];
        assert_eq!(
            first.plaintext.replace(r#""attemptCount":1}"#, ""),
            r.plaintext
                .replace(&format!(r#""attemptCount":{}}}"#, r.attempt), "")
        );
    }
}

#[test]
fn a_refund_reuses_the_receipt_of_its_sale_and_comes_3_to_45_days_later() {
    let posts = history(3, 90, end());
    let sales: HashMap<&str, &DemoPost> = posts
        .iter()
        .filter(|p| p.kind == "SALE")
        .map(|p| (p.receipt.as_str(), p))
        .collect();
    let refunds: Vec<_> = posts
        .iter()
        .filter(|p| p.kind == "RFND" && p.attempt == 1)
        .collect();
    let rate = refunds.len() as f64 / sales.len() as f64;
    assert!((0.03..0.10).contains(&rate), "refund rate {rate}");
    for r in refunds {
        let sale = sales[r.receipt.as_str()];
        let lag = r.time - sale.time;
        assert!(
            lag >= chrono::Duration::days(3) && lag <= chrono::Duration::days(46),
            "{lag}"
        );
        assert_eq!(sale.item, r.item);
    }
    for b in posts.iter().filter(|p| p.kind == "BILL") {
        let (orig, n) = b.receipt.split_once("-B").unwrap();
        assert!(sales[orig].time < b.time);
        assert!(n.parse::<u32>().unwrap() >= 2);
    }
}

#[test]
fn the_spiking_products_refunds_rise_fivefold_in_the_last_7_days() {
    for seed in 1..=5 {
        let (last, before) = spike_rates(&history(seed, 90, end()), end());
        assert!(before > 0.0, "seed {seed}");
        assert!(last > 3.5 * before, "seed {seed}: {last} vs {before}");
    }
}
