//! The proxy port's edge: what happens to a connection before a request is read — the
//! connection cap and head guard ([`front`]), HTTPS with client certificates ([`tls`]),
//! handing back the memory a flood of connections leaves behind ([`trim`]) — and the
//! HTTP/1 request loop that serves the connection's requests ([`h1`]).

pub mod front;
pub mod h1;
pub mod tls;
pub mod trim;
