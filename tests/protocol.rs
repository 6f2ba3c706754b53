//! Protocol honesty on the proxy port: HTTP/1.0 framing, status codes that say what
//! happened (408/414/431/504), parser-level refusals that are logged and counted,
//! pipelining, duplicate `Content-Length` lines, trailers, `Expect: 100-continue`,
//! hop-by-hop fields and upgrades the app must not see, and bodies streamed both ways
//! at once.

mod support;

use std::time::Duration;

use support::raw::{connect, exchange, read_until, scripted_app, split_response, statuses};
use support::{Reply, SidecarBuilder, StandIn};
use tokio::io::AsyncWriteExt;

const PAGE: &str = "<html><body><released-page></released-page><p>end</p></body></html>";
const LIMIT: Duration = Duration::from_secs(10);

fn page_load_head(version: &str, path: &str) -> String {
    format!(
        "GET {path} HTTP/{version}\r\nhost: app.test\r\naccept: text/html\r\nsec-fetch-dest: document\r\n\
         x-forwarded-user: alice\r\nx-forwarded-email: alice@example.com\r\n\r\n"
    )
}

#[tokio::test]
async fn http10_clients_get_close_delimited_bodies_never_chunks() {
    let (_upstream, _standin, sidecar) = support::start(|seen| match seen.path.as_str() {
        // No Content-Length upstream: pingora would frame this as chunked for anyone.
        "/stream" => Reply::Stream {
            status: 200,
            headers: vec![("content-type".into(), "text/plain".into())],
            chunks: vec![
                (Duration::ZERO, "one ".into()),
                (Duration::from_millis(50), "two".into()),
            ],
        },
        _ => Reply::html(PAGE),
    })
    .await;

    let text = exchange(sidecar.listen, page_load_head("1.0", "/").as_bytes(), LIMIT).await;
    let (head, body) = split_response(&text);
    assert!(head.starts_with("http/1.1 200"), "{text}");
    assert!(!head.contains("transfer-encoding"), "{head}");
    assert!(!head.contains("connection: keep-alive"), "{head}");
    assert!(body.starts_with("<html>"), "chunk framing in {body:?}");
    assert!(body.ends_with("</html>"), "{body:?}");
    assert_eq!(support::tokens_in(body).len(), 1, "{body}");

    let text = exchange(
        sidecar.listen,
        b"GET /stream HTTP/1.0\r\nhost: app.test\r\n\r\n",
        LIMIT,
    )
    .await;
    let (head, body) = split_response(&text);
    assert!(!head.contains("transfer-encoding"), "{head}");
    assert_eq!(body, "one two");

    // HTTP/1.1 clients keep chunked framing for the same rewritten page.
    let text = exchange(
        sidecar.listen,
        page_load_head("1.1", "/")
            .replace("\r\n\r\n", "\r\nconnection: close\r\n\r\n")
            .as_bytes(),
        LIMIT,
    )
    .await;
    assert!(
        split_response(&text)
            .0
            .contains("transfer-encoding: chunked"),
        "{text}"
    );
}

#[tokio::test]
async fn oversized_heads_get_414_and_431_and_are_logged_and_counted() {
    let (upstream, _standin, sidecar) = support::start(|_| Reply::html(PAGE)).await;

    let long_uri = format!(
        "GET /{} HTTP/1.1\r\nhost: a\r\n\r\n",
        "u".repeat(100 * 1024)
    );
    let huge_field = format!(
        "GET / HTTP/1.1\r\nhost: a\r\nx-big: {}\r\n\r\n",
        "h".repeat(1024 * 1024)
    );
    let many: String = (0..300).map(|i| format!("x-{i}: v\r\n")).collect();
    let many_fields = format!("GET / HTTP/1.1\r\nhost: a\r\n{many}\r\n");
    for (request, want) in [(long_uri, 414), (huge_field, 431), (many_fields, 431)] {
        let text = exchange(sidecar.listen, request.as_bytes(), LIMIT).await;
        assert_eq!(statuses(&text), [want], "{}", &text[..text.len().min(300)]);
        assert!(split_response(&text).0.contains("connection: close"));
    }
    // A head pingora's own parser refuses (400) is logged and counted too.
    let text = exchange(
        sidecar.listen,
        b"GET / HTTP/1.1\r\nbad header\r\n\r\n",
        LIMIT,
    )
    .await;
    assert_eq!(statuses(&text), [400], "{text}");

    for (series, want) in [
        (
            r#"released_sidecar_rejected_requests_total{reason="uri_too_long"}"#,
            1.0,
        ),
        (
            r#"released_sidecar_rejected_requests_total{reason="headers_too_large"}"#,
            2.0,
        ),
        (
            r#"released_sidecar_rejected_requests_total{reason="bad_request"}"#,
            1.0,
        ),
        (
            r#"released_sidecar_requests_total{code="414",route=""}"#,
            1.0,
        ),
        (
            r#"released_sidecar_requests_total{code="431",route=""}"#,
            2.0,
        ),
        (
            r#"released_sidecar_requests_total{code="400",route=""}"#,
            1.0,
        ),
    ] {
        assert!(
            sidecar.wait_for_metric(series, |v| v == want).await,
            "{series} != {want}:\n{}",
            sidecar.metrics().await
        );
    }
    let logs = sidecar.settled_logs().await;
    for status in ["status=414", "status=431", "status=400"] {
        assert!(
            logs.contains(status),
            "no access line with {status}:\n{logs}"
        );
    }
    assert!(!logs.contains("ERROR"), "{logs}");
    assert!(upstream.seen().is_empty(), "refused heads reached the app");
}

