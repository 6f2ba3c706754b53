//! `examples/lean_proxy.rs`, the benchmark's `lean` target, is a correct proxy for the
//! benchmark's traffic and the HTTP/1 cases around it: keep-alive on both sides,
//! Content-Length and chunked bodies both ways, request bodies, `Expect: 100-continue`,
//! HTTP/1.0 clients, hop-by-hop fields, pooled connections the upstream closed, and 502 for
//! upstream failures. The example's own code runs here (its listener aside: connections
//! are accepted by the test and handed to the app as pingora's listener would), over real
//! loopback sockets, against the harness's app and raw upstreams.

mod support;

#[path = "../examples/lean_proxy.rs"]
#[allow(dead_code)]
mod lean_proxy;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use lean_proxy::Lean;
use support::{Reply, Upstream};

/// Bound on every exchange of these tests.
const LIMIT: Duration = Duration::from_secs(10);

/// Starts the lean proxy in front of `upstream` on a free loopback port.
async fn start_lean(upstream: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind lean");
    let addr = listener.local_addr().unwrap();
    let app = Arc::new(Lean::new(upstream, 8));
    tokio::spawn(async move {
        let (_keep, shutdown) = tokio::sync::watch::channel(false);
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (app, shutdown) = (Arc::clone(&app), shutdown.clone());
            tokio::spawn(async move {
                let stream: Stream = Box::new(pingora::protocols::l4::stream::Stream::from(tcp));
                app.process_new(stream, &shutdown).await;
            });
        }
    });
    addr
}

fn pseudo_random(len: usize, seed: u64) -> Bytes {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

/// One response as the client saw it.
struct Response {
    status: u16,
    /// The head, lowercased.
    head: String,
    /// The body, de-chunked.
    body: Vec<u8>,
}

impl Response {
    /// The value of field `name` (lowercase), if present.
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (k, v) = line.split_once(':')?;
            (k.trim() == name).then(|| v.trim())
        })
    }
}

/// A raw HTTP/1 client on one connection that reads responses one at a time.
struct Client {
    tcp: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        Client {
            tcp: TcpStream::connect(addr).await.expect("connect to lean"),
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.tcp.write_all(bytes).await.expect("send");
    }

    /// Reads more; false when the server closed.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout(LIMIT, self.tcp.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => false,
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(_) => panic!("no answer within {LIMIT:?}"),
        }
    }

    async fn line(&mut self) -> String {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                self.buf.drain(..i + 2);
                return line;
            }
            assert!(self.fill().await, "closed inside a chunked body");
        }
    }

    async fn take(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            assert!(
                self.fill().await,
                "closed {} bytes short",
                n - self.buf.len()
            );
        }
        self.buf.drain(..n).collect()
    }

    /// The next response (a 1xx too); `head_request` for the answer to a HEAD.
    async fn response(&mut self, head_request: bool) -> Response {
        let end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            assert!(self.fill().await, "closed before a response head");
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).to_ascii_lowercase();
        self.buf.drain(..end + 4);
        let status = head
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .expect("status");
        let mut response = Response {
            status,
            head,
            body: Vec::new(),
        };
        if head_request || status < 200 || status == 204 || status == 304 {
            return response;
        }
        if response.header("transfer-encoding") == Some("chunked") {
            loop {
                let size_line = self.line().await;
                let size = usize::from_str_radix(size_line.split(';').next().unwrap().trim(), 16)
                    .expect("chunk size");
                if size == 0 {
                    while !self.line().await.is_empty() {}
                    break;
                }
                let data = self.take(size + 2).await;
                response.body.extend_from_slice(&data[..size]);
            }
        } else if let Some(length) = response.header("content-length") {
            let length = length.parse().expect("content-length");
            response.body = self.take(length).await;
        } else {
            while self.fill().await {}
            response.body = std::mem::take(&mut self.buf);
        }
        response
    }

    /// Whether the server closes the connection (with nothing more to read).
    async fn closed(&mut self) -> bool {
        !self.fill().await && self.buf.is_empty()
    }
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: app.test\r\n\r\n").into_bytes()
}

