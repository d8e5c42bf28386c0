//! The wiring: an [`AppBuilder`] every component plugs into, and the
//! [`App`] it builds.
//!
//! A component contributes, through the builder:
//!
//! - its routes and their OpenAPI description: [`AppBuilder::mount`]
//!   (absolute `/v1/<component>/...` paths, merged, never nested);
//! - its background work: [`AppBuilder::background`], a closure given the
//!   host's [`CancellationToken`] and returning the tasks' handles, awaited
//!   (within the grace period) at shutdown;
//! - for auth, the layer wrapping every API route: [`AppBuilder::authenticate`];
//! - for the gateway, the service answering everything the host does not
//!   own: [`AppBuilder::fallback`]. Paths under `/v1`, `/healthz`, `/readyz`,
//!   `/metrics`, `/openapi.json`, `/docs` and `/.well-known` never reach it.
//!
//! The host adds its own routes (`/healthz`, `/readyz`, `/metrics`,
//! `/openapi.json`) and, around everything, the request id, the access log,
//! panic catching and the body size limit. Host and component routes get
//! the request timeout (a component may ask for a longer one); the
//! fallback times out per gateway route.
//!
//! With a fallback, a request outside [`RESERVED_PREFIXES`] goes straight
//! to it, past the router: the host's layers wrap the whole service once
//! ([`HostService`]), not each route, so a proxied request costs no route
//! matching and no per-route service clones. Routes mounted outside the
//! reserved prefixes are served only by an app without a fallback.
//!
//! ```no_run
//! # async fn demo() -> Result<(), jadugar_host::HostError> {
//! use axum::{Router, routing::get};
//! use jadugar_host::{App, Backends, Config};
//!
//! let config = Config::default();
//! let backends = Backends::open(&config).await?;
//! let app = App::builder(config, backends)
//!     .mount("hello", Router::new().route("/v1/hello", get(|| async { "hi" })), Default::default())
//!     .background(|token| vec![tokio::spawn(async move { token.cancelled().await })])
//!     .build();
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| jadugar_host::HostError::Io { context: "bind".into(), source: e })?;
//! app.serve(listener, async { /* wait for a signal */ }).await?;
//! # Ok(()) }
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::error_handling::HandleErrorLayer;
use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::Route;
use axum::routing::get;
use axum::{BoxError, Router};
use futures_util::FutureExt as _;
use futures_util::future::{CatchUnwind, Either, Map, Ready};
use jadugar_core::Problem;
use jadugar_core::request_id::{RequestIdLayer, RequestIdService};
use jadugar_gateway::ClientAddr;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower::util::BoxCloneSyncService;
use tower::{Layer, Service, ServiceBuilder};
use utoipa::openapi::OpenApi;
use utoipa::{OpenApi as _, ToSchema};

use crate::backends::Backends;
use crate::config::Config;
use crate::telemetry::{
    AccessLog, AccessLogLayer, metrics_handle, panic_response, with_matched_route,
};

/// Path prefixes the host and its components own; the fallback (the
/// gateway) never sees them.
pub const RESERVED_PREFIXES: &[&str] = &[
    "/v1",
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
    "/docs",
    "/.well-known",
];

type Spawner = Box<dyn FnOnce(CancellationToken) -> Vec<JoinHandle<()>> + Send>;
type Wrapper<S> = Box<dyn FnOnce(S) -> S + Send>;
type DocsRouter = Box<dyn FnOnce(OpenApi) -> Router + Send>;

/// The service answering requests no route matched (the gateway).
pub type FallbackService = BoxCloneSyncService<axum::extract::Request, Response, Infallible>;

/// Collects components; see the [module docs](self).
#[must_use]
pub struct AppBuilder {
    config: Arc<Config>,
    backends: Backends,
    api: Router,
    openapi: OpenApi,
    spawners: Vec<Spawner>,
    auth: Option<(Wrapper<Router>, Wrapper<FallbackService>)>,
    fallback: Option<FallbackService>,
    docs: Option<DocsRouter>,
    components: Vec<&'static str>,
}

impl std::fmt::Debug for AppBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppBuilder")
            .field("components", &self.components)
            .field("auth", &self.auth.is_some())
            .field("fallback", &self.fallback.is_some())
            .finish_non_exhaustive()
    }
}

impl AppBuilder {
    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The backends components are built from.
    pub fn backends(&self) -> &Backends {
        &self.backends
    }

    /// Merges a component's `router` (absolute paths) and its OpenAPI
    /// description under the name `component`; its requests get the host's
    /// `request_timeout_secs`.
    pub fn mount(self, component: &'static str, router: Router, openapi: OpenApi) -> Self {
        let timeout = Duration::from_secs(self.config.request_timeout_secs);
        self.mount_with_timeout(component, router, openapi, timeout)
    }

