//! From a plan to a token, off the request path: verify the gateway assertion (when
//! identity comes from one), let the caller's gate refuse (the token endpoint's
//! per-identity rate limit), respect the cool-down, call Released. Shared by page loads
//! (`proxy`) and the token endpoint (`embed_client`), so both count and refuse alike.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::metrics::Metrics;
use crate::token::cool_down::CoolDown;
use crate::token::identity::{Dropped, IdentityError, IdentityRules};
use crate::token::jwt::JwtError;
use crate::token::released::{ReleasedClient, ReleasedSettings, TokenRequest};
use crate::token::secret::Token;

/// A token request ready to send, or an assertion to verify first.
#[derive(Debug)]
pub enum Planned {
    /// Identity from headers, already checked: the JSON body, and optional fields left out.
    Request(TokenRequest, Vec<Dropped>),
    /// Identity from the gateway's signed assertion (verified off the request path, in the
    /// token task, because an unknown `kid` may need a key fetch).
    Assertion(String),
}

/// Why no token came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The assertion or the identity in it was not believed (no call was made).
    Identity(&'static str),
    /// The caller's gate refused; try again after this long (no call was made).
    Gate(Duration),
    /// Skipped for the cool-down, or the call failed.
    Unavailable(&'static str),
}

impl Refused {
    /// The access-log label.
    pub fn label(&self) -> &'static str {
        match self {
            Refused::Identity(label) | Refused::Unavailable(label) => label,
            Refused::Gate(_) => "rate_limited",
        }
    }
}

/// The route's rules and account, and the shared client, for one mint.
#[derive(Clone)]
pub struct Minter {
    /// The route's identity rules (assertion settings included).
    pub identity: Arc<IdentityRules>,
    /// The route's Released account.
    pub settings: Arc<ReleasedSettings>,
    /// The account's cool-down breaker.
    pub cool_down: Arc<CoolDown>,
    /// The token API client.
    pub client: ReleasedClient,
    /// Where outcomes are counted.
    pub metrics: Arc<Metrics>,
}

impl Minter {
    /// Turns `planned` into a token no later than `deadline`; `gate` sees the final token
    /// request before any call and may refuse it.
    pub async fn mint(
        self,
        planned: Planned,
        deadline: Instant,
        gate: impl FnOnce(&TokenRequest) -> Result<(), Duration>,
    ) -> Result<Token, Refused> {
        let (request, dropped) = match planned {
            Planned::Request(request, dropped) => (request, dropped),
            Planned::Assertion(raw) => {
                let account = &self.settings.account_id;
                let http = self.client.http();
                match verify_assertion(&raw, &self.identity, account, http, deadline).await {
                    Ok(request) => request,
                    Err(reason) => {
                        tracing::debug!(reason = %reason, "no token: identity not believed");
                        self.metrics
                            .token_skips
                            .with_label_values(&[reason.label()])
                            .inc();
                        return Err(Refused::Identity(reason.label()));
                    }
                }
            }
        };
        for d in &dropped {
            // The reason names the rule, never the value (SPEC §3: logged at debug).
            tracing::debug!(field = %d.field, reason = %d.reason, "optional user field left out of the token request");
            self.metrics
                .identity_fields_dropped
                .with_label_values(&[d.field.key(), d.reason.label()])
                .inc();
        }
        gate(&request).map_err(Refused::Gate)?;
        if !self.cool_down.admit() {
            self.metrics
                .token_requests
                .with_label_values(&["cooldown"])
                .inc();
            return Err(Refused::Unavailable("cooldown"));
        }
        self.client
            .fetch(&self.settings, &self.cool_down, &request, deadline)
            .await
            .map_err(|e| Refused::Unavailable(e.label()))
    }
}

/// Why a gateway assertion yields no token request. Carries no claim values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotBelieved {
    /// The assertion itself was not believed.
    #[error("no valid gateway assertion: {0}")]
    Assertion(JwtError),
    /// The assertion was believed, but its claims do not yield a valid user.
    #[error("no valid identity: {0}")]
    Identity(IdentityError),
}

impl NotBelieved {
    /// The `reason` label of `released_sidecar_token_skips_total`.
    pub fn label(&self) -> &'static str {
        match self {
            NotBelieved::Assertion(e) => e.label(),
            NotBelieved::Identity(e) => e.problem.label(),
        }
    }
}

/// Verifies a gateway assertion and builds the token request from its claims, waiting for
/// keys no later than `deadline`; also returns the optional fields left out.
pub async fn verify_assertion(
    raw: &str,
    rules: &IdentityRules,
    account_id: &str,
    http: &reqwest::Client,
    deadline: Instant,
) -> Result<(TokenRequest, Vec<Dropped>), NotBelieved> {
    let Some(settings) = &rules.jwt else {
        return Err(NotBelieved::Assertion(JwtError::Missing));
    };
    let claims = crate::token::jwt::verify(raw, settings, http, deadline)
        .await
        .map_err(NotBelieved::Assertion)?;
    let extraction = rules
        .extract_claims(&claims)
        .map_err(NotBelieved::Identity)?;
    Ok((
        TokenRequest::new(account_id, extraction.identity),
        extraction.dropped,
    ))
}
