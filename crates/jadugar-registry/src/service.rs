//! The registry's domain logic over a [`RegistryStore`]: no HTTP, no SQL.
//!
//! [`Registry`] is cheap to clone (one `Arc`). It keeps the discovery
//! [`Snapshot`] and the watch [`Hub`] in step with the store: every
//! mutation writes the store, reloads the touched service into the
//! snapshot, then publishes the change (so a woken watcher already sees
//! the new state).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use jadugar_core::outbound::AddressPolicy;
use jadugar_core::storage::{Database, Redis};
use jadugar_core::{Discovery, Endpoint, Principal, Sealer, SharedClock};
use rand::Rng;
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::discovery::Snapshot;
use crate::model::{
    Address, Change, CheckSpec, ConfigEntry, ConfigPut, Instance, InstanceFilter, NewConfig,
    Registration, ServiceSummary, Status, StoredConfig, Topic, ValueKind, validate_instance_id,
    validate_key, validate_namespace, validate_service_name,
};
use crate::store::{MemoryStore, RegistryStore, RemoteEvent};
use crate::watch::Hub;
use crate::{Config, Error};

use crate::StoreKind;

const CAS_RETRIES: usize = 8;
/// Longest wait of a local change for the other hosts' earlier ones.
const ANNOUNCE_WAIT: Duration = Duration::from_secs(2);

/// The registry; see the [module docs](self) and the [crate docs](crate).
#[derive(Clone)]
pub struct Registry {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) config: Config,
    pub(crate) store: Arc<dyn RegistryStore>,
    pub(crate) clock: SharedClock,
    sealer: Sealer,
    pub(crate) hub: Hub,
    pub(crate) snapshot: Snapshot,
    pub(crate) host_id: String,
    guard: Mutex<HashMap<String, DateTime<Utc>>>,
    pub(crate) policy: AddressPolicy,
    pub(crate) claim_now: Notify,
    pub(crate) probes: Semaphore,
    /// Held from a store write until its change is in the snapshot and the
    /// hub; see [`Registry::apply`].
    write: tokio::sync::Mutex<()>,
    /// Held while the snapshot changes, across the store read of a reload,
    /// so a slow reload never overwrites a newer state.
    reloading: tokio::sync::Mutex<()>,
    /// Whether the change listener runs (the hub then hears of every
    /// other host's change).
    listening: AtomicBool,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("host_id", &self.inner.host_id)
            .field("store", &self.inner.store)
            .finish_non_exhaustive()
    }
}

/// Instances of a service as of a change index.
#[derive(Debug, Clone)]
pub struct InstanceList {
    /// The service's change index.
    pub index: u64,
    /// The matching instances, ordered by id.
    pub instances: Vec<Instance>,
}

/// Config entries as of a change index.
#[derive(Debug, Clone)]
pub struct ConfigList {
    /// The registry's change index when listed.
    pub index: u64,
    /// The entries, ordered by key, secrets redacted.
    pub entries: Vec<ConfigEntry>,
}

impl Registry {
    /// A registry over `store`, loading its current state.
    pub async fn new(
        config: Config,
        store: Arc<dyn RegistryStore>,
        clock: SharedClock,
        sealer: Sealer,
    ) -> Result<Self, Error> {
        let invalid = config.validate();
        if !invalid.is_empty() {
            return Err(Error::Validation(invalid));
        }
        let start = store.current_index().await?;
        let policy = config.address_policy();
        let inner = Inner {
            hub: Hub::new(start, config.history_size),
            snapshot: Snapshot::new(),
            host_id: format!("host-{}", uuid::Uuid::now_v7().simple()),
            guard: Mutex::new(HashMap::new()),
            probes: Semaphore::new(config.max_concurrent_checks.max(1)),
            claim_now: Notify::new(),
            write: tokio::sync::Mutex::new(()),
            reloading: tokio::sync::Mutex::new(()),
            listening: AtomicBool::new(false),
            policy,
            config,
            store,
            clock,
            sealer,
        };
        let registry = Self {
            inner: Arc::new(inner),
        };
        registry.reload_all().await?;
        Ok(registry)
    }

    /// A registry kept in memory only.
    pub async fn in_memory(
        config: Config,
        clock: SharedClock,
        sealer: Sealer,
    ) -> Result<Self, Error> {
        Self::new(config, Arc::new(MemoryStore::new()), clock, sealer).await
    }

