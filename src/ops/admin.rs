//! The admin listener (SPEC §7), separate from the proxy port: `/healthz`, `/readyz` and
//! `/metrics`. It shares the shutdown handle ([`crate::shutdown`]) and keeps
//! answering through the drain, so `/readyz` says 503 while in-flight requests finish.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::{Method, StatusCode};
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::stream::Stream;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::metrics::Metrics;
use crate::ops::live::Live;
use crate::shutdown::Shutdown;
use crate::synthetic::SyntheticResponse;

/// How long the proxy port may take to start accepting before startup is declared failed.
const PROXY_START_TIMEOUT: Duration = Duration::from_secs(15);
/// Bound on reading one admin request.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether the proxy port has come up and the process handles its signals, shown by
/// `/readyz` (with the drain and the keys).
#[derive(Debug, Default)]
pub struct Health {
    proxy_accepting: AtomicBool,
    signals_handled: AtomicBool,
}

impl Health {
    /// The signal handlers are in place. Until then a SIGHUP (systemd's `ExecReload`) or a
    /// SIGTERM would take the signal's default action and end the process, so neither
    /// `/readyz` nor systemd's `READY=1` may say ready before.
    pub fn signals_handled(&self) {
        self.signals_handled.store(true, Ordering::Release);
    }

    fn started(&self) -> bool {
        self.proxy_accepting.load(Ordering::Acquire) && self.signals_handled.load(Ordering::Acquire)
    }

    fn readiness(&self, draining: bool, keys_ready: bool) -> (StatusCode, &'static str) {
        if draining {
            (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
        } else if !self.started() {
            (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
        } else if !keys_ready {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "waiting for gateway assertion keys\n",
            )
        } else {
            (StatusCode::OK, "ready\n")
        }
    }
}

/// The admin HTTP server, run as a pingora background service on a socket bound at
/// startup (so a taken port fails the start instead of a background thread).
pub struct AdminServer {
    listener: Mutex<Option<std::net::TcpListener>>,
    proxy_listen: SocketAddr,
    health: Arc<Health>,
    shutdown: Shutdown,
    metrics: Arc<Metrics>,
    live: Arc<Live>,
}

impl AdminServer {
    /// An admin server on `listener` that reports ready once `proxy_listen` accepts and
    /// the config's assertion keys are loaded, until `shutdown` starts draining.
    pub fn new(
        listener: std::net::TcpListener,
        proxy_listen: SocketAddr,
        health: Arc<Health>,
        shutdown: Shutdown,
        metrics: Arc<Metrics>,
        live: Arc<Live>,
    ) -> Self {
        Self {
            listener: Mutex::new(Some(listener)),
            proxy_listen,
            health,
            shutdown,
            metrics,
            live,
        }
    }
}

#[async_trait]
impl BackgroundService for AdminServer {
    async fn start(&self, _shutdown: ShutdownWatch) {
        // The admin port stays up through the drain on purpose; the process exit ends it.
        let Some(std_listener) = self
            .listener
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        else {
            return;
        };
        let listener = match tokio::net::TcpListener::from_std(std_listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "admin listener unusable");
                crate::logging::flush();
                std::process::exit(1);
            }
        };
        tokio::spawn(wait_for_proxy(self.proxy_listen, Arc::clone(&self.health)));
        let mut backoff = AcceptBackoff::default();
        loop {
            let tcp = match listener.accept().await {
                Ok((tcp, _)) => {
                    backoff.reset();
                    tcp
                }
                Err(e) => {
                    // At the descriptor limit accept() fails at once, again and again: a
                    // tight retry would burn a core until descriptors free up.
                    let pause = backoff.next();
                    if backoff.should_log() {
                        tracing::warn!(error = %e, retry_in_ms = pause.as_millis() as u64, "admin listener cannot accept connections");
                    }
                    tokio::time::sleep(pause).await;
                    continue;
                }
            };
            let health = Arc::clone(&self.health);
            let shutdown = self.shutdown.clone();
            let metrics = Arc::clone(&self.metrics);
            let live = Arc::clone(&self.live);
            tokio::spawn(async move {
                let served = serve(tcp, &health, &shutdown, &metrics, &live);
                let _ = tokio::time::timeout(READ_TIMEOUT, served).await;
            });
        }
    }
}

/// Exponential pause after failed `accept()` calls: 10 ms doubling to 1 s (pingora's own
/// listener sleeps 1 s on EMFILE), so a probe answers soon after descriptors free.
#[derive(Debug, Default)]
struct AcceptBackoff {
    failures: u32,
}

