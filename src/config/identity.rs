//! The `identity` block: field rules (`header:` or `claim:`), the optional `jwt`
//! assertion settings, and gateway presets that expand to both. Presets are written in the
//! same YAML as a config and decoded by the same code, so a preset can never say
//! something a config could not. Also the top-level `strip_headers` (SPEC §3c): the other
//! gateway families' names, which never reach the app.

use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderName;
use jsonwebtoken::Algorithm;

use super::decode::join;
use super::yaml::{self, Node};
use super::{is_loopback_host, Schema};
use crate::token::identity::{FieldRule, IdentityRules, Source, Transform};
use crate::token::jwt::{JwtSettings, PUBLIC_KEY_ALGORITHMS};
use crate::token::keys::{KeySource, KeyStore};

const IDENTITY_KEYS: &[&str] = &[
    "preset",
    "jwt",
    "user_id",
    "user_email",
    "name",
    "avatar_url",
];
const FIELDS: &[&str] = &["user_id", "user_email", "name", "avatar_url"];
const FIELD_KEYS: &[&str] = &["header", "claim", "pattern", "transform"];
const JWT_KEYS: &[&str] = &[
    "header",
    "jwks_url",
    "jwks_file",
    "key_url",
    "issuer",
    "audience",
    "signer",
    "algorithms",
    "leeway",
    "refresh",
];
/// Default clock skew tolerated on `exp`/`nbf`/`iat`.
const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);
/// Default background refresh of a JWKS URL.
const DEFAULT_KEY_REFRESH: Duration = Duration::from_secs(3600);

/// The gateway presets and what they expand to.
pub const PRESETS: &[(&str, &str)] = &[
    (
        "oauth2-proxy",
        "user_id: { header: X-Forwarded-User, transform: [escape] }
user_email: { header: X-Forwarded-Email }
name: { header: X-Forwarded-Preferred-Username }",
    ),
    (
        "oauth2-proxy-auth-request",
        "user_id: { header: X-Auth-Request-User, transform: [escape] }
user_email: { header: X-Auth-Request-Email }
name: { header: X-Auth-Request-Preferred-Username }",
    ),
    (
        "authelia",
        "user_id: { header: Remote-User, transform: [escape] }
user_email: { header: Remote-Email }
name: { header: Remote-Name }",
    ),
    (
        "authentik",
        "user_id: { header: X-authentik-uid, transform: [escape] }
user_email: { header: X-authentik-email }
name: { header: X-authentik-name }",
    ),
    (
        "pomerium",
        "jwt: { header: X-Pomerium-Jwt-Assertion, algorithms: [ES256] }
user_id: { claim: sub, transform: [escape] }
user_email: { claim: email }
name: { claim: name }
avatar_url: { claim: picture }",
    ),
    (
        "google-iap",
        "jwt:
  header: x-goog-iap-jwt-assertion
  jwks_url: https://www.gstatic.com/iap/verify/public_key-jwk
  issuer: https://cloud.google.com/iap
  algorithms: [ES256]
user_id: { claim: sub, pattern: '^accounts\\.google\\.com:(.+)$', transform: [escape] }
user_email: { claim: email }",
    ),
    (
        "cloudflare-access",
        "jwt: { header: Cf-Access-Jwt-Assertion, algorithms: [RS256] }
user_id: { claim: sub, transform: [escape] }
user_email: { claim: email }",
    ),
    (
        "aws-alb",
        "jwt: { header: x-amzn-oidc-data, algorithms: [ES256] }
user_id: { claim: sub, transform: [escape] }
user_email: { claim: email }
name: { claim: name }
avatar_url: { claim: picture }",
    ),
];

/// Headers that frame or route the request itself: removing them would change how the
/// request is read, not only what the app is told.
const UNSTRIPPABLE: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "trailer",
    "keep-alive",
];

/// A value with where it was written (for errors found after merging).
#[derive(Clone)]
pub(super) struct Defined<T> {
    pub value: T,
    pub path: String,
    pub line: usize,
}

/// An `identity` block as written (with its preset expanded), before merging a route's
/// override with the top level.
#[derive(Default, Clone)]
pub(super) struct PartialIdentity {
    pub written: Vec<&'static str>,
    user_id: Option<Defined<FieldRule>>,
    user_email: Option<Defined<FieldRule>>,
    name: Option<Defined<FieldRule>>,
    avatar_url: Option<Defined<FieldRule>>,
    jwt: Option<Defined<PartialJwt>>,
}

