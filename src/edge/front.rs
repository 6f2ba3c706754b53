//! The client side of the proxy port before the HTTP/1 request loop ([`crate::edge::h1`]):
//! the TLS handshake (with `tls`, through [`crate::edge::tls::accept`]), the connection cap
//! (`limits.max_connections`), the request-head deadline (`timeouts.client_header`), the
//! head size limits (414/431), and an access-log line plus a count for every request
//! refused before the proxy logic runs.
//!
//! pingora's HTTP/1 session reads the request head with no hook before a bad head is
//! answered (a bare 400 and no access-log entry) and only a per-read idle timeout. So
//! [`Front`] runs the connection's request loop itself, and wraps each connection in a
//! [`HeadGuard`]: while a head is expected, the guard holds the bytes back until the head
//! is complete, within its deadline and size limits, and answers 408, 414 or 431 itself
//! when it is not. pingora's parser then only ever sees whole heads (or a clean close), so
//! a slow or vanishing client costs it nothing and logs nothing. The proxy's
//! `early_request_filter` tells the guard (through [`GuardedConnections`], the proxy's
//! [`Downstream`]) that the head was taken, which ends the deadline for that request.
//!
//! A connection's first head is awaited before the per-request state is allocated (tens
//! of KB), so a flood of idle or slow connections costs little more than sockets. Later
//! heads on a kept-alive connection are held the same way, inside the session's read: the
//! session may already hold the start of a pipelined head, so only it can tell when one
//! is due. A read that starts at a line break is therefore let through as the tail of such
//! a head; its deadline still runs until the head is taken.
//!
//! The guard is also the connection's write buffer, in place of pingora's: writes that fit
//! in [`COALESCE_BYTES`] wait for a flush or the next larger write and then leave with it
//! in one vectored syscall, so a response head and the body after it share a syscall and
//! a TCP segment (pingora's buffer sent the head alone whenever the body was larger than
//! its free space). pingora flushes wherever bytes must go out, as its buffer already
//! required, so nothing waits longer than it did.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Buf, Bytes, BytesMut};
use http::StatusCode;
use pingora::apps::ServerApp;
use pingora::listeners::ConnectionFilter;
use pingora::protocols::http::ServerSession;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Semaphore;
use tokio::time::Sleep;

use crate::edge::h1::RequestLoop;
use crate::edge::tls::TlsMaterial;
use crate::logging::AccessLine;
use crate::metrics::Metrics;
use crate::request::downstream::Downstream;
use crate::request::trust::ClientCert;
use crate::synthetic::SyntheticResponse;

/// The largest request head (request line and header fields) accepted, like Envoy's
/// 60 KiB and above nginx's 32 KiB; a request line that alone exceeds it gets 414, other
/// heads 431. pingora's own bound (1 MiB) is never reached.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// pingora's header count limit; past it the guard answers 431 rather than pingora 400.
const MAX_HEADERS: usize = 256;
/// How long, and how much, a refused client may still send after its answer, so that
/// closing the socket does not reset the connection before the client reads the answer.
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1024 * 1024;

/// Writes are held back while the held bytes stay within this (a response head, a small
/// body); a larger write takes them along (module doc). pingora's own write buffer size,
/// one Ethernet MSS: a body streamed in small pieces waits no longer than it did there.
pub const COALESCE_BYTES: usize = pingora::listeners::DEFAULT_L4_WRITE_BUFFER_SIZE;

/// Slices in one vectored write to the socket: the held bytes plus what pingora hands
/// over at once (three for a chunk: size line, data, CRLF).
const MAX_SLICES: usize = 8;

/// What [`Front`] reads from the live config as each connection arrives
/// (`ops::live::Live` implements it): a reload applies from the next connection on.
pub trait ConnectionSettings: Send + Sync + 'static {
    /// The material of `tls` in force now (`None`: no `tls`).
    fn tls(&self) -> Option<Arc<TlsMaterial>>;

    /// `timeouts.client_header` in force now: the bound on the handshake and on each head.
    fn client_header(&self) -> Duration;
}

/// The proxy service's application: the TLS handshake (with `tls`), then the request loop
/// driving the proxy `P`, behind the head guard.
pub struct Front<P> {
    requests: RequestLoop<P>,
    settings: Arc<dyn ConnectionSettings>,
    metrics: Arc<Metrics>,
    limit: Option<Arc<ConnectionLimit>>,
    /// The port speaks HTTPS: fixed at start, like the listener (adding or removing `tls`
    /// needs a restart).
    tls: bool,
}

impl<P> Front<P> {
    /// Puts the guard in front of `requests`; `limit` is the connection cap's filter, whose
    /// slots are given back here when a connection ends. Connections are TLS when the
    /// config at start has `tls`.
    pub fn new(
        requests: RequestLoop<P>,
        settings: Arc<dyn ConnectionSettings>,
        metrics: Arc<Metrics>,
        limit: Option<Arc<ConnectionLimit>>,
    ) -> Self {
        let tls = settings.tls().is_some();
        Self {
            requests,
            settings,
            metrics,
            limit,
            tls,
        }
    }

