//! A lean passthrough proxy for the load benchmark (`benches/load/run.sh`, target `lean`),
//! step 1 of issue 24: the same job as `bare_proxy` (one fixed upstream, no filters,
//! metrics or logging), same pingora build, listener, runtime, server knobs and worker
//! layout, but the request loop is written on pingora-core's HTTP/1 server session instead
//! of pingora-proxy's `ProxyHttp` machinery. What `bare` costs above this is that
//! machinery; what this costs above nginx is pingora's HTTP/1 session and runtime.
//!
//! Per request it differs from pingora-proxy in what the issue names:
//! - upstream connections wait in a per-worker list (LIFO), and liveness is checked when
//!   one is taken (a non-blocking read: EOF, data or an error drops it) instead of a
//!   watcher task spawned per release (`release_stream` → `idle_poll`);
//! - the request head is mutated in place and written once; the response head is parsed
//!   into a header without the second, case-preserving map (standard names still go out
//!   title-cased, other names lowercased), its values sharing one copy of the raw head;
//! - the response body moves through one 64 KiB buffer taken from a per-thread spare list
//!   for the duration of a request (so a keep-alive connection reuses the same buffer and
//!   idle connections hold none), read from the upstream and written to the client
//!   without a further copy; chunked bodies are decoded in place;
//! - no session objects beyond pingora's two HTTP/1 parsers, no task channels, no select
//!   loop, no boxed hook futures: one `async fn` per connection.
//!
//! It is a correct proxy for the benchmark's traffic and a bit more (`tests/lean_proxy.rs`):
//! keep-alive on both sides, Content-Length, chunked and close-delimited bodies both
//! ways, request bodies, `Expect: 100-continue`, HTTP/1.0 clients, hop-by-hop headers, and
//! 502 for an upstream that cannot be reached or answers garbage. Not done (the sidecar's
//! request loop, `src/edge/h1`, has them): upgrades/WebSockets (`Upgrade` is stripped, like nginx
//! without `proxy_set_header Upgrade`), trailers (dropped), TLS upstreams, retrying a
//! request whose body was already sent, pipelining (a pipelined connection is closed).
//!
//! ```text
//! cargo build --release --example lean_proxy
//! target/release/examples/lean_proxy --listen 127.0.0.1:8082 --upstream 127.0.0.1:8080 \
//!     --workers 2 --work-stealing false --upstream-keepalive 1024 --per-worker-services true
//! ```

use std::cell::RefCell;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use clap::Parser;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};
use pingora::apps::ServerApp;
use pingora::connectors::TransportConnector;
use pingora::http::ResponseHeader;
use pingora::listeners::TcpSocketOptions;
use pingora::prelude::timeout;
use pingora::protocols::http::error_resp::gen_error_response;
use pingora::protocols::http::v1::server::HttpSession;
use pingora::protocols::Stream;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{Server, ShutdownWatch};
use pingora::services::listening::Service;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, OkOrErr, OrErr, Result};
use released_sidecar::ops::server::worker_address;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};

/// Command line of the lean proxy: the same knobs as `bare_proxy`.
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
    /// Idle upstream connections kept per worker (the sidecar's `upstream_keepalive`).
    #[arg(long, default_value_t = 1024)]
    upstream_keepalive: usize,
    /// One single-threaded service per worker, each with its own SO_REUSEPORT socket and
    /// upstream pool (the sidecar's layout), instead of one service with `workers` threads.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    per_worker_services: bool,
}

