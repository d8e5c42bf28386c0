//! Where routes managed through the admin API are kept.
//!
//! [`RouteStore`] is object safe; [`MemoryRouteStore`] is always there,
//! [`SqlRouteStore`] keeps routes in SQLite or Postgres (features `sqlite`,
//! `postgres`). Every change bumps a store-wide version in the same
//! transaction, which is what other hosts poll to pick changes up. On
//! Postgres a change also sends a `NOTIFY` on commit, which
//! [`RouteStore::changes`] turns into a stream, so other hosts apply it at
//! once instead of at their next poll.
//! [`conformance`] is the one suite every backend passes.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use jadugar_gateway::model::RouteSpec;
//! use jadugar_gateway::store::{MemoryRouteStore, RouteStore};
//!
//! let store = MemoryRouteStore::default();
//! let saved = store.create(&RouteSpec::new("a", "/a", ["http://127.0.0.1:1"]), chrono::Utc::now()).await.unwrap();
//! assert_eq!(saved.revision, 1);
//! assert_eq!(store.version().await.unwrap(), 1);
//! # });
//! ```

mod memory;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod sql;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub use memory::MemoryRouteStore;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub use sql::SqlRouteStore;

use crate::model::RouteSpec;

/// A stored route with its revision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StoredRoute {
    /// The route.
    pub route: RouteSpec,
    /// Incremented on every change (the `ETag`).
    pub revision: i64,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No route with that id.
    #[error("no route {0}")]
    NotFound(String),
    /// A route with that id exists.
    #[error("route {0} already exists")]
    AlreadyExists(String),
    /// The revision did not match.
    #[error("route {id} is at revision {current}")]
    Conflict {
        /// The route id.
        id: String,
        /// Its current revision.
        current: i64,
    },
    /// A stored route could not be read back.
    #[error("stored route is corrupt: {0}")]
    Corrupt(#[from] serde_json::Error),
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// Hints that the stored routes changed; see [`RouteStore::changes`].
pub type ChangeStream = futures_util::stream::BoxStream<'static, ()>;

/// Route storage; see the [module docs](self).
#[async_trait::async_trait]
pub trait RouteStore: std::fmt::Debug + Send + Sync + 'static {
    /// Every route, ordered by id, and the store version they belong to.
    async fn list(&self) -> Result<(Vec<StoredRoute>, i64), StoreError>;

    /// One route, or `None`.
    async fn get(&self, id: &str) -> Result<Option<StoredRoute>, StoreError>;

    /// Adds a route at revision 1; [`StoreError::AlreadyExists`] if the id
    /// is taken. Atomic with the version bump.
    async fn create(
        &self,
        route: &RouteSpec,
        now: DateTime<Utc>,
    ) -> Result<StoredRoute, StoreError>;

    /// Replaces a route, if at `expected` revision when given;
    /// [`StoreError::NotFound`] or [`StoreError::Conflict`] otherwise.
    async fn update(
        &self,
        route: &RouteSpec,
        expected: Option<i64>,
        now: DateTime<Utc>,
    ) -> Result<StoredRoute, StoreError>;

    /// Removes a route, if at `expected` revision when given.
    async fn delete(&self, id: &str, expected: Option<i64>) -> Result<(), StoreError>;

    /// The store version: it grows with every change.
    async fn version(&self) -> Result<i64, StoreError>;

    /// Change notifications from every writer of this store, for backends
    /// that push them (Postgres `LISTEN/NOTIFY`); `None` (the default): only
    /// polling [`version`](Self::version) sees other hosts' changes. Each
    /// item is a hint (also sent after a lost connection, when
    /// notifications may have been missed): the receiver compares
    /// versions.
    async fn changes(&self) -> Result<Option<ChangeStream>, StoreError> {
        Ok(None)
    }
}

/// The conformance suite every [`RouteStore`] passes; `store` must be empty.
#[cfg(any(test, feature = "test-support"))]
#[allow(clippy::unwrap_used, clippy::panic)]
pub async fn conformance(store: &dyn RouteStore) {
    let now = Utc::now();
    let route = |id: &str, path: &str| RouteSpec::new(id, path, ["http://127.0.0.1:9"]);
    assert_eq!(store.version().await.unwrap(), 0);
    assert!(store.list().await.unwrap().0.is_empty());
    assert!(store.get("a").await.unwrap().is_none());

    let a = store.create(&route("a", "/a"), now).await.unwrap();
    assert_eq!(a.revision, 1);
    assert_eq!(a.route, route("a", "/a"));
    assert!(matches!(
        store.create(&route("a", "/other"), now).await,
        Err(StoreError::AlreadyExists(_))
    ));
    store.create(&route("c", "/c"), now).await.unwrap();
    store.create(&route("b", "/b"), now).await.unwrap();
    let (all, version) = store.list().await.unwrap();
    assert_eq!(
        all.iter().map(|r| r.route.id.as_str()).collect::<Vec<_>>(),
        ["a", "b", "c"]
    );
    assert_eq!(version, 3);

    let mut changed = route("a", "/a2");
    changed.priority = 7;
    let a2 = store.update(&changed, Some(1), now).await.unwrap();
    assert_eq!(a2.revision, 2);
    assert_eq!(store.get("a").await.unwrap().unwrap().route.priority, 7);
    match store.update(&changed, Some(1), now).await {
        Err(StoreError::Conflict { current, .. }) => assert_eq!(current, 2),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(store.update(&changed, None, now).await.unwrap().revision, 3);
    assert!(matches!(
        store.update(&route("zz", "/z"), None, now).await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(store.version().await.unwrap(), 5);

    assert!(matches!(
        store.delete("b", Some(9)).await,
        Err(StoreError::Conflict { .. })
    ));
    store.delete("b", Some(1)).await.unwrap();
    assert!(matches!(
        store.delete("b", None).await,
        Err(StoreError::NotFound(_))
    ));
    store.delete("c", None).await.unwrap();
    let (all, version) = store.list().await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(version, 7);
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn memory() {
        super::conformance(&super::MemoryRouteStore::default()).await;
    }

    #[cfg(feature = "sqlite")]
    #[tokio::test]
    async fn sqlite() {
        let db = jadugar_core::test_support::TestSqlite::new().await;
        let store = super::SqlRouteStore::new(db.database().clone())
            .await
            .unwrap();
        super::conformance(&store).await;
    }

    #[cfg(feature = "postgres")]
    #[tokio::test]
    async fn postgres() {
        let Some(pg) = jadugar_core::test_support::TestPostgres::new().await else {
            return;
        };
        let store = super::SqlRouteStore::new(pg.database().clone())
            .await
            .unwrap();
        super::conformance(&store).await;
        let other = super::SqlRouteStore::new(pg.connect_another().await)
            .await
            .unwrap();
        assert_eq!(super::RouteStore::version(&other).await.unwrap(), 7);

        // A write through one pool is notified to a listener on another.
        use futures_util::StreamExt as _;
        let mut changes = super::RouteStore::changes(&store).await.unwrap().unwrap();
        let now = chrono::Utc::now();
        super::RouteStore::create(
            &other,
            &crate::model::RouteSpec::new("n", "/n", ["http://127.0.0.1:9"]),
            now,
        )
        .await
        .unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), changes.next())
            .await
            .expect("no notification within 5 s")
            .unwrap();
        assert!(
            super::RouteStore::changes(&super::MemoryRouteStore::default())
                .await
                .unwrap()
                .is_none()
        );
    }
}
