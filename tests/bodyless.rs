//! The sidecar's own response reader (`edge::h1::bodyless`, used for requests without a
//! body) against pingora's HTTP/1 client session, which it replaces there: the same bytes
//! from an app, split at the same points, must give the same heads (status, version,
//! reason, every field with its name's case, in order), the same body bytes, the same
//! success or failure, and the same decision on reusing the connection. The responses are
//! generated from a fixed seed — valid ones of every framing and many broken ones (bad
//! sizes, bad CRLFs, conflicting lengths, bytes past the end, truncation) — and each is
//! sent over a real loopback connection, once to each reader. One difference is allowed
//! ([`agree`]): how far into a broken chunk each gets before failing.

use std::fmt::Write as _;
use std::time::Duration;

use pingora::http::RequestHeader;
use pingora::protocols::http::v1::client::HttpSession;
use pingora::protocols::http::HttpTask;
use pingora::protocols::Stream;
use pingora::upstreams::peer::HttpPeer;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use released_sidecar::edge::h1::bodyless::Bodyless;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Cases per run: enough to reach every branch many times, bounded to a few seconds.
const CASES: usize = 1500;
/// A reader waiting for bytes that will not come gives up after this (both the same).
const READ_TIMEOUT: Duration = Duration::from_millis(150);

/// One generated exchange.
#[derive(Debug, Clone)]
struct Case {
    head_request: bool,
    request_close: bool,
    /// The app's bytes, written in these pieces with a pause between them.
    pieces: Vec<Vec<u8>>,
    /// The app closes the connection after its last piece.
    close: bool,
}

/// What a reader made of a case.
#[derive(Debug, PartialEq)]
struct Outcome {
    heads: Vec<String>,
    /// The body's bytes (the generator's are ASCII).
    body: String,
    /// `None`: read to the end; `Some(kind)`: failed (`timeout`, `closed` or `error`).
    failure: Option<&'static str>,
    reusable: bool,
}

fn describe_head(task: &HttpTask) -> Option<String> {
    let HttpTask::Header(head, end) = task else {
        return None;
    };
    let mut out = format!(
        "{} {:?} {:?} end={end}",
        head.status.as_u16(),
        head.version,
        head.get_reason_phrase()
    );
    let mut wire = bytes::BytesMut::new();
    head.header_to_h1_wire(&mut wire);
    let _ = write!(out, " {:?}", String::from_utf8_lossy(&wire));
    Some(out)
}

fn failure_kind(e: &pingora::Error) -> &'static str {
    match e.etype() {
        pingora::ErrorType::ReadTimedout => "timeout",
        pingora::ErrorType::ConnectionClosed => "closed",
        _ => "error",
    }
}

fn request(case: &Case) -> RequestHeader {
    let method = if case.head_request { "HEAD" } else { "GET" };
    let mut req = RequestHeader::build(method, b"/x", None).unwrap();
    req.insert_header("Host", "app.test").unwrap();
    if case.request_close {
        req.insert_header("Connection", "close").unwrap();
    }
    req
}

