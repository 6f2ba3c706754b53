//! Per-call cost of the token client (`ReleasedClient::fetch`, `src/token/released.rs`) as a
//! page load spends it: request build, JSON encode, pool checkout, the HTTP/1.1 exchange on
//! a kept-alive loopback connection, the body read, JSON decode, metrics and cool-down.
//! The API is a minimal in-process stand-in that answers every request from one fixed
//! buffer, so what is measured is the client (plus two loopback syscalls each way).
//!
//! Run: `cargo bench --bench token_client -- --warm-up-time 1 --measurement-time 3`
//! Instruction counts per call (steadier than time on a shared machine):
//! `valgrind --tool=callgrind --callgrind-out-file=cg.out target-bench/release/deps/token_client-* --bench --profile-time 2 token_client/fetch`
//! and divide by the iterations criterion reports, or compare two builds' totals.
//!
//! - `token_client/fetch`: one `fetch`, awaited on a current-thread runtime (a worker
//!   thread runs it so in the sidecar, one runtime per worker).
//! - `token_client/spawned_fetch`: the same in a task of its own, joined, as the proxy
//!   starts it (`tokio::spawn`, so the call runs while the app answers).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use released_sidecar::metrics::Metrics;
use released_sidecar::token::cool_down::{CoolDown, CoolDownPolicy};
use released_sidecar::token::released::{
    ReleasedClient, ReleasedSettings, SecretSource, TokenRequest,
};
use released_sidecar::token::secret::Secret;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TOKEN_BODY: &str = r#"{"token":"tok-bench-instant-0123456789abcdef"}"#;

/// The stand-in's one answer.
fn response() -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{TOKEN_BODY}",
        TOKEN_BODY.len()
    )
    .into_bytes()
}

/// The length of the first complete request in `buf` (head plus `content-length` body).
fn complete_request(buf: &[u8]) -> Option<usize> {
    let head = memchr::memmem::find(buf, b"\r\n\r\n")? + 4;
    let length = buf[..head]
        .split(|&b| b == b'\n')
        .find_map(|line| {
            let (name, value) = std::str::from_utf8(line).ok()?.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    (buf.len() >= head + length).then_some(head + length)
}

/// Answers every request on `tcp` with `response` until the client closes.
async fn answer(mut tcp: TcpStream, response: Arc<[u8]>) {
    let _ = tcp.set_nodelay(true);
    let mut buf = vec![0u8; 16 * 1024];
    let mut filled = 0;
    loop {
        match tcp.read(&mut buf[filled..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => filled += n,
        }
        while let Some(len) = complete_request(&buf[..filled]) {
            if tcp.write_all(&response).await.is_err() {
                return;
            }
            buf.copy_within(len..filled, 0);
            filled -= len;
        }
    }
}

async fn stand_in() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let response: Arc<[u8]> = response().into();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(answer(tcp, Arc::clone(&response)));
        }
    });
    format!("http://{addr}/auth/api/impersonation/token")
}

fn request() -> TokenRequest {
    TokenRequest {
        account_id: "acct-bench".to_string(),
        user_id: "alice:40example:2ecom".to_string(),
        user_email: "alice@example.com".to_string(),
        profile: None,
    }
}

fn bench_fetch(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let url = rt.block_on(stand_in());
    let settings = Arc::new(ReleasedSettings {
        api_url: url.parse().expect("url"),
        account_id: "acct-bench".to_string(),
        secret: Secret::new("bench-shared-secret-not-a-real-one"),
        secret_source: SecretSource::Env("RELEASED_SECRET".to_string()),
        timeout: Duration::from_millis(1500),
        cooldown: CoolDownPolicy::default(),
    });
    let cool_down = Arc::new(CoolDown::new(CoolDownPolicy::default()));
    let client = ReleasedClient::new(Arc::new(Metrics::new())).expect("client");
    let request = request();
    let deadline = || Instant::now() + settings.timeout;
    rt.block_on(async {
        let token = client
            .fetch(&settings, &cool_down, &request, deadline())
            .await;
        assert!(
            token.is_ok(),
            "the stand-in answers with a token: {token:?}"
        );
    });

    let mut group = c.benchmark_group("token_client");
    group.bench_function("fetch", |b| {
        b.iter(|| {
            rt.block_on(async {
                black_box(
                    client
                        .fetch(&settings, &cool_down, &request, deadline())
                        .await,
                )
                .is_ok()
            })
        })
    });
    group.bench_function("spawned_fetch", |b| {
        b.iter(|| {
            let (client, settings, cool_down, request) = (
                client.clone(),
                Arc::clone(&settings),
                Arc::clone(&cool_down),
                request.clone(),
            );
            rt.block_on(async move {
                let task = tokio::spawn(async move {
                    let deadline = Instant::now() + settings.timeout;
                    client
                        .fetch(&settings, &cool_down, &request, deadline)
                        .await
                });
                black_box(task.await).is_ok()
            })
        })
    });
    group.finish();
}

criterion_group!(benches, bench_fetch);
criterion_main!(benches);
