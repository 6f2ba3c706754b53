//! Idle keep-alive connections to the app, one pool per worker (`upstream_keepalive` of
//! them at most, closed after `timeouts.upstream_idle`).
//!
//! pingora's connector pool spawns a task per connection it takes back, which reads the
//! idle connection until it is wanted again; the next checkout has to wake that task and
//! wait for it to let go (measured at about 12 % of a proxied request's instructions,
//! README "Performance"). Here an idle connection just waits in a list: it is tested when
//! it is taken (one non-blocking read, which tokio answers from its readiness flags without
//! a system call while the socket is quiet), and one timer per pool closes what has been
//! idle too long or was closed by the app meanwhile.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use pingora::protocols::Stream;
use tokio::io::{AsyncRead, ReadBuf};

/// How often the sweeper looks at a pool whose connections have no idle timeout.
const SWEEP_WITHOUT_TIMEOUT: Duration = Duration::from_secs(60);

/// Idle connections of one worker; clones share them.
#[derive(Clone)]
pub struct UpstreamPool {
    inner: Arc<Inner>,
}

struct Inner {
    /// Oldest first: connections are taken from the back (the most recently used is the
    /// most likely to be alive) and evicted from the front.
    idle: Mutex<VecDeque<Idle>>,
    capacity: usize,
    /// A sweeper task is running for this pool.
    sweeping: AtomicBool,
}

struct Idle {
    /// The peer's `reuse_hash`: which upstream (address, TLS settings) this connection is to.
    key: u64,
    stream: Stream,
    /// When the idle timeout closes it (`None`: never).
    expires: Option<Instant>,
}

impl UpstreamPool {
    /// A pool keeping at most `capacity` idle connections (at least one).
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                idle: Mutex::new(VecDeque::new()),
                capacity: capacity.max(1),
                sweeping: AtomicBool::new(false),
            }),
        }
    }

    /// The most recently pooled connection to `key` that is still open and quiet; dead or
    /// chatty ones met on the way are closed.
    pub fn take(&self, key: u64) -> Option<Stream> {
        let mut idle = self.inner.lock();
        let now = Instant::now();
        let mut i = idle.len();
        while i > 0 {
            i -= 1;
            if idle[i].key != key {
                continue;
            }
            let Some(mut entry) = idle.remove(i) else {
                break;
            };
            if entry.expires.is_some_and(|at| at <= now) {
                // Everything older is at least as stale; the sweeper closes those.
                return None;
            }
            if is_quiet(&mut entry.stream) {
                return Some(entry.stream);
            }
        }
        None
    }

    /// Keeps `stream` (a connection to `key` whose last response was read to its end) for
    /// reuse within `idle_timeout`; the oldest idle connection is closed when the pool is
    /// full.
    pub fn put(&self, key: u64, stream: Stream, idle_timeout: Option<Duration>) {
        let entry = Idle {
            key,
            stream,
            expires: idle_timeout.map(|t| Instant::now() + t),
        };
        let start_sweeper = {
            let mut idle = self.inner.lock();
            if idle.len() >= self.inner.capacity {
                idle.pop_front();
            }
            idle.push_back(entry);
            !self.inner.sweeping.swap(true, Ordering::AcqRel)
        };
        if start_sweeper {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(sweep(Arc::clone(&self.inner)));
                }
                // Not on a runtime (a unit test): stale connections are dropped at checkout.
                Err(_) => self.inner.sweeping.store(false, Ordering::Release),
            }
        }
    }

    /// Idle connections held now.
    pub fn len(&self) -> usize {
        self.inner.lock().len()
    }

    /// Whether no connection is idle.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, VecDeque<Idle>> {
        // A panic while holding the lock cannot leave the list inconsistent (every change
        // is one VecDeque call), so a poisoned lock is still usable.
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Closes what has expired or was closed by the app; returns when to look again, or
    /// `None` (and stops counting as swept) once the pool is empty.
    fn sweep_once(&self, now: Instant) -> Option<Instant> {
        let mut idle = self.lock();
        idle.retain_mut(|entry| {
            entry.expires.is_none_or(|at| at > now) && is_quiet(&mut entry.stream)
        });
        if idle.is_empty() {
            self.sweeping.store(false, Ordering::Release);
            return None;
        }
        let next = idle.iter().filter_map(|entry| entry.expires).min();
        Some(next.unwrap_or(now + SWEEP_WITHOUT_TIMEOUT))
    }
}

