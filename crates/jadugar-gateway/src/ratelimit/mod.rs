//! Per-client rate limits (GCRA).
//!
//! [`RateLimiter`] decides per key: in process with [`governor`]'s keyed
//! GCRA limiter (a few tens of nanoseconds; memory bounded by pruning idle
//! keys every few seconds and a hard cap on the number of keys), or shared
//! by every host through Redis with one atomic GCRA script that reads Redis
//! `TIME` (so host clocks do not matter), a short timeout, a configured
//! fail-open or fail-closed choice, and a local "denied until" cache so a
//! client already refused costs no Redis round trip.
//!
//! Responses carry `RateLimit-Limit`, `RateLimit-Remaining` and
//! `RateLimit-Reset` (seconds); a 429 carries `Retry-After`.
//!
//! [`RateLimitLayer`] uses one limiter in any tower stack:
//!
//! ```
//! use jadugar_gateway::model::{RateKey, RateLimitSpec};
//! use jadugar_gateway::ratelimit::RateLimitLayer;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let spec = RateLimitSpec { key: RateKey::Header("x-client".into()), requests: 1, per_secs: 60,
//!     burst: None, shared: false, fail_open: true };
//! let svc = ServiceBuilder::new()
//!     .layer(RateLimitLayer::local(&spec))
//!     .service(service_fn(|_req: http::Request<()>| async {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Empty::<bytes::Bytes>::new()))
//!     }));
//! let req = || http::Request::get("/").header("x-client", "a").body(()).unwrap();
//! let ok = svc.clone().oneshot(req()).await.unwrap();
//! assert_eq!(ok.headers()["ratelimit-remaining"], "0");
//! let limited = svc.oneshot(req()).await.unwrap();
//! assert_eq!(limited.status(), 429);
//! assert!(limited.headers().contains_key("retry-after"));
//! # });
//! ```

mod layer;
#[cfg(feature = "redis")]
mod shared;

use std::hash::{BuildHasher, BuildHasherDefault, Hash};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Weak};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter as Governor};
use http::{HeaderMap, HeaderName, HeaderValue};
use jadugar_core::{Principal, PrincipalKind, Problem};

pub use layer::{RateLimitLayer, RateLimitService, client_ip};
#[cfg(feature = "redis")]
pub use shared::SharedLimiter;

use crate::model::{RateKey, RateLimitSpec};

/// `RateLimit-Limit`.
pub const LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
/// `RateLimit-Remaining`.
pub const REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
/// `RateLimit-Reset`.
pub const RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// Default hard cap on distinct keys kept in process per limiter.
pub const DEFAULT_MAX_KEYS: usize = 2_000_000;

/// Numbers below this are formatted once per process (see [`number`]).
const SHARED_NUMBERS: u64 = 1024;

/// [`number`] for a value that repeats from response to response (a
/// route's limit): the last one made on this thread is kept, so a limit
/// above the shared small numbers costs a comparison and a reference count
/// instead of formatting and an allocation per response.
fn repeated_number(n: u64) -> HeaderValue {
    thread_local! {
        static LAST: std::cell::RefCell<Option<(u64, HeaderValue)>> =
            const { std::cell::RefCell::new(None) };
    }
    if n < SHARED_NUMBERS {
        return number(n);
    }
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if let Some((cached, value)) = &*last
            && *cached == n
        {
            return value.clone();
        }
        let value = number(n);
        *last = Some((n, value.clone()));
        value
    })
}

