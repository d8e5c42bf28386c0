use chrono::{DateTime, Utc};
use jadugar_core::storage::{Database, StorageError};
use sqlx::Row;

use super::{RouteStore, StoreError, StoredRoute};
use crate::model::RouteSpec;

/// The Postgres notification channel of route changes; the payload is the
/// schema whose routes changed (hosts of other schemas ignore it).
pub(crate) const CHANNEL: &str = "jadugar_gateway_routes";

static SQLITE: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// Runs the gateway's migrations on `db`.
pub(crate) async fn migrate(db: &Database) -> Result<(), StorageError> {
    db.migrate(&SQLITE, &POSTGRES).await
}

/// Routes in SQLite or Postgres.
#[derive(Debug, Clone)]
pub struct SqlRouteStore {
    db: Database,
}

impl SqlRouteStore {
    /// A store on `db`, after running the gateway's migrations.
    pub async fn new(db: Database) -> Result<Self, StorageError> {
        migrate(&db).await?;
        Ok(Self { db })
    }
}

fn row_to_route(
    id: String,
    spec: String,
    revision: i64,
    updated_at: DateTime<Utc>,
) -> Result<StoredRoute, StoreError> {
    let route: RouteSpec = serde_json::from_str(&spec)?;
    debug_assert_eq!(route.id, id);
    Ok(StoredRoute {
        route,
        revision,
        updated_at,
    })
}

fn pick(sqlite: bool, a: &'static str, b: &'static str) -> &'static str {
    if sqlite { a } else { b }
}

macro_rules! both {
    ($db:expr, |$pool:ident, $q:ident| $body:expr) => {
        match $db {
            Database::Sqlite($pool) => {
                #[allow(unused_variables)]
                let $q = true;
                $body
            }
            Database::Postgres($pool) => {
                #[allow(unused_variables)]
                let $q = false;
                $body
            }
        }
    };
}

#[async_trait::async_trait]
impl RouteStore for SqlRouteStore {
    async fn list(&self) -> Result<(Vec<StoredRoute>, i64), StoreError> {
        both!(&self.db, |pool, q| {
            let mut tx = pool.begin().await?;
            let version: i64 = sqlx::query("SELECT version FROM gateway_meta WHERE id = 1")
                .fetch_one(&mut *tx)
                .await?
                .try_get(0)?;
            let rows = sqlx::query(
                "SELECT id, spec, revision, updated_at FROM gateway_routes ORDER BY id",
            )
            .fetch_all(&mut *tx)
            .await?;
            tx.commit().await?;
            let routes = rows
                .into_iter()
                .map(|r| row_to_route(r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?))
                .collect::<Result<Vec<_>, StoreError>>()?;
            Ok((routes, version))
        })
    }

    async fn get(&self, id: &str) -> Result<Option<StoredRoute>, StoreError> {
        both!(&self.db, |pool, q| {
            let row = sqlx::query(pick(
                q,
                "SELECT id, spec, revision, updated_at FROM gateway_routes WHERE id = ?",
                "SELECT id, spec, revision, updated_at FROM gateway_routes WHERE id = $1",
            ))
            .bind(id)
            .fetch_optional(pool)
            .await?;
            row.map(|r| row_to_route(r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?))
                .transpose()
        })
    }

