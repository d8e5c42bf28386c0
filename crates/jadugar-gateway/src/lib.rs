//! Jadugar gateway: routing, reverse proxying, load balancing, resilience,
//! rate limits, transformations and merged API docs, as tower services.
//!
//! [`Gateway`] is a `tower::Service<http::Request<B>>` for any body: mount
//! it as the fallback of an axum app, or run it alone with [`serve`]. The
//! pieces also work alone: [`router::RouteTable`],
//! [`ratelimit::RateLimitLayer`], [`transform::TransformLayer`],
//! [`balance::UpstreamPool`].
//!
//! ```no_run
//! use std::sync::Arc;
//! use jadugar_core::StaticDiscovery;
//! use jadugar_gateway::{Config, Gateway, model::RouteSpec};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let mut config = Config::default();
//! config.routes.push(RouteSpec::new("api", "/api", ["http://127.0.0.1:9001"]).prefix());
//! let gateway = Gateway::builder(config)
//!     .discovery(Arc::new(StaticDiscovery::new()))
//!     .build()
//!     .await?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! let cancel = tokio_util::sync::CancellationToken::new();
//! let _tasks = gateway.spawn_background(cancel.clone());
//! jadugar_gateway::serve(listener, gateway, async move { cancel.cancelled().await }).await?;
//! # Ok(()) }
//! ```
//!
//! # Hot path
//!
//! The route table is an immutable snapshot behind an atomic pointer swap
//! (`arc-swap`): a request takes no lock to find its route, admin changes
//! build a whole new snapshot and swap it in, and requests in flight keep
//! the snapshot they started with. HTTP/1.1 upstream connections are the
//! gateway's own, kept alive per instance and driven by the task serving
//! the request (HTTP/2 and upgrades go through hyper-util's client);
//! [`serve`] and [`serve_service`] answer ordinary HTTP/1.1 requests with
//! their own loop and give any other connection to hyper's server; bodies
//! stream both ways; balancer and health counters are atomics.

pub mod balance;
pub mod docs;
pub mod error;
pub mod http;
pub mod model;
pub mod observability;
pub mod proxy;
pub mod ratelimit;
pub mod resilience;
pub mod router;
mod server;
pub mod service;
mod snapshot;
pub mod store;
pub mod transform;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use ::http::{HeaderName, HeaderValue, Request, Response};
use arc_swap::ArcSwap;
use bytes::Bytes;
use jadugar_core::outbound::AddressPolicy;
use jadugar_core::storage::Redis;
use jadugar_core::{CursorCodec, Discovery, SharedClock, StaticDiscovery, SystemClock};
#[cfg(any(feature = "sqlite", feature = "postgres"))]
use jadugar_core::{Sealer, storage::Database};
use serde::Deserialize;

pub use error::Error;
pub use proxy::body::{ProxyBody, RequestBody};
pub use server::{serve, serve_service};
pub use service::{RouteSource, RouteView};

use proxy::client::ClientCache;
use snapshot::Snapshot;
use store::RouteStore;

/// The `[gateway]` section of `jadugar.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Routes defined in the file (`[[gateway.routes]]`); read-only
    /// through the admin API.
    pub routes: Vec<model::RouteSpec>,
    /// How often to poll the route store for changes from other hosts (ms):
    /// the fallback, since Postgres `NOTIFY` and Redis pub/sub (when
    /// configured) bring changes within milliseconds.
    pub sync_interval_ms: u64,
    /// Write an access log line per request (target `jadugar_gateway::access`).
    pub access_log: bool,
    /// Generate an `x-request-id` for requests without one.
    pub request_id: bool,
    /// Headers removed from every incoming request because upstreams trust
    /// them as set by the gateway.
    pub identity_headers: Vec<String>,
    /// Keep and extend incoming `X-Forwarded-*` headers and keep
    /// `Forwarded` (only behind a trusted proxy); otherwise the
    /// `X-Forwarded-*` headers are replaced and `Forwarded` is removed.
    pub trust_forwarded: bool,
    /// The `X-Forwarded-Proto` sent upstream (`http`, or `https` behind a
    /// TLS terminator).
    pub forwarded_proto: String,
    /// Idle upstream connections are closed after this many seconds.
    pub pool_idle_timeout_secs: u64,
    /// Most idle connections kept per upstream instance.
    pub pool_max_idle_per_host: usize,
    /// Allow upstreams on loopback and private networks (link-local and
    /// cloud metadata addresses are always refused).
    pub allow_private_upstreams: bool,
    /// Most distinct keys an in-process rate limit keeps per route.
    pub rate_limit_max_keys: usize,
    /// How long a shared (Redis) rate-limit check may take (ms).
    pub redis_timeout_ms: u64,
    /// Timeout fetching upstream OpenAPI documents (ms).
    pub docs_timeout_ms: u64,
    /// How long fetched upstream OpenAPI documents are reused (seconds).
    pub docs_cache_secs: u64,
    /// Most routes.
    pub max_routes: usize,
    /// A PEM file of CA certificates trusted for `https` upstreams in
    /// addition to the built-in webpki (Mozilla) roots, e.g. a private CA.
    /// Upstream certificates are always verified.
    pub upstream_ca_file: Option<std::path::PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            routes: Vec::new(),
            sync_interval_ms: 2_000,
            access_log: true,
            request_id: true,
            identity_headers: [
                "x-user-id",
                "x-principal-subject",
                "x-principal-kind",
                "x-api-key-id",
                "x-jadugar-principal",
            ]
            .map(String::from)
            .to_vec(),
            trust_forwarded: false,
            forwarded_proto: "http".into(),
            pool_idle_timeout_secs: 90,
            pool_max_idle_per_host: 1024,
            allow_private_upstreams: true,
            rate_limit_max_keys: ratelimit::DEFAULT_MAX_KEYS,
            redis_timeout_ms: 50,
            docs_timeout_ms: 3_000,
            docs_cache_secs: 60,
            max_routes: 100_000,
            upstream_ca_file: None,
        }
    }
}

