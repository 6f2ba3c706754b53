//! The Released token API (SPEC §1): the settings of one API account, the request body,
//! the HTTP client that asks for one token per page load, and response parsing. Each
//! outcome is reported to the account's cool-down breaker (`cool_down.rs`).

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use url::Url;

use crate::logging::LogGate;
use crate::metrics::Metrics;
use crate::token::cool_down::{CoolDown, CoolDownPolicy};
use crate::token::identity::Identity;
use crate::token::secret::{Secret, Token};

/// The production token endpoint (SPEC §1).
pub const DEFAULT_API_URL: &str = "https://accounts.releasedhub.com/auth/api/impersonation/token";
/// Default bound on one token call.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(1500);
/// Largest token response body read; a token is a few hundred bytes.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Largest token accepted (it is written into every embed tag of the page).
const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Where the shared secret came from (for `check`, `explain` and reload watching).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// `shared_secret_file`.
    File(PathBuf),
    /// `shared_secret_env`.
    Env(String),
}

impl fmt::Display for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::File(p) => write!(f, "file {}", p.display()),
            SecretSource::Env(name) => write!(f, "environment variable {name}"),
        }
    }
}

/// One Released account as configured (top level, or merged with a route's override).
#[derive(Debug)]
pub struct ReleasedSettings {
    /// The token endpoint.
    pub api_url: Url,
    /// `account_id` sent in every request.
    pub account_id: String,
    /// The bearer secret.
    pub secret: Secret,
    /// Where the secret was read from.
    pub secret_source: SecretSource,
    /// Bound on one token call, and on how long a page waits for it.
    pub timeout: Duration,
    /// When to stop calling this account's API while it fails (the breaker itself is live
    /// state: [`crate::token::cool_down::CoolDowns`]).
    pub cooldown: CoolDownPolicy,
}

/// The JSON body of a token request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenRequest {
    /// The Released account.
    pub account_id: String,
    /// The user's stable id.
    pub user_id: String,
    /// The user's email address.
    pub user_email: String,
    /// Present when a name or avatar is known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<Profile>,
}

/// The optional `profile` object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Profile {
    /// Display name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Absolute http(s) URL of the avatar.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub avatar_url: Option<String>,
}

impl TokenRequest {
    /// The request for `identity` under `account_id`.
    pub fn new(account_id: &str, identity: Identity) -> Self {
        let has_profile = identity.name.is_some() || identity.avatar_url.is_some();
        let profile = has_profile.then_some(Profile {
            name: identity.name,
            avatar_url: identity.avatar_url,
        });
        Self {
            account_id: account_id.to_string(),
            user_id: identity.user_id,
            user_email: identity.user_email,
            profile,
        }
    }

    /// The exact JSON body sent.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Why no token came back. Carries no secret, token or user data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// No answer within `released.timeout`.
    #[error("no answer within the timeout")]
    Timeout,
    /// Connection or protocol failure.
    #[error("transport error: {0}")]
    Transport(String),
    /// A non-2xx status.
    #[error("HTTP status {0}")]
    Status(u16),
    /// A 2xx whose body carries no usable token.
    #[error("unusable response body: {0}")]
    BadResponse(&'static str),
}

impl TokenError {
    /// The `result` label of `released_sidecar_token_requests_total`.
    pub fn label(&self) -> &'static str {
        match self {
            TokenError::Timeout => "timeout",
            TokenError::Transport(_) => "transport_error",
            TokenError::Status(429) => "rate_limited",
            TokenError::Status(401 | 403) => "unauthorized",
            TokenError::Status(500..=599) => "server_error",
            TokenError::Status(400..=499) => "rejected",
            TokenError::Status(_) => "http_error",
            TokenError::BadResponse(_) => "bad_response",
        }
    }

    /// Whether this failure means Released is unavailable, the only kind that counts toward
    /// the cool-down. A 4xx is about one request (one user's email, say) or about our
    /// credentials: skipping everyone's calls would not help either.
    pub fn means_unavailable(&self) -> bool {
        matches!(
            self,
            TokenError::Timeout | TokenError::Transport(_) | TokenError::Status(429 | 500..=599)
        )
    }
}

/// At most one 401/403 error line per this period (each one is counted in the metrics).
const AUTH_FAILURE_LOG_EVERY: Duration = Duration::from_secs(60);

