//! Opaque, tamper-evident cursor pagination.
//!
//! A cursor is the position after the last item of a page (typically the
//! sort key and id of that item), serialised, and signed with HMAC-SHA256
//! under a key derived from the master key. Clients cannot read meaning into
//! it or forge one: a garbled, truncated or forged cursor decodes to
//! [`CursorError`], which is a 400 [`Problem`], never a panic.
//!
//! ```
//! use jadugar_core::{CursorCodec, Page};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize, PartialEq, Debug)]
//! struct After { created: i64, id: String }
//!
//! let codec = CursorCodec::new([7; 32]);
//! let cursor = codec.encode(&After { created: 42, id: "t1".into() });
//! let back: After = codec.decode(&cursor).unwrap();
//! assert_eq!(back, After { created: 42, id: "t1".into() });
//!
//! let mut forged = cursor.clone();
//! forged.replace_range(0..1, if cursor.starts_with('A') { "B" } else { "A" });
//! assert!(codec.decode::<After>(&forged).is_err());
//!
//! let page = Page::new(vec![1, 2, 3], Some(cursor));
//! assert_eq!(page.items.len(), 3);
//! ```

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use utoipa::{IntoParams, ToSchema};

use crate::Problem;

/// Longest cursor accepted, in bytes.
pub const MAX_CURSOR_LEN: usize = 1024;

/// Default page size.
pub const DEFAULT_LIMIT: u32 = 50;

/// Largest page size.
pub const MAX_LIMIT: u32 = 500;

const TAG_LEN: usize = 16;

/// Signs and verifies cursors.
#[derive(Clone)]
pub struct CursorCodec {
    key: [u8; 32],
}

impl std::fmt::Debug for CursorCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CursorCodec").finish_non_exhaustive()
    }
}

/// Why a cursor was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CursorError {
    /// Not a cursor this server issued, or altered since.
    #[error("the cursor is malformed or was not issued by this server")]
    Invalid,
    /// Issued for the same list with other filters or another order: read
    /// under this query, its position would skip or repeat items.
    #[error(
        "the cursor belongs to a list with other filters or another order; ask for the first page again"
    )]
    OtherQuery,
}

impl From<CursorError> for Problem {
    fn from(err: CursorError) -> Self {
        Problem::new(
            http::StatusCode::BAD_REQUEST,
            "invalid-cursor",
            "Invalid cursor",
        )
        .with_detail(err.to_string())
    }
}

impl CursorCodec {
    /// A codec signing with `key`; every host of a deployment must share it
    /// (derive it with [`Sealer::derive_key`](crate::Sealer::derive_key)).
    pub fn new(key: [u8; 32]) -> Self {
        Self { key }
    }

    /// A codec with a random key, valid only for this process.
    pub fn random() -> Self {
        Self::new(rand::random())
    }

    fn mac(&self, payload: &[u8]) -> Hmac<Sha256> {
        // HMAC accepts keys of any length.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(payload);
        mac
    }

