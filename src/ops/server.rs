//! `released-sidecar run`: assembles the process (live config, token client, proxy and
//! admin services, reloader, signal handling) and runs it until SIGTERM has drained the
//! in-flight requests.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::listeners::{
    L4BufferSettings, ListenerConfig, TcpSocketOptions, DEFAULT_L4_WRITE_BUFFER_SIZE,
};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{ExecutionPhase, RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora::services::background::background_service;
use pingora::services::listening::Service;
use tokio::signal::unix::{signal, SignalKind};

use crate::edge::front::{ConnectionLimit, Front};
use crate::metrics::Metrics;
use crate::ops::admin::{AdminServer, Health};
use crate::ops::live::{self, KeyRefresher, Live, ReloadError, Reloader, Trigger};
use crate::request::proxy::Sidecar;
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
    /// The TLS listener could not be set up.
    #[error("cannot set up TLS on listen: {0}")]
    Tls(String),
    /// The file watcher could not start.
    #[error("cannot watch the config files: {0}")]
    Watch(#[from] notify::Error),
}

/// Runs the sidecar with the config at `path`; returns only on a start error (a normal
/// shutdown exits the process with status 0). With `upgrade`, the listening sockets come
/// from the running process (sent when it gets SIGQUIT) instead of being bound anew.
pub fn run(path: &Path, upgrade: bool) -> Result<(), StartError> {
    crate::install_crypto_provider();
    let metrics = Arc::new(Metrics::new());
    let live = Arc::new(Live::start(path, Arc::clone(&metrics))?);
    let snapshot = live.snapshot();
    let config = &snapshot.config;

    // Bind errors must fail the start with a clear message; pingora binds later in a
    // service thread where a taken port would only panic that thread.
    let bind = |addr, what| {
        std::net::TcpListener::bind(addr).map_err(|source| StartError::Bind { addr, what, source })
    };
    if !upgrade {
        drop(bind(config.listen, "listen")?);
    }
    // SO_REUSEPORT: during a binary upgrade the old and the new process both hold the
    // admin port for a moment (pingora hands over only the proxy's sockets).
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

    let grace = config.timeouts.shutdown_grace;
    let upgrade_sock = config.upgrade_sock.clone();
    let conf = ServerConf {
        threads: config.workers,
        // Each worker thread runs its own runtime: measured faster than tokio's work
        // stealing, whose cross-thread wake-ups cost more than they balance on a proxy
        // where every connection's work is alike (benches/README.md).
        work_stealing: false,
        upstream_keepalive_pool_size: config.upstream_keepalive,
        grace_period_seconds: Some(grace.as_secs().max(1)),
        graceful_shutdown_timeout_seconds: Some(1),
        upgrade_sock: config.upgrade_sock.display().to_string(),
        ..ServerConf::default()
    };
    // Our CLI owns argv: pingora's own Opt parser is never called.
    let opt = Opt {
        upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    if upgrade {
        tracing::info!(
            upgrade_sock = %config.upgrade_sock.display(),
            "waiting for the running process's listening sockets: send it SIGQUIT now"
        );
    }
    // With `upgrade`, this is where the sockets arrive (pingora gives up after a few
    // seconds and exits 1).
    server.bootstrap();

    let sidecar = Sidecar::new(
        Arc::clone(&live),
        released,
        Arc::clone(&metrics),
        Arc::clone(&health),
    );
    let mut limit = ConnectionLimit::new(config.limits.max_connections);
    if config.tls.is_some() {
        limit = limit.after_handshake();
    }
    let limit = Arc::new(limit);
    // One single-threaded proxy service per worker, nginx's layout: each accepts on its
    // own SO_REUSEPORT socket and keeps its own upstream keep-alive pool, so a request
    // never touches another worker's sockets. With one multi-threaded service pingora
    // hands accepted connections and pooled upstream connections to random threads, and
    // every read then wakes a task across threads (benches/README.md).
    for worker in 0..config.workers {
        // pingora's HTTP proxy runs behind the connection guard (crate::edge::front), which
        // owns the connection loop, the head deadline and the connection cap.
        let mut http = pingora::proxy::HttpProxy::new(
            sidecar.for_worker()?,
            Arc::clone(&server.configuration),
        );
        http.handle_init_modules();
        // pingora gives every connection a 64 KiB read buffer by default, most of an idle
        // connection's cost; its HTTP reader and the head guard read into buffers of
        // their own, so the proxy port reads unbuffered.
        let mut listener = ListenerConfig::tcp(worker_address(config.listen, worker))
            .l4_buffer(L4BufferSettings::new(0, DEFAULT_L4_WRITE_BUFFER_SIZE));
        if config.workers > 1 {
            let mut options = TcpSocketOptions::default();
            options.so_reuseport = Some(true);
            listener = listener.tcp_socket_options(options);
        }
        let mut proxy = Service::new(
            format!("released-sidecar proxy {worker}"),
            Front::new(
                Arc::new(http),
                Arc::clone(&live),
                Arc::clone(&metrics),
                Some(Arc::clone(&limit)),
            ),
        );
        proxy.threads = Some(1);
        proxy.add_listener(listener);
        proxy.set_connection_filter(Arc::clone(&limit) as _);
        server.add_service(proxy);
    }
    server.add_service(background_service(
        "released-sidecar admin",
        AdminServer::new(
            admin_listener,
            config.listen,
            Arc::clone(&health),
            Arc::clone(&metrics),
            Arc::clone(&live),
        ),
    ));
    server.add_service(background_service(
        "released-sidecar keys",
        KeyRefresher::new(Arc::clone(&live), key_http),
    ));

    spawn_drain_watcher(&server, Arc::clone(&metrics), grace);
    crate::ops::trim::spawn(Arc::clone(&metrics));
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
            health,
            reloader,
            upgrade_sock,
        }),
    });
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
/// systemd unit, its sandbox and credentials); SIGINT: exit now; SIGHUP: reload.
struct Signals {
    health: Arc<Health>,
    reloader: Reloader,
    upgrade_sock: PathBuf,
}

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
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading the config");
                    self.reloader.trigger(Trigger::Signal);
                }
                _ = term.recv() => break,
                _ = usr2.recv() => {
                    if !start_successor(&self.upgrade_sock).await {
                        continue;
                    }
                    self.health.start_draining();
                    tracing::info!("SIGUSR2: the new process waits; handing the listening sockets over, then finishing in-flight requests");
                    return ShutdownSignal::GracefulUpgrade;
                }
                _ = quit.recv() => {
                    self.health.start_draining();
                    tracing::info!("SIGQUIT: handing the listening sockets to the new process, then finishing in-flight requests");
                    return ShutdownSignal::GracefulUpgrade;
                }
                _ = int.recv() => {
                    tracing::info!("SIGINT: exiting without draining");
                    return ShutdownSignal::FastShutdown;
                }
            }
        }
        self.health.start_draining();
        tracing::info!("SIGTERM: not ready, no new connections, finishing in-flight requests");
        ShutdownSignal::GracefulTerminate
    }
}