    /// The TLS handshake with the material of the snapshot current now, within the head
    /// deadline. `None`: it failed (counted and logged by `accept`), or `tls` was removed
    /// by a reload and the port can serve nobody until a restart.
    async fn handshake(&self, stream: Stream) -> Option<(Stream, Option<ClientCert>)> {
        let Some(material) = self.settings.tls() else {
            tracing::debug!("closing a connection: `tls` was removed and needs a restart");
            return None;
        };
        let limit = self.settings.client_header();
        crate::edge::tls::accept(&material, stream, limit, &self.metrics).await
    }

    /// Logs and counts a head that pingora's parser refused (answered before any proxy
    /// phase ran).
    fn report_parser_refusal(&self, shared: &HeadShared, started: Instant) {
        if !shared.let_through.load(Ordering::Acquire) || shared.claimed.load(Ordering::Acquire) {
            return;
        }
        let status = shared.refused_status.load(Ordering::Acquire);
        if status == 0 {
            return;
        }
        let reason = if status == 405 {
            "method_not_allowed"
        } else {
            "bad_request"
        };
        record_refusal(&self.metrics, status, reason, started);
    }
}

#[async_trait]
impl<P> ServerApp for Front<P>
where
    P: ProxyHttp + Send + Sync + 'static,
    P::CTX: Send + Sync,
{
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let (stream, client_cert) = if self.tls {
            self.handshake(stream).await?
        } else {
            (stream, None)
        };
        let _slot = Slot::take(self.limit.clone(), &self.metrics.connections).await;
        // HTTP/1 only: `tls` offers no other protocol in ALPN (crate::edge::tls).
        let deadline = self.settings.client_header();
        let shared = Arc::new(HeadShared::default());
        let mut guard = HeadGuard::new(
            stream,
            Arc::clone(&shared),
            Arc::clone(&self.metrics),
            deadline,
        );
        guard.client_cert = client_cert;
        if !guard.first_head().await {
            return None;
        }
        let mut stream: Stream = Box::new(guard);
        let mut carried = None;
        loop {
            let started = Instant::now();
            let reused = self.requests.serve(stream, carried, shutdown).await;
            self.report_parser_refusal(&shared, started);
            (stream, carried) = reused?.consume();
            shared.rearm();
        }
    }

    async fn cleanup(&self) {
        // Wakes keep-alive connections waiting for their next request at shutdown.
        self.requests.close_idle();
    }
}

/// The connections [`Front`] serves, as the proxy asks about them.
#[derive(Debug, Default, Clone, Copy)]
pub struct GuardedConnections;

impl GuardedConnections {
    /// The guard of the connection `session` came on (an HTTP/1 connection behind
    /// [`Front`]).
    fn guard(session: &Session) -> Option<&HeadGuard> {
        let ServerSession::H1(h1) = session.as_downstream() else {
            return None;
        };
        (**h1.stream()).as_any().downcast_ref::<HeadGuard>()
    }
}

impl Downstream for GuardedConnections {
    /// Called by the proxy's first phase: pingora has taken the head, so the deadline ends,
    /// and pipelined requests (RFC 9112 §9.3.2) are answered in order on this connection
    /// instead of being dropped after a `keep-alive` answer.
    fn request_started(&self, session: &mut Session) {
        session.set_pipelining_enabled(true);
        if let Some(guard) = Self::guard(session) {
            guard.shared.claimed.store(true, Ordering::Release);
        }
    }

    fn client_cert<'s>(&self, session: &'s Session) -> Option<&'s ClientCert> {
        Self::guard(session)?.client_cert.as_ref()
    }
}

/// One access-log line and the counters for a request answered before the proxy ran.
fn record_refusal(metrics: &Metrics, status: u16, reason: &'static str, started: Instant) {
    metrics
        .requests
        .with_label_values(&["", &status.to_string()])
        .inc();
    metrics.rejected_heads.with_label_values(&[reason]).inc();
    AccessLine {
        method: "",
        path: "",
        status,
        started,
        route: "",
        token: "not_planned",
        tags: 0,
        error: Some(reason),
    }
    .write();
}

/// `limits.max_connections` as a pingora connection filter: it runs inside the accept
/// loop, so while every slot is taken the loop waits and new connections stay in the
/// kernel's listen backlog (the admin port has its own listener and keeps answering).
#[derive(Debug)]
pub struct ConnectionLimit {
    slots: Arc<Semaphore>,
    after_handshake: bool,
}

impl ConnectionLimit {
    /// A cap of `max` concurrent client connections.
    pub fn new(max: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS))),
            after_handshake: false,
        }
    }

    /// For a TLS listener: slots are taken once the handshake is done (connections still
    /// in their handshake are bounded by the handshake's deadline, `timeouts.client_header`,
    /// not by the cap), so that clients stuck in or failing their handshake never keep
    /// served ones waiting.
    pub fn after_handshake(mut self) -> Self {
        self.after_handshake = true;
        self
    }
}

