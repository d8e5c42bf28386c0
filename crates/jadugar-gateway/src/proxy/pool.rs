//! HTTP/1.1 upstream connections kept per instance.
//!
//! A connection to an `https` instance is TCP, then TLS (rustls; SNI and
//! certificate name = the instance's host, ALPN `http/1.1`), then hyper's
//! HTTP/1.1 handshake; the sender it yields has the same type either way,
//! so the idle lists and the send path do not know about TLS.
//!
//! hyper-util's pooled client returns a connection to its pool through a
//! task spawned per request; this pool avoids that: the response body
//! carries the connection's sender and puts it back when the body ends, and
//! a checkout waits for the (usually immediate) readiness of the
//! connection. A request that could not be written on a reused connection
//! (the upstream closed it while idle) is retried on another one; nothing is
//! retried once written.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use jadugar_core::outbound::AddressPolicy;

use super::body::RequestBody;
use crate::balance::Backend;

/// Idle connections of one instance.
#[derive(Debug, Default)]
pub(crate) struct Idle {
    senders: Mutex<Vec<SendRequest<RequestBody>>>,
}

/// Most idle connections kept per instance.
pub(crate) const MAX_IDLE: usize = 1024;

impl Idle {
    fn pop(&self) -> Option<SendRequest<RequestBody>> {
        self.senders
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop()
    }

    pub(crate) fn push(&self, sender: SendRequest<RequestBody>) {
        if sender.is_closed() {
            return;
        }
        let mut senders = self
            .senders
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if senders.len() < MAX_IDLE {
            senders.push(sender);
        }
    }
}

/// Why a pooled send failed.
#[derive(Debug)]
pub(crate) enum PoolError {
    /// No connection could be made.
    Connect(std::io::Error),
    /// The request failed after it was (possibly) written.
    Request(hyper::Error),
}

async fn connect(
    backend: &Backend,
    policy: &AddressPolicy,
    timeout: Duration,
) -> Result<SendRequest<RequestBody>, PoolError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let stream = match backend.socket_addr {
        Some(addr) => tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))
            .and_then(|r| r),
        None => {
            let host = backend.endpoint().host.clone();
            policy
                .connect_tcp(&host, backend.endpoint().port, timeout)
                .await
        }
    }
    .map_err(PoolError::Connect)?;
    let _ = stream.set_nodelay(true);
    match &backend.tls {
        None => handshake(stream).await,
        Some(tls) => {
            // The TLS handshake shares the connect timeout with the TCP connect.
            let handshake_ = tls.connector.connect(tls.server_name.clone(), stream);
            let stream = tokio::time::timeout_at(deadline, handshake_)
                .await
                .map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out")
                })
                .and_then(|r| r)
                .map_err(|e| {
                    tracing::warn!(instance = %backend.label, error = %e, "TLS handshake with upstream failed");
                    PoolError::Connect(e)
                })?;
            handshake(stream).await
        }
    }
}

/// hyper's HTTP/1.1 handshake over `io`; the connection is driven by a task.
async fn handshake<T>(io: T) -> Result<SendRequest<RequestBody>, PoolError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(PoolError::Request)?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

/// Sends `req` on an idle or new connection of `backend`; returns the
/// response and the sender to put back when its body ends.
pub(crate) async fn send(
    backend: &Arc<Backend>,
    policy: &AddressPolicy,
    connect_timeout: Duration,
    mut req: Request<RequestBody>,
) -> Result<(Response<Incoming>, SendRequest<RequestBody>), PoolError> {
    loop {
        let (mut sender, reused) = match backend.idle.pop() {
            Some(s) => (s, true),
            // Boxed: connecting (TCP, maybe TLS, the HTTP/1.1 handshake) is
            // rare and its state is large; unboxed it would sit in, and be
            // copied with, every request's future.
            None => (
                Box::pin(connect(backend, policy, connect_timeout)).await?,
                false,
            ),
        };
        if let Err(e) = sender.ready().await {
            if reused {
                continue;
            }
            return Err(PoolError::Request(e));
        }
        match sender.try_send_request(req).await {
            Ok(res) => return Ok((res, sender)),
            Err(mut e) => match e.take_message() {
                Some(unsent) if reused => req = unsent,
                _ => return Err(PoolError::Request(e.into_error())),
            },
        }
    }
}

/// The socket address of an IP-literal endpoint.
pub(crate) fn literal_addr(host: &str, port: u16) -> Option<SocketAddr> {
    host.trim_matches(|c| c == '[' || c == ']')
        .parse::<std::net::IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip, port))
}
