//! The streaming proxy (SPEC §2.7, §3, §6): traffic that gets no token is proxied
//! byte for byte and streamed both ways; upgraded connections are tunnels that end with
//! either side; failures and shutdown behave as operators expect.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use support::raw::{closed_within, connect};
use support::{client, free_port, Reply, SidecarBuilder, StandIn, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SECRET: &str = support::sidecar::SECRET;

fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_and_post_of_5_mb_pass_through_byte_exact() {
    let download = Bytes::from(pseudo_random(5 << 20, 7));
    let served = download.clone();
    let upstream = Upstream::start(move |req| match req.method.as_str() {
        "POST" => Reply::EchoBody,
        _ => Reply::with(200, "application/octet-stream", served.clone()),
    })
    .await;
    let standin = StandIn::start(SECRET).await;
    let sidecar = SidecarBuilder::new(&upstream.url(), &standin.url())
        .start()
        .await;

    let got = client().get(sidecar.url("/blob")).send().await.unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(
        got.headers()["content-length"],
        (5 << 20).to_string().as_str()
    );
    assert!(got.bytes().await.unwrap() == download, "GET body differs");

    let upload = pseudo_random(5 << 20, 11);
    let echoed = client()
        .post(sidecar.url("/upload"))
        .body(upload.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(echoed.status(), 200);
    assert!(echoed.bytes().await.unwrap() == upload, "POST body differs");
    assert!(
        standin.calls().is_empty(),
        "no token call for non-page-loads"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_gets_the_apps_headers_and_no_body() {
    const PAGE: &str = "<released-page></released-page>";
    let upstream = Upstream::start(|_| Reply::html(PAGE)).await;
    let standin = StandIn::start(SECRET).await;
    let sidecar = SidecarBuilder::new(&upstream.url(), &standin.url())
        .start()
        .await;
    let resp = client()
        .head(sidecar.url("/"))
        .headers(support::navigation("alice", "alice@example.com"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-length"],
        PAGE.len().to_string().as_str()
    );
    assert!(resp.bytes().await.unwrap().is_empty());
    assert_eq!(upstream.seen()[0].method, "HEAD");
    assert!(standin.calls().is_empty(), "HEAD never requests a token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sent_events_arrive_as_they_are_sent() {
    let upstream = Upstream::start(|_| Reply::Stream {
        status: 200,
        headers: vec![("content-type".into(), "text/event-stream".into())],
        chunks: (0..4)
            .map(|i| {
                (
                    Duration::from_millis(300),
                    Bytes::from(format!("data: {i}\n\n")),
                )
            })
            .collect(),
    })
    .await;
    let standin = StandIn::start(SECRET).await;
    let sidecar = SidecarBuilder::new(&upstream.url(), &standin.url())
        .start()
        .await;

    let started = Instant::now();
    let mut resp = client()
        .get(sidecar.url("/events"))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    let mut arrivals = Vec::new();
    let mut text = String::new();
    while let Some(chunk) = resp.chunk().await.unwrap() {
        arrivals.push(started.elapsed());
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert_eq!(text, "data: 0\n\ndata: 1\n\ndata: 2\n\ndata: 3\n\n");
    assert!(arrivals.len() >= 3, "events were batched: {arrivals:?}");
    assert!(
        arrivals[0] < Duration::from_millis(900),
        "first event held back until {:?}",
        arrivals[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_passes_through_and_echoes() {
    let upstream = Upstream::start(|_| Reply::WebSocketEcho).await;
    let standin = StandIn::start(SECRET).await;
    let sidecar = SidecarBuilder::new(&upstream.url(), &standin.url())
        .start()
        .await;

    let url = format!("ws://{}/socket", sidecar.listen);
    let (mut ws, response) = tokio_tungstenite::connect_async(url)
        .await
        .expect("ws handshake");
    assert_eq!(response.status(), 101);
    for msg in ["hello", "second message", &"x".repeat(100_000)] {
        ws.send(tokio_tungstenite::tungstenite::Message::text(msg))
            .await
            .unwrap();
        let echoed = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("echo in time")
            .unwrap()
            .unwrap();
        assert_eq!(echoed.into_text().unwrap().as_str(), msg);
    }
    ws.close(None).await.unwrap();
    assert!(standin.calls().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_upstream_gives_502_with_a_short_plain_body() {
    let standin = StandIn::start(SECRET).await;
    let closed = format!("http://127.0.0.1:{}", free_port());
    let sidecar = SidecarBuilder::new(&closed, &standin.url()).start().await;
    let resp = client()
        .get(sidecar.url("/anything"))
        .headers(support::navigation("alice", "alice@example.com"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    assert_eq!(resp.headers()["cache-control"], "no-store");
    // The connection ends after an error page, and the answer says so.
    assert_eq!(resp.headers()["connection"], "close");
    let body = resp.text().await.unwrap();
    assert!(
        body.len() < 100 && body.starts_with("502 Bad Gateway"),
        "{body:?}"
    );
    assert!(
        !body.contains("127.0.0.1"),
        "no internals in the error page"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_request_in_flight_then_exits_zero() {
    let upstream = Upstream::start(|_| {
        Reply::Delayed(
            Duration::from_millis(1500),
            Box::new(Reply::with(200, "text/plain", "slow but complete")),
        )
    })
    .await;
    let standin = StandIn::start(SECRET).await;
    let mut sidecar = SidecarBuilder::new(&upstream.url(), &standin.url())
        .start()
        .await;

    let url = sidecar.url("/slow");
    let in_flight = tokio::spawn(async move {
        client()
            .get(url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    assert!(
        sidecar
            .wait_for_metric("released_sidecar_in_flight_requests", |n| n == 1.0)
            .await,
        "the request is in flight"
    );
    sidecar.signal(libc::SIGTERM);

    let not_ready = support::eventually(Duration::from_secs(5), || async {
        let ready = client().get(sidecar.admin_url("/readyz")).send().await;
        ready.is_ok_and(|r| r.status() == 503)
    })
    .await;
    assert!(not_ready, "not ready while draining");
    let refused = support::eventually(Duration::from_secs(5), || async {
        std::net::TcpStream::connect(sidecar.listen).is_err()
    })
    .await;
    assert!(refused, "no new connections while draining");
    assert!(
        !in_flight.is_finished(),
        "all of it while the request is in flight"
    );
    assert_eq!(in_flight.await.unwrap(), "slow but complete");
    let status = sidecar
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("exits after the drain");
    assert_eq!(status.code(), Some(0), "{}", sidecar.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstream_is_verified_against_the_configured_ca() {
    let (upstream, ca_pem) =
        Upstream::start_tls(|_| Reply::with(200, "text/plain", "over tls")).await;
    let standin = StandIn::start(SECRET).await;
    let sidecar = SidecarBuilder::new(&upstream.url(), &standin.url())
        .file("app-ca.pem", &ca_pem)
        .extra("upstream_tls: { ca_file: \"{dir}/app-ca.pem\" }")
        .start()
        .await;
    let resp = client().get(sidecar.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "over tls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstream_with_an_unknown_certificate_is_refused() {
    let (upstream, _ca) = Upstream::start_tls(|_| Reply::with(200, "text/plain", "over tls")).await;
    let standin = StandIn::start(SECRET).await;
    let sidecar = SidecarBuilder::new(&upstream.url(), &standin.url())
        .start()
        .await;
    let resp = client().get(sidecar.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 502);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_kept_alive() {
    let upstream = Upstream::start(|_| Reply::with(200, "application/json", "{}")).await;
    let standin = StandIn::start(SECRET).await;
    let sidecar = SidecarBuilder::new(&upstream.url(), &standin.url())
        .start()
        .await;
    let c = client();
    for _ in 0..20 {
        let resp = c.get(sidecar.url("/api")).send().await.unwrap();
        assert_eq!(resp.bytes().await.unwrap(), "{}");
    }
    assert_eq!(upstream.seen().len(), 20);
    assert!(
        upstream.connections() <= 2,
        "{} upstream connections for 20 sequential requests",
        upstream.connections()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_port_fails_the_start_with_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), "s").unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:{port}\nadmin: {{ listen: 127.0.0.1:{} }}\nupstream: http://127.0.0.1:1\n\
             released: {{ account_id: a, shared_secret_file: secret, api_url: http://127.0.0.1:1/t }}\n\
             identity: {{ user_id: {{ header: X-User }}, user_email: {{ header: X-Email }} }}\n",
            free_port()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_released-sidecar"))
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot listen on 127.0.0.1:{port} (listen)")),
        "{stderr}"
    );
}

/// An app that answers its first request with `101` and then echoes the tunnel's bytes;
/// it closes the tunnel itself after the first echo when `close_after_echo`. The receiver
/// resolves when the app saw the tunnel closed by the sidecar.
async fn tunnel_app(close_after_echo: bool) -> (SocketAddr, tokio::sync::oneshot::Receiver<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (closed, closed_seen) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let Ok((mut tcp, _)) = listener.accept().await else {
            return;
        };
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let switched = b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n";
        if tcp.write_all(switched).await.is_err() {
            return;
        }
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    let _ = closed.send(());
                    return;
                }
                Ok(n) => {
                    if tcp.write_all(&buf[..n]).await.is_err() || close_after_echo {
                        return;
                    }
                }
            }
        }
    });
    (addr, closed_seen)
}

/// Opens a tunnel through `sidecar` and checks one echo through it.
async fn open_tunnel(sidecar: &support::sidecar::Sidecar) -> TcpStream {
    let mut tcp = connect(sidecar.listen).await;
    tcp.write_all(
        b"GET /socket HTTP/1.1\r\nhost: a\r\nconnection: upgrade\r\nupgrade: websocket\r\n\
          sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let mut text = String::new();
    let mut buf = [0u8; 4096];
    let echoed = tokio::time::timeout(Duration::from_secs(10), async {
        let mut sent = false;
        loop {
            if !sent && text.contains("\r\n\r\n") {
                assert!(text.starts_with("HTTP/1.1 101"), "{text}");
                tcp.write_all(b"ping through the tunnel").await.unwrap();
                sent = true;
            }
            if text.ends_with("ping through the tunnel") {
                return;
            }
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => panic!("tunnel closed early: {text}"),
                Ok(n) => text.push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
    })
    .await;
    assert!(echoed.is_ok(), "no echo: {text}");
    tcp
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_ends_at_the_app_when_the_client_closes_it() {
    let (app, app_saw_close) = tunnel_app(false).await;
    let (_standin, sidecar) = support::in_front_of(app, "").await;
    let tunnel = open_tunnel(&sidecar).await;
    drop(tunnel);
    let closed = tokio::time::timeout(Duration::from_secs(10), app_saw_close).await;
    assert!(matches!(closed, Ok(Ok(()))), "the app's side stayed open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_ends_at_the_client_when_the_app_closes_it() {
    let (app, _app_saw_close) = tunnel_app(true).await;
    let (_standin, sidecar) = support::in_front_of(app, "").await;
    let mut tunnel = open_tunnel(&sidecar).await;
    assert!(
        closed_within(&mut tunnel, Duration::from_secs(10)).await,
        "the client's side stayed open"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tunnel_is_closed_after_the_upstream_read_timeout() {
    let (app, app_saw_close) = tunnel_app(false).await;
    let (_standin, sidecar) = support::in_front_of(app, "timeouts: { upstream_read: 1s }").await;
    let mut tunnel = open_tunnel(&sidecar).await;
    // Both ends stay silent: only the 1 s read timeout (not the client's 60 s) can end it.
    assert!(
        closed_within(&mut tunnel, Duration::from_secs(10)).await,
        "an idle tunnel outlived its timeout"
    );
    let closed = tokio::time::timeout(Duration::from_secs(10), app_saw_close).await;
    assert!(matches!(closed, Ok(Ok(()))), "the app's side stayed open");
}
