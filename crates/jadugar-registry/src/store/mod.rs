//! The registry's storage trait and its backends.
//!
//! A [`RegistryStore`] keeps instances, config versions and the change
//! index counter. Every mutation that watchers can see takes the next value
//! of one monotonic counter (the *change index*); an instance or config
//! version records the index of its last change, which is what blocking
//! queries compare against.
//!
//! Backends: [`MemoryStore`] (always), [`SqlStore`] over SQLite or Postgres
//! (features `sqlite`, `postgres`) and [`RedisStore`] (feature `redis`).
//! Shared backends (Postgres, Redis) also broadcast each change to the other
//! hosts ([`RegistryStore::listen`]).
//!
//! With feature `test-support`, [`conformance::run`] checks a backend
//! against the contract below; every backend in this crate runs it.

use std::fmt::Debug;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::Error;
use crate::model::{Change, Instance, NewConfig, StoredConfig};

pub mod memory;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub mod sql;

#[cfg(feature = "test-support")]
pub mod conformance;

pub use memory::MemoryStore;
#[cfg(feature = "redis")]
pub use redis::RedisStore;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub use sql::SqlStore;

/// What a shared store reports from other hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteEvent {
    /// A change committed by some host (possibly this one).
    Change(Change),
    /// Notifications may have been lost (the listener reconnected): reload
    /// everything.
    Resync,
}

/// Storage of instances, config versions and the change index; see the
/// [module docs](self).
///
/// Object-safe: the registry holds an `Arc<dyn RegistryStore>`.
#[async_trait]
pub trait RegistryStore: Debug + Send + Sync + 'static {
    /// Inserts or replaces `instance` (keyed by service and id), atomically
    /// taking the next change index, which is stored as its
    /// `modify_index` and returned. With `if_index = Some(i)` the write only
    /// happens when the stored instance's `modify_index` is `i` (`0`: when
    /// there is none); otherwise nothing changes and `None` is returned.
    /// A replacement keeps the stored check lease.
    async fn put_instance(
        &self,
        instance: &Instance,
        if_index: Option<u64>,
    ) -> Result<Option<u64>, Error>;

    /// Removes an instance, taking a change index (returned). `None` when
    /// absent or when `if_index` does not match.
    async fn delete_instance(
        &self,
        service: &str,
        id: &str,
        if_index: Option<u64>,
    ) -> Result<Option<u64>, Error>;

    /// A heartbeat: sets the TTL deadline without taking a change index.
    /// `false` when the instance is absent.
    async fn touch_instance(
        &self,
        service: &str,
        id: &str,
        deadline: DateTime<Utc>,
    ) -> Result<bool, Error>;

    /// One instance, with its latest TTL deadline.
    async fn get_instance(&self, service: &str, id: &str) -> Result<Option<Instance>, Error>;

    /// Every instance of `service` (or of every service), ordered by
    /// service then id.
    async fn list_instances(&self, service: Option<&str>) -> Result<Vec<Instance>, Error>;

    /// Claims or renews check leases for `host`: every instance with a check
    /// whose lease is held by `host` or expired at `now` becomes leased to
    /// `host` until `until` (at most `limit` instances, leases already held
    /// first). Returns the (service, id) pairs `host` now holds. Concurrent
    /// callers never both get the same instance.
    async fn claim_checks(
        &self,
        host: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<(String, String)>, Error>;

    /// Gives up every lease `host` holds (on shutdown).
    async fn release_checks(&self, host: &str) -> Result<(), Error>;

    /// The latest version of a key, tombstones included.
    async fn config_get(&self, namespace: &str, key: &str) -> Result<Option<StoredConfig>, Error>;

    /// One version of a key.
    async fn config_version(
        &self,
        namespace: &str,
        key: &str,
        version: u64,
    ) -> Result<Option<StoredConfig>, Error>;

    /// Appends a version (a tombstone when `new.deleted`), atomically: the
    /// current version is the latest non-deleted one's number, or 0. With
    /// `expected = Some(v)` and a current version other than `v`, fails with
    /// [`Error::Conflict`]. Deleting an absent key fails with
    /// [`Error::NotFound`]. The new version number is the latest + 1, and
    /// it takes a change index.
    async fn config_put(
        &self,
        new: &NewConfig,
        expected: Option<u64>,
    ) -> Result<StoredConfig, Error>;

    /// The latest non-deleted version of each key of `namespace` starting
    /// with `prefix`, ordered by key.
    async fn config_list(&self, namespace: &str, prefix: &str) -> Result<Vec<StoredConfig>, Error>;

    /// Every version of a key, oldest first.
    async fn config_history(&self, namespace: &str, key: &str) -> Result<Vec<StoredConfig>, Error>;

    /// The last change index taken.
    async fn current_index(&self) -> Result<u64, Error>;

    /// Whether several hosts share this store (then [`listen`](Self::listen)
    /// reports their changes).
    fn shared(&self) -> bool {
        false
    }

    /// Until `cancel`, sends every change committed through this store by
    /// any host to `sink`. Unshared stores just wait for `cancel`.
    async fn listen(
        &self,
        sink: mpsc::UnboundedSender<RemoteEvent>,
        cancel: CancellationToken,
    ) -> Result<(), Error> {
        let _ = sink;
        cancel.cancelled().await;
        Ok(())
    }
}

/// Current version number as CAS sees it: the latest version unless it is a
/// tombstone (then 0).
pub(crate) fn current_version(latest: Option<&StoredConfig>) -> u64 {
    match latest {
        Some(entry) if !entry.deleted => entry.version,
        _ => 0,
    }
}

/// Checks a config write against the latest stored version; returns the
/// new version number.
pub(crate) fn check_config_write(
    latest: Option<&StoredConfig>,
    new: &NewConfig,
    expected: Option<u64>,
) -> Result<u64, Error> {
    let current = current_version(latest);
    if new.deleted && current == 0 {
        return Err(Error::NotFound(format!("config key {}", new.key)));
    }
    if let Some(expected) = expected
        && expected != current
    {
        return Err(Error::Conflict { current });
    }
    Ok(latest.map_or(0, |e| e.version) + 1)
}
