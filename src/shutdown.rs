//! The one shutdown handle, shared by the signal handler (SIGTERM, and a binary upgrade
//! once the new process has taken over), the admin server (`/readyz` says 503 while
//! draining) and the request path (each request holds a drain token while it runs).
//!
//! Two steps, because a binary upgrade needs a moment between them: `start_draining`
//! turns readiness off and makes every answer `Connection: close`, so keep-alive clients
//! move to a fresh connection; `stop` is the moment the proxy stops accepting, after which
//! the process exits as soon as the last request in flight is done (pingora's own grace
//! period, `timeouts.shutdown_grace`, bounds the wait).

use tokio_util::sync::CancellationToken;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tokio_util::task::TaskTracker;

/// Draining state and the requests in flight; clones share both.
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    draining: CancellationToken,
    in_flight: TaskTracker,
}

impl Shutdown {
    /// Turns readiness off and asks keep-alive clients to reconnect; the proxy still
    /// accepts.
    pub fn start_draining(&self) {
        self.draining.cancel();
    }

    /// Whether a shutdown or a handover to a new process has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.is_cancelled()
    }

    /// A request in flight: the process does not exit while the token lives.
    pub fn track(&self) -> TaskTrackerToken {
        self.in_flight.token()
    }

    /// Requests in flight right now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// The proxy stops accepting: drains (if not yet) and exits the process with status 0
    /// once no request is in flight.
    pub fn stop(&self) {
        self.start_draining();
        self.in_flight.close();
        let in_flight = self.in_flight.clone();
        let spawned = std::thread::Builder::new()
            .name("drain".into())
            .spawn(move || exit_when_drained(&in_flight));
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "no drain thread; shutdown waits the full grace period");
        }
    }
}

/// Waits for the last request in flight, then exits 0 (without this, pingora waits the
/// whole grace period even when nothing is left to finish).
fn exit_when_drained(in_flight: &TaskTracker) {
    let started = std::time::Instant::now();
    // `wait` needs no I/O or timer: the smallest runtime drives it.
    match tokio::runtime::Builder::new_current_thread().build() {
        Ok(rt) => rt.block_on(in_flight.wait()),
        Err(e) => {
            tracing::warn!(error = %e, "no drain runtime; shutdown waits the full grace period");
            return;
        }
    }
    tracing::info!(
        waited_ms = started.elapsed().as_millis() as u64,
        "all in-flight requests finished; exiting"
    );
    crate::logging::flush();
    std::process::exit(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draining_comes_before_stopping_and_requests_are_counted_until_dropped() {
        let s = Shutdown::default();
        assert!(!s.is_draining());
        let a = s.track();
        let b = s.clone().track();
        assert_eq!(s.in_flight(), 2, "clones share one tracker");
        s.start_draining();
        assert!(s.is_draining());
        drop(a);
        drop(b);
        assert_eq!(s.in_flight(), 0);
    }
}