/// How long a successor may take to start waiting for the sockets.
const SUCCESSOR_START: Duration = Duration::from_secs(10);

/// Starts this process's own command line again with `--upgrade` and waits until it
/// listens on `upgrade_sock`. Returns whether it does (otherwise this process keeps
/// serving, and says why).
async fn start_successor(upgrade_sock: &Path) -> bool {
    // argv[0], not current_exe(): after a package upgrade /proc/self/exe is the old,
    // deleted file, while the path names the new binary.
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.is_empty() {
        return false;
    }
    let program = args.remove(0);
    if !args.iter().any(|a| a == "--upgrade") {
        args.push("--upgrade".into());
    }
    // A socket file left by an earlier upgrade would look like a waiting successor.
    let _ = std::fs::remove_file(upgrade_sock);
    let mut child = match std::process::Command::new(&program)
        .args(&args)
        .stdin(std::process::Stdio::null())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            tracing::error!(program = ?program, error = %e, "SIGUSR2: cannot start the new process; still serving");
            return false;
        }
    };
    let started = std::time::Instant::now();
    while started.elapsed() < SUCCESSOR_START {
        if upgrade_sock.exists() {
            tracing::info!(pid = child.id(), "SIGUSR2: new process started");
            return true;
        }
        if let Ok(Some(status)) = child.try_wait() {
            tracing::error!(%status, "SIGUSR2: the new process exited before taking over; still serving");
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tracing::error!(
        upgrade_sock = %upgrade_sock.display(),
        "SIGUSR2: the new process never waited for the sockets; still serving"
    );
    let _ = child.kill();
    let _ = child.wait();
    false
}

/// pingora waits the full grace period after SIGTERM even when nothing is in flight; exit
/// as soon as the last request is done instead.
fn spawn_drain_watcher(server: &Server, metrics: Arc<Metrics>, grace: Duration) {
    let mut phases = server.watch_execution_phase();
    let spawned = std::thread::Builder::new()
        .name("drain-watcher".into())
        .spawn(move || {
            loop {
                match phases.blocking_recv() {
                    // After SIGTERM; after SIGQUIT once the sockets are handed over and
                    // this process has stopped accepting.
                    Ok(ExecutionPhase::GracefulTerminate | ExecutionPhase::ShutdownStarted) => {
                        break
                    }
                    Ok(_) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(_) => return,
                }
            }
            let started = std::time::Instant::now();
            while started.elapsed() < grace {
                let in_flight = metrics.in_flight.get();
                if in_flight <= 0 {
                    tracing::info!(
                        waited_ms = started.elapsed().as_millis() as u64,
                        "all in-flight requests finished; exiting"
                    );
                    crate::logging::flush();
                    std::process::exit(0);
                }
                std::thread::sleep(Duration::from_millis(25));
            }
            tracing::warn!(
                in_flight = metrics.in_flight.get(),
                "shutdown grace period over; remaining requests are cut"
            );
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "no drain watcher; shutdown waits the full grace period");
    }
}
