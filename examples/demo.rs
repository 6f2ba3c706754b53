//! Self-contained demo of released-sidecar, all on 127.0.0.1:
//!
//! - a sample "legacy app" page with `<released-page>` and `<released-widget>` tags,
//! - a LOCAL STAND-IN for the Released token API (not the real service: it checks the
//!   request like Released does and mints fake tokens such as `tok-1-1a2b3c4d`),
//! - the real `released-sidecar` binary in front of the app.
//!
//! Run with `scripts/demo.sh` (or `cargo run --example demo`). `--once` makes one checked
//! request and exits (0 if the token was injected). Its temporary directory (config and a
//! secret file) is removed on every exit: `--once`, Ctrl+C, SIGTERM, SIGHUP.

// The stand-in is shared with the integration tests; the demo uses only part of it.
#[allow(dead_code)]
#[path = "../tests/support/standin.rs"]
mod standin;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

const DEMO_SECRET: &str = "demo-shared-secret-not-a-real-one";

const PAGE: &str = r#"<!doctype html>
<html>
<head><meta charset="utf-8"><title>Legacy Intranet</title></head>
<body>
  <h1>Legacy Intranet — Feedback</h1>
  <p>This page was written years ago and knows nothing about Released.</p>
  <released-page account="demo"></released-page>
  <released-widget kind="roadmap"></released-widget>
</body>
</html>
"#;

#[tokio::main]
async fn main() {
    let once = std::env::args().any(|a| a == "--once");
    // Installed first, so a signal at any point leads to the cleanup below, not a bare kill.
    let mut stop_signals = StopSignals::install();
    released_sidecar::install_crypto_provider();

    let standin = standin::StandIn::start(DEMO_SECRET).await;
    let app = start_app().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let listen = pick("127.0.0.1:8080");
    let admin = pick("127.0.0.1:9901");
    std::fs::write(dir.path().join("shared-secret"), DEMO_SECRET).unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            r#"# Demo config written by examples/demo.rs
listen: "{listen}"
admin: {{ listen: "{admin}" }}
upstream: "http://{app}"
workers: 1
released:
  api_url: "{api}"          # LOCAL STAND-IN, not the real Released API
  account_id: "demo-account"
  shared_secret_file: "shared-secret"
  timeout: "1500ms"
identity:
  user_id:    {{ header: X-Forwarded-User, transform: [escape] }}
  user_email: {{ header: X-Forwarded-Email }}
  name:       {{ header: X-Forwarded-Preferred-Username }}
"#,
            api = standin.url()
        ),
    )
    .unwrap();

    println!("released-sidecar demo (everything on 127.0.0.1)");
    println!("  sample legacy app ............ http://{app}/");
    println!(
        "  LOCAL STAND-IN token API ..... {} (not the real Released service; fake tokens)",
        standin.url()
    );
    println!("  released-sidecar (proxy) ..... http://{listen}/");
    println!("  released-sidecar (admin) ..... http://{admin}/metrics");
    let log = dir.path().join("sidecar.log");
    if !once {
        println!("  config ....................... {}", config.display());
        println!("  sidecar logs ................. tail -f {}", log.display());
    }
    println!();

    let mut child = spawn_sidecar(&config, &log);
    if !wait_ready(admin, &mut child).await {
        eprintln!("{}", std::fs::read_to_string(&log).unwrap_or_default());
        stop(&mut child);
        // exit() skips destructors: remove the directory (it holds a secret) first.
        drop(dir);
        std::process::exit(1);
    }

    let page = client()
        .get(format!("http://{listen}/"))
        .header("accept", "text/html")
        .header("x-forwarded-user", "alice@example.com")
        .header("x-forwarded-email", "alice@example.com")
        .header("x-forwarded-preferred-username", "Alice Example")
        .send()
        .await
        .expect("demo request");
    let cache_control = page
        .headers()
        .get("cache-control")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = page.text().await.unwrap_or_default();
    let injected = body
        .lines()
        .filter(|l| l.contains("auth-token="))
        .collect::<Vec<_>>();
    println!(
        "A page load as alice@example.com (the headers oauth2-proxy would forward) came back with:"
    );
    for line in &injected {
        println!("  {}", line.trim());
    }
    println!("  Cache-Control: {cache_control}");
    println!(
        "The stand-in received {} token request(s).",
        standin.issued().len()
    );
    let ok = injected.len() == 2;
    if once {
        stop(&mut child);
        drop(dir);
        if !ok {
            eprintln!("demo check failed: expected two rewritten tags");
        }
        println!("Stopped. `scripts/demo.sh` without --once keeps everything running to curl it.");
        std::process::exit(if ok { 0 } else { 1 });
    }
    println!();
    println!("Try it yourself:");
    println!("  # a page load by a signed-in user: both tags get auth-token=\"tok-…\"");
    println!("  curl -s http://{listen}/ -H 'Accept: text/html' \\");
    println!(
        "       -H 'X-Forwarded-User: alice@example.com' -H 'X-Forwarded-Email: alice@example.com'"
    );
    println!("  # no identity headers: the page is served unchanged, no token call");
    println!("  curl -s http://{listen}/ -H 'Accept: text/html'");
    println!("  # an API call (not a page load): proxied untouched");
    println!("  curl -s http://{listen}/api/status");
    println!("  # metrics");
    println!("  curl -s http://{admin}/metrics | grep released_sidecar_token");
    println!("  # dry run without network");
    println!(
        "  {} explain --config {} --url http://{listen}/ -H 'X-Forwarded-User: alice@example.com' -H 'X-Forwarded-Email: alice@example.com'",
        sidecar_binary().display(),
        config.display()
    );

    println!();
    println!("Press Ctrl+C to stop.");
    stop_signals.recv().await;
    println!();
    println!(
        "Stopping: released-sidecar drains (SIGTERM), then the sample page and the stand-in stop."
    );
    stop(&mut child);
    let removed = dir.path().display().to_string();
    drop(dir);
    println!("Stopped; removed {removed} (the demo's config and secret file).");
}

