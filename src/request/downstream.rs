//! What the request path learns about the client's connection: the TCP peer, and through
//! [`Downstream`] what only the connection layer in front of the proxy knows (`edge::front`
//! implements it, so the request path never reaches up into the edge).

use std::net::IpAddr;

use pingora::proxy::Session;

use crate::request::trust::ClientCert;

/// The connection a request came on, as the layer in front of the proxy knows it.
pub trait Downstream: Send + Sync + 'static {
    /// pingora took this request's head: the head deadline ends, and pipelined requests
    /// are answered in order.
    fn request_started(&self, session: &mut Session);

    /// The verified client certificate of the connection (HTTPS with
    /// `tls.client_ca_file`).
    fn client_cert<'s>(&self, session: &'s Session) -> Option<&'s ClientCert>;
}

/// The TCP peer's address (never a forwarded-for header: SPEC §2.1).
pub fn peer_ip(session: &Session) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}
