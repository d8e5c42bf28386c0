//! The reverse proxy: the gateway's hot path.
//!
//! Per request: one atomic load of the route snapshot, a path check and a
//! radix-tree match, the route's auth, rate limit and transforms, an
//! instance from the balancer, then the request goes out on a pooled
//! keep-alive connection (HTTP/1.1 or HTTP/2) with its body streamed, and
//! the response body streams back. Hop-by-hop headers are removed,
//! `X-Forwarded-For/Proto/Host` set and the request id propagated.
//! WebSocket (and any HTTP/1.1 upgrade) is passed through: after the
//! upstream's `101` both upgraded connections are spliced.

pub mod body;
pub mod client;
pub(crate) mod h1;
pub mod headers;
pub(crate) mod pool;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use http_body_util::{BodyExt, Limited};
use hyper_util::rt::TokioIo;
use jadugar_core::request_id::{self, RequestId};
use jadugar_core::{Principal, Problem};
use tower::retry::budget::Budget;

use self::body::{ProxyBody, RequestBody};
use crate::Shared;
use crate::balance::{Backend, hash_key};
use crate::model::AuthPolicy;
use crate::ratelimit::{Decision, extract_key};
use crate::resilience::{is_idempotent, ms_at};
use crate::router::check_path;
use crate::snapshot::{CompiledRoute, HashSource};
use crate::transform::template::TemplateContext;

fn problem(p: &Problem) -> Response<ProxyBody> {
    p.to_response::<ProxyBody>()
}

fn bad_gateway(upstream: &str, detail: &str) -> Problem {
    Problem::new(StatusCode::BAD_GATEWAY, "bad-gateway", "Bad gateway")
        .with_detail(format!("upstream {upstream}: {detail}"))
}

fn gateway_timeout(upstream: &str) -> Problem {
    Problem::new(
        StatusCode::GATEWAY_TIMEOUT,
        "gateway-timeout",
        "Gateway timeout",
    )
    .with_detail(format!("upstream {upstream} did not answer in time"))
}

enum Failure {
    NoInstance,
    Shed,
    Connect,
    Timeout,
    Upstream,
    /// The client's request body failed mid-way (the client went away, or
    /// sent a malformed body): no fault of the upstream's, so outlier
    /// detection never counts it (or any client could eject an instance).
    ClientBody,
}

/// Serves one request end to end.
/// The client of a connection, prepared once per connection.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    pub(crate) ip: IpAddr,
    pub(crate) forwarded_for: Option<HeaderValue>,
}

impl Peer {
    pub(crate) fn new(ip: IpAddr) -> Self {
        Self {
            ip,
            forwarded_for: ip_header_value(ip).ok(),
        }
    }
}

// The request's futures are `async move` blocks rather than `async fn`s:
// an `async fn` keeps each by-value argument twice in its state (the
// argument and the local it is moved into) and copies it between them, and
// the request head alone is 264 bytes; a block uses what it captured in
// place.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn would keep its arguments twice"
)]
pub(crate) fn handle(
    shared: Arc<Shared>,
    mut req: Request<RequestBody>,
    peer: Option<Peer>,
) -> impl Future<Output = Response<ProxyBody>> + Send + 'static {
    async move {
        let start = Instant::now();
        let request_id = match req.headers().get(&request_id::HEADER) {
            Some(v) => Some(v.clone()),
            None if shared.config.request_id => {
                let v = RequestId::generate().into_header_value();
                if let Some(v) = &v {
                    req.headers_mut().insert(request_id::HEADER, v.clone());
                }
                v
            }
            None => None,
        };
        // Cheap (reference-counted); lets the request be changed while its
        // target is read.
        let uri = req.uri().clone();
        let mut res = route_and_proxy(&shared, &mut req, &uri, start, peer).await;
        if let Some(id) = request_id
            && !res.0.headers().contains_key(&request_id::HEADER)
        {
            res.0.headers_mut().insert(request_id::HEADER, id.clone());
        }
        let (response, route, instance, upstream_latency) = res;
        if shared.config.access_log
            && tracing::enabled!(target: "jadugar_gateway::access", tracing::Level::INFO)
        {
            crate::observability::access_log(
                route.as_deref().unwrap_or("-"),
                instance.as_deref(),
                req.method(),
                uri.path(),
                response.status().as_u16(),
                upstream_latency,
                start.elapsed(),
                response
                    .headers()
                    .get(&request_id::HEADER)
                    .and_then(|v| v.to_str().ok()),
            );
        }
        // The request head has been sent (or refused): its map can serve a
        // later message.
        headers::spare::give(std::mem::take(req.headers_mut()));
        response
    }
}

