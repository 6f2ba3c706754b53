//! released-sidecar: a reverse proxy that gives a legacy web app Released user
//! verification with no code change. It reads the signed-in user from the SSO gateway's
//! headers, asks the Released token API for one token per page load (in parallel with the
//! app), and writes the token into the page's `<released-*>` tags as the HTML streams by.
//!
//! The request path, in the order a request meets it: [`trust`] → [`routes`] →
//! [`identity`] → [`plan`] → [`released`] → [`rewrite`], wired together by [`proxy`].
//! [`front`] guards the proxy port's connections before pingora reads a request.
//! [`live`] holds the hot-reloaded config, [`admin`] and [`metrics`] the operator view,
//! [`server`] assembles the process.

pub mod admin;
pub mod compress;
pub mod config;
pub mod embed_client;
pub mod explain;
pub mod front;
pub mod identity;
pub mod jwt;
pub mod keys;
pub mod live;
pub mod logging;
pub mod metrics;
pub mod mint;
pub mod plan;
pub mod proxy;
pub mod released;
pub mod rewrite;
pub mod routes;
pub mod secret;
pub mod server;
pub mod systemd;
pub mod tls;
pub mod trim;
pub mod trust;

/// Installs ring as the process-wide rustls provider (pingora and the token client share
/// it; only one provider is compiled in). Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
