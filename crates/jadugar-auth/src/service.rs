//! Auth domain logic over the store traits: no HTTP, no SQL.
//!
//! [`AuthService`] is cheap to clone (one `Arc`). Its hot paths —
//! [`AuthService::verify_api_key`] and [`AuthService::validate_token`] on a
//! cache hit — take no lock held across an await, do no I/O and allocate only
//! the returned [`Principal`].
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use jadugar_auth::{AuthService, Config};
//! use jadugar_auth::service::{NewUser, RequestMeta};
//!
//! let mut config = Config::default();
//! config.argon2_memory_kib = 1024; // fast for the example only
//! let auth = AuthService::memory(config).await.unwrap();
//! auth.create_user(None, NewUser {
//!     email: "ada@example.com".into(),
//!     display_name: "Ada".into(),
//!     password: Some("correct horse battery".into()),
//!     roles: vec!["admin".into()],
//!     must_change_password: false,
//! }).await.unwrap();
//! let tokens = auth
//!     .login("ada@example.com", "correct horse battery", &RequestMeta::default(), None)
//!     .await
//!     .unwrap();
//! let principal = auth.validate_token(&tokens.access_token).await.unwrap();
//! assert!(principal.can("auth:users:write"));
//! # });
//! ```

use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use jadugar_core::cursor::{CursorCodec, Page, PageRequest};
use jadugar_core::storage::Redis;
use jadugar_core::{MasterKey, Sealer};
use jadugar_core::{Principal, PrincipalKind, SharedClock, SystemClock};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::task::JoinHandle;
pub use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

use crate::Error;
use crate::config::Config;
use crate::jwt::{self, Claims, ExternalVerifier, KeySet, TimeClaims};
use crate::model::*;
use crate::password::PasswordHasher;
use crate::store::{AuthStore, GuardedChange, MemoryStore, SessionStore, StoreError};
use crate::throttle::Throttle;

type HmacSha256 = Hmac<Sha256>;

const API_KEY_PREFIX: &str = "jdg_";
const PUBLIC_ID_LEN: usize = 16;
const REFRESH_PREFIX: &str = "jrt_";
const CHANNEL: &str = "auth:events";

/// Sends password reset and verification mails.
#[async_trait]
pub trait Mailer: std::fmt::Debug + Send + Sync + 'static {
    /// Sends `body` with `subject` to `to`.
    async fn send(&self, to: &str, subject: &str, body: &str) -> Result<(), Error>;
}

/// The default [`Mailer`]: logs that a mail would be sent (never the token).
#[derive(Debug, Default, Clone, Copy)]
pub struct LogMailer;

#[async_trait]
impl Mailer for LogMailer {
    async fn send(&self, to: &str, subject: &str, _body: &str) -> Result<(), Error> {
        tracing::info!(%to, %subject, "mail (LogMailer: configure a real Mailer to deliver it)");
        Ok(())
    }
}

/// Who is making a request, for throttling and the audit log.
#[derive(Debug, Clone, Default)]
pub struct RequestMeta {
    /// Client IP (after trusted-proxy resolution).
    pub ip: Option<IpAddr>,
    /// `User-Agent`.
    pub user_agent: Option<String>,
}

tokio::task_local! {
    static CURRENT_META: RequestMeta;
}

/// Runs `f` with `meta` as the request metadata that audit events of
/// methods called without one (admin actions) record. The HTTP router does
/// this for every request.
pub async fn with_request_meta<F: std::future::Future>(meta: RequestMeta, f: F) -> F::Output {
    CURRENT_META.scope(meta, f).await
}

/// Input of [`AuthService::create_user`].
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    /// Email (login name).
    pub email: String,
    /// Display name.
    #[serde(default)]
    pub display_name: String,
    /// Initial password; none means the user must reset it.
    #[serde(default)]
    pub password: Option<String>,
    /// Roles to grant (the actor must hold every permission they carry).
    #[serde(default)]
    pub roles: Vec<String>,
    /// The password is temporary (one an administrator hands over): the
    /// user must change it at first login. Set in the same write that
    /// creates the user, so no window exists in which it is permanent.
    #[serde(default)]
    pub must_change_password: bool,
}

/// Input of [`AuthService::update_user`]; absent fields are unchanged.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserUpdate {
    /// New email. Another address than the current one is unverified until
    /// confirmed with the token mailed to it; tokens mailed to the old
    /// address stop working.
    #[serde(default, deserialize_with = "jadugar_core::extract::not_null")]
    #[schema(nullable = false)]
    pub email: Option<String>,
    /// New display name.
    #[serde(default, deserialize_with = "jadugar_core::extract::not_null")]
    #[schema(nullable = false)]
    pub display_name: Option<String>,
    /// Disable or enable.
    #[serde(default, deserialize_with = "jadugar_core::extract::not_null")]
    #[schema(nullable = false)]
    pub disabled: Option<bool>,
}

/// Input of [`AuthService::put_role`].
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleInput {
    /// Name.
    pub name: String,
    /// Description.
    #[serde(default)]
    pub description: String,
    /// Permission patterns.
    pub permissions: Vec<String>,
}

/// Input of [`AuthService::create_api_key`].
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewApiKey {
    /// Label.
    pub name: String,
    /// Permissions the key is limited to; empty means all of the owner's.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Lifetime in seconds; none never expires.
    #[serde(default)]
    pub expires_in_secs: Option<u64>,
    /// Owner; default the caller. Another user needs `auth:keys:write`.
    #[serde(default)]
    pub owner: Option<UserId>,
}

/// A created key with its secret, shown once.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CreatedApiKey {
    /// The key.
    pub key: ApiKey,
    /// The full key text `jdg_<public id>_<secret>`; not retrievable later.
    pub secret: String,
}

/// Tokens returned by login and refresh.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TokenPair {
    /// Short-lived JWT for `Authorization: Bearer`.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    /// Opaque refresh token, rotated on every use.
    pub refresh_token: String,
    /// The session (refresh family) id.
    pub session_id: SessionId,
    /// The user.
    pub user_id: UserId,
    /// Value for the `x-csrf-token` header of cookie-authenticated requests.
    pub csrf_token: String,
    /// The user must change their password before anything else works.
    pub must_change_password: bool,
}

/// The first-start admin created by [`AuthService::bootstrap`].
#[derive(Debug, Clone)]
pub struct BootstrapAdmin {
    /// Its email (login name).
    pub email: String,
    /// The generated one-time password to print once; `None` when the
    /// password was supplied by the caller.
    pub generated_password: Option<String>,
}

struct CachedKey {
    id: ApiKeyId,
    hash: [u8; 32],
    expires_at: Option<i64>,
    revoked: bool,
    principal: Principal,
    last_used: AtomicI64,
    flushed: AtomicI64,
}

/// Sessions revoked recently enough that their access tokens may still be
/// unexpired. Read on every cached-token hit, so the common case (nothing
/// revoked lately) is one atomic load.
struct RevokedSessions {
    any: std::sync::atomic::AtomicBool,
    map: RwLock<std::collections::HashMap<SessionId, i64>>,
    keep_secs: i64,
}

impl RevokedSessions {
    fn new(keep_secs: i64) -> Self {
        Self {
            any: std::sync::atomic::AtomicBool::new(false),
            map: RwLock::new(std::collections::HashMap::new()),
            keep_secs,
        }
    }

    fn contains(&self, id: &SessionId) -> bool {
        self.any.load(Ordering::Acquire)
            && self
                .map
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .contains_key(id)
    }

    fn insert(&self, id: SessionId, now: i64) {
        let mut map = self.map.write().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= 100_000 {
            map.retain(|_, until| *until > now);
        }
        map.insert(id, now + self.keep_secs);
        self.any.store(true, Ordering::Release);
    }

    fn prune(&self, now: i64) {
        let mut map = self.map.write().unwrap_or_else(PoisonError::into_inner);
        map.retain(|_, until| *until > now);
        if map.is_empty() {
            self.any.store(false, Ordering::Release);
        }
    }
}

struct CachedToken {
    token: Box<str>,
    exp: i64,
    principal: Principal,
    session: Option<SessionId>,
}

/// The auth component: users, roles, keys, sessions and tokens.
#[derive(Clone)]
pub struct AuthService {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    store: Arc<dyn AuthStore>,
    sessions: Arc<dyn SessionStore>,
    clock: SharedClock,
    sealer: Sealer,
    hasher: PasswordHasher,
    mailer: Arc<dyn Mailer>,
    redis: Option<Redis>,
    keys: RwLock<Arc<KeySet>>,
    last_reload: std::sync::Mutex<Option<std::time::Instant>>,
    key_cache: moka::sync::Cache<u64, Arc<CachedKey>>,
    missing_keys: moka::sync::Cache<u64, ()>,
    token_cache: moka::sync::Cache<[u8; 32], Arc<CachedToken>>,
    revoked_sessions: RevokedSessions,
    throttle: Throttle,
    refresh_key: [u8; 32],
    csrf_key: [u8; 32],
    cursors: CursorCodec,
    external: Vec<ExternalVerifier>,
    trusted: Vec<ipnet::IpNet>,
}

impl std::fmt::Debug for AuthService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthService")
            .field("store", &self.inner.store)
            .field("sessions", &self.inner.sessions)
            .finish_non_exhaustive()
    }
}

/// Builds an [`AuthService`] from its parts.
#[derive(Debug)]
pub struct AuthServiceBuilder {
    config: Config,
    store: Arc<dyn AuthStore>,
    sessions: Arc<dyn SessionStore>,
    clock: SharedClock,
    sealer: Option<Sealer>,
    mailer: Arc<dyn Mailer>,
    redis: Option<Redis>,
}

