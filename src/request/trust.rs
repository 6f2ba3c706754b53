//! The trust boundary (SPEC §2.1), and the only place that decides it: identity headers
//! count only from a trusted connection — by default one whose TCP peer is in
//! `trusted_proxies`; with `tls.client_ca_file`, only one that presented a verified client
//! certificate with an accepted name (`tls.trusted_client_names`), the peer address then
//! counting for nothing. Those two are the only inputs: `X-Forwarded-For` and friends are
//! written by clients too and never grant trust. It also decides which request headers
//! never reach the app — the identity headers from an untrusted connection, every `_`
//! spelling of them from any peer, and the `strip_headers` (SPEC §3c) in every spelling
//! from any peer.

use std::net::IpAddr;

use http::header::{HeaderMap, HeaderName};
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

/// What a verified client certificate says about the peer (set after the TLS handshake).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    /// Its DNS subject alternative names, lower case; the common name only when it has no
    /// subject alternative name of any kind (RFC 6125 §6.4.4).
    pub names: Vec<String>,
}

/// Where a request's trust comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrustSource {
    /// A verified client certificate with an accepted name (`tls.client_ca_file`).
    Certificate,
    /// The TCP peer is in `trusted_proxies`.
    Address,
    /// Not trusted: identity headers are stripped, no token.
    None,
}

impl TrustSource {
    /// The `source` label of `released_sidecar_requests_by_trust_total`.
    pub fn label(self) -> &'static str {
        match self {
            TrustSource::Certificate => "certificate",
            TrustSource::Address => "address",
            TrustSource::None => "none",
        }
    }
}

/// How a listener decides trust.
#[derive(Debug, Clone, Copy)]
pub enum TrustRule<'a> {
    /// By the TCP peer's address (`trusted_proxies`).
    Address(&'a TrustedProxies),
    /// Only by a verified client certificate carrying one of these names (any name when
    /// empty). Addresses never count then: the two are not mixed.
    Certificate(&'a [String]),
}

impl TrustRule<'_> {
    /// The verdict for a connection from `peer` that presented `cert` (already verified
    /// by the TLS layer against the CA).
    pub fn decide(self, peer: Option<IpAddr>, cert: Option<&ClientCert>) -> TrustSource {
        match self {
            TrustRule::Address(proxies) if peer.is_some_and(|ip| proxies.contains(ip)) => {
                TrustSource::Address
            }
            TrustRule::Certificate(allowed)
                if cert.is_some_and(|c| {
                    allowed.is_empty() || c.names.iter().any(|n| allowed.contains(n))
                }) =>
            {
                TrustSource::Certificate
            }
            _ => TrustSource::None,
        }
    }
}

/// Every identity header named anywhere in the config (top level, routes, presets,
/// `jwt.header`), the `strip_headers`, and the rule for which spellings of them are
/// removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdentityHeaders {
    names: Vec<HeaderName>,
    /// `strip_headers`: another gateway family's names, never passed to the app.
    stripped: Vec<HeaderName>,
    /// Whether a configured name itself has `_` (then `-` spellings need a look too).
    underscored: bool,
}

/// Why a request header was removed before the request went to the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strip {
    /// An identity header from an untrusted connection (see [`TrustRule`]).
    UntrustedPeer,
    /// Another spelling (`_` for `-`) of an identity header, from any peer.
    Respelled,
    /// A `strip_headers` name, in any spelling, from any peer.
    Configured,
}

impl Strip {
    /// The `reason` label of `released_sidecar_identity_headers_stripped_total`.
    pub fn label(self) -> &'static str {
        match self {
            Strip::UntrustedPeer => "untrusted_peer",
            Strip::Respelled => "respelled",
            Strip::Configured => "strip_headers",
        }
    }
}