/// The harness's app: /small 1 KB JSON, /big 1 MiB, /chunked a streamed body of three
/// chunks (the middle one larger than the proxy's buffer), /echo the request body,
/// /headers the request fields, /empty a 204.
async fn app() -> (Upstream, Bytes, Bytes, Bytes) {
    let small = pseudo_random(1024, 1);
    let big = pseudo_random(1 << 20, 2);
    let chunks = [
        Bytes::from_static(b"first "),
        pseudo_random(100 * 1024, 3),
        Bytes::from_static(b" last"),
    ];
    let streamed: Bytes = chunks.concat().into();
    let (s, b) = (small.clone(), big.clone());
    let upstream = Upstream::start(move |seen| match seen.path.as_str() {
        "/small" => Reply::with(200, "application/json", s.clone()),
        "/big" => Reply::with(200, "application/octet-stream", b.clone()),
        "/chunked" => Reply::Stream {
            status: 200,
            headers: vec![("content-type".into(), "text/plain".into())],
            chunks: chunks
                .iter()
                .map(|c| (Duration::from_millis(20), c.clone()))
                .collect(),
        },
        "/echo" => Reply::EchoBody,
        "/headers" => Reply::EchoHeaders,
        "/empty" => Reply::with(204, "text/plain", ""),
        _ => Reply::with(404, "text/plain", "no such path"),
    })
    .await;
    (upstream, small, big, streamed)
}

#[tokio::test]
async fn keeps_both_sides_alive_and_passes_length_and_chunked_bodies() {
    let (upstream, small, big, streamed) = app().await;
    let lean = start_lean(upstream.addr).await;
    let mut client = Client::connect(lean).await;

    for _ in 0..3 {
        client.send(&get("/small")).await;
        let r = client.response(false).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body, small, "1 KB body byte for byte");
        assert_eq!(r.header("content-length"), Some("1024"));
        assert_eq!(r.header("connection"), Some("keep-alive"));
    }
    client.send(&get("/big")).await;
    let r = client.response(false).await;
    assert_eq!(r.body.len(), big.len());
    assert!(r.body == big, "1 MiB body byte for byte");

    client.send(&get("/chunked")).await;
    let r = client.response(false).await;
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert!(
        r.body == streamed,
        "chunked body decoded and re-chunked intact"
    );

    client
        .send(b"HEAD /small HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await;
    let r = client.response(true).await;
    assert_eq!((r.status, r.header("content-length")), (200, Some("1024")));
    client.send(&get("/empty")).await;
    assert_eq!(client.response(false).await.status, 204);
    client.send(&get("/small")).await;
    assert_eq!(
        client.response(false).await.body,
        small,
        "after HEAD and 204"
    );

    assert_eq!(
        upstream.connections(),
        1,
        "one upstream connection carried every request"
    );
}

