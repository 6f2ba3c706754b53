//! What the app may be sent: pingora-proxy's rules for turning a client's request head into
//! the upstream's (hop-by-hop and `Connection`-nominated fields, WebSocket-only upgrades,
//! `Host` against the URI authority, chunked framing for unframed bodies) and its check
//! that a `101` answers an upgrade both sides asked for. These are `pub(crate)` in
//! pingora-proxy, so they are ported here unchanged from pingora-proxy 0.9.1
//! (`proxy_common.rs` and `lib.rs`, Apache-2.0, Copyright 2026 Cloudflare, Inc.) — request
//! smuggling lives in exactly these details, so none of them is rewritten or relaxed.
//! Only the parts for an HTTP/1 client and an HTTP/1 app are kept (the request loop serves
//! nothing else).

use http::header::{self, HeaderName};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::authority::{
    raw_target_authority, validate_request_authority, RawTargetAuthority,
};
use pingora::upstreams::peer::{H1UpgradePolicy, HttpUpstreamRequestPolicy};
use pingora::{Error, ErrorType::InvalidHTTPHeader, OrErr, Result};

const MAX_CONNECTION_NOMINATIONS: usize = 10;
const KEEP_ALIVE: &str = "keep-alive";
const PROXY_CONNECTION: &str = "proxy-connection";
const HTTP2_SETTINGS: &str = "http2-settings";

fn is_tchar(byte: u8) -> bool {
    byte.is_ascii_alphanumeric()
        || matches!(
            byte,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}

fn is_websocket_upgrade_request(req: &RequestHeader, downstream_is_http11: bool) -> bool {
    downstream_is_http11
        && req
            .headers
            .get(header::UPGRADE)
            .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"websocket"))
}

struct ConnectionNominations {
    headers: [Option<HeaderName>; MAX_CONNECTION_NOMINATIONS],
    len: usize,
}

impl ConnectionNominations {
    fn parse(req: &RequestHeader, reject_malformed: bool) -> Result<Self> {
        let mut headers = std::array::from_fn(|_| None);
        let mut len = 0;
        let mut nomination_count = 0;

        // This is inspired by Envoy's defensive Connection-header sanitization checks. Bound the
        // amount of token processing so it cannot become a request-time DoS vector.
        for token in req
            .headers
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|value| value.as_bytes().split(|byte| *byte == b','))
            .map(|token| token.trim_ascii())
            .filter(|token| !token.is_empty())
        {
            nomination_count += 1;
            if nomination_count >= MAX_CONNECTION_NOMINATIONS {
                return Error::e_explain(
                    InvalidHTTPHeader,
                    "too many Connection header nominations",
                );
            }

            // `:`-prefixed tokens nominate pseudo-headers (e.g. `:authority`); rejected in both modes.
            if token.starts_with(b":") {
                return Error::e_explain(
                    InvalidHTTPHeader,
                    "protected header cannot be nominated by the Connection header",
                );
            }

            // A nomination is an HTTP `token` (RFC 9110 §5.6.2). We validate that ourselves rather
            // than trust `HeaderName::from_bytes`, which may accept non-`token` bytes and let a
            // decorated spelling like `Connection: "X-Forwarded-For"` slip past the protected-name
            // check below. The RFC lets a recipient reject or ignore a malformed option, so
            // `reject_malformed` is a policy choice: fail closed (default) or tolerate it.
            if reject_malformed && !token.iter().all(|&byte| is_tchar(byte)) {
                return Error::e_explain(
                    InvalidHTTPHeader,
                    "invalid token nominated by the Connection header",
                );
            }

            // `HeaderName` lowercases, so the protected-set check below cannot be evaded via casing.
            let name = match HeaderName::from_bytes(token) {
                Ok(name) => name,
                // Strict mode: every token is valid `tchar` and parses; a residual failure (e.g. a
                // length limit) still fails closed. Lenient mode: an unparsable token names
                // nothing, so ignore it.
                Err(_) if reject_malformed => {
                    return Error::e_explain(
                        InvalidHTTPHeader,
                        "invalid token nominated by the Connection header",
                    );
                }
                Err(_) => continue,
            };

            if matches!(
                name.as_str(),
                "host" | "x-forwarded-for" | "x-forwarded-host" | "x-forwarded-proto"
            ) {
                return Error::e_explain(
                    InvalidHTTPHeader,
                    "protected header cannot be nominated by the Connection header",
                );
            }

            headers[len] = Some(name);
            len += 1;
        }