/// Ctrl+C, SIGTERM and SIGHUP (a closed terminal), caught so `main` can clean up.
struct StopSignals(Vec<tokio::signal::unix::Signal>);

impl StopSignals {
    fn install() -> Self {
        use tokio::signal::unix::{signal, SignalKind};
        let kinds = [
            SignalKind::interrupt(),
            SignalKind::terminate(),
            SignalKind::hangup(),
        ];
        Self(
            kinds
                .into_iter()
                .map(|k| signal(k).expect("signal handler"))
                .collect(),
        )
    }

    /// Returns when any of them arrives.
    async fn recv(&mut self) {
        let waits = self.0.iter_mut().map(|s| Box::pin(s.recv()));
        futures_util::future::select_all(waits).await;
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
}

/// `preferred` if it is free, else any free loopback port.
fn pick(preferred: &str) -> SocketAddr {
    let listener = std::net::TcpListener::bind(preferred)
        .or_else(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .expect("a free port");
    listener.local_addr().unwrap()
}

async fn start_app() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind app");
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service = service_fn(|req: Request<hyper::body::Incoming>| async move {
                    let (ct, body) = match req.uri().path() {
                        "/api/status" => ("application/json", r#"{"status":"ok"}"#.to_string()),
                        _ => ("text/html; charset=utf-8", PAGE.to_string()),
                    };
                    Ok::<_, Infallible>(
                        Response::builder()
                            .header("content-type", ct)
                            .body(Full::new(Bytes::from(body)))
                            .unwrap(),
                    )
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    addr
}

fn sidecar_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("RELEASED_SIDECAR_BIN") {
        return PathBuf::from(path);
    }
    // target/debug/examples/demo -> target/debug/released-sidecar
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(|p| p.parent())
        .map(|p| p.join("released-sidecar"))
        .expect("target dir")
}

fn spawn_sidecar(config: &std::path::Path, log: &std::path::Path) -> Child {
    let binary = sidecar_binary();
    let log = std::fs::File::create(log).expect("log file");
    Command::new(&binary)
        .arg("run")
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start {}: {e} (run scripts/demo.sh, which builds it)",
                binary.display()
            )
        })
}

async fn wait_ready(admin: SocketAddr, child: &mut Child) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            eprintln!("released-sidecar exited early: {status}");
            return false;
        }
        if let Ok(r) = client().get(format!("http://{admin}/readyz")).send().await {
            if r.status() == 200 {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("released-sidecar did not become ready");
    false
}

/// SIGTERM (drain) by PID, then wait.
fn stop(child: &mut Child) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let _ = child.wait();
}
