//! The process around the request path: assembly and signals ([`server`]), the shutdown
//! handle and drain ([`shutdown`]), the binary upgrade's socket handover ([`upgrade`]),
//! the hot-reloaded config ([`live`]), the admin listener ([`admin`]), systemd
//! notification ([`systemd`]), heap trimming ([`trim`]) and the `explain` dry run
//! ([`explain`]).

pub mod admin;
pub mod explain;
pub mod live;
pub mod server;
pub mod shutdown;
pub mod systemd;
pub mod trim;
pub mod upgrade;
