//! The token on every page load (SPEC §1, §2.4-7, §3): one call per page load, written
//! into the streaming HTML, and pages always served when Released misbehaves.

mod support;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use bytes::Bytes;
use support::standin::Behavior;
use support::{client, navigation, tokens_in, Reply, SidecarBuilder, StandIn, Upstream};

const SECRET: &str = support::sidecar::SECRET;

const PAGE: &str = "<html><body><released-page account=\"a\"></released-page>\
<p>hello</p><released-widget></released-widget><released-form/></body></html>";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_page_load_makes_one_call_and_every_tag_carries_its_token() {
    let (upstream, standin, sidecar) = support::start(|_| Reply::html(PAGE)).await;
    for i in 1..=3 {
        let resp = sidecar.page_load("/feedback").await;
        assert_eq!(resp.status(), 200);
        let body = resp.text().await.unwrap();
        let issued = standin.issued();
        assert_eq!(issued.len(), i, "one call per page load");
        let token = issued.last().unwrap().token.clone().unwrap();
        assert_eq!(tokens_in(&body), vec![token.clone(); 3], "{body}");
        assert_eq!(
            body,
            format!(
                "<html><body><released-page account=\"a\" auth-token=\"{token}\"></released-page>\
<p>hello</p><released-widget auth-token=\"{token}\"></released-widget><released-form auth-token=\"{token}\" /></body></html>"
            )
        );
    }
    let call = &standin.issued()[0];
    assert_eq!(
        call.authorization.as_deref(),
        Some(&*format!("Bearer {SECRET}"))
    );
    assert_eq!(
        call.body,
        serde_json::json!({"account_id": "acct-test", "user_id": "alice:40example:2ecom", "user_email": "alice@example.com"})
    );
    assert_eq!(upstream.seen().len(), 3);
    assert_eq!(
        sidecar
            .metric("released_sidecar_tags_rewritten_total")
            .await,
        9.0
    );
    assert_eq!(
        sidecar
            .metric("released_sidecar_token_requests_total{result=\"success\"}")
            .await,
        3.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profile_fields_follow_the_field_rules() {
    let (_upstream, standin, sidecar) = support::start(|_| Reply::html(PAGE)).await;
    let mut headers = navigation("bob", "bob@example.com");
    headers.insert(
        "x-forwarded-preferred-username",
        "é".repeat(250).parse().unwrap(),
    );
    headers.insert(
        "x-forwarded-avatar",
        "/relative/avatar.png".parse().unwrap(),
    );
    let body = sidecar.get_text("/", headers).await;
    assert_eq!(tokens_in(&body).len(), 3);
    let sent = &standin.issued()[0].body;
    assert_eq!(
        sent["profile"]["name"].as_str().unwrap().chars().count(),
        200
    );
    assert!(
        sent["profile"].get("avatar_url").is_none(),
        "bad avatar dropped: {sent}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_avatar_or_name_is_cleaned_or_dropped_and_the_call_still_made() {
    let (_upstream, standin, sidecar) = support::start(|_| Reply::html(PAGE)).await;
    let page_load = |avatar: &[u8], name: &str| {
        let mut headers = navigation("bob", "bob@example.com");
        headers.insert(
            "x-forwarded-avatar",
            reqwest::header::HeaderValue::from_bytes(avatar).unwrap(),
        );
        headers.insert(
            "x-forwarded-preferred-username",
            reqwest::header::HeaderValue::from_bytes(name.as_bytes()).unwrap(),
        );
        sidecar.get_text("/", headers)
    };
    let body = page_load(
        br#"https://cdn.example/a.png"><img src=x onerror=alert(1)>"#,
        "Bob\u{202e}gnp.exe\u{200b}",
    )
    .await;
    assert_eq!(tokens_in(&body).len(), 3, "the call is still made");
    let sent = &standin.issued()[0].body;
    assert_eq!(
        sent["profile"],
        serde_json::json!({"name": "Bobgnp.exe"}),
        "avatar dropped, name without bidi and zero-width characters: {sent}"
    );
    assert_eq!(
        sidecar
            .metric("released_sidecar_identity_fields_dropped_total{field=\"avatar_url\",reason=\"invalid_avatar_url\"}")
            .await,
        1.0
    );

    let body = page_load(b"HTTPS://CDN.Example/a/../a.png", "Bob").await;
    assert_eq!(tokens_in(&body).len(), 3);
    assert_eq!(
        standin.issued()[1].body["profile"]["avatar_url"],
        "https://cdn.example/a.png",
        "the canonical serialization is sent"
    );

    // A required field breaking the rules means no call at all.
    let mut headers = navigation("bob", "bob@example.com");
    headers.insert(
        "x-forwarded-email",
        reqwest::header::HeaderValue::from_bytes("b\u{200b}ob@example.com".as_bytes()).unwrap(),
    );
    assert_eq!(sidecar.get_text("/", headers).await, PAGE);
    assert_eq!(standin.calls().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_tokens_are_replaced_in_any_case_and_shape() {
    let html =
        "<RELEASED-PAGE auth-token=\"stale\" AUTH-TOKEN='older'></RELEASED-PAGE><Released-Widget/>";
    let (_u, standin, sidecar) = support::start(move |_| Reply::html(html)).await;
    let body = sidecar.page_load("/").await.text().await.unwrap();
    let token = standin.issued()[0].token.clone().unwrap();
    assert_eq!(
        body,
        format!("<RELEASED-PAGE auth-token=\"{token}\"></RELEASED-PAGE><Released-Widget auth-token=\"{token}\" />")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_split_into_one_byte_chunks_is_still_rewritten() {
    let (_u, standin, sidecar) = support::start(|_| Reply::Stream {
        status: 200,
        headers: vec![("content-type".into(), "text/html".into())],
        chunks: PAGE
            .bytes()
            .map(|b| (Duration::ZERO, Bytes::from(vec![b])))
            .collect(),
    })
    .await;
    let body = sidecar.page_load("/").await.text().await.unwrap();
    let token = standin.issued()[0].token.clone().unwrap();
    assert_eq!(tokens_in(&body), vec![token; 3]);
    assert_eq!(
        body.replace(&format!(" auth-token=\"{}\"", tokens_in(&body)[0]), ""),
        PAGE.replace("<released-form/>", "<released-form />")
    );
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .read_to_end(&mut out)
        .unwrap();
    out
}

fn brotli_compress(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
        w.write_all(data).unwrap();
    }
    out
}

fn brotli_decompress(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    brotli::Decompressor::new(data, 4096)
        .read_to_end(&mut out)
        .unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_pages_are_decoded_rewritten_and_compressed_again() {
    // The app compresses even though the sidecar asked for identity (the safety net).
    let upstream = Upstream::start(|req| {
        let (encoding, body) = if req.path.starts_with("/br") {
            ("br", brotli_compress(PAGE.as_bytes()))
        } else {
            ("gzip", gzip(PAGE.as_bytes()))
        };
        Reply::html(body).header("content-encoding", encoding)
    })
    .await;
    let standin = StandIn::start(SECRET).await;
    let sidecar = SidecarBuilder::new(&upstream.url(), &standin.url())
        .start()
        .await;

    for (path, accept, decode) in [
        ("/gz", None, None),
        ("/br", None, None),
        ("/gz", Some("gzip"), Some("gzip")),
        ("/br", Some("br"), Some("br")),
        ("/br", Some("gzip, deflate"), Some("gzip")),
    ] {
        let mut req = client()
            .get(sidecar.url(path))
            .headers(navigation("alice", "alice@example.com"));
        if let Some(a) = accept {
            req = req.header("accept-encoding", a);
        }
        let resp = req.send().await.unwrap();
        let encoding = resp
            .headers()
            .get("content-encoding")
            .map(|v| v.to_str().unwrap().to_string());
        assert_eq!(encoding.as_deref(), decode, "{path} {accept:?}");
        let raw = resp.bytes().await.unwrap();
        let html = match decode {
            None => raw.to_vec(),
            Some("gzip") => gunzip(&raw),
            Some(_) => brotli_decompress(&raw),
        };
        let html = String::from_utf8(html).unwrap();
        let token = standin.issued().last().unwrap().token.clone().unwrap();
        assert_eq!(
            tokens_in(&html),
            vec![token; 3],
            "{path} {accept:?}: {html}"
        );
    }
    for seen in upstream.seen() {
        assert_eq!(
            seen.header("accept-encoding"),
            ["identity"],
            "the app is asked for an uncompressed page"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encodings_that_cannot_be_decoded_pass_through_untouched() {
    let body: Vec<u8> = (0..200u8).collect();
    let served = body.clone();
    let (_u, standin, sidecar) = support::start(move |req| {
        let coding = if req.path == "/zstd" {
            "zstd"
        } else {
            "deflate"
        };
        Reply::html(served.clone()).header("content-encoding", coding)
    })
    .await;
    for path in ["/zstd", "/deflate"] {
        let resp = sidecar.page_load(path).await;
        assert!(resp.headers().get("content-encoding").is_some());
        assert_eq!(
            resp.headers()["cache-control"],
            "private, no-store",
            "a token route's page is never cacheable, rewritten or not"
        );
        assert_eq!(resp.bytes().await.unwrap().to_vec(), body, "{path}");
    }
    // The call was made (the request looked like a page load) but nothing could use it.
    assert!(standin.issued().len() <= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_utf8_page_keeps_every_byte_around_the_token() {
    let page: &[u8] =
        b"<p>caf\xe9 cr\xe8me</p><released-page></released-page><p>\xe0 bient\xf4t</p>";
    let (_u, standin, sidecar) =
        support::start(move |_| Reply::with(200, "text/html; charset=windows-1252", page)).await;
    let body = sidecar.page_load("/").await.bytes().await.unwrap();
    let token = standin.issued()[0].token.clone().unwrap();
    let mut want = b"<p>caf\xe9 cr\xe8me</p><released-page auth-token=\"".to_vec();
    want.extend_from_slice(token.as_bytes());
    want.extend_from_slice(b"\"></released-page><p>\xe0 bient\xf4t</p>");
    assert_eq!(body.to_vec(), want);
}

/// Headers that let a browser or CDN keep a page (cache-control aside).
const CACHING_HEADERS: &[&str] = &[
    "etag",
    "last-modified",
    "expires",
    "cdn-cache-control",
    "surrogate-control",
    "x-accel-expires",
];

/// `reply` as an app that wants its page cached everywhere, with digests of its body.
fn cacheable(reply: Reply) -> Reply {
    reply
        .header("etag", "\"v1\"")
        .header("last-modified", "Wed, 21 Oct 2015 07:28:00 GMT")
        .header("expires", "Wed, 21 Oct 2037 07:28:00 GMT")
        .header("cache-control", "public, max-age=600")
        .header("cdn-cache-control", "max-age=600")
        .header("surrogate-control", "max-age=600")
        .header("x-accel-expires", "600")
        .header(
            "content-digest",
            "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:",
        )
        .header(
            "repr-digest",
            "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:",
        )
        .header("content-md5", "Q2hlY2sgSW50ZWdyaXR5IQ==")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_less_pages_of_a_token_route_are_not_cacheable_either() {
    let (_u, standin, sidecar) = support::start(|req| match req.path.as_str() {
        "/api" => cacheable(Reply::with(200, "application/json", "{}")),
        _ => cacheable(Reply::html(PAGE)),
    })
    .await;
    standin.set_behavior(Behavior::Status(503));
    let anonymous = {
        let mut h = navigation("x", "x@example.com");
        h.remove("x-forwarded-user");
        h.remove("x-forwarded-email");
        h
    };
    for (why, headers) in [
        (
            "token call failed",
            navigation("alice", "alice@example.com"),
        ),
        ("no identity", anonymous),
    ] {
        let resp = client()
            .get(sidecar.url("/"))
            .headers(headers)
            .send()
            .await
            .unwrap();
        let h = resp.headers().clone();
        assert_eq!(resp.text().await.unwrap(), PAGE, "{why}: served unchanged");
        assert_eq!(h["cache-control"], "private, no-store", "{why}");
        for gone in CACHING_HEADERS {
            assert!(h.get(*gone).is_none(), "{why}: {gone} still present");
        }
        assert!(
            h.get("content-digest").is_some(),
            "{why}: body untouched, digest kept"
        );
    }
    let resp = client()
        .get(sidecar.url("/api"))
        .headers(navigation("alice", "alice@example.com"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.headers()["cache-control"],
        "public, max-age=600",
        "not a page: untouched"
    );
    assert!(resp.headers().get("etag").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewritten_pages_lose_validators_and_become_uncacheable() {
    let (upstream, _s, sidecar) = support::start(|_| cacheable(Reply::html(PAGE))).await;
    let resp = client()
        .get(sidecar.url("/"))
        .headers(navigation("alice", "alice@example.com"))
        .header("if-none-match", "\"v1\"")
        .header("if-modified-since", "Wed, 21 Oct 2015 07:28:00 GMT")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let h = resp.headers().clone();
    assert_eq!(tokens_in(&resp.text().await.unwrap()).len(), 3);
    for gone in CACHING_HEADERS.iter().chain(&[
        "content-length",
        "content-digest",
        "repr-digest",
        "content-md5",
    ]) {
        assert!(h.get(*gone).is_none(), "{gone} still present");
    }
    assert_eq!(h["cache-control"], "private, no-store");
    let seen = &upstream.seen()[0];
    assert!(
        seen.header("if-none-match").is_empty() && seen.header("if-modified-since").is_empty(),
        "the app must send the whole page"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_that_is_not_a_200_html_page_load_is_untouched_byte_for_byte() {
    let json = r#"{"html":"<released-page></released-page>"}"#;
    let js = "document.write('<released-page></released-page>');";
    let (_u, standin, sidecar) = support::start(move |req| match req.path.as_str() {
        "/api" => Reply::with(200, "application/json", json).header("etag", "\"j\""),
        "/app.js" => Reply::with(200, "application/javascript", js),
        "/missing" => Reply::with(404, "text/html", PAGE),
        "/error" => Reply::with(500, "text/html", PAGE),
        "/partial" => Reply::Full {
            status: 206,
            headers: vec![
                ("content-type".into(), "text/html".into()),
                ("content-range".into(), format!("bytes 0-9/{}", PAGE.len())),
            ],
            body: Bytes::from(&PAGE.as_bytes()[..10]),
        },
        "/nothing" => Reply::Full {
            status: 204,
            headers: vec![],
            body: Bytes::new(),
        },
        _ => Reply::html(PAGE),
    })
    .await;

    // Not page loads: no token call at all.
    let api = client()
        .get(sidecar.url("/api"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(api.headers()["etag"], "\"j\"");
    assert_eq!(api.text().await.unwrap(), json);
    let script = client()
        .get(sidecar.url("/app.js"))
        .header("sec-fetch-dest", "script")
        .send()
        .await
        .unwrap();
    assert_eq!(script.text().await.unwrap(), js);
    let ranged = client()
        .get(sidecar.url("/partial"))
        .headers(navigation("alice", "alice@example.com"))
        .header("range", "bytes=0-9")
        .send()
        .await
        .unwrap();
    assert_eq!(ranged.status(), 206);
    assert_eq!(ranged.bytes().await.unwrap(), &PAGE.as_bytes()[..10]);
    let post = client()
        .post(sidecar.url("/"))
        .headers(navigation("alice", "alice@example.com"))
        .send()
        .await
        .unwrap();
    assert_eq!(post.text().await.unwrap(), PAGE);
    assert!(
        standin.calls().is_empty(),
        "no token for requests that are not page loads"
    );

    // Page loads whose response cannot carry a token: untouched.
    for (path, status) in [("/missing", 404), ("/error", 500), ("/nothing", 204)] {
        let resp = sidecar.page_load(path).await;
        assert_eq!(resp.status(), status);
        assert!(resp.headers().get("cache-control").is_none());
        let want = if status == 204 { "" } else { PAGE };
        assert_eq!(resp.text().await.unwrap(), want, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_identity_makes_no_call_and_serves_the_page_unchanged() {
    let (_u, standin, sidecar) = support::start(|_| Reply::html(PAGE)).await;
    for headers in [
        navigation("alice", "not-an-email"),
        {
            let mut h = navigation("alice", "alice@example.com");
            h.remove("x-forwarded-user");
            h
        },
        {
            let mut h = navigation("alice", "alice@example.com");
            h.append("x-forwarded-email", "mallory@example.com".parse().unwrap());
            h
        },
    ] {
        let body = sidecar.get_text("/", headers).await;
        assert_eq!(body, PAGE);
    }
    assert!(standin.calls().is_empty());
    assert_eq!(
        sidecar
            .metric("released_sidecar_token_skips_total{reason=\"invalid_email\"}")
            .await,
        1.0
    );
    assert_eq!(
        sidecar
            .metric("released_sidecar_token_skips_total{reason=\"missing_header\"}")
            .await,
        1.0
    );
    assert_eq!(
        sidecar
            .metric("released_sidecar_token_skips_total{reason=\"multiple_values\"}")
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_call_overlaps_the_app_so_latency_is_the_max_not_the_sum() {
    let (_u, standin, sidecar) = support::start(|_| {
        Reply::Delayed(Duration::from_millis(1000), Box::new(Reply::html(PAGE)))
    })
    .await;
    standin.set_behavior(Behavior::Slow(Duration::from_millis(800)));
    let started = Instant::now();
    let body = sidecar.page_load("/").await.text().await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(tokens_in(&body).len(), 3, "token arrived in time");
    assert!(
        elapsed < Duration::from_millis(1500),
        "took {elapsed:?}; sequential would be ≥1.8s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_released_delays_the_page_by_at_most_the_timeout() {
    let (_u, standin, sidecar) = support::start(|_| Reply::html(PAGE)).await;
    standin.set_behavior(Behavior::Slow(Duration::from_secs(5)));
    let started = Instant::now();
    let body = sidecar.page_load("/").await.text().await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(body, PAGE, "served without token");
    assert!(
        elapsed >= Duration::from_millis(1400) && elapsed < Duration::from_millis(2500),
        "took {elapsed:?} with a 1500ms timeout"
    );
    assert!(
        sidecar
            .wait_for_metric(
                "released_sidecar_token_requests_total{result=\"timeout\"}",
                |v| v == 1.0
            )
            .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn released_failures_serve_the_page_at_once_unchanged() {
    let (_u, standin, sidecar) = support::start(|_| Reply::html(PAGE)).await;
    let cases = [
        (Behavior::Status(500), "server_error"),
        (Behavior::Status(429), "rate_limited"),
        (Behavior::Status(422), "rejected"),
        (Behavior::Garbage, "bad_response"),
    ];
    for (behavior, label) in cases {
        standin.set_behavior(behavior.clone());
        let started = Instant::now();
        let body = sidecar.page_load("/").await.text().await.unwrap();
        assert_eq!(body, PAGE, "{behavior:?}");
        assert!(
            started.elapsed() < Duration::from_millis(1000),
            "{behavior:?} took {:?}",
            started.elapsed()
        );
        let count = sidecar
            .metric(&format!(
                "released_sidecar_token_requests_total{{result=\"{label}\"}}"
            ))
            .await;
        assert!(count >= 1.0, "{label} not counted");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_is_refused_by_released_and_counted() {
    let upstream = Upstream::start(|_| Reply::html(PAGE)).await;
    let standin = StandIn::start("the-real-secret").await;
    let sidecar = SidecarBuilder::new(&upstream.url(), &standin.url())
        .secret("an-old-secret")
        .start()
        .await;
    let body = sidecar.page_load("/").await.text().await.unwrap();
    assert_eq!(body, PAGE);
    assert_eq!(standin.calls()[0].status, 401);
    assert_eq!(
        sidecar
            .metric("released_sidecar_token_requests_total{result=\"unauthorized\"}")
            .await,
        1.0
    );
    assert_eq!(
        sidecar
            .metric("released_sidecar_token_auth_failures_total")
            .await,
        1.0
    );
    for _ in 0..3 {
        sidecar.page_load("/").await.text().await.unwrap();
    }
    assert_eq!(standin.calls().len(), 4, "401s never open the cool-down");
    assert!(
        sidecar.wait_for_log("refused our credentials").await,
        "{}",
        sidecar.logs()
    );
    let logs = sidecar.settled_logs().await;
    assert_eq!(
        logs.matches("refused our credentials").count(),
        1,
        "one error line per minute, the rest counted: {logs}"
    );
    assert!(logs.contains("ERROR"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_users_4xx_never_switches_tokens_off_for_everyone() {
    let upstream = Upstream::start(|_| Reply::html(PAGE)).await;
    let standin = StandIn::start(SECRET).await;
    let sidecar = SidecarBuilder::new(&upstream.url(), &standin.url())
        .template(&support::sidecar::DEFAULT_CONFIG.replace(
            "  timeout: \"1500ms\"\n",
            "  timeout: \"1500ms\"\n  cooldown: { after_failures: 2, duration: 1m }\n",
        ))
        .start()
        .await;
    // Released refuses this one user's data, again and again.
    standin.set_behavior(Behavior::Status(422));
    for _ in 0..4 {
        assert_eq!(sidecar.page_load("/").await.text().await.unwrap(), PAGE);
    }
    standin.set_behavior(Behavior::Token);
    let body = sidecar.page_load("/").await.text().await.unwrap();
    assert_eq!(
        tokens_in(&body).len(),
        3,
        "the next user still gets a token"
    );
    assert_eq!(standin.calls().len(), 5, "no call was skipped");
    assert_eq!(
        sidecar
            .metric("released_sidecar_token_requests_total{result=\"cooldown\"}")
            .await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_token_shape_is_accepted() {
    let (_u, standin, sidecar) = support::start(|_| Reply::html(PAGE)).await;
    for behavior in [
        Behavior::Token,
        Behavior::TokenIn("token"),
        Behavior::TokenIn("auth_token"),
        Behavior::TokenIn("access_token"),
    ] {
        standin.set_behavior(behavior.clone());
        let body = sidecar.page_load("/").await.text().await.unwrap();
        let token = standin.issued().last().unwrap().token.clone().unwrap();
        assert_eq!(tokens_in(&body), vec![token; 3], "{behavior:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failures_open_a_cooldown_that_closes_when_released_recovers() {
    let upstream = Upstream::start(|_| Reply::html(PAGE)).await;
    let standin = StandIn::start(SECRET).await;
    let sidecar = SidecarBuilder::new(&upstream.url(), &standin.url())
        .template(&support::sidecar::DEFAULT_CONFIG.replace(
            "  timeout: \"1500ms\"\n",
            "  timeout: \"1500ms\"\n  cooldown: { after_failures: 2, duration: 1s }\n",
        ))
        .start()
        .await;
    standin.set_behavior(Behavior::Status(503));
    for _ in 0..2 {
        assert_eq!(sidecar.page_load("/").await.text().await.unwrap(), PAGE);
    }
    assert_eq!(standin.calls().len(), 2);
    for _ in 0..3 {
        assert_eq!(sidecar.page_load("/").await.text().await.unwrap(), PAGE);
    }
    assert_eq!(
        standin.calls().len(),
        2,
        "calls are skipped while the cool-down is open"
    );
    assert_eq!(
        sidecar
            .metric("released_sidecar_token_requests_total{result=\"cooldown\"}")
            .await,
        3.0
    );
    assert!(
        sidecar.wait_for_log("cool-down opened").await,
        "{}",
        sidecar.logs()
    );

    standin.set_behavior(Behavior::Token);
    // Page loads keep being served without a call until the cool-down ends; the first
    // one after it is the probe, and it succeeds.
    let probed = support::eventually(Duration::from_secs(10), || async {
        let body = sidecar.page_load("/").await.text().await.unwrap();
        tokens_in(&body).len() == 3
    })
    .await;
    assert!(probed, "the probe succeeds once the cool-down ends");
    assert_eq!(standin.calls().len(), 3, "exactly one probe call");
    let body = sidecar.page_load("/").await.text().await.unwrap();
    assert_eq!(tokens_in(&body).len(), 3, "calls resume");
    assert!(
        sidecar.wait_for_log("cool-down closed").await,
        "{}",
        sidecar.logs()
    );
}

/// Two routes on one account (the second with settings of its own, so the two do not
/// share one settings block), failing calls, a cool-down that outlasts the test.
const TWO_ROUTES_ONE_ACCOUNT: &str = "routes:
  - name: feedback
    match: { path: \"^/feedback\" }
  - name: roadmap
    match: { path: \"^/roadmap\" }
    released: { timeout: \"1200ms\" }
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_of_one_account_share_a_cooldown_that_survives_a_reload() {
    let upstream = Upstream::start(|_| Reply::html(PAGE)).await;
    let standin = StandIn::start(SECRET).await;
    let template = support::sidecar::DEFAULT_CONFIG.replace(
        "  timeout: \"1500ms\"\n",
        "  timeout: \"1500ms\"\n  cooldown: { after_failures: 2, duration: 5m }\n",
    );
    let sidecar = SidecarBuilder::new(&upstream.url(), &standin.url())
        .template(&template)
        .extra(TWO_ROUTES_ONE_ACCOUNT)
        .start()
        .await;
    standin.set_behavior(Behavior::Status(503));
    for _ in 0..2 {
        assert_eq!(
            sidecar.page_load("/feedback").await.text().await.unwrap(),
            PAGE
        );
    }
    assert_eq!(standin.calls().len(), 2);

    // The other route of the same account is cooling down too: no call.
    assert_eq!(
        sidecar.page_load("/roadmap").await.text().await.unwrap(),
        PAGE
    );
    assert_eq!(
        standin.calls().len(),
        2,
        "one breaker per account, not per route"
    );

    // A reload in the middle of the outage keeps the breaker open.
    let reloads = r#"released_sidecar_config_reloads_total{result="success"}"#;
    let before = sidecar.metric(reloads).await;
    let edited = sidecar.config_text().replace("1500ms", "1400ms");
    std::fs::write(&sidecar.config_path, edited).unwrap();
    sidecar.signal(libc::SIGHUP);
    assert!(
        sidecar.wait_for_metric(reloads, |n| n > before).await,
        "{}",
        sidecar.logs()
    );
    assert!(sidecar.wait_for_log("config reloaded").await);
    for path in ["/feedback", "/roadmap"] {
        assert_eq!(sidecar.page_load(path).await.text().await.unwrap(), PAGE);
    }
    assert_eq!(
        standin.calls().len(),
        2,
        "the outage in progress survives the reload: pages do not wait for Released again"
    );
    assert_eq!(
        sidecar
            .metric("released_sidecar_token_requests_total{result=\"cooldown\"}")
            .await,
        3.0
    );
}

fn vm_hwm_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_20_mb_page_streams_through_with_small_memory() {
    const CHUNK: usize = 64 * 1024;
    const CHUNKS: usize = 320; // 20 MiB
    const HEAD: &[u8] = b"<html><body><released-page></released-page>";
    const TAIL: &[u8] = b"<released-widget></released-widget></body></html>";
    let filler = Bytes::from(
        "<div class=\"row\"><p>lorem ipsum dolor sit amet</p></div>\n".repeat(CHUNK / 57 + 1)
            [..CHUNK]
            .to_string(),
    );
    let (_u, standin, sidecar) = support::start(move |_| {
        let mut chunks = vec![(Duration::ZERO, Bytes::from_static(HEAD))];
        for i in 0..CHUNKS {
            // The app takes ~1.6 s to send the whole page.
            chunks.push((
                if i % 40 == 0 {
                    Duration::from_millis(200)
                } else {
                    Duration::ZERO
                },
                filler.clone(),
            ));
        }
        chunks.push((Duration::ZERO, Bytes::from_static(TAIL)));
        Reply::Stream {
            status: 200,
            headers: vec![("content-type".into(), "text/html".into())],
            chunks,
        }
    })
    .await;
    let baseline = vm_hwm_kib(sidecar.pid());
    let started = Instant::now();
    let mut resp = sidecar.page_load("/big").await;
    let first = resp.chunk().await.unwrap().unwrap();
    let first_at = started.elapsed();
    let mut total = first.len();
    let mut tail = Vec::new();
    while let Some(c) = resp.chunk().await.unwrap() {
        total += c.len();
        tail = c.to_vec();
    }
    let done_at = started.elapsed();
    let token = standin.issued()[0].token.clone().unwrap();
    assert!(String::from_utf8_lossy(&first).contains(&format!("auth-token=\"{token}\"")));
    assert!(String::from_utf8_lossy(&tail)
        .contains(&format!("<released-widget auth-token=\"{token}\">")));
    assert_eq!(
        total,
        HEAD.len() + CHUNK * CHUNKS + TAIL.len() + 2 * format!(" auth-token=\"{token}\"").len()
    );
    assert!(
        first_at + Duration::from_millis(800) < done_at,
        "first byte at {first_at:?}, done at {done_at:?}: not streamed"
    );
    let grown = vm_hwm_kib(sidecar.pid()).saturating_sub(baseline);
    assert!(
        grown < 16 * 1024,
        "peak RSS grew by {grown} KiB for a 20 MiB page"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_page_past_the_memory_bound_is_served_whole_and_counted() {
    // A 3 MiB attribute inside an embed tag: more than `embed.memory_limit` (1 MiB).
    let mut page = b"<released-page></released-page><released-widget data-x=\"".to_vec();
    page.extend(std::iter::repeat_n(b'a', 3 << 20));
    page.extend_from_slice(b"\"></released-widget><released-form></released-form>");
    let served = Bytes::from(page.clone());
    let (_u, standin, sidecar) = support::start(move |_| Reply::Stream {
        status: 200,
        headers: vec![("content-type".into(), "text/html".into())],
        chunks: served
            .chunks(64 * 1024)
            .map(|c| (Duration::ZERO, Bytes::copy_from_slice(c)))
            .collect(),
    })
    .await;
    let body = sidecar.page_load("/hostile").await.bytes().await.unwrap();
    let token = standin.issued()[0].token.clone().unwrap();
    let first = format!("<released-page auth-token=\"{token}\"></released-page>");
    assert!(
        body.starts_with(first.as_bytes()),
        "the tag before the bound still gets the token"
    );
    assert_eq!(
        &body[first.len()..],
        &page[31..],
        "everything after it passes through whole"
    );
    assert!(
        sidecar
            .wait_for_metric("released_sidecar_rewrite_bailouts_total", |v| v == 1.0)
            .await
    );
    assert!(
        sidecar.wait_for_log("HTML rewrite stopped").await,
        "{}",
        sidecar.logs()
    );
}
