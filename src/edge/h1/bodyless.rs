//! One exchange with the app for a request without a body (nearly all traffic): the
//! request head written as pingora writes it, the response read by our own HTTP/1 reader.
//!
//! pingora-core's client session reads a response head into 4 KiB, builds its header and
//! then clones it for the caller, gives each response a fresh 64 KiB body buffer with the
//! head's leftover copied in, and copies every body read once more (benches/README.md,
//! "where W2's floor is"): for a 10 KB script that is two reads from the socket, two body
//! parts through the phases and two writes to the client. Here the first read takes up to
//! [`FIRST_READ`] bytes, the header is built once (as pingora builds it, names' case kept)
//! over one shared copy of the raw head, and body parts are slices of what was read.
//! Requests with a body, and upgrades, keep pingora's client session, which writes the body
//! while the response is read.
//!
//! The reader follows pingora's client session rule by rule, and `tests/bodyless.rs` holds
//! the two to the same heads, body bytes, outcome and reuse decision over thousands of
//! generated responses split at random points: head parsing (the same `httparse` settings, 256
//! fields, 1 MiB), 1xx heads passed on before the final one, the body's framing (RFC 9112
//! §6.3: HEAD, 204 and 304 have none, the last transfer coding `chunked` wins over
//! `Content-Length`, which is then removed, else a valid `Content-Length`, else until the
//! app closes), chunked framing (`httparse`'s chunk-size line with extensions up to 8 KiB,
//! CRLF after each chunk, trailers up to 64 KiB, skipped), errors and their retry flags,
//! and when the connection may carry another request (never after a body that ended by
//! closing, bytes past the response, or `Connection: close` on either side).

use std::time::Duration;

use bytes::BytesMut;
use http::{header, Method, StatusCode, Version};
use pingora::http::{header_value_from_raw, IntoCaseHeaderName, RequestHeader, ResponseHeader};
use pingora::protocols::http::v1::client::http_req_header_to_wire;
use pingora::protocols::http::HttpTask;
use pingora::protocols::Stream;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, OkOrErr, OrErr, Result, RetryType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the first read of a response may take: a typical script or stylesheet with its head.
pub const FIRST_READ: usize = 16 * 1024;
/// What later reads may take (pingora's body buffer).
const BODY_READ: usize = 64 * 1024;
/// Fields in a response head (pingora's limit).
const MAX_HEADERS: usize = 256;
/// Bytes of a response head (pingora's limit; checked before each further read).
const MAX_HEAD_BYTES: usize = 1_048_575;
/// A chunk-size line with its extensions (pingora's limit).
const MAX_CHUNK_HEAD: usize = 8 * 1024;
/// All trailer fields of a chunked body (pingora's limit).
const MAX_TRAILERS: usize = 64 * 1024;

/// pingora's error types for chunked framing, so that logs and metrics read the same.
const INVALID_CHUNK: ErrorType = ErrorType::new("InvalidChunk");
const INVALID_TRAILER_END: ErrorType = ErrorType::new("InvalidTrailerEnd");

/// A connection to the app carrying one request without a body.
pub struct Bodyless {
    stream: Stream,
    /// Read from the app and not yet handed out.
    buf: BytesMut,
    /// Bound on each read (the peer's `read_timeout`).
    pub read_timeout: Option<Duration>,
    /// Bound on writing the request head (the peer's `write_timeout`).
    pub write_timeout: Option<Duration>,
    /// A `Content-Length` that is a single invalid token frames nothing instead of failing
    /// (the peer option of the same name).
    allow_invalid_content_length: bool,
    head_request: bool,
    /// The request said `Connection: close` (or `keep-alive`): `Some(false)` (`Some(true)`).
    request_keepalive: Option<bool>,
    state: State,
    /// The connection may carry another request once the response is read to its end.
    keepalive: bool,
    /// A framing error met after good body bytes: reported once those are handed out, so
    /// that the client gets what pingora would have given it before the error.
    failed: Option<Box<Error>>,
}

