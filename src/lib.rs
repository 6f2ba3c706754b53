//! released-sidecar: a reverse proxy that gives a legacy web app Released user
//! verification with no code change. It reads the signed-in user from the SSO gateway's
//! headers, asks the Released token API for one token per page load (in parallel with the
//! app), and writes the token into the page's `<released-*>` tags as the HTML streams by.
//!
//! The folders follow a request through the house, and every import points down it; no
//! file imports one that imports it back:
//!
//! ```text
//! ops ──> edge ──> request ──> token
//!                     └──────> page ──> token (the redacted Token type only)
//! ```
//!
//! - [`ops`] assembles the process (server, signals, binary upgrade, admin port, `explain`)
//!   and holds the live config ([`ops::live`]); it hands each room below what that room
//!   may not import: [`ops::live::Live`] implements [`edge::front::ConnectionSettings`]
//!   and [`request::snapshot::Snapshots`].
//! - [`edge`] owns the connection (TLS, the connection cap, the head guard, memory
//!   trimming) and runs its HTTP/1 request loop ([`edge::h1`]), which drives any pingora
//!   `ProxyHttp` through its phases ([`edge::front::Front`] is generic over it); it
//!   answers the proxy's questions about a connection by implementing
//!   [`request::downstream::Downstream`].
//! - [`request`] decides trust, plans each request and wires the pingora proxy and the
//!   token endpoint; [`token`] turns a plan into a token (identity rules, assertions, the
//!   Released client, the breaker); [`page`] rewrites and compresses the body.
//! - Below every room, importing none of them: [`metrics`], [`logging`] (with the
//!   access-log line), [`shutdown`] (the one drain handle) and [`synthetic`] (every
//!   response the sidecar writes itself). [`config`] is read by every room; what it
//!   imports from the rooms is only the types it builds, which live next to the code
//!   using them: the routes and trust rule from `request`, the identity rules, assertion
//!   settings, key stores, Released account and cool-down policy from `token`, the embed
//!   tags and insert rules from `page`. Moving those into `config` would be churn; none of
//!   the files they live in imports `config` back, except that `token::keys` reads a JWKS
//!   file through [`config::files`], the bounded reader, which imports nothing.

pub mod config;
pub mod edge;
pub mod logging;
pub mod metrics;
pub mod ops;
pub mod page;
pub mod request;
pub mod shutdown;
pub mod synthetic;
pub mod token;

/// Installs ring as the process-wide rustls provider (pingora and the token client share
/// it; only one provider is compiled in). Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
