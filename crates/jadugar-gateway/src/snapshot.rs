//! Compiled routes: what the hot path reads through one atomic load.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use jadugar_core::storage::Redis;
use jadugar_core::{Discovery, Endpoint, FieldError};
use tower::retry::budget::TpsBudget;

use crate::Config;
use crate::balance::UpstreamPool;
use crate::model::{AuthPolicy, Balance, RateKey, RouteSpec, UpstreamSpec};
use crate::observability::RouteMetrics;
use crate::proxy::client::{ClientCache, UpstreamClient};
use crate::ratelimit::{LocalLimiter, RateLimiter};
use crate::router::{RouteMatcher, RouteTable};
use crate::transform::Transform;

/// Where the consistent-hash key comes from.
#[derive(Debug, Clone)]
pub(crate) enum HashSource {
    Header(HeaderName),
    Cookie(String),
}

/// One route, ready for the hot path.
pub(crate) struct CompiledRoute {
    pub id: Arc<str>,
    pub auth: AuthPolicy,
    pub rate: Option<(RateLimiter, RateKey)>,
    /// Shared by every route that changes nothing.
    pub transform: Arc<Transform>,
    pub pool: Arc<UpstreamPool>,
    pub client: Arc<UpstreamClient>,
    pub upgrade_client: Arc<UpstreamClient>,
    pub http2: bool,
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    pub retries: u32,
    pub budget: Option<Arc<TpsBudget>>,
    pub preserve_host: bool,
    pub hash: Option<HashSource>,
    pub metrics: RouteMetrics,
    /// Header fields the gateway adds to this route's responses (request
    /// id, `RateLimit-*`, transforms): room reserved when the upstream's
    /// response head is parsed, so its map does not grow.
    pub response_room: usize,
}

/// Every route, compiled; swapped atomically as a whole.
pub(crate) struct Snapshot {
    pub table: RouteTable<Arc<CompiledRoute>>,
    /// The configuration file's routes (shared with the gateway, not
    /// copied per snapshot), then the stored ones.
    pub config_routes: Arc<Vec<RouteSpec>>,
    pub stored: Vec<RouteSpec>,
    pub pools: HashMap<String, Arc<UpstreamPool>>,
    pub limiters: HashMap<String, RateLimiter>,
    pub version: i64,
}

impl Snapshot {
    pub(crate) fn empty() -> Self {
        Self {
            table: RouteTable::builder().build(),
            config_routes: Arc::new(Vec::new()),
            stored: Vec::new(),
            pools: HashMap::new(),
            limiters: HashMap::new(),
            version: 0,
        }
    }

    /// Every route spec: configuration routes first.
    pub(crate) fn specs(&self) -> impl Iterator<Item = &RouteSpec> {
        self.config_routes.iter().chain(&self.stored)
    }

    /// How many routes.
    pub(crate) fn len(&self) -> usize {
        self.config_routes.len() + self.stored.len()
    }
}

/// What compiling needs.
pub(crate) struct BuildContext<'a> {
    pub config: &'a Config,
    pub discovery: &'a dyn Discovery,
    pub clients: &'a ClientCache,
    // Read by shared rate limits only, which need the `redis` feature.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub redis: Option<&'a Redis>,
}

/// Routes whose upstream specs are equal share one pool (instances,
/// balancer and health state, idle connections); the spec holds the
/// explicit name when there is one.
fn pool_key(spec: &UpstreamSpec) -> String {
    serde_json::to_string(spec).unwrap_or_default()
}

