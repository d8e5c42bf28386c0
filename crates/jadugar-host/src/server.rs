//! Serving and graceful shutdown (see [`App::serve`]). Plain TCP goes
//! through the gateway's own HTTP/1.1 loop (`jadugar_gateway::serve_service`:
//! hyper takes over any connection carrying h2c, an upgrade, a chunked or
//! large upload or malformed input); TLS connections go through hyper-util
//! (HTTP/1.1 and HTTP/2 by ALPN).
//!
//! ```no_run
//! # fn demo() -> Result<(), jadugar_host::HostError> {
//! use std::path::Path;
//!
//! let acceptor = jadugar_host::server::tls_acceptor(
//!     Path::new("/etc/jadugar/fullchain.pem"),
//!     Path::new("/etc/jadugar/privkey.pem"),
//! )?;
//! # let _ = acceptor; Ok(()) }
//! ```

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::app::{App, HostService};
use crate::config::TlsConfig;
use crate::error::HostError;

/// Longest a client may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Builds a TLS acceptor from PEM files (ring provider, TLS 1.2 and 1.3,
/// ALPN h2 and http/1.1).
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, HostError> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| HostError::Tls(format!("certificate {}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(HostError::Tls(format!(
            "certificate {}: no certificate in the file",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| HostError::Tls(format!("private key {}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| HostError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| HostError::Tls(format!("certificate and key: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

impl App {
    /// Serves on `listener` until `shutdown` completes, then stops
    /// accepting, cancels background work, lets in-flight requests finish
    /// within `shutdown_grace_secs`, and closes the database.
    pub async fn serve(
        mut self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), HostError> {
        let tls = match (&self.config.tls, self.config.tls.enabled()) {
            (
                TlsConfig {
                    cert: Some(cert),
                    key: Some(key),
                },
                true,
            ) => Some(tls_acceptor(cert, key)?),
            _ => None,
        };
        let local = listener.local_addr().map_err(|source| HostError::Listen {
            addr: self.config.listen.to_string(),
            source,
        })?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        tracing::info!(address = %local, components = ?self.components(), "listening on {scheme}://{local}");

        let token = CancellationToken::new();
        let mut tasks = Vec::new();
        for spawn in std::mem::take(&mut self.spawners) {
            tasks.extend(spawn(token.child_token()));
        }

        let service = self.service();
        let grace = Duration::from_secs(self.config.shutdown_grace_secs);
        match tls {
            Some(acceptor) => serve_tls(listener, service, acceptor, shutdown, grace, &token).await,
            None => serve_plain(listener, service, shutdown, grace, &token).await,
        }
        let stopped = tokio::time::timeout(grace, futures_util::future::join_all(tasks)).await;
        if stopped.is_err() {
            tracing::warn!("background tasks did not stop within the grace period");
        }
        self.backends.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Logs the start of the shutdown and cancels background work.
fn shutting_down(grace: Duration, token: &CancellationToken) {
    tracing::info!(
        grace_secs = grace.as_secs(),
        "shutting down: no new connections, finishing in-flight requests"
    );
    token.cancel();
}

/// Plain HTTP: the gateway's own HTTP/1.1 loop for common requests, with
/// hyper taking over any connection it does not handle (h2c, upgrades,
/// chunked or large uploads, malformed input): the server side of a
/// request costs what it costs in `jadugar_gateway::serve_service`.
async fn serve_plain(
    listener: TcpListener,
    service: HostService,
    shutdown: impl Future<Output = ()> + Send,
    grace: Duration,
    token: &CancellationToken,
) {
    let stopping = CancellationToken::new();
    let signal = {
        let stopping = stopping.clone();
        async move {
            shutdown.await;
            stopping.cancel();
        }
    };
    let serving = jadugar_gateway::serve_service(listener, service, signal);
    let mut serving = std::pin::pin!(serving);
    // Serving ends only after the signal (accept errors are retried), but
    // may end at once if the signal came first.
    let finished = tokio::select! {
        result = &mut serving => Some(result),
        () = stopping.cancelled() => None,
    };
    shutting_down(grace, token);
    // The accept loop has stopped; idle connections close, busy ones after
    // their current response.
    let result = match finished {
        Some(result) => Ok(result),
        None => tokio::time::timeout(grace, serving).await,
    };
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "serving failed"),
        Err(_) => tracing::warn!("grace period over; closing the remaining connections"),
    }
}

/// TLS: every connection through hyper-util (HTTP/1.1 and HTTP/2 by ALPN).
async fn serve_tls(
    listener: TcpListener,
    service: HostService,
    tls: TlsAcceptor,
    shutdown: impl Future<Output = ()> + Send,
    grace: Duration,
    token: &CancellationToken,
) {
    let builder = Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait, go on.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(
            // Cheap per connection: the service is shared, only the
            // peer address is added to each request.
            tower::ServiceBuilder::new()
                .map_request(move |mut request: http::Request<hyper::body::Incoming>| {
                    request.extensions_mut().insert(ConnectInfo(remote));
                    request
                })
                .service(service.clone()),
        );
        let watcher = graceful.watcher();
        let builder = builder.clone();
        let acceptor = tls.clone();
        tokio::spawn(async move {
            let stream =
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        tracing::debug!(%remote, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%remote, "TLS handshake timed out");
                        return;
                    }
                };
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(%remote, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    shutting_down(grace, token);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("grace period over; closing the remaining connections");
    }
}
