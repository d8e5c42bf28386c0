//! Conditional requests: the `If-Match` precondition of optimistic
//! concurrency (RFC 9110 §13.1.1), one reading for every component.
//!
//! Resources carry a version number and send it as a strong ETag
//! (`"3"`). A write with `If-Match` applies only to that version; `*`
//! matches any current version, as does no header at all. A value that
//! names no version (a malformed tag, a list of tags, a number out of
//! range) can match nothing, so it fails the precondition (412) instead
//! of being ignored.

use http::{HeaderMap, header};

use crate::Problem;

/// The version an `If-Match` header requires: `Ok(None)` without the
/// header or with `*`, `Ok(Some(v))` for `"v"` (or the weak `W/"v"`),
/// and a 412 problem for anything else.
///
/// ```
/// use http::{HeaderMap, HeaderValue, StatusCode, header::IF_MATCH};
/// use jadugar_core::conditional::if_match_version;
///
/// let mut headers = HeaderMap::new();
/// assert_eq!(if_match_version::<u64>(&headers).unwrap(), None);
/// headers.insert(IF_MATCH, HeaderValue::from_static("\"3\""));
/// assert_eq!(if_match_version::<u64>(&headers).unwrap(), Some(3));
/// headers.insert(IF_MATCH, HeaderValue::from_static("*"));
/// assert_eq!(if_match_version::<i64>(&headers).unwrap(), None);
/// headers.insert(IF_MATCH, HeaderValue::from_static("latest"));
/// let problem = if_match_version::<u64>(&headers).unwrap_err();
/// assert_eq!(problem.status, StatusCode::PRECONDITION_FAILED);
/// ```
pub fn if_match_version<V: std::str::FromStr>(headers: &HeaderMap) -> Result<Option<V>, Problem> {
    let mut values = headers.get_all(header::IF_MATCH).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(no_such_version());
    }
    let text = value.to_str().map_err(|_| no_such_version())?.trim();
    if text == "*" {
        return Ok(None);
    }
    let tag = text.strip_prefix("W/").unwrap_or(text);
    tag.strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|v| v.parse().ok())
        .map(Some)
        .ok_or_else(no_such_version)
}

fn no_such_version() -> Problem {
    Problem::precondition_failed(
        "If-Match names no current version of this resource (expected an ETag such as \"3\", or *)",
    )
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn with(values: &[&'static str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(header::IF_MATCH, HeaderValue::from_static(v));
        }
        headers
    }

    #[test]
    fn versions_stars_and_refusals() {
        assert_eq!(if_match_version::<u64>(&with(&[])).ok(), Some(None));
        assert_eq!(if_match_version::<u64>(&with(&["*"])).ok(), Some(None));
        assert_eq!(
            if_match_version::<u64>(&with(&[" \"7\" "])).ok(),
            Some(Some(7))
        );
        assert_eq!(
            if_match_version::<i64>(&with(&["W/\"7\""])).ok(),
            Some(Some(7))
        );
        for bad in [
            "7",
            "\"\"",
            "\"-1\"",
            "\"+1\"",
            "\"1",
            "\"x\"",
            "\"99999999999999999999\"",
        ] {
            let problem = if_match_version::<i64>(&with(&[bad])).expect_err(bad);
            assert_eq!(
                problem.status,
                http::StatusCode::PRECONDITION_FAILED,
                "{bad}"
            );
        }
        assert!(if_match_version::<u64>(&with(&["\"1\"", "\"2\""])).is_err());
    }
}