/// Size of the buffer a response body moves through (pingora's body buffer is the same).
const BODY_BUFFER: usize = 64 * 1024;
/// Spare body buffers kept per thread; more concurrent requests allocate and free theirs.
const SPARE_BUFFERS: usize = 64;
/// Most response header fields parsed (pingora allows 256).
const MAX_HEADERS: usize = 160;
/// How long a downstream connection may wait for its next request, in seconds (pingora's
/// default for an HTTP service).
const CLIENT_KEEPALIVE_SECS: u64 = 60;
/// Bound on each upstream read and write (pingora has none by default; nginx 60 s).
const UPSTREAM_IO_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on connecting to the upstream.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// An idle upstream connection older than this is closed instead of reused (nginx's
/// `keepalive_timeout` for upstreams).
const POOL_IDLE: Duration = Duration::from_secs(60);
/// Bounds on chunked framing we skip over: one size line's extensions, all trailers.
const MAX_CHUNK_EXTENSION: usize = 4096;
const MAX_TRAILERS: usize = 16 * 1024;

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Proxies every request to one upstream over a per-worker pool of HTTP/1.1 connections.
pub struct Lean {
    peer: HttpPeer,
    /// `Host` for requests that came without one (HTTP/1.0), as nginx sends `$proxy_host`.
    authority: String,
    connector: TransportConnector,
    pool: Pool,
}

impl Lean {
    /// A proxy to `upstream` keeping at most `keepalive` idle connections.
    pub fn new(upstream: SocketAddr, keepalive: usize) -> Lean {
        let mut peer = HttpPeer::new(upstream, false, String::new());
        peer.options.connection_timeout = Some(CONNECT_TIMEOUT);
        Lean {
            peer,
            authority: upstream.to_string(),
            connector: TransportConnector::new(None),
            pool: Pool {
                idle: Mutex::new(Vec::new()),
                capacity: keepalive,
            },
        }
    }

    /// Proxies the request `ds` has read. On `Err`, `ds.response_written()` tells whether
    /// the client can still get a 502 or the connection must be closed.
    async fn serve(&self, ds: &mut HttpSession, scratch: &mut Vec<u8>) -> Result<()> {
        let client_http10 = ds.req_header().version == Version::HTTP_10;
        let head_request = ds.req_header().method == Method::HEAD;
        let expect_continue = self.upstream_request_head(ds, scratch);
        let has_body = !ds.is_body_empty();
        let chunked_body = ds
            .req_header()
            .headers
            .contains_key(header::TRANSFER_ENCODING);
        let mut buf = BodyBuffer::take();

        // A reused connection may have died between the liveness check and the write: a
        // request without a body is sent again once on a fresh one, as pingora does.
        let mut fresh_only = false;
        let (mut upstream, response) = loop {
            let (mut upstream, reused) = self.upstream(fresh_only).await?;
            let exchange = async {
                write_upstream(&mut upstream, scratch).await?;
                if has_body {
                    if expect_continue && !client_http10 {
                        ds.write_continue_response().await?;
                    }
                    send_request_body(ds, &mut upstream, chunked_body, scratch).await?;
                }
                read_response_head(&mut upstream, &mut buf.0, head_request).await
            };
            match exchange.await {
                Ok(response) => break (upstream, response),
                Err(e) if reused && !has_body && is_stale_connection(&e) => fresh_only = true,
                Err(e) => return Err(e),
            }
        };

        let Response {
            mut header,
            framing,
            head_len,
            filled,
            mut reusable,
        } = response;
        match framing {
            Framing::Chunked if client_http10 => {
                // An HTTP/1.0 client knows no chunked coding: the body ends at the close.
                header.remove_header(&header::TRANSFER_ENCODING);
                ds.set_server_keepalive(None);
            }
            Framing::UntilClose if !client_http10 => {
                // Chunked keeps the client's connection open, as pingora-proxy does.
                header.insert_header(header::TRANSFER_ENCODING, "chunked")?;
            }
            Framing::UntilClose => ds.set_server_keepalive(None),
            _ => {}
        }
        ds.write_response_header(header).await?;

        let buf = &mut buf.0[..];
        match framing {
            Framing::Empty => reusable &= filled == head_len,
            Framing::Length(length) => {
                let first = (filled - head_len).min(length);
                if first > 0 {
                    ds.write_body(&buf[head_len..head_len + first]).await?;
                }
                reusable &= filled - head_len <= length;
                let mut left = length - first;
                while left > 0 {
                    let want = left.min(buf.len());
                    let n = read_upstream(&mut upstream, &mut buf[..want]).await?;
                    if n == 0 {
                        return Error::e_explain(
                            ErrorType::ConnectionClosed,
                            "upstream closed before the end of the body",
                        );
                    }
                    ds.write_body(&buf[..n]).await?;
                    left -= n;
                }
            }
            Framing::Chunked => {
                let mut chunks = Dechunker::default();
                let (mut start, mut end) = (head_len, filled);
                loop {
                    let step = chunks.decode_in_place(buf, start, end)?;
                    if step.data > 0 {
                        ds.write_body(&buf[start..start + step.data]).await?;
                    }
                    if step.done {
                        reusable &= start + step.consumed == end;
                        break;
                    }
                    end = read_upstream(&mut upstream, buf).await?;
                    start = 0;
                    if end == 0 {
                        return Error::e_explain(
                            ErrorType::ConnectionClosed,
                            "upstream closed inside a chunked body",
                        );
                    }
                }
            }
            Framing::UntilClose => {
                if filled > head_len {
                    ds.write_body(&buf[head_len..filled]).await?;
                }
                loop {
                    let n = read_upstream(&mut upstream, buf).await?;
                    if n == 0 {
                        break;
                    }
                    ds.write_body(&buf[..n]).await?;
                }
            }
        }
        ds.finish_body().await?;
        if reusable {
            self.pool.put(upstream);
        }
        Ok(())
    }

