//! Pooled upstream clients and the TLS settings of `https` upstreams.
//!
//! `https` upstreams are verified against the webpki roots (Mozilla's CA
//! set, compiled in) plus, optionally, the CA certificates of a PEM file
//! ([`UpstreamTls::new`]). There is no switch that turns verification off.
//!
//! ```
//! use jadugar_gateway::proxy::client::UpstreamTls;
//!
//! // The default: public CAs only.
//! let tls = UpstreamTls::new(None).unwrap();
//! // A file that is not there is an error naming the setting.
//! let err = UpstreamTls::new(Some(std::path::Path::new("/nonexistent.pem"))).unwrap_err();
//! assert!(err.to_string().contains("upstream_ca_file"));
//! # drop(tls);
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use jadugar_core::outbound::AddressPolicy;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use super::body::RequestBody;

/// Why [`UpstreamTls::new`] failed; the message names the setting.
#[derive(Debug, thiserror::Error)]
#[error("upstream_ca_file {path}: {reason}")]
pub struct TlsConfigError {
    /// The file.
    pub path: String,
    /// What is wrong with it.
    pub reason: String,
}

/// How `https` upstreams are verified: the webpki roots plus optional extra
/// CAs; cheap to clone (the rustls configurations are shared).
#[derive(Clone)]
pub struct UpstreamTls {
    roots: Arc<RootCertStore>,
    http1: Arc<ClientConfig>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("roots", &self.roots.len())
            .finish_non_exhaustive()
    }
}

impl UpstreamTls {
    /// The webpki roots plus every certificate in the PEM file at
    /// `extra_ca` (when given).
    pub fn new(extra_ca: Option<&Path>) -> Result<Self, TlsConfigError> {
        let mut roots = webpki_root_store();
        if let Some(path) = extra_ca {
            let bad = |reason: String| TlsConfigError {
                path: path.display().to_string(),
                reason,
            };
            let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
            let certs = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(format!("not a PEM certificate bundle ({e})")))?;
            if certs.is_empty() {
                return Err(bad("holds no CERTIFICATE block".into()));
            }
            for (i, cert) in certs.into_iter().enumerate() {
                roots
                    .add(cert)
                    .map_err(|e| bad(format!("certificate {i} is not usable as a CA: {e}")))?;
            }
        }
        Ok(Self::from_roots(roots))
    }

    /// The webpki roots alone.
    pub fn webpki() -> Self {
        Self::from_roots(webpki_root_store())
    }

    fn from_roots(roots: RootCertStore) -> Self {
        let roots = Arc::new(roots);
        let http1 = Arc::new(client_config(&roots, &[b"http/1.1"]));
        Self { roots, http1 }
    }

    /// The rustls configuration of HTTP/1.1 connections (ALPN `http/1.1`).
    pub(crate) fn http1(&self) -> &Arc<ClientConfig> {
        &self.http1
    }

    /// An HTTPS (or plain HTTP, by the URI's scheme) connector over `http`;
    /// ALPN offers only `h2` when `http2`, else only `http/1.1`.
    fn connector(
        &self,
        http: HttpConnector<PolicyResolve>,
        http2: bool,
    ) -> HttpsConnector<HttpConnector<PolicyResolve>> {
        // ALPN is set by the builder from the enabled protocols.
        let config = client_config(&self.roots, &[]);
        let builder = HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_or_http();
        if http2 {
            builder.enable_http2().wrap_connector(http)
        } else {
            builder.enable_http1().wrap_connector(http)
        }
    }
}

fn webpki_root_store() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    roots
}

fn client_config(roots: &Arc<RootCertStore>, alpn: &[&[u8]]) -> ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        // The ring provider supports the default versions: this cannot fail.
        .unwrap_or_else(|_| unreachable!("ring supports TLS 1.2 and 1.3"))
        .with_root_certificates(Arc::clone(roots))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

/// Resolves upstream host names through the outbound address policy.
#[derive(Debug, Clone)]
pub struct PolicyResolve(pub AddressPolicy);

impl tower::Service<Name> for PolicyResolve {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let policy = self.0.clone();
        Box::pin(async move {
            policy
                .resolve(name.as_str(), 0)
                .await
                .map(Vec::into_iter)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::PermissionDenied, e))
        })
    }
}

/// The client type the proxy uses for HTTP/2 and upgrades (`http` or
/// `https`, by the request URI's scheme).
pub type UpstreamClient = Client<HttpsConnector<HttpConnector<PolicyResolve>>, RequestBody>;

/// Clients shared by routes with the same connect timeout and protocol, so
/// their connection pools are shared too.
#[derive(Debug)]
pub struct ClientCache {
    policy: AddressPolicy,
    idle_timeout: Duration,
    max_idle: usize,
    tls: UpstreamTls,
    clients: Mutex<HashMap<(u64, bool), Arc<UpstreamClient>>>,
}

impl ClientCache {
    /// A cache whose clients resolve through `policy` and verify `https`
    /// upstreams with `tls`.
    pub fn new(
        policy: AddressPolicy,
        idle_timeout: Duration,
        max_idle: usize,
        tls: UpstreamTls,
    ) -> Self {
        Self {
            policy,
            idle_timeout,
            max_idle,
            tls,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// The policy.
    pub fn policy(&self) -> &AddressPolicy {
        &self.policy
    }

    /// The TLS settings of `https` upstreams.
    pub fn tls(&self) -> &UpstreamTls {
        &self.tls
    }

    /// The client for a connect timeout and protocol.
    pub fn get(&self, connect_timeout_ms: u64, http2: bool) -> Arc<UpstreamClient> {
        let mut clients = self
            .clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        clients
            .entry((connect_timeout_ms, http2))
            .or_insert_with(|| {
                let mut connector =
                    HttpConnector::new_with_resolver(PolicyResolve(self.policy.clone()));
                connector.set_nodelay(true);
                connector.set_connect_timeout(Some(Duration::from_millis(connect_timeout_ms)));
                connector.set_keepalive(Some(Duration::from_secs(60)));
                // `https` URIs go to the TLS layer around this connector.
                connector.enforce_http(false);
                let connector = self.tls.connector(connector, http2);
                let mut builder = Client::builder(TokioExecutor::new());
                builder
                    .pool_timer(TokioTimer::new())
                    .timer(TokioTimer::new())
                    .pool_idle_timeout(self.idle_timeout)
                    .pool_max_idle_per_host(self.max_idle)
                    .set_host(false)
                    .http2_only(http2);
                Arc::new(builder.build(connector))
            })
            .clone()
    }
}