    /// As [`mount`](Self::mount), with a timeout of the component's own
    /// (say, for blocking queries that legitimately wait minutes).
    pub fn mount_with_timeout(
        mut self,
        component: &'static str,
        router: Router,
        openapi: OpenApi,
        timeout: Duration,
    ) -> Self {
        self.api = self.api.merge(with_timeout(router, timeout));
        self.openapi.merge(openapi);
        self.components.push(component);
        self
    }

    /// Registers background work, started by [`App::serve`] with a token
    /// cancelled at shutdown.
    pub fn background(
        mut self,
        spawn: impl FnOnce(CancellationToken) -> Vec<JoinHandle<()>> + Send + 'static,
    ) -> Self {
        self.spawners.push(Box::new(spawn));
        self
    }

    /// Wraps every component route and the fallback (not the host's health
    /// and metrics routes) in `layer`, typically `jadugar_auth::AuthLayer`.
    pub fn authenticate<L>(mut self, layer: L) -> Self
    where
        L: Layer<Route> + Layer<FallbackService> + Clone + Send + Sync + 'static,
        <L as Layer<Route>>::Service: Service<axum::extract::Request, Response = Response, Error = Infallible>
            + Clone
            + Send
            + Sync
            + 'static,
        <<L as Layer<Route>>::Service as Service<axum::extract::Request>>::Future: Send + 'static,
        <L as Layer<FallbackService>>::Service: Service<axum::extract::Request, Response = Response, Error = Infallible>
            + Clone
            + Send
            + Sync
            + 'static,
        <<L as Layer<FallbackService>>::Service as Service<axum::extract::Request>>::Future:
            Send + 'static,
    {
        let routes = layer.clone();
        self.auth = Some((
            Box::new(move |router: Router| router.layer(routes)),
            Box::new(move |fallback| BoxCloneSyncService::new(layer.layer(fallback))),
        ));
        self
    }

    /// Answers every request outside [`RESERVED_PREFIXES`] with `service`
    /// (the gateway), without routing. The host puts no timeout on it: the
    /// gateway times its upstreams out per route.
    pub fn fallback(mut self, service: FallbackService) -> Self {
        self.fallback = Some(service);
        self
    }

    /// Serves `/openapi.json` (and `/docs`) with the router `docs` makes
    /// from the merged platform document, instead of the host's plain
    /// `/openapi.json` (the gateway adds its upstreams' documents).
    pub fn docs(mut self, docs: impl FnOnce(OpenApi) -> Router + Send + 'static) -> Self {
        self.docs = Some(Box::new(docs));
        self
    }

    /// The names of the mounted components.
    pub fn components(&self) -> &[&'static str] {
        &self.components
    }

    /// Builds the app.
    pub fn build(self) -> App {
        let mut openapi = HostApi::openapi();
        openapi.merge(self.openapi);
        if self.fallback.is_some() {
            for path in shadowed_paths(&openapi) {
                tracing::warn!(%path, "a mounted route outside the reserved prefixes is never reached: the fallback answers it");
            }
        }
        let openapi_json =
            axum::body::Bytes::from(serde_json::to_vec(&openapi).unwrap_or_default());

        let docs = match self.docs {
            Some(make) => with_timeout(
                make(openapi.clone()),
                Duration::from_secs(self.config.request_timeout_secs),
            ),
            None => Router::new().route(
                "/openapi.json",
                get(move || {
                    let body = openapi_json.clone();
                    async move {
                        (
                            [(
                                header::CONTENT_TYPE,
                                HeaderValue::from_static("application/json"),
                            )],
                            body,
                        )
                    }
                }),
            ),
        };
        let api = self
            .api
            .merge(docs)
            // Only the host's and components' routes: the gateway's
            // (proxied) responses are never rewritten.
            .route_layer(axum::middleware::map_response(problem_for_bare_errors))
            .fallback(not_found);
        let (api, fallback) = match self.auth {
            Some((wrap_routes, wrap_fallback)) => {
                (wrap_routes(api), self.fallback.map(wrap_fallback))
            }
            None => (api, self.fallback),
        };

        let prometheus = metrics_handle();
        let upkeep = prometheus.clone();
        let mut spawners = self.spawners;
        spawners.push(Box::new(move |cancel| {
            vec![tokio::spawn(crate::telemetry::metrics_upkeep(
                upkeep, cancel,
            ))]
        }));
        let ops_state = OpsState {
            backends: self.backends.clone(),
            metrics: prometheus,
        };
        let ops = Router::new()
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .route_layer(axum::middleware::map_response(problem_for_bare_errors))
            .with_state(Arc::new(ops_state));

        let default_timeout = Duration::from_secs(self.config.request_timeout_secs);
        // `with_state` turns every handler (the fallback included) into a
        // route once; a `Router` called as a service without it converts
        // the matched handler, layers and all, on every request.
        let router =
            with_matched_route(with_timeout(ops, default_timeout).merge(api)).with_state(());
        App {
            service: HostService::new(router, fallback, &self.config),
            config: self.config,
            backends: self.backends,
            spawners,
            openapi,
            components: self.components,
        }
    }
}