#[async_trait]
impl ConnectionFilter for ConnectionLimit {
    async fn should_accept(&self, _addr: Option<&SocketAddr>) -> bool {
        if self.after_handshake {
            return true;
        }
        // The filter cannot hand a permit to the connection, so it takes one for good
        // and `Slot` (in `Front`, which every accepted plain-TCP connection reaches)
        // adds it back when the connection ends.
        match self.slots.acquire().await {
            Ok(permit) => {
                permit.forget();
                true
            }
            Err(_closed) => false,
        }
    }
}

/// A connection's place under the cap, and in the connections gauge, for its lifetime.
struct Slot {
    /// The cap whose slot this connection holds (`None`: no cap, or no slot to give back).
    limit: Option<Arc<ConnectionLimit>>,
    gauge: prometheus::IntGauge,
}

impl Slot {
    async fn take(limit: Option<Arc<ConnectionLimit>>, gauge: &prometheus::IntGauge) -> Self {
        let limit = match limit {
            Some(l) if l.after_handshake => {
                let taken = match l.slots.acquire().await {
                    Ok(permit) => {
                        permit.forget();
                        true
                    }
                    Err(_closed) => false,
                };
                taken.then_some(l)
            }
            other => other,
        };
        gauge.inc();
        crate::edge::trim::observe(gauge.get());
        Self {
            limit,
            gauge: gauge.clone(),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.gauge.dec();
        if let Some(limit) = &self.limit {
            limit.slots.add_permits(1);
        }
    }
}

/// What the guard and the proxy phases share about the current request of a connection.
#[derive(Debug, Default)]
struct HeadShared {
    /// Bumped for every new request on the connection; the guard re-arms when it changes.
    generation: AtomicU64,
    /// The guard let the head through to pingora.
    let_through: AtomicBool,
    /// The proxy's first phase ran: pingora accepted the head.
    claimed: AtomicBool,
    /// The status pingora answered with when it refused a head it was given (0: none).
    refused_status: AtomicU16,
}

impl HeadShared {
    fn rearm(&self) {
        self.let_through.store(false, Ordering::Release);
        self.claimed.store(false, Ordering::Release);
        self.refused_status.store(0, Ordering::Release);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

/// Why the guard answered instead of pingora.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// 408: the head did not arrive within `timeouts.client_header`.
    Timeout,
    /// 414: the request line alone is over [`MAX_HEAD_BYTES`].
    UriTooLong,
    /// 431: the head is over [`MAX_HEAD_BYTES`] or has more than 256 fields.
    HeadersTooLarge,
}

impl Refusal {
    fn status(self) -> StatusCode {
        match self {
            Refusal::Timeout => StatusCode::REQUEST_TIMEOUT,
            Refusal::UriTooLong => StatusCode::URI_TOO_LONG,
            Refusal::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        }
    }

    fn reason(self) -> &'static str {
        match self {
            Refusal::Timeout => "header_timeout",
            Refusal::UriTooLong => "uri_too_long",
            Refusal::HeadersTooLarge => "headers_too_large",
        }
    }

    /// The answer, written before pingora has a session: the connection ends after it.
    fn response(self) -> Bytes {
        SyntheticResponse::status_text(self.status())
            .close()
            .to_bytes()
    }
}

/// Where the guard stands in the current request.
enum Phase {
    /// Waiting for a head: bytes are held back until it is complete.
    Holding,
    /// The head (or what looks like the tail of one pingora already holds) was let
    /// through; the deadline still runs until the proxy claims the request.
    Watching,
    /// Plain pass-through: the request belongs to pingora.
    Passing,
    /// Writing the refusal, then closing the write side.
    Answering { response: Bytes, written: usize },
    /// Reading and dropping what the refused client still sends, for a bounded time.
    Lingering { drained: usize },
    /// Done: pingora sees the end of the stream.
    Closed,
}

/// The connection wrapper that enforces the request-head deadline and size limits; see
/// the module doc.
pub struct HeadGuard {
    inner: Stream,
    shared: Arc<HeadShared>,
    metrics: Arc<Metrics>,
    limit: Duration,
    phase: Phase,
    generation: u64,
    /// Head bytes read but not yet given to pingora.
    held: BytesMut,
    /// How much of `held` was searched for the end of the head.
    scan: HeadScan,
    /// Bytes let through since the head was expected (to bound a `Watching` head).
    watched: usize,
    /// The head deadline, or the lingering deadline while refusing.
    timer: Option<Pin<Box<Sleep>>>,
    started: Instant,
    /// The client certificate verified in the connection's TLS handshake.
    client_cert: Option<ClientCert>,
    /// Written bytes held back to go out with the next write or flush (module doc).
    out: BytesMut,
}

impl std::fmt::Debug for HeadGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeadGuard")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl HeadGuard {
    /// Guards a fresh connection: its first head must arrive within `limit` of now (like
    /// nginx's `client_header_timeout`); on a kept-alive connection the clock starts at
    /// the first byte of each later head.
    fn new(inner: Stream, shared: Arc<HeadShared>, metrics: Arc<Metrics>, limit: Duration) -> Self {
        Self {
            inner,
            shared,
            metrics,
            limit,
            phase: Phase::Holding,
            generation: 0,
            held: BytesMut::new(),
            scan: HeadScan::default(),
            watched: 0,
            timer: Some(Box::pin(tokio::time::sleep(limit))),
            started: Instant::now(),
            client_cert: None,
            out: BytesMut::new(),
        }
    }