impl AuthServiceBuilder {
    /// Sets the clock (default the system clock).
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }
    /// Sets the sealer of signing keys (default: a random master key, so
    /// keys do not survive a restart — set it for anything durable).
    pub fn sealer(mut self, sealer: Sealer) -> Self {
        self.sealer = Some(sealer);
        self
    }
    /// Sets the mailer (default [`LogMailer`]).
    pub fn mailer(mut self, mailer: Arc<dyn Mailer>) -> Self {
        self.mailer = mailer;
        self
    }
    /// Shares throttling and revocations through Redis.
    pub fn redis(mut self, redis: Option<Redis>) -> Self {
        self.redis = redis;
        self
    }

    /// Builds the service: ensures the `admin` role and a signing key.
    pub async fn build(self) -> Result<AuthService, Error> {
        let c = &self.config;
        jwt::parse_alg(&c.jwt_algorithm)?;
        let sealer = self
            .sealer
            .unwrap_or_else(|| Sealer::new(MasterKey::generate("ephemeral"), []));
        let hasher =
            PasswordHasher::new(c.argon2_memory_kib, c.argon2_iterations, c.hash_concurrency)?;
        let mut trusted = Vec::new();
        for (i, p) in c.trusted_proxies.iter().enumerate() {
            let net = p
                .parse::<ipnet::IpNet>()
                .or_else(|_| p.parse::<IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| Error::field(&format!("trusted_proxies[{i}]"), "not an IP or CIDR"))?;
            trusted.push(net);
        }
        let key_ttl = Duration::from_secs(c.api_key_cache_ttl_secs.max(1));
        let inner = Inner {
            key_cache: moka::sync::Cache::builder()
                .max_capacity(c.api_key_cache_capacity)
                .time_to_live(key_ttl)
                .build(),
            missing_keys: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(key_ttl.min(Duration::from_secs(5)))
                .build(),
            token_cache: moka::sync::Cache::builder()
                .max_capacity(c.token_cache_capacity)
                .time_to_live(Duration::from_secs(
                    c.access_token_ttl_secs.max(1) + c.jwt_leeway_secs,
                ))
                .build(),
            revoked_sessions: RevokedSessions::new(
                i64::try_from(c.access_token_ttl_secs + c.jwt_leeway_secs + 60).unwrap_or(3600),
            ),
            throttle: Throttle::new(
                c.login_attempts_per_account,
                c.login_attempts_per_ip,
                Duration::from_secs(c.login_window_secs.max(1)),
                self.redis.clone(),
            ),
            refresh_key: sealer.derive_key("jadugar-auth:refresh"),
            csrf_key: sealer.derive_key("jadugar-auth:csrf"),
            cursors: CursorCodec::new(sealer.derive_key("jadugar-auth:cursor")),
            external: c
                .external_issuers
                .iter()
                .cloned()
                .map(ExternalVerifier::new)
                .collect(),
            trusted,
            config: self.config,
            store: self.store,
            sessions: self.sessions,
            clock: self.clock,
            sealer,
            hasher,
            mailer: self.mailer,
            redis: self.redis,
            keys: RwLock::new(Arc::new(KeySet::default())),
            last_reload: std::sync::Mutex::new(None),
        };
        let service = AuthService {
            inner: Arc::new(inner),
        };
        service.ensure_admin_role().await?;
        service.reload_keys().await?;
        if service.key_set().current().is_none() {
            service.rotate_signing_key().await?;
        }
        service.inner.hasher.warm_up().await?;
        Ok(service)
    }
}

/// The field message of a one-time token that cannot be redeemed; the same
/// whatever the reason, so it tells a guesser nothing.
const TOKEN_INVALID: &str = "is invalid, used or expired";

/// Audit detail of a token refused because the user's email changed since it was mailed.
const MAILED_ELSEWHERE: &str = "token mailed to a former email";

/// What a one-time token stores of the address it was mailed to.
fn email_hash(normalised_email: &str) -> [u8; 32] {
    sha256(normalised_email.as_bytes())
}

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

fn random_token(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut buf);
    URL_SAFE_NO_PAD.encode(buf)
}

/// The caller's user id when the caller is a signed-in user: an API key's
/// subject is the key's own id and a service's its name, never a user's.
fn own_user_id(actor: &Principal) -> Option<UserId> {
    if actor.kind == PrincipalKind::User {
        actor.subject.parse().ok()
    } else {
        None
    }
}

fn store_err(e: StoreError) -> Error {
    match e {
        StoreError::Conflict(what) => Error::Conflict(what),
        other => Error::Store(other),
    }
}

/// Maps the outcome of a change guarded by the admin role.
fn guarded(
    outcome: Result<GuardedChange, StoreError>,
    last_admin: &'static str,
) -> Result<(), Error> {
    match outcome.map_err(store_err)? {
        GuardedChange::Done => Ok(()),
        GuardedChange::NotFound => Err(Error::NotFound("user")),
        GuardedChange::LastHolder => Err(Error::NotAllowed(last_admin)),
    }
}

/// How [`AuthService::modify_user`] writes the record its change edited.
enum UserWrite {
    /// Nothing to write: the user already is as asked.
    Unchanged,
    /// A versioned write.
    Plain,
    /// A versioned write that must not take `admin` from its last enabled
    /// holder; the text is the refusal.
    KeepingAdmin(&'static str),
}

/// Attempts of one read-modify-write of a user before it gives up on a
/// record other writers keep changing (each lost attempt means another
/// write was made, so this is reached only under a storm of edits).
const USER_WRITE_ATTEMPTS: u32 = 8;

/// Upper bound of the random pause before the `attempt`-th retry: 2, 4, 8,
/// 16, 32 ms, then 50. Writers that lost a race to each other spread out
/// instead of colliding again at once.
fn retry_pause(attempt: u32) -> Duration {
    let cap_us = (2_000u64 << attempt.saturating_sub(1).min(5)).min(50_000);
    Duration::from_micros(rand::Rng::gen_range(&mut rand::thread_rng(), 0..=cap_us))
}

impl AuthService {
    /// Starts building a service over `store` and `sessions`.
    pub fn builder(
        config: Config,
        store: Arc<dyn AuthStore>,
        sessions: Arc<dyn SessionStore>,
    ) -> AuthServiceBuilder {
        AuthServiceBuilder {
            config,
            store,
            sessions,
            clock: SystemClock::shared(),
            sealer: None,
            mailer: Arc::new(LogMailer),
            redis: None,
        }
    }

    /// A service on the in-memory store with the system clock (examples, tests).
    pub async fn memory(config: Config) -> Result<Self, Error> {
        let store = Arc::new(MemoryStore::default());
        Self::builder(config, store.clone(), store).build().await
    }