type Outcome = (
    Response<ProxyBody>,
    Option<Arc<str>>,
    Option<Arc<str>>,
    Option<Duration>,
);

#[allow(
    clippy::manual_async_fn,
    reason = "an async fn would keep its arguments twice (see `handle`)"
)]
fn route_and_proxy<'a>(
    shared: &'a Shared,
    req: &'a mut Request<RequestBody>,
    uri: &'a Uri,
    start: Instant,
    peer: Option<Peer>,
) -> impl Future<Output = Outcome> + Send + 'a {
    async move {
        let path = uri.path();
        if let Err(e) = check_path(path) {
            return (
                problem(&Problem::bad_request(e.to_string())),
                None,
                None,
                None,
            );
        }
        let snapshot = shared.snapshot.load_full();
        let host_header = req.headers().get(header::HOST).cloned();
        let host = host_header
            .as_ref()
            .and_then(|h| h.to_str().ok())
            .or_else(|| uri.authority().map(|a| a.as_str()));
        let Some(found) = snapshot
            .table
            .find(host, req.method(), path, req.headers(), uri.query())
        else {
            return (
                problem(&Problem::not_found("no route matches this request")),
                None,
                None,
                None,
            );
        };
        let route: &Arc<CompiledRoute> = found.value;
        let route_id = Some(route.id.clone());

        // Who is calling.
        let principal = req.extensions_mut().remove::<Principal>();
        match (&route.auth, &principal) {
            (AuthPolicy::Public, _) => {}
            (_, None) => {
                return (
                    problem(&Problem::unauthorized("authentication required")),
                    route_id,
                    None,
                    None,
                );
            }
            (AuthPolicy::Authenticated, Some(_)) => {}
            (AuthPolicy::Require(permission), Some(p)) => {
                if let Err(problem_) = p.require(permission) {
                    return (problem(&problem_), route_id, None, None);
                }
            }
        }
        let client_ip = match &peer {
            Some(p) => Some(p.ip),
            None => crate::ratelimit::client_ip(req),
        };

        // How fast.
        let mut decision: Option<Decision> = None;
        if let Some((limiter, key)) = &route.rate {
            let key = extract_key(key, principal.as_ref(), req.headers(), client_ip);
            let d = match limiter.as_local() {
                Some(local) => local.check(&key),
                // Boxed: shared (Redis) limits are rare, keep their state
                // out of every request's future.
                None => match Box::pin(limiter.check(&key)).await {
                    Ok(d) => d,
                    Err(e) => {
                        return (
                            problem(&Problem::unavailable(e.to_string())),
                            route_id,
                            None,
                            None,
                        );
                    }
                },
            };
            if !d.allowed {
                route.metrics.rate_limited.increment(1);
                route.metrics.record(429, start.elapsed(), None);
                return (d.to_response::<ProxyBody>(), route_id, None, None);
            }
            decision = Some(d);
        }

        // Identity headers only the gateway may set; the same pass notes
        // hop-by-hop headers for later.
        let scanned = headers::scan(req.headers(), &shared.identity_headers);
        if scanned.identity {
            for name in &shared.identity_headers {
                req.headers_mut().remove(name);
            }
        }
        // `Forwarded` makes the same claims as `X-Forwarded-*`: from a client
        // that is not trusted to make them, it does not reach the upstream.
        if scanned.forwarded && !shared.config.trust_forwarded {
            req.headers_mut().remove(header::FORWARDED);
        }
        // Hop-by-hop headers go before the route's transforms: a header the
        // client names in `Connection` must not remove one the gateway sets
        // (an identity header, a secret the upstream checks).
        let upgrade = req.version() == Version::HTTP_11
            && scanned.upgrade
            && headers::is_upgrade(req.headers());
        if scanned.hop_by_hop {
            headers::remove_hop_by_hop_present(req.headers_mut(), upgrade);
        }

        // What changes.
        let mut new_pq: Option<PathAndQuery> = None;
        if !route.transform.is_noop() {
            let empty = http::HeaderMap::new();
            // A cheap (reference-counted) copy, not a String.
            let rid = req.headers().get(&request_id::HEADER).cloned();
            let ctx = TemplateContext {
                principal: principal.as_ref(),
                params: Some(&found.params),
                headers: &empty,
                request_id: rid.as_ref().and_then(|v| v.to_str().ok()),
                client_ip,
                route_id: &route.id,
            };
            if let Err(e) = route
                .transform
                .apply_request_headers(req.headers_mut(), &ctx)
            {
                return (problem(&e.to_problem()), route_id, None, None);
            }
            match route.transform.rewrite(path, uri.query(), &ctx) {
                Ok(pq) => new_pq = pq,
                Err(e) => return (problem(&e.to_problem()), route_id, None, None),
            }
            if route.transform.maps_request_body() && crate::transform::is_json(req.headers()) {
                let body = std::mem::replace(req.body_mut(), RequestBody::Empty);
                let max = route.transform.max_body();
                // Boxed: only body-mapping routes pay for the collect state.
                let bytes = match Box::pin(Limited::new(body, max).collect()).await {
                    Ok(c) => c.to_bytes(),
                    Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                        return (
                            problem(&crate::transform::TransformError::TooLarge(max).to_problem()),
                            route_id,
                            None,
                            None,
                        );
                    }
                    Err(_) => {
                        return (
                            problem(&crate::transform::TransformError::Body.to_problem()),
                            route_id,
                            None,
                            None,
                        );
                    }
                };
                match route.transform.map_request_json(req.headers(), bytes) {
                    Ok(mapped) => {
                        req.headers_mut()
                            .insert(header::CONTENT_LENGTH, HeaderValue::from(mapped.len()));
                        req.headers_mut().remove(header::TRANSFER_ENCODING);
                        *req.body_mut() = RequestBody::Full(Some(mapped));
                    }
                    Err(e) => return (problem(&e.to_problem()), route_id, None, None),
                }
            }
        }
        let route = Arc::clone(route);
        drop(found);
        drop(snapshot);

        let hash = route
            .hash
            .as_ref()
            .and_then(|source| hash_of(source, req.headers()));
        // A header transform may have added hop-by-hop headers since.
        let transformed = !route.transform.is_noop();
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut *req));

        // Forwarding headers.
        {
            let headers = req.headers_mut();
            if transformed {
                headers::remove_hop_by_hop(headers, upgrade);
            }
            match (&peer, shared.config.trust_forwarded) {
                (
                    Some(Peer {
                        forwarded_for: Some(v),
                        ..
                    }),
                    false,
                ) => {
                    headers.insert(headers::X_FORWARDED_FOR, v.clone());
                }
                _ => match client_ip {
                    Some(ip) => set_forwarded_for(headers, ip, shared.config.trust_forwarded),
                    // The client is unknown (an embedder calling without
                    // its address): its own claim must not pass as ours.
                    None if !shared.config.trust_forwarded => {
                        headers.remove(headers::X_FORWARDED_FOR);
                    }
                    None => {}
                },
            }
            if !shared.config.trust_forwarded || !headers.contains_key(headers::X_FORWARDED_PROTO) {
                headers.insert(headers::X_FORWARDED_PROTO, shared.forwarded_proto.clone());
            }
            if !shared.config.trust_forwarded || !headers.contains_key(headers::X_FORWARDED_HOST) {
                // HTTP/2 carries the host as the authority, not a `Host`.
                let host = host_header.or_else(|| {
                    uri.authority()
                        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
                });
                match host {
                    Some(h) => {
                        headers.insert(headers::X_FORWARDED_HOST, h);
                    }
                    None => {
                        headers.remove(headers::X_FORWARDED_HOST);
                    }
                }
            }
        }
        let pq = new_pq
            .or_else(|| uri.path_and_query().cloned())
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let (response, instance, latency, done) =
            send(shared, &route, req, pq, hash, upgrade, start).await;
        let response = match response {
            Ok(res) => {
                match finish_response(&route, res, client_upgrade, decision, principal.as_ref()) {
                    Ok(res)
                        if route.transform.maps_response_body()
                            && crate::transform::is_json(res.headers()) =>
                    {
                        // Boxed: only body-mapping routes pay for the collect state.
                        Box::pin(map_response_body(&route, res)).await
                    }
                    Ok(res) | Err(res) => res,
                }
            }
            Err(failure) => {
                if !matches!(failure, Failure::ClientBody) {
                    route.metrics.upstream_errors.increment(1);
                }
                let name = route.pool.name();
                let p = match failure {
                    Failure::NoInstance => {
                        Problem::unavailable(format!("upstream {name} has no available instance"))
                    }
                    Failure::Shed => {
                        Problem::unavailable(format!("upstream {name} is at its concurrency limit"))
                            .with_retry_after(1)
                    }
                    Failure::Connect => bad_gateway(name, "connection failed"),
                    Failure::Timeout => gateway_timeout(name),
                    Failure::Upstream => bad_gateway(name, "the request failed"),
                    Failure::ClientBody => {
                        Problem::bad_request("the request body could not be read to its end")
                    }
                };
                problem(&p)
            }
        };
        route.metrics.record(
            response.status().as_u16(),
            done.saturating_duration_since(start),
            latency,
        );
        (response, route_id, instance, latency)
    }
}