/// `router` answering a 503 problem when a request takes longer than
/// `timeout` to produce its response headers.
fn with_timeout(router: Router, timeout: Duration) -> Router {
    router.layer(
        ServiceBuilder::new()
            .layer(HandleErrorLayer::new(
                move |_: tower::BoxError| async move {
                    Problem::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "timeout",
                        "Request timed out",
                    )
                    .with_detail(format!(
                        "the request took longer than {} s",
                        timeout.as_secs()
                    ))
                },
            ))
            .layer(tower::timeout::TimeoutLayer::new(timeout)),
    )
}

/// The whole HTTP service of an [`App`]: the request id, the access log,
/// panic catching and the body size limit, once around the router and the
/// fallback (see the [module docs](self)). Cheap to clone.
///
/// Its layers are named types, not boxed: a request through the fallback
/// (the gateway) allocates no future of the host's own.
#[derive(Clone)]
pub struct HostService {
    inner: HostLayers,
}

type HostLayers = RequestIdService<AccessLog<CatchPanic<BodyLimit<Dispatch>>>>;

/// The router with axum's body limit for its extractors, boxed because the
/// limit's service type is private to axum.
type LimitedRouter = BoxCloneSyncService<axum::extract::Request, Response, Infallible>;

impl std::fmt::Debug for HostService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostService").finish_non_exhaustive()
    }
}

impl HostService {
    fn new(router: Router, fallback: Option<FallbackService>, config: &Config) -> Self {
        let limit = config.body_limit_bytes;
        // Only the router's extractors read axum's limit: requests for the
        // fallback do without its extension.
        let router = BoxCloneSyncService::new(DefaultBodyLimit::max(limit).layer(router));
        let inner = ServiceBuilder::new()
            .layer(RequestIdLayer::new())
            .layer(AccessLogLayer::new())
            .layer_fn(|inner| CatchPanic { inner })
            .layer_fn(|inner| BodyLimit { inner, limit })
            .service(Dispatch { router, fallback });
        Self { inner }
    }
}

impl<B> Service<http::Request<B>> for HostService
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = HostFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        HostFuture {
            inner: self.inner.call(request.map(Body::new)),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`HostService`].
    pub struct HostFuture {
        #[pin]
        inner: <HostLayers as Service<axum::extract::Request>>::Future,
    }
}

impl std::fmt::Debug for HostFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostFuture").finish_non_exhaustive()
    }
}

impl Future for HostFuture {
    type Output = Result<Response, Infallible>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().inner.poll(cx)
    }
}

/// Requests outside [`RESERVED_PREFIXES`] to the fallback, when there is
/// one; the rest to the router.
#[derive(Clone)]
struct Dispatch {
    router: LimitedRouter,
    fallback: Option<FallbackService>,
}

impl Service<axum::extract::Request> for Dispatch {
    type Response = Response;
    type Error = Infallible;
    type Future = Either<
        <LimitedRouter as Service<axum::extract::Request>>::Future,
        <FallbackService as Service<axum::extract::Request>>::Future,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Both are always ready in practice; asking both keeps the
        // contract whichever `call` picks.
        if let Some(fallback) = &mut self.fallback {
            std::task::ready!(fallback.poll_ready(cx))?;
        }
        self.router.poll_ready(cx)
    }

    fn call(&mut self, request: axum::extract::Request) -> Self::Future {
        match &mut self.fallback {
            Some(fallback) if !is_reserved(request.uri().path()) => {
                Either::Right(fallback.call(request))
            }
            _ => Either::Left(self.router.call(with_connect_info(request))),
        }
    }
}

/// Gives a routed request axum's `ConnectInfo` (which handlers read the
/// peer from) when the server put only the gateway's [`ClientAddr`] there;
/// the fallback reads `ClientAddr` and does without.
fn with_connect_info(mut request: axum::extract::Request) -> axum::extract::Request {
    let extensions = request.extensions_mut();
    if extensions.get::<ConnectInfo<SocketAddr>>().is_none()
        && let Some(&ClientAddr(remote)) = extensions.get::<ClientAddr>()
    {
        extensions.insert(ConnectInfo(remote));
    }
    request
}

