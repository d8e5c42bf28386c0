//! The SQL store, over SQLite (one host) or Postgres (many hosts).
//!
//! Both backends share the schema (`migrations/{sqlite,postgres}`) and the
//! queries; they differ in how check leases are claimed (Postgres uses
//! `FOR UPDATE SKIP LOCKED`, SQLite's single writer needs nothing) and in
//! change broadcast (Postgres `NOTIFY` inside the writing transaction, so a
//! change is announced exactly when it commits; a `PgListener` on every
//! host receives it).
//!
//! Every write first bumps the single counter row, which serializes writers
//! (the change index is gap-free and ordered by commit) and, on SQLite,
//! takes the write lock before any read so a transaction never has to
//! upgrade.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use jadugar_core::storage::Database;
use sqlx::migrate::Migrator;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{RegistryStore, RemoteEvent, check_config_write};
use crate::Error;
use crate::model::{Change, Instance, NewConfig, StoredConfig, Topic, ValueKind};

/// Embedded SQLite migrations (versions 2000001..).
pub static SQLITE_MIGRATOR: Migrator = sqlx::migrate!("migrations/sqlite");
/// Embedded Postgres migrations (versions 2000001..).
pub static POSTGRES_MIGRATOR: Migrator = sqlx::migrate!("migrations/postgres");

macro_rules! on_pool {
    ($db:expr, $p:ident => $body:expr) => {
        match $db {
            Database::Sqlite($p) => $body,
            Database::Postgres($p) => $body,
        }
    };
}

/// The SQL store; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct SqlStore {
    db: Database,
    channel: Option<String>,
}

#[derive(sqlx::FromRow)]
struct InstanceRow {
    data: String,
    ttl_deadline: Option<i64>,
}

#[derive(sqlx::FromRow)]
struct ConfigRow {
    namespace: String,
    key: String,
    version: i64,
    value: String,
    kind: String,
    secret: i64,
    deleted: i64,
    modify_index: i64,
    updated_at: i64,
    updated_by: Option<String>,
}

#[derive(sqlx::FromRow)]
struct KeyRow {
    service: String,
    id: String,
}