enum State {
    /// Waiting for a (final) response head.
    Head,
    Length {
        remaining: usize,
    },
    Chunked(Chunked),
    UntilClose,
    Done,
}

/// Where a chunked body's reader is.
enum Chunked {
    /// At a chunk-size line.
    Size,
    /// In chunk data, with its CRLF still to come.
    Data { remaining: usize },
    /// After chunk data: its CR and LF (`pending` of them still to come).
    DataEnd { pending: u8 },
    /// After the last chunk's size line: trailer fields (`read` bytes of them so far) up
    /// to an empty line.
    Trailers { read: usize },
}

impl Bodyless {
    /// `stream` to `peer`, about to carry `req` (which has no body and no `Upgrade`).
    pub fn new(stream: Stream, peer: &HttpPeer, req: &RequestHeader) -> Self {
        Self {
            stream,
            buf: BytesMut::new(),
            read_timeout: peer.options.read_timeout,
            write_timeout: peer.options.write_timeout,
            allow_invalid_content_length: peer.options.allow_h1_response_invalid_content_length,
            head_request: req.method == Method::HEAD,
            request_keepalive: connection_keepalive(req.headers.get(header::CONNECTION)),
            state: State::Head,
            keepalive: false,
            failed: None,
        }
    }

    /// Writes the request head, byte for byte as pingora's client session would.
    pub async fn write_request_header(&mut self, req: &RequestHeader) -> Result<()> {
        let wire = http_req_header_to_wire(req).or_err(
            ErrorType::InvalidHTTPHeader,
            "request-line contains forbidden delimiter bytes or unsupported HTTP version",
        )?;
        let write = async {
            self.stream.write_all(&wire).await?;
            self.stream.flush().await
        };
        match self.write_timeout {
            Some(t) => match tokio::time::timeout(t, write).await {
                Ok(written) => {
                    written.or_err(ErrorType::WriteError, "while writing request headers")
                }
                Err(_) => Error::e_explain(
                    ErrorType::WriteTimedout,
                    "while writing request headers (timeout)",
                ),
            },
            None => write
                .await
                .or_err(ErrorType::WriteError, "while writing request headers"),
        }
    }

