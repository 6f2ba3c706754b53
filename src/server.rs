//! `released-sidecar run`: assembles the process (live config, token client, proxy and
//! admin services, reloader, signal handling) and runs it until SIGTERM has drained the
//! in-flight requests.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{ExecutionPhase, RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora::services::background::background_service;
use tokio::signal::unix::{signal, SignalKind};

use crate::admin::{AdminServer, Health};
use crate::live::{self, KeyRefresher, Live, ReloadError, Reloader, Trigger};
use crate::metrics::Metrics;
use crate::proxy::Sidecar;
use crate::released::ReleasedClient;

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
}

/// Runs the sidecar with the config at `path`; returns only on a start error (a normal
/// shutdown exits the process with status 0).
pub fn run(path: &Path) -> Result<(), StartError> {
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
    drop(bind(config.listen, "listen")?);
    let admin_listener = bind(config.admin_listen, "admin.listen")?;
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
    // Our CLI owns argv: pingora's own Opt parser is never called.
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();

    let mut proxy = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        Sidecar::new(Arc::clone(&live), released, Arc::clone(&metrics)),
        "released-sidecar proxy",
    );
    proxy.add_tcp(&config.listen.to_string());
    server.add_service(proxy);
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
        shutdown_signal: Box::new(Signals { health, reloader }),
    });
    tracing::info!("shutdown complete");
    crate::logging::flush();
    std::process::exit(0)
}

/// SIGTERM/SIGQUIT: drain and exit; SIGINT: exit now; SIGHUP: reload.
struct Signals {
    health: Arc<Health>,
    reloader: Reloader,
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        let (Ok(mut term), Ok(mut int), Ok(mut quit), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::quit()),
            signal(SignalKind::hangup()),
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
                _ = quit.recv() => break,
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

/// pingora waits the full grace period after SIGTERM even when nothing is in flight; exit
/// as soon as the last request is done instead.
fn spawn_drain_watcher(server: &Server, metrics: Arc<Metrics>, grace: Duration) {
    let mut phases = server.watch_execution_phase();
    let spawned = std::thread::Builder::new()
        .name("drain-watcher".into())
        .spawn(move || {
            loop {
                match phases.blocking_recv() {
                    Ok(ExecutionPhase::GracefulTerminate) => break,
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
