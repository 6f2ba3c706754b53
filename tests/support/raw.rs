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
