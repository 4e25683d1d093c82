//! The seeded history: every notification a small ClickBank vendor would have
//! received over `days` days, as v8.0 plaintexts in ClickBank's own field
//! order and number formats (`37.00`, `8.0`, `20220810T162015-0700`). Pure:
//! the same (seed, days, end) gives the same posts, byte for byte.

use std::collections::HashSet;

use chrono::{DateTime, Datelike, Duration, FixedOffset, NaiveDate, Offset, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The vendor nickname every demo notification names.
pub const VENDOR: &str = "kachingdemo";

/// One notification as ClickBank would send it, before encryption.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoPost {
    /// The v8.0 JSON plaintext.
    pub plaintext: String,
    /// `SALE`, `BILL`, `RFND`, `CGBK` or `CANCEL-REBILL`.
    pub kind: &'static str,
    pub receipt: String,
    /// The transaction time (sent in Pacific time, as ClickBank does).
    pub time: DateTime<Utc>,
    /// 1 for the first delivery; 2 and up for ClickBank's retries of the
    /// same notification (identical but for `attemptCount`).
    pub attempt: u32,
    /// The product's `itemNo`.
    pub item: &'static str,
}

pub struct Product {
    pub item: &'static str,
    pub title: &'static str,
    /// The price in cents of `currency`.
    pub cents: i64,
    pub currency: &'static str,
    /// Rebilled monthly after the first sale.
    pub recurring: bool,
    /// The affiliate's share of the net, in percent.
    commission: i64,
    /// Relative popularity.
    weight: u32,
    /// Refunds per sale, in per mille.
    refund_permille: u32,
}

/// Six products, 7.00 to 197.00; one in EUR, one monthly subscription.
pub const PRODUCTS: [Product; 6] = [
    product("1", "Keto Kickstart Guide", 700, "USD", false, 50, 30, 80),
    product("2", "Lean Belly Blueprint", 3700, "USD", false, 75, 24, 100),
    product(
        "3",
        "Sleep Reset Masterclass",
        9700,
        "USD",
        false,
        50,
        20,
        80,
    ),
    product(
        "4",
        "Inner Circle Membership",
        2900,
        "USD",
        true,
        40,
        14,
        60,
    ),
    product(
        "5",
        "Mindful Money Academy",
        19700,
        "USD",
        false,
        50,
        6,
        110,
    ),
    product("6", "Yoga Flow Kurs", 4700, "EUR", false, 50, 8, 80),
];

/// The product whose refunds rise fivefold in the last seven days (enough
/// for the refund_spike alert to catch on a product this small).
pub const SPIKING: usize = 2;
/// How much more often it is refunded then.
pub const SPIKE_FACTOR: u32 = 5;
/// The spike's window, ending at `end`.
pub const SPIKE_DAYS: i64 = 7;

#[allow(clippy::too_many_arguments)]
const fn product(
    item: &'static str,
    title: &'static str,
    cents: i64,
    currency: &'static str,
    recurring: bool,
    commission: i64,
    weight: u32,
    refund_permille: u32,
) -> Product {
    Product {
        item,
        title,
        cents,
        currency,
        recurring,
        commission,
        weight,
        refund_permille,
    }
}

/// Sales on an average weekday; the weekly pattern and a slow growth vary it.
pub const SALES_PER_DAY: f64 = 30.0;
/// Sales with no affiliate (direct), in percent.
const DIRECT_PERCENT: u32 = 20;
/// Chargebacks per sale, in per mille.
const CHARGEBACK_PERMILLE: u32 = 6;
/// Subscribers cancelling in a given month, in percent.
const CANCEL_PERCENT: u32 = 15;
/// ClickBank retries (the same notification sent again), in per mille.
const RETRY_PERMILLE: u32 = 20;
/// ClickBank's refund lag: most refunds come 14–45 days after the sale,
/// some sooner (section 1.2 of the protocol notes).
const REFUND_LAG_DAYS: (i64, i64) = (3, 45);

