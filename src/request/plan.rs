//! The decision at the heart of SPEC §2: does this request get a token, for whom, and if
//! not, exactly why. [`plan`] is a pure function of the config and the request head,
//! shared by the proxy and by `explain`, so the dry run can never disagree with what the
//! proxy does. When identity comes from a signed gateway assertion, the plan carries the
//! raw assertion, and the minter ([`crate::token::mint`], async: it may fetch keys)
//! verifies it off the request path, in the token task.

use std::fmt;
use std::net::IpAddr;

use http::header::HeaderMap;
use http::Method;

use crate::config::Config;
use crate::request::routes::{page_load, NotPageLoad, Route};
use crate::request::trust::{ClientCert, TrustSource};
use crate::token::identity::IdentityError;
use crate::token::jwt::JwtError;
use crate::token::mint::Planned;
use crate::token::released::TokenRequest;

/// What the planner looks at: the TCP peer and the request head.
pub struct RequestFacts<'a> {
    /// The TCP peer (never a forwarded-for header).
    pub peer: Option<IpAddr>,
    /// Request method.
    pub method: &'a Method,
    /// Host without port, from the URI authority or the `Host` header.
    pub host: Option<&'a str>,
    /// Path without query.
    pub path: &'a str,
    /// Request headers.
    pub headers: &'a HeaderMap,
    /// The verified client certificate of the connection, if any.
    pub client_cert: Option<&'a ClientCert>,
}

/// Why a request gets no token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoToken {
    /// No route matches: plain proxy.
    NoRoute,
    /// Not a page load.
    NotPageLoad(NotPageLoad),
    /// The TCP peer is not in `trusted_proxies`; its identity headers were stripped.
    UntrustedPeer,
    /// The identity headers do not yield a valid user.
    Identity(IdentityError),
    /// The gateway assertion is missing or not believed.
    Assertion(JwtError),
}

impl NoToken {
    /// A stable short label for `released_sidecar_token_skips_total{reason}`.
    pub fn label(&self) -> &'static str {
        match self {
            NoToken::NoRoute => "no_route",
            NoToken::NotPageLoad(_) => "not_page_load",
            NoToken::UntrustedPeer => "untrusted_peer",
            NoToken::Identity(e) => e.problem.label(),
            NoToken::Assertion(e) => e.label(),
        }
    }
}

impl fmt::Display for NoToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NoToken::NoRoute => write!(f, "no route matches: the request is proxied as is"),
            NoToken::NotPageLoad(why) => write!(f, "not a page load: {why}"),
            NoToken::UntrustedPeer => write!(
                f,
                "the TCP peer is not in trusted_proxies: identity headers are stripped and ignored"
            ),
            NoToken::Identity(e) => write!(f, "no valid identity: {e}"),
            NoToken::Assertion(e) => write!(f, "no valid gateway assertion: {e}"),
        }
    }
}

/// The planner's answer.
#[derive(Debug)]
pub struct Plan {
    /// Index of the matching route in `config.routes`.
    pub route: Option<usize>,
    /// Whether the peer may carry identity headers.
    pub trusted: bool,
    /// Why (or why not).
    pub trust: TrustSource,
    /// Whether the request is a page load (on a matching route).
    pub page_load: bool,
    /// The token request to send, or why there is none.
    pub decision: Result<Planned, NoToken>,
}

impl Plan {
    /// The matching route, if any.
    pub fn route<'c>(&self, config: &'c Config) -> Option<&'c Route> {
        self.route.and_then(|i| config.routes.0.get(i))
    }
}

/// Decides whether (and for whom) `facts` get a token under `config`.
pub fn plan(config: &Config, facts: &RequestFacts<'_>) -> Plan {
    plan_for(config, facts, true)
}

/// The same decision for the token endpoint (SPEC §3a): `facts.path` is the path of the
/// page asking (its same-origin `Referer`), and the request stands for that page's load.
pub fn plan_embed_token(config: &Config, facts: &RequestFacts<'_>) -> Plan {
    plan_for(config, facts, false)
}

fn plan_for(config: &Config, facts: &RequestFacts<'_>, check_page_load: bool) -> Plan {
    let trust = config.trust_rule().decide(facts.peer, facts.client_cert);
    let trusted = trust != TrustSource::None;
    let Some((route_index, route)) = config.routes.find(facts.host, facts.path) else {
        return Plan {
            route: None,
            trusted,
            trust,
            page_load: false,
            decision: Err(NoToken::NoRoute),
        };
    };
    let mut plan = Plan {
        route: Some(route_index),
        trusted,
        trust,
        page_load: false,
        decision: Err(NoToken::NoRoute),
    };
    if check_page_load {
        if let Err(why) = page_load(facts.method, facts.headers) {
            plan.decision = Err(NoToken::NotPageLoad(why));
            return plan;
        }
    }
    plan.page_load = true;
    if !trusted {
        plan.decision = Err(NoToken::UntrustedPeer);
        return plan;
    }
    plan.decision = match &route.identity.jwt {
        Some(jwt) => assertion(facts.headers, &jwt.header).map(Planned::Assertion),
        None => match route.identity.extract(facts.headers) {
            Ok(extraction) => Ok(Planned::Request(
                TokenRequest::new(&route.released.account_id, extraction.identity),
                extraction.dropped,
            )),
            Err(e) => Err(NoToken::Identity(e)),
        },
    };
    plan
}

/// The single, UTF-8 assertion header.
fn assertion(headers: &HeaderMap, name: &http::HeaderName) -> Result<String, NoToken> {
    let mut values = headers.get_all(name).iter();
    let value = values.next().ok_or(NoToken::Assertion(JwtError::Missing))?;
    if values.next().is_some() {
        return Err(NoToken::Assertion(JwtError::MultipleValues));
    }
    value
        .to_str()
        .map(str::to_string)
        .map_err(|_| NoToken::Assertion(JwtError::Malformed("not ASCII")))
}
