//! Client-rendered embeds (SPEC §3a): the same-origin token endpoint's whole contract and
//! the loader script, over real sockets, with the Released stand-in counting every call.

mod support;

use std::time::Duration;

use reqwest::header::HeaderMap;
use reqwest::Method;
use support::sidecar::{Sidecar, DEFAULT_CONFIG, SECRET};
use support::standin::Behavior;
use support::{client, eventually, Reply, SidecarBuilder, StandIn, Upstream};

const ENDPOINT: &str = "/.released/token";

/// A `fetch()` from a script on one of the app's pages, by a signed-in user.
fn script_fetch(sidecar: &Sidecar, user: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    let origin = format!("http://{}", sidecar.listen);
    for (name, value) in [
        ("accept", "application/json".to_string()),
        ("sec-fetch-site", "same-origin".into()),
        ("sec-fetch-mode", "cors".into()),
        ("sec-fetch-dest", "empty".into()),
        ("origin", origin.clone()),
        ("referer", format!("{origin}/portal/feedback")),
        ("x-forwarded-user", user.into()),
        ("x-forwarded-email", format!("{user}@example.com")),
    ] {
        h.insert(name, value.parse().unwrap());
    }
    h
}

fn with(mut headers: HeaderMap, name: &'static str, value: &str) -> HeaderMap {
    headers.insert(name, value.parse().unwrap());
    headers
}

