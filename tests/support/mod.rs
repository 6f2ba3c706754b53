//! Test harness shared by every integration test: a real app (`upstream`), a local
//! stand-in for the Released token API that enforces SPEC §1 (`standin`), the real
//! `released-sidecar` binary started on free loopback ports (`sidecar`), external programs
//! and their child processes (`tools`), hostile config files (`hostile`), and small client
//! helpers. Everything listens on 127.0.0.1 and stops when dropped.
#![allow(dead_code)]

pub mod hostile;
pub mod jwt;
pub mod pki;
pub mod raw;
pub mod sidecar;
pub mod standin;
pub mod tools;
pub mod upstream;

use std::time::Duration;

pub use sidecar::SidecarBuilder;
pub use standin::StandIn;
pub use upstream::{Reply, Upstream};

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// An HTTP client that never uses a proxy and never follows redirects.
pub fn client() -> reqwest::Client {
    released_sidecar::install_crypto_provider();
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// Headers of a browser navigation by a signed-in user, as oauth2-proxy would send them.
pub fn navigation(user: &str, email: &str) -> reqwest::header::HeaderMap {
    let mut h = reqwest::header::HeaderMap::new();
    h.insert(
        "accept",
        "text/html,application/xhtml+xml,*/*;q=0.8".parse().unwrap(),
    );
    h.insert("sec-fetch-dest", "document".parse().unwrap());
    h.insert("x-forwarded-user", user.parse().unwrap());
    h.insert("x-forwarded-email", email.parse().unwrap());
    h
}

/// A sidecar with the default config in front of an app answering with `reply`, and a
/// stand-in accepting the default secret.
pub async fn start(
    reply: impl Fn(&upstream::Seen) -> Reply + Send + Sync + 'static,
) -> (Upstream, StandIn, sidecar::Sidecar) {
    start_with(reply, |builder| builder).await
}

/// Like [`start`], with the sidecar's builder adjusted by `configure` (extra YAML, a
/// descriptor limit…).
pub async fn start_with(
    reply: impl Fn(&upstream::Seen) -> Reply + Send + Sync + 'static,
    configure: impl FnOnce(SidecarBuilder) -> SidecarBuilder,
) -> (Upstream, StandIn, sidecar::Sidecar) {
    let upstream = Upstream::start(reply).await;
    let standin = StandIn::start(sidecar::SECRET).await;
    let sidecar = configure(SidecarBuilder::new(&upstream.url(), &standin.url()))
        .start()
        .await;
    (upstream, standin, sidecar)
}

/// A sidecar with the default config plus `extra` YAML in front of an app already
/// listening at `app` (a raw or scripted one), and a stand-in accepting the default secret.
pub async fn in_front_of(app: std::net::SocketAddr, extra: &str) -> (StandIn, sidecar::Sidecar) {
    let standin = StandIn::start(sidecar::SECRET).await;
    let sidecar = SidecarBuilder::new(&format!("http://{app}"), &standin.url())
        .extra(extra)
        .start()
        .await;
    (standin, sidecar)
}

/// Polls `check` every 20 ms until it holds or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = tokio::time::Instant::now();
    while start.elapsed() < timeout {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// Every `auth-token="…"` value in `html`, in order.
pub fn tokens_in(html: &str) -> Vec<String> {
    html.match_indices("auth-token=\"")
        .map(|(i, m)| {
            let rest = &html[i + m.len()..];
            rest[..rest.find('"').unwrap_or(rest.len())].to_string()
        })
        .collect()
}
