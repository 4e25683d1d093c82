//! Which address a request really comes from. `X-Forwarded-For` and
//! `Forwarded` are believed only when the socket peer is a trusted proxy, and
//! then the right-most address that is not itself a trusted proxy wins: the
//! left-hand entries are whatever the client chose to send.

use std::net::IpAddr;

use axum::http::HeaderMap;
use ipnet::IpNet;

use crate::runtime::{canonical, contains};

/// The client address for a request from `peer`.
pub fn resolve(peer: IpAddr, headers: &HeaderMap, trusted_proxies: &[IpNet]) -> IpAddr {
    let peer = canonical(peer);
    if !contains(trusted_proxies, peer) {
        return peer;
    }
    let chain = forwarded_chain(headers);
    // Walk from the proxy towards the client; stop at the first hop we do not trust.
    let mut client = peer;
    for ip in chain.iter().rev() {
        client = canonical(*ip);
        if !contains(trusted_proxies, client) {
            break;
        }
    }
    client
}

/// The addresses of `Forwarded: for=…` (RFC 7239) if present, else of
/// `X-Forwarded-For`, in header order (left = furthest from us). An entry
/// that is not an address (`unknown`, an obfuscated name) ends the chain
/// there, so nothing left of it is believed.
fn forwarded_chain(headers: &HeaderMap) -> Vec<IpAddr> {
    let forwarded: Vec<&str> = headers
        .get_all("forwarded")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|element| {
            element.split(';').find_map(|pair| {
                let (k, v) = pair.trim().split_once('=')?;
                k.trim().eq_ignore_ascii_case("for").then(|| v.trim())
            })
        })
        .collect();
    let items: Vec<&str> = if forwarded.is_empty() {
        headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect()
    } else {
        forwarded
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items.iter().rev() {
        match parse_node(item) {
            Some(ip) => out.push(ip),
            None => break,
        }
    }
    out.reverse();
    out
}

/// `1.2.3.4`, `1.2.3.4:5678`, `"[2001:db8::1]:443"`, `2001:db8::1`.
fn parse_node(s: &str) -> Option<IpAddr> {
    let s = s.trim().trim_matches('"');
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split_once(']').and_then(|(ip, _)| ip.parse().ok());
    }
    s.rsplit_once(':').and_then(|(ip, _)| ip.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn nets(s: &[&str]) -> Vec<IpNet> {
        s.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn resolves_the_client_address() {
        let proxies = nets(&["10.0.0.0/8"]);
        let peer_proxy: IpAddr = "10.0.0.5".parse().unwrap();
        let peer_other: IpAddr = "198.51.100.9".parse().unwrap();
        type Case<'a> = (IpAddr, &'a [(&'static str, &'a str)], &'a str);
        let cases: &[Case] = &[
            // not from a trusted proxy: headers are ignored
            (
                peer_other,
                &[("x-forwarded-for", "203.0.113.1")],
                "198.51.100.9",
            ),
            // from a trusted proxy: the right-most untrusted entry
            (
                peer_proxy,
                &[("x-forwarded-for", "1.1.1.1, 203.0.113.1")],
                "203.0.113.1",
            ),
            (
                peer_proxy,
                &[("x-forwarded-for", "203.0.113.1, 10.0.0.7")],
                "203.0.113.1",
            ),
            (
                peer_proxy,
                &[
                    ("x-forwarded-for", "203.0.113.1"),
                    ("x-forwarded-for", "10.0.0.7"),
                ],
                "203.0.113.1",
            ),
            // Forwarded wins over X-Forwarded-For
            (
                peer_proxy,
                &[
                    ("forwarded", "for=203.0.113.2;proto=https"),
                    ("x-forwarded-for", "203.0.113.1"),
                ],
                "203.0.113.2",
            ),
            (
                peer_proxy,
                &[("forwarded", "for=\"[2001:db8::1]:443\"")],
                "2001:db8::1",
            ),
            (
                peer_proxy,
                &[("forwarded", "for=192.0.2.60:8080, for=10.0.0.9")],
                "192.0.2.60",
            ),
            // garbage ends the chain: fall back to the last proxy seen
            (peer_proxy, &[("x-forwarded-for", "unknown")], "10.0.0.5"),
            (
                peer_proxy,
                &[("x-forwarded-for", "203.0.113.1, junk, 10.0.0.7")],
                "10.0.0.7",
            ),
            // no header at all
            (peer_proxy, &[], "10.0.0.5"),
        ];
        for (peer, h, want) in cases {
            let got = resolve(*peer, &headers(h), &proxies);
            assert_eq!(got.to_string(), *want, "peer {peer}, headers {h:?}");
        }
    }

    #[test]
    fn ipv4_mapped_addresses_match_ipv4_networks() {
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert!(contains(&nets(&["10.0.0.0/8"]), mapped));
    }
}
