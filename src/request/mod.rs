//! One request's way through the sidecar: the pingora [`proxy`] implementation, the trust
//! boundary ([`trust`]), the route and page-load decision ([`routes`], [`plan`]), who the
//! user is ([`identity`]), and the same-origin token endpoint for client-rendered embeds
//! ([`embed_client`]).

pub mod embed_client;
pub mod identity;
pub mod plan;
pub mod proxy;
pub mod routes;
pub mod trust;