const PREFIXES: [&str; 10] = [
    "alpha", "bright", "cash", "daily", "eco", "fit", "green", "happy", "iron", "jet",
];
const SUFFIXES: [&str; 4] = ["deals", "media", "hub", "ads"];
const AFFILIATES: usize = PREFIXES.len() * SUFFIXES.len();
const TRACKING_CODES: usize = 60;
/// (trafficSource, trafficType)
const SOURCES: [(&str, &str); 6] = [
    ("facebook", "paid"),
    ("google", "paid"),
    ("tiktok", "paid"),
    ("email", "owned"),
    ("youtube", "organic"),
    ("native", "paid"),
];
const CAMPAIGNS: [&str; 5] = ["spring-promo", "evergreen", "retarget", "launch", "webinar"];
const CREATIVES: [&str; 6] = [
    "video-a", "video-b", "static-1", "static-2", "carousel", "story",
];
const FIRST: [&str; 16] = [
    "Emma", "Liam", "Olivia", "Noah", "Ava", "Lucas", "Mia", "Ethan", "Sofia", "Mason", "Chloe",
    "Jonas", "Lea", "Mateo", "Grace", "Hugo",
];
const LAST: [&str; 16] = [
    "Smith", "Johnson", "Brown", "Garcia", "Miller", "Davis", "Wilson", "Moore", "Taylor",
    "Martin", "Clark", "Lewis", "Walker", "Young", "Keller", "Dubois",
];
/// (country, state) for USD buyers, weighted by repetition.
const COUNTRIES_USD: [(&str, &str); 10] = [
    ("US", "CA"),
    ("US", "TX"),
    ("US", "NY"),
    ("US", "FL"),
    ("US", "WA"),
    ("US", "IL"),
    ("CA", "ON"),
    ("GB", ""),
    ("AU", "NSW"),
    ("NZ", ""),
];
const COUNTRIES_EUR: [&str; 5] = ["DE", "FR", "NL", "AT", "ES"];
/// (paymentMethod, weight)
const PAYMENT: [(&str, u32); 5] = [
    ("VISA", 45),
    ("MSTR", 25),
    ("PYPL", 20),
    ("AMEX", 7),
    ("DISC", 3),
];
/// Sales by Pacific hour of day, relative.
const HOURLY: [u32; 24] = [
    4, 3, 2, 2, 2, 3, 4, 6, 8, 9, 10, 10, 10, 10, 10, 10, 10, 11, 12, 13, 13, 11, 8, 6,
];
/// Monday first.
const WEEKLY: [f64; 7] = [1.10, 1.05, 1.0, 1.0, 0.95, 0.80, 0.85];

/// Everything a sale's later notifications repeat.
struct Order {
    receipt: String,
    time: DateTime<Utc>,
    product: usize,
    affiliate: Option<usize>,
    code: Option<usize>,
    creative: usize,
    first: usize,
    last: usize,
    n: u32,
    country: &'static str,
    state: &'static str,
    payment: &'static str,
    mobile: bool,
    extclid: String,
}

/// One event of an order.
struct Event {
    kind: &'static str,
    receipt: String,
    time: DateTime<Utc>,
    /// Payments made so far (subscriptions).
    payments: u32,
}

/// The history of `days` days ending at `end` (exclusive), seeded by `seed`,
/// sorted by transaction time; retries follow their originals. Refunds,
/// rebills and chargebacks that would fall after `end` have not happened yet.
pub fn history(seed: u64, days: u32, end: DateTime<Utc>) -> Vec<DemoPost> {
    history_at(seed, days, end, SALES_PER_DAY)
}

/// [`history`] of a shop with `sales_per_day` sales on an average weekday
/// (the benchmark's large vendor).
pub fn history_at(seed: u64, days: u32, end: DateTime<Utc>, sales_per_day: f64) -> Vec<DemoPost> {
    let mut rng = StdRng::seed_from_u64(seed);
    let start = end - Duration::days(i64::from(days));
    let mut receipts = HashSet::new();
    let mut orders = Vec::new();
    let mut events: Vec<(usize, Event)> = Vec::new();
    // Calendar days (UTC), the first and last one cut to [start, end).
    let mut date = start.date_naive();
    while date <= end.date_naive() {
        let midnight = date.and_time(chrono::NaiveTime::MIN).and_utc();
        date = date.succ_opt().unwrap_or(date);
        let weekday = midnight.weekday().num_days_from_monday() as usize;
        let growth = 0.85 + 0.3 * (midnight - start).num_days() as f64 / f64::from(days.max(1));
        let mean = sales_per_day * WEEKLY[weekday] * growth * rng.random_range(0.8..1.2);
        for _ in 0..mean.round() as u32 {
            let time = midnight + Duration::seconds(in_day(&mut rng));
            if time < start || time >= end {
                continue;
            }
            let order = order(&mut rng, &mut receipts, time);
            let o = orders.len();
            later_events(&mut rng, &order, end, |e| events.push((o, e)));
            events.push((
                o,
                Event {
                    kind: "SALE",
                    receipt: order.receipt.clone(),
                    time,
                    payments: 1,
                },
            ));
            orders.push(order);
        }
    }
    spike(&mut rng, &orders, &mut events, end);
    events.sort_by(|a, b| (a.1.time, &a.1.receipt).cmp(&(b.1.time, &b.1.receipt)));
    let mut posts = Vec::with_capacity(events.len() + events.len() / 40);
    let mut retries = Vec::new();
    for (o, e) in &events {
        let order = &orders[*o];
        let post = |attempt| DemoPost {
            plaintext: render(order, e, attempt),
            kind: e.kind,
            receipt: e.receipt.clone(),
            time: e.time,
            attempt,
            item: PRODUCTS[order.product].item,
        };
        posts.push(post(1));
        if rng.random_range(0..1000) < RETRY_PERMILLE {
            retries.push(post(2));
            if rng.random_bool(0.2) {
                retries.push(post(3));
            }
        }
    }
    posts.extend(retries);
    posts
}

