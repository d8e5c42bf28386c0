//! Load balancing over an upstream's instances.
//!
//! An [`UpstreamPool`] holds the current instances of one upstream (fixed
//! targets, or a registry service refreshed from `Discovery` whenever it
//! reports a change) and picks one per request:
//!
//! - round robin, or weighted round robin (a precomputed smooth weighted
//!   schedule walked by an atomic counter: no lock);
//! - least requests by power of two random choices, comparing
//!   `peak EWMA latency × (in flight + 1)` as tower's `PeakEwma` does;
//! - consistent hashing of a header or cookie onto a ring (100 points per
//!   unit of weight), so a key keeps its instance while the set is stable.
//!
//! Instances are `http` or `https` (an [`Endpoint`]'s scheme, so a registry
//! instance registered as `https` is reached over TLS); `https` instances
//! are verified with the pool's [`UpstreamTls`] (the webpki roots unless
//! [`UpstreamPool::with_tls`] says otherwise).
//!
//! Ejected instances are skipped. Instance state (in-flight count,
//! latency, ejection) survives refreshes for instances that stay.
//!
//! ```
//! use jadugar_core::Endpoint;
//! use jadugar_gateway::balance::UpstreamPool;
//! use jadugar_gateway::model::UpstreamSpec;
//!
//! let spec: UpstreamSpec = toml::from_str(r#"targets = ["http://127.0.0.1:1"]"#).unwrap();
//! let pool = UpstreamPool::new("demo", spec);
//! pool.refresh(&[Endpoint::new("a", "http", "127.0.0.1", 8001), Endpoint::new("b", "http", "127.0.0.1", 8002)]);
//! let first = pool.pick(None).unwrap();
//! let second = pool.pick(None).unwrap();
//! assert_ne!(first.id(), second.id());
//! ```

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use http::HeaderValue;
use http::uri::{Authority, Scheme};
use jadugar_core::Endpoint;
use rustls_pki_types::ServerName;

use crate::model::{Balance, UpstreamSpec};
use crate::proxy::client::UpstreamTls;
use crate::resilience::{Limits, Outlier, now_ms};

/// Latency assumed for an instance not yet measured (nanoseconds).
const DEFAULT_RTT_NS: f64 = 1_000_000.0;
/// Decay time of the latency estimate (nanoseconds).
const DECAY_NS: f64 = 10_000_000_000.0;
/// Ring points per unit of weight.
const POINTS_PER_WEIGHT: u32 = 100;
/// Longest weighted schedule.
const MAX_SCHEDULE: usize = 10_000;

/// One instance and its live state.
#[derive(Debug)]
pub struct Backend {
    endpoint: Endpoint,
    pub(crate) scheme: Scheme,
    pub(crate) authority: Authority,
    pub(crate) host_header: HeaderValue,
    pub(crate) label: Arc<str>,
    in_flight: AtomicU32,
    ewma_bits: AtomicU64,
    ewma_stamp: AtomicU64,
    /// Passive health.
    pub outlier: Outlier,
    pub(crate) socket_addr: Option<std::net::SocketAddr>,
    pub(crate) idle: crate::proxy::pool::Idle,
    /// How connections are secured: `None` for `http`.
    pub(crate) tls: Option<BackendTls>,
}

/// The TLS side of an `https` instance.
pub(crate) struct BackendTls {
    pub(crate) connector: tokio_rustls::TlsConnector,
    /// SNI and the name the certificate must carry: the endpoint's host.
    pub(crate) server_name: ServerName<'static>,
}

impl std::fmt::Debug for BackendTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl Backend {
    fn new(
        endpoint: &Endpoint,
        tls: &dyn Fn() -> UpstreamTls,
        idle: crate::proxy::pool::IdleSettings,
    ) -> Option<Self> {
        let authority = Authority::try_from(endpoint.authority()).ok()?;
        let (scheme, tls) = match endpoint.scheme.as_str() {
            "http" => (Scheme::HTTP, None),
            "https" => {
                let host = endpoint.host.trim_matches(|c| c == '[' || c == ']');
                let server_name = ServerName::try_from(host.to_owned()).ok()?;
                let connector = tokio_rustls::TlsConnector::from(Arc::clone(tls().http1()));
                (
                    Scheme::HTTPS,
                    Some(BackendTls {
                        connector,
                        server_name,
                    }),
                )
            }
            _ => return None,
        };
        Some(Self {
            tls,
            host_header: HeaderValue::from_str(authority.as_str()).ok()?,
            label: Arc::from(format!("{}@{}", endpoint.id, authority)),
            endpoint: endpoint.clone(),
            scheme,
            authority,
            in_flight: AtomicU32::new(0),
            ewma_bits: AtomicU64::new(DEFAULT_RTT_NS.to_bits()),
            ewma_stamp: AtomicU64::new(0),
            outlier: Outlier::default(),
            socket_addr: crate::proxy::pool::literal_addr(&endpoint.host, endpoint.port),
            idle: crate::proxy::pool::Idle::new(idle),
        })
    }

