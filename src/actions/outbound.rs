//! What every HTTP request an action makes shares (`webhook` and `http`):
//! a client that cannot be pointed at this machine or its network, redirects
//! kept within one origin, a cap on the response read, and how a response
//! or a transport error becomes an [`Outcome`].
//!
//! **Outbound safety.** Unless an action sets `allow_private_targets = true`,
//! it may reach only public addresses: not loopback, private (RFC 1918, IPv6
//! unique-local), link-local (where cloud metadata services live, such as
//! 169.254.169.254), carrier-grade NAT, multicast, documentation or
//! otherwise reserved ranges. A host name is checked after resolution, by
//! the client's own resolver, and the client connects to the addresses
//! that resolver returned and no others: a DNS answer that changes between
//! a check and the connection (rebinding) has nothing to slip through. An
//! address written in the URL is checked before the request. Proxies from
//! the environment are not used: they would resolve the name themselves.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::StatusCode;

use super::Outcome;

/// Redirects followed at most, and only within one origin.
const MAX_REDIRECTS: usize = 5;
/// The most of a response body read (the rest is dropped with the connection).
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// How much of an error response is kept as the run's error.
const ERROR_KEPT: usize = 300;

/// Ranges an action may not reach without `allow_private_targets`, beyond
/// what the standard library classifies (loopback, private, link-local…).
const RESERVED: &[&str] = &[
    "0.0.0.0/8",
    "100.64.0.0/10",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "240.0.0.0/4",
    // IPv6 forms that carry an IPv4 address a gateway would reach: NAT64
    // (well-known and local prefixes), SIIT, 6to4, Teredo.
    "64:ff9b::/96",
    "64:ff9b:1::/48",
    "::ffff:0:0:0/96",
    "2002::/16",
    "2001::/32",
    "100::/64",
    "2001:db8::/32",
    "fc00::/7",
    "fe80::/10",
    "fec0::/10",
];

/// Why an address is not a public one, or `None` when it is.
pub fn non_public(ip: IpAddr) -> Option<&'static str> {
    let ip = match ip {
        // ::ffff:10.0.0.1 (mapped) and ::10.0.0.1 (compatible) are 10.0.0.1;
        // ::1 becomes 0.0.0.1, refused as well.
        IpAddr::V6(v6) => v6.to_ipv4().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    let why = match ip {
        IpAddr::V4(v4) if v4.is_loopback() => "a loopback address",
        IpAddr::V4(v4) if v4.is_private() => "a private address",
        IpAddr::V4(v4) if v4.is_link_local() => "a link-local (metadata) address",
        IpAddr::V4(v4) if v4.is_unspecified() || v4.is_broadcast() => "not a host address",
        IpAddr::V4(v4) if v4.is_multicast() => "a multicast address",
        IpAddr::V6(v6) if v6.is_loopback() => "a loopback address",
        IpAddr::V6(v6) if v6.is_unspecified() => "not a host address",
        IpAddr::V6(v6) if v6.is_multicast() => "a multicast address",
        _ if RESERVED
            .iter()
            .filter_map(|n| n.parse::<IpNet>().ok())
            .any(|n| n.contains(&ip)) =>
        {
            "a private or reserved address"
        }
        _ => return None,
    };
    Some(why)
}

/// A resolver that returns only public addresses, so the client connects
/// only to what was checked.
struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<SocketAddr> = all
                .iter()
                .copied()
                .filter(|a| non_public(a.ip()).is_none())
                .collect();
            match (public.is_empty(), all.first()) {
                (false, _) => Ok(Box::new(public.into_iter()) as reqwest::dns::Addrs),
                (true, Some(first)) => Err(Blocked(format!(
                    "{host} resolves to {} ({}); set allow_private_targets = true to allow it",
                    first.ip(),
                    non_public(first.ip()).unwrap_or("not public")
                ))
                .into()),
                (true, None) => Err(Blocked(format!("{host} has no address")).into()),
            }
        })
    }
}

/// A target refused by the outbound policy (not worth retrying as is).
#[derive(Debug)]
struct Blocked(String);

impl std::fmt::Display for Blocked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Blocked {}

/// The client of one action.
pub fn client(timeout: Duration, allow_private: bool) -> reqwest::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .timeout(timeout)
        .user_agent(concat!("kaching/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::custom(|attempt| {
            let same_origin = attempt
                .previous()
                .first()
                .is_some_and(|first| first.origin() == attempt.url().origin());
            if same_origin && attempt.previous().len() <= MAX_REDIRECTS {
                attempt.follow()
            } else {
                attempt.stop()
            }
        }));
    if !allow_private {
        builder = builder.no_proxy().dns_resolver(Arc::new(PublicOnly));
    }
    builder.build()
}

/// The policy's verdict on a URL whose host is an address (a name is
/// checked by the resolver): the run's error, or `None` to go ahead.
pub fn refuse_literal(url: &reqwest::Url, allow_private: bool) -> Option<String> {
    if allow_private {
        return None;
    }
    let ip = match url.host()? {
        url::Host::Ipv4(v4) => IpAddr::V4(v4),
        url::Host::Ipv6(v6) => IpAddr::V6(v6),
        url::Host::Domain(_) => return None,
    };
    non_public(ip).map(|why| {
        format!("the target {ip} is {why}; set allow_private_targets = true to allow it")
    })
}