/// A new sale at `time`, with a receipt not used before.
fn order(rng: &mut StdRng, receipts: &mut HashSet<String>, time: DateTime<Utc>) -> Order {
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let receipt = loop {
        let r: String = (0..8)
            .map(|_| char::from(CHARS[rng.random_range(0..CHARS.len())]))
            .collect();
        if receipts.insert(r.clone()) {
            break r;
        }
    };
    let product = pick(rng, PRODUCTS.iter().map(|p| p.weight));
    let affiliate = (rng.random_range(0..100) >= DIRECT_PERCENT)
        // A few affiliates sell most: weight 1/(rank+1).
        .then(|| pick(rng, (0..AFFILIATES).map(|i| (1000 / (i + 1)) as u32)));
    // An affiliate's codes are j with j % AFFILIATES == affiliate.
    let code = affiliate.filter(|_| rng.random_bool(0.85)).map(|a| {
        let codes = (TRACKING_CODES - a).div_ceil(AFFILIATES);
        a + AFFILIATES * rng.random_range(0..codes)
    });
    let (country, state) = if PRODUCTS[product].currency == "EUR" {
        (COUNTRIES_EUR[rng.random_range(0..COUNTRIES_EUR.len())], "")
    } else {
        COUNTRIES_USD[rng.random_range(0..COUNTRIES_USD.len())]
    };
    Order {
        receipt,
        time,
        product,
        affiliate,
        code,
        creative: rng.random_range(0..CREATIVES.len()),
        first: rng.random_range(0..FIRST.len()),
        last: rng.random_range(0..LAST.len()),
        n: rng.random_range(1..1000),
        country,
        state,
        payment: PAYMENT[pick(rng, PAYMENT.iter().map(|p| p.1))].0,
        mobile: rng.random_bool(0.6),
        extclid: (0..24)
            .map(|_| char::from(b"0123456789abcdef"[rng.random_range(0..16)]))
            .collect(),
    }
}

/// The refund or chargeback of an order, and a subscription's rebills and
/// cancellation, up to `end`.
fn later_events(rng: &mut StdRng, order: &Order, end: DateTime<Utc>, mut push: impl FnMut(Event)) {
    let p = &PRODUCTS[order.product];
    let mut stop = None;
    let refund_permille = p.refund_permille;
    if rng.random_range(0..1000) < refund_permille {
        let lag = refund_lag(rng);
        // The spiking product's refunds dated in the window come from
        // `spike`, so that its rate there is what it claims.
        let t = order.time + lag;
        if t < end && !(order.product == SPIKING && t >= end - Duration::days(SPIKE_DAYS)) {
            stop = Some(t);
            push(event("RFND", &order.receipt, t, 1));
        }
    } else if rng.random_range(0..1000) < CHARGEBACK_PERMILLE {
        let t = order.time
            + Duration::days(rng.random_range(10..60))
            + Duration::seconds(rng.random_range(0..86_400));
        if t < end {
            stop = Some(t);
            push(event("CGBK", &order.receipt, t, 1));
        }
    }
    if !p.recurring {
        return;
    }
    let stop = stop.unwrap_or(end).min(end);
    for n in 2.. {
        let due = order.time + Duration::days(30 * i64::from(n - 1)) + Duration::minutes(7);
        if rng.random_range(0..100) < CANCEL_PERCENT {
            let t = due - Duration::seconds(rng.random_range(3_600..29 * 86_400));
            if t < stop {
                push(event("CANCEL-REBILL", &order.receipt, t, n - 1));
            }
            return;
        }
        if due >= stop {
            return;
        }
        let receipt = format!("{}-B{n:03}", order.receipt);
        push(event("BILL", &receipt, due, n));
    }
}

