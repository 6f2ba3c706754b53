//! `released-sidecar explain`: a dry run of the planner for one request, with no network.
//! Prints the route, the trust and page-load verdicts, the headers that would not reach the
//! app, the identity extracted and the exact token request that would be sent (secret
//! redacted), or why none would be, and the `embed.insert` rules the page would get.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::Path;
use std::time::SystemTime;

use http::header::{HeaderMap, HeaderName, HeaderValue, ACCEPT};
use http::Method;
use rustls::pki_types::UnixTime;

use crate::config::Config;
use crate::edge::tls::{self, PemError, TlsFileError};
use crate::request::plan::{plan, RequestFacts};
use crate::request::routes::{host_without_port, Route};
use crate::request::trust::{ClientCert, TrustRule};
use crate::token::identity::{FieldRule, IdentityRules};
use crate::token::jwt::{self, Outcome};
use crate::token::mint::Planned;
use crate::token::released::TokenRequest;

/// The request to explain.
pub struct ExplainRequest {
    /// Method (default GET).
    pub method: Method,
    /// Absolute URL.
    pub url: url::Url,
    /// Headers as given with `-H`.
    pub headers: HeaderMap,
    /// TCP peer (default 127.0.0.1).
    pub peer: IpAddr,
    /// The client certificate the connection presents (`--client-cert`), verified.
    pub client_cert: Option<ClientCert>,
}

/// Why `explain --client-cert` cannot present a certificate.
#[derive(Debug, thiserror::Error)]
pub enum ClientCertError {
    /// The certificate file does not load.
    #[error(transparent)]
    Pem(#[from] PemError),
    /// The config asks for no client certificates.
    #[error("the config has no tls.client_ca_file: client certificates are not asked for")]
    NotAskedFor,
    /// `tls.client_ca_file` does not load.
    #[error(transparent)]
    Ca(#[from] TlsFileError),
    /// The TLS listener would refuse the certificate.
    #[error("refused at the TLS handshake: {0}")]
    Refused(rustls::Error),
}

/// Reads a PEM client certificate and checks it the way the TLS listener would: against
/// `tls.client_ca_file`. Errors say why the handshake would refuse it.
pub fn read_client_cert(config: &Config, path: &Path) -> Result<ClientCert, ClientCertError> {
    let (chain, _) = tls::read_certificates(path)?;
    let ca = config
        .tls
        .as_ref()
        .and_then(|t| t.client_ca_file.as_ref())
        .ok_or(ClientCertError::NotAskedFor)?;
    let (ca_certs, _) = tls::read_certificates(ca)?;
    let verifier = tls::client_verifier(ca_certs, ca)?;
    let Some((leaf, intermediates)) = chain.split_first() else {
        return Err(PemError::NoCertificate {
            path: path.to_path_buf(),
        }
        .into());
    };
    verifier
        .verify_client_cert(leaf, intermediates, UnixTime::now())
        .map_err(ClientCertError::Refused)?;
    Ok(ClientCert {
        names: tls::certificate_names(leaf),
    })
}

/// Parses `Name: value` as given to `-H`.
pub fn parse_header(text: &str) -> Result<(HeaderName, HeaderValue), String> {
    let (name, value) = text
        .split_once(':')
        .ok_or_else(|| format!("`{text}` is not `Name: value`"))?;
    let name = HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|_| format!("`{}` is not a valid header name", name.trim()))?;
    let value = HeaderValue::from_str(value.trim())
        .map_err(|_| format!("the value of {name} is not a valid header value"))?;
    Ok((name, value))
}

/// Renders the explanation.
pub fn explain(config: &Config, request: &ExplainRequest) -> String {
    let mut headers = request.headers.clone();
    let mut notes = Vec::new();
    if request.method == Method::GET
        && !headers.contains_key(ACCEPT)
        && !headers.contains_key("sec-fetch-dest")
    {
        headers.insert(ACCEPT, HeaderValue::from_static("text/html"));
        notes.push("no Accept header given: assuming a browser navigation (Accept: text/html)");
    }
    let host = request
        .url
        .host_str()
        .map(|h| host_without_port(h.trim_start_matches('[').trim_end_matches(']')));
    let facts = RequestFacts {
        peer: Some(request.peer),
        method: &request.method,
        host,
        path: request.url.path(),
        headers: &headers,
        client_cert: request.client_cert.as_ref(),
    };
    let plan = plan(config, &facts);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "request:    {} {} from {}",
        request.method, request.url, request.peer
    );
    for note in notes {
        let _ = writeln!(out, "            ({note})");
    }