fn set_forwarded_for(headers: &mut http::HeaderMap, ip: IpAddr, trust: bool) {
    // Without trust the client's value is replaced: no lookup needed.
    let prior = if trust {
        headers
            .get(headers::X_FORWARDED_FOR)
            .and_then(|v| v.to_str().ok())
    } else {
        None
    };
    let value = match prior {
        Some(prior) => HeaderValue::from_str(&format!("{prior}, {ip}")),
        None => last_ip_header_value(ip),
    };
    if let Ok(v) = value {
        headers.insert(headers::X_FORWARDED_FOR, v);
    }
}

/// [`ip_header_value`], remembering the last address formatted on this
/// thread: requests served through `serve_service` carry only the client's
/// address, and consecutive requests mostly come from the same few clients
/// (a connection's keep-alive requests, a load balancer in front), so a
/// repeat costs a comparison and a reference count instead of formatting and
/// an allocation.
fn last_ip_header_value(ip: IpAddr) -> Result<HeaderValue, http::header::InvalidHeaderValue> {
    thread_local! {
        static LAST: std::cell::RefCell<Option<(IpAddr, HeaderValue)>> =
            const { std::cell::RefCell::new(None) };
    }
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if let Some((cached, value)) = &*last
            && *cached == ip
        {
            return Ok(value.clone());
        }
        let value = ip_header_value(ip)?;
        *last = Some((ip, value.clone()));
        Ok(value)
    })
}

