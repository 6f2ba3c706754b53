//! The trust boundary (SPEC §2.1): identity headers count only when the TCP peer is one
//! of the `trusted_proxies`. The peer address is the only input; `X-Forwarded-For` and
//! friends are written by clients too and never grant trust.

use std::net::IpAddr;

use ipnet::IpNet;

/// The networks whose connections may carry identity headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// The default: loopback only (`127.0.0.0/8`, `::1/128`).
    pub fn loopback() -> Self {
        Self(vec![
            "127.0.0.0/8".parse().expect("valid literal"),
            "::1/128".parse().expect("valid literal"),
        ])
    }

    /// Trusts exactly these networks (an empty list trusts nobody).
    pub fn new(nets: Vec<IpNet>) -> Self {
        Self(nets)
    }

    /// Whether a connection from `peer` may carry identity headers.
    pub fn contains(&self, peer: IpAddr) -> bool {
        // A dual-stack listener reports IPv4 peers as ::ffff:a.b.c.d.
        let peer = peer.to_canonical();
        self.0.iter().any(|net| net.contains(&peer))
    }

    /// The configured networks.
    pub fn nets(&self) -> &[IpNet] {
        &self.0
    }
}

/// Parses a CIDR (`10.0.0.0/8`) or a bare address (`10.0.0.7`, meaning a /32 or /128).
pub fn parse_net(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    if let Ok(net) = text.parse::<IpNet>() {
        if net.trunc() != net {
            return Err(format!(
                "`{text}` has host bits set; did you mean `{}`?",
                net.trunc()
            ));
        }
        return Ok(net);
    }
    text.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("`{text}` is not an IP address or CIDR range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_default_covers_both_families_and_mapped_v4() {
        let t = TrustedProxies::loopback();
        for ip in ["127.0.0.1", "127.1.2.3", "::1", "::ffff:127.0.0.1"] {
            assert!(t.contains(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["10.0.0.1", "192.168.1.1", "::2", "::ffff:10.0.0.1"] {
            assert!(!t.contains(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn nets_parse_from_cidr_or_bare_address() {
        assert_eq!(parse_net("10.0.0.0/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(parse_net("10.0.0.7").unwrap().to_string(), "10.0.0.7/32");
        assert_eq!(parse_net("fd00::/8").unwrap().to_string(), "fd00::/8");
        assert!(parse_net("10.0.0.1/8").unwrap_err().contains("10.0.0.0/8"));
        assert!(parse_net("10.0.0.0/33").is_err());
        assert!(parse_net("localhost").is_err());
    }

    #[test]
    fn empty_list_trusts_nobody() {
        assert!(!TrustedProxies::new(vec![]).contains("127.0.0.1".parse().unwrap()));
    }
}
