//! Request extractors for the components' JSON APIs whose rejections are
//! problems (RFC 9457) naming the field, not axum's plain-text ones.
//!
//! - [`JsonBody`]: a JSON body. Malformed JSON, a wrong type, a missing or
//!   unknown field is a 422 whose `errors[].field` is the JSON path
//!   (`roles[1]`, `email`); a body over the route's limit 413; a
//!   `Content-Type` other than JSON 415 (a body without one is read as JSON).
//! - [`QueryParams`]: a query string; a bad parameter is a 422 naming it.
//!
//! ```
//! use axum_core::extract::{FromRequest, FromRequestParts};
//! use jadugar_core::extract::{JsonBody, QueryParams};
//!
//! #[derive(Debug, serde::Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct NewThing {
//!     name: String,
//! }
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let req = http::Request::post("/things?limit=ten")
//!     .header("content-type", "application/json")
//!     .body(axum_core::body::Body::from(r#"{"name": "a", "nmae": "b"}"#))
//!     .unwrap();
//! let (mut parts, body) = req.into_parts();
//! let bad_query = QueryParams::<std::collections::HashMap<String, u32>>::from_request_parts(&mut parts, &())
//!     .await
//!     .unwrap_err();
//! assert_eq!(bad_query.status, 422);
//! let req = http::Request::from_parts(parts, body);
//! let problem = JsonBody::<NewThing>::from_request(req, &()).await.unwrap_err();
//! assert_eq!(problem.status, 422);
//! assert!(problem.errors[0].message.contains("unknown field `nmae`"));
//! # });
//! ```

use axum_core::extract::{FromRequest, FromRequestParts, Request};
use bytes::Bytes;
use http::request::Parts;
use http::{StatusCode, header};
use serde::de::DeserializeOwned;

use crate::{FieldError, Problem};

/// A JSON request body; see the [module docs](self).
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Problem> {
        if let Some(media) = req.headers().get(header::CONTENT_TYPE)
            && !is_json(media.as_bytes())
        {
            return Err(Problem::unsupported_media_type(
                "the body must be JSON (Content-Type: application/json)",
            ));
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| match e.status() {
                StatusCode::PAYLOAD_TOO_LARGE => {
                    Problem::payload_too_large("the body is too large")
                }
                _ => Problem::bad_request("the body could not be read"),
            })?;
        let de = &mut serde_json::Deserializer::from_slice(&bytes);
        serde_path_to_error::deserialize(de)
            .map(JsonBody)
            .map_err(|e| {
                let path = e.path().to_string();
                let field = if path == "." { "body".to_owned() } else { path };
                let inner = e.into_inner();
                let message = if inner.is_syntax() || inner.is_eof() {
                    "is not valid JSON".to_owned()
                } else {
                    inner.to_string()
                };
                Problem::validation(vec![FieldError::new(field, message)])
            })
    }
}

/// `application/json` or any `+json` type, parameters allowed.
fn is_json(media: &[u8]) -> bool {
    let essence = media.split(|&b| b == b';').next().unwrap_or_default();
    let essence = essence.trim_ascii();
    essence.eq_ignore_ascii_case(b"application/json")
        || (essence.len() > 5 && essence[essence.len() - 5..].eq_ignore_ascii_case(b"+json"))
}

/// A query string; see the [module docs](self).
#[derive(Debug, Clone, Copy, Default)]
pub struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryParams<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Problem> {
        let query = parts.uri.query().unwrap_or_default();
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(de)
            .map(QueryParams)
            .map_err(|e| {
                let path = e.path().to_string();
                let field = if path == "." {
                    "query".to_owned()
                } else {
                    path
                };
                Problem::validation(vec![FieldError::new(field, e.into_inner().to_string())])
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_media_types() {
        for ok in [
            &b"application/json"[..],
            b"Application/JSON; charset=utf-8",
            b"application/merge-patch+json",
        ] {
            assert!(is_json(ok), "{}", String::from_utf8_lossy(ok));
        }
        for bad in [&b"text/plain"[..], b"application/jsonp", b"+json", b""] {
            assert!(!is_json(bad), "{}", String::from_utf8_lossy(bad));
        }
    }
}
