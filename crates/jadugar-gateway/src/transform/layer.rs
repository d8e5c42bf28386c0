use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, header};
use http_body::Body;
use http_body_util::{BodyExt, Either, Full, Limited};
use jadugar_core::request_id::RequestId;
use jadugar_core::{FieldError, Principal, Problem};
use tower::{Layer, Service};

use super::template::TemplateContext;
use super::{Transform, TransformError};
use crate::model::TransformSpec;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Applies a [`Transform`] in any tower stack; see the [module docs](super).
///
/// The inner service receives `Either<B, Full<Bytes>>` bodies (rewritten
/// JSON bodies are `Right`) and the response body is wrapped the same way.
#[derive(Debug, Clone)]
pub struct TransformLayer {
    transform: Arc<Transform>,
}

impl TransformLayer {
    /// Compiles `spec` (templates may not use `{param.*}` here).
    pub fn new(spec: &TransformSpec) -> Result<Self, Vec<FieldError>> {
        Ok(Self::from_transform(Transform::compile(spec, "/")?))
    }

    /// Wraps an already compiled transform.
    pub fn from_transform(transform: Transform) -> Self {
        Self {
            transform: Arc::new(transform),
        }
    }
}

impl<S> Layer<S> for TransformLayer {
    type Service = TransformService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TransformService {
            inner,
            transform: self.transform.clone(),
        }
    }
}

/// The service of [`TransformLayer`].
#[derive(Debug, Clone)]
pub struct TransformService<S> {
    inner: S,
    transform: Arc<Transform>,
}

impl<S> TransformService<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

fn problem<RB>(p: &Problem) -> Response<Either<RB, Full<Bytes>>> {
    p.to_response::<Full<Bytes>>().map(Either::Right)
}

impl<S, B, RB> Service<Request<B>> for TransformService<S>
where
    S: Service<Request<Either<B, Full<Bytes>>>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    RB: Body<Data = Bytes> + Send + 'static,
    RB::Error: Into<BoxError>,
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
        let transform = self.transform.clone();
        let (mut parts, body) = req.into_parts();
        let principal = parts.extensions.get::<Principal>().cloned();
        let request_id = parts.extensions.get::<RequestId>().cloned();
        let prepared: Result<(), TransformError> = (|| {
            let headers = parts.headers.clone();
            let ctx = TemplateContext {
                principal: principal.as_ref(),
                request_id: request_id.as_ref().map(RequestId::as_str),
                ..TemplateContext::new(&headers, "")
            };
            transform.apply_request_headers(&mut parts.headers, &ctx)?;
            if let Some(pq) = transform.rewrite(parts.uri.path(), parts.uri.query(), &ctx)? {
                let mut uri = parts.uri.clone().into_parts();
                uri.path_and_query = Some(pq);
                parts.uri = http::Uri::from_parts(uri).map_err(|_| TransformError::InvalidUri)?;
            }
            Ok(())
        })();
        Box::pin(async move {
            if let Err(e) = prepared {
                return Ok(problem(&e.to_problem()));
            }
            let body = if transform.maps_request_body() && super::is_json(&parts.headers) {
                let bytes = match Limited::new(body, transform.max_body()).collect().await {
                    Ok(c) => c.to_bytes(),
                    Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                        return Ok(problem(
                            &TransformError::TooLarge(transform.max_body()).to_problem(),
                        ));
                    }
                    Err(_) => return Ok(problem(&TransformError::Body.to_problem())),
                };
                let mapped = match transform.map_request_json(&parts.headers, bytes) {
                    Ok(b) => b,
                    Err(e) => return Ok(problem(&e.to_problem())),
                };
                parts
                    .headers
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(mapped.len()));
                parts.headers.remove(header::TRANSFER_ENCODING);
                Either::Right(Full::new(mapped))
            } else {
                Either::Left(body)
            };
            let headers = parts.headers.clone();
            let res = inner.call(Request::from_parts(parts, body)).await?;
            let (mut rparts, rbody) = res.into_parts();
            let ctx = TemplateContext {
                principal: principal.as_ref(),
                request_id: request_id.as_ref().map(RequestId::as_str),
                ..TemplateContext::new(&headers, "")
            };
            if let Err(e) = transform.apply_response_headers(&mut rparts.headers, &ctx) {
                tracing::warn!(error = %e, "response header transform failed");
                return Ok(problem(&Problem::new(
                    http::StatusCode::BAD_GATEWAY,
                    "bad-gateway",
                    "Bad gateway",
                )));
            }
            if transform.maps_response_body() && super::is_json(&rparts.headers) {
                let bytes = match Limited::new(rbody, transform.max_body()).collect().await {
                    Ok(c) => c.to_bytes(),
                    Err(_) => {
                        return Ok(problem(
                            &Problem::new(
                                http::StatusCode::BAD_GATEWAY,
                                "bad-gateway",
                                "Bad gateway",
                            )
                            .with_detail("the upstream response could not be transformed"),
                        ));
                    }
                };
                let mapped = match transform.map_response_json(&rparts.headers, bytes) {
                    Ok(b) => b,
                    Err(_) => {
                        return Ok(problem(
                            &Problem::new(
                                http::StatusCode::BAD_GATEWAY,
                                "bad-gateway",
                                "Bad gateway",
                            )
                            .with_detail("the upstream response is not valid JSON"),
                        ));
                    }
                };
                rparts
                    .headers
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(mapped.len()));
                rparts.headers.remove(header::TRANSFER_ENCODING);
                return Ok(Response::from_parts(
                    rparts,
                    Either::Right(Full::new(mapped)),
                ));
            }
            Ok(Response::from_parts(rparts, Either::Left(rbody)))
        })
    }
}
