//! Request extractors for the components' JSON APIs whose rejections are
//! problems (RFC 9457) naming the field, not axum's plain-text ones.
//!
//! - [`JsonBody`]: a JSON body. Malformed JSON, a wrong type, a missing or
//!   unknown field is a 422 whose `errors[].field` is the JSON path
//!   (`roles[1]`, `email`); a body over the route's limit 413; a
//!   `Content-Type` other than JSON 415 (a body without one is read as JSON).
//! - [`QueryParams`]: a query string; a bad parameter is a 422 naming it.
//! - [`not_null`] and [`double_option`]: `deserialize_with` helpers for
//!   the fields of a PATCH body, which tell a left-out field from `null`.
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
use serde::Deserialize as _;
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
        Self::parse(parts.uri.query().unwrap_or_default())
    }
}

impl<T: DeserializeOwned> QueryParams<T> {
    /// Parses a raw query string (without `?`) as the extractor does, for
    /// handlers that take the query as they received it.
    ///
    /// ```
    /// use jadugar_core::extract::QueryParams;
    /// let page = QueryParams::<std::collections::HashMap<String, u32>>::parse("limit=10").unwrap();
    /// assert_eq!(page.0["limit"], 10);
    /// assert_eq!(QueryParams::<std::collections::HashMap<String, u32>>::parse("limit=x").unwrap_err().errors[0].field, "limit");
    /// ```
    pub fn parse(query: &str) -> Result<Self, Problem> {
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

/// For a PATCH field that may be left out but not sent as `null`: the
/// value it patches cannot be removed, and ignoring the `null` would report
/// success for a change that was not made. With [`JsonBody`] the error is a
/// 422 naming the field.
///
/// ```
/// use jadugar_core::extract::{double_option, not_null};
///
/// #[derive(Debug, serde::Deserialize)]
/// struct Patch {
///     #[serde(default, deserialize_with = "not_null")]
///     name: Option<String>,
///     #[serde(default, deserialize_with = "double_option")]
///     due: Option<Option<String>>,
/// }
///
/// let p: Patch = serde_json::from_str(r#"{"due": null}"#).unwrap();
/// assert_eq!((p.name, p.due), (None, Some(None)));
/// let p: Patch = serde_json::from_str(r#"{"name": "a", "due": "x"}"#).unwrap();
/// assert_eq!((p.name.as_deref(), p.due), (Some("a"), Some(Some("x".into()))));
/// let err = serde_json::from_str::<Patch>(r#"{"name": null}"#).unwrap_err();
/// assert!(err.to_string().contains("may not be null"));
/// ```
pub fn not_null<'de, T, D>(d: D) -> Result<Option<T>, D::Error>
where
    T: serde::Deserialize<'de>,
    D: serde::Deserializer<'de>,
{
    match Option::<T>::deserialize(d)? {
        Some(value) => Ok(Some(value)),
        None => Err(serde::de::Error::custom(
            "may not be null: leave the field out to keep its value",
        )),
    }
}

/// For a PATCH field that can be cleared: absent is `None` (keep), `null`
/// is `Some(None)` (clear), a value is `Some(Some(v))`. Pair it with
/// `#[serde(default)]`; see [`not_null`] for an example.
pub fn double_option<'de, T, D>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    T: serde::Deserialize<'de>,
    D: serde::Deserializer<'de>,
{
    Option::<T>::deserialize(d).map(Some)
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
