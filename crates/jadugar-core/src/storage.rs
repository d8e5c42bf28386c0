//! Database pools and Redis connections from URLs, and migrations.
//!
//! A `sqlite:` URL gives a SQLite pool tuned for a server (WAL journal, a
//! busy timeout so writers wait instead of failing, foreign keys on,
//! `synchronous = NORMAL`); a `postgres:` URL gives a Postgres pool with
//! acquire timeouts. [`Database::migrate`] runs one crate's embedded
//! migrations for whichever backend is in use.
//!
//! Component crates keep their migration versions in their own range
//! (auth 1xxxxxx, registry 2xxxxxx, tracking 3xxxxxx, gateway 4xxxxxx), so
//! they share one `_sqlx_migrations` table without stepping on each other.
//!
//! ```no_run
//! # async fn demo() -> Result<(), jadugar_core::storage::StorageError> {
//! use jadugar_core::storage::{Database, DatabaseOptions};
//!
//! let db = Database::connect("sqlite://./data/app.db", &DatabaseOptions::default()).await?;
//! db.ping().await?;
//! # Ok(()) }
//! ```

use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

/// A Postgres `LISTEN` connection of its own, outside `pool`.
///
/// sqlx's `PgListener::connect_with(pool)` keeps one of the pool's
/// connections for as long as it listens; every component that listens
/// would then shrink the pool its queries (and `/readyz`) share, down to
/// starving them when the pool is small. This listener gets a one-connection
/// pool with the same connect options (URL, `search_path`), which it also
/// uses to reconnect.
///
/// ```no_run
/// # async fn demo(pool: sqlx::PgPool) -> Result<(), sqlx::Error> {
/// let mut listener = jadugar_core::storage::pg_listener(&pool).await?;
/// listener.listen("changes").await?;
/// # Ok(()) }
/// ```
pub async fn pg_listener(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let own = PgPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .idle_timeout(None)
        .max_lifetime(None)
        .acquire_timeout(pool.options().get_acquire_timeout())
        .connect_lazy_with((*pool.connect_options()).clone());
    PgListener::connect_with(&own).await
}

/// Why a storage backend could not be reached or prepared.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The URL is not a `sqlite:`, `postgres:` or `redis:` URL we understand.
    #[error("unsupported database URL {0:?}: expected sqlite://PATH or postgres://...")]
    UnsupportedUrl(String),
    /// The database refused or failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Migrations failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Redis refused or failed.
    #[error("redis error: {0}")]
    Redis(#[from] redis::RedisError),
}

/// Pool settings.
#[derive(Debug, Clone)]
pub struct DatabaseOptions {
    /// Most connections in the pool.
    pub max_connections: u32,
    /// How long to wait for a connection before failing.
    pub acquire_timeout: Duration,
    /// Postgres only: the schema to use (`search_path`), for tests and for
    /// sharing one database between deployments.
    pub schema: Option<String>,
}

impl Default for DatabaseOptions {
    fn default() -> Self {
        Self {
            max_connections: 16,
            acquire_timeout: Duration::from_secs(5),
            schema: None,
        }
    }
}

/// A SQL database: SQLite or Postgres.
#[derive(Debug, Clone)]
pub enum Database {
    /// An embedded SQLite file.
    Sqlite(SqlitePool),
    /// A Postgres server.
    Postgres(PgPool),
}

impl Database {
    /// Connects to `url` (`sqlite://path`, `sqlite::memory:`, `postgres://...`).
    /// SQLite files are created if missing.
    pub async fn connect(url: &str, options: &DatabaseOptions) -> Result<Self, StorageError> {
        if url.starts_with("sqlite:") {
            let connect = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(5))
                .foreign_keys(true);
            let pool = SqlitePoolOptions::new()
                .max_connections(options.max_connections)
                .acquire_timeout(options.acquire_timeout)
                .connect_with(connect)
                .await?;
            Ok(Self::Sqlite(pool))
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let mut connect = PgConnectOptions::from_str(url)?;
            if let Some(schema) = &options.schema {
                connect = connect.options([("search_path", schema.as_str())]);
            }
            let pool = PgPoolOptions::new()
                .max_connections(options.max_connections)
                .acquire_timeout(options.acquire_timeout)
                .connect_with(connect)
                .await?;
            Ok(Self::Postgres(pool))
        } else {
            Err(StorageError::UnsupportedUrl(redact_url(url)))
        }
    }

    /// Which backend this is: `"sqlite"` or `"postgres"`.
    pub fn backend(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "sqlite",
            Self::Postgres(_) => "postgres",
        }
    }

    /// Runs `SELECT 1`.
    pub async fn ping(&self) -> Result<(), StorageError> {
        match self {
            Self::Sqlite(pool) => {
                sqlx::query("SELECT 1").execute(pool).await?;
            }
            Self::Postgres(pool) => {
                sqlx::query("SELECT 1").execute(pool).await?;
            }
        }
        Ok(())
    }

    /// Runs the migrator matching this backend. Migrations of other crates
    /// already applied to the database are ignored, not treated as missing.
    pub async fn migrate(
        &self,
        sqlite: &Migrator,
        postgres: &Migrator,
    ) -> Result<(), StorageError> {
        match self {
            Self::Sqlite(pool) => {
                let mut migrator = clone_migrator(sqlite);
                migrator.set_ignore_missing(true);
                migrator.run(pool).await?;
            }
            Self::Postgres(pool) => {
                let mut migrator = clone_migrator(postgres);
                migrator.set_ignore_missing(true);
                migrator.run(pool).await?;
            }
        }
        Ok(())
    }

    /// Closes the pool.
    pub async fn close(&self) {
        match self {
            Self::Sqlite(pool) => pool.close().await,
            Self::Postgres(pool) => pool.close().await,
        }
    }
}

