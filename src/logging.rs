//! Where log lines go: stderr, through an in-memory buffer that a background thread writes
//! out every [`FLUSH_EVERY`] (or at once when it passes [`FLUSH_AT`]). A request never
//! waits on a `write(2)` for its access-log line; profiling showed one write per line cost
//! a fifth of the proxy's throughput on small responses.
//!
//! [`flush`] must run before the process exits; `server` and `main` call it.

use std::io::Write;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// Longest a line waits in the buffer.
pub const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// Buffer size that triggers an immediate write (bounds memory under a log storm).
pub const FLUSH_AT: usize = 64 * 1024;

static BUFFER: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();

fn buffer() -> &'static Mutex<Vec<u8>> {
    BUFFER.get_or_init(|| Mutex::new(Vec::with_capacity(FLUSH_AT)))
}

/// Writes everything buffered to stderr now.
pub fn flush() {
    let pending = {
        let mut buf = buffer().lock().unwrap_or_else(PoisonError::into_inner);
        if buf.is_empty() {
            return;
        }
        std::mem::replace(&mut *buf, Vec::with_capacity(FLUSH_AT))
    };
    let mut stderr = std::io::stderr().lock();
    let _ = stderr.write_all(&pending);
    let _ = stderr.flush();
}

/// The `MakeWriter` for tracing-subscriber; starts the flushing thread on first use.
#[derive(Clone, Copy)]
pub struct BufferedStderr;

impl BufferedStderr {
    /// A writer whose lines reach stderr within [`FLUSH_EVERY`].
    pub fn new() -> Self {
        static FLUSHER: OnceLock<()> = OnceLock::new();
        FLUSHER.get_or_init(|| {
            let _ = std::thread::Builder::new()
                .name("log-flusher".into())
                .spawn(|| loop {
                    std::thread::sleep(FLUSH_EVERY);
                    flush();
                });
        });
        BufferedStderr
    }
}

impl Default for BufferedStderr {
    fn default() -> Self {
        Self::new()
    }
}

/// One log line being written.
pub struct Line;

impl Write for Line {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let full = {
            let mut buf = buffer().lock().unwrap_or_else(PoisonError::into_inner);
            buf.extend_from_slice(bytes);
            buf.len() >= FLUSH_AT
        };
        if full {
            flush();
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BufferedStderr {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line
    }
}
