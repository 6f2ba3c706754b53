//! The request path: the pingora [`ProxyHttp`] implementation, whose phases the HTTP/1
//! request loop ([`crate::edge::h1`]) calls in pingora-proxy's order. Each phase method is
//! short and delegates to the module that owns the concern; read top to bottom, this file
//! is the table of contents of a request:
//!
//! 1. `new_ctx`: take one config snapshot for the whole request; `early_request_filter`:
//!    tell the connection layer in front ([`Downstream`]) that the head arrived.
//! 2. `request_filter`: plan the token (trust, route, page load, identity) and start the
//!    call in a task, so it runs while the app works.
//! 3. `upstream_request_filter`: strip identity headers from untrusted peers; ask the app
//!    for an uncompressed, unconditional page when a token is coming.
//! 4. `adjust_upstream_modules` / `response_filter`: once the app's header shows a
//!    rewritable page, wait (within the deadline) for the token and set up the rewrite
//!    (token, loader, `embed.insert` snippets); otherwise drop the token task and leave
//!    the response untouched.
//! 5. `response_body_filter`: rewrite (and recompress) chunk by chunk.
//! 6. `logging`: one access-log line and the request metrics.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderValue};
use http::StatusCode;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, ProxyWarnLogContext, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, Result};
use sync_wrapper::SyncWrapper;
use tokio::task::JoinHandle;
use tokio_util::task::task_tracker::TaskTrackerToken;

use crate::config::Config;
use crate::logging::{AccessLine, LogGate, PingoraError};
use crate::metrics::Metrics;
use crate::page::compress::{Coding, Compressor};
use crate::page::rewrite::insert::Insertion;
use crate::page::rewrite::{Charset, Edits, EmbedTags, Rewriter};
use crate::request::downstream::{peer_ip, Downstream};
use crate::request::embed_client::{self, TokenEndpoint};
use crate::request::plan::{plan, NoToken, RequestFacts};
use crate::request::routes::{host_without_port, Route};
use crate::request::snapshot::{Snapshot, Snapshots};
use crate::shutdown::Shutdown;
use crate::synthetic::SyntheticResponse;
use crate::token::mint::{Planned, Refused};
use crate::token::released::ReleasedClient;
use crate::token::secret::Token;

/// The sidecar's proxy logic; each worker has a clone, and the clones share all state.
#[derive(Clone)]
pub struct Sidecar {
    live: Arc<dyn Snapshots>,
    downstream: Arc<dyn Downstream>,
    released: ReleasedClient,
    metrics: Arc<Metrics>,
    embed: Arc<TokenEndpoint>,
    shutdown: Shutdown,
    upstream_warnings: Arc<LogGate>,
}

impl Sidecar {
    /// Wires the live config, the connection layer in front, the token client, the
    /// metrics and the shutdown handle together.
    pub fn new(
        live: Arc<dyn Snapshots>,
        downstream: Arc<dyn Downstream>,
        released: ReleasedClient,
        metrics: Arc<Metrics>,
        shutdown: Shutdown,
    ) -> Self {
        Self {
            live,
            downstream,
            released,
            metrics,
            embed: Arc::default(),
            shutdown,
            upstream_warnings: Arc::new(LogGate::new(UPSTREAM_WARN_EVERY)),
        }
    }

    /// A clone for one more worker: all state shared but the token client's connection
    /// pool, which each worker keeps on its own thread.
    pub fn for_worker(&self) -> Result<Self, reqwest::Error> {
        Ok(Self {
            released: self.released.for_worker()?,
            ..self.clone()
        })
    }
}

/// At most one upstream-fault warning per this interval; the rest are counted in the next.
const UPSTREAM_WARN_EVERY: Duration = Duration::from_secs(10);

