//! A client for services: register, heartbeat, discover, read config.
//!
//! [`RegistryClient::register`] registers an instance and, when it has a
//! TTL, heartbeats in the background every third of the TTL. A heartbeat
//! answered 404 means the registry forgot the instance (a registry restart
//! on a memory store, a TTL lost during a partition): the client registers
//! again. Failures back off exponentially (with jitter, capped at the TTL).
//! The returned [`ServiceRegistration`] deregisters on
//! [`deregister`](ServiceRegistration::deregister) and, best effort, when
//! dropped.
//!
//! [`RegistryClient::discovery`] keeps a local cache of a service's passing
//! instances fresh with blocking queries; [`RegistryClient::watch_config`]
//! does the same for one config key.
//!
//! ```no_run
//! # async fn demo() -> Result<(), jadugar_registry::client::ClientError> {
//! use jadugar_registry::RegistryClient;
//! use jadugar_registry::model::{Address, CheckSpec, Registration};
//!
//! let client = RegistryClient::new("http://127.0.0.1:8080")?.with_token("jdg_key");
//! let me = Registration::new(Address::new("http", "10.0.0.7", 3000))
//!     .with_ttl_secs(15)
//!     .with_check(CheckSpec::http("/health"));
//! let registration = client.register("billing", "billing-7", me).await?;
//! let peers = client.discovery("ledger").await?;
//! println!("{} ledger instances", peers.instances().len());
//! registration.deregister().await?;
//! # Ok(()) }
//! ```

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use jadugar_core::Problem;
use rand::Rng;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::http::{ConfigListResponse, InstancesResponse};
use crate::model::{ConfigEntry, Instance, Registration};

/// What can go wrong talking to the registry.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The base URL is not an http(s) URL.
    #[error("invalid registry URL: {0}")]
    InvalidUrl(String),
    /// The request did not complete.
    #[error("registry request failed: {0}")]
    Http(#[from] reqwest::Error),
    /// The registry answered with an error.
    #[error("registry answered {status}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// The problem body, if any.
        problem: Option<Box<Problem>>,
    },
}

impl ClientError {
    /// The HTTP status of an error answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A client of the registry's HTTP API; cheap to clone.
#[derive(Debug, Clone)]
pub struct RegistryClient {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
    wait_secs: u64,
}

impl RegistryClient {
    /// A client for the registry at `base_url` (e.g. `http://jadugar:8080`).
    pub fn new(base_url: &str) -> Result<Self, ClientError> {
        let url = url::Url::parse(base_url).map_err(|e| ClientError::InvalidUrl(e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ClientError::InvalidUrl(
                "scheme must be http or https".into(),
            ));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()?;
        Ok(Self {
            http,
            base: base_url.trim_end_matches('/').to_owned(),
            token: None,
            wait_secs: 55,
        })
    }

    /// Sends `Authorization: Bearer <token>` (an API key or access token).
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// How long blocking queries wait (default 55 s).
    pub fn with_wait_secs(mut self, secs: u64) -> Self {
        self.wait_secs = secs.max(1);
        self
    }

    async fn send<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
        timeout: Duration,
    ) -> Result<Option<T>, ClientError> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .timeout(timeout);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await?;
        let status = response.status();
        if status == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        if !status.is_success() {
            let problem = response.json::<Problem>().await.ok().map(Box::new);
            return Err(ClientError::Status {
                status: status.as_u16(),
                problem,
            });
        }
        Ok(Some(response.json::<T>().await?))
    }

    fn instance_path(service: &str, id: &str) -> String {
        format!("/v1/registry/services/{service}/instances/{id}")
    }

    /// Registers once (no background work).
    pub async fn register_once(
        &self,
        service: &str,
        id: &str,
        registration: &Registration,
    ) -> Result<Instance, ClientError> {
        let body = serde_json::to_value(registration)
            .map_err(|e| ClientError::InvalidUrl(e.to_string()))?;
        self.send(
            Method::PUT,
            &Self::instance_path(service, id),
            Some(&body),
            Duration::from_secs(10),
        )
        .await?
        .ok_or(ClientError::Status {
            status: 204,
            problem: None,
        })
    }

    /// Registers and keeps the instance alive in the background; see the
    /// [module docs](self).
    pub async fn register(
        &self,
        service: &str,
        id: &str,
        registration: Registration,
    ) -> Result<ServiceRegistration, ClientError> {
        self.register_once(service, id, &registration).await?;
        let cancel = CancellationToken::new();
        let task = registration.ttl_secs.map(|ttl| {
            tokio::spawn(heartbeat_loop(
                self.clone(),
                service.to_owned(),
                id.to_owned(),
                registration.clone(),
                ttl,
                cancel.clone(),
            ))
        });
        Ok(ServiceRegistration {
            client: self.clone(),
            service: service.to_owned(),
            id: id.to_owned(),
            cancel,
            task,
            done: false,
        })
    }

