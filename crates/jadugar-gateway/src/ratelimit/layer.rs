use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{Either, Full};
use jadugar_core::{Principal, Problem};
use tower::{Layer, Service};

use super::{DEFAULT_MAX_KEYS, LocalLimiter, RateLimiter, extract_key};
use crate::ClientAddr;
use crate::model::{RateKey, RateLimitSpec};

/// Applies one [`RateLimiter`] in any tower stack; see the
/// [module docs](super). Refused requests get a 429 problem (`Right`).
#[derive(Debug, Clone)]
pub struct RateLimitLayer {
    limiter: RateLimiter,
    key: Arc<RateKey>,
}

impl RateLimitLayer {
    /// An in-process limit.
    pub fn local(spec: &RateLimitSpec) -> Self {
        Self::new(
            RateLimiter::Local(LocalLimiter::new(spec, DEFAULT_MAX_KEYS)),
            spec.key.clone(),
        )
    }

    /// A limit shared through Redis (`scope` names it in Redis keys).
    #[cfg(feature = "redis")]
    pub fn shared(
        redis: jadugar_core::storage::Redis,
        scope: &str,
        spec: &RateLimitSpec,
        timeout: std::time::Duration,
    ) -> Self {
        Self::new(
            RateLimiter::Shared(Arc::new(super::SharedLimiter::new(
                redis, scope, spec, timeout,
            ))),
            spec.key.clone(),
        )
    }

    /// A layer over any limiter, keyed by `key`.
    pub fn new(limiter: RateLimiter, key: RateKey) -> Self {
        Self {
            limiter,
            key: Arc::new(key),
        }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimitService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimitService {
            inner,
            limiter: self.limiter.clone(),
            key: self.key.clone(),
        }
    }
}

/// The service of [`RateLimitLayer`].
#[derive(Debug, Clone)]
pub struct RateLimitService<S> {
    inner: S,
    limiter: RateLimiter,
    key: Arc<RateKey>,
}

impl<S> RateLimitService<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

/// The client address of a request: [`ClientAddr`] or axum's `ConnectInfo`.
pub fn client_ip<B>(req: &Request<B>) -> Option<std::net::IpAddr> {
    if let Some(ClientAddr(addr)) = req.extensions().get::<ClientAddr>() {
        return Some(addr.ip());
    }
    req.extensions()
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
}

impl<S, B, RB> Service<Request<B>> for RateLimitService<S>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<Either<RB, Full<Bytes>>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let ip = client_ip(&req);
        if let Some(local) = self.limiter.as_local() {
            let key = extract_key(
                &self.key,
                req.extensions().get::<Principal>(),
                req.headers(),
                ip,
            );
            let decision = local.check(&key);
            if !decision.allowed {
                return Box::pin(async move {
                    Ok(decision.to_response::<Full<Bytes>>().map(Either::Right))
                });
            }
            let fut = inner.call(req);
            return Box::pin(async move {
                let mut res = fut.await?;
                decision.apply_headers(res.headers_mut());
                Ok(res.map(Either::Left))
            });
        }
        let limiter = self.limiter.clone();
        let key_spec = self.key.clone();
        Box::pin(async move {
            let key = extract_key(
                &key_spec,
                req.extensions().get::<Principal>(),
                req.headers(),
                ip,
            );
            let decision = match limiter.check(&key).await {
                Ok(d) => d,
                Err(e) => {
                    return Ok(Problem::unavailable(e.to_string())
                        .to_response::<Full<Bytes>>()
                        .map(Either::Right));
                }
            };
            if !decision.allowed {
                return Ok(decision.to_response::<Full<Bytes>>().map(Either::Right));
            }
            let mut res = inner.call(req).await?;
            decision.apply_headers(res.headers_mut());
            Ok(res.map(Either::Left))
        })
    }
}
