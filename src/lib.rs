//! released-sidecar: a reverse proxy that gives a legacy web app Released user
//! verification with no code change. It reads the signed-in user from the SSO gateway's
//! headers, asks the Released token API for one token per page load (in parallel with the
//! app), and writes the token into the page's `<released-*>` tags as the HTML streams by.
//!
//! The folders follow a request through the house: [`ops`] assembles the process and
//! holds the live config; [`edge`] guards connections and runs their HTTP/1 request loop;
//! [`request`] decides trust, plans each request and wires the proxy; [`token`] turns a
//! plan into a token; [`page`] rewrites and compresses the body. [`config`], [`metrics`]
//! and [`logging`] are read by every room.

pub mod config;
pub mod edge;
pub mod logging;
pub mod metrics;
pub mod ops;
pub mod page;
pub mod request;
pub mod token;

/// Installs ring as the process-wide rustls provider (pingora and the token client share
/// it; only one provider is compiled in). Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
