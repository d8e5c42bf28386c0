//! Plain data types of auth and validation of user input.
//!
//! ```
//! use jadugar_auth::model::{normalize_email, validate_permission};
//!
//! assert_eq!(normalize_email(" Ada@Example.COM ").unwrap(), "ada@example.com");
//! assert!(validate_permission("tracking:*").is_ok());
//! assert!(validate_permission("bad perm").is_err());
//! ```

use chrono::{DateTime, Utc};
use jadugar_core::FieldError;
use jadugar_core::principal::permission_matches;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

jadugar_core::define_id!(
    /// The id of a user.
    UserId
);
jadugar_core::define_id!(
    /// The id of an API key (the public id inside the key text is separate).
    ApiKeyId
);
jadugar_core::define_id!(
    /// The id of a login session (one refresh-token family).
    SessionId
);
jadugar_core::define_id!(
    /// The id of an audit event.
    AuditId
);

/// The name of the built-in role that holds every permission.
pub const ADMIN_ROLE: &str = "admin";

/// Permission to read users.
pub const PERM_USERS_READ: &str = "auth:users:read";
/// Permission to create, edit and delete users and assign roles.
pub const PERM_USERS_WRITE: &str = "auth:users:write";
/// Permission to create, edit and delete roles.
pub const PERM_ROLES_WRITE: &str = "auth:roles:write";
/// Permission to create and revoke API keys of other users.
pub const PERM_KEYS_WRITE: &str = "auth:keys:write";
/// Permission to read the audit log.
pub const PERM_AUDIT_READ: &str = "auth:audit:read";
/// Permission to list and revoke anyone's sessions.
pub const PERM_SESSIONS_ADMIN: &str = "auth:sessions:admin";

/// A user account as the API shows it (no password hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct User {
    /// The user's id.
    pub id: UserId,
    /// Email, normalised to lower case; unique.
    pub email: String,
    /// Display name.
    pub display_name: String,
    /// Role names held.
    pub roles: Vec<String>,
    /// A disabled user cannot log in and their keys and sessions stop working.
    pub disabled: bool,
    /// Whether the email address was verified.
    pub email_verified: bool,
    /// Whether the user must change their password (bootstrap admin).
    pub must_change_password: bool,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// Revision of the record, 1 at creation and one more on every change;
    /// every store write is conditional on it (optimistic concurrency). The
    /// HTTP API shows it as the user's `ETag` and honours it in `If-Match`.
    #[serde(default = "first_version")]
    pub version: i64,
}

fn first_version() -> i64 {
    1
}

/// A user as stored: the account plus its password hash.
#[derive(Clone, PartialEq, Eq)]
pub struct UserRecord {
    /// The account.
    pub user: User,
    /// PHC string of the argon2id hash; `None` when no password is set.
    pub password_hash: Option<String>,
}

impl std::fmt::Debug for UserRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserRecord")
            .field("user", &self.user)
            .field(
                "password_hash",
                &self.password_hash.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// A role: a named set of permission patterns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Role {
    /// Unique name (`[a-z0-9_.-]`, up to 64 characters).
    pub name: String,
    /// Free text.
    pub description: String,
    /// Permission patterns (see [`jadugar_core::principal`]).
    pub permissions: Vec<String>,
    /// Built-in roles cannot be edited or deleted.
    pub builtin: bool,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

/// An API key as the API shows it (never the secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ApiKey {
    /// The key's id.
    pub id: ApiKeyId,
    /// The public id, the part after `jdg_` in the key text.
    pub public_id: String,
    /// The user the key acts for.
    pub owner: UserId,
    /// A label.
    pub name: String,
    /// The permissions the key is limited to (a subset of the owner's).
    pub scopes: Vec<String>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Expiry, if any.
    pub expires_at: Option<DateTime<Utc>>,
    /// Revocation time, if revoked.
    pub revoked_at: Option<DateTime<Utc>>,
    /// Last time the key was used (flushed periodically, so slightly behind).
    pub last_used_at: Option<DateTime<Utc>>,
}

/// An API key as stored: the key plus the SHA-256 of its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    /// The key.
    pub key: ApiKey,
    /// SHA-256 of the secret part.
    pub secret_hash: [u8; 32],
}

/// A login session: one refresh-token family.
///
/// Lifetimes: a session ends at `absolute_expires_at` whatever happens, and
/// earlier at `idle_expires_at` if it is not refreshed; each refresh moves
/// `idle_expires_at` to `now + idle` (capped by the absolute expiry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Session {
    /// The session's id.
    pub id: SessionId,
    /// Its user.
    pub user_id: UserId,
    /// The generation of the current refresh token; each refresh adds one.
    pub generation: i64,
    /// Random salt of this family's refresh tokens.
    #[serde(skip)]
    pub salt: String,
    /// Creation (login) time.
    pub created_at: DateTime<Utc>,
    /// Last refresh (or login).
    pub refreshed_at: DateTime<Utc>,
    /// The session dies when not refreshed by then.
    pub idle_expires_at: DateTime<Utc>,
    /// The session dies then, whatever happens.
    pub absolute_expires_at: DateTime<Utc>,
    /// Revocation time, if revoked.
    pub revoked_at: Option<DateTime<Utc>>,
    /// The client IP at login.
    pub ip: Option<String>,
    /// The user agent at login.
    pub user_agent: Option<String>,
}

impl Session {
    /// Whether the session can still be used at `now`.
    pub fn is_active(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none() && now < self.idle_expires_at && now < self.absolute_expires_at
    }
}