/// The documented paths a fallback would answer instead of their routes.
fn shadowed_paths(openapi: &OpenApi) -> Vec<&str> {
    openapi
        .paths
        .paths
        .keys()
        .map(String::as_str)
        .filter(|path| !is_reserved(path))
        .collect()
}

/// Whether `path` is one of [`RESERVED_PREFIXES`] or below one.
pub(crate) fn is_reserved(path: &str) -> bool {
    RESERVED_PREFIXES.iter().any(|prefix| {
        path.strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    })
}

/// A panic in a handler becomes a 500 problem (logged) instead of a
/// dropped connection.
#[derive(Clone)]
struct CatchPanic<S> {
    inner: S,
}

type Caught<F> = Map<
    CatchUnwind<AssertUnwindSafe<F>>,
    fn(std::thread::Result<Result<Response, Infallible>>) -> Result<Response, Infallible>,
>;

impl<S> Service<axum::extract::Request> for CatchPanic<S>
where
    S: Service<axum::extract::Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<Ready<Result<Response, Infallible>>, Caught<S::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: axum::extract::Request) -> Self::Future {
        let inner = &mut self.inner;
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.call(request))) {
            Ok(future) => Either::Right(AssertUnwindSafe(future).catch_unwind().map(recover)),
            Err(_) => Either::Left(futures_util::future::ready(Ok(panic_response()))),
        }
    }
}

fn recover(
    result: std::thread::Result<Result<Response, Infallible>>,
) -> Result<Response, Infallible> {
    result.unwrap_or_else(|_| Ok(panic_response()))
}

/// The body size limit: a declared `Content-Length` over it is refused
/// before anything reads the body; a body of unknown length is cut at it
/// (axum's extractors answer 413; the gateway stops the upload).
#[derive(Clone)]
struct BodyLimit<S> {
    inner: S,
    limit: usize,
}

impl<S> Service<axum::extract::Request> for BodyLimit<S>
where
    S: Service<axum::extract::Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<Ready<Result<Response, Infallible>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: axum::extract::Request) -> Self::Future {
        let limit = self.limit;
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > limit as u64) {
            let problem = Problem::payload_too_large(format!(
                "the request body exceeds the limit of {limit} bytes"
            ));
            return Either::Left(futures_util::future::ready(Ok(problem.into_response())));
        }
        // A body whose exact length is known and within the limit (every
        // body without one, say) needs no counting wrapper.
        let known = request.body().size_hint().exact();
        let request = if known.is_some_and(|len| len <= limit as u64) {
            request
        } else {
            request.map(|body| Body::new(http_body_util::Limited::new(body, limit)))
        };
        Either::Right(self.inner.call(request))
    }
}

/// Turns the framework's bare 405 and 413 into problems (keeping `Allow`).
async fn problem_for_bare_errors(response: Response) -> Response {
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
    if is_problem {
        return response;
    }
    match response.status() {
        StatusCode::PAYLOAD_TOO_LARGE => {
            Problem::payload_too_large("the request body exceeds the configured limit")
                .into_response()
        }
        StatusCode::METHOD_NOT_ALLOWED => {
            let allow = response.headers().get(header::ALLOW).cloned();
            let detail = allow.as_ref().and_then(|v| v.to_str().ok()).map_or_else(
                || "this path does not accept the request's method".to_owned(),
                |allow| format!("allowed: {allow}"),
            );
            let mut response = Problem::method_not_allowed(detail).into_response();
            if let Some(allow) = allow {
                response.headers_mut().insert(header::ALLOW, allow);
            }
            response
        }
        _ => response,
    }
}

/// No route: a 404 problem naming the path.
async fn not_found(request: axum::extract::Request) -> Response {
    let path = request.uri().path();
    Problem::not_found(format!("no route for {path}"))
        .with_instance(path.to_owned())
        .into_response()
}

/// The built host: its service and background work.
pub struct App {
    pub(crate) config: Arc<Config>,
    pub(crate) backends: Backends,
    service: HostService,
    pub(crate) spawners: Vec<Spawner>,
    openapi: OpenApi,
    components: Vec<&'static str>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("components", &self.components)
            .finish_non_exhaustive()
    }
}

