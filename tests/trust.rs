//! The trust boundary (SPEC §2.1): identity headers count only from `trusted_proxies`.
//! An untrusted peer is simulated by trusting a range that excludes 127.0.0.1.

mod support;

use std::collections::HashMap;

use support::{client, navigation, Reply, SidecarBuilder, StandIn, Upstream};

const SECRET: &str = support::sidecar::SECRET;

async fn echoed_headers(
    sidecar: &support::sidecar::Sidecar,
    headers: reqwest::header::HeaderMap,
) -> HashMap<String, Vec<String>> {
    let resp = client()
        .get(sidecar.url("/echo"))
        .headers(headers)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

/// An app that echoes the headers it gets, behind a sidecar with `extra` config.
async fn echoing_sidecar(extra: &str) -> (Upstream, StandIn, support::sidecar::Sidecar) {
    support::start_with(|_| Reply::EchoHeaders, |b| b.extra(extra)).await
}

fn forged() -> reqwest::header::HeaderMap {
    let mut h = navigation("admin", "admin@example.com");
    h.insert("x-forwarded-preferred-username", "Admin".parse().unwrap());
    h.insert(
        "x-forwarded-avatar",
        "https://evil.example/a.png".parse().unwrap(),
    );
    h.insert("x-forwarded-for", "127.0.0.1".parse().unwrap());
    h.insert("x-real-ip", "127.0.0.1".parse().unwrap());
    h.insert("x-app-header", "kept".parse().unwrap());
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_identity_headers_from_an_untrusted_peer_are_stripped_and_mint_nothing() {
    let (_upstream, standin, sidecar) = echoing_sidecar("trusted_proxies: [\"10.0.0.0/8\"]").await;

    let seen = echoed_headers(&sidecar, forged()).await;
    for stripped in [
        "x-forwarded-user",
        "x-forwarded-email",
        "x-forwarded-preferred-username",
        "x-forwarded-avatar",
    ] {
        assert!(
            !seen.contains_key(stripped),
            "{stripped} reached the app: {seen:?}"
        );
    }
    assert_eq!(
        seen["x-app-header"],
        ["kept"],
        "other headers are untouched"
    );
    assert!(
        standin.calls().is_empty(),
        "a forged identity minted a token"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_for_never_grants_trust() {
    let upstream = Upstream::start(|_| Reply::html("<released-page></released-page>")).await;
    let standin = StandIn::start(SECRET).await;
    let sidecar = SidecarBuilder::new(&upstream.url(), &standin.url())
        .extra("trusted_proxies: [\"10.0.0.0/8\"]")
        .start()
        .await;
    let mut headers = forged();
    headers.insert("x-forwarded-for", "10.0.0.5".parse().unwrap());
    headers.insert("forwarded", "for=10.0.0.5".parse().unwrap());
    let body = sidecar.get_text("/page", headers).await;
    assert_eq!(
        body, "<released-page></released-page>",
        "page served unchanged"
    );
    assert!(standin.calls().is_empty());
    let skips = sidecar
        .metric("released_sidecar_token_skips_total{reason=\"untrusted_peer\"}")
        .await;
    assert_eq!(skips, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_peer_keeps_its_identity_headers() {
    let upstream = Upstream::start(|_| Reply::EchoHeaders).await;
    let standin = StandIn::start(SECRET).await;
    let sidecar = SidecarBuilder::new(&upstream.url(), &standin.url())
        .start()
        .await;
    let seen = echoed_headers(&sidecar, forged()).await;
    assert_eq!(seen["x-forwarded-user"], ["admin"]);
    assert_eq!(seen["x-forwarded-email"], ["admin@example.com"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_headers_named_only_in_a_route_are_stripped_everywhere() {
    let (_upstream, standin, sidecar) = echoing_sidecar("trusted_proxies: [\"10.0.0.0/8\"]\nroutes:\n  - name: iap\n    match: { path: \"^/iap\" }\n    identity:\n      user_email: { header: X-Goog-Authenticated-User-Email, pattern: \"^accounts.google.com:(.+)$\" }\n  - name: rest\n").await;
    let mut headers = forged();
    headers.insert(
        "x-goog-authenticated-user-email",
        "accounts.google.com:ceo@example.com".parse().unwrap(),
    );
    let seen = echoed_headers(&sidecar, headers).await;
    assert!(
        !seen.contains_key("x-goog-authenticated-user-email"),
        "{seen:?}"
    );
    assert!(!seen.contains_key("x-forwarded-user"));
    assert!(
        standin.calls().is_empty(),
        "an untrusted peer mints nothing"
    );
}

/// Every way a client may spell the identity headers so that a CGI/Rack/WSGI app server
/// reads them as `HTTP_X_FORWARDED_USER` and friends.
fn respelled(headers: &mut reqwest::header::HeaderMap) {
    for (name, value) in [
        ("x_forwarded_user", "mallory"),
        ("x_forwarded-user", "mallory"),
        ("x-forwarded_email", "mallory@example.com"),
        ("x_forwarded_email", "mallory@example.com"),
        ("x_forwarded_preferred_username", "Mallory"),
        ("x_forwarded_avatar", "https://evil.example/m.png"),
    ] {
        headers.append(
            reqwest::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn underscore_spellings_never_reach_the_app_from_a_trusted_peer() {
    let upstream = Upstream::start(|_| Reply::EchoHeaders).await;
    let standin = StandIn::start(SECRET).await;
    let sidecar = SidecarBuilder::new(&upstream.url(), &standin.url())
        .start()
        .await;
    let mut headers = navigation("alice", "alice@example.com");
    respelled(&mut headers);
    headers.insert("x_request_id", "kept".parse().unwrap());
    let seen = echoed_headers(&sidecar, headers).await;
    let leaked: Vec<_> = seen
        .keys()
        .filter(|k| k.contains('_') && k.replace('_', "-").starts_with("x-forwarded-"))
        .collect();
    assert!(leaked.is_empty(), "{leaked:?} reached the app: {seen:?}");
    assert_eq!(
        seen["x-forwarded-user"],
        ["alice"],
        "the real header passes"
    );
    assert_eq!(seen["x-forwarded-email"], ["alice@example.com"]);
    assert_eq!(
        seen["x_request_id"],
        ["kept"],
        "unrelated names are untouched"
    );
    assert_eq!(
        sidecar
            .metric("released_sidecar_identity_headers_stripped_total{reason=\"respelled\"}")
            .await,
        6.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn underscore_spellings_from_an_untrusted_peer_are_stripped_and_mint_nothing() {
    let (_upstream, standin, sidecar) = echoing_sidecar("trusted_proxies: [\"10.0.0.0/8\"]").await;
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("accept", "text/html".parse().unwrap());
    respelled(&mut headers);
    let seen = echoed_headers(&sidecar, headers).await;
    assert!(
        !seen
            .keys()
            .any(|k| k.replace('_', "-").starts_with("x-forwarded-")),
        "{seen:?}"
    );
    assert!(standin.calls().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_level_identity_headers_are_stripped_even_when_every_route_overrides_them() {
    let (_upstream, standin, sidecar) = echoing_sidecar("trusted_proxies: [\"10.0.0.0/8\"]\nroutes:\n  - name: only\n    identity:\n      user_id: { header: Remote-User }\n      user_email: { header: Remote-Email }\n").await;
    let mut headers = forged();
    headers.insert("remote-user", "mallory".parse().unwrap());
    headers.insert("x_forwarded_user", "mallory".parse().unwrap());
    let seen = echoed_headers(&sidecar, headers).await;
    for stripped in [
        "remote-user",
        "x-forwarded-user",
        "x-forwarded-email",
        "x_forwarded_user",
    ] {
        assert!(!seen.contains_key(stripped), "{stripped}: {seen:?}");
    }
    assert!(
        standin.calls().is_empty(),
        "an untrusted peer mints nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strip_headers_never_reach_the_app_in_any_spelling_from_any_peer() {
    // Behind forward_auth the gateway sets X-Auth-Request-*; a client's own
    // X-Forwarded-User passes the gateway untouched, and an app reading it is spoofable.
    let base = &support::sidecar::DEFAULT_CONFIG
        [..support::sidecar::DEFAULT_CONFIG.find("identity:").unwrap()];
    let upstream = Upstream::start(|_| Reply::EchoHeaders).await;
    let standin = StandIn::start(SECRET).await;
    let sidecar = SidecarBuilder::new(&upstream.url(), &standin.url())
        .template(&format!(
            "{base}trusted_proxies: [\"127.0.0.1/32\"]\nidentity: {{ preset: oauth2-proxy-auth-request }}\nstrip_headers: [X-Forwarded-User, X-Forwarded-Email]\n"
        ))
        .start()
        .await;
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("accept", "application/json".parse().unwrap());
    headers.insert("x-auth-request-user", "carol".parse().unwrap());
    for (name, value) in [
        ("x-forwarded-user", "mallory"),
        ("x_forwarded_user", "mallory"),
        ("x-forwarded_email", "mallory@example.com"),
        ("x-forwarded-for", "10.1.2.3"),
    ] {
        headers.append(
            reqwest::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    let untrusted = reqwest::Client::builder()
        .no_proxy()
        .local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    for (peer, client) in [("trusted", client()), ("untrusted", untrusted)] {
        let seen: HashMap<String, Vec<String>> = client
            .get(sidecar.url("/echo"))
            .headers(headers.clone())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let leaked: Vec<_> = seen
            .iter()
            .filter(|(_, v)| v.iter().any(|v| v.contains("mallory")))
            .collect();
        assert!(leaked.is_empty(), "{peer}: {leaked:?}");
        assert_eq!(seen["x-forwarded-for"], ["10.1.2.3"], "{peer}: others pass");
        let auth = seen.get("x-auth-request-user").cloned().unwrap_or_default();
        match peer {
            "trusted" => assert_eq!(auth, ["carol"], "the gateway's own family passes"),
            _ => assert!(auth.is_empty(), "an untrusted peer's identity is stripped"),
        }
    }
    assert_eq!(
        sidecar
            .metric("released_sidecar_identity_headers_stripped_total{reason=\"strip_headers\"}")
            .await,
        6.0
    );
}