/// Compiles `specs`; errors name `routes[i].field`.
pub(crate) fn build(
    config_routes: Arc<Vec<RouteSpec>>,
    stored: Vec<RouteSpec>,
    version: i64,
    ctx: &BuildContext<'_>,
    old: Option<&Snapshot>,
) -> Result<Snapshot, Vec<FieldError>> {
    let mut errors = Vec::new();
    if config_routes.len() + stored.len() > ctx.config.max_routes {
        errors.push(FieldError::new(
            "routes",
            format!("at most {} routes", ctx.config.max_routes),
        ));
        return Err(errors);
    }
    let mut seen = HashMap::new();
    let mut table = RouteTable::builder();
    let mut pools = HashMap::new();
    let mut limiters = HashMap::new();
    let mut noop: Option<Arc<Transform>> = None;
    for (i, spec) in config_routes.iter().chain(&stored).enumerate() {
        if let Err(errs) = spec.validate() {
            errors.extend(
                errs.into_iter()
                    .map(|e| FieldError::new(format!("routes[{i}].{}", e.field), e.message)),
            );
            continue;
        }
        if let Some(first) = seen.insert(spec.id.clone(), i) {
            errors.push(FieldError::new(
                format!("routes[{i}].id"),
                format!("duplicates routes[{first}]"),
            ));
            continue;
        }
        let transform = match Transform::compile(&spec.transform, &spec.path) {
            // A transform that changes nothing does not depend on the route.
            Ok(t) if t.is_noop() => Arc::clone(noop.get_or_insert_with(|| Arc::new(t))),
            Ok(t) => Arc::new(t),
            Err(errs) => {
                errors.extend(
                    errs.into_iter()
                        .map(|e| FieldError::new(format!("routes[{i}].{}", e.field), e.message)),
                );
                continue;
            }
        };
        let key = pool_key(&spec.upstream);
        let pool = match pools
            .get(&key)
            .or_else(|| old.and_then(|o| o.pools.get(&key)))
        {
            Some(p) => Arc::clone(p),
            None => {
                let p = Arc::new(
                    UpstreamPool::new(&spec.upstream_name(), spec.upstream.clone())
                        .with_tls(ctx.clients.tls().clone())
                        .with_idle_connections(
                            Duration::from_secs(ctx.config.pool_idle_timeout_secs),
                            ctx.config.pool_max_idle_per_host,
                        ),
                );
                refresh_pool(&p, ctx);
                p
            }
        };
        pools.entry(key).or_insert_with(|| pool.clone());
        let rate = match &spec.rate_limit {
            None => None,
            Some(rl) => {
                let key = format!(
                    "{}|{}",
                    spec.id,
                    serde_json::to_string(rl).unwrap_or_default()
                );
                let limiter = match limiters
                    .get(&key)
                    .or_else(|| old.and_then(|o| o.limiters.get(&key)))
                {
                    Some(l) => Clone::clone(l),
                    None => make_limiter(spec, ctx, i, &mut errors),
                };
                limiters.insert(key, limiter.clone());
                Some((limiter, rl.key.clone()))
            }
        };
        let r = &spec.resilience;
        let http2 = spec.upstream.http2;
        let id: Arc<str> = Arc::from(spec.id.as_str());
        let response_room =
            1 + if rate.is_some() { 3 } else { 0 } + transform.added_response_headers();
        let compiled = CompiledRoute {
            id: Arc::clone(&id),
            auth: spec.auth.clone(),
            rate,
            transform,
            client: ctx.clients.get(r.connect_timeout_ms, http2),
            upgrade_client: ctx.clients.get(r.connect_timeout_ms, false),
            http2,
            request_timeout: Duration::from_millis(r.request_timeout_ms),
            connect_timeout: Duration::from_millis(r.connect_timeout_ms),
            retries: r.retries,
            budget: (r.retries > 0).then(|| {
                Arc::new(TpsBudget::new(
                    Duration::from_secs(10),
                    1,
                    r.retry_budget_percent / 100.0,
                ))
            }),
            preserve_host: spec.preserve_host,
            hash: match &spec.upstream.balance {
                Balance::ConsistentHash {
                    header: Some(h), ..
                } => HeaderName::from_bytes(h.as_bytes())
                    .ok()
                    .map(HashSource::Header),
                Balance::ConsistentHash {
                    cookie: Some(c), ..
                } => Some(HashSource::Cookie(c.clone())),
                _ => None,
            },
            metrics: RouteMetrics::with_labels(Arc::clone(&id), pool.name_arc()),
            pool,
            response_room,
        };
        if let Err(e) = table.insert(RouteMatcher::from_spec(spec), &spec.id, Arc::new(compiled)) {
            errors.push(FieldError::new(format!("routes[{i}].path"), e.0));
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Snapshot {
        table: table.build(),
        config_routes,
        stored,
        pools,
        limiters,
        version,
    })
}

fn make_limiter(
    spec: &RouteSpec,
    ctx: &BuildContext<'_>,
    i: usize,
    errors: &mut Vec<FieldError>,
) -> RateLimiter {
    let Some(rl) = &spec.rate_limit else {
        return RateLimiter::Local(LocalLimiter::new(
            &crate::model::RateLimitSpec {
                key: RateKey::Ip,
                requests: 1,
                per_secs: 1,
                burst: None,
                shared: false,
                fail_open: true,
            },
            1,
        ));
    };
    if rl.shared {
        #[cfg(feature = "redis")]
        if let Some(redis) = ctx.redis {
            return RateLimiter::Shared(Arc::new(crate::ratelimit::SharedLimiter::new(
                redis.clone(),
                &spec.id,
                rl,
                Duration::from_millis(ctx.config.redis_timeout_ms),
            )));
        }
        errors.push(FieldError::new(
            format!("routes[{i}].rate_limit.shared"),
            "needs Redis, which is not configured",
        ));
    }
    RateLimiter::Local(LocalLimiter::new(rl, ctx.config.rate_limit_max_keys))
}

/// The endpoints of a pool right now: its fixed targets, or its service's
/// instances from discovery; addresses the outbound policy denies are
/// dropped.
pub(crate) fn refresh_pool(pool: &UpstreamPool, ctx: &BuildContext<'_>) {
    let spec = pool.spec();
    let endpoints: Vec<Endpoint> = match &spec.service {
        Some(service) => ctx.discovery.endpoints(service, &spec.tags).to_vec(),
        None => spec
            .targets
            .iter()
            .filter_map(|t| {
                let url = url::Url::parse(t.url()).ok()?;
                let host = match url.host()? {
                    url::Host::Domain(d) => d.to_owned(),
                    url::Host::Ipv4(ip) => ip.to_string(),
                    url::Host::Ipv6(ip) => ip.to_string(),
                };
                let port = url.port_or_known_default()?;
                Some(Endpoint::new(t.url(), url.scheme(), host, port).with_weight(t.weight()))
            })
            .collect(),
    };
    let policy = ctx.clients.policy();
    let allowed: Vec<Endpoint> = endpoints
        .into_iter()
        .filter(|e| match e.host.trim_matches(|c| c == '[' || c == ']').parse::<IpAddr>() {
            Ok(ip) => match policy.check_ip(ip) {
                Ok(()) => true,
                Err(err) => {
                    tracing::warn!(upstream = pool.name(), endpoint = %e.id, error = %err, "endpoint denied by the outbound address policy");
                    false
                }
            },
            Err(_) => true,
        })
        .collect();
    pool.refresh(&allowed);
}
#[cfg(test)]
mod tests {
    use super::*;

    fn compile(specs: Vec<RouteSpec>) -> Snapshot {
        let config = Config::default();
        let discovery = jadugar_core::StaticDiscovery::new();
        let clients = ClientCache::new(
            jadugar_core::outbound::AddressPolicy::permissive(),
            Duration::from_secs(1),
            1,
            crate::proxy::client::UpstreamTls::webpki(),
        );
        let ctx = BuildContext {
            config: &config,
            discovery: &discovery,
            clients: &clients,
            redis: None,
        };
        build(Arc::new(Vec::new()), specs, 1, &ctx, None).unwrap_or_else(|e| panic!("{e:?}"))
    }

    #[test]
    fn routes_with_the_same_upstream_share_pool_clients_and_noop_transform() {
        let specs: Vec<RouteSpec> = (0..3)
            .map(|i| RouteSpec::new(format!("r{i}"), format!("/r{i}"), ["http://127.0.0.1:9"]))
            .chain([RouteSpec::new("other", "/o", ["http://127.0.0.1:10"])])
            .collect();
        let snap = compile(specs);
        assert_eq!(snap.pools.len(), 2);
        let route = |path: &str| {
            let found = snap
                .table
                .find(
                    None,
                    &http::Method::GET,
                    path,
                    &http::HeaderMap::new(),
                    None,
                )
                .unwrap_or_else(|| panic!("{path}"));
            Arc::clone(found.value)
        };
        let (a, b, o) = (route("/r0"), route("/r2"), route("/o"));
        assert!(Arc::ptr_eq(&a.pool, &b.pool));
        assert!(!Arc::ptr_eq(&a.pool, &o.pool));
        assert_eq!(a.pool.name(), "http://127.0.0.1:9");
        assert!(Arc::ptr_eq(&a.client, &o.client));
        assert!(Arc::ptr_eq(&a.transform, &o.transform));
        // Metric series appear with a route's first request, not before.
        assert!(!a.metrics.is_registered());
        a.metrics.record(200, Duration::from_millis(1), None);
        assert!(a.metrics.is_registered() && !b.metrics.is_registered());
    }
}