    /// Sends one heartbeat: `Ok(true)` if alive, `Ok(false)` if the
    /// registry no longer knows the instance.
    pub async fn heartbeat(&self, service: &str, id: &str) -> Result<bool, ClientError> {
        let path = format!("{}/heartbeat", Self::instance_path(service, id));
        match self
            .send::<Instance>(Method::PUT, &path, None, Duration::from_secs(10))
            .await
        {
            Ok(_) => Ok(true),
            Err(ClientError::Status { status: 404, .. }) => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// Removes an instance.
    pub async fn deregister(&self, service: &str, id: &str) -> Result<(), ClientError> {
        match self
            .send::<serde_json::Value>(
                Method::DELETE,
                &Self::instance_path(service, id),
                None,
                Duration::from_secs(10),
            )
            .await
        {
            Ok(_) | Err(ClientError::Status { status: 404, .. }) => Ok(()),
            Err(err) => Err(err),
        }
    }

    /// A service's passing instances; with `index`, a blocking query.
    pub async fn instances(
        &self,
        service: &str,
        index: Option<u64>,
    ) -> Result<InstancesResponse, ClientError> {
        let (path, timeout) = match index {
            Some(i) => (
                format!(
                    "/v1/registry/services/{service}?index={i}&wait={}s",
                    self.wait_secs
                ),
                Duration::from_secs(self.wait_secs + self.wait_secs / 8 + 10),
            ),
            None => (
                format!("/v1/registry/services/{service}"),
                Duration::from_secs(10),
            ),
        };
        self.send(Method::GET, &path, None, timeout)
            .await?
            .ok_or(ClientError::Status {
                status: 204,
                problem: None,
            })
    }

    /// A local cache of `service`'s passing instances, kept fresh by
    /// blocking queries in the background until dropped.
    pub async fn discovery(&self, service: &str) -> Result<DiscoveryClient, ClientError> {
        let first = self.instances(service, None).await?;
        let cache = Arc::new(RwLock::new(Arc::<[Instance]>::from(first.instances)));
        let (tx, rx) = watch::channel(first.index);
        let cancel = CancellationToken::new();
        tokio::spawn(discovery_loop(
            self.clone(),
            service.to_owned(),
            first.index,
            cache.clone(),
            tx,
            cancel.clone(),
        ));
        Ok(DiscoveryClient {
            cache,
            index: rx,
            _guard: Arc::new(cancel.drop_guard()),
        })
    }

    /// A config key (`None` when absent).
    pub async fn config(
        &self,
        namespace: &str,
        key: &str,
    ) -> Result<Option<ConfigEntry>, ClientError> {
        let path = format!("/v1/config/namespaces/{namespace}/keys/{key}");
        match self
            .send(Method::GET, &path, None, Duration::from_secs(10))
            .await
        {
            Ok(entry) => Ok(entry),
            Err(ClientError::Status { status: 404, .. }) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Watches one config key: the receiver always holds the latest value.
    pub async fn watch_config(
        &self,
        namespace: &str,
        key: &str,
    ) -> Result<ConfigWatch, ClientError> {
        let list: ConfigListResponse = self
            .send(
                Method::GET,
                &format!("/v1/config/namespaces/{namespace}/keys?prefix={key}"),
                None,
                Duration::from_secs(10),
            )
            .await?
            .ok_or(ClientError::Status {
                status: 204,
                problem: None,
            })?;
        let current = self.config(namespace, key).await?;
        let (tx, rx) = watch::channel(current);
        let cancel = CancellationToken::new();
        tokio::spawn(config_loop(
            self.clone(),
            namespace.to_owned(),
            key.to_owned(),
            list.index,
            tx,
            cancel.clone(),
        ));
        Ok(ConfigWatch {
            value: rx,
            _guard: Arc::new(cancel.drop_guard()),
        })
    }
}

fn backoff(attempt: u32, cap: Duration) -> Duration {
    let base = Duration::from_millis(200).saturating_mul(1 << attempt.min(10));
    let capped = base.min(cap);
    let jitter = rand::thread_rng().gen_range(0..=capped.as_millis() as u64 / 4 + 1);
    capped + Duration::from_millis(jitter)
}

async fn heartbeat_loop(
    client: RegistryClient,
    service: String,
    id: String,
    registration: Registration,
    ttl_secs: u64,
    cancel: CancellationToken,
) {
    let every = Duration::from_millis((ttl_secs.max(1) * 1000) / 3);
    let cap = Duration::from_secs(ttl_secs.max(1));
    let mut failures: u32 = 0;
    loop {
        let delay = if failures == 0 {
            every
        } else {
            backoff(failures, cap)
        };
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
        let outcome = match client.heartbeat(&service, &id).await {
            Ok(true) => Ok(()),
            Ok(false) => {
                tracing::info!(
                    service,
                    id,
                    "registry forgot this instance; registering again"
                );
                client
                    .register_once(&service, &id, &registration)
                    .await
                    .map(|_| ())
            }
            Err(err) => Err(err),
        };
        match outcome {
            Ok(()) => failures = 0,
            Err(err) => {
                failures = failures.saturating_add(1);
                tracing::warn!(service, id, error = %err, "heartbeat failed; backing off");
            }
        }
    }
}

async fn discovery_loop(
    client: RegistryClient,
    service: String,
    mut index: u64,
    cache: Arc<RwLock<Arc<[Instance]>>>,
    tx: watch::Sender<u64>,
    cancel: CancellationToken,
) {
    let mut failures: u32 = 0;
    loop {
        let result = tokio::select! {
            () = cancel.cancelled() => return,
            r = client.instances(&service, Some(index)) => r,
        };
        match result {
            Ok(list) => {
                failures = 0;
                // An index that went backwards means the registry restarted.
                index = if list.index < index { 0 } else { list.index };
                *cache.write().unwrap_or_else(PoisonError::into_inner) = list.instances.into();
                tx.send_replace(list.index);
            }
            Err(err) => {
                failures = failures.saturating_add(1);
                tracing::warn!(service, error = %err, "discovery watch failed; backing off");
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(backoff(failures, Duration::from_secs(30))) => {}
                }
            }
        }
    }
}

async fn config_loop(
    client: RegistryClient,
    namespace: String,
    key: String,
    mut index: u64,
    tx: watch::Sender<Option<ConfigEntry>>,
    cancel: CancellationToken,
) {
    let mut failures: u32 = 0;
    let timeout = Duration::from_secs(client.wait_secs + client.wait_secs / 8 + 10);
    loop {
        let path = format!(
            "/v1/config/namespaces/{namespace}/keys?prefix={key}&index={index}&wait={}s",
            client.wait_secs
        );
        let result = tokio::select! {
            () = cancel.cancelled() => return,
            r = client.send::<ConfigListResponse>(Method::GET, &path, None, timeout) => r,
        };
        let outcome = match result {
            Ok(Some(list)) => {
                index = if list.index < index { 0 } else { list.index };
                client.config(&namespace, &key).await
            }
            Ok(None) => client.config(&namespace, &key).await,
            Err(err) => Err(err),
        };
        match outcome {
            Ok(value) => {
                failures = 0;
                tx.send_if_modified(|current| {
                    if *current == value {
                        false
                    } else {
                        *current = value;
                        true
                    }
                });
            }
            Err(err) => {
                failures = failures.saturating_add(1);
                tracing::warn!(namespace, key, error = %err, "config watch failed; backing off");
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(backoff(failures, Duration::from_secs(30))) => {}
                }
            }
        }
    }
}

/// A registered instance kept alive in the background; deregisters on
/// [`deregister`](Self::deregister) or, best effort, on drop.
#[derive(Debug)]
pub struct ServiceRegistration {
    client: RegistryClient,
    service: String,
    id: String,
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
    done: bool,
}

impl ServiceRegistration {
    /// The service name.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The instance id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Stops heartbeating and deregisters.
    pub async fn deregister(mut self) -> Result<(), ClientError> {
        self.done = true;
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        self.client.deregister(&self.service, &self.id).await
    }
}

impl Drop for ServiceRegistration {
    fn drop(&mut self) {
        self.cancel.cancel();
        if self.done {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let client = self.client.clone();
            let service = std::mem::take(&mut self.service);
            let id = std::mem::take(&mut self.id);
            runtime.spawn(async move {
                if let Err(err) = client.deregister(&service, &id).await {
                    tracing::warn!(service, id, error = %err, "deregister on drop failed");
                }
            });
        }
    }
}

/// A locally cached, watch-refreshed list of a service's passing
/// instances. Clones share the cache; the refresh stops when the last
/// clone is dropped.
#[derive(Debug, Clone)]
pub struct DiscoveryClient {
    cache: Arc<RwLock<Arc<[Instance]>>>,
    index: watch::Receiver<u64>,
    _guard: Arc<DropGuard>,
}

impl DiscoveryClient {
    /// The cached instances (no network).
    pub fn instances(&self) -> Arc<[Instance]> {
        self.cache
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits for the next refresh; returns the new index.
    pub async fn changed(&mut self) -> Option<u64> {
        self.index.changed().await.ok()?;
        Some(*self.index.borrow_and_update())
    }
}

/// The latest value of one config key, watch-refreshed until dropped.
#[derive(Debug, Clone)]
pub struct ConfigWatch {
    value: watch::Receiver<Option<ConfigEntry>>,
    _guard: Arc<DropGuard>,
}

impl ConfigWatch {
    /// The current value (`None` when absent).
    pub fn get(&self) -> Option<ConfigEntry> {
        self.value.borrow().clone()
    }

    /// Waits for the value to change; returns it.
    pub async fn changed(&mut self) -> Option<Option<ConfigEntry>> {
        self.value.changed().await.ok()?;
        Some(self.value.borrow_and_update().clone())
    }
}
