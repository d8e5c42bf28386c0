//! The in-memory snapshot discovery is served from.
//!
//! Each service's instances live in an immutable view behind one `RwLock`
//! read; the passing endpoints are precomputed as an `Arc<[Endpoint]>`, and
//! per-tag-filter results are cached in the view, so
//! [`Discovery::endpoints`](jadugar_core::Discovery::endpoints) is a map
//! lookup and an `Arc` clone. A change replaces the whole view.
//!
//! ```
//! use jadugar_core::Discovery;
//! use jadugar_registry::discovery::Snapshot;
//!
//! let snapshot = Snapshot::new();
//! assert!(snapshot.endpoints("billing", &[]).is_empty());
//! ```

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use jadugar_core::{Discovery, Endpoint};
use tokio::sync::watch;

use crate::model::{Instance, Status};

const TAG_CACHE_LIMIT: usize = 64;

/// One service's instances, immutable once built.
#[derive(Debug)]
pub struct ServiceView {
    /// Every instance, ordered by id.
    pub instances: Arc<[Instance]>,
    /// The passing endpoints.
    pub passing: Arc<[Endpoint]>,
    /// The highest `modify_index` among the instances.
    pub max_index: u64,
    by_tags: RwLock<HashMap<Vec<String>, Arc<[Endpoint]>>>,
}

impl ServiceView {
    fn new(mut instances: Vec<Instance>) -> Self {
        instances.sort_by(|a, b| a.id.cmp(&b.id));
        let passing: Arc<[Endpoint]> = instances
            .iter()
            .filter(|i| i.status == Status::Passing)
            .map(Instance::endpoint)
            .collect();
        let max_index = instances.iter().map(|i| i.modify_index).max().unwrap_or(0);
        Self {
            instances: instances.into(),
            passing,
            max_index,
            by_tags: RwLock::new(HashMap::new()),
        }
    }

    fn with_tags(&self, tags: &[String]) -> Arc<[Endpoint]> {
        if tags.is_empty() {
            return self.passing.clone();
        }
        if let Some(hit) = self
            .by_tags
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(tags)
        {
            return hit.clone();
        }
        let result: Arc<[Endpoint]> = self
            .passing
            .iter()
            .filter(|e| e.has_tags(tags))
            .cloned()
            .collect();
        let mut cache = self.by_tags.write().unwrap_or_else(PoisonError::into_inner);
        if cache.len() < TAG_CACHE_LIMIT {
            cache.insert(tags.to_vec(), result.clone());
        }
        result
    }
}

/// Every service's current view; implements [`Discovery`].
#[derive(Debug)]
pub struct Snapshot {
    services: RwLock<HashMap<String, Arc<ServiceView>>>,
    changes: watch::Sender<u64>,
}

impl Default for Snapshot {
    fn default() -> Self {
        Self::new()
    }
}

impl Snapshot {
    /// No services.
    pub fn new() -> Self {
        Self {
            services: RwLock::new(HashMap::new()),
            changes: watch::channel(0).0,
        }
    }

    /// Replaces a service's instances (removing it when empty). Returns
    /// whether the set of instances changed.
    pub fn set_service(&self, service: &str, instances: Vec<Instance>) -> bool {
        let view = ServiceView::new(instances);
        let mut services = self.services.write().unwrap_or_else(PoisonError::into_inner);
        let old = if view.instances.is_empty() {
            services.remove(service)
        } else {
            services.insert(service.to_owned(), Arc::new(view))
        };
        let new = services.get(service).cloned();
        drop(services);
        let changed = match (&old, &new) {
            (None, None) => false,
            (Some(a), Some(b)) => a.instances != b.instances,
            _ => true,
        };
        let endpoints_changed = match (&old, &new) {
            (None, None) => false,
            (Some(a), Some(b)) => a.passing != b.passing,
            (Some(a), None) | (None, Some(a)) => !a.passing.is_empty(),
        };
        if endpoints_changed {
            self.changes.send_modify(|g| *g += 1);
        }
        changed
    }

    /// A service's view.
    pub fn service(&self, service: &str) -> Option<Arc<ServiceView>> {
        self.services
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(service)
            .cloned()
    }

    /// Every service's view, ordered by name.
    pub fn all(&self) -> Vec<(String, Arc<ServiceView>)> {
        let mut all: Vec<_> = self
            .services
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// One instance.
    pub fn instance(&self, service: &str, id: &str) -> Option<Instance> {
        let view = self.service(service)?;
        let pos = view
            .instances
            .binary_search_by(|i| i.id.as_str().cmp(id))
            .ok()?;
        view.instances.get(pos).cloned()
    }

    /// Names of every service.
    pub fn names(&self) -> Vec<String> {
        self.all().into_iter().map(|(k, _)| k).collect()
    }
}

impl Discovery for Snapshot {
    fn endpoints(&self, service: &str, tags: &[String]) -> Arc<[Endpoint]> {
        let services = self.services.read().unwrap_or_else(PoisonError::into_inner);
        match services.get(service) {
            Some(view) if tags.is_empty() => view.passing.clone(),
            Some(view) => view.with_tags(tags),
            None => Arc::from(Vec::new()),
        }
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}
