//! Who the signed-in user is: the `identity` rules of the config turn the gateway's
//! request headers (or a verified assertion's claims) into an [`Identity`] that already
//! satisfies the Released field rules (SPEC §1), or into the precise reason there is none.
//! Pure functions, no I/O.

use std::fmt;
use std::sync::Arc;

use http::header::{HeaderMap, HeaderName};
use regex::Regex;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::token::jwt::JwtSettings;

/// Released's rule for `user_id`: `^[a-zA-Z0-9:_-]{1,255}$`.
const USER_ID_MAX: usize = 255;
/// Released's cap on `profile.name`, in characters.
const NAME_MAX_CHARS: usize = 200;
/// RFC 5321's limit on a forward path.
const EMAIL_MAX: usize = 254;

/// One of the four user fields a token request can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// `user_id` (required).
    UserId,
    /// `user_email` (required).
    UserEmail,
    /// `profile.name` (optional).
    Name,
    /// `profile.avatar_url` (optional).
    AvatarUrl,
}

impl Field {
    /// The config key of the field.
    pub fn key(self) -> &'static str {
        match self {
            Field::UserId => "user_id",
            Field::UserEmail => "user_email",
            Field::Name => "name",
            Field::AvatarUrl => "avatar_url",
        }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

/// A step applied to a header value after `pattern`, in the order written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transform {
    /// Unicode lowercase.
    Lowercase,
    /// Strip surrounding whitespace.
    Trim,
    /// Lowercase hex SHA-256 of the UTF-8 bytes.
    Sha256,
    /// Every byte outside `[A-Za-z0-9_-]` becomes `:` plus two hex digits (`:` too), so any
    /// string becomes a valid, collision-free `user_id`.
    Escape,
}

impl Transform {
    /// Parses a transform name as written in the config.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "lowercase" => Some(Transform::Lowercase),
            "trim" => Some(Transform::Trim),
            "sha256" => Some(Transform::Sha256),
            "escape" => Some(Transform::Escape),
            _ => None,
        }
    }

    /// All names, for error messages.
    pub const NAMES: &'static [&'static str] = &["lowercase", "trim", "sha256", "escape"];

    fn apply(self, value: String) -> String {
        match self {
            Transform::Lowercase => value.to_lowercase(),
            Transform::Trim => {
                let trimmed = value.trim();
                if trimmed.len() == value.len() {
                    value
                } else {
                    trimmed.to_string()
                }
            }
            Transform::Sha256 => hex::encode(Sha256::digest(value.as_bytes())),
            Transform::Escape => escape(&value),
        }
    }
}

/// Where a user field's raw value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A request header (set by the gateway).
    Header(HeaderName),
    /// A claim of the verified gateway assertion (`identity.jwt`).
    Claim(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Header(h) => write!(f, "header {h}"),
            Source::Claim(c) => write!(f, "claim {c}"),
        }
    }
}

/// How one user field is read: a header or claim, an optional regex (capture group 1 is
/// kept) and transforms.
#[derive(Debug, Clone)]
pub struct FieldRule {
    /// Where the value comes from.
    pub source: Source,
    /// When set, the value must match and capture group 1 (or the whole match) is kept.
    pub pattern: Option<Regex>,
    /// Applied after `pattern`, in order.
    pub transforms: Vec<Transform>,
}

/// The compiled `identity` block of one route.
#[derive(Debug, Clone)]
pub struct IdentityRules {
    /// Rule for `user_id`.
    pub user_id: FieldRule,
    /// Rule for `user_email`.
    pub user_email: FieldRule,
    /// Rule for `profile.name`, if configured.
    pub name: Option<FieldRule>,
    /// Rule for `profile.avatar_url`, if configured.
    pub avatar_url: Option<FieldRule>,
    /// When set, identity comes only from this verified assertion (every rule reads a
    /// claim).
    pub jwt: Option<Arc<JwtSettings>>,
}

