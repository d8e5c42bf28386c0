//! The body types the proxy moves, without boxing the common cases.

use std::any::Any;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;

pub use super::h1::PooledBody;

/// A boxed error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body on its way upstream: hyper's and axum's bodies move
/// through unboxed; any other body type is boxed once.
#[derive(Debug)]
pub enum RequestBody {
    /// A hyper server body.
    Incoming(Incoming),
    /// An axum body.
    Axum(axum::body::Body),
    /// A rewritten body.
    Full(Option<Bytes>),
    /// Any other body.
    Boxed(UnsyncBoxBody<Bytes, BoxError>),
    /// No body.
    Empty,
}

impl RequestBody {
    /// Wraps any body, boxing only unknown types.
    pub fn from_body<B>(body: B) -> Self
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let mut slot = Some(body);
        if let Some(s) = (&mut slot as &mut dyn Any).downcast_mut::<Option<Incoming>>()
            && let Some(b) = s.take()
        {
            return Self::Incoming(b);
        }
        if let Some(s) = (&mut slot as &mut dyn Any).downcast_mut::<Option<axum::body::Body>>()
            && let Some(b) = s.take()
        {
            return Self::Axum(b);
        }
        if let Some(s) = (&mut slot as &mut dyn Any).downcast_mut::<Option<RequestBody>>()
            && let Some(b) = s.take()
        {
            return b;
        }
        match slot {
            Some(b) => Self::Boxed(b.map_err(Into::into).boxed_unsync()),
            None => Self::Empty,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Self::Incoming(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Self::Axum(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Self::Full(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
            Self::Boxed(b) => Pin::new(b).poll_frame(cx),
            Self::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Incoming(b) => b.is_end_stream(),
            Self::Axum(b) => b.is_end_stream(),
            Self::Full(b) => b.is_none(),
            Self::Boxed(b) => b.is_end_stream(),
            Self::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Incoming(b) => b.size_hint(),
            Self::Axum(b) => b.size_hint(),
            Self::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Self::Boxed(b) => b.size_hint(),
            Self::Empty => SizeHint::with_exact(0),
        }
    }
}

/// A response body: the upstream's, streamed, or one the gateway made.
#[derive(Debug)]
pub enum ProxyBody {
    /// Streamed from the upstream.
    Upstream(Incoming),
    /// Streamed from a pooled upstream connection, which goes back to its
    /// pool when the body ends.
    Pooled(PooledBody),
    /// Made by the gateway (problems, rewritten JSON).
    Full(Option<Bytes>),
}

impl ProxyBody {
    /// A body of `bytes`.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        Self::Full(Some(bytes.into()))
    }

    /// No body.
    pub fn empty() -> Self {
        Self::Full(None)
    }
}

impl From<Bytes> for ProxyBody {
    fn from(b: Bytes) -> Self {
        Self::full(b)
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Self::Upstream(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Self::Pooled(b) => Pin::new(b).poll_frame(cx),
            Self::Full(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Upstream(b) => b.is_end_stream(),
            Self::Pooled(b) => b.is_end_stream(),
            Self::Full(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Upstream(b) => b.size_hint(),
            Self::Pooled(b) => b.size_hint(),
            Self::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}
