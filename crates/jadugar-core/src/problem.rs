//! RFC 9457 problem details (`application/problem+json`).
//!
//! Every error any Jadugar HTTP API returns is a [`Problem`]: a stable `type`
//! a client can branch on, a human `title` and `detail`, the HTTP `status`,
//! the request id, and for validation failures (422) one entry per bad field.
//! Internal causes never go into a Problem; log them with `tracing` and
//! return [`Problem::internal`].
//!
//! ```
//! use jadugar_core::{FieldError, Problem};
//!
//! let problem = Problem::validation(vec![
//!     FieldError::new("email", "must contain @"),
//!     FieldError::new("password", "must be at least 12 characters"),
//! ]);
//! let json = serde_json::to_value(&problem).unwrap();
//! assert_eq!(json["status"], 422);
//! assert_eq!(json["type"], "https://jadugar.dev/problems/validation");
//! assert_eq!(json["errors"][0]["field"], "email");
//!
//! let response: http::Response<bytes::Bytes> = problem.to_response();
//! assert_eq!(response.headers()["content-type"], "application/problem+json");
//! ```

use std::fmt;

use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::request_id;

/// Base of every problem `type` URI.
pub const TYPE_BASE: &str = "https://jadugar.dev/problems/";

/// The content type of a [`Problem`] body.
pub const CONTENT_TYPE: &str = "application/problem+json";

/// An RFC 9457 problem details object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Problem {
    /// A stable URI identifying the kind of problem.
    #[serde(rename = "type")]
    pub r#type: String,
    /// A short, human-readable summary of the kind of problem.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// A human-readable explanation of this occurrence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// A URI reference identifying this occurrence (usually the request path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// The id of the request that failed, as in its `x-request-id` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// One entry per invalid field (validation problems only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// Seconds after which the client may retry (429 and 503); sent as the
    /// `Retry-After` header, not in the body.
    #[serde(skip)]
    pub retry_after: Option<u64>,
    /// The `WWW-Authenticate` challenge of a 401; sent as a header.
    #[serde(skip)]
    pub www_authenticate: Option<String>,
}

