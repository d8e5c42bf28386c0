//! The `x-request-id` of each request.
//!
//! [`RequestIdLayer`] keeps a caller's valid `x-request-id` (printable ASCII,
//! at most 128 bytes) or generates a UUIDv7, stores it in the request
//! extensions as [`RequestId`], echoes it on the response, and makes it
//! available to [`current`] for the duration of the request, which is how
//! every [`Problem`](crate::Problem) learns it without being told.
//!
//! ```
//! use jadugar_core::request_id::{RequestId, RequestIdLayer};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # tokio_test();
//! # fn tokio_test() { tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let svc = ServiceBuilder::new()
//!     .layer(RequestIdLayer::new())
//!     .service(service_fn(|req: http::Request<()>| async move {
//!         let id = req.extensions().get::<RequestId>().unwrap().clone();
//!         assert_eq!(jadugar_core::request_id::current().as_deref(), Some(id.as_str()));
//!         Ok::<_, std::convert::Infallible>(http::Response::new(()))
//!     }));
//! let req = http::Request::builder().header("x-request-id", "abc-123").body(()).unwrap();
//! let res = svc.oneshot(req).await.unwrap();
//! assert_eq!(res.headers()["x-request-id"], "abc-123");
//! # }) }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{HeaderName, HeaderValue, Request, Response};
use tower_layer::Layer;
use tower_service::Service;

/// The request id header.
pub const HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// The longest request id kept from a caller.
pub const MAX_LEN: usize = 128;

tokio::task_local! {
    static CURRENT: RequestId;
}

/// The id of one request.
///
/// Held as its header value (validated visible ASCII), so that the request
/// header, the extension and the response header share one buffer: cloning
/// an id copies nothing.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestId(HeaderValue);

impl RequestId {
    /// A fresh UUIDv7 id.
    ///
    /// The random part comes from the thread-local CSPRNG rather than
    /// `Uuid::now_v7`'s per-call `getrandom` system call: this runs on every
    /// proxied request.
    pub fn generate() -> Self {
        use rand::RngCore;
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let mut random = [0u8; 10];
        rand::thread_rng().fill_bytes(&mut random);
        let id = uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid();
        let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
        id.hyphenated().encode_lower(&mut text);
        // The buffer becomes the shared one without another copy.
        match HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(text)) {
            Ok(value) => Self(value),
            // Unreachable (a UUID's text is hex and hyphens); never panic.
            Err(_) => Self(HeaderValue::from_static("invalid-uuid")),
        }
    }

    /// Keeps `value` if it is a valid id: 1 to [`MAX_LEN`] bytes of visible
    /// ASCII.
    pub fn parse(value: &str) -> Option<Self> {
        if !valid(value.as_bytes()) {
            return None;
        }
        HeaderValue::from_str(value).ok().map(Self)
    }

    /// Keeps a caller's `x-request-id` header if it is a valid id, sharing
    /// its buffer.
    pub fn from_header(value: &HeaderValue) -> Option<Self> {
        valid(value.as_bytes()).then(|| Self(value.clone()))
    }

    /// The id as a header value, reusing its text (no copy).
    ///
    /// ```
    /// let id = jadugar_core::request_id::RequestId::generate();
    /// let text = id.as_str().to_owned();
    /// assert_eq!(id.into_header_value().unwrap(), text.as_str());
    /// ```
    pub fn into_header_value(self) -> Option<http::HeaderValue> {
        Some(self.0)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        // Always text: only visible ASCII is ever kept.
        self.0.to_str().unwrap_or_default()
    }

    /// Runs `fut` with this id as [`current`].
    pub fn scope<F: Future>(self, fut: F) -> tokio::task::futures::TaskLocalFuture<Self, F> {
        CURRENT.scope(self, fut)
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// 1 to [`MAX_LEN`] bytes of visible ASCII.
fn valid(value: &[u8]) -> bool {
    !value.is_empty() && value.len() <= MAX_LEN && value.iter().all(u8::is_ascii_graphic)
}

/// The id of the request being served by this task, if any.
pub fn current() -> Option<String> {
    CURRENT.try_with(|id| id.as_str().to_owned()).ok()
}

/// Keeps or generates `x-request-id`; see the [module docs](self).
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestIdLayer;

impl RequestIdLayer {
    /// The layer.
    pub fn new() -> Self {
        Self
    }
}

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestIdService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestIdService { inner }
    }
}

