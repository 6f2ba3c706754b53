//! Protocol honesty on the proxy port: HTTP/1.0 framing, status codes that say what
//! happened (408/414/431/504), parser-level refusals that are logged and counted,
//! pipelining, and duplicate `Content-Length` lines.

mod support;

use std::time::Duration;

use support::raw::{exchange, split_response, statuses};
use support::{Reply, SidecarBuilder, StandIn};

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
