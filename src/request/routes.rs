//! Which route a request falls under (SPEC §2.2: first match by host and path regex) and
//! whether it is a page load (SPEC §2.3). Pure functions over the request line and
//! headers.

use std::fmt;
use std::sync::Arc;

use http::header::{HeaderMap, ACCEPT, RANGE, UPGRADE};
use http::Method;
use regex::Regex;

use crate::page::rewrite::insert::InsertRule;
use crate::token::identity::IdentityRules;
use crate::token::released::ReleasedSettings;

/// A host to match: exact (`app.example.com`) or any subdomain (`*.example.com`).
/// Compared case-insensitively, without the port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// The whole host.
    Exact(String),
    /// `*.suffix`: any host ending in `.suffix` (not `suffix` itself).
    Subdomains(String),
}

impl HostPattern {
    /// Parses `app.example.com` or `*.example.com`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim().to_ascii_lowercase();
        let (wild, name) = match text.strip_prefix("*.") {
            Some(rest) => (true, rest.to_string()),
            None => (false, text.clone()),
        };
        let ok = !name.is_empty()
            && name
                .split('.')
                .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
        if !ok {
            return Err(format!(
                "`{text}` is not a host name (write `app.example.com` or `*.example.com`, without scheme or port)"
            ));
        }
        Ok(if wild {
            HostPattern::Subdomains(name)
        } else {
            HostPattern::Exact(name)
        })
    }

    /// Whether `host` (already without port) matches.
    pub fn matches(&self, host: &str) -> bool {
        let host = host.strip_suffix('.').unwrap_or(host);
        match self {
            HostPattern::Exact(name) => host.eq_ignore_ascii_case(name),
            HostPattern::Subdomains(suffix) => {
                host.len() > suffix.len() + 1
                    && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
                    && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
            }
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(n) => f.write_str(n),
            HostPattern::Subdomains(s) => write!(f, "*.{s}"),
        }
    }
}

/// One entry of `routes`, with the identity and Released settings in force for it.
#[derive(Debug)]
pub struct Route {
    /// The route's name (in logs, metrics and `explain`).
    pub name: String,
    /// Host to match; any host when unset.
    pub host: Option<HostPattern>,
    /// Regex searched in the path (without query); any path when unset.
    pub path: Option<Regex>,
    /// Identity rules in force (the top-level ones merged with this route's overrides).
    pub identity: Arc<IdentityRules>,
    /// Released settings in force (likewise merged).
    pub released: Arc<ReleasedSettings>,
    /// `embed.insert` rules in force: the route's own list, else the top-level one.
    pub insert: Arc<[InsertRule]>,
}

impl Route {
    /// Whether this route applies to a request for `host` (no port) and `path`.
    pub fn matches(&self, host: Option<&str>, path: &str) -> bool {
        let host_ok = match (&self.host, host) {
            (None, _) => true,
            (Some(pattern), Some(h)) => pattern.matches(h),
            (Some(_), None) => false,
        };
        host_ok && self.path.as_ref().is_none_or(|re| re.is_match(path))
    }
}

/// The ordered route list; the first match wins.
#[derive(Debug)]
pub struct Routes(pub Vec<Route>);

impl Routes {
    /// The first route matching `host` and `path`, with its index.
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<(usize, &Route)> {
        self.0
            .iter()
            .enumerate()
            .find(|(_, r)| r.matches(host, path))
    }
}

/// The host of an `authority` or `Host` value, without the port (`[::1]:80` → `::1`).
pub fn host_without_port(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

/// Why a request is not a page load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotPageLoad {
    /// Only `GET` loads pages (`HEAD` has no body to rewrite).
    Method(Method),
    /// Neither `Accept: text/html` nor `Sec-Fetch-Dest: document|iframe`.
    NotDocument,
    /// A `Range` request gets a partial body that cannot carry a token.
    Range,
    /// A protocol upgrade (WebSocket) is not a page.
    Upgrade,
}

impl NotPageLoad {
    /// A stable short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            NotPageLoad::Method(_) => "method",
            NotPageLoad::NotDocument => "not_document",
            NotPageLoad::Range => "range",
            NotPageLoad::Upgrade => "upgrade",
        }
    }
}