        Ok(Self { headers, len })
    }

    fn remove_from(self, req: &mut RequestHeader) {
        for name in self.headers.into_iter().take(self.len).flatten() {
            req.remove_header(&name);
        }
    }
}

fn strip_standard_hop_by_hop_headers(req: &mut RequestHeader) {
    req.remove_header(KEEP_ALIVE);
    req.remove_header(PROXY_CONNECTION);
    req.remove_header(&header::PROXY_AUTHENTICATE);
    req.remove_header(&header::PROXY_AUTHORIZATION);
    req.remove_header(&header::TE);
    req.remove_header(&header::TRAILER);
    req.remove_header(&header::TRANSFER_ENCODING);
    req.remove_header(&header::CONNECTION);
    req.remove_header(&header::UPGRADE);
    req.remove_header(HTTP2_SETTINGS);
}

/// Set H1 `Host` from the URI or absolute-form authority.
///
/// A single matching `Host` is preserved; others are replaced ([RFC 9113 section 8.3.1]). Without
/// an authority, `Host` is preserved or inserted empty ([RFC 9112 section 3.2]).
///
/// # Errors
///
/// Returns `InvalidHTTPHeader` when the authority contains userinfo or cannot be represented as a
/// `Host` field value.
///
/// [RFC 9112 section 3.2]: https://www.rfc-editor.org/rfc/rfc9112.html#section-3.2
/// [RFC 9113 section 8.3.1]: https://www.rfc-editor.org/rfc/rfc9113.html#section-8.3.1
fn set_h1_host_from_authority(req: &mut RequestHeader) -> Result<()> {
    let authority = req
        .uri
        .authority()
        .map(|authority| authority.as_str().as_bytes())
        .or_else(|| raw_target_authority(req.raw_path()).authority());

    let Some(authority) = authority else {
        // No authority, use Host header.
        if req.headers.contains_key(header::HOST) {
            return Ok(());
        }
        // H1.1 requires Host even when the target has no authority; the H1 caller skips this for
        // Host-less HTTP/1.0 origin-form requests.
        return req.insert_header(header::HOST, "");
    };

    if authority.contains(&b'@') {
        return Error::e_explain(InvalidHTTPHeader, "userinfo in request authority");
    }

    // Avoid replacing the header-map entry when exactly one Host already matches the authority.
    let mut hosts = req.headers.get_all(header::HOST).iter();
    if hosts
        .next()
        .is_some_and(|host| host.as_bytes() == authority)
        && hosts.next().is_none()
    {
        return Ok(());
    }

    let host = http::HeaderValue::from_bytes(authority)
        .or_err(InvalidHTTPHeader, "invalid authority for Host header")?;

    req.insert_header(header::HOST, host)
}

