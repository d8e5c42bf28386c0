//! How the gateway finds upstream endpoints.
//!
//! The gateway asks a [`Discovery`] for the endpoints of a service on every
//! request, so implementations answer from memory (the registry keeps a
//! snapshot updated on change) and never touch a database on this path.
//! [`Discovery::changes`] lets a consumer rebuild derived state (a load
//! balancer's ring) only when something changed.
//!
//! ```
//! use jadugar_core::{Discovery, Endpoint, StaticDiscovery};
//!
//! let discovery = StaticDiscovery::new();
//! discovery.set("billing", vec![
//!     Endpoint::new("b-1", "http", "10.0.0.5", 8080).with_tags(["v2"]),
//!     Endpoint::new("b-2", "http", "10.0.0.6", 8080),
//! ]);
//! assert_eq!(discovery.endpoints("billing", &[]).len(), 2);
//! assert_eq!(discovery.endpoints("billing", &["v2".to_owned()]).len(), 1);
//! assert!(discovery.endpoints("nope", &[]).is_empty());
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use utoipa::ToSchema;

/// One healthy instance of a service, as the gateway needs it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub struct Endpoint {
    /// The instance id, stable across re-registrations.
    pub id: String,
    /// `http` or `https`.
    pub scheme: String,
    /// Host name or IP address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Relative weight for weighted balancing (default 1).
    pub weight: u32,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Metadata.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

impl Endpoint {
    /// An endpoint of weight 1 with no tags.
    pub fn new(
        id: impl Into<String>,
        scheme: impl Into<String>,
        host: impl Into<String>,
        port: u16,
    ) -> Self {
        Self {
            id: id.into(),
            scheme: scheme.into(),
            host: host.into(),
            port,
            weight: 1,
            tags: Vec::new(),
            metadata: BTreeMap::new(),
        }
    }

    /// Sets the tags.
    pub fn with_tags<I: IntoIterator<Item = S>, S: Into<String>>(mut self, tags: I) -> Self {
        self.tags = tags.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the weight.
    pub fn with_weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// `host:port`, with IPv6 hosts bracketed.
    pub fn authority(&self) -> String {
        if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// `scheme://host:port`.
    pub fn base_url(&self) -> String {
        format!("{}://{}", self.scheme, self.authority())
    }

    /// Whether the endpoint carries every tag in `tags`.
    pub fn has_tags(&self, tags: &[String]) -> bool {
        tags.iter().all(|t| self.tags.contains(t))
    }
}

/// A source of service endpoints; see the [module docs](self).
pub trait Discovery: Debug + Send + Sync + 'static {
    /// The healthy endpoints of `service` carrying all of `tags`, from
    /// memory. Unknown services have none.
    fn endpoints(&self, service: &str, tags: &[String]) -> Arc<[Endpoint]>;

    /// A counter that increases whenever any endpoint set changes.
    fn changes(&self) -> watch::Receiver<u64>;
}

impl<D: Discovery + ?Sized> Discovery for Arc<D> {
    fn endpoints(&self, service: &str, tags: &[String]) -> Arc<[Endpoint]> {
        (**self).endpoints(service, tags)
    }

    fn changes(&self) -> watch::Receiver<u64> {
        (**self).changes()
    }
}

/// A [`Discovery`] whose endpoints are set by hand (configuration, tests).
#[derive(Debug)]
pub struct StaticDiscovery {
    services: RwLock<HashMap<String, Arc<[Endpoint]>>>,
    generation: watch::Sender<u64>,
}

impl Default for StaticDiscovery {
    fn default() -> Self {
        Self::new()
    }
}

impl StaticDiscovery {
    /// No services.
    pub fn new() -> Self {
        Self {
            services: RwLock::new(HashMap::new()),
            generation: watch::channel(0).0,
        }
    }

    /// Replaces the endpoints of `service`.
    pub fn set(&self, service: impl Into<String>, endpoints: Vec<Endpoint>) {
        let mut services = self
            .services
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        services.insert(service.into(), endpoints.into());
        drop(services);
        self.generation.send_modify(|g| *g += 1);
    }
}

impl Discovery for StaticDiscovery {
    fn endpoints(&self, service: &str, tags: &[String]) -> Arc<[Endpoint]> {
        let services = self
            .services
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match services.get(service) {
            None => Arc::from(Vec::new()),
            Some(all) if tags.is_empty() => all.clone(),
            Some(all) => all.iter().filter(|e| e.has_tags(tags)).cloned().collect(),
        }
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }
}
