//! `released-sidecar run`: assembles the process (live config, listening sockets, token
//! client, proxy and admin services, reloader) and handles its signals: SIGHUP reloads,
//! SIGUSR2/SIGQUIT hand the sockets to a new binary ([`crate::ops::upgrade`]), SIGTERM and
//! a completed handover drain through the one shutdown handle ([`crate::shutdown`]).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora::services::background::background_service;
use pingora::services::listening::Service;
use tokio::signal::unix::{signal, SignalKind};

use crate::edge::front::{ConnectionLimit, Front, GuardedConnections};
use crate::edge::h1::pool::UpstreamPool;
use crate::edge::h1::RequestLoop;
use crate::metrics::Metrics;
use crate::ops::admin::{AdminServer, Health};
use crate::ops::live::{self, KeyRefresher, Live, ReloadError, Reloader, Trigger};
use crate::ops::upgrade::{self, ListenSockets, UpgradeError, UpgradeSock, Upgrader, Worker};
use crate::request::proxy::Sidecar;
use crate::shutdown::Shutdown;
use crate::token::released::ReleasedClient;

/// Why the sidecar could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The config is invalid or unusable.
    #[error("{0}")]
    Config(#[from] ReloadError),
    /// A listener address is taken or not allowed.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// `listen` or `admin.listen`.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// The token client could not be built.
    #[error("cannot build the token API client: {0}")]
    Client(#[from] reqwest::Error),
    /// The file watcher could not start.
    #[error("cannot watch the config files: {0}")]
    Watch(#[from] notify::Error),
    /// `upgrade_sock` is unsafe, or `run --upgrade` did not get the listening sockets.
    #[error("{0}")]
    Upgrade(#[from] UpgradeError),
}

/// Runs the sidecar with the config at `path`; returns only on a start error (a normal
/// shutdown exits the process with status 0). With `upgrade`, the listening sockets come
/// from the running process (sent when it gets SIGQUIT, see [`crate::ops::upgrade`])
/// instead of being bound anew.
pub fn run(path: &Path, upgrade: bool) -> Result<(), StartError> {
    crate::install_crypto_provider();
    let metrics = Arc::new(Metrics::new());
    let live = Arc::new(Live::start(path, Arc::clone(&metrics))?);
    let snapshot = live.snapshot();
    let config = &snapshot.config;
    let upgrade_sock = UpgradeSock::resolve(config.upgrade_sock.as_deref());
    upgrade_sock.check()?;

    // SO_REUSEPORT: during a binary upgrade the old and the new process both hold the
    // admin port for a moment (only the proxy's sockets are handed over).
    let admin_listener = bind_shared(config.admin_listen).map_err(|source| StartError::Bind {
        addr: config.admin_listen,
        what: "admin.listen",
        source,
    })?;
    admin_listener
        .set_nonblocking(true)
        .map_err(|source| StartError::Bind {
            addr: config.admin_listen,
            what: "admin.listen",
            source,
        })?;

    let released = ReleasedClient::new(Arc::clone(&metrics))?;
    let key_http = released.http().clone();
    let reloader = live::spawn_reloader(Arc::clone(&live))?;
    let health = Arc::new(Health::default());
    let shutdown = Shutdown::default();

    // The proxy's listening sockets are bound (or received) here rather than by pingora:
    // a taken port fails the start with a clear message instead of panicking a service
    // thread, and this process keeps a copy of each to hand over in the next upgrade.
    let keys: Vec<String> = (0..config.workers)
        .map(|worker| worker_address(config.listen, worker))
        .collect();
    let (mut sockets, ack) = if upgrade {
        let received =
            upgrade::receive(&upgrade_sock, &keys, config.listen, upgrade::RECEIVE_WAIT)?;
        (received.sockets, received.ack)
    } else {
        (ListenSockets::default(), None)
    };
    sockets
        .bind_missing(config.listen, &keys, config.workers > 1)
        .map_err(|source| StartError::Bind {
            addr: config.listen,
            what: "listen",
            source,
        })?;

    let grace = config.timeouts.shutdown_grace;
    let conf = ServerConf {
        threads: config.workers,
        // Each worker thread runs its own runtime: measured faster than tokio's work
        // stealing, whose cross-thread wake-ups cost more than they balance on a proxy
        // where every connection's work is alike (benches/README.md).
        work_stealing: false,
        upstream_keepalive_pool_size: config.upstream_keepalive,
        grace_period_seconds: Some(grace.as_secs().max(1)),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    // Our CLI owns argv: pingora's own Opt parser is never called, and pingora's own
    // upgrade (`Opt::upgrade`) is never used: ops::upgrade does the handover.
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();

    let sidecar = Sidecar::new(
        Arc::clone(&live) as _,
        Arc::new(GuardedConnections),
        released,
        Arc::clone(&metrics),
        shutdown.clone(),
    );
    let mut limit = ConnectionLimit::new(config.limits.max_connections);
    if config.tls.is_some() {
        limit = limit.after_handshake();
    }
    let limit = Arc::new(limit);
    let (started, workers_started) = std::sync::mpsc::channel();
    // One single-threaded proxy service per worker, nginx's layout: each accepts on its
    // own SO_REUSEPORT socket and keeps its own upstream keep-alive pool, so a request
    // never touches another worker's sockets. With one multi-threaded service pingora
    // hands accepted connections and pooled upstream connections to random threads, and
    // every read then wakes a task across threads (benches/README.md).
    for (worker, key) in keys.iter().enumerate() {
        // The request loop (crate::edge::h1) runs behind the connection guard
        // (crate::edge::front), which owns the head deadline and the connection cap; each
        // worker keeps its own pool of idle connections to the app.
        let requests = RequestLoop::new(
            sidecar.for_worker()?,
            UpstreamPool::new(config.upstream_keepalive),
            &server.configuration,
        );
        // pingora gives every connection a 64 KiB read buffer by default, most of an idle
        // connection's cost; its HTTP reader and the head guard read into buffers of
        // their own, so the proxy port reads unbuffered. The head guard also buffers the
        // connection's writes (coalescing a head with the body after it), so a pingora
        // write buffer under it would only add a copy.
        let listener = ListenerConfig::tcp(key).l4_buffer(L4BufferSettings::unbuffered());
        let mut proxy = Service::new(
            format!("released-sidecar proxy {worker}"),
            Front::new(
                requests,
                Arc::clone(&live) as _,
                Arc::clone(&metrics),
                Some(Arc::clone(&limit)),
            ),
        );
        proxy.threads = Some(1);
        proxy.add_listener(listener);
        proxy.set_connection_filter(Arc::clone(&limit) as _);
        let socket = sockets.dup(key).map_err(|source| StartError::Bind {
            addr: config.listen,
            what: "listen",
            source,
        })?;
        server.add_service(Worker::new(proxy, key.clone(), socket, started.clone()));
    }
    server.add_service(background_service(
        "released-sidecar admin",
        AdminServer::new(
            admin_listener,
            config.listen,
            Arc::clone(&health),
            shutdown.clone(),
            Arc::clone(&metrics),
            Arc::clone(&live),
        ),
    ));
    server.add_service(background_service(
        "released-sidecar keys",
        KeyRefresher::new(Arc::clone(&live), key_http),
    ));
    if let Some(ack) = ack {
        upgrade::confirm_when_started(ack, workers_started, config.workers);
    }

    crate::edge::trim::spawn(Arc::clone(&metrics));
    tracing::info!(
        listen = %config.listen,
        admin = %config.admin_listen,
        upstream = %config.upstream.url,
        workers = config.workers,
        routes = config.routes.0.len(),
        "released-sidecar starting"
    );
    drop(snapshot);
    server.run(RunArgs {
        shutdown_signal: Box::new(Signals {
            health: Arc::clone(&health),
            shutdown: shutdown.clone(),
            reloader,
            upgrader: Upgrader::new(upgrade_sock, sockets, Arc::clone(&metrics)),
        }),
    });
    // Here only when requests were still running at the end of the grace period, or
    // after SIGINT (otherwise the drain thread has exited the process already).
    if shutdown.in_flight() > 0 {
        tracing::warn!(
            in_flight = shutdown.in_flight(),
            "shutdown grace period over; remaining requests are cut"
        );
    }
    tracing::info!("shutdown complete");
    crate::logging::flush();
    std::process::exit(0)
}

/// The address worker `worker` listens on, spelled so that each worker's socket has its
/// own key: pingora keys listening sockets by the address text (that is how they are
/// handed to a `run --upgrade` successor), and sockets sharing a key would share one file
/// descriptor, closed once per worker. A leading zero in the port is the same port.
pub fn worker_address(addr: std::net::SocketAddr, worker: usize) -> String {
    let zeros = "0".repeat(worker);
    match addr {
        std::net::SocketAddr::V4(a) => format!("{}:{zeros}{}", a.ip(), a.port()),
        std::net::SocketAddr::V6(a) => format!("[{}]:{zeros}{}", a.ip(), a.port()),
    }
}

/// Binds `addr` with SO_REUSEPORT, so a successor process can bind it too.
fn bind_shared(addr: std::net::SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(128)?;
    Ok(socket.into())
}

/// SIGTERM: drain and exit; SIGQUIT: hand the listening sockets to a `run --upgrade`
/// successor, then drain and exit; SIGUSR2: start that successor from this process's own
/// command line, then as SIGQUIT (nginx's USR2 + QUIT in one, so the successor inherits the
/// systemd unit, its sandbox and credentials); SIGINT: exit now; SIGHUP: reload. A failed
/// handover leaves this process serving.
struct Signals {
    health: Arc<Health>,
    shutdown: Shutdown,
    reloader: Reloader,
    upgrader: Upgrader,
}

/// After a handover, how long this process still accepts and answers with
/// `Connection: close` before it stops accepting (pingora's own upgrade waits as long):
/// keep-alive clients busy on this process's connections move to the successor on their
/// next request instead of racing the close of an idle connection.
const HANDOVER_OVERLAP: Duration = Duration::from_secs(5);

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        let (Ok(mut term), Ok(mut int), Ok(mut quit), Ok(mut hup), Ok(mut usr2)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::quit()),
            signal(SignalKind::hangup()),
            signal(SignalKind::user_defined2()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return ShutdownSignal::FastShutdown;
        };
        self.health.signals_handled();
        let handed_over = loop {
            tokio::select! {
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading the config");
                    self.reloader.trigger(Trigger::Signal);
                }
                _ = term.recv() => break false,
                _ = usr2.recv() => {
                    if self.upgrader.on_sigusr2().await {
                        break true;
                    }
                }
                _ = quit.recv() => {
                    if self.upgrader.on_sigquit().await {
                        break true;
                    }
                }
                _ = int.recv() => {
                    tracing::info!("SIGINT: exiting without draining");
                    return ShutdownSignal::FastShutdown;
                }
            }
        };
        self.shutdown.start_draining();
        // The successor holds the sockets now, or nobody should: this process's own
        // copies must not keep the port open once pingora closes its listeners.
        self.upgrader.release();
        if handed_over {
            tokio::select! {
                _ = tokio::time::sleep(HANDOVER_OVERLAP) => {}
                _ = term.recv() => {}
                _ = int.recv() => return ShutdownSignal::FastShutdown,
            }
            tracing::info!("handed over: no new connections, finishing in-flight requests");
        } else {
            tracing::info!("SIGTERM: not ready, no new connections, finishing in-flight requests");
        }
        self.shutdown.stop();
        ShutdownSignal::GracefulTerminate
    }
}