/// The client address of a request, put in its extensions by [`serve`]
/// (axum's `ConnectInfo<SocketAddr>` is read too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub SocketAddr);

pub(crate) struct Shared {
    /// `config` without its routes, which are here, shared with every
    /// snapshot instead of copied into each.
    pub(crate) config: Config,
    pub(crate) config_routes: Arc<Vec<model::RouteSpec>>,
    pub(crate) snapshot: ArcSwap<Snapshot>,
    pub(crate) discovery: Arc<dyn Discovery>,
    pub(crate) clients: ClientCache,
    pub(crate) redis: Option<Redis>,
    pub(crate) store: Arc<dyn RouteStore>,
    pub(crate) admin: tokio::sync::Mutex<()>,
    pub(crate) clock: SharedClock,
    pub(crate) identity_headers: Vec<HeaderName>,
    pub(crate) forwarded_proto: HeaderValue,
    pub(crate) cursor: CursorCodec,
    pub(crate) docs: docs::DocsCache,
    /// Path prefixes the embedding application answers itself; see
    /// [`GatewayBuilder::reserved_paths`].
    pub(crate) reserved: Vec<String>,
}

/// The gateway; see the [crate docs](crate). Cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("routes", &self.shared.snapshot.load().len())
            .finish_non_exhaustive()
    }
}

/// Builds a [`Gateway`].
#[derive(Debug)]
pub struct GatewayBuilder {
    config: Config,
    discovery: Option<Arc<dyn Discovery>>,
    redis: Option<Redis>,
    store: Option<Arc<dyn RouteStore>>,
    clock: Option<SharedClock>,
    cursor: Option<CursorCodec>,
    reserved: Vec<String>,
}

impl GatewayBuilder {
    /// Where registry-backed upstreams are found (default: none).
    pub fn discovery(mut self, discovery: Arc<dyn Discovery>) -> Self {
        self.discovery = Some(discovery);
        self
    }

    /// Redis, for shared rate limits.
    pub fn redis(mut self, redis: Redis) -> Self {
        self.redis = Some(redis);
        self
    }

