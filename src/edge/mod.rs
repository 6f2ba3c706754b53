//! The proxy port's edge: what happens to a connection before a request is read — the
//! connection cap and head guard ([`front`]), and HTTPS with client certificates ([`tls`])
//! — and the HTTP/1 request loop that serves its requests ([`h1`]).

pub mod front;
pub mod h1;
pub mod tls;