/// `ip` as a header value, formatted on the stack (no `String`).
pub(crate) fn ip_header_value(ip: IpAddr) -> Result<HeaderValue, http::header::InvalidHeaderValue> {
    use std::fmt::Write as _;
    if let IpAddr::V4(v4) = ip {
        // Dotted decimal by hand: `fmt` costs more than the rest of the
        // header handling.
        let mut out = [0u8; 15];
        let mut len = 0;
        for (i, octet) in v4.octets().into_iter().enumerate() {
            if i > 0 {
                out[len] = b'.';
                len += 1;
            }
            if octet >= 100 {
                out[len] = b'0' + octet / 100;
                len += 1;
            }
            if octet >= 10 {
                out[len] = b'0' + octet / 10 % 10;
                len += 1;
            }
            out[len] = b'0' + octet % 10;
            len += 1;
        }
        return HeaderValue::from_bytes(&out[..len]);
    }
    let mut buf = IpBuf {
        bytes: [0; IpBuf::CAPACITY],
        len: 0,
    };
    if write!(buf, "{ip}").is_err() {
        return HeaderValue::from_str(&ip.to_string());
    }
    HeaderValue::from_bytes(&buf.bytes[..buf.len])
}

/// A fixed buffer long enough for any formatted IP address (an IPv6
/// address with an embedded IPv4 takes at most 45 bytes).
struct IpBuf {
    bytes: [u8; IpBuf::CAPACITY],
    len: usize,
}

impl IpBuf {
    const CAPACITY: usize = 64;
}

impl std::fmt::Write for IpBuf {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        let dst = self.bytes.get_mut(self.len..end).ok_or(std::fmt::Error)?;
        dst.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

fn hash_of(source: &HashSource, headers: &http::HeaderMap) -> Option<u64> {
    match source {
        HashSource::Header(name) => headers.get(name).map(|v| hash_key(v.as_bytes())),
        HashSource::Cookie(name) => headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| hash_key(v.as_bytes())),
    }
}