/// One timer per pool, alive while the pool holds connections.
async fn sweep(inner: Arc<Inner>) {
    while let Some(next) = inner.sweep_once(Instant::now()) {
        tokio::time::sleep_until(next.into()).await;
    }
}

/// Whether an idle connection has nothing to read: no EOF, no error, no stray bytes (an
/// app never speaks first on an idle HTTP/1 connection, so anything readable means it is
/// closed or broken). The same test pingora's pool makes.
fn is_quiet(stream: &mut Stream) -> bool {
    let mut probe = [0u8; 1];
    let read = tokio::task::unconstrained(std::future::poll_fn(|cx| {
        let mut buf = ReadBuf::new(&mut probe);
        Pin::new(&mut *stream).poll_read(cx, &mut buf)
    }));
    let quiet = pin!(read)
        .poll(&mut Context::from_waker(Waker::noop()))
        .is_pending();
    if !quiet {
        tracing::debug!("an idle connection to the app was closed or sent data; dropped");
    }
    quiet
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    /// A connected pair: the pool's side as a pingora stream, and the app's side.
    async fn pair() -> (Stream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let stream: Stream = Box::new(pingora::protocols::l4::stream::Stream::from(client));
        (stream, server)
    }

    #[tokio::test]
    async fn the_newest_live_connection_to_the_same_upstream_is_taken() {
        let pool = UpstreamPool::new(8);
        let (old, _old_app) = pair().await;
        let (new, _new_app) = pair().await;
        let (other, _other_app) = pair().await;
        let (old_id, new_id) = (old.id(), new.id());
        pool.put(1, old, None);
        pool.put(1, new, None);
        pool.put(2, other, None);
        assert_eq!(pool.take(1).map(|s| s.id()), Some(new_id));
        assert_eq!(pool.take(1).map(|s| s.id()), Some(old_id));
        assert!(pool.take(1).is_none());
        assert_eq!(pool.len(), 1, "the other upstream's connection stays");
    }

    #[tokio::test]
    async fn connections_the_app_closed_or_wrote_to_are_not_taken() {
        let pool = UpstreamPool::new(8);
        let (live, _live_app) = pair().await;
        let (closed, closed_app) = pair().await;
        let (chatty, mut chatty_app) = pair().await;
        let live_id = live.id();
        pool.put(1, live, None);
        pool.put(1, closed, None);
        pool.put(1, chatty, None);
        drop(closed_app);
        chatty_app.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(pool.take(1).map(|s| s.id()), Some(live_id));
        assert!(pool.is_empty());
    }

    #[tokio::test]
    async fn a_full_pool_closes_its_oldest_connection() {
        let pool = UpstreamPool::new(2);
        let mut apps = Vec::new();
        let mut ids = Vec::new();
        for _ in 0..3 {
            let (stream, app) = pair().await;
            ids.push(stream.id());
            apps.push(app);
            pool.put(1, stream, None);
        }
        assert_eq!(pool.len(), 2);
        let mut buf = [0u8; 1];
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            use tokio::io::AsyncReadExt;
            apps[0].read(&mut buf).await
        })
        .await;
        assert!(matches!(closed, Ok(Ok(0))), "the oldest was closed");
        assert_eq!(pool.take(1).map(|s| s.id()), Some(ids[2]));
        assert_eq!(pool.take(1).map(|s| s.id()), Some(ids[1]));
    }

    #[tokio::test]
    async fn idle_connections_are_closed_after_their_timeout_without_traffic() {
        let pool = UpstreamPool::new(8);
        let (stream, mut app) = pair().await;
        pool.put(1, stream, Some(Duration::from_millis(200)));
        let mut buf = [0u8; 1];
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            use tokio::io::AsyncReadExt;
            app.read(&mut buf).await
        })
        .await;
        assert!(matches!(closed, Ok(Ok(0))), "closed by the sweeper");
        assert!(pool.is_empty());
        // The sweeper stopped with the pool empty, and starts again with the next one.
        let (stream, mut app) = pair().await;
        pool.put(1, stream, Some(Duration::from_millis(200)));
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            use tokio::io::AsyncReadExt;
            app.read(&mut buf).await
        })
        .await;
        assert!(matches!(closed, Ok(Ok(0))));
    }
}
