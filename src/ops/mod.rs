//! The process around the request path: assembly and signals ([`server`]), the binary
//! upgrade's socket handover ([`upgrade`]), the hot-reloaded config ([`live`]), the admin
//! listener ([`admin`]), systemd notification ([`systemd`]) and the `explain` dry run
//! ([`explain`]).

pub mod admin;
pub mod explain;
pub mod live;
pub mod server;
pub mod systemd;
pub mod upgrade;