    /// Encodes `position` into an opaque cursor.
    pub fn encode<T: Serialize>(&self, position: &T) -> String {
        let payload = serde_json::to_vec(position).unwrap_or_default();
        let tag = self.mac(&payload).finalize().into_bytes();
        let mut bytes = payload;
        bytes.extend_from_slice(&tag[..TAG_LEN]);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Decodes a cursor made by [`encode`](Self::encode) with the same key.
    pub fn decode<T: DeserializeOwned>(&self, cursor: &str) -> Result<T, CursorError> {
        if cursor.len() > MAX_CURSOR_LEN {
            return Err(CursorError::Invalid);
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(cursor)
            .map_err(|_| CursorError::Invalid)?;
        if bytes.len() < TAG_LEN {
            return Err(CursorError::Invalid);
        }
        let (payload, tag) = bytes.split_at(bytes.len() - TAG_LEN);
        self.mac(payload)
            .verify_truncated_left(tag)
            .map_err(|_| CursorError::Invalid)?;
        serde_json::from_slice(payload).map_err(|_| CursorError::Invalid)
    }
}

/// `?limit=&cursor=` of a list request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams, ToSchema)]
#[into_params(parameter_in = Query)]
pub struct PageRequest {
    /// Page size, 1 to 500 (default 50).
    #[serde(default)]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    #[serde(default)]
    pub cursor: Option<String>,
}

impl PageRequest {
    /// The page size to use: the requested limit clamped to 1..=[`MAX_LIMIT`].
    pub fn limit(&self) -> u32 {
        self.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT)
    }

    /// The decoded position, if a cursor was given.
    pub fn position<T: DeserializeOwned>(
        &self,
        codec: &CursorCodec,
    ) -> Result<Option<T>, CursorError> {
        self.cursor
            .as_deref()
            .filter(|c| !c.is_empty())
            .map(|c| codec.decode(c))
            .transpose()
    }
}

/// One page of a list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Page<T> {
    /// The items of this page.
    pub items: Vec<T>,
    /// The cursor of the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// A page.
    pub fn new(items: Vec<T>, next_cursor: Option<String>) -> Self {
        Self { items, next_cursor }
    }

    /// Builds a page from up to `limit + 1` fetched rows: if there are more
    /// than `limit`, the extra row is dropped and the cursor points after the
    /// last kept one.
    pub fn from_overfetch<P: Serialize>(
        mut rows: Vec<T>,
        limit: u32,
        codec: &CursorCodec,
        position_of: impl Fn(&T) -> P,
    ) -> Self {
        let limit = limit as usize;
        if rows.len() > limit {
            rows.truncate(limit);
            let next = rows.last().map(|last| codec.encode(&position_of(last)));
            Self::new(rows, next)
        } else {
            Self::new(rows, None)
        }
    }

    /// Maps the items.
    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U> {
        Page {
            items: self.items.into_iter().map(f).collect(),
            next_cursor: self.next_cursor,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper() {
        let codec = CursorCodec::new([1; 32]);
        let cursor = codec.encode(&("2025-01-01", 17u64));
        let back: (String, u64) = codec.decode(&cursor).unwrap();
        assert_eq!(back, ("2025-01-01".to_owned(), 17));

        // Every single-character change is detected.
        let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        for i in 0..cursor.len() {
            for c in alphabet.chars().take(3) {
                let mut forged = cursor.clone();
                forged.replace_range(i..=i, &c.to_string());
                if forged != cursor {
                    assert!(codec.decode::<(String, u64)>(&forged).is_err());
                }
            }
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let codec = CursorCodec::new([1; 32]);
        for junk in [
            "",
            "!",
            "====",
            "a",
            &"x".repeat(5000),
            "é",
            "AAAAAAAAAAAAAAAAAAAAAAAA",
        ] {
            assert_eq!(codec.decode::<u64>(junk), Err(CursorError::Invalid));
        }
        let other = CursorCodec::new([2; 32]);
        assert!(other.decode::<u64>(&codec.encode(&5u64)).is_err());
        let problem = Problem::from(CursorError::Invalid);
        assert_eq!(problem.status, 400);
    }

    #[test]
    fn limit_is_clamped() {
        assert_eq!(PageRequest::default().limit(), DEFAULT_LIMIT);
        let req = PageRequest {
            limit: Some(0),
            cursor: None,
        };
        assert_eq!(req.limit(), 1);
        let req = PageRequest {
            limit: Some(100_000),
            cursor: None,
        };
        assert_eq!(req.limit(), MAX_LIMIT);
    }

    #[test]
    fn overfetch_builds_next_cursor() {
        let codec = CursorCodec::new([3; 32]);
        let page = Page::from_overfetch(vec![1, 2, 3], 2, &codec, |n| *n);
        assert_eq!(page.items, vec![1, 2]);
        let next: i32 = codec.decode(page.next_cursor.as_deref().unwrap()).unwrap();
        assert_eq!(next, 2);
        let page = Page::from_overfetch(vec![1, 2], 2, &codec, |n| *n);
        assert!(page.next_cursor.is_none());
    }
}