    async fn create(
        &self,
        route: &RouteSpec,
        now: DateTime<Utc>,
    ) -> Result<StoredRoute, StoreError> {
        let spec = serde_json::to_string(route)?;
        both!(&self.db, |pool, q| {
            let mut tx = pool.begin().await?;
            let done = sqlx::query(pick(q,
                "INSERT INTO gateway_routes (id, spec, revision, updated_at) VALUES (?, ?, 1, ?) ON CONFLICT (id) DO NOTHING",
                "INSERT INTO gateway_routes (id, spec, revision, updated_at) VALUES ($1, $2, 1, $3) ON CONFLICT (id) DO NOTHING"
            ))
            .bind(&route.id)
            .bind(&spec)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() == 0 {
                return Err(StoreError::AlreadyExists(route.id.clone()));
            }
            sqlx::query("UPDATE gateway_meta SET version = version + 1 WHERE id = 1")
                .execute(&mut *tx)
                .await?;
            if !q {
                // Delivered on commit, to every listening host.
                sqlx::query("SELECT pg_notify($1, current_schema())")
                    .bind(CHANNEL)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(StoredRoute {
                route: route.clone(),
                revision: 1,
                updated_at: now,
            })
        })
    }

    async fn update(
        &self,
        route: &RouteSpec,
        expected: Option<i64>,
        now: DateTime<Utc>,
    ) -> Result<StoredRoute, StoreError> {
        let spec = serde_json::to_string(route)?;
        both!(&self.db, |pool, q| {
            let mut tx = pool.begin().await?;
            let current: Option<i64> = sqlx::query(pick(
                q,
                "SELECT revision FROM gateway_routes WHERE id = ?",
                "SELECT revision FROM gateway_routes WHERE id = $1 FOR UPDATE",
            ))
            .bind(&route.id)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.try_get(0))
            .transpose()?;
            let Some(current) = current else {
                return Err(StoreError::NotFound(route.id.clone()));
            };
            if expected.is_some_and(|e| e != current) {
                return Err(StoreError::Conflict {
                    id: route.id.clone(),
                    current,
                });
            }
            sqlx::query(pick(
                q,
                "UPDATE gateway_routes SET spec = ?, revision = ?, updated_at = ? WHERE id = ?",
                "UPDATE gateway_routes SET spec = $1, revision = $2, updated_at = $3 WHERE id = $4",
            ))
            .bind(&spec)
            .bind(current + 1)
            .bind(now)
            .bind(&route.id)
            .execute(&mut *tx)
            .await?;
            sqlx::query("UPDATE gateway_meta SET version = version + 1 WHERE id = 1")
                .execute(&mut *tx)
                .await?;
            if !q {
                // Delivered on commit, to every listening host.
                sqlx::query("SELECT pg_notify($1, current_schema())")
                    .bind(CHANNEL)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(StoredRoute {
                route: route.clone(),
                revision: current + 1,
                updated_at: now,
            })
        })
    }

    async fn delete(&self, id: &str, expected: Option<i64>) -> Result<(), StoreError> {
        both!(&self.db, |pool, q| {
            let mut tx = pool.begin().await?;
            let current: Option<i64> = sqlx::query(pick(
                q,
                "SELECT revision FROM gateway_routes WHERE id = ?",
                "SELECT revision FROM gateway_routes WHERE id = $1 FOR UPDATE",
            ))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.try_get(0))
            .transpose()?;
            let Some(current) = current else {
                return Err(StoreError::NotFound(id.to_owned()));
            };
            if expected.is_some_and(|e| e != current) {
                return Err(StoreError::Conflict {
                    id: id.to_owned(),
                    current,
                });
            }
            sqlx::query(pick(
                q,
                "DELETE FROM gateway_routes WHERE id = ?",
                "DELETE FROM gateway_routes WHERE id = $1",
            ))
            .bind(id)
            .execute(&mut *tx)
            .await?;
            sqlx::query("UPDATE gateway_meta SET version = version + 1 WHERE id = 1")
                .execute(&mut *tx)
                .await?;
            if !q {
                // Delivered on commit, to every listening host.
                sqlx::query("SELECT pg_notify($1, current_schema())")
                    .bind(CHANNEL)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    async fn version(&self) -> Result<i64, StoreError> {
        both!(&self.db, |pool, q| {
            Ok(sqlx::query("SELECT version FROM gateway_meta WHERE id = 1")
                .fetch_one(pool)
                .await?
                .try_get(0)?)
        })
    }

    async fn changes(&self) -> Result<Option<super::ChangeStream>, StoreError> {
        match &self.db {
            #[cfg(feature = "postgres")]
            Database::Postgres(pool) => {
                use futures_util::StreamExt as _;
                let schema: String = sqlx::query("SELECT current_schema()")
                    .fetch_one(pool)
                    .await?
                    .try_get(0)?;
                let mut listener = jadugar_core::storage::pg_listener(pool).await?;
                listener.listen(CHANNEL).await?;
                let stream = futures_util::stream::unfold(listener, move |mut listener| {
                    let schema = schema.clone();
                    async move {
                        loop {
                            match listener.recv().await {
                                Ok(n) if n.payload() == schema => return Some(((), listener)),
                                Ok(_) => {}
                                Err(e) => {
                                    // The listener reconnects on the next
                                    // recv; changes may have been missed
                                    // meanwhile, so this is a hint too.
                                    tracing::warn!(error = %e, "route change listener lost its connection");
                                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                                    return Some(((), listener));
                                }
                            }
                        }
                    }
                });
                Ok(Some(stream.boxed()))
            }
            _ => Ok(None),
        }
    }
}