    /// Turns the client's request head into the upstream's, in `out`: HTTP/1.1, hop-by-hop
    /// fields removed (from the parsed header itself, so its case-preserving map is only
    /// read, never rebuilt). Returns whether the client expects `100 Continue`.
    fn upstream_request_head(&self, ds: &mut HttpSession, out: &mut Vec<u8>) -> bool {
        let req = ds.req_header_mut();
        let mut listed: Vec<HeaderName> = Vec::new();
        for value in req.headers.get_all(header::CONNECTION) {
            for token in value.as_bytes().split(|&b| b == b',') {
                let token = token.trim_ascii();
                if !token.eq_ignore_ascii_case(b"close")
                    && !token.eq_ignore_ascii_case(b"keep-alive")
                {
                    if let Ok(name) = HeaderName::from_bytes(token) {
                        listed.push(name);
                    }
                }
            }
        }
        for name in &listed {
            req.remove_header(name);
        }
        let expect_continue = req
            .headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        for name in [
            &header::CONNECTION,
            &KEEP_ALIVE,
            &PROXY_CONNECTION,
            &header::TE,
            &header::UPGRADE,
            &header::EXPECT,
        ] {
            if req.headers.contains_key(name) {
                req.remove_header(name);
            }
        }

        out.clear();
        out.extend_from_slice(req.method.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(req.raw_path());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        if !req.headers.contains_key(header::HOST) {
            out.extend_from_slice(b"Host: ");
            out.extend_from_slice(self.authority.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        req.header_to_h1_wire(out);
        out.extend_from_slice(b"\r\n");
        expect_continue
    }

    /// A live pooled connection, else a new one; and whether it was reused.
    async fn upstream(&self, fresh_only: bool) -> Result<(Stream, bool)> {
        if !fresh_only {
            if let Some(stream) = self.pool.take() {
                return Ok((stream, true));
            }
        }
        let stream = self.connector.new_stream(&self.peer).await?;
        Ok((stream, false))
    }
}

#[async_trait]
impl ServerApp for Lean {
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // The upstream request head is written here; it lives as long as the connection.
        let mut scratch = Vec::with_capacity(1024);
        loop {
            let mut ds = HttpSession::new(stream);
            ds.set_server_keepalive(Some(CLIENT_KEEPALIVE_SECS));
            match ds.read_request().await {
                Ok(Some(_)) => {}
                Ok(None) => return None,
                Err(e) => {
                    if e.etype() == &ErrorType::InvalidHTTPHeader {
                        respond_error(&mut ds, 400).await;
                    }
                    return None;
                }
            }
            if *shutdown.borrow() {
                ds.set_server_keepalive(None);
            }
            if self.serve(&mut ds, &mut scratch).await.is_err() {
                if ds.response_written().is_some() {
                    // The response broke off: only closing tells the client.
                    return None;
                }
                if !ds.is_body_done() {
                    ds.set_server_keepalive(None);
                }
                respond_error(&mut ds, 502).await;
            }
            match ds.reuse().await {
                Ok(Some(reusable)) => stream = reusable.into_parts().0,
                _ => return None,
            }
        }
    }
}

/// Whether `e` is what a reused connection closed by the upstream gives: a write, read or
/// close error, not a timeout or a malformed answer.
fn is_stale_connection(e: &Error) -> bool {
    matches!(
        e.etype(),
        ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
    )
}

/// Answers `status` with an empty body, as pingora-proxy does for its own errors.
async fn respond_error(ds: &mut HttpSession, status: u16) {
    let header = gen_error_response(status);
    if ds.write_response_header(Box::new(header)).await.is_ok() {
        let _ = ds.finish_body().await;
    }
}

/// Idle upstream connections of one worker, newest last.
struct Pool {
    idle: Mutex<Vec<(Stream, Instant)>>,
    capacity: usize,
}

impl Pool {
    /// The newest idle connection that is still open; closes the dead and the stale.
    fn take(&self) -> Option<Stream> {
        let mut idle = self.idle.lock().ok()?;
        while let Some((mut stream, since)) = idle.pop() {
            if since.elapsed() > POOL_IDLE {
                // Everything below is older still.
                idle.clear();
                return None;
            }
            if is_quiet(&mut stream) {
                return Some(stream);
            }
        }
        None
    }

    /// Keeps `stream` for reuse unless the pool is full.
    fn put(&self, stream: Stream) {
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < self.capacity {
                idle.push((stream, Instant::now()));
            }
        }
    }
}

/// Whether an idle connection has nothing to read: no EOF, no error, no stray bytes. One
/// non-blocking read (tokio answers from its readiness flag when it knows the socket is
/// empty), where pingora-proxy keeps a task reading every idle connection.
fn is_quiet(stream: &mut Stream) -> bool {
    let mut probe = [0u8; 1];
    let mut probe = ReadBuf::new(&mut probe);
    let mut cx = Context::from_waker(Waker::noop());
    matches!(
        Pin::new(stream).poll_read(&mut cx, &mut probe),
        Poll::Pending
    )
}

thread_local! {
    static SPARE: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

/// A body buffer borrowed from this thread's spare list; given back when dropped.
struct BodyBuffer(Box<[u8]>);

impl BodyBuffer {
    fn take() -> BodyBuffer {
        let spare = SPARE.with(|spare| spare.borrow_mut().pop());
        BodyBuffer(spare.unwrap_or_else(|| vec![0; BODY_BUFFER].into_boxed_slice()))
    }
}

impl Drop for BodyBuffer {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.0);
        // try_with: a request dropped while its thread shuts down just frees the buffer.
        let _ = SPARE.try_with(|spare| {
            let mut spare = spare.borrow_mut();
            if spare.len() < SPARE_BUFFERS {
                spare.push(buf);
            }
        });
    }
}

