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
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use jadugar_core::Problem;
use jadugar_core::request_id::RequestIdLayer;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;
use tower::util::BoxCloneSyncService;
use utoipa::openapi::OpenApi;
use utoipa::{OpenApi as _, ToSchema};

use crate::backends::Backends;
use crate::config::Config;
use crate::telemetry::{AccessLogLayer, metrics_handle};

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
type Wrapper = Box<dyn FnOnce(Router) -> Router + Send>;
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
    auth: Option<Wrapper>,
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
    /// and metrics routes) with `wrap`, typically
    /// `|router| router.layer(auth_layer)`.
    pub fn authenticate(mut self, wrap: impl FnOnce(Router) -> Router + Send + 'static) -> Self {
        self.auth = Some(Box::new(wrap));
        self
    }

    /// Answers every request outside [`RESERVED_PREFIXES`] that no route
    /// matched with `service` (the gateway). The host puts no timeout on it:
    /// the gateway times its upstreams out per route.
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
        let openapi_json =
            axum::body::Bytes::from(serde_json::to_vec(&openapi).unwrap_or_default());

        let fallback = self.fallback;
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
            .fallback(move |request: axum::extract::Request| {
                let fallback = fallback.clone();
                async move { route_fallback(fallback, request).await }
            });
        let api = match self.auth {
            Some(wrap) => wrap(api),
            None => api,
        };

        let ops_state = OpsState {
            backends: self.backends.clone(),
            metrics: metrics_handle(),
        };
        let ops = Router::new()
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .route_layer(axum::middleware::map_response(problem_for_bare_errors))
            .with_state(Arc::new(ops_state));

        let default_timeout = Duration::from_secs(self.config.request_timeout_secs);
        let router = with_timeout(ops, default_timeout).merge(api);
        // `with_state` turns every handler (the fallback closure included)
        // into a route once; a `Router` called as a service without it
        // converts the matched handler, layers and all, on every request
        // (about 60 allocations per proxied request).
        let router = with_host_layers(router, &self.config).with_state(());
        App {
            config: self.config,
            backends: self.backends,
            router,
            spawners: self.spawners,
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

/// The request id, access log, panic catching and body limit around
/// `router`.
fn with_host_layers(router: Router, config: &Config) -> Router {
    let limit = config.body_limit_bytes;
    router
        .layer(DefaultBodyLimit::max(limit))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(limit))
        .layer(axum::middleware::from_fn_with_state(
            limit,
            reject_declared_oversize,
        ))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            |_: Box<dyn std::any::Any + Send>| {
                tracing::error!("a request handler panicked");
                Problem::internal().into_response()
            },
        ))
        .layer(AccessLogLayer)
        .layer(RequestIdLayer::new())
}

/// A declared `Content-Length` over the limit is refused before anything
/// reads the body. (Undeclared lengths are cut by `RequestBodyLimitLayer`.)
async fn reject_declared_oversize(
    State(limit): State<usize>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Problem::payload_too_large(format!(
            "the request body exceeds the limit of {limit} bytes"
        ))
        .into_response();
    }
    next.run(request).await
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
            let mut problem = Problem::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
            );
            if let Some(allow) = allow.as_ref().and_then(|v| v.to_str().ok()) {
                problem = problem.with_detail(format!("allowed: {allow}"));
            }
            let mut response = problem.into_response();
            if let Some(allow) = allow {
                response.headers_mut().insert(header::ALLOW, allow);
            }
            response
        }
        _ => response,
    }
}

async fn route_fallback(
    fallback: Option<FallbackService>,
    request: axum::extract::Request,
) -> Response {
    let path = request.uri().path();
    let reserved = RESERVED_PREFIXES.iter().any(|prefix| {
        path == *prefix
            || path
                .strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with('/'))
    });
    match fallback {
        Some(service) if !reserved => {
            use tower::ServiceExt;
            match service.oneshot(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            }
        }
        _ => Problem::not_found(format!("no route for {path}"))
            .with_instance(path.to_owned())
            .into_response(),
    }
}

/// The built host: its router and background work.
pub struct App {
    pub(crate) config: Arc<Config>,
    pub(crate) backends: Backends,
    router: Router,
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
    pub fn router(&self) -> Router {
        self.router.clone()
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