/// A user as Released will see it; every field already passes the SPEC §1 rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Matches `^[a-zA-Z0-9:_-]{1,255}$`.
    pub user_id: String,
    /// An email address.
    pub user_email: String,
    /// At most 200 characters.
    pub name: Option<String>,
    /// An absolute http(s) URL.
    pub avatar_url: Option<String>,
}

/// An optional field that was configured but left out, and why (shown by `explain`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    /// The field left out.
    pub field: Field,
    /// Why.
    pub reason: FieldProblem,
}

/// The result of reading the identity headers of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extraction {
    /// The user.
    pub identity: Identity,
    /// Optional fields that were configured but could not be used.
    pub dropped: Vec<Dropped>,
}

/// Why a field has no usable value. Never carries the header value itself, so it can be
/// logged and counted without leaking who the user is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldProblem {
    /// The header is absent.
    MissingHeader(HeaderName),
    /// The header appears more than once; a proxy chain that appends instead of replacing
    /// could let a client smuggle a second value, so no value is trusted.
    MultipleValues(HeaderName, usize),
    /// The header bytes are not UTF-8.
    NotUtf8(HeaderName),
    /// `pattern` did not match (the source, e.g. `header x-forwarded-user`).
    PatternMismatch(String),
    /// Nothing was left after `pattern` and the transforms.
    Empty(String),
    /// `user_id` breaks `^[a-zA-Z0-9:_-]{1,255}$` (add `transform: [escape]` or `sha256`).
    InvalidUserId,
    /// `user_email` is not an email address.
    InvalidEmail,
    /// `avatar_url` is not an absolute http(s) URL.
    InvalidAvatarUrl,
    /// The assertion has no such claim.
    MissingClaim(String),
    /// The claim is a list or an object.
    ClaimNotAString(String),
}

impl FieldProblem {
    /// A stable short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            FieldProblem::MissingHeader(_) => "missing_header",
            FieldProblem::MultipleValues(..) => "multiple_values",
            FieldProblem::NotUtf8(_) => "not_utf8",
            FieldProblem::PatternMismatch(_) => "pattern_mismatch",
            FieldProblem::Empty(_) => "empty",
            FieldProblem::InvalidUserId => "invalid_user_id",
            FieldProblem::InvalidEmail => "invalid_email",
            FieldProblem::InvalidAvatarUrl => "invalid_avatar_url",
            FieldProblem::MissingClaim(_) => "missing_claim",
            FieldProblem::ClaimNotAString(_) => "claim_not_a_string",
        }
    }
}

impl fmt::Display for FieldProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FieldProblem::MissingHeader(h) => write!(f, "header {h} is missing"),
            FieldProblem::MultipleValues(h, n) => {
                write!(f, "header {h} appears {n} times; exactly one is required")
            }
            FieldProblem::NotUtf8(h) => write!(f, "header {h} is not valid UTF-8"),
            FieldProblem::PatternMismatch(s) => write!(f, "{s} does not match `pattern`"),
            FieldProblem::Empty(s) => write!(f, "{s} is empty after pattern and transforms"),
            FieldProblem::InvalidUserId => write!(
                f,
                "value breaks Released's rule ^[a-zA-Z0-9:_-]{{1,255}}$ (add `transform: [escape]`)"
            ),
            FieldProblem::InvalidEmail => write!(f, "value is not an email address"),
            FieldProblem::InvalidAvatarUrl => {
                write!(f, "value is not an absolute http(s) URL")
            }
            FieldProblem::MissingClaim(c) => write!(f, "claim {c} is missing"),
            FieldProblem::ClaimNotAString(c) => write!(f, "claim {c} is not a single value"),
        }
    }
}

/// Why no identity could be built: a required field has a problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct IdentityError {
    /// The required field.
    pub field: Field,
    /// What is wrong with it.
    pub problem: FieldProblem,
}