    /// The next part of the response: a head (1xx ones first), body parts, then `Done`.
    pub async fn read_response_task(&mut self) -> Result<HttpTask> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        match self.state {
            State::Head => self.read_head().await,
            State::Done => Ok(HttpTask::Done),
            _ => self.read_body().await,
        }
    }

    /// The connection, when it can carry another request: the response was read to its
    /// end, nothing followed it, and both sides agreed to keep it open.
    pub fn reusable(self) -> Option<Stream> {
        (matches!(self.state, State::Done) && self.keepalive && self.buf.is_empty())
            .then_some(self.stream)
    }

    /// Reads more from the app into `buf`; `Ok(0)` at its end.
    async fn fill(&mut self, at_least: usize) -> std::io::Result<usize> {
        self.buf.reserve(at_least);
        let read = self.stream.read_buf(&mut self.buf);
        match self.read_timeout {
            Some(t) => tokio::time::timeout(t, read)
                .await
                .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into())),
            None => read.await,
        }
    }

    async fn read_head(&mut self) -> Result<HttpTask> {
        loop {
            if !self.buf.is_empty() {
                if let Some(task) = self.parse_head()? {
                    return Ok(task);
                }
                if self.buf.len() > MAX_HEAD_BYTES {
                    return Error::e_explain(
                        ErrorType::InvalidHTTPHeader,
                        format!("Response header larger than {MAX_HEAD_BYTES}"),
                    );
                }
            }
            let already = self.buf.len();
            match self.fill(FIRST_READ).await {
                Ok(0) => {
                    let mut e = Error::explain(
                        ErrorType::ConnectionClosed,
                        format!("while reading response headers, bytes already read: {already}"),
                    );
                    e.retry = RetryType::ReusedOnly;
                    return Err(e);
                }
                Ok(_) => {}
                Err(e)
                    if e.kind() == std::io::ErrorKind::TimedOut && e.raw_os_error().is_none() =>
                {
                    return Error::e_explain(
                        ErrorType::ReadTimedout,
                        "while reading response headers",
                    );
                }
                Err(e) => {
                    // A reset on a reused connection: the app closed it as it was taken.
                    let os_error = e.raw_os_error().is_some();
                    let mut e = Error::because(
                        ErrorType::ReadError,
                        format!("while reading response headers, bytes already read: {already}"),
                        e,
                    );
                    if os_error {
                        e.retry = RetryType::ReusedOnly;
                    }
                    return Err(e);
                }
            }
        }
    }

    /// The head at the start of `buf`, if it is complete: consumed, built, and the body's
    /// framing set up.
    fn parse_head(&mut self) -> Result<Option<HttpTask>> {
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut fields);
        let mut config = httparse::ParserConfig::default();
        config.allow_spaces_after_header_name_in_responses(true);
        config.allow_obsolete_multiline_headers_in_responses(true);
        let head_len = match config.parse_response(&mut parsed, &self.buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => {
                return Err(Error::because(
                    ErrorType::InvalidHTTPHeader,
                    "while parsing the response head",
                    e,
                ))
            }
        };
        let code = parsed.code.unwrap_or_default();
        let version = match parsed.version {
            Some(1) => Version::HTTP_11,
            Some(0) => Version::HTTP_10,
            _ => Version::HTTP_09,
        };
        let reason = parsed.reason.map(str::to_owned);
        // Offsets into the head, so that names and values can share one copy of it.
        let base = self.buf.as_ptr() as usize;
        let spans: Vec<_> = parsed
            .headers
            .iter()
            .filter(|f| !f.name.is_empty())
            .map(|f| {
                let name = f.name.as_ptr() as usize - base;
                let value = f.value.as_ptr() as usize - base;
                (name..name + f.name.len(), value..value + f.value.len())
            })
            .collect();
        let raw = self.buf.split_to(head_len).freeze();

        let mut head = ResponseHeader::build(code, Some(spans.len()))?;
        head.set_version(version);
        head.set_reason_phrase(reason.as_deref())?;
        for (name, value) in spans {
            head.append_header(
                raw.slice(name).into_case_header_name(),
                header_value_from_raw(raw.slice(value)),
            )
            .or_err(ErrorType::InvalidHTTPHeader, "while parsing request header")?;
        }
        let chunked_framing = is_chunked(&head);
        let has_te = head.headers.contains_key(header::TRANSFER_ENCODING);
        if has_te && head.headers.contains_key(header::CONTENT_LENGTH) {
            // RFC 9112 §6.3: Transfer-Encoding overrides Content-Length.
            head.remove_header(&header::CONTENT_LENGTH);
        }
        let length = match content_length(&head) {
            Ok(length) => length,
            Err(e) if !has_te => {
                if !(self.allow_invalid_content_length && single_content_length(&head)) {
                    return Err(e);
                }
                None
            }
            Err(_) => None,
        };

        if (100..200).contains(&code) && code != 101 {
            // Informational: the final head follows; no body, no framing yet.
            return Ok(Some(HttpTask::Header(Box::new(head), false)));
        }
        let no_body = self.head_request || code == 204 || code == 304;
        self.state = if no_body {
            State::Length { remaining: 0 }
        } else if chunked_framing {
            State::Chunked(Chunked::Size)
        } else if let Some(remaining) = length {
            State::Length { remaining }
        } else {
            State::UntilClose
        };
        self.keepalive = self.keeps_alive(&head);
        let end = matches!(self.state, State::Length { remaining: 0 });
        if end {
            self.state = State::Done;
        }
        Ok(Some(HttpTask::Header(Box::new(head), end)))
    }

    /// pingora's `respect_keepalive`, for a response whose framing is set.
    fn keeps_alive(&self, head: &ResponseHeader) -> bool {
        if head.status == StatusCode::SWITCHING_PROTOCOLS || matches!(self.state, State::UntilClose)
        {
            return false;
        }
        if head.version == Version::HTTP_10 && head.headers.contains_key(header::TRANSFER_ENCODING)
        {
            // RFC 9112 §6.1: close after a transfer-coded HTTP/1.0 response.
            return false;
        }
        let keepalive = match self.request_keepalive {
            Some(false) => Some(false),
            _ => connection_keepalive(head.headers.get(header::CONNECTION)),
        };
        keepalive.unwrap_or(head.version == Version::HTTP_11)
    }

    async fn read_body(&mut self) -> Result<HttpTask> {
        loop {
            if !self.buf.is_empty() {
                if let Some(task) = self.take_body()? {
                    return Ok(task);
                }
            }
            match self.fill(BODY_READ).await {
                Ok(0) => return self.body_closed(),
                Ok(_) => {}
                Err(e)
                    if e.kind() == std::io::ErrorKind::TimedOut && e.raw_os_error().is_none() =>
                {
                    return Error::e_explain(ErrorType::ReadTimedout, "reading body");
                }
                Err(e) => return Err(Error::because(ErrorType::ReadError, "when reading body", e)),
            }
        }
    }

    /// The app closed the connection while a body was expected.
    fn body_closed(&mut self) -> Result<HttpTask> {
        match std::mem::replace(&mut self.state, State::Done) {
            State::UntilClose => Ok(HttpTask::Body(None, true)),
            State::Length { remaining } => Error::e_explain(
                ErrorType::ConnectionClosed,
                format!(
                    "Peer prematurely closed connection with {remaining} bytes of body remaining to read"
                ),
            ),
            _ => Error::e_explain(
                ErrorType::ConnectionClosed,
                "Connection prematurely closed without the termination chunk",
            ),
        }
    }

    /// Body bytes out of `buf`, if there are any to hand out (or the body ended).
    fn take_body(&mut self) -> Result<Option<HttpTask>> {
        match &mut self.state {
            State::Length { remaining } => {
                let n = (*remaining).min(self.buf.len());
                *remaining -= n;
                let data = self.buf.split_to(n).freeze();
                let end = *remaining == 0;
                if end {
                    self.body_ended("the app sent more than its Content-Length");
                }
                Ok(Some(HttpTask::Body(Some(data), end)))
            }
            State::UntilClose => {
                let data = self.buf.split().freeze();
                Ok(Some(HttpTask::Body(Some(data), false)))
            }
            State::Chunked(_) => self.take_chunks(),
            State::Head | State::Done => Ok(None),
        }
    }

    /// The body is complete; bytes already read past it (`excess` says what they are) cost
    /// the connection its reuse, see [`Self::reusable`].
    fn body_ended(&mut self, excess: &'static str) {
        self.state = State::Done;
        if !self.buf.is_empty() {
            tracing::debug!(extra = self.buf.len(), "{excess}");
        }
    }

    /// Decodes what `buf` holds of a chunked body: the data of every complete or partial
    /// chunk in it, as one part (framing dropped, data moved down over it).
    fn take_chunks(&mut self) -> Result<Option<HttpTask>> {
        let mut out = 0;
        let mut at = 0;
        let decoded = self.decode_chunks(&mut out, &mut at);
        // Keep only what is not yet decoded; the `out` decoded data bytes lead the buffer.
        let undecoded = self.buf.len() - at;
        self.buf.copy_within(at.., out);
        self.buf.truncate(out + undecoded);
        let data = self.buf.split_to(out).freeze();
        let done = match decoded {
            Ok(done) => done,
            Err(e) if data.is_empty() => return Err(e),
            Err(e) => {
                self.failed = Some(e);
                return Ok(Some(HttpTask::Body(Some(data), false)));
            }
        };
        if done {
            self.body_ended("the app sent bytes after its chunked body");
            return Ok(Some(HttpTask::Body(
                (!data.is_empty()).then_some(data),
                true,
            )));
        }
        Ok((!data.is_empty()).then(|| HttpTask::Body(Some(data), false)))
    }

    /// Decodes chunked framing from `buf[*at..]`, moving data down to `buf[..*out]`;
    /// `true` once the body is complete.
    fn decode_chunks(&mut self, out: &mut usize, at: &mut usize) -> Result<bool> {
        while *at < self.buf.len() {
            let State::Chunked(chunked) = &mut self.state else {
                unreachable!("called while reading a chunked body")
            };
            match chunked {
                Chunked::Size => match httparse::parse_chunk_size(&self.buf[*at..]) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        *at += used;
                        let size = usize::try_from(size)
                            .or_err(INVALID_CHUNK, "chunk size overflows usize")?;
                        *chunked = if size == 0 {
                            Chunked::Trailers { read: 0 }
                        } else {
                            Chunked::Data { remaining: size }
                        };
                    }
                    Ok(httparse::Status::Partial) => {
                        if self.buf.len() - *at > MAX_CHUNK_HEAD {
                            return Error::e_explain(INVALID_CHUNK, "Chunk ext over limit");
                        }
                        break;
                    }
                    Err(e) => {
                        return Error::e_explain(
                            INVALID_CHUNK,
                            format!("Invalid chunked encoding: {e:?}"),
                        )
                    }
                },
                Chunked::Data { remaining } => {
                    let n = (*remaining).min(self.buf.len() - *at);
                    self.buf.copy_within(*at..*at + n, *out);
                    *out += n;
                    *at += n;
                    *remaining -= n;
                    if *remaining == 0 {
                        *chunked = Chunked::DataEnd { pending: 2 };
                    }
                }
                Chunked::DataEnd { pending } => {
                    let want = if *pending == 2 { b'\r' } else { b'\n' };
                    if self.buf[*at] != want {
                        return Error::e_explain(
                            INVALID_CHUNK,
                            "Invalid chunked encoding: chunk data not followed by CRLF",
                        );
                    }
                    *at += 1;
                    *pending -= 1;
                    if *pending == 0 {
                        *chunked = Chunked::Size;
                    }
                }
                Chunked::Trailers { read } => {
                    // Lines up to an empty one, each ended by CRLF (a CR anywhere else,
                    // or a bare LF, is an error, as in pingora).
                    let rest = &self.buf[*at..];
                    let Some(lf) = memchr::memchr(b'\n', rest) else {
                        if *read + rest.len() > MAX_TRAILERS {
                            return Error::e_explain(
                                INVALID_TRAILER_END,
                                "Trailer size over limit",
                            );
                        }
                        if rest[..rest.len() - 1].contains(&b'\r') {
                            return Error::e_explain(
                                INVALID_TRAILER_END,
                                "Invalid chunked encoding: CR not followed by LF",
                            );
                        }
                        break;
                    };
                    if lf == 0 || rest[lf - 1] != b'\r' || rest[..lf - 1].contains(&b'\r') {
                        return Error::e_explain(
                            INVALID_TRAILER_END,
                            "Invalid chunked encoding: trailer line not ended by CRLF",
                        );
                    }
                    *read += lf + 1;
                    if *read > MAX_TRAILERS {
                        return Error::e_explain(INVALID_TRAILER_END, "Trailer size over limit");
                    }
                    *at += lf + 1;
                    if lf == 1 {
                        // The empty line ends the body.
                        return Ok(true);
                    }
                }
            }
        }
        Ok(false)
    }
}