fn without(mut headers: HeaderMap, names: &[&'static str]) -> HeaderMap {
    for name in names {
        headers.remove(*name);
    }
    headers
}

struct Answer {
    status: u16,
    headers: HeaderMap,
    json: serde_json::Value,
}

async fn call(sidecar: &Sidecar, method: Method, headers: HeaderMap) -> Answer {
    let resp = client()
        .request(method, sidecar.url(ENDPOINT))
        .headers(headers)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
    assert_eq!(headers["cache-control"], "no-store", "{status} {text}");
    assert_eq!(headers["x-content-type-options"], "nosniff", "{status}");
    Answer {
        status,
        headers,
        json,
    }
}

async fn start(extra: &str) -> (Upstream, StandIn, Sidecar) {
    let page = |_: &support::upstream::Seen| Reply::html("<released-page></released-page>");
    support::start_with(page, |b| b.extra(extra)).await
}

const ON: &str = "embed: { client: {} }\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_gets_a_fresh_token_from_one_call_and_never_reaches_the_app() {
    let (upstream, standin, sidecar) = start(ON).await;
    let mut tokens = Vec::new();
    for n in 1..=2 {
        let r = call(&sidecar, Method::GET, script_fetch(&sidecar, "alice")).await;
        assert_eq!(r.status, 200, "{}", r.json);
        assert!(r.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json"));
        assert_eq!(r.json["expires_in"], 120);
        tokens.push(r.json["token"].as_str().unwrap().to_string());
        assert_eq!(standin.calls().len(), n, "one Released call per request");
    }
    assert_ne!(tokens[0], tokens[1], "never a cached or reused token");
    let issued: Vec<_> = standin
        .issued()
        .into_iter()
        .filter_map(|c| c.token)
        .collect();
    assert_eq!(issued, tokens);
    assert_eq!(standin.calls()[0].body["user_id"], "alice");
    assert!(
        upstream.seen().is_empty(),
        "the app never sees the endpoint"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_make_no_released_call() {
    let (upstream, standin, sidecar) = start(&format!(
        "{ON}routes:\n  - name: portal\n    match: {{ path: \"^/portal\" }}\n"
    ))
    .await;
    let ok = || script_fetch(&sidecar, "alice");
    let anonymous = {
        let mut h = ok();
        h.remove("x-forwarded-user");
        h
    };
    let cases: Vec<(&str, Method, HeaderMap, u16)> = vec![
        (
            "cross-site",
            Method::GET,
            with(ok(), "sec-fetch-site", "cross-site"),
            403,
        ),
        (
            "same-site",
            Method::GET,
            with(ok(), "sec-fetch-site", "same-site"),
            403,
        ),
        (
            "typed in",
            Method::GET,
            with(ok(), "sec-fetch-mode", "navigate"),
            403,
        ),
        (
            "foreign origin",
            Method::GET,
            with(ok(), "origin", "http://evil.example"),
            403,
        ),
        (
            "no route for the page",
            Method::GET,
            with(ok(), "referer", &sidecar.url("/other")),
            404,
        ),
        ("no identity", Method::GET, anonymous, 401),
        ("POST", Method::POST, ok(), 405),
        ("DELETE", Method::DELETE, ok(), 405),
    ];
    for (why, method, headers, want) in cases {
        let r = call(&sidecar, method, headers).await;
        assert_eq!(r.status, want, "{why}: {}", r.json);
        assert!(r.json["error"].is_string(), "{why}: a JSON error");
    }
    let r = call(&sidecar, Method::POST, ok()).await;
    assert_eq!(r.headers["allow"], "GET, HEAD");
    assert!(standin.calls().is_empty(), "no call for any refusal");
    assert!(upstream.seen().is_empty());
    // The page's route decides, not the endpoint's own path.
    assert_eq!(call(&sidecar, Method::GET, ok()).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_provably_same_origin_script_mints() {
    let (_u, standin, sidecar) = start(ON).await;
    let fetch_metadata = ["sec-fetch-site", "sec-fetch-mode", "sec-fetch-dest"];
    // A browser without Fetch Metadata (Safari before 16.4, Chrome before 76, Firefox
    // before 90) sends only what it always sent.
    let old_browser = without(script_fetch(&sidecar, "alice"), &fetch_metadata);
    let refused: Vec<(&str, HeaderMap)> = vec![
        (
            "an old browser's <img> on another site: a foreign Referer only",
            with(
                without(old_browser.clone(), &["origin"]),
                "referer",
                "http://evil.example/page",
            ),
        ),
        (
            "a same-origin Referer alone proves nothing",
            without(old_browser.clone(), &["origin"]),
        ),
        (
            "curl: no Origin, no Sec-Fetch-Site, no Referer",
            without(old_browser.clone(), &["origin", "referer"]),
        ),
    ];
    for (why, headers) in refused {
        let r = call(&sidecar, Method::GET, headers).await;
        assert_eq!(r.status, 403, "{why}: {}", r.json);
        assert!(r.json["error"].is_string(), "{why}");
    }
    assert!(standin.calls().is_empty(), "no call for any refusal");

    let minted: Vec<(&str, HeaderMap)> = vec![
        ("an old browser's fetch carrying our Origin", old_browser),
        (
            "a current browser's same-origin GET (no Origin)",
            without(script_fetch(&sidecar, "alice"), &["origin"]),
        ),
    ];
    for (n, (why, headers)) in minted.into_iter().enumerate() {
        let r = call(&sidecar, Method::GET, headers).await;
        assert_eq!(r.status, 200, "{why}: {}", r.json);
        assert_eq!(standin.calls().len(), n + 1, "{why}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_peer_gets_401_whatever_headers_it_forges() {
    let (_u, standin, sidecar) = start(&format!("{ON}trusted_proxies: [\"10.0.0.0/8\"]\n")).await;
    let r = call(&sidecar, Method::GET, script_fetch(&sidecar, "ceo")).await;
    assert_eq!(r.status, 401);
    assert!(standin.calls().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_identity_past_the_rate_limit_gets_429_and_others_do_not() {
    let (_u, standin, sidecar) = start("embed: { client: { rate_limit: \"2/min\" } }\n").await;
    for _ in 0..2 {
        assert_eq!(
            call(&sidecar, Method::GET, script_fetch(&sidecar, "alice"))
                .await
                .status,
            200
        );
    }
    let r = call(&sidecar, Method::GET, script_fetch(&sidecar, "alice")).await;
    assert_eq!(r.status, 429);
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    assert_eq!(standin.calls().len(), 2, "no call for a 429");
    let r = call(&sidecar, Method::GET, script_fetch(&sidecar, "bob")).await;
    assert_eq!(r.status, 200, "the limit is per identity");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_is_one_budget_across_all_workers() {
    // Each call opens a new connection, which the kernel hands to any of the three
    // workers' sockets: a limiter per worker would let more than two through.
    let page = |_: &support::upstream::Seen| Reply::html("<released-page></released-page>");
    let (_u, standin, sidecar) = support::start_with(page, |b| {
        b.workers(3)
            .extra("embed: { client: { rate_limit: \"2/min\" } }\n")
    })
    .await;
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(
            call(&sidecar, Method::GET, script_fetch(&sidecar, "alice"))
                .await
                .status,
        );
    }
    assert_eq!(statuses, [200, 200, 429, 429, 429, 429]);
    assert_eq!(standin.calls().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn released_failing_or_cooling_down_gives_503_never_the_app() {
    let upstream = Upstream::start(|_| Reply::html("")).await;
    let standin = StandIn::start(SECRET).await;
    let sidecar = SidecarBuilder::new(&upstream.url(), &standin.url())
        .template(&DEFAULT_CONFIG.replace(
            "  timeout: \"1500ms\"\n",
            "  timeout: \"1500ms\"\n  cooldown: { after_failures: 1, duration: 1m }\n",
        ))
        .extra(ON)
        .start()
        .await;
    standin.set_behavior(Behavior::Status(500));
    let r = call(&sidecar, Method::GET, script_fetch(&sidecar, "alice")).await;
    assert_eq!(r.status, 503);
    assert_eq!(standin.calls().len(), 1);
    let r = call(&sidecar, Method::GET, script_fetch(&sidecar, "alice")).await;
    assert_eq!(r.status, 503, "cool-down");
    assert_eq!(standin.calls().len(), 1, "no call while cooling down");
    assert!(upstream.seen().is_empty());
    assert_eq!(
        sidecar
            .metric("released_sidecar_embed_token_responses_total{code=\"503\"}")
            .await,
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loader_is_served_cacheable_and_follows_a_custom_path() {
    let (upstream, _s, sidecar) =
        start("embed: { client: { path: /auth/released-token } }\n").await;
    let resp = client()
        .get(sidecar.url("/auth/embed.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let h = resp.headers().clone();
    assert!(h["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/javascript"));
    assert_eq!(h["cache-control"], "public, max-age=3600");
    let etag = h["etag"].to_str().unwrap().to_string();
    let js = resp.text().await.unwrap();
    assert!(js.contains("\"/auth/released-token\""), "{js}");
    assert!(js.contains("MutationObserver"));
    let again = client()
        .get(sidecar.url("/auth/embed.js"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    // A 304 may state only the length a 200 would have (RFC 9110 §8.6).
    let length = again.headers()["content-length"].to_str().unwrap();
    assert_eq!(length, js.len().to_string());
    assert!(upstream.seen().is_empty());
    // The default paths are the app's again.
    let resp = client()
        .get(sidecar.url("/.released/embed.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(upstream.seen().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embed_client_is_hot_reloaded() {
    let (upstream, standin, sidecar) = start("").await;
    let get = || async {
        client()
            .get(sidecar.url(ENDPOINT))
            .headers(script_fetch(&sidecar, "alice"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(get().await, 200, "off: the app answers");
    assert_eq!(upstream.seen().len(), 1);
    sidecar.write_config(&format!("{DEFAULT_CONFIG}{ON}"));
    let on = eventually(Duration::from_secs(5), || async {
        get().await == 200 && !standin.calls().is_empty()
    })
    .await;
    assert!(on, "embed.client not picked up:\n{}", sidecar.logs());
    let seen = upstream.seen().len();
    assert_eq!(get().await, 200);
    assert_eq!(
        upstream.seen().len(),
        seen,
        "the endpoint no longer reaches the app"
    );
}

const LOADER: &str = r#"<script src="/.released/embed.js" defer></script>"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inject_puts_the_loader_into_token_route_pages_once_and_obeys_csp() {
    let page =
        "<html><head><title>t</title></head><body><released-page></released-page></body></html>";
    let upstream = Upstream::start(move |req| match req.path.as_str() {
        "/nonce" => Reply::html(page).header(
            "content-security-policy",
            "script-src 'nonce-abc123' 'strict-dynamic'",
        ),
        "/locked" => Reply::html(page).header("content-security-policy", "script-src 'none'"),
        "/gzip" => Reply::Full {
            status: 200,
            headers: vec![
                ("content-type".into(), "text/html".into()),
                ("content-encoding".into(), "gzip".into()),
            ],
            body: {
                use std::io::Write;
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                gz.write_all(page.as_bytes()).unwrap();
                gz.finish().unwrap().into()
            },
        },
        "/api" => Reply::with(200, "application/json", "{}"),
        _ => Reply::html(page),
    })
    .await;
    let standin = StandIn::start(SECRET).await;
    let sidecar = SidecarBuilder::new(&upstream.url(), &standin.url())
        .extra("embed: { client: { inject: true } }\n")
        .start()
        .await;

    let body = sidecar.page_load("/").await.text().await.unwrap();
    assert_eq!(
        body,
        format!("<html><head><title>t</title>{LOADER}</head><body><released-page auth-token=\"{}\"></released-page></body></html>",
            standin.issued()[0].token.clone().unwrap()),
        "with a token"
    );

    // No identity: no token, but the loader still goes in (it will ask the endpoint).
    let anonymous = client()
        .get(sidecar.url("/"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.headers()["cache-control"], "private, no-store");
    let body = anonymous.text().await.unwrap();
    assert_eq!(body.matches(LOADER).count(), 1, "{body}");
    assert!(!body.contains("auth-token"));

    let body = sidecar.page_load("/nonce").await.text().await.unwrap();
    assert!(
        body.contains(r#"<script src="/.released/embed.js" defer nonce="abc123"></script></head>"#),
        "{body}"
    );
    let body = sidecar.page_load("/locked").await.text().await.unwrap();
    assert!(
        !body.contains("embed.js"),
        "a CSP that forbids it: left alone"
    );
    let body = sidecar.page_load("/gzip").await.text().await.unwrap();
    assert_eq!(
        body.matches(LOADER).count(),
        1,
        "compressed pages too: {body}"
    );
    let body = sidecar.page_load("/api").await.text().await.unwrap();
    assert_eq!(body, "{}", "not a page");

    assert_eq!(
        sidecar
            .metric("released_sidecar_loader_injections_total{result=\"csp_blocked\"}")
            .await,
        1.0
    );
    assert_eq!(
        sidecar
            .metric("released_sidecar_loader_injections_total{result=\"injected\"}")
            .await,
        4.0
    );
}

/// A single-page app: the portal is built by script after load and again on a
/// client-side navigation; the server-rendered HTML has no embed tag.
const SPA: &str = r#"<!doctype html><html><head><title>SPA</title>
<style>released-page::after { content: "auth-token: " attr(auth-token); }</style></head><body>
<button id="nav">Roadmap</button><div id="app">loading</div>
<script>
addEventListener('load', () => setTimeout(() => {
  document.getElementById('app').innerHTML = '<h1>Feedback</h1><released-page id="first"></released-page>';
}, 500));
document.getElementById('nav').addEventListener('click', () => {
  history.pushState({}, '', '/portal/roadmap');
  document.getElementById('app').innerHTML = '<h1>Roadmap</h1><released-page id="second"></released-page>';
});
</script></body></html>"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_browser_gets_a_fresh_token_for_each_embed_rendered_after_load() {
    let Some(chromium) = support::tools::browser() else {
        return;
    };
    let upstream = Upstream::start(|_| Reply::html(SPA)).await;
    let standin = StandIn::start(SECRET).await;
    let sidecar = SidecarBuilder::new(&upstream.url(), &standin.url())
        .extra("embed: { client: { inject: true } }\n")
        .start()
        .await;
    let endpoint = sidecar.url(ENDPOINT);
    let foreign_page = format!(
        "<!doctype html><title>elsewhere</title><script>\
         fetch('{endpoint}', {{ credentials: 'include', mode: 'no-cors' }})\
           .then(r => r.type === 'opaque' ? null : r.json().then(b => b.token))\
           .catch(() => null).then(t => {{ window.result = t; }});</script>"
    );
    let foreign = Upstream::start(move |_| Reply::html(foreign_page.clone())).await;

    let artifacts = std::path::Path::new(env!("CARGO_BIN_EXE_released-sidecar"))
        .parent()
        .and_then(std::path::Path::parent)
        .unwrap()
        .join("embeds");
    std::fs::create_dir_all(&artifacts).unwrap();
    let screenshot = artifacts.join("client-rendered-embeds.png");
    let (page, foreign) = (
        sidecar.url("/portal/feedback"),
        format!("{}/foreign", foreign.url()),
    );
    let shot = screenshot.to_str().unwrap().to_string();
    let report = tokio::task::spawn_blocking(move || {
        support::tools::run_browser(&chromium, "embeds.mjs", &[&page, &foreign, &shot])
    })
    .await
    .unwrap();

    // The page load's own call (made while the app answers, before its HTML is known),
    // then one per embed; none for the other origin.
    let issued: Vec<String> = standin
        .issued()
        .into_iter()
        .filter_map(|c| c.token)
        .collect();
    assert_eq!(issued.len(), 3, "{report:#}");
    assert_eq!(report["first"], issued[1].as_str(), "{report:#}");
    assert_eq!(report["second"], issued[2].as_str(), "{report:#}");
    assert_ne!(report["first"], report["second"], "a fresh token per embed");
    assert!(
        report["foreign"].is_null(),
        "another origin got a token: {report:#}"
    );
    let requests = report["requests"].as_array().unwrap();
    let to_endpoint: Vec<u64> = requests
        .iter()
        .filter(|r| r["url"] == endpoint.as_str())
        .filter_map(|r| r["status"].as_u64())
        .collect();
    assert_eq!(to_endpoint, [200, 200, 403], "{requests:#?}");
    let png = std::fs::read(&screenshot).expect("screenshot saved");
    assert!(png.starts_with(b"\x89PNG"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_says_why_a_page_given_only_the_loader_had_no_token() {
    let upstream =
        Upstream::start(|_| Reply::html("<html><head></head><body></body></html>")).await;
    let standin = StandIn::start(SECRET).await;
    let sidecar = SidecarBuilder::new(&upstream.url(), &standin.url())
        .extra("embed: { client: { inject: true } }\n")
        .start()
        .await;
    let body = client()
        .get(sidecar.url("/anonymous"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body.matches(LOADER).count(), 1, "{body}");
    let logs = sidecar.settled_logs().await;
    let line = logs
        .lines()
        .find(|l| l.contains("/anonymous"))
        .unwrap_or_else(|| panic!("no access line:\n{logs}"));
    assert!(line.contains("missing_header"), "{line}");
    assert!(!line.contains("task_failed"), "{line}");
}
