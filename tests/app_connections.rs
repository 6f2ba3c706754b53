//! Connections to the app: kept alive and reused, at most `upstream_keepalive` of them
//! idle per worker, closed after `timeouts.upstream_idle`, and a request sent a second time
//! only as the README's "Retries to the app" says: an idempotent request whose reused
//! connection the app closed before answering.

mod support;

use std::time::Duration;

use support::raw::{scripted_app, RawLog};
use support::{client, Reply};

/// Within this every expected change is seen.
const LIMIT: Duration = Duration::from_secs(10);

const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok";

/// An app that answers every request with the body it got (or `ok`), except the second
/// request on its first connection: that one it reads and then closes the connection
/// without an answer, as an app does when a keep-alive connection times out just as a
/// request arrives.
async fn app_dropping_the_second_request() -> (std::net::SocketAddr, RawLog) {
    scripted_app(|request, number| {
        if request.connection == 0 && number == 1 {
            return None;
        }
        let body: &[u8] = if request.body.is_empty() {
            b"ok"
        } else {
            &request.body
        };
        let mut answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        answer.extend_from_slice(body);
        Some(answer)
    })
    .await
}

/// (method, path, connection) of every request the app saw.
fn seen(log: &RawLog) -> Vec<(String, String, usize)> {
    log.lock()
        .unwrap()
        .iter()
        .map(|r| {
            let mut line = r.head.split(' ');
            let method = line.next().unwrap_or_default().to_string();
            let path = line.next().unwrap_or_default().to_string();
            (method, path, r.connection)
        })
        .collect()
}

#[tokio::test]
async fn a_get_the_app_dropped_on_a_reused_connection_is_sent_again() {
    let (app, log) = app_dropping_the_second_request().await;
    let (_standin, sidecar) = support::in_front_of(app, "").await;
    let c = client();
    for path in ["/first", "/second"] {
        let resp = c.get(sidecar.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        assert_eq!(resp.text().await.unwrap(), "ok");
    }
    assert_eq!(
        seen(&log),
        [
            ("GET".into(), "/first".into(), 0),
            ("GET".into(), "/second".into(), 0),
            ("GET".into(), "/second".into(), 1),
        ]
    );
    assert!(
        sidecar.wait_for_log("retrying on another").await,
        "{}",
        sidecar.logs()
    );
}

#[tokio::test]
async fn an_idempotent_request_is_sent_again_with_its_body() {
    let (app, log) = app_dropping_the_second_request().await;
    let (_standin, sidecar) = support::in_front_of(app, "").await;
    let c = client();
    c.get(sidecar.url("/first")).send().await.unwrap();
    let resp = c
        .put(sidecar.url("/doc"))
        .body("the document")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "the document");
    let log = log.lock().unwrap().clone();
    assert_eq!(log.len(), 3);
    assert_eq!(
        (log[2].connection, log[2].body.as_slice()),
        (1, &b"the document"[..])
    );
}

#[tokio::test]
async fn a_post_the_app_dropped_is_not_sent_again() {
    let (app, log) = app_dropping_the_second_request().await;
    let (_standin, sidecar) = support::in_front_of(app, "").await;
    let c = client();
    c.get(sidecar.url("/first")).send().await.unwrap();
    let resp = c
        .post(sidecar.url("/order"))
        .body("buy one")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(
        seen(&log),
        [
            ("GET".into(), "/first".into(), 0),
            ("POST".into(), "/order".into(), 0),
        ]
    );
}

#[tokio::test]
async fn a_get_that_failed_on_a_fresh_connection_is_not_sent_again() {
    let (app, log) = scripted_app(|_, _| None).await;
    let (_standin, sidecar) = support::in_front_of(app, "").await;
    let resp = client().get(sidecar.url("/once")).send().await.unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(seen(&log), [("GET".into(), "/once".into(), 0)]);
}

#[tokio::test]
async fn at_most_upstream_keepalive_idle_connections_are_kept() {
    let (upstream, _standin, sidecar) = support::start_with(
        |_| {
            Reply::Delayed(
                Duration::from_millis(300),
                Box::new(Reply::with(200, "text/plain", "ok")),
            )
        },
        |b| b.extra("upstream_keepalive: 1"),
    )
    .await;
    // Three requests at once need three connections to the app; afterwards one may stay.
    let requests = (0..3).map(|i| {
        let url = sidecar.url(&format!("/{i}"));
        async move { client().get(url).send().await.unwrap().status() }
    });
    for status in futures_util::future::join_all(requests).await {
        assert_eq!(status, 200);
    }
    assert_eq!(upstream.connections(), 3);
    let closed = support::eventually(LIMIT, || async { upstream.closed() == 2 }).await;
    assert!(closed, "{} of 3 closed", upstream.closed());
    let resp = client().get(sidecar.url("/again")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(upstream.connections(), 3, "the kept one was reused");
}

#[tokio::test]
async fn idle_connections_to_the_app_close_after_upstream_idle() {
    let (upstream, _standin, sidecar) = support::start_with(
        |_| Reply::with(200, "text/plain", "ok"),
        |b| b.extra("timeouts: { upstream_idle: 500ms }"),
    )
    .await;
    let resp = client().get(sidecar.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    // No further traffic: only the idle timeout can close it.
    let closed = support::eventually(LIMIT, || async { upstream.closed() == 1 }).await;
    assert!(closed, "the idle connection stayed open");
}

#[tokio::test]
async fn a_response_read_to_its_end_leaves_the_connection_reusable() {
    let (app, log) = scripted_app(|_, _| Some(OK.to_vec())).await;
    let (_standin, sidecar) = support::in_front_of(app, "").await;
    let c = client();
    for _ in 0..5 {
        let resp = c.get(sidecar.url("/")).send().await.unwrap();
        assert_eq!(resp.text().await.unwrap(), "ok");
    }
    assert!(seen(&log).iter().all(|(_, _, connection)| *connection == 0));
}
