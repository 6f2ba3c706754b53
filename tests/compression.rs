//! Compressed pages keep streaming (SPEC §2.6, issue 22): whatever the app has sent, the
//! client can decode, rewritten, while the app is still working on the rest, whether the
//! page goes out as gzip, br or uncompressed.

mod support;

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use support::{client, navigation, Reply, SidecarBuilder, StandIn, Upstream};
use tokio::sync::mpsc;

/// How long the client waits for the first part before the test fails (the app waits
/// for the test's signal, not for a timer, so a pass never depends on this).
const FIRST_PART_WAIT: Duration = Duration::from_secs(10);

/// The part of a page an app flushes before it goes off to work (~2.7 KB): the head, a
/// heading, the embed tag and 40 rows; it ends after a complete tag, so the rewrite has
/// nothing to hold back.
fn first_part() -> String {
    let mut s = String::from(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Orders</title>\
<link rel=\"stylesheet\" href=\"/static/site.css\"></head>\n<body><h1>Open orders</h1>\n\
<released-page account=\"a\"></released-page>\n<table>\n",
    );
    for i in 0..40 {
        s.push_str(&format!(
            "<tr><td>order {i:04}</td><td>pending review</td><td>{}</td></tr>\n",
            i * 37 % 1000
        ));
    }
    s
}

/// What the app sends once its slow work is done.
fn rest() -> String {
    let mut s = String::new();
    for i in 40..400 {
        s.push_str(&format!(
            "<tr><td>order {i:04}</td><td>shipped</td><td>{}</td></tr>\n",
            i * 37 % 1000
        ));
    }
    s.push_str("</table></body></html>\n");
    s
}

/// Decodes a response body incrementally, as a browser does.
enum Decoder {
    Identity(Vec<u8>),
    Gzip(Box<flate2::write::GzDecoder<Vec<u8>>>),
    Brotli(Box<brotli::DecompressorWriter<Vec<u8>>>),
}

impl Decoder {
    fn new(content_encoding: Option<&str>) -> Self {
        match content_encoding {
            None => Decoder::Identity(Vec::new()),
            Some("gzip") => Decoder::Gzip(Box::new(flate2::write::GzDecoder::new(Vec::new()))),
            // brotli-decompressor's writer keeps what overflows its output buffer until
            // more input comes; a buffer larger than the page avoids that.
            Some("br") => Decoder::Brotli(Box::new(brotli::DecompressorWriter::new(
                Vec::new(),
                1 << 16,
            ))),
            Some(other) => panic!("unexpected content-encoding {other}"),
        }
    }

    /// Feeds the bytes received; everything they let a decoder produce is decoded.
    fn feed(&mut self, bytes: &[u8]) {
        match self {
            Decoder::Identity(out) => out.extend_from_slice(bytes),
            Decoder::Gzip(d) => d.write_all(bytes).and_then(|()| d.flush()).unwrap(),
            Decoder::Brotli(d) => d.write_all(bytes).and_then(|()| d.flush()).unwrap(),
        }
    }

    fn decoded(&self) -> &[u8] {
        match self {
            Decoder::Identity(out) => out,
            Decoder::Gzip(d) => d.get_ref(),
            Decoder::Brotli(d) => d.get_ref(),
        }
    }

    /// The whole body; fails unless the stream was properly terminated.
    fn finish(self) -> Vec<u8> {
        match self {
            Decoder::Identity(out) => out,
            Decoder::Gzip(d) => d.finish().expect("a complete gzip stream"),
            Decoder::Brotli(d) => d.into_inner().expect("a complete brotli stream"),
        }
    }
}

/// An app whose pages are fed, chunk by chunk, by the test: each request takes the next
/// queued channel.
async fn channel_app() -> (
    Upstream,
    Arc<Mutex<VecDeque<mpsc::UnboundedReceiver<Bytes>>>>,
) {
    let queue: Arc<Mutex<VecDeque<mpsc::UnboundedReceiver<Bytes>>>> = Arc::default();
    let bodies = Arc::clone(&queue);
    let upstream = Upstream::start(move |_| {
        let chunks = bodies
            .lock()
            .unwrap()
            .pop_front()
            .expect("a body queued for this request");
        Reply::Channel {
            status: 200,
            headers: vec![("content-type".into(), "text/html; charset=utf-8".into())],
            chunks,
        }
    })
    .await;
    (upstream, queue)
}

/// A client accepting `accept_encoding` must decode the whole rewritten first part while
/// the app holds the rest back, then the whole page once the app finishes.
async fn first_part_is_readable_while_the_app_works(accept_encoding: Option<&str>) {
    let (upstream, queue) = channel_app().await;
    let standin = StandIn::start(support::sidecar::SECRET).await;
    let sidecar = SidecarBuilder::new(&upstream.url(), &standin.url())
        .start()
        .await;
    let (app, body) = mpsc::unbounded_channel();
    queue.lock().unwrap().push_back(body);
    app.send(Bytes::from(first_part())).unwrap();

    let mut request = client()
        .get(sidecar.url("/orders"))
        .headers(navigation("alice", "alice@example.com"));
    if let Some(accept) = accept_encoding {
        request = request.header("accept-encoding", accept);
    }
    let mut response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    let coding = response
        .headers()
        .get("content-encoding")
        .map(|v| v.to_str().unwrap().to_string());
    assert_eq!(coding.as_deref(), accept_encoding, "the negotiated coding");
    let token = standin.issued()[0].token.clone().unwrap();
    let tagged = format!("<released-page account=\"a\" auth-token=\"{token}\">");
    let want_first = first_part().replace("<released-page account=\"a\">", &tagged);

    let mut decoder = Decoder::new(coding.as_deref());
    let mut received = 0;
    let complete = tokio::time::timeout(FIRST_PART_WAIT, async {
        while decoder.decoded().len() < want_first.len() {
            match response.chunk().await {
                Ok(Some(bytes)) => {
                    received += bytes.len();
                    decoder.feed(&bytes);
                }
                _ => return false,
            }
        }
        true
    })
    .await
    .unwrap_or(false);
    assert!(
        complete,
        "{accept_encoding:?}: while the app works the client got {received} bytes that decode to \
         {} of the {} bytes the app sent (rewritten)",
        decoder.decoded().len(),
        want_first.len()
    );
    assert_eq!(
        String::from_utf8_lossy(decoder.decoded()),
        want_first,
        "{accept_encoding:?}"
    );

    app.send(Bytes::from(rest())).unwrap();
    drop(app);
    while let Some(bytes) = response.chunk().await.unwrap() {
        decoder.feed(&bytes);
    }
    let page = String::from_utf8(decoder.finish()).unwrap();
    assert_eq!(
        page,
        format!("{want_first}{}", rest()),
        "{accept_encoding:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_pages_stream_what_the_app_sent_before_it_finishes() {
    first_part_is_readable_while_the_app_works(Some("gzip")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brotli_pages_stream_what_the_app_sent_before_it_finishes() {
    first_part_is_readable_while_the_app_works(Some("br")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uncompressed_pages_stream_what_the_app_sent_before_it_finishes() {
    first_part_is_readable_while_the_app_works(None).await;
}
