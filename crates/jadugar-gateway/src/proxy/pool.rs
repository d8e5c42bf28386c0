//! HTTP/1.1 upstream connections kept per instance.
//!
//! A connection to an `https` instance is TCP, then TLS (rustls; SNI and
//! certificate name = the instance's host, ALPN `http/1.1`); either way it
//! is an [`h1::Conn`] the request's own task drives (see [`h1`] for why
//! not hyper's client connection). The response body carries the
//! connection and puts it back in its instance's idle list when the
//! response has been read to its end.
//!
//! An idle connection is checked before reuse (the upstream may have
//! closed it meanwhile) and dropped after `pool_idle_timeout_secs`. A
//! request is retried on another connection when a reused connection
//! failed before it was written, or, for idempotent methods with a body
//! that can be replayed, closed before any byte of a response: the race
//! with an upstream closing an idle connection. Nothing else is retried.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::Method;
use jadugar_core::outbound::AddressPolicy;

use super::body::RequestBody;
use super::h1::{self, Conn, ExchangeError, PooledBody, ResponseHead, Stream};
use crate::balance::Backend;

/// How long idle connections live and how many an instance keeps.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IdleSettings {
    /// Idle connections older than this are closed.
    pub(crate) timeout: Duration,
    /// Most idle connections kept per instance.
    pub(crate) max: usize,
}

impl Default for IdleSettings {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(90),
            max: 1024,
        }
    }
}

/// Idle connections of one instance, most recently used last.
#[derive(Debug)]
pub(crate) struct Idle {
    conns: Mutex<VecDeque<Box<Conn>>>,
    settings: IdleSettings,
}

impl Idle {
    pub(crate) fn new(settings: IdleSettings) -> Self {
        Self {
            conns: Mutex::default(),
            settings,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Box<Conn>>> {
        self.conns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The most recently used connection that can still be used at `now`.
    fn pop(&self, now: Instant) -> Option<Box<Conn>> {
        let mut stale = Vec::new();
        let found = {
            let mut conns = self.lock();
            loop {
                let Some(conn) = conns.pop_back() else {
                    break None;
                };
                if now.saturating_duration_since(conn.idle_since) > self.settings.timeout {
                    // The rest are older still.
                    stale.push(conn);
                    stale.extend(conns.drain(..));
                    break None;
                }
                if conn.is_usable() {
                    break Some(conn);
                }
                stale.push(conn);
            }
        };
        // Closed outside the lock.
        drop(stale);
        found
    }

    /// Keeps `conn` for reuse, closing those idle for too long.
    pub(crate) fn push(&self, mut conn: Box<Conn>) {
        let now = std::time::Instant::now();
        conn.idle_since = now;
        let mut stale = Vec::new();
        {
            let mut conns = self.lock();
            while conns
                .front()
                .is_some_and(|c| now.duration_since(c.idle_since) > self.settings.timeout)
            {
                stale.extend(conns.pop_front());
            }
            if conns.len() < self.settings.max {
                conns.push_back(conn);
            } else {
                stale.push(conn);
            }
        }
        drop(stale);
    }
}

impl h1::Release for Backend {
    fn release(&self, conn: Box<Conn>) {
        self.idle.push(conn);
    }
}

/// Why a pooled send failed.
#[derive(Debug)]
pub(crate) enum PoolError {
    /// No connection could be made.
    Connect(std::io::Error),
    /// The request failed after it was (possibly) written.
    Request(ExchangeError),
}

async fn connect(
    backend: &Backend,
    policy: &AddressPolicy,
    timeout: Duration,
) -> Result<Box<Conn>, PoolError> {
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
    let stream = match &backend.tls {
        None => Stream::Tcp(stream),
        Some(tls) => {
            // The TLS handshake shares the connect timeout with the TCP connect.
            let handshake = tls.connector.connect(tls.server_name.clone(), stream);
            let stream = tokio::time::timeout_at(deadline, handshake)
                .await
                .map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out")
                })
                .and_then(|r| r)
                .map_err(|e| {
                    tracing::warn!(instance = %backend.label, error = %e, "TLS handshake with upstream failed");
                    PoolError::Connect(e)
                })?;
            Stream::Tls(Box::new(stream))
        }
    };
    Ok(Box::new(Conn::new(stream)))
}

/// Sends a request on an idle or new connection of `backend`, `now` being
/// when it started; returns the response head and its body, which holds the
/// connection until it ends.
pub(crate) async fn send(
    backend: &Arc<Backend>,
    policy: &AddressPolicy,
    connect_timeout: Duration,
    head: &h1::Head<'_>,
    body: RequestBody,
    now: Instant,
) -> Result<(ResponseHead, PooledBody), PoolError> {
    let method = head.method;
    // A body known in full can be sent again after a lost race with an
    // upstream closing an idle connection.
    let replay = match &body {
        RequestBody::Full(data) => Some(data.clone()),
        RequestBody::Empty => Some(None),
        _ => None,
    }
    .filter(|_| is_idempotent(method));
    let mut body = Some(body);
    loop {
        let (conn, reused) = match backend.idle.pop(now) {
            Some(conn) => (conn, true),
            // Boxed: connecting (TCP, maybe TLS) is rare and its state is
            // large; unboxed it would sit in, and be copied with, every
            // request's future.
            None => (
                Box::pin(connect(backend, policy, connect_timeout)).await?,
                false,
            ),
        };
        let attempt = match body.take() {
            Some(b) => b,
            None => match &replay {
                Some(data) => RequestBody::Full(data.clone()),
                None => return Err(PoolError::Connect(std::io::ErrorKind::NotConnected.into())),
            },
        };
        match conn.exchange(head, attempt).await {
            Ok((head, conn)) => {
                let release: Arc<dyn h1::Release> = backend.clone();
                let body = PooledBody::new(&head, conn, release);
                return Ok((head, body));
            }
            Err(ExchangeError::NotWritten(_, unsent)) if reused => body = Some(unsent),
            Err(ExchangeError::ClosedEarly(_)) if reused && replay.is_some() => {}
            Err(e) => return Err(PoolError::Request(e)),
        }
    }
}

/// Methods RFC 9110 §9.2.2 calls idempotent.
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// The socket address of an IP-literal endpoint.
pub(crate) fn literal_addr(host: &str, port: u16) -> Option<SocketAddr> {
    host.trim_matches(|c| c == '[' || c == ']')
        .parse::<std::net::IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip, port))
}
