//! Client-rendered embeds (SPEC §3a): the same-origin token endpoint (`embed.client.path`)
//! and the loader script next to it (`embed.js`), both answered by the sidecar on
//! `listen` and never passed to the app.
//!
//! The endpoint is planned exactly like a page load of the page asking for it (its
//! same-origin `Referer`), under the same trust boundary, identity rules, assertion checks,
//! timeout and cool-down, and it mints through the same [`Minter`]. What it adds is a CSRF
//! guard (a cross-site request or a typed-in URL never mints) and a per-identity rate limit.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use bytes::Bytes;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode};
use pingora::proxy::Session;
use sha2::{Digest, Sha256};

use crate::config::{ClientEmbed, Config, RateLimit};
use crate::metrics::Metrics;
use crate::page::rewrite::escape_attribute;
use crate::request::downstream::{peer_ip, Downstream};
use crate::request::plan::{plan_embed_token, NoToken, RequestFacts};
use crate::request::routes::host_without_port;
use crate::request::snapshot::Snapshot;
use crate::request::trust::{ClientCert, TrustSource};
use crate::synthetic::SyntheticResponse;
use crate::token::mint::{Minter, Planned, Refused};
use crate::token::released::{ReleasedClient, TokenRequest};

/// How long a minted token may be used (SPEC §1: two minutes).
const TOKEN_LIFETIME_SECS: u64 = 120;
/// Identities tracked by the rate limiter before idle ones are forgotten.
const MAX_TRACKED_IDENTITIES: usize = 10_000;
/// The loader script, with its endpoint and tags filled in per config.
const LOADER_TEMPLATE: &str = include_str!("assets/embed.js");

/// A path the sidecar answers itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnPath {
    /// The token endpoint.
    Token,
    /// The loader script.
    Loader,
}

/// Whether `path` is one of the sidecar's own under `config`.
pub fn own_path(config: &Config, path: &str) -> Option<OwnPath> {
    let client = config.embed.client.as_ref()?;
    if path == client.token_path {
        Some(OwnPath::Token)
    } else if path == client.loader_path {
        Some(OwnPath::Loader)
    } else {
        None
    }
}

/// The loader for `client` and `tags`, and its entity tag.
pub fn loader(client: &ClientEmbed, tags: &[String]) -> (Bytes, String) {
    // Both are validated plain text (a path, tag names); JSON is also a JS literal.
    let endpoint = serde_json::to_string(&client.token_path).unwrap_or_default();
    let tags = serde_json::to_string(tags).unwrap_or_default();
    let body = LOADER_TEMPLATE
        .replace("__ENDPOINT__", &endpoint)
        .replace("__TAGS__", &tags);
    let digest = Sha256::digest(body.as_bytes());
    let etag = format!("\"{}\"", hex::encode(&digest[..12]));
    (Bytes::from(body), etag)
}

/// The `<script>` that loads the loader into a page, or `None` when the page's
/// `Content-Security-Policy` would not let it run (then the page is left alone).
pub fn loader_tag(client: &ClientEmbed, response: &HeaderMap) -> Option<String> {
    let nonce = match script_policy(response) {
        ScriptPolicy::Blocked => return None,
        ScriptPolicy::Allowed(nonce) => nonce,
    };
    let src = escape_attribute(&client.loader_path);
    Some(match nonce {
        Some(n) => format!(
            "<script src=\"{src}\" defer nonce=\"{}\"></script>",
            escape_attribute(&n)
        ),
        None => format!("<script src=\"{src}\" defer></script>"),
    })
}

/// The nonce a `<script>` added to this page must carry, when its CSP uses one
/// (`embed.insert` snippets carry it like the loader does).
pub fn script_nonce(response: &HeaderMap) -> Option<String> {
    match script_policy(response) {
        ScriptPolicy::Allowed(nonce) => nonce,
        ScriptPolicy::Blocked => None,
    }
}

/// Whether a same-origin external script may run under a response's CSP, and the nonce it
/// must carry.
#[derive(Debug, PartialEq, Eq)]
enum ScriptPolicy {
    Allowed(Option<String>),
    Blocked,
}

