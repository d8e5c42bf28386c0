//! An in-process store for one host and for tests.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{RegistryStore, check_config_write};
use crate::Error;
use crate::model::{Instance, NewConfig, StoredConfig};

type Key = (String, String);
/// A check lease: the holding host and until when.
type Lease = Option<(String, DateTime<Utc>)>;

#[derive(Debug, Default)]
struct State {
    index: u64,
    instances: BTreeMap<Key, (Instance, Lease)>,
    config: BTreeMap<Key, Vec<StoredConfig>>,
}

/// Keeps everything in memory; nothing survives a restart.
///
/// ```
/// use jadugar_registry::store::{MemoryStore, RegistryStore};
/// # tokio_test_block(async {
/// let store = MemoryStore::new();
/// assert_eq!(store.current_index().await.unwrap(), 0);
/// # });
/// # fn tokio_test_block<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
/// # }
/// ```
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn key(a: &str, b: &str) -> Key {
    (a.to_owned(), b.to_owned())
}

#[async_trait]
impl RegistryStore for MemoryStore {
    async fn put_instance(
        &self,
        instance: &Instance,
        if_index: Option<u64>,
    ) -> Result<Option<u64>, Error> {
        let mut state = self.lock();
        let k = key(&instance.service, &instance.id);
        let existing = state.instances.get(&k);
        if let Some(expected) = if_index {
            let current = existing.map_or(0, |(i, _)| i.modify_index);
            if current != expected {
                return Ok(None);
            }
        }
        let lease = existing.and_then(|(_, l)| l.clone());
        state.index += 1;
        let index = state.index;
        let mut stored = instance.clone();
        stored.modify_index = index;
        state.instances.insert(k, (stored, lease));
        Ok(Some(index))
    }

    async fn delete_instance(
        &self,
        service: &str,
        id: &str,
        if_index: Option<u64>,
    ) -> Result<Option<u64>, Error> {
        let mut state = self.lock();
        let k = key(service, id);
        let Some((existing, _)) = state.instances.get(&k) else {
            return Ok(None);
        };
        if if_index.is_some_and(|i| i != existing.modify_index) {
            return Ok(None);
        }
        state.instances.remove(&k);
        state.index += 1;
        Ok(Some(state.index))
    }

    async fn touch_instance(
        &self,
        service: &str,
        id: &str,
        deadline: DateTime<Utc>,
    ) -> Result<bool, Error> {
        let mut state = self.lock();
        match state.instances.get_mut(&key(service, id)) {
            Some((instance, _)) => {
                instance.ttl_deadline = Some(deadline);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn get_instance(&self, service: &str, id: &str) -> Result<Option<Instance>, Error> {
        Ok(self
            .lock()
            .instances
            .get(&key(service, id))
            .map(|(i, _)| i.clone()))
    }

    async fn list_instances(&self, service: Option<&str>) -> Result<Vec<Instance>, Error> {
        let state = self.lock();
        Ok(state
            .instances
            .values()
            .filter(|(i, _)| service.is_none_or(|s| i.service == s))
            .map(|(i, _)| i.clone())
            .collect())
    }

    async fn claim_checks(
        &self,
        host: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<(String, String)>, Error> {
        let mut state = self.lock();
        let mut held = Vec::new();
        // Renew what is held first, then take free ones.
        for pass in 0..2 {
            for (k, (instance, lease)) in state.instances.iter_mut() {
                if held.len() >= limit || instance.check.is_none() {
                    continue;
                }
                let mine = lease.as_ref().is_some_and(|(h, _)| h == host);
                let free = lease.as_ref().is_none_or(|(_, u)| *u <= now);
                if (pass == 0 && mine) || (pass == 1 && !mine && free) {
                    *lease = Some((host.to_owned(), until));
                    held.push(k.clone());
                }
            }
        }
        held.sort();
        Ok(held)
    }

    async fn release_checks(&self, host: &str) -> Result<(), Error> {
        let mut state = self.lock();
        for (_, lease) in state.instances.values_mut() {
            if lease.as_ref().is_some_and(|(h, _)| h == host) {
                *lease = None;
            }
        }
        Ok(())
    }

    async fn config_get(&self, namespace: &str, key_: &str) -> Result<Option<StoredConfig>, Error> {
        Ok(self
            .lock()
            .config
            .get(&key(namespace, key_))
            .and_then(|v| v.last().cloned()))
    }

    async fn config_version(
        &self,
        namespace: &str,
        key_: &str,
        version: u64,
    ) -> Result<Option<StoredConfig>, Error> {
        Ok(self
            .lock()
            .config
            .get(&key(namespace, key_))
            .and_then(|v| v.iter().find(|e| e.version == version).cloned()))
    }

    async fn config_put(
        &self,
        new: &NewConfig,
        expected: Option<u64>,
    ) -> Result<StoredConfig, Error> {
        let mut state = self.lock();
        let k = key(&new.namespace, &new.key);
        let latest = state.config.get(&k).and_then(|v| v.last());
        let version = check_config_write(latest, new, expected)?;
        state.index += 1;
        let entry = StoredConfig {
            namespace: new.namespace.clone(),
            key: new.key.clone(),
            version,
            value: new.value.clone(),
            kind: new.kind,
            secret: new.secret,
            deleted: new.deleted,
            modify_index: state.index,
            updated_at: new.at,
            updated_by: new.by.clone(),
        };
        state.config.entry(k).or_default().push(entry.clone());
        Ok(entry)
    }

    async fn config_list(&self, namespace: &str, prefix: &str) -> Result<Vec<StoredConfig>, Error> {
        let state = self.lock();
        Ok(state
            .config
            .iter()
            .filter(|((ns, k), _)| ns == namespace && k.starts_with(prefix))
            .filter_map(|(_, versions)| versions.last())
            .filter(|e| !e.deleted)
            .cloned()
            .collect())
    }

    async fn config_history(
        &self,
        namespace: &str,
        key_: &str,
    ) -> Result<Vec<StoredConfig>, Error> {
        Ok(self
            .lock()
            .config
            .get(&key(namespace, key_))
            .cloned()
            .unwrap_or_default())
    }

    async fn current_index(&self) -> Result<u64, Error> {
        Ok(self.lock().index)
    }
}
