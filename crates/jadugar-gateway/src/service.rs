//! Route management: validation, persistence, atomic application, and the
//! background work that keeps a host in step (store polling, discovery).

use std::sync::Arc;
use std::time::Duration;

use jadugar_core::FieldError;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

use crate::error::Error;
use crate::model::RouteSpec;
use crate::snapshot::{self, BuildContext, Snapshot};
use crate::store::StoredRoute;
use crate::{Gateway, Shared};

/// Where a route is defined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RouteSource {
    /// The configuration file (read-only through the API).
    Config,
    /// The route store (managed through the API).
    Store,
}

/// A route as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RouteView {
    /// The route.
    pub route: RouteSpec,
    /// Where it is defined.
    pub source: RouteSource,
    /// The stored revision (0 for configuration routes).
    pub revision: i64,
}

impl Shared {
    fn context(&self) -> BuildContext<'_> {
        BuildContext {
            config: &self.config,
            discovery: &*self.discovery,
            clients: &self.clients,
            redis: self.redis.as_ref(),
        }
    }

    pub(crate) fn compile(
        &self,
        stored: Vec<RouteSpec>,
        version: i64,
    ) -> Result<Snapshot, Vec<FieldError>> {
        let old = self.snapshot.load();
        snapshot::build(
            Arc::clone(&self.config_routes),
            stored,
            version,
            &self.context(),
            Some(&old),
        )
    }

    /// A route at or below a reserved prefix would never be reached.
    fn check_reserved(&self, route: &RouteSpec) -> Result<(), Error> {
        let path = route.path.as_str();
        match self.reserved.iter().find(|prefix| {
            path.strip_prefix(prefix.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        }) {
            Some(prefix) => Err(Error::Invalid(vec![FieldError::new(
                "path",
                format!(
                    "{prefix} is served by the application itself: requests there never reach the gateway"
                ),
            )])),
            None => Ok(()),
        }
    }

    pub(crate) async fn reload(&self) -> Result<(), Error> {
        let _guard = self.admin.lock().await;
        self.reload_locked().await
    }

    async fn reload_locked(&self) -> Result<(), Error> {
        let (stored, version) = self.store.list().await?;
        let specs = stored.into_iter().map(|s| s.route).collect();
        let snapshot = self.compile(specs, version).map_err(Error::Invalid)?;
        self.snapshot.store(Arc::new(snapshot));
        Ok(())
    }

    fn check_candidate(
        &self,
        mut specs: Vec<RouteSpec>,
        changed: Option<&RouteSpec>,
    ) -> Result<(), Error> {
        let index = changed.map(|c| {
            specs.push(c.clone());
            self.config_routes.len() + specs.len() - 1
        });
        let prefix = index.map(|i| format!("routes[{i}]."));
        self.compile(specs, 0).map(|_| ()).map_err(|errors| {
            Error::Invalid(
                errors
                    .into_iter()
                    .map(
                        |e| match prefix.as_deref().and_then(|p| e.field.strip_prefix(p)) {
                            Some(rest) => FieldError::new(rest, e.message),
                            None => e,
                        },
                    )
                    .collect(),
            )
        })
    }

    /// The stored routes in effect, but `id`.
    fn current_specs_except(&self, id: &str) -> Vec<RouteSpec> {
        self.snapshot
            .load()
            .stored
            .iter()
            .filter(|s| s.id != id)
            .cloned()
            .collect()
    }

    fn is_config_route(&self, id: &str) -> bool {
        self.config_routes.iter().any(|r| r.id == id)
    }
}

impl Gateway {
    /// Every route: configuration routes first, then stored ones by id.
    pub async fn list_routes(&self) -> Result<Vec<RouteView>, Error> {
        let mut out: Vec<RouteView> = self
            .shared
            .config_routes
            .iter()
            .map(|r| RouteView {
                route: r.clone(),
                source: RouteSource::Config,
                revision: 0,
            })
            .collect();
        let (mut stored, _) = self.shared.store.list().await?;
        // Byte order whatever the database's collation: admin cursors
        // resume by comparing ids.
        stored.sort_unstable_by(|a, b| a.route.id.cmp(&b.route.id));
        out.extend(stored.into_iter().map(|s| RouteView {
            route: s.route,
            source: RouteSource::Store,
            revision: s.revision,
        }));
        Ok(out)
    }

    /// One route.
    pub async fn get_route(&self, id: &str) -> Result<RouteView, Error> {
        if let Some(r) = self.shared.config_routes.iter().find(|r| r.id == id) {
            return Ok(RouteView {
                route: r.clone(),
                source: RouteSource::Config,
                revision: 0,
            });
        }
        match self.shared.store.get(id).await? {
            Some(s) => Ok(view(s)),
            None => Err(Error::NotFound(id.to_owned())),
        }
    }

    /// Validates, stores and applies a new route. A route that is invalid,
    /// or that conflicts with the others, is rejected with the reason and
    /// nothing changes.
    pub async fn create_route(&self, route: RouteSpec) -> Result<RouteView, Error> {
        route.validate().map_err(Error::Invalid)?;
        self.shared.check_reserved(&route)?;
        let shared = &self.shared;
        let _guard = shared.admin.lock().await;
        if shared.is_config_route(&route.id) {
            return Err(Error::ReadOnly(route.id));
        }
        shared.check_candidate(shared.current_specs_except(&route.id), Some(&route))?;
        let stored = shared.store.create(&route, shared.clock.now()).await?;
        shared.reload_locked().await?;
        shared.announce_change().await;
        Ok(view(stored))
    }