impl AcceptBackoff {
    const FIRST: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_secs(1);

    fn next(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let factor = 1u32 << (self.failures - 1).min(7);
        (Self::FIRST * factor).min(Self::MAX)
    }

    /// One warning when failures start, then one a minute at the longest pause.
    fn should_log(&self) -> bool {
        self.failures == 1 || (self.failures > 8 && self.failures.is_multiple_of(60))
    }

    fn reset(&mut self) {
        self.failures = 0;
    }
}

/// Marks the proxy ready once its port accepts a connection and the signal handlers are
/// in place; exits if that never happens (pingora starts its services in background
/// threads and would otherwise leave a process with no proxy).
async fn wait_for_proxy(listen: SocketAddr, health: Arc<Health>) {
    let probe = probe_address(listen);
    let started = tokio::time::Instant::now();
    while started.elapsed() < PROXY_START_TIMEOUT {
        if !health.proxy_accepting.load(Ordering::Acquire)
            && tokio::net::TcpStream::connect(probe).await.is_ok()
        {
            health.proxy_accepting.store(true, Ordering::Release);
        }
        if health.started() {
            tracing::info!(listen = %listen, "proxy is accepting connections");
            crate::ops::systemd::ready();
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tracing::error!(listen = %listen, "the proxy listener did not come up; exiting");
    crate::logging::flush();
    std::process::exit(1);
}

/// Where to connect to reach a listener bound to `listen` (a wildcard means loopback).
fn probe_address(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

async fn serve(
    tcp: tokio::net::TcpStream,
    health: &Health,
    shutdown: &Shutdown,
    metrics: &Metrics,
    live: &Live,
) -> pingora::Result<()> {
    let mut session = ServerSession::new_http1(Box::new(Stream::from(tcp)));
    if !session.read_request().await? {
        return Ok(());
    }
    let req = session.req_header();
    let (status, content_type, body) = match (&req.method, req.uri.path()) {
        (&Method::GET | &Method::HEAD, "/healthz") => {
            (StatusCode::OK, "text/plain", Bytes::from_static(b"ok\n"))
        }
        (&Method::GET | &Method::HEAD, "/readyz") => {
            let (status, text) = health.readiness(shutdown.is_draining(), live.keys_ready());
            (status, "text/plain", Bytes::from_static(text.as_bytes()))
        }
        (&Method::GET | &Method::HEAD, "/metrics") => (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            Bytes::from(metrics.render()),
        ),
        (&Method::GET | &Method::HEAD, _) => (
            StatusCode::NOT_FOUND,
            "text/plain",
            Bytes::from_static(b"not found: try /healthz, /readyz or /metrics\n"),
        ),
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            Bytes::from_static(b"method not allowed\n"),
        ),
    };
    SyntheticResponse::new(status, content_type, body)
        .close()
        .write_to_server(&mut session)
        .await?;
    session.finish().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_listeners_are_probed_on_loopback() {
        assert_eq!(
            probe_address("0.0.0.0:8080".parse().unwrap()),
            "127.0.0.1:8080".parse().unwrap()
        );
        assert_eq!(
            probe_address("[::]:8080".parse().unwrap()),
            "[::1]:8080".parse().unwrap()
        );
        assert_eq!(
            probe_address("10.1.2.3:80".parse().unwrap()),
            "10.1.2.3:80".parse().unwrap()
        );
    }

    #[test]
    fn accept_failures_back_off_to_a_second() {
        let mut b = AcceptBackoff::default();
        let pauses: Vec<u64> = (0..10).map(|_| b.next().as_millis() as u64).collect();
        assert_eq!(pauses, [10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000]);
        b.reset();
        assert_eq!(b.next(), Duration::from_millis(10));
    }

    #[test]
    fn readiness_follows_start_signals_keys_and_drain() {
        let h = Health::default();
        assert_eq!(h.readiness(false, true).0, StatusCode::SERVICE_UNAVAILABLE);
        h.proxy_accepting.store(true, Ordering::Release);
        assert_eq!(
            h.readiness(false, true),
            (StatusCode::SERVICE_UNAVAILABLE, "starting\n"),
            "a SIGHUP or SIGTERM before the handlers are in place would end the process"
        );
        h.signals_handled();
        assert_eq!(h.readiness(false, true).0, StatusCode::OK);
        assert_eq!(h.readiness(false, false).0, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            h.readiness(true, true),
            (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
        );
    }
}