/// Where the token of a page load stands.
enum TokenState {
    /// No token for this request (and why, for the access log).
    NotNeeded(&'static str),
    /// Planned but not yet started.
    Planned(Planned),
    /// The task (assertion check, cool-down, call) is in flight; it ends with the token or
    /// the access-log label of why there is none.
    Pending { task: TokenTask, deadline: Instant },
    /// Settled: used, failed, or not usable for this response.
    Settled(&'static str),
}

/// The token task of one request. Dropping it aborts the task: a token call never
/// outlives the request that wanted it (SPEC §3), even when pingora drops the request
/// without reaching `logging` (shutdown, a cancelled connection task).
struct TokenTask(Option<JoinHandle<Result<Token, Refused>>>);

/// What a page load's token came to, which decides what the page gets.
enum PageToken {
    /// Not a signed-in page load: no token was planned (untrusted peer, no valid
    /// identity…), or the gateway's assertion was not believed.
    Anonymous,
    /// Signed in, but without a token: the call failed, timed out or was skipped.
    Missing,
    /// Signed in, with the token.
    Token(Token),
}

impl PageToken {
    fn token(&self) -> Option<&Token> {
        match self {
            PageToken::Token(token) => Some(token),
            PageToken::Anonymous | PageToken::Missing => None,
        }
    }
}

impl TokenTask {
    fn is_finished(&self) -> bool {
        self.0.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Lets the task run on: only for a task already at its own deadline, so it can
    /// record how the call ended.
    fn detach(mut self) {
        self.0 = None;
    }
}

impl Drop for TokenTask {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

/// Per-request state.
pub struct RequestCtx {
    snapshot: Arc<Snapshot>,
    started: Instant,
    route: Option<usize>,
    trusted: bool,
    /// A page load on a route: its HTML must not be cached, token or not.
    page_load: bool,
    /// The app was asked for the whole, uncompressed page (a token or the loader goes in).
    whole_page: bool,
    token: TokenState,
    rewrite: Option<SyncWrapper<PageRewrite>>,
    upstream_sent: Option<Instant>,
    _in_flight: InFlight,
}

impl RequestCtx {
    fn route_name(&self) -> &str {
        self.route
            .and_then(|i| self.snapshot.config.routes.0.get(i))
            .map_or("", |r| r.name.as_str())
    }
}

/// The body transformation of a page that carries a token.
struct PageRewrite {
    rewriter: Rewriter,
    compressor: Option<Compressor>,
}

impl PageRewrite {
    /// Rewrites (and compresses) one chunk; `end` also flushes everything held back.
    fn process(&mut self, chunk: Option<Bytes>, end: bool) -> Bytes {
        let mut out = chunk.map_or_else(Bytes::new, |c| self.rewriter.write_bytes(c));
        if end {
            out = concat(out, self.rewriter.end());
        }
        let Some(compressor) = self.compressor.as_mut() else {
            return out;
        };
        // A flush per upstream read: the client decodes what the app has sent, even when
        // the app pauses mid-page (see `Compressor`).
        if end {
            compressor.finish(&out)
        } else {
            compressor.write(&out)
        }
    }
}

/// A request in flight for as long as it lives: the shutdown drain waits for its token,
/// and `released_sidecar_in_flight_requests` counts it.
struct InFlight {
    gauge: prometheus::IntGauge,
    _drain: TaskTrackerToken,
}

impl InFlight {
    fn new(gauge: &prometheus::IntGauge, shutdown: &Shutdown) -> Self {
        gauge.inc();
        Self {
            gauge: gauge.clone(),
            _drain: shutdown.track(),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

#[async_trait]
impl ProxyHttp for Sidecar {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            snapshot: self.live.snapshot(),
            started: Instant::now(),
            route: None,
            trusted: false,
            page_load: false,
            whole_page: false,
            token: TokenState::NotNeeded("no_route"),
            rewrite: None,
            upstream_sent: None,
            _in_flight: InFlight::new(&self.metrics.in_flight, &self.shutdown),
        }
    }

    async fn early_request_filter(
        &self,
        session: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> Result<()> {
        self.downstream.request_started(session);
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        if self.shutdown.is_draining() {
            // Shutting down or handing over to a new process: `Connection: close` tells a
            // keep-alive client to open its next request on a fresh connection (to the
            // successor) instead of racing this process's close.
            session.set_keepalive(None);
        }
        let path = session.req_header().uri.path();
        if let Some(own) = embed_client::own_path(&ctx.snapshot.config, path) {
            // The client-embed endpoint and loader: answered here, never by the app.
            self.embed
                .serve(
                    session,
                    own,
                    &ctx.snapshot,
                    &self.released,
                    &self.metrics,
                    self.downstream.as_ref(),
                )
                .await?;
            ctx.token = TokenState::NotNeeded("embed_endpoint");
            return Ok(true);
        }
        self.plan_token(session, ctx);
        let token = self.start_token_call(ctx);
        let inject = ctx.page_load
            && ctx
                .snapshot
                .config
                .embed
                .client
                .as_ref()
                .is_some_and(|c| c.inject);
        if token || inject {
            ctx.whole_page = true;
            // A safety net for apps that compress although asked not to: pingora undoes
            // gzip/br for this response (disarmed again below if it is not a page).
            session.upstream_compression.adjust_decompression(true);
        }
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        Ok(Box::new(ctx.snapshot.upstream.clone()))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        self.strip_identity_headers(upstream_request, ctx);
        if ctx.whole_page {
            // `identity` rather than no header: without Accept-Encoding any coding is
            // acceptable (RFC 9110 §12.5.3). The page must come back whole and fresh so
            // it can carry this page load's token (or the loader).
            upstream_request.insert_header(header::ACCEPT_ENCODING, "identity")?;
            upstream_request.remove_header(&header::IF_NONE_MATCH);
            upstream_request.remove_header(&header::IF_MODIFIED_SINCE);
        }
        collapse_content_length(upstream_request)?;
        ctx.upstream_sent = Some(Instant::now());
        Ok(())
    }

    async fn adjust_upstream_modules(
        &self,
        session: &mut Session,
        upstream_response: &ResponseHeader,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // Decompression was armed for a page that can carry a token; anything else must
        // reach the client byte for byte, compressed or not.
        if ctx.whole_page
            && !upstream_response.status.is_informational()
            && session.upstream_compression.is_header_phase()
            && (end_of_stream || rewritable(upstream_response).is_none())
        {
            session.upstream_compression.adjust_decompression(false);
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if upstream_response.status.is_informational() {
            return Ok(());
        }
        self.metrics
            .upstream_responses
            .with_label_values(&[upstream_response.status.as_str()])
            .inc();
        if let Some(sent) = ctx.upstream_sent {
            self.metrics
                .upstream_duration
                .with_label_values(&[ctx.route_name()])
                .observe(sent.elapsed().as_secs_f64());
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if response.status.is_informational() {
            return Ok(());
        }
        if session.req_header().version < http::Version::HTTP_11 {
            close_delimit_for_http10(session, response);
        }
        if ctx.whole_page {
            self.set_up_rewrite(session, response, ctx).await?;
        }
        if ctx.page_load && ctx.rewrite.is_none() && is_html_page(response) {
            // A token route's page that goes out without a token (timeout, failure,
            // cool-down, identity problem) must not be kept by a browser or CDN and served
            // again once Released answers.
            forbid_caching(response)?;
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        if let Some(rewrite) = ctx.rewrite.as_mut() {
            let chunk = body.take();
            *body = Some(rewrite.get_mut().process(chunk, end_of_stream));
        }
        Ok(None)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        _ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            // nginx's convention: the app was reached too slowly or not at all in time.
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout
                if *e.esource() == ErrorSource::Upstream =>
            {
                504
            }
            _ => match e.esource() {
                ErrorSource::Upstream => 502,
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                    _ => 400,
                },
                ErrorSource::Internal | ErrorSource::Unset => 500,
            },
        };
        self.log_failure(e, code);
        if code > 0 && session.response_written().is_none() {
            if let Err(write_error) = error_page(code).write_to_proxy(session).await {
                tracing::debug!(error = %PingoraError(&write_error), "could not send the error response");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, _error: &Error) -> bool {
        // `fail_to_proxy` logs every final failure at the level its cause deserves.
        true
    }

    fn suppress_proxy_warn_log(
        &self,
        _session: &Session,
        _ctx: &RequestCtx,
        error: &Error,
        _context: ProxyWarnLogContext,
    ) -> bool {
        if let Some(suppressed) = self.upstream_warnings.admit() {
            tracing::warn!(error = %PingoraError(error), suppressed, "the app failed on a reused connection; retrying on another");
        }
        true
    }

    async fn logging(&self, session: &mut Session, error: Option<&Error>, ctx: &mut RequestCtx) {
        if matches!(ctx.token, TokenState::Pending { .. }) {
            self.abandon_token(ctx, abandon_reason(error));
        }
        let mut tags = 0;
        if let Some(rewrite) = ctx.rewrite.as_mut() {
            let rewriter = &rewrite.get_mut().rewriter;
            tags = rewriter.tags_rewritten();
            self.metrics.tags_rewritten.inc_by(tags as u64);
            if rewriter.injected() {
                self.metrics
                    .loader_injections
                    .with_label_values(&["injected"])
                    .inc();
            }
            if rewriter.bailed_out() {
                self.metrics.rewrite_bailouts.inc();
            }
            let insertions = rewriter.insertions();
            for (result, n) in [
                ("inserted", insertions.inserted),
                ("no_match", insertions.no_match),
            ] {
                if n > 0 {
                    self.metrics
                        .embed_insertions
                        .with_label_values(&[result])
                        .inc_by(n as u64);
                }
            }
        }
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let route = ctx.route_name();
        self.metrics
            .requests
            .with_label_values(&[route, &status.to_string()])
            .inc();
        let token = match &ctx.token {
            TokenState::NotNeeded(why) | TokenState::Settled(why) => *why,
            TokenState::Planned(_) | TokenState::Pending { .. } => "unused",
        };
        let req = session.req_header();
        AccessLine {
            method: req.method.as_str(),
            path: req.uri.path(),
            status,
            started: ctx.started,
            route,
            token,
            tags,
            error: error.map(|e| e.etype().as_str()),
        }
        .write();
    }
}

impl Sidecar {
    /// One line per failed request, at the level its cause deserves: a client that left is
    /// routine (debug), a failing app is the app team's matter (warn, at most one line per
    /// interval), anything else is ours (error).
    fn log_failure(&self, e: &Error, code: u16) {
        match e.esource() {
            ErrorSource::Downstream => {
                tracing::debug!(error = %PingoraError(e), status = code, "the client went away or sent a bad request");
            }
            ErrorSource::Upstream => {
                if let Some(suppressed) = self.upstream_warnings.admit() {
                    tracing::warn!(error = %PingoraError(e), status = code, suppressed, "the app failed");
                }
            }
            ErrorSource::Internal | ErrorSource::Unset => {
                tracing::error!(error = %PingoraError(e), status = code, "request failed inside the sidecar");
            }
        }
    }

    /// The trust boundary's verdict applied to the request the app will see.
    fn strip_identity_headers(&self, upstream_request: &mut RequestHeader, ctx: &RequestCtx) {
        let identity = &ctx.snapshot.config.identity_headers;
        for (name, why) in identity.to_strip(&upstream_request.headers, ctx.trusted) {
            upstream_request.remove_header(&name);
            self.metrics
                .identity_headers_stripped
                .with_label_values(&[why.label()])
                .inc();
            tracing::debug!(header = %name, reason = why.label(), "identity header removed");
        }
    }

    /// Once the app's header is in: wait for the token if the page can carry it, and set
    /// up the rewrite; otherwise stop the token call.
    async fn set_up_rewrite(
        &self,
        session: &Session,
        response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let Some(charset) = rewritable(response) else {
            self.abandon_token(ctx, "not_rewritable");
            return Ok(());
        };
        let token = self.await_token(ctx).await;
        let inject = self.loader_tag(ctx, response);
        let snapshot = Arc::clone(&ctx.snapshot);
        let embed = &snapshot.config.embed;
        let route = ctx.route.and_then(|i| snapshot.config.routes.0.get(i));
        let insert = insertions(route, &embed.tags, &token, response);
        if token.token().is_none() && inject.is_none() && insert.is_empty() {
            return Ok(());
        }
        let accept = session.req_header().headers.get(header::ACCEPT_ENCODING);
        let coding = Coding::negotiate(accept.map(|v| v.as_bytes()));
        let http10 = session.req_header().version < http::Version::HTTP_11;
        prepare_rewritten_headers(response, coding, !http10)?;
        let edits = Edits {
            token: token.token(),
            inject,
            insert,
        };
        ctx.rewrite = Some(SyncWrapper::new(PageRewrite {
            rewriter: Rewriter::with_edits(&embed.tags, edits, charset, embed.memory_limit),
            compressor: coding.map(Compressor::new),
        }));
        Ok(())
    }

    /// The loader `<script>` for this page when `embed.client.inject` is on and the page's
    /// CSP lets it run.
    fn loader_tag(&self, ctx: &RequestCtx, response: &ResponseHeader) -> Option<String> {
        let client = ctx.snapshot.config.embed.client.as_ref()?;
        if !client.inject || !ctx.page_load {
            return None;
        }
        let tag = embed_client::loader_tag(client, &response.headers);
        if tag.is_none() {
            self.metrics
                .loader_injections
                .with_label_values(&["csp_blocked"])
                .inc();
        }
        tag
    }

    /// Runs the planner on the request head and records its verdict.
    fn plan_token(&self, session: &Session, ctx: &mut RequestCtx) {
        let req = session.req_header();
        let host = req
            .uri
            .host()
            .or_else(|| req.headers.get(header::HOST).and_then(|h| h.to_str().ok()))
            .map(host_without_port);
        let config: &Config = &ctx.snapshot.config;
        let plan = plan(
            config,
            &RequestFacts {
                peer: peer_ip(session),
                method: &req.method,
                host,
                path: req.uri.path(),
                headers: &req.headers,
                client_cert: self.downstream.client_cert(session),
            },
        );
        ctx.route = plan.route;
        ctx.trusted = plan.trusted;
        self.metrics
            .requests_by_trust
            .with_label_values(&[plan.trust.label()])
            .inc();
        ctx.page_load = plan.page_load;
        if plan.page_load {
            let route = plan.route(config).map_or("", |r| r.name.as_str());
            self.metrics.page_loads.with_label_values(&[route]).inc();
        }
        ctx.token = match plan.decision {
            Ok(planned) => TokenState::Planned(planned),
            Err(NoToken::NoRoute) => TokenState::NotNeeded("no_route"),
            Err(NoToken::NotPageLoad(_)) => TokenState::NotNeeded("not_page_load"),
            Err(reason) => {
                let label = reason.label();
                tracing::debug!(reason = %reason, route = ctx.route_name(), "page load without token");
                self.metrics.token_skips.with_label_values(&[label]).inc();
                TokenState::NotNeeded(label)
            }
        };
    }

    /// Starts the planned token work in its own task, so it runs while the app answers.
    /// Returns whether it started.
    fn start_token_call(&self, ctx: &mut RequestCtx) -> bool {
        if !matches!(ctx.token, TokenState::Planned(_)) {
            return false;
        }
        let Some((index, route)) = ctx
            .route
            .and_then(|i| Some((i, ctx.snapshot.config.routes.0.get(i)?)))
        else {
            return false;
        };
        let TokenState::Planned(planned) =
            std::mem::replace(&mut ctx.token, TokenState::Settled("not_planned"))
        else {
            return false;
        };
        let deadline = ctx.started + route.released.timeout;
        let minter = ctx.snapshot.minter(index, &self.released, &self.metrics);
        let task = tokio::spawn(async move { minter.mint(planned, deadline, |_| Ok(())).await });
        ctx.token = TokenState::Pending {
            task: TokenTask(Some(task)),
            deadline,
        };
        true
    }

    /// Waits for the token until the deadline.
    async fn await_token(&self, ctx: &mut RequestCtx) -> PageToken {
        // Without a call (a loader-only page) the reason stays for the access log.
        if !matches!(ctx.token, TokenState::Pending { .. }) {
            return PageToken::Anonymous;
        }
        let TokenState::Pending { mut task, deadline } =
            std::mem::replace(&mut ctx.token, TokenState::Settled("task_failed"))
        else {
            return PageToken::Anonymous;
        };
        let outcome = match task.0.as_mut() {
            Some(handle) => tokio::time::timeout_at(deadline.into(), handle).await,
            None => return PageToken::Missing,
        };
        let (state, token) = match outcome {
            Ok(Ok(Ok(token))) => ("used", PageToken::Token(token)),
            Ok(Ok(Err(refused @ Refused::Identity(_)))) => (refused.label(), PageToken::Anonymous),
            Ok(Ok(Err(refused))) => (refused.label(), PageToken::Missing),
            Ok(Err(join_error)) => {
                tracing::error!(error = %join_error, "token task failed");
                ("task_failed", PageToken::Missing)
            }
            // The task ends at its own (identical) deadline and records the timeout
            // itself, so it is left to finish.
            Err(_elapsed) => {
                task.detach();
                ("timeout", PageToken::Missing)
            }
        };
        ctx.token = TokenState::Settled(state);
        token
    }

    /// The token can no longer be used (`why`: the page is not rewritable, the client
    /// left, the app failed): stop the call and count it if it was still running.
    fn abandon_token(&self, ctx: &mut RequestCtx, why: &'static str) {
        if let TokenState::Pending { task, .. } =
            std::mem::replace(&mut ctx.token, TokenState::Settled(why))
        {
            if !task.is_finished() {
                self.metrics
                    .token_requests
                    .with_label_values(&["abandoned"])
                    .inc();
                self.metrics
                    .token_calls_aborted
                    .with_label_values(&[why])
                    .inc();
            }
            drop(task);
        }
    }
}

/// The route's `embed.insert` snippets made ready for this page: only a signed-in page
/// load gets them (SPEC §3b), with its token (if the call gave one) and the page's CSP
/// nonce.
fn insertions<'a>(
    route: Option<&'a Route>,
    tags: &EmbedTags,
    token: &PageToken,
    response: &ResponseHeader,
) -> Vec<Insertion<'a>> {
    let Some(route) = route.filter(|r| !r.insert.is_empty()) else {
        return Vec::new();
    };
    if matches!(token, PageToken::Anonymous) {
        return Vec::new();
    }
    let nonce = embed_client::script_nonce(&response.headers);
    route
        .insert
        .iter()
        .map(|rule| Insertion::prepare(rule, tags, token.token(), nonce.as_deref()))
        .collect()
}

/// Why a token still in flight when the request ends will never be used.
fn abandon_reason(error: Option<&Error>) -> &'static str {
    match error.map(|e| e.esource()) {
        Some(ErrorSource::Downstream) => "client_gone",
        Some(ErrorSource::Upstream) => "upstream_error",
        Some(ErrorSource::Internal | ErrorSource::Unset) => "error",
        None => "unused",
    }
}

/// A `200` `text/html` response.
fn is_html_page(response: &ResponseHeader) -> bool {
    response.status == StatusCode::OK
        && response
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("text/html"))
}

/// The charset to rewrite in, if this response can carry a token: a `200` `text/html`
/// body in an encoding we can read (identity, or gzip/br that pingora undoes) and an
/// ASCII-compatible charset.
fn rewritable(response: &ResponseHeader) -> Option<Charset> {
    if !is_html_page(response) || response.headers.contains_key(header::CONTENT_RANGE) {
        return None;
    }
    let content_type = response.headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let encodings = response.headers.get_all(header::CONTENT_ENCODING);
    let mut count = 0;
    for value in encodings.iter() {
        count += 1;
        let coding = value.to_str().ok()?.trim();
        let decodable = coding.eq_ignore_ascii_case("identity")
            || coding.eq_ignore_ascii_case("gzip")
            || coding.eq_ignore_ascii_case("br");
        if !decodable || count > 1 {
            return None;
        }
    }
    match Charset::from_content_type(content_type) {
        Charset::Unsupported => None,
        charset => Some(charset),
    }
}

/// Headers that let a browser, CDN or reverse-proxy cache keep or revalidate a page.
const CACHING_HEADERS: &[&str] = &[
    "etag",
    "last-modified",
    "expires",
    "cdn-cache-control",
    "surrogate-control",
    // nginx obeys it over Cache-Control.
    "x-accel-expires",
];

/// Headers that describe the exact bytes of the body, wrong once it is rewritten.
const BODY_HEADERS: &[&str] = &[
    "content-length",
    "accept-ranges",
    "content-digest",
    "repr-digest",
    "content-md5",
    "content-encoding",
];

/// SPEC §2.6: a page of a token route is for one user, now, and nobody else.
fn forbid_caching(response: &mut ResponseHeader) -> Result<()> {
    for name in CACHING_HEADERS {
        response.remove_header(*name);
    }
    response.insert_header(header::CACHE_CONTROL, "private, no-store")?;
    Ok(())
}

/// RFC 9112 §6.1: a server must not send `Transfer-Encoding` to an HTTP/1.0 client.
/// pingora frames a length-less upstream body as chunked for every client; a 1.0 client
/// gets it close-delimited instead (SPEC §2.6), so the connection cannot be kept.
fn close_delimit_for_http10(session: &mut Session, response: &mut ResponseHeader) {
    if response.remove_header(&header::TRANSFER_ENCODING).is_some()
        || response.headers.get(header::CONTENT_LENGTH).is_none()
    {
        session.set_keepalive(None);
    }
}

/// SPEC §2.6: the page now carries a per-user secret, a different length and maybe a new
/// encoding. `chunked` is false for HTTP/1.0 clients, whose body ends with the connection.
fn prepare_rewritten_headers(
    response: &mut ResponseHeader,
    coding: Option<Coding>,
    chunked: bool,
) -> Result<()> {
    forbid_caching(response)?;
    for name in BODY_HEADERS {
        response.remove_header(*name);
    }
    if let Some(coding) = coding {
        response.insert_header(header::CONTENT_ENCODING, coding.token())?;
    }
    let varies = response.headers.get_all(header::VARY).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|t| t.trim() == "*" || t.trim().eq_ignore_ascii_case("accept-encoding"))
        })
    });
    if !varies {
        response.append_header(header::VARY, "Accept-Encoding")?;
    }
    if !chunked {
        response.remove_header(&header::TRANSFER_ENCODING);
    } else if response.headers.get(header::TRANSFER_ENCODING).is_none() {
        // Chunked framing needs HTTP/1.1 (an HTTP/1.0 app's response is upgraded, as
        // pingora does for its own chunking).
        response.set_version(http::Version::HTTP_11);
        response.insert_header(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        )?;
    }
    Ok(())
}

