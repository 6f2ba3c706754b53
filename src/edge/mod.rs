//! The proxy port's edge: what happens to a connection before a request is read — the
//! connection cap and head guard ([`front`]), HTTPS with client certificates ([`tls`]),
//! and handing back the memory a flood of connections leaves behind ([`trim`]).

pub mod front;
pub mod tls;
pub mod trim;
