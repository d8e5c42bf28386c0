//! Storage traits of auth and their backends.
//!
//! Two object-safe traits:
//!
//! - [`AuthStore`]: users, roles, API keys, one-time tokens, the audit log
//!   and JWT signing keys — durable records, on [`MemoryStore`], SQLite and
//!   Postgres ([`SqlStore`]).
//! - [`SessionStore`]: login sessions (refresh-token families) and their
//!   revocation — on [`MemoryStore`], SQLite/Postgres ([`SqlStore`]) and
//!   Redis (`RedisSessionStore`).
//!
//! Every backend runs the one conformance suite in `conformance` (feature
//! `test-support`).
//!
//! ```
//! use std::sync::Arc;
//! use jadugar_auth::store::{AuthStore, MemoryStore, SessionStore};
//!
//! let store = Arc::new(MemoryStore::default());
//! let users: Arc<dyn AuthStore> = store.clone();
//! let sessions: Arc<dyn SessionStore> = store;
//! # let _ = (users, sessions);
//! ```

use std::fmt::Debug;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::model::{
    ApiKeyId, ApiKeyRecord, AuditEvent, AuditFilter, AuditId, OneTimeToken, Role, Session,
    SessionId, SigningKeyRecord, TokenKind, UserId, UserRecord,
};

#[cfg(feature = "test-support")]
pub mod conformance;
mod memory;
#[cfg(feature = "redis")]
mod redis;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod sql;

pub use memory::MemoryStore;
#[cfg(feature = "redis")]
pub use redis::RedisSessionStore;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub use sql::{POSTGRES_MIGRATOR, SQLITE_MIGRATOR, SqlStore};

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique constraint failed (duplicate email, role name, key id).
    #[error("conflict: {0}")]
    Conflict(&'static str),
    /// A versioned write found another version: the record changed since
    /// the caller read it. Nothing was written; read again and retry.
    #[error("the record changed since it was read")]
    Stale,
    /// The backend failed.
    #[error("storage backend error: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A stored value could not be read back.
    #[error("corrupt stored value: {0}")]
    Corrupt(String),
}

/// What a change guarded by a role ([`AuthStore::update_user_keeping_role`],
/// [`AuthStore::delete_user_keeping_role`]) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuardedChange {
    /// The change was made.
    Done,
    /// No user with that id.
    NotFound,
    /// Refused, nothing written: the user is the last enabled holder of
    /// the role and the change would end that.
    LastHolder,
}