/// Every enforced policy must allow the script: by `'self'` (or `*`, `http:`, `https:`)
/// unless `'strict-dynamic'` voids those, or by its nonce. Report-only policies do not
/// block anything and are ignored; a host-source naming our own host is not recognised.
fn script_policy(headers: &HeaderMap) -> ScriptPolicy {
    let mut required: Option<String> = None;
    let mut offered: Option<String> = None;
    let policies = headers
        .get_all(header::CONTENT_SECURITY_POLICY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','));
    for policy in policies {
        let directives: Vec<(&str, Vec<&str>)> = policy
            .split(';')
            .filter_map(|d| {
                let mut words = d.split_ascii_whitespace();
                Some((words.next()?, words.collect()))
            })
            .collect();
        let sources = ["script-src-elem", "script-src", "default-src"]
            .iter()
            .find_map(|name| {
                directives
                    .iter()
                    .find(|(d, _)| d.eq_ignore_ascii_case(name))
                    .map(|(_, s)| s)
            });
        let Some(sources) = sources else { continue };
        let has = |word: &str| sources.iter().any(|s| s.eq_ignore_ascii_case(word));
        let nonce = sources.iter().find_map(|s| {
            let lower = s.to_ascii_lowercase();
            lower
                .starts_with("'nonce-")
                .then(|| s[7..].trim_end_matches('\'').to_string())
                .filter(|n| !n.is_empty())
        });
        let by_origin = !has("'strict-dynamic'")
            && (has("'self'") || has("*") || has("https:") || has("http:"));
        match nonce {
            _ if by_origin => offered = offered.or(nonce),
            Some(n) => match &required {
                Some(r) if *r != n => return ScriptPolicy::Blocked,
                _ => required = Some(n),
            },
            None => return ScriptPolicy::Blocked,
        }
    }
    ScriptPolicy::Allowed(required.or(offered))
}

/// The per-identity limiter, rebuilt when `embed.client.rate_limit` changes.
#[derive(Default)]
pub struct TokenEndpoint {
    limiter: Mutex<Option<(RateLimit, Arc<DefaultKeyedRateLimiter<String>>)>>,
}

/// What the endpoint answers (status and the JSON error, or the token).
struct Answer {
    status: StatusCode,
    body: serde_json::Value,
    retry_after: Option<u64>,
}

impl Answer {
    fn error(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            body: serde_json::json!({ "error": message.into() }),
            retry_after: None,
        }
    }
}

/// What the endpoint needs from the request.
pub struct EndpointRequest<'a> {
    /// The TCP peer.
    pub peer: Option<IpAddr>,
    /// The request head's headers.
    pub headers: &'a HeaderMap,
    /// The request method.
    pub method: &'a Method,
    /// The connection's verified client certificate.
    pub client_cert: Option<&'a ClientCert>,
}

impl TokenEndpoint {
    fn limiter(&self, rate: RateLimit) -> Arc<DefaultKeyedRateLimiter<String>> {
        let mut current = self.limiter.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((r, limiter)) = current.as_ref() {
            if *r == rate {
                return Arc::clone(limiter);
            }
        }
        let burst = NonZeroU32::new(rate.count).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(rate.per / rate.count.max(1))
            .unwrap_or_else(|| Quota::per_second(burst))
            .allow_burst(burst);
        let limiter = Arc::new(RateLimiter::keyed(quota));
        *current = Some((rate, Arc::clone(&limiter)));
        limiter
    }

    /// Answers a request for the token endpoint or the loader, minting with `released`
    /// under `snapshot`; returns the status sent.
    pub async fn serve(
        &self,
        session: &mut Session,
        own: OwnPath,
        snapshot: &Snapshot,
        released: &ReleasedClient,
        metrics: &Arc<Metrics>,
        downstream: &dyn Downstream,
    ) -> pingora::Result<u16> {
        let config = &snapshot.config;
        let Some(client) = config.embed.client.as_ref() else {
            return Ok(0);
        };
        let req = session.req_header();
        if req.method != Method::GET && req.method != Method::HEAD {
            let answer = Answer::error(StatusCode::METHOD_NOT_ALLOWED, "use GET");
            return send_json(session, answer, metrics).await;
        }
        if own == OwnPath::Loader {
            return send_loader(session, client, config).await;
        }
        let request = EndpointRequest {
            peer: peer_ip(session),
            headers: &req.headers,
            method: &req.method,
            client_cert: downstream.client_cert(session),
        };
        let minter = |route: usize| snapshot.minter(route, released, metrics);
        let answer = self.token(&request, config, client, minter).await;
        send_json(session, answer, metrics).await
    }