async fn write_upstream(upstream: &mut Stream, data: &[u8]) -> Result<()> {
    match timeout(UPSTREAM_IO_TIMEOUT, async {
        upstream.write_all(data).await?;
        upstream.flush().await
    })
    .await
    {
        Ok(result) => result.or_err(ErrorType::WriteError, "writing to the upstream"),
        Err(_) => Error::e_explain(ErrorType::WriteTimedout, "writing to the upstream"),
    }
}

async fn read_upstream(upstream: &mut Stream, buf: &mut [u8]) -> Result<usize> {
    match timeout(UPSTREAM_IO_TIMEOUT, upstream.read(buf)).await {
        Ok(result) => result.or_err(ErrorType::ReadError, "reading from the upstream"),
        Err(_) => Error::e_explain(ErrorType::ReadTimedout, "reading from the upstream"),
    }
}

/// Streams the client's request body upstream, re-chunked when it came chunked (pingora's
/// session hands it over decoded).
async fn send_request_body(
    ds: &mut HttpSession,
    upstream: &mut Stream,
    chunked: bool,
    scratch: &mut Vec<u8>,
) -> Result<()> {
    while let Some(data) = ds.read_body_bytes().await? {
        if data.is_empty() {
            continue;
        }
        if chunked {
            scratch.clear();
            scratch.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
            scratch.extend_from_slice(&data);
            scratch.extend_from_slice(b"\r\n");
            write_upstream(upstream, scratch).await?;
        } else {
            write_upstream(upstream, &data).await?;
        }
    }
    if chunked {
        write_upstream(upstream, b"0\r\n\r\n").await?;
    }
    Ok(())
}