/// Plays the app for one connection: reads the request head, sends the case's bytes.
async fn serve(listener: &TcpListener, case: &Case) -> TcpStream {
    let (mut app, _) = listener.accept().await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(app.read(&mut byte).await.unwrap(), 1, "request head");
        head.push(byte[0]);
    }
    for piece in &case.pieces {
        // The reader may have given up (an error) and closed: the rest goes nowhere.
        if app.write_all(piece).await.is_err() {
            return app;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    if case.close {
        let _ = app.shutdown().await;
    }
    app
}

async fn connect(listener: &TcpListener) -> Stream {
    let client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    Box::new(pingora::protocols::l4::stream::Stream::from(client))
}

/// Either reader, read the same way.
trait Reader {
    async fn next_task(&mut self) -> pingora::Result<HttpTask>;
}

impl Reader for HttpSession {
    async fn next_task(&mut self) -> pingora::Result<HttpTask> {
        self.read_response_task().await
    }
}

impl Reader for Bodyless {
    async fn next_task(&mut self) -> pingora::Result<HttpTask> {
        self.read_response_task().await
    }
}

/// Reads tasks until the response ends or fails (`reusable` left for the caller).
async fn read_to_end(reader: &mut impl Reader) -> Outcome {
    let mut outcome = Outcome {
        heads: Vec::new(),
        body: String::new(),
        failure: None,
        reusable: false,
    };
    loop {
        match reader.next_task().await {
            Ok(task) => {
                let end = task.is_end();
                record(&mut outcome, &task);
                if end {
                    return outcome;
                }
            }
            Err(e) => {
                outcome.failure = Some(failure_kind(&e));
                return outcome;
            }
        }
    }
}

async fn with_pingora(listener: &TcpListener, case: &Case) -> Outcome {
    let stream = connect(listener).await;
    let serving = serve(listener, case);
    let reading = async {
        let mut session = HttpSession::new(stream);
        session.read_timeout = Some(READ_TIMEOUT);
        session
            .write_request_header(Box::new(request(case)))
            .await
            .unwrap();
        session.finish_body().await.unwrap();
        let mut outcome = read_to_end(&mut session).await;
        if outcome.failure.is_some() {
            return outcome;
        }
        session.respect_keepalive();
        outcome.reusable = session.reuse().await.is_some();
        outcome
    };
    let (_app, outcome) = tokio::join!(serving, reading);
    outcome
}

async fn with_ours(listener: &TcpListener, case: &Case) -> Outcome {
    let stream = connect(listener).await;
    let serving = serve(listener, case);
    let reading = async {
        let req = request(case);
        let mut peer = HttpPeer::new("127.0.0.1:1", false, String::new());
        peer.options.read_timeout = Some(READ_TIMEOUT);
        let mut reader = Bodyless::new(stream, &peer, &req);
        reader.write_request_header(&req).await.unwrap();
        let mut outcome = read_to_end(&mut reader).await;
        if outcome.failure.is_some() {
            return outcome;
        }
        outcome.reusable = reader.reusable().is_some();
        outcome
    };
    let (_app, outcome) = tokio::join!(serving, reading);
    outcome
}

fn record(outcome: &mut Outcome, task: &HttpTask) {
    if let Some(head) = describe_head(task) {
        outcome.heads.push(head);
    }
    if let HttpTask::Body(Some(data), _) = task {
        outcome.body.push_str(&String::from_utf8_lossy(data));
    }
}

/// The same answer: equal outcomes, except that when both failed on broken chunked
/// framing, one may have handed out a little more of the broken chunk's data than the
/// other (pingora checks a chunk's CRLF before handing out its data when both are in one
/// read, the reader after): the client's response is cut off either way.
fn agree(theirs: &Outcome, ours: &Outcome) -> bool {
    if theirs == ours {
        return true;
    }
    theirs.failure.is_some()
        && theirs.failure == ours.failure
        && theirs.heads == ours.heads
        && theirs.reusable == ours.reusable
        && (theirs.body.starts_with(&ours.body) || ours.body.starts_with(&theirs.body))
}

/// A response head line by line, then its body, from the generator's choices.
fn generate(rng: &mut StdRng) -> Case {
    let mut wire = Vec::new();
    let head_request = rng.gen_bool(0.1);
    let request_close = rng.gen_bool(0.1);
    // Informational heads first, sometimes.
    for _ in 0..rng
        .gen_range(0..3)
        .min(if rng.gen_bool(0.2) { 2 } else { 0 })
    {
        let code = [100, 102, 103][rng.gen_range(0..3)];
        wire.extend_from_slice(
            format!("HTTP/1.1 {code} Info\r\nLink: </a.css>\r\n\r\n").as_bytes(),
        );
    }
    let version = if rng.gen_bool(0.85) { "1.1" } else { "1.0" };
    let status = [200, 200, 200, 201, 204, 304, 404, 500, 101, 206][rng.gen_range(0..10)];
    let reason = ["OK", "", "Some Reason", "ÿ"][rng.gen_range(0..4)];
    let _ = write!(
        wire_string(&mut wire),
        "HTTP/{version} {status} {reason}\r\n"
    );
    let mut fields: Vec<String> = Vec::new();
    for _ in 0..rng.gen_range(0..4) {
        let field = [
            "Content-Type: text/plain",
            "X-MiXeD-Case: v",
            "set-cookie: a=1",
            "Set-Cookie: b=2",
            "Cache-Control: no-cache",
            "X-Fold: a\r\n  b",
            "X-Space : v",
            "X-Empty:",
            "Keep-Alive: timeout=5, max=100",
        ][rng.gen_range(0..9)];
        fields.push(field.into());
    }
    match rng.gen_range(0..6) {
        0 => fields.push("Connection: close".into()),
        1 => fields.push("Connection: keep-alive".into()),
        2 => fields.push("Connection: Keep-Alive, Foo".into()),
        3 => fields.push("connection: CLOSE".into()),
        _ => {}
    }

    // The body's framing, then its bytes.
    let content: Vec<u8> = (0..rng.gen_range(0..6000usize))
        .map(|i| b"abcdefghij\r\n"[i % 12])
        .collect();
    let mut body = Vec::new();
    let close;
    match rng.gen_range(0..10) {
        // Content-Length, right, short (truncated) or long (bytes past the end).
        0..=3 => {
            let n = content.len();
            let declared = match rng.gen_range(0..10) {
                0 => n + rng.gen_range(1..50),
                1 => n.saturating_sub(rng.gen_range(1..50)),
                _ => n,
            };
            match rng.gen_range(0..12) {
                0 => fields.push(format!("Content-Length: {declared}, {declared}")),
                1 => {
                    fields.push(format!("Content-Length: {declared}"));
                    fields.push(format!("Content-Length: {declared}"));
                }
                2 => {
                    fields.push(format!("Content-Length: {declared}"));
                    fields.push(format!("Content-Length: {}", declared + 1));
                }
                3 => fields.push("Content-Length: abc".into()),
                4 => fields.push(format!("Content-Length: +{declared}")),
                5 => fields.push(format!("Content-Length:  {declared} ")),
                _ => fields.push(format!("Content-Length: {declared}")),
            }
            body.extend_from_slice(&content);
            close = rng.gen_bool(0.3);
        }
        // Chunked, sometimes alongside a Content-Length, sometimes broken.
        4..=7 => {
            match rng.gen_range(0..8) {
                0 => fields.push("Transfer-Encoding: gzip, chunked".into()),
                1 => {
                    fields.push("Transfer-Encoding: chunked".into());
                    fields.push(format!("Content-Length: {}", content.len()));
                }
                2 => fields.push("Transfer-Encoding: chunked, gzip".into()),
                3 => fields.push("transfer-encoding: Chunked".into()),
                _ => fields.push("Transfer-Encoding: chunked".into()),
            }
            // Where the framing bytes are, so that corruption can aim at them.
            let mut framing = Vec::new();
            let mut rest = &content[..];
            while !rest.is_empty() {
                let n = rng.gen_range(1..=rest.len().min(3000));
                let ext = if rng.gen_bool(0.1) { ";name=value" } else { "" };
                let size = if rng.gen_bool(0.5) {
                    format!("{n:x}")
                } else {
                    format!("{n:X}")
                };
                let line = format!("{size}{ext}\r\n");
                framing.extend(body.len()..body.len() + line.len());
                body.extend_from_slice(line.as_bytes());
                body.extend_from_slice(&rest[..n]);
                framing.extend(body.len()..body.len() + 2);
                body.extend_from_slice(b"\r\n");
                rest = &rest[n..];
            }
            let last = body.len();
            body.extend_from_slice(b"0\r\n");
            if rng.gen_bool(0.2) {
                body.extend_from_slice(b"X-Trailer: t\r\nX-Other: u\r\n");
            }
            body.extend_from_slice(b"\r\n");
            framing.extend(last..body.len());
            if rng.gen_bool(0.5) {
                // Break one byte: mostly of the framing, sometimes of the data (harmless).
                let at = if rng.gen_bool(0.8) {
                    framing[rng.gen_range(0..framing.len())]
                } else {
                    rng.gen_range(0..body.len())
                };
                if rng.gen_bool(0.25) {
                    // Dropped, not replaced: a CR gone leaves a bare LF.
                    body.remove(at);
                } else {
                    body[at] = [b'\n', b'\r', b'z', b';', b' ', b'0'][rng.gen_range(0..6)];
                }
            }
            if rng.gen_bool(0.1) {
                body.truncate(rng.gen_range(0..=body.len()));
            }
            close = rng.gen_bool(0.3);
        }
        // No length: until the app closes.
        _ => {
            body.extend_from_slice(&content);
            close = true;
        }
    }
    if rng.gen_bool(0.1) {
        // Bytes past the response (another response, or garbage).
        body.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    }
    for field in fields {
        wire.extend_from_slice(field.as_bytes());
        wire.extend_from_slice(b"\r\n");
    }
    wire.extend_from_slice(b"\r\n");
    wire.extend_from_slice(&body);

    // Split at a few random points, so that heads, chunk lines and CRLFs straddle reads.
    let mut cuts: Vec<usize> = (0..rng.gen_range(0..4))
        .map(|_| rng.gen_range(0..=wire.len()))
        .collect();
    cuts.sort_unstable();
    let mut pieces = Vec::new();
    let mut from = 0;
    for cut in cuts {
        pieces.push(wire[from..cut].to_vec());
        from = cut;
    }
    pieces.push(wire[from..].to_vec());
    pieces.retain(|p| !p.is_empty());
    Case {
        head_request,
        request_close,
        pieces,
        close,
    }
}

/// `write!` into a byte vector.
fn wire_string(wire: &mut Vec<u8>) -> WireWriter<'_> {
    WireWriter(wire)
}

