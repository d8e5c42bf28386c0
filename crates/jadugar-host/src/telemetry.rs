//! Logs, the access log and Prometheus metrics.
//!
//! [`init_tracing`] installs the global subscriber (human or JSON lines).
//! [`AccessLogLayer`] writes one line per request (method, path, status,
//! latency, request id) under the target `jadugar::access` and records
//! `http_requests_total` and `http_request_duration_seconds`, labelled by
//! method, route (the matched route pattern, never the raw path, so label
//! cardinality stays bounded; `unmatched` for the fallback) and status.
//! The layer learns the route from the request when it goes on the router
//! (`Router::layer`, after routing) or, when it wraps the router from
//! outside, from the response: [`with_matched_route`] has each route copy
//! it there. [`metrics_handle`] renders them.
//!
//! ```
//! use jadugar_host::telemetry::{AccessLogLayer, metrics_handle, with_matched_route};
//! use tower::Layer;
//!
//! let handle = metrics_handle();
//! let router: axum::Router =
//!     with_matched_route(axum::Router::new().route("/", axum::routing::get(|| async { "hi" })));
//! let app = AccessLogLayer::new().layer(router);
//! let _text: String = handle.render(); // Prometheus text format
//! # let _ = app;
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::Router;
use axum::extract::MatchedPath;
use axum::response::{IntoResponse as _, Response};
use futures_util::FutureExt as _;
use http::Method;
use jadugar_core::request_id::RequestId;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tower::{Layer, Service};

use crate::config::LogFormat;

/// Installs the global `tracing` subscriber. `RUST_LOG` wins over `filter`.
/// Fails if one is already installed.
pub fn init_tracing(format: LogFormat, filter: &str) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(filter))
        .map_err(|e| format!("log filter: {e}"))?;
    // Colours only for a terminal: escape codes would litter log files and
    // collectors, and cost time on every line.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    result.map_err(|e| e.to_string())
}

/// The process-wide Prometheus recorder's handle (installed on first use).
///
/// If another recorder was installed first (an embedding application's),
/// the handle renders an empty registry.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            const BUCKETS: &[f64] = &[
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ];
            let builder = || {
                PrometheusBuilder::new()
                    .set_buckets(BUCKETS)
                    .unwrap_or_else(|_| PrometheusBuilder::new())
            };
            builder()
                .install_recorder()
                .unwrap_or_else(|_| builder().build_recorder().handle())
        })
        .clone()
}

/// `router` with each of its routes (not its fallback) putting its
/// [`MatchedPath`] into the response's extensions, for an
/// [`AccessLogLayer`] around the router. A handler's panic becomes a 500
/// problem here, so that it is counted under its route.
pub fn with_matched_route<S: Clone + Send + Sync + 'static>(router: Router<S>) -> Router<S> {
    router.route_layer(axum::middleware::from_fn(
        |request: axum::extract::Request, next: axum::middleware::Next| async move {
            let matched = request.extensions().get::<MatchedPath>().cloned();
            let mut response = AssertUnwindSafe(next.run(request))
                .catch_unwind()
                .await
                .unwrap_or_else(|_| panic_response());
            if let Some(matched) = matched {
                response.extensions_mut().insert(matched);
            }
            response
        },
    ))
}

/// What a request whose handler panicked gets: a logged 500 problem.
pub(crate) fn panic_response() -> Response {
    tracing::error!("a request handler panicked");
    jadugar_core::Problem::internal().into_response()
}

/// How often [`metrics_upkeep`] drains histogram samples.
pub const METRICS_UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Folds the recorder's pending histogram samples into their buckets every
/// [`METRICS_UPKEEP_INTERVAL`] until `cancel`. The recorder keeps every
/// sample until upkeep or a scrape: without this task memory grows with the
/// request count (about 60 bytes per request) when nobody scrapes
/// `/metrics`. The host runs it in the background.
///
/// The folding runs on the blocking pool, not on a worker that serves
/// requests: a proxied request records three histogram samples, and
/// folding five seconds of them at 80,000 requests/s takes about 8 ms.
pub async fn metrics_upkeep(handle: PrometheusHandle, cancel: tokio_util::sync::CancellationToken) {
    let mut tick = tokio::time::interval(METRICS_UPKEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let handle = handle.clone();
                // Fails only when the runtime shuts down.
                if tokio::task::spawn_blocking(move || handle.run_upkeep()).await.is_err() {
                    return;
                }
            }
            () = cancel.cancelled() => return,
        }
    }
}

/// Writes the access log line and request metrics; see the
/// [module docs](self).
///
/// The layer keeps the metric handles of each method, route and status it
/// has seen (from the recorder installed at that time), so a request costs
/// no metric key allocation and no registry lookup.
#[derive(Debug, Clone, Default)]
pub struct AccessLogLayer {
    metrics: Arc<RequestMetrics>,
}