#[tokio::test]
async fn request_bodies_reach_the_app_by_length_chunked_and_after_100_continue() {
    let (upstream, ..) = app().await;
    let lean = start_lean(upstream.addr).await;
    let mut client = Client::connect(lean).await;
    let body = pseudo_random(200 * 1024, 4);

    let mut request = format!(
        "POST /echo HTTP/1.1\r\nHost: app.test\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    client.send(&request).await;
    let r = client.response(false).await;
    assert_eq!(r.status, 200);
    assert!(r.body == body, "Content-Length body echoed intact");

    let mut request =
        b"POST /echo HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for part in body.chunks(70_000) {
        request.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        request.extend_from_slice(part);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    client.send(&request).await;
    let r = client.response(false).await;
    assert!(r.body == body, "chunked body echoed intact");
    let chunked_seen = upstream
        .seen()
        .last()
        .map(|s| s.header("transfer-encoding").join(","));
    assert_eq!(chunked_seen.as_deref(), Some("chunked"));

    // The body goes only after the interim answer: without it this would time out.
    client
        .send(b"POST /echo HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        .await;
    assert_eq!(client.response(false).await.status, 100);
    client.send(b"hello").await;
    let r = client.response(false).await;
    assert_eq!((r.status, r.body.as_slice()), (200, &b"hello"[..]));
    assert!(
        upstream.seen().last().unwrap().header("expect").is_empty(),
        "Expect is answered here, not forwarded"
    );
}

#[tokio::test]
async fn http10_clients_get_bodies_they_can_frame() {
    let (upstream, small, _, streamed) = app().await;
    let lean = start_lean(upstream.addr).await;

    // Chunked upstream body: an HTTP/1.0 client gets it raw, ended by the close.
    let mut client = Client::connect(lean).await;
    client.send(b"GET /chunked HTTP/1.0\r\n\r\n").await;
    let r = client.response(false).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("transfer-encoding"), None);
    assert_eq!(r.header("connection"), Some("close"));
    assert!(r.body == streamed, "close-delimited body intact");
    assert!(client.closed().await);
    let host = upstream.seen().last().unwrap().header("host").join(",");
    assert_eq!(host, upstream.addr.to_string(), "Host added for HTTP/1.0");

    // Keep-alive asked for and a Content-Length body: the connection stays.
    let mut client = Client::connect(lean).await;
    for _ in 0..2 {
        client
            .send(b"GET /small HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .await;
        let r = client.response(false).await;
        assert_eq!(r.body, small);
        assert_eq!(r.header("connection"), Some("keep-alive"));
    }

    // Without keep-alive the connection closes after a Content-Length body too.
    let mut client = Client::connect(lean).await;
    client.send(b"GET /small HTTP/1.0\r\n\r\n").await;
    assert_eq!(client.response(false).await.body, small);
    assert!(client.closed().await);
}

#[tokio::test]
async fn hop_by_hop_fields_stay_on_their_side() {
    let (upstream, ..) = app().await;
    let lean = start_lean(upstream.addr).await;
    let mut client = Client::connect(lean).await;
    client
        .send(
            b"GET /headers HTTP/1.1\r\nHost: app.test\r\nConnection: keep-alive, X-Hop\r\n\
              X-Hop: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nUpgrade: h2c\r\n\
              Proxy-Connection: keep-alive\r\nX-End: 2\r\n\r\n",
        )
        .await;
    assert_eq!(client.response(false).await.status, 200);
    let seen = upstream.seen().pop().unwrap();
    for hop in [
        "x-hop",
        "keep-alive",
        "te",
        "upgrade",
        "proxy-connection",
        "connection",
    ] {
        assert!(seen.header(hop).is_empty(), "{hop} forwarded: {seen:?}");
    }
    assert_eq!(seen.header("x-end"), ["2"]);

    // And from the app: its connection options and the fields they name stop here; an
    // HTTP/1.0-style body (no length, ended by the close) reaches a 1.1 client chunked.
    let (app, _head) = support::raw::one_shot_app(
        b"HTTP/1.0 200 OK\r\nConnection: X-App-Hop\r\nX-App-Hop: 1\r\nKeep-Alive: timeout=1\r\n\
          X-App-End: 2\r\n\r\nbody until close",
    )
    .await;
    let lean = start_lean(app).await;
    let mut client = Client::connect(lean).await;
    client.send(&get("/")).await;
    let r = client.response(false).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-app-hop"), None);
    assert_eq!(r.header("keep-alive"), None);
    assert_eq!(r.header("x-app-end"), Some("2"));
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.body, b"body until close");
}

#[tokio::test]
async fn upstream_failures_answer_502_and_a_broken_body_closes_the_connection() {
    // Nothing listens there: 502, and the client's connection stays usable.
    let gone = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gone_addr = gone.local_addr().unwrap();
    drop(gone);
    let lean = start_lean(gone_addr).await;
    let mut client = Client::connect(lean).await;
    for _ in 0..2 {
        client.send(&get("/")).await;
        let r = client.response(false).await;
        assert_eq!(r.status, 502);
        assert_eq!(r.header("content-length"), Some("0"));
    }

    // An answer that is not HTTP.
    let (app, _) = support::raw::one_shot_app(b"SSH-2.0-OpenSSH_9.6\r\n\r\n").await;
    let mut client = Client::connect(start_lean(app).await).await;
    client.send(&get("/")).await;
    assert_eq!(client.response(false).await.status, 502);

    // A transfer coding the proxy cannot frame.
    let (app, _) =
        support::raw::one_shot_app(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nxxxx").await;
    let mut client = Client::connect(start_lean(app).await).await;
    client.send(&get("/")).await;
    assert_eq!(client.response(false).await.status, 502);

    // The app dies mid-body: the head went out, so only closing tells the client.
    let (app, _) =
        support::raw::one_shot_app(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b")
            .await;
    let mut client = Client::connect(start_lean(app).await).await;
    client.send(&get("/")).await;
    let end = loop {
        if let Some(i) = client.buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        assert!(client.fill().await, "closed before a head");
    };
    assert!(client.buf.starts_with(b"HTTP/1.1 200"));
    client.buf.drain(..end + 4);
    while client.fill().await {}
    assert_eq!(client.buf, b"only ten b", "the 10 bytes, then the close");
}

/// An app that answers one request per connection with a keep-alive response and then
/// closes the connection, as an app server with a short idle timeout does.
async fn one_request_per_connection_app() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&connections);
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                continue;
            };
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                let end = loop {
                    if let Some(i) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                };
                let head = String::from_utf8_lossy(&seen[..end]).to_ascii_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap_or(0));
                while seen.len() < end + length {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tcp
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await;
            });
        }
    });
    (addr, connections)
}