fn millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn from_millis(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl InstanceRow {
    fn into_instance(self) -> Result<Instance, Error> {
        let mut instance: Instance = serde_json::from_str(&self.data)?;
        instance.ttl_deadline = self.ttl_deadline.map(from_millis);
        Ok(instance)
    }
}

impl ConfigRow {
    fn into_entry(self) -> StoredConfig {
        StoredConfig {
            namespace: self.namespace,
            key: self.key,
            version: to_u64(self.version),
            value: self.value,
            kind: ValueKind::parse(&self.kind).unwrap_or(ValueKind::Text),
            secret: self.secret != 0,
            deleted: self.deleted != 0,
            modify_index: to_u64(self.modify_index),
            updated_at: from_millis(self.updated_at),
            updated_by: self.updated_by,
        }
    }
}

const NEXT_INDEX: &str =
    "UPDATE registry_counter SET value = value + 1 WHERE id = 1 RETURNING value";
const CONFIG_COLUMNS: &str =
    "namespace, key, version, value, kind, secret, deleted, modify_index, updated_at, updated_by";

impl SqlStore {
    /// Runs the registry migrations on `db` and wraps it.
    pub async fn new(db: Database) -> Result<Self, Error> {
        match &db {
            Database::Sqlite(_) if !cfg!(feature = "sqlite") => {
                return Err(Error::BackendDisabled("sqlite"));
            }
            Database::Postgres(_) if !cfg!(feature = "postgres") => {
                return Err(Error::BackendDisabled("postgres"));
            }
            _ => {}
        }
        db.migrate(&SQLITE_MIGRATOR, &POSTGRES_MIGRATOR).await?;
        let channel = match &db {
            Database::Sqlite(_) => None,
            Database::Postgres(pool) => {
                let schema: String = sqlx::query_scalar("SELECT current_schema()::text")
                    .fetch_one(pool)
                    .await?;
                let mut channel = format!("jdg_registry_{schema}");
                channel.truncate(63);
                Some(channel)
            }
        };
        Ok(Self { db, channel })
    }

    /// The database.
    pub fn database(&self) -> &Database {
        &self.db
    }
}

/// Sends a change notification inside the transaction (Postgres only).
async fn notify_pg(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    channel: &str,
    change: &Change,
) -> Result<(), Error> {
    let payload = serde_json::to_string(change)?;
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(channel)
        .bind(payload)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

macro_rules! notify {
    (sqlite, $tx:expr, $self:expr, $change:expr) => {{
        let _ = (&$tx, &$self.channel, &$change);
    }};
    (postgres, $tx:expr, $self:expr, $change:expr) => {{
        if let Some(channel) = &$self.channel {
            notify_pg(&mut $tx, channel, &$change).await?;
        }
    }};
}

macro_rules! put_instance_body {
    ($kind:ident, $pool:expr, $self:expr, $instance:expr, $if_index:expr) => {{
        let mut tx = $pool.begin().await?;
        let index: i64 = sqlx::query_scalar(NEXT_INDEX).fetch_one(&mut *tx).await?;
        let existing: Option<i64> = sqlx::query_scalar(
            "SELECT modify_index FROM registry_instances WHERE service = $1 AND id = $2",
        )
        .bind(&$instance.service)
        .bind(&$instance.id)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(expected) = $if_index
            && existing.map_or(0, to_u64) != expected
        {
            tx.rollback().await?;
            return Ok(None);
        }
        let mut stored = $instance.clone();
        stored.modify_index = to_u64(index);
        let data = serde_json::to_string(&stored)?;
        sqlx::query(
            "INSERT INTO registry_instances (service, id, data, modify_index, ttl_deadline, has_check) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (service, id) DO UPDATE SET data = excluded.data, \
             modify_index = excluded.modify_index, ttl_deadline = excluded.ttl_deadline, \
             has_check = excluded.has_check",
        )
        .bind(&stored.service)
        .bind(&stored.id)
        .bind(data)
        .bind(index)
        .bind(stored.ttl_deadline.map(millis))
        .bind(i64::from(stored.check.is_some()))
        .execute(&mut *tx)
        .await?;
        let change = Change {
            index: to_u64(index),
            topic: Topic::Service {
                service: stored.service.clone(),
            },
        };
        notify!($kind, tx, $self, change);
        tx.commit().await?;
        Ok(Some(to_u64(index)))
    }};
}

macro_rules! delete_instance_body {
    ($kind:ident, $pool:expr, $self:expr, $service:expr, $id:expr, $if_index:expr) => {{
        let mut tx = $pool.begin().await?;
        let index: i64 = sqlx::query_scalar(NEXT_INDEX).fetch_one(&mut *tx).await?;
        let existing: Option<i64> = sqlx::query_scalar(
            "SELECT modify_index FROM registry_instances WHERE service = $1 AND id = $2",
        )
        .bind($service)
        .bind($id)
        .fetch_optional(&mut *tx)
        .await?;
        let proceed = match (existing, $if_index) {
            (None, _) => false,
            (Some(current), Some(expected)) => to_u64(current) == expected,
            (Some(_), None) => true,
        };
        if !proceed {
            tx.rollback().await?;
            return Ok(None);
        }
        sqlx::query("DELETE FROM registry_instances WHERE service = $1 AND id = $2")
            .bind($service)
            .bind($id)
            .execute(&mut *tx)
            .await?;
        let change = Change {
            index: to_u64(index),
            topic: Topic::Service {
                service: $service.to_owned(),
            },
        };
        notify!($kind, tx, $self, change);
        tx.commit().await?;
        Ok(Some(to_u64(index)))
    }};
}

macro_rules! config_put_body {
    ($kind:ident, $pool:expr, $self:expr, $new:expr, $expected:expr) => {{
        let mut tx = $pool.begin().await?;
        let index: i64 = sqlx::query_scalar(NEXT_INDEX).fetch_one(&mut *tx).await?;
        let latest: Option<ConfigRow> = sqlx::query_as(&format!(
            "SELECT {CONFIG_COLUMNS} FROM registry_config WHERE namespace = $1 AND key = $2 \
             ORDER BY version DESC LIMIT 1"
        ))
        .bind(&$new.namespace)
        .bind(&$new.key)
        .fetch_optional(&mut *tx)
        .await?;
        let latest = latest.map(ConfigRow::into_entry);
        let version = match check_config_write(latest.as_ref(), $new, $expected) {
            Ok(v) => v,
            Err(err) => {
                tx.rollback().await?;
                return Err(err);
            }
        };
        let entry = StoredConfig {
            namespace: $new.namespace.clone(),
            key: $new.key.clone(),
            version,
            value: $new.value.clone(),
            kind: $new.kind,
            secret: $new.secret,
            deleted: $new.deleted,
            modify_index: to_u64(index),
            updated_at: $new.at,
            updated_by: $new.by.clone(),
        };
        sqlx::query(&format!(
            "INSERT INTO registry_config ({CONFIG_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        ))
        .bind(&entry.namespace)
        .bind(&entry.key)
        .bind(to_i64(entry.version))
        .bind(&entry.value)
        .bind(entry.kind.as_str())
        .bind(i64::from(entry.secret))
        .bind(i64::from(entry.deleted))
        .bind(index)
        .bind(millis(entry.updated_at))
        .bind(&entry.updated_by)
        .execute(&mut *tx)
        .await?;
        let change = Change {
            index: to_u64(index),
            topic: Topic::Config {
                namespace: entry.namespace.clone(),
                key: entry.key.clone(),
            },
        };
        notify!($kind, tx, $self, change);
        tx.commit().await?;
        Ok(entry)
    }};
}

#[async_trait]
impl RegistryStore for SqlStore {
    async fn put_instance(
        &self,
        instance: &Instance,
        if_index: Option<u64>,
    ) -> Result<Option<u64>, Error> {
        match &self.db {
            Database::Sqlite(pool) => put_instance_body!(sqlite, pool, self, instance, if_index),
            Database::Postgres(pool) => {
                put_instance_body!(postgres, pool, self, instance, if_index)
            }
        }
    }

    async fn delete_instance(
        &self,
        service: &str,
        id: &str,
        if_index: Option<u64>,
    ) -> Result<Option<u64>, Error> {
        match &self.db {
            Database::Sqlite(pool) => {
                delete_instance_body!(sqlite, pool, self, service, id, if_index)
            }
            Database::Postgres(pool) => {
                delete_instance_body!(postgres, pool, self, service, id, if_index)
            }
        }
    }

    async fn touch_instance(
        &self,
        service: &str,
        id: &str,
        deadline: DateTime<Utc>,
    ) -> Result<bool, Error> {
        let sql = "UPDATE registry_instances SET ttl_deadline = $3 WHERE service = $1 AND id = $2";
        let affected = on_pool!(&self.db, pool => sqlx::query(sql)
            .bind(service)
            .bind(id)
            .bind(millis(deadline))
            .execute(pool)
            .await?
            .rows_affected());
        Ok(affected > 0)
    }

    async fn get_instance(&self, service: &str, id: &str) -> Result<Option<Instance>, Error> {
        let sql =
            "SELECT data, ttl_deadline FROM registry_instances WHERE service = $1 AND id = $2";
        let row: Option<InstanceRow> = on_pool!(&self.db, pool => sqlx::query_as(sql)
            .bind(service)
            .bind(id)
            .fetch_optional(pool)
            .await?);
        row.map(InstanceRow::into_instance).transpose()
    }

    async fn list_instances(&self, service: Option<&str>) -> Result<Vec<Instance>, Error> {
        let rows: Vec<InstanceRow> = match service {
            Some(service) => {
                let sql = "SELECT data, ttl_deadline FROM registry_instances WHERE service = $1 ORDER BY service, id";
                on_pool!(&self.db, pool => sqlx::query_as(sql).bind(service).fetch_all(pool).await?)
            }
            None => {
                let sql = "SELECT data, ttl_deadline FROM registry_instances ORDER BY service, id";
                on_pool!(&self.db, pool => sqlx::query_as(sql).fetch_all(pool).await?)
            }
        };
        rows.into_iter().map(InstanceRow::into_instance).collect()
    }

    async fn claim_checks(
        &self,
        host: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<(String, String)>, Error> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows: Vec<KeyRow> = match &self.db {
            Database::Sqlite(pool) => {
                sqlx::query_as(
                    "UPDATE registry_instances SET lease_owner = $1, lease_until = $2 \
                     WHERE (service, id) IN (SELECT service, id FROM registry_instances \
                       WHERE has_check = 1 AND (lease_owner = $1 OR lease_until <= $3) \
                       ORDER BY CASE WHEN lease_owner = $1 THEN 0 ELSE 1 END, service, id LIMIT $4) \
                     RETURNING service, id",
                )
                .bind(host)
                .bind(millis(until))
                .bind(millis(now))
                .bind(limit)
                .fetch_all(pool)
                .await?
            }
            Database::Postgres(pool) => {
                sqlx::query_as(
                    "UPDATE registry_instances SET lease_owner = $1, lease_until = $2 \
                     WHERE (service, id) IN (SELECT service, id FROM registry_instances \
                       WHERE has_check = 1 AND (lease_owner = $1 OR lease_until <= $3) \
                       ORDER BY CASE WHEN lease_owner = $1 THEN 0 ELSE 1 END, service, id LIMIT $4 \
                       FOR UPDATE SKIP LOCKED) \
                     RETURNING service, id",
                )
                .bind(host)
                .bind(millis(until))
                .bind(millis(now))
                .bind(limit)
                .fetch_all(pool)
                .await?
            }
        };
        let mut held: Vec<(String, String)> = rows.into_iter().map(|r| (r.service, r.id)).collect();
        held.sort();
        Ok(held)
    }

    async fn release_checks(&self, host: &str) -> Result<(), Error> {
        let sql = "UPDATE registry_instances SET lease_owner = NULL, lease_until = 0 WHERE lease_owner = $1";
        on_pool!(&self.db, pool => {
            sqlx::query(sql).bind(host).execute(pool).await?;
        });
        Ok(())
    }

    async fn config_get(&self, namespace: &str, key: &str) -> Result<Option<StoredConfig>, Error> {
        let sql = format!(
            "SELECT {CONFIG_COLUMNS} FROM registry_config WHERE namespace = $1 AND key = $2 \
             ORDER BY version DESC LIMIT 1"
        );
        let row: Option<ConfigRow> = on_pool!(&self.db, pool => sqlx::query_as(&sql)
            .bind(namespace)
            .bind(key)
            .fetch_optional(pool)
            .await?);
        Ok(row.map(ConfigRow::into_entry))
    }

    async fn config_version(
        &self,
        namespace: &str,
        key: &str,
        version: u64,
    ) -> Result<Option<StoredConfig>, Error> {
        let sql = format!(
            "SELECT {CONFIG_COLUMNS} FROM registry_config WHERE namespace = $1 AND key = $2 AND version = $3"
        );
        let row: Option<ConfigRow> = on_pool!(&self.db, pool => sqlx::query_as(&sql)
            .bind(namespace)
            .bind(key)
            .bind(to_i64(version))
            .fetch_optional(pool)
            .await?);
        Ok(row.map(ConfigRow::into_entry))
    }

    async fn config_put(
        &self,
        new: &NewConfig,
        expected: Option<u64>,
    ) -> Result<StoredConfig, Error> {
        match &self.db {
            Database::Sqlite(pool) => config_put_body!(sqlite, pool, self, new, expected),
            Database::Postgres(pool) => config_put_body!(postgres, pool, self, new, expected),
        }
    }

    async fn config_list(&self, namespace: &str, prefix: &str) -> Result<Vec<StoredConfig>, Error> {
        let sql = format!(
            "SELECT {CONFIG_COLUMNS} FROM registry_config c WHERE c.namespace = $1 \
             AND substr(c.key, 1, length($2)) = $2 AND c.deleted = 0 \
             AND c.version = (SELECT MAX(d.version) FROM registry_config d \
               WHERE d.namespace = c.namespace AND d.key = c.key) \
             ORDER BY c.key"
        );
        let rows: Vec<ConfigRow> = on_pool!(&self.db, pool => sqlx::query_as(&sql)
            .bind(namespace)
            .bind(prefix)
            .fetch_all(pool)
            .await?);
        Ok(rows.into_iter().map(ConfigRow::into_entry).collect())
    }

    async fn config_history(&self, namespace: &str, key: &str) -> Result<Vec<StoredConfig>, Error> {
        let sql = format!(
            "SELECT {CONFIG_COLUMNS} FROM registry_config WHERE namespace = $1 AND key = $2 ORDER BY version"
        );
        let rows: Vec<ConfigRow> = on_pool!(&self.db, pool => sqlx::query_as(&sql)
            .bind(namespace)
            .bind(key)
            .fetch_all(pool)
            .await?);
        Ok(rows.into_iter().map(ConfigRow::into_entry).collect())
    }

    async fn current_index(&self) -> Result<u64, Error> {
        let sql = "SELECT value FROM registry_counter WHERE id = 1";
        let value: i64 = on_pool!(&self.db, pool => sqlx::query_scalar(sql).fetch_one(pool).await?);
        Ok(to_u64(value))
    }

    fn shared(&self) -> bool {
        self.channel.is_some()
    }

    async fn listen(
        &self,
        sink: mpsc::UnboundedSender<RemoteEvent>,
        cancel: CancellationToken,
    ) -> Result<(), Error> {
        let (Database::Postgres(pool), Some(channel)) = (&self.db, &self.channel) else {
            cancel.cancelled().await;
            return Ok(());
        };
        while !cancel.is_cancelled() {
            let mut listener = match jadugar_core::storage::pg_listener(pool).await {
                Ok(listener) => listener,
                Err(err) => {
                    tracing::warn!(error = %err, "registry change listener could not connect");
                    tokio::select! {
                        () = cancel.cancelled() => break,
                        () = tokio::time::sleep(Duration::from_millis(500)) => continue,
                    }
                }
            };
            if let Err(err) = listener.listen(channel).await {
                tracing::warn!(error = %err, "registry change listener could not LISTEN");
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_millis(500)) => continue,
                }
            }
            // Anything committed before LISTEN took effect was missed.
            if sink.send(RemoteEvent::Resync).is_err() {
                return Ok(());
            }
            loop {
                let next = tokio::select! {
                    () = cancel.cancelled() => return Ok(()),
                    next = listener.try_recv() => next,
                };
                match next {
                    Ok(Some(notification)) => {
                        match serde_json::from_str::<Change>(notification.payload()) {
                            Ok(change) => {
                                if sink.send(RemoteEvent::Change(change)).is_err() {
                                    return Ok(());
                                }
                            }
                            Err(err) => {
                                tracing::warn!(error = %err, "unreadable registry notification");
                            }
                        }
                    }
                    Ok(None) => {
                        // Reconnected: notifications may have been lost.
                        if sink.send(RemoteEvent::Resync).is_err() {
                            return Ok(());
                        }
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "registry change listener failed");
                        break;
                    }
                }
            }
        }
        Ok(())
    }
}
