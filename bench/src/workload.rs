//! The pre-generated posts: distinct genuine notifications, ClickBank-style
//! retries of some of them (same plaintext, `attemptCount` 2, a fresh IV) and
//! forged bodies (encrypted under a wrong key). Everything is encrypted before
//! the clock starts; a post is a cheap slice of one shared buffer per thread.

use bytes::{Bytes, BytesMut};
use chrono::{FixedOffset, Utc};
use rand::seq::SliceRandom as _;
use rand::Rng as _;

/// What a post is, for counting its answers and for the verification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The first post of a distinct notification.
    Genuine,
    /// A ClickBank retry of an earlier genuine notification.
    Duplicate,
    /// Encrypted under a key the daemon does not have.
    Forged,
}

pub struct Post {
    pub body: Bytes,
    pub kind: Kind,
    /// The notification's number: genuine and duplicate posts share the
    /// number of their notification; forged posts are numbered apart.
    pub id: u32,
}

/// The posts of a run, and what it takes to make more of them.
pub struct Workload {
    /// Starts every receipt of this run (`R` and 5 random characters).
    pub prefix: String,
    pub posts: Vec<Post>,
    /// Distinct genuine notifications (numbered `0..genuine`).
    pub genuine: u32,
    pub forged: u32,
    pub duplicates: u32,
    secret_key: String,
    wrong_key: String,
    time: String,
    duplicate_fraction: f64,
    forged_fraction: f64,
    threads: usize,
    plaintext_bytes: usize,
    body_bytes: usize,
}

/// The receipt of genuine notification `id`.
pub fn receipt(prefix: &str, id: u32) -> String {
    format!("{prefix}{id:08}")
}

/// The receipt inside forged body `id`.
pub fn forged_receipt(prefix: &str, id: u32) -> String {
    format!("{prefix}F{id:07}")
}

/// What a stored receipt of this run is.
pub enum Parsed {
    Genuine(u32),
    Forged(u32),
    Unknown,
}

pub fn parse_receipt(prefix: &str, receipt: &str) -> Parsed {
    let Some(rest) = receipt.strip_prefix(prefix) else {
        return Parsed::Unknown;
    };
    if let Some(n) = rest.strip_prefix('F') {
        return n.parse().map_or(Parsed::Unknown, Parsed::Forged);
    }
    rest.parse().map_or(Parsed::Unknown, Parsed::Genuine)
}

fn run_prefix() -> String {
    const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut rng = rand::rng();
    let mut s = String::from("R");
    for _ in 0..5 {
        s.push(char::from(ALNUM[rng.random_range(0..ALNUM.len())]));
    }
    s
}

/// A v6.0 plaintext in ClickBank's field order and number format, about
/// 1 KiB like real ones.
pub fn plaintext(out: &mut String, time: &str, receipt: &str, attempt: u32) {
    use std::fmt::Write as _;
    out.clear();
    let _ = write!(
        out,
        concat!(
            r#"{{"transactionTime":"{time}","receipt":"{receipt}","transactionType":"SALE","#,
            r#""vendor":"benchvendor","affiliate":"benchaffiliate","role":"VENDOR","#,
            r#""totalAccountAmount":37.00,"paymentMethod":"VISA","totalOrderAmount":47.00,"#,
            r#""totalTaxAmount":3.29,"totalShippingAmount":0.00,"currency":"USD","orderLanguage":"EN","#,
            r#""trackingCodes":["spring_launch"],"lineItems":[{{"itemNo":"1","#,
            r#""productTitle":"The Load Testing Handbook (digital edition)","shippable":false,"#,
            r#""recurring":false,"accountAmount":37.00,"quantity":1,"#,
            r#""downloadUrl":"https://benchvendor.example.com/download?r={receipt}&t=8f14e45fceea167a5a36dedd4bea2543","#,
            r#""lineItemType":"ORIGINAL"}}],"customer":{{"shipping":{{"firstName":"Zoë","#,
            r#""lastName":"Ångström","fullName":"Zoë Ångström","phoneNumber":"","email":"zoe.angstrom@example.com","#,
            r#""address":{{"address1":"Storgatan 1","address2":"","city":"Stockholm","county":"","#,
            r#""state":"","postalCode":"111 22","country":"SE"}}}},"billing":{{"firstName":"Zoë","#,
            r#""lastName":"Ångström","fullName":"Zoë Ångström","phoneNumber":"","email":"zoe.angstrom@example.com","#,
            r#""address":{{"state":"","postalCode":"111 22","country":"SE"}}}}}},"upsell":null,"#,
            r#""hopfeed":null,"vendorVariables":{{"v1":"bench"}},"version":6.0,"attemptCount":{attempt}}}"#
        ),
        time = time,
        receipt = receipt,
        attempt = attempt,
    );
}

