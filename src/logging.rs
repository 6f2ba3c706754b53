//! Which log lines may be written, and how they reach stderr.
//!
//! - **No credential in any line, at any `RUST_LOG`.** pingora prints whole request and
//!   response headers at debug and trace (every Cookie, Authorization and gateway
//!   assertion), and the HTTP libraries below the token client are as chatty. Lines of
//!   other crates are therefore capped at `info` whatever `RUST_LOG` asks for; the
//!   sidecar's own lines never carry a header value, token or secret at any level. An
//!   operator who must see the framework's debug lines sets [`UNSAFE_ENV`]`=1`, and the
//!   sidecar says at start that the log now holds credentials.
//! - **A request never waits on a `write(2)`.** Lines go through tracing-appender's
//!   non-blocking writer: a bounded queue drained by a background thread. When the queue
//!   is full (a log storm on a slow terminal) lines are dropped and counted in
//!   `released_sidecar_log_lines_dropped_total` rather than stalling the proxy.
//!
//! [`flush`] must run before the process exits; `server` and `main` call it.

use std::io::IsTerminal;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use tracing::{Level, Metadata};
use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::filter::{filter_fn, EnvFilter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// Set to `1` to let other crates' debug and trace lines through: they contain request
/// headers, cookies and credentials. For a local reproduction only.
pub const UNSAFE_ENV: &str = "RELEASED_SIDECAR_UNSAFE_LOG_HEADERS";

/// Lines queued for the writer thread before new ones are dropped.
const QUEUE_LINES: usize = 64 * 1024;

/// The default filter when `RUST_LOG` is unset: pingora logs every service start at info.
const DEFAULT_FILTER: &str = "info,pingora_core=warn,pingora_proxy=warn,pingora=warn";

static GUARD: Mutex<Option<WorkerGuard>> = Mutex::new(None);
static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// How lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Human-readable text.
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the global subscriber: `RUST_LOG` filter, credential cap, non-blocking stderr.
pub fn init(format: Format) {
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(QUEUE_LINES)
        .thread_name("log-writer")
        .finish(std::io::stderr());
    let _ = DROPPED.set(writer.error_counter());
    *GUARD.lock().unwrap_or_else(PoisonError::into_inner) = Some(guard);

    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let unsafe_headers = std::env::var(UNSAFE_ENV).is_ok_and(|v| v == "1");
    let cap = filter_fn(move |meta| unsafe_headers || may_log(meta));
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(writer);
    let layer = match format {
        Format::Text => fmt.boxed(),
        Format::Json => fmt.json().flatten_event(true).boxed(),
    };
    tracing_subscriber::registry()
        .with(layer.with_filter(cap).with_filter(filter))
        .init();
    if unsafe_headers {
        tracing::warn!(
            "{UNSAFE_ENV}=1: other crates' debug lines are logged; they contain cookies, authorization headers and assertions"
        );
    }
}

/// Whether a line may be written without the unsafe switch: the sidecar's own lines at
/// any level, other crates' only up to `info`.
fn may_log(meta: &Metadata<'_>) -> bool {
    *meta.level() <= Level::INFO || is_own(meta.target())
}

fn is_own(target: &str) -> bool {
    target == "access"
        || target
            .strip_prefix("released_sidecar")
            .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
}

/// One access-log line (`target: "access"`): the fields of every request, whether the app
/// answered it or the sidecar did (a refused head, the token endpoint, an error page).
#[derive(Debug, Clone, Copy)]
pub struct AccessLine<'a> {
    /// The request method (empty when no head was read).
    pub method: &'a str,
    /// The path, without the query (which may carry credentials).
    pub path: &'a str,
    /// The status sent (0: none).
    pub status: u16,
    /// When the request started.
    pub started: Instant,
    /// The route's name (empty: none).
    pub route: &'a str,
    /// What became of the token: `used`, or why there was none.
    pub token: &'a str,
    /// Embed tags that received the token.
    pub tags: usize,
    /// Why the request failed, if it did.
    pub error: Option<&'a str>,
}

impl AccessLine<'_> {
    /// Writes the line.
    pub fn write(&self) {
        tracing::info!(
            target: "access",
            method = %self.method,
            path = %self.path,
            status = self.status,
            duration_ms = self.started.elapsed().as_millis() as u64,
            route = self.route,
            token = self.token,
            tags = self.tags,
            error = self.error,
        );
    }
}

/// Lets one log line through per interval and counts the ones it held back: a flapping app
/// or a wrong secret must not flood the log, but the first sign of trouble shows at once.
#[derive(Debug)]
pub struct LogGate {
    every_ms: u64,
    origin: Instant,
    /// Milliseconds after `origin` when the next line may pass (0: now).
    next_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl LogGate {
    /// A gate letting one line through per `every`.
    pub fn new(every: Duration) -> Self {
        Self {
            every_ms: every.as_millis() as u64,
            origin: Instant::now(),
            next_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(lines held back since the last one)` when a line may be written now.
    pub fn admit(&self) -> Option<u64> {
        let now = self.origin.elapsed().as_millis() as u64;
        let next = self.next_ms.load(Relaxed);
        if now >= next
            && self
                .next_ms
                .compare_exchange(next, now + self.every_ms, Relaxed, Relaxed)
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Relaxed));
        }
        self.suppressed.fetch_add(1, Relaxed);
        None
    }
}

/// Lines dropped because the writer could not keep up.
pub fn dropped_lines() -> u64 {
    DROPPED.get().map_or(0, |c| c.dropped_lines() as u64)
}

/// Writes every queued line to stderr now and stops the writer (call right before exit).
pub fn flush() {
    let guard = GUARD.lock().unwrap_or_else(PoisonError::into_inner).take();
    drop(guard);
}

/// A pingora error as a log line may show it: its type, the side that failed and the
/// innermost cause when that is not pingora's own (an OS or HTTP-parser error, which
/// names no request data) — never the error's text, which quotes the raw head pingora
/// failed to parse (`buf: …`, cookies included).
pub struct PingoraError<'a>(pub &'a pingora::Error);

impl std::fmt::Display for PingoraError<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let e = self.0;
        write!(f, "{} {}", e.esource().as_str(), e.etype().as_str())?;
        let root = e.root_cause();
        if root.downcast_ref::<pingora::Error>().is_none() {
            write!(f, ": {root}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_gate_lets_one_line_through_per_interval_and_counts_the_rest() {
        let gate = LogGate::new(Duration::from_millis(50));
        assert_eq!(gate.admit(), Some(0));
        assert_eq!(gate.admit(), None);
        assert_eq!(gate.admit(), None);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(gate.admit(), Some(2));
    }

    #[test]
    fn only_our_own_targets_pass_below_info() {
        let cases = [
            ("released_sidecar", true),
            ("released_sidecar::request::proxy", true),
            ("access", true),
            ("released_sidecar_evil", false),
            ("pingora_proxy::proxy_h1", false),
            ("pingora_core::protocols::http::v1::server", false),
            ("hyper_util::client::legacy::pool", false),
            ("reqwest::connect", false),
            ("rustls::client::hs", false),
        ];
        for (target, own) in cases {
            assert_eq!(is_own(target), own, "{target}");
        }
    }
}