/// A `jwt` block as written.
#[derive(Default, Clone)]
struct PartialJwt {
    written: Vec<&'static str>,
    header: Option<HeaderName>,
    keys: Option<KeySource>,
    issuer: Option<String>,
    audience: Option<Vec<String>>,
    signer: Option<String>,
    algorithms: Option<Vec<Algorithm>>,
    leeway: Option<Duration>,
    refresh: Option<Duration>,
}

/// The keys written in either block, each once.
fn union(mut own: Vec<&'static str>, base: &[&'static str]) -> Vec<&'static str> {
    for key in base {
        if !own.contains(key) {
            own.push(key);
        }
    }
    own
}

impl PartialJwt {
    fn or(self, base: &PartialJwt) -> PartialJwt {
        let written = union(self.written, &base.written);
        PartialJwt {
            written,
            header: self.header.or_else(|| base.header.clone()),
            keys: self.keys.or_else(|| base.keys.clone()),
            issuer: self.issuer.or_else(|| base.issuer.clone()),
            audience: self.audience.or_else(|| base.audience.clone()),
            signer: self.signer.or_else(|| base.signer.clone()),
            algorithms: self.algorithms.or_else(|| base.algorithms.clone()),
            leeway: self.leeway.or(base.leeway),
            refresh: self.refresh.or(base.refresh),
        }
    }
}

impl PartialIdentity {
    /// Every header this block names (fields and `jwt.header`), whether or not a route
    /// ends up using it: the trust boundary strips them all.
    pub fn headers(&self) -> impl Iterator<Item = &HeaderName> {
        [
            &self.user_id,
            &self.user_email,
            &self.name,
            &self.avatar_url,
        ]
        .into_iter()
        .flatten()
        .filter_map(|d| match &d.value.source {
            Source::Header(h) => Some(h),
            Source::Claim(_) => None,
        })
        .chain(self.jwt.as_ref().and_then(|j| j.value.header.as_ref()))
    }

    /// `self` over `base`, key by key (and `jwt` key by key).
    pub fn or(self, base: &PartialIdentity) -> PartialIdentity {
        let jwt = match (self.jwt, &base.jwt) {
            (Some(own), Some(b)) => Some(Defined {
                value: own.value.or(&b.value),
                ..own
            }),
            (own, b) => own.or_else(|| b.clone()),
        };
        let written = union(self.written, &base.written);
        PartialIdentity {
            written,
            user_id: self.user_id.or_else(|| base.user_id.clone()),
            user_email: self.user_email.or_else(|| base.user_email.clone()),
            name: self.name.or_else(|| base.name.clone()),
            avatar_url: self.avatar_url.or_else(|| base.avatar_url.clone()),
            jwt,
        }
    }
}

impl Schema<'_, '_> {
    /// Decodes an `identity` block, expanding its `preset` first.
    pub(super) fn identity(&mut self, node: &Node, path: &str) -> PartialIdentity {
        let Some(fields) = self.d.map(node, path, IDENTITY_KEYS) else {
            return PartialIdentity {
                written: IDENTITY_KEYS.to_vec(),
                ..Default::default()
            };
        };
        let base = match fields.get("preset") {
            Some(n) => self.preset(n, &join(path, "preset")),
            None => PartialIdentity::default(),
        };
        let mut own = PartialIdentity::default();
        for key in FIELDS {
            if fields.has(key) {
                own.written.push(key);
            }
            let Some(n) = fields.get(key) else { continue };
            let field_path = join(path, key);
            let rule = self.field_rule(n, &field_path).map(|value| Defined {
                value,
                path: field_path,
                line: fields.line_of(key),
            });
            match *key {
                "user_id" => own.user_id = rule,
                "user_email" => own.user_email = rule,
                "name" => own.name = rule,
                _ => own.avatar_url = rule,
            }
        }
        if let Some(n) = fields.get("jwt") {
            own.written.push("jwt");
            let jwt_path = join(path, "jwt");
            own.jwt = Some(Defined {
                value: self.jwt(n, &jwt_path),
                path: jwt_path,
                line: fields.line_of("jwt"),
            });
        }
        own.or(&base)
    }

