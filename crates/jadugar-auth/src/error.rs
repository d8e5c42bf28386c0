//! The crate's error type and its mapping to [`Problem`].
//!
//! ```
//! use jadugar_auth::Error;
//! use jadugar_core::Problem;
//!
//! let problem = Problem::from(Error::InvalidCredentials);
//! assert_eq!(problem.status, 401);
//! ```

use jadugar_core::{FieldError, Problem};

use crate::store::StoreError;

/// Everything that can go wrong in auth.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Wrong email or password (the same for unknown accounts).
    #[error("invalid email or password")]
    InvalidCredentials,
    /// A credential (token, key, refresh token) is missing, malformed, expired or revoked.
    #[error("invalid credential: {0}")]
    Unauthenticated(&'static str),
    /// The caller lacks a permission.
    #[error("missing permission {0}")]
    Forbidden(String),
    /// The caller may not do this for another reason.
    #[error("{0}")]
    NotAllowed(&'static str),
    /// Input fields are invalid.
    #[error("invalid input")]
    Validation(Vec<FieldError>),
    /// No such thing.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A conflicting record exists.
    #[error("{0} already exists")]
    Conflict(&'static str),
    /// `If-Match` named a version the record no longer has (or never had).
    #[error("the {0} changed since the version in If-Match")]
    PreconditionFailed(&'static str),
    /// Concurrent writes to the record kept winning over this one; retry.
    #[error("the {0} is being changed concurrently; retry")]
    Contended(&'static str),
    /// Too many attempts; retry after the given seconds.
    #[error("too many attempts")]
    Throttled(u64),
    /// The request failed a CSRF check.
    #[error("CSRF check failed")]
    Csrf,
    /// A store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Redis failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Migrations or connections failed.
    #[error(transparent)]
    Storage(#[from] jadugar_core::storage::StorageError),
    /// A signing key could not be created, sealed or opened.
    #[error("signing key: {0}")]
    Key(String),
    /// A background or blocking task failed.
    #[error("internal: {0}")]
    Internal(String),
}

impl Error {
    /// A one-field validation error.
    pub fn field(field: &str, message: impl Into<String>) -> Self {
        Self::Validation(vec![FieldError::new(field, message)])
    }
}

impl From<Error> for Problem {
    fn from(err: Error) -> Self {
        match err {
            Error::InvalidCredentials => Problem::unauthorized("invalid email or password"),
            Error::Unauthenticated(why) => Problem::unauthorized(why)
                .with_www_authenticate("Bearer realm=\"jadugar\", error=\"invalid_token\""),
            Error::Forbidden(perm) => Problem::forbidden(format!("missing permission {perm}")),
            Error::NotAllowed(why) => Problem::forbidden(why),
            Error::Validation(errors) => Problem::validation(errors),
            Error::NotFound(what) => Problem::not_found(format!("{what} not found")),
            Error::Conflict(what) => Problem::conflict(format!("{what} already exists")),
            Error::PreconditionFailed(what) => Problem::precondition_failed(format!(
                "the {what} changed since the version in If-Match; read it again"
            )),
            Error::Contended(what) => {
                Problem::conflict(format!("the {what} is being changed concurrently; retry"))
            }
            Error::Throttled(secs) => Problem::too_many_requests(secs.max(1)),
            Error::Csrf => Problem::forbidden(
                "CSRF check failed: send the x-csrf-token header from the csrf cookie, from an allowed origin",
            ),
            Error::Store(StoreError::Conflict(what)) => {
                Problem::conflict(format!("{what} already exists"))
            }
            Error::Store(StoreError::Stale) => {
                Problem::conflict("a concurrent change won; read the record again and retry")
            }
            other => {
                tracing::error!(error = %other, "auth internal error");
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