type Upstream = Response<ProxyBody>;
/// The outcome, the instance, the upstream latency, and when it ended.
type Sent = (
    Result<Upstream, Failure>,
    Option<Arc<str>>,
    Option<Duration>,
    Instant,
);

#[allow(
    clippy::manual_async_fn,
    reason = "an async fn would keep its arguments twice (see `handle`)"
)]
fn send<'a>(
    shared: &'a Shared,
    route: &'a CompiledRoute,
    req: &'a mut Request<RequestBody>,
    pq: PathAndQuery,
    hash: Option<u64>,
    upgrade: bool,
    start: Instant,
) -> impl Future<Output = Sent> + Send + 'a {
    // The request is borrowed, not moved in: the future stays small and
    // the head is not copied again. Its body is taken for the first attempt.
    async move {
        let retryable = route.retries > 0
            && !upgrade
            && is_idempotent(req.method(), req.headers())
            && req.body().is_end_stream();
        if let Some(budget) = &route.budget {
            budget.deposit();
        }
        let saved = retryable.then(|| (req.method().clone(), req.headers().clone()));
        let mut body = Some(std::mem::replace(req.body_mut(), RequestBody::Empty));
        let mut attempt = 0;
        let policy = shared.clients.policy();
        loop {
            // A retry (only ever of a request without a body) starts again
            // from the head as it came in.
            let body = match body.take() {
                Some(b) => b,
                None => match &saved {
                    Some((method, headers)) => {
                        method.clone_into(req.method_mut());
                        headers.clone_into(req.headers_mut());
                        RequestBody::Empty
                    }
                    None => return (Err(Failure::Upstream), None, None, Instant::now()),
                },
            };
            // The request's first clock reading serves its first attempt:
            // a clock read costs about as much as a header lookup.
            let now = if attempt == 0 { start } else { Instant::now() };
            let Some(backend) = route.pool.pick_at(hash, ms_at(now)) else {
                return (Err(Failure::NoInstance), None, None, now);
            };
            // One attempt, awaited here rather than in a nested async fn so
            // that its state is not one more layer every request's future
            // carries and moves.
            // Boxed: concurrency limits are rare, keep their wait out of the
            // common future.
            let permit = match &route.pool.limits {
                Some(limits) => match Box::pin(limits.acquire(route.request_timeout)).await {
                    Ok(p) => Some(p),
                    Err(_) => {
                        let label = Some(backend.label.clone());
                        return (Err(Failure::Shed), label, None, Instant::now());
                    }
                },
                None => None,
            };
            let h2 = route.http2 && !upgrade;
            let pooled = !h2 && !upgrade;
            let in_flight = backend.start();
            route.metrics.in_flight.increment(1.0);
            // After a wait for a concurrency permit, the clock is read again.
            let sent_at = if permit.is_some() {
                Instant::now()
            } else {
                now
            };
            let result: Result<Upstream, Failure> = if pooled {
                // The own connection takes the origin-form target as it is.
                // Replaced in place: `insert` reserves room for a new field
                // first, which can grow a full map for nothing.
                match req.headers_mut().get_mut(header::HOST) {
                    Some(host) if !route.preserve_host => host.clone_from(&backend.host_header),
                    Some(_) => {}
                    None => {
                        req.headers_mut()
                            .insert(header::HOST, backend.host_header.clone());
                    }
                }
                let head = h1::Head {
                    method: req.method(),
                    path_and_query: pq.as_str(),
                    headers: req.headers(),
                    response_room: route.response_room,
                };
                let sent = pool::send(
                    &backend,
                    policy,
                    route.connect_timeout,
                    &head,
                    body,
                    sent_at,
                );
                // The timeout is at most an hour (validated): no overflow; were
                // there one, the request would time out, not panic.
                let deadline = tokio::time::Instant::from_std(sent_at)
                    .checked_add(route.request_timeout)
                    .unwrap_or_else(tokio::time::Instant::now);
                match tokio::time::timeout_at(deadline, sent).await {
                    Ok(Ok((head, body))) => Ok(head.into_response(ProxyBody::Pooled(body))),
                    Ok(Err(pool::PoolError::Connect(e))) => {
                        tracing::debug!(route = %route.id, instance = %backend.label, error = %e, "upstream connect failed");
                        Err(Failure::Connect)
                    }
                    Ok(Err(pool::PoolError::Request(h1::ExchangeError::Body(e)))) => {
                        tracing::debug!(route = %route.id, instance = %backend.label, error = %e, "the client's request body failed");
                        Err(Failure::ClientBody)
                    }
                    Ok(Err(pool::PoolError::Request(e))) => {
                        tracing::debug!(route = %route.id, instance = %backend.label, error = %e, "upstream request failed");
                        Err(Failure::Upstream)
                    }
                    Err(_) => Err(Failure::Timeout),
                }
            } else {
                // Boxed: HTTP/2 and upgrades keep their (hyper-util) state out
                // of every HTTP/1.1 request's future.
                Box::pin(via_client(route, &backend, req, body, &pq, h2, upgrade)).await
            };
            route.metrics.in_flight.decrement(1.0);
            drop(in_flight);
            drop(permit);
            let done = Instant::now();
            let elapsed = done.saturating_duration_since(sent_at);
            observe(route, &backend, &result, elapsed, ms_at(done));
            let latency = Some(elapsed);
            let retry_worthy = match &result {
                Err(Failure::Connect | Failure::Timeout) => true,
                Ok(res) => matches!(res.status().as_u16(), 502..=504),
                Err(_) => false,
            };
            attempt += 1;
            if retry_worthy
                && saved.is_some()
                && attempt <= route.retries
                && route.budget.as_ref().is_some_and(|b| b.withdraw())
            {
                tracing::debug!(route = %route.id, instance = %backend.label, attempt, "retrying");
                continue;
            }
            return (result, Some(backend.label.clone()), latency, done);
        }
    }
}

