//! The proxy port's edge: what happens to a connection before a request is read — the
//! connection cap and head guard ([`front`]), and HTTPS with client certificates ([`tls`]).

pub mod front;
pub mod tls;
