//! From a planned request to a token: who the user is, by the Released field rules
//! ([`identity`]), the Released API client ([`released`]), the minter shared by page loads
//! and the token endpoint ([`mint`]), the per-account breaker kept across reloads
//! ([`cool_down`]), verified gateway assertions ([`jwt`], [`keys`]), and the redacted
//! types for secrets and tokens ([`secret`]).

pub mod cool_down;
pub mod identity;
pub mod jwt;
pub mod keys;
pub mod mint;
pub mod released;
pub mod secret;
