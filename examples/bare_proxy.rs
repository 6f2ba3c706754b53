//! The framework floor for the load benchmark (`benches/load/run.sh`): pingora's minimal
//! `ProxyHttp` (one fixed upstream, no filters, no metrics, no logging) built with the same
//! pingora version, features and release profile as the sidecar, and the same server knobs.
//! What the sidecar costs above this figure is its own code; what this costs above nginx is
//! pingora's.
//!
//! `--loop lean` runs the same `ProxyHttp` impl through the sidecar's HTTP/1 request loop
//! (`released_sidecar::edge::h1`) instead of pingora-proxy's `HttpProxy` (target `bare-lean`
//! of the load script): the difference between the two is what the loop saves.
//!
//! ```text
//! cargo build --release --example bare_proxy
//! target/release/examples/bare_proxy --listen 127.0.0.1:8081 --upstream 127.0.0.1:8080 \
//!     --workers 2 --work-stealing false --upstream-keepalive 1024 --per-worker-services true \
//!     --loop pingora
//! ```

use std::net::SocketAddr;

use async_trait::async_trait;
use clap::{Parser, ValueEnum};
use pingora::listeners::TcpSocketOptions;
use pingora::prelude::*;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::services::listening::Service;
use released_sidecar::edge::h1::pool::UpstreamPool;
use released_sidecar::edge::h1::RequestLoop;
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
    /// Which request loop drives the proxy.
    #[arg(long = "loop", value_enum, default_value_t = Loop::Pingora)]
    request_loop: Loop,
}

/// The request loop a `ProxyHttp` impl runs in.
#[derive(Clone, Copy, ValueEnum)]
enum Loop {
    /// pingora-proxy's `HttpProxy`.
    Pingora,
    /// The sidecar's HTTP/1 loop on pingora-core (`released_sidecar::edge::h1`).
    Lean,
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
        let bare = Bare {
            upstream: args.upstream,
        };
        let name = format!("bare proxy {i}");
        let listen = args
            .per_worker_services
            .then(|| worker_address(args.listen, i));
        match args.request_loop {
            Loop::Pingora => {
                let mut proxy = http_proxy_service(&server.configuration, bare);
                proxy.threads = threads;
                server.add_service(listening(proxy, listen.as_deref(), args.listen));
            }
            Loop::Lean => {
                let pool = UpstreamPool::new(args.upstream_keepalive);
                let requests = RequestLoop::new(bare, pool, &server.configuration);
                let mut proxy = Service::new(name, requests);
                proxy.threads = threads;
                server.add_service(listening(proxy, listen.as_deref(), args.listen));
            }
        }
    }
    server.run_forever();
}

/// `service` listening on its own SO_REUSEPORT socket `worker_listen` (spelled as the
/// sidecar spells each worker's), or on `listen` shared by its threads.
fn listening<A>(
    mut service: Service<A>,
    worker_listen: Option<&str>,
    listen: SocketAddr,
) -> Service<A> {
    match worker_listen {
        Some(addr) => {
            let mut opts = TcpSocketOptions::default();
            opts.so_reuseport = Some(true);
            service.add_tcp_with_settings(addr, opts);
        }
        None => service.add_tcp(&listen.to_string()),
    }
    service
}
