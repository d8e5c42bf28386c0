//! Access log and Prometheus metrics.
//!
//! Metrics go through the [`metrics`] facade; install a recorder (the host
//! installs `metrics-exporter-prometheus`) **before** the gateway serves
//! traffic. A route's handles are registered with the recorder on the
//! route's first request that uses them (not when routes are compiled), so
//! ten thousand idle routes cost no registry entries, and a route's series
//! appear once it has seen traffic; after that a request only bumps atomics. Labels are the route id and
//! the upstream name (both bounded by configuration) and the status class,
//! never a path, client or instance address.
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `gateway_requests_total` | counter | route, upstream, class (`2xx`…`5xx`) |
//! | `gateway_request_duration_seconds` | histogram | route, upstream |
//! | `gateway_upstream_duration_seconds` | histogram | route, upstream |
//! | `gateway_requests_in_flight` | gauge | route, upstream |
//! | `gateway_rate_limited_total` | counter | route |
//! | `gateway_upstream_errors_total` | counter | route, upstream |
//! | `gateway_upstream_ejections_total` | counter | upstream |
//!
//! The access log is one `tracing` event per request at INFO on target
//! `jadugar_gateway::access` with route, upstream instance, method, path,
//! status, upstream and total latency; with the target disabled it costs
//! a cached level check.
//!
//! ```
//! let m = jadugar_gateway::observability::RouteMetrics::new("r", "u");
//! assert!(!m.is_registered());
//! m.record(200, std::time::Duration::from_millis(3), Some(std::time::Duration::from_millis(2)));
//! assert!(m.is_registered());
//! ```

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram};

/// The access log target.
pub const ACCESS_TARGET: &str = "jadugar_gateway::access";

/// Metric handles of one route, registered with the recorder together on
/// the route's first request (see the [module docs](self)); until then a
/// route carries only its two label strings. The handles are reached
/// through `Deref` (`metrics.in_flight.increment(1.0)`), which registers
/// them on first use and is one atomic load afterwards.
#[derive(Debug, Clone)]
pub struct RouteMetrics {
    route: Arc<str>,
    upstream: Arc<str>,
    handles: OnceLock<Box<RouteHandles>>,
}

/// The registered handles of a [`RouteMetrics`].
#[derive(Debug, Clone)]
pub struct RouteHandles {
    by_class: [Counter; 5],
    duration: Histogram,
    upstream_duration: Histogram,
    /// Requests in flight.
    pub in_flight: Gauge,
    /// Requests refused by the rate limit.
    pub rate_limited: Counter,
    /// Requests that failed upstream (no instance, shed, connect, timeout).
    pub upstream_errors: Counter,
}

impl RouteHandles {
    fn register(route: &str, upstream: &str) -> Self {
        let class = |c: &'static str| metrics::counter!("gateway_requests_total", "route" => route.to_owned(), "upstream" => upstream.to_owned(), "class" => c);
        Self {
            by_class: [
                class("1xx"),
                class("2xx"),
                class("3xx"),
                class("4xx"),
                class("5xx"),
            ],
            duration: metrics::histogram!("gateway_request_duration_seconds", "route" => route.to_owned(), "upstream" => upstream.to_owned()),
            upstream_duration: metrics::histogram!("gateway_upstream_duration_seconds", "route" => route.to_owned(), "upstream" => upstream.to_owned()),
            in_flight: metrics::gauge!("gateway_requests_in_flight", "route" => route.to_owned(), "upstream" => upstream.to_owned()),
            rate_limited: metrics::counter!("gateway_rate_limited_total", "route" => route.to_owned()),
            upstream_errors: metrics::counter!("gateway_upstream_errors_total", "route" => route.to_owned(), "upstream" => upstream.to_owned()),
        }
    }
}

impl std::ops::Deref for RouteMetrics {
    type Target = RouteHandles;

    fn deref(&self) -> &RouteHandles {
        self.handles
            .get_or_init(|| Box::new(RouteHandles::register(&self.route, &self.upstream)))
    }
}

impl RouteMetrics {
    /// The metrics of `route` to `upstream` (registered on first use).
    pub fn new(route: &str, upstream: &str) -> Self {
        Self::with_labels(Arc::from(route), Arc::from(upstream))
    }

    /// [`new`](Self::new) with shared label strings.
    pub(crate) fn with_labels(route: Arc<str>, upstream: Arc<str>) -> Self {
        Self {
            route,
            upstream,
            handles: OnceLock::new(),
        }
    }

    /// Records a finished request.
    pub fn record(&self, status: u16, total: Duration, upstream: Option<Duration>) {
        let handles: &RouteHandles = self;
        let class = usize::from((status / 100).clamp(1, 5) - 1);
        handles.by_class[class].increment(1);
        handles.duration.record(total.as_secs_f64());
        if let Some(u) = upstream {
            handles.upstream_duration.record(u.as_secs_f64());
        }
    }

    /// Whether the route's series have been registered (it has served a
    /// request).
    pub fn is_registered(&self) -> bool {
        self.handles.get().is_some()
    }
}

/// Writes one access log line (when the target is enabled).
#[allow(clippy::too_many_arguments)]
pub(crate) fn access_log(
    route: &str,
    instance: Option<&str>,
    method: &http::Method,
    path: &str,
    status: u16,
    upstream: Option<Duration>,
    total: Duration,
    request_id: Option<&str>,
) {
    tracing::info!(
        target: "jadugar_gateway::access",
        route,
        instance = instance.unwrap_or("-"),
        method = method.as_str(),
        path,
        status,
        upstream_ms = upstream.map_or(-1.0, |d| d.as_secs_f64() * 1000.0),
        total_ms = total.as_secs_f64() * 1000.0,
        request_id = request_id.unwrap_or("-"),
    );
}
