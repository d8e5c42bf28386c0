//! The crate's error type and its mapping to [`Problem`].

use http::StatusCode;
use jadugar_core::{FieldError, Problem};

use crate::store::StoreError;

/// Everything that can go wrong in tracking.
///
/// ```
/// use jadugar_core::Problem;
/// use jadugar_tracking::Error;
///
/// let problem = Problem::from(Error::Transition { from: "backlog".into(), to: "done".into() });
/// assert_eq!(problem.status, 422);
/// assert!(problem.detail.unwrap().contains("backlog"));
/// ```
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input; one entry per field.
    #[error("validation failed")]
    Validation(Vec<FieldError>),
    /// The workflow does not allow this move.
    #[error("the workflow does not allow moving from {from:?} to {to:?}")]
    Transition {
        /// Current status.
        from: String,
        /// Requested status.
        to: String,
    },
    /// Completing a task whose blockers are still open.
    #[error("the task is blocked by open tasks: {0}")]
    OpenBlockers(String),
    /// No such thing (or not visible to the caller).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The caller lacks a permission.
    #[error("missing permission {0}")]
    Forbidden(String),
    /// `If-Match` named another version.
    #[error("the resource has changed since version {0}")]
    PreconditionFailed(String),
    /// A concurrent change won.
    #[error("conflict: {0}")]
    Conflict(String),
    /// An `Idempotency-Key` was reused with a different request.
    #[error("the Idempotency-Key was already used with a different request")]
    IdempotencyMismatch,
    /// A cursor was forged or garbled.
    #[error("invalid cursor")]
    Cursor(#[from] jadugar_core::CursorError),
    /// Storage failed.
    #[error("storage failed")]
    Store(#[source] StoreError),
    /// Setting up storage failed.
    #[error("storage setup failed")]
    Setup(#[from] jadugar_core::storage::StorageError),
    /// A sealed secret could not be opened.
    #[error("a webhook secret could not be unsealed")]
    Seal(#[from] jadugar_core::SealerError),
    /// The HTTP client could not be built.
    #[error("HTTP client setup failed")]
    Client(#[from] reqwest::Error),
}

impl Error {
    /// A single-field validation error.
    pub fn field(field: &str, message: impl Into<String>) -> Self {
        Self::Validation(vec![FieldError::new(field, message)])
    }
}

impl From<StoreError> for Error {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Conflict(what) => Self::Conflict(what),
            other => Self::Store(other),
        }
    }
}

impl From<Error> for Problem {
    fn from(err: Error) -> Self {
        match err {
            Error::Validation(errors) => Problem::validation(errors),
            Error::Transition { ref from, ref to } => Problem::validation(vec![FieldError::new(
                "status",
                format!("transition from {from:?} to {to:?} is not allowed by the workflow"),
            )])
            .with_detail(err.to_string()),
            Error::OpenBlockers(_) => Problem::new(
                StatusCode::CONFLICT,
                "open-blockers",
                "Task has open blockers",
            )
            .with_detail(format!(
                "{err}; close them first, or set force (needs tracking:admin)"
            )),
            Error::NotFound(what) => Problem::not_found(format!("no such {what}")),
            Error::Forbidden(p) => Problem::forbidden(format!("missing permission {p}")),
            Error::PreconditionFailed(_) => Problem::precondition_failed(err.to_string()),
            Error::Conflict(_) => {
                Problem::conflict("a concurrent change won; read the resource again and retry")
            }
            Error::IdempotencyMismatch => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency-key-reused",
                "Idempotency-Key reused",
            )
            .with_detail(err.to_string()),
            Error::Cursor(c) => c.into(),
            Error::Store(ref source) => {
                tracing::error!(error = ?source, "tracking storage failed");
                Problem::internal()
            }
            Error::Setup(ref source) => {
                tracing::error!(error = ?source, "tracking storage setup failed");
                Problem::internal()
            }
            Error::Seal(ref source) => {
                tracing::error!(error = ?source, "webhook secret could not be unsealed");
                Problem::internal()
            }
            Error::Client(ref source) => {
                tracing::error!(error = ?source, "webhook HTTP client failed");
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