    let route = plan.route(config);
    match route {
        Some(r) => {
            let host = r
                .host
                .as_ref()
                .map_or("any host".to_string(), |h| format!("host {h}"));
            let path = r
                .path
                .as_ref()
                .map_or("any path".to_string(), |p| format!("path ~ {}", p.as_str()));
            let _ = writeln!(out, "route:      {} ({host}, {path})", r.name);
        }
        None => {
            let _ = writeln!(out, "route:      none matches");
        }
    }
    let verdict = if plan.trusted { "yes" } else { "no" };
    match config.trust_rule() {
        TrustRule::Address(proxies) => {
            let _ = writeln!(
                out,
                "trusted:    {verdict} ({} {} in trusted_proxies [{}])",
                request.peer,
                if plan.trusted { "is" } else { "is not" },
                proxies
                    .nets()
                    .iter()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        TrustRule::Certificate(names) => {
            let presented = request.client_cert.as_ref().map_or_else(
                || "no client certificate".to_string(),
                |c| format!("a verified certificate for {}", c.names.join(", ")),
            );
            let wanted = if names.is_empty() {
                "any certificate tls.client_ca_file signed".to_string()
            } else {
                format!("trusted_client_names [{}]", names.join(", "))
            };
            let _ = writeln!(
                out,
                "trusted:    {verdict} ({presented}; trust by certificate: {wanted}; addresses do not count)"
            );
        }
    }
    let stripped = config.identity_headers.to_strip(&headers, plan.trusted);
    if !stripped.is_empty() {
        let names: Vec<String> = stripped
            .iter()
            .map(|(name, why)| format!("{name} ({})", why.label()))
            .collect();
        let _ = writeln!(
            out,
            "stripped:   {} (never reach the app)",
            names.join(", ")
        );
    }
    if route.is_some() {
        let _ = writeln!(
            out,
            "page load:  {}",
            if plan.page_load { "yes" } else { "no" }
        );
    }
    if let Some(r) = route {
        if plan.page_load && plan.trusted {
            describe_rules(&mut out, &r.identity);
        }
    }
    match (&plan.decision, route) {
        (Ok(planned), Some(r)) => {
            let request = match planned {
                Planned::Request(request, dropped) => {
                    for d in dropped {
                        let _ = writeln!(out, "dropped:    {}: {}", d.field, d.reason);
                    }
                    Some(request.clone())
                }
                Planned::Assertion(raw) => explain_assertion(&mut out, raw, r),
            };
            if let Some(request) = request {
                let _ = writeln!(
                    out,
                    "token:      would be requested (concurrently with the app), page waits at most {:?}",
                    r.released.timeout
                );
                let _ = writeln!(out, "  POST {}", r.released.api_url);
                let _ = writeln!(
                    out,
                    "  Authorization: Bearer [redacted] (secret from {})",
                    r.released.secret_source
                );
                let _ = writeln!(out, "  Content-Type: application/json");
                let _ = writeln!(out, "  {}", request.to_json());
                let _ = writeln!(
                    out,
                    "rewrite:    if the app answers 200 text/html, every <{}> start tag gets auth-token",
                    config.embed.tags.names().join(">, <")
                );
                describe_insert(&mut out, r);
            }
        }
        (Err(reason), route) => {
            let _ = writeln!(out, "token:      none: {reason}");
            if route.is_some_and(|r| !r.insert.is_empty()) {
                let _ = writeln!(
                    out,
                    "insert:     none: embed.insert applies only to signed-in page loads"
                );
            }
        }
        (Ok(_), None) => {}
    }
    out
}

/// Prints every check on the assertion; returns the request its claims would give.
fn explain_assertion(out: &mut String, raw: &str, route: &Route) -> Option<TokenRequest> {
    let settings = route.identity.jwt.as_ref()?;
    let jwt::Report { steps, claims } = jwt::report(raw, settings, SystemTime::now());
    let _ = writeln!(out, "assertion:");
    for (name, outcome) in steps {
        let (mark, text) = match outcome {
            Outcome::Pass(t) => ("ok  ", t),
            Outcome::Fail(t) => ("FAIL", t),
            Outcome::Skipped(t) => ("skip", t),
        };
        let _ = writeln!(out, "  {mark} {name}: {text}");
    }
    let Some(claims) = claims else {
        let _ = writeln!(
            out,
            "token:      none: the gateway assertion is not believed"
        );
        return None;
    };
    match route.identity.extract_claims(&claims) {
        Ok(extraction) => {
            for d in &extraction.dropped {
                let _ = writeln!(out, "dropped:    {}: {}", d.field, d.reason);
            }
            Some(TokenRequest::new(
                &route.released.account_id,
                extraction.identity,
            ))
        }
        Err(e) => {
            let _ = writeln!(out, "token:      none: no valid identity: {e}");
            None
        }
    }
}

/// The route's `embed.insert` rules, as they would apply to a 200 text/html answer.
fn describe_insert(out: &mut String, route: &Route) {
    if route.insert.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "insert:     if the app answers 200 text/html, each snippet once, at the first match (its embed tags get the token too):"
    );
    for rule in route.insert.iter() {
        let _ = writeln!(
            out,
            "  {} `{}`: {}",
            rule.position.name(),
            rule.selector(),
            shortened(&rule.html, 100)
        );
    }
}

/// `text` on one line (whitespace runs as one space), cut to `max` characters.
fn shortened(text: &str, max: usize) -> String {
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match one_line.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &one_line[..cut]),
        None => one_line,
    }
}