/// One entry of the append-only audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditEvent {
    /// The event's id (time ordered).
    pub id: AuditId,
    /// When it happened.
    pub at: DateTime<Utc>,
    /// What happened, e.g. `login.success`, `login.failure`, `role.update`.
    pub action: String,
    /// Who did it (user or key subject), if known.
    pub actor: Option<String>,
    /// What it was done to.
    pub target: Option<String>,
    /// The client IP.
    pub ip: Option<String>,
    /// The client's user agent.
    pub user_agent: Option<String>,
    /// Whether it succeeded.
    pub success: bool,
    /// Extra detail (never a secret).
    pub detail: Option<String>,
}

/// Filters for the audit log; every field set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditFilter {
    /// Exact action.
    pub action: Option<String>,
    /// Exact actor.
    pub actor: Option<String>,
    /// Exact target.
    pub target: Option<String>,
    /// Events at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Events before this time.
    pub until: Option<DateTime<Utc>>,
}

impl AuditFilter {
    /// Whether `event` passes the filter.
    pub fn matches(&self, event: &AuditEvent) -> bool {
        self.action.as_ref().is_none_or(|a| *a == event.action)
            && self
                .actor
                .as_ref()
                .is_none_or(|a| Some(a) == event.actor.as_ref())
            && self
                .target
                .as_ref()
                .is_none_or(|t| Some(t) == event.target.as_ref())
            && self.since.is_none_or(|s| event.at >= s)
            && self.until.is_none_or(|u| event.at < u)
    }
}

/// What a one-time token is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TokenKind {
    /// Password reset.
    PasswordReset,
    /// Email verification.
    EmailVerification,
}

impl TokenKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PasswordReset => "password_reset",
            Self::EmailVerification => "email_verification",
        }
    }
}

/// A one-time token as stored (hashed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OneTimeToken {
    /// SHA-256 of the token text.
    pub hash: [u8; 32],
    /// What it is for.
    pub kind: TokenKind,
    /// The user it acts on.
    pub user_id: UserId,
    /// SHA-256 of the normalised address it was mailed to: the token is
    /// good only while that is still the user's email.
    pub email_hash: [u8; 32],
    /// Expiry.
    pub expires_at: DateTime<Utc>,
}

/// A JWT signing key as stored: the private key sealed under the master key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningKeyRecord {
    /// Key id (`kid`).
    pub kid: String,
    /// `EdDSA` or `ES256`.
    pub alg: String,
    /// PKCS#8 DER of the private key, sealed with the core `Sealer`.
    pub sealed_private: String,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// When a newer key replaced it; verification continues for the overlap.
    pub retired_at: Option<DateTime<Utc>>,
}

/// Normalises an email: trimmed, lower case, one `@` with text both sides.
pub fn normalize_email(email: &str) -> Result<String, FieldError> {
    let email = email.trim().to_lowercase();
    let valid = email.len() <= 254
        && email.split('@').count() == 2
        && email.split('@').all(|part| !part.is_empty())
        && !email.chars().any(|c| c.is_whitespace() || c.is_control());
    if valid {
        Ok(email)
    } else {
        Err(FieldError::new(
            "email",
            "must be an address like name@example.com",
        ))
    }
}

/// Validates a role name: 1 to 64 of `a-z 0-9 _ . -`.
pub fn validate_role_name(name: &str) -> Result<(), FieldError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(FieldError::new(
            "name",
            "must be 1 to 64 of a-z, 0-9, `_`, `.` and `-`",
        ))
    }
}

/// Validates a permission pattern: `*` or colon-separated non-empty
/// segments of `a-z A-Z 0-9 _ . -` or `*`, up to 128 characters.
pub fn validate_permission(permission: &str) -> Result<(), FieldError> {
    let ok = !permission.is_empty()
        && permission.len() <= 128
        && permission.split(':').all(|segment| {
            segment == "*"
                || (!segment.is_empty()
                    && segment
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)))
        });
    if ok {
        Ok(())
    } else {
        Err(FieldError::new(
            "permissions",
            format!("{permission:?} is not a permission like `component:resource:action`"),
        ))
    }
}

/// Whether the holder of `granted` holds everything `wanted` grants: some
/// granted pattern covers the wanted pattern (a wildcard in `wanted` is only
/// covered by an equal or broader wildcard).
pub fn covers(granted: &[String], wanted: &str) -> bool {
    granted.iter().any(|g| permission_matches(g, wanted))
}

/// The permissions of `wanted` that `granted` does not cover.
pub fn uncovered<'a>(granted: &[String], wanted: &'a [String]) -> Vec<&'a str> {
    wanted
        .iter()
        .filter(|w| !covers(granted, w))
        .map(String::as_str)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        assert!(normalize_email("a@b").is_ok());
        for bad in ["", "ab", "a@", "@b", "a@b@c", "a b@c"] {
            assert!(normalize_email(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn coverage() {
        let granted = vec!["tracking:*".to_owned(), "auth:users:read".to_owned()];
        assert!(covers(&granted, "tracking:task:write"));
        assert!(covers(&granted, "tracking:*"));
        assert!(!covers(&granted, "*"));
        assert!(!covers(&granted, "auth:*"));
        assert_eq!(
            uncovered(&granted, &["auth:users:write".to_owned()]),
            vec!["auth:users:write"]
        );
        assert!(covers(&["*".to_owned()], "*"));
    }

    #[test]
    fn names() {
        assert!(validate_role_name("deployer").is_ok());
        assert!(validate_role_name("Deployer").is_err());
        assert!(validate_permission("*").is_ok());
        assert!(validate_permission("a::b").is_err());
    }
}