/// Extracts the token from a 2xx body: a bare JSON string, or an object with `token`,
/// `auth_token` or `access_token`.
pub fn parse_token(body: &[u8]) -> Result<Token, TokenError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(TokenError::BadResponse("empty body"));
    }
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| TokenError::BadResponse("not JSON"))?;
    let token = match &value {
        serde_json::Value::String(s) => s.as_str(),
        serde_json::Value::Object(map) => ["token", "auth_token", "access_token"]
            .iter()
            .find_map(|k| map.get(*k).and_then(|v| v.as_str()))
            .ok_or(TokenError::BadResponse(
                "JSON object without token, auth_token or access_token",
            ))?,
        _ => {
            return Err(TokenError::BadResponse(
                "JSON that is neither a string nor an object",
            ))
        }
    };
    if token.trim().is_empty() {
        return Err(TokenError::BadResponse("empty token"));
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::BadResponse("token longer than 8 KiB"));
    }
    Ok(Token::new(token))
}

/// The token API client: one connection pool per worker (see [`ReleasedClient::for_worker`]),
/// kept across config reloads so a secret rotation does not drop warm connections.
#[derive(Clone)]
pub struct ReleasedClient {
    http: reqwest::Client,
    metrics: Arc<Metrics>,
    auth_log: Arc<LogGate>,
}

impl ReleasedClient {
    /// Builds the client (rustls with the platform's roots).
    pub fn new(metrics: Arc<Metrics>) -> Result<Self, reqwest::Error> {
        crate::install_crypto_provider();
        Ok(Self {
            http: Self::http_client()?,
            metrics,
            auth_log: Arc::new(LogGate::new(AUTH_FAILURE_LOG_EVERY)),
        })
    }

    /// A client with a connection pool of its own, sharing the metrics and the log gate.
    /// A pooled connection's I/O is driven by the thread that opened it, so a worker that
    /// borrowed another worker's connection would hop threads on every token call.
    pub fn for_worker(&self) -> Result<Self, reqwest::Error> {
        Ok(Self {
            http: Self::http_client()?,
            metrics: Arc::clone(&self.metrics),
            auth_log: Arc::clone(&self.auth_log),
        })
    }

    fn http_client() -> Result<reqwest::Client, reqwest::Error> {
        reqwest::Client::builder()
            .user_agent(concat!("released-sidecar/", env!("CARGO_PKG_VERSION")))
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(64)
            .tcp_nodelay(true)
            .redirect(reqwest::redirect::Policy::none())
            .build()
    }

    /// The HTTP client.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Asks for one token, giving up at `deadline`. Records the outcome in the metrics and
    /// the account's `cool_down`; logs failures without any secret, token or user data.
    pub async fn fetch(
        &self,
        settings: &ReleasedSettings,
        cool_down: &CoolDown,
        request: &TokenRequest,
        deadline: Instant,
    ) -> Result<Token, TokenError> {
        let started = Instant::now();
        let result = self.call(settings, request, deadline).await;
        self.metrics
            .token_duration
            .observe(started.elapsed().as_secs_f64());
        let label = match &result {
            Ok(_) => "success",
            Err(e) => e.label(),
        };
        self.metrics
            .token_requests
            .with_label_values(&[label])
            .inc();
        let elapsed_ms = started.elapsed().as_millis() as u64;
        match &result {
            Ok(_) => cool_down.record_success(),
            Err(e) if e.means_unavailable() => {
                tracing::warn!(error = %e, api = %settings.api_url, elapsed_ms, "token request failed");
                cool_down.record_failure();
            }
            Err(e) => {
                // Released answered: it is up, whatever it thought of this request.
                cool_down.record_success();
                if matches!(e, TokenError::Status(401 | 403)) {
                    self.metrics.token_auth_failures.inc();
                    if let Some(suppressed) = self.auth_log.admit() {
                        tracing::error!(
                            error = %e,
                            api = %settings.api_url,
                            account_id = %settings.account_id,
                            secret_source = %settings.secret_source,
                            suppressed,
                            "the token API refused our credentials: check the shared secret and account_id (pages are served without tokens)"
                        );
                    }
                } else {
                    tracing::info!(error = %e, api = %settings.api_url, elapsed_ms, "token request refused for this request");
                }
            }
        }
        result
    }