impl Workload {
    /// An empty workload: `duplicates` and `forged` are the fractions of the
    /// posts [`Workload::extend`] will make; it encrypts on `threads` threads.
    pub fn new(
        secret_key: &str,
        duplicates: f64,
        forged: f64,
        threads: usize,
    ) -> anyhow::Result<Workload> {
        let pacific =
            FixedOffset::west_opt(8 * 3600).ok_or_else(|| anyhow::anyhow!("bad offset"))?;
        Ok(Workload {
            prefix: run_prefix(),
            posts: Vec::new(),
            genuine: 0,
            forged: 0,
            duplicates: 0,
            secret_key: secret_key.to_owned(),
            wrong_key: format!("FORGED{:010}", rand::random::<u32>()),
            time: Utc::now()
                .with_timezone(&pacific)
                .format("%Y-%m-%dT%H:%M:%S%:z")
                .to_string(),
            duplicate_fraction: duplicates,
            forged_fraction: forged,
            threads: threads.clamp(1, 16),
            plaintext_bytes: 0,
            body_bytes: 0,
        })
    }

    pub fn mean_plaintext(&self) -> usize {
        self.plaintext_bytes / self.posts.len().max(1)
    }

    pub fn mean_body(&self) -> usize {
        self.body_bytes / self.posts.len().max(1)
    }