    /// The route store (default: in memory).
    pub fn store(mut self, store: Arc<dyn RouteStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// The clock (default: the system clock).
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// The cursor codec of the admin API (default: a random key, so
    /// cursors only work on this host).
    pub fn cursor_codec(mut self, codec: CursorCodec) -> Self {
        self.cursor = Some(codec);
        self
    }

    /// Path prefixes the application mounting the gateway answers itself
    /// (the `jadugar` host: `/v1`, `/healthz`, ...): the admin API refuses
    /// a route at or below one (`/v1` covers `/v1` and `/v1/auth/x`, not
    /// `/v1x`), which would be stored but never reached.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), jadugar_gateway::Error> {
    /// let gateway = jadugar_gateway::Gateway::builder(Default::default())
    ///     .reserved_paths(["/v1", "/healthz"])
    ///     .build()
    ///     .await?;
    /// # let _ = gateway; Ok(()) }
    /// ```
    pub fn reserved_paths<P: Into<String>>(
        mut self,
        prefixes: impl IntoIterator<Item = P>,
    ) -> Self {
        self.reserved = prefixes.into_iter().map(Into::into).collect();
        self
    }

    /// Compiles the configuration and stored routes; fails with the
    /// reasons if any route is invalid.
    pub async fn build(self) -> Result<Gateway, Error> {
        let mut config = self.config;
        // An Arc of the Vec itself: no copy of the routes.
        let config_routes = Arc::new(std::mem::take(&mut config.routes));
        let policy = if config.allow_private_upstreams {
            AddressPolicy::permissive()
        } else {
            AddressPolicy::strict()
        };
        let identity_headers = config
            .identity_headers
            .iter()
            .map(|h| HeaderName::from_bytes(h.as_bytes()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| {
                Error::Invalid(vec![jadugar_core::FieldError::new(
                    "identity_headers",
                    "must be header names",
                )])
            })?;
        let forwarded_proto = HeaderValue::from_str(&config.forwarded_proto).map_err(|_| {
            Error::Invalid(vec![jadugar_core::FieldError::new(
                "forwarded_proto",
                "must be http or https",
            )])
        })?;
        let tls =
            proxy::client::UpstreamTls::new(config.upstream_ca_file.as_deref()).map_err(|e| {
                Error::Invalid(vec![jadugar_core::FieldError::new(
                    "upstream_ca_file",
                    format!("{}: {}", e.path, e.reason),
                )])
            })?;
        let shared = Arc::new(Shared {
            clients: ClientCache::new(
                policy.clone(),
                Duration::from_secs(config.pool_idle_timeout_secs),
                config.pool_max_idle_per_host,
                tls,
            ),
            docs: docs::DocsCache::new(policy, &config),
            config,
            config_routes,
            snapshot: ArcSwap::from_pointee(Snapshot::empty()),
            discovery: self
                .discovery
                .unwrap_or_else(|| Arc::new(StaticDiscovery::new())),
            redis: self.redis,
            store: self
                .store
                .unwrap_or_else(|| Arc::new(store::MemoryRouteStore::default())),
            admin: tokio::sync::Mutex::new(()),
            clock: self.clock.unwrap_or_else(SystemClock::shared),
            identity_headers,
            forwarded_proto,
            cursor: self.cursor.unwrap_or_else(CursorCodec::random),
            reserved: self.reserved,
        });
        shared.reload().await?;
        Ok(Gateway { shared })
    }
}

impl Gateway {
    /// A builder for `config`.
    pub fn builder(config: Config) -> GatewayBuilder {
        GatewayBuilder {
            config,
            discovery: None,
            redis: None,
            store: None,
            clock: None,
            cursor: None,
            reserved: Vec::new(),
        }
    }

    /// The whole gateway from the host's backends: runs the gateway's
    /// migrations and keeps routes in `db`, shares rate limits through
    /// `redis` when given, signs admin cursors with a key derived from
    /// `sealer`, and finds registry upstreams through `discovery`.
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    pub async fn from_backends(
        config: &Config,
        db: &Database,
        redis: Option<&Redis>,
        clock: SharedClock,
        sealer: Sealer,
        discovery: Arc<dyn Discovery>,
    ) -> Result<Self, Error> {
        Self::builder_from_backends(config, db, redis, clock, sealer, discovery)
            .await?
            .build()
            .await
    }

    /// What [`from_backends`](Self::from_backends) builds, before it is
    /// built: for the settings it does not take, such as
    /// [`reserved_paths`](GatewayBuilder::reserved_paths).
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    pub async fn builder_from_backends(
        config: &Config,
        db: &Database,
        redis: Option<&Redis>,
        clock: SharedClock,
        sealer: Sealer,
        discovery: Arc<dyn Discovery>,
    ) -> Result<GatewayBuilder, Error> {
        let store = store::SqlRouteStore::new(db.clone()).await?;
        let mut builder = Self::builder(config.clone())
            .discovery(discovery)
            .store(Arc::new(store))
            .clock(clock)
            .cursor_codec(CursorCodec::new(
                sealer.derive_key("jadugar-gateway/cursor"),
            ));
        if let Some(redis) = redis {
            builder = builder.redis(redis.clone());
        }
        Ok(builder)
    }

    /// Serves one request (what [`tower::Service::call`] does, without
    /// boxing the future).
    pub fn handle<B>(
        &self,
        req: Request<B>,
    ) -> impl Future<Output = Response<ProxyBody>> + Send + 'static + use<B>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        proxy::handle(self.shared.clone(), req.map(RequestBody::from_body), None)
    }

    /// [`handle`](Self::handle) for a request from a known client address,
    /// without going through request extensions.
    pub(crate) fn handle_request(
        &self,
        req: Request<RequestBody>,
        peer: &proxy::Peer,
    ) -> impl Future<Output = Response<ProxyBody>> + Send + 'static + use<> {
        proxy::handle(self.shared.clone(), req, Some(peer.clone()))
    }

    /// The number of routes in effect.
    pub fn route_count(&self) -> usize {
        self.shared.snapshot.load().len()
    }
}

impl<B> tower::Service<Request<B>> for Gateway
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // Only the Arc and the request are captured: the large proxy future
        // is built inside the box on first poll rather than on the stack
        // and then moved into it.
        let shared = self.shared.clone();
        Box::pin(
            async move { Ok(proxy::handle(shared, req.map(RequestBody::from_body), None).await) },
        )
    }
}