impl IdentityRules {
    /// Every header these rules read, the assertion header included (the trust boundary
    /// strips them from untrusted peers).
    pub fn headers(&self) -> impl Iterator<Item = &HeaderName> {
        [
            Some(&self.user_id),
            Some(&self.user_email),
            self.name.as_ref(),
            self.avatar_url.as_ref(),
        ]
        .into_iter()
        .flatten()
        .filter_map(|rule| match &rule.source {
            Source::Header(h) => Some(h),
            Source::Claim(_) => None,
        })
        .chain(self.jwt.as_ref().map(|j| &j.header))
    }

    /// Builds the identity of a request from its headers.
    pub fn extract(&self, headers: &HeaderMap) -> Result<Extraction, IdentityError> {
        self.extract_from(&Values::Headers(headers))
    }

    /// Builds the identity from the claims of a verified assertion.
    pub fn extract_claims(&self, claims: &Map<String, Value>) -> Result<Extraction, IdentityError> {
        self.extract_from(&Values::Claims(claims))
    }

    fn extract_from(&self, values: &Values<'_>) -> Result<Extraction, IdentityError> {
        let required = |field: Field, rule: &FieldRule| {
            read_field(rule, values).map_err(|problem| IdentityError { field, problem })
        };
        let user_id = required(Field::UserId, &self.user_id)?;
        if !valid_user_id(&user_id) {
            return Err(IdentityError {
                field: Field::UserId,
                problem: FieldProblem::InvalidUserId,
            });
        }
        let user_email = required(Field::UserEmail, &self.user_email)?;
        if !valid_email(&user_email) {
            return Err(IdentityError {
                field: Field::UserEmail,
                problem: FieldProblem::InvalidEmail,
            });
        }

        let mut dropped = Vec::new();
        let mut optional =
            |field: Field,
             rule: Option<&FieldRule>,
             check: fn(String) -> Result<String, FieldProblem>| {
                let value = read_field(rule?, values).and_then(check);
                match value {
                    Ok(v) => Some(v),
                    // An absent optional value is the normal case, not worth reporting.
                    Err(FieldProblem::MissingHeader(_) | FieldProblem::MissingClaim(_)) => None,
                    Err(reason) => {
                        dropped.push(Dropped { field, reason });
                        None
                    }
                }
            };
        let name = optional(Field::Name, self.name.as_ref(), |v| {
            Ok(truncate_chars(v, NAME_MAX_CHARS))
        });
        let avatar_url = optional(Field::AvatarUrl, self.avatar_url.as_ref(), |v| {
            if valid_avatar_url(&v) {
                Ok(v)
            } else {
                Err(FieldProblem::InvalidAvatarUrl)
            }
        });
        Ok(Extraction {
            identity: Identity {
                user_id,
                user_email,
                name,
                avatar_url,
            },
            dropped,
        })
    }
}

/// Where field values are read from.
enum Values<'a> {
    Headers(&'a HeaderMap),
    Claims(&'a Map<String, Value>),
}

impl Values<'_> {
    fn raw(&self, source: &Source) -> Result<String, FieldProblem> {
        match (self, source) {
            (Values::Headers(headers), Source::Header(header)) => {
                let mut values = headers.get_all(header).iter();
                let first = values
                    .next()
                    .ok_or_else(|| FieldProblem::MissingHeader(header.clone()))?;
                let extra = values.count();
                if extra > 0 {
                    return Err(FieldProblem::MultipleValues(header.clone(), extra + 1));
                }
                std::str::from_utf8(first.as_bytes())
                    .map(str::to_string)
                    .map_err(|_| FieldProblem::NotUtf8(header.clone()))
            }
            (Values::Claims(claims), Source::Claim(name)) => match claims.get(name) {
                None | Some(Value::Null) => Err(FieldProblem::MissingClaim(name.clone())),
                Some(Value::String(s)) => Ok(s.clone()),
                Some(Value::Number(n)) => Ok(n.to_string()),
                Some(Value::Bool(b)) => Ok(b.to_string()),
                Some(_) => Err(FieldProblem::ClaimNotAString(name.clone())),
            },
            // The config never mixes sources; a mismatch reads as absent.
            (_, Source::Header(h)) => Err(FieldProblem::MissingHeader(h.clone())),
            (_, Source::Claim(c)) => Err(FieldProblem::MissingClaim(c.clone())),
        }
    }
}