/// How the upstream's response body ends.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Framing {
    /// No body (HEAD, 204, 304).
    Empty,
    /// `Content-Length`.
    Length(usize),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Neither: the body ends when the upstream closes.
    UntilClose,
}

/// A parsed upstream response head and what was read with it.
struct Response {
    header: Box<ResponseHeader>,
    framing: Framing,
    /// Bytes of `buf` that are the head; body bytes follow up to `filled`.
    head_len: usize,
    filled: usize,
    /// Whether the upstream connection can carry another request after this body.
    reusable: bool,
}

/// Reads until a final (non-1xx) response head is complete in `buf`.
async fn read_response_head(
    upstream: &mut Stream,
    buf: &mut [u8],
    head_request: bool,
) -> Result<Response> {
    let mut filled = 0;
    loop {
        if filled == buf.len() {
            return Error::e_explain(
                ErrorType::InvalidHTTPHeader,
                "upstream response head too large",
            );
        }
        let n = read_upstream(upstream, &mut buf[filled..]).await?;
        if n == 0 {
            return Error::e_explain(
                ErrorType::ConnectionClosed,
                "upstream closed before a response head",
            );
        }
        filled += n;
        // 1xx heads (100 Continue, 103 Early Hints) are dropped: the client gets the final
        // response only.
        loop {
            match parse_response_head(&buf[..filled], head_request)? {
                Parsed::Partial => break,
                Parsed::Informational(len) => {
                    buf.copy_within(len..filled, 0);
                    filled -= len;
                }
                Parsed::Final(mut response) => {
                    response.filled = filled;
                    return Ok(response);
                }
            }
        }
    }
}

enum Parsed {
    Partial,
    Informational(usize),
    Final(Response),
}

