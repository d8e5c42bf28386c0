//! Pooled upstream clients.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use jadugar_core::outbound::AddressPolicy;

use super::body::RequestBody;

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

/// The client type the proxy uses.
pub type UpstreamClient = Client<HttpConnector<PolicyResolve>, RequestBody>;

/// Clients shared by routes with the same connect timeout and protocol, so
/// their connection pools are shared too.
#[derive(Debug)]
pub struct ClientCache {
    policy: AddressPolicy,
    idle_timeout: Duration,
    max_idle: usize,
    clients: Mutex<HashMap<(u64, bool), UpstreamClient>>,
}

impl ClientCache {
    /// A cache whose clients resolve through `policy`.
    pub fn new(policy: AddressPolicy, idle_timeout: Duration, max_idle: usize) -> Self {
        Self {
            policy,
            idle_timeout,
            max_idle,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// The policy.
    pub fn policy(&self) -> &AddressPolicy {
        &self.policy
    }

    /// The client for a connect timeout and protocol.
    pub fn get(&self, connect_timeout_ms: u64, http2: bool) -> UpstreamClient {
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
                let mut builder = Client::builder(TokioExecutor::new());
                builder
                    .pool_timer(TokioTimer::new())
                    .timer(TokioTimer::new())
                    .pool_idle_timeout(self.idle_timeout)
                    .pool_max_idle_per_host(self.max_idle)
                    .set_host(false)
                    .http2_only(http2);
                builder.build(connector)
            })
            .clone()
    }
}