    /// Validates, stores and applies a changed route, if at revision
    /// `expected` when given.
    pub async fn update_route(
        &self,
        route: RouteSpec,
        expected: Option<i64>,
    ) -> Result<RouteView, Error> {
        route.validate().map_err(Error::Invalid)?;
        self.shared.check_reserved(&route)?;
        let shared = &self.shared;
        let _guard = shared.admin.lock().await;
        if shared.is_config_route(&route.id) {
            return Err(Error::ReadOnly(route.id));
        }
        shared.check_candidate(shared.current_specs_except(&route.id), Some(&route))?;
        let stored = shared
            .store
            .update(&route, expected, shared.clock.now())
            .await?;
        shared.reload_locked().await?;
        shared.announce_change().await;
        Ok(view(stored))
    }

    /// Removes a stored route, if at revision `expected` when given.
    pub async fn delete_route(&self, id: &str, expected: Option<i64>) -> Result<(), Error> {
        let shared = &self.shared;
        let _guard = shared.admin.lock().await;
        if shared.is_config_route(id) {
            return Err(Error::ReadOnly(id.to_owned()));
        }
        shared.store.delete(id, expected).await?;
        shared.reload_locked().await?;
        shared.announce_change().await;
        Ok(())
    }

    /// Reloads routes from the store now (what the sync task does when the
    /// store version changes).
    pub async fn reload(&self) -> Result<(), Error> {
        self.shared.reload().await
    }

    /// Starts the background work: applying route changes made on other
    /// hosts, and following `Discovery` changes. Other hosts' changes
    /// arrive as notifications where the backends push them (Postgres
    /// `LISTEN/NOTIFY`, Redis pub/sub when Redis is configured), applied
    /// within milliseconds; polling the store version every
    /// `sync_interval_ms` stays as the fallback. Every task stops promptly
    /// when `cancel` is cancelled.
    pub fn spawn_background(&self, cancel: CancellationToken) -> Vec<JoinHandle<()>> {
        let wake = Arc::new(tokio::sync::Notify::new());
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(listen_store(
            self.shared.clone(),
            wake.clone(),
            cancel.clone(),
        )));
        #[cfg(feature = "redis")]
        if let Some(redis) = self.shared.redis.clone() {
            tasks.push(tokio::spawn(listen_redis(
                redis,
                wake.clone(),
                cancel.clone(),
            )));
        }
        let sync = {
            let shared = self.shared.clone();
            let cancel = cancel.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(
                    shared.config.sync_interval_ms.max(50),
                ));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        _ = tick.tick() => {}
                        () = wake.notified() => {}
                    }
                    match shared.store.version().await {
                        Ok(v) if v != shared.snapshot.load().version => {
                            if let Err(e) = shared.reload().await {
                                tracing::error!(error = %e, "applying stored routes failed; keeping the previous ones");
                            }
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "route store unreachable"),
                    }
                }
            })
        };
        let discovery = {
            let shared = self.shared.clone();
            tokio::spawn(async move {
                let mut changes = shared.discovery.changes();
                loop {
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        changed = changes.changed() => if changed.is_err() { return },
                    }
                    shared.refresh_discovery();
                }
            })
        };
        tasks.push(sync);
        tasks.push(discovery);
        tasks
    }
}

/// Wakes the sync task on every change notification from the store.
async fn listen_store(
    shared: Arc<Shared>,
    wake: Arc<tokio::sync::Notify>,
    cancel: CancellationToken,
) {
    use futures_util::StreamExt as _;
    loop {
        let changes = tokio::select! {
            () = cancel.cancelled() => return,
            c = shared.store.changes() => c,
        };
        match changes {
            // The backend pushes nothing: polling it is.
            Ok(None) => return,
            Ok(Some(mut changes)) => {
                // Changes made before listening started are not notified.
                wake.notify_one();
                loop {
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        hint = changes.next() => match hint {
                            Some(()) => wake.notify_one(),
                            None => break,
                        },
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot listen for route changes; polling"),
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

/// The Redis channel (under the key prefix) announcing route changes.
#[cfg(feature = "redis")]
const REDIS_CHANNEL: &str = "gateway:routes";

/// Wakes the sync task on every route change announced through Redis, and
/// on every (re)subscription, since announcements made while unsubscribed
/// are lost.
#[cfg(feature = "redis")]
async fn listen_redis(
    redis: jadugar_core::storage::Redis,
    wake: Arc<tokio::sync::Notify>,
    cancel: CancellationToken,
) {
    let mut events = redis.subscribe(REDIS_CHANNEL);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            event = events.recv() => match event {
                Some(_) => wake.notify_one(),
                None => return,
            },
        }
    }
}

impl Shared {
    /// Announces a route change to the other hosts through Redis (when
    /// configured); a failure only delays them until their next poll.
    async fn announce_change(&self) {
        #[cfg(feature = "redis")]
        if let Some(redis) = &self.redis {
            let mut conn = redis.connection();
            let version = self.snapshot.load().version;
            let mut cmd = redis::cmd("PUBLISH");
            cmd.arg(redis.key(REDIS_CHANNEL)).arg(version);
            let publish = cmd.query_async::<i64>(&mut conn);
            let timeout = Duration::from_millis(self.config.redis_timeout_ms.max(100));
            match tokio::time::timeout(timeout, publish).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "announcing a route change on Redis failed")
                }
                Err(_) => tracing::warn!("announcing a route change on Redis timed out"),
            }
        }
    }
}

impl Shared {
    /// Re-reads discovery for every registry-backed upstream.
    pub(crate) fn refresh_discovery(&self) {
        let snapshot = self.snapshot.load();
        let ctx = self.context();
        for pool in snapshot.pools.values() {
            if pool.spec().service.is_some() {
                snapshot::refresh_pool(pool, &ctx);
            }
        }
    }
}

fn view(s: StoredRoute) -> RouteView {
    RouteView {
        route: s.route,
        source: RouteSource::Store,
        revision: s.revision,
    }
}