    async fn token(
        &self,
        request: &EndpointRequest<'_>,
        config: &Config,
        client: &ClientEmbed,
        minter: impl FnOnce(usize) -> Minter,
    ) -> Answer {
        let trusted = config
            .trust_rule()
            .decide(request.peer, request.client_cert)
            != TrustSource::None;
        let host = request
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok());
        let origin = own_origin(request.headers, host, trusted, config.tls.is_some());
        if let Err(why) = same_origin_request(request.headers, origin.as_deref()) {
            return Answer::error(StatusCode::FORBIDDEN, why);
        }
        let page_path = referer_path(request.headers, origin.as_deref())
            .unwrap_or_else(|| client.token_path.clone());
        let plan = plan_embed_token(
            config,
            &RequestFacts {
                peer: request.peer,
                method: request.method,
                host: host.map(host_without_port),
                path: &page_path,
                headers: request.headers,
                client_cert: request.client_cert,
            },
        );
        let (Some(route_index), Some(route)) = (plan.route, plan.route(config)) else {
            return Answer::error(StatusCode::NOT_FOUND, "no route applies to this page");
        };
        let planned: Planned = match plan.decision {
            Ok(planned) => planned,
            Err(NoToken::NoRoute) => {
                return Answer::error(StatusCode::NOT_FOUND, "no route applies to this page")
            }
            Err(reason) => {
                tracing::debug!(reason = %reason, "token endpoint: no usable identity");
                return Answer::error(StatusCode::UNAUTHORIZED, "no usable identity");
            }
        };
        let deadline = Instant::now() + route.released.timeout;
        let limiter = self.limiter(client.rate_limit);
        let gate = |token_request: &TokenRequest| {
            let result = limiter.check_key(&token_request.user_id);
            if limiter.len() > MAX_TRACKED_IDENTITIES {
                // Forget identities whose allowance is whole again: memory stays bounded.
                limiter.retain_recent();
                limiter.shrink_to_fit();
            }
            result.map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
        };
        match minter(route_index).mint(planned, deadline, gate).await {
            Ok(token) => Answer {
                status: StatusCode::OK,
                body: serde_json::json!({
                    "token": token.expose(),
                    "expires_in": TOKEN_LIFETIME_SECS,
                }),
                retry_after: None,
            },
            Err(Refused::Identity(_)) => Answer::error(
                StatusCode::UNAUTHORIZED,
                "the gateway assertion was not accepted",
            ),
            Err(Refused::Gate(wait)) => Answer {
                retry_after: Some(wait.as_secs() + u64::from(wait.subsec_nanos() > 0)),
                ..Answer::error(StatusCode::TOO_MANY_REQUESTS, "too many token requests")
            },
            Err(Refused::Unavailable(_)) => Answer::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the token service is unavailable",
            ),
        }
    }
}