/// Source → pattern → transforms, for one field.
fn read_field(rule: &FieldRule, values: &Values<'_>) -> Result<String, FieldProblem> {
    let raw = values.raw(&rule.source)?;
    let mut value = match &rule.pattern {
        None => raw,
        Some(re) => {
            let caps = re
                .captures(&raw)
                .ok_or_else(|| FieldProblem::PatternMismatch(rule.source.to_string()))?;
            caps.get(1)
                .or_else(|| caps.get(0))
                .map(|m| m.as_str().to_string())
                .unwrap_or_default()
        }
    };
    for transform in &rule.transforms {
        value = transform.apply(value);
    }
    if value.is_empty() {
        return Err(FieldProblem::Empty(rule.source.to_string()));
    }
    Ok(value)
}

/// `^[a-zA-Z0-9:_-]{1,255}$` without a regex on the hot path.
pub fn valid_user_id(s: &str) -> bool {
    (1..=USER_ID_MAX).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'-'))
}

/// A pragmatic address check: one `@`, a non-empty local part without spaces or
/// delimiters, and a dotted domain of non-empty labels.
pub fn valid_email(s: &str) -> bool {
    if s.len() > EMAIL_MAX {
        return false;
    }
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    let forbidden = |c: char| c.is_whitespace() || c.is_control() || "@<>()[]\\,;:\"".contains(c);
    let label_ok = |l: &str| {
        !l.is_empty()
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_alphanumeric() || c == '-')
    };
    !local.is_empty()
        && local.len() <= 64
        && !local.chars().any(forbidden)
        && domain.contains('.')
        && domain.split('.').all(label_ok)
}

/// An absolute http or https URL with a host.
pub fn valid_avatar_url(s: &str) -> bool {
    match url::Url::parse(s) {
        Ok(u) => {
            matches!(u.scheme(), "http" | "https") && u.host_str().is_some_and(|h| !h.is_empty())
        }
        Err(_) => false,
    }
}