/// Whether the last transfer coding of the last `Transfer-Encoding` field is `chunked`.
fn is_chunked(head: &ResponseHeader) -> bool {
    let Some(last) = head
        .headers
        .get_all(header::TRANSFER_ENCODING)
        .into_iter()
        .next_back()
    else {
        return false;
    };
    let bytes = last.as_bytes();
    let token = bytes
        .iter()
        .rposition(|&b| b == b',')
        .map_or(bytes, |i| &bytes[i + 1..]);
    token.trim_ascii().eq_ignore_ascii_case(b"chunked")
}

/// Every `Content-Length` value reconciled into one (identical repeats and lists count as
/// one, RFC 9110 §8.6); an error when they disagree or one is not a number.
fn content_length(head: &ResponseHeader) -> Result<Option<usize>> {
    let mut length: Option<u64> = None;
    let mut present = false;
    for value in head.headers.get_all(header::CONTENT_LENGTH) {
        present = true;
        let Ok(line) = value.to_str() else {
            return invalid_content_length();
        };
        for part in line.split(',') {
            let Some(n) = digits(part.trim().as_bytes()) else {
                return invalid_content_length();
            };
            match length {
                Some(prev) if prev != n => return invalid_content_length(),
                _ => length = Some(n),
            }
        }
    }
    if !present {
        return Ok(None);
    }
    match length.map(usize::try_from) {
        Some(Ok(n)) => Ok(Some(n)),
        _ => invalid_content_length(),
    }
}