/// The origin this request was made to: the scheme the gateway says it served (only a
/// trusted peer's `X-Forwarded-Proto` counts), else the listener's; the host from `Host`.
fn own_origin(
    headers: &HeaderMap,
    host: Option<&str>,
    trusted: bool,
    https: bool,
) -> Option<String> {
    let host = host?.trim().to_ascii_lowercase();
    let scheme = trusted
        .then(|| headers.get("x-forwarded-proto")?.to_str().ok())
        .flatten()
        .map(|p| {
            p.split(',')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .filter(|p| p == "https" || p == "http")
        .unwrap_or_else(|| if https { "https" } else { "http" }.into());
    Some(format!("{scheme}://{host}"))
}

/// Lets through only what is provably a same-origin script: `Sec-Fetch-Site:
/// same-origin`, or, from a browser that sends no `Sec-Fetch-Site`, an `Origin` equal to our
/// own. A navigation (a typed-in URL) and an `Origin` other than our own are refused even
/// then. A request with neither header (curl, an older browser's `<img>` or `<script>` on
/// another site) is refused too: it cannot read the answer, but it would cost a Released
/// call and the user's rate budget.
fn same_origin_request(headers: &HeaderMap, origin: Option<&str>) -> Result<(), &'static str> {
    let value = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if value("sec-fetch-mode").is_some_and(|m| m.eq_ignore_ascii_case("navigate")) {
        return Err("the token endpoint is for scripts, not for navigation");
    }
    let site = value("sec-fetch-site");
    if site.is_some_and(|s| !s.eq_ignore_ascii_case("same-origin")) {
        return Err("cross-site request");
    }
    let sent = value("origin");
    if let Some(sent) = sent {
        if Some(sent.trim().to_ascii_lowercase()).as_deref() != origin {
            return Err("cross-origin request");
        }
    }
    if site.is_none() && sent.is_none() {
        return Err("neither Sec-Fetch-Site nor Origin: not a same-origin script");
    }
    Ok(())
}

/// The path of a same-origin `Referer`.
fn referer_path(headers: &HeaderMap, origin: Option<&str>) -> Option<String> {
    let referer = headers.get(header::REFERER)?.to_str().ok()?;
    let url = url::Url::parse(referer).ok()?;
    (url.origin().ascii_serialization() == origin?).then(|| url.path().to_string())
}

/// The loader, or `304` to a client that holds this version (a `304` still states the
/// loader's length: RFC 9110 §8.6 forbids any other).
async fn send_loader(
    session: &mut Session,
    client: &ClientEmbed,
    config: &Config,
) -> pingora::Result<u16> {
    let (body, etag) = loader(client, config.embed.tags.names());
    let fresh = session
        .req_header()
        .headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let status = if fresh {
        StatusCode::NOT_MODIFIED
    } else {
        StatusCode::OK
    };
    let mut response =
        SyntheticResponse::new(status, "application/javascript; charset=utf-8", body)
            .cache_control("public, max-age=3600")
            .nosniff();
    if let Ok(etag) = HeaderValue::from_str(&etag) {
        response = response.header(header::ETAG, etag);
    }
    response.write_to_proxy(session).await?;
    Ok(status.as_u16())
}

async fn send_json(
    session: &mut Session,
    answer: Answer,
    metrics: &Metrics,
) -> pingora::Result<u16> {
    let status = answer.status;
    let mut response = SyntheticResponse::json(status, &answer.body);
    if status == StatusCode::METHOD_NOT_ALLOWED {
        response = response.header(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    }
    if let Some(secs) = answer.retry_after {
        response = response.header(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    }
    response.write_to_proxy(session).await?;
    metrics
        .embed_token_responses
        .with_label_values(&[status.as_str()])
        .inc();
    Ok(status.as_u16())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn cross_site_and_navigation_requests_are_refused() {
        let own = Some("https://app.example.com");
        let cases: &[(&[(&str, &str)], bool)] = &[
            (
                &[
                    ("sec-fetch-site", "same-origin"),
                    ("sec-fetch-mode", "cors"),
                ],
                true,
            ),
            (&[("sec-fetch-site", "SAME-ORIGIN")], true),
            (
                &[
                    ("sec-fetch-site", "same-origin"),
                    ("origin", "https://app.example.com"),
                ],
                true,
            ),
            // A browser without Fetch Metadata: its Origin decides.
            (&[("origin", "https://app.example.com")], true),
            (&[("origin", "HTTPS://APP.EXAMPLE.COM")], true),
            // Neither header: curl, or an old browser's <img> on another site.
            (&[], false),
            (&[("referer", "https://evil.example/page")], false),
            (&[("referer", "https://app.example.com/page")], false),
            (
                &[
                    ("sec-fetch-site", "same-origin"),
                    ("origin", "https://evil.example"),
                ],
                false,
            ),
            (&[("sec-fetch-site", "same-site")], false),
            (&[("sec-fetch-site", "cross-site")], false),
            (&[("sec-fetch-site", "none")], false),
            (
                &[
                    ("sec-fetch-mode", "navigate"),
                    ("sec-fetch-site", "same-origin"),
                ],
                false,
            ),
            (&[("origin", "https://evil.example")], false),
            (&[("origin", "http://app.example.com")], false),
            (&[("origin", "null")], false),
        ];
        for (pairs, ok) in cases {
            assert_eq!(
                same_origin_request(&headers(pairs), own).is_ok(),
                *ok,
                "{pairs:?}"
            );
        }
    }

    #[test]
    fn the_loader_tag_obeys_the_pages_csp() {
        let client = ClientEmbed {
            token_path: "/.released/token".into(),
            loader_path: "/.released/embed.js".into(),
            inject: true,
            rate_limit: crate::config::RateLimit {
                count: 1,
                per: Duration::from_secs(1),
            },
        };
        let plain = r#"<script src="/.released/embed.js" defer></script>"#;
        let nonced = r#"<script src="/.released/embed.js" defer nonce="r4nd0m"></script>"#;
        let cases: &[(&[&str], Option<&str>)] = &[
            (&[], Some(plain)),
            (&["frame-ancestors 'none'"], Some(plain)),
            (&["default-src 'self'"], Some(plain)),
            (&["script-src 'self' https://cdn.example"], Some(plain)),
            (
                &["script-src 'nonce-r4nd0m' 'strict-dynamic'"],
                Some(nonced),
            ),
            (&["script-src 'self' 'nonce-r4nd0m'"], Some(nonced)),
            (
                &["default-src 'self'; script-src 'nonce-r4nd0m'"],
                Some(nonced),
            ),
            (&["default-src 'none'"], None),
            (&["script-src https://cdn.example"], None),
            (&["script-src 'self' 'strict-dynamic'"], None),
            (&["script-src 'self'", "script-src 'none'"], None),
            (&["script-src 'nonce-a'", "script-src 'nonce-b'"], None),
            (
                &["script-src 'self', script-src 'nonce-r4nd0m'"],
                Some(nonced),
            ),
        ];
        for (policies, want) in cases {
            let mut h = HeaderMap::new();
            for p in *policies {
                h.append("content-security-policy", p.parse().unwrap());
            }
            assert_eq!(loader_tag(&client, &h).as_deref(), *want, "{policies:?}");
        }
    }

    #[test]
    fn the_scheme_comes_from_a_trusted_gateway_only() {
        let h = headers(&[("x-forwarded-proto", "https")]);
        assert_eq!(
            own_origin(&h, Some("App.example.com"), true, false).as_deref(),
            Some("https://app.example.com")
        );
        assert_eq!(
            own_origin(&h, Some("app.example.com"), false, false).as_deref(),
            Some("http://app.example.com")
        );
        assert_eq!(
            own_origin(&HeaderMap::new(), Some("a.example"), false, true).as_deref(),
            Some("https://a.example")
        );
        assert_eq!(own_origin(&h, None, true, false), None);
    }

    #[test]
    fn only_a_same_origin_referer_names_the_page() {
        let own = Some("http://app.example.com:8080");
        let path = |r: &'static str| referer_path(&headers(&[("referer", r)]), own);
        assert_eq!(
            path("http://app.example.com:8080/feedback?x=1").as_deref(),
            Some("/feedback")
        );
        assert_eq!(path("http://evil.example/feedback"), None);
        assert_eq!(path("not a url"), None);
    }

    #[test]
    fn the_loader_names_the_configured_endpoint_and_tags() {
        let client = ClientEmbed {
            token_path: "/auth/t\"x".into(),
            loader_path: "/auth/embed.js".into(),
            inject: false,
            rate_limit: crate::config::RateLimit {
                count: 1,
                per: Duration::from_secs(1),
            },
        };
        let (body, etag) = loader(&client, &["released-page".to_string()]);
        let text = std::str::from_utf8(&body).unwrap();
        assert!(text.contains(r#"var ENDPOINT = "/auth/t\"x";"#), "{text}");
        assert!(text.contains(r#"var TAGS = ["released-page"];"#));
        assert!(!text.contains("__"), "every placeholder filled");
        assert_eq!(etag.len(), 26);
    }
}
