//! The process around the request path: assembly, signals, drain and upgrade
//! ([`server`]), the hot-reloaded config ([`live`]), the admin listener ([`admin`]),
//! systemd notification ([`systemd`]), heap trimming ([`trim`]) and the `explain` dry run
//! ([`explain`]).

pub mod admin;
pub mod explain;
pub mod live;
pub mod server;
pub mod systemd;
pub mod trim;