/// How a response ends a run: 2xx done (but 207, a batch API's "some
/// items failed", fails: an action sends one item); 408, 429 and 5xx
/// retried (honouring `Retry-After`); any other status failed at once,
/// with the start of the body kept (email-shaped words and the action's
/// own `secrets`, should the answer echo the request, masked).
pub async fn outcome(response: reqwest::Response, secrets: &[&str]) -> Outcome {
    let status = response.status();
    let after = retry_after(response.headers());
    let body = read_capped(response).await;
    if status.is_success() && status != StatusCode::MULTI_STATUS {
        return Outcome::Done;
    }
    let mut body = String::from_utf8_lossy(&body).into_owned();
    for s in secrets.iter().filter(|s| !s.is_empty()) {
        body = body.replace(s, "[secret]");
    }
    let excerpt = excerpt(body.as_bytes());
    let error = if excerpt.is_empty() {
        format!("the target answered {status}")
    } else {
        format!("the target answered {status}: {excerpt}")
    };
    if status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
    {
        Outcome::Retry { error, after }
    } else {
        Outcome::Failed { error }
    }
}

/// A transport error as a run's end: a refused target fails, the rest retry.
pub fn transport(e: reqwest::Error) -> Outcome {
    let mut source: Option<&dyn std::error::Error> = Some(&e);
    while let Some(s) = source {
        if let Some(b) = s.downcast_ref::<Blocked>() {
            return Outcome::Failed { error: b.0.clone() };
        }
        source = s.source();
    }
    Outcome::retry(format!("cannot deliver: {}", describe(e)))
}

/// At most [`MAX_RESPONSE_BYTES`] of the body.
async fn read_capped(mut response: reqwest::Response) -> Vec<u8> {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        let room = MAX_RESPONSE_BYTES - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= MAX_RESPONSE_BYTES {
            break;
        }
    }
    body
}

/// The start of an error body as one line, words with an `@` masked (an
/// API may echo the buyer's email back).
fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(ERROR_KEPT * 2)]);
    let masked: Vec<&str> = text
        .split_whitespace()
        .map(|w| if w.contains('@') { "[email]" } else { w })
        .collect();
    let mut line = masked.join(" ");
    if line.len() > ERROR_KEPT {
        let mut cut = ERROR_KEPT;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
        line.push('…');
    }
    line.chars().filter(|c| !c.is_control()).collect()
}

/// Seconds, or an HTTP date.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    (at.with_timezone(&chrono::Utc) - chrono::Utc::now())
        .to_std()
        .ok()
}

/// A transport error without the URL (its path or query may hold a token).
fn describe(e: reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "connection failed".into()
    } else {
        e.without_url().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("120"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(120)));
        let later = (chrono::Utc::now() + chrono::Duration::seconds(300)).to_rfc2822();
        h.insert(RETRY_AFTER, HeaderValue::from_str(&later).unwrap());
        let d = retry_after(&h).unwrap().as_secs();
        assert!((295..=300).contains(&d), "{d}");
        h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn only_public_addresses_pass() {
        for blocked in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "192.0.2.1",
            "::1",
            "::",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::a00:1",
            "::ffff:0:a00:1",
            "2002:a00:1::1",
            "2001:0:4136:e378::1",
            "2001:db8::1",
        ] {
            let ip: IpAddr = blocked.parse().unwrap();
            assert!(non_public(ip).is_some(), "{blocked} should be refused");
        }
        for public in ["93.184.216.34", "8.8.8.8", "1.1.1.1", "2606:4700::1111"] {
            let ip: IpAddr = public.parse().unwrap();
            assert_eq!(non_public(ip), None, "{public} is public");
        }
    }

    #[test]
    fn literal_addresses_in_urls_are_checked() {
        let url = |u: &str| reqwest::Url::parse(u).unwrap();
        assert!(refuse_literal(&url("http://127.0.0.1:8080/x"), false).is_some());
        assert!(refuse_literal(&url("http://[::1]/x"), false).is_some());
        assert!(refuse_literal(&url("http://[::ffff:127.0.0.1]/x"), false).is_some());
        assert!(refuse_literal(&url("http://169.254.169.254/latest"), false).is_some());
        assert_eq!(refuse_literal(&url("http://127.0.0.1/x"), true), None);
        assert_eq!(refuse_literal(&url("https://8.8.8.8/x"), false), None);
        assert_eq!(refuse_literal(&url("https://example.com/x"), false), None);
    }

    #[test]
    fn error_excerpts_are_short_and_mask_emails() {
        let e = excerpt(b"{\"message\":\"Contact already exists: zoe@example.com\"}\n\n");
        assert!(!e.contains("zoe@"), "{e}");
        assert!(e.contains("[email]"), "{e}");
        let long = excerpt(&[b'x'; 5000]);
        assert!(long.chars().count() <= ERROR_KEPT + 1);
    }

    #[tokio::test]
    async fn names_that_resolve_to_loopback_are_refused() {
        use reqwest::dns::Resolve as _;
        let name: reqwest::dns::Name = "localhost".parse().unwrap();
        let err = match PublicOnly.resolve(name).await {
            Ok(_) => panic!("localhost resolved"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("allow_private_targets"), "{err}");
    }
}