    /// Plans and encrypts `total` more posts. New genuine notifications never
    /// repeat earlier ones; a duplicate repeats a random earlier one.
    pub fn extend(&mut self, total: usize) -> anyhow::Result<()> {
        if total == 0 {
            return Ok(());
        }
        anyhow::ensure!(
            u32::try_from(self.posts.len() + total).is_ok(),
            "too many requests to pre-generate"
        );
        let n_forged = ((total as f64) * self.forged_fraction).round() as usize;
        let mut n_dup = ((total as f64) * self.duplicate_fraction).round() as usize;
        anyhow::ensure!(n_forged < total, "--forged leaves no genuine notification");
        if n_forged + n_dup >= total {
            n_dup = total - n_forged - 1;
        }

        // The order of kinds, shuffled; a duplicate repeats a random earlier
        // genuine notification (a retry comes after the first attempt).
        let mut kinds = vec![Kind::Genuine; total - n_forged - n_dup];
        kinds.extend(std::iter::repeat_n(Kind::Duplicate, n_dup));
        kinds.extend(std::iter::repeat_n(Kind::Forged, n_forged));
        let mut rng = rand::rng();
        kinds.shuffle(&mut rng);
        let plan: Vec<(Kind, u32)> = kinds
            .into_iter()
            .map(|k| match k {
                Kind::Duplicate if self.genuine > 0 => {
                    self.duplicates += 1;
                    (Kind::Duplicate, rng.random_range(0..self.genuine))
                }
                Kind::Genuine | Kind::Duplicate => {
                    self.genuine += 1;
                    (Kind::Genuine, self.genuine - 1)
                }
                Kind::Forged => {
                    self.forged += 1;
                    (Kind::Forged, self.forged - 1)
                }
            })
            .collect();

        let chunk = plan.len().div_ceil(self.threads);
        let this = &*self;
        let encrypt_chunk = |items: &[(Kind, u32)]| {
            let mut buf = BytesMut::with_capacity(items.len() * 1800);
            let mut ends = Vec::with_capacity(items.len());
            let mut text = String::with_capacity(1400);
            let mut plain_total = 0usize;
            for &(kind, id) in items {
                let (key, r, attempt) = match kind {
                    Kind::Genuine => (this.secret_key.as_str(), receipt(&this.prefix, id), 1),
                    Kind::Duplicate => (this.secret_key.as_str(), receipt(&this.prefix, id), 2),
                    Kind::Forged => (this.wrong_key.as_str(), forged_receipt(&this.prefix, id), 1),
                };
                plaintext(&mut text, &this.time, &r, attempt);
                plain_total += text.len();
                let body = kaching::ins::encrypt(key, text.as_bytes(), kaching::ins::random_iv());
                buf.extend_from_slice(body.as_bytes());
                ends.push(buf.len());
            }
            let buf = buf.freeze();
            let mut start = 0;
            let posts: Vec<Post> = items
                .iter()
                .zip(ends)
                .map(|(&(kind, id), end)| {
                    let body = buf.slice(start..end);
                    start = end;
                    Post { body, kind, id }
                })
                .collect();
            (posts, plain_total)
        };
        let parts: Vec<(Vec<Post>, usize)> = std::thread::scope(|s| {
            let handles: Vec<_> = plan
                .chunks(chunk)
                .map(|items| s.spawn(|| encrypt_chunk(items)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .map_err(|_| anyhow::anyhow!("a generator thread panicked"))
                })
                .collect::<anyhow::Result<_>>()
        })?;
        self.posts.reserve(total);
        for (posts, plain) in parts {
            self.plaintext_bytes += plain;
            self.body_bytes += posts.iter().map(|p| p.body.len()).sum::<usize>();
            self.posts.extend(posts);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_decryptable_distinct_notifications() {
        let mut w = Workload::new("BENCHKEY12345678", 0.1, 0.05, 3).unwrap();
        w.extend(600).unwrap();
        w.extend(400).unwrap();
        assert_eq!(w.posts.len(), 1000);
        assert_eq!(w.forged, 50);
        assert!(
            w.duplicates >= 95 && w.duplicates <= 100,
            "{}",
            w.duplicates
        );
        assert_eq!(w.genuine + w.duplicates + w.forged, 1000);
        let mut seen = std::collections::HashSet::new();
        for p in &w.posts {
            match p.kind {
                Kind::Genuine => {
                    let text = kaching::ins::decrypt("BENCHKEY12345678", &p.body).unwrap();
                    assert!(text.contains(&receipt(&w.prefix, p.id)));
                    assert!(text.ends_with(r#""version":6.0,"attemptCount":1}"#));
                    serde_json::from_str::<serde_json::Value>(&text).unwrap();
                    assert!(seen.insert(p.id));
                }
                Kind::Duplicate => {
                    let text = kaching::ins::decrypt("BENCHKEY12345678", &p.body).unwrap();
                    assert!(text.contains(r#""attemptCount":2"#));
                    assert!(seen.contains(&p.id), "a retry comes after its original");
                }
                Kind::Forged => {
                    assert!(kaching::ins::decrypt("BENCHKEY12345678", &p.body).is_err());
                }
            }
        }
        assert!(w.mean_plaintext() > 900 && w.mean_plaintext() < 1400);
        assert!(matches!(
            parse_receipt(&w.prefix, &receipt(&w.prefix, 42)),
            Parsed::Genuine(42)
        ));
        assert!(matches!(
            parse_receipt(&w.prefix, &forged_receipt(&w.prefix, 7)),
            Parsed::Forged(7)
        ));
    }
}