/// Durable auth records. Object safe; every method is atomic on its own.
///
/// "Not found" is `Ok(None)` / `Ok(false)`, never an error.
///
/// Users are versioned ([`User::version`](crate::model::User::version)):
/// a write names the version it read in `record.user.version`, is made only
/// if the stored user still has it, and stores the next one
/// (`version + 1`); otherwise it is [`StoreError::Stale`] and nothing is
/// written. So a read-modify-write never loses a concurrent change.
#[async_trait]
pub trait AuthStore: Debug + Send + Sync + 'static {
    /// Inserts a user (with the version it carries, normally 1).
    /// [`StoreError::Conflict`] if the id or email exists.
    async fn create_user(&self, record: &UserRecord) -> Result<(), StoreError>;
    /// The user with `id`.
    async fn get_user(&self, id: UserId) -> Result<Option<UserRecord>, StoreError>;
    /// The user whose normalised email is `email`.
    async fn get_user_by_email(&self, email: &str) -> Result<Option<UserRecord>, StoreError>;
    /// Replaces the stored user with `record` (same id) at version
    /// `record.user.version + 1`, if the stored version is
    /// `record.user.version`. `false` if absent; [`StoreError::Stale`] if
    /// the stored version differs; [`StoreError::Conflict`] if the email
    /// belongs to another user.
    async fn update_user(&self, record: &UserRecord) -> Result<bool, StoreError>;
    /// [`update_user`](Self::update_user), unless the stored user is an
    /// enabled holder of `role`, `record` would not be one (disabled or
    /// without the role), and no other enabled user holds `role`: then
    /// nothing is written and the answer is [`GuardedChange::LastHolder`].
    /// Versioned like `update_user` ([`StoreError::Stale`]).
    ///
    /// The check and the write are one atomic step, serialised with every
    /// other guarded change: of two concurrent calls that each take `role`
    /// from one of its last two holders, exactly one is made.
    async fn update_user_keeping_role(
        &self,
        record: &UserRecord,
        role: &str,
    ) -> Result<GuardedChange, StoreError>;
    /// Deletes a user and their API keys, whatever their version. `false`
    /// if absent.
    async fn delete_user(&self, id: UserId) -> Result<bool, StoreError>;
    /// [`delete_user`](Self::delete_user), unless the user is the last
    /// enabled holder of `role` ([`GuardedChange::LastHolder`], nothing
    /// deleted), or `version` is given and the stored user has another one
    /// ([`StoreError::Stale`], nothing deleted). Atomic like
    /// [`update_user_keeping_role`](Self::update_user_keeping_role).
    async fn delete_user_keeping_role(
        &self,
        id: UserId,
        role: &str,
        version: Option<i64>,
    ) -> Result<GuardedChange, StoreError>;
    /// Users ordered by id, starting after `after`, at most `limit`.
    async fn list_users(
        &self,
        after: Option<UserId>,
        limit: u32,
    ) -> Result<Vec<UserRecord>, StoreError>;
    /// How many users exist.
    async fn count_users(&self) -> Result<u64, StoreError>;
    /// Ids of enabled users holding `role`.
    async fn users_with_role(&self, role: &str) -> Result<Vec<UserId>, StoreError>;

    /// Inserts or replaces a role by name.
    async fn put_role(&self, role: &Role) -> Result<(), StoreError>;
    /// Inserts a role. [`StoreError::Conflict`] if one with its name
    /// exists. The default reads, then puts: a store whose backend can
    /// insert only when absent should do that instead (the built-in ones
    /// do), or two concurrent creates may both succeed.
    async fn insert_role(&self, role: &Role) -> Result<(), StoreError> {
        if self.get_role(&role.name).await?.is_some() {
            return Err(StoreError::Conflict("role"));
        }
        self.put_role(role).await
    }
    /// The role named `name`.
    async fn get_role(&self, name: &str) -> Result<Option<Role>, StoreError>;
    /// All roles, by name.
    async fn list_roles(&self) -> Result<Vec<Role>, StoreError>;
    /// Deletes a role. `false` if absent.
    async fn delete_role(&self, name: &str) -> Result<bool, StoreError>;

    /// Inserts a key. [`StoreError::Conflict`] if its id or public id exists.
    async fn create_api_key(&self, record: &ApiKeyRecord) -> Result<(), StoreError>;
    /// The key with `id`.
    async fn get_api_key(&self, id: ApiKeyId) -> Result<Option<ApiKeyRecord>, StoreError>;
    /// The key whose public id is `public_id`.
    async fn get_api_key_by_public_id(
        &self,
        public_id: &str,
    ) -> Result<Option<ApiKeyRecord>, StoreError>;
    /// Keys of `owner` (all keys when `None`), by id.
    async fn list_api_keys(&self, owner: Option<UserId>) -> Result<Vec<ApiKeyRecord>, StoreError>;
    /// Marks a key revoked at `at`. `false` if absent or already revoked.
    async fn revoke_api_key(&self, id: ApiKeyId, at: DateTime<Utc>) -> Result<bool, StoreError>;
    /// Records last-used times (only moves them forward).
    async fn record_api_key_use(
        &self,
        uses: &[(ApiKeyId, DateTime<Utc>)],
    ) -> Result<(), StoreError>;

    /// Stores a one-time token.
    async fn create_token(&self, token: &OneTimeToken) -> Result<(), StoreError>;
    /// Atomically uses the token: if it exists, has `kind`, is unused and
    /// unexpired at `now`, marks it used and returns it. A second call
    /// returns `None`. Whether its [`email_hash`](OneTimeToken::email_hash)
    /// still names the user's email is the caller's check.
    async fn consume_token(
        &self,
        hash: &[u8; 32],
        kind: TokenKind,
        now: DateTime<Utc>,
    ) -> Result<Option<OneTimeToken>, StoreError>;

    /// Appends an audit event (the log is never edited).
    async fn append_audit(&self, event: &AuditEvent) -> Result<(), StoreError>;
    /// Events matching `filter`, newest first, starting after (older than)
    /// `before`, at most `limit`.
    async fn list_audit(
        &self,
        filter: &AuditFilter,
        before: Option<AuditId>,
        limit: u32,
    ) -> Result<Vec<AuditEvent>, StoreError>;

    /// Stores a signing key. [`StoreError::Conflict`] if its kid exists.
    async fn insert_signing_key(&self, key: &SigningKeyRecord) -> Result<(), StoreError>;
    /// All signing keys, oldest first.
    async fn list_signing_keys(&self) -> Result<Vec<SigningKeyRecord>, StoreError>;
    /// Marks a key retired at `at` if not retired yet. `false` otherwise.
    async fn retire_signing_key(&self, kid: &str, at: DateTime<Utc>) -> Result<bool, StoreError>;
}

/// Login sessions (refresh-token families). Object safe.
#[async_trait]
pub trait SessionStore: Debug + Send + Sync + 'static {
    /// Inserts a session.
    async fn create_session(&self, session: &Session) -> Result<(), StoreError>;
    /// The session with `id` (revoked and expired ones too).
    async fn get_session(&self, id: SessionId) -> Result<Option<Session>, StoreError>;
    /// Compare-and-set: if the session is unrevoked and its generation is
    /// `expected_generation`, sets it to `expected_generation + 1`,
    /// `refreshed_at` and `idle_expires_at`, and returns `true`. Two
    /// concurrent calls with the same generation: exactly one wins.
    async fn advance_session(
        &self,
        id: SessionId,
        expected_generation: i64,
        refreshed_at: DateTime<Utc>,
        idle_expires_at: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
    /// Marks a session revoked at `at`. `false` if absent or already revoked.
    async fn revoke_session(&self, id: SessionId, at: DateTime<Utc>) -> Result<bool, StoreError>;
    /// Revokes every unrevoked session of `user`; returns their ids.
    async fn revoke_user_sessions(
        &self,
        user: UserId,
        at: DateTime<Utc>,
    ) -> Result<Vec<SessionId>, StoreError>;
    /// The unrevoked sessions of `user` whose lifetimes have not ended at `now`.
    async fn list_user_sessions(
        &self,
        user: UserId,
        now: DateTime<Utc>,
    ) -> Result<Vec<Session>, StoreError>;
    /// Deletes sessions that ended (expired, or revoked) before `before`.
    async fn purge_sessions(&self, before: DateTime<Utc>) -> Result<u64, StoreError>;
}

#[cfg_attr(
    not(any(feature = "sqlite", feature = "postgres", feature = "redis")),
    allow(dead_code)
)]
pub(crate) fn backend<E: std::error::Error + Send + Sync + 'static>(e: E) -> StoreError {
    StoreError::Backend(Box::new(e))
}