/// Keeps at most `max` characters, cutting on a character boundary.
fn truncate_chars(mut s: String, max: usize) -> String {
    if let Some((idx, _)) = s.char_indices().nth(max) {
        s.truncate(idx);
    }
    s
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(char::from(b));
        } else {
            out.push(':');
            out.push_str(&hex::encode([b]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn rule(header: &str, pattern: Option<&str>, transforms: &[Transform]) -> FieldRule {
        FieldRule {
            source: Source::Header(HeaderName::from_bytes(header.as_bytes()).unwrap()),
            pattern: pattern.map(|p| Regex::new(p).unwrap()),
            transforms: transforms.to_vec(),
        }
    }

    fn rules() -> IdentityRules {
        IdentityRules {
            user_id: rule("x-user", None, &[Transform::Escape]),
            user_email: rule("x-email", None, &[]),
            name: Some(rule("x-name", None, &[])),
            avatar_url: Some(rule("x-avatar", None, &[])),
            jwt: None,
        }
    }

    fn headers(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_bytes(v).unwrap(),
            );
        }
        map
    }

    #[test]
    fn transforms_apply_in_order() {
        let cases: &[(&str, &[Transform], &str)] = &[
            ("  Alice  ", &[Transform::Trim], "Alice"),
            ("Alice", &[Transform::Lowercase], "alice"),
            ("ÉLODIE", &[Transform::Lowercase], "élodie"),
            ("a@b.c", &[Transform::Escape], "a:40b:2ec"),
            ("a:b", &[Transform::Escape], "a:3ab"),
            ("é", &[Transform::Escape], ":c3:a9"),
            (
                "alice",
                &[Transform::Sha256],
                "2bd806c97f0e00af1a1fc3328fa763a9269723c8db8fac4f93af71db186d6e90",
            ),
            (
                " Bob ",
                &[Transform::Trim, Transform::Lowercase, Transform::Escape],
                "bob",
            ),
            (" Bob ", &[Transform::Escape, Transform::Trim], ":20Bob:20"),
        ];
        for (input, transforms, want) in cases {
            let mut v = input.to_string();
            for t in *transforms {
                v = t.apply(v);
            }
            assert_eq!(&v, want, "{input:?} {transforms:?}");
        }
    }

    #[test]
    fn escape_is_collision_free_and_always_a_valid_user_id() {
        let inputs = ["a:3ab", "a:b", "a b", "a_b", "", "ü", "::"];
        let escaped: Vec<String> = inputs.iter().map(|s| escape(s)).collect();
        for (i, a) in escaped.iter().enumerate() {
            for b in &escaped[i + 1..] {
                assert_ne!(a, b);
            }
            assert!(a.is_empty() || valid_user_id(a), "{a}");
        }
    }

    #[test]
    fn pattern_keeps_capture_group_one_or_reports_a_miss() {
        let r = rule("x-goog", Some("^accounts.google.com:(.+)$"), &[]);
        let ok = headers(&[("x-goog", b"accounts.google.com:alice@example.com")]);
        assert_eq!(
            read_field(&r, &Values::Headers(&ok)).unwrap(),
            "alice@example.com"
        );
        let miss = headers(&[("x-goog", b"alice@example.com")]);
        assert!(matches!(
            read_field(&r, &Values::Headers(&miss)),
            Err(FieldProblem::PatternMismatch(_))
        ));
        let whole = rule("x-goog", Some("[a-z]+"), &[]);
        assert_eq!(
            read_field(&whole, &Values::Headers(&ok)).unwrap(),
            "accounts"
        );
    }

    #[test]
    fn a_full_identity_is_extracted() {
        let h = headers(&[
            ("x-user", b"alice@example.com"),
            ("x-email", b"alice@example.com"),
            ("x-name", "José Ñandú".as_bytes()),
            ("x-avatar", b"https://cdn.example.com/a.png"),
        ]);
        let got = rules().extract(&h).unwrap();
        assert_eq!(
            got.identity,
            Identity {
                user_id: "alice:40example:2ecom".into(),
                user_email: "alice@example.com".into(),
                name: Some("José Ñandú".into()),
                avatar_url: Some("https://cdn.example.com/a.png".into()),
            }
        );
        assert!(got.dropped.is_empty());
    }

    #[test]
    fn required_field_problems_are_errors() {
        let mut raw_rules = rules();
        raw_rules.user_id.transforms.clear();
        let cases: Vec<(HeaderMap, Field, &str)> = vec![
            (
                headers(&[("x-email", b"a@b.co")]),
                Field::UserId,
                "missing_header",
            ),
            (
                headers(&[
                    ("x-user", b"alice"),
                    ("x-user", b"mallory"),
                    ("x-email", b"a@b.co"),
                ]),
                Field::UserId,
                "multiple_values",
            ),
            (
                headers(&[("x-user", b"al\xffce"), ("x-email", b"a@b.co")]),
                Field::UserId,
                "not_utf8",
            ),
            (
                headers(&[("x-user", b"alice smith"), ("x-email", b"a@b.co")]),
                Field::UserId,
                "invalid_user_id",
            ),
            (
                headers(&[("x-user", &[b'a'; 256]), ("x-email", b"a@b.co")]),
                Field::UserId,
                "invalid_user_id",
            ),
            (
                headers(&[("x-user", b"alice"), ("x-email", b"not-an-email")]),
                Field::UserEmail,
                "invalid_email",
            ),
            (
                headers(&[("x-user", b"alice")]),
                Field::UserEmail,
                "missing_header",
            ),
        ];
        for (h, field, label) in cases {
            let err = raw_rules.extract(&h).unwrap_err();
            assert_eq!((err.field, err.problem.label()), (field, label), "{h:?}");
        }
        let ok = headers(&[("x-user", &[b'a'; 255]), ("x-email", b"a@b.co")]);
        assert!(raw_rules.extract(&ok).is_ok());
    }

    #[test]
    fn name_is_truncated_to_200_chars_on_a_char_boundary() {
        let long: String = "é".repeat(250);
        let h = headers(&[
            ("x-user", b"alice"),
            ("x-email", b"a@b.co"),
            ("x-name", long.as_bytes()),
        ]);
        let name = rules().extract(&h).unwrap().identity.name.unwrap();
        assert_eq!(name.chars().count(), 200);
        assert_eq!(name, "é".repeat(200));
    }

    #[test]
    fn bad_optional_fields_are_dropped_not_fatal() {
        let cases: &[(&[u8], Option<&str>, Option<&str>)] = &[
            (
                b"https://x.example/a.png",
                Some("https://x.example/a.png"),
                None,
            ),
            (
                b"http://x.example/a.png",
                Some("http://x.example/a.png"),
                None,
            ),
            (b"/relative.png", None, Some("invalid_avatar_url")),
            (b"javascript:alert(1)", None, Some("invalid_avatar_url")),
            (b"ftp://x.example/a.png", None, Some("invalid_avatar_url")),
            (b"\xff", None, Some("not_utf8")),
        ];
        for (avatar, want, dropped) in cases {
            let h = headers(&[
                ("x-user", b"alice"),
                ("x-email", b"a@b.co"),
                ("x-avatar", avatar),
            ]);
            let got = rules().extract(&h).unwrap();
            assert_eq!(got.identity.avatar_url.as_deref(), *want);
            assert_eq!(got.dropped.first().map(|d| d.reason.label()), *dropped);
        }
    }

    #[test]
    fn email_rules() {
        for ok in ["a@b.co", "first.last+tag@sub.example.com", "ü@exämple.de"] {
            assert!(valid_email(ok), "{ok}");
        }
        for bad in [
            "", "a", "a@", "@b.co", "a@b", "a b@c.de", "a@b..co", "a@-b.co", "a@b@c.de", "<a>@b.co",
        ] {
            assert!(!valid_email(bad), "{bad}");
        }
    }

    #[test]
    fn claims_feed_the_same_pipeline() {
        let claim = |name: &str, pattern: Option<&str>, t: &[Transform]| FieldRule {
            source: Source::Claim(name.into()),
            pattern: pattern.map(|p| Regex::new(p).unwrap()),
            transforms: t.to_vec(),
        };
        let rules = IdentityRules {
            user_id: claim(
                "sub",
                Some("^accounts.google.com:(.+)$"),
                &[Transform::Escape],
            ),
            user_email: claim("email", None, &[Transform::Lowercase]),
            name: Some(claim("name", None, &[])),
            avatar_url: Some(claim("picture", None, &[])),
            jwt: None,
        };
        let claims = serde_json::json!({"sub": "accounts.google.com:1234", "email": "Alice@Example.com", "name": "Alice", "picture": ["x"]});
        let got = rules.extract_claims(claims.as_object().unwrap()).unwrap();
        assert_eq!(got.identity.user_id, "1234");
        assert_eq!(got.identity.user_email, "alice@example.com");
        assert_eq!(got.dropped[0].reason.label(), "claim_not_a_string");
        let missing = serde_json::json!({"sub": "accounts.google.com:1"});
        let err = rules
            .extract_claims(missing.as_object().unwrap())
            .unwrap_err();
        assert_eq!(
            (err.field, err.problem.label()),
            (Field::UserEmail, "missing_claim")
        );
        // A header never satisfies a claim rule.
        let h = headers(&[("email", b"a@b.co"), ("sub", b"x")]);
        assert!(rules.extract(&h).is_err());
    }

    #[test]
    fn problems_never_contain_the_value() {
        let h = headers(&[("x-user", b"secret-user smith"), ("x-email", b"a@b.co")]);
        let mut r = rules();
        r.user_id.transforms.clear();
        let err = r.extract(&h).unwrap_err().to_string();
        assert!(!err.contains("secret-user"), "{err}");
    }
}