#[tokio::test]
async fn an_app_that_times_out_before_its_head_gets_504() {
    let (_upstream, _standin, sidecar) = support::start_with(
        |_| Reply::Delayed(Duration::from_secs(3), Box::new(Reply::html(PAGE))),
        |b| b.extra("timeouts: { upstream_read: 300ms }"),
    )
    .await;
    let resp = support::client()
        .get(sidecar.url("/slow"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 504);
    assert!(resp.text().await.unwrap().starts_with("504 "));
    let logs = sidecar.settled_logs().await;
    assert!(
        !logs.contains("ERROR"),
        "an app fault is a warning:\n{logs}"
    );
    assert!(logs.contains("WARN"), "{logs}");
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let (_upstream, _standin, sidecar) =
        support::start(|seen| Reply::with(200, "text/plain", format!("path={}", seen.path))).await;
    let requests = "GET /first HTTP/1.1\r\nhost: a\r\n\r\nGET /second HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n";
    let text = exchange(sidecar.listen, requests.as_bytes(), LIMIT).await;
    assert_eq!(statuses(&text), [200, 200], "{text}");
    let first = text.find("path=/first").expect("first answered");
    let second = text.find("path=/second").expect("second answered");
    assert!(first < second, "{text}");
}

#[tokio::test]
async fn duplicate_identical_content_length_reaches_the_app_once() {
    let (app, head) = support::raw::one_shot_app(
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
    )
    .await;
    let standin = StandIn::start(support::sidecar::SECRET).await;
    let sidecar = SidecarBuilder::new(&format!("http://{app}"), &standin.url())
        .start()
        .await;
    let request = "POST /upload HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\ncontent-length: 5\r\n\
                   connection: close\r\n\r\nhello";
    let text = exchange(sidecar.listen, request.as_bytes(), LIMIT).await;
    assert_eq!(statuses(&text), [200], "{text}");
    let head = tokio::time::timeout(LIMIT, head)
        .await
        .unwrap()
        .unwrap()
        .to_ascii_lowercase();
    assert_eq!(head.matches("content-length").count(), 1, "{head}");
    assert!(head.contains("content-length: 5"), "{head}");
}

/// The body of a chunked response `text` (after its head), de-chunked.
fn dechunk(text: &str) -> String {
    let (_, mut rest) = text.split_once("\r\n\r\n").unwrap_or(("", ""));
    let mut body = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || after.len() < size {
            break;
        }
        body.push_str(&after[..size]);
        rest = after[size..].strip_prefix("\r\n").unwrap_or(&after[size..]);
    }
    body
}