/// One attempt through hyper-util's client (HTTP/2, upgrades).
async fn via_client(
    route: &CompiledRoute,
    backend: &Backend,
    req: &mut Request<RequestBody>,
    body: RequestBody,
    pq: &PathAndQuery,
    h2: bool,
    upgrade: bool,
) -> Result<Upstream, Failure> {
    let out = outbound(route.preserve_host, backend, req, body, pq, h2)?;
    let client = if upgrade {
        &route.upgrade_client
    } else {
        &route.client
    };
    match tokio::time::timeout(route.request_timeout, client.request(out)).await {
        // The upgrade handle stays in the extensions.
        Ok(Ok(res)) => Ok(res.map(ProxyBody::Upstream)),
        Ok(Err(e)) if e.is_connect() => Err(Failure::Connect),
        Ok(Err(e)) if is_client_body_error(&e) => {
            tracing::debug!(route = %route.id, instance = %backend.label, error = %e, "the client's request body failed");
            Err(Failure::ClientBody)
        }
        Ok(Err(e)) => {
            tracing::debug!(route = %route.id, instance = %backend.label, error = %e, "upstream request failed");
            Err(Failure::Upstream)
        }
        Err(_) => Err(Failure::Timeout),
    }
}

/// Whether hyper-util's client failed on the request body it was given
/// (hyper calls such errors the user's), not on the upstream.
fn is_client_body_error(error: &hyper_util::client::legacy::Error) -> bool {
    std::error::Error::source(error)
        .and_then(|source| source.downcast_ref::<hyper::Error>())
        .is_some_and(|error| error.is_user() || error.is_body_write_aborted())
}

/// The request for one attempt on `backend` through hyper-util's client
/// (HTTP/2, upgrades): an absolute URI, the headers taken from `req`.
fn outbound(
    preserve_host: bool,
    backend: &Backend,
    req: &mut Request<RequestBody>,
    body: RequestBody,
    pq: &PathAndQuery,
    h2: bool,
) -> Result<Request<RequestBody>, Failure> {
    let mut uri_parts = http::uri::Parts::default();
    uri_parts.scheme = Some(backend.scheme.clone());
    uri_parts.authority = Some(backend.authority.clone());
    uri_parts.path_and_query = Some(pq.clone());
    let Ok(uri) = Uri::from_parts(uri_parts) else {
        return Err(Failure::Upstream);
    };
    let mut out = Request::new(body);
    *out.method_mut() = req.method().clone();
    *out.uri_mut() = uri;
    *out.headers_mut() = std::mem::take(req.headers_mut());
    *out.extensions_mut() = std::mem::take(req.extensions_mut());
    *out.version_mut() = if h2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    if h2 {
        out.headers_mut().remove(header::HOST);
    } else if !preserve_host || !out.headers().contains_key(header::HOST) {
        out.headers_mut()
            .insert(header::HOST, backend.host_header.clone());
    }
    Ok(out)
}

