//! The `[auth]` section of `jadugar.toml`.

use serde::Deserialize;

/// Configuration of auth. Every field has a safe default.
///
/// ```
/// let config: jadugar_auth::Config = toml_like();
/// assert_eq!(config.access_token_ttl_secs, 300);
/// # fn toml_like() -> jadugar_auth::Config { serde_json::from_str("{}").unwrap() }
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The `iss` of tokens we issue and the base of the OIDC discovery document,
    /// e.g. `https://auth.example.com`.
    pub issuer: String,
    /// The `aud` of tokens we issue and require.
    pub audience: String,
    /// JWT algorithm of new signing keys: `EdDSA` (default) or `ES256`.
    pub jwt_algorithm: String,
    /// Lifetime of access tokens (seconds).
    pub access_token_ttl_secs: u64,
    /// Clock skew allowed when checking `exp`, `nbf` and `iat` (seconds).
    pub jwt_leeway_secs: u64,
    /// A signing key is replaced by a new one after this age (seconds); 0 never.
    pub key_rotation_secs: u64,
    /// A replaced key still verifies tokens for this long (seconds); must
    /// exceed the access token lifetime.
    pub key_overlap_secs: u64,
    /// A session dies if not refreshed for this long (seconds).
    pub session_idle_secs: u64,
    /// A session dies this long after login, whatever happens (seconds).
    pub session_absolute_secs: u64,
    /// The previous refresh token of a session stays usable this long after
    /// a rotation (two tabs refreshing at once), returning the current one
    /// (seconds).
    pub refresh_grace_secs: u64,
    /// Minimum password length in characters.
    pub password_min_length: usize,
    /// Maximum password length in bytes (against hashing DoS).
    pub password_max_length: usize,
    /// How many password hashes may run at once on the blocking pool.
    pub hash_concurrency: usize,
    /// Argon2 memory cost in KiB (19456 = 19 MiB).
    pub argon2_memory_kib: u32,
    /// Argon2 iterations.
    pub argon2_iterations: u32,
    /// How long an API key verification stays cached (seconds); without
    /// Redis this bounds how late a revocation takes effect on other hosts.
    pub api_key_cache_ttl_secs: u64,
    /// Most API keys kept in the verification cache.
    pub api_key_cache_capacity: u64,
    /// How often last-used times of API keys are written to the store (seconds).
    pub api_key_flush_secs: u64,
    /// Most validated tokens kept in the token cache.
    pub token_cache_capacity: u64,
    /// Login attempts (failed or not) allowed per account per window; 0 disables.
    pub login_attempts_per_account: u32,
    /// Login attempts allowed per client IP per window; 0 disables.
    pub login_attempts_per_ip: u32,
    /// The throttling window (seconds).
    pub login_window_secs: u64,
    /// Peers whose `X-Forwarded-For` is believed (CIDRs or addresses).
    pub trusted_proxies: Vec<String>,
    /// Use `Secure` and `__Host-` cookies. Turn off only for plain-HTTP localhost.
    pub cookie_secure: bool,
    /// Origins allowed on cookie-authenticated unsafe requests, e.g.
    /// `https://app.example.com`. Empty: the request's own `Host`.
    pub allowed_origins: Vec<String>,
    /// Lifetime of password reset and email verification tokens (seconds).
    pub one_time_token_ttl_secs: u64,
    /// How often signing keys are reloaded from the store (seconds).
    pub key_reload_secs: u64,
    /// External OIDC issuers whose tokens are accepted.
    pub external_issuers: Vec<ExternalIssuer>,
    /// Largest `Authorization` / `x-api-key` / cookie value looked at (bytes).
    pub max_credential_len: usize,
}

/// An external OIDC issuer whose tokens are accepted.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExternalIssuer {
    /// The `iss` value.
    pub issuer: String,
    /// The JWKS URL (default: `<issuer>/.well-known/jwks.json`).
    pub jwks_url: Option<String>,
    /// Required `aud`.
    pub audience: String,
    /// Roles given to callers with tokens of this issuer.
    pub roles: Vec<String>,
    /// Permissions given to callers with tokens of this issuer.
    pub permissions: Vec<String>,
    /// How long a fetched JWKS is used before re-fetching (seconds).
    pub jwks_ttl_secs: u64,
    /// Least time between two fetches on unknown `kid` (seconds).
    pub min_refetch_secs: u64,
}

impl Default for ExternalIssuer {
    fn default() -> Self {
        Self {
            issuer: String::new(),
            jwks_url: None,
            audience: String::new(),
            roles: Vec::new(),
            permissions: Vec::new(),
            jwks_ttl_secs: 3600,
            min_refetch_secs: 30,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            issuer: "http://localhost:8080".into(),
            audience: "jadugar".into(),
            jwt_algorithm: "EdDSA".into(),
            access_token_ttl_secs: 300,
            jwt_leeway_secs: 30,
            key_rotation_secs: 30 * 86_400,
            key_overlap_secs: 86_400,
            session_idle_secs: 7 * 86_400,
            session_absolute_secs: 30 * 86_400,
            refresh_grace_secs: 30,
            password_min_length: 12,
            password_max_length: 1024,
            hash_concurrency: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            argon2_memory_kib: 19_456,
            argon2_iterations: 2,
            api_key_cache_ttl_secs: 30,
            api_key_cache_capacity: 100_000,
            api_key_flush_secs: 60,
            token_cache_capacity: 100_000,
            login_attempts_per_account: 10,
            login_attempts_per_ip: 100,
            login_window_secs: 300,
            trusted_proxies: Vec::new(),
            cookie_secure: true,
            allowed_origins: Vec::new(),
            one_time_token_ttl_secs: 3600,
            key_reload_secs: 60,
            external_issuers: Vec::new(),
            max_credential_len: 8192,
        }
    }
}