fn clone_migrator(migrator: &Migrator) -> Migrator {
    let mut copy = Migrator::DEFAULT;
    copy.migrations = migrator.migrations.clone();
    copy.locking = migrator.locking;
    copy.no_tx = migrator.no_tx;
    copy
}

/// `url` with any password replaced by `***`, for messages and logs.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(_) => url.to_owned(),
        Err(_) => "<unparseable URL>".to_owned(),
    }
}

/// What [`Redis::subscribe`] delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelEvent {
    /// (Re)subscribed: anything published before this was missed.
    Subscribed,
    /// A message's payload.
    Message(String),
}

/// A Redis connection that reconnects by itself, with a key prefix.
///
/// Every key a component writes goes through [`key`](Self::key), so that
/// deployments (and tests) can share one Redis.
#[derive(Clone)]
pub struct Redis {
    client: redis::Client,
    conn: redis::aio::ConnectionManager,
    prefix: String,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl Redis {
    /// Connects to `url` (`redis://`, or `rediss://` for TLS); keys get
    /// `prefix` (say `jadugar:`).
    pub async fn connect(url: &str, prefix: impl Into<String>) -> Result<Self, StorageError> {
        let client = redis::Client::open(url)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Duration::from_secs(3))
            .set_response_timeout(Duration::from_secs(3))
            .set_number_of_retries(2);
        let conn = tokio::time::timeout(
            Duration::from_secs(5),
            redis::aio::ConnectionManager::new_with_config(client.clone(), config),
        )
        .await
        .map_err(|_| {
            redis::RedisError::from((redis::ErrorKind::IoError, "timed out connecting to redis"))
        })??;
        Ok(Self {
            client,
            conn,
            prefix: prefix.into(),
        })
    }

    /// Follows pub/sub `channel` (prefixed by [`key`](Self::key)) from a
    /// background task that resubscribes a second after a lost connection.
    ///
    /// The receiver gets [`ChannelEvent::Subscribed`] on every
    /// (re)subscription, since anything published while unsubscribed was
    /// missed, then each message; the task ends when the receiver is dropped.
    ///
    /// ```no_run
    /// # async fn demo(redis: jadugar_core::storage::Redis) {
    /// use jadugar_core::storage::ChannelEvent;
    ///
    /// let mut events = redis.subscribe("changes");
    /// while let Some(event) = events.recv().await {
    ///     match event {
    ///         ChannelEvent::Subscribed => { /* resynchronise */ }
    ///         ChannelEvent::Message(text) => println!("{text}"),
    ///     }
    /// }
    /// # }
    /// ```
    pub fn subscribe(&self, channel: &str) -> tokio::sync::mpsc::Receiver<ChannelEvent> {
        use futures_util::StreamExt as _;
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let client = self.client.clone();
        let channel = self.key(channel);
        tokio::spawn(async move {
            loop {
                let subscribed = async {
                    let mut pubsub = client.get_async_pubsub().await?;
                    pubsub.subscribe(&channel).await?;
                    Ok::<_, redis::RedisError>(pubsub)
                };
                let pubsub = tokio::select! {
                    () = tx.closed() => return,
                    r = subscribed => r,
                };
                match pubsub {
                    Ok(pubsub) => {
                        if tx.send(ChannelEvent::Subscribed).await.is_err() {
                            return;
                        }
                        let mut messages = pubsub.into_on_message();
                        loop {
                            let msg = tokio::select! {
                                () = tx.closed() => return,
                                msg = messages.next() => msg,
                            };
                            let Some(msg) = msg else { break };
                            let Ok(text) = msg.get_payload::<String>() else {
                                continue;
                            };
                            if tx.send(ChannelEvent::Message(text)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, %channel, "cannot subscribe to a Redis channel");
                    }
                }
                tokio::select! {
                    () = tx.closed() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        });
        rx
    }

    /// The prefix of every key.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `prefix` + `key`.
    pub fn key(&self, key: &str) -> String {
        format!("{}{}", self.prefix, key)
    }

    /// A multiplexed connection (cheap to clone; reconnects on failure).
    pub fn connection(&self) -> redis::aio::ConnectionManager {
        self.conn.clone()
    }

    /// The client, for pub/sub connections.
    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    /// Sends `PING`.
    pub async fn ping(&self) -> Result<(), StorageError> {
        let mut conn = self.conn.clone();
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(())
    }
}