impl IdentityHeaders {
    /// The set of `names`, each once.
    pub fn new(names: impl IntoIterator<Item = HeaderName>) -> Self {
        let mut out: Vec<HeaderName> = Vec::new();
        for name in names {
            if !out.contains(&name) {
                out.push(name);
            }
        }
        let underscored = out.iter().any(|h| h.as_str().contains('_'));
        Self {
            names: out,
            stripped: Vec::new(),
            underscored,
        }
    }

    /// The same, with `names` (`strip_headers`) removed from every request in every
    /// spelling.
    pub fn with_stripped(mut self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        for name in names {
            if !self.stripped.contains(&name) {
                self.underscored |= name.as_str().contains('_');
                self.stripped.push(name);
            }
        }
        self
    }

    /// The headers as configured.
    pub fn names(&self) -> &[HeaderName] {
        &self.names
    }

    /// The `strip_headers` as configured.
    pub fn stripped(&self) -> &[HeaderName] {
        &self.stripped
    }

    /// The request headers that must not reach the app, and why: every header whose name,
    /// with `_` read as `-`, equals an identity header's but is spelled differently (CGI,
    /// Rack and WSGI servers fold the two spellings into one variable, so a client behind
    /// the gateway could otherwise set the identity the app sees — Puma CVE-2024-45614),
    /// from every peer; from an untrusted peer, the identity headers themselves; and the
    /// `strip_headers` in every spelling, from every peer. Each header once.
    pub fn to_strip(&self, headers: &HeaderMap, trusted: bool) -> Vec<(HeaderName, Strip)> {
        let mut out: Vec<(HeaderName, Strip)> = Vec::new();
        for name in self.stripped.iter().filter(|h| headers.contains_key(*h)) {
            out.push((name.clone(), Strip::Configured));
        }
        if !trusted {
            for name in self.names.iter().filter(|h| headers.contains_key(*h)) {
                if !out.iter().any(|(n, _)| n == name) {
                    out.push((name.clone(), Strip::UntrustedPeer));
                }
            }
        }
        // Header names are stored lower-case; only names with `_` can be a second
        // spelling (unless a configured name has one), so most requests stop here.
        for name in headers.keys() {
            if !self.underscored && !name.as_str().contains('_') {
                continue;
            }
            let folds_into = |list: &[HeaderName]| {
                list.iter()
                    .any(|h| h != name && same_when_folded(name.as_str(), h.as_str()))
            };
            let why = if folds_into(&self.stripped) {
                Strip::Configured
            } else if folds_into(&self.names) {
                Strip::Respelled
            } else {
                continue;
            };
            if !out.iter().any(|(n, _)| n == name) {
                out.push((name.clone(), why));
            }
        }
        out
    }
}