    /// Builds the registry from the host's backends, running migrations:
    /// [`StoreKind::Database`] (default) keeps state in `database` (SQLite
    /// for one host, Postgres for many), [`StoreKind::Redis`] in `redis`,
    /// [`StoreKind::Memory`] nowhere durable.
    pub async fn from_backends(
        config: &Config,
        database: &Database,
        redis: Option<&Redis>,
        clock: SharedClock,
        sealer: Sealer,
    ) -> Result<Self, Error> {
        let store: Arc<dyn RegistryStore> = match config.store {
            StoreKind::Memory => Arc::new(MemoryStore::new()),
            StoreKind::Database => database_store(database).await?,
            StoreKind::Redis => redis_store(redis).await?,
        };
        Self::new(config.clone(), store, clock, sealer).await
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn RegistryStore> {
        &self.inner.store
    }

    /// The change hub.
    pub fn hub(&self) -> &Hub {
        &self.inner.hub
    }

    /// The discovery snapshot.
    pub fn snapshot(&self) -> &Snapshot {
        &self.inner.snapshot
    }

    /// This host's id (the owner name of its check leases).
    pub fn host_id(&self) -> &str {
        &self.inner.host_id
    }

    /// A [`Discovery`] for the gateway (the registry itself, shared).
    pub fn discovery(&self) -> Arc<dyn Discovery> {
        Arc::new(self.clone())
    }

    fn now(&self) -> DateTime<Utc> {
        self.inner.clock.now()
    }

    /// Reloads every service into the snapshot and moves the hub to the
    /// store's current index.
    pub async fn reload_all(&self) -> Result<(), Error> {
        let _reloading = self.inner.reloading.lock().await;
        let current = self.inner.store.current_index().await?;
        let all = self.inner.store.list_instances(None).await?;
        let mut by_service: BTreeMap<String, Vec<Instance>> = BTreeMap::new();
        for instance in all {
            by_service
                .entry(instance.service.clone())
                .or_default()
                .push(instance);
        }
        let mut names: HashSet<String> = self.inner.snapshot.names().into_iter().collect();
        let mut moved = Vec::new();
        for (service, instances) in by_service {
            names.remove(&service);
            let max = instances.iter().map(|i| i.modify_index).max().unwrap_or(0);
            let topic = Topic::Service {
                service: service.clone(),
            };
            self.inner.hub.observe(topic.clone(), max);
            if self.inner.snapshot.set_service(&service, instances, 0) {
                moved.push(topic);
            }
        }
        for gone in names {
            self.inner.snapshot.set_service(&gone, Vec::new(), 0);
            moved.push(Topic::Service { service: gone });
        }
        self.inner.hub.resync(current, moved);
        Ok(())
    }

    async fn refresh_service(&self, service: &str, index: u64) -> Result<(), Error> {
        let _reloading = self.inner.reloading.lock().await;
        self.load_service(service, index).await
    }

    /// Reads a service into the snapshot; the caller holds `reloading`.
    async fn load_service(&self, service: &str, index: u64) -> Result<(), Error> {
        let instances = self.inner.store.list_instances(Some(service)).await?;
        self.inner.snapshot.set_service(service, instances, index);
        Ok(())
    }

    async fn changed_service(&self, service: &str, index: u64) -> Result<(), Error> {
        let refreshed = self.refresh_service(service, index).await;
        // The change is committed: watchers hear of it even if the reload
        // failed (the next change of the service reloads it again).
        self.publish_service(service, index).await;
        refreshed
    }

    /// After writing `instance` (with its new `modify_index`): updates the
    /// snapshot in place (no store read) unless a later change got there
    /// first, then publishes.
    async fn changed_instance(&self, instance: &Instance) -> Result<(), Error> {
        let index = instance.modify_index;
        let refreshed = {
            let _reloading = self.inner.reloading.lock().await;
            if self.inner.snapshot.upsert(instance.clone()) {
                Ok(())
            } else {
                self.load_service(&instance.service, index).await
            }
        };
        self.publish_service(&instance.service, index).await;
        refreshed
    }

    /// Runs `work` (a store write and the snapshot update and publish that
    /// follow it) as one unit. It runs in a task of its own, so a caller
    /// that goes away (a client disconnecting mid-request) cannot leave a
    /// committed change out of the snapshot and unannounced; and under the
    /// write lock, so this host's changes reach the hub in the order the
    /// store indexed them (a watcher that saw index `n` never misses a
    /// smaller one published late; see also [`announce`](Self::announce)).
    async fn apply<T, F, Fut>(&self, work: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(Registry) -> Fut,
        Fut: Future<Output = Result<T, Error>> + Send + 'static,
    {
        let registry = self.clone();
        let work = work(self.clone());
        let task = tokio::spawn(async move {
            let _write = registry.inner.write.lock().await;
            work.await
        });
        match task.await {
            Ok(result) => result,
            Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
            Err(_) => Err(Error::Interrupted),
        }
    }

    async fn publish_service(&self, service: &str, index: u64) {
        self.announce(Change {
            index,
            topic: Topic::Service {
                service: service.to_owned(),
            },
        })
        .await;
    }

    /// Publishes a change this host committed. On a shared store the
    /// index is gap-free and every other host's change reaches the hub
    /// through the listener, in index order; waiting (briefly) for the one
    /// before ours keeps the hub in index order across hosts too. A lost
    /// notification ends the wait through the listener's resync, or the
    /// timeout.
    async fn announce(&self, change: Change) {
        let hub = &self.inner.hub;
        if self.inner.listening.load(Ordering::Acquire) {
            let before = change.index.saturating_sub(1);
            hub.wait_until(Instant::now() + ANNOUNCE_WAIT, || hub.current() >= before)
                .await;
        }
        hub.publish(change);
    }

    /// Registers (or re-registers) an instance. Idempotent: the same
    /// registration again only renews its TTL and takes no change index.
    pub async fn register(
        &self,
        service: &str,
        id: &str,
        registration: Registration,
    ) -> Result<Instance, Error> {
        self.register_created(service, id, registration)
            .await
            .map(|(instance, _)| instance)
    }

    /// [`register`](Self::register), also telling whether the instance is
    /// new (HTTP answers 201 then).
    pub async fn register_created(
        &self,
        service: &str,
        id: &str,
        registration: Registration,
    ) -> Result<(Instance, bool), Error> {
        let mut errors = Vec::new();
        if let Err(e) = validate_service_name(service) {
            errors.push(e);
        }
        if let Err(e) = validate_instance_id(id) {
            errors.push(e);
        }
        if let Err(mut e) = registration.validate(&self.inner.config) {
            errors.append(&mut e);
        }
        if !errors.is_empty() {
            return Err(Error::Validation(errors));
        }
        for _ in 0..CAS_RETRIES {
            let now = self.now();
            let existing = self.inner.store.get_instance(service, id).await?;
            let deadline = registration
                .ttl_secs
                .map(|ttl| now + chrono::Duration::seconds(i64::try_from(ttl).unwrap_or(86_400)));
            if let Some(existing) = &existing
                && same_registration(existing, &registration)
                && !existing.ttl_expired
            {
                if let Some(deadline) = deadline {
                    self.inner
                        .store
                        .touch_instance(service, id, deadline)
                        .await?;
                }
                let mut current = existing.clone();
                current.ttl_deadline = deadline.or(current.ttl_deadline);
                return Ok((current, false));
            }
            let same_check = existing
                .as_ref()
                .is_some_and(|e| e.check == registration.check);
            let mut instance = Instance {
                service: service.to_owned(),
                id: id.to_owned(),
                address: registration.address.clone(),
                tags: registration.tags.clone(),
                metadata: registration.metadata.clone(),
                weight: registration.weight,
                status: Status::Passing,
                ttl_secs: registration.ttl_secs,
                check_status: match (&registration.check, &existing) {
                    (None, _) => None,
                    (Some(_), Some(e)) if same_check => e.check_status,
                    (Some(_), _) => Some(Status::Critical),
                },
                check_output: if same_check {
                    existing.as_ref().and_then(|e| e.check_output.clone())
                } else {
                    None
                },
                check: registration.check.clone(),
                ttl_expired: false,
                maintenance: existing.as_ref().and_then(|e| e.maintenance.clone()),
                ttl_deadline: deadline,
                critical_since: existing.as_ref().and_then(|e| e.critical_since),
                registered_at: existing.as_ref().map_or(now, |e| e.registered_at),
                updated_at: now,
                modify_index: 0,
            };
            instance.recompute(now);
            let if_index = Some(existing.as_ref().map_or(0, |e| e.modify_index));
            let written = self
                .apply(move |r| async move {
                    let Some(index) = r.inner.store.put_instance(&instance, if_index).await? else {
                        return Ok(None);
                    };
                    instance.modify_index = index;
                    r.changed_instance(&instance).await?;
                    Ok(Some(instance))
                })
                .await?;
            if let Some(instance) = written {
                if instance.check.is_some() {
                    self.inner.claim_now.notify_one();
                }
                return Ok((instance, existing.is_none()));
            }
        }
        Err(Error::Conflict { current: 0 })
    }

    /// Removes an instance.
    pub async fn deregister(&self, service: &str, id: &str) -> Result<(), Error> {
        validate_service_name(service)?;
        validate_instance_id(id)?;
        let (service, id) = (service.to_owned(), id.to_owned());
        self.apply(move |r| async move {
            match r.inner.store.delete_instance(&service, &id, None).await? {
                Some(index) => r.changed_service(&service, index).await,
                None => Err(Error::NotFound(format!("instance {id} of {service}"))),
            }
        })
        .await
    }

    /// Applies `update` to an instance with compare-and-set retries; no
    /// write when it returns `false`.
    pub(crate) async fn update_instance(
        &self,
        service: &str,
        id: &str,
        update: impl Fn(&mut Instance, DateTime<Utc>) -> bool + Send + 'static,
    ) -> Result<Instance, Error> {
        let (service, id) = (service.to_owned(), id.to_owned());
        // The read goes inside too: a heartbeat moves the deadline without
        // taking a change index, so the compare-and-set cannot see it, and
        // the time between reading and writing back must stay short.
        self.apply(move |r| async move {
            for _ in 0..CAS_RETRIES {
                let now = r.now();
                let Some(mut instance) = r.inner.store.get_instance(&service, &id).await? else {
                    return Err(Error::NotFound(format!("instance {id} of {service}")));
                };
                if !update(&mut instance, now) {
                    return Ok(instance);
                }
                instance.updated_at = now;
                instance.recompute(now);
                let expected = instance.modify_index;
                if let Some(index) = r
                    .inner
                    .store
                    .put_instance(&instance, Some(expected))
                    .await?
                {
                    instance.modify_index = index;
                    r.changed_instance(&instance).await?;
                    return Ok(instance);
                }
            }
            Err(Error::Conflict { current: 0 })
        })
        .await
    }

    /// A TTL heartbeat. [`Error::NotFound`] tells the client to register
    /// again.
    pub async fn heartbeat(&self, service: &str, id: &str) -> Result<Instance, Error> {
        validate_service_name(service)?;
        validate_instance_id(id)?;
        let gone = || Error::NotFound(format!("instance {id} of {service}"));
        let deadline = |ttl: u64, now: DateTime<Utc>| {
            now + chrono::Duration::seconds(i64::try_from(ttl).unwrap_or(86_400))
        };
        // The TTL from memory when known: the usual heartbeat is then one
        // touch and one read.
        let ttl = match self.inner.snapshot.instance(service, id) {
            Some(known) => known.ttl_secs,
            None => self.instance_latest(service, id).await?.ttl_secs,
        };
        let Some(ttl) = ttl else {
            return self.instance_latest(service, id).await;
        };
        // Touch first, then read: a sweep that saw the old deadline has
        // either written its expiry already (seen below, and revived) or
        // reads the instance again after the touch and leaves it alone.
        let now = self.now();
        if !self
            .inner
            .store
            .touch_instance(service, id, deadline(ttl, now))
            .await?
        {
            return Err(gone());
        }
        let mut instance = self
            .inner
            .store
            .get_instance(service, id)
            .await?
            .ok_or_else(gone)?;
        match instance.ttl_secs {
            Some(_) if instance.ttl_expired => {}
            Some(actual) if actual != ttl => {
                // Re-registered with another TTL since the snapshot.
                let renewed = deadline(actual, now);
                if !self
                    .inner
                    .store
                    .touch_instance(service, id, renewed)
                    .await?
                {
                    return Err(gone());
                }
                instance.ttl_deadline = Some(renewed);
                return Ok(instance);
            }
            _ => return Ok(instance),
        }
        self.update_instance(service, id, move |i, now| {
            let ttl = i.ttl_secs.unwrap_or(ttl);
            i.ttl_deadline = Some(deadline(ttl, now));
            i.ttl_expired = false;
            true
        })
        .await
    }

    /// Puts an instance in maintenance (with a reason) or takes it out.
    pub async fn set_maintenance(
        &self,
        service: &str,
        id: &str,
        enabled: bool,
        reason: Option<String>,
    ) -> Result<Instance, Error> {
        validate_service_name(service)?;
        validate_instance_id(id)?;
        if reason.as_ref().is_some_and(|r| r.len() > 512) {
            return Err(Error::field("reason", "at most 512 bytes"));
        }
        let wanted = enabled.then(|| reason.clone().unwrap_or_else(|| "maintenance".to_owned()));
        self.update_instance(service, id, move |i, _| {
            if i.maintenance == wanted {
                return false;
            }
            i.maintenance.clone_from(&wanted);
            true
        })
        .await
    }

    /// Records the result of a probe of `probed` with `spec`. A result for
    /// an address or check the instance no longer has (it re-registered
    /// while the probe ran) says nothing about it and is dropped.
    pub(crate) async fn set_check_status(
        &self,
        service: &str,
        id: &str,
        probed: (&Address, &CheckSpec),
        status: Status,
        output: &str,
    ) -> Result<(), Error> {
        let output = output.to_owned();
        let (address, spec) = (probed.0.clone(), probed.1.clone());
        self.update_instance(service, id, move |i, _| {
            if i.address != address
                || i.check.as_ref() != Some(&spec)
                || (i.check_status == Some(status) && i.check_output.as_ref() == Some(&output))
            {
                return false;
            }
            i.check_status = Some(status);
            i.check_output = Some(output.clone());
            true
        })
        .await
        .map(|_| ())
    }

    /// One instance, from the snapshot.
    pub fn instance(&self, service: &str, id: &str) -> Result<Instance, Error> {
        self.inner
            .snapshot
            .instance(service, id)
            .ok_or_else(|| Error::NotFound(format!("instance {id} of {service}")))
    }

    /// One instance as stored, with the TTL deadline of its latest
    /// heartbeat (heartbeats take no change index, so the snapshot keeps
    /// the deadline of the instance's last change).
    pub async fn instance_latest(&self, service: &str, id: &str) -> Result<Instance, Error> {
        validate_service_name(service)?;
        validate_instance_id(id)?;
        self.inner
            .store
            .get_instance(service, id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("instance {id} of {service}")))
    }

    /// A service's instances matching `filter`, from the snapshot.
    pub fn instances(&self, service: &str, filter: &InstanceFilter) -> InstanceList {
        let index = self.inner.hub.topic_index(&Topic::Service {
            service: service.to_owned(),
        });
        let instances = self
            .inner
            .snapshot
            .service(service)
            .map(|view| {
                view.instances
                    .iter()
                    .filter(|i| filter.matches(i))
                    .map(|i| (**i).clone())
                    .collect()
            })
            .unwrap_or_default();
        InstanceList { index, instances }
    }

    /// Waits (up to `wait`) until the service changes past `since`, then
    /// lists it. Returns at once if it already has.
    pub async fn watch_instances(
        &self,
        service: &str,
        filter: &InstanceFilter,
        since: u64,
        wait: Duration,
    ) -> InstanceList {
        let topic = Topic::Service {
            service: service.to_owned(),
        };
        let hub = &self.inner.hub;
        hub.wait_until(Instant::now() + wait, || {
            hub.topic_index(&topic) > since || since > hub.current()
        })
        .await;
        self.instances(service, filter)
    }

    /// Every service with counts.
    pub fn services(&self) -> Vec<ServiceSummary> {
        let guard = self
            .inner
            .guard
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.inner
            .snapshot
            .all()
            .into_iter()
            .map(|(name, view)| {
                let count = |s: Status| view.instances.iter().filter(|i| i.status == s).count();
                ServiceSummary {
                    instances: view.instances.len(),
                    passing: count(Status::Passing),
                    warning: count(Status::Warning),
                    critical: count(Status::Critical),
                    maintenance: count(Status::Maintenance),
                    index: self.inner.hub.topic_index(&Topic::Service {
                        service: name.clone(),
                    }),
                    self_preservation: guard.contains_key(&name),
                    name,
                }
            })
            .collect()
    }

    /// Whether the mass-expiry guard is holding `service`'s expiries back.
    pub fn self_preservation(&self, service: &str) -> bool {
        self.inner
            .guard
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(service)
    }

    /// One sweep: expires TTLs (subject to the mass-expiry guard, see the
    /// [crate docs](crate)) and removes instances critical for longer than
    /// `deregister_critical_after_secs`. The background sweeper calls this
    /// every `sweep_interval_ms`; tests call it after moving a
    /// [`ManualClock`](jadugar_core::ManualClock).
    pub async fn sweep(&self) -> Result<(), Error> {
        let now = self.now();
        let config = &self.inner.config;
        let all = self.inner.store.list_instances(None).await?;
        let mut by_service: BTreeMap<&str, Vec<&Instance>> = BTreeMap::new();
        for instance in &all {
            by_service
                .entry(&instance.service)
                .or_default()
                .push(instance);
        }
        let remove_after = chrono::Duration::seconds(
            i64::try_from(config.deregister_critical_after_secs).unwrap_or(i64::MAX / 1000),
        );
        let guard_max = chrono::Duration::seconds(
            i64::try_from(config.guard_max_secs).unwrap_or(i64::MAX / 1000),
        );
        for (service, instances) in by_service {
            let live = instances
                .iter()
                .filter(|i| matches!(i.status, Status::Passing | Status::Warning))
                .count();
            let expiring: Vec<&Instance> = instances
                .iter()
                .copied()
                .filter(|i| {
                    matches!(i.status, Status::Passing | Status::Warning)
                        && !i.ttl_expired
                        && i.ttl_secs.is_some()
                        && i.ttl_deadline.is_some_and(|d| d < now)
                })
                .collect();
            #[allow(clippy::cast_precision_loss)]
            let mass = !expiring.is_empty()
                && config.guard_expiry_share < 1.0
                && live >= config.guard_min_instances.max(1)
                && expiring.len() as f64 > config.guard_expiry_share * live as f64;
            let hold = {
                let mut guard = self
                    .inner
                    .guard
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if mass {
                    let since = *guard.entry(service.to_owned()).or_insert_with(|| {
                        tracing::warn!(
                            service,
                            expiring = expiring.len(),
                            live,
                            "mass expiry: self-preservation holds the last healthy set"
                        );
                        now
                    });
                    if now - since < guard_max {
                        true
                    } else {
                        guard.remove(service);
                        false
                    }
                } else {
                    // Whatever expires now is an ordinary expiry, carried
                    // out below: nothing is held back, so no flag.
                    guard.remove(service);
                    false
                }
            };
            if !hold {
                for instance in expiring {
                    let (service, id, listed) = (
                        service.to_owned(),
                        instance.id.clone(),
                        instance.modify_index,
                    );
                    self.apply(move |r| async move {
                        // A heartbeat since the listing moved the deadline
                        // without taking a change index, so the
                        // compare-and-set would not notice it: read again.
                        let Some(mut expired) = r.inner.store.get_instance(&service, &id).await?
                        else {
                            return Ok(());
                        };
                        if expired.modify_index != listed
                            || expired.ttl_expired
                            || expired.ttl_secs.is_none()
                            || expired.ttl_deadline.is_none_or(|d| d >= now)
                        {
                            return Ok(());
                        }
                        expired.ttl_expired = true;
                        expired.updated_at = now;
                        expired.recompute(now);
                        if let Some(index) =
                            r.inner.store.put_instance(&expired, Some(listed)).await?
                        {
                            expired.modify_index = index;
                            r.changed_instance(&expired).await?;
                        }
                        Ok(())
                    })
                    .await?;
                }
            }
            if config.deregister_critical_after_secs > 0 {
                for instance in &instances {
                    let expired_long = instance.status == Status::Critical
                        && instance
                            .critical_since
                            .is_some_and(|s| now - s >= remove_after);
                    if !expired_long {
                        continue;
                    }
                    let (service, id, expected) = (
                        service.to_owned(),
                        instance.id.clone(),
                        instance.modify_index,
                    );
                    self.apply(move |r| async move {
                        let deleted = r
                            .inner
                            .store
                            .delete_instance(&service, &id, Some(expected))
                            .await?;
                        if let Some(index) = deleted {
                            tracing::info!(service, id, "removed long-critical instance");
                            r.changed_service(&service, index).await?;
                        }
                        Ok(())
                    })
                    .await?;
                }
            }
        }
        Ok(())
    }

    /// Applies a change reported by the shared store.
    pub(crate) async fn apply_remote(&self, event: RemoteEvent) -> Result<(), Error> {
        match event {
            RemoteEvent::Resync => self.reload_all().await,
            RemoteEvent::Change(change) => {
                if self.inner.hub.knows(change.index) {
                    return Ok(());
                }
                let mut refreshed = Ok(());
                if let Topic::Service { service } = &change.topic {
                    refreshed = self.refresh_service(service, change.index).await;
                    if self
                        .inner
                        .snapshot
                        .service(service)
                        .is_some_and(|v| v.instances.iter().any(|i| i.check.is_some()))
                    {
                        self.inner.claim_now.notify_one();
                    }
                }
                // Published even if the reload failed: watchers and this
                // host's own writes (see `announce`) wait for the index.
                self.inner.hub.publish(change);
                refreshed
            }
        }
    }

    /// Starts the background work: the TTL sweeper, the active checker and
    /// the change listener (for shared stores). Each stops promptly when
    /// `cancel` fires.
    pub fn start(&self, cancel: CancellationToken) -> Vec<JoinHandle<()>> {
        vec![
            tokio::spawn(sweeper(self.clone(), cancel.clone())),
            tokio::spawn(crate::checker::run(self.clone(), cancel.clone())),
            tokio::spawn(listener(self.clone(), cancel)),
        ]
    }

    // ---- configuration ----

    fn aad(namespace: &str, key: &str) -> Vec<u8> {
        format!("registry-config:{namespace}/{key}").into_bytes()
    }

    fn reveal(&self, stored: StoredConfig, reveal: bool) -> Result<ConfigEntry, Error> {
        let (value, redacted) = if stored.deleted {
            (serde_json::Value::Null, false)
        } else if stored.secret && !reveal {
            (serde_json::Value::Null, true)
        } else {
            let text = if stored.secret {
                let opened = self
                    .inner
                    .sealer
                    .open(&stored.value, &Self::aad(&stored.namespace, &stored.key))?;
                String::from_utf8(opened)
                    .map_err(|_| Error::Sealer(jadugar_core::SealerError::Malformed))?
            } else {
                stored.value
            };
            let value = match stored.kind {
                ValueKind::Json => serde_json::from_str(&text)?,
                ValueKind::Text => serde_json::Value::String(text),
            };
            (value, false)
        };
        Ok(ConfigEntry {
            namespace: stored.namespace,
            key: stored.key,
            version: stored.version,
            value,
            kind: stored.kind,
            secret: stored.secret,
            redacted,
            deleted: stored.deleted,
            modify_index: stored.modify_index,
            updated_at: stored.updated_at,
            updated_by: stored.updated_by,
        })
    }

    fn check_names(namespace: &str, key: &str) -> Result<(), Error> {
        let mut errors = Vec::new();
        if let Err(e) = validate_namespace(namespace) {
            errors.push(e);
        }
        if let Err(e) = validate_key(key) {
            errors.push(e);
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(Error::Validation(errors))
        }
    }

    /// Appends a config version and announces it.
    async fn commit_config(
        &self,
        new: NewConfig,
        expected: Option<u64>,
    ) -> Result<StoredConfig, Error> {
        self.apply(move |r| async move {
            let stored = r.inner.store.config_put(&new, expected).await?;
            r.config_changed(&stored).await;
            Ok(stored)
        })
        .await
    }

    async fn config_changed(&self, stored: &StoredConfig) {
        self.announce(Change {
            index: stored.modify_index,
            topic: Topic::Config {
                namespace: stored.namespace.clone(),
                key: stored.key.clone(),
            },
        })
        .await;
    }

    /// Whether `principal` may see secret values.
    pub fn may_reveal(principal: &Principal) -> bool {
        principal.can("config:secrets:read")
    }

    /// The current value of a key (secrets shown only if `reveal`).
    pub async fn config_get(
        &self,
        namespace: &str,
        key: &str,
        reveal: bool,
    ) -> Result<ConfigEntry, Error> {
        Self::check_names(namespace, key)?;
        match self.inner.store.config_get(namespace, key).await? {
            Some(stored) if !stored.deleted => self.reveal(stored, reveal),
            _ => Err(Error::NotFound(format!("config key {key}"))),
        }
    }

    /// Waits (up to `wait`) until the key changes past `since`, then gets
    /// it (a deleted or absent key gives [`Error::NotFound`]).
    pub async fn config_watch(
        &self,
        namespace: &str,
        key: &str,
        since: u64,
        wait: Duration,
        reveal: bool,
    ) -> Result<ConfigEntry, Error> {
        Self::check_names(namespace, key)?;
        let stored_index = self
            .inner
            .store
            .config_get(namespace, key)
            .await?
            .map_or(0, |e| e.modify_index);
        if stored_index <= since {
            let topic = Topic::Config {
                namespace: namespace.to_owned(),
                key: key.to_owned(),
            };
            let hub = &self.inner.hub;
            hub.wait_until(Instant::now() + wait, || {
                hub.topic_index(&topic) > since || since > hub.current()
            })
            .await;
        }
        self.config_get(namespace, key, reveal).await
    }

    /// Writes a value. `put.expected_version` makes it a compare-and-set
    /// (0 = create only; [`Error::Conflict`] when the current version
    /// differs).
    pub async fn config_put(
        &self,
        namespace: &str,
        key: &str,
        put: ConfigPut,
        by: Option<String>,
    ) -> Result<ConfigEntry, Error> {
        Self::check_names(namespace, key)?;
        let text = match (put.kind, &put.value) {
            (ValueKind::Text, serde_json::Value::String(s)) => s.clone(),
            (ValueKind::Text, _) => {
                return Err(Error::field("value", "a string for kind text"));
            }
            (ValueKind::Json, value) => serde_json::to_string(value)?,
        };
        let max = self.inner.config.max_value_bytes;
        if text.len() > max {
            return Err(Error::TooLarge { max });
        }
        let value = if put.secret {
            self.inner
                .sealer
                .seal(text.as_bytes(), &Self::aad(namespace, key))
        } else {
            text
        };
        let new = NewConfig {
            namespace: namespace.to_owned(),
            key: key.to_owned(),
            value,
            kind: put.kind,
            secret: put.secret,
            deleted: false,
            at: self.now(),
            by,
        };
        let stored = self.commit_config(new, put.expected_version).await?;
        self.reveal(stored, false)
    }

    /// Deletes a key (a tombstone version; history stays). With
    /// `expected`, a compare-and-set.
    pub async fn config_delete(
        &self,
        namespace: &str,
        key: &str,
        expected: Option<u64>,
        by: Option<String>,
    ) -> Result<ConfigEntry, Error> {
        Self::check_names(namespace, key)?;
        let new = NewConfig {
            namespace: namespace.to_owned(),
            key: key.to_owned(),
            value: String::new(),
            kind: ValueKind::Text,
            secret: false,
            deleted: true,
            at: self.now(),
            by,
        };
        let stored = self.commit_config(new, expected).await?;
        self.reveal(stored, false)
    }

    /// Writes the value of an earlier `version` as a new version.
    pub async fn config_rollback(
        &self,
        namespace: &str,
        key: &str,
        version: u64,
        expected: Option<u64>,
        by: Option<String>,
    ) -> Result<ConfigEntry, Error> {
        Self::check_names(namespace, key)?;
        let Some(old) = self
            .inner
            .store
            .config_version(namespace, key, version)
            .await?
        else {
            return Err(Error::NotFound(format!("version {version} of {key}")));
        };
        if old.deleted {
            return Err(Error::field("version", "that version is a deletion"));
        }
        let new = NewConfig {
            namespace: namespace.to_owned(),
            key: key.to_owned(),
            value: old.value,
            kind: old.kind,
            secret: old.secret,
            deleted: false,
            at: self.now(),
            by,
        };
        let stored = self.commit_config(new, expected).await?;
        self.reveal(stored, false)
    }

    /// Every version of a key, oldest first.
    pub async fn config_history(
        &self,
        namespace: &str,
        key: &str,
        reveal: bool,
    ) -> Result<Vec<ConfigEntry>, Error> {
        Self::check_names(namespace, key)?;
        let versions = self.inner.store.config_history(namespace, key).await?;
        if versions.is_empty() {
            return Err(Error::NotFound(format!("config key {key}")));
        }
        versions
            .into_iter()
            .map(|v| self.reveal(v, reveal))
            .collect()
    }

    /// The keys of `namespace` starting with `prefix`, secrets redacted.
    pub async fn config_list(&self, namespace: &str, prefix: &str) -> Result<ConfigList, Error> {
        validate_namespace(namespace)?;
        if prefix.len() > 256 {
            return Err(Error::field("prefix", "at most 256 bytes"));
        }
        let index = self.inner.hub.current();
        let entries = self
            .inner
            .store
            .config_list(namespace, prefix)
            .await?
            .into_iter()
            .map(|e| self.reveal(e, false))
            .collect::<Result<_, _>>()?;
        Ok(ConfigList { index, entries })
    }

    /// Waits (up to `wait`) until a key under the prefix changes past
    /// `since`, then lists. Returns at once when `since` is older than the
    /// history (the caller gets the full list anyway).
    pub async fn config_watch_list(
        &self,
        namespace: &str,
        prefix: &str,
        since: u64,
        wait: Duration,
    ) -> Result<ConfigList, Error> {
        validate_namespace(namespace)?;
        let hub = &self.inner.hub;
        let matches = |t: &Topic| matches!(t, Topic::Config { namespace: ns, key } if ns == namespace && key.starts_with(prefix));
        hub.wait_until(Instant::now() + wait, || {
            since > hub.current()
                || hub
                    .changes_since(since, matches)
                    .map_or(true, |c| !c.is_empty())
        })
        .await;
        self.config_list(namespace, prefix).await
    }

    /// Clamps a requested blocking wait to the configured maximum and adds
    /// up to 1/16 of jitter (so many watchers don't return in lockstep).
    pub fn blocking_wait(&self, requested: Option<Duration>) -> Duration {
        let config = &self.inner.config;
        let base = requested
            .unwrap_or(Duration::from_secs(config.default_wait_secs))
            .min(Duration::from_secs(config.max_wait_secs));
        let jitter_ms = u64::try_from(base.as_millis() / 16).unwrap_or(0);
        if jitter_ms == 0 {
            base
        } else {
            base + Duration::from_millis(rand::thread_rng().gen_range(0..=jitter_ms))
        }
    }

    /// A receiver woken on every change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.hub.subscribe()
    }
}