    /// The instance id.
    pub fn id(&self) -> &str {
        &self.endpoint.id
    }

    /// The endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request until the guard drops.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Records a response latency (peak EWMA).
    pub fn observe(&self, rtt: std::time::Duration) {
        self.observe_at(rtt, now_ms());
    }

    /// [`observe`](Self::observe) of a response that arrived at `now_millis`
    /// (as [`now_ms`](crate::resilience::now_ms) counts), for a caller that
    /// has read the clock already.
    pub fn observe_at(&self, rtt: std::time::Duration, now_millis: u64) {
        let rtt = rtt.as_nanos() as f64;
        let now = now_millis as f64 * 1e6;
        let prev = f64::from_bits(self.ewma_bits.load(Ordering::Relaxed));
        let next = if rtt > prev {
            rtt
        } else {
            let last = self.ewma_stamp.load(Ordering::Relaxed) as f64 * 1e6;
            let w = (-(now - last).max(0.0) / DECAY_NS).exp();
            prev * w + rtt * (1.0 - w)
        };
        self.ewma_bits.store(next.to_bits(), Ordering::Relaxed);
        self.ewma_stamp.store(now_millis, Ordering::Relaxed);
    }

    fn cost(&self) -> f64 {
        f64::from_bits(self.ewma_bits.load(Ordering::Relaxed)) * f64::from(self.in_flight() + 1)
    }
}

/// Decrements a backend's in-flight count when dropped.
#[derive(Debug)]
pub struct InFlight(Arc<Backend>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Debug, Default)]
struct BackendSet {
    backends: Vec<Arc<Backend>>,
    schedule: Vec<u32>,
    ring: Vec<(u64, u32)>,
}

/// The instances of one upstream; see the [module docs](self).
#[derive(Debug)]
pub struct UpstreamPool {
    name: Arc<str>,
    spec: UpstreamSpec,
    set: ArcSwap<BackendSet>,
    next: AtomicUsize,
    pub(crate) limits: Option<Limits>,
    ejections: metrics::Counter,
    tls: Option<UpstreamTls>,
    idle: crate::proxy::pool::IdleSettings,
}

/// The TLS settings of pools built without [`UpstreamPool::with_tls`].
fn default_tls() -> UpstreamTls {
    static DEFAULT: OnceLock<UpstreamTls> = OnceLock::new();
    DEFAULT.get_or_init(UpstreamTls::webpki).clone()
}

fn hash64<T: Hash + ?Sized>(value: &T) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    value.hash(&mut h);
    h.finish()
}

/// Hashes a consistent-hash key (the same on every host).
pub fn hash_key(key: &[u8]) -> u64 {
    hash64(key)
}

impl UpstreamPool {
    /// An empty pool.
    pub fn new(name: &str, spec: UpstreamSpec) -> Self {
        Self {
            name: Arc::from(name),
            limits: spec
                .max_concurrent
                .map(|m| Limits::new(m, spec.max_pending)),
            ejections: metrics::counter!("gateway_upstream_ejections_total", "upstream" => name.to_owned()),
            spec,
            set: ArcSwap::from_pointee(BackendSet::default()),
            next: AtomicUsize::new(0),
            tls: None,
            idle: crate::proxy::pool::IdleSettings::default(),
        }
    }

