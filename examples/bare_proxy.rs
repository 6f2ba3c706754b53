//! The framework floor for the load benchmark (`benches/load/run.sh`): pingora's minimal
//! `ProxyHttp` (one fixed upstream, no filters, no metrics, no logging) built with the same
//! pingora version, features and release profile as the sidecar, and the same server knobs.
//! What the sidecar costs above this figure is its own code; what this costs above nginx is
//! pingora's.
//!
//! ```text
//! cargo build --release --example bare_proxy
//! target/release/examples/bare_proxy --listen 127.0.0.1:8081 --upstream 127.0.0.1:8080 \
//!     --workers 2 --work-stealing false --upstream-keepalive 1024 --per-worker-services true
//! ```

use std::net::SocketAddr;

use async_trait::async_trait;
use clap::Parser;
use pingora::listeners::TcpSocketOptions;
use pingora::prelude::*;
use pingora::server::configuration::{Opt, ServerConf};
use released_sidecar::ops::server::worker_address;

/// Command line of the bare proxy.
#[derive(Parser)]
struct Args {
    /// Where to listen (loopback in the benchmark).
    #[arg(long)]
    listen: SocketAddr,
    /// The app, as `ip:port` (plain HTTP).
    #[arg(long)]
    upstream: SocketAddr,
    /// Proxy worker threads (pingora `threads`, like the sidecar's `workers`).
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// pingora `work_stealing` between the worker threads.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    work_stealing: bool,
    /// pingora `upstream_keepalive_pool_size` (the sidecar's `upstream_keepalive`).
    #[arg(long, default_value_t = 1024)]
    upstream_keepalive: usize,
    /// One single-threaded proxy service per worker, each with its own SO_REUSEPORT
    /// socket and upstream pool (the sidecar's layout), instead of one service with
    /// `workers` threads.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    per_worker_services: bool,
}

/// Proxies every request to one upstream, untouched.
struct Bare {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

fn main() {
    let args = Args::parse();
    let conf = ServerConf {
        threads: args.workers,
        work_stealing: args.work_stealing,
        upstream_keepalive_pool_size: args.upstream_keepalive,
        grace_period_seconds: Some(1),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();
    let (services, threads) = if args.per_worker_services {
        (args.workers, Some(1))
    } else {
        (1, None)
    };
    for i in 0..services {
        let mut proxy = http_proxy_service(
            &server.configuration,
            Bare {
                upstream: args.upstream,
            },
        );
        proxy.threads = threads;
        if args.per_worker_services {
            // Each worker its own SO_REUSEPORT socket, spelled as the sidecar spells it.
            let addr = worker_address(args.listen, i);
            let mut opts = TcpSocketOptions::default();
            opts.so_reuseport = Some(true);
            proxy.add_tcp_with_settings(&addr, opts);
        } else {
            proxy.add_tcp(&args.listen.to_string());
        }
        server.add_service(proxy);
    }
    server.run_forever();
}
