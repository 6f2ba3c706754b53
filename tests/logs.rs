//! SPEC §3: secrets, tokens, assertions, cookies and authorization headers never appear in
//! a log line, at any `RUST_LOG`, the framework's own lines included.

mod support;

use std::time::Duration;

use rand::Rng;
use support::{client, navigation, Reply, SidecarBuilder, StandIn, Upstream};

const PAGE: &str = "<html><body><released-page></released-page></body></html>";

fn random(prefix: &str) -> String {
    format!("{prefix}{:032x}", rand::thread_rng().gen::<u128>())
}

/// Credentials planted in every place a request carries them.
struct Planted {
    secret: String,
    cookie: String,
    authorization: String,
    proxy_authorization: String,
    access_token: String,
    assertion: String,
    set_cookie: String,
}

impl Planted {
    fn new() -> Self {
        Self {
            secret: random("secret-"),
            cookie: random("cookie-"),
            authorization: random("bearer-"),
            proxy_authorization: random("proxy-"),
            access_token: random("access-"),
            assertion: random("eyJassertion"),
            set_cookie: random("session-"),
        }
    }

    fn values(&self) -> [&str; 7] {
        [
            &self.secret,
            &self.cookie,
            &self.authorization,
            &self.proxy_authorization,
            &self.access_token,
            &self.assertion,
            &self.set_cookie,
        ]
    }
}

/// Runs a sidecar at `RUST_LOG=trace` (plus `env`), sends page loads, a JSON request, a
/// POST and a request to an unreachable path carrying every planted credential, stops it and returns
/// its whole log and the tokens it issued.
async fn traced_run(planted: &Planted, env: &[(&str, &str)]) -> (String, Vec<String>) {
    let set_cookie = format!("sid={}; HttpOnly", planted.set_cookie);
    let upstream = Upstream::start(move |req| match req.path.as_str() {
        "/api" => Reply::with(200, "application/json", "{}").header("set-cookie", &set_cookie),
        _ => Reply::html(PAGE).header("set-cookie", &set_cookie),
    })
    .await;
    let standin = StandIn::start(&planted.secret).await;
    let mut builder = SidecarBuilder::new(&upstream.url(), &standin.url())
        .secret(&planted.secret)
        .env("RUST_LOG", "trace");
    for (k, v) in env {
        builder = builder.env(k, v);
    }
    let mut sidecar = builder.start().await;
    // The POST goes through pingora's client session (a request with a body), the GETs
    // through the sidecar's own response reader: both paths' log lines are checked.
    for (post, path) in [(false, "/"), (false, "/api"), (true, "/api"), (false, "/")] {
        let mut headers = navigation("alice", "alice@example.com");
        for (name, value) in [
            ("cookie", format!("sid={}", planted.cookie)),
            ("authorization", format!("Bearer {}", planted.authorization)),
            (
                "proxy-authorization",
                format!("Basic {}", planted.proxy_authorization),
            ),
            ("x-forwarded-access-token", planted.access_token.clone()),
            ("x-goog-iap-jwt-assertion", planted.assertion.clone()),
            ("x_forwarded_user", "mallory".into()),
        ] {
            headers.insert(
                reqwest::header::HeaderName::from_static(name),
                value.parse().unwrap(),
            );
        }
        let request = if post {
            client().post(sidecar.url(path)).body("{\"q\":1}")
        } else {
            client().get(sidecar.url(path))
        };
        let resp = request.headers(headers).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        resp.bytes().await.unwrap();
    }
    let issued: Vec<String> = standin
        .issued()
        .into_iter()
        .filter_map(|c| c.token)
        .collect();
    assert!(issued.len() >= 2, "both page loads minted a token");
    sidecar.signal(libc::SIGTERM);
    assert!(sidecar.wait_exit(Duration::from_secs(10)).await.is_some());
    (sidecar.logs(), issued)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_credential_reaches_the_log_at_rust_log_trace() {
    let planted = Planted::new();
    let (logs, issued) = traced_run(&planted, &[]).await;
    // The run really was verbose: the sidecar's own debug lines are there.
    assert!(logs.contains("identity header removed"), "{logs}");
    assert!(logs.contains("access"), "{logs}");
    for value in planted
        .values()
        .into_iter()
        .chain(issued.iter().map(String::as_str))
    {
        assert!(
            !logs.contains(value),
            "{value} leaked into the log:\n{logs}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_unsafe_switch_is_what_lets_framework_headers_through() {
    let planted = Planted::new();
    let (logs, _) = traced_run(&planted, &[("RELEASED_SIDECAR_UNSAFE_LOG_HEADERS", "1")]).await;
    assert!(
        logs.contains("contain cookies, authorization headers and assertions"),
        "the switch announces itself:\n{logs}"
    );
    assert!(
        logs.contains(&planted.cookie),
        "with the switch on, pingora's header dumps are logged (so the test above can fail)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_heads_carrying_credentials_never_reach_the_log() {
    // pingora quotes a head it cannot parse in its error ("buf: …"); the sidecar logs
    // failures, so it must not log that text.
    let app_cookie = random("app-session-");
    let client_cookie = random("client-cookie-");
    let reply =
        format!("HTTP/1.1 200 OK\r\nSet-Cookie: sid={app_cookie}\r\nnot a header line\r\n\r\n");
    let (app, _seen) = support::raw::one_shot_app(Box::leak(reply.into_bytes().into())).await;
    let standin = StandIn::start(support::sidecar::SECRET).await;
    let mut sidecar = SidecarBuilder::new(&format!("http://{app}"), &standin.url())
        .env("RUST_LOG", "trace")
        .start()
        .await;

    let resp = client()
        .get(sidecar.url("/"))
        .header("cookie", format!("sid={client_cookie}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502, "the app's broken head is a bad gateway");

    let bad_request =
        format!("GET / HTTP/1.1\r\nHost: x\r\nCookie: sid={client_cookie}\r\nbad header\r\n\r\n");
    let answer = support::raw::exchange(
        sidecar.listen,
        bad_request.as_bytes(),
        Duration::from_secs(5),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");

    sidecar.signal(libc::SIGTERM);
    assert!(sidecar.wait_exit(Duration::from_secs(10)).await.is_some());
    let logs = sidecar.logs();
    assert!(
        logs.contains("the app failed"),
        "the failure is logged:\n{logs}"
    );
    for value in [&app_cookie, &client_cookie] {
        assert!(
            !logs.contains(value.as_str()),
            "{value} leaked into the log:\n{logs}"
        );
    }
}
