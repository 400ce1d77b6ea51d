//! Who is asking: the client address (the TCP peer, or what a trusted proxy says), and
//! whether it may talk to the gateway at all. A denied address gets 403 and nothing else.

use std::net::{IpAddr, SocketAddr};

use actix_web::dev::ServiceRequest;
use actix_web::http::header::{HeaderMap, HeaderName};
use ipnet::IpNet;

use crate::config::AllowlistConfig;
use crate::error::GatewayError;

/// The allowlist and the proxies whose forwarding headers are believed.
#[derive(Debug, Clone)]
pub struct Allowlist {
    cidrs: Option<Vec<IpNet>>,
    trusted: Vec<IpNet>,
}

const FORWARDED: HeaderName = HeaderName::from_static("forwarded");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

fn contains(nets: &[IpNet], ip: IpAddr) -> bool {
    nets.iter().any(|n| n.contains(&ip))
}

impl Allowlist {
    pub fn new(config: &AllowlistConfig) -> Self {
        Self {
            cidrs: config.cidrs.clone(),
            trusted: config.trusted_proxies.clone(),
        }
    }

    pub fn allows(&self, ip: IpAddr) -> bool {
        self.cidrs.as_deref().is_none_or(|nets| contains(nets, ip))
    }

    /// Whether a TCP peer may open a connection at all: it is allowed, or it is a trusted
    /// proxy (whose clients are checked per request, from its forwarding headers).
    pub fn admits_peer(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.allows(peer) || contains(&self.trusted, peer)
    }

    /// The client address: the peer itself unless the peer is a trusted proxy; then the
    /// forwarding chain read from the right, skipping trusted hops. A spoofed header from
    /// an untrusted peer is never read.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !contains(&self.trusted, peer) {
            return peer;
        }
        let chain = forwarded_chain(headers);
        let mut client = peer;
        for hop in chain.iter().rev() {
            match hop {
                Some(ip) => {
                    client = ip.to_canonical();
                    if !contains(&self.trusted, client) {
                        return client;
                    }
                }
                // An obfuscated or garbled hop: trust stops at the last hop we could read.
                None => return client,
            }
        }
        client
    }
}

/// The hops of `Forwarded` (RFC 7239) if present, else of `X-Forwarded-For`, left to right;
/// `None` marks a hop that is not an IP address.
fn forwarded_chain(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let values = |name: &HeaderName| -> Vec<String> {
        headers
            .get_all(name)
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    };
    let forwarded = values(&FORWARDED);
    if !forwarded.is_empty() {
        return forwarded
            .iter()
            .map(|element| {
                element
                    .split(';')
                    .filter_map(|pair| pair.trim().split_once('='))
                    .find(|(k, _)| k.trim().eq_ignore_ascii_case("for"))
                    .and_then(|(_, v)| parse_node(v.trim().trim_matches('"')))
            })
            .collect();
    }
    values(&X_FORWARDED_FOR)
        .iter()
        .map(|v| parse_node(v))
        .collect()
}

/// `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`, `[2001:db8::1]`, `[2001:db8::1]:80`.
fn parse_node(v: &str) -> Option<IpAddr> {
    v.parse::<IpAddr>()
        .ok()
        .or_else(|| v.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| v.strip_prefix('[')?.strip_suffix(']')?.parse().ok())
}

/// The client address of `req` (see `Allowlist::client_ip`); `None` without a peer address.
pub fn client(allowlist: &Allowlist, req: &ServiceRequest) -> Option<IpAddr> {
    let peer = req.peer_addr()?.ip();
    Some(allowlist.client_ip(peer, req.headers()))
}

/// `client` (from [`client`]) if the allowlist admits it.
pub fn check(allowlist: &Allowlist, client: Option<IpAddr>) -> Result<IpAddr, GatewayError> {
    let ip = client.ok_or(GatewayError::IpDenied)?;
    if !allowlist.allows(ip) {
        tracing::debug!(client_ip = %ip, "address not in the allowlist");
        return Err(GatewayError::IpDenied);
    }
    Ok(ip)
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::HeaderValue;

    fn list(cidrs: &[&str], trusted: &[&str]) -> Allowlist {
        let nets = |v: &[&str]| v.iter().map(|s| s.parse().unwrap()).collect::<Vec<IpNet>>();
        Allowlist {
            cidrs: Some(nets(cidrs)),
            trusted: nets(trusted),
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v4_v6_and_mapped_addresses() {
        let l = list(&["10.0.0.0/8", "2001:db8::/32"], &[]);
        assert!(l.allows(ip("10.1.2.3")));
        assert!(!l.allows(ip("11.0.0.1")));
        assert!(l.allows(ip("2001:db8::5")));
        assert!(!l.allows(ip("2001:db9::5")));
        let mapped = l.client_ip(ip("::ffff:10.0.0.1"), &HeaderMap::new());
        assert_eq!(mapped, ip("10.0.0.1"));
        assert!(Allowlist {
            cidrs: None,
            trusted: vec![]
        }
        .allows(ip("8.8.8.8")));
    }

    #[test]
    fn forwarding_headers_only_from_trusted_peers_read_from_the_right() {
        let l = list(&["10.0.0.0/8"], &["192.168.1.0/24"]);
        let spoof = headers(&[("x-forwarded-for", "10.0.0.9")]);
        assert_eq!(
            l.client_ip(ip("203.0.113.5"), &spoof),
            ip("203.0.113.5"),
            "untrusted peer"
        );
        let chain = headers(&[("x-forwarded-for", "10.9.9.9, 203.0.113.7, 192.168.1.3")]);
        assert_eq!(
            l.client_ip(ip("192.168.1.2"), &chain),
            ip("203.0.113.7"),
            "rightmost untrusted hop"
        );
        let two_lines = headers(&[
            ("x-forwarded-for", "10.9.9.9"),
            ("x-forwarded-for", "10.1.1.1"),
        ]);
        assert_eq!(l.client_ip(ip("192.168.1.2"), &two_lines), ip("10.1.1.1"));
        let all_trusted = headers(&[("x-forwarded-for", "192.168.1.9")]);
        assert_eq!(
            l.client_ip(ip("192.168.1.2"), &all_trusted),
            ip("192.168.1.9")
        );
        let garbled = headers(&[("x-forwarded-for", "10.9.9.9, nonsense")]);
        assert_eq!(l.client_ip(ip("192.168.1.2"), &garbled), ip("192.168.1.2"));
        let none = HeaderMap::new();
        assert_eq!(l.client_ip(ip("192.168.1.2"), &none), ip("192.168.1.2"));
    }

    #[test]
    fn rfc7239_forwarded_wins_and_parses_ports_and_v6() {
        let l = list(&["10.0.0.0/8"], &["192.168.1.0/24"]);
        let h = headers(&[
            (
                "forwarded",
                "for=10.5.5.5;proto=https, for=\"[2001:db8::7]:4711\";by=x",
            ),
            ("x-forwarded-for", "10.0.0.1"),
        ]);
        assert_eq!(l.client_ip(ip("192.168.1.2"), &h), ip("2001:db8::7"));
        let h = headers(&[("forwarded", "for=10.5.5.5:8080")]);
        assert_eq!(l.client_ip(ip("192.168.1.2"), &h), ip("10.5.5.5"));
        let h = headers(&[("forwarded", "for=10.5.5.5, for=unknown")]);
        assert_eq!(
            l.client_ip(ip("192.168.1.2"), &h),
            ip("192.168.1.2"),
            "obfuscated hop stops the walk"
        );
    }
}