    /// Verifies `https` instances with `tls` (instead of the webpki roots
    /// alone); call before the first [`refresh`](Self::refresh).
    pub fn with_tls(mut self, tls: UpstreamTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Keeps idle upstream connections for `timeout`, at most `max` per
    /// instance; call before the first [`refresh`](Self::refresh).
    pub fn with_idle_connections(mut self, timeout: std::time::Duration, max: usize) -> Self {
        self.idle = crate::proxy::pool::IdleSettings { timeout, max };
        self
    }

    /// The upstream's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The upstream's name, shared.
    pub(crate) fn name_arc(&self) -> Arc<str> {
        Arc::clone(&self.name)
    }

    /// The spec.
    pub fn spec(&self) -> &UpstreamSpec {
        &self.spec
    }

    /// The current instances.
    pub fn backends(&self) -> Vec<Arc<Backend>> {
        self.set.load().backends.clone()
    }

    /// Replaces the instances, keeping the state of those that stay.
    /// Endpoints that are neither `http` nor `https` are skipped.
    pub fn refresh(&self, endpoints: &[Endpoint]) {
        let old = self.set.load();
        let mut by_key: HashMap<(&str, String), &Arc<Backend>> = HashMap::new();
        for b in &old.backends {
            by_key.insert((b.id(), b.endpoint.authority()), b);
        }
        let unchanged = old.backends.len() == endpoints.len()
            && old
                .backends
                .iter()
                .zip(endpoints)
                .all(|(b, e)| b.endpoint == *e);
        if unchanged {
            return;
        }
        let mut backends = Vec::with_capacity(endpoints.len());
        for e in endpoints {
            match by_key.get(&(e.id.as_str(), e.authority())) {
                Some(b) if b.endpoint == *e => backends.push(Arc::clone(b)),
                _ => match Backend::new(
                    e,
                    &|| self.tls.clone().unwrap_or_else(default_tls),
                    self.idle,
                ) {
                    Some(b) => backends.push(Arc::new(b)),
                    None => {
                        tracing::warn!(upstream = %self.name, endpoint = %e.id, "skipping endpoint that is not http or https")
                    }
                },
            }
        }
        let schedule = match self.spec.balance {
            Balance::Weighted => smooth_schedule(&backends),
            _ => Vec::new(),
        };
        let ring = match self.spec.balance {
            Balance::ConsistentHash { .. } => ring(&backends),
            _ => Vec::new(),
        };
        self.set.store(Arc::new(BackendSet {
            backends,
            schedule,
            ring,
        }));
    }

    /// Counts an ejection.
    pub(crate) fn ejected(&self, backend: &Backend) {
        self.ejections.increment(1);
        tracing::warn!(upstream = %self.name, instance = %backend.label, "instance ejected after consecutive failures");
    }

    /// Picks an available instance; `hash` is the consistent-hash key.
    pub fn pick(&self, hash: Option<u64>) -> Option<Arc<Backend>> {
        self.pick_at(hash, now_ms())
    }

    /// [`pick`](Self::pick) at `now` (milliseconds as
    /// [`now_ms`](crate::resilience::now_ms) counts them), for a caller that
    /// has read the clock already.
    pub fn pick_at(&self, hash: Option<u64>, now: u64) -> Option<Arc<Backend>> {
        let set = self.set.load();
        let backends = &set.backends;
        let n = backends.len();
        if n == 0 {
            return None;
        }
        let ok = |b: &Backend| b.outlier.is_available(now);
        if n == 1 {
            let b = &backends[0];
            return ok(b).then(|| b.clone());
        }
        match &self.spec.balance {
            Balance::RoundRobin => self.round_robin(backends, None, ok),
            Balance::Weighted => self.round_robin(backends, Some(&set.schedule), ok),
            Balance::LeastRequests => {
                let (a, b) = two_distinct(n);
                let (a, b) = (&backends[a], &backends[b]);
                match (ok(a), ok(b)) {
                    (true, true) => Some(if a.cost() <= b.cost() {
                        a.clone()
                    } else {
                        b.clone()
                    }),
                    (true, false) => Some(a.clone()),
                    (false, true) => Some(b.clone()),
                    (false, false) => self.round_robin(backends, None, ok),
                }
            }
            Balance::ConsistentHash { .. } => match hash {
                Some(h) if !set.ring.is_empty() => {
                    let start = set.ring.partition_point(|(p, _)| *p < h);
                    (0..set.ring.len())
                        .map(|i| &backends[set.ring[(start + i) % set.ring.len()].1 as usize])
                        .find(|b| ok(b))
                        .cloned()
                }
                _ => {
                    let start = rand::random::<u32>() as usize % n;
                    (0..n)
                        .map(|i| &backends[(start + i) % n])
                        .find(|b| ok(b))
                        .cloned()
                }
            },
        }
    }

    fn round_robin(
        &self,
        backends: &[Arc<Backend>],
        schedule: Option<&[u32]>,
        ok: impl Fn(&Backend) -> bool,
    ) -> Option<Arc<Backend>> {
        let tick = self.next.fetch_add(1, Ordering::Relaxed);
        match schedule {
            Some(s) if !s.is_empty() => {
                let first = &backends[s[tick % s.len()] as usize];
                if ok(first) {
                    return Some(first.clone());
                }
            }
            _ => {}
        }
        let n = backends.len();
        (0..n)
            .map(|i| &backends[(tick + i) % n])
            .find(|b| ok(b))
            .cloned()
    }
}

fn two_distinct(n: usize) -> (usize, usize) {
    let r: u64 = rand::random();
    let a = (r as u32 as usize) % n;
    let b = ((r >> 32) as usize) % (n - 1);
    (a, if b >= a { b + 1 } else { b })
}

fn smooth_schedule(backends: &[Arc<Backend>]) -> Vec<u32> {
    let weights: Vec<i64> = backends
        .iter()
        .map(|b| i64::from(b.endpoint.weight.max(1)))
        .collect();
    let total: i64 = weights.iter().sum();
    let len = usize::try_from(total)
        .unwrap_or(MAX_SCHEDULE)
        .min(MAX_SCHEDULE);
    let mut current = vec![0i64; weights.len()];
    let mut schedule = Vec::with_capacity(len);
    for _ in 0..len {
        let mut best = 0;
        for (i, w) in weights.iter().enumerate() {
            current[i] += w;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        schedule.push(best as u32);
    }
    schedule
}

fn ring(backends: &[Arc<Backend>]) -> Vec<(u64, u32)> {
    let mut ring = Vec::new();
    for (i, b) in backends.iter().enumerate() {
        for point in 0..b.endpoint.weight.clamp(1, 100) * POINTS_PER_WEIGHT {
            ring.push((hash64(&(b.id(), point)), i as u32));
        }
    }
    ring.sort_unstable();
    ring
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(balance: &str) -> UpstreamPool {
        let spec: UpstreamSpec =
            toml::from_str(&format!("targets = [\"http://x:1\"]\nbalance = {balance}")).unwrap();
        let p = UpstreamPool::new("t", spec);
        p.refresh(&[
            Endpoint::new("a", "http", "127.0.0.1", 1).with_weight(3),
            Endpoint::new("b", "http", "127.0.0.1", 2),
            Endpoint::new("c", "http", "127.0.0.1", 3),
        ]);
        p
    }

    fn counts(
        p: &UpstreamPool,
        n: usize,
        hash: impl Fn(usize) -> Option<u64>,
    ) -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for i in 0..n {
            *m.entry(p.pick(hash(i)).unwrap().id().to_owned())
                .or_default() += 1;
        }
        m
    }

    #[test]
    fn round_robin_and_weighted() {
        let c = counts(&pool("{ kind = \"round_robin\" }"), 300, |_| None);
        assert_eq!(c["a"], 100);
        let c = counts(&pool("{ kind = \"weighted\" }"), 500, |_| None);
        assert_eq!((c["a"], c["b"], c["c"]), (300, 100, 100));
    }

    #[test]
    fn consistent_hash_is_sticky_and_skips_ejected() {
        let p = pool("{ kind = \"consistent_hash\", header = \"x-user\" }");
        let first = p.pick(Some(hash_key(b"alice"))).unwrap();
        for _ in 0..10 {
            assert_eq!(p.pick(Some(hash_key(b"alice"))).unwrap().id(), first.id());
        }
        let spec = crate::model::OutlierSpec {
            consecutive_failures: 1,
            ..Default::default()
        };
        first.outlier.on_failure(&spec, now_ms());
        assert_ne!(p.pick(Some(hash_key(b"alice"))).unwrap().id(), first.id());
        let spread = counts(&p, 3000, |i| Some(hash_key(i.to_string().as_bytes())));
        assert!(spread.len() == 2);
    }

    #[test]
    fn least_requests_avoids_busy_instances() {
        let p = pool("{ kind = \"least_requests\" }");
        let busy: Vec<_> = p
            .backends()
            .iter()
            .filter(|b| b.id() != "c")
            .flat_map(|b| (0..20).map(|_| b.start()).collect::<Vec<_>>())
            .collect();
        let c = counts(&p, 300, |_| None);
        assert!(c.get("c").copied().unwrap_or(0) > 150, "{c:?}");
        drop(busy);
        assert_eq!(p.backends()[0].in_flight(), 0);
    }

    #[test]
    fn refresh_keeps_state() {
        let p = pool("{ kind = \"round_robin\" }");
        let a = p.backends()[0].clone();
        let _guard = a.start();
        p.refresh(&[
            Endpoint::new("a", "http", "127.0.0.1", 1).with_weight(3),
            Endpoint::new("d", "http", "127.0.0.1", 4),
        ]);
        assert_eq!(p.backends()[0].in_flight(), 1);
        assert_eq!(p.backends().len(), 2);
    }
}
