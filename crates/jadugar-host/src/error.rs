//! The host's error: everything that can stop it from starting or serving.
//!
//! Each variant's message is one line meant for an operator, naming what is
//! wrong and where; the binary prints it and exits non-zero.

use std::path::PathBuf;

use jadugar_core::storage::StorageError;

use crate::config::ConfigErrors;

/// Why the host could not start, serve or run a command.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigErrors),
    /// The data directory could not be created or written.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The master key file could not be read, written or parsed.
    #[error("master key {path}: {message}")]
    MasterKey {
        /// The key file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// No master key while the database is shared between hosts.
    #[error(
        "set JADUGAR_MASTER_KEY (or master_key): with Postgres every host must share one master key, so none is generated"
    )]
    MasterKeyRequired,
    /// The database could not be reached or prepared.
    #[error("cannot use the database {url}: {source}")]
    Database {
        /// The URL, password redacted.
        url: String,
        /// The cause.
        #[source]
        source: StorageError,
    },
    /// Redis could not be reached.
    #[error("cannot use redis {url}: {source}")]
    Redis {
        /// The URL, password redacted.
        url: String,
        /// The cause.
        #[source]
        source: StorageError,
    },
    /// A component failed to start.
    #[error("component {component} failed to start: {message}")]
    Component {
        /// The component's name.
        component: &'static str,
        /// What went wrong.
        message: String,
    },
    /// The TLS certificate or key could not be loaded.
    #[error("TLS: {0}")]
    Tls(String),
    /// The listener could not be bound or used.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A backup could not be made.
    #[error("backup: {0}")]
    Backup(String),
    /// A user or API key command was refused (invalid input, unknown
    /// owner, duplicate, ...); the message names the field.
    #[error("{0}")]
    Auth(String),
    /// Something else failed with an I/O error.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}
