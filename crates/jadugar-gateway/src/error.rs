//! The gateway's errors and their problem responses.

use jadugar_core::{FieldError, Problem};

use crate::store::StoreError;

/// What can go wrong managing the gateway.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A route (or the route set it would produce) is invalid.
    #[error("invalid route configuration: {}", fields(.0))]
    Invalid(Vec<FieldError>),
    /// No such route.
    #[error("no route {0}")]
    NotFound(String),
    /// The id is taken.
    #[error("route {0} already exists")]
    AlreadyExists(String),
    /// The route comes from the configuration file and cannot be changed here.
    #[error("route {0} is defined in the configuration file")]
    ReadOnly(String),
    /// `If-Match` did not hold.
    #[error("route {id} is at revision {current}")]
    RevisionMismatch {
        /// The route.
        id: String,
        /// Its current revision.
        current: i64,
    },
    /// The route store failed.
    #[error("route store: {0}")]
    Store(#[source] StoreError),
    /// A database or Redis connection failed.
    #[error("storage: {0}")]
    Storage(#[from] jadugar_core::storage::StorageError),
}

/// `routes[1].path: must start with '/'; ...`, for a one-line message.
fn fields(errors: &[FieldError]) -> String {
    let parts: Vec<String> = errors
        .iter()
        .map(|e| format!("{}: {}", e.field, e.message))
        .collect();
    parts.join("; ")
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(id) => Self::NotFound(id),
            StoreError::AlreadyExists(id) => Self::AlreadyExists(id),
            StoreError::Conflict { id, current } => Self::RevisionMismatch { id, current },
            other => Self::Store(other),
        }
    }
}

impl From<&Error> for Problem {
    fn from(e: &Error) -> Self {
        match e {
            Error::Invalid(errors) => Problem::validation(errors.clone()),
            Error::NotFound(id) => Problem::not_found(format!("no route {id}")),
            Error::AlreadyExists(id) => Problem::conflict(format!("route {id} already exists")),
            Error::ReadOnly(id) => Problem::conflict(format!(
                "route {id} is defined in the configuration file; change it there"
            )),
            Error::RevisionMismatch { id, current } => {
                Problem::precondition_failed(format!("route {id} is at revision {current}"))
            }
            Error::Store(_) | Error::Storage(_) => {
                tracing::error!(error = %e, "gateway storage failure");
                Problem::internal()
            }
        }
    }
}

impl From<Error> for Problem {
    fn from(e: Error) -> Self {
        Problem::from(&e)
    }
}

impl axum::response::IntoResponse for Error {
    fn into_response(self) -> axum::response::Response {
        Problem::from(&self).into_response()
    }
}