/// The service of [`RequestIdLayer`].
#[derive(Debug, Clone)]
pub struct RequestIdService<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RequestIdService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = RequestIdFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let id = req
            .headers()
            .get(&HEADER)
            .and_then(RequestId::from_header)
            .unwrap_or_else(RequestId::generate);
        req.headers_mut().insert(HEADER, id.0.clone());
        req.extensions_mut().insert(id.clone());
        let header = Some(id.0.clone());
        // Called inside the scope too: an inner service that answers at
        // once (a refusal, say) already sees the id in `current`.
        let inner = CURRENT.sync_scope(id.clone(), || self.inner.call(req));
        RequestIdFuture {
            inner: id.scope(inner),
            header,
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`RequestIdService`]: the inner future in the
    /// id's scope, echoing the id on the response. A named type rather than
    /// a boxed one: this runs on every request.
    pub struct RequestIdFuture<F> {
        #[pin]
        inner: tokio::task::futures::TaskLocalFuture<RequestId, F>,
        header: Option<HeaderValue>,
    }
}

impl<F, ResBody, E> Future for RequestIdFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<ResBody>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut res = std::task::ready!(this.inner.poll(cx))?;
        if let Some(header) = this.header.take() {
            res.headers_mut().insert(HEADER, header);
        }
        Poll::Ready(Ok(res))
    }
}

impl<F> std::fmt::Debug for RequestIdFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestIdFuture").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_v7_and_ordered() {
        let a = RequestId::generate();
        let b = RequestId::generate();
        let parsed = uuid::Uuid::parse_str(a.as_str()).unwrap();
        assert_eq!(parsed.get_version_num(), 7);
        assert_ne!(a, b);
        assert!(RequestId::parse(a.as_str()).is_some());
    }

    #[test]
    fn header_ids_are_kept_only_when_valid() {
        let kept = RequestId::from_header(&HeaderValue::from_static("abc-123")).unwrap();
        assert_eq!(kept.as_str(), "abc-123");
        let opaque = HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap();
        assert!(RequestId::from_header(&opaque).is_none());
        assert!(RequestId::from_header(&HeaderValue::from_static("has space")).is_none());
        let long = HeaderValue::from_str(&"x".repeat(MAX_LEN + 1)).unwrap();
        assert!(RequestId::from_header(&long).is_none());
        let generated = RequestId::generate();
        assert_eq!(generated.to_string().len(), 36);
        assert_eq!(
            generated.clone().into_header_value().unwrap(),
            generated.as_str()
        );
    }

    #[test]
    fn the_id_is_current_while_the_inner_service_is_called_and_polled() {
        use tower::ServiceExt as _;
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        let svc = RequestIdLayer::new().layer(tower::service_fn(move |_req: Request<()>| {
            // `call` of a service_fn runs the closure: a synchronous answer
            // (a refusal problem, say) sees the id here.
            log.lock().unwrap().push(current());
            let log = log.clone();
            async move {
                tokio::task::yield_now().await;
                log.lock().unwrap().push(current());
                Ok::<_, std::convert::Infallible>(Response::new(()))
            }
        }));
        let req = Request::builder()
            .header(HEADER, "abc-123")
            .body(())
            .unwrap();
        let res = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(svc.oneshot(req))
            .unwrap();
        assert_eq!(res.headers()[HEADER], "abc-123");
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2);
        assert!(
            seen.iter().all(|id| id.as_deref() == Some("abc-123")),
            "{seen:?}"
        );
        assert_eq!(current(), None);
    }

    #[test]
    fn parse_refuses_bad_ids() {
        assert!(RequestId::parse("").is_none());
        assert!(RequestId::parse("has space").is_none());
        assert!(RequestId::parse(&"x".repeat(MAX_LEN + 1)).is_none());
        assert!(RequestId::parse("ok-123").is_some());
    }
}