fn invalid_content_length<T>() -> Result<T> {
    Error::e_explain(
        ErrorType::InvalidHTTPHeader,
        "invalid Content-Length header",
    )
}

/// A run of ASCII digits as a number (no sign, no overflow).
fn digits(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty() {
        return None;
    }
    bytes.iter().try_fold(0u64, |n, &b| {
        if b.is_ascii_digit() {
            n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

/// Exactly one `Content-Length` token (one field, no list).
fn single_content_length(head: &ResponseHeader) -> bool {
    let mut values = head.headers.get_all(header::CONTENT_LENGTH).into_iter();
    matches!((values.next(), values.next()), (Some(v), None) if !v.as_bytes().contains(&b','))
}

/// What a `Connection` field says of keeping the connection open, as pingora reads it:
/// exactly `keep-alive` is yes, a `close` token is no, anything else says nothing.
fn connection_keepalive(value: Option<&http::HeaderValue>) -> Option<bool> {
    let value = value?.as_bytes();
    if value.eq_ignore_ascii_case(b"keep-alive") {
        return Some(true);
    }
    if value.eq_ignore_ascii_case(b"close") {
        return Some(false);
    }
    let text = std::str::from_utf8(value).unwrap_or("");
    text.split(',')
        .map(str::trim)
        .any(|t| t.eq_ignore_ascii_case("close"))
        .then_some(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::{TcpListener, TcpStream};

    /// What reading `wire` (sent in `pieces`, the app then closing or not) gave.
    #[derive(Debug)]
    struct Read {
        heads: Vec<u16>,
        /// Body parts, as handed out.
        parts: Vec<Vec<u8>>,
        result: std::result::Result<(), ErrorType>,
        reusable: bool,
    }

    async fn read(pieces: &[&[u8]], method: &str, connection: Option<&str>, close: bool) -> Read {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut app, _) = listener.accept().await.unwrap();
        let stream: Stream = Box::new(pingora::protocols::l4::stream::Stream::from(client));
        let mut req = RequestHeader::build(method, b"/", None).unwrap();
        if let Some(value) = connection {
            req.insert_header(header::CONNECTION, value).unwrap();
        }
        let mut peer = HttpPeer::new("127.0.0.1:1", false, String::new());
        peer.options.read_timeout = Some(Duration::from_millis(200));
        let mut reader = Bodyless::new(stream, &peer, &req);
        reader.write_request_header(&req).await.unwrap();
        let pieces: Vec<Vec<u8>> = pieces.iter().map(|p| p.to_vec()).collect();
        let app_side = tokio::spawn(async move {
            for piece in pieces {
                if app.write_all(&piece).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            if close {
                let _ = app.shutdown().await;
            }
            app
        });
        let mut out = Read {
            heads: Vec::new(),
            parts: Vec::new(),
            result: Ok(()),
            reusable: false,
        };
        loop {
            match reader.read_response_task().await {
                Ok(task) => {
                    let end = task.is_end();
                    match task {
                        HttpTask::Header(head, _) => out.heads.push(head.status.as_u16()),
                        HttpTask::Body(Some(data), _) => out.parts.push(data.to_vec()),
                        _ => {}
                    }
                    if end {
                        break;
                    }
                }
                Err(e) => {
                    out.result = Err(e.etype().clone());
                    break;
                }
            }
        }
        out.reusable = out.result.is_ok() && reader.reusable().is_some();
        drop(app_side.await.unwrap());
        out
    }

    #[tokio::test]
    async fn a_response_that_arrived_whole_is_one_head_and_one_body_part() {
        let body = vec![b'x'; 10_000];
        let mut wire = b"HTTP/1.1 200 OK\r\nContent-Length: 10000\r\n\r\n".to_vec();
        wire.extend_from_slice(&body);
        let got = read(&[&wire], "GET", None, false).await;
        assert_eq!(got.heads, [200]);
        assert_eq!(
            got.parts,
            [body],
            "one part, not the 4 KiB split of pingora's client"
        );
        assert!(got.reusable);
    }

    #[tokio::test]
    async fn chunked_framing_is_decoded_across_reads_and_its_crlfs_are_strict() {
        let wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\n";
        for split in 1..wire.len() {
            let got = read(&[&wire[..split], &wire[split..]], "GET", None, false).await;
            assert_eq!(got.parts.concat(), b"hello world", "split at {split}");
            assert!(got.reusable, "split at {split}");
        }
        for broken in [
            &b"5\r\nhello\n6\r\n world\r\n0\r\n\r\n"[..],
            b"5\r\nhelloX\r\n0\r\n\r\n",
            b"5\r\nhello\r\n0\r\nX-T: 1\n\r\n",
            b"5\r\nhello\r\n0\r\nX-T: 1\r\r\n\r\n",
            b"zz\r\nhello\r\n0\r\n\r\n",
        ] {
            let mut wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            wire.extend_from_slice(broken);
            let got = read(&[&wire], "GET", None, false).await;
            assert!(got.result.is_err(), "{:?}", String::from_utf8_lossy(broken));
            assert!(!got.reusable);
        }
    }

    #[tokio::test]
    async fn a_connection_is_reused_only_when_both_sides_keep_it_and_nothing_follows() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi";
        assert!(read(&[ok], "GET", None, false).await.reusable);
        assert!(!read(&[ok], "GET", Some("close"), false).await.reusable);
        let mut extra = ok.to_vec();
        extra.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        assert!(
            !read(&[&extra], "GET", None, false).await.reusable,
            "bytes past the end"
        );
        let http10 = b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi";
        assert!(!read(&[http10], "GET", None, false).await.reusable);
        let http10_kept =
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nhi";
        assert!(read(&[http10_kept], "GET", None, false).await.reusable);
        let until_close = b"HTTP/1.1 200 OK\r\n\r\nhi";
        let got = read(&[until_close], "GET", None, true).await;
        assert_eq!(
            (got.parts.concat(), got.result, got.reusable),
            (b"hi".to_vec(), Ok(()), false)
        );
        // HEAD, 204 and 304 have no body whatever their fields say.
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n";
        let got = read(&[head], "HEAD", None, false).await;
        assert_eq!((got.parts.len(), got.reusable), (0, true));
        let no_content = b"HTTP/1.1 204 No Content\r\nContent-Length: 100\r\n\r\n";
        assert!(read(&[no_content], "GET", None, false).await.reusable);
    }

    #[tokio::test]
    async fn informational_heads_come_first_and_a_short_body_is_an_error() {
        let wire = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort";
        let got = read(&[wire], "GET", None, true).await;
        assert_eq!(got.heads, [103, 200]);
        assert_eq!(got.result, Err(ErrorType::ConnectionClosed));
        let conflicting = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nhi";
        let got = read(&[conflicting], "GET", None, false).await;
        assert_eq!(got.result, Err(ErrorType::InvalidHTTPHeader));
    }
}
