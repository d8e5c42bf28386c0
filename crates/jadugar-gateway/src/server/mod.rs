//! Running the gateway on its own listener.
//!
//! HTTP/1.1 requests of the common shape are read and answered by the
//! gateway's own connection loop ([`h1`]); a connection carrying anything
//! else (HTTP/2 with prior knowledge, upgrades, chunked or large uploads,
//! `Expect`, malformed input) is handed to hyper's server, bytes already
//! read included, for the rest of its life.

mod h1;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;

use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use futures_util::FutureExt as _;
use futures_util::future::Either;
use http::{Request, Response};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

use crate::proxy::body::RequestBody;
use crate::{ClientAddr, Gateway};

/// Serves `gateway` on `listener` (HTTP/1.1 with upgrades, and HTTP/2 with
/// prior knowledge) until `shutdown` completes, then waits for open
/// connections to finish their requests.
///
/// ```no_run
/// # async fn demo(gateway: jadugar_gateway::Gateway) -> std::io::Result<()> {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
/// jadugar_gateway::serve(listener, gateway, async { let _ = tokio::signal::ctrl_c().await; }).await
/// # }
/// ```
pub async fn serve(
    listener: TcpListener,
    gateway: Gateway,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    accept_loop(listener, shutdown, move |stream, peer, server| {
        let gateway = gateway.clone();
        async move {
            let client = crate::proxy::Peer::new(peer.ip());
            let handle = |req: Request<RequestBody>| gateway.handle_request(req, &client);
            let outcome = h1::serve_connection(stream, handle, &server.cancel).await;
            if let h1::Outcome::Handoff(io) = outcome {
                // `map`, not an `async` block: the block would move the
                // whole request future once more on its first poll.
                let service = service_fn(|req: hyper::Request<hyper::body::Incoming>| {
                    gateway
                        .handle_request(req.map(RequestBody::Incoming), &client)
                        .map(Ok::<_, Infallible>)
                });
                server.hyper(io, service).await;
            }
        }
    })
    .await
}

/// Serves any tower service taking the gateway's request body the way
/// [`serve`] serves a [`Gateway`]: for a gateway composed with other layers
/// (authentication, say), or a whole application whose fallback is the
/// gateway (the `jadugar` host). Responses may have any body of [`Bytes`]
/// chunks, [`ProxyBody`](crate::ProxyBody) or another. Each request carries its
/// [`ClientAddr`] in its extensions. Each connection calls its own clone
/// of `service`, without cloning it per request while it is ready at once
/// (as a gateway behind authentication is); backpressure from layers such
/// as concurrency limits or buffers is honoured.
///
/// ```no_run
/// # async fn demo(gateway: jadugar_gateway::Gateway) -> std::io::Result<()> {
/// use jadugar_gateway::RequestBody;
/// use tower::ServiceBuilder;
///
/// // Any tower stack over the gateway: here, one that tags every request.
/// let service = ServiceBuilder::new()
///     .map_request(|mut req: http::Request<RequestBody>| {
///         req.headers_mut().insert("x-edge", http::HeaderValue::from_static("eu-1"));
///         req
///     })
///     .service(gateway);
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
/// jadugar_gateway::serve_service(listener, service, std::future::pending()).await
/// # }
/// ```
pub async fn serve_service<S, B>(
    listener: TcpListener,
    service: S,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()>
where
    S: tower::Service<Request<RequestBody>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    accept_loop(listener, shutdown, move |stream, peer, server| {
        let service = service.clone();
        async move {
            // One service per connection, called directly when it is ready
            // at once (the common case: no per-request clone or `Oneshot`).
            // One that is not is driven on by `oneshot` with a real waker,
            // keeping its place in any queue, and the connection goes on
            // with a fresh clone: the waker-less reservation must not be
            // left waiting in the connection's service.
            let mut own = service.clone();
            let call = move |mut req: Request<RequestBody>| {
                req.extensions_mut().insert(ClientAddr(peer));
                let mut cx = Context::from_waker(Waker::noop());
                match own.poll_ready(&mut cx) {
                    Poll::Ready(Ok(())) => Either::Left(own.call(req)),
                    Poll::Ready(Err(never)) => match never {},
                    Poll::Pending => {
                        let fresh = own.clone();
                        Either::Right(std::mem::replace(&mut own, fresh).oneshot(req))
                    }
                }
                .map(|res| res.unwrap_or_else(|never| match never {}))
            };
            let outcome = h1::serve_connection(stream, call, &server.cancel).await;
            if let h1::Outcome::Handoff(io) = outcome {
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let mut req = req.map(RequestBody::Incoming);
                    req.extensions_mut().insert(ClientAddr(peer));
                    service.clone().oneshot(req)
                });
                server.hyper(io, service).await;
            }
        }
    })
    .await
}

/// What a connection task gets from the accept loop.
struct Server {
    builder: auto::Builder<TokioExecutor>,
    /// Fired at shutdown: idle connections of the own loop close.
    cancel: CancellationToken,
    /// Tells a handed-off connection about the shutdown.
    graceful: Watcher,
}

impl Server {
    /// Serves the rest of a handed-off connection with hyper.
    async fn hyper<S, B>(self, io: h1::Rewind, service: S)
    where
        S: hyper::service::Service<hyper::Request<hyper::body::Incoming>, Response = Response<B>>
            + Send,
        S::Future: Send + 'static,
        S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let conn = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(io), service);
        if let Err(e) = self.graceful.watch(conn.into_owned()).await {
            tracing::debug!(error = %e, "connection ended with an error");
        }
    }
}

async fn accept_loop<F, Fut>(
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    connection: F,
) -> std::io::Result<()>
where
    F: Fn(TcpStream, SocketAddr, Server) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(h1::HEADER_TIMEOUT);
    builder.http2().timer(TokioTimer::new());
    let cancel = CancellationToken::new();
    let graceful = GracefulShutdown::new();
    let tracker = TaskTracker::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let server = Server {
            builder: builder.clone(),
            cancel: cancel.clone(),
            graceful: graceful.watcher(),
        };
        tracker.spawn(connection(stream, peer, server));
    }
    drop(listener);
    // Idle connections close now, busy ones after their current request;
    // hyper's connections are told to finish gracefully.
    cancel.cancel();
    tracker.close();
    graceful.shutdown().await;
    tracker.wait().await;
    Ok(())
}