/// Refunds of the spiking product dated in the last `SPIKE_DAYS` days:
/// `SPIKE_FACTOR` times its usual rate of that window's sales, taken from
/// its sales 3–45 days before that have no refund or chargeback yet.
fn spike(rng: &mut StdRng, orders: &[Order], events: &mut Vec<(usize, Event)>, end: DateTime<Utc>) {
    let from = end - Duration::days(SPIKE_DAYS);
    let p = &PRODUCTS[SPIKING];
    let sales = orders
        .iter()
        .filter(|o| o.product == SPIKING && o.time >= from)
        .count() as u32;
    let mut wanted = (sales * p.refund_permille * SPIKE_FACTOR).div_ceil(1000);
    let reversed: HashSet<usize> = events
        .iter()
        .filter(|(_, e)| matches!(e.kind, "RFND" | "CGBK"))
        .map(|(o, _)| *o)
        .collect();
    let (min, max) = (
        Duration::days(REFUND_LAG_DAYS.0),
        Duration::days(REFUND_LAG_DAYS.1),
    );
    let mut candidates: Vec<usize> = (0..orders.len())
        .filter(|&o| {
            let s = &orders[o];
            s.product == SPIKING
                && !reversed.contains(&o)
                && s.time + min < end
                && s.time + max > from
        })
        .collect();
    while wanted > 0 && !candidates.is_empty() {
        let o = candidates.swap_remove(rng.random_range(0..candidates.len()));
        let lo = (orders[o].time + min).max(from);
        let hi = (orders[o].time + max).min(end);
        let t = lo + Duration::seconds(rng.random_range(0..(hi - lo).num_seconds().max(1)));
        events.push((o, event("RFND", &orders[o].receipt, t, 1)));
        wanted -= 1;
    }
}

fn event(kind: &'static str, receipt: &str, time: DateTime<Utc>, payments: u32) -> Event {
    Event {
        kind,
        receipt: receipt.to_owned(),
        time,
        payments,
    }
}

/// 3 to 45 days, most of them 14 or more.
fn refund_lag(rng: &mut StdRng) -> Duration {
    let days = if rng.random_bool(0.25) {
        rng.random_range(REFUND_LAG_DAYS.0..14)
    } else {
        rng.random_range(14..REFUND_LAG_DAYS.1)
    };
    Duration::days(days) + Duration::seconds(rng.random_range(0..86_400))
}

/// Seconds into a day, weighted by the (Pacific) hour.
fn in_day(rng: &mut StdRng) -> i64 {
    // Pacific hour h is UTC hour h + 8 (h + 7 in summer: close enough).
    let hour = pick(rng, HOURLY.iter().copied()) as i64;
    (hour + 8) % 24 * 3600 + rng.random_range(0..3600)
}

/// An index drawn with the given weights.
fn pick(rng: &mut StdRng, weights: impl Iterator<Item = u32> + Clone) -> usize {
    let total: u32 = weights.clone().sum();
    let mut x = rng.random_range(0..total);
    for (i, w) in weights.enumerate() {
        if x < w {
            return i;
        }
        x -= w;
    }
    0
}

/// US Pacific time: PDT from the second Sunday of March to the first
/// Sunday of November (2:00 local), PST otherwise.
fn pacific(t: DateTime<Utc>) -> FixedOffset {
    let y = t.year();
    let sunday = |month: u32, nth: u32, utc_hour: u32| {
        let first = NaiveDate::from_ymd_opt(y, month, 1).unwrap_or_default();
        let to_sunday = (7 - first.weekday().num_days_from_sunday()) % 7;
        (first + Duration::days(i64::from(to_sunday + 7 * (nth - 1))))
            .and_hms_opt(utc_hour, 0, 0)
            .unwrap_or_default()
            .and_utc()
    };
    let dst = t >= sunday(3, 2, 10) && t < sunday(11, 1, 9);
    let hours = if dst { -7 } else { -8 };
    FixedOffset::east_opt(hours * 3600).unwrap_or_else(|| Utc.fix())
}

fn money(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    format!("{sign}{}.{:02}", cents.abs() / 100, cents.abs() % 100)
}