/// `n` as a header value; the small numbers most limits and resets use are
/// formatted once and shared, not allocated per response.
fn number(n: u64) -> HeaderValue {
    static VALUES: std::sync::OnceLock<Vec<HeaderValue>> = std::sync::OnceLock::new();
    let values = VALUES.get_or_init(|| (0..SHARED_NUMBERS).map(HeaderValue::from).collect());
    usize::try_from(n)
        .ok()
        .and_then(|i| values.get(i))
        .cloned()
        .unwrap_or_else(|| {
            // One allocation: `HeaderValue::from(u64)` makes two.
            HeaderValue::from_bytes(itoa::Buffer::new().format(n).as_bytes())
                .unwrap_or_else(|_| HeaderValue::from(n))
        })
}

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// The burst size.
    pub limit: u32,
    /// Requests left right now.
    pub remaining: u32,
    /// Seconds until the allowance is full again.
    pub reset_secs: u64,
    /// Seconds until a refused client may retry.
    pub retry_after_secs: u64,
    /// Redis could not answer and the limit failed open (no headers sent).
    pub degraded: bool,
}

impl Decision {
    /// Adds the `RateLimit-*` headers (and `Retry-After` when refused).
    pub fn apply_headers(&self, headers: &mut HeaderMap) {
        if self.degraded {
            return;
        }
        headers.insert(LIMIT, repeated_number(u64::from(self.limit)));
        headers.insert(REMAINING, number(u64::from(self.remaining)));
        headers.insert(RESET, number(self.reset_secs));
        if !self.allowed {
            headers.insert(http::header::RETRY_AFTER, number(self.retry_after_secs));
        }
    }

    /// The 429 problem of a refused request, with its headers.
    pub fn to_response<B: From<bytes::Bytes>>(&self) -> http::Response<B> {
        let mut res = Problem::too_many_requests(self.retry_after_secs).to_response::<B>();
        self.apply_headers(res.headers_mut());
        res
    }
}

/// A rate-limit key taken from a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyValue<'a> {
    /// A client address.
    Ip(IpAddr),
    /// An API key / user / principal subject or header value, with a tag.
    Text(u8, &'a str),
    /// Nothing to key on (no client address known).
    Anonymous,
}

impl KeyValue<'_> {
    /// The key as text, for shared (Redis) limits.
    pub fn to_text(&self) -> String {
        match self {
            Self::Ip(ip) => format!("ip:{ip}"),
            Self::Text(tag, s) => format!("{tag}:{s}"),
            Self::Anonymous => "anon".into(),
        }
    }
}

/// Picks the key for `spec` from the request.
pub fn extract_key<'a>(
    key: &RateKey,
    principal: Option<&'a Principal>,
    headers: &'a HeaderMap,
    ip: Option<IpAddr>,
) -> KeyValue<'a> {
    let fallback = || ip.map_or(KeyValue::Anonymous, KeyValue::Ip);
    match key {
        RateKey::Ip => fallback(),
        RateKey::ApiKey => match principal {
            Some(p) if p.kind == PrincipalKind::ApiKey => KeyValue::Text(1, &p.subject),
            _ => fallback(),
        },
        RateKey::User => match principal {
            Some(p) if p.kind == PrincipalKind::User => KeyValue::Text(2, &p.subject),
            Some(p) => match &p.owner {
                Some(owner) => KeyValue::Text(2, owner),
                None => KeyValue::Text(3, &p.subject),
            },
            None => fallback(),
        },
        RateKey::Principal => match principal {
            Some(p) => KeyValue::Text(3, &p.subject),
            None => fallback(),
        },
        RateKey::Header(name) => match headers.get(name.as_str()).and_then(|v| v.to_str().ok()) {
            Some(v) => KeyValue::Text(4, v),
            None => fallback(),
        },
    }
}

type Keyed = Governor<
    u64,
    DefaultKeyedStateStore<u64, BuildHasherDefault<Prehashed>>,
    DefaultClock,
    StateInformationMiddleware,
>;

/// The hasher of the limiter's map, whose keys are already the
/// random-keyed SipHash of the request's key ([`LocalLimiter::check`]):
/// hashing them again would only cost time.
#[derive(Debug, Default, Clone, Copy)]
struct Prehashed(u64);