fn parse_response_head(buf: &[u8], head_request: bool) -> Result<Parsed> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut fields);
    let head_len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(e) => {
            return Error::e_explain(
                ErrorType::InvalidHTTPHeader,
                format!("upstream response head: {e}"),
            )
        }
    };
    let code = parsed.code.unwrap_or(0);
    if (100..200).contains(&code) && code != 101 {
        return Ok(Parsed::Informational(head_len));
    }
    if code == 101 {
        // Upgrade is never forwarded, so a switch was not asked for.
        return Error::e_explain(
            ErrorType::InvalidHTTPHeader,
            "unrequested 101 from upstream",
        );
    }
    let status = StatusCode::from_u16(code)
        .or_err(ErrorType::InvalidHTTPHeader, "upstream response status")?;

    // The upstream's own connection options, and the fields they name (hop-by-hop).
    let mut close = parsed.version == Some(0);
    let mut listed: Vec<&[u8]> = Vec::new();
    for field in parsed.headers.iter() {
        if !field.name.eq_ignore_ascii_case("connection") {
            continue;
        }
        for token in field.value.split(|&b| b == b',') {
            let token = token.trim_ascii();
            if token.eq_ignore_ascii_case(b"close") {
                close = true;
            } else if token.eq_ignore_ascii_case(b"keep-alive") {
                close &= parsed.version != Some(0);
            } else {
                listed.push(token);
            }
        }
    }

    let mut header = Box::new(ResponseHeader::build_no_case(
        status,
        Some(parsed.headers.len()),
    )?);
    if let Some(reason) = parsed.reason {
        if Some(reason) != status.canonical_reason() {
            header.set_reason_phrase(Some(reason))?;
        }
    }
    // One copy of the head; names and values are slices of it.
    let raw = Bytes::copy_from_slice(&buf[..head_len]);
    let base = buf.as_ptr() as usize;
    let slice = |part: &[u8]| {
        let start = part.as_ptr() as usize - base;
        raw.slice(start..start + part.len())
    };
    let mut length = None;
    let mut chunked = None;
    for field in parsed.headers.iter() {
        let name = field.name.as_bytes();
        if is_hop_by_hop(name) || listed.iter().any(|t| t.eq_ignore_ascii_case(name)) {
            continue;
        }
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // Only chunked as the final coding frames the body.
            let last = field.value.rsplit(|&b| b == b',').next().unwrap_or(b"");
            chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case(b"content-length") {
            let n = parse_content_length(field.value)?;
            if length.is_some_and(|l| l != n) {
                return Error::e_explain(
                    ErrorType::InvalidHTTPHeader,
                    "conflicting upstream Content-Length",
                );
            }
            length = Some(n);
        }
        let value = HeaderValue::from_maybe_shared(slice(field.value))
            .or_err(ErrorType::InvalidHTTPHeader, "upstream header value")?;
        header.append_header(slice(name), value)?;
    }

    let framing = if head_request || code == 204 || code == 304 {
        Framing::Empty
    } else {
        match chunked {
            Some(true) => {
                if length.is_some() {
                    // Both framings: chunked wins, and the connection is not trusted again.
                    header.remove_header(&header::CONTENT_LENGTH);
                    close = true;
                }
                Framing::Chunked
            }
            // nginx answers 502 to any other transfer coding too.
            Some(false) => {
                return Error::e_explain(
                    ErrorType::InvalidHTTPHeader,
                    "upstream transfer coding other than chunked",
                )
            }
            None => length.map_or(Framing::UntilClose, Framing::Length),
        }
    };
    Ok(Parsed::Final(Response {
        header,
        framing,
        head_len,
        filled: 0,
        reusable: !close && framing != Framing::UntilClose,
    }))
}

/// Fields that belong to one connection and are not forwarded.
fn is_hop_by_hop(name: &[u8]) -> bool {
    [
        &b"connection"[..],
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"upgrade",
        b"trailer",
    ]
    .iter()
    .any(|hop| hop.eq_ignore_ascii_case(name))
}

/// A Content-Length value; identical comma-separated repeats count as one (RFC 9110 §8.6).
fn parse_content_length(value: &[u8]) -> Result<usize> {
    let mut length = None;
    for part in value.split(|&b| b == b',') {
        let part = part.trim_ascii();
        let n = std::str::from_utf8(part)
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse::<usize>().ok())
            .or_err(ErrorType::InvalidHTTPHeader, "upstream Content-Length")?;
        if length.is_some_and(|l| l != n) {
            return Error::e_explain(ErrorType::InvalidHTTPHeader, "upstream Content-Length");
        }
        length = Some(n);
    }
    length.or_err(
        ErrorType::InvalidHTTPHeader,
        "empty upstream Content-Length",
    )
}

/// Where a chunked body's decoder is between reads.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
enum ChunkState {
    /// In the hex size.
    #[default]
    Size,
    /// In `;extensions` after the size.
    Extension,
    /// After the size line's CR.
    SizeLf,
    /// In chunk data.
    Data,
    /// After chunk data, before its CRLF.
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the final empty line).
    TrailerStart,
    /// In a trailer field.
    Trailer,
    /// After the final empty line's CR.
    EndLf,
    Done,
}

/// Decodes a chunked body in place: framing bytes are dropped and the data moved down
/// over them, so one read gives one write however many chunks it holds.
#[derive(Debug, Default)]
pub(crate) struct Dechunker {
    state: ChunkState,
    /// Data left in the current chunk, or the size being parsed.
    size: u64,
    digits: usize,
    /// Framing bytes skipped in the current extension or in all trailers, for the bounds.
    skipped: usize,
}

