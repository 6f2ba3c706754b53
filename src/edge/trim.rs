//! Gives freed heap memory back to the operating system after a burst of connections.
//!
//! glibc's allocator keeps freed memory in its per-thread arenas, and small blocks freed in
//! the middle of an arena are never returned on their own: after a flood of connections
//! the process would keep its peak size for good (measured: 15,000 idle connections left
//! 698 MB resident after they closed). `malloc_trim(0)` releases every free page of every
//! arena; it walks the arenas under their locks, so it runs only after the connection count
//! has dropped well below its recent peak, from a thread of its own, never per request.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::metrics::Metrics;

/// The most connections seen open at once since the last trim (a flood can come and go
/// between two checks).
static PEAK: AtomicI64 = AtomicI64::new(0);

/// Notes the current number of open connections.
pub fn observe(connections: i64) {
    PEAK.fetch_max(connections, Ordering::Relaxed);
}

/// How often the connection count is looked at.
const CHECK_EVERY: Duration = Duration::from_secs(5);
/// A drop by at least this many connections (and to at most half the peak) is a burst
/// that ended.
const BURST: i64 = 256;

/// Starts the trimming thread (a no-op where the allocator is not glibc's).
pub fn spawn(metrics: Arc<Metrics>) {
    if !cfg!(all(target_os = "linux", target_env = "gnu")) {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("memory-trim".into())
        .spawn(move || loop {
            std::thread::sleep(CHECK_EVERY);
            let now = metrics.connections.get();
            if burst_ended(PEAK.load(Ordering::Relaxed), now) {
                release_free_memory();
                PEAK.store(now, Ordering::Relaxed);
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "no memory-trim thread; memory freed after a connection flood stays with the process");
    }
}

fn burst_ended(peak: i64, now: i64) -> bool {
    peak - now >= BURST && now <= peak / 2
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release_free_memory() {
    // SAFETY: malloc_trim only inspects and releases the allocator's own free memory.
    let released = unsafe { libc::malloc_trim(0) };
    tracing::debug!(
        released = released != 0,
        "returned free heap memory to the OS"
    );
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_free_memory() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_large_drop_from_the_peak_trims() {
        for (peak, now, want) in [
            (0, 0, false),
            (600, 100, true),
            (300, 100, false),
            (300, 200, false),
            (5000, 2000, true),
            (5000, 4800, false),
            (200, 0, false),
        ] {
            assert_eq!(burst_ended(peak, now), want, "peak {peak} now {now}");
        }
    }
}
