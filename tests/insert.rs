//! Zero-code embeds (SPEC §3b): `embed.insert` puts a configured snippet next to the first
//! element a selector matches, on signed-in page loads only, with the page's token on the
//! snippet's embed tags and the page's CSP nonce on its scripts, whatever the chunking,
//! the compression or a reload.

mod support;

use std::io::{Read, Write};
use std::time::Duration;

use bytes::Bytes;
use support::sidecar::Sidecar;
use support::standin::Behavior;
use support::{client, navigation, tokens_in, Reply, SidecarBuilder, StandIn, Upstream};

/// A legacy page with no embed tag at all.
const PAGE: &str = "<!doctype html><html><head><title>Legacy</title></head>\
<body><div id=\"main\"><p>orders</p></div></body></html>";

const WIDGET: &str = r#"<released-widget account="acme" widget-id="w1"></released-widget>"#;

/// `embed.insert` with one rule appending [`WIDGET`] to `body`.
fn insert_widget() -> String {
    format!("embed:\n  insert:\n    - selector: body\n      html: '{WIDGET}'\n")
}

/// [`PAGE`] with `snippet` where `embed.insert` appends it to `body`.
fn with_widget(snippet: &str) -> String {
    PAGE.replace("</body>", &format!("{snippet}</body>"))
}

/// [`WIDGET`] carrying `token`.
fn widget_with(token: &str) -> String {
    WIDGET.replace("></", &format!(" auth-token=\"{token}\"></"))
}

