//! The HTTP/1 request loop: a connection's requests one after another, each driven through
//! a [`ProxyHttp`] implementation's phases in pingora-proxy's order, on pingora-core's
//! HTTP/1 sessions (its parsers and framing on the client side, and on the app side for
//! requests with a body or an upgrade), our own response reader for the other requests to
//! the app ([`bodyless`]: nearly all traffic, at less cost), and a per-worker pool of
//! connections to the app ([`pool`]).
//!
//! Why not pingora-proxy's own loop (`HttpProxy::process_new_http`): per request it runs two
//! halves joined by task channels in two select loops, spawns a watcher task for every
//! upstream connection it pools, moves a large boxed request state around and keeps a
//! shared shutdown registration per keep-alive wait. For the small responses that make up
//! most traffic that machinery cost more than the HTTP work itself (README
//! "Performance"). Here one `async fn` per request does the same steps: one select over
//! "the client sent body bytes (or closed)" and "the app sent a response part", each
//! answered in place. What reaches the app and the client is decided by the same code as
//! before: pingora-core's server and client sessions (parsing, framing, keep-alive,
//! `Expect`, upgrades) — or, for a request without a body, [`bodyless`], which writes the
//! request head with pingora's own serialiser and reads the response by pingora's rules
//! (a differential test holds the two readers to the same answers) —, pingora-proxy's
//! request sanitising ([`sanitize`], ported unchanged) and `Session::write_response_tasks`
//! for everything written to the client.
//!
//! Phases called, in this order: `new_ctx`, `early_request_filter`, `request_filter` (a
//! `true` ends the request), then per attempt `upstream_peer`, `fail_to_connect` (connect
//! errors), `upstream_request_filter`, and per response part `adjust_upstream_modules`,
//! `upstream_response_filter` / `upstream_response_body_filter`, `response_filter` /
//! `response_body_filter`; `error_while_proxy` and `suppress_proxy_warn_log` decide and log
//! retries; `fail_to_proxy` and `suppress_error_log` handle the final error; `logging`
//! comes last. `Session::upstream_compression` works as in pingora (the sidecar's
//! decompression switch).
//!
//! Not called, because the sidecar does not use them (their defaults do nothing for a plain
//! proxy): caching and purging (`request_cache_filter` and every `cache_*` phase,
//! `range_header_filter`, `should_serve_stale`, `is_purge`…), modules
//! (`init_downstream_modules`, `init_upstream_modules`), subrequests,
//! `proxy_upstream_filter`, `request_body_filter`, `connected_to_upstream`,
//! `response_trailer_filter`, `custom_forwarding` and the custom-message filters,
//! `persist_connection_context` / `on_connection_reuse`, `request_summary`. Nor are the
//! session's upstream byte counts and write-pending time recorded, and
//! `Session::is_process_shutting_down` stays `false` (the sidecar has its own drain handle).
//! HTTP/2 is served on neither side (the listener offers only `http/1.1`), and HTTP/1
//! trailers are dropped, as pingora does.
//!
//! Its own log lines name an error's type and source, never its text: pingora's error
//! context can quote the raw request or response head (cookies, credentials), and the
//! sidecar's lines must never carry a header value (README "Logs").

pub mod bodyless;
pub mod pool;
pub mod sanitize;

use std::future::{poll_fn, Future};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;

use async_trait::async_trait;
use bytes::Bytes;
use http::{Method, StatusCode, Version};
use pingora::apps::{HttpPersistentSettings, ReusedHttpStream, ServerApp};
use pingora::connectors::{ConnectorOptions, TransportConnector};
use pingora::protocols::http::v1::client::HttpSession as AppSession;
use pingora::protocols::http::v1::common::is_upgrade_req;
use pingora::protocols::http::HttpTask;
use pingora::protocols::{Stream, ALPN};
use pingora::proxy::{ProxyHttp, ProxyWarnLogContext, Session};
use pingora::server::configuration::ServerConf;
use pingora::server::ShutdownWatch;
use pingora::upstreams::peer::{HttpPeer, Peer};
use pingora::{Error, ErrorType, Result};
use tokio::sync::Notify;

use self::bodyless::Bodyless;
use self::pool::UpstreamPool;

/// How long a kept-alive client connection may wait for its next request, in seconds
/// (pingora's own HTTP/1 loop uses the same).
pub const KEEPALIVE_SECS: u64 = 60;

