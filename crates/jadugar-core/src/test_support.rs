//! Fresh, isolated backends for tests (feature `test-support`).
//!
//! - [`TestPostgres`]: a new schema in the database at
//!   `JADUGAR_TEST_POSTGRES_URL`, dropped when the value is dropped.
//! - [`TestRedis`]: a new key prefix on the Redis at
//!   `JADUGAR_TEST_REDIS_URL`, whose keys are deleted when dropped.
//! - [`TestSqlite`]: a new SQLite file in a temporary directory.
//!
//! Without the variable, `new()` prints that the test skipped and returns
//! `None`; with `CI=true` it panics instead, because backend tests must never
//! pass by skipping in CI.
//!
//! ```no_run
//! # async fn demo() {
//! use jadugar_core::test_support::TestPostgres;
//!
//! let Some(pg) = TestPostgres::new().await else { return };
//! pg.database().ping().await.unwrap();
//! # }
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::storage::{Database, DatabaseOptions, Redis};

/// The variable naming the test Postgres.
pub const POSTGRES_VAR: &str = "JADUGAR_TEST_POSTGRES_URL";
/// The variable naming the test Redis.
pub const REDIS_VAR: &str = "JADUGAR_TEST_REDIS_URL";

/// Whether running in CI (`CI` set to `true` or `1`), where skipping fails.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

fn url_or_skip(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.is_empty() => Some(url),
        _ if in_ci() => panic!("{var} is not set and CI=true: backend tests must not skip"),
        _ => {
            eprintln!("SKIPPED: {var} is not set, so this backend test did not run");
            None
        }
    }
}

/// A Postgres schema of its own; see the [module docs](self).
#[derive(Debug)]
pub struct TestPostgres {
    url: String,
    schema: String,
    database: Database,
}

impl TestPostgres {
    /// Creates a fresh schema, or skips (see the [module docs](self)).
    pub async fn new() -> Option<Self> {
        let url = url_or_skip(POSTGRES_VAR)?;
        let schema = format!("jdg_test_{}", uuid::Uuid::new_v4().simple());
        let admin = Database::connect(&url, &small_pool(None))
            .await
            .unwrap_or_else(|e| panic!("{POSTGRES_VAR}: {e}"));
        let Database::Postgres(pool) = &admin else {
            panic!("{POSTGRES_VAR} must be a postgres:// URL");
        };
        sqlx::query(&format!("CREATE SCHEMA \"{schema}\""))
            .execute(pool)
            .await
            .unwrap();
        admin.close().await;
        let database = Database::connect(&url, &small_pool(Some(schema.clone())))
            .await
            .unwrap();
        Some(Self {
            url,
            schema,
            database,
        })
    }

    /// The pool, confined to this test's schema.
    pub fn database(&self) -> &Database {
        &self.database
    }

    /// The schema's name.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The server URL (without the schema).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Options that confine a pool to this test's schema.
    pub fn options(&self) -> DatabaseOptions {
        small_pool(Some(self.schema.clone()))
    }

    /// Another pool on the same schema, as a second host would have.
    pub async fn connect_another(&self) -> Database {
        Database::connect(&self.url, &self.options()).await.unwrap()
    }
}

fn small_pool(schema: Option<String>) -> DatabaseOptions {
    DatabaseOptions {
        max_connections: 4,
        schema,
        ..DatabaseOptions::default()
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        let url = self.url.clone();
        let schema = self.schema.clone();
        // Dropping needs async I/O, and Drop cannot await: use a thread with
        // its own runtime so this works inside and outside a runtime.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let db = Database::connect(&url, &small_pool(None)).await.ok()?;
                if let Database::Postgres(pool) = &db {
                    let drop_schema = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE");
                    let _ = sqlx::query(&drop_schema).execute(pool).await;
                }
                db.close().await;
                Some(())
            })
        });
        let _ = cleanup.join();
    }
}

/// A Redis key prefix of its own; see the [module docs](self).
#[derive(Debug)]
pub struct TestRedis {
    url: String,
    redis: Redis,
}

impl TestRedis {
    /// Picks a fresh prefix, or skips (see the [module docs](self)).
    pub async fn new() -> Option<Self> {
        let url = url_or_skip(REDIS_VAR)?;
        let prefix = format!("jdgtest:{}:", uuid::Uuid::new_v4().simple());
        let redis = Redis::connect(&url, prefix)
            .await
            .unwrap_or_else(|e| panic!("{REDIS_VAR}: {e}"));
        Some(Self { url, redis })
    }

    /// The connection, with this test's prefix.
    pub fn redis(&self) -> &Redis {
        &self.redis
    }

    /// The server URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Another connection with the same prefix, as a second host would have.
    pub async fn connect_another(&self) -> Redis {
        Redis::connect(&self.url, self.redis.prefix())
            .await
            .unwrap()
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        let Ok(client) = redis::Client::open(self.url.as_str()) else {
            return;
        };
        let pattern = format!("{}*", self.redis.prefix());
        let _ = std::thread::spawn(move || {
            let mut conn = client.get_connection().ok()?;
            let keys: Vec<String> = redis::cmd("KEYS").arg(&pattern).query(&mut conn).ok()?;
            for chunk in keys.chunks(500) {
                let _: Result<(), _> = redis::cmd("DEL").arg(chunk).query(&mut conn);
            }
            Some(())
        })
        .join();
    }
}

/// A SQLite file of its own; see the [module docs](self).
#[derive(Debug)]
pub struct TestSqlite {
    url: String,
    database: Database,
    _dir: tempfile::TempDir,
}

impl TestSqlite {
    /// Creates a fresh database file in a new temporary directory.
    pub async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("test.db").display());
        let database = Database::connect(&url, &DatabaseOptions::default())
            .await
            .unwrap();
        Self {
            url,
            database,
            _dir: dir,
        }
    }

    /// The pool.
    pub fn database(&self) -> &Database {
        &self.database
    }

    /// The file's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Another pool on the same file, as a second process would have.
    pub async fn connect_another(&self) -> Database {
        Database::connect(&self.url, &DatabaseOptions::default())
            .await
            .unwrap()
    }
}