    async fn call(
        &self,
        settings: &ReleasedSettings,
        request: &TokenRequest,
        deadline: Instant,
    ) -> Result<Token, TokenError> {
        if deadline <= Instant::now() {
            return Err(TokenError::Timeout);
        }
        // The deadline below bounds the whole exchange, body included; a reqwest timeout
        // as well would only arm a second timer per call.
        let send = self
            .http
            .post(settings.api_url.clone())
            .bearer_auth(settings.secret.expose())
            .json(request)
            .send();
        let outcome = tokio::time::timeout_at(deadline.into(), async {
            let mut response = send.await.map_err(classify)?;
            let status = response.status();
            if !status.is_success() {
                return Err(TokenError::Status(status.as_u16()));
            }
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(classify)? {
                if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                    return Err(TokenError::BadResponse("body larger than 64 KiB"));
                }
                body.extend_from_slice(&chunk);
            }
            parse_token(&body)
        })
        .await;
        outcome.unwrap_or(Err(TokenError::Timeout))
    }
}

fn classify(e: reqwest::Error) -> TokenError {
    if e.is_timeout() {
        return TokenError::Timeout;
    }
    // The URL is logged separately; errors never carry request headers, so the bearer
    // secret cannot appear here.
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    TokenError::Transport(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_parsing_table() {
        let ok: &[(&str, &str)] = &[
            (r#""eyJabc""#, "eyJabc"),
            (r#"{"token":"t1"}"#, "t1"),
            (r#"{"auth_token":"t2","other":1}"#, "t2"),
            (r#"{"access_token":"t3"}"#, "t3"),
            (" \"spaced\" \n", "spaced"),
        ];
        for (body, want) in ok {
            assert_eq!(
                parse_token(body.as_bytes()).unwrap().expose(),
                *want,
                "{body}"
            );
        }
        let bad = [
            "",
            "   ",
            "not json",
            "42",
            "null",
            "[\"t\"]",
            r#"{"tok":"x"}"#,
            r#"{"token":5}"#,
            r#""""#,
            r#"{"token":"  "}"#,
        ];
        for body in bad {
            assert!(
                matches!(
                    parse_token(body.as_bytes()),
                    Err(TokenError::BadResponse(_))
                ),
                "{body}"
            );
        }
        let huge = format!("\"{}\"", "a".repeat(MAX_TOKEN_BYTES + 1));
        assert!(parse_token(huge.as_bytes()).is_err());
    }

    #[test]
    fn request_body_omits_unknown_profile_fields() {
        let id = |name: Option<&str>, avatar: Option<&str>| Identity {
            user_id: "u1".into(),
            user_email: "u1@example.com".into(),
            name: name.map(Into::into),
            avatar_url: avatar.map(Into::into),
        };
        assert_eq!(
            TokenRequest::new("acc", id(None, None)).to_json(),
            r#"{"account_id":"acc","user_id":"u1","user_email":"u1@example.com"}"#
        );
        assert_eq!(
            TokenRequest::new("acc", id(Some("Ann"), None)).to_json(),
            r#"{"account_id":"acc","user_id":"u1","user_email":"u1@example.com","profile":{"name":"Ann"}}"#
        );
        assert_eq!(
            TokenRequest::new("acc", id(Some("Ann"), Some("https://a/b.png"))).to_json(),
            r#"{"account_id":"acc","user_id":"u1","user_email":"u1@example.com","profile":{"name":"Ann","avatar_url":"https://a/b.png"}}"#
        );
    }

    #[test]
    fn only_unavailability_counts_toward_the_cooldown() {
        let cases: &[(TokenError, &str, bool)] = &[
            (TokenError::Timeout, "timeout", true),
            (
                TokenError::Transport("reset".into()),
                "transport_error",
                true,
            ),
            (TokenError::Status(500), "server_error", true),
            (TokenError::Status(503), "server_error", true),
            (TokenError::Status(429), "rate_limited", true),
            (TokenError::Status(400), "rejected", false),
            (TokenError::Status(422), "rejected", false),
            (TokenError::Status(401), "unauthorized", false),
            (TokenError::Status(403), "unauthorized", false),
            (TokenError::Status(302), "http_error", false),
            (TokenError::BadResponse("not JSON"), "bad_response", false),
        ];
        for (error, label, unavailable) in cases {
            assert_eq!(error.label(), *label, "{error:?}");
            assert_eq!(error.means_unavailable(), *unavailable, "{error:?}");
        }
    }
}