    /// Waits for the connection's first head, answering 408/414/431 itself, before
    /// pingora allocates anything for the connection: a flood of idle or slow connections
    /// then costs little more than their sockets. `false`: refused or abandoned.
    async fn first_head(&mut self) -> bool {
        std::future::poll_fn(|cx| loop {
            match self.phase {
                Phase::Holding => {
                    if ready!(self.poll_holding(cx)).is_err() {
                        return Poll::Ready(false);
                    }
                }
                Phase::Answering { .. } => {
                    let _ = ready!(self.poll_answering(cx));
                }
                Phase::Lingering { .. } => {
                    let _ = ready!(self.poll_lingering(cx));
                }
                Phase::Closed => return Poll::Ready(false),
                Phase::Watching | Phase::Passing => return Poll::Ready(true),
            }
        })
        .await
    }

    /// Follows the proxy: a claimed request passes through; a new request re-arms.
    fn sync_with_proxy(&mut self) {
        let generation = self.shared.generation.load(Ordering::Acquire);
        if generation != self.generation {
            self.generation = generation;
            if matches!(
                self.phase,
                Phase::Passing | Phase::Watching | Phase::Holding
            ) {
                self.phase = Phase::Holding;
                self.scan = HeadScan::default();
                self.watched = 0;
                self.timer = None;
                self.started = Instant::now();
            }
        }
        if matches!(self.phase, Phase::Holding | Phase::Watching)
            && self.shared.claimed.load(Ordering::Acquire)
        {
            self.phase = Phase::Passing;
            self.timer = None;
        }
    }

    fn start_clock(&mut self) {
        if self.timer.is_none() {
            self.timer = Some(Box::pin(tokio::time::sleep(self.limit)));
            self.started = Instant::now();
        }
    }

    fn deadline_passed(&mut self, cx: &mut Context<'_>) -> bool {
        self.timer
            .as_mut()
            .is_some_and(|t| t.as_mut().poll(cx).is_ready())
    }

    fn refuse(&mut self, refusal: Refusal) {
        record_refusal(
            &self.metrics,
            refusal.status().as_u16(),
            refusal.reason(),
            self.started,
        );
        self.held.clear();
        self.phase = Phase::Answering {
            response: refusal.response(),
            written: 0,
        };
    }

    /// Serves held bytes to pingora first.
    fn serve_held(&mut self, buf: &mut ReadBuf<'_>) -> bool {
        if self.held.is_empty() {
            return false;
        }
        let n = self.held.len().min(buf.remaining());
        buf.put_slice(&self.held[..n]);
        self.held.advance(n);
        true
    }