    /// Builds the whole component from the host's backends: runs the
    /// migrations, keeps users/roles/keys/audit in `database` and sessions in
    /// Redis when given (else in `database`), and shares throttling and
    /// revocations through Redis.
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    pub async fn from_backends(
        config: &Config,
        database: &jadugar_core::storage::Database,
        redis: Option<&Redis>,
        clock: SharedClock,
        sealer: Sealer,
    ) -> Result<Self, Error> {
        let store = Arc::new(crate::store::SqlStore::new(database.clone()).await?);
        let sessions: Arc<dyn SessionStore> = match redis {
            #[cfg(feature = "redis")]
            Some(r) => Arc::new(crate::store::RedisSessionStore::new(r.clone())),
            _ => store.clone(),
        };
        Self::builder(config.clone(), store, sessions)
            .clock(clock)
            .sealer(sealer)
            .redis(redis.cloned())
            .build()
            .await
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The auth store.
    pub fn store(&self) -> &Arc<dyn AuthStore> {
        &self.inner.store
    }

    fn now(&self) -> DateTime<Utc> {
        self.inner.clock.now()
    }

    fn key_set(&self) -> Arc<KeySet> {
        self.inner
            .keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn overlap(&self) -> chrono::Duration {
        chrono::Duration::seconds(
            i64::try_from(self.inner.config.key_overlap_secs).unwrap_or(i64::MAX / 4),
        )
    }

    async fn ensure_admin_role(&self) -> Result<(), Error> {
        if self.inner.store.get_role(ADMIN_ROLE).await?.is_none() {
            self.inner
                .store
                .put_role(&Role {
                    name: ADMIN_ROLE.into(),
                    description: "Built-in: every permission".into(),
                    permissions: vec!["*".into()],
                    builtin: true,
                    created_at: self.now(),
                })
                .await?;
        }
        Ok(())
    }

    // ---------------------------------------------------------------- audit

    /// Appends an audit event; a failure to write is logged, never hidden
    /// from the operator, and does not fail the audited action.
    pub async fn audit(
        &self,
        action: &str,
        actor: Option<&str>,
        target: Option<&str>,
        meta: &RequestMeta,
        success: bool,
        detail: Option<String>,
    ) {
        let scoped;
        let meta = if meta.ip.is_none() && meta.user_agent.is_none() {
            scoped = CURRENT_META
                .try_with(RequestMeta::clone)
                .unwrap_or_default();
            &scoped
        } else {
            meta
        };
        let event = AuditEvent {
            id: AuditId::new(),
            at: self.now(),
            action: action.to_owned(),
            actor: actor.map(str::to_owned),
            target: target.map(str::to_owned),
            ip: meta.ip.map(|ip| ip.to_string()),
            user_agent: meta
                .user_agent
                .as_ref()
                .map(|u| u.chars().take(256).collect()),
            success,
            detail,
        };
        if let Err(e) = self.inner.store.append_audit(&event).await {
            tracing::error!(error = %e, action, "could not write audit event");
        }
    }

    /// Lists audit events, newest first. Needs `auth:audit:read`.
    pub async fn list_audit(
        &self,
        actor: &Principal,
        filter: &AuditFilter,
        page: &PageRequest,
    ) -> Result<Page<AuditEvent>, Error> {
        need(actor, PERM_AUDIT_READ)?;
        let before: Option<AuditId> = page
            .position(&self.inner.cursors)
            .map_err(|_| Error::field("cursor", "invalid cursor"))?;
        let rows = self
            .inner
            .store
            .list_audit(filter, before, page.limit() + 1)
            .await?;
        Ok(Page::from_overfetch(
            rows,
            page.limit(),
            &self.inner.cursors,
            |e| e.id,
        ))
    }

    // ------------------------------------------------------------ permissions

    /// The effective permissions of `roles`.
    pub async fn permissions_of(&self, roles: &[String]) -> Result<Vec<String>, Error> {
        let mut perms = Vec::new();
        for name in roles {
            if let Some(role) = self.inner.store.get_role(name).await? {
                for p in role.permissions {
                    if !perms.contains(&p) {
                        perms.push(p);
                    }
                }
            }
        }
        Ok(perms)
    }

    async fn check_can_grant_roles(
        &self,
        actor: &Principal,
        roles: &[String],
    ) -> Result<(), Error> {
        let mut errors = Vec::new();
        for name in roles {
            match self.inner.store.get_role(name).await? {
                None => errors.push(jadugar_core::FieldError::new(
                    "roles",
                    format!("no role {name:?}"),
                )),
                Some(role) => {
                    let missing = uncovered(&actor.permissions, &role.permissions);
                    if let Some(p) = missing.first() {
                        return Err(Error::Forbidden(format!(
                            "{p} (granting role {name} needs every permission it holds)"
                        )));
                    }
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(Error::Validation(errors))
        }
    }

    // ------------------------------------------------------------------ users

    fn check_password(&self, field: &str, password: &str) -> Result<(), Error> {
        let c = &self.inner.config;
        if password.chars().count() < c.password_min_length {
            return Err(Error::field(
                field,
                format!("must be at least {} characters", c.password_min_length),
            ));
        }
        if password.len() > c.password_max_length {
            return Err(Error::field(
                field,
                format!("must be at most {} bytes", c.password_max_length),
            ));
        }
        Ok(())
    }

    /// Creates a user. `actor = None` is the system (bootstrap, CLI) and
    /// skips permission checks; otherwise `auth:users:write` and every
    /// permission of the granted roles are required.
    pub async fn create_user(
        &self,
        actor: Option<&Principal>,
        input: NewUser,
    ) -> Result<User, Error> {
        let mut errors = Vec::new();
        let email = normalize_email(&input.email)
            .map_err(|e| errors.push(e))
            .ok();
        if let Some(p) = &input.password
            && let Err(Error::Validation(mut e)) = self.check_password("password", p)
        {
            errors.append(&mut e);
        }
        for r in &input.roles {
            if let Err(e) = validate_role_name(r) {
                errors.push(jadugar_core::FieldError::new("roles", e.message));
            }
        }
        if input.display_name.chars().count() > 200 {
            errors.push(jadugar_core::FieldError::new(
                "display_name",
                "must be at most 200 characters",
            ));
        }
        let Some(email) = email.filter(|_| errors.is_empty()) else {
            return Err(Error::Validation(errors));
        };
        if let Some(actor) = actor {
            need(actor, PERM_USERS_WRITE)?;
            self.check_can_grant_roles(actor, &input.roles).await?;
        } else {
            for r in &input.roles {
                if self.inner.store.get_role(r).await?.is_none() {
                    return Err(Error::field("roles", format!("no role {r:?}")));
                }
            }
        }
        let password_hash = match input.password {
            Some(p) => Some(self.inner.hasher.hash(p).await?),
            None => None,
        };
        let now = self.now();
        let mut roles = input.roles;
        roles.dedup();
        let user = User {
            id: UserId::new(),
            display_name: if input.display_name.is_empty() {
                email.clone()
            } else {
                input.display_name
            },
            email,
            roles,
            disabled: false,
            email_verified: false,
            must_change_password: input.must_change_password,
            created_at: now,
            updated_at: now,
            version: 1,
        };
        self.inner
            .store
            .create_user(&UserRecord {
                user: user.clone(),
                password_hash,
            })
            .await
            .map_err(store_err)?;
        self.audit(
            "user.create",
            actor.map(|a| a.subject.as_ref()),
            Some(&user.id.to_string()),
            &RequestMeta::default(),
            true,
            None,
        )
        .await;
        Ok(user)
    }

    async fn load_user(&self, id: UserId) -> Result<UserRecord, Error> {
        self.inner
            .store
            .get_user(id)
            .await?
            .ok_or(Error::NotFound("user"))
    }

    /// Reads user `id`, lets `change` edit the record, and writes it back
    /// only if the stored version is still the one read. When another write
    /// came in between, `change` runs again on the newer record (so the
    /// other write is kept and, for the fields `change` sets, the last
    /// writer wins), up to [`USER_WRITE_ATTEMPTS`] times — unless the
    /// caller named the version it saw (`if_match`, HTTP `If-Match`): then
    /// the caller's precondition failed. Returns the user as stored and
    /// whether it was written.
    async fn modify_user(
        &self,
        id: UserId,
        if_match: Option<i64>,
        mut change: impl FnMut(&mut UserRecord) -> Result<UserWrite, Error> + Send,
    ) -> Result<(UserRecord, bool), Error> {
        for attempt in 1..=USER_WRITE_ATTEMPTS {
            let mut record = self.load_user(id).await?;
            if if_match.is_some_and(|v| v != record.user.version) {
                return Err(Error::PreconditionFailed("user"));
            }
            let (outcome, refusal) = match change(&mut record)? {
                UserWrite::Unchanged => return Ok((record, false)),
                UserWrite::Plain => {
                    record.user.updated_at = self.now();
                    let found = self.inner.store.update_user(&record).await;
                    (found.map(|f| f.then_some(GuardedChange::Done)), "")
                }
                UserWrite::KeepingAdmin(refusal) => {
                    record.user.updated_at = self.now();
                    let outcome = self
                        .inner
                        .store
                        .update_user_keeping_role(&record, ADMIN_ROLE)
                        .await;
                    (outcome.map(Some), refusal)
                }
            };
            match outcome {
                Ok(Some(GuardedChange::Done)) => {
                    record.user.version += 1;
                    return Ok((record, true));
                }
                Ok(None | Some(GuardedChange::NotFound)) => return Err(Error::NotFound("user")),
                Ok(Some(GuardedChange::LastHolder)) => return Err(Error::NotAllowed(refusal)),
                Err(StoreError::Stale) if if_match.is_some() => {
                    return Err(Error::PreconditionFailed("user"));
                }
                Err(StoreError::Stale) => {
                    tracing::debug!(user = %id, attempt, "user changed concurrently; reapplying");
                    if attempt < USER_WRITE_ATTEMPTS {
                        let pause = retry_pause(attempt);
                        tokio::time::sleep(pause).await;
                    }
                }
                Err(other) => return Err(store_err(other)),
            }
        }
        Err(Error::Contended("user"))
    }

    /// A user. The user themself, or `auth:users:read`.
    pub async fn get_user(&self, actor: &Principal, id: UserId) -> Result<User, Error> {
        if *actor.subject != *id.to_string() {
            need(actor, PERM_USERS_READ)?;
        }
        Ok(self.load_user(id).await?.user)
    }

    /// Users by id, cursor-paginated. Needs `auth:users:read`.
    pub async fn list_users(
        &self,
        actor: &Principal,
        page: &PageRequest,
    ) -> Result<Page<User>, Error> {
        need(actor, PERM_USERS_READ)?;
        let after: Option<UserId> = page
            .position(&self.inner.cursors)
            .map_err(|_| Error::field("cursor", "invalid cursor"))?;
        let rows = self.inner.store.list_users(after, page.limit() + 1).await?;
        let users: Vec<User> = rows.into_iter().map(|r| r.user).collect();
        Ok(Page::from_overfetch(
            users,
            page.limit(),
            &self.inner.cursors,
            |u| u.id,
        ))
    }

    /// Edits a user. Needs `auth:users:write`; the last admin cannot be
    /// disabled. With `if_match` (the version the caller last saw) a user
    /// changed since is [`Error::PreconditionFailed`]; without it, the fields
    /// `update` names are set on the user as it is at the write, keeping
    /// every concurrent change to other fields.
    ///
    /// A new email (one that normalises to another address) is unverified:
    /// `email_verified` becomes `false`, password-reset and verification
    /// tokens mailed to the old address stop working, the change is audited
    /// as `email.change`, and an enabled user is mailed a verification token
    /// at the new address (as [`request_email_verification`] would; if the
    /// mail fails the edit still stands and the user can ask again).
    ///
    /// [`request_email_verification`]: Self::request_email_verification
    pub async fn update_user(
        &self,
        actor: &Principal,
        id: UserId,
        update: UserUpdate,
        if_match: Option<i64>,
    ) -> Result<User, Error> {
        need(actor, PERM_USERS_WRITE)?;
        let email = update
            .email
            .as_deref()
            .map(normalize_email)
            .transpose()
            .map_err(|e| Error::Validation(vec![e]))?;
        if let Some(name) = &update.display_name
            && (name.chars().count() > 200 || name.trim().is_empty())
        {
            return Err(Error::field("display_name", "must be 1 to 200 characters"));
        }
        let mut disabling = false;
        let mut email_changed = false;
        let (record, _) = self
            .modify_user(id, if_match, |record| {
                // Per attempt: a retry may find the new email already set.
                email_changed = email.as_ref().is_some_and(|e| *e != record.user.email);
                if let Some(email) = email.as_ref().filter(|_| email_changed) {
                    record.user.email.clone_from(email);
                    // Control of the old address says nothing about the new one.
                    record.user.email_verified = false;
                }
                if let Some(name) = &update.display_name {
                    record.user.display_name.clone_from(name);
                }
                disabling = update.disabled == Some(true) && !record.user.disabled;
                if let Some(d) = update.disabled {
                    record.user.disabled = d;
                }
                // Disabling: the last-admin check and the write are one store step.
                Ok(if disabling {
                    UserWrite::KeepingAdmin("the last admin cannot be disabled")
                } else {
                    UserWrite::Plain
                })
            })
            .await?;
        if disabling {
            self.revoke_user_sessions_internal(id).await?;
        }
        self.user_changed().await;
        self.audit(
            "user.update",
            Some(&actor.subject),
            Some(&id.to_string()),
            &RequestMeta::default(),
            true,
            None,
        )
        .await;
        if email_changed {
            self.audit(
                "email.change",
                Some(&actor.subject),
                Some(&id.to_string()),
                &RequestMeta::default(),
                true,
                None,
            )
            .await;
            if !record.user.disabled
                && let Err(e) = self
                    .send_token(&record.user, TokenKind::EmailVerification)
                    .await
            {
                // The change is made; failing the edit now would invite a
                // retry that changes nothing. The user can ask for a mail.
                tracing::warn!(user = %id, error = %e, "could not mail a verification token to the new email");
            }
        }
        Ok(record.user)
    }

    /// Deletes a user, their keys and sessions. Needs `auth:users:write`;
    /// the last admin cannot be deleted. With `if_match` (the version the
    /// caller last saw) a user changed since is [`Error::PreconditionFailed`].
    pub async fn delete_user(
        &self,
        actor: &Principal,
        id: UserId,
        if_match: Option<i64>,
    ) -> Result<(), Error> {
        need(actor, PERM_USERS_WRITE)?;
        let outcome = self
            .inner
            .store
            .delete_user_keeping_role(id, ADMIN_ROLE, if_match)
            .await;
        if matches!(outcome, Err(StoreError::Stale)) {
            return Err(Error::PreconditionFailed("user"));
        }
        guarded(outcome, "the last admin cannot be deleted")?;
        self.revoke_user_sessions_internal(id).await?;
        self.user_changed().await;
        self.audit(
            "user.delete",
            Some(&actor.subject),
            Some(&id.to_string()),
            &RequestMeta::default(),
            true,
            None,
        )
        .await;
        Ok(())
    }

    /// Grants `role` to a user. Needs `auth:users:write` and every
    /// permission the role holds (no escalation).
    pub async fn assign_role(
        &self,
        actor: &Principal,
        id: UserId,
        role: &str,
    ) -> Result<User, Error> {
        need(actor, PERM_USERS_WRITE)?;
        self.check_can_grant_roles(actor, &[role.to_owned()])
            .await?;
        let (record, written) = self
            .modify_user(id, None, |record| {
                if record.user.roles.iter().any(|r| r == role) {
                    return Ok(UserWrite::Unchanged);
                }
                record.user.roles.push(role.to_owned());
                Ok(UserWrite::Plain)
            })
            .await?;
        if written {
            self.user_changed().await;
        }
        self.audit(
            "role.assign",
            Some(&actor.subject),
            Some(&id.to_string()),
            &RequestMeta::default(),
            true,
            Some(role.to_owned()),
        )
        .await;
        Ok(record.user)
    }

    /// Takes `role` from a user. Needs `auth:users:write` and every
    /// permission the role holds; the last admin keeps `admin`.
    pub async fn unassign_role(
        &self,
        actor: &Principal,
        id: UserId,
        role: &str,
    ) -> Result<User, Error> {
        need(actor, PERM_USERS_WRITE)?;
        self.check_can_grant_roles(actor, &[role.to_owned()])
            .await?;
        let (record, written) = self
            .modify_user(id, None, |record| {
                if !record.user.roles.iter().any(|r| r == role) {
                    return Ok(UserWrite::Unchanged);
                }
                record.user.roles.retain(|r| r != role);
                Ok(if role == ADMIN_ROLE {
                    UserWrite::KeepingAdmin("the last admin cannot lose the admin role")
                } else {
                    UserWrite::Plain
                })
            })
            .await?;
        if written {
            self.user_changed().await;
        }
        self.audit(
            "role.unassign",
            Some(&actor.subject),
            Some(&id.to_string()),
            &RequestMeta::default(),
            true,
            Some(role.to_owned()),
        )
        .await;
        Ok(record.user)
    }

    /// Makes a user change their password at their next login (as after a
    /// generated one): until they do, the tokens they get carry no
    /// permission but changing it. `actor = None` is the system (CLI) and
    /// skips the permission check; otherwise `auth:users:write` is needed.
    ///
    /// A read-modify-write of the flag alone: a concurrent edit of the user
    /// is kept and the flag set on top of it (retried, never
    /// [`StoreError::Stale`]); [`Error::Contended`] only if writers keep
    /// winning. Sessions already open are not touched.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use jadugar_auth::{AuthService, Config};
    /// use jadugar_auth::service::NewUser;
    ///
    /// let mut config = Config::default();
    /// config.argon2_memory_kib = 1024; // fast for the example only
    /// let auth = AuthService::memory(config).await.unwrap();
    /// let ada = auth.create_user(None, NewUser {
    ///     email: "ada@example.com".into(),
    ///     display_name: "Ada".into(),
    ///     password: Some("a generated one-time password".into()),
    ///     roles: vec![],
    ///     must_change_password: false,
    /// }).await.unwrap();
    /// let ada = auth.require_password_change(None, ada.id).await.unwrap();
    /// assert!(ada.must_change_password);
    /// # });
    /// ```
    pub async fn require_password_change(
        &self,
        actor: Option<&Principal>,
        id: UserId,
    ) -> Result<User, Error> {
        if let Some(actor) = actor {
            need(actor, PERM_USERS_WRITE)?;
        }
        let (record, written) = self
            .modify_user(id, None, |record| {
                if record.user.must_change_password {
                    return Ok(UserWrite::Unchanged);
                }
                record.user.must_change_password = true;
                Ok(UserWrite::Plain)
            })
            .await?;
        if written {
            self.user_changed().await;
        }
        self.audit(
            "password.require_change",
            actor.map(|a| a.subject.as_ref()),
            Some(&id.to_string()),
            &RequestMeta::default(),
            true,
            None,
        )
        .await;
        Ok(record.user)
    }

    /// Sets a user's password as an admin (`auth:users:write`); revokes their sessions.
    pub async fn set_password(
        &self,
        actor: &Principal,
        id: UserId,
        password: String,
    ) -> Result<(), Error> {
        need(actor, PERM_USERS_WRITE)?;
        self.check_password("password", &password)?;
        self.store_password(id, password, None, None, false).await?;
        self.audit(
            "password.set",
            Some(&actor.subject),
            Some(&id.to_string()),
            &RequestMeta::default(),
            true,
            None,
        )
        .await;
        Ok(())
    }

    /// Hashes `password` and stores it. With `verified`, the hash the
    /// caller checked the current password against: if the password changed
    /// since, the check no longer holds and nothing is written. With
    /// `mailed_to`, the email hash of the reset token: if the user's email
    /// is another one at the write, nothing is written.
    async fn store_password(
        &self,
        id: UserId,
        password: String,
        verified: Option<&Option<String>>,
        mailed_to: Option<&[u8; 32]>,
        keep_session: bool,
    ) -> Result<(), Error> {
        let hash = self.inner.hasher.hash(password).await?;
        self.modify_user(id, None, |record| {
            if verified.is_some_and(|h| *h != record.password_hash) {
                return Err(Error::field("current_password", "is wrong"));
            }
            if mailed_to.is_some_and(|m| *m != email_hash(&record.user.email)) {
                return Err(Error::field("token", TOKEN_INVALID));
            }
            record.password_hash = Some(hash.clone());
            record.user.must_change_password = false;
            Ok(UserWrite::Plain)
        })
        .await?;
        if !keep_session {
            self.revoke_user_sessions_internal(id).await?;
        }
        Ok(())
    }

    /// Changes the caller's own password after checking the current one.
    /// Other sessions of the user are revoked.
    pub async fn change_password(
        &self,
        principal: &Principal,
        current: String,
        new: String,
        meta: &RequestMeta,
    ) -> Result<(), Error> {
        let id = own_user_id(principal).ok_or(Error::NotAllowed("only users have passwords"))?;
        self.check_password("new_password", &new)?;
        let record = self.load_user(id).await?;
        if !self
            .inner
            .hasher
            .verify(current, record.password_hash.clone())
            .await?
        {
            self.audit(
                "password.change",
                Some(&principal.subject),
                Some(&principal.subject),
                meta,
                false,
                None,
            )
            .await;
            return Err(Error::field("current_password", "is wrong"));
        }
        self.store_password(id, new, Some(&record.password_hash), None, false)
            .await?;
        self.audit(
            "password.change",
            Some(&principal.subject),
            Some(&principal.subject),
            meta,
            true,
            None,
        )
        .await;
        Ok(())
    }

    /// Creates the first admin when the store has no users: email
    /// `admin@localhost`, role `admin`, with `password` (e.g. from
    /// `JADUGAR_ADMIN_PASSWORD`) or a generated one returned to print once.
    /// A generated password must be changed at first login: until then the
    /// admin's tokens carry no permission but changing it.
    /// Returns `None` when users already exist.
    pub async fn bootstrap(
        &self,
        password: Option<String>,
    ) -> Result<Option<BootstrapAdmin>, Error> {
        if self.inner.store.count_users().await? > 0 {
            return Ok(None);
        }
        let generated = password.is_none();
        let password = password.unwrap_or_else(|| random_token(18));
        let user = self
            .create_user(
                None,
                NewUser {
                    email: "admin@localhost".into(),
                    display_name: "admin".into(),
                    password: Some(password.clone()),
                    roles: vec![ADMIN_ROLE.into()],
                    // One write: a generated password is never stored as
                    // a permanent one, even for a moment.
                    must_change_password: generated,
                },
            )
            .await?;
        self.audit(
            "bootstrap.admin",
            None,
            Some(&user.id.to_string()),
            &RequestMeta::default(),
            true,
            None,
        )
        .await;
        Ok(Some(BootstrapAdmin {
            email: user.email,
            generated_password: generated.then_some(password),
        }))
    }

    // ------------------------------------------------------------------ roles

    /// All roles.
    pub async fn list_roles(&self, actor: &Principal) -> Result<Vec<Role>, Error> {
        need(actor, PERM_USERS_READ)?;
        Ok(self.inner.store.list_roles().await?)
    }

    /// Creates or replaces a role. Needs `auth:roles:write` and every
    /// permission the role ends up with and had before (no escalation, no
    /// editing a role above one's own); built-in roles cannot be edited.
    pub async fn put_role(&self, actor: &Principal, input: RoleInput) -> Result<Role, Error> {
        self.write_role(actor, input, false).await
    }

    /// Creates a role; [`Error::Conflict`] if one with its name exists
    /// (replacing is [`put_role`](Self::put_role)). Needs `auth:roles:write`
    /// and every permission the role holds.
    pub async fn create_role(&self, actor: &Principal, input: RoleInput) -> Result<Role, Error> {
        self.write_role(actor, input, true).await
    }

    async fn write_role(
        &self,
        actor: &Principal,
        input: RoleInput,
        create_only: bool,
    ) -> Result<Role, Error> {
        need(actor, PERM_ROLES_WRITE)?;
        let mut errors = Vec::new();
        if let Err(e) = validate_role_name(&input.name) {
            errors.push(e);
        }
        for p in &input.permissions {
            if let Err(e) = validate_permission(p) {
                errors.push(e);
            }
        }
        if !errors.is_empty() {
            return Err(Error::Validation(errors));
        }
        let existing = self.inner.store.get_role(&input.name).await?;
        if create_only && existing.is_some() {
            return Err(Error::Conflict("a role with this name"));
        }
        if existing.as_ref().is_some_and(|r| r.builtin) {
            return Err(Error::NotAllowed("built-in roles cannot be edited"));
        }
        let before = existing
            .as_ref()
            .map(|r| r.permissions.clone())
            .unwrap_or_default();
        if let Some(p) = uncovered(&actor.permissions, &input.permissions)
            .into_iter()
            .chain(uncovered(&actor.permissions, &before))
            .next()
        {
            return Err(Error::Forbidden(p.to_owned()));
        }
        let mut permissions = input.permissions;
        permissions.dedup();
        let role = Role {
            name: input.name,
            description: input.description,
            permissions,
            builtin: false,
            created_at: existing.map(|r| r.created_at).unwrap_or_else(|| self.now()),
        };
        if create_only {
            // The store refuses the name if a concurrent create took it.
            self.inner
                .store
                .insert_role(&role)
                .await
                .map_err(|e| match e {
                    StoreError::Conflict(_) => Error::Conflict("a role with this name"),
                    other => other.into(),
                })?;
        } else {
            self.inner.store.put_role(&role).await?;
        }
        self.user_changed().await;
        self.audit(
            if create_only {
                "role.create"
            } else {
                "role.put"
            },
            Some(&actor.subject),
            Some(&role.name),
            &RequestMeta::default(),
            true,
            Some(role.permissions.join(" ")),
        )
        .await;
        Ok(role)
    }

    /// Deletes a role; users holding it lose its permissions (API keys at
    /// once, access tokens at their next refresh). Needs `auth:roles:write`
    /// and every permission of the role.
    pub async fn delete_role(&self, actor: &Principal, name: &str) -> Result<(), Error> {
        need(actor, PERM_ROLES_WRITE)?;
        let role = self
            .inner
            .store
            .get_role(name)
            .await?
            .ok_or(Error::NotFound("role"))?;
        if role.builtin {
            return Err(Error::NotAllowed("built-in roles cannot be deleted"));
        }
        if let Some(p) = uncovered(&actor.permissions, &role.permissions).first() {
            return Err(Error::Forbidden((*p).to_owned()));
        }
        self.inner.store.delete_role(name).await?;
        self.user_changed().await;
        self.audit(
            "role.delete",
            Some(&actor.subject),
            Some(name),
            &RequestMeta::default(),
            true,
            None,
        )
        .await;
        Ok(())
    }

    // --------------------------------------------------------------- api keys

    /// Creates an API key for the caller (or, with `auth:keys:write`, for
    /// `owner`); scopes must be covered by the owner's and the caller's
    /// permissions. `actor = None` is the system (CLI) and needs `owner`.
    pub async fn create_api_key(
        &self,
        actor: Option<&Principal>,
        input: NewApiKey,
    ) -> Result<CreatedApiKey, Error> {
        let owner_id = match (actor, input.owner) {
            (_, Some(owner)) => owner,
            (Some(a), None) => own_user_id(a).ok_or(Error::NotAllowed(
                "only users own API keys: sign in as the user, or name the owner",
            ))?,
            (None, None) => return Err(Error::field("owner", "is required")),
        };
        if let Some(a) = actor
            && *a.subject != *owner_id.to_string()
        {
            need(a, PERM_KEYS_WRITE)?;
        }
        let mut errors = Vec::new();
        if input.name.trim().is_empty() || input.name.chars().count() > 100 {
            errors.push(jadugar_core::FieldError::new(
                "name",
                "must be 1 to 100 characters",
            ));
        }
        for s in &input.scopes {
            if validate_permission(s).is_err() {
                errors.push(jadugar_core::FieldError::new(
                    "scopes",
                    format!("{s:?} is not a permission"),
                ));
            }
        }
        if input.expires_in_secs == Some(0) {
            // A key that expires as it is made is a mistake, not a request.
            errors.push(jadugar_core::FieldError::new(
                "expires_in_secs",
                "must be at least 1 (leave it out for a key that does not expire)",
            ));
        }
        if !errors.is_empty() {
            return Err(Error::Validation(errors));
        }
        let owner = self.load_user(owner_id).await?.user;
        if owner.disabled {
            return Err(Error::NotAllowed("the owner is disabled"));
        }
        let owner_perms = self.permissions_of(&owner.roles).await?;
        let scopes = if input.scopes.is_empty() {
            owner_perms.clone()
        } else {
            input.scopes
        };
        if let Some(p) = uncovered(&owner_perms, &scopes).first() {
            return Err(Error::field(
                "scopes",
                format!("{p} is not held by the owner"),
            ));
        }
        if let Some(a) = actor
            && let Some(p) = uncovered(&a.permissions, &scopes).first()
        {
            return Err(Error::Forbidden((*p).to_owned()));
        }
        let now = self.now();
        let public_id = hex::encode(rand::random::<[u8; 8]>());
        let secret = random_token(32);
        let key = ApiKey {
            id: ApiKeyId::new(),
            public_id: public_id.clone(),
            owner: owner_id,
            name: input.name,
            scopes,
            created_at: now,
            expires_at: input.expires_in_secs.map(|s| {
                now + chrono::Duration::seconds(
                    i64::try_from(s)
                        .unwrap_or(i64::MAX / 4)
                        .min(100 * 365 * 86_400),
                )
            }),
            revoked_at: None,
            last_used_at: None,
        };
        self.inner
            .store
            .create_api_key(&ApiKeyRecord {
                key: key.clone(),
                secret_hash: sha256(secret.as_bytes()),
            })
            .await
            .map_err(store_err)?;
        self.audit(
            "apikey.create",
            actor.map(|a| a.subject.as_ref()),
            Some(&key.id.to_string()),
            &RequestMeta::default(),
            true,
            None,
        )
        .await;
        Ok(CreatedApiKey {
            secret: format!("{API_KEY_PREFIX}{public_id}_{secret}"),
            key,
        })
    }

    /// Keys of the caller, or of `owner` / everyone with `auth:keys:write`.
    pub async fn list_api_keys(
        &self,
        actor: &Principal,
        owner: Option<UserId>,
    ) -> Result<Vec<ApiKey>, Error> {
        let own = own_user_id(actor);
        let target = match owner {
            Some(o) if Some(o) == own => Some(o),
            Some(o) => {
                need(actor, PERM_KEYS_WRITE)?;
                Some(o)
            }
            None if actor.can(PERM_KEYS_WRITE) => None,
            None => Some(own.ok_or(Error::NotAllowed(
                "only users own API keys: sign in as the user, or name the owner",
            ))?),
        };
        let mut keys: Vec<ApiKey> = self
            .inner
            .store
            .list_api_keys(target)
            .await?
            .into_iter()
            .map(|r| r.key)
            .collect();
        for k in &mut keys {
            if let Some(cached) = self
                .inner
                .key_cache
                .get(&public_key_number(&k.public_id).unwrap_or(0))
            {
                let used = cached.last_used.load(Ordering::Relaxed);
                if used > 0 {
                    let at = DateTime::from_timestamp(used, 0);
                    if at > k.last_used_at {
                        k.last_used_at = at;
                    }
                }
            }
        }
        Ok(keys)
    }

    /// Revokes a key (own, or any with `auth:keys:write`). Takes effect on
    /// this host at once and on others through Redis, or within the cache TTL.
    pub async fn revoke_api_key(&self, actor: &Principal, id: ApiKeyId) -> Result<(), Error> {
        let record = self
            .inner
            .store
            .get_api_key(id)
            .await?
            .ok_or(Error::NotFound("api key"))?;
        if *actor.subject != *record.key.owner.to_string() {
            need(actor, PERM_KEYS_WRITE)?;
        }
        self.inner.store.revoke_api_key(id, self.now()).await?;
        if let Some(n) = public_key_number(&record.key.public_id) {
            self.inner.key_cache.invalidate(&n);
        }
        self.publish(&format!("key:{}", record.key.public_id)).await;
        self.audit(
            "apikey.revoke",
            Some(&actor.subject),
            Some(&id.to_string()),
            &RequestMeta::default(),
            true,
            None,
        )
        .await;
        Ok(())
    }

    /// Verifies an API key text; the principal it acts as.
    ///
    /// A cache hit costs a hash lookup, a SHA-256 and a constant-time compare.
    pub async fn verify_api_key(&self, text: &str) -> Result<Principal, Error> {
        let (number, secret) =
            parse_api_key(text).ok_or(Error::Unauthenticated("malformed API key"))?;
        if let Some(hit) = self.check_cached_key(number, secret) {
            return hit;
        }
        if self.inner.missing_keys.contains_key(&number) {
            return Err(Error::Unauthenticated("invalid API key"));
        }
        let public_id = &text[API_KEY_PREFIX.len()..API_KEY_PREFIX.len() + PUBLIC_ID_LEN];
        let Some(record) = self.inner.store.get_api_key_by_public_id(public_id).await? else {
            self.inner.missing_keys.insert(number, ());
            return Err(Error::Unauthenticated("invalid API key"));
        };
        let owner = self.inner.store.get_user(record.key.owner).await?;
        let (revoked, principal) = match owner {
            Some(o) if !o.user.disabled => {
                let perms = self.permissions_of(&o.user.roles).await?;
                let effective: Vec<String> = record
                    .key
                    .scopes
                    .iter()
                    .filter(|s| covers(&perms, s))
                    .cloned()
                    .collect();
                (
                    record.key.revoked_at.is_some(),
                    Principal::new(record.key.id.to_string(), PrincipalKind::ApiKey)
                        .with_roles(o.user.roles.clone())
                        .with_permissions(effective)
                        .with_owner(o.user.id.to_string()),
                )
            }
            _ => (
                true,
                Principal::new(record.key.id.to_string(), PrincipalKind::ApiKey),
            ),
        };
        let last = record.key.last_used_at.map(|t| t.timestamp()).unwrap_or(0);
        self.inner.key_cache.insert(
            number,
            Arc::new(CachedKey {
                id: record.key.id,
                hash: record.secret_hash,
                expires_at: record.key.expires_at.map(|t| t.timestamp()),
                revoked,
                principal,
                last_used: AtomicI64::new(last),
                flushed: AtomicI64::new(last),
            }),
        );
        self.check_cached_key(number, secret)
            .unwrap_or(Err(Error::Unauthenticated("invalid API key")))
    }

    /// The cache-only part of [`verify_api_key`](Self::verify_api_key):
    /// `None` on a cache miss.
    pub fn verify_api_key_cached(&self, text: &str) -> Option<Result<Principal, Error>> {
        match parse_api_key(text) {
            Some((number, secret)) => self.check_cached_key(number, secret),
            None => Some(Err(Error::Unauthenticated("malformed API key"))),
        }
    }

    fn check_cached_key(&self, number: u64, secret: &str) -> Option<Result<Principal, Error>> {
        let cached = self.inner.key_cache.get(&number)?;
        let presented = sha256(secret.as_bytes());
        if !bool::from(presented.ct_eq(&cached.hash)) || cached.revoked {
            return Some(Err(Error::Unauthenticated("invalid API key")));
        }
        let now = self.now().timestamp();
        if cached.expires_at.is_some_and(|e| e <= now) {
            return Some(Err(Error::Unauthenticated("API key expired")));
        }
        cached.last_used.fetch_max(now, Ordering::Relaxed);
        Some(Ok(cached.principal.clone()))
    }

    /// Writes last-used times gathered in memory to the store.
    pub async fn flush_key_usage(&self) -> Result<usize, Error> {
        let mut uses = Vec::new();
        for (_, cached) in self.inner.key_cache.iter() {
            let used = cached.last_used.load(Ordering::Relaxed);
            if used > cached.flushed.swap(used, Ordering::Relaxed)
                && let Some(at) = DateTime::from_timestamp(used, 0)
            {
                uses.push((cached.id, at));
            }
        }
        if !uses.is_empty() {
            self.inner.store.record_api_key_use(&uses).await?;
        }
        Ok(uses.len())
    }

    // ------------------------------------------------------------------- jwt

    /// Reloads signing keys from the store (other hosts may have rotated).
    pub async fn reload_keys(&self) -> Result<(), Error> {
        let records = self.inner.store.list_signing_keys().await?;
        let mut keys = Vec::new();
        for r in &records {
            match jwt::load_key(r, &self.inner.sealer) {
                Ok(k) => keys.push(Arc::new(k)),
                Err(e) => tracing::error!(kid = %r.kid, error = %e, "cannot load signing key"),
            }
        }
        *self
            .inner
            .keys
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(KeySet { keys });
        Ok(())
    }

    /// Generates a new signing key and retires the current one, which keeps
    /// verifying for `key_overlap_secs`.
    pub async fn rotate_signing_key(&self) -> Result<String, Error> {
        let alg = jwt::parse_alg(&self.inner.config.jwt_algorithm)?;
        let now = self.now();
        let record = jwt::generate_key(alg, &self.inner.sealer, now)?;
        let previous: Vec<String> = self
            .key_set()
            .keys
            .iter()
            .filter(|k| k.retired_at.is_none())
            .map(|k| k.kid.clone())
            .collect();
        self.inner.store.insert_signing_key(&record).await?;
        for kid in previous {
            self.inner.store.retire_signing_key(&kid, now).await?;
        }
        self.reload_keys().await?;
        self.publish("signing-keys").await;
        self.audit(
            "signing_key.rotate",
            None,
            Some(&record.kid),
            &RequestMeta::default(),
            true,
            None,
        )
        .await;
        Ok(record.kid)
    }

    /// Signs arbitrary `claims` with the current key (its `alg` and `kid`),
    /// for tests that need hostile tokens. Feature `test-support` only.
    #[cfg(feature = "test-support")]
    pub fn sign_claims_for_tests(&self, claims: &serde_json::Value) -> Result<String, Error> {
        let keys = self.key_set();
        let key = keys
            .current()
            .ok_or_else(|| Error::Key("no signing key".into()))?;
        jwt::sign(key, claims)
    }

    /// The JWKS document.
    pub fn jwks(&self) -> serde_json::Value {
        self.key_set().jwks(self.now(), self.overlap())
    }

    /// The OpenID Connect discovery document.
    pub fn openid_configuration(&self) -> serde_json::Value {
        let iss = self.inner.config.issuer.trim_end_matches('/');
        serde_json::json!({
            "issuer": iss,
            "jwks_uri": format!("{iss}/.well-known/jwks.json"),
            "token_endpoint": format!("{iss}/v1/auth/login"),
            "userinfo_endpoint": format!("{iss}/v1/auth/me"),
            "response_types_supported": ["token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["EdDSA", "ES256"],
            "token_endpoint_auth_methods_supported": ["none"],
            "grant_types_supported": ["password", "refresh_token"],
        })
    }

    fn issue_access(
        &self,
        user: &User,
        session: SessionId,
        perms: Vec<String>,
    ) -> Result<String, Error> {
        let keys = self.key_set();
        let key = keys
            .current()
            .ok_or_else(|| Error::Key("no signing key".into()))?;
        let now = self.now().timestamp();
        let claims = Claims {
            iss: self.inner.config.issuer.clone(),
            sub: user.id.to_string(),
            aud: self.inner.config.audience.clone(),
            exp: now + i64::try_from(self.inner.config.access_token_ttl_secs).unwrap_or(300),
            iat: now,
            nbf: now,
            jti: uuid::Uuid::now_v7().to_string(),
            sid: Some(session.to_string()),
            roles: user.roles.clone(),
            perms,
        };
        jwt::sign(key, &claims)
    }

    /// Validates a bearer JWT (ours or a configured external issuer's).
    /// A repeat of a validated token is a cache lookup.
    pub async fn validate_token(&self, token: &str) -> Result<Principal, Error> {
        let digest = sha256(token.as_bytes());
        if let Some(hit) = self.cached_token(&digest, token) {
            return hit;
        }
        let jws = jwt::Compact::parse(token)?;
        let header = jws.header()?;
        let kid = header
            .kid
            .as_deref()
            .ok_or(Error::Unauthenticated("token without kid"))?;
        let now = self.now();
        let leeway = i64::try_from(self.inner.config.jwt_leeway_secs).unwrap_or(30);
        let keys = self.key_set();
        if let Some(key) = keys.find(kid, now, self.overlap()) {
            let c = key.verify(
                &jws,
                &header,
                &self.inner.config.issuer,
                &self.inner.config.audience,
            )?;
            let times = TimeClaims {
                exp: c.exp,
                nbf: Some(c.nbf),
                iat: Some(c.iat),
                sub: String::new(),
            };
            jwt::check_times(&times, now.timestamp(), leeway)?;
            let session = c.sid.as_deref().and_then(|s| s.parse::<SessionId>().ok());
            if session.is_some_and(|s| self.inner.revoked_sessions.contains(&s)) {
                return Err(Error::Unauthenticated("session revoked"));
            }
            let mut principal = Principal::new(c.sub, PrincipalKind::User)
                .with_roles(c.roles)
                .with_permissions(c.perms);
            if let Some(sid) = c.sid {
                principal = principal.with_session(sid);
            }
            self.inner.token_cache.insert(
                digest,
                Arc::new(CachedToken {
                    token: token.into(),
                    exp: c.exp.saturating_add(leeway),
                    principal: principal.clone(),
                    session,
                }),
            );
            return Ok(principal);
        }
        let iss = jwt::peek_issuer(token);
        if iss.as_deref() == Some(self.inner.config.issuer.as_str()) {
            // Ours, with a key we do not know: maybe rotated on another host.
            // Reload (at most every 5 s) and try once more.
            if self.reload_keys_if_idle().await?
                && self.key_set().find(kid, now, self.overlap()).is_some()
            {
                return Box::pin(self.validate_token(token)).await;
            }
            return Err(Error::Unauthenticated("unknown signing key"));
        }
        let Some(external) =
            iss.and_then(|iss| self.inner.external.iter().find(|e| e.config.issuer == iss))
        else {
            return Err(Error::Unauthenticated("unknown signing key"));
        };
        let (sub, exp) = external.verify(token, kid, now.timestamp(), leeway).await?;
        let principal = Principal::new(
            format!("{}|{sub}", external.config.issuer),
            PrincipalKind::User,
        )
        .with_roles(external.config.roles.clone())
        .with_permissions(external.config.permissions.clone());
        self.inner.token_cache.insert(
            digest,
            Arc::new(CachedToken {
                token: token.into(),
                exp: exp.saturating_add(leeway),
                principal: principal.clone(),
                session: None,
            }),
        );
        Ok(principal)
    }

    async fn reload_keys_if_idle(&self) -> Result<bool, Error> {
        {
            let mut last = self
                .inner
                .last_reload
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if last.is_some_and(|t| t.elapsed() < Duration::from_secs(5)) {
                return Ok(false);
            }
            *last = Some(std::time::Instant::now());
        }
        self.reload_keys().await?;
        Ok(true)
    }

    /// The cache-only part of [`validate_token`](Self::validate_token).
    pub fn validate_token_cached(&self, token: &str) -> Option<Result<Principal, Error>> {
        self.cached_token(&sha256(token.as_bytes()), token)
    }

    fn cached_token(&self, digest: &[u8; 32], token: &str) -> Option<Result<Principal, Error>> {
        let hit = self.inner.token_cache.get(digest)?;
        if *hit.token != *token {
            return None;
        }
        if hit.exp <= self.now().timestamp() {
            self.inner.token_cache.invalidate(digest);
            return Some(Err(Error::Unauthenticated("token expired")));
        }
        if hit
            .session
            .is_some_and(|s| self.inner.revoked_sessions.contains(&s))
        {
            return Some(Err(Error::Unauthenticated("session revoked")));
        }
        Some(Ok(hit.principal.clone()))
    }

    // --------------------------------------------------------------- sessions

    fn refresh_mac(&self, session: &Session, generation: i64) -> String {
        let mut mac = <HmacSha256 as Mac>::new_from_slice(&self.inner.refresh_key)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(session.id.to_string().as_bytes());
        mac.update(b"|");
        mac.update(generation.to_string().as_bytes());
        mac.update(b"|");
        mac.update(session.salt.as_bytes());
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    }

    fn refresh_token(&self, session: &Session, generation: i64) -> String {
        format!(
            "{REFRESH_PREFIX}{}_{generation}_{}",
            session.id.as_uuid().simple(),
            self.refresh_mac(session, generation)
        )
    }

    /// The CSRF token of a session (double-submit value, bound to the session).
    pub fn csrf_token(&self, session: &str) -> String {
        let mut mac = <HmacSha256 as Mac>::new_from_slice(&self.inner.csrf_key)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(session.as_bytes());
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    }

    async fn principal_perms(&self, user: &User) -> Result<Vec<String>, Error> {
        if user.must_change_password {
            return Ok(Vec::new());
        }
        self.permissions_of(&user.roles).await
    }

    async fn pair(
        &self,
        user: &User,
        session: &Session,
        generation: i64,
    ) -> Result<TokenPair, Error> {
        let perms = self.principal_perms(user).await?;
        Ok(TokenPair {
            access_token: self.issue_access(user, session.id, perms)?,
            token_type: "Bearer",
            expires_in: self.inner.config.access_token_ttl_secs,
            refresh_token: self.refresh_token(session, generation),
            session_id: session.id,
            user_id: user.id,
            csrf_token: self.csrf_token(&session.id.to_string()),
            must_change_password: user.must_change_password,
        })
    }

    /// Logs in with email and password. Throttled per account and IP (429
    /// with the same answer for unknown accounts); a failure costs the same
    /// time whether the account exists or not. `previous` — a session the
    /// client already had — is revoked (no fixation).
    pub async fn login(
        &self,
        email: &str,
        password: &str,
        meta: &RequestMeta,
        previous: Option<SessionId>,
    ) -> Result<TokenPair, Error> {
        let account = email.trim().to_lowercase();
        let account: String = account.chars().take(254).collect();
        if let Err(e) = self.inner.throttle.attempt(&account, meta.ip).await {
            self.audit("login.throttled", None, Some(&account), meta, false, None)
                .await;
            return Err(e);
        }
        let too_long = password.len() > self.inner.config.password_max_length;
        let record = match normalize_email(&account) {
            Ok(e) if !too_long => self.inner.store.get_user_by_email(&e).await?,
            _ => None,
        };
        let usable = record
            .as_ref()
            .filter(|r| !r.user.disabled && r.password_hash.is_some());
        let checked: String = if too_long {
            String::new()
        } else {
            password.to_owned()
        };
        let ok = self
            .inner
            .hasher
            .verify(checked, usable.and_then(|r| r.password_hash.clone()))
            .await?
            && !password.is_empty();
        let Some(record) = usable.filter(|_| ok) else {
            self.audit("login.failure", None, Some(&account), meta, false, None)
                .await;
            return Err(Error::InvalidCredentials);
        };
        if let Some(prev) = previous {
            self.revoke_session_internal(prev).await?;
        }
        let user = record.user.clone();
        let now = self.now();
        let c = &self.inner.config;
        let absolute = now + secs(c.session_absolute_secs);
        let session = Session {
            id: SessionId::new(),
            user_id: user.id,
            generation: 0,
            salt: random_token(16),
            created_at: now,
            refreshed_at: now,
            idle_expires_at: (now + secs(c.session_idle_secs)).min(absolute),
            absolute_expires_at: absolute,
            revoked_at: None,
            ip: meta.ip.map(|i| i.to_string()),
            user_agent: meta
                .user_agent
                .as_ref()
                .map(|u| u.chars().take(256).collect()),
        };
        self.inner.sessions.create_session(&session).await?;
        self.audit(
            "login.success",
            Some(&user.id.to_string()),
            Some(&account),
            meta,
            true,
            Some(format!("session {}", session.id)),
        )
        .await;
        self.pair(&user, &session, 0).await
    }

    /// Exchanges a refresh token for new tokens, rotating it.
    ///
    /// - the current token: rotated (the old one becomes the predecessor);
    /// - the immediate predecessor within `refresh_grace_secs` of the
    ///   rotation: answered with the current token (two tabs refreshing at
    ///   once both stay logged in);
    /// - any older token, or the predecessor after the grace window: reuse —
    ///   the whole session (family) is revoked.
    pub async fn refresh(&self, token: &str, meta: &RequestMeta) -> Result<TokenPair, Error> {
        let (id, generation, mac) =
            parse_refresh(token).ok_or(Error::Unauthenticated("malformed refresh token"))?;
        let session = self
            .inner
            .sessions
            .get_session(id)
            .await?
            .ok_or(Error::Unauthenticated("invalid refresh token"))?;
        let expected = self.refresh_mac(&session, generation);
        if !bool::from(expected.as_bytes().ct_eq(mac.as_bytes())) {
            return Err(Error::Unauthenticated("invalid refresh token"));
        }
        let now = self.now();
        if !session.is_active(now) {
            return Err(Error::Unauthenticated("session ended"));
        }
        let record = self.load_user(session.user_id).await?;
        if record.user.disabled {
            return Err(Error::Unauthenticated("user disabled"));
        }
        let c = &self.inner.config;
        if generation == session.generation {
            let idle = (now + secs(c.session_idle_secs)).min(session.absolute_expires_at);
            if self
                .inner
                .sessions
                .advance_session(id, generation, now, idle)
                .await?
            {
                return self.pair(&record.user, &session, generation + 1).await;
            }
            // Lost a race with a concurrent refresh: we are now the predecessor.
            let fresh = self
                .inner
                .sessions
                .get_session(id)
                .await?
                .ok_or(Error::Unauthenticated("invalid refresh token"))?;
            if fresh.generation == generation + 1 && fresh.revoked_at.is_none() {
                return self.pair(&record.user, &fresh, fresh.generation).await;
            }
            return Err(Error::Unauthenticated("invalid refresh token"));
        }
        let grace = now - session.refreshed_at <= secs(c.refresh_grace_secs);
        if generation + 1 == session.generation && grace {
            return self.pair(&record.user, &session, session.generation).await;
        }
        self.revoke_session_internal(id).await?;
        self.audit(
            "refresh.reuse",
            Some(&session.user_id.to_string()),
            Some(&id.to_string()),
            meta,
            false,
            Some("session family revoked".into()),
        )
        .await;
        Err(Error::Unauthenticated(
            "refresh token reused; session revoked",
        ))
    }

    /// Logs out: revokes the session of `principal` and/or of `refresh_token`.
    pub async fn logout(
        &self,
        principal: Option<&Principal>,
        refresh_token: Option<&str>,
        meta: &RequestMeta,
    ) -> Result<(), Error> {
        let mut ids = Vec::new();
        if let Some(sid) = principal
            .and_then(|p| p.session_id.as_deref())
            .and_then(|s| s.parse::<SessionId>().ok())
        {
            ids.push(sid);
        }
        if let Some((id, generation, mac)) = refresh_token.and_then(parse_refresh)
            && let Some(session) = self.inner.sessions.get_session(id).await?
            && bool::from(
                self.refresh_mac(&session, generation)
                    .as_bytes()
                    .ct_eq(mac.as_bytes()),
            )
        {
            ids.push(id);
        }
        if ids.is_empty() {
            return Err(Error::Unauthenticated("no session to log out"));
        }
        for id in ids {
            self.revoke_session_internal(id).await?;
            self.audit(
                "logout",
                principal.map(|p| p.subject.as_ref()),
                Some(&id.to_string()),
                meta,
                true,
                None,
            )
            .await;
        }
        Ok(())
    }

    async fn revoke_session_internal(&self, id: SessionId) -> Result<(), Error> {
        self.inner.sessions.revoke_session(id, self.now()).await?;
        self.inner
            .revoked_sessions
            .insert(id, self.now().timestamp());
        self.publish(&format!("session:{id}")).await;
        Ok(())
    }

    async fn revoke_user_sessions_internal(&self, user: UserId) -> Result<(), Error> {
        for id in self
            .inner
            .sessions
            .revoke_user_sessions(user, self.now())
            .await?
        {
            self.inner
                .revoked_sessions
                .insert(id, self.now().timestamp());
            self.publish(&format!("session:{id}")).await;
        }
        Ok(())
    }

    /// Active sessions of `user` (default the caller); others' need
    /// `auth:sessions:admin`.
    pub async fn list_sessions(
        &self,
        actor: &Principal,
        user: Option<UserId>,
    ) -> Result<Vec<Session>, Error> {
        let own = own_user_id(actor);
        let target = match user {
            Some(u) if Some(u) == own => u,
            Some(u) => {
                need(actor, PERM_SESSIONS_ADMIN)?;
                u
            }
            None => own.ok_or(Error::NotAllowed(
                "only users have sessions: sign in as the user, or name the user",
            ))?,
        };
        Ok(self
            .inner
            .sessions
            .list_user_sessions(target, self.now())
            .await?)
    }

    /// Revokes a session (own, or any with `auth:sessions:admin`).
    pub async fn revoke_session(
        &self,
        actor: &Principal,
        id: SessionId,
        meta: &RequestMeta,
    ) -> Result<(), Error> {
        let session = self
            .inner
            .sessions
            .get_session(id)
            .await?
            .ok_or(Error::NotFound("session"))?;
        if *actor.subject != *session.user_id.to_string() {
            need(actor, PERM_SESSIONS_ADMIN)?;
        }
        self.revoke_session_internal(id).await?;
        self.audit(
            "session.revoke",
            Some(&actor.subject),
            Some(&id.to_string()),
            meta,
            true,
            None,
        )
        .await;
        Ok(())
    }

    // --------------------------------------------------------- one-time tokens

    async fn send_token(&self, user: &User, kind: TokenKind) -> Result<(), Error> {
        let token = random_token(32);
        self.inner
            .store
            .create_token(&OneTimeToken {
                hash: sha256(token.as_bytes()),
                kind,
                user_id: user.id,
                email_hash: email_hash(&user.email),
                expires_at: self.now() + secs(self.inner.config.one_time_token_ttl_secs),
            })
            .await?;
        let (subject, body) = match kind {
            TokenKind::PasswordReset => (
                "Reset your password",
                format!("Your password reset token: {token}"),
            ),
            TokenKind::EmailVerification => (
                "Verify your email",
                format!("Your email verification token: {token}"),
            ),
        };
        self.inner.mailer.send(&user.email, subject, &body).await
    }

    /// Mails a password reset token if the account exists. Always `Ok`
    /// (no account enumeration); throttled like logins.
    pub async fn request_password_reset(
        &self,
        email: &str,
        meta: &RequestMeta,
    ) -> Result<(), Error> {
        let account = email.trim().to_lowercase();
        self.inner.throttle.attempt(&account, meta.ip).await?;
        if let Ok(e) = normalize_email(&account)
            && let Some(r) = self.inner.store.get_user_by_email(&e).await?
            && !r.user.disabled
        {
            self.send_token(&r.user, TokenKind::PasswordReset).await?;
            self.audit(
                "password.reset_request",
                None,
                Some(&r.user.id.to_string()),
                meta,
                true,
                None,
            )
            .await;
        }
        Ok(())
    }

    /// Sets a new password with a reset token (single use); revokes sessions.
    /// The token is good only while the user's email is still the address
    /// it was mailed to.
    pub async fn confirm_password_reset(
        &self,
        token: &str,
        password: String,
        meta: &RequestMeta,
    ) -> Result<(), Error> {
        self.check_password("password", &password)?;
        let token = self
            .inner
            .store
            .consume_token(
                &sha256(token.as_bytes()),
                TokenKind::PasswordReset,
                self.now(),
            )
            .await?
            .ok_or(Error::field("token", TOKEN_INVALID))?;
        let user = token.user_id;
        let stored = self
            .store_password(user, password, None, Some(&token.email_hash), false)
            .await;
        if let Err(Error::Validation(_)) = stored {
            self.audit(
                "password.reset",
                None,
                Some(&user.to_string()),
                meta,
                false,
                Some(MAILED_ELSEWHERE.to_owned()),
            )
            .await;
        }
        stored?;
        self.audit(
            "password.reset",
            None,
            Some(&user.to_string()),
            meta,
            true,
            None,
        )
        .await;
        Ok(())
    }

    /// Mails an email verification token to the caller.
    pub async fn request_email_verification(&self, principal: &Principal) -> Result<(), Error> {
        let id = own_user_id(principal).ok_or(Error::NotAllowed("only users have emails"))?;
        let user = self.load_user(id).await?.user;
        self.send_token(&user, TokenKind::EmailVerification).await
    }

    /// Marks the token's user's email verified (single use). A token
    /// mailed to an address that is no longer the user's email verifies
    /// nothing: it is invalid (and used up).
    pub async fn confirm_email_verification(&self, token: &str) -> Result<(), Error> {
        let token = self
            .inner
            .store
            .consume_token(
                &sha256(token.as_bytes()),
                TokenKind::EmailVerification,
                self.now(),
            )
            .await?
            .ok_or(Error::field("token", TOKEN_INVALID))?;
        let id = token.user_id;
        // Checked inside the versioned write: an email change racing this
        // either lands first (and the token fails) or after (and unverifies).
        let outcome = self
            .modify_user(id, None, |record| {
                if email_hash(&record.user.email) != token.email_hash {
                    return Err(Error::field("token", TOKEN_INVALID));
                }
                if record.user.email_verified {
                    return Ok(UserWrite::Unchanged);
                }
                record.user.email_verified = true;
                Ok(UserWrite::Plain)
            })
            .await;
        if matches!(outcome, Ok(_) | Err(Error::Validation(_))) {
            self.audit(
                "email.verified",
                None,
                Some(&id.to_string()),
                &RequestMeta::default(),
                outcome.is_ok(),
                outcome.is_err().then(|| MAILED_ELSEWHERE.to_owned()),
            )
            .await;
        }
        outcome.map(|_| ())
    }

    // ---------------------------------------------------------- request meta

    /// The client IP: the peer, or the right-most untrusted `X-Forwarded-For`
    /// entry when the peer is a configured trusted proxy.
    pub fn client_ip(&self, peer: Option<IpAddr>, forwarded_for: Option<&str>) -> Option<IpAddr> {
        let peer = peer?;
        let trusted = |ip: &IpAddr| self.inner.trusted.iter().any(|n| n.contains(ip));
        if !trusted(&peer) {
            return Some(peer);
        }
        let mut ip = peer;
        if let Some(list) = forwarded_for {
            for hop in list.rsplit(',').take(32) {
                match hop.trim().parse::<IpAddr>() {
                    Ok(h) => {
                        ip = h;
                        if !trusted(&h) {
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
        }
        Some(ip)
    }

    // ------------------------------------------------------------ background

    async fn user_changed(&self) {
        self.inner.key_cache.invalidate_all();
        self.publish("users").await;
    }

    async fn publish(&self, message: &str) {
        let Some(redis) = &self.inner.redis else {
            return;
        };
        let mut conn = redis.connection();
        let result: Result<i64, _> = redis::cmd("PUBLISH")
            .arg(redis.key(CHANNEL))
            .arg(message)
            .query_async(&mut conn)
            .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "could not publish auth event; other hosts catch up within the cache TTL");
        }
    }

    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    fn apply_event(&self, message: &str) {
        if let Some(public_id) = message.strip_prefix("key:") {
            if let Some(n) = public_key_number(public_id) {
                self.inner.key_cache.invalidate(&n);
            }
        } else if let Some(id) = message.strip_prefix("session:") {
            if let Ok(id) = id.parse::<SessionId>() {
                self.inner
                    .revoked_sessions
                    .insert(id, self.now().timestamp());
            }
        } else if message == "users" {
            self.inner.key_cache.invalidate_all();
        }
    }

    /// Starts the background work: flushing API key last-used times,
    /// reloading and rotating signing keys, purging ended sessions, and the
    /// Redis revocation listener. Each task stops promptly on `cancel`.
    pub fn spawn_background(&self, cancel: CancellationToken) -> Vec<JoinHandle<()>> {
        let mut tasks = Vec::new();
        let this = self.clone();
        let token = cancel.clone();
        let flush = Duration::from_secs(self.inner.config.api_key_flush_secs.max(1));
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(flush);
            loop {
                tokio::select! {
                    () = token.cancelled() => break,
                    _ = tick.tick() => {
                        if let Err(e) = this.flush_key_usage().await {
                            tracing::warn!(error = %e, "flushing API key usage failed");
                        }
                        this.inner.throttle.shrink();
                    }
                }
            }
            let _ = this.flush_key_usage().await;
        }));
        let this = self.clone();
        let token = cancel.clone();
        let reload = Duration::from_secs(self.inner.config.key_reload_secs.max(1));
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(reload);
            tick.tick().await;
            loop {
                tokio::select! {
                    () = token.cancelled() => break,
                    _ = tick.tick() => {
                        if let Err(e) = this.maintain().await {
                            tracing::warn!(error = %e, "auth maintenance failed");
                        }
                    }
                }
            }
        }));
        #[cfg(feature = "redis")]
        if let Some(redis) = self.inner.redis.clone() {
            let this = self.clone();
            tasks.push(tokio::spawn(async move {
                this.listen(redis, cancel).await;
            }));
        }
        tasks
    }

    /// One round of maintenance: reload keys, rotate an old key, purge sessions.
    pub async fn maintain(&self) -> Result<(), Error> {
        self.reload_keys().await?;
        let rotation = self.inner.config.key_rotation_secs;
        if rotation > 0
            && self
                .key_set()
                .current()
                .is_none_or(|k| self.now() - k.created_at >= secs(rotation))
        {
            self.rotate_signing_key().await?;
        }
        self.inner.revoked_sessions.prune(self.now().timestamp());
        self.inner
            .sessions
            .purge_sessions(self.now() - chrono::Duration::days(1))
            .await?;
        Ok(())
    }

    #[cfg(feature = "redis")]
    async fn listen(&self, redis: Redis, cancel: CancellationToken) {
        use jadugar_core::storage::ChannelEvent;
        let mut events = redis.subscribe(CHANNEL);
        loop {
            let event = tokio::select! {
                () = cancel.cancelled() => return,
                event = events.recv() => event,
            };
            match event {
                // Anything published while we were away may be lost: start clean.
                Some(ChannelEvent::Subscribed) => self.inner.key_cache.invalidate_all(),
                Some(ChannelEvent::Message(text)) if text == "signing-keys" => {
                    let _ = self.reload_keys().await;
                }
                Some(ChannelEvent::Message(text)) => self.apply_event(&text),
                None => return,
            }
        }
    }
}

fn secs(s: u64) -> chrono::Duration {
    chrono::Duration::seconds(
        i64::try_from(s)
            .unwrap_or(i64::MAX / 4)
            .min(100 * 365 * 86_400),
    )
}

fn need(actor: &Principal, perm: &str) -> Result<(), Error> {
    if actor.can(perm) {
        Ok(())
    } else {
        Err(Error::Forbidden(perm.to_owned()))
    }
}

fn public_key_number(public_id: &str) -> Option<u64> {
    if public_id.len() != PUBLIC_ID_LEN {
        return None;
    }
    u64::from_str_radix(public_id, 16).ok()
}

/// Splits `jdg_<16 hex>_<secret>` into the public id as a number and the secret.
fn parse_api_key(text: &str) -> Option<(u64, &str)> {
    let rest = text.strip_prefix(API_KEY_PREFIX)?;
    if rest.len() < PUBLIC_ID_LEN + 2 || rest.len() > 200 || !rest.is_char_boundary(PUBLIC_ID_LEN) {
        return None;
    }
    let (public, secret) = rest.split_at(PUBLIC_ID_LEN);
    let secret = secret.strip_prefix('_')?;
    // Checked and decoded in one pass (lowercase hex only): this runs on
    // every request that presents a key.
    let mut number: u64 = 0;
    for b in public.bytes() {
        let digit = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => return None,
        };
        number = (number << 4) | u64::from(digit);
    }
    Some((number, secret))
}

fn parse_refresh(token: &str) -> Option<(SessionId, i64, &str)> {
    let rest = token.strip_prefix(REFRESH_PREFIX)?;
    if rest.len() > 200 {
        return None;
    }
    let mut parts = rest.splitn(3, '_');
    let id = uuid::Uuid::try_parse(parts.next()?).ok()?;
    let generation = parts.next()?.parse::<i64>().ok().filter(|g| *g >= 0)?;
    Some((SessionId(id), generation, parts.next()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_text_parsing() {
        assert_eq!(
            parse_api_key("jdg_0123456789abcdef_secret"),
            Some((0x0123_4567_89ab_cdef, "secret"))
        );
        assert_eq!(
            parse_api_key("jdg_ffffffffffffffff_s"),
            Some((u64::MAX, "s"))
        );
        for bad in [
            "",
            "jdg_",
            "jdg_0123456789abcdef",
            "jdg_0123456789abcdeX_s",
            "jdg_0123456789ABCDEF_s",
            "xyz_0123456789abcdef_s",
            "jdg_é123456789abcdef_s",
        ] {
            assert!(parse_api_key(bad).is_none(), "{bad}");
        }
        assert!(parse_refresh("jrt_0190a0b0c0d07000800000000000000a_3_mac").is_some());
        assert!(parse_refresh("jrt_x_3_mac").is_none());
        assert!(parse_refresh("jrt_0190a0b0c0d07000800000000000000a_-1_mac").is_none());
    }
}