fn text(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// The plaintext of one event, in ClickBank's field order.
fn render(o: &Order, e: &Event, attempt: u32) -> String {
    let p = &PRODUCTS[o.product];
    let time = e.time.with_timezone(&pacific(e.time));
    // ClickBank keeps 7.5 % + 1.00; the affiliate gets `commission` % of the rest.
    let net = p.cents - p.cents * 75 / 1000 - 100;
    let payout = if o.affiliate.is_some() {
        net * p.commission / 100
    } else {
        0
    };
    // Whether ClickBank sends reversals negative is not documented (the
    // daemon accepts both signs); negative keeps sums of amounts meaningful.
    let sign = match e.kind {
        "RFND" | "CGBK" => -1,
        "CANCEL-REBILL" => 0,
        _ => 1,
    };
    let (order_total, account, payout) = (sign * p.cents, sign * (net - payout), sign * payout);
    let mut j = format!(
        r#"{{"transactionTime":"{}","receipt":{},"transactionType":"{}","vendor":"{VENDOR}""#,
        time.format("%Y%m%dT%H%M%S%z"),
        text(&e.receipt),
        e.kind,
    );
    if let Some(a) = o.affiliate {
        j += &format!(
            r#","affiliate":"{}{}""#,
            PREFIXES[a % PREFIXES.len()],
            SUFFIXES[a / PREFIXES.len()]
        );
    }
    let language = if p.currency == "EUR" { "DE" } else { "EN" };
    j += &format!(
        r#","role":"VENDOR","totalAccountAmount":{},"paymentMethod":"{}","totalOrderAmount":{},"totalTaxAmount":0.00,"totalShippingAmount":0.00,"currency":"{}","orderLanguage":"{language}""#,
        money(account),
        o.payment,
        money(order_total),
        p.currency,
    );
    if let Some(c) = o.code {
        j += &format!(r#","trackingCodes":[{}]"#, text(&tracking_code(c)));
    }
    j += &format!(
        r#","lineItems":[{{"itemNo":"{}","productTitle":{},"shippable":false,"recurring":{},"accountAmount":{},"quantity":1,"lineItemType":"ORIGINAL","productPrice":{},"productDiscount":0.00,"taxAmount":0.00,"shippingAmount":0.00,"affiliatePayout":{}"#,
        p.item,
        text(p.title),
        p.recurring,
        money(account),
        money(p.cents),
        money(payout),
    );
    if p.recurring {
        let status = if e.kind == "CANCEL-REBILL" {
            "CANCELED"
        } else {
            "ACTIVE"
        };
        let next = o.time + Duration::days(30 * i64::from(e.payments));
        j += &format!(
            r#","paymentPlan":{{"rebillStatus":"{status}","rebillFrequency":"MONTHLY","rebillAmount":{},"paymentsProcessed":{},"paymentsRemaining":{},"nextPaymentDate":"{}"}}"#,
            money(p.cents),
            e.payments,
            999 - e.payments,
            next.format("%Y-%m-%d"),
        );
    }
    let (first, last) = (FIRST[o.first], LAST[o.last]);
    let domain = ["example.com", "example.org", "example.net"][o.n as usize % 3];
    let state = if o.state.is_empty() {
        String::new()
    } else {
        format!(r#""state":"{}","#, o.state)
    };
    j += &format!(
        r#"}}],"customer":{{"billing":{{"firstName":"{first}","lastName":"{last}","fullName":"{first} {last}","email":"{}.{}{}@{domain}","address":{{{state}"country":"{}"}}}}}}"#,
        first.to_lowercase(),
        last.to_lowercase(),
        o.n,
        o.country,
    );
    // Documented for the affiliate role; sent here so that views by traffic
    // source and campaign have something to show.
    if let Some(c) = o.code {
        let (source, kind) = SOURCES[c % SOURCES.len()];
        j += &format!(
            r#","affiliateTrackingParameters":{{"trafficType":"{kind}","trafficSource":"{source}","campaign":"{}","adgroup":"ag-{}","creative":"{}","extclid":"{}"}}"#,
            CAMPAIGNS[c / SOURCES.len() % CAMPAIGNS.len()],
            c % 7 + 1,
            CREATIVES[o.creative],
            o.extclid,
        );
    }
    let (device, os, browser) = if o.mobile {
        ("MOBILE", "iOS", "Safari")
    } else {
        ("DESKTOP", "Windows", "Chrome")
    };
    j += &format!(
        r#","commonTrackingParameters":{{"deviceType":"{device}","os":"{os}","browser":"{browser}","country":"{}"}},"version":8.0,"attemptCount":{attempt}}}"#,
        o.country,
    );
    j
}

/// Tracking code `c` (0..60): its source and campaign, and a number.
fn tracking_code(c: usize) -> String {
    let (source, _) = SOURCES[c % SOURCES.len()];
    let campaign = CAMPAIGNS[c / SOURCES.len() % CAMPAIGNS.len()];
    format!("{}_{}_{:02}", &source[..2], campaign.replace('-', ""), c)
}