/// pingora accepts repeated identical `Content-Length` values (RFC 9110 §8.6) but forwards
/// every line; an app or proxy behind us may read two lines differently, so it gets one.
fn collapse_content_length(request: &mut RequestHeader) -> Result<()> {
    let mut tokens = request
        .headers
        .get_all(header::CONTENT_LENGTH)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or(",").split(','))
        .map(str::trim);
    let Some(first) = tokens.next() else {
        return Ok(());
    };
    let mut repeated = false;
    for token in tokens {
        if token != first {
            // Differing values were refused by pingora's parser; leave anything else alone.
            return Ok(());
        }
        repeated = true;
    }
    if repeated {
        let length = first.to_string();
        request.insert_header(header::CONTENT_LENGTH, length)?;
    }
    Ok(())
}

fn concat(a: Bytes, b: Bytes) -> Bytes {
    if a.is_empty() {
        return b;
    }
    let mut out = BytesMut::with_capacity(a.len() + b.len());
    out.extend_from_slice(&a);
    out.extend_from_slice(&b);
    out.freeze()
}

/// A short plain-text error page (no HTML, no internals); the connection ends after it.
fn error_page(code: u16) -> SyntheticResponse {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY);
    let page = match status {
        StatusCode::BAD_GATEWAY => SyntheticResponse::text(
            status,
            "502 Bad Gateway: the application is not reachable\n",
        ),
        StatusCode::GATEWAY_TIMEOUT => SyntheticResponse::text(
            status,
            "504 Gateway Timeout: the application did not answer in time\n",
        ),
        _ => SyntheticResponse::status_text(status),
    };
    page.close()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16, headers: &[(&'static str, &'static str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(status, None).unwrap();
        for (k, v) in headers {
            r.append_header(*k, *v).unwrap();
        }
        r
    }

    #[test]
    fn only_whole_readable_html_pages_are_rewritable() {
        const HTML: (&str, &str) = ("content-type", "text/html; charset=utf-8");
        type Headers = &'static [(&'static str, &'static str)];
        let cases: &[(u16, Headers, bool)] = &[
            (200, &[HTML], true),
            (200, &[("content-type", "TEXT/HTML")], true),
            (200, &[HTML, ("content-encoding", "gzip")], true),
            (200, &[HTML, ("content-encoding", "br")], true),
            (200, &[HTML, ("content-encoding", "zstd")], false),
            (200, &[HTML, ("content-encoding", "deflate")], false),
            (
                200,
                &[
                    HTML,
                    ("content-encoding", "gzip"),
                    ("content-encoding", "br"),
                ],
                false,
            ),
            (200, &[("content-type", "text/html; charset=utf-16")], false),
            (200, &[("content-type", "application/json")], false),
            (200, &[("content-type", "application/xhtml+xml")], false),
            (200, &[], false),
            (404, &[HTML], false),
            (500, &[HTML], false),
            (206, &[HTML, ("content-range", "bytes 0-1/10")], false),
            (304, &[HTML], false),
            (204, &[HTML], false),
        ];
        for (status, headers, want) in cases {
            assert_eq!(
                rewritable(&response(*status, headers)).is_some(),
                *want,
                "{status} {headers:?}"
            );
        }
    }

    #[test]
    fn rewritten_headers_drop_validators_and_forbid_caching() {
        let mut r = response(
            200,
            &[
                ("content-type", "text/html"),
                ("content-length", "10"),
                ("etag", "\"abc\""),
                ("last-modified", "Wed, 21 Oct 2015 07:28:00 GMT"),
                ("cache-control", "public, max-age=3600"),
                ("accept-ranges", "bytes"),
                ("expires", "Wed, 21 Oct 2035 07:28:00 GMT"),
                ("cdn-cache-control", "max-age=600"),
                ("surrogate-control", "max-age=600"),
                ("x-accel-expires", "600"),
                ("content-digest", "sha-256=:AAAA:"),
                ("repr-digest", "sha-256=:AAAA:"),
                ("content-md5", "Q2hlY2sgSW50ZWdyaXR5IQ=="),
                ("content-encoding", "br"),
            ],
        );
        prepare_rewritten_headers(&mut r, Some(Coding::Gzip), true).unwrap();
        for gone in CACHING_HEADERS
            .iter()
            .chain(BODY_HEADERS)
            .filter(|h| **h != "content-encoding")
        {
            assert!(r.headers.get(*gone).is_none(), "{gone}");
        }
        assert_eq!(r.headers.get("content-encoding").unwrap(), "gzip");
        assert_eq!(r.headers.get("vary").unwrap(), "Accept-Encoding");
        assert_eq!(r.headers.get("cache-control").unwrap(), "private, no-store");
        assert_eq!(r.headers.get("transfer-encoding").unwrap(), "chunked");
    }
}