/// Feeds one attempt's outcome to outlier detection and the latency
/// estimate.
fn observe(
    route: &CompiledRoute,
    backend: &Arc<Backend>,
    result: &Result<Upstream, Failure>,
    latency: Duration,
    now_ms: u64,
) {
    let spec = &route.pool.spec().outlier;
    let failed = |backend: &Arc<Backend>| {
        if backend.outlier.on_failure(spec, now_ms) {
            route.pool.ejected(backend);
        }
    };
    match result {
        Ok(res) if matches!(res.status().as_u16(), 502..=504) => failed(backend),
        Ok(_) => {
            backend.outlier.on_success();
            backend.observe_at(latency, now_ms);
        }
        Err(Failure::ClientBody) => {}
        Err(_) => failed(backend),
    }
}

/// The upstream's response as the client gets it: hop-by-hop headers
/// removed, the route's response headers and the rate-limit headers set.
/// Synchronous: the one part that waits, mapping a JSON body, is
/// [`map_response_body`]. `Err` is the problem answered instead.
fn finish_response(
    route: &CompiledRoute,
    mut res: Response<ProxyBody>,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    decision: Option<Decision>,
    principal: Option<&Principal>,
) -> Result<Response<ProxyBody>, Response<ProxyBody>> {
    if res.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_side) = client_upgrade
    {
        let upstream_side = hyper::upgrade::on(&mut res);
        splice(client_side, upstream_side);
    }
    let status = res.status();
    let headers = res.headers_mut();
    headers::remove_hop_by_hop(headers, status == StatusCode::SWITCHING_PROTOCOLS);
    if route.transform.changes_response_headers() {
        let empty = http::HeaderMap::new();
        let ctx = TemplateContext {
            principal,
            ..TemplateContext::new(&empty, &route.id)
        };
        if route
            .transform
            .apply_response_headers(headers, &ctx)
            .is_err()
        {
            return Err(problem(&bad_gateway(
                route.pool.name(),
                "a response header could not be set",
            )));
        }
    }
    if let Some(d) = decision {
        d.apply_headers(headers);
    }
    Ok(res)
}

/// Applies the route's JSON body mapping to a finished response.
async fn map_response_body(route: &CompiledRoute, res: Response<ProxyBody>) -> Response<ProxyBody> {
    let (mut parts, body) = res.into_parts();
    let max = route.transform.max_body();
    let bytes: Bytes = match Limited::new(body, max).collect().await {
        Ok(c) => c.to_bytes(),
        Err(_) => {
            return problem(&bad_gateway(
                route.pool.name(),
                "the response is too large to transform",
            ));
        }
    };
    match route.transform.map_response_json(&parts.headers, bytes) {
        Ok(mapped) => {
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(mapped.len()));
            Response::from_parts(parts, ProxyBody::full(mapped))
        }
        Err(_) => problem(&bad_gateway(
            route.pool.name(),
            "the response is not valid JSON",
        )),
    }
}

/// Splices two upgraded connections until either side closes.
pub(crate) fn splice(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    tokio::spawn(async move {
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut upstream = TokioIo::new(upstream);
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_header_values() {
        for ip in [
            "127.0.0.1",
            "255.255.255.255",
            "0.0.0.0",
            "10.9.100.199",
            "1.20.109.250",
            "::1",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "::ffff:255.255.255.255",
            "1111:2222:3333:4444:5555:6666:255.255.255.255",
        ] {
            let parsed: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_header_value(parsed).unwrap(), parsed.to_string());
        }
        let mut h = http::HeaderMap::new();
        h.insert(headers::X_FORWARDED_FOR, "10.0.0.1".parse().unwrap());
        set_forwarded_for(&mut h, "10.0.0.2".parse().unwrap(), true);
        assert_eq!(h[headers::X_FORWARDED_FOR], "10.0.0.1, 10.0.0.2");
        set_forwarded_for(&mut h, "10.0.0.3".parse().unwrap(), false);
        assert_eq!(h[headers::X_FORWARDED_FOR], "10.0.0.3");
        // The remembered address is replaced, never served for another.
        for ip in ["10.0.0.3", "10.0.0.4", "10.0.0.3", "::1", "::1", "10.0.0.4"] {
            set_forwarded_for(&mut h, ip.parse().unwrap(), false);
            assert_eq!(h[headers::X_FORWARDED_FOR], ip);
        }
    }
}
