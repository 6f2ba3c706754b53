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
/// RFC 5321's limit on a local part.
const EMAIL_LOCAL_MAX: usize = 64;
/// Longest `avatar_url` sent (browsers and CDNs cope with far longer, but an avatar URL
/// longer than this is not one).
const AVATAR_URL_MAX: usize = 2048;

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
    /// An email address Released accepts: printable ASCII, the domain punycoded.
    pub user_email: String,
    /// At most 200 characters, without control or bidi characters.
    pub name: Option<String>,
    /// An absolute http(s) URL in its canonical form.
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
            FieldProblem::InvalidEmail => write!(
                f,
                "value is not an email address Released accepts (a printable ASCII local part without leading, trailing or double dots, @, a domain name)"
            ),
            FieldProblem::InvalidAvatarUrl => write!(
                f,
                "value is not an absolute http(s) URL of at most {AVATAR_URL_MAX} bytes without whitespace, quotes, angle brackets or backslashes"
            ),
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
        let user_email = email(&user_email).ok_or(IdentityError {
            field: Field::UserEmail,
            problem: FieldProblem::InvalidEmail,
        })?;

        let mut dropped = Vec::new();
        let mut optional =
            |field: Field,
             rule: Option<&FieldRule>,
             check: fn(&FieldRule, String) -> Result<String, FieldProblem>| {
                let rule = rule?;
                let value = read_field(rule, values).and_then(|v| check(rule, v));
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
        let name = optional(Field::Name, self.name.as_ref(), |rule, v| {
            let shown = strip_hidden(v);
            if shown.is_empty() {
                return Err(FieldProblem::Empty(rule.source.to_string()));
            }
            Ok(truncate_chars(shown, NAME_MAX_CHARS))
        });
        let avatar_url = optional(Field::AvatarUrl, self.avatar_url.as_ref(), |_, v| {
            avatar_url(&v).ok_or(FieldProblem::InvalidAvatarUrl)
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

/// The address as sent to Released, if it is one Released accepts: one `@`; a local part
/// of printable ASCII without the delimiters `()<>[]\\,;:"` and without a leading,
/// trailing or doubled dot (quoted local parts are not supported); a domain of at least
/// two letter-digit-hyphen labels. A domain written in Unicode is converted to punycode
/// (IDNA, as browsers submit an `<input type=email>`); an ASCII one is sent as given.
/// Invisible characters (zero-width, bidi controls) are refused anywhere.
pub fn email(s: &str) -> Option<String> {
    if s.len() > EMAIL_MAX {
        return None;
    }
    let (local, domain) = s.split_once('@')?;
    if !valid_local_part(local) {
        return None;
    }
    let domain = if domain.is_ascii() {
        domain.to_string()
    } else {
        // The URL host parser applies IDNA; it also percent-decodes, so `%` is kept out.
        let suspicious =
            |c: char| c.is_control() || c.is_whitespace() || is_hidden(c) || "%@/\\[]:".contains(c);
        if domain.chars().any(suspicious) {
            return None;
        }
        match url::Host::parse(domain) {
            Ok(url::Host::Domain(ascii)) => ascii,
            _ => return None,
        }
    };
    if !valid_domain(&domain) {
        return None;
    }
    let address = format!("{local}@{domain}");
    (address.len() <= EMAIL_MAX).then_some(address)
}

fn valid_local_part(local: &str) -> bool {
    (1..=EMAIL_LOCAL_MAX).contains(&local.len())
        && local
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"()<>[]\\,;:\"@".contains(&b))
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
}

/// Letter-digit-hyphen labels of 1 to 63 bytes, at least two of them, the last not all
/// digits (an address literal must be written `[…]`, which is not supported).
fn valid_domain(domain: &str) -> bool {
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    domain.len() <= 253
        && domain.contains('.')
        && domain.split('.').all(label_ok)
        && !domain
            .rsplit('.')
            .next()
            .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
}

/// The canonical form (`url::Url` serialization) of an absolute http(s) URL with a host
/// and no credentials, if the raw text has no whitespace, control or invisible character,
/// quote, angle bracket or backslash and neither it nor its canonical form is longer than
/// `AVATAR_URL_MAX`. The raw text is checked before parsing because the URL parser
/// repairs some of these (it drops tabs and newlines and reads `\\` as `/`).
pub fn avatar_url(raw: &str) -> Option<String> {
    if raw.len() > AVATAR_URL_MAX {
        return None;
    }
    let forbidden = |c: char| {
        c.is_whitespace()
            || c.is_control()
            || is_hidden(c)
            || matches!(c, '"' | '\'' | '`' | '<' | '>' | '\\')
    };
    if raw.chars().any(forbidden) {
        return None;
    }
    let scheme_ok = ["http://", "https://"].iter().any(|p| {
        raw.get(..p.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(p))
    });
    if !scheme_ok {
        return None;
    }
    let url = url::Url::parse(raw).ok()?;
    let usable = matches!(url.scheme(), "http" | "https")
        && url.host_str().is_some_and(|h| !h.is_empty())
        && url.username().is_empty()
        && url.password().is_none();
    let canonical: String = url.into();
    (usable && canonical.len() <= AVATAR_URL_MAX).then_some(canonical)
}

/// Characters that change how text around them is shown without being seen: zero-width
/// characters, bidi marks, embeddings, overrides and isolates, and other invisible format
/// characters. A name carrying U+202E can display as someone else's.
fn is_hidden(c: char) -> bool {
    matches!(
        c,
        '\u{00ad}'
            | '\u{061c}'
            | '\u{180e}'
            | '\u{200b}'..='\u{200f}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{2069}'
            | '\u{feff}'
            | '\u{fff9}'..='\u{fffb}'
            | '\u{e0000}'..='\u{e007f}'
    )
}

/// `name` without control characters and the invisible ones of [`is_hidden`].
fn strip_hidden(value: String) -> String {
    if value.chars().any(|c| c.is_control() || is_hidden(c)) {
        value
            .chars()
            .filter(|c| !c.is_control() && !is_hidden(*c))
            .collect()
    } else {
        value
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
            (
                b"HTTPS://X.example/a/../a.png",
                Some("https://x.example/a.png"),
                None,
            ),
            (b"/relative.png", None, Some("invalid_avatar_url")),
            (b"javascript:alert(1)", None, Some("invalid_avatar_url")),
            (b"ftp://x.example/a.png", None, Some("invalid_avatar_url")),
            (
                b"https://cdn.example/a.png\"><img src=x onerror=alert(1)>",
                None,
                Some("invalid_avatar_url"),
            ),
            (
                b"https:\\\\cdn.example\\a.png",
                None,
                Some("invalid_avatar_url"),
            ),
            (
                b"https://cdn.exa\tmple/a.png",
                None,
                Some("invalid_avatar_url"),
            ),
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
        let cases: &[(&str, Option<&str>)] = &[
            ("a@b.co", Some("a@b.co")),
            (
                "first.last+tag@sub.example.com",
                Some("first.last+tag@sub.example.com"),
            ),
            (
                "o'brien_{x}|~@example.com",
                Some("o'brien_{x}|~@example.com"),
            ),
            ("Alice@Example.COM", Some("Alice@Example.COM")),
            // A Unicode domain is sent punycoded; an ASCII one as given.
            ("anna@exämple.de", Some("anna@xn--exmple-cua.de")),
            ("anna@bücher.example", Some("anna@xn--bcher-kva.example")),
            ("", None),
            ("a", None),
            ("a@", None),
            ("@b.co", None),
            ("a@b", None),
            ("a b@c.de", None),
            ("a\tb@c.de", None),
            ("a@b..co", None),
            ("a@-b.co", None),
            ("a@b-.co", None),
            ("a@b@c.de", None),
            ("<a>@b.co", None),
            ("a@b.co.", None),
            ("a@1.2.3.4", None),
            ("a@[1.2.3.4]", None),
            ("a@b_c.de", None),
            // The examples: a leading dot, a double dot, zero-width and bidi.
            (".alice@example.com", None),
            ("alice.@example.com", None),
            ("a..b@example.com", None),
            ("ali\u{200b}ce@example.com", None),
            ("alice@exa\u{200b}mple.com", None),
            ("\u{202e}moc.elpmaxe@ecila", None),
            ("alice@example.com\u{202e}", None),
            ("alice@exam\u{2066}ple.com", None),
            ("alice@exa%41mple.com", None),
            ("ü@exämple.de", None),
            ("é@example.com", None),
        ];
        for (input, want) in cases {
            assert_eq!(email(input).as_deref(), *want, "{input:?}");
        }
        let long_local = format!("{}@example.com", "a".repeat(65));
        assert_eq!(email(&long_local), None);
        let long = format!("a@{}.com", "b.".repeat(130));
        assert_eq!(email(&long), None);
    }

    #[test]
    fn avatar_url_rules() {
        let cases: &[(&str, Option<&str>)] = &[
            (
                "https://cdn.example/a.png",
                Some("https://cdn.example/a.png"),
            ),
            (
                "http://cdn.example/a.png?s=64",
                Some("http://cdn.example/a.png?s=64"),
            ),
            (
                "HTTPS://CDN.Example/a.png",
                Some("https://cdn.example/a.png"),
            ),
            ("https://cdn.example", Some("https://cdn.example/")),
            (
                "https://cdn.example:443/a.png",
                Some("https://cdn.example/a.png"),
            ),
            (
                "https://cdn.example/ä.png",
                Some("https://cdn.example/%C3%A4.png"),
            ),
            (
                "https://bücher.example/a.png",
                Some("https://xn--bcher-kva.example/a.png"),
            ),
            (
                "https://cdn.example/a/../b.png",
                Some("https://cdn.example/b.png"),
            ),
            // The examples.
            ("https://cdn.example/a b.png", None),
            (
                "https://cdn.example/a.png\"><img src=x onerror=alert(1)>",
                None,
            ),
            ("https:\\\\cdn.example\\a.png", None),
            ("https://cdn.exa\tmple/a.png", None),
            ("https://cdn.example/a.png\n", None),
            ("https://cdn.example/\u{200b}a.png", None),
            ("https://cdn.example/\u{202e}gnp.a", None),
            ("https://cdn.example/a'.png", None),
            ("https://cdn.example/a`.png", None),
            ("https://cdn.example/<a>.png", None),
            ("/relative.png", None),
            ("//cdn.example/a.png", None),
            ("https:cdn.example/a.png", None),
            ("javascript:alert(1)", None),
            ("data:image/png;base64,AAAA", None),
            ("ftp://cdn.example/a.png", None),
            ("https://", None),
            ("https://user:pass@cdn.example/a.png", None),
            ("https://cdn.example@evil.example/a.png", None),
        ];
        for (input, want) in cases {
            assert_eq!(avatar_url(input).as_deref(), *want, "{input:?}");
        }
        let at_limit = format!("https://cdn.example/{}", "a".repeat(AVATAR_URL_MAX - 20));
        assert_eq!(at_limit.len(), AVATAR_URL_MAX);
        assert_eq!(avatar_url(&at_limit).as_deref(), Some(at_limit.as_str()));
        let over = format!("{at_limit}b");
        assert_eq!(avatar_url(&over), None);
        // Short enough as written, too long once canonical (percent-encoded).
        let grows = format!("https://cdn.example/{}", "ä".repeat(1000));
        assert!(grows.len() <= AVATAR_URL_MAX);
        assert_eq!(avatar_url(&grows), None);
    }

    #[test]
    fn name_loses_control_and_bidi_characters_before_truncation() {
        let cases: &[(&str, Option<&str>)] = &[
            ("José Ñandú", Some("José Ñandú")),
            ("Alice\u{202e}txt.exe", Some("Alicetxt.exe")),
            ("\u{200e}Bob\u{200f}", Some("Bob")),
            ("Ca\u{200b}rol\u{2060}", Some("Carol")),
            ("\u{2066}Dave\u{2069}", Some("Dave")),
            ("Eve\u{202a}\u{202b}\u{202c}\u{202d}", Some("Eve")),
            ("Fr\u{feff}ank\u{061c}", Some("Frank")),
            ("Gr\tace", Some("Grace")),
            ("\u{202e}", None),
        ];
        for (input, want) in cases {
            let h = headers(&[
                ("x-user", b"alice"),
                ("x-email", b"a@b.co"),
                ("x-name", input.as_bytes()),
            ]);
            let got = rules().extract(&h).unwrap();
            assert_eq!(got.identity.name.as_deref(), *want, "{input:?}");
            let dropped = got.dropped.first().map(|d| (d.field, d.reason.label()));
            let expected = want.is_none().then_some((Field::Name, "empty"));
            assert_eq!(dropped, expected, "{input:?}");
        }
        // Stripped first, then cut: 200 visible characters survive 100 hidden ones.
        let long = format!("{}{}", "\u{200b}".repeat(100), "é".repeat(250));
        let h = headers(&[
            ("x-user", b"alice"),
            ("x-email", b"a@b.co"),
            ("x-name", long.as_bytes()),
        ]);
        let name = rules().extract(&h).unwrap().identity.name.unwrap();
        assert_eq!(name, "é".repeat(200));
    }

    #[test]
    fn the_sent_email_is_the_normalized_one() {
        let h = headers(&[
            ("x-user", b"anna"),
            ("x-email", "anna@exämple.de".as_bytes()),
        ]);
        let got = rules().extract(&h).unwrap();
        assert_eq!(got.identity.user_email, "anna@xn--exmple-cua.de");
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
