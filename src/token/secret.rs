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

/// Why a secret's text cannot be used as a bearer credential. Never carries the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// Nothing but whitespace (or a byte-order mark).
    #[error("is empty")]
    Empty,
    /// A control character (line break, NUL, tab…) inside the value: an HTTP header
    /// cannot carry it, so every token call would fail.
    #[error(
        "contains a control character ({0}) inside the value; only the surrounding whitespace is trimmed (one secret per file, on one line)"
    )]
    ControlCharacter(&'static str),
}

impl Secret {
    /// Wraps a secret value that is already known to be usable (tests, placeholders).
    pub fn new(value: impl Into<Arc<str>>) -> Self {
        Self(value.into())
    }

    /// The secret written in a file or environment variable: a leading UTF-8 byte-order
    /// mark (Windows editors write one) and surrounding whitespace are removed; an inner
    /// control character is refused rather than sent, since it would break every call.
    pub fn from_text(text: &str) -> Result<Self, SecretError> {
        let value = text.strip_prefix('\u{feff}').unwrap_or(text).trim();
        if value.is_empty() {
            return Err(SecretError::Empty);
        }
        if let Some(c) = value.chars().find(|c| c.is_control()) {
            return Err(SecretError::ControlCharacter(control_name(c)));
        }
        Ok(Self(value.into()))
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

/// A readable name for a control character, for error messages.
fn control_name(c: char) -> &'static str {
    match c {
        '\n' => "a line feed",
        '\r' => "a carriage return",
        '\0' => "a NUL byte",
        '\t' => "a tab",
        _ => "a non-printing character",
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

    /// The raw value, for the places that hand it to the browser: the `auth-token`
    /// attribute and the answer of the token endpoint (`embed.client`).
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

    #[test]
    fn secret_text_is_trimmed_or_refused() {
        let cases: &[(&str, Result<&str, &str>)] = &[
            ("hunter2\n", Ok("hunter2")),
            ("  hunter2\r\n", Ok("hunter2")),
            ("\u{feff}hunter2\n", Ok("hunter2")),
            ("\u{feff} hunter2", Ok("hunter2")),
            ("hun\nter2", Err("a line feed")),
            ("hun\rter2", Err("a carriage return")),
            ("hun\0ter2", Err("a NUL byte")),
            ("hun\tter2", Err("a tab")),
            ("hun\u{7f}ter2", Err("a non-printing character")),
            ("first\nsecond\n", Err("a line feed")),
            ("", Err("is empty")),
            (" \n\t", Err("is empty")),
            ("\u{feff}\n", Err("is empty")),
        ];
        for (text, want) in cases {
            let got = Secret::from_text(text);
            match (want, &got) {
                (Ok(w), Ok(s)) => assert_eq!(s.expose(), *w, "{text:?}"),
                (Err(w), Err(e)) => {
                    let e = e.to_string();
                    assert!(e.contains(w), "{text:?}: {e}");
                    assert!(!e.contains("hun"), "the message never shows the value: {e}");
                }
                _ => panic!("{text:?}: got {got:?}, want {want:?}"),
            }
        }
    }
}
