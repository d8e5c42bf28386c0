//! What every component is built from: the database, Redis, the clock and
//! the sealer, opened from a [`Config`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), jadugar_host::HostError> {
//! use jadugar_host::{Backends, Config};
//!
//! let config = Config::default(); // ./jadugar-data/jadugar.db, generated master key
//! let backends = Backends::open(&config).await?;
//! let sealed = backends.sealer.seal(b"webhook secret", b"webhook:1");
//! backends.close().await;
//! # let _ = sealed; Ok(()) }
//! ```

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use jadugar_core::storage::{Database, DatabaseOptions, Redis, redact_url};
use jadugar_core::{MasterKey, Sealer, SharedClock, SystemClock};

use crate::config::Config;
use crate::error::HostError;

/// The shared backends handed to every component.
#[derive(Debug, Clone)]
pub struct Backends {
    /// The SQL database.
    pub database: Database,
    /// Redis, when configured.
    pub redis: Option<Redis>,
    /// The clock.
    pub clock: SharedClock,
    /// Seals secrets at rest under the master key.
    pub sealer: Sealer,
}

impl Backends {
    /// Opens everything `config` names: creates the data directory when the
    /// embedded database or a generated master key needs it, connects the
    /// database and Redis, and loads (or generates) the master key.
    pub async fn open(config: &Config) -> Result<Self, HostError> {
        let database = open_database(config).await?;
        let redis = open_redis(config).await?;
        let sealer = match load_sealer(config, &database) {
            Ok(sealer) => sealer,
            Err(e) => {
                database.close().await;
                return Err(e);
            }
        };
        Ok(Self {
            database,
            redis,
            clock: SystemClock::shared(),
            sealer,
        })
    }

    /// Closes the database pool.
    pub async fn close(&self) {
        self.database.close().await;
    }
}

/// Creates `path` (and parents) with mode 0700 if missing, and checks that
/// it is a writable directory.
pub fn ensure_data_dir(path: &Path) -> Result<(), HostError> {
    let fail = |source| HostError::DataDir {
        path: path.to_owned(),
        source,
    };
    if !path.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(fail)?;
    }
    let meta = std::fs::metadata(path).map_err(fail)?;
    if !meta.is_dir() {
        return Err(fail(std::io::Error::new(
            std::io::ErrorKind::NotADirectory,
            "exists and is not a directory",
        )));
    }
    // Probe writability: permission bits do not tell the whole story (root,
    // read-only mounts).
    let probe = path.join(format!(".jadugar-write-test-{}", std::process::id()));
    std::fs::File::create(&probe).map_err(fail)?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Connects the configured database (creating the data directory for the
/// default SQLite file).
pub async fn open_database(config: &Config) -> Result<Database, HostError> {
    let url = config.effective_database_url();
    if config.database_url.is_none() {
        ensure_data_dir(&config.data_dir)?;
    } else if let Some(path) = sqlite_path(&url)
        && let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
    {
        ensure_data_dir(parent)?;
    }
    let options = DatabaseOptions {
        max_connections: config.database_max_connections,
        acquire_timeout: Duration::from_secs(config.database_timeout_secs),
        schema: config.database_schema.clone(),
    };
    Database::connect(&url, &options)
        .await
        .map_err(|source| HostError::Database {
            url: redact_url(&url),
            source,
        })
}

/// Connects Redis when configured.
pub async fn open_redis(config: &Config) -> Result<Option<Redis>, HostError> {
    let Some(url) = &config.redis_url else {
        return Ok(None);
    };
    Redis::connect(url, config.redis_prefix.clone())
        .await
        .map(Some)
        .map_err(|source| HostError::Redis {
            url: redact_url(url),
            source,
        })
}

/// The file path of a `sqlite://` URL, if it names a file.
pub fn sqlite_path(url: &str) -> Option<&Path> {
    let rest = url.strip_prefix("sqlite:")?;
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let rest = rest.split('?').next().unwrap_or(rest);
    if rest.is_empty() || rest == ":memory:" {
        return None;
    }
    Some(Path::new(rest))
}

/// The sealer: the configured master key (and older ones), or for the
/// embedded database the key in `data_dir/master.key`, generated on first
/// start.
pub fn load_sealer(config: &Config, database: &Database) -> Result<Sealer, HostError> {
    let older = config
        .old_master_keys
        .iter()
        .map(|key| {
            MasterKey::parse(key.expose()).map_err(|e| HostError::MasterKey {
                path: "old_master_keys".into(),
                message: e.to_string(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let primary = match &config.master_key {
        Some(key) => MasterKey::parse(key.expose()).map_err(|e| HostError::MasterKey {
            path: "master_key".into(),
            message: e.to_string(),
        })?,
        None if matches!(database, Database::Postgres(_)) => {
            return Err(HostError::MasterKeyRequired);
        }
        None => {
            ensure_data_dir(&config.data_dir)?;
            load_or_generate_key(&config.master_key_path())?
        }
    };
    Ok(Sealer::new(primary, older))
}

/// Reads the key at `path`, or writes a fresh one there with mode 0600.
pub fn load_or_generate_key(path: &Path) -> Result<MasterKey, HostError> {
    let fail = |message: String| HostError::MasterKey {
        path: path.to_owned(),
        message,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let mode = std::fs::metadata(path)
                .map(|m| m.permissions().mode() & 0o777)
                .unwrap_or(0o600);
            if mode & 0o077 != 0 {
                tracing::warn!(path = %path.display(), mode = format!("{mode:o}"), "master key file is readable by others; chmod 600 it");
            }
            MasterKey::parse(&text).map_err(|e| fail(e.to_string()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = MasterKey::generate(format!("k{}", chrono_free_stamp()));
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path);
            let mut file = match file {
                Ok(file) => file,
                // Another process created it first: use theirs.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let text = std::fs::read_to_string(path)
                        .map_err(|e| fail(format!("cannot read: {e}")))?;
                    return MasterKey::parse(&text).map_err(|e| fail(e.to_string()));
                }
                Err(e) => return Err(fail(format!("cannot create: {e}"))),
            };
            file.write_all(key.to_text().as_bytes())
                .and_then(|()| file.write_all(b"\n"))
                .and_then(|()| file.sync_all())
                .map_err(|e| fail(format!("cannot write: {e}")))?;
            tracing::info!(path = %path.display(), id = key.id(), "generated a new master key");
            Ok(key)
        }
        Err(e) => Err(fail(format!("cannot read: {e}"))),
    }
}

/// Seconds since the epoch, as a key id suffix that orders keys by age.
fn chrono_free_stamp() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_paths() {
        assert_eq!(
            sqlite_path("sqlite://./a/b.db"),
            Some(Path::new("./a/b.db"))
        );
        assert_eq!(sqlite_path("sqlite:x.db?mode=rwc"), Some(Path::new("x.db")));
        assert_eq!(sqlite_path("sqlite::memory:"), None);
        assert_eq!(sqlite_path("postgres://h/db"), None);
    }
}