impl std::hash::Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not reached for `u64` keys; folded in anyway to stay a hasher.
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// An empty keyed limiter of `quota`.
fn keyed(quota: Quota) -> Keyed {
    Governor::dashmap_with_hasher(quota, BuildHasherDefault::default())
        .with_middleware::<StateInformationMiddleware>()
}

/// The in-process GCRA limiter of one route.
pub struct LocalLimiter {
    governor: arc_swap::ArcSwap<Keyed>,
    quota: Quota,
    hasher: std::collections::hash_map::RandomState,
    limit: u32,
    emission: Duration,
    max_keys: usize,
}

impl std::fmt::Debug for LocalLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalLimiter")
            .field("limit", &self.limit)
            .field("emission", &self.emission)
            .finish_non_exhaustive()
    }
}

/// `(burst, time per request)` of a spec.
pub fn quota_of(spec: &RateLimitSpec) -> (u32, Duration) {
    let requests = spec.requests.max(1);
    let burst = spec.burst.unwrap_or(requests).max(1);
    let emission = Duration::from_secs_f64(f64::from(spec.per_secs.max(1)) / f64::from(requests));
    (burst, emission.max(Duration::from_nanos(1)))
}

impl LocalLimiter {
    /// A limiter for `spec`; prunes idle keys in the background (every 5 s,
    /// while the limiter lives) when created inside a tokio runtime.
    pub fn new(spec: &RateLimitSpec, max_keys: usize) -> Arc<Self> {
        let (burst, emission) = quota_of(spec);
        let nz_burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(emission)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(nz_burst);
        let governor = keyed(quota);
        let limiter = Arc::new(Self {
            governor: arc_swap::ArcSwap::from_pointee(governor),
            quota,
            hasher: std::collections::hash_map::RandomState::new(),
            limit: burst,
            emission,
            max_keys,
        });
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let weak: Weak<Self> = Arc::downgrade(&limiter);
            handle.spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(5));
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let Some(limiter) = weak.upgrade() else {
                        return;
                    };
                    limiter.housekeeping();
                }
            });
        }
        limiter
    }

    /// Forgets keys whose allowance is full again, and everything if more
    /// than the key cap are still held (which at worst grants each client
    /// one fresh burst).
    pub fn housekeeping(&self) {
        let governor = self.governor.load();
        governor.retain_recent();
        if governor.len() > self.max_keys {
            // governor offers no eviction: start over with empty state.
            tracing::warn!(
                keys = governor.len(),
                cap = self.max_keys,
                "rate limiter key cap exceeded; state reset"
            );
            self.governor.store(Arc::new(keyed(self.quota)));
        } else {
            governor.shrink_to_fit();
        }
    }

    /// Keys currently held.
    pub fn len(&self) -> usize {
        self.governor.load().len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.governor.load().is_empty()
    }

    fn hash(&self, key: &KeyValue<'_>) -> u64 {
        self.hasher.hash_one(key)
    }

    /// Checks (and counts) one request of `key`.
    pub fn check(&self, key: &KeyValue<'_>) -> Decision {
        let hashed = self.hash(key);
        match self.governor.load().check_key(&hashed) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                let used = self.limit.saturating_sub(remaining);
                let reset = self.emission.as_secs_f64() * f64::from(used);
                Decision {
                    allowed: true,
                    limit: self.limit,
                    remaining,
                    reset_secs: reset.ceil() as u64,
                    retry_after_secs: 0,
                    degraded: false,
                }
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                let retry = wait.as_secs_f64().ceil().max(1.0) as u64;
                Decision {
                    allowed: false,
                    limit: self.limit,
                    remaining: 0,
                    reset_secs: (self.emission.as_secs_f64() * f64::from(self.limit)).ceil() as u64,
                    retry_after_secs: retry,
                    degraded: false,
                }
            }
        }
    }
}

