use std::collections::BTreeMap;
use std::sync::Mutex;

use chrono::{DateTime, Utc};

use super::{RouteStore, StoreError, StoredRoute};
use crate::model::RouteSpec;

/// Routes in process memory (one host, or tests).
#[derive(Debug, Default)]
pub struct MemoryRouteStore {
    inner: Mutex<(BTreeMap<String, StoredRoute>, i64)>,
}

impl MemoryRouteStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, (BTreeMap<String, StoredRoute>, i64)> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait::async_trait]
impl RouteStore for MemoryRouteStore {
    async fn list(&self) -> Result<(Vec<StoredRoute>, i64), StoreError> {
        let inner = self.lock();
        Ok((inner.0.values().cloned().collect(), inner.1))
    }

    async fn get(&self, id: &str) -> Result<Option<StoredRoute>, StoreError> {
        Ok(self.lock().0.get(id).cloned())
    }

    async fn create(
        &self,
        route: &RouteSpec,
        now: DateTime<Utc>,
    ) -> Result<StoredRoute, StoreError> {
        let mut inner = self.lock();
        if inner.0.contains_key(&route.id) {
            return Err(StoreError::AlreadyExists(route.id.clone()));
        }
        let stored = StoredRoute {
            route: route.clone(),
            revision: 1,
            updated_at: now,
        };
        inner.0.insert(route.id.clone(), stored.clone());
        inner.1 += 1;
        Ok(stored)
    }

    async fn update(
        &self,
        route: &RouteSpec,
        expected: Option<i64>,
        now: DateTime<Utc>,
    ) -> Result<StoredRoute, StoreError> {
        let mut inner = self.lock();
        let Some(current) = inner.0.get_mut(&route.id) else {
            return Err(StoreError::NotFound(route.id.clone()));
        };
        if expected.is_some_and(|e| e != current.revision) {
            return Err(StoreError::Conflict {
                id: route.id.clone(),
                current: current.revision,
            });
        }
        current.route = route.clone();
        current.revision += 1;
        current.updated_at = now;
        let stored = current.clone();
        inner.1 += 1;
        Ok(stored)
    }

    async fn delete(&self, id: &str, expected: Option<i64>) -> Result<(), StoreError> {
        let mut inner = self.lock();
        let Some(current) = inner.0.get(id) else {
            return Err(StoreError::NotFound(id.to_owned()));
        };
        if expected.is_some_and(|e| e != current.revision) {
            return Err(StoreError::Conflict {
                id: id.to_owned(),
                current: current.revision,
            });
        }
        inner.0.remove(id);
        inner.1 += 1;
        Ok(())
    }

    async fn version(&self) -> Result<i64, StoreError> {
        Ok(self.lock().1)
    }
}
