//! Types for the two values that must never reach a log line, a metric or an error page:
//! the Released shared secret and the tokens it mints. Their `Debug` and `Display`
//! print `[redacted]`; the raw value is only reachable through an explicit `expose()`,
//! and a token is exposed in exactly two places: the `auth-token` attribute of a page's
//! embed tags, and the token endpoint's JSON answer to the page's own script.

use std::fmt;
use std::sync::Arc;

/// The Released shared secret (the bearer credential of the token API).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    /// Wraps a secret value (already trimmed by the caller).
    pub fn new(value: impl Into<Arc<str>>) -> Self {
        Self(value.into())
    }

    /// The raw value, for the one place that needs it: the `Authorization` header.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// A Released user token, valid for one page load.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(Arc<str>);

impl Token {
    /// Wraps a token returned by the Released API.
    pub fn new(value: impl Into<Arc<str>>) -> Self {
        Self(value.into())
    }

    /// The raw value, for the one place that needs it: the `auth-token` attribute.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_and_tokens_never_format_their_value() {
        let s = Secret::new("hunter2");
        let t = Token::new("eyJhbGciOi");
        for text in [
            format!("{s}"),
            format!("{s:?}"),
            format!("{t}"),
            format!("{t:?}"),
            format!("{:?}", Some(&s)),
        ] {
            assert_eq!(
                text.trim_start_matches("Some(").trim_end_matches(')'),
                "[redacted]"
            );
        }
        assert_eq!(s.expose(), "hunter2");
        assert_eq!(t.expose(), "eyJhbGciOi");
    }
}