    fn preset(&mut self, node: &Node, path: &str) -> PartialIdentity {
        let Some(name) = self.d.non_empty(node, path) else {
            return PartialIdentity::default();
        };
        let Some((_, text)) = PRESETS.iter().find(|(n, _)| *n == name.trim()) else {
            let names: Vec<&str> = PRESETS.iter().map(|(n, _)| *n).collect();
            self.d.error(
                path,
                node.line,
                format!(
                    "unknown preset `{name}`; expected one of: {}",
                    names.join(", ")
                ),
            );
            return PartialIdentity::default();
        };
        let preset = yaml::parse(text).expect("built-in presets are valid YAML");
        let mut expanded = self.identity(&preset, path);
        // Errors in what a preset leaves to the operator must point at the preset line.
        for d in [
            &mut expanded.user_id,
            &mut expanded.user_email,
            &mut expanded.name,
            &mut expanded.avatar_url,
        ]
        .into_iter()
        .flatten()
        {
            d.line = node.line;
        }
        if let Some(jwt) = &mut expanded.jwt {
            jwt.line = node.line;
            jwt.path = join(path.trim_end_matches(".preset"), "jwt");
        }
        expanded.written.clear();
        expanded
            .written
            .extend(FIELDS.iter().copied().filter(|k| match *k {
                "user_id" => expanded.user_id.is_some(),
                "user_email" => expanded.user_email.is_some(),
                "name" => expanded.name.is_some(),
                _ => expanded.avatar_url.is_some(),
            }));
        expanded
    }