impl AccessLogLayer {
    /// The layer.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<S> Layer<S> for AccessLogLayer {
    type Service = AccessLog<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AccessLog {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service of [`AccessLogLayer`].
#[derive(Debug, Clone)]
pub struct AccessLog<S> {
    inner: S,
    metrics: Arc<RequestMetrics>,
}

/// The request counter and latency histogram of one label set.
#[derive(Debug, Clone)]
struct Handles {
    requests: metrics::Counter,
    duration: metrics::Histogram,
}

/// [`Handles`] by method and status.
type ByStatus = HashMap<(Method, u16), Handles>;

/// [`Handles`] by route, then method and status (routes are the router's
/// patterns and `unmatched`: a bounded set).
#[derive(Debug, Default)]
struct RequestMetrics {
    by_route: RwLock<HashMap<Box<str>, ByStatus>>,
}

impl RequestMetrics {
    fn record(&self, method: &Method, route: &str, status: u16, seconds: f64) {
        let known = self
            .by_route
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(route)
            .and_then(|by_status| by_status.get(&(method.clone(), status)))
            .cloned();
        let handles = known.unwrap_or_else(|| {
            let labels = [
                ("method", method.as_str().to_owned()),
                ("route", route.to_owned()),
                ("status", status.to_string()),
            ];
            let handles = Handles {
                requests: metrics::counter!("http_requests_total", &labels),
                duration: metrics::histogram!("http_request_duration_seconds", &labels),
            };
            self.by_route
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(route.into())
                .or_default()
                .insert((method.clone(), status), handles.clone());
            handles
        });
        handles.requests.increment(1);
        handles.duration.record(seconds);
    }
}

impl<S, B> Service<http::Request<B>> for AccessLog<S>
where
    S: Service<http::Request<B>, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = AccessLogFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let start = Instant::now();
        let method = request.method().clone();
        let route = request.extensions().get::<MatchedPath>().cloned();
        // The path and request id are copied only for a line to write.
        let line = tracing::enabled!(target: "jadugar::access", tracing::Level::INFO).then(|| {
            let request_id = request
                .extensions()
                .get::<RequestId>()
                .map(|id| id.as_str().to_owned())
                .unwrap_or_default();
            (request.uri().path().to_owned(), request_id)
        });
        AccessLogFuture {
            inner: self.inner.call(request),
            done: Some(Pending {
                start,
                method,
                route,
                line,
                metrics: self.metrics.clone(),
            }),
        }
    }
}

/// What [`AccessLogFuture`] records when its response is ready.
struct Pending {
    start: Instant,
    method: Method,
    route: Option<MatchedPath>,
    line: Option<(String, String)>,
    metrics: Arc<RequestMetrics>,
}

impl Pending {
    fn record(self, response: &Response) {
        let latency = self.start.elapsed();
        let status = response.status().as_u16();
        let method = &self.method;
        if let Some((path, request_id)) = &self.line {
            tracing::info!(
                target: "jadugar::access",
                method = %method,
                path = %path,
                status,
                latency_ms = latency.as_secs_f64() * 1000.0,
                request_id = %request_id,
                "{method} {path} {status}"
            );
        }
        let route = self
            .route
            .as_ref()
            .or_else(|| response.extensions().get::<MatchedPath>())
            .map_or("unmatched", MatchedPath::as_str);
        self.metrics
            .record(method, route, status, latency.as_secs_f64());
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`AccessLog`]: a named type rather than a
    /// boxed one, as it runs on every request.
    pub struct AccessLogFuture<F> {
        #[pin]
        inner: F,
        done: Option<Pending>,
    }
}

impl<F> std::fmt::Debug for AccessLogFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLogFuture").finish_non_exhaustive()
    }
}

impl<F, E> Future for AccessLogFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        if let (Ok(response), Some(done)) = (&result, this.done.take()) {
            done.record(response);
        }
        Poll::Ready(result)
    }
}

#[cfg(test)]
mod tests {
    use metrics_exporter_prometheus::PrometheusBuilder;
    use tokio_util::sync::CancellationToken;

    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn upkeep_folds_samples_and_stops_when_cancelled() {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&[0.5, 1.0])
            .expect("buckets are valid")
            .build_recorder();
        let handle = recorder.handle();
        let histogram =
            metrics::with_local_recorder(&recorder, || metrics::histogram!("upkeep_test_seconds"));
        for value in [0.1, 0.7, 2.0] {
            histogram.record(value);
        }
        let cancel = CancellationToken::new();
        let upkeep = tokio::spawn(metrics_upkeep(handle.clone(), cancel.clone()));
        // The first tick is immediate; its fold runs on the blocking pool.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        cancel.cancel();
        tokio::time::timeout(std::time::Duration::from_secs(5), upkeep)
            .await
            .expect("upkeep stops when cancelled")
            .expect("upkeep did not panic");
        let text = handle.render();
        assert!(
            text.contains("upkeep_test_seconds_bucket{le=\"0.5\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("upkeep_test_seconds_bucket{le=\"1\"} 2"),
            "{text}"
        );
        assert!(text.contains("upkeep_test_seconds_count 3"), "{text}");
    }
}