struct WireWriter<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for WireWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_reader_answers_as_pingoras_client_session_does() {
    // BODYLESS_SEED explores other cases; the default keeps CI reproducible.
    let seed = std::env::var("BODYLESS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_b0d1);
    let mut rng = StdRng::seed_from_u64(seed);
    let cases: Vec<Case> = (0..CASES).map(|_| generate(&mut rng)).collect();
    let mut differ = Vec::new();
    let mut tally = std::collections::BTreeMap::new();
    // A few at a time: each case is its own pair of connections.
    for batch in cases.chunks(32) {
        let runs = batch.iter().cloned().map(|case| {
            tokio::spawn(async move {
                let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
                let theirs = with_pingora(&listener, &case).await;
                let ours = with_ours(&listener, &case).await;
                (case, theirs, ours)
            })
        });
        for run in futures_util::future::join_all(runs).await {
            let (case, theirs, ours) = run.unwrap();
            let kind = match (&ours.failure, ours.reusable) {
                (Some(f), _) => *f,
                (None, true) => "ok, reusable",
                (None, false) => "ok, closed",
            };
            *tally.entry(kind).or_insert(0) += 1;
            if !agree(&theirs, &ours) {
                differ.push((case, theirs, ours));
            }
        }
    }
    println!("bodyless reader vs pingora: seed {seed}, {CASES} cases, {tally:?}");
    let mut report = String::new();
    for (case, theirs, ours) in differ.iter().take(3) {
        let wire: Vec<u8> = case.pieces.concat();
        let _ = write!(
            report,
            "\n{:?} pieces {:?} close={} head={} req_close={}\npingora: {theirs:?}\nours:    {ours:?}\n",
            String::from_utf8_lossy(&wire),
            case.pieces.iter().map(Vec::len).collect::<Vec<_>>(),
            case.close,
            case.head_request,
            case.request_close,
        );
    }
    assert!(
        differ.is_empty(),
        "{} of {CASES} cases differ:{report}",
        differ.len()
    );
    // Every kind of ending was reached, so the comparison covered them.
    for kind in ["ok, reusable", "ok, closed", "error", "closed", "timeout"] {
        assert!(tally.contains_key(kind), "no case ended {kind}: {tally:?}");
    }
}