/// Apply a filter-selected `Host` to the outbound authority.
///
/// Rewrites URI authority or H1 absolute-form; origin-form is unchanged.
/// Ambiguous targets are also unchanged so final authority validation can reject them.
///
/// # Errors
///
/// Returns `InvalidHTTPHeader` when `Host` contains userinfo or an invalid authority, or when a URI
/// rewrite would discard non-UTF-8 path bytes or produce an invalid URI.
fn reconcile_upstream_authority(req: &mut RequestHeader) -> Result<()> {
    let Some(host) = req.headers.get(header::HOST) else {
        return Ok(());
    };
    if host.as_bytes().contains(&b'@') {
        return Error::e_explain(InvalidHTTPHeader, "userinfo in Host header");
    }

    if let Some(authority) = req.uri.authority() {
        // Rebuilding via set_uri() clears the raw-byte fallback. Fail instead of replacing a
        // non-UTF-8 path with the URI's lossy replacement characters.
        if !req.raw_path_is_utf8() {
            return Error::e_explain(
                InvalidHTTPHeader,
                "non-UTF-8 path cannot be reconciled with URI authority",
            );
        }
        if host.as_bytes() == authority.as_str().as_bytes() {
            return Ok(());
        }
        let authority = parse_host_authority(host)?;
        let mut parts = http::uri::Parts::default();
        parts.scheme = req.uri.scheme().cloned();
        parts.authority = Some(authority);
        parts.path_and_query = req.uri.path_and_query().cloned();
        let uri = http::Uri::from_parts(parts).map_err(|cause| {
            Error::because(
                InvalidHTTPHeader,
                "failed to apply Host override to URI authority",
                cause,
            )
        })?;
        req.set_uri(uri);
        return Ok(());
    }

    match raw_target_authority(req.raw_path()) {
        RawTargetAuthority::None | RawTargetAuthority::AmbiguousAuthority => Ok(()),
        RawTargetAuthority::Absolute {
            scheme,
            authority,
            path_and_query,
        } => {
            if host.as_bytes() == authority {
                return Ok(());
            }
            parse_host_authority(host)?;
            let mut target =
                Vec::with_capacity(scheme.len() + 3 + host.as_bytes().len() + path_and_query.len());
            target.extend_from_slice(scheme);
            target.extend_from_slice(b"://");
            target.extend_from_slice(host.as_bytes());
            target.extend_from_slice(path_and_query);
            req.set_raw_path(&target)
        }
    }
}

fn parse_host_authority(host: &http::HeaderValue) -> Result<http::uri::Authority> {
    http::uri::Authority::try_from(host.as_bytes()).map_err(|cause| {
        Error::because(
            InvalidHTTPHeader,
            "invalid Host override for authority",
            cause,
        )
    })
}

/// Apply automatic request policy before application upstream request filtering.
pub fn sanitize_h1_upstream_request(
    req: &mut RequestHeader,
    policy: HttpUpstreamRequestPolicy,
    downstream_is_http11: bool,
) -> Result<()> {
    if policy == HttpUpstreamRequestPolicy::preserve() {
        return Ok(());
    }

    let nominations = policy
        .strip_connection_nominated
        .then(|| ConnectionNominations::parse(req, policy.reject_malformed_connection_nominations))
        .transpose()?;

    if policy.h1_upgrade == H1UpgradePolicy::Preserve && req.headers.contains_key(header::UPGRADE) {
        // An arbitrary upgrade may require any of the connection-nominated fields. Preserve the
        // complete request metadata rather than forwarding a partial handshake.
        return Ok(());
    }

    let websocket_upgrade = policy.h1_upgrade == H1UpgradePolicy::WebSocketOnly
        && is_websocket_upgrade_request(req, downstream_is_http11);
    if let Some(nominations) = nominations {
        nominations.remove_from(req);
    }

    if policy.strip_hop_by_hop {
        strip_standard_hop_by_hop_headers(req);
    }

    match policy.h1_upgrade {
        H1UpgradePolicy::WebSocketOnly => {
            req.remove_header(&header::CONNECTION);
            req.remove_header(&header::UPGRADE);
            req.remove_header(HTTP2_SETTINGS);
            if websocket_upgrade {
                req.insert_header(header::CONNECTION, "Upgrade")?;
                req.insert_header(header::UPGRADE, "websocket")?;
            }
        }
        H1UpgradePolicy::Deny => {
            req.remove_header(&header::CONNECTION);
            req.remove_header(&header::UPGRADE);
            req.remove_header(HTTP2_SETTINGS);
        }
        H1UpgradePolicy::Preserve => {}
    }

    Ok(())
}

