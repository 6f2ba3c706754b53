//! Raw HTTP/1 over a loopback TCP socket, for what a well-behaved client library cannot
//! send: HTTP/1.0, pipelined requests, slow or oversized heads, duplicate headers.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Connects to `addr`.
pub async fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.expect("connect")
}

/// Sends `request` in one write (a write error is ignored: a server may answer and close
/// before a huge request is sent) and returns everything read until the server closes or
/// `limit` passes.
pub async fn exchange(addr: SocketAddr, request: &[u8], limit: Duration) -> String {
    let mut tcp = connect(addr).await;
    let _ = tcp.write_all(request).await;
    read_until_close(&mut tcp, limit).await
}

/// Everything `tcp` yields until the peer closes (or resets) or `limit` passes.
pub async fn read_until_close(tcp: &mut TcpStream, limit: Duration) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(limit, async {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads from `tcp` into `text` until it holds `needle`; `false` if the connection ends or
/// `limit` passes first.
pub async fn read_until(
    tcp: &mut TcpStream,
    text: &mut String,
    limit: Duration,
    needle: &str,
) -> bool {
    let found = tokio::time::timeout(limit, async {
        let mut buf = [0u8; 4096];
        while !text.contains(needle) {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => text.push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
        true
    })
    .await;
    found.unwrap_or(false)
}

/// Whether the peer closed `tcp` within `limit` (reading and dropping what arrives).
pub async fn closed_within(tcp: &mut TcpStream, limit: Duration) -> bool {
    tokio::time::timeout(limit, async {
        let mut buf = [0u8; 4096];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// The status codes of the responses in `text`, in order.
pub fn statuses(text: &str) -> Vec<u16> {
    text.match_indices("HTTP/1.1 ")
        .filter_map(|(i, m)| text.get(i + m.len()..i + m.len() + 3)?.parse().ok())
        .collect()
}

/// The head of the first response in `text`, lowercased, and what follows it.
pub fn split_response(text: &str) -> (String, &str) {
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text, ""));
    (head.to_ascii_lowercase(), body)
}

/// An app on 127.0.0.1 that serves one request on one connection: it returns the request
/// head exactly as received (which a parsing server like hyper would normalise), and
/// answers `reply`.
pub async fn one_shot_app(reply: &'static [u8]) -> (SocketAddr, tokio::task::JoinHandle<String>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
        let _ = tcp.write_all(reply).await;
        let _ = tcp.shutdown().await;
        let text = String::from_utf8_lossy(&seen).into_owned();
        text.split("\r\n\r\n")
            .next()
            .unwrap_or_default()
            .to_string()
    });
    (addr, task)
}

/// One request a [`scripted_app`] read.
#[derive(Debug, Clone)]
pub struct RawRequest {
    /// Which TCP connection it came on (0 for the first one accepted).
    pub connection: usize,
    /// The head as received, without the blank line.
    pub head: String,
    /// The body (`Content-Length` framed, or de-chunked).
    pub body: Vec<u8>,
    /// The trailer section of a chunked body, as received.
    pub trailers: String,
}

/// Requests seen by a [`scripted_app`], in arrival order.
pub type RawLog = std::sync::Arc<std::sync::Mutex<Vec<RawRequest>>>;

/// An app on 127.0.0.1 that keeps connections open and, for every request (head plus a
/// `Content-Length` or chunked body), does what `script(request, number on its
/// connection)` says: `Some(bytes)` is written as the answer, `None` closes the connection
/// without one.
pub async fn scripted_app(
    script: impl Fn(&RawRequest, usize) -> Option<Vec<u8>> + Send + Sync + 'static,
) -> (SocketAddr, RawLog) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log = RawLog::default();
    let script = std::sync::Arc::new(script);
    let seen = std::sync::Arc::clone(&log);
    tokio::spawn(async move {
        for connection in 0.. {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (script, seen) = (std::sync::Arc::clone(&script), std::sync::Arc::clone(&seen));
            tokio::spawn(async move {
                let mut conn = RawConnection {
                    tcp,
                    held: Vec::new(),
                };
                for number in 0.. {
                    let Some(mut request) = conn.read_request().await else {
                        return;
                    };
                    request.connection = connection;
                    seen.lock().unwrap().push(request.clone());
                    let Some(answer) = script(&request, number) else {
                        return;
                    };
                    if conn.tcp.write_all(&answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, log)
}

/// The app side of a [`scripted_app`] connection: bytes read but not yet parsed.
struct RawConnection {
    tcp: TcpStream,
    held: Vec<u8>,
}

impl RawConnection {
    /// Reads until `held` contains `needle`; returns where it starts (`None`: closed).
    async fn until(&mut self, needle: &[u8]) -> Option<usize> {
        let mut buf = [0u8; 16 * 1024];
        loop {
            if let Some(i) = self.held.windows(needle.len()).position(|w| w == needle) {
                return Some(i);
            }
            match self.tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.held.extend_from_slice(&buf[..n]),
            }
        }
    }

    /// Takes the first `n` held bytes, reading more as needed.
    async fn take(&mut self, n: usize) -> Option<Vec<u8>> {
        let mut buf = [0u8; 16 * 1024];
        while self.held.len() < n {
            match self.tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(read) => self.held.extend_from_slice(&buf[..read]),
            }
        }
        Some(self.held.drain(..n).collect())
    }

    async fn read_request(&mut self) -> Option<RawRequest> {
        let head_end = self.until(b"\r\n\r\n").await?;
        let head =
            String::from_utf8_lossy(&self.take(head_end + 4).await?[..head_end]).into_owned();
        let field = |name: &str| {
            head.lines()
                .filter_map(|line| line.split_once(':'))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim().to_ascii_lowercase())
        };
        let mut body = Vec::new();
        let mut trailers = String::new();
        if field("transfer-encoding").is_some_and(|te| te.ends_with("chunked")) {
            loop {
                let line_end = self.until(b"\r\n").await?;
                let line = self.take(line_end + 2).await?;
                let size = std::str::from_utf8(&line[..line_end]).ok()?;
                let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
                if size == 0 {
                    let end = self.until(b"\r\n").await?;
                    if end > 0 {
                        let end = self.until(b"\r\n\r\n").await? + 2;
                        trailers = String::from_utf8_lossy(&self.held[..end]).into_owned();
                        self.take(end).await?;
                    }
                    self.take(2).await?;
                    break;
                }
                let chunk = self.take(size + 2).await?;
                body.extend_from_slice(&chunk[..size]);
            }
        } else {
            let length = field("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            body = self.take(length).await?;
        }
        Some(RawRequest {
            connection: 0,
            head,
            body,
            trailers,
        })
    }
}