async fn insertions(sidecar: &Sidecar, result: &str) -> f64 {
    sidecar
        .metric(&format!(
            "released_sidecar_embed_insertions_total{{result=\"{result}\"}}"
        ))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_without_an_embed_tag_gets_the_snippet_with_this_page_loads_token() {
    let (_upstream, standin, sidecar) =
        support::start_with(|_| Reply::html(PAGE), |b| b.extra(&insert_widget())).await;
    let resp = sidecar.page_load("/orders").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["cache-control"], "private, no-store");
    let body = resp.text().await.unwrap();
    let issued = standin.issued();
    assert_eq!(issued.len(), 1, "one call per page load");
    let token = issued[0].token.clone().unwrap();
    assert_eq!(body, with_widget(&widget_with(&token)));
    assert_eq!(insertions(&sidecar, "inserted").await, 1.0);
    assert_eq!(insertions(&sidecar, "no_match").await, 0.0);
    assert_eq!(
        sidecar
            .metric("released_sidecar_tags_rewritten_total")
            .await,
        1.0,
        "the snippet's tag is counted like the app's own"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_token_call_inserts_the_snippet_without_a_token_and_uncacheable() {
    let (_upstream, standin, sidecar) =
        support::start_with(|_| Reply::html(PAGE), |b| b.extra(&insert_widget())).await;
    standin.set_behavior(Behavior::Status(503));
    let resp = sidecar.page_load("/orders").await;
    assert_eq!(resp.headers()["cache-control"], "private, no-store");
    assert_eq!(resp.text().await.unwrap(), with_widget(WIDGET));
    assert_eq!(standin.calls().len(), 1);
    assert_eq!(insertions(&sidecar, "inserted").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_selector_that_matches_nothing_leaves_the_page_as_it_was_and_is_counted() {
    let extra = insert_widget().replace("selector: body", "selector: \"#portal\"");
    let (_upstream, standin, sidecar) =
        support::start_with(|_| Reply::html(PAGE), |b| b.extra(&extra)).await;
    let body = sidecar.page_load("/orders").await.text().await.unwrap();
    assert_eq!(body, PAGE);
    assert_eq!(
        standin.issued().len(),
        1,
        "the page load still had its call"
    );
    assert_eq!(insertions(&sidecar, "no_match").await, 1.0);
    assert_eq!(insertions(&sidecar, "inserted").await, 0.0);
}

/// What the app answers under [`never_config`]: `/app/json` is JSON, `/app/missing` a 404
/// page, anything else the page; every body would show an insertion.
fn never_app(seen: &support::upstream::Seen) -> Reply {
    match seen.path.as_str() {
        "/app/json" => Reply::with(200, "application/json", PAGE),
        "/app/missing" => Reply::with(404, "text/html", PAGE),
        _ => Reply::html(PAGE),
    }
}

/// One route (`/app`), inserts for it, and only 127.0.0.1 trusted.
fn never_config() -> String {
    format!(
        "trusted_proxies: [\"127.0.0.1/32\"]\nroutes:\n  - name: app\n    match: {{ path: \"^/app\" }}\n{}",
        insert_widget()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snippets_never_go_into_anonymous_untrusted_non_html_non_200_head_post_or_unrouted_responses(
) {
    let (_upstream, _standin, sidecar) =
        support::start_with(never_app, |b| b.extra(&never_config())).await;
    let signed_in = navigation("alice", "alice@example.com");
    let mut anonymous = signed_in.clone();
    anonymous.remove("x-forwarded-user");
    anonymous.remove("x-forwarded-email");
    let mut bad_identity = signed_in.clone();
    bad_identity.insert("x-forwarded-email", "not-an-email".parse().unwrap());
    let untrusted = reqwest::Client::builder()
        .no_proxy()
        .local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    let cases: Vec<(&str, reqwest::RequestBuilder)> = vec![
        (
            "anonymous",
            client().get(sidecar.url("/app/page")).headers(anonymous),
        ),
        (
            "invalid identity",
            client().get(sidecar.url("/app/page")).headers(bad_identity),
        ),
        (
            "untrusted peer",
            untrusted
                .get(sidecar.url("/app/page"))
                .headers(signed_in.clone()),
        ),
        (
            "not HTML",
            client()
                .get(sidecar.url("/app/json"))
                .headers(signed_in.clone()),
        ),
        (
            "not 200",
            client()
                .get(sidecar.url("/app/missing"))
                .headers(signed_in.clone()),
        ),
        (
            "POST",
            client()
                .post(sidecar.url("/app/page"))
                .headers(signed_in.clone()),
        ),
        (
            "outside every route",
            client()
                .get(sidecar.url("/elsewhere"))
                .headers(signed_in.clone()),
        ),
    ];
    for (case, request) in cases {
        let body = request.send().await.unwrap().text().await.unwrap();
        assert_eq!(body, PAGE, "{case}");
    }
    let head = client()
        .head(sidecar.url("/app/page"))
        .headers(signed_in.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(
        head.headers()["content-length"],
        PAGE.len().to_string().as_str(),
        "HEAD: the app's length, nothing added"
    );
    assert_eq!(insertions(&sidecar, "inserted").await, 0.0);
    assert_eq!(insertions(&sidecar, "no_match").await, 0.0);

    // The same sidecar does insert for a signed-in GET of the route.
    let body = sidecar.get_text("/app/page", signed_in).await;
    assert_eq!(tokens_in(&body).len(), 1, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routes_own_list_replaces_the_top_level_one_and_an_empty_list_means_none() {
    let extra = format!(
        "{}routes:
  - name: portal
    match: {{ path: \"^/portal\" }}
    embed: {{ insert: [] }}
  - name: admin
    match: {{ path: \"^/admin\" }}
    embed:
      insert:
        - {{ selector: \"#main\", position: before, html: '<released-page></released-page>' }}
  - name: rest
",
        insert_widget()
    );
    let (_upstream, standin, sidecar) =
        support::start_with(|_| Reply::html(PAGE), |b| b.extra(&extra)).await;

    let portal = sidecar.page_load("/portal").await.text().await.unwrap();
    assert_eq!(portal, PAGE, "[] turns the top-level rules off");

    let admin = sidecar.page_load("/admin").await.text().await.unwrap();
    let token = standin.issued().last().unwrap().token.clone().unwrap();
    assert_eq!(
        admin,
        PAGE.replace(
            "<div id=\"main\">",
            &format!("<released-page auth-token=\"{token}\"></released-page><div id=\"main\">")
        ),
        "only the route's own rule"
    );

    let rest = sidecar.page_load("/rest").await.text().await.unwrap();
    let token = standin.issued().last().unwrap().token.clone().unwrap();
    assert_eq!(
        rest,
        with_widget(&widget_with(&token)),
        "inherits the top level"
    );
    assert_eq!(insertions(&sidecar, "inserted").await, 2.0);
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gzip_upstream_gets_the_snippet_and_a_gzip_client_gets_gzip_back() {
    // The app compresses although the sidecar asks for identity.
    let (_upstream, standin, sidecar) = support::start_with(
        |_| Reply::html(gzip(PAGE.as_bytes())).header("content-encoding", "gzip"),
        |b| b.extra(&insert_widget()),
    )
    .await;
    let resp = client()
        .get(sidecar.url("/orders"))
        .headers(navigation("alice", "alice@example.com"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-encoding"], "gzip");
    let raw = resp.bytes().await.unwrap();
    let mut html = String::new();
    flate2::read::GzDecoder::new(&raw[..])
        .read_to_string(&mut html)
        .unwrap();
    let token = standin.issued()[0].token.clone().unwrap();
    assert_eq!(html, with_widget(&widget_with(&token)));
}

/// A page with a match split every way a selector can be: attribute values holding `>`,
/// a decoy in a comment and a script, and an embed tag of the app's own.
const CHUNKED_PAGE: &str = "<!doctype html><html><head><title>t</title>\
<script>var s = '<div id=\"main\">';</script></head><body class=\"app\">\
<!-- <div id=\"main\"> --><div data-x=\"a>b\" id=\"main\"><p>text</p>\
<released-page account=\"a\"></released-page></div><footer>f</footer></body></html>";

/// Rules of every position, one that matches nothing.
const CHUNKED_RULES: &str = "embed:
  insert:
    - { selector: \"div#main\", position: before, html: '<released-widget widget-id=\"b\"></released-widget>' }
    - { selector: \"div[data-x]\", position: prepend, html: '<i>first</i>' }
    - { selector: body, position: append, html: '<released-form></released-form>' }
    - { selector: footer, position: after, html: '<b>after</b>' }
    - { selector: \"#absent\", html: '<b>never</b>' }
";

/// Cut points for chunking number `case` of `len` bytes (a small xorshift: the same cuts
/// in the app and in the failure message).
fn cuts(case: u64, len: usize) -> Vec<usize> {
    if case == 0 {
        return (1..len).collect();
    }
    let mut x = case.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut at = Vec::new();
    for _ in 0..(case % 23 + 1) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        at.push((x % len as u64) as usize);
    }
    at.sort_unstable();
    at.dedup();
    at
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_chunking_of_the_page_gives_the_bytes_of_the_whole_page() {
    let (_upstream, standin, sidecar) = support::start_with(
        |seen| {
            let case: u64 = seen
                .path
                .trim_start_matches("/chunked/")
                .parse()
                .unwrap_or(0);
            let page = CHUNKED_PAGE.as_bytes();
            let mut chunks = Vec::new();
            let mut start = 0;
            for cut in cuts(case, page.len()).into_iter().chain([page.len()]) {
                chunks.push((Duration::ZERO, Bytes::copy_from_slice(&page[start..cut])));
                start = cut;
            }
            match seen.path.as_str() {
                "/whole" => Reply::html(CHUNKED_PAGE),
                _ => Reply::Stream {
                    status: 200,
                    headers: vec![("content-type".into(), "text/html".into())],
                    chunks,
                },
            }
        },
        |b| b.extra(CHUNKED_RULES),
    )
    .await;
    let load = |path: String| {
        let sidecar = &sidecar;
        let standin = &standin;
        async move {
            let body = sidecar.page_load(&path).await.text().await.unwrap();
            let token = standin.issued().last().unwrap().token.clone().unwrap();
            body.replace(&token, "TOKEN")
        }
    };
    let whole = load("/whole".into()).await;
    assert_eq!(
        whole,
        "<!doctype html><html><head><title>t</title>\
<script>var s = '<div id=\"main\">';</script></head><body class=\"app\">\
<!-- <div id=\"main\"> --><released-widget widget-id=\"b\" auth-token=\"TOKEN\"></released-widget>\
<div data-x=\"a>b\" id=\"main\"><i>first</i><p>text</p>\
<released-page account=\"a\" auth-token=\"TOKEN\"></released-page></div><footer>f</footer><b>after</b>\
<released-form auth-token=\"TOKEN\"></released-form></body></html>"
    );
    for case in 0..40 {
        let chunked = load(format!("/chunked/{case}")).await;
        assert_eq!(
            chunked,
            whole,
            "cut at {:?}",
            cuts(case, CHUNKED_PAGE.len())
        );
    }
    assert_eq!(insertions(&sidecar, "inserted").await, 41.0 * 4.0);
    assert_eq!(insertions(&sidecar, "no_match").await, 41.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snippet_scripts_carry_the_pages_csp_nonce_like_the_loader() {
    let extra = "embed:\n  insert:\n    - { selector: head, html: '<script src=\"/widget.js\" defer></script>' }\n";
    let (_upstream, _standin, sidecar) = support::start_with(
        |seen| match seen.path.as_str() {
            "/nonce" => Reply::html(PAGE).header(
                "content-security-policy",
                "default-src 'self'; script-src 'nonce-r4nd0m' 'strict-dynamic'",
            ),
            _ => Reply::html(PAGE),
        },
        |b| b.extra(extra),
    )
    .await;
    let with_nonce = sidecar.page_load("/nonce").await.text().await.unwrap();
    assert_eq!(
        with_nonce,
        PAGE.replace(
            "</head>",
            "<script src=\"/widget.js\" defer nonce=\"r4nd0m\"></script></head>"
        )
    );
    let without = sidecar.page_load("/plain").await.text().await.unwrap();
    assert_eq!(
        without,
        PAGE.replace(
            "</head>",
            "<script src=\"/widget.js\" defer></script></head>"
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_adds_a_rule_applies_it_to_the_next_page_load() {
    let upstream = Upstream::start(|_| Reply::html(PAGE)).await;
    let standin = StandIn::start(support::sidecar::SECRET).await;
    let sidecar = SidecarBuilder::new(&upstream.url(), &standin.url())
        .start()
        .await;
    let before = sidecar.page_load("/").await.text().await.unwrap();
    assert_eq!(before, PAGE);

    let reloads = r#"released_sidecar_config_reloads_total{result="success"}"#;
    let done = sidecar.metric(reloads).await;
    sidecar.write_config(&format!(
        "{}{}",
        support::sidecar::DEFAULT_CONFIG,
        insert_widget()
    ));
    assert!(
        sidecar.wait_for_metric(reloads, |v| v > done).await,
        "no reload:\n{}",
        sidecar.logs()
    );
    let after = sidecar.page_load("/").await.text().await.unwrap();
    let token = standin.issued().last().unwrap().token.clone().unwrap();
    assert_eq!(after, with_widget(&widget_with(&token)));
    assert!(
        sidecar.wait_for_log("embed changed").await,
        "the reload says what changed:\n{}",
        sidecar.logs()
    );
}

#[test]
fn explain_lists_the_rules_a_signed_in_page_load_would_get() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), "s3cret\n").unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "upstream: \"http://127.0.0.1:3000\"
released: {{ account_id: acct, shared_secret_file: secret }}
identity: {{ preset: oauth2-proxy }}
{}    - {{ selector: \"#main\", position: before, html: \"<b>\\n  hello\\n</b>\" }}
routes:
  - name: portal
    match: {{ path: \"^/portal\" }}
    embed: {{ insert: [] }}
  - name: rest
",
            insert_widget()
        ),
    )
    .unwrap();
    let explain = |path: &str, identity: bool| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_released-sidecar"));
        cmd.args(["explain", "--config"])
            .arg(&config)
            .args(["--url", &format!("http://app.example.com{path}")]);
        if identity {
            cmd.args([
                "-H",
                "X-Forwarded-User: alice",
                "-H",
                "X-Forwarded-Email: alice@example.com",
            ]);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let signed_in = explain("/orders", true);
    assert!(
        signed_in.contains(&format!("  append `body`: {WIDGET}\n")),
        "{signed_in}"
    );
    assert!(
        signed_in.contains("  before `#main`: <b> hello </b>\n"),
        "{signed_in}"
    );
    let anonymous = explain("/orders", false);
    assert!(
        anonymous.contains("insert:     none: embed.insert applies only to signed-in page loads"),
        "{anonymous}"
    );
    let portal = explain("/portal", true);
    assert!(!portal.contains("insert:"), "{portal}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assertion_that_is_not_believed_gets_no_snippet_a_verified_one_does() {
    use support::jwt::{ec_key, jwks, now, sign};
    let key = ec_key("k1");
    let identity = "identity:
  jwt: { header: X-Assertion, jwks_file: \"{dir}/jwks.json\", issuer: \"https://idp.example.com\", audience: app }
  user_id: { claim: sub, transform: [escape] }
  user_email: { claim: email }
";
    let base = &support::sidecar::DEFAULT_CONFIG
        [..support::sidecar::DEFAULT_CONFIG.find("identity:").unwrap()];
    let upstream = Upstream::start(|_| Reply::html(PAGE)).await;
    let standin = StandIn::start(support::sidecar::SECRET).await;
    let sidecar = SidecarBuilder::new(&upstream.url(), &standin.url())
        .template(&format!("{base}{identity}{}", insert_widget()))
        .file("jwks.json", &jwks(&[&key]))
        .start()
        .await;
    let claims = serde_json::json!({"iss": "https://idp.example.com", "aud": "app",
        "exp": now() + 300, "iat": now(), "sub": "carol", "email": "carol@example.com"});
    let load = |assertion: String| {
        client()
            .get(sidecar.url("/"))
            .header("accept", "text/html")
            .header("x-assertion", assertion)
            .send()
    };
    let forged = sign(&ec_key("k1-forged"), &claims);
    let body = load(forged).await.unwrap().text().await.unwrap();
    assert_eq!(body, PAGE, "an unverified user is anonymous");
    assert!(standin.calls().is_empty());

    let body = load(sign(&key, &claims))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let token = standin.issued()[0].token.clone().unwrap();
    assert_eq!(body, with_widget(&widget_with(&token)));
}