fn describe_rules(out: &mut String, rules: &IdentityRules) {
    let describe = |rule: &FieldRule| {
        let mut s = rule.source.to_string();
        if let Some(p) = &rule.pattern {
            let _ = write!(s, ", pattern {}", p.as_str());
        }
        if !rule.transforms.is_empty() {
            let names: Vec<String> = rule
                .transforms
                .iter()
                .map(|t| format!("{t:?}").to_lowercase())
                .collect();
            let _ = write!(s, ", transform [{}]", names.join(", "));
        }
        s
    };
    if let Some(jwt) = &rules.jwt {
        let _ = writeln!(
            out,
            "assertion:  header {}, keys from {}",
            jwt.header,
            jwt.keys.source()
        );
        let _ = writeln!(
            out,
            "            iss {}, aud [{}]{}, algorithms {:?}, leeway {:?}",
            jwt.issuer,
            jwt.audience.join(", "),
            jwt.signer
                .as_ref()
                .map(|s| format!(", signer {s}"))
                .unwrap_or_default(),
            jwt.algorithms,
            jwt.leeway
        );
    }
    let _ = writeln!(
        out,
        "identity:   user_id    <- {}",
        describe(&rules.user_id)
    );
    let _ = writeln!(
        out,
        "            user_email <- {}",
        describe(&rules.user_email)
    );
    if let Some(r) = &rules.name {
        let _ = writeln!(out, "            name       <- {}", describe(r));
    }
    if let Some(r) = &rules.avatar_url {
        let _ = writeln!(out, "            avatar_url <- {}", describe(r));
    }
}