    /// Decodes the top-level `strip_headers` list.
    pub(super) fn strip_headers(&mut self, node: &Node) -> Option<Vec<HeaderName>> {
        const PATH: &str = "strip_headers";
        let items = self.d.strings(node, PATH)?;
        let mut names = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, (text, line)) in items.into_iter().enumerate() {
            let path = format!("{PATH}[{i}]");
            let text = text.trim();
            match HeaderName::from_bytes(text.as_bytes()) {
                Ok(name) if UNSTRIPPABLE.contains(&name.as_str()) => {
                    self.d.error(
                        &path,
                        line,
                        format!(
                            "`{text}` frames or routes the request itself and cannot be stripped"
                        ),
                    );
                    ok = false;
                }
                Ok(name) => names.push(name),
                Err(_) => {
                    self.d
                        .error(&path, line, format!("`{text}` is not a valid header name"));
                    ok = false;
                }
            }
        }
        ok.then_some(names)
    }

    pub(super) fn field_rule(&mut self, node: &Node, path: &str) -> Option<FieldRule> {
        let fields = self.d.map(node, path, FIELD_KEYS)?;
        let source = match (fields.get("header"), fields.get("claim")) {
            (Some(_), Some(_)) => {
                self.d.error(
                    &join(path, "claim"),
                    fields.line_of("claim"),
                    "set either `header` or `claim`, not both",
                );
                None
            }
            (None, None) => {
                self.d.error(
                    &join(path, "header"),
                    node.line,
                    "is required: the request header to read (or `claim:` with identity.jwt)",
                );
                None
            }
            (Some(h), None) => {
                let hp = join(path, "header");
                self.d.non_empty(h, &hp).and_then(|t| {
                    match HeaderName::from_bytes(t.trim().as_bytes()) {
                        Ok(name) => Some(Source::Header(name)),
                        Err(_) => {
                            self.d
                                .error(&hp, h.line, format!("`{t}` is not a valid header name"));
                            None
                        }
                    }
                })
            }
            (None, Some(c)) => self
                .d
                .non_empty(c, &join(path, "claim"))
                .map(|c| Source::Claim(c.trim().to_string())),
        };
        let mut ok = true;
        let pattern = match fields.get("pattern") {
            Some(p) => {
                let re = self.regex(p, &join(path, "pattern"));
                ok &= re.is_some();
                re
            }
            None => None,
        };
        let mut transforms = Vec::new();
        if let Some(t) = fields.get("transform") {
            let tpath = join(path, "transform");
            let names = match &t.value {
                yaml::Value::Scalar { .. } => self.d.string(t, &tpath).map(|s| vec![(s, t.line)]),
                _ => self.d.strings(t, &tpath),
            };
            match names {
                Some(names) => {
                    for (i, (name, line)) in names.into_iter().enumerate() {
                        match Transform::from_name(name.trim()) {
                            Some(tr) => transforms.push(tr),
                            None => {
                                self.d.error(
                                    &format!("{tpath}[{i}]"),
                                    line,
                                    format!(
                                        "unknown transform `{name}`; expected one of: {}",
                                        Transform::NAMES.join(", ")
                                    ),
                                );
                                ok = false;
                            }
                        }
                    }
                }
                None => ok = false,
            }
        }
        if !ok {
            return None;
        }
        Some(FieldRule {
            source: source?,
            pattern,
            transforms,
        })
    }

    fn jwt(&mut self, node: &Node, path: &str) -> PartialJwt {
        let Some(fields) = self.d.map(node, path, JWT_KEYS) else {
            return PartialJwt {
                written: JWT_KEYS.to_vec(),
                ..Default::default()
            };
        };
        let mut out = PartialJwt {
            written: JWT_KEYS.iter().copied().filter(|k| fields.has(k)).collect(),
            ..Default::default()
        };
        if let Some(n) = fields.get("header") {
            let p = join(path, "header");
            out.header = self.d.non_empty(n, &p).and_then(|t| {
                match HeaderName::from_bytes(t.trim().as_bytes()) {
                    Ok(h) => Some(h),
                    Err(_) => {
                        self.d
                            .error(&p, n.line, format!("`{t}` is not a valid header name"));
                        None
                    }
                }
            });
        }
        let sources: Vec<&str> = ["jwks_url", "jwks_file", "key_url"]
            .into_iter()
            .filter(|k| fields.has(k))
            .collect();
        if sources.len() > 1 {
            self.d.error(
                &join(path, sources[1]),
                fields.line_of(sources[1]),
                "set only one of jwks_url, jwks_file and key_url",
            );
        } else if let Some(key) = sources.first() {
            let p = join(path, key);
            if let Some(n) = fields.get(key) {
                out.keys = self.d.non_empty(n, &p).and_then(|text| match *key {
                    "jwks_file" => Some(KeySource::JwksFile(self.base.join(text.trim()))),
                    "key_url" if !text.contains("{kid}") => {
                        self.d.error(&p, n.line, "must contain {kid}, e.g. https://public-keys.auth.elb.eu-west-1.amazonaws.com/{kid}");
                        None
                    }
                    _ => self.key_url(&text, &p, n.line).map(|u| match *key {
                        "jwks_url" => KeySource::JwksUrl(u),
                        _ => KeySource::KeyUrl(u),
                    }),
                });
            }
        }
        if let Some(n) = fields.get("issuer") {
            out.issuer = self.d.non_empty(n, &join(path, "issuer"));
        }
        if let Some(n) = fields.get("signer") {
            out.signer = self.d.non_empty(n, &join(path, "signer"));
        }
        if let Some(n) = fields.get("audience") {
            let p = join(path, "audience");
            out.audience = match &n.value {
                yaml::Value::Scalar { .. } => self.d.non_empty(n, &p).map(|a| vec![a]),
                _ => self.audiences(n, &p),
            };
        }
        if let Some(n) = fields.get("algorithms") {
            out.algorithms = self.algorithms(n, &join(path, "algorithms"));
        }
        if let Some(n) = fields.get("leeway") {
            out.leeway = self.d.duration(n, &join(path, "leeway"));
        }
        if let Some(n) = fields.get("refresh") {
            let p = join(path, "refresh");
            out.refresh = self.d.duration(n, &p);
            if out.refresh.is_some_and(|r| r < Duration::from_secs(60)) {
                self.d.error(
                    &p,
                    n.line,
                    "must be at least 1m (unknown kids trigger a refresh anyway)",
                );
            }
        }
        out
    }

    /// A non-empty list of non-empty audiences: an empty one would switch the `aud` check
    /// off, and with a shared issuer (Google IAP) accept every other customer's assertions.
    fn audiences(&mut self, node: &Node, path: &str) -> Option<Vec<String>> {
        let items = self.d.strings(node, path)?;
        if items.is_empty() {
            self.d.error(
                path,
                node.line,
                "must not be empty: list the audience(s) this app accepts",
            );
            return None;
        }
        let mut ok = true;
        for (i, (text, line)) in items.iter().enumerate() {
            if text.trim().is_empty() {
                self.d
                    .error(&format!("{path}[{i}]"), *line, "must not be empty");
                ok = false;
            }
        }
        ok.then(|| {
            items
                .into_iter()
                .map(|(s, _)| s.trim().to_string())
                .collect()
        })
    }

    /// An https URL (or http to a loopback address, for local stand-ins).
    fn key_url(&mut self, text: &str, path: &str, line: usize) -> Option<String> {
        let probe = text.replace("{kid}", "kid");
        match url::Url::parse(&probe) {
            Ok(u) if u.scheme() == "https" => Some(text.to_string()),
            Ok(u) if u.scheme() == "http" && is_loopback_host(&u) => Some(text.to_string()),
            Ok(_) => {
                self.d.error(
                    path,
                    line,
                    "must use https (plain http is only allowed to a loopback address)",
                );
                None
            }
            Err(e) => {
                self.d
                    .error(path, line, format!("`{text}` is not a URL: {e}"));
                None
            }
        }
    }

    fn algorithms(&mut self, node: &Node, path: &str) -> Option<Vec<Algorithm>> {
        let items = self.d.strings(node, path)?;
        let mut out = Vec::new();
        for (i, (name, line)) in items.into_iter().enumerate() {
            match name.trim().parse::<Algorithm>() {
                Ok(alg) if PUBLIC_KEY_ALGORITHMS.contains(&alg) => out.push(alg),
                Ok(_) => self.d.error(
                    &format!("{path}[{i}]"),
                    line,
                    format!("`{name}` is refused: gateway assertions must be verified with a public key (ES256, RS256, …), never a shared HMAC secret"),
                ),
                Err(_) => self.d.error(
                    &format!("{path}[{i}]"),
                    line,
                    format!("unknown algorithm `{name}`; `none` is never accepted"),
                ),
            }
        }
        if out.is_empty() {
            self.d
                .error(path, node.line, "must name at least one algorithm");
            return None;
        }
        Some(out)
    }

    /// Turns a merged identity block into rules, reporting what is missing or
    /// inconsistent at the paths where it was written.
    pub(super) fn compile_identity(
        &mut self,
        partial: PartialIdentity,
        path: &str,
        line: usize,
    ) -> Option<IdentityRules> {
        let jwt = match partial.jwt {
            Some(defined) => Some(Arc::new(self.compile_jwt(defined)?)),
            None => None,
        };
        let mut ok = true;
        for d in [
            &partial.user_id,
            &partial.user_email,
            &partial.name,
            &partial.avatar_url,
        ]
        .into_iter()
        .flatten()
        {
            let message = match (&d.value.source, &jwt) {
                (Source::Header(_), Some(_)) => {
                    "with identity.jwt set, identity comes only from the verified assertion: use `claim:` instead of `header:`"
                }
                (Source::Claim(_), None) => "`claim:` reads the gateway's signed assertion: set identity.jwt (or use `header:`)",
                _ => continue,
            };
            self.d.error(&d.path, d.line, message);
            ok = false;
        }
        if !ok {
            return None;
        }
        let required = |d: Option<Defined<FieldRule>>, key: &str, s: &mut Self| match d {
            Some(d) => Some(d.value),
            None => {
                s.d.error(&join(path, key), line, "is required");
                None
            }
        };
        let user_id = required(partial.user_id, "user_id", self);
        let user_email = required(partial.user_email, "user_email", self);
        Some(IdentityRules {
            user_id: user_id?,
            user_email: user_email?,
            name: partial.name.map(|d| d.value),
            avatar_url: partial.avatar_url.map(|d| d.value),
            jwt,
        })
    }

    fn compile_jwt(&mut self, defined: Defined<PartialJwt>) -> Option<JwtSettings> {
        let Defined {
            value: jwt,
            path,
            line,
        } = defined;
        let missing = |key: &str, what: &str, present: bool, s: &mut Self| {
            if !present {
                s.d.error(&join(&path, key), line, format!("is required: {what}"));
            }
            present
        };
        let written = |k: &str| jwt.written.contains(&k);
        let mut ok = missing(
            "header",
            "the request header carrying the assertion",
            jwt.header.is_some() || written("header"),
            self,
        );
        ok &= missing(
            "jwks_url",
            "where the keys come from (jwks_url, jwks_file or key_url)",
            jwt.keys.is_some() || written("jwks_url") || written("jwks_file") || written("key_url"),
            self,
        );
        ok &= missing(
            "issuer",
            "the expected `iss` claim",
            jwt.issuer.is_some() || written("issuer"),
            self,
        );
        ok &= missing(
            "audience",
            "the expected `aud` claim (or `signer` for AWS ALB)",
            jwt.audience.is_some()
                || jwt.signer.is_some()
                || written("audience")
                || written("signer"),
            self,
        );
        if !ok {
            return None;
        }
        let source = jwt.keys?;
        let refresh = jwt.refresh.unwrap_or(DEFAULT_KEY_REFRESH);
        let stores = self.key_stores;
        let provided = match (&source, self.read_key_files) {
            (KeySource::JwksFile(_), false) => {
                Ok(Arc::new(KeyStore::unloaded(source.clone(), refresh)))
            }
            _ => stores(&source, refresh),
        };
        let keys = match provided {
            Ok(k) => k,
            Err(e) => {
                let key = match source {
                    KeySource::JwksFile(_) => "jwks_file",
                    KeySource::JwksUrl(_) => "jwks_url",
                    KeySource::KeyUrl(_) => "key_url",
                };
                self.d.error(&join(&path, key), line, e.to_string());
                return None;
            }
        };
        Some(JwtSettings {
            header: jwt.header?,
            keys,
            issuer: jwt.issuer?,
            audience: jwt.audience.unwrap_or_default(),
            signer: jwt.signer,
            algorithms: jwt
                .algorithms
                .unwrap_or_else(|| vec![Algorithm::ES256, Algorithm::RS256]),
            leeway: jwt.leeway.unwrap_or(DEFAULT_LEEWAY),
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::tests::{assert_rejected, load, Expected, MINIMAL};

    #[test]
    fn the_auth_request_preset_reads_what_oauth2_proxy_auth_answers_like_the_proxy_preset() {
        let text = MINIMAL.replace(
            "  user_id: { header: X-Forwarded-User, transform: [escape] }\n  user_email: { header: X-Forwarded-Email }\n",
            "  preset: oauth2-proxy-auth-request\n",
        );
        let c = load(&text).unwrap();
        let rules = &c.routes.0[0].identity;
        let plain = load(&MINIMAL.replace(
            "  user_id: { header: X-Forwarded-User, transform: [escape] }\n  user_email: { header: X-Forwarded-Email }\n",
            "  preset: oauth2-proxy\n",
        ))
        .unwrap();
        let proxy = &plain.routes.0[0].identity;
        // The same mapping, another family of names.
        let shape = |r: &crate::token::identity::IdentityRules| {
            format!("{r:?}")
                .replace("x-auth-request-", "FAMILY-")
                .replace("x-forwarded-", "FAMILY-")
        };
        assert_eq!(shape(rules), shape(proxy));
        let names: Vec<&str> = c
            .identity_headers
            .names()
            .iter()
            .map(|h| h.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "x-auth-request-user",
                "x-auth-request-email",
                "x-auth-request-preferred-username"
            ]
        );
    }

    #[test]
    fn strip_headers_load_and_every_bad_name_is_reported_with_path_and_line() {
        let c = load(&format!(
            "{MINIMAL}strip_headers: [X-Forwarded-User, x_forwarded_email, X-Forwarded-User]\n"
        ))
        .unwrap();
        let stripped: Vec<&str> = c
            .identity_headers
            .stripped()
            .iter()
            .map(|h| h.as_str())
            .collect();
        assert_eq!(stripped, ["x-forwarded-user", "x_forwarded_email"]);
        assert!(load(MINIMAL)
            .unwrap()
            .identity_headers
            .stripped()
            .is_empty());

        let cases: &[(&str, &[Expected])] = &[
            (
                "strip_headers:\n  - Host\n  - \"Bad Name\"\n  - Content-Length\n",
                &[
                    ("strip_headers[0]", 9, "frames or routes the request"),
                    ("strip_headers[1]", 10, "not a valid header name"),
                    ("strip_headers[2]", 11, "frames or routes the request"),
                ],
            ),
            (
                "strip_headers: X-Forwarded-User\n",
                &[("strip_headers", 8, "expected a list")],
            ),
        ];
        for (yaml, expected) in cases {
            assert_rejected(&format!("{MINIMAL}{yaml}"), expected);
        }
    }
}