#[tokio::test]
async fn a_pooled_connection_the_app_closed_is_not_used() {
    let (app, connections) = one_request_per_connection_app().await;
    let lean = start_lean(app).await;
    let mut client = Client::connect(lean).await;
    client.send(&get("/")).await;
    assert_eq!(client.response(false).await.body, b"ok");
    // Let the app's FIN arrive at the idle pooled connection.
    tokio::time::sleep(Duration::from_millis(200)).await;

    // A request with a body cannot be sent twice: only the check at checkout saves it.
    client
        .send(b"POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 4\r\n\r\nbody")
        .await;
    let r = client.response(false).await;
    assert_eq!((r.status, r.body.as_slice()), (200, &b"ok"[..]));
    client.send(&get("/")).await;
    assert_eq!(client.response(false).await.status, 200);
    assert_eq!(connections.load(Ordering::SeqCst), 3);
}

/// Runs `wire` through the proxy's chunked decoder in reads of the given sizes, as a
/// socket might deliver it; the data and the bytes left after the body.
fn dechunk_in_reads(wire: &[u8], reads: &[usize]) -> Result<(Vec<u8>, usize), String> {
    let mut decoder = lean_proxy::Dechunker::default();
    let mut data = Vec::new();
    let mut offset = 0;
    for &size in reads.iter().chain(std::iter::repeat(&usize::MAX)) {
        let take = size.min(wire.len() - offset);
        if take == 0 {
            return Err("body ended early".into());
        }
        // Some bytes before the read, as after a response head in the same buffer.
        let mut buf = b"HEAD".to_vec();
        buf.extend_from_slice(&wire[offset..offset + take]);
        let step = decoder
            .decode_in_place(&mut buf, 4, 4 + take)
            .map_err(|e| e.to_string())?;
        data.extend_from_slice(&buf[4..4 + step.data]);
        offset += step.consumed;
        if step.done {
            return Ok((data, take - step.consumed));
        }
        assert_eq!(step.consumed, take, "everything is used until the end");
    }
    unreachable!()
}

#[test]
fn the_chunked_decoder_handles_every_split_extensions_and_trailers() {
    let wire: &[u8] = b"5\r\nhello\r\n1A;name=\"va;lue\"\r\nabcdefghijklmnopqrstuvwxyz\r\n\
          0003\n, !\n0;last\r\nX-Checksum: 1\r\nX-More: 2\r\n\r\nNEXT";
    let want = b"helloabcdefghijklmnopqrstuvwxyz, !".to_vec();
    let body_len = wire.len() - 4;
    for split in 1..wire.len() {
        // The second read brings the rest, "NEXT" included, unless the first ended the body.
        let left = if split < body_len {
            4
        } else {
            split - body_len
        };
        assert_eq!(
            dechunk_in_reads(wire, &[split]),
            Ok((want.clone(), left)),
            "split at {split}"
        );
    }
    assert_eq!(dechunk_in_reads(wire, &[1; 200]), Ok((want.clone(), 0)));

    for bad in [
        &b"x\r\n"[..],
        b"\r\n",
        b"5\r\nhelloX\r\n0\r\n\r\n",
        b"fffffffffffffffff\r\n",
    ] {
        assert!(dechunk_in_reads(bad, &[bad.len()]).is_err(), "{bad:?}");
    }
}
