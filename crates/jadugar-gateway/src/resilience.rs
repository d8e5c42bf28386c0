//! Outlier ejection, concurrency limits and retry rules.
//!
//! - [`Outlier`]: passive outlier detection per instance. After
//!   `consecutive_failures` failures in a row (connect errors, timeouts,
//!   502/503/504) an instance is ejected for `base_ejection_ms`, doubled
//!   with every ejection in a row up to `max_ejection_ms`; when the time is
//!   up it is re-admitted, and its first success resets the back-off.
//! - [`Limits`]: at most `max_concurrent` requests in flight per upstream
//!   and `max_pending` waiting; anything beyond is shed with 503 at once.
//! - [`is_idempotent`]: which requests may be retried.
//!
//! ```
//! use jadugar_gateway::resilience::{Outlier, now_ms};
//! use jadugar_gateway::model::OutlierSpec;
//!
//! let spec = OutlierSpec { consecutive_failures: 2, base_ejection_ms: 1000, max_ejection_ms: 8000 };
//! let o = Outlier::default();
//! let now = now_ms();
//! assert!(!o.on_failure(&spec, now));
//! assert!(o.on_failure(&spec, now));
//! assert!(!o.is_available(now + 999));
//! assert!(o.is_available(now + 1000));
//! ```

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::{HeaderMap, Method};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::model::OutlierSpec;

/// Milliseconds since the first call in this process (a monotonic clock).
pub fn now_ms() -> u64 {
    ms_at(Instant::now())
}

/// [`now_ms`] at `at`: for a caller that has read the clock already (a
/// clock read is a noticeable share of a proxied request's own work).
pub fn ms_at(at: Instant) -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = START.get_or_init(|| at);
    u64::try_from(at.saturating_duration_since(*start).as_millis()).unwrap_or(u64::MAX)
}

/// Passive health of one instance; see the [module docs](self).
#[derive(Debug, Default)]
pub struct Outlier {
    consecutive: AtomicU32,
    ejected_until: AtomicU64,
    ejections: AtomicU32,
}

impl Outlier {
    /// Whether the instance may take requests at `now` (ms, [`now_ms`]).
    pub fn is_available(&self, now: u64) -> bool {
        self.ejected_until.load(Ordering::Relaxed) <= now
    }

    /// Whether the instance is ejected at `now`.
    pub fn is_ejected(&self, now: u64) -> bool {
        !self.is_available(now)
    }

    /// Records a success: clears the failure count and the back-off.
    pub fn on_success(&self) {
        if self.consecutive.load(Ordering::Relaxed) != 0 {
            self.consecutive.store(0, Ordering::Relaxed);
        }
        if self.ejections.load(Ordering::Relaxed) != 0 {
            self.ejections.store(0, Ordering::Relaxed);
        }
    }

    /// Records a failure; returns whether it ejected the instance.
    pub fn on_failure(&self, spec: &OutlierSpec, now: u64) -> bool {
        if spec.consecutive_failures == 0 {
            return false;
        }
        let failures = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
        if failures < spec.consecutive_failures || !self.is_available(now) {
            return false;
        }
        let n = self.ejections.fetch_add(1, Ordering::Relaxed).min(20);
        let backoff = spec
            .base_ejection_ms
            .saturating_mul(1u64 << n)
            .min(spec.max_ejection_ms);
        self.ejected_until.store(now + backoff, Ordering::Relaxed);
        self.consecutive.store(0, Ordering::Relaxed);
        true
    }

    /// Re-admits the instance now (an active check saw it healthy).
    pub fn readmit(&self) {
        self.ejected_until.store(0, Ordering::Relaxed);
    }
}

/// Requests refused because an upstream is at its limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the upstream is at its concurrency limit")]
pub struct Shed;

/// Concurrency and pending limits of one upstream.
#[derive(Debug)]
pub struct Limits {
    slots: Arc<Semaphore>,
    pending: AtomicU32,
    max_pending: u32,
}

impl Limits {
    /// At most `max_concurrent` in flight and `max_pending` waiting.
    pub fn new(max_concurrent: u32, max_pending: u32) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(max_concurrent as usize)),
            pending: AtomicU32::new(0),
            max_pending,
        }
    }

    /// A slot, waiting at most `wait` if allowed to wait at all.
    pub async fn acquire(&self, wait: Duration) -> Result<OwnedSemaphorePermit, Shed> {
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Ok(permit);
        }
        if self.pending.fetch_add(1, Ordering::AcqRel) >= self.max_pending {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            return Err(Shed);
        }
        let got = tokio::time::timeout(wait, self.slots.clone().acquire_owned()).await;
        self.pending.fetch_sub(1, Ordering::AcqRel);
        match got {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(Shed),
        }
    }

    /// Requests in flight.
    pub fn in_flight(&self, max: u32) -> u32 {
        max.saturating_sub(u32::try_from(self.slots.available_permits()).unwrap_or(0))
    }
}

/// The idempotency marker that makes any method retryable.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Whether a request may be sent twice: GET, HEAD, OPTIONS, TRACE, PUT,
/// DELETE, or any request with an `Idempotency-Key` header.
pub fn is_idempotent(method: &Method, headers: &HeaderMap) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    ) || headers.contains_key(IDEMPOTENCY_KEY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_resets() {
        let spec = OutlierSpec {
            consecutive_failures: 1,
            base_ejection_ms: 100,
            max_ejection_ms: 350,
        };
        let o = Outlier::default();
        assert!(o.on_failure(&spec, 0));
        assert!(!o.is_available(99));
        assert!(o.on_failure(&spec, 100));
        assert!(!o.is_available(299));
        assert!(o.is_available(300));
        assert!(o.on_failure(&spec, 300));
        assert!(o.is_available(650) && !o.is_available(649));
        o.on_success();
        assert!(o.on_failure(&spec, 1000));
        assert!(o.is_available(1100));
    }

    #[test]
    fn post_is_not_idempotent_without_marker() {
        let mut h = HeaderMap::new();
        assert!(!is_idempotent(&Method::POST, &h));
        assert!(!is_idempotent(&Method::PATCH, &h));
        assert!(is_idempotent(&Method::GET, &h));
        h.insert(IDEMPOTENCY_KEY, "k1".parse().unwrap());
        assert!(is_idempotent(&Method::POST, &h));
    }

    #[tokio::test]
    async fn limits_shed_fast() {
        let l = Limits::new(1, 0);
        let p = l.acquire(Duration::from_secs(1)).await.unwrap();
        assert_eq!(l.acquire(Duration::from_secs(1)).await.unwrap_err(), Shed);
        drop(p);
        let waiting = Limits::new(1, 1);
        let p = waiting.acquire(Duration::from_secs(1)).await.unwrap();
        assert!(waiting.acquire(Duration::from_millis(10)).await.is_err());
        drop(p);
        assert!(waiting.acquire(Duration::from_millis(10)).await.is_ok());
    }
}
