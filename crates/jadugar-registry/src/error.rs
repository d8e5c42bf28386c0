//! The registry's error type and its mapping to [`Problem`].

use jadugar_core::storage::StorageError;
use jadugar_core::{FieldError, Problem};

/// Everything that can go wrong in the registry.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Input failed validation.
    #[error("invalid input")]
    Validation(Vec<FieldError>),
    /// No such instance, service, key or version.
    #[error("{0} not found")]
    NotFound(String),
    /// A compare-and-set lost: the current version differs.
    #[error("version conflict: current version is {current}")]
    Conflict {
        /// The current version (0 = absent).
        current: u64,
    },
    /// A watcher asked for changes older than the retained history.
    #[error("index {requested} is older than the retained history (from {oldest})")]
    TooOld {
        /// The requested index.
        requested: u64,
        /// The oldest index that can still be served from.
        oldest: u64,
    },
    /// A watcher asked for changes after an index this registry has not
    /// reached: its state was reset (a memory store restarted, a database
    /// restored), so what the watcher saw no longer holds.
    #[error("index {requested} is ahead of the registry's change index {current}")]
    IndexAhead {
        /// The requested index.
        requested: u64,
        /// The registry's change index.
        current: u64,
    },
    /// A value is larger than allowed.
    #[error("value too large: at most {max} bytes")]
    TooLarge {
        /// The limit.
        max: usize,
    },
    /// A SQL error.
    #[error("database error")]
    Database(#[from] sqlx::Error),
    /// A storage setup error.
    #[error("storage error")]
    Storage(#[from] StorageError),
    /// A Redis error.
    #[error("redis error")]
    Redis(#[from] redis::RedisError),
    /// Stored data did not decode.
    #[error("corrupt stored data")]
    Corrupt(#[from] serde_json::Error),
    /// A sealed value did not open.
    #[error("secret could not be opened")]
    Sealer(#[from] jadugar_core::SealerError),
    /// A write was cut short because the runtime is shutting down.
    #[error("write interrupted by shutdown")]
    Interrupted,
    /// The backend is not compiled in.
    #[error("backend {0} is not enabled in this build")]
    BackendDisabled(&'static str),
}

impl Error {
    /// One validation error.
    pub fn field(field: &str, message: &str) -> Self {
        Self::Validation(vec![FieldError::new(field, message)])
    }
}

impl From<FieldError> for Error {
    fn from(err: FieldError) -> Self {
        Self::Validation(vec![err])
    }
}

impl From<Error> for Problem {
    fn from(err: Error) -> Self {
        match err {
            Error::Validation(errors) => Problem::validation(errors),
            Error::NotFound(what) => Problem::not_found(format!("{what} not found")),
            Error::Conflict { current } => Problem::conflict(format!(
                "version conflict: the current version is {current}"
            )),
            Error::TooOld { requested, oldest } => Problem::gone(format!(
                "index {requested} is older than the retained change history (oldest {oldest}); list again and watch from the returned index"
            )),
            Error::IndexAhead { requested, current } => Problem::gone(format!(
                "index {requested} is ahead of the registry's change index {current} (its state was reset); list again and watch from the returned index"
            )),
            Error::TooLarge { max } => {
                Problem::payload_too_large(format!("the value may be at most {max} bytes"))
            }
            Error::Interrupted => Problem::unavailable("the registry is shutting down"),
            other => {
                tracing::error!(error = ?other, "registry internal error");
                Problem::internal()
            }
        }
    }
}

impl axum::response::IntoResponse for Error {
    fn into_response(self) -> axum::response::Response {
        Problem::from(self).into_response()
    }
}
