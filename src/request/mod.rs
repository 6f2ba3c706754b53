//! One request's way through the sidecar: the pingora [`proxy`] implementation, the config
//! generation it reads ([`snapshot`]), what it learns about the client's connection
//! ([`downstream`]), the trust boundary ([`trust`]), the route and page-load decision
//! ([`routes`], [`plan`]), and the same-origin token endpoint for client-rendered embeds
//! ([`embed_client`]).

pub mod downstream;
pub mod embed_client;
pub mod plan;
pub mod proxy;
pub mod routes;
pub mod snapshot;
pub mod trust;