/// Serves HTTP/1 requests through `P`'s phases to the app; one per worker.
pub struct RequestLoop<P> {
    app: P,
    connector: TransportConnector,
    pool: UpstreamPool,
    /// Attempts per request (pingora's `max_retries`); only retryable errors try again.
    max_attempts: usize,
    /// Set by [`Self::close_idle`]: connections waiting for their next request close.
    closing: AtomicBool,
    closed: Notify,
}

/// How one attempt at the app ended: whether the client connection and the connection to
/// the app can each carry another request, and the error, if any.
struct Attempt {
    client_reusable: bool,
    app_reusable: bool,
    error: Option<Box<Error>>,
}

impl Attempt {
    fn failed(app_reusable: bool, error: Box<Error>) -> Self {
        Self {
            client_reusable: false,
            app_reusable,
            error: Some(error),
        }
    }
}

impl<P> RequestLoop<P>
where
    P: ProxyHttp + Send + Sync,
    P::CTX: Send + Sync,
{
    /// A loop driving `app`, keeping idle connections to the app in `pool`; connector
    /// options and the retry bound come from `conf` as in pingora-proxy.
    pub fn new(app: P, pool: UpstreamPool, conf: &ServerConf) -> Self {
        Self {
            app,
            connector: TransportConnector::new(Some(ConnectorOptions::from_server_conf(conf))),
            pool,
            max_attempts: conf.max_retries.max(1),
            closing: AtomicBool::new(false),
            closed: Notify::new(),
        }
    }

    /// The proxy logic this loop drives.
    pub fn app(&self) -> &P {
        &self.app
    }

    /// Ends every wait for a next request (the service stopped accepting); requests in
    /// flight finish.
    pub fn close_idle(&self) {
        self.closing.store(true, Ordering::Release);
        self.closed.notify_waiters();
    }

    /// Serves every request of a connection in turn.
    pub async fn serve_connection(&self, stream: Stream, shutdown: &ShutdownWatch) {
        let mut next = self.serve(stream, None, shutdown).await;
        while let Some((stream, carried)) = next.map(ReusedHttpStream::consume) {
            next = self.serve(stream, carried, shutdown).await;
        }
    }

    /// Reads one request from `stream` and answers it. `carried`: what the previous request
    /// of the connection left for this one (keep-alive, pipelined bytes); `None` for a
    /// connection's first request. Returns the connection when it can carry another.
    pub async fn serve(
        &self,
        stream: Stream,
        carried: Option<HttpPersistentSettings>,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        let mut session = Session::new_h1(stream);
        match carried {
            Some(settings) => settings.apply_to_session(session.as_downstream_mut()),
            None => session.set_keepalive((!*shutdown.borrow()).then_some(KEEPALIVE_SECS)),
        }
        if !self.read_request(&mut session).await {
            return None;
        }
        if *shutdown.borrow() {
            // Stop the client from reusing a connection of a service that shuts down soon.
            session.set_keepalive(None);
        }
        let mut ctx = self.app.new_ctx();
        if !self.process_request(&mut session, &mut ctx).await {
            return None;
        }
        let settings = HttpPersistentSettings::for_session(&session);
        let reusable = session.downstream_session.finish().await.ok().flatten()?;
        Some(ReusedHttpStream::from_reusable_stream(reusable, settings))
    }

    /// Reads the request head, racing the end of service. `false`: nothing to serve (the
    /// client left, or the head was refused with 400 or 405 and the connection closed).
    async fn read_request(&self, session: &mut Session) -> bool {
        let read = tokio::select! {
            // Biased to the read: a request already buffered is served, not dropped.
            biased;
            read = session.read_request() => Some(read),
            () = self.closing() => None,
        };
        match read {
            Some(Ok(true)) => {}
            Some(Ok(false)) | None => return false,
            Some(Err(e)) => {
                if *e.etype() == ErrorType::InvalidHTTPHeader {
                    tracing::debug!(
                        error = e.etype().as_str(),
                        "request head refused by the parser"
                    );
                    if let Err(e) = session.respond_error(400).await {
                        tracing::debug!(error = e.etype().as_str(), "could not answer 400");
                    }
                } else {
                    tracing::debug!(
                        error = e.etype().as_str(),
                        "connection broke while reading a request head"
                    );
                }
                session.shutdown().await;
                return false;
            }
        }
        // CONNECT changes the framing of everything after it (RFC 9112 §6.3), and a reverse
        // proxy has no business tunnelling: pingora-proxy refuses it the same way.
        if session.req_header().method == Method::CONNECT {
            if let Err(e) = session.respond_error(405).await {
                tracing::debug!(error = e.etype().as_str(), "could not answer 405");
            }
            session.shutdown().await;
            return false;
        }
        true
    }

    /// Resolves once [`Self::close_idle`] was called (before or during the wait).
    async fn closing(&self) {
        let mut notified = pin!(self.closed.notified());
        poll_fn(|cx| {
            if notified.as_mut().poll(cx).is_ready() || self.closing.load(Ordering::Acquire) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
    }

    /// Runs the request's phases and answers it; returns whether the client connection
    /// can carry another request.
    async fn process_request(&self, session: &mut Session, ctx: &mut P::CTX) -> bool {
        if let Err(e) = self.app.early_request_filter(session, ctx).await {
            return self.handle_error(session, ctx, e).await;
        }
        match self.app.request_filter(session, ctx).await {
            Ok(true) => {
                // The phase answered the request itself.
                self.app.logging(session, None, ctx).await;
                return true;
            }
            Ok(false) => {}
            Err(e) => return self.handle_error(session, ctx, e).await,
        }

        let mut attempts = 0;
        let mut client_reusable = false;
        let mut error = None;
        while attempts < self.max_attempts {
            attempts += 1;
            let attempt = self.proxy_to_app(session, ctx).await;
            client_reusable = attempt.client_reusable;
            let Some(mut e) = attempt.error else {
                error = None;
                break;
            };
            // A phase that left the decision open has not asked for a retry.
            e.retry.decide_reuse(false);
            let retry = e.retry();
            if retry
                && !self.app.suppress_proxy_warn_log(
                    session,
                    ctx,
                    &e,
                    ProxyWarnLogContext::UpstreamRetry,
                )
            {
                tracing::warn!(
                    error = e.etype().as_str(),
                    attempts,
                    "retrying the request on another connection"
                );
            }
            error = Some(e);
            if !retry {
                break;
            }
        }
        if let Some(e) = error.as_deref() {
            let answered = self.app.fail_to_proxy(session, e, ctx).await;
            if !self.app.suppress_error_log(session, ctx, e) {
                tracing::error!(
                    error = e.etype().as_str(),
                    source = e.esource().as_str(),
                    status = answered.error_code,
                    attempts,
                    "request failed"
                );
            }
        }
        self.app.logging(session, error.as_deref(), ctx).await;
        client_reusable
    }

    /// An error before the app was asked: answered by `fail_to_proxy`, logged.
    async fn handle_error(&self, session: &mut Session, ctx: &mut P::CTX, e: Box<Error>) -> bool {
        let answered = self.app.fail_to_proxy(session, &e, ctx).await;
        if !self.app.suppress_error_log(session, ctx, &e) {
            tracing::error!(
                error = e.etype().as_str(),
                source = e.esource().as_str(),
                status = answered.error_code,
                "request failed"
            );
        }
        self.app.logging(session, Some(&e), ctx).await;
        answered.can_reuse_downstream
    }

    /// One attempt: a connection to the app (pooled or new), the exchange, and the
    /// connection back to the pool when it is clean.
    async fn proxy_to_app(&self, session: &mut Session, ctx: &mut P::CTX) -> Attempt {
        let peer = match self.app.upstream_peer(session, ctx).await {
            Ok(peer) => peer,
            Err(e) => return Attempt::failed(false, e),
        };
        let key = peer.reuse_hash();
        let (stream, reused) = match self.connect(&peer, key).await {
            Ok(connected) => connected,
            Err(mut e) => {
                e.as_up();
                let e = self.app.fail_to_connect(session, &peer, ctx, e);
                return Attempt::failed(false, e.into_up());
            }
        };
        let (mut attempt, app) = self.exchange(session, stream, &peer, ctx).await;
        if attempt.app_reusable {
            if let Some(app) = app {
                if let Some(stream) = app.reusable().await {
                    self.pool.put(key, stream, peer.idle_timeout());
                }
            }
        }
        attempt.error = attempt
            .error
            .map(|e| self.app.error_while_proxy(&peer, session, e, ctx, reused));
        attempt
    }

    /// A connection to `peer`: the newest live pooled one, else a new one (TCP, and TLS
    /// with the peer's settings and timeouts). Also says whether it was reused.
    async fn connect(&self, peer: &HttpPeer, key: u64) -> Result<(Stream, bool)> {
        if let Some(stream) = self.pool.take(key) {
            return Ok((stream, true));
        }
        let stream = self.connector.new_stream(peer).await?;
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            return Error::e_explain(
                ErrorType::ConnectError,
                "the app chose HTTP/2, which the request loop does not speak",
            );
        }
        Ok((stream, false))
    }

    /// Sends the request to the app and its answer to the client: pingora-proxy's
    /// `proxy_1to1`, with its two halves folded into one select loop. Also returns the
    /// connection once the request was written to it (`None`: it was not used).
    async fn exchange(
        &self,
        session: &mut Session,
        stream: Stream,
        peer: &HttpPeer,
        ctx: &mut P::CTX,
    ) -> (Attempt, Option<App>) {
        let mut req = session.req_header().clone();
        let downstream_had_host = req.headers.contains_key(http::header::HOST);
        let downstream_http11 = session.req_header().version == Version::HTTP_11;
        req.set_version(Version::HTTP_11);
        if let Err(e) = sanitize::sanitize_h1_upstream_request(
            &mut req,
            peer.options.http_upstream_request_policy,
            downstream_http11,
        ) {
            return (Attempt::failed(true, e.into_down()), None);
        }
        if let Err(e) = self
            .app
            .upstream_request_filter(session, &mut req, ctx)
            .await
        {
            return (Attempt::failed(true, e), None);
        }
        if let Err(e) = sanitize::reconcile_authority(&mut req, downstream_had_host) {
            return (Attempt::failed(true, e.into_in()), None);
        }
        let has_body = !session.is_body_empty();
        if let Err(e) = sanitize::finalize_h1_upstream_request_framing(&mut req, has_body) {
            return (Attempt::failed(true, e), None);
        }
        let upgrade_sent = is_upgrade_req(&req);
        session.upstream_compression.request_filter(&req);
        let mut app = if has_body || upgrade_sent {
            let mut app = AppSession::new_with_options(stream, peer);
            app.read_timeout = peer.options.read_timeout;
            app.write_timeout = peer.options.write_timeout;
            if let Err(e) = app.write_request_header(Box::new(req)).await {
                return (Attempt::failed(false, e.into_up()), None);
            }
            App::Session(Box::new(app))
        } else {
            let mut app = Bodyless::new(stream, peer, &req);
            if let Err(e) = app.write_request_header(&req).await {
                return (Attempt::failed(false, e.into_up()), None);
            }
            App::Bodyless(app)
        };
        // Keeps the start of the body so that a retry can send it again.
        session.enable_retry_buffering();
        let attempt = self.relay(session, &mut app, upgrade_sent, ctx).await;
        (attempt, Some(app))
    }

    /// The body to the app and the response to the client, concurrently, until both are
    /// done: either side may come first, the client may leave at any moment (which ends
    /// the request), and after a `101` both directions are copied until either side closes.
    async fn relay(
        &self,
        session: &mut Session,
        app: &mut App,
        upgrade_sent: bool,
        ctx: &mut P::CTX,
    ) -> Attempt {
        // Client side: still reading the request body (or, after a 101, the tunnel).
        let mut reading_client = !session.is_body_done();
        // The client has its whole response.
        let mut response_done = false;
        // App side: the request (body) is complete; the response is read to its end.
        let mut sent_to_app = false;
        let mut read_from_app = false;
        let mut app_upgraded = false;
        let mut app_reusable = true;
        // A failed write to the app: the app may still answer (a 413 before reading an
        // upload), so reading goes on and this is the error if reading fails too.
        let mut send_error: Option<Box<Error>> = None;

        // A retry sends again what the client's body gave so far; an empty body is
        // finished at once.
        let replay = session.get_retry_buffer();
        if replay.is_some() || session.is_body_empty() {
            let end = !reading_client || replay.is_none();
            self.forward_body(app, replay, end, false, &mut sent_to_app, &mut send_error)
                .await;
            if send_error.is_some() {
                app_reusable = false;
            }
            if end {
                reading_client = false;
            }
        }

        while reading_client || !response_done {
            // After a failed write the app takes no more body: the client's body waits (as
            // it does in pingora, whose body pipe fills up) until the response is done.
            let take_body = !(reading_client && sent_to_app);
            if !take_body && read_from_app {
                reading_client = false;
                continue;
            }
            tokio::select! {
                body = session.read_body_or_idle(!reading_client), if take_body => {
                    let body = match body {
                        Ok(body) => body,
                        Err(e) => return Attempt::failed(false, e.into_down()),
                    };
                    if body.is_none() && session.was_upgraded() {
                        // The client closed its side of a tunnel: the exchange is over.
                        response_done = true;
                    }
                    let end = body.is_none() || session.is_body_done();
                    if !sent_to_app {
                        let upgraded = session.was_upgraded();
                        self.forward_body(app, body, end, upgraded, &mut sent_to_app, &mut send_error).await;
                        if send_error.is_some() {
                            app_reusable = false;
                        } else if sent_to_app && app.was_upgraded() {
                            read_from_app = true;
                        }
                    }
                    if end {
                        reading_client = false;
                    }
                }
                task = app.read_response_task(), if !read_from_app => {
                    let task = match task {
                        Ok(task) => task,
                        Err(e) => {
                            let e = send_error.take().unwrap_or(e);
                            return Attempt::failed(false, e.into_up());
                        }
                    };
                    read_from_app = task.is_end();
                    if !app_upgraded && app.was_upgraded() {
                        app_upgraded = true;
                        if send_error.is_none() {
                            // The tunnel's client-to-app direction starts now.
                            sent_to_app = false;
                        }
                    }
                    let client_upgraded = session.was_upgraded();
                    match self.respond(session, ctx, task, upgrade_sent).await {
                        Ok(done) => response_done |= done,
                        Err(e) => return Attempt::failed(false, e),
                    }
                    if !client_upgraded && session.was_upgraded() {
                        reading_client = true;
                    }
                    if session.is_body_done() {
                        reading_client = false;
                    }
                }
            }
        }

        if !sent_to_app {
            // The client side ended without an end of body for the app (a tunnel the app
            // closed first): finish the request as pingora does when its body pipe closes.
            self.forward_body(app, None, true, true, &mut sent_to_app, &mut send_error)
                .await;
            if send_error.is_some() {
                app_reusable = false;
            }
        }
        let client_reusable = match session.as_downstream_mut().finish_body().await {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(
                    error = e.etype().as_str(),
                    "could not finish the response to the client"
                );
                false
            }
        };
        Attempt {
            client_reusable,
            app_reusable: app_reusable && read_from_app,
            error: None,
        }
    }

    /// What the client's body gave, to the app (pingora's `send_body_to_pipe` and
    /// `send_body_to1`): empty chunks are skipped (an empty chunk would end a chunked
    /// body), `end` finishes the request.
    async fn forward_body(
        &self,
        app: &mut App,
        body: Option<Bytes>,
        end: bool,
        upgraded: bool,
        sent: &mut bool,
        send_error: &mut Option<Box<Error>>,
    ) {
        let result = async {
            if upgraded {
                // Tunnel bytes go to the app as they are (a no-op unless the app upgraded).
                app.maybe_upgrade_body_writer();
            }
            if let Some(data) = body.filter(|d| !d.is_empty()) {
                app.write_body(&data).await.map_err(|e| e.into_up())?;
            }
            if end {
                app.finish_body().await.map_err(|e| e.into_up())?;
            }
            Ok::<_, Box<Error>>(end)
        }
        .await;
        match result {
            Ok(done) => *sent = done,
            Err(e) => {
                tracing::debug!(
                    error = e.etype().as_str(),
                    "sending the request body to the app failed"
                );
                *sent = true;
                *send_error = Some(e);
            }
        }
    }

    /// One part of the app's response through the response phases to the client
    /// (pingora's `process_upstream_tasks` and `h1_response_filter`); returns whether the
    /// client's response is complete.
    async fn respond(
        &self,
        session: &mut Session,
        ctx: &mut P::CTX,
        mut task: HttpTask,
        upgrade_sent: bool,
    ) -> Result<bool> {
        if let HttpTask::Header(header, end) = &task {
            self.app
                .adjust_upstream_modules(session, header, *end, ctx)
                .await?;
        }
        session.upstream_modules_filter_task(&mut task).await?;
        session.upstream_compression.response_filter(&mut task);
        match &mut task {
            HttpTask::Header(header, _) => {
                self.app
                    .upstream_response_filter(session, header, ctx)
                    .await?;
            }
            HttpTask::Body(data, end) | HttpTask::UpgradedBody(data, end) => {
                if let Some(delay) = self
                    .app
                    .upstream_response_body_filter(session, data, *end, ctx)?
                {
                    tokio::time::sleep(delay).await;
                }
            }
            HttpTask::Trailer(Some(trailers)) => {
                self.app
                    .upstream_response_trailer_filter(session, trailers, ctx)?;
            }
            _ => {}
        }
        let task = match task {
            HttpTask::Header(mut header, end) => {
                let client_upgrade = session.is_upgrade_req();
                sanitize::reject_mismatched_upgrade(&header, client_upgrade, upgrade_sent)
                    .map_err(|e| e.into_up())?;
                frame_unframed_response(session, &mut header, end)?;
                self.app.response_filter(session, &mut header, ctx).await?;
                // Again: the phase may have turned the response into a 101.
                sanitize::reject_mismatched_upgrade(&header, client_upgrade, upgrade_sent)
                    .map_err(|e| e.into_in())?;
                HttpTask::Header(header, end)
            }
            HttpTask::Body(mut data, end) => {
                if let Some(delay) = self
                    .app
                    .response_body_filter(session, &mut data, end, ctx)?
                {
                    tokio::time::sleep(delay).await;
                }
                HttpTask::Body(data, end)
            }
            HttpTask::UpgradedBody(mut data, end) => {
                if let Some(delay) = self
                    .app
                    .response_body_filter(session, &mut data, end, ctx)?
                {
                    tokio::time::sleep(delay).await;
                }
                HttpTask::UpgradedBody(data, end)
            }
            other => other,
        };
        session.write_response_tasks(vec![task]).await
    }
}