/// One invalid field of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FieldError {
    /// The field's path in the request, e.g. `email` or `labels[2]`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl FieldError {
    /// A field error for `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl Problem {
    /// A problem of kind `slug` (appended to [`TYPE_BASE`]) with `status`.
    ///
    /// The request id of the request being served, if any, is filled in.
    pub fn new(status: StatusCode, slug: &str, title: impl Into<String>) -> Self {
        Self {
            r#type: format!("{TYPE_BASE}{slug}"),
            title: title.into(),
            status: status.as_u16(),
            detail: None,
            instance: None,
            request_id: request_id::current(),
            errors: Vec::new(),
            retry_after: None,
            www_authenticate: None,
        }
    }

    /// Sets the detail.
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Sets the instance.
    pub fn with_instance(mut self, instance: impl Into<String>) -> Self {
        self.instance = Some(instance.into());
        self
    }

    /// Sets the request id.
    pub fn with_request_id(mut self, request_id: impl Into<String>) -> Self {
        self.request_id = Some(request_id.into());
        self
    }

    /// Sets `Retry-After`, in seconds.
    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// Sets the `WWW-Authenticate` challenge.
    pub fn with_www_authenticate(mut self, challenge: impl Into<String>) -> Self {
        self.www_authenticate = Some(challenge.into());
        self
    }

    /// 400: the request is malformed.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad-request", "Bad request").with_detail(detail)
    }

    /// 401: no or bad credentials. Carries a `Bearer` challenge.
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Not authenticated",
        )
        .with_detail(detail)
        .with_www_authenticate("Bearer realm=\"jadugar\"")
    }

    /// 403: authenticated but not allowed.
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden").with_detail(detail)
    }

    /// 404: no such resource.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "Not found").with_detail(detail)
    }

    /// 405: the path exists, but not for this method. The caller adds
    /// `Allow`; see [`method_not_allowed`] for a router's fallback.
    pub fn method_not_allowed(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "Method not allowed",
        )
        .with_detail(detail)
    }

    /// 409: the request conflicts with the current state.
    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", "Conflict").with_detail(detail)
    }

    /// 410: the resource (or the requested history) is gone.
    pub fn gone(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::GONE, "gone", "Gone").with_detail(detail)
    }

    /// 412: an `If-Match` precondition failed.
    pub fn precondition_failed(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::PRECONDITION_FAILED,
            "precondition-failed",
            "Precondition failed",
        )
        .with_detail(detail)
    }

    /// 413: the body is too large.
    pub fn payload_too_large(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            "Payload too large",
        )
        .with_detail(detail)
    }

    /// 415: the body's media type is not one this endpoint reads.
    pub fn unsupported_media_type(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
        )
        .with_detail(detail)
    }

    /// 422: one or more fields are invalid.
    pub fn validation(errors: Vec<FieldError>) -> Self {
        let detail = match errors.as_slice() {
            [one] => format!("{}: {}", one.field, one.message),
            many => format!("{} fields are invalid", many.len()),
        };
        let mut problem = Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
            "Validation failed",
        )
        .with_detail(detail);
        problem.errors = errors;
        problem
    }

    /// 429: too many requests; retry after `retry_after_secs`.
    pub fn too_many_requests(retry_after_secs: u64) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate-limited",
            "Too many requests",
        )
        .with_detail(format!("retry after {retry_after_secs} s"))
        .with_retry_after(retry_after_secs)
    }

    /// 500: something went wrong. Never carries the internal cause: log it.
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal server error",
        )
        .with_detail("something went wrong; quote the request id when reporting it")
    }

    /// 503: a dependency is unavailable.
    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "Service unavailable",
        )
        .with_detail(detail)
    }

    /// The status as a [`StatusCode`].
    pub fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// The JSON body.
    pub fn to_body(&self) -> Bytes {
        // Serialising a struct of strings and numbers cannot fail.
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }

    /// The full HTTP response, for any body type built from [`Bytes`].
    pub fn to_response<B: From<Bytes>>(&self) -> http::Response<B> {
        let mut response = http::Response::new(B::from(self.to_body()));
        *response.status_mut() = self.status_code();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(challenge) = &self.www_authenticate
            && let Ok(value) = HeaderValue::from_str(challenge)
        {
            headers.insert(header::WWW_AUTHENTICATE, value);
        }
        if let Some(id) = &self.request_id
            && let Ok(value) = HeaderValue::from_str(id)
        {
            headers.insert(request_id::HEADER, value);
        }
        response
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.title, self.status)?;
        if let Some(detail) = &self.detail {
            write!(f, ": {detail}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problem {}

impl axum_core::response::IntoResponse for Problem {
    fn into_response(self) -> axum_core::response::Response {
        self.to_response::<axum_core::body::Body>()
    }
}

/// The answer for a path that exists without the request's method, as an
/// axum `Router::method_not_allowed_fallback`: a problem instead of axum's
/// empty 405 (axum still adds `Allow`). Each component's router mounts it
/// last, so it holds wherever the router is embedded.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let problem = jadugar_core::problem::method_not_allowed().await;
/// assert_eq!(problem.status, http::StatusCode::METHOD_NOT_ALLOWED);
/// # });
/// ```
pub async fn method_not_allowed() -> Problem {
    Problem::method_not_allowed(
        "this path does not accept the request's method; Allow lists those it does",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialises_as_rfc9457() {
        let problem = Problem::not_found("no task 7")
            .with_instance("/v1/tracking/tasks/7")
            .with_request_id("req-1");
        let json = serde_json::to_value(&problem).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "type": "https://jadugar.dev/problems/not-found",
                "title": "Not found",
                "status": 404,
                "detail": "no task 7",
                "instance": "/v1/tracking/tasks/7",
                "request_id": "req-1",
            })
        );
    }

    #[test]
    fn validation_lists_each_field() {
        let problem = Problem::validation(vec![
            FieldError::new("title", "must not be empty"),
            FieldError::new("due", "must be a date"),
        ]);
        let json = serde_json::to_value(&problem).unwrap();
        assert_eq!(json["errors"].as_array().unwrap().len(), 2);
        assert_eq!(json["errors"][1]["field"], "due");
        assert_eq!(problem.status, 422);
    }

    #[test]
    fn response_carries_headers() {
        let response: http::Response<Bytes> = Problem::too_many_requests(7).to_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "7");
        assert_eq!(response.headers()[header::CONTENT_TYPE], CONTENT_TYPE);
        let response: http::Response<Bytes> = Problem::unauthorized("no token").to_response();
        assert!(response.headers().contains_key(header::WWW_AUTHENTICATE));
    }

    #[test]
    fn internal_hides_the_cause() {
        let json = serde_json::to_string(&Problem::internal()).unwrap();
        assert!(!json.contains("sql"));
        assert!(json.contains("\"status\":500"));
    }
}