/// A route's limiter: in process or shared through Redis.
#[derive(Debug, Clone)]
pub enum RateLimiter {
    /// In process.
    Local(Arc<LocalLimiter>),
    /// Shared through Redis.
    #[cfg(feature = "redis")]
    Shared(Arc<SharedLimiter>),
}

/// A check that could not be answered and failed closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the shared rate limiter is unavailable")]
pub struct LimiterUnavailable;

impl RateLimiter {
    /// Checks one request of `key`.
    pub async fn check(&self, key: &KeyValue<'_>) -> Result<Decision, LimiterUnavailable> {
        match self {
            Self::Local(l) => Ok(l.check(key)),
            #[cfg(feature = "redis")]
            Self::Shared(s) => s.check(key).await,
        }
    }

    /// The in-process limiter, whose check needs no `.await`.
    pub fn as_local(&self) -> Option<&LocalLimiter> {
        match self {
            Self::Local(l) => Some(l),
            #[cfg(feature = "redis")]
            Self::Shared(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_number_is_never_a_stale_one() {
        for n in [
            5u64,
            2048,
            2048,
            1_000_000_000,
            2048,
            7,
            2048,
            u64::MAX,
            u64::MAX,
        ] {
            assert_eq!(repeated_number(n), n.to_string());
        }
    }

    #[test]
    fn header_numbers_small_and_large() {
        for n in [0u64, 1, 9, 10, 1023, 1024, 1_000_000_000, u64::MAX] {
            assert_eq!(number(n), n.to_string());
        }
        let d = Decision {
            allowed: false,
            limit: 100,
            remaining: 0,
            reset_secs: 60,
            retry_after_secs: 7,
            degraded: false,
        };
        let mut h = HeaderMap::new();
        d.apply_headers(&mut h);
        assert_eq!(h[LIMIT], "100");
        assert_eq!(h[REMAINING], "0");
        assert_eq!(h[RESET], "60");
        assert_eq!(h[http::header::RETRY_AFTER], "7");
    }

    fn spec(requests: u32, per_secs: u32) -> RateLimitSpec {
        RateLimitSpec {
            key: RateKey::Ip,
            requests,
            per_secs,
            burst: None,
            shared: false,
            fail_open: true,
        }
    }

    #[tokio::test]
    async fn gcra_in_process() {
        let l = LocalLimiter::new(&spec(3, 60), 100);
        let k = KeyValue::Ip("10.0.0.1".parse().unwrap());
        let d: Vec<_> = (0..4).map(|_| l.check(&k)).collect();
        assert!(d[..3].iter().all(|d| d.allowed));
        assert_eq!(d[0].remaining, 2);
        assert_eq!(d[2].remaining, 0);
        assert!(!d[3].allowed);
        assert!(d[3].retry_after_secs >= 1 && d[3].retry_after_secs <= 20);
        let other = KeyValue::Ip("10.0.0.2".parse().unwrap());
        assert!(l.check(&other).allowed);
        let mut h = HeaderMap::new();
        d[3].apply_headers(&mut h);
        assert_eq!(h[LIMIT], "3");
        assert_eq!(h[REMAINING], "0");
        assert!(h.contains_key(http::header::RETRY_AFTER));
    }

    #[tokio::test]
    async fn memory_stays_bounded() {
        let l = LocalLimiter::new(&spec(1000, 1), 10_000);
        for i in 0..50_000u32 {
            l.check(&KeyValue::Ip(IpAddr::from(i.to_be_bytes())));
        }
        assert!(l.len() >= 50_000);
        tokio::time::sleep(Duration::from_millis(5)).await;
        l.housekeeping();
        assert!(l.len() < 50_000, "idle keys pruned: {}", l.len());
        let capped = LocalLimiter::new(&spec(1, 60), 100);
        for i in 0..1000u32 {
            capped.check(&KeyValue::Ip(IpAddr::from(i.to_be_bytes())));
        }
        capped.housekeeping();
        assert!(capped.len() <= 100);
    }
}