/// Whether two lower-case header names are one variable to an app server that reads `_`
/// and `-` alike.
fn same_when_folded(a: &str, b: &str) -> bool {
    let fold = |c: u8| if c == b'_' { b'-' } else { c };
    a.len() == b.len() && a.bytes().zip(b.bytes()).all(|(x, y)| fold(x) == fold(y))
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

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        map
    }

    #[test]
    fn underscore_spellings_are_stripped_from_every_peer() {
        let ids = IdentityHeaders::new([
            HeaderName::from_static("x-forwarded-user"),
            HeaderName::from_static("x-forwarded-email"),
            HeaderName::from_static("x-goog-iap-jwt-assertion"),
        ]);
        let request = headers(&[
            ("X-Forwarded-User", "alice"),
            ("X_Forwarded_User", "mallory"),
            ("x_forwarded_USER", "mallory"),
            ("X_Forwarded-Email", "m@example.com"),
            ("x_goog_iap_jwt_assertion", "forged"),
            ("X_Request_Id", "kept"),
            ("X-Forwarded_Users", "kept: a different name"),
            ("Accept", "text/html"),
        ]);
        let names = |v: Vec<(HeaderName, Strip)>| {
            let mut v: Vec<String> = v
                .iter()
                .map(|(h, why)| format!("{h} {}", why.label()))
                .collect();
            v.sort();
            v
        };
        let respelled = [
            "x_forwarded-email respelled",
            "x_forwarded_user respelled",
            "x_goog_iap_jwt_assertion respelled",
        ];
        assert_eq!(names(ids.to_strip(&request, true)), respelled);
        let mut untrusted = respelled.to_vec();
        untrusted.push("x-forwarded-user untrusted_peer");
        untrusted.sort();
        assert_eq!(names(ids.to_strip(&request, false)), untrusted);
        assert!(ids
            .to_strip(&headers(&[("accept", "*/*")]), false)
            .is_empty());
    }

    #[test]
    fn a_configured_underscore_name_is_kept_and_its_hyphen_spelling_stripped() {
        let ids = IdentityHeaders::new([HeaderName::from_static("x_remote_user")]);
        let request = headers(&[("X_Remote_User", "alice"), ("X-Remote-User", "mallory")]);
        let stripped = ids.to_strip(&request, true);
        assert_eq!(
            stripped,
            [(HeaderName::from_static("x-remote-user"), Strip::Respelled)]
        );
    }

    #[test]
    fn strip_headers_go_in_every_spelling_from_every_peer_each_once() {
        let ids = IdentityHeaders::new([HeaderName::from_static("x-auth-request-user")])
            .with_stripped([
                HeaderName::from_static("x-forwarded-user"),
                HeaderName::from_static("x-forwarded-email"),
                HeaderName::from_static("x-auth-request-user"),
            ]);
        let request = headers(&[
            ("X-Auth-Request-User", "carol"),
            ("X-Forwarded-User", "mallory"),
            ("X_Forwarded_User", "mallory"),
            ("x-forwarded_EMAIL", "m@example.com"),
            ("X-Forwarded-Users", "kept: a different name"),
            ("X_Forwarded_Host", "kept"),
            ("Accept", "text/html"),
        ]);
        for trusted in [true, false] {
            let mut got: Vec<String> = ids
                .to_strip(&request, trusted)
                .iter()
                .map(|(h, why)| format!("{h} {}", why.label()))
                .collect();
            got.sort();
            assert_eq!(
                got,
                [
                    "x-auth-request-user strip_headers",
                    "x-forwarded-user strip_headers",
                    "x-forwarded_email strip_headers",
                    "x_forwarded_user strip_headers",
                ],
                "trusted: {trusted}"
            );
        }
        let plain = IdentityHeaders::new([HeaderName::from_static("x-auth-request-user")]);
        assert!(plain
            .to_strip(&request, true)
            .iter()
            .all(|(h, _)| h != "x-forwarded-user"));
    }

    #[test]
    fn certificate_trust_never_mixes_with_address_trust() {
        let loopback = TrustedProxies::loopback();
        let local = Some("127.0.0.1".parse().unwrap());
        let gateway = ClientCert {
            names: vec!["oauth2-proxy.gateway.internal".into()],
        };
        let other = ClientCert {
            names: vec!["laptop.example.com".into()],
        };
        let names = ["oauth2-proxy.gateway.internal".to_string()];
        let by_cert = TrustRule::Certificate(&names);
        assert_eq!(
            by_cert.decide(local, Some(&gateway)),
            TrustSource::Certificate
        );
        assert_eq!(by_cert.decide(local, Some(&other)), TrustSource::None);
        assert_eq!(
            by_cert.decide(local, None),
            TrustSource::None,
            "no address trust"
        );
        assert_eq!(
            TrustRule::Certificate(&[]).decide(None, Some(&other)),
            TrustSource::Certificate,
            "no names: any certificate the CA signed"
        );
        let by_address = TrustRule::Address(&loopback);
        assert_eq!(by_address.decide(local, None), TrustSource::Address);
        assert_eq!(
            by_address.decide(Some("10.0.0.1".parse().unwrap()), Some(&gateway)),
            TrustSource::None
        );
    }

    #[test]
    fn empty_list_trusts_nobody() {
        assert!(!TrustedProxies::new(vec![]).contains("127.0.0.1".parse().unwrap()));
    }
}
