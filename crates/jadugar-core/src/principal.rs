//! Who is calling.
//!
//! Authentication (`jadugar-auth`, or any layer of a user's own) puts a
//! [`Principal`] into the request extensions; everything downstream reads it
//! from there and asks [`Principal::can`].
//!
//! Permissions are colon-separated segments, `component:resource:action`.
//! A granted permission may use `*` as a segment: in the middle it matches
//! exactly one segment, at the end it matches one or more (so `tracking:*`
//! grants `tracking:read` and `tracking:task:write`, but not `tracking`).
//! A lone `*` grants everything.
//!
//! ```
//! use jadugar_core::{Principal, PrincipalKind};
//!
//! let key = Principal::new("key_01", PrincipalKind::ApiKey)
//!     .with_roles(["deployer"])
//!     .with_permissions(["registry:*", "tracking:*:read"]);
//! assert!(key.can("registry:service:write"));
//! assert!(key.can("tracking:task:read"));
//! assert!(!key.can("tracking:task:write"));
//! assert!(!key.can("auth:users:read"));
//! ```

use std::sync::Arc;

use axum_core::extract::{FromRequestParts, OptionalFromRequestParts};
use http::request::Parts;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::Problem;

/// What kind of caller a [`Principal`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PrincipalKind {
    /// A person, authenticated by session or JWT.
    User,
    /// An API key.
    ApiKey,
    /// Another service, authenticated by a signed request or a service token.
    Service,
}

/// An authenticated caller: subject, kind, roles and effective permissions.
///
/// Cheap to clone: every field is shared or copied, nothing is allocated
/// (authentication clones a cached principal into each request).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Principal {
    /// The stable id of the caller (user id, API key id, service name).
    #[schema(value_type = String)]
    pub subject: Arc<str>,
    /// What kind of caller this is.
    pub kind: PrincipalKind,
    /// Role names held.
    #[schema(value_type = Vec<String>)]
    pub roles: Arc<[String]>,
    /// Effective permissions (after expanding roles and narrowing by scopes).
    #[schema(value_type = Vec<String>)]
    pub permissions: Arc<[String]>,
    /// The session this request belongs to, for session-based callers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub session_id: Option<Arc<str>>,
    /// The user who owns an API key, or who a service acts for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub owner: Option<Arc<str>>,
}

impl Principal {
    /// A principal with no roles and no permissions.
    pub fn new(subject: impl Into<Arc<str>>, kind: PrincipalKind) -> Self {
        Self {
            subject: subject.into(),
            kind,
            roles: Arc::from(Vec::new()),
            permissions: Arc::from(Vec::new()),
            session_id: None,
            owner: None,
        }
    }

    /// Sets the roles.
    pub fn with_roles<I, S>(mut self, roles: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.roles = roles.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the permissions.
    pub fn with_permissions<I, S>(mut self, permissions: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.permissions = permissions.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the session id.
    pub fn with_session(mut self, session_id: impl Into<Arc<str>>) -> Self {
        self.session_id = Some(session_id.into());
        self
    }

    /// Sets the owner.
    pub fn with_owner(mut self, owner: impl Into<Arc<str>>) -> Self {
        self.owner = Some(owner.into());
        self
    }

    /// Whether this principal holds `permission`, directly or by wildcard.
    pub fn can(&self, permission: &str) -> bool {
        self.permissions
            .iter()
            .any(|granted| permission_matches(granted, permission))
    }

    /// Whether this principal holds the role `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    /// `Ok` if [`can`](Self::can) `permission`, else a 403 [`Problem`] naming it.
    pub fn require(&self, permission: &str) -> Result<(), Problem> {
        if self.can(permission) {
            Ok(())
        } else {
            Err(Problem::forbidden(format!(
                "missing permission {permission}"
            )))
        }
    }
}

/// Whether the granted pattern `granted` covers `wanted`; see the
/// [module docs](self) for the wildcard rules.
pub fn permission_matches(granted: &str, wanted: &str) -> bool {
    if granted == "*" || granted == wanted {
        return true;
    }
    let mut granted_parts = granted.split(':').peekable();
    let mut wanted_parts = wanted.split(':');
    while let Some(g) = granted_parts.next() {
        let Some(w) = wanted_parts.next() else {
            return false;
        };
        if w.is_empty() {
            return false;
        }
        if g == "*" {
            if granted_parts.peek().is_none() {
                return true;
            }
            continue;
        }
        if g != w {
            return false;
        }
    }
    wanted_parts.next().is_none()
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or_else(|| Problem::unauthorized("authentication required"))
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for Principal {
    type Rejection = Problem;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<Principal>().cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::permission_matches as m;

    #[test]
    fn wildcards() {
        assert!(m("*", "anything:at:all"));
        assert!(m("tracking:*", "tracking:read"));
        assert!(m("tracking:*", "tracking:task:write"));
        assert!(!m("tracking:*", "tracking"));
        assert!(!m("tracking:*", "trackingx:read"));
        assert!(m("tracking:*:read", "tracking:task:read"));
        assert!(!m("tracking:*:read", "tracking:task:write"));
        assert!(!m("tracking:*:read", "tracking:a:b:read"));
        assert!(m("a:b", "a:b"));
        assert!(!m("a:b", "a:b:c"));
        assert!(!m("a:b:c", "a:b"));
        assert!(!m("tracking:*", "tracking:"));
        assert!(!m("", "x"));
    }
}