/// Frame a body-bearing HTTP/1 upstream request after application request filtering.
pub fn finalize_h1_upstream_request_framing(
    req: &mut RequestHeader,
    downstream_has_body: bool,
) -> Result<()> {
    if downstream_has_body
        && req.headers.get(header::CONTENT_LENGTH).is_none()
        && req.headers.get(header::TRANSFER_ENCODING).is_none()
    {
        req.insert_header(header::TRANSFER_ENCODING, "chunked")?;
    }
    Ok(())
}

/// After `upstream_request_filter` (which may change `Host` or the target): the `Host` the
/// app gets agrees with the request target, and both are valid. pingora-proxy's standard
/// authority policy for HTTP/1 clients; every error is the filter's making.
pub fn reconcile_authority(req: &mut RequestHeader, downstream_had_host: bool) -> Result<()> {
    reconcile_upstream_authority(req)?;
    // A filter may delete Host. Restore it for requests that originally carried one or whose
    // URI or absolute-form target has an authority, without adding a new empty Host to
    // Host-less HTTP/1.0 origin-form.
    let target_has_authority = raw_target_authority(req.raw_path()).authority().is_some();
    if downstream_had_host || req.uri.authority().is_some() || target_has_authority {
        set_h1_host_from_authority(req)?;
    }
    validate_request_authority(req)
}