/// The connection to the app during one exchange: pingora's client session for requests
/// with a body or an upgrade, [`Bodyless`] for the rest.
enum App {
    Session(Box<AppSession>),
    Bodyless(Bodyless),
}

impl App {
    async fn read_response_task(&mut self) -> Result<HttpTask> {
        match self {
            App::Session(app) => app.read_response_task().await,
            App::Bodyless(app) => app.read_response_task().await,
        }
    }

    fn was_upgraded(&self) -> bool {
        match self {
            App::Session(app) => app.was_upgraded(),
            App::Bodyless(_) => false,
        }
    }

    fn maybe_upgrade_body_writer(&mut self) {
        if let App::Session(app) = self {
            app.maybe_upgrade_body_writer();
        }
    }

    async fn write_body(&mut self, data: &[u8]) -> Result<()> {
        match self {
            App::Session(app) => app.write_body(data).await.map(drop),
            App::Bodyless(_) => Error::e_explain(
                ErrorType::InternalError,
                "a request without a body has no body to send",
            ),
        }
    }

    async fn finish_body(&mut self) -> Result<()> {
        match self {
            App::Session(app) => app.finish_body().await.map(drop),
            // The head said there is no body: nothing to finish.
            App::Bodyless(_) => Ok(()),
        }
    }

