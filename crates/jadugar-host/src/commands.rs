//! The one-shot commands: `jadugar migrate` and `jadugar backup`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), jadugar_host::HostError> {
//! use jadugar_host::{Config, commands};
//!
//! let config = Config::default();
//! let recorded = commands::migrate(&config).await?;
//! let bytes = commands::backup(&config, std::path::Path::new("./backup.db")).await?;
//! println!("{recorded} migrations; backup of {bytes} bytes");
//! # Ok(()) }
//! ```

use std::path::Path;

use jadugar_core::storage::{Database, redact_url};

use crate::backends::{open_database, sqlite_path};
use crate::components;
use crate::config::Config;
use crate::error::HostError;

/// Applies every component's migrations; returns how many migrations the
/// database has recorded in all.
pub async fn migrate(config: &Config) -> Result<i64, HostError> {
    let database = open_database(config).await?;
    let result = async {
        components::migrate_all(&database).await?;
        applied_migrations(&database)
            .await
            .map_err(|source| HostError::Database {
                url: redact_url(&config.effective_database_url()),
                source: source.into(),
            })
    }
    .await;
    database.close().await;
    result
}

async fn applied_migrations(database: &Database) -> Result<i64, sqlx::Error> {
    let count = match database {
        Database::Sqlite(pool) => {
            let exists: Option<(String,)> = sqlx::query_as(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
            )
            .fetch_optional(pool)
            .await?;
            if exists.is_none() {
                return Ok(0);
            }
            sqlx::query_as::<_, (i64,)>("SELECT count(*) FROM _sqlx_migrations")
                .fetch_one(pool)
                .await?
                .0
        }
        Database::Postgres(pool) => {
            let exists: (bool,) =
                sqlx::query_as("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
                    .fetch_one(pool)
                    .await?;
            if !exists.0 {
                return Ok(0);
            }
            sqlx::query_as::<_, (i64,)>("SELECT count(*) FROM _sqlx_migrations")
                .fetch_one(pool)
                .await?
                .0
        }
    };
    Ok(count)
}

/// Writes a consistent copy of the SQLite database to `dest` with
/// `VACUUM INTO`, safe while the host is serving. Returns the copy's size
/// in bytes. For Postgres, explains how to use `pg_dump` instead.
pub async fn backup(config: &Config, dest: &Path) -> Result<u64, HostError> {
    let url = config.effective_database_url();
    let Some(source) = sqlite_path(&url) else {
        if url.starts_with("postgres") {
            return Err(HostError::Backup(format!(
                "the database is Postgres; back it up with its own tools, e.g. `pg_dump --format=custom --file=jadugar.dump '{}'`",
                redact_url(&url)
            )));
        }
        return Err(HostError::Backup(format!(
            "{} is not a database file that can be backed up",
            redact_url(&url)
        )));
    };
    if !source.exists() {
        return Err(HostError::Backup(format!(
            "no database at {} (has the host run with this configuration?)",
            source.display()
        )));
    }
    if dest.exists() {
        return Err(HostError::Backup(format!(
            "{} already exists; choose a new file",
            dest.display()
        )));
    }
    let dest_text = dest
        .to_str()
        .ok_or_else(|| HostError::Backup(format!("{} is not a UTF-8 path", dest.display())))?;
    let database = open_database(config).await?;
    let result = match &database {
        Database::Sqlite(pool) => sqlx::query("VACUUM INTO ?")
            .bind(dest_text)
            .execute(pool)
            .await
            .map_err(|e| HostError::Backup(format!("VACUUM INTO {}: {e}", dest.display()))),
        Database::Postgres(_) => Err(HostError::Backup("not a SQLite database".into())),
    };
    database.close().await;
    result?;
    std::fs::metadata(dest)
        .map(|m| m.len())
        .map_err(|source| HostError::Io {
            context: format!("backup {}", dest.display()),
            source,
        })
}