/// Rejects a `101` unless the client's request and the request sent to the app were both
/// upgrades: otherwise one side would switch protocols while the other stays in HTTP, and
/// tunnelled bytes could bypass request processing or corrupt the connection.
pub fn reject_mismatched_upgrade(
    response: &ResponseHeader,
    downstream_upgrade: bool,
    upstream_upgrade: bool,
) -> Result<()> {
    if response.status != http::StatusCode::SWITCHING_PROTOCOLS
        || downstream_upgrade == upstream_upgrade
    {
        return Ok(());
    }
    Error::e_explain(
        InvalidHTTPHeader,
        format!(
            "101 response to mismatched upgrade requests: client asked {downstream_upgrade}, \
             app was asked {upstream_upgrade}"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(target: &[u8], headers: &[(&str, &str)]) -> RequestHeader {
        let mut request = RequestHeader::build("GET", target, Some(headers.len())).unwrap();
        for (name, value) in headers {
            request.append_header(name.to_string(), *value).unwrap();
        }
        request
    }

    fn names(request: &RequestHeader) -> Vec<String> {
        let mut names: Vec<String> = request.headers.keys().map(|k| k.to_string()).collect();
        names.sort();
        names
    }

    #[test]
    fn hop_by_hop_and_nominated_fields_never_reach_the_app() {
        let mut req = request(
            b"/",
            &[
                ("Host", "app.test"),
                ("Connection", "keep-alive, X-Private"),
                ("X-Private", "hop"),
                ("Keep-Alive", "timeout=5"),
                ("Proxy-Connection", "keep-alive"),
                ("Proxy-Authorization", "Basic c2VjcmV0"),
                ("TE", "trailers"),
                ("Trailer", "X-Checksum"),
                ("Transfer-Encoding", "chunked"),
                ("Upgrade", "h2c"),
                ("HTTP2-Settings", "AAAA"),
                ("X-End-To-End", "kept"),
            ],
        );
        sanitize_h1_upstream_request(&mut req, HttpUpstreamRequestPolicy::default(), true).unwrap();
        assert_eq!(names(&req), ["host", "x-end-to-end"]);
    }

    #[test]
    fn only_a_websocket_upgrade_from_an_http11_client_is_forwarded() {
        let cases: &[(&str, bool, bool)] = &[
            ("websocket", true, true),
            ("WebSocket", true, true),
            ("websocket", false, false),
            ("h2c", true, false),
            ("tls/1.2", true, false),
        ];
        for (protocol, http11, forwarded) in cases {
            let mut req = request(
                b"/",
                &[
                    ("Host", "a"),
                    ("Connection", "Upgrade"),
                    ("Upgrade", protocol),
                ],
            );
            sanitize_h1_upstream_request(&mut req, HttpUpstreamRequestPolicy::default(), *http11)
                .unwrap();
            let upgrade = req.headers.get("upgrade").map(|v| v.to_str().unwrap());
            let connection = req.headers.get("connection").map(|v| v.to_str().unwrap());
            if *forwarded {
                assert_eq!(upgrade, Some("websocket"), "{protocol}");
                assert_eq!(connection, Some("Upgrade"), "{protocol}");
            } else {
                assert_eq!((upgrade, connection), (None, None), "{protocol} {http11}");
            }
        }
    }

    #[test]
    fn nominating_a_protected_or_malformed_field_is_refused() {
        for nominated in [
            "Host",
            "X-Forwarded-For",
            "x-forwarded-proto",
            ":authority",
            "\"X-Forwarded-For\"",
            "a, b, c, d, e, f, g, h, i, j",
        ] {
            let mut req = request(b"/", &[("Host", "a"), ("Connection", nominated)]);
            let refused =
                sanitize_h1_upstream_request(&mut req, HttpUpstreamRequestPolicy::default(), true);
            assert!(refused.is_err(), "{nominated}");
        }
    }

    #[test]
    fn a_body_without_framing_goes_chunked() {
        let mut req = request(b"/", &[("Host", "a")]);
        finalize_h1_upstream_request_framing(&mut req, true).unwrap();
        assert_eq!(req.headers["transfer-encoding"], "chunked");
        let mut req = request(b"/", &[("Host", "a"), ("Content-Length", "5")]);
        finalize_h1_upstream_request_framing(&mut req, true).unwrap();
        assert!(req.headers.get("transfer-encoding").is_none());
        let mut req = request(b"/", &[("Host", "a")]);
        finalize_h1_upstream_request_framing(&mut req, false).unwrap();
        assert!(req.headers.get("transfer-encoding").is_none());
    }

    #[test]
    fn host_follows_the_target_after_the_filters() {
        // Origin form: the client's Host stands.
        let mut req = request(b"/p", &[("Host", "app.test")]);
        reconcile_authority(&mut req, true).unwrap();
        assert_eq!(req.headers["host"], "app.test");
        // A filter removed Host: restored empty rather than dropped (HTTP/1.1 needs it).
        let mut req = request(b"/p", &[]);
        reconcile_authority(&mut req, true).unwrap();
        assert_eq!(req.headers["host"], "");
        // HTTP/1.0 origin form without Host gets none.
        let mut req = request(b"/p", &[]);
        reconcile_authority(&mut req, false).unwrap();
        assert!(req.headers.get("host").is_none());
        // Absolute form: the target is rewritten to the Host a filter chose.
        let mut req = request(b"http://client.test/p?q=1", &[("Host", "app.test")]);
        reconcile_authority(&mut req, true).unwrap();
        assert_eq!(req.raw_path(), b"http://app.test/p?q=1");
        // Userinfo in Host is refused.
        let mut req = request(b"/p", &[("Host", "user@evil.test")]);
        assert!(reconcile_authority(&mut req, true).is_err());
    }

    #[test]
    fn a_101_is_accepted_only_when_both_requests_were_upgrades() {
        let switching = ResponseHeader::build(101, None).unwrap();
        let ok = ResponseHeader::build(200, None).unwrap();
        assert!(reject_mismatched_upgrade(&switching, true, true).is_ok());
        assert!(reject_mismatched_upgrade(&switching, false, false).is_ok());
        assert!(reject_mismatched_upgrade(&switching, true, false).is_err());
        assert!(reject_mismatched_upgrade(&switching, false, true).is_err());
        assert!(reject_mismatched_upgrade(&ok, true, false).is_ok());
    }
}