    /// Reads more of a head into `held`.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        // Uninitialised: the read fills what it reports, so zeroing 4 KiB before each of
        // a request's two reads (one of them pending) would be work for nothing.
        let mut chunk = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
        let mut read = ReadBuf::uninit(&mut chunk);
        ready!(Pin::new(&mut self.inner).poll_read(cx, &mut read))?;
        self.held.extend_from_slice(read.filled());
        Poll::Ready(Ok(read.filled().len()))
    }

    /// Reads until the head is whole (phase `Watching`, the head in `held`), refused
    /// (`Answering`) or abandoned (`Closed`).
    fn poll_holding(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        loop {
            if self.deadline_passed(cx) {
                if self.held.is_empty() {
                    // Nothing was asked (a preconnected socket): close without an answer,
                    // as nginx does.
                    tracing::debug!("closing a connection that sent no request in time");
                    self.phase = Phase::Closed;
                } else {
                    self.refuse(Refusal::Timeout);
                }
                return Poll::Ready(Ok(()));
            }
            let n = match self.poll_fill(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(e)) => {
                    self.client_left();
                    return Poll::Ready(Err(e));
                }
            };
            if n == 0 {
                self.client_left();
                return Poll::Ready(Ok(()));
            }
            self.start_clock();
            match self.scan.state(&self.held) {
                HeadState::Partial if self.held.len() > MAX_HEAD_BYTES => {
                    self.refuse(oversize(&self.held));
                    return Poll::Ready(Ok(()));
                }
                HeadState::Partial => continue,
                HeadState::TooManyFields => {
                    self.refuse(Refusal::HeadersTooLarge);
                    return Poll::Ready(Ok(()));
                }
                HeadState::Complete | HeadState::Tail => {
                    self.shared.let_through.store(true, Ordering::Release);
                    self.watched = self.held.len();
                    self.phase = Phase::Watching;
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }

    /// The client closed mid-head: normal life on the internet, not an operator matter.
    fn client_left(&mut self) {
        if !self.held.is_empty() {
            self.metrics.client_head_disconnects.inc();
            tracing::debug!(
                bytes = self.held.len(),
                "client closed the connection in the middle of a request head"
            );
            self.held.clear();
        }
        self.phase = Phase::Closed;
    }

    fn poll_answering(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if ready!(self.poll_drain(cx)).is_err() {
            self.phase = Phase::Closed;
        }
        while let Phase::Answering { response, written } = &mut self.phase {
            if *written < response.len() {
                match ready!(Pin::new(&mut self.inner).poll_write(cx, &response[*written..])) {
                    Ok(0) | Err(_) => self.phase = Phase::Closed,
                    Ok(n) => *written += n,
                }
                continue;
            }
            let flushed = ready!(Pin::new(&mut self.inner).poll_flush(cx))
                .and(ready!(Pin::new(&mut self.inner).poll_shutdown(cx)));
            self.phase = match flushed {
                Ok(()) => {
                    self.timer = Some(Box::pin(tokio::time::sleep(LINGER_TIME)));
                    Phase::Lingering { drained: 0 }
                }
                Err(_) => Phase::Closed,
            };
        }
        Poll::Ready(Ok(()))
    }

    fn poll_lingering(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        loop {
            let Phase::Lingering { drained } = self.phase else {
                return Poll::Ready(Ok(()));
            };
            if drained > LINGER_BYTES || self.deadline_passed(cx) {
                self.phase = Phase::Closed;
                continue;
            }
            let mut chunk = [0u8; 4096];
            let mut read = ReadBuf::new(&mut chunk);
            match ready!(Pin::new(&mut self.inner).poll_read(cx, &mut read)) {
                Ok(()) if !read.filled().is_empty() => {
                    self.phase = Phase::Lingering {
                        drained: drained + read.filled().len(),
                    };
                }
                _ => self.phase = Phase::Closed,
            }
        }
    }

    /// Refuses writes once the guard has answered or closed; a write before the proxy
    /// claimed a head let through is pingora's parser refusing it, so its status is noted
    /// for the access log. `data` starts the write.
    fn before_write(&mut self, data: &[u8]) -> std::io::Result<()> {
        if matches!(self.phase, Phase::Closed | Phase::Lingering { .. }) {
            return Err(std::io::ErrorKind::BrokenPipe.into());
        }
        if self.shared.let_through.load(Ordering::Acquire)
            && !self.shared.claimed.load(Ordering::Acquire)
            && self.shared.refused_status.load(Ordering::Acquire) == 0
        {
            if let Some(status) = status_of(data) {
                self.shared.refused_status.store(status, Ordering::Release);
            }
        }
        Ok(())
    }

    /// Holds `bufs` back while everything held fits in [`COALESCE_BYTES`]; otherwise
    /// writes the held bytes and `bufs` in one vectored write. Answers how many bytes of
    /// `bufs` were taken, as `poll_write_vectored` must.
    fn poll_write_slices(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if self.out.len() + total <= COALESCE_BYTES {
            for buf in bufs {
                self.out.extend_from_slice(buf);
            }
            return Poll::Ready(Ok(total));
        }
        loop {
            let held = self.out.len();
            if held == 0 {
                return Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
            }
            let mut slices = [std::io::IoSlice::new(&[]); MAX_SLICES];
            slices[0] = std::io::IoSlice::new(&self.out);
            let n = bufs.len().min(MAX_SLICES - 1);
            slices[1..=n].copy_from_slice(&bufs[..n]);
            let written = ready!(Pin::new(&mut self.inner).poll_write_vectored(cx, &slices[..=n]))?;
            if written == 0 {
                return Poll::Ready(Ok(0));
            }
            if written < held {
                self.out.advance(written);
                continue;
            }
            self.out.clear();
            if written > held {
                return Poll::Ready(Ok(written - held));
            }
        }
    }

    /// Writes out the held bytes.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while !self.out.is_empty() {
            match ready!(Pin::new(&mut self.inner).poll_write(cx, &self.out))? {
                0 => return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
                n => self.out.advance(n),
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// How far a held head has come.
#[derive(Debug, PartialEq, Eq)]
enum HeadState {
    /// No end of head yet.
    Partial,
    /// A whole head within the field limit.
    Complete,
    /// More fields than pingora accepts.
    TooManyFields,
    /// Starts at a line break: the tail of a head whose start pingora already holds (a
    /// pipelined request it read ahead), or stray line breaks it skips. Let through, since
    /// only pingora can tell; the deadline still runs.
    Tail,
}

/// Where the search for the end of a held head resumes: a head trickled in tiny reads must
/// cost linear time, not a rescan of everything held after each read.
#[derive(Debug, Default)]
struct HeadScan {
    /// Bytes of `held` already searched for a line break that ends the head.
    scanned: usize,
}

impl HeadScan {
    /// How far `held` has come, looking only at bytes added since the last call (and the
    /// last two before them: an end of head may be split across reads, `\n` | `\r\n`).
    /// Asked again only while it answers `Partial`, with `held` grown at its end.
    fn state(&mut self, held: &[u8]) -> HeadState {
        if matches!(held.first(), Some(b'\r' | b'\n')) {
            return HeadState::Tail;
        }
        let from = self.scanned.saturating_sub(2).min(held.len());
        self.scanned = held.len();
        let ends = memchr::memchr_iter(b'\n', &held[from..]).any(|i| {
            let after = &held[from + i + 1..];
            after.starts_with(b"\n") || after.starts_with(b"\r\n")
        });
        if !ends {
            return HeadState::Partial;
        }
        // Every field takes a line of its own: with no more lines than the limit (and
        // whatever follows the head counted too) there cannot be too many fields, and
        // the parse below is not needed.
        if memchr::memchr_iter(b'\n', held).count() <= MAX_HEADERS {
            return HeadState::Complete;
        }
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        match httparse::Request::new(&mut fields).parse(held) {
            Err(httparse::Error::TooManyHeaders) => HeadState::TooManyFields,
            // Anything else, valid or not, is pingora's to judge and answer.
            _ => HeadState::Complete,
        }
    }
}

/// 414 when the request line alone fills the limit, 431 otherwise.
fn oversize(held: &[u8]) -> Refusal {
    if memchr::memchr(b'\n', &held[..held.len().min(MAX_HEAD_BYTES)]).is_none() {
        Refusal::UriTooLong
    } else {
        Refusal::HeadersTooLarge
    }
}

impl AsyncRead for HeadGuard {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        this.sync_with_proxy();
        loop {
            // A head being let through: its held bytes go first.
            if matches!(this.phase, Phase::Watching | Phase::Passing) && this.serve_held(buf) {
                return Poll::Ready(Ok(()));
            }
            match this.phase {
                Phase::Holding => ready!(this.poll_holding(cx))?,
                Phase::Watching => {
                    if this.deadline_passed(cx) {
                        this.refuse(Refusal::Timeout);
                        continue;
                    }
                    let before = buf.filled().len();
                    ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
                    this.watched += buf.filled().len() - before;
                    if this.watched > MAX_HEAD_BYTES {
                        // pingora is still reading a head that is too large.
                        this.refuse(Refusal::HeadersTooLarge);
                        buf.set_filled(before);
                        continue;
                    }
                    return Poll::Ready(Ok(()));
                }
                Phase::Passing => return Pin::new(&mut this.inner).poll_read(cx, buf),
                Phase::Answering { .. } => ready!(this.poll_answering(cx))?,
                Phase::Lingering { .. } => ready!(this.poll_lingering(cx))?,
                // pingora sees the end of the stream: with nothing read for this head, it
                // closes quietly.
                Phase::Closed => return Poll::Ready(Ok(())),
            }
        }
    }
}

impl AsyncWrite for HeadGuard {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        this.before_write(data)?;
        this.poll_write_slices(cx, &[std::io::IoSlice::new(data)])
    }

    // pingora writes a chunk of a chunked body as size line, data and CRLF in one vectored
    // write: without this each part would be a syscall (and a TCP segment) of its own.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let first = bufs
            .iter()
            .find(|b| !b.is_empty())
            .map_or(&[][..], |b| &b[..]);
        this.before_write(first)?;
        this.poll_write_slices(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The status code of a response that starts in `data` (`HTTP/1.1 400 ...`).
fn status_of(data: &[u8]) -> Option<u16> {
    let code = data.strip_prefix(b"HTTP/1.")?.get(2..5)?;
    std::str::from_utf8(code).ok()?.parse().ok()
}

#[async_trait]
impl Shutdown for HeadGuard {
    async fn shutdown(&mut self) {
        if let Err(e) = std::future::poll_fn(|cx| self.poll_drain(cx)).await {
            tracing::debug!(error = %e, "could not write the last bytes before closing");
        }
        self.inner.shutdown().await;
    }
}

// As pingora's own write buffer does on drop: one try to send what is held, never a wait.
impl Drop for HeadGuard {
    fn drop(&mut self) {
        if !self.out.is_empty() {
            let _ = self.poll_drain(&mut Context::from_waker(std::task::Waker::noop()));
        }
    }
}

impl UniqueID for HeadGuard {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for HeadGuard {
    fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for HeadGuard {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for HeadGuard {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest);
    }
}

impl GetSocketDigest for HeadGuard {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, socket_digest: SocketDigest) {
        self.inner.set_socket_digest(socket_digest);
    }
}

#[async_trait]
impl Peek for HeadGuard {
    // Peeking would bypass the held bytes; pingora falls back to reading.
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_are_judged_by_their_end_and_field_count() {
        let many: String = (0..300).map(|i| format!("x{i}: y\r\n")).collect();
        let too_many = format!("GET / HTTP/1.1\r\n{many}\r\n");
        let cases: &[(&[u8], HeadState)] = &[
            (b"GET / HTTP/1.1\r\nHost: a\r\n", HeadState::Partial),
            (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", HeadState::Complete),
            (b"GET / HTTP/1.1\nHost: a\n\n", HeadState::Complete),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody",
                HeadState::Complete,
            ),
            (b"\x16\x03\x01 garbage\r\n\r\n", HeadState::Complete),
            (too_many.as_bytes(), HeadState::TooManyFields),
            (b"\r\n", HeadState::Tail),
            (b"\n\r\nGET", HeadState::Tail),
        ];
        for (head, want) in cases {
            assert_eq!(
                HeadScan::default().state(head),
                *want,
                "{:?}",
                String::from_utf8_lossy(head)
            );
        }
    }

    #[test]
    fn the_field_limit_holds_at_its_edge_with_or_without_the_parse() {
        let head = |fields: usize, line_end: &str| {
            let many: String = (0..fields).map(|i| format!("x{i}: y{line_end}")).collect();
            format!("GET / HTTP/1.1{line_end}{many}{line_end}")
        };
        for line_end in ["\r\n", "\n"] {
            // Few lines skip the parse; near the limit it decides.
            for fields in [0, 1, 254, 255, 256] {
                assert_eq!(
                    at_once(head(fields, line_end).as_bytes()),
                    HeadState::Complete,
                    "{fields} fields"
                );
            }
            assert_eq!(
                at_once(head(MAX_HEADERS + 1, line_end).as_bytes()),
                HeadState::TooManyFields
            );
        }
    }

    /// What a fresh scanner says of `held` in one go.
    fn at_once(held: &[u8]) -> HeadState {
        HeadScan::default().state(held)
    }

    #[test]
    fn a_head_read_in_pieces_is_judged_as_if_read_whole() {
        let many: String = (0..300).map(|i| format!("x{i}: y\r\n")).collect();
        let too_many = format!("GET / HTTP/1.1\r\n{many}\r\n");
        let heads: &[&[u8]] = &[
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\nHost: a\n\n",
            b"GET / HTTP/1.1\r\nHost: a\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody\r\n\r\n",
            b"GET / HTTP/1.1\r\nA: \n\r\r\nB: c\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n\r",
            b"\r\nGET / HTTP/1.1\r\n\r\n",
            too_many.as_bytes(),
        ];
        for head in heads {
            let name = String::from_utf8_lossy(head);
            // One byte per read: every prefix gets the answer it would get whole, until
            // the first answer that ends the holding.
            let mut scan = HeadScan::default();
            for end in 0..=head.len() {
                let got = scan.state(&head[..end]);
                assert_eq!(got, at_once(&head[..end]), "{name:?} at {end}");
                if got != HeadState::Partial {
                    break;
                }
            }
            // Two reads, split at every point (a line break split from what follows).
            for split in 0..=head.len() {
                let mut scan = HeadScan::default();
                let first = scan.state(&head[..split]);
                assert_eq!(first, at_once(&head[..split]), "{name:?} split at {split}");
                if first == HeadState::Partial {
                    assert_eq!(scan.state(head), at_once(head), "{name:?} split at {split}");
                }
            }
        }
    }

    #[test]
    fn an_oversized_head_is_a_long_uri_only_without_a_line_break() {
        let long_uri = format!("GET /{} HTTP/1.1", "a".repeat(MAX_HEAD_BYTES + 10));
        assert_eq!(oversize(long_uri.as_bytes()), Refusal::UriTooLong);
        let big_header = format!("GET / HTTP/1.1\r\nx: {}", "a".repeat(MAX_HEAD_BYTES));
        assert_eq!(oversize(big_header.as_bytes()), Refusal::HeadersTooLarge);
    }

    #[test]
    fn refusals_are_well_formed_responses() {
        for refusal in [
            Refusal::Timeout,
            Refusal::UriTooLong,
            Refusal::HeadersTooLarge,
        ] {
            let response = refusal.response();
            let text = std::str::from_utf8(&response).unwrap();
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            let status = refusal.status().as_u16();
            assert!(head.starts_with(&format!("HTTP/1.1 {status} ")));
            assert!(head.contains(&format!("content-length: {}\r\n", body.len())));
            assert!(head.lines().any(|l| l == "connection: close"), "{head}");
            assert_eq!(status_of(&response), Some(status));
        }
    }

    /// A client connection that serves one request head and records every write call, so
    /// a test can count the syscalls a real socket would see.
    #[derive(Debug)]
    struct Recorder {
        head: &'static [u8],
        writes: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
        /// The most one write call takes, like a full socket buffer.
        limit: usize,
    }

    impl Recorder {
        fn take(&self, data: Vec<u8>) -> usize {
            let n = data.len().min(self.limit);
            self.writes.lock().unwrap().push(data[..n].to_vec());
            n
        }
    }

    impl AsyncRead for Recorder {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            if self.head.is_empty() {
                return Poll::Pending;
            }
            let n = self.head.len().min(buf.remaining());
            buf.put_slice(&self.head[..n]);
            self.head = &self.head[n..];
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            Poll::Ready(Ok(self.take(data.to_vec())))
        }

        fn poll_write_vectored(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[std::io::IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            Poll::Ready(Ok(
                self.take(bufs.iter().flat_map(|b| b.iter().copied()).collect())
            ))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[async_trait]
    impl Shutdown for Recorder {
        async fn shutdown(&mut self) {}
    }
    impl UniqueID for Recorder {
        fn id(&self) -> UniqueIDType {
            0
        }
    }
    impl Ssl for Recorder {}
    impl GetTimingDigest for Recorder {
        fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
            vec![]
        }
    }
    impl GetProxyDigest for Recorder {
        fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
            None
        }
    }
    impl GetSocketDigest for Recorder {
        fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
            None
        }
    }
    impl Peek for Recorder {}

    /// A guarded session on a [`Recorder`] that has read one GET and written the head of a
    /// response: chunked, or with this `Content-Length`.
    async fn responding(
        limit: usize,
        content_length: Option<usize>,
    ) -> (ServerSession, Arc<std::sync::Mutex<Vec<Vec<u8>>>>) {
        let writes = Arc::default();
        let client = Recorder {
            head: b"GET /page HTTP/1.1\r\nHost: app\r\n\r\n",
            writes: Arc::clone(&writes),
            limit,
        };
        let guard = HeadGuard::new(
            Box::new(client),
            Arc::default(),
            Arc::new(Metrics::new()),
            Duration::from_secs(5),
        );
        let mut session = ServerSession::new_http1(Box::new(guard));
        assert!(session.read_request().await.unwrap());
        let mut head = pingora::http::ResponseHeader::build(200, None).unwrap();
        match content_length {
            Some(n) => head.insert_header("content-length", n).unwrap(),
            None => head.insert_header("transfer-encoding", "chunked").unwrap(),
        }
        session.write_response_header(Box::new(head)).await.unwrap();
        (session, writes)
    }

    #[tokio::test]
    async fn a_response_head_goes_out_with_its_body_in_one_write() {
        let (mut session, writes) = responding(usize::MAX, Some(10_000)).await;
        assert!(writes.lock().unwrap().is_empty());
        let body = Bytes::from(vec![b'x'; 10_000]);
        session.write_response_body(body, true).await.unwrap();
        session.finish_body().await.unwrap();
        let writes = writes.lock().unwrap();
        // One syscall and one TCP segment for head and body, as nginx's writev.
        assert_eq!(writes.len(), 1, "{} writes", writes.len());
        let head_end = memchr::memmem::find(&writes[0], b"\r\n\r\n").unwrap() + 4;
        assert!(writes[0].starts_with(b"HTTP/1.1 200 OK\r\n"));
        assert_eq!(&writes[0][head_end..], &[b'x'; 10_000][..]);
    }

    #[tokio::test]
    async fn each_chunk_of_a_chunked_body_is_one_write() {
        // pingora sends the head of a response without a length at once (the body may be
        // generated in real time), then frames each chunk as size line, data and CRLF.
        let (mut session, writes) = responding(usize::MAX, None).await;
        assert_eq!(writes.lock().unwrap().len(), 1);
        session
            .write_response_body(Bytes::from(vec![b'x'; 3000]), false)
            .await
            .unwrap();
        session
            .write_response_body(Bytes::from(vec![b'y'; 10_000]), false)
            .await
            .unwrap();
        session.finish_body().await.unwrap();
        let writes = writes.lock().unwrap();
        assert_eq!(writes.len(), 4, "{} writes", writes.len());
        assert!(writes[1].starts_with(b"BB8\r\nxxx") && writes[1].ends_with(b"x\r\n"));
        assert!(writes[2].starts_with(b"2710\r\nyyy") && writes[2].ends_with(b"y\r\n"));
        assert_eq!(writes[3], b"0\r\n\r\n");
    }

    #[tokio::test]
    async fn held_bytes_survive_short_writes_in_order() {
        let pieces = [100, 5000, 10, 9000];
        let total = pieces.iter().sum();
        let mut sent = Vec::new();
        for limit in [usize::MAX, 97] {
            let (mut session, writes) = responding(limit, Some(total)).await;
            for (i, len) in pieces.into_iter().enumerate() {
                let body = Bytes::from(vec![b'a' + i as u8; len]);
                session.write_response_body(body, false).await.unwrap();
            }
            session.finish_body().await.unwrap();
            let writes = writes.lock().unwrap();
            assert!(writes.iter().all(|w| w.len() <= limit));
            sent.push(writes.concat());
        }
        // A socket that takes 97 bytes per call gets the held head in pieces before the
        // body that carries it out, and nothing is lost or reordered.
        assert_eq!(sent[0], sent[1]);
        let whole = &sent[0];
        let body_at = memchr::memmem::find(whole, b"\r\n\r\n").unwrap() + 4;
        let want: Vec<u8> = pieces
            .into_iter()
            .enumerate()
            .flat_map(|(i, len)| std::iter::repeat_n(b'a' + i as u8, len))
            .collect();
        assert_eq!(&whole[body_at..], &want[..]);
    }

    #[tokio::test]
    async fn held_bytes_are_sent_when_the_connection_is_dropped_unflushed() {
        // A head with Content-Length is held for its body; pingora's buffer sent what it
        // held on drop, and so does the guard.
        let (session, writes) = responding(usize::MAX, Some(5)).await;
        assert!(writes.lock().unwrap().is_empty());
        drop(session);
        let writes = writes.lock().unwrap();
        assert_eq!(writes.len(), 1);
        assert!(writes[0].starts_with(b"HTTP/1.1 200 OK\r\n") && writes[0].ends_with(b"\r\n\r\n"));
    }
}