#[tokio::test]
async fn trailers_are_dropped_both_ways_and_bodies_and_connections_survive() {
    let (app, seen) = scripted_app(|_, _| {
        Some(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n\
              5\r\nhello\r\n6\r\n world\r\n0\r\nx-checksum: app-trailer-value\r\n\r\n"
                .to_vec(),
        )
    })
    .await;
    let (_standin, sidecar) = support::in_front_of(app, "").await;

    let mut client = connect(sidecar.listen).await;
    for i in 0..2 {
        client
            .write_all(
                b"POST /up HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n\
                  5\r\nhello\r\n0\r\nx-signature: client-trailer-value\r\n\r\n",
            )
            .await
            .unwrap();
        let mut text = String::new();
        assert!(
            read_until(&mut client, &mut text, LIMIT, "0\r\n\r\n").await,
            "{text}"
        );
        assert_eq!(statuses(&text), [200], "request {i}: {text}");
        assert_eq!(dechunk(&text), "hello world", "{text}");
        assert!(!text.contains("app-trailer-value"), "{text}");
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    for request in &seen {
        assert_eq!(request.body, b"hello");
        assert!(request.trailers.is_empty(), "{:?}", request.trailers);
        assert!(!request.head.contains("client-trailer-value"));
    }
    assert_eq!(seen[1].connection, 0, "the app's connection was kept");
}

#[tokio::test]
async fn expect_100_continue_reaches_the_app_and_its_100_reaches_the_client() {
    let (upstream, _standin, sidecar) = support::start(|_| Reply::EchoBody).await;
    let mut client = connect(sidecar.listen).await;
    client
        .write_all(
            b"POST /up HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\
              connection: close\r\n\r\n",
        )
        .await
        .unwrap();
    // The body is held back until the app (through the sidecar) asks for it.
    let mut text = String::new();
    assert!(
        read_until(
            &mut client,
            &mut text,
            LIMIT,
            "HTTP/1.1 100 Continue\r\n\r\n"
        )
        .await,
        "{text}"
    );
    client.write_all(b"hello").await.unwrap();
    text.push_str(&support::raw::read_until_close(&mut client, LIMIT).await);
    assert_eq!(statuses(&text), [100, 200], "{text}");
    assert!(text.ends_with("hello"), "{text}");
    assert_eq!(upstream.seen()[0].header("expect"), ["100-continue"]);
}

#[tokio::test]
async fn connect_is_refused_with_405_logged_and_counted() {
    let (upstream, _standin, sidecar) = support::start(|_| Reply::html(PAGE)).await;
    let text = exchange(
        sidecar.listen,
        b"CONNECT app.test:443 HTTP/1.1\r\nhost: app.test:443\r\n\r\n",
        LIMIT,
    )
    .await;
    assert_eq!(statuses(&text), [405], "{text}");
    assert!(
        sidecar
            .wait_for_metric(
                r#"released_sidecar_rejected_requests_total{reason="method_not_allowed"}"#,
                |v| v == 1.0
            )
            .await,
        "{}",
        sidecar.metrics().await
    );
    assert!(sidecar.settled_logs().await.contains("status=405"));
    assert!(upstream.seen().is_empty());
}

#[tokio::test]
async fn hop_by_hop_and_connection_named_fields_never_reach_the_app() {
    let (upstream, _standin, sidecar) =
        support::start(|_| Reply::with(200, "text/plain", "ok")).await;
    let text = exchange(
        sidecar.listen,
        b"GET / HTTP/1.1\r\nhost: a\r\nconnection: close, x-private\r\nx-private: 1\r\n\
          keep-alive: timeout=5\r\nproxy-connection: keep-alive\r\nte: trailers\r\n\
          proxy-authorization: Basic c2VjcmV0\r\nupgrade: h2c\r\nhttp2-settings: AAAA\r\n\
          x-end-to-end: kept\r\n\r\n",
        LIMIT,
    )
    .await;
    assert_eq!(statuses(&text), [200], "{text}");
    let seen = &upstream.seen()[0];
    assert_eq!(seen.header("x-end-to-end"), ["kept"]);
    for hop in [
        "x-private",
        "keep-alive",
        "proxy-connection",
        "te",
        "proxy-authorization",
        "upgrade",
        "http2-settings",
    ] {
        assert!(seen.header(hop).is_empty(), "{hop} reached the app");
    }
}

#[tokio::test]
async fn naming_a_protected_field_in_connection_is_refused_with_400() {
    let (upstream, _standin, sidecar) =
        support::start(|_| Reply::with(200, "text/plain", "ok")).await;
    // Dropping X-Forwarded-For on the client's say-so would let it hide from the app's log.
    let text = exchange(
        sidecar.listen,
        b"GET / HTTP/1.1\r\nhost: a\r\nconnection: x-forwarded-for\r\n\
          x-forwarded-for: 10.0.0.1\r\n\r\n",
        LIMIT,
    )
    .await;
    assert_eq!(statuses(&text), [400], "{text}");
    assert!(upstream.seen().is_empty());
}

#[tokio::test]
async fn an_upgrade_other_than_websocket_is_not_forwarded_and_a_101_for_it_is_a_502() {
    let (app, seen) = scripted_app(|_, _| {
        Some(
            b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: h2c\r\n\r\n"
                .to_vec(),
        )
    })
    .await;
    let (_standin, sidecar) = support::in_front_of(app, "").await;
    let text = exchange(
        sidecar.listen,
        b"GET / HTTP/1.1\r\nhost: a\r\nconnection: upgrade\r\nupgrade: h2c\r\n\r\n",
        LIMIT,
    )
    .await;
    assert_eq!(statuses(&text), [502], "{text}");
    let head = seen.lock().unwrap()[0].head.to_ascii_lowercase();
    assert!(!head.contains("upgrade"), "{head}");
}

#[tokio::test]
async fn an_upload_streams_to_the_app_while_its_answer_streams_back() {
    let (_upstream, _standin, sidecar) = support::start(|_| Reply::StreamEcho).await;
    let mut client = connect(sidecar.listen).await;
    client
        .write_all(b"POST /echo HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    // Each piece is echoed before the next is sent: neither side waits for the other's end.
    let mut text = String::new();
    for piece in ["first-piece", "second-piece", "third-piece"] {
        client
            .write_all(format!("{:x}\r\n{piece}\r\n", piece.len()).as_bytes())
            .await
            .unwrap();
        assert!(
            read_until(&mut client, &mut text, LIMIT, piece).await,
            "{piece}: {text}"
        );
    }
    client.write_all(b"0\r\n\r\n").await.unwrap();
    text.push_str(&support::raw::read_until_close(&mut client, LIMIT).await);
    assert_eq!(statuses(&text), [200], "{text}");
    assert_eq!(dechunk(&text), "first-piecesecond-piecethird-piece");
}
