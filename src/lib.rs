//! released-sidecar: a reverse proxy that gives a legacy web app Released user
//! verification with no code change. It reads the signed-in user from the SSO gateway's
//! headers, asks the Released token API for one token per page load (in parallel with the
//! app), and writes the token into the page's `<released-*>` tags as the HTML streams by.
//!
//! The request path, in the order a request meets it: [`trust`] → [`routes`] →
//! [`identity`] → [`plan`] → [`released`] → [`rewrite`], wired together by [`proxy`].

pub mod config;
pub mod identity;
pub mod metrics;
pub mod released;
pub mod routes;
pub mod secret;
pub mod trust;

/// Installs ring as the process-wide rustls provider (pingora and the token client share
/// it; only one provider is compiled in). Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
