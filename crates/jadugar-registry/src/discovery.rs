//! The in-memory snapshot discovery is served from.
//!
//! Each service's instances live in an immutable view behind one `RwLock`
//! read; the passing endpoints are precomputed as an `Arc<[Endpoint]>`, and
//! per-tag-filter results are cached in the view, so
//! [`Discovery::endpoints`] is a map lookup and an `Arc` clone. A change
//! replaces the whole view.
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
    pub instances: Arc<[Arc<Instance>]>,
    /// The passing endpoints.
    pub passing: Arc<[Endpoint]>,
    /// The highest change index applied to this view.
    pub applied: u64,
    by_tags: RwLock<HashMap<Vec<String>, Arc<[Endpoint]>>>,
}

impl ServiceView {
    fn new(instances: Vec<Arc<Instance>>, applied: u64) -> Self {
        let passing: Arc<[Endpoint]> = instances
            .iter()
            .filter(|i| i.status == Status::Passing)
            .map(|i| i.endpoint())
            .collect();
        let applied = instances
            .iter()
            .map(|i| i.modify_index)
            .max()
            .unwrap_or(0)
            .max(applied);
        Self {
            instances: instances.into(),
            passing,
            applied,
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
    empty: Arc<[Endpoint]>,
}

impl Default for Snapshot {
    fn default() -> Self {
        Self::new()
    }
}

fn same_members(a: &ServiceView, b: &ServiceView) -> bool {
    a.instances.len() == b.instances.len()
        && a.instances
            .iter()
            .zip(b.instances.iter())
            .all(|(x, y)| x.id == y.id && x.modify_index == y.modify_index)
}

impl Snapshot {
    /// No services.
    pub fn new() -> Self {
        Self {
            services: RwLock::new(HashMap::new()),
            changes: watch::channel(0).0,
            empty: Arc::from(Vec::new()),
        }
    }

    /// Replaces a service's instances (removing it when empty), as read
    /// from the store at or after change index `applied`. Returns whether
    /// the set of instances changed.
    pub fn set_service(&self, service: &str, instances: Vec<Instance>, applied: u64) -> bool {
        let mut instances: Vec<Arc<Instance>> = instances.into_iter().map(Arc::new).collect();
        instances.sort_by(|a, b| a.id.cmp(&b.id));
        let mut services = self
            .services
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        self.replace(&mut services, service, instances, applied)
    }

    /// Applies one written instance without reading the store. Returns
    /// `false` (and changes nothing) when the view already reflects a later
    /// change of the service, in which case the caller reloads the service.
    pub fn upsert(&self, instance: Instance) -> bool {
        let mut services = self
            .services
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let old = services.get(&instance.service).cloned();
        if old
            .as_ref()
            .is_some_and(|v| v.applied >= instance.modify_index)
        {
            return false;
        }
        let mut list: Vec<Arc<Instance>> = old.map(|v| v.instances.to_vec()).unwrap_or_default();
        let applied = instance.modify_index;
        let service = instance.service.clone();
        match list.binary_search_by(|i| i.id.as_str().cmp(&instance.id)) {
            Ok(pos) => {
                if let Some(slot) = list.get_mut(pos) {
                    *slot = Arc::new(instance);
                }
            }
            Err(pos) => list.insert(pos, Arc::new(instance)),
        }
        self.replace(&mut services, &service, list, applied);
        true
    }

    fn replace(
        &self,
        services: &mut HashMap<String, Arc<ServiceView>>,
        service: &str,
        instances: Vec<Arc<Instance>>,
        applied: u64,
    ) -> bool {
        let previous = services.get(service).map_or(0, |v| v.applied);
        let view = ServiceView::new(instances, applied.max(previous));
        let old = if view.instances.is_empty() {
            services.remove(service)
        } else {
            services.insert(service.to_owned(), Arc::new(view))
        };
        let new = services.get(service);
        let changed = match (&old, new) {
            (None, None) => false,
            (Some(a), Some(b)) => !same_members(a, b),
            _ => true,
        };
        let endpoints_changed = match (&old, new) {
            (None, None) => false,
            (Some(a), Some(b)) => a.passing != b.passing,
            (Some(a), None) => !a.passing.is_empty(),
            (None, Some(b)) => !b.passing.is_empty(),
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
        view.instances.get(pos).map(|i| (**i).clone())
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
            None => self.empty.clone(),
        }
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}
