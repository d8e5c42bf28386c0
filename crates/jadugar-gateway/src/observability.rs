//! Access log and Prometheus metrics.
//!
//! Metrics go through the [`metrics`] facade; install a recorder (the host
//! installs `metrics-exporter-prometheus`) **before** building the gateway,
//! because metric handles are registered once per route when routes are
//! compiled, so a request only bumps atomics. Labels are the route id and
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
//! m.record(200, std::time::Duration::from_millis(3), Some(std::time::Duration::from_millis(2)));
//! ```

use std::time::Duration;

use metrics::{Counter, Gauge, Histogram};

/// The access log target.
pub const ACCESS_TARGET: &str = "jadugar_gateway::access";

/// Metric handles of one route.
#[derive(Debug, Clone)]
pub struct RouteMetrics {
    by_class: [Counter; 5],
    duration: Histogram,
    upstream_duration: Histogram,
    pub(crate) in_flight: Gauge,
    pub(crate) rate_limited: Counter,
    pub(crate) upstream_errors: Counter,
}

impl RouteMetrics {
    /// Registers the handles of `route` to `upstream`.
    pub fn new(route: &str, upstream: &str) -> Self {
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

    /// Records a finished request.
    pub fn record(&self, status: u16, total: Duration, upstream: Option<Duration>) {
        let class = usize::from((status / 100).clamp(1, 5) - 1);
        self.by_class[class].increment(1);
        self.duration.record(total.as_secs_f64());
        if let Some(u) = upstream {
            self.upstream_duration.record(u.as_secs_f64());
        }
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
