//! The cool-down (SPEC §3): a consecutive-failure breaker per Released account that stops
//! every page from waiting the full timeout while Released is unavailable, and the
//! registry that keeps each breaker alive across config reloads.
//!
//! A breaker is live state, not config: the config names the policy, and
//! [`CoolDowns::get`] hands every route of one account (same `api_url` and `account_id`)
//! the same breaker, in this snapshot and the next, so an outage in progress survives a
//! reload and two routes on one account discover it together.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant};

/// When to stop calling a failing API: after `after_failures` consecutive failures, calls
/// are skipped for `duration`; then one call probes, and its result closes or reopens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoolDownPolicy {
    /// Consecutive failures that open the cool-down.
    pub after_failures: u32,
    /// How long calls are skipped.
    pub duration: Duration,
}

impl Default for CoolDownPolicy {
    fn default() -> Self {
        Self {
            after_failures: 5,
            duration: Duration::from_secs(10),
        }
    }
}

/// A lock-free consecutive-failure breaker. The policy can change under it (a reload that
/// edits `cooldown`) without losing the count or an open window.
#[derive(Debug)]
pub struct CoolDown {
    after_failures: AtomicU32,
    duration_ms: AtomicU64,
    failures: AtomicU32,
    /// Milliseconds since [`epoch`] until which calls are skipped; 0 when closed.
    open_until_ms: AtomicU64,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    // +1 so that 0 always means "closed".
    epoch().elapsed().as_millis() as u64 + 1
}

impl CoolDown {
    /// A closed breaker with `policy`.
    pub fn new(policy: CoolDownPolicy) -> Self {
        epoch();
        let breaker = Self {
            after_failures: AtomicU32::new(0),
            duration_ms: AtomicU64::new(0),
            failures: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
        };
        breaker.set_policy(policy);
        breaker
    }

    /// The policy in force.
    pub fn policy(&self) -> CoolDownPolicy {
        CoolDownPolicy {
            after_failures: self.after_failures.load(Ordering::Relaxed),
            duration: Duration::from_millis(self.duration_ms.load(Ordering::Relaxed)),
        }
    }

    /// Applies a reloaded policy; the count and an open window stay as they are.
    pub fn set_policy(&self, policy: CoolDownPolicy) {
        self.after_failures
            .store(policy.after_failures, Ordering::Relaxed);
        self.duration_ms
            .store(policy.duration.as_millis() as u64, Ordering::Relaxed);
    }

    fn duration_ms(&self) -> u64 {
        self.duration_ms.load(Ordering::Relaxed)
    }