/// What one `decode_in_place` call did.
pub(crate) struct Decoded {
    /// Data bytes now at `buf[start..start + data]`.
    pub(crate) data: usize,
    /// Input bytes used, from `start`.
    pub(crate) consumed: usize,
    /// The final chunk and trailers are complete.
    pub(crate) done: bool,
}

impl Dechunker {
    /// Decodes `buf[start..end]`, the next bytes of the body.
    pub(crate) fn decode_in_place(
        &mut self,
        buf: &mut [u8],
        start: usize,
        end: usize,
    ) -> Result<Decoded> {
        let bad = |what: &str| {
            Error::e_explain(
                ErrorType::InvalidHTTPHeader,
                format!("upstream chunked body: {what}"),
            )
        };
        let (mut read, mut write) = (start, start);
        while read < end && self.state != ChunkState::Done {
            if self.state == ChunkState::Data {
                let take = (end - read).min(usize::try_from(self.size).unwrap_or(usize::MAX));
                buf.copy_within(read..read + take, write);
                read += take;
                write += take;
                self.size -= take as u64;
                if self.size == 0 {
                    self.state = ChunkState::DataCr;
                }
                continue;
            }
            let byte = buf[read];
            read += 1;
            self.state = match (self.state, byte) {
                (ChunkState::Size, b) if b.is_ascii_hexdigit() => {
                    if self.size > u64::MAX >> 4 {
                        return bad("size too large");
                    }
                    self.size = (self.size << 4) | u64::from((b as char).to_digit(16).unwrap_or(0));
                    self.digits += 1;
                    ChunkState::Size
                }
                (ChunkState::Size, b';' | b' ' | b'\t') if self.digits > 0 => {
                    self.skipped = 0;
                    ChunkState::Extension
                }
                (ChunkState::Size, b'\r') if self.digits > 0 => ChunkState::SizeLf,
                (ChunkState::Size, b'\n') | (ChunkState::SizeLf, b'\n') if self.digits > 0 => {
                    self.end_of_size_line()
                }
                (ChunkState::Extension, b'\r') => ChunkState::SizeLf,
                (ChunkState::Extension, b'\n') => self.end_of_size_line(),
                (ChunkState::Extension, _) => {
                    self.skipped += 1;
                    if self.skipped > MAX_CHUNK_EXTENSION {
                        return bad("extension too long");
                    }
                    ChunkState::Extension
                }
                (ChunkState::DataCr, b'\r') => ChunkState::DataLf,
                (ChunkState::DataCr | ChunkState::DataLf, b'\n') => {
                    self.digits = 0;
                    ChunkState::Size
                }
                (ChunkState::TrailerStart, b'\r') => ChunkState::EndLf,
                (ChunkState::TrailerStart | ChunkState::EndLf, b'\n') => ChunkState::Done,
                (ChunkState::TrailerStart | ChunkState::Trailer, b) => {
                    self.skipped += 1;
                    if self.skipped > MAX_TRAILERS {
                        return bad("trailers too long");
                    }
                    if b == b'\n' {
                        ChunkState::TrailerStart
                    } else {
                        ChunkState::Trailer
                    }
                }
                _ => return bad("malformed framing"),
            };
        }
        Ok(Decoded {
            data: write - start,
            consumed: read - start,
            done: self.state == ChunkState::Done,
        })
    }

    fn end_of_size_line(&mut self) -> ChunkState {
        if self.size == 0 {
            self.skipped = 0;
            ChunkState::TrailerStart
        } else {
            ChunkState::Data
        }
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
        let mut service = Service::new(
            format!("lean proxy {i}"),
            Lean::new(args.upstream, args.upstream_keepalive),
        );
        service.threads = threads;
        if args.per_worker_services {
            // Each worker its own SO_REUSEPORT socket, spelled as the sidecar spells it.
            let addr = worker_address(args.listen, i);
            let mut opts = TcpSocketOptions::default();
            opts.so_reuseport = Some(true);
            service.add_tcp_with_settings(&addr, opts);
        } else {
            service.add_tcp(&args.listen.to_string());
        }
        server.add_service(service);
    }
    server.run_forever();
}