impl App {
    /// Starts wiring an app over `backends`.
    pub fn builder(config: Config, backends: Backends) -> AppBuilder {
        AppBuilder {
            config: Arc::new(config),
            backends,
            api: Router::new(),
            openapi: OpenApi::default(),
            spawners: Vec::new(),
            auth: None,
            fallback: None,
            docs: None,
            components: Vec::new(),
        }
    }

    /// The whole HTTP service, every layer included (for tests with
    /// `tower::ServiceExt::oneshot`, or to serve it yourself).
    pub fn service(&self) -> HostService {
        self.service.clone()
    }

    /// The merged OpenAPI document served at `/openapi.json`.
    pub fn openapi(&self) -> &OpenApi {
        &self.openapi
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The backends.
    pub fn backends(&self) -> &Backends {
        &self.backends
    }

    /// The names of the mounted components.
    pub fn components(&self) -> &[&'static str] {
        &self.components
    }
}

#[derive(Debug)]
struct OpsState {
    backends: Backends,
    metrics: PrometheusHandle,
}

/// The host's own routes.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "Jadugar", description = "Authentication, service registry, progress tracking and API gateway."),
    paths(healthz, readyz, metrics),
    components(schemas(Health, Readiness, Problem, jadugar_core::FieldError)),
    tags((name = "host", description = "Health, readiness and metrics of the host"))
)]
struct HostApi;

/// `/healthz` body.
#[derive(Debug, Serialize, ToSchema)]
struct Health {
    /// Always `ok`.
    status: &'static str,
}

/// `/readyz` body.
#[derive(Debug, Serialize, ToSchema)]
struct Readiness {
    /// `ready`.
    status: &'static str,
    /// Each dependency checked, with `up`.
    checks: std::collections::BTreeMap<&'static str, &'static str>,
}

/// Alive: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "host",
    responses((status = 200, description = "The host is alive", body = Health)))]
async fn healthz() -> axum::Json<Health> {
    axum::Json(Health { status: "ok" })
}

/// Ready: the database and, when configured, Redis answer.
#[utoipa::path(get, path = "/readyz", tag = "host",
    responses(
        (status = 200, description = "Every dependency answers", body = Readiness),
        (status = 503, description = "A dependency is down; the detail names it", body = Problem,
            content_type = "application/problem+json"),
    ))]
async fn readyz(State(state): State<Arc<OpsState>>) -> Result<axum::Json<Readiness>, Problem> {
    const CHECK: Duration = Duration::from_secs(2);
    let database = &state.backends.database;
    let database_up = matches!(
        tokio::time::timeout(CHECK, database.ping()).await,
        Ok(Ok(()))
    );
    let redis_up = match &state.backends.redis {
        Some(redis) => Some(matches!(
            tokio::time::timeout(CHECK, redis.ping()).await,
            Ok(Ok(()))
        )),
        None => None,
    };
    let mut down = Vec::new();
    if !database_up {
        down.push(format!("database ({})", database.backend()));
    }
    if redis_up == Some(false) {
        down.push("redis".to_owned());
    }
    if !down.is_empty() {
        tracing::warn!(down = ?down, "not ready");
        return Err(
            Problem::unavailable(format!("not ready: {} down", down.join(", ")))
                .with_retry_after(5),
        );
    }
    let mut checks = std::collections::BTreeMap::new();
    checks.insert("database", "up");
    if redis_up.is_some() {
        checks.insert("redis", "up");
    }
    Ok(axum::Json(Readiness {
        status: "ready",
        checks,
    }))
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "host",
    responses((status = 200, description = "Metrics", body = String, content_type = "text/plain; version=0.0.4")))]
async fn metrics(State(state): State<Arc<OpsState>>) -> Response {
    let mut response = Response::new(Body::from(state.metrics.render()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_prefixes_match_whole_segments() {
        for path in [
            "/v1",
            "/v1/auth/login",
            "/healthz",
            "/docs/",
            "/.well-known/jwks.json",
        ] {
            assert!(is_reserved(path), "{path}");
        }
        for path in [
            "/",
            "/v10/x",
            "/v1x",
            "/healthzz",
            "/shop/v1",
            "/metrics-old",
        ] {
            assert!(!is_reserved(path), "{path}");
        }
    }

    #[test]
    fn documented_routes_outside_the_reserved_prefixes_are_reported() {
        let mut openapi = HostApi::openapi();
        let extra: OpenApi = serde_json::from_value(serde_json::json!({
            "openapi": "3.1.0",
            "info": {"title": "t", "version": "1"},
            "paths": {"/hello": {}, "/v1/hello": {}}
        }))
        .unwrap_or_default();
        openapi.merge(extra);
        assert_eq!(shadowed_paths(&openapi), vec!["/hello"]);
    }
}