    /// Whether a call may go out now. While open, every caller is refused until the
    /// cool-down ends; then exactly one caller is let through as a probe (the window is
    /// pushed forward for everyone else until the probe reports).
    pub fn admit(&self) -> bool {
        let until = self.open_until_ms.load(Ordering::Acquire);
        if until == 0 {
            return true;
        }
        let now = now_ms();
        if now < until {
            return false;
        }
        let next = now + self.duration_ms();
        self.open_until_ms
            .compare_exchange(until, next, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Records a successful call; closes the cool-down if it was open.
    pub fn record_success(&self) {
        self.failures.store(0, Ordering::Release);
        if self.open_until_ms.swap(0, Ordering::AcqRel) != 0 {
            tracing::info!("Released token API answered again: cool-down closed, calls resume");
        }
    }

    /// Records a failed call; opens (or re-opens) the cool-down at the threshold.
    pub fn record_failure(&self) {
        let failures = self
            .failures
            .fetch_add(1, Ordering::AcqRel)
            .saturating_add(1);
        if failures < self.after_failures.load(Ordering::Relaxed) {
            return;
        }
        let cooldown_ms = self.duration_ms();
        let previous = self
            .open_until_ms
            .swap(now_ms() + cooldown_ms, Ordering::AcqRel);
        if previous == 0 {
            tracing::warn!(
                consecutive_failures = failures,
                cooldown_ms,
                "Released token API keeps failing: cool-down opened, pages are served without tokens until it closes"
            );
        }
    }

    /// Whether calls are being skipped right now.
    pub fn is_open(&self) -> bool {
        let until = self.open_until_ms.load(Ordering::Acquire);
        until != 0 && now_ms() < until
    }
}

/// The breakers of the accounts in use, one per (`api_url`, `account_id`). Held weakly: a
/// breaker lives as long as a snapshot uses it, so an account removed from the config
/// takes its breaker with it once the last request of the old snapshot is done.
#[derive(Debug, Default)]
pub struct CoolDowns(Mutex<HashMap<(String, String), Weak<CoolDown>>>);

impl CoolDowns {
    /// The breaker of `account_id` at `api_url`, with `policy` applied: the existing one
    /// if any snapshot still holds it, else a new, closed one.
    pub fn get(&self, api_url: &str, account_id: &str, policy: CoolDownPolicy) -> Arc<CoolDown> {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.retain(|_, breaker| breaker.strong_count() > 0);
        let key = (api_url.to_string(), account_id.to_string());
        if let Some(existing) = map.get(&key).and_then(Weak::upgrade) {
            existing.set_policy(policy);
            return existing;
        }
        let breaker = Arc::new(CoolDown::new(policy));
        map.insert(key, Arc::downgrade(&breaker));
        breaker
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(after_failures: u32, ms: u64) -> CoolDownPolicy {
        CoolDownPolicy {
            after_failures,
            duration: Duration::from_millis(ms),
        }
    }

    #[test]
    fn cooldown_opens_after_threshold_and_probes_once_when_it_ends() {
        let c = CoolDown::new(CoolDownPolicy {
            after_failures: 3,
            duration: Duration::from_millis(50),
        });
        for _ in 0..2 {
            assert!(c.admit());
            c.record_failure();
        }
        assert!(c.admit(), "below the threshold calls still go out");
        c.record_failure();
        assert!(c.is_open());
        assert!(!c.admit());
        std::thread::sleep(Duration::from_millis(60));
        assert!(c.admit(), "one probe after the cool-down");
        assert!(!c.admit(), "only one probe at a time");
        c.record_failure();
        assert!(!c.admit(), "a failed probe reopens");
        std::thread::sleep(Duration::from_millis(60));
        assert!(c.admit());
        c.record_success();
        assert!(!c.is_open());
        assert!(c.admit() && c.admit(), "closed again");
    }

    #[test]
    fn success_resets_the_failure_count() {
        let c = CoolDown::new(CoolDownPolicy {
            after_failures: 2,
            duration: Duration::from_secs(60),
        });
        c.record_failure();
        c.record_success();
        c.record_failure();
        assert!(!c.is_open());
    }

    #[test]
    fn one_account_gets_one_breaker_whatever_the_routes_and_reloads() {
        let registry = CoolDowns::default();
        let api = "https://accounts.releasedhub.com/auth/api/impersonation/token";
        let a = registry.get(api, "acme", policy(1, 60_000));
        a.record_failure();
        let b = registry.get(api, "acme", policy(3, 60_000));
        assert!(Arc::ptr_eq(&a, &b), "same api_url and account: one breaker");
        assert!(b.is_open(), "the open window is kept");
        assert_eq!(b.policy(), policy(3, 60_000), "the reloaded policy applies");
        let other = registry.get(api, "other", policy(1, 60_000));
        assert!(!Arc::ptr_eq(&a, &other));
        let elsewhere = registry.get("http://127.0.0.1:1/token", "acme", policy(1, 60_000));
        assert!(!Arc::ptr_eq(&a, &elsewhere));
        drop((a, b));
        let fresh = registry.get(api, "acme", policy(1, 60_000));
        assert!(!fresh.is_open(), "a breaker no snapshot holds is gone");
    }
}