    /// The connection, when it can carry another request.
    async fn reusable(self) -> Option<Stream> {
        match self {
            App::Session(mut app) => {
                app.respect_keepalive();
                app.reuse().await
            }
            App::Bodyless(app) => app.reusable(),
        }
    }
}

/// A response with a body but neither length nor chunking (an HTTP/1.0 app, or one that
/// closes to end its body) goes to the client chunked, so the client connection survives
/// it, as pingora-proxy does.
fn frame_unframed_response(
    session: &Session,
    header: &mut pingora::http::ResponseHeader,
    end: bool,
) -> Result<()> {
    let no_body = session.req_header().method == Method::HEAD
        || matches!(
            header.status,
            StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED
        );
    if !no_body
        && !end
        && !header.status.is_informational()
        && header
            .headers
            .get(http::header::TRANSFER_ENCODING)
            .is_none()
        && header.headers.get(http::header::CONTENT_LENGTH).is_none()
    {
        header.set_version(Version::HTTP_11);
        header.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
    }
    Ok(())
}

#[async_trait]
impl<P> ServerApp for RequestLoop<P>
where
    P: ProxyHttp + Send + Sync + 'static,
    P::CTX: Send + Sync,
{
    async fn process_new(
        self: &std::sync::Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        self.serve_connection(stream, shutdown).await;
        None
    }

    async fn cleanup(&self) {
        self.close_idle();
    }
}