fn same_registration(existing: &Instance, registration: &Registration) -> bool {
    existing.address == registration.address
        && existing.tags == registration.tags
        && existing.metadata == registration.metadata
        && existing.weight == registration.weight
        && existing.ttl_secs == registration.ttl_secs
        && existing.check == registration.check
}

async fn database_store(database: &Database) -> Result<Arc<dyn RegistryStore>, Error> {
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    {
        Ok(Arc::new(
            crate::store::SqlStore::new(database.clone()).await?,
        ))
    }
    #[cfg(not(any(feature = "sqlite", feature = "postgres")))]
    {
        let _ = database;
        Err(Error::BackendDisabled("sql"))
    }
}

async fn redis_store(redis: Option<&Redis>) -> Result<Arc<dyn RegistryStore>, Error> {
    let Some(redis) = redis else {
        return Err(Error::field(
            "registry.store",
            "store = \"redis\" needs a Redis connection",
        ));
    };
    #[cfg(feature = "redis")]
    {
        Ok(Arc::new(crate::store::RedisStore::new(redis.clone())))
    }
    #[cfg(not(feature = "redis"))]
    {
        let _ = redis;
        Err(Error::BackendDisabled("redis"))
    }
}

async fn sweeper(registry: Registry, cancel: CancellationToken) {
    let every = Duration::from_millis(registry.inner.config.sweep_interval_ms.max(10));
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        if let Err(err) = registry.sweep().await {
            tracing::warn!(error = %err, "registry sweep failed");
        }
    }
}