impl fmt::Display for NotPageLoad {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotPageLoad::Method(m) => write!(f, "method is {m}, only GET loads pages"),
            NotPageLoad::NotDocument => write!(
                f,
                "neither Accept contains text/html nor Sec-Fetch-Dest is document or iframe"
            ),
            NotPageLoad::Range => write!(f, "a Range request cannot carry a token"),
            NotPageLoad::Upgrade => write!(f, "a protocol upgrade (WebSocket) is not a page"),
        }
    }
}

/// SPEC §2.3: a `GET` whose `Accept` contains `text/html` or whose `Sec-Fetch-Dest` is
/// `document` or `iframe`. Range and upgrade requests are excluded because their responses
/// can never be rewritten, so asking for a token would waste one.
pub fn page_load(method: &Method, headers: &HeaderMap) -> Result<(), NotPageLoad> {
    if method != Method::GET {
        return Err(NotPageLoad::Method(method.clone()));
    }
    if headers.contains_key(UPGRADE) {
        return Err(NotPageLoad::Upgrade);
    }
    if headers.contains_key(RANGE) {
        return Err(NotPageLoad::Range);
    }
    let accepts_html = headers
        .get_all(ACCEPT)
        .iter()
        .any(|v| contains_ignore_ascii_case(v.as_bytes(), b"text/html"));
    let document_dest = headers.get_all("sec-fetch-dest").iter().any(|v| {
        let v = v.as_bytes().trim_ascii();
        v.eq_ignore_ascii_case(b"document") || v.eq_ignore_ascii_case(b"iframe")
    });
    if accepts_html || document_dest {
        Ok(())
    } else {
        Err(NotPageLoad::NotDocument)
    }
}

fn contains_ignore_ascii_case(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(*k, HeaderValue::from_static(v));
        }
        map
    }

    #[test]
    fn page_load_detection_table() {
        use NotPageLoad::{NotDocument, Range, Upgrade};
        const HTML: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
        type Headers = &'static [(&'static str, &'static str)];
        let cases: &[(Method, Headers, Result<(), NotPageLoad>)] = &[
            (Method::GET, &[("accept", HTML)], Ok(())),
            (Method::GET, &[("accept", "TEXT/HTML")], Ok(())),
            (Method::GET, &[("sec-fetch-dest", "document")], Ok(())),
            (
                Method::GET,
                &[("sec-fetch-dest", "iframe"), ("accept", "*/*")],
                Ok(()),
            ),
            (
                Method::GET,
                &[("accept", "application/json")],
                Err(NotDocument),
            ),
            (
                Method::GET,
                &[("accept", "*/*"), ("sec-fetch-dest", "script")],
                Err(NotDocument),
            ),
            (Method::GET, &[], Err(NotDocument)),
            (
                Method::HEAD,
                &[("accept", HTML)],
                Err(NotPageLoad::Method(Method::HEAD)),
            ),
            (
                Method::POST,
                &[("accept", HTML)],
                Err(NotPageLoad::Method(Method::POST)),
            ),
            (
                Method::GET,
                &[("accept", HTML), ("range", "bytes=0-10")],
                Err(Range),
            ),
            (
                Method::GET,
                &[("accept", HTML), ("upgrade", "websocket")],
                Err(Upgrade),
            ),
        ];
        for (method, h, want) in cases {
            assert_eq!(&page_load(method, &headers(h)), want, "{method} {h:?}");
        }
    }

    #[test]
    fn host_patterns() {
        let exact = HostPattern::parse("App.Example.com").unwrap();
        assert!(exact.matches("app.example.com"));
        assert!(exact.matches("APP.EXAMPLE.COM."));
        assert!(!exact.matches("www.app.example.com"));
        let wild = HostPattern::parse("*.example.com").unwrap();
        assert!(wild.matches("a.example.com"));
        assert!(wild.matches("a.b.example.com"));
        assert!(!wild.matches("example.com"));
        assert!(!wild.matches("badexample.com"));
        for bad in ["", "http://x.com", "x.com:80", "a..b", "*.", "x/y"] {
            assert!(HostPattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ports_are_removed_from_hosts() {
        assert_eq!(host_without_port("app.example.com:8080"), "app.example.com");
        assert_eq!(host_without_port("app.example.com"), "app.example.com");
        assert_eq!(host_without_port("[::1]:8080"), "::1");
        assert_eq!(host_without_port("[::1]"), "::1");
        assert_eq!(host_without_port("127.0.0.1:80"), "127.0.0.1");
    }
}