async fn listener(registry: Registry, cancel: CancellationToken) {
    if !registry.inner.store.shared() {
        cancel.cancelled().await;
        return;
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    let store = registry.inner.store.clone();
    let listen_cancel = cancel.clone();
    let listen = tokio::spawn(async move {
        if let Err(err) = store.listen(tx, listen_cancel).await {
            tracing::warn!(error = %err, "registry change listener stopped");
        }
    });
    registry.inner.listening.store(true, Ordering::Release);
    loop {
        let event = tokio::select! {
            () = cancel.cancelled() => break,
            event = rx.recv() => event,
        };
        let Some(event) = event else { break };
        if let Err(err) = registry.apply_remote(event).await {
            tracing::warn!(error = %err, "could not apply a remote registry change");
        }
    }
    registry.inner.listening.store(false, Ordering::Release);
    let _ = listen.await;
}

impl Discovery for Registry {
    fn endpoints(&self, service: &str, tags: &[String]) -> Arc<[Endpoint]> {
        self.inner.snapshot.endpoints(service, tags)
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.inner.snapshot.changes()
    }
}

#[cfg(test)]
mod tests {
    use jadugar_core::{ManualClock, MasterKey};

    use super::*;

    #[tokio::test]
    async fn a_probe_result_for_a_replaced_registration_is_dropped() {
        let clock = ManualClock::default();
        let registry = Registry::in_memory(
            Config::default(),
            clock.shared(),
            Sealer::new(MasterKey::generate("k"), []),
        )
        .await
        .unwrap();
        let old = Address::new("http", "10.0.0.1", 8080);
        let check = CheckSpec::http("/health");
        let registration = Registration::new(old.clone()).with_check(check.clone());
        registry.register("web", "w1", registration).await.unwrap();
        // The instance re-registers elsewhere while a probe of the old
        // address is in flight.
        let new = Address::new("http", "10.0.0.2", 8080);
        let moved = Registration::new(new.clone()).with_check(check.clone());
        let before = registry.register("web", "w1", moved).await.unwrap();
        registry
            .set_check_status("web", "w1", (&old, &check), Status::Passing, "200 OK")
            .await
            .unwrap();
        let after = registry.instance_latest("web", "w1").await.unwrap();
        assert_eq!(after.check_status, before.check_status);
        assert_eq!(after.modify_index, before.modify_index, "nothing written");
        // A result for the registration as it is now is recorded.
        registry
            .set_check_status("web", "w1", (&new, &check), Status::Passing, "200 OK")
            .await
            .unwrap();
        let after = registry.instance_latest("web", "w1").await.unwrap();
        assert_eq!(after.check_status, Some(Status::Passing));
    }
}
